//! The JSON report: it reads back into the same RunReport, matches its
//! published JSON Schema (docs/report-schema.json), and every field of that
//! schema is documented in docs/report-schema.md.

mod report_fixture;

use std::path::Path;

use cdcheck::report::{FileReporter, Reporter, RunReport, SCHEMA_VERSION, json};
use pretty_assertions::assert_eq;
use serde_json::Value;

const SCHEMA_FILE: &str = "docs/report-schema.json";
const SCHEMA_DOC: &str = "docs/report-schema.md";

fn written_report() -> (tempfile::TempDir, String) {
    written(&report_fixture::run_report())
}

fn written(report: &RunReport) -> (tempfile::TempDir, String) {
    let temp = tempfile::tempdir().unwrap();
    let files = cdcheck::report::write_all(report, temp.path()).unwrap();
    let text = std::fs::read_to_string(&files.json).unwrap();
    (temp, text)
}

fn repo_file(path: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

#[test]
fn the_written_report_reads_back_equal() {
    let (_temp, text) = written_report();
    let read: RunReport = serde_json::from_str(&text).unwrap();
    assert_eq!(read, report_fixture::run_report());
    let value: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(value["schema_version"], SCHEMA_VERSION);
    // Durations are integer milliseconds.
    assert_eq!(value["duration"], 47_850);
}

#[test]
fn the_published_schema_is_the_one_the_types_generate() {
    let generated = serde_json::to_string_pretty(&json::schema()).unwrap() + "\n";
    let path = repo_file(SCHEMA_FILE);
    if std::env::var_os("CDCHECK_UPDATE_SCHEMA").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let published = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        published == generated,
        "{SCHEMA_FILE} is out of date with src/report.rs: if the change is intended, bump \
         SCHEMA_VERSION, update {SCHEMA_DOC} and rerun with CDCHECK_UPDATE_SCHEMA=1"
    );
}

fn validator() -> jsonschema::Validator {
    let schema: Value =
        serde_json::from_str(&std::fs::read_to_string(repo_file(SCHEMA_FILE)).unwrap()).unwrap();
    jsonschema::validator_for(&schema).unwrap()
}

