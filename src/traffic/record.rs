//! Per-request records, the timeline of a run, and its summary (hdrhistogram latencies).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use hdrhistogram::Histogram;
use serde::{Serialize, Serializer};

/// How a request that got no HTTP or gRPC answer failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ErrorClass {
    /// The connection was refused (nothing listening).
    Refused,
    /// The connection was reset or closed before a complete answer.
    Reset,
    /// No answer within the request timeout.
    Timeout,
    /// The TLS handshake failed (untrusted or mismatched certificate, protocol).
    Tls,
    /// The host name did not resolve.
    Dns,
    /// Anything else at the transport level.
    Other,
}

impl ErrorClass {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Refused => "refused",
            Self::Reset => "reset",
            Self::Timeout => "timeout",
            Self::Tls => "tls",
            Self::Dns => "dns",
            Self::Other => "other",
        }
    }
}

impl std::fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What became of one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Outcome {
    /// An HTTP answer with this status.
    Http { status: u16 },
    /// A gRPC answer with this status code (0 is OK).
    Grpc { code: i32 },
    /// No answer: the transport failed.
    Transport { class: ErrorClass },
}

impl Outcome {
    /// HTTP 1xx-3xx and gRPC OK succeed; everything else failed.
    pub fn is_success(&self) -> bool {
        match self {
            Self::Http { status } => *status < 400,
            Self::Grpc { code } => *code == 0,
            Self::Transport { .. } => false,
        }
    }

    /// A short stable key: `http 503`, `grpc UNAVAILABLE`, `refused`.
    pub fn key(&self) -> String {
        match self {
            Self::Http { status } => format!("http {status}"),
            Self::Grpc { code } => format!("grpc {}", grpc_code_name(*code)),
            Self::Transport { class } => class.as_str().to_string(),
        }
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.key())
    }
}

/// The canonical name of a gRPC status code.
pub fn grpc_code_name(code: i32) -> &'static str {
    match code {
        0 => "OK",
        1 => "CANCELLED",
        2 => "UNKNOWN",
        3 => "INVALID_ARGUMENT",
        4 => "DEADLINE_EXCEEDED",
        5 => "NOT_FOUND",
        6 => "ALREADY_EXISTS",
        7 => "PERMISSION_DENIED",
        8 => "RESOURCE_EXHAUSTED",
        9 => "FAILED_PRECONDITION",
        10 => "ABORTED",
        11 => "OUT_OF_RANGE",
        12 => "UNIMPLEMENTED",
        13 => "INTERNAL",
        14 => "UNAVAILABLE",
        15 => "DATA_LOSS",
        16 => "UNAUTHENTICATED",
        _ => "UNRECOGNIZED",
    }
}

fn micros<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_micros() as u64)
}

fn uuid_text<S: Serializer>(id: &uuid::Uuid, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(id)
}

fn label_text<S: Serializer>(label: &Option<Arc<str>>, s: S) -> Result<S::Ok, S::Error> {
    match label {
        Some(label) => s.serialize_some(&**label),
        None => s.serialize_none(),
    }
}

/// One request. Times are offsets from the start of the run.
#[derive(Clone, Debug, Serialize)]
pub struct RequestRecord {
    /// Position in the schedule (open loop) or in completion order per connection (closed loop).
    pub seq: u64,
    /// Sent as `x-request-id` (HTTP header or gRPC metadata).
    #[serde(serialize_with = "uuid_text")]
    pub request_id: uuid::Uuid,
    /// When the request was due: the fixed schedule in open loop, the actual start in closed loop.
    #[serde(rename = "scheduled_us", serialize_with = "micros")]
    pub scheduled: Duration,
    /// When the request was actually sent.
    #[serde(rename = "started_us", serialize_with = "micros")]
    pub started: Duration,
    /// From the scheduled time to the end of the answer (no coordinated omission).
    #[serde(rename = "latency_us", serialize_with = "micros")]
    pub latency: Duration,
    pub outcome: Outcome,
    /// Who served it, per the attribution rule, when one was given and matched.
    #[serde(serialize_with = "label_text")]
    pub label: Option<Arc<str>>,
}

impl RequestRecord {
    pub fn succeeded(&self) -> bool {
        self.outcome.is_success()
    }

    /// Offset of the end of the request from the start of the run.
    pub fn finished(&self) -> Duration {
        self.scheduled + self.latency
    }
}

