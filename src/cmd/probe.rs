//! `cdcheck probe http|grpc|tls|routing`: one health, TLS or session-routing probe, printed
//! as text or JSON.

use std::process::ExitCode;

use anyhow::Context;
use cdcheck::manifests::routing::SessionId;
use cdcheck::traffic::attribution::AttributionRule;
use cdcheck::traffic::parse_duration;
use cdcheck::traffic::probe;
use cdcheck::traffic::routing::{
    RoutingProbe, RoutingReport, Variant, VariantReport, cookie_variants, userid_variants,
};
use cdcheck::traffic::target::{GrpcMethod, GrpcTarget, HttpTarget};

use super::connection::ConnectionArgs;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    pub probe: Probe,
}

#[derive(clap::Subcommand, Debug)]
pub enum Probe {
    /// GET a health endpoint (e.g. `http://host/_healthz`) with the readiness-probe cookie.
    Http(HttpArgs),
    /// Call grpc.health.v1.Health/Check for a service.
    Grpc(GrpcArgs),
    /// Handshake with TLS and report the served certificate.
    Tls(TlsArgs),
    /// Check session routing: the session's cookie (or gRPC `userid`) reaches the feature
    /// workload, and no look-alike, absent or other session does.
    Routing(RoutingArgs),
}

#[derive(clap::Args, Debug)]
pub struct HttpArgs {
    /// The health endpoint, e.g. `http://frontend:80/_healthz`.
    pub url: String,
    /// Cookie header to send (default: the readiness probe's `shop_session-id=x-readiness-probe`).
    #[arg(long)]
    pub cookie: Option<String>,
    /// Extra request header, `NAME:VALUE`; repeatable.
    #[arg(long = "header", value_name = "NAME:VALUE")]
    pub headers: Vec<String>,
    #[command(flatten)]
    pub connection: ConnectionArgs,
    /// Give up after this long.
    #[arg(long, default_value = "5s")]
    pub timeout: String,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args, Debug)]
pub struct GrpcArgs {
    /// `http://host:port` (h2c) or `https://host:port` (TLS).
    pub endpoint: String,
    /// Service name to check (empty: the whole server).
    #[arg(long, default_value = "")]
    pub service: String,
    #[command(flatten)]
    pub connection: ConnectionArgs,
    /// Give up after this long.
    #[arg(long, default_value = "5s")]
    pub timeout: String,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args, Debug)]
pub struct TlsArgs {
    /// `host:port` to connect to.
    pub address: String,
    /// SNI name (default: the host of ADDRESS).
    #[arg(long)]
    pub sni: Option<String>,
    /// ALPN protocols to offer, comma separated.
    #[arg(long, default_value = "h2,http/1.1")]
    pub alpn: String,
    /// PEM certificate the server must present as its leaf.
    #[arg(long, value_name = "PEM")]
    pub expect_cert: Option<String>,
    /// Give up after this long.
    #[arg(long, default_value = "5s")]
    pub timeout: String,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args, Debug)]
