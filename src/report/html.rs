//! The HTML report: one self-contained page (inline CSS, JS and SVG; nothing
//! fetched) with the run's verdict, each scenario's checks, findings and
//! diagnostics, and for every load the request timeline with the scenario's
//! Kubernetes events marked on the same time axis.
//!
//! Built with maud, which escapes every interpolated string: findings and
//! diagnostics quote objects and API errors that may contain markup.
//!
//! A skip is never green: a scenario (or run) that passed the checks it ran but
//! skipped others is amber and reads `passed, 3 skipped (no-data-plane)`; a
//! scenario the pipeline gave nothing to judge, and an interrupted run, get a
//! banner at the top.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use maud::{DOCTYPE, Markup, PreEscaped, html};

use super::{
    CheckResult, KubeEvent, KubeEventKind, LoadResult, RunReport, ScenarioReport, Totals, Verdict,
};

/// The report as one HTML page.
pub fn to_html(report: &RunReport) -> String {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { "cdcheck: " (run_label(report)) " on " (report.substrate) }
                style { (PreEscaped(CSS)) }
            }
            body {
                (run_header(report))
                main {
                    (overview(report))
                    @for scenario in &report.scenarios {
                        (scenario_section(scenario))
                    }
                }
                footer {
                    "cdcheck " (report.cdcheck_version) " · report schema v" (report.schema_version)
                    " · times are since the run started"
                }
                script { (PreEscaped(SCRIPT)) }
            }
        }
    }
    .into_string()
}

fn run_header(report: &RunReport) -> Markup {
    let plane = if report.data_plane {
        "with a data plane"
    } else {
        "no data plane"
    };
    html! {
        header class={ "run " (run_class(report)) } {
            div class="title" {
                h1 { "cdcheck conformance run" }
                span class={ "badge big " (run_class(report)) } { (run_label(report)) }
            }
            @if let Some(interruption) = &report.interrupted {
                p class="banner interrupted" {
                    "Interrupted: " (report.scenarios.len()) " of "
                    (report.scenarios.len() + interruption.unfinished.len())
                    " scenarios finished; this report holds those."
                    @if !interruption.unfinished.is_empty() {
                        " Not finished: " (interruption.unfinished.join(", ")) "."
                    }
                }
            }
            @for (scenario, why) in report.not_applicable() {
                p class="banner not-run" {
                    a href={ "#" (anchor(&scenario.name)) } { (scenario.name) }
                    " did not run: " (why)
                }
            }
            dl class="meta" {
                div { dt { "Substrate" } dd { (report.substrate) " (" (plane) ")" } }
                div { dt { "Pipeline" } dd { (report.pipeline) } }
                div { dt { "Started" } dd { (report.started) } }
                div { dt { "Duration" } dd { (seconds(report.duration)) } }
            }
            div class="totals" {
                (totals_row("Scenarios", &report.scenario_totals, passed_with_skips(report)))
                (totals_row("Checks", &report.check_totals, 0))
            }
        }
    }
}

/// Scenarios that passed with skipped checks: counted as passed, shown apart in amber.
fn passed_with_skips(report: &RunReport) -> usize {
    report
        .scenarios
        .iter()
        .filter(|s| s.passed_with_skips())
        .count()
}

/// The counts by verdict; `passed_with_skips` of the passes are named beside them, so a
/// pass with skips never reads as a plain green pass.
fn totals_row(label: &str, totals: &Totals, passed_with_skips: usize) -> Markup {
    let counts = [
        (Verdict::Passed, totals.passed),
        (Verdict::Failed, totals.failed),
        (Verdict::Skipped, totals.skipped),
        (Verdict::Error, totals.error),
    ];
    html! {
        div class="totals-row" {
            span class="totals-label" { (label) }
            @for (verdict, count) in counts {
                span class={ "count " (verdict.as_str()) @if count == 0 { " zero" } } {
                    b { (count) } " " (verdict)
                }
                @if verdict == Verdict::Passed && passed_with_skips > 0 {
                    span class="count skipped" {
                        "of which " b { (passed_with_skips) } " with skips"
                    }
                }
            }
            span class="total" { (totals.total()) " in all" }
        }
    }
}

