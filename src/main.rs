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
    /// Print the multi-document YAML the pipeline deploys for an environment.
    Render(cmd::render::Args),
}

fn main() -> std::process::ExitCode {
    cdcheck::install_crypto_provider();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Render(args) => cmd::render::run(args),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: failed to {error:#}");
            std::process::ExitCode::from(2)
        }
    }
}
