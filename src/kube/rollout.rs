//! Watch-based rollout waits. A Deployment is rolled out when its controller has
//! observed the generation the wait was asked about (the one an apply produced,
//! or the one read when the wait starts; never an older one), updated = ready =
//! available = total = desired, and no pod of an older ReplicaSet is left
//! (terminating ones included). A wait that cannot read that generation, or whose
//! watches do not list in time, fails with its own error instead of deciding on
//! stale state.
//! `ProgressDeadlineExceeded` fails the wait at once, with its reason, message
//! and diagnostics. Every status change is sampled, so a caller can prove the
//! number of ready pods never dropped below the desired count.
//! A namespace is watched once ([`NamespaceWatch`]: one reflector store each of its
//! Deployments, ReplicaSets and pods), however many of its Deployments are waited for.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ::kube::api::Api;
use ::kube::runtime::reflector::Store;
use ::kube::runtime::watcher;
use ::kube::{Client, ResourceExt};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Pod;
use tokio::sync::watch;

use super::cache::{self, Change};
use super::diagnostics::{self, Diagnostics, REVISION_ANNOTATION};

#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    #[error("roll out {namespace}/{name}: {reason}: {message}\n{diagnostics}")]
    ProgressDeadline {
        namespace: String,
        name: String,
        reason: String,
        message: String,
        /// From the start of the watch to the watch seeing the condition.
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
    #[error(
        "start watching {namespace}/{name}: the watches did not list within {waited:?}{}",
        last_watch_error.as_ref().map(|e| format!(" (last watch error: {e})")).unwrap_or_default()
    )]
    NotSynced {
        namespace: String,
        name: String,
        waited: Duration,
        last_watch_error: Option<String>,
    },
    #[error("read the generation of Deployment {namespace}/{name} to wait for")]
    ReadGeneration {
        namespace: String,
        name: String,
        #[source]
        source: ::kube::Error,
    },
    #[error("find Deployment {namespace}/{name} to wait for: it does not exist")]
    NotFound { namespace: String, name: String },
    #[error("read the generation of Deployment {namespace}/{name}: the API server returned none")]
    NoGeneration { namespace: String, name: String },
}

