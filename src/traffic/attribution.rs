//! Attribution rules: name the workload that served a response from a header, the body, or gRPC metadata.

use std::sync::Arc;

use regex::Regex;

use super::TrafficError;

/// What a rule looks at: response headers (for gRPC, the response metadata with
/// the trailers merged in) and the body (for gRPC, a text rendering of the message).
#[derive(Clone, Copy, Debug)]
pub struct ResponseView<'a> {
    pub headers: &'a http::HeaderMap,
    pub body: &'a [u8],
}

/// A rule that labels a response by who served it.
#[derive(Clone, Debug)]
pub enum AttributionRule {
    /// The value of a response header, or of gRPC response metadata or a trailer
    /// (lowercase name, as it travels in HTTP/2).
    Header { name: http::HeaderName },
    /// The first capture group of a regex on the body, e.g. the frontend's `Pod: <name>`
    /// (the whole match when the regex has no group: only [`AttributionRule::parse_spec`]
    /// builds such a rule).
    BodyRegex { regex: Regex },
    /// The first rule that yields a label.
    FirstOf(Vec<AttributionRule>),
}

impl AttributionRule {
    /// A header (or gRPC metadata/trailer) rule; the name is lowercased.
    pub fn header(name: &str) -> Result<Self, TrafficError> {
        let name = http::HeaderName::from_bytes(name.trim().to_ascii_lowercase().as_bytes())
            .map_err(|_| TrafficError::InvalidHeader {
                value: name.to_string(),
            })?;
        Ok(Self::Header { name })
    }

    /// A body rule: the regex must have a capture group, whose text becomes the label.
    pub fn body_regex(pattern: &str) -> Result<Self, TrafficError> {
        let regex = Regex::new(pattern).map_err(|source| TrafficError::InvalidRegex {
            pattern: pattern.to_string(),
            source,
        })?;
        if regex.captures_len() < 2 {
            return Err(TrafficError::InvalidRegex {
                pattern: pattern.to_string(),
                source: regex::Error::Syntax("the pattern needs a capture group".to_string()),
            });
        }
        Ok(Self::BodyRegex { regex })
    }

    /// The Online Boutique frontend's footer, `Pod: <hostname>`. Upstream v0.10.6 renders
    /// `<b>Pod: </b>{{ HOSTNAME }}` (`templates/footer.html`), so tags may stand between the
    /// label and the name; the stand-in renders `Pod: <name>`.
    pub fn frontend_pod() -> Self {
        Self::body_regex(r"Pod:\s*(?:<[^>]*>\s*)*([A-Za-z0-9][A-Za-z0-9._-]*)")
            .expect("static regex is valid")
    }

    /// The frontend's `FRONTEND_MESSAGE` banner: the label is the banner text. Upstream
    /// v0.10.6 renders it as `<div class="h-free-shipping">…</div>` in the header
    /// (`templates/header.html`); releases before v0.4 used `<div class="local-banner">`.
    pub fn frontend_banner() -> Self {
        Self::body_regex(
            r#"(?s)class="[^"]*(?:h-free-shipping|local-banner)[^"]*"[^>]*>\s*(?:<[^>]*>\s*)*([^<]*?\S)\s*<"#,
        )
        .expect("static regex is valid")
    }

    /// Parses a rule as the command line spells it: `header:NAME` (a response header, or
    /// gRPC metadata or trailer), `body:REGEX` (its first capture group, or the whole match
    /// when it has none), `pod` ([`Self::frontend_pod`]) or `banner` ([`Self::frontend_banner`]).
    pub fn parse_spec(spec: &str) -> Result<Self, TrafficError> {
        let invalid = || TrafficError::InvalidAttribution {
            value: spec.to_string(),
        };
        match spec.trim().split_once(':') {
            None if spec.trim() == "pod" => Ok(Self::frontend_pod()),
            None if spec.trim() == "banner" => Ok(Self::frontend_banner()),
            Some(("header", name)) if !name.trim().is_empty() => {
                Self::header(name).map_err(|_| invalid())
            }
            Some(("body", pattern)) if !pattern.is_empty() => {
                let regex = Regex::new(pattern).map_err(|source| TrafficError::InvalidRegex {
                    pattern: pattern.to_string(),
                    source,
                })?;
                Ok(Self::BodyRegex { regex })
            }
            _ => Err(invalid()),
        }
    }

    /// Whether the rule needs the body (so the engine can skip reading it otherwise).
    pub fn needs_body(&self) -> bool {
        match self {
            Self::Header { .. } => false,
            Self::BodyRegex { .. } => true,
            Self::FirstOf(rules) => rules.iter().any(Self::needs_body),
        }
    }

