//! Relays across the namespace boundary, like kind's port mappings: host loopback
//! ports into the pod network, and a unix socket and the node's address from the pod
//! network to istiod.

use std::net::SocketAddr;
use std::path::Path;

use super::netns::Dialer;

/// Accepts on `listener` (host side) and pipes each connection to `target` inside
/// the namespace. Runs until the listener fails.
pub async fn into_netns(listener: tokio::net::TcpListener, target: SocketAddr, dialer: Dialer) {
    loop {
        let Ok((mut inbound, _)) = listener.accept().await else {
            continue;
        };
        let dialer = dialer.clone();
        tokio::spawn(async move {
            let _ = inbound.set_nodelay(true);
            // Nothing listens inside yet (the gateway has no listener for the port):
            // the client sees the connection closed, as with a NodePort without endpoints.
            if let Ok(mut outbound) = dialer.connect(target).await {
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            }
        });
    }
}

/// Accepts on a unix socket (reachable from any network namespace through the file
/// system) and pipes each connection to `target` on the host's loopback.
pub async fn unix_to_host(listener: tokio::net::UnixListener, target: SocketAddr) {
    loop {
        let Ok((mut inbound, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                let _ = outbound.set_nodelay(true);
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            }
        });
    }
}

/// Accepts on `listener` (inside the namespace: the pods' way to istiod) and pipes each
/// connection to `target` on the host's loopback.
pub async fn netns_to_host(listener: tokio::net::TcpListener, target: SocketAddr) {
    loop {
        let Ok((mut inbound, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let _ = inbound.set_nodelay(true);
            if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                let _ = outbound.set_nodelay(true);
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            }
        });
    }
}

/// Binds a unix socket at `path`, replacing a stale one.
pub fn bind_unix(path: &Path) -> std::io::Result<tokio::net::UnixListener> {
    let _ = std::fs::remove_file(path);
    tokio::net::UnixListener::bind(path)
}
