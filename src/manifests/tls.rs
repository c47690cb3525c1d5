//! The ingress certificate: a user's PEM pair, checked, or a self-signed one, as a `kubernetes.io/tls` Secret.
//!
//! The Secret lives in `istio-system`, the ingress gateway's namespace, where
//! the Gateway's `credentialName` finds it. Its contents are never logged.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::{Object, Options, TlsSource};
use crate::names::ISTIO_NAMESPACE;

/// The Secret the Gateway's `credentialName` names.
pub const INGRESS_CERT_SECRET: &str = "cdcheck-ingress-cert";
/// Self-signed certificates also cover every default environment host, so that
/// environments sharing the gateway keep serving a matching certificate.
pub const DEFAULT_DOMAIN_WILDCARD: &str = "*.boutique.test";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("find a PEM certificate in {path}")]
    NoCertificate { path: PathBuf },
    #[error("find a PEM private key in {path}")]
    NoKey { path: PathBuf },
    #[error("parse the certificate in {path}: {reason}")]
    BadCertificate { path: PathBuf, reason: String },
    #[error("use the private key in {path}: {reason}")]
    BadKey { path: PathBuf, reason: String },
    #[error(
        "pair key {key} with certificate {cert}: the key does not match the certificate's public key"
    )]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error("serve host {host:?} with certificate {path}: its names are {names:?}")]
    HostNotCovered {
        host: String,
        path: PathBuf,
        names: Vec<String>,
    },
    #[error("use certificate {path}: it expired at {not_after}")]
    Expired { path: PathBuf, not_after: String },
    #[error("generate a self-signed certificate for {host:?}")]
    Generate {
        host: String,
        #[source]
        source: rcgen::Error,
    },
}

/// A PEM certificate chain and its private key.
#[derive(Clone, PartialEq, Eq)]
pub struct PemPair {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for PemPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PemPair")
            .field("cert_pem", &format_args!("{} bytes", self.cert_pem.len()))
            .field("key_pem", &"[redacted]")
            .finish()
    }
}

/// DNS names a certificate covers (its SANs, or its CN when it has none).
pub fn certificate_dns_names(cert_pem: &str, path: &Path) -> Result<Vec<String>, TlsError> {
    let der = first_certificate_der(cert_pem, path)?;
    let (_, cert) =
        x509_parser::parse_x509_certificate(&der).map_err(|e| TlsError::BadCertificate {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    Ok(dns_names(&cert))
}

/// The names a certificate's subjectAltName lists: its DNS names, and its IP addresses when
/// asked, in the certificate's order.
pub fn subject_alt_names(
    cert: &x509_parser::certificate::X509Certificate<'_>,
    with_ips: bool,
) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::DNSName(dns) => Some(dns.to_string()),
            GeneralName::IPAddress(bytes) if with_ips => Some(ip_to_string(bytes)),
            _ => None,
        })
        .collect()
}

/// The DNS names a certificate covers: its SANs, or its CN when it has none (as clients
/// that still read the CN fall back to it).
pub fn dns_names(cert: &x509_parser::certificate::X509Certificate<'_>) -> Vec<String> {
    let names = subject_alt_names(cert, false);
    if !names.is_empty() {
        return names;
    }
    cert.subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok().map(str::to_string))
        .collect()
}

fn ip_to_string(bytes: &[u8]) -> String {
    match bytes.len() {
        4 => std::net::Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]).to_string(),
        16 => {
            let mut octets = [0u8; 16];
            octets.copy_from_slice(bytes);
            std::net::Ipv6Addr::from(octets).to_string()
        }
        _ => format!("{bytes:?}"),
    }
}

/// Whether a certificate name (possibly `*.` wildcard) covers a host.
pub fn name_covers_host(name: &str, host: &str) -> bool {
    let name = name.to_ascii_lowercase();
    let host = host.to_ascii_lowercase();
    match name.strip_prefix("*.") {
        Some(domain) => host
            .split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && rest == domain),
        None => name == host,
    }
}

