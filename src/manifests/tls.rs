//! The ingress certificate: a user's PEM pair, checked, or a self-signed one, as a `kubernetes.io/tls` Secret.

use super::{Object, Options};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("read certificate")]
    Todo,
}

pub fn render_secret(_options: &Options) -> Result<Vec<Object>, super::ManifestError> {
    todo!("tls")
}
