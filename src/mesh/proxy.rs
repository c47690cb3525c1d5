//! Envoy as an Istio proxy without pilot-agent, for the bare sidecars of the stand-in
//! mesh (the agent's, the in-mesh client's; the gateway and Istio's sidecars run under
//! pilot-agent): the bootstrap that gives it Istio's node identity and an ADS stream to
//! istiod's secure port, authenticated with the pod's service-account token, as
//! pilot-agent would.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::Path;

use serde_json::{Value, json};

use super::inject::StatsMatcher;
use super::istiod::{CLUSTER_ID, TRUST_DOMAIN};

/// Envoy's admin port in every proxy pod (on the pod's own address).
pub const ADMIN_PORT: u16 = 15000;

/// Which proxy a pod runs: Istio's `proxy router` (a gateway) or `proxy sidecar`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyKind {
    Router,
    Sidecar,
}

impl ProxyKind {
    /// From an `istio/proxyv2` container's args (`proxy router ...`).
    pub fn from_args(args: &[String]) -> ProxyKind {
        if args.iter().any(|a| a == "router") {
            ProxyKind::Router
        } else {
            ProxyKind::Sidecar
        }
    }

    fn node_type(self) -> &'static str {
        match self {
            ProxyKind::Router => "router",
            ProxyKind::Sidecar => "sidecar",
        }
    }
}

/// What the bootstrap needs to know about the pod.
pub struct ProxyPod<'a> {
    pub kind: ProxyKind,
    pub name: &'a str,
    pub namespace: &'a str,
    pub ip: Ipv4Addr,
    pub labels: &'a BTreeMap<String, String>,
    pub service_account: &'a str,
    /// The owning workload (Deployment name), as Istio reports it.
    pub workload: &'a str,
    /// Labels istiod adds to the pod's (`STATIC_LABELS`): how an injected proxy's own
    /// `Sidecar` resource selects it alone.
    pub static_labels: BTreeMap<String, String>,
    /// The pod's `proxyStatsMatcher`, for a sidecar: what it records beyond Istio's own stats.
    pub stats: Option<&'a StatsMatcher>,
}

/// Stats every Istio proxy records (pilot-agent's required inclusion prefixes, and the
/// `reporter=`, `component` and `istio` prefixes of its bootstrap): a sidecar records
/// nothing else unless its pod's `proxyStatsMatcher` asks, as `cluster.outbound` does for
/// the agent. Without this, the local mesh would count what a real sidecar does not.
const ISTIO_STATS_PREFIXES: [&str; 8] = [
    "reporter=",
    "cluster_manager",
    "listener_manager",
    "server",
    "cluster.xds-grpc",
    "wasm",
    "component",
    "istio",
];

/// Istio's stats tags for the stats the local mesh reads: the cluster's name (istiod gives
/// every cluster an `alt_stat_name` ending in `;`, so the tag is everything up to it) and
/// the response code. Envoy's default tags would cut `outbound|9555||adservice.dev.svc...`
/// at its first dot.
fn stats_config(stats: Option<&StatsMatcher>) -> Value {
    let mut config = json!({
        "use_all_default_tags": false,
        "stats_tags": [
            { "tag_name": "cluster_name", "regex": r"^cluster(\.(.+);)" },
            { "tag_name": "response_code", "regex": r"_rq(_(\d{3}))$" },
            { "tag_name": "response_code_class", "regex": r"_rq(_(\dxx))$" },
        ],
    });
    if let Some(stats) = stats {
        let mut patterns: Vec<Value> = ISTIO_STATS_PREFIXES
            .iter()
            .map(|p| p.to_string())
            .chain(stats.inclusion_prefixes.iter().cloned())
            .map(|p| json!({ "prefix": p }))
            .collect();
        patterns.extend(
            stats
                .inclusion_suffixes
                .iter()
                .map(|s| json!({ "suffix": s })),
        );
        patterns.extend(
            stats
                .inclusion_regexps
                .iter()
                .map(|r| json!({ "safe_regex": { "regex": r } })),
        );
        config["stats_matcher"] = json!({ "inclusion_list": { "patterns": patterns } });
    }
    config
}

