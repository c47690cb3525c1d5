//! Node drain and its verdict. [`drain`] does what `kubectl drain` does: cordon,
//! then evict every pod on the node through the eviction API, retrying while a
//! PodDisruptionBudget refuses (HTTP 429), until the pods are gone.
//! [`drain_and_judge`] watches the namespace's pods through the drain
//! ([`super::pod_watch`]) and
//! returns [`DrainFinding`]s: an app that had a pod on the node and fell below
//! its ready floor at any moment, or an evicted pod the watch never saw go.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::{Duration, Instant};

use ::kube::api::{Api, DeleteParams, EvictParams, ListParams};
use ::kube::core::Status;
use ::kube::runtime::wait::{await_condition, conditions};
use ::kube::{Client, Config, ResourceExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::pod_watch::{Observed, PodWatch, PodWatchError};

/// The pod label that names the app (the Online Boutique convention).
pub const APP_LABEL: &str = "app";

#[derive(Debug, thiserror::Error)]
pub enum DrainError {
    #[error("build a client that does not retry HTTP 429")]
    Client {
        #[source]
        source: ::kube::Error,
    },
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
    #[error("delete pod {namespace}/{name}")]
    Delete {
        namespace: String,
        name: String,
        #[source]
        source: ::kube::Error,
    },
    #[error("wait for the pods of node {node} to go")]
    WaitGone {
        node: String,
        #[source]
        source: ::kube::runtime::wait::Error,
    },
    #[error("drain node {node} within {waited:?}: still holding {left:?}")]
    Timeout {
        node: String,
        waited: Duration,
        left: Vec<String>,
    },
    #[error("read the ready floors of namespace {namespace}")]
    Floors {
        namespace: String,
        #[source]
        source: ::kube::Error,
    },
    #[error("watch the pods through the drain")]
    PodWatch(#[from] PodWatchError),
}

/// How the pods leave the node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DrainMethod {
    /// The eviction API, which honours PodDisruptionBudgets (what `kubectl drain` does).
    #[default]
    Evict,
    /// Plain DELETE of every pod, which no PodDisruptionBudget can stop: what a
    /// careless pipeline does, kept as a negative control for the verdict.
    Delete,
}

/// What a drain did.
#[derive(Clone, Debug, Default)]
pub struct DrainReport {
    pub node: String,
    pub method: DrainMethod,
    /// `namespace/name` of every pod evicted (or deleted, with [`DrainMethod::Delete`]).
    pub evicted: Vec<String>,
    /// Evictions a PodDisruptionBudget refused (a 429 whose Status names the
    /// disruption budget) before they succeeded, per pod.
    pub refusals: BTreeMap<String, u32>,
    /// Evictions refused with a 429 that does not name a disruption budget
    /// (API priority and fairness, a rate limit), per pod.
    pub throttled: BTreeMap<String, u32>,
    pub took: Duration,
}

/// Why an eviction was answered 429.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The PodDisruptionBudget allows no disruption now (or is still being processed).
    DisruptionBudget(String),
    /// Any other 429: throttling, not the budget.
    Throttled(String),
}

/// Reads a 429 Status: the eviction API names the budget in a cause with reason
/// `DisruptionBudget` (and in its message); anything else is throttling.
pub fn classify_429(status: &Status) -> Refusal {
    let causes = status
        .details
        .as_ref()
        .map(|d| d.causes.as_slice())
        .unwrap_or(&[]);
    if let Some(cause) = causes.iter().find(|c| c.reason == "DisruptionBudget") {
        return Refusal::DisruptionBudget(cause.message.clone());
    }
    if status.message.contains("disruption budget") {
        return Refusal::DisruptionBudget(status.message.clone());
    }
    Refusal::Throttled(if status.message.is_empty() {
        status.reason.clone()
    } else {
        status.message.clone()
    })
}

fn is_daemon_or_mirror(pod: &Pod) -> bool {
    pod.owner_references().iter().any(|o| o.kind == "DaemonSet")
        || pod
            .annotations()
            .contains_key("kubernetes.io/config.mirror")
}

