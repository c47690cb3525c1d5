//! `cdcheck run`: the main job. Ensures a substrate, runs the scenarios against
//! the pipeline under test, writes the reports; exit 0 all passed, 1 a scenario
//! failed, 2 bad input or no substrate.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use cdcheck::report::{self, Event, Reporter, SkipKind, Verdict};
use cdcheck::scenario::dataplane::{InMesh, Ingress};
use cdcheck::scenario::pipeline::{Manifests, Pipeline};
use cdcheck::scenario::runner::{self, Cluster, RunConfig};
use cdcheck::scenario::spec::Need;
use cdcheck::scenario::{self, Scenario};
use cdcheck::substrate::local;

/// Where the run happens.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SubstrateChoice {
    /// A real control plane as local processes, kwok for the nodes: no Docker,
    /// no data plane (load and probe steps are skipped, and said so).
    Local,
    /// kind + Istio (needs Docker or Podman; `cdcheck doctor`): created or reused like
    /// `cdcheck up --substrate kind`.
    Kind,
    /// A cluster of yours with Istio, through --kubeconfig/--context: never created or
    /// deleted; only namespaces labelled as cdcheck's are touched.
    Existing,
}

/// Which skips `--require` turns into failures (decided on the skip's kind, never its text).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Requirement {
    /// Steps that need a data plane, on a substrate that has none.
    DataPlane,
    /// Checks with nothing to judge in this pipeline (no feature or next release given).
    NotApplicable,
    /// Steps the substrate refuses (the drain on an existing cluster without --allow-cordon).
    Refused,
    /// Checks a mechanism cannot make (`rollout undo` of blue/green Deployments).
    Limitation,
    /// Every skip: a run passes only if every check ran.
    All,
}

impl Requirement {
    /// The skip kinds this requirement turns into failures.
    pub fn skip_kinds(self) -> Vec<SkipKind> {
        match self {
            Requirement::DataPlane => vec![SkipKind::NoDataPlane],
            Requirement::NotApplicable => vec![SkipKind::NotApplicable],
            Requirement::Refused => vec![SkipKind::Refused],
            Requirement::Limitation => vec![SkipKind::Limitation],
            Requirement::All => SkipKind::ALL.to_vec(),
        }
    }
}

#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:
  cdcheck run                                   # every scenario, reference pipeline, local substrate
  cdcheck run --filter ha --filter rollback     # scenarios whose name contains ha or rollback
  cdcheck run --tag zero-downtime --jobs 2
  cdcheck run --list                            # what would run
Exit status: 0 all passed (skips allowed), 1 a scenario failed, 2 bad input or no substrate.")]
pub struct Args {
    /// Substrate to run on. Default: local.
    #[arg(long, value_enum)]
    pub substrate: Option<SubstrateChoice>,

    /// The pipeline under test: the YAML a real pipeline produced for one environment
    /// (any number of files and documents), instead of cdcheck's reference rendering.
    #[arg(long, value_name = "DIR")]
    pub manifests: Option<PathBuf>,

    /// The feature branch's objects (Deployments, Services, the VirtualServices with its
    /// session routes), added to --manifests for the feature-branch scenario.
    #[arg(long, value_name = "DIR", requires = "manifests")]
    pub feature_manifests: Option<PathBuf>,

    /// The next release, whole; without it release N+1 is --manifests with a changed
    /// pod template (as `kubectl rollout restart` does).
    #[arg(long, value_name = "DIR", requires = "manifests")]
    pub next_manifests: Option<PathBuf>,

    /// Scenario files to run instead of the built-in ones (a directory of *.yaml).
    #[arg(long, value_name = "DIR")]
    pub scenarios: Option<PathBuf>,

    /// Run only scenarios whose name contains this (repeatable: any of them).
    #[arg(long = "filter", value_name = "TEXT")]
    pub filters: Vec<String>,

    /// --filter matches whole names only.
    #[arg(long)]
    pub exact: bool,

    /// Run only scenarios with this tag (repeatable: any of them).
    #[arg(long = "tag", value_name = "TAG")]
    pub tags: Vec<String>,

    /// List the selected scenarios and their steps, run nothing.
    #[arg(long)]
    pub list: bool,

    /// Scenarios run at once (each in namespaces of its own).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub jobs: u16,

