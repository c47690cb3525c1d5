//! `cdcheck substrate install --substrate kind`: the kind substrate's tools fetched into the
//! binary cache, only through a verified channel. kind comes from the Go module proxy
//! (`go install`, checked against the Go checksum database); istioctl from Istio's release
//! archive when its SHA-256 is pinned in [`crate::versions`], else built from the Go module
//! (`scripts/install-istioctl.sh`, checked against the same database); kubectl from
//! dl.k8s.io checked against the SHA-256 pinned for the platform, and without one the
//! install refuses and names the command that verifies against the publisher's own
//! checksum file instead.

use std::path::{Path, PathBuf};

use super::host::Cmd;
use super::kind::Step;
use crate::versions;

#[derive(Debug, thiserror::Error)]
pub enum ToolsError {
    #[error(
        "install {tool} {version}: no SHA-256 of its download is pinned in src/versions.rs, and cdcheck runs no unverified download; install it yourself with: {fix}"
    )]
    Unverified {
        tool: &'static str,
        version: &'static str,
        fix: String,
    },
}

/// Where the kind substrate's tools go: `<cache>/kind-tools/<tool>-<version>/`.
pub fn tool_dir(cache: &Path, tool: &str, version: &str) -> PathBuf {
    cache.join("kind-tools").join(format!("{tool}-{version}"))
}

/// The steps that put kind in the cache (verified by Go's checksum database).
pub fn kind_plan(cache: &Path) -> Vec<Step> {
    let dir = tool_dir(cache, "kind", versions::KIND);
    vec![Step::Run {
        purpose: format!("install kind {} with go install", versions::KIND),
        cmd: Cmd::new(
            "go",
            ["install", &format!("sigs.k8s.io/kind@{}", versions::KIND)],
        )
        .with_env("GOBIN", &dir.display().to_string())
        // Go's checksum database verifies the module: nothing in the caller's
        // environment may turn that off for it.
        .with_env("GOSUMDB", "sum.golang.org")
        .with_env("GONOSUMDB", "")
        .with_env("GOPRIVATE", "")
        .with_env("GOFLAGS", ""),
    }]
}

/// The script that builds istioctl from the Go module (`scripts/install-istioctl.sh`).
pub const ISTIOCTL_SCRIPT: &str = include_str!("../../scripts/install-istioctl.sh");

/// The steps that put istioctl in the cache: Istio's archive checked against the pinned
/// SHA-256, or without a pin, a build from the Go module at the pinned pseudo-version.
pub fn istioctl_plan(cache: &Path) -> Result<Vec<Step>, ToolsError> {
    let Some(sum) = versions::ISTIO_ARCHIVE_SHA256 else {
        let script = cache.join("kind-tools").join("install-istioctl.sh");
        let mut cmd = Cmd::new("bash", [script.display().to_string()])
            .with_env("CDCHECK_ISTIO_VERSION", versions::ISTIOCTL)
            .with_env(
                "CDCHECK_ISTIO_GO_MODULE_VERSION",
                versions::ISTIOCTL_GO_MODULE_VERSION,
            )
            .with_env("CDCHECK_ISTIO_COMMIT", versions::ISTIO_COMMIT)
            .with_env(
                "CDCHECK_ISTIOCTL_DIR",
                &tool_dir(cache, "istioctl", versions::ISTIOCTL)
                    .display()
                    .to_string(),
            );
        if let Some(fallback) = crate::settings::var(crate::settings::env::GOPROXY_FALLBACK) {
            cmd = cmd.with_env(
                crate::settings::env::GOPROXY_FALLBACK,
                &fallback.to_string_lossy(),
            );
        }
        return Ok(vec![
            Step::Write {
                path: script,
                contents: ISTIOCTL_SCRIPT.to_string(),
            },
            Step::Run {
                purpose: format!(
                    "build istioctl {} from the Go module {}",
                    versions::ISTIOCTL,
                    versions::ISTIOCTL_GO_MODULE_VERSION
                ),
                cmd,
            },
        ]);
    };
    let v = versions::ISTIOCTL;
    let dir = tool_dir(cache, "istioctl", v);
    let archive = dir.join(format!("istio-{v}-linux-amd64.tar.gz"));
    let archive_s = archive.display().to_string();
    let dir_s = dir.display().to_string();
    Ok(vec![
        Step::Run {
            purpose: format!("download Istio {v}'s release archive"),
            cmd: Cmd::new(
                "curl",
                [
                    "-fsSL",
                    "--create-dirs",
                    "-o",
                    &archive_s,
                    &format!(
                        "https://github.com/istio/istio/releases/download/{v}/istio-{v}-linux-amd64.tar.gz"
                    ),
                ],
            ),
        },
        Step::Run {
            purpose: format!("check Istio {v}'s archive against the pinned SHA-256"),
            cmd: Cmd::new("sha256sum", ["-c", "-"]).with_stdin(format!("{sum}  {archive_s}\n")),
        },
        Step::Run {
            purpose: "unpack istioctl".to_string(),
            cmd: Cmd::new(
                "tar",
                [
                    "-xzf",
                    &archive_s,
                    "-C",
                    &dir_s,
                    "--strip-components=2",
                    &format!("istio-{v}/bin/istioctl"),
                ],
            ),
        },
    ])
}

/// The platform as Kubernetes' downloads name it (`linux/amd64`).
pub fn kubernetes_platform() -> String {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let os = match std::env::consts::OS {
        "macos" => "darwin",
        other => other,
    };
    format!("{os}/{arch}")
}

