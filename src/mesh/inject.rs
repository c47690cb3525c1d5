//! Sidecar injection on the local mesh when it runs stand-ins (upstream's services get
//! Istio's own sidecar, [`super::sidecar`]), without a webhook and without iptables: a pod
//! that asks for a sidecar with its label `sidecar.istio.io/inject: "true"` and has no
//! `istio-proxy` container gets one from the pod runner, plus an Istio `Sidecar` resource selecting
//! that proxy alone whose egress listeners bind the pod's address (`captureMode: NONE`),
//! so the app reaches `<service>:<port>` by connecting to its own pod address.
//!
//! The proxy is selected through a static label in its node metadata (`STATIC_LABELS`,
//! which istiod adds to the pod's labels) rather than a label patched onto the pod: the
//! pod object stays as its owner wrote it.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, Pod};
use kube::api::{Api, DeleteParams};
use kube::{Client, ResourceExt};
use serde_json::json;

use super::netns::Dialer;
use super::proxy::ADMIN_PORT;
use crate::names::SIDECAR_FOR_LABEL;

/// The name Istio's injector gives the sidecar container.
pub const PROXY_CONTAINER: &str = "istio-proxy";
/// Labels copied from the pod to its `Sidecar`, so a run's clean-up finds both.
const COPIED_LABELS: [&str; 2] = ["cdcheck.io/run", crate::manifests::MANAGED_BY_LABEL];
/// How long an app held for its proxy waits at most for the proxy's listeners: a namespace
/// without Services never gets any, and the app must still start.
const HOLD_LIMIT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    #[error("create the Sidecar {namespace}/{name} that binds the injected proxy's listeners")]
    Apply {
        namespace: String,
        name: String,
        #[source]
        source: crate::kube::apply::ApplyError,
    },
}

/// The parts of `proxy.istio.io/config` (Istio's ProxyConfig, YAML) the local mesh honours.
#[derive(Clone, Debug, Default, PartialEq, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyConfig {
    #[serde(default)]
    pub hold_application_until_proxy_starts: bool,
    #[serde(default)]
    pub proxy_stats_matcher: StatsMatcher,
}

/// `proxyStatsMatcher`: which Envoy stats a sidecar records beyond Istio's own.
#[derive(Clone, Debug, Default, PartialEq, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatsMatcher {
    #[serde(default)]
    pub inclusion_prefixes: Vec<String>,
    #[serde(default)]
    pub inclusion_suffixes: Vec<String>,
    #[serde(default)]
    pub inclusion_regexps: Vec<String>,
}

impl ProxyConfig {
    /// The pod's annotation, or the defaults when it is absent or unreadable (as istiod
    /// ignores an annotation it cannot parse, after a warning).
    pub fn of(pod: &Pod) -> ProxyConfig {
        let Some(text) = pod.annotations().get("proxy.istio.io/config") else {
            return ProxyConfig::default();
        };
        serde_saphyr::from_str(text).unwrap_or_else(|e| {
            tracing::warn!(
                "ignore the proxy.istio.io/config of pod {}/{}: {e}",
                pod.namespace().unwrap_or_default(),
                pod.name_any()
            );
            ProxyConfig::default()
        })
    }
}

/// Whether the pod asks for a sidecar it does not have, by its own label. A namespace's
/// `istio-injection=enabled` alone does not inject here: every Online Boutique pod would
/// get an Envoy (about 70 MB each), and its egress listeners on the pod's address would
/// collide with the app's own ports (adservice serves 9555 and calls nothing there, but
/// its proxy's listener for `adservice:9555` would want the same address and port).
pub fn wants_sidecar(pod: &Pod) -> bool {
    let has_proxy = pod
        .spec
        .as_ref()
        .is_some_and(|s| s.containers.iter().any(|c| c.name == PROXY_CONTAINER));
    !has_proxy
        && pod
            .labels()
            .get("sidecar.istio.io/inject")
            .is_some_and(|v| v == "true")
}

/// The injected container: Istio's proxy as a sidecar, Ready when Envoy is.
pub fn proxy_container() -> Container {
    serde_json::from_value(json!({
        "name": PROXY_CONTAINER,
        "image": format!("docker.io/istio/proxyv2:{}", crate::versions::ISTIO),
        "args": ["proxy", "sidecar"],
        "readinessProbe": {
            "httpGet": { "path": "/ready", "port": ADMIN_PORT },
            "periodSeconds": 1
        }
    }))
    .expect("a Container")
}

/// The `Sidecar` resource of an injected pod: selects only that pod's proxy, binds its
/// egress listeners to the pod's address for every Service of the pod's namespace, is
/// owned by the pod (the garbage collector deletes it with the pod) and carries the pod's
/// run labels.
pub fn sidecar_resource(pod: &Pod, ip: Ipv4Addr) -> serde_json::Value {
    let uid = pod.uid().unwrap_or_default();
    let mut labels: BTreeMap<String, String> = COPIED_LABELS
        .iter()
        .filter_map(|k| pod.labels().get(*k).map(|v| (k.to_string(), v.clone())))
        .collect();
    labels.insert(SIDECAR_FOR_LABEL.to_string(), uid.clone());
    json!({
        "apiVersion": "networking.istio.io/v1", "kind": "Sidecar",
        "metadata": {
            "name": pod.name_any(),
            "namespace": pod.namespace().unwrap_or_default(),
            "labels": labels,
            "ownerReferences": [{ "apiVersion": "v1", "kind": "Pod", "name": pod.name_any(), "uid": uid }],
        },
        "spec": {
            "workloadSelector": { "labels": { SIDECAR_FOR_LABEL: uid } },
            "egress": [{ "bind": ip.to_string(), "captureMode": "NONE", "hosts": ["./*"] }]
        }
    })
}

