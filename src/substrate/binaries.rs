//! The local substrate's executables: found in an env var, on PATH or in the
//! version-keyed cache, otherwise built from the Go module proxy by
//! `scripts/install-control-plane.sh` with the pins of [`crate::versions`].

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::versions;

/// The install script, embedded so an installed `cdcheck` needs no checkout.
const INSTALL_SCRIPT: &str = include_str!("../../scripts/install-control-plane.sh");
/// The mesh's istiod build script, embedded likewise.
const ISTIOD_SCRIPT: &str = include_str!("../../scripts/install-istiod.sh");

#[derive(Debug, thiserror::Error)]
pub enum BinaryError {
    #[error(
        "find {names} (set {vars}, put them on PATH, or run `cdcheck substrate install`; cache: {cache})"
    )]
    Missing {
        names: String,
        vars: String,
        cache: String,
    },
    #[error(
        "build the control-plane binaries: the Go toolchain (`go`) is not on PATH; install Go 1.26 or set {vars}"
    )]
    NoGo { vars: String },
    #[error("run the install script")]
    Spawn(#[source] std::io::Error),
    #[error(
        "build {component} with its install script (scripts/install-*.sh; exit {code:?}); last output:\n{tail}"
    )]
    Build {
        component: &'static str,
        code: Option<i32>,
        tail: String,
    },
    #[error("use {path}: {reason}")]
    Unusable { path: PathBuf, reason: String },
}

/// One executable the local control plane needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Binary {
    Etcd,
    KubeApiserver,
    KubeControllerManager,
    KubeScheduler,
    Kwok,
}

impl Binary {
    pub const ALL: [Binary; 5] = [
        Binary::Etcd,
        Binary::KubeApiserver,
        Binary::KubeControllerManager,
        Binary::KubeScheduler,
        Binary::Kwok,
    ];

    pub fn file_name(self) -> &'static str {
        match self {
            Binary::Etcd => "etcd",
            Binary::KubeApiserver => "kube-apiserver",
            Binary::KubeControllerManager => "kube-controller-manager",
            Binary::KubeScheduler => "kube-scheduler",
            Binary::Kwok => "kwok",
        }
    }

    /// The env var that names this executable explicitly (it wins over everything).
    pub fn env_var(self) -> &'static str {
        match self {
            Binary::Etcd => "CDCHECK_ETCD",
            Binary::KubeApiserver => "CDCHECK_KUBE_APISERVER",
            Binary::KubeControllerManager => "CDCHECK_KUBE_CONTROLLER_MANAGER",
            Binary::KubeScheduler => "CDCHECK_KUBE_SCHEDULER",
            Binary::Kwok => "CDCHECK_KWOK",
        }
    }

    /// The install script's component that builds this executable.
    fn component(self) -> &'static str {
        match self {
            Binary::Etcd => "etcd",
            Binary::Kwok => "kwok",
            _ => "kubernetes",
        }
    }

    /// Where the install script caches this executable, keyed by its pinned version.
    pub fn cache_path(self, cache: &Path) -> PathBuf {
        let dir = match self {
            Binary::Etcd => format!("etcd-{}", versions::ETCD),
            Binary::Kwok => format!("kwok-{}", versions::KWOK),
            _ => format!("kubernetes-{}", versions::KUBERNETES),
        };
        cache.join(dir).join(self.file_name())
    }
}

/// Paths of every executable the local control plane runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Binaries {
    pub etcd: PathBuf,
    pub kube_apiserver: PathBuf,
    pub kube_controller_manager: PathBuf,
    pub kube_scheduler: PathBuf,
    pub kwok: PathBuf,
}

impl Binaries {
    pub fn get(&self, binary: Binary) -> &Path {
        match binary {
            Binary::Etcd => &self.etcd,
            Binary::KubeApiserver => &self.kube_apiserver,
            Binary::KubeControllerManager => &self.kube_controller_manager,
            Binary::KubeScheduler => &self.kube_scheduler,
            Binary::Kwok => &self.kwok,
        }
    }
}