#[test]
fn the_written_report_matches_the_published_schema() {
    let (_temp, text) = written_report();
    let report: Value = serde_json::from_str(&text).unwrap();
    let validator = validator();
    let errors: Vec<String> = validator
        .iter_errors(&report)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{errors:#?}");
}

/// Breaks a written report the way a buggy writer could.
type Mutation = fn(&mut Value);

#[test]
fn the_schema_rejects_reports_a_consumer_could_not_read() {
    let (_temp, text) = written_report();
    let report: Value = serde_json::from_str(&text).unwrap();
    let validator = validator();
    let broken: [(&str, Mutation); 6] = [
        ("unknown skip kind", |r| {
            r["scenarios"][2]["checks"][3]["skip_kind"] = "no-mesh".into()
        }),
        ("skip counts as text", |r| {
            r["scenarios"][2]["skipped_by_kind"]["no-data-plane"] = "2".into()
        }),
        ("unknown verdict", |r| {
            r["scenarios"][0]["verdict"] = "pass".into()
        }),
        ("missing checks", |r| {
            r["scenarios"][1].as_object_mut().unwrap().remove("checks");
        }),
        ("duration as text", |r| {
            r["scenarios"][1]["checks"][0]["duration"] = "5ms".into()
        }),
        ("request without outcome", |r| {
            r["scenarios"][0]["loads"][0]["timeline"][7]
                .as_object_mut()
                .unwrap()
                .remove("outcome");
        }),
    ];
    for (what, mutate) in broken {
        let mut mutated = report.clone();
        mutate(&mut mutated);
        assert!(
            !validator.is_valid(&mutated),
            "the schema accepts a report with {what}"
        );
    }
}

/// Every property name in the schema, with the definition it belongs to.
fn schema_fields(schema: &Value) -> Vec<(String, String)> {
    let mut fields = Vec::new();
    let mut visit = |owner: &str, object: &Value| {
        if let Some(properties) = object.get("properties").and_then(Value::as_object) {
            for name in properties.keys() {
                fields.push((owner.to_string(), name.clone()));
            }
        }
    };
    visit("RunReport", schema);
    if let Some(defs) = schema.get("$defs").and_then(Value::as_object) {
        for (name, def) in defs {
            visit(name, def);
        }
    }
    fields
}

#[test]
fn every_field_of_the_schema_is_documented() {
    let doc = std::fs::read_to_string(repo_file(SCHEMA_DOC)).unwrap();
    let fields = schema_fields(&json::schema());
    assert!(fields.len() > 40, "only {} fields found", fields.len());
    // Each type has its own section, `### Name`, with a row per field: | `field` | ...
    let missing: Vec<String> = fields
        .iter()
        .filter(|(owner, field)| {
            let Some(start) = doc.find(&format!("\n### `{owner}`")) else {
                return true;
            };
            let section = &doc[start + 1..];
            let section = &section[..section[4..].find("\n#").map_or(section.len(), |e| e + 4)];
            !section.contains(&format!("| `{field}` |"))
        })
        .map(|(owner, field)| format!("{owner}.{field}"))
        .collect();
    assert!(
        missing.is_empty(),
        "{SCHEMA_DOC} does not document {missing:?}"
    );
    assert!(doc.contains(&format!("SCHEMA_VERSION` is {SCHEMA_VERSION}")));
}

fn valid(report: &Value) {
    let errors: Vec<String> = validator()
        .iter_errors(report)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{errors:#?}");
}

#[test]
fn each_scenario_says_how_its_verdict_reads_with_its_skips_counted_by_kind() {
    let (_temp, text) = written(&report_fixture::with_skips());
    let report: Value = serde_json::from_str(&text).unwrap();
    valid(&report);
    let by_name = |name: &str| {
        report["scenarios"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .unwrap_or_else(|| panic!("no scenario {name}"))
            .clone()
    };
    let bluegreen = by_name(report_fixture::PASSED_SCENARIO);
    assert_eq!(bluegreen["verdict"], "passed");
    assert_eq!(
        bluegreen["verdict_label"],
        "passed, 3 skipped (no-data-plane)"
    );
    assert_eq!(
        bluegreen["skipped_by_kind"],
        serde_json::json!({ "no-data-plane": 3 })
    );
    assert_eq!(bluegreen["checks"][4]["skip_kind"], "no-data-plane");
    let feature = by_name(report_fixture::FEATURE_SCENARIO);
    assert_eq!(
        feature["skipped_by_kind"],
        serde_json::json!({ "not-applicable": 1, "not-run": 3 })
    );
    // Control: a scenario without skips has no count, and reads as its verdict.
    let rolling = by_name(report_fixture::FAILED_SCENARIO);
    assert!(rolling.get("skipped_by_kind").is_none(), "{rolling}");
    assert_eq!(rolling["verdict_label"], "failed");
    // The derived fields do not get in the way of reading the report back.
    let read: RunReport = serde_json::from_str(&text).unwrap();
    assert_eq!(read, report_fixture::with_skips());
}

#[test]
fn an_interrupted_run_writes_what_finished_marked_interrupted() {
    let temp = tempfile::tempdir().unwrap();
    let mut writer = FileReporter::new(temp.path());
    for event in report_fixture::interrupted_events(&report_fixture::with_skips(), 2) {
        writer.event(&event).unwrap();
    }
    let files = writer.written().expect("RunInterrupted writes the reports");
    let text = std::fs::read_to_string(&files.json).unwrap();
    let report: Value = serde_json::from_str(&text).unwrap();
    valid(&report);
    assert_eq!(
        report["interrupted"],
        serde_json::json!({ "unfinished": ["https", "feature-branch"] })
    );
    assert_eq!(report["verdict"], "error");
    let names: Vec<&str> = report["scenarios"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            report_fixture::PASSED_SCENARIO,
            report_fixture::FAILED_SCENARIO
        ]
    );
    assert_eq!(
        report["scenario_totals"],
        serde_json::json!({ "passed": 1, "failed": 1, "skipped": 0, "error": 0 })
    );
    assert_eq!(report["substrate"], "local");
    // The finished scenarios are written whole, as a finished run writes them.
    let read: RunReport = serde_json::from_str(&text).unwrap();
    assert_eq!(read.scenarios, report_fixture::with_skips().scenarios[..2]);

    // Control: a run that finished is not marked.
    let (_temp, finished) = written_report();
    let finished: Value = serde_json::from_str(&finished).unwrap();
    assert!(finished.get("interrupted").is_none());
}
