//! Watch-based rollout waits. A Deployment is rolled out when its controller has
//! observed the current generation, updated = ready = available = total = desired,
//! and no pod of an older ReplicaSet is left (terminating ones included).
//! `ProgressDeadlineExceeded` fails the wait at once, with its reason, message
//! and diagnostics. Every status change is sampled, so a caller can prove the
//! number of ready pods never dropped below the desired count.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use ::kube::api::Api;
use ::kube::runtime::WatchStreamExt;
use ::kube::runtime::watcher::{self, Event};
use ::kube::{Client, ResourceExt};
use futures::{StreamExt, stream::BoxStream};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Pod;
use tokio::sync::watch;

use super::diagnostics::{self, Diagnostics, REVISION_ANNOTATION};

#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    #[error("roll out {namespace}/{name}: {reason}: {message}\n{diagnostics}")]
    ProgressDeadline {
        namespace: String,
        name: String,
        reason: String,
        message: String,
        after: Duration,
        diagnostics: Box<Diagnostics>,
    },
    #[error("roll out {namespace}/{name} within {waited:?} (last state: {state})\n{diagnostics}")]
    Timeout {
        namespace: String,
        name: String,
        waited: Duration,
        state: String,
        diagnostics: Box<Diagnostics>,
    },
    #[error("watch {namespace}/{name}: the watch ended")]
    WatchEnded { namespace: String, name: String },
}

impl RolloutError {
    pub fn diagnostics(&self) -> Option<&Diagnostics> {
        match self {
            RolloutError::ProgressDeadline { diagnostics, .. }
            | RolloutError::Timeout { diagnostics, .. } => Some(diagnostics),
            RolloutError::WatchEnded { .. } => None,
        }
    }
}

/// One observation of the rollout, taken at every watch event that changed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sample {
    /// Since the watch started.
    pub at: Duration,
    pub generation: i64,
    pub observed_generation: i64,
    pub desired: i32,
    pub replicas: i32,
    pub updated: i32,
    pub ready: i32,
    pub available: i32,
    /// Pods of this Deployment that are Ready and not terminating, counted from the pod watch.
    pub ready_pods: i32,
    /// Pods of ReplicaSets other than the current one.
    pub old_pods: i32,
}

/// Where the rollout stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Watches not yet synced.
    Starting,
    Progressing(String),
    Complete,
    Failed {
        reason: String,
        message: String,
    },
}

#[derive(Clone, Debug)]
struct Progress {
    phase: Phase,
    samples: Vec<Sample>,
    /// When the phase first became Complete or Failed (for `generation`).
    decided_at: Option<Instant>,
    /// `metadata.generation` of the Deployment the phase was evaluated on.
    generation: i64,
    watch_errors: Vec<String>,
}

/// What a completed rollout looked like.
#[derive(Clone, Debug)]
pub struct RolloutReport {
    pub namespace: String,
    pub name: String,
    /// From the start of the watch to completion.
    pub took: Duration,
    /// Time between the event that completed the rollout and the wait returning.
    pub return_delay: Duration,
    pub samples: Vec<Sample>,
}

impl RolloutReport {
    pub fn desired(&self) -> i32 {
        self.samples.last().map(|s| s.desired).unwrap_or(0)
    }
    /// Fewest Ready, non-terminating pods seen since the watch started.
    pub fn min_ready_pods(&self) -> i32 {
        self.samples.iter().map(|s| s.ready_pods).min().unwrap_or(0)
    }
    /// Fewest `status.readyReplicas` seen since the watch started.
    pub fn min_ready_replicas(&self) -> i32 {
        self.samples.iter().map(|s| s.ready).min().unwrap_or(0)
    }
}

enum Ev {
    Deployment(Event<Deployment>),
    ReplicaSet(Event<ReplicaSet>),
    Pod(Event<Pod>),
    Error(String),
}

/// A Store that follows a watcher's Init/InitApply/InitDone protocol.
struct Store<K> {
    items: BTreeMap<String, K>,
    buffer: Option<BTreeMap<String, K>>,
    synced: bool,
}

