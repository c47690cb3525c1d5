//! The defect catalogue: each `fixtures/defects/*.yaml` is a small mutation of
//! the correct pipeline in `fixtures/pipeline/` that one scenario must fail with
//! a named finding. Each is a test (`cargo test --test defects no-pdb`) that
//! writes the mutated pipeline to a temporary directory and runs the real
//! `cdcheck run --manifests` on it; `correct-pipeline` runs every scenario on the
//! unmutated pipeline and must find nothing (no false alarm), and the checks that
//! pass there must be exactly those `fixtures/defects/correct-pipeline.passes.yaml`
//! lists (a check that silently turns into a skip fails it). A defect with
//! `pipeline: bluegreen` mutates `fixtures/pipeline-bluegreen/` (a blue/green
//! pipeline with its next release, run with `--next-manifests`). Every trial but the
//! `https` ones serves a host of its own, so trials run side by side on one data plane.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use libtest_mimic::{Arguments, Failed, Trial};

mod common;
use serde::Deserialize;
use serde_json::Value;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Defect {
    /// The scenario that must fail.
    scenario: String,
    /// The check of that scenario that must fail.
    check: String,
    /// Text one of the check's findings must contain.
    finding: String,
    /// How a pipeline author gets here.
    #[allow(dead_code)]
    why: String,
    /// The correct pipeline mutated: `rolling` (`fixtures/pipeline/`, the default) or
    /// `bluegreen` (`fixtures/pipeline-bluegreen/`, with a next release).
    #[serde(default = "rolling")]
    pipeline: String,
    #[serde(default)]
    mutations: Vec<Mutation>,
    /// The pipeline's next release is its current one re-applied (`--next-manifests` gets
    /// the current part, after its mutations).
    #[serde(default, rename = "next-is-current")]
    next_is_current: bool,
    /// What the same scenario's traffic shows on a data plane (the local mesh): a
    /// check of a load or probe that must fail too, with a finding containing `finding`.
    #[serde(default, rename = "data-plane")]
    data_plane: Option<DataPlaneEvidence>,
}

fn rolling() -> String {
    "rolling".to_string()
}

/// The parts of a pipeline, each a directory passed to `cdcheck run` by its flag.
const PARTS: [(&str, &str); 3] = [
    ("current", "--manifests"),
    ("feature", "--feature-manifests"),
    ("next", "--next-manifests"),
];

fn pipeline_dir(pipeline: &str) -> Result<PathBuf, String> {
    match pipeline {
        "rolling" => Ok(root().join("fixtures/pipeline")),
        "bluegreen" => Ok(root().join("fixtures/pipeline-bluegreen")),
        other => Err(format!("unknown pipeline {other:?} (rolling or bluegreen)")),
    }
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct DataPlaneEvidence {
    check: String,
    finding: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Mutation {
    /// `current`, `feature` or `next`: which part of the pipeline.
    file: String,
    /// Documents to change: every document whose fields equal these.
    #[serde(default, rename = "match")]
    selector: Option<Selector>,
    /// Dotted paths (list indices as numbers) set to values.
    #[serde(default)]
    set: serde_json::Map<String, Value>,
    /// Dotted paths removed.
    #[serde(default)]
    remove: Vec<String>,
    /// Two dotted paths whose values change places.
    #[serde(default)]
    swap: Vec<String>,
    /// Remove the matching documents.
    #[serde(default)]
    drop: bool,
    /// A document appended to the part.
    #[serde(default)]
    add: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Selector {
    kind: String,
    #[serde(default)]
    name: Option<String>,
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every document of every YAML file of a directory, by file.
fn read_part(dir: &Path) -> Vec<(String, Vec<Value>)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|f| {
            let text = std::fs::read_to_string(&f).unwrap();
            let docs: Vec<Value> = serde_saphyr::from_multiple(&text)
                .unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            (
                f.file_name().unwrap().to_string_lossy().to_string(),
                docs.into_iter().filter(|d| !d.is_null()).collect(),
            )
        })
        .collect()
}

fn write_part(dir: &Path, part: &[(String, Vec<Value>)]) {
    std::fs::create_dir_all(dir).unwrap();
    for (name, docs) in part {
        let mut out = String::new();
        for d in docs {
            out.push_str("---\n");
            out.push_str(&serde_saphyr::to_string(d).unwrap());
        }
        std::fs::write(dir.join(name), out).unwrap();
    }
}

/// A dotted path's segments; `\\.` is a dot inside a segment (a label key such as
/// `cdcheck\\.io/release`).
fn segments(path: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut chars = path.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.as_str().starts_with('.') => {
                chars.next();
                out.last_mut().unwrap().push('.');
            }
            '.' => out.push(String::new()),
            c => out.last_mut().unwrap().push(c),
        }
    }
    out
}

