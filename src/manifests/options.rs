//! The pipeline's options, each typed, each defaulting to the pipeline DESIGN.md describes.

use std::path::PathBuf;

use super::ManifestError;
use super::feature::FeatureBranch;
use super::routing::SessionId;
use super::tls::PemPair;
use crate::versions;

/// How a new release replaces the running one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Strategy {
    /// RollingUpdate with maxUnavailable 0 and maxSurge 1.
    #[default]
    Rolling,
    /// Kill every pod, then start the new ones (downtime by design: a negative control).
    Recreate,
    /// A Deployment per release (`<svc>-<release>`); the Service's selector moves to it.
    Bluegreen,
}

/// Which Role the environment's deployer gets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RbacMode {
    /// The pipeline's Role: every verb on every resource, in its own namespace only.
    #[default]
    Full,
    /// Exactly the resources and verbs the pipeline uses.
    Least,
}

/// Where the ingress certificate comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TlsSource {
    /// A PEM certificate chain and private key the user gives, read once by the
    /// caller (rendering does no I/O); the paths only name the files in messages.
    Files {
        cert: PathBuf,
        key: PathBuf,
        pem: PemPair,
    },
    /// A self-signed certificate generated for the ingress host.
    SelfSigned,
}

/// High-availability settings of the stateless services.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HaOptions {
    pub replicas: i32,
    /// Topology key of the preferred pod anti-affinity on `app`.
    pub topology_key: String,
    /// `minAvailable` of each PodDisruptionBudget.
    pub pdb_min_available: i32,
    /// preStop sleep, so endpoints drop the pod before it stops serving.
    pub pre_stop_delay_seconds: i64,
}

impl Default for HaOptions {
    fn default() -> Self {
        Self {
            replicas: 2,
            topology_key: "kubernetes.io/hostname".to_string(),
            pdb_min_available: 1,
            pre_stop_delay_seconds: 10,
        }
    }
}

impl HaOptions {
    /// Long enough for the preStop drain plus the application's own shutdown.
    pub fn termination_grace_period_seconds(&self) -> i64 {
        self.pre_stop_delay_seconds + 20
    }
}

/// Everything a render of one environment depends on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// Environment name, also the namespace (`dev`, `test`).
    pub env: String,
    /// Release id: the mainline image tag, and the blue/green Deployment suffix.
    pub release: String,
    /// Feature branches deployed beside mainline.
    pub features: Vec<FeatureBranch>,
    pub strategy: Strategy,
    pub ha: HaOptions,
    pub rbac: RbacMode,
    pub tls: TlsSource,
    /// Ingress host name; defaults to `<env>.boutique.test`.
    pub host: Option<String>,
    /// Test sessions routed to the feature branches.
    pub sessions: Vec<SessionId>,
    /// Deploy the loadgenerator too (upstream does; it is never HA).
    pub loadgenerator: bool,
    /// Images a feature branch's pipeline built, by service (`cdcheck run --feature-image`):
    /// they replace the feature Deployments' images after rendering.
    pub feature_images: Vec<(String, String)>,
}

impl Default for Options {
    fn default() -> Self {
        Self::for_env("dev")
    }
}

impl Options {
    pub fn for_env(env: &str) -> Self {
        Self {
            env: env.to_string(),
            release: versions::ONLINE_BOUTIQUE.to_string(),
            features: Vec::new(),
            strategy: Strategy::default(),
            ha: HaOptions::default(),
            rbac: RbacMode::default(),
            tls: TlsSource::SelfSigned,
            host: None,
            sessions: Vec::new(),
            loadgenerator: true,
            feature_images: Vec::new(),
        }
    }

    /// The ingress host the Gateway, the VirtualService and the certificate serve.
    pub fn ingress_host(&self) -> String {
        self.host
            .clone()
            .unwrap_or_else(|| format!("{}.boutique.test", self.env))
    }

    /// The deployer's ServiceAccount, Role and RoleBinding name.
    pub fn deployer_name(&self) -> String {
        format!("{}-deployer", self.env)
    }

    pub fn validate(&self) -> Result<(), ManifestError> {
        if !is_dns_label(&self.env) {
            return Err(ManifestError::InvalidEnvironment {
                value: self.env.clone(),
            });
        }
        let release_ok = !self.release.is_empty()
            && self.release.len() <= 40
            && self
                .release
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
            && self.release.as_bytes()[0].is_ascii_alphanumeric()
            && self.release.as_bytes()[self.release.len() - 1].is_ascii_alphanumeric();
        if !release_ok {
            return Err(ManifestError::InvalidRelease {
                value: self.release.clone(),
            });
        }
        if self.ha.replicas < 1 {
            return Err(ManifestError::InvalidReplicas {
                value: self.ha.replicas,
            });
        }
        let host = self.ingress_host();
        if !host.split('.').all(is_dns_label) || host.len() > 253 {
            return Err(ManifestError::InvalidHost { value: host });
        }
        if let Some(session) = self.sessions.first() {
            let routable = self
                .features
                .iter()
                .any(|f| f.service == "frontend" || f.service == "adservice");
            if !routable {
                return Err(ManifestError::SessionWithoutFeature {
                    session: session.to_string(),
                });
            }
        }
        Ok(())
    }
}

/// RFC 1123 label: what a namespace or Service name must be.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}
