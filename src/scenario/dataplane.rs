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
pub fn environment_host(bundle: &crate::manifests::Bundle) -> Option<String> {
    bundle
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
    /// The scenario's Kubernetes events recorded before it started (the runner sets it),
    /// so the Service switches made under the load can be counted.
    pub events_before: usize,
    /// The watch of the scenario's pods while the load runs (the runner starts it), so the
    /// pod terminations the load covered can be counted.
    pub pods: Option<crate::kube::pod_watch::PodWatch>,
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
        events_before: 0,
        pods: None,
        stop,
        task,
    })
}

impl RunningLoad {
    /// Stops sending, waits for the answers in flight, and returns the timeline.
    /// The pod watch, if any, must have been taken out before.
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
    disruptions: &Disruptions,
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
        terminated_pods: disruptions.terminated_pods.clone(),
        service_switches: disruptions.service_switches.clone(),
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

/// What a load window covered: the events a zero-downtime claim is about.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Disruptions {
    /// `app/pod` of every pod that began terminating or was deleted while the load ran.
    pub terminated_pods: Vec<String>,
    /// Every Service switched to another release while the load ran.
    pub service_switches: Vec<String>,
}

impl Disruptions {
    pub fn count(&self) -> u64 {
        (self.terminated_pods.len() + self.service_switches.len()) as u64
    }

    /// "3 pod terminations (frontend x2, cartservice x1) and 1 Service switch".
    pub fn describe(&self) -> String {
        let apps: Vec<String> = crate::report::terminations_by_app(&self.terminated_pods)
            .iter()
            .map(|(app, n)| format!("{} x{n}", if app.is_empty() { "(no app)" } else { app }))
            .collect();
        let count =
            |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
        let mut text = count(
            self.terminated_pods.len(),
            "pod termination",
            "pod terminations",
        );
        if !apps.is_empty() {
            text.push_str(&format!(" ({})", apps.join(", ")));
        }
        text.push_str(" and ");
        text.push_str(&count(
            self.service_switches.len(),
            "Service switch",
            "Service switches",
        ));
        text
    }
}

/// The finding of a load window that covered fewer disruptions than its claim needs.
pub fn judge_disruptions(name: &str, disruptions: &Disruptions, min: u64) -> Vec<Finding> {
    if disruptions.count() >= min {
        return Vec::new();
    }
    vec![Finding::new(format!(
        "load {name} covered {}, fewer than the {min} its zero-downtime verdict needs: \
         nothing was replaced while it ran, so its zero failed requests prove nothing",
        disruptions.describe()
    ))]
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

/// What the Secret a Gateway's `credentialName` names holds, as Istio reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Credential {
    /// The certificate (PEM) Istio's gateway reads from the Secret
    /// ([`crate::manifests::tls::gateway_certificate`]).
    Certificate(Vec<u8>),
    /// The Secret exists but gives the gateway no certificate: why.
    NoCertificate(String),
    /// No such Secret.
    Missing,
    /// The API did not say (an error other than not-found): nothing can be compared.
    Unreadable(String),
}

impl Credential {
    pub fn of(secret: Option<&k8s_openapi::api::core::v1::Secret>) -> Credential {
        let Some(secret) = secret else {
            return Credential::Missing;
        };
        match crate::manifests::tls::gateway_certificate(secret) {
            Ok(pem) => Credential::Certificate(pem),
            Err(why) => Credential::NoCertificate(why),
        }
    }
}

