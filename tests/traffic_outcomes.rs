//! Network failures are outcomes in the record, never errors; open-loop latency counts the
//! wait of requests due during a stall (no coordinated omission). No Envoy needed.

mod support_envoy;

use std::net::SocketAddr;
use std::time::Duration;

use cdcheck::traffic::caller::Caller;
use cdcheck::traffic::load::{self, LoadSpec};
use cdcheck::traffic::record::{ErrorClass, Outcome};
use cdcheck::traffic::target::{GrpcMethod, GrpcTarget, HttpTarget, Target};
use support_envoy::{GrpcBackend, HttpBackend, both_callers, free_port};
use tokio::io::AsyncReadExt;

/// With a timeout short enough that a silent server is quickly a timeout.
fn short(mut target: HttpTarget) -> Target {
    target.timeout = Duration::from_millis(300);
    Target::Http(target)
}

/// [`short`] for gRPC.
fn short_grpc(mut target: GrpcTarget) -> Target {
    target.timeout = Duration::from_millis(300);
    Target::Grpc(target)
}

/// `grpc.health.v1.Health/Check` of `service` (empty: the server as a whole) at `endpoint`.
fn health_check(endpoint: &str, service: &str) -> GrpcTarget {
    GrpcTarget::new(
        endpoint,
        GrpcMethod::HealthCheck {
            service: service.to_string(),
        },
    )
    .unwrap()
}

async fn one(target: &Target) -> Outcome {
    Caller::new(target)
        .unwrap()
        .call(uuid::Uuid::new_v4(), None)
        .await
        .outcome
}

fn transport(class: ErrorClass) -> Outcome {
    Outcome::Transport { class }
}

/// A server that accepts connections and never answers.
async fn silent_server() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    addr
}

/// A server that reads the start of each request and closes the connection unanswered.
async fn closing_server() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let mut buffer = [0u8; 1024];
            let _ = socket.read(&mut buffer).await;
            drop(socket);
        }
    });
    addr
}

/// Runs a closed loop of `connections` against `target` for 100 ms and asserts that it sent
/// requests and every one of them ended as `error`.
async fn assert_closed_loop_all_failed_as(target: &Target, connections: usize, error: &str) {
    let timeline = load::run(
        target,
        &LoadSpec::closed(connections, Duration::from_millis(100)),
        None,
    )
    .await
    .unwrap();
    let summary = timeline.summary();
    assert!(summary.count > 0);
    assert_eq!(summary.errors.get(error), Some(&summary.count), "{summary}");
}

#[tokio::test]
async fn an_unreachable_target_is_a_refused_outcome_in_every_record() {
    let addr = free_port();
    let target = short(HttpTarget::parse(&format!("http://{addr}/")).unwrap());
    let timeline = load::run(
        &target,
        &LoadSpec::open(50.0, Duration::from_millis(200)),
        None,
    )
    .await
    .unwrap();
    let summary = timeline.summary();
    assert_eq!(summary.count, 10);
    assert_eq!(summary.errors.get("refused"), Some(&10), "{summary}");
    assert!(
        timeline
            .records
            .iter()
            .all(|r| r.outcome == transport(ErrorClass::Refused))
    );
}

#[tokio::test]
async fn a_server_that_never_answers_is_a_timeout_outcome() {
    let addr = silent_server().await;
    let target = short(HttpTarget::parse(&format!("http://{addr}/")).unwrap());
    assert_eq!(one(&target).await, transport(ErrorClass::Timeout));
}

#[tokio::test]
async fn a_connection_closed_before_the_answer_is_a_reset_outcome() {
    let addr = closing_server().await;
    let target = short(HttpTarget::parse(&format!("http://{addr}/")).unwrap());
    assert_eq!(one(&target).await, transport(ErrorClass::Reset));
}

#[tokio::test]
async fn an_unresolvable_host_is_a_dns_outcome() {
    let mut target = HttpTarget::parse("http://cdcheck-no-such-host.invalid/").unwrap();
    // A slow resolver must not turn the DNS failure into a timeout.
    target.timeout = Duration::from_secs(15);
    assert_eq!(one(&Target::Http(target)).await, transport(ErrorClass::Dns));
}

