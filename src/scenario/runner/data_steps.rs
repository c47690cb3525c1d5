//! The runner's data-plane steps: background loads and probes through the ingress
//! gateway, and gRPC calls from inside the mesh through an in-mesh client.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use ::kube::api::Api;

use super::{Abort, MANAGED_BY_LABEL, MANAGED_BY_VALUE, ScenarioRun, Step, chain, step_check_name};
use crate::kube::pod_watch::PodWatch;
use crate::names::{ISTIO_NAMESPACE, RUN_LABEL};
use crate::report::{Finding, KubeEventKind};
use crate::scenario::dataplane;
use crate::scenario::pipeline::Placed;
use crate::substrate::{DataPlane, InMesh};

/// The ingress and the environment's host of the release deployed last.
fn ingress_and_host(run: &mut ScenarioRun<'_>, step: &Step) -> Result<(DataPlane, String), Abort> {
    let name = step_check_name(step);
    let Some(ingress) = run.config.data_plane.clone() else {
        return Err(run.error(
            &name,
            &step.label(),
            format!(
                "{} claims a data plane but gives no ingress",
                run.config.substrate
            ),
        ));
    };
    let host = run
        .deployed
        .as_ref()
        .and_then(|(_, placed)| dataplane::environment_host(&placed.bundle));
    match host {
        Some(host) => Ok((ingress, host)),
        None => Err(run.error(
            &name,
            &step.label(),
            "no release with a gateway-bound VirtualService host is deployed".into(),
        )),
    }
}

