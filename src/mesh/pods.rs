//! The pod runner: the part of the kubelet that rollouts depend on, for every pod
//! bound to the local substrate's nodes. Each pod gets an address in the mesh's
//! namespace and one process per container (a stand-in workload, or Envoy for an
//! Istio proxy); it is Ready only while its own readiness probe passes against that
//! process; on deletion the preStop hook runs, then SIGTERM, then SIGKILL at the end
//! of the grace period, and only then is the object let go.
//!
//! A container whose image is cdcheck's agent runs `cdcheck agent`; a pod Istio would
//! inject gets Istio's sidecar when the runner has pilot-agent ([`super::sidecar`]), else a
//! pod that asks by label gets a bare Envoy ([`super::inject`]); a container that exits is restarted or
//! not as the pod's `restartPolicy` says, and a pod whose app containers all ended for
//! good is Succeeded or Failed. Containers' output goes to files that the kubelet API
//! ([`super::kubelet`]) serves as the pod log.

use std::collections::{BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Container, Namespace, Pod, ServiceAccount};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use tokio::process::Command;
use tokio::sync::{mpsc, watch};

use super::inject::{self, ProxyConfig};
use super::kubelet::ContainerLogs;
use super::netns::{self, Dialer};
use super::probe::{self, Timing};
use super::proxy::{self, ProxyKind, ProxyPod};
use super::sidecar::{self, SidecarBinaries};

/// What the runner needs from the mesh.
#[derive(Clone, Debug)]
pub struct RunnerConfig {
    /// Per-pod files (logs, proxy bootstraps) go under `<mesh_dir>/pods/`.
    pub mesh_dir: PathBuf,
    pub netns: String,
    /// This executable, for `cdcheck standin`.
    pub cdcheck: PathBuf,
    pub envoy: PathBuf,
    pub istio_version: String,
    /// Unix socket relayed to istiod's secure xDS port.
    pub xds_socket: PathBuf,
    /// istiod's root certificate.
    pub root_cert: PathBuf,
    /// Where each container's output is, for the kubelet API's logs.
    pub logs: Arc<ContainerLogs>,
    /// The Services' names and addresses, for each pod's `/etc/hosts`.
    pub names: watch::Receiver<super::services::ServiceNames>,
    /// Online Boutique's services built from upstream's sources, run for their images
    /// instead of stand-ins (`<dir>/<service>/run`); `None`: stand-ins for every image.
    pub boutique: Option<PathBuf>,
    /// Istio's pilot-agent, which runs the ingress gateway and every Istio sidecar.
    pub istio_agent: SidecarBinaries,
    /// Istio's sidecar on every pod Istio would inject; else the bare Envoy of
    /// [`super::inject`] for pods that ask by label.
    pub sidecars: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    #[error("watch the pods")]
    Watch(#[source] watcher::Error),
    #[error("prepare the pod network")]
    Netns(#[from] netns::NetnsError),
}

/// The node address every pod reports as its host (kwok's `--node-ip`).
const HOST_IP: &str = "10.89.0.1";
/// Image tag of an Istio proxy container.
const PROXY_IMAGE_MARK: &str = "/proxyv2";

struct Shared {
    client: Client,
    config: RunnerConfig,
    dialer: Dialer,
    netns: std::fs::File,
    addresses: Mutex<BTreeSet<Ipv4Addr>>,
}

/// Where a pod's processes run: the node's namespace (the ingress gateway, whose listeners
/// the host's relays reach at the node's address, and `hostNetwork` pods), or namespaces of
/// the pod's own.
enum Sandbox {
    /// The node's network; the gateway also gets its own `/etc` files there (istiod's name).
    Node { view: Option<netns::PodView> },
    Pod {
        network: netns::PodNetwork,
        view: netns::PodView,
        /// Rewrites the pod's `/etc/hosts` when Services come and go.
        hosts: tokio::task::JoinHandle<()>,
    },
}

impl Sandbox {
    /// Makes the pod's place: its namespaces and `/etc` files, or its address on the node.
    async fn create(
        shared: &Shared,
        pod: &Pod,
        ip: Ipv4Addr,
        pod_dir: &std::path::Path,
    ) -> Result<Sandbox, String> {
        let node = shared.config.netns.clone();
        let mut names = shared.config.names.clone();
        let hostname = pod_hostname(pod);
        let namespace = pod.namespace().unwrap_or_default();
        if in_node_network(pod) {
            let view = if pod.spec.as_ref().and_then(|s| s.host_network) == Some(true) {
                None
            } else {
                let hosts_text = names
                    .borrow_and_update()
                    .hosts_file(&namespace, &hostname, ip);
                Some(
                    write_pod_view(pod, &hostname, &hosts_text, pod_dir)
                        .map_err(|e| format!("write the pod's /etc files: {e}"))?,
                )
            };
            return tokio::task::spawn_blocking(move || netns::add_node_address(&node, ip))
                .await
                .map_err(|e| e.to_string())?
                .map(|()| Sandbox::Node { view })
                .map_err(|e| crate::error_chain(&e));
        }
        let hosts_text = names
            .borrow_and_update()
            .hosts_file(&namespace, &hostname, ip);
        let view = write_pod_view(pod, &hostname, &hosts_text, pod_dir)
            .map_err(|e| format!("write the pod's /etc files: {e}"))?;
        let network = tokio::task::spawn_blocking(move || netns::PodNetwork::create(&node, ip))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| crate::error_chain(&e))?;
        let hosts_path = pod_etc(pod_dir).join("hosts");
        let hosts = tokio::spawn(async move {
            // In place (truncate and write): a bind mount holds the file's inode.
            while names.changed().await.is_ok() {
                let text = names
                    .borrow_and_update()
                    .hosts_file(&namespace, &hostname, ip);
                if let Err(e) = std::fs::write(&hosts_path, text) {
                    tracing::warn!("failed to write {}: {e}", hosts_path.display());
                }
            }
        });
        Ok(Sandbox::Pod {
            network,
            view,
            hosts,
        })
    }

    fn enter(&self, shared: &Shared, command: &mut Command) {
        match self {
            Sandbox::Node { view: None } => netns::run_inside(command, &shared.netns),
            Sandbox::Node { view: Some(view) } => netns::run_in_pod(command, &shared.netns, view),
            Sandbox::Pod { network, view, .. } => netns::run_in_pod(command, network.file(), view),
        }
    }

    async fn remove(self, shared: &Shared, ip: Ipv4Addr) {
        let node = shared.config.netns.clone();
        if let Sandbox::Pod { hosts, .. } = &self {
            hosts.abort();
        }
        let _ = tokio::task::spawn_blocking(move || match self {
            Sandbox::Node { .. } => netns::remove_node_address(&node, ip),
            Sandbox::Pod { network, .. } => network.delete(),
        })
        .await;
    }
}

/// Where a pod's own `/etc` files are: `<pod dir>/etc/`.
fn pod_etc(pod_dir: &std::path::Path) -> PathBuf {
    pod_dir.join("etc")
}

/// The pod's hostname: `spec.hostname`, else its name, as the kubelet sets it.
fn pod_hostname(pod: &Pod) -> String {
    pod.spec
        .as_ref()
        .and_then(|s| s.hostname.clone())
        .unwrap_or_else(|| pod.name_any())
}

/// Whether the pod shares the node's network: `hostNetwork`, or an Istio gateway (its
/// Service's node ports are the host's relays into the node's namespace).
fn in_node_network(pod: &Pod) -> bool {
    let Some(spec) = pod.spec.as_ref() else {
        return false;
    };
    spec.host_network == Some(true)
        || spec.containers.iter().any(|c| {
            c.image
                .as_deref()
                .is_some_and(|i| i.contains(PROXY_IMAGE_MARK))
                && ProxyKind::from_args(c.args.as_deref().unwrap_or_default()) == ProxyKind::Router
        })
}

/// The pod's `/etc/hosts` (its own name, as the kubelet writes it), `resolv.conf` (the
/// cluster's search path; no name server answers, so an unknown name fails at once) and
/// `nsswitch.conf` (files, then DNS), under `<pod dir>/etc/`.
fn write_pod_view(
    pod: &Pod,
    hostname: &str,
    hosts: &str,
    pod_dir: &std::path::Path,
) -> std::io::Result<netns::PodView> {
    let namespace = pod.namespace().unwrap_or_default();
    let etc = pod_etc(pod_dir);
    std::fs::create_dir_all(&etc)?;
    let files = [
        ("hosts", hosts.to_string()),
        (
            "resolv.conf",
            format!(
                "search {namespace}.svc.cluster.local svc.cluster.local cluster.local\nnameserver 127.0.0.1\noptions ndots:5\n"
            ),
        ),
        ("nsswitch.conf", "hosts: files dns\n".to_string()),
    ];
    let mut binds = Vec::new();
    for (file, text) in files {
        let path = etc.join(file);
        std::fs::write(&path, text)?;
        binds.push((path, std::path::Path::new("/etc").join(file)));
    }
    Ok(netns::PodView {
        hostname: hostname.to_string(),
        binds,
    })
}

impl Shared {
    /// The pod's address: the one it already reports (a restarted runner), else the
    /// next free one from 10.244.1.1 (10.244.0.0/24 is the namespace's own).
    fn address_for(&self, pod: &Pod) -> Ipv4Addr {
        let mut used = self.addresses.lock().expect("address pool lock");
        if let Some(ip) = pod
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.as_deref())
            .and_then(|ip| ip.parse::<Ipv4Addr>().ok())
            .filter(|ip| ip.octets()[..2] == [10, 244] && !used.contains(ip))
        {
            used.insert(ip);
            return ip;
        }
        let first = u32::from(Ipv4Addr::new(10, 244, 1, 1));
        let last = u32::from(Ipv4Addr::new(10, 244, 255, 254));
        let ip = (first..=last)
            .map(Ipv4Addr::from)
            .find(|ip| !matches!(ip.octets()[3], 0 | 255) && !used.contains(ip))
            .expect("the pod range holds 65,000 addresses");
        used.insert(ip);
        ip
    }

