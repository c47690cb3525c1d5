//! A realistic run report for the reporter tests: a blue/green scenario that
//! passed under a 2000-request load, a rolling update that failed with a 300 ms
//! outage during its rollout, and an https scenario whose data-plane checks were
//! skipped on the local substrate. [`with_skips`] adds what a `--manifests` run
//! without `--feature-manifests` on a substrate without a data plane looks like:
//! a pass that skipped checks, and a feature-branch scenario that did not run.

#![allow(dead_code)]

use std::time::Duration;

use cdcheck::report::{
    CheckResult, Event, Finding, KubeEvent, KubeEventKind, LoadResult, OutageWindow, RequestPoint,
    RunReport, SCHEMA_VERSION, ScenarioReport, SkipKind, SlowestRollout, StepTime, TimeBreakdown,
    Totals, Verdict,
};

pub const FAILED_SCENARIO: &str = "zero-downtime-rolling";
pub const PASSED_SCENARIO: &str = "zero-downtime-bluegreen";
pub const SKIPPED_SCENARIO: &str = "https";
pub const SKIP_REASON: &str = "local has no data plane";
pub const FEATURE_SCENARIO: &str = "feature-branch";
/// The runner's reason when the pipeline gives no feature release.
pub const NOT_GIVEN_REASON: &str =
    "not applicable: make the feature release: the pipeline gives none (--feature-manifests)";
/// A finding that quotes markup, as API errors and proxies' bodies do.
pub const MARKUP_FINDING: &str =
    "the gateway answered 503 with <html><body>no healthy upstream</body></html>";

pub fn run_report() -> RunReport {
    totalled(vec![bluegreen_passed(), rolling_failed(), https_skipped()])
}

/// The run with skips that must not read as passes: the blue/green scenario passes
/// what it ran and skips 3 data-plane checks, and `feature-branch` (last) did not
/// run because the pipeline gives no feature release.
pub fn with_skips() -> RunReport {
    let mut bluegreen = bluegreen_passed();
    for (name, description) in [
        ("probe-routing", "probe routing"),
        ("probe-grpc", "probe grpc"),
        ("load-frontend-zero-failed", "stop load frontend"),
    ] {
        let mut c = check(name, description, 6, Verdict::Skipped, 24_500, 0);
        c.skip_kind = Some(SkipKind::NoDataPlane);
        c.skip_reason = Some(SKIP_REASON.into());
        bluegreen.checks.push(c);
    }
    totalled(vec![
        bluegreen,
        rolling_failed(),
        https_skipped(),
        feature_not_given(),
    ])
}

fn feature_not_given() -> ScenarioReport {
    let mut release = check(
        "release-feature",
        "the pipeline has the release this scenario needs",
        0,
        Verdict::Skipped,
        29_100,
        1,
    );
    release.skip_kind = Some(SkipKind::NotApplicable);
    release.skip_reason = Some(NOT_GIVEN_REASON.into());
    let mut checks = vec![release];
    for (step, name) in [
        (1, "feature-names"),
        (1, "session-routes-anchored"),
        (2, "probe-routing"),
    ] {
        let mut c = check(name, name, step, Verdict::Skipped, 29_100, 0);
        c.skip_kind = Some(SkipKind::NotRun);
        c.skip_reason = Some("not run: an earlier step could not complete".into());
        checks.push(c);
    }
    ScenarioReport {
        name: FEATURE_SCENARIO.into(),
        file: "scenarios/feature-branch.yaml".into(),
        description: "A feature image tag's branch is appended to its names; session routes".into(),
        tags: vec!["feature-branch".into(), "routing".into()],
        needs: vec!["control-plane".into(), "data-plane".into()],
        namespace: "cdc-fb-4".into(),
        verdict: Verdict::Skipped,
        started_at: ms(29_000),
        duration: ms(120),
        checks,
        events: Vec::new(),
        loads: Vec::new(),
        time: TimeBreakdown::default(),
        diagnostics: None,
    }
}

