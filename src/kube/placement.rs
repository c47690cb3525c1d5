//! The high-availability verdict on placement: every HA Deployment asks the
//! scheduler to keep its replicas apart (a pod anti-affinity term on its own pod
//! labels over `kubernetes.io/hostname`) and its ready-to-serve pods really sit
//! on distinct nodes. The verdict is a list of findings; none means HA holds.

use std::collections::BTreeMap;
use std::fmt;

use ::kube::api::{Api, ListParams};
use ::kube::{Client, ResourceExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, PodAffinityTerm};

/// The topology key that makes "distinct nodes" of an anti-affinity term.
pub const HOSTNAME_TOPOLOGY_KEY: &str = "kubernetes.io/hostname";

#[derive(Debug, thiserror::Error)]
pub enum PlacementError {
    #[error("read Deployment {namespace}/{name}")]
    Deployment {
        namespace: String,
        name: String,
        #[source]
        source: ::kube::Error,
    },
    #[error("list the pods of {namespace}/{name}")]
    Pods {
        namespace: String,
        name: String,
        #[source]
        source: ::kube::Error,
    },
}

/// One way a Deployment falls short of high availability.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HaFinding {
    /// Fewer than two replicas asked for.
    TooFewReplicas { deployment: String, replicas: i32 },
    /// No pod anti-affinity term over `kubernetes.io/hostname` selecting the
    /// Deployment's own pods: nothing asks the scheduler to keep replicas apart.
    NoAntiAffinity { deployment: String },
    /// Not as many running, non-terminating pods as replicas.
    PodCount {
        deployment: String,
        replicas: i32,
        pods: usize,
    },
    /// A pod the scheduler has not placed.
    Unscheduled { deployment: String, pod: String },
    /// Two or more of the Deployment's pods on one node.
    SharedNode {
        deployment: String,
        node: String,
        pods: Vec<String>,
    },
}

impl fmt::Display for HaFinding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HaFinding::TooFewReplicas {
                deployment,
                replicas,
            } => write!(f, "{deployment} asks for {replicas} replica(s), not >= 2"),
            HaFinding::NoAntiAffinity { deployment } => write!(
                f,
                "{deployment} has no pod anti-affinity over {HOSTNAME_TOPOLOGY_KEY} on its own pods"
            ),
            HaFinding::PodCount {
                deployment,
                replicas,
                pods,
            } => write!(
                f,
                "{deployment} has {pods} pod(s) for {replicas} replica(s)"
            ),
            HaFinding::Unscheduled { deployment, pod } => {
                write!(f, "{deployment}: pod {pod} is not scheduled")
            }
            HaFinding::SharedNode {
                deployment,
                node,
                pods,
            } => write!(
                f,
                "{deployment} has {} pods on {node}: {pods:?}",
                pods.len()
            ),
        }
    }
}

