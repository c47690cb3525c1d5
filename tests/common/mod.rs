//! The test harness of the `local_*` tests: the cluster under test (the local
//! substrate, started once per test binary and shared through its file lock, or
//! the cluster `CDCHECK_KUBECONFIG` names), [`skip::skip_or_fail`] when it
//! cannot start, [`with_temp_env`] for a per-test namespace that is deleted
//! afterwards and explained (events, pods, ReplicaSets) when the test fails,
//! and the rendering and deploy helpers the tests share.
//!
//! No test touches the shared `dev` or `test` namespaces, so test binaries (and
//! cargo-nextest's per-test processes) can run at the same time.
#![allow(dead_code)]

pub mod skip;

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use cdcheck::kube::{diagnostics, release};
use cdcheck::manifests::{self, Bundle, Options};
use cdcheck::substrate::{MeshChoice, SubstrateKind, SubstrateOptions, binaries};
use futures::FutureExt;
use kube::Client;

/// Generous upper bound of one rollout on the shared 2-core machine.
pub const ROLLOUT_TIMEOUT: Duration = Duration::from_secs(120);

/// Set to `1` to keep each test's namespace (its name is printed) for inspection.
pub const KEEP_VAR: &str = "CDCHECK_KEEP";

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
    // Tests never build the binaries: a machine without them skips (and CI fails).
    binaries::locate()
        .map_err(|e| format!("{} (run `cargo run -- substrate install` first)", chain(&e)))?;
    let options = SubstrateOptions {
        mesh: MeshChoice::Off,
        ..SubstrateOptions::new(SubstrateKind::Local)
    };
    provision_kubeconfig(options)
}

/// Provisions through the library's one entry, as `cdcheck run` does, on a runtime of its
/// own (tests each have theirs); `up` takes a file lock and reuses a healthy substrate, so
/// concurrent test binaries share one.
fn provision_kubeconfig(options: SubstrateOptions) -> Result<PathBuf, String> {
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        let progress = |line: &str| eprintln!("{line}");
        let target = runtime
            .block_on(cdcheck::substrate::provision(&options, &progress))
            .map_err(|e| chain(&e))?;
        eprintln!("{}", target.summary);
        let mesh = target.data_plane.is_some();
        Ok(cdcheck::settings::local_kubeconfig(
            &cdcheck::settings::state_dir(options.state_dir.as_deref(), mesh),
        ))
    })
    .join()
    .map_err(|_| "the substrate start-up thread panicked".to_string())?
}

/// An error and its sources on one line.
pub fn chain(error: &dyn std::error::Error) -> String {
    cdcheck::error_chain(error)
}

/// The control-plane binaries, or `None` after [`skip::skip_or_fail`] (which
/// panics in CI) for a test that boots its own substrate.
pub fn binaries_or_skip() -> Option<binaries::Binaries> {
    match binaries::locate() {
        Ok(found) => Some(found),
        Err(e) => {
            skip::skip_or_fail(&format!(
                "the control-plane binaries are missing: {}",
                chain(&e)
            ));
            None
        }
    }
}

/// The cluster, or `None` after [`skip::skip_or_fail`] (which panics in CI).
pub async fn cluster() -> Option<Cluster> {
    static KUBECONFIG: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    connect_or_skip(
        KUBECONFIG.get_or_init(start),
        "failed to start the local substrate",
    )
    .await
}

