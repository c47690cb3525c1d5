//! The agent's Pod and arguments for one environment: pure functions, so what the runner
//! deploys can be read and tested without a cluster. The pod asks for its sidecar
//! with the label `sidecar.istio.io/inject: "true"` (whatever its namespace's
//! `istio-injection` says; the local mesh injects by that label only), asks Istio to record the outbound clusters'
//! stats and to start the app only once the proxy is up, and runs `cdcheck agent`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;

use crate::catalog;

/// `proxy.istio.io/config` for the agent: outbound cluster stats (off by default in a
/// sidecar) and no request before the proxy is ready.
pub const PROXY_CONFIG: &str = "holdApplicationUntilProxyStarts: true\nproxyStatsMatcher:\n  inclusionPrefixes:\n    - cluster.outbound\n";

/// What the agent's image name contains: the local mesh's pod runner runs `cdcheck agent`
/// for a container whose image has it.
pub const IMAGE_MARK: &str = "cdcheck-agent";

/// The agent image `agent/Dockerfile` builds for this version of cdcheck
/// ([`crate::versions::AGENT_IMAGE`]; `--agent-image` names another).
pub fn default_image() -> String {
    crate::versions::AGENT_IMAGE.to_string()
}

/// The host of a Service in the mesh.
fn host(service: &str, namespace: &str) -> String {
    format!("{service}.{namespace}.svc.cluster.local")
}

/// `cdcheck agent`'s arguments in `namespace`: `requests` GetAds with `userid: session`
/// and as many without, then a gRPC health check of every backend's Service.
pub fn args(namespace: &str, session: &str, requests: u32) -> Vec<String> {
    let mut args = vec![
        "--ads".to_string(),
        format!("http://{}:9555", host("adservice", namespace)),
        "--batch".to_string(),
        format!("{session}={requests}"),
        "--batch".to_string(),
        format!("-={requests}"),
    ];
    for workload in catalog::all() {
        if workload.grpc_health_port().is_none() {
            continue;
        }
        let Some(service) = workload
            .services
            .iter()
            .find(|s| s.port_name.starts_with("grpc"))
        else {
            continue;
        };
        args.push("--health".to_string());
        // The empty service name is what the kubelet's gRPC probe asks about.
        args.push(format!(
            "=http://{}:{}",
            host(service.service_name, namespace),
            service.port
        ));
    }
    args
}

/// The agent's Pod: `image` running `cdcheck agent ARGS`, never restarted (its records are
/// read from the pod log), labelled with `labels`.
pub fn pod(
    namespace: &str,
    name: &str,
    image: &str,
    args: &[String],
    labels: &BTreeMap<String, String>,
) -> Pod {
    let mut all = labels.clone();
    all.insert("app".to_string(), "cdcheck-agent".to_string());
    all.insert("sidecar.istio.io/inject".to_string(), "true".to_string());
    serde_json::from_value(serde_json::json!({
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": all,
            "annotations": {"proxy.istio.io/config": PROXY_CONFIG},
        },
        "spec": {
            "restartPolicy": "Never",
            "containers": [{
                "name": "agent",
                "image": image,
                "imagePullPolicy": "IfNotPresent",
                "args": args,
                "resources": {"requests": {"cpu": "50m", "memory": "32Mi"}},
                "securityContext": {
                    "runAsNonRoot": true,
                    "allowPrivilegeEscalation": false,
                    "readOnlyRootFilesystem": true,
                    "capabilities": {"drop": ["ALL"]},
                },
            }],
        },
    }))
    .expect("a Pod object")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agent_asks_for_the_session_batch_a_mainline_batch_and_every_backends_health() {
        let args = args("dev", "3f1c", 50);
        assert_eq!(
            args[..6],
            [
                "--ads",
                "http://adservice.dev.svc.cluster.local:9555",
                "--batch",
                "3f1c=50",
                "--batch",
                "-=50"
            ]
        );
        let health: Vec<&String> = args
            .iter()
            .skip(6)
            .filter(|a| a.as_str() != "--health")
            .collect();
        // Every gRPC backend of Online Boutique (the frontend and redis are not gRPC).
        assert_eq!(health.len(), 9, "{health:#?}");
        assert!(health.contains(&&"=http://emailservice.dev.svc.cluster.local:5000".to_string()));
        assert!(
            !health
                .iter()
                .any(|h| h.contains("frontend") || h.contains("redis"))
        );
        for value in args.iter().skip(6).filter(|a| a.as_str() != "--health") {
            crate::agent::parse_health(value).unwrap();
        }
    }

    #[test]
    fn the_pod_asks_istio_for_its_sidecar_and_outbound_stats() {
        let pod = pod(
            "dev",
            "cdcheck-agent",
            "cdcheck-agent:dev",
            &["--batch".into(), "s=1".into()],
            &BTreeMap::from([("cdcheck.io/run".into(), "abc".into())]),
        );
        let value = serde_json::to_value(&pod).unwrap();
        assert_eq!(
            value["metadata"]["labels"]["sidecar.istio.io/inject"],
            "true"
        );
        assert_eq!(value["metadata"]["labels"]["cdcheck.io/run"], "abc");
        let config: serde_json::Value = serde_saphyr::from_str(
            value["metadata"]["annotations"]["proxy.istio.io/config"]
                .as_str()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(
            config["proxyStatsMatcher"]["inclusionPrefixes"],
            serde_json::json!(["cluster.outbound"])
        );
        assert_eq!(config["holdApplicationUntilProxyStarts"], true);
        assert_eq!(value["spec"]["restartPolicy"], "Never");
        assert_eq!(
            value["spec"]["containers"][0]["args"],
            serde_json::json!(["--batch", "s=1"])
        );
    }
}
