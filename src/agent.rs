//! The in-mesh agent (`cdcheck agent`): a pod with a sidecar in the environment's
//! namespace that sends the gRPC requests the frontend never sends (`userid` metadata to
//! adservice) and the per-backend gRPC health checks, and streams one JSON record per
//! line on stdout, read back through the pod log API.
//!
//! Each batch of requests (one `userid`, or none) is attributed by the client sidecar's
//! counters ([`stats`]), read before and after the batch: the upstream clusters whose
//! `envoy_cluster_upstream_rq_total` moved say which Services the batch went to, and the
//! upstream hosts whose `rq_total` moved say which pods answered it (the runner names
//! them by their addresses), so a mainline Service that also selects feature pods is
//! caught. This works for any workload without changing it; it needs batches not to
//! overlap (they run one after another) and no other client in the agent's pod.

pub mod pod;
pub mod remote;
pub mod stats;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::traffic::TrafficError;
use crate::traffic::caller::Caller;
use crate::traffic::probe;
use crate::traffic::record::Outcome;
use crate::traffic::target::{GrpcMethod, GrpcTarget, Target};
use stats::IstioCluster;

/// The sidecar's Prometheus endpoint as seen from the agent's container.
pub const DEFAULT_STATS_URL: &str = "http://127.0.0.1:15090/stats/prometheus";

/// The pod annotation that makes Istio record the outbound clusters' stats (by default a
/// sidecar records only `cluster_manager`, `listener_manager`, `server`, `cluster.xds-grpc`).
pub const STATS_ANNOTATION: (&str, &str) = ("proxy.istio.io/config", pod::PROXY_CONFIG);

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("parse --batch {value:?}: expected USERID=N or -=N (no userid), N >= 1")]
    Batch { value: String },
    #[error(
        "parse --health {value:?}: expected SERVICE=URL, e.g. hipstershop.CartService=http://cartservice:7070"
    )]
    Health { value: String },
    #[error(transparent)]
    Traffic(#[from] TrafficError),
}

/// Requests sent with one `userid` (or none), attributed together.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    pub userid: Option<String>,
    pub requests: u32,
}

impl Batch {
    /// `USERID=N`, or `-=N` for requests without `userid`.
    pub fn parse(value: &str) -> Result<Batch, AgentError> {
        let error = || AgentError::Batch {
            value: value.to_string(),
        };
        let (userid, count) = value.rsplit_once('=').ok_or_else(error)?;
        let requests: u32 = count.parse().map_err(|_| error())?;
        if requests == 0 || userid.is_empty() {
            return Err(error());
        }
        Ok(Batch {
            userid: (userid != "-").then(|| userid.to_string()),
            requests,
        })
    }
}

/// `SERVICE=URL`: the gRPC health service name and the backend's endpoint.
pub fn parse_health(value: &str) -> Result<(String, String), AgentError> {
    let (service, url) = value.split_once('=').ok_or_else(|| AgentError::Health {
        value: value.to_string(),
    })?;
    if url.is_empty() {
        return Err(AgentError::Health {
            value: value.to_string(),
        });
    }
    Ok((service.to_string(), url.to_string()))
}

#[derive(Clone, Debug)]
pub struct AgentOptions {
    /// adservice's endpoint (`http://adservice:9555`): the sidecar routes it.
    pub ads: Option<String>,
    pub batches: Vec<Batch>,
    pub health: Vec<(String, String)>,
    pub stats_url: String,
    /// The sidecar's admin `/clusters?format=json`: the upstream hosts' counters.
    pub hosts_url: String,
    pub timeout: Duration,
    /// Connect to this address instead of resolving the targets' hosts.
    pub via: Option<std::net::IpAddr>,
    /// How long a health check is retried until SERVING, and a warm-up call before the
    /// first batch until it succeeds: a new sidecar's routes and endpoints arrive a
    /// moment after it is ready. Zero: one try.
    pub settle: Duration,
}

/// `target` connected to `via` (keeping its port) when set.
fn routed(mut target: GrpcTarget, via: Option<std::net::IpAddr>) -> GrpcTarget {
    if let Some(ip) = via
        && let Ok(url) = url::Url::parse(&target.endpoint)
        && let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default())
    {
        target.resolve = vec![(host.to_string(), std::net::SocketAddr::new(ip, port))];
    }
    target
}

