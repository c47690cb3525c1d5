//! The allow/deny matrix of a ServiceAccount over namespaces x resources x verbs,
//! decided twice: by SubjectAccessReview, and by real requests made with a token
//! from the TokenRequest API (mutations as `dryRun=All`, so nothing changes).
//! A real request is "allowed" when the API server does not answer 403.
//! The token lives only inside the client; it is never logged or displayed.

use std::fmt;

use ::kube::api::{Api, PostParams};
use ::kube::{Client, Config};
use http::{HeaderValue, Method, Request};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::ServiceAccount;

#[derive(Debug, thiserror::Error)]
pub enum RbacError {
    #[error("request a token for ServiceAccount {namespace}/{name}")]
    Token {
        namespace: String,
        name: String,
        #[source]
        source: ::kube::Error,
    },
    #[error("build a client with the ServiceAccount's token")]
    Client(#[source] ::kube::Error),
    #[error("review access of {subject} to {probe}")]
    Review {
        subject: String,
        probe: String,
        #[source]
        source: ::kube::Error,
    },
    #[error("use the issued token as an Authorization header")]
    TokenHeader,
    #[error("build the real request for {probe}: {reason}")]
    Build { probe: String, reason: String },
    #[error("send the real request for {probe}")]
    Request {
        probe: String,
        #[source]
        source: ::kube::Error,
    },
}

/// A ServiceAccount whose access is checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subject {
    pub namespace: String,
    pub name: String,
}

impl Subject {
    pub fn service_account(namespace: &str, name: &str) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
    pub fn username(&self) -> String {
        format!("system:serviceaccount:{}:{}", self.namespace, self.name)
    }
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.username())
    }
}

/// A resource type, as the API addresses it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resource {
    pub group: String,
    pub version: String,
    pub plural: String,
    pub kind: String,
    pub namespaced: bool,
}

impl Resource {
    pub fn new(group: &str, version: &str, plural: &str, kind: &str, namespaced: bool) -> Self {
        Self {
            group: group.into(),
            version: version.into(),
            plural: plural.into(),
            kind: kind.into(),
            namespaced,
        }
    }
    pub fn deployments() -> Self {
        Self::new("apps", "v1", "deployments", "Deployment", true)
    }
    pub fn services() -> Self {
        Self::new("", "v1", "services", "Service", true)
    }
    pub fn configmaps() -> Self {
        Self::new("", "v1", "configmaps", "ConfigMap", true)
    }
    pub fn secrets() -> Self {
        Self::new("", "v1", "secrets", "Secret", true)
    }
    pub fn virtualservices() -> Self {
        Self::new(
            "networking.istio.io",
            "v1",
            "virtualservices",
            "VirtualService",
            true,
        )
    }
    pub fn gateways() -> Self {
        Self::new("networking.istio.io", "v1", "gateways", "Gateway", true)
    }
    pub fn roles() -> Self {
        Self::new("rbac.authorization.k8s.io", "v1", "roles", "Role", true)
    }
    pub fn namespaces() -> Self {
        Self::new("", "v1", "namespaces", "Namespace", false)
    }
    pub fn nodes() -> Self {
        Self::new("", "v1", "nodes", "Node", false)
    }
    pub fn clusterroles() -> Self {
        Self::new(
            "rbac.authorization.k8s.io",
            "v1",
            "clusterroles",
            "ClusterRole",
            false,
        )
    }
    pub fn clusterrolebindings() -> Self {
        Self::new(
            "rbac.authorization.k8s.io",
            "v1",
            "clusterrolebindings",
            "ClusterRoleBinding",
            false,
        )
    }

    fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    fn collection_path(&self, namespace: Option<&str>) -> String {
        let root = if self.group.is_empty() {
            format!("/api/{}", self.version)
        } else {
            format!("/apis/{}/{}", self.group, self.version)
        };
        match namespace.filter(|_| self.namespaced) {
            Some(ns) => format!("{root}/namespaces/{ns}/{}", self.plural),
            None => format!("{root}/{}", self.plural),
        }
    }
}

