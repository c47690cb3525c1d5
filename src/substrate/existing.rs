//! An existing cluster (EKS, GKE, AKS, a shared staging cluster) through a kubeconfig
//! and context: cdcheck never creates or deletes the cluster, checks that Istio is
//! installed and at which version (istiod's image tag), creates only namespaces it
//! labels [`OWNED_BY_LABEL`]` = `[`CDCHECK`], refuses to touch a namespace
//! without that label, and deletes what it created.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::names::{CDCHECK, ISTIO_NAMESPACE, OWNED_BY_LABEL, OWNED_RUN_LABEL};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config, ResourceExt};

pub const ISTIOD: &str = "istiod";

/// The ingress gateway Service `istioctl install` creates in [`ISTIO_NAMESPACE`].
pub const INGRESS_GATEWAY: &str = "istio-ingressgateway";

#[derive(Debug, thiserror::Error)]
pub enum ExistingError {
    #[error("read kubeconfig {path}")]
    Kubeconfig {
        path: String,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("build a client for context {context} of kubeconfig {path}")]
    Client {
        path: String,
        context: String,
        #[source]
        source: kube::Error,
    },
    #[error(
        "find Istio on the cluster: no Deployment {ISTIOD} in namespace {ISTIO_NAMESPACE} (install Istio {} first, e.g. `istioctl install`)",
        crate::versions::ISTIO
    )]
    IstioMissing,
    #[error(
        "find the ingress gateway's address: no Service {namespace}/{name} (give the gateway's address with --ingress http://HOST[:PORT] --ingress https://HOST[:PORT])"
    )]
    GatewayMissing { namespace: String, name: String },
    #[error(
        "find the ingress gateway's address: Service {namespace}/{name} is of type {kind} and has no load-balancer address yet (wait for it, or give the address with --ingress http://HOST[:PORT] --ingress https://HOST[:PORT])"
    )]
    GatewayPending {
        namespace: String,
        name: String,
        kind: String,
    },
    #[error("read Istio's version: istiod's image {image:?} has no version tag")]
    IstioVersion { image: String },
    #[error(
        "touch namespace {namespace}: it exists without the label {OWNED_BY_LABEL}={CDCHECK}, so cdcheck did not create it and leaves it alone"
    )]
    NotOwned { namespace: String },
    #[error("{action}")]
    Api {
        action: String,
        #[source]
        source: kube::Error,
    },
}

fn api(action: impl Into<String>) -> impl FnOnce(kube::Error) -> ExistingError {
    let action = action.into();
    move |source| ExistingError::Api { action, source }
}

/// A connection to an existing cluster.
#[derive(Clone)]
pub struct Existing {
    pub config: Config,
    pub client: Client,
    /// The context used (the kubeconfig's current one when none was named).
    pub context: String,
}

/// `$KUBECONFIG`'s first file, else `~/.kube/config`.
pub fn default_kubeconfig() -> PathBuf {
    if let Some(value) = crate::settings::var("KUBECONFIG")
        && let Some(first) = std::env::split_paths(&value).next()
    {
        return first;
    }
    crate::settings::home().join(".kube").join("config")
}

/// Connects through `kubeconfig` (default: [`default_kubeconfig`]) and `context`
/// (default: its current context).
pub async fn connect(
    kubeconfig: Option<&Path>,
    context: Option<&str>,
) -> Result<Existing, ExistingError> {
    let path = kubeconfig
        .map(Path::to_path_buf)
        .unwrap_or_else(default_kubeconfig);
    let shown = path.display().to_string();
    let file = Kubeconfig::read_from(&path).map_err(|source| ExistingError::Kubeconfig {
        path: shown.clone(),
        source,
    })?;
    let context = context
        .map(str::to_string)
        .or_else(|| file.current_context.clone())
        .unwrap_or_default();
    let options = KubeConfigOptions {
        context: Some(context.clone()),
        ..Default::default()
    };
    let config = Config::from_custom_kubeconfig(file, &options)
        .await
        .map_err(|source| ExistingError::Kubeconfig {
            path: shown.clone(),
            source,
        })?;
    let client = Client::try_from(config.clone()).map_err(|source| ExistingError::Client {
        path: shown,
        context: context.clone(),
        source,
    })?;
    Ok(Existing {
        config,
        client,
        context,
    })
}