/// The bootstrap: node identity and metadata istiod reads, an ADS stream over TLS to
/// istiod (through the unix socket `xds_socket` the runner relays to its secure port),
/// the token in the stream's `authorization` metadata, and the `sds-grpc` cluster
/// istiod's TLS configs name (nothing serves it: credentials for gateways come over ADS).
pub fn bootstrap(
    pod: &ProxyPod<'_>,
    version: &str,
    xds_socket: &Path,
    root_cert: &Path,
    token: &str,
) -> Value {
    let ProxyPod {
        kind,
        name,
        namespace,
        ip,
        labels,
        service_account,
        workload,
        static_labels,
        stats,
    } = pod;
    let mut labels = (*labels).clone();
    labels.extend(static_labels.clone());
    let mut metadata = json!({
        "ISTIO_VERSION": version,
        "NAMESPACE": namespace,
        "NAME": name,
        "POD_NAME": name,
        "CLUSTER_ID": CLUSTER_ID,
        "MESH_ID": TRUST_DOMAIN,
        "LABELS": labels,
        "WORKLOAD_NAME": workload,
        "OWNER": format!("kubernetes://apis/apps/v1/namespaces/{namespace}/deployments/{workload}"),
        "STATIC_LABELS": static_labels,
        "SERVICE_ACCOUNT": service_account,
        "INSTANCE_IPS": ip.to_string(),
        "PROXY_CONFIG": { "discoveryAddress": "istiod.istio-system.svc:15012" },
    });
    if *kind == ProxyKind::Sidecar {
        // No iptables: listeners are explicit (a Sidecar resource's egress `bind`).
        metadata["INTERCEPTION_MODE"] = json!("NONE");
    }
    let http2 = json!({
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": { "http2_protocol_options": {} }
        }
    });
    let pipe = |path: &Path| json!({ "pipe": { "path": path.display().to_string() } });
    let static_cluster = |name: &str, address: Value| {
        json!({
            "name": name,
            "type": "STATIC",
            "connect_timeout": "1s",
            "typed_extension_protocol_options": http2.clone(),
            "load_assignment": {
                "cluster_name": name,
                "endpoints": [{ "lb_endpoints": [{ "endpoint": { "address": address } }] }]
            }
        })
    };
    let mut xds = static_cluster("xds-grpc", pipe(xds_socket));
    xds["transport_socket"] = json!({
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "sni": "istiod.istio-system.svc",
            "common_tls_context": {
                "alpn_protocols": ["h2"],
                "validation_context": { "trusted_ca": { "filename": root_cert.display().to_string() } }
            }
        }
    });
    let sds = static_cluster("sds-grpc", pipe(&xds_socket.with_extension("sds-unused")));
    json!({
        "node": {
            "id": format!("{}~{ip}~{name}.{namespace}~{namespace}.svc.cluster.local", kind.node_type()),
            "cluster": format!("{workload}.{namespace}"),
            "metadata": metadata,
        },
        "admin": {
            "address": { "socket_address": { "address": ip.to_string(), "port_value": ADMIN_PORT } }
        },
        "dynamic_resources": {
            "ads_config": {
                "api_type": "GRPC",
                "transport_api_version": "V3",
                "set_node_on_first_message_only": true,
                "grpc_services": [{
                    "envoy_grpc": { "cluster_name": "xds-grpc" },
                    "initial_metadata": [{ "key": "authorization", "value": format!("Bearer {token}") }]
                }]
            },
            "cds_config": { "ads": {}, "resource_api_version": "V3" },
            "lds_config": { "ads": {}, "resource_api_version": "V3" }
        },
        "static_resources": { "clusters": [xds, sds] },
        "stats_config": stats_config(stats.filter(|_| *kind == ProxyKind::Sidecar)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_node_id_has_istios_four_parts() {
        let labels = BTreeMap::from([("istio".to_string(), "ingressgateway".to_string())]);
        let pod = ProxyPod {
            kind: ProxyKind::Router,
            name: "gw-1",
            namespace: "istio-system",
            ip: Ipv4Addr::new(10, 244, 0, 9),
            labels: &labels,
            service_account: "gw",
            workload: "istio-ingressgateway",
            static_labels: BTreeMap::new(),
            stats: None,
        };
        let b = bootstrap(
            &pod,
            "1.30.3",
            Path::new("/x.sock"),
            Path::new("/r.pem"),
            "t",
        );
        assert_eq!(
            b["node"]["id"],
            "router~10.244.0.9~gw-1.istio-system~istio-system.svc.cluster.local"
        );
        assert_eq!(b["node"]["metadata"]["LABELS"]["istio"], "ingressgateway");
        assert!(b["node"]["metadata"].get("INTERCEPTION_MODE").is_none());
        let sidecar = ProxyPod {
            kind: ProxyKind::Sidecar,
            ..pod
        };
        let b = bootstrap(
            &sidecar,
            "1.30.3",
            Path::new("/x.sock"),
            Path::new("/r.pem"),
            "t",
        );
        assert_eq!(b["node"]["metadata"]["INTERCEPTION_MODE"], "NONE");
        assert!(b["node"]["id"].as_str().unwrap().starts_with("sidecar~"));
    }

    #[test]
    fn a_sidecar_records_istios_stats_plus_what_its_pod_asks_with_istios_cluster_tag() {
        let labels = BTreeMap::new();
        let matcher = StatsMatcher {
            inclusion_prefixes: vec!["cluster.outbound".into()],
            ..Default::default()
        };
        let pod = ProxyPod {
            kind: ProxyKind::Sidecar,
            name: "agent",
            namespace: "dev",
            ip: Ipv4Addr::new(10, 244, 1, 2),
            labels: &labels,
            service_account: "default",
            workload: "agent",
            static_labels: BTreeMap::from([("cdcheck.io/sidecar-for".into(), "u1".into())]),
            stats: Some(&matcher),
        };
        let b = bootstrap(&pod, "1.30.3", Path::new("/x"), Path::new("/r"), "t");
        let stats = &b["stats_config"];
        assert_eq!(stats["use_all_default_tags"], false);
        let cluster_tag = stats["stats_tags"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["tag_name"] == "cluster_name")
            .unwrap();
        // istiod's `alt_stat_name` ends the cluster's name with `;`.
        let regex = regex::Regex::new(cluster_tag["regex"].as_str().unwrap()).unwrap();
        let name = "cluster.outbound|9555||adservice.dev.svc.cluster.local;.upstream_rq_total";
        assert_eq!(
            &regex.captures(name).unwrap()[2],
            "outbound|9555||adservice.dev.svc.cluster.local"
        );
        let prefixes: Vec<&str> = stats["stats_matcher"]["inclusion_list"]["patterns"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|p| p["prefix"].as_str())
            .collect();
        assert!(prefixes.contains(&"cluster.outbound"), "{prefixes:?}");
        assert!(prefixes.contains(&"cluster.xds-grpc"), "{prefixes:?}");
        assert_eq!(
            b["node"]["metadata"]["STATIC_LABELS"]["cdcheck.io/sidecar-for"],
            "u1"
        );
        assert_eq!(
            b["node"]["metadata"]["LABELS"]["cdcheck.io/sidecar-for"],
            "u1"
        );
        // A gateway records everything, as before.
        let router = ProxyPod {
            kind: ProxyKind::Router,
            ..pod
        };
        let b = bootstrap(&router, "1.30.3", Path::new("/x"), Path::new("/r"), "t");
        assert!(b["stats_config"].get("stats_matcher").is_none());
    }
}