impl<K: ResourceExt> Store<K> {
    fn new() -> Self {
        Self {
            items: BTreeMap::new(),
            buffer: None,
            synced: false,
        }
    }
    fn apply(&mut self, event: Event<K>) {
        match event {
            Event::Init => self.buffer = Some(BTreeMap::new()),
            Event::InitApply(k) => {
                if let Some(b) = self.buffer.as_mut() {
                    b.insert(k.name_any(), k);
                }
            }
            Event::InitDone => {
                if let Some(b) = self.buffer.take() {
                    self.items = b;
                }
                self.synced = true;
            }
            Event::Apply(k) => {
                self.items.insert(k.name_any(), k);
            }
            Event::Delete(k) => {
                self.items.remove(&k.name_any());
            }
        }
    }
}

struct Tracker {
    name: String,
    started: Instant,
    deployment: Store<Deployment>,
    replicasets: Store<ReplicaSet>,
    pods: Store<Pod>,
}

fn owner_is(
    refs: Option<&Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference>>,
    kind: &str,
    name: &str,
) -> bool {
    refs.is_some_and(|refs| refs.iter().any(|r| r.kind == kind && r.name == name))
}

fn is_ready(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

impl Tracker {
    fn synced(&self) -> bool {
        self.deployment.synced && self.replicasets.synced && self.pods.synced
    }

    /// Evaluates the rollout: its phase and a sample of the counts.
    fn evaluate(&self) -> (Phase, Option<Sample>) {
        if !self.synced() {
            return (Phase::Starting, None);
        }
        let Some(d) = self.deployment.items.get(&self.name) else {
            return (
                Phase::Progressing("the Deployment does not exist yet".into()),
                None,
            );
        };
        let spec = d.spec.clone().unwrap_or_default();
        let status = d.status.clone().unwrap_or_default();
        let generation = d.metadata.generation.unwrap_or(0);
        let observed = status.observed_generation.unwrap_or(0);
        let desired = spec.replicas.unwrap_or(1);
        let revision = d.annotations().get(REVISION_ANNOTATION).cloned();
        let owned: Vec<&ReplicaSet> = self
            .replicasets
            .items
            .values()
            .filter(|rs| {
                owner_is(
                    rs.metadata.owner_references.as_ref(),
                    "Deployment",
                    &self.name,
                )
            })
            .collect();
        let current: Option<&ReplicaSet> = owned.iter().copied().find(|rs| {
            revision.is_some() && rs.annotations().get(REVISION_ANNOTATION) == revision.as_ref()
        });
        let owned_names: Vec<String> = owned.iter().map(|rs| rs.name_any()).collect();
        let mut ready_pods = 0;
        let mut old_pods = 0;
        for pod in self.pods.items.values() {
            let Some(rs) = pod
                .metadata
                .owner_references
                .iter()
                .flatten()
                .find(|r| r.kind == "ReplicaSet" && owned_names.contains(&r.name))
            else {
                continue;
            };
            if is_ready(pod) {
                ready_pods += 1;
            }
            if current.is_none_or(|c| c.name_any() != rs.name) {
                old_pods += 1;
            }
        }
        let sample = Sample {
            at: self.started.elapsed(),
            generation,
            observed_generation: observed,
            desired,
            replicas: status.replicas.unwrap_or(0),
            updated: status.updated_replicas.unwrap_or(0),
            ready: status.ready_replicas.unwrap_or(0),
            available: status.available_replicas.unwrap_or(0),
            ready_pods,
            old_pods,
        };
        // A deadline condition left from an older generation does not count.
        if let Some(c) = status.conditions.iter().flatten().find(|c| {
            c.type_ == "Progressing" && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
        }) && observed >= generation
        {
            return (
                Phase::Failed {
                    reason: "ProgressDeadlineExceeded".into(),
                    message: c.message.clone().unwrap_or_default(),
                },
                Some(sample),
            );
        }
        let phase = if observed < generation {
            Phase::Progressing(format!(
                "waiting for the controller to observe generation {generation} (observed {observed})"
            ))
        } else if sample.updated < desired {
            Phase::Progressing(format!("{} of {desired} replicas updated", sample.updated))
        } else if sample.replicas > sample.updated {
            Phase::Progressing(format!(
                "{} old replicas pending termination",
                sample.replicas - sample.updated
            ))
        } else if sample.ready < desired || sample.available < desired {
            Phase::Progressing(format!(
                "{} ready, {} available of {desired}",
                sample.ready, sample.available
            ))
        } else if current.is_none() {
            Phase::Progressing("the current ReplicaSet is not in the watch yet".into())
        } else if old_pods > 0 {
            Phase::Progressing(format!("{old_pods} pods of old ReplicaSets left"))
        } else {
            Phase::Complete
        };
        (phase, Some(sample))
    }
}

/// A running watch on one Deployment, its ReplicaSets and their pods. Start it
/// before changing the Deployment to see every intermediate state.
pub struct RolloutWatch {
    namespace: String,
    name: String,
    client: Client,
    started: Instant,
    rx: watch::Receiver<Progress>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RolloutWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RolloutWatch {
    /// Starts the watches and returns once their initial lists are in.
    pub async fn start(client: &Client, namespace: &str, name: &str) -> RolloutWatch {
        let started = Instant::now();
        let cfg = watcher::Config::default();
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), namespace);
        let replicasets: Api<ReplicaSet> = Api::namespaced(client.clone(), namespace);
        let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
        let d_stream: BoxStream<'static, Ev> = watcher::watcher(
            deployments,
            cfg.clone().fields(&format!("metadata.name={name}")),
        )
        .default_backoff()
        .map(|r| {
            r.map(Ev::Deployment)
                .unwrap_or_else(|e| Ev::Error(e.to_string()))
        })
        .boxed();
        let rs_stream: BoxStream<'static, Ev> = watcher::watcher(replicasets, cfg.clone())
            .default_backoff()
            .map(|r| {
                r.map(Ev::ReplicaSet)
                    .unwrap_or_else(|e| Ev::Error(e.to_string()))
            })
            .boxed();
        let pod_stream: BoxStream<'static, Ev> = watcher::watcher(pods, cfg)
            .default_backoff()
            .map(|r| r.map(Ev::Pod).unwrap_or_else(|e| Ev::Error(e.to_string())))
            .boxed();
        let mut events = futures::stream::select_all([d_stream, rs_stream, pod_stream]);
        let (tx, rx) = watch::channel(Progress {
            phase: Phase::Starting,
            samples: Vec::new(),
            decided_at: None,
            generation: 0,
            watch_errors: Vec::new(),
        });
        let mut tracker = Tracker {
            name: name.to_string(),
            started,
            deployment: Store::new(),
            replicasets: Store::new(),
            pods: Store::new(),
        };
        let task = tokio::spawn(async move {
            while let Some(ev) = events.next().await {
                match ev {
                    Ev::Deployment(e) => tracker.deployment.apply(e),
                    Ev::ReplicaSet(e) => tracker.replicasets.apply(e),
                    Ev::Pod(e) => tracker.pods.apply(e),
                    Ev::Error(e) => {
                        tx.send_modify(|p| {
                            if p.watch_errors.len() < 20 {
                                p.watch_errors.push(e)
                            }
                        });
                        continue;
                    }
                }
                let (phase, sample) = tracker.evaluate();
                tx.send_if_modified(|p| {
                    let mut changed = false;
                    let generation = sample.as_ref().map(|s| s.generation).unwrap_or(0);
                    if generation != p.generation {
                        // A new spec: whatever was decided was about the old one.
                        p.generation = generation;
                        p.decided_at = None;
                        changed = true;
                    }
                    if let Some(s) = sample {
                        let same = p.samples.last().is_some_and(|l| {
                            Sample {
                                at: l.at,
                                ..s.clone()
                            } == *l
                        });
                        if !same {
                            p.samples.push(s);
                            changed = true;
                        }
                    }
                    let decided = matches!(phase, Phase::Complete | Phase::Failed { .. });
                    if decided && p.decided_at.is_none() {
                        p.decided_at = Some(Instant::now());
                        changed = true;
                    }
                    if !decided {
                        p.decided_at = None;
                    }
                    if p.phase != phase {
                        p.phase = phase;
                        changed = true;
                    }
                    changed
                });
            }
        });
        let mut watch = RolloutWatch {
            namespace: namespace.to_string(),
            name: name.to_string(),
            client: client.clone(),
            started,
            rx,
            task,
        };
        let _ = tokio::time::timeout(
            Duration::from_secs(30),
            watch.rx.wait_for(|p| p.phase != Phase::Starting),
        )
        .await;
        watch.rx.mark_changed();
        watch
    }

    /// Current phase.
    pub fn phase(&self) -> Phase {
        self.rx.borrow().phase.clone()
    }

    /// Samples so far.
    pub fn samples(&self) -> Vec<Sample> {
        self.rx.borrow().samples.clone()
    }

    /// Waits until the rollout of the Deployment's current spec completes, fails,
    /// or `timeout` passes. "Current" is read from the API server when `wait` is
    /// called, so a change made after [`RolloutWatch::start`] is never mistaken
    /// for the previous rollout's completion.
    pub async fn wait(mut self, timeout: Duration) -> Result<RolloutReport, RolloutError> {
        let api: Api<Deployment> = Api::namespaced(self.client.clone(), &self.namespace);
        let target = api
            .get_opt(&self.name)
            .await
            .ok()
            .flatten()
            .and_then(|d| d.metadata.generation)
            .unwrap_or(0);
        let decided = tokio::time::timeout(
            timeout,
            self.rx.wait_for(|p| {
                p.generation >= target
                    && p.decided_at.is_some()
                    && matches!(p.phase, Phase::Complete | Phase::Failed { .. })
            }),
        )
        .await;
        let returned = Instant::now();
        let decided = decided.map(|r| r.map(|_| ()));
        let progress = self.rx.borrow().clone();
        match (decided, progress.phase.clone()) {
            (Ok(Ok(_)), Phase::Complete) => Ok(RolloutReport {
                namespace: self.namespace.clone(),
                name: self.name.clone(),
                took: progress
                    .decided_at
                    .map(|t| t.duration_since(self.started))
                    .unwrap_or_else(|| self.started.elapsed()),
                return_delay: progress
                    .decided_at
                    .map(|t| returned.duration_since(t))
                    .unwrap_or_default(),
                samples: progress.samples,
            }),
            (Ok(Ok(_)), Phase::Failed { reason, message }) => {
                let diagnostics =
                    diagnostics::gather(&self.client, &self.namespace, Some(&self.name)).await;
                Err(RolloutError::ProgressDeadline {
                    namespace: self.namespace.clone(),
                    name: self.name.clone(),
                    reason,
                    message,
                    after: self.started.elapsed(),
                    diagnostics: Box::new(diagnostics),
                })
            }
            (Ok(Err(_)), _) => Err(RolloutError::WatchEnded {
                namespace: self.namespace.clone(),
                name: self.name.clone(),
            }),
            (_, phase) => {
                let diagnostics =
                    diagnostics::gather(&self.client, &self.namespace, Some(&self.name)).await;
                let mut state = match phase {
                    Phase::Progressing(s) => s,
                    other => format!("{other:?}"),
                };
                if let Some(e) = progress.watch_errors.last() {
                    state.push_str(&format!("; last watch error: {e}"));
                }
                Err(RolloutError::Timeout {
                    namespace: self.namespace.clone(),
                    name: self.name.clone(),
                    waited: timeout,
                    state,
                    diagnostics: Box::new(diagnostics),
                })
            }
        }
    }
}

