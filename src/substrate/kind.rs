//! The kind substrate as a plan: the typed list of commands cdcheck runs to create (or
//! reuse) a kind cluster with Istio, preload the run's images, tag the feature-branch
//! images, and delete only a cluster it created. Plans are pure; [`execute`] runs one
//! through a [`Host`], so tests snapshot every command and its arguments without Docker.
//!
//! With a local registry ([`RegistryMirror`], `up --registry local`), the feature images go
//! through it the way kind's documentation sets one up, instead of `kind load`: the registry
//! joins the `kind` network, every node's containerd gets a `hosts.toml` for `localhost:5001`
//! and for Online Boutique's registry host (so the manifests keep their image names), the
//! images are pushed, and the `local-registry-hosting` ConfigMap (KEP-1755) says where it is.
//!
//! A cluster is cdcheck's when its control-plane node carries [`CREATED_BY_LABEL`]
//! (written by `kind-config.yaml`); it is reused when the fingerprint cdcheck wrote into
//! `kube-system/cdcheck-fingerprint` after installing Istio (node image, Istio version,
//! overlay and kind config hashes) matches what this binary would create.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::containers::{self, ContainersError};
use super::doctor::{self, Engine, NotReady};
use super::host::{Cmd, Host, Output};
use crate::names::{CDCHECK, CREATED_BY_LABEL};
use crate::versions;

/// The kind config the cluster is created from (the repository's `kind-config.yaml`).
pub const KIND_CONFIG: &str = include_str!("../../kind-config.yaml");

/// The istioctl overlay Istio is installed with (the repository's `istio-overlay.yaml`).
pub const ISTIO_OVERLAY: &str = include_str!("../../istio-overlay.yaml");

/// The cluster name `kind-config.yaml` gives.
pub const DEFAULT_NAME: &str = "cdcheck";

/// Where the fingerprint lives in the cluster.
pub const FINGERPRINT_NAMESPACE: &str = "kube-system";
pub const FINGERPRINT_CONFIGMAP: &str = "cdcheck-fingerprint";

/// Bound of each wait for istiod and the ingress gateway.
pub const ISTIO_READY_TIMEOUT: &str = "300s";

/// The tag the feature-branch scenario deploys (`scenario::pipeline`'s `<release>-myfeature`):
/// upstream publishes no such tag, so cdcheck makes one from the release's image.
pub fn feature_tag() -> String {
    format!(
        "{}-myfeature",
        versions::ONLINE_BOUTIQUE.trim_start_matches('v')
    )
}

/// The services the feature-branch scenario deploys as a feature.
pub const FEATURE_SERVICES: [&str; 2] = ["frontend", "adservice"];

#[derive(Debug, thiserror::Error)]
pub enum KindError {
    #[error(transparent)]
    Preflight(#[from] NotReady),
    #[error(transparent)]
    Command(#[from] super::host::CommandError),
    #[error("write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{action} kind cluster {name}: cdcheck did not create it (no node labelled {CREATED_BY_LABEL}={CDCHECK}); delete it yourself with `kind delete cluster --name {name}` if you no longer need it"
    )]
    Foreign { action: &'static str, name: String },
    #[error("read the fingerprint of kind cluster {name}: {detail}")]
    Fingerprint { name: String, detail: String },
    #[error(transparent)]
    Registry(#[from] ContainersError),
}

/// The local registry a plan pushes the feature images to, as the plan sees it (the
/// container itself is [`containers::LocalRegistry`], started and removed by the caller).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct RegistryMirror {
    /// The container's name: what the nodes' containerd reaches on the `kind` network.
    pub container: String,
    /// `host:port` the engine pushes to from this machine.
    pub push_address: String,
}

impl RegistryMirror {
    /// kind's documented setup: `cdcheck-registry` on `localhost:5001`.
    pub fn kind_default() -> RegistryMirror {
        RegistryMirror {
            container: containers::KIND_REGISTRY_NAME.to_string(),
            push_address: format!("localhost:{}", containers::KIND_REGISTRY_HOST_PORT),
        }
    }

