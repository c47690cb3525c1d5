//! Load generation: open loop (constant rate on a fixed schedule) and closed loop (N connections).
//!
//! Open loop measures each latency from the request's scheduled send time, so a
//! server that stalls cannot slow the schedule down and hide its stall
//! (coordinated omission): the requests due during the stall wait, and their
//! waiting counts.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use super::TrafficError;
use super::attribution::{AttributionRule, LabelInterner};
use super::caller::Caller;
use super::record::{RequestRecord, Timeline};
use super::target::Target;

/// How requests are paced.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Schedule {
    /// `rate` requests per second on a fixed schedule, whatever the answers do.
    Open { rate: f64 },
    /// `connections` connections, each sending its next request when the previous one ends.
    Closed { connections: usize },
}

/// One run of load.
#[derive(Clone, Debug)]
pub struct LoadSpec {
    pub schedule: Schedule,
    pub duration: Duration,
    /// Labels each answer, when given.
    pub attribution: Option<AttributionRule>,
    /// Ends an open-loop run early when it turns true (a background load whose end
    /// is a later step); the duration stays the upper bound.
    pub stop: Option<tokio::sync::watch::Receiver<bool>>,
}

impl LoadSpec {
    /// The load the zero-downtime verdicts use: 200 requests/s in open loop, so any
    /// outage longer than 5 ms loses at least one scheduled request.
    pub const ZERO_DOWNTIME_RATE: f64 = 200.0;

    pub fn open(rate: f64, duration: Duration) -> Self {
        Self {
            schedule: Schedule::Open { rate },
            duration,
            attribution: None,
            stop: None,
        }
    }

    pub fn closed(connections: usize, duration: Duration) -> Self {
        Self {
            schedule: Schedule::Closed { connections },
            duration,
            attribution: None,
            stop: None,
        }
    }

    pub fn zero_downtime(duration: Duration) -> Self {
        Self::open(Self::ZERO_DOWNTIME_RATE, duration)
    }

    pub fn with_attribution(mut self, rule: AttributionRule) -> Self {
        self.attribution = Some(rule);
        self
    }

    fn validate(&self) -> Result<(), TrafficError> {
        let invalid = |reason: String| Err(TrafficError::InvalidLoad { reason });
        match self.schedule {
            Schedule::Open { rate } if !(rate.is_finite() && rate > 0.0) => {
                return invalid(format!("rate {rate} is not a positive number"));
            }
            Schedule::Closed { connections: 0 } => {
                return invalid("closed loop needs at least one connection".to_string());
            }
            _ => {}
        }
        if self.duration.is_zero() {
            return invalid("duration is zero".to_string());
        }
        Ok(())
    }

    /// Requests an open-loop run will send (`None` for closed loop).
    pub fn planned(&self) -> Option<u64> {
        match self.schedule {
            Schedule::Open { rate } => Some((rate * self.duration.as_secs_f64()).floor() as u64),
            Schedule::Closed { .. } => None,
        }
    }
}

/// Live counters of a run, for a progress line.
#[derive(Debug, Default)]
pub struct Progress {
    pub sent: AtomicU64,
    pub completed: AtomicU64,
    pub failed: AtomicU64,
}

