//! `cdcheck doctor`: the preflight of the kind substrate. A Docker (or Podman) daemon
//! that answers, kind, istioctl and kubectl at the pins of [`crate::versions`], inotify
//! limits for a 4-node cluster, and free memory and disk. Each problem is one line with
//! the exact command that fixes it. Everything is asked through a [`Host`], so tests
//! drive every failure without touching the machine.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::host::{Cmd, Host, Output};
use crate::versions;

/// kind's known-issues page: a multi-node cluster exhausts the distribution defaults
/// ("too many open files" in kube-proxy and kubelet); these are the values it gives.
pub const MIN_INOTIFY_WATCHES: u64 = 524_288;
pub const MIN_INOTIFY_INSTANCES: u64 = 512;

/// Memory available for 4 kind nodes running istiod, the gateway and two environments
/// of Online Boutique with a sidecar each (about 30 pods of 64–256 MiB).
pub const MIN_MEMORY_BYTES: u64 = 8 * GIB;

/// Disk for the node image (~1 GiB), Istio's images and Online Boutique's 11 images,
/// once in the engine and once more inside each node after `kind load`.
pub const MIN_DISK_BYTES: u64 = 20 * GIB;

const GIB: u64 = 1024 * 1024 * 1024;

/// The container engine kind runs its nodes in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    Docker,
    Podman,
}

impl Engine {
    pub fn program(self) -> &'static str {
        match self {
            Engine::Docker => "docker",
            Engine::Podman => "podman",
        }
    }
}

/// What a check is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Check {
    ContainerEngine,
    Kind,
    Istioctl,
    Kubectl,
    InotifyWatches,
    InotifyInstances,
    Memory,
    Disk,
}

/// One thing in the way, with the command that removes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Problem {
    pub check: Check,
    pub message: String,
    pub fix: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}; fix: {}", self.message, self.fix)
    }
}

/// The preflight's findings: what is fine and what is not.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    /// The engine that answered (Docker first, then Podman).
    pub engine: Option<Engine>,
    /// One line per check that passed, with what was found.
    pub ok: Vec<String>,
    pub problems: Vec<Problem>,
}

impl Report {
    pub fn is_ready(&self) -> bool {
        self.problems.is_empty()
    }

    pub fn has(&self, check: Check) -> bool {
        self.problems.iter().any(|p| p.check == check)
    }
}

/// The preflight found problems; each is one line with its fix.
#[derive(Debug, thiserror::Error)]
#[error(
    "pass the kind substrate's preflight ({} problem{}):\n{}",
    .problems.len(),
    if .problems.len() == 1 { "" } else { "s" },
    .problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n")
)]
pub struct NotReady {
    pub problems: Vec<Problem>,
}

/// Runs every check.
pub fn diagnose(host: &dyn Host) -> Report {
    let mut report = Report::default();
    let engine = check_engine(host, &mut report);
    report.engine = engine;
    check_kind(host, &mut report);
    check_istioctl(host, &mut report);
    check_kubectl(host, &mut report);
    check_inotify(host, &mut report);
    check_memory(host, &mut report);
    check_disk(host, engine, &mut report);
    report
}

/// `Ok(report)` when ready, else the problems as an error.
pub fn require_ready(host: &dyn Host) -> Result<Report, NotReady> {
    let report = diagnose(host);
    if report.is_ready() {
        Ok(report)
    } else {
        Err(NotReady {
            problems: report.problems,
        })
    }
}

fn run(host: &dyn Host, program: &str, args: &[&str]) -> Result<Output, std::io::ErrorKind> {
    host.run(&Cmd::new(program, args.iter().copied()))
        .map_err(|e| e.kind())
}

