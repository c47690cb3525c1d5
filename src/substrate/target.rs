//! The one entry to every substrate: [`SubstrateOptions`] in, a [`Target`] out (the cluster,
//! its data plane if it has one, what it lets a run do). `cdcheck run`, `up`, `down`, the tests
//! and the benches all come through here, so a new substrate is one file plus one variant.

use std::path::PathBuf;
use std::time::Duration;

use super::data_plane::{self, DataPlane};
use super::host::SystemHost;
use super::{binaries, existing, kind, local};
use crate::settings;

/// Where scenarios run. One enum for every command.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum SubstrateKind {
    /// A real control plane as local processes (etcd, kube-apiserver, controller-manager,
    /// scheduler), kwok for the nodes; with the local mesh, Istio's data plane and pods as
    /// processes. No Docker needed.
    Local,
    /// kind + Istio (needs Docker or Podman, kind, istioctl, kubectl: `cdcheck doctor`).
    Kind,
    /// A cluster of yours with Istio, through a kubeconfig: never created or deleted; only
    /// namespaces labelled as cdcheck's are touched.
    Existing,
}

impl SubstrateKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SubstrateKind::Local => "local",
            SubstrateKind::Kind => "kind",
            SubstrateKind::Existing => "existing",
        }
    }
}

impl std::fmt::Display for SubstrateKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether the local substrate runs Istio's data plane (the local mesh).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum MeshChoice {
    /// When istiod and Envoy are installed and cdcheck runs as root; a running substrate
    /// without the mesh is kept as it is.
    Auto,
    /// Always: a substrate that cannot have it is an error.
    On,
    /// Never: pods are kwok's, and data-plane steps are skipped.
    Off,
}

/// Everything a substrate can be asked for. Fields that do not apply to the chosen kind must
/// be left at their defaults: [`SubstrateOptions::check`] names any that is not.
#[derive(Clone, Debug)]
pub struct SubstrateOptions {
    pub kind: SubstrateKind,
    /// local: fake nodes.
    pub nodes: u32,
    /// local: the state directory (default: [`settings::state_dir`]).
    pub state_dir: Option<PathBuf>,
    /// local: the Istio data plane.
    pub mesh: MeshChoice,
    /// local: bound of the boot.
    pub boot_timeout: Duration,
    /// A data plane must be had: its absence is an error, not a note.
    pub require_data_plane: bool,
    /// existing: the kubeconfig (default: `$KUBECONFIG`'s first file, else ~/.kube/config).
    pub kubeconfig: Option<PathBuf>,
    /// existing: the kubeconfig's context (default: its current one).
    pub context: Option<String>,
    /// existing: `http://HOST[:PORT]` and/or `https://HOST[:PORT]` of the gateway.
    pub ingress: Vec<String>,
    /// existing: the drain may cordon a node shared with others.
    pub allow_cordon: bool,
    /// kind and existing: the in-mesh agent's image (default: [`crate::versions::AGENT_IMAGE`]).
    pub agent_image: Option<String>,
    /// kind: where its config, Istio overlay and kubeconfig are written.
    pub kind_state_dir: Option<PathBuf>,
    /// local mesh: the `cdcheck` executable that runs the mesh daemon and the pods (default:
    /// this process's, which is not cdcheck when cdcheck is a library in a test).
    pub cdcheck_binary: Option<PathBuf>,
    /// local mesh: what the pods run for Online Boutique's images.
    pub workloads: crate::mesh::Workloads,
}

impl SubstrateOptions {
    /// The defaults of every field for `kind`, from [`crate::settings`].
    pub fn new(kind: SubstrateKind) -> SubstrateOptions {
        SubstrateOptions {
            kind,
            nodes: settings::NODES,
            state_dir: None,
            mesh: MeshChoice::Auto,
            boot_timeout: settings::BOOT_TIMEOUT,
            require_data_plane: false,
            kubeconfig: None,
            context: None,
            ingress: Vec::new(),
            allow_cordon: false,
            agent_image: None,
            kind_state_dir: None,
            cdcheck_binary: None,
            workloads: crate::mesh::Workloads::default(),
        }
    }

