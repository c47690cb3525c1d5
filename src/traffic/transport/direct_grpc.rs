//! One unary-gRPC connection driven directly with the `h2` crate, for closed-loop workers;
//! it reconnects after a failure.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::FutureExt;
use rustls::pki_types::ServerName;

use super::{CallResult, Io};
use crate::traffic::attribution::{AttributionRule, ResponseView};
use crate::traffic::classify::classify_error;
use crate::traffic::record::Outcome;
use crate::traffic::target::{GrpcMethod, GrpcTarget, REQUEST_ID_HEADER};

type GrpcSender = h2::client::SendRequest<Bytes>;
type GrpcDriver = std::pin::Pin<Box<h2::client::Connection<Box<dyn Io>, Bytes>>>;

/// A single h2c connection to a gRPC target, opened on first use, speaking unary gRPC
/// itself: one HEADERS and one DATA frame out (length-prefixed protobuf, end of stream),
/// the answer's message and `grpc-status` (trailers, or headers when trailers-only) back.
/// It uses `h2` directly rather than hyper: hyper pipes a request body from a task of its
/// own, so HEADERS and DATA leave in two writes; queued together they leave in one.
pub(crate) struct DirectGrpc {
    target: GrpcTarget,
    uri: http::Uri,
    body: Bytes,
    /// Content type, `te: trailers` and the target's metadata, built once.
    headers: http::HeaderMap,
    host: String,
    port: u16,
    /// For `https://` endpoints: the connector (ALPN `h2`) and the server name.
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
    /// The connection is driven inside each call, like [`super::direct_http::DirectHttp`]'s HTTP/1.1.
    connection: Mutex<Option<(GrpcSender, GrpcDriver)>>,
}

impl std::fmt::Debug for DirectGrpc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectGrpc")
            .field("endpoint", &self.target.endpoint)
            .finish()
    }
}

/// A length-prefixed, uncompressed gRPC message.
fn grpc_frame(message: &impl prost::Message) -> Bytes {
    use bytes::BufMut;
    let mut frame = bytes::BytesMut::with_capacity(5 + message.encoded_len());
    frame.put_u8(0);
    frame.put_u32(message.encoded_len() as u32);
    message
        .encode(&mut frame)
        .expect("the buffer was sized for the message");
    frame.freeze()
}

/// The gRPC code a non-200 HTTP status stands for (the gRPC HTTP/2 mapping).
fn code_for_http_status(status: u16) -> i32 {
    match status {
        400 => 13,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502..=504 => 14,
        _ => 2,
    }
}