impl RolloutError {
    pub fn diagnostics(&self) -> Option<&Diagnostics> {
        match self {
            RolloutError::ProgressDeadline { diagnostics, .. }
            | RolloutError::Timeout { diagnostics, .. } => Some(diagnostics),
            RolloutError::WatchEnded { .. }
            | RolloutError::NotSynced { .. }
            | RolloutError::ReadGeneration { .. }
            | RolloutError::NotFound { .. }
            | RolloutError::NoGeneration { .. } => None,
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

/// Reads the samples a [`RolloutWatch`] recorded, during or after its wait.
#[derive(Clone)]
pub struct SampleRecorder {
    rx: tokio::sync::watch::Receiver<Progress>,
}

impl SampleRecorder {
    pub fn samples(&self) -> Vec<Sample> {
        self.rx.borrow().samples.clone()
    }
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
    /// `metadata.resourceVersion` of the Deployment when the phase was decided.
    decided_resource_version: Option<String>,
}

impl Progress {
    /// Whether a wait asked about `target` may return: the phase was decided on
    /// `target` or a later generation, never on an older one.
    fn settles(&self, target: i64) -> bool {
        self.generation >= target
            && self.decided_at.is_some()
            && matches!(self.phase, Phase::Complete | Phase::Failed { .. })
    }
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
    /// The generation the rollout completed (at least the one asked about).
    pub generation: i64,
    /// `metadata.resourceVersion` of the Deployment state that completed the
    /// rollout: lets a caller check which state the wait decided on.
    pub decided_resource_version: String,
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

/// The rollout of one Deployment, evaluated from its namespace's stores.
struct Tracker<'a> {
    namespace: &'a str,
    name: &'a str,
    started: Instant,
    deployments: &'a Store<Deployment>,
    replicasets: &'a Store<ReplicaSet>,
    pods: &'a Store<Pod>,
}

fn owner_is(
    refs: Option<&Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference>>,
    kind: &str,
    name: &str,
) -> bool {
    refs.is_some_and(|refs| refs.iter().any(|r| r.kind == kind && r.name == name))
}

/// Ready and not terminating.
pub fn is_ready(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

impl Tracker<'_> {
    /// Evaluates the rollout (the stores are listed): its phase and a sample of the counts.
    fn evaluate(&self) -> (Phase, Option<Sample>) {
        let Some(d) = cache::get(self.deployments, self.namespace, self.name) else {
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
        let owned = self.replicasets.state_filter(|rs| {
            owner_is(
                rs.metadata.owner_references.as_ref(),
                "Deployment",
                self.name,
            )
        });
        let current = owned.iter().find(|rs| {
            revision.is_some() && rs.annotations().get(REVISION_ANNOTATION) == revision.as_ref()
        });
        let owned_names: Vec<String> = owned.iter().map(|rs| rs.name_any()).collect();
        let mut ready_pods = 0;
        let mut old_pods = 0;
        for pod in self.pods.state() {
            let Some(rs) = pod
                .metadata
                .owner_references
                .iter()
                .flatten()
                .find(|r| r.kind == "ReplicaSet" && owned_names.contains(&r.name))
            else {
                continue;
            };
            if is_ready(&pod) {
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

/// Records an evaluation in a rollout's progress; whether anything changed.
fn record(
    progress: &mut Progress,
    phase: Phase,
    sample: Option<Sample>,
    resource_version: Option<String>,
) -> bool {
    let mut changed = false;
    let generation = sample.as_ref().map(|s| s.generation).unwrap_or(0);
    if generation != progress.generation {
        // A new spec: whatever was decided was about the old one.
        progress.generation = generation;
        progress.decided_at = None;
        progress.decided_resource_version = None;
        changed = true;
    }
    if let Some(s) = sample {
        let same = progress.samples.last().is_some_and(|l| {
            Sample {
                at: l.at,
                ..s.clone()
            } == *l
        });
        if !same {
            progress.samples.push(s);
            changed = true;
        }
    }
    let decided = matches!(phase, Phase::Complete | Phase::Failed { .. });
    if decided && progress.decided_at.is_none() {
        progress.decided_at = Some(Instant::now());
        progress.decided_resource_version = resource_version;
        changed = true;
    }
    if !decided {
        progress.decided_at = None;
        progress.decided_resource_version = None;
    }
    if progress.phase != phase {
        progress.phase = phase;
        changed = true;
    }
    changed
}

/// A Deployment whose rollout a [`NamespaceWatch`] follows.
struct Followed {
    name: String,
    started: Instant,
    tx: watch::Sender<Progress>,
}

/// The stores of one namespace and the rollouts followed in it.
struct Shared {
    namespace: String,
    deployments: Store<Deployment>,
    replicasets: Store<ReplicaSet>,
    pods: Store<Pod>,
    /// Every followed rollout is evaluated after every change, so no intermediate state
    /// a sample should show is skipped. Held while evaluating: a rollout added meanwhile
    /// is evaluated either by its own first evaluation or by the next change's.
    followed: std::sync::Mutex<Vec<Followed>>,
}

impl Shared {
    fn evaluate(&self, followed: &Followed) {
        let tracker = Tracker {
            namespace: &self.namespace,
            name: &followed.name,
            started: followed.started,
            deployments: &self.deployments,
            replicasets: &self.replicasets,
            pods: &self.pods,
        };
        let (phase, sample) = tracker.evaluate();
        let resource_version = cache::get(&self.deployments, &self.namespace, &followed.name)
            .and_then(|d| d.metadata.resource_version.clone());
        followed
            .tx
            .send_if_modified(|p| record(p, phase, sample, resource_version));
    }

    fn evaluate_all(&self) {
        let mut followed = self.followed.lock().expect("no panic while evaluating");
        // A rollout nobody waits for any more is dropped.
        followed.retain(|f| !f.tx.is_closed());
        for f in followed.iter() {
            self.evaluate(f);
        }
    }
}

/// Whether the namespace's lists are in, and the watch errors so far.
#[derive(Clone, Debug, Default)]
struct Listing {
    listed: bool,
    ended: bool,
    watch_errors: Vec<String>,
}

/// One namespace's Deployments, ReplicaSets and pods, each followed by one reflector and
/// shared by the rollout watches of every Deployment in it: three watches per namespace,
/// however many Deployments are waited for.
pub struct NamespaceWatch {
    client: Client,
    shared: Arc<Shared>,
    listing: watch::Receiver<Listing>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for NamespaceWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// How long [`NamespaceWatch::start`] waits for its watches' initial lists.
pub const SYNC_TIMEOUT: Duration = Duration::from_secs(30);

impl NamespaceWatch {
    /// Starts the watches and returns once their initial lists are in, or fails
    /// with [`RolloutError::NotSynced`] after `sync_timeout`.
    pub async fn start(
        client: &Client,
        namespace: &str,
        sync_timeout: Duration,
    ) -> Result<Arc<NamespaceWatch>, RolloutError> {
        let cfg = watcher::Config::default();
        let (deployments, d_changes) = cache::follow(
            Api::<Deployment>::namespaced(client.clone(), namespace),
            cfg.clone(),
        );
        let (replicasets, rs_changes) = cache::follow(
            Api::<ReplicaSet>::namespaced(client.clone(), namespace),
            cfg.clone(),
        );
        let (pods, pod_changes) =
            cache::follow(Api::<Pod>::namespaced(client.clone(), namespace), cfg);
        let shared = Arc::new(Shared {
            namespace: namespace.to_string(),
            deployments,
            replicasets,
            pods,
            followed: std::sync::Mutex::new(Vec::new()),
        });
        let (tx, listing) = watch::channel(Listing::default());
        let task = {
            let shared = shared.clone();
            let mut changes = futures::stream::select_all(
                [d_changes, rs_changes, pod_changes]
                    .into_iter()
                    .enumerate()
                    .map(|(kind, changes)| changes.map(move |c| (kind, c)).boxed()),
            );
            tokio::spawn(async move {
                let mut listed = [false; 3];
                while let Some((kind, change)) = changes.next().await {
                    match change {
                        Change::Applied { listed: done } => listed[kind] |= done,
                        Change::Error(e) => {
                            tx.send_modify(|l| {
                                if l.watch_errors.len() < 20 {
                                    l.watch_errors.push(e)
                                }
                            });
                            continue;
                        }
                    }
                    if listed.iter().all(|l| *l) {
                        tx.send_if_modified(|l| !std::mem::replace(&mut l.listed, true));
                        shared.evaluate_all();
                    }
                }
                tx.send_modify(|l| l.ended = true);
            })
        };
        let mut watch = NamespaceWatch {
            client: client.clone(),
            shared,
            listing,
            task,
        };
        let synced = tokio::time::timeout(
            sync_timeout,
            watch.listing.wait_for(|l| l.listed || l.ended),
        )
        .await
        .map(|l| l.is_ok_and(|l| l.listed));
        match synced {
            Ok(true) => Ok(Arc::new(watch)),
            Ok(false) => Err(RolloutError::WatchEnded {
                namespace: namespace.to_string(),
                name: "*".to_string(),
            }),
            Err(_) => Err(RolloutError::NotSynced {
                namespace: namespace.to_string(),
                name: "*".to_string(),
                waited: sync_timeout,
                last_watch_error: watch.listing.borrow().watch_errors.last().cloned(),
            }),
        }
    }

    /// Follows the rollout of Deployment `name` from now: a watch whose samples start
    /// with the state the stores have.
    pub fn rollout(self: &Arc<Self>, name: &str) -> RolloutWatch {
        let started = Instant::now();
        let (tx, rx) = watch::channel(Progress {
            phase: Phase::Starting,
            samples: Vec::new(),
            decided_at: None,
            generation: 0,
            decided_resource_version: None,
        });
        let followed = Followed {
            name: name.to_string(),
            started,
            tx,
        };
        {
            let mut all = self
                .shared
                .followed
                .lock()
                .expect("no panic while evaluating");
            self.shared.evaluate(&followed);
            all.push(followed);
        }
        let mut rx = rx;
        rx.mark_changed();
        RolloutWatch {
            namespace: self.shared.namespace.clone(),
            name: name.to_string(),
            client: self.client.clone(),
            started,
            rx,
            namespace_watch: self.clone(),
        }
    }

    /// The watch errors so far (the watches back off and start again after each).
    fn watch_errors(&self) -> Vec<String> {
        self.listing.borrow().watch_errors.clone()
    }
}

/// A running watch on one Deployment, its ReplicaSets and their pods (through its
/// namespace's [`NamespaceWatch`]). Start it before changing the Deployment to see every
/// intermediate state.
pub struct RolloutWatch {
    namespace: String,
    name: String,
    client: Client,
    started: Instant,
    rx: watch::Receiver<Progress>,
    namespace_watch: Arc<NamespaceWatch>,
}

impl RolloutWatch {
    /// Starts watching the Deployment's namespace and returns once the initial lists
    /// are in, or fails with [`RolloutError::NotSynced`] after [`SYNC_TIMEOUT`]. To wait
    /// for several Deployments of one namespace, start one [`NamespaceWatch`] and take a
    /// [`NamespaceWatch::rollout`] of each.
    pub async fn start(
        client: &Client,
        namespace: &str,
        name: &str,
    ) -> Result<RolloutWatch, RolloutError> {
        Self::start_within(client, namespace, name, SYNC_TIMEOUT).await
    }

    /// [`RolloutWatch::start`] with its own limit for the initial lists.
    pub async fn start_within(
        client: &Client,
        namespace: &str,
        name: &str,
        sync_timeout: Duration,
    ) -> Result<RolloutWatch, RolloutError> {
        let namespace_watch = NamespaceWatch::start(client, namespace, sync_timeout)
            .await
            .map_err(|e| match e {
                RolloutError::NotSynced {
                    namespace,
                    waited,
                    last_watch_error,
                    ..
                } => RolloutError::NotSynced {
                    namespace,
                    name: name.to_string(),
                    waited,
                    last_watch_error,
                },
                RolloutError::WatchEnded { namespace, .. } => RolloutError::WatchEnded {
                    namespace,
                    name: name.to_string(),
                },
                other => other,
            })?;
        Ok(namespace_watch.rollout(name))
    }

    fn ended(&self) -> RolloutError {
        RolloutError::WatchEnded {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
        }
    }

    /// Current phase.
    pub fn phase(&self) -> Phase {
        self.rx.borrow().phase.clone()
    }

    /// Samples so far.
    pub fn samples(&self) -> Vec<Sample> {
        self.rx.borrow().samples.clone()
    }

    /// A handle on the samples that outlives [`RolloutWatch::wait`], which consumes the watch:
    /// what it recorded over the whole wait, whichever way the wait ended.
    pub fn recorder(&self) -> SampleRecorder {
        SampleRecorder {
            rx: self.rx.clone(),
        }
    }

    /// Waits for the rollout of the Deployment's generation as the API server
    /// has it when `wait` is called, so a change made after
    /// [`RolloutWatch::start`] is never mistaken for the previous rollout's
    /// completion. A failed read is an error, not "any generation".
    pub async fn wait(self, timeout: Duration) -> Result<RolloutReport, RolloutError> {
        let generation = current_generation(&self.client, &self.namespace, &self.name).await?;
        self.wait_for_generation(generation, timeout).await
    }

    /// Waits until the rollout of `generation` (or a later one) completes, fails,
    /// or `timeout` passes. A completion of an older generation never counts.
    pub async fn wait_for_generation(
        mut self,
        generation: i64,
        timeout: Duration,
    ) -> Result<RolloutReport, RolloutError> {
        let decided = tokio::time::timeout(timeout, self.rx.wait_for(|p| p.settles(generation)))
            .await
            .map(|settled| settled.is_ok());
        let returned = Instant::now();
        let progress = self.rx.borrow().clone();
        match decided {
            Ok(false) => return Err(self.ended()),
            Err(_) => return Err(self.timed_out(progress, generation, timeout).await),
            Ok(true) => {}
        }
        let decided_at = progress.decided_at.unwrap_or(returned);
        match progress.phase {
            Phase::Complete => Ok(RolloutReport {
                namespace: self.namespace.clone(),
                name: self.name.clone(),
                took: decided_at.duration_since(self.started),
                return_delay: returned.duration_since(decided_at),
                generation: progress.generation,
                decided_resource_version: progress.decided_resource_version.unwrap_or_default(),
                samples: progress.samples,
            }),
            Phase::Failed { reason, message } => {
                let diagnostics =
                    diagnostics::gather(&self.client, &self.namespace, Some(&self.name)).await;
                Err(RolloutError::ProgressDeadline {
                    namespace: self.namespace.clone(),
                    name: self.name.clone(),
                    reason,
                    message,
                    after: decided_at.duration_since(self.started),
                    diagnostics: Box::new(diagnostics),
                })
            }
            // `settles` only accepts a decided phase.
            Phase::Starting | Phase::Progressing(_) => {
                Err(self.timed_out(progress, generation, timeout).await)
            }
        }
    }

    async fn timed_out(&self, progress: Progress, target: i64, waited: Duration) -> RolloutError {
        let diagnostics =
            diagnostics::gather(&self.client, &self.namespace, Some(&self.name)).await;
        let mut state = if progress.generation < target {
            format!(
                "waiting for generation {target}; the watch has seen generation {} ({:?})",
                progress.generation, progress.phase
            )
        } else {
            match progress.phase {
                Phase::Progressing(s) => s,
                other => format!("{other:?}"),
            }
        };
        if let Some(e) = self.namespace_watch.watch_errors().last() {
            state.push_str(&format!("; last watch error: {e}"));
        }
        RolloutError::Timeout {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            waited,
            state,
            diagnostics: Box::new(diagnostics),
        }
    }
}

/// `metadata.generation` of a Deployment as the API server has it now.
pub async fn current_generation(
    client: &Client,
    namespace: &str,
    name: &str,
) -> Result<i64, RolloutError> {
    let api: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    let deployment = api
        .get_opt(name)
        .await
        .map_err(|source| RolloutError::ReadGeneration {
            namespace: namespace.to_string(),
            name: name.to_string(),
            source,
        })?
        .ok_or_else(|| RolloutError::NotFound {
            namespace: namespace.to_string(),
            name: name.to_string(),
        })?;
    deployment
        .metadata
        .generation
        .ok_or_else(|| RolloutError::NoGeneration {
            namespace: namespace.to_string(),
            name: name.to_string(),
        })
}

/// Waits for one Deployment's rollout of its current generation (see the module docs).
pub async fn wait_for_rollout(
    client: &Client,
    namespace: &str,
    name: &str,
    timeout: Duration,
) -> Result<RolloutReport, RolloutError> {
    RolloutWatch::start(client, namespace, name)
        .await?
        .wait(timeout)
        .await
}

/// One [`NamespaceWatch`] per namespace of `keys` (`(namespace, name)`), and a rollout
/// watch of each key from it, in the order of `keys`.
pub async fn watch_all(
    client: &Client,
    keys: &[(String, String)],
) -> Result<Vec<RolloutWatch>, RolloutError> {
    let mut namespaces: BTreeMap<&str, Arc<NamespaceWatch>> = BTreeMap::new();
    let mut watches = Vec::new();
    for (namespace, name) in keys {
        let namespace_watch = match namespaces.get(namespace.as_str()) {
            Some(w) => w.clone(),
            None => {
                let w = NamespaceWatch::start(client, namespace, SYNC_TIMEOUT).await?;
                namespaces.insert(namespace, w.clone());
                w
            }
        };
        watches.push(namespace_watch.rollout(name));
    }
    Ok(watches)
}

/// Waits for every `(namespace, name)` concurrently, each at its current
/// generation; returns every report, or the first failure.
pub async fn wait_for_all(
    client: &Client,
    deployments: &[(String, String)],
    timeout: Duration,
) -> Result<Vec<RolloutReport>, RolloutError> {
    let watches = watch_all(client, deployments).await?;
    futures::future::try_join_all(watches.into_iter().map(|w| w.wait(timeout))).await
}

/// One Deployment at the generation an apply produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub namespace: String,
    pub name: String,
    pub generation: i64,
}

/// Waits for every target's rollout of (at least) its generation, concurrently.
pub async fn wait_for_generations(
    client: &Client,
    targets: &[Target],
    timeout: Duration,
) -> Result<Vec<RolloutReport>, RolloutError> {
    let keys: Vec<(String, String)> = targets
        .iter()
        .map(|t| (t.namespace.clone(), t.name.clone()))
        .collect();
    let watches = watch_all(client, &keys).await?;
    let waits = watches
        .into_iter()
        .zip(targets)
        .map(|(w, t)| w.wait_for_generation(t.generation, timeout));
    futures::future::try_join_all(waits).await
}

/// Slack a fail-fast check allows past `progressDeadlineSeconds`, measured from
/// the apply. The deployment controller marks the rollout stuck when it next
/// syncs after the deadline (it requeues the Deployment for then); on top come
/// up to 1 s of truncation of the condition's timestamps (whole seconds), the
/// watch delivering the condition, the wait gathering diagnostics (a few LISTs)
/// and scheduling delays on a loaded 2-core machine. Measured: 0.6 s past an
/// 8 s deadline on an idle box; 5 s leaves room for the load while a wait
/// that ran to its own timeout instead (90 s before) is far outside.
pub const FAIL_FAST_MARGIN: Duration = Duration::from_secs(5);

/// What a fail-fast check found wrong with a broken release's wait.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FailFastFinding {
    /// The wait did not end on `ProgressDeadlineExceeded`.
    OtherOutcome { outcome: String },
    /// It ended later than the deadline plus [`FAIL_FAST_MARGIN`].
    TooLate { after: Duration, bound: Duration },
    /// It ended before the deadline could have passed (a stale condition).
    TooEarly { after: Duration, deadline: Duration },
}

impl std::fmt::Display for FailFastFinding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FailFastFinding::OtherOutcome { outcome } => {
                write!(
                    f,
                    "the wait ended without ProgressDeadlineExceeded: {outcome}"
                )
            }
            FailFastFinding::TooLate { after, bound } => {
                write!(
                    f,
                    "the wait ended {after:?} after the apply, beyond {bound:?}"
                )
            }
            FailFastFinding::TooEarly { after, deadline } => write!(
                f,
                "the wait ended {after:?} after the apply, before the {deadline:?} deadline"
            ),
        }
    }
}

/// Judges a broken release's wait: it must end with `ProgressDeadlineExceeded`,
/// `after` (measured from the apply) within `deadline` + `margin`, and not
/// before `deadline` less the 1 s the condition's timestamps are truncated to.
/// An empty result is a pass.
pub fn check_fail_fast(
    outcome: &Result<RolloutReport, RolloutError>,
    deadline: Duration,
    margin: Duration,
    after: Duration,
) -> Vec<FailFastFinding> {
    let mut findings = Vec::new();
    match outcome {
        Err(RolloutError::ProgressDeadline { reason, .. })
            if reason == "ProgressDeadlineExceeded" => {}
        Err(other) => findings.push(FailFastFinding::OtherOutcome {
            outcome: other
                .to_string()
                .lines()
                .next()
                .unwrap_or_default()
                .to_string(),
        }),
        Ok(_) => findings.push(FailFastFinding::OtherOutcome {
            outcome: "rolled out".into(),
        }),
    }
    let bound = deadline + margin;
    if after > bound {
        findings.push(FailFastFinding::TooLate { after, bound });
    }
    if after + Duration::from_secs(1) < deadline {
        findings.push(FailFastFinding::TooEarly { after, deadline });
    }
    findings
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
            "metadata": {"name": "web", "namespace": "ns", "generation": generation, "annotations": {REVISION_ANNOTATION: revision}},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}}, "template": {}},
            "status": {"observedGeneration": observed, "replicas": replicas, "updatedReplicas": updated,
                       "readyReplicas": ready, "availableReplicas": available, "conditions": conditions}
        }))
        .unwrap()
    }

    fn replicaset(name: &str, revision: &str) -> ReplicaSet {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "ns", "annotations": {REVISION_ANNOTATION: revision},
                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "uid": "u"}]},
        }))
        .unwrap()
    }

    fn pod(name: &str, rs: &str, ready: bool) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "ns", "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": rs, "uid": "u"}]},
            "status": {"conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}
        }))
        .unwrap()
    }

    /// Reflector stores listed with these objects, as a [`NamespaceWatch`] has them.
    struct Stores {
        deployments: Store<Deployment>,
        replicasets: Store<ReplicaSet>,
        pods: Store<Pod>,
    }

    fn listed<K>(objects: Vec<K>) -> Store<K>
    where
        K: ::kube::Resource<DynamicType = ()> + Clone + 'static,
    {
        let mut writer = ::kube::runtime::reflector::store::Writer::<K>::default();
        writer.apply_watcher_event(&watcher::Event::Init);
        for object in objects {
            writer.apply_watcher_event(&watcher::Event::InitApply(object));
        }
        writer.apply_watcher_event(&watcher::Event::InitDone);
        let reader = writer.as_reader();
        // The reader keeps the data; the writer may go.
        reader
    }

    impl Stores {
        fn tracker(&self) -> Tracker<'_> {
            Tracker {
                namespace: "ns",
                name: "web",
                started: Instant::now(),
                deployments: &self.deployments,
                replicasets: &self.replicasets,
                pods: &self.pods,
            }
        }
    }

    fn tracker(d: Deployment, sets: Vec<ReplicaSet>, pods: Vec<Pod>) -> Stores {
        Stores {
            deployments: listed(vec![d]),
            replicasets: listed(sets),
            pods: listed(pods),
        }
    }

    #[test]
    fn a_rollout_is_complete_when_counts_match_and_no_old_pod_is_left() {
        let t = tracker(
            deployment(2, 2, "2", [2, 2, 2, 2], false),
            vec![replicaset("web-1", "1"), replicaset("web-2", "2")],
            vec![pod("a", "web-2", true), pod("b", "web-2", true)],
        );
        let (phase, sample) = t.tracker().evaluate();
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
            matches!(t.tracker().evaluate().0, Phase::Progressing(s) if s.contains("observe generation 2"))
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
        let (phase, sample) = t.tracker().evaluate();
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
        match t.tracker().evaluate().0 {
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
        assert!(matches!(t.tracker().evaluate().0, Phase::Progressing(_)));
    }

    fn decided(phase: Phase, generation: i64) -> Progress {
        Progress {
            phase,
            samples: Vec::new(),
            decided_at: Some(Instant::now()),
            generation,
            decided_resource_version: Some("7".into()),
        }
    }

    #[test]
    fn a_completion_of_an_older_generation_never_settles_a_wait_for_a_newer_one() {
        // The controller has observed and completed generation 1 only.
        let t = tracker(
            deployment(1, 1, "1", [2, 2, 2, 2], false),
            vec![replicaset("web-1", "1")],
            vec![pod("a", "web-1", true), pod("b", "web-1", true)],
        );
        let (phase, sample) = t.tracker().evaluate();
        assert_eq!(phase, Phase::Complete);
        let progress = decided(phase, sample.unwrap().generation);
        assert!(progress.settles(1));
        assert!(
            !progress.settles(2),
            "a wait for generation 2 settled on generation 1's completion"
        );
    }

    #[test]
    fn an_undecided_phase_never_settles() {
        let mut progress = decided(Phase::Progressing("1 of 2 replicas updated".into()), 2);
        assert!(!progress.settles(2));
        progress.phase = Phase::Complete;
        progress.decided_at = None;
        assert!(!progress.settles(2));
    }

    /// A client for an address where nothing listens.
    fn unreachable_client() -> Client {
        crate::install_crypto_provider();
        let config = ::kube::Config::new("http://127.0.0.1:9".parse().unwrap());
        Client::try_from(config).unwrap()
    }

    #[tokio::test]
    async fn a_watch_that_cannot_list_fails_to_start_instead_of_waiting_on_nothing() {
        let started = RolloutWatch::start_within(
            &unreachable_client(),
            "ns",
            "web",
            Duration::from_millis(500),
        )
        .await;
        match started {
            Err(RolloutError::NotSynced {
                last_watch_error, ..
            }) => assert!(last_watch_error.is_some()),
            Err(other) => panic!("expected NotSynced, got {other}"),
            Ok(_) => panic!("a watch that never listed was reported as started"),
        }
    }

    #[tokio::test]
    async fn a_failed_read_of_the_generation_is_an_error_not_generation_zero() {
        match current_generation(&unreachable_client(), "ns", "web").await {
            Err(RolloutError::ReadGeneration { .. }) => {}
            other => panic!("expected ReadGeneration, got {other:?}"),
        }
    }

    fn deadline_exceeded() -> Result<RolloutReport, RolloutError> {
        Err(RolloutError::ProgressDeadline {
            namespace: "ns".into(),
            name: "web".into(),
            reason: "ProgressDeadlineExceeded".into(),
            message: "ReplicaSet \"web-2\" has timed out progressing.".into(),
            after: Duration::from_secs(10),
            diagnostics: Box::default(),
        })
    }

    #[test]
    fn a_broken_release_caught_on_its_deadline_passes_the_fail_fast_check() {
        let deadline = Duration::from_secs(10);
        let findings = check_fail_fast(
            &deadline_exceeded(),
            deadline,
            FAIL_FAST_MARGIN,
            Duration::from_millis(10_600),
        );
        assert_eq!(findings, vec![]);
    }

    #[test]
    fn the_fail_fast_check_rejects_a_late_end_another_outcome_and_an_early_end() {
        let deadline = Duration::from_secs(10);
        let late = deadline + FAIL_FAST_MARGIN + Duration::from_millis(1);
        assert!(matches!(
            check_fail_fast(&deadline_exceeded(), deadline, FAIL_FAST_MARGIN, late)[..],
            [FailFastFinding::TooLate { .. }]
        ));
        let timed_out = Err(RolloutError::Timeout {
            namespace: "ns".into(),
            name: "web".into(),
            waited: Duration::from_secs(12),
            state: "1 of 2 replicas updated".into(),
            diagnostics: Box::default(),
        });
        assert!(matches!(
            check_fail_fast(
                &timed_out,
                deadline,
                FAIL_FAST_MARGIN,
                Duration::from_secs(12)
            )[..],
            [FailFastFinding::OtherOutcome { .. }]
        ));
        assert!(matches!(
            check_fail_fast(
                &deadline_exceeded(),
                deadline,
                FAIL_FAST_MARGIN,
                Duration::from_secs(2)
            )[..],
            [FailFastFinding::TooEarly { .. }]
        ));
    }
}