    /// Refuses options that do not apply to the chosen substrate, naming them.
    pub fn check(&self) -> Result<(), ProvisionError> {
        let defaults = SubstrateOptions::new(self.kind);
        let mut misplaced = Vec::new();
        let mut not_for = |applies: bool, flag: &'static str, applies_to: &'static str| {
            if !applies {
                misplaced.push(MisplacedFlag { flag, applies_to });
            }
        };
        let local = self.kind == SubstrateKind::Local;
        let kind = self.kind == SubstrateKind::Kind;
        let existing = self.kind == SubstrateKind::Existing;
        if self.nodes != defaults.nodes {
            not_for(local, "--nodes", "local only");
        }
        if self.state_dir.is_some() {
            not_for(local, "--state-dir", "local only");
        }
        if self.mesh != defaults.mesh && self.mesh != MeshChoice::Off {
            not_for(local, "--mesh", "local only");
        }
        if self.kubeconfig.is_some() {
            not_for(existing, "--kubeconfig", "existing only");
        }
        if self.context.is_some() {
            not_for(existing, "--context", "existing only");
        }
        if !self.ingress.is_empty() {
            not_for(existing, "--ingress", "existing only");
        }
        if self.allow_cordon {
            not_for(existing, "--allow-cordon", "existing only");
        }
        if self.agent_image.is_some() {
            not_for(kind || existing, "--agent-image", "kind and existing");
        }
        if self.kind_state_dir.is_some() {
            not_for(kind, "--kind-state-dir", "kind only");
        }
        if self.workloads != defaults.workloads {
            not_for(local, "--workloads", "local only (its mesh)");
        }
        if misplaced.is_empty() {
            Ok(())
        } else {
            Err(ProvisionError::Misplaced {
                flags: MisplacedFlags(misplaced),
                substrate: self.kind,
            })
        }
    }

    /// The agent image of this run: the one given, else the one `agent/Dockerfile` builds.
    pub fn agent_image(&self) -> String {
        self.agent_image
            .clone()
            .or_else(|| settings::var_string(settings::env::AGENT_IMAGE))
            .unwrap_or_else(crate::agent::pod::default_image)
    }

    fn kind_options(&self) -> kind::KindOptions {
        let mut options = kind::KindOptions::new(
            self.kind_state_dir
                .clone()
                .unwrap_or_else(settings::kind_state_dir),
        );
        options.agent_image = Some(self.agent_image());
        options
    }
}

/// What a substrate lets a run do beyond the Kubernetes API.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capabilities {
    /// A drain may cordon a node: the substrate is the run's own, or the user allowed it.
    pub cordon: bool,
}

/// A connected cluster.
#[derive(Clone)]
pub struct Cluster {
    pub config: kube::Config,
    pub client: kube::Client,
}

/// A provisioned substrate: what a run is given.
#[derive(Clone)]
pub struct Target {
    pub kind: SubstrateKind,
    pub cluster: Cluster,
    /// `None`: the substrate serves no traffic; data-plane steps are skipped (or fail when
    /// required).
    pub data_plane: Option<DataPlane>,
    pub capabilities: Capabilities,
    /// One line on what was provisioned (started, reused, connected...).
    pub summary: String,
}

/// A flag given to a substrate it does not apply to, and where it does apply.
#[derive(Debug)]
pub struct MisplacedFlag {
    flag: &'static str,
    applies_to: &'static str,
}

/// The misplaced flags of one command line; displays where each applies.
#[derive(Debug)]
pub struct MisplacedFlags(Vec<MisplacedFlag>);

impl MisplacedFlags {
    fn names(&self) -> String {
        let names: Vec<&str> = self.0.iter().map(|m| m.flag).collect();
        names.join(", ")
    }
}

