//! Rollout waits against real controllers: a rolling update of frontend keeps
//! every desired replica ready (and the negative controls, maxUnavailable 1 and
//! Recreate, are caught); a broken release fails the wait with its reason within
//! its progress deadline plus a margin while mainline keeps serving (and a long
//! deadline misses that bound); a wait never settles on an older generation, and
//! returns on a state where the rollout is complete (how soon: the
//! `rollout_wait` bench).

mod common;
mod support_frontend;
mod support_manifests;

use cdcheck::names::NEVER_READY_ANNOTATION;
use std::time::{Duration, Instant};

use cdcheck::kube::rollout::{self, FAIL_FAST_MARGIN, RolloutError, RolloutReport, RolloutWatch};
use cdcheck::kube::{apply, release};
use cdcheck::manifests::{Bundle, Strategy};
use common::{Cluster, ROLLOUT_TIMEOUT, chain};
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::Api;
use support_frontend::{env_with_frontend, frontend_only, frontend_pods};
use support_manifests::deployment_mut;

async fn start_watch(cluster: &Cluster, env: &str) -> RolloutWatch {
    RolloutWatch::start(&cluster.client, env, "frontend")
        .await
        .unwrap_or_else(|e| panic!("failed to start the rollout watch: {}", chain(&e)))
}

/// Deploys `first`, then watches while `second` is applied; returns the rollout report.
async fn update(
    cluster: &Cluster,
    env: &str,
    first: &Bundle,
    second: &Bundle,
) -> rollout::RolloutReport {
    common::deploy(cluster, first, env).await;
    let watch = start_watch(cluster, env).await;
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
    let env = common::unique_env("roll");
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
    let images: Vec<String> = frontend_pods(&cluster, &env)
        .await
        .iter()
        .filter_map(|p| p.spec.as_ref()?.containers[0].image.clone())
        .collect();
    assert_eq!(images.len(), 2);
    assert!(images.iter().all(|i| i.ends_with(":v0.10.7")), "{images:?}");
    eprintln!("rolling update took {:?}", report.took);
    common::cleanup(&cluster, &env).await;
}

#[tokio::test]
async fn a_rolling_update_with_max_unavailable_one_is_caught_dropping_a_ready_pod() {
    let cluster = require_cluster!();
    let env = common::unique_env("unavail");
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
    common::cleanup(&cluster, &env).await;
}

#[tokio::test]
async fn a_recreate_update_is_caught_with_no_ready_pod_left() {
    let cluster = require_cluster!();
    let env = common::unique_env("recreate");
    let first = frontend_only(&env, "v0.10.6", Strategy::Recreate);
    let second = frontend_only(&env, "v0.10.7", Strategy::Recreate);
    let report = update(&cluster, &env, &first, &second).await;
    assert_eq!(
        report.min_ready_pods(),
        0,
        "Recreate must be seen with zero ready pods: {:#?}",
        report.samples
    );
    common::cleanup(&cluster, &env).await;
}

/// frontend at `release` whose pods never become Ready (kwok's pod-never-ready
/// stage), with the given progress deadline.
fn broken_release(env: &str, deadline_seconds: i32) -> Bundle {
    let mut broken = frontend_only(env, "v0.10.7", Strategy::Rolling);
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
    broken
}

/// The deadline the fail-fast checks hold a broken release to: short, so the
/// bound (deadline + FAIL_FAST_MARGIN) is tight.
const DEADLINE: Duration = Duration::from_secs(10);

/// Deploys `broken` into `env`, waiting at most `timeout`: the outcome of its frontend
/// rollout, and how long after the apply it came (`release::deploy` applies first thing).
async fn deploy_timed(
    cluster: &Cluster,
    broken: &Bundle,
    env: &str,
    timeout: Duration,
) -> (Result<RolloutReport, RolloutError>, Duration) {
    let applied = Instant::now();
    let result = release::deploy(&cluster.client, broken, env, timeout).await;
    let after = applied.elapsed();
    let outcome = match result {
        Ok(report) => Ok(report.rollouts.into_iter().next().unwrap()),
        Err(release::ReleaseError::Rollout(e)) => Err(e),
        Err(e) => panic!("failed differently: {}", chain(&e)),
    };
    (outcome, after)
}

