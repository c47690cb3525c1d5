//! Stand-in workloads: the process the local mesh runs for each pod, serving what the pipeline's checks ask of an Online Boutique service.
//!
//! The pod runner starts `cdcheck standin --image IMAGE --bind POD_IP --port PORT...` for
//! each pod, with the pod's env. The role comes from the image ([`role_from_image`]):
//!
//! - `frontend`: HTTP/1.1 and h2c; `GET /_healthz` answers `ok`, every other path a page
//!   with the `FRONTEND_MESSAGE` banner (when set) and a `<b>Pod: </b><name>` footer, the
//!   shapes [`AttributionRule::frontend_banner`] and [`AttributionRule::frontend_pod`] read.
//! - the gRPC backends: `grpc.health.v1.Health` (Check and Watch) SERVING for `""`, the
//!   workload's name and its `hipstershop.*` service (NOT_SERVING during a warm-up the
//!   pod's env may set, [`WARMUP_ENV`]); adservice also answers
//!   `hipstershop.AdService/GetAds` with ads that name the pod, and cartservice serves the
//!   real `hipstershop.CartService` (below). Other methods are UNIMPLEMENTED.
//! - `redis` (redis-cart): a TCP listener that answers `PING` with `+PONG`.
//! - `loadgenerator`: listens nowhere and waits to be signalled.
//!
//! cartservice is upstream's .NET service, which cannot be built here (NuGet is out of
//! reach), so its stand-in implements upstream's API instead of pretending: AddItem, GetCart
//! and EmptyCart of `hipstershop.CartService` as `proto/demo.proto` copies them, with the
//! semantics of upstream's `RedisCartStore`, so the real frontend and checkoutservice can
//! fill, read and empty carts through it. **Its carts are kept in memory, in the stand-in
//! process, not in redis-cart**: `REDIS_ADDR` is ignored and the summary line says
//! `carts=memory`. That is upstream's own mode when `REDIS_ADDR` is unset (the same store
//! code over .NET's in-memory distributed cache). Why not Redis: upstream writes each cart
//! through .NET's `IDistributedCache` (a Redis hash per user id, the serialized `Cart` beside
//! expiry fields), a shape worth keeping only with a Redis client crate, which cdcheck does not
//! depend on; and redis-cart's stand-in answers only `PING`, so a Redis-backed cart would fail
//! there until redis-cart runs the real `redis-server`. What it costs: carts live and die with
//! the cartservice pod, two cartservice pods (a rollout's surge, a scale-up) do not share
//! them, and a redis-cart outage does not fail cart calls as it would upstream. Its health is
//! the other backends' (above), where upstream's answers SERVING whatever service is named.
//!
//! Every HTTP response and gRPC response carries [`POD_HEADER`] (gRPC: in the headers and,
//! when the response has them, the trailers). An image tagged [`BROKEN_TAG`] starts and
//! listens but fails every health check (gRPC NOT_SERVING) and, for the frontend, every
//! page (500): a release that never becomes ready, whose failures show if traffic reaches it.
//!
//! It is the mesh's pod process, not a fake of the application's behaviour. On SIGTERM it
//! dies at once, as the real Go, Node and Python services do: open connections, in-flight
//! requests and streams are cut, so a missing preStop drain shows up as failed requests.
//!
//! [`AttributionRule::frontend_banner`]: crate::traffic::attribution::AttributionRule::frontend_banner
//! [`AttributionRule::frontend_pod`]: crate::traffic::attribution::AttributionRule::frontend_pod

use std::convert::Infallible;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use crate::names::BROKEN_TAG;
use crate::traffic::grpc::hipstershop::cart_service_server::{CartService, CartServiceServer};
use crate::traffic::grpc::hipstershop::{
    AddItemRequest, Cart, CartItem, Empty, EmptyCartRequest, GetCartRequest,
};
use crate::traffic::grpc::{Ad, AdRequest, AdResponse, AdService, AdServiceServer};

/// The response header (and gRPC response metadata) naming the pod that answered.
pub const POD_HEADER: &str = "x-cdcheck-pod";

