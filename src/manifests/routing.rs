//! Session routes for feature branches: the cookie and `userid` matches, and their upsert.
//!
//! The pipeline's traffic-switching script adds a route per test session in front
//! of the default route. `upsert_session_route` is that script as a pure function.

use std::collections::BTreeMap;

use super::istio::{
    Destination, HttpMatchRequest, HttpRoute, HttpRouteDestination, PortSelector, StringMatch,
    VirtualServiceSpec,
};
use super::ManifestError;

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
