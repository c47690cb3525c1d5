//! The runner's release steps: deploy, update (rolling), switch (blue/green), the broken
//! release, rollback and `rollout undo`, each judged by what the cluster did.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use ::kube::ResourceExt;
use ::kube::api::{Api, ListParams};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;

use super::namespaces::ensure_namespace;
use super::{Abort, ScenarioRun};
use crate::error_chain as chain;
use crate::kube::{apply, release, rollback, rollout};
use crate::manifests::Object;
use crate::report::{Finding, KubeEventKind, SkipKind};
use crate::scenario::checks::{self};
use crate::scenario::pipeline::Placed;
use crate::scenario::spec::Release;

pub(super) fn deployment_keys(placed: &Placed) -> Vec<(String, String)> {
    placed
        .bundle
        .deployments()
        .map(|d| {
            (
                d.metadata.namespace.clone().unwrap_or_default(),
                d.metadata.name.clone().unwrap_or_default(),
            )
        })
        .collect()
}

/// Applies a release and waits for its rollout; the pipeline is at fault when
/// the API refuses an object or a rollout fails.
pub(super) async fn deploy(run: &mut ScenarioRun<'_>, release: Release) -> Result<(), Abort> {
    let placed = run.place(release)?;
    ensure_namespace(run, &placed).await?;
    run.kube_event(
        KubeEventKind::Apply,
        None,
        format!(
            "apply the {} release ({} objects)",
            release.as_str(),
            placed.bundle.objects.len()
        ),
    );
    let name = format!("deploy-{}", release.as_str());
    let description = format!(
        "the {} release applies and every Deployment rolls out",
        release.as_str()
    );
    let result = release::deploy(
        &run.cluster.client,
        &placed.bundle,
        &run.namespace,
        run.config.rollout_timeout,
    )
    .await;
    match result {
        Ok(report) => {
            run.note_rollouts(&report.rollouts);
            run.kube_event(
                KubeEventKind::RolloutComplete,
                None,
                format!(
                    "{} Deployments rolled out in {:?}",
                    report.rollouts.len(),
                    report.took
                ),
            );
            run.judged(&name, &description, Vec::new());
            run.released(release, placed);
            Ok(())
        }
        Err(e) => {
            let findings = deploy_findings(&e);
            run.kube_event(KubeEventKind::RolloutFailed, None, chain(&e));
            run.judged(&name, &description, findings);
            Err(Abort)
        }
    }
}

pub(super) fn deploy_findings(error: &release::ReleaseError) -> Vec<Finding> {
    match error {
        release::ReleaseError::Rollout(rollout::RolloutError::ProgressDeadline {
            namespace,
            name,
            reason,
            message,
            ..
        }) => vec![Finding::about(
            format!("Deployment/{namespace}/{name}"),
            format!("{reason}: {message}"),
        )],
        release::ReleaseError::Rollout(rollout::RolloutError::Timeout {
            namespace,
            name,
            waited,
            state,
            ..
        }) => vec![Finding::about(
            format!("Deployment/{namespace}/{name}"),
            format!("did not roll out within {waited:?} ({state})"),
        )],
        other => vec![Finding::new(chain(other))],
    }
}

