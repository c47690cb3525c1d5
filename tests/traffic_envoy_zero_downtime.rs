//! Zero downtime behind a real Envoy: a backend replaced gracefully (the new one healthy before
//! the old one drains) loses no request under load; one killed abruptly shows as failures and
//! one outage window that opens at the kill and closes once a healthy backend is back.
//!
//! Each phase waits on what the test controls (requests answered, Envoy's health checks), not
//! on wall-clock sleeps, and the assertions are about order and counts: on a starved 2-core
//! machine a phase takes longer, and the verdicts stay the same.

mod support_envoy;

use std::sync::Arc;
use std::time::{Duration, Instant};

use cdcheck::traffic::attribution::AttributionRule;
use cdcheck::traffic::load::{self, LoadSpec, Progress};
use cdcheck::traffic::record::{Summary, Timeline};
use cdcheck::traffic::target::{HttpTarget, Target};
use cdcheck::traffic::verdict::{FailureVerdict, Tolerance, failures_within, outage_windows};
use support_envoy::{Envoy, HttpBackend, bootstrap, cluster, free_port, http_listener, route};

/// The load's upper bound; the test stops it once its phases are done.
const LOAD_BOUND: Duration = Duration::from_secs(120);
/// How long a phase may take before the test gives up on it.
const PHASE_BOUND: Duration = Duration::from_secs(60);
/// Answers a phase waits for: at 200 requests/s, about half a second on an idle machine.
const PHASE_ANSWERS: u64 = 100;

const OLD: &str = "frontend-v1-aaaaa";
const NEW: &str = "frontend-v2-bbbbb";

struct Bench {
    envoy: Envoy,
    old: HttpBackend,
    /// Where the replacement will listen: a second endpoint of the cluster, down until then.
    next: std::net::SocketAddr,
}

async fn bench(envoy: &std::path::Path) -> Bench {
    let old = HttpBackend::start(OLD).await;
    let next = free_port();
    let config = bootstrap(
        vec![http_listener("shop", vec![route("frontend", vec![])])],
        vec![cluster(
            "frontend",
            &[old.addr, next],
            false,
            Some("/_healthz"),
        )],
    );
    let envoy = Envoy::start(envoy, &config).await;
    envoy.wait_healthy_hosts("frontend", 1).await;
    Bench { envoy, old, next }
}

