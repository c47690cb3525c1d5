//! The rendered bundle on a real API server: `cdcheck render | kubectl apply -f -` works as
//! printed, and the least-privilege deployer can deploy its environment with nothing more.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use cdcheck::kube::{apply, rbac, rollout};
use cdcheck::manifests::{Object, RbacMode};
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, ListParams};

/// The objects the platform (cluster admin) owns: the namespace, the deployer's
/// RBAC and the shared ingress objects in istio-system.
fn platform_owned(object: &Object, env: &str) -> bool {
    match object {
        Object::Namespace(_) | Object::Role(_) | Object::RoleBinding(_) => true,
        Object::ServiceAccount(_) => object.name() == format!("{env}-deployer"),
        _ => object.namespace().as_deref() != Some(env),
    }
}

#[tokio::test]
async fn rendered_yaml_applies_with_kubectl_as_printed() {
    let cluster = require_cluster!();
    let env = common::unique_env("kubectl");
    let render = Command::new(env!("CARGO_BIN_EXE_cdcheck"))
        .args([
            "render",
            "--env",
            &env,
            "--feature",
            "frontend=0.10.6-myfeature",
        ])
        .args(["--feature", "adservice=0.10.6-myfeature", "--session", "s1"])
        .output()
        .expect("run cdcheck render");
    assert!(
        render.status.success(),
        "{}",
        String::from_utf8_lossy(&render.stderr)
    );

    let mut kubectl = Command::new("kubectl")
        .args([
            "apply",
            "--server-side",
            "--force-conflicts",
            "--field-manager=cdcheck-kubectl",
            "-f",
            "-",
        ])
        .env("KUBECONFIG", &cluster.kubeconfig)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl is installed");
    kubectl
        .stdin
        .take()
        .unwrap()
        .write_all(&render.stdout)
        .unwrap();
    let applied = kubectl.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&applied.stderr);
    assert!(applied.status.success(), "kubectl apply failed: {stderr}");
    let stdout = String::from_utf8_lossy(&applied.stdout);
    assert!(
        stdout.contains("virtualservice.networking.istio.io/frontend serverside-applied"),
        "{stdout}"
    );
    assert!(
        stdout.contains("gateway.networking.istio.io/ingressgateway serverside-applied"),
        "{stdout}"
    );

    let deployments: Api<Deployment> = Api::namespaced(cluster.client.clone(), &env);
    let names: Vec<String> = deployments
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|d| d.metadata.name)
        .collect();
    assert_eq!(
        names.len(),
        14,
        "12 mainline + 2 feature branches: {names:?}"
    );
    assert!(names.contains(&"frontend-myfeature".to_string()));
    common::cleanup(&cluster, &env).await;
}

#[tokio::test]
async fn least_privilege_deployer_deploys_and_waits_for_its_environment() {
    let cluster = require_cluster!();
    let env = common::unique_env("least");
    let bundle = common::render(&env, "v0.10.6", |o| {
        o.rbac = RbacMode::Least;
        o.loadgenerator = false;
    });
    let (platform, workloads): (Vec<&Object>, Vec<&Object>) =
        bundle.objects.iter().partition(|o| platform_owned(o, &env));
    apply::apply_objects(&cluster.client, platform.iter().copied())
        .await
        .expect("the admin applies the platform part");

    let deployer = rbac::client_as(
        &cluster.config,
        &rbac::Subject::service_account(&env, &format!("{env}-deployer")),
    )
    .await
    .expect("a token for the deployer");
    if let Err(e) = apply::apply_objects(&deployer, workloads.iter().copied()).await {
        panic!(
            "the least-privilege deployer could not apply its workloads: {}",
            common::chain(&e)
        );
    }
    let deployments: Vec<(String, String)> = bundle
        .deployments()
        .map(|d| (env.clone(), d.metadata.name.clone().unwrap()))
        .collect();
    assert_eq!(deployments.len(), 11);
    if let Err(e) = rollout::wait_for_all(&deployer, &deployments, common::ROLLOUT_TIMEOUT).await {
        panic!(
            "the deployer could not wait for its rollouts: {}",
            common::chain(&e)
        );
    }

    // Negative control: the shared ingress objects stay out of the deployer's reach.
    let gateway = bundle.find("Gateway", "ingressgateway").unwrap();
    let error = apply::apply_object(&deployer, gateway)
        .await
        .expect_err("the deployer must not change istio-system");
    let status = error.api_status().expect("an API status");
    assert_eq!(status.code, 403, "{status:?}");
    common::cleanup(&cluster, &env).await;
}

/// A kind the cluster does not serve (the Gateway API without its CRDs, as upstream's own
/// istio-manifests.yaml uses it) is named as such, with what to install, not as a bare 404.
#[tokio::test]
async fn a_kind_without_its_crd_is_named_with_what_to_install() {
    let cluster = require_cluster!();
    let gvk = kube::api::GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", "Gateway");
    let value = serde_json::json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "Gateway",
        "metadata": {"name": "istio-gateway", "namespace": "default"},
        "spec": {"gatewayClassName": "istio", "listeners": []},
    });
    let error = apply::apply_value(&cluster.client, &gvk, &value)
        .await
        .expect_err("no Gateway API CRDs on the local substrate");
    let text = cdcheck::error_chain(&error);
    assert!(
        matches!(error, apply::ApplyError::NotServed { .. }),
        "{text}"
    );
    assert!(
        text.contains("does not serve gateway.networking.k8s.io/v1 Gateway")
            && text.contains("Gateway API"),
        "{text}"
    );
}
