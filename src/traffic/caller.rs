//! Sending one request: a [`Caller`] holds a transport bound to one target and turns every
//! answer or failure into a [`CallResult`].

use std::sync::Arc;
use std::time::Duration;

use super::TrafficError;
use super::attribution::AttributionRule;
use super::target::Target;
use super::transport::{
    direct_grpc::DirectGrpc, direct_http::DirectHttp, pooled_grpc, pooled_http,
};

pub use super::transport::CallResult;

/// A connection pool (HTTP client or gRPC channel) bound to one target. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Caller {
    inner: Arc<CallerInner>,
}

#[derive(Debug)]
enum CallerInner {
    Http {
        client: reqwest::Client,
        target: super::target::HttpTarget,
    },
    Grpc {
        channel: tonic::transport::Channel,
        target: super::target::GrpcTarget,
    },
    Direct {
        connection: Box<DirectHttp>,
        timeout: Duration,
    },
    DirectGrpc {
        connection: Box<DirectGrpc>,
        timeout: Duration,
    },
}

impl Caller {
    /// A pool that opens connections as needed.
    pub fn new(target: &Target) -> Result<Self, TrafficError> {
        Self::build(target, None)
    }

    /// One connection (closed-loop workers), driven directly with hyper (HTTP/1.1, HTTP/2,
    /// and gRPC over HTTP/2) rather than through a pool or a buffered channel.
    pub fn single_connection(target: &Target) -> Result<Self, TrafficError> {
        if let Target::Http(http) = target
            && let Some(connection) = DirectHttp::new(http)
        {
            return Ok(Self {
                inner: Arc::new(CallerInner::Direct {
                    connection: Box::new(connection),
                    timeout: http.timeout,
                }),
            });
        }
        if let Target::Grpc(grpc) = target
            && let Some(connection) = DirectGrpc::new(grpc)
        {
            return Ok(Self {
                inner: Arc::new(CallerInner::DirectGrpc {
                    connection: Box::new(connection),
                    timeout: grpc.timeout,
                }),
            });
        }
        Self::build(target, Some(1))
    }

    fn build(target: &Target, pool: Option<usize>) -> Result<Self, TrafficError> {
        let inner = match target {
            Target::Http(t) => CallerInner::Http {
                client: pooled_http::client(t, pool)?,
                target: t.clone(),
            },
            Target::Grpc(t) => CallerInner::Grpc {
                channel: pooled_grpc::channel(t)?,
                target: t.clone(),
            },
        };
        Ok(Self {
            inner: Arc::new(inner),
        })
    }

    /// Sends one request with `request_id` and classifies what came back. Never fails:
    /// every network failure is an [`Outcome::Transport`].
    pub async fn call(&self, request_id: uuid::Uuid, rule: Option<&AttributionRule>) -> CallResult {
        let timeout = match &*self.inner {
            CallerInner::Http { target, .. } => target.timeout,
            CallerInner::Grpc { target, .. } => target.timeout,
            CallerInner::Direct { timeout, .. } => *timeout,
            CallerInner::DirectGrpc { timeout, .. } => *timeout,
        };
        let call = async {
            match &*self.inner {
                CallerInner::Http { client, target } => {
                    pooled_http::http_call(client, target, request_id, rule).await
                }
                CallerInner::Grpc { channel, target } => {
                    pooled_grpc::grpc_call(channel.clone(), None, target, request_id, rule).await
                }
                CallerInner::DirectGrpc { connection, .. } => {
                    connection.call(request_id, rule).await
                }
                CallerInner::Direct { connection, .. } => connection.call(request_id, rule).await,
            }
        };
        match tokio::time::timeout(timeout, call).await {
            Ok(result) => result,
            Err(_) => CallResult::timeout(),
        }
    }
}
