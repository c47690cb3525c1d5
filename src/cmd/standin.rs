//! `cdcheck standin`: the process the local mesh runs for each pod (a stand-in workload, `cdcheck::standin`).

use std::net::IpAddr;
use std::process::ExitCode;

use cdcheck::standin::{self, Config};

/// Serve as one pod's stand-in workload: the role comes from the image, the pod's env is
/// the process's. Exit status 2 means an image it cannot play (the runner reports it like
/// a failed image pull), 1 any other failure to start; SIGTERM ends it at once.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The container's image, e.g. `.../frontend:v0.10.6` or `redis:alpine`; its tag
    /// `cdcheck-broken-never-ready` plays a release that never becomes ready.
    #[arg(long)]
    pub image: String,
    /// The pod's IP, to listen on.
    #[arg(long)]
    pub bind: IpAddr,
    /// A container port to serve; repeatable (0: an ephemeral port, named in the log line).
    #[arg(long = "port", value_name = "PORT")]
    pub ports: Vec<u16>,
    /// The pod's name, shown in responses (default: POD_NAME, else HOSTNAME).
    #[arg(long, env = "POD_NAME")]
    pub pod_name: Option<String>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    standin::die_on_sigterm();
    let pod_name = args
        .pod_name
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default();
    let config = Config {
        image: args.image,
        bind: args.bind,
        ports: args.ports,
        pod_name,
        frontend_message: std::env::var("FRONTEND_MESSAGE").ok(),
        warmup: std::time::Duration::from_secs(
            std::env::var(standin::WARMUP_ENV)
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0),
        ),
    };
    match standin::run(config) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(error) if error.is_unknown_image() => Err(error.into()),
        Err(error) => {
            eprintln!("error: failed to {:#}", anyhow::Error::from(error));
            Ok(ExitCode::FAILURE)
        }
    }
}
