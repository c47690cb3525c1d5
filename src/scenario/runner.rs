//! Runs scenarios against a cluster: each in a namespace of its own, steps in
//! order, checks judged and emitted as events, Kubernetes operations timestamped,
//! diagnostics gathered when a scenario fails, and everything it created deleted
//! afterwards (unless asked to keep it). Reporters consume the events.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ::kube::api::{Api, DeleteParams, ListParams, PostParams};
use ::kube::{Client, Config, ResourceExt};
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use tokio::sync::mpsc::UnboundedSender;

use super::checks::{self, CheckName, GATEWAY_NAMESPACE, Judgement, PipelineView};
use super::pipeline::{
    Pipeline, PipelineError, Placed, RUN_LABEL, ReferenceOverrides, SCENARIO_LABEL,
};
use super::spec::{Need, Release, Scenario, Step};

mod data_steps;
use crate::kube::placement::{self, HaFinding};
use crate::kube::{apply, diagnostics, drain, rbac, release, rollback, rollout};
use crate::manifests::{MANAGED_BY_LABEL, MANAGED_BY_VALUE, Object};
use crate::report::{
    CheckResult, Event, Finding, KubeEvent, KubeEventKind, RunReport, SCHEMA_VERSION,
    ScenarioReport, SkipKind, Totals, Verdict,
};

/// How a run is set up.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// `local`, `kind` or `existing`.
    pub substrate: String,
    /// Whether the substrate serves traffic (load and probe steps run): true with an ingress.
    pub data_plane: bool,
    /// Where the substrate's gateway answers (set with `data_plane`).
    pub ingress: Option<super::dataplane::Ingress>,
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
    /// Whether the drain step may cordon a node (false on an existing cluster unless
    /// `--allow-cordon`: a cordon there blocks other teams' scheduling on that node).
    pub allow_cordon: bool,
}

impl RunConfig {
    pub fn new(substrate: &str, pipeline: Pipeline) -> RunConfig {
        let id = uuid::Uuid::new_v4().simple().to_string();
        RunConfig {
            substrate: substrate.to_string(),
            data_plane: false,
            ingress: None,
            require: Default::default(),
            jobs: 4,
            keep: false,
            pipeline,
            single_instance: crate::catalog::all()
                .iter()
                .filter(|w| w.role != crate::catalog::Role::Stateless)
                .map(|w| w.name.to_string())
                .collect(),
            certificate_min_days: 30,
            rollout_timeout: Duration::from_secs(120),
            run_id: id[..8].to_string(),
            allow_cordon: true,
        }
    }
}

/// What scenarios running side by side must not share on a data plane: an
/// environment host (the gateway routes one host to one VirtualService), and the
/// gateway's HTTPS port while a scenario judges the certificate served there (every
/// scenario's Gateway copy serves `*` on 443, and the oldest one's certificate wins).
/// File locks (flock) in a directory of the machine, so two `cdcheck run`s on the
/// same substrate (e.g. test binaries side by side) wait for each other too.
struct GatewayLocks {
    dir: std::path::PathBuf,
}

/// Held by a scenario from its first step to its end: closing the files unlocks.
struct GatewayGuard {
    _files: Vec<std::fs::File>,
}

impl GatewayLocks {
    fn new() -> GatewayLocks {
        GatewayLocks {
            dir: std::env::temp_dir().join("cdcheck-gateway-locks"),
        }
    }

    async fn take(&self, host: Option<String>, exclusive_tls: bool) -> GatewayGuard {
        let mut files = Vec::new();
        let mut wanted = Vec::new();
        if let Some(host) = host {
            let name: String = host
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                        c
                    } else {
                        '_'
                    }
                })
                .collect();
            wanted.push((self.dir.join(format!("host-{name}.lock")), libc::LOCK_EX));
        }
        let tls = if exclusive_tls {
            libc::LOCK_EX
        } else {
            libc::LOCK_SH
        };
        wanted.push((self.dir.join("gateway-tls.lock"), tls));
        for (path, operation) in wanted {
            match flock(path.clone(), operation).await {
                Ok(file) => files.push(file),
                Err(e) => tracing::warn!(
                    "lock {}: {e} (scenarios may share the gateway)",
                    path.display()
                ),
            }
        }
        GatewayGuard { _files: files }
    }
}

/// Opens (creating) `path` and takes `operation` (LOCK_SH or LOCK_EX) on it, waiting.
async fn flock(path: std::path::PathBuf, operation: i32) -> std::io::Result<std::fs::File> {
    tokio::task::spawn_blocking(move || {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)?;
        let fd = std::os::fd::AsRawFd::as_raw_fd(&file);
        // SAFETY: flock on a descriptor owned by `file`, which the guard keeps open.
        if unsafe { libc::flock(fd, operation) } == 0 {
            Ok(file)
        } else {
            Err(std::io::Error::last_os_error())
        }
    })
    .await
    .map_err(std::io::Error::other)?
}