/// Waits until the environment answers through the gateway (routes and endpoints
/// reach the gateway a moment after the rollout completes), up to 30 s.
async fn wait_serving(ingress: &DataPlane, host: &str) -> Result<(), String> {
    let target = dataplane::gateway_target(ingress, host, "/_healthz")
        .and_then(|t| t.with_cookie("shop_session-id=x-readiness-probe"))
        .map_err(|e| e.to_string())?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut streak = 0;
    let mut last = String::new();
    while Instant::now() < deadline {
        match crate::traffic::probe::http_health(&target).await {
            Ok(report) if report.healthy => {
                streak += 1;
                if streak == 3 {
                    return Ok(());
                }
            }
            Ok(report) => {
                streak = 0;
                last = report.outcome.key();
            }
            Err(e) => {
                streak = 0;
                last = e.to_string();
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!(
        "http://{host}/ did not answer through the gateway within 30 s (last: {last})"
    ))
}

pub(super) async fn load_start(
    run: &mut ScenarioRun<'_>,
    step: &Step,
    load: &crate::scenario::spec::LoadStep,
) -> Result<(), Abort> {
    let name = step_check_name(step);
    let (ingress, host) = ingress_and_host(run, step)?;
    if load.target != "frontend" {
        return Err(run.error(
            &name,
            &step.label(),
            format!(
                "a load at {} (a gRPC backend) needs an in-mesh load client, which cdcheck does not drive yet; load the frontend",
                load.target
            ),
        ));
    }
    if let Err(why) = wait_serving(&ingress, &host).await {
        return Err(run.error(&name, &step.label(), why));
    }
    // Watch the scenario's pods before the first request, so every termination the load
    // covers is counted.
    let pods = match PodWatch::start(&run.cluster.client, &run.namespace, POD_WATCH_SYNC).await {
        Ok(pods) => pods,
        Err(e) => return Err(run.error(&name, &step.label(), chain(&e))),
    };
    let started_at = run.emitter.at();
    match dataplane::start_frontend_load(&ingress, &host, load.rate, started_at) {
        Ok(mut running) => {
            running.checks_before = run.checks.len();
            running.events_before = run.events.len();
            running.pods = Some(pods);
            run.kube_event(
                KubeEventKind::Other,
                None,
                format!(
                    "load {} started: {} req/s at {}",
                    load.name, load.rate, running.target
                ),
            );
            run.loads.insert(load.name.clone(), running);
            run.judged(&name, &step.label(), Vec::new());
            Ok(())
        }
        Err(e) => Err(run.error(&name, &step.label(), chain(&e))),
    }
}

pub(super) async fn load_stop(
    run: &mut ScenarioRun<'_>,
    step: &Step,
    stop: &crate::scenario::spec::LoadStopStep,
) -> Result<(), Abort> {
    let name = step_check_name(step);
    let Some(mut load) = run.loads.remove(&stop.name) else {
        return Err(run.error(
            &name,
            &step.label(),
            format!("no load named {} was started", stop.name),
        ));
    };
    let target = load.target.clone();
    let started_at = load.started_at;
    // The load proves something only if a step ran under it: when every step since
    // `load-start` was skipped (e.g. no blue/green release to switch to), so is this.
    let ran_under_load = run
        .checks
        .iter()
        .skip(load.checks_before + 1)
        .any(|c| c.verdict != crate::report::Verdict::Skipped);
    let disruptions = disruptions_under(run, &mut load).await;
    let disruptions = match disruptions {
        Ok(d) => d,
        Err(why) => return Err(run.error(&name, &step.label(), why)),
    };
    match load.finish().await {
        Ok(_) if !ran_under_load => {
            run.record(
                &name,
                &format!(
                    "load {} fails at most {} requests",
                    stop.name, stop.max_failed
                ),
                crate::report::Verdict::Skipped,
                Vec::new(),
                Some((
                    crate::report::SkipKind::NotApplicable,
                    "not applicable: no step ran under the load".into(),
                )),
            );
            Ok(())
        }
        Ok(timeline) => {
            let mut findings = dataplane::judge_load(&stop.name, &timeline, stop.max_failed);
            findings.extend(dataplane::judge_disruptions(
                &stop.name,
                &disruptions,
                stop.min_disruptions,
            ));
            run.load_results.push(dataplane::load_result(
                &stop.name,
                &target,
                started_at,
                &timeline,
                &disruptions,
            ));
            let description = format!(
                "load {} fails at most {} requests over {} (at least {} needed)",
                stop.name,
                stop.max_failed,
                disruptions.describe(),
                stop.min_disruptions
            );
            run.judged(&name, &description, findings);
            Ok(())
        }
        Err(e) => Err(run.error(&name, &step.label(), chain(&e))),
    }
}

/// How long a pod watch may take to list the scenario's pods before a load starts.
const POD_WATCH_SYNC: Duration = Duration::from_secs(30);

/// The pod terminations and Service switches while `load` ran; stops its pod watch.
async fn disruptions_under(
    run: &ScenarioRun<'_>,
    load: &mut dataplane::RunningLoad,
) -> Result<dataplane::Disruptions, String> {
    let service_switches = run
        .events
        .iter()
        .skip(load.events_before)
        .filter(|e| e.kind == KubeEventKind::Switch)
        .filter_map(|e| e.object.clone())
        .collect();
    let Some(pods) = load.pods.take() else {
        return Err("the load's pod watch was never started".into());
    };
    // A watch broken midway has a gap: a termination may be missing, so no count is given.
    let observed = pods.finish().await.map_err(|e| chain(&e))?;
    let terminated_pods = observed
        .terminated
        .iter()
        .map(|(key, app)| {
            let pod = key.rsplit('/').next().unwrap_or(key);
            format!("{app}/{pod}")
        })
        .collect();
    Ok(dataplane::Disruptions {
        terminated_pods,
        service_switches,
    })
}

pub(super) async fn probe(
    run: &mut ScenarioRun<'_>,
    step: &Step,
    kind: &crate::scenario::spec::ProbeKind,
) -> Result<(), Abort> {
    use crate::scenario::spec::ProbeKind;
    let name = step_check_name(step);
    let (ingress, host) = ingress_and_host(run, step)?;
    if let Err(why) = wait_serving(&ingress, &host).await {
        // HTTPS-only pipelines are judged by the TLS probe alone.
        if *kind != ProbeKind::Tls {
            return Err(run.error(&name, &step.label(), why));
        }
    }
    // Each probe's verdict and what it claims: the gRPC probe's claim carries its
    // measured times to SERVING.
    let (findings, description) = match kind {
        ProbeKind::Http => (
            dataplane::probe_http(&ingress, &host).await,
            format!("/_healthz of http://{host} answers through the gateway"),
        ),
        ProbeKind::Tls => (
            probe_tls(run, &ingress, &host).await,
            format!("the gateway serves the Gateway's certificate for {host}"),
        ),
        ProbeKind::Routing => {
            // The userid hop inside the mesh is a check of its own, recorded first. The
            // scenario runs on a feature release only, so a release without a userid
            // route fails it (a pipeline's own defect is never a skip).
            let findings = probe_userid_routing(run).await;
            run.judged(
                &format!("{name}-userid"),
                "gRPC calls with the session's userid reach the feature adservice from inside the mesh, and no other call does",
                findings,
            );
            (
                probe_routing(run, &ingress, &host).await,
                "the session's requests reach the feature branch and no other request does".into(),
            )
        }
        ProbeKind::Grpc => {
            let (findings, timings) = probe_grpc(run).await;
            (
                findings,
                format!(
                    "every gRPC backend answers SERVING from inside the mesh at the first \
                     answer of its own after its rollout completed{timings}"
                ),
            )
        }
    };
    run.judged(&name, &description, findings);
    Ok(())
}

/// The Secret each HTTPS server of the deployed Gateways names, and its certificate.
async fn probe_tls(run: &mut ScenarioRun<'_>, ingress: &DataPlane, host: &str) -> Vec<Finding> {
    let Some((_, placed)) = run.deployed.as_ref() else {
        return vec![Finding::new("no release is deployed".to_string())];
    };
    let mut secrets = Vec::new();
    for gateway in placed
        .bundle
        .of_kind("Gateway")
        .filter_map(|o| o.to_json().ok())
    {
        let namespace = gateway["metadata"]["namespace"]
            .as_str()
            .unwrap_or(ISTIO_NAMESPACE)
            .to_string();
        for server in gateway["spec"]["servers"].as_array().into_iter().flatten() {
            if let Some(credential) = server["tls"]["credentialName"].as_str() {
                secrets.push((namespace.clone(), credential.to_string()));
            }
        }
    }
    if secrets.is_empty() {
        return vec![Finding::new(
            "no Gateway server of the release has a tls.credentialName".to_string(),
        )];
    }
    let mut findings = Vec::new();
    for (namespace, secret) in secrets {
        let api: Api<k8s_openapi::api::core::v1::Secret> =
            Api::namespaced(run.cluster.client.clone(), &namespace);
        let credential = match api.get_opt(&secret).await {
            Ok(found) => dataplane::Credential::of(found.as_ref()),
            Err(e) => dataplane::Credential::Unreadable(chain(&e)),
        };
        findings
            .extend(dataplane::probe_tls(ingress, host, &namespace, &secret, &credential).await);
    }
    findings
}

/// Cookie routing through the gateway: the session's requests reach the feature
/// frontend, look-alikes and other requests stay on mainline.
async fn probe_routing(run: &mut ScenarioRun<'_>, ingress: &DataPlane, host: &str) -> Vec<Finding> {
    use crate::traffic::routing::{RoutingProbe, cookie_variants};
    let Some((_, placed)) = run.deployed.as_ref() else {
        return vec![Finding::new("no release is deployed".to_string())];
    };
    let Some(session) = dataplane::session_of(placed) else {
        return vec![Finding::new(
            "the release has no session route to probe (no `session-<id>` route, cookie regex or userid match)".to_string(),
        )];
    };
    let feature = placed
        .bundle
        .deployments()
        .filter_map(|d| d.metadata.name.clone())
        .find(|n| n.starts_with("frontend-"));
    let Some(feature) = feature else {
        return vec![Finding::new(
            "the release has no feature Deployment of frontend (frontend-<branch>)".to_string(),
        )];
    };
    let session = match crate::manifests::routing::SessionId::parse(&session) {
        Ok(s) => s,
        Err(e) => return vec![Finding::new(format!("session id {session}: {e}"))],
    };
    let probe = RoutingProbe {
        per_variant: u64::from(ROUTING_REQUESTS_PER_VARIANT),
        attribution: crate::traffic::attribution::AttributionRule::frontend_pod(),
        feature_label: regex::Regex::new(&format!("^{}-", regex::escape(&feature)))
            .expect("escaped regex"),
        mainline_label: regex::Regex::new("^frontend-").expect("static regex"),
    };
    let base = match dataplane::gateway_target(ingress, host, "/") {
        Ok(t) => t,
        Err(e) => return vec![Finding::new(e.to_string())],
    };
    match probe.run_cookies(&base, &cookie_variants(&session)).await {
        Ok(report) => variant_findings("cookie", &report),
        Err(e) => vec![Finding::new(chain(&e))],
    }
}

/// The in-mesh client of the scenario, started on first use.
async fn mesh_client<'r>(
    run: &'r mut ScenarioRun<'_>,
) -> Result<&'r mut crate::mesh::client::InMeshClient, String> {
    if run.mesh_client.is_none() {
        let Some(InMesh::LocalClient(state_dir)) =
            run.config.data_plane.as_ref().map(|i| i.in_mesh.clone())
        else {
            return Err(format!(
                "calls from inside the mesh need an in-mesh client, which cdcheck drives only on the local mesh (substrate {})",
                run.config.substrate
            ));
        };
        let labels = serde_json::json!({
            RUN_LABEL: run.config.run_id,
            MANAGED_BY_LABEL: MANAGED_BY_VALUE,
        });
        let client = crate::mesh::client::start(
            &run.cluster.client,
            &state_dir,
            &run.namespace,
            labels,
            Duration::from_secs(60),
        )
        .await
        .map_err(|e| chain(&e))?;
        run.mesh_client = Some(client);
    }
    Ok(run.mesh_client.as_mut().expect("set above"))
}

