//! `cdcheck probe routing` as a user runs it, through a real Envoy routing the session the way
//! the rendered VirtualService does: exit 0 when only the session reaches the feature, exit 1
//! naming the look-alike variants a sloppier match leaks, exit 2 naming bad input.

mod support_cli;
mod support_envoy;

use rstest::rstest;
use serde_json::Value;
use support_cli::cdcheck;
use support_envoy::{
    ADS_FEATURE_LABEL, ADS_HOST, ADS_MAINLINE_LABEL, FRONTEND_FEATURE_LABEL, FRONTEND_FEATURE_POD,
    FRONTEND_MAINLINE_LABEL, FRONTEND_POD, RoutingBench, SERVED_BY, SHOP_HOST, TestPki, Upstreams,
    adservice_with_userid_prefix_match, frontend_with_unanchored_cookie_regex,
    https_listener_with_hosts, move_session_route_last, render_virtual_services, virtual_host,
};

const SESSION: &str = "abc";
const REQUESTS: &str = "20";

/// The variant reports of a `--json` run, by name.
fn variants(out: &Value) -> Vec<(String, &Value)> {
    out["variants"]
        .as_array()
        .expect("variants array")
        .iter()
        .map(|v| (v["variant"]["name"].as_str().unwrap().to_string(), v))
        .collect()
}

fn failed_variants(out: &Value) -> Vec<String> {
    variants(out)
        .into_iter()
        .filter(|(_, v)| v["passed"] == false)
        .map(|(name, _)| name)
        .collect()
}

/// The URL and `--resolve` entry that reach `listener` of `bench` by `host`, as a user
/// reaches the ingress by its name.
fn by_name(
    bench: &RoutingBench,
    listener: &str,
    scheme: &str,
    host: &str,
    path: &str,
) -> (String, String) {
    let addr = bench.envoy.listener(listener);
    (
        format!("{scheme}://{host}:{}{path}", addr.port()),
        format!("{host}:{}:{}", addr.port(), addr.ip()),
    )
}

/// `args` with each label flag it lacks added with its value from `defaults` (clap refuses
/// a flag given twice).
fn with_labels<'a>(args: &[&'a str], defaults: [(&'a str, &'a str); 2]) -> Vec<&'a str> {
    let mut all = args.to_vec();
    for (flag, value) in defaults {
        if !args.contains(&flag) {
            all.extend([flag, value]);
        }
    }
    all
}

/// `probe routing` of the frontend at `url` (reached through `resolve`) with `extra`, and the
/// frontend's labels unless `extra` gives them.
async fn probe_frontend(url: &str, resolve: &str, extra: &[&str]) -> (i32, String, String) {
    let args = [
        "probe",
        "routing",
        url,
        "--resolve",
        resolve,
        "--session",
        SESSION,
    ];
    let labels = [
        ("--feature-label", FRONTEND_FEATURE_LABEL),
        ("--mainline-label", FRONTEND_MAINLINE_LABEL),
    ];
    cdcheck(&with_labels(&[&args[..], extra].concat(), labels)).await
}

/// [`probe_frontend`] of the shop through the plaintext listener of `bench`.
async fn probe_shop(bench: &RoutingBench, extra: &[&str]) -> (i32, String, String) {
    let (url, resolve) = by_name(bench, "shop", "http", SHOP_HOST, "/");
    probe_frontend(&url, &resolve, extra).await
}

/// `probe routing --grpc` of the ad service at `url` (reached through `resolve`) with the
/// adservice labels and `extra`.
async fn probe_ads(url: &str, resolve: &str, extra: &[&str]) -> (i32, String, String) {
    let args = [
        "probe",
        "routing",
        url,
        "--grpc",
        "--resolve",
        resolve,
        "--session",
        SESSION,
        "--feature-label",
        ADS_FEATURE_LABEL,
        "--mainline-label",
        ADS_MAINLINE_LABEL,
    ];
    cdcheck(&[&args[..], extra].concat()).await
}