/// The events a runner emits for a run, scenarios interleaved as they run concurrently.
pub fn events_of(report: &RunReport) -> Vec<Event> {
    let mut events = vec![Event::RunStarted {
        substrate: report.substrate.clone(),
        data_plane: report.data_plane,
        pipeline: report.pipeline.clone(),
        scenarios: report.scenarios.iter().map(|s| s.name.clone()).collect(),
    }];
    for scenario in &report.scenarios {
        events.push(Event::ScenarioStarted {
            scenario: scenario.name.clone(),
            namespace: scenario.namespace.clone(),
            steps: 6,
        });
        events.push(Event::StepStarted {
            scenario: scenario.name.clone(),
            step: 0,
            label: "deploy release 1".into(),
        });
    }
    for scenario in &report.scenarios {
        for check in &scenario.checks {
            events.push(Event::Check {
                scenario: scenario.name.clone(),
                result: check.clone(),
            });
        }
        events.push(Event::ScenarioFinished {
            report: Box::new(scenario.clone()),
        });
    }
    events.push(Event::RunFinished {
        report: Box::new(report.clone()),
    });
    events
}

/// The events of a run interrupted once its first `finished` scenarios (in
/// selection order) have finished: no later `ScenarioFinished`, no `RunFinished`.
pub fn interrupted_events(report: &RunReport, finished: usize) -> Vec<Event> {
    let mut seen = 0;
    let mut events = Vec::new();
    for event in events_of(report) {
        match &event {
            Event::ScenarioFinished { .. } => {
                seen += 1;
                if seen > finished {
                    continue;
                }
            }
            Event::RunFinished { .. } => continue,
            _ => {}
        }
        events.push(event);
    }
    events.push(Event::RunInterrupted);
    events
}

fn totalled(scenarios: Vec<ScenarioReport>) -> RunReport {
    let mut scenario_totals = Totals::default();
    let mut check_totals = Totals::default();
    let mut verdict = Verdict::Passed;
    for scenario in &scenarios {
        scenario_totals.add(scenario.verdict);
        verdict = verdict.worst(scenario.verdict);
        for check in &scenario.checks {
            check_totals.add(check.verdict);
        }
    }
    RunReport {
        schema_version: SCHEMA_VERSION,
        cdcheck_version: "0.1.0".into(),
        started: "2026-11-29T12:00:00Z".into(),
        duration: Duration::from_millis(47_850),
        substrate: "local".into(),
        data_plane: false,
        pipeline: "reference rendering".into(),
        verdict,
        scenarios,
        scenario_totals,
        check_totals,
        interrupted: None,
    }
}

fn ms(value: u64) -> Duration {
    Duration::from_millis(value)
}

fn check(
    name: &str,
    description: &str,
    step: usize,
    verdict: Verdict,
    at_ms: u64,
    took_ms: u64,
) -> CheckResult {
    CheckResult {
        name: name.into(),
        description: description.into(),
        step,
        verdict,
        findings: Vec::new(),
        skip_reason: None,
        skip_kind: None,
        at: ms(at_ms),
        duration: ms(took_ms),
    }
}

fn event(at_ms: u64, kind: KubeEventKind, object: &str, detail: &str) -> KubeEvent {
    KubeEvent {
        at: ms(at_ms),
        kind,
        object: Some(object.into()),
        detail: detail.into(),
    }
}

