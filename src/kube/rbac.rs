//! The allow/deny matrix of a ServiceAccount over namespaces x resources x verbs,
//! decided twice: by SubjectAccessReview, and by real requests made with a token
//! from the TokenRequest API (mutations as `dryRun=All`, so nothing changes).
//! A real request is allowed only when it succeeds or fails past authorization
//! (2xx, or 404/409/422: the object is missing, exists, or admission refused it),
//! denied on 403, and anything else (401, 429, 5xx, no connection) is an error
//! of the cell, which every verdict reports: never an agreement.
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
    pub fn rolebindings() -> Self {
        Self::new(
            "rbac.authorization.k8s.io",
            "v1",
            "rolebindings",
            "RoleBinding",
            true,
        )
    }
    pub fn customresourcedefinitions() -> Self {
        Self::new(
            "apiextensions.k8s.io",
            "v1",
            "customresourcedefinitions",
            "CustomResourceDefinition",
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

/// One answer to a probe: a verdict, or the reason there is none.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    Allowed,
    Denied,
    /// No verdict: the question did not reach authorization, or its answer
    /// does not say (401, 429, 5xx, a transport error...).
    Error(String),
}

impl Answer {
    pub fn is_allowed(&self) -> bool {
        matches!(self, Answer::Allowed)
    }
    pub fn is_error(&self) -> bool {
        matches!(self, Answer::Error(_))
    }
    /// The verdict, `None` for an error.
    pub fn verdict(&self) -> Option<bool> {
        match self {
            Answer::Allowed => Some(true),
            Answer::Denied => Some(false),
            Answer::Error(_) => None,
        }
    }
}

impl fmt::Display for Answer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Answer::Allowed => f.write_str("allowed"),
            Answer::Denied => f.write_str("denied"),
            Answer::Error(reason) => write!(f, "error ({reason})"),
        }
    }
}

/// What the HTTP status of a real request proves about its authorization.
pub fn classify_status(status: u16) -> Answer {
    match status {
        200..=299 => Answer::Allowed,
        // Past authorization: the object is missing, exists already, or admission refused it.
        404 | 409 | 422 => Answer::Allowed,
        403 => Answer::Denied,
        401 => Answer::Error("HTTP 401, the credentials were not accepted".into()),
        429 => Answer::Error("HTTP 429, throttled".into()),
        other => Answer::Error(format!("HTTP {other}")),
    }
}

/// The two answers to one probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cell {
    pub probe: Probe,
    /// SubjectAccessReview's answer.
    pub review: Answer,
    /// The real request's answer.
    pub request: Answer,
    /// HTTP status of the real request, when one came back.
    pub request_status: Option<u16>,
}

impl Cell {
    /// Either answer is an error: the cell decides nothing.
    pub fn is_error(&self) -> bool {
        self.review.is_error() || self.request.is_error()
    }

    fn status(&self) -> String {
        self.request_status
            .map(|s| format!("HTTP {s}"))
            .unwrap_or_else(|| "no HTTP status".into())
    }
}

/// The full matrix for one subject.
#[derive(Clone, Debug)]
pub struct Matrix {
    pub subject: Subject,
    pub cells: Vec<Cell>,
}

impl Matrix {
    /// Cells where SubjectAccessReview and the real request do not agree,
    /// including every cell where either answer is an error.
    pub fn disagreements(&self) -> Vec<&Cell> {
        self.cells
            .iter()
            .filter(|c| c.is_error() || c.review != c.request)
            .collect()
    }

    /// Cells without a verdict (either answer is an error).
    pub fn errors(&self) -> Vec<&Cell> {
        self.cells.iter().filter(|c| c.is_error()).collect()
    }

