//! The JUnit XML report: one testsuite per scenario, one testcase per check,
//! for CI systems to show a run like any test run. A skipped check is a
//! `<skipped>` testcase (its kind as the type, its reason as the message), never
//! a pass; an interrupted run adds an `<error>` testsuite per scenario it did not finish.

use std::fmt::Write as _;
use std::time::Duration;

use quick_junit::{NonSuccessKind, Property, TestCase, TestCaseStatus, TestSuite};

use super::{CheckResult, ReportError, RunReport, ScenarioReport, Verdict};

/// The report as JUnit XML.
pub fn to_xml(report: &RunReport) -> Result<String, ReportError> {
    to_junit(report)
        .to_string()
        .map_err(|source| ReportError::Serialize {
            format: "JUnit",
            source: Box::new(source),
        })
}

/// The report as a quick-junit document, for callers that add to it.
pub fn to_junit(report: &RunReport) -> quick_junit::Report {
    let started = chrono::DateTime::parse_from_rfc3339(&report.started).ok();
    let mut junit = quick_junit::Report::new(if report.interrupted.is_some() {
        "cdcheck (interrupted)"
    } else {
        "cdcheck"
    });
    junit.set_time(report.duration);
    if let Some(started) = started {
        junit.set_timestamp(started);
    }
    for scenario in &report.scenarios {
        junit.add_test_suite(test_suite(report, scenario, started));
    }
    if let Some(interruption) = &report.interrupted {
        // CI must not read an interrupted run as the scenarios that happened to finish.
        for name in &interruption.unfinished {
            junit.add_test_suite(unfinished_suite(name));
        }
    }
    junit
}

fn unfinished_suite(name: &str) -> TestSuite {
    let mut suite = TestSuite::new(name);
    suite.add_property(Property::new("verdict", "interrupted"));
    let mut status = TestCaseStatus::non_success(NonSuccessKind::Error);
    status.set_type("interrupted");
    status.set_message("the run was interrupted (Ctrl-C) before this scenario finished");
    let mut case = TestCase::new("scenario", status);
    case.set_classname(name);
    suite.add_test_case(case);
    suite
}

fn test_suite(
    report: &RunReport,
    scenario: &ScenarioReport,
    run_started: Option<chrono::DateTime<chrono::FixedOffset>>,
) -> TestSuite {
    let mut suite = TestSuite::new(scenario.name.as_str());
    suite.set_time(scenario.duration);
    if let Some(started) = run_started.and_then(|t| since(t, scenario.started_at)) {
        suite.set_timestamp(started);
    }
    suite.add_properties([
        Property::new("file", scenario.file.as_str()),
        Property::new("namespace", scenario.namespace.as_str()),
        Property::new("tags", scenario.tags.join(",")),
        Property::new("needs", scenario.needs.join(",")),
        Property::new("verdict", scenario.verdict.as_str()),
        // `passed, 3 skipped (no-data-plane)`: how the verdict reads with its skips.
        Property::new("verdict_label", scenario.verdict_label()),
        Property::new("substrate", report.substrate.as_str()),
        Property::new("pipeline", report.pipeline.as_str()),
    ]);

    let diagnostics = failure_output(scenario);
    for check in &scenario.checks {
        let mut case = TestCase::new(check.name.as_str(), check_status(check));
        case.set_classname(scenario.name.as_str());
        case.set_time(check.duration);
        if let Some(at) = run_started.and_then(|t| since(t, check.at)) {
            case.set_timestamp(at);
        }
        if matches!(check.verdict, Verdict::Failed | Verdict::Error) && !diagnostics.is_empty() {
            case.set_system_out(diagnostics.as_str());
        }
        suite.add_test_case(case);
    }
    if scenario.checks.is_empty() {
        // A scenario that ran no check would otherwise vanish from CI's view, whatever its verdict.
        suite.add_test_case(scenario_case(scenario));
    }
    if !diagnostics.is_empty() {
        suite.set_system_out(diagnostics.as_str());
    }
    suite
}

fn check_status(check: &CheckResult) -> TestCaseStatus {
    match check.verdict {
        Verdict::Passed => TestCaseStatus::success(),
        Verdict::Skipped => {
            let mut status = TestCaseStatus::skipped();
            status.set_message(check.skip_reason.as_deref().unwrap_or("skipped"));
            status.set_type(check.skip_kind.map_or("unclassified", |k| k.as_str()));
            status
        }
        Verdict::Failed | Verdict::Error => {
            let kind = if check.verdict == Verdict::Failed {
                NonSuccessKind::Failure
            } else {
                NonSuccessKind::Error
            };
            let mut status = TestCaseStatus::non_success(kind);
            status.set_type(check.verdict.as_str());
            status.set_message(findings_message(check));
            status.set_description(findings_text(check));
            status
        }
    }
}

fn scenario_case(scenario: &ScenarioReport) -> TestCase {
    let status = match scenario.verdict {
        Verdict::Passed => TestCaseStatus::success(),
        Verdict::Skipped => {
            let mut status = TestCaseStatus::skipped();
            status.set_message("the scenario ran no check");
            status
        }
        verdict @ (Verdict::Failed | Verdict::Error) => {
            let mut status = TestCaseStatus::non_success(if verdict == Verdict::Failed {
                NonSuccessKind::Failure
            } else {
                NonSuccessKind::Error
            });
            status.set_type(verdict.as_str());
            status.set_message(format!("the scenario {verdict} before any check ran"));
            status
        }
    };
    let mut case = TestCase::new("scenario", status);
    case.set_classname(scenario.name.as_str());
    case.set_time(scenario.duration);
    case
}

/// One line for CI summaries: the first finding, and how many more there are.
fn findings_message(check: &CheckResult) -> String {
    match check.findings.as_slice() {
        [] => format!("{} with no finding recorded", check.verdict),
        [only] => only.to_string(),
        [first, rest @ ..] => format!("{first} (and {} more)", rest.len()),
    }
}

fn findings_text(check: &CheckResult) -> String {
    let mut text = format!("{}\n", check.description);
    for finding in &check.findings {
        let _ = writeln!(text, "- {finding}");
    }
    text
}

/// What a failed scenario's testcases carry as system-out: its load summaries and diagnostics.
fn failure_output(scenario: &ScenarioReport) -> String {
    if !matches!(scenario.verdict, Verdict::Failed | Verdict::Error) {
        return String::new();
    }
    let mut out = String::new();
    for load in &scenario.loads {
        let _ = writeln!(
            out,
            "load {} -> {}: {} requests, {} failed, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms, \
             over {} pod terminations and {} Service switches",
            load.name,
            load.target,
            load.requests,
            load.failed,
            load.p50_ms,
            load.p99_ms,
            load.max_ms,
            load.terminated_pods.len(),
            load.service_switches.len()
        );
        for outage in &load.outages {
            let _ = writeln!(
                out,
                "  outage {:.0} ms from {:.3} s to {:.3} s ({} requests failed)",
                outage.to_ms - outage.from_ms,
                outage.from_ms / 1000.0,
                outage.to_ms / 1000.0,
                outage.requests
            );
        }
    }
    if let Some(diagnostics) = &scenario.diagnostics {
        if !out.is_empty() {
            out.push('\n');
        }
        out.push_str(diagnostics);
    }
    out
}

fn since(
    start: chrono::DateTime<chrono::FixedOffset>,
    offset: Duration,
) -> Option<chrono::DateTime<chrono::FixedOffset>> {
    Some(start + chrono::Duration::from_std(offset).ok()?)
}