/// The cluster a run talks to.
#[derive(Clone)]
pub struct Cluster {
    pub config: Config,
    pub client: Client,
}

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
        substrate: config.substrate.clone(),
        data_plane: config.data_plane,
        pipeline: config.pipeline.describe(),
        scenarios: scenarios.iter().map(|s| s.name.clone()).collect(),
    });
    let order: Vec<String> = scenarios.iter().map(|s| s.name.clone()).collect();
    let config = Arc::new(config.clone());
    let locks = Arc::new(GatewayLocks::new());
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
            async move {
                // On a data plane, wait for the gateway's host (and port 443, for a
                // TLS probe) to be free before the scenario starts, and keep them.
                let _guard = if config.data_plane {
                    let host = [Release::Current, Release::Feature]
                        .into_iter()
                        .find_map(|r| {
                            config
                                .pipeline
                                .place(
                                    r,
                                    "cdcheck-probe-host",
                                    &config.run_id,
                                    ReferenceOverrides::default(),
                                )
                                .ok()
                        })
                        .and_then(|placed| super::dataplane::environment_host(&placed))
                        // The reference pipeline's host follows the namespace: never shared.
                        .filter(|h| !h.starts_with("cdcheck-probe-host"));
                    let tls = scenario
                        .steps
                        .iter()
                        .any(|s| matches!(s, Step::Probe(super::spec::ProbeKind::Tls)));
                    Some(locks.take(host, tls).await)
                } else {
                    None
                };
                run_scenario(&cluster, &scenario, &config, &emitter).await
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
        substrate: config.substrate.clone(),
        data_plane: config.data_plane,
        pipeline: config.pipeline.describe(),
        verdict,
        scenarios: reports,
        scenario_totals,
        check_totals,
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
    // Skipped checks are counted and shown, never passed; a scenario is skipped
    // only when nothing of it ran.
    if worst == Verdict::Skipped && checks.iter().any(|c| c.verdict == Verdict::Passed) {
        Verdict::Passed
    } else {
        worst
    }
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
            let finding = Finding::new(format!("{reason} (skip of kind {kind}, required by --require)"));
            self.record(name, description, Verdict::Failed, vec![finding], Some((kind, reason)));
        } else {
            self.record(name, description, Verdict::Skipped, Vec::new(), Some((kind, reason)));
        }
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

fn chain(error: &dyn std::error::Error) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
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
        if step.need() == Need::DataPlane && !run.config.data_plane {
            let reason = format!("{} has no data plane", run.config.substrate);
            run.skip(&step_check_name(step), &step.label(), SkipKind::NoDataPlane, reason);
            continue;
        }
        let result = match step {
            Step::Deploy(release) => deploy(run, *release).await,
            Step::Update(release) => update(run, *release).await,
            Step::Switch(release) => switch(run, *release).await,
            Step::DeployBroken(release) => deploy_broken(run, *release).await,
            Step::Rollback(release) => rollback_to(run, *release).await,
            Step::Undo {} => undo(run).await,
            Step::Drain(_) => drain_node(run).await,
            Step::Expect(names) => expect(run, names).await,
            Step::LoadStart(load) => data_steps::load_start(run, step, load).await,
            Step::LoadStop(stop) => data_steps::load_stop(run, step, stop).await,
            Step::Probe(kind) => data_steps::probe(run, step, kind).await,
        };
        if result.is_err() {
            for later in steps.iter().skip(index + 1) {
                run.step += 1;
                run.record(
                    &step_check_name(later),
                    &later.label(),
                    Verdict::Skipped,
                    Vec::new(),
                    Some((
                        SkipKind::NotRun,
                        "not run: an earlier step could not complete".into(),
                    )),
                );
            }
            return;
        }
    }
}

fn step_check_name(step: &Step) -> String {
    match step {
        Step::LoadStart(l) => format!("load-{}", l.name),
        Step::LoadStop(l) => format!("load-{}-zero-failed", l.name),
        Step::Probe(p) => format!("probe-{p:?}").to_lowercase(),
        other => other
            .label()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join("-"),
    }
}

fn deployment_keys(placed: &Placed) -> Vec<(String, String)> {
    placed
        .bundle
        .deployments()
        .map(|d| {
            (
                d.metadata.namespace.clone().unwrap_or_default(),
                d.metadata.name.clone().unwrap_or_default(),
            )
        })
        .collect()
}

/// Creates the scenario's namespace when the release brings none, labelled as cdcheck's.
async fn ensure_namespace(run: &mut ScenarioRun<'_>, placed: &Placed) -> Result<(), Abort> {
    if placed
        .bundle
        .objects
        .iter()
        .any(|o| matches!(o, Object::Namespace(_)))
    {
        return Ok(());
    }
    let api: Api<Namespace> = Api::all(run.cluster.client.clone());
    let ns: Namespace = serde_json::from_value(serde_json::json!({
        "metadata": {"name": run.namespace, "labels": {
            MANAGED_BY_LABEL: MANAGED_BY_VALUE,
            crate::substrate::existing::OWNED_BY_LABEL: crate::substrate::existing::OWNED_BY_VALUE,
            RUN_LABEL: run.config.run_id,
            SCENARIO_LABEL: run.namespace,
            "istio-injection": "enabled",
        }}
    }))
    .expect("a namespace object");
    match api.create(&PostParams::default(), &ns).await {
        Ok(_) => Ok(()),
        // Already there: ours only if this run labelled it (an earlier step created
        // it); anyone else's namespace is never used, let alone cleaned up.
        Err(::kube::Error::Api(s)) if s.code == 409 => {
            let existing = api.get_opt(&run.namespace).await.ok().flatten();
            let ours = existing.as_ref().is_some_and(|n| {
                n.labels().get(RUN_LABEL).map(String::as_str) == Some(run.config.run_id.as_str())
            });
            if ours {
                Ok(())
            } else {
                Err(run.error(
                    "namespace",
                    "the scenario's namespace can be created",
                    format!(
                        "namespace {} already exists and this run did not create it: cdcheck leaves it alone",
                        run.namespace
                    ),
                ))
            }
        }
        Err(e) => Err(run.error(
            "namespace",
            "the scenario's namespace can be created",
            chain(&e),
        )),
    }
}

