//! The `cdcheck` command line: parses arguments and hands each subcommand to its module under `cmd/`.

mod cmd;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "cdcheck",
    version,
    about = "Conformance suite for Kubernetes continuous delivery on Istio",
    long_about = None
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the conformance scenarios against the pipeline on a substrate and write the reports.
    Run(cmd::run::Args),
    /// Send open- or closed-loop load to an HTTP(S) or gRPC target and summarize every request.
    Load(cmd::load::Args),
    /// Probe HTTP health, gRPC health or the TLS certificate served for an SNI name.
    Probe(cmd::probe::Args),
    /// Print the multi-document YAML the pipeline deploys for an environment.
    Render(cmd::render::Args),
    /// Print every pinned external version (kind, node image, Istio, Kubernetes, etcd, kwok, Envoy).
    Versions(cmd::versions::Args),
    /// Start a substrate (the local control plane by default) and print `export KUBECONFIG=...`.
    Up(cmd::substrate::UpArgs),
    /// Stop every process of the local substrate (or delete cdcheck's kind cluster) and remove its state.
    Down(cmd::substrate::DownArgs),
    /// Check this machine for the kind substrate: container engine, kind, istioctl, kubectl, limits.
    Doctor(cmd::substrate::DoctorArgs),
    /// Print the path of the local substrate's admin kubeconfig.
    Kubeconfig(cmd::substrate::StateArgs),
    /// In-mesh client: gRPC requests by userid and health checks, attributed by the sidecar's counters (JSON lines).
    Agent(cmd::agent::Args),
    /// Manage the local substrate's binaries.
    Substrate(cmd::substrate::SubstrateArgs),
    /// The local mesh's pod runner and relays (started by `cdcheck up --mesh`).
    #[command(hide = true)]
    MeshDaemon(cmd::substrate::MeshDaemonArgs),
    /// Run as one pod's process on the local mesh: a stand-in workload serving what the
    /// pipeline's checks need of its Online Boutique service (health, GetAds, pod name).
    Standin(cmd::standin::Args),
}

fn main() -> std::process::ExitCode {
    cdcheck::install_crypto_provider();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => cmd::run::run(args),
        Command::Load(args) => cmd::load::run(args),
        Command::Probe(args) => cmd::probe::run(args),
        Command::Render(args) => cmd::render::run(args),
        Command::Versions(args) => cmd::versions::run(args),
        Command::Up(args) => cmd::substrate::up(args),
        Command::Down(args) => cmd::substrate::down(args),
        Command::Doctor(args) => cmd::substrate::doctor(args),
        Command::Kubeconfig(args) => cmd::substrate::kubeconfig(args),
        Command::Substrate(args) => cmd::substrate::install(args),
        Command::Agent(args) => cmd::agent::run(args),
        Command::MeshDaemon(args) => cmd::substrate::mesh_daemon(args),
        Command::Standin(args) => cmd::standin::run(args),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: failed to {error:#}");
            std::process::ExitCode::from(2)
        }
    }
}