fn overview(report: &RunReport) -> Markup {
    html! {
        section class="overview" {
            div class="toolbar" {
                h2 { "Scenarios" }
                button type="button" id="expand-all" { "Expand all" }
                button type="button" id="collapse-all" { "Collapse all" }
            }
            table {
                thead { tr {
                    th { "Scenario" } th { "Verdict" }
                    th class="num" { "Passed" } th class="num" { "Failed" }
                    th class="num" { "Skipped" } th class="num" { "Error" }
                    th class="num" { "Failed requests" } th class="num" { "Duration" }
                } }
                tbody {
                    @for scenario in &report.scenarios {
                        @let totals = scenario.check_totals();
                        @let requests: u64 = scenario.loads.iter().map(|l| l.requests).sum();
                        @let failed: u64 = scenario.loads.iter().map(|l| l.failed).sum();
                        tr {
                            td { a href={ "#" (anchor(&scenario.name)) } { (scenario.name) } }
                            td { (scenario_badge(scenario)) }
                            td class="num" { (totals.passed) }
                            td class="num" { (totals.failed) }
                            td class="num" { (totals.skipped) }
                            td class="num" { (totals.error) }
                            td class="num" {
                                @if scenario.loads.is_empty() { "–" }
                                @else { (failed) " / " (requests) }
                            }
                            td class="num" { (seconds(scenario.duration)) }
                        }
                    }
                }
            }
        }
    }
}

fn scenario_section(scenario: &ScenarioReport) -> Markup {
    let totals = scenario.check_totals();
    let open = matches!(scenario.verdict, Verdict::Failed | Verdict::Error);
    let skips = scenario.skips();
    html! {
        details class={ "scenario " (scenario_class(scenario)) } id=(anchor(&scenario.name)) open[open] {
            summary {
                (scenario_badge(scenario))
                span class="name" { (scenario.name) }
                span class="dim" { (seconds(scenario.duration)) }
                span class="dim" {
                    (totals.passed) " passed"
                    @if totals.failed > 0 { ", " (totals.failed) " failed" }
                    @if totals.error > 0 { ", " (totals.error) " error" }
                    @if totals.skipped > 0 { ", " (totals.skipped) " skipped" }
                }
                @for group in &skips {
                    span class="skip-reason" {
                        "skipped (" (group.kind_str()) "): " (group.reasons().join("; "))
                    }
                }
            }
            div class="body" {
                @if !scenario.description.is_empty() { p { (scenario.description) } }
                p class="dim small" {
                    "file " code { (scenario.file) }
                    " · namespace " code { (scenario.namespace) }
                    @if !scenario.tags.is_empty() { " · tags " (scenario.tags.join(", ")) }
                    @if !scenario.needs.is_empty() { " · needs " (scenario.needs.join(", ")) }
                }
                (checks_table(&scenario.checks))
                @if !scenario.time.steps.is_empty() {
                    p class="small" {
                        "Time: "
                        @if scenario.time.waited_for_gateway.as_millis() >= 1000 {
                            (format!("{:.1} s", scenario.time.waited_for_gateway.as_secs_f64()))
                            " waiting for the gateway, then "
                        }
                        @for (i, step) in scenario.time.steps.iter().enumerate() {
                            @if i > 0 { " · " }
                            (step.step) " " b { (format!("{:.1} s", step.duration.as_secs_f64())) }
                            @if let Some(slowest) = &step.slowest_rollout {
                                span class="dim" {
                                    (format!(" (slowest rollout: {} {:.1} s)", slowest.deployment, slowest.took.as_secs_f64()))
                                }
                            }
                        }
                    }
                }
                @for load in &scenario.loads {
                    (load_section(load, &scenario.events))
                }
                @if !scenario.events.is_empty() {
                    details class="events" {
                        summary { "Kubernetes events (" (scenario.events.len()) ")" }
                        table {
                            thead { tr { th class="num" { "At" } th { "Event" } th { "Object" } th { "Detail" } } }
                            tbody {
                                @for event in &scenario.events {
                                    tr {
                                        td class="num" { (seconds_ms(event.at.as_secs_f64() * 1000.0)) }
                                        td { span class={ "ev-name " (event_class(event.kind)) } { (event.kind.as_str()) } }
                                        td { @if let Some(object) = &event.object { code { (object) } } }
                                        td { (event.detail) }
                                    }
                                }
                            }
                        }
                    }
                }
                @if let Some(diagnostics) = &scenario.diagnostics {
                    details class="diagnostics" open {
                        summary { "Diagnostics" }
                        pre { (diagnostics) }
                    }
                }
            }
        }
    }
}

