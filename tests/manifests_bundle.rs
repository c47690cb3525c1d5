//! What a pipeline render holds: counts, HA, strategies, feature branches, RBAC, TLS and routing, plus snapshots.

mod support_manifests;

use std::collections::BTreeMap;

use cdcheck::manifests::istio::StringMatch;
use cdcheck::manifests::{
    self, Bundle, FeatureBranch, Object, Options, RbacMode, SessionId, Strategy, routing,
};
use k8s_openapi::ByteString;
use support_manifests::{deployment, first_container};

fn render(options: &Options) -> Bundle {
    cdcheck::install_crypto_provider();
    manifests::render(options).expect("render")
}

fn featured() -> Options {
    let mut options = Options::for_env("dev");
    options
        .features
        .push(FeatureBranch::new("frontend", "0.10.6-myfeature").unwrap());
    options
        .features
        .push(FeatureBranch::new("adservice", "0.10.6-myfeature").unwrap());
    options
        .sessions
        .push(SessionId::parse("3f1c2a9e-0d1b-4c55-9a37-1b2c3d4e5f60").unwrap());
    options.sessions.push(SessionId::parse("tester2").unwrap());
    options
}

fn count(bundle: &Bundle, kind: &str) -> usize {
    bundle.of_kind(kind).count()
}

#[test]
fn default_dev_render_holds_everything_the_pipeline_deploys() {
    let bundle = render(&Options::for_env("dev"));
    assert_eq!(count(&bundle, "Deployment"), 12);
    assert_eq!(count(&bundle, "PodDisruptionBudget"), 10);
    assert_eq!(count(&bundle, "Namespace"), 1);
    assert_eq!(count(&bundle, "Role"), 1);
    assert_eq!(count(&bundle, "RoleBinding"), 1);
    assert_eq!(count(&bundle, "Secret"), 1);
    assert_eq!(count(&bundle, "Gateway"), 1);
    assert_eq!(count(&bundle, "VirtualService"), 2);
    assert_eq!(count(&bundle, "Service"), 12);
    // 11 workload accounts plus the deployer.
    assert_eq!(count(&bundle, "ServiceAccount"), 12);
    assert!(
        matches!(bundle.objects[0], Object::Namespace(_)),
        "namespace first"
    );
}

#[test]
fn ten_stateless_deployments_are_highly_available() {
    let bundle = render(&Options::for_env("dev"));
    let mut ha = Vec::new();
    for deployment in bundle.deployments() {
        let spec = deployment.spec.as_ref().unwrap();
        let pod = spec.template.spec.as_ref().unwrap();
        let name = deployment.metadata.name.clone().unwrap();
        let anti_affinity = pod
            .affinity
            .as_ref()
            .and_then(|a| a.pod_anti_affinity.as_ref())
            .and_then(|a| {
                a.preferred_during_scheduling_ignored_during_execution
                    .as_ref()
            });
        if let (Some(2), Some(anti_affinity)) = (spec.replicas, anti_affinity) {
            let term = &anti_affinity[0].pod_affinity_term;
            assert_eq!(term.topology_key, "kubernetes.io/hostname");
            let selector = term
                .label_selector
                .as_ref()
                .unwrap()
                .match_labels
                .as_ref()
                .unwrap();
            assert_eq!(selector["app"], name);
            let container = &pod.containers[0];
            let pre_stop = container
                .lifecycle
                .as_ref()
                .unwrap()
                .pre_stop
                .as_ref()
                .unwrap();
            let delay = pre_stop.sleep.as_ref().unwrap().seconds;
            assert!(
                pod.termination_grace_period_seconds.unwrap() > delay,
                "{name}: grace period must outlast the preStop drain"
            );
            let strategy = spec.strategy.as_ref().unwrap();
            assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"));
            assert!(
                bundle.find("PodDisruptionBudget", &name).is_some(),
                "{name} has no PDB"
            );
            ha.push(name);
        } else {
            assert_eq!(spec.replicas, Some(1), "{name}");
        }
    }
    ha.sort();
    assert_eq!(
        ha,
        [
            "adservice",
            "cartservice",
            "checkoutservice",
            "currencyservice",
            "emailservice",
            "frontend",
            "paymentservice",
            "productcatalogservice",
            "recommendationservice",
            "shippingservice"
        ]
    );
}

