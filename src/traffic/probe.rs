//! Probes: HTTP health (`/_healthz` with the probe cookie), gRPC health `Check`, and TLS.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::{CertificateDer, ServerName};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::TrafficError;
use super::caller::Caller;
use super::classify::classify_error;
use super::record::{ErrorClass, Outcome};
use super::target::{GrpcMethod, GrpcTarget, HttpTarget, Target};
use super::tls::{RecordingVerifier, crypto_provider};
use crate::manifests::tls::name_covers_host;

/// The cookie the pipeline's readiness probes send, so that the frontend does not
/// mint a session for them.
pub const PROBE_COOKIE: &str = "shop_session-id=x-readiness-probe";

/// What an HTTP health probe saw.
#[derive(Clone, Debug, Serialize)]
pub struct HttpProbeReport {
    pub url: String,
    pub outcome: Outcome,
    /// The start of the body (at most 256 bytes), when there was an answer.
    pub body: Option<String>,
    pub latency_us: u64,
    /// A 2xx answer.
    pub healthy: bool,
}

/// GETs `target` (e.g. `http://frontend/_healthz`) once, with [`PROBE_COOKIE`] unless
/// the target already carries a cookie.
pub async fn http_health(target: &HttpTarget) -> Result<HttpProbeReport, TrafficError> {
    let mut target = target.clone();
    if !target.headers.contains_key(http::header::COOKIE) {
        target = target.with_cookie(PROBE_COOKIE)?;
    }
    let mut builder = reqwest::Client::builder()
        .no_proxy()
        .timeout(target.timeout)
        .redirect(reqwest::redirect::Policy::none());
    if target.tls.insecure {
        builder = builder.tls_danger_accept_invalid_certs(true);
    }
    if let Some(pem) = &target.tls.ca_pem {
        let certs = reqwest::Certificate::from_pem_bundle(pem)
            .map_err(|source| TrafficError::BuildClient { source })?;
        builder = builder.tls_certs_only(certs);
    }
    for (host, addr) in &target.resolve {
        builder = builder.resolve(host, *addr);
    }
    let client = builder
        .build()
        .map_err(|source| TrafficError::BuildClient { source })?;
    let started = Instant::now();
    let answer = async {
        let response = client
            .request(target.method.clone(), target.url.clone())
            .headers(target.headers.clone())
            .send()
            .await?;
        let status = response.status().as_u16();
        let body = response.bytes().await?;
        Ok::<_, reqwest::Error>((status, body))
    }
    .await;
    let latency_us = started.elapsed().as_micros() as u64;
    Ok(match answer {
        Ok((status, body)) => {
            let text = String::from_utf8_lossy(&body[..body.len().min(256)]).into_owned();
            HttpProbeReport {
                url: target.url.to_string(),
                outcome: Outcome::Http { status },
                body: Some(text),
                latency_us,
                healthy: (200..300).contains(&status),
            }
        }
        Err(error) => HttpProbeReport {
            url: target.url.to_string(),
            outcome: Outcome::Transport {
                class: classify_error(&error),
            },
            body: None,
            latency_us,
            healthy: false,
        },
    })
}

/// What a gRPC health probe saw.
#[derive(Clone, Debug, Serialize)]
pub struct GrpcProbeReport {
    pub endpoint: String,
    pub service: String,
    pub outcome: Outcome,
    /// `SERVING`, `NOT_SERVING`, `UNKNOWN` or `SERVICE_UNKNOWN`, when the server answered.
    pub serving_status: Option<String>,
    pub latency_us: u64,
    /// The server answered `SERVING`.
    pub healthy: bool,
}

