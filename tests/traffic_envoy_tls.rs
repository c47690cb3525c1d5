//! TLS through a real Envoy: the expected certificate is served for the SNI name (and HTTPS load
//! trusts it through the CA), and a different certificate is detected.

mod support_envoy;

use std::time::Duration;

use cdcheck::traffic::attribution::AttributionRule;
use cdcheck::traffic::caller::Caller;
use cdcheck::traffic::load::{self, LoadSpec};
use cdcheck::traffic::probe;
use cdcheck::traffic::record::{ErrorClass, Outcome};
use cdcheck::traffic::target::{HttpTarget, HttpVersion, Target};
use cdcheck::traffic::tls::TlsOptions;
use support_envoy::{
    Envoy, HttpBackend, Leaf, TestPki, bootstrap, cluster, envoy_or_skip, https_listener, route,
};

const SHOP: &str = "shop.example.test";
const OTHER: &str = "other.example.test";

struct Bench {
    envoy: Envoy,
    pki: TestPki,
    shop: Leaf,
    _backend: HttpBackend,
}

async fn bench(envoy: &std::path::Path) -> Bench {
    cdcheck::install_crypto_provider();
    let pki = TestPki::new("cdcheck test CA");
    let shop = pki.leaf(&[SHOP]);
    let other = pki.leaf(&[OTHER]);
    let backend = HttpBackend::start("frontend-tls-1").await;
    let config = bootstrap(
        vec![https_listener(
            "https",
            vec![route("frontend", vec![])],
            &[
                (SHOP, &shop.cert_pem, &shop.key_pem),
                (OTHER, &other.cert_pem, &other.key_pem),
            ],
        )],
        vec![cluster("frontend", &[backend.addr], false, None)],
    );
    Bench {
        envoy: Envoy::start(envoy, &config).await,
        pki,
        shop,
        _backend: backend,
    }
}

fn https_target(bench: &Bench, ca_pem: Option<&str>) -> HttpTarget {
    let addr = bench.envoy.listener("https");
    let mut target = HttpTarget::parse(&format!("https://{SHOP}:{}/", addr.port())).unwrap();
    target.resolve.push((SHOP.to_string(), addr));
    target.tls = TlsOptions {
        insecure: false,
        ca_pem: ca_pem.map(|pem| pem.as_bytes().to_vec()),
    };
    target
}

#[tokio::test]
async fn envoy_serves_the_expected_certificate_for_the_sni_name() {
    let Some(envoy) = envoy_or_skip("envoy_serves_the_expected_certificate_for_the_sni_name")
    else {
        return;
    };
    let bench = bench(&envoy).await;
    let addr = bench.envoy.listener("https").to_string();

    let report = probe::tls(
        &addr,
        SHOP,
        &["h2", "http/1.1"],
        Some(bench.shop.cert_pem.as_bytes()),
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
    // Both engines: closed loop (direct connections) and open loop (pooled client).
    let mut target = https_target(&bench, Some(&bench.pki.ca_pem));
    target.version = HttpVersion::Http2;
    for spec in [
        LoadSpec::closed(2, Duration::from_millis(300)),
        LoadSpec::open(100.0, Duration::from_millis(300)),
    ] {
        let spec = spec.with_attribution(AttributionRule::frontend_pod());
        let timeline = load::run(&Target::Http(target.clone()), &spec, None)
            .await
            .unwrap();
        let summary = timeline.summary();
        assert!(summary.count > 0);
        assert_eq!(summary.failed, 0, "{:?}: {summary}", spec.schedule);
        assert_eq!(summary.labels.get("frontend-tls-1"), Some(&summary.count));
    }
}

#[tokio::test]
async fn a_different_certificate_is_detected_by_the_tls_probe_and_refused_by_https_load() {
    let Some(envoy) = envoy_or_skip(
        "a_different_certificate_is_detected_by_the_tls_probe_and_refused_by_https_load",
    ) else {
        return;
    };
    let bench = bench(&envoy).await;
    let addr = bench.envoy.listener("https").to_string();

    // Another SNI name gets another certificate: not the expected one.
    let wrong_name = probe::tls(
        &addr,
        OTHER,
        &["h2"],
        Some(bench.shop.cert_pem.as_bytes()),
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
    let Some(envoy) =
        envoy_or_skip("tls_probe_command_reports_the_served_certificate_and_fails_on_another")
    else {
        return;
    };
    let bench = bench(&envoy).await;
    let addr = bench.envoy.listener("https").to_string();
    let dir = tempfile::tempdir().unwrap();
    let expected = dir.path().join("expected.pem");
    std::fs::write(&expected, &bench.shop.cert_pem).unwrap();
    let probe = |sni: &'static str| {
        let (addr, expected) = (addr.clone(), expected.clone());
        async move {
            tokio::process::Command::new(env!("CARGO_BIN_EXE_cdcheck"))
                .args([
                    "probe",
                    "tls",
                    &addr,
                    "--sni",
                    sni,
                    "--json",
                    "--expect-cert",
                ])
                .arg(&expected)
                .output()
                .await
                .unwrap()
        }
    };

    let served = probe(SHOP).await;
    assert_eq!(served.status.code(), Some(0), "{served:?}");
    let report: serde_json::Value = serde_json::from_slice(&served.stdout).unwrap();
    assert_eq!(report["matches_expected"], true);
    assert_eq!(report["chain"][0]["sans"][0], SHOP);
    assert_eq!(report["chain"][0]["sha256"], report["expected_sha256"]);

    let other = probe(OTHER).await;
    assert_eq!(other.status.code(), Some(1), "{other:?}");
    let report: serde_json::Value = serde_json::from_slice(&other.stdout).unwrap();
    assert_eq!(report["matches_expected"], false);
    assert_eq!(report["chain"][0]["sans"][0], OTHER);
}
