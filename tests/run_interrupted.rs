//! Ctrl-C during `cdcheck run` deletes what the run created and writes the
//! reports of what finished: the run exits 130, no namespace labelled with a
//! cdcheck run is left on the cluster, and `report.json`, `junit.xml`,
//! `report.html` and the console's summary hold the scenario that finished,
//! marked interrupted, with the one that did not named.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ListParams};
use tokio::io::AsyncBufReadExt;

/// Finishes quickly (one deploy, static and RBAC checks).
const QUICK: &str = "environments-rbac";
/// Still rolling when the quick one is done (deploy, update, roll back, undo).
const SLOW: &str = "rollback";

async fn run_namespaces(client: &kube::Client) -> Vec<String> {
    let api: Api<Namespace> = Api::all(client.clone());
    api.list(&ListParams::default().labels("cdcheck.io/run"))
        .await
        .expect("list namespaces")
        .items
        .into_iter()
        .filter(|n| n.metadata.deletion_timestamp.is_none())
        .filter_map(|n| n.metadata.name)
        .collect()
}

/// The console's verdict line of a finished scenario: ` PASS rollback (12.3 s)...`.
fn finished_line(stderr: &str, scenario: &str) -> bool {
    stderr.lines().any(|l| {
        let mut words = l.split_whitespace();
        matches!(words.next(), Some("PASS" | "FAIL" | "SKIP" | "ERROR"))
            && words.next() == Some(scenario)
    })
}

#[tokio::test]
async fn an_interrupted_run_deletes_what_it_created_and_reports_what_finished() {
    let cluster = require_cluster!();
    let report_dir = tempfile::tempdir().unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_cdcheck"))
        .args([
            "run",
            "--mesh",
            "off",
            "--filter",
            QUICK,
            "--filter",
            SLOW,
            "--exact",
            "--jobs",
            "2",
            "--report-dir",
        ])
        .arg(report_dir.path())
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start cdcheck run");
    // The console, read as it is written (a full pipe would stall the run).
    let stderr = Arc::new(Mutex::new(String::new()));
    let reader = {
        let stderr = stderr.clone();
        let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let mut text = stderr.lock().unwrap();
                text.push_str(&line);
                text.push('\n');
            }
        })
    };
    let text = || stderr.lock().unwrap().clone();

    // Interrupt once the quick scenario has finished and the slow one has created its namespace.
    let started = Instant::now();
    let created = loop {
        let names = run_namespaces(&cluster.client).await;
        let slow = names
            .into_iter()
            .find(|n| n.starts_with(&format!("cdcheck-{SLOW}-")));
        if let Some(name) = slow.filter(|_| finished_line(&text(), QUICK)) {
            break name;
        }
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "{QUICK} did not finish, or {SLOW} created no namespace, within 180 s:\n{}",
            text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        !finished_line(&text(), SLOW),
        "{SLOW} finished before the interrupt, so this run tests nothing:\n{}",
        text()
    );
    let pid = child.id().expect("a running child") as i32;
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(pid, libc::SIGINT) };
    let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .expect("the run ends after Ctrl-C")
        .unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(10), reader).await;
    let console = text();
    assert_eq!(status.code(), Some(130), "{status:?}\n{console}");
    let left = run_namespaces(&cluster.client).await;
    assert!(
        !left.contains(&created),
        "{created} is still there (not terminating) after the interrupted run: {left:?}"
    );

    // The reports: what finished, marked interrupted, and what did not, named.
    let read = |name: &str| {
        std::fs::read_to_string(report_dir.path().join(name))
            .unwrap_or_else(|e| panic!("{name} was not written: {e}\n{console}"))
    };
    let json: serde_json::Value = serde_json::from_str(&read("report.json")).unwrap();
    assert_eq!(
        json["interrupted"],
        serde_json::json!({ "unfinished": [SLOW] }),
        "{json:#}"
    );
    assert_eq!(json["verdict"], "error");
    let scenarios: Vec<&str> = json["scenarios"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(scenarios, [QUICK]);
    assert!(
        !json["scenarios"][0]["checks"]
            .as_array()
            .unwrap()
            .is_empty(),
        "{json:#}"
    );

    let junit = read("junit.xml");
    let doc = roxmltree::Document::parse(&junit).unwrap();
    assert_eq!(
        doc.root_element().attribute("name"),
        Some("cdcheck (interrupted)")
    );
    let slow_error = doc
        .descendants()
        .find(|n| n.has_tag_name("testcase") && n.attribute("classname") == Some(SLOW))
        .and_then(|n| n.children().find(|c| c.has_tag_name("error")))
        .unwrap_or_else(|| panic!("no <error> testcase for {SLOW}:\n{junit}"));
    assert_eq!(slow_error.attribute("type"), Some("interrupted"));

    let html = read("report.html");
    assert!(
        html.contains(&format!(
            "Interrupted: 1 of 2 scenarios finished; this report holds those. Not finished: {SLOW}."
        )),
        "no interrupted banner in report.html"
    );

    assert!(
        console.contains(&format!(
            "INTERRUPTED: 1 of 2 scenarios finished; not finished: {SLOW}\n"
        )),
        "{console}"
    );
    assert!(
        console.contains("Verdict: ERROR (interrupted)"),
        "{console}"
    );
}