#[tokio::test]
async fn a_broken_release_fails_the_wait_on_its_deadline_and_mainline_keeps_its_ready_pods() {
    let cluster = require_cluster!();
    let env = env_with_frontend(&cluster, "broken").await;
    let broken = broken_release(&env, DEADLINE.as_secs() as i32);
    let (outcome, after) = deploy_timed(&cluster, &broken, &env, Duration::from_secs(90)).await;
    let findings = rollout::check_fail_fast(&outcome, DEADLINE, FAIL_FAST_MARGIN, after);
    assert!(findings.is_empty(), "fail-fast check failed: {findings:?}");
    let Err(error) = outcome else { unreachable!() };
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
    let shown = chain(&error);
    assert!(shown.contains("ProgressDeadlineExceeded"), "{shown}");
    eprintln!(
        "broken release detected after {after:?} from the apply (progressDeadlineSeconds {}, bound {:?}):\n{shown}",
        DEADLINE.as_secs(),
        DEADLINE + FAIL_FAST_MARGIN
    );

    // Mainline keeps its ready pods (maxUnavailable 0 never took one away).
    let ready_mainline = frontend_pods(&cluster, &env)
        .await
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
    common::cleanup(&cluster, &env).await;
}

#[tokio::test]
async fn a_broken_release_with_a_long_deadline_misses_the_fail_fast_bound() {
    // Negative control of the check above: the same broken release, but its
    // controller will only give up after 600 s. Waiting as long as the bound
    // allows must not satisfy the check.
    let cluster = require_cluster!();
    let env = env_with_frontend(&cluster, "slowfail").await;
    let broken = broken_release(&env, 600);
    let bound = DEADLINE + FAIL_FAST_MARGIN;
    let (outcome, after) = deploy_timed(&cluster, &broken, &env, bound).await;
    let findings = rollout::check_fail_fast(&outcome, DEADLINE, FAIL_FAST_MARGIN, after);
    assert!(
        findings
            .iter()
            .any(|f| matches!(f, rollout::FailFastFinding::OtherOutcome { .. })),
        "negative control not caught: a 600 s deadline passed the {bound:?} fail-fast bound: {findings:?}"
    );
    common::cleanup(&cluster, &env).await;
}

#[tokio::test]
async fn a_wait_for_a_generation_the_controller_has_not_observed_never_succeeds() {
    let cluster = require_cluster!();
    let env = env_with_frontend(&cluster, "stale").await;
    let current = rollout::current_generation(&cluster.client, &env, "frontend")
        .await
        .unwrap_or_else(|e| panic!("failed to read the generation: {}", chain(&e)));
    // The Deployment is fully rolled out at `current`: a wait for that settles...
    start_watch(&cluster, &env)
        .await
        .wait_for_generation(current, Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| {
            panic!(
                "failed to see generation {current} rolled out: {}",
                chain(&e)
            )
        });
    // ...but a wait for the next one (an apply the controller has not observed)
    // must not settle on that state.
    match start_watch(&cluster, &env)
        .await
        .wait_for_generation(current + 1, Duration::from_secs(3))
        .await
    {
        Err(RolloutError::Timeout { state, .. }) => {
            assert!(
                state.contains(&format!("waiting for generation {}", current + 1)),
                "{state}"
            )
        }
        Err(e) => panic!("expected a timeout, got {}", chain(&e)),
        Ok(report) => panic!(
            "a wait for generation {} succeeded on generation {}: {report:?}",
            current + 1,
            report.generation
        ),
    }
    // And a wait on a Deployment that does not exist fails instead of settling.
    match RolloutWatch::start(&cluster.client, &env, "no-such-deployment")
        .await
        .unwrap()
        .wait(Duration::from_secs(3))
        .await
    {
        Err(RolloutError::NotFound { .. }) => {}
        other => panic!("expected NotFound, got {other:?}"),
    }
    common::cleanup(&cluster, &env).await;
}

