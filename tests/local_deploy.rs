//! The whole Online Boutique deploys into `dev` and `test` and becomes Available;
//! each HA Deployment's pods sit on distinct nodes; draining a node through the
//! eviction API honours every PodDisruptionBudget and leaves every service with
//! a ready pod at every moment.

mod common_local;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use cdcheck::kube::drain;
use cdcheck::manifests::Bundle;
use common_local::{Cluster, chain};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use kube::runtime::{WatchStreamExt, watcher};

fn ha_deployments(bundle: &Bundle) -> Vec<(String, i32)> {
    bundle
        .deployments()
        .filter_map(|d| {
            let replicas = d.spec.as_ref()?.replicas.unwrap_or(1);
            (replicas >= 2).then(|| (d.metadata.name.clone().unwrap_or_default(), replicas))
        })
        .collect()
}

/// `app` label -> nodes of its pods.
async fn placement(cluster: &Cluster, env: &str) -> BTreeMap<String, Vec<String>> {
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), env);
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for pod in pods.list(&ListParams::default()).await.unwrap().items {
        if pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let app = pod
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("app").cloned())
            .unwrap_or_default();
        let node = pod.spec.and_then(|s| s.node_name).unwrap_or_default();
        out.entry(app).or_default().push(node);
    }
    out
}

async fn assert_spread(cluster: &Cluster, env: &str, bundle: &Bundle) {
    let placed = placement(cluster, env).await;
    for (name, replicas) in ha_deployments(bundle) {
        let nodes = placed.get(&name).cloned().unwrap_or_default();
        assert_eq!(nodes.len() as i32, replicas, "{env}/{name}: {nodes:?}");
        let distinct: BTreeSet<&String> = nodes.iter().collect();
        assert_eq!(
            distinct.len(),
            nodes.len(),
            "{env}/{name} has two pods on one node: {nodes:?}"
        );
    }
}

#[tokio::test]
async fn the_full_boutique_becomes_available_in_dev_and_test_with_ha_pods_on_distinct_nodes() {
    let cluster = require_cluster!();
    let mut bundles = Vec::new();
    let started = Instant::now();
    for env in ["dev", "test"] {
        let bundle = common_local::render(env, "v0.10.6", |_| {});
        bundles.push((env, bundle));
    }
    let deploys = bundles
        .iter()
        .map(|(env, bundle)| common_local::deploy(&cluster, bundle, env));
    let reports = futures::future::join_all(deploys).await;
    let took = started.elapsed();
    for ((env, bundle), report) in bundles.iter().zip(&reports) {
        assert_eq!(report.rollouts.len(), bundle.deployments().count());
        assert_eq!(
            report.rollouts.len(),
            12,
            "{env}: every Online Boutique workload"
        );
        let api: Api<Deployment> = Api::namespaced(cluster.client.clone(), env);
        for d in api.list(&ListParams::default()).await.unwrap().items {
            let available = d
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| {
                    cs.iter()
                        .any(|c| c.type_ == "Available" && c.status == "True")
                });
            assert!(available, "{env}/{:?} is not Available", d.metadata.name);
        }
        assert!(
            ha_deployments(bundle).len() >= 10,
            "{env}: the stateless services run >= 2 replicas"
        );
        assert_spread(&cluster, env, bundle).await;
    }
    eprintln!(
        "deployed the full boutique into dev and test in {took:?} (apply: dev {:?}, test {:?})",
        reports[0].apply.took, reports[1].apply.took
    );
}

