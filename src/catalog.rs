//! The Online Boutique v0.10.6 workloads as typed data: what each service runs and how it is probed.
//!
//! The facts come from upstream's `release/kubernetes-manifests.yaml` at the
//! pinned tag; a test renders them back and compares with that file object by
//! object, so drift on either side is caught.

/// How the pipeline treats a workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Stateless gRPC/HTTP service: made highly available.
    Stateless,
    /// redis-cart: one replica, a known single point of failure (two independent
    /// Redis pods would split the carts).
    SingleInstance,
    /// loadgenerator: optional, never HA.
    LoadGenerator,
}

/// Where the image comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageSource {
    /// `<registry>/<name>:<release>`.
    Boutique,
    /// A fixed image reference.
    Fixed(&'static str),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeAction {
    /// Native gRPC probe (the images carry no grpc_health_probe).
    Grpc {
        port: i32,
    },
    /// HTTP GET with a `Cookie` header, so the frontend's session middleware
    /// does not mint a session per probe.
    HttpGet {
        path: &'static str,
        port: i32,
        cookie: &'static str,
    },
    TcpSocket {
        port: i32,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Probe {
    pub action: ProbeAction,
    pub initial_delay_seconds: Option<i32>,
    pub period_seconds: Option<i32>,
}

/// CPU and memory as Kubernetes quantities.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resources {
    pub request_cpu: &'static str,
    pub request_memory: &'static str,
    pub limit_cpu: &'static str,
    pub limit_memory: &'static str,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServiceType {
    ClusterIp,
    LoadBalancer,
}

/// A Service in front of the workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServicePort {
    pub service_name: &'static str,
    pub service_type: ServiceType,
    /// Port name; Istio's protocol selection reads its prefix (`grpc`, `http`, `tcp`).
    pub port_name: &'static str,
    pub port: i32,
    pub target_port: i32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ContainerPort {
    pub port: i32,
    pub name: Option<&'static str>,
}

/// An init container (loadgenerator waits for the frontend with one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InitContainer {
    pub name: &'static str,
    pub image: &'static str,
    pub command: &'static [&'static str],
    pub env: &'static [(&'static str, &'static str)],
}

/// One Online Boutique workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Workload {
    pub name: &'static str,
    pub role: Role,
    pub image: ImageSource,
    pub container_name: &'static str,
    pub container_port: Option<ContainerPort>,
    pub env: &'static [(&'static str, &'static str)],
    pub readiness: Option<Probe>,
    pub liveness: Option<Probe>,
    pub resources: Resources,
    /// Whether the workload runs as its own ServiceAccount (named after it).
    pub service_account: bool,
    pub termination_grace_period_seconds: Option<i64>,
    /// `sidecar.istio.io/rewriteAppHTTPProbers: "true"` on the pod.
    pub rewrite_app_http_probers: bool,
    pub services: &'static [ServicePort],
    /// Replicas upstream sets explicitly (only loadgenerator does).
    pub upstream_replicas: Option<i32>,
    /// An emptyDir mounted at this path (redis-cart's `/data`).
    pub data_volume: Option<(&'static str, &'static str)>,
    pub init_container: Option<InitContainer>,
    /// `restartPolicy: Always` written out (loadgenerator does).
    pub explicit_restart_policy: bool,
}

impl Workload {
    /// The image at a release tag (fixed images ignore the tag).
    pub fn image_at(&self, tag: &str) -> String {
        match self.image {
            ImageSource::Boutique => format!(
                "{}/{}:{}",
                crate::versions::ONLINE_BOUTIQUE_REGISTRY,
                self.name,
                tag
            ),
            ImageSource::Fixed(image) => image.to_string(),
        }
    }

    pub fn is_stateless(&self) -> bool {
        self.role == Role::Stateless
    }

    /// The gRPC port of a backend whose readiness is a gRPC health check.
    pub fn grpc_health_port(&self) -> Option<i32> {
        match self.readiness?.action {
            ProbeAction::Grpc { port } => Some(port),
            _ => None,
        }
    }
}