fn checks_table(checks: &[CheckResult]) -> Markup {
    html! {
        @if checks.is_empty() {
            p class="dim" { "No check ran." }
        } @else {
            table class="checks" {
                thead { tr {
                    th { "Verdict" } th { "Check" } th { "Findings / reason" }
                    th class="num" { "At" } th class="num" { "Took" }
                } }
                tbody {
                    @for check in checks {
                        tr class=(check.verdict.as_str()) {
                            td { (badge(check.verdict)) }
                            td {
                                code class="check-name" { (check.name) }
                                div class="dim small" { (check.description) }
                            }
                            td {
                                @if !check.findings.is_empty() {
                                    ul class="findings" {
                                        @for finding in &check.findings {
                                            li {
                                                @if let Some(object) = &finding.object {
                                                    code { (object) } ": "
                                                }
                                                (finding.message)
                                            }
                                        }
                                    }
                                }
                                @if check.verdict == Verdict::Skipped {
                                    span class="skip-reason" {
                                        "skipped ("
                                        (check.skip_kind.map_or("unclassified", |k| k.as_str()))
                                        "): " (check.skip_reason.as_deref().unwrap_or("no reason recorded"))
                                    }
                                }
                            }
                            td class="num" { (seconds(check.at)) }
                            td class="num" { (took(check.duration)) }
                        }
                    }
                }
            }
        }
    }
}

fn load_section(load: &LoadResult, events: &[KubeEvent]) -> Markup {
    let failed_share = if load.requests > 0 {
        100.0 * load.failed as f64 / load.requests as f64
    } else {
        0.0
    };
    let mut outcomes: BTreeMap<&str, u64> = BTreeMap::new();
    for point in load.timeline.iter().filter(|p| !p.ok) {
        *outcomes.entry(point.outcome.as_str()).or_default() += 1;
    }
    html! {
        div class="load" {
            h3 { "Load " code { (load.name) } " → " code { (load.target) } }
            p class="stats" {
                b { (load.requests) } " requests at " (format!("{:.1}", load.rate_per_s)) "/s · "
                span class=(if load.failed > 0 { "bad" } else { "good" }) {
                    b { (load.failed) } " failed (" (format!("{failed_share:.2}")) " %)"
                }
                " · p50 " (ms(load.p50_ms)) " · p99 " (ms(load.p99_ms)) " · max " (ms(load.max_ms))
                " · " (load.outages.len()) " outage" @if load.outages.len() != 1 { "s" }
                @for outage in &load.outages {
                    " (" (ms(outage.to_ms - outage.from_ms)) " at " (seconds_ms(outage.from_ms)) ")"
                }
            }
            p class="small" {
                "Under this load: "
                b { (load.terminated_pods.len()) } " pod termination"
                @if load.terminated_pods.len() != 1 { "s" }
                @if !load.terminated_pods.is_empty() {
                    " ("
                    @for (i, (app, count)) in load.terminations_by_app().iter().enumerate() {
                        @if i > 0 { ", " }
                        code { (app) } " × " (count)
                    }
                    ")"
                }
                " · " b { (load.service_switches.len()) } " Service switch"
                @if load.service_switches.len() != 1 { "es" }
                @if load.terminated_pods.is_empty() && load.service_switches.is_empty() {
                    " — nothing was replaced while it ran"
                }
            }
            @if !load.terminated_pods.is_empty() {
                details class="small" {
                    summary { "Pods terminated under this load" }
                    @for (i, pod) in load.terminated_pods.iter().enumerate() {
                        @if i > 0 { ", " }
                        code { (pod) }
                    }
                }
            }
            (timeline_chart(load, events))
            div class="legend" {
                span { i class="key ok" {} "request (latency)" }
                span { i class="key failed" {} "failed request" }
                span { i class="key outage" {} "outage (every request failed)" }
                span { i class="key event" {} "Kubernetes event" }
            }
            @if !outcomes.is_empty() {
                p class="small" {
                    "Failed requests by outcome: "
                    @for (i, (outcome, count)) in outcomes.iter().enumerate() {
                        @if i > 0 { ", " }
                        code { (outcome) } " × " (count)
                    }
                }
            }
        }
    }
}

const CHART_WIDTH: f64 = 1100.0;
const PLOT_LEFT: f64 = 70.0;
const PLOT_RIGHT: f64 = CHART_WIDTH - 20.0;
const LABEL_ROW: f64 = 15.0;
const MAX_LABEL_ROWS: usize = 5;
const FAILED_LANE: f64 = 18.0;
const PLOT_HEIGHT: f64 = 220.0;
const AXIS_BELOW: f64 = 36.0;

/// A linear map from a data range onto a pixel range.
#[derive(Clone, Copy)]
struct Scale {
    from: f64,
    to: f64,
    px_from: f64,
    px_to: f64,
}

impl Scale {
    fn at(&self, value: f64) -> f64 {
        let share = (value - self.from) / (self.to - self.from);
        self.px_from + share * (self.px_to - self.px_from)
    }
}

