//! Runs scenarios against a cluster: each in a namespace of its own, steps in
//! order, checks judged and emitted as events, Kubernetes operations timestamped,
//! diagnostics gathered when a scenario fails, and everything it created deleted
//! afterwards (unless asked to keep it). Reporters consume the events.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt};
use tokio::sync::mpsc::UnboundedSender;

use super::checks::PipelineView;
use super::pipeline::{Pipeline, PipelineError, Placed, ReferenceOverrides};
use super::spec::{Need, Release, Scenario, Step};

mod cluster_steps;
mod data_steps;
mod locks;
mod namespaces;
mod release_steps;

use crate::error_chain as chain;
use crate::kube::diagnostics;
use crate::manifests::{MANAGED_BY_LABEL, MANAGED_BY_VALUE};
use crate::report::{
    CheckResult, Event, Finding, KubeEvent, KubeEventKind, RunReport, SCHEMA_VERSION,
    ScenarioReport, SkipKind, Totals, Verdict,
};
use crate::substrate::{Capabilities, DataPlane, SubstrateKind, Target};
pub use namespaces::{cleanup_run, cleanup_scenario};

/// How a run is set up.
#[derive(Clone, Debug)]
pub struct RunConfig {
    pub substrate: SubstrateKind,
    /// Where the substrate's gateway answers and how in-mesh calls are made; `None`: the
    /// substrate serves no traffic, and data-plane steps are skipped.
    pub data_plane: Option<DataPlane>,
    /// What the substrate lets the run do (cordon a node for the drain).
    pub capabilities: Capabilities,
    /// Skips of these kinds fail instead (`--require`).
    pub require: std::collections::BTreeSet<SkipKind>,
    /// Scenarios run at once.
    pub jobs: usize,
    /// Keep what the run created (namespaces, gateway objects).
    pub keep: bool,
    pub pipeline: Pipeline,
    /// Apps not held to the HA checks (single instances by design).
    pub single_instance: Vec<String>,
    pub certificate_min_days: i64,
    /// Bound of one rollout.
    pub rollout_timeout: Duration,
    /// Identifies this run's objects (label `cdcheck.io/run`).
    pub run_id: String,
}

impl RunConfig {
    /// A run on `target` with every default of [`crate::settings`].
    pub fn for_target(target: &Target, pipeline: Pipeline) -> RunConfig {
        let mut config = RunConfig::new(target.kind, pipeline);
        config.data_plane = target.data_plane.clone();
        config.capabilities = target.capabilities;
        config
    }

    /// A run on a substrate of this kind without a data plane, every default of
    /// [`crate::settings`].
    pub fn new(substrate: SubstrateKind, pipeline: Pipeline) -> RunConfig {
        let id = uuid::Uuid::new_v4().simple().to_string();
        RunConfig {
            substrate,
            data_plane: None,
            capabilities: Capabilities { cordon: true },
            require: Default::default(),
            jobs: usize::from(crate::settings::JOBS),
            keep: false,
            pipeline,
            single_instance: crate::catalog::all()
                .iter()
                .filter(|w| w.role != crate::catalog::Role::Stateless)
                .map(|w| w.name.to_string())
                .collect(),
            certificate_min_days: crate::settings::CERTIFICATE_MIN_DAYS,
            rollout_timeout: crate::settings::ROLLOUT_TIMEOUT,
            run_id: id[..8].to_string(),
        }
    }
}

/// The cluster a run talks to (the substrate's).
pub use crate::substrate::Cluster;

/// Emits events and stamps them relative to the run's start.
#[derive(Clone)]
struct Emitter {
    started: Instant,
    tx: UnboundedSender<Event>,
}

impl Emitter {
    fn at(&self) -> Duration {
        self.started.elapsed()
    }

    fn send(&self, event: Event) {
        // A reporter that went away must not stop the run: its verdicts still go to the report.
        let _ = self.tx.send(event);
    }
}