/// The verbs a deployer uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verb {
    Get,
    List,
    Create,
    Update,
    Patch,
    Delete,
}

impl Verb {
    pub const ALL: [Verb; 6] = [
        Verb::Get,
        Verb::List,
        Verb::Create,
        Verb::Update,
        Verb::Patch,
        Verb::Delete,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Get => "get",
            Verb::List => "list",
            Verb::Create => "create",
            Verb::Update => "update",
            Verb::Patch => "patch",
            Verb::Delete => "delete",
        }
    }
}

/// One question: may the subject `verb` `resource` in `namespace`?
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Probe {
    /// `None` for cluster-scoped resources.
    pub namespace: Option<String>,
    pub resource: Resource,
    pub verb: Verb,
}

impl fmt::Display for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let group = if self.resource.group.is_empty() {
            String::new()
        } else {
            format!(".{}", self.resource.group)
        };
        match &self.namespace {
            Some(ns) => write!(
                f,
                "{} {}{group} in {ns}",
                self.verb.as_str(),
                self.resource.plural
            ),
            None => write!(
                f,
                "{} {}{group} (cluster)",
                self.verb.as_str(),
                self.resource.plural
            ),
        }
    }
}

/// The two answers to one probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cell {
    pub probe: Probe,
    /// SubjectAccessReview's answer.
    pub review_allowed: bool,
    /// The real request's answer (not 403).
    pub request_allowed: bool,
    /// HTTP status of the real request.
    pub request_status: u16,
}

/// The full matrix for one subject.
#[derive(Clone, Debug)]
pub struct Matrix {
    pub subject: Subject,
    pub cells: Vec<Cell>,
}

impl Matrix {
    /// Cells where SubjectAccessReview and the real request disagree.
    pub fn disagreements(&self) -> Vec<&Cell> {
        self.cells
            .iter()
            .filter(|c| c.review_allowed != c.request_allowed)
            .collect()
    }

    /// Every cell whose answer (either one) differs from `expected(probe)`, as sentences.
    pub fn violations(&self, expected: impl Fn(&Probe) -> bool) -> Vec<String> {
        self.cells
            .iter()
            .filter_map(|c| {
                let want = expected(&c.probe);
                if c.review_allowed == want && c.request_allowed == want {
                    return None;
                }
                Some(format!(
                    "{} may {}: expected {}, SubjectAccessReview said {}, real request got HTTP {}",
                    self.subject,
                    c.probe,
                    if want { "allowed" } else { "denied" },
                    if c.review_allowed {
                        "allowed"
                    } else {
                        "denied"
                    },
                    c.request_status
                ))
            })
            .collect()
    }

    pub fn cell(&self, namespace: Option<&str>, plural: &str, verb: Verb) -> Option<&Cell> {
        self.cells.iter().find(|c| {
            c.probe.namespace.as_deref() == namespace
                && c.probe.resource.plural == plural
                && c.probe.verb == verb
        })
    }
}

impl fmt::Display for Matrix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "access of {}:", self.subject)?;
        for c in &self.cells {
            writeln!(
                f,
                "  {:<60} review={:<5} request={:<5} ({})",
                c.probe.to_string(),
                if c.review_allowed { "allow" } else { "deny" },
                if c.request_allowed { "allow" } else { "deny" },
                c.request_status
            )?;
        }
        Ok(())
    }
}

/// The expectation of a namespace-scoped deployer: allowed in `own` namespace, denied elsewhere and on cluster scope.
pub fn own_namespace_only(own: &str) -> impl Fn(&Probe) -> bool + '_ {
    move |probe| probe.namespace.as_deref() == Some(own) && probe.resource.namespaced
}

/// Name used by the real requests; it never exists, and mutations are dry runs.
const PROBE_OBJECT: &str = "cdcheck-rbac-probe";

