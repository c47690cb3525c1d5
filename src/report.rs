//! What a run produces: the events the scenario runner emits, the typed report
//! a collector builds from them, and the reporters that write it (console,
//! JUnit, JSON, HTML). The runner never formats output; reporters never run
//! anything (nextest's split).
//!
//! The JSON report is this module's [`RunReport`] serialized as is; its schema
//! is versioned by [`SCHEMA_VERSION`] and documented in `docs/report-schema.md`.

use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Bumped on any change to the serialized [`RunReport`] that a consumer could notice.
pub const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("write {path}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("serialize the {format} report")]
    Serialize {
        format: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// The verdict of a check or a scenario.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Passed,
    /// Not run, with a reason (e.g. the substrate has no data plane). Never a pass.
    Skipped,
    /// The property does not hold: the pipeline is at fault.
    Failed,
    /// The check could not reach a verdict (API error, timeout of cdcheck's own machinery).
    Error,
}

impl Verdict {
    /// The worse of two verdicts: error > failed > skipped > passed.
    pub fn worst(self, other: Verdict) -> Verdict {
        self.max(other)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Passed => "passed",
            Verdict::Skipped => "skipped",
            Verdict::Failed => "failed",
            Verdict::Error => "error",
        }
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a check did not run. A pipeline's own defect is never a skip: it is a finding.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum SkipKind {
    /// The substrate serves no traffic (no gateway, no mesh), and the step needs it.
    NoDataPlane,
    /// The pipeline under test gives nothing for the check to judge (no feature release,
    /// no next release): a pipeline that does not claim the promise.
    NotApplicable,
    /// The substrate refuses the step (a drain that would cordon a shared node).
    Refused,
    /// What the check needs cannot be had by its mechanism (`rollout undo` of blue/green).
    Limitation,
    /// An earlier step of the scenario could not complete (the scenario has failed already).
    NotRun,
}

impl SkipKind {
    pub const ALL: [SkipKind; 5] = [
        SkipKind::NoDataPlane,
        SkipKind::NotApplicable,
        SkipKind::Refused,
        SkipKind::Limitation,
        SkipKind::NotRun,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SkipKind::NoDataPlane => "no-data-plane",
            SkipKind::NotApplicable => "not-applicable",
            SkipKind::Refused => "refused",
            SkipKind::Limitation => "limitation",
            SkipKind::NotRun => "not-run",
        }
    }
}

impl std::fmt::Display for SkipKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One thing found wrong, tied to the object it concerns when there is one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Finding {
    /// `Kind/namespace/name` (namespace empty for cluster-scoped objects).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<String>,
    pub message: String,
}

impl Finding {
    pub fn new(message: impl Into<String>) -> Finding {
        Finding {
            object: None,
            message: message.into(),
        }
    }

    pub fn about(object: impl Into<String>, message: impl Into<String>) -> Finding {
        Finding {
            object: Some(object.into()),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.object {
            Some(object) => write!(f, "{object}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

/// The result of one check of a scenario (a JUnit testcase).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CheckResult {
    /// Stable identifier, e.g. `anti-affinity-in-spec`.
    pub name: String,
    /// One line saying what the check proves.
    pub description: String,
    /// Index of the scenario step that ran it.
    pub step: usize,
    pub verdict: Verdict,
    /// Why it failed (Failed), or what went wrong (Error).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub findings: Vec<Finding>,
    /// Why it did not run (Skipped), e.g. `local has no data plane`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skip_reason: Option<String>,
    /// What kind of skip it was (Skipped); `--require` decides on this, never on the text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skip_kind: Option<SkipKind>,
    /// Since the run started.
    #[serde(with = "millis")]
    #[schemars(with = "u64")]
    pub at: Duration,
    #[serde(with = "millis")]
    #[schemars(with = "u64")]
    pub duration: Duration,
}

/// A timestamped Kubernetes operation or observation, for lining up with traffic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct KubeEvent {
    /// Since the run started.
    #[serde(with = "millis")]
    #[schemars(with = "u64")]
    pub at: Duration,
    pub kind: KubeEventKind,
    /// `Kind/namespace/name` when the event concerns one object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<String>,
    pub detail: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum KubeEventKind {
    Apply,
    RolloutStarted,
    RolloutProgress,
    RolloutComplete,
    RolloutFailed,
    /// A blue/green Service selector change.
    Switch,
    Eviction,
    Delete,
    Rollback,
    Undo,
    Cordon,
    Other,
}

impl KubeEventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            KubeEventKind::Apply => "apply",
            KubeEventKind::RolloutStarted => "rollout-started",
            KubeEventKind::RolloutProgress => "rollout-progress",
            KubeEventKind::RolloutComplete => "rollout-complete",
            KubeEventKind::RolloutFailed => "rollout-failed",
            KubeEventKind::Switch => "switch",
            KubeEventKind::Eviction => "eviction",
            KubeEventKind::Delete => "delete",
            KubeEventKind::Rollback => "rollback",
            KubeEventKind::Undo => "undo",
            KubeEventKind::Cordon => "cordon",
            KubeEventKind::Other => "other",
        }
    }
}

/// One request of a background load, reduced to what a timeline draws.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RequestPoint {
    /// Scheduled send time, since the run started.
    pub at_ms: f64,
    pub latency_ms: f64,
    pub ok: bool,
    /// `http 200`, `grpc UNAVAILABLE`, `refused`, ...
    pub outcome: String,
}

