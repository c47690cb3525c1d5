//! One HTTP/1.1 or HTTP/2 connection driven directly with hyper, for closed-loop workers: no
//! pool, no buffered channel, no per-request client machinery; it reconnects after a failure.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::FutureExt;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;

use super::CallResult;
use crate::traffic::attribution::{AttributionRule, ResponseView};
use crate::traffic::classify::classify_error;
use crate::traffic::record::Outcome;
use crate::traffic::target::{HttpTarget, HttpVersion, REQUEST_ID_HEADER};

type ConnectionDriver =
    std::pin::Pin<Box<dyn std::future::Future<Output = hyper::Result<()>> + Send>>;

enum Sender {
    /// HTTP/1.1: the connection is driven inside the call, on the worker's own task, which
    /// saves two cross-task wake-ups per request.
    H1 {
        send: hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
        connection: ConnectionDriver,
    },
    H2(hyper::client::conn::http2::SendRequest<Empty<Bytes>>),
}

/// A single HTTP/1.1 or HTTP/2 connection to `target`, opened on first use.
pub(crate) struct DirectHttp {
    target: HttpTarget,
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
    host: String,
    port: u16,
    authority: http::HeaderValue,
    uri: http::Uri,
    sender: Mutex<Option<Sender>>,
}

impl std::fmt::Debug for DirectHttp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectHttp")
            .field("url", &self.target.url.as_str())
            .finish()
    }
}

impl DirectHttp {
    /// `None` when the target cannot be reached this way (its TLS options do not build); the
    /// pooled client then reports why on each request.
    pub(crate) fn new(target: &HttpTarget) -> Option<Self> {
        let url = &target.url;
        let host = url.host_str()?.trim_matches(['[', ']']).to_string();
        let port = url.port_or_known_default()?;
        let tls = if url.scheme() == "https" {
            let alpn: &[u8] = match target.version {
                HttpVersion::Http1 => b"http/1.1",
                HttpVersion::Http2 => b"h2",
            };
            Some((
                tokio_rustls::TlsConnector::from(Arc::new(target.tls.client_config(&[alpn]).ok()?)),
                ServerName::try_from(host.clone()).ok()?,
            ))
        } else {
            None
        };
        let authority = match url.port() {
            Some(port) => format!("{}:{port}", url.host_str()?),
            None => url.host_str()?.to_string(),
        };
        let uri: http::Uri = match target.version {
            HttpVersion::Http1 => {
                let mut path = url.path().to_string();
                if let Some(query) = url.query() {
                    path.push('?');
                    path.push_str(query);
                }
                path.parse().ok()?
            }
            HttpVersion::Http2 => url.as_str().parse().ok()?,
        };
        Some(Self {
            target: target.clone(),
            tls,
            host,
            port,
            authority: http::HeaderValue::from_str(&authority).ok()?,
            uri,
            sender: Mutex::new(None),
        })
    }

    async fn address(&self) -> std::io::Result<SocketAddr> {
        if let Some((_, addr)) = self.target.resolve.iter().find(|(h, _)| *h == self.host) {
            return Ok(*addr);
        }
        tokio::net::lookup_host((self.host.as_str(), self.port))
            .await?
            .next()
            .ok_or_else(|| std::io::Error::other("dns error: no address"))
    }

    async fn connect(&self) -> Result<Sender, Box<dyn std::error::Error + Send + Sync>> {
        let addr = self.address().await.map_err(|e| {
            // Resolution failures are DNS outcomes whatever the resolver's error kind.
            std::io::Error::other(format!("dns error: {e}"))
        })?;
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        match &self.tls {
            Some((connector, name)) => {
                let stream = connector.connect(name.clone(), tcp).await?;
                self.handshake(stream).await
            }
            None => self.handshake(tcp).await,
        }
    }

    async fn handshake<S>(&self, io: S) -> Result<Sender, Box<dyn std::error::Error + Send + Sync>>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let io = TokioIo::new(io);
        Ok(match self.target.version {
            HttpVersion::Http1 => {
                let (send, connection) = hyper::client::conn::http1::handshake(io).await?;
                Sender::H1 {
                    send,
                    connection: Box::pin(connection),
                }
            }
            HttpVersion::Http2 => {
                let (sender, connection) =
                    hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
                tokio::spawn(connection);
                Sender::H2(sender)
            }
        })
    }

    fn request(&self, request_id: uuid::Uuid) -> http::Request<Empty<Bytes>> {
        let mut request = http::Request::new(Empty::new());
        *request.method_mut() = self.target.method.clone();
        *request.uri_mut() = self.uri.clone();
        let headers = request.headers_mut();
        *headers = self.target.headers.clone();
        if self.target.version == HttpVersion::Http1 && !headers.contains_key(http::header::HOST) {
            headers.insert(http::header::HOST, self.authority.clone());
        }
        let mut id = uuid::Uuid::encode_buffer();
        if let Ok(value) =
            http::HeaderValue::from_str(request_id.hyphenated().encode_lower(&mut id))
        {
            headers.insert(REQUEST_ID_HEADER, value);
        }
        request
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
        let mut existing = self.sender.lock().expect("connection lock").take();
        // A connection the server closed while idle (or after `connection: close`) is
        // noticed here, before a request is spent on it.
        if let Some(Sender::H1 { send, connection }) = &mut existing
            && (connection.as_mut().now_or_never().is_some() || send.is_closed())
        {
            existing = None;
        }
        if let Some(Sender::H2(send)) = &existing
            && send.is_closed()
        {
            existing = None;
        }
        let mut sender = match existing {
            Some(sender) => sender,
            None => match self.connect().await {
                Ok(sender) => sender,
                Err(error) => return failed(&*error),
            },
        };
        let request = self.request(request_id);
        let mut reusable = true;
        let answer = match &mut sender {
            Sender::H1 { send, connection } => {
                let exchange = async {
                    send.ready().await?;
                    let (parts, body) = send.send_request(request).await?.into_parts();
                    Ok::<_, hyper::Error>((parts, body.collect().await?.to_bytes()))
                };
                tokio::pin!(exchange);
                match futures::future::select(exchange, connection.as_mut()).await {
                    futures::future::Either::Left((answer, _)) => answer,
                    futures::future::Either::Right((_, exchange)) => {
                        reusable = false;
                        exchange.await
                    }
                }
            }
            Sender::H2(send) => {
                async {
                    let (parts, body) = send.send_request(request).await?.into_parts();
                    Ok::<_, hyper::Error>((parts, body.collect().await?.to_bytes()))
                }
                .await
            }
        };
        let (parts, body) = match answer {
            Ok(answer) => answer,
            Err(error) => return failed(&error),
        };
        let status = parts.status.as_u16();
        if reusable {
            *self.sender.lock().expect("connection lock") = Some(sender);
        }
        let label = rule.and_then(|rule| {
            rule.label(ResponseView {
                headers: &parts.headers,
                body: &body,
            })
        });
        CallResult {
            outcome: Outcome::Http { status },
            label,
        }
    }
}