/// Latency over time, failed requests in their own lane, outages shaded and
/// the scenario's Kubernetes events as labelled vertical markers.
fn timeline_chart(load: &LoadResult, events: &[KubeEvent]) -> Markup {
    let Some((t_from, t_to)) = time_domain(load, events) else {
        return html! { p class="dim" { "No request was recorded." } };
    };
    let x = Scale {
        from: t_from,
        to: t_to,
        px_from: PLOT_LEFT,
        px_to: PLOT_RIGHT,
    };

    let labels = event_labels(events, &x);
    let label_rows = labels.iter().map(|l| l.row + 1).max().unwrap_or(0);
    let lane_top = 6.0 + label_rows as f64 * LABEL_ROW;
    let plot_top = lane_top + FAILED_LANE + 6.0;
    let plot_bottom = plot_top + PLOT_HEIGHT;
    let height = plot_bottom + AXIS_BELOW;

    let mut ok_latencies: Vec<f64> = load
        .timeline
        .iter()
        .filter(|p| p.ok)
        .map(|p| p.latency_ms)
        .collect();
    ok_latencies.sort_by(f64::total_cmp);
    let slowest = ok_latencies.last().copied().unwrap_or(1.0);
    let p99 = ok_latencies
        .get((ok_latencies.len() as f64 * 0.99) as usize)
        .copied()
        .unwrap_or(slowest);
    // A few very slow requests would flatten everything else to the axis: past
    // 4× the p99, the scale stops at 2× the p99 and those requests sit on the top edge.
    let y_max_wanted = if slowest > 4.0 * p99 && p99 > 0.0 {
        2.0 * p99
    } else {
        slowest
    };
    let y_step = nice_step(y_max_wanted.max(1.0) / 5.0);
    let y_max = (y_max_wanted.max(1.0) / y_step).ceil() * y_step;
    let y = Scale {
        from: 0.0,
        to: y_max,
        px_from: plot_bottom,
        px_to: plot_top,
    };
    let clipped = ok_latencies.iter().filter(|&&l| l > y_max).count();

    // One dot per pixel that has at least one request: the page stays light
    // with a hundred thousand requests, and every request is still visible.
    let mut ok_dots = HashSet::new();
    let mut ok_path = String::new();
    let mut slow_path = String::new();
    let mut failed_ticks = HashSet::new();
    let mut failed_path = String::new();
    for point in &load.timeline {
        let px = x.at(point.at_ms).round();
        if point.ok {
            let py = y.at(point.latency_ms.min(y_max)).round();
            if ok_dots.insert((px as i64, py as i64)) {
                let path = if point.latency_ms > y_max {
                    &mut slow_path
                } else {
                    &mut ok_path
                };
                path.push_str(&format!("M{px} {py}h0"));
            }
        } else if failed_ticks.insert(px as i64) {
            failed_path.push_str(&format!("M{px} {}v{}", lane_top + 2.0, FAILED_LANE - 4.0));
        }
    }

    let x_step = nice_step((t_to - t_from) / 1000.0 / 10.0);
    let first_tick = (t_from / 1000.0 / x_step).ceil() as i64;
    let last_tick = (t_to / 1000.0 / x_step).floor() as i64;
    let x_ticks: Vec<f64> = (first_tick..=last_tick)
        .map(|i| i as f64 * x_step)
        .collect();
    let y_ticks: Vec<f64> = (0..=((y_max / y_step).round() as i64))
        .map(|i| i as f64 * y_step)
        .collect();

    html! {
        svg class="timeline" viewBox={ "0 0 " (CHART_WIDTH) " " (px(height)) }
            role="img" data-requests=(load.timeline.len()) data-failed=(load.timeline.iter().filter(|p| !p.ok).count())
        {
            title { "Request latency of load " (load.name) " over time, with Kubernetes events" }
            // Grid and axes.
            @for tick in &y_ticks {
                line class="grid" x1=(PLOT_LEFT) x2=(PLOT_RIGHT) y1=(px(y.at(*tick))) y2=(px(y.at(*tick))) {}
                text class="axis" x=(PLOT_LEFT - 6.0) y=(px(y.at(*tick) + 4.0)) text-anchor="end" { (tick_ms(*tick, y_step)) }
            }
            @for tick in &x_ticks {
                line class="grid" x1=(px(x.at(tick * 1000.0))) x2=(px(x.at(tick * 1000.0))) y1=(px(plot_top)) y2=(px(plot_bottom)) {}
                text class="axis" x=(px(x.at(tick * 1000.0))) y=(px(plot_bottom + 16.0)) text-anchor="middle" {
                    (seconds_label(*tick, x_step))
                }
            }
            text class="axis-title" x=(PLOT_RIGHT) y=(px(plot_bottom + 32.0)) text-anchor="end" { "time since run start" }
            text class="axis-title" x="14" y=(px((plot_top + plot_bottom) / 2.0)) text-anchor="middle"
                transform={ "rotate(-90 14 " (px((plot_top + plot_bottom) / 2.0)) ")" } { "latency" }
            rect class="lane" x=(PLOT_LEFT) y=(px(lane_top)) width=(PLOT_RIGHT - PLOT_LEFT) height=(FAILED_LANE) {}
            text class="lane-label" x=(PLOT_LEFT - 6.0) y=(px(lane_top + 13.0)) text-anchor="end" { "failed" }
            line class="axis-line" x1=(PLOT_LEFT) x2=(PLOT_RIGHT) y1=(px(plot_bottom)) y2=(px(plot_bottom)) {}

            // Outages under everything else, so dots and markers stay visible.
            @for outage in &load.outages {
                @let left = x.at(outage.from_ms);
                @let width = (x.at(outage.to_ms) - left).max(3.0);
                g class="outage" data-from-ms=(outage.from_ms) data-to-ms=(outage.to_ms) {
                    title {
                        "outage: " (outage.requests) " requests failed from " (seconds_ms(outage.from_ms))
                        " to " (seconds_ms(outage.to_ms)) " (" (ms(outage.to_ms - outage.from_ms)) ")"
                    }
                    rect x=(px(left)) y=(px(lane_top)) width=(px(width)) height=(px(plot_bottom - lane_top)) {}
                    text x=(px(left + width + 3.0)) y=(px(plot_top + 12.0)) { "outage " (ms(outage.to_ms - outage.from_ms)) }
                }
            }

            // Kubernetes events: a vertical marker from its label down through the plot.
            @for label in &labels {
                @let event = label.event;
                @let label_y = 6.0 + label.row as f64 * LABEL_ROW + 11.0;
                g class={ "event " (event_class(event.kind)) } data-kind=(event.kind.as_str()) data-at-ms=(event.at.as_millis()) {
                    title {
                        (seconds_ms(event.at.as_secs_f64() * 1000.0)) " " (event.kind.as_str())
                        @if let Some(object) = &event.object { " " (object) }
                        @if !event.detail.is_empty() { ": " (event.detail) }
                    }
                    @if label.labelled {
                        line x1=(px(label.x)) x2=(px(label.x)) y1=(px(label_y + 3.0)) y2=(px(plot_bottom)) {}
                        text x=(px(label.x + 3.0)) y=(px(label_y)) { (label.text) }
                    } @else {
                        line class="minor" x1=(px(label.x)) x2=(px(label.x)) y1=(px(plot_top)) y2=(px(plot_bottom)) {}
                    }
                }
            }

            path class="dots ok" d=(ok_path) {}
            path class="dots slow" d=(slow_path) {}
            path class="failed-ticks" d=(failed_path) {}
            @if clipped > 0 {
                text class="clipped-note" x=(PLOT_RIGHT) y=(px(plot_top - 4.0)) text-anchor="end" {
                    (clipped) " slower request" @if clipped != 1 { "s" } " drawn on the top edge (slowest " (ms(slowest)) ")"
                }
            }
        }
    }
}