fn check_engine(host: &dyn Host, report: &mut Report) -> Option<Engine> {
    let docker = run(host, "docker", &["info", "--format", "{{.ServerVersion}}"]);
    if let Ok(out) = &docker
        && out.success()
    {
        report
            .ok
            .push(format!("docker daemon {} answers", out.stdout.trim()));
        return Some(Engine::Docker);
    }
    let podman = run(
        host,
        "podman",
        &["info", "--format", "{{.Version.Version}}"],
    );
    if let Ok(out) = &podman
        && out.success()
    {
        report.ok.push(format!(
            "podman {} answers (kind runs with KIND_EXPERIMENTAL_PROVIDER=podman)",
            out.stdout.trim()
        ));
        return Some(Engine::Podman);
    }
    let (message, fix) = match docker {
        Ok(out) => (
            format!(
                "the docker daemon does not answer ({})",
                first_line(&out.tail())
            ),
            "sudo systemctl start docker   # or start Docker Desktop; then check with `docker info`"
                .to_string(),
        ),
        Err(_) => (
            "neither docker nor podman is installed".to_string(),
            "curl -fsSL https://get.docker.com | sh && sudo usermod -aG docker \"$USER\"   # Docker Engine; log in again after"
                .to_string(),
        ),
    };
    report.problems.push(Problem {
        check: Check::ContainerEngine,
        message,
        fix,
    });
    None
}

fn first_line(text: &str) -> String {
    text.lines().next().unwrap_or("").trim().to_string()
}

/// The first word that looks like a version (`v1.2.3`, `1.2.3`, `1.2.3-x`).
pub fn find_version(text: &str) -> Option<String> {
    text.split(|c: char| c.is_whitespace() || c == '"' || c == ',')
        .map(|w| w.trim_end_matches(['.', ':']))
        .find(|w| {
            let bare = w.strip_prefix('v').unwrap_or(w);
            let mut parts = bare.split('.');
            parts.clone().count() >= 3
                && parts.next().is_some_and(|p| p.parse::<u32>().is_ok())
                && parts.next().is_some_and(|p| p.parse::<u32>().is_ok())
                && parts
                    .next()
                    .is_some_and(|p| p.chars().next().is_some_and(|c| c.is_ascii_digit()))
        })
        .map(str::to_string)
}

fn tool_version(
    host: &dyn Host,
    program: &str,
    args: &[&str],
    parse: fn(&str) -> Option<String>,
) -> Result<String, String> {
    match run(host, program, args) {
        Err(std::io::ErrorKind::NotFound) => Err(format!("{program} is not installed")),
        Err(kind) => Err(format!("{program} could not be run ({kind})")),
        Ok(out) if !out.success() => Err(format!(
            "`{program} {}` failed ({})",
            args.join(" "),
            out.tail()
        )),
        Ok(out) => parse(&out.stdout).ok_or_else(|| {
            format!(
                "{program} printed no version we can read: {:?}",
                first_line(&out.stdout)
            )
        }),
    }
}

fn check_kind(host: &dyn Host, report: &mut Report) {
    let fix = format!(
        "go install sigs.k8s.io/kind@{} && export PATH=\"$(go env GOPATH)/bin:$PATH\"",
        versions::KIND
    );
    // `kind version`: "kind v0.32.0 go1.25.1 linux/amd64".
    match tool_version(host, "kind", &["version"], find_version) {
        Ok(found) if found == versions::KIND => report.ok.push(format!("kind {found}")),
        Ok(found) => report.problems.push(Problem {
            check: Check::Kind,
            message: format!("kind is {found}, cdcheck is pinned to {}", versions::KIND),
            fix,
        }),
        Err(message) => report.problems.push(Problem {
            check: Check::Kind,
            message,
            fix,
        }),
    }
}

/// Istio's release asset names: `linux-amd64`, `linux-arm64`, `osx-arm64`, ...
fn istio_platform() -> String {
    let os = match std::env::consts::OS {
        "macos" => "osx",
        other => other,
    };
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    format!("{os}-{arch}")
}

/// The install command for istioctl: Istio's release archive, checked against the
/// `.sha256` Istio publishes beside it (or the pinned SHA-256 when there is one).
pub fn istioctl_fix() -> String {
    let v = versions::ISTIOCTL;
    let archive = format!("istio-{v}-{}.tar.gz", istio_platform());
    let url = format!("https://github.com/istio/istio/releases/download/{v}/{archive}");
    let check = match versions::ISTIO_ARCHIVE_SHA256 {
        Some(sum) => format!("echo '{sum}  {archive}' | sha256sum -c"),
        None => format!("curl -fLO {url}.sha256 && sha256sum -c {archive}.sha256"),
    };
    format!(
        "curl -fLO {url} && {check} && tar -xzf {archive} && sudo install -m 0755 istio-{v}/bin/istioctl /usr/local/bin/istioctl"
    )
}