/// Runs every scenario (`jobs` at a time) and returns the report; every event,
/// the last being `RunFinished`, goes to `tx`.
pub async fn run(
    cluster: &Cluster,
    scenarios: Vec<Scenario>,
    config: &RunConfig,
    tx: UnboundedSender<Event>,
) -> RunReport {
    let emitter = Emitter {
        started: Instant::now(),
        tx,
    };
    let started_wall = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    emitter.send(Event::RunStarted {
        substrate: config.substrate.to_string(),
        data_plane: config.data_plane.is_some(),
        pipeline: config.pipeline.describe(),
        scenarios: scenarios.iter().map(|s| s.name.clone()).collect(),
    });
    let order: Vec<String> = scenarios.iter().map(|s| s.name.clone()).collect();
    let config = Arc::new(config.clone());
    let locks = Arc::new(locks::GatewayLocks::new());
    // The one gateway host the pipeline's releases share whatever the scenario: a
    // pipeline's own manifests name it; the reference's host follows the namespace and
    // is never shared.
    let shared_host = match &config.pipeline {
        Pipeline::Reference(_) => None,
        Pipeline::Manifests(m) => m
            .release_bundles()
            .find_map(super::dataplane::environment_host)
            .filter(|h| !m.host_names_namespace(h)),
    };
    // Longest first: the run then lasts about as long as its longest scenario
    // rather than that plus whatever was started before it.
    let mut scenarios = scenarios;
    scenarios.sort_by_key(|s| std::cmp::Reverse(expected_cost(s)));
    let mut reports: Vec<ScenarioReport> = futures::stream::iter(scenarios)
        .map(|scenario| {
            let cluster = cluster.clone();
            let config = config.clone();
            let emitter = emitter.clone();
            let locks = locks.clone();
            let shared_host = shared_host.clone();
            async move {
                // On a data plane, wait for the gateway's host (and port 443, for a
                // TLS probe) to be free before the scenario starts, and keep them.
                let waiting = Instant::now();
                let _guard = if config.data_plane.is_some() {
                    let host = shared_host.clone();
                    let tls = scenario
                        .steps
                        .iter()
                        .any(|s| matches!(s, Step::Probe(super::spec::ProbeKind::Tls)));
                    Some(locks.take(host, tls).await)
                } else {
                    None
                };
                let waited = waiting.elapsed();
                run_scenario(&cluster, &scenario, &config, &emitter, waited).await
            }
        })
        .buffer_unordered(config.jobs.max(1))
        .collect()
        .await;
    reports.sort_by_key(|r| order.iter().position(|n| *n == r.name));
    let mut scenario_totals = Totals::default();
    let mut check_totals = Totals::default();
    let mut verdict = Verdict::Passed;
    for r in &reports {
        scenario_totals.add(r.verdict);
        r.checks.iter().for_each(|c| check_totals.add(c.verdict));
        verdict = verdict.worst(r.verdict);
    }
    let report = RunReport {
        schema_version: SCHEMA_VERSION,
        cdcheck_version: env!("CARGO_PKG_VERSION").to_string(),
        started: started_wall,
        duration: emitter.at(),
        substrate: config.substrate.to_string(),
        data_plane: config.data_plane.is_some(),
        pipeline: config.pipeline.describe(),
        verdict,
        scenarios: reports,
        scenario_totals,
        check_totals,
        interrupted: None,
    };
    emitter.send(Event::RunFinished {
        report: Box::new(report.clone()),
    });
    report
}

/// A rough cost of a scenario, in rollouts: what its steps wait for.
fn expected_cost(scenario: &Scenario) -> u32 {
    scenario
        .steps
        .iter()
        .map(|step| match step {
            Step::Deploy(_) | Step::Update(_) | Step::Switch(_) | Step::Rollback(_) => 2,
            Step::Undo {} => 2,
            // Waits out a progress deadline.
            Step::DeployBroken(_) => 3,
            Step::Drain(_) => 1,
            _ => 0,
        })
        .sum()
}

