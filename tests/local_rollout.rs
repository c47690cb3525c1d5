//! Rollout waits against real controllers: a rolling update of frontend keeps
//! every desired replica ready (and the negative controls, maxUnavailable 1 and
//! Recreate, are caught); a broken release fails the wait with its reason before
//! the deadline while mainline keeps serving; the wait returns promptly.

mod common_local;

use std::time::{Duration, Instant};

use cdcheck::kube::rollout::{self, RolloutError, RolloutWatch};
use cdcheck::kube::{apply, rollback};
use cdcheck::manifests::{Bundle, Object, Strategy};
use cdcheck::substrate::NEVER_READY_ANNOTATION;
use common_local::{Cluster, ROLLOUT_TIMEOUT, chain};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};

fn frontend_only(env: &str, release: &str, strategy: Strategy) -> Bundle {
    let bundle = common_local::render(env, release, |o| o.strategy = strategy);
    common_local::only_services(&bundle, &["frontend"])
}

fn deployment_mut<'a>(bundle: &'a mut Bundle, name: &str) -> &'a mut Deployment {
    bundle
        .objects
        .iter_mut()
        .find_map(|o| match o {
            Object::Deployment(d) if d.metadata.name.as_deref() == Some(name) => Some(d),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no Deployment {name} in the bundle"))
}

/// Deploys `first`, then watches while `second` is applied; returns the rollout report.
async fn update(
    cluster: &Cluster,
    env: &str,
    first: &Bundle,
    second: &Bundle,
) -> rollout::RolloutReport {
    common_local::deploy(cluster, first, env).await;
    let watch = RolloutWatch::start(&cluster.client, env, "frontend").await;
    apply::apply_bundle(&cluster.client, second, Some(env))
        .await
        .unwrap_or_else(|e| panic!("failed to apply: {}", chain(&e)));
    watch
        .wait(ROLLOUT_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("failed to roll out: {}", chain(&e)))
}

#[tokio::test]
async fn a_rolling_update_of_frontend_never_has_fewer_ready_pods_than_desired() {
    let cluster = require_cluster!();
    let env = common_local::unique_env("roll");
    let first = frontend_only(&env, "v0.10.6", Strategy::Rolling);
    let second = frontend_only(&env, "v0.10.7", Strategy::Rolling);
    let report = update(&cluster, &env, &first, &second).await;
    let desired = report.desired();
    assert_eq!(desired, 2);
    // The rollout happened: a sample saw an old pod next to the desired ready ones.
    assert!(
        report.samples.iter().any(|s| s.old_pods > 0),
        "the watch saw no old pod: {:#?}",
        report.samples
    );
    assert!(
        report.min_ready_pods() >= desired,
        "ready pods dropped to {} of {desired}: {:#?}",
        report.min_ready_pods(),
        report.samples
    );
    assert!(
        report.min_ready_replicas() >= desired,
        "{:#?}",
        report.samples
    );
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), &env);
    let images: Vec<String> = pods
        .list(&ListParams::default().labels("app=frontend"))
        .await
        .unwrap()
        .items
        .iter()
        .filter_map(|p| p.spec.as_ref()?.containers[0].image.clone())
        .collect();
    assert_eq!(images.len(), 2);
    assert!(images.iter().all(|i| i.ends_with(":v0.10.7")), "{images:?}");
    eprintln!("rolling update took {:?}", report.took);
    common_local::cleanup(&cluster, &env).await;
}

#[tokio::test]
async fn a_rolling_update_with_max_unavailable_one_is_caught_dropping_a_ready_pod() {
    let cluster = require_cluster!();
    let env = common_local::unique_env("unavail");
    let mut first = frontend_only(&env, "v0.10.6", Strategy::Rolling);
    let mut second = frontend_only(&env, "v0.10.7", Strategy::Rolling);
    for bundle in [&mut first, &mut second] {
        let d = deployment_mut(bundle, "frontend");
        let strategy = d.spec.as_mut().unwrap().strategy.as_mut().unwrap();
        let ru = strategy.rolling_update.as_mut().unwrap();
        ru.max_unavailable =
            Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(1));
        ru.max_surge = Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(0));
    }
    let report = update(&cluster, &env, &first, &second).await;
    assert!(
        report.min_ready_pods() < report.desired(),
        "negative control not caught: ready pods never dropped below {}: {:#?}",
        report.desired(),
        report.samples
    );
    common_local::cleanup(&cluster, &env).await;
}

#[tokio::test]
async fn a_recreate_update_is_caught_with_no_ready_pod_left() {
    let cluster = require_cluster!();
    let env = common_local::unique_env("recreate");
    let first = frontend_only(&env, "v0.10.6", Strategy::Recreate);
    let second = frontend_only(&env, "v0.10.7", Strategy::Recreate);
    let report = update(&cluster, &env, &first, &second).await;
    assert_eq!(
        report.min_ready_pods(),
        0,
        "Recreate must be seen with zero ready pods: {:#?}",
        report.samples
    );
    common_local::cleanup(&cluster, &env).await;
}

