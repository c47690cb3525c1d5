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

fn istiod(image: &str) -> Deployment {
    serde_json::from_value(serde_json::json!({
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
    .unwrap()
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

fn run_existing(
    kubeconfig: &std::path::Path,
    report: &std::path::Path,
    extra: &[&str],
) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_cdcheck"))
        .args(["run", "--substrate", "existing", "--kubeconfig"])
        .arg(kubeconfig)
        .args(["--report-dir"])
        .arg(report)
        .args(extra)
        .env_remove("KUBECONFIG")
        .output()
        .unwrap()
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
    let out = tokio::task::block_in_place(|| {
        run_existing(
            &cluster.kubeconfig,
            report.path(),
            &["--filter", "environments-rbac", "--exact"],
        )
    });
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("error: failed to check the existing cluster: find Istio on the cluster: no Deployment istiod in namespace istio-system"), "{stderr}");

    deployments
        .create(
            &PostParams::default(),
            &istiod("docker.io/istio/pilot:1.30.3"),
        )
        .await
        .unwrap();
    let result = async {
        let found = existing::istio(&cluster.client).await.unwrap();
        assert_eq!(
            (found.version.as_str(), found.is_pinned()),
            ("1.30.3", true)
        );

        // A run on the existing cluster: a control-plane scenario passes through --kubeconfig.
        let out = tokio::task::block_in_place(|| {
            run_existing(
                &cluster.kubeconfig,
                report.path(),
                &["--filter", "environments-rbac", "--exact"],
            )
        });
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{stderr}");
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
        let out = tokio::task::block_in_place(|| {
            run_existing(
                &cluster.kubeconfig,
                report.path(),
                &[
                    "--filter",
                    "environments-rbac",
                    "--exact",
                    "--require",
                    "data-plane",
                ],
            )
        });
        let required = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{required}");
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
        deployments
            .create(
                &PostParams::default(),
                &istiod("gcr.io/istio-release/pilot:1.29.1-distroless"),
            )
            .await
            .unwrap();
        let found = existing::istio(&cluster.client).await.unwrap();
        assert_eq!(
            (found.version.as_str(), found.is_pinned()),
            ("1.29.1", false)
        );
    };
    let outcome = futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(result)).await;
    delete_istiod(&deployments).await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

#[tokio::test]
async fn the_gateway_address_is_the_load_balancers_and_a_pending_one_is_named() {
    use k8s_openapi::api::core::v1::Service;
    let cluster = require_cluster!();
    let client = &cluster.client;
    let namespace = common::unique_env("lb");
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({"metadata": {"name": namespace}})).unwrap(),
        )
        .await
        .unwrap();
    let result = async {
        let error = existing::gateway_address(client, &namespace, "gw")
            .await
            .unwrap_err();
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
        let error = existing::gateway_address(client, &namespace, "gw")
            .await
            .unwrap_err();
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
            let found = existing::gateway_address(client, &namespace, "gw")
                .await
                .unwrap();
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
    let outcome = futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(result)).await;
    let _ = namespaces
        .delete(&namespace, &DeleteParams::background())
        .await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

#[tokio::test]
async fn only_namespaces_labelled_as_cdchecks_are_created_reused_or_deleted() {
    let cluster = require_cluster!();
    let client = &cluster.client;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let run = common::unique_env("run");
    let foreign = common::unique_env("foreign");
    let ours = common::unique_env("ours");
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(
                serde_json::json!({"metadata": {"name": foreign, "labels": {"team": "payments"}}}),
            )
            .unwrap(),
        )
        .await
        .unwrap();
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
