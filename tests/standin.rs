//! `cdcheck standin` as the pod runner starts it: the real binary on 127.0.0.1, each role's
//! health, attribution and GetAds, the broken release's failed checks, and SIGTERM cutting
//! what is in flight.

#[path = "common/skip.rs"]
mod skip;

use cdcheck::names::BROKEN_TAG;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use cdcheck::standin::{POD_HEADER, Role};
use cdcheck::traffic::attribution::{AttributionRule, ResponseView};
use cdcheck::traffic::grpc::{AdRequest, AdServiceClient};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const REGISTRY: &str = "us-central1-docker.pkg.dev/online-boutique-ci/microservices-demo";
/// An env value no response or log line may echo.
const SECRET: &str = "s3cr3t-token-value";

fn image(name: &str, tag: &str) -> String {
    format!("{REGISTRY}/{name}:{tag}")
}

/// A running stand-in; killed when dropped.
struct Standin {
    child: Child,
    pod: String,
    addresses: Vec<SocketAddr>,
    line: String,
}

impl Standin {
    /// Starts the binary with `ports` ephemeral ports and waits for its summary line.
    fn start(image: &str, pod: &str, ports: usize, env: &[(&str, &str)]) -> Standin {
        let mut command = Command::new(env!("CARGO_BIN_EXE_cdcheck"));
        command
            .args(["standin", "--image", image, "--bind", "127.0.0.1"])
            .env_remove("FRONTEND_MESSAGE")
            .env("POD_NAME", pod)
            .env("SECRET_TOKEN", SECRET)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for _ in 0..ports {
            command.args(["--port", "0"]);
        }
        let mut child = command.spawn().expect("spawn cdcheck standin");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stderr).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            // Keep draining so the child never blocks on a full pipe.
            for _ in lines {}
        });
        let line = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                panic!("cdcheck standin {image} printed no start line");
            }
        };
        let listening = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("listening="))
            .unwrap_or_else(|| panic!("no listening= in {line:?}"));
        let addresses = if listening == "none" {
            Vec::new()
        } else {
            listening.split(',').map(|a| a.parse().unwrap()).collect()
        };
        assert_eq!(addresses.len(), ports, "{line}");
        Standin {
            child,
            pod: pod.to_string(),
            addresses,
            line,
        }
    }

    fn http(&self) -> String {
        format!("http://{}", self.addresses[0])
    }

    fn terminate(&self) {
        // SAFETY: signals our own child, which has not been reaped yet.
        let result = unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        assert_eq!(result, 0, "kill -TERM {}", self.child.id());
    }

    /// Waits for the process to exit; `None` if it is still running after `limit`.
    fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Standin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn view<'a>(headers: &'a http::HeaderMap, body: &'a [u8]) -> ResponseView<'a> {
    ResponseView { headers, body }
}

async fn get(url: &str) -> (u16, http::HeaderMap, String) {
    let response = reqwest::get(url).await.expect("GET");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    (status, headers, response.text().await.unwrap())
}

async fn channel(address: SocketAddr) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .expect("connect gRPC")
}

/// A health Check's status, or the gRPC code it failed with.
async fn health(address: SocketAddr, service: &str) -> Result<ServingStatus, tonic::Code> {
    let mut client = HealthClient::new(channel(address).await);
    let response = client
        .check(HealthCheckRequest {
            service: service.to_string(),
        })
        .await
        .map_err(|status| status.code())?;
    Ok(response.into_inner().status())
}

/// What the runner's readiness probe asks: HTTP `/_healthz` 200, or gRPC health SERVING.
async fn ready(standin: &Standin, role: Role) -> bool {
    match role {
        Role::Frontend => get(&format!("{}/_healthz", standin.http())).await.0 == 200,
        _ => health(standin.addresses[0], "").await == Ok(ServingStatus::Serving),
    }
}

#[tokio::test]
async fn frontend_page_names_the_pod_and_shows_the_banner() {
    let standin = Standin::start(
        &image("frontend", "0.10.6-myfeature"),
        "frontend-myfeature-7d9c-abcde",
        2,
        &[("FRONTEND_MESSAGE", "feature <myfeature> & co")],
    );
    assert!(standin.line.contains("role=frontend"), "{}", standin.line);
    assert!(standin.line.contains("banner=set"), "{}", standin.line);
    assert!(!standin.line.contains("myfeature>"), "{}", standin.line);
    assert!(!standin.line.contains(SECRET), "{}", standin.line);
    for address in &standin.addresses {
        let (status, headers, body) = get(&format!("http://{address}/product/OLJCESPC7Z")).await;
        assert_eq!(status, 200);
        assert_eq!(headers[POD_HEADER], standin.pod.as_str());
        let page = view(&headers, body.as_bytes());
        assert_eq!(
            AttributionRule::frontend_pod().label(page).as_deref(),
            Some("frontend-myfeature-7d9c-abcde")
        );
        assert_eq!(
            AttributionRule::frontend_banner().label(page).as_deref(),
            Some("feature &lt;myfeature&gt; &amp; co"),
            "the banner is HTML-escaped: {body}"
        );
        assert!(!body.contains(SECRET));
    }
    // h2c with prior knowledge, as Envoy sends it upstream.
    let h2c = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let response = h2c.get(standin.http()).send().await.unwrap();
    assert_eq!(response.version(), http::Version::HTTP_2);
    assert_eq!(response.headers()[POD_HEADER], standin.pod.as_str());
}

