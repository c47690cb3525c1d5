//! The local mesh's pod network: a Linux network namespace playing the node, one
//! namespace per pod joined to it by a veth pair, processes started inside a pod's
//! namespaces, and sockets opened inside the node's namespace from outside.
//!
//! Kubernetes refuses loopback addresses in EndpointSlices, so pods need routable
//! addresses. The node namespace holds 10.244.0.1/24 on its loopback (its own address:
//! relays reach the gateway there) and a route per pod; each pod namespace holds its one
//! address on `eth0` and a default route via the node's address, as a CNI's routed veth
//! does (the node answers ARP for it since the address is its own). So every pod has its own
//! ports (upstream's services all listen on `*:PORT`), and nothing leaves the node
//! namespace: it has no route out.

use std::ffi::CString;
use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;

/// The node namespace's own address: where relays reach the gateway's listeners (which
/// bind every address), every pod's traffic to the node comes from, and never a pod's.
pub const NETNS_ADDRESS: std::net::Ipv4Addr = std::net::Ipv4Addr::new(10, 244, 0, 1);

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("run `{command}` (the local mesh needs root to create a network namespace): {stderr}")]
    Ip { command: String, stderr: String },
    #[error("run `ip` to manage the network namespace {name}")]
    Spawn {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("open the network namespace {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("enter the network namespace {name}")]
    Enter {
        name: String,
        #[source]
        source: std::io::Error,
    },
}

/// The namespace name for a substrate's state directory: stable, short, and
/// distinct per state directory so two substrates never share a pod network.
pub fn name_for(state_dir: &Path) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(state_dir.as_os_str().as_encoded_bytes());
    let hex: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
    format!("cdcheck-{hex}")
}

fn path_of(name: &str) -> PathBuf {
    Path::new("/run/netns").join(name)
}

fn ip(args: &[&str]) -> Result<(bool, String), NetnsError> {
    let output = Command::new("ip")
        .args(args)
        .output()
        .map_err(|source| NetnsError::Spawn {
            name: args.join(" "),
            source,
        })?;
    Ok((
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).trim().to_string(),
    ))
}

fn ip_ok(args: &[&str]) -> Result<(), NetnsError> {
    match ip(args)? {
        (true, _) => Ok(()),
        (false, stderr) => Err(NetnsError::Ip {
            command: format!("ip {}", args.join(" ")),
            stderr,
        }),
    }
}