/// The HTTPS verdict from the handshake: the gateway must complete it for the host's
/// SNI with a certificate that covers the host and is valid, and that certificate must
/// be the one of the Secret the Gateway's `credentialName` names.
pub async fn probe_tls(
    ingress: &DataPlane,
    host: &str,
    namespace: &str,
    secret: &str,
    credential: &Credential,
) -> Vec<Finding> {
    let expected_pem = match credential {
        Credential::Certificate(pem) => Some(pem.as_slice()),
        _ => None,
    };
    let address = ingress.https.to_string();
    let report = match traffic::probe::tls(
        &address,
        host,
        &["h2", "http/1.1"],
        expected_pem,
        Duration::from_secs(5),
    )
    .await
    {
        Ok(report) => report,
        Err(e) => return vec![Finding::new(format!("probe TLS on {address}: {e}"))],
    };
    let mut findings = handshake_findings(&report, host);
    let served = report
        .chain
        .first()
        .map(|c| c.sha256.clone())
        .unwrap_or_else(|| "none".into());
    let named = format!("Secret {namespace}/{secret}");
    match credential {
        Credential::Certificate(_) if report.matches_expected == Some(false) => {
            findings.push(Finding::new(format!(
                "the gateway served a certificate (sha256 {served}) that is not {named}'s \
                 (sha256 {}), which the Gateway's credentialName names",
                report.expected_sha256.as_deref().unwrap_or("none")
            )));
        }
        Credential::Certificate(_) => {}
        Credential::Missing => findings.push(Finding::new(format!(
            "the Gateway's credentialName names {named}, which does not exist in {namespace}"
        ))),
        Credential::NoCertificate(why) => findings.push(Finding::new(format!(
            "the Gateway's credentialName names {named}, which {why}"
        ))),
        Credential::Unreadable(why) => findings.push(Finding::new(format!(
            "cdcheck could not read {named} to compare it with what was served: {why}"
        ))),
    }
    findings
}