#[test]
fn pod_disruption_budgets_keep_one_pod_of_each_service() {
    let bundle = render(&Options::for_env("dev"));
    for object in bundle.of_kind("PodDisruptionBudget") {
        let Object::PodDisruptionBudget(pdb) = object else {
            unreachable!()
        };
        let spec = pdb.spec.as_ref().unwrap();
        assert_eq!(
            spec.min_available,
            Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(1))
        );
        let selector = spec
            .selector
            .as_ref()
            .unwrap()
            .match_labels
            .as_ref()
            .unwrap();
        assert_eq!(selector["app"], object.name());
    }
}

#[test]
fn redis_cart_stays_single_and_is_replaced_in_place() {
    let bundle = render(&Options::for_env("dev"));
    let redis = deployment(&bundle, "redis-cart");
    let spec = redis.spec.as_ref().unwrap();
    assert_eq!(spec.replicas, Some(1));
    assert_eq!(
        spec.strategy.as_ref().unwrap().type_.as_deref(),
        Some("Recreate")
    );
    assert!(bundle.find("PodDisruptionBudget", "redis-cart").is_none());
}

#[test]
fn recreate_strategy_is_rendered_for_every_stateless_service() {
    let mut options = Options::for_env("dev");
    options.strategy = Strategy::Recreate;
    let bundle = render(&options);
    let recreate = bundle
        .deployments()
        .filter(|d| {
            d.spec
                .as_ref()
                .unwrap()
                .strategy
                .as_ref()
                .and_then(|s| s.type_.as_deref())
                == Some("Recreate")
        })
        .count();
    assert_eq!(recreate, 11, "10 stateless + redis-cart");
}

#[test]
fn blue_green_names_deployments_by_release_and_points_services_at_them() {
    let mut options = Options::for_env("dev");
    options.strategy = Strategy::Bluegreen;
    options.release = "v0.10.6".into();
    let bundle = render(&options);
    let selector = deployment(&bundle, "frontend-v0.10.6")
        .spec
        .as_ref()
        .unwrap()
        .selector
        .match_labels
        .clone()
        .unwrap();
    assert_eq!(selector["cdcheck.io/release"], "v0.10.6");
    for service in ["frontend", "frontend-external"] {
        let Object::Service(svc) = bundle.find("Service", service).unwrap() else {
            unreachable!()
        };
        assert_eq!(
            svc.spec.as_ref().unwrap().selector.as_ref().unwrap(),
            &selector,
            "{service}"
        );
    }
    assert!(bundle.find("Deployment", "frontend").is_none());
    assert!(
        bundle.find("Deployment", "redis-cart").is_some(),
        "redis is not blue/green"
    );
}

#[test]
fn feature_branch_suffixes_deployment_labels_and_service() {
    let bundle = render(&featured());
    for service in ["frontend-myfeature", "adservice-myfeature"] {
        let d = deployment(&bundle, service);
        let labels = d.metadata.labels.as_ref().unwrap();
        assert_eq!(labels["app"], service);
        let spec = d.spec.as_ref().unwrap();
        assert_eq!(spec.selector.match_labels.as_ref().unwrap()["app"], service);
        let image = first_container(d).image.clone().unwrap();
        assert!(image.ends_with(":0.10.6-myfeature"), "{image}");
        let Object::Service(svc) = bundle.find("Service", service).unwrap() else {
            unreachable!()
        };
        assert_eq!(
            svc.spec.as_ref().unwrap().selector.as_ref().unwrap()["app"],
            service
        );
    }
    assert!(
        bundle
            .find("Service", "frontend-external-myfeature")
            .is_none()
    );
    // Mainline is untouched by the branch.
    let mainline = deployment(&bundle, "frontend");
    let image = first_container(mainline).image.clone().unwrap();
    assert!(image.ends_with(":v0.10.6"), "{image}");
}

