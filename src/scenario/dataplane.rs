//! The data-plane steps of a scenario on a substrate that serves traffic: background
//! loads and probes through the ingress gateway (the environment's host on the
//! gateway's host ports), and gRPC calls from inside the mesh (an in-mesh client).

use std::net::SocketAddr;
use std::time::Duration;

use regex::Regex;

use super::pipeline::Placed;
use crate::report::{Finding, LoadResult, OutageWindow, RequestPoint};
use crate::substrate::data_plane::DataPlane;
use crate::traffic::attribution::AttributionRule;
use crate::traffic::load::LoadSpec;
use crate::traffic::record::{Summary, Timeline};
use crate::traffic::target::{GrpcMethod, GrpcTarget, HttpTarget, Target};
use crate::traffic::{self, TrafficError};

/// The environment's public host: the first host of a VirtualService bound to a
/// gateway (not `mesh`) that names one.
pub fn environment_host(placed: &Placed) -> Option<String> {
    placed
        .bundle
        .of_kind("VirtualService")
        .filter_map(|o| o.to_json().ok())
        .filter(|vs| {
            vs["spec"]["gateways"]
                .as_array()
                .is_some_and(|g| g.iter().any(|g| g.as_str().is_some_and(|g| g != "mesh")))
        })
        .flat_map(|vs| {
            vs["spec"]["hosts"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .filter_map(|h| h.as_str().map(str::to_string))
        })
        .find(|h| !h.contains('*'))
}

/// The test session of a feature branch: the id in a `session-<id>` route name, else
/// the value a `shop_session-id` cookie regex or a `userid` exact match names.
pub fn session_of(placed: &Placed) -> Option<String> {
    let cookie = Regex::new(r"shop_session\\?-id=((?:\\.|[A-Za-z0-9_])(?:\\.|[A-Za-z0-9_-])*)")
        .expect("static regex");
    for vs in placed
        .bundle
        .of_kind("VirtualService")
        .filter_map(|o| o.to_json().ok())
    {
        for route in vs["spec"]["http"].as_array().into_iter().flatten() {
            if let Some(id) = route["name"]
                .as_str()
                .and_then(|n| n.strip_prefix("session-"))
            {
                return Some(id.to_string());
            }
            for m in route["match"].as_array().into_iter().flatten() {
                if let Some(v) = m["headers"]["userid"]["exact"].as_str() {
                    return Some(v.to_string());
                }
                if let Some(r) = m["headers"]["cookie"]["regex"].as_str()
                    && let Some(c) = cookie.captures(r)
                {
                    return Some(c[1].replace('\\', ""));
                }
            }
        }
    }
    None
}

/// A GET of `path` on the environment's host through the gateway.
pub fn gateway_target(
    ingress: &DataPlane,
    host: &str,
    path: &str,
) -> Result<HttpTarget, TrafficError> {
    let mut target = HttpTarget::parse(&format!("http://{host}{path}"))?;
    target.resolve = vec![(host.to_string(), ingress.http)];
    Ok(target)
}

/// A background load in progress.
pub struct RunningLoad {
    pub target: String,
    /// When it started, since the run started.
    pub started_at: Duration,
    /// The scenario's checks recorded before it started (the runner sets it).
    pub checks_before: usize,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<Timeline, TrafficError>>,
}

/// The longest a background load runs when nothing stops it.
const LOAD_CAP: Duration = Duration::from_secs(600);

/// Starts an open-loop load of `rate` requests/s at the frontend through the gateway,
/// each answer attributed to the pod that served it.
pub fn start_frontend_load(
    ingress: &DataPlane,
    host: &str,
    rate: f64,
    started_at: Duration,
) -> Result<RunningLoad, TrafficError> {
    let target = Target::Http(gateway_target(ingress, host, "/")?);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut spec = LoadSpec::open(rate, LOAD_CAP).with_attribution(AttributionRule::frontend_pod());
    spec.stop = Some(stopped);
    let task = tokio::spawn(async move { traffic::load::run(&target, &spec, None).await });
    Ok(RunningLoad {
        target: format!("frontend via http://{host}/ on {}", ingress.http),
        started_at,
        checks_before: 0,
        stop,
        task,
    })
}

impl RunningLoad {
    /// Stops sending, waits for the answers in flight, and returns the timeline.
    pub async fn finish(self) -> Result<Timeline, TrafficError> {
        let _ = self.stop.send(true);
        match self.task.await {
            Ok(result) => result,
            Err(e) => Err(TrafficError::InvalidLoad {
                reason: format!("the load task ended abnormally: {e}"),
            }),
        }
    }
}

/// The report's view of a finished load.
pub fn load_result(
    name: &str,
    load_target: &str,
    started_at: Duration,
    timeline: &Timeline,
) -> LoadResult {
    let summary = Summary::of(timeline);
    let offset_ms = started_at.as_secs_f64() * 1e3;
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    LoadResult {
        name: name.to_string(),
        target: load_target.to_string(),
        requests: summary.count,
        failed: summary.failed,
        rate_per_s: summary.achieved_rate,
        p50_ms: summary.latency.p50_us as f64 / 1e3,
        p99_ms: summary.latency.p99_us as f64 / 1e3,
        max_ms: summary.latency.max_us as f64 / 1e3,
        outages: traffic::verdict::outage_windows(&timeline.records)
            .iter()
            .map(|w| OutageWindow {
                from_ms: offset_ms + ms(w.start),
                to_ms: offset_ms + ms(w.end),
                requests: w.failed_requests,
            })
            .collect(),
        timeline: timeline
            .records
            .iter()
            .map(|r| RequestPoint {
                at_ms: offset_ms + ms(r.scheduled),
                latency_ms: ms(r.latency),
                ok: r.succeeded(),
                outcome: r.outcome.key(),
            })
            .collect(),
    }
}

/// The findings of a finished load held to `max_failed`.
pub fn judge_load(name: &str, timeline: &Timeline, max_failed: u64) -> Vec<Finding> {
    let verdict = traffic::verdict::failures_within(
        timeline,
        traffic::verdict::Tolerance::Count { max_failed },
    );
    if verdict.passed {
        return Vec::new();
    }
    if verdict.total == 0 {
        return vec![Finding::new(format!(
            "load {name} sent no request: it proves nothing"
        ))];
    }
    let mut findings = vec![Finding::new(format!(
        "load {name}: {} of {} requests failed (at most {max_failed} allowed)",
        verdict.failed, verdict.total
    ))];
    let mut outcomes = std::collections::BTreeMap::<String, u64>::new();
    for r in timeline.records.iter().filter(|r| !r.succeeded()) {
        *outcomes.entry(r.outcome.key()).or_default() += 1;
    }
    findings.push(Finding::new(format!(
        "failed requests by outcome: {outcomes:?}"
    )));
    for w in verdict.outages.iter().take(5) {
        findings.push(Finding::new(format!(
            "outage from {:.3} s to {:.3} s of the load ({} requests failed in a row)",
            w.start.as_secs_f64(),
            w.end.as_secs_f64(),
            w.failed_requests
        )));
    }
    findings
}

/// `/_healthz` through the gateway with the probe cookie answers 200.
pub async fn probe_http(ingress: &DataPlane, host: &str) -> Vec<Finding> {
    let target = match gateway_target(ingress, host, "/_healthz")
        .and_then(|t| t.with_cookie("shop_session-id=x-readiness-probe"))
    {
        Ok(t) => t,
        Err(e) => return vec![Finding::new(format!("build the probe: {e}"))],
    };
    match traffic::probe::http_health(&target).await {
        Ok(report) if report.healthy => Vec::new(),
        Ok(report) => vec![Finding::new(format!(
            "GET http://{host}/_healthz through the gateway: {}",
            report.outcome.key()
        ))],
        Err(e) => vec![Finding::new(format!("GET http://{host}/_healthz: {e}"))],
    }
}

/// The certificate the gateway serves for the host's SNI is the leaf of `expected_pem`
/// (the Secret `namespace/secret` that the Gateway's `credentialName` names) and covers
/// the host. Without that Secret the handshake is still made, to show what is served.
pub async fn probe_tls(
    ingress: &DataPlane,
    host: &str,
    namespace: &str,
    secret: &str,
    expected_pem: Option<&[u8]>,
) -> Vec<Finding> {
    let mut findings = Vec::new();
    if expected_pem.is_none() {
        findings.push(Finding::new(format!(
            "the Gateway's credentialName names Secret {secret}, which does not exist in {namespace} (or has no tls.crt)"
        )));
    }
    let address = ingress.https.to_string();
    match traffic::probe::tls(
        &address,
        host,
        &["h2", "http/1.1"],
        expected_pem,
        Duration::from_secs(5),
    )
    .await
    {
        Ok(report) if report.passed() && expected_pem.is_some() => {}
        Ok(report) => {
            if let Some(error) = &report.error_message {
                findings.push(Finding::new(format!(
                    "TLS handshake with the gateway ({address}) for SNI {host} failed: {error}"
                )));
            } else if expected_pem.is_none() {
                findings.push(Finding::new(format!(
                    "the gateway served a certificate (sha256 {}) for {host} anyway",
                    report
                        .chain
                        .first()
                        .map(|c| c.sha256.as_str())
                        .unwrap_or("none")
                )));
            }
            if report.matches_expected == Some(false) {
                findings.push(Finding::new(format!(
                    "the gateway served a certificate (sha256 {}) that is not Secret {namespace}/{secret}'s (sha256 {})",
                    report.chain.first().map(|c| c.sha256.as_str()).unwrap_or("none"),
                    report.expected_sha256.as_deref().unwrap_or("none")
                )));
            }
            if report.error.is_none() && !report.name_in_sans {
                findings.push(Finding::new(format!(
                    "the served certificate does not cover {host}"
                )));
            }
        }
        Err(e) => findings.push(Finding::new(format!("probe TLS on {address}: {e}"))),
    }
    findings
}

/// A gRPC target for `service` on `port` through an in-mesh client's forwarded
/// egress listener: the authority is the service's name, as the sidecar routes by it.
pub fn in_mesh_target(
    service_host: &str,
    port: u16,
    forwarded: SocketAddr,
    method: GrpcMethod,
) -> Result<GrpcTarget, TrafficError> {
    let mut target = GrpcTarget::new(&format!("http://{service_host}:{port}"), method)?;
    target.resolve = vec![(service_host.to_string(), forwarded)];
    Ok(target)
}