/// The verdict of a scenario from its checks: failed or error when one is;
/// skipped when every check was; an error when it has no check at all.
pub fn scenario_verdict(checks: &[CheckResult]) -> Verdict {
    if checks.is_empty() {
        return Verdict::Error;
    }
    let worst = checks
        .iter()
        .map(|c| c.verdict)
        .fold(Verdict::Passed, Verdict::worst);
    // Skipped checks are counted and shown, never passed. A scenario passes only when a
    // check of its promise passed: deploying the release it starts from proves nothing of
    // it (a blue/green scenario without a next release deploys, then skips the rest).
    if worst == Verdict::Skipped
        && checks
            .iter()
            .any(|c| c.verdict == Verdict::Passed && !is_setup(&c.name))
    {
        Verdict::Passed
    } else {
        worst
    }
}

/// The checks that only set a scenario up: the deploy of the release it starts from.
fn is_setup(check: &str) -> bool {
    check.starts_with("deploy-current")
}

/// A scenario in progress.
struct ScenarioRun<'a> {
    scenario: &'a Scenario,
    cluster: &'a Cluster,
    config: &'a RunConfig,
    emitter: &'a Emitter,
    namespace: String,
    overrides: ReferenceOverrides,
    checks: Vec<CheckResult>,
    events: Vec<KubeEvent>,
    /// The release deployed last, as placed.
    deployed: Option<(Release, Placed)>,
    /// Releases deployed, in order (for rollback and undo).
    history: Vec<Release>,
    step: usize,
    step_started: Instant,
    step_at: Duration,
    /// Background loads started and not yet stopped, by name.
    loads: BTreeMap<String, super::dataplane::RunningLoad>,
    load_results: Vec<crate::report::LoadResult>,
    /// The wall time of each step that ran.
    step_times: Vec<crate::report::StepTime>,
    /// The current step's slowest rollout, noted by the release steps.
    step_slowest_rollout: Option<crate::report::SlowestRollout>,
    /// The in-mesh client, once a step needed one.
    mesh_client: Option<crate::mesh::client::InMeshClient>,
}

/// Why a step could not go on: the scenario stops there.
struct Abort;

impl<'a> ScenarioRun<'a> {
    fn record(
        &mut self,
        name: &str,
        description: &str,
        verdict: Verdict,
        findings: Vec<Finding>,
        skip: Option<(SkipKind, String)>,
    ) {
        // A check that runs twice in a scenario (e.g. two switches) gets `#2`, `#3`:
        // JUnit testcases and report rows are told apart by name.
        let repeats = self
            .checks
            .iter()
            .filter(|c| c.name == name || c.name.starts_with(&format!("{name}#")))
            .count();
        let name = if repeats == 0 {
            name.to_string()
        } else {
            format!("{name}#{}", repeats + 1)
        };
        let result = CheckResult {
            name,
            description: description.to_string(),
            step: self.step,
            verdict,
            findings,
            skip_kind: skip.as_ref().map(|(kind, _)| *kind),
            skip_reason: skip.map(|(_, reason)| reason),
            at: self.step_at,
            duration: self.step_started.elapsed(),
        };
        self.emitter.send(Event::Check {
            scenario: self.scenario.name.clone(),
            result: result.clone(),
        });
        self.checks.push(result);
    }

    fn judged(&mut self, name: &str, description: &str, findings: Vec<Finding>) {
        let verdict = if findings.is_empty() {
            Verdict::Passed
        } else {
            Verdict::Failed
        };
        self.record(name, description, verdict, findings, None);
    }

    fn error(&mut self, name: &str, description: &str, message: String) -> Abort {
        self.record(
            name,
            description,
            Verdict::Error,
            vec![Finding::new(message)],
            None,
        );
        Abort
    }

    /// A check that did not run. A kind the run requires (`--require`) fails instead.
    fn skip(&mut self, name: &str, description: &str, kind: SkipKind, reason: String) {
        if self.config.require.contains(&kind) {
            let finding = Finding::new(format!(
                "{reason} (skip of kind {kind}, required by --require)"
            ));
            self.record(
                name,
                description,
                Verdict::Failed,
                vec![finding],
                Some((kind, reason)),
            );
        } else {
            self.record(
                name,
                description,
                Verdict::Skipped,
                Vec::new(),
                Some((kind, reason)),
            );
        }
    }