/// The generation of frontend now, and every state of it an independent watch sees from
/// then on, by resourceVersion: whether it shows the rollout of a later generation complete.
async fn watch_completions(
    cluster: &Cluster,
    env: &str,
) -> (i64, tokio::sync::mpsc::UnboundedReceiver<(String, bool)>) {
    use futures::StreamExt;
    use kube::runtime::{WatchStreamExt, watcher};
    let deployments: Api<Deployment> = Api::namespaced(cluster.client.clone(), env);
    let before = rollout::current_generation(&cluster.client, env, "frontend")
        .await
        .unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
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
            let complete = generation > before
                && s.observed_generation == Some(generation)
                && s.updated_replicas == Some(desired)
                && s.ready_replicas == Some(desired)
                && s.available_replicas == Some(desired)
                && s.replicas == Some(desired);
            if tx
                .send((d.metadata.resource_version.unwrap_or_default(), complete))
                .is_err()
            {
                return;
            }
        }
    });
    (before, rx)
}

/// Whether the independent watch saw the state the wait decided on as complete
/// (it may see that state after the wait returned, so it gets 10 s).
async fn decided_on_a_complete_state(
    completions: &mut tokio::sync::mpsc::UnboundedReceiver<(String, bool)>,
    decided_resource_version: &str,
) -> bool {
    let find = async {
        while let Some((rv, complete)) = completions.recv().await {
            if rv == decided_resource_version {
                return complete;
            }
        }
        false
    };
    tokio::time::timeout(Duration::from_secs(10), find)
        .await
        .unwrap_or(false)
}

#[tokio::test]
async fn the_wait_returns_on_a_state_where_the_rollout_is_complete() {
    let cluster = require_cluster!();
    let env = env_with_frontend(&cluster, "order").await;
    let second = frontend_only(&env, "v0.10.7", Strategy::Rolling);
    let (before, mut completions) = watch_completions(&cluster, &env).await;

    let watch = start_watch(&cluster, &env).await;
    let applied = apply::apply_bundle(&cluster.client, &second, Some(&env))
        .await
        .unwrap();
    let generation = applied.generations[&format!("Deployment/{env}/frontend")];
    assert!(generation > before);
    let report = watch
        .wait_for_generation(generation, ROLLOUT_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("failed to roll out: {}", chain(&e)));
    // Ordering: the state the wait returned on already showed the finished
    // rollout (how long after it the wait returned is the bench's business).
    assert!(
        decided_on_a_complete_state(&mut completions, &report.decided_resource_version).await,
        "the wait returned on resourceVersion {}, which does not show generation {generation} rolled out",
        report.decided_resource_version
    );
    common::cleanup(&cluster, &env).await;
}

#[tokio::test]
async fn a_wait_that_returns_before_the_rollout_is_caught_by_the_ordering_check() {
    // Negative control of the ordering check: a wait asked about the previous
    // generation returns at once, on a state that does not show the new rollout.
    let cluster = require_cluster!();
    let env = env_with_frontend(&cluster, "early").await;
    let (before, mut completions) = watch_completions(&cluster, &env).await;
    let early = start_watch(&cluster, &env)
        .await
        .wait_for_generation(before, ROLLOUT_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("failed to see generation {before}: {}", chain(&e)));
    apply::apply_bundle(
        &cluster.client,
        &frontend_only(&env, "v0.10.7", Strategy::Rolling),
        Some(&env),
    )
    .await
    .unwrap();
    assert!(
        !decided_on_a_complete_state(&mut completions, &early.decided_resource_version).await,
        "negative control not caught: a wait on generation {before} passed the ordering check of the update"
    );
    common::cleanup(&cluster, &env).await;
}