/// Why a stand-in could not start or serve. Messages read after "failed to".
#[derive(Debug, thiserror::Error)]
pub enum StandinError {
    #[error(
        "recognize image `{image}`: the stand-in plays only the Online Boutique images ({known})"
    )]
    UnknownImage { image: String, known: String },
    #[error(
        "use pod name `{value}`: expected a non-empty name that is a valid HTTP header value \
         (give --pod-name, or set POD_NAME or HOSTNAME)"
    )]
    InvalidPodName { value: String },
    #[error("start {role}: it serves on its container ports, and no --port was given")]
    NoPorts { role: &'static str },
    #[error("bind {address}")]
    Bind {
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("start the async runtime")]
    Runtime {
        #[source]
        source: std::io::Error,
    },
    #[error("serve gRPC on {address}")]
    Grpc {
        address: SocketAddr,
        #[source]
        source: tonic::transport::Error,
    },
}

impl StandinError {
    /// Whether the image itself is the problem (the runner reports it like a failed image pull).
    pub fn is_unknown_image(&self) -> bool {
        matches!(self, Self::UnknownImage { .. })
    }
}

/// Which Online Boutique workload a stand-in plays.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    Frontend,
    AdService,
    CartService,
    CheckoutService,
    CurrencyService,
    EmailService,
    PaymentService,
    ProductCatalogService,
    RecommendationService,
    ShippingService,
    /// redis-cart (image `redis`).
    Redis,
    LoadGenerator,
}

/// What a role serves on its ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1 and h2c.
    Http,
    /// gRPC over h2c.
    Grpc,
    /// Redis's protocol, enough for `PING`.
    Redis,
    /// No ports.
    None,
}

impl Role {
    /// Every role, one per catalog workload.
    pub const ALL: [Role; 12] = [
        Role::Frontend,
        Role::AdService,
        Role::CartService,
        Role::CheckoutService,
        Role::CurrencyService,
        Role::EmailService,
        Role::PaymentService,
        Role::ProductCatalogService,
        Role::RecommendationService,
        Role::ShippingService,
        Role::Redis,
        Role::LoadGenerator,
    ];

    /// The image's name (its last path segment, without tag or digest).
    pub fn image_name(self) -> &'static str {
        match self {
            Role::Redis => "redis",
            other => other.workload(),
        }
    }

    /// The workload's name in [`crate::catalog`].
    pub fn workload(self) -> &'static str {
        match self {
            Role::Frontend => "frontend",
            Role::AdService => "adservice",
            Role::CartService => "cartservice",
            Role::CheckoutService => "checkoutservice",
            Role::CurrencyService => "currencyservice",
            Role::EmailService => "emailservice",
            Role::PaymentService => "paymentservice",
            Role::ProductCatalogService => "productcatalogservice",
            Role::RecommendationService => "recommendationservice",
            Role::ShippingService => "shippingservice",
            Role::Redis => "redis-cart",
            Role::LoadGenerator => "loadgenerator",
        }
    }

    /// The fully qualified gRPC service a backend implements (health checks may name it).
    pub fn grpc_service(self) -> Option<&'static str> {
        Some(match self {
            Role::AdService => "hipstershop.AdService",
            Role::CartService => "hipstershop.CartService",
            Role::CheckoutService => "hipstershop.CheckoutService",
            Role::CurrencyService => "hipstershop.CurrencyService",
            Role::EmailService => "hipstershop.EmailService",
            Role::PaymentService => "hipstershop.PaymentService",
            Role::ProductCatalogService => "hipstershop.ProductCatalogService",
            Role::RecommendationService => "hipstershop.RecommendationService",
            Role::ShippingService => "hipstershop.ShippingService",
            Role::Frontend | Role::Redis | Role::LoadGenerator => return None,
        })
    }

    pub fn protocol(self) -> Protocol {
        match self {
            Role::Frontend => Protocol::Http,
            Role::Redis => Protocol::Redis,
            Role::LoadGenerator => Protocol::None,
            _ => Protocol::Grpc,
        }
    }

    /// The names grpc.health.v1 answers for: the server (`""`), the workload and its service.
    pub fn health_names(self) -> Vec<&'static str> {
        let mut names = vec![""];
        if let Some(service) = self.grpc_service() {
            names.extend([self.workload(), service]);
        }
        names
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.workload())
    }
}

