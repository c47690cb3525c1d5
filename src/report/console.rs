//! The console reporter: live progress while scenarios run, a verdict line per
//! finished scenario with the failed checks' findings and the skips by kind, and
//! a one-screen summary. A skip is never drawn green: a scenario that passed the
//! checks it ran but skipped others reads `passed, 3 skipped (no-data-plane)`, in amber.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::time::Duration;

use console::Style;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::{
    Collector, Event, ReportError, ReportFiles, Reporter, RunReport, ScenarioReport, Totals,
    Verdict,
};

/// How the console reporter writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConsoleOptions {
    /// ANSI colours and bold.
    pub color: bool,
    /// Progress bars drawn on stderr (only sensible when stderr is a terminal).
    pub live: bool,
}

impl ConsoleOptions {
    /// Colour and live progress only on a terminal, and no colour when `NO_COLOR` is set.
    pub fn for_stderr() -> ConsoleOptions {
        ConsoleOptions::detect(
            std::io::stderr().is_terminal(),
            std::env::var_os("NO_COLOR").as_deref(),
        )
    }

    /// What [`ConsoleOptions::for_stderr`] decides, given what it reads: a
    /// non-empty `NO_COLOR` turns colour off (no-color.org).
    pub fn detect(terminal: bool, no_color: Option<&std::ffi::OsStr>) -> ConsoleOptions {
        let no_color = no_color.is_some_and(|v| !v.is_empty());
        ConsoleOptions {
            color: terminal && !no_color,
            live: terminal,
        }
    }
}

pub struct ConsoleReporter {
    out: Box<dyn Write + Send>,
    styles: Styles,
    progress: MultiProgress,
    overall: Option<ProgressBar>,
    running: BTreeMap<String, Running>,
    report_files: Option<ReportFiles>,
    /// What finished, for the summary of an interrupted run.
    collector: Collector,
}

struct Running {
    bar: ProgressBar,
    steps: usize,
}

impl ConsoleReporter {
    /// Writes to stderr, with colour and progress as [`ConsoleOptions::for_stderr`] decides.
    pub fn stderr() -> ConsoleReporter {
        ConsoleReporter::new(Box::new(std::io::stderr()), ConsoleOptions::for_stderr())
    }

