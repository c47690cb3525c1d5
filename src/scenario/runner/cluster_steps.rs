//! The runner's checks against the cluster itself: `expect` (static and live checks), HA
//! placement, the RBAC matrix and the node drain.

use std::collections::BTreeMap;

use ::kube::ResourceExt;
use ::kube::api::{Api, ListParams, PostParams};
use k8s_openapi::api::core::v1::{Namespace, Pod};

use super::{Abort, ScenarioRun, view};
use crate::error_chain as chain;
use crate::kube::placement::{self, HaFinding};
use crate::kube::{drain, rbac};
use crate::manifests::{MANAGED_BY_LABEL, MANAGED_BY_VALUE, Object};
use crate::names::{ISTIO_NAMESPACE, RUN_LABEL, SCENARIO_LABEL};
use crate::report::{Finding, KubeEventKind, SkipKind, Verdict};
use crate::scenario::checks::{self, CheckName, Judgement};
use crate::scenario::pipeline::Placed;

pub(super) async fn expect(run: &mut ScenarioRun<'_>, names: &[CheckName]) -> Result<(), Abort> {
    let Some((_, placed)) = run.deployed.clone() else {
        return Err(run.error(
            "expect",
            "checks need a deployed release",
            "no release was deployed before this step (add a `deploy` step)".into(),
        ));
    };
    let single = run.config.single_instance.clone();
    for name in names {
        if name.is_live() {
            live_check(run, *name, &placed).await;
            continue;
        }
        let namespace = run.namespace.clone();
        let days = run.config.certificate_min_days;
        let judgement = checks::run_static(*name, &view(&namespace, &placed, &single, days));
        match judgement {
            Judgement::Findings(findings) => {
                run.judged(name.as_str(), name.description(), findings)
            }
            Judgement::NotApplicable(why) => run.skip(
                name.as_str(),
                name.description(),
                SkipKind::NotApplicable,
                format!("not applicable: {why}"),
            ),
            Judgement::NothingToCheck(why) => {
                run.error(
                    name.as_str(),
                    name.description(),
                    format!("nothing to check: {why}"),
                );
            }
            Judgement::Partly { findings, unjudged } => {
                run.judged(name.as_str(), name.description(), findings);
                let what = format!("what {} could not judge", name.as_str());
                run.skip(
                    &format!("{}-unjudged", name.as_str()),
                    &what,
                    SkipKind::Limitation,
                    unjudged,
                );
            }
        }
    }
    Ok(())
}

pub(super) async fn live_check(run: &mut ScenarioRun<'_>, name: CheckName, placed: &Placed) {
    let result = match name {
        CheckName::Placement => placement_check(run, placed).await,
        CheckName::RbacMatrix => rbac_matrix(run, placed).await,
        _ => unreachable!("only live checks come here"),
    };
    match result {
        Ok(findings) => run.judged(name.as_str(), name.description(), findings),
        Err(message) => {
            run.error(name.as_str(), name.description(), message);
        }
    }
}

/// Where the pods of each HA Deployment run, as the API server has them
/// ([`placement::check`]); its spec findings are the static checks' business.
pub(super) async fn placement_check(
    run: &ScenarioRun<'_>,
    placed: &Placed,
) -> Result<Vec<Finding>, String> {
    let single = run.config.single_instance.clone();
    let view = view(
        &run.namespace,
        placed,
        &single,
        run.config.certificate_min_days,
    );
    let names: Vec<String> = checks::ha_deployments(&view)
        .iter()
        .map(|d| d.name_any())
        .collect();
    if let Err(empty) = checks::ha_population(&view) {
        return Ok(vec![empty]);
    }
    let findings = placement::check(&run.cluster.client, &run.namespace, &names)
        .await
        .map_err(|e| chain(&e))?;
    Ok(findings
        .into_iter()
        .filter_map(|f| {
            let deployment = match &f {
                HaFinding::PodCount { deployment, .. }
                | HaFinding::Unscheduled { deployment, .. }
                | HaFinding::SharedNode { deployment, .. } => deployment.clone(),
                HaFinding::TooFewReplicas { .. } | HaFinding::NoAntiAffinity { .. } => {
                    return None;
                }
            };
            Some(Finding::about(
                format!("Deployment/{}/{deployment}", run.namespace),
                f.to_string(),
            ))
        })
        .collect())
}

/// The deployer: the ServiceAccount a RoleBinding of the namespace binds (the
/// reference rendering's `<env>-deployer`).
pub(super) fn deployer(placed: &Placed, namespace: &str) -> Option<String> {
    let mut bound: Vec<String> = placed
        .bundle
        .objects
        .iter()
        .filter_map(|o| match o {
            Object::RoleBinding(rb) => Some(rb),
            _ => None,
        })
        .flat_map(|rb| rb.subjects.clone().unwrap_or_default())
        .filter(|s| {
            s.kind == "ServiceAccount" && s.namespace.as_deref().is_none_or(|n| n == namespace)
        })
        .map(|s| s.name)
        .collect();
    bound.sort_by_key(|n| !n.ends_with("-deployer"));
    bound.into_iter().next()
}

