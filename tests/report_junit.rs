//! The JUnit report parsed back: one testsuite per scenario, a testcase per
//! check, failures with findings, errors as errors, skips as skipped.

mod report_fixture;

use cdcheck::report::{FileReporter, Reporter, Verdict, junit};
use report_fixture::{
    FAILED_SCENARIO, FEATURE_SCENARIO, MARKUP_FINDING, NOT_GIVEN_REASON, PASSED_SCENARIO,
    SKIP_REASON, SKIPPED_SCENARIO, interrupted_events,
};
use roxmltree::{Document, Node};

fn suite<'a, 'input>(doc: &'a Document<'input>, name: &str) -> Node<'a, 'input> {
    doc.descendants()
        .find(|n| n.has_tag_name("testsuite") && n.attribute("name") == Some(name))
        .unwrap_or_else(|| panic!("no testsuite {name}"))
}

fn case<'a, 'input>(suite: Node<'a, 'input>, name: &str) -> Node<'a, 'input> {
    suite
        .children()
        .find(|n| n.has_tag_name("testcase") && n.attribute("name") == Some(name))
        .unwrap_or_else(|| panic!("no testcase {name}"))
}

fn child<'a, 'input>(node: Node<'a, 'input>, tag: &str) -> Option<Node<'a, 'input>> {
    node.children().find(|n| n.has_tag_name(tag))
}

#[test]
fn one_testsuite_per_scenario_and_one_testcase_per_check() {
    let report = report_fixture::run_report();
    let xml = junit::to_xml(&report).unwrap();
    let doc = Document::parse(&xml).unwrap();

    let root = doc.root_element();
    assert_eq!(root.tag_name().name(), "testsuites");
    assert_eq!(root.attribute("tests"), Some("14"));
    assert_eq!(root.attribute("failures"), Some("2"));
    assert_eq!(root.attribute("errors"), Some("0"));
    assert_eq!(root.attribute("skipped"), Some("2"));

    let suites: Vec<&str> = root
        .children()
        .filter(|n| n.has_tag_name("testsuite"))
        .map(|n| n.attribute("name").unwrap())
        .collect();
    assert_eq!(suites, [PASSED_SCENARIO, FAILED_SCENARIO, SKIPPED_SCENARIO]);

    for scenario in &report.scenarios {
        let suite = suite(&doc, &scenario.name);
        let cases: Vec<(&str, &str)> = suite
            .children()
            .filter(|n| n.has_tag_name("testcase"))
            .map(|n| {
                (
                    n.attribute("classname").unwrap(),
                    n.attribute("name").unwrap(),
                )
            })
            .collect();
        let expected: Vec<(&str, &str)> = scenario
            .checks
            .iter()
            .map(|c| (scenario.name.as_str(), c.name.as_str()))
            .collect();
        assert_eq!(cases, expected);
        let totals = scenario.check_totals();
        assert_eq!(
            suite.attribute("tests"),
            Some(totals.total().to_string().as_str())
        );
        assert_eq!(
            suite.attribute("failures"),
            Some(totals.failed.to_string().as_str())
        );
        assert_eq!(
            suite.attribute("skipped"),
            Some(totals.skipped.to_string().as_str())
        );
    }

    // Time per testcase, in seconds.
    let strategy = case(suite(&doc, FAILED_SCENARIO), "strategy-rolling-update");
    assert_eq!(strategy.attribute("time"), Some("0.005"));
}