/// An image reference's name (last path segment) and tag, e.g.
/// `registry:5000/microservices-demo/frontend:v0.10.6@sha256:...` → (`frontend`, `v0.10.6`).
pub fn image_name_and_tag(image: &str) -> (&str, Option<&str>) {
    let image = crate::manifests::image::ImageRef::parse(image);
    (image.name(), image.tag)
}

/// The role an image plays: the Online Boutique image names, and `redis` for redis-cart.
pub fn role_from_image(image: &str) -> Result<Role, StandinError> {
    let (name, _) = image_name_and_tag(image.trim());
    Role::ALL
        .into_iter()
        .find(|role| role.image_name() == name)
        .ok_or_else(|| StandinError::UnknownImage {
            image: image.to_string(),
            known: Role::ALL.map(Role::image_name).join(", "),
        })
}

/// Whether the image is the broken release's: such a stand-in never becomes ready.
pub fn is_broken_image(image: &str) -> bool {
    image_name_and_tag(image.trim()).1 == Some(BROKEN_TAG)
}

/// What one stand-in process serves.
#[derive(Clone, Debug)]
pub struct Config {
    /// The container's image; it decides the role.
    pub image: String,
    /// The pod's IP.
    pub bind: IpAddr,
    /// The container ports (0 binds an ephemeral port; the summary line names it).
    pub ports: Vec<u16>,
    /// The pod's name, in responses and the frontend's footer.
    pub pod_name: String,
    /// The frontend's `FRONTEND_MESSAGE` (empty: no banner).
    pub frontend_message: Option<String>,
    /// How long a gRPC backend answers NOT_SERVING after it starts listening, as a service
    /// that warms a cache before it serves does ([`WARMUP_ENV`] in the pod's env).
    pub warmup: Duration,
}

/// The pod env variable that gives a gRPC stand-in a warm-up, in seconds: it listens at
/// once (a TCP probe passes) but answers NOT_SERVING until the warm-up ends.
pub const WARMUP_ENV: &str = "CDCHECK_STANDIN_WARMUP_SECONDS";

/// A stand-in with its ports bound, ready to serve.
#[derive(Debug)]
pub struct Standin {
    role: Role,
    broken: bool,
    pod: Arc<str>,
    pod_header: HeaderValue,
    tag: Option<String>,
    banner: Option<String>,
    warmup: Duration,
    listeners: Vec<TcpListener>,
    addresses: Vec<SocketAddr>,
}

/// Binds every port of the role (none for loadgenerator) and returns the stand-in.
pub async fn bind(config: Config) -> Result<Standin, StandinError> {
    let role = role_from_image(&config.image)?;
    let pod_header = HeaderValue::from_str(config.pod_name.trim())
        .ok()
        .filter(|v| !v.is_empty())
        .ok_or_else(|| StandinError::InvalidPodName {
            value: config.pod_name.clone(),
        })?;
    let ports = if role.protocol() == Protocol::None {
        Vec::new()
    } else if config.ports.is_empty() {
        return Err(StandinError::NoPorts {
            role: role.workload(),
        });
    } else {
        config.ports
    };
    let mut listeners = Vec::with_capacity(ports.len());
    let mut addresses = Vec::with_capacity(ports.len());
    for port in ports {
        let address = SocketAddr::new(config.bind, port);
        let listener = TcpListener::bind(address)
            .await
            .map_err(|source| StandinError::Bind { address, source })?;
        addresses.push(listener.local_addr().unwrap_or(address));
        listeners.push(listener);
    }
    let (_, tag) = image_name_and_tag(config.image.trim());
    Ok(Standin {
        role,
        broken: is_broken_image(&config.image),
        pod: Arc::from(config.pod_name.trim()),
        pod_header,
        tag: tag.map(str::to_string),
        banner: config.frontend_message.filter(|m| !m.trim().is_empty()),
        warmup: config.warmup,
        listeners,
        addresses,
    })
}

/// Binds, prints the one summary line to stderr, and serves until the process is signalled.
/// Runs on a current-thread runtime: a stand-in is one of up to a hundred on the machine.
pub fn run(config: Config) -> Result<(), StandinError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| StandinError::Runtime { source })?;
    runtime.block_on(async {
        let standin = bind(config).await?;
        eprintln!("{standin}");
        standin.serve().await
    })
}