fn term_selects(term: &PodAffinityTerm, labels: &BTreeMap<String, String>) -> bool {
    if term.topology_key != HOSTNAME_TOPOLOGY_KEY {
        return false;
    }
    let Some(selector) = &term.label_selector else {
        return false;
    };
    // Only matchLabels is honoured here; a term that needs matchExpressions to
    // select its pods is not what the pipeline renders and counts as absent.
    if selector
        .match_expressions
        .as_ref()
        .is_some_and(|e| !e.is_empty())
    {
        return false;
    }
    let wanted = selector.match_labels.clone().unwrap_or_default();
    !wanted.is_empty() && wanted.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// The spec half of the verdict: replicas >= 2 and an anti-affinity term
/// (required or preferred) over hostname that selects the Deployment's own pods.
pub fn spec_findings(deployment: &Deployment) -> Vec<HaFinding> {
    let name = deployment.name_any();
    let mut findings = Vec::new();
    let spec = deployment.spec.clone().unwrap_or_default();
    let replicas = spec.replicas.unwrap_or(1);
    if replicas < 2 {
        findings.push(HaFinding::TooFewReplicas {
            deployment: name.clone(),
            replicas,
        });
    }
    let labels = spec
        .template
        .metadata
        .and_then(|m| m.labels)
        .unwrap_or_default();
    let anti = spec
        .template
        .spec
        .and_then(|s| s.affinity)
        .and_then(|a| a.pod_anti_affinity);
    let kept_apart = anti.is_some_and(|anti| {
        let required = anti
            .required_during_scheduling_ignored_during_execution
            .unwrap_or_default();
        let preferred = anti
            .preferred_during_scheduling_ignored_during_execution
            .unwrap_or_default();
        required.iter().any(|t| term_selects(t, &labels))
            || preferred
                .iter()
                .any(|w| w.weight > 0 && term_selects(&w.pod_affinity_term, &labels))
    });
    if !kept_apart {
        findings.push(HaFinding::NoAntiAffinity { deployment: name });
    }
    findings
}

/// The placement half of the verdict: as many non-terminating pods as replicas,
/// each scheduled, no two on one node.
pub fn placement_findings(deployment: &Deployment, pods: &[Pod]) -> Vec<HaFinding> {
    let name = deployment.name_any();
    let replicas = deployment
        .spec
        .as_ref()
        .and_then(|s| s.replicas)
        .unwrap_or(1);
    let live: Vec<&Pod> = pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect();
    let mut findings = Vec::new();
    if live.len() != replicas.max(0) as usize {
        findings.push(HaFinding::PodCount {
            deployment: name.clone(),
            replicas,
            pods: live.len(),
        });
    }
    let mut by_node: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for pod in live {
        match pod.spec.as_ref().and_then(|s| s.node_name.clone()) {
            Some(node) if !node.is_empty() => by_node.entry(node).or_default().push(pod.name_any()),
            _ => findings.push(HaFinding::Unscheduled {
                deployment: name.clone(),
                pod: pod.name_any(),
            }),
        }
    }
    for (node, pods) in by_node {
        if pods.len() > 1 {
            findings.push(HaFinding::SharedNode {
                deployment: name.clone(),
                node,
                pods,
            });
        }
    }
    findings
}

/// The verdict for the named Deployments of `namespace`, as the API server has
/// them: both the spec and where their pods are. Empty when HA holds.
pub async fn check(
    client: &Client,
    namespace: &str,
    deployments: &[String],
) -> Result<Vec<HaFinding>, PlacementError> {
    let deployment_api: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    let pod_api: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let mut findings = Vec::new();
    for name in deployments {
        let deployment =
            deployment_api
                .get(name)
                .await
                .map_err(|source| PlacementError::Deployment {
                    namespace: namespace.into(),
                    name: name.clone(),
                    source,
                })?;
        findings.extend(spec_findings(&deployment));
        let selector = deployment
            .spec
            .as_ref()
            .and_then(|s| s.selector.match_labels.clone())
            .unwrap_or_default()
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",");
        let pods = pod_api
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(|source| PlacementError::Pods {
                namespace: namespace.into(),
                name: name.clone(),
                source,
            })?;
        findings.extend(placement_findings(&deployment, &pods.items));
    }
    Ok(findings)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment(affinity: serde_json::Value) -> Deployment {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "frontend"},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"app": "frontend"}},
                "template": {
                    "metadata": {"labels": {"app": "frontend"}},
                    "spec": {"containers": [{"name": "server"}], "affinity": affinity}
                }
            }
        }))
        .unwrap()
    }

    fn preferred(key: &str, app: &str) -> serde_json::Value {
        serde_json::json!({"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 100, "podAffinityTerm": {"topologyKey": key, "labelSelector": {"matchLabels": {"app": app}}}}
        ]}})
    }

    fn pod(name: &str, node: &str) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "spec": {"nodeName": node, "containers": [{"name": "server"}]}
        }))
        .unwrap()
    }

    #[test]
    fn a_preferred_term_on_its_own_pods_over_hostname_passes() {
        let d = deployment(preferred(HOSTNAME_TOPOLOGY_KEY, "frontend"));
        assert_eq!(spec_findings(&d), []);
    }

    #[test]
    fn no_affinity_another_app_or_another_key_is_a_finding() {
        for affinity in [
            serde_json::Value::Null,
            preferred(HOSTNAME_TOPOLOGY_KEY, "cartservice"),
            preferred("topology.kubernetes.io/zone", "frontend"),
        ] {
            let d = deployment(affinity.clone());
            assert_eq!(
                spec_findings(&d),
                [HaFinding::NoAntiAffinity {
                    deployment: "frontend".into()
                }],
                "{affinity}"
            );
        }
    }

    #[test]
    fn two_pods_on_one_node_is_a_finding_and_distinct_nodes_are_not() {
        let d = deployment(preferred(HOSTNAME_TOPOLOGY_KEY, "frontend"));
        assert_eq!(
            placement_findings(&d, &[pod("a", "node-1"), pod("b", "node-2")]),
            []
        );
        assert_eq!(
            placement_findings(&d, &[pod("a", "node-1"), pod("b", "node-1")]),
            [HaFinding::SharedNode {
                deployment: "frontend".into(),
                node: "node-1".into(),
                pods: vec!["a".into(), "b".into()],
            }]
        );
        assert_eq!(
            placement_findings(&d, &[pod("a", "node-1")]),
            [HaFinding::PodCount {
                deployment: "frontend".into(),
                replicas: 2,
                pods: 1
            }]
        );
    }
}
