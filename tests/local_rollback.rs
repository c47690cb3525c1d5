//! Rollback: redeploying the previous release restores image and env and prunes
//! what only the newer one had; `undo` restores the previous ReplicaSet revision;
//! blue/green switches the Service only after the new pods are all Ready (a
//! switch that moves the Service first is caught), switches it back, and `undo`
//! reports its limitation there.

mod common;
mod support_frontend;
mod support_manifests;

use std::time::Instant;

use cdcheck::kube::release::{self, DeployEventKind, DeployReport, SwitchFinding, SwitchObserver};
use cdcheck::kube::rollback::{self, RollbackError};
use cdcheck::kube::{apply, rollout};
use cdcheck::manifests::{Bundle, Object, Strategy};
use common::{Cluster, ROLLOUT_TIMEOUT, chain};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{EnvVar, Service};
use kube::api::Api;
use support_frontend::{env_with_frontend, frontend_only};
use support_manifests::{first_container, first_container_mut};

/// The release v0.10.7 also sets a banner env var, and ships an extra Service.
fn newer_release(env: &str) -> Bundle {
    let mut bundle = frontend_only(env, "v0.10.7", Strategy::Rolling);
    for object in &mut bundle.objects {
        if let Object::Deployment(d) = object {
            let container = first_container_mut(d);
            container.env.get_or_insert_with(Vec::new).push(EnvVar {
                name: "FRONTEND_MESSAGE".into(),
                value: Some("release v0.10.7".into()),
                ..Default::default()
            });
        }
    }
    let mut extra = bundle
        .objects
        .iter()
        .find_map(|o| match o {
            Object::Service(s) if s.metadata.name.as_deref() == Some("frontend") => Some(s.clone()),
            _ => None,
        })
        .unwrap();
    extra.metadata.name = Some("frontend-canary".into());
    bundle.objects.push(Object::Service(extra));
    bundle
}

async fn frontend(cluster: &Cluster, env: &str, name: &str) -> Deployment {
    let api: Api<Deployment> = Api::namespaced(cluster.client.clone(), env);
    api.get(name).await.unwrap()
}

fn image_and_env(d: &Deployment) -> (String, Vec<String>) {
    let c = first_container(d);
    let env = c.env.iter().flatten().map(|e| e.name.clone()).collect();
    (c.image.clone().unwrap_or_default(), env)
}

#[tokio::test]
async fn redeploying_the_previous_release_restores_image_and_env_and_prunes_the_rest() {
    let cluster = require_cluster!();
    let env = common::unique_env("redeploy");
    let previous = frontend_only(&env, "v0.10.6", Strategy::Rolling);
    common::deploy(&cluster, &previous, &env).await;
    let (image_before, env_before) = image_and_env(&frontend(&cluster, &env, "frontend").await);
    common::deploy(&cluster, &newer_release(&env), &env).await;
    let (image_new, env_new) = image_and_env(&frontend(&cluster, &env, "frontend").await);
    assert!(image_new.ends_with(":v0.10.7"), "{image_new}");
    assert!(env_new.contains(&"FRONTEND_MESSAGE".to_string()));

    let report = rollback::redeploy_previous(&cluster.client, &previous, &env, ROLLOUT_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("failed to roll back: {}", chain(&e)));
    let (image_after, env_after) = image_and_env(&frontend(&cluster, &env, "frontend").await);
    assert_eq!(image_after, image_before);
    assert_eq!(
        env_after, env_before,
        "env must be the previous release's exactly"
    );
    assert!(
        report
            .apply
            .pruned
            .iter()
            .any(|k| k == &format!("Service/{env}/frontend-canary")),
        "the newer release's extra Service must be pruned: {:?}",
        report.apply.pruned
    );
    let services: Api<Service> = Api::namespaced(cluster.client.clone(), &env);
    assert!(services.get_opt("frontend-canary").await.unwrap().is_none());
    common::cleanup(&cluster, &env).await;
}

#[tokio::test]
async fn undo_restores_the_previous_revision() {
    let cluster = require_cluster!();
    let env = env_with_frontend(&cluster, "undo").await;
    let (image_before, env_before) = image_and_env(&frontend(&cluster, &env, "frontend").await);
    common::deploy(&cluster, &newer_release(&env), &env).await;

    let report = rollback::undo(&cluster.client, &env, "frontend", ROLLOUT_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("failed to undo: {}", chain(&e)));
    assert_eq!((report.from_revision, report.to_revision), (2, 1));
    let after = frontend(&cluster, &env, "frontend").await;
    let (image_after, env_after) = image_and_env(&after);
    assert_eq!(image_after, image_before);
    assert_eq!(env_after, env_before);
    // Like `kubectl rollout undo`: the old ReplicaSet comes back as revision 3.
    let revision = after
        .metadata
        .annotations
        .unwrap_or_default()
        .get("deployment.kubernetes.io/revision")
        .cloned();
    assert_eq!(revision.as_deref(), Some("3"));
    assert!(
        report.rollout.min_ready_pods() >= 2,
        "{:#?}",
        report.rollout.samples
    );
    common::cleanup(&cluster, &env).await;
}