fn pod_key(pod: &Pod) -> String {
    format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any())
}

enum Removed {
    Gone { refusals: u32, throttled: u32 },
}

/// Evicts one pod, retrying 429s until `deadline`.
async fn evict_one(api: &Api<Pod>, pod: &Pod, deadline: Instant) -> Result<Removed, DrainError> {
    let (ns, name) = (pod.namespace().unwrap_or_default(), pod.name_any());
    let (mut refusals, mut throttled) = (0u32, 0u32);
    loop {
        match api.evict(&name, &EvictParams::default()).await {
            Ok(_) => {
                return Ok(Removed::Gone {
                    refusals,
                    throttled,
                });
            }
            Err(::kube::Error::Api(s)) if s.code == 404 => {
                return Ok(Removed::Gone {
                    refusals,
                    throttled,
                });
            }
            // Wait and retry, as kubectl drain does.
            Err(::kube::Error::Api(s)) if s.code == 429 => {
                let why = match classify_429(&s) {
                    Refusal::DisruptionBudget(m) => {
                        refusals += 1;
                        format!("refused by a PodDisruptionBudget: {m}")
                    }
                    Refusal::Throttled(m) => {
                        throttled += 1;
                        format!("throttled (HTTP 429): {m}")
                    }
                };
                if Instant::now() > deadline {
                    return Err(DrainError::Timeout {
                        node: String::new(),
                        waited: Duration::ZERO,
                        left: vec![format!("{ns}/{name} ({why})")],
                    });
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(source) => {
                return Err(DrainError::Evict {
                    namespace: ns,
                    name,
                    source,
                });
            }
        }
    }
}

/// Cordons `node` and evicts its pods, honouring every PodDisruptionBudget:
/// [`drain_by`] with [`DrainMethod::Evict`].
pub async fn drain(
    config: &Config,
    node: &str,
    namespaces: &[&str],
    timeout: Duration,
) -> Result<DrainReport, DrainError> {
    drain_by(config, node, namespaces, DrainMethod::Evict, timeout).await
}

/// Cordons `node` and removes its pods by `method`; with [`DrainMethod::Evict`]
/// every PodDisruptionBudget is honoured. With a non-empty `namespaces`, only
/// pods of those namespaces are touched (so a test drains its own workloads on
/// a shared cluster). Returns once the removed pods are gone.
///
/// Takes the client configuration rather than a client: kube's default client
/// retries HTTP 429 for minutes, and a PDB's refusal is a 429 this function must
/// see at once to report (and pace) it itself.
pub async fn drain_by(
    config: &Config,
    node: &str,
    namespaces: &[&str],
    method: DrainMethod,
    timeout: Duration,
) -> Result<DrainReport, DrainError> {
    let in_scope = |p: &Pod| {
        namespaces.is_empty() || namespaces.contains(&p.namespace().unwrap_or_default().as_str())
    };
    let started = Instant::now();
    let deadline = started + timeout;
    let mut config = config.clone();
    config.default_retry = false;
    let client = &Client::try_from(config).map_err(|source| DrainError::Client { source })?;
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
    let removals = victims.iter().map(|pod| {
        let api: Api<Pod> = Api::namespaced(client.clone(), &pod.namespace().unwrap_or_default());
        async move {
            match method {
                DrainMethod::Evict => evict_one(&api, pod, deadline).await,
                DrainMethod::Delete => {
                    match api.delete(&pod.name_any(), &DeleteParams::default()).await {
                        Ok(_) => Ok(Removed::Gone {
                            refusals: 0,
                            throttled: 0,
                        }),
                        Err(::kube::Error::Api(s)) if s.code == 404 => Ok(Removed::Gone {
                            refusals: 0,
                            throttled: 0,
                        }),
                        Err(source) => Err(DrainError::Delete {
                            namespace: pod.namespace().unwrap_or_default(),
                            name: pod.name_any(),
                            source,
                        }),
                    }
                }
            }
        }
    });
    let results = futures::future::join_all(removals).await;
    let mut report = DrainReport {
        node: node.into(),
        method,
        ..Default::default()
    };
    for (pod, result) in victims.iter().zip(results) {
        match result {
            Ok(Removed::Gone {
                refusals,
                throttled,
            }) => {
                if refusals > 0 {
                    report.refusals.insert(pod_key(pod), refusals);
                }
                if throttled > 0 {
                    report.throttled.insert(pod_key(pod), throttled);
                }
                report.evicted.push(pod_key(pod));
            }
            Err(DrainError::Timeout { left, .. }) => {
                return Err(DrainError::Timeout {
                    node: node.into(),
                    waited: timeout,
                    left,
                });
            }
            Err(e) => return Err(e),
        }
    }
    // Watch each removed pod until it is gone (or replaced under the same name).
    let gone = victims.iter().map(|pod| {
        let api: Api<Pod> = Api::namespaced(client.clone(), &pod.namespace().unwrap_or_default());
        let (name, uid) = (pod.name_any(), pod.uid().unwrap_or_default());
        async move { await_condition(api, &name, conditions::is_deleted(&uid)).await }
    });
    let remaining = deadline.saturating_duration_since(Instant::now());
    match tokio::time::timeout(remaining, futures::future::try_join_all(gone)).await {
        Ok(Ok(_)) => {}
        Ok(Err(source)) => {
            return Err(DrainError::WaitGone {
                node: node.into(),
                source,
            });
        }
        Err(_) => {
            let left = pods
                .list(&on_node)
                .await
                .map(|l| {
                    l.items
                        .iter()
                        .filter(|p| in_scope(p) && !is_daemon_or_mirror(p))
                        .map(pod_key)
                        .collect()
                })
                .unwrap_or_else(|e| vec![format!("(could not list: {e})")]);
            return Err(DrainError::Timeout {
                node: node.into(),
                waited: timeout,
                left,
            });
        }
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

/// The ready floor of every app in `namespace` that promises to survive a
/// drain: a Deployment with >= 2 replicas or a PodDisruptionBudget. Its floor is
/// at least 1 (a service with no ready pod serves nothing), raised to what a PDB
/// selecting its pods guarantees (`minAvailable`, or replicas - `maxUnavailable`).
/// A single replica without a PDB (redis-cart, the loadgenerator) promises
/// nothing and gets no floor: [`verdict`] does not judge it.
pub async fn ready_floors(
    client: &Client,
    namespace: &str,
) -> Result<BTreeMap<String, usize>, DrainError> {
    let err = |source| DrainError::Floors {
        namespace: namespace.into(),
        source,
    };
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), namespace);
    let deployments = deployments
        .list(&ListParams::default())
        .await
        .map_err(err)?;
    let pdbs = pdbs.list(&ListParams::default()).await.map_err(err)?;
    let mut floors = BTreeMap::new();
    for d in &deployments.items {
        let spec = d.spec.clone().unwrap_or_default();
        let replicas = spec.replicas.unwrap_or(1).max(0);
        let labels = spec
            .template
            .metadata
            .and_then(|m| m.labels)
            .unwrap_or_default();
        let Some(app) = labels.get(APP_LABEL).cloned() else {
            continue;
        };
        let from_pdbs = pdbs
            .items
            .iter()
            .filter_map(|pdb| pdb.spec.as_ref())
            .filter(|spec| {
                let wanted = spec
                    .selector
                    .as_ref()
                    .and_then(|s| s.match_labels.clone())
                    .unwrap_or_default();
                !wanted.is_empty() && wanted.iter().all(|(k, v)| labels.get(k) == Some(v))
            })
            .map(|spec| {
                pdb_floor(
                    spec.min_available.as_ref(),
                    spec.max_unavailable.as_ref(),
                    replicas,
                )
            })
            .max();
        if replicas >= 2 || from_pdbs.is_some() {
            floors.insert(app, from_pdbs.unwrap_or(0).max(1));
        }
    }
    Ok(floors)
}

fn percent_of(value: &str, replicas: i32, round_up: bool) -> i32 {
    let pct: i32 = value.trim_end_matches('%').parse().unwrap_or(0);
    let scaled = pct * replicas;
    if round_up {
        (scaled + 99) / 100
    } else {
        scaled / 100
    }
}

/// Pods a PodDisruptionBudget keeps ready, as the disruption controller counts
/// them: percentages of the replicas round up, for `minAvailable` and `maxUnavailable` alike.
fn pdb_floor(
    min_available: Option<&IntOrString>,
    max_unavailable: Option<&IntOrString>,
    replicas: i32,
) -> usize {
    let floor = match (min_available, max_unavailable) {
        (Some(IntOrString::Int(n)), _) => *n,
        (Some(IntOrString::String(p)), _) => percent_of(p, replicas, true),
        (None, Some(IntOrString::Int(n))) => replicas - n,
        (None, Some(IntOrString::String(p))) => replicas - percent_of(p, replicas, true),
        (None, None) => 0,
    };
    floor.max(0) as usize
}

/// One way a drain failed to keep the apps serving, or failed to be observed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DrainFinding {
    /// The node held none of the namespace's pods: the drain proved nothing.
    NothingEvicted { node: String },
    /// A removed pod the watch never saw terminate: the observation missed the drain.
    NotSeen { pod: String },
    /// An app with a pod on the drained node dropped below its ready floor.
    Dip {
        app: String,
        min_ready: usize,
        floor: usize,
    },
}

impl fmt::Display for DrainFinding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DrainFinding::NothingEvicted { node } => {
                write!(f, "nothing of the namespace was on {node}")
            }
            DrainFinding::NotSeen { pod } => {
                write!(f, "{pod} was removed but the watch never saw it go")
            }
            DrainFinding::Dip {
                app,
                min_ready,
                floor,
            } => write!(
                f,
                "{app} fell to {min_ready} ready pod(s) during the drain (floor {floor})"
            ),
        }
    }
}

