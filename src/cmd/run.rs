//! `cdcheck run`: the main job. Ensures a substrate, runs the scenarios against
//! the pipeline under test, writes the reports; exit 0 all passed, 1 a scenario
//! failed, 2 bad input or no substrate.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use cdcheck::mesh::Workloads;
use cdcheck::report::{self, Event, Reporter, SkipKind, Verdict};
use cdcheck::scenario::pipeline::{Manifests, Pipeline};
use cdcheck::scenario::runner::{self, RunConfig};
use cdcheck::scenario::spec::Need;
use cdcheck::scenario::{self, Scenario};
use cdcheck::settings;
use cdcheck::substrate::{self, Cluster, InMesh, MeshChoice, SubstrateKind, SubstrateOptions};

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
    /// Substrate to run on.
    #[arg(long, value_enum, default_value_t = SubstrateKind::Local)]
    pub substrate: SubstrateKind,

    /// The pipeline under test: the YAML a real pipeline produced for one environment
    /// (any number of files and documents), instead of cdcheck's reference rendering.
    /// A directory (every *.yaml/*.yml under it), one file, or `-` for standard input
    /// (`helm template ... | cdcheck run --manifests -`).
    #[arg(long, value_name = "DIR|FILE|-")]
    pub manifests: Option<PathBuf>,

    /// The feature branch's objects (Deployments, Services, the VirtualServices with its
    /// session routes), added to --manifests for the feature-branch scenario.
    #[arg(long, value_name = "DIR|FILE|-", requires = "manifests")]
    pub feature_manifests: Option<PathBuf>,

    /// The next release, whole; without it release N+1 is --manifests with a changed
    /// pod template (as `kubectl rollout restart` does).
    #[arg(long, value_name = "DIR|FILE|-", requires = "manifests")]
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
    #[arg(long, default_value_t = settings::JOBS, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub jobs: u16,

    /// Where the JUnit, JSON and HTML reports go.
    #[arg(long, value_name = "DIR", default_value = settings::REPORT_DIR)]
    pub report_dir: PathBuf,

    /// Keep the namespaces and objects the run created (for debugging).
    #[arg(long)]
    pub keep: bool,

    /// Turn skips of this kind into failures (repeatable; `all`: any skip fails).
    #[arg(long, value_enum)]
    pub require: Vec<Requirement>,

    /// Bound of one rollout.
    #[arg(long, default_value_t = settings::ROLLOUT_TIMEOUT.into())]
    pub rollout_timeout: humantime::Duration,

    /// Apps held to no HA check (single instances by design), replacing the default
    /// (Online Boutique's redis-cart and loadgenerator).
    #[arg(long = "single-instance", value_name = "APP")]
    pub single_instance: Vec<String>,

    /// Fake nodes of the local substrate (when this run starts it).
    #[arg(long, default_value_t = settings::NODES, value_parser = clap::value_parser!(u32).range(settings::MIN_NODES..=settings::MAX_NODES))]
    pub nodes: u32,

    /// State directory of the local substrate (default: $CDCHECK_STATE_DIR, or with the mesh
    /// $CDCHECK_MESH_STATE_DIR, else under ~/.local/state/cdcheck).
    #[arg(long)]
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
    /// Default: $CDCHECK_AGENT_IMAGE, else `cdcheck versions AGENT_IMAGE`.
    #[arg(long, value_name = "REF")]
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

    /// What the local mesh's pods run for Online Boutique's images: `standins` (cdcheck's,
    /// which answer without calling each other) or `upstream` (Online Boutique's own
    /// services, built from its sources once by `cdcheck substrate install --mesh`;
    /// cartservice stays a stand-in, redis-cart is Redis).
    #[arg(long, value_enum, default_value_t = Workloads::Standins)]
    pub workloads: Workloads,
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

/// The substrate this run asks for, from its flags.
fn substrate_options(args: &Args) -> SubstrateOptions {
    let mut options = SubstrateOptions::new(args.substrate);
    options.nodes = args.nodes;
    options.state_dir = args.state_dir.clone();
    options.mesh = args.mesh;
    options.workloads = args.workloads;
    options.require_data_plane =
        args.require.contains(&Requirement::DataPlane) || args.require.contains(&Requirement::All);
    options.kubeconfig = args.kubeconfig.clone();
    options.context = args.context.clone();
    options.ingress = args.ingress.clone();
    options.allow_cordon = args.allow_cordon;
    options.agent_image = args.agent_image.clone();
    options
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
    let options = substrate_options(&args);
    if let Err(e) = options.check() {
        return usage_error(anyhow::Error::new(e));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the async runtime")?;
    let progress = |line: &str| eprintln!("{line}");
    let target = match runtime.block_on(substrate::provision(&options, &progress)) {
        Ok(target) => target,
        Err(e) => return usage_error(anyhow::Error::new(e)),
    };
    eprintln!("{}", target.summary);
    if let Some(data_plane) = &target.data_plane {
        eprintln!(
            "data plane: the gateway at http {} and https {}; calls inside the mesh {}",
            data_plane.http,
            data_plane.https,
            match &data_plane.in_mesh {
                InMesh::LocalClient(_) => "through the local mesh's client".to_string(),
                InMesh::Agent { image } => format!("by agent pods ({image})"),
            }
        );
    }
    let mut config = RunConfig::for_target(&target, pipeline);
    config.jobs = usize::from(args.jobs);
    config.keep = args.keep;
    config.require = args.require.iter().flat_map(|r| r.skip_kinds()).collect();
    config.rollout_timeout = args.rollout_timeout.into();
    if !args.single_instance.is_empty() {
        config.single_instance = args.single_instance.clone();
    }
    let report_dir = args.report_dir.clone();
    let code = runtime.block_on(run_with_reporters(
        target.cluster,
        selected,
        config,
        report_dir,
    ))?;
    Ok(code)
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