pub struct RoutingArgs {
    /// The page to request, e.g. `http://127.0.0.1:30080/`; with --grpc, the AdService
    /// endpoint `http(s)://host:port`.
    pub url: String,
    /// The test session id the routes were rendered for (as `render --session` takes it).
    #[arg(long, value_name = "ID")]
    pub session: String,
    /// Labels matching this regex are the feature workload.
    #[arg(long, value_name = "REGEX")]
    pub feature_label: String,
    /// Labels matching this regex (and not --feature-label, which is tried first) are the
    /// mainline workload. An answer labelled by neither came from an unknown workload and
    /// fails the probe.
    #[arg(long, value_name = "REGEX")]
    pub mainline_label: String,
    /// How an answer names its server: `header:NAME` (response header, gRPC metadata or
    /// trailer), `body:REGEX` (first capture group, or the whole match), `pod` (the
    /// frontend's `Pod: <name>`) or `banner` (its `FRONTEND_MESSAGE` banner).
    /// Default: `pod`; required with --grpc.
    #[arg(long, value_name = "SPEC")]
    pub attribution: Option<String>,
    /// Call `hipstershop.AdService/GetAds` with `userid` metadata variants instead of
    /// sending cookie variants over HTTP.
    #[arg(long)]
    pub grpc: bool,
    /// Requests per variant (100 bound a leak rate that saw no leak below about 3%, at 95%).
    #[arg(long, default_value_t = 100, value_name = "N")]
    pub requests: u64,
    /// Extra request header (gRPC: metadata), `NAME:VALUE`; repeatable.
    #[arg(long = "header", value_name = "NAME:VALUE")]
    pub headers: Vec<String>,
    #[command(flatten)]
    pub connection: ConnectionArgs,
    /// Per-request timeout.
    #[arg(long, default_value = "5s")]
    pub timeout: String,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

fn exit(ok: bool) -> ExitCode {
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Runtime::new().context("start the async runtime")?;
    runtime.block_on(async {
        match args.probe {
            Probe::Http(a) => http(a).await,
            Probe::Grpc(a) => grpc(a).await,
            Probe::Tls(a) => tls(a).await,
            Probe::Routing(a) => routing(a).await,
        }
    })
}

async fn http(args: HttpArgs) -> anyhow::Result<ExitCode> {
    let mut target = HttpTarget::parse(&args.url)?;
    target.timeout = parse_duration(&args.timeout)?;
    for header in &args.headers {
        target = target.with_header(header)?;
    }
    if let Some(cookie) = &args.cookie {
        target = target.with_cookie(cookie)?;
    }
    target.tls = args.connection.tls()?;
    target.resolve = args.connection.resolve()?;
    let report = probe::http_health(&target).await?;
    if args.json {
        print_json(&report)?;
    } else {
        println!(
            "{} {} -> {} in {:.2}ms {}",
            if report.healthy {
                "healthy"
            } else {
                "UNHEALTHY"
            },
            report.url,
            report.outcome,
            report.latency_us as f64 / 1000.0,
            report.body.as_deref().unwrap_or("").trim()
        );
    }
    Ok(exit(report.healthy))
}

async fn grpc(args: GrpcArgs) -> anyhow::Result<ExitCode> {
    let timeout = parse_duration(&args.timeout)?;
    let mut target = GrpcTarget::new(
        &args.endpoint,
        GrpcMethod::HealthCheck {
            service: args.service.clone(),
        },
    )?;
    target.timeout = timeout;
    target.tls = args.connection.tls()?;
    target.resolve = args.connection.resolve()?;
    let report = probe::grpc_health(&target).await?;
    if args.json {
        print_json(&report)?;
    } else {
        println!(
            "{} {} service `{}` -> {} {} in {:.2}ms",
            if report.healthy {
                "healthy"
            } else {
                "UNHEALTHY"
            },
            report.endpoint,
            report.service,
            report.outcome,
            report.serving_status.as_deref().unwrap_or("-"),
            report.latency_us as f64 / 1000.0
        );
    }
    Ok(exit(report.healthy))
}

async fn tls(args: TlsArgs) -> anyhow::Result<ExitCode> {
    let timeout = parse_duration(&args.timeout)?;
    let sni = match &args.sni {
        Some(sni) => sni.clone(),
        None => args
            .address
            .rsplit_once(':')
            .map(|(host, _)| host.trim_matches(['[', ']']).to_string())
            .with_context(|| format!("parse address `{}`: expected HOST:PORT", args.address))?,
    };
    let expected = match &args.expect_cert {
        Some(path) => {
            Some(std::fs::read(path).with_context(|| format!("read certificate file `{path}`"))?)
        }
        None => None,
    };
    let alpn: Vec<&str> = args
        .alpn
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    let report = probe::tls(&args.address, &sni, &alpn, expected.as_deref(), timeout).await?;
    if args.json {
        print_json(&report)?;
    } else {
        println!(
            "{} {} sni {}",
            if report.passed() { "ok" } else { "FAIL" },
            report.address,
            report.server_name
        );
        if let Some(class) = report.error {
            println!(
                "  handshake failed ({class}): {}",
                report.error_message.as_deref().unwrap_or("")
            );
        }
        println!(
            "  protocol {}  alpn {}",
            report.protocol_version.as_deref().unwrap_or("-"),
            report.alpn.as_deref().unwrap_or("-")
        );
        for (i, cert) in report.chain.iter().enumerate() {
            println!("  [{i}] subject {}", cert.subject);
            println!("      issuer  {}", cert.issuer);
            println!("      sans    {}", cert.sans.join(", "));
            println!("      expires {}", cert.not_after);
            println!("      sha256  {}", cert.sha256);
        }
        println!("  name in SANs: {}", report.name_in_sans);
        if let Some(matches) = report.matches_expected {
            println!(
                "  expected certificate {}: {}",
                report.expected_sha256.as_deref().unwrap_or(""),
                if matches { "served" } else { "NOT served" }
            );
        }
    }
    Ok(exit(report.passed()))
}

/// What `probe routing` sends: cookie variants over HTTP, or `userid` variants over gRPC.
enum RoutingTarget {
    Http(HttpTarget),
    Grpc(GrpcTarget),
}

fn routing_target(args: &RoutingArgs) -> anyhow::Result<RoutingTarget> {
    let timeout = parse_duration(&args.timeout)?;
    if args.grpc {
        let method = GrpcMethod::parse(
            &format!("{}/GetAds", cdcheck::traffic::grpc::AD_SERVICE),
            "",
        )?;
        let mut target = GrpcTarget::new(&args.url, method)?;
        target.timeout = timeout;
        for header in &args.headers {
            target = target.with_header(header)?;
        }
        target.tls = args.connection.tls()?;
        target.resolve = args.connection.resolve()?;
        return Ok(RoutingTarget::Grpc(target));
    }
    let mut target = HttpTarget::parse(&args.url)?;
    target.timeout = timeout;
    for header in &args.headers {
        target = target.with_header(header)?;
    }
    target.tls = args.connection.tls()?;
    target.resolve = args.connection.resolve()?;
    Ok(RoutingTarget::Http(target))
}

fn routing_probe(args: &RoutingArgs) -> anyhow::Result<RoutingProbe> {
    if args.requests == 0 {
        anyhow::bail!("use `--requests 0`: at least one request per variant is needed");
    }
    let attribution = match (&args.attribution, args.grpc) {
        (Some(spec), true) if matches!(spec.trim(), "pod" | "banner") => anyhow::bail!(
            "use --attribution `{spec}` with --grpc: it reads the frontend's page; \
             use header:NAME or body:REGEX"
        ),
        (Some(spec), _) => AttributionRule::parse_spec(spec)?,
        (None, false) => AttributionRule::frontend_pod(),
        (None, true) => anyhow::bail!(
            "use --grpc without --attribution: a GetAds answer names no pod by itself; \
             say where it does, e.g. `header:x-served-by` or `body:REGEX`"
        ),
    };
    let feature_label = regex::Regex::new(&args.feature_label)
        .with_context(|| format!("compile --feature-label regex `{}`", args.feature_label))?;
    let mainline_label = regex::Regex::new(&args.mainline_label)
        .with_context(|| format!("compile --mainline-label regex `{}`", args.mainline_label))?;
    Ok(RoutingProbe {
        per_variant: args.requests,
        attribution,
        feature_label,
        mainline_label,
    })
}

async fn routing(args: RoutingArgs) -> anyhow::Result<ExitCode> {
    let session = SessionId::parse(&args.session).context("check --session")?;
    let target = routing_target(&args)?;
    let probe = routing_probe(&args)?;
    let variants = match &target {
        RoutingTarget::Http(_) => cookie_variants(&session),
        RoutingTarget::Grpc(_) => userid_variants(&session),
    };
    let bar = indicatif::ProgressBar::new(args.requests * variants.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} {elapsed_precise} [{bar:30}] {pos}/{len} sent {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    // One variant at a time, so that the bar on stderr (hidden when it is not a terminal) moves.
    let mut reports = Vec::with_capacity(variants.len());
    for variant in &variants {
        bar.set_message(variant.name.clone());
        let one = std::slice::from_ref::<Variant>(variant);
        let report = match &target {
            RoutingTarget::Http(base) => probe.run_cookies(base, one).await?,
            RoutingTarget::Grpc(base) => probe.run_userids(base, one).await?,
        };
        reports.extend(report.variants);
        bar.inc(args.requests);
    }
    bar.finish_and_clear();
    let report = RoutingReport::from_variants(reports);
    if args.json {
        print_json(&report)?;
    } else {
        print!("{report}");
        println!("{}", routing_verdict(&report, args.requests));
    }
    Ok(exit(report.passed))
}

/// `routing: PASS: ...`, or `routing: FAIL: ...` naming every variant that leaked or had
/// failed or unattributed answers.
fn routing_verdict(report: &RoutingReport, requests: u64) -> String {
    let total = report.variants.len();
    if report.passed {
        return format!("routing: PASS: {total} variants x {requests} requests, none leaked");
    }
    let describe = |pick: fn(&VariantReport) -> bool| {
        let names: Vec<String> = report
            .variants
            .iter()
            .filter(|v| pick(v))
            .map(|v| format!("`{}`", v.variant.name))
            .collect();
        match names.as_slice() {
            [] => None,
            [one] => Some(format!("variant {one}")),
            all if all.len() == total => Some("every variant".to_string()),
            some => Some(format!("variants {}", some.join(", "))),
        }
    };
    let mut reasons = Vec::new();
    if let Some(leaked) = describe(|v| v.leaked > 0) {
        reasons.push(format!("{leaked} leaked"));
    }
    if let Some(unknown) = describe(|v| v.unknown > 0) {
        reasons.push(format!("{unknown} reached an unknown workload"));
    }
    if let Some(unattributed) = describe(|v| v.unattributed > 0) {
        reasons.push(format!("{unattributed} had failed or unattributed answers"));
    }
    if reasons.is_empty() {
        reasons.push("no variant was sent".to_string());
    }
    format!("routing: FAIL: {}", reasons.join("; "))
}