#[test]
fn a_failure_carries_its_findings_and_the_scenarios_diagnostics() {
    let xml = junit::to_xml(&report_fixture::run_report()).unwrap();
    let doc = Document::parse(&xml).unwrap();
    let failed = case(suite(&doc, FAILED_SCENARIO), "no-failed-request-under-load");

    let failure = child(failed, "failure").expect("a <failure> element");
    assert_eq!(
        failure.attribute("message"),
        Some(
            "Deployment/cdc-zdr-2/frontend: 30 of 2000 requests failed: a 300 ms outage from 19.410 s to 19.710 s during the rollout (and 1 more)"
        )
    );
    assert_eq!(failure.attribute("type"), Some("failed"));
    let text = failure.text().unwrap();
    // Markup in a finding survives the XML round trip as text.
    assert!(text.contains(&format!("- {MARKUP_FINDING}\n")), "{text}");

    let out = child(failed, "system-out")
        .expect("diagnostics in <system-out>")
        .text()
        .unwrap();
    assert!(
        out.contains("Readiness probe failed: connection refused"),
        "{out}"
    );
    assert!(
        out.contains("outage 300 ms from 19.410 s to 19.710 s (30 requests failed)"),
        "{out}"
    );

    let passed = case(suite(&doc, FAILED_SCENARIO), "strategy-rolling-update");
    assert_eq!(passed.children().filter(|n| n.is_element()).count(), 0);
    assert!(child(suite(&doc, PASSED_SCENARIO), "system-out").is_none());
}

#[test]
fn skips_are_skipped_with_their_reason_never_passes() {
    let xml = junit::to_xml(&report_fixture::run_report()).unwrap();
    let doc = Document::parse(&xml).unwrap();
    let https = suite(&doc, SKIPPED_SCENARIO);
    let skipped: Vec<(&str, Option<&str>, Option<&str>)> = https
        .children()
        .filter(|n| n.has_tag_name("testcase"))
        .filter_map(|n| {
            let skipped = child(n, "skipped")?;
            Some((
                n.attribute("name").unwrap(),
                skipped.attribute("type"),
                skipped.attribute("message"),
            ))
        })
        .collect();
    assert_eq!(
        skipped,
        [
            (
                "served-certificate-by-sni",
                Some("no-data-plane"),
                Some(SKIP_REASON)
            ),
            (
                "http-redirects-to-https",
                Some("no-data-plane"),
                Some(SKIP_REASON)
            ),
        ]
    );
}

/// Each testcase's outcome as CI reads it: the name of its one child element
/// (`failure`, `error`, `skipped`), or `pass` when it has none.
fn outcomes<'a>(suite: Node<'a, '_>) -> Vec<(&'a str, &'a str)> {
    suite
        .children()
        .filter(|n| n.has_tag_name("testcase"))
        .map(|n| {
            let outcome = n
                .children()
                .find(|c| {
                    c.is_element() && ["failure", "error", "skipped"].contains(&c.tag_name().name())
                })
                .map_or("pass", |c| c.tag_name().name());
            (n.attribute("name").unwrap(), outcome)
        })
        .collect()
}

fn property<'a>(suite: Node<'a, '_>, name: &str) -> Option<&'a str> {
    suite
        .descendants()
        .find(|n| n.has_tag_name("property") && n.attribute("name") == Some(name))
        .and_then(|n| n.attribute("value"))
}

#[test]
fn a_pass_with_skips_has_its_skips_as_skipped_testcases_and_says_so() {
    let xml = junit::to_xml(&report_fixture::with_skips()).unwrap();
    let doc = Document::parse(&xml).unwrap();
    let bluegreen = suite(&doc, PASSED_SCENARIO);
    assert_eq!(
        outcomes(bluegreen),
        [
            ("service-selects-one-colour", "pass"),
            ("switch-after-ready", "pass"),
            ("nothing-mixed-after-switch", "pass"),
            ("no-failed-request-under-load", "pass"),
            ("probe-routing", "skipped"),
            ("probe-grpc", "skipped"),
            ("load-frontend-zero-failed", "skipped"),
        ]
    );
    assert_eq!(bluegreen.attribute("skipped"), Some("3"));
    assert_eq!(property(bluegreen, "verdict"), Some("passed"));
    assert_eq!(
        property(bluegreen, "verdict_label"),
        Some("passed, 3 skipped (no-data-plane)")
    );

    let feature = suite(&doc, FEATURE_SCENARIO);
    assert!(outcomes(feature).iter().all(|(_, o)| *o == "skipped"));
    let release = child(case(feature, "release-feature"), "skipped").unwrap();
    assert_eq!(release.attribute("type"), Some("not-applicable"));
    assert_eq!(release.attribute("message"), Some(NOT_GIVEN_REASON));
    assert_eq!(
        property(feature, "verdict_label"),
        Some("skipped: 4 of 4 checks (1 not-applicable, 3 not-run)")
    );
}