/// Rolls to `release` while watching every Deployment: ready pods must never
/// fall below the desired count.
pub(super) async fn update(run: &mut ScenarioRun<'_>, release: Release) -> Result<(), Abort> {
    let placed = run.place(release)?;
    let replaces_nothing = run
        .deployed
        .as_ref()
        .is_some_and(|(_, previous)| same_pod_templates(&previous.bundle, &placed.bundle));
    let keys = deployment_keys(&placed);
    let watches = match rollout::watch_all(&run.cluster.client, &keys).await {
        Ok(watches) => watches,
        Err(e) => {
            return Err(run.error(
                &format!("update-{}", release.as_str()),
                "the rollout watches start",
                chain(&e),
            ));
        }
    };
    run.kube_event(
        KubeEventKind::RolloutStarted,
        None,
        format!("apply the {} release", release.as_str()),
    );
    if let Err(e) =
        apply::apply_bundle(&run.cluster.client, &placed.bundle, Some(&run.namespace)).await
    {
        run.judged(
            &format!("update-{}", release.as_str()),
            "the next release applies",
            vec![Finding::new(chain(&e))],
        );
        return Err(Abort);
    }
    let timeout = run.config.rollout_timeout;
    let results = futures::future::join_all(watches.into_iter().map(|w| w.wait(timeout))).await;
    let mut failures = Vec::new();
    let mut dips = Vec::new();
    let single = run.config.single_instance.clone();
    for ((_, name), result) in keys.iter().zip(results) {
        match result {
            Ok(report) => {
                run.note_rollouts([&report]);
                let is_ha = placed
                    .bundle
                    .deployments()
                    .find(|d| d.metadata.name.as_deref() == Some(name.as_str()))
                    .is_some_and(|d| !single.contains(&checks::app_of(d)));
                if is_ha && report.min_ready_pods() < report.desired() {
                    dips.push(Finding::about(
                        format!("Deployment/{}/{name}", run.namespace),
                        format!(
                            "ready pods fell to {} of {} desired during the rollout",
                            report.min_ready_pods(),
                            report.desired()
                        ),
                    ));
                }
            }
            Err(e) => failures.extend(deploy_findings(&release::ReleaseError::Rollout(e))),
        }
    }
    run.kube_event(
        KubeEventKind::RolloutComplete,
        None,
        format!("the {} release rolled out", release.as_str()),
    );
    let mut rolled_out = failures.clone();
    if replaces_nothing {
        // Not a reason to stop: the loads under this update must still report that
        // they covered nothing.
        rolled_out.push(Finding::new(format!(
            "the {} release changes no Deployment's pod template, so applying it replaced \
             no pod and nothing rolled out (an unchanged image tag such as :latest \
             re-applied?)",
            release.as_str()
        )));
    }
    run.judged(
        &format!("update-{}-rolls-out", release.as_str()),
        "every Deployment rolls out to the new release, which changes at least one pod template",
        rolled_out,
    );
    run.judged(
        "ready-never-below-desired",
        "no HA Deployment had fewer ready pods than desired at any moment of the rollout",
        dips,
    );
    if !failures.is_empty() {
        return Err(Abort);
    }
    run.released(release, placed);
    Ok(())
}

/// Whether every Deployment of `next` has a namesake in `previous` with the same pod
/// template: applying `next` then starts no rollout.
fn same_pod_templates(
    previous: &crate::manifests::Bundle,
    next: &crate::manifests::Bundle,
) -> bool {
    let mut next_deployments = next.deployments().peekable();
    next_deployments.peek().is_some()
        && next_deployments.all(|d| {
            previous
                .deployments()
                .find(|p| p.metadata.name == d.metadata.name)
                .is_some_and(|p| pod_template(p) == pod_template(d))
        })
}

fn pod_template(
    d: &k8s_openapi::api::apps::v1::Deployment,
) -> Option<&k8s_openapi::api::core::v1::PodTemplateSpec> {
    d.spec.as_ref().map(|s| &s.template)
}

