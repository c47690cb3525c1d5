//! Deploying a release: `deploy` (apply + prune + wait for the generations the
//! apply produced), and the blue/green switch (new Deployments ready, then
//! Services re-pointed, then the old ones deleted), watched by an independent
//! observer whose timeline ([`DeployEvent`]) lets [`check_bluegreen_switch`]
//! prove the Services moved only after the new pods were all Ready.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::{Duration, Instant, SystemTime};

use ::kube::api::Api;
use ::kube::runtime::reflector::Store;
use ::kube::runtime::watcher;
use ::kube::{Client, ResourceExt};
use futures::{StreamExt, stream::BoxStream};
use k8s_openapi::api::core::v1::{Pod, Service};
use tokio::sync::watch;

use super::apply::{self, ApplyError, ApplyReport};
use super::cache::{self, Change};
use super::rollout::{self, RolloutError, RolloutReport, Target, is_ready};
use crate::manifests::{Bundle, Object, Strategy};

#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    #[error("apply the bundle")]
    Apply(#[from] ApplyError),
    #[error("wait for the rollout")]
    Rollout(#[from] RolloutError),
    #[error("find the generation the apply gave Deployment {key}")]
    NoGeneration { key: String },
    #[error(
        "start watching the Services and pods of {namespaces:?}: the watches did not list within {waited:?}{}",
        last_watch_error.as_ref().map(|e| format!(" (last watch error: {e})")).unwrap_or_default()
    )]
    ObserverNotSynced {
        namespaces: Vec<String>,
        waited: Duration,
        last_watch_error: Option<String>,
    },
}

/// Something a deploy saw happen, on the deploy's own clock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeployEvent {
    /// Since the deploy started ([`DeployReport::started_at`]).
    pub at: Duration,
    pub what: DeployEventKind,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeployEventKind {
    /// A watch first saw `desired` Ready, non-terminating pods matching the
    /// Deployment's selector (`namespace/name`).
    PodsReady {
        deployment: String,
        ready: i32,
        desired: i32,
    },
    /// A watch first saw the Service (`namespace/name`) with the selector the
    /// bundle renders for it: from then on it sends traffic to this release.
    ServiceSwitched {
        service: String,
        selector: BTreeMap<String, String>,
    },
}

/// What a deploy did.
#[derive(Clone, Debug)]
pub struct DeployReport {
    /// Wall clock when the deploy started: the origin of every event's `at`.
    pub started_at: SystemTime,
    pub apply: ApplyReport,
    pub rollouts: Vec<RolloutReport>,
    /// Services re-pointed by a blue/green switch (empty for a rolling deploy).
    pub switched: Vec<String>,
    /// The observed timeline of a blue/green switch (empty for a rolling deploy).
    pub events: Vec<DeployEvent>,
    pub took: Duration,
}

/// The Deployments of a bundle at the generations an apply gave them.
fn targets_of(
    bundle: &Bundle,
    generations: &BTreeMap<String, i64>,
) -> Result<Vec<Target>, ReleaseError> {
    bundle
        .objects
        .iter()
        .filter(|o| matches!(o, Object::Deployment(_)))
        .map(|o| {
            let key = o.key();
            let generation = *generations
                .get(&key)
                .ok_or(ReleaseError::NoGeneration { key })?;
            Ok(Target {
                namespace: o.namespace().unwrap_or_default(),
                name: o.name(),
                generation,
            })
        })
        .collect()
}

/// Applies the bundle, prunes what `env`'s previous release had and this one
/// dropped, and waits for every Deployment to roll out the generation this
/// apply gave it.
pub async fn deploy(
    client: &Client,
    bundle: &Bundle,
    env: &str,
    timeout: Duration,
) -> Result<DeployReport, ReleaseError> {
    let started_at = SystemTime::now();
    let started = Instant::now();
    let apply = apply::apply_bundle(client, bundle, Some(env)).await?;
    let targets = targets_of(bundle, &apply.generations)?;
    let rollouts = rollout::wait_for_generations(client, &targets, timeout).await?;
    Ok(DeployReport {
        started_at,
        apply,
        rollouts,
        switched: Vec::new(),
        events: Vec::new(),
        took: started.elapsed(),
    })
}

