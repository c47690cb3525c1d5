//! The local substrate's lifecycle: etcd, kube-apiserver, kube-controller-manager,
//! kube-scheduler and kwok as detached processes recorded in a state directory,
//! N fake nodes across zones a/b/c, an admin kubeconfig (0600), and the Istio CRDs.
//!
//! `up` is idempotent (a healthy substrate is reused, a crashed one is cleaned up
//! and restarted); `down` stops every process it started and removes the state.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ::kube::api::{Api, ListParams, Patch, PatchParams};
use ::kube::runtime::wait::await_condition;
use ::kube::{Client, ResourceExt};
use base64::Engine;
use k8s_openapi::api::core::v1::{Namespace, Node};
use serde::{Deserialize, Serialize};

use super::binaries::{Binaries, BinaryError};
use super::istio_crds::{self, CrdError, FIELD_MANAGER};
use super::pki::{Pem, Pki, PkiError};

/// The zone label of the fake nodes.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
/// kwok manages only the nodes carrying this annotation.
const KWOK_NODE_ANNOTATION: &str = "kwok.x-k8s.io/node";
const KWOK_NODE_VALUE: &str = "fake";
/// Zones the fake nodes are spread over, round robin.
pub const ZONES: [&str; 3] = ["a", "b", "c"];

const KWOK_STAGES: &str = include_str!("kwok-stages.yaml");
/// The nodes' address without the mesh (kwok's `--node-ip`): nothing ever dials it, as
/// nothing serves the kubelet API there.
const KWOK_NODE_IP: &str = "10.89.0.1";
const STATE_FILE: &str = "state.json";

#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error("find the control-plane binaries")]
    Binaries(#[from] BinaryError),
    #[error("generate the control plane's certificates")]
    Pki(#[from] PkiError),
    #[error("prepare the state directory {path}")]
    StateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("lock {path} (another `cdcheck up` or `down` holds it)")]
    Lock {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("start {component} ({binary})")]
    Spawn {
        component: &'static str,
        binary: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("keep {component} running: it exited with {status}; last lines of {log}:\n{tail}")]
    Exited {
        component: &'static str,
        status: String,
        log: PathBuf,
        tail: String,
    },
    #[error("wait {waited:?} for {what}; component logs are in {logs}{detail}")]
    Timeout {
        what: String,
        waited: Duration,
        logs: PathBuf,
        detail: String,
    },
    #[error("{what}")]
    Kube {
        what: String,
        #[source]
        source: ::kube::Error,
    },
    #[error("read the kubeconfig {path}")]
    Kubeconfig {
        path: PathBuf,
        #[source]
        source: crate::kube::ConnectError,
    },
    #[error("watch the nodes become Ready")]
    WatchNodes {
        #[source]
        source: ::kube::runtime::wait::Error,
    },
    #[error("install the Istio CRDs")]
    Crds(#[from] CrdError),
    #[error("find a running local substrate in {path}: run `cdcheck up --substrate local`")]
    NotRunning { path: PathBuf },
    #[error(
        "start the mesh on the substrate running in {path}: it was started without `--mesh` (kwok plays its pods); stop it with `cdcheck down` first"
    )]
    NoMesh { path: PathBuf },
    #[error("start the local mesh")]
    Mesh(#[from] crate::mesh::MeshError),
}

fn state_err(path: &Path) -> impl FnOnce(std::io::Error) -> LocalError + '_ {
    move |source| LocalError::StateDir {
        path: path.to_path_buf(),
        source,
    }
}

/// How to bring the substrate up.
#[derive(Clone, Debug)]
pub struct UpOptions {
    pub nodes: u32,
    pub state_dir: PathBuf,
    /// Upper bound on the whole boot.
    pub timeout: Duration,
    /// Run the Istio data plane (istiod, the gateway, pods as processes) with these
    /// executables; `None` leaves pods to kwok, with no data plane.
    pub mesh: Option<crate::mesh::MeshBinaries>,
}

impl Default for UpOptions {
    fn default() -> Self {
        Self {
            nodes: crate::settings::NODES,
            state_dir: default_state_dir(),
            timeout: crate::settings::BOOT_TIMEOUT,
            mesh: None,
        }
    }
}

/// A running local substrate.
#[derive(Clone, Debug)]
pub struct Substrate {
    pub state_dir: PathBuf,
    /// Admin kubeconfig (mode 0600).
    pub kubeconfig: PathBuf,
    pub server: String,
    pub nodes: Vec<String>,
    /// True when `up` found a healthy substrate and kept it.
    pub reused: bool,
    /// Time `up` took.
    pub boot: Duration,
    /// True when pods are processes behind a real Istio data plane (`up --mesh`).
    pub mesh: bool,
}

impl Substrate {
    pub async fn client(&self) -> Result<Client, LocalError> {
        crate::kube::connect(&self.kubeconfig)
            .await
            .map_err(|source| LocalError::Kubeconfig {
                path: self.kubeconfig.clone(),
                source,
            })
    }
}

/// The plain local substrate's directory ([`crate::settings::local_state_dir`]).
pub fn default_state_dir() -> PathBuf {
    crate::settings::local_state_dir()
}

