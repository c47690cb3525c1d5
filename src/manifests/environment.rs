//! The environment: its Namespace and the `<env>-deployer` ServiceAccount, Role and RoleBinding.
//!
//! The deployer is bound in its own namespace only: a Role and a RoleBinding,
//! never a ClusterRole binding, so `dev-deployer` has no say in `test`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::{
    ENVIRONMENT_LABEL, MANAGED_BY_LABEL, MANAGED_BY_VALUE, Object, Options, RELEASE_LABEL, RbacMode,
};

/// Namespace label that makes Istio inject its sidecar.
pub const ISTIO_INJECTION_LABEL: &str = "istio-injection";

/// Verbs that change objects, and those that only read them.
const READ: &[&str] = &["get", "list", "watch"];
const WRITE: &[&str] = &[
    "get", "list", "watch", "create", "update", "patch", "delete",
];

/// The least-privilege rules: exactly what the pipeline's deploy, wait,
/// rollback and routing steps touch, per API group.
pub fn least_privilege_rules() -> Vec<PolicyRule> {
    let rule = |group: &str, resources: &[&str], verbs: &[&str]| PolicyRule {
        api_groups: Some(vec![group.to_string()]),
        resources: Some(resources.iter().map(|r| r.to_string()).collect()),
        verbs: verbs.iter().map(|v| v.to_string()).collect(),
        ..PolicyRule::default()
    };
    vec![
        // Deploy and roll back (undo copies an old ReplicaSet's template back).
        rule("apps", &["deployments"], WRITE),
        rule("apps", &["replicasets"], READ),
        rule(
            "",
            &["services", "serviceaccounts", "configmaps", "secrets"],
            WRITE,
        ),
        // Wait for rollouts and gather diagnostics.
        rule("", &["pods", "events"], READ),
        rule("policy", &["poddisruptionbudgets"], WRITE),
        // Feature-branch routing.
        rule("networking.istio.io", &["virtualservices"], WRITE),
    ]
}

/// The pipeline's Role as it ships: every verb on every resource, in its namespace.
pub fn full_rules() -> Vec<PolicyRule> {
    vec![PolicyRule {
        api_groups: Some(vec!["*".to_string()]),
        resources: Some(vec!["*".to_string()]),
        verbs: vec!["*".to_string()],
        ..PolicyRule::default()
    }]
}

pub(super) fn managed_labels(options: &Options) -> BTreeMap<String, String> {
    BTreeMap::from([
        (MANAGED_BY_LABEL.to_string(), MANAGED_BY_VALUE.to_string()),
        (ENVIRONMENT_LABEL.to_string(), options.env.clone()),
        (RELEASE_LABEL.to_string(), options.release.clone()),
    ])
}

fn meta(name: &str, namespace: Option<&str>, options: &Options) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_string()),
        namespace: namespace.map(str::to_string),
        labels: Some(managed_labels(options)),
        ..ObjectMeta::default()
    }
}

pub fn render(options: &Options) -> Vec<Object> {
    let env = options.env.as_str();
    let deployer = options.deployer_name();
    let mut namespace_meta = meta(env, None, options);
    namespace_meta
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert(ISTIO_INJECTION_LABEL.to_string(), "enabled".to_string());
    let rules = match options.rbac {
        RbacMode::Full => full_rules(),
        RbacMode::Least => least_privilege_rules(),
    };
    vec![
        Object::Namespace(Namespace {
            metadata: namespace_meta,
            ..Namespace::default()
        }),
        Object::ServiceAccount(ServiceAccount {
            metadata: meta(&deployer, Some(env), options),
            ..ServiceAccount::default()
        }),
        Object::Role(Role {
            metadata: meta(&deployer, Some(env), options),
            rules: Some(rules),
        }),
        Object::RoleBinding(RoleBinding {
            metadata: meta(&deployer, Some(env), options),
            role_ref: RoleRef {
                api_group: Some("rbac.authorization.k8s.io".to_string()),
                kind: "Role".to_string(),
                name: deployer.clone(),
            },
            subjects: Some(vec![Subject {
                kind: "ServiceAccount".to_string(),
                name: deployer.clone(),
                namespace: Some(env.to_string()),
                ..Subject::default()
            }]),
        }),
    ]
}