/// A maximal span in which every request failed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct OutageWindow {
    pub from_ms: f64,
    pub to_ms: f64,
    pub requests: u64,
}

/// A background load of a scenario, with its request timeline.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct LoadResult {
    pub name: String,
    pub target: String,
    pub requests: u64,
    pub failed: u64,
    pub rate_per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// `app/pod` of every pod that began terminating or was deleted while the load ran:
    /// the events a zero-downtime verdict is about.
    #[serde(default)]
    pub terminated_pods: Vec<String>,
    /// The Services switched to another release while the load ran.
    #[serde(default)]
    pub service_switches: Vec<String>,
    pub outages: Vec<OutageWindow>,
    pub timeline: Vec<RequestPoint>,
}

/// Where a scenario's time went.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TimeBreakdown {
    /// Before its first step, not counted in its `duration`: waiting for the gateway's
    /// host (or its HTTPS port) that another scenario held.
    #[serde(with = "millis")]
    #[schemars(with = "u64")]
    pub waited_for_gateway: Duration,
    /// The wall time of each step that ran, in order (steps skipped or not reached are absent).
    pub steps: Vec<StepTime>,
}

/// One step's wall time.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct StepTime {
    /// The step's label, e.g. `update to next`.
    pub step: String,
    #[serde(with = "millis")]
    #[schemars(with = "u64")]
    pub duration: Duration,
    /// For a step that waited for rollouts: the Deployment that took longest, which sets
    /// the step's floor (its readiness delays, surge and preStop, as the pipeline set them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slowest_rollout: Option<SlowestRollout>,
}

/// The Deployment whose rollout took longest in a step, and how long.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SlowestRollout {
    pub deployment: String,
    #[serde(with = "millis")]
    #[schemars(with = "u64")]
    pub took: Duration,
}

impl LoadResult {
    /// The pods it saw terminate, counted by app (`terminated_pods` are `app/pod`).
    pub fn terminations_by_app(&self) -> std::collections::BTreeMap<&str, usize> {
        terminations_by_app(&self.terminated_pods)
    }
}

/// `app/pod` names counted by app.
pub fn terminations_by_app(pods: &[String]) -> std::collections::BTreeMap<&str, usize> {
    let mut by_app = std::collections::BTreeMap::new();
    for pod in pods {
        *by_app
            .entry(pod.split('/').next().unwrap_or(""))
            .or_default() += 1;
    }
    by_app
}

/// Everything one scenario produced.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ScenarioReport {
    pub name: String,
    /// The scenario file, as given.
    pub file: String,
    pub description: String,
    pub tags: Vec<String>,
    pub needs: Vec<String>,
    /// The namespace the scenario ran in.
    pub namespace: String,
    pub verdict: Verdict,
    #[serde(with = "millis")]
    #[schemars(with = "u64")]
    pub started_at: Duration,
    #[serde(with = "millis")]
    #[schemars(with = "u64")]
    pub duration: Duration,
    pub checks: Vec<CheckResult>,
    pub events: Vec<KubeEvent>,
    pub loads: Vec<LoadResult>,
    /// Where the scenario's time went: waiting for the gateway, then each step.
    #[serde(default)]
    pub time: TimeBreakdown,
    /// Events, pod statuses, ReplicaSet history and API errors, gathered when the scenario failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diagnostics: Option<String>,
}

