//! Traffic engine: load, per-request records, verdicts, attribution and probes.
//!
//! - [`record`]: one [`record::RequestRecord`] per request, the [`record::Timeline`] of a run and its [`record::Summary`].
//! - [`target`]: what a request is ([`target::HttpTarget`], [`target::GrpcTarget`]).
//! - [`tls`]: the rustls client configuration every transport uses.
//! - [`caller`]: sends one request through one of four transports (pooled or direct, HTTP or gRPC).
//! - [`classify`]: names a transport failure ([`record::ErrorClass`]) or a gRPC status.
//! - [`load`]: open-loop (fixed schedule, latency from the scheduled send time) and closed-loop generation.
//! - [`verdict`]: zero failures within a tolerance, outage windows, label distribution.
//! - [`attribution`]: rules that name the workload that served a response.
//! - [`routing`]: the session-routing probe (cookie and `userid` variants, leak bounds).
//! - [`probe`]: HTTP health, gRPC health and TLS probes.
//! - [`grpc`]: the AdService protocol (`hipstershop.AdService/GetAds`) compiled from `proto/`.
//!
//! Network failures never surface as errors: they are [`record::Outcome`]s in a record.
//! [`TrafficError`] is only for input that cannot describe a request.

pub mod attribution;
pub mod caller;
pub mod classify;
pub mod grpc;
pub mod load;
pub mod probe;
pub mod record;
pub mod routing;
pub mod target;
pub mod tls;
mod transport;
pub mod verdict;

/// Why a load, probe or rule could not be set up. Messages read after "failed to".
#[derive(Debug, thiserror::Error)]
pub enum TrafficError {
    #[error("parse target url `{value}`")]
    InvalidUrl {
        value: String,
        #[source]
        source: url::ParseError,
    },
    #[error("use target url `{value}`: scheme must be {expected}")]
    UnsupportedScheme {
        value: String,
        expected: &'static str,
    },
    #[error("parse rate `{value}`: expected a positive number of requests per second")]
    InvalidRate { value: String },
    #[error("parse duration `{value}`")]
    InvalidDuration {
        value: String,
        #[source]
        source: humantime::DurationError,
    },
    #[error("use duration `{value}`: must be longer than zero")]
    ZeroDuration { value: String },
    #[error("parse header `{value}`: expected NAME:VALUE with a valid name and value")]
    InvalidHeader { value: String },
    #[error(
        "parse resolve entry `{value}`: expected HOST:PORT:ADDRESS, e.g. shop.test:443:127.0.0.1"
    )]
    InvalidResolve { value: String },
    #[error("parse grpc method `{value}`: expected one of {supported}")]
    InvalidGrpcMethod {
        value: String,
        supported: &'static str,
    },
    #[error("parse attribution `{value}`: expected header:NAME, body:REGEX, pod or banner")]
    InvalidAttribution { value: String },
    #[error("compile attribution regex `{pattern}`")]
    InvalidRegex {
        pattern: String,
        #[source]
        source: regex::Error,
    },
    #[error("read certificate file `{path}`")]
    ReadCertificate {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("parse certificate PEM from {what}: {reason}")]
    InvalidCertificate { what: String, reason: String },
    #[error("use `{value}` as a TLS server name")]
    InvalidServerName {
        value: String,
        #[source]
        source: rustls::pki_types::InvalidDnsNameError,
    },
    #[error("build http client")]
    BuildClient {
        #[source]
        source: reqwest::Error,
    },
    #[error("build tls client configuration")]
    BuildTls {
        #[source]
        source: rustls::Error,
    },
    #[error("use grpc endpoint `{value}`")]
    InvalidGrpcEndpoint {
        value: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("use `{value}` as grpc metadata")]
    InvalidMetadata { value: String },
    #[error("run load: {reason}")]
    InvalidLoad { reason: String },
}

/// Parses a rate in requests per second (`500`, `2.5`); zero, negative or non-finite rates are refused.
pub fn parse_rate(value: &str) -> Result<f64, TrafficError> {
    match value.trim().parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate > 0.0 => Ok(rate),
        _ => Err(TrafficError::InvalidRate {
            value: value.to_string(),
        }),
    }
}

/// Parses curl's `--resolve HOST:PORT:ADDRESS` (an IPv6 address may be bracketed) into the
/// host name and the socket address its connections go to.
pub fn parse_resolve(value: &str) -> Result<(String, std::net::SocketAddr), TrafficError> {
    let invalid = || TrafficError::InvalidResolve {
        value: value.to_string(),
    };
    let mut parts = value.trim().splitn(3, ':');
    let (Some(host), Some(port), Some(address)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(invalid());
    };
    let port: u16 = port.parse().map_err(|_| invalid())?;
    let address: std::net::IpAddr = address
        .trim_matches(['[', ']'])
        .parse()
        .map_err(|_| invalid())?;
    if host.is_empty() {
        return Err(invalid());
    }
    Ok((host.to_string(), std::net::SocketAddr::new(address, port)))
}

/// Parses a human duration (`10s`, `1m30s`, `250ms`); zero is refused.
pub fn parse_duration(value: &str) -> Result<std::time::Duration, TrafficError> {
    let duration = humantime::parse_duration(value.trim()).map_err(|source| {
        TrafficError::InvalidDuration {
            value: value.to_string(),
            source,
        }
    })?;
    if duration.is_zero() {
        return Err(TrafficError::ZeroDuration {
            value: value.to_string(),
        });
    }
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_entries_read_like_curls() {
        assert_eq!(
            parse_resolve("shop.test:443:127.0.0.1").unwrap(),
            ("shop.test".to_string(), "127.0.0.1:443".parse().unwrap())
        );
        assert_eq!(
            parse_resolve("shop.test:8443:[::1]").unwrap(),
            ("shop.test".to_string(), "[::1]:8443".parse().unwrap())
        );
        for bad in [
            "shop.test",
            "shop.test:443",
            ":443:127.0.0.1",
            "shop.test:x:127.0.0.1",
        ] {
            let error = parse_resolve(bad).unwrap_err();
            assert!(error.to_string().contains(&format!("`{bad}`")), "{error}");
        }
    }
}