fn get_mut<'a>(value: &'a mut Value, path: &[String], create: bool) -> Option<&'a mut Value> {
    let mut at = value;
    for seg in path {
        at = match at {
            Value::Array(items) => items.get_mut(seg.parse::<usize>().ok()?)?,
            Value::Object(map) => {
                if create && !map.contains_key(seg) {
                    map.insert(seg.to_string(), Value::Object(Default::default()));
                }
                map.get_mut(seg)?
            }
            _ => return None,
        };
    }
    Some(at)
}

fn mutate(doc: &mut Value, m: &Mutation) -> Result<(), String> {
    for (path, value) in &m.set {
        let segs = segments(path);
        let (last, parent) = segs.split_last().unwrap();
        let parent = get_mut(doc, parent, true).ok_or(format!("no path {path}"))?;
        match parent {
            Value::Object(map) => {
                map.insert(last.to_string(), value.clone());
            }
            Value::Array(items) => {
                let i: usize = last.parse().map_err(|_| format!("{path}: not an index"))?;
                *items.get_mut(i).ok_or(format!("no path {path}"))? = value.clone();
            }
            _ => return Err(format!("{path}: parent is not a map or list")),
        }
    }
    // A path absent from one of several matching documents (redis-cart has no
    // affinity to remove) is fine; `materialize` fails a mutation that changed nothing.
    for path in &m.remove {
        let segs = segments(path);
        let (last, parent) = segs.split_last().unwrap();
        if let Some(Value::Object(map)) = get_mut(doc, parent, false) {
            map.remove(last);
        }
    }
    if let [a, b] = m.swap.as_slice() {
        let va = get_mut(doc, &segments(a), false)
            .ok_or(format!("no path {a}"))?
            .take();
        let vb = get_mut(doc, &segments(b), false)
            .ok_or(format!("no path {b}"))?
            .take();
        *get_mut(doc, &segments(a), false).unwrap() = vb;
        *get_mut(doc, &segments(b), false).unwrap() = va;
    } else if !m.swap.is_empty() {
        return Err("swap takes exactly two paths".into());
    }
    Ok(())
}

fn selects(selector: &Selector, doc: &Value) -> bool {
    doc["kind"] == selector.kind.as_str()
        && selector
            .name
            .as_ref()
            .is_none_or(|n| doc["metadata"]["name"] == n.as_str())
}

