//! What a request is (HTTP or gRPC), how one is sent, and how its failure is classified.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};
use tonic::metadata::{MetadataKey, MetadataValue};
use url::Url;

use super::TrafficError;
use super::attribution::{AttributionRule, ResponseView};
use super::grpc::{AD_SERVICE, AdRequest, AdServiceClient, HEALTH_SERVICE};
use super::record::{ErrorClass, Outcome};

/// The request header that carries each request's id.
pub const REQUEST_ID_HEADER: &str = "x-request-id";
/// Default per-request timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// Which HTTP version to speak.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum HttpVersion {
    /// HTTP/1.1 only.
    #[default]
    Http1,
    /// HTTP/2: prior knowledge on `http://` (h2c), ALPN `h2` on `https://`.
    Http2,
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
        let provider = rustls::crypto::CryptoProvider::get_default()
            .cloned()
            .unwrap_or_else(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()));
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|source| TrafficError::BuildTls { source })?;
        let mut config = if self.insecure {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(super::probe::RecordingVerifier {
                    provider,
                }))
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

/// An HTTP request to send repeatedly.
#[derive(Clone, Debug)]
pub struct HttpTarget {
    pub url: Url,
    pub method: http::Method,
    pub headers: HeaderMap,
    pub version: HttpVersion,
    pub tls: TlsOptions,
    /// Resolve these host names to these addresses (SNI and Host stay the name).
    pub resolve: Vec<(String, SocketAddr)>,
    pub timeout: Duration,
}

impl HttpTarget {
    /// A GET of `url` (`http://` or `https://`).
    pub fn parse(url: &str) -> Result<Self, TrafficError> {
        let parsed = Url::parse(url.trim()).map_err(|source| TrafficError::InvalidUrl {
            value: url.to_string(),
            source,
        })?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
            return Err(TrafficError::UnsupportedScheme {
                value: url.to_string(),
                expected: "http or https with a host",
            });
        }
        Ok(Self {
            url: parsed,
            method: http::Method::GET,
            headers: HeaderMap::new(),
            version: HttpVersion::Http1,
            tls: TlsOptions::default(),
            resolve: Vec::new(),
            timeout: DEFAULT_TIMEOUT,
        })
    }

    /// Adds a `NAME:VALUE` header.
    pub fn with_header(mut self, header: &str) -> Result<Self, TrafficError> {
        let (name, value) = parse_header(header)?;
        self.headers.append(name, value);
        Ok(self)
    }

    /// Adds a cookie (`name=value`) to the request's single `cookie` header.
    pub fn with_cookie(mut self, cookie: &str) -> Result<Self, TrafficError> {
        let joined = match self.headers.get(http::header::COOKIE) {
            Some(existing) => format!("{}; {cookie}", existing.to_str().unwrap_or_default()),
            None => cookie.to_string(),
        };
        let value = HeaderValue::from_str(&joined).map_err(|_| TrafficError::InvalidHeader {
            value: format!("cookie:{cookie}"),
        })?;
        self.headers.insert(http::header::COOKIE, value);
        Ok(self)
    }

    fn client(&self, pool_per_host: Option<usize>) -> Result<reqwest::Client, TrafficError> {
        let mut builder = reqwest::Client::builder()
            .no_proxy()
            .tcp_nodelay(true)
            .connect_timeout(self.timeout)
            .redirect(reqwest::redirect::Policy::none());
        builder = match self.version {
            HttpVersion::Http1 => builder.http1_only(),
            HttpVersion::Http2 => builder.http2_prior_knowledge(),
        };
        if let Some(max) = pool_per_host {
            builder = builder.pool_max_idle_per_host(max);
        }
        if self.tls.insecure {
            builder = builder.tls_danger_accept_invalid_certs(true);
        }
        if let Some(pem) = &self.tls.ca_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|source| TrafficError::BuildClient { source })?;
            builder = builder.tls_certs_only(certs);
        }
        for (host, addr) in &self.resolve {
            builder = builder.resolve(host, *addr);
        }
        builder
            .build()
            .map_err(|source| TrafficError::BuildClient { source })
    }
}

/// Parses `NAME:VALUE` (the value may contain further colons).
pub fn parse_header(header: &str) -> Result<(HeaderName, HeaderValue), TrafficError> {
    let invalid = || TrafficError::InvalidHeader {
        value: header.to_string(),
    };
    let (name, value) = header.split_once(':').ok_or_else(invalid)?;
    let name = HeaderName::from_bytes(name.trim().to_ascii_lowercase().as_bytes())
        .map_err(|_| invalid())?;
    let value = HeaderValue::from_str(value.trim()).map_err(|_| invalid())?;
    Ok((name, value))
}