/// Leaves SIGTERM with its default action (the process dies at once, cutting what is in
/// flight) even when the parent ignored it, which an exec would otherwise inherit. As PID 1 of
/// a PID namespace the kernel drops a default-action SIGTERM, so there a handler exits.
pub fn die_on_sigterm() {
    extern "C" fn exit_now(signal: libc::c_int) {
        // SAFETY: `_exit` is async-signal-safe.
        unsafe { libc::_exit(128 + signal) }
    }
    let handler = if std::process::id() == 1 {
        exit_now as extern "C" fn(libc::c_int) as libc::sighandler_t
    } else {
        libc::SIG_DFL
    };
    // SAFETY: installs a default disposition or a handler that only calls `_exit`.
    unsafe {
        libc::signal(libc::SIGTERM, handler);
    }
}

impl Standin {
    pub fn role(&self) -> Role {
        self.role
    }

    /// The bound addresses, in `--port` order.
    pub fn addresses(&self) -> &[SocketAddr] {
        &self.addresses
    }

    /// Whether it plays the broken release (never ready).
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// Serves every port until the process ends (it never returns `Ok` otherwise).
    pub async fn serve(self) -> Result<(), StandinError> {
        let mut servers: JoinSet<Result<(), StandinError>> = JoinSet::new();
        match self.role.protocol() {
            Protocol::Http => {
                let frontend = Arc::new(Frontend::new(
                    &self.pod,
                    self.pod_header.clone(),
                    self.banner.as_deref(),
                    self.broken,
                ));
                for listener in self.listeners {
                    servers.spawn(serve_http(listener, frontend.clone()));
                }
            }
            Protocol::Grpc => {
                let (reporter, routes) =
                    grpc_routes(self.role, &self.pod, self.broken, self.warmup).await;
                for (listener, address) in self.listeners.into_iter().zip(self.addresses) {
                    let routes = routes.clone();
                    let reporter = reporter.clone();
                    let pod_header = self.pod_header.clone();
                    servers.spawn(async move {
                        let _keep = reporter;
                        serve_grpc(listener, address, routes, pod_header).await
                    });
                }
            }
            Protocol::Redis => {
                for listener in self.listeners {
                    servers.spawn(serve_redis(listener));
                }
            }
            Protocol::None => {}
        }
        if servers.is_empty() {
            std::future::pending::<()>().await;
        }
        while let Some(result) = servers.join_next().await {
            if let Ok(Err(error)) = result {
                return Err(error);
            }
        }
        Ok(())
    }
}

/// The one line a stand-in logs: role, pod, image tag, addresses, whether a banner is set.
/// Never an env value (they may hold secrets): the banner's presence only.
impl fmt::Display for Standin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cdcheck standin: role={} pod={} tag={}",
            self.role,
            self.pod,
            self.tag.as_deref().unwrap_or("-")
        )?;
        if self.broken {
            f.write_str(" never-ready=true")?;
        }
        if self.role == Role::CartService {
            // Where carts are kept: in this process, not in redis-cart (the module doc says why).
            f.write_str(" carts=memory")?;
        }
        if self.role == Role::Frontend {
            write!(
                f,
                " banner={}",
                if self.banner.is_some() {
                    "set"
                } else {
                    "unset"
                }
            )?;
        }
        let addresses: Vec<String> = self.addresses.iter().map(ToString::to_string).collect();
        write!(
            f,
            " listening={}",
            if addresses.is_empty() {
                "none".to_string()
            } else {
                addresses.join(",")
            }
        )
    }
}