const fn grpc(port: i32, initial_delay_seconds: Option<i32>, period_seconds: Option<i32>) -> Probe {
    Probe {
        action: ProbeAction::Grpc { port },
        initial_delay_seconds,
        period_seconds,
    }
}

const fn resources(
    request_cpu: &'static str,
    request_memory: &'static str,
    limit_cpu: &'static str,
    limit_memory: &'static str,
) -> Resources {
    Resources {
        request_cpu,
        request_memory,
        limit_cpu,
        limit_memory,
    }
}

const fn grpc_service(name: &'static str, port: i32, target_port: i32) -> ServicePort {
    ServicePort {
        service_name: name,
        service_type: ServiceType::ClusterIp,
        port_name: "grpc",
        port,
        target_port,
    }
}

const fn port(port: i32) -> Option<ContainerPort> {
    Some(ContainerPort { port, name: None })
}

/// The cookie the frontend's readiness probe sends.
pub const READINESS_PROBE_COOKIE: &str = "shop_session-id=x-readiness-probe";
/// The cookie the frontend's liveness probe sends.
pub const LIVENESS_PROBE_COOKIE: &str = "shop_session-id=x-liveness-probe";
/// The frontend's health path; it calls no backend.
pub const FRONTEND_HEALTH_PATH: &str = "/_healthz";

const STANDARD: Workload = Workload {
    name: "",
    role: Role::Stateless,
    image: ImageSource::Boutique,
    container_name: "server",
    container_port: None,
    env: &[],
    readiness: None,
    liveness: None,
    resources: resources("100m", "64Mi", "200m", "128Mi"),
    service_account: true,
    termination_grace_period_seconds: Some(5),
    rewrite_app_http_probers: false,
    services: &[],
    upstream_replicas: None,
    data_volume: None,
    init_container: None,
    explicit_restart_policy: false,
};