/// The time range the chart spans, in ms since the run started: the load and the events around it.
fn time_domain(load: &LoadResult, events: &[KubeEvent]) -> Option<(f64, f64)> {
    let mut from = f64::INFINITY;
    let mut to = f64::NEG_INFINITY;
    for point in &load.timeline {
        from = from.min(point.at_ms);
        to = to.max(point.at_ms + point.latency_ms);
    }
    if !from.is_finite() {
        return None;
    }
    for outage in &load.outages {
        from = from.min(outage.from_ms);
        to = to.max(outage.to_ms);
    }
    for event in events {
        let at = event.at.as_secs_f64() * 1000.0;
        from = from.min(at);
        to = to.max(at);
    }
    let span = (to - from).max(1000.0);
    let pad = span * 0.02;
    Some(((from - pad).max(0.0), from + span + pad))
}

struct EventLabel<'a> {
    event: &'a KubeEvent,
    x: f64,
    row: usize,
    /// Progress ticks are drawn unlabelled: there can be dozens of them.
    labelled: bool,
    text: String,
}

/// Places event labels in rows so that close events do not overwrite each other.
fn event_labels<'a>(events: &'a [KubeEvent], x: &Scale) -> Vec<EventLabel<'a>> {
    let mut sorted: Vec<&KubeEvent> = events.iter().collect();
    sorted.sort_by_key(|e| e.at);
    let mut row_ends: Vec<f64> = Vec::new();
    let mut labels = Vec::new();
    for event in sorted {
        let at = x.at(event.at.as_secs_f64() * 1000.0);
        if event.kind == KubeEventKind::RolloutProgress {
            labels.push(EventLabel {
                event,
                x: at,
                row: 0,
                labelled: false,
                text: String::new(),
            });
            continue;
        }
        let text = match &event.object {
            Some(object) => format!(
                "{} {}",
                event.kind.as_str(),
                object.rsplit('/').next().unwrap_or(object)
            ),
            None => event.kind.as_str().to_string(),
        };
        // About 6 px per character at the label's 10.5 px font.
        let end = at + 3.0 + text.chars().count() as f64 * 6.0 + 6.0;
        let row = match row_ends.iter().position(|&row_end| row_end <= at) {
            Some(row) => row,
            None if row_ends.len() < MAX_LABEL_ROWS => {
                row_ends.push(f64::NEG_INFINITY);
                row_ends.len() - 1
            }
            None => row_ends
                .iter()
                .enumerate()
                .min_by(|a, b| a.1.total_cmp(b.1))
                .map(|(i, _)| i)
                .unwrap_or(0),
        };
        row_ends[row] = end;
        labels.push(EventLabel {
            event,
            x: at,
            row,
            labelled: true,
            text,
        });
    }
    labels
}