pub(super) async fn rbac_matrix(
    run: &mut ScenarioRun<'_>,
    placed: &Placed,
) -> Result<Vec<Finding>, String> {
    let Some(sa) = deployer(placed, &run.namespace) else {
        return Ok(vec![Finding::new(format!(
            "no RoleBinding in {} binds a ServiceAccount: the pipeline has no namespace-scoped deployer",
            run.namespace
        ))]);
    };
    // A sibling namespace the deployer must not reach.
    let other = format!("{}-other", run.namespace);
    let api: Api<Namespace> = Api::all(run.cluster.client.clone());
    let ns: Namespace = serde_json::from_value(serde_json::json!({
        "metadata": {"name": other, "labels": {
            MANAGED_BY_LABEL: MANAGED_BY_VALUE,
            RUN_LABEL: run.config.run_id,
            SCENARIO_LABEL: run.namespace,
        }}
    }))
    .expect("a namespace object");
    match api.create(&PostParams::default(), &ns).await {
        Ok(_) => {}
        Err(::kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => return Err(format!("create namespace {other}: {}", chain(&e))),
    }
    let subject = rbac::Subject::service_account(&run.namespace, &sa);
    let probes = rbac::probes(
        &[run.namespace.as_str(), other.as_str(), ISTIO_NAMESPACE],
        &rbac::deployer_resources(),
        &rbac::Verb::ALL,
    );
    let matrix = rbac::matrix(&run.cluster.config, &subject, probes)
        .await
        .map_err(|e| chain(&e))?;
    // A cell without an answer (401, 429, 5xx...) is no verdict on the pipeline.
    let errors = matrix.errors();
    if !errors.is_empty() {
        return Err(format!(
            "{} of {} questions got no answer, e.g. {}: review {}, request {}",
            errors.len(),
            matrix.cells.len(),
            errors[0].probe,
            errors[0].review,
            errors[0].request
        ));
    }
    let own = run.namespace.clone();
    let account = format!("ServiceAccount/{own}/{sa}");
    let mut findings = Vec::new();
    for cell in &matrix.cells {
        let status = cell
            .request_status
            .map(|s| s.to_string())
            .unwrap_or_else(|| "-".into());
        let in_own = cell.probe.namespace.as_deref() == Some(own.as_str());
        if in_own {
            // The deployer must be able to deploy: change Deployments and Services.
            let needed = matches!(
                cell.probe.resource.plural.as_str(),
                "deployments" | "services"
            ) && matches!(
                cell.probe.verb,
                rbac::Verb::Get | rbac::Verb::Create | rbac::Verb::Update | rbac::Verb::Patch
            );
            if needed && !(cell.review.is_allowed() && cell.request.is_allowed()) {
                findings.push(Finding::about(
                    account.clone(),
                    format!(
                        "may not {} (HTTP {status}): it cannot deploy its own namespace",
                        cell.probe
                    ),
                ));
            }
        } else if cell.review.is_allowed() || cell.request.is_allowed() {
            findings.push(Finding::about(
                account.clone(),
                format!(
                    "may {} (review {}, real request HTTP {status}): a deployer must reach nothing outside its namespace",
                    cell.probe, cell.review
                ),
            ));
        }
    }
    Ok(findings)
}

/// Drains the node holding the most pods of the scenario through the Eviction
/// API, then uncordons it.
pub(super) async fn drain_node(run: &mut ScenarioRun<'_>) -> Result<(), Abort> {
    let description = "a node drains through the Eviction API, PodDisruptionBudgets honoured, and every app with a pod there keeps a ready pod (or its PDB's floor) throughout";
    if !run.config.capabilities.cordon {
        run.record(
            "drain",
            description,
            Verdict::Skipped,
            Vec::new(),
            Some((
                SkipKind::Refused,
                format!(
                    "draining cordons a node of the {} cluster, shared with others: pass --allow-cordon to let it",
                    run.config.substrate
                ),
            )),
        );
        return Ok(());
    }
    let pods: Api<Pod> = Api::namespaced(run.cluster.client.clone(), &run.namespace);
    let list = match pods.list(&ListParams::default()).await {
        Ok(l) => l,
        Err(e) => return Err(run.error("drain", "drain a node", chain(&e))),
    };
    let mut by_node: BTreeMap<String, usize> = BTreeMap::new();
    for p in &list.items {
        if let Some(node) = p.spec.as_ref().and_then(|s| s.node_name.clone()) {
            *by_node.entry(node).or_default() += 1;
        }
    }
    let Some(node) = by_node
        .iter()
        .max_by_key(|(_, n)| **n)
        .map(|(n, _)| n.clone())
    else {
        return Err(run.error(
            "drain",
            "drain a node",
            "no pod of the scenario is scheduled".into(),
        ));
    };
    run.kube_event(
        KubeEventKind::Cordon,
        Some(format!("Node//{node}")),
        "cordon and drain".into(),
    );
    let ns = run.namespace.clone();
    // A node someone else had cordoned stays cordoned after the drain.
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(run.cluster.client.clone());
    let was_cordoned = nodes
        .get_opt(&node)
        .await
        .ok()
        .flatten()
        .and_then(|n| n.spec)
        .and_then(|s| s.unschedulable)
        .unwrap_or(false);
    let result = drain::drain_and_judge(
        &run.cluster.client,
        &run.cluster.config,
        &node,
        &ns,
        drain::DrainMethod::Evict,
        run.config.rollout_timeout,
    )
    .await;
    if !was_cordoned {
        let _ = drain::uncordon(&run.cluster.client, &node).await;
    }
    match result {
        Ok(check) => {
            for pod in &check.report.evicted {
                run.kube_event(
                    KubeEventKind::Eviction,
                    Some(format!("Pod/{pod}")),
                    format!("evicted from {node}"),
                );
            }
            let findings = check
                .findings
                .iter()
                .map(|f| Finding::about(format!("Node//{node}"), f.to_string()))
                .collect();
            run.judged("drain-keeps-ready-pods", description, findings);
            Ok(())
        }
        Err(e) => {
            run.judged(
                "drain-keeps-ready-pods",
                description,
                vec![Finding::new(chain(&e))],
            );
            Err(Abort)
        }
    }
}