const LOADGENERATOR_WAIT_SCRIPT: &str = r#"MAX_RETRIES=12
RETRY_INTERVAL=10
for i in $(seq 1 $MAX_RETRIES); do
  echo "Attempt $i: Pinging frontend: ${FRONTEND_ADDR}..."
  STATUSCODE=$(wget --server-response http://${FRONTEND_ADDR} 2>&1 | awk '/^  HTTP/{print $2}')
  if [ $STATUSCODE -eq 200 ]; then
      echo "Frontend is reachable."
      exit 0
  fi
  echo "Error: Could not reach frontend - Status code: ${STATUSCODE}"
  sleep $RETRY_INTERVAL
done
echo "Failed to reach frontend after $MAX_RETRIES attempts."
exit 1
"#;

static WORKLOADS: [Workload; 12] = [
    Workload {
        name: "emailservice",
        container_port: port(8080),
        env: &[("PORT", "8080"), ("DISABLE_PROFILER", "1")],
        readiness: Some(grpc(8080, None, Some(5))),
        liveness: Some(grpc(8080, None, Some(5))),
        // The Service listens on 5000 and targets the container's 8080.
        services: &[grpc_service("emailservice", 5000, 8080)],
        ..STANDARD
    },
    Workload {
        name: "checkoutservice",
        container_port: port(5050),
        env: &[
            ("PORT", "5050"),
            ("PRODUCT_CATALOG_SERVICE_ADDR", "productcatalogservice:3550"),
            ("SHIPPING_SERVICE_ADDR", "shippingservice:50051"),
            ("PAYMENT_SERVICE_ADDR", "paymentservice:50051"),
            ("EMAIL_SERVICE_ADDR", "emailservice:5000"),
            ("CURRENCY_SERVICE_ADDR", "currencyservice:7000"),
            ("CART_SERVICE_ADDR", "cartservice:7070"),
        ],
        readiness: Some(grpc(5050, None, None)),
        liveness: Some(grpc(5050, None, None)),
        termination_grace_period_seconds: None,
        services: &[grpc_service("checkoutservice", 5050, 5050)],
        ..STANDARD
    },
    Workload {
        name: "recommendationservice",
        container_port: port(8080),
        env: &[
            ("PORT", "8080"),
            ("PRODUCT_CATALOG_SERVICE_ADDR", "productcatalogservice:3550"),
            ("DISABLE_PROFILER", "1"),
        ],
        readiness: Some(grpc(8080, None, Some(5))),
        liveness: Some(grpc(8080, None, Some(5))),
        resources: resources("100m", "220Mi", "200m", "450Mi"),
        services: &[grpc_service("recommendationservice", 8080, 8080)],
        ..STANDARD
    },
    Workload {
        name: "frontend",
        container_port: port(8080),
        env: &[
            ("PORT", "8080"),
            ("PRODUCT_CATALOG_SERVICE_ADDR", "productcatalogservice:3550"),
            ("CURRENCY_SERVICE_ADDR", "currencyservice:7000"),
            ("CART_SERVICE_ADDR", "cartservice:7070"),
            ("RECOMMENDATION_SERVICE_ADDR", "recommendationservice:8080"),
            ("SHIPPING_SERVICE_ADDR", "shippingservice:50051"),
            ("CHECKOUT_SERVICE_ADDR", "checkoutservice:5050"),
            ("AD_SERVICE_ADDR", "adservice:9555"),
            (
                "SHOPPING_ASSISTANT_SERVICE_ADDR",
                "shoppingassistantservice:80",
            ),
            ("ENABLE_PROFILER", "0"),
        ],
        readiness: Some(Probe {
            action: ProbeAction::HttpGet {
                path: FRONTEND_HEALTH_PATH,
                port: 8080,
                cookie: READINESS_PROBE_COOKIE,
            },
            initial_delay_seconds: Some(10),
            period_seconds: None,
        }),
        liveness: Some(Probe {
            action: ProbeAction::HttpGet {
                path: FRONTEND_HEALTH_PATH,
                port: 8080,
                cookie: LIVENESS_PROBE_COOKIE,
            },
            initial_delay_seconds: Some(10),
            period_seconds: None,
        }),
        termination_grace_period_seconds: None,
        rewrite_app_http_probers: true,
        services: &[
            ServicePort {
                service_name: "frontend",
                service_type: ServiceType::ClusterIp,
                port_name: "http",
                port: 80,
                target_port: 8080,
            },
            ServicePort {
                service_name: "frontend-external",
                service_type: ServiceType::LoadBalancer,
                port_name: "http",
                port: 80,
                target_port: 8080,
            },
        ],
        ..STANDARD
    },
    Workload {
        name: "paymentservice",
        container_port: port(50051),
        env: &[("PORT", "50051"), ("DISABLE_PROFILER", "1")],
        readiness: Some(grpc(50051, None, None)),
        liveness: Some(grpc(50051, None, None)),
        services: &[grpc_service("paymentservice", 50051, 50051)],
        ..STANDARD
    },
    Workload {
        name: "productcatalogservice",
        container_port: port(3550),
        env: &[("PORT", "3550"), ("DISABLE_PROFILER", "1")],
        readiness: Some(grpc(3550, None, None)),
        liveness: Some(grpc(3550, None, None)),
        services: &[grpc_service("productcatalogservice", 3550, 3550)],
        ..STANDARD
    },
    Workload {
        name: "cartservice",
        container_port: port(7070),
        env: &[("REDIS_ADDR", "redis-cart:6379")],
        readiness: Some(grpc(7070, Some(15), None)),
        liveness: Some(grpc(7070, Some(15), Some(10))),
        resources: resources("200m", "64Mi", "300m", "128Mi"),
        services: &[grpc_service("cartservice", 7070, 7070)],
        ..STANDARD
    },
    Workload {
        name: "loadgenerator",
        role: Role::LoadGenerator,
        container_name: "main",
        env: &[
            ("FRONTEND_ADDR", "frontend:80"),
            ("USERS", "10"),
            ("RATE", "1"),
        ],
        resources: resources("300m", "256Mi", "500m", "512Mi"),
        rewrite_app_http_probers: true,
        upstream_replicas: Some(1),
        init_container: Some(InitContainer {
            name: "frontend-check",
            image: "busybox:1.38.0@sha256:fd8d9aa63ba2f0982b5304e1ee8d3b90a210bc1ffb5314d980eb6962f1a9715d",
            command: &["/bin/sh", "-exc", LOADGENERATOR_WAIT_SCRIPT],
            env: &[("FRONTEND_ADDR", "frontend:80")],
        }),
        explicit_restart_policy: true,
        ..STANDARD
    },
    Workload {
        name: "currencyservice",
        container_port: Some(ContainerPort {
            port: 7000,
            name: Some("grpc"),
        }),
        env: &[("PORT", "7000"), ("DISABLE_PROFILER", "1")],
        readiness: Some(grpc(7000, None, None)),
        liveness: Some(grpc(7000, None, None)),
        services: &[grpc_service("currencyservice", 7000, 7000)],
        ..STANDARD
    },
    Workload {
        name: "shippingservice",
        container_port: port(50051),
        env: &[("PORT", "50051"), ("DISABLE_PROFILER", "1")],
        readiness: Some(grpc(50051, None, Some(5))),
        liveness: Some(grpc(50051, None, None)),
        termination_grace_period_seconds: None,
        services: &[grpc_service("shippingservice", 50051, 50051)],
        ..STANDARD
    },
    Workload {
        name: "redis-cart",
        role: Role::SingleInstance,
        image: ImageSource::Fixed(crate::versions::REDIS_IMAGE),
        container_name: "redis",
        container_port: port(6379),
        readiness: Some(Probe {
            action: ProbeAction::TcpSocket { port: 6379 },
            initial_delay_seconds: None,
            period_seconds: Some(5),
        }),
        liveness: Some(Probe {
            action: ProbeAction::TcpSocket { port: 6379 },
            initial_delay_seconds: None,
            period_seconds: Some(5),
        }),
        resources: resources("70m", "200Mi", "125m", "256Mi"),
        service_account: false,
        termination_grace_period_seconds: None,
        services: &[ServicePort {
            service_name: "redis-cart",
            service_type: ServiceType::ClusterIp,
            port_name: "tcp-redis",
            port: 6379,
            target_port: 6379,
        }],
        data_volume: Some(("redis-data", "/data")),
        ..STANDARD
    },
    Workload {
        name: "adservice",
        container_port: port(9555),
        env: &[("PORT", "9555")],
        readiness: Some(grpc(9555, Some(20), Some(15))),
        liveness: Some(grpc(9555, Some(20), Some(15))),
        resources: resources("200m", "180Mi", "300m", "300Mi"),
        services: &[grpc_service("adservice", 9555, 9555)],
        ..STANDARD
    },
];

/// Every workload, in the order the issue lists them.
pub fn all() -> &'static [Workload] {
    &WORKLOADS
}

