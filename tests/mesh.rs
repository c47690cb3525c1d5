//! The local mesh itself: the rendered boutique answers through the real ingress
//! gateway (istiod's translation of its Gateway and VirtualService, Envoy serving it)
//! from pods that are processes, and a pod that never passes its readiness probe
//! receives no traffic, because Kubernetes' own EndpointSlices leave it out.

mod common;
mod support_gateway;

use std::collections::BTreeMap;
use std::time::Duration;

use cdcheck::manifests::Bundle;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams, Patch, PatchParams};

/// The mesh's gateway is shared: its tests take turns.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn mesh() -> Option<common::Cluster> {
    common::mesh_cluster().await
}

/// The frontend of `env`.
fn frontend(env: &str) -> Bundle {
    common::only_services(&common::render(env, "v0.10.6", |_| {}), &["frontend"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_serves_the_rendered_frontend_from_both_of_its_pods() {
    let Some(cluster) = mesh().await else { return };
    let _turn = SERIAL.lock().await;
    let client = cluster.client.clone();
    let cluster_ref = &cluster;
    common::with_temp_env(&cluster, "mesh-gw", |env| async move {
        let host = format!("{env}.boutique.test");
        common::deploy(cluster_ref, &frontend(&env), &env).await;
        support_gateway::expose(&client, &env).await;
        support_gateway::wait_serving(&host).await;
        let (by_pod, failed) = support_gateway::through_gateway(&host, 60).await;
        assert_eq!(failed, 0, "requests failed through the gateway: {by_pod:?}");
        let mut expected = support_gateway::ready_frontend_pods(&client, &env).await;
        expected.sort();
        let served: Vec<String> = by_pod.keys().cloned().collect();
        assert_eq!(expected.len(), 2, "two Ready frontend pods: {expected:?}");
        assert_eq!(served, expected, "answers per pod: {by_pod:?}");

        // Control: with one replica, the same attribution sees one pod only.
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &env);
        deployments
            .patch(
                "frontend",
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({"spec": {"replicas": 1}})),
            )
            .await
            .expect("scale frontend to 1");
        let mut one = Vec::new();
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let (by_pod, failed) = support_gateway::through_gateway(&host, 20).await;
            if failed == 0 && by_pod.len() == 1 {
                one = by_pod.keys().cloned().collect();
                break;
            }
        }
        assert_eq!(one.len(), 1, "after scaling to 1, one pod answers");
    })
    .await;
}

/// A Deployment selected by frontend's Service whose pods run the broken release.
fn broken_frontend(env: &str, with_readiness_probe: bool) -> serde_json::Value {
    let full = common::render(env, "v0.10.6", |_| {});
    let mut deployment = full
        .deployments()
        .find(|d| d.metadata.name.as_deref() == Some("frontend"))
        .cloned()
        .expect("frontend Deployment");
    deployment.metadata.name = Some("frontend-broken".into());
    let spec = deployment.spec.as_mut().expect("spec");
    spec.replicas = Some(1);
    let pod = spec.template.spec.as_mut().expect("pod spec");
    let container = &mut pod.containers[0];
    container.image = Some(format!(
        "{}/frontend:cdcheck-broken-never-ready",
        cdcheck::versions::ONLINE_BOUTIQUE_REGISTRY
    ));
    if !with_readiness_probe {
        container.readiness_probe = None;
    }
    let mut value = serde_json::to_value(&deployment).expect("json");
    value["apiVersion"] = "apps/v1".into();
    value["kind"] = "Deployment".into();
    value
}

/// Whether the broken pod's endpoint in frontend's EndpointSlices is ready, once
/// the EndpointSlice controller lists it (`None` until then).
async fn broken_endpoint_ready(client: &kube::Client, env: &str) -> Option<bool> {
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), env);
    let slices = slices
        .list(&ListParams::default().labels("kubernetes.io/service-name=frontend"))
        .await
        .expect("list EndpointSlices");
    slices
        .items
        .iter()
        .flat_map(|s| s.endpoints.iter().flatten())
        .find(|e| {
            e.target_ref
                .as_ref()
                .and_then(|r| r.name.as_deref())
                .is_some_and(|n| n.starts_with("frontend-broken"))
        })
        .map(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(false))
}

/// What the gateway answered with the broken pod beside the good ones: answers per
/// pod, failures and how many requests were sent; `None` when the mesh cannot start
/// (reported by `skip_or_fail`).
async fn with_broken_pod(with_readiness_probe: bool) -> Option<(BTreeMap<String, u64>, u64, u64)> {
    const REQUESTS: u64 = 200;
    let cluster = mesh().await?;
    let _turn = SERIAL.lock().await;
    let client = cluster.client.clone();
    let cluster_ref = &cluster;
    let outcome = common::with_temp_env(&cluster, "mesh-ready", |env| async move {
        let host = format!("{env}.boutique.test");
        common::deploy(cluster_ref, &frontend(&env), &env).await;
        support_gateway::expose(&client, &env).await;
        support_gateway::wait_serving(&host).await;
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &env);
        deployments
            .patch(
                "frontend-broken",
                &PatchParams::apply("cdcheck-test").force(),
                &Patch::Apply(broken_frontend(&env, with_readiness_probe)),
            )
            .await
            .expect("apply frontend-broken");
        // Wait on what decides the outcome rather than a fixed time: the EndpointSlice
        // controller has listed the broken pod (ready without a probe, never with one),
        // and, without a probe, istiod has pushed it to the gateway (a request fails).
        let bound = Duration::from_secs(60);
        let started = std::time::Instant::now();
        let expected_ready = !with_readiness_probe;
        loop {
            if broken_endpoint_ready(&client, &env).await == Some(expected_ready) {
                break;
            }
            assert!(
                started.elapsed() < bound,
                "the broken pod's endpoint is not listed with ready={expected_ready} within {bound:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if expected_ready {
            loop {
                let (_, failed) = support_gateway::through_gateway(&host, 10).await;
                if failed > 0 {
                    break;
                }
                assert!(
                    started.elapsed() < bound,
                    "the gateway never sent a request to the ready broken pod within {bound:?}"
                );
            }
        }
        support_gateway::through_gateway(&host, REQUESTS).await
    })
    .await;
    Some((outcome.0, outcome.1, REQUESTS))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_that_never_passes_its_readiness_probe_receives_no_traffic() {
    let Some((by_pod, failed, sent)) = with_broken_pod(true).await else {
        return; // skipped (reported by skip_or_fail)
    };
    assert_eq!(failed, 0, "requests failed: {by_pod:?}");
    // Every answer attributed to a pod: an empty attribution is no evidence.
    assert_eq!(
        by_pod.values().sum::<u64>(),
        sent,
        "answers per pod: {by_pod:?}"
    );
    assert!(
        by_pod.keys().all(|p| !p.starts_with("frontend-broken")),
        "the never-ready pod answered: {by_pod:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_the_same_pod_without_a_readiness_probe_gets_traffic_and_fails_it() {
    let Some((by_pod, failed, _)) = with_broken_pod(false).await else {
        return; // skipped (reported by skip_or_fail)
    };
    assert!(
        failed > 0,
        "without a readiness probe the broken pod must be in the endpoints and fail requests: {by_pod:?}"
    );
    // The good pods still answer: the failures are the broken pod's share, not an outage.
    assert!(!by_pod.is_empty(), "no answer at all: {by_pod:?}");
}