    /// Where the JUnit, JSON and HTML reports go.
    #[arg(long, value_name = "DIR", default_value = "cdcheck-report")]
    pub report_dir: PathBuf,

    /// Keep the namespaces and objects the run created (for debugging).
    #[arg(long)]
    pub keep: bool,

    /// Turn skips of this kind into failures (repeatable; `all`: any skip fails).
    #[arg(long, value_enum)]
    pub require: Vec<Requirement>,

    /// Bound of one rollout.
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    pub rollout_timeout: Duration,

    /// Apps held to no HA check (single instances by design), replacing the default
    /// (Online Boutique's redis-cart and loadgenerator).
    #[arg(long = "single-instance", value_name = "APP")]
    pub single_instance: Vec<String>,

    /// Fake nodes of the local substrate (when this run starts it).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(2..=100))]
    pub nodes: u32,

    /// State directory of the local substrate.
    #[arg(long, env = "CDCHECK_STATE_DIR")]
    pub state_dir: Option<PathBuf>,

    /// existing: the kubeconfig (default: $KUBECONFIG's first file, else ~/.kube/config).
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,

    /// existing: the kubeconfig's context (default: its current context).
    #[arg(long, value_name = "NAME")]
    pub context: Option<String>,

    /// existing: where the ingress gateway answers, `http://HOST[:PORT]` and/or
    /// `https://HOST[:PORT]` (a scheme not given: the other's host on port 80 or 443).
    /// Default: the load-balancer address of istio-system/istio-ingressgateway.
    #[arg(long = "ingress", value_name = "URL")]
    pub ingress: Vec<String>,

    /// kind and existing: the in-mesh agent's image (built from agent/Dockerfile; on kind
    /// `cdcheck up --substrate kind --agent-image REF` loads it into the nodes).
    #[arg(long, value_name = "REF", env = "CDCHECK_AGENT_IMAGE")]
    pub agent_image: Option<String>,

    /// existing: let the `ha` scenario's drain cordon a node of the cluster (it evicts only
    /// the scenario's pods, and uncordons the node after, unless it was cordoned before).
    /// Without it the drain is skipped and said so.
    #[arg(long)]
    pub allow_cordon: bool,

    /// The feature release's image of SERVICE (repeatable), e.g.
    /// `frontend=registry.example.com/shop/frontend:pr-123`: what a feature branch's pipeline
    /// built, where upstream publishes no feature tags.
    #[arg(long = "feature-image", value_name = "SERVICE=REF", value_parser = parse_feature_image)]
    pub feature_images: Vec<(String, String)>,

    /// The local substrate's Istio data plane: auto starts it when istiod and Envoy are
    /// installed and cdcheck runs as root (and keeps a running substrate as it is).
    #[arg(long, value_enum, default_value_t = MeshChoice::Auto)]
    pub mesh: MeshChoice,
}

/// Whether `run` starts the local mesh.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum MeshChoice {
    Auto,
    On,
    Off,
}

fn parse_feature_image(value: &str) -> Result<(String, String), String> {
    match value.split_once('=') {
        Some((service, image)) if !service.trim().is_empty() && !image.trim().is_empty() => {
            Ok((service.trim().to_string(), image.trim().to_string()))
        }
        _ => Err(format!(
            "expected SERVICE=REF, e.g. frontend=registry.example.com/shop/frontend:pr-123, got {value:?}"
        )),
    }
}

fn select(all: Vec<Scenario>, args: &Args) -> Vec<Scenario> {
    all.into_iter()
        .filter(|s| {
            args.filters.is_empty()
                || args.filters.iter().any(|f| {
                    if args.exact {
                        s.name == *f
                    } else {
                        s.name.contains(f)
                    }
                })
        })
        .filter(|s| args.tags.is_empty() || args.tags.iter().any(|t| s.tags.contains(t)))
        .collect()
}

fn list(scenarios: &[Scenario]) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    for s in scenarios {
        let needs: Vec<&str> = s.needs.iter().map(|n| n.as_str()).collect();
        writeln!(
            out,
            "{}  [{}]  needs {}",
            s.name,
            s.tags.join(", "),
            needs.join(", ")
        )?;
        for (i, step) in s.steps.iter().enumerate() {
            let data = if step.need() == Need::DataPlane {
                "  (data plane)"
            } else {
                ""
            };
            writeln!(out, "  {i:>2}. {}{data}", step.label())?;
        }
    }
    Ok(())
}