/// Blue/green: the new release's Deployments beside the old, Services switched once they are ready.
pub(super) async fn switch(run: &mut ScenarioRun<'_>, release: Release) -> Result<(), Abort> {
    if !run.config.pipeline.can_switch() {
        run.skip(
            "switch-after-ready",
            "Services switch only after the new release is ready",
            SkipKind::NotApplicable,
            "not applicable: the pipeline gives no blue/green release to switch to (--next-manifests)".into(),
        );
        return Ok(());
    }
    let placed = run.place(release)?;
    run.kube_event(
        KubeEventKind::Apply,
        None,
        format!(
            "apply the {} release beside the current one",
            release.as_str()
        ),
    );
    let result = release::bluegreen_switch(
        &run.cluster.client,
        &placed.bundle,
        &run.namespace,
        run.config.rollout_timeout,
    )
    .await;
    match result {
        Ok(report) => {
            run.note_rollouts(&report.rollouts);
            // The switch's own timeline, observed by watches apart from the switch itself.
            let origin = run.since_run_start(report.started_at);
            for event in &report.events {
                let (kind, object, detail) = match &event.what {
                    release::DeployEventKind::PodsReady {
                        deployment,
                        ready,
                        desired,
                    } => (
                        KubeEventKind::RolloutComplete,
                        format!("Deployment/{deployment}"),
                        format!("{ready}/{desired} new pods ready"),
                    ),
                    release::DeployEventKind::ServiceSwitched { service, .. } => (
                        KubeEventKind::Switch,
                        format!("Service/{service}"),
                        "selects the new release".to_string(),
                    ),
                };
                run.kube_event_at(origin + event.at, kind, Some(object), detail);
            }
            let findings = release::check_bluegreen_switch(&placed.bundle, &report.events)
                .iter()
                .map(|f| Finding::new(f.to_string()))
                .collect();
            run.judged(
                "switch-after-ready",
                "every Service switched to the new release only after all of its new pods were ready",
                findings,
            );
            let mixed = match services_select_only(run, &placed).await {
                Ok(f) => f,
                Err(message) => {
                    return Err(run.error(
                        "nothing-mixed-after",
                        "read Services and pods",
                        message,
                    ));
                }
            };
            run.judged(
                "nothing-mixed-after",
                "after the switch every Service selects pods of the new release only",
                mixed,
            );
            if let Some((_, previous)) = &run.deployed {
                let findings = checks::one_colour(&previous.bundle, &placed.bundle);
                run.judged(
                    "one-colour-selectors",
                    checks::ONE_COLOUR_DESCRIPTION,
                    findings,
                );
            }
            run.released(release, placed);
            Ok(())
        }
        Err(e) => {
            run.judged(
                "switch-after-ready",
                "Services switch only after the new release is ready",
                deploy_findings(&e),
            );
            Err(Abort)
        }
    }
}

/// Every Service of the release selects at least one pod, and only pods of the
/// release's own Deployments (by their ReplicaSet's name).
pub(super) async fn services_select_only(
    run: &ScenarioRun<'_>,
    placed: &Placed,
) -> Result<Vec<Finding>, String> {
    use k8s_openapi::api::core::v1::Service;
    let deployments: Vec<String> = placed.bundle.deployments().map(|d| d.name_any()).collect();
    let services: Api<Service> = Api::namespaced(run.cluster.client.clone(), &run.namespace);
    let pods: Api<Pod> = Api::namespaced(run.cluster.client.clone(), &run.namespace);
    let mut findings = Vec::new();
    for wanted in placed
        .bundle
        .objects
        .iter()
        .filter(|o| matches!(o, Object::Service(_)))
    {
        let name = wanted.name();
        let live = services
            .get(&name)
            .await
            .map_err(|e| format!("read Service {name}: {}", chain(&e)))?;
        let selector = live
            .spec
            .and_then(|s| s.selector)
            .unwrap_or_default()
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",");
        if selector.is_empty() {
            continue;
        }
        let selected = pods
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(|e| format!("list the pods of Service {name}: {}", chain(&e)))?;
        let key = format!("Service/{}/{name}", run.namespace);
        let live_pods: Vec<&Pod> = selected
            .items
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .collect();
        if live_pods.is_empty() {
            findings.push(Finding::about(
                key.clone(),
                format!("selects no pod ({selector})"),
            ));
        }
        for pod in live_pods {
            let replicaset = pod
                .owner_references()
                .iter()
                .find(|o| o.kind == "ReplicaSet")
                .map(|o| o.name.clone())
                .unwrap_or_default();
            if !deployments
                .iter()
                .any(|d| replicaset.starts_with(&format!("{d}-")))
            {
                findings.push(Finding::about(
                    key.clone(),
                    format!(
                        "selects pod {} of {replicaset}, which is not of the new release",
                        pod.name_any()
                    ),
                ));
            }
        }
    }
    Ok(findings)
}

