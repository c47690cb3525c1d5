//! The deployer's RBAC, proven twice (SubjectAccessReview and real requests with
//! a TokenRequest token): `<env>-deployer` changes its own namespace and nothing
//! else, cluster scope included. Negative controls: a broken token gives error
//! cells (never "allowed"), and over-broad grants (a ClusterRoleBinding to
//! cluster-admin or edit, a `*` Role in another namespace) are violations.
//! Every test works in namespaces of its own, so test binaries can run in parallel.

mod common;

use cdcheck::kube::apply;
use cdcheck::kube::rbac::{self, Answer, Matrix, Probe, Subject, Verb};
use cdcheck::manifests::{Object, RbacMode};
use common::{Cluster, chain};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::rbac::v1::{ClusterRoleBinding, Role, RoleBinding};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};

/// Applies the env's namespace and deployer RBAC (and creates the `others` namespaces).
async fn apply_rbac(cluster: &Cluster, env: &str, mode: RbacMode, others: &[&str]) {
    let bundle = common::render(env, "v0.10.6", |o| o.rbac = mode);
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
        let ns = common::render(other, "v0.10.6", |_| {});
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

/// The environment and a neighbour namespace, both unique to one test.
struct Envs {
    own: String,
    other: String,
}

impl Envs {
    async fn create(cluster: &Cluster, prefix: &str, mode: RbacMode) -> Self {
        let envs = Envs {
            own: common::unique_env(prefix),
            other: common::unique_env(&format!("{prefix}-other")),
        };
        apply_rbac(cluster, &envs.own, mode, &[&envs.other]).await;
        envs
    }
    fn subject(&self) -> Subject {
        Subject::service_account(&self.own, &format!("{}-deployer", self.own))
    }
    fn probes(&self) -> Vec<Probe> {
        rbac::probes(
            &[&self.own, &self.other, "istio-system"],
            &rbac::deployer_resources(),
            &Verb::ALL,
        )
    }
    async fn matrix(&self, cluster: &Cluster) -> Matrix {
        rbac::matrix(&cluster.config, &self.subject(), self.probes())
            .await
            .unwrap_or_else(|e| panic!("failed to build the matrix: {}", chain(&e)))
    }
    async fn cleanup(&self, cluster: &Cluster) {
        common::cleanup(cluster, &self.own).await;
        common::cleanup(cluster, &self.other).await;
    }
}

fn assert_clean(matrix: &Matrix, own: &str) {
    let violations = matrix.violations(rbac::own_namespace_only(own));
    assert!(violations.is_empty(), "{}\n{matrix}", violations.join("\n"));
    assert!(
        matrix.disagreements().is_empty(),
        "review and real requests disagree: {:?}",
        matrix.disagreements()
    );
}

#[tokio::test]
async fn the_deployer_can_change_its_namespace_and_is_denied_elsewhere_and_on_cluster_scope() {
    let cluster = require_cluster!();
    let envs = Envs::create(&cluster, "rbac", RbacMode::Full).await;
    let matrix = envs.matrix(&cluster).await;
    eprintln!("{matrix}");
    assert_clean(&matrix, &envs.own);
    // Both verdicts are really exercised: some allowed, some denied, cluster scope denied.
    let own = Some(envs.own.as_str());
    assert_eq!(
        matrix
            .cell(own, "deployments", Verb::Create)
            .unwrap()
            .request,
        Answer::Allowed
    );
    let elsewhere = matrix
        .cell(Some(&envs.other), "deployments", Verb::Create)
        .unwrap();
    assert_eq!(
        (&elsewhere.request, elsewhere.request_status),
        (&Answer::Denied, Some(403))
    );
    for plural in ["namespaces", "nodes", "clusterroles", "clusterrolebindings"] {
        for verb in Verb::ALL {
            let cell = matrix.cell(None, plural, verb).unwrap();
            assert_eq!(
                (&cell.request, cell.request_status),
                (&Answer::Denied, Some(403)),
                "{verb:?} {plural}"
            );
        }
    }

    // And for real, not only dry runs: create, update and delete a ConfigMap.
    let subject = envs.subject();
    let as_deployer = rbac::client_as(&cluster.config, &subject).await.unwrap();
    let api: Api<ConfigMap> = Api::namespaced(as_deployer.clone(), &envs.own);
    let cm: ConfigMap = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "rbac-probe"}, "data": {"k": "v1"}
    }))
    .unwrap();
    api.create(&PostParams::default(), &cm).await.unwrap();
    let patch = serde_json::json!({"data": {"k": "v2"}});
    let updated = api
        .patch("rbac-probe", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    assert_eq!(updated.data.unwrap()["k"], "v2");
    api.delete("rbac-probe", &DeleteParams::default())
        .await
        .unwrap();
    let in_other: Api<ConfigMap> = Api::namespaced(as_deployer, &envs.other);
    let denied = in_other
        .create(&PostParams::default(), &cm)
        .await
        .unwrap_err();
    match denied {
        kube::Error::Api(s) => assert_eq!(s.code, 403, "{s:?}"),
        other => panic!("expected 403, got {other}"),
    }
    envs.cleanup(&cluster).await;
}