    /// The registry as the nodes reach it.
    fn endpoint(&self) -> String {
        format!(
            "http://{}:{}",
            self.container,
            containers::REGISTRY_CONTAINER_PORT
        )
    }
}

/// Where the nodes' containerd looks for registry hosts (`kind-config.yaml`'s patch).
pub const CONTAINERD_CERTS_DIR: &str = "/etc/containerd/certs.d";

/// The ConfigMap KEP-1755 defines for telling tools where a cluster's local registry is.
pub const LOCAL_REGISTRY_HOSTING: &str = "local-registry-hosting";

/// What `up --substrate kind` and `down --substrate kind` are asked to do.
#[derive(Clone, Debug)]
pub struct KindOptions {
    pub name: String,
    /// Where the kind config, overlay and kubeconfig are written.
    pub state_dir: PathBuf,
    /// Delete and create even when the fingerprint matches.
    pub recreate: bool,
    /// `docker pull` + `kind load docker-image` every image the run needs.
    pub preload: bool,
    /// The in-mesh agent's image (built from `agent/Dockerfile`), loaded when set.
    pub agent_image: Option<String>,
    /// Push the feature images to this local registry instead of `kind load`.
    pub registry: Option<RegistryMirror>,
    pub engine: Engine,
}

impl KindOptions {
    pub fn new(state_dir: PathBuf) -> KindOptions {
        KindOptions {
            name: DEFAULT_NAME.to_string(),
            state_dir,
            recreate: false,
            preload: false,
            agent_image: None,
            registry: None,
            engine: Engine::Docker,
        }
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.state_dir.join("kubeconfig")
    }

    pub fn context(&self) -> String {
        format!("kind-{}", self.name)
    }

    fn config_path(&self) -> PathBuf {
        self.state_dir.join("kind-config.yaml")
    }

    fn overlay_path(&self) -> PathBuf {
        self.state_dir.join("istio-overlay.yaml")
    }
}

/// `$CDCHECK_KIND_STATE_DIR`, else `$XDG_STATE_HOME/cdcheck/kind`, else `~/.local/state/cdcheck/kind`.
pub fn default_state_dir() -> PathBuf {
    crate::settings::kind_state_dir()
}

fn sha256(text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// What makes two kind substrates the same: a cluster is reused only when all match.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Fingerprint {
    pub node_image: String,
    pub istio: String,
    pub overlay_sha256: String,
    pub kind_config_sha256: String,
}

impl Fingerprint {
    /// The substrate this binary creates.
    pub fn wanted() -> Fingerprint {
        Fingerprint {
            node_image: versions::KIND_NODE_IMAGE.to_string(),
            istio: versions::ISTIO.to_string(),
            overlay_sha256: sha256(ISTIO_OVERLAY),
            kind_config_sha256: sha256(KIND_CONFIG),
        }
    }

    /// From the fingerprint ConfigMap's `data`.
    pub fn from_data(data: &BTreeMap<String, String>) -> Option<Fingerprint> {
        let value = serde_json::to_value(data).ok()?;
        serde_json::from_value(value).ok()
    }

    fn data(&self) -> BTreeMap<String, String> {
        let value = serde_json::to_value(self).expect("a fingerprint serializes");
        serde_json::from_value(value).expect("a map of strings")
    }

    /// Where two fingerprints differ, as `field: have X, want Y`.
    pub fn differences(&self, wanted: &Fingerprint) -> Vec<String> {
        let have = self.data();
        wanted
            .data()
            .into_iter()
            .filter(|(k, v)| have.get(k) != Some(v))
            .map(|(k, v)| {
                format!(
                    "{k}: have {}, want {v}",
                    have.get(&k).map(String::as_str).unwrap_or("-")
                )
            })
            .collect()
    }