/// Applies a release and waits for its rollout; the pipeline is at fault when
/// the API refuses an object or a rollout fails.
async fn deploy(run: &mut ScenarioRun<'_>, release: Release) -> Result<(), Abort> {
    let placed = run.place(release)?;
    ensure_namespace(run, &placed).await?;
    run.kube_event(
        KubeEventKind::Apply,
        None,
        format!(
            "apply the {} release ({} objects)",
            release.as_str(),
            placed.bundle.objects.len()
        ),
    );
    let name = format!("deploy-{}", release.as_str());
    let description = format!(
        "the {} release applies and every Deployment rolls out",
        release.as_str()
    );
    let result = release::deploy(
        &run.cluster.client,
        &placed.bundle,
        &run.namespace,
        run.config.rollout_timeout,
    )
    .await;
    match result {
        Ok(report) => {
            run.kube_event(
                KubeEventKind::RolloutComplete,
                None,
                format!(
                    "{} Deployments rolled out in {:?}",
                    report.rollouts.len(),
                    report.took
                ),
            );
            run.judged(&name, &description, Vec::new());
            run.deployed = Some((release, placed));
            run.history.push(release);
            Ok(())
        }
        Err(e) => {
            let findings = deploy_findings(&e);
            run.kube_event(KubeEventKind::RolloutFailed, None, chain(&e));
            run.judged(&name, &description, findings);
            Err(Abort)
        }
    }
}

fn deploy_findings(error: &release::ReleaseError) -> Vec<Finding> {
    match error {
        release::ReleaseError::Rollout(rollout::RolloutError::ProgressDeadline {
            namespace,
            name,
            reason,
            message,
            ..
        }) => vec![Finding::about(
            format!("Deployment/{namespace}/{name}"),
            format!("{reason}: {message}"),
        )],
        release::ReleaseError::Rollout(rollout::RolloutError::Timeout {
            namespace,
            name,
            waited,
            state,
            ..
        }) => vec![Finding::about(
            format!("Deployment/{namespace}/{name}"),
            format!("did not roll out within {waited:?} ({state})"),
        )],
        other => vec![Finding::new(chain(other))],
    }
}

async fn expect(run: &mut ScenarioRun<'_>, names: &[CheckName]) -> Result<(), Abort> {
    let Some((_, placed)) = run.deployed.clone() else {
        return Err(run.error(
            "expect",
            "checks need a deployed release",
            "no release was deployed before this step (add a `deploy` step)".into(),
        ));
    };
    let single = run.config.single_instance.clone();
    for name in names {
        if name.is_live() {
            live_check(run, *name, &placed).await;
            continue;
        }
        let namespace = run.namespace.clone();
        let days = run.config.certificate_min_days;
        let judgement = checks::run_static(*name, &view(&namespace, &placed, &single, days));
        match judgement {
            Judgement::Findings(findings) => {
                run.judged(name.as_str(), name.description(), findings)
            }
            Judgement::NotApplicable(why) => run.skip(
                name.as_str(),
                name.description(),
                SkipKind::NotApplicable,
                format!("not applicable: {why}"),
            ),
            Judgement::NothingToCheck(why) => {
                run.error(
                    name.as_str(),
                    name.description(),
                    format!("nothing to check: {why}"),
                );
            }
            Judgement::Partly { findings, unjudged } => {
                run.judged(name.as_str(), name.description(), findings);
                let what = format!("what {} could not judge", name.as_str());
                run.skip(
                    &format!("{}-unjudged", name.as_str()),
                    &what,
                    SkipKind::Limitation,
                    unjudged,
                );
            }
        }
    }
    Ok(())
}

async fn live_check(run: &mut ScenarioRun<'_>, name: CheckName, placed: &Placed) {
    let result = match name {
        CheckName::Placement => placement_check(run, placed).await,
        CheckName::RbacMatrix => rbac_matrix(run, placed).await,
        _ => unreachable!("only live checks come here"),
    };
    match result {
        Ok(findings) => run.judged(name.as_str(), name.description(), findings),
        Err(message) => {
            run.error(name.as_str(), name.description(), message);
        }
    }
}

/// Where the pods of each HA Deployment run, as the API server has them
/// ([`placement::check`]); its spec findings are the static checks' business.
async fn placement_check(run: &ScenarioRun<'_>, placed: &Placed) -> Result<Vec<Finding>, String> {
    let single = run.config.single_instance.clone();
    let view = view(
        &run.namespace,
        placed,
        &single,
        run.config.certificate_min_days,
    );
    let names: Vec<String> = checks::ha_deployments(&view)
        .iter()
        .map(|d| d.name_any())
        .collect();
    if let Err(empty) = checks::ha_population(&view) {
        return Ok(vec![empty]);
    }
    let findings = placement::check(&run.cluster.client, &run.namespace, &names)
        .await
        .map_err(|e| chain(&e))?;
    Ok(findings
        .into_iter()
        .filter_map(|f| {
            let deployment = match &f {
                HaFinding::PodCount { deployment, .. }
                | HaFinding::Unscheduled { deployment, .. }
                | HaFinding::SharedNode { deployment, .. } => deployment.clone(),
                HaFinding::TooFewReplicas { .. } | HaFinding::NoAntiAffinity { .. } => {
                    return None;
                }
            };
            Some(Finding::about(
                format!("Deployment/{}/{deployment}", run.namespace),
                f.to_string(),
            ))
        })
        .collect())
}

