//! Server-side apply of a rendered [`Bundle`] with one field manager, and prune
//! of what an environment's previous release deployed and this one dropped.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use ::kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams,
};
use ::kube::{Client, ResourceExt};

use super::FIELD_MANAGER;
use crate::manifests::{
    Bundle, ENVIRONMENT_LABEL, MANAGED_BY_LABEL, MANAGED_BY_VALUE, ManifestError, Object,
};

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("serialize {key}")]
    Serialize {
        key: String,
        #[source]
        source: ManifestError,
    },
    /// The API server refused the object; the source carries its Status verbatim.
    #[error("apply {key}")]
    Apply {
        key: String,
        #[source]
        source: ::kube::Error,
    },
    /// The API server serves no such kind: its CustomResourceDefinition is not installed.
    #[error(
        "apply {key}: the cluster does not serve {api_version} {kind}: its CustomResourceDefinition is not installed{}",
        crd_hint(api_version)
    )]
    NotServed {
        key: String,
        api_version: String,
        kind: String,
        #[source]
        source: Box<::kube::Error>,
    },
    #[error("list {kind} in {namespace} to prune")]
    List {
        kind: String,
        namespace: String,
        #[source]
        source: ::kube::Error,
    },
    #[error("prune {key}")]
    Delete {
        key: String,
        #[source]
        source: ::kube::Error,
    },
}

impl ApplyError {
    /// The API server's Status when it answered with one (e.g. a validation error).
    pub fn api_status(&self) -> Option<&::kube::core::Status> {
        if let ApplyError::NotServed { source, .. } = self
            && let ::kube::Error::Api(status) = source.as_ref()
        {
            return Some(status);
        }
        match self {
            ApplyError::Apply {
                source: ::kube::Error::Api(status),
                ..
            }
            | ApplyError::Delete {
                source: ::kube::Error::Api(status),
                ..
            }
            | ApplyError::List {
                source: ::kube::Error::Api(status),
                ..
            } => Some(status),
            _ => None,
        }
    }
}

/// What an apply changed.
#[derive(Clone, Debug, Default)]
pub struct ApplyReport {
    /// Keys (`Kind/namespace/name`) applied, in order.
    pub applied: Vec<String>,
    /// Keys deleted because the bundle no longer has them.
    pub pruned: Vec<String>,
    /// `metadata.generation` each applied object has after the apply, by key:
    /// the generation a rollout wait must see completed.
    pub generations: BTreeMap<String, i64>,
    pub took: Duration,
}

/// Kinds the pipeline renders that prune considers (Namespaces are never pruned).
pub fn prunable_kinds() -> Vec<GroupVersionKind> {
    vec![
        GroupVersionKind::gvk("networking.istio.io", "v1", "VirtualService"),
        GroupVersionKind::gvk("networking.istio.io", "v1", "Gateway"),
        GroupVersionKind::gvk("policy", "v1", "PodDisruptionBudget"),
        GroupVersionKind::gvk("", "v1", "Service"),
        GroupVersionKind::gvk("apps", "v1", "Deployment"),
        GroupVersionKind::gvk("", "v1", "Secret"),
        GroupVersionKind::gvk("", "v1", "ConfigMap"),
        GroupVersionKind::gvk("rbac.authorization.k8s.io", "v1", "RoleBinding"),
        GroupVersionKind::gvk("rbac.authorization.k8s.io", "v1", "Role"),
        GroupVersionKind::gvk("", "v1", "ServiceAccount"),
    ]
}

fn api_for(client: &Client, gvk: &GroupVersionKind, namespace: Option<&str>) -> Api<DynamicObject> {
    let resource = ApiResource::from_gvk(gvk);
    match namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
        None => Api::all_with(client.clone(), &resource),
    }
}

/// Server-side applies one object (field manager `cdcheck`, conflicts forced).
pub async fn apply_object(client: &Client, object: &Object) -> Result<DynamicObject, ApplyError> {
    let value = object.to_json().map_err(|source| ApplyError::Serialize {
        key: object.key(),
        source,
    })?;
    apply_value(client, &object.gvk(), &value).await
}

/// Server-side applies a JSON object (with `apiVersion`, `kind`, `metadata.name`
/// and, when namespaced, `metadata.namespace`): the path for objects outside the
/// typed bundle. The API server's refusal comes back as [`ApplyError::Apply`].
pub async fn apply_value(
    client: &Client,
    gvk: &GroupVersionKind,
    value: &serde_json::Value,
) -> Result<DynamicObject, ApplyError> {
    let name = value["metadata"]["name"].as_str().unwrap_or_default();
    let namespace = value["metadata"]["namespace"].as_str();
    let key = format!("{}/{}/{name}", gvk.kind, namespace.unwrap_or_default());
    let api = api_for(client, gvk, namespace);
    api.patch(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(value),
    )
    .await
    .map_err(|source| match &source {
        ::kube::Error::Api(status) if status.code == 404 && is_unserved_kind(&status.message) => {
            ApplyError::NotServed {
                key,
                api_version: value["apiVersion"].as_str().unwrap_or_default().to_string(),
                kind: gvk.kind.clone(),
                source: Box::new(source),
            }
        }
        _ => ApplyError::Apply { key, source },
    })
}

