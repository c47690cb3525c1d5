//! `cdcheck load` and `cdcheck probe` as a user runs them: bad input names the value, network
//! failures are outcomes with exit status 1, and `--json` carries the summary.

mod support_cli;
mod support_envoy;

use rstest::rstest;
use serde_json::Value;
use support_cli::{GET_ADS_CLOSED_LOOP, cdcheck};
use support_envoy::{GrpcBackend, HttpBackend, free_port};

#[rstest]
#[case::invalid_url(&["load", "not a url"], "`not a url`")]
#[case::unsupported_scheme(&["load", "ftp://example.test/"], "`ftp://example.test/`")]
#[case::invalid_rate(&["load", "http://127.0.0.1:1/", "--rate", "fast"], "`fast`")]
#[case::zero_rate(&["load", "http://127.0.0.1:1/", "--rate", "0"], "`0`")]
#[case::invalid_duration(&["load", "http://127.0.0.1:1/", "--duration", "10"], "`10`")]
#[case::zero_duration(&["load", "http://127.0.0.1:1/", "--duration", "0s"], "`0s`")]
#[case::invalid_header(&["load", "http://127.0.0.1:1/", "--header", "no-colon"], "`no-colon`")]
#[case::invalid_grpc_method(&["load", "http://127.0.0.1:1", "--grpc", "foo.Bar/Baz"], "`foo.Bar/Baz`")]
#[case::missing_cacert(&["load", "https://127.0.0.1:1/", "--cacert", "/nonexistent/ca.pem"], "`/nonexistent/ca.pem`")]
#[case::zero_threads(&["load", "http://127.0.0.1:1/", "--threads", "0"], "`--threads 0`")]
#[case::invalid_resolve(&["load", "https://shop.test/", "--resolve", "shop.test:443"], "`shop.test:443`")]
#[case::cookie_with_grpc(&["load", "http://127.0.0.1:1", "--grpc", "grpc.health.v1.Health/Check", "--cookie", "a=b"], "`a=b`")]
#[case::unsupported_grpc_scheme(&["load", "ftp://127.0.0.1:1", "--grpc", "grpc.health.v1.Health/Check"], "`ftp://127.0.0.1:1`")]
#[case::invalid_sni(&["probe", "tls", "127.0.0.1:1", "--sni", "not a name"], "`not a name`")]
#[tokio::test]
async fn bad_input_is_refused_with_an_error_naming_the_value(
    #[case] args: &[&str],
    #[case] named: &str,
) {
    let (code, _, stderr) = cdcheck(args).await;
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.starts_with("error: failed to "), "{stderr}");
    assert!(stderr.contains(named), "{stderr}");
}

#[tokio::test]
async fn load_against_an_unreachable_target_reports_refused_requests_and_exits_1() {
    let addr = free_port();
    let url = format!("http://{addr}/");
    let (code, stdout, stderr) = cdcheck(&[
        "load",
        &url,
        "--rate",
        "50",
        "--duration",
        "200ms",
        "--json",
    ])
    .await;
    assert_eq!(code, 1, "{stderr}");
    let out: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(out["summary"]["count"], 10);
    assert_eq!(out["summary"]["errors"]["refused"], 10);
    assert_eq!(out["verdict"]["passed"], false);
    assert_eq!(out["verdict"]["outages"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn open_loop_load_sends_the_scheduled_requests_and_attributes_them() {
    let backend = HttpBackend::start("frontend-cli-1").await;
    let url = format!("http://{}/", backend.addr);
    let (code, stdout, stderr) = cdcheck(&[
        "load",
        &url,
        "--rate",
        "200",
        "--duration",
        "500ms",
        "--attribute-body",
        "frontend",
        "--cookie",
        "shop_session-id=abc",
        "--json",
        "--records",
    ])
    .await;
    assert_eq!(code, 0, "{stderr}");
    let out: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(out["summary"]["count"], 100);
    assert_eq!(out["summary"]["failed"], 0);
    assert_eq!(out["summary"]["labels"]["frontend-cli-1"], 100);
    let records = out["records"].as_array().unwrap();
    assert_eq!(records.len(), 100);
    // The fixed schedule: request i is due at i * 5 ms.
    assert_eq!(records[10]["scheduled_us"], 50_000);
    assert_eq!(records[10]["outcome"]["status"], 200);
    assert_eq!(records[10]["request_id"].as_str().unwrap().len(), 36);
}

#[tokio::test]
async fn closed_loop_grpc_load_and_probe_answer_through_the_ad_service() {
    let backend = GrpcBackend::start("adservice-cli-1").await;
    let endpoint = format!("http://{}", backend.addr);
    let attributed = [
        "--header",
        "userid:abc",
        "--attribute-header",
        "x-served-by",
    ];
    let load = [
        &["load", &endpoint],
        &GET_ADS_CLOSED_LOOP[..],
        &attributed,
        &["--json"],
    ];
    let (code, stdout, stderr) = cdcheck(&load.concat()).await;
    assert_eq!(code, 0, "{stderr}");
    let out: Value = serde_json::from_str(&stdout).unwrap();
    let count = out["summary"]["count"].as_u64().unwrap();
    assert!(count > 10, "{out}");
    assert_eq!(out["summary"]["labels"]["adservice-cli-1"], count);

    let (code, stdout, _) = cdcheck(&[
        "probe",
        "grpc",
        &endpoint,
        "--service",
        "hipstershop.AdService",
    ])
    .await;
    assert_eq!(code, 0, "{stdout}");
    assert!(stdout.contains("SERVING"), "{stdout}");

    let (code, stdout, _) = cdcheck(&[
        "probe",
        "grpc",
        &endpoint,
        "--service",
        "no.such.Service",
        "--json",
    ])
    .await;
    assert_eq!(code, 1, "{stdout}");
    let out: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(out["outcome"]["code"], 5);
}

#[tokio::test]
async fn http_probe_sends_the_readiness_cookie_and_reports_health() {
    let backend = HttpBackend::start("frontend-cli-2").await;
    let url = format!("http://{}/_healthz", backend.addr);
    let (code, stdout, _) = cdcheck(&["probe", "http", &url, "--json"]).await;
    assert_eq!(code, 0, "{stdout}");
    let out: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(out["healthy"], true);
    assert_eq!(out["body"], "ok");
    assert_eq!(
        backend.last_cookie().as_deref(),
        Some("shop_session-id=x-readiness-probe")
    );

    backend.start_draining();
    let (code, stdout, _) = cdcheck(&["probe", "http", &url]).await;
    assert_eq!(code, 1, "{stdout}");
    assert!(stdout.starts_with("UNHEALTHY"), "{stdout}");
}