/// A release that never becomes ready must fail its rollout within the progress
/// deadline (plus a margin for the controller's sync), with the reason, while
/// the previous release keeps every ready pod.
pub(super) async fn deploy_broken(
    run: &mut ScenarioRun<'_>,
    release: Release,
) -> Result<(), Abort> {
    let placed = run.place(release)?;
    // The pipeline said which Deployment it broke when it made the release.
    let found = placed.broken.as_ref().and_then(|name| {
        placed
            .bundle
            .deployments()
            .find(|d| d.name_any() == *name)
            .map(|d| {
                let deadline = d.spec.as_ref().and_then(|s| s.progress_deadline_seconds);
                (name.clone(), deadline.unwrap_or(600))
            })
    });
    let Some((name, deadline)) = found else {
        return Err(run.error(
            "broken-release",
            "a broken release can be made",
            "the broken release breaks no Deployment".into(),
        ));
    };
    let ns = run.namespace.clone();
    let watch = match rollout::RolloutWatch::start(&run.cluster.client, &ns, &name).await {
        Ok(watch) => watch,
        Err(e) => {
            return Err(run.error("broken-release", "the rollout watch starts", chain(&e)));
        }
    };
    let applied_at = Instant::now();
    run.kube_event(
        KubeEventKind::RolloutStarted,
        Some(format!("Deployment/{ns}/{name}")),
        format!("apply the broken release (progressDeadlineSeconds {deadline})"),
    );
    if let Err(e) =
        apply::apply_bundle(&run.cluster.client, &placed.bundle, Some(&run.namespace)).await
    {
        return Err(run.error(
            "broken-release-applies",
            "the broken release applies",
            chain(&e),
        ));
    }
    let deadline = Duration::from_secs(deadline.max(0) as u64);
    let bound = deadline + rollout::FAIL_FAST_MARGIN;
    // cdcheck's own limit (--rollout-timeout) caps the wait: a pipeline whose deadline lies
    // beyond it is not observed failing, and that is said as such, apart from the verdict
    // on the deadline itself (`progress-deadline-bounded`).
    let limit = run.config.rollout_timeout;
    let recorder = watch.recorder();
    let result = if bound <= limit {
        // Past the bound, so a late failure is measured rather than cut off.
        watch.wait(bound + Duration::from_secs(30)).await
    } else {
        watch.wait(limit).await
    };
    let took = applied_at.elapsed();
    let key = format!("Deployment/{ns}/{name}");
    if let Err(rollout::RolloutError::ProgressDeadline { reason, .. }) = &result {
        run.kube_event(
            KubeEventKind::RolloutFailed,
            Some(key.clone()),
            format!("{reason} after {took:.1?}"),
        );
    }
    judge_progress_deadlines(run, &placed);
    let fails_fast = "broken-release-fails-fast";
    let fails_fast_description = "a release whose pods never become ready fails its rollout within the pipeline's own progress deadline, with its reason";
    if bound > limit && !matches!(result, Err(rollout::RolloutError::ProgressDeadline { .. })) {
        run.kube_event(
            KubeEventKind::RolloutFailed,
            Some(key.clone()),
            format!("cdcheck stopped waiting at its limit of {limit:?} (--rollout-timeout)"),
        );
        // Not a verdict on the pipeline: `progress-deadline-bounded` judges the deadline.
        run.skip(
            fails_fast,
            fails_fast_description,
            SkipKind::Limitation,
            format!(
                "not observed: the pipeline's progress deadline of {deadline:?} for {key} lies beyond cdcheck's wait limit of {limit:?} (--rollout-timeout); the rollout had not failed when cdcheck stopped waiting"
            ),
        );
    } else {
        let fail_fast: Vec<Finding> =
            rollout::check_fail_fast(&result, deadline, rollout::FAIL_FAST_MARGIN, took)
                .iter()
                .map(|f| Finding::about(key.clone(), f.to_string()))
                .collect();
        run.judged(fails_fast, fails_fast_description, fail_fast);
    }
    // Mainline keeps serving: over every moment the watch recorded, from its start to the
    // end of the wait, the Deployment kept the previous release's ready pods (the broken
    // pods never become ready, so every ready pod is mainline's).
    let desired = run
        .deployed
        .as_ref()
        .and_then(|(_, p)| {
            p.bundle
                .deployments()
                .find(|d| d.name_any() == name)
                .and_then(|d| d.spec.as_ref().and_then(|s| s.replicas))
        })
        .unwrap_or(1);
    let samples = recorder.samples();
    let description = "the previous release keeps all its ready pods throughout the broken rollout";
    let Some(lowest) = samples.iter().min_by_key(|s| s.ready_pods) else {
        return Err(run.error(
            "mainline-keeps-serving",
            description,
            format!("the rollout watch of {key} recorded nothing to judge"),
        ));
    };
    let window = samples.last().map(|s| s.at).unwrap_or_default();
    let kept = if lowest.ready_pods < desired {
        vec![Finding::about(
            key.clone(),
            format!(
                "ready mainline pods fell to {} of {desired} at {:.1?} into the broken rollout ({} samples over {window:.1?})",
                lowest.ready_pods,
                lowest.at,
                samples.len()
            ),
        )]
    } else {
        Vec::new()
    };
    run.judged("mainline-keeps-serving", description, kept);
    Ok(())
}