/// Counts of checks and scenarios by verdict.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Totals {
    pub passed: usize,
    pub failed: usize,
    pub skipped: usize,
    pub error: usize,
}

impl Totals {
    pub fn add(&mut self, verdict: Verdict) {
        match verdict {
            Verdict::Passed => self.passed += 1,
            Verdict::Failed => self.failed += 1,
            Verdict::Skipped => self.skipped += 1,
            Verdict::Error => self.error += 1,
        }
    }
}

/// The whole run: what the JSON report holds, and what the other file reporters render.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RunReport {
    pub schema_version: u32,
    pub cdcheck_version: String,
    /// RFC 3339, UTC.
    pub started: String,
    #[serde(with = "millis")]
    #[schemars(with = "u64")]
    pub duration: Duration,
    /// `local`, `kind` or `existing`.
    pub substrate: String,
    pub data_plane: bool,
    /// `reference rendering` or the `--manifests` directory.
    pub pipeline: String,
    pub verdict: Verdict,
    /// Each with its skips counted by kind, derived from its checks when written
    /// (a scenario that passed with skips must not read as a plain pass).
    #[serde(serialize_with = "skips::serialize_scenarios")]
    #[schemars(with = "Vec<skips::ScenarioReportWithSkips>")]
    pub scenarios: Vec<ScenarioReport>,
    /// By scenario verdict.
    pub scenario_totals: Totals,
    /// By check verdict, over every scenario.
    pub check_totals: Totals,
    /// Set when the run was cut short (Ctrl-C): the report holds the scenarios that finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interrupted: Option<Interruption>,
}

/// What an interrupted run did not finish.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Interruption {
    /// The selected scenarios that had not finished, in the order they were selected.
    pub unfinished: Vec<String>,
}

/// What the runner emits, in order. Reporters consume these; a collector folds
/// them into a [`RunReport`].
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum Event {
    RunStarted {
        substrate: String,
        data_plane: bool,
        pipeline: String,
        scenarios: Vec<String>,
    },
    ScenarioStarted {
        scenario: String,
        namespace: String,
        steps: usize,
    },
    StepStarted {
        scenario: String,
        step: usize,
        label: String,
    },
    Check {
        scenario: String,
        result: CheckResult,
    },
    Kube {
        scenario: String,
        event: KubeEvent,
    },
    Load {
        scenario: String,
        load: LoadResult,
    },
    ScenarioFinished {
        report: Box<ScenarioReport>,
    },
    RunFinished {
        report: Box<RunReport>,
    },
    /// The run was cut short (Ctrl-C) and no `RunFinished` will come. Reporters
    /// report what finished, from the events they saw (see [`Collector`]).
    RunInterrupted,
}

impl Event {
    /// Whether no event follows this one.
    pub fn ends_run(&self) -> bool {
        matches!(self, Event::RunFinished { .. } | Event::RunInterrupted)
    }
}

/// Consumes the runner's events. File reporters usually act on `RunFinished` only.
pub trait Reporter: Send {
    fn event(&mut self, event: &Event) -> Result<(), ReportError>;
}

impl ScenarioReport {
    /// Its checks counted by verdict.
    pub fn check_totals(&self) -> Totals {
        let mut totals = Totals::default();
        for check in &self.checks {
            totals.add(check.verdict);
        }
        totals
    }

    /// The distinct reasons its checks were skipped, in order of first appearance.
    pub fn skip_reasons(&self) -> Vec<&str> {
        let mut reasons: Vec<&str> = Vec::new();
        for reason in self.checks.iter().filter_map(|c| c.skip_reason.as_deref()) {
            if !reasons.contains(&reason) {
                reasons.push(reason);
            }
        }
        reasons
    }

