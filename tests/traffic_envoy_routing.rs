//! Session routing through a real Envoy whose routes are the `frontend` and `adservice`
//! VirtualServices that `cdcheck render --session` prints (hosts, matches and order as
//! rendered, translated the way Istio does), and the same VirtualServices edited into the
//! mistakes the probe must catch: a sloppier match, and the session route after the default.

mod support_envoy;

use std::time::Duration;

use cdcheck::manifests::routing::SessionId;
use cdcheck::traffic::attribution::AttributionRule;
use cdcheck::traffic::caller::Caller;
use cdcheck::traffic::load::{self, LoadSpec};
use cdcheck::traffic::record::Outcome;
use cdcheck::traffic::routing::{RoutingProbe, RoutingReport, cookie_variants, userid_variants};
use cdcheck::traffic::target::{GrpcMethod, GrpcTarget, HttpTarget, HttpVersion, Target};
use regex::Regex;
use serde_json::{Value, json};
use support_envoy::{
    ADS_HOST, Envoy, GrpcBackend, HttpBackend, SERVED_BY, SHOP_HOST, bootstrap, cluster,
    envoy_or_skip, http_listener_with_hosts, move_session_route_last, render_virtual_services,
    service_cluster, set_session_match, virtual_host,
};

const SESSION: &str = "3f1c9d2e-abc";
const PER_VARIANT: u64 = 20;

fn session() -> SessionId {
    SessionId::parse(SESSION).unwrap()
}

/// The variants that must reach the feature.
const SESSION_VARIANTS: [&str; 3] = [
    "session alone",
    "session among other cookies",
    "session last after other cookies",
];

struct CookieBench {
    envoy: Envoy,
    _mainline: HttpBackend,
    _feature: HttpBackend,
}

impl CookieBench {
    /// `/` of the shop as a browser asks for it: by the ingress host name.
    fn shop(&self) -> HttpTarget {
        let listener = self.envoy.listener("shop");
        let mut target =
            HttpTarget::parse(&format!("http://{SHOP_HOST}:{}/", listener.port())).unwrap();
        target.resolve = vec![(SHOP_HOST.to_string(), listener)];
        target
    }
}

/// Envoy serving `frontend` (a rendered VirtualService document, possibly edited) in front
/// of a mainline and a feature backend behind the clusters of the Services the test expects.
async fn cookie_bench(envoy: &std::path::Path, frontend: &Value) -> CookieBench {
    let mainline = HttpBackend::start("frontend-7d9c5-main1").await;
    let feature = HttpBackend::start("frontend-myfeature-5f6b8-feat1").await;
    let config = bootstrap(
        vec![http_listener_with_hosts(
            "shop",
            vec![virtual_host(frontend)],
        )],
        vec![
            cluster(
                &service_cluster("frontend", 80),
                &[mainline.addr],
                false,
                None,
            ),
            cluster(
                &service_cluster("frontend-myfeature", 80),
                &[feature.addr],
                false,
                None,
            ),
        ],
    );
    CookieBench {
        envoy: Envoy::start(envoy, &config).await,
        _mainline: mainline,
        _feature: feature,
    }
}

fn frontend_probe() -> RoutingProbe {
    RoutingProbe {
        per_variant: PER_VARIANT,
        attribution: AttributionRule::frontend_pod(),
        feature_label: Regex::new("^frontend-myfeature-").unwrap(),
        mainline_label: Regex::new("^frontend-[a-z0-9]+-[a-z0-9]+$").unwrap(),
    }
}

fn assert_only_session_variants_leaked(report: &RoutingReport) {
    assert!(!report.passed, "{report}");
    assert_eq!(report.failed_variants(), SESSION_VARIANTS, "{report}");
    for name in SESSION_VARIANTS {
        let variant = report.variant(name).unwrap();
        assert_eq!(variant.leaked, PER_VARIANT, "{name}: {report}");
        assert_eq!(
            variant.distribution.get("frontend-7d9c5-main1"),
            Some(&PER_VARIANT),
            "{name}: {report}"
        );
    }
}

