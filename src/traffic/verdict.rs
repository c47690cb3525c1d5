//! Verdicts from a timeline: failures within a tolerance, outage windows, label distribution.

use std::time::Duration;

use serde::Serialize;

use super::record::{RequestRecord, Timeline};

/// How many failed requests a run may have and still pass.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Tolerance {
    /// At most this many failed requests (0: zero downtime).
    Count { max_failed: u64 },
    /// At most this fraction of requests failed (0.001 = 0.1%).
    Ratio { max_ratio: f64 },
}

impl Tolerance {
    pub const ZERO: Tolerance = Tolerance::Count { max_failed: 0 };

    fn allows(&self, failed: u64, total: u64) -> bool {
        match *self {
            Tolerance::Count { max_failed } => failed <= max_failed,
            Tolerance::Ratio { max_ratio } => {
                total == 0 || (failed as f64 / total as f64) <= max_ratio
            }
        }
    }
}

/// Whether a run stayed within its failure tolerance.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FailureVerdict {
    pub total: u64,
    pub failed: u64,
    pub tolerance: Tolerance,
    pub passed: bool,
    /// The outage windows, so a failed verdict says when.
    pub outages: Vec<OutageWindow>,
}

/// Checks the failed requests of `timeline` against `tolerance`. An empty run fails:
/// a load that sent nothing proves nothing.
pub fn failures_within(timeline: &Timeline, tolerance: Tolerance) -> FailureVerdict {
    let total = timeline.records.len() as u64;
    let failed = timeline.records.iter().filter(|r| !r.succeeded()).count() as u64;
    FailureVerdict {
        total,
        failed,
        tolerance,
        passed: total > 0 && tolerance.allows(failed, total),
        outages: outage_windows(&timeline.records),
    }
}

/// A maximal span of consecutive requests (by scheduled time) that all failed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct OutageWindow {
    /// Scheduled time of the first failed request, from the start of the run.
    #[serde(rename = "start_us", serialize_with = "micros")]
    pub start: Duration,
    /// Scheduled time of the first request after it that succeeded, or the end of
    /// the last failed request when none did.
    #[serde(rename = "end_us", serialize_with = "micros")]
    pub end: Duration,
    #[serde(rename = "duration_us", serialize_with = "micros")]
    pub duration: Duration,
    pub failed_requests: u64,
    /// Scheduled time of the last success before the window, when there is one:
    /// the outage began after it.
    #[serde(rename = "last_success_before_us", serialize_with = "opt_micros")]
    pub last_success_before: Option<Duration>,
}

fn micros<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_micros() as u64)
}

fn opt_micros<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_some(&(d.as_micros() as u64)),
        None => s.serialize_none(),
    }
}

/// The outage windows of a set of records, in time order.
pub fn outage_windows(records: &[RequestRecord]) -> Vec<OutageWindow> {
    let mut sorted: Vec<&RequestRecord> = records.iter().collect();
    sorted.sort_by_key(|r| (r.scheduled, r.seq));
    let mut windows = Vec::new();
    let mut last_success: Option<Duration> = None;
    let mut current: Option<(Duration, Duration, u64)> = None; // start, last failed end, count
    for record in sorted {
        if record.succeeded() {
            if let Some((start, _, count)) = current.take() {
                windows.push(window(start, record.scheduled, count, last_success));
            }
            last_success = Some(record.scheduled);
        } else {
            current = Some(match current {
                None => (record.scheduled, record.finished(), 1),
                Some((start, end, count)) => (start, end.max(record.finished()), count + 1),
            });
        }
    }
    if let Some((start, end, count)) = current {
        windows.push(window(start, end, count, last_success));
    }
    windows
}

fn window(
    start: Duration,
    end: Duration,
    failed_requests: u64,
    last_success_before: Option<Duration>,
) -> OutageWindow {
    let end = end.max(start);
    OutageWindow {
        start,
        end,
        duration: end - start,
        failed_requests,
        last_success_before,
    }
}

