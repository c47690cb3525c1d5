//! TRANSITIONAL: the old harness of the `local_*` tests, kept only so the tests
//! not yet moved to `tests/common/` still build. `tests/common/mod.rs` exports
//! the same names (`cluster`, `require_cluster!`, `unique_env`, `render`,
//! `only_services`, `deploy`, `cleanup`, `chain`, `ROLLOUT_TIMEOUT`): change
//! `mod common_local;` to `mod common;` and `common_local::` to `common::`, then
//! delete this file. Its skip already goes through `tests/common/skip.rs`.
#![allow(dead_code)]

#[path = "../common/skip.rs"]
mod skip;

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use cdcheck::kube::release;
use cdcheck::manifests::{self, Bundle, Options};
use cdcheck::substrate::{binaries, local};
use kube::Client;

/// Generous upper bound of one rollout on the shared 2-core machine.
pub const ROLLOUT_TIMEOUT: Duration = Duration::from_secs(120);

/// A connection to the cluster under test.
pub struct Cluster {
    pub kubeconfig: PathBuf,
    pub config: kube::Config,
    pub client: Client,
}

fn start() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os("CDCHECK_KUBECONFIG").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(path));
    }
    let found = binaries::locate()
        .map_err(|e| format!("{} (run `cargo run -- substrate install` first)", chain(&e)))?;
    // `up` takes a file lock and reuses a healthy substrate, so concurrent
    // test binaries share one. It runs on its own runtime: tests each have theirs.
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        let options = local::UpOptions {
            nodes: 3,
            ..Default::default()
        };
        runtime
            .block_on(local::up(&found, &options))
            .map(|s| {
                eprintln!(
                    "local substrate {} in {:?}: {}",
                    if s.reused { "reused" } else { "started" },
                    s.boot,
                    s.kubeconfig.display()
                );
                s.kubeconfig
            })
            .map_err(|e| chain(&e))
    })
    .join()
    .map_err(|_| "the substrate start-up thread panicked".to_string())?
}

pub fn chain(error: &dyn std::error::Error) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// The cluster, or `None` (after saying why) when it cannot start outside CI.
/// Panics in CI: a missing substrate must fail the run, never skip it.
pub async fn cluster() -> Option<Cluster> {
    cdcheck::install_crypto_provider();
    static KUBECONFIG: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let kubeconfig = match KUBECONFIG.get_or_init(start) {
        Ok(path) => path.clone(),
        Err(why) => {
            skip::skip_or_fail(&format!("failed to start the local substrate: {why}"));
            return None;
        }
    };
    let config = cdcheck::kube::config_from(&kubeconfig)
        .await
        .unwrap_or_else(|e| panic!("failed to read {}: {}", kubeconfig.display(), chain(&e)));
    let client = Client::try_from(config.clone()).expect("failed to build a client");
    Some(Cluster {
        kubeconfig,
        config,
        client,
    })
}

/// Returns the cluster, or returns from the test (outside CI only) with the reason printed.
#[macro_export]
macro_rules! require_cluster {
    () => {
        match common_local::cluster().await {
            Some(cluster) => cluster,
            None => return,
        }
    };
}

/// A unique environment name (and namespace) for one test: `<prefix>-<6 hex>`.
pub fn unique_env(prefix: &str) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("{prefix}-{}", &id[..6])
}

/// The pipeline's rendering for `env` at `release`, without the loadgenerator
/// unless asked (it is not HA and would only add pods).
pub fn render(env: &str, release: &str, configure: impl FnOnce(&mut Options)) -> Bundle {
    let mut options = Options::for_env(env);
    options.release = release.to_string();
    configure(&mut options);
    manifests::render(&options).expect("render the bundle")
}

/// Only the objects of the bundle a test needs: namespace, RBAC and the named services.
pub fn only_services(bundle: &Bundle, services: &[&str]) -> Bundle {
    use cdcheck::manifests::Object;
    let keep = |o: &Object| match o {
        Object::Namespace(_) | Object::Role(_) | Object::RoleBinding(_) => true,
        Object::ServiceAccount(_) => true,
        Object::Deployment(d) => {
            let app = d
                .spec
                .as_ref()
                .and_then(|s| s.selector.match_labels.as_ref())
                .and_then(|l| l.get("app").cloned())
                .unwrap_or_default();
            services.contains(&app.as_str())
        }
        Object::Service(s) => {
            let app = s
                .spec
                .as_ref()
                .and_then(|s| s.selector.as_ref())
                .and_then(|l| l.get("app").cloned())
                .unwrap_or_default();
            services.contains(&app.as_str())
        }
        Object::PodDisruptionBudget(p) => services
            .iter()
            .any(|s| p.metadata.name.as_deref() == Some(*s)),
        _ => false,
    };
    Bundle {
        objects: bundle.objects.iter().filter(|o| keep(o)).cloned().collect(),
    }
}

/// Deploys `bundle` for `env` and panics with the diagnostics when it fails.
pub async fn deploy(cluster: &Cluster, bundle: &Bundle, env: &str) -> release::DeployReport {
    match release::deploy(&cluster.client, bundle, env, ROLLOUT_TIMEOUT).await {
        Ok(report) => report,
        Err(e) => panic!("failed to deploy {env}: {}", chain(&e)),
    }
}

/// Deletes the test's namespace (best effort; the substrate is throwaway).
pub async fn cleanup(cluster: &Cluster, env: &str) {
    use k8s_openapi::api::core::v1::Namespace;
    let api: kube::Api<Namespace> = kube::Api::all(cluster.client.clone());
    let _ = api.delete(env, &Default::default()).await;
}
