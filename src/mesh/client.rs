//! An in-mesh client on the local mesh: a pod in the environment's namespace that
//! runs only Istio's sidecar, with a Sidecar resource binding its egress listeners to
//! the pod's address (no iptables), and forwards from host ports to those listeners,
//! so cdcheck's traffic engine calls services by name from inside the mesh.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::Api;
use serde_json::json;

use super::MeshError;
use super::netns::{self, Dialer};

/// The client pod's name and `app` label.
pub const CLIENT_NAME: &str = "cdcheck-mesh-client";

/// A running in-mesh client.
pub struct InMeshClient {
    pub namespace: String,
    pub ip: Ipv4Addr,
    dialer: Dialer,
    forwards: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for InMeshClient {
    fn drop(&mut self) {
        for forward in &self.forwards {
            forward.abort();
        }
    }
}

fn apply_err(what: String) -> impl FnOnce(crate::kube::apply::ApplyError) -> MeshError {
    move |source| MeshError::Kube {
        what,
        source: match source {
            crate::kube::apply::ApplyError::Apply { source, .. } => source,
            other => kube::Error::Service(Box::new(other)),
        },
    }
}

/// Starts the client pod in `namespace` (labelled with `labels`, so the run's clean-up
/// finds it), waits until its sidecar is Ready, then binds its egress listeners.
pub async fn start(
    client: &Client,
    state_dir: &Path,
    namespace: &str,
    labels: serde_json::Value,
    timeout: Duration,
) -> Result<InMeshClient, MeshError> {
    let dialer = Dialer::new(&netns::name_for(state_dir))?;
    let mut pod_labels = labels.clone();
    pod_labels["app"] = json!(CLIENT_NAME);
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": CLIENT_NAME, "namespace": namespace, "labels": pod_labels },
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "containers": [{
                "name": "istio-proxy",
                "image": format!("docker.io/istio/proxyv2:{}", crate::versions::ISTIO),
                "args": ["proxy", "sidecar"],
                "readinessProbe": {
                    "httpGet": { "path": "/ready", "port": super::proxy::ADMIN_PORT },
                    "periodSeconds": 1
                }
            }]
        }
    });
    let gvk = |g: &str, v: &str, k: &str| kube::api::GroupVersionKind::gvk(g, v, k);
    crate::kube::apply::apply_value(client, &gvk("", "v1", "Pod"), &pod)
        .await
        .map_err(apply_err(format!(
            "create the in-mesh client pod in {namespace}"
        )))?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let started = Instant::now();
    let ip = loop {
        let pod = pods.get_opt(CLIENT_NAME).await.ok().flatten();
        let status = pod.and_then(|p| p.status);
        let ready = status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        let ip = status
            .and_then(|s| s.pod_ip)
            .and_then(|ip| ip.parse::<Ipv4Addr>().ok());
        if let (true, Some(ip)) = (ready, ip) {
            break ip;
        }
        if started.elapsed() > timeout {
            return Err(MeshError::Timeout {
                what: format!("the in-mesh client pod {namespace}/{CLIENT_NAME} Ready"),
                waited: started.elapsed(),
                logs: super::mesh_dir(state_dir).join("pods"),
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let sidecar = json!({
        "apiVersion": "networking.istio.io/v1", "kind": "Sidecar",
        "metadata": { "name": CLIENT_NAME, "namespace": namespace, "labels": labels },
        "spec": {
            "workloadSelector": { "labels": { "app": CLIENT_NAME } },
            "egress": [{ "bind": ip.to_string(), "captureMode": "NONE", "hosts": ["./*"] }]
        }
    });
    crate::kube::apply::apply_value(
        client,
        &gvk("networking.istio.io", "v1", "Sidecar"),
        &sidecar,
    )
    .await
    .map_err(apply_err(format!(
        "create the in-mesh client's Sidecar in {namespace}"
    )))?;
    Ok(InMeshClient {
        namespace: namespace.to_string(),
        ip,
        dialer,
        forwards: Vec::new(),
    })
}

impl InMeshClient {
    /// Waits until the sidecar listens on `port` (istiod pushed the Sidecar's
    /// listeners), then forwards a host port to it and returns its address.
    pub async fn forward(&mut self, port: u16, timeout: Duration) -> Result<SocketAddr, MeshError> {
        let target = SocketAddr::from((self.ip, port));
        let started = Instant::now();
        while self.dialer.connect(target).await.is_err() {
            if started.elapsed() > timeout {
                return Err(MeshError::Timeout {
                    what: format!("the in-mesh client's egress listener {target}"),
                    waited: started.elapsed(),
                    logs: target.to_string().into(),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|source| MeshError::Listen {
                addr: "127.0.0.1:0".into(),
                source,
            })?;
        let local = listener.local_addr().map_err(|source| MeshError::Listen {
            addr: "127.0.0.1:0".into(),
            source,
        })?;
        self.forwards.push(tokio::spawn(super::relay::into_netns(
            listener,
            target,
            self.dialer.clone(),
        )));
        Ok(local)
    }
}