/// Istio as found on the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IstioInstall {
    /// From istiod's image tag, e.g. `1.30.3`.
    pub version: String,
    pub image: String,
    pub ready_replicas: i32,
}

impl IstioInstall {
    /// Whether it is the Istio release cdcheck's scenarios were written against.
    pub fn is_pinned(&self) -> bool {
        self.version == crate::versions::ISTIO
    }
}

/// The version in an Istio image reference: `docker.io/istio/pilot:1.30.3`,
/// `.../pilot:1.30.3-distroless`, `.../pilot:1.30.3@sha256:...` all give `1.30.3`.
pub fn version_from_image(image: &str) -> Option<String> {
    let without_digest = image.split('@').next()?;
    let last = without_digest.rsplit('/').next()?;
    let (_, tag) = last.split_once(':')?;
    let version: String = tag
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    let parts = version.split('.').filter(|p| !p.is_empty()).count();
    (parts >= 2).then(|| version.trim_end_matches('.').to_string())
}

/// Finds istiod in `istio-system` and reads its version from the discovery container's image.
pub async fn istio(client: &Client) -> Result<IstioInstall, ExistingError> {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ISTIO_NAMESPACE);
    let istiod = deployments
        .get_opt(ISTIOD)
        .await
        .map_err(api(format!("read Deployment {ISTIO_NAMESPACE}/{ISTIOD}")))?
        .ok_or(ExistingError::IstioMissing)?;
    let containers = istiod
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .map(|s| s.containers.clone())
        .unwrap_or_default();
    let container = containers
        .iter()
        .find(|c| c.name == "discovery")
        .or_else(|| containers.first());
    let image = container.and_then(|c| c.image.clone()).unwrap_or_default();
    let version = version_from_image(&image).ok_or_else(|| ExistingError::IstioVersion {
        image: image.clone(),
    })?;
    Ok(IstioInstall {
        version,
        image,
        ready_replicas: istiod.status.and_then(|s| s.ready_replicas).unwrap_or(0),
    })
}

/// Where a load balancer exposes the ingress gateway: its address (an IP or a host
/// name, as clouds give them) and the Service's plain and TLS ports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayAddress {
    pub host: String,
    pub http_port: u16,
    pub https_port: u16,
}

/// The load-balancer address of the gateway Service `namespace/name`: the first
/// ingress of its status; the ports named `http*` (not `https`) and `https`, else 80
/// and 443.
pub async fn gateway_address(
    client: &Client,
    namespace: &str,
    name: &str,
) -> Result<GatewayAddress, ExistingError> {
    use k8s_openapi::api::core::v1::Service;
    let services: Api<Service> = Api::namespaced(client.clone(), namespace);
    let service = services
        .get_opt(name)
        .await
        .map_err(api(format!("read Service {namespace}/{name}")))?
        .ok_or_else(|| ExistingError::GatewayMissing {
            namespace: namespace.to_string(),
            name: name.to_string(),
        })?;
    let ingress = service
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .and_then(|i| i.first().cloned());
    let host = ingress.and_then(|i| i.ip.or(i.hostname));
    let Some(host) = host.filter(|h| !h.is_empty()) else {
        return Err(ExistingError::GatewayPending {
            namespace: namespace.to_string(),
            name: name.to_string(),
            kind: service
                .spec
                .as_ref()
                .and_then(|s| s.type_.clone())
                .unwrap_or_else(|| "ClusterIP".into()),
        });
    };
    let ports = service
        .spec
        .as_ref()
        .and_then(|s| s.ports.clone())
        .unwrap_or_default();
    let port_named = |wanted: &dyn Fn(&str) -> bool, default: u16| {
        ports
            .iter()
            .find(|p| p.name.as_deref().is_some_and(wanted))
            .map(|p| p.port as u16)
            .unwrap_or(default)
    };
    Ok(GatewayAddress {
        host,
        http_port: port_named(&|n| n.starts_with("http") && !n.starts_with("https"), 80),
        https_port: port_named(&|n| n.starts_with("https"), 443),
    })
}

