//! `cdcheck probe routing` as a user runs it, through a real Envoy routing the session the way
//! the rendered VirtualService does: exit 0 when only the session reaches the feature, exit 1
//! naming the look-alike variants a sloppier match leaks, exit 2 naming bad input.

mod support_envoy;

use cdcheck::manifests::istio::{HttpMatchRequest, HttpRoute, StringMatch};
use cdcheck::manifests::routing::{
    SessionId, cookie_session_route, default_route, userid_session_route,
};
use rstest::rstest;
use serde_json::Value;
use support_envoy::{
    Envoy, GrpcBackend, HttpBackend, SERVED_BY, TestPki, bootstrap, cluster, envoy_or_skip,
    http_listener, https_listener, routes_from_istio,
};

const SESSION: &str = "abc";
const REQUESTS: &str = "20";

async fn cdcheck(args: &[&str]) -> (i32, String, String) {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_cdcheck"))
        .args(args)
        .output()
        .await
        .expect("run cdcheck");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn session() -> SessionId {
    SessionId::parse(SESSION).unwrap()
}

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

/// Envoy in front of two backends; the backends live as long as the bench.
struct Bench {
    envoy: Envoy,
    _backends: Vec<Box<dyn std::any::Any>>,
}

/// The routes `manifests` renders for the session's cookie: the session route, then the default.
fn rendered_cookie_routes() -> Vec<HttpRoute> {
    vec![
        cookie_session_route(&session(), "frontend-myfeature", 80),
        default_route("frontend", 80),
    ]
}

/// The routes `manifests` renders for the session's gRPC calls: `userid`, then the default.
fn rendered_userid_routes() -> Vec<HttpRoute> {
    vec![
        userid_session_route(&session(), "adservice-myfeature", 9555),
        default_route("adservice", 9555),
    ]
}

/// `routes` with the session route's match replaced by `header` matched by `value`.
fn with_session_match(
    mut routes: Vec<HttpRoute>,
    header: &str,
    value: StringMatch,
) -> Vec<HttpRoute> {
    routes[0].matches = vec![HttpMatchRequest {
        headers: [(header.to_string(), value)].into(),
    }];
    routes
}

async fn frontend_bench(envoy: &std::path::Path, routes: &[HttpRoute]) -> Bench {
    let mainline = HttpBackend::start("frontend-7d9c5-main1").await;
    let feature = HttpBackend::start("frontend-myfeature-5f6b8-feat1").await;
    let config = bootstrap(
        vec![http_listener("shop", routes_from_istio(routes))],
        vec![
            cluster("frontend", &[mainline.addr], false, None),
            cluster("frontend-myfeature", &[feature.addr], false, None),
        ],
    );
    Bench {
        envoy: Envoy::start(envoy, &config).await,
        _backends: vec![Box::new(mainline), Box::new(feature)],
    }
}

async fn ads_bench(envoy: &std::path::Path, routes: &[HttpRoute]) -> Bench {
    let mainline = GrpcBackend::start("adservice-6c8f-main1").await;
    let feature = GrpcBackend::start("adservice-myfeature-9a1b-feat1").await;
    let config = bootstrap(
        vec![http_listener("ads", routes_from_istio(routes))],
        vec![
            cluster("adservice", &[mainline.addr], true, None),
            cluster("adservice-myfeature", &[feature.addr], true, None),
        ],
    );
    Bench {
        envoy: Envoy::start(envoy, &config).await,
        _backends: vec![Box::new(mainline), Box::new(feature)],
    }
}

#[tokio::test]
async fn probe_routing_passes_the_rendered_cookie_route_through_envoy() {
    let Some(envoy) = envoy_or_skip("probe_routing_passes_the_rendered_cookie_route_through_envoy")
    else {
        return;
    };
    let bench = frontend_bench(&envoy, &rendered_cookie_routes()).await;
    let url = format!("http://{}/", bench.envoy.listener("shop"));

    let (code, stdout, stderr) = cdcheck(&[
        "probe",
        "routing",
        &url,
        "--session",
        SESSION,
        "--feature-label",
        "^frontend-myfeature-",
        "--requests",
        REQUESTS,
    ])
    .await;
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
    let (code, stdout, stderr) = cdcheck(&[
        "probe",
        "routing",
        &url,
        "--session",
        SESSION,
        "--feature-label",
        "myfeature",
        "--attribution",
        "banner",
        "--requests",
        REQUESTS,
        "--json",
    ])
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
        assert!(
            v["leak_rate_upper_bound_95"].as_f64().unwrap() > 0.0,
            "{name}"
        );
    }
    let alone = &variants[0].1;
    assert_eq!(alone["variant"]["name"], "session alone");
    assert_eq!(alone["variant"]["expected"], "feature");
    assert_eq!(
        alone["distribution"]["served by frontend-myfeature-5f6b8-feat1"],
        20
    );
}

