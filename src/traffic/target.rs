//! What a request is: an HTTP request or a unary gRPC call, with its headers, TLS trust,
//! name overrides and timeout. Sending one is the `caller` module's job.

use std::net::SocketAddr;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};
use tonic::metadata::{MetadataKey, MetadataValue};
use url::Url;

use super::TrafficError;
use super::grpc::{AD_SERVICE, HEALTH_SERVICE};
use super::tls::TlsOptions;

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
}

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
}
