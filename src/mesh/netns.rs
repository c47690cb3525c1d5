//! The local mesh's pod network: a Linux network namespace holding the pod range on
//! its loopback, processes started inside it, and sockets opened inside it from outside.
//!
//! Kubernetes refuses loopback addresses in EndpointSlices, so pods need routable
//! addresses; inside a namespace of our own, `10.244.0.0/16` on `lo` makes every
//! address of the range local, bindable and reachable, and nothing leaves the namespace.

use std::fs::File;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;

/// The pod range, as kwok's `--cidr` on the local substrate.
pub const POD_CIDR: &str = "10.244.0.0/16";
/// The namespace's own address in the range: where relays reach the gateway's
/// listeners (which bind every address) and never a pod's.
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

/// Creates the namespace (if absent) with the pod range on its loopback. Idempotent.
pub fn ensure(name: &str) -> Result<PathBuf, NetnsError> {
    let path = path_of(name);
    if !path.exists() {
        ip_ok(&["netns", "add", name])?;
    }
    ip_ok(&["-n", name, "link", "set", "lo", "up"])?;
    let address = format!("{NETNS_ADDRESS}/16");
    let shown = Command::new("ip")
        .args(["-n", name, "-4", "-o", "addr", "show", "dev", "lo"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
        .unwrap_or_default();
    if !shown.contains(&address) {
        ip_ok(&["-n", name, "addr", "add", &address, "dev", "lo"])?;
    }
    Ok(path)
}

/// Deletes the namespace; absent is fine.
pub fn delete(name: &str) -> Result<(), NetnsError> {
    if path_of(name).exists() {
        ip_ok(&["netns", "delete", name])?;
    }
    Ok(())
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

    /// Connects to `addr` inside the namespace.
    pub async fn connect(&self, addr: SocketAddr) -> std::io::Result<tokio::net::TcpStream> {
        let (reply, socket) = tokio::sync::oneshot::channel();
        self.requests
            .send(reply)
            .map_err(|_| std::io::Error::other("the namespace thread stopped"))?;
        let socket = socket
            .await
            .map_err(|_| std::io::Error::other("the namespace thread stopped"))??;
        socket.set_nonblocking(true)?;
        let stream: std::net::TcpStream = socket.into();
        let stream = tokio::net::TcpSocket::from_std_stream(stream)
            .connect(addr)
            .await?;
        stream.set_nodelay(true)?;
        Ok(stream)
    }
}