/// The verdict on a drain of `report.node`: every removed pod was seen to go,
/// and every app with a floor ([`ready_floors`]) that had a pod there kept at
/// least that many ready pods at every moment the watch saw.
pub fn verdict(
    report: &DrainReport,
    observed: &Observed,
    floors: &BTreeMap<String, usize>,
) -> Vec<DrainFinding> {
    let mut findings = Vec::new();
    if report.evicted.is_empty() {
        findings.push(DrainFinding::NothingEvicted {
            node: report.node.clone(),
        });
    }
    for pod in &report.evicted {
        if !observed.terminated.contains_key(pod) {
            findings.push(DrainFinding::NotSeen { pod: pod.clone() });
        }
    }
    let apps: BTreeSet<&String> = observed
        .initial
        .values()
        .filter(|place| place.node == report.node)
        .map(|place| &place.app)
        .collect();
    for app in apps {
        let Some(floor) = floors.get(app).copied() else {
            continue;
        };
        let min_ready = observed.min_ready.get(app).copied().unwrap_or(0);
        if min_ready < floor {
            findings.push(DrainFinding::Dip {
                app: app.clone(),
                min_ready,
                floor,
            });
        }
    }
    findings
}

/// A drain with its observation and verdict.
#[derive(Clone, Debug)]
pub struct DrainCheck {
    pub report: DrainReport,
    pub observed: Observed,
    pub floors: BTreeMap<String, usize>,
    /// Empty when the drain kept every app above its floor.
    pub findings: Vec<DrainFinding>,
}

