//! The Kubernetes operations every scenario needs, on any substrate.
//!
//! - [`connect`]: a client from a kubeconfig file.
//! - [`apply`]: server-side apply of a rendered bundle with one field manager, and prune.
//! - [`cache`]: one kind's objects in a namespace, kept by kube's reflector.
//! - [`rollout`]: watch-based rollout waits (observedGeneration, ready = desired, no old pods), one watch per namespace.
//! - [`release`]: deploy a release (apply, prune, wait), and the blue/green switch with its timeline and verdict.
//! - [`rollback`]: redeploy the previous bundle, `rollout undo`.
//! - [`rbac`]: the allow/deny matrix of a ServiceAccount, by SubjectAccessReview and real requests.
//! - [`drain`]: cordon a node and evict its pods through the eviction API (PDBs honoured).
//! - [`pod_watch`]: one namespace's pods watched from a complete list: ready floors and terminations.
//! - [`diagnostics`]: events, pod statuses and ReplicaSet history for a failure report.

pub mod apply;
pub mod cache;
pub mod diagnostics;
pub mod drain;
pub mod placement;
pub mod pod_watch;
pub mod rbac;
pub mod release;
pub mod rollback;
pub mod rollout;

use std::path::Path;

use ::kube::config::{KubeConfigOptions, Kubeconfig};
use ::kube::{Client, Config};

/// The single field manager of every server-side apply cdcheck makes.
pub const FIELD_MANAGER: &str = "cdcheck";

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("read kubeconfig {path}")]
    Read {
        path: String,
        #[source]
        source: ::kube::config::KubeconfigError,
    },
    #[error("build a client from kubeconfig {path}")]
    Client {
        path: String,
        #[source]
        source: ::kube::Error,
    },
}

/// The client configuration a kubeconfig file describes (current context).
pub async fn config_from(path: &Path) -> Result<Config, ConnectError> {
    let shown = path.display().to_string();
    let kubeconfig = Kubeconfig::read_from(path).map_err(|source| ConnectError::Read {
        path: shown.clone(),
        source,
    })?;
    Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .map_err(|source| ConnectError::Read {
            path: shown,
            source,
        })
}

/// A client for the cluster a kubeconfig file describes (current context).
pub async fn connect(path: &Path) -> Result<Client, ConnectError> {
    let config = config_from(path).await?;
    Client::try_from(config).map_err(|source| ConnectError::Client {
        path: path.display().to_string(),
        source,
    })
}