    /// The label of a response, if the rule matches.
    pub fn label(&self, response: ResponseView<'_>) -> Option<String> {
        match self {
            Self::Header { name } => response
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty()),
            Self::BodyRegex { regex } => {
                let text = String::from_utf8_lossy(response.body);
                let group = usize::from(regex.captures_len() > 1);
                regex
                    .captures(&text)
                    .and_then(|c| c.get(group))
                    .map(|m| m.as_str().trim().to_string())
                    .filter(|v| !v.is_empty())
            }
            Self::FirstOf(rules) => rules.iter().find_map(|rule| rule.label(response)),
        }
    }
}

/// Interns labels so that a long run keeps one allocation per distinct label.
#[derive(Debug, Default)]
pub(crate) struct LabelInterner {
    labels: std::sync::Mutex<Vec<Arc<str>>>,
}

impl LabelInterner {
    pub(crate) fn intern(&self, label: String) -> Arc<str> {
        let mut labels = self.labels.lock().expect("label interner lock");
        if let Some(existing) = labels.iter().find(|l| ***l == *label) {
            return existing.clone();
        }
        let label: Arc<str> = Arc::from(label);
        labels.push(label.clone());
        label
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view<'a>(headers: &'a http::HeaderMap, body: &'a str) -> ResponseView<'a> {
        ResponseView {
            headers,
            body: body.as_bytes(),
        }
    }

    #[test]
    fn frontend_footer_names_the_pod() {
        let headers = http::HeaderMap::new();
        let body = "<footer><span>Pod: frontend-myfeature-7d9c-abcde</span></footer>";
        assert_eq!(
            AttributionRule::frontend_pod().label(view(&headers, body)),
            Some("frontend-myfeature-7d9c-abcde".to_string())
        );
    }

    #[test]
    fn frontend_banner_names_the_feature_deployment() {
        let headers = http::HeaderMap::new();
        let body = "<div class=\"local-banner\">\n  <span>feature myfeature</span>\n</div>";
        assert_eq!(
            AttributionRule::frontend_banner().label(view(&headers, body)),
            Some("feature myfeature".to_string())
        );
    }

    #[test]
    fn header_rule_reads_the_lowercased_header_and_first_of_falls_back() {
        let mut headers = http::HeaderMap::new();
        headers.insert("x-served-by", "adservice-b".parse().unwrap());
        let rule = AttributionRule::FirstOf(vec![
            AttributionRule::header("X-Pod").unwrap(),
            AttributionRule::header("X-Served-By").unwrap(),
        ]);
        assert!(!rule.needs_body());
        assert_eq!(rule.label(view(&headers, "")), Some("adservice-b".into()));
        assert_eq!(
            AttributionRule::header("x-pod")
                .unwrap()
                .label(view(&headers, "")),
            None
        );
    }

    #[test]
    fn attribution_specs_map_to_the_rules_and_bad_ones_are_named() {
        let mut headers = http::HeaderMap::new();
        headers.insert("x-served-by", "adservice-b".parse().unwrap());
        let body = "<div class=\"local-banner\">feature x</div><footer>Pod: frontend-1</footer>";
        let label = |spec: &str| {
            AttributionRule::parse_spec(spec)
                .unwrap()
                .label(view(&headers, body))
        };
        assert_eq!(label("header:X-Served-By"), Some("adservice-b".into()));
        assert_eq!(label("pod"), Some("frontend-1".into()));
        assert_eq!(label("banner"), Some("feature x".into()));
        assert_eq!(label(r"body:Pod: (\S+)<"), Some("frontend-1".into()));
        // Without a capture group the label is the whole match; a colon may be in the regex.
        assert_eq!(label("body:frontend-[0-9]+"), Some("frontend-1".into()));
        assert_eq!(label("body:Pod: [a-z]+"), Some("Pod: frontend".into()));
        assert_eq!(label("header:x-pod"), None);

        for spec in [
            "",
            "pods",
            "header",
            "header:",
            "header:bad name",
            "body:",
            "cookie:x",
        ] {
            let error = AttributionRule::parse_spec(spec).unwrap_err();
            assert!(
                matches!(error, TrafficError::InvalidAttribution { .. }),
                "{spec}: {error}"
            );
            assert!(error.to_string().contains(&format!("`{spec}`")), "{error}");
        }
        let error = AttributionRule::parse_spec("body:Pod: (").unwrap_err();
        assert!(
            matches!(error, TrafficError::InvalidRegex { .. }),
            "{error}"
        );
        assert!(error.to_string().contains("`Pod: (`"), "{error}");
    }

    #[test]
    fn a_body_regex_without_a_capture_group_is_refused_naming_it() {
        let error = AttributionRule::body_regex("Pod: .*").unwrap_err();
        assert!(error.to_string().contains("`Pod: .*`"), "{error}");
    }
}