fn first_certificate_der(cert_pem: &str, path: &Path) -> Result<Vec<u8>, TlsError> {
    let mut reader = cert_pem.as_bytes();
    match rustls_pemfile::certs(&mut reader).next() {
        Some(Ok(der)) => Ok(der.to_vec()),
        Some(Err(e)) => Err(TlsError::BadCertificate {
            path: path.to_path_buf(),
            reason: e.to_string(),
        }),
        None => Err(TlsError::NoCertificate {
            path: path.to_path_buf(),
        }),
    }
}

/// Checks a user's PEM pair (read from `cert` and `key`, which name it in errors):
/// a certificate and a key are present, the key is the certificate's, the
/// certificate has not expired and covers `host`.
pub fn check_pair(pem: &PemPair, cert: &Path, key: &Path, host: &str) -> Result<(), TlsError> {
    let PemPair { cert_pem, key_pem } = pem;
    let cert_der = first_certificate_der(cert_pem, cert)?;
    let (_, parsed) =
        x509_parser::parse_x509_certificate(&cert_der).map_err(|e| TlsError::BadCertificate {
            path: cert.to_path_buf(),
            reason: e.to_string(),
        })?;
    let key_der = rustls_pemfile::private_key(&mut key_pem.as_bytes())
        .map_err(|e| TlsError::BadKey {
            path: key.to_path_buf(),
            reason: e.to_string(),
        })?
        .ok_or_else(|| TlsError::NoKey {
            path: key.to_path_buf(),
        })?;
    let signing_key =
        rustls::crypto::aws_lc_rs::sign::any_supported_type(&key_der).map_err(|e| {
            TlsError::BadKey {
                path: key.to_path_buf(),
                reason: e.to_string(),
            }
        })?;
    let key_spki = signing_key.public_key().ok_or_else(|| TlsError::BadKey {
        path: key.to_path_buf(),
        reason: "its public key cannot be derived".to_string(),
    })?;
    if key_spki.as_ref() != parsed.tbs_certificate.subject_pki.raw {
        return Err(TlsError::KeyMismatch {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
        });
    }
    if !parsed.validity().is_valid() && parsed.validity().time_to_expiration().is_none() {
        return Err(TlsError::Expired {
            path: cert.to_path_buf(),
            not_after: parsed.validity().not_after.to_string(),
        });
    }
    let names = certificate_dns_names(cert_pem, cert)?;
    if !names.iter().any(|n| name_covers_host(n, host)) {
        return Err(TlsError::HostNotCovered {
            host: host.to_string(),
            path: cert.to_path_buf(),
            names,
        });
    }
    Ok(())
}

