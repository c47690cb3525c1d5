//! Envoy as an Istio proxy without pilot-agent: the bootstrap that gives it Istio's
//! node identity and an ADS stream to istiod's secure port, authenticated with the
//! pod's service-account token, as pilot-agent would.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::Path;

use serde_json::{Value, json};

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
    } = pod;
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
        "static_resources": { "clusters": [xds, sds] }
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
}