#[tokio::test]
async fn frontend_without_a_message_shows_no_banner_and_health_answers_ok() {
    for message in [None, Some("")] {
        let env: Vec<(&str, &str)> = message
            .map(|m| ("FRONTEND_MESSAGE", m))
            .into_iter()
            .collect();
        let standin = Standin::start(&image("frontend", "v0.10.6"), "frontend-1", 1, &env);
        assert!(standin.line.contains("banner=unset"), "{}", standin.line);
        let (status, headers, body) = get(&standin.http()).await;
        assert_eq!(status, 200);
        let page = view(&headers, body.as_bytes());
        assert_eq!(
            AttributionRule::frontend_banner().label(page),
            None,
            "{body}"
        );
        assert_eq!(
            AttributionRule::frontend_pod().label(page).as_deref(),
            Some("frontend-1")
        );
        let (status, headers, body) = get(&format!("{}/_healthz", standin.http())).await;
        assert_eq!((status, body.as_str()), (200, "ok"));
        assert_eq!(headers[POD_HEADER], "frontend-1");
    }
}

#[tokio::test]
async fn pod_name_falls_back_to_hostname() {
    let mut command = Command::new(env!("CARGO_BIN_EXE_cdcheck"));
    command
        .args(["standin", "--image", "redis:alpine", "--bind", "127.0.0.1"])
        .args(["--port", "0"])
        .env_remove("POD_NAME")
        .env("HOSTNAME", "redis-cart-5b7d-xyz12")
        .stderr(Stdio::piped());
    let mut child = command.spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stderr.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(line.contains("pod=redis-cart-5b7d-xyz12"), "{line}");
}

#[tokio::test]
async fn every_grpc_backend_answers_health_serving_and_names_its_pod() {
    let grpc_roles = Role::ALL.into_iter().filter(|r| r.grpc_service().is_some());
    for role in grpc_roles {
        let pod = format!("{}-6c8f-q2w3e", role.workload());
        let standin = Standin::start(&image(role.image_name(), "v0.10.6"), &pod, 1, &[]);
        let address = standin.addresses[0];
        for service in ["", role.workload(), role.grpc_service().unwrap()] {
            assert_eq!(
                health(address, service).await,
                Ok(ServingStatus::Serving),
                "{role} health for {service:?}"
            );
        }
        let unknown = health(address, "hipstershop.NoSuchService").await;
        assert_eq!(
            unknown,
            Err(tonic::Code::NotFound),
            "{role}: a service it does not serve is not SERVING"
        );
        let mut client = HealthClient::new(channel(address).await);
        let response = client.check(HealthCheckRequest::default()).await.unwrap();
        assert_eq!(
            response
                .metadata()
                .get(POD_HEADER)
                .unwrap()
                .to_str()
                .unwrap(),
            pod,
            "{role}"
        );
    }
}

#[tokio::test]
async fn adservice_get_ads_names_the_pod_and_other_services_do_not_implement_it() {
    let standin = Standin::start(
        &image("adservice", "v0.10.6"),
        "adservice-77f9-zx8cv",
        1,
        &[],
    );
    let mut client = AdServiceClient::new(channel(standin.addresses[0]).await);
    let response = client
        .get_ads(AdRequest {
            context_keys: vec!["kitchen".to_string()],
        })
        .await
        .unwrap();
    assert_eq!(
        response.metadata().get(POD_HEADER).unwrap(),
        "adservice-77f9-zx8cv"
    );
    let ads = response.into_inner().ads;
    assert!(!ads.is_empty());
    assert!(
        ads.iter()
            .all(|ad| ad.text.contains("adservice-77f9-zx8cv")),
        "{ads:?}"
    );

    let cart = Standin::start(&image("cartservice", "v0.10.6"), "cartservice-1", 1, &[]);
    let mut client = AdServiceClient::new(channel(cart.addresses[0]).await);
    let status = client.get_ads(AdRequest::default()).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unimplemented);
}

