//! High availability on the local substrate, whose scheduler packs pods so that
//! placement follows the manifests alone. The whole Online Boutique deploys into
//! two environments and becomes Available; the HA verdict (`kube::placement`)
//! passes on the pipeline's rendering and fails on one without anti-affinity.
//! The drain verdict (`kube::drain`) passes when a node is drained through the
//! eviction API, and fails on a drain by plain DELETE and on one without PDBs.

mod common;
mod support_frontend;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use cdcheck::kube::drain::{self, DrainFinding, DrainMethod};
use cdcheck::kube::placement::{self, HaFinding};
use cdcheck::manifests::{Bundle, Object};
use common::{Cluster, chain};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams};
use support_frontend::frontend_pods;

const DRAIN_TIMEOUT: Duration = Duration::from_secs(120);

fn ha_deployments(bundle: &Bundle) -> Vec<String> {
    bundle
        .deployments()
        .filter(|d| d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1) >= 2)
        .map(|d| d.metadata.name.clone().unwrap_or_default())
        .collect()
}

/// The rendering with every pod anti-affinity removed: what a pipeline that
/// forgot it would deploy.
fn without_anti_affinity(bundle: &Bundle) -> Bundle {
    let mut broken = bundle.clone();
    for object in &mut broken.objects {
        if let Object::Deployment(d) = object {
            let pod = d
                .spec
                .as_mut()
                .and_then(|s| s.template.spec.as_mut())
                .expect("a pod spec");
            if let Some(affinity) = pod.affinity.as_mut() {
                affinity.pod_anti_affinity = None;
            }
        }
    }
    broken
}

/// How a test puts replicas on one node (anti-affinity removed in both cases).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pin {
    /// A preferred node affinity (its score outweighs packing): after a cordon
    /// the replacements may go elsewhere.
    Preferred,
    /// A required node affinity: after a cordon the replacements stay Pending.
    /// On kwok a replacement is Ready within milliseconds, so without this a
    /// careless drain could race its own replacements and show no dip.
    Required,
}

fn packed_on(bundle: &Bundle, node: &str, pin: Pin) -> Bundle {
    let mut packed = without_anti_affinity(bundle);
    let on_node = serde_json::json!({"matchExpressions": [
        {"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}
    ]});
    let node_affinity = match pin {
        Pin::Preferred => serde_json::json!({
            "preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 100, "preference": on_node}]
        }),
        Pin::Required => serde_json::json!({
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [on_node]}
        }),
    };
    for object in &mut packed.objects {
        if let Object::Deployment(d) = object {
            let pod = d
                .spec
                .as_mut()
                .and_then(|s| s.template.spec.as_mut())
                .expect("a pod spec");
            let mut affinity = pod.affinity.clone().unwrap_or_default();
            affinity.node_affinity = Some(serde_json::from_value(node_affinity.clone()).unwrap());
            pod.affinity = Some(affinity);
        }
    }
    packed
}

fn without_pdbs(bundle: &Bundle) -> Bundle {
    Bundle {
        objects: bundle
            .objects
            .iter()
            .filter(|o| !matches!(o, Object::PodDisruptionBudget(_)))
            .cloned()
            .collect(),
    }
}