    /// The release the scenario's namespace now runs, as placed: later steps judge against
    /// it, and rollback and undo walk the history back.
    fn released(&mut self, release: Release, placed: Placed) {
        self.deployed = Some((release, placed));
        self.history.push(release);
    }

    /// Notes the step's rollouts: the slowest one (from its watch's start to completion)
    /// is reported with the step's time.
    fn note_rollouts<'r>(
        &mut self,
        rollouts: impl IntoIterator<Item = &'r crate::kube::rollout::RolloutReport>,
    ) {
        let slowest = rollouts
            .into_iter()
            .map(|r| crate::report::SlowestRollout {
                deployment: r.name.clone(),
                took: r.took,
            })
            .chain(self.step_slowest_rollout.take())
            .max_by_key(|r| r.took);
        self.step_slowest_rollout = slowest;
    }

    fn kube_event(&mut self, kind: KubeEventKind, object: Option<String>, detail: String) {
        let at = self.emitter.at();
        self.kube_event_at(at, kind, object, detail);
    }

    /// A wall-clock instant as time since the run started.
    fn since_run_start(&self, wall: std::time::SystemTime) -> Duration {
        let now = std::time::SystemTime::now();
        let back = now.duration_since(wall).unwrap_or_default();
        self.emitter.at().saturating_sub(back)
    }

    fn kube_event_at(
        &mut self,
        at: Duration,
        kind: KubeEventKind,
        object: Option<String>,
        detail: String,
    ) {
        let event = KubeEvent {
            at,
            kind,
            object,
            detail,
        };
        self.emitter.send(Event::Kube {
            scenario: self.scenario.name.clone(),
            event: event.clone(),
        });
        self.events.push(event);
    }

    fn place(&mut self, release: Release) -> Result<Placed, Abort> {
        match self.config.pipeline.place(
            release,
            &self.namespace,
            &self.config.run_id,
            self.overrides,
        ) {
            Ok(p) => Ok(p),
            Err(e @ PipelineError::NotGiven { .. }) => {
                self.skip(
                    &format!("release-{}", release.as_str()),
                    "the pipeline has the release this scenario needs",
                    SkipKind::NotApplicable,
                    format!("not applicable: {e}"),
                );
                Err(Abort)
            }
            Err(e) => Err(self.error("release", "the pipeline's release can be made", chain(&e))),
        }
    }
}

/// The static checks' view of a placed release.
fn view<'p>(
    namespace: &'p str,
    placed: &'p Placed,
    single: &'p [String],
    certificate_min_days: i64,
) -> PipelineView<'p> {
    PipelineView {
        namespace,
        bundle: &placed.bundle,
        single_instance: single,
        not_deployed: &placed.not_deployed,
        certificate_min_days,
    }
}

/// `cdcheck-<scenario>-<6 hex>`, within the 63 characters of a DNS label.
fn scenario_namespace(scenario: &str) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let mut base = format!("cdcheck-{scenario}");
    base.truncate(63 - 7);
    format!("{base}-{}", &id[..6])
}