#[tokio::test]
async fn probe_routing_passes_the_rendered_cookie_route_through_envoy() {
    let envoy = require_envoy!("probe_routing_passes_the_rendered_cookie_route_through_envoy");
    let frontend = render_virtual_services(SESSION).frontend;
    let bench = RoutingBench::frontend(&envoy, &frontend, &[FRONTEND_POD]).await;

    let (code, stdout, stderr) = probe_shop(&bench, &["--requests", REQUESTS]).await;
    println!("{stdout}");
    assert_eq!(code, 0, "{stdout}{stderr}");
    // No progress bar when stderr is not a terminal.
    assert_eq!(stderr, "");
    let lines: Vec<&str> = stdout.lines().collect();
    let (verdict, report) = lines.split_last().unwrap();
    // abc: the session alone, among and after other cookies, absent, other cookies only,
    // plus one character, prefix, inside another cookie's name and value, another session.
    assert_eq!(report.len(), 10, "{stdout}");
    for line in report {
        assert!(line.starts_with("ok "), "{line}");
        assert!(line.contains(" 20/20 reached it, 0 leaked"), "{line}");
    }
    assert!(verdict.starts_with("routing: PASS"), "{verdict}");

    // The frontend's banner names the workload too; JSON carries the whole report.
    let (code, stdout, stderr) = probe_shop(
        &bench,
        &[
            "--feature-label",
            "myfeature",
            "--mainline-label",
            "^served by frontend-",
            "--attribution",
            "banner",
            "--requests",
            REQUESTS,
            "--json",
        ],
    )
    .await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    let out: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(out["passed"], true);
    let variants = variants(&out);
    assert_eq!(variants.len(), 10);
    for (name, v) in &variants {
        assert_eq!(v["sent"], 20, "{name}");
        assert_eq!(v["reached_expected"], 20, "{name}");
        assert_eq!(v["leaked"], 0, "{name}");
        assert_eq!(v["unknown"], 0, "{name}");
        assert!(
            v["leak_rate_upper_bound_95"].as_f64().unwrap() > 0.0,
            "{name}"
        );
    }
    let alone = &variants[0].1;
    assert_eq!(alone["variant"]["name"], "session alone");
    assert_eq!(alone["variant"]["expected"], "feature");
    assert_eq!(
        alone["distribution"][&format!("served by {FRONTEND_FEATURE_POD}")],
        20
    );
}

#[tokio::test]
async fn probe_routing_fails_an_unanchored_cookie_regex_naming_the_look_alikes() {
    let envoy =
        require_envoy!("probe_routing_fails_an_unanchored_cookie_regex_naming_the_look_alikes");
    let frontend = frontend_with_unanchored_cookie_regex(SESSION);
    let bench = RoutingBench::frontend(&envoy, &frontend, &[FRONTEND_POD]).await;
    let args = ["--attribution", "pod", "--requests", REQUESTS];

    let (code, stdout, stderr) = probe_shop(&bench, &[&args[..], &["--json"]].concat()).await;
    assert_eq!(code, 1, "{stdout}{stderr}");
    let out: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(out["passed"], false);
    let leaking = [
        "id plus one character",
        "id inside another cookie's name",
        "id inside another cookie's value",
    ];
    assert_eq!(failed_variants(&out), leaking);
    for (name, v) in variants(&out) {
        assert_eq!(v["sent"], 20, "{name}");
        if leaking.contains(&name.as_str()) {
            assert!(v["leaked"].as_u64().unwrap() > 0, "{name}: {v}");
            assert_eq!(v["leak_rate_upper_bound_95"], Value::Null, "{name}");
            assert_eq!(v["distribution"][FRONTEND_FEATURE_POD], 20);
        } else {
            assert_eq!(v["leaked"], 0, "{name}: {v}");
        }
    }

    let (code, stdout, stderr) = probe_shop(&bench, &args).await;
    println!("{stdout}");
    assert_eq!(code, 1, "{stdout}{stderr}");
    for name in leaking {
        let line = stdout
            .lines()
            .find(|l| l.contains(name))
            .unwrap_or_else(|| panic!("no line for {name}:\n{stdout}"));
        assert!(line.starts_with("FAIL "), "{line}");
    }
    assert_eq!(
        stdout.lines().last().unwrap(),
        "routing: FAIL: variants `id plus one character`, `id inside another cookie's name`, \
         `id inside another cookie's value` leaked"
    );
}

