//! The four ways a request goes out: pooled HTTP (reqwest) and pooled gRPC (a tonic channel)
//! for probes and open-loop load, and one directly driven connection of each kind for
//! closed-loop workers. Each returns a [`CallResult`]; none returns an error.

pub(crate) mod direct_grpc;
pub(crate) mod direct_http;
pub(crate) mod pooled_grpc;
pub(crate) mod pooled_http;

use super::record::{ErrorClass, Outcome};

/// The outcome of one call and, when a rule was given and matched, its label.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallResult {
    pub outcome: Outcome,
    pub label: Option<String>,
}

impl CallResult {
    /// A timeout outcome, for the caller's deadline.
    pub(crate) fn timeout() -> Self {
        Self {
            outcome: Outcome::Transport {
                class: ErrorClass::Timeout,
            },
            label: None,
        }
    }
}

/// A plain or TLS stream, so one connection type serves `http://` and `https://`.
pub(crate) trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> Io for T {}