/// The unary gRPC methods cdcheck can call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GrpcMethod {
    /// `grpc.health.v1.Health/Check` for a service name (empty: the server as a whole).
    HealthCheck { service: String },
    /// `hipstershop.AdService/GetAds` with these context keys.
    GetAds { context_keys: Vec<String> },
}

impl GrpcMethod {
    const SUPPORTED: &'static str = "grpc.health.v1.Health/Check, hipstershop.AdService/GetAds";

    /// Parses `SERVICE/METHOD`; `health_service` is the name a health check asks about.
    pub fn parse(value: &str, health_service: &str) -> Result<Self, TrafficError> {
        match value.trim().trim_start_matches('/') {
            m if m == format!("{HEALTH_SERVICE}/Check") => Ok(Self::HealthCheck {
                service: health_service.to_string(),
            }),
            m if m == format!("{AD_SERVICE}/GetAds") => Ok(Self::GetAds {
                context_keys: vec!["clothing".to_string()],
            }),
            _ => Err(TrafficError::InvalidGrpcMethod {
                value: value.to_string(),
                supported: Self::SUPPORTED,
            }),
        }
    }
}

/// A unary gRPC call to send repeatedly, over HTTP/2: h2c on `http://`, TLS with ALPN `h2`
/// on `https://`.
#[derive(Clone, Debug)]
pub struct GrpcTarget {
    /// `http://host:port` or `https://host:port`.
    pub endpoint: String,
    pub method: GrpcMethod,
    pub metadata: Vec<(
        MetadataKey<tonic::metadata::Ascii>,
        MetadataValue<tonic::metadata::Ascii>,
    )>,
    pub timeout: Duration,
    /// How to trust the server on `https://`.
    pub tls: TlsOptions,
    /// Resolve these host names to these addresses (SNI and `:authority` stay the name).
    pub resolve: Vec<(String, SocketAddr)>,
}

impl GrpcTarget {
    pub fn new(endpoint: &str, method: GrpcMethod) -> Result<Self, TrafficError> {
        let parsed = Url::parse(endpoint.trim()).map_err(|source| TrafficError::InvalidUrl {
            value: endpoint.to_string(),
            source,
        })?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
            return Err(TrafficError::UnsupportedScheme {
                value: endpoint.to_string(),
                expected: "http (gRPC over h2c) or https (gRPC over TLS) with a host",
            });
        }
        Ok(Self {
            endpoint: endpoint.trim().trim_end_matches('/').to_string(),
            method,
            metadata: Vec::new(),
            timeout: DEFAULT_TIMEOUT,
            tls: TlsOptions::default(),
            resolve: Vec::new(),
        })
    }

    /// Whether the endpoint is `https://`.
    pub fn is_tls(&self) -> bool {
        self.endpoint.starts_with("https://")
    }

    /// Adds request metadata (`userid: abc`); the key is lowercased.
    pub fn with_metadata(mut self, key: &str, value: &str) -> Result<Self, TrafficError> {
        let invalid = || TrafficError::InvalidMetadata {
            value: format!("{key}:{value}"),
        };
        let key = MetadataKey::from_bytes(key.trim().to_ascii_lowercase().as_bytes())
            .map_err(|_| invalid())?;
        let value = MetadataValue::try_from(value.trim()).map_err(|_| invalid())?;
        self.metadata.push((key, value));
        Ok(self)
    }

    /// Adds `NAME:VALUE` as metadata.
    pub fn with_header(self, header: &str) -> Result<Self, TrafficError> {
        let (name, value) = header
            .split_once(':')
            .ok_or_else(|| TrafficError::InvalidHeader {
                value: header.to_string(),
            })?;
        self.with_metadata(name, value)
    }

    fn channel(&self) -> Result<tonic::transport::Channel, TrafficError> {
        let endpoint = tonic::transport::Endpoint::from_shared(self.endpoint.clone())
            .map_err(|source| TrafficError::InvalidGrpcEndpoint {
                value: self.endpoint.clone(),
                source,
            })?
            .connect_timeout(self.timeout)
            .tcp_nodelay(true);
        if !self.is_tls() && self.resolve.is_empty() {
            return Ok(endpoint.connect_lazy());
        }
        // tonic's own TLS would bring a second TLS stack and trust setup; this connector
        // uses the same rustls configuration as every other transport here.
        let tls = match self.is_tls() {
            true => Some(tokio_rustls::TlsConnector::from(Arc::new(
                self.tls.client_config(&[b"h2"])?,
            ))),
            false => None,
        };
        let resolve = self.resolve.clone();
        let connect = tower::service_fn(move |uri: http::Uri| {
            let tls = tls.clone();
            let resolved = uri
                .host()
                .and_then(|host| resolve.iter().find(|(name, _)| name == host))
                .map(|(_, addr)| *addr);
            async move {
                let host = uri.host().unwrap_or_default().trim_matches(['[', ']']);
                let port = uri
                    .port_u16()
                    .unwrap_or(if tls.is_some() { 443 } else { 80 });
                let tcp = match resolved {
                    Some(addr) => tokio::net::TcpStream::connect(addr).await?,
                    None => tokio::net::TcpStream::connect((host, port)).await?,
                };
                tcp.set_nodelay(true)?;
                let io: Box<dyn Io> = match tls {
                    Some(connector) => {
                        let name = rustls::pki_types::ServerName::try_from(host.to_string())
                            .map_err(std::io::Error::other)?;
                        Box::new(connector.connect(name, tcp).await?)
                    }
                    None => Box::new(tcp),
                };
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(io))
            }
        });
        Ok(endpoint.connect_with_connector_lazy(connect))
    }
}