fn bluegreen_passed() -> ScenarioReport {
    let ns = "cdc-zdbg-1";
    let checks = vec![
        check(
            "service-selects-one-colour",
            "the frontend Service selects exactly one colour",
            1,
            Verdict::Passed,
            2_100,
            40,
        ),
        check(
            "switch-after-ready",
            "the selector moved only once every green pod was ready",
            4,
            Verdict::Passed,
            14_300,
            12,
        ),
        check(
            "nothing-mixed-after-switch",
            "no request reached a blue pod after the switch",
            5,
            Verdict::Passed,
            24_400,
            310,
        ),
        check(
            "no-failed-request-under-load",
            "zero failed requests through the switch",
            5,
            Verdict::Passed,
            24_420,
            3,
        ),
    ];
    let events = vec![
        event(
            1_200,
            KubeEventKind::Apply,
            &format!("Deployment/{ns}/frontend-blue"),
            "release 1",
        ),
        event(
            6_000,
            KubeEventKind::Apply,
            &format!("Deployment/{ns}/frontend-green"),
            "release 2",
        ),
        event(
            6_050,
            KubeEventKind::RolloutStarted,
            &format!("Deployment/{ns}/frontend-green"),
            "0/3 ready",
        ),
        event(
            8_900,
            KubeEventKind::RolloutProgress,
            &format!("Deployment/{ns}/frontend-green"),
            "1/3 ready",
        ),
        event(
            10_700,
            KubeEventKind::RolloutProgress,
            &format!("Deployment/{ns}/frontend-green"),
            "2/3 ready",
        ),
        event(
            13_900,
            KubeEventKind::RolloutComplete,
            &format!("Deployment/{ns}/frontend-green"),
            "3/3 ready",
        ),
        event(
            14_300,
            KubeEventKind::Switch,
            &format!("Service/{ns}/frontend"),
            "selector version=blue -> version=green",
        ),
    ];
    let load = load(
        "frontend",
        &format!("http://frontend.{ns}/"),
        3_000,
        2_000,
        100.0,
        None,
        |t| {
            // The switch re-establishes connections: a small bump after it.
            if (14_300.0..15_000.0).contains(&t) {
                9.0
            } else {
                0.0
            }
        },
    );
    ScenarioReport {
        name: PASSED_SCENARIO.into(),
        file: "scenarios/zero-downtime-bluegreen.yaml".into(),
        description: "Blue/green: switch only after the new pods are ready, nothing mixed after"
            .into(),
        tags: vec!["zero-downtime".into(), "blue-green".into()],
        needs: vec!["control-plane".into()],
        namespace: ns.into(),
        verdict: Verdict::Passed,
        started_at: ms(400),
        duration: ms(24_600),
        checks,
        events,
        loads: vec![load],
        time: TimeBreakdown {
            waited_for_gateway: Duration::from_millis(12_400),
            steps: vec![
                StepTime {
                    step: "deploy current".into(),
                    duration: Duration::from_millis(9_100),
                    slowest_rollout: None,
                },
                StepTime {
                    step: "switch to next".into(),
                    duration: Duration::from_millis(21_700),
                    slowest_rollout: Some(SlowestRollout {
                        deployment: "adservice-v2".into(),
                        took: Duration::from_millis(20_300),
                    }),
                },
            ],
        },
        diagnostics: None,
    }
}