/// The steps that put kubectl in the cache for `platform`: the binary from dl.k8s.io,
/// checked against the pinned SHA-256 before it is made executable. Refused where no
/// SHA-256 is pinned for the platform.
pub fn kubectl_plan(cache: &Path, platform: &str) -> Result<Vec<Step>, ToolsError> {
    let sum = match platform {
        "linux/amd64" => versions::KUBECTL_SHA256_LINUX_AMD64,
        _ => None,
    };
    let Some(sum) = sum else {
        return Err(ToolsError::Unverified {
            tool: "kubectl",
            version: versions::KUBECTL,
            fix: super::doctor::kubectl_fix(),
        });
    };
    let v = versions::KUBECTL;
    let dir = tool_dir(cache, "kubectl", v);
    let download = dir.join("kubectl.download");
    let download_s = download.display().to_string();
    Ok(vec![
        Step::Run {
            purpose: format!("download kubectl {v} for {platform} from dl.k8s.io"),
            cmd: Cmd::new(
                "curl",
                [
                    "-fsSL",
                    "--create-dirs",
                    "-o",
                    &download_s,
                    &format!("https://dl.k8s.io/release/{v}/bin/{platform}/kubectl"),
                ],
            ),
        },
        Step::Run {
            purpose: format!("check kubectl {v} against the pinned SHA-256"),
            cmd: kubectl_check(sum, &download),
        },
        Step::Run {
            purpose: "install kubectl into the cache".to_string(),
            cmd: Cmd::new(
                "install",
                [
                    "-m",
                    "0755",
                    &download_s,
                    &dir.join("kubectl").display().to_string(),
                ],
            ),
        },
    ])
}

/// `sha256sum --check` of `file` against `sum`: fails on any other content.
fn kubectl_check(sum: &str, file: &Path) -> Cmd {
    Cmd::new("sha256sum", ["--check", "--strict", "-"])
        .with_stdin(format!("{sum}  {}\n", file.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_comes_from_the_go_module_proxy_at_the_pin_into_the_cache() {
        let plan = kind_plan(Path::new("/cache"));
        let Step::Run { cmd, .. } = &plan[0] else {
            panic!("{plan:?}")
        };
        assert_eq!(
            cmd.to_string(),
            format!(
                "GOBIN=/cache/kind-tools/kind-{0} GOSUMDB=sum.golang.org GONOSUMDB='' GOPRIVATE='' GOFLAGS='' go install sigs.k8s.io/kind@{0}",
                versions::KIND
            )
        );
    }

    #[test]
    fn without_a_pinned_checksum_istioctl_is_built_from_the_go_module_and_kubectl_refused() {
        assert_eq!(
            versions::ISTIO_ARCHIVE_SHA256,
            None,
            "update this test with the pin"
        );
        let plan = istioctl_plan(Path::new("/cache")).unwrap();
        let Step::Run { cmd, .. } = &plan[1] else {
            panic!("{plan:?}")
        };
        assert_eq!(cmd.args, ["/cache/kind-tools/install-istioctl.sh"]);
        let env: std::collections::BTreeMap<_, _> = cmd.env.iter().cloned().collect();
        assert_eq!(env["CDCHECK_ISTIO_VERSION"], versions::ISTIO);
        assert_eq!(
            env["CDCHECK_ISTIO_GO_MODULE_VERSION"],
            versions::ISTIOCTL_GO_MODULE_VERSION
        );
        assert_eq!(
            env["CDCHECK_ISTIOCTL_DIR"],
            "/cache/kind-tools/istioctl-1.30.3"
        );
        assert!(
            !ISTIOCTL_SCRIPT.contains("curl"),
            "no download outside Go's"
        );
        let error = kubectl_plan(Path::new("/cache"), "darwin/arm64")
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with("install kubectl v1.36.5: no SHA-256 of its download is pinned"),
            "{error}"
        );
        assert!(error.contains("kubectl.sha256"), "{error}");
    }

    #[test]
    fn kubectl_is_downloaded_checked_against_the_pin_and_only_then_installed() {
        let plan = kubectl_plan(Path::new("/cache"), "linux/amd64").unwrap();
        let shown: Vec<String> = plan
            .iter()
            .map(|s| match s {
                Step::Run { cmd, .. } => cmd.to_string(),
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(
            shown,
            [
                "curl -fsSL --create-dirs -o /cache/kind-tools/kubectl-v1.36.5/kubectl.download https://dl.k8s.io/release/v1.36.5/bin/linux/amd64/kubectl",
                "sha256sum --check --strict - <<'EOF' ... EOF",
                "install -m 0755 /cache/kind-tools/kubectl-v1.36.5/kubectl.download /cache/kind-tools/kubectl-v1.36.5/kubectl",
            ]
        );
    }

    #[test]
    fn the_check_refuses_a_download_whose_content_differs_by_one_byte() {
        use super::super::host::{Host, SystemHost};
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("kubectl.download");
        std::fs::write(&file, b"kubectl").unwrap();
        // sha256 of the seven bytes `kubectl`.
        let sum = "7a7f09de08e3dc01c5bbf90657ecc83d5c2da9f5791f1ebe84132b95422878dc";
        let real = SystemHost
            .run(&Cmd::new("sha256sum", [file.display().to_string()]))
            .unwrap();
        assert_eq!(real.stdout.split_whitespace().next(), Some(sum), "{real:?}");
        assert!(
            SystemHost
                .run(&kubectl_check(sum, &file))
                .unwrap()
                .success()
        );
        std::fs::write(&file, b"kubectl!").unwrap();
        assert!(
            !SystemHost
                .run(&kubectl_check(sum, &file))
                .unwrap()
                .success()
        );
    }
}
