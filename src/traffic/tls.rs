//! TLS trust for every transport: the rustls client configuration (`--insecure`,
//! `--cacert` or the platform's store) and the verifier that records any chain.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use super::TrafficError;

/// The process's default crypto provider, else aws-lc-rs.
pub(crate) fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
}

/// How to trust an HTTPS (or gRPC over TLS) server.
#[derive(Clone, Debug, Default)]
pub struct TlsOptions {
    /// Accept any certificate (`--insecure`).
    pub insecure: bool,
    /// Trust only these PEM certificates (`--cacert`).
    pub ca_pem: Option<Vec<u8>>,
}

impl TlsOptions {
    /// A rustls client configuration offering `alpn`: any certificate with `insecure`, only
    /// `ca_pem`'s certificates when given, else the platform's trust store.
    pub fn client_config(&self, alpn: &[&[u8]]) -> Result<rustls::ClientConfig, TrafficError> {
        let provider = crypto_provider();
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|source| TrafficError::BuildTls { source })?;
        let mut config = if self.insecure {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(RecordingVerifier { provider }))
                .with_no_client_auth()
        } else if let Some(pem) = &self.ca_pem {
            let invalid = |reason: String| TrafficError::InvalidCertificate {
                what: "the --cacert file".to_string(),
                reason,
            };
            let mut roots = rustls::RootCertStore::empty();
            for cert in rustls_pemfile::certs(&mut std::io::BufReader::new(pem.as_slice())) {
                let cert = cert.map_err(|e| invalid(e.to_string()))?;
                roots.add(cert).map_err(|e| invalid(e.to_string()))?;
            }
            if roots.is_empty() {
                return Err(invalid("no CERTIFICATE block".to_string()));
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        } else {
            use rustls_platform_verifier::BuilderVerifierExt;
            builder
                .with_platform_verifier()
                .map_err(|source| TrafficError::BuildTls { source })?
                .with_no_client_auth()
        };
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(config)
    }
}

/// Accepts any chain so that the probe can report what was served; trust is decided
/// by comparing with the expected certificate, not by the handshake.
#[derive(Debug)]
pub(crate) struct RecordingVerifier {
    pub(crate) provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for RecordingVerifier {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