/// Writes the pipeline with the defect's mutations into `dir/{current,feature,next}`
/// (the parts the pipeline has).
fn materialize(pipeline: &str, defect: Option<&Defect>, dir: &Path) -> Result<(), String> {
    let base = pipeline_dir(pipeline)?;
    if let Some(m) = defect
        .map(|d| d.mutations.as_slice())
        .unwrap_or_default()
        .iter()
        .find(|m| !base.join(&m.file).is_dir())
    {
        return Err(format!("pipeline {pipeline} has no part {:?}", m.file));
    }
    for (part_name, _) in PARTS {
        if !base.join(part_name).is_dir() {
            continue;
        }
        let mut part = read_part(&base.join(part_name));
        for m in defect
            .map(|d| d.mutations.as_slice())
            .unwrap_or_default()
            .iter()
            .filter(|m| m.file == part_name)
        {
            let mut touched = 0;
            if let Some(selector) = &m.selector {
                for (_, docs) in &mut part {
                    if m.drop {
                        let before = docs.len();
                        docs.retain(|d| !selects(selector, d));
                        touched += before - docs.len();
                        continue;
                    }
                    for doc in docs.iter_mut().filter(|d| selects(selector, d)) {
                        let before = doc.clone();
                        mutate(doc, m)?;
                        touched += usize::from(*doc != before);
                    }
                }
            }
            if let Some(doc) = &m.add {
                part[0].1.push(doc.clone());
                touched += 1;
            }
            if touched == 0 {
                return Err(format!("mutation {m:?} changed nothing"));
            }
        }
        write_part(&dir.join(part_name), &part);
        if part_name == "current" && defect.is_some_and(|d| d.next_is_current) {
            write_part(&dir.join("next"), &part);
        }
    }
    Ok(())
}