#[tokio::test]
async fn draining_a_node_honours_every_pdb_and_leaves_a_ready_pod_per_service() {
    let cluster = require_cluster!();
    let env = common_local::unique_env("drain");
    let bundle = common_local::render(&env, "v0.10.6", |_| {});
    let deployed = common_local::deploy(&cluster, &bundle, &env).await;
    eprintln!(
        "deployed the full boutique into a fresh namespace {env} in {:?} (apply {:?}, {} objects)",
        deployed.took,
        deployed.apply.took,
        deployed.apply.applied.len()
    );
    assert_spread(&cluster, &env, &bundle).await;
    let ha: BTreeMap<String, i32> = ha_deployments(&bundle).into_iter().collect();

    // Watch pods for the whole drain: per app, the fewest Ready non-terminating pods.
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), &env);
    let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
    let watch_pods = pods.clone();
    let observer = tokio::spawn(async move {
        let mut stream = watcher(watch_pods, watcher::Config::default())
            .default_backoff()
            .boxed();
        let mut current: BTreeMap<String, Pod> = BTreeMap::new();
        let mut min_ready: BTreeMap<String, usize> = BTreeMap::new();
        let mut synced = false;
        loop {
            tokio::select! {
                _ = &mut stop_rx => break,
                event = stream.next() => {
                    let Some(Ok(event)) = event else { break };
                    match event {
                        watcher::Event::Apply(p) | watcher::Event::InitApply(p) => {
                            current.insert(p.metadata.name.clone().unwrap_or_default(), p);
                        }
                        watcher::Event::Delete(p) => {
                            current.remove(&p.metadata.name.clone().unwrap_or_default());
                        }
                        watcher::Event::InitDone => synced = true,
                        watcher::Event::Init => current.clear(),
                    }
                    if !synced {
                        continue;
                    }
                    let mut ready: BTreeMap<String, usize> = BTreeMap::new();
                    for p in current.values() {
                        let app = p.metadata.labels.as_ref().and_then(|l| l.get("app").cloned()).unwrap_or_default();
                        let is_ready = p.metadata.deletion_timestamp.is_none()
                            && p.status.as_ref().and_then(|s| s.conditions.as_ref()).is_some_and(|cs| {
                                cs.iter().any(|c| c.type_ == "Ready" && c.status == "True")
                            });
                        *ready.entry(app).or_default() += usize::from(is_ready);
                    }
                    for (app, n) in ready {
                        let m = min_ready.entry(app).or_insert(n);
                        *m = (*m).min(n);
                    }
                }
            }
        }
        min_ready
    });
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The node holding most of this test's pods (another test may have had one cordoned).
    let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
    for nodes in placement(&cluster, &env).await.values() {
        for n in nodes {
            *per_node.entry(n.clone()).or_default() += 1;
        }
    }
    let node = per_node
        .iter()
        .max_by_key(|(_, count)| **count)
        .map(|(n, _)| n.clone())
        .expect("the pods are placed");
    let node = node.as_str();
    let report = drain::drain(&cluster.config, node, &[&env], Duration::from_secs(120))
        .await
        .unwrap_or_else(|e| panic!("failed to drain {node}: {}", chain(&e)));
    // Give the ReplicaSets time to replace the evicted pods elsewhere.
    for name in ha.keys() {
        cdcheck::kube::rollout::wait_for_rollout(
            &cluster.client,
            &env,
            name,
            Duration::from_secs(60),
        )
        .await
        .unwrap_or_else(|e| panic!("{name} did not recover: {}", chain(&e)));
    }
    let _ = stop_tx.send(());
    let min_ready = observer.await.unwrap();
    drain::uncordon(&cluster.client, node).await.unwrap();

    assert!(!report.evicted.is_empty(), "nothing was on {node}");
    eprintln!(
        "drained {node}: {} pods evicted in {:?}, PDB refusals {:?}",
        report.evicted.len(),
        report.took,
        report.refusals
    );
    for name in ha.keys() {
        let m = min_ready.get(name).copied().unwrap_or(0);
        assert!(
            m >= 1,
            "{name} had {m} ready pods during the drain: {min_ready:?}"
        );
    }
    let placed = placement(&cluster, &env).await;
    for (name, nodes) in &placed {
        assert!(!nodes.iter().any(|n| n == node), "{name} still on {node}");
    }
    common_local::cleanup(&cluster, &env).await;
}

#[tokio::test]
async fn an_eviction_that_would_break_a_pdb_is_refused() {
    let cluster = require_cluster!();
    let env = common_local::unique_env("pdb");
    // One replica with minAvailable 1: the PDB allows no disruption at all.
    let bundle = common_local::render(&env, "v0.10.6", |o| o.ha.replicas = 1);
    let bundle = common_local::only_services(&bundle, &["frontend"]);
    common_local::deploy(&cluster, &bundle, &env).await;
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), &env);
    let pod = pods
        .list(&ListParams::default().labels("app=frontend"))
        .await
        .unwrap()
        .items
        .remove(0);
    let name = pod.metadata.name.clone().unwrap();
    // The disruption controller needs a moment to publish the PDB's status.
    let deadline = Instant::now() + Duration::from_secs(30);
    let no_retry = {
        let mut config = cluster.config.clone();
        config.default_retry = false;
        kube::Client::try_from(config).unwrap()
    };
    let evictions: Api<Pod> = Api::namespaced(no_retry, &env);
    let refused = loop {
        match evictions.evict(&name, &Default::default()).await {
            Err(kube::Error::Api(s)) if s.code == 429 => break s,
            Err(kube::Error::Api(s)) if s.code == 500 && Instant::now() < deadline => {}
            other => panic!("expected the PDB to refuse the eviction, got {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        refused.message.contains("disruption budget"),
        "{}",
        refused.message
    );
    let node = pod.spec.and_then(|s| s.node_name).unwrap();
    let drained = drain::drain(&cluster.config, &node, &[&env], Duration::from_secs(3)).await;
    drain::uncordon(&cluster.client, &node).await.unwrap();
    match drained {
        Err(drain::DrainError::Timeout { left, .. }) => {
            assert!(
                left.iter().any(|l| l.contains("PodDisruptionBudget")),
                "{left:?}"
            )
        }
        other => panic!("a drain must not break the PDB: {other:?}"),
    }
    common_local::cleanup(&cluster, &env).await;
}