    /// The ConfigMap that records it, labelled as cdcheck's.
    pub fn configmap_yaml(&self) -> String {
        let cm = serde_json::json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": FINGERPRINT_CONFIGMAP,
                "namespace": FINGERPRINT_NAMESPACE,
                "labels": {CREATED_BY_LABEL: CDCHECK},
            },
            "data": self.data(),
        });
        serde_saphyr::to_string(&cm).expect("a ConfigMap serializes")
    }
}

/// What is there already under the cluster's name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Observed {
    Absent,
    /// A kind cluster of that name whose nodes carry no label of ours.
    Foreign,
    /// cdcheck created it; `None` when provisioning stopped before the fingerprint.
    Ours(Option<Fingerprint>),
}

/// What `up` does about it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "decision", content = "reason")]
pub enum Decision {
    Create,
    Reuse,
    /// Delete cdcheck's cluster and create it again, for this reason.
    Recreate(String),
    /// Touch nothing: the cluster is not cdcheck's.
    Refuse,
}

/// The reuse rule.
pub fn decide(observed: &Observed, wanted: &Fingerprint, recreate: bool) -> Decision {
    match observed {
        Observed::Absent => Decision::Create,
        Observed::Foreign => Decision::Refuse,
        Observed::Ours(None) => {
            Decision::Recreate("an earlier provisioning stopped before Istio was ready".into())
        }
        Observed::Ours(Some(_)) if recreate => Decision::Recreate("--recreate".into()),
        Observed::Ours(Some(have)) => {
            let differences = have.differences(wanted);
            if differences.is_empty() {
                Decision::Reuse
            } else {
                Decision::Recreate(format!(
                    "its fingerprint differs ({})",
                    differences.join("; ")
                ))
            }
        }
    }
}

/// One step of a plan.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Step {
    /// Write a file cdcheck generates (its SHA-256 is what the snapshot shows).
    Write {
        path: PathBuf,
        #[serde(serialize_with = "ser_sha")]
        contents: String,
    },
    /// Run a command; `purpose` reads after "failed to".
    Run { purpose: String, cmd: Cmd },
    /// Check the local registry answers before pushing to it (`GET /v2/`), so a registry
    /// that is gone reads as such rather than as the engine's retries.
    CheckRegistry { address: String },
}

fn ser_sha<S: serde::Serializer>(contents: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("sha256:{}", sha256(contents)))
}

impl Step {
    fn run(purpose: impl Into<String>, cmd: Cmd) -> Step {
        Step::Run {
            purpose: purpose.into(),
            cmd,
        }
    }
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Step::Write { path, .. } => write!(f, "write {}", path.display()),
            Step::Run { cmd, .. } => write!(f, "{cmd}"),
            Step::CheckRegistry { address } => write!(f, "check the local registry at {address}"),
        }
    }
}

/// The commands of an `up` or `down`, in order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Plan {
    pub decision: Decision,
    pub steps: Vec<Step>,
}

fn kind(options: &KindOptions, args: &[&str]) -> Cmd {
    let cmd = Cmd::new("kind", args.iter().copied());
    match options.engine {
        Engine::Docker => cmd,
        Engine::Podman => cmd.with_env("KIND_EXPERIMENTAL_PROVIDER", "podman"),
    }
}

fn kubectl(options: &KindOptions, args: &[&str]) -> Cmd {
    let kubeconfig = options.kubeconfig().display().to_string();
    let context = options.context();
    let mut all = vec!["--kubeconfig", &kubeconfig, "--context", &context];
    all.extend_from_slice(args);
    Cmd::new("kubectl", all)
}

fn engine(options: &KindOptions, args: &[&str]) -> Cmd {
    Cmd::new(options.engine.program(), args.iter().copied())
}

/// Every image a run pulls: Online Boutique's (no loadgenerator: the run deploys none)
/// at the pinned release, redis, and Istio's control plane and proxy.
pub fn run_images() -> Vec<String> {
    let mut images: Vec<String> = crate::catalog::all()
        .iter()
        .filter(|w| w.role != crate::catalog::Role::LoadGenerator)
        .map(|w| w.image_at(versions::ONLINE_BOUTIQUE))
        .collect();
    images.push(format!("{}/pilot:{}", versions::ISTIO_HUB, versions::ISTIO));
    images.push(format!(
        "{}/proxyv2:{}",
        versions::ISTIO_HUB,
        versions::ISTIO
    ));
    images.sort();
    images.dedup();
    images
}