#[tokio::test]
async fn rendered_frontend_virtual_service_routes_only_the_session_to_the_feature_in_envoy() {
    let Some(envoy) = envoy_or_skip(
        "rendered_frontend_virtual_service_routes_only_the_session_to_the_feature_in_envoy",
    ) else {
        return;
    };
    let rendered = render_virtual_services(SESSION);
    let bench = cookie_bench(&envoy, &rendered.frontend).await;

    let report = frontend_probe()
        .run_cookies(&bench.shop(), &cookie_variants(&session()))
        .await
        .unwrap();
    println!("{report}");
    assert!(
        report.passed,
        "failed variants: {:?}\n{report}",
        report.failed_variants()
    );
    for name in SESSION_VARIANTS {
        let variant = report.variant(name).unwrap();
        assert_eq!(
            variant.distribution.get("frontend-myfeature-5f6b8-feat1"),
            Some(&PER_VARIANT),
            "{name}"
        );
    }
    // The look-alikes of the session land on mainline: the rendered regex is anchored.
    for name in [
        "id plus one character",
        "prefix of the id",
        "id inside another cookie's value",
    ] {
        let variant = report.variant(name).unwrap();
        assert_eq!(
            variant.distribution.get("frontend-7d9c5-main1"),
            Some(&PER_VARIANT),
            "{name}"
        );
    }
    let look_alike = report.variant("id plus one character").unwrap();
    let bound = look_alike.leak_rate_upper_bound_95.unwrap();
    assert!((bound - (1.0 - 0.05_f64.powf(1.0 / PER_VARIANT as f64))).abs() < 1e-12);

    // The routes belong to the rendered host: by another name the shop is not there.
    let mut elsewhere = bench.shop();
    elsewhere.url = format!("http://{}/", bench.envoy.listener("shop"))
        .parse()
        .unwrap();
    let caller = Caller::new(&Target::Http(elsewhere)).unwrap();
    let result = caller.call(uuid::Uuid::new_v4(), None).await;
    assert_eq!(result.outcome, Outcome::Http { status: 404 });
}

#[tokio::test]
async fn rendered_cookie_route_matches_split_http2_cookie_crumbs_in_envoy() {
    let Some(envoy) =
        envoy_or_skip("rendered_cookie_route_matches_split_http2_cookie_crumbs_in_envoy")
    else {
        return;
    };
    let rendered = render_virtual_services(SESSION);
    let bench = cookie_bench(&envoy, &rendered.frontend).await;
    let mut target = bench.shop();
    target.version = HttpVersion::Http2;
    // Two `cookie` fields: HTTP/2 lets a client split cookies into crumbs; Envoy joins them.
    target = target
        .with_header("cookie: theme=dark")
        .unwrap()
        .with_header(&format!("cookie: shop_session-id={SESSION}"))
        .unwrap();
    let caller = Caller::new(&Target::Http(target)).unwrap();
    let result = caller
        .call(uuid::Uuid::new_v4(), Some(&AttributionRule::frontend_pod()))
        .await;
    assert_eq!(
        result.label.as_deref(),
        Some("frontend-myfeature-5f6b8-feat1"),
        "{result:?}"
    );
}

#[tokio::test]
async fn unanchored_cookie_regex_is_caught_leaking_look_alike_sessions() {
    let Some(envoy) =
        envoy_or_skip("unanchored_cookie_regex_is_caught_leaking_look_alike_sessions")
    else {
        return;
    };
    let mut frontend = render_virtual_services(SESSION).frontend;
    set_session_match(
        &mut frontend,
        "cookie",
        json!({"regex": format!(".*shop_session-id={SESSION}.*")}),
    );
    let bench = cookie_bench(&envoy, &frontend).await;

    let report = frontend_probe()
        .run_cookies(&bench.shop(), &cookie_variants(&session()))
        .await
        .unwrap();
    println!("{report}");

    assert!(!report.passed);
    assert_eq!(
        report.failed_variants(),
        vec![
            "id plus one character",
            "id inside another cookie's name",
            "id inside another cookie's value",
        ]
    );
    for name in report.failed_variants() {
        let variant = report.variant(name).unwrap();
        assert_eq!(variant.leaked, PER_VARIANT, "{name}");
        assert_eq!(variant.leak_rate_upper_bound_95, None, "{name}");
    }
}

#[tokio::test]
async fn session_route_after_the_default_route_is_caught_sending_the_session_to_mainline() {
    let Some(envoy) = envoy_or_skip(
        "session_route_after_the_default_route_is_caught_sending_the_session_to_mainline",
    ) else {
        return;
    };
    let mut frontend = render_virtual_services(SESSION).frontend;
    move_session_route_last(&mut frontend);
    let bench = cookie_bench(&envoy, &frontend).await;

    let report = frontend_probe()
        .run_cookies(&bench.shop(), &cookie_variants(&session()))
        .await
        .unwrap();
    println!("{report}");
    assert_only_session_variants_leaked(&report);
}

struct AdsBench {
    envoy: Envoy,
    _mainline: GrpcBackend,
    _feature: GrpcBackend,
}

