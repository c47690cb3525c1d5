//! Session routes for feature branches: the cookie and `userid` matches, and their upsert.
//!
//! The pipeline's traffic-switching script adds a route per test session in front
//! of the default route. `upsert_session_route` is that script as a pure function.

use std::collections::BTreeMap;

use super::ManifestError;
use super::istio::{
    Destination, HttpMatchRequest, HttpRoute, HttpRouteDestination, PortSelector, StringMatch,
    VirtualServiceSpec,
};

/// The frontend's session cookie.
pub const SESSION_COOKIE: &str = "shop_session-id";
/// The gRPC metadata key that carries the user id (lowercase: metadata arrives as HTTP/2 headers).
pub const USERID_METADATA: &str = "userid";
/// Name of the catch-all route that must stay last.
pub const DEFAULT_ROUTE: &str = "default";
/// Prefix of every session route's name.
pub const SESSION_ROUTE_PREFIX: &str = "session-";

/// A test session id: what the frontend issues (a UUID) or any short token of
/// letters, digits, `-` and `_`. Anything else is refused rather than escaped,
/// so that a route name, a cookie value and a gRPC metadata value all carry it verbatim.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct SessionId(String);

impl SessionId {
    pub fn parse(raw: &str) -> Result<Self, ManifestError> {
        let valid = !raw.is_empty()
            && raw.len() <= 128
            && raw
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if valid {
            Ok(Self(raw.to_string()))
        } else {
            Err(ManifestError::InvalidSessionId {
                value: raw.to_string(),
            })
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for SessionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The `cookie` header regex that matches exactly this session, anchored to
/// cookie boundaries: Envoy matches the whole value, so a bare
/// `.*shop_session-id=abc.*` would also route `abcd`.
pub fn session_cookie_regex(session: &SessionId) -> String {
    format!(
        r"^(.*;\s*)?{}={}(;.*)?$",
        regex::escape(SESSION_COOKIE),
        regex::escape(session.as_str())
    )
}

/// Route name for a session, stable so that an upsert can find and replace it.
pub fn session_route_name(session: &SessionId) -> String {
    format!("{SESSION_ROUTE_PREFIX}{session}")
}

/// An HTTP route sending the session's cookie to `host` (a feature Service).
pub fn cookie_session_route(session: &SessionId, host: &str, port: u32) -> HttpRoute {
    header_route(
        session,
        "cookie",
        StringMatch::Regex(session_cookie_regex(session)),
        host,
        port,
    )
}

/// A gRPC route sending calls whose `userid` metadata equals the session to `host`.
pub fn userid_session_route(session: &SessionId, host: &str, port: u32) -> HttpRoute {
    header_route(
        session,
        USERID_METADATA,
        StringMatch::Exact(session.as_str().to_string()),
        host,
        port,
    )
}

fn header_route(
    session: &SessionId,
    header: &str,
    matcher: StringMatch,
    host: &str,
    port: u32,
) -> HttpRoute {
    HttpRoute {
        name: session_route_name(session),
        matches: vec![HttpMatchRequest {
            headers: BTreeMap::from([(header.to_string(), matcher)]),
        }],
        route: vec![route_to(host, port)],
    }
}

/// The catch-all route to the mainline Service.
pub fn default_route(host: &str, port: u32) -> HttpRoute {
    HttpRoute {
        name: DEFAULT_ROUTE.to_string(),
        matches: Vec::new(),
        route: vec![route_to(host, port)],
    }
}

fn route_to(host: &str, port: u32) -> HttpRouteDestination {
    HttpRouteDestination {
        destination: Destination {
            host: host.to_string(),
            port: Some(PortSelector { number: port }),
        },
        weight: None,
    }
}

/// Adds `route`, or replaces the route of the same name in place, keeping every
/// other route and keeping the routes without a match (the default) last.
pub fn upsert_session_route(spec: &VirtualServiceSpec, route: HttpRoute) -> VirtualServiceSpec {
    let mut updated = spec.clone();
    if let Some(existing) = updated.http.iter_mut().find(|r| r.name == route.name) {
        *existing = route;
        return updated;
    }
    let first_catch_all = updated
        .http
        .iter()
        .position(|r| r.matches.is_empty())
        .unwrap_or(updated.http.len());
    updated.http.insert(first_catch_all, route);
    updated
}

/// Removes a session's route, if present, keeping everything else in order.
pub fn remove_session_route(spec: &VirtualServiceSpec, session: &SessionId) -> VirtualServiceSpec {
    let name = session_route_name(session);
    let mut updated = spec.clone();
    updated.http.retain(|r| r.name != name);
    updated
}

#[cfg(test)]
mod tests {
    use regex::Regex;
    use rstest::rstest;

    use super::*;

    fn id(s: &str) -> SessionId {
        SessionId::parse(s).unwrap()
    }

    /// Envoy matches the whole header value; our regex carries its own anchors,
    /// so Rust's `is_match` (same RE2 syntax) gives the same answer.
    fn routes(session: &str, cookie: &str) -> bool {
        Regex::new(&session_cookie_regex(&id(session)))
            .unwrap()
            .is_match(cookie)
    }

    #[rstest]
    #[case("shop_session-id=abc", true)]
    #[case("a=1; shop_session-id=abc", true)]
    #[case("shop_session-id=abc; b=2", true)]
    #[case("a=1; shop_session-id=abc; b=2", true)]
    #[case("a=1;shop_session-id=abc", true)]
    #[case("shop_session-id=abcd", false)]
    #[case("shop_session-id=ab", false)]
    #[case("xshop_session-id=abc", false)]
    #[case("a=shop_session-id=abc", false)]
    #[case("shop_session-id=xabc", false)]
    #[case("", false)]
    #[case("other=abc", false)]
    fn cookie_regex_matches_the_session_only(#[case] cookie: &str, #[case] expected: bool) {
        assert_eq!(routes("abc", cookie), expected, "cookie {cookie:?}");
    }

    #[test]
    fn unanchored_regex_would_leak_a_look_alike() {
        // The negative control: the naive form routes `abcd` too.
        let naive = Regex::new("^.*shop_session-id=abc.*$").unwrap();
        assert!(naive.is_match("shop_session-id=abcd"));
        assert!(!routes("abc", "shop_session-id=abcd"));
    }

    #[test]
    fn uuid_session_is_matched_with_its_dashes_escaped() {
        let uuid = "3f1c2a9e-0d1b-4c55-9a37-1b2c3d4e5f60";
        assert!(routes(uuid, &format!("x=y; shop_session-id={uuid}")));
        assert!(!routes(uuid, &format!("shop_session-id={uuid}0")));
    }

    #[rstest]
    #[case("a.b")]
    #[case(".*")]
    #[case("abc|def")]
    #[case("a;b")]
    #[case("a b")]
    #[case("(abc)")]
    #[case("")]
    fn session_id_with_regex_or_cookie_metacharacters_is_refused(#[case] raw: &str) {
        let error = SessionId::parse(raw).unwrap_err();
        assert!(error.to_string().contains(&format!("{raw:?}")), "{error}");
    }

    fn spec_with(routes: Vec<HttpRoute>) -> VirtualServiceSpec {
        VirtualServiceSpec {
            hosts: vec!["frontend".into()],
            gateways: vec![],
            http: routes,
        }
    }

    fn names(spec: &VirtualServiceSpec) -> Vec<&str> {
        spec.http.iter().map(|r| r.name.as_str()).collect()
    }

    #[rstest]
    #[case::first_session(vec![], "a", vec!["session-a", "default"])]
    #[case::second_session_keeps_the_first(vec!["a"], "b", vec!["session-a", "session-b", "default"])]
    #[case::same_session_is_replaced_in_place(vec!["a", "b"], "a", vec!["session-a", "session-b", "default"])]
    #[case::third_session(vec!["a", "b"], "c", vec!["session-a", "session-b", "session-c", "default"])]
    fn upsert_keeps_other_sessions_and_the_default_last(
        #[case] existing: Vec<&str>,
        #[case] added: &str,
        #[case] expected: Vec<&str>,
    ) {
        let mut spec = spec_with(vec![default_route("frontend", 80)]);
        for session in existing {
            spec =
                upsert_session_route(&spec, cookie_session_route(&id(session), "frontend-x", 80));
        }
        let updated =
            upsert_session_route(&spec, cookie_session_route(&id(added), "frontend-y", 80));
        assert_eq!(names(&updated), expected);
        let added_route = updated
            .http
            .iter()
            .find(|r| r.name == format!("session-{added}"))
            .unwrap();
        assert_eq!(added_route.route[0].destination.host, "frontend-y");
        assert!(
            updated.http.last().unwrap().matches.is_empty(),
            "default last"
        );
    }

    #[test]
    fn upsert_is_pure_and_leaves_the_input_untouched() {
        let spec = spec_with(vec![default_route("frontend", 80)]);
        let before = spec.clone();
        let _ = upsert_session_route(&spec, cookie_session_route(&id("a"), "frontend-x", 80));
        assert_eq!(spec, before);
    }

    #[test]
    fn upsert_into_a_spec_without_default_appends() {
        let spec = spec_with(vec![]);
        let updated =
            upsert_session_route(&spec, userid_session_route(&id("u1"), "adservice-x", 9555));
        assert_eq!(names(&updated), vec!["session-u1"]);
        let header = &updated.http[0].matches[0].headers[USERID_METADATA];
        assert_eq!(header, &StringMatch::Exact("u1".into()));
    }

    #[test]
    fn removing_a_session_keeps_the_others_in_order() {
        let mut spec = spec_with(vec![default_route("frontend", 80)]);
        for s in ["a", "b", "c"] {
            spec = upsert_session_route(&spec, cookie_session_route(&id(s), "f", 80));
        }
        let updated = remove_session_route(&spec, &id("b"));
        assert_eq!(names(&updated), vec!["session-a", "session-c", "default"]);
    }
}
