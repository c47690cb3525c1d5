//! A watch of one namespace's pods from a complete initial list to its end: where each
//! pod was at the start, each app's fewest ready pods at any moment, and every pod seen
//! terminating. The drain judges a node drain by it; the load steps count the pod
//! terminations a load window covered. A watch that fails midway has a gap, so it yields
//! an error, never a partial observation.

use std::collections::BTreeMap;
use std::time::Duration;

use ::kube::api::Api;
use ::kube::runtime::watcher::{self, watcher};
use ::kube::{Client, ResourceExt};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use tokio::sync::oneshot;

use super::drain::APP_LABEL;
use super::rollout::is_ready;

#[derive(Debug, thiserror::Error)]
pub enum PodWatchError {
    #[error("keep watching the pods of namespace {namespace}: the observation has a gap")]
    Watch {
        namespace: String,
        #[source]
        source: watcher::Error,
    },
    #[error("sync the pod watch of namespace {namespace} within {waited:?}")]
    WatchSync { namespace: String, waited: Duration },
    #[error("keep the pod watch of namespace {namespace} running: its task ended abruptly")]
    WatchTask { namespace: String },
}

fn pod_key(pod: &Pod) -> String {
    format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any())
}

/// Where a pod was when the watch synced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodPlace {
    pub app: String,
    pub node: String,
}

/// What a pod watch saw between its initial sync and its end.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    /// `namespace/name` -> app and node of every pod present at the initial sync.
    pub initial: BTreeMap<String, PodPlace>,
    /// Per app, the fewest Ready, non-terminating pods at any moment after the sync.
    pub min_ready: BTreeMap<String, usize>,
    /// `namespace/name` -> app of every pod seen terminating or deleted after the sync.
    pub terminated: BTreeMap<String, String>,
    /// Watch events received after the sync.
    pub events: usize,
}

fn app_of(pod: &Pod) -> String {
    pod.labels().get(APP_LABEL).cloned().unwrap_or_default()
}

/// A running watch of one namespace's pods; [`PodWatch::finish`] ends it.
pub struct PodWatch {
    namespace: String,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<Observed, PodWatchError>>,
}

impl PodWatch {
    /// Starts watching and returns once the watch's initial list is complete
    /// (kube's `InitDone`), so nothing after this call can be missed.
    pub async fn start(
        client: &Client,
        namespace: &str,
        sync_timeout: Duration,
    ) -> Result<PodWatch, PodWatchError> {
        let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
        let (synced_tx, synced_rx) = oneshot::channel();
        let (stop, stop_rx) = oneshot::channel();
        let task = tokio::spawn(observe(api, namespace.to_string(), synced_tx, stop_rx));
        match tokio::time::timeout(sync_timeout, synced_rx).await {
            Ok(Ok(())) => Ok(PodWatch {
                namespace: namespace.to_string(),
                stop,
                task,
            }),
            // The task ended before the sync: its error says why.
            Ok(Err(_)) => Err(match task.await {
                Ok(Err(e)) => e,
                _ => PodWatchError::WatchTask {
                    namespace: namespace.into(),
                },
            }),
            Err(_) => {
                task.abort();
                Err(PodWatchError::WatchSync {
                    namespace: namespace.into(),
                    waited: sync_timeout,
                })
            }
        }
    }

    /// Stops the watch and returns what it saw, or the error that broke it:
    /// a watch that failed midway has a gap, so it yields no observation.
    pub async fn finish(self) -> Result<Observed, PodWatchError> {
        let _ = self.stop.send(());
        self.task.await.unwrap_or(Err(PodWatchError::WatchTask {
            namespace: self.namespace,
        }))
    }
}

async fn observe(
    api: Api<Pod>,
    namespace: String,
    synced: oneshot::Sender<()>,
    mut stop: oneshot::Receiver<()>,
) -> Result<Observed, PodWatchError> {
    // No backoff: the watcher would retry an error silently, and whatever
    // happened during the retry would be missed.
    let mut stream = watcher(api, watcher::Config::default()).boxed();
    let mut current: BTreeMap<String, Pod> = BTreeMap::new();
    let mut observed = Observed::default();
    let mut synced = Some(synced);
    loop {
        let event = tokio::select! {
            _ = &mut stop => return Ok(observed),
            event = stream.next() => event,
        };
        let event = match event {
            Some(Ok(event)) => event,
            Some(Err(source)) => return Err(PodWatchError::Watch { namespace, source }),
            None => return Err(PodWatchError::WatchTask { namespace }),
        };
        let after_sync = synced.is_none();
        match event {
            watcher::Event::Init => current.clear(),
            watcher::Event::InitApply(p) => {
                current.insert(pod_key(&p), p);
            }
            watcher::Event::InitDone => {
                observed.initial = current
                    .iter()
                    .map(|(key, p)| {
                        let node = p.spec.as_ref().and_then(|s| s.node_name.clone());
                        let place = PodPlace {
                            app: app_of(p),
                            node: node.unwrap_or_default(),
                        };
                        (key.clone(), place)
                    })
                    .collect();
                if let Some(tx) = synced.take() {
                    let _ = tx.send(());
                }
            }
            watcher::Event::Apply(p) => {
                if p.metadata.deletion_timestamp.is_some() {
                    observed.terminated.insert(pod_key(&p), app_of(&p));
                }
                current.insert(pod_key(&p), p);
            }
            watcher::Event::Delete(p) => {
                observed.terminated.insert(pod_key(&p), app_of(&p));
                current.remove(&pod_key(&p));
            }
        }
        if synced.is_some() {
            continue;
        }
        if after_sync {
            observed.events += 1;
        }
        // Count every app ever seen, so one whose pods are all gone counts 0.
        let mut ready: BTreeMap<String, usize> =
            observed.min_ready.keys().map(|a| (a.clone(), 0)).collect();
        for p in current.values() {
            *ready.entry(app_of(p)).or_default() += usize::from(is_ready(p));
        }
        for (app, n) in ready {
            let min = observed.min_ready.entry(app).or_insert(n);
            *min = (*min).min(n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ::kube::Config;

    #[tokio::test]
    async fn a_watch_that_fails_before_its_sync_is_an_error_not_an_empty_observation() {
        crate::install_crypto_provider();
        // Nothing listens on port 1: the watch's initial list fails at once.
        let config = Config::new("http://127.0.0.1:1".parse().unwrap());
        let client = Client::try_from(config).unwrap();
        let started = PodWatch::start(&client, "ns", Duration::from_secs(10)).await;
        assert!(
            matches!(started, Err(PodWatchError::Watch { .. })),
            "{:?}",
            started.err()
        );
    }
}