/// The deployer: the ServiceAccount a RoleBinding of the namespace binds (the
/// reference rendering's `<env>-deployer`).
fn deployer(placed: &Placed, namespace: &str) -> Option<String> {
    let mut bound: Vec<String> = placed
        .bundle
        .objects
        .iter()
        .filter_map(|o| match o {
            Object::RoleBinding(rb) => Some(rb),
            _ => None,
        })
        .flat_map(|rb| rb.subjects.clone().unwrap_or_default())
        .filter(|s| {
            s.kind == "ServiceAccount" && s.namespace.as_deref().is_none_or(|n| n == namespace)
        })
        .map(|s| s.name)
        .collect();
    bound.sort_by_key(|n| !n.ends_with("-deployer"));
    bound.into_iter().next()
}

async fn rbac_matrix(run: &mut ScenarioRun<'_>, placed: &Placed) -> Result<Vec<Finding>, String> {
    let Some(sa) = deployer(placed, &run.namespace) else {
        return Ok(vec![Finding::new(format!(
            "no RoleBinding in {} binds a ServiceAccount: the pipeline has no namespace-scoped deployer",
            run.namespace
        ))]);
    };
    // A sibling namespace the deployer must not reach.
    let other = format!("{}-other", run.namespace);
    let api: Api<Namespace> = Api::all(run.cluster.client.clone());
    let ns: Namespace = serde_json::from_value(serde_json::json!({
        "metadata": {"name": other, "labels": {
            MANAGED_BY_LABEL: MANAGED_BY_VALUE,
            RUN_LABEL: run.config.run_id,
            SCENARIO_LABEL: run.namespace,
        }}
    }))
    .expect("a namespace object");
    match api.create(&PostParams::default(), &ns).await {
        Ok(_) => {}
        Err(::kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => return Err(format!("create namespace {other}: {}", chain(&e))),
    }
    let subject = rbac::Subject::service_account(&run.namespace, &sa);
    let probes = rbac::probes(
        &[run.namespace.as_str(), other.as_str(), GATEWAY_NAMESPACE],
        &rbac::deployer_resources(),
        &rbac::Verb::ALL,
    );
    let matrix = rbac::matrix(&run.cluster.config, &subject, probes)
        .await
        .map_err(|e| chain(&e))?;
    // A cell without an answer (401, 429, 5xx...) is no verdict on the pipeline.
    let errors = matrix.errors();
    if !errors.is_empty() {
        return Err(format!(
            "{} of {} questions got no answer, e.g. {}: review {}, request {}",
            errors.len(),
            matrix.cells.len(),
            errors[0].probe,
            errors[0].review,
            errors[0].request
        ));
    }
    let own = run.namespace.clone();
    let account = format!("ServiceAccount/{own}/{sa}");
    let mut findings = Vec::new();
    for cell in &matrix.cells {
        let status = cell
            .request_status
            .map(|s| s.to_string())
            .unwrap_or_else(|| "-".into());
        let in_own = cell.probe.namespace.as_deref() == Some(own.as_str());
        if in_own {
            // The deployer must be able to deploy: change Deployments and Services.
            let needed = matches!(
                cell.probe.resource.plural.as_str(),
                "deployments" | "services"
            ) && matches!(
                cell.probe.verb,
                rbac::Verb::Get | rbac::Verb::Create | rbac::Verb::Update | rbac::Verb::Patch
            );
            if needed && !(cell.review.is_allowed() && cell.request.is_allowed()) {
                findings.push(Finding::about(
                    account.clone(),
                    format!(
                        "may not {} (HTTP {status}): it cannot deploy its own namespace",
                        cell.probe
                    ),
                ));
            }
        } else if cell.review.is_allowed() || cell.request.is_allowed() {
            findings.push(Finding::about(
                account.clone(),
                format!(
                    "may {} (review {}, real request HTTP {status}): a deployer must reach nothing outside its namespace",
                    cell.probe, cell.review
                ),
            ));
        }
    }
    Ok(findings)
}

/// Rolls to `release` while watching every Deployment: ready pods must never
/// fall below the desired count.
async fn update(run: &mut ScenarioRun<'_>, release: Release) -> Result<(), Abort> {
    let placed = run.place(release)?;
    let keys = deployment_keys(&placed);
    let mut watches = Vec::new();
    for (ns, name) in &keys {
        match rollout::RolloutWatch::start(&run.cluster.client, ns, name).await {
            Ok(watch) => watches.push(watch),
            Err(e) => {
                return Err(run.error(
                    &format!("update-{}", release.as_str()),
                    "the rollout watches start",
                    chain(&e),
                ));
            }
        }
    }
    run.kube_event(
        KubeEventKind::RolloutStarted,
        None,
        format!("apply the {} release", release.as_str()),
    );
    if let Err(e) =
        apply::apply_bundle(&run.cluster.client, &placed.bundle, Some(&run.namespace)).await
    {
        run.judged(
            &format!("update-{}", release.as_str()),
            "the next release applies",
            vec![Finding::new(chain(&e))],
        );
        return Err(Abort);
    }
    let timeout = run.config.rollout_timeout;
    let results = futures::future::join_all(watches.into_iter().map(|w| w.wait(timeout))).await;
    let mut failures = Vec::new();
    let mut dips = Vec::new();
    let single = run.config.single_instance.clone();
    for ((_, name), result) in keys.iter().zip(results) {
        match result {
            Ok(report) => {
                let is_ha = placed
                    .bundle
                    .deployments()
                    .find(|d| d.metadata.name.as_deref() == Some(name.as_str()))
                    .is_some_and(|d| !single.contains(&checks::app_of(d)));
                if is_ha && report.min_ready_pods() < report.desired() {
                    dips.push(Finding::about(
                        format!("Deployment/{}/{name}", run.namespace),
                        format!(
                            "ready pods fell to {} of {} desired during the rollout",
                            report.min_ready_pods(),
                            report.desired()
                        ),
                    ));
                }
            }
            Err(e) => failures.extend(deploy_findings(&release::ReleaseError::Rollout(e))),
        }
    }
    run.kube_event(
        KubeEventKind::RolloutComplete,
        None,
        format!("the {} release rolled out", release.as_str()),
    );
    run.judged(
        &format!("update-{}-rolls-out", release.as_str()),
        "every Deployment rolls out to the new release",
        failures.clone(),
    );
    run.judged(
        "ready-never-below-desired",
        "no HA Deployment had fewer ready pods than desired at any moment of the rollout",
        dips,
    );
    if !failures.is_empty() {
        return Err(Abort);
    }
    run.deployed = Some((release, placed));
    run.history.push(release);
    Ok(())
}

/// Blue/green: the new release's Deployments beside the old, Services switched once they are ready.
async fn switch(run: &mut ScenarioRun<'_>, release: Release) -> Result<(), Abort> {
    if !run.config.pipeline.can_switch() {
        run.skip(
            "switch-after-ready",
            "Services switch only after the new release is ready",
            SkipKind::NotApplicable,
            "not applicable: the pipeline gives no blue/green release to switch to (--next-manifests)".into(),
        );
        return Ok(());
    }
    let placed = run.place(release)?;
    run.kube_event(
        KubeEventKind::Apply,
        None,
        format!(
            "apply the {} release beside the current one",
            release.as_str()
        ),
    );
    let result = release::bluegreen_switch(
        &run.cluster.client,
        &placed.bundle,
        &run.namespace,
        run.config.rollout_timeout,
    )
    .await;
    match result {
        Ok(report) => {
            // The switch's own timeline, observed by watches apart from the switch itself.
            let origin = run.since_run_start(report.started_at);
            for event in &report.events {
                let (kind, object, detail) = match &event.what {
                    release::DeployEventKind::PodsReady {
                        deployment,
                        ready,
                        desired,
                    } => (
                        KubeEventKind::RolloutComplete,
                        format!("Deployment/{deployment}"),
                        format!("{ready}/{desired} new pods ready"),
                    ),
                    release::DeployEventKind::ServiceSwitched { service, .. } => (
                        KubeEventKind::Switch,
                        format!("Service/{service}"),
                        "selects the new release".to_string(),
                    ),
                };
                run.kube_event_at(origin + event.at, kind, Some(object), detail);
            }
            let findings = release::check_bluegreen_switch(&placed.bundle, &report.events)
                .iter()
                .map(|f| Finding::new(f.to_string()))
                .collect();
            run.judged(
                "switch-after-ready",
                "every Service switched to the new release only after all of its new pods were ready",
                findings,
            );
            let mixed = match services_select_only(run, &placed).await {
                Ok(f) => f,
                Err(message) => {
                    return Err(run.error(
                        "nothing-mixed-after",
                        "read Services and pods",
                        message,
                    ));
                }
            };
            run.judged(
                "nothing-mixed-after",
                "after the switch every Service selects pods of the new release only",
                mixed,
            );
            if let Some((_, previous)) = &run.deployed {
                let findings = checks::one_colour(&previous.bundle, &placed.bundle);
                run.judged(
                    "one-colour-selectors",
                    checks::ONE_COLOUR_DESCRIPTION,
                    findings,
                );
            }
            run.deployed = Some((release, placed));
            run.history.push(release);
            Ok(())
        }
        Err(e) => {
            run.judged(
                "switch-after-ready",
                "Services switch only after the new release is ready",
                deploy_findings(&e),
            );
            Err(Abort)
        }
    }
}

/// Every Service of the release selects at least one pod, and only pods of the
/// release's own Deployments (by their ReplicaSet's name).
async fn services_select_only(
    run: &ScenarioRun<'_>,
    placed: &Placed,
) -> Result<Vec<Finding>, String> {
    use k8s_openapi::api::core::v1::Service;
    let deployments: Vec<String> = placed.bundle.deployments().map(|d| d.name_any()).collect();
    let services: Api<Service> = Api::namespaced(run.cluster.client.clone(), &run.namespace);
    let pods: Api<Pod> = Api::namespaced(run.cluster.client.clone(), &run.namespace);
    let mut findings = Vec::new();
    for wanted in placed
        .bundle
        .objects
        .iter()
        .filter(|o| matches!(o, Object::Service(_)))
    {
        let name = wanted.name();
        let live = services
            .get(&name)
            .await
            .map_err(|e| format!("read Service {name}: {}", chain(&e)))?;
        let selector = live
            .spec
            .and_then(|s| s.selector)
            .unwrap_or_default()
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",");
        if selector.is_empty() {
            continue;
        }
        let selected = pods
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(|e| format!("list the pods of Service {name}: {}", chain(&e)))?;
        let key = format!("Service/{}/{name}", run.namespace);
        let live_pods: Vec<&Pod> = selected
            .items
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .collect();
        if live_pods.is_empty() {
            findings.push(Finding::about(
                key.clone(),
                format!("selects no pod ({selector})"),
            ));
        }
        for pod in live_pods {
            let replicaset = pod
                .owner_references()
                .iter()
                .find(|o| o.kind == "ReplicaSet")
                .map(|o| o.name.clone())
                .unwrap_or_default();
            if !deployments
                .iter()
                .any(|d| replicaset.starts_with(&format!("{d}-")))
            {
                findings.push(Finding::about(
                    key.clone(),
                    format!(
                        "selects pod {} of {replicaset}, which is not of the new release",
                        pod.name_any()
                    ),
                ));
            }
        }
    }
    Ok(findings)
}