/// The cache root: `$CDCHECK_BIN_CACHE`, else `$XDG_CACHE_HOME/cdcheck/bin`, else `~/.cache/cdcheck/bin`.
pub fn cache_root() -> PathBuf {
    crate::settings::bin_cache()
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

/// Where `binary` comes from: env var, then PATH, then the cache.
pub fn locate_one(binary: Binary, cache: &Path) -> Result<Option<PathBuf>, BinaryError> {
    if let Some(value) = crate::settings::var(binary.env_var()) {
        let path = PathBuf::from(value);
        if !is_executable(&path) {
            return Err(BinaryError::Unusable {
                path,
                reason: format!("{} does not name an executable file", binary.env_var()),
            });
        }
        return Ok(Some(path));
    }
    if let Some(path) = on_path(binary.file_name()) {
        return Ok(Some(path));
    }
    let cached = binary.cache_path(cache);
    Ok(is_executable(&cached).then_some(cached))
}

/// Finds every executable without building anything.
pub fn locate() -> Result<Binaries, BinaryError> {
    let cache = cache_root();
    let mut found = Vec::new();
    let mut missing = Vec::new();
    for binary in Binary::ALL {
        match locate_one(binary, &cache)? {
            Some(path) => found.push(path),
            None => missing.push(binary),
        }
    }
    if !missing.is_empty() {
        return Err(missing_error(&missing, &cache));
    }
    let mut it = found.into_iter();
    Ok(Binaries {
        etcd: it.next().unwrap_or_default(),
        kube_apiserver: it.next().unwrap_or_default(),
        kube_controller_manager: it.next().unwrap_or_default(),
        kube_scheduler: it.next().unwrap_or_default(),
        kwok: it.next().unwrap_or_default(),
    })
}

fn missing_error(missing: &[Binary], cache: &Path) -> BinaryError {
    BinaryError::Missing {
        names: missing
            .iter()
            .map(|b| b.file_name())
            .collect::<Vec<_>>()
            .join(", "),
        vars: missing
            .iter()
            .map(|b| b.env_var())
            .collect::<Vec<_>>()
            .join(", "),
        cache: cache.display().to_string(),
    }
}

/// Finds every executable, building the missing ones into the cache first.
/// `progress` receives each line the build prints.
pub fn ensure(mut progress: impl FnMut(&str)) -> Result<Binaries, BinaryError> {
    let cache = cache_root();
    let mut components: Vec<&'static str> = Vec::new();
    let mut missing = Vec::new();
    for binary in Binary::ALL {
        if locate_one(binary, &cache)?.is_none() {
            missing.push(binary);
            if !components.contains(&binary.component()) {
                components.push(binary.component());
            }
        }
    }
    if components.is_empty() {
        return locate();
    }
    if on_path("go").is_none() {
        let vars = missing
            .iter()
            .map(|b| b.env_var())
            .collect::<Vec<_>>()
            .join(", ");
        return Err(BinaryError::NoGo { vars });
    }
    for component in components {
        let env = [
            ("CDCHECK_K8S_VERSION", versions::KUBERNETES.to_string()),
            ("CDCHECK_ETCD_VERSION", versions::ETCD.to_string()),
            ("CDCHECK_KWOK_VERSION", versions::KWOK.to_string()),
            ("CDCHECK_BIN_CACHE", cache.display().to_string()),
            ("CDCHECK_INSTALL_ONLY", component.to_string()),
        ];
        run_script(component, INSTALL_SCRIPT, &env, &mut progress)?;
    }
    locate()
}

/// istiod (`pilot-discovery`) for the local mesh: `$CDCHECK_PILOT_DISCOVERY`, the cache,
/// else built by `scripts/install-istiod.sh` (about 11–14 min cold on 2 cores). The
/// script honours `CDCHECK_GOPROXY_FALLBACK` (a file-based module proxy tried first).
pub fn ensure_istiod(mut progress: impl FnMut(&str)) -> Result<PathBuf, BinaryError> {
    if let Ok(found) = crate::mesh::locate_istiod() {
        return Ok(found);
    }
    if on_path("go").is_none() {
        return Err(BinaryError::NoGo {
            vars: "CDCHECK_PILOT_DISCOVERY".into(),
        });
    }
    let env = [
        ("CDCHECK_ISTIO_VERSION", versions::ISTIO.to_string()),
        (
            "CDCHECK_ISTIO_GO_MODULE_VERSION",
            versions::ISTIOCTL_GO_MODULE_VERSION.to_string(),
        ),
        ("CDCHECK_ISTIO_COMMIT", versions::ISTIO_COMMIT.to_string()),
        ("CDCHECK_BIN_CACHE", cache_root().display().to_string()),
    ];
    run_script("istiod", ISTIOD_SCRIPT, &env, &mut progress)?;
    crate::mesh::locate_istiod().map_err(|e| BinaryError::Unusable {
        path: crate::mesh::istiod_cache_path(),
        reason: e.to_string(),
    })
}

pub(crate) fn run_script(
    component: &'static str,
    script_text: &str,
    env: &[(&str, String)],
    progress: &mut impl FnMut(&str),
) -> Result<(), BinaryError> {
    let script = tempfile::Builder::new()
        .prefix("cdcheck-install-")
        .suffix(".sh")
        .tempfile()
        .map_err(BinaryError::Spawn)?;
    std::fs::write(script.path(), script_text).map_err(BinaryError::Spawn)?;
    progress(&format!("building {component} (log follows)"));
    let mut child = Command::new("bash")
        .arg(script.path())
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(BinaryError::Spawn)?;
    // Go writes its progress to stderr; stdout is forwarded from a thread.
    let stdout = child.stdout.take();
    let out_thread = std::thread::spawn(move || {
        let mut lines = Vec::new();
        if let Some(out) = stdout {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                lines.push(line);
            }
        }
        lines
    });
    let mut tail: std::collections::VecDeque<String> = std::collections::VecDeque::new();
    if let Some(err) = child.stderr.take() {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            progress(&line);
            tail.push_back(line);
            if tail.len() > 20 {
                tail.pop_front();
            }
        }
    }
    let status = child.wait().map_err(BinaryError::Spawn)?;
    let out_lines = out_thread.join().unwrap_or_default();
    for line in &out_lines {
        progress(line);
    }
    if !status.success() {
        return Err(BinaryError::Build {
            component,
            code: status.code(),
            tail: tail.into_iter().collect::<Vec<_>>().join("\n"),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_paths_are_keyed_by_the_pinned_versions() {
        let cache = Path::new("/c");
        assert_eq!(
            Binary::KubeApiserver.cache_path(cache),
            Path::new("/c")
                .join(format!("kubernetes-{}", versions::KUBERNETES))
                .join("kube-apiserver")
        );
        assert_eq!(
            Binary::Etcd.cache_path(cache),
            Path::new("/c")
                .join(format!("etcd-{}", versions::ETCD))
                .join("etcd")
        );
        assert_eq!(
            Binary::Kwok.cache_path(cache),
            Path::new("/c")
                .join(format!("kwok-{}", versions::KWOK))
                .join("kwok")
        );
    }

    #[test]
    fn the_embedded_script_takes_its_versions_from_the_environment() {
        for var in [
            "CDCHECK_K8S_VERSION",
            "CDCHECK_ETCD_VERSION",
            "CDCHECK_KWOK_VERSION",
            "CDCHECK_BIN_CACHE",
            "CDCHECK_INSTALL_ONLY",
        ] {
            assert!(INSTALL_SCRIPT.contains(var), "script must read {var}");
        }
    }
}