/// Waits out a failed accept (e.g. out of file descriptors) instead of spinning or dying.
async fn accept(listener: &TcpListener) -> TcpStream {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                return stream;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

/// The frontend's responses, rendered once.
#[derive(Debug)]
struct Frontend {
    pod_header: HeaderValue,
    page: Bytes,
    broken: bool,
}

impl Frontend {
    fn new(pod: &str, pod_header: HeaderValue, banner: Option<&str>, broken: bool) -> Self {
        let page = maud::html! {
            (maud::DOCTYPE)
            html lang="en" {
                head {
                    meta charset="utf-8";
                    title { "Online Boutique (cdcheck stand-in)" }
                }
                body {
                    @if let Some(banner) = banner {
                        div class="h-free-shipping" { (banner) }
                    }
                    main {
                        h1 { "Online Boutique" }
                        p { "A cdcheck stand-in for the frontend: the local mesh's pod process." }
                    }
                    footer { b { "Pod: " } (pod) }
                }
            }
        };
        Self {
            pod_header,
            page: Bytes::from(page.into_string()),
            broken,
        }
    }

    fn answer(&self, method: &Method, path: &str) -> Response<Full<Bytes>> {
        let (status, content_type, body) = if method != Method::GET && method != Method::HEAD {
            (
                StatusCode::METHOD_NOT_ALLOWED,
                "text/plain",
                Bytes::from_static(b"method not allowed\n"),
            )
        } else if self.broken {
            // A release that never becomes ready serves nothing right: traffic that
            // reaches it (a pod Ready without a readiness probe) shows as failures.
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain",
                Bytes::from_static(b"never ready: broken release\n"),
            )
        } else if path == crate::catalog::FRONTEND_HEALTH_PATH {
            (StatusCode::OK, "text/plain", Bytes::from_static(b"ok"))
        } else {
            (
                StatusCode::OK,
                "text/html; charset=utf-8",
                self.page.clone(),
            )
        };
        let mut response = Response::new(Full::new(body));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(POD_HEADER, self.pod_header.clone());
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static(content_type),
        );
        response
    }
}

/// The most of a request body the frontend reads before answering.
const MAX_REQUEST_BODY: usize = 1 << 20;

/// How long a page takes, as the real frontend's home page does while it calls its
/// backends (tens of milliseconds): requests are in flight long enough that a pod
/// killed without a preStop drain cuts some of them, as on a cluster. `/_healthz`
/// answers at once.
const PAGE_TIME: std::time::Duration = std::time::Duration::from_millis(25);