/// `(upstream image, feature image)` for each feature service.
pub fn feature_images() -> Vec<(String, String)> {
    FEATURE_SERVICES
        .iter()
        .map(|name| {
            let workload = crate::catalog::find(name).expect("a catalog service");
            (
                workload.image_at(versions::ONLINE_BOUTIQUE),
                workload.image_at(&feature_tag()),
            )
        })
        .collect()
}

fn load(options: &KindOptions, image: &str) -> Step {
    Step::run(
        format!("load {image} into the kind nodes"),
        kind(
            options,
            &["load", "docker-image", "--name", &options.name, image],
        ),
    )
}

/// The node containers `kind-config.yaml` makes (kind's naming: `<name>-control-plane`,
/// `<name>-worker`, `<name>-worker2`, ...).
pub fn node_names(name: &str) -> Vec<String> {
    let workers = KIND_CONFIG.matches("role: worker").count();
    let mut nodes = vec![format!("{name}-control-plane")];
    nodes.extend((1..=workers).map(|i| match i {
        1 => format!("{name}-worker"),
        i => format!("{name}-worker{i}"),
    }));
    nodes
}

/// The containerd `hosts.toml` of each registry host the nodes resolve through the local
/// registry: kind's `localhost:5001`, and Online Boutique's registry host with the upstream as
/// the fallback `server`, so a feature tag is found locally under the manifests' image name
/// and every other image still comes from upstream.
pub fn registry_hosts(registry: &RegistryMirror) -> Vec<(String, String)> {
    let endpoint = registry.endpoint();
    let upstream = versions::ONLINE_BOUTIQUE_REGISTRY
        .split('/')
        .next()
        .expect("a registry host");
    vec![
        (
            format!("localhost:{}", containers::KIND_REGISTRY_HOST_PORT),
            format!("[host.\"{endpoint}\"]\n"),
        ),
        (
            upstream.to_string(),
            format!(
                "server = \"https://{upstream}\"\n\n[host.\"{endpoint}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
            ),
        ),
    ]
}

/// KEP-1755's ConfigMap: where the cluster's local registry is, for tools that push to it.
pub fn local_registry_hosting_yaml() -> String {
    let cm = serde_json::json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": LOCAL_REGISTRY_HOSTING,
            "namespace": "kube-public",
            "labels": {CREATED_BY_LABEL: CDCHECK},
        },
        "data": {
            "localRegistryHosting.v1": format!(
                "host: \"localhost:{}\"\nhelp: \"https://kind.sigs.k8s.io/docs/user/local-registry/\"\n",
                containers::KIND_REGISTRY_HOST_PORT
            ),
        },
    });
    serde_saphyr::to_string(&cm).expect("a ConfigMap serializes")
}

/// The registry's steps before any push: on the `kind` network, and known to every node.
fn registry_setup(options: &KindOptions, registry: &RegistryMirror) -> Vec<Step> {
    let mut steps = vec![Step::run(
        format!(
            "connect the local registry {} to the kind network",
            registry.container
        ),
        engine(
            options,
            &["network", "connect", "kind", &registry.container],
        ),
    )];
    for node in node_names(&options.name) {
        for (host, toml) in registry_hosts(registry) {
            let dir = format!("{CONTAINERD_CERTS_DIR}/{host}");
            steps.push(Step::run(
                format!("point {node}'s containerd at the local registry for {host}"),
                engine(
                    options,
                    &[
                        "exec",
                        "-i",
                        &node,
                        "sh",
                        "-c",
                        &format!("mkdir -p {dir} && cat > {dir}/hosts.toml"),
                    ],
                )
                .with_stdin(toml),
            ));
        }
    }
    steps.push(Step::CheckRegistry {
        address: registry.push_address.clone(),
    });
    steps
}

