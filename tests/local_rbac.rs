//! The deployer's RBAC, proven twice (SubjectAccessReview and real requests with
//! a TokenRequest token): `<env>-deployer` changes its own namespace and nothing
//! else; a ClusterRoleBinding to cluster-admin (the negative control) is caught.

mod common_local;

use cdcheck::kube::apply;
use cdcheck::kube::rbac::{self, Resource, Subject, Verb};
use cdcheck::manifests::{Object, RbacMode};
use common_local::{Cluster, chain};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};

fn resources() -> Vec<Resource> {
    vec![
        Resource::deployments(),
        Resource::services(),
        Resource::configmaps(),
        Resource::secrets(),
        Resource::virtualservices(),
        Resource::namespaces(),
        Resource::nodes(),
        Resource::clusterroles(),
        Resource::clusterrolebindings(),
    ]
}

/// Applies the env's namespace and deployer RBAC (and creates `other` namespaces).
async fn apply_rbac(cluster: &Cluster, env: &str, mode: RbacMode, others: &[&str]) {
    let bundle = common_local::render(env, "v0.10.6", |o| o.rbac = mode);
    let rbac = bundle.objects.iter().filter(|o| {
        matches!(
            o,
            Object::Namespace(_) | Object::Role(_) | Object::RoleBinding(_)
        ) || matches!(o, Object::ServiceAccount(sa) if sa.metadata.name.as_deref() == Some(&format!("{env}-deployer")))
    });
    apply::apply_objects(&cluster.client, rbac)
        .await
        .unwrap_or_else(|e| panic!("failed to apply RBAC: {}", chain(&e)));
    for other in others {
        let ns = common_local::render(other, "v0.10.6", |_| {});
        apply::apply_objects(
            &cluster.client,
            ns.objects
                .iter()
                .filter(|o| matches!(o, Object::Namespace(_))),
        )
        .await
        .unwrap();
    }
}

#[tokio::test]
async fn dev_deployer_can_change_dev_and_is_denied_in_test_istio_system_and_cluster_scope() {
    let cluster = require_cluster!();
    apply_rbac(&cluster, "dev", RbacMode::Full, &["test"]).await;
    let subject = Subject::service_account("dev", "dev-deployer");
    let probes = rbac::probes(&["dev", "test", "istio-system"], &resources(), &Verb::ALL);
    let matrix = rbac::matrix(&cluster.config, &subject, probes)
        .await
        .unwrap_or_else(|e| panic!("failed to build the matrix: {}", chain(&e)));
    eprintln!("{matrix}");
    let violations = matrix.violations(rbac::own_namespace_only("dev"));
    assert!(violations.is_empty(), "{}", violations.join("\n"));
    assert!(
        matrix.disagreements().is_empty(),
        "review and real requests disagree: {:?}",
        matrix.disagreements()
    );
    // Both answers are really exercised: some allowed, some denied.
    assert!(
        matrix
            .cell(Some("dev"), "deployments", Verb::Create)
            .unwrap()
            .request_allowed
    );
    assert_eq!(
        matrix
            .cell(Some("test"), "deployments", Verb::Create)
            .unwrap()
            .request_status,
        403
    );
    assert_eq!(
        matrix
            .cell(None, "namespaces", Verb::Delete)
            .unwrap()
            .request_status,
        403
    );

    // And for real, not only dry runs: create, update and delete a ConfigMap in dev.
    let as_deployer = rbac::client_as(&cluster.config, &subject).await.unwrap();
    let name = common_local::unique_env("rbac-probe");
    let api: Api<ConfigMap> = Api::namespaced(as_deployer.clone(), "dev");
    let cm: ConfigMap = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name}, "data": {"k": "v1"}
    }))
    .unwrap();
    api.create(&PostParams::default(), &cm).await.unwrap();
    let patch = serde_json::json!({"data": {"k": "v2"}});
    let updated = api
        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    assert_eq!(updated.data.unwrap()["k"], "v2");
    api.delete(&name, &DeleteParams::default()).await.unwrap();
    let in_test: Api<ConfigMap> = Api::namespaced(as_deployer, "test");
    let denied = in_test
        .create(&PostParams::default(), &cm)
        .await
        .unwrap_err();
    match denied {
        kube::Error::Api(s) => assert_eq!(s.code, 403, "{s:?}"),
        other => panic!("expected 403, got {other}"),
    }
}

#[tokio::test]
async fn a_cluster_admin_binding_for_the_deployer_is_caught() {
    let cluster = require_cluster!();
    let env = common_local::unique_env("rbacneg");
    apply_rbac(&cluster, &env, RbacMode::Full, &["test"]).await;
    let subject = Subject::service_account(&env, &format!("{env}-deployer"));
    let probes = || rbac::probes(&[&env, "test", "istio-system"], &resources(), &Verb::ALL);

    // Positive control first: the rendered RBAC has no violation.
    let clean = rbac::matrix(&cluster.config, &subject, probes())
        .await
        .unwrap();
    let own = rbac::own_namespace_only(&env);
    assert!(
        clean.violations(&own).is_empty(),
        "{}",
        clean.violations(&own).join("\n")
    );

    let binding_name = format!("{env}-deployer-cluster-admin");
    let crbs: Api<ClusterRoleBinding> = Api::all(cluster.client.clone());
    let crb: ClusterRoleBinding = serde_json::from_value(serde_json::json!({
        "metadata": {"name": binding_name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
        "subjects": [{"kind": "ServiceAccount", "name": format!("{env}-deployer"), "namespace": env}]
    }))
    .unwrap();
    crbs.create(&PostParams::default(), &crb).await.unwrap();
    let escalated = rbac::matrix(&cluster.config, &subject, probes()).await;
    crbs.delete(&binding_name, &DeleteParams::default())
        .await
        .unwrap();
    let escalated = escalated.unwrap();
    let violations = escalated.violations(&own);
    assert!(
        !violations.is_empty(),
        "negative control not caught: cluster-admin looked namespace-scoped\n{escalated}"
    );
    assert!(
        violations.iter().any(|v| v.contains("in test"))
            && violations.iter().any(|v| v.contains("(cluster)")),
        "{}",
        violations.join("\n")
    );
    eprintln!(
        "caught {} violations, e.g. {}",
        violations.len(),
        violations[0]
    );
    common_local::cleanup(&cluster, &env).await;
}

#[tokio::test]
async fn the_least_privilege_deployer_is_still_confined_to_its_namespace() {
    let cluster = require_cluster!();
    let env = common_local::unique_env("least");
    apply_rbac(&cluster, &env, RbacMode::Least, &["test"]).await;
    let subject = Subject::service_account(&env, &format!("{env}-deployer"));
    let probes = rbac::probes(&[&env, "test"], &resources(), &Verb::ALL);
    let matrix = rbac::matrix(&cluster.config, &subject, probes)
        .await
        .unwrap();
    assert!(
        matrix.disagreements().is_empty(),
        "{:?}",
        matrix.disagreements()
    );
    // Never allowed outside its namespace.
    let outside: Vec<_> = matrix
        .cells
        .iter()
        .filter(|c| c.probe.namespace.as_deref() != Some(env.as_str()) && c.request_allowed)
        .collect();
    assert!(outside.is_empty(), "{outside:?}");
    // It can still deploy: create and patch Deployments in its namespace.
    for verb in [Verb::Create, Verb::Patch, Verb::Get] {
        assert!(
            matrix
                .cell(Some(&env), "deployments", verb)
                .unwrap()
                .request_allowed,
            "{verb:?}"
        );
    }
    common_local::cleanup(&cluster, &env).await;
}
