//! The ingress Gateway and the `frontend` and `adservice` VirtualServices with their session routes.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::environment::managed_labels;
use super::istio::{self, GatewaySpec, Server, ServerPort, ServerTls, VirtualServiceSpec};
use super::routing::{self, cookie_session_route, default_route, userid_session_route};
use super::tls::INGRESS_CERT_SECRET;
use super::{ManifestError, Object, Options};
use crate::names::ISTIO_NAMESPACE;

/// The ingress Gateway's name; VirtualServices bind to `istio-system/ingressgateway`.
pub const GATEWAY_NAME: &str = "ingressgateway";
/// Port of the frontend Service and the adservice Service.
const FRONTEND_PORT: u32 = 80;
const ADSERVICE_PORT: u32 = 9555;

/// `istio-system/ingressgateway`: HTTPS (SIMPLE, the ingress certificate) on 443 and HTTP on 80.
pub fn gateway(options: &Options) -> istio::Gateway {
    let server = |number, name: &str, protocol: &str, tls| Server {
        port: ServerPort {
            number,
            name: name.to_string(),
            protocol: protocol.to_string(),
        },
        hosts: vec!["*".to_string()],
        tls,
    };
    let mut gateway = istio::Gateway::new(
        GATEWAY_NAME,
        GatewaySpec {
            selector: BTreeMap::from([("istio".to_string(), "ingressgateway".to_string())]),
            servers: vec![
                server(
                    443,
                    "https",
                    "HTTPS",
                    Some(ServerTls {
                        mode: "SIMPLE".to_string(),
                        credential_name: Some(INGRESS_CERT_SECRET.to_string()),
                        min_protocol_version: Some("TLSV1_2".to_string()),
                    }),
                ),
                server(80, "http", "HTTP", None),
            ],
        },
    );
    gateway.metadata = meta(GATEWAY_NAME, ISTIO_NAMESPACE, options);
    gateway
}

fn meta(name: &str, namespace: &str, options: &Options) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_string()),
        namespace: Some(namespace.to_string()),
        labels: Some(managed_labels(options)),
        ..ObjectMeta::default()
    }
}

/// The gateway-bound `frontend` VirtualService and the mesh `adservice` one,
/// each with a route per session to its feature branch, before the default.
pub fn virtual_services(options: &Options) -> Result<Vec<Object>, ManifestError> {
    let feature_of = |service: &str| options.features.iter().find(|f| f.service == service);

    let mut frontend = VirtualServiceSpec {
        hosts: vec![options.ingress_host()],
        gateways: vec![format!("{ISTIO_NAMESPACE}/{GATEWAY_NAME}")],
        http: vec![default_route(
            &local_host("frontend", options),
            FRONTEND_PORT,
        )],
    };
    let mut adservice = VirtualServiceSpec {
        hosts: vec![local_host("adservice", options)],
        gateways: vec!["mesh".to_string()],
        http: vec![default_route(
            &local_host("adservice", options),
            ADSERVICE_PORT,
        )],
    };
    for session in &options.sessions {
        if let Some(feature) = feature_of("frontend") {
            let route = cookie_session_route(
                session,
                &local_host(&feature.name(), options),
                FRONTEND_PORT,
            );
            frontend = routing::upsert_session_route(&frontend, route);
        }
        if let Some(feature) = feature_of("adservice") {
            let route = userid_session_route(
                session,
                &local_host(&feature.name(), options),
                ADSERVICE_PORT,
            );
            adservice = routing::upsert_session_route(&adservice, route);
        }
    }
    let mut objects = Vec::new();
    for (name, spec) in [("frontend", frontend), ("adservice", adservice)] {
        let mut vs = istio::VirtualService::new(name, spec);
        vs.metadata = meta(name, &options.env, options);
        objects.push(Object::VirtualService(vs));
    }
    Ok(objects)
}

/// A Service's cluster-local name, so the ingress gateway (in another namespace)
/// resolves it to this environment.
pub fn local_host(service: &str, options: &Options) -> String {
    format!("{service}.{}.svc.cluster.local", options.env)
}