#[tokio::test]
async fn a_broken_release_fails_the_wait_with_its_reason_and_mainline_keeps_its_ready_pods() {
    let cluster = require_cluster!();
    let env = common_local::unique_env("broken");
    let first = frontend_only(&env, "v0.10.6", Strategy::Rolling);
    let mut broken = frontend_only(&env, "v0.10.7", Strategy::Rolling);
    let deadline_seconds = 8;
    // The broken release: its pods never become Ready (kwok's pod-never-ready stage).
    let spec = deployment_mut(&mut broken, "frontend")
        .spec
        .as_mut()
        .unwrap();
    spec.progress_deadline_seconds = Some(deadline_seconds);
    spec.template
        .metadata
        .get_or_insert_with(Default::default)
        .annotations
        .get_or_insert_with(Default::default)
        .insert(NEVER_READY_ANNOTATION.into(), "true".into());
    common_local::deploy(&cluster, &first, &env).await;
    let started = Instant::now();
    let wait_timeout = Duration::from_secs(90);
    let result = rollback::deploy(&cluster.client, &broken, &env, wait_timeout).await;
    let elapsed = started.elapsed();
    let error = match result {
        Ok(_) => panic!("a release whose pods never become Ready was reported as rolled out"),
        Err(rollback::RollbackError::Rollout(e)) => e,
        Err(e) => panic!("failed differently: {}", chain(&e)),
    };
    match &error {
        RolloutError::ProgressDeadline {
            reason,
            message,
            diagnostics,
            ..
        } => {
            assert_eq!(reason, "ProgressDeadlineExceeded");
            assert!(message.contains("frontend"), "{message}");
            assert!(
                diagnostics.pods.iter().any(|p| p.contains("Ready=False")),
                "diagnostics must show the unready pod: {diagnostics}"
            );
            assert!(
                diagnostics.replicasets.len() >= 2,
                "diagnostics must show the ReplicaSet history: {diagnostics}"
            );
        }
        other => panic!("expected ProgressDeadlineExceeded, got: {}", chain(other)),
    }
    assert!(
        elapsed < wait_timeout,
        "the wait must fail on the deadline ({deadline_seconds}s), not time out: {elapsed:?}"
    );
    let shown = chain(&error);
    assert!(shown.contains("ProgressDeadlineExceeded"), "{shown}");
    eprintln!("broken release detected after {elapsed:?}:\n{shown}");

    // Mainline keeps its ready pods (maxUnavailable 0 never took one away).
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), &env);
    let ready_mainline = pods
        .list(&ListParams::default().labels("app=frontend"))
        .await
        .unwrap()
        .items
        .iter()
        .filter(|p| {
            let image = p.spec.as_ref().unwrap().containers[0]
                .image
                .clone()
                .unwrap_or_default();
            let ready = p
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            image.ends_with(":v0.10.6") && ready
        })
        .count();
    assert_eq!(ready_mainline, 2, "mainline lost ready pods");
    common_local::cleanup(&cluster, &env).await;
}

#[tokio::test]
async fn the_wait_returns_within_200ms_of_the_completing_status_change() {
    use futures::StreamExt;
    use kube::runtime::{WatchStreamExt, watcher};
    let cluster = require_cluster!();
    let env = common_local::unique_env("delay");
    let first = frontend_only(&env, "v0.10.6", Strategy::Rolling);
    let second = frontend_only(&env, "v0.10.7", Strategy::Rolling);
    common_local::deploy(&cluster, &first, &env).await;

    // An independent raw watch notes when the Deployment's status first shows the
    // finished rollout; the wait must return soon after.
    let deployments: Api<Deployment> = Api::namespaced(cluster.client.clone(), &env);
    let generation_before = deployments
        .get("frontend")
        .await
        .unwrap()
        .metadata
        .generation
        .unwrap();
    let raw = tokio::spawn(async move {
        let mut stream = watcher(
            deployments,
            watcher::Config::default().fields("metadata.name=frontend"),
        )
        .applied_objects()
        .boxed();
        while let Some(Ok(d)) = stream.next().await {
            let generation = d.metadata.generation.unwrap_or(0);
            let s = d.status.clone().unwrap_or_default();
            let desired = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
            if generation > generation_before
                && s.observed_generation == Some(generation)
                && s.updated_replicas == Some(desired)
                && s.ready_replicas == Some(desired)
                && s.available_replicas == Some(desired)
                && s.replicas == Some(desired)
            {
                return Instant::now();
            }
        }
        panic!("the raw watch ended");
    });
    let watch = RolloutWatch::start(&cluster.client, &env, "frontend").await;
    apply::apply_bundle(&cluster.client, &second, Some(&env))
        .await
        .unwrap();
    let report = watch.wait(ROLLOUT_TIMEOUT).await.unwrap();
    let returned = Instant::now();
    let seen = tokio::time::timeout(Duration::from_secs(10), raw)
        .await
        .unwrap()
        .unwrap();
    let delay = returned.saturating_duration_since(seen);
    eprintln!(
        "status change -> wait returned: {delay:?} (internal event -> return {:?}; rollout {:?})",
        report.return_delay, report.took
    );
    assert!(
        delay < Duration::from_millis(200),
        "the wait returned {delay:?} after the status change"
    );
    common_local::cleanup(&cluster, &env).await;
}