fn check_istioctl(host: &dyn Host, report: &mut Report) {
    // `istioctl version --remote=false`: "client version: 1.30.3" (older: "1.30.3").
    match tool_version(
        host,
        "istioctl",
        &["version", "--remote=false"],
        find_version,
    ) {
        Ok(found) if found == versions::ISTIOCTL => report.ok.push(format!("istioctl {found}")),
        Ok(found) => report.problems.push(Problem {
            check: Check::Istioctl,
            message: format!(
                "istioctl is {found}, cdcheck installs Istio {} and needs that istioctl",
                versions::ISTIOCTL
            ),
            fix: istioctl_fix(),
        }),
        Err(message) => report.problems.push(Problem {
            check: Check::Istioctl,
            message,
            fix: istioctl_fix(),
        }),
    }
}

/// `kubectl version --client -o json`'s `clientVersion.gitVersion`.
fn kubectl_version(stdout: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_str(stdout).ok()?;
    value["clientVersion"]["gitVersion"]
        .as_str()
        .map(str::to_string)
}

fn minor(version: &str) -> Option<(u32, u32)> {
    let mut parts = version.trim_start_matches('v').split(['.', '-', '+']);
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

pub fn kubectl_fix() -> String {
    let v = versions::KUBECTL;
    let platform = istio_platform().replace("osx", "darwin").replace('-', "/");
    let url = format!("https://dl.k8s.io/release/{v}/bin/{platform}/kubectl");
    format!(
        "curl -fLO {url} && curl -fLO {url}.sha256 && echo \"$(cat kubectl.sha256)  kubectl\" | sha256sum --check && sudo install -m 0755 kubectl /usr/local/bin/kubectl"
    )
}

fn check_kubectl(host: &dyn Host, report: &mut Report) {
    let wanted = minor(versions::KUBECTL).expect("the kubectl pin is a version");
    match tool_version(
        host,
        "kubectl",
        &["version", "--client", "-o", "json"],
        kubectl_version,
    ) {
        Ok(found) => match minor(&found) {
            // Kubernetes' skew policy: kubectl within one minor of the API server.
            Some(m) if m.0 == wanted.0 && m.1.abs_diff(wanted.1) <= 1 => {
                report.ok.push(format!("kubectl {found}"))
            }
            _ => report.problems.push(Problem {
                check: Check::Kubectl,
                message: format!(
                    "kubectl is {found}, more than one minor from the pinned {} (Kubernetes' version skew policy)",
                    versions::KUBECTL
                ),
                fix: kubectl_fix(),
            }),
        },
        Err(message) => report.problems.push(Problem {
            check: Check::Kubectl,
            message,
            fix: kubectl_fix(),
        }),
    }
}

fn read_number(host: &dyn Host, path: &str) -> Result<u64, String> {
    let text = host
        .read_file(Path::new(path))
        .map_err(|e| format!("{path} cannot be read ({e})"))?;
    text.trim()
        .parse()
        .map_err(|_| format!("{path} holds {:?}, not a number", text.trim()))
}

fn check_inotify(host: &dyn Host, report: &mut Report) {
    let limits = [
        (
            Check::InotifyWatches,
            "/proc/sys/fs/inotify/max_user_watches",
            "fs.inotify.max_user_watches",
            MIN_INOTIFY_WATCHES,
        ),
        (
            Check::InotifyInstances,
            "/proc/sys/fs/inotify/max_user_instances",
            "fs.inotify.max_user_instances",
            MIN_INOTIFY_INSTANCES,
        ),
    ];
    for (check, path, key, min) in limits {
        let fix = format!(
            "sudo sysctl -w {key}={min} && echo '{key} = {min}' | sudo tee -a /etc/sysctl.d/99-cdcheck-kind.conf"
        );
        match read_number(host, path) {
            Ok(value) if value >= min => report.ok.push(format!("{key} = {value}")),
            Ok(value) => report.problems.push(Problem {
                check,
                message: format!(
                    "{key} is {value}, a 4-node kind cluster needs at least {min} (kind's known issues: too many open files)"
                ),
                fix,
            }),
            Err(message) => report.problems.push(Problem {
                check,
                message,
                fix,
            }),
        }
    }
}

/// `MemAvailable` of `/proc/meminfo`, in bytes.
pub fn mem_available(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / GIB as f64)
}

