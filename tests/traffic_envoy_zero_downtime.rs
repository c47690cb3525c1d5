//! Zero downtime behind a real Envoy: a backend replaced gracefully (the new one healthy before
//! the old one drains) loses no request under load; one killed abruptly shows as failures and an
//! outage window that starts at the kill and ends when a healthy backend is back.

mod support_envoy;

use std::time::{Duration, Instant};

use cdcheck::traffic::attribution::AttributionRule;
use cdcheck::traffic::load::{self, LoadSpec};
use cdcheck::traffic::target::{HttpTarget, Target};
use cdcheck::traffic::verdict::{Tolerance, failures_within, outage_windows};
use support_envoy::{
    Envoy, HttpBackend, bootstrap, cluster, envoy_or_skip, free_port, http_listener, route,
};

const LOAD: Duration = Duration::from_secs(3);

struct Bench {
    envoy: Envoy,
    old: HttpBackend,
    /// Where the replacement will listen: a second endpoint of the cluster, down until then.
    next: std::net::SocketAddr,
}

async fn bench(envoy: &std::path::Path) -> Bench {
    let old = HttpBackend::start("frontend-v1-aaaaa").await;
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

fn start_load(bench: &Bench) -> tokio::task::JoinHandle<cdcheck::traffic::record::Timeline> {
    let target = Target::Http(
        HttpTarget::parse(&format!("http://{}/", bench.envoy.listener("shop"))).unwrap(),
    );
    let spec = LoadSpec::zero_downtime(LOAD).with_attribution(AttributionRule::frontend_pod());
    tokio::spawn(async move { load::run(&target, &spec, None).await.unwrap() })
}

#[tokio::test]
async fn graceful_replacement_behind_envoy_loses_no_request() {
    let Some(envoy) = envoy_or_skip("graceful_replacement_behind_envoy_loses_no_request") else {
        return;
    };
    let bench = bench(&envoy).await;
    let running = start_load(&bench);

    tokio::time::sleep(Duration::from_millis(800)).await;
    let new = HttpBackend::start_on("frontend-v2-bbbbb", bench.next).await;
    bench.envoy.wait_healthy_hosts("frontend", 2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Readiness fails first, Envoy takes the old endpoint out, then the process stops.
    bench.old.start_draining();
    bench.envoy.wait_healthy_hosts("frontend", 1).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    bench.old.stop_gracefully().await;

    let timeline = running.await.unwrap();
    let summary = timeline.summary();
    println!("{summary}");
    let verdict = failures_within(&timeline, Tolerance::ZERO);
    if !verdict.passed {
        bench.envoy.flush_logs().await;
        println!("{}", bench.envoy.log_text());
    }
    assert!(verdict.passed, "{summary}\n{:?}", verdict.outages);
    assert_eq!(summary.count, 600);
    // Both versions served: the load really crossed the replacement.
    assert!(summary.labels["frontend-v1-aaaaa"] > 50, "{summary}");
    assert!(summary.labels["frontend-v2-bbbbb"] > 50, "{summary}");
    drop(new);
}

#[tokio::test]
async fn abrupt_kill_behind_envoy_shows_an_outage_window_timed_at_the_kill() {
    let Some(envoy) =
        envoy_or_skip("abrupt_kill_behind_envoy_shows_an_outage_window_timed_at_the_kill")
    else {
        return;
    };
    let bench = bench(&envoy).await;
    let running = start_load(&bench);

    tokio::time::sleep(Duration::from_millis(1000)).await;
    let killed_at = Instant::now();
    bench.old.kill();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let restarted_at = Instant::now();
    let new = HttpBackend::start_on("frontend-v2-bbbbb", bench.next).await;

    let timeline = running.await.unwrap();
    let summary = timeline.summary();
    println!("{summary}");
    let verdict = failures_within(&timeline, Tolerance::ZERO);
    assert!(!verdict.passed);
    assert!(
        summary.failed >= 60,
        "a 400 ms outage at 200 req/s: {summary}"
    );

    let windows = outage_windows(&timeline.records);
    println!("{windows:#?}");
    assert_eq!(windows.len(), 1, "{windows:#?}");
    let window = &windows[0];
    let kill = timeline.offset_of(killed_at);
    let restart = timeline.offset_of(restarted_at);
    // The window opens at the kill (a request due just before it but sent after it, on a
    // starved CPU, fails too) and closes once Envoy health-checks the replacement.
    assert!(
        window.start + Duration::from_millis(100) >= kill
            && window.start <= kill + Duration::from_millis(50),
        "outage starts at {:?}, kill at {kill:?}",
        window.start
    );
    assert!(window.duration >= Duration::from_millis(350), "{window:?}");
    assert!(
        window.end >= restart && window.end <= restart + Duration::from_millis(500),
        "outage ends at {:?}, restart at {restart:?}",
        window.end
    );
    drop(new);
}
