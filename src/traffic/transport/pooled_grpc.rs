//! Pooled gRPC: a tonic channel (h2c, or TLS through the shared rustls configuration) and
//! the generated clients' unary calls.

use std::sync::Arc;

use tonic::metadata::MetadataValue;

use super::{CallResult, Io};
use crate::traffic::TrafficError;
use crate::traffic::attribution::{AttributionRule, ResponseView};
use crate::traffic::classify::classify_status;
use crate::traffic::grpc::{AdRequest, AdServiceClient};
use crate::traffic::record::Outcome;
use crate::traffic::target::{GrpcMethod, GrpcTarget, REQUEST_ID_HEADER};

/// A lazily connecting channel to `target`'s endpoint.
pub(crate) fn channel(target: &GrpcTarget) -> Result<tonic::transport::Channel, TrafficError> {
    let endpoint = tonic::transport::Endpoint::from_shared(target.endpoint.clone())
        .map_err(|source| TrafficError::InvalidGrpcEndpoint {
            value: target.endpoint.clone(),
            source,
        })?
        .connect_timeout(target.timeout)
        .tcp_nodelay(true);
    if !target.is_tls() && target.resolve.is_empty() {
        return Ok(endpoint.connect_lazy());
    }
    // tonic's own TLS would bring a second TLS stack and trust setup; this connector
    // uses the same rustls configuration as every other transport here.
    let tls = match target.is_tls() {
        true => Some(tokio_rustls::TlsConnector::from(Arc::new(
            target.tls.client_config(&[b"h2"])?,
        ))),
        false => None,
    };
    let resolve = target.resolve.clone();
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

/// Sends one unary call over `connection` and classifies what came back.
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