/// `app` label -> nodes of its non-terminating pods.
async fn placement_of(cluster: &Cluster, env: &str) -> BTreeMap<String, Vec<String>> {
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

async fn ha_findings(cluster: &Cluster, env: &str, bundle: &Bundle) -> Vec<HaFinding> {
    placement::check(&cluster.client, env, &ha_deployments(bundle))
        .await
        .unwrap_or_else(|e| panic!("failed to check placement in {env}: {}", chain(&e)))
}

async fn assert_available(cluster: &Cluster, env: &str) {
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
}

#[tokio::test]
async fn the_full_boutique_becomes_available_in_two_environments_and_passes_the_ha_check() {
    let cluster = &require_cluster!();
    common::with_temp_env(cluster, "dev", |dev| async move {
        common::with_temp_env(cluster, "test", |test| async move {
            let bundles: Vec<(String, Bundle)> = [dev, test]
                .into_iter()
                .map(|env| {
                    let bundle = common::render(&env, "v0.10.6", |_| {});
                    (env, bundle)
                })
                .collect();
            let started = Instant::now();
            let deploys = bundles
                .iter()
                .map(|(env, bundle)| common::deploy(cluster, bundle, env));
            let reports = futures::future::join_all(deploys).await;
            let took = started.elapsed();
            for ((env, bundle), report) in bundles.iter().zip(&reports) {
                assert_eq!(
                    report.rollouts.len(),
                    12,
                    "{env}: every Online Boutique workload"
                );
                assert_available(cluster, env).await;
                assert!(
                    ha_deployments(bundle).len() >= 10,
                    "{env}: the stateless services run >= 2 replicas"
                );
                let findings = ha_findings(cluster, env, bundle).await;
                assert!(findings.is_empty(), "{env}: HA findings {findings:#?}");
            }
            eprintln!(
                "deployed the full boutique into two environments in {took:?} (apply: {:?}, {:?})",
                reports[0].apply.took, reports[1].apply.took
            );
        })
        .await
    })
    .await;
}

/// Negative control of the HA verdict: without anti-affinity the packing
/// scheduler puts replicas together, and the check says so from the spec and
/// from where the pods landed.
#[tokio::test]
async fn without_anti_affinity_the_replicas_are_packed_and_the_ha_check_fails() {
    let cluster = &require_cluster!();
    common::with_temp_env(cluster, "noaa", |env| async move {
        let bundle = without_anti_affinity(&common::render(&env, "v0.10.6", |_| {}));
        common::deploy(cluster, &bundle, &env).await;
        let findings = ha_findings(cluster, &env, &bundle).await;
        let ha = ha_deployments(&bundle);
        let no_term = findings
            .iter()
            .filter(|f| matches!(f, HaFinding::NoAntiAffinity { .. }))
            .count();
        assert_eq!(
            no_term,
            ha.len(),
            "every HA Deployment lacks the term: {findings:#?}"
        );
        let shared: Vec<&HaFinding> = findings
            .iter()
            .filter(|f| matches!(f, HaFinding::SharedNode { .. }))
            .collect();
        assert!(
            !shared.is_empty(),
            "the packing scheduler must put some replicas together: {:?}",
            placement_of(cluster, &env).await
        );
        eprintln!(
            "without anti-affinity: {} of {} HA Deployments packed on one node",
            shared.len(),
            ha.len()
        );
    })
    .await;
}

/// The schedulable fake node with the most of `env`'s pods (any, if it has none).
async fn busiest_schedulable_node(cluster: &Cluster, env: &str) -> String {
    let nodes: Api<Node> = Api::all(cluster.client.clone());
    let schedulable: Vec<String> = nodes
        .list(&ListParams::default().labels("type=kwok"))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|n| {
            !n.spec
                .as_ref()
                .and_then(|s| s.unschedulable)
                .unwrap_or(false)
        })
        .filter_map(|n| n.metadata.name)
        .collect();
    let mut per_node: BTreeMap<&String, usize> = schedulable.iter().map(|n| (n, 0)).collect();
    for nodes in placement_of(cluster, env).await.values() {
        for n in nodes {
            if let Some(count) = per_node.get_mut(n) {
                *count += 1;
            }
        }
    }
    per_node
        .into_iter()
        .max_by_key(|(_, count)| *count)
        .map(|(n, _)| n.clone())
        .expect("a schedulable node")
}

/// Drains `node` of `env`, uncordons it whatever happened, and returns the check.
async fn judged_drain(
    cluster: &Cluster,
    env: &str,
    node: &str,
    method: DrainMethod,
) -> drain::DrainCheck {
    let checked = drain::drain_and_judge(
        &cluster.client,
        &cluster.config,
        node,
        env,
        method,
        DRAIN_TIMEOUT,
    )
    .await;
    drain::uncordon(&cluster.client, node)
        .await
        .unwrap_or_else(|e| panic!("failed to uncordon {node}: {}", chain(&e)));
    let checked = checked.unwrap_or_else(|e| panic!("failed to drain {node}: {}", chain(&e)));
    eprintln!(
        "drained node {node} by {method:?}: {} pods removed in {:?}, PDB refusals {:?}, \
         throttled {:?}, {} watch events, min ready {:?}, findings {:?}",
        checked.report.evicted.len(),
        checked.report.took,
        checked.report.refusals,
        checked.report.throttled,
        checked.observed.events,
        checked.observed.min_ready,
        checked.findings
    );
    checked
}

#[tokio::test]
async fn draining_a_node_through_the_eviction_api_keeps_every_app_above_its_floor() {
    let cluster = &require_cluster!();
    common::with_temp_env(cluster, "drain", |env| async move {
        let bundle = common::render(&env, "v0.10.6", |_| {});
        let deployed = common::deploy(cluster, &bundle, &env).await;
        eprintln!(
            "deployed the full boutique into a fresh namespace {env} in {:?} (apply {:?}, {} objects)",
            deployed.took,
            deployed.apply.took,
            deployed.apply.applied.len()
        );
        let findings = ha_findings(cluster, &env, &bundle).await;
        assert!(findings.is_empty(), "HA findings before the drain: {findings:#?}");

        let _nodes = common::lock_nodes().await;
        let node = busiest_schedulable_node(cluster, &env).await;
        let checked = judged_drain(cluster, &env, &node, DrainMethod::Evict).await;
        assert!(
            checked.findings.is_empty(),
            "drain findings: {:#?}",
            checked.findings
        );
        // The floors the verdict held the apps to: the PDBs' minAvailable 1 for
        // each HA service; the single instances (redis-cart, loadgenerator) have none.
        let mut judged: Vec<String> = checked.floors.keys().cloned().collect();
        let mut ha = ha_deployments(&bundle);
        judged.sort();
        ha.sort();
        assert_eq!(judged, ha, "{:?}", checked.floors);
        assert!(checked.floors.values().all(|f| *f == 1), "{:?}", checked.floors);
        for name in ha_deployments(&bundle) {
            cdcheck::kube::rollout::wait_for_rollout(
                &cluster.client,
                &env,
                &name,
                Duration::from_secs(60),
            )
            .await
            .unwrap_or_else(|e| panic!("{name} did not recover: {}", chain(&e)));
        }
        for (app, nodes) in placement_of(cluster, &env).await {
            assert!(!nodes.contains(&node), "{app} still on {node}");
        }
    })
    .await;
}