    /// Every cell whose answer (either one) is not `expected(probe)`, as
    /// sentences; a cell with an error is one too, said as such.
    pub fn violations(&self, expected: impl Fn(&Probe) -> bool) -> Vec<String> {
        self.cells
            .iter()
            .filter_map(|c| {
                let want = expected(&c.probe);
                if c.review.verdict() == Some(want) && c.request.verdict() == Some(want) {
                    return None;
                }
                let want = if want { "allowed" } else { "denied" };
                if c.is_error() {
                    return Some(format!(
                        "{} may {}: expected {want}, but no verdict: SubjectAccessReview {}, real request {}",
                        self.subject, c.probe, c.review, c.request
                    ));
                }
                Some(format!(
                    "{} may {}: expected {want}, SubjectAccessReview said {}, real request got {} ({})",
                    self.subject,
                    c.probe,
                    c.review,
                    c.status(),
                    c.request
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
                "  {:<60} review={:<8} request={:<8} ({})",
                c.probe.to_string(),
                c.review.to_string(),
                c.request.to_string(),
                c.status()
            )?;
        }
        Ok(())
    }
}

/// The expectation of a namespace-scoped deployer: allowed in `own` namespace, denied elsewhere and on cluster scope.
pub fn own_namespace_only(own: &str) -> impl Fn(&Probe) -> bool + '_ {
    move |probe| probe.namespace.as_deref() == Some(own) && probe.resource.namespaced
}

/// What a deployer's matrix asks about: what it deploys, and cluster-scoped
/// resources it must never touch (each expected denied by [`own_namespace_only`]).
pub fn deployer_resources() -> Vec<Resource> {
    vec![
        Resource::deployments(),
        Resource::services(),
        Resource::configmaps(),
        Resource::secrets(),
        Resource::virtualservices(),
        Resource::roles(),
        Resource::rolebindings(),
        Resource::namespaces(),
        Resource::nodes(),
        Resource::clusterroles(),
        Resource::clusterrolebindings(),
        Resource::customresourcedefinitions(),
    ]
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
    client_with_token(admin, &token)
}

/// A client of the same API server as `admin` that authenticates with `token`
/// only (no client certificate, no other credential).
pub fn client_with_token(admin: &Config, token: &str) -> Result<Client, RbacError> {
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

async fn review(admin: &Client, subject: &Subject, probe: &Probe) -> Answer {
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
    match api.create(&PostParams::default(), &sar).await {
        Ok(answer) => match answer.status {
            Some(status) if status.allowed => Answer::Allowed,
            Some(status)
                if status
                    .evaluation_error
                    .as_deref()
                    .is_some_and(|e| !e.is_empty()) =>
            {
                Answer::Error(format!(
                    "evaluation error: {}",
                    status.evaluation_error.unwrap_or_default()
                ))
            }
            Some(_) => Answer::Denied,
            None => Answer::Error("no status in the SubjectAccessReview".into()),
        },
        Err(error) => Answer::Error(
            RbacError::Review {
                subject: subject.to_string(),
                probe: probe.to_string(),
                source: error,
            }
            .to_string(),
        ),
    }
}

/// Sends the real request of `probe`: its answer and HTTP status (none when no
/// answer came back).
async fn real_request(client: &Client, probe: &Probe) -> Result<(Answer, Option<u16>), RbacError> {
    let r = &probe.resource;
    let collection = r.collection_path(probe.namespace.as_deref());
    let item = format!("{collection}/{PROBE_OBJECT}");
    let mut metadata = serde_json::json!({ "name": PROBE_OBJECT });
    if let Some(ns) = probe.namespace.as_ref().filter(|_| r.namespaced) {
        metadata["namespace"] = serde_json::json!(ns);
    }
    let mut body =
        serde_json::json!({ "apiVersion": r.api_version(), "kind": r.kind, "metadata": metadata });
    if r.kind == "RoleBinding" || r.kind == "ClusterRoleBinding" {
        // Without a roleRef the server fails (500) before deciding anything; a
        // ClusterRole that does not exist grants nothing even if created.
        body["roleRef"] = serde_json::json!({
            "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": PROBE_OBJECT
        });
    }
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
        Ok(_) => Ok((Answer::Allowed, Some(200))),
        Err(::kube::Error::Api(status)) => {
            let answer = match classify_status(status.code) {
                // The server's reason says why there is no verdict.
                Answer::Error(reason) if !status.message.is_empty() => {
                    Answer::Error(format!("{reason}: {}", status.message))
                }
                answer => answer,
            };
            Ok((answer, Some(status.code)))
        }
        Err(error) => Ok((Answer::Error(format!("no answer: {error}")), None)),
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
    let as_subject = client_as(admin, subject).await?;
    matrix_with_client(admin, subject, &as_subject, probes).await
}

/// [`matrix`] with the real requests sent by `as_subject`, a client that is
/// meant to authenticate as `subject` (a test can hand it a broken one).
pub async fn matrix_with_client(
    admin: &Config,
    subject: &Subject,
    as_subject: &Client,
    probes: Vec<Probe>,
) -> Result<Matrix, RbacError> {
    let admin_client = Client::try_from(admin.clone()).map_err(RbacError::Client)?;
    let mut cells = ask(&admin_client, as_subject, subject, probes).await?;
    // The authorizer's RBAC cache follows the API a moment behind: just after a Role is
    // written, a review may deny what a request a few milliseconds later is allowed (seen
    // on a loaded machine). Cells whose answers disagree are asked again, both ways, a few
    // times; a disagreement that outlasts that is reported.
    for _ in 0..DISAGREEMENT_RECHECKS {
        let disagreeing: Vec<usize> = (0..cells.len())
            .filter(|&i| cells[i].review != cells[i].request && !cells[i].is_error())
            .collect();
        if disagreeing.is_empty() {
            break;
        }
        tokio::time::sleep(DISAGREEMENT_RECHECK_DELAY).await;
        let again = disagreeing
            .iter()
            .map(|&i| cells[i].probe.clone())
            .collect();
        let answers = ask(&admin_client, as_subject, subject, again).await?;
        for (i, cell) in disagreeing.into_iter().zip(answers) {
            cells[i] = cell;
        }
    }
    Ok(Matrix {
        subject: subject.clone(),
        cells,
    })
}

/// How many times cells whose review and request disagree are asked again.
const DISAGREEMENT_RECHECKS: usize = 5;
/// The wait before each of those rounds.
const DISAGREEMENT_RECHECK_DELAY: std::time::Duration = std::time::Duration::from_millis(500);

/// Each probe's review, then its real request.
async fn ask(
    admin_client: &Client,
    as_subject: &Client,
    subject: &Subject,
    probes: Vec<Probe>,
) -> Result<Vec<Cell>, RbacError> {
    let checks = probes.into_iter().map(|probe| {
        let admin_client = admin_client.clone();
        let as_subject = as_subject.clone();
        async move {
            let review = review(&admin_client, subject, &probe).await;
            let (request, request_status) = real_request(&as_subject, &probe).await?;
            Ok::<Cell, RbacError>(Cell {
                probe,
                review,
                request,
                request_status,
            })
        }
    });
    futures::stream::iter(checks)
        .buffered(16)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect()
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

    fn cell(ns: Option<&str>, review: Answer, status: u16) -> Cell {
        Cell {
            probe: Probe {
                namespace: ns.map(String::from),
                resource: if ns.is_some() {
                    Resource::deployments()
                } else {
                    Resource::namespaces()
                },
                verb: Verb::Create,
            },
            review,
            request: classify_status(status),
            request_status: Some(status),
        }
    }

    fn matrix_of(cells: Vec<Cell>) -> Matrix {
        Matrix {
            subject: Subject::service_account("dev", "dev-deployer"),
            cells,
        }
    }

    #[test]
    fn a_cell_that_either_answer_gets_wrong_is_a_violation() {
        let matrix = matrix_of(vec![
            cell(Some("dev"), Answer::Allowed, 201),
            cell(Some("test"), Answer::Denied, 403),
            cell(Some("test"), Answer::Denied, 201),
            cell(None, Answer::Allowed, 403),
        ]);
        let violations = matrix.violations(own_namespace_only("dev"));
        assert_eq!(violations.len(), 2, "{violations:#?}");
        assert!(violations[0].contains("create deployments.apps in test: expected denied"));
        assert!(violations[0].contains("real request got HTTP 201 (allowed)"));
        assert!(
            violations[1].contains("(cluster): expected denied, SubjectAccessReview said allowed")
        );
        assert_eq!(matrix.disagreements().len(), 2);
        assert!(matrix.errors().is_empty());
    }

    #[test]
    fn only_success_or_an_answer_past_authorization_is_allowed() {
        for status in [200, 201, 404, 409, 422] {
            assert_eq!(classify_status(status), Answer::Allowed, "{status}");
        }
        assert_eq!(classify_status(403), Answer::Denied);
        for status in [400, 401, 405, 429, 500, 502, 503, 504] {
            assert!(classify_status(status).is_error(), "{status}");
            assert_eq!(classify_status(status).verdict(), None, "{status}");
        }
        assert!(classify_status(401).to_string().contains("401"));
        assert!(classify_status(429).to_string().contains("throttled"));
    }

    #[test]
    fn an_error_cell_is_a_violation_and_a_disagreement_whatever_was_expected() {
        // SubjectAccessReview and the expectation both say "denied" in test; the
        // real request was throttled: no verdict, so not an agreement.
        for status in [401, 429, 500, 503] {
            let matrix = matrix_of(vec![
                cell(Some("test"), Answer::Denied, status),
                cell(Some("dev"), Answer::Allowed, status),
            ]);
            let violations = matrix.violations(own_namespace_only("dev"));
            assert_eq!(violations.len(), 2, "{status}: {violations:#?}");
            for v in &violations {
                assert!(v.contains("no verdict"), "{v}");
                assert!(v.contains(&format!("HTTP {status}")), "{v}");
            }
            assert_eq!(matrix.disagreements().len(), 2, "{status}");
            assert_eq!(matrix.errors().len(), 2, "{status}");
        }
        // A review error is no verdict either, even when the request agrees.
        let matrix = matrix_of(vec![cell(
            Some("test"),
            Answer::Error("timeout".into()),
            403,
        )]);
        assert_eq!(matrix.violations(own_namespace_only("dev")).len(), 1);
        assert_eq!(matrix.disagreements().len(), 1);
    }

    #[test]
    fn the_deployer_matrix_probes_cluster_scoped_resources_expecting_denial() {
        let resources = deployer_resources();
        let cluster: Vec<_> = resources.iter().filter(|r| !r.namespaced).collect();
        for plural in ["namespaces", "nodes", "clusterroles", "clusterrolebindings"] {
            assert!(cluster.iter().any(|r| r.plural == plural), "{plural}");
        }
        let probes = probes(&["dev"], &resources, &Verb::ALL);
        let expected = own_namespace_only("dev");
        assert!(
            probes
                .iter()
                .filter(|p| p.namespace.is_none())
                .all(|p| !expected(p))
        );
        assert!(probes.iter().any(|p| p.namespace.is_none()));
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