/// A plain or TLS stream, so one connection type serves `http://` and `https://`.
pub(crate) trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> Io for T {}

/// Any request the engine can send.
#[derive(Clone, Debug)]
pub enum Target {
    Http(HttpTarget),
    Grpc(GrpcTarget),
}

impl Target {
    pub fn timeout(&self) -> Duration {
        match self {
            Target::Http(t) => t.timeout,
            Target::Grpc(t) => t.timeout,
        }
    }
}

/// A connection pool (HTTP client or gRPC channel) bound to one target. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Caller {
    inner: Arc<CallerInner>,
}

#[derive(Debug)]
enum CallerInner {
    Http {
        client: reqwest::Client,
        target: HttpTarget,
    },
    Grpc {
        channel: tonic::transport::Channel,
        target: GrpcTarget,
    },
    Direct {
        connection: Box<super::direct::DirectHttp>,
        timeout: Duration,
    },
    DirectGrpc {
        connection: Box<super::direct::DirectGrpc>,
        timeout: Duration,
    },
}

/// The outcome of one call and, when a rule was given and matched, its label.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallResult {
    pub outcome: Outcome,
    pub label: Option<String>,
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
            && let Some(connection) = super::direct::DirectHttp::new(http)
        {
            return Ok(Self {
                inner: Arc::new(CallerInner::Direct {
                    connection: Box::new(connection),
                    timeout: http.timeout,
                }),
            });
        }
        if let Target::Grpc(grpc) = target
            && let Some(connection) = super::direct::DirectGrpc::new(grpc)
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
                client: t.client(pool)?,
                target: t.clone(),
            },
            Target::Grpc(t) => CallerInner::Grpc {
                channel: t.channel()?,
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
                    http_call(client, target, request_id, rule).await
                }
                CallerInner::Grpc { channel, target } => {
                    grpc_call(channel.clone(), None, target, request_id, rule).await
                }
                CallerInner::DirectGrpc { connection, .. } => {
                    connection.call(request_id, rule).await
                }
                CallerInner::Direct { connection, .. } => connection.call(request_id, rule).await,
            }
        };
        match tokio::time::timeout(timeout, call).await {
            Ok(result) => result,
            Err(_) => super::direct::timeout_result(),
        }
    }
}

async fn http_call(
    client: &reqwest::Client,
    target: &HttpTarget,
    request_id: uuid::Uuid,
    rule: Option<&AttributionRule>,
) -> CallResult {
    let mut id = uuid::Uuid::encode_buffer();
    let request = client
        .request(target.method.clone(), target.url.clone())
        .headers(target.headers.clone())
        .header(
            REQUEST_ID_HEADER,
            &*request_id.hyphenated().encode_lower(&mut id),
        );
    let transport = |error: reqwest::Error| CallResult {
        outcome: Outcome::Transport {
            class: classify_error(&error),
        },
        label: None,
    };
    let mut response = match request.send().await {
        Ok(response) => response,
        Err(error) => return transport(error),
    };
    let status = response.status().as_u16();
    let headers = std::mem::take(response.headers_mut());
    let body = match response.bytes().await {
        Ok(body) => body,
        Err(error) => return transport(error),
    };
    let label = rule.and_then(|rule| {
        rule.label(ResponseView {
            headers: &headers,
            body: &body,
        })
    });
    CallResult {
        outcome: Outcome::Http { status },
        label,
    }
}