    fn release(&self, ip: Ipv4Addr) {
        self.addresses
            .lock()
            .expect("address pool lock")
            .remove(&ip);
    }
}

/// Runs every pod bound to a node until the watch fails.
pub async fn run(client: Client, config: RunnerConfig) -> Result<(), RunnerError> {
    let dialer = Dialer::new(&config.netns)?;
    let netns = netns::open(&config.netns)?;
    let shared = Arc::new(Shared {
        client: client.clone(),
        config,
        dialer,
        netns,
        addresses: Mutex::new(BTreeSet::new()),
    });
    let pods: Api<Pod> = Api::all(client);
    let mut running: HashMap<String, watch::Sender<Pod>> = HashMap::new();
    let stream = watcher(pods, watcher::Config::default().fields("spec.nodeName!="));
    futures::pin_mut!(stream);
    while let Some(event) = stream.next().await {
        let event = match event {
            Ok(event) => event,
            Err(e) => {
                tracing::warn!("pod watch: {e}");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        match event {
            watcher::Event::Apply(pod) | watcher::Event::InitApply(pod) => {
                let uid = pod.uid().unwrap_or_default();
                running.retain(|_, tx| !tx.is_closed());
                if let Some(tx) = running.get(&uid) {
                    let _ = tx.send(pod);
                } else if !is_finished(&pod) {
                    let (tx, rx) = watch::channel(pod);
                    running.insert(uid, tx);
                    tokio::spawn(run_pod(shared.clone(), rx));
                }
            }
            watcher::Event::Delete(pod) => {
                // Gone from the API (force-deleted, or let go by us): stop at once.
                running.remove(&pod.uid().unwrap_or_default());
            }
            watcher::Event::Init | watcher::Event::InitDone => {}
        }
    }
    Ok(())
}

fn is_finished(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

/// One container's process and what the pod's status says of it.
struct ContainerRun {
    spec: Container,
    /// The live process, to signal; `None` once it exited.
    pid: Option<u32>,
    /// Owns the process (killed when dropped) and reports its exit.
    waiter: Option<tokio::task::JoinHandle<()>>,
    ready: bool,
    restarts: i32,
    started_at: String,
    waiting: Option<(String, String)>,
    /// Ended for good (the restart policy says so): exit code, reason, when.
    terminated: Option<(i32, String, String)>,
    /// The injected sidecar: not in the pod's spec, so not in its status either.
    injected: bool,
}

fn now() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

/// Event from a container's probe or process to its pod's task.
enum ContainerEvent {
    Readiness {
        index: usize,
        ready: bool,
    },
    Exited {
        index: usize,
        code: i32,
        status: String,
    },
}

/// Whether a container that exited with `code` starts again under the pod's restart policy.
fn restarts_after(pod: &Pod, code: i32) -> bool {
    match pod.spec.as_ref().and_then(|s| s.restart_policy.as_deref()) {
        Some("Never") => false,
        Some("OnFailure") => code != 0,
        _ => true,
    }
}

async fn run_pod(shared: Arc<Shared>, mut updates: watch::Receiver<Pod>) {
    let pod = updates.borrow().clone();
    let name = pod.name_any();
    let namespace = pod.namespace().unwrap_or_default();
    let ip = shared.address_for(&pod);
    let pod_dir = shared.config.mesh_dir.join("pods").join(format!(
        "{namespace}_{name}_{}",
        pod.uid().unwrap_or_default()
    ));
    let _ = std::fs::create_dir_all(&pod_dir);
    let api: Api<Pod> = Api::namespaced(shared.client.clone(), &namespace);
    let sandbox = match Sandbox::create(&shared, &pod, ip, &pod_dir).await {
        Ok(sandbox) => sandbox,
        Err(why) => {
            // The pod stays Pending, as a kubelet's does when its sandbox cannot be made.
            tracing::warn!("pod {namespace}/{name}: failed to create its sandbox: {why}");
            shared.release(ip);
            return;
        }
    };
    let started = now();
    let (events_tx, mut events) = mpsc::channel::<ContainerEvent>(64);
    let mut containers: Vec<(Container, bool)> = pod
        .spec
        .as_ref()
        .map(|s| s.containers.iter().map(|c| (c.clone(), false)).collect())
        .unwrap_or_default();
    let istio_sidecar = shared.config.sidecars
        && sidecar::injects(&pod, &namespace_labels(&shared.client, &namespace).await);
    let injected = istio_sidecar || (!shared.config.sidecars && inject::wants_sidecar(&pod));
    let mut init_failed = None;
    if istio_sidecar {
        // What the injector's mutation adds to the pod object: istiod reads the endpoints'
        // tlsMode from it.
        let labels = sidecar::injected_labels(&pod);
        if !labels.is_empty() {
            let patch = serde_json::json!({ "metadata": { "labels": labels } });
            if let Err(e) = api
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                tracing::warn!("pod {namespace}/{name}: label it as injected: {e}");
            }
        }
        // The apps as the injector leaves them: probes through pilot-agent's status port.
        containers = sidecar::rewrite_probes(&pod)
            .0
            .into_iter()
            .map(|c| (c, false))
            .collect();
        containers.push((sidecar::container(), true));
        if let Err(why) = istio_init(&shared, &sandbox, &pod, &pod_dir).await {
            tracing::warn!("pod {namespace}/{name}: istio-init failed: {why}");
            init_failed = Some(why);
        }
    } else if injected {
        containers.push((inject::proxy_container(), true));
        // Before the proxy starts, so its first listeners already bind the pod's address.
        if let Err(e) = inject::apply_sidecar(&shared.client, &pod, ip).await {
            tracing::warn!("failed to {}", crate::error_chain(&e));
        }
    }
    let mut runs: Vec<ContainerRun> = containers
        .into_iter()
        .map(|(spec, injected)| ContainerRun {
            spec,
            pid: None,
            waiter: None,
            ready: false,
            restarts: 0,
            started_at: started.clone(),
            waiting: None,
            terminated: None,
            injected,
        })
        .collect();
    let mut probes: Vec<Option<tokio::task::JoinHandle<()>>> =
        (0..runs.len()).map(|_| None).collect();
    // Istio's sidecar is a native sidecar: its startup probe holds the apps until it is ready.
    let hold =
        istio_sidecar || (injected && ProxyConfig::of(&pod).hold_application_until_proxy_starts);
    // Proxies first: with `holdApplicationUntilProxyStarts` the app waits for its proxy.
    let mut order: Vec<usize> = (0..runs.len()).collect();
    order.sort_by_key(|&i| !runs[i].injected);
    let mut held = false;
    if let Some(why) = &init_failed {
        // A kubelet starts no container of a pod whose init container failed.
        for run in runs.iter_mut() {
            run.waiting = Some(("Init:Error".into(), why.clone()));
        }
        order.clear();
    }
    for index in order {
        if hold && !runs[index].injected && !held {
            held = true;
            let (waited, started) = if istio_sidecar {
                sidecar_started(&shared.dialer, ip).await
            } else {
                inject::wait_proxy_started(&shared.dialer, ip).await
            };
            if started {
                tracing::info!(
                    "pod {namespace}/{name}: its proxy listens on {ip} after {waited:?}; starting the app"
                );
            } else {
                tracing::warn!(
                    "pod {namespace}/{name}: its proxy has no listener on {ip} after {waited:?}; starting the app anyway"
                );
            }
        }
        start_container(
            &shared,
            &sandbox,
            &pod,
            ip,
            &pod_dir,
            index,
            &mut runs[index],
            &events_tx,
            &mut probes[index],
        )
        .await;
    }
    let phase = if init_failed.is_some() {
        "Pending"
    } else {
        "Running"
    };
    patch_status(&api, &name, ip, &started, &runs, phase).await;

    let mut restart_at: Vec<Option<tokio::time::Instant>> = vec![None; runs.len()];
    let mut finished = false;
    loop {
        let next_restart = restart_at.iter().flatten().min().copied();
        tokio::select! {
            changed = updates.changed() => {
                if changed.is_err() {
                    // The object is gone from the API: nothing to let go, stop at once.
                    kill_all(&mut runs);
                    break;
                }
                let pod = updates.borrow_and_update().clone();
                if pod.metadata.deletion_timestamp.is_some() {
                    for p in probes.iter_mut().flatten() { p.abort(); }
                    terminate(&shared, &sandbox, &pod, ip, &mut runs, &mut events, istio_sidecar).await;
                    if injected { inject::delete_sidecar(&shared.client, &pod).await; }
                    let params = DeleteParams {
                        grace_period_seconds: Some(0),
                        preconditions: Some(Preconditions { uid: pod.uid(), resource_version: None }),
                        ..Default::default()
                    };
                    if let Err(e) = api.delete(&name, &params).await {
                        tracing::debug!("let go of pod {namespace}/{name}: {e}");
                    }
                    break;
                }
            }
            Some(event) = events.recv(), if !finished => {
                match event {
                    ContainerEvent::Readiness { index, ready } => {
                        if runs[index].ready != ready {
                            runs[index].ready = ready;
                            patch_status(&api, &name, ip, &started, &runs, "Running").await;
                        }
                    }
                    ContainerEvent::Exited { index, code, status } => {
                        let pod = updates.borrow().clone();
                        let run = &mut runs[index];
                        run.pid = None;
                        run.waiter = None;
                        run.ready = false;
                        if let Some(p) = probes[index].take() { p.abort(); }
                        // An injected proxy is restarted while its app runs, as a native sidecar is.
                        if run.injected || restarts_after(&pod, code) {
                            let backoff = Duration::from_secs(1u64 << run.restarts.clamp(0, 3) as u64);
                            run.waiting = Some(("CrashLoopBackOff".into(), format!("exited with {status}; back-off {backoff:?} restarting")));
                            run.restarts += 1;
                            restart_at[index] = Some(tokio::time::Instant::now() + backoff);
                        } else {
                            let reason = if code == 0 { "Completed" } else { "Error" };
                            run.terminated = Some((code, reason.to_string(), now()));
                        }
                        let apps_done = runs.iter().filter(|r| !r.injected).all(|r| r.terminated.is_some());
                        if apps_done {
                            // The pod is over: its sidecar goes (it has nothing left to serve),
                            // and the object stays, Succeeded or Failed, until it is deleted.
                            finished = true;
                            for p in probes.iter_mut().flatten() { p.abort(); }
                            restart_at.iter_mut().for_each(|r| *r = None);
                            kill_all(&mut runs);
                            for run in runs.iter_mut().filter(|r| r.injected) {
                                shared.config.logs.exited(&namespace, &name, &pod.uid().unwrap_or_default(), &run.spec.name);
                                run.waiting = None;
                                run.terminated = Some((0, "Completed".into(), now()));
                            }
                            if injected { inject::delete_sidecar(&shared.client, &pod).await; }
                            let failed = runs.iter().any(|r| r.terminated.as_ref().is_some_and(|t| t.0 != 0));
                            let phase = if failed { "Failed" } else { "Succeeded" };
                            patch_status(&api, &name, ip, &started, &runs, phase).await;
                        } else {
                            patch_status(&api, &name, ip, &started, &runs, "Running").await;
                        }
                    }
                }
            }
            _ = async { match next_restart { Some(at) => tokio::time::sleep_until(at).await, None => std::future::pending().await } } => {
                let now_instant = tokio::time::Instant::now();
                for index in 0..runs.len() {
                    if restart_at[index].is_some_and(|at| at <= now_instant) {
                        restart_at[index] = None;
                        let pod = updates.borrow().clone();
                        start_container(&shared, &sandbox, &pod, ip, &pod_dir, index, &mut runs[index], &events_tx, &mut probes[index]).await;
                    }
                }
                patch_status(&api, &name, ip, &started, &runs, "Running").await;
            }
        }
    }
    for p in probes.iter_mut().flatten() {
        p.abort();
    }
    kill_all(&mut runs);
    shared
        .config
        .logs
        .forget(&namespace, &name, &pod.uid().unwrap_or_default());
    sandbox.remove(&shared, ip).await;
    shared.release(ip);
}

#[allow(clippy::too_many_arguments)]
async fn start_container(
    shared: &Arc<Shared>,
    sandbox: &Sandbox,
    pod: &Pod,
    ip: Ipv4Addr,
    pod_dir: &std::path::Path,
    index: usize,
    run: &mut ContainerRun,
    events: &mpsc::Sender<ContainerEvent>,
    probe_task: &mut Option<tokio::task::JoinHandle<()>>,
) {
    let command = match command_for(shared, pod, ip, pod_dir, &run.spec, run.injected).await {
        Ok(command) => command,
        Err(why) => {
            run.waiting = Some(("CreateContainerError".into(), why));
            return;
        }
    };
    let mut command = command;
    let log = pod_dir.join(format!("{}.log", run.spec.name));
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log);
    if let Ok(out) = out
        && let Ok(err) = out.try_clone()
    {
        command.stdout(out).stderr(err);
    }
    // Its own process group: a kill reaches what it started too (pilot-agent's Envoy), as a
    // container's end does.
    command
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .process_group(0);
    sandbox.enter(shared, &mut command);
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            run.waiting = Some(("CreateContainerError".into(), e.to_string()));
            return;
        }
    };
    run.started_at = now();
    run.waiting = None;
    run.pid = child.id();
    let logs = shared.config.logs.clone();
    let (namespace, name, uid) = (
        pod.namespace().unwrap_or_default(),
        pod.name_any(),
        pod.uid().unwrap_or_default(),
    );
    let container = run.spec.name.clone();
    logs.started(&namespace, &name, &uid, &container, log);
    let exited = events.clone();
    run.waiter = Some(tokio::spawn(async move {
        let status = child.wait().await;
        // Before the pod's task hears of it: a log follower ends with the process.
        logs.exited(&namespace, &name, &uid, &container);
        let (code, status) = match status {
            Ok(s) => {
                use std::os::unix::process::ExitStatusExt;
                let code = s.code().or(s.signal().map(|n| 128 + n)).unwrap_or(-1);
                (code, s.to_string())
            }
            Err(e) => (-1, e.to_string()),
        };
        let _ = exited
            .send(ContainerEvent::Exited {
                index,
                code,
                status,
            })
            .await;
    }));
    *probe_task = Some(tokio::spawn(readiness_loop(
        shared.clone(),
        ip,
        run.spec.clone(),
        index,
        events.clone(),
    )));
}

