//! `cdcheck substrate install --substrate kind`: the kind substrate's tools fetched into the
//! binary cache, only through a verified channel. kind comes from the Go module proxy
//! (`go install`, checked against the Go checksum database); istioctl and kubectl need a
//! SHA-256 pinned in [`crate::versions`], and without one the install refuses and names
//! the command that verifies against the publisher's own checksum file instead.

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

/// The steps that put istioctl in the cache, or why they are refused.
pub fn istioctl_plan(cache: &Path) -> Result<Vec<Step>, ToolsError> {
    let Some(sum) = versions::ISTIO_ARCHIVE_SHA256 else {
        return Err(ToolsError::Unverified {
            tool: "istioctl",
            version: versions::ISTIOCTL,
            fix: super::doctor::istioctl_fix(),
        });
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

/// kubectl: no SHA-256 is pinned, so always refused with the command that checks the
/// `.sha256` published beside the binary.
pub fn kubectl_plan() -> Result<Vec<Step>, ToolsError> {
    Err(ToolsError::Unverified {
        tool: "kubectl",
        version: versions::KUBECTL,
        fix: super::doctor::kubectl_fix(),
    })
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
    fn without_a_pinned_checksum_istioctl_and_kubectl_are_refused_with_the_verified_command() {
        assert_eq!(
            versions::ISTIO_ARCHIVE_SHA256,
            None,
            "update this test with the pin"
        );
        let error = istioctl_plan(Path::new("/cache")).unwrap_err().to_string();
        assert!(
            error.starts_with("install istioctl 1.30.3: no SHA-256 of its download is pinned"),
            "{error}"
        );
        assert!(error.contains("sha256sum -c istio-1.30.3-"), "{error}");
        let error = kubectl_plan().unwrap_err().to_string();
        assert!(error.contains("kubectl.sha256"), "{error}");
    }
}
