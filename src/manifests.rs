//! Pure functions from the catalog and the pipeline's options to the objects it deploys.
//!
//! Nothing here does I/O except [`load`], which reads a pipeline's own manifests
//! from a directory; the result is a [`Bundle`] of typed objects (k8s-openapi
//! types and the Istio types of [`istio`]) that the `kube` module applies and the
//! CLI prints.

pub mod environment;
pub mod feature;
pub mod image;
pub mod istio;
pub mod load;
pub mod options;
pub mod routing;
pub mod tls;
pub mod workload;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DynamicObject, GroupVersionKind};
use kube::{Resource, ResourceExt};
use serde::Serialize;

pub use feature::FeatureBranch;
pub use options::{Options, RbacMode, Strategy, TlsSource};
pub use routing::SessionId;

// The labels every rendered object carries live with the crate's other names.
pub use crate::names::{
    CDCHECK as MANAGED_BY_VALUE, ENVIRONMENT_LABEL, MANAGED_BY_LABEL, RELEASE_LABEL,
};

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("find service {name:?} in the catalog (known: {known})")]
    UnknownService { name: String, known: String },
    #[error(
        "parse image tag {tag:?} of {service}: not SemVer (expected MAJOR.MINOR.PATCH[-branch], e.g. 0.10.6-myfeature)"
    )]
    InvalidTag { service: String, tag: String },
    #[error(
        "use feature branch {branch:?} from tag {tag:?}: a Kubernetes name needs lowercase letters and digits"
    )]
    InvalidBranchName { tag: String, branch: String },
    #[error("name {name:?}: longer than {max} characters")]
    NameTooLong { name: String, max: usize },
    #[error("parse --feature {value:?}: expected SERVICE=TAG")]
    InvalidFeatureArgument { value: String },
    #[error(
        "accept session id {value:?}: only letters, digits, '-' and '_' (at most 128) are allowed"
    )]
    InvalidSessionId { value: String },
    #[error("route session {session:?}: no feature branch of frontend or adservice to route it to")]
    SessionWithoutFeature { session: String },
    #[error("use replicas {value}: a highly available service needs at least 1 (2 or more for HA)")]
    InvalidReplicas { value: i32 },
    #[error("use environment name {value:?}: must be a DNS label (lowercase letters, digits, '-')")]
    InvalidEnvironment { value: String },
    #[error("use release id {value:?}: must be lowercase letters, digits, '.' or '-'")]
    InvalidRelease { value: String },
    #[error("use host name {value:?}: not a DNS name")]
    InvalidHost { value: String },
    #[error("{0}")]
    Tls(#[from] tls::TlsError),
    #[error("serialize {kind} {name}")]
    Serialize {
        kind: String,
        name: String,
        #[source]
        source: serde_json::Error,
    },
}

/// One object the pipeline deploys.
// A bundle holds a few dozen objects: boxing the large variants would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum Object {
    Namespace(Namespace),
    ServiceAccount(ServiceAccount),
    Role(Role),
    RoleBinding(RoleBinding),
    ClusterRole(ClusterRole),
    ClusterRoleBinding(ClusterRoleBinding),
    ConfigMap(ConfigMap),
    Secret(Secret),
    Deployment(Deployment),
    Service(Service),
    PodDisruptionBudget(PodDisruptionBudget),
    Gateway(istio::Gateway),
    VirtualService(istio::VirtualService),
    /// Any other kind a pipeline ships (HorizontalPodAutoscaler, NetworkPolicy,
    /// DestinationRule...), kept as written so that nothing is dropped. Its
    /// `types` are always set (the loader refuses a document without them).
    Other(DynamicObject),
}

macro_rules! each_object {
    ($object:expr, $inner:ident => $body:expr) => {
        match $object {
            Object::Namespace($inner) => $body,
            Object::ServiceAccount($inner) => $body,
            Object::Role($inner) => $body,
            Object::RoleBinding($inner) => $body,
            Object::ClusterRole($inner) => $body,
            Object::ClusterRoleBinding($inner) => $body,
            Object::ConfigMap($inner) => $body,
            Object::Secret($inner) => $body,
            Object::Deployment($inner) => $body,
            Object::Service($inner) => $body,
            Object::PodDisruptionBudget($inner) => $body,
            Object::Gateway($inner) => $body,
            Object::VirtualService($inner) => $body,
            Object::Other($inner) => $body,
        }
    };
}

fn gvk_of<K: Resource<DynamicType = ()>>() -> GroupVersionKind {
    GroupVersionKind::gvk(&K::group(&()), &K::version(&()), &K::kind(&()))
}

impl Object {
    pub fn kind(&self) -> String {
        self.gvk().kind
    }