/// The namespace's labels (Istio's injection follows them); none when it cannot be read.
async fn namespace_labels(
    client: &Client,
    namespace: &str,
) -> std::collections::BTreeMap<String, String> {
    let api: Api<Namespace> = Api::all(client.clone());
    match api.get_opt(namespace).await {
        Ok(Some(ns)) => ns.labels().clone(),
        Ok(None) => Default::default(),
        Err(e) => {
            tracing::warn!("read namespace {namespace} for sidecar injection: {e}");
            Default::default()
        }
    }
}

/// `istio-init`: `pilot-agent istio-iptables` in the pod's namespaces, before any
/// container, with its output in `<pod dir>/istio-init.log`.
async fn istio_init(
    shared: &Shared,
    sandbox: &Sandbox,
    pod: &Pod,
    pod_dir: &std::path::Path,
) -> Result<(), String> {
    let binaries = &shared.config.istio_agent;
    let log = pod_dir.join("istio-init.log");
    let out = std::fs::File::create(&log).map_err(|e| format!("create {}: {e}", log.display()))?;
    let err = out.try_clone().map_err(|e| e.to_string())?;
    let mut command = Command::new(&binaries.pilot_agent);
    command
        .arg("istio-iptables")
        .args(sidecar::iptables_args(pod))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .stdin(std::process::Stdio::null())
        .stdout(out)
        .stderr(err);
    sandbox.enter(shared, &mut command);
    let status = command
        .status()
        .await
        .map_err(|e| format!("run {}: {e}", binaries.pilot_agent.display()))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!(
            "istio-iptables exited with {status} (its output: {})",
            log.display()
        ))
    }
}