/// frontend's two replicas on one node, with or without its PDB, drained by `method`.
async fn drain_packed_frontend(
    cluster: &Cluster,
    env: &str,
    pin: Pin,
    with_pdb: bool,
    method: DrainMethod,
) -> drain::DrainCheck {
    let _nodes = common::lock_nodes().await;
    let node = busiest_schedulable_node(cluster, env).await;
    let bundle = common::only_services(&common::render(env, "v0.10.6", |_| {}), &["frontend"]);
    let mut bundle = packed_on(&bundle, &node, pin);
    if !with_pdb {
        bundle = without_pdbs(&bundle);
    }
    common::deploy(cluster, &bundle, env).await;
    let placed = placement_of(cluster, env).await;
    assert_eq!(
        placed.get("frontend"),
        Some(&vec![node.clone(), node.clone()]),
        "precondition: both replicas on {node}"
    );
    judged_drain(cluster, env, &node, method).await
}

/// A negative control's drain: frontend's two replicas pinned to one node (their replacements
/// stay Pending), with or without its PDB, drained by `method`. Asserts the drain is caught as
/// both replicas gone at once, and returns the check for what else the control asserts.
async fn drain_caught_as_a_dip(
    cluster: &Cluster,
    env: &str,
    with_pdb: bool,
    method: DrainMethod,
) -> drain::DrainCheck {
    let checked = drain_packed_frontend(cluster, env, Pin::Required, with_pdb, method).await;
    assert_eq!(
        checked.findings,
        [DrainFinding::Dip {
            app: "frontend".into(),
            min_ready: 0,
            floor: 1
        }]
    );
    checked
}

/// Positive control of the packed case: the eviction API and the PDB keep one
/// replica ready although both sat on the drained node. How the PDB holds back
/// the second eviction varies (a 429, or the API server retrying its conflicting
/// PDB update until the replacement is Ready), so refusals are printed, not asserted.
#[tokio::test]
async fn packed_replicas_drained_through_the_eviction_api_are_protected_by_the_pdb() {
    let cluster = &require_cluster!();
    common::with_temp_env(cluster, "packed", |env| async move {
        let checked =
            drain_packed_frontend(cluster, &env, Pin::Preferred, true, DrainMethod::Evict).await;
        assert!(
            checked.findings.is_empty(),
            "drain findings: {:#?}",
            checked.findings
        );
    })
    .await;
}

/// Negative control: a drain by plain DELETE takes both replicas at once, PDB or not.
#[tokio::test]
async fn a_drain_by_plain_delete_is_caught_as_a_dip() {
    let cluster = &require_cluster!();
    common::with_temp_env(cluster, "delete", |env| async move {
        drain_caught_as_a_dip(cluster, &env, true, DrainMethod::Delete).await;
    })
    .await;
}

/// Negative control: without a PDB the eviction API lets both replicas go.
#[tokio::test]
async fn a_drain_without_pdb_is_caught_as_a_dip() {
    let cluster = &require_cluster!();
    common::with_temp_env(cluster, "nopdb", |env| async move {
        let checked = drain_caught_as_a_dip(cluster, &env, false, DrainMethod::Evict).await;
        assert!(checked.report.refusals.is_empty(), "{:?}", checked.report);
    })
    .await;
}

#[tokio::test]
async fn an_eviction_that_would_break_a_pdb_is_refused() {
    let cluster = &require_cluster!();
    common::with_temp_env(cluster, "pdb", |env| async move {
        // One replica with minAvailable 1: the PDB allows no disruption at all.
        let bundle = common::render(&env, "v0.10.6", |o| o.ha.replicas = 1);
        let bundle = common::only_services(&bundle, &["frontend"]);
        common::deploy(cluster, &bundle, &env).await;
        let pod = frontend_pods(cluster, &env).await.remove(0);
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
            matches!(
                drain::classify_429(&refused),
                drain::Refusal::DisruptionBudget(_)
            ),
            "{refused:?}"
        );
        let node = pod.spec.and_then(|s| s.node_name).unwrap();
        let _nodes = common::lock_nodes().await;
        let drained = drain::drain(&cluster.config, &node, &[&env], Duration::from_secs(3)).await;
        drain::uncordon(&cluster.client, &node).await.unwrap();
        match drained {
            Err(drain::DrainError::Timeout { left, .. }) => assert!(
                left.iter()
                    .any(|l| l.contains("refused by a PodDisruptionBudget")),
                "{left:?}"
            ),
            other => panic!("a drain must not break the PDB: {other:?}"),
        }
    })
    .await;
}
