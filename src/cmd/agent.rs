//! `cdcheck agent`: the in-mesh client. Sends gRPC requests to adservice by batches of one
//! `userid` and per-backend gRPC health checks from inside the mesh, and prints one JSON
//! record per line (request, batch attribution by the sidecar's counters per Service and
//! per pod address, health, done).

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use cdcheck::agent::{self, AgentOptions, Batch};

#[derive(clap::Args, Debug)]
#[command(after_help = "Example (in the agent pod, next to its sidecar):
  cdcheck agent --ads http://adservice:9555 --batch 3f1c2a9e=50 --batch -=50 \\
    --health hipstershop.CartService=http://cartservice:7070
Exit status: 0 every request succeeded and every backend is SERVING, 1 otherwise, 2 bad input.
Attribution is reported, not judged: the runner compares each batch with its expectation.")]
pub struct Args {
    /// adservice's endpoint as the app would call it (the sidecar routes it).
    #[arg(long, value_name = "URL")]
    pub ads: Option<String>,

    /// A batch of GetAds requests: USERID=N (with `userid` metadata) or -=N (without).
    /// Repeatable; batches run one after another.
    /// (`-=N` starts with a dash: taken as a value, not as an unknown flag.)
    #[arg(long = "batch", value_name = "USERID=N", value_parser = parse_batch, requires = "ads", allow_hyphen_values = true)]
    pub batches: Vec<Batch>,

    /// A gRPC health check: SERVICE=URL (repeatable).
    #[arg(long = "health", value_name = "SERVICE=URL", value_parser = parse_health)]
    pub health: Vec<(String, String)>,

    /// The client sidecar's Prometheus stats.
    #[arg(long, value_name = "URL", env = cdcheck::settings::env::AGENT_STATS_URL, default_value = agent::DEFAULT_STATS_URL)]
    pub stats: String,

    /// The client sidecar's admin `/clusters` as JSON: which pods answered each batch.
    #[arg(long, value_name = "URL", env = cdcheck::settings::env::AGENT_HOSTS_URL, default_value = agent::stats::DEFAULT_HOSTS_URL)]
    pub hosts: String,

    /// Connect every request to this address (the port stays the URL's; `:authority`
    /// stays the host): where a sidecar listens on the pod's address instead of
    /// capturing traffic with iptables, as on cdcheck's local mesh.
    #[arg(long, value_name = "IP", env = cdcheck::settings::env::AGENT_VIA)]
    pub via: Option<std::net::IpAddr>,

    /// Retry each health check until SERVING, and a warm-up call before the first batch
    /// until it succeeds, for up to this long (a new sidecar gets its routes a moment
    /// after it is ready).
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub settle: Duration,

    /// Bound of each request.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

fn parse_batch(value: &str) -> Result<Batch, String> {
    Batch::parse(value).map_err(|e| e.to_string())
}

fn parse_health(value: &str) -> Result<(String, String), String> {
    agent::parse_health(value).map_err(|e| e.to_string())
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if args.batches.is_empty() && args.health.is_empty() {
        anyhow::bail!("run the agent: give at least one --batch (with --ads) or --health");
    }
    let options = AgentOptions {
        ads: args.ads,
        batches: args.batches,
        health: args.health,
        stats_url: args.stats,
        hosts_url: args.hosts,
        timeout: args.timeout,
        via: args.via,
        settle: args.settle,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the async runtime")?;
    let failed = runtime.block_on(agent::run(&options, |record| {
        use std::io::Write;
        let line = serde_json::to_string(record).expect("a record serializes");
        let mut out = std::io::stdout().lock();
        // Flushed per line: the pod log is read while the agent runs.
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }));
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    #[test]
    fn the_pods_arguments_parse_including_the_batch_without_userid() {
        let args = cdcheck::agent::pod::args("dev", "s1", 5);
        let cli = Cli::try_parse_from(std::iter::once("agent".to_string()).chain(args))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            cli.args.batches,
            [Batch::parse("s1=5").unwrap(), Batch::parse("-=5").unwrap()]
        );
        assert_eq!(cli.args.health.len(), 9);
    }
}