fn is_owned(ns: &Namespace) -> bool {
    ns.labels().get(OWNED_BY_LABEL).map(String::as_str) == Some(CDCHECK)
}

/// Fails unless `namespace` exists and carries cdcheck's label; call before touching it.
pub async fn ensure_owned(client: &Client, namespace: &str) -> Result<(), ExistingError> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    match namespaces
        .get_opt(namespace)
        .await
        .map_err(api(format!("read namespace {namespace}")))?
    {
        Some(ns) if is_owned(&ns) => Ok(()),
        _ => Err(ExistingError::NotOwned {
            namespace: namespace.to_string(),
        }),
    }
}

/// Creates `namespace` labelled as cdcheck's for `run` (plus `labels`). A namespace of
/// that name that is already cdcheck's is reused; one that is not is refused, untouched.
pub async fn create_namespace(
    client: &Client,
    namespace: &str,
    run: &str,
    labels: &BTreeMap<String, String>,
) -> Result<(), ExistingError> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let mut all = labels.clone();
    all.insert(OWNED_BY_LABEL.to_string(), CDCHECK.to_string());
    all.insert(OWNED_RUN_LABEL.to_string(), run.to_string());
    let ns: Namespace = serde_json::from_value(serde_json::json!({
        "metadata": {"name": namespace, "labels": all}
    }))
    .expect("a namespace object");
    match namespaces.create(&PostParams::default(), &ns).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 409 => {
            ensure_owned(client, namespace).await
        }
        Err(source) => Err(ExistingError::Api {
            action: format!("create namespace {namespace}"),
            source,
        }),
    }
}

/// Deletes `namespace` if it is cdcheck's; refuses (and deletes nothing) otherwise.
/// `Ok(false)`: it was already gone.
pub async fn delete_namespace(client: &Client, namespace: &str) -> Result<bool, ExistingError> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let Some(ns) = namespaces
        .get_opt(namespace)
        .await
        .map_err(api(format!("read namespace {namespace}")))?
    else {
        return Ok(false);
    };
    if !is_owned(&ns) {
        return Err(ExistingError::NotOwned {
            namespace: namespace.to_string(),
        });
    }
    // Preconditioned on the object we judged: a namespace replaced since is not deleted.
    let params = DeleteParams {
        preconditions: Some(kube::api::Preconditions {
            uid: ns.uid(),
            resource_version: None,
        }),
        ..Default::default()
    };
    match namespaces.delete(namespace, &params).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(false),
        Err(source) => Err(ExistingError::Api {
            action: format!("delete namespace {namespace}"),
            source,
        }),
    }
}

/// Deletes every namespace cdcheck created for `run`; returns their names.
pub async fn cleanup(client: &Client, run: &str) -> Result<Vec<String>, ExistingError> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let selector = format!("{OWNED_BY_LABEL}={CDCHECK},{OWNED_RUN_LABEL}={run}");
    let list = namespaces
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(api(format!("list the namespaces labelled {selector}")))?;
    let mut deleted = Vec::new();
    for ns in list.items {
        let name = ns.name_any();
        if delete_namespace(client, &name).await? {
            deleted.push(name);
        }
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn istios_version_is_read_from_the_image_tag_in_every_form() {
        for (image, version) in [
            ("docker.io/istio/pilot:1.30.3", Some("1.30.3")),
            (
                "gcr.io/istio-release/pilot:1.30.3-distroless",
                Some("1.30.3"),
            ),
            (
                "registry:5000/istio/pilot:1.30.3@sha256:abc",
                Some("1.30.3"),
            ),
            ("istio/pilot:1.30", Some("1.30")),
            ("registry:5000/istio/pilot", None),
            ("istio/pilot:latest", None),
            ("istio/pilot@sha256:abc", None),
        ] {
            assert_eq!(version_from_image(image).as_deref(), version, "{image}");
        }
    }
}