/// A client that authenticates as `subject` with a short-lived token (10 min).
/// `admin` is the configuration used to request the token.
pub async fn client_as(admin: &Config, subject: &Subject) -> Result<Client, RbacError> {
    let admin_client = Client::try_from(admin.clone()).map_err(RbacError::Client)?;
    let api: Api<ServiceAccount> = Api::namespaced(admin_client, &subject.namespace);
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            expiration_seconds: Some(600),
            ..Default::default()
        }),
        ..Default::default()
    };
    let token = api
        .create_token_request(&subject.name, &PostParams::default(), &request)
        .await
        .map_err(|source| RbacError::Token {
            namespace: subject.namespace.clone(),
            name: subject.name.clone(),
            source,
        })?
        .status
        .and_then(|s| s.token)
        .unwrap_or_default();
    let mut config = admin.clone();
    config.auth_info = Default::default();
    let mut value =
        HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| RbacError::TokenHeader)?;
    value.set_sensitive(true);
    config
        .headers
        .retain(|(name, _)| name != http::header::AUTHORIZATION);
    config.headers.push((http::header::AUTHORIZATION, value));
    Client::try_from(config).map_err(RbacError::Client)
}

async fn review(admin: &Client, subject: &Subject, probe: &Probe) -> Result<bool, RbacError> {
    let sar = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(subject.username()),
            groups: Some(vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{}", subject.namespace),
                "system:authenticated".into(),
            ]),
            resource_attributes: Some(ResourceAttributes {
                namespace: probe.namespace.clone(),
                verb: Some(probe.verb.as_str().into()),
                group: Some(probe.resource.group.clone()),
                version: Some(probe.resource.version.clone()),
                resource: Some(probe.resource.plural.clone()),
                name: match probe.verb {
                    Verb::List | Verb::Create => None,
                    _ => Some(PROBE_OBJECT.into()),
                },
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let api: Api<SubjectAccessReview> = Api::all(admin.clone());
    let answer = api
        .create(&PostParams::default(), &sar)
        .await
        .map_err(|source| RbacError::Review {
            subject: subject.to_string(),
            probe: probe.to_string(),
            source,
        })?;
    Ok(answer.status.is_some_and(|s| s.allowed))
}

/// Sends the real request of `probe` and returns its HTTP status.
async fn real_request(client: &Client, probe: &Probe) -> Result<u16, RbacError> {
    let r = &probe.resource;
    let collection = r.collection_path(probe.namespace.as_deref());
    let item = format!("{collection}/{PROBE_OBJECT}");
    let mut metadata = serde_json::json!({ "name": PROBE_OBJECT });
    if let Some(ns) = probe.namespace.as_ref().filter(|_| r.namespaced) {
        metadata["namespace"] = serde_json::json!(ns);
    }
    let body =
        serde_json::json!({ "apiVersion": r.api_version(), "kind": r.kind, "metadata": metadata });
    let body = serde_json::to_vec(&body).unwrap_or_default();
    let (method, uri, body, content_type) = match probe.verb {
        Verb::Get => (Method::GET, item, Vec::new(), None),
        Verb::List => (
            Method::GET,
            format!("{collection}?limit=1"),
            Vec::new(),
            None,
        ),
        Verb::Create => (
            Method::POST,
            format!("{collection}?dryRun=All"),
            body,
            Some("application/json"),
        ),
        Verb::Update => (
            Method::PUT,
            format!("{item}?dryRun=All"),
            body,
            Some("application/json"),
        ),
        Verb::Patch => (
            Method::PATCH,
            format!("{item}?dryRun=All"),
            b"{}".to_vec(),
            Some("application/merge-patch+json"),
        ),
        Verb::Delete => (
            Method::DELETE,
            format!("{item}?dryRun=All"),
            Vec::new(),
            None,
        ),
    };
    let mut builder = Request::builder().method(method).uri(uri);
    if let Some(ct) = content_type {
        builder = builder.header(http::header::CONTENT_TYPE, ct);
    }
    let request = builder.body(body).map_err(|e| RbacError::Build {
        probe: probe.to_string(),
        reason: e.to_string(),
    })?;
    match client.request_text(request).await {
        Ok(_) => Ok(200),
        Err(::kube::Error::Api(status)) => Ok(status.code),
        Err(source) => Err(RbacError::Request {
            probe: probe.to_string(),
            source,
        }),
    }
}

/// Every probe of `namespaces` x `resources` x `verbs` (cluster-scoped resources once each).
pub fn probes(namespaces: &[&str], resources: &[Resource], verbs: &[Verb]) -> Vec<Probe> {
    let mut out = Vec::new();
    for resource in resources {
        let scopes: Vec<Option<String>> = if resource.namespaced {
            namespaces.iter().map(|n| Some(n.to_string())).collect()
        } else {
            vec![None]
        };
        for ns in scopes {
            for verb in verbs {
                out.push(Probe {
                    namespace: ns.clone(),
                    resource: resource.clone(),
                    verb: *verb,
                });
            }
        }
    }
    out
}

/// Decides every probe by SubjectAccessReview (as `admin`) and by a real request
/// (as `subject`, with a TokenRequest token).
pub async fn matrix(
    admin: &Config,
    subject: &Subject,
    probes: Vec<Probe>,
) -> Result<Matrix, RbacError> {
    let admin_client = Client::try_from(admin.clone()).map_err(RbacError::Client)?;
    let as_subject = client_as(admin, subject).await?;
    let checks = probes.into_iter().map(|probe| {
        let admin_client = admin_client.clone();
        let as_subject = as_subject.clone();
        async move {
            let review_allowed = review(&admin_client, subject, &probe).await?;
            let status = real_request(&as_subject, &probe).await?;
            Ok::<Cell, RbacError>(Cell {
                probe,
                review_allowed,
                request_allowed: status != 403,
                request_status: status,
            })
        }
    });
    let cells = futures::stream::iter(checks)
        .buffered(16)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Matrix {
        subject: subject.clone(),
        cells,
    })
}

