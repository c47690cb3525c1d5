//! Rollout wait latency: the signed delay between the Deployment's status first
//! showing the finished rollout (seen by an independent raw watch) and
//! `RolloutWatch::wait_for_generation` returning. Negative means the wait returned
//! before the raw watch saw the state it waited for: either delivery skew between
//! two watch streams (a few ms) or a wait that returns too early, which the
//! resourceVersion check tells apart (the state the wait decided on must show
//! the rollout complete).
//!
//! Run with `cargo bench --bench rollout_wait` (`ROUNDS=20` by default; starts or
//! reuses the local substrate of `CDCHECK_STATE_DIR`). Each round applies the
//! other release of a 2-replica frontend and waits for it.

use std::time::{Duration, Instant};

use cdcheck::kube::rollout::RolloutWatch;
use cdcheck::kube::{apply, release};
use cdcheck::manifests::{self, Bundle, Object, Options};
use cdcheck::substrate::{MeshChoice, SubstrateKind, SubstrateOptions, binaries};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams};
use kube::runtime::{WatchStreamExt, watcher};

const TIMEOUT: Duration = Duration::from_secs(120);

fn frontend(env: &str, release: &str) -> Bundle {
    let mut options = Options::for_env(env);
    options.release = release.to_string();
    let mut bundle = manifests::render(&options).expect("render the bundle");
    bundle.objects.retain(|o| match o {
        Object::Namespace(_) | Object::ServiceAccount(_) | Object::Role(_) => true,
        Object::RoleBinding(_) => true,
        Object::Deployment(_) | Object::Service(_) => o.name().starts_with("frontend"),
        _ => false,
    });
    bundle
}

/// Every state of frontend a raw watch sees: its resourceVersion, whether its
/// status shows the rollout of a generation above `before` complete, and when it arrived.
fn raw_states(
    deployments: Api<Deployment>,
    before: i64,
) -> tokio::sync::mpsc::UnboundedReceiver<(String, bool, Instant)> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut stream = watcher(
            deployments,
            watcher::Config::default().fields("metadata.name=frontend"),
        )
        .applied_objects()
        .boxed();
        while let Some(Ok(d)) = stream.next().await {
            let seen = Instant::now();
            let generation = d.metadata.generation.unwrap_or(0);
            let s = d.status.clone().unwrap_or_default();
            let desired = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
            let complete = generation > before
                && s.observed_generation == Some(generation)
                && s.updated_replicas == Some(desired)
                && s.ready_replicas == Some(desired)
                && s.available_replicas == Some(desired)
                && s.replicas == Some(desired);
            let rv = d.metadata.resource_version.unwrap_or_default();
            if tx.send((rv, complete, seen)).is_err() {
                return;
            }
        }
    });
    rx
}

/// Reads the raw watch up to the state the wait decided on: when the raw watch
/// first saw a complete state, and whether the decided state was complete.
async fn up_to_decided(
    states: &mut tokio::sync::mpsc::UnboundedReceiver<(String, bool, Instant)>,
    decided: &str,
) -> (Option<Instant>, bool) {
    let mut first_complete = None;
    while let Some((rv, complete, seen)) = states.recv().await {
        if complete && first_complete.is_none() {
            first_complete = Some(seen);
        }
        if rv == decided {
            return (first_complete, complete);
        }
    }
    (first_complete, false)
}

/// Signed milliseconds from `from` to `to`.
fn signed_ms(from: Instant, to: Instant) -> f64 {
    match to.checked_duration_since(from) {
        Some(d) => d.as_secs_f64() * 1e3,
        None => -(from.duration_since(to).as_secs_f64() * 1e3),
    }
}

fn summary(label: &str, mut values: Vec<f64>) {
    values.sort_by(f64::total_cmp);
    let at = |q: f64| values[((values.len() - 1) as f64 * q).round() as usize];
    println!(
        "{label}: min {:.3} ms, median {:.3} ms, p90 {:.3} ms, max {:.3} ms ({} rounds, {} negative)",
        at(0.0),
        at(0.5),
        at(0.9),
        at(1.0),
        values.len(),
        values.iter().filter(|v| **v < 0.0).count()
    );
}

#[tokio::main]
async fn main() {
    cdcheck::install_crypto_provider();
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(20);
    binaries::locate().expect("control-plane binaries (cdcheck substrate install)");
    let options = SubstrateOptions {
        mesh: MeshChoice::Off,
        ..SubstrateOptions::new(SubstrateKind::Local)
    };
    let progress = |line: &str| eprintln!("{line}");
    let target = cdcheck::substrate::provision(&options, &progress)
        .await
        .expect("start the local substrate");
    let client = target.cluster.client.clone();
    let env = format!("bench-{}", &uuid::Uuid::new_v4().simple().to_string()[..6]);
    let releases = [frontend(&env, "v0.10.6"), frontend(&env, "v0.10.7")];
    release::deploy(&client, &releases[0], &env, TIMEOUT)
        .await
        .expect("deploy the first release");
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &env);

    println!("rollout wait, frontend 2 replicas, {rounds} rounds, namespace {env}");
    let mut delays = Vec::new();
    let mut internal = Vec::new();
    // Rounds where the state the wait decided on did not show the rollout complete.
    let mut early = 0;
    for round in 0..rounds {
        let next = &releases[(round + 1) % 2];
        let before = deployments
            .get("frontend")
            .await
            .expect("read frontend")
            .metadata
            .generation
            .unwrap_or(0);
        let mut states = raw_states(deployments.clone(), before);
        let watch = RolloutWatch::start(&client, &env, "frontend")
            .await
            .expect("start the rollout watch");
        let applied = apply::apply_bundle(&client, next, Some(&env))
            .await
            .expect("apply");
        let generation = applied.generations[&format!("Deployment/{env}/frontend")];
        let report = watch
            .wait_for_generation(generation, TIMEOUT)
            .await
            .expect("roll out");
        let returned = Instant::now();
        let (first_complete, decided_complete) = tokio::time::timeout(
            Duration::from_secs(10),
            up_to_decided(&mut states, &report.decided_resource_version),
        )
        .await
        .expect("the raw watch saw the state the wait decided on within 10 s");
        if !decided_complete {
            early += 1;
        }
        let seen = first_complete.unwrap_or(returned);
        let delay = signed_ms(seen, returned);
        println!(
            "round {round}: status complete -> wait returned {delay:+.3} ms (wait's own event -> return {:.3} ms, decided on a complete state: {decided_complete}, rollout {:?})",
            report.return_delay.as_secs_f64() * 1e3,
            report.took
        );
        delays.push(delay);
        internal.push(report.return_delay.as_secs_f64() * 1e3);
    }
    summary(
        "status complete (raw watch) -> wait returned, signed",
        delays,
    );
    summary("wait's deciding event -> wait returned", internal);
    println!("rounds decided on a state that was not complete: {early} of {rounds}");
    let namespaces: Api<Namespace> = Api::all(client);
    let _ = namespaces.delete(&env, &DeleteParams::default()).await;
}
