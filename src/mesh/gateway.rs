//! The ingress gateway as a real install has it: a Deployment of Istio's proxy
//! (`proxy router`) labelled `istio: ingressgateway` in `istio-system`, its service
//! account with read access to the namespace's secrets (what istiod checks before it
//! serves a `credentialName` over SDS), and a NodePort Service on 30080/30443. The pod
//! runner runs it with Istio's pilot-agent, as the proxyv2 image does.

use serde_json::{Value, json};

/// NodePorts of the gateway Service; the host reaches them on 127.0.0.1, as kind's
/// port mappings (kind-config.yaml) expose them.
pub const HTTP_NODE_PORT: u16 = 30080;
pub const HTTPS_NODE_PORT: u16 = 30443;
/// The gateway's container ports. Not Istio's 8080/8443: every pod shares one network
/// namespace here, and the frontend stand-ins bind 8080 on their own addresses, which
/// a listener on every address of the same port would conflict with.
pub const HTTP_TARGET_PORT: u16 = 18080;
pub const HTTPS_TARGET_PORT: u16 = 18443;

pub const NAMESPACE: &str = "istio-system";
pub const NAME: &str = "istio-ingressgateway";
const SERVICE_ACCOUNT: &str = "istio-ingressgateway-service-account";

/// Every object of the gateway, in apply order.
pub fn objects(istio_version: &str) -> Vec<Value> {
    let labels = json!({ "app": NAME, "istio": "ingressgateway" });
    vec![
        json!({
            "apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": { "name": SERVICE_ACCOUNT, "namespace": NAMESPACE, "labels": labels }
        }),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": { "name": "istio-ingressgateway-sds", "namespace": NAMESPACE },
            "rules": [{ "apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "watch", "list"] }]
        }),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": { "name": "istio-ingressgateway-sds", "namespace": NAMESPACE },
            "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "istio-ingressgateway-sds" },
            "subjects": [{ "kind": "ServiceAccount", "name": SERVICE_ACCOUNT }]
        }),
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": { "name": NAME, "namespace": NAMESPACE, "labels": labels },
            "spec": {
                "type": "NodePort",
                "selector": labels,
                "ports": [
                    { "name": "http2", "port": 80, "targetPort": HTTP_TARGET_PORT, "nodePort": HTTP_NODE_PORT },
                    { "name": "https", "port": 443, "targetPort": HTTPS_TARGET_PORT, "nodePort": HTTPS_NODE_PORT }
                ]
            }
        }),
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": { "name": NAME, "namespace": NAMESPACE, "labels": labels },
            "spec": {
                "replicas": 1,
                "selector": { "matchLabels": labels },
                "template": {
                    "metadata": { "labels": labels },
                    "spec": {
                        "serviceAccountName": SERVICE_ACCOUNT,
                        "terminationGracePeriodSeconds": 5,
                        "containers": [{
                            "name": "istio-proxy",
                            "image": format!("docker.io/istio/proxyv2:{istio_version}"),
                            "args": ["proxy", "router", "--domain", "$(POD_NAMESPACE).svc.cluster.local"],
                            "ports": [
                                { "name": "http2", "containerPort": HTTP_TARGET_PORT },
                                { "name": "https", "containerPort": HTTPS_TARGET_PORT }
                            ],
                            // Istio's gateway readiness: pilot-agent's, once Envoy has its
                            // configuration.
                            "readinessProbe": {
                                "httpGet": { "path": "/healthz/ready", "port": super::sidecar::READY_PORT },
                                "periodSeconds": 1,
                                "failureThreshold": 3
                            }
                        }]
                    }
                }
            }
        }),
    ]
}