    pub fn gvk(&self) -> GroupVersionKind {
        match self {
            Object::Namespace(_) => gvk_of::<Namespace>(),
            Object::ServiceAccount(_) => gvk_of::<ServiceAccount>(),
            Object::Role(_) => gvk_of::<Role>(),
            Object::RoleBinding(_) => gvk_of::<RoleBinding>(),
            Object::ClusterRole(_) => gvk_of::<ClusterRole>(),
            Object::ClusterRoleBinding(_) => gvk_of::<ClusterRoleBinding>(),
            Object::ConfigMap(_) => gvk_of::<ConfigMap>(),
            Object::Secret(_) => gvk_of::<Secret>(),
            Object::Deployment(_) => gvk_of::<Deployment>(),
            Object::Service(_) => gvk_of::<Service>(),
            Object::PodDisruptionBudget(_) => gvk_of::<PodDisruptionBudget>(),
            Object::Gateway(_) => gvk_of::<istio::Gateway>(),
            Object::VirtualService(_) => gvk_of::<istio::VirtualService>(),
            Object::Other(o) => o
                .types
                .as_ref()
                .and_then(|types| GroupVersionKind::try_from(types).ok())
                .unwrap_or_else(|| GroupVersionKind::gvk("", "", "")),
        }
    }

    pub fn name(&self) -> String {
        each_object!(self, o => o.name_any())
    }

    pub fn namespace(&self) -> Option<String> {
        each_object!(self, o => o.namespace())
    }

    pub fn metadata_mut(&mut self) -> &mut ObjectMeta {
        each_object!(self, o => o.meta_mut())
    }

    /// `kind/namespace/name`, for messages and for comparing bundles.
    pub fn key(&self) -> String {
        format!(
            "{}/{}/{}",
            self.kind(),
            self.namespace().unwrap_or_default(),
            self.name()
        )
    }

    /// The object as JSON, with `apiVersion` and `kind` set.
    pub fn to_json(&self) -> Result<serde_json::Value, ManifestError> {
        fn json<T: Serialize>(o: &T) -> Result<serde_json::Value, serde_json::Error> {
            serde_json::to_value(o)
        }
        each_object!(self, o => json(o)).map_err(|source| ManifestError::Serialize {
            kind: self.kind(),
            name: self.name(),
            source,
        })
    }

    pub fn as_deployment(&self) -> Option<&Deployment> {
        match self {
            Object::Deployment(d) => Some(d),
            _ => None,
        }
    }
}

/// Everything one render produces, in apply order (namespaces and RBAC first).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Bundle {
    pub objects: Vec<Object>,
}

impl Bundle {
    pub fn deployments(&self) -> impl Iterator<Item = &Deployment> {
        self.objects.iter().filter_map(Object::as_deployment)
    }

    pub fn of_kind<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a Object> + 'a {
        self.objects.iter().filter(move |o| o.kind() == kind)
    }

    pub fn find(&self, kind: &str, name: &str) -> Option<&Object> {
        self.objects
            .iter()
            .find(|o| o.kind() == kind && o.name() == name)
    }

    /// Multi-document YAML, ready for `kubectl apply -f -`.
    pub fn to_yaml(&self) -> Result<String, ManifestError> {
        let mut out = String::new();
        for object in &self.objects {
            let value = object.to_json()?;
            let yaml =
                serde_saphyr::to_string_with_options(&value, yaml_options()).map_err(|e| {
                    ManifestError::Serialize {
                        kind: object.kind(),
                        name: object.name(),
                        source: serde::ser::Error::custom(e.to_string()),
                    }
                })?;
            out.push_str("---\n");
            out.push_str(&yaml);
            if !yaml.ends_with('\n') {
                out.push('\n');
            }
        }
        Ok(out)
    }
}

/// Block scalars only for multi-line strings: long image references stay on one line.
fn yaml_options() -> serde_saphyr::SerializerOptions {
    let mut options = serde_saphyr::SerializerOptions::default();
    options.folded_wrap_chars = 4096;
    options
}

/// The pipeline's rendering of one environment: namespace and RBAC, the
/// workloads with the chosen HA and strategy options, feature branches, the TLS
/// secret, the ingress Gateway and the routing VirtualServices.
pub fn render(options: &Options) -> Result<Bundle, ManifestError> {
    options.validate()?;
    let mut objects = Vec::new();
    objects.extend(environment::render(options));
    objects.extend(workload::render_pipeline(options)?);
    objects.extend(tls::render_secret(options)?);
    objects.push(Object::Gateway(routing_objects::gateway(options)));
    objects.extend(routing_objects::virtual_services(options)?);
    Ok(Bundle { objects })
}

/// The upstream rendering: what `kubernetes-manifests.yaml` of the pinned release
/// deploys, with every pipeline option off. Used to prove the catalog faithful.
pub fn render_upstream() -> Bundle {
    Bundle {
        objects: workload::render_upstream(),
    }
}

mod routing_objects;