/// Waits for Istio's sidecar to be ready (`/healthz/ready` on 15021: Envoy has its
/// certificate and first configuration), as its startup probe holds a native sidecar's
/// apps. Gives up after a minute, and the apps start anyway.
async fn sidecar_started(dialer: &Dialer, ip: Ipv4Addr) -> (Duration, bool) {
    let started = std::time::Instant::now();
    let addr = std::net::SocketAddr::from((ip, sidecar::READY_PORT));
    while started.elapsed() < Duration::from_secs(60) {
        if matches!(
            probe::get(dialer, addr, "/healthz/ready", std::iter::empty(), false).await,
            Ok((200, _))
        ) {
            return (started.elapsed(), true);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (started.elapsed(), false)
}

/// The command of a container: Envoy for an Istio proxy, else `cdcheck standin`.
async fn command_for(
    shared: &Shared,
    pod: &Pod,
    ip: Ipv4Addr,
    pod_dir: &std::path::Path,
    container: &Container,
    injected: bool,
) -> Result<Command, String> {
    let image = container.image.clone().unwrap_or_default();
    let name = pod.name_any();
    let namespace = pod.namespace().unwrap_or_default();
    let binaries = &shared.config.istio_agent;
    let router = image.contains(PROXY_IMAGE_MARK)
        && ProxyKind::from_args(container.args.as_deref().unwrap_or_default()) == ProxyKind::Router;
    if (injected && shared.config.sidecars) || router {
        // Istio's sidecar or the gateway: pilot-agent in the pod's proxy root, as uid 0 and
        // gid 1337 (the group istio-iptables lets through; uid 1337 could not run Envoy from
        // root's home).
        let token = token_for(&shared.client, pod, &sidecar::service_account(pod)).await?;
        let root = pod_dir.join("proxy");
        sidecar::write_proxy_root(
            &root,
            &binaries.bootstrap_template,
            &token,
            &shared.config.root_cert,
            pod,
        )
        .map_err(|e| format!("write the proxy's files under {}: {e}", root.display()))?;
        let kind = if router {
            ProxyKind::Router
        } else {
            ProxyKind::Sidecar
        };
        let mut command = Command::new(&binaries.pilot_agent);
        command
            .args(sidecar::proxy_args(pod, kind))
            .current_dir(&root)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(sidecar::proxy_env(pod, ip, HOST_IP, &binaries.envoy, kind))
            .gid(sidecar::PROXY_GID);
        return Ok(command);
    }
    if image.contains(PROXY_IMAGE_MARK) {
        let args = container.args.clone().unwrap_or_default();
        let kind = ProxyKind::from_args(&args);
        let service_account = sidecar::service_account(pod);
        let token = token_for(&shared.client, pod, &service_account).await?;
        let labels = pod.labels().clone();
        let workload = labels
            .get("app")
            .cloned()
            .unwrap_or_else(|| name.rsplitn(3, '-').last().unwrap_or(&name).to_string());
        let static_labels = if injected {
            std::collections::BTreeMap::from([(
                crate::names::SIDECAR_FOR_LABEL.to_string(),
                pod.uid().unwrap_or_default(),
            )])
        } else {
            Default::default()
        };
        let proxy_config = ProxyConfig::of(pod);
        let bootstrap = proxy::bootstrap(
            &ProxyPod {
                kind,
                name: &name,
                namespace: &namespace,
                ip,
                labels: &labels,
                service_account: &service_account,
                workload: &workload,
                static_labels,
                stats: Some(&proxy_config.proxy_stats_matcher),
            },
            &shared.config.istio_version,
            &shared.config.xds_socket,
            &shared.config.root_cert,
            &token,
        );
        let path = pod_dir.join(format!("{}-envoy.json", container.name));
        write_private(
            &path,
            &serde_json::to_string_pretty(&bootstrap).unwrap_or_default(),
        )
        .map_err(|e| format!("write {}: {e}", path.display()))?;
        let mut command = Command::new(&shared.config.envoy);
        command
            .arg("-c")
            .arg(&path)
            .args([
                "--use-dynamic-base-id",
                "--log-level",
                "warn",
                "--drain-time-s",
                "1",
            ])
            .args([
                "--concurrency",
                if kind == ProxyKind::Router { "2" } else { "1" },
            ])
            .env_clear();
        return Ok(command);
    }
    if image.contains(crate::agent::pod::IMAGE_MARK) {
        // The image's entrypoint is `cdcheck agent`; with no iptables, its requests go to
        // the sidecar's listeners on the pod's own address, and it reads the sidecar's
        // stats on the admin port there.
        let mut command = Command::new(&shared.config.cdcheck);
        command
            .arg("agent")
            .args(container.args.iter().flatten())
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default());
        for (key, value) in env_of(pod, ip, container) {
            command.env(key, value);
        }
        if shared.config.sidecars {
            // Istio's sidecar captures its requests and serves its stats on 127.0.0.1, as
            // on a cluster: the agent's defaults.
            return Ok(command);
        }
        use crate::settings::env;
        command
            .env(env::AGENT_VIA, ip.to_string())
            .env(
                env::AGENT_STATS_URL,
                format!("http://{ip}:{}/stats/prometheus", proxy::ADMIN_PORT),
            )
            .env(
                env::AGENT_HOSTS_URL,
                format!("http://{ip}:{}/clusters?format=json", proxy::ADMIN_PORT),
            );
        return Ok(command);
    }
    if let Some(mut command) = upstream_command(&shared.config, &image, container) {
        command.env_clear();
        command.env("PATH", std::env::var_os("PATH").unwrap_or_default());
        for (key, value) in env_of(pod, ip, container) {
            command.env(key, value);
        }
        return Ok(command);
    }
    let mut command = Command::new(&shared.config.cdcheck);
    command
        .arg("standin")
        .arg("--image")
        .arg(&image)
        .arg("--bind")
        .arg(ip.to_string())
        .arg("--pod-name")
        .arg(&name);
    for port in container.ports.iter().flatten() {
        if port.protocol.as_deref().unwrap_or("TCP") == "TCP" {
            command.arg("--port").arg(port.container_port.to_string());
        }
    }
    command.env_clear();
    command.env("PATH", std::env::var_os("PATH").unwrap_or_default());
    for (key, value) in env_of(pod, ip, container) {
        command.env(key, value);
    }
    Ok(command)
}

/// The process upstream's image would run for an Online Boutique container, when the mesh
/// runs upstream's services: the built service's launcher, or Redis for redis-cart. `None`
/// (a stand-in runs): stand-ins asked for, the service not built (cartservice), or the
/// broken release's tag, whose stand-in never becomes ready as a missing image would not.
fn upstream_command(config: &RunnerConfig, image: &str, container: &Container) -> Option<Command> {
    let built = config.boutique.as_ref()?;
    if crate::standin::is_broken_image(image) {
        return None;
    }
    let role = crate::standin::role_from_image(image).ok()?;
    if role == crate::standin::Role::Redis {
        let port = container
            .ports
            .iter()
            .flatten()
            .map(|p| p.container_port)
            .next()
            .unwrap_or(6379);
        let server = which("redis-server")?;
        let mut command = Command::new(server);
        // The image's defaults: no persistence beyond the pod (redis-cart mounts an
        // emptyDir), every address of the pod's own namespace.
        command.args([
            "--port",
            &port.to_string(),
            "--bind",
            "0.0.0.0",
            "--protected-mode",
            "no",
            "--save",
            "",
            "--appendonly",
            "no",
        ]);
        return Some(command);
    }
    let launcher = built.join(role.image_name()).join("run");
    launcher.is_file().then(|| Command::new(launcher))
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|path| path.is_file())
}

