//! The console reporter fed a run's events: verdict lines with findings, skips
//! shown as skips, the one-screen summary, colour only when asked for.

mod report_fixture;

use std::ffi::OsStr;
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};

use cdcheck::report::console::{ConsoleOptions, ConsoleReporter};
use cdcheck::report::{Event, ReportFiles, Reporter};
use report_fixture::{
    FAILED_SCENARIO, FEATURE_SCENARIO, MARKUP_FINDING, NOT_GIVEN_REASON, PASSED_SCENARIO,
    SKIP_REASON, SKIPPED_SCENARIO, events_of, interrupted_events,
};

/// A writer the test can read back after the reporter is done with it.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

fn run_console(color: bool) -> String {
    console_of(&events_of(&report_fixture::run_report()), color)
}

fn console_of(events: &[Event], color: bool) -> String {
    let captured = Captured::default();
    let mut console = ConsoleReporter::new(
        Box::new(captured.clone()),
        ConsoleOptions { color, live: false },
    )
    .with_report_files(ReportFiles::in_dir(Path::new("cdcheck-report")));
    for event in events {
        console.event(event).unwrap();
    }
    captured.text()
}

#[test]
fn each_scenario_gets_a_verdict_line_with_failed_findings_indented_below() {
    let out = run_console(false);
    assert!(
        out.contains(&format!(
            "PASS {PASSED_SCENARIO} (24.6 s, after 12.4 s waiting for the gateway)\n"
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "SKIP {SKIPPED_SCENARIO} (3.9 s): 2 skipped (no-data-plane) of 5 checks\n       \
             skipped (no-data-plane) served-certificate-by-sni, http-redirects-to-https: {SKIP_REASON}\n"
        )),
        "{out}"
    );
    let fail_line = format!("FAIL {FAILED_SCENARIO} (31.3 s): 2 failed of 5 checks\n");
    let at = out.find(&fail_line).unwrap_or_else(|| panic!("{out}"));
    let below: Vec<&str> = out[at + fail_line.len()..].lines().take(5).collect();
    assert_eq!(
        below,
        [
            "       failed prestop-and-grace: every container has a preStop hook and a grace period longer than it",
            "         - Deployment/cdc-zdr-2/frontend: container server has no preStop hook: it stops before its endpoint is removed",
            "       failed no-failed-request-under-load: zero failed requests while the Deployment rolls",
            "         - Deployment/cdc-zdr-2/frontend: 30 of 2000 requests failed: a 300 ms outage from 19.410 s to 19.710 s during the rollout",
            &format!("         - {MARKUP_FINDING}"),
        ]
    );
}

#[test]
fn the_summary_counts_and_lists_skips_apart_from_passes() {
    let out = run_console(false);
    let summary = &out[out
        .find("Summary on local")
        .unwrap_or_else(|| panic!("{out}"))..];
    let table: Vec<&str> = summary.lines().skip(2).take(4).collect();
    assert_eq!(
        table,
        [
            "  SCENARIO                 VERDICT  PASSED  FAILED  SKIPPED  ERROR   DURATION",
            "  zero-downtime-bluegreen  PASSED        4       0        0      0     24.6 s",
            "  zero-downtime-rolling    FAILED        3       2        0      0     31.3 s",
            "  https                    SKIPPED       3       0        2      0      3.9 s",
        ]
    );
    assert!(
        summary
            .contains("Scenarios: 1 passed, 1 failed, 1 skipped, 0 error (3 in all) in 47.9 s\n"),
        "{summary}"
    );
    assert!(
        summary.contains("Checks:    10 passed, 2 failed, 2 skipped, 0 error (14 in all)\n"),
        "{summary}"
    );
    assert!(
        summary.contains(&format!(
            "Skipped (not run, so not passed):\n  https: 2 no-data-plane checks (served-certificate-by-sni, http-redirects-to-https): {SKIP_REASON}\n"
        )),
        "{summary}"
    );
    assert!(summary.contains("\nVerdict: FAILED\n"), "{summary}");
    assert!(!summary.contains("NOT RUN"), "{summary}");
    assert!(
        summary.ends_with(
            "Reports:\n  cdcheck-report/junit.xml\n  cdcheck-report/report.json\n  cdcheck-report/report.html\n\n"
        ),
        "{summary:?}"
    );
}

#[test]
fn colour_only_when_asked_and_never_with_no_color() {
    assert!(!run_console(false).contains('\x1b'));
    assert!(run_console(true).contains("\x1b["));

    let on_terminal = ConsoleOptions::detect(true, None);
    assert!(on_terminal.color && on_terminal.live);
    let piped = ConsoleOptions::detect(false, None);
    assert!(!piped.color && !piped.live);
    let no_color = ConsoleOptions::detect(true, Some(OsStr::new("1")));
    assert!(!no_color.color && no_color.live);
    // no-color.org: an empty NO_COLOR does not count.
    assert!(ConsoleOptions::detect(true, Some(OsStr::new(""))).color);
}

