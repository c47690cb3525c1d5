//! What scenarios running side by side must not share on a data plane, held as file locks:
//! an environment host, and the gateway's HTTPS port while a scenario judges its certificate.

/// What scenarios running side by side must not share on a data plane: an
/// environment host (the gateway routes one host to one VirtualService), and the
/// gateway's HTTPS port while a scenario judges the certificate served there (every
/// scenario's Gateway copy serves `*` on 443, and the oldest one's certificate wins).
/// File locks (flock) in a directory of the machine, so two `cdcheck run`s on the
/// same substrate (e.g. test binaries side by side) wait for each other too.
pub(super) struct GatewayLocks {
    dir: std::path::PathBuf,
}

/// Held by a scenario from its first step to its end: closing the files unlocks.
pub(super) struct GatewayGuard {
    _files: Vec<std::fs::File>,
}

impl GatewayLocks {
    pub(super) fn new() -> GatewayLocks {
        GatewayLocks {
            dir: std::env::temp_dir().join("cdcheck-gateway-locks"),
        }
    }

    pub(super) async fn take(&self, host: Option<String>, exclusive_tls: bool) -> GatewayGuard {
        let mut files = Vec::new();
        let mut wanted = Vec::new();
        if let Some(host) = host {
            let name: String = host
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                        c
                    } else {
                        '_'
                    }
                })
                .collect();
            wanted.push((self.dir.join(format!("host-{name}.lock")), libc::LOCK_EX));
        }
        let tls = if exclusive_tls {
            libc::LOCK_EX
        } else {
            libc::LOCK_SH
        };
        wanted.push((self.dir.join("gateway-tls.lock"), tls));
        for (path, operation) in wanted {
            match flock(path.clone(), operation).await {
                Ok(file) => files.push(file),
                Err(e) => tracing::warn!(
                    "lock {}: {e} (scenarios may share the gateway)",
                    path.display()
                ),
            }
        }
        GatewayGuard { _files: files }
    }
}

/// Opens (creating) `path` and takes `operation` (LOCK_SH or LOCK_EX) on it, waiting.
pub(super) async fn flock(
    path: std::path::PathBuf,
    operation: i32,
) -> std::io::Result<std::fs::File> {
    tokio::task::spawn_blocking(move || {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)?;
        let fd = std::os::fd::AsRawFd::as_raw_fd(&file);
        // SAFETY: flock on a descriptor owned by `file`, which the guard keeps open.
        if unsafe { libc::flock(fd, operation) } == 0 {
            Ok(file)
        } else {
            Err(std::io::Error::last_os_error())
        }
    })
    .await
    .map_err(std::io::Error::other)?
}
