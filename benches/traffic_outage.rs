//! Outage-detection resolution: the shortest backend outage that the default zero-downtime
//! load (open loop, 200 req/s) detects in 10 runs of 10, directly and behind Envoy.
//!
//! Run with `cargo bench --bench traffic_outage`. Each run injects one outage of D ms (every
//! request arriving in it gets a 503) at a random phase of the load's schedule.

#[path = "../tests/support_envoy/mod.rs"]
mod support_envoy;

use std::time::Duration;

use cdcheck::traffic::load::{self, LoadSpec};
use cdcheck::traffic::target::{HttpTarget, Target};
use support_envoy::{Envoy, HttpBackend, bootstrap, cluster, envoy_binary, http_listener, route};

const RUNS: usize = 10;
const OUTAGES_MS: [u64; 7] = [1, 2, 3, 5, 8, 10, 20];

/// A jitter in 0..5000 µs from a random UUID, so the outage falls at any phase of the schedule.
fn phase() -> Duration {
    let bytes = uuid::Uuid::new_v4().into_bytes();
    Duration::from_micros(u64::from(u16::from_le_bytes([bytes[0], bytes[1]])) % 5000)
}

async fn detected(backend: &HttpBackend, target: &Target, outage: Duration) -> bool {
    let spec = LoadSpec::zero_downtime(Duration::from_millis(600));
    let run = tokio::spawn({
        let target = target.clone();
        async move { load::run(&target, &spec, None).await.unwrap() }
    });
    tokio::time::sleep(Duration::from_millis(300) + phase()).await;
    backend.fail_for(outage);
    let timeline = run.await.unwrap();
    timeline.records.iter().any(|r| !r.succeeded())
}

async fn measure(label: &str, backend: &HttpBackend, target: &Target) {
    println!("{label}: default zero-downtime load, {RUNS} runs per outage length");
    let mut hits_by_length = Vec::new();
    for ms in OUTAGES_MS {
        let mut hits = 0;
        for _ in 0..RUNS {
            if detected(backend, target, Duration::from_millis(ms)).await {
                hits += 1;
            }
        }
        println!("  outage {ms:>3} ms: detected {hits}/{RUNS}");
        hits_by_length.push((ms, hits));
    }
    // The shortest length from which every longer one was detected in every run too.
    let shortest = hits_by_length
        .iter()
        .rev()
        .take_while(|(_, hits)| *hits == RUNS)
        .last()
        .map(|(ms, _)| *ms);
    match shortest {
        Some(ms) => println!("  shortest outage detected {RUNS}/{RUNS}: {ms} ms"),
        None => println!("  no outage length was detected {RUNS}/{RUNS}"),
    }
}

#[tokio::main]
async fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("traffic_outage: run with `cargo bench --bench traffic_outage`");
        return;
    }
    let backend = HttpBackend::start("frontend-outage").await;
    let direct = Target::Http(HttpTarget::parse(&format!("http://{}/", backend.addr)).unwrap());
    measure("direct", &backend, &direct).await;

    let Some(binary) = envoy_binary() else {
        println!("behind envoy: not measured (envoy not found; set CDCHECK_ENVOY)");
        return;
    };
    let config = bootstrap(
        vec![http_listener("shop", vec![route("frontend", vec![])])],
        vec![cluster("frontend", &[backend.addr], false, None)],
    );
    let envoy = Envoy::start(&binary, &config).await;
    let proxied =
        Target::Http(HttpTarget::parse(&format!("http://{}/", envoy.listener("shop"))).unwrap());
    measure("behind envoy", &backend, &proxied).await;
}
