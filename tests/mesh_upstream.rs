//! Online Boutique's own services on the local mesh (`--workloads upstream`): every pod in
//! network, mount and UTS namespaces of its own, calling its backends by Service name
//! through the mesh's Service addresses. The rendered boutique then sells: a product page,
//! a cart and a checkout that calls payment, shipping, email and currency, with upstream's
//! footer naming the pod that answered; and a Deployment whose PORT disagrees with its
//! probe's port never becomes ready, which a stand-in (it binds the declared ports) hid.

mod common;
mod support_gateway;

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, ListParams, Patch, PatchParams};

/// Upstream's shop in one environment, with a cookie jar: what a user's browser does.
fn shopper(host: &str) -> reqwest::Client {
    let ingress = cdcheck::substrate::DataPlane::local_mesh(common::mesh_state_dir());
    reqwest::Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::limited(5))
        .resolve(host, ingress.http)
        .timeout(Duration::from_secs(20))
        .build()
        .expect("a client")
}

/// `application/x-www-form-urlencoded`, as the shop's forms post.
fn form(request: reqwest::RequestBuilder, fields: &[(&str, &str)]) -> reqwest::RequestBuilder {
    let encode = |text: &str| -> String {
        text.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' => {
                    (b as char).to_string()
                }
                b' ' => "+".to_string(),
                other => format!("%{other:02X}"),
            })
            .collect()
    };
    let body: Vec<String> = fields
        .iter()
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect();
    request
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body.join("&"))
}

/// The access logs of the Istio sidecars of one app's pods in `env` (the runner's
/// `<mesh dir>/pods/<namespace>_<pod>_<uid>/istio-proxy.log`).
fn sidecar_logs(env: &str, app: &str) -> Vec<String> {
    let pods = cdcheck::mesh::mesh_dir(&common::mesh_state_dir()).join("pods");
    let prefix = format!("{env}_{app}-");
    std::fs::read_dir(&pods)
        .unwrap_or_else(|e| panic!("read {}: {e}", pods.display()))
        .flatten()
        .filter(|entry| entry.file_name().to_string_lossy().starts_with(&prefix))
        .filter_map(|entry| std::fs::read_to_string(entry.path().join("istio-proxy.log")).ok())
        .collect()
}

/// A Ready frontend pod's address.
async fn frontends_ip(client: &kube::Client, env: &str) -> std::net::Ipv4Addr {
    let pods: Api<Pod> = Api::namespaced(client.clone(), env);
    pods.list(&ListParams::default().labels("app=frontend"))
        .await
        .expect("list pods")
        .items
        .iter()
        .filter(|p| support_gateway::has_ready_condition(p))
        .find_map(|p| p.status.as_ref()?.pod_ip.as_ref()?.parse().ok())
        .expect("a Ready frontend pod with an address")
}

/// `GET /` in plaintext to `ip:8080` from the node's network namespace (outside the mesh):
/// what came back, empty when the connection was refused or closed.
async fn plaintext_from_node(ip: std::net::Ipv4Addr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let node = cdcheck::mesh::netns::name_for(&common::mesh_state_dir());
    let dialer = cdcheck::mesh::netns::Dialer::new(&node).expect("enter the node's namespace");
    let Ok(mut stream) = dialer.connect((ip, 8080).into()).await else {
        return String::new();
    };
    let request = "GET / HTTP/1.1\r\nHost: frontend\r\nConnection: close\r\n\r\n";
    if stream.write_all(request.as_bytes()).await.is_err() {
        return String::new();
    }
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer));
    let _ = read.await;
    String::from_utf8_lossy(&answer).into_owned()
}

/// The namespace's PeerAuthentication: STRICT mutual TLS for every workload in it.
async fn strict_mtls(client: &kube::Client, env: &str) {
    use kube::api::{ApiResource, DynamicObject, GroupVersionKind, PostParams};
    let resource = ApiResource::from_gvk(&GroupVersionKind::gvk(
        "security.istio.io",
        "v1",
        "PeerAuthentication",
    ));
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), env, &resource);
    let object: DynamicObject = serde_json::from_value(serde_json::json!({
        "apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
        "metadata": { "name": "default", "namespace": env },
        "spec": { "mtls": { "mode": "STRICT" } }
    }))
    .expect("a PeerAuthentication");
    api.create(&PostParams::default(), &object)
        .await
        .expect("create the PeerAuthentication");
}

