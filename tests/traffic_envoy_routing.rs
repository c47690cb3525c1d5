//! Session routing through a real Envoy: the VirtualService routes `manifests` renders (the
//! anchored cookie regex, the exact `userid` match, the default route last), translated to
//! Envoy routes the way Istio does, each next to a sloppier match that the look-alike
//! variants catch leaking.

mod support_envoy;

use std::time::Duration;

use cdcheck::manifests::istio::{HttpMatchRequest, HttpRoute, StringMatch};
use cdcheck::manifests::routing::{
    SessionId, cookie_session_route, default_route, session_cookie_regex, userid_session_route,
};
use cdcheck::traffic::attribution::AttributionRule;
use cdcheck::traffic::load::{self, LoadSpec};
use cdcheck::traffic::routing::{RoutingProbe, cookie_variants, userid_variants};
use cdcheck::traffic::target::{Caller, GrpcMethod, GrpcTarget, HttpTarget, HttpVersion, Target};
use regex::Regex;
use support_envoy::{
    Envoy, GrpcBackend, HttpBackend, SERVED_BY, bootstrap, cluster, envoy_or_skip, http_listener,
    routes_from_istio,
};

const PER_VARIANT: u64 = 20;

fn session() -> SessionId {
    SessionId::parse("3f1c9d2e-abc").unwrap()
}

struct CookieBench {
    envoy: Envoy,
    _mainline: HttpBackend,
    _feature: HttpBackend,
}

/// The routes `manifests` renders for the session: the cookie route, then the default.
fn rendered_cookie_routes() -> Vec<HttpRoute> {
    vec![
        cookie_session_route(&session(), "frontend-myfeature", 80),
        default_route("frontend", 80),
    ]
}

/// The same routes with the session route's anchored regex replaced by `regex`.
fn cookie_routes_with_regex(regex: &str) -> Vec<HttpRoute> {
    let mut routes = rendered_cookie_routes();
    routes[0].matches = vec![HttpMatchRequest {
        headers: [("cookie".to_string(), StringMatch::Regex(regex.to_string()))].into(),
    }];
    routes
}

async fn cookie_bench(envoy: &std::path::Path, routes: &[HttpRoute]) -> CookieBench {
    let mainline = HttpBackend::start("frontend-7d9c5-main1").await;
    let feature = HttpBackend::start("frontend-myfeature-5f6b8-feat1").await;
    let config = bootstrap(
        vec![http_listener("shop", routes_from_istio(routes))],
        vec![
            cluster("frontend", &[mainline.addr], false, None),
            cluster("frontend-myfeature", &[feature.addr], false, None),
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
    }
}

#[tokio::test]
async fn rendered_cookie_regex_routes_only_the_session_to_the_feature_in_envoy() {
    let Some(envoy) =
        envoy_or_skip("rendered_cookie_regex_routes_only_the_session_to_the_feature_in_envoy")
    else {
        return;
    };
    // What Envoy gets is the VirtualService's own match: the anchored session regex.
    assert_eq!(
        rendered_cookie_routes()[0].matches[0].headers["cookie"],
        StringMatch::Regex(session_cookie_regex(&session()))
    );
    let bench = cookie_bench(&envoy, &rendered_cookie_routes()).await;
    let base = HttpTarget::parse(&format!("http://{}/", bench.envoy.listener("shop"))).unwrap();

    let report = frontend_probe()
        .run_cookies(&base, &cookie_variants(&session()))
        .await
        .unwrap();
    println!("{report}");

    assert!(
        report.passed,
        "failed variants: {:?}\n{report}",
        report.failed_variants()
    );
    let alone = report.variant("session alone").unwrap();
    assert_eq!(alone.reached_expected, PER_VARIANT);
    let look_alike = report.variant("id plus one character").unwrap();
    assert_eq!(look_alike.leaked, 0);
    let bound = look_alike.leak_rate_upper_bound_95.unwrap();
    assert!((bound - (1.0 - 0.05_f64.powf(1.0 / PER_VARIANT as f64))).abs() < 1e-12);
}

#[tokio::test]
async fn rendered_cookie_regex_matches_split_http2_cookie_crumbs_in_envoy() {
    let Some(envoy) =
        envoy_or_skip("rendered_cookie_regex_matches_split_http2_cookie_crumbs_in_envoy")
    else {
        return;
    };
    let bench = cookie_bench(&envoy, &rendered_cookie_routes()).await;
    let mut target =
        HttpTarget::parse(&format!("http://{}/", bench.envoy.listener("shop"))).unwrap();
    target.version = HttpVersion::Http2;
    // Two `cookie` fields: HTTP/2 lets a client split cookies into crumbs; Envoy joins them.
    target = target
        .with_header("cookie: theme=dark")
        .unwrap()
        .with_header(&format!("cookie: shop_session-id={}", session()))
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
    let unanchored = format!(".*shop_session-id={}.*", session());
    let bench = cookie_bench(&envoy, &cookie_routes_with_regex(&unanchored)).await;
    let base = HttpTarget::parse(&format!("http://{}/", bench.envoy.listener("shop"))).unwrap();

    let report = frontend_probe()
        .run_cookies(&base, &cookie_variants(&session()))
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

struct AdsBench {
    envoy: Envoy,
    _mainline: GrpcBackend,
    _feature: GrpcBackend,
}

/// The routes `manifests` renders for the session's gRPC calls: `userid`, then the default.
fn rendered_userid_routes() -> Vec<HttpRoute> {
    vec![
        userid_session_route(&session(), "adservice-myfeature", 9555),
        default_route("adservice", 9555),
    ]
}

async fn ads_bench(envoy: &std::path::Path, routes: &[HttpRoute]) -> AdsBench {
    let mainline = GrpcBackend::start("adservice-6c8f-main1").await;
    let feature = GrpcBackend::start("adservice-myfeature-9a1b-feat1").await;
    let config = bootstrap(
        vec![http_listener("ads", routes_from_istio(routes))],
        vec![
            cluster("adservice", &[mainline.addr], true, None),
            cluster("adservice-myfeature", &[feature.addr], true, None),
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
    }
}

fn get_ads(bench: &AdsBench) -> GrpcTarget {
    GrpcTarget::new(
        &format!("http://{}", bench.envoy.listener("ads")),
        GrpcMethod::GetAds {
            context_keys: vec!["clothing".into()],
        },
    )
    .unwrap()
}

#[tokio::test]
async fn userid_metadata_routes_grpc_calls_to_the_feature_through_envoy_over_http2() {
    let Some(envoy) =
        envoy_or_skip("userid_metadata_routes_grpc_calls_to_the_feature_through_envoy_over_http2")
    else {
        return;
    };
    let bench = ads_bench(&envoy, &rendered_userid_routes()).await;

    let report = ads_probe()
        .run_userids(&get_ads(&bench), &userid_variants(&session()))
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
    let target = Target::Grpc(
        get_ads(&bench)
            .with_metadata("userid", session().as_str())
            .unwrap(),
    );
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
    let mut routes = rendered_userid_routes();
    routes[0].matches = vec![HttpMatchRequest {
        headers: [(
            "userid".to_string(),
            StringMatch::Prefix(session().as_str().to_string()),
        )]
        .into(),
    }];
    let bench = ads_bench(&envoy, &routes).await;

    let report = ads_probe()
        .run_userids(&get_ads(&bench), &userid_variants(&session()))
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
