//! The frontend-only releases the `local_*` rollout and rollback tests deploy; it builds on the
//! test crate's `common` module (the cluster and the pipeline's rendering).
#![allow(dead_code)]

use cdcheck::manifests::{Bundle, Strategy};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};

use crate::common::{self, Cluster};

/// The pipeline's rendering for `env` at `release`, with frontend as its only service.
pub fn frontend_only(env: &str, release: &str, strategy: Strategy) -> Bundle {
    let bundle = common::render(env, release, |o| o.strategy = strategy);
    common::only_services(&bundle, &["frontend"])
}

/// A fresh environment `<prefix>-<6 hex>` with frontend v0.10.6 rolled out (rolling update),
/// the release the tests update from.
pub async fn env_with_frontend(cluster: &Cluster, prefix: &str) -> String {
    let env = common::unique_env(prefix);
    let bundle = frontend_only(&env, "v0.10.6", Strategy::Rolling);
    common::deploy(cluster, &bundle, &env).await;
    env
}

/// The frontend pods of `env`.
pub async fn frontend_pods(cluster: &Cluster, env: &str) -> Vec<Pod> {
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), env);
    pods.list(&ListParams::default().labels("app=frontend"))
        .await
        .unwrap()
        .items
}