/// Which scenarios a run selects (`--filter`).
enum Filter<'a> {
    Exact(&'a str),
    Containing(&'a str),
}

/// Runs `cdcheck run` on the materialized pipeline; returns the exit code and report.
fn run_cdcheck(dir: &Path, scenario: Option<Filter>) -> Result<(i32, Value, String), Failed> {
    let report_dir = dir.join("report");
    let mut command = Command::new(env!("CARGO_BIN_EXE_cdcheck"));
    command.arg("run");
    for (part, flag) in PARTS {
        if dir.join(part).is_dir() {
            command.arg(flag).arg(dir.join(part));
        }
    }
    command
        .arg("--report-dir")
        .arg(&report_dir)
        .arg("--jobs")
        .arg("2");
    match scenario {
        Some(Filter::Exact(s)) => {
            command.args(["--filter", s, "--exact"]);
        }
        Some(Filter::Containing(s)) => {
            command.args(["--filter", s]);
        }
        None => {}
    }
    // On the local mesh, every scenario's data-plane steps run and must run.
    match common::mesh_unavailable() {
        None => {
            command
                .arg("--state-dir")
                .arg(common::mesh_state_dir())
                .args(["--mesh", "on", "--require", "data-plane"]);
        }
        Some(why) if std::env::var_os("CI").is_some() => {
            return Err(Failed::from(format!("CI needs the local mesh: {why}")));
        }
        Some(why) => {
            let _ = std::io::stderr().write_all(
                format!("note: no local mesh ({why}): data-plane steps are skipped\n").as_bytes(),
            );
            command.args(["--mesh", "off"]);
        }
    }
    let output = command.output().map_err(|e| Failed::from(e.to_string()))?;
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    let code = output.status.code().unwrap_or(-1);
    let text = std::fs::read_to_string(report_dir.join("report.json"))
        .map_err(|e| Failed::from(format!("no report.json (exit {code}): {e}\n{stderr}")))?;
    let report: Value = serde_json::from_str(&text).map_err(|e| Failed::from(e.to_string()))?;
    Ok((code, report, stderr))
}

/// The environment host of the correct pipelines (its certificate covers `*.boutique.test`).
const PIPELINE_HOST: &str = "shop.boutique.test";

/// Gives a materialized pipeline a host of its own, `<label>.boutique.test`. Runs on one
/// data plane take a host in turn (the gateway routes a host to one VirtualService), so
/// trials with their own hosts run side by side instead of one after another.
fn give_own_host(dir: &Path, label: &str) -> Result<(), String> {
    let host = format!("{label}.boutique.test");
    for (part, _) in PARTS {
        let Ok(entries) = std::fs::read_dir(dir.join(part)) else {
            continue;
        };
        for entry in entries {
            let path = entry.map_err(|e| e.to_string())?.path();
            let text = std::fs::read_to_string(&path).map_err(|e| e.to_string())?;
            if text.contains(PIPELINE_HOST) {
                std::fs::write(&path, text.replace(PIPELINE_HOST, &host))
                    .map_err(|e| e.to_string())?;
            }
        }
    }
    Ok(())
}

fn check_defect(name: &str, defect: Defect) -> Result<(), Failed> {
    let dir = tempfile::tempdir().map_err(|e| Failed::from(e.to_string()))?;
    materialize(&defect.pipeline, Some(&defect), dir.path()).map_err(Failed::from)?;
    // `https` judges the served certificate and keeps the pipeline's own host: it holds
    // the gateway's HTTPS port alone anyway.
    if defect.scenario != "https" {
        give_own_host(dir.path(), name).map_err(Failed::from)?;
    }
    let (code, report, stderr) = run_cdcheck(dir.path(), Some(Filter::Exact(&defect.scenario)))?;
    let scenario = report["scenarios"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == defect.scenario.as_str()))
        .ok_or_else(|| {
            Failed::from(format!(
                "scenario {} not in the report\n{stderr}",
                defect.scenario
            ))
        })?;
    if code != 1 || scenario["verdict"] != "failed" {
        return Err(format!(
            "defect not caught: exit {code}, scenario verdict {}\n{stderr}",
            scenario["verdict"]
        )
        .into());
    }
    let check = scenario["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == defect.check.as_str())
        .ok_or_else(|| Failed::from(format!("no check {} ran\n{stderr}", defect.check)))?;
    let findings: Vec<String> = check["findings"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|f| {
            format!(
                "{}: {}",
                f["object"].as_str().unwrap_or(""),
                f["message"].as_str().unwrap_or("")
            )
        })
        .collect();
    if check["verdict"] != "failed" || !findings.iter().any(|f| f.contains(&defect.finding)) {
        return Err(format!(
            "check {} is {} without a finding containing {:?}: {findings:#?}\n{stderr}",
            defect.check, check["verdict"], defect.finding
        )
        .into());
    }
    if let (Some(evidence), true) = (&defect.data_plane, report["data_plane"] == true) {
        let check = scenario["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == evidence.check.as_str())
            .ok_or_else(|| {
                Failed::from(format!(
                    "no data-plane check {} ran\n{stderr}",
                    evidence.check
                ))
            })?;
        let text = check["findings"].to_string();
        if check["verdict"] != "failed" || !text.contains(&evidence.finding) {
            return Err(format!(
                "the data plane did not show the defect: check {} is {} without a finding containing {:?}: {text}\n{stderr}",
                evidence.check, check["verdict"], evidence.finding
            )
            .into());
        }
    }
    Ok(())
}

/// The checks that pass on the correct pipelines, by scenario: `control-plane` on any
/// substrate, `data-plane` besides on the local mesh.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Passes {
    control_plane: std::collections::BTreeMap<String, Vec<String>>,
    data_plane: std::collections::BTreeMap<String, Vec<String>>,
}

fn check_correct_pipeline() -> Result<(), Failed> {
    let text =
        std::fs::read_to_string(root().join("fixtures/defects/correct-pipeline.passes.yaml"))
            .map_err(|e| Failed::from(e.to_string()))?;
    let passes: Passes = serde_saphyr::from_str(&text).map_err(|e| Failed::from(e.to_string()))?;
    let mut passed = std::collections::BTreeSet::new();
    let mut data_plane = false;
    let mut log = String::new();
    // The rolling pipeline runs every scenario (its blue/green ones have no next
    // release: not applicable); the blue/green pipeline runs the blue/green ones.
    for (pipeline, filter) in [
        ("rolling", None),
        ("bluegreen", Some(Filter::Containing("bluegreen"))),
    ] {
        let dir = tempfile::tempdir().map_err(|e| Failed::from(e.to_string()))?;
        materialize(pipeline, None, dir.path()).map_err(Failed::from)?;
        let (code, report, stderr) = run_cdcheck(dir.path(), filter)?;
        data_plane = report["data_plane"] == true;
        let bluegreen_run = pipeline == "bluegreen";
        let scenarios: Vec<&Value> = report["scenarios"]
            .as_array()
            .unwrap()
            .iter()
            // Each blue/green scenario counts from the blue/green pipeline's run.
            .filter(|s| s["name"].as_str().unwrap_or("").contains("bluegreen") == bluegreen_run)
            .collect();
        let failed: Vec<String> = scenarios
            .iter()
            .flat_map(|s| {
                s["checks"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|c| c["verdict"] != "passed" && c["verdict"] != "skipped")
                    .map(move |c| format!("{} / {}: {}", s["name"], c["name"], c["findings"]))
            })
            .collect();
        if !failed.is_empty() || code != 0 {
            return Err(format!(
                "false alarm on the correct {pipeline} pipeline (exit {code}): {failed:#?}\n{stderr}"
            )
            .into());
        }
        for s in scenarios {
            for c in s["checks"].as_array().unwrap() {
                if c["verdict"] == "passed" {
                    passed.insert(format!(
                        "{}/{}",
                        s["name"].as_str().unwrap_or(""),
                        c["name"].as_str().unwrap_or("")
                    ));
                }
            }
        }
        log.push_str(&stderr);
    }
    let mut expected = std::collections::BTreeSet::new();
    for (set, used) in [
        (&passes.control_plane, true),
        (&passes.data_plane, data_plane),
    ] {
        if used {
            for (scenario, checks) in set {
                expected.extend(checks.iter().map(|c| format!("{scenario}/{c}")));
            }
        }
    }
    if passed != expected {
        return Err(format!(
            "the checks passing on the correct pipelines (data plane: {data_plane}) are not those listed:\n  passing but not listed: {:#?}\n  listed but not passing: {:#?}\n{log}",
            passed.difference(&expected).collect::<Vec<_>>(),
            expected.difference(&passed).collect::<Vec<_>>(),
        )
        .into());
    }
    Ok(())
}

fn substrate_missing() -> Option<String> {
    if std::env::var_os("CDCHECK_KUBECONFIG").is_some() {
        return None;
    }
    cdcheck::substrate::binaries::locate()
        .err()
        .map(|e| e.to_string())
}

/// The defect files (`correct-pipeline.passes.yaml` is the correct pipeline's list).
fn defect_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join("fixtures/defects"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.extension().is_some_and(|e| e == "yaml")
                && !p.to_string_lossy().ends_with(".passes.yaml")
        })
        .collect();
    files.sort();
    files
}