async fn run_scenario(
    cluster: &Cluster,
    scenario: &Scenario,
    config: &RunConfig,
    emitter: &Emitter,
    waited_for_gateway: Duration,
) -> ScenarioReport {
    let namespace = scenario_namespace(&scenario.name);
    let started_at = emitter.at();
    let started = Instant::now();
    emitter.send(Event::ScenarioStarted {
        scenario: scenario.name.clone(),
        namespace: namespace.clone(),
        steps: scenario.steps.len(),
    });
    let mut run = ScenarioRun {
        scenario,
        cluster,
        config,
        emitter,
        namespace: namespace.clone(),
        overrides: ReferenceOverrides {
            strategy: scenario.reference_strategy.map(Into::into),
        },
        checks: Vec::new(),
        events: Vec::new(),
        deployed: None,
        history: Vec::new(),
        step: 0,
        step_started: Instant::now(),
        step_at: emitter.at(),
        loads: BTreeMap::new(),
        step_times: Vec::new(),
        step_slowest_rollout: None,
        load_results: Vec::new(),
        mesh_client: None,
    };
    let outcome = tokio::time::timeout(
        scenario.timeout,
        std::panic::AssertUnwindSafe(run_steps(&mut run)).catch_unwind(),
    )
    .await;
    match outcome {
        Ok(Ok(())) => {}
        Ok(Err(panic)) => {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            run.error(
                "runner",
                "cdcheck's runner completes the scenario",
                format!("panicked: {message}"),
            );
        }
        Err(_) => {
            run.error(
                "timeout",
                "the scenario completes within its timeout",
                format!(
                    "the scenario did not complete within {:?}",
                    scenario.timeout
                ),
            );
        }
    }
    // A load the scenario never stopped (it aborted) must not outlive it.
    for (_, load) in std::mem::take(&mut run.loads) {
        let _ = load.finish().await;
    }
    let verdict = scenario_verdict(&run.checks);
    let diagnostics = if matches!(verdict, Verdict::Failed | Verdict::Error) {
        let d = diagnostics::gather(&cluster.client, &namespace, None).await;
        Some(d.to_string())
    } else {
        None
    };
    if !config.keep {
        cleanup_scenario(&cluster.client, &namespace).await;
    }
    let report = ScenarioReport {
        name: scenario.name.clone(),
        file: scenario.file.display().to_string(),
        description: scenario.description.clone(),
        tags: scenario.tags.clone(),
        needs: scenario
            .needs
            .iter()
            .map(|n| n.as_str().to_string())
            .collect(),
        namespace,
        verdict,
        started_at,
        duration: started.elapsed(),
        checks: run.checks,
        events: run.events,
        loads: run.load_results,
        time: crate::report::TimeBreakdown {
            waited_for_gateway,
            steps: run.step_times,
        },
        diagnostics,
    };
    emitter.send(Event::ScenarioFinished {
        report: Box::new(report.clone()),
    });
    report
}

async fn run_steps(run: &mut ScenarioRun<'_>) {
    let steps = run.scenario.steps.clone();
    for (index, step) in steps.iter().enumerate() {
        run.step = index;
        run.step_started = Instant::now();
        run.step_at = run.emitter.at();
        run.emitter.send(Event::StepStarted {
            scenario: run.scenario.name.clone(),
            step: index,
            label: step.label(),
        });
        if step.need() == Need::DataPlane && run.config.data_plane.is_none() {
            let reason = format!("{} has no data plane", run.config.substrate);
            for (name, description) in step_checks(step) {
                run.skip(&name, &description, SkipKind::NoDataPlane, reason.clone());
            }
            continue;
        }
        let result = match step {
            Step::Deploy(release) => release_steps::deploy(run, *release).await,
            Step::Update(release) => release_steps::update(run, *release).await,
            Step::Switch(release) => release_steps::switch(run, *release).await,
            Step::DeployBroken(release) => release_steps::deploy_broken(run, *release).await,
            Step::Rollback(release) => release_steps::rollback_to(run, *release).await,
            Step::Undo {} => release_steps::undo(run).await,
            Step::Drain(_) => cluster_steps::drain_node(run).await,
            Step::Expect(names) => cluster_steps::expect(run, names).await,
            Step::LoadStart(load) => data_steps::load_start(run, step, load).await,
            Step::LoadStop(stop) => data_steps::load_stop(run, step, stop).await,
            Step::Probe(kind) => data_steps::probe(run, step, kind).await,
        };
        run.step_times.push(crate::report::StepTime {
            step: step.label(),
            duration: run.step_started.elapsed(),
            slowest_rollout: run.step_slowest_rollout.take(),
        });
        if result.is_err() {
            for later in steps.iter().skip(index + 1) {
                run.step += 1;
                for (name, description) in step_checks(later) {
                    run.record(
                        &name,
                        &description,
                        Verdict::Skipped,
                        Vec::new(),
                        Some((
                            SkipKind::NotRun,
                            "not run: an earlier step could not complete".into(),
                        )),
                    );
                }
            }
            return;
        }
    }
}