/// Bad input or a substrate that cannot be had: exit 2 with the cause.
fn usage_error(error: anyhow::Error) -> anyhow::Result<ExitCode> {
    eprintln!("error: failed to {error:#}");
    Ok(ExitCode::from(2))
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let all = match &args.scenarios {
        Some(dir) => scenario::spec::read_dir(dir),
        None => scenario::builtin::scenarios(),
    };
    let all = match all {
        Ok(all) => all,
        Err(e) => return usage_error(anyhow::Error::new(e)),
    };
    let selected = select(all, &args);
    if selected.is_empty() {
        return usage_error(anyhow::anyhow!(
            "select scenarios: none matches the filters {:?} and tags {:?}",
            args.filters,
            args.tags
        ));
    }
    if args.list {
        // A closed pipe (`| head`) is not an error of ours.
        let _ = list(&selected);
        return Ok(ExitCode::SUCCESS);
    }
    let pipeline = match &args.manifests {
        None => Pipeline::reference(),
        Some(dir) => match Manifests::load(
            dir,
            args.feature_manifests.as_deref(),
            args.next_manifests.as_deref(),
        ) {
            Ok(m) => Pipeline::Manifests(Box::new(m)),
            Err(e) => return usage_error(anyhow::Error::new(e)),
        },
    };
    let pipeline = match pipeline.with_feature_images(&args.feature_images) {
        Ok(p) => p,
        Err(e) => return usage_error(anyhow::Error::new(e)),
    };
    let substrate = args.substrate.unwrap_or(SubstrateChoice::Local);
    if substrate != SubstrateChoice::Existing
        && (args.kubeconfig.is_some()
            || args.context.is_some()
            || !args.ingress.is_empty()
            || args.allow_cordon)
    {
        return usage_error(anyhow::anyhow!(
            "use --kubeconfig, --context, --ingress or --allow-cordon: they apply to --substrate existing only"
        ));
    }
    if substrate == SubstrateChoice::Local && args.agent_image.is_some() {
        return usage_error(anyhow::anyhow!(
            "use --agent-image: it applies to --substrate kind and existing (the local mesh has its own in-mesh client)"
        ));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the async runtime")?;
    let result = match substrate {
        SubstrateChoice::Local => runtime
            .block_on(local_cluster(&args))
            .map(|(cluster, ingress)| (cluster, ingress, "local")),
        SubstrateChoice::Existing => runtime
            .block_on(existing_cluster(&args))
            .map(|(cluster, ingress)| (cluster, ingress, "existing")),
        SubstrateChoice::Kind => runtime
            .block_on(kind_cluster(&args))
            .map(|cluster| (cluster, Some(Ingress::kind(agent_image(&args))), "kind")),
    };
    let (cluster, ingress, name) = match result {
        Ok(found) => found,
        Err(e) => return usage_error(e),
    };
    if let Some(ingress) = &ingress {
        eprintln!(
            "data plane: the gateway at http {} and https {}; calls inside the mesh {}",
            ingress.http,
            ingress.https,
            match &ingress.in_mesh {
                InMesh::LocalClient(_) => "through the local mesh's client".to_string(),
                InMesh::Agent { image } => format!("by agent pods ({image})"),
            }
        );
    }
    let mut config = RunConfig::new(name, pipeline);
    config.data_plane = ingress.is_some();
    config.ingress = ingress;
    config.jobs = usize::from(args.jobs);
    config.keep = args.keep;
    config.require = args.require.iter().flat_map(|r| r.skip_kinds()).collect();
    config.rollout_timeout = args.rollout_timeout;
    config.allow_cordon = substrate != SubstrateChoice::Existing || args.allow_cordon;
    if !args.single_instance.is_empty() {
        config.single_instance = args.single_instance.clone();
    }
    let report_dir = args.report_dir.clone();
    let code = runtime.block_on(run_with_reporters(cluster, selected, config, report_dir))?;
    Ok(code)
}

/// The mesh to start: `on` (or `--require data-plane`) needs it, `auto` takes it
/// when it can be had and no substrate without it is already running.
async fn mesh_for(
    args: &Args,
    state_dir: &std::path::Path,
) -> anyhow::Result<Option<cdcheck::mesh::MeshBinaries>> {
    let required = args.mesh == MeshChoice::On || args.require.contains(&Requirement::DataPlane);
    if args.mesh == MeshChoice::Off {
        return Ok(None);
    }
    // The first run builds istiod as it builds the control plane (11–14 min cold);
    // a failed build is a note in auto mode: the control-plane verdicts still stand.
    if cdcheck::mesh::check_root().is_ok() && cdcheck::mesh::locate_istiod().is_err() {
        eprintln!(
            "building istiod {} for the local mesh into {} (11–14 min cold on 2 cores; once)",
            cdcheck::versions::ISTIO,
            cdcheck::substrate::binaries::cache_root().display()
        );
        let built = tokio::task::block_in_place(|| {
            cdcheck::substrate::binaries::ensure_istiod(|line| eprintln!("  {line}"))
        });
        if let Err(e) = built {
            if required {
                return Err(anyhow::Error::new(e).context("build istiod for the local mesh"));
            }
            eprintln!("note: failed to {e}");
        }
    }
    let found = cdcheck::mesh::locate().and_then(|b| cdcheck::mesh::check_root().map(|_| b));
    match found {
        Ok(binaries) => {
            if !required
                && let Some(running) = local::running(state_dir).await
                && !running.mesh
            {
                eprintln!(
                    "note: the local substrate in {} runs without the mesh: data-plane steps will be skipped (`cdcheck down` and run again for the mesh)",
                    state_dir.display()
                );
                return Ok(None);
            }
            Ok(Some(binaries))
        }
        Err(e) if required => Err(anyhow::Error::new(e).context("start the local mesh")),
        Err(e) => {
            eprintln!("note: no local mesh, data-plane steps will be skipped: failed to {e}");
            Ok(None)
        }
    }
}

async fn local_cluster(args: &Args) -> anyhow::Result<(Cluster, Option<Ingress>)> {
    let found = super::substrate::ensure_binaries()?;
    // The mesh substrate has a directory of its own (`default_mesh_state_dir`).
    let probe_dir = args
        .state_dir
        .clone()
        .unwrap_or_else(local::default_mesh_state_dir);
    let mesh = mesh_for(args, &probe_dir).await?;
    let state_dir = match (&args.state_dir, &mesh) {
        (Some(dir), _) => dir.clone(),
        (None, Some(_)) => local::default_mesh_state_dir(),
        (None, None) => local::default_state_dir(),
    };
    let options = local::UpOptions {
        nodes: args.nodes,
        state_dir: state_dir.clone(),
        mesh,
        ..Default::default()
    };
    let substrate = local::up(&found, &options)
        .await
        .context("bring up the local substrate")?;
    eprintln!(
        "local substrate {} ({} nodes, {:.1?}); KUBECONFIG={}",
        if substrate.reused {
            "reused"
        } else {
            "started"
        },
        substrate.nodes.len(),
        substrate.boot,
        substrate.kubeconfig.display()
    );
    let config = cdcheck::kube::config_from(&substrate.kubeconfig)
        .await
        .context("read the substrate's kubeconfig")?;
    let client = kube::Client::try_from(config.clone()).context("build a Kubernetes client")?;
    let ingress = substrate.mesh.then(|| Ingress::local_mesh(state_dir));
    Ok((Cluster { config, client }, ingress))
}

/// The agent image of this run: `--agent-image`, else the one `agent/Dockerfile` builds.
fn agent_image(args: &Args) -> String {
    args.agent_image
        .clone()
        .unwrap_or_else(cdcheck::agent::pod::default_image)
}

/// An existing cluster's ingress: `--ingress`, else the gateway Service's load-balancer
/// address; `None` (data-plane steps skipped, or failed when required) when neither is had.
async fn existing_ingress(args: &Args, client: &kube::Client) -> anyhow::Result<Option<Ingress>> {
    use cdcheck::scenario::dataplane;
    use cdcheck::substrate::existing;
    let (http, https) = if args.ingress.is_empty() {
        match existing::gateway_address(
            client,
            existing::ISTIO_NAMESPACE,
            existing::INGRESS_GATEWAY,
        )
        .await
        {
            Ok(found) => (
                dataplane::resolve(&found.host, found.http_port).await?,
                dataplane::resolve(&found.host, found.https_port).await?,
            ),
            Err(e) if args.require.contains(&Requirement::DataPlane) => return Err(e.into()),
            Err(e) => {
                eprintln!("note: data-plane steps will be skipped: failed to {e}");
                return Ok(None);
            }
        }
    } else {
        dataplane::ingress_from_urls(&args.ingress).await?
    };
    Ok(Some(Ingress::existing(http, https, agent_image(args))))
}

/// An existing cluster: connected through --kubeconfig/--context, with Istio installed.
async fn existing_cluster(args: &Args) -> anyhow::Result<(Cluster, Option<Ingress>)> {
    use cdcheck::substrate::existing;
    let found = existing::connect(args.kubeconfig.as_deref(), args.context.as_deref())
        .await
        .context("connect to the existing cluster")?;
    let istio = existing::istio(&found.client)
        .await
        .context("check the existing cluster")?;
    eprintln!(
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
                cdcheck::versions::ISTIO
            )
        }
    );
    let ingress = existing_ingress(args, &found.client)
        .await
        .context("find the existing cluster's ingress gateway")?;
    Ok((
        Cluster {
            config: found.config,
            client: found.client,
        },
        ingress,
    ))
}