/// The longest `progressDeadlineSeconds` a pipeline may give a Deployment. A pipeline that
/// waits on its rollout (`kubectl rollout status`, Argo, Flux) learns that a release makes no
/// progress only at this deadline; Kubernetes' default of 600 s holds a broken release, and
/// the pipeline's next step, for ten minutes.
pub(super) const MAX_PROGRESS_DEADLINE_SECONDS: i32 = 120;

/// Every Deployment of the release bounds its rollout: `progressDeadlineSeconds` set, and at
/// most [`MAX_PROGRESS_DEADLINE_SECONDS`].
fn judge_progress_deadlines(run: &mut ScenarioRun<'_>, placed: &Placed) {
    let mut findings = Vec::new();
    let mut judged = 0;
    for d in placed.bundle.deployments() {
        judged += 1;
        let key = format!("Deployment/{}/{}", run.namespace, d.name_any());
        match d.spec.as_ref().and_then(|s| s.progress_deadline_seconds) {
            None => findings.push(Finding::about(
                key,
                format!(
                    "sets no progressDeadlineSeconds: Kubernetes' default of 600 s lets a stuck rollout go unreported for ten minutes (at most {MAX_PROGRESS_DEADLINE_SECONDS} s)"
                ),
            )),
            Some(seconds) if seconds > MAX_PROGRESS_DEADLINE_SECONDS => {
                findings.push(Finding::about(
                    key,
                    format!(
                        "progressDeadlineSeconds is {seconds} s: a stuck rollout goes unreported that long (at most {MAX_PROGRESS_DEADLINE_SECONDS} s)"
                    ),
                ))
            }
            Some(_) => {}
        }
    }
    if judged == 0 {
        findings.push(Finding::new(
            "nothing to check: the release has no Deployment",
        ));
    }
    run.judged(
        "progress-deadline-bounded",
        &format!(
            "every Deployment sets progressDeadlineSeconds to at most {MAX_PROGRESS_DEADLINE_SECONDS} s, so a stuck rollout fails the pipeline's deploy step within that"
        ),
        findings,
    );
}