    /// Its skipped checks grouped by kind, in [`SkipKind`] order (a skip recorded
    /// without a kind last), each group with its checks in the order they ran.
    pub fn skips(&self) -> Vec<SkipGroup<'_>> {
        let mut groups: Vec<SkipGroup<'_>> = Vec::new();
        for check in self.checks.iter().filter(|c| c.verdict == Verdict::Skipped) {
            match groups.iter_mut().find(|g| g.kind == check.skip_kind) {
                Some(group) => group.checks.push(check),
                None => groups.push(SkipGroup {
                    kind: check.skip_kind,
                    checks: vec![check],
                }),
            }
        }
        // None sorts first in Option's order: put the unclassified last.
        groups.sort_by_key(|g| (g.kind.is_none(), g.kind));
        groups
    }

    /// What its verdict reads as once skips are counted: `passed`, `failed`,
    /// `passed, 3 skipped (no-data-plane)`, `skipped: 5 of 5 checks (not-applicable, not-run)`.
    /// A scenario that passed the checks it ran but skipped others is not a plain pass.
    pub fn verdict_label(&self) -> String {
        let groups = self.skips();
        if groups.is_empty() {
            return self.verdict.as_str().to_string();
        }
        let skipped: usize = groups.iter().map(|g| g.checks.len()).sum();
        let kinds = if groups.len() == 1 {
            groups[0].kind_str().to_string()
        } else {
            groups
                .iter()
                .map(|g| format!("{} {}", g.checks.len(), g.kind_str()))
                .collect::<Vec<_>>()
                .join(", ")
        };
        if self.verdict == Verdict::Skipped {
            format!(
                "skipped: {skipped} of {} checks ({kinds})",
                self.checks.len()
            )
        } else {
            format!("{}, {skipped} skipped ({kinds})", self.verdict)
        }
    }

    /// Passed the checks it ran, and skipped some: shown amber, never green.
    pub fn passed_with_skips(&self) -> bool {
        self.verdict == Verdict::Passed && self.checks.iter().any(|c| c.verdict == Verdict::Skipped)
    }

    /// Why the scenario did not run at all because the pipeline gives nothing for
    /// it to judge (`--manifests` without `--feature-manifests` for `feature-branch`):
    /// none of its checks reached a verdict, and one was skipped as not applicable.
    /// `None` when it ran, or when it was skipped for another cause (no data plane).
    pub fn not_applicable_reason(&self) -> Option<&str> {
        if self.checks.iter().any(|c| c.verdict != Verdict::Skipped) {
            return None;
        }
        self.checks
            .iter()
            .find(|c| c.skip_kind == Some(SkipKind::NotApplicable))
            .map(|c| c.skip_reason.as_deref().unwrap_or("not applicable"))
    }
}

/// Skipped checks of one kind, in one scenario.
#[derive(Clone, Debug, PartialEq)]
pub struct SkipGroup<'a> {
    pub kind: Option<SkipKind>,
    pub checks: Vec<&'a CheckResult>,
}

