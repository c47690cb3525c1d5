//! gRPC over TLS through a real Envoy terminating TLS by SNI (the ingress shape): calls trust
//! the served chain through the CA on both callers and the CLI, and an untrusted certificate
//! is a TLS outcome, not an answer.

mod support_envoy;

use std::time::Duration;

use cdcheck::traffic::attribution::AttributionRule;
use cdcheck::traffic::caller::Caller;
use cdcheck::traffic::load::{self, LoadSpec};
use cdcheck::traffic::record::{ErrorClass, Outcome};
use cdcheck::traffic::target::{GrpcMethod, GrpcTarget, Target};
use cdcheck::traffic::tls::TlsOptions;
use support_envoy::{
    Envoy, GrpcBackend, SERVED_BY, TestPki, bootstrap, cluster, envoy_or_skip, https_listener,
    route,
};

const ADS: &str = "ads.example.test";

struct Bench {
    envoy: Envoy,
    pki: TestPki,
    _backend: GrpcBackend,
}

async fn bench(envoy: &std::path::Path) -> Bench {
    cdcheck::install_crypto_provider();
    let pki = TestPki::new("cdcheck grpc test CA");
    let leaf = pki.leaf(&[ADS]);
    let backend = GrpcBackend::start("adservice-tls-1").await;
    let config = bootstrap(
        vec![https_listener(
            "grpcs",
            vec![route("adservice", vec![])],
            &[(ADS, &leaf.cert_pem, &leaf.key_pem)],
        )],
        vec![cluster("adservice", &[backend.addr], true, None)],
    );
    Bench {
        envoy: Envoy::start(envoy, &config).await,
        pki,
        _backend: backend,
    }
}

fn grpcs_target(bench: &Bench, tls: TlsOptions) -> Target {
    let addr = bench.envoy.listener("grpcs");
    let mut target = GrpcTarget::new(
        &format!("https://{ADS}:{}", addr.port()),
        GrpcMethod::GetAds {
            context_keys: vec!["clothing".into()],
        },
    )
    .unwrap();
    target.resolve.push((ADS.to_string(), addr));
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

#[tokio::test]
async fn grpc_over_tls_trusts_the_served_chain_through_the_ca() {
    let Some(envoy) = envoy_or_skip("grpc_over_tls_trusts_the_served_chain_through_the_ca") else {
        return;
    };
    let bench = bench(&envoy).await;
    let target = grpcs_target(&bench, trusting(&bench.pki.ca_pem));
    let rule = AttributionRule::header(SERVED_BY).unwrap();

    for (name, caller) in [
        ("pooled channel", Caller::new(&target).unwrap()),
        (
            "single connection",
            Caller::single_connection(&target).unwrap(),
        ),
    ] {
        let result = caller.call(uuid::Uuid::new_v4(), Some(&rule)).await;
        assert_eq!(result.outcome, Outcome::Grpc { code: 0 }, "{name}");
        assert_eq!(result.label.as_deref(), Some("adservice-tls-1"), "{name}");
    }
    // Both engines under load: closed loop (direct connections), open loop (pooled channel).
    for spec in [
        LoadSpec::closed(2, Duration::from_millis(300)),
        LoadSpec::open(100.0, Duration::from_millis(300)),
    ] {
        let spec = spec.with_attribution(rule.clone());
        let timeline = load::run(&target, &spec, None).await.unwrap();
        let summary = timeline.summary();
        assert!(summary.count > 0);
        assert_eq!(summary.failed, 0, "{:?}: {summary}", spec.schedule);
        assert_eq!(summary.labels.get("adservice-tls-1"), Some(&summary.count));
    }
}

#[tokio::test]
async fn grpc_over_tls_refuses_a_certificate_from_another_ca() {
    let Some(envoy) = envoy_or_skip("grpc_over_tls_refuses_a_certificate_from_another_ca") else {
        return;
    };
    let bench = bench(&envoy).await;
    let stranger = TestPki::new("some other CA");
    let untrusting = grpcs_target(&bench, trusting(&stranger.ca_pem));
    for (name, caller) in [
        ("pooled channel", Caller::new(&untrusting).unwrap()),
        (
            "single connection",
            Caller::single_connection(&untrusting).unwrap(),
        ),
    ] {
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
    let Some(envoy) = envoy_or_skip("the_cli_loads_grpc_over_tls_with_cacert_and_resolve") else {
        return;
    };
    let bench = bench(&envoy).await;
    let addr = bench.envoy.listener("grpcs");
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &bench.pki.ca_pem).unwrap();
    let stranger = dir.path().join("stranger.pem");
    std::fs::write(&stranger, TestPki::new("some other CA").ca_pem).unwrap();

    let run = |cacert: std::path::PathBuf| {
        let url = format!("https://{ADS}:{}", addr.port());
        let resolve = format!("{ADS}:{}:127.0.0.1", addr.port());
        async move {
            let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_cdcheck"))
                .args(["load", &url, "--grpc", "hipstershop.AdService/GetAds"])
                .args(["--connections", "2", "--duration", "300ms", "--json"])
                .args(["--attribute-header", SERVED_BY, "--resolve", &resolve])
                .arg("--cacert")
                .arg(&cacert)
                .output()
                .await
                .unwrap();
            let summary: serde_json::Value = serde_json::from_slice(&output.stdout)
                .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&output.stderr)));
            (output.status.code(), summary["summary"].clone())
        }
    };

    let (code, summary) = run(ca).await;
    assert_eq!(code, Some(0), "{summary}");
    assert_eq!(summary["failed"], 0, "{summary}");
    assert_eq!(summary["labels"]["adservice-tls-1"], summary["count"]);

    let (code, summary) = run(stranger).await;
    assert_eq!(code, Some(1), "{summary}");
    assert_eq!(summary["errors"]["tls"], summary["count"], "{summary}");
}

#[tokio::test]
async fn the_cli_probes_grpc_health_over_tls() {
    let Some(envoy) = envoy_or_skip("the_cli_probes_grpc_health_over_tls") else {
        return;
    };
    let bench = bench(&envoy).await;
    let addr = bench.envoy.listener("grpcs");
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &bench.pki.ca_pem).unwrap();
    let stranger = dir.path().join("stranger.pem");
    std::fs::write(&stranger, TestPki::new("some other CA").ca_pem).unwrap();

    let probe = |cacert: std::path::PathBuf| {
        let url = format!("https://{ADS}:{}", addr.port());
        let resolve = format!("{ADS}:{}:127.0.0.1", addr.port());
        async move {
            let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_cdcheck"))
                .args(["probe", "grpc", &url, "--service", "hipstershop.AdService"])
                .args(["--resolve", &resolve, "--json", "--cacert"])
                .arg(&cacert)
                .output()
                .await
                .unwrap();
            let report: serde_json::Value = serde_json::from_slice(&output.stdout)
                .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&output.stderr)));
            (output.status.code(), report)
        }
    };
    let (code, report) = probe(ca).await;
    assert_eq!(code, Some(0), "{report}");
    assert_eq!(report["healthy"], true, "{report}");
    assert_eq!(report["serving_status"], "SERVING", "{report}");

    let (code, report) = probe(stranger).await;
    assert_eq!(code, Some(1), "{report}");
    assert_eq!(report["healthy"], false, "{report}");
    assert!(report["outcome"].to_string().contains("tls"), "{report}");
}
