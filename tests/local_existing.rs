//! The existing-cluster mode against a real API server (the local substrate stands in
//! for a user's cluster): Istio is found, or its absence named, from the istiod
//! Deployment; namespaces are created only with cdcheck's label, one without it is
//! refused and left untouched, and clean-up deletes only what the run created; and
//! `cdcheck run --substrate existing` runs a scenario through --kubeconfig/--context.
//! The istiod Deployment in `istio-system` is shared state: one test owns it.

#[macro_use]
mod common;

use cdcheck::names::OWNED_BY_LABEL;
use std::collections::BTreeMap;

use cdcheck::substrate::existing::{self, ExistingError};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{DeleteParams, PostParams};
use kube::{Api, ResourceExt};

/// Creates an istiod Deployment running `image`, all cdcheck looks at to find Istio.
async fn create_istiod(api: &Api<Deployment>, image: &str) {
    let istiod: Deployment = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "istiod", "namespace": "istio-system"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "istiod"}},
            "template": {
                "metadata": {"labels": {"app": "istiod"}},
                "spec": {"containers": [{"name": "discovery", "image": image}]},
            },
        },
    }))
    .unwrap();
    api.create(&PostParams::default(), &istiod).await.unwrap();
}

async fn delete_istiod(api: &Api<Deployment>) {
    let _ = api.delete("istiod", &DeleteParams::background()).await;
    for _ in 0..100 {
        if api.get_opt("istiod").await.unwrap().is_none() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("istiod was not deleted");
}

/// Runs `body`, then `clean_up` whether or not it panicked, and re-raises its panic: what a
/// test changed on the shared cluster is put back even when one of its assertions fails.
async fn then_clean_up(body: impl Future<Output = ()>, clean_up: impl Future<Output = ()>) {
    let outcome = futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(body)).await;
    clean_up.await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// Creates the namespace `metadata` describes.
async fn create_namespace(namespaces: &Api<Namespace>, metadata: serde_json::Value) {
    let namespace: Namespace =
        serde_json::from_value(serde_json::json!({ "metadata": metadata })).expect("a Namespace");
    namespaces
        .create(&PostParams::default(), &namespace)
        .await
        .unwrap();
}

/// `cdcheck run --substrate existing` of the `environments-rbac` scenario through
/// `kubeconfig`, reporting into `report`, with `extra`: its exit code and stderr.
fn run_rbac_scenario(
    kubeconfig: &std::path::Path,
    report: &std::path::Path,
    extra: &[&str],
) -> (Option<i32>, String) {
    let out = tokio::task::block_in_place(|| {
        std::process::Command::new(env!("CARGO_BIN_EXE_cdcheck"))
            .args(["run", "--substrate", "existing", "--kubeconfig"])
            .arg(kubeconfig)
            .args(["--report-dir"])
            .arg(report)
            .args(["--filter", "environments-rbac", "--exact"])
            .args(extra)
            .env_remove("KUBECONFIG")
            .output()
            .unwrap()
    });
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.code(), stderr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istio_is_found_by_istiods_image_and_a_cluster_without_it_is_refused() {
    let cluster = require_cluster!();
    let deployments: Api<Deployment> = Api::namespaced(cluster.client.clone(), "istio-system");
    delete_istiod(&deployments).await;

    // Without istiod: the library names what is missing, and `run` exits 2 saying so.
    let error = existing::istio(&cluster.client).await.unwrap_err();
    assert!(matches!(error, ExistingError::IstioMissing), "{error}");
    let report = tempfile::tempdir().unwrap();
    let (code, stderr) = run_rbac_scenario(&cluster.kubeconfig, report.path(), &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("error: failed to check the existing cluster: find Istio on the cluster: no Deployment istiod in namespace istio-system"), "{stderr}");

    create_istiod(&deployments, "docker.io/istio/pilot:1.30.3").await;
    let result = async {
        let found = existing::istio(&cluster.client).await.unwrap();
        assert_eq!(
            (found.version.as_str(), found.is_pinned()),
            ("1.30.3", true)
        );

        // A run on the existing cluster: a control-plane scenario passes through --kubeconfig.
        let (code, stderr) = run_rbac_scenario(&cluster.kubeconfig, report.path(), &[]);
        assert_eq!(code, Some(0), "{stderr}");
        let json: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(report.path().join("report.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(
            (json["substrate"].as_str(), json["verdict"].as_str()),
            (Some("existing"), Some("passed")),
            "{json}"
        );
        let checks: Vec<&str> = json["scenarios"][0]["checks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["verdict"].as_str().unwrap())
            .collect();
        assert_eq!(
            checks,
            ["passed", "passed", "passed"],
            "the scenario's checks ran: {json}"
        );
        assert!(stderr.contains("existing cluster (context "), "{stderr}");
        // No gateway Service and no --ingress: the data plane is named missing, a note
        // here, and bad input when it is required.
        assert!(
            stderr.contains("note: data-plane steps will be skipped: failed to find the ingress gateway's address: no Service istio-system/istio-ingressgateway"),
            "{stderr}"
        );
        let (code, required) = run_rbac_scenario(
            &cluster.kubeconfig,
            report.path(),
            &["--require", "data-plane"],
        );
        assert_eq!(code, Some(2), "{required}");
        assert!(
            required.contains("--ingress http://HOST[:PORT]"),
            "{required}"
        );
        assert!(
            stderr.contains("Istio 1.30.3 (docker.io/istio/pilot:1.30.3"),
            "{stderr}"
        );

        // An older Istio is reported as such, not refused.
        delete_istiod(&deployments).await;
        create_istiod(&deployments, "gcr.io/istio-release/pilot:1.29.1-distroless").await;
        let found = existing::istio(&cluster.client).await.unwrap();
        assert_eq!(
            (found.version.as_str(), found.is_pinned()),
            ("1.29.1", false)
        );
    };
    then_clean_up(result, delete_istiod(&deployments)).await;
}

#[tokio::test]
async fn the_gateway_address_is_the_load_balancers_and_a_pending_one_is_named() {
    use k8s_openapi::api::core::v1::Service;
    let cluster = require_cluster!();
    let client = &cluster.client;
    let namespace = common::unique_env("lb");
    let namespaces: Api<Namespace> = Api::all(client.clone());
    create_namespace(&namespaces, serde_json::json!({"name": namespace})).await;
    let gateway_address = || existing::gateway_address(client, &namespace, "gw");
    let result = async {
        let error = gateway_address().await.unwrap_err();
        assert!(
            matches!(error, ExistingError::GatewayMissing { .. }),
            "{error}"
        );
        let services: Api<Service> = Api::namespaced(client.clone(), &namespace);
        let service: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "gw"},
            "spec": {
                "type": "LoadBalancer",
                "selector": {"istio": "ingressgateway"},
                "ports": [
                    {"name": "status-port", "port": 15021},
                    {"name": "http2", "port": 8080},
                    {"name": "https", "port": 8443},
                ],
            },
        }))
        .unwrap();
        services
            .create(&PostParams::default(), &service)
            .await
            .unwrap();
        let error = gateway_address().await.unwrap_err();
        assert!(
            error.to_string().contains(&format!("Service {namespace}/gw is of type LoadBalancer and has no load-balancer address yet")),
            "{error}"
        );
        // What a cloud's controller writes: a host name (AWS) or an IP (GKE, AKS).
        for (ingress, host) in [
            (
                serde_json::json!({"hostname": "a1b2.elb.example.com"}),
                "a1b2.elb.example.com",
            ),
            (serde_json::json!({"ip": "203.0.113.7"}), "203.0.113.7"),
        ] {
            let status = serde_json::json!({"status": {"loadBalancer": {"ingress": [ingress]}}});
            services
                .patch_status(
                    "gw",
                    &kube::api::PatchParams::default(),
                    &kube::api::Patch::Merge(&status),
                )
                .await
                .unwrap();
            let found = gateway_address().await.unwrap();
            assert_eq!(
                found,
                existing::GatewayAddress {
                    host: host.to_string(),
                    http_port: 8080,
                    https_port: 8443
                }
            );
        }
    };
    let delete_namespace = async {
        let _ = namespaces
            .delete(&namespace, &DeleteParams::background())
            .await;
    };
    then_clean_up(result, delete_namespace).await;
}

