//! Pooled HTTP: a reqwest client that opens connections as needed (probes, open-loop load).

use super::CallResult;
use crate::traffic::TrafficError;
use crate::traffic::attribution::{AttributionRule, ResponseView};
use crate::traffic::classify::classify_error;
use crate::traffic::record::Outcome;
use crate::traffic::target::{HttpTarget, HttpVersion, REQUEST_ID_HEADER};

/// A client for `target`, keeping at most `pool_per_host` idle connections when given.
pub(crate) fn client(
    target: &HttpTarget,
    pool_per_host: Option<usize>,
) -> Result<reqwest::Client, TrafficError> {
    let mut builder = reqwest::Client::builder()
        .no_proxy()
        .tcp_nodelay(true)
        .connect_timeout(target.timeout)
        .redirect(reqwest::redirect::Policy::none());
    builder = match target.version {
        HttpVersion::Http1 => builder.http1_only(),
        HttpVersion::Http2 => builder.http2_prior_knowledge(),
    };
    if let Some(max) = pool_per_host {
        builder = builder.pool_max_idle_per_host(max);
    }
    if target.tls.insecure {
        builder = builder.tls_danger_accept_invalid_certs(true);
    }
    if let Some(pem) = &target.tls.ca_pem {
        let certs = reqwest::Certificate::from_pem_bundle(pem)
            .map_err(|source| TrafficError::BuildClient { source })?;
        builder = builder.tls_certs_only(certs);
    }
    for (host, addr) in &target.resolve {
        builder = builder.resolve(host, *addr);
    }
    builder
        .build()
        .map_err(|source| TrafficError::BuildClient { source })
}

/// Sends one request and classifies what came back.
pub(crate) async fn http_call(
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