impl AdsBench {
    /// `GetAds` as the frontend's sidecar sends it: to the adservice Service's name.
    fn get_ads(&self) -> GrpcTarget {
        let listener = self.envoy.listener("ads");
        let mut target = GrpcTarget::new(
            &format!("http://{ADS_HOST}:{}", listener.port()),
            GrpcMethod::GetAds {
                context_keys: vec!["clothing".into()],
            },
        )
        .unwrap();
        target.resolve = vec![(ADS_HOST.to_string(), listener)];
        target
    }
}

async fn ads_bench(envoy: &std::path::Path, adservice: &Value) -> AdsBench {
    let mainline = GrpcBackend::start("adservice-6c8f-main1").await;
    let feature = GrpcBackend::start("adservice-myfeature-9a1b-feat1").await;
    let config = bootstrap(
        vec![http_listener_with_hosts(
            "ads",
            vec![virtual_host(adservice)],
        )],
        vec![
            cluster(
                &service_cluster("adservice", 9555),
                &[mainline.addr],
                true,
                None,
            ),
            cluster(
                &service_cluster("adservice-myfeature", 9555),
                &[feature.addr],
                true,
                None,
            ),
        ],
    );
    AdsBench {
        envoy: Envoy::start(envoy, &config).await,
        _mainline: mainline,
        _feature: feature,
    }
}

fn ads_probe() -> RoutingProbe {
    RoutingProbe {
        per_variant: PER_VARIANT,
        attribution: AttributionRule::header(SERVED_BY).unwrap(),
        feature_label: Regex::new("^adservice-myfeature-").unwrap(),
        mainline_label: Regex::new("^adservice-[a-z0-9]+-[a-z0-9]+$").unwrap(),
    }
}

#[tokio::test]
async fn rendered_adservice_virtual_service_routes_the_userid_to_the_feature_over_http2() {
    let Some(envoy) = envoy_or_skip(
        "rendered_adservice_virtual_service_routes_the_userid_to_the_feature_over_http2",
    ) else {
        return;
    };
    let rendered = render_virtual_services(SESSION);
    let bench = ads_bench(&envoy, &rendered.adservice).await;

    let report = ads_probe()
        .run_userids(&bench.get_ads(), &userid_variants(&session()))
        .await
        .unwrap();
    println!("{report}");
    assert!(
        report.passed,
        "failed variants: {:?}\n{report}",
        report.failed_variants()
    );

    // The same route under load: every call of a closed-loop run carrying the userid is
    // attributed to the feature by its response metadata.
    let target = Target::Grpc(bench.get_ads().with_metadata("userid", SESSION).unwrap());
    let spec = LoadSpec::closed(2, Duration::from_millis(500))
        .with_attribution(AttributionRule::header(SERVED_BY).unwrap());
    let timeline = load::run(&target, &spec, None).await.unwrap();
    let summary = timeline.summary();
    assert!(summary.count > 0);
    assert_eq!(summary.failed, 0, "{summary}");
    assert_eq!(
        summary.labels.into_iter().collect::<Vec<_>>(),
        vec![("adservice-myfeature-9a1b-feat1".to_string(), summary.count)]
    );
}

#[tokio::test]
async fn userid_prefix_match_is_caught_leaking_a_look_alike_userid() {
    let Some(envoy) = envoy_or_skip("userid_prefix_match_is_caught_leaking_a_look_alike_userid")
    else {
        return;
    };
    let mut adservice = render_virtual_services(SESSION).adservice;
    set_session_match(&mut adservice, "userid", json!({"prefix": SESSION}));
    let bench = ads_bench(&envoy, &adservice).await;

    let report = ads_probe()
        .run_userids(&bench.get_ads(), &userid_variants(&session()))
        .await
        .unwrap();
    println!("{report}");
    assert!(!report.passed);
    assert_eq!(report.failed_variants(), vec!["userid plus one character"]);
    assert_eq!(
        report.variant("userid plus one character").unwrap().leaked,
        PER_VARIANT
    );
}

#[tokio::test]
async fn userid_route_after_the_default_route_is_caught_sending_the_session_to_mainline() {
    let Some(envoy) = envoy_or_skip(
        "userid_route_after_the_default_route_is_caught_sending_the_session_to_mainline",
    ) else {
        return;
    };
    let mut adservice = render_virtual_services(SESSION).adservice;
    move_session_route_last(&mut adservice);
    let bench = ads_bench(&envoy, &adservice).await;

    let report = ads_probe()
        .run_userids(&bench.get_ads(), &userid_variants(&session()))
        .await
        .unwrap();
    println!("{report}");
    assert!(!report.passed);
    assert_eq!(report.failed_variants(), vec!["userid of the session"]);
    let variant = report.variant("userid of the session").unwrap();
    assert_eq!(variant.leaked, PER_VARIANT);
    assert_eq!(
        variant.distribution.get("adservice-6c8f-main1"),
        Some(&PER_VARIANT)
    );
}
