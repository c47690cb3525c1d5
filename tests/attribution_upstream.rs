//! The attribution rules against upstream Online Boutique v0.10.6's own frontend markup
//! (`src/frontend/templates/{header,footer}.html` in `../shared/boutique-src`), not the
//! stand-in's: on kind or an existing cluster the real frontend answers, and a rule that
//! cannot read its footer would leave every cookie-routing answer unattributed.

mod common_reference;

use cdcheck::traffic::attribution::{AttributionRule, ResponseView};

/// Renders one of upstream's templates as Go's html/template would for a page with these
/// values: the actions that print a value are replaced by it, and the `{{ if }}`, `{{ end }}`
/// and `{{ define }}` lines (every value here is set, so each `if` holds) are dropped.
fn render(template: &str, values: &[(&str, &str)]) -> String {
    let mut page = template.to_string();
    for (action, value) in values {
        page = page.replace(action, value);
    }
    let mut out = String::new();
    let mut rest = page.as_str();
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let end = rest[start..].find("}}").expect("every action is closed") + start + 2;
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

fn label(rule: &AttributionRule, body: &str) -> Option<String> {
    let headers = http::HeaderMap::new();
    rule.label(ResponseView {
        headers: &headers,
        body: body.as_bytes(),
    })
}

#[test]
fn upstream_footer_names_the_pod_that_served_the_page() {
    let Some(footer) = common_reference::boutique_src_text(
        "upstream_footer_names_the_pod_that_served_the_page",
        "src/frontend/templates/footer.html",
    ) else {
        return;
    };
    let pod = "frontend-myfeature-7d9c5b6f4-x2k8q";
    let page = render(
        &footer,
        &[
            ("{{ index .deploymentDetails \"HOSTNAME\" }}", pod),
            (
                "{{ index .deploymentDetails \"CLUSTERNAME\" }}",
                "kind-cdcheck",
            ),
            ("{{ index .deploymentDetails \"ZONE\" }}", "local"),
            ("{{ $.session_id }}", "0b7c1a52-3c1e-4f57-9a8e-1d2f3a4b5c6d"),
            ("{{ $.request_id }}", "5f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b"),
            ("{{ .currentYear }}", "2026"),
        ],
    );
    assert!(
        page.contains("<b>Pod: </b>"),
        "upstream's footer changed: {page}"
    );
    assert_eq!(
        label(&AttributionRule::frontend_pod(), &page).as_deref(),
        Some(pod),
        "{page}"
    );
}

#[test]
fn upstream_header_shows_the_feature_banner() {
    let Some(header) = common_reference::boutique_src_text(
        "upstream_header_shows_the_feature_banner",
        "src/frontend/templates/header.html",
    ) else {
        return;
    };
    let page = render(&header, &[("{{ $.frontendMessage }}", "feature myfeature")]);
    assert_eq!(
        label(&AttributionRule::frontend_banner(), &page).as_deref(),
        Some("feature myfeature"),
        "{page}"
    );
    // Without a message upstream renders no banner, and the rule must not invent one.
    let plain = render(&header, &[("{{ $.frontendMessage }}", "")]);
    let without = plain.replace("<div class=\"h-free-shipping\"></div>", "");
    assert_eq!(label(&AttributionRule::frontend_banner(), &without), None);
}