#[tokio::test]
async fn https_to_a_plaintext_server_is_a_tls_outcome() {
    cdcheck::install_crypto_provider();
    let backend = HttpBackend::start("plain-1").await;
    let target = short(HttpTarget::parse(&format!("https://{}/", backend.addr)).unwrap());
    assert_eq!(one(&target).await, transport(ErrorClass::Tls));
}

#[tokio::test]
async fn grpc_to_an_unreachable_target_is_a_refused_outcome() {
    let addr = free_port();
    let target = short_grpc(health_check(&format!("http://{addr}"), ""));
    assert_eq!(one(&target).await, transport(ErrorClass::Refused));
}

#[tokio::test]
async fn grpc_unimplemented_method_is_a_grpc_status_outcome() {
    // The backend serves health for its own services only: an unknown one is NOT_FOUND.
    let backend = GrpcBackend::start("adservice-1").await;
    let target = health_check(&format!("http://{}", backend.addr), "no.such.Service");
    assert_eq!(one(&Target::Grpc(target)).await, Outcome::Grpc { code: 5 });
}

#[tokio::test]
async fn open_loop_counts_the_wait_of_every_request_due_during_a_stall() {
    let backend = HttpBackend::start("frontend-stall").await;
    let target = Target::Http(HttpTarget::parse(&format!("http://{}/", backend.addr)).unwrap());
    let stall = Duration::from_millis(300);
    let slow = |timeline: &cdcheck::traffic::record::Timeline| {
        timeline
            .records
            .iter()
            .filter(|r| r.latency >= Duration::from_millis(100))
            .count()
    };

    // Each run stalls the backend for `stall` 200 ms in.
    let run_with_a_stall = |spec: LoadSpec| {
        let target = target.clone();
        let run = tokio::spawn(async move { load::run(&target, &spec, None).await.unwrap() });
        async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            backend.stall_for(stall);
            run.await.unwrap()
        }
    };
    let open = run_with_a_stall(LoadSpec::open(100.0, Duration::from_secs(1))).await;
    let closed = run_with_a_stall(LoadSpec::closed(1, Duration::from_secs(1))).await;

    // Open loop: the ~20 requests due in the first 200 ms of the stall each waited >= 100 ms.
    assert!(
        slow(&open) >= 15,
        "open loop saw {} slow requests",
        slow(&open)
    );
    assert!(open.summary().latency.max_us >= 250_000);
    assert_eq!(open.summary().failed, 0);
    // Closed loop: one request waited, the schedule waited with it and hid the rest.
    assert!(
        slow(&closed) <= 2,
        "closed loop saw {} slow requests",
        slow(&closed)
    );
}

#[tokio::test]
async fn closed_loop_against_an_unreachable_target_records_refused_outcomes() {
    let addr = free_port();
    let target = short(HttpTarget::parse(&format!("http://{addr}/")).unwrap());
    assert_closed_loop_all_failed_as(&target, 2, "refused").await;
}