/// A zero-downtime load running until [`Load::finish`].
struct Load {
    task: tokio::task::JoinHandle<Timeline>,
    progress: Arc<Progress>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl Load {
    fn start(bench: &Bench) -> Load {
        let target = Target::Http(
            HttpTarget::parse(&format!("http://{}/", bench.envoy.listener("shop"))).unwrap(),
        );
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let mut spec =
            LoadSpec::zero_downtime(LOAD_BOUND).with_attribution(AttributionRule::frontend_pod());
        spec.stop = Some(stopped);
        let progress = Arc::new(Progress::default());
        let running = progress.clone();
        let task =
            tokio::spawn(async move { load::run(&target, &spec, Some(running)).await.unwrap() });
        Load {
            task,
            progress,
            stop,
        }
    }

    /// (answered, failed) so far.
    fn counts(&self) -> (u64, u64) {
        let (_, completed, failed) = self.progress.snapshot();
        (completed - failed, failed)
    }

    /// Waits until `done(answered, failed)` holds, at most [`PHASE_BOUND`].
    async fn until(&self, what: &str, done: impl Fn(u64, u64) -> bool) {
        let started = Instant::now();
        loop {
            let (answered, failed) = self.counts();
            if done(answered, failed) {
                return;
            }
            assert!(
                started.elapsed() < PHASE_BOUND,
                "{what} did not happen within {PHASE_BOUND:?}: {answered} answered, {failed} failed"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits for `n` more answers than now.
    async fn answers(&self, what: &str, n: u64) {
        let (from, _) = self.counts();
        self.until(what, |answered, _| answered >= from + n).await;
    }

    /// Stops the load: its timeline, its summary (printed) and the zero-downtime verdict.
    async fn finish(self) -> (Timeline, Summary, FailureVerdict) {
        let _ = self.stop.send(true);
        let timeline = self.task.await.unwrap();
        let summary = timeline.summary();
        println!("{summary}");
        let verdict = failures_within(&timeline, Tolerance::ZERO);
        (timeline, summary, verdict)
    }
}

/// The bench with the load running, once the old backend has answered a phase alone.
async fn old_backend_under_load(envoy: &std::path::Path) -> (Bench, Load) {
    let bench = bench(envoy).await;
    let load = Load::start(&bench);
    load.answers("the old backend answering", PHASE_ANSWERS)
        .await;
    (bench, load)
}

#[tokio::test]
async fn graceful_replacement_behind_envoy_loses_no_request() {
    let envoy = require_envoy!("graceful_replacement_behind_envoy_loses_no_request");
    let (bench, load) = old_backend_under_load(&envoy).await;
    let new = HttpBackend::start_on(NEW, bench.next).await;
    bench.envoy.wait_healthy_hosts("frontend", 2).await;
    load.answers("both backends answering", PHASE_ANSWERS).await;
    // Readiness fails first, Envoy takes the old endpoint out, then the process stops.
    bench.old.start_draining();
    bench.envoy.wait_healthy_hosts("frontend", 1).await;
    let stopped_at = Instant::now();
    bench.old.stop_gracefully().await;
    load.answers("the new backend answering alone", PHASE_ANSWERS)
        .await;

    let (timeline, summary, verdict) = load.finish().await;
    if !verdict.passed {
        bench.envoy.flush_logs().await;
        println!("{}", bench.envoy.log_text());
    }
    assert!(verdict.passed, "{summary}\n{:?}", verdict.outages);
    assert!(
        summary.count >= 3 * PHASE_ANSWERS,
        "the load crossed three phases: {summary}"
    );
    // Every answer came from one of the two, and the load really crossed the
    // replacement: the old one answered the first phase (it was alone), the new one
    // the last (the old one was gone).
    assert_eq!(
        summary.labels.values().sum::<u64>(),
        summary.count,
        "{summary}"
    );
    assert!(summary.labels[OLD] >= PHASE_ANSWERS, "{summary}");
    assert!(summary.labels[NEW] >= PHASE_ANSWERS, "{summary}");
    let label =
        |r: &cdcheck::traffic::record::RequestRecord| r.label.as_deref().map(str::to_string);
    assert_eq!(label(&timeline.records[0]).as_deref(), Some(OLD));
    assert_eq!(
        label(timeline.records.last().unwrap()).as_deref(),
        Some(NEW)
    );
    // Nothing reached the old backend once it had stopped.
    let stopped = timeline.offset_of(stopped_at);
    let late: Vec<_> = timeline
        .records
        .iter()
        .filter(|r| r.started >= stopped && label(r).as_deref() == Some(OLD))
        .map(|r| r.seq)
        .collect();
    assert!(
        late.is_empty(),
        "answered by {OLD} after it stopped: {late:?}"
    );
    drop(new);
}

#[tokio::test]
async fn abrupt_kill_behind_envoy_shows_an_outage_window_timed_at_the_kill() {
    let envoy = require_envoy!("abrupt_kill_behind_envoy_shows_an_outage_window_timed_at_the_kill");
    let (bench, load) = old_backend_under_load(&envoy).await;
    let killed_at = Instant::now();
    bench.old.kill();
    // The outage, by count: at least this many requests fail before a backend is back.
    const OUTAGE_FAILURES: u64 = 40;
    load.until("the outage", |_, failed| failed >= OUTAGE_FAILURES)
        .await;
    // Envoy's health check has taken the killed endpoint out (panic routing is off:
    // from here on every request fails until the replacement is healthy).
    bench.envoy.wait_healthy_hosts("frontend", 0).await;
    let restarted_at = Instant::now();
    let new = HttpBackend::start_on(NEW, bench.next).await;
    bench.envoy.wait_healthy_hosts("frontend", 1).await;
    load.answers("the replacement answering", PHASE_ANSWERS)
        .await;

    let (timeline, summary, verdict) = load.finish().await;
    assert!(!verdict.passed);
    assert!(summary.failed >= OUTAGE_FAILURES, "{summary}");

    let windows = outage_windows(&timeline.records);
    println!("{windows:#?}");
    assert_eq!(windows.len(), 1, "one outage, not several: {windows:#?}");
    let window = &windows[0];
    assert_eq!(window.failed_requests, summary.failed, "{window:?}");
    let kill = timeline.offset_of(killed_at);
    let restart = timeline.offset_of(restarted_at);
    // Opened by the kill: every failed request ended after it, and every request that
    // ended before it succeeded (a request due just before the kill but sent after it
    // fails too, so the window may start at a scheduled time a little before the kill).
    let failed_before_kill: Vec<u64> = timeline
        .records
        .iter()
        .filter(|r| !r.succeeded() && r.finished() < kill)
        .map(|r| r.seq)
        .collect();
    assert!(
        failed_before_kill.is_empty(),
        "failed before the kill at {kill:?}: {failed_before_kill:?}"
    );
    let first_failed = timeline
        .records
        .iter()
        .find(|r| !r.succeeded())
        .expect("a failed request");
    assert_eq!(window.start, first_failed.scheduled);
    assert!(
        first_failed.started >= kill,
        "the first failure was sent at {:?}, before the kill at {kill:?}",
        first_failed.started
    );
    // Closed only by the replacement: the window ends after the restart, and every
    // request after it succeeded.
    assert!(
        window.end >= restart,
        "outage ends at {:?}, before the restart at {restart:?}",
        window.end
    );
    let after: Vec<u64> = timeline
        .records
        .iter()
        .filter(|r| r.scheduled >= window.end && !r.succeeded())
        .map(|r| r.seq)
        .collect();
    assert!(after.is_empty(), "failed after the outage: {after:?}");
    drop(new);
}
