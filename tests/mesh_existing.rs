//! `cdcheck run --substrate existing` against the local mesh, which stands in for a
//! user's cluster with Istio: the runner drives the data plane as it does on kind and
//! existing clusters — loads and probes through the gateway address given by
//! `--ingress`, gRPC health and `userid` routing by agent pods (`cdcheck agent` beside a
//! sidecar) whose records are read through the pod log API and attributed by the
//! sidecar's per-host counters, named by the pods that have those addresses. Its
//! negative controls are a pipeline whose userid route matches a prefix instead of the
//! exact id, and one whose mainline adservice Service also selects the feature's pods
//! (which per-Service counters cannot see).

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, PostParams};

/// The mesh's istiod runs outside the cluster; an existing cluster is recognized by the
/// `istio-system/istiod` Deployment, so the test records one with no replicas.
async fn record_istiod(client: &kube::Client) {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "istio-system");
    if deployments.get_opt("istiod").await.unwrap().is_some() {
        return;
    }
    let istiod: Deployment = serde_json::from_value(serde_json::json!({
        "metadata": {
            "name": "istiod",
            "namespace": "istio-system",
            "annotations": {"cdcheck.io/stands-for": "the local mesh's istiod, which runs outside the cluster"},
        },
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": {"app": "istiod"}},
            "template": {
                "metadata": {"labels": {"app": "istiod"}},
                "spec": {"containers": [{
                    "name": "discovery",
                    "image": format!("docker.io/istio/pilot:{}", cdcheck::versions::ISTIO),
                }]},
            },
        },
    }))
    .unwrap();
    match deployments.create(&PostParams::default(), &istiod).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => panic!("record istiod: {e}"),
    }
}

fn run_existing(kubeconfig: &Path, report: &Path, extra: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_cdcheck"))
        .args(["run", "--substrate", "existing", "--kubeconfig"])
        .arg(kubeconfig)
        .args([
            "--ingress",
            "http://127.0.0.1:30080",
            "--ingress",
            "https://127.0.0.1:30443",
            "--require",
            "data-plane",
            "--report-dir",
        ])
        .arg(report)
        .args(extra)
        .env_remove("KUBECONFIG")
        .output()
        .unwrap()
}

/// `check name -> (verdict, findings)` of every scenario in the report.
fn checks(report: &Path) -> std::collections::BTreeMap<String, (String, String)> {
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(report.join("report.json")).unwrap())
            .unwrap();
    let mut out = std::collections::BTreeMap::new();
    for scenario in json["scenarios"].as_array().unwrap() {
        for check in scenario["checks"].as_array().unwrap() {
            out.insert(
                format!(
                    "{}/{}",
                    scenario["name"].as_str().unwrap(),
                    check["name"].as_str().unwrap()
                ),
                (
                    check["verdict"].as_str().unwrap().to_string(),
                    check["findings"].to_string(),
                ),
            );
        }
    }
    out
}

/// The reference pipeline (`fixtures/pipeline`: current and feature) copied into a
/// temporary directory, each file's text passed through `mutate(file name, text)`.
fn copy_pipeline(mutate: impl Fn(&str, String) -> String) -> tempfile::TempDir {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/pipeline");
    let pipeline = tempfile::tempdir().unwrap();
    for dir in ["current", "feature"] {
        std::fs::create_dir(pipeline.path().join(dir)).unwrap();
        for entry in std::fs::read_dir(fixture.join(dir)).unwrap() {
            let entry = entry.unwrap();
            let name = entry.file_name().to_string_lossy().to_string();
            let text = mutate(&name, std::fs::read_to_string(entry.path()).unwrap());
            std::fs::write(pipeline.path().join(dir).join(&name), text).unwrap();
        }
    }
    pipeline
}

/// Runs the feature-branch scenario on `pipeline` (from [`copy_pipeline`]).
fn run_feature_branch(kubeconfig: &Path, report: &Path, pipeline: &Path) -> Output {
    let manifests = pipeline.join("current");
    let features = pipeline.join("feature");
    run_existing(
        kubeconfig,
        report,
        &[
            "--manifests",
            manifests.to_str().unwrap(),
            "--feature-manifests",
            features.to_str().unwrap(),
            "--filter",
            "feature-branch",
            "--exact",
        ],
    )
}

