//! istiod (`pilot-discovery`) out of cluster: its mesh config, its flags (every
//! listener on loopback) and its environment, for the local mesh.

use std::path::Path;

/// Loopback ports istiod listens on. Fixed, like a real install's: the proxies'
/// bootstraps and the relays name them, and one local mesh runs at a time.
pub const XDS_PLAINTEXT: u16 = 15010;
pub const XDS_SECURE: u16 = 15012;
pub const WEBHOOK: u16 = 15017;
pub const MONITORING: u16 = 15014;
pub const HTTP: u16 = 18080;
pub const CTRLZ: u16 = 19876;

/// The Kubernetes cluster id istiod and every proxy agree on.
pub const CLUSTER_ID: &str = "Kubernetes";
pub const TRUST_DOMAIN: &str = "cluster.local";

/// The mesh config. Automatic mutual TLS is on, as in a default install, when the pods run
/// Istio's sidecar (upstream's services); with stand-ins it is off, because their bare
/// Envoys (the agent's, the in-mesh client's) have no pilot-agent to serve the workload
/// certificates (`default`/`ROOTCA` over SDS) an mTLS cluster waits for.
/// No default metrics provider: it adds the `istio.stats` filter, which stock Envoy lacks.
pub fn mesh_config(auto_mtls: bool) -> String {
    format!(
        "rootNamespace: istio-system
trustDomain: {TRUST_DOMAIN}
enableAutoMtls: {auto_mtls}
accessLogFile: /dev/stdout
ingressService: istio-ingressgateway
ingressSelector: ingressgateway
defaultConfig:
  discoveryAddress: 127.0.0.1:{XDS_SECURE}
"
    )
}

/// `pilot-discovery discovery` arguments; every address on loopback (the defaults
/// are every interface).
pub fn args(kubeconfig: &Path, mesh_config: &Path) -> Vec<String> {
    let p = |path: &Path| path.display().to_string();
    vec![
        "discovery".into(),
        format!("--kubeconfig={}", p(kubeconfig)),
        format!("--meshConfig={}", p(mesh_config)),
        "--networksConfig=/nonexistent".into(),
        format!("--httpAddr=127.0.0.1:{HTTP}"),
        format!("--grpcAddr=127.0.0.1:{XDS_PLAINTEXT}"),
        format!("--secureGRPCAddr=127.0.0.1:{XDS_SECURE}"),
        format!("--httpsAddr=127.0.0.1:{WEBHOOK}"),
        format!("--monitoringAddr=127.0.0.1:{MONITORING}"),
        "--ctrlz_address=127.0.0.1".into(),
        format!("--ctrlz_port={CTRLZ}"),
        format!("--domain={TRUST_DOMAIN}"),
        format!("--clusterID={CLUSTER_ID}"),
        "--log_output_level=default:info".into(),
    ]
}

/// istiod's environment. Stock Envoy NACKs Istio's own `istio.metadata_exchange` and
/// `istio.alpn` filters, so istiod must not send them; a 10 ms debounce serves a
/// VirtualService change in tens of milliseconds instead of ~100 ms.
pub fn env() -> Vec<(&'static str, &'static str)> {
    vec![
        ("POD_NAMESPACE", "istio-system"),
        ("POD_NAME", "istiod-local"),
        ("REVISION", "default"),
        ("INJECT_ENABLED", "false"),
        ("PILOT_ENABLE_METADATA_EXCHANGE", "false"),
        ("PILOT_ENABLE_ALPN_FILTER", "false"),
        ("PILOT_DEBOUNCE_AFTER", "10ms"),
        ("PILOT_DEBOUNCE_MAX", "1s"),
        ("ISTIOD_CUSTOM_HOST", "istiod.istio-system.svc"),
    ]
}