#[tokio::test]
async fn only_namespaces_labelled_as_cdchecks_are_created_reused_or_deleted() {
    let cluster = require_cluster!();
    let client = &cluster.client;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let run = common::unique_env("run");
    let foreign = common::unique_env("foreign");
    let ours = common::unique_env("ours");
    create_namespace(
        &namespaces,
        serde_json::json!({"name": foreign, "labels": {"team": "payments"}}),
    )
    .await;
    let labels = BTreeMap::from([("istio-injection".to_string(), "enabled".to_string())]);

    // A namespace of that name that is not ours: refused, and left exactly as it was.
    let error = existing::create_namespace(client, &foreign, &run, &labels)
        .await
        .unwrap_err();
    assert!(matches!(error, ExistingError::NotOwned { .. }), "{error}");
    assert_eq!(
        error.to_string(),
        format!(
            "touch namespace {foreign}: it exists without the label {OWNED_BY_LABEL}=cdcheck, so cdcheck did not create it and leaves it alone"
        )
    );
    assert!(existing::ensure_owned(client, &foreign).await.is_err());
    assert!(matches!(
        existing::delete_namespace(client, &foreign).await,
        Err(ExistingError::NotOwned { .. })
    ));
    let untouched = namespaces.get(&foreign).await.unwrap();
    assert_eq!(
        untouched.labels(),
        &BTreeMap::from([
            ("team".to_string(), "payments".to_string()),
            ("kubernetes.io/metadata.name".to_string(), foreign.clone())
        ])
    );
    assert!(untouched.metadata.deletion_timestamp.is_none());

    // Ours: created with the label and the run, reused on a second create, cleaned up.
    existing::create_namespace(client, &ours, &run, &labels)
        .await
        .unwrap();
    existing::create_namespace(client, &ours, &run, &labels)
        .await
        .unwrap();
    let created = namespaces.get(&ours).await.unwrap();
    assert_eq!(
        created.labels().get(OWNED_BY_LABEL).map(String::as_str),
        Some("cdcheck")
    );
    assert_eq!(
        created.labels().get("istio-injection").map(String::as_str),
        Some("enabled")
    );
    existing::ensure_owned(client, &ours).await.unwrap();
    let deleted = existing::cleanup(client, &run).await.unwrap();
    assert_eq!(deleted, vec![ours.clone()]);
    let after = namespaces.get_opt(&ours).await.unwrap();
    assert!(after.is_none() || after.unwrap().metadata.deletion_timestamp.is_some());
    // Control of the clean-up's reach: the foreign namespace is still there, not terminating.
    assert!(
        namespaces
            .get(&foreign)
            .await
            .unwrap()
            .metadata
            .deletion_timestamp
            .is_none()
    );
    namespaces
        .delete(&foreign, &DeleteParams::default())
        .await
        .unwrap();
}