/// Drains `node` of `namespace`'s pods by `method` while watching them, and
/// judges the drain. The node stays cordoned: the caller uncordons it.
pub async fn drain_and_judge(
    client: &Client,
    config: &Config,
    node: &str,
    namespace: &str,
    method: DrainMethod,
    timeout: Duration,
) -> Result<DrainCheck, DrainError> {
    let floors = ready_floors(client, namespace).await?;
    let watch = PodWatch::start(client, namespace, timeout).await?;
    let report = match drain_by(config, node, &[namespace], method, timeout).await {
        Ok(report) => report,
        Err(e) => {
            let _ = watch.finish().await;
            return Err(e);
        }
    };
    let observed = watch.finish().await?;
    let findings = verdict(&report, &observed, &floors);
    Ok(DrainCheck {
        report,
        observed,
        floors,
        findings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kube::pod_watch::PodPlace;
    use ::kube::core::response::{StatusCause, StatusDetails};

    fn status(message: &str, causes: Vec<StatusCause>) -> Status {
        Status {
            code: 429,
            message: message.into(),
            reason: "TooManyRequests".into(),
            details: Some(StatusDetails {
                name: String::new(),
                group: String::new(),
                kind: "pods".into(),
                uid: String::new(),
                causes,
                retry_after_seconds: 0,
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_429_is_the_budget_only_when_the_status_names_it() {
        let budget = status(
            "Cannot evict pod as it would violate the pod's disruption budget.",
            vec![StatusCause {
                reason: "DisruptionBudget".into(),
                message: "The disruption budget frontend needs 1 healthy pods and has 1 currently"
                    .into(),
                field: String::new(),
            }],
        );
        assert!(
            matches!(classify_429(&budget), Refusal::DisruptionBudget(m) if m.contains("frontend needs 1"))
        );
        let throttled = status("Too many requests, please try again later.", vec![]);
        assert_eq!(
            classify_429(&throttled),
            Refusal::Throttled("Too many requests, please try again later.".into())
        );
    }

    #[test]
    fn pdb_floors_follow_min_available_and_max_unavailable() {
        let int = IntOrString::Int;
        let pct = |s: &str| IntOrString::String(s.into());
        assert_eq!(pdb_floor(Some(&int(1)), None, 2), 1);
        assert_eq!(pdb_floor(Some(&pct("50%")), None, 3), 2);
        assert_eq!(pdb_floor(None, Some(&int(1)), 3), 2);
        assert_eq!(pdb_floor(None, Some(&pct("50%")), 3), 1);
        assert_eq!(pdb_floor(None, None, 3), 0);
    }

    fn observed(min_ready: &[(&str, usize)], terminated: &[&str]) -> Observed {
        Observed {
            initial: [
                ("ns/frontend-1", "frontend", "node-1"),
                ("ns/frontend-2", "frontend", "node-2"),
                ("ns/cart-1", "cartservice", "node-2"),
            ]
            .iter()
            .map(|(k, app, node)| {
                let place = PodPlace {
                    app: app.to_string(),
                    node: node.to_string(),
                };
                (k.to_string(), place)
            })
            .collect(),
            min_ready: min_ready.iter().map(|(a, n)| (a.to_string(), *n)).collect(),
            terminated: terminated
                .iter()
                .map(|s| (s.to_string(), String::new()))
                .collect(),
            events: 3,
        }
    }

    #[test]
    fn only_apps_on_the_drained_node_are_judged_and_a_dip_below_the_floor_is_found() {
        let report = DrainReport {
            node: "node-1".into(),
            evicted: vec!["ns/frontend-1".into()],
            ..Default::default()
        };
        let floors = BTreeMap::from([("frontend".to_string(), 1)]);
        // cartservice dipped to 0 but had no pod on node-1.
        let fine = observed(&[("frontend", 1), ("cartservice", 0)], &["ns/frontend-1"]);
        assert_eq!(verdict(&report, &fine, &floors), []);
        // An app without a floor (a single replica without PDB) is not judged.
        let single = observed(&[("frontend", 0)], &["ns/frontend-1"]);
        assert_eq!(verdict(&report, &single, &BTreeMap::new()), []);
        assert_eq!(verdict(&report, &fine, &floors), []);
        let dipped = observed(&[("frontend", 0)], &["ns/frontend-1"]);
        assert_eq!(
            verdict(&report, &dipped, &floors),
            [DrainFinding::Dip {
                app: "frontend".into(),
                min_ready: 0,
                floor: 1
            }]
        );
        let unseen = observed(&[("frontend", 1)], &[]);
        assert_eq!(
            verdict(&report, &unseen, &floors),
            [DrainFinding::NotSeen {
                pod: "ns/frontend-1".into()
            }]
        );
    }
}