/// Calls `grpc.health.v1.Health/Check` once, for the service `target`'s method names (its
/// endpoint, timeout, TLS and metadata as given).
pub async fn grpc_health(target: &GrpcTarget) -> Result<GrpcProbeReport, TrafficError> {
    let GrpcMethod::HealthCheck { service } = &target.method else {
        return Err(TrafficError::InvalidGrpcMethod {
            value: format!("{:?}", target.method),
            supported: "grpc.health.v1.Health/Check",
        });
    };
    let service = service.clone();
    let endpoint = target.endpoint.clone();
    let target = target.clone();
    let caller = Caller::new(&Target::Grpc(target))?;
    // The health check's serving status travels as the body text of the call.
    let rule = super::attribution::AttributionRule::body_regex(r"^([A-Z_]+)$")?;
    let started = Instant::now();
    let result = caller.call(uuid::Uuid::new_v4(), Some(&rule)).await;
    let latency_us = started.elapsed().as_micros() as u64;
    let healthy = result.outcome.is_success() && result.label.as_deref() == Some("SERVING");
    Ok(GrpcProbeReport {
        endpoint,
        service,
        outcome: result.outcome,
        serving_status: result.label.filter(|_| result.outcome.is_success()),
        latency_us,
        healthy,
    })
}

/// One certificate of the chain a server presented.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CertificateInfo {
    pub subject: String,
    pub issuer: String,
    /// DNS names and IP addresses of the subjectAltName extension.
    pub sans: Vec<String>,
    /// RFC 2822.
    pub not_after: String,
    /// Whether the certificate was outside its validity period when it was served.
    pub expired: bool,
    /// Lowercase hex SHA-256 of the DER encoding.
    pub sha256: String,
}

impl CertificateInfo {
    /// Describes a DER certificate; `None` if it does not parse.
    pub fn from_der(der: &[u8]) -> Option<Self> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let sans = crate::manifests::tls::subject_alt_names(&cert, true);
        Some(Self {
            subject: cert.subject().to_string(),
            issuer: cert.issuer().to_string(),
            sans,
            not_after: cert
                .validity()
                .not_after
                .to_rfc2822()
                .unwrap_or_else(|_| cert.validity().not_after.to_string()),
            expired: !cert.validity().is_valid(),
            sha256: sha256_hex(der),
        })
    }
}

/// Lowercase hex SHA-256.
pub fn sha256_hex(der: &[u8]) -> String {
    Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// What a TLS handshake showed.
#[derive(Clone, Debug, Serialize)]
pub struct TlsProbeReport {
    pub address: String,
    pub server_name: String,
    /// `TLSv1_3`, `TLSv1_2`, when the handshake completed.
    pub protocol_version: Option<String>,
    pub alpn: Option<String>,
    /// The chain the server presented, leaf first.
    pub chain: Vec<CertificateInfo>,
    /// The handshake's failure class, when it failed.
    pub error: Option<ErrorClass>,
    pub error_message: Option<String>,
    /// Fingerprint of the expected leaf, when one was given.
    pub expected_sha256: Option<String>,
    /// Whether the served leaf is the expected certificate (when one was given).
    pub matches_expected: Option<bool>,
    /// Whether the expected name is among the leaf's SANs.
    pub name_in_sans: bool,
}

impl TlsProbeReport {
    /// Handshake completed, the name is covered, and the leaf is the expected one if given.
    pub fn passed(&self) -> bool {
        self.error.is_none() && self.name_in_sans && self.matches_expected != Some(false)
    }
}

/// Parses the first certificate of a PEM text (the expected leaf).
pub fn leaf_from_pem(pem: &[u8], what: &str) -> Result<CertificateDer<'static>, TrafficError> {
    let mut reader = std::io::BufReader::new(pem);
    match rustls_pemfile::certs(&mut reader).next() {
        Some(Ok(cert)) => Ok(cert),
        Some(Err(error)) => Err(TrafficError::InvalidCertificate {
            what: what.to_string(),
            reason: error.to_string(),
        }),
        None => Err(TrafficError::InvalidCertificate {
            what: what.to_string(),
            reason: "no CERTIFICATE block".to_string(),
        }),
    }
}