#[tokio::test]
async fn connect_uses_the_named_context_and_names_a_missing_one() {
    let cluster = require_cluster!();
    let text = std::fs::read_to_string(&cluster.kubeconfig).unwrap();
    let mut config: serde_json::Value = serde_saphyr::from_str(&text).unwrap();
    let current = config["current-context"].as_str().unwrap().to_string();
    // A second context, made current, pointing at nothing: --context must win over it.
    let mut dead = config["contexts"][0].clone();
    dead["name"] = "dead".into();
    dead["context"]["cluster"] = "dead".into();
    config["contexts"].as_array_mut().unwrap().push(dead);
    let mut dead_cluster = config["clusters"][0].clone();
    dead_cluster["name"] = "dead".into();
    dead_cluster["cluster"]["server"] = "https://127.0.0.1:1".into();
    config["clusters"]
        .as_array_mut()
        .unwrap()
        .push(dead_cluster);
    config["current-context"] = "dead".into();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kubeconfig");
    std::fs::write(&path, serde_json::to_string(&config).unwrap()).unwrap();

    let found = existing::connect(Some(&path), Some(&current))
        .await
        .unwrap();
    assert_eq!(found.context, current);
    found.client.apiserver_version().await.unwrap();
    // Control: the current context (dead) is what is used without --context.
    let dead = existing::connect(Some(&path), None).await.unwrap();
    assert_eq!(dead.context, "dead");
    assert!(dead.client.apiserver_version().await.is_err());
    let missing = existing::connect(Some(&path), Some("nope"))
        .await
        .err()
        .unwrap();
    assert!(
        missing
            .to_string()
            .starts_with(&format!("read kubeconfig {}", path.display())),
        "{missing}"
    );
    let no_file = existing::connect(Some(&dir.path().join("absent")), None)
        .await
        .err()
        .unwrap();
    assert!(no_file.to_string().contains("absent"), "{no_file}");
}
