//! Taking a release back: redeploying the previous release's bundle, and `undo`
//! to the previous ReplicaSet revision (what `kubectl rollout undo` does). A
//! blue/green release is taken back by switching to the previous bundle
//! ([`super::release::bluegreen_switch`]).

use std::time::Duration;

use ::kube::api::{Api, ListParams, PostParams};
use ::kube::{Client, ResourceExt};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};

use super::FIELD_MANAGER;
use super::diagnostics::REVISION_ANNOTATION;
use super::release::{self, DeployReport, ReleaseError};
use super::rollout::{self, RolloutError, RolloutReport};
use crate::manifests::Bundle;

#[derive(Debug, thiserror::Error)]
pub enum RollbackError {
    #[error("redeploy the previous release")]
    Redeploy(#[from] ReleaseError),
    #[error("wait for the rollout")]
    Rollout(#[from] RolloutError),
    #[error("{what}")]
    Kube {
        what: String,
        #[source]
        source: ::kube::Error,
    },
    #[error(
        "undo {namespace}/{name}: it has no revision before {current} (a blue/green Deployment holds one release; roll back by switching the Service back)"
    )]
    NoPreviousRevision {
        namespace: String,
        name: String,
        current: i64,
    },
}

/// Rollback by redeploying the previous release's bundle: image, env, ConfigMaps
/// and Secrets come back as that release rendered them; what only the newer
/// release had is pruned.
pub async fn redeploy_previous(
    client: &Client,
    previous: &Bundle,
    env: &str,
    timeout: Duration,
) -> Result<DeployReport, RollbackError> {
    Ok(release::deploy(client, previous, env, timeout).await?)
}

/// What an undo did.
#[derive(Clone, Debug)]
pub struct UndoReport {
    pub from_revision: i64,
    pub to_revision: i64,
    /// The ReplicaSet whose pod template was restored.
    pub replicaset: String,
    pub rollout: RolloutReport,
}

fn revision_of<K: ResourceExt>(k: &K) -> i64 {
    k.annotations()
        .get(REVISION_ANNOTATION)
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

/// `kubectl rollout undo`: copies the pod template of the previous revision's
/// ReplicaSet into the Deployment, then waits for the rollout.
pub async fn undo(
    client: &Client,
    namespace: &str,
    name: &str,
    timeout: Duration,
) -> Result<UndoReport, RollbackError> {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    let replicasets: Api<ReplicaSet> = Api::namespaced(client.clone(), namespace);
    let kube_err = |what: String| move |source| RollbackError::Kube { what, source };
    let watch = rollout::RolloutWatch::start(client, namespace, name).await?;
    let params = PostParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    };
    let mut attempt = 0;
    // Read-modify-write: the controller updates the Deployment too, so a
    // conflict (409) means "read again", as kubectl does.
    let (current, previous, generation) = loop {
        attempt += 1;
        let mut deployment = deployments
            .get(name)
            .await
            .map_err(kube_err(format!("read deployment {namespace}/{name}")))?;
        let current = revision_of(&deployment);
        let owned: Vec<ReplicaSet> = replicasets
            .list(&ListParams::default())
            .await
            .map_err(kube_err(format!(
                "list the ReplicaSets of {namespace}/{name}"
            )))?
            .items
            .into_iter()
            .filter(|rs| {
                rs.owner_references()
                    .iter()
                    .any(|o| o.kind == "Deployment" && o.name == name)
            })
            .collect();
        let previous = owned
            .into_iter()
            .filter(|rs| revision_of(rs) < current)
            .max_by_key(revision_of)
            .ok_or_else(|| RollbackError::NoPreviousRevision {
                namespace: namespace.into(),
                name: name.into(),
                current,
            })?;
        let mut template = previous
            .spec
            .as_ref()
            .and_then(|s| s.template.clone())
            .unwrap_or_default();
        if let Some(labels) = template.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
            labels.remove("pod-template-hash");
        }
        if let Some(spec) = deployment.spec.as_mut() {
            spec.template = template;
        }
        match deployments.replace(name, &params, &deployment).await {
            Ok(updated) => {
                let generation =
                    updated
                        .metadata
                        .generation
                        .ok_or_else(|| RolloutError::NoGeneration {
                            namespace: namespace.into(),
                            name: name.into(),
                        })?;
                break (current, previous, generation);
            }
            Err(::kube::Error::Api(s)) if s.code == 409 && attempt < 10 => continue,
            Err(source) => {
                return Err(RollbackError::Kube {
                    what: format!("restore the previous template of {namespace}/{name}"),
                    source,
                });
            }
        }
    };
    let rollout = watch.wait_for_generation(generation, timeout).await?;
    Ok(UndoReport {
        from_revision: current,
        to_revision: revision_of(&previous),
        replicaset: previous.name_any(),
        rollout,
    })
}