/// Redeploys `release` and checks that every Deployment's pod template (images,
/// env, annotations) is that release's again.
pub(super) async fn rollback_to(run: &mut ScenarioRun<'_>, release: Release) -> Result<(), Abort> {
    let placed = run.place(release)?;
    run.kube_event(
        KubeEventKind::Rollback,
        None,
        format!("redeploy the {} release", release.as_str()),
    );
    let result = rollback::redeploy_previous(
        &run.cluster.client,
        &placed.bundle,
        &run.namespace,
        run.config.rollout_timeout,
    )
    .await;
    let failed = result.is_err();
    if let Ok(report) = &result {
        run.note_rollouts(&report.rollouts);
    }
    run.judged(
        "rollback-rolls-out",
        "the previous release redeploys and rolls out",
        match &result {
            Ok(_) => Vec::new(),
            Err(rollback::RollbackError::Redeploy(inner)) => deploy_findings(inner),
            Err(other) => vec![Finding::new(chain(other))],
        },
    );
    if failed {
        return Err(Abort);
    }
    let findings = templates_match(run, &placed).await?;
    run.judged(
        "rollback-restores-templates",
        "after the rollback every Deployment runs the previous release's images, env and pod template",
        findings,
    );
    run.released(release, placed);
    Ok(())
}

