//! kube-proxy's part on the local mesh: every Service's cluster IP reaches its ready
//! endpoints (NAT rules in the node's namespace, through which every pod's traffic passes),
//! and every pod's `/etc/hosts` names the Services as the cluster's DNS would
//! (`name` in its own namespace, `name.ns`, `name.ns.svc`, `name.ns.svc.cluster.local`).
//!
//! The rules are kube-proxy's iptables mode in miniature: per Service port a chain that
//! picks one ready endpoint at random and rewrites the destination; a pod calling its own
//! Service is masqueraded (else the answer would skip the rewrite); a Service address with
//! no endpoint is refused at once. Endpoints come from Kubernetes' own EndpointSlice
//! controller, as on a cluster.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::Api;
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use sha2::Digest;
use tokio::sync::watch;

use crate::kube::cache::{self, Change};

/// The Services as names see them: each cluster IP with its namespace and name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceNames {
    /// (namespace, name) → cluster IP.
    pub addresses: BTreeMap<(String, String), Ipv4Addr>,
}

impl ServiceNames {
    /// The `/etc/hosts` of a pod in `namespace` whose own name and address are given.
    pub fn hosts_file(&self, namespace: &str, hostname: &str, pod_ip: Ipv4Addr) -> String {
        let mut text =
            String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
        let _ = writeln!(text, "{pod_ip}\t{hostname}");
        // istiod runs on the node, not as a pod: the node relays its xDS and CA port.
        let _ = writeln!(
            text,
            "{}\t{}",
            super::netns::NETNS_ADDRESS,
            super::sidecar::ISTIOD_HOST
        );
        for ((service_namespace, name), ip) in &self.addresses {
            let qualified = format!("{name}.{service_namespace}");
            let _ = write!(text, "{ip}\t");
            if service_namespace == namespace {
                let _ = write!(text, "{name} ");
            }
            let _ = writeln!(
                text,
                "{qualified} {qualified}.svc {qualified}.svc.cluster.local"
            );
        }
        text
    }
}

/// One Service port's endpoints, as the rules route it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Route {
    namespace: String,
    service: String,
    cluster_ip: Ipv4Addr,
    port: i32,
    /// Ready endpoints: address and the port to rewrite to.
    endpoints: Vec<(Ipv4Addr, i32)>,
}

/// The Service routes of what the stores hold: TCP ports of Services with a cluster IP,
/// to the endpoints that are ready (or whose readiness is unknown, as kube-proxy does).
fn routes(
    services: &[std::sync::Arc<Service>],
    slices: &[std::sync::Arc<EndpointSlice>],
) -> Vec<Route> {
    let mut routes = Vec::new();
    for service in services {
        let namespace = service.namespace().unwrap_or_default();
        let name = service.name_any();
        let Some(spec) = service.spec.as_ref() else {
            continue;
        };
        let Some(cluster_ip) = spec
            .cluster_ip
            .as_deref()
            .and_then(|ip| ip.parse::<Ipv4Addr>().ok())
        else {
            continue;
        };
        let own_slices: Vec<&EndpointSlice> = slices
            .iter()
            .map(|s| s.as_ref())
            .filter(|s| {
                s.namespace().as_deref() == Some(namespace.as_str())
                    && s.labels().get("kubernetes.io/service-name") == Some(&name)
                    && s.address_type == "IPv4"
            })
            .collect();
        for port in spec.ports.iter().flatten() {
            if port.protocol.as_deref().unwrap_or("TCP") != "TCP" {
                continue;
            }
            let mut endpoints = BTreeSet::new();
            for slice in &own_slices {
                let Some(target) = slice
                    .ports
                    .iter()
                    .flatten()
                    .find(|p| p.name.as_deref().unwrap_or("") == port.name.as_deref().unwrap_or(""))
                    .and_then(|p| p.port)
                else {
                    continue;
                };
                for endpoint in slice.endpoints.iter().flatten() {
                    let ready = endpoint
                        .conditions
                        .as_ref()
                        .and_then(|c| c.ready)
                        .unwrap_or(true);
                    if !ready {
                        continue;
                    }
                    for address in &endpoint.addresses {
                        if let Ok(ip) = address.parse::<Ipv4Addr>() {
                            endpoints.insert((ip, target));
                        }
                    }
                }
            }
            routes.push(Route {
                namespace: namespace.clone(),
                service: name.clone(),
                cluster_ip,
                port: port.port,
                endpoints: endpoints.into_iter().collect(),
            });
        }
    }
    routes.sort_by(|a, b| {
        (&a.namespace, &a.service, a.port).cmp(&(&b.namespace, &b.service, b.port))
    });
    routes
}

/// A chain name of at most 28 characters (iptables' limit), stable for its key.
fn chain(prefix: &str, key: &str) -> String {
    let digest = sha2::Sha256::digest(key.as_bytes());
    let hex: String = digest[..6].iter().map(|b| format!("{b:02x}")).collect();
    format!("{prefix}-{hex}")
}

/// Mark of a connection from an endpoint to its own Service, masqueraded on its way out.
const HAIRPIN_MARK: &str = "0x4000/0x4000";