/// A connection through the kubeconfig a start-up returned, or `None` after
/// [`skip::skip_or_fail`] with why it could not start.
async fn connect_or_skip(started: &Result<PathBuf, String>, failed: &str) -> Option<Cluster> {
    cdcheck::install_crypto_provider();
    let kubeconfig = match started {
        Ok(path) => path.clone(),
        Err(why) => {
            skip::skip_or_fail(&format!("{failed}: {why}"));
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

/// Returns the cluster, or returns from the test (outside CI only) after
/// recording the skip.
#[macro_export]
macro_rules! require_cluster {
    () => {
        match $crate::common::cluster().await {
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

fn keep() -> bool {
    std::env::var(KEEP_VAR).is_ok_and(|v| v == "1")
}

/// Runs `body` with a fresh environment `<prefix>-<6 hex>` (its namespace is
/// created first). When the body panics, prints the namespace's diagnostics
/// (ReplicaSets, pods, events) and re-raises the panic; either way the
/// namespace is deleted unless `CDCHECK_KEEP=1`.
pub async fn with_temp_env<T, F, Fut>(cluster: &Cluster, prefix: &str, body: F) -> T
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = T>,
{
    use k8s_openapi::api::core::v1::Namespace;
    let env = unique_env(prefix);
    let namespaces: kube::Api<Namespace> = kube::Api::all(cluster.client.clone());
    let namespace: Namespace = serde_json::from_value(serde_json::json!({
        "metadata": {"name": env, "labels": {"cdcheck.io/temporary": "true"}}
    }))
    .expect("a Namespace");
    namespaces
        .create(&Default::default(), &namespace)
        .await
        .unwrap_or_else(|e| panic!("failed to create namespace {env}: {e}"));
    let outcome = AssertUnwindSafe(body(env.clone())).catch_unwind().await;
    if outcome.is_err() {
        let found = diagnostics::gather(&cluster.client, &env, None).await;
        eprintln!("test failed in environment {env}; {found}");
    }
    if keep() {
        eprintln!("{KEEP_VAR}=1: keeping namespace {env}");
    } else if let Err(e) = namespaces.delete(&env, &Default::default()).await {
        eprintln!("could not delete namespace {env}: {e}");
    }
    match outcome {
        Ok(value) => value,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// Holds a cluster-wide lock (a file lock beside the target directory) while
/// a test cordons a node, so two drains never leave one schedulable node.
pub struct NodeLock {
    _file: std::fs::File,
}

pub async fn lock_nodes() -> NodeLock {
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cdcheck-nodes.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("failed to open {}: {e}", path.display()));
    let fd = std::os::fd::AsRawFd::as_raw_fd(&file);
    tokio::task::spawn_blocking(move || {
        // SAFETY: flock on a descriptor the returned guard keeps open.
        let rc = unsafe { libc::flock(fd, libc::LOCK_EX) };
        assert_eq!(rc, 0, "flock: {}", std::io::Error::last_os_error());
    })
    .await
    .expect("the lock task");
    NodeLock { _file: file }
}

/// The pipeline's rendering for `env` at `release`.
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
/// Tests that use [`with_temp_env`] need not call it.
pub async fn cleanup(cluster: &Cluster, env: &str) {
    use k8s_openapi::api::core::v1::Namespace;
    let api: kube::Api<Namespace> = kube::Api::all(cluster.client.clone());
    let _ = api.delete(env, &Default::default()).await;
}

/// The local mesh's substrate: its own state directory beside the default one
/// (`CDCHECK_MESH_STATE_DIR` overrides it), so the `local_*` tests' kwok-played pods
/// and the mesh's process pods never share a substrate.
pub fn mesh_state_dir() -> PathBuf {
    cdcheck::settings::mesh_state_dir()
}

/// Why the local mesh cannot run here, if it cannot.
pub fn mesh_unavailable() -> Option<String> {
    if let Err(e) = binaries::locate() {
        return Some(chain(&e));
    }
    cdcheck::mesh::locate()
        .and_then(|_| cdcheck::mesh::check_root())
        .err()
        .map(|e| chain(&e))
}

/// Starts (or reuses) the local mesh substrate; its kubeconfig.
pub fn start_mesh() -> Result<PathBuf, String> {
    start_mesh_with(cdcheck::mesh::Workloads::Standins)
}

/// The local mesh with its pods running `workloads`: a mesh running others restarts its
/// pod runner with these.
pub fn start_mesh_with(workloads: cdcheck::mesh::Workloads) -> Result<PathBuf, String> {
    if let Some(why) = mesh_unavailable() {
        return Err(why);
    }
    let options = SubstrateOptions {
        workloads,
        mesh: MeshChoice::On,
        require_data_plane: true,
        state_dir: Some(mesh_state_dir()),
        boot_timeout: Duration::from_secs(180),
        // The mesh daemon and the stand-ins are cdcheck's binary, not this test's.
        cdcheck_binary: Some(PathBuf::from(env!("CARGO_BIN_EXE_cdcheck"))),
        ..SubstrateOptions::new(SubstrateKind::Local)
    };
    provision_kubeconfig(options)
}

/// The local mesh with Online Boutique's own services as its pods' processes (started once
/// per test binary; the services built by `cdcheck substrate install --mesh`), or `None`
/// after [`skip::skip_or_fail`] when it cannot run here.
pub async fn mesh_upstream_cluster() -> Option<Cluster> {
    static KUBECONFIG: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    connect_or_skip(
        KUBECONFIG.get_or_init(|| start_mesh_with(cdcheck::mesh::Workloads::Upstream)),
        "the local mesh with upstream's services cannot start",
    )
    .await
}

/// The local mesh substrate (started once per test binary), or `None` after
/// [`skip::skip_or_fail`] (which panics in CI) when it cannot run here.
pub async fn mesh_cluster() -> Option<Cluster> {
    static KUBECONFIG: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    connect_or_skip(
        KUBECONFIG.get_or_init(start_mesh),
        "the local mesh cannot start",
    )
    .await
}
