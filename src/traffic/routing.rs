//! The session-routing probe: N requests per variant, each variant's label distribution,
//! and a 95% upper bound on the leak rate when nothing leaked.

use std::collections::BTreeMap;

use regex::Regex;
use serde::Serialize;

use super::TrafficError;
use super::attribution::AttributionRule;
use super::caller::Caller;
use super::target::{GrpcTarget, HttpTarget, Target};
use super::verdict::zero_leak_upper_bound_95;
use crate::manifests::routing::{SESSION_COOKIE, SessionId, USERID_METADATA};

/// Which workload a variant must reach.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    /// The feature deployment (the session's route).
    Feature,
    /// The mainline deployment (the default route).
    Mainline,
}

/// What a variant puts on the request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Carrier {
    /// This `cookie` header, or none.
    Cookie { header: Option<String> },
    /// This `userid` metadata, or none.
    Userid { value: Option<String> },
}

/// One way of sending a request, and where it must land.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Variant {
    pub name: String,
    pub carrier: Carrier,
    pub expected: Side,
}

fn cookie(name: &str, header: Option<String>, expected: Side) -> Variant {
    Variant {
        name: name.to_string(),
        carrier: Carrier::Cookie { header },
        expected,
    }
}

/// The cookie variants: the session alone, among other cookies, absent, and look-alikes.
pub fn cookie_variants(session: &SessionId) -> Vec<Variant> {
    let id = session.as_str();
    let prefix: String = id
        .chars()
        .take(id.chars().count().saturating_sub(1))
        .collect();
    let mut variants = vec![
        cookie(
            "session alone",
            Some(format!("{SESSION_COOKIE}={id}")),
            Side::Feature,
        ),
        cookie(
            "session among other cookies",
            Some(format!("theme=dark; {SESSION_COOKIE}={id}; currency=EUR")),
            Side::Feature,
        ),
        cookie(
            "session last after other cookies",
            Some(format!("theme=dark;{SESSION_COOKIE}={id}")),
            Side::Feature,
        ),
        cookie("no cookie", None, Side::Mainline),
        cookie(
            "other cookies only",
            Some("theme=dark; currency=EUR".to_string()),
            Side::Mainline,
        ),
        cookie(
            "id plus one character",
            Some(format!("{SESSION_COOKIE}={id}x")),
            Side::Mainline,
        ),
        cookie(
            "id inside another cookie's name",
            Some(format!("x{SESSION_COOKIE}={id}")),
            Side::Mainline,
        ),
        cookie(
            "id inside another cookie's value",
            Some(format!("a={SESSION_COOKIE}={id}")),
            Side::Mainline,
        ),
        cookie(
            "another session",
            Some(format!("{SESSION_COOKIE}=other-{id}")),
            Side::Mainline,
        ),
    ];
    if !prefix.is_empty() {
        variants.insert(
            6,
            cookie(
                "prefix of the id",
                Some(format!("{SESSION_COOKIE}={prefix}")),
                Side::Mainline,
            ),
        );
    }
    variants
}

/// The gRPC variants: with the session's `userid`, without, and look-alikes.
pub fn userid_variants(session: &SessionId) -> Vec<Variant> {
    let id = session.as_str();
    let userid = |name: &str, value: Option<String>, expected| Variant {
        name: name.to_string(),
        carrier: Carrier::Userid { value },
        expected,
    };
    let mut variants = vec![
        userid("userid of the session", Some(id.to_string()), Side::Feature),
        userid("no userid", None, Side::Mainline),
        userid(
            "userid plus one character",
            Some(format!("{id}x")),
            Side::Mainline,
        ),
    ];
    if id.len() > 1 {
        variants.push(userid(
            "prefix of the userid",
            Some(id[..id.len() - 1].to_string()),
            Side::Mainline,
        ));
    }
    variants
}

/// How the probe tells the feature workload from the mainline one by label.
#[derive(Clone, Debug)]
pub struct RoutingProbe {
    /// Requests per variant.
    pub per_variant: u64,
    pub attribution: AttributionRule,
    /// Labels matching this regex are the feature workload.
    pub feature_label: Regex,
    /// Labels matching this regex, and not `feature_label`, are the mainline workload (the
    /// feature is tried first, so `^frontend-` may stand for mainline beside
    /// `^frontend-myfeature-`). A label matching neither is an unknown workload: it fails
    /// the variant whichever side it expected.
    pub mainline_label: Regex,
}

