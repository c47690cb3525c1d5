//! The cartservice stand-in as the pod runner starts it (`cdcheck standin --image
//! .../cartservice:v0.10.6`): upstream's `hipstershop.CartService` API with its
//! `RedisCartStore` semantics, carts kept in memory while `REDIS_ADDR` names redis-cart's
//! stand-in (which answers only PING), health, and the pod named on every answer. Plus a
//! check that `proto/demo.proto`'s CartService is upstream's, when upstream's sources are here.

#[path = "common/skip.rs"]
mod skip;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use cdcheck::names::BROKEN_TAG;
use cdcheck::standin::POD_HEADER;
use cdcheck::traffic::grpc::hipstershop::cart_service_client::CartServiceClient;
use cdcheck::traffic::grpc::hipstershop::{
    AddItemRequest, Cart, CartItem, EmptyCartRequest, GetCartRequest,
};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const REGISTRY: &str = "us-central1-docker.pkg.dev/online-boutique-ci/microservices-demo";

/// A running `cdcheck standin` on one ephemeral port of 127.0.0.1; killed when dropped.
struct Standin {
    child: Child,
    address: SocketAddr,
    line: String,
}

impl Standin {
    /// Starts the binary and waits for its summary line.
    fn start(image: &str, pod: &str, env: &[(&str, &str)]) -> Standin {
        let mut child = Command::new(env!("CARGO_BIN_EXE_cdcheck"))
            .args(["standin", "--image", image, "--bind", "127.0.0.1"])
            .args(["--port", "0"])
            .env("POD_NAME", pod)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn cdcheck standin");
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
        let Ok(line) = rx.recv_timeout(Duration::from_secs(20)) else {
            let _ = child.kill();
            panic!("cdcheck standin {image} printed no start line");
        };
        let address = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("listening="))
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no single listening= address in {line:?}"));
        Standin {
            child,
            address,
            line,
        }
    }
}

impl Drop for Standin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn channel(address: SocketAddr) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .expect("connect gRPC")
}

fn add(user: &str, product: &str, quantity: i32) -> AddItemRequest {
    AddItemRequest {
        user_id: user.to_string(),
        item: Some(CartItem {
            product_id: product.to_string(),
            quantity,
        }),
    }
}

fn get(user: &str) -> GetCartRequest {
    GetCartRequest {
        user_id: user.to_string(),
    }
}

fn item(product: &str, quantity: i32) -> CartItem {
    CartItem {
        product_id: product.to_string(),
        quantity,
    }
}