use futures::StreamExt;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_scoped_resources_are_probed_once_without_a_namespace() {
        let p = probes(
            &["dev", "test"],
            &[Resource::deployments(), Resource::namespaces()],
            &[Verb::Get],
        );
        let shown: Vec<String> = p.iter().map(|p| p.to_string()).collect();
        assert_eq!(
            shown,
            [
                "get deployments.apps in dev",
                "get deployments.apps in test",
                "get namespaces (cluster)"
            ]
        );
    }

    #[test]
    fn a_cell_that_either_answer_gets_wrong_is_a_violation() {
        let cell = |ns: Option<&str>, review: bool, status: u16| Cell {
            probe: Probe {
                namespace: ns.map(String::from),
                resource: if ns.is_some() {
                    Resource::deployments()
                } else {
                    Resource::namespaces()
                },
                verb: Verb::Create,
            },
            review_allowed: review,
            request_allowed: status != 403,
            request_status: status,
        };
        let matrix = Matrix {
            subject: Subject::service_account("dev", "dev-deployer"),
            cells: vec![
                cell(Some("dev"), true, 201),
                cell(Some("test"), false, 403),
                cell(Some("test"), false, 201),
                cell(None, true, 403),
            ],
        };
        let violations = matrix.violations(own_namespace_only("dev"));
        assert_eq!(violations.len(), 2, "{violations:#?}");
        assert!(violations[0].contains("create deployments.apps in test: expected denied"));
        assert!(violations[0].contains("real request got HTTP 201"));
        assert!(
            violations[1].contains("(cluster): expected denied, SubjectAccessReview said allowed")
        );
        assert_eq!(matrix.disagreements().len(), 2);
    }

    #[test]
    fn paths_follow_the_api_layout() {
        assert_eq!(
            Resource::deployments().collection_path(Some("dev")),
            "/apis/apps/v1/namespaces/dev/deployments"
        );
        assert_eq!(
            Resource::nodes().collection_path(Some("dev")),
            "/api/v1/nodes"
        );
    }
}
