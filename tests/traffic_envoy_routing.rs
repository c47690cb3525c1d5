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
use cdcheck::traffic::target::{GrpcTarget, HttpTarget, HttpVersion, Target};
use regex::Regex;
use support_envoy::{
    ADS_FEATURE_LABEL, ADS_FEATURE_POD, ADS_HOST, ADS_MAINLINE_LABEL, ADS_POD,
    FRONTEND_FEATURE_LABEL, FRONTEND_FEATURE_POD, FRONTEND_MAINLINE_LABEL, FRONTEND_POD,
    RoutingBench, SERVED_BY, SHOP_HOST, adservice_with_userid_prefix_match,
    frontend_with_unanchored_cookie_regex, get_ads_by_name, http_target_by_name,
    move_session_route_last, render_virtual_services,
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

/// `/` of the shop as a browser asks for it: by the ingress host name.
fn shop(bench: &RoutingBench) -> HttpTarget {
    http_target_by_name("http", SHOP_HOST, bench.envoy.listener("shop"))
}

/// The cookie variants of the session through `bench`, attributed by the frontend's pod name.
async fn probe_cookies(bench: &RoutingBench) -> RoutingReport {
    let probe = RoutingProbe {
        per_variant: PER_VARIANT,
        attribution: AttributionRule::frontend_pod(),
        feature_label: Regex::new(FRONTEND_FEATURE_LABEL).unwrap(),
        mainline_label: Regex::new(FRONTEND_MAINLINE_LABEL).unwrap(),
    };
    let report = probe
        .run_cookies(&shop(bench), &cookie_variants(&session()))
        .await
        .unwrap();
    println!("{report}");
    report
}

fn assert_only_session_variants_leaked(report: &RoutingReport) {
    assert!(!report.passed, "{report}");
    assert_eq!(report.failed_variants(), SESSION_VARIANTS, "{report}");
    for name in SESSION_VARIANTS {
        let variant = report.variant(name).unwrap();
        assert_eq!(variant.leaked, PER_VARIANT, "{name}: {report}");
        assert_eq!(
            variant.distribution.get(FRONTEND_POD),
            Some(&PER_VARIANT),
            "{name}: {report}"
        );
    }
}

#[tokio::test]
async fn rendered_frontend_virtual_service_routes_only_the_session_to_the_feature_in_envoy() {
    let envoy = require_envoy!(
        "rendered_frontend_virtual_service_routes_only_the_session_to_the_feature_in_envoy"
    );
    let frontend = render_virtual_services(SESSION).frontend;
    let bench = RoutingBench::frontend(&envoy, &frontend, &[FRONTEND_POD]).await;

    let report = probe_cookies(&bench).await;
    assert!(
        report.passed,
        "failed variants: {:?}\n{report}",
        report.failed_variants()
    );
    for name in SESSION_VARIANTS {
        let variant = report.variant(name).unwrap();
        assert_eq!(
            variant.distribution.get(FRONTEND_FEATURE_POD),
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
            variant.distribution.get(FRONTEND_POD),
            Some(&PER_VARIANT),
            "{name}"
        );
    }
    let look_alike = report.variant("id plus one character").unwrap();
    let bound = look_alike.leak_rate_upper_bound_95.unwrap();
    assert!((bound - (1.0 - 0.05_f64.powf(1.0 / PER_VARIANT as f64))).abs() < 1e-12);

    // The routes belong to the rendered host: by another name the shop is not there.
    let mut elsewhere = shop(&bench);
    elsewhere.url = format!("http://{}/", bench.envoy.listener("shop"))
        .parse()
        .unwrap();
    let caller = Caller::new(&Target::Http(elsewhere)).unwrap();
    let result = caller.call(uuid::Uuid::new_v4(), None).await;
    assert_eq!(result.outcome, Outcome::Http { status: 404 });
}

#[tokio::test]
async fn rendered_cookie_route_matches_split_http2_cookie_crumbs_in_envoy() {
    let envoy = require_envoy!("rendered_cookie_route_matches_split_http2_cookie_crumbs_in_envoy");
    let frontend = render_virtual_services(SESSION).frontend;
    let bench = RoutingBench::frontend(&envoy, &frontend, &[FRONTEND_POD]).await;
    let mut target = shop(&bench);
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
        Some(FRONTEND_FEATURE_POD),
        "{result:?}"
    );
}