#[tokio::test]
async fn probe_routing_fails_an_unanchored_cookie_regex_naming_the_look_alikes() {
    let Some(envoy) =
        envoy_or_skip("probe_routing_fails_an_unanchored_cookie_regex_naming_the_look_alikes")
    else {
        return;
    };
    let routes = with_session_match(
        rendered_cookie_routes(),
        "cookie",
        StringMatch::Regex(format!(".*shop_session-id={SESSION}.*")),
    );
    let bench = frontend_bench(&envoy, &routes).await;
    let url = format!("http://{}/", bench.envoy.listener("shop"));
    let args = [
        "probe",
        "routing",
        &url,
        "--session",
        SESSION,
        "--feature-label",
        "^frontend-myfeature-",
        "--attribution",
        "pod",
        "--requests",
        REQUESTS,
    ];

    let (code, stdout, stderr) = cdcheck(&[&args[..], &["--json"]].concat()).await;
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
            assert_eq!(v["distribution"]["frontend-myfeature-5f6b8-feat1"], 20);
        } else {
            assert_eq!(v["leaked"], 0, "{name}: {v}");
        }
    }

    let (code, stdout, stderr) = cdcheck(&args).await;
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
async fn probe_routing_grpc_passes_the_rendered_userid_route_and_fails_a_prefix_match() {
    let Some(envoy) = envoy_or_skip(
        "probe_routing_grpc_passes_the_rendered_userid_route_and_fails_a_prefix_match",
    ) else {
        return;
    };
    let bench = ads_bench(&envoy, &rendered_userid_routes()).await;
    let endpoint = format!("http://{}", bench.envoy.listener("ads"));
    let attribution = format!("header:{SERVED_BY}");
    let (code, stdout, stderr) = cdcheck(&[
        "probe",
        "routing",
        &endpoint,
        "--grpc",
        "--session",
        SESSION,
        "--feature-label",
        "^adservice-myfeature-",
        "--attribution",
        &attribution,
        "--requests",
        REQUESTS,
    ])
    .await;
    println!("{stdout}");
    assert_eq!(code, 0, "{stdout}{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    let (verdict, report) = lines.split_last().unwrap();
    // The session's userid, none, plus one character, prefix.
    assert_eq!(report.len(), 4, "{stdout}");
    assert!(report.iter().all(|l| l.starts_with("ok ")), "{stdout}");
    assert!(verdict.starts_with("routing: PASS"), "{verdict}");

    let routes = with_session_match(
        rendered_userid_routes(),
        "userid",
        StringMatch::Prefix(SESSION.to_string()),
    );
    let bench = ads_bench(&envoy, &routes).await;
    let endpoint = format!("http://{}", bench.envoy.listener("ads"));
    let args = [
        "probe",
        "routing",
        &endpoint,
        "--grpc",
        "--session",
        SESSION,
        "--feature-label",
        "^adservice-myfeature-",
        // The ad text names the backend too: `ad for clothing served by <name>`.
        "--attribution",
        r"body:served by (\S+)",
        "--requests",
        REQUESTS,
    ];
    let (code, stdout, stderr) = cdcheck(&args).await;
    println!("{stdout}");
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert_eq!(
        stdout.lines().last().unwrap(),
        "routing: FAIL: variant `userid plus one character` leaked"
    );

    let (code, stdout, stderr) = cdcheck(&[&args[..], &["--json"]].concat()).await;
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
    let Some(envoy) =
        envoy_or_skip("probe_routing_goes_through_tls_by_sni_with_cacert_and_resolve")
    else {
        return;
    };
    // The ingress shape: Envoy terminates TLS for the shop's name, cookie routes for the
    // frontend and userid routes for the ad service behind it.
    const SHOP: &str = "shop.example.test";
    let pki = TestPki::new("cdcheck routing test CA");
    let leaf = pki.leaf(&[SHOP]);
    let certificates = [(SHOP, leaf.cert_pem.as_str(), leaf.key_pem.as_str())];
    let frontend = HttpBackend::start("frontend-7d9c5-main1").await;
    let frontend_feature = HttpBackend::start("frontend-myfeature-5f6b8-feat1").await;
    let ads = GrpcBackend::start("adservice-6c8f-main1").await;
    let ads_feature = GrpcBackend::start("adservice-myfeature-9a1b-feat1").await;
    let config = bootstrap(
        vec![
            https_listener(
                "shops",
                routes_from_istio(&rendered_cookie_routes()),
                &certificates,
            ),
            https_listener(
                "adss",
                routes_from_istio(&rendered_userid_routes()),
                &certificates,
            ),
        ],
        vec![
            cluster("frontend", &[frontend.addr], false, None),
            cluster("frontend-myfeature", &[frontend_feature.addr], false, None),
            cluster("adservice", &[ads.addr], true, None),
            cluster("adservice-myfeature", &[ads_feature.addr], true, None),
        ],
    );
    let envoy = Envoy::start(&envoy, &config).await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &pki.ca_pem).unwrap();
    let ca = ca.to_str().unwrap();
    let shops = envoy.listener("shops");
    let adss = envoy.listener("adss");
    let shop_url = format!("https://{SHOP}:{}/", shops.port());
    let shop_resolve = format!("{SHOP}:{}:{}", shops.port(), shops.ip());
    let ads_url = format!("https://{SHOP}:{}", adss.port());
    let ads_resolve = format!("{SHOP}:{}:{}", adss.port(), adss.ip());
    let cookie_args = [
        "probe",
        "routing",
        &shop_url,
        "--resolve",
        &shop_resolve,
        "--session",
        SESSION,
        "--feature-label",
        "^frontend-myfeature-",
        "--requests",
        "5",
        "--timeout",
        "2s",
    ];

    let (code, stdout, stderr) = cdcheck(&[&cookie_args[..], &["--cacert", ca]].concat()).await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout.lines().last().unwrap().starts_with("routing: PASS"),
        "{stdout}"
    );

    let (code, stdout, stderr) = cdcheck(&[
        "probe",
        "routing",
        &ads_url,
        "--grpc",
        "--resolve",
        &ads_resolve,
        "--cacert",
        ca,
        "--session",
        SESSION,
        "--feature-label",
        "^adservice-myfeature-",
        "--attribution",
        "header:x-served-by",
        "--requests",
        "5",
        "--json",
    ])
    .await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    let out: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(out["passed"], true, "{out}");
    assert_eq!(variants(&out).len(), 4);

    // Without the CA nothing is answered: every variant fails as unattributed, none leaks.
    let (code, stdout, stderr) = cdcheck(&cookie_args).await;
    println!("{stdout}");
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert_eq!(
        stdout.lines().last().unwrap(),
        "routing: FAIL: every variant had failed or unattributed answers"
    );
    assert!(stdout.contains("\"failed: tls\": 5"), "{stdout}");
}

