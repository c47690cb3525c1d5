//! Deploying a release and taking it back: `deploy` (apply + prune + wait),
//! rollback by redeploying the previous release's bundle, `undo` to the previous
//! ReplicaSet revision (what `kubectl rollout undo` does), and the blue/green
//! switch (new Deployments ready, then Services re-pointed, then the old ones
//! deleted), whose rollback is the same switch back to the previous bundle.

use std::time::{Duration, Instant};

use ::kube::api::{Api, ListParams, PostParams};
use ::kube::{Client, ResourceExt};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};

use super::FIELD_MANAGER;
use super::apply::{self, ApplyError, ApplyReport};
use super::diagnostics::REVISION_ANNOTATION;
use super::rollout::{self, RolloutError, RolloutReport};
use crate::manifests::{Bundle, Object, Strategy};

#[derive(Debug, thiserror::Error)]
pub enum RollbackError {
    #[error("apply the bundle")]
    Apply(#[from] ApplyError),
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

/// What a deploy did.
#[derive(Clone, Debug)]
pub struct DeployReport {
    pub apply: ApplyReport,
    pub rollouts: Vec<RolloutReport>,
    /// Services re-pointed by a blue/green switch (empty for a rolling deploy).
    pub switched: Vec<String>,
    pub took: Duration,
}

fn deployments_of(bundle: &Bundle) -> Vec<(String, String)> {
    bundle
        .objects
        .iter()
        .filter(|o| matches!(o, Object::Deployment(_)))
        .map(|o| (o.namespace().unwrap_or_default(), o.name()))
        .collect()
}

/// Applies the bundle, prunes what `env`'s previous release had and this one
/// dropped, and waits for every Deployment to roll out.
pub async fn deploy(
    client: &Client,
    bundle: &Bundle,
    env: &str,
    timeout: Duration,
) -> Result<DeployReport, RollbackError> {
    let started = Instant::now();
    let apply = apply::apply_bundle(client, bundle, Some(env)).await?;
    let rollouts = rollout::wait_for_all(client, &deployments_of(bundle), timeout).await?;
    Ok(DeployReport {
        apply,
        rollouts,
        switched: Vec::new(),
        took: started.elapsed(),
    })
}

/// Deploys a release the way its strategy asks: a blue/green bundle through
/// [`bluegreen_switch`], anything else through [`deploy`].
pub async fn deploy_release(
    client: &Client,
    bundle: &Bundle,
    env: &str,
    strategy: Strategy,
    timeout: Duration,
) -> Result<DeployReport, RollbackError> {
    match strategy {
        Strategy::Bluegreen => bluegreen_switch(client, bundle, env, timeout).await,
        Strategy::Rolling | Strategy::Recreate => deploy(client, bundle, env, timeout).await,
    }
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
    deploy(client, previous, env, timeout).await
}

/// Blue/green: applies everything but the Services, waits until every Deployment
/// of the bundle is rolled out, then points the Services at it, then prunes the
/// previous release's Deployments. Switching to the previous bundle is the rollback.
pub async fn bluegreen_switch(
    client: &Client,
    bundle: &Bundle,
    env: &str,
    timeout: Duration,
) -> Result<DeployReport, RollbackError> {
    let started = Instant::now();
    let (services, rest): (Vec<&Object>, Vec<&Object>) = bundle
        .objects
        .iter()
        .partition(|o| matches!(o, Object::Service(_)));
    let mut applied = apply::apply_objects(client, rest).await?;
    let rollouts = rollout::wait_for_all(client, &deployments_of(bundle), timeout).await?;
    let switched = apply::apply_objects(client, services).await?;
    applied.extend(switched.iter().cloned());
    let pruned = apply::prune(client, bundle, env).await?;
    Ok(DeployReport {
        apply: ApplyReport {
            applied,
            pruned,
            took: started.elapsed(),
        },
        rollouts,
        switched,
        took: started.elapsed(),
    })
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
    let watch = rollout::RolloutWatch::start(client, namespace, name).await;
    let params = PostParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    };
    let mut attempt = 0;
    // Read-modify-write: the controller updates the Deployment too, so a
    // conflict (409) means "read again", as kubectl does.
    let (current, previous) = loop {
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
            Ok(_) => break (current, previous),
            Err(::kube::Error::Api(s)) if s.code == 409 && attempt < 10 => continue,
            Err(source) => {
                return Err(RollbackError::Kube {
                    what: format!("restore the previous template of {namespace}/{name}"),
                    source,
                });
            }
        }
    };
    let rollout = watch.wait(timeout).await?;
    Ok(UndoReport {
        from_revision: current,
        to_revision: revision_of(&previous),
        replicaset: previous.name_any(),
        rollout,
    })
}
