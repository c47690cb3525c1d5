//! One module per subcommand; each exposes `Args` (clap) and `run(Args) -> anyhow::Result<ExitCode>`.

pub mod agent;
mod connection;
pub mod load;
pub mod probe;
pub mod render;
pub mod run;
pub mod standin;
pub mod substrate;
pub mod versions;
