//! The `cdcheck up` / `kubeconfig` / `down` commands on a private state
//! directory: `up` prints `export KUBECONFIG=...` and its processes outlive it,
//! `kubeconfig` prints the path, `down` removes everything, and asking for the
//! kubeconfig of no substrate is an error that says what to run.

mod common;

use std::process::Command;

use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, ListParams};

fn cdcheck(state_dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_cdcheck"))
        .args(args)
        .env("CDCHECK_STATE_DIR", state_dir)
        // `kubeconfig` falls back to the mesh substrate's directory; CI exports it and may
        // have a mesh running, which must not answer for this test's substrate.
        .env("CDCHECK_MESH_STATE_DIR", state_dir.with_extension("mesh"))
        .output()
        .expect("run cdcheck")
}

#[tokio::test]
async fn up_prints_the_kubeconfig_export_and_its_cluster_outlives_the_command() {
    cdcheck::install_crypto_provider();
    if common::binaries_or_skip().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let state_dir = dir.path().join("state");

    let none = cdcheck(&state_dir, &["kubeconfig"]);
    assert_eq!(none.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&none.stderr);
    assert!(
        stderr.contains("error: failed to print the local substrate's kubeconfig")
            && stderr.contains("cdcheck up --substrate local"),
        "{stderr}"
    );

    let up = cdcheck(&state_dir, &["up", "--substrate", "local", "--nodes", "2"]);
    let stdout = String::from_utf8_lossy(&up.stdout).to_string();
    assert!(
        up.status.success(),
        "up failed: {}",
        String::from_utf8_lossy(&up.stderr)
    );
    let kubeconfig = state_dir.join("kubeconfig");
    assert_eq!(
        stdout.trim(),
        format!("export KUBECONFIG={}", kubeconfig.display())
    );

    // `cdcheck up` has exited; the control plane must still answer.
    let client = cdcheck::kube::connect(&kubeconfig).await.unwrap();
    let nodes: Api<Node> = Api::all(client);
    let list = nodes
        .list(&ListParams::default().labels("type=kwok"))
        .await
        .unwrap();
    assert_eq!(list.items.len(), 2);

    let printed = cdcheck(&state_dir, &["kubeconfig"]);
    assert!(printed.status.success());
    assert_eq!(
        String::from_utf8_lossy(&printed.stdout).trim(),
        kubeconfig.display().to_string()
    );

    let down = cdcheck(&state_dir, &["down"]);
    assert!(down.status.success());
    assert!(
        String::from_utf8_lossy(&down.stderr).contains("stopped 5 processes"),
        "{}",
        String::from_utf8_lossy(&down.stderr)
    );
    assert!(!state_dir.exists());
}