#[test]
fn frontend_branch_shows_a_banner_to_tell_it_apart() {
    let bundle = render(&featured());
    let d = deployment(&bundle, "frontend-myfeature");
    let env = first_container(d).env.clone().unwrap();
    assert!(env.iter().any(|e| e.name == "FRONTEND_MESSAGE"));
}

#[test]
fn sessions_route_to_branches_before_the_default_route() {
    let options = featured();
    let bundle = render(&options);
    let Object::VirtualService(frontend) = bundle.find("VirtualService", "frontend").unwrap()
    else {
        unreachable!()
    };
    let names: Vec<&str> = frontend.spec.http.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "session-3f1c2a9e-0d1b-4c55-9a37-1b2c3d4e5f60",
            "session-tester2",
            "default"
        ]
    );
    assert_eq!(frontend.spec.gateways, ["istio-system/ingressgateway"]);
    let first = &frontend.spec.http[0];
    assert_eq!(
        first.matches[0].headers["cookie"],
        StringMatch::Regex(routing::session_cookie_regex(&options.sessions[0]))
    );
    assert_eq!(
        first.route[0].destination.host,
        "frontend-myfeature.dev.svc.cluster.local"
    );
    assert_eq!(
        frontend.spec.http[2].route[0].destination.host,
        "frontend.dev.svc.cluster.local"
    );

    let Object::VirtualService(ads) = bundle.find("VirtualService", "adservice").unwrap() else {
        unreachable!()
    };
    assert_eq!(ads.spec.gateways, ["mesh"]);
    assert_eq!(
        ads.spec.http[1].matches[0].headers["userid"],
        StringMatch::Exact("tester2".into())
    );
    assert_eq!(ads.spec.http.last().unwrap().name, "default");
}

#[test]
fn session_without_a_routable_feature_is_refused() {
    let mut options = Options::for_env("dev");
    options.sessions.push(SessionId::parse("abc").unwrap());
    let error = manifests::render(&options).unwrap_err().to_string();
    assert!(error.contains("\"abc\""), "{error}");
}

#[test]
fn deployer_is_bound_in_its_namespace_only() {
    for rbac in [RbacMode::Full, RbacMode::Least] {
        let mut options = Options::for_env("test");
        options.rbac = rbac;
        let bundle = render(&options);
        let Object::RoleBinding(binding) = bundle.find("RoleBinding", "test-deployer").unwrap()
        else {
            unreachable!()
        };
        assert_eq!(binding.metadata.namespace.as_deref(), Some("test"));
        assert_eq!(binding.role_ref.kind, "Role");
        let subject = &binding.subjects.as_ref().unwrap()[0];
        assert_eq!(
            (subject.kind.as_str(), subject.name.as_str()),
            ("ServiceAccount", "test-deployer")
        );
        assert_eq!(subject.namespace.as_deref(), Some("test"));
        assert!(bundle.of_kind("ClusterRoleBinding").next().is_none());
        let Object::Role(role) = bundle.find("Role", "test-deployer").unwrap() else {
            unreachable!()
        };
        let wildcard = role
            .rules
            .as_ref()
            .unwrap()
            .iter()
            .any(|r| r.verbs.contains(&"*".to_string()));
        assert_eq!(wildcard, rbac == RbacMode::Full, "{rbac:?}");
    }
}

#[test]
fn namespace_enables_sidecar_injection() {
    let bundle = render(&Options::for_env("dev"));
    let Object::Namespace(ns) = &bundle.objects[0] else {
        unreachable!()
    };
    assert_eq!(
        ns.metadata.labels.as_ref().unwrap()["istio-injection"],
        "enabled"
    );
}