    pub fn new(out: Box<dyn Write + Send>, options: ConsoleOptions) -> ConsoleReporter {
        let target = if options.live {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        ConsoleReporter {
            out,
            styles: Styles::new(options.color),
            progress: MultiProgress::with_draw_target(target),
            overall: None,
            running: BTreeMap::new(),
            report_files: None,
            collector: Collector::default(),
        }
    }

    /// The file reports to list in the summary (written before `RunFinished` reaches this reporter).
    pub fn with_report_files(mut self, files: ReportFiles) -> ConsoleReporter {
        self.report_files = Some(files);
        self
    }

    /// What the progress display shows for a running scenario (`step 3/7: drain by eviction`).
    pub fn progress_of(&self, scenario: &str) -> Option<String> {
        self.running
            .get(scenario)
            .map(|running| running.bar.message())
    }

    fn line(&mut self, text: &str) -> Result<(), ReportError> {
        let out = &mut self.out;
        self.progress
            .suspend(|| writeln!(out, "{text}"))
            .map_err(|source| ReportError::Write {
                path: "the console".to_string(),
                source,
            })
    }

    fn run_started(&mut self, scenarios: usize) {
        let overall = self.progress.add(ProgressBar::new(scenarios as u64));
        overall.set_style(
            ProgressStyle::with_template(
                &self
                    .styles
                    .template("{prefix:.bold} [{bar:30}] {pos}/{len} scenarios done, {elapsed}"),
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        overall.set_prefix("cdcheck run");
        overall.enable_steady_tick(Duration::from_millis(250));
        self.overall = Some(overall);
    }

    fn scenario_started(&mut self, scenario: &str, steps: usize) {
        let bar = self.progress.add(ProgressBar::new_spinner());
        bar.set_style(
            ProgressStyle::with_template(&self.styles.template("  {spinner} {prefix:.bold} {msg}"))
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.set_prefix(scenario.to_string());
        bar.set_message("starting");
        bar.enable_steady_tick(Duration::from_millis(120));
        self.running
            .insert(scenario.to_string(), Running { bar, steps });
    }

    fn step_started(&mut self, scenario: &str, step: usize, label: &str) {
        if let Some(running) = self.running.get(scenario) {
            running.bar.set_message(format!(
                "step {}/{}: {label}",
                step + 1,
                running.steps.max(step + 1)
            ));
        }
    }

    fn scenario_finished(&mut self, report: &ScenarioReport) -> Result<(), ReportError> {
        if let Some(running) = self.running.remove(&report.name) {
            running.bar.finish_and_clear();
            self.progress.remove(&running.bar);
        }
        if let Some(overall) = &self.overall {
            overall.inc(1);
        }
        let text = self.scenario_lines(report);
        self.line(&text)
    }

    /// `PASS ha (12.3 s)`, with the failed checks and their findings below, and
    /// the skipped checks by kind with their reasons.
    fn scenario_lines(&self, report: &ScenarioReport) -> String {
        let totals = report.check_totals();
        let skips = report.skips();
        let tag_style = self.styles.scenario_style(report);
        // A wait of its own shows where a run's time went (scenarios sharing a host or
        // judging TLS take the gateway in turn); under a second is noise.
        let waited = report.time.waited_for_gateway;
        let wait = if waited >= std::time::Duration::from_secs(1) {
            format!(", after {} waiting for the gateway", seconds(waited))
        } else {
            String::new()
        };
        let mut text = format!(
            "{} {} ({}{wait})",
            self.styles.tag(report.verdict, tag_style),
            self.styles.bold.apply_to(&report.name),
            seconds(report.duration)
        );
        let mut counts = Vec::new();
        if totals.failed > 0 {
            counts.push(format!("{} failed", totals.failed));
        }
        if totals.error > 0 {
            counts.push(format!("{} error", totals.error));
        }
        if !skips.is_empty() {
            counts.push(format!(
                "{} skipped ({})",
                totals.skipped,
                skip_kinds(report)
            ));
        }
        if !counts.is_empty() {
            let passed = if report.passed_with_skips() {
                "passed, "
            } else {
                ""
            };
            let counts = format!("{passed}{} of {} checks", counts.join(", "), totals.total());
            text.push_str(&format!(": {}", tag_style.apply_to(counts)));
        }
        for check in &report.checks {
            if !matches!(check.verdict, Verdict::Failed | Verdict::Error) {
                continue;
            }
            text.push_str(&format!(
                "\n       {} {}: {}",
                self.styles.verdict_word(check.verdict),
                check.name,
                check.description
            ));
            for finding in &check.findings {
                text.push_str(&format!("\n         - {finding}"));
            }
            if check.findings.is_empty() {
                text.push_str("\n         - (no finding recorded)");
            }
        }
        for group in &skips {
            text.push_str(&format!(
                "\n       {} ({}) {}: {}",
                self.styles.skip.apply_to("skipped"),
                group.kind_str(),
                group.names(),
                reasons_or_none(&group.reasons())
            ));
        }
        text
    }

    fn run_finished(&mut self, report: &RunReport) -> Result<(), ReportError> {
        if let Some(overall) = self.overall.take() {
            overall.finish_and_clear();
            self.progress.remove(&overall);
        }
        for (_, running) in std::mem::take(&mut self.running) {
            running.bar.finish_and_clear();
        }
        let text = self.summary(report);
        self.line(&text)?;
        self.out.flush().map_err(|source| ReportError::Write {
            path: "the console".to_string(),
            source,
        })
    }

    /// The one-screen summary: a table of scenarios, the totals, the skips and the report files.
    pub fn summary(&self, report: &RunReport) -> String {
        let s = &self.styles;
        let plane = if report.data_plane {
            "with a data plane"
        } else {
            "no data plane"
        };
        let mut text = format!(
            "\n{} on {} ({plane}), pipeline: {}\n\n",
            s.bold.apply_to("Summary"),
            report.substrate,
            report.pipeline
        );
        if let Some(interruption) = &report.interrupted {
            let unfinished = if interruption.unfinished.is_empty() {
                String::new()
            } else {
                format!("; not finished: {}", interruption.unfinished.join(", "))
            };
            text.push_str(&format!(
                "{}\n\n",
                s.fail.apply_to(format!(
                    "INTERRUPTED: {} of {} scenarios finished{unfinished}",
                    report.scenarios.len(),
                    report.scenarios.len() + interruption.unfinished.len()
                ))
            ));
        }
        let name_width = report
            .scenarios
            .iter()
            .map(|sc| sc.name.chars().count())
            .max()
            .unwrap_or(0)
            .max("SCENARIO".len());
        let verdict_width = report
            .scenarios
            .iter()
            .map(|sc| table_verdict(sc).len())
            .max()
            .unwrap_or(0)
            .max("VERDICT".len());
        text.push_str(&format!(
            "  {:<name_width$}  {:<verdict_width$}  {:>6}  {:>6}  {:>7}  {:>5}  {:>9}\n",
            "SCENARIO", "VERDICT", "PASSED", "FAILED", "SKIPPED", "ERROR", "DURATION"
        ));
        for scenario in &report.scenarios {
            let totals = scenario.check_totals();
            // Padded before styling, since escape codes would count as width.
            let verdict = format!("{:<verdict_width$}", table_verdict(scenario));
            text.push_str(&format!(
                "  {:<name_width$}  {}  {:>6}  {:>6}  {:>7}  {:>5}  {:>9}\n",
                scenario.name,
                s.scenario_style(scenario).apply_to(verdict),
                totals.passed,
                totals.failed,
                totals.skipped,
                totals.error,
                seconds(scenario.duration)
            ));
        }
        text.push_str(&format!(
            "\nScenarios: {} ({} in all) in {}\n",
            s.totals(&report.scenario_totals),
            report.scenario_totals.total(),
            seconds(report.duration)
        ));
        text.push_str(&format!(
            "Checks:    {} ({} in all)\n",
            s.totals(&report.check_totals),
            report.check_totals.total()
        ));

        // A promise the run did not test at all says so on a line of its own, in
        // every run's summary, not among the skips below.
        for (scenario, why) in report.not_applicable() {
            text.push_str(&format!(
                "\n{}\n",
                s.skip
                    .apply_to(format!("NOT RUN: {} did not run: {why}", scenario.name))
            ));
        }

        let skipped: Vec<&ScenarioReport> = report
            .scenarios
            .iter()
            .filter(|sc| sc.check_totals().skipped > 0 || sc.verdict == Verdict::Skipped)
            .collect();
        if !skipped.is_empty() {
            text.push_str(&format!(
                "{}\n",
                s.skip.apply_to("Skipped (not run, so not passed):")
            ));
            for scenario in skipped {
                let groups = scenario.skips();
                if groups.is_empty() {
                    text.push_str(&format!("  {}: no check ran\n", scenario.name));
                }
                for group in groups {
                    let n = group.checks.len();
                    text.push_str(&format!(
                        "  {}: {n} {} check{} ({}): {}\n",
                        scenario.name,
                        group.kind_str(),
                        if n == 1 { "" } else { "s" },
                        group.names(),
                        reasons_or_none(&group.reasons())
                    ));
                }
            }
        }

        let verdict = match (&report.interrupted, report.check_totals.skipped) {
            (Some(_), _) => s.verdict_padded(report.verdict, 0) + " (interrupted)",
            (None, skipped) if skipped > 0 && report.verdict == Verdict::Passed => s
                .skip
                .apply_to(format!(
                    "PASSED, {skipped} check{} skipped",
                    if skipped == 1 { "" } else { "s" }
                ))
                .to_string(),
            (None, _) => s.verdict_padded(report.verdict, 0),
        };
        text.push_str(&format!("\nVerdict: {verdict}\n"));
        if let Some(files) = &self.report_files {
            text.push_str("Reports:\n");
            for path in files.paths() {
                text.push_str(&format!("  {}\n", path.display()));
            }
        }
        text
    }
}

impl Reporter for ConsoleReporter {
    fn event(&mut self, event: &Event) -> Result<(), ReportError> {
        match event {
            Event::RunStarted {
                substrate,
                data_plane,
                pipeline,
                scenarios,
            } => {
                let plane = if *data_plane {
                    "with a data plane"
                } else {
                    "no data plane"
                };
                let text = format!(
                    "Running {} scenario{} on {substrate} ({plane}), pipeline: {pipeline}",
                    scenarios.len(),
                    if scenarios.len() == 1 { "" } else { "s" }
                );
                self.collector.event(event);
                self.run_started(scenarios.len());
                self.line(&text)
            }
            Event::ScenarioStarted {
                scenario, steps, ..
            } => {
                self.scenario_started(scenario, *steps);
                Ok(())
            }
            Event::StepStarted {
                scenario,
                step,
                label,
            } => {
                self.step_started(scenario, *step, label);
                Ok(())
            }
            Event::Check { .. } | Event::Kube { .. } | Event::Load { .. } => Ok(()),
            Event::ScenarioFinished { report } => {
                self.collector.event(event);
                self.scenario_finished(report)
            }
            Event::RunFinished { report } => self.run_finished(report),
            Event::RunInterrupted => {
                let report = self.collector.interrupted_report();
                self.run_finished(&report)
            }
        }
    }
}

/// The kinds of a scenario's skips: `no-data-plane`, or `2 not-applicable, 3 not-run`.
fn skip_kinds(report: &ScenarioReport) -> String {
    let groups = report.skips();
    if groups.len() == 1 {
        return groups[0].kind_str().to_string();
    }
    groups
        .iter()
        .map(|g| format!("{} {}", g.checks.len(), g.kind_str()))
        .collect::<Vec<_>>()
        .join(", ")
}

fn reasons_or_none(reasons: &[&str]) -> String {
    if reasons.is_empty() {
        "no reason recorded".to_string()
    } else {
        reasons.join("; ")
    }
}

/// The summary table's verdict: `PASSED+SKIPS` for a pass that skipped checks.
fn table_verdict(scenario: &ScenarioReport) -> String {
    if scenario.passed_with_skips() {
        "PASSED+SKIPS".to_string()
    } else {
        scenario.verdict.as_str().to_uppercase()
    }
}

struct Styles {
    color: bool,
    bold: Style,
    pass: Style,
    fail: Style,
    skip: Style,
}

impl Styles {
    fn new(color: bool) -> Styles {
        let style = |s: Style| s.force_styling(color);
        Styles {
            color,
            bold: style(Style::new().bold()),
            pass: style(Style::new().green().bold()),
            fail: style(Style::new().red().bold()),
            skip: style(Style::new().yellow().bold()),
        }
    }

    /// indicatif templates carry their own styles (`{prefix:.bold}`): strip them without colour.
    fn template(&self, template: &str) -> String {
        if self.color {
            template.to_string()
        } else {
            template.replace(":.bold}", "}")
        }
    }

    /// A scenario's colour: amber when it passed but skipped checks, never green.
    fn scenario_style(&self, scenario: &ScenarioReport) -> &Style {
        if scenario.passed_with_skips() {
            &self.skip
        } else {
            self.style_of(scenario.verdict)
        }
    }

    /// `PASS`, `FAIL`, `SKIP`, `ERROR`, right-aligned so names line up, in the given style.
    fn tag(&self, verdict: Verdict, style: &Style) -> String {
        let tag = match verdict {
            Verdict::Passed => "PASS",
            Verdict::Skipped => "SKIP",
            Verdict::Failed => "FAIL",
            Verdict::Error => "ERROR",
        };
        format!("{:>5}", style.apply_to(tag))
    }

    fn style_of(&self, verdict: Verdict) -> &Style {
        match verdict {
            Verdict::Passed => &self.pass,
            Verdict::Skipped => &self.skip,
            Verdict::Failed | Verdict::Error => &self.fail,
        }
    }

    fn verdict_word(&self, verdict: Verdict) -> String {
        self.style_of(verdict)
            .apply_to(verdict.as_str())
            .to_string()
    }

    /// Pads before styling, since escape codes would count as width.
    fn verdict_padded(&self, verdict: Verdict, width: usize) -> String {
        let padded = format!("{:<width$}", verdict.as_str().to_uppercase());
        self.style_of(verdict).apply_to(padded).to_string()
    }

    fn totals(&self, totals: &Totals) -> String {
        let part = |n: usize, word: &str, style: &Style| {
            let text = format!("{n} {word}");
            if n > 0 {
                style.apply_to(text).to_string()
            } else {
                text
            }
        };
        [
            part(totals.passed, "passed", &self.pass),
            part(totals.failed, "failed", &self.fail),
            part(totals.skipped, "skipped", &self.skip),
            part(totals.error, "error", &self.fail),
        ]
        .join(", ")
    }
}

/// `12.3 s`; whole seconds past ten minutes.
fn seconds(d: Duration) -> String {
    let secs = d.as_secs_f64();
    if secs >= 600.0 {
        format!("{secs:.0} s")
    } else {
        format!("{secs:.1} s")
    }
}