/// One line of the agent's output.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "record", rename_all = "kebab-case")]
pub enum Record {
    Request {
        batch: usize,
        userid: Option<String>,
        seq: u32,
        outcome: Outcome,
        latency_us: u64,
    },
    /// A batch's attribution: the clusters whose request counters moved, by how much.
    Batch {
        batch: usize,
        userid: Option<String>,
        requests: u32,
        succeeded: u32,
        clusters: BTreeMap<String, u64>,
        /// `clusters` by Service (the outbound cluster's host's first label).
        services: BTreeMap<String, u64>,
        /// The upstream hosts (`ip:port`) whose request counters moved, by how much: the
        /// pods that answered.
        endpoints: BTreeMap<String, u64>,
    },
    Health {
        service: String,
        endpoint: String,
        outcome: Outcome,
        status: Option<String>,
        healthy: bool,
        latency_us: u64,
    },
    /// Something the agent could not do (the stats could not be read, a bad target).
    Error {
        message: String,
    },
    Done {
        failed: bool,
    },
}

use crate::error_chain as chain;

/// Runs the batches, then the health checks; emits every record, ends with `Done`.
/// Returns whether anything failed.
pub async fn run(options: &AgentOptions, mut emit: impl FnMut(&Record)) -> bool {
    let mut failed = false;
    let http = reqwest::Client::builder()
        .timeout(options.timeout)
        .build()
        .expect("a plain HTTP client");
    if let Some(ads) = &options.ads {
        if let Err(message) = warm_up(options, ads).await {
            emit(&Record::Error { message });
        }
        for (index, batch) in options.batches.iter().enumerate() {
            match run_batch(options, ads, index, batch, &http, &mut emit).await {
                Ok(ok) => failed |= !ok,
                Err(message) => {
                    failed = true;
                    emit(&Record::Error { message });
                }
            }
        }
    }
    for (service, endpoint) in &options.health {
        let result = GrpcTarget::new(
            endpoint,
            GrpcMethod::HealthCheck {
                service: service.clone(),
            },
        )
        .map(|t| GrpcTarget {
            timeout: options.timeout,
            ..routed(t, options.via)
        });
        let report = match result {
            Ok(target) => {
                let deadline = Instant::now() + options.settle;
                loop {
                    let report = probe::grpc_health(&target).await;
                    let healthy = report.as_ref().is_ok_and(|r| r.healthy);
                    if healthy || Instant::now() >= deadline {
                        break report;
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
            Err(e) => Err(e),
        };
        match report {
            Ok(report) => {
                failed |= !report.healthy;
                emit(&Record::Health {
                    service: service.clone(),
                    endpoint: endpoint.clone(),
                    outcome: report.outcome,
                    status: report.serving_status,
                    healthy: report.healthy,
                    latency_us: report.latency_us,
                });
            }
            Err(e) => {
                failed = true;
                emit(&Record::Error {
                    message: format!("check the health of {service} at {endpoint}: {}", chain(&e)),
                });
            }
        }
    }
    emit(&Record::Done { failed });
    failed
}

/// GetAds at `ads`, routed and bounded as the options say.
fn get_ads(options: &AgentOptions, ads: &str) -> Result<GrpcTarget, String> {
    let target = GrpcTarget::new(
        ads,
        GrpcMethod::GetAds {
            context_keys: vec!["clothing".to_string()],
        },
    )
    .map_err(|e| chain(&e))?;
    Ok(GrpcTarget {
        timeout: options.timeout,
        ..routed(target, options.via)
    })
}

/// Calls GetAds without `userid` until one succeeds or `settle` passes (not counted:
/// every batch reads the counters before it starts). `Err` when none succeeded.
async fn warm_up(options: &AgentOptions, ads: &str) -> Result<(), String> {
    if options.settle.is_zero() {
        return Ok(());
    }
    let target = get_ads(options, ads)?;
    let caller = Caller::new(&Target::Grpc(target)).map_err(|e| chain(&e))?;
    let deadline = Instant::now() + options.settle;
    loop {
        let result = caller.call(uuid::Uuid::new_v4(), None).await;
        if result.outcome.is_success() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "warm up: no GetAds call to {ads} succeeded within {:?} (last: {})",
                options.settle, result.outcome
            ));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn run_batch(
    options: &AgentOptions,
    ads: &str,
    index: usize,
    batch: &Batch,
    http: &reqwest::Client,
    emit: &mut impl FnMut(&Record),
) -> Result<bool, String> {
    let mut target = get_ads(options, ads)?;
    if let Some(userid) = &batch.userid {
        target = target
            .with_metadata("userid", userid)
            .map_err(|e| chain(&e))?;
    }
    let caller = Caller::new(&Target::Grpc(target)).map_err(|e| chain(&e))?;
    let before = stats::scrape(http, &options.stats_url)
        .await
        .map_err(|e| chain(&e))?;
    let hosts_before = stats::scrape_hosts(http, &options.hosts_url)
        .await
        .map_err(|e| chain(&e))?;
    let mut succeeded = 0;
    for seq in 0..batch.requests {
        let started = Instant::now();
        let result = caller.call(uuid::Uuid::new_v4(), None).await;
        if result.outcome.is_success() {
            succeeded += 1;
        }
        emit(&Record::Request {
            batch: index,
            userid: batch.userid.clone(),
            seq,
            outcome: result.outcome,
            latency_us: started.elapsed().as_micros() as u64,
        });
    }
    let after = stats::scrape(http, &options.stats_url)
        .await
        .map_err(|e| chain(&e))?;
    let hosts_after = stats::scrape_hosts(http, &options.hosts_url)
        .await
        .map_err(|e| chain(&e))?;
    let clusters = stats::delta(&before, &after);
    let endpoints = stats::delta(&hosts_before, &hosts_after);
    let mut services = BTreeMap::new();
    for (cluster, count) in &clusters {
        let service = IstioCluster::parse(cluster)
            .map(|c| c.service().to_string())
            .unwrap_or_else(|| cluster.clone());
        *services.entry(service).or_insert(0) += count;
    }
    emit(&Record::Batch {
        batch: index,
        userid: batch.userid.clone(),
        requests: batch.requests,
        succeeded,
        clusters,
        services,
        endpoints,
    });
    Ok(succeeded == batch.requests)
}

/// Judges a batch record: every request it sent went to `expected` (a Service name)
/// and to nothing else. `Err` names where the others went.
pub fn judge_batch(record: &Record, expected: &str) -> Result<(), String> {
    let Record::Batch {
        requests,
        services,
        userid,
        ..
    } = record
    else {
        return Err("not a batch record".into());
    };
    let to_expected = services.get(expected).copied().unwrap_or(0);
    let elsewhere: Vec<String> = services
        .iter()
        .filter(|(s, _)| s.as_str() != expected)
        .map(|(s, n)| format!("{n} to {s}"))
        .collect();
    let who = userid
        .as_deref()
        .map(|u| format!("userid {u}"))
        .unwrap_or("no userid".into());
    if !elsewhere.is_empty() {
        return Err(format!(
            "{who}: {} of {requests} requests went elsewhere than {expected} ({})",
            services.values().sum::<u64>() - to_expected,
            elsewhere.join(", ")
        ));
    }
    if to_expected < u64::from(*requests) {
        return Err(format!(
            "{who}: only {to_expected} of {requests} requests are counted by {expected}'s cluster"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_and_health_targets_parse_or_name_the_bad_value() {
        assert_eq!(
            Batch::parse("s1=20").unwrap(),
            Batch {
                userid: Some("s1".into()),
                requests: 20
            }
        );
        assert_eq!(
            Batch::parse("-=5").unwrap(),
            Batch {
                userid: None,
                requests: 5
            }
        );
        for bad in ["s1", "s1=0", "=3", "s1=x"] {
            assert!(
                Batch::parse(bad)
                    .unwrap_err()
                    .to_string()
                    .contains(&format!("{bad:?}"))
            );
        }
        assert_eq!(
            parse_health("hipstershop.CartService=http://cartservice:7070").unwrap(),
            (
                "hipstershop.CartService".into(),
                "http://cartservice:7070".into()
            )
        );
        assert!(parse_health("cartservice").is_err());
    }

    fn batch(services: &[(&str, u64)], requests: u32) -> Record {
        Record::Batch {
            batch: 0,
            userid: Some("s1".into()),
            requests,
            succeeded: requests,
            clusters: BTreeMap::new(),
            services: services.iter().map(|(s, n)| (s.to_string(), *n)).collect(),
            endpoints: BTreeMap::new(),
        }
    }

    #[test]
    fn a_batch_passes_only_when_every_request_is_counted_at_the_expected_service() {
        assert_eq!(
            judge_batch(
                &batch(&[("adservice-myfeature", 10)], 10),
                "adservice-myfeature"
            ),
            Ok(())
        );
        let leak = judge_batch(
            &batch(&[("adservice-myfeature", 9), ("adservice", 1)], 10),
            "adservice-myfeature",
        );
        assert_eq!(leak, Err("userid s1: 1 of 10 requests went elsewhere than adservice-myfeature (1 to adservice)".into()));
        let lost = judge_batch(
            &batch(&[("adservice-myfeature", 4)], 10),
            "adservice-myfeature",
        );
        assert!(lost.unwrap_err().contains("only 4 of 10"));
    }
}
