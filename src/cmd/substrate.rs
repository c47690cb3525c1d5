//! `cdcheck up`, `down`, `kubeconfig`, `doctor` and `substrate install`: the lifecycle of the
//! local and kind substrates.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use cdcheck::mesh::Workloads;
use cdcheck::settings;
use cdcheck::substrate::host::SystemHost;
use cdcheck::substrate::{
    self, MeshChoice, SubstrateKind, SubstrateOptions, binaries, boutique, containers, doctor,
    kind, local,
};

/// Where `up --substrate kind` puts the feature images.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum RegistryKind {
    /// A local OCI registry container (kind's documented `localhost:5001` setup) started
    /// through the Docker API for this command and removed when it ends.
    Local,
}

#[derive(clap::Args, Debug)]
#[command(
    after_help = "Example:\n  eval \"$(cdcheck up --substrate local --nodes 3)\"\n  kubectl get nodes"
)]
pub struct UpArgs {
    #[arg(long, value_enum, default_value_t = SubstrateKind::Local)]
    pub substrate: SubstrateKind,

    /// Number of fake nodes (zones a, b, c round robin).
    #[arg(long, default_value_t = settings::NODES, value_parser = clap::value_parser!(u32).range(settings::MIN_NODES..=settings::MAX_NODES))]
    pub nodes: u32,

    /// Where processes' logs, certificates and the kubeconfig live (default:
    /// $CDCHECK_STATE_DIR, or with the mesh $CDCHECK_MESH_STATE_DIR, else under
    /// ~/.local/state/cdcheck).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,

    /// Upper bound on the boot.
    #[arg(long, default_value_t = settings::BOOT_TIMEOUT.into())]
    pub timeout: humantime::Duration,

    /// Run a real Istio data plane on the local substrate: istiod, Envoy as the ingress
    /// gateway on 127.0.0.1:30080/30443, every pod a process (needs root, istiod from
    /// `cdcheck substrate install --mesh`, and Envoy). `--mesh` alone means `on`; `auto`
    /// takes it when it can be had, as `cdcheck run` does.
    #[arg(long, value_enum, default_value_t = MeshChoice::Off, num_args = 0..=1, default_missing_value = "on")]
    pub mesh: MeshChoice,

    /// What the local mesh's pods run for Online Boutique's images: `standins` (cdcheck's,
    /// which answer without calling each other) or `upstream` (Online Boutique's own
    /// services, built from its sources once by `cdcheck substrate install --mesh`;
    /// cartservice stays a stand-in, redis-cart is Redis).
    #[arg(long, value_enum, default_value_t = Workloads::Standins)]
    pub workloads: Workloads,

    /// kind: delete cdcheck's cluster and create it again even when its fingerprint matches.
    #[arg(long)]
    pub recreate: bool,

    /// kind: pull every image the run needs and load it into the nodes (`kind load
    /// docker-image`), so later runs work offline.
    #[arg(long)]
    pub preload: bool,

    /// kind: the in-mesh agent's image (built from agent/Dockerfile), loaded into the nodes.
    #[arg(long, value_name = "REF")]
    pub agent_image: Option<String>,

    /// kind: push the feature images through a local registry (pulled by every node by the
    /// manifests' names) instead of `kind load`. The registry's image is
    /// `$CDCHECK_REGISTRY_IMAGE`, else the pin of `cdcheck versions REGISTRY_IMAGE`.
    #[arg(long, value_enum)]
    pub registry: Option<RegistryKind>,

    /// kind: where the kind config, Istio overlay and kubeconfig are written (default:
    /// $CDCHECK_KIND_STATE_DIR, else ~/.local/state/cdcheck/kind).
    #[arg(long, value_name = "DIR")]
    pub kind_state_dir: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
pub struct MeshDaemonArgs {
    #[arg(long)]
    pub state_dir: PathBuf,
    #[arg(long)]
    pub envoy: PathBuf,
    /// Online Boutique's built services, run instead of stand-ins.
    #[arg(long)]
    pub boutique: Option<PathBuf>,
    /// Istio's pilot-agent (its bootstrap template beside it), for the gateway and sidecars.
    #[arg(long)]
    pub pilot_agent: PathBuf,
    /// Istio's sidecar on every pod Istio would inject (istio-iptables and `pilot-agent
    /// proxy sidecar`); without it, only pods that ask by label get a bare Envoy.
    #[arg(long)]
    pub sidecars: bool,
}

#[derive(clap::Args, Debug)]
pub struct DownArgs {
    #[arg(long, value_enum, default_value_t = SubstrateKind::Local)]
    pub substrate: SubstrateKind,