#[tokio::test]
async fn probe_routing_fails_a_session_route_after_the_default_route() {
    let envoy = require_envoy!("probe_routing_fails_a_session_route_after_the_default_route");
    let mut frontend = render_virtual_services(SESSION).frontend;
    move_session_route_last(&mut frontend);
    let bench = RoutingBench::frontend(&envoy, &frontend, &[FRONTEND_POD]).await;

    let (code, stdout, stderr) = probe_shop(&bench, &["--requests", REQUESTS, "--json"]).await;
    assert_eq!(code, 1, "{stdout}{stderr}");
    let out: Value = serde_json::from_str(&stdout).unwrap();
    let session_variants = [
        "session alone",
        "session among other cookies",
        "session last after other cookies",
    ];
    assert_eq!(failed_variants(&out), session_variants);
    for (name, v) in variants(&out) {
        if session_variants.contains(&name.as_str()) {
            assert_eq!(v["leaked"], 20, "{name}: {v}");
            assert_eq!(v["distribution"][FRONTEND_POD], 20, "{name}: {v}");
        }
    }

    let (code, stdout, stderr) = probe_shop(&bench, &["--requests", REQUESTS]).await;
    println!("{stdout}");
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert_eq!(
        stdout.lines().last().unwrap(),
        "routing: FAIL: variants `session alone`, `session among other cookies`, \
         `session last after other cookies` leaked"
    );
}

#[tokio::test]
async fn probe_routing_catches_one_mainline_endpoint_in_eight_answering_as_the_feature() {
    let envoy = require_envoy!(
        "probe_routing_catches_one_mainline_endpoint_in_eight_answering_as_the_feature"
    );
    // The rendered routes are right, but the mainline Service has 8 endpoints and one of them
    // is a stray feature pod (a label selector that also matches it): Envoy's round robin
    // sends it every eighth request of every variant that belongs to mainline.
    let frontend = render_virtual_services(SESSION).frontend;
    let mut mainline: Vec<String> = (1..=7).map(|i| format!("frontend-7d9c5-main{i}")).collect();
    mainline.push("frontend-myfeature-5f6b8-stray".to_string());
    let mainline: Vec<&str> = mainline.iter().map(String::as_str).collect();
    let bench = RoutingBench::frontend(&envoy, &frontend, &mainline).await;

    let (code, stdout, stderr) = probe_shop(&bench, &["--requests", "40", "--json"]).await;
    assert_eq!(code, 1, "{stdout}{stderr}");
    let out: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(out["passed"], false);
    let (mut mainline_sent, mut mainline_leaked) = (0, 0);
    for (name, v) in variants(&out) {
        let leaked = v["leaked"].as_u64().unwrap();
        if v["variant"]["expected"] == "feature" {
            assert_eq!(leaked, 0, "{name}: {v}");
            continue;
        }
        // A fraction leaks, not all: the 1-in-N case every earlier control missed.
        assert!(leaked > 0 && leaked < 40, "{name}: {v}");
        assert_eq!(v["passed"], false, "{name}: {v}");
        assert_eq!(
            v["distribution"]["frontend-myfeature-5f6b8-stray"].as_u64(),
            Some(leaked),
            "{name}: {v}"
        );
        mainline_sent += 40;
        mainline_leaked += leaked;
    }
    let rate = mainline_leaked as f64 / mainline_sent as f64;
    println!("leaked {mainline_leaked} of {mainline_sent} mainline requests ({rate:.3})");
    assert!((0.10..=0.15).contains(&rate), "leak rate {rate}");
}

#[tokio::test]
async fn probe_routing_fails_when_an_unknown_workload_answers() {
    let envoy = require_envoy!("probe_routing_fails_when_an_unknown_workload_answers");
    // A third workload behind the mainline Service (a canary, a leftover Deployment) is
    // neither the feature nor mainline: counting it as mainline would pass a broken setup.
    let frontend = render_virtual_services(SESSION).frontend;
    let bench = RoutingBench::frontend(
        &envoy,
        &frontend,
        &[FRONTEND_POD, "frontend-canary-6e2a1-can1"],
    )
    .await;

    let (code, stdout, stderr) = probe_shop(&bench, &["--requests", REQUESTS, "--json"]).await;
    assert_eq!(code, 1, "{stdout}{stderr}");
    let out: Value = serde_json::from_str(&stdout).unwrap();
    for (name, v) in variants(&out) {
        assert_eq!(v["leaked"], 0, "{name}: {v}");
        if v["variant"]["expected"] == "mainline" {
            let unknown = v["unknown"].as_u64().unwrap();
            assert!(unknown > 0, "{name}: {v}");
            assert_eq!(v["passed"], false, "{name}: {v}");
            assert_eq!(v["leak_rate_upper_bound_95"], Value::Null, "{name}: {v}");
            assert_eq!(
                v["distribution"]["frontend-canary-6e2a1-can1"].as_u64(),
                Some(unknown),
                "{name}: {v}"
            );
        } else {
            assert_eq!(v["passed"], true, "{name}: {v}");
        }
    }

    let (code, stdout, stderr) = probe_shop(&bench, &["--requests", REQUESTS]).await;
    println!("{stdout}");
    assert_eq!(code, 1, "{stdout}{stderr}");
    let verdict = stdout.lines().last().unwrap();
    assert!(
        verdict.starts_with("routing: FAIL: variants `no cookie`"),
        "{verdict}"
    );
    assert!(
        verdict.ends_with(" reached an unknown workload"),
        "{verdict}"
    );
    assert!(!verdict.contains("leaked"), "{verdict}");
}