/// Handshakes with `address` (`host:port`) using `server_name` as SNI, offering
/// `alpn`, and reports what the server presented. The chain is recorded whether or
/// not it is trusted; the comparison with `expected_pem` (a certificate) decides.
pub async fn tls(
    address: &str,
    server_name: &str,
    alpn: &[&str],
    expected_pem: Option<&[u8]>,
    timeout: Duration,
) -> Result<TlsProbeReport, TrafficError> {
    let name = ServerName::try_from(server_name.to_string()).map_err(|source| {
        TrafficError::InvalidServerName {
            value: server_name.to_string(),
            source,
        }
    })?;
    let expected = expected_pem
        .map(|pem| leaf_from_pem(pem, "the expected certificate"))
        .transpose()?;
    let provider = crypto_provider();
    let recorder = Arc::new(RecordingVerifier {
        provider: provider.clone(),
    });
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|source| TrafficError::BuildTls { source })?
        .dangerous()
        .with_custom_certificate_verifier(recorder)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));

    let mut report = TlsProbeReport {
        address: address.to_string(),
        server_name: server_name.to_string(),
        protocol_version: None,
        alpn: None,
        chain: Vec::new(),
        error: None,
        error_message: None,
        expected_sha256: expected.as_ref().map(|c| sha256_hex(c)),
        matches_expected: None,
        name_in_sans: false,
    };
    let handshake = async {
        let tcp = tokio::net::TcpStream::connect(address).await?;
        connector.connect(name, tcp).await
    };
    let stream = match tokio::time::timeout(timeout, handshake).await {
        Err(_) => {
            report.error = Some(ErrorClass::Timeout);
            report.error_message = Some(format!("no handshake within {timeout:?}"));
            return Ok(report);
        }
        Ok(Err(error)) => {
            report.error = Some(match classify_error(&error) {
                ErrorClass::Other if error.kind() == std::io::ErrorKind::InvalidData => {
                    ErrorClass::Tls
                }
                class => class,
            });
            report.error_message = Some(error.to_string());
            return Ok(report);
        }
        Ok(Ok(stream)) => stream,
    };
    let (_, connection) = stream.get_ref();
    report.protocol_version = connection
        .protocol_version()
        .map(|v| v.as_str().unwrap_or("unknown").to_string());
    report.alpn = connection
        .alpn_protocol()
        .map(|p| String::from_utf8_lossy(p).into_owned());
    let chain = connection.peer_certificates().unwrap_or_default();
    report.chain = chain
        .iter()
        .filter_map(|c| CertificateInfo::from_der(c))
        .collect();
    if let Some(leaf) = report.chain.first() {
        report.name_in_sans = leaf
            .sans
            .iter()
            .any(|san| name_covers_host(san, server_name));
    }
    if let Some(expected) = &expected {
        report.matches_expected =
            Some(chain.first().map(|c| c.as_ref()) == Some(expected.as_ref()));
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_sans_cover_one_label_only() {
        assert!(name_covers_host("shop.example.test", "SHOP.example.test"));
        assert!(name_covers_host("*.example.test", "shop.example.test"));
        assert!(!name_covers_host("*.example.test", "a.shop.example.test"));
        assert!(!name_covers_host("*.example.test", "example.test"));
    }

    #[test]
    fn certificate_info_reports_sans_and_fingerprint() {
        let cert = rcgen::generate_simple_self_signed(vec![
            "shop.example.test".to_string(),
            "127.0.0.1".to_string(),
        ])
        .unwrap();
        let der = cert.cert.der().to_vec();
        let info = CertificateInfo::from_der(&der).unwrap();
        assert_eq!(info.sans, vec!["shop.example.test", "127.0.0.1"]);
        assert_eq!(info.sha256.len(), 64);
        assert_eq!(info.sha256, sha256_hex(&der));
    }

    #[test]
    fn an_expected_certificate_without_pem_block_is_refused_naming_it() {
        let error = leaf_from_pem(b"garbage", "expected.pem").unwrap_err();
        assert!(error.to_string().contains("expected.pem"), "{error}");
    }
}