/// The container's environment as the kubelet would build it, for the values a stand-in
/// can use: literal values and the downward API's common fields (secret and ConfigMap
/// references are not resolved).
fn env_of(pod: &Pod, ip: Ipv4Addr, container: &Container) -> Vec<(String, String)> {
    let name = pod.name_any();
    let namespace = pod.namespace().unwrap_or_default();
    let spec = pod.spec.as_ref();
    let mut env = vec![
        ("HOSTNAME".to_string(), name.clone()),
        ("POD_NAME".to_string(), name.clone()),
        ("POD_NAMESPACE".to_string(), namespace.clone()),
        ("POD_IP".to_string(), ip.to_string()),
    ];
    for var in container.env.iter().flatten() {
        let value = if let Some(value) = &var.value {
            Some(value.clone())
        } else if let Some(field) = var.value_from.as_ref().and_then(|v| v.field_ref.as_ref()) {
            match field.field_path.as_str() {
                "metadata.name" => Some(name.clone()),
                "metadata.namespace" => Some(namespace.clone()),
                "status.podIP" => Some(ip.to_string()),
                "spec.nodeName" => spec.and_then(|s| s.node_name.clone()),
                "spec.serviceAccountName" => spec.and_then(|s| s.service_account_name.clone()),
                _ => None,
            }
        } else {
            None
        };
        if let Some(value) = value {
            env.retain(|(k, _)| k != &var.name);
            env.push((var.name.clone(), value));
        }
    }
    env
}

