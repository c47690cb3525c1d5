//! `cdcheck load`: open- or closed-loop load against one HTTP(S) or gRPC target, with a summary.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use cdcheck::traffic::attribution::AttributionRule;
use cdcheck::traffic::load::{self, LoadSpec, Progress};
use cdcheck::traffic::target::{GrpcMethod, GrpcTarget, HttpTarget, HttpVersion, Target};
use cdcheck::traffic::verdict::{Tolerance, failures_within};
use cdcheck::traffic::{parse_duration, parse_rate};

use super::connection::ConnectionArgs;

/// Send load to URL and summarize every request (count, rate, errors by class, latency, labels).
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Target: `http(s)://host:port/path`, or `http(s)://host:port` with `--grpc`.
    pub url: String,
    /// Open loop: requests per second on a fixed schedule (default 100 unless --connections).
    #[arg(long)]
    pub rate: Option<String>,
    /// How long to send, e.g. `10s`, `1m`.
    #[arg(long, default_value = "10s")]
    pub duration: String,
    /// Closed loop: this many connections, each sending as fast as answers come.
    #[arg(long, conflicts_with = "rate")]
    pub connections: Option<usize>,
    /// HTTP/2: prior knowledge on http://, ALPN h2 on https://.
    #[arg(long)]
    pub http2: bool,
    /// Unary gRPC instead of HTTP: `grpc.health.v1.Health/Check` or `hipstershop.AdService/GetAds`.
    #[arg(long, value_name = "SERVICE/METHOD")]
    pub grpc: Option<String>,
    /// The service a gRPC health Check asks about (empty: the whole server).
    #[arg(long, default_value = "")]
    pub health_service: String,
    /// Extra request header (gRPC: metadata), `NAME:VALUE`; repeatable.
    #[arg(long = "header", value_name = "NAME:VALUE")]
    pub headers: Vec<String>,
    /// Cookie `name=value` added to the request's cookie header; repeatable.
    #[arg(long = "cookie", value_name = "NAME=VALUE")]
    pub cookies: Vec<String>,
    #[command(flatten)]
    pub connection: ConnectionArgs,
    /// Worker threads sending requests (default: half the CPUs, at least one: cdcheck
    /// usually shares the machine with the cluster it measures).
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// Per-request timeout.
    #[arg(long, default_value = "5s")]
    pub timeout: String,
    /// Label each answer by this response header (gRPC: metadata or trailer).
    #[arg(long, value_name = "NAME")]
    pub attribute_header: Option<String>,
    /// Label each answer by the first capture group of this regex on the body
    /// (`frontend` is a shorthand for the frontend's `Pod: <name>`).
    #[arg(long, value_name = "REGEX")]
    pub attribute_body: Option<String>,
    /// Failed requests allowed before the exit status is 1.
    #[arg(long, default_value_t = 0)]
    pub max_failed: u64,
    /// Print JSON (summary, verdict, outage windows) instead of text.
    #[arg(long)]
    pub json: bool,
    /// With --json, include every request's record.
    #[arg(long, requires = "json")]
    pub records: bool,
}

fn target(args: &Args) -> anyhow::Result<Target> {
    let timeout = parse_duration(&args.timeout)?;
    if let Some(method) = &args.grpc {
        let method = GrpcMethod::parse(method, &args.health_service)?;
        let mut target = GrpcTarget::new(&args.url, method)?;
        target.timeout = timeout;
        for header in &args.headers {
            target = target.with_header(header)?;
        }
        if let Some(cookie) = args.cookies.first() {
            anyhow::bail!(
                "use --cookie `{cookie}` with --grpc: gRPC calls carry metadata (--header NAME:VALUE)"
            );
        }
        target.tls = args.connection.tls()?;
        target.resolve = args.connection.resolve()?;
        return Ok(Target::Grpc(target));
    }
    let mut target = HttpTarget::parse(&args.url)?;
    target.timeout = timeout;
    if args.http2 {
        target.version = HttpVersion::Http2;
    }
    for header in &args.headers {
        target = target.with_header(header)?;
    }
    for cookie in &args.cookies {
        target = target.with_cookie(cookie)?;
    }
    target.tls = args.connection.tls()?;
    target.resolve = args.connection.resolve()?;
    Ok(Target::Http(target))
}