async fn page(request: reqwest::RequestBuilder) -> (u16, String) {
    let response = request.send().await.expect("the gateway answers");
    let status = response.status().as_u16();
    (status, response.text().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_boutique_sells_through_the_gateway_and_its_footer_names_the_pod() {
    let Some(cluster) = common::mesh_upstream_cluster().await else {
        return;
    };
    let client = cluster.client.clone();
    let cluster_ref = &cluster;
    common::with_temp_env(&cluster, "upstream", |env| async move {
        let host = format!("{env}.boutique.test");
        // Injected as a run's environment is: every pod gets Istio's sidecar.
        let namespaces: Api<Namespace> = Api::all(client.clone());
        namespaces
            .patch(
                &env,
                &PatchParams::default(),
                &Patch::Merge(
                    serde_json::json!({"metadata": {"labels": {"istio-injection": "enabled"}}}),
                ),
            )
            .await
            .expect("label the namespace for injection");
        // The workloads and their Services only: the rendering's Gateway and certificate
        // live in istio-system, would outlive the namespace and serve `*` on 443 for every
        // later test; the frontend is exposed by a Gateway of the namespace's own instead.
        let bundle = common::only_services(
            &common::render(&env, "v0.10.6", |_| {}),
            &[
                "frontend",
                "adservice",
                "cartservice",
                "checkoutservice",
                "currencyservice",
                "emailservice",
                "paymentservice",
                "productcatalogservice",
                "recommendationservice",
                "shippingservice",
                "redis-cart",
            ],
        );
        common::deploy(cluster_ref, &bundle, &env).await;
        support_gateway::expose(&client, &env).await;
        support_gateway::wait_serving(&host).await;

        // Upstream's frontend names its pod in the footer only once its GCE metadata lookups
        // (cluster name, zone) gave up: through a sidecar, off Google Cloud, the metadata
        // address answers 503 and the client retries for about a minute, as it would on a
        // kind cluster with Istio. Pages are served meanwhile, without the pod's name.
        let named_by = std::time::Instant::now() + Duration::from_secs(150);
        while support_gateway::through_gateway(&host, 5)
            .await
            .0
            .is_empty()
        {
            assert!(
                std::time::Instant::now() < named_by,
                "no frontend footer named its pod within 150 s"
            );
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        // Every answer is attributed, by upstream's own footer, to a Ready frontend pod.
        let (by_pod, failed) = support_gateway::through_gateway(&host, 40).await;
        assert_eq!(failed, 0, "home page requests failed: {by_pod:?}");
        let frontends = support_gateway::ready_frontend_pods(&client, &env).await;
        assert!(!by_pod.is_empty(), "no answer was attributed");
        for pod in by_pod.keys() {
            assert!(
                frontends.contains(pod),
                "{pod} is no Ready frontend pod: {frontends:?}"
            );
        }

        // cartservice is a stand-in with carts in memory per pod (NuGet is out of reach, so
        // upstream's, which keeps them in redis-cart, cannot be built). Two replicas behind
        // two frontends' pinned connections would split one cart: one replica, and the
        // other pod gone, before shopping.
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &env);
        deployments
            .patch(
                "cartservice",
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({"spec": {"replicas": 1}})),
            )
            .await
            .expect("scale cartservice to 1");
        let pods: Api<Pod> = Api::namespaced(client.clone(), &env);
        let mut left = usize::MAX;
        for _ in 0..120 {
            left = pods
                .list(&ListParams::default().labels("app=cartservice"))
                .await
                .expect("list pods")
                .items
                .len();
            if left == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        assert_eq!(left, 1, "cartservice did not scale to one pod");

        let shop = shopper(&host);
        let base = format!("http://{host}");
        let (status, home) = page(shop.get(format!("{base}/"))).await;
        assert_eq!(status, 200, "{home}");
        // The home page lists the product catalogue's products, priced by currencyservice.
        assert!(
            home.contains("/product/OLJCESPC7Z"),
            "no products on the home page"
        );
        let (status, _) = page(form(
            shop.post(format!("{base}/cart")),
            &[("product_id", "OLJCESPC7Z"), ("quantity", "2")],
        ))
        .await;
        assert_eq!(status, 200, "adding to the cart failed");
        let (status, cart) = page(shop.get(format!("{base}/cart"))).await;
        assert_eq!(status, 200);
        assert!(
            cart.contains("Sunglasses"),
            "the cart lacks what was added: {cart}"
        );
        let (status, order) = page(form(
            shop.post(format!("{base}/cart/checkout")),
            &[
                ("email", "someone@example.com"),
                ("street_address", "1600 Amphitheatre Parkway"),
                ("zip_code", "94043"),
                ("city", "Mountain View"),
                ("state", "CA"),
                ("country", "United States"),
                ("credit_card_number", "4432801561520454"),
                ("credit_card_expiration_month", "1"),
                ("credit_card_expiration_year", "2030"),
                ("credit_card_cvv", "672"),
            ],
        ))
        .await;
        assert_eq!(status, 200, "checkout failed: {order}");
        assert!(order.contains("Your order is complete"), "{order}");

        // The frontend's calls went through Istio's sidecars at both ends: the frontend's
        // proxy logged them on productcatalogservice's outbound cluster, and that service's
        // proxy on its inbound one. Only captured traffic passes an Envoy.
        let catalog = format!("outbound|3550||productcatalogservice.{env}.svc.cluster.local");
        let frontend_logs = sidecar_logs(&env, "frontend");
        assert!(
            frontend_logs
                .iter()
                .any(|log| log.contains(&catalog) && log.contains("ListProducts")),
            "no frontend sidecar logged a call on {catalog}: {} logs",
            frontend_logs.len()
        );
        let catalog_logs = sidecar_logs(&env, "productcatalogservice");
        assert!(
            catalog_logs
                .iter()
                .any(|log| log.contains("inbound|3550||") && log.contains("ListProducts")),
            "no productcatalogservice sidecar logged an inbound call: {} logs",
            catalog_logs.len()
        );

        // Mutual TLS as a default install has it (auto mTLS): a frontend pod answers a
        // plaintext client from outside the mesh (the node) while the namespace is
        // PERMISSIVE; with a STRICT PeerAuthentication that client is refused, and the
        // gateway, which holds a workload certificate, still gets the shop.
        let frontend_ip = frontends_ip(&client, &env).await;
        assert!(
            plaintext_from_node(frontend_ip)
                .await
                .starts_with("HTTP/1.1 200"),
            "a PERMISSIVE frontend refused plaintext from the node"
        );
        strict_mtls(&client, &env).await;
        let refused_by = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let answer = plaintext_from_node(frontend_ip).await;
            if !answer.starts_with("HTTP/") {
                break;
            }
            assert!(
                std::time::Instant::now() < refused_by,
                "under STRICT mTLS the frontend still answers plaintext: {}",
                answer.lines().next().unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let (status, home) = page(shop.get(format!("{base}/"))).await;
        assert_eq!(
            status, 200,
            "the gateway lost the shop under STRICT mTLS: {home}"
        );

        // Control: productcatalogservice told to listen elsewhere than its probe and Service
        // say. Upstream's service obeys PORT, so its new pods never become ready.
        deployments
            .patch(
                "productcatalogservice",
                &PatchParams::default(),
                &Patch::Strategic(
                    serde_json::json!({"spec": {"template": {"spec": {"containers": [
                        {"name": "server", "env": [{"name": "PORT", "value": "3551"}]}
                    ]}}}}),
                ),
            )
            .await
            .expect("patch PORT");
        let mut mismatched = Vec::new();
        for _ in 0..40 {
            tokio::time::sleep(Duration::from_millis(500)).await;
            mismatched = pods
                .list(&ListParams::default().labels("app=productcatalogservice"))
                .await
                .expect("list pods")
                .items
                .into_iter()
                .filter(|p| {
                    p.spec.as_ref().is_some_and(|s| {
                        s.containers[0]
                            .env
                            .iter()
                            .flatten()
                            .any(|e| e.value.as_deref() == Some("3551"))
                    })
                })
                .collect();
            let running = mismatched
                .iter()
                .any(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"));
            if running {
                break;
            }
        }
        assert!(!mismatched.is_empty(), "the patched pod never started");
        // Its probe's initial delay has passed well before this (the reference sets none
        // beyond the probe's period); give it as long again.
        tokio::time::sleep(Duration::from_secs(10)).await;
        for pod in pods
            .list(&ListParams::default().labels("app=productcatalogservice"))
            .await
            .expect("list pods")
            .items
            .iter()
            .filter(|p| {
                mismatched
                    .iter()
                    .any(|m| m.metadata.name == p.metadata.name)
            })
        {
            assert!(
                !support_gateway::has_ready_condition(pod),
                "a productcatalogservice listening on 3551 passed a probe on 3550"
            );
        }
    })
    .await;
}
