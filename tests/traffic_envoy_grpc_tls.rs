//! gRPC over TLS through a real Envoy terminating TLS by SNI (the ingress shape): calls trust
//! the served chain through the CA on both callers and the CLI, and an untrusted certificate
//! is a TLS outcome, not an answer.

mod support_cli;
mod support_envoy;

use std::time::Duration;

use cdcheck::traffic::attribution::AttributionRule;
use cdcheck::traffic::caller::Caller;
use cdcheck::traffic::record::{ErrorClass, Outcome};
use cdcheck::traffic::target::Target;
use cdcheck::traffic::tls::TlsOptions;
use serde_json::Value;
use support_cli::{GET_ADS_CLOSED_LOOP, cdcheck};
use support_envoy::{
    SERVED_BY, TestPki, TlsBackend, TlsBench, assert_both_engines_answered_by, both_callers,
    get_ads_by_name,
};

const ADS: &str = "ads.example.test";

/// Envoy serving a certificate for [`ADS`] in front of one ad service.
async fn bench(envoy: &std::path::Path) -> TlsBench {
    TlsBench::start(
        envoy,
        "cdcheck grpc test CA",
        "grpcs",
        &[ADS],
        TlsBackend::Grpc("adservice-tls-1"),
    )
    .await
}

fn grpcs_target(bench: &TlsBench, tls: TlsOptions) -> Target {
    let mut target = get_ads_by_name("https", ADS, bench.envoy.listener("grpcs"));
    target.tls = tls;
    target.timeout = Duration::from_secs(2);
    Target::Grpc(target)
}

fn trusting(pem: &str) -> TlsOptions {
    TlsOptions {
        insecure: false,
        ca_pem: Some(pem.as_bytes().to_vec()),
    }
}

/// The CLI against the bench as a user runs it: the endpoint by name (`--resolve`), and
/// `--cacert` files of the bench's CA and of a stranger CA.
struct Cli {
    _bench: TlsBench,
    url: String,
    resolve: String,
    ca: String,
    stranger: String,
    _dir: tempfile::TempDir,
}

impl Cli {
    async fn start(envoy: &std::path::Path) -> Cli {
        let bench = bench(envoy).await;
        let port = bench.envoy.listener("grpcs").port();
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, pem: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, pem).unwrap();
            path.to_str().unwrap().to_string()
        };
        let ca = write("ca.pem", &bench.pki.ca_pem);
        let stranger = write("stranger.pem", &TestPki::new("some other CA").ca_pem);
        Cli {
            _bench: bench,
            url: format!("https://{ADS}:{port}"),
            resolve: format!("{ADS}:{port}:127.0.0.1"),
            ca,
            stranger,
            _dir: dir,
        }
    }

    /// `cdcheck <command> <url> <options> --resolve … --json --cacert <cacert>`: the exit
    /// code and the JSON document it printed.
    async fn run(&self, command: &[&str], options: &[&str], cacert: &str) -> (i32, Value) {
        let by_name = ["--resolve", &self.resolve, "--json", "--cacert", cacert];
        let args = [command, &[self.url.as_str()], options, &by_name].concat();
        let (code, stdout, stderr) = cdcheck(&args).await;
        let json = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stderr}"));
        (code, json)
    }
}

#[tokio::test]
async fn grpc_over_tls_trusts_the_served_chain_through_the_ca() {
    let envoy = require_envoy!("grpc_over_tls_trusts_the_served_chain_through_the_ca");
    let bench = bench(&envoy).await;
    let target = grpcs_target(&bench, trusting(&bench.pki.ca_pem));
    let rule = AttributionRule::header(SERVED_BY).unwrap();

    for (name, caller) in both_callers(&target) {
        let result = caller.call(uuid::Uuid::new_v4(), Some(&rule)).await;
        assert_eq!(result.outcome, Outcome::Grpc { code: 0 }, "{name}");
        assert_eq!(result.label.as_deref(), Some("adservice-tls-1"), "{name}");
    }
    assert_both_engines_answered_by(&target, rule, "adservice-tls-1").await;
}

#[tokio::test]
async fn grpc_over_tls_refuses_a_certificate_from_another_ca() {
    let envoy = require_envoy!("grpc_over_tls_refuses_a_certificate_from_another_ca");
    let bench = bench(&envoy).await;
    let stranger = TestPki::new("some other CA");
    let untrusting = grpcs_target(&bench, trusting(&stranger.ca_pem));
    for (name, caller) in both_callers(&untrusting) {
        let result = caller.call(uuid::Uuid::new_v4(), None).await;
        assert_eq!(
            result.outcome,
            Outcome::Transport {
                class: ErrorClass::Tls
            },
            "{name}"
        );
    }
    // Control: the same endpoint answers when verification is off, so the failure above
    // was the trust decision and nothing else.
    let insecure = grpcs_target(
        &bench,
        TlsOptions {
            insecure: true,
            ca_pem: None,
        },
    );
    let result = Caller::single_connection(&insecure)
        .unwrap()
        .call(uuid::Uuid::new_v4(), None)
        .await;
    assert_eq!(result.outcome, Outcome::Grpc { code: 0 });
}

#[tokio::test]
async fn the_cli_loads_grpc_over_tls_with_cacert_and_resolve() {
    let envoy = require_envoy!("the_cli_loads_grpc_over_tls_with_cacert_and_resolve");
    let cli = Cli::start(&envoy).await;
    let options = [&GET_ADS_CLOSED_LOOP[..], &["--attribute-header", SERVED_BY]].concat();

    let (code, out) = cli.run(&["load"], &options, &cli.ca).await;
    let summary = &out["summary"];
    assert_eq!(code, 0, "{summary}");
    assert_eq!(summary["failed"], 0, "{summary}");
    assert_eq!(summary["labels"]["adservice-tls-1"], summary["count"]);

    let (code, out) = cli.run(&["load"], &options, &cli.stranger).await;
    let summary = &out["summary"];
    assert_eq!(code, 1, "{summary}");
    assert_eq!(summary["errors"]["tls"], summary["count"], "{summary}");
}

#[tokio::test]
async fn the_cli_probes_grpc_health_over_tls() {
    let envoy = require_envoy!("the_cli_probes_grpc_health_over_tls");
    let cli = Cli::start(&envoy).await;
    let probe = ["probe", "grpc"];
    let options = ["--service", "hipstershop.AdService"];

    let (code, report) = cli.run(&probe, &options, &cli.ca).await;
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["healthy"], true, "{report}");
    assert_eq!(report["serving_status"], "SERVING", "{report}");

    let (code, report) = cli.run(&probe, &options, &cli.stranger).await;
    assert_eq!(code, 1, "{report}");
    assert_eq!(report["healthy"], false, "{report}");
    assert!(report["outcome"].to_string().contains("tls"), "{report}");
}