impl std::fmt::Display for MisplacedFlags {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let places: Vec<String> = self
            .0
            .iter()
            .map(|m| format!("{} applies to --substrate {}", m.flag, m.applies_to))
            .collect();
        f.write_str(&places.join("; "))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error("use {} with --substrate {substrate}: {flags}", flags.names())]
    Misplaced {
        flags: MisplacedFlags,
        substrate: SubstrateKind,
    },
    #[error("install the control-plane binaries")]
    Binaries(#[source] binaries::BinaryError),
    #[error("build istiod for the local mesh")]
    Istiod(#[source] binaries::BinaryError),
    #[error("build Online Boutique's services for the local mesh")]
    Boutique(#[source] binaries::BinaryError),
    #[error("start the local mesh")]
    Mesh(#[source] crate::mesh::MeshError),
    #[error("bring up the local substrate")]
    Local(#[source] local::LocalError),
    #[error("connect to the cluster")]
    Connect(#[from] crate::kube::ConnectError),
    #[error("build a Kubernetes client")]
    Client(#[source] kube::Error),
    #[error(transparent)]
    KindPreflight(kind::KindError),
    #[error("bring up the kind substrate")]
    Kind(#[source] kind::KindError),
    #[error("tear down the kind substrate")]
    KindDown(#[source] kind::KindError),
    #[error("tear down the local substrate")]
    LocalDown(#[source] local::LocalError),
    #[error("check the existing cluster")]
    Existing(#[source] existing::ExistingError),
    #[error("find the existing cluster's ingress gateway")]
    Ingress(#[source] data_plane::IngressError),
    #[error("find the existing cluster's ingress gateway")]
    Gateway(#[source] existing::ExistingError),
    #[error("run a blocking step")]
    Join(#[source] tokio::task::JoinError),
}

impl ProvisionError {
    /// Bad input (exit 2 in the CLI), rather than a substrate that failed.
    pub fn is_usage(&self) -> bool {
        matches!(self, ProvisionError::Misplaced { .. })
    }
}

/// Progress lines for the user (stderr in the CLI).
pub type Progress<'a> = &'a (dyn Fn(&str) + Send + Sync);

/// Finds or builds the control-plane binaries, telling `progress` what a build does.
pub fn ensure_binaries(progress: Progress<'_>) -> Result<binaries::Binaries, ProvisionError> {
    if let Ok(found) = binaries::locate() {
        return Ok(found);
    }
    progress(&format!(
        "building the control-plane binaries into {} (about 11 min cold on 2 cores; once)",
        settings::bin_cache().display()
    ));
    binaries::ensure(|line| progress(&format!("  {line}"))).map_err(ProvisionError::Binaries)
}

/// Brings the substrate up (or reuses it, or connects to it) and returns what a run needs.
pub async fn provision(
    options: &SubstrateOptions,
    progress: Progress<'_>,
) -> Result<Target, ProvisionError> {
    options.check()?;
    match options.kind {
        SubstrateKind::Local => provision_local(options, progress).await,
        SubstrateKind::Kind => provision_kind(options, progress).await,
        SubstrateKind::Existing => provision_existing(options, progress).await,
    }
}

/// Tears the substrate down: local stops its processes (without a state directory, both the
/// plain and the mesh one), kind deletes the cluster cdcheck created; existing is never
/// touched. One line per thing done goes to `progress`.
pub async fn teardown(
    options: &SubstrateOptions,
    progress: Progress<'_>,
) -> Result<(), ProvisionError> {
    options.check()?;
    match options.kind {
        SubstrateKind::Local => {
            let dirs = match &options.state_dir {
                Some(dir) => vec![dir.clone()],
                None => vec![settings::local_state_dir(), settings::mesh_state_dir()],
            };
            for dir in dirs {
                let result = local::down(&dir).await.map_err(ProvisionError::LocalDown)?;
                progress(&if result.stopped == 0 && !result.removed {
                    format!("no local substrate in {}", dir.display())
                } else {
                    format!(
                        "stopped {} processes, removed {}",
                        result.stopped,
                        dir.display()
                    )
                });
            }
            Ok(())
        }
        SubstrateKind::Kind => {
            let mut kind_options = options.kind_options();
            let engine = super::doctor::diagnose(&SystemHost).engine;
            kind_options.engine = engine.unwrap_or(super::doctor::Engine::Docker);
            let name = kind_options.name.clone();
            let result =
                tokio::task::spawn_blocking(move || kind::down(&SystemHost, &kind_options))
                    .await
                    .map_err(ProvisionError::Join)?
                    .map_err(ProvisionError::KindDown)?;
            progress(&match result {
                kind::Down::Deleted => format!("deleted kind cluster {name}"),
                kind::Down::Absent => format!("no kind cluster {name}"),
            });
            Ok(())
        }
        SubstrateKind::Existing => {
            progress(
                "an existing cluster is never torn down: cdcheck deletes only what a run created, when it ends",
            );
            Ok(())
        }
    }
}

async fn cluster_from(kubeconfig: &std::path::Path) -> Result<Cluster, ProvisionError> {
    let config = crate::kube::config_from(kubeconfig).await?;
    let client = kube::Client::try_from(config.clone()).map_err(ProvisionError::Client)?;
    Ok(Cluster { config, client })
}

/// The mesh's executables when the local substrate should run it: `on` (or a required data
/// plane) needs it, `auto` takes it when it can be had and no plain substrate already runs in
/// its directory.
async fn mesh_for(
    options: &SubstrateOptions,
    progress: Progress<'_>,
) -> Result<Option<crate::mesh::MeshBinaries>, ProvisionError> {
    let required = options.mesh == MeshChoice::On || options.require_data_plane;
    if options.mesh == MeshChoice::Off {
        return Ok(None);
    }
    // The first run builds istiod as it builds the control plane (11–14 min cold); a failed
    // build is a note in auto mode: the control-plane verdicts still stand.
    if crate::mesh::check_root().is_ok() && crate::mesh::locate_istiod().is_err() {
        progress(&format!(
            "building istiod {} for the local mesh into {} (11–14 min cold on 2 cores; once)",
            crate::versions::ISTIO,
            settings::bin_cache().display()
        ));
        let built = tokio::task::block_in_place(|| {
            binaries::ensure_istiod(|line| progress(&format!("  {line}")))
        });
        if let Err(e) = built {
            if required {
                return Err(ProvisionError::Istiod(e));
            }
            progress(&format!("note: failed to {}", crate::error_chain(&e)));
        }
    }
    let found = crate::mesh::locate().and_then(|b| crate::mesh::check_root().map(|_| b));
    match found {
        Ok(mut binaries) => {
            if let Some(cdcheck) = &options.cdcheck_binary {
                binaries.cdcheck = cdcheck.clone();
            }
            if options.workloads == crate::mesh::Workloads::Upstream {
                // Built once (1.5–4 min cold), then found in the cache.
                let built = tokio::task::block_in_place(|| {
                    super::boutique::ensure(|line| progress(&format!("  {line}")))
                })
                .map_err(ProvisionError::Boutique)?;
                binaries.boutique = Some(built);
            }
            let dir = settings::state_dir(options.state_dir.as_deref(), true);
            if !required
                && let Some(running) = local::running(&dir).await
                && !running.mesh
            {
                progress(&format!(
                    "note: the local substrate in {} runs without the mesh: data-plane steps will be skipped (`cdcheck down` and run again for the mesh)",
                    dir.display()
                ));
                return Ok(None);
            }
            Ok(Some(binaries))
        }
        Err(e) if required => Err(ProvisionError::Mesh(e)),
        Err(e) => {
            progress(&format!(
                "note: no local mesh, data-plane steps will be skipped: failed to {}",
                crate::error_chain(&e)
            ));
            Ok(None)
        }
    }
}

async fn provision_local(
    options: &SubstrateOptions,
    progress: Progress<'_>,
) -> Result<Target, ProvisionError> {
    // A build takes minutes and blocks: only then is a worker thread given up for it.
    let found = match binaries::locate() {
        Ok(found) => found,
        Err(_) => tokio::task::block_in_place(|| ensure_binaries(progress))?,
    };
    let mesh = mesh_for(options, progress).await?;
    let state_dir = settings::state_dir(options.state_dir.as_deref(), mesh.is_some());
    let up_options = local::UpOptions {
        nodes: options.nodes,
        state_dir: state_dir.clone(),
        timeout: options.boot_timeout,
        mesh,
    };
    let substrate = local::up(&found, &up_options)
        .await
        .map_err(ProvisionError::Local)?;
    let cluster = cluster_from(&substrate.kubeconfig).await?;
    let summary = format!(
        "local substrate {} ({} nodes{}, {:.1?}); KUBECONFIG={}",
        if substrate.reused {
            "reused"
        } else {
            "started"
        },
        substrate.nodes.len(),
        if substrate.mesh {
            format!(
                ", mesh: istiod {}, gateway on http://127.0.0.1:{} and https://127.0.0.1:{}",
                crate::versions::ISTIO,
                crate::mesh::gateway::HTTP_NODE_PORT,
                crate::mesh::gateway::HTTPS_NODE_PORT
            )
        } else {
            String::new()
        },
        substrate.boot,
        substrate.kubeconfig.display()
    );
    Ok(Target {
        kind: SubstrateKind::Local,
        cluster,
        data_plane: substrate.mesh.then(|| {
            let mut data_plane = DataPlane::local_mesh(state_dir);
            if options.workloads == crate::mesh::Workloads::Upstream {
                // Upstream's adservice names no pod in its answers, as on a cluster: calls
                // inside the mesh are made and attributed (by the sidecar's per-endpoint
                // counters) by the agent pod, as on kind.
                data_plane.in_mesh = super::InMesh::Agent {
                    image: options
                        .agent_image
                        .clone()
                        .unwrap_or_else(|| crate::versions::AGENT_IMAGE.to_string()),
                };
            }
            data_plane
        }),
        capabilities: Capabilities { cordon: true },
        summary,
    })
}

async fn provision_kind(
    options: &SubstrateOptions,
    progress: Progress<'_>,
) -> Result<Target, ProvisionError> {
    let kind_options = options.kind_options();
    let up = tokio::task::block_in_place(|| {
        kind::up(&SystemHost, &kind_options, |step| {
            progress(&format!("+ {step}"))
        })
    });
    let up = match up {
        Ok(up) => up,
        Err(e @ kind::KindError::Preflight(_)) => return Err(ProvisionError::KindPreflight(e)),
        Err(e) => return Err(ProvisionError::Kind(e)),
    };
    let cluster = cluster_from(&up.kubeconfig).await?;
    Ok(Target {
        kind: SubstrateKind::Kind,
        cluster,
        data_plane: Some(DataPlane::kind(options.agent_image())),
        capabilities: Capabilities { cordon: true },
        summary: format!(
            "kind substrate (context {}); KUBECONFIG={}",
            up.context,
            up.kubeconfig.display()
        ),
    })
}

async fn provision_existing(
    options: &SubstrateOptions,
    progress: Progress<'_>,
) -> Result<Target, ProvisionError> {
    let found = existing::connect(options.kubeconfig.as_deref(), options.context.as_deref())
        .await
        .map_err(ProvisionError::Existing)?;
    let istio = existing::istio(&found.client)
        .await
        .map_err(ProvisionError::Existing)?;
    let summary = format!(
        "existing cluster (context {}): Istio {} ({}, {} istiod ready){}",
        found.context,
        istio.version,
        istio.image,
        istio.ready_replicas,
        if istio.is_pinned() {
            String::new()
        } else {
            format!(
                "; cdcheck's scenarios are written against Istio {}",
                crate::versions::ISTIO
            )
        }
    );
    let data_plane = existing_data_plane(options, &found.client, progress).await?;
    Ok(Target {
        kind: SubstrateKind::Existing,
        cluster: Cluster {
            config: found.config,
            client: found.client,
        },
        data_plane,
        capabilities: Capabilities {
            cordon: options.allow_cordon,
        },
        summary,
    })
}

/// An existing cluster's data plane: `--ingress`, else the gateway Service's load-balancer
/// address; `None` (a note) when neither is had and none is required.
async fn existing_data_plane(
    options: &SubstrateOptions,
    client: &kube::Client,
    progress: Progress<'_>,
) -> Result<Option<DataPlane>, ProvisionError> {
    let (http, https) = if options.ingress.is_empty() {
        match existing::gateway_address(
            client,
            crate::names::ISTIO_NAMESPACE,
            existing::INGRESS_GATEWAY,
        )
        .await
        {
            Ok(found) => (
                data_plane::resolve(&found.host, found.http_port)
                    .await
                    .map_err(ProvisionError::Ingress)?,
                data_plane::resolve(&found.host, found.https_port)
                    .await
                    .map_err(ProvisionError::Ingress)?,
            ),
            Err(e) if options.require_data_plane => return Err(ProvisionError::Gateway(e)),
            Err(e) => {
                progress(&format!(
                    "note: data-plane steps will be skipped: failed to {}",
                    crate::error_chain(&e)
                ));
                return Ok(None);
            }
        }
    } else {
        data_plane::ingress_from_urls(&options.ingress)
            .await
            .map_err(ProvisionError::Ingress)?
    };
    Ok(Some(DataPlane::existing(
        http,
        https,
        options.agent_image(),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_for_another_substrate_are_refused_by_name() {
        let mut options = SubstrateOptions::new(SubstrateKind::Local);
        options.ingress = vec!["http://10.0.0.7".into()];
        options.agent_image = Some("x".into());
        let error = options.check().unwrap_err();
        assert!(error.is_usage());
        assert_eq!(
            error.to_string(),
            "use --ingress, --agent-image with --substrate local: --ingress applies to \
             --substrate existing only; --agent-image applies to --substrate kind and existing"
        );
        let mut options = SubstrateOptions::new(SubstrateKind::Existing);
        options.nodes = 5;
        assert!(options.check().unwrap_err().to_string().contains("--nodes"));
        let mut options = SubstrateOptions::new(SubstrateKind::Existing);
        options.allow_cordon = true;
        options.agent_image = Some("x".into());
        options
            .check()
            .expect("existing takes --allow-cordon and --agent-image");
    }

    #[test]
    fn the_defaults_come_from_settings() {
        let options = SubstrateOptions::new(SubstrateKind::Local);
        assert_eq!(options.nodes, settings::NODES);
        assert_eq!(options.boot_timeout, settings::BOOT_TIMEOUT);
        assert_eq!(options.mesh, MeshChoice::Auto);
    }
}