/// A feature image through the registry: pushed under its upstream path, then pulled by every
/// node by the manifests' name (through the mirror), so it is in each node's store before the
/// registry goes away with the command that started it.
fn registry_feature(
    options: &KindOptions,
    registry: &RegistryMirror,
    upstream: &str,
    feature: &str,
) -> Vec<Step> {
    let mut steps: Vec<Step> = containers::push_commands(
        options.engine,
        upstream,
        &registry.push_address,
        containers::repository_path(feature),
    )
    .into_iter()
    .map(|(purpose, cmd)| Step::run(purpose, cmd))
    .collect();
    for node in node_names(&options.name) {
        steps.push(Step::run(
            format!("pull {feature} on {node} through the local registry"),
            engine(options, &["exec", &node, "crictl", "pull", feature]),
        ));
    }
    steps
}

/// The steps of `up` for a decision (empty for [`Decision::Refuse`]).
pub fn up_plan(options: &KindOptions, decision: &Decision) -> Plan {
    let mut steps = Vec::new();
    let name = options.name.as_str();
    let kubeconfig = options.kubeconfig().display().to_string();
    match decision {
        Decision::Refuse => {
            return Plan {
                decision: decision.clone(),
                steps,
            };
        }
        Decision::Reuse => {}
        Decision::Recreate(_) => steps.push(Step::run(
            format!("delete kind cluster {name} to create it again"),
            kind(
                options,
                &[
                    "delete",
                    "cluster",
                    "--name",
                    name,
                    "--kubeconfig",
                    &kubeconfig,
                ],
            ),
        )),
        Decision::Create => {}
    }
    let creating = !matches!(decision, Decision::Reuse);
    if creating {
        let config = options.config_path();
        steps.push(Step::Write {
            path: config.clone(),
            contents: KIND_CONFIG.to_string(),
        });
        steps.push(Step::Write {
            path: options.overlay_path(),
            contents: ISTIO_OVERLAY.to_string(),
        });
        steps.push(Step::run(
            format!("create kind cluster {name}"),
            kind(
                options,
                &[
                    "create",
                    "cluster",
                    "--name",
                    name,
                    "--config",
                    &config.display().to_string(),
                    "--kubeconfig",
                    &kubeconfig,
                    "--wait",
                    "120s",
                ],
            ),
        ));
    }
    // Images first, so istiod, the gateway and every workload start from the nodes' store.
    if options.preload {
        for image in run_images() {
            steps.push(Step::run(
                format!("pull {image}"),
                engine(options, &["pull", &image]),
            ));
            steps.push(load(options, &image));
        }
    }
    // The agent is built on this machine (agent/Dockerfile) and may change between runs:
    // loaded every time, reused cluster or not.
    if let Some(agent) = &options.agent_image {
        let mut step = load(options, agent);
        if let Step::Run { purpose, .. } = &mut step {
            *purpose = format!(
                "load the agent image {agent} into the kind nodes (built on this machine: `docker build -f agent/Dockerfile --build-arg BUILDER_IMAGE=$(cdcheck versions AGENT_BUILDER_IMAGE) --build-arg RUNTIME_IMAGE=$(cdcheck versions AGENT_RUNTIME_IMAGE) -t {agent} .`)"
            );
        }
        steps.push(step);
    }
    // Upstream publishes no feature tags: make them from the release's images (a reused
    // cluster has them since its creation, so it needs no registry unless --preload).
    // With a local registry the feature images always go through it: the registry is new
    // with each `up`, and pushing is how its path to the nodes is checked.
    let features = if creating || options.preload || options.registry.is_some() {
        feature_images()
    } else {
        Vec::new()
    };
    if let Some(registry) = &options.registry {
        steps.extend(registry_setup(options, registry));
    }
    for (upstream, feature) in features {
        if !options.preload {
            steps.push(Step::run(
                format!("pull {upstream}"),
                engine(options, &["pull", &upstream]),
            ));
        }
        match &options.registry {
            Some(registry) => {
                steps.extend(registry_feature(options, registry, &upstream, &feature))
            }
            None => {
                steps.push(Step::run(
                    format!("tag {upstream} as the feature image {feature}"),
                    engine(options, &["tag", &upstream, &feature]),
                ));
                steps.push(load(options, &feature));
            }
        }
    }
    if creating {
        steps.push(Step::run(
            format!("install Istio {} with istioctl", versions::ISTIO),
            Cmd::new(
                "istioctl",
                [
                    "install",
                    "-y",
                    "--kubeconfig",
                    &kubeconfig,
                    "--context",
                    &options.context(),
                    "-f",
                    &options.overlay_path().display().to_string(),
                    "--set",
                    &format!("hub={}", versions::ISTIO_HUB),
                    "--set",
                    &format!("tag={}", versions::ISTIO),
                ],
            ),
        ));
    }
    for deployment in ["istiod", "istio-ingressgateway"] {
        steps.push(Step::run(
            format!("wait for istio-system/{deployment} to be ready"),
            kubectl(
                options,
                &[
                    "-n",
                    "istio-system",
                    "rollout",
                    "status",
                    &format!("deployment/{deployment}"),
                    &format!("--timeout={ISTIO_READY_TIMEOUT}"),
                ],
            ),
        ));
    }
    if options.registry.is_some() {
        steps.push(Step::run(
            "tell the cluster's tools where the local registry is (local-registry-hosting)",
            kubectl(
                options,
                &[
                    "apply",
                    "--server-side",
                    "--field-manager",
                    "cdcheck",
                    "-f",
                    "-",
                ],
            )
            .with_stdin(local_registry_hosting_yaml()),
        ));
    }
    if creating {
        steps.push(Step::run(
            "record the cluster's fingerprint",
            kubectl(
                options,
                &[
                    "apply",
                    "--server-side",
                    "--field-manager",
                    "cdcheck",
                    "-f",
                    "-",
                ],
            )
            .with_stdin(Fingerprint::wanted().configmap_yaml()),
        ));
    }
    Plan {
        decision: decision.clone(),
        steps,
    }
}