/// The 95% upper confidence bound on a leak rate after `n` trials with no leak:
/// `1 - 0.05^(1/n)` (about 3/n, the rule of three). `None` for `n == 0`.
pub fn zero_leak_upper_bound_95(n: u64) -> Option<f64> {
    (n > 0).then(|| 1.0 - 0.05_f64.powf(1.0 / n as f64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::traffic::record::{ErrorClass, Outcome};

    fn rec(seq: u64, at_ms: u64, ok: bool) -> RequestRecord {
        RequestRecord {
            seq,
            request_id: uuid::Uuid::nil(),
            scheduled: Duration::from_millis(at_ms),
            started: Duration::from_millis(at_ms),
            latency: Duration::from_millis(1),
            outcome: if ok {
                Outcome::Http { status: 200 }
            } else {
                Outcome::Transport {
                    class: ErrorClass::Refused,
                }
            },
            label: None,
        }
    }

    #[test]
    fn consecutive_failures_form_one_window_ending_at_the_next_success() {
        let records = vec![
            rec(0, 0, true),
            rec(1, 10, false),
            rec(2, 20, false),
            rec(3, 30, true),
            rec(4, 40, false),
        ];
        let windows = outage_windows(&records);
        assert_eq!(windows.len(), 2);
        assert_eq!(windows[0].start, Duration::from_millis(10));
        assert_eq!(windows[0].end, Duration::from_millis(30));
        assert_eq!(windows[0].duration, Duration::from_millis(20));
        assert_eq!(windows[0].failed_requests, 2);
        assert_eq!(windows[0].last_success_before, Some(Duration::ZERO));
        assert_eq!(windows[1].start, Duration::from_millis(40));
        assert_eq!(windows[1].end, Duration::from_millis(41));
    }

    #[test]
    fn records_out_of_order_are_windowed_by_scheduled_time() {
        let records = vec![rec(2, 20, true), rec(1, 10, false), rec(0, 0, true)];
        let windows = outage_windows(&records);
        assert_eq!(windows.len(), 1);
        assert_eq!(windows[0].start, Duration::from_millis(10));
        assert_eq!(windows[0].end, Duration::from_millis(20));
    }

    #[test]
    fn a_run_without_failures_has_no_window() {
        let records = vec![rec(0, 0, true), rec(1, 1, true)];
        assert!(outage_windows(&records).is_empty());
    }

    #[test]
    fn upper_bound_after_no_leak_is_about_three_over_n() {
        let bound = zero_leak_upper_bound_95(100).unwrap();
        assert!((bound - 0.0295).abs() < 0.0005, "{bound}");
        assert_eq!(zero_leak_upper_bound_95(1), Some(0.95));
        assert_eq!(zero_leak_upper_bound_95(0), None);
    }

    #[test]
    fn a_leak_at_the_bound_is_caught_with_95_percent_confidence_as_readme_states() {
        // A leak rate p shows at least once in n requests with probability 1 - (1 - p)^n.
        let caught = |p: f64, n: u64| 1.0 - (1.0 - p).powf(n as f64);
        for n in [1, 20, 100, 1000] {
            let bound = zero_leak_upper_bound_95(n).unwrap();
            assert!((caught(bound, n) - 0.95).abs() < 1e-9, "n = {n}");
            assert!(caught(bound * 0.9, n) < 0.95, "n = {n}");
        }
        // README's figures for the default --requests 100 and for the tests' 20.
        assert_eq!(
            format!("{:.2}%", zero_leak_upper_bound_95(100).unwrap() * 100.0),
            "2.95%"
        );
        assert_eq!(
            format!("{:.1}%", zero_leak_upper_bound_95(20).unwrap() * 100.0),
            "13.9%"
        );
        assert!(caught(1.0 / 8.0, 100) > 0.99999);
        assert_eq!(format!("{:.0}%", caught(0.01, 100) * 100.0), "63%");
    }

    #[test]
    fn tolerance_counts_and_ratios_failed_requests() {
        let mut timeline = Timeline::new(std::time::Instant::now(), std::time::SystemTime::now());
        timeline.records = (0..100).map(|i| rec(i, i, i != 50)).collect();
        assert!(!failures_within(&timeline, Tolerance::ZERO).passed);
        assert!(failures_within(&timeline, Tolerance::Count { max_failed: 1 }).passed);
        assert!(failures_within(&timeline, Tolerance::Ratio { max_ratio: 0.01 }).passed);
        assert!(!failures_within(&timeline, Tolerance::Ratio { max_ratio: 0.009 }).passed);
    }

    #[test]
    fn an_empty_run_fails_the_zero_failure_verdict() {
        let timeline = Timeline::new(std::time::Instant::now(), std::time::SystemTime::now());
        assert!(!failures_within(&timeline, Tolerance::ZERO).passed);
    }
}