pub fn find(name: &str) -> Option<&'static Workload> {
    WORKLOADS.iter().find(|w| w.name == name)
}

pub fn names() -> Vec<&'static str> {
    WORKLOADS.iter().map(|w| w.name).collect()
}

/// The single points of failure the pipeline keeps on purpose, with the reason,
/// for reports.
pub fn known_single_points_of_failure() -> Vec<(&'static str, &'static str)> {
    WORKLOADS
        .iter()
        .filter(|w| w.role == Role::SingleInstance)
        .map(|w| {
            (
                w.name,
                "one replica: two independent Redis pods would split the carts",
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalog_has_the_twelve_workloads_with_ten_stateless() {
        assert_eq!(all().len(), 12);
        assert_eq!(all().iter().filter(|w| w.is_stateless()).count(), 10);
        let services: usize = all().iter().map(|w| w.services.len()).sum();
        assert_eq!(services, 12, "11 Services plus frontend-external");
        assert!(find("loadgenerator").unwrap().services.is_empty());
    }

    #[test]
    fn every_backend_is_probed_by_grpc_health() {
        for w in all()
            .iter()
            .filter(|w| w.is_stateless() && w.name != "frontend")
        {
            assert!(
                w.grpc_health_port().is_some(),
                "{} lacks a grpc probe",
                w.name
            );
        }
    }

    #[test]
    fn redis_is_the_only_known_single_point_of_failure() {
        let spofs = known_single_points_of_failure();
        assert_eq!(spofs.len(), 1);
        assert_eq!(spofs[0].0, "redis-cart");
    }
}