/// A raw HTTP/2 GetAds call: the pod is named in the response headers and in the trailers.
#[tokio::test]
async fn get_ads_names_the_pod_in_headers_and_trailers() {
    use http_body_util::BodyExt;
    let standin = Standin::start(&image("adservice", "v0.10.6"), "adservice-2", 1, &[]);
    let stream = tokio::net::TcpStream::connect(standin.addresses[0])
        .await
        .unwrap();
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    // One gRPC message: uncompressed, length 0 (an empty AdRequest).
    let request = http::Request::post(format!(
        "http://{}/hipstershop.AdService/GetAds",
        standin.addresses[0]
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .body(http_body_util::Full::new(bytes::Bytes::from_static(
        &[0; 5],
    )))
    .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.headers()[POD_HEADER], "adservice-2");
    let body = response.into_body().collect().await.unwrap();
    let trailers = body
        .trailers()
        .expect("a gRPC response with a message has trailers");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers[POD_HEADER], "adservice-2");
    assert!(String::from_utf8_lossy(&body.to_bytes()).contains("adservice-2"));
}

/// The negative control: the readiness checks that pass at a release tag fail at the
/// broken release's tag, for the HTTP frontend and for a gRPC backend.
#[tokio::test]
async fn the_broken_release_listens_but_never_becomes_ready() {
    for role in [Role::Frontend, Role::AdService, Role::ShippingService] {
        let good = Standin::start(&image(role.image_name(), "v0.10.6"), "good-1", 1, &[]);
        assert!(ready(&good, role).await, "{role} at a release tag is ready");

        let broken = Standin::start(&image(role.image_name(), BROKEN_TAG), "broken-1", 1, &[]);
        assert!(broken.line.contains("never-ready=true"), "{}", broken.line);
        assert!(
            !ready(&broken, role).await,
            "{role} at {BROKEN_TAG} is never ready"
        );
        match role {
            Role::Frontend => {
                let (status, headers, _) = get(&format!("{}/_healthz", broken.http())).await;
                assert_eq!(status, 500);
                assert_eq!(headers[POD_HEADER], "broken-1");
            }
            _ => {
                for service in role.health_names() {
                    assert_eq!(
                        health(broken.addresses[0], service).await,
                        Ok(ServingStatus::NotServing),
                        "{role} {service:?}"
                    );
                }
            }
        }
    }
}

/// A warm-up in the pod's env: the backend listens at once (a TCP probe would pass) and
/// answers NOT_SERVING until the warm-up ends, then SERVING. Control: without it, SERVING
/// from the first answer.
#[tokio::test]
async fn a_warm_up_answers_not_serving_until_it_ends() {
    let image = image(Role::ProductCatalogService.image_name(), "v0.10.6");
    let warm = Standin::start(
        &image,
        "catalog-1",
        1,
        &[(cdcheck::standin::WARMUP_ENV, "2")],
    );
    assert_eq!(
        health(warm.addresses[0], "").await,
        Ok(ServingStatus::NotServing)
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut status = health(warm.addresses[0], "").await;
    while status != Ok(ServingStatus::Serving) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        status = health(warm.addresses[0], "").await;
    }
    assert_eq!(
        status,
        Ok(ServingStatus::Serving),
        "the warm-up never ended"
    );
    let cold = Standin::start(&image, "catalog-2", 1, &[]);
    assert_eq!(
        health(cold.addresses[0], "").await,
        Ok(ServingStatus::Serving)
    );
}

#[tokio::test]
async fn redis_answers_ping() {
    let standin = Standin::start("redis:alpine", "redis-cart-5b7d-xyz12", 1, &[]);
    let mut stream = tokio::net::TcpStream::connect(standin.addresses[0])
        .await
        .unwrap();
    stream
        .write_all(b"PING\r\n*1\r\n$4\r\nPING\r\n")
        .await
        .unwrap();
    let mut reply = vec![0u8; 14];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut reply))
        .await
        .expect("redis reply in time")
        .unwrap();
    assert_eq!(&reply, b"+PONG\r\n+PONG\r\n");
}

#[test]
fn loadgenerator_listens_nowhere_and_stays_until_sigterm() {
    let mut standin = Standin::start(
        &image("loadgenerator", "v0.10.6"),
        "loadgenerator-1",
        0,
        &[],
    );
    assert!(standin.line.contains("listening=none"), "{}", standin.line);
    std::thread::sleep(Duration::from_millis(300));
    assert!(standin.alive());
    standin.terminate();
    let status = standin
        .wait_exit(Duration::from_secs(1))
        .expect("exits within 1 s");
    assert_eq!(status.signal(), Some(libc::SIGTERM));
}

#[test]
fn an_unknown_image_exits_2_and_names_the_image() {
    let output = Command::new(env!("CARGO_BIN_EXE_cdcheck"))
        .args(["standin", "--image", "docker.io/library/nginx:1.27"])
        .args(["--bind", "127.0.0.1", "--port", "0"])
        .env("POD_NAME", "web-1")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("failed to recognize image `docker.io/library/nginx:1.27`"),
        "{stderr}"
    );
}