/// The `iptables-restore` input for the node's namespace: the whole nat and filter tables.
fn rules(routes: &[Route]) -> String {
    let mut nat = String::from(
        "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n:CDCHECK-SERVICES - [0:0]\n",
    );
    let mut body = String::new();
    for route in routes.iter().filter(|r| !r.endpoints.is_empty()) {
        let key = format!("{}/{}:{}", route.namespace, route.service, route.port);
        let service_chain = chain("CDSVC", &key);
        let _ = writeln!(nat, ":{service_chain} - [0:0]");
        let _ = writeln!(
            body,
            "-A CDCHECK-SERVICES -d {}/32 -p tcp -m tcp --dport {} -m comment --comment \"{key}\" -j {service_chain}",
            route.cluster_ip, route.port
        );
        let count = route.endpoints.len();
        for (index, (ip, target)) in route.endpoints.iter().enumerate() {
            let endpoint_chain = chain("CDSEP", &format!("{key}>{ip}:{target}"));
            let _ = writeln!(nat, ":{endpoint_chain} - [0:0]");
            let left = count - index;
            if left > 1 {
                let _ = writeln!(
                    body,
                    "-A {service_chain} -m statistic --mode random --probability {:.10} -j {endpoint_chain}",
                    1.0 / left as f64
                );
            } else {
                let _ = writeln!(body, "-A {service_chain} -j {endpoint_chain}");
            }
            let _ = writeln!(
                body,
                "-A {endpoint_chain} -s {ip}/32 -j MARK --set-xmark {HAIRPIN_MARK}"
            );
            let _ = writeln!(
                body,
                "-A {endpoint_chain} -p tcp -m tcp -j DNAT --to-destination {ip}:{target}"
            );
        }
    }
    nat.push_str("-A PREROUTING -j CDCHECK-SERVICES\n-A OUTPUT -j CDCHECK-SERVICES\n");
    let _ = writeln!(
        nat,
        "-A POSTROUTING -m mark --mark {HAIRPIN_MARK} -j MASQUERADE"
    );
    nat.push_str(&body);
    nat.push_str("COMMIT\n");
    // What was not rewritten reaches the node itself (the range is local there): refuse it,
    // rather than let a listener of the node's (the gateway binds every address) answer.
    let range = crate::names::SERVICE_CIDR;
    let _ = write!(
        nat,
        "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n\
         -A INPUT -d {range} -p tcp -j REJECT --reject-with tcp-reset\n\
         -A INPUT -d {range} -j REJECT\nCOMMIT\n"
    );
    nat
}

#[derive(Debug, thiserror::Error)]
pub enum ServicesError {
    #[error("run iptables-restore in the network namespace {netns}")]
    Spawn {
        netns: String,
        #[source]
        source: std::io::Error,
    },
    #[error("load the Service rules into {netns} with iptables-restore: {stderr}")]
    Restore { netns: String, stderr: String },
}

