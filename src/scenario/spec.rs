//! The scenario file format: one YAML file per concern under `scenarios/`, parsed
//! into typed steps. Unknown keys, wrong types and unknown steps or checks are
//! refused with file:line:column before anything runs.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::checks::CheckName;

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("read scenario file {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("parse scenario {path}:{line}:{column}: {message}")]
    Parse {
        path: String,
        line: u64,
        column: u64,
        message: String,
    },
    #[error("accept scenario {path}: {message}")]
    Invalid { path: String, message: String },
    #[error("find scenarios in {path}")]
    Dir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("accept scenarios: two files are named {name} ({first} and {second})")]
    Duplicate {
        name: String,
        first: String,
        second: String,
    },
}

/// What a scenario needs of its substrate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Need {
    /// A Kubernetes API with controllers and a scheduler.
    ControlPlane,
    /// Pods that serve traffic behind Istio: needed by `load` and `probe` steps.
    DataPlane,
}

impl Need {
    pub fn as_str(self) -> &'static str {
        match self {
            Need::ControlPlane => "control-plane",
            Need::DataPlane => "data-plane",
        }
    }
}

/// Which release of the pipeline a step deploys.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Release {
    /// The pipeline as given (release N).
    Current,
    /// Release N+1: `--next-manifests`, or N with a changed pod template
    /// (as `kubectl rollout restart` does).
    Next,
    /// A release whose pods never become ready (an image that does not exist).
    Broken,
    /// The feature branch (`--feature-manifests`, or the reference rendering's).
    Feature,
}

impl Release {
    pub fn as_str(self) -> &'static str {
        match self {
            Release::Current => "current",
            Release::Next => "next",
            Release::Broken => "broken",
            Release::Feature => "feature",
        }
    }
}