async fn serve_http(listener: TcpListener, frontend: Arc<Frontend>) -> Result<(), StandinError> {
    loop {
        let stream = accept(&listener).await;
        let frontend = frontend.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let frontend = frontend.clone();
                async move {
                    let (parts, body) = request.into_parts();
                    // Read the request body first, as a form handler does: a slow upload keeps
                    // the request in flight (what SIGTERM must be seen to cut).
                    let _ = Limited::new(body, MAX_REQUEST_BODY).collect().await;
                    if parts.uri.path() != crate::catalog::FRONTEND_HEALTH_PATH {
                        tokio::time::sleep(PAGE_TIME).await;
                    }
                    Ok::<_, Infallible>(frontend.answer(&parts.method, parts.uri.path()))
                }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// AdService: ads that name the pod, and the pod in the response metadata.
struct Ads {
    pod: Arc<str>,
}

#[tonic::async_trait]
impl AdService for Ads {
    async fn get_ads(
        &self,
        request: tonic::Request<AdRequest>,
    ) -> Result<tonic::Response<AdResponse>, tonic::Status> {
        let keys = request.into_inner().context_keys;
        let about = if keys.is_empty() {
            "anything".to_string()
        } else {
            keys.join(", ")
        };
        Ok(tonic::Response::new(AdResponse {
            ads: vec![Ad {
                redirect_url: "/product/OLJCESPC7Z".to_string(),
                text: format!("Stand-in ad for {about}, served by pod {}", self.pod),
            }],
        }))
    }
}

/// CartService with upstream's `RedisCartStore` semantics, its carts in memory (the module
/// doc says why): user id → the cart, the value upstream stores under the user id.
#[derive(Debug, Default)]
struct Carts {
    carts: std::sync::Mutex<std::collections::HashMap<String, Cart>>,
}

impl Carts {
    fn carts(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, Cart>> {
        // No code path panics while holding the lock, but a poisoned map is still whole.
        self.carts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[tonic::async_trait]
impl CartService for Carts {
    /// Adds the quantity to the item of the same product id, else appends the item; a user
    /// without a stored cart gets a new one carrying their user id (upstream's AddItemAsync).
    async fn add_item(
        &self,
        request: tonic::Request<AddItemRequest>,
    ) -> Result<tonic::Response<Empty>, tonic::Status> {
        let AddItemRequest { user_id, item } = request.into_inner();
        // Upstream reads `request.Item.ProductId` unchecked: a missing item is a handler
        // exception, which ASP.NET's gRPC answers as UNKNOWN, before any cart is touched.
        let Some(CartItem {
            product_id,
            quantity,
        }) = item
        else {
            return Err(tonic::Status::unknown(
                "Exception was thrown by handler. (AddItemRequest has no item)",
            ));
        };
        let mut carts = self.carts();
        let cart = carts.entry(user_id.clone()).or_insert_with(|| Cart {
            user_id,
            items: Vec::new(),
        });
        match cart.items.iter_mut().find(|i| i.product_id == product_id) {
            // C#'s `+=` on an int wraps on overflow (unchecked by default).
            Some(existing) => existing.quantity = existing.quantity.wrapping_add(quantity),
            None => cart.items.push(CartItem {
                product_id,
                quantity,
            }),
        }
        Ok(tonic::Response::new(Empty {}))
    }

    /// The stored cart, or an empty `Cart` (its user_id unset too) for a user without one,
    /// as upstream's GetCartAsync and its test `GetItem_NoAddItemBefore_EmptyCartReturned`.
    async fn get_cart(
        &self,
        request: tonic::Request<GetCartRequest>,
    ) -> Result<tonic::Response<Cart>, tonic::Status> {
        let user_id = request.into_inner().user_id;
        let cart = self.carts().get(&user_id).cloned().unwrap_or_default();
        Ok(tonic::Response::new(cart))
    }

    /// Stores an empty `Cart` under the user id, as upstream's EmptyCartAsync does (rather
    /// than deleting it): a later AddItem then fills that cart, whose user_id stays unset.
    async fn empty_cart(
        &self,
        request: tonic::Request<EmptyCartRequest>,
    ) -> Result<tonic::Response<Empty>, tonic::Status> {
        let user_id = request.into_inner().user_id;
        self.carts().insert(user_id, Cart::default());
        Ok(tonic::Response::new(Empty {}))
    }
}

async fn grpc_routes(
    role: Role,
    pod: &Arc<str>,
    broken: bool,
    warmup: Duration,
) -> (tonic_health::server::HealthReporter, tonic::service::Routes) {
    let (reporter, health) = tonic_health::server::health_reporter();
    let status = if broken || !warmup.is_zero() {
        tonic_health::ServingStatus::NotServing
    } else {
        tonic_health::ServingStatus::Serving
    };
    for name in role.health_names() {
        reporter.set_service_status(name, status).await;
    }
    if !broken && !warmup.is_zero() {
        let reporter = reporter.clone();
        tokio::spawn(async move {
            tokio::time::sleep(warmup).await;
            for name in role.health_names() {
                reporter
                    .set_service_status(name, tonic_health::ServingStatus::Serving)
                    .await;
            }
        });
    }
    let mut routes = tonic::service::Routes::builder();
    routes.add_service(health);
    match role {
        Role::AdService => {
            routes.add_service(AdServiceServer::new(Ads { pod: pod.clone() }));
        }
        Role::CartService => {
            routes.add_service(CartServiceServer::new(Carts::default()));
        }
        _ => {}
    }
    (reporter, routes.routes())
}

async fn serve_grpc(
    listener: TcpListener,
    address: SocketAddr,
    routes: tonic::service::Routes,
    pod_header: HeaderValue,
) -> Result<(), StandinError> {
    // Every gRPC response (health, GetAds, the cart calls, UNIMPLEMENTED) names the pod in its
    // headers, and in its trailers when it has any (a trailers-only response carries just the
    // headers).
    let name_pod =
        tower::util::MapResponseLayer::new(move |response: http::Response<tonic::body::Body>| {
            let mut response = response.map(|inner| PodTrailer {
                inner,
                pod: pod_header.clone(),
            });
            response
                .headers_mut()
                .insert(POD_HEADER, pod_header.clone());
            response
        });
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    tonic::transport::Server::builder()
        .layer(name_pod)
        .add_routes(routes)
        .serve_with_incoming(incoming)
        .await
        .map_err(|source| StandinError::Grpc { address, source })
}

/// A response body whose trailers gain [`POD_HEADER`].
struct PodTrailer<B> {
    inner: B,
    pod: HeaderValue,
}

impl<B> hyper::body::Body for PodTrailer<B>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => Poll::Ready(Some(Ok(match frame.into_trailers() {
                Ok(mut trailers) => {
                    trailers.insert(POD_HEADER, this.pod.clone());
                    Frame::trailers(trailers)
                }
                Err(frame) => frame,
            }))),
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

async fn serve_redis(listener: TcpListener) -> Result<(), StandinError> {
    loop {
        let stream = accept(&listener).await;
        tokio::spawn(redis_connection(stream));
    }
}

/// Answers Redis commands, inline (`PING\r\n`) or as RESP arrays of bulk strings:
/// `PING` gets `+PONG`, anything else an error. Ends the connection on malformed input.
async fn redis_connection(mut stream: TcpStream) {
    let mut buffer = Vec::with_capacity(256);
    let mut chunk = [0u8; 1024];
    loop {
        while let Some((command, used)) = parse_redis_command(&buffer) {
            buffer.drain(..used);
            let reply: &[u8] = match command {
                RedisCommand::Ping => b"+PONG\r\n",
                RedisCommand::Other => b"-ERR cdcheck stand-in answers only PING\r\n",
                RedisCommand::Malformed => {
                    let _ = stream.write_all(b"-ERR Protocol error\r\n").await;
                    return;
                }
            };
            if stream.write_all(reply).await.is_err() {
                return;
            }
        }
        if buffer.len() > 64 * 1024 {
            return;
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum RedisCommand {
    Ping,
    Other,
    Malformed,
}

/// One complete command at the start of `buffer` and the bytes it used; `None` if incomplete.
fn parse_redis_command(buffer: &[u8]) -> Option<(RedisCommand, usize)> {
    let line_end = |from: usize| {
        buffer[from..]
            .windows(2)
            .position(|w| w == b"\r\n")
            .map(|p| from + p)
    };
    let number = |line: &[u8]| -> Option<usize> { std::str::from_utf8(line).ok()?.parse().ok() };
    let first = line_end(0)?;
    if buffer.first() != Some(&b'*') {
        let line = String::from_utf8_lossy(&buffer[..first]);
        let word = line.split_whitespace().next().unwrap_or("");
        let command = if word.eq_ignore_ascii_case("ping") {
            RedisCommand::Ping
        } else {
            RedisCommand::Other
        };
        return Some((command, first + 2));
    }
    let Some(count) = number(&buffer[1..first]) else {
        return Some((RedisCommand::Malformed, buffer.len()));
    };
    let mut at = first + 2;
    let mut name = None;
    for _ in 0..count {
        let header_end = line_end(at)?;
        if buffer.get(at) != Some(&b'$') {
            return Some((RedisCommand::Malformed, buffer.len()));
        }
        let Some(len) = number(&buffer[at + 1..header_end]) else {
            return Some((RedisCommand::Malformed, buffer.len()));
        };
        let start = header_end + 2;
        if buffer.len() < start + len + 2 {
            return None;
        }
        name.get_or_insert_with(|| buffer[start..start + len].to_vec());
        at = start + len + 2;
    }
    let command = match name {
        Some(name) if name.eq_ignore_ascii_case(b"ping") => RedisCommand::Ping,
        _ => RedisCommand::Other,
    };
    Some((command, at))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::traffic::attribution::{AttributionRule, ResponseView};
    use rstest::rstest;

    #[rstest]
    #[case(
        "us-central1-docker.pkg.dev/online-boutique-ci/microservices-demo/frontend:v0.10.6",
        Role::Frontend
    )]
    #[case("redis:alpine", Role::Redis)]
    #[case("redis", Role::Redis)]
    #[case("docker.io/library/redis:alpine@sha256:0123abcd", Role::Redis)]
    #[case("localhost:5000/adservice:0.10.6-myfeature", Role::AdService)]
    #[case(
        "registry.test/boutique/cartservice@sha256:0123abcd",
        Role::CartService
    )]
    #[case(
        "registry.test/boutique/frontend:cdcheck-broken-never-ready",
        Role::Frontend
    )]
    #[case("loadgenerator:v0.10.6", Role::LoadGenerator)]
    fn role_from_image_reads_the_last_path_segment(#[case] image: &str, #[case] role: Role) {
        assert_eq!(role_from_image(image).unwrap(), role);
    }

    #[rstest]
    #[case("nginx:1.27")]
    #[case("registry.test/frontend-v2:1")]
    #[case("frontend.example/nginx:1")]
    #[case("")]
    #[case("registry.test/boutique/")]
    fn unknown_images_are_refused_and_named(#[case] image: &str) {
        let error = role_from_image(image).unwrap_err();
        assert!(error.is_unknown_image());
        let message = error.to_string();
        assert!(message.contains(&format!("`{image}`")), "{message}");
        assert!(message.contains("frontend, adservice"), "{message}");
    }

    #[test]
    fn every_catalog_image_at_a_release_maps_to_its_role() {
        let workloads: Vec<&str> = Role::ALL.iter().map(|r| r.workload()).collect();
        assert_eq!(workloads.len(), crate::catalog::all().len());
        for workload in crate::catalog::all() {
            let image = workload.image_at(crate::versions::ONLINE_BOUTIQUE);
            let role = role_from_image(&image).unwrap();
            assert_eq!(role.workload(), workload.name, "{image}");
            assert_eq!(
                role.protocol() == Protocol::Grpc,
                workload.grpc_health_port().is_some(),
                "{image}: gRPC roles are exactly the gRPC-probed workloads"
            );
        }
    }

    #[test]
    fn only_the_broken_tag_is_never_ready() {
        assert!(is_broken_image(&format!("reg.test/frontend:{BROKEN_TAG}")));
        assert!(is_broken_image(&format!(
            "reg.test/frontend:{BROKEN_TAG}@sha256:00"
        )));
        assert!(!is_broken_image("reg.test/frontend:v0.10.6"));
        assert!(!is_broken_image(&format!(
            "reg.test/frontend:{BROKEN_TAG}-2"
        )));
        assert!(!is_broken_image("reg.test/frontend"));
    }

    fn page(banner: Option<&str>) -> String {
        let frontend = Frontend::new(
            "frontend-7d9c-abcde",
            HeaderValue::from_static("frontend-7d9c-abcde"),
            banner,
            false,
        );
        String::from_utf8(frontend.page.to_vec()).unwrap()
    }

    #[test]
    fn the_page_is_attributed_by_pod_and_banner_with_the_banner_escaped() {
        let headers = http::HeaderMap::new();
        let body = page(Some("feature <b>x</b> & \"y\""));
        let view = ResponseView {
            headers: &headers,
            body: body.as_bytes(),
        };
        assert_eq!(
            AttributionRule::frontend_pod().label(view),
            Some("frontend-7d9c-abcde".to_string())
        );
        assert_eq!(
            AttributionRule::frontend_banner().label(view),
            Some("feature &lt;b&gt;x&lt;/b&gt; &amp; &quot;y&quot;".to_string())
        );
        let plain = page(None);
        assert!(!plain.contains("h-free-shipping"), "{plain}");
    }

    #[rstest]
    #[case(b"PING\r\n", Some((RedisCommand::Ping, 6)))]
    #[case(b"ping extra\r\nPING", Some((RedisCommand::Ping, 12)))]
    #[case(b"*1\r\n$4\r\nPING\r\n", Some((RedisCommand::Ping, 14)))]
    #[case(b"*2\r\n$4\r\nPING\r\n$2\r\nhi\r\n", Some((RedisCommand::Ping, 22)))]
    #[case(b"*1\r\n$3\r\nGET\r\n", Some((RedisCommand::Other, 13)))]
    #[case(b"*1\r\n$4\r\nPI", None)]
    #[case(b"PIN", None)]
    #[case(b"*x\r\n", Some((RedisCommand::Malformed, 4)))]
    fn redis_commands_are_parsed_inline_and_as_arrays(
        #[case] input: &[u8],
        #[case] expected: Option<(RedisCommand, usize)>,
    ) {
        assert_eq!(parse_redis_command(input), expected);
    }
}