fn event_class(kind: KubeEventKind) -> &'static str {
    match kind {
        KubeEventKind::Apply | KubeEventKind::Other => "ev-apply",
        KubeEventKind::RolloutStarted
        | KubeEventKind::RolloutProgress
        | KubeEventKind::RolloutComplete => "ev-rollout",
        KubeEventKind::RolloutFailed => "ev-failed",
        KubeEventKind::Switch => "ev-switch",
        KubeEventKind::Eviction | KubeEventKind::Cordon | KubeEventKind::Delete => "ev-disrupt",
        KubeEventKind::Rollback | KubeEventKind::Undo => "ev-rollback",
    }
}

/// 1, 2 or 5 times a power of ten, at least `raw`.
fn nice_step(raw: f64) -> f64 {
    if raw <= 0.0 || !raw.is_finite() {
        return 1.0;
    }
    let magnitude = 10f64.powf(raw.log10().floor());
    let fraction = raw / magnitude;
    let nice = if fraction <= 1.0 {
        1.0
    } else if fraction <= 2.0 {
        2.0
    } else if fraction <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * magnitude
}

fn badge(verdict: Verdict) -> Markup {
    html! { span class={ "badge " (verdict.as_str()) } { (verdict) } }
}

/// The scenario's verdict as it reads with its skips: `passed, 3 skipped (no-data-plane)`, amber.
fn scenario_badge(scenario: &ScenarioReport) -> Markup {
    html! { span class={ "badge " (scenario_class(scenario)) } { (scenario.verdict_label()) } }
}

/// `passed-skips` for a pass with skipped checks (amber), else the verdict.
fn scenario_class(scenario: &ScenarioReport) -> &'static str {
    if scenario.passed_with_skips() {
        "passed-skips"
    } else {
        scenario.verdict.as_str()
    }
}

fn run_class(report: &RunReport) -> &'static str {
    if report.verdict == Verdict::Passed && report.check_totals.skipped > 0 {
        "passed-skips"
    } else {
        report.verdict.as_str()
    }
}

/// `passed`, `passed, 5 skipped`, `error (interrupted)`.
fn run_label(report: &RunReport) -> String {
    if report.interrupted.is_some() {
        format!("{} (interrupted)", report.verdict)
    } else if run_class(report) == "passed-skips" {
        format!("passed, {} skipped", report.check_totals.skipped)
    } else {
        report.verdict.to_string()
    }
}

/// A fragment id made of the scenario name's safe characters.
fn anchor(name: &str) -> String {
    let safe: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!("scenario-{safe}")
}

/// Pixel coordinates to one decimal: enough on screen, and short in the file.
fn px(value: f64) -> String {
    format!("{value:.1}")
}

fn ms(value: f64) -> String {
    if value >= 100.0 {
        format!("{value:.0} ms")
    } else if value >= 10.0 {
        format!("{value:.1} ms")
    } else {
        format!("{value:.2} ms")
    }
}

fn seconds(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

/// Milliseconds under a second (checks are often that quick), seconds above.
fn took(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{} ms", d.as_millis())
    } else {
        seconds(d)
    }
}

fn tick_ms(value: f64, step: f64) -> String {
    if step >= 1.0 {
        format!("{value:.0} ms")
    } else {
        format!("{value:.1} ms")
    }
}