/// What the handshake itself shows is wrong: it failed, or the leaf does not cover the
/// host or is not valid now.
fn handshake_findings(report: &traffic::probe::TlsProbeReport, host: &str) -> Vec<Finding> {
    if let Some(error) = &report.error_message {
        return vec![Finding::new(format!(
            "the TLS handshake with the gateway ({}) for SNI {host} failed: {error}",
            report.address
        ))];
    }
    let Some(leaf) = report.chain.first() else {
        return vec![Finding::new(format!(
            "the gateway ({}) completed the handshake for SNI {host} without a certificate",
            report.address
        ))];
    };
    let mut findings = Vec::new();
    if !report.name_in_sans {
        findings.push(Finding::new(format!(
            "the certificate served for SNI {host} does not cover it (names: {})",
            leaf.sans.join(", ")
        )));
    }
    if leaf.expired {
        findings.push(Finding::new(format!(
            "the certificate served for SNI {host} is not valid now (not after {})",
            leaf.not_after
        )));
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

#[cfg(test)]
mod tests {
    use super::*;

    fn disruptions(pods: &[&str], switches: &[&str]) -> Disruptions {
        Disruptions {
            terminated_pods: pods.iter().map(|p| p.to_string()).collect(),
            service_switches: switches.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn a_load_window_that_replaced_nothing_fails_a_claim_that_needs_one_disruption() {
        let none = disruptions(&[], &[]);
        let findings = judge_disruptions("shop", &none, 1);
        assert_eq!(findings.len(), 1);
        assert!(
            findings[0]
                .message
                .contains("covered 0 pod terminations and 0 Service switches, fewer than the 1"),
            "{}",
            findings[0].message
        );
        assert!(judge_disruptions("shop", &none, 0).is_empty());
    }

    #[test]
    fn one_termination_or_one_switch_is_enough_for_one() {
        let pod = disruptions(&["frontend/frontend-1"], &[]);
        assert!(judge_disruptions("shop", &pod, 1).is_empty());
        let switch = disruptions(&[], &["Service/frontend"]);
        assert!(judge_disruptions("shop", &switch, 1).is_empty());
        assert_eq!(judge_disruptions("shop", &switch, 2).len(), 1);
    }

    fn secret(type_: &str, keys: &[&str]) -> k8s_openapi::api::core::v1::Secret {
        k8s_openapi::api::core::v1::Secret {
            type_: Some(type_.into()),
            data: Some(
                keys.iter()
                    .map(|k| {
                        (
                            k.to_string(),
                            k8s_openapi::ByteString(format!("pem of {k}").into_bytes()),
                        )
                    })
                    .collect(),
            ),
            ..Default::default()
        }
    }

    #[test]
    fn the_secret_shapes_istio_reads_give_the_certificate_whatever_the_type() {
        let tls = secret("kubernetes.io/tls", &["tls.crt", "tls.key"]);
        assert_eq!(
            Credential::of(Some(&tls)),
            Credential::Certificate(b"pem of tls.crt".to_vec())
        );
        let generic = secret("Opaque", &["cert", "key"]);
        assert_eq!(
            Credential::of(Some(&generic)),
            Credential::Certificate(b"pem of cert".to_vec())
        );
        // `kubectl create secret generic --from-file=tls.crt --from-file=tls.key`.
        let generic_tls_keys = secret("Opaque", &["tls.crt", "tls.key", "ca.crt"]);
        assert_eq!(
            Credential::of(Some(&generic_tls_keys)),
            Credential::Certificate(b"pem of tls.crt".to_vec())
        );
        // A certificate without its key serves nothing.
        let no_key = secret("kubernetes.io/tls", &["tls.crt"]);
        assert!(
            matches!(Credential::of(Some(&no_key)), Credential::NoCertificate(why) if why.contains("its keys: tls.crt")),
            "{:?}",
            Credential::of(Some(&no_key))
        );
        let neither = secret("Opaque", &["password"]);
        assert!(matches!(
            Credential::of(Some(&neither)),
            Credential::NoCertificate(_)
        ));
        assert_eq!(Credential::of(None), Credential::Missing);
    }

    fn served(
        error: Option<&str>,
        name_in_sans: bool,
        expired: bool,
    ) -> traffic::probe::TlsProbeReport {
        traffic::probe::TlsProbeReport {
            address: "127.0.0.1:30443".into(),
            server_name: "shop.test".into(),
            protocol_version: error.is_none().then(|| "TLSv1_3".into()),
            alpn: None,
            chain: if error.is_some() {
                Vec::new()
            } else {
                vec![traffic::probe::CertificateInfo {
                    subject: "CN=shop.test".into(),
                    issuer: "CN=shop.test".into(),
                    sans: vec!["other.test".into()],
                    not_after: "Tue, 1 Dec 2026 00:00:00 +0000".into(),
                    expired,
                    sha256: "ab".into(),
                }]
            },
            error: error.map(|_| crate::traffic::record::ErrorClass::Tls),
            error_message: error.map(str::to_string),
            expected_sha256: None,
            matches_expected: None,
            name_in_sans,
        }
    }

    #[test]
    fn the_handshake_alone_fails_a_refused_uncovered_or_expired_certificate() {
        let refused =
            handshake_findings(&served(Some("connection reset"), false, false), "shop.test");
        assert_eq!(refused.len(), 1);
        assert!(refused[0].message.contains("the TLS handshake with the gateway (127.0.0.1:30443) for SNI shop.test failed: connection reset"));
        let uncovered = handshake_findings(&served(None, false, false), "shop.test");
        assert!(
            uncovered[0]
                .message
                .contains("does not cover it (names: other.test)"),
            "{uncovered:?}"
        );
        let expired = handshake_findings(&served(None, true, true), "shop.test");
        assert_eq!(expired.len(), 1);
        assert!(
            expired[0].message.contains("is not valid now"),
            "{expired:?}"
        );
        assert!(handshake_findings(&served(None, true, false), "shop.test").is_empty());
    }

    #[test]
    fn disruptions_are_described_by_app() {
        let d = disruptions(
            &[
                "frontend/frontend-1",
                "frontend/frontend-2",
                "cartservice/cart-1",
            ],
            &["Service/frontend"],
        );
        assert_eq!(
            d.describe(),
            "3 pod terminations (cartservice x1, frontend x2) and 1 Service switch"
        );
    }
}