    /// State directory of the local substrate (default: both the plain and the mesh one).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,

    /// kind: where `up` wrote its files (removed with the cluster).
    #[arg(long, value_name = "DIR")]
    pub kind_state_dir: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
pub struct DoctorArgs {
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args, Debug)]
pub struct StateArgs {
    /// State directory of the local substrate (default: the plain one, else the mesh one).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
pub struct SubstrateArgs {
    #[command(subcommand)]
    pub command: SubstrateCommand,
}

#[derive(clap::Subcommand, Debug)]
pub enum SubstrateCommand {
    /// local: find or build etcd, kube-apiserver, kube-controller-manager, kube-scheduler and
    /// kwok (env vars CDCHECK_ETCD, CDCHECK_KUBE_APISERVER, ... and PATH win; else the cache
    /// $CDCHECK_BIN_CACHE or ~/.cache/cdcheck/bin; else `go build` from the module proxy).
    /// kind: kind and istioctl from the Go module proxy into the cache (verified by Go's
    /// checksum database); kubectl from dl.k8s.io checked against the SHA-256 pinned for
    /// the platform (linux/amd64; elsewhere its verified install command is printed).
    Install(InstallArgs),
}

#[derive(clap::Args, Debug)]
pub struct InstallArgs {
    #[arg(long, value_enum, default_value_t = SubstrateKind::Local)]
    pub substrate: SubstrateKind,