pub(super) fn write_private(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(text.as_bytes())
}

/// A service-account token bound to the pod, for istiod's audience (what the
/// kubelet projects into an Istio proxy's pod).
async fn token_for(client: &Client, pod: &Pod, service_account: &str) -> Result<String, String> {
    let namespace = pod.namespace().unwrap_or_default();
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), &namespace);
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            audiences: Some(vec!["istio-ca".into()]),
            expiration_seconds: Some(24 * 3600),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: Some(pod.name_any()),
                uid: pod.uid(),
            }),
        }),
        ..Default::default()
    };
    let response = api
        .create_token_request(service_account, &PostParams::default(), &request)
        .await
        .map_err(|e| {
            format!("request a token for service account {namespace}/{service_account}: {e}")
        })?;
    response.status.and_then(|s| s.token).ok_or_else(|| {
        format!("the token request for {namespace}/{service_account} returned no token")
    })
}

/// Probes the container's readiness the kubelet's way and reports each change.
async fn readiness_loop(
    shared: Arc<Shared>,
    ip: Ipv4Addr,
    container: Container,
    index: usize,
    events: mpsc::Sender<ContainerEvent>,
) {
    let Some(probe_spec) = container.readiness_probe.clone() else {
        // No readiness probe: ready once started.
        let _ = events
            .send(ContainerEvent::Readiness { index, ready: true })
            .await;
        return;
    };
    let timing = Timing::of(&probe_spec);
    tokio::time::sleep(timing.initial_delay).await;
    let (mut successes, mut failures, mut ready) = (0u32, 0u32, false);
    loop {
        let outcome = probe::attempt(&shared.dialer, ip, &container, &probe_spec).await;
        match outcome {
            Ok(()) => {
                successes += 1;
                failures = 0;
                if !ready && successes >= timing.success_threshold {
                    ready = true;
                    let _ = events
                        .send(ContainerEvent::Readiness { index, ready })
                        .await;
                }
            }
            Err(why) => {
                failures += 1;
                successes = 0;
                tracing::debug!(
                    "readiness probe of {} at {ip} failed: {why}",
                    container.name
                );
                if ready && failures >= timing.failure_threshold {
                    ready = false;
                    let _ = events
                        .send(ContainerEvent::Readiness { index, ready })
                        .await;
                }
            }
        }
        tokio::time::sleep(timing.period).await;
    }
}