#[tokio::test]
async fn a_broken_token_gives_error_cells_never_allowed() {
    let cluster = require_cluster!();
    let envs = Envs::create(&cluster, "rbactok", RbacMode::Full).await;
    let broken = rbac::client_with_token(&cluster.config, "not-a-token.garbage").unwrap();
    let matrix = rbac::matrix_with_client(&cluster.config, &envs.subject(), &broken, envs.probes())
        .await
        .unwrap_or_else(|e| panic!("failed to build the matrix: {}", chain(&e)));
    // Every real request is refused before authorization: 401, an error, not a verdict.
    let not_errors: Vec<_> = matrix.cells.iter().filter(|c| !c.is_error()).collect();
    assert!(not_errors.is_empty(), "{not_errors:#?}");
    assert!(
        matrix
            .cells
            .iter()
            .all(|c| c.request_status == Some(401) && !c.request.is_allowed()),
        "{matrix}"
    );
    // Where SubjectAccessReview says denied and denied was expected, it is still no agreement.
    let violations = matrix.violations(rbac::own_namespace_only(&envs.own));
    assert_eq!(
        violations.len(),
        matrix.cells.len(),
        "{}",
        violations.join("\n")
    );
    assert!(
        violations
            .iter()
            .all(|v| v.contains("no verdict") && v.contains("HTTP 401"))
    );
    assert_eq!(matrix.disagreements().len(), matrix.cells.len());
    eprintln!("caught: {}", violations[0]);
    envs.cleanup(&cluster).await;
}

/// Binds the deployer, `roleRef` and `subjects` as given, with an admin client.
fn deployer_subjects(envs: &Envs) -> serde_json::Value {
    serde_json::json!([{"kind": "ServiceAccount", "name": format!("{}-deployer", envs.own), "namespace": envs.own}])
}

