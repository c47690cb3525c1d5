//! The console reporter fed a run's events: verdict lines with findings, skips
//! shown as skips, the one-screen summary, colour only when asked for.

mod report_fixture;

use std::ffi::OsStr;
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};

use cdcheck::report::console::{ConsoleOptions, ConsoleReporter};
use cdcheck::report::{Event, ReportFiles, Reporter, RunReport};
use report_fixture::{
    FAILED_SCENARIO, MARKUP_FINDING, PASSED_SCENARIO, SKIP_REASON, SKIPPED_SCENARIO,
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

/// The events a runner emits for the fixture's run, scenarios interleaved as they run concurrently.
fn events_of(report: &RunReport) -> Vec<Event> {
    let mut events = vec![Event::RunStarted {
        substrate: report.substrate.clone(),
        data_plane: report.data_plane,
        pipeline: report.pipeline.clone(),
        scenarios: report.scenarios.iter().map(|s| s.name.clone()).collect(),
    }];
    for scenario in &report.scenarios {
        events.push(Event::ScenarioStarted {
            scenario: scenario.name.clone(),
            namespace: scenario.namespace.clone(),
            steps: 6,
        });
        events.push(Event::StepStarted {
            scenario: scenario.name.clone(),
            step: 0,
            label: "deploy release 1".into(),
        });
    }
    for scenario in &report.scenarios {
        for check in &scenario.checks {
            events.push(Event::Check {
                scenario: scenario.name.clone(),
                result: check.clone(),
            });
        }
        events.push(Event::ScenarioFinished {
            report: Box::new(scenario.clone()),
        });
    }
    events.push(Event::RunFinished {
        report: Box::new(report.clone()),
    });
    events
}

fn run_console(color: bool) -> String {
    let captured = Captured::default();
    let mut console = ConsoleReporter::new(
        Box::new(captured.clone()),
        ConsoleOptions { color, live: false },
    )
    .with_report_files(ReportFiles::in_dir(Path::new("cdcheck-report")));
    let report = report_fixture::run_report();
    for event in events_of(&report) {
        console.event(&event).unwrap();
    }
    captured.text()
}

#[test]
fn each_scenario_gets_a_verdict_line_with_failed_findings_indented_below() {
    let out = run_console(false);
    assert!(
        out.contains(&format!("PASS {PASSED_SCENARIO} (24.6 s)\n")),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "SKIP {SKIPPED_SCENARIO} (3.9 s): 2 skipped of 5 checks ({SKIP_REASON})\n"
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
            "Skipped (not run, so not passed):\n  https: 2 checks (served-certificate-by-sni, http-redirects-to-https): {SKIP_REASON}\n"
        )),
        "{summary}"
    );
    assert!(summary.contains("\nVerdict: FAILED\n"), "{summary}");
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