/// The checks a step records when it is skipped, each with its description: an
/// `expect` step records one per check it names, under the check's own name (joining
/// its label into one name gave `expect-feature-names,-session-routes-anchored,...`).
fn step_checks(step: &Step) -> Vec<(String, String)> {
    match step {
        Step::Expect(names) => names
            .iter()
            .map(|n| (n.as_str().to_string(), n.description().to_string()))
            .collect(),
        other => vec![(step_check_name(other), other.label())],
    }
}

/// The one check a step other than `expect` records under its own name; an `expect`
/// step has no name of its own (its checks have theirs: [`step_checks`]).
fn step_check_name(step: &Step) -> String {
    match step {
        Step::LoadStart(l) => format!("load-{}", l.name),
        Step::LoadStop(l) => format!("load-{}-zero-failed", l.name),
        Step::Probe(p) => format!("probe-{p:?}").to_lowercase(),
        Step::Expect(_) => "expect".to_string(),
        other => other
            .label()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join("-"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scenario_whose_promise_was_all_skipped_is_skipped_though_its_deploy_passed() {
        let mut deploy = check(Verdict::Passed);
        deploy.name = "deploy-current".into();
        let mut switch = check(Verdict::Skipped);
        switch.name = "switch-after-ready".into();
        assert_eq!(
            scenario_verdict(&[deploy.clone(), switch.clone()]),
            Verdict::Skipped
        );
        let mut judged = check(Verdict::Passed);
        judged.name = "nothing-mixed-after".into();
        assert_eq!(scenario_verdict(&[deploy, switch, judged]), Verdict::Passed);
    }

    #[test]
    fn an_expect_step_records_each_check_under_its_own_name() {
        use crate::scenario::checks::CheckName;
        let step = Step::Expect(vec![
            CheckName::FeatureNames,
            CheckName::SessionRoutesAnchored,
        ]);
        let names: Vec<String> = step_checks(&step).into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["feature-names", "session-routes-anchored"]);
    }

    /// Whatever path records a step's checks (not run, no data plane), no name joins
    /// several checks or reads like a sentence, in any built-in scenario.
    #[test]
    fn no_step_of_a_built_in_scenario_records_a_joined_name() {
        for scenario in crate::scenario::builtin::scenarios().unwrap() {
            for step in &scenario.steps {
                for name in std::iter::once(step_check_name(step))
                    .chain(step_checks(step).into_iter().map(|(n, _)| n))
                {
                    assert!(
                        !name.is_empty() && !name.contains([',', ' ']),
                        "{}: {}: {name:?}",
                        scenario.name,
                        step.label()
                    );
                }
            }
        }
    }

    fn check(verdict: Verdict) -> CheckResult {
        CheckResult {
            name: "c".into(),
            description: String::new(),
            step: 0,
            verdict,
            findings: Vec::new(),
            skip_reason: None,
            skip_kind: None,
            at: Duration::ZERO,
            duration: Duration::ZERO,
        }
    }

    #[test]
    fn a_scenario_is_as_bad_as_its_worst_check_and_never_passes_empty() {
        assert_eq!(scenario_verdict(&[]), Verdict::Error);
        assert_eq!(
            scenario_verdict(&[check(Verdict::Passed), check(Verdict::Skipped)]),
            Verdict::Passed
        );
        assert_eq!(
            scenario_verdict(&[check(Verdict::Skipped), check(Verdict::Skipped)]),
            Verdict::Skipped
        );
        assert_eq!(
            scenario_verdict(&[check(Verdict::Skipped), check(Verdict::Failed)]),
            Verdict::Failed
        );
        assert_eq!(
            scenario_verdict(&[check(Verdict::Passed), check(Verdict::Passed)]),
            Verdict::Passed
        );
    }

    #[test]
    fn scenario_namespaces_are_dns_labels() {
        let ns = scenario_namespace("a-very-long-scenario-name-that-goes-on-and-on-and-on-forever");
        assert!(ns.len() <= 63, "{ns}");
        assert!(crate::manifests::options::is_dns_label(&ns), "{ns}");
    }
}