async fn assert_cluster_binding_caught(cluster_role: &str) {
    let cluster = require_cluster!();
    let envs = Envs::create(&cluster, "rbacneg", RbacMode::Full).await;
    // Positive control first: the rendered RBAC has no violation.
    assert_clean(&envs.matrix(&cluster).await, &envs.own);

    let binding_name = format!("{}-deployer-{cluster_role}", envs.own);
    let crbs: Api<ClusterRoleBinding> = Api::all(cluster.client.clone());
    let crb: ClusterRoleBinding = serde_json::from_value(serde_json::json!({
        "metadata": {"name": binding_name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": cluster_role},
        "subjects": deployer_subjects(&envs)
    }))
    .unwrap();
    crbs.create(&PostParams::default(), &crb).await.unwrap();
    let escalated = rbac::matrix(&cluster.config, &envs.subject(), envs.probes()).await;
    crbs.delete(&binding_name, &DeleteParams::default())
        .await
        .unwrap();
    let escalated = escalated.unwrap();
    let violations = escalated.violations(rbac::own_namespace_only(&envs.own));
    let in_other = format!("in {}", envs.other);
    assert!(
        violations.iter().any(|v| v.contains(&in_other)),
        "negative control not caught: {cluster_role} everywhere looked namespace-scoped\n{}\n{escalated}",
        violations.join("\n")
    );
    assert!(escalated.errors().is_empty(), "{escalated}");
    eprintln!(
        "{cluster_role}: caught {} violations, e.g. {}",
        violations.len(),
        violations[0]
    );
    if cluster_role == "cluster-admin" {
        assert!(
            violations.iter().any(|v| v.contains("(cluster)")),
            "{}",
            violations.join("\n")
        );
    }
    envs.cleanup(&cluster).await;
}

#[tokio::test]
async fn a_cluster_admin_binding_for_the_deployer_is_caught() {
    assert_cluster_binding_caught("cluster-admin").await;
}

#[tokio::test]
async fn a_cluster_role_binding_to_edit_is_caught() {
    assert_cluster_binding_caught("edit").await;
}

#[tokio::test]
async fn a_wildcard_role_in_another_namespace_is_caught() {
    let cluster = require_cluster!();
    let envs = Envs::create(&cluster, "rbacwild", RbacMode::Full).await;
    let roles: Api<Role> = Api::namespaced(cluster.client.clone(), &envs.other);
    let role: Role = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "everything"},
        "rules": [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}]
    }))
    .unwrap();
    roles.create(&PostParams::default(), &role).await.unwrap();
    let bindings: Api<RoleBinding> = Api::namespaced(cluster.client.clone(), &envs.other);
    let binding: RoleBinding = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "deployer-everything"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "everything"},
        "subjects": deployer_subjects(&envs)
    }))
    .unwrap();
    bindings
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();
    let matrix = envs.matrix(&cluster).await;
    let violations = matrix.violations(rbac::own_namespace_only(&envs.own));
    let in_other = format!("in {}", envs.other);
    assert!(!violations.is_empty(), "wildcard Role not caught\n{matrix}");
    assert!(
        violations.iter().all(|v| v.contains(&in_other)),
        "{}",
        violations.join("\n")
    );
    // Every verb on every namespaced resource of the other namespace.
    let namespaced = rbac::deployer_resources()
        .iter()
        .filter(|r| r.namespaced)
        .count();
    assert_eq!(
        violations.len(),
        namespaced * Verb::ALL.len(),
        "{}",
        violations.join("\n")
    );
    assert!(matrix.errors().is_empty(), "{matrix}");
    envs.cleanup(&cluster).await;
}

#[tokio::test]
async fn the_least_privilege_deployer_is_still_confined_to_its_namespace() {
    let cluster = require_cluster!();
    let envs = Envs::create(&cluster, "least", RbacMode::Least).await;
    let matrix = envs.matrix(&cluster).await;
    assert!(
        matrix.disagreements().is_empty(),
        "{:?}",
        matrix.disagreements()
    );
    // Never allowed outside its namespace.
    let outside: Vec<_> = matrix
        .cells
        .iter()
        .filter(|c| {
            c.probe.namespace.as_deref() != Some(envs.own.as_str()) && c.request.is_allowed()
        })
        .collect();
    assert!(outside.is_empty(), "{outside:?}");
    // It can still deploy: create and patch Deployments in its namespace.
    for verb in [Verb::Create, Verb::Patch, Verb::Get] {
        assert!(
            matrix
                .cell(Some(&envs.own), "deployments", verb)
                .unwrap()
                .request
                .is_allowed(),
            "{verb:?}"
        );
    }
    envs.cleanup(&cluster).await;
}