/// Switches `env` blue/green to `bundle` (`what` names the step in a failure), and asserts
/// that the Service then selects `expected_release` and that the switch's own timeline passes
/// the verdict and has the events it judged.
async fn switch_bluegreen(
    cluster: &Cluster,
    env: &str,
    bundle: &Bundle,
    expected_release: &str,
    what: &str,
) -> DeployReport {
    let report = release::bluegreen_switch(&cluster.client, bundle, env, ROLLOUT_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("failed to {what}: {}", chain(&e)));
    let services: Api<Service> = Api::namespaced(cluster.client.clone(), env);
    assert_eq!(
        selector_release(&services.get("frontend").await.unwrap()),
        expected_release
    );
    let findings = release::check_bluegreen_switch(bundle, &report.events);
    assert!(
        findings.is_empty(),
        "blue/green verdict: {findings:?}\ntimeline: {:#?}",
        report.events
    );
    let has = |ready: bool| {
        report.events.iter().any(|e| match &e.what {
            DeployEventKind::PodsReady { .. } => ready,
            DeployEventKind::ServiceSwitched { .. } => !ready,
        })
    };
    assert!(has(true) && has(false), "{:#?}", report.events);
    eprintln!("blue/green timeline: {:#?}", report.events);
    report
}

fn selector_release(service: &Service) -> String {
    service
        .spec
        .as_ref()
        .and_then(|s| s.selector.as_ref())
        .and_then(|s| s.get("cdcheck.io/release").cloned())
        .unwrap_or_default()
}

#[tokio::test]
async fn bluegreen_switches_the_service_and_rollback_points_it_back() {
    let cluster = require_cluster!();
    let env = common::unique_env("bluegreen");
    let blue = frontend_only(&env, "v0.10.6", Strategy::Bluegreen);
    let green = frontend_only(&env, "v0.10.7", Strategy::Bluegreen);
    let deployments: Api<Deployment> = Api::namespaced(cluster.client.clone(), &env);

    switch_bluegreen(&cluster, &env, &blue, "v0.10.6", "deploy blue").await;

    let switch = switch_bluegreen(&cluster, &env, &green, "v0.10.7", "switch to green").await;
    assert!(
        switch
            .switched
            .iter()
            .any(|k| k == &format!("Service/{env}/frontend"))
    );
    assert!(
        switch
            .apply
            .pruned
            .iter()
            .any(|k| k == &format!("Deployment/{env}/frontend-v0.10.6"))
    );
    assert!(
        deployments
            .get_opt("frontend-v0.10.6")
            .await
            .unwrap()
            .is_none()
    );

    // `undo` cannot roll a blue/green release back: its Deployment has one revision.
    match rollback::undo(&cluster.client, &env, "frontend-v0.10.7", ROLLOUT_TIMEOUT).await {
        Err(e @ RollbackError::NoPreviousRevision { .. }) => {
            assert!(
                chain(&e).contains("switching the Service back"),
                "{}",
                chain(&e)
            )
        }
        Err(e) => panic!("expected NoPreviousRevision, got {}", chain(&e)),
        Ok(r) => panic!("undo of a single-revision Deployment succeeded: {r:?}"),
    }

    let back = switch_bluegreen(&cluster, &env, &blue, "v0.10.6", "switch back").await;
    assert!(!back.rollouts.is_empty());
    assert!(back.rollouts.iter().all(|r| r.desired() == 2));
    assert!(
        deployments
            .get_opt("frontend-v0.10.7")
            .await
            .unwrap()
            .is_none()
    );
    let blue_deploy = deployments.get("frontend-v0.10.6").await.unwrap();
    assert_eq!(blue_deploy.status.unwrap().ready_replicas, Some(2));
    common::cleanup(&cluster, &env).await;
}

#[tokio::test]
async fn a_switch_that_moves_the_service_before_the_new_pods_are_ready_is_caught() {
    // Negative control of the blue/green verdict: the same observer watches a
    // switch done in the wrong order (Services first, then the Deployments).
    let cluster = require_cluster!();
    let env = common::unique_env("bgfirst");
    let blue = frontend_only(&env, "v0.10.6", Strategy::Bluegreen);
    let green = frontend_only(&env, "v0.10.7", Strategy::Bluegreen);
    release::bluegreen_switch(&cluster.client, &blue, &env, ROLLOUT_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("failed to deploy blue: {}", chain(&e)));

    let observer = SwitchObserver::start(&cluster.client, &green, Instant::now())
        .await
        .unwrap_or_else(|e| panic!("failed to start the observer: {}", chain(&e)));
    let (services, rest): (Vec<&Object>, Vec<&Object>) = green
        .objects
        .iter()
        .partition(|o| matches!(o, Object::Service(_)));
    apply::apply_objects(&cluster.client, services)
        .await
        .unwrap();
    apply::apply_objects(&cluster.client, rest).await.unwrap();
    let deployments: Vec<(String, String)> = green
        .objects
        .iter()
        .filter(|o| matches!(o, Object::Deployment(_)))
        .map(|o| (env.clone(), o.name()))
        .collect();
    rollout::wait_for_all(&cluster.client, &deployments, ROLLOUT_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("failed to roll out green: {}", chain(&e)));
    let events = observer.finish(std::time::Duration::from_secs(10)).await;
    let findings = release::check_bluegreen_switch(&green, &events);
    assert!(
        findings
            .iter()
            .any(|f| matches!(f, SwitchFinding::SwitchedBeforeReady { .. })),
        "negative control not caught: Services moved before the pods were Ready, verdict {findings:?}, timeline {events:#?}"
    );
    common::cleanup(&cluster, &env).await;
}