/// Waits for one Deployment's rollout (see the module docs for what "done" means).
pub async fn wait_for_rollout(
    client: &Client,
    namespace: &str,
    name: &str,
    timeout: Duration,
) -> Result<RolloutReport, RolloutError> {
    RolloutWatch::start(client, namespace, name)
        .await
        .wait(timeout)
        .await
}

/// Waits for every `(namespace, name)` concurrently; returns every report, or the first failure.
pub async fn wait_for_all(
    client: &Client,
    deployments: &[(String, String)],
    timeout: Duration,
) -> Result<Vec<RolloutReport>, RolloutError> {
    let waits = deployments
        .iter()
        .map(|(ns, name)| wait_for_rollout(client, ns, name, timeout));
    futures::future::try_join_all(waits).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deployment(
        generation: i64,
        observed: i64,
        revision: &str,
        counts: [i32; 4],
        deadline: bool,
    ) -> Deployment {
        let [replicas, updated, ready, available] = counts;
        let mut conditions = vec![];
        if deadline {
            conditions.push(json!({"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded", "message": "ReplicaSet \"web-2\" has timed out progressing."}));
        }
        serde_json::from_value(json!({
            "metadata": {"name": "web", "generation": generation, "annotations": {REVISION_ANNOTATION: revision}},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}}, "template": {}},
            "status": {"observedGeneration": observed, "replicas": replicas, "updatedReplicas": updated,
                       "readyReplicas": ready, "availableReplicas": available, "conditions": conditions}
        }))
        .unwrap()
    }

    fn replicaset(name: &str, revision: &str) -> ReplicaSet {
        serde_json::from_value(json!({
            "metadata": {"name": name, "annotations": {REVISION_ANNOTATION: revision},
                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "uid": "u"}]},
        }))
        .unwrap()
    }

    fn pod(name: &str, rs: &str, ready: bool) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": rs, "uid": "u"}]},
            "status": {"conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}
        }))
        .unwrap()
    }

    fn tracker(d: Deployment, sets: Vec<ReplicaSet>, pods: Vec<Pod>) -> Tracker {
        let mut t = Tracker {
            name: "web".into(),
            started: Instant::now(),
            deployment: Store::new(),
            replicasets: Store::new(),
            pods: Store::new(),
        };
        t.deployment.apply(Event::Init);
        t.deployment.apply(Event::InitApply(d));
        t.deployment.apply(Event::InitDone);
        t.replicasets.apply(Event::Init);
        for rs in sets {
            t.replicasets.apply(Event::InitApply(rs));
        }
        t.replicasets.apply(Event::InitDone);
        t.pods.apply(Event::Init);
        for p in pods {
            t.pods.apply(Event::InitApply(p));
        }
        t.pods.apply(Event::InitDone);
        t
    }

    #[test]
    fn a_rollout_is_complete_when_counts_match_and_no_old_pod_is_left() {
        let t = tracker(
            deployment(2, 2, "2", [2, 2, 2, 2], false),
            vec![replicaset("web-1", "1"), replicaset("web-2", "2")],
            vec![pod("a", "web-2", true), pod("b", "web-2", true)],
        );
        let (phase, sample) = t.evaluate();
        assert_eq!(phase, Phase::Complete);
        assert_eq!(sample.unwrap().ready_pods, 2);
    }

    #[test]
    fn the_previous_generations_completion_does_not_count() {
        // Status still describes generation 1, which had fully rolled out.
        let t = tracker(
            deployment(2, 1, "1", [2, 2, 2, 2], false),
            vec![replicaset("web-1", "1")],
            vec![pod("a", "web-1", true), pod("b", "web-1", true)],
        );
        assert!(
            matches!(t.evaluate().0, Phase::Progressing(s) if s.contains("observe generation 2"))
        );
    }

    #[test]
    fn a_pod_of_an_old_replicaset_keeps_the_rollout_progressing() {
        let t = tracker(
            deployment(2, 2, "2", [2, 2, 2, 2], false),
            vec![replicaset("web-1", "1"), replicaset("web-2", "2")],
            vec![
                pod("a", "web-2", true),
                pod("b", "web-2", true),
                pod("old", "web-1", false),
            ],
        );
        let (phase, sample) = t.evaluate();
        assert!(matches!(phase, Phase::Progressing(s) if s.contains("old ReplicaSets")));
        assert_eq!(sample.unwrap().old_pods, 1);
    }

    #[test]
    fn progress_deadline_exceeded_fails_with_its_message() {
        let t = tracker(
            deployment(2, 2, "2", [3, 1, 2, 2], true),
            vec![replicaset("web-1", "1"), replicaset("web-2", "2")],
            vec![
                pod("a", "web-1", true),
                pod("b", "web-1", true),
                pod("c", "web-2", false),
            ],
        );
        match t.evaluate().0 {
            Phase::Failed { reason, message } => {
                assert_eq!(reason, "ProgressDeadlineExceeded");
                assert!(message.contains("timed out progressing"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_old_deadline_condition_is_ignored_once_a_new_generation_is_pending() {
        let t = tracker(
            deployment(3, 2, "2", [3, 1, 2, 2], true),
            vec![replicaset("web-2", "2")],
            vec![],
        );
        assert!(matches!(t.evaluate().0, Phase::Progressing(_)));
    }

    #[test]
    fn nothing_is_decided_before_every_watch_has_listed() {
        let mut t = tracker(
            deployment(1, 1, "1", [2, 2, 2, 2], false),
            vec![replicaset("web-1", "1")],
            vec![],
        );
        t.pods.synced = false;
        assert_eq!(t.evaluate().0, Phase::Starting);
    }
}