/// How long a gRPC backend may take to answer from inside the mesh: the in-mesh client's
/// sidecar may still be learning the endpoints (a transport error or Envoy's UNAVAILABLE).
const GRPC_SERVING_WITHIN: Duration = Duration::from_secs(15);

/// How a backend's health check went, from the first try to SERVING.
struct HealthTries {
    /// From the first try to the SERVING answer.
    to_serving: Duration,
    /// The first answer the backend's own health service gave that was not SERVING: a
    /// Ready pod (its rollout reported complete) that does not serve.
    not_serving: Option<String>,
}

/// Calls grpc.health.v1 until SERVING. Transport errors are retried (they come from the
/// path, not the backend); an answer of the backend's other than SERVING is retried too,
/// to time SERVING, but is kept: the caller fails it.
async fn call_until_serving(
    target: &crate::traffic::target::GrpcTarget,
) -> Result<HealthTries, String> {
    let started = Instant::now();
    let mut not_serving = None;
    let mut last = String::new();
    while started.elapsed() < GRPC_SERVING_WITHIN {
        match crate::traffic::probe::grpc_health(target).await {
            Ok(report) if report.healthy => {
                return Ok(HealthTries {
                    to_serving: started.elapsed(),
                    not_serving,
                });
            }
            Ok(report) => {
                let status = report.serving_status.clone();
                last = format!(
                    "{} {}",
                    report.outcome.key(),
                    status.clone().unwrap_or_default()
                );
                if let (None, Some(status)) = (&not_serving, status) {
                    not_serving = Some(format!("{status} at {} ms", started.elapsed().as_millis()));
                }
            }
            Err(e) => last = chain(&e),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(match not_serving {
        Some(first) => format!("{last} (first answered {first})"),
        None => last,
    })
}

/// The deployed release's gRPC Services (a port named `grpc*`): (name, port).
fn grpc_services(placed: &Placed) -> Vec<(String, u16)> {
    placed
        .bundle
        .of_kind("Service")
        .filter_map(|o| o.to_json().ok())
        .filter_map(|svc| {
            let name = svc["metadata"]["name"].as_str()?.to_string();
            let port = svc["spec"]["ports"]
                .as_array()?
                .iter()
                .find(|p| p["name"].as_str().is_some_and(|n| n.starts_with("grpc")))?;
            Some((name, port["port"].as_u64()? as u16))
        })
        .collect()
}

/// gRPC health of every backend from inside the mesh, and a note of the time each took
/// to answer SERVING (empty where the agent probes).
async fn probe_grpc(run: &mut ScenarioRun<'_>) -> (Vec<Finding>, String) {
    let Some((_, placed)) = run.deployed.as_ref() else {
        return (
            vec![Finding::new("no release is deployed".to_string())],
            String::new(),
        );
    };
    let services = grpc_services(placed);
    if services.is_empty() {
        let none = "the release has no gRPC Service (a port named grpc*) to probe";
        return (vec![Finding::new(none.to_string())], String::new());
    }
    if let Some(InMesh::Agent { image }) = run.config.data_plane.as_ref().map(|i| i.in_mesh.clone())
    {
        return (
            probe_grpc_by_agent(run, &image, &services).await,
            String::new(),
        );
    }
    let client = match mesh_client(run).await {
        Ok(c) => c,
        Err(why) => return (vec![Finding::new(why)], String::new()),
    };
    let mut findings = Vec::new();
    let mut timings = Vec::new();
    let mut forwarded: BTreeMap<u16, std::net::SocketAddr> = BTreeMap::new();
    for (service, port) in services {
        let local = match forwarded.get(&port) {
            Some(a) => *a,
            None => match client.forward(port, Duration::from_secs(15)).await {
                Ok(a) => {
                    forwarded.insert(port, a);
                    a
                }
                Err(e) => {
                    findings.push(Finding::new(format!("{service}:{port}: {}", chain(&e))));
                    continue;
                }
            },
        };
        let method = crate::traffic::target::GrpcMethod::HealthCheck {
            service: String::new(),
        };
        match dataplane::in_mesh_target(&service, port, local, method) {
            Ok(target) => match call_until_serving(&target).await {
                Ok(tries) => {
                    timings.push(format!("{service} {} ms", tries.to_serving.as_millis()));
                    if let Some(first) = tries.not_serving {
                        findings.push(Finding::new(format!(
                            "{service}:{port} answered {first} after its rollout reported \
                             complete (SERVING after {} ms): its pods were Ready before they \
                             served",
                            tries.to_serving.as_millis()
                        )));
                    }
                }
                Err(why) => findings.push(Finding::new(format!(
                    "grpc.health.v1 of {service}:{port} from inside the mesh is not SERVING \
                     within {} s: {why}",
                    GRPC_SERVING_WITHIN.as_secs()
                ))),
            },
            Err(e) => findings.push(Finding::new(chain(&e))),
        }
    }
    (
        findings,
        format!(" (time to SERVING: {})", timings.join(", ")),
    )
}

/// `userid` routing inside the mesh: GetAds with the session's userid reaches the
/// feature adservice, look-alikes and calls without it stay on mainline. A release
/// without a userid route fails, naming the feature adservice it leaves unreachable.
async fn probe_userid_routing(run: &mut ScenarioRun<'_>) -> Vec<Finding> {
    use crate::traffic::routing::{RoutingProbe, userid_variants};
    let Some((_, placed)) = run.deployed.as_ref() else {
        return vec![Finding::new("no release is deployed".to_string())];
    };
    let has_userid_route = placed
        .bundle
        .of_kind("VirtualService")
        .filter_map(|o| o.to_json().ok())
        .any(|vs| vs.to_string().contains("\"userid\""));
    if !has_userid_route {
        let feature = placed
            .bundle
            .deployments()
            .filter_map(|d| d.metadata.name.clone())
            .find(|n| n.starts_with("adservice-"));
        return vec![match feature {
            Some(feature) => Finding::about(
                format!("Deployment/{}/{feature}", run.namespace),
                "no VirtualService routes gRPC calls by the session's userid metadata, so no session reaches this feature adservice",
            ),
            None => Finding::new(
                "the feature release has no userid route and no feature Deployment of adservice (adservice-<branch>): the promise's gRPC hop (a session's userid reaching the feature adservice) is not there",
            ),
        }];
    }
    let Some(session) = dataplane::session_of(placed) else {
        return vec![Finding::new(
            "a userid route exists but no session id could be read from it".to_string(),
        )];
    };
    let Some(feature) = placed
        .bundle
        .deployments()
        .filter_map(|d| d.metadata.name.clone())
        .find(|n| n.starts_with("adservice-"))
    else {
        return vec![Finding::new(
            "a userid route exists but the release has no feature Deployment of adservice (adservice-<branch>)".to_string(),
        )];
    };
    let session = match crate::manifests::routing::SessionId::parse(&session) {
        Ok(s) => s,
        Err(e) => return vec![Finding::new(format!("session id {session}: {e}"))],
    };
    if let Some(InMesh::Agent { image }) = run.config.data_plane.as_ref().map(|i| i.in_mesh.clone())
    {
        return probe_userid_by_agent(run, &image, &session, &feature).await;
    }
    let client = match mesh_client(run).await {
        Ok(c) => c,
        Err(why) => return vec![Finding::new(why)],
    };
    let local = match client.forward(9555, Duration::from_secs(15)).await {
        Ok(a) => a,
        Err(e) => return vec![Finding::new(chain(&e))],
    };
    let method = crate::traffic::target::GrpcMethod::GetAds {
        context_keys: vec!["clothing".to_string()],
    };
    let base = match dataplane::in_mesh_target("adservice", 9555, local, method) {
        Ok(t) => t,
        Err(e) => return vec![Finding::new(chain(&e))],
    };
    let health = dataplane::in_mesh_target(
        "adservice",
        9555,
        local,
        crate::traffic::target::GrpcMethod::HealthCheck {
            service: String::new(),
        },
    );
    if let Ok(health) = health
        && let Err(why) = call_until_serving(&health).await
    {
        return vec![Finding::new(format!(
            "adservice:9555 does not answer from inside the mesh: {why}"
        ))];
    }
    let probe = RoutingProbe {
        per_variant: u64::from(ROUTING_REQUESTS_PER_VARIANT),
        attribution: crate::traffic::attribution::AttributionRule::header("x-cdcheck-pod")
            .expect("static header name"),
        feature_label: regex::Regex::new(&format!("^{}-", regex::escape(&feature)))
            .expect("escaped regex"),
        mainline_label: regex::Regex::new("^adservice-").expect("static regex"),
    };
    match probe.run_userids(&base, &userid_variants(&session)).await {
        Ok(report) => variant_findings("userid", &report),
        Err(e) => vec![Finding::new(chain(&e))],
    }
}

/// One finding per variant that did not pass, with where its requests went.
fn variant_findings(
    carrier: &str,
    report: &crate::traffic::routing::RoutingReport,
) -> Vec<Finding> {
    report
        .variants
        .iter()
        .filter(|v| !v.passed)
        .map(|v| {
            Finding::new(format!(
                "{carrier} variant `{}` (expected {:?}): {}/{} reached it, {} leaked, {} unknown, {} unattributed {:?}",
                v.variant.name,
                v.variant.expected,
                v.reached_expected,
                v.sent,
                v.leaked,
                v.unknown,
                v.unattributed,
                v.distribution
            ))
        })
        .collect()
}

/// Requests per routing variant (cookie and userid, through the gateway, the local mesh's
/// client or an agent pod). A variant that leaks at rate p shows a leak with probability
/// 1 − (1 − p)^n: with 100, a leak of 2.95% or more is caught at 95% (README's claim; 40
/// would only catch 7.2%).
const ROUTING_REQUESTS_PER_VARIANT: u32 = 100;

/// Requests per userid variant sent by the agent.
const AGENT_PER_VARIANT: u32 = ROUTING_REQUESTS_PER_VARIANT;

/// How long an agent pod may take, image pull and sidecar start included.
const AGENT_TIMEOUT: Duration = Duration::from_secs(180);

/// The host of `service` in the scenario's namespace, as a workload in it calls it.
fn mesh_host(run: &ScenarioRun<'_>, service: &str) -> String {
    format!("{service}.{}.svc.cluster.local", run.namespace)
}

/// Runs an agent pod with `args` in the scenario's namespace; its records, or why not.
async fn run_agent(
    run: &mut ScenarioRun<'_>,
    image: &str,
    purpose: &str,
    mut args: Vec<String>,
) -> Result<Vec<serde_json::Value>, String> {
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    let agent = crate::agent::remote::AgentPod {
        namespace: run.namespace.clone(),
        name: format!("cdcheck-agent-{purpose}-{}", &suffix[..6]),
        image: image.to_string(),
        args: {
            // The sidecar's routes and endpoints arrive a moment after it is ready.
            args.extend(["--settle".to_string(), "20s".to_string()]);
            args
        },
        labels: BTreeMap::from([
            (RUN_LABEL.to_string(), run.config.run_id.clone()),
            (MANAGED_BY_LABEL.to_string(), MANAGED_BY_VALUE.to_string()),
        ]),
    };
    crate::agent::remote::run(&run.cluster.client, &agent, AGENT_TIMEOUT)
        .await
        .map_err(|e| chain(&e))
}

/// Findings of the records that report something the agent could not do.
fn agent_errors(records: &[serde_json::Value]) -> Vec<Finding> {
    records
        .iter()
        .filter(|r| r["record"] == "error")
        .map(|r| {
            Finding::new(format!(
                "the in-mesh agent: {}",
                r["message"]
                    .as_str()
                    .unwrap_or("an error without a message")
            ))
        })
        .collect()
}

/// gRPC health of every backend, checked by the agent from inside the mesh.
async fn probe_grpc_by_agent(
    run: &mut ScenarioRun<'_>,
    image: &str,
    services: &[(String, u16)],
) -> Vec<Finding> {
    let mut args = Vec::new();
    let mut endpoints = Vec::new();
    for (service, port) in services {
        let endpoint = format!("http://{}:{port}", mesh_host(run, service));
        args.push("--health".to_string());
        // The empty service name is what the kubelet's gRPC probe asks about.
        args.push(format!("={endpoint}"));
        endpoints.push((service.clone(), *port, endpoint));
    }
    let records = match run_agent(run, image, "grpc", args).await {
        Ok(records) => records,
        Err(why) => return vec![Finding::new(why)],
    };
    judge_health_records(&records, &endpoints)
}

/// One finding per backend whose health record is missing or not SERVING.
fn judge_health_records(
    records: &[serde_json::Value],
    endpoints: &[(String, u16, String)],
) -> Vec<Finding> {
    let mut findings = agent_errors(records);
    for (service, port, endpoint) in endpoints {
        let record = records
            .iter()
            .find(|r| r["record"] == "health" && r["endpoint"] == endpoint.as_str());
        match record {
            Some(r) if r["healthy"] == true => {}
            Some(r) => findings.push(Finding::new(format!(
                "grpc.health.v1 of {service}:{port} from inside the mesh is not SERVING: {} {}",
                r["outcome"],
                r["status"].as_str().unwrap_or("")
            ))),
            None if findings.is_empty() => findings.push(Finding::new(format!(
                "the in-mesh agent reported nothing about {service}:{port}"
            ))),
            None => {}
        }
    }
    findings
}

/// `userid` routing inside the mesh through the agent: a batch per variant, each
/// attributed per pod by the agent sidecar's per-host request counters, the hosts named
/// by the pods that had their addresses.
async fn probe_userid_by_agent(
    run: &mut ScenarioRun<'_>,
    image: &str,
    session: &crate::manifests::routing::SessionId,
    feature: &str,
) -> Vec<Finding> {
    use crate::traffic::routing::{Carrier, userid_variants};
    let variants = userid_variants(session);
    let mut args = vec![
        "--ads".to_string(),
        format!("http://{}:9555", mesh_host(run, "adservice")),
    ];
    for variant in &variants {
        let Carrier::Userid { value } = &variant.carrier else {
            continue;
        };
        args.push("--batch".to_string());
        args.push(format!(
            "{}={AGENT_PER_VARIANT}",
            value.as_deref().unwrap_or("-")
        ));
    }
    let records = match run_agent(run, image, "userid", args).await {
        Ok(records) => records,
        Err(why) => return vec![Finding::new(why)],
    };
    let pods = match pods_by_address(run).await {
        Ok(pods) => pods,
        Err(why) => return vec![Finding::new(why)],
    };
    let sides = PodSides::new(feature, "adservice");
    let report = userid_report_from_records(&records, &variants, &pods, &sides);
    let mut findings = agent_errors(&records);
    findings.extend(variant_findings("userid", &report));
    findings
}

/// The scenario namespace's pods by address (every IP a pod has).
async fn pods_by_address(
    run: &ScenarioRun<'_>,
) -> Result<BTreeMap<std::net::IpAddr, String>, String> {
    let pods: Api<k8s_openapi::api::core::v1::Pod> =
        Api::namespaced(run.cluster.client.clone(), &run.namespace);
    let list = pods.list(&Default::default()).await.map_err(|e| {
        format!(
            "list the pods of {} to name the agent's answers: {e}",
            run.namespace
        )
    })?;
    let mut by_address = BTreeMap::new();
    for pod in list.items {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let status = pod.status.unwrap_or_default();
        let ips = status
            .pod_ips
            .into_iter()
            .flatten()
            .map(|p| p.ip)
            .chain(status.pod_ip);
        for ip in ips {
            if let Ok(ip) = ip.parse() {
                by_address.insert(ip, name.clone());
            }
        }
    }
    Ok(by_address)
}

/// Which side a pod is on, by its name: the feature's Deployment names its pods
/// `<feature>-…`, the mainline's `<mainline>-…` (the feature's own prefix is tried first:
/// `adservice-myfeature-…` starts with `adservice-` too).
struct PodSides {
    feature: String,
    mainline: String,
}

impl PodSides {
    fn new(feature: &str, mainline: &str) -> PodSides {
        PodSides {
            feature: format!("{feature}-"),
            mainline: format!("{mainline}-"),
        }
    }

    fn side_of(&self, pod: &str) -> Option<crate::traffic::routing::Side> {
        use crate::traffic::routing::Side;
        if pod.starts_with(&self.feature) {
            Some(Side::Feature)
        } else if pod.starts_with(&self.mainline) {
            Some(Side::Mainline)
        } else {
            None
        }
    }
}

/// The routing report of the agent's batch records, batch `i` being `variants[i]`: each
/// batch's upstream hosts named by the pod with that address (`pods`) and put on a side by
/// `sides`. The counts are the sidecar's upstream requests (retries included), so a
/// variant passes when every request succeeded, nothing went to the other side or to an
/// address no pod has, and the expected side counted at least every success.
fn userid_report_from_records(
    records: &[serde_json::Value],
    variants: &[crate::traffic::routing::Variant],
    pods: &BTreeMap<std::net::IpAddr, String>,
    sides: &PodSides,
) -> crate::traffic::routing::RoutingReport {
    use crate::traffic::routing::{RoutingReport, VariantReport};
    let mut reports = Vec::new();
    for (index, variant) in variants.iter().enumerate() {
        let batch = records
            .iter()
            .find(|r| r["record"] == "batch" && r["batch"].as_u64() == Some(index as u64));
        let sent = batch
            .and_then(|b| b["requests"].as_u64())
            .unwrap_or(u64::from(AGENT_PER_VARIANT));
        let succeeded = batch.and_then(|b| b["succeeded"].as_u64()).unwrap_or(0);
        let mut distribution = BTreeMap::new();
        let (mut reached_expected, mut leaked, mut unknown) = (0, 0, 0);
        for (address, count) in batch
            .and_then(|b| b["endpoints"].as_object())
            .into_iter()
            .flatten()
        {
            let count = count.as_u64().unwrap_or(0);
            let pod = address
                .parse::<std::net::SocketAddr>()
                .ok()
                .and_then(|a| pods.get(&a.ip()));
            let (label, side) = match pod {
                Some(pod) => (pod.clone(), sides.side_of(pod)),
                None => (format!("{address} (no pod has it)"), None),
            };
            match side {
                Some(side) if side == variant.expected => reached_expected += count,
                Some(_) => leaked += count,
                None => unknown += count,
            }
            *distribution.entry(label).or_insert(0) += count;
        }
        let failed = sent.saturating_sub(succeeded);
        if failed > 0 {
            distribution.insert("failed".to_string(), failed);
        }
        if batch.is_none() {
            distribution.insert("no batch record".to_string(), sent);
        }
        let unattributed = failed + succeeded.saturating_sub(reached_expected + leaked + unknown);
        reports.push(VariantReport {
            passed: batch.is_some()
                && sent > 0
                && leaked == 0
                && unknown == 0
                && failed == 0
                && reached_expected >= succeeded,
            leak_rate_upper_bound_95: if leaked == 0 && unknown == 0 {
                crate::traffic::verdict::zero_leak_upper_bound_95(reached_expected.min(sent))
            } else {
                None
            },
            variant: variant.clone(),
            sent,
            distribution,
            reached_expected,
            leaked,
            unknown,
            unattributed,
        });
    }
    RoutingReport::from_variants(reports)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::traffic::routing::userid_variants;
    use serde_json::json;

    fn batch(
        index: u64,
        requests: u64,
        succeeded: u64,
        endpoints: serde_json::Value,
    ) -> serde_json::Value {
        json!({"record": "batch", "batch": index, "requests": requests, "succeeded": succeeded, "endpoints": endpoints})
    }

    const FEATURE: &str = "10.0.0.7:9555";
    const MAINLINE: &str = "10.0.0.5:9555";
    const MAINLINE_TOO: &str = "10.0.0.6:9555";

    fn pods() -> BTreeMap<std::net::IpAddr, String> {
        BTreeMap::from([
            ([10, 0, 0, 5].into(), "adservice-7d9f-abcde".to_string()),
            ([10, 0, 0, 6].into(), "adservice-7d9f-fghij".to_string()),
            (
                [10, 0, 0, 7].into(),
                "adservice-myfeature-5c4b-klmno".to_string(),
            ),
            ([10, 0, 0, 8].into(), "cartservice-1a2b-pqrst".to_string()),
        ])
    }

    #[test]
    fn userid_batches_pass_only_when_each_reaches_its_sides_pods_alone() {
        let session = crate::manifests::routing::SessionId::parse("abc").unwrap();
        let variants = userid_variants(&session);
        assert_eq!(variants.len(), 4);
        let sides = PodSides::new("adservice-myfeature", "adservice");
        let good = vec![
            batch(0, 40, 40, json!({FEATURE: 40})),
            batch(1, 40, 40, json!({MAINLINE: 20, MAINLINE_TOO: 20})),
            batch(2, 40, 40, json!({MAINLINE: 41})),
            batch(3, 40, 40, json!({MAINLINE_TOO: 40})),
            json!({"record": "done", "failed": false}),
        ];
        let report = userid_report_from_records(&good, &variants, &pods(), &sides);
        assert!(report.passed, "{report}");
        assert_eq!(
            report.variants[1].distribution,
            BTreeMap::from([
                ("adservice-7d9f-abcde".to_string(), 20),
                ("adservice-7d9f-fghij".to_string(), 20)
            ])
        );

        // The mainline Service also selects the feature's pod: one request in forty
        // without userid is answered there, though every one went to the mainline's host.
        let mut shared = good.clone();
        shared[1] = batch(1, 40, 40, json!({MAINLINE: 39, FEATURE: 1}));
        let report = userid_report_from_records(&shared, &variants, &pods(), &sides);
        assert_eq!(report.failed_variants(), vec!["no userid"]);
        assert_eq!(report.variants[1].leaked, 1);

        // A batch that reached some other pod, an address no pod has, a failed request,
        // a missing batch.
        let mut odd = good.clone();
        odd[0] = batch(0, 40, 40, json!({FEATURE: 39, "10.0.0.8:9555": 1}));
        odd[1] = batch(1, 40, 39, json!({MAINLINE: 39}));
        odd[2] = batch(2, 40, 40, json!({MAINLINE: 39, "10.9.9.9:9555": 1}));
        odd.remove(3);
        let report = userid_report_from_records(&odd, &variants, &pods(), &sides);
        assert_eq!(
            report.failed_variants(),
            vec![
                "userid of the session",
                "no userid",
                "userid plus one character",
                "prefix of the userid"
            ]
        );
        assert_eq!(
            report.variants[2].distribution["10.9.9.9:9555 (no pod has it)"],
            1
        );

        // Counters that record nothing (no per-host counters, an older agent) cannot pass.
        let silent: Vec<_> = (0..4).map(|i| batch(i, 40, 40, json!({}))).collect();
        let report = userid_report_from_records(&silent, &variants, &pods(), &sides);
        assert!(!report.passed);
        assert_eq!(report.variants[0].unattributed, 40);
    }

    #[test]
    fn health_records_are_judged_per_backend_and_a_missing_one_is_a_finding() {
        let endpoints = vec![
            (
                "cartservice".to_string(),
                7070,
                "http://cartservice.s1.svc.cluster.local:7070".to_string(),
            ),
            (
                "adservice".to_string(),
                9555,
                "http://adservice.s1.svc.cluster.local:9555".to_string(),
            ),
        ];
        let records = vec![
            json!({"record": "health", "endpoint": "http://cartservice.s1.svc.cluster.local:7070", "healthy": true, "outcome": "ok", "status": "SERVING"}),
            json!({"record": "health", "endpoint": "http://adservice.s1.svc.cluster.local:9555", "healthy": false, "outcome": "grpc-14", "status": null}),
        ];
        let findings = judge_health_records(&records, &endpoints);
        assert_eq!(findings.len(), 1, "{findings:?}");
        assert!(
            findings[0].message.contains("adservice:9555"),
            "{findings:?}"
        );
        let findings = judge_health_records(&records[..1], &endpoints);
        assert!(
            findings[0]
                .message
                .contains("reported nothing about adservice:9555")
        );
        assert!(judge_health_records(&records[..1], &endpoints[..1]).is_empty());
    }
}