/// How a `drain` step empties a node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DrainVia {
    /// The Eviction API, honouring PodDisruptionBudgets (`kubectl drain`).
    #[default]
    Eviction,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct DrainStep {
    #[serde(default)]
    pub via: DrainVia,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct LoadStep {
    /// Names the load, so a later `load-stop` can end it.
    pub name: String,
    /// A workload of the pipeline: `frontend` goes through the ingress gateway,
    /// a gRPC backend through an in-mesh client.
    pub target: String,
    /// Requests per second (open loop).
    #[serde(default = "default_rate")]
    pub rate: f64,
}

fn default_rate() -> f64 {
    50.0
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct LoadStopStep {
    pub name: String,
    /// Failed requests the load may have; zero downtime means 0.
    #[serde(default)]
    pub max_failed: u64,
    /// Disruptions the load must have covered for its verdict to mean anything: pod
    /// terminations in the scenario's namespace plus Service switches while it ran. A
    /// zero-downtime claim over a window in which nothing was replaced proves nothing.
    #[serde(default)]
    pub min_disruptions: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProbeKind {
    /// `/_healthz` of the frontend through the gateway, with the probe cookie.
    Http,
    /// grpc.health.v1 of every gRPC backend, from inside the mesh.
    Grpc,
    /// The certificate served for the environment's host by SNI on the gateway.
    Tls,
    /// Session-cookie and `userid` routing to the feature branch.
    Routing,
}

/// One step. A step is a map with one key, the step's kind.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum Step {
    /// Apply a release and wait until every Deployment has rolled out.
    Deploy(Release),
    /// Roll to a release, watching that ready pods never drop below the desired count.
    Update(Release),
    /// Blue/green: the new release's Deployments beside the old ones, Services
    /// switched only once they are ready.
    Switch(Release),
    /// Apply a release expected to fail: the rollout must fail within the
    /// progress deadline, and the previous release must keep its ready pods.
    DeployBroken(Release),
    /// Roll back by redeploying a release: image, env, ConfigMaps and Secrets come back.
    Rollback(Release),
    /// `kubectl rollout undo` of every Deployment.
    Undo {},
    /// Drain the node holding the most pods of the scenario.
    Drain(DrainStep),
    /// Start an open-loop load in the background.
    LoadStart(LoadStep),
    /// Stop a background load and judge it.
    LoadStop(LoadStopStep),
    /// A data-plane probe.
    Probe(ProbeKind),
    /// Checks of the objects deployed (and of the cluster's view of them).
    Expect(Vec<CheckName>),
}

impl Step {
    /// Steps that send traffic need a data plane; the rest need only the control plane.
    pub fn need(&self) -> Need {
        match self {
            Step::LoadStart(_) | Step::LoadStop(_) | Step::Probe(_) => Need::DataPlane,
            _ => Need::ControlPlane,
        }
    }

    /// A short label for progress lines and reports.
    pub fn label(&self) -> String {
        match self {
            Step::Deploy(r) => format!("deploy {}", r.as_str()),
            Step::Update(r) => format!("update to {}", r.as_str()),
            Step::Switch(r) => format!("switch to {}", r.as_str()),
            Step::DeployBroken(r) => format!("deploy {} (must fail)", r.as_str()),
            Step::Rollback(r) => format!("roll back to {}", r.as_str()),
            Step::Undo {} => "rollout undo".into(),
            Step::Drain(_) => "drain a node".into(),
            Step::LoadStart(l) => format!("start load {} on {}", l.name, l.target),
            Step::LoadStop(l) => format!("stop load {}", l.name),
            Step::Probe(p) => format!("probe {p:?}").to_lowercase(),
            Step::Expect(checks) => format!(
                "expect {}",
                checks
                    .iter()
                    .map(|c| c.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
}

/// The reference rendering's update strategies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReferenceStrategy {
    Rolling,
    Bluegreen,
    Recreate,
}

impl From<ReferenceStrategy> for crate::manifests::Strategy {
    fn from(s: ReferenceStrategy) -> Self {
        match s {
            ReferenceStrategy::Rolling => crate::manifests::Strategy::Rolling,
            ReferenceStrategy::Bluegreen => crate::manifests::Strategy::Bluegreen,
            ReferenceStrategy::Recreate => crate::manifests::Strategy::Recreate,
        }
    }
}

fn default_timeout() -> Duration {
    Duration::from_secs(300)
}

fn parse_timeout<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    humantime::parse_duration(&text)
        .map_err(|e| serde::de::Error::custom(format!("timeout {text:?}: {e}")))
}

/// A scenario file, as written.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    pub description: String,
    #[serde(default)]
    pub tags: Vec<String>,
    pub needs: Vec<Need>,
    /// The whole scenario's bound (e.g. `5m`).
    #[serde(default = "default_timeout", deserialize_with = "parse_timeout")]
    pub timeout: Duration,
    pub steps: Vec<Step>,
    /// The update strategy of cdcheck's reference rendering for this scenario
    /// (e.g. `bluegreen`); a pipeline's own manifests keep theirs.
    #[serde(default)]
    pub reference_strategy: Option<ReferenceStrategy>,
    /// Where it was read from (set by the loader).
    #[serde(skip)]
    pub file: PathBuf,
}

impl Scenario {
    /// Parses one scenario file's text; `path` names it in errors.
    pub fn parse(path: &Path, text: &str) -> Result<Scenario, SpecError> {
        let shown = path.display().to_string();
        let mut scenario: Scenario = serde_saphyr::from_str(text).map_err(|e| {
            let (line, column) = e
                .location()
                .map(|l| (l.line(), l.column()))
                .unwrap_or((0, 0));
            SpecError::Parse {
                path: shown.clone(),
                line,
                column,
                message: e.without_snippet().to_string(),
            }
        })?;
        scenario.file = path.to_path_buf();
        scenario.validate().map_err(|message| SpecError::Invalid {
            path: shown,
            message,
        })?;
        Ok(scenario)
    }

    /// Reads and parses one scenario file.
    pub fn read(path: &Path) -> Result<Scenario, SpecError> {
        let text = std::fs::read_to_string(path).map_err(|source| SpecError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Scenario::parse(path, &text)
    }

    fn validate(&self) -> Result<(), String> {
        if !crate::manifests::options::is_dns_label(&self.name) {
            return Err(format!(
                "field `name`: {:?} is not a DNS label (lowercase letters, digits, '-')",
                self.name
            ));
        }
        if self.steps.is_empty() {
            return Err("field `steps`: a scenario needs at least one step".into());
        }
        if !self.needs.contains(&Need::ControlPlane) {
            return Err("field `needs`: every scenario needs `control-plane`".into());
        }
        let mut started: Vec<&str> = Vec::new();
        for (i, step) in self.steps.iter().enumerate() {
            if step.need() == Need::DataPlane && !self.needs.contains(&Need::DataPlane) {
                return Err(format!(
                    "field `steps[{i}]` ({}): needs a data plane, but `needs` does not list `data-plane`",
                    step.label()
                ));
            }
            match step {
                Step::LoadStart(l) => {
                    if started.contains(&l.name.as_str()) {
                        return Err(format!(
                            "field `steps[{i}]`: load {:?} started twice",
                            l.name
                        ));
                    }
                    if !(l.rate > 0.0 && l.rate.is_finite()) {
                        return Err(format!("field `steps[{i}].load-start.rate`: must be > 0"));
                    }
                    started.push(&l.name);
                }
                Step::LoadStop(l) => {
                    let Some(at) = started.iter().position(|s| *s == l.name) else {
                        return Err(format!(
                            "field `steps[{i}]`: load {:?} stopped but never started",
                            l.name
                        ));
                    };
                    started.remove(at);
                }
                Step::Expect(checks) if checks.is_empty() => {
                    return Err(format!("field `steps[{i}].expect`: lists no check"));
                }
                _ => {}
            }
        }
        if let Some(left) = started.first() {
            return Err(format!("field `steps`: load {left:?} is never stopped"));
        }
        Ok(())
    }

    /// True when the name, a tag, or the file stem matches `filter` (substring).
    pub fn matches(&self, filter: &str) -> bool {
        self.name.contains(filter)
    }
}

/// Every `*.yaml` scenario of `dir`, sorted by name; names must be unique.
pub fn read_dir(dir: &Path) -> Result<Vec<Scenario>, SpecError> {
    let dir_err = |source| SpecError::Dir {
        path: dir.display().to_string(),
        source,
    };
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(dir_err)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(dir_err)?
        .into_iter()
        .map(|e| e.path())
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
        .collect();
    paths.sort();
    let mut scenarios: Vec<Scenario> = Vec::new();
    for path in paths {
        let scenario = Scenario::read(&path)?;
        if let Some(first) = scenarios.iter().find(|s| s.name == scenario.name) {
            return Err(SpecError::Duplicate {
                name: scenario.name.clone(),
                first: first.file.display().to_string(),
                second: path.display().to_string(),
            });
        }
        scenarios.push(scenario);
    }
    scenarios.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(scenarios)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Scenario, SpecError> {
        Scenario::parse(Path::new("scenarios/x.yaml"), text)
    }

    const GOOD: &str = "name: ha
description: HA
tags: [ha]
needs: [control-plane]
timeout: 2m
steps:
  - deploy: current
  - expect: [replicas, anti-affinity-in-spec]
  - drain: {}
  - undo: {}
";

    #[test]
    fn a_scenario_parses_into_typed_steps() {
        let s = parse(GOOD).unwrap();
        assert_eq!(s.name, "ha");
        assert_eq!(s.timeout, Duration::from_secs(120));
        assert_eq!(s.steps[0], Step::Deploy(Release::Current));
        assert_eq!(
            s.steps[1],
            Step::Expect(vec![CheckName::Replicas, CheckName::AntiAffinityInSpec])
        );
        assert_eq!(s.steps[3], Step::Undo {});
    }

    #[test]
    fn an_unknown_key_is_refused_with_its_line_and_column() {
        let text = GOOD.replace("tags: [ha]", "tags: [ha]\nretries: 3");
        let err = parse(&text).unwrap_err().to_string();
        assert!(
            err.starts_with("parse scenario scenarios/x.yaml:4:"),
            "{err}"
        );
        assert!(err.contains("retries"), "{err}");
    }

    #[test]
    fn an_unknown_step_or_check_is_refused_with_its_line() {
        let err = parse(&GOOD.replace("drain: {}", "reboot: {}"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("x.yaml:9:"), "{err}");
        assert!(err.contains("reboot"), "{err}");
        let err = parse(&GOOD.replace("anti-affinity-in-spec", "anti-afinity"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("x.yaml:8:"), "{err}");
        assert!(err.contains("anti-afinity"), "{err}");
    }

    #[test]
    fn a_wrong_type_is_refused_with_its_line() {
        let err = parse(&GOOD.replace("tags: [ha]", "tags: 3"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("x.yaml:3:"), "{err}");
    }

    #[test]
    fn a_data_plane_step_in_a_control_plane_scenario_is_refused() {
        let text = GOOD.replace("  - undo: {}\n", "  - probe: http\n");
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains("steps[3]"), "{err}");
        assert!(err.contains("data-plane"), "{err}");
    }

    #[test]
    fn a_load_must_be_started_before_it_is_stopped_and_stopped_in_the_end() {
        let base = GOOD.replace(
            "needs: [control-plane]",
            "needs: [control-plane, data-plane]",
        );
        let err = parse(&base.replace("  - undo: {}\n", "  - load-stop: {name: a}\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("never started"), "{err}");
        let err = parse(&base.replace(
            "  - undo: {}\n",
            "  - load-start: {name: a, target: frontend}\n",
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("never stopped"), "{err}");
    }

    #[test]
    fn every_scenario_shipped_in_the_repository_parses() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
        let scenarios = read_dir(&dir).unwrap();
        assert!(scenarios.len() >= 9, "{}", scenarios.len());
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    const SHIPPED: &str = include_str!("../../scenarios/rollback.yaml");

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Random text is refused or accepted, never a panic.
        #[test]
        fn random_text_never_panics(text in "\\PC{0,400}") {
            let _ = Scenario::parse(Path::new("random.yaml"), &text);
        }

        /// A shipped scenario with one span of bytes replaced is refused or
        /// accepted, never a panic; a refusal names the file.
        #[test]
        fn mutated_scenarios_never_panic(at in 0usize..SHIPPED.len(), len in 0usize..12, with in "[ -~\\n]{0,12}") {
            let start = (0..=at).rev().find(|i| SHIPPED.is_char_boundary(*i)).unwrap_or(0);
            let end = (start + len).min(SHIPPED.len());
            let end = (end..=SHIPPED.len()).find(|i| SHIPPED.is_char_boundary(*i)).unwrap_or(SHIPPED.len());
            let text = format!("{}{}{}", &SHIPPED[..start], with, &SHIPPED[end..]);
            if let Err(e) = Scenario::parse(Path::new("mutated.yaml"), &text) {
                prop_assert!(e.to_string().contains("mutated.yaml"), "{}", e);
            }
        }
    }
}