/// The mesh's gateway is shared: the runs take turns.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn mesh_kubeconfig() -> Option<PathBuf> {
    match common::start_mesh() {
        Ok(path) => Some(path),
        Err(why) => {
            common::skip::skip_or_fail(&format!("the local mesh cannot start: {why}"));
            None
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_existing_cluster_path_drives_the_data_plane_by_ingress_url_and_agent_pods() {
    cdcheck::install_crypto_provider();
    let _turn = SERIAL.lock().await;
    let Some(kubeconfig) = mesh_kubeconfig() else {
        return;
    };
    let config = cdcheck::kube::config_from(&kubeconfig).await.unwrap();
    let client = kube::Client::try_from(config).unwrap();
    record_istiod(&client).await;

    let report = tempfile::tempdir().unwrap();
    let out = tokio::task::block_in_place(|| {
        run_existing(
            &kubeconfig,
            report.path(),
            &["--filter", "smoke", "--filter", "feature-branch", "--exact"],
        )
    });
    let stderr = String::from_utf8_lossy(&out.stderr);
    let checks = checks(report.path());
    assert_eq!(out.status.code(), Some(0), "{stderr}\n{checks:#?}");
    assert!(
        stderr.contains(&format!(
            "calls inside the mesh by agent pods ({})",
            cdcheck::versions::AGENT_IMAGE
        )),
        "{stderr}"
    );
    for name in [
        "smoke/probe-http",
        "smoke/probe-grpc",
        "feature-branch/probe-routing",
        "feature-branch/probe-routing-userid",
    ] {
        assert_eq!(
            checks.get(name).map(|(v, _)| v.as_str()),
            Some("passed"),
            "{name}: {checks:#?}"
        );
    }
    // The agent pods are gone with their scenarios' namespaces; none is left behind.
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::all(client.clone());
    let left = pods
        .list(&kube::api::ListParams::default().labels("app=cdcheck-agent"))
        .await
        .unwrap();
    assert!(
        left.items.is_empty(),
        "agent pods left: {:?}",
        left.items.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_userid_route_that_matches_a_prefix_fails_the_agents_routing_check() {
    cdcheck::install_crypto_provider();
    let _turn = SERIAL.lock().await;
    let Some(kubeconfig) = mesh_kubeconfig() else {
        return;
    };
    let config = cdcheck::kube::config_from(&kubeconfig).await.unwrap();
    let client = kube::Client::try_from(config).unwrap();
    record_istiod(&client).await;

    // The reference pipeline's output with one field changed: `exact` becomes `prefix`.
    let exact = "        userid:\n          exact: 5e3b9c1a-cdcheck-fixture-session";
    let pipeline = copy_pipeline(|file, text| {
        if file != "feature.yaml" {
            return text;
        }
        assert!(text.contains(exact), "the fixture's userid route changed");
        text.replace(
            exact,
            "        userid:\n          prefix: 5e3b9c1a-cdcheck-fixture-session",
        )
    });

    let report = tempfile::tempdir().unwrap();
    let out = tokio::task::block_in_place(|| {
        run_feature_branch(&kubeconfig, report.path(), pipeline.path())
    });
    let stderr = String::from_utf8_lossy(&out.stderr);
    let checks = checks(report.path());
    assert_eq!(out.status.code(), Some(1), "{stderr}\n{checks:#?}");
    let (verdict, findings) = &checks["feature-branch/probe-routing-userid"];
    assert_eq!(verdict, "failed", "{checks:#?}");
    assert!(
        findings.contains("userid variant `userid plus one character`"),
        "{findings}"
    );
    assert!(!findings.contains("variant `no userid`"), "{findings}");
    // The cookie route was not touched: its probe still passes.
    assert_eq!(
        checks["feature-branch/probe-routing"].0, "passed",
        "{checks:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mainline_service_that_selects_feature_pods_fails_the_agents_routing_check() {
    cdcheck::install_crypto_provider();
    let _turn = SERIAL.lock().await;
    let Some(kubeconfig) = mesh_kubeconfig() else {
        return;
    };
    let config = cdcheck::kube::config_from(&kubeconfig).await.unwrap();
    let client = kube::Client::try_from(config).unwrap();
    record_istiod(&client).await;

    // The feature's adservice pods keep `app: adservice` (told apart from the mainline's by
    // a second label its own Service selects), so the mainline Service selects them too.
    // Every request without userid still goes to the mainline's cluster: only per-pod
    // attribution sees that some are answered by the feature.
    let pipeline = copy_pipeline(|file, text| {
        if file != "feature.yaml" {
            return text;
        }
        let documents: Vec<String> = text
            .split("\n---\n")
            .map(|doc| {
                let is = |kind: &str| {
                    doc.contains(&format!("kind: {kind}\n"))
                        && doc.contains("  name: adservice-myfeature\n")
                };
                if is("Deployment") {
                    let selector = "    matchLabels:\n      app: adservice-myfeature\n";
                    let labels = "      labels:\n        app: adservice-myfeature\n";
                    assert!(doc.contains(selector) && doc.contains(labels), "{doc}");
                    doc.replace(
                        selector,
                        "    matchLabels:\n      app: adservice\n      variant: myfeature\n",
                    )
                    .replace(
                        labels,
                        "      labels:\n        app: adservice\n        variant: myfeature\n",
                    )
                } else if is("Service") {
                    let selector = "  selector:\n    app: adservice-myfeature\n";
                    assert!(doc.contains(selector), "{doc}");
                    doc.replace(
                        selector,
                        "  selector:\n    app: adservice\n    variant: myfeature\n",
                    )
                } else {
                    doc.to_string()
                }
            })
            .collect();
        documents.join("\n---\n")
    });

    let report = tempfile::tempdir().unwrap();
    let out = tokio::task::block_in_place(|| {
        run_feature_branch(&kubeconfig, report.path(), pipeline.path())
    });
    let stderr = String::from_utf8_lossy(&out.stderr);
    let checks = checks(report.path());
    assert_eq!(out.status.code(), Some(1), "{stderr}\n{checks:#?}");
    let (verdict, findings) = &checks["feature-branch/probe-routing-userid"];
    assert_eq!(verdict, "failed", "{checks:#?}");
    // Ordinary requests are answered by a feature pod, named as such.
    assert!(
        findings.contains("userid variant `no userid` (expected Mainline)"),
        "{findings}"
    );
    assert!(findings.contains("adservice-myfeature-"), "{findings}");
    // The session's own requests reach the feature, through its own Service.
    assert!(
        !findings.contains("variant `userid of the session`"),
        "{findings}"
    );
}