/// All records of a run, sorted by scheduled time.
#[derive(Clone, Debug, Serialize)]
pub struct Timeline {
    /// Wall-clock start of the run, milliseconds since the Unix epoch.
    pub started_unix_ms: u64,
    /// Monotonic start of the run: record offsets are relative to it.
    #[serde(skip)]
    pub started_at: Instant,
    /// How long the run took, from start to the last answer.
    #[serde(rename = "elapsed_us", serialize_with = "micros")]
    pub elapsed: Duration,
    pub records: Vec<RequestRecord>,
}

impl Timeline {
    pub fn new(started_at: Instant, started_wall: SystemTime) -> Self {
        Self {
            started_unix_ms: started_wall
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            started_at,
            elapsed: Duration::ZERO,
            records: Vec::new(),
        }
    }

    /// The offset of `instant` from the start of the run (zero if before it).
    pub fn offset_of(&self, instant: Instant) -> Duration {
        instant.saturating_duration_since(self.started_at)
    }

    pub fn summary(&self) -> Summary {
        Summary::of(self)
    }
}

/// Latency percentiles in microseconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Latency {
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
    pub mean_us: f64,
}

/// Counts, rate, errors by class, latency percentiles and labels of a run.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub count: u64,
    pub succeeded: u64,
    pub failed: u64,
    /// Requests per second over the run's elapsed time.
    pub achieved_rate: f64,
    pub elapsed_s: f64,
    /// Failed requests by outcome key (`http 503`, `refused`, `grpc UNAVAILABLE`).
    pub errors: BTreeMap<String, u64>,
    pub latency: Latency,
    /// How late requests were sent after their scheduled time: a generator that keeps
    /// its schedule keeps this near zero (open loop; always zero in closed loop).
    pub send_lag: Latency,
    /// Requests per attribution label (unlabelled ones are left out).
    pub labels: BTreeMap<String, u64>,
}

impl Summary {
    pub fn of(timeline: &Timeline) -> Self {
        let mut histogram = Histogram::<u64>::new(3).expect("3 significant figures is valid");
        let mut lag = Histogram::<u64>::new(3).expect("3 significant figures is valid");
        let mut errors = BTreeMap::new();
        let mut succeeded = 0;
        for record in &timeline.records {
            // Saturate rather than fail on an absurd latency: the histogram auto-resizes.
            let _ = histogram.record(record.latency.as_micros().max(1) as u64);
            let _ = lag.record(record.started.saturating_sub(record.scheduled).as_micros() as u64);
            if record.succeeded() {
                succeeded += 1;
            } else {
                *errors.entry(record.outcome.key()).or_insert(0) += 1;
            }
        }
        let count = timeline.records.len() as u64;
        let elapsed_s = timeline.elapsed.as_secs_f64();
        let percentiles = |h: &Histogram<u64>| {
            if count == 0 {
                Latency::default()
            } else {
                Latency {
                    p50_us: h.value_at_quantile(0.50),
                    p90_us: h.value_at_quantile(0.90),
                    p99_us: h.value_at_quantile(0.99),
                    max_us: h.max(),
                    mean_us: h.mean(),
                }
            }
        };
        let latency = percentiles(&histogram);
        let send_lag = percentiles(&lag);
        Self {
            count,
            succeeded,
            failed: count - succeeded,
            achieved_rate: if elapsed_s > 0.0 {
                count as f64 / elapsed_s
            } else {
                0.0
            },
            elapsed_s,
            errors,
            latency,
            send_lag,
            labels: label_distribution(&timeline.records),
        }
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = |us: u64| us as f64 / 1000.0;
        writeln!(
            f,
            "requests  {} in {:.2}s ({:.1} req/s), {} ok, {} failed",
            self.count, self.elapsed_s, self.achieved_rate, self.succeeded, self.failed
        )?;
        writeln!(
            f,
            "latency   p50 {:.2}ms  p90 {:.2}ms  p99 {:.2}ms  max {:.2}ms",
            ms(self.latency.p50_us),
            ms(self.latency.p90_us),
            ms(self.latency.p99_us),
            ms(self.latency.max_us)
        )?;
        writeln!(
            f,
            "send lag  p99 {:.2}ms  max {:.2}ms (behind schedule)",
            ms(self.send_lag.p99_us),
            ms(self.send_lag.max_us)
        )?;
        for (key, n) in &self.errors {
            writeln!(f, "error     {key}: {n}")?;
        }
        for (label, n) in &self.labels {
            writeln!(f, "served by {label}: {n}")?;
        }
        Ok(())
    }
}

/// Requests per attribution label; unlabelled requests are left out.
pub fn label_distribution(records: &[RequestRecord]) -> BTreeMap<String, u64> {
    let mut labels = BTreeMap::new();
    for record in records {
        if let Some(label) = &record.label {
            *labels.entry(label.to_string()).or_insert(0) += 1;
        }
    }
    labels
}