impl RoutingProbe {
    /// Which workload `label` names, `None` when neither pattern matches it.
    pub fn side_of(&self, label: &str) -> Option<Side> {
        if self.feature_label.is_match(label) {
            Some(Side::Feature)
        } else if self.mainline_label.is_match(label) {
            Some(Side::Mainline)
        } else {
            None
        }
    }
}

/// One variant's results.
#[derive(Clone, Debug, Serialize)]
pub struct VariantReport {
    pub variant: Variant,
    pub sent: u64,
    /// Answers per label; failed requests count under `failed: <outcome>`, answers
    /// without a label under `unattributed`.
    pub distribution: BTreeMap<String, u64>,
    pub reached_expected: u64,
    /// Answers attributed to the other side.
    pub leaked: u64,
    /// Answers whose label names neither the feature nor the mainline workload.
    pub unknown: u64,
    /// Requests that failed or could not be attributed.
    pub unattributed: u64,
    /// When nothing leaked or reached an unknown workload: the 95% upper bound on the leak
    /// rate, `1 - 0.05^(1/n)` over the attributed answers.
    pub leak_rate_upper_bound_95: Option<f64>,
    pub passed: bool,
}

/// Every variant's results.
#[derive(Clone, Debug, Serialize)]
pub struct RoutingReport {
    pub variants: Vec<VariantReport>,
    pub passed: bool,
}

impl RoutingReport {
    /// A report of these variants' results (run one at a time, e.g. to show progress):
    /// passed when there is at least one and every one passed.
    pub fn from_variants(variants: Vec<VariantReport>) -> Self {
        let passed = !variants.is_empty() && variants.iter().all(|r| r.passed);
        Self { variants, passed }
    }

    pub fn variant(&self, name: &str) -> Option<&VariantReport> {
        self.variants.iter().find(|v| v.variant.name == name)
    }

    /// The names of the variants that did not pass.
    pub fn failed_variants(&self) -> Vec<&str> {
        self.variants
            .iter()
            .filter(|v| !v.passed)
            .map(|v| v.variant.name.as_str())
            .collect()
    }
}

impl std::fmt::Display for RoutingReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for v in &self.variants {
            let bound = v
                .leak_rate_upper_bound_95
                .map(|b| format!(", leak rate < {:.2}% (95%)", b * 100.0))
                .unwrap_or_default();
            writeln!(
                f,
                "{:<4} {:<36} expect {:<8} {}/{} reached it, {} leaked{}{} {:?}",
                if v.passed { "ok" } else { "FAIL" },
                v.variant.name,
                format!("{:?}", v.variant.expected).to_lowercase(),
                v.reached_expected,
                v.sent,
                v.leaked,
                if v.unknown > 0 {
                    format!(", {} reached an unknown workload", v.unknown)
                } else {
                    String::new()
                },
                bound,
                v.distribution
            )?;
        }
        Ok(())
    }
}

impl RoutingProbe {
    /// Sends `per_variant` requests for each cookie variant to `base` (its own cookie
    /// header is replaced by the variant's).
    pub async fn run_cookies(
        &self,
        base: &HttpTarget,
        variants: &[Variant],
    ) -> Result<RoutingReport, TrafficError> {
        let mut targets = Vec::new();
        for variant in variants {
            let mut target = base.clone();
            target.headers.remove(http::header::COOKIE);
            match &variant.carrier {
                Carrier::Cookie { header: Some(h) } => target = target.with_cookie(h)?,
                Carrier::Cookie { header: None } => {}
                Carrier::Userid { .. } => {
                    return Err(TrafficError::InvalidLoad {
                        reason: format!("variant `{}` is not a cookie variant", variant.name),
                    });
                }
            }
            targets.push((variant.clone(), Target::Http(target)));
        }
        self.run(targets).await
    }

    /// Sends `per_variant` calls for each `userid` variant to `base`.
    pub async fn run_userids(
        &self,
        base: &GrpcTarget,
        variants: &[Variant],
    ) -> Result<RoutingReport, TrafficError> {
        let mut targets = Vec::new();
        for variant in variants {
            let mut target = base.clone();
            target
                .metadata
                .retain(|(k, _)| k.as_str() != USERID_METADATA);
            match &variant.carrier {
                Carrier::Userid { value: Some(v) } => {
                    target = target.with_metadata(USERID_METADATA, v)?
                }
                Carrier::Userid { value: None } => {}
                Carrier::Cookie { .. } => {
                    return Err(TrafficError::InvalidLoad {
                        reason: format!("variant `{}` is not a userid variant", variant.name),
                    });
                }
            }
            targets.push((variant.clone(), Target::Grpc(target)));
        }
        self.run(targets).await
    }