fn grpc_request<T>(message: T, target: &GrpcTarget, request_id: uuid::Uuid) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    let metadata = request.metadata_mut();
    for (key, value) in &target.metadata {
        metadata.append(key.clone(), value.clone());
    }
    if let Ok(id) = MetadataValue::try_from(request_id.to_string()) {
        metadata.insert(REQUEST_ID_HEADER, id);
    }
    request
}

/// A gRPC connection the generated clients can call (tonic's channel, or any tower service
/// with the same shape).
pub(crate) trait GrpcConnection:
    tonic::client::GrpcService<
        tonic::body::Body,
        Error: Into<tonic::codegen::StdError>,
        ResponseBody: tonic::codegen::Body<
            Data = bytes::Bytes,
            Error: Into<tonic::codegen::StdError> + Send,
        > + Send
                          + 'static,
    > + Clone
    + Send
{
}

impl<T> GrpcConnection for T where
    T: tonic::client::GrpcService<
            tonic::body::Body,
            Error: Into<tonic::codegen::StdError>,
            ResponseBody: tonic::codegen::Body<
                Data = bytes::Bytes,
                Error: Into<tonic::codegen::StdError> + Send,
            > + Send
                              + 'static,
        > + Clone
        + Send
{
}

pub(crate) async fn grpc_call<C: GrpcConnection>(
    connection: C,
    origin: Option<http::Uri>,
    target: &GrpcTarget,
    request_id: uuid::Uuid,
    rule: Option<&AttributionRule>,
) -> CallResult {
    let answer: Result<(tonic::metadata::MetadataMap, String), tonic::Status> = match &target.method
    {
        GrpcMethod::HealthCheck { service } => {
            let mut client = match origin {
                Some(origin) => {
                    tonic_health::pb::health_client::HealthClient::with_origin(connection, origin)
                }
                None => tonic_health::pb::health_client::HealthClient::new(connection),
            };
            let request = grpc_request(
                tonic_health::pb::HealthCheckRequest {
                    service: service.clone(),
                },
                target,
                request_id,
            );
            client.check(request).await.map(|response| {
                let (metadata, message, _) = response.into_parts();
                let status = tonic_health::pb::health_check_response::ServingStatus::try_from(
                    message.status,
                )
                .map(|s| s.as_str_name().to_string())
                .unwrap_or_else(|_| message.status.to_string());
                (metadata, status)
            })
        }
        GrpcMethod::GetAds { context_keys } => {
            let mut client = match origin {
                Some(origin) => AdServiceClient::with_origin(connection, origin),
                None => AdServiceClient::new(connection),
            };
            let request = grpc_request(
                AdRequest {
                    context_keys: context_keys.clone(),
                },
                target,
                request_id,
            );
            client.get_ads(request).await.map(|response| {
                let (metadata, message, _) = response.into_parts();
                let text = message
                    .ads
                    .iter()
                    .map(|ad| ad.text.as_str())
                    .collect::<Vec<_>>()
                    .join("\n");
                (metadata, text)
            })
        }
    };
    match answer {
        Ok((metadata, body)) => {
            let label = rule.and_then(|rule| {
                let headers = metadata.into_headers();
                rule.label(ResponseView {
                    headers: &headers,
                    body: body.as_bytes(),
                })
            });
            CallResult {
                outcome: Outcome::Grpc { code: 0 },
                label,
            }
        }
        Err(status) => {
            // A status synthesized by a proxy still names who answered (e.g. Envoy's
            // `server` header); a rule may label it, as it would an HTTP 503.
            let label = rule.and_then(|rule| {
                let headers = status.metadata().clone().into_headers();
                rule.label(ResponseView {
                    headers: &headers,
                    body: status.message().as_bytes(),
                })
            });
            CallResult {
                outcome: classify_status(&status),
                label,
            }
        }
    }
}

/// A gRPC status from a peer is a [`Outcome::Grpc`]; one that tonic made from a
/// transport failure (it carries a source error) is classified as that failure.
pub fn classify_status(status: &tonic::Status) -> Outcome {
    use std::error::Error as _;
    match status.source() {
        Some(source) => Outcome::Transport {
            class: classify_error(source),
        },
        None => Outcome::Grpc {
            code: status.code() as i32,
        },
    }
}

