//! `cdcheck render`'s own output handed back as `--manifests` (and, with a feature
//! branch, as `--feature-manifests`) passes the static checks of every built-in
//! scenario, its loadgenerator (no Service, no port, no probe) included: the
//! reference pipeline passes its own suite. Static: no substrate, no cluster.

use std::path::{Path, PathBuf};
use std::process::Command;

use cdcheck::scenario::builtin;
use cdcheck::scenario::checks::{self, CheckName, Judgement, PipelineView};
use cdcheck::scenario::pipeline::{Manifests, Pipeline};
use cdcheck::scenario::spec::Step;

const NAMESPACE: &str = "cdcheck-render-1a2b3c";

/// `cdcheck render ARGS` written to `dir/name` (one file, as `> out.yaml` leaves it).
fn render_to(dir: &Path, name: &str, args: &[&str]) -> PathBuf {
    let out = Command::new(env!("CARGO_BIN_EXE_cdcheck"))
        .arg("render")
        .args(args)
        .output()
        .expect("run cdcheck render");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let file = dir.join(name);
    std::fs::write(&file, &out.stdout).unwrap();
    file
}

/// Every built-in scenario's static checks, judged as the runner judges them on the
/// release the scenario deploys first, with the runner's default single instances.
fn judge_every_scenario(pipeline: &Pipeline) -> Vec<(String, CheckName, Judgement)> {
    let single = vec!["redis-cart".to_string(), "loadgenerator".to_string()];
    let mut out = Vec::new();
    for scenario in builtin::scenarios().unwrap() {
        let Some(Step::Deploy(release)) = scenario.steps.first() else {
            continue;
        };
        let placed = pipeline
            .place(*release, NAMESPACE, "run1", Default::default())
            .unwrap_or_else(|e| panic!("{}: place {release:?}: {e}", scenario.name));
        let expected = scenario.steps.iter().flat_map(|step| match step {
            Step::Expect(names) => names.clone(),
            _ => Vec::new(),
        });
        for check in expected.filter(|c| !c.is_live()) {
            let view = PipelineView {
                namespace: NAMESPACE,
                bundle: &placed.bundle,
                single_instance: &single,
                not_deployed: &placed.not_deployed,
                certificate_min_days: 30,
            };
            out.push((
                scenario.name.clone(),
                check,
                checks::run_static(check, &view),
            ));
        }
    }
    out
}

#[test]
fn cdcheck_render_output_as_manifests_passes_every_scenario_s_static_checks() {
    let dir = tempfile::tempdir().unwrap();
    // render's defaults: the loadgenerator is in.
    let current = render_to(dir.path(), "dev.yaml", &["--env", "dev"]);
    let text = std::fs::read_to_string(&current).unwrap();
    assert!(text.contains("name: loadgenerator"), "{text}");
    let feature = render_to(
        dir.path(),
        "dev-feature.yaml",
        &[
            "--env",
            "dev",
            "--feature",
            "frontend=0.10.6-myfeature",
            "--feature",
            "adservice=0.10.6-myfeature",
            "--session",
            "3f1c2a9e-0d1b-4c55-9a37-1b2c3d4e5f60",
        ],
    );
    let pipeline = Pipeline::Manifests(Box::new(
        Manifests::load(&current, Some(&feature), None).expect("load render's output"),
    ));

    let judged = judge_every_scenario(&pipeline);
    let failed: Vec<String> = judged
        .iter()
        .filter(|(_, _, j)| !matches!(j, Judgement::Findings(f) if f.is_empty()))
        .map(|(scenario, check, j)| format!("{scenario}/{}: {j:?}", check.as_str()))
        .collect();
    assert_eq!(failed, Vec::<String>::new());
    // The scenarios the loadgenerator's false alarm was seen in judged readiness-probes.
    for scenario in ["smoke", "zero-downtime-rolling"] {
        assert!(
            judged
                .iter()
                .any(|(s, c, _)| s == scenario && *c == CheckName::ReadinessProbes),
            "{scenario} did not judge readiness-probes: {judged:?}"
        );
    }
}