fn rolling_failed() -> ScenarioReport {
    let ns = "cdc-zdr-2";
    let mut no_failed = check(
        "no-failed-request-under-load",
        "zero failed requests while the Deployment rolls",
        4,
        Verdict::Failed,
        31_200,
        4,
    );
    let mut prestop = check(
        "prestop-and-grace",
        "every container has a preStop hook and a grace period longer than it",
        1,
        Verdict::Failed,
        2_600,
        8,
    );
    prestop.findings = vec![Finding::about(
        format!("Deployment/{ns}/frontend"),
        "container server has no preStop hook: it stops before its endpoint is removed",
    )];
    let strategy = check(
        "strategy-rolling-update",
        "RollingUpdate with maxUnavailable 0",
        1,
        Verdict::Passed,
        2_550,
        5,
    );
    let readiness = check(
        "readiness-probe-on-every-container",
        "every container declares a readiness probe",
        1,
        Verdict::Passed,
        2_560,
        3,
    );
    let ready_never_below = check(
        "ready-never-below-desired",
        "ready replicas never dropped below desired in the watch",
        3,
        Verdict::Passed,
        26_900,
        2,
    );
    let deployment = format!("Deployment/{ns}/frontend");
    let events = vec![
        event(900, KubeEventKind::Apply, &deployment, "release 1"),
        event(
            16_000,
            KubeEventKind::Apply,
            &deployment,
            "release 2 (pod template restartedAt)",
        ),
        event(
            16_040,
            KubeEventKind::RolloutStarted,
            &deployment,
            "revision 2",
        ),
        event(
            18_200,
            KubeEventKind::RolloutProgress,
            &deployment,
            "1/3 updated",
        ),
        event(
            19_400,
            KubeEventKind::Delete,
            &format!("Pod/{ns}/frontend-7c9d5b6f4-x2l8q"),
            "old pod terminating",
        ),
        event(
            21_300,
            KubeEventKind::RolloutProgress,
            &deployment,
            "2/3 updated",
        ),
        event(
            24_800,
            KubeEventKind::RolloutComplete,
            &deployment,
            "3/3 updated, 3 ready",
        ),
    ];
    let outage = OutageWindow {
        from_ms: 19_410.0,
        to_ms: 19_710.0,
        requests: 0,
    };
    let load = load(
        "frontend",
        &format!("http://frontend.{ns}/"),
        11_000,
        2_000,
        100.0,
        Some(outage),
        |t| {
            if (16_000.0..25_000.0).contains(&t) {
                6.0
            } else {
                0.0
            }
        },
    );
    no_failed.findings = vec![
        Finding::about(
            format!("Deployment/{ns}/frontend"),
            format!(
                "{} of {} requests failed: a 300 ms outage from 19.410 s to 19.710 s during the rollout",
                load.failed, load.requests
            ),
        ),
        Finding::new(MARKUP_FINDING),
    ];
    let checks = vec![strategy, readiness, prestop, ready_never_below, no_failed];
    ScenarioReport {
        name: FAILED_SCENARIO.into(),
        file: "scenarios/zero-downtime-rolling.yaml".into(),
        description:
            "Rolling update: strategy, readiness, preStop and grace; no failed request under load"
                .into(),
        tags: vec!["zero-downtime".into(), "rolling".into()],
        needs: vec!["control-plane".into()],
        namespace: ns.into(),
        verdict: Verdict::Failed,
        started_at: ms(400),
        duration: ms(31_300),
        checks,
        events,
        loads: vec![load],
        time: TimeBreakdown::default(),
        diagnostics: Some(format!(
            "Events (namespace {ns}):\n\
             19.402 s  Normal   Killing            pod/frontend-7c9d5b6f4-x2l8q  Stopping container server\n\
             19.415 s  Warning  Unhealthy          pod/frontend-7c9d5b6f4-x2l8q  Readiness probe failed: connection refused\n\
             19.700 s  Normal   EndpointsUpdated   endpointslice/frontend-abcde  removed 10.244.1.7\n\
             \n\
             Pods:\n\
             frontend-6f8b9c7d5-4kq2m   1/1 Running   revision 2\n\
             frontend-6f8b9c7d5-9wz7t   1/1 Running   revision 2\n\
             frontend-6f8b9c7d5-tq5ns   1/1 Running   revision 2\n\
             \n\
             ReplicaSets:\n\
             frontend-7c9d5b6f4  revision 1  0/0\n\
             frontend-6f8b9c7d5  revision 2  3/3\n\
             \n\
             API errors: none\n"
        )),
    }
}