/// Creates the node namespace (if absent): its own address on its loopback, the Service
/// range routed locally (so a Service address dialled from here reaches the NAT rules
/// that pick an endpoint), and forwarding on, for pods to reach each other. Idempotent.
pub fn ensure(name: &str) -> Result<PathBuf, NetnsError> {
    let path = path_of(name);
    if !path.exists() {
        ip_ok(&["netns", "add", name])?;
    }
    ip_ok(&["-n", name, "link", "set", "lo", "up"])?;
    let shown = Command::new("ip")
        .args(["-n", name, "-4", "-o", "addr", "show", "dev", "lo"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
        .unwrap_or_default();
    // A namespace made before pods had namespaces of their own held the whole range on
    // its loopback, which would shadow every pod's route.
    let old = format!("{NETNS_ADDRESS}/16");
    if shown.contains(&old) {
        ip_ok(&["-n", name, "addr", "del", &old, "dev", "lo"])?;
    }
    let address = format!("{NETNS_ADDRESS}/24");
    if !shown.contains(&address) {
        ip_ok(&["-n", name, "addr", "add", &address, "dev", "lo"])?;
    }
    ip_ok(&[
        "-n",
        name,
        "route",
        "replace",
        "local",
        crate::names::SERVICE_CIDR,
        "dev",
        "lo",
        "src",
        &NETNS_ADDRESS.to_string(),
    ])?;
    sysctl_in(name, "net.ipv4.ip_forward", "1")?;
    Ok(path)
}

/// Sets a sysctl of the namespace (network sysctls are per namespace).
fn sysctl_in(name: &str, key: &str, value: &str) -> Result<(), NetnsError> {
    ip_ok(&[
        "netns",
        "exec",
        name,
        "sysctl",
        "-qw",
        &format!("{key}={value}"),
    ])
}

/// Deletes the node namespace and every pod namespace of it; absent is fine.
pub fn delete(name: &str) -> Result<(), NetnsError> {
    delete_pod_networks(name)?;
    kill_processes_in(&path_of(name));
    if path_of(name).exists() {
        ip_ok(&["netns", "delete", name])?;
    }
    Ok(())
}

/// Deletes the pod namespaces a node namespace left behind (a runner that was killed), and
/// ends what its node-network pods left running there (the gateway's Envoy, whose
/// pilot-agent died with the runner).
pub fn delete_pod_networks(node: &str) -> Result<(), NetnsError> {
    kill_processes_in(&path_of(node));
    let prefix = format!("{node}-");
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if name.starts_with(&prefix) {
            kill_processes_in(&path_of(&name));
            ip_ok(&["netns", "delete", &name])?;
        }
    }
    Ok(())
}

/// SIGKILLs every process left in a pod's network namespace: what a container runtime's
/// cgroup kill does for a pod's containers. A process the runner did not start itself
/// outlives its parent otherwise (pilot-agent's Envoy, when pilot-agent is killed).
fn kill_processes_in(netns: &Path) {
    use std::os::unix::fs::MetadataExt;
    let Ok(target) = std::fs::metadata(netns) else {
        return;
    };
    let Ok(processes) = std::fs::read_dir("/proc") else {
        return;
    };
    for entry in processes.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let same = std::fs::metadata(entry.path().join("ns/net"))
            .is_ok_and(|m| m.dev() == target.dev() && m.ino() == target.ino());
        if same {
            // SAFETY: kill has no memory preconditions; the pid lives in the pod's namespace.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
}

/// Gives a pod that shares the node's network its address there (on the loopback, as
/// a host's own address), so its probes and endpoints reach it.
pub fn add_node_address(node: &str, address: Ipv4Addr) -> Result<(), NetnsError> {
    ip_ok(&[
        "-n",
        node,
        "addr",
        "replace",
        &format!("{address}/32"),
        "dev",
        "lo",
    ])
}

/// Takes a node-network pod's address away again; absent is fine.
pub fn remove_node_address(node: &str, address: Ipv4Addr) {
    let _ = ip(&[
        "-n",
        node,
        "addr",
        "del",
        &format!("{address}/32"),
        "dev",
        "lo",
    ]);
}

/// A pod's own network namespace, joined to the node namespace by a veth pair.
#[derive(Debug)]
pub struct PodNetwork {
    pub name: String,
    node: String,
    /// The node side of the veth pair (the pod side is `eth0`).
    veth: String,
    pub ip: Ipv4Addr,
    file: File,
}

impl PodNetwork {
    /// Creates the pod's namespace with `ip` on its `eth0` and a default route into the
    /// node namespace, and the node's route to `ip`. A namespace of the same name left by a
    /// killed runner is replaced. About 15 ms.
    pub fn create(node: &str, address: Ipv4Addr) -> Result<PodNetwork, NetnsError> {
        let [_, _, third, fourth] = address.octets();
        let name = format!("{node}-{third}-{fourth}");
        // Interface names hold 15 bytes at most: "vp" + two octets fit.
        let veth = format!("vp{third}x{fourth}");
        let _ = ip(&["-n", node, "link", "del", &veth]);
        if path_of(&name).exists() {
            ip_ok(&["netns", "delete", &name])?;
        }
        ip_ok(&["netns", "add", &name])?;
        let host_route = format!("{address}/32");
        let gateway = NETNS_ADDRESS.to_string();
        let steps: [&[&str]; 7] = [
            &[
                "link", "add", &veth, "netns", node, "type", "veth", "peer", "name", "eth0",
                "netns", &name,
            ],
            &["-n", node, "link", "set", &veth, "up"],
            &["-n", node, "route", "replace", &host_route, "dev", &veth],
            &["-n", &name, "link", "set", "lo", "up"],
            &["-n", &name, "addr", "add", &host_route, "dev", "eth0"],
            &["-n", &name, "link", "set", "eth0", "up"],
            // `onlink`: the gateway is in no subnet of the pod's (it has none), but the
            // other end of eth0 answers for it, the address being the node's own.
            &[
                "-n", &name, "route", "add", "default", "via", &gateway, "dev", "eth0", "onlink",
            ],
        ];
        let made = (|| {
            for step in steps {
                ip_ok(step)?;
            }
            open(&name)
        })();
        match made {
            Ok(file) => Ok(PodNetwork {
                name,
                node: node.to_string(),
                veth,
                ip: address,
                file,
            }),
            Err(e) => {
                let _ = ip(&["-n", node, "link", "del", &veth]);
                let _ = ip(&["netns", "delete", &name]);
                Err(e)
            }
        }
    }

    /// The namespace, for [`run_in_pod`].
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Deletes the veth pair first (at once; the kernel tears a namespace down
    /// asynchronously, and its routes would linger for up to a second), then the namespace.
    pub fn delete(self) {
        kill_processes_in(&path_of(&self.name));
        if let Err(e) = ip_ok(&["-n", &self.node, "link", "del", &self.veth]) {
            tracing::debug!("failed to {}", crate::error_chain(&e));
        }
        if let Err(e) = ip_ok(&["netns", "delete", &self.name]) {
            tracing::warn!("failed to {}", crate::error_chain(&e));
        }
    }
}

/// What a pod's processes see of the machine besides the network: its own hostname (the
/// pod's name, as `os.Hostname()` in upstream's frontend footer shows it) and its own
/// `/etc/hosts`, `/etc/resolv.conf` and `/etc/nsswitch.conf`, bound from files of the pod's.
#[derive(Clone, Debug)]
pub struct PodView {
    pub hostname: String,
    /// (file of the pod's, the path it is bound over), e.g. (`<pod dir>/etc/hosts`, `/etc/hosts`).
    pub binds: Vec<(PathBuf, PathBuf)>,
}

/// Makes a `Command` start its process inside a pod: its network namespace, a mount and a
/// UTS namespace of its own with the view's files and hostname, and dying with its parent
/// (the pod runner), as [`run_inside`] does.
pub fn run_in_pod(command: &mut tokio::process::Command, network: &File, view: &PodView) {
    let fd = network.as_raw_fd();
    // Everything pre_exec uses is made before the fork: it must not allocate.
    let to_c = |p: &Path| CString::new(p.as_os_str().as_encoded_bytes()).ok();
    let binds: Vec<(CString, CString)> = view
        .binds
        .iter()
        .filter_map(|(from, to)| Some((to_c(from)?, to_c(to)?)))
        .collect();
    let hostname = view.hostname.clone().into_bytes();
    let root = CString::new("/").expect("no NUL");
    // SAFETY: setns, unshare, mount, sethostname and prctl are async-signal-safe system
    // calls on values made before the fork and moved into the closure.
    unsafe {
        command.pre_exec(move || {
            let check = |rc: libc::c_int| {
                if rc == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            };
            check(libc::setns(fd, libc::CLONE_NEWNET))?;
            check(libc::unshare(libc::CLONE_NEWNS | libc::CLONE_NEWUTS))?;
            // Private, so the binds below stay in this process's view.
            check(libc::mount(
                std::ptr::null(),
                root.as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ))?;
            for (from, to) in &binds {
                check(libc::mount(
                    from.as_ptr(),
                    to.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND,
                    std::ptr::null(),
                ))?;
            }
            check(libc::sethostname(hostname.as_ptr().cast(), hostname.len()))?;
            check(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL))?;
            Ok(())
        });
    }
}

/// An open handle on the namespace, for `setns`.
pub fn open(name: &str) -> Result<File, NetnsError> {
    let path = path_of(name);
    File::open(&path).map_err(|source| NetnsError::Open { path, source })
}

/// Moves the calling thread into the namespace.
fn enter(file: &File) -> std::io::Result<()> {
    // SAFETY: setns on a descriptor we hold open; it affects only this thread.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Makes a `Command` start its process inside the namespace, and die with its parent
/// (the pod runner): a pod's process must never outlive the kubelet that tracks it.
pub fn run_inside(command: &mut tokio::process::Command, netns: &File) {
    let fd = netns.as_raw_fd();
    // SAFETY: setns and prctl are async-signal-safe system calls on values captured
    // by copy; nothing is allocated between fork and exec.
    unsafe {
        command.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

type SocketRequest = tokio::sync::oneshot::Sender<std::io::Result<socket2::Socket>>;

/// Opens TCP connections inside the namespace from a process that lives outside it:
/// a thread parked in the namespace creates the sockets (a socket belongs to the
/// namespace it was created in), and the caller's runtime connects them.
#[derive(Clone)]
pub struct Dialer {
    requests: mpsc::Sender<SocketRequest>,
}

impl Dialer {
    pub fn new(name: &str) -> Result<Dialer, NetnsError> {
        let file = open(name)?;
        let (requests, receive) = mpsc::channel::<SocketRequest>();
        let (entered, entered_result) = mpsc::channel();
        std::thread::Builder::new()
            .name(format!("netns-{name}"))
            .spawn(move || {
                let result = enter(&file);
                let ok = result.is_ok();
                let _ = entered.send(result);
                if !ok {
                    return;
                }
                while let Ok(reply) = receive.recv() {
                    let socket = socket2::Socket::new(
                        socket2::Domain::IPV4,
                        socket2::Type::STREAM,
                        Some(socket2::Protocol::TCP),
                    );
                    let _ = reply.send(socket);
                }
            })
            .map_err(|source| NetnsError::Enter {
                name: name.to_string(),
                source,
            })?;
        entered_result
            .recv()
            .unwrap_or_else(|_| Err(std::io::Error::other("the namespace thread died")))
            .map_err(|source| NetnsError::Enter {
                name: name.to_string(),
                source,
            })?;
        Ok(Dialer { requests })
    }

    /// Listens on `addr` inside the namespace (an address of the namespace's own).
    pub async fn listen(&self, addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
        let socket = self.socket().await?;
        socket.set_reuse_address(true)?;
        socket.bind(&addr.into())?;
        socket.listen(128)?;
        socket.set_nonblocking(true)?;
        tokio::net::TcpListener::from_std(socket.into())
    }

    async fn socket(&self) -> std::io::Result<socket2::Socket> {
        let (reply, socket) = tokio::sync::oneshot::channel();
        self.requests
            .send(reply)
            .map_err(|_| std::io::Error::other("the namespace thread stopped"))?;
        socket
            .await
            .map_err(|_| std::io::Error::other("the namespace thread stopped"))?
    }

    /// Connects to `addr` inside the namespace.
    pub async fn connect(&self, addr: SocketAddr) -> std::io::Result<tokio::net::TcpStream> {
        let socket = self.socket().await?;
        socket.set_nonblocking(true)?;
        let stream: std::net::TcpStream = socket.into();
        let stream = tokio::net::TcpSocket::from_std_stream(stream)
            .connect(addr)
            .await?;
        stream.set_nodelay(true)?;
        Ok(stream)
    }
}
