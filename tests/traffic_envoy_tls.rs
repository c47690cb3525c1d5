//! TLS through a real Envoy: the expected certificate is served for the SNI name (and HTTPS load
//! trusts it through the CA), and a different certificate is detected.

mod support_cli;
mod support_envoy;

use std::time::Duration;

use cdcheck::traffic::attribution::AttributionRule;
use cdcheck::traffic::caller::Caller;
use cdcheck::traffic::probe;
use cdcheck::traffic::record::{ErrorClass, Outcome};
use cdcheck::traffic::target::{HttpTarget, HttpVersion, Target};
use cdcheck::traffic::tls::TlsOptions;
use support_cli::cdcheck;
use support_envoy::{
    TestPki, TlsBackend, TlsBench, assert_both_engines_answered_by, http_target_by_name,
};

const SHOP: &str = "shop.example.test";
const OTHER: &str = "other.example.test";

/// Envoy serving a certificate of its own for each of [`SHOP`] and [`OTHER`].
async fn bench(envoy: &std::path::Path) -> TlsBench {
    TlsBench::start(
        envoy,
        "cdcheck test CA",
        "https",
        &[SHOP, OTHER],
        TlsBackend::Http("frontend-tls-1"),
    )
    .await
}

fn https_target(bench: &TlsBench, ca_pem: Option<&str>) -> HttpTarget {
    let mut target = http_target_by_name("https", SHOP, bench.envoy.listener("https"));
    target.tls = TlsOptions {
        insecure: false,
        ca_pem: ca_pem.map(|pem| pem.as_bytes().to_vec()),
    };
    target
}

#[tokio::test]
async fn envoy_serves_the_expected_certificate_for_the_sni_name() {
    let envoy = require_envoy!("envoy_serves_the_expected_certificate_for_the_sni_name");
    let bench = bench(&envoy).await;
    let addr = bench.envoy.listener("https").to_string();

    let report = probe::tls(
        &addr,
        SHOP,
        &["h2", "http/1.1"],
        Some(bench.leaf(SHOP).cert_pem.as_bytes()),
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    println!("{}", serde_json::to_string_pretty(&report).unwrap());

    assert!(report.passed(), "{report:#?}");
    assert_eq!(report.matches_expected, Some(true));
    assert_eq!(report.protocol_version.as_deref(), Some("TLSv1_3"));
    assert_eq!(report.alpn.as_deref(), Some("h2"));
    let leaf = &report.chain[0];
    assert_eq!(leaf.sans, vec![SHOP.to_string()]);
    assert!(leaf.subject.contains(SHOP), "{}", leaf.subject);
    assert!(leaf.issuer.contains("cdcheck test CA"), "{}", leaf.issuer);
    assert_eq!(Some(&leaf.sha256), report.expected_sha256.as_ref());
    assert!(!leaf.not_after.is_empty());

    // HTTPS load over HTTP/2 (ALPN) trusts the served chain through the CA alone.
    let mut target = https_target(&bench, Some(&bench.pki.ca_pem));
    target.version = HttpVersion::Http2;
    assert_both_engines_answered_by(
        &Target::Http(target),
        AttributionRule::frontend_pod(),
        "frontend-tls-1",
    )
    .await;
}

#[tokio::test]
async fn a_different_certificate_is_detected_by_the_tls_probe_and_refused_by_https_load() {
    let envoy = require_envoy!(
        "a_different_certificate_is_detected_by_the_tls_probe_and_refused_by_https_load"
    );
    let bench = bench(&envoy).await;
    let addr = bench.envoy.listener("https").to_string();

    // Another SNI name gets another certificate: not the expected one.
    let wrong_name = probe::tls(
        &addr,
        OTHER,
        &["h2"],
        Some(bench.leaf(SHOP).cert_pem.as_bytes()),
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    assert_eq!(wrong_name.error, None);
    assert_eq!(wrong_name.matches_expected, Some(false));
    assert_eq!(wrong_name.chain[0].sans, vec![OTHER.to_string()]);
    assert!(!wrong_name.passed());

    // Same name, same CA, different key: only the fingerprint tells them apart.
    let impostor = bench.pki.leaf(&[SHOP]);
    let report = probe::tls(
        &addr,
        SHOP,
        &["h2"],
        Some(impostor.cert_pem.as_bytes()),
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    assert!(report.name_in_sans);
    assert_eq!(report.matches_expected, Some(false));
    assert_ne!(
        report.expected_sha256.as_ref(),
        Some(&report.chain[0].sha256)
    );
    assert!(!report.passed());

    // A client that trusts another CA gets a TLS outcome, not a crash.
    let stranger = TestPki::new("some other CA");
    let target = https_target(&bench, Some(&stranger.ca_pem));
    let result = Caller::new(&Target::Http(target))
        .unwrap()
        .call(uuid::Uuid::new_v4(), None)
        .await;
    assert_eq!(
        result.outcome,
        Outcome::Transport {
            class: ErrorClass::Tls
        }
    );
}

#[tokio::test]
async fn tls_probe_command_reports_the_served_certificate_and_fails_on_another() {
    let envoy =
        require_envoy!("tls_probe_command_reports_the_served_certificate_and_fails_on_another");
    let bench = bench(&envoy).await;
    let addr = bench.envoy.listener("https").to_string();
    let dir = tempfile::tempdir().unwrap();
    let expected = dir.path().join("expected.pem");
    std::fs::write(&expected, &bench.leaf(SHOP).cert_pem).unwrap();
    let expected = expected.to_str().unwrap();
    let addr = addr.as_str();
    let probe = |sni| {
        [
            "probe",
            "tls",
            addr,
            "--sni",
            sni,
            "--json",
            "--expect-cert",
            expected,
        ]
    };

    let (code, stdout, stderr) = cdcheck(&probe(SHOP)).await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["matches_expected"], true);
    assert_eq!(report["chain"][0]["sans"][0], SHOP);
    assert_eq!(report["chain"][0]["sha256"], report["expected_sha256"]);

    let (code, stdout, stderr) = cdcheck(&probe(OTHER)).await;
    assert_eq!(code, 1, "{stdout}{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["matches_expected"], false);
    assert_eq!(report["chain"][0]["sans"][0], OTHER);
}