/// Deploys a release the way its strategy asks: a blue/green bundle through
/// [`bluegreen_switch`], anything else through [`deploy`].
pub async fn deploy_release(
    client: &Client,
    bundle: &Bundle,
    env: &str,
    strategy: Strategy,
    timeout: Duration,
) -> Result<DeployReport, ReleaseError> {
    match strategy {
        Strategy::Bluegreen => bluegreen_switch(client, bundle, env, timeout).await,
        Strategy::Rolling | Strategy::Recreate => deploy(client, bundle, env, timeout).await,
    }
}

/// How long the observer may take to see the Services' new selectors after
/// they were applied (a watch event, normally milliseconds).
const OBSERVER_SETTLE: Duration = Duration::from_secs(10);

/// Blue/green: applies everything but the Services, waits until every Deployment
/// of the bundle has rolled out, then points the Services at it, then prunes the
/// previous release's Deployments. Switching to the previous bundle is the rollback.
/// An independent watch of the Services and pods records the timeline in
/// [`DeployReport::events`]; judge it with [`check_bluegreen_switch`].
pub async fn bluegreen_switch(
    client: &Client,
    bundle: &Bundle,
    env: &str,
    timeout: Duration,
) -> Result<DeployReport, ReleaseError> {
    let started_at = SystemTime::now();
    let started = Instant::now();
    let observer = SwitchObserver::start(client, bundle, started).await?;
    let (services, rest): (Vec<&Object>, Vec<&Object>) = bundle
        .objects
        .iter()
        .partition(|o| matches!(o, Object::Service(_)));
    let applied_rest = apply::apply_with_generations(client, rest).await?;
    let targets = targets_of(bundle, &apply::generations_of(&applied_rest))?;
    let rollouts = rollout::wait_for_generations(client, &targets, timeout).await?;
    let applied_services = apply::apply_with_generations(client, services).await?;
    let events = observer.finish(OBSERVER_SETTLE).await;
    let pruned = apply::prune(client, bundle, env).await?;
    let switched: Vec<String> = applied_services.iter().map(|(k, _)| k.clone()).collect();
    let mut applied = applied_rest;
    applied.extend(applied_services);
    Ok(DeployReport {
        started_at,
        apply: ApplyReport {
            generations: apply::generations_of(&applied),
            applied: applied.into_iter().map(|(key, _)| key).collect(),
            pruned,
            took: started.elapsed(),
        },
        rollouts,
        switched,
        events,
        took: started.elapsed(),
    })
}

/// A Deployment of the bundle: whose pods to count, and how many must be Ready.
#[derive(Clone, Debug)]
struct NewPods {
    key: String,
    namespace: String,
    selector: BTreeMap<String, String>,
    desired: i32,
}

/// A Service of the bundle and the selector it renders.
#[derive(Clone, Debug)]
struct SwitchedService {
    key: String,
    namespace: String,
    name: String,
    selector: BTreeMap<String, String>,
}

fn new_pods_of(bundle: &Bundle) -> Vec<NewPods> {
    bundle
        .objects
        .iter()
        .filter_map(|o| match o {
            Object::Deployment(d) => {
                let spec = d.spec.as_ref()?;
                Some(NewPods {
                    key: format!("{}/{}", d.namespace().unwrap_or_default(), d.name_any()),
                    namespace: d.namespace().unwrap_or_default(),
                    selector: spec.selector.match_labels.clone().unwrap_or_default(),
                    desired: spec.replicas.unwrap_or(1),
                })
            }
            _ => None,
        })
        .collect()
}

fn services_of(bundle: &Bundle) -> Vec<SwitchedService> {
    bundle
        .objects
        .iter()
        .filter_map(|o| match o {
            Object::Service(s) => Some(SwitchedService {
                key: format!("{}/{}", s.namespace().unwrap_or_default(), s.name_any()),
                namespace: s.namespace().unwrap_or_default(),
                name: s.name_any(),
                selector: s
                    .spec
                    .as_ref()
                    .and_then(|spec| spec.selector.clone())
                    .unwrap_or_default(),
            }),
            _ => None,
        })
        .collect()
}

fn labels_match(labels: &BTreeMap<String, String>, selector: &BTreeMap<String, String>) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