fn read_defect(file: &Path) -> Defect {
    let text = std::fs::read_to_string(file).unwrap();
    serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()))
}

fn main() {
    let args = Arguments::from_args();
    let files = defect_files();
    let missing = substrate_missing().filter(|_| std::env::var_os("CI").is_none());
    if let Some(why) = &missing {
        let _ = std::io::stderr().write_all(
            format!("defect tests NOT RUN (not in CI): no substrate: {why}\n").as_bytes(),
        );
    }
    let mut trials = vec![
        Trial::test("correct-pipeline", check_correct_pipeline)
            .with_ignored_flag(missing.is_some()),
        // Needs no substrate: every defect's mutations apply to its pipeline.
        Trial::test("every-defect-materializes", || {
            for file in defect_files() {
                let defect = read_defect(&file);
                let dir = tempfile::tempdir().map_err(|e| Failed::from(e.to_string()))?;
                materialize(&defect.pipeline, Some(&defect), dir.path())
                    .map_err(|e| Failed::from(format!("{}: {e}", file.display())))?;
            }
            Ok(())
        }),
    ];
    for file in files {
        let name = file.file_stem().unwrap().to_string_lossy().to_string();
        let defect = read_defect(&file);
        trials.push(
            Trial::test(name.clone(), move || check_defect(&name, defect))
                .with_ignored_flag(missing.is_some()),
        );
    }
    libtest_mimic::run(&args, trials).exit();
}