impl SkipGroup<'_> {
    /// The kind's name, `unclassified` for a skip recorded without one (a report from before kinds).
    pub fn kind_str(&self) -> &'static str {
        self.kind.map_or("unclassified", SkipKind::as_str)
    }

    /// Its distinct reasons, in order of first appearance.
    pub fn reasons(&self) -> Vec<&str> {
        let mut reasons: Vec<&str> = Vec::new();
        for reason in self.checks.iter().filter_map(|c| c.skip_reason.as_deref()) {
            if !reasons.contains(&reason) {
                reasons.push(reason);
            }
        }
        reasons
    }

    /// Its checks' names, each as it is, joined with `, `.
    pub fn names(&self) -> String {
        self.checks
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl RunReport {
    /// Scenarios that did not run because the pipeline gives nothing for them to
    /// judge, with why: a promise the run did not test, to be said loudly.
    pub fn not_applicable(&self) -> Vec<(&ScenarioReport, &str)> {
        self.scenarios
            .iter()
            .filter_map(|sc| sc.not_applicable_reason().map(|why| (sc, why)))
            .collect()
    }
}

impl Totals {
    pub fn total(&self) -> usize {
        self.passed + self.failed + self.skipped + self.error
    }
}

/// Folds the runner's events into the report of what finished, for a run that
/// ends without `RunFinished` (Ctrl-C): nextest's cancel, which keeps what ran.
#[derive(Debug, Default)]
pub struct Collector {
    started: Option<Started>,
    finished: Vec<ScenarioReport>,
}

#[derive(Debug)]
struct Started {
    at: std::time::Instant,
    /// RFC 3339, UTC, as the reporters saw `RunStarted` (the runner's own stamp is in `RunFinished`).
    wall: String,
    substrate: String,
    data_plane: bool,
    pipeline: String,
    selected: Vec<String>,
}

impl Collector {
    pub fn event(&mut self, event: &Event) {
        match event {
            Event::RunStarted {
                substrate,
                data_plane,
                pipeline,
                scenarios,
            } => {
                self.started = Some(Started {
                    at: std::time::Instant::now(),
                    wall: time::OffsetDateTime::now_utc()
                        .format(&time::format_description::well_known::Rfc3339)
                        .unwrap_or_default(),
                    substrate: substrate.clone(),
                    data_plane: *data_plane,
                    pipeline: pipeline.clone(),
                    selected: scenarios.clone(),
                });
                self.finished.clear();
            }
            Event::ScenarioFinished { report } => self.finished.push((**report).clone()),
            _ => {}
        }
    }

    /// The report of the scenarios that finished, in the order they were selected,
    /// marked interrupted with the ones that did not. Its verdict is `error`: the
    /// run reached none on what it did not finish, so it never reads as passed.
    pub fn interrupted_report(&self) -> RunReport {
        let selected = self
            .started
            .as_ref()
            .map(|s| s.selected.clone())
            .unwrap_or_default();
        let mut scenarios = self.finished.clone();
        scenarios.sort_by_key(|r| {
            selected
                .iter()
                .position(|n| *n == r.name)
                .unwrap_or(usize::MAX)
        });
        let unfinished = selected
            .iter()
            .filter(|n| !scenarios.iter().any(|r| r.name == **n))
            .cloned()
            .collect();
        let mut scenario_totals = Totals::default();
        let mut check_totals = Totals::default();
        for scenario in &scenarios {
            scenario_totals.add(scenario.verdict);
            scenario
                .checks
                .iter()
                .for_each(|c| check_totals.add(c.verdict));
        }
        let started = self.started.as_ref();
        RunReport {
            schema_version: SCHEMA_VERSION,
            cdcheck_version: env!("CARGO_PKG_VERSION").to_string(),
            started: started.map(|s| s.wall.clone()).unwrap_or_default(),
            duration: started.map(|s| s.at.elapsed()).unwrap_or_default(),
            substrate: started.map(|s| s.substrate.clone()).unwrap_or_default(),
            data_plane: started.is_some_and(|s| s.data_plane),
            pipeline: started.map(|s| s.pipeline.clone()).unwrap_or_default(),
            verdict: Verdict::Error,
            scenarios,
            scenario_totals,
            check_totals,
            interrupted: Some(Interruption { unfinished }),
        }
    }
}

pub mod console;
mod files;
pub mod html;
pub mod json;
pub mod junit;

pub use files::{FileReporter, ReportFiles, write_all};

/// The scenarios' derived skip summary in `report.json`: computed from the checks
/// when written, so no producer of a [`ScenarioReport`] can leave it out of step.
mod skips {
    use std::collections::BTreeMap;

    use schemars::JsonSchema;
    use serde::{Serialize, Serializer};

    use super::{ScenarioReport, SkipKind};

    /// Everything one scenario produced, with how its verdict reads once its skips are
    /// counted (derived from its checks when written).
    #[derive(Serialize, JsonSchema)]
    #[schemars(rename = "ScenarioReport")]
    pub struct ScenarioReportWithSkips<'a> {
        #[serde(flatten)]
        report: &'a ScenarioReport,
        /// Its skipped checks counted by kind; left out when none was skipped.
        #[serde(skip_serializing_if = "BTreeMap::is_empty", default)]
        skipped_by_kind: BTreeMap<SkipKind, usize>,
        /// Its verdict as it reads with skips counted: `passed, 3 skipped (no-data-plane)`.
        verdict_label: String,
    }

    impl<'a> ScenarioReportWithSkips<'a> {
        fn of(report: &'a ScenarioReport) -> Self {
            let mut skipped_by_kind = BTreeMap::new();
            for group in report.skips() {
                // A skip without a kind (a report from before kinds) has no key to count under.
                if let Some(kind) = group.kind {
                    skipped_by_kind.insert(kind, group.checks.len());
                }
            }
            ScenarioReportWithSkips {
                report,
                skipped_by_kind,
                verdict_label: report.verdict_label(),
            }
        }
    }

    pub fn serialize_scenarios<S: Serializer>(
        scenarios: &[ScenarioReport],
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_seq(scenarios.iter().map(ScenarioReportWithSkips::of))
    }
}

/// Durations as integer milliseconds in JSON.
mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_worst_verdict_wins() {
        assert_eq!(Verdict::Passed.worst(Verdict::Skipped), Verdict::Skipped);
        assert_eq!(Verdict::Skipped.worst(Verdict::Failed), Verdict::Failed);
        assert_eq!(Verdict::Error.worst(Verdict::Failed), Verdict::Error);
    }
}