/// The calls the real frontend and checkoutservice make on a checkout (AddItem from the
/// product page, GetCart for the cart page and PlaceOrder, EmptyCart once the order is
/// placed), with the answers upstream's CartService gives.
#[tokio::test]
async fn cart_calls_answer_as_upstreams_cartservice_with_carts_in_memory() {
    // As in the mesh: REDIS_ADDR names redis-cart, whose stand-in answers only PING.
    let redis = Standin::start("redis:alpine", "redis-cart-1", &[]);
    let redis_addr = redis.address.to_string();
    let pod = "cartservice-6b7d-k2j4x";
    let cart = Standin::start(
        &format!("{REGISTRY}/cartservice:v0.10.6"),
        pod,
        &[("REDIS_ADDR", redis_addr.as_str())],
    );
    assert!(cart.line.contains("role=cartservice"), "{}", cart.line);
    assert!(cart.line.contains("carts=memory"), "{}", cart.line);
    assert!(
        !cart.line.contains(&redis_addr),
        "no env value: {}",
        cart.line
    );

    let mut health = HealthClient::new(channel(cart.address).await);
    for service in ["", "hipstershop.CartService"] {
        let response = health
            .check(HealthCheckRequest {
                service: service.to_string(),
            })
            .await
            .unwrap_or_else(|status| panic!("health {service:?}: {status}"));
        assert_eq!(response.metadata().get(POD_HEADER).unwrap(), pod);
        assert_eq!(
            response.into_inner().status(),
            ServingStatus::Serving,
            "{service:?}"
        );
    }

    let mut client = CartServiceClient::new(channel(cart.address).await);
    let (alice, bob) = ("session-alice", "session-bob");
    // The same product twice adds up (1 + 2: neither overwritten nor dropped).
    let response = client.add_item(add(alice, "OLJCESPC7Z", 1)).await.unwrap();
    assert_eq!(response.metadata().get(POD_HEADER).unwrap(), pod);
    client.add_item(add(alice, "OLJCESPC7Z", 2)).await.unwrap();
    client.add_item(add(alice, "66VCHSJNUP", 5)).await.unwrap();
    client.add_item(add(bob, "OLJCESPC7Z", 4)).await.unwrap();

    let response = client.get_cart(get(alice)).await.unwrap();
    assert_eq!(response.metadata().get(POD_HEADER).unwrap(), pod);
    assert_eq!(
        response.into_inner(),
        Cart {
            user_id: alice.to_string(),
            items: vec![item("OLJCESPC7Z", 3), item("66VCHSJNUP", 5)],
        },
        "one line per product, in the order first added"
    );

    // A user never seen: upstream answers `new Cart()`, its user_id unset too.
    let unknown = client.get_cart(get("session-nobody")).await.unwrap();
    assert_eq!(unknown.into_inner(), Cart::default());

    let response = client
        .empty_cart(EmptyCartRequest {
            user_id: alice.to_string(),
        })
        .await
        .unwrap();
    assert_eq!(response.metadata().get(POD_HEADER).unwrap(), pod);
    let emptied = client.get_cart(get(alice)).await.unwrap().into_inner();
    assert_eq!(emptied, Cart::default(), "upstream stores an empty Cart");
    assert_eq!(
        client.get_cart(get(bob)).await.unwrap().into_inner(),
        Cart {
            user_id: bob.to_string(),
            items: vec![item("OLJCESPC7Z", 4)],
        },
        "emptying one cart leaves the others"
    );

    // Upstream reads the item unchecked: without one the handler throws (UNKNOWN), and no
    // cart is made.
    let status = client
        .add_item(AddItemRequest {
            user_id: "session-carol".to_string(),
            item: None,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unknown, "{status}");
    assert_eq!(
        client
            .get_cart(get("session-carol"))
            .await
            .unwrap()
            .into_inner(),
        Cart::default()
    );
}

/// Only cartservice serves CartService; another backend answers UNIMPLEMENTED (naming its
/// pod). A broken cartservice release fails its health checks as every backend does.
#[tokio::test]
async fn only_cartservice_serves_carts_and_a_broken_release_is_never_ready() {
    let ads = Standin::start(&format!("{REGISTRY}/adservice:v0.10.6"), "adservice-1", &[]);
    let mut client = CartServiceClient::new(channel(ads.address).await);
    let status = client.get_cart(get("session-alice")).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unimplemented);
    assert_eq!(status.metadata().get(POD_HEADER).unwrap(), "adservice-1");

    let broken = Standin::start(
        &format!("{REGISTRY}/cartservice:{BROKEN_TAG}"),
        "cartservice-broken-1",
        &[],
    );
    assert!(broken.line.contains("never-ready=true"), "{}", broken.line);
    let mut health = HealthClient::new(channel(broken.address).await);
    let response = health.check(HealthCheckRequest::default()).await.unwrap();
    assert_eq!(response.into_inner().status(), ServingStatus::NotServing);
}

/// The CartService definitions in `proto/demo.proto` are upstream's, token for token: they
/// are the wire API the real frontend and checkoutservice were built against.
#[test]
fn the_cart_service_proto_is_upstreams() {
    let upstream = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/boutique-src/protos/demo.proto"
    );
    let Ok(upstream) = std::fs::read_to_string(upstream) else {
        skip::skip_or_fail(&format!(
            "upstream's {upstream} is not readable; it is expected in ../shared/boutique-src \
             beside the clone"
        ));
        return;
    };
    let ours = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/proto/demo.proto"))
        .expect("read proto/demo.proto");
    let cart_section = |text: &str| -> String {
        let start = text
            .find("service CartService")
            .expect("a CartService section");
        let end = start
            + text[start..]
                .find("message Empty {}")
                .expect("message Empty after CartService")
            + "message Empty {}".len();
        text[start..end]
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert_eq!(cart_section(&ours), cart_section(&upstream));
}