/// Compares the live pod templates with the release's.
pub(super) async fn templates_match(
    run: &mut ScenarioRun<'_>,
    placed: &Placed,
) -> Result<Vec<Finding>, Abort> {
    let api: Api<Deployment> = Api::namespaced(run.cluster.client.clone(), &run.namespace);
    let mut findings = Vec::new();
    for want in placed.bundle.deployments() {
        let name = want.name_any();
        let live = match api.get(&name).await {
            Ok(d) => d,
            Err(e) => {
                return Err(run.error("read-deployment", "read the live Deployment", chain(&e)));
            }
        };
        let key = format!("Deployment/{}/{name}", run.namespace);
        let wanted = want.spec.as_ref().map(|s| &s.template);
        let got = live.spec.as_ref().map(|s| &s.template);
        let containers = |t: Option<&k8s_openapi::api::core::v1::PodTemplateSpec>| {
            t.and_then(|t| t.spec.as_ref())
                .map(|s| {
                    s.containers
                        .iter()
                        .map(|c| {
                            (
                                c.name.clone(),
                                c.image.clone(),
                                c.env.clone().unwrap_or_default(),
                            )
                        })
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default()
        };
        for ((name_w, image_w, env_w), (_, image_g, env_g)) in
            containers(wanted).iter().zip(containers(got).iter())
        {
            if image_w != image_g {
                findings.push(Finding::about(
                    key.clone(),
                    format!("container {name_w} runs {image_g:?}, not {image_w:?}"),
                ));
            }
            if env_w != env_g {
                findings.push(Finding::about(
                    key.clone(),
                    format!("container {name_w}'s env differs from the release's"),
                ));
            }
        }
        let annotations = |t: Option<&k8s_openapi::api::core::v1::PodTemplateSpec>| {
            t.and_then(|t| t.metadata.as_ref())
                .and_then(|m| m.annotations.clone())
                .unwrap_or_default()
        };
        let (aw, ag): (BTreeMap<_, _>, BTreeMap<_, _>) = (annotations(wanted), annotations(got));
        if aw != ag {
            findings.push(Finding::about(
                key.clone(),
                format!(
                    "pod template annotations differ: expected {:?}, found {:?}",
                    aw.keys().collect::<Vec<_>>(),
                    ag.keys().collect::<Vec<_>>()
                ),
            ));
        }
    }
    Ok(findings)
}

/// `kubectl rollout undo` of every Deployment: the previous revision's template
/// comes back. Blue/green Deployments hold one release and cannot be undone: that
/// limitation is reported, not failed.
pub(super) async fn undo(run: &mut ScenarioRun<'_>) -> Result<(), Abort> {
    let Some((_, placed)) = run.deployed.clone() else {
        return Err(run.error(
            "undo",
            "undo needs a deployed release",
            "nothing was deployed".into(),
        ));
    };
    let previous = run.history.iter().rev().nth(1).copied();
    let mut failures = Vec::new();
    let mut limitations = Vec::new();
    let mut undone: Vec<String> = Vec::new();
    let keys = deployment_keys(&placed);
    for (ns, name) in &keys {
        run.kube_event(
            KubeEventKind::Undo,
            Some(format!("Deployment/{ns}/{name}")),
            "rollout undo".into(),
        );
    }
    // Every Deployment at once, as a pipeline's rollback job would.
    let timeout = run.config.rollout_timeout;
    let client = run.cluster.client.clone();
    let results = futures::future::join_all(
        keys.iter()
            .map(|(ns, name)| rollback::undo(&client, ns, name, timeout)),
    )
    .await;
    for ((ns, name), result) in keys.into_iter().zip(results) {
        match result {
            Ok(report) => {
                run.note_rollouts([&report.rollout]);
                undone.push(name)
            }
            Err(rollback::RollbackError::NoPreviousRevision { .. }) => limitations.push(name),
            Err(e) => failures.push(Finding::about(format!("Deployment/{ns}/{name}"), chain(&e))),
        }
    }
    let description =
        "rollout undo brings every Deployment back to the previous release's pod template";
    let check = "undo-restores-previous-revision";
    match previous {
        _ if !failures.is_empty() => run.judged(check, description, failures),
        // Nothing could be undone: the limitation below says why; nothing was proven.
        _ if undone.is_empty() => {}
        None => run.skip(
            check,
            description,
            SkipKind::NotApplicable,
            "not applicable: only one release was deployed before the undo".into(),
        ),
        Some(previous) => {
            // Judge exactly the Deployments that were undone, against the previous release.
            let mut target = run.place(previous)?;
            target
                .bundle
                .objects
                .retain(|o| !matches!(o, Object::Deployment(_)) || undone.contains(&o.name()));
            let missing: Vec<Finding> = undone
                .iter()
                .filter(|n| target.bundle.find("Deployment", n).is_none())
                .map(|n| {
                    Finding::about(
                        format!("Deployment/{}/{n}", run.namespace),
                        format!(
                            "was undone, but the {} release has no such Deployment",
                            previous.as_str()
                        ),
                    )
                })
                .collect();
            let mut findings = templates_match(run, &target).await?;
            findings.extend(missing);
            if limitations.is_empty() {
                run.released(previous, target);
            }
            run.judged(check, description, findings);
        }
    }
    if !limitations.is_empty() {
        run.skip(
            "undo-blue-green",
            "rollout undo of blue/green Deployments",
            SkipKind::Limitation,
            format!(
                "limitation: {} hold one release each (blue/green); roll back by switching the Services back",
                limitations.join(", ")
            ),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifests::{Bundle, Object};
    use k8s_openapi::api::apps::v1::Deployment;

    fn deployment(name: &str, image: &str) -> Object {
        Object::Deployment(
            serde_json::from_value::<Deployment>(serde_json::json!({
                "metadata": {"name": name},
                "spec": {
                    "selector": {"matchLabels": {"app": name}},
                    "template": {
                        "metadata": {"labels": {"app": name}},
                        "spec": {"containers": [{"name": "server", "image": image}]}
                    }
                }
            }))
            .unwrap(),
        )
    }

    fn bundle(objects: Vec<Object>) -> Bundle {
        Bundle { objects }
    }

    #[test]
    fn a_release_that_changes_one_pod_template_replaces_something() {
        let previous = bundle(vec![
            deployment("frontend", "f:1"),
            deployment("cart", "c:1"),
        ]);
        let next = bundle(vec![
            deployment("frontend", "f:1"),
            deployment("cart", "c:2"),
        ]);
        assert!(!same_pod_templates(&previous, &next));
        let added = bundle(vec![
            deployment("frontend", "f:1"),
            deployment("ads", "a:1"),
        ]);
        assert!(!same_pod_templates(&previous, &added));
    }

    #[test]
    fn the_same_release_re_applied_replaces_nothing() {
        let previous = bundle(vec![deployment("frontend", "f:latest")]);
        assert!(same_pod_templates(&previous, &previous));
        assert!(!same_pod_templates(&previous, &bundle(Vec::new())));
    }
}