#[derive(Default)]
struct Timeline {
    events: Vec<DeployEvent>,
    synced: bool,
    watch_errors: Vec<String>,
}

/// Watches the Services and pods of a bundle's namespaces and records when each
/// new Deployment's pods were first all Ready and when each Service first had
/// the bundle's selector. Start it before the switch begins.
pub struct SwitchObserver {
    rx: watch::Receiver<Timeline>,
    expected: usize,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for SwitchObserver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl SwitchObserver {
    /// Starts the watches; returns once their initial lists are in. `origin` is
    /// the instant events' `at` is measured from.
    pub async fn start(
        client: &Client,
        bundle: &Bundle,
        origin: Instant,
    ) -> Result<SwitchObserver, ReleaseError> {
        let new_pods = new_pods_of(bundle);
        let services = services_of(bundle);
        let namespaces: BTreeSet<String> = new_pods
            .iter()
            .map(|d| d.namespace.clone())
            .chain(services.iter().map(|s| s.namespace.clone()))
            .collect();
        let mut pods: BTreeMap<String, Store<Pod>> = BTreeMap::new();
        let mut live_services: BTreeMap<String, Store<Service>> = BTreeMap::new();
        let mut streams: Vec<BoxStream<'static, (usize, Change)>> = Vec::new();
        for ns in &namespaces {
            let (pod_store, pod_changes) = cache::follow(
                Api::<Pod>::namespaced(client.clone(), ns),
                watcher::Config::default(),
            );
            let (service_store, service_changes) = cache::follow(
                Api::<Service>::namespaced(client.clone(), ns),
                watcher::Config::default(),
            );
            pods.insert(ns.clone(), pod_store);
            live_services.insert(ns.clone(), service_store);
            for changes in [pod_changes, service_changes] {
                let index = streams.len();
                streams.push(changes.map(move |c| (index, c)).boxed());
            }
        }
        let mut listed = vec![false; streams.len()];
        let mut seen = futures::stream::select_all(streams);
        let (tx, mut rx) = watch::channel(Timeline::default());
        let expected = new_pods.len() + services.len();
        let task = tokio::spawn(async move {
            let mut ready_seen: BTreeSet<String> = BTreeSet::new();
            let mut switch_seen: BTreeSet<String> = BTreeSet::new();
            while let Some((index, change)) = seen.next().await {
                match change {
                    Change::Applied { listed: done } => listed[index] |= done,
                    Change::Error(e) => {
                        tx.send_modify(|t| {
                            if t.watch_errors.len() < 20 {
                                t.watch_errors.push(e)
                            }
                        });
                        continue;
                    }
                }
                if !listed.iter().all(|l| *l) {
                    continue;
                }
                // One instant per evaluation, pods before Services: a Service
                // already switched when the watch started is not "before" pods
                // already Ready then.
                let at = origin.elapsed();
                let mut new_events = Vec::new();
                for target in &new_pods {
                    if ready_seen.contains(&target.key) {
                        continue;
                    }
                    let ready = pods.get(&target.namespace).map_or(0, |store| {
                        store
                            .state_filter(|p| {
                                labels_match(p.labels(), &target.selector) && is_ready(p)
                            })
                            .len()
                    });
                    let ready = i32::try_from(ready).unwrap_or(i32::MAX);
                    if target.desired > 0 && ready >= target.desired {
                        ready_seen.insert(target.key.clone());
                        new_events.push(DeployEvent {
                            at,
                            what: DeployEventKind::PodsReady {
                                deployment: target.key.clone(),
                                ready,
                                desired: target.desired,
                            },
                        });
                    }
                }
                for service in &services {
                    if switch_seen.contains(&service.key) {
                        continue;
                    }
                    let live = live_services
                        .get(&service.namespace)
                        .and_then(|store| cache::get(store, &service.namespace, &service.name))
                        .and_then(|s| s.spec.as_ref()?.selector.clone());
                    if live.as_ref() == Some(&service.selector) {
                        switch_seen.insert(service.key.clone());
                        new_events.push(DeployEvent {
                            at,
                            what: DeployEventKind::ServiceSwitched {
                                service: service.key.clone(),
                                selector: service.selector.clone(),
                            },
                        });
                    }
                }
                tx.send_if_modified(|t| {
                    let changed = !t.synced || !new_events.is_empty();
                    t.synced = true;
                    t.events.append(&mut new_events);
                    changed
                });
            }
        });
        let synced = tokio::time::timeout(rollout::SYNC_TIMEOUT, rx.wait_for(|t| t.synced))
            .await
            .is_ok_and(|listed| listed.is_ok());
        if !synced {
            let last_watch_error = rx.borrow().watch_errors.last().cloned();
            task.abort();
            return Err(ReleaseError::ObserverNotSynced {
                namespaces: namespaces_of(bundle),
                waited: rollout::SYNC_TIMEOUT,
                last_watch_error,
            });
        }
        Ok(SwitchObserver { rx, expected, task })
    }

    /// Events so far.
    pub fn events(&self) -> Vec<DeployEvent> {
        self.rx.borrow().events.clone()
    }

    /// Stops watching once every expected event is in, or after `settle`, and
    /// returns the timeline (what is missing is for the verdict to report).
    pub async fn finish(mut self, settle: Duration) -> Vec<DeployEvent> {
        let expected = self.expected;
        let _complete = tokio::time::timeout(settle, async {
            self.rx
                .wait_for(|t| t.events.len() >= expected)
                .await
                .is_ok()
        })
        .await;
        self.events()
    }
}

fn namespaces_of(bundle: &Bundle) -> Vec<String> {
    bundle
        .objects
        .iter()
        .filter_map(Object::namespace)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// Something wrong with a blue/green switch's timeline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SwitchFinding {
    /// No Service of the bundle selects the pods of a Deployment of the bundle:
    /// there is no switch to judge.
    NothingToCheck,
    /// The Deployment asks for no pod, so "all new pods Ready" says nothing.
    NoPods {
        deployment: String,
    },
    NeverReady {
        deployment: String,
    },
    NeverSwitched {
        service: String,
    },
    /// The Service sent traffic to the new release before its pods were all Ready.
    SwitchedBeforeReady {
        service: String,
        deployment: String,
        switched_at: Duration,
        ready_at: Duration,
    },
}

impl fmt::Display for SwitchFinding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SwitchFinding::NothingToCheck => {
                write!(f, "no Service of the bundle selects a Deployment of it")
            }
            SwitchFinding::NoPods { deployment } => {
                write!(f, "{deployment} asks for no pod")
            }
            SwitchFinding::NeverReady { deployment } => {
                write!(f, "the pods of {deployment} were never seen all Ready")
            }
            SwitchFinding::NeverSwitched { service } => {
                write!(f, "{service} was never seen with the new selector")
            }
            SwitchFinding::SwitchedBeforeReady {
                service,
                deployment,
                switched_at,
                ready_at,
            } => write!(
                f,
                "{service} switched at {switched_at:?}, before the pods of {deployment} were all Ready at {ready_at:?}"
            ),
        }
    }
}

