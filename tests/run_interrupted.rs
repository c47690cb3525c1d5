//! Ctrl-C during `cdcheck run` deletes what the run created: the run exits 130
//! and no namespace labelled with a cdcheck run is left on the cluster.

mod common;

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ListParams};

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

#[tokio::test]
async fn an_interrupted_run_deletes_what_it_created() {
    let cluster = require_cluster!();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_cdcheck"))
        .args([
            "run",
            "--mesh",
            "off",
            "--filter",
            "rollback",
            "--exact",
            "--report-dir",
        ])
        .arg(tempfile::tempdir().unwrap().path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start cdcheck run");
    // Wait until the run has created its scenario namespace.
    let started = Instant::now();
    let created = loop {
        let names = run_namespaces(&cluster.client).await;
        if let Some(name) = names
            .into_iter()
            .find(|n| n.starts_with("cdcheck-rollback-"))
        {
            break name;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the run created no namespace"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let pid = child.id().expect("a running child") as i32;
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(pid, libc::SIGINT) };
    let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .expect("the run ends after Ctrl-C")
        .unwrap();
    assert_eq!(status.code(), Some(130), "{status:?}");
    let left = run_namespaces(&cluster.client).await;
    assert!(
        !left.contains(&created),
        "{created} is still there (not terminating) after the interrupted run: {left:?}"
    );
}