fn signal(pid: Option<u32>, signal: i32) {
    if let Some(pid) = pid {
        // SAFETY: signalling a process this runner started and has not reaped yet
        // (its waiter clears the pid when it exits).
        unsafe {
            libc::kill(pid as i32, signal);
        }
    }
}

/// SIGKILL to each container's process group (the process and what it started);
/// dropping a waiter drops its process handle too, which kills the process.
fn kill_all(runs: &mut [ContainerRun]) {
    for run in runs.iter_mut() {
        if let Some(pid) = run.pid.take() {
            // SAFETY: as in `signal`; the group is the container's (process_group(0)).
            unsafe {
                libc::kill(-(pid as i32), libc::SIGKILL);
            }
        }
        if let Some(waiter) = run.waiter.take() {
            waiter.abort();
        }
    }
}

/// The kubelet's termination: preStop hooks (bounded by the grace period), SIGTERM to the
/// apps, and to an injected proxy only once they exited (a native sidecar's order: the
/// proxy serves the apps' last requests; Istio's own preStop starts its drain at once),
/// SIGKILL when the grace period ends.
async fn terminate(
    shared: &Arc<Shared>,
    sandbox: &Sandbox,
    pod: &Pod,
    ip: Ipv4Addr,
    runs: &mut [ContainerRun],
    events: &mut mpsc::Receiver<ContainerEvent>,
    istio_sidecar: bool,
) {
    let grace = pod
        .metadata
        .deletion_grace_period_seconds
        .or_else(|| {
            pod.spec
                .as_ref()
                .and_then(|s| s.termination_grace_period_seconds)
        })
        .unwrap_or(30)
        .max(0) as u64;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(grace);
    let hooks = runs
        .iter()
        .filter(|r| r.pid.is_some() && !r.injected)
        .map(|run| {
            let dialer = shared.dialer.clone();
            let container = run.spec.clone();
            async move { pre_stop(&dialer, ip, &container).await }
        });
    let drain = async {
        if istio_sidecar {
            drain_sidecar(shared, sandbox).await;
        }
    };
    let _ = tokio::time::timeout_at(
        deadline,
        futures::future::join(futures::future::join_all(hooks), drain),
    )
    .await;
    for proxies in [false, true] {
        for run in runs.iter().filter(|r| r.injected == proxies) {
            signal(run.pid, libc::SIGTERM);
        }
        while runs
            .iter()
            .any(|r| r.injected == proxies && r.pid.is_some())
        {
            match tokio::time::timeout_at(deadline, events.recv()).await {
                Ok(Some(ContainerEvent::Exited { index, .. })) => {
                    runs[index].pid = None;
                    runs[index].waiter = None;
                }
                Ok(Some(ContainerEvent::Readiness { .. })) => {}
                Ok(None) | Err(_) => break,
            }
        }
    }
    kill_all(runs);
}