/// A 404 that says the resource type is unknown, as opposed to a missing namespace or
/// object (`namespaces "x" not found`).
fn is_unserved_kind(message: &str) -> bool {
    message.contains("page not found") || message.contains("could not find the requested resource")
}

/// What installs the CRDs of an API group users meet most.
fn crd_hint(api_version: &str) -> &'static str {
    if api_version.starts_with("gateway.networking.k8s.io/") {
        " (the Kubernetes Gateway API: install its standard-channel CRDs first)"
    } else if api_version.contains(".istio.io/") {
        " (Istio's: install Istio, e.g. `istioctl install`)"
    } else {
        ""
    }
}

/// Applies `objects` in order; returns their keys.
pub async fn apply_objects<'a>(
    client: &Client,
    objects: impl IntoIterator<Item = &'a Object>,
) -> Result<Vec<String>, ApplyError> {
    Ok(apply_with_generations(client, objects)
        .await?
        .into_iter()
        .map(|(key, _)| key)
        .collect())
}

/// Applies `objects` in order; returns each key with the `metadata.generation`
/// the API server gave the object (kinds without one have none).
pub async fn apply_with_generations<'a>(
    client: &Client,
    objects: impl IntoIterator<Item = &'a Object>,
) -> Result<Vec<(String, Option<i64>)>, ApplyError> {
    let mut applied = Vec::new();
    for object in objects {
        let live = apply_object(client, object).await?;
        applied.push((object.key(), live.metadata.generation));
    }
    Ok(applied)
}

/// The generations among applied keys, for [`ApplyReport::generations`].
pub fn generations_of(applied: &[(String, Option<i64>)]) -> BTreeMap<String, i64> {
    applied
        .iter()
        .filter_map(|(key, generation)| Some((key.clone(), (*generation)?)))
        .collect()
}

/// Applies the whole bundle in order; with `prune_env`, then deletes every object
/// labelled as managed by cdcheck for that environment that the bundle lacks.
pub async fn apply_bundle(
    client: &Client,
    bundle: &Bundle,
    prune_env: Option<&str>,
) -> Result<ApplyReport, ApplyError> {
    let started = Instant::now();
    let applied = apply_with_generations(client, &bundle.objects).await?;
    let pruned = match prune_env {
        Some(env) => prune(client, bundle, env).await?,
        None => Vec::new(),
    };
    Ok(ApplyReport {
        generations: generations_of(&applied),
        applied: applied.into_iter().map(|(key, _)| key).collect(),
        pruned,
        took: started.elapsed(),
    })
}

/// `Kind/namespace/name` of a live object, as [`Object::key`] spells it.
fn live_key(kind: &str, object: &DynamicObject) -> String {
    format!(
        "{kind}/{}/{}",
        object.namespace().unwrap_or_default(),
        object.name_any()
    )
}

/// Deletes what cdcheck deployed for `env` (by labels) in the bundle's namespaces
/// that the bundle no longer contains. Returns the deleted keys.
pub async fn prune(client: &Client, bundle: &Bundle, env: &str) -> Result<Vec<String>, ApplyError> {
    let keep: BTreeSet<String> = bundle.objects.iter().map(Object::key).collect();
    let namespaces: BTreeSet<String> = bundle
        .objects
        .iter()
        .filter_map(Object::namespace)
        .collect();
    let selector = format!("{MANAGED_BY_LABEL}={MANAGED_BY_VALUE},{ENVIRONMENT_LABEL}={env}");
    let mut pruned = Vec::new();
    for gvk in prunable_kinds() {
        for ns in &namespaces {
            let api = api_for(client, &gvk, Some(ns));
            let list = match api
                .list_metadata(&ListParams::default().labels(&selector))
                .await
            {
                Ok(list) => list,
                // A kind the cluster does not serve (no Istio CRDs) has nothing to prune.
                Err(::kube::Error::Api(s)) if s.code == 404 => continue,
                Err(source) => {
                    return Err(ApplyError::List {
                        kind: gvk.kind.clone(),
                        namespace: ns.clone(),
                        source,
                    });
                }
            };
            for item in list.items {
                let object = DynamicObject {
                    types: None,
                    metadata: item.metadata,
                    data: serde_json::Value::Null,
                };
                let key = live_key(&gvk.kind, &object);
                if keep.contains(&key) || object.metadata.deletion_timestamp.is_some() {
                    continue;
                }
                match api
                    .delete(&object.name_any(), &DeleteParams::background())
                    .await
                {
                    Ok(_) => pruned.push(key),
                    Err(::kube::Error::Api(s)) if s.code == 404 => {}
                    Err(source) => return Err(ApplyError::Delete { key, source }),
                }
            }
        }
    }
    Ok(pruned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unserved_kind_is_told_from_a_missing_namespace_and_names_what_to_install() {
        assert!(is_unserved_kind("404 page not found"));
        assert!(is_unserved_kind(
            "the server could not find the requested resource"
        ));
        assert!(!is_unserved_kind("namespaces \"shop\" not found"));
        assert!(crd_hint("gateway.networking.k8s.io/v1").contains("Gateway API"));
        assert!(crd_hint("networking.istio.io/v1").contains("Istio"));
        assert_eq!(crd_hint("v1"), "");
    }
}