fn seconds_ms(value_ms: f64) -> String {
    format!("{:.3} s", value_ms / 1000.0)
}

fn seconds_label(value_s: f64, step: f64) -> String {
    if step >= 1.0 {
        format!("{value_s:.0} s")
    } else {
        format!("{value_s:.1} s")
    }
}

const CSS: &str = r#"
:root { --pass: #15803d; --pass-bg: #dcfce7; --fail: #b91c1c; --fail-bg: #fee2e2;
  --skip: #a16207; --skip-bg: #fef3c7; --err: #7e22ce; --err-bg: #f3e8ff;
  --text: #1f2937; --dim: #6b7280; --line: #e5e7eb; }
* { box-sizing: border-box; }
body { margin: 0; background: #f3f4f6; color: var(--text);
  font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
code, pre { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, "Liberation Mono", monospace; font-size: 12.5px; }
header.run { background: #fff; padding: 18px 32px 14px; border-top: 8px solid var(--dim); box-shadow: 0 1px 2px rgba(0,0,0,.08); }
header.run.passed { border-top-color: var(--pass); } header.run.failed { border-top-color: var(--fail); }
header.run.skipped, header.run.passed-skips { border-top-color: var(--skip); } header.run.error { border-top-color: var(--err); }
.banner { margin: 10px 0 4px; padding: 8px 14px; border-radius: 6px; font-weight: 700; font-size: 15px; }
.banner.not-run { background: var(--skip-bg); color: var(--skip); border: 1px solid #f59e0b; }
.banner.interrupted { background: var(--err-bg); color: var(--err); border: 1px solid #a855f7; }
.title { display: flex; align-items: center; gap: 16px; }
h1 { font-size: 22px; margin: 0; }
h2 { font-size: 17px; margin: 0; }
h3 { font-size: 15px; margin: 18px 0 4px; }
.meta { display: flex; flex-wrap: wrap; gap: 6px 32px; margin: 12px 0 10px; }
.meta div { display: flex; gap: 6px; } .meta dt { color: var(--dim); } .meta dd { margin: 0; font-weight: 600; }
.totals-row { display: flex; align-items: baseline; gap: 10px; margin: 4px 0; }
.totals-label { width: 80px; color: var(--dim); }
.count { padding: 1px 10px; border-radius: 4px; min-width: 92px; }
.count b { font-size: 16px; }
.count.zero { opacity: .45; }
.total { color: var(--dim); }
.badge { display: inline-block; padding: 1px 9px; border-radius: 10px; font-size: 11.5px; font-weight: 700;
  text-transform: uppercase; letter-spacing: .04em; min-width: 64px; text-align: center; }
.badge.big { font-size: 15px; padding: 3px 14px; border-radius: 14px; }
.passed .badge, .badge.passed, .count.passed { background: var(--pass-bg); color: var(--pass); }
.badge.failed, .count.failed { background: var(--fail-bg); color: var(--fail); }
.badge.skipped, .badge.passed-skips, .count.skipped { background: var(--skip-bg); color: var(--skip); }
.badge.error, .count.error { background: var(--err-bg); color: var(--err); }
main { padding: 8px 32px 24px; }
section.overview { background: #fff; border-radius: 6px; padding: 12px 16px; margin: 12px 0; box-shadow: 0 1px 2px rgba(0,0,0,.08); }
.toolbar { display: flex; align-items: center; gap: 8px; margin-bottom: 6px; }
.toolbar h2 { flex: 1; }
button { font: inherit; font-size: 12.5px; padding: 3px 10px; border: 1px solid #d1d5db; border-radius: 4px; background: #f9fafb; cursor: pointer; }
table { border-collapse: collapse; width: 100%; }
th { text-align: left; font-weight: 600; color: var(--dim); font-size: 12px; text-transform: uppercase; letter-spacing: .03em; }
th, td { padding: 5px 10px; border-bottom: 1px solid var(--line); vertical-align: top; }
.num { text-align: right; white-space: nowrap; font-variant-numeric: tabular-nums; }
a { color: #1d4ed8; text-decoration: none; } a:hover { text-decoration: underline; }
details.scenario { background: #fff; border-radius: 6px; margin: 12px 0; box-shadow: 0 1px 2px rgba(0,0,0,.08);
  border-left: 5px solid var(--dim); }
details.scenario.passed { border-left-color: var(--pass); } details.scenario.failed { border-left-color: var(--fail); }
details.scenario.skipped, details.scenario.passed-skips { border-left-color: var(--skip); } details.scenario.error { border-left-color: var(--err); }
details.scenario > summary { cursor: pointer; padding: 10px 16px; display: flex; align-items: center; gap: 14px; flex-wrap: wrap; }
details.scenario > summary .name { font-size: 16px; font-weight: 700; }
details.scenario > .body { padding: 0 16px 14px 20px; }
.dim { color: var(--dim); } .small { font-size: 12.5px; }
.skip-reason { color: var(--skip); font-weight: 600; }
table.checks code.check-name { font-weight: 600; }
tr.failed td, tr.error td { background: #fff7f7; }
tr.skipped td { background: #fffbeb; }
ul.findings { margin: 0; padding-left: 18px; color: var(--fail); }
ul.findings li { margin: 1px 0; } ul.findings code { color: var(--text); }
.load { margin-top: 10px; }
.stats { margin: 2px 0 4px; } .bad { color: var(--fail); } .good { color: var(--pass); }
svg.timeline { width: 100%; height: auto; display: block; background: #fff; }
svg .grid { stroke: #eef0f3; stroke-width: 1; }
svg .axis-line { stroke: #9ca3af; stroke-width: 1; }
svg .axis, svg .axis-title, svg .lane-label { font-size: 11px; fill: var(--dim); }
svg .lane-label { fill: var(--fail); font-weight: 600; }
svg .lane { fill: #fef2f2; stroke: #fecaca; stroke-width: 1; }
svg .dots { fill: none; stroke-linecap: round; stroke-width: 3.2; }
svg .dots.ok { stroke: #2563eb; stroke-opacity: .55; }
svg .dots.slow { stroke: #d97706; }
svg .failed-ticks { stroke: #dc2626; stroke-width: 2; }
svg .outage rect { fill: #dc2626; fill-opacity: .16; stroke: #dc2626; stroke-opacity: .5; stroke-width: 1; }
svg .outage text { font-size: 11px; fill: var(--fail); font-weight: 700; }
svg .clipped-note { font-size: 11px; fill: #b45309; }
svg .event line { stroke-width: 1.4; stroke-dasharray: 4 3; }
svg .event line.minor { stroke-width: 1; stroke-dasharray: 1 3; stroke-opacity: .6; }
svg .event text { font-size: 10.5px; font-weight: 600; stroke: none; }
.ev-apply { stroke: #6b7280; fill: #4b5563; color: #4b5563; }
.ev-rollout { stroke: #1d4ed8; fill: #1d4ed8; color: #1d4ed8; }
.ev-failed { stroke: #b91c1c; fill: #b91c1c; color: #b91c1c; }
.ev-switch { stroke: #7c3aed; fill: #7c3aed; color: #7c3aed; }
.ev-disrupt { stroke: #c2410c; fill: #c2410c; color: #c2410c; }
.ev-rollback { stroke: #0f766e; fill: #0f766e; color: #0f766e; }
.ev-name { font-weight: 600; }
.legend { display: flex; gap: 22px; font-size: 12px; color: var(--dim); margin: 2px 0 0 70px; }
.legend .key { display: inline-block; width: 14px; height: 10px; margin-right: 6px; vertical-align: middle; border-radius: 2px; }
.key.ok { background: #2563eb; opacity: .55; border-radius: 50%; width: 8px; height: 8px; }
.key.failed { background: #dc2626; width: 3px; height: 12px; }
.key.outage { background: rgba(220,38,38,.16); border: 1px solid rgba(220,38,38,.5); }
.key.event { border-left: 2px dashed #1d4ed8; width: 2px; height: 14px; border-radius: 0; }
details.events, details.diagnostics { margin-top: 12px; }
details.events > summary, details.diagnostics > summary { cursor: pointer; font-weight: 600; }
pre { background: #111827; color: #e5e7eb; padding: 10px 12px; border-radius: 4px; overflow: auto; max-height: 420px;
  white-space: pre-wrap; word-break: break-word; margin: 6px 0 0; }
footer { color: var(--dim); font-size: 12px; padding: 0 32px 24px; }
"#;

/// Expand or collapse every scenario; `#all` in the address opens them all,
/// and a scenario's anchor opens that one.
const SCRIPT: &str = r#"
(function () {
  var all = document.querySelectorAll('details.scenario');
  function setAll(open) { all.forEach(function (d) { d.open = open; }); }
  document.getElementById('expand-all').addEventListener('click', function () { setAll(true); });
  document.getElementById('collapse-all').addEventListener('click', function () { setAll(false); });
  function follow() {
    var id = decodeURIComponent(location.hash.slice(1));
    if (id === 'all') { setAll(true); return; }
    var target = id && document.getElementById(id);
    if (target && target.tagName === 'DETAILS') { target.open = true; }
  }
  window.addEventListener('hashchange', follow);
  follow();
})();
"#;