    async fn run(&self, targets: Vec<(Variant, Target)>) -> Result<RoutingReport, TrafficError> {
        let mut reports = Vec::new();
        for (variant, target) in targets {
            let caller = Caller::new(&target)?;
            let mut distribution = BTreeMap::new();
            let (mut reached_expected, mut leaked, mut unknown, mut unattributed) = (0, 0, 0, 0);
            for _ in 0..self.per_variant {
                let result = caller
                    .call(uuid::Uuid::new_v4(), Some(&self.attribution))
                    .await;
                let key = match (&result.label, result.outcome.is_success()) {
                    (Some(label), true) => {
                        match self.side_of(label) {
                            Some(side) if side == variant.expected => reached_expected += 1,
                            Some(_) => leaked += 1,
                            None => unknown += 1,
                        }
                        label.clone()
                    }
                    (None, true) => {
                        unattributed += 1;
                        "unattributed".to_string()
                    }
                    (_, false) => {
                        unattributed += 1;
                        format!("failed: {}", result.outcome)
                    }
                };
                *distribution.entry(key).or_insert(0) += 1;
            }
            let attributed = reached_expected + leaked;
            reports.push(VariantReport {
                passed: leaked == 0 && unknown == 0 && unattributed == 0 && self.per_variant > 0,
                leak_rate_upper_bound_95: if leaked == 0 && unknown == 0 {
                    zero_leak_upper_bound_95(attributed)
                } else {
                    None
                },
                variant,
                sent: self.per_variant,
                distribution,
                reached_expected,
                leaked,
                unknown,
                unattributed,
            });
        }
        Ok(RoutingReport::from_variants(reports))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookie_variants_cover_alone_among_absent_and_look_alikes() {
        let session = SessionId::parse("abc").unwrap();
        let variants = cookie_variants(&session);
        let header = |name: &str| {
            let v = variants.iter().find(|v| v.name == name).unwrap();
            match &v.carrier {
                Carrier::Cookie { header } => (header.clone(), v.expected),
                Carrier::Userid { .. } => unreachable!(),
            }
        };
        assert_eq!(
            header("session alone"),
            (Some("shop_session-id=abc".into()), Side::Feature)
        );
        assert_eq!(header("no cookie"), (None, Side::Mainline));
        assert_eq!(
            header("id plus one character"),
            (Some("shop_session-id=abcx".into()), Side::Mainline)
        );
        assert_eq!(
            header("prefix of the id"),
            (Some("shop_session-id=ab".into()), Side::Mainline)
        );
        assert_eq!(
            header("id inside another cookie's name"),
            (Some("xshop_session-id=abc".into()), Side::Mainline)
        );
        assert_eq!(
            header("id inside another cookie's value"),
            (Some("a=shop_session-id=abc".into()), Side::Mainline)
        );
    }

    #[test]
    fn labels_are_feature_first_then_mainline_and_anything_else_is_unknown() {
        let probe = RoutingProbe {
            per_variant: 1,
            attribution: AttributionRule::frontend_pod(),
            feature_label: Regex::new("^frontend-myfeature-").unwrap(),
            mainline_label: Regex::new("^frontend-").unwrap(),
        };
        assert_eq!(
            probe.side_of("frontend-myfeature-5f6b8-x1"),
            Some(Side::Feature)
        );
        assert_eq!(probe.side_of("frontend-7d9c5-x1"), Some(Side::Mainline));
        assert_eq!(probe.side_of("checkoutservice-1-x1"), None);
    }

    #[test]
    fn the_session_regex_accepts_exactly_the_feature_variants() {
        let session = SessionId::parse("abc").unwrap();
        let regex = Regex::new(&crate::manifests::routing::session_cookie_regex(&session)).unwrap();
        for variant in cookie_variants(&session) {
            let Carrier::Cookie { header } = &variant.carrier else {
                unreachable!()
            };
            let matched = header.as_deref().is_some_and(|h| regex.is_match(h));
            assert_eq!(
                matched,
                variant.expected == Side::Feature,
                "{}: {header:?}",
                variant.name
            );
        }
    }
}
