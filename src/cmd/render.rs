//! `cdcheck render`: print an environment's bundle as multi-document YAML for `kubectl apply -f -`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use cdcheck::manifests::{
    self, FeatureBranch, Options, RbacMode, SessionId, Strategy, TlsSource, tls,
};

/// The rendering's defaults, stated once in [`Options`]; the flags show them.
fn defaults() -> Options {
    Options::default()
}

/// `--strategy`: the command-line spelling of [`Strategy`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum StrategyArg {
    /// RollingUpdate with maxUnavailable 0 and maxSurge 1.
    Rolling,
    /// Kill every pod, then start the new ones (downtime by design: a negative control).
    Recreate,
    /// A Deployment per release (`<svc>-<release>`); the Service's selector moves to it.
    Bluegreen,
}

impl From<StrategyArg> for Strategy {
    fn from(arg: StrategyArg) -> Self {
        match arg {
            StrategyArg::Rolling => Strategy::Rolling,
            StrategyArg::Recreate => Strategy::Recreate,
            StrategyArg::Bluegreen => Strategy::Bluegreen,
        }
    }
}

impl From<Strategy> for StrategyArg {
    fn from(strategy: Strategy) -> Self {
        match strategy {
            Strategy::Rolling => StrategyArg::Rolling,
            Strategy::Recreate => StrategyArg::Recreate,
            Strategy::Bluegreen => StrategyArg::Bluegreen,
        }
    }
}

/// `--rbac`: the command-line spelling of [`RbacMode`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum RbacArg {
    /// The pipeline's Role: every verb on every resource, in its own namespace only.
    Full,
    /// Exactly the resources and verbs the pipeline uses.
    Least,
}

impl From<RbacArg> for RbacMode {
    fn from(arg: RbacArg) -> Self {
        match arg {
            RbacArg::Full => RbacMode::Full,
            RbacArg::Least => RbacMode::Least,
        }
    }
}

impl From<RbacMode> for RbacArg {
    fn from(mode: RbacMode) -> Self {
        match mode {
            RbacMode::Full => RbacArg::Full,
            RbacMode::Least => RbacArg::Least,
        }
    }
}

#[derive(clap::Args, Debug)]
#[command(
    after_help = "Example:\n  cdcheck render --env dev --feature frontend=0.10.6-myfeature \
--session 3f1c2a9e-0d1b-4c55-9a37-1b2c3d4e5f60 | kubectl apply -f -"
)]
pub struct Args {
    /// Environment name: the namespace, and the prefix of its deployer (`<env>-deployer`).
    #[arg(long, default_value_t = defaults().env)]
    pub env: String,

    /// Release id: the mainline image tag, and the suffix of blue/green Deployments.
    #[arg(long, default_value_t = defaults().release)]
    pub release: String,

    /// Deploy a feature branch beside mainline: SERVICE=TAG, e.g. frontend=0.10.6-myfeature.
    /// The tag's pre-release (`-myfeature`) suffixes the Deployment, its labels and Service. Repeatable.
    #[arg(long = "feature", value_name = "SERVICE=TAG")]
    pub features: Vec<String>,

    /// How a new release replaces the running one: rolling (maxUnavailable 0, maxSurge 1),
    /// recreate, or bluegreen (a Deployment per release; the Service's selector switches).
    #[arg(long, value_enum, default_value_t = defaults().strategy.into())]
    pub strategy: StrategyArg,

    /// Replicas of each of the 10 stateless services (redis-cart keeps 1, loadgenerator 1).
    #[arg(long, default_value_t = defaults().ha.replicas)]
    pub replicas: i32,

    /// Topology key of the preferred pod anti-affinity on `app`.
    #[arg(long, default_value_t = defaults().ha.topology_key)]
    pub topology_key: String,

    /// PEM certificate chain for the ingress (with --tls-key); default: self-signed.
    #[arg(long, requires = "tls_key", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert; it must match the certificate.
    #[arg(long, requires = "tls_cert", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,

    /// Ingress host name served by the Gateway and the frontend VirtualService; the
    /// self-signed certificate is made for it. Default: `<env>.boutique.test`, or the
    /// first DNS name of --tls-cert.
    #[arg(long, value_name = "HOST")]
    pub tls_host: Option<String>,

    /// Route a test session to the feature branches: its `shop_session-id` cookie to
    /// frontend's branch, its `userid` gRPC metadata to adservice's. Repeatable.
    #[arg(long = "session", value_name = "ID")]
    pub sessions: Vec<String>,

    /// The deployer's Role: full (all verbs in its namespace, as the pipeline ships)
    /// or least (exactly the resources and verbs the pipeline uses).
    #[arg(long, value_enum, default_value_t = defaults().rbac.into())]
    pub rbac: RbacArg,

    /// Leave out the loadgenerator.
    #[arg(long)]
    pub no_loadgenerator: bool,
}

impl Args {
    /// The options these arguments describe, every value checked.
    pub fn options(&self) -> anyhow::Result<Options> {
        let mut options = Options::for_env(&self.env);
        options.release = self.release.clone();
        options.strategy = self.strategy.into();
        options.ha.replicas = self.replicas;
        options.ha.topology_key = self.topology_key.clone();
        options.rbac = self.rbac.into();
        if self.no_loadgenerator {
            options.loadgenerator = false;
        }
        for feature in &self.features {
            options.features.push(FeatureBranch::parse(feature)?);
        }
        for session in &self.sessions {
            options.sessions.push(SessionId::parse(session)?);
        }
        options.host = self.tls_host.clone();
        if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
            // Read once here: rendering checks this very content and does no I/O.
            let pem = tls::PemPair {
                cert_pem: std::fs::read_to_string(cert)
                    .with_context(|| format!("read certificate file {}", cert.display()))?,
                key_pem: std::fs::read_to_string(key)
                    .with_context(|| format!("read private key file {}", key.display()))?,
            };
            if options.host.is_none() {
                let names = tls::certificate_dns_names(&pem.cert_pem, cert)?;
                options.host = names.into_iter().find(|n| !n.starts_with("*."));
            }
            options.tls = TlsSource::Files {
                cert: cert.clone(),
                key: key.clone(),
                pem,
            };
        }
        Ok(options)
    }
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let options = args.options()?;
    // Render everything before writing anything: bad input prints nothing to stdout.
    let bundle = manifests::render(&options).context("render the bundle")?;
    let yaml = bundle.to_yaml()?;
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(yaml.as_bytes())?;
    stdout.flush()?;
    // On stderr so that `| kubectl apply -f -` still gets pure YAML.
    for (service, reason) in cdcheck::catalog::known_single_points_of_failure() {
        eprintln!("note: {service} is a known single point of failure ({reason})");
    }
    Ok(ExitCode::SUCCESS)
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
    fn no_flag_means_the_options_defaults() {
        let cli = Cli::try_parse_from(["render"]).unwrap();
        assert_eq!(cli.args.options().unwrap(), Options::default());
    }

    #[test]
    fn each_flag_changes_its_option() {
        let cli = Cli::try_parse_from([
            "render",
            "--strategy",
            "recreate",
            "--rbac",
            "least",
            "--replicas",
            "3",
            "--no-loadgenerator",
        ])
        .unwrap();
        let options = cli.args.options().unwrap();
        assert_eq!(options.strategy, Strategy::Recreate);
        assert_eq!(options.rbac, RbacMode::Least);
        assert_eq!(options.ha.replicas, 3);
        assert!(!options.loadgenerator);
    }
}
