//! The mesh's ingress gateway for a test environment: a Gateway of the namespace's own in
//! front of the rendered frontend VirtualService, and requests through it attributed to
//! the frontend pod that answered.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::time::Duration;

use cdcheck::scenario::dataplane::gateway_target;
use cdcheck::substrate::DataPlane;
use cdcheck::traffic::attribution::AttributionRule;
use cdcheck::traffic::load::{self, LoadSpec};
use cdcheck::traffic::target::Target;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};

use crate::common;

/// Exposes `env`'s frontend on the gateway with a Gateway of the namespace's own (port 80,
/// the environment's host only) and the rendered `frontend` VirtualService bound to it:
/// nothing outlives the namespace, and no `*` server competes with other tests' Gateways.
pub async fn expose(client: &kube::Client, env: &str) {
    let full = common::render(env, "v0.10.6", |_| {});
    let mut vs = full
        .objects
        .iter()
        .find(|o| o.kind() == "VirtualService" && o.name() == "frontend")
        .expect("the frontend VirtualService")
        .to_json()
        .expect("json");
    vs["spec"]["gateways"] = serde_json::json!([format!("{env}/{env}")]);
    let gateway = serde_json::json!({
        "apiVersion": "networking.istio.io/v1", "kind": "Gateway",
        "metadata": { "name": env, "namespace": env },
        "spec": {
            "selector": { "istio": "ingressgateway" },
            "servers": [{
                "port": { "number": 80, "name": "http", "protocol": "HTTP" },
                "hosts": [format!("{env}.boutique.test")]
            }]
        }
    });
    for (object, kind) in [(gateway, "Gateway"), (vs, "VirtualService")] {
        let gvk = kube::api::GroupVersionKind::gvk("networking.istio.io", "v1", kind);
        cdcheck::kube::apply::apply_value(client, &gvk, &object)
            .await
            .unwrap_or_else(|e| panic!("apply the {kind}: {}", common::chain(&e)));
    }
}

/// Sends `n` requests through the gateway at 100/s; answers per pod and failures.
pub async fn through_gateway(host: &str, n: u64) -> (BTreeMap<String, u64>, u64) {
    let ingress = DataPlane::local_mesh(common::mesh_state_dir());
    let target = Target::Http(gateway_target(&ingress, host, "/").expect("target"));
    let spec = LoadSpec::open(100.0, Duration::from_millis(n * 10))
        .with_attribution(AttributionRule::frontend_pod());
    let timeline = load::run(&target, &spec, None).await.expect("load");
    let summary = cdcheck::traffic::record::Summary::of(&timeline);
    (summary.labels, summary.failed)
}

/// Waits until `host` answers through the gateway (istiod pushes routes and endpoints
/// a moment after the rollout completes).
pub async fn wait_serving(host: &str) {
    for _ in 0..150 {
        let (_, failed) = through_gateway(host, 3).await;
        if failed == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("{host} never answered through the gateway");
}

pub async fn ready_frontend_pods(client: &kube::Client, env: &str) -> Vec<String> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), env);
    pods.list(&ListParams::default().labels("app=frontend"))
        .await
        .expect("list pods")
        .items
        .into_iter()
        .filter(has_ready_condition)
        .filter_map(|p| p.metadata.name)
        .collect()
}

/// Whether the pod's status has the condition Ready=True (terminating or not).
pub fn has_ready_condition(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}
