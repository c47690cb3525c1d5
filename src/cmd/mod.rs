//! One module per subcommand; each exposes `Args` (clap) and `run(Args) -> anyhow::Result<ExitCode>`.

mod connection;
pub mod load;
pub mod probe;
pub mod render;
pub mod run;
pub mod standin;
pub mod substrate;
pub mod versions;