impl Progress {
    pub fn snapshot(&self) -> (u64, u64, u64) {
        (
            self.sent.load(Ordering::Relaxed),
            self.completed.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

/// Runs `spec` against `target` and returns every request's record, sorted by scheduled time.
/// Network failures are records, never errors; only an unusable spec or target is an error.
pub async fn run(
    target: &Target,
    spec: &LoadSpec,
    progress: Option<Arc<Progress>>,
) -> Result<Timeline, TrafficError> {
    spec.validate()?;
    let progress = progress.unwrap_or_default();
    let interner = Arc::new(LabelInterner::default());
    let rule = spec.attribution.clone().map(Arc::new);
    let mut timeline = match spec.schedule {
        Schedule::Open { rate } => {
            let caller = Caller::new(target)?;
            let stop = spec.stop.clone();
            open_loop(caller, rate, spec.duration, rule, interner, progress, stop).await
        }
        Schedule::Closed { connections } => {
            let callers = (0..connections)
                .map(|_| Caller::single_connection(target))
                .collect::<Result<Vec<_>, _>>()?;
            closed_loop(callers, spec.duration, rule, interner, progress).await
        }
    };
    timeline.records.sort_by_key(|r| (r.scheduled, r.seq));
    Ok(timeline)
}

struct Shared {
    rule: Option<Arc<AttributionRule>>,
    interner: Arc<LabelInterner>,
    progress: Arc<Progress>,
    start: Instant,
}

impl Shared {
    async fn one(&self, caller: &Caller, seq: u64, scheduled: Instant) -> RequestRecord {
        let request_id = fast_request_id();
        let started = Instant::now();
        self.progress.sent.fetch_add(1, Ordering::Relaxed);
        let result = caller.call(request_id, self.rule.as_deref()).await;
        let finished = Instant::now();
        self.progress.completed.fetch_add(1, Ordering::Relaxed);
        if !result.outcome.is_success() {
            self.progress.failed.fetch_add(1, Ordering::Relaxed);
        }
        RequestRecord {
            seq,
            request_id,
            scheduled: scheduled.saturating_duration_since(self.start),
            started: started.saturating_duration_since(self.start),
            latency: finished.saturating_duration_since(scheduled),
            outcome: result.outcome,
            label: result.label.map(|l| self.interner.intern(l)),
        }
    }
}

async fn open_loop(
    caller: Caller,
    rate: f64,
    duration: Duration,
    rule: Option<Arc<AttributionRule>>,
    interner: Arc<LabelInterner>,
    progress: Arc<Progress>,
    mut stop: Option<tokio::sync::watch::Receiver<bool>>,
) -> Timeline {
    let planned = (rate * duration.as_secs_f64()).floor() as u64;
    let interval_ns = 1e9 / rate;
    let wall = SystemTime::now();
    let start = Instant::now();
    let shared = Arc::new(Shared {
        rule,
        interner,
        progress,
        start,
    });
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let collector = tokio::spawn(async move {
        let mut records = Vec::with_capacity(planned.min(1 << 20) as usize);
        while let Some(record) = rx.recv().await {
            records.push(record);
        }
        records
    });
    for seq in 0..planned {
        let scheduled = start + Duration::from_nanos((seq as f64 * interval_ns) as u64);
        // The timer wheel ticks in milliseconds: requests due within the tick are sent
        // together, and their wait counts in their latency.
        if stop.as_ref().is_some_and(|s| *s.borrow()) {
            break;
        }
        if scheduled > Instant::now() {
            match stop.as_mut() {
                Some(stop) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(scheduled.into()) => {}
                        changed = stop.changed() => {
                            if changed.is_err() || *stop.borrow() {
                                break;
                            }
                            tokio::time::sleep_until(scheduled.into()).await;
                        }
                    }
                }
                None => tokio::time::sleep_until(scheduled.into()).await,
            }
        }
        let caller = caller.clone();
        let shared = shared.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            let record = shared.one(&caller, seq, scheduled).await;
            let _ = tx.send(record);
        });
    }
    drop(tx);
    let records = collector.await.unwrap_or_default();
    let mut timeline = Timeline::new(start, wall);
    timeline.elapsed = start.elapsed();
    timeline.records = records;
    timeline
}

async fn closed_loop(
    callers: Vec<Caller>,
    duration: Duration,
    rule: Option<Arc<AttributionRule>>,
    interner: Arc<LabelInterner>,
    progress: Arc<Progress>,
) -> Timeline {
    let wall = SystemTime::now();
    let start = Instant::now();
    let deadline = start + duration;
    let shared = Arc::new(Shared {
        rule,
        interner,
        progress,
        start,
    });
    let seq = Arc::new(AtomicU64::new(0));
    let workers = callers.into_iter().map(|caller| {
        let shared = shared.clone();
        let seq = seq.clone();
        tokio::spawn(async move {
            let mut records = Vec::new();
            loop {
                let now = Instant::now();
                if now >= deadline {
                    break;
                }
                let n = seq.fetch_add(1, Ordering::Relaxed);
                records.push(shared.one(&caller, n, now).await);
            }
            records
        })
    });
    let mut records = Vec::new();
    for worker in futures::future::join_all(workers).await {
        records.extend(worker.unwrap_or_default());
    }
    let mut timeline = Timeline::new(start, wall);
    timeline.elapsed = start.elapsed();
    timeline.records = records;
    timeline
}

/// A random (version 4) UUID from a per-thread splitmix64 generator seeded from the OS once:
/// unique enough for request ids, without a system call per request.
fn fast_request_id() -> uuid::Uuid {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<u64> = Cell::new(uuid::Uuid::new_v4().as_u64_pair().0);
    }
    let next = || {
        STATE.with(|state| {
            let mut z = state.get().wrapping_add(0x9E37_79B9_7F4A_7C15);
            state.set(z);
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        })
    };
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&next().to_le_bytes());
    bytes[8..].copy_from_slice(&next().to_le_bytes());
    uuid::Builder::from_random_bytes(bytes).into_uuid()
}