#[rstest]
#[case::invalid_session(&["http://127.0.0.1:1/", "--session", "a;b", "--feature-label", "x"], &["--session", "a;b"])]
#[case::invalid_attribution_spec(&["http://127.0.0.1:1/", "--session", "abc", "--feature-label", "x", "--attribution", "cookie:x"], &["attribution", "`cookie:x`"])]
#[case::invalid_attribution_regex(&["http://127.0.0.1:1/", "--session", "abc", "--feature-label", "x", "--attribution", "body:Pod: ("], &["attribution regex", "`Pod: (`"])]
#[case::invalid_feature_label(&["http://127.0.0.1:1/", "--session", "abc", "--feature-label", "frontend-("], &["--feature-label", "`frontend-(`"])]
#[case::invalid_url(&["not a url", "--session", "abc", "--feature-label", "x"], &["`not a url`"])]
#[case::invalid_grpc_endpoint(&["ftp://127.0.0.1:1", "--grpc", "--session", "abc", "--feature-label", "x", "--attribution", "header:x-served-by"], &["`ftp://127.0.0.1:1`"])]
#[case::grpc_without_attribution(&["http://127.0.0.1:1", "--grpc", "--session", "abc", "--feature-label", "x"], &["--attribution"])]
#[case::zero_requests(&["http://127.0.0.1:1/", "--session", "abc", "--feature-label", "x", "--requests", "0"], &["--requests 0"])]
#[case::invalid_resolve(&["http://127.0.0.1:1/", "--session", "abc", "--feature-label", "x", "--resolve", "shop.test:443"], &["`shop.test:443`"])]
#[case::missing_cacert(&["https://127.0.0.1:1/", "--session", "abc", "--feature-label", "x", "--cacert", "/nonexistent/ca.pem"], &["`/nonexistent/ca.pem`"])]
#[case::invalid_timeout(&["http://127.0.0.1:1/", "--session", "abc", "--feature-label", "x", "--timeout", "soon"], &["`soon`"])]
#[tokio::test]
async fn probe_routing_refuses_bad_input_naming_it_with_nothing_on_stdout(
    #[case] args: &[&str],
    #[case] named: &[&str],
) {
    let (code, stdout, stderr) = cdcheck(&[&["probe", "routing"], args].concat()).await;
    assert_eq!(code, 2, "{stderr}");
    assert_eq!(stdout, "");
    assert!(stderr.starts_with("error: failed to "), "{stderr}");
    for name in named {
        assert!(stderr.contains(name), "{name} not in {stderr}");
    }
}