impl DirectGrpc {
    pub(crate) fn new(target: &GrpcTarget) -> Option<Self> {
        let url = url::Url::parse(&target.endpoint).ok()?;
        let (path, body) = match &target.method {
            GrpcMethod::HealthCheck { service } => (
                "/grpc.health.v1.Health/Check",
                grpc_frame(&tonic_health::pb::HealthCheckRequest {
                    service: service.clone(),
                }),
            ),
            GrpcMethod::GetAds { context_keys } => (
                "/hipstershop.AdService/GetAds",
                grpc_frame(&crate::traffic::grpc::AdRequest {
                    context_keys: context_keys.clone(),
                }),
            ),
        };
        let mut headers = http::HeaderMap::new();
        headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/grpc"),
        );
        headers.insert(http::header::TE, http::HeaderValue::from_static("trailers"));
        for (key, value) in &target.metadata {
            headers.append(
                http::HeaderName::from_bytes(key.as_str().as_bytes()).ok()?,
                http::HeaderValue::from_bytes(value.as_encoded_bytes()).ok()?,
            );
        }
        let host = url.host_str()?.trim_matches(['[', ']']).to_string();
        let tls = if target.is_tls() {
            Some((
                tokio_rustls::TlsConnector::from(Arc::new(
                    target.tls.client_config(&[b"h2"]).ok()?,
                )),
                ServerName::try_from(host.clone()).ok()?,
            ))
        } else {
            None
        };
        Some(Self {
            uri: format!("{}{path}", target.endpoint).parse().ok()?,
            body,
            headers,
            tls,
            host,
            port: url.port_or_known_default()?,
            target: target.clone(),
            connection: Mutex::new(None),
        })
    }

    async fn connect(
        &self,
    ) -> Result<(GrpcSender, GrpcDriver), Box<dyn std::error::Error + Send + Sync>> {
        let addr = match self.target.resolve.iter().find(|(h, _)| *h == self.host) {
            Some((_, addr)) => *addr,
            None => tokio::net::lookup_host((self.host.as_str(), self.port))
                .await
                .map_err(|e| std::io::Error::other(format!("dns error: {e}")))?
                .next()
                .ok_or_else(|| std::io::Error::other("dns error: no address"))?,
        };
        let tcp = tokio::time::timeout(self.target.timeout, tokio::net::TcpStream::connect(addr))
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        tcp.set_nodelay(true)?;
        let io: Box<dyn Io> = match &self.tls {
            Some((connector, name)) => Box::new(connector.connect(name.clone(), tcp).await?),
            None => Box::new(tcp),
        };
        let (sender, connection) = h2::client::handshake(io).await?;
        Ok((sender, Box::pin(connection)))
    }

    fn request(&self, request_id: uuid::Uuid) -> http::Request<()> {
        let mut request = http::Request::new(());
        *request.method_mut() = http::Method::POST;
        *request.uri_mut() = self.uri.clone();
        let headers = request.headers_mut();
        *headers = self.headers.clone();
        let mut id = uuid::Uuid::encode_buffer();
        if let Ok(value) =
            http::HeaderValue::from_str(request_id.hyphenated().encode_lower(&mut id))
        {
            headers.insert(REQUEST_ID_HEADER, value);
        }
        request
    }

    /// The response message as text for body rules: the serving status or the ads' text.
    fn message_text(&self, body: &[u8]) -> String {
        use prost::Message;
        let Some(message) = body.get(5..) else {
            return String::new();
        };
        match &self.target.method {
            GrpcMethod::HealthCheck { .. } => {
                tonic_health::pb::HealthCheckResponse::decode(message)
                    .ok()
                    .map(|m| {
                        tonic_health::pb::health_check_response::ServingStatus::try_from(m.status)
                            .map(|s| s.as_str_name().to_string())
                            .unwrap_or_else(|_| m.status.to_string())
                    })
                    .unwrap_or_default()
            }
            GrpcMethod::GetAds { .. } => crate::traffic::grpc::AdResponse::decode(message)
                .map(|m| {
                    m.ads
                        .iter()
                        .map(|ad| ad.text.as_str())
                        .collect::<Vec<_>>()
                        .join("\n")
                })
                .unwrap_or_default(),
        }
    }

    pub(crate) async fn call(
        &self,
        request_id: uuid::Uuid,
        rule: Option<&AttributionRule>,
    ) -> CallResult {
        let failed = |error: &(dyn std::error::Error + 'static)| CallResult {
            outcome: Outcome::Transport {
                class: classify_error(error),
            },
            label: None,
        };
        let mut existing = self.connection.lock().expect("connection lock").take();
        if let Some((_, connection)) = &mut existing
            && (connection.as_mut().now_or_never().is_some())
        {
            existing = None;
        }
        let (mut send, mut connection) = match existing {
            Some(pair) => pair,
            None => match self.connect().await {
                Ok(pair) => pair,
                Err(error) => return failed(&*error),
            },
        };
        let request = self.request(request_id);
        let (answer, reusable) = {
            let exchange = async {
                futures::future::poll_fn(|cx| send.poll_ready(cx)).await?;
                let (response, mut stream) = send.send_request(request, false)?;
                stream.send_data(self.body.clone(), true)?;
                let (parts, mut body) = response.await?.into_parts();
                let mut message = bytes::BytesMut::new();
                while let Some(chunk) = body.data().await {
                    let chunk = chunk?;
                    body.flow_control().release_capacity(chunk.len())?;
                    message.extend_from_slice(&chunk);
                }
                let trailers = body.trailers().await?;
                Ok::<_, h2::Error>((parts, trailers, message.freeze()))
            };
            tokio::pin!(exchange);
            match futures::future::select(exchange, connection.as_mut()).await {
                futures::future::Either::Left((answer, _)) => (answer, true),
                futures::future::Either::Right((_, exchange)) => (exchange.await, false),
            }
        };
        let (parts, trailers, body) = match answer {
            Ok(answer) => answer,
            Err(error) => return failed(&error),
        };
        if reusable {
            *self.connection.lock().expect("connection lock") = Some((send, connection));
        }
        let mut headers = parts.headers;
        if let Some(trailers) = trailers {
            headers.extend(trailers);
        }
        let code = if parts.status != http::StatusCode::OK {
            code_for_http_status(parts.status.as_u16())
        } else {
            headers
                .get("grpc-status")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<i32>().ok())
                .unwrap_or(2)
        };
        let label = rule.and_then(|rule| {
            let text = if code == 0 && rule.needs_body() {
                self.message_text(&body)
            } else {
                String::new()
            };
            rule.label(ResponseView {
                headers: &headers,
                body: text.as_bytes(),
            })
        });
        CallResult {
            outcome: Outcome::Grpc { code },
            label,
        }
    }
}