/// Creates (or updates) the pod's `Sidecar`.
pub async fn apply_sidecar(client: &Client, pod: &Pod, ip: Ipv4Addr) -> Result<(), InjectError> {
    let gvk = kube::api::GroupVersionKind::gvk("networking.istio.io", "v1", "Sidecar");
    crate::kube::apply::apply_value(client, &gvk, &sidecar_resource(pod, ip))
        .await
        .map(|_| ())
        .map_err(|source| InjectError::Apply {
            namespace: pod.namespace().unwrap_or_default(),
            name: pod.name_any(),
            source,
        })
}

/// Deletes the pod's `Sidecar` once its proxy is gone (best effort: the owner reference
/// lets the garbage collector do it when the pod goes, should this fail).
pub async fn delete_sidecar(client: &Client, pod: &Pod) {
    let gvk = kube::api::GroupVersionKind::gvk("networking.istio.io", "v1", "Sidecar");
    let resource = kube::api::ApiResource::from_gvk(&gvk);
    let api: Api<kube::api::DynamicObject> = Api::namespaced_with(
        client.clone(),
        &pod.namespace().unwrap_or_default(),
        &resource,
    );
    if let Err(e) = api.delete(&pod.name_any(), &DeleteParams::default()).await {
        tracing::debug!(
            "delete the Sidecar of pod {}/{}: {e}",
            pod.namespace().unwrap_or_default(),
            pod.name_any()
        );
    }
}

/// GET `path` on a proxy's admin port through the pod network: status and body.
async fn admin_get(dialer: &Dialer, addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let (status, body) = super::probe::get(dialer, addr, path, std::iter::empty(), true).await?;
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// Waits until the pod's proxy is ready (Envoy's `/ready`) and has a listener on the
/// pod's address (istiod pushed the `Sidecar`'s egress): what `holdApplicationUntilProxyStarts`
/// gives an app with iptables, where the proxy being ready means its capture works.
/// Gives up after [`HOLD_LIMIT`] (the app starts anyway, as pilot-agent's wait does);
/// returns how long it waited and whether the proxy got there.
pub async fn wait_proxy_started(dialer: &Dialer, ip: Ipv4Addr) -> (Duration, bool) {
    let started = Instant::now();
    let admin = SocketAddr::from((ip, ADMIN_PORT));
    let bound = format!("::{ip}:");
    loop {
        let ready = matches!(admin_get(dialer, admin, "/ready").await, Ok((200, _)));
        if ready
            && let Ok((200, listeners)) = admin_get(dialer, admin, "/listeners").await
            && listeners.lines().any(|l| l.contains(&bound))
        {
            return (started.elapsed(), true);
        }
        if started.elapsed() > HOLD_LIMIT {
            return (started.elapsed(), false);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(labels: serde_json::Value, annotations: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": { "name": "agent-1", "namespace": "dev", "uid": "u-1",
                          "labels": labels, "annotations": annotations },
            "spec": { "containers": [{ "name": "agent", "image": "localhost/cdcheck-agent:0" }] }
        }))
        .unwrap()
    }

    #[test]
    fn the_agents_proxy_config_asks_to_hold_the_app_and_record_outbound_clusters() {
        let agent = crate::agent::pod::pod(
            "dev",
            "a",
            "i",
            &[],
            &BTreeMap::from([("cdcheck.io/run".into(), "r1".into())]),
        );
        let config = ProxyConfig::of(&agent);
        assert!(config.hold_application_until_proxy_starts);
        assert_eq!(
            config.proxy_stats_matcher.inclusion_prefixes,
            ["cluster.outbound"]
        );
        assert_eq!(
            ProxyConfig::of(&pod(json!({}), json!({}))),
            ProxyConfig::default()
        );
        // Unreadable: the defaults, as istiod does.
        assert_eq!(
            ProxyConfig::of(&pod(
                json!({}),
                json!({"proxy.istio.io/config": "holdApplicationUntilProxyStarts: [oops"})
            )),
            ProxyConfig::default()
        );
    }

    #[test]
    fn the_sidecar_resource_selects_only_this_pods_proxy_and_is_cleaned_up_with_the_run() {
        let p = pod(
            json!({"cdcheck.io/run": "r1", "app": "cdcheck-agent", "app.kubernetes.io/managed-by": "cdcheck"}),
            json!({}),
        );
        let sidecar = sidecar_resource(&p, Ipv4Addr::new(10, 244, 1, 7));
        assert_eq!(sidecar["metadata"]["name"], "agent-1");
        assert_eq!(sidecar["metadata"]["labels"]["cdcheck.io/run"], "r1");
        assert_eq!(
            sidecar["metadata"]["labels"]["app.kubernetes.io/managed-by"],
            "cdcheck"
        );
        assert!(sidecar["metadata"]["labels"].get("app").is_none());
        assert_eq!(sidecar["metadata"]["ownerReferences"][0]["uid"], "u-1");
        assert_eq!(
            sidecar["spec"]["workloadSelector"]["labels"],
            json!({ SIDECAR_FOR_LABEL: "u-1" })
        );
        assert_eq!(
            sidecar["spec"]["egress"][0],
            json!({"bind": "10.244.1.7", "captureMode": "NONE", "hosts": ["./*"]})
        );
    }
}