/// The certificate a Secret gives Istio's gateway, read as Istio reads it (pilot's
/// `extractKeyAndCert`): a non-empty `cert` and `key` (a generic Secret) first, else a
/// non-empty `tls.crt` and `tls.key`, whatever the Secret's type. `stringData` (as written
/// in manifests) counts as `data`. `Err` says what the Secret lacks.
pub fn gateway_certificate(secret: &Secret) -> Result<Vec<u8>, String> {
    let value = |key: &str| -> Option<Vec<u8>> {
        let from_data = secret
            .data
            .as_ref()
            .and_then(|d| d.get(key))
            .map(|b| b.0.clone());
        let from_string_data = || {
            secret
                .string_data
                .as_ref()
                .and_then(|d| d.get(key))
                .map(|s| s.clone().into_bytes())
        };
        from_data
            .or_else(from_string_data)
            .filter(|v| !v.is_empty())
    };
    for (cert, key) in [("cert", "key"), ("tls.crt", "tls.key")] {
        if let (Some(certificate), Some(_)) = (value(cert), value(key)) {
            return Ok(certificate);
        }
    }
    let mut keys: Vec<&String> = secret
        .data
        .iter()
        .flat_map(|d| d.keys())
        .chain(secret.string_data.iter().flat_map(|d| d.keys()))
        .collect();
    keys.sort();
    keys.dedup();
    Err(format!(
        "has neither a non-empty cert and key nor a non-empty tls.crt and tls.key, which is \
         what Istio's gateway reads (its keys: {})",
        if keys.is_empty() {
            "none".to_string()
        } else {
            keys.iter()
                .map(|k| k.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        }
    ))
}

/// A self-signed certificate for `host`, valid from an hour ago for 90 days.
pub fn self_signed(host: &str) -> Result<PemPair, TlsError> {
    let generate = |source| TlsError::Generate {
        host: host.to_string(),
        source,
    };
    let mut names = vec![host.to_string()];
    if name_covers_host(DEFAULT_DOMAIN_WILDCARD, host) {
        names.push(DEFAULT_DOMAIN_WILDCARD.to_string());
    }
    let mut params = rcgen::CertificateParams::new(names).map_err(generate)?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, host);
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "cdcheck");
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(90);
    let key = rcgen::KeyPair::generate().map_err(generate)?;
    let cert = params.self_signed(&key).map_err(generate)?;
    Ok(PemPair {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// The PEM pair the options ask for.
pub fn pair_for(options: &Options) -> Result<PemPair, TlsError> {
    let host = options.ingress_host();
    match &options.tls {
        TlsSource::Files { cert, key, pem } => {
            check_pair(pem, cert, key, &host)?;
            Ok(pem.clone())
        }
        TlsSource::SelfSigned => self_signed(&host),
    }
}

/// The `kubernetes.io/tls` Secret holding a PEM pair.
pub fn secret(pair: &PemPair, options: &Options) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(INGRESS_CERT_SECRET.to_string()),
            namespace: Some(ISTIO_NAMESPACE.to_string()),
            labels: Some(super::environment::managed_labels(options)),
            ..ObjectMeta::default()
        },
        type_: Some("kubernetes.io/tls".to_string()),
        data: Some(BTreeMap::from([
            (
                "tls.crt".to_string(),
                ByteString(pair.cert_pem.clone().into_bytes()),
            ),
            (
                "tls.key".to_string(),
                ByteString(pair.key_pem.clone().into_bytes()),
            ),
        ])),
        ..Secret::default()
    }
}

pub fn render_secret(options: &Options) -> Result<Vec<Object>, super::ManifestError> {
    let pair = pair_for(options)?;
    Ok(vec![Object::Secret(secret(&pair, options))])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_data_counts_and_empty_values_do_not() {
        let secret = |data: &[(&str, &str)], string_data: &[(&str, &str)]| Secret {
            data: Some(
                data.iter()
                    .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
                    .collect(),
            ),
            string_data: Some(
                string_data
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..Default::default()
        };
        // As a manifest writes it: `stringData`.
        assert_eq!(
            gateway_certificate(&secret(&[], &[("tls.crt", "C"), ("tls.key", "K")])),
            Ok(b"C".to_vec())
        );
        // Istio prefers the generic pair when both are there.
        assert_eq!(
            gateway_certificate(&secret(
                &[
                    ("cert", "G"),
                    ("key", "K"),
                    ("tls.crt", "T"),
                    ("tls.key", "K")
                ],
                &[]
            )),
            Ok(b"G".to_vec())
        );
        // An empty cert is no cert: the TLS pair is read instead.
        assert_eq!(
            gateway_certificate(&secret(
                &[
                    ("cert", ""),
                    ("key", "K"),
                    ("tls.crt", "T"),
                    ("tls.key", "K")
                ],
                &[]
            )),
            Ok(b"T".to_vec())
        );
        let why =
            gateway_certificate(&secret(&[("tls.crt", "T"), ("tls.key", "")], &[])).unwrap_err();
        assert!(why.ends_with("(its keys: tls.crt, tls.key)"), "{why}");
    }
}