/// A release that never becomes ready must fail its rollout within the progress
/// deadline (plus a margin for the controller's sync), with the reason, while
/// the previous release keeps every ready pod.
async fn deploy_broken(run: &mut ScenarioRun<'_>, release: Release) -> Result<(), Abort> {
    let placed = run.place(release)?;
    let broken: Vec<(String, String, i32)> = placed
        .bundle
        .deployments()
        .filter(|d| {
            d.spec
                .as_ref()
                .and_then(|s| s.template.spec.as_ref())
                .is_some_and(|p| {
                    p.containers.iter().any(|c| {
                        c.image
                            .as_deref()
                            .is_some_and(|i| i.ends_with(super::pipeline::BROKEN_TAG))
                    })
                })
        })
        .map(|d| {
            (
                run.namespace.clone(),
                d.name_any(),
                d.spec
                    .as_ref()
                    .and_then(|s| s.progress_deadline_seconds)
                    .unwrap_or(600),
            )
        })
        .collect();
    let Some((ns, name, deadline)) = broken.first().cloned() else {
        return Err(run.error(
            "broken-release",
            "a broken release can be made",
            "the broken release breaks no Deployment".into(),
        ));
    };
    let watch = match rollout::RolloutWatch::start(&run.cluster.client, &ns, &name).await {
        Ok(watch) => watch,
        Err(e) => {
            return Err(run.error("broken-release", "the rollout watch starts", chain(&e)));
        }
    };
    let applied_at = Instant::now();
    run.kube_event(
        KubeEventKind::RolloutStarted,
        Some(format!("Deployment/{ns}/{name}")),
        format!("apply the broken release (progressDeadlineSeconds {deadline})"),
    );
    if let Err(e) =
        apply::apply_bundle(&run.cluster.client, &placed.bundle, Some(&run.namespace)).await
    {
        return Err(run.error(
            "broken-release-applies",
            "the broken release applies",
            chain(&e),
        ));
    }
    let deadline = Duration::from_secs(deadline.max(0) as u64);
    let bound = deadline + rollout::FAIL_FAST_MARGIN;
    // Wait past the bound, so a late failure is measured rather than cut off.
    let result = watch.wait(bound + Duration::from_secs(30)).await;
    let took = applied_at.elapsed();
    let key = format!("Deployment/{ns}/{name}");
    if let Err(rollout::RolloutError::ProgressDeadline { reason, .. }) = &result {
        run.kube_event(
            KubeEventKind::RolloutFailed,
            Some(key.clone()),
            format!("{reason} after {took:.1?}"),
        );
    }
    let fail_fast: Vec<Finding> =
        rollout::check_fail_fast(&result, deadline, rollout::FAIL_FAST_MARGIN, took)
            .iter()
            .map(|f| Finding::about(key.clone(), f.to_string()))
            .collect();
    let mut kept = Vec::new();
    // Mainline keeps serving: the previous ReplicaSet's pods stay ready.
    let pods: Api<Pod> = Api::namespaced(run.cluster.client.clone(), &ns);
    let desired = run
        .deployed
        .as_ref()
        .and_then(|(_, p)| {
            p.bundle
                .deployments()
                .find(|d| d.name_any() == name)
                .and_then(|d| d.spec.as_ref().and_then(|s| s.replicas))
        })
        .unwrap_or(1);
    match pods.list(&ListParams::default()).await {
        Ok(list) => {
            let ready = list
                .items
                .iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .filter(|p| {
                    p.spec.as_ref().is_some_and(|s| {
                        s.containers.iter().all(|c| {
                            !c.image
                                .as_deref()
                                .is_some_and(|i| i.ends_with(super::pipeline::BROKEN_TAG))
                        })
                    })
                })
                .filter(|p| {
                    p.labels().get("app").map(String::as_str)
                        == Some(super::pipeline::BROKEN_WORKLOAD)
                })
                .filter(|p| pod_is_ready(p))
                .count() as i32;
            if ready < desired {
                kept.push(Finding::about(
                    key.clone(),
                    format!("only {ready} of {desired} mainline pod(s) stayed ready under the broken release"),
                ));
            }
        }
        Err(e) => {
            return Err(run.error("mainline-keeps-serving", "mainline stays ready", chain(&e)));
        }
    }
    run.judged(
        "broken-release-fails-fast",
        "a release whose pods never become ready fails its rollout within the progress deadline, with its reason",
        fail_fast,
    );
    run.judged(
        "mainline-keeps-serving",
        "the previous release keeps all its ready pods while the broken one fails",
        kept,
    );
    Ok(())
}