/// The local mesh substrate's directory ([`crate::settings::mesh_state_dir`]).
pub fn default_mesh_state_dir() -> PathBuf {
    crate::settings::mesh_state_dir()
}

/// The admin kubeconfig of the substrate in `state_dir`.
pub fn kubeconfig_path(state_dir: &Path) -> PathBuf {
    crate::settings::local_kubeconfig(state_dir)
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct State {
    server: String,
    nodes: u32,
    processes: Vec<Process>,
    /// Pods are the mesh's processes, not kwok's.
    #[serde(default)]
    mesh: bool,
    /// The mesh's pods run Online Boutique's services built in this directory (else stand-ins).
    #[serde(default)]
    boutique: Option<PathBuf>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Process {
    component: String,
    pid: i32,
}

/// An exclusive lock beside the state directory, held for the whole of `up` or `down`.
struct Lock {
    _file: File,
}

impl Lock {
    async fn take(state_dir: &Path) -> Result<Lock, LocalError> {
        let path = state_dir.with_extension("lock");
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(state_err(parent))?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|source| LocalError::Lock {
                path: path.clone(),
                source,
            })?;
        let fd = std::os::fd::AsRawFd::as_raw_fd(&file);
        let locked = tokio::task::spawn_blocking(move || {
            // SAFETY: flock on a file descriptor we own and keep open.
            let rc = unsafe { libc::flock(fd, libc::LOCK_EX) };
            if rc == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        })
        .await
        .map_err(|e| LocalError::Lock {
            path: path.clone(),
            source: std::io::Error::other(e),
        })?;
        locked.map_err(|source| LocalError::Lock { path, source })?;
        Ok(Lock { _file: file })
    }
}

fn read_state(state_dir: &Path) -> Option<State> {
    let text = std::fs::read_to_string(state_dir.join(STATE_FILE)).ok()?;
    serde_json::from_str(&text).ok()
}

fn write_state(state_dir: &Path, state: &State) -> Result<(), LocalError> {
    let text = serde_json::to_string_pretty(state).unwrap_or_default();
    let path = state_dir.join(STATE_FILE);
    std::fs::write(&path, text).map_err(state_err(&path))
}

/// True when `pid` is a live (non-zombie) process whose command line mentions `state_dir`.
fn is_ours(pid: i32, state_dir: &Path) -> bool {
    if pid <= 0 {
        return false;
    }
    // Reap it if it is our own exited child, so it does not linger as a zombie.
    // SAFETY: waitpid with WNOHANG on a pid; errors (not our child) are ignored.
    unsafe {
        libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG);
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    if stat.is_empty()
        || stat
            .rsplit(')')
            .next()
            .is_some_and(|s| s.trim_start().starts_with('Z'))
    {
        return false;
    }
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let needle = state_dir.as_os_str().as_encoded_bytes();
    !needle.is_empty()
        && cmdline.windows(needle.len()).any(|w| w == needle)
        && is_component(&cmdline)
}

/// Whether a command line is one of the substrate's own processes, not a command that
/// merely names the state directory (`cdcheck run --state-dir ...` of another test
/// must never be stopped as stale).
fn is_component(cmdline: &[u8]) -> bool {
    let mut args = cmdline.split(|b| *b == 0);
    let program = args.next().unwrap_or_default();
    let program = program.rsplit(|b| *b == b'/').next().unwrap_or_default();
    const BINARIES: [&[u8]; 7] = [
        b"etcd",
        b"kube-apiserver",
        b"kube-controller-manager",
        b"kube-scheduler",
        b"kwok",
        b"pilot-discovery",
        b"envoy",
    ];
    BINARIES.contains(&program) || matches!(args.next(), Some(b"mesh-daemon") | Some(b"standin"))
}

/// Every live process whose command line mentions `state_dir` (recorded or not:
/// a run that crashed mid-boot may not have recorded its children).
fn our_processes(state_dir: &Path) -> Vec<i32> {
    let me = std::process::id() as i32;
    let mut pids: Vec<i32> = std::fs::read_dir("/proc")
        .map(|dir| {
            dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
                .filter(|pid| *pid != me && is_ours(*pid, state_dir))
                .collect()
        })
        .unwrap_or_default();
    pids.sort_unstable();
    pids
}

/// Stops every process of the substrate in `state_dir` (SIGTERM, then SIGKILL
/// after 5 s) and returns how many there were.
fn stop_all(state_dir: &Path) -> usize {
    let mut pids: Vec<i32> = read_state(state_dir)
        .map(|s| s.processes.iter().rev().map(|p| p.pid).collect())
        .unwrap_or_default();
    for pid in our_processes(state_dir) {
        if !pids.contains(&pid) {
            pids.push(pid);
        }
    }
    pids.retain(|pid| is_ours(*pid, state_dir));
    for pid in &pids {
        // SAFETY: signalling a process we verified runs our command line.
        unsafe {
            libc::kill(*pid, libc::SIGTERM);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && pids.iter().any(|pid| is_ours(*pid, state_dir)) {
        std::thread::sleep(Duration::from_millis(50));
    }
    for pid in &pids {
        if is_ours(*pid, state_dir) {
            // SAFETY: as above; it ignored SIGTERM.
            unsafe {
                libc::kill(*pid, libc::SIGKILL);
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline && pids.iter().any(|pid| is_ours(*pid, state_dir)) {
        std::thread::sleep(Duration::from_millis(20));
    }
    pids.len()
}

/// Stops one recorded process of the substrate (SIGTERM, then SIGKILL after 5 s) and
/// forgets it.
fn stop_recorded(state: &mut State, state_dir: &Path, component: &str) {
    let pids: Vec<i32> = state
        .processes
        .iter()
        .filter(|p| p.component == component)
        .map(|p| p.pid)
        .filter(|pid| is_ours(*pid, state_dir))
        .collect();
    for signal in [libc::SIGTERM, libc::SIGKILL] {
        for pid in &pids {
            // SAFETY: signalling a process we verified runs our command line.
            unsafe {
                libc::kill(*pid, signal);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && pids.iter().any(|pid| is_ours(*pid, state_dir)) {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    state.processes.retain(|p| p.component != component);
}

/// What `down` did.
#[derive(Clone, Debug)]
pub struct Down {
    pub stopped: usize,
    pub removed: bool,
}

/// Stops every process of the substrate in `state_dir` and removes the state.
pub async fn down(state_dir: &Path) -> Result<Down, LocalError> {
    let _lock = Lock::take(state_dir).await?;
    let dir = state_dir.to_path_buf();
    let stopped = tokio::task::spawn_blocking(move || stop_all(&dir))
        .await
        .unwrap_or(0);
    // The mesh's pod network outlives its processes; a substrate without one has none.
    let _ = crate::mesh::netns::delete(&crate::mesh::netns::name_for(state_dir));
    let removed = state_dir.exists();
    if removed {
        std::fs::remove_dir_all(state_dir).map_err(state_err(state_dir))?;
    }
    Ok(Down { stopped, removed })
}

/// The running substrate in `state_dir`, if its processes are alive and its API answers.
pub async fn running(state_dir: &Path) -> Option<Substrate> {
    let state = read_state(state_dir)?;
    if state.processes.is_empty() || !state.processes.iter().all(|p| is_ours(p.pid, state_dir)) {
        return None;
    }
    let kubeconfig = kubeconfig_path(state_dir);
    let client = crate::kube::connect(&kubeconfig).await.ok()?;
    // Its processes are alive: give a loaded API server time before calling it dead,
    // since a dead verdict restarts the substrate under every other user of it.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ready = tokio::time::timeout(Duration::from_secs(3), api_ready(&client)).await;
        if matches!(ready, Ok(true)) {
            break;
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Some(Substrate {
        state_dir: state_dir.to_path_buf(),
        kubeconfig,
        server: state.server,
        nodes: node_names(state.nodes),
        reused: true,
        boot: Duration::ZERO,
        mesh: state.mesh,
    })
}

async fn api_ready(client: &Client) -> bool {
    let req = http::Request::get("/readyz").body(Vec::new());
    match req {
        Ok(req) => client
            .request_text(req)
            .await
            .map(|t| t.trim() == "ok")
            .unwrap_or(false),
        Err(_) => false,
    }
}

/// Node names of an N-node substrate.
pub fn node_names(n: u32) -> Vec<String> {
    (1..=n).map(|i| format!("node-{i}")).collect()
}

/// Brings the substrate up (or reuses a healthy one) and returns when the API
/// answers, every node is Ready and the Istio CRDs are Established.
pub async fn up(binaries: &Binaries, options: &UpOptions) -> Result<Substrate, LocalError> {
    let started = Instant::now();
    let state_dir = &options.state_dir;
    let _lock = Lock::take(state_dir).await?;
    if let Some(mut existing) = running(state_dir).await {
        if options.mesh.is_some() && !existing.mesh {
            return Err(LocalError::NoMesh {
                path: state_dir.clone(),
            });
        }
        let client = existing.client().await?;
        if options.nodes as usize > existing.nodes.len() {
            existing.nodes = node_names(options.nodes);
            let mut state = read_state(state_dir).unwrap_or(State {
                server: existing.server.clone(),
                nodes: options.nodes,
                processes: Vec::new(),
                mesh: existing.mesh,
                boutique: options.mesh.as_ref().and_then(|m| m.boutique.clone()),
            });
            state.nodes = options.nodes;
            write_state(state_dir, &state)?;
        }
        prepare_cluster(&client, &existing.nodes, state_dir, options.timeout).await?;
        if let Some(mesh) = &options.mesh {
            start_mesh(state_dir, mesh, &client, started + options.timeout).await?;
        }
        existing.boot = started.elapsed();
        return Ok(existing);
    }
    // Anything left is stale: a crashed run, or a substrate that no longer answers.
    let dir = state_dir.clone();
    tokio::task::spawn_blocking(move || stop_all(&dir))
        .await
        .unwrap_or(0);
    if state_dir.exists() {
        std::fs::remove_dir_all(state_dir).map_err(state_err(state_dir))?;
    }
    boot(binaries, options, started).await
}

struct Ports {
    etcd_client: u16,
    etcd_peer: u16,
    apiserver: u16,
}

fn free_ports() -> Result<Ports, std::io::Error> {
    // Hold all three listeners at once so the kernel hands out distinct ports.
    let a = std::net::TcpListener::bind("127.0.0.1:0")?;
    let b = std::net::TcpListener::bind("127.0.0.1:0")?;
    let c = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(Ports {
        etcd_client: a.local_addr()?.port(),
        etcd_peer: b.local_addr()?.port(),
        apiserver: c.local_addr()?.port(),
    })
}

fn kubeconfig_yaml(server: &str, ca: &str, user: &str, client: &Pem) -> String {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: cdcheck-local\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\nusers:\n- name: {user}\n  user:\n    client-certificate-data: {cert}\n    client-key-data: {key}\ncontexts:\n- name: cdcheck-local\n  context:\n    cluster: cdcheck-local\n    user: {user}\ncurrent-context: cdcheck-local\n",
        ca = b64(ca),
        cert = b64(&client.cert),
        key = b64(&client.key),
    )
}

struct Spawned {
    component: &'static str,
    child: Child,
    log: PathBuf,
}

fn spawn(
    component: &'static str,
    binary: &Path,
    args: &[String],
    logs: &Path,
) -> Result<Spawned, LocalError> {
    spawn_with(component, binary, args, &[], None, logs)
}

fn spawn_with(
    component: &'static str,
    binary: &Path,
    args: &[String],
    env: &[(&str, &str)],
    cwd: Option<&Path>,
    logs: &Path,
) -> Result<Spawned, LocalError> {
    let log = logs.join(format!("{component}.log"));
    let out = File::create(&log).map_err(state_err(&log))?;
    let err = out.try_clone().map_err(state_err(&log))?;
    let mut command = Command::new(binary);
    command
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    if let Some(cwd) = cwd {
        command.current_dir(cwd);
    }
    // Its own session (no controlling terminal): Ctrl-C on `cdcheck up`, a closed
    // terminal or the end of a test binary does not reach it; `down` stops it by pid.
    // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
    unsafe {
        command.pre_exec(|| {
            if libc::setsid() == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = command.spawn().map_err(|source| LocalError::Spawn {
        component,
        binary: binary.to_path_buf(),
        source,
    })?;
    Ok(Spawned {
        component,
        child,
        log,
    })
}

fn log_tail(path: &Path, lines: usize) -> String {
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(_) => return String::new(),
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(8192)));
    let mut text = String::new();
    let _ = file.read_to_string(&mut text);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Fails with the component's log tail if any spawned process has exited.
fn check_alive(spawned: &mut [Spawned]) -> Result<(), LocalError> {
    for s in spawned.iter_mut() {
        if let Ok(Some(status)) = s.child.try_wait() {
            return Err(LocalError::Exited {
                component: s.component,
                status: status.to_string(),
                log: s.log.clone(),
                tail: log_tail(&s.log, 15),
            });
        }
    }
    Ok(())
}

async fn boot(
    binaries: &Binaries,
    options: &UpOptions,
    started: Instant,
) -> Result<Substrate, LocalError> {
    let dir = &options.state_dir;
    let pki_dir = dir.join("pki");
    let logs = dir.join("logs");
    for d in [dir, &pki_dir, &logs, &dir.join("etcd")] {
        std::fs::create_dir_all(d).map_err(state_err(d))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700))
            .map_err(state_err(d))?;
    }
    let pki = Pki::generate()?;
    let files = pki.write(&pki_dir)?;
    let ports = free_ports().map_err(state_err(dir))?;
    let server = format!("https://127.0.0.1:{}", ports.apiserver);
    let kubeconfig = kubeconfig_path(dir);
    let write = |path: &Path, text: String| super::pki::write_file(path, &text);
    write(
        &kubeconfig,
        kubeconfig_yaml(&server, &pki.ca.cert, "cdcheck-admin", &pki.admin),
    )?;
    let kcm_kubeconfig = pki_dir.join("controller-manager.kubeconfig");
    write(
        &kcm_kubeconfig,
        kubeconfig_yaml(
            &server,
            &pki.ca.cert,
            "system:kube-controller-manager",
            &pki.controller_manager,
        ),
    )?;
    let scheduler_kubeconfig = pki_dir.join("scheduler.kubeconfig");
    write(
        &scheduler_kubeconfig,
        kubeconfig_yaml(
            &server,
            &pki.ca.cert,
            "system:kube-scheduler",
            &pki.scheduler,
        ),
    )?;
    let stages = dir.join("kwok-stages.yaml");
    // With the mesh, the pod runner plays the kubelet for pods: kwok keeps the nodes only.
    let stages_text = if options.mesh.is_some() {
        mesh_node_stages(KWOK_STAGES)
    } else {
        KWOK_STAGES.to_string()
    };
    write(&stages, stages_text)?;
    let scheduler_config = dir.join("kube-scheduler.yaml");
    write(
        &scheduler_config,
        scheduler_config_yaml(&scheduler_kubeconfig),
    )?;

    let p = |path: &Path| path.display().to_string();
    let etcd_client = format!("http://127.0.0.1:{}", ports.etcd_client);
    let etcd_peer = format!("http://127.0.0.1:{}", ports.etcd_peer);
    let etcd_args = vec![
        "--name=cdcheck".to_string(),
        format!("--data-dir={}", p(&dir.join("etcd"))),
        format!("--listen-client-urls={etcd_client}"),
        format!("--advertise-client-urls={etcd_client}"),
        format!("--listen-peer-urls={etcd_peer}"),
        format!("--initial-advertise-peer-urls={etcd_peer}"),
        format!("--initial-cluster=cdcheck={etcd_peer}"),
        // A throwaway cluster: durability buys nothing and fsync costs seconds.
        "--unsafe-no-fsync".to_string(),
        "--log-level=warn".to_string(),
    ];
    let issuer = "https://kubernetes.default.svc.cluster.local";
    let apiserver_args = vec![
        format!("--etcd-servers={etcd_client}"),
        "--bind-address=127.0.0.1".to_string(),
        "--advertise-address=127.0.0.1".to_string(),
        format!("--secure-port={}", ports.apiserver),
        format!("--cert-dir={}", p(&pki_dir)),
        format!("--tls-cert-file={}", p(&files.apiserver_cert)),
        format!("--tls-private-key-file={}", p(&files.apiserver_key)),
        format!("--client-ca-file={}", p(&files.ca_cert)),
        format!("--service-account-issuer={issuer}"),
        format!(
            "--service-account-key-file={}",
            p(&files.service_account_pub)
        ),
        format!(
            "--service-account-signing-key-file={}",
            p(&files.service_account_key)
        ),
        "--authorization-mode=Node,RBAC".to_string(),
        format!("--service-cluster-ip-range={}", crate::names::SERVICE_CIDR),
        "--allow-privileged=true".to_string(),
        "--profiling=false".to_string(),
        "--event-ttl=2h".to_string(),
        // Pod logs: the API server authenticates to kubelets with this certificate. It
        // does not check theirs (no --kubelet-certificate-authority).
        format!(
            "--kubelet-client-certificate={}",
            p(&files.kubelet_client_cert)
        ),
        format!("--kubelet-client-key={}", p(&files.kubelet_client_key)),
    ];
    let mut apiserver_args = apiserver_args;
    let mut node_ip = KWOK_NODE_IP;
    if options.mesh.is_some() {
        // The mesh daemon is every node's kubelet endpoint, on loopback; the default
        // preference (Hostname first) would look the node's name up in DNS.
        apiserver_args.push("--kubelet-preferred-address-types=InternalIP".to_string());
        node_ip = "127.0.0.1";
    }
    let mut spawned = vec![
        spawn("etcd", &binaries.etcd, &etcd_args, &logs)?,
        spawn(
            "kube-apiserver",
            &binaries.kube_apiserver,
            &apiserver_args,
            &logs,
        )?,
    ];
    let mut state = State {
        server: server.clone(),
        nodes: options.nodes,
        processes: Vec::new(),
        mesh: options.mesh.is_some(),
        boutique: options.mesh.as_ref().and_then(|m| m.boutique.clone()),
    };
    let record = |state: &mut State, spawned: &[Spawned]| {
        state.processes = spawned
            .iter()
            .map(|s| Process {
                component: s.component.to_string(),
                pid: s.child.id() as i32,
            })
            .collect();
    };
    record(&mut state, &spawned);
    write_state(dir, &state)?;

    let deadline = started + options.timeout;
    let client =
        crate::kube::connect(&kubeconfig)
            .await
            .map_err(|source| LocalError::Kubeconfig {
                path: kubeconfig.clone(),
                source,
            })?;
    loop {
        check_alive(&mut spawned)?;
        if api_ready(&client).await {
            break;
        }
        if Instant::now() > deadline {
            return Err(LocalError::Timeout {
                what: "kube-apiserver /readyz".into(),
                waited: options.timeout,
                logs,
                detail: format!(
                    "\nkube-apiserver.log:\n{}",
                    log_tail(&dir.join("logs/kube-apiserver.log"), 10)
                ),
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let kcm_args = vec![
        format!("--kubeconfig={}", p(&kcm_kubeconfig)),
        "--secure-port=0".to_string(),
        "--leader-elect=false".to_string(),
        format!(
            "--service-account-private-key-file={}",
            p(&files.service_account_key)
        ),
        format!("--root-ca-file={}", p(&files.ca_cert)),
        "--use-service-account-credentials=true".to_string(),
        // kwok renews leases, but a fake node must never flap to NotReady.
        "--node-monitor-grace-period=1h".to_string(),
        "--node-startup-grace-period=1h".to_string(),
        // Scenarios roll a dozen Deployments each, several at once: the default
        // 20 requests/s client limit, not the API server, paced every rollout.
        "--kube-api-qps=200".to_string(),
        "--kube-api-burst=400".to_string(),
        "--concurrent-deployment-syncs=20".to_string(),
        "--concurrent-replicaset-syncs=20".to_string(),
    ];
    // With --config, kube-scheduler ignores --kubeconfig and --leader-elect: both are in the file.
    let scheduler_args = vec![
        format!("--config={}", p(&scheduler_config)),
        format!("--authentication-kubeconfig={}", p(&scheduler_kubeconfig)),
        format!("--authorization-kubeconfig={}", p(&scheduler_kubeconfig)),
        "--secure-port=0".to_string(),
    ];
    let kwok_args = vec![
        format!("--kubeconfig={}", p(&kubeconfig)),
        format!("--config={}", p(&stages)),
        "--manage-all-nodes=false".to_string(),
        format!("--manage-nodes-with-annotation-selector={KWOK_NODE_ANNOTATION}={KWOK_NODE_VALUE}"),
        format!("--cidr={}", crate::names::POD_CIDR),
        format!("--node-ip={node_ip}"),
        "--node-lease-duration-seconds=40".to_string(),
    ];
    spawned.push(spawn(
        "kube-controller-manager",
        &binaries.kube_controller_manager,
        &kcm_args,
        &logs,
    )?);
    spawned.push(spawn(
        "kube-scheduler",
        &binaries.kube_scheduler,
        &scheduler_args,
        &logs,
    )?);
    spawned.push(spawn("kwok", &binaries.kwok, &kwok_args, &logs)?);
    record(&mut state, &spawned);
    write_state(dir, &state)?;

    let nodes = node_names(options.nodes);
    let remaining = deadline.saturating_duration_since(Instant::now());
    {
        let prepare = prepare_cluster(&client, &nodes, dir, remaining);
        tokio::pin!(prepare);
        // Watch the children while the cluster is prepared, so a crash surfaces with its log.
        let result = loop {
            tokio::select! {
                result = &mut prepare => break result,
                _ = tokio::time::sleep(Duration::from_millis(200)) => check_alive(&mut spawned)?,
            }
        };
        result?;
    }
    check_alive(&mut spawned)?;
    if let Some(mesh) = &options.mesh {
        start_mesh(dir, mesh, &client, deadline).await?;
    }
    Ok(Substrate {
        state_dir: dir.clone(),
        kubeconfig,
        server,
        nodes,
        reused: false,
        boot: started.elapsed(),
        mesh: options.mesh.is_some(),
    })
}

/// Starts what the mesh adds to the control plane, unless it runs already: istiod,
/// then the mesh daemon (pod network, relays, pod runner), then the ingress gateway;
/// returns when the gateway serves on 127.0.0.1:30080.
async fn start_mesh(
    state_dir: &Path,
    binaries: &crate::mesh::MeshBinaries,
    client: &Client,
    deadline: Instant,
) -> Result<(), LocalError> {
    use crate::mesh::{self, istiod};
    mesh::check_root()?;
    let logs = state_dir.join("logs");
    let mesh_dir = mesh::mesh_dir(state_dir);
    std::fs::create_dir_all(&mesh_dir).map_err(state_err(&mesh_dir))?;
    let mut state = read_state(state_dir).ok_or_else(|| LocalError::NotRunning {
        path: state_dir.to_path_buf(),
    })?;
    if state.boutique != binaries.boutique {
        // Other workloads asked for: the pod runner starts again with them. Its pods'
        // processes die with it, and the new one starts them anew (a kubelet restarted
        // with another runtime); the objects, their addresses and the rest stay.
        stop_recorded(&mut state, state_dir, "mesh-daemon");
        // Their mesh config differs too (auto mTLS with Istio's sidecars): istiod reads it again.
        stop_recorded(&mut state, state_dir, "istiod");
        state.boutique = binaries.boutique.clone();
        write_state(state_dir, &state)?;
    }
    let alive = |state: &State, component: &str| {
        state
            .processes
            .iter()
            .any(|p| p.component == component && is_ours(p.pid, state_dir))
    };
    let mut spawned = Vec::new();
    if !alive(&state, "istiod") {
        let mesh_config = mesh_dir.join("mesh.yaml");
        super::pki::write_file(
            &mesh_config,
            &istiod::mesh_config(binaries.boutique.is_some()),
        )?;
        let args = istiod::args(&kubeconfig_path(state_dir), &mesh_config);
        spawned.push(spawn_with(
            "istiod",
            &binaries.pilot_discovery,
            &args,
            &istiod::env(),
            Some(&mesh_dir),
            &logs,
        )?);
    }
    let istiod_timeout = deadline.saturating_duration_since(Instant::now());
    loop {
        check_alive(&mut spawned)?;
        if mesh::istiod_ready().await {
            break;
        }
        if Instant::now() > deadline {
            return Err(LocalError::Timeout {
                what: "istiod /ready".into(),
                waited: istiod_timeout,
                logs: logs.clone(),
                detail: format!("\nistiod.log:\n{}", log_tail(&logs.join("istiod.log"), 10)),
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if !alive(&state, "mesh-daemon") {
        let exe = binaries.cdcheck.clone();
        let mut args = vec![
            "mesh-daemon".to_string(),
            format!("--state-dir={}", state_dir.display()),
            format!("--envoy={}", binaries.envoy.display()),
            format!("--pilot-agent={}", binaries.pilot_agent.display()),
        ];
        if let Some(boutique) = &binaries.boutique {
            // Upstream's services run as a cluster runs them: with Istio's sidecar.
            args.push(format!("--boutique={}", boutique.display()));
            args.push("--sidecars".into());
        }
        spawned.push(spawn_with("mesh-daemon", &exe, &args, &[], None, &logs)?);
    }
    for s in &spawned {
        state.processes.push(Process {
            component: s.component.to_string(),
            pid: s.child.id() as i32,
        });
    }
    write_state(state_dir, &state)?;
    let gateway = mesh::start_gateway(
        client,
        deadline.saturating_duration_since(Instant::now()),
        &logs,
    );
    tokio::pin!(gateway);
    loop {
        tokio::select! {
            result = &mut gateway => return result.map_err(LocalError::from),
            _ = tokio::time::sleep(Duration::from_millis(200)) => check_alive(&mut spawned)?,
        }
    }
}

/// The kwok stages of a mesh substrate: those that act on nodes only (pods are the
/// runner's), with the nodes' kubelet port the mesh daemon's. kwok's `--node-port` would
/// say the same but also make kwok serve on that port itself.
fn mesh_node_stages(stages: &str) -> String {
    stages
        .split("\n---\n")
        .filter(|doc| !doc.contains("kind: Pod"))
        .collect::<Vec<_>>()
        .join("\n---\n")
        .replace(
            "{{ with NodePort }}",
            &format!("{{{{ with {} }}}}", crate::mesh::kubelet::KUBELET_PORT),
        )
}

/// A scheduler that packs pods instead of spreading them, so where replicas land
/// follows the manifests alone: `NodeResourcesFit` scores the fullest node best
/// (`MostAllocated`), no default topology spread constraints are added to pods,
/// and `NodeResourcesBalancedAllocation` (which favours emptier nodes too) is off.
/// A preferred pod anti-affinity (the `InterPodAffinity` score, weight 2) still
/// outweighs packing (weight 1): both are normalised to 0..100 per node.
fn scheduler_config_yaml(kubeconfig: &Path) -> String {
    format!(
        "apiVersion: kubescheduler.config.k8s.io/v1
kind: KubeSchedulerConfiguration
clientConnection:
  kubeconfig: {kubeconfig}
  qps: 200
  burst: 400
leaderElection:
  leaderElect: false
profiles:
- schedulerName: default-scheduler
  plugins:
    score:
      disabled:
      - name: NodeResourcesBalancedAllocation
  pluginConfig:
  - name: NodeResourcesFit
    args:
      scoringStrategy:
        type: MostAllocated
        resources:
        - name: cpu
          weight: 1
        - name: memory
          weight: 1
  - name: PodTopologySpread
    args:
      defaultingType: List
      defaultConstraints: []
",
        kubeconfig = serde_json::Value::String(kubeconfig.display().to_string()),
    )
}

/// Allocatable resources of a fake node. Small enough that a 100m pod moves a
/// node's `MostAllocated` score (an integer percentage) by more than half a
/// point, so packing rarely ties; large enough for about ten Online Boutique
/// environments at once (one requests 2.8 CPUs and 2.2 GiB) on the two nodes
/// a drain leaves schedulable.
const NODE_CPU: &str = "16";
const NODE_MEMORY: &str = "64Gi";

fn node_json(name: &str, zone: &str) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": { KWOK_NODE_ANNOTATION: KWOK_NODE_VALUE, "node.alpha.kubernetes.io/ttl": "0" },
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "type": "kwok",
                ZONE_LABEL: zone,
                "topology.kubernetes.io/region": "local",
            }
        },
        "status": {
            "allocatable": { "cpu": NODE_CPU, "memory": NODE_MEMORY, "pods": "110" },
            "capacity": { "cpu": NODE_CPU, "memory": NODE_MEMORY, "pods": "110" }
        }
    })
}

fn is_node_ready(node: Option<&Node>) -> bool {
    node.and_then(|n| n.status.as_ref())
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn kube_err(what: impl Into<String>) -> impl FnOnce(::kube::Error) -> LocalError {
    let what = what.into();
    move |source| LocalError::Kube { what, source }
}

/// Creates the nodes and `istio-system`, installs the Istio CRDs, and waits for
/// Ready nodes (kwok is up) and Established CRDs. Idempotent. It does not wait
/// for the controller-manager (about 5 s to start its controllers): a rollout
/// wait covers that, and a crash of it during boot is still reported.
async fn prepare_cluster(
    client: &Client,
    nodes: &[String],
    state_dir: &Path,
    timeout: Duration,
) -> Result<(), LocalError> {
    let started = Instant::now();
    let node_api: Api<Node> = Api::all(client.clone());
    let params = PatchParams::apply(FIELD_MANAGER).force();
    for (i, name) in nodes.iter().enumerate() {
        let node = node_json(name, ZONES[i % ZONES.len()]);
        node_api
            .patch(name, &params, &Patch::Apply(&node))
            .await
            .map_err(kube_err(format!("create node {name}")))?;
    }
    let ns_api: Api<Namespace> = Api::all(client.clone());
    let ns = serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "istio-system"}});
    ns_api
        .patch("istio-system", &params, &Patch::Apply(&ns))
        .await
        .map_err(kube_err("create namespace istio-system"))?;
    // CRDs become Established while kwok readies the nodes and the controller-manager starts.
    let crds = async {
        istio_crds::install(client, timeout)
            .await
            .map(|_| ())
            .map_err(LocalError::from)
    };
    let logs = state_dir.join("logs");
    let ready = async {
        let each = nodes
            .iter()
            .map(|name| await_condition(node_api.clone(), name, is_node_ready));
        match tokio::time::timeout(timeout, futures::future::try_join_all(each)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(source)) => Err(LocalError::WatchNodes { source }),
            Err(_) => {
                let ready: BTreeMap<String, bool> = node_api
                    .list(&ListParams::default().labels("type=kwok"))
                    .await
                    .map(|list| {
                        list.items
                            .iter()
                            .map(|n| (n.name_any(), is_node_ready(Some(n))))
                            .collect()
                    })
                    .unwrap_or_default();
                Err(LocalError::Timeout {
                    what: "Ready nodes".into(),
                    waited: started.elapsed(),
                    logs: logs.clone(),
                    detail: format!(" (nodes ready: {ready:?})"),
                })
            }
        }
    };
    tokio::try_join!(crds, ready).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_are_spread_over_three_zones() {
        let names = node_names(4);
        assert_eq!(names, ["node-1", "node-2", "node-3", "node-4"]);
        let zones: Vec<String> = names
            .iter()
            .enumerate()
            .map(|(i, n)| {
                node_json(n, ZONES[i % 3])["metadata"]["labels"][ZONE_LABEL]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert_eq!(zones, ["a", "b", "c", "a"]);
    }

    #[test]
    fn mesh_nodes_name_the_mesh_daemon_as_their_kubelet_and_have_no_pod_stages() {
        let text = mesh_node_stages(KWOK_STAGES);
        let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&text).unwrap();
        assert!(
            docs.iter()
                .all(|d| d["spec"]["resourceRef"]["kind"] == "Node")
        );
        assert!(!text.contains("NodePort"));
        let port = format!("{{{{ with {} }}}}", crate::mesh::kubelet::KUBELET_PORT);
        assert_eq!(text.matches(&port).count(), 2, "{text}");
    }

    #[test]
    fn kwok_stages_skip_never_ready_pods_in_pod_ready() {
        let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(KWOK_STAGES).unwrap();
        let names: Vec<&str> = docs
            .iter()
            .filter_map(|d| d["metadata"]["name"].as_str())
            .collect();
        for stage in [
            "node-initialize",
            "node-heartbeat-with-lease",
            "pod-ready",
            "pod-complete",
            "pod-delete",
            "pod-never-ready",
        ] {
            assert!(names.contains(&stage), "{stage} missing from {names:?}");
        }
        let ready = docs
            .iter()
            .find(|d| d["metadata"]["name"] == "pod-ready")
            .unwrap();
        let text = ready["spec"]["selector"].to_string();
        assert!(text.contains(crate::names::NEVER_READY_ANNOTATION));
    }

    #[test]
    fn the_scheduler_packs_and_adds_no_default_spreading() {
        let text = scheduler_config_yaml(Path::new("/state/pki/scheduler.kubeconfig"));
        let config: serde_json::Value = serde_saphyr::from_str(&text).unwrap();
        assert_eq!(
            config["clientConnection"]["kubeconfig"],
            "/state/pki/scheduler.kubeconfig"
        );
        let profile = &config["profiles"][0];
        let args = |name: &str| {
            profile["pluginConfig"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["name"] == name)
                .unwrap()["args"]
                .clone()
        };
        assert_eq!(
            args("NodeResourcesFit")["scoringStrategy"]["type"],
            "MostAllocated"
        );
        let spread = args("PodTopologySpread");
        assert_eq!(spread["defaultingType"], "List");
        assert_eq!(spread["defaultConstraints"], serde_json::json!([]));
        assert_eq!(
            profile["plugins"]["score"]["disabled"][0]["name"],
            "NodeResourcesBalancedAllocation"
        );
    }

    #[test]
    fn only_the_substrates_own_programs_are_components() {
        let line = |args: &[&str]| args.join("\0").into_bytes();
        assert!(is_component(&line(&["/cache/etcd", "--data-dir=/s/etcd"])));
        assert!(is_component(&line(&[
            "/x/cdcheck",
            "mesh-daemon",
            "--state-dir=/s"
        ])));
        assert!(is_component(&line(&[
            "/x/envoy",
            "-c",
            "/s/mesh/pods/p/e.json"
        ])));
        assert!(!is_component(&line(&[
            "/x/cdcheck",
            "run",
            "--state-dir",
            "/s"
        ])));
        assert!(!is_component(&line(&[
            "/x/cdcheck",
            "up",
            "--state-dir",
            "/s"
        ])));
    }

    #[test]
    fn a_pid_that_does_not_mention_the_state_dir_is_not_ours() {
        let me = std::process::id() as i32;
        assert!(!is_ours(me, Path::new("/nonexistent/cdcheck-state-xyz")));
        assert!(!is_ours(0, Path::new("/")));
    }
}
