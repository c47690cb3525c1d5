//! `cdcheck probe http|grpc|tls`: one health or TLS probe, printed as text or JSON.

use std::process::ExitCode;

use anyhow::Context;
use cdcheck::traffic::parse_duration;
use cdcheck::traffic::probe;
use cdcheck::traffic::target::{HttpTarget, TlsOptions};

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
    /// Accept any server certificate.
    #[arg(long)]
    pub insecure: bool,
    /// Trust only the certificates in this PEM file.
    #[arg(long, value_name = "PEM")]
    pub cacert: Option<String>,
    /// Give up after this long.
    #[arg(long, default_value = "5s")]
    pub timeout: String,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args, Debug)]
pub struct GrpcArgs {
    /// `http://host:port`.
    pub endpoint: String,
    /// Service name to check (empty: the whole server).
    #[arg(long, default_value = "")]
    pub service: String,
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
    target.tls = TlsOptions {
        insecure: args.insecure,
        ca_pem: match &args.cacert {
            Some(path) => Some(
                std::fs::read(path).with_context(|| format!("read certificate file `{path}`"))?,
            ),
            None => None,
        },
    };
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
    let report = probe::grpc_health(&args.endpoint, &args.service, timeout).await?;
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