#[test]
fn progress_shows_each_running_scenario_at_its_current_step() {
    let mut console = ConsoleReporter::new(
        Box::new(Captured::default()),
        ConsoleOptions {
            color: false,
            live: false,
        },
    );
    let report = report_fixture::run_report();
    let events = events_of(&report);
    for event in &events[..events.len() - 1] {
        if matches!(event, Event::Check { .. }) {
            break;
        }
        console.event(event).unwrap();
    }
    console
        .event(&Event::StepStarted {
            scenario: FAILED_SCENARIO.into(),
            step: 3,
            label: "update to release 2 under load".into(),
        })
        .unwrap();
    assert_eq!(
        console.progress_of(FAILED_SCENARIO).as_deref(),
        Some("step 4/6: update to release 2 under load")
    );
    assert_eq!(
        console.progress_of(PASSED_SCENARIO).as_deref(),
        Some("step 1/6: deploy release 1")
    );
    console
        .event(&Event::ScenarioFinished {
            report: Box::new(report.scenarios[1].clone()),
        })
        .unwrap();
    assert_eq!(console.progress_of(FAILED_SCENARIO), None);
}

#[test]
fn a_pass_with_skips_reads_passed_with_its_skips_in_amber_never_green() {
    let out = console_of(&events_of(&report_fixture::with_skips()), false);
    assert!(
        out.contains(&format!(
            "PASS {PASSED_SCENARIO} (24.6 s, after 12.4 s waiting for the gateway): passed, 3 skipped (no-data-plane) of 7 checks\n       \
             skipped (no-data-plane) probe-routing, probe-grpc, load-frontend-zero-failed: {SKIP_REASON}\n"
        )),
        "{out}"
    );
    let summary = &out[out.find("Summary on local").unwrap()..];
    assert!(
        summary.contains(
            "  zero-downtime-bluegreen  PASSED+SKIPS       4       0        3      0     24.6 s\n"
        ),
        "{summary}"
    );

    // In colour, the pass that skipped is amber (33, yellow), and green (32) only
    // where something passed outright: never on the scenario's tag or row.
    let coloured = console_of(&events_of(&report_fixture::with_skips()), true);
    let line = coloured
        .lines()
        .find(|l| l.contains(PASSED_SCENARIO) && l.contains("passed, 3 skipped"))
        .unwrap_or_else(|| panic!("{coloured}"));
    assert!(line.contains("\x1b[33"), "{line:?}");
    assert!(!line.contains("\x1b[32"), "{line:?}");
    let row = coloured
        .lines()
        .find(|l| l.contains(PASSED_SCENARIO) && l.contains("PASSED+SKIPS"))
        .unwrap_or_else(|| panic!("{coloured}"));
    assert!(!row.contains("\x1b[32"), "{row:?}");
    // Control: a plain pass is green.
    let plain = run_console(true);
    let plain_line = plain
        .lines()
        .find(|l| l.contains(PASSED_SCENARIO) && l.contains("PASS"))
        .unwrap();
    assert!(plain_line.contains("\x1b[32"), "{plain_line:?}");
}

#[test]
fn a_scenario_the_pipeline_gives_nothing_for_says_so_on_its_own_line() {
    let out = console_of(&events_of(&report_fixture::with_skips()), false);
    let summary = &out[out.find("Summary on local").unwrap()..];
    let line = format!("NOT RUN: {FEATURE_SCENARIO} did not run: {NOT_GIVEN_REASON}");
    assert!(
        summary.lines().any(|l| l == line),
        "no line {line:?} in\n{summary}"
    );
    // It comes before the skip list, and the skipped checks keep their own names.
    assert!(summary.find(&line).unwrap() < summary.find("Skipped (not run").unwrap());
    assert!(
        summary.contains(
            "  feature-branch: 3 not-run checks (feature-names, session-routes-anchored, probe-routing): \
             not run: an earlier step could not complete\n"
        ),
        "{summary}"
    );
    assert!(summary.contains("\nVerdict: FAILED\n"), "{summary}");
}

#[test]
fn a_run_that_passed_with_skips_has_an_amber_verdict_that_counts_them() {
    let mut report = report_fixture::with_skips();
    report.scenarios.remove(1);
    report.verdict = cdcheck::report::Verdict::Passed;
    let out = console_of(&events_of(&report), false);
    assert!(
        out.contains("\nVerdict: PASSED, 9 checks skipped\n"),
        "{out}"
    );
}

#[test]
fn the_console_output_of_a_run_with_skips() {
    insta::assert_snapshot!(
        "console_with_skips",
        console_of(&events_of(&report_fixture::with_skips()), false)
    );
}

#[test]
fn an_interrupted_run_summarises_what_finished_and_names_what_did_not() {
    let out = console_of(&interrupted_events(&report_fixture::with_skips(), 3), false);
    let summary = &out[out
        .find("Summary on local")
        .unwrap_or_else(|| panic!("no summary after RunInterrupted:\n{out}"))..];
    assert!(
        summary.contains("INTERRUPTED: 3 of 4 scenarios finished; not finished: feature-branch\n"),
        "{summary}"
    );
    let table: Vec<&str> = summary
        .lines()
        .filter(|l| l.starts_with("  ") && l.ends_with(" s"))
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(table, [PASSED_SCENARIO, FAILED_SCENARIO, SKIPPED_SCENARIO]);
    assert!(
        summary.contains("\nVerdict: ERROR (interrupted)\n"),
        "{summary}"
    );
}
