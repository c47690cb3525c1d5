//! `cdcheck render`: print an environment's bundle as YAML.

use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct Args {}

pub fn run(_args: Args) -> anyhow::Result<ExitCode> {
    todo!()
}