/// Istio's native sidecar's preStop: `pilot-agent request POST drain` in the pod (its
/// status port takes it from the pod's own loopback only).
async fn drain_sidecar(shared: &Shared, sandbox: &Sandbox) {
    let mut command = Command::new(&shared.config.istio_agent.pilot_agent);
    command
        .args([
            "request",
            &format!("--debug-port={}", sidecar::STATUS_PORT),
            "POST",
            "drain",
        ])
        .env_clear()
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
    sandbox.enter(shared, &mut command);
    if let Err(e) = command.status().await {
        tracing::debug!("drain the sidecar: {e}");
    }
}

/// Runs a container's preStop hook: the sleep action, an HTTP GET, or an exec of
/// `sleep N` (the common drain idiom); any other exec is skipped (no container to run it in).
async fn pre_stop(dialer: &Dialer, ip: Ipv4Addr, container: &Container) {
    let Some(hook) = container
        .lifecycle
        .as_ref()
        .and_then(|l| l.pre_stop.as_ref())
    else {
        return;
    };
    if let Some(sleep) = &hook.sleep {
        tokio::time::sleep(Duration::from_secs(sleep.seconds.max(0) as u64)).await;
    } else if let Some(get) = &hook.http_get {
        let port = match &get.port {
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(n) => *n as u16,
            _ => return,
        };
        let _ = probe::http_get(
            dialer,
            std::net::SocketAddr::from((ip, port)),
            get.path.as_deref().unwrap_or("/"),
            get.http_headers
                .iter()
                .flatten()
                .map(|h| (h.name.as_str(), h.value.as_str())),
        )
        .await;
    } else if let Some(exec) = &hook.exec
        && let Some(seconds) = sleep_seconds(exec.command.as_deref().unwrap_or_default())
    {
        tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    }
}

/// `["sleep", "5"]` or `["/bin/sh", "-c", "sleep 5"]` → 5.
fn sleep_seconds(command: &[String]) -> Option<f64> {
    let words: Vec<&str> = command.iter().flat_map(|w| w.split_whitespace()).collect();
    let at = words
        .iter()
        .position(|w| *w == "sleep" || w.ends_with("/sleep"))?;
    words.get(at + 1)?.parse().ok()
}

/// Patches the pod's status from what runs: Running, its address, and Ready only
/// when every container's readiness probe passes.
async fn patch_status(
    api: &Api<Pod>,
    name: &str,
    ip: Ipv4Addr,
    started: &str,
    runs: &[ContainerRun],
    phase: &str,
) {
    let all_ready = !runs.is_empty() && runs.iter().all(|r| r.ready && r.waiting.is_none());
    let condition = |type_: &str, status: bool| serde_json::json!({ "type": type_, "status": if status { "True" } else { "False" }, "lastTransitionTime": now() });
    let statuses: Vec<serde_json::Value> = runs
        .iter()
        .filter(|r| !r.injected)
        .map(|r| {
            let state = match (&r.terminated, &r.waiting) {
                (Some((code, reason, finished)), _) => serde_json::json!({ "terminated": {
                    "exitCode": code, "reason": reason, "startedAt": r.started_at, "finishedAt": finished
                } }),
                (None, Some((reason, message))) => {
                    serde_json::json!({ "waiting": { "reason": reason, "message": message } })
                }
                (None, None) => serde_json::json!({ "running": { "startedAt": r.started_at } }),
            };
            serde_json::json!({
                "name": r.spec.name,
                "image": r.spec.image,
                "imageID": "",
                "ready": r.ready && r.waiting.is_none(),
                "started": r.waiting.is_none() && r.terminated.is_none(),
                "restartCount": r.restarts,
                "state": state,
            })
        })
        .collect();
    let status = serde_json::json!({
        "status": {
            "phase": phase,
            "hostIP": HOST_IP,
            "hostIPs": [{ "ip": HOST_IP }],
            "podIP": ip.to_string(),
            "podIPs": [{ "ip": ip.to_string() }],
            "startTime": started,
            "conditions": [
                condition("PodReadyToStartContainers", true),
                condition("Initialized", true),
                condition("Ready", all_ready),
                condition("ContainersReady", all_ready),
                condition("PodScheduled", true),
            ],
            "containerStatuses": statuses,
        }
    });
    if let Err(e) = api
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
    {
        tracing::debug!("patch the status of pod {name}: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_restart_policy_always_or_a_failure_under_on_failure_restarts_a_container() {
        let pod = |policy: Option<&str>| -> Pod {
            serde_json::from_value(serde_json::json!({
                "metadata": { "name": "p" },
                "spec": { "restartPolicy": policy, "containers": [] }
            }))
            .unwrap()
        };
        assert!(restarts_after(&pod(None), 0));
        assert!(restarts_after(&pod(Some("Always")), 0));
        assert!(!restarts_after(&pod(Some("Never")), 1));
        assert!(!restarts_after(&pod(Some("OnFailure")), 0));
        assert!(restarts_after(&pod(Some("OnFailure")), 137));
    }

    #[test]
    fn exec_sleep_hooks_are_understood() {
        let words = |s: &[&str]| s.iter().map(|w| w.to_string()).collect::<Vec<_>>();
        assert_eq!(sleep_seconds(&words(&["sleep", "5"])), Some(5.0));
        assert_eq!(
            sleep_seconds(&words(&["/bin/sh", "-c", "sleep 2.5"])),
            Some(2.5)
        );
        assert_eq!(sleep_seconds(&words(&["/bin/sh", "-c", "echo bye"])), None);
    }
}