fn spec(args: &Args) -> anyhow::Result<LoadSpec> {
    let duration = parse_duration(&args.duration)?;
    let mut spec = match (args.connections, &args.rate) {
        (Some(0), _) => anyhow::bail!("use `--connections 0`: at least one connection is needed"),
        (Some(connections), _) => LoadSpec::closed(connections, duration),
        (None, Some(rate)) => LoadSpec::open(parse_rate(rate)?, duration),
        (None, None) => LoadSpec::open(100.0, duration),
    };
    let mut rules = Vec::new();
    if let Some(name) = &args.attribute_header {
        rules.push(AttributionRule::header(name)?);
    }
    if let Some(pattern) = &args.attribute_body {
        rules.push(if pattern == "frontend" {
            AttributionRule::frontend_pod()
        } else {
            AttributionRule::body_regex(pattern)?
        });
    }
    if !rules.is_empty() {
        spec.attribution = Some(AttributionRule::FirstOf(rules));
    }
    Ok(spec)
}

fn worker_threads(requested: Option<usize>) -> anyhow::Result<usize> {
    match requested {
        Some(0) => anyhow::bail!("use `--threads 0`: at least one worker thread is needed"),
        Some(n) => Ok(n),
        // On 2 cores, 1 worker measured 7% more HTTP/1.1 throughput at 20% less CPU per
        // request than 2 (BENCHMARKS.md): a second worker only fights the target for a core.
        None => Ok(std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))),
    }
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let target = target(&args)?;
    let spec = spec(&args)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(worker_threads(args.threads)?)
        .enable_all()
        .build()
        .context("start the async runtime")?;
    let timeline = runtime.block_on(async {
        let progress = Arc::new(Progress::default());
        let bar = progress_bar(&spec, progress.clone());
        let timeline = load::run(&target, &spec, Some(progress)).await;
        if let Some((bar, ticker)) = bar {
            ticker.abort();
            bar.finish_and_clear();
        }
        timeline
    })?;
    let summary = timeline.summary();
    let verdict = failures_within(
        &timeline,
        Tolerance::Count {
            max_failed: args.max_failed,
        },
    );
    let mut text = String::new();
    if args.json {
        let mut out = serde_json::json!({
            "target": args.url,
            "schedule": spec.schedule,
            "started_unix_ms": timeline.started_unix_ms,
            "summary": summary,
            "verdict": verdict,
        });
        if args.records {
            out["records"] = serde_json::to_value(&timeline.records)?;
        }
        text = serde_json::to_string_pretty(&out)? + "\n";
    } else {
        use std::fmt::Write as _;
        let _ = write!(text, "{summary}");
        for window in &verdict.outages {
            let _ = writeln!(
                text,
                "outage    {:.3}s .. {:.3}s ({:.1}ms, {} failed requests)",
                window.start.as_secs_f64(),
                window.end.as_secs_f64(),
                window.duration.as_secs_f64() * 1000.0,
                window.failed_requests
            );
        }
        let _ = writeln!(
            text,
            "verdict   {} ({} failed, {} allowed)",
            if verdict.passed { "pass" } else { "FAIL" },
            verdict.failed,
            args.max_failed
        );
    }
    // A closed pipe (`| head`) is not an error of the load.
    let _ = std::io::Write::write_all(&mut std::io::stdout().lock(), text.as_bytes());
    Ok(if verdict.passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// A live line on stderr for runs of 2 s or more (hidden when stderr is not a terminal).
fn progress_bar(
    spec: &LoadSpec,
    progress: Arc<Progress>,
) -> Option<(indicatif::ProgressBar, tokio::task::JoinHandle<()>)> {
    if spec.duration < Duration::from_secs(2) {
        return None;
    }
    let bar = match spec.planned() {
        Some(planned) => indicatif::ProgressBar::new(planned),
        None => indicatif::ProgressBar::new_spinner(),
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} {elapsed_precise} [{bar:30}] {pos} sent {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    let ticker = tokio::spawn({
        let bar = bar.clone();
        async move {
            loop {
                let (sent, completed, failed) = progress.snapshot();
                bar.set_position(sent);
                bar.set_message(format!("{completed} answered, {failed} failed"));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    });
    Some((bar, ticker))
}