#[tokio::test]
async fn unanchored_cookie_regex_is_caught_leaking_look_alike_sessions() {
    let envoy = require_envoy!("unanchored_cookie_regex_is_caught_leaking_look_alike_sessions");
    let frontend = frontend_with_unanchored_cookie_regex(SESSION);
    let bench = RoutingBench::frontend(&envoy, &frontend, &[FRONTEND_POD]).await;

    let report = probe_cookies(&bench).await;

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
    let envoy = require_envoy!(
        "session_route_after_the_default_route_is_caught_sending_the_session_to_mainline"
    );
    let mut frontend = render_virtual_services(SESSION).frontend;
    move_session_route_last(&mut frontend);
    let bench = RoutingBench::frontend(&envoy, &frontend, &[FRONTEND_POD]).await;

    let report = probe_cookies(&bench).await;
    assert_only_session_variants_leaked(&report);
}

/// `GetAds` as the frontend's sidecar sends it: to the adservice Service's name.
fn get_ads(bench: &RoutingBench) -> GrpcTarget {
    get_ads_by_name("http", ADS_HOST, bench.envoy.listener("ads"))
}

/// The userid variants of the session through `bench`, attributed by the backend's
/// `x-served-by` metadata.
async fn probe_userids(bench: &RoutingBench) -> RoutingReport {
    let probe = RoutingProbe {
        per_variant: PER_VARIANT,
        attribution: AttributionRule::header(SERVED_BY).unwrap(),
        feature_label: Regex::new(ADS_FEATURE_LABEL).unwrap(),
        mainline_label: Regex::new(ADS_MAINLINE_LABEL).unwrap(),
    };
    let report = probe
        .run_userids(&get_ads(bench), &userid_variants(&session()))
        .await
        .unwrap();
    println!("{report}");
    report
}

#[tokio::test]
async fn rendered_adservice_virtual_service_routes_the_userid_to_the_feature_over_http2() {
    let envoy = require_envoy!(
        "rendered_adservice_virtual_service_routes_the_userid_to_the_feature_over_http2"
    );
    let bench = RoutingBench::adservice(&envoy, &render_virtual_services(SESSION).adservice).await;

    let report = probe_userids(&bench).await;
    assert!(
        report.passed,
        "failed variants: {:?}\n{report}",
        report.failed_variants()
    );

    // The same route under load: every call of a closed-loop run carrying the userid is
    // attributed to the feature by its response metadata.
    let target = Target::Grpc(get_ads(&bench).with_metadata("userid", SESSION).unwrap());
    let spec = LoadSpec::closed(2, Duration::from_millis(500))
        .with_attribution(AttributionRule::header(SERVED_BY).unwrap());
    let timeline = load::run(&target, &spec, None).await.unwrap();
    let summary = timeline.summary();
    assert!(summary.count > 0);
    assert_eq!(summary.failed, 0, "{summary}");
    assert_eq!(
        summary.labels.into_iter().collect::<Vec<_>>(),
        vec![(ADS_FEATURE_POD.to_string(), summary.count)]
    );
}

#[tokio::test]
async fn userid_prefix_match_is_caught_leaking_a_look_alike_userid() {
    let envoy = require_envoy!("userid_prefix_match_is_caught_leaking_a_look_alike_userid");
    let adservice = adservice_with_userid_prefix_match(SESSION);
    let bench = RoutingBench::adservice(&envoy, &adservice).await;

    let report = probe_userids(&bench).await;
    assert!(!report.passed);
    assert_eq!(report.failed_variants(), vec!["userid plus one character"]);
    assert_eq!(
        report.variant("userid plus one character").unwrap().leaked,
        PER_VARIANT
    );
}

#[tokio::test]
async fn userid_route_after_the_default_route_is_caught_sending_the_session_to_mainline() {
    let envoy = require_envoy!(
        "userid_route_after_the_default_route_is_caught_sending_the_session_to_mainline"
    );
    let mut adservice = render_virtual_services(SESSION).adservice;
    move_session_route_last(&mut adservice);
    let bench = RoutingBench::adservice(&envoy, &adservice).await;

    let report = probe_userids(&bench).await;
    assert!(!report.passed);
    assert_eq!(report.failed_variants(), vec!["userid of the session"]);
    let variant = report.variant("userid of the session").unwrap();
    assert_eq!(variant.leaked, PER_VARIANT);
    assert_eq!(variant.distribution.get(ADS_POD), Some(&PER_VARIANT));
}