#[tokio::test]
async fn probe_routing_grpc_passes_the_rendered_userid_route_and_fails_a_prefix_match() {
    let envoy = require_envoy!(
        "probe_routing_grpc_passes_the_rendered_userid_route_and_fails_a_prefix_match"
    );
    let bench = RoutingBench::adservice(&envoy, &render_virtual_services(SESSION).adservice).await;
    let (endpoint, resolve) = by_name(&bench, "ads", "http", ADS_HOST, "");
    let attribution = format!("header:{SERVED_BY}");
    let (code, stdout, stderr) = probe_ads(
        &endpoint,
        &resolve,
        &["--attribution", &attribution, "--requests", REQUESTS],
    )
    .await;
    println!("{stdout}");
    assert_eq!(code, 0, "{stdout}{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    let (verdict, report) = lines.split_last().unwrap();
    // The session's userid, none, plus one character, prefix.
    assert_eq!(report.len(), 4, "{stdout}");
    assert!(report.iter().all(|l| l.starts_with("ok ")), "{stdout}");
    assert!(verdict.starts_with("routing: PASS"), "{verdict}");

    let adservice = adservice_with_userid_prefix_match(SESSION);
    let bench = RoutingBench::adservice(&envoy, &adservice).await;
    let (endpoint, resolve) = by_name(&bench, "ads", "http", ADS_HOST, "");
    let args = [
        // The ad text names the backend too: `ad for clothing served by <name>`.
        "--attribution",
        r"body:served by (\S+)",
        "--requests",
        REQUESTS,
    ];
    let (code, stdout, stderr) = probe_ads(&endpoint, &resolve, &args).await;
    println!("{stdout}");
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert_eq!(
        stdout.lines().last().unwrap(),
        "routing: FAIL: variant `userid plus one character` leaked"
    );

    let (code, stdout, stderr) =
        probe_ads(&endpoint, &resolve, &[&args[..], &["--json"]].concat()).await;
    assert_eq!(code, 1, "{stdout}{stderr}");
    let out: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(failed_variants(&out), ["userid plus one character"]);
    let (_, leaking) = variants(&out)
        .into_iter()
        .find(|(name, _)| name == "userid plus one character")
        .unwrap();
    assert_eq!(leaking["leaked"], 20);
    assert_eq!(leaking["variant"]["carrier"]["kind"], "userid");
    assert_eq!(leaking["variant"]["carrier"]["value"], "abcx");
}

#[tokio::test]
async fn probe_routing_goes_through_tls_by_sni_with_cacert_and_resolve() {
    let envoy = require_envoy!("probe_routing_goes_through_tls_by_sni_with_cacert_and_resolve");
    // The ingress shape: Envoy terminates TLS for the shop's name with the rendered frontend
    // VirtualService behind it, and for the ad service's name with the adservice one.
    let rendered = render_virtual_services(SESSION);
    let pki = TestPki::new("cdcheck routing test CA");
    let leaf = pki.leaf(&[SHOP_HOST, ADS_HOST]);
    let certificates = [
        (SHOP_HOST, leaf.cert_pem.as_str(), leaf.key_pem.as_str()),
        (ADS_HOST, leaf.cert_pem.as_str(), leaf.key_pem.as_str()),
    ];
    let listeners = vec![
        https_listener_with_hosts(
            "shops",
            vec![virtual_host(&rendered.frontend)],
            &certificates,
        ),
        https_listener_with_hosts(
            "adss",
            vec![virtual_host(&rendered.adservice)],
            &certificates,
        ),
    ];
    let upstreams = Upstreams::frontend(&[FRONTEND_POD])
        .await
        .and(Upstreams::adservice().await);
    let bench = RoutingBench::start(&envoy, listeners, upstreams).await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &pki.ca_pem).unwrap();
    let ca = ca.to_str().unwrap();
    let (shop_url, shop_resolve) = by_name(&bench, "shops", "https", SHOP_HOST, "/");
    let (ads_url, ads_resolve) = by_name(&bench, "adss", "https", ADS_HOST, "");
    let cookie_args = ["--requests", "5", "--timeout", "2s"];

    let (code, stdout, stderr) = probe_frontend(
        &shop_url,
        &shop_resolve,
        &[&cookie_args[..], &["--cacert", ca]].concat(),
    )
    .await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout.lines().last().unwrap().starts_with("routing: PASS"),
        "{stdout}"
    );

    let (code, stdout, stderr) = probe_ads(
        &ads_url,
        &ads_resolve,
        &[
            "--cacert",
            ca,
            "--attribution",
            "header:x-served-by",
            "--requests",
            "5",
            "--json",
        ],
    )
    .await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    let out: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(out["passed"], true, "{out}");
    assert_eq!(variants(&out).len(), 4);

    // Without the CA nothing is answered: every variant fails as unattributed, none leaks.
    let (code, stdout, stderr) = probe_frontend(&shop_url, &shop_resolve, &cookie_args).await;
    println!("{stdout}");
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert_eq!(
        stdout.lines().last().unwrap(),
        "routing: FAIL: every variant had failed or unattributed answers"
    );
    assert!(stdout.contains("\"failed: tls\": 5"), "{stdout}");
}