#[test]
fn gateway_terminates_https_with_the_ingress_secret_and_serves_http() {
    let bundle = render(&Options::for_env("dev"));
    let Object::Gateway(gw) = bundle.find("Gateway", "ingressgateway").unwrap() else {
        unreachable!()
    };
    assert_eq!(gw.metadata.namespace.as_deref(), Some("istio-system"));
    assert_eq!(gw.spec.selector["istio"], "ingressgateway");
    let https = gw
        .spec
        .servers
        .iter()
        .find(|s| s.port.number == 443)
        .unwrap();
    let tls = https.tls.as_ref().unwrap();
    assert_eq!(tls.mode, "SIMPLE");
    let Object::Secret(secret) = bundle
        .find("Secret", tls.credential_name.as_deref().unwrap())
        .unwrap()
    else {
        unreachable!()
    };
    assert_eq!(secret.metadata.namespace.as_deref(), Some("istio-system"));
    assert_eq!(secret.type_.as_deref(), Some("kubernetes.io/tls"));
    let data = secret.data.as_ref().unwrap();
    assert!(data.contains_key("tls.crt") && data.contains_key("tls.key"));
    assert!(
        gw.spec
            .servers
            .iter()
            .any(|s| s.port.number == 80 && s.tls.is_none())
    );
}

#[test]
fn self_signed_certificate_covers_the_ingress_host() {
    let mut options = Options::for_env("dev");
    options.host = Some("shop.example.org".into());
    let bundle = render(&options);
    let Object::Secret(secret) = bundle.find("Secret", "cdcheck-ingress-cert").unwrap() else {
        unreachable!()
    };
    let pem = String::from_utf8(secret.data.as_ref().unwrap()["tls.crt"].0.clone()).unwrap();
    let names =
        manifests::tls::certificate_dns_names(&pem, std::path::Path::new("rendered")).unwrap();
    assert_eq!(names, ["shop.example.org"]);
    let Object::VirtualService(vs) = bundle.find("VirtualService", "frontend").unwrap() else {
        unreachable!()
    };
    assert_eq!(vs.spec.hosts, ["shop.example.org"]);
}

#[test]
fn zero_replicas_are_refused_naming_the_value() {
    let mut options = Options::for_env("dev");
    options.ha.replicas = 0;
    let error = manifests::render(&options).unwrap_err().to_string();
    assert!(error.contains("replicas 0"), "{error}");
}

/// Secrets are never written into a snapshot (nor any log): the data is replaced.
fn redacted_yaml(mut bundle: Bundle) -> String {
    for object in &mut bundle.objects {
        if let Object::Secret(secret) = object {
            let keys: Vec<String> = secret.data.as_ref().unwrap().keys().cloned().collect();
            secret.data = Some(
                keys.into_iter()
                    .map(|k| (k, ByteString(b"[redacted]".to_vec())))
                    .collect::<BTreeMap<_, _>>(),
            );
        }
    }
    bundle.to_yaml().unwrap()
}

#[test]
fn snapshot_default_bundle() {
    insta::assert_snapshot!(redacted_yaml(render(&Options::for_env("dev"))));
}

#[test]
fn snapshot_feature_branch_bundle() {
    insta::assert_snapshot!(redacted_yaml(render(&featured())));
}

#[test]
fn snapshot_blue_green_bundle() {
    let mut options = Options::for_env("dev");
    options.strategy = Strategy::Bluegreen;
    insta::assert_snapshot!(redacted_yaml(render(&options)));
}

#[test]
fn snapshot_least_privilege_rbac() {
    let mut options = Options::for_env("dev");
    options.rbac = RbacMode::Least;
    let bundle = render(&options);
    let rbac = Bundle {
        objects: bundle
            .objects
            .into_iter()
            .filter(|o| {
                matches!(
                    o,
                    Object::Role(_) | Object::RoleBinding(_) | Object::ServiceAccount(_)
                ) && o.name() == "dev-deployer"
            })
            .collect(),
    };
    insta::assert_snapshot!(redacted_yaml(rbac));
}