fn pod_is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Redeploys `release` and checks that every Deployment's pod template (images,
/// env, annotations) is that release's again.
async fn rollback_to(run: &mut ScenarioRun<'_>, release: Release) -> Result<(), Abort> {
    let placed = run.place(release)?;
    run.kube_event(
        KubeEventKind::Rollback,
        None,
        format!("redeploy the {} release", release.as_str()),
    );
    let result = rollback::redeploy_previous(
        &run.cluster.client,
        &placed.bundle,
        &run.namespace,
        run.config.rollout_timeout,
    )
    .await;
    if let Err(e) = result {
        run.judged(
            "rollback-rolls-out",
            "the previous release redeploys and rolls out",
            match &e {
                rollback::RollbackError::Redeploy(inner) => deploy_findings(inner),
                other => vec![Finding::new(chain(other))],
            },
        );
        return Err(Abort);
    }
    let findings = templates_match(run, &placed).await?;
    run.judged(
        "rollback-restores-templates",
        "after the rollback every Deployment runs the previous release's images, env and pod template",
        findings,
    );
    run.deployed = Some((release, placed));
    run.history.push(release);
    Ok(())
}

/// Compares the live pod templates with the release's.
async fn templates_match(
    run: &mut ScenarioRun<'_>,
    placed: &Placed,
) -> Result<Vec<Finding>, Abort> {
    let api: Api<Deployment> = Api::namespaced(run.cluster.client.clone(), &run.namespace);
    let mut findings = Vec::new();
    for want in placed.bundle.deployments() {
        let name = want.name_any();
        let live = match api.get(&name).await {
            Ok(d) => d,
            Err(e) => {
                return Err(run.error("read-deployment", "read the live Deployment", chain(&e)));
            }
        };
        let key = format!("Deployment/{}/{name}", run.namespace);
        let wanted = want.spec.as_ref().map(|s| &s.template);
        let got = live.spec.as_ref().map(|s| &s.template);
        let containers = |t: Option<&k8s_openapi::api::core::v1::PodTemplateSpec>| {
            t.and_then(|t| t.spec.as_ref())
                .map(|s| {
                    s.containers
                        .iter()
                        .map(|c| {
                            (
                                c.name.clone(),
                                c.image.clone(),
                                c.env.clone().unwrap_or_default(),
                            )
                        })
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default()
        };
        for ((name_w, image_w, env_w), (_, image_g, env_g)) in
            containers(wanted).iter().zip(containers(got).iter())
        {
            if image_w != image_g {
                findings.push(Finding::about(
                    key.clone(),
                    format!("container {name_w} runs {image_g:?}, not {image_w:?}"),
                ));
            }
            if env_w != env_g {
                findings.push(Finding::about(
                    key.clone(),
                    format!("container {name_w}'s env differs from the release's"),
                ));
            }
        }
        let annotations = |t: Option<&k8s_openapi::api::core::v1::PodTemplateSpec>| {
            t.and_then(|t| t.metadata.as_ref())
                .and_then(|m| m.annotations.clone())
                .unwrap_or_default()
        };
        let (aw, ag): (BTreeMap<_, _>, BTreeMap<_, _>) = (annotations(wanted), annotations(got));
        if aw != ag {
            findings.push(Finding::about(
                key.clone(),
                format!(
                    "pod template annotations differ: expected {:?}, found {:?}",
                    aw.keys().collect::<Vec<_>>(),
                    ag.keys().collect::<Vec<_>>()
                ),
            ));
        }
    }
    Ok(findings)
}

/// `kubectl rollout undo` of every Deployment: the previous revision's template
/// comes back. Blue/green Deployments hold one release and cannot be undone: that
/// limitation is reported, not failed.
async fn undo(run: &mut ScenarioRun<'_>) -> Result<(), Abort> {
    let Some((_, placed)) = run.deployed.clone() else {
        return Err(run.error(
            "undo",
            "undo needs a deployed release",
            "nothing was deployed".into(),
        ));
    };
    let previous = run.history.iter().rev().nth(1).copied();
    let mut failures = Vec::new();
    let mut limitations = Vec::new();
    let mut undone: Vec<String> = Vec::new();
    let keys = deployment_keys(&placed);
    for (ns, name) in &keys {
        run.kube_event(
            KubeEventKind::Undo,
            Some(format!("Deployment/{ns}/{name}")),
            "rollout undo".into(),
        );
    }
    // Every Deployment at once, as a pipeline's rollback job would.
    let timeout = run.config.rollout_timeout;
    let client = run.cluster.client.clone();
    let results = futures::future::join_all(
        keys.iter()
            .map(|(ns, name)| rollback::undo(&client, ns, name, timeout)),
    )
    .await;
    for ((ns, name), result) in keys.into_iter().zip(results) {
        match result {
            Ok(_) => undone.push(name),
            Err(rollback::RollbackError::NoPreviousRevision { .. }) => limitations.push(name),
            Err(e) => failures.push(Finding::about(format!("Deployment/{ns}/{name}"), chain(&e))),
        }
    }
    let description =
        "rollout undo brings every Deployment back to the previous release's pod template";
    let check = "undo-restores-previous-revision";
    match previous {
        _ if !failures.is_empty() => run.judged(check, description, failures),
        // Nothing could be undone: the limitation below says why; nothing was proven.
        _ if undone.is_empty() => {}
        None => run.skip(
            check,
            description,
            SkipKind::NotApplicable,
            "not applicable: only one release was deployed before the undo".into(),
        ),
        Some(previous) => {
            // Judge exactly the Deployments that were undone, against the previous release.
            let mut target = run.place(previous)?;
            target
                .bundle
                .objects
                .retain(|o| !matches!(o, Object::Deployment(_)) || undone.contains(&o.name()));
            let missing: Vec<Finding> = undone
                .iter()
                .filter(|n| target.bundle.find("Deployment", n).is_none())
                .map(|n| {
                    Finding::about(
                        format!("Deployment/{}/{n}", run.namespace),
                        format!(
                            "was undone, but the {} release has no such Deployment",
                            previous.as_str()
                        ),
                    )
                })
                .collect();
            let mut findings = templates_match(run, &target).await?;
            findings.extend(missing);
            if limitations.is_empty() {
                run.deployed = Some((previous, target));
                run.history.push(previous);
            }
            run.judged(check, description, findings);
        }
    }
    if !limitations.is_empty() {
        run.skip(
            "undo-blue-green",
            "rollout undo of blue/green Deployments",
            SkipKind::Limitation,
            format!(
                "limitation: {} hold one release each (blue/green); roll back by switching the Services back",
                limitations.join(", ")
            ),
        );
    }
    Ok(())
}

/// Drains the node holding the most pods of the scenario through the Eviction
/// API, then uncordons it.
async fn drain_node(run: &mut ScenarioRun<'_>) -> Result<(), Abort> {
    let description = "a node drains through the Eviction API, PodDisruptionBudgets honoured, and every app with a pod there keeps a ready pod (or its PDB's floor) throughout";
    if !run.config.allow_cordon {
        run.record(
            "drain",
            description,
            Verdict::Skipped,
            Vec::new(),
            Some((
                SkipKind::Refused,
                format!(
                    "draining cordons a node of the {} cluster, shared with others: pass --allow-cordon to let it",
                    run.config.substrate
                ),
            )),
        );
        return Ok(());
    }
    let pods: Api<Pod> = Api::namespaced(run.cluster.client.clone(), &run.namespace);
    let list = match pods.list(&ListParams::default()).await {
        Ok(l) => l,
        Err(e) => return Err(run.error("drain", "drain a node", chain(&e))),
    };
    let mut by_node: BTreeMap<String, usize> = BTreeMap::new();
    for p in &list.items {
        if let Some(node) = p.spec.as_ref().and_then(|s| s.node_name.clone()) {
            *by_node.entry(node).or_default() += 1;
        }
    }
    let Some(node) = by_node
        .iter()
        .max_by_key(|(_, n)| **n)
        .map(|(n, _)| n.clone())
    else {
        return Err(run.error(
            "drain",
            "drain a node",
            "no pod of the scenario is scheduled".into(),
        ));
    };
    run.kube_event(
        KubeEventKind::Cordon,
        Some(format!("Node//{node}")),
        "cordon and drain".into(),
    );
    let ns = run.namespace.clone();
    // A node someone else had cordoned stays cordoned after the drain.
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(run.cluster.client.clone());
    let was_cordoned = nodes
        .get_opt(&node)
        .await
        .ok()
        .flatten()
        .and_then(|n| n.spec)
        .and_then(|s| s.unschedulable)
        .unwrap_or(false);
    let result = drain::drain_and_judge(
        &run.cluster.client,
        &run.cluster.config,
        &node,
        &ns,
        drain::DrainMethod::Evict,
        run.config.rollout_timeout,
    )
    .await;
    if !was_cordoned {
        let _ = drain::uncordon(&run.cluster.client, &node).await;
    }
    match result {
        Ok(check) => {
            for pod in &check.report.evicted {
                run.kube_event(
                    KubeEventKind::Eviction,
                    Some(format!("Pod/{pod}")),
                    format!("evicted from {node}"),
                );
            }
            let findings = check
                .findings
                .iter()
                .map(|f| Finding::about(format!("Node//{node}"), f.to_string()))
                .collect();
            run.judged("drain-keeps-ready-pods", description, findings);
            Ok(())
        }
        Err(e) => {
            run.judged(
                "drain-keeps-ready-pods",
                description,
                vec![Finding::new(chain(&e))],
            );
            Err(Abort)
        }
    }
}

/// Deletes the scenario's namespaces and its objects in the gateway's namespace.
pub async fn cleanup_scenario(client: &Client, namespace: &str) {
    delete_labelled(client, &format!("{SCENARIO_LABEL}={namespace}")).await;
    // Created from the pipeline's own Namespace object, it may carry no label of ours.
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let _ = namespaces.delete(namespace, &DeleteParams::default()).await;
}

/// Deletes every namespace and gateway object of a run (Ctrl-C, a crash of a previous run).
pub async fn cleanup_run(client: &Client, run_id: &str) {
    delete_labelled(client, &format!("{RUN_LABEL}={run_id}")).await;
}

/// Best effort: what cannot be deleted now is left to the next run's clean-up.
async fn delete_labelled(client: &Client, selector: &str) {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    if let Ok(list) = namespaces
        .list(&ListParams::default().labels(selector))
        .await
    {
        for ns in list.items {
            let _ = namespaces
                .delete(&ns.name_any(), &DeleteParams::default())
                .await;
        }
    }
    delete_gateway_objects(client, selector).await;
}

async fn delete_gateway_objects(client: &Client, selector: &str) {
    use k8s_openapi::api::core::v1::Secret;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), GATEWAY_NAMESPACE);
    let _ = secrets
        .delete_collection(
            &DeleteParams::default(),
            &ListParams::default().labels(selector),
        )
        .await;
    let gateways: Api<crate::manifests::istio::Gateway> =
        Api::namespaced(client.clone(), GATEWAY_NAMESPACE);
    let _ = gateways
        .delete_collection(
            &DeleteParams::default(),
            &ListParams::default().labels(selector),
        )
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

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