/// Replaces the node namespace's nat and filter tables with `text`.
fn restore(netns: &str, text: &str) -> Result<(), ServicesError> {
    use std::io::Write;
    let mut child = std::process::Command::new("ip")
        .args(["netns", "exec", netns, "iptables-restore"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|source| ServicesError::Spawn {
            netns: netns.to_string(),
            source,
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(text.as_bytes());
    }
    let output = child
        .wait_with_output()
        .map_err(|source| ServicesError::Spawn {
            netns: netns.to_string(),
            source,
        })?;
    if output.status.success() {
        Ok(())
    } else {
        Err(ServicesError::Restore {
            netns: netns.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        })
    }
}

fn names_of(services: &[std::sync::Arc<Service>]) -> ServiceNames {
    let addresses = services
        .iter()
        .filter_map(|service| {
            let ip = service
                .spec
                .as_ref()?
                .cluster_ip
                .as_deref()?
                .parse::<Ipv4Addr>()
                .ok()?;
            Some(((service.namespace()?, service.name_any()), ip))
        })
        .collect();
    ServiceNames { addresses }
}

/// Keeps the node's rules and the published names in step with the Services and
/// EndpointSlices until the watches end. The first rules are loaded before it returns the
/// receiver, so pods started after it find the Services that exist.
pub async fn run(client: Client, netns: String, names: watch::Sender<ServiceNames>) {
    let (services, service_changes) = cache::follow(
        Api::<Service>::all(client.clone()),
        watcher::Config::default(),
    );
    let (slices, slice_changes) = cache::follow(
        Api::<EndpointSlice>::all(client),
        watcher::Config::default(),
    );
    let mut changes = futures::stream::select(service_changes, slice_changes);
    let mut loaded = String::new();
    while let Some(change) = changes.next().await {
        if let Change::Error(e) = change {
            tracing::debug!("service watch: {e}");
            continue;
        }
        // A rollout changes slices many times a second: apply the last of a burst.
        tokio::time::sleep(Duration::from_millis(20)).await;
        while let Some(Some(_)) = futures::FutureExt::now_or_never(changes.next()) {}
        sync(&netns, &services, &slices, &names, &mut loaded).await;
    }
}

async fn sync(
    netns: &str,
    services: &Store<Service>,
    slices: &Store<EndpointSlice>,
    names: &watch::Sender<ServiceNames>,
    loaded: &mut String,
) {
    let service_list = services.state();
    let text = rules(&routes(&service_list, &slices.state()));
    if text != *loaded {
        let netns_name = netns.to_string();
        let to_load = text.clone();
        match tokio::task::spawn_blocking(move || restore(&netns_name, &to_load)).await {
            Ok(Ok(())) => *loaded = text,
            Ok(Err(e)) => tracing::warn!("failed to {}", crate::error_chain(&e)),
            Err(e) => tracing::warn!("failed to load the Service rules: {e}"),
        }
    }
    names.send_if_modified(|current| {
        let next = names_of(&service_list);
        let changed = *current != next;
        *current = next;
        changed
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort};
    use std::sync::Arc;

    fn service(namespace: &str, name: &str, ip: &str, port: i32) -> Arc<Service> {
        Arc::new(serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"clusterIP": ip, "ports": [{"name": "grpc", "port": port, "protocol": "TCP"}]}
        })).unwrap())
    }

    fn slice(
        namespace: &str,
        service: &str,
        endpoints: &[(&str, bool)],
        port: i32,
    ) -> Arc<EndpointSlice> {
        Arc::new(EndpointSlice {
            metadata: kube::api::ObjectMeta {
                name: Some(format!("{service}-abcde")),
                namespace: Some(namespace.into()),
                labels: Some(
                    [(
                        "kubernetes.io/service-name".to_string(),
                        service.to_string(),
                    )]
                    .into(),
                ),
                ..Default::default()
            },
            address_type: "IPv4".into(),
            endpoints: Some(
                endpoints
                    .iter()
                    .map(|(ip, ready)| Endpoint {
                        addresses: vec![ip.to_string()],
                        conditions: Some(EndpointConditions {
                            ready: Some(*ready),
                            ..Default::default()
                        }),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ports: Some(vec![EndpointPort {
                name: Some("grpc".into()),
                port: Some(port),
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
        })
    }

    #[test]
    fn a_service_port_routes_to_its_ready_endpoints_only() {
        let services = [service("dev", "productcatalogservice", "10.96.0.61", 3550)];
        let slices = [slice(
            "dev",
            "productcatalogservice",
            &[
                ("10.244.1.4", true),
                ("10.244.1.8", false),
                ("10.244.1.9", true),
            ],
            3550,
        )];
        let routes = routes(&services, &slices);
        assert_eq!(routes.len(), 1);
        assert_eq!(
            routes[0].endpoints,
            [
                ("10.244.1.4".parse().unwrap(), 3550),
                ("10.244.1.9".parse().unwrap(), 3550)
            ]
        );
        let text = rules(&routes);
        assert!(
            text.contains("-d 10.96.0.61/32 -p tcp -m tcp --dport 3550"),
            "{text}"
        );
        assert!(text.contains("--probability 0.5000000000"), "{text}");
        assert!(
            text.contains("DNAT --to-destination 10.244.1.4:3550"),
            "{text}"
        );
        assert!(
            text.contains("DNAT --to-destination 10.244.1.9:3550"),
            "{text}"
        );
        assert!(
            !text.contains("10.244.1.8"),
            "a not-ready endpoint gets traffic: {text}"
        );
        // Chain names stay within iptables' 28 characters.
        for line in text.lines().filter(|l| l.starts_with(':')) {
            let name = line[1..].split(' ').next().unwrap();
            assert!(name.len() <= 28, "{name}");
        }
    }

    #[test]
    fn a_service_without_endpoints_has_no_route_and_is_refused() {
        let services = [service("dev", "cartservice", "10.96.0.63", 7070)];
        let text = rules(&routes(&services, &[]));
        assert!(!text.contains("10.96.0.63"), "{text}");
        assert!(text.contains("-A INPUT -d 10.96.0.0/16 -p tcp -j REJECT --reject-with tcp-reset"));
    }

    #[test]
    fn hosts_name_own_namespace_services_bare_and_others_qualified() {
        let names = names_of(&[
            service("dev", "frontend", "10.96.0.64", 80),
            service("prod", "frontend", "10.96.0.90", 80),
        ]);
        let hosts = names.hosts_file("dev", "frontend-abc", "10.244.1.7".parse().unwrap());
        assert!(hosts.contains("10.244.1.7\tfrontend-abc\n"), "{hosts}");
        assert!(
            hosts.contains("10.244.0.1\tistiod.istio-system.svc\n"),
            "{hosts}"
        );
        assert!(
            hosts.contains("10.96.0.64\tfrontend frontend.dev frontend.dev.svc frontend.dev.svc.cluster.local\n"),
            "{hosts}"
        );
        assert!(
            hosts.contains(
                "10.96.0.90\tfrontend.prod frontend.prod.svc frontend.prod.svc.cluster.local\n"
            ),
            "{hosts}"
        );
    }
}