#[test]
fn the_junit_of_a_run_with_skips() {
    insta::assert_snapshot!(
        "junit_with_skips",
        junit::to_xml(&report_fixture::with_skips()).unwrap()
    );
}

#[test]
fn an_interrupted_run_writes_what_finished_and_an_error_for_what_did_not() {
    let temp = tempfile::tempdir().unwrap();
    let mut writer = FileReporter::new(temp.path());
    for event in interrupted_events(&report_fixture::with_skips(), 2) {
        writer.event(&event).unwrap();
    }
    let files = writer.written().expect("RunInterrupted writes the reports");
    let xml = std::fs::read_to_string(&files.junit).unwrap();
    let doc = Document::parse(&xml).unwrap();
    let root = doc.root_element();
    assert_eq!(root.attribute("name"), Some("cdcheck (interrupted)"));
    let suites: Vec<&str> = root
        .children()
        .filter(|n| n.has_tag_name("testsuite"))
        .map(|n| n.attribute("name").unwrap())
        .collect();
    assert_eq!(
        suites,
        [
            PASSED_SCENARIO,
            FAILED_SCENARIO,
            SKIPPED_SCENARIO,
            FEATURE_SCENARIO
        ]
    );
    // The finished ones as they were; the unfinished ones an error each.
    assert_eq!(
        outcomes(suite(&doc, FAILED_SCENARIO))
            .iter()
            .filter(|(_, o)| *o == "failure")
            .count(),
        2
    );
    for unfinished in [SKIPPED_SCENARIO, FEATURE_SCENARIO] {
        let error = child(case(suite(&doc, unfinished), "scenario"), "error")
            .unwrap_or_else(|| panic!("{unfinished} has no <error>"));
        assert_eq!(error.attribute("type"), Some("interrupted"));
    }
    assert_eq!(root.attribute("errors"), Some("2"));
}

#[test]
fn an_error_is_an_error_element_not_a_failure() {
    let mut report = report_fixture::run_report();
    let check = &mut report.scenarios[0].checks[2];
    check.verdict = Verdict::Error;
    check.findings = vec![cdcheck::report::Finding::new(
        "watch Pods in cdc-zdbg-1: the API server closed the connection",
    )];
    report.scenarios[0].verdict = Verdict::Error;
    let xml = junit::to_xml(&report).unwrap();
    let doc = Document::parse(&xml).unwrap();
    let errored = case(suite(&doc, PASSED_SCENARIO), "nothing-mixed-after-switch");
    assert!(child(errored, "failure").is_none());
    let error = child(errored, "error").expect("an <error> element");
    assert_eq!(
        error.attribute("message"),
        Some("watch Pods in cdc-zdbg-1: the API server closed the connection")
    );
    assert_eq!(doc.root_element().attribute("errors"), Some("1"));
}

#[test]
fn a_scenario_without_checks_still_shows_in_ci() {
    let mut report = report_fixture::run_report();
    report.scenarios[2].checks.clear();
    let xml = junit::to_xml(&report).unwrap();
    let doc = Document::parse(&xml).unwrap();
    let https = suite(&doc, SKIPPED_SCENARIO);
    let only = case(https, "scenario");
    assert!(child(only, "skipped").is_some());
}

#[test]
fn write_all_creates_the_report_dir_with_all_three_files() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("nested/cdcheck-report");
    let files = cdcheck::report::write_all(&report_fixture::run_report(), &dir).unwrap();
    for path in files.paths() {
        let len = std::fs::metadata(path).unwrap().len();
        assert!(len > 1000, "{} has {len} bytes", path.display());
    }
    let xml = std::fs::read_to_string(&files.junit).unwrap();
    Document::parse(&xml).unwrap();
}
