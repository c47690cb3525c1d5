//! A pod's readiness probe run the way the kubelet runs it (HTTP GET with headers,
//! gRPC health, TCP connect), against the pod's process inside the mesh's namespace.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::netns::Dialer;

/// The probe's timing, with the kubelet's defaults.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
}

impl Timing {
    pub fn of(probe: &Probe) -> Timing {
        let secs =
            |v: Option<i32>, default: i32| Duration::from_secs(v.unwrap_or(default).max(0) as u64);
        Timing {
            initial_delay: secs(probe.initial_delay_seconds, 0),
            period: secs(probe.period_seconds, 10).max(Duration::from_secs(1)),
            timeout: secs(probe.timeout_seconds, 1).max(Duration::from_secs(1)),
            success_threshold: probe.success_threshold.unwrap_or(1).max(1) as u32,
            failure_threshold: probe.failure_threshold.unwrap_or(3).max(1) as u32,
        }
    }
}

/// What one probe attempt found.
pub type Outcome = Result<(), String>;

/// Resolves a probe's port (a number or a container port's name).
fn port(container: &Container, port: &IntOrString) -> Result<u16, String> {
    match port {
        IntOrString::Int(n) => u16::try_from(*n).map_err(|_| format!("port {n} is out of range")),
        IntOrString::String(name) => container
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .and_then(|p| u16::try_from(p.container_port).ok())
            .ok_or_else(|| format!("no container port named {name}")),
    }
}

/// Runs one attempt of `probe` against the pod at `ip`, bounded by the probe's timeout.
pub async fn attempt(
    dialer: &Dialer,
    ip: Ipv4Addr,
    container: &Container,
    probe: &Probe,
) -> Outcome {
    let timeout = Timing::of(probe).timeout;
    match tokio::time::timeout(timeout, attempt_unbounded(dialer, ip, container, probe)).await {
        Ok(outcome) => outcome,
        Err(_) => Err(format!("timed out after {timeout:?}")),
    }
}

async fn attempt_unbounded(
    dialer: &Dialer,
    ip: Ipv4Addr,
    container: &Container,
    probe: &Probe,
) -> Outcome {
    if let Some(get) = &probe.http_get {
        let addr = SocketAddr::from((ip, port(container, &get.port)?));
        if get
            .scheme
            .as_deref()
            .is_some_and(|s| s.eq_ignore_ascii_case("https"))
        {
            return Err("HTTPS probes are not run by the local mesh".into());
        }
        return http_get(
            dialer,
            addr,
            get.path.as_deref().unwrap_or("/"),
            get.http_headers
                .iter()
                .flatten()
                .map(|h| (h.name.as_str(), h.value.as_str())),
        )
        .await;
    }
    if let Some(grpc) = &probe.grpc {
        let port =
            u16::try_from(grpc.port).map_err(|_| format!("port {} is out of range", grpc.port))?;
        return grpc_health(
            dialer,
            SocketAddr::from((ip, port)),
            grpc.service.as_deref().unwrap_or(""),
        )
        .await;
    }
    if let Some(tcp) = &probe.tcp_socket {
        let addr = SocketAddr::from((ip, port(container, &tcp.port)?));
        return dialer
            .connect(addr)
            .await
            .map(|_| ())
            .map_err(|e| format!("dial tcp {addr}: {e}"));
    }
    Err("exec probes are not run by the local mesh (processes, not containers)".into())
}

/// An HTTP GET as the kubelet's probe sends it; 2xx and 3xx pass.
pub async fn http_get<'a>(
    dialer: &Dialer,
    addr: SocketAddr,
    path: &str,
    headers: impl Iterator<Item = (&'a str, &'a str)>,
) -> Outcome {
    let (status, _) = get(dialer, addr, path, headers, false).await?;
    if (200..400).contains(&status) {
        Ok(())
    } else {
        Err(format!("HTTP probe failed with statuscode: {status}"))
    }
}

/// A GET through the pod network: the status, and the body when `read_body`.
pub async fn get<'a>(
    dialer: &Dialer,
    addr: SocketAddr,
    path: &str,
    headers: impl Iterator<Item = (&'a str, &'a str)>,
    read_body: bool,
) -> Result<(u16, Bytes), String> {
    let stream = dialer
        .connect(addr)
        .await
        .map_err(|e| format!("dial tcp {addr}: {e}"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP handshake with {addr}: {e}"))?;
    tokio::spawn(connection);
    let mut request = http::Request::get(path)
        .header(http::header::HOST, addr.to_string())
        .header(http::header::USER_AGENT, "kube-probe/1.36");
    for (name, value) in headers {
        request = request.header(name, value);
    }
    let request = request
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("build the request for {path}: {e}"))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("GET http://{addr}{path}: {e}"))?;
    let status = response.status().as_u16();
    if !read_body {
        return Ok((status, Bytes::new()));
    }
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .map_err(|e| format!("read http://{addr}{path}: {e}"))?
        .to_bytes();
    Ok((status, body))
}

/// A `grpc.health.v1.Health/Check`; SERVING passes.
pub async fn grpc_health(dialer: &Dialer, addr: SocketAddr, service: &str) -> Outcome {
    let dialer = dialer.clone();
    let connect = tower::service_fn(move |_: http::Uri| {
        let dialer = dialer.clone();
        async move { dialer.connect(addr).await.map(TokioIo::new) }
    });
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| e.to_string())?
        .connect_with_connector(connect)
        .await
        .map_err(|e| format!("dial {addr}: {e}"))?;
    let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
    let response = client
        .check(tonic_health::pb::HealthCheckRequest {
            service: service.to_string(),
        })
        .await
        .map_err(|status| {
            format!(
                "rpc error: code = {:?} desc = {}",
                status.code(),
                status.message()
            )
        })?;
    let status = response.into_inner().status;
    if status == tonic_health::pb::health_check_response::ServingStatus::Serving as i32 {
        Ok(())
    } else {
        Err(format!("service unhealthy (responded with {status:?})"))
    }
}