/// The steps of `down`: delete the cluster and cdcheck's files, only when it is ours.
pub fn down_plan(options: &KindOptions, observed: &Observed) -> Result<Plan, KindError> {
    let name = options.name.as_str();
    let steps = match observed {
        Observed::Absent => Vec::new(),
        Observed::Foreign => {
            return Err(KindError::Foreign {
                action: "delete",
                name: name.to_string(),
            });
        }
        Observed::Ours(_) => vec![Step::run(
            format!("delete kind cluster {name}"),
            kind(
                options,
                &[
                    "delete",
                    "cluster",
                    "--name",
                    name,
                    "--kubeconfig",
                    &options.kubeconfig().display().to_string(),
                ],
            ),
        )],
    };
    Ok(Plan {
        decision: Decision::Reuse,
        steps,
    })
}

fn output(host: &dyn Host, purpose: &str, cmd: &Cmd) -> Result<Output, KindError> {
    Ok(super::host::output(host, purpose, cmd)?)
}

/// Asks kind and the cluster what is there under the cluster's name.
pub fn observe(host: &dyn Host, options: &KindOptions) -> Result<Observed, KindError> {
    let clusters = output(
        host,
        "list the kind clusters",
        &kind(options, &["get", "clusters"]),
    )?;
    if !clusters.stdout.lines().any(|l| l.trim() == options.name) {
        return Ok(Observed::Absent);
    }
    output(
        host,
        &format!("write kind cluster {}'s kubeconfig", options.name),
        &kind(
            options,
            &[
                "export",
                "kubeconfig",
                "--name",
                &options.name,
                "--kubeconfig",
                &options.kubeconfig().display().to_string(),
            ],
        ),
    )?;
    let labelled = output(
        host,
        &format!(
            "list kind cluster {}'s nodes labelled as cdcheck's",
            options.name
        ),
        &kubectl(
            options,
            &[
                "get",
                "nodes",
                "-l",
                &format!("{CREATED_BY_LABEL}={CDCHECK}"),
                "-o",
                "name",
            ],
        ),
    )?;
    if labelled.stdout.trim().is_empty() {
        return Ok(Observed::Foreign);
    }
    let cm = output(
        host,
        &format!("read kind cluster {}'s fingerprint", options.name),
        &kubectl(
            options,
            &[
                "-n",
                FINGERPRINT_NAMESPACE,
                "get",
                "configmap",
                FINGERPRINT_CONFIGMAP,
                "--ignore-not-found",
                "-o",
                "json",
            ],
        ),
    )?;
    if cm.stdout.trim().is_empty() {
        return Ok(Observed::Ours(None));
    }
    let value: serde_json::Value =
        serde_json::from_str(&cm.stdout).map_err(|e| KindError::Fingerprint {
            name: options.name.clone(),
            detail: format!("not JSON: {e}"),
        })?;
    let data: BTreeMap<String, String> =
        serde_json::from_value(value["data"].clone()).unwrap_or_default();
    // A ConfigMap of that name without our label was not written by us: no fingerprint.
    let ours = value["metadata"]["labels"][CREATED_BY_LABEL].as_str() == Some(CDCHECK);
    Ok(Observed::Ours(
        ours.then(|| Fingerprint::from_data(&data)).flatten(),
    ))
}