    /// Also find or build istiod (pilot-discovery) and Online Boutique's services for the local mesh
    /// (CDCHECK_PILOT_DISCOVERY wins; istiod about 11–14 min cold, the services 3–4 min) and
    /// check Envoy is there.
    #[arg(long)]
    pub mesh: bool,
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the async runtime")
}

pub fn ensure_binaries() -> anyhow::Result<binaries::Binaries> {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() {
        // No terminal (CI): a spinner would print nothing, so every line goes to stderr.
        let progress = |line: &str| eprintln!("{line}");
        return Ok(substrate::target::ensure_binaries(&progress)?);
    }
    let spinner = indicatif::ProgressBar::new_spinner();
    spinner.enable_steady_tick(Duration::from_millis(120));
    let progress = |line: &str| {
        spinner.println(line);
        spinner.set_message(line.trim().chars().take(100).collect::<String>());
    };
    let result = substrate::target::ensure_binaries(&progress);
    spinner.finish_and_clear();
    Ok(result?)
}

fn install_kind_tools() -> anyhow::Result<ExitCode> {
    use cdcheck::substrate::tools;
    let cache = binaries::cache_root();
    let plan = kind::Plan {
        decision: kind::Decision::Create,
        steps: tools::kind_plan(&cache),
    };
    kind::execute(&SystemHost, &plan, |step| eprintln!("+ {step}"))
        .context("install the kind substrate's tools")?;
    let dir = tools::tool_dir(&cache, "kind", cdcheck::versions::KIND);
    println!("kind {} in {}", cdcheck::versions::KIND, dir.display());
    let istioctl = tools::tool_dir(&cache, "istioctl", cdcheck::versions::ISTIOCTL);
    let kubectl = tools::tool_dir(&cache, "kubectl", cdcheck::versions::KUBECTL);
    let mut failed = 0;
    let plans = [
        (
            "istioctl",
            cdcheck::versions::ISTIOCTL,
            &istioctl,
            tools::istioctl_plan(&cache),
        ),
        (
            "kubectl",
            cdcheck::versions::KUBECTL,
            &kubectl,
            tools::kubectl_plan(&cache, &tools::kubernetes_platform()),
        ),
    ];
    for (tool, version, dir, result) in plans {
        let steps = match result {
            Ok(steps) => steps,
            Err(e) => {
                failed += 1;
                println!("not installed: failed to {e}");
                continue;
            }
        };
        let plan = kind::Plan {
            decision: kind::Decision::Create,
            steps,
        };
        let done = kind::execute(&SystemHost, &plan, |step| match step {
            kind::Step::Write { path, .. } => eprintln!("+ write {}", path.display()),
            kind::Step::Run { purpose, .. } => eprintln!("+ {purpose}"),
            step @ kind::Step::CheckRegistry { .. } => eprintln!("+ {step}"),
        });
        match done {
            Ok(()) => println!("{tool} {version} in {}", dir.display()),
            Err(e) => {
                failed += 1;
                println!("not installed: failed to install {tool} {version}: {e:#}");
            }
        }
    }
    println!(
        "export PATH=\"{}:{}:{}:$PATH\"",
        dir.display(),
        istioctl.display(),
        kubectl.display()
    );
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

pub fn install(args: SubstrateArgs) -> anyhow::Result<ExitCode> {
    let SubstrateCommand::Install(install) = args.command;
    if install.substrate == SubstrateKind::Existing {
        anyhow::bail!(
            "install for --substrate existing: cdcheck installs nothing on a cluster of yours"
        );
    }
    if install.substrate == SubstrateKind::Kind {
        if install.mesh {
            anyhow::bail!("use --mesh: it applies to --substrate local");
        }
        return install_kind_tools();
    }
    let found = ensure_binaries()?;
    for binary in binaries::Binary::ALL {
        println!("{:<24} {}", binary.file_name(), found.get(binary).display());
    }
    if install.mesh {
        if cdcheck::mesh::locate_istiod().is_err() {
            eprintln!(
                "building istiod {} into {} (11–14 min cold on 2 cores)",
                cdcheck::versions::ISTIO,
                binaries::cache_root().display()
            );
        }
        let istiod = binaries::ensure_istiod(|line| eprintln!("  {line}"))
            .context("install istiod for the local mesh")?;
        println!("{:<24} {}", "pilot-discovery", istiod.display());
        println!(
            "{:<24} {}",
            "pilot-agent",
            cdcheck::mesh::istio_cache_dir()
                .join("pilot-agent")
                .display()
        );
        let envoy = cdcheck::mesh::locate_envoy().context("find Envoy for the local mesh")?;
        println!("{:<24} {}", "envoy", envoy.display());
        if boutique::locate().is_err() {
            eprintln!(
                "building Online Boutique {}'s services into {} (3–4 min cold on 2 cores)",
                cdcheck::versions::ONLINE_BOUTIQUE,
                boutique::cache_dir().display()
            );
        }
        let built = boutique::ensure(|line| eprintln!("  {line}"))
            .context("install Online Boutique's services for the local mesh")?;
        for service in boutique::BUILT {
            println!(
                "{:<24} {}",
                service,
                boutique::launcher(&built, service).display()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `cdcheck doctor`: exit 0 ready, 1 a problem (one line each, with its fix).
pub fn doctor(args: DoctorArgs) -> anyhow::Result<ExitCode> {
    let report = doctor::diagnose(&SystemHost);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for ok in &report.ok {
            println!("ok: {ok}");
        }
        for problem in &report.problems {
            println!("problem: {problem}");
        }
        if report.is_ready() {
            println!("ready for `cdcheck up --substrate kind`");
        }
    }
    Ok(if report.is_ready() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn up_kind(args: UpArgs) -> anyhow::Result<ExitCode> {
    let mut options =
        kind::KindOptions::new(args.kind_state_dir.unwrap_or_else(settings::kind_state_dir));
    options.recreate = args.recreate;
    options.preload = args.preload;
    options.agent_image = args.agent_image;
    let runtime = runtime()?;
    let registry = match args.registry {
        None => None,
        Some(RegistryKind::Local) => {
            // The preflight first: a machine that cannot run kind gets no registry container.
            let engine = doctor::require_ready(&SystemHost)
                .map_err(kind::KindError::from)?
                .engine
                .unwrap_or(doctor::Engine::Docker);
            // A registry of ours that a killed `up` left behind holds the name and port.
            if containers::remove_leftover(&SystemHost, engine, containers::KIND_REGISTRY_NAME)
                .context("start the local registry")?
            {
                eprintln!(
                    "removed the local registry {} an earlier run left",
                    containers::KIND_REGISTRY_NAME
                );
            }
            let image = settings::var_string(settings::env::REGISTRY_IMAGE)
                .unwrap_or_else(|| cdcheck::versions::REGISTRY_IMAGE.to_string());
            let registry = runtime
                .block_on(containers::LocalRegistry::start(
                    &containers::RegistryOptions::for_kind(image),
                ))
                .context("start the local registry")?;
            eprintln!(
                "local registry {} on {} (removed when this command ends)",
                containers::KIND_REGISTRY_NAME,
                registry.address()
            );
            options.registry = Some(kind::RegistryMirror::kind_default());
            Some(registry)
        }
    };
    // The plan runs on a blocking thread so Ctrl-C can end the wait; either way the registry
    // is removed below (its handle's drop needs the runtime's context, hence `block_on`).
    let outcome = runtime.block_on(async {
        let up = tokio::task::spawn_blocking(move || {
            kind::up(&SystemHost, &options, |step| eprintln!("+ {step}"))
        });
        tokio::select! {
            joined = up => Some(joined.expect("the kind plan does not panic")),
            _ = tokio::signal::ctrl_c() => None,
        }
    });
    if let Some(registry) = registry {
        runtime
            .block_on(registry.remove())
            .context("remove the local registry")?;
    }
    let Some(outcome) = outcome else {
        anyhow::bail!(
            "bring up the kind substrate: interrupted (the local registry was removed; `cdcheck up --substrate kind` again resumes)"
        );
    };
    let cluster = match outcome {
        Ok(cluster) => cluster,
        // The preflight's lines read best on their own.
        Err(e @ kind::KindError::Preflight(_)) => return Err(e.into()),
        Err(e) => return Err(anyhow::Error::new(e).context("bring up the kind substrate")),
    };
    eprintln!(
        "kind substrate {} (context {})",
        match &cluster.decision {
            kind::Decision::Reuse => "reused: its fingerprint matches".to_string(),
            kind::Decision::Recreate(why) => format!("recreated: {why}"),
            _ => "created".to_string(),
        },
        cluster.context
    );
    println!("export KUBECONFIG={}", cluster.kubeconfig.display());
    Ok(ExitCode::SUCCESS)
}

pub fn up(args: UpArgs) -> anyhow::Result<ExitCode> {
    match args.substrate {
        SubstrateKind::Existing => anyhow::bail!(
            "bring up --substrate existing: a cluster of yours is never created; `cdcheck run --substrate existing` connects to it"
        ),
        SubstrateKind::Kind => {
            if args.mesh != MeshChoice::Off {
                anyhow::bail!(
                    "use --mesh: it applies to --substrate local (kind has Istio's own data plane)"
                );
            }
            return up_kind(args);
        }
        SubstrateKind::Local => {}
    }
    if args.recreate || args.preload || args.agent_image.is_some() || args.registry.is_some() {
        anyhow::bail!(
            "use --recreate, --preload, --agent-image or --registry: they apply to --substrate kind only"
        );
    }
    let mut options = SubstrateOptions::new(SubstrateKind::Local);
    options.nodes = args.nodes;
    options.state_dir = args.state_dir;
    options.boot_timeout = args.timeout.into();
    options.mesh = args.mesh;
    options.workloads = args.workloads;
    options.require_data_plane = args.mesh == MeshChoice::On;
    let progress = |line: &str| eprintln!("{line}");
    let target = runtime()?
        .block_on(substrate::provision(&options, &progress))
        .context("bring up the local substrate")?;
    eprintln!("{}", target.summary);
    let state_dir = settings::state_dir(options.state_dir.as_deref(), target.data_plane.is_some());
    println!(
        "export KUBECONFIG={}",
        settings::local_kubeconfig(&state_dir).display()
    );
    Ok(ExitCode::SUCCESS)
}

pub fn down(args: DownArgs) -> anyhow::Result<ExitCode> {
    let mut options = SubstrateOptions::new(args.substrate);
    options.state_dir = args.state_dir;
    options.kind_state_dir = args.kind_state_dir;
    let progress = |line: &str| eprintln!("{line}");
    runtime()?
        .block_on(substrate::teardown(&options, &progress))
        .context("tear down the substrate")?;
    Ok(ExitCode::SUCCESS)
}

pub fn kubeconfig(args: StateArgs) -> anyhow::Result<ExitCode> {
    // Without --state-dir: the default substrate, else the default mesh one.
    let dir = args.state_dir.unwrap_or_else(|| {
        let plain = settings::state_dir(None, false);
        let mesh = settings::state_dir(None, true);
        if !settings::local_kubeconfig(&plain).exists()
            && settings::local_kubeconfig(&mesh).exists()
        {
            mesh
        } else {
            plain
        }
    });
    let path = local::kubeconfig_path(&dir);
    if !path.exists() {
        return Err(local::LocalError::NotRunning { path: dir })
            .context("print the local substrate's kubeconfig");
    }
    println!("{}", path.display());
    Ok(ExitCode::SUCCESS)
}

/// The mesh daemon `up --mesh` starts: the pod network, relays and pod runner.
pub fn mesh_daemon(args: MeshDaemonArgs) -> anyhow::Result<ExitCode> {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CDCHECK_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).init();
    let options = cdcheck::mesh::DaemonOptions {
        state_dir: args.state_dir,
        istio_agent: cdcheck::mesh::sidecar::SidecarBinaries::beside(
            &args.pilot_agent,
            &args.envoy,
        ),
        sidecars: args.sidecars,
        envoy: args.envoy,
        boutique: args.boutique,
    };
    runtime()?
        .block_on(cdcheck::mesh::run_daemon(options))
        .context("run the local mesh")?;
    Ok(ExitCode::SUCCESS)
}