/// Classifies a transport failure by walking its chain of causes.
pub fn classify_error(error: &(dyn std::error::Error + 'static)) -> ErrorClass {
    use std::io::ErrorKind;
    let mut text = String::new();
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(r) = e.downcast_ref::<reqwest::Error>()
            && r.is_timeout()
        {
            return ErrorClass::Timeout;
        }
        if e.downcast_ref::<rustls::Error>().is_some() {
            return ErrorClass::Tls;
        }
        // `io::Error::source` skips the error it wraps: descend into it instead.
        let mut next = e.source();
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if let Some(inner) = io.get_ref() {
                next = Some(inner as &(dyn std::error::Error + 'static));
            }
            match io.kind() {
                ErrorKind::ConnectionRefused => return ErrorClass::Refused,
                ErrorKind::ConnectionReset
                | ErrorKind::ConnectionAborted
                | ErrorKind::BrokenPipe
                | ErrorKind::UnexpectedEof => return ErrorClass::Reset,
                ErrorKind::TimedOut => return ErrorClass::Timeout,
                _ => {}
            }
        }
        if let Some(h) = e.downcast_ref::<hyper::Error>()
            && (h.is_incomplete_message() || h.is_canceled() || h.is_closed())
        {
            return ErrorClass::Reset;
        }
        // `h2::Error` has no source: its I/O cause is reached through `get_io`.
        if let Some(h) = e.downcast_ref::<h2::Error>() {
            if let Some(io) = h.get_io() {
                next = Some(io as &(dyn std::error::Error + 'static));
            } else if h.is_go_away() || h.is_reset() {
                return ErrorClass::Reset;
            }
        }
        text.push_str(&e.to_string().to_ascii_lowercase());
        text.push('\n');
        current = next;
    }
    let has = |needles: &[&str]| needles.iter().any(|n| text.contains(n));
    if has(&[
        "dns error",
        "failed to lookup",
        "name or service not known",
        "no such host",
    ]) {
        ErrorClass::Dns
    } else if has(&["certificate", "tls", "handshake", "alert"]) {
        ErrorClass::Tls
    } else if has(&["connection refused"]) {
        ErrorClass::Refused
    } else if has(&["timed out", "timeout", "deadline"]) {
        ErrorClass::Timeout
    } else if has(&[
        "reset",
        "closed",
        "broken pipe",
        "incomplete",
        "goaway",
        "stream error",
        "connection error",
        "eof",
    ]) {
        ErrorClass::Reset
    } else {
        ErrorClass::Other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_values_may_contain_colons_and_names_are_lowercased() {
        let (name, value) = parse_header("X-Forwarded-For: a:b").unwrap();
        assert_eq!(name.as_str(), "x-forwarded-for");
        assert_eq!(value.to_str().unwrap(), "a:b");
    }

    #[test]
    fn a_header_without_a_colon_is_refused_naming_it() {
        let error = parse_header("nocolon").unwrap_err();
        assert!(error.to_string().contains("`nocolon`"), "{error}");
    }

    #[test]
    fn an_invalid_url_is_refused_naming_it() {
        let error = HttpTarget::parse("not a url").unwrap_err();
        assert!(error.to_string().contains("`not a url`"), "{error}");
        let error = HttpTarget::parse("ftp://example.test/").unwrap_err();
        assert!(
            error.to_string().contains("`ftp://example.test/`"),
            "{error}"
        );
    }

    #[test]
    fn cookies_are_joined_into_one_header() {
        let target = HttpTarget::parse("http://127.0.0.1:1/")
            .unwrap()
            .with_cookie("a=1")
            .unwrap()
            .with_cookie("shop_session-id=abc")
            .unwrap();
        assert_eq!(target.headers["cookie"], "a=1; shop_session-id=abc");
    }

    #[test]
    fn grpc_methods_parse_by_full_name_and_others_are_refused() {
        assert_eq!(
            GrpcMethod::parse("hipstershop.AdService/GetAds", "").unwrap(),
            GrpcMethod::GetAds {
                context_keys: vec!["clothing".into()]
            }
        );
        assert_eq!(
            GrpcMethod::parse("grpc.health.v1.Health/Check", "hipstershop.AdService").unwrap(),
            GrpcMethod::HealthCheck {
                service: "hipstershop.AdService".into()
            }
        );
        let error = GrpcMethod::parse("foo/Bar", "").unwrap_err();
        assert!(error.to_string().contains("`foo/Bar`"), "{error}");
    }

    #[test]
    fn io_errors_are_classified_by_kind() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(classify_error(&refused), ErrorClass::Refused);
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert_eq!(classify_error(&reset), ErrorClass::Reset);
        let tls = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        );
        assert_eq!(classify_error(&tls), ErrorClass::Tls);
    }
}