/// Judges a blue/green switch from its timeline: every Service of the bundle
/// that selects a Deployment of the bundle must have switched, and not before
/// that Deployment's pods were all Ready. An empty result is a pass; a switch
/// with nothing to check is a finding, not a pass.
pub fn check_bluegreen_switch(bundle: &Bundle, events: &[DeployEvent]) -> Vec<SwitchFinding> {
    let new_pods = new_pods_of(bundle);
    let ready_at = |key: &str| {
        events.iter().find_map(|e| match &e.what {
            DeployEventKind::PodsReady { deployment, .. } if deployment == key => Some(e.at),
            _ => None,
        })
    };
    let switched_at = |key: &str| {
        events.iter().find_map(|e| match &e.what {
            DeployEventKind::ServiceSwitched { service, .. } if service == key => Some(e.at),
            _ => None,
        })
    };
    let mut findings = Vec::new();
    let mut checked = 0;
    for service in services_of(bundle) {
        let template_labels = |d: &NewPods| {
            bundle.objects.iter().find_map(|o| match o {
                Object::Deployment(dep)
                    if format!("{}/{}", dep.namespace().unwrap_or_default(), dep.name_any())
                        == d.key =>
                {
                    dep.spec
                        .as_ref()?
                        .template
                        .metadata
                        .as_ref()?
                        .labels
                        .clone()
                }
                _ => None,
            })
        };
        for target in new_pods.iter().filter(|d| {
            d.namespace == service.namespace
                && template_labels(d).is_some_and(|l| labels_match(&l, &service.selector))
        }) {
            checked += 1;
            if target.desired <= 0 {
                findings.push(SwitchFinding::NoPods {
                    deployment: target.key.clone(),
                });
                continue;
            }
            match (switched_at(&service.key), ready_at(&target.key)) {
                (None, _) => findings.push(SwitchFinding::NeverSwitched {
                    service: service.key.clone(),
                }),
                (Some(_), None) => findings.push(SwitchFinding::NeverReady {
                    deployment: target.key.clone(),
                }),
                (Some(switched), Some(ready)) if switched < ready => {
                    findings.push(SwitchFinding::SwitchedBeforeReady {
                        service: service.key.clone(),
                        deployment: target.key.clone(),
                        switched_at: switched,
                        ready_at: ready,
                    })
                }
                (Some(_), Some(_)) => {}
            }
        }
    }
    if checked == 0 {
        findings.push(SwitchFinding::NothingToCheck);
    }
    findings
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifests::{self, Options};

    fn frontend_bluegreen(release: &str) -> Bundle {
        let mut options = Options::for_env("dev");
        options.release = release.to_string();
        options.strategy = Strategy::Bluegreen;
        let mut bundle = manifests::render(&options).unwrap();
        bundle.objects.retain(|o| match o {
            Object::Deployment(_) | Object::Service(_) => o.name().starts_with("frontend"),
            _ => false,
        });
        bundle
    }

    fn at(ms: u64, what: DeployEventKind) -> DeployEvent {
        DeployEvent {
            at: Duration::from_millis(ms),
            what,
        }
    }

    fn ready(deployment: &str) -> DeployEventKind {
        DeployEventKind::PodsReady {
            deployment: deployment.into(),
            ready: 2,
            desired: 2,
        }
    }

    fn switched(service: &str) -> DeployEventKind {
        DeployEventKind::ServiceSwitched {
            service: service.into(),
            selector: BTreeMap::new(),
        }
    }

    /// Every Service of the frontend bundle, switched at `ms`.
    fn all_switched(bundle: &Bundle, ms: u64) -> Vec<DeployEvent> {
        services_of(bundle)
            .iter()
            .map(|s| at(ms, switched(&s.key)))
            .collect()
    }

    #[test]
    fn a_switch_after_the_new_pods_are_ready_passes() {
        let bundle = frontend_bluegreen("v0.10.7");
        let mut events = vec![at(100, ready("dev/frontend-v0.10.7"))];
        events.extend(all_switched(&bundle, 100));
        assert_eq!(check_bluegreen_switch(&bundle, &events), vec![]);
    }

    #[test]
    fn a_switch_before_the_new_pods_are_ready_is_caught() {
        let bundle = frontend_bluegreen("v0.10.7");
        let mut events = all_switched(&bundle, 50);
        events.push(at(400, ready("dev/frontend-v0.10.7")));
        let findings = check_bluegreen_switch(&bundle, &events);
        assert!(!findings.is_empty());
        assert!(
            findings
                .iter()
                .all(|f| matches!(f, SwitchFinding::SwitchedBeforeReady { .. })),
            "{findings:?}"
        );
    }

    #[test]
    fn a_switch_with_no_deployment_to_check_is_not_a_pass() {
        let mut bundle = frontend_bluegreen("v0.10.7");
        bundle
            .objects
            .retain(|o| !matches!(o, Object::Deployment(_)));
        assert_eq!(
            check_bluegreen_switch(&bundle, &all_switched(&bundle, 1)),
            vec![SwitchFinding::NothingToCheck]
        );
    }

    #[test]
    fn missing_events_are_findings() {
        let bundle = frontend_bluegreen("v0.10.7");
        let findings = check_bluegreen_switch(&bundle, &[]);
        assert!(
            findings
                .iter()
                .any(|f| matches!(f, SwitchFinding::NeverSwitched { .. })),
            "{findings:?}"
        );
        let findings = check_bluegreen_switch(&bundle, &all_switched(&bundle, 1));
        assert!(
            findings
                .iter()
                .any(|f| matches!(f, SwitchFinding::NeverReady { .. })),
            "{findings:?}"
        );
    }
}
