//! Node drain as `kubectl drain` does it: cordon, then evict every pod on the node
//! through the eviction API, retrying while a PodDisruptionBudget refuses (HTTP 429),
//! until the node holds no pod of a controller.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use ::kube::api::{Api, EvictParams, ListParams};
use ::kube::{Client, Config, ResourceExt};
use k8s_openapi::api::core::v1::{Node, Pod};

#[derive(Debug, thiserror::Error)]
pub enum DrainError {
    #[error("cordon node {node}")]
    Cordon {
        node: String,
        #[source]
        source: ::kube::Error,
    },
    #[error("list the pods on node {node}")]
    List {
        node: String,
        #[source]
        source: ::kube::Error,
    },
    #[error("evict pod {namespace}/{name}")]
    Evict {
        namespace: String,
        name: String,
        #[source]
        source: ::kube::Error,
    },
    #[error("drain node {node} within {waited:?}: still holding {left:?}")]
    Timeout {
        node: String,
        waited: Duration,
        left: Vec<String>,
    },
}

/// What a drain did.
#[derive(Clone, Debug, Default)]
pub struct DrainReport {
    pub node: String,
    /// `namespace/name` of every evicted pod.
    pub evicted: Vec<String>,
    /// Evictions a PodDisruptionBudget refused (429) before they succeeded, per pod.
    pub refusals: BTreeMap<String, u32>,
    pub took: Duration,
}

fn is_daemon_or_mirror(pod: &Pod) -> bool {
    pod.owner_references().iter().any(|o| o.kind == "DaemonSet")
        || pod
            .annotations()
            .contains_key("kubernetes.io/config.mirror")
}

/// Cordons `node` and evicts its pods, honouring every PodDisruptionBudget.
/// With a non-empty `namespaces`, only pods of those namespaces are evicted
/// (so a test drains its own workloads on a shared cluster).
///
/// Takes the client configuration rather than a client: kube's default client
/// retries HTTP 429 for minutes, and a PDB's refusal is a 429 this function must
/// see at once to report (and pace) it itself.
pub async fn drain(
    config: &Config,
    node: &str,
    namespaces: &[&str],
    timeout: Duration,
) -> Result<DrainReport, DrainError> {
    let in_scope = |p: &Pod| {
        namespaces.is_empty() || namespaces.contains(&p.namespace().unwrap_or_default().as_str())
    };
    let started = Instant::now();
    let mut config = config.clone();
    config.default_retry = false;
    let client = &Client::try_from(config).map_err(|source| DrainError::Cordon {
        node: node.into(),
        source,
    })?;
    let nodes: Api<Node> = Api::all(client.clone());
    nodes
        .cordon(node)
        .await
        .map_err(|source| DrainError::Cordon {
            node: node.into(),
            source,
        })?;
    let pods: Api<Pod> = Api::all(client.clone());
    let on_node = ListParams::default().fields(&format!("spec.nodeName={node}"));
    let list = pods
        .list(&on_node)
        .await
        .map_err(|source| DrainError::List {
            node: node.into(),
            source,
        })?;
    let victims: Vec<Pod> = list
        .items
        .into_iter()
        .filter(|p| {
            in_scope(p) && !is_daemon_or_mirror(p) && p.metadata.deletion_timestamp.is_none()
        })
        .collect();
    let evictions = victims.iter().map(|pod| {
        let ns = pod.namespace().unwrap_or_default();
        let name = pod.name_any();
        let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
        async move {
            let mut refusals = 0u32;
            loop {
                match api.evict(&name, &EvictParams::default()).await {
                    Ok(_) => return Ok((format!("{ns}/{name}"), refusals)),
                    Err(::kube::Error::Api(s)) if s.code == 404 => {
                        return Ok((format!("{ns}/{name}"), refusals));
                    }
                    // The PDB allows no disruption right now: wait and retry, as kubectl drain does.
                    Err(::kube::Error::Api(s)) if s.code == 429 => {
                        refusals += 1;
                        if started.elapsed() > timeout {
                            return Err(DrainError::Timeout {
                                node: String::new(),
                                waited: timeout,
                                left: vec![format!(
                                    "{ns}/{name} (refused by a PodDisruptionBudget)"
                                )],
                            });
                        }
                        tokio::time::sleep(Duration::from_millis(250)).await;
                    }
                    Err(source) => {
                        return Err(DrainError::Evict {
                            namespace: ns.clone(),
                            name: name.clone(),
                            source,
                        });
                    }
                }
            }
        }
    });
    let results = futures::future::join_all(evictions).await;
    let mut report = DrainReport {
        node: node.into(),
        ..Default::default()
    };
    for result in results {
        match result {
            Ok((pod, refusals)) => {
                if refusals > 0 {
                    report.refusals.insert(pod.clone(), refusals);
                }
                report.evicted.push(pod);
            }
            Err(DrainError::Timeout { waited, left, .. }) => {
                return Err(DrainError::Timeout {
                    node: node.into(),
                    waited,
                    left,
                });
            }
            Err(e) => return Err(e),
        }
    }
    // Wait until the evicted pods are gone from the node.
    loop {
        let left: Vec<String> = pods
            .list(&on_node)
            .await
            .map_err(|source| DrainError::List {
                node: node.into(),
                source,
            })?
            .items
            .iter()
            .filter(|p| in_scope(p) && !is_daemon_or_mirror(p))
            .map(|p| format!("{}/{}", p.namespace().unwrap_or_default(), p.name_any()))
            .collect();
        if left.is_empty() {
            break;
        }
        if started.elapsed() > timeout {
            return Err(DrainError::Timeout {
                node: node.into(),
                waited: timeout,
                left,
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    report.took = started.elapsed();
    Ok(report)
}

/// Makes `node` schedulable again.
pub async fn uncordon(client: &Client, node: &str) -> Result<(), DrainError> {
    let nodes: Api<Node> = Api::all(client.clone());
    nodes
        .uncordon(node)
        .await
        .map(|_| ())
        .map_err(|source| DrainError::Cordon {
            node: node.into(),
            source,
        })
}