#[tokio::test]
async fn closed_loop_reconnects_after_the_server_closes_its_connections() {
    let backend = HttpBackend::start("frontend-reconnect").await;
    let addr = backend.addr;
    let target = Target::Http(HttpTarget::parse(&format!("http://{addr}/")).unwrap());
    let run = tokio::spawn(async move {
        load::run(
            &target,
            &LoadSpec::closed(1, Duration::from_millis(600)),
            None,
        )
        .await
        .unwrap()
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    backend.kill();
    let replacement = HttpBackend::start_on("frontend-reconnect", addr).await;
    let timeline = run.await.unwrap();
    let last = timeline.records.last().unwrap();
    assert_eq!(
        last.outcome,
        Outcome::Http { status: 200 },
        "{}",
        timeline.summary()
    );
    drop(replacement);
}

#[tokio::test]
async fn closed_loop_grpc_against_an_unreachable_target_records_refused_outcomes() {
    let addr = free_port();
    let get_ads = GrpcTarget::new(
        &format!("http://{addr}"),
        GrpcMethod::GetAds {
            context_keys: vec![],
        },
    )
    .unwrap();
    assert_closed_loop_all_failed_as(&short_grpc(get_ads), 1, "refused").await;
}

#[tokio::test]
async fn closed_loop_grpc_reads_the_status_of_a_trailers_only_answer() {
    let backend = GrpcBackend::start("adservice-2").await;
    let target = health_check(&format!("http://{}", backend.addr), "no.such.Service");
    assert_closed_loop_all_failed_as(&Target::Grpc(target), 1, "grpc NOT_FOUND").await;
}

#[tokio::test]
async fn closed_loop_grpc_against_a_server_that_drops_connections_records_resets() {
    let addr = closing_server().await;
    let target = short_grpc(health_check(&format!("http://{addr}"), ""));
    assert_closed_loop_all_failed_as(&target, 1, "reset").await;
}

/// A gRPC health server that names itself only in its trailers, after the message, the way
/// a server reports who answered once the call is complete.
async fn trailer_naming_grpc_server(name: &'static str) -> std::net::SocketAddr {
    use http_body_util::StreamBody;
    use hyper::body::Frame;
    use prost::Message;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let service = hyper::service::service_fn(move |_request| async move {
                let message = tonic_health::pb::HealthCheckResponse { status: 1 };
                let mut data = vec![0u8];
                data.extend((message.encoded_len() as u32).to_be_bytes());
                message.encode(&mut data).unwrap();
                let mut trailers = http::HeaderMap::new();
                trailers.insert("grpc-status", "0".parse().unwrap());
                trailers.insert("x-served-by", name.parse().unwrap());
                let frames = futures::stream::iter([
                    Ok::<_, std::convert::Infallible>(Frame::data(bytes::Bytes::from(data))),
                    Ok(Frame::trailers(trailers)),
                ]);
                Ok::<_, std::convert::Infallible>(
                    http::Response::builder()
                        .header("content-type", "application/grpc")
                        .body(StreamBody::new(frames))
                        .unwrap(),
                )
            });
            tokio::spawn(
                hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(socket), service),
            );
        }
    });
    addr
}

#[tokio::test]
async fn grpc_attribution_reads_metadata_sent_in_trailers_on_both_callers() {
    use cdcheck::traffic::attribution::AttributionRule;

    let addr = trailer_naming_grpc_server("adservice-trailers").await;
    let target = Target::Grpc(health_check(&format!("http://{addr}"), ""));
    let by_trailer = AttributionRule::header("x-served-by").unwrap();
    // Negative control: a key the server never sends labels nothing, so a label can only
    // have come from the trailer.
    let absent = AttributionRule::header("x-not-sent").unwrap();
    for (caller_name, caller) in both_callers(&target) {
        let result = caller.call(uuid::Uuid::new_v4(), Some(&by_trailer)).await;
        assert_eq!(result.outcome, Outcome::Grpc { code: 0 }, "{caller_name}");
        assert_eq!(
            result.label.as_deref(),
            Some("adservice-trailers"),
            "{caller_name}"
        );
        let result = caller.call(uuid::Uuid::new_v4(), Some(&absent)).await;
        assert_eq!(result.outcome, Outcome::Grpc { code: 0 }, "{caller_name}");
        assert_eq!(result.label, None, "{caller_name}");
    }
}

#[tokio::test]
async fn grpc_dns_failures_and_timeouts_are_outcomes_on_both_callers() {
    let unresolvable = {
        let mut target = health_check("http://cdcheck-no-such-host.invalid:50051", "");
        // A slow resolver must not turn the DNS failure into a timeout.
        target.timeout = Duration::from_secs(15);
        Target::Grpc(target)
    };
    let addr = silent_server().await;
    let silent = short_grpc(health_check(&format!("http://{addr}"), ""));
    for (target, expected) in [
        (unresolvable, ErrorClass::Dns),
        (silent, ErrorClass::Timeout),
    ] {
        for (name, caller) in both_callers(&target) {
            let outcome = caller.call(uuid::Uuid::new_v4(), None).await.outcome;
            assert_eq!(outcome, transport(expected), "{name}");
        }
    }
}