fn https_skipped() -> ScenarioReport {
    let ns = "cdc-https-3";
    let skipped = |name: &str, description: &str, step: usize| {
        let mut c = check(name, description, step, Verdict::Skipped, 3_900, 0);
        c.skip_reason = Some(SKIP_REASON.into());
        c.skip_kind = Some(SkipKind::NoDataPlane);
        c
    };
    let checks = vec![
        check(
            "tls-secret-type-and-namespace",
            "the gateway's Secret is kubernetes.io/tls in istio-system",
            1,
            Verdict::Passed,
            3_100,
            6,
        ),
        check(
            "credential-name-resolves",
            "every Gateway credentialName names an existing Secret",
            1,
            Verdict::Passed,
            3_110,
            4,
        ),
        check(
            "certificate-valid-for-hosts",
            "the certificate covers every host and does not expire within 30 days",
            1,
            Verdict::Passed,
            3_120,
            9,
        ),
        skipped(
            "served-certificate-by-sni",
            "the gateway serves that certificate for each host by SNI",
            2,
        ),
        skipped(
            "http-redirects-to-https",
            "plain HTTP answers with a redirect to HTTPS",
            2,
        ),
    ];
    ScenarioReport {
        name: SKIPPED_SCENARIO.into(),
        file: "scenarios/https.yaml".into(),
        description: "TLS Secret, credentialName and certificate; the served certificate by SNI"
            .into(),
        tags: vec!["tls".into()],
        needs: vec!["control-plane".into(), "data-plane".into()],
        namespace: ns.into(),
        verdict: Verdict::Skipped,
        started_at: ms(25_100),
        duration: ms(3_940),
        checks,
        events: vec![event(
            25_300,
            KubeEventKind::Apply,
            &format!("Gateway/{ns}/frontend-gateway"),
            "release 1",
        )],
        loads: Vec::new(),
        time: TimeBreakdown::default(),
        diagnostics: None,
    }
}

/// `requests` requests at `rate_per_s` from `start_ms`, with latencies of a
/// few ms plus `extra(t)`, and every request inside `outage` failed.
fn load(
    name: &str,
    target: &str,
    start_ms: u64,
    requests: u64,
    rate_per_s: f64,
    outage: Option<OutageWindow>,
    extra: impl Fn(f64) -> f64,
) -> LoadResult {
    let mut random = XorShift(0x9e37_79b9_7f4a_7c15 ^ start_ms);
    let interval = 1000.0 / rate_per_s;
    let mut timeline = Vec::with_capacity(requests as usize);
    for i in 0..requests {
        let at_ms = start_ms as f64 + i as f64 * interval;
        let in_outage = outage
            .as_ref()
            .is_some_and(|o| (o.from_ms..o.to_ms).contains(&at_ms));
        // Round to microseconds, as the traffic engine measures.
        let micros = |v: f64| (v * 1000.0).round() / 1000.0;
        let jitter = random.unit();
        let tail = if random.unit() > 0.995 { 25.0 } else { 0.0 };
        let point = if in_outage {
            let refused = i % 3 == 0;
            RequestPoint {
                at_ms: micros(at_ms),
                latency_ms: micros(if refused {
                    0.4 + jitter
                } else {
                    2.0 + jitter * 3.0
                }),
                ok: false,
                outcome: if refused {
                    "refused".into()
                } else {
                    "http 503".into()
                },
            }
        } else {
            RequestPoint {
                at_ms: micros(at_ms),
                latency_ms: micros(3.0 + jitter * 6.0 + tail + extra(at_ms) * random.unit()),
                ok: true,
                outcome: "http 200".into(),
            }
        };
        timeline.push(point);
    }
    let failed = timeline.iter().filter(|p| !p.ok).count() as u64;
    let mut latencies: Vec<f64> = timeline.iter().map(|p| p.latency_ms).collect();
    latencies.sort_by(f64::total_cmp);
    let quantile = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
    let outages = outage
        .map(|o| OutageWindow {
            requests: failed,
            ..o
        })
        .into_iter()
        .collect::<Vec<_>>();
    LoadResult {
        name: name.into(),
        target: target.into(),
        requests,
        failed,
        rate_per_s,
        p50_ms: quantile(0.5),
        p99_ms: quantile(0.99),
        max_ms: quantile(1.0),
        terminated_pods: vec![
            "frontend/frontend-7c9d8b6f54-2xkqp".into(),
            "frontend/frontend-7c9d8b6f54-9mzlw".into(),
        ],
        service_switches: Vec::new(),
        outages,
        timeline,
    }
}

struct XorShift(u64);

impl XorShift {
    fn unit(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}