/// The kind substrate, created or reused as `cdcheck up --substrate kind` does.
async fn kind_cluster(args: &Args) -> anyhow::Result<Cluster> {
    use cdcheck::substrate::{host::SystemHost, kind};
    let mut options = kind::KindOptions::new(kind::default_state_dir());
    options.agent_image = Some(agent_image(args));
    let up = tokio::task::spawn_blocking(move || {
        kind::up(&SystemHost, &options, |step| eprintln!("+ {step}"))
    })
    .await
    .context("bring up the kind substrate")?;
    let up = match up {
        Ok(up) => up,
        Err(e @ kind::KindError::Preflight(_)) => return Err(e.into()),
        Err(e) => return Err(anyhow::Error::new(e).context("bring up the kind substrate")),
    };
    let config = cdcheck::kube::config_from(&up.kubeconfig)
        .await
        .context("read the kind substrate's kubeconfig")?;
    let client = kube::Client::try_from(config.clone()).context("build a Kubernetes client")?;
    Ok(Cluster { config, client })
}

async fn run_with_reporters(
    cluster: Cluster,
    scenarios: Vec<Scenario>,
    config: RunConfig,
    report_dir: PathBuf,
) -> anyhow::Result<ExitCode> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Event>();
    let files = report::ReportFiles::in_dir(&report_dir);
    let reporters = std::thread::spawn(move || -> Result<(), report::ReportError> {
        let mut console = report::console::ConsoleReporter::stderr().with_report_files(files);
        let mut writer = report::FileReporter::new(report_dir);
        while let Some(event) = rx.blocking_recv() {
            // The files first, so the console's summary can point at them.
            writer.event(&event)?;
            console.event(&event)?;
            if event.ends_run() {
                break;
            }
        }
        Ok(())
    });
    // Ctrl-C drops the runner and its sender: this one tells the reporters the run was interrupted.
    let interrupt = tx.clone();
    let run_id = config.run_id.clone();
    let keep = config.keep;
    let outcome = tokio::select! {
        report = runner::run(&cluster, scenarios, &config, tx) => Some(report),
        _ = tokio::signal::ctrl_c() => None,
    };
    let Some(report) = outcome else {
        // The reports of what finished, marked interrupted, before cleaning up.
        let _ = interrupt.send(Event::RunInterrupted);
        match reporters.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!(
                "error: failed to write the reports: {}",
                cdcheck::error_chain(&e)
            ),
            Err(_) => eprintln!("error: failed to write the reports: a reporter panicked"),
        }
        eprintln!(
            "interrupted: {}",
            if keep {
                "keeping what the run created (--keep)"
            } else {
                "deleting what the run created"
            }
        );
        if !keep {
            runner::cleanup_run(&cluster.client, &run_id).await;
        }
        return Ok(ExitCode::from(130));
    };
    reporters
        .join()
        .map_err(|_| anyhow::anyhow!("write the reports: a reporter panicked"))?
        .context("write the reports")?;
    Ok(match report.verdict {
        Verdict::Passed | Verdict::Skipped => ExitCode::SUCCESS,
        Verdict::Failed | Verdict::Error => ExitCode::from(1),
    })
}