fn check_memory(host: &dyn Host, report: &mut Report) {
    let found = host
        .read_file(Path::new("/proc/meminfo"))
        .ok()
        .and_then(|text| mem_available(&text));
    match found {
        Some(bytes) if bytes >= MIN_MEMORY_BYTES => report
            .ok
            .push(format!("{} of memory available", gib(bytes))),
        Some(bytes) => report.problems.push(Problem {
            check: Check::Memory,
            message: format!(
                "{} of memory available, the kind substrate needs {}",
                gib(bytes),
                gib(MIN_MEMORY_BYTES)
            ),
            fix: "stop other workloads, or give Docker Desktop more memory (Settings > Resources)"
                .to_string(),
        }),
        None => report.problems.push(Problem {
            check: Check::Memory,
            message: "/proc/meminfo has no MemAvailable line".to_string(),
            fix: "run cdcheck doctor on Linux (or inside the Docker Desktop VM)".to_string(),
        }),
    }
}

fn check_disk(host: &dyn Host, engine: Option<Engine>, report: &mut Report) {
    // The engine's image store, where the node image and every loaded image land.
    let root = engine
        .and_then(|e| {
            let format = match e {
                Engine::Docker => "{{.DockerRootDir}}",
                Engine::Podman => "{{.Store.GraphRoot}}",
            };
            run(host, e.program(), &["info", "--format", format]).ok()
        })
        .filter(|out| out.success() && !out.stdout.trim().is_empty())
        .map(|out| PathBuf::from(out.stdout.trim()))
        .unwrap_or_else(|| PathBuf::from("/var/lib/docker"));
    let probe = root;
    match host.free_bytes(&probe) {
        Ok(bytes) if bytes >= MIN_DISK_BYTES => {
            report
                .ok
                .push(format!("{} free under {}", gib(bytes), probe.display()))
        }
        Ok(bytes) => report.problems.push(Problem {
            check: Check::Disk,
            message: format!(
                "{} free under {}, the kind substrate needs {}",
                gib(bytes),
                probe.display(),
                gib(MIN_DISK_BYTES)
            ),
            fix: format!(
                "{} system prune --all   # removes unused images and stopped containers",
                engine.unwrap_or(Engine::Docker).program()
            ),
        }),
        Err(e) => report.problems.push(Problem {
            check: Check::Disk,
            message: format!("free space under {} cannot be read ({e})", probe.display()),
            fix: format!("df -h {}", probe.display()),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_found_in_each_tools_own_output() {
        assert_eq!(
            find_version("kind v0.32.0 go1.25.1 linux/amd64").as_deref(),
            Some("v0.32.0")
        );
        assert_eq!(
            find_version("client version: 1.30.3\n").as_deref(),
            Some("1.30.3")
        );
        assert_eq!(find_version("1.30.3").as_deref(), Some("1.30.3"));
        assert_eq!(find_version("kind go1.25 linux/amd64"), None);
        assert_eq!(
            kubectl_version(r#"{"clientVersion":{"gitVersion":"v1.36.5"}}"#).as_deref(),
            Some("v1.36.5")
        );
        assert_eq!(minor("v1.32.4-dispatcher"), Some((1, 32)));
    }

    #[test]
    fn mem_available_reads_kib_from_meminfo() {
        let text = "MemTotal:       24000000 kB\nMemFree: 1 kB\nMemAvailable:   8388608 kB\n";
        assert_eq!(mem_available(text), Some(8 * GIB));
        assert_eq!(mem_available("MemTotal: 1 kB\n"), None);
    }

    #[test]
    fn install_commands_name_the_pinned_versions_and_check_checksums() {
        let istioctl = istioctl_fix();
        assert!(istioctl.contains(&format!(
            "download/{}/istio-{}-",
            versions::ISTIO,
            versions::ISTIO
        )));
        assert!(istioctl.contains("sha256sum -c"), "{istioctl}");
        let kubectl = kubectl_fix();
        assert!(kubectl.contains(&format!("release/{}/bin/", versions::KUBECTL)));
        assert!(kubectl.contains("sha256sum --check"), "{kubectl}");
    }
}