/// Runs a plan's steps in order, stopping at the first that fails.
pub fn execute(
    host: &dyn Host,
    plan: &Plan,
    mut progress: impl FnMut(&Step),
) -> Result<(), KindError> {
    for step in &plan.steps {
        progress(step);
        match step {
            Step::Write { path, contents } => {
                host.write_file(path, contents)
                    .map_err(|source| KindError::Write {
                        path: path.clone(),
                        source,
                    })?;
            }
            Step::Run { purpose, cmd } => {
                output(host, purpose, cmd)?;
            }
            Step::CheckRegistry { address } => containers::ping(address)?,
        }
    }
    Ok(())
}

/// A kind substrate that is up.
#[derive(Clone, Debug)]
pub struct KindCluster {
    pub kubeconfig: PathBuf,
    pub context: String,
    pub decision: Decision,
}

/// Preflight, observe, decide, run the plan.
pub fn up(
    host: &dyn Host,
    options: &KindOptions,
    progress: impl FnMut(&Step),
) -> Result<KindCluster, KindError> {
    let report = doctor::require_ready(host)?;
    let mut options = options.clone();
    options.engine = report.engine.unwrap_or(Engine::Docker);
    let observed = observe(host, &options)?;
    let decision = decide(&observed, &Fingerprint::wanted(), options.recreate);
    if decision == Decision::Refuse {
        return Err(KindError::Foreign {
            action: "reuse",
            name: options.name.clone(),
        });
    }
    let plan = up_plan(&options, &decision);
    execute(host, &plan, progress)?;
    Ok(KindCluster {
        kubeconfig: options.kubeconfig(),
        context: options.context(),
        decision,
    })
}

/// What `down` did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Down {
    Deleted,
    Absent,
}

/// Deletes the cluster when cdcheck created it, and cdcheck's files for it.
pub fn down(host: &dyn Host, options: &KindOptions) -> Result<Down, KindError> {
    let observed = observe(host, options)?;
    let plan = down_plan(options, &observed)?;
    execute(host, &plan, |_| {})?;
    host.remove_dir(&options.state_dir)
        .map_err(|source| KindError::Write {
            path: options.state_dir.clone(),
            source,
        })?;
    Ok(if observed == Observed::Absent {
        Down::Absent
    } else {
        Down::Deleted
    })
}

/// The kubeconfig path `up` prints.
pub fn kubeconfig_path(state_dir: &Path) -> PathBuf {
    state_dir.join("kubeconfig")
}