#[rstest]
#[case::invalid_session(&["http://127.0.0.1:1/", "--session", "a;b"], &["--session", "a;b"])]
#[case::invalid_attribution_spec(&["http://127.0.0.1:1/", "--session", "abc", "--attribution", "cookie:x"], &["attribution", "`cookie:x`"])]
#[case::invalid_attribution_regex(&["http://127.0.0.1:1/", "--session", "abc", "--attribution", "body:Pod: ("], &["attribution regex", "`Pod: (`"])]
#[case::invalid_feature_label(&["http://127.0.0.1:1/", "--session", "abc", "--feature-label", "frontend-("], &["--feature-label", "`frontend-(`"])]
#[case::invalid_mainline_label(&["http://127.0.0.1:1/", "--session", "abc", "--mainline-label", "frontend-("], &["--mainline-label", "`frontend-(`"])]
#[case::invalid_url(&["not a url", "--session", "abc"], &["`not a url`"])]
#[case::invalid_grpc_endpoint(&["ftp://127.0.0.1:1", "--grpc", "--session", "abc", "--attribution", "header:x-served-by"], &["`ftp://127.0.0.1:1`"])]
#[case::grpc_without_attribution(&["http://127.0.0.1:1", "--grpc", "--session", "abc"], &["--attribution"])]
#[case::zero_requests(&["http://127.0.0.1:1/", "--session", "abc", "--requests", "0"], &["--requests 0"])]
#[case::invalid_resolve(&["http://127.0.0.1:1/", "--session", "abc", "--resolve", "shop.test:443"], &["`shop.test:443`"])]
#[case::missing_cacert(&["https://127.0.0.1:1/", "--session", "abc", "--cacert", "/nonexistent/ca.pem"], &["`/nonexistent/ca.pem`"])]
#[case::invalid_timeout(&["http://127.0.0.1:1/", "--session", "abc", "--timeout", "soon"], &["`soon`"])]
#[tokio::test]
async fn probe_routing_refuses_bad_input_naming_it_with_nothing_on_stdout(
    #[case] args: &[&str],
    #[case] named: &[&str],
) {
    // Both labels are required: the cases that do not test one get a valid one.
    let args = with_labels(
        &[&["probe", "routing"], args].concat(),
        [("--feature-label", "x"), ("--mainline-label", "y")],
    );
    let (code, stdout, stderr) = cdcheck(&args).await;
    assert_eq!(code, 2, "{stderr}");
    assert_eq!(stdout, "");
    assert!(stderr.starts_with("error: failed to "), "{stderr}");
    for name in named {
        assert!(stderr.contains(name), "{name} not in {stderr}");
    }
}

#[tokio::test]
async fn probe_routing_requires_a_mainline_label() {
    let (code, stdout, stderr) = cdcheck(&[
        "probe",
        "routing",
        "http://127.0.0.1:1/",
        "--session",
        "abc",
        "--feature-label",
        "x",
    ])
    .await;
    assert_eq!(code, 2, "{stderr}");
    assert_eq!(stdout, "");
    assert!(stderr.contains("--mainline-label"), "{stderr}");
}