#[test]
fn a_port_in_use_exits_1_not_2() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let output = Command::new(env!("CARGO_BIN_EXE_cdcheck"))
        .args(["standin", "--image", "redis:alpine", "--bind", "127.0.0.1"])
        .args(["--port", &port])
        .env("POD_NAME", "redis-cart-1")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("failed to bind 127.0.0.1:{port}")),
        "{stderr}"
    );
}

/// SIGTERM cuts an open Watch stream (the client sees an error, not a clean end of stream)
/// and the process is gone within 1 s: no graceful drain, as with the real services.
#[tokio::test]
async fn sigterm_cuts_an_open_watch_stream_and_exits_at_once() {
    let mut standin = Standin::start(&image("currencyservice", "v0.10.6"), "currency-1", 1, &[]);
    let mut client = HealthClient::new(channel(standin.addresses[0]).await);
    let mut stream = client
        .watch(HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().expect("a first status");
    assert_eq!(first.status(), ServingStatus::Serving);

    let signalled = Instant::now();
    standin.terminate();
    let next = tokio::time::timeout(Duration::from_secs(2), stream.message())
        .await
        .expect("the stream ends when the process dies");
    assert!(
        next.is_err(),
        "a killed server must cut the stream, not end it cleanly: {next:?}"
    );
    let status = standin
        .wait_exit(Duration::from_secs(1).saturating_sub(signalled.elapsed()))
        .expect("exits within 1 s of SIGTERM");
    assert_eq!(status.signal(), Some(libc::SIGTERM));
}

/// SIGTERM during an HTTP/2 request whose upload is still streaming: the request fails
/// instead of being answered or drained.
#[tokio::test]
async fn sigterm_cuts_an_in_flight_http_request() {
    let mut standin = Standin::start(&image("frontend", "v0.10.6"), "frontend-1", 1, &[]);
    // A request body that is still uploading: one chunk, then nothing until the end.
    let (mut sender, body) = {
        let (tx, rx) = futures::channel::mpsc::channel::<
            Result<hyper::body::Frame<bytes::Bytes>, std::io::Error>,
        >(1);
        (tx, reqwest::Body::wrap(http_body_util::StreamBody::new(rx)))
    };
    let client = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let url = format!("{}/cart", standin.http());
    use futures::SinkExt;
    sender
        .send(Ok(hyper::body::Frame::data(bytes::Bytes::from_static(
            b"x",
        ))))
        .await
        .unwrap();
    let request = tokio::spawn(async move { client.get(url).body(body).send().await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !request.is_finished(),
        "the request is in flight (the frontend waits for the rest of its body)"
    );
    standin.terminate();
    let status = standin
        .wait_exit(Duration::from_secs(1))
        .expect("exits within 1 s of SIGTERM");
    assert_eq!(status.signal(), Some(libc::SIGTERM));
    let result = tokio::time::timeout(Duration::from_secs(2), request)
        .await
        .expect("the request ends")
        .unwrap();
    drop(sender);
    match result {
        Err(error) => assert!(!error.is_status(), "{error}"),
        Ok(response) => panic!("an in-flight request was answered: {}", response.status()),
    }
}

/// As PID 1 of a PID namespace (where the kernel drops a SIGTERM without a handler), the
/// stand-in still exits on SIGTERM.
#[test]
fn sigterm_ends_it_as_pid_1_of_a_pid_namespace() {
    let probe = Command::new("unshare")
        .args(["--user", "--map-root-user", "--pid", "--fork", "true"])
        .output();
    if !probe.is_ok_and(|o| o.status.success()) {
        skip::skip_or_fail("unshare cannot create a user and PID namespace here");
        return;
    }
    let mut unshare = Command::new("unshare")
        .args([
            "--user",
            "--map-root-user",
            "--pid",
            "--fork",
            "--kill-child",
        ])
        .arg(env!("CARGO_BIN_EXE_cdcheck"))
        .args(["standin", "--image", "redis:alpine", "--bind", "127.0.0.1"])
        .args(["--port", "0"])
        .env("POD_NAME", "redis-cart-1")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(unshare.stderr.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.contains("role=redis-cart"), "{line}");
    let children =
        std::fs::read_to_string(format!("/proc/{id}/task/{id}/children", id = unshare.id()))
            .unwrap();
    let pid: libc::pid_t = children.split_whitespace().next().unwrap().parse().unwrap();
    // SAFETY: signals the stand-in, a live child of our own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let deadline = Instant::now() + Duration::from_secs(1);
    let exited = loop {
        if let Some(status) = unshare.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let _ = unshare.kill();
    let _ = unshare.wait();
    assert!(exited.is_some(), "PID 1 stand-in ignored SIGTERM");
}
