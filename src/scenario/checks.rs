//! The checks a scenario's `expect` step names: what each proves, and the
//! static ones, judged on the objects the pipeline deploys (pure functions of a
//! [`PipelineView`]). Live checks (placement, the RBAC matrix) are run by the
//! runner against the cluster; they are named here so scenario files can list them.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Container, PodSpec, Secret};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Deserialize;

use crate::manifests::istio::{StringMatch, VirtualService};
use crate::manifests::routing::{SESSION_COOKIE, USERID_METADATA};
use crate::manifests::{Bundle, Object};
use crate::report::Finding;

/// Every check a scenario can `expect`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CheckName {
    Replicas,
    AntiAffinityInSpec,
    PdbPerHaService,
    Placement,
    RollingStrategy,
    ReadinessProbes,
    GracefulShutdown,
    HealthzProbe,
    GrpcProbes,
    TlsSecret,
    Certificate,
    FeatureNames,
    SessionRoutesAnchored,
    SessionRoutesOrdered,
    RouteDestinations,
    NamespaceScoped,
    RbacMatrix,
}

impl CheckName {
    pub fn as_str(self) -> &'static str {
        match self {
            CheckName::Replicas => "replicas",
            CheckName::AntiAffinityInSpec => "anti-affinity-in-spec",
            CheckName::PdbPerHaService => "pdb-per-ha-service",
            CheckName::Placement => "placement",
            CheckName::RollingStrategy => "rolling-strategy",
            CheckName::ReadinessProbes => "readiness-probes",
            CheckName::GracefulShutdown => "graceful-shutdown",
            CheckName::HealthzProbe => "healthz-probe",
            CheckName::GrpcProbes => "grpc-probes",
            CheckName::TlsSecret => "tls-secret",
            CheckName::Certificate => "certificate",
            CheckName::FeatureNames => "feature-names",
            CheckName::SessionRoutesAnchored => "session-routes-anchored",
            CheckName::SessionRoutesOrdered => "session-routes-ordered",
            CheckName::RouteDestinations => "route-destinations",
            CheckName::NamespaceScoped => "namespace-scoped",
            CheckName::RbacMatrix => "rbac-matrix",
        }
    }

    /// One line saying what the check proves.
    pub fn description(self) -> &'static str {
        match self {
            CheckName::Replicas => "every HA Deployment asks for at least 2 replicas",
            CheckName::AntiAffinityInSpec => {
                "every HA Deployment's pods repel each other across kubernetes.io/hostname"
            }
            CheckName::PdbPerHaService => {
                "a PodDisruptionBudget covers every HA Deployment and lets one pod go at most while keeping one"
            }
            CheckName::Placement => "the pods of every HA Deployment run on at least 2 nodes",
            CheckName::RollingStrategy => {
                "every HA Deployment rolls (RollingUpdate) with maxUnavailable 0, never Recreate"
            }
            CheckName::ReadinessProbes => "every container has a readiness and a liveness probe",
            CheckName::GracefulShutdown => {
                "every HA pod drains before it stops: a preStop hook shorter than its grace period"
            }
            CheckName::HealthzProbe => "the frontend's readiness probe is an HTTP GET of /_healthz",
            CheckName::GrpcProbes => "every gRPC backend is probed by gRPC health",
            CheckName::TlsSecret => {
                "the Secret each HTTPS Gateway server names exists in the gateway's namespace with a certificate and key"
            }
            CheckName::Certificate => {
                "the ingress certificate covers the Gateway's hosts and does not expire within 30 days"
            }
            CheckName::FeatureNames => {
                "a feature image tag's branch suffix is appended to its Deployment, app label and Service"
            }
            CheckName::SessionRoutesAnchored => {
                "session routes match the session id exactly: look-alike cookies and ids do not match"
            }
            CheckName::SessionRoutesOrdered => {
                "every session route comes before the catch-all route of its VirtualService"
            }
            CheckName::RouteDestinations => {
                "every VirtualService destination is a Service the pipeline deploys"
            }
            CheckName::NamespaceScoped => {
                "the pipeline deploys nothing cluster-scoped and nothing outside its namespace (but the gateway's Secret and Gateway)"
            }
            CheckName::RbacMatrix => {
                "the deployer may change its own namespace and nothing else, checked with its real token"
            }
        }
    }

    /// Checks that need the cluster, run by the runner rather than by [`run_static`].
    pub fn is_live(self) -> bool {
        matches!(self, CheckName::Placement | CheckName::RbacMatrix)
    }
}

/// The namespace that holds the ingress gateway, its Gateway objects and certificates.
use crate::names::ISTIO_NAMESPACE as GATEWAY_NAMESPACE;

/// What the static checks look at: the pipeline's objects as a scenario deploys them.
pub struct PipelineView<'a> {
    /// The scenario's namespace.
    pub namespace: &'a str,
    /// The release deployed (mainline, and the feature branch when the scenario deploys it).
    pub bundle: &'a Bundle,
    /// Apps (the `app` label) that are single instances by design (e.g. `redis-cart`):
    /// not held to the HA checks.
    pub single_instance: &'a [String],
    /// Objects of the pipeline the runner did not deploy, with why (cluster-scoped,
    /// or outside the namespace).
    pub not_deployed: &'a [Finding],
    /// Days a certificate must still be valid for.
    pub certificate_min_days: i64,
}

/// The result of a static check: findings (empty = passed) or why it does not apply.
#[derive(Clone, Debug, PartialEq)]
pub enum Judgement {
    Findings(Vec<Finding>),
    /// The pipeline has nothing this check is about (e.g. no feature branch): not a pass.
    NotApplicable(String),
}

fn key(kind: &str, namespace: &str, name: &str) -> String {
    format!("{kind}/{namespace}/{name}")
}

fn deployment_key(d: &Deployment) -> String {
    key(
        "Deployment",
        d.metadata.namespace.as_deref().unwrap_or(""),
        d.metadata.name.as_deref().unwrap_or(""),
    )
}

/// The `app` label of a Deployment's pods (its name when it has none).
pub fn app_of(d: &Deployment) -> String {
    d.spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.labels.as_ref())
        .and_then(|l| l.get("app").cloned())
        .unwrap_or_else(|| d.metadata.name.clone().unwrap_or_default())
}

fn pod_spec(d: &Deployment) -> Option<&PodSpec> {
    d.spec.as_ref().and_then(|s| s.template.spec.as_ref())
}

fn containers(d: &Deployment) -> &[Container] {
    pod_spec(d).map(|p| p.containers.as_slice()).unwrap_or(&[])
}

/// The Deployments held to the HA checks.
pub fn ha_deployments<'a>(view: &'a PipelineView<'a>) -> Vec<&'a Deployment> {
    view.bundle
        .deployments()
        .filter(|d| !view.single_instance.contains(&app_of(d)))
        .collect()
}

/// Runs a static check. Panics if asked for a live one (the runner never does).
pub fn run_static(check: CheckName, view: &PipelineView) -> Judgement {
    let findings = match check {
        CheckName::Replicas => replicas(view),
        CheckName::AntiAffinityInSpec => anti_affinity(view),
        CheckName::PdbPerHaService => pdbs(view),
        CheckName::RollingStrategy => rolling_strategy(view),
        CheckName::ReadinessProbes => probes_present(view),
        CheckName::GracefulShutdown => graceful_shutdown(view),
        CheckName::HealthzProbe => return healthz_probe(view),
        CheckName::GrpcProbes => grpc_probes(view),
        CheckName::TlsSecret => return tls_secret(view),
        CheckName::Certificate => return certificate(view),
        CheckName::FeatureNames => return feature_names(view),
        CheckName::SessionRoutesAnchored => return session_routes_anchored(view),
        CheckName::SessionRoutesOrdered => session_routes_ordered(view),
        CheckName::RouteDestinations => route_destinations(view),
        CheckName::NamespaceScoped => view.not_deployed.to_vec(),
        CheckName::Placement | CheckName::RbacMatrix => {
            unreachable!("{} is a live check", check.as_str())
        }
    };
    Judgement::Findings(findings)
}

fn replicas(view: &PipelineView) -> Vec<Finding> {
    ha_deployments(view)
        .into_iter()
        .filter_map(|d| {
            let replicas = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
            (replicas < 2).then(|| {
                Finding::about(
                    deployment_key(d),
                    format!("asks for {replicas} replica(s); HA needs at least 2"),
                )
            })
        })
        .collect()
}

/// True when `selector` (matchLabels only, or matchExpressions `In`) selects `labels`.
fn selects(
    selector: &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
    labels: &BTreeMap<String, String>,
) -> bool {
    let labels_ok = selector
        .match_labels
        .as_ref()
        .is_none_or(|m| m.iter().all(|(k, v)| labels.get(k) == Some(v)));
    let expressions_ok = selector.match_expressions.as_ref().is_none_or(|es| {
        es.iter().all(|e| {
            let value = labels.get(&e.key);
            let values = e.values.clone().unwrap_or_default();
            match e.operator.as_str() {
                "In" => value.is_some_and(|v| values.contains(v)),
                "NotIn" => value.is_none_or(|v| !values.contains(v)),
                "Exists" => value.is_some(),
                "DoesNotExist" => value.is_none(),
                _ => false,
            }
        })
    });
    let empty = selector.match_labels.as_ref().is_none_or(|m| m.is_empty())
        && selector
            .match_expressions
            .as_ref()
            .is_none_or(|e| e.is_empty());
    !empty && labels_ok && expressions_ok
}

fn template_labels(d: &Deployment) -> BTreeMap<String, String> {
    d.spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default()
}

fn anti_affinity(view: &PipelineView) -> Vec<Finding> {
    let mut out = Vec::new();
    for d in ha_deployments(view) {
        let labels = template_labels(d);
        let anti = pod_spec(d)
            .and_then(|p| p.affinity.as_ref())
            .and_then(|a| a.pod_anti_affinity.as_ref());
        let mut terms = Vec::new();
        if let Some(anti) = anti {
            for t in anti
                .required_during_scheduling_ignored_during_execution
                .iter()
                .flatten()
            {
                terms.push(t.clone());
            }
            for w in anti
                .preferred_during_scheduling_ignored_during_execution
                .iter()
                .flatten()
            {
                terms.push(w.pod_affinity_term.clone());
            }
        }
        let repels_itself = terms.iter().any(|t| {
            t.topology_key == "kubernetes.io/hostname"
                && t.label_selector
                    .as_ref()
                    .is_some_and(|s| selects(s, &labels))
        });
        if !repels_itself {
            out.push(Finding::about(
                deployment_key(d),
                if terms.is_empty() {
                    "has no pod anti-affinity: its replicas may share a node".to_string()
                } else {
                    "has no anti-affinity term on kubernetes.io/hostname that selects its own pods"
                        .to_string()
                },
            ));
        }
    }
    out
}

fn pdbs(view: &PipelineView) -> Vec<Finding> {
    let pdbs: Vec<_> = view
        .bundle
        .objects
        .iter()
        .filter_map(|o| match o {
            Object::PodDisruptionBudget(p) => Some(p),
            _ => None,
        })
        .collect();
    let mut out = Vec::new();
    for d in ha_deployments(view) {
        let labels = template_labels(d);
        let replicas = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        let covering: Vec<_> = pdbs
            .iter()
            .filter(|p| {
                p.spec
                    .as_ref()
                    .and_then(|s| s.selector.as_ref())
                    .is_some_and(|s| selects(s, &labels))
            })
            .collect();
        let Some(pdb) = covering.first() else {
            out.push(Finding::about(
                deployment_key(d),
                "no PodDisruptionBudget selects its pods: a drain may evict them all at once",
            ));
            continue;
        };
        let spec = pdb.spec.clone().unwrap_or_default();
        let resolve = |v: &IntOrString| match v {
            IntOrString::Int(i) => *i,
            IntOrString::String(s) => {
                let percent: i32 = s.trim_end_matches('%').parse().unwrap_or(0);
                // minAvailable rounds up, maxUnavailable rounds up too (Kubernetes' rule).
                (replicas * percent + 99) / 100
            }
        };
        let kept = match (&spec.min_available, &spec.max_unavailable) {
            (Some(min), _) => resolve(min),
            (None, Some(max)) => replicas - resolve(max),
            (None, None) => replicas - 1,
        };
        let name = key(
            "PodDisruptionBudget",
            pdb.metadata.namespace.as_deref().unwrap_or(""),
            pdb.metadata.name.as_deref().unwrap_or(""),
        );
        if kept < 1 {
            out.push(Finding::about(
                name.clone(),
                format!(
                    "keeps {kept} of {} pod(s) of {}: a drain may take them all",
                    replicas,
                    deployment_key(d)
                ),
            ));
        }
        if kept >= replicas {
            out.push(Finding::about(
                name,
                format!(
                    "keeps all {replicas} pod(s) of {}: no node holding one can ever be drained",
                    deployment_key(d)
                ),
            ));
        }
    }
    out
}

fn rolling_strategy(view: &PipelineView) -> Vec<Finding> {
    let mut out = Vec::new();
    for d in ha_deployments(view) {
        let strategy = d.spec.as_ref().and_then(|s| s.strategy.clone());
        let kind = strategy
            .as_ref()
            .and_then(|s| s.type_.clone())
            .unwrap_or_else(|| "RollingUpdate".into());
        if kind != "RollingUpdate" {
            out.push(Finding::about(
                deployment_key(d),
                format!("strategy {kind}: every pod stops before new ones start (downtime)"),
            ));
            continue;
        }
        // Kubernetes' default maxUnavailable is 25%, which rounds down to 0 only below 4 replicas.
        let replicas = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        let max_unavailable = strategy
            .as_ref()
            .and_then(|s| s.rolling_update.as_ref())
            .and_then(|r| r.max_unavailable.clone())
            .unwrap_or(IntOrString::String("25%".into()));
        let unavailable = match &max_unavailable {
            IntOrString::Int(i) => *i,
            IntOrString::String(s) => {
                replicas * s.trim_end_matches('%').parse::<i32>().unwrap_or(100) / 100
            }
        };
        if unavailable > 0 {
            out.push(Finding::about(
                deployment_key(d),
                format!(
                    "maxUnavailable {} lets {unavailable} of {replicas} ready pod(s) go during a rollout",
                    match max_unavailable {
                        IntOrString::Int(i) => i.to_string(),
                        IntOrString::String(s) => s,
                    }
                ),
            ));
        }
    }
    out
}

fn probes_present(view: &PipelineView) -> Vec<Finding> {
    let mut out = Vec::new();
    for d in view.bundle.deployments() {
        for c in containers(d) {
            for (what, present) in [
                ("readiness", c.readiness_probe.is_some()),
                ("liveness", c.liveness_probe.is_some()),
            ] {
                if !present {
                    out.push(Finding::about(
                        deployment_key(d),
                        format!("container {} has no {what} probe", c.name),
                    ));
                }
            }
        }
    }
    out
}

fn graceful_shutdown(view: &PipelineView) -> Vec<Finding> {
    let mut out = Vec::new();
    for d in ha_deployments(view) {
        let grace = pod_spec(d)
            .and_then(|p| p.termination_grace_period_seconds)
            .unwrap_or(30);
        for c in containers(d) {
            let pre_stop = c.lifecycle.as_ref().and_then(|l| l.pre_stop.as_ref());
            let Some(pre_stop) = pre_stop else {
                out.push(Finding::about(
                    deployment_key(d),
                    format!(
                        "container {} has no preStop hook: it stops while still receiving traffic",
                        c.name
                    ),
                ));
                continue;
            };
            let sleep = pre_stop.sleep.as_ref().map(|s| s.seconds).or_else(|| {
                pre_stop
                    .exec
                    .as_ref()
                    .and_then(|e| e.command.as_ref())
                    .and_then(|cmd| {
                        cmd.iter()
                            .position(|a| a == "sleep" || a.ends_with("/sleep"))
                            .and_then(|i| cmd.get(i + 1))
                            .and_then(|s| s.parse().ok())
                    })
            });
            if let Some(sleep) = sleep
                && sleep >= grace
            {
                out.push(Finding::about(
                    deployment_key(d),
                    format!(
                        "container {}: preStop waits {sleep}s but the grace period is {grace}s, so it is killed mid-drain",
                        c.name
                    ),
                ));
            }
        }
    }
    out
}

fn healthz_probe(view: &PipelineView) -> Judgement {
    let frontends: Vec<_> = view
        .bundle
        .deployments()
        .filter(|d| app_of(d) == "frontend")
        .collect();
    if frontends.is_empty() {
        return Judgement::NotApplicable("the pipeline deploys no frontend".into());
    }
    let mut out = Vec::new();
    for d in frontends {
        for c in containers(d) {
            let path = c
                .readiness_probe
                .as_ref()
                .and_then(|p| p.http_get.as_ref())
                .and_then(|h| h.path.clone());
            if path.as_deref() != Some("/_healthz") {
                out.push(Finding::about(
                    deployment_key(d),
                    format!(
                        "container {}: readiness probe is {}, not an HTTP GET of /_healthz",
                        c.name,
                        path.map(|p| format!("GET {p}"))
                            .unwrap_or_else(|| "not HTTP".into())
                    ),
                ));
            }
        }
    }
    Judgement::Findings(out)
}

fn grpc_probes(view: &PipelineView) -> Vec<Finding> {
    let mut out = Vec::new();
    for d in view.bundle.deployments() {
        let app = app_of(d);
        // A feature branch (`adservice-myfeature`) is held to its mainline's probe kind.
        let workload = crate::catalog::find(&app).or_else(|| {
            crate::catalog::all()
                .iter()
                .filter(|w| app.starts_with(&format!("{}-", w.name)))
                .max_by_key(|w| w.name.len())
        });
        let Some(workload) = workload else {
            continue;
        };
        let expects_grpc = workload
            .readiness
            .as_ref()
            .is_some_and(|p| matches!(p.action, crate::catalog::ProbeAction::Grpc { .. }));
        if !expects_grpc {
            continue;
        }
        for c in containers(d) {
            let probe = c.readiness_probe.as_ref();
            if probe.is_none_or(|p| p.grpc.is_none()) {
                out.push(Finding::about(
                    deployment_key(d),
                    format!(
                        "container {}: a gRPC backend whose readiness probe is not gRPC health",
                        c.name
                    ),
                ));
            }
        }
    }
    out
}

fn gateways(bundle: &Bundle) -> Vec<&crate::manifests::istio::Gateway> {
    bundle
        .objects
        .iter()
        .filter_map(|o| match o {
            Object::Gateway(g) => Some(g),
            _ => None,
        })
        .collect()
}

fn secrets(bundle: &Bundle) -> Vec<&Secret> {
    bundle
        .objects
        .iter()
        .filter_map(|o| match o {
            Object::Secret(s) => Some(s),
            _ => None,
        })
        .collect()
}

/// The certificate PEM of a TLS Secret (`tls.crt`, or a generic Secret's `cert`).
fn certificate_pem(secret: &Secret) -> Option<String> {
    let data = secret.data.as_ref();
    let string_data = secret.string_data.as_ref();
    ["tls.crt", "cert"].iter().find_map(|k| {
        data.and_then(|d| d.get(*k))
            .map(|b| String::from_utf8_lossy(&b.0).to_string())
            .or_else(|| string_data.and_then(|d| d.get(*k)).cloned())
    })
}

fn has_key(secret: &Secret, keys: &[&str]) -> bool {
    keys.iter().any(|k| {
        secret.data.as_ref().is_some_and(|d| d.contains_key(*k))
            || secret
                .string_data
                .as_ref()
                .is_some_and(|d| d.contains_key(*k))
    })
}

/// Every HTTPS server's credentialName, with its Gateway and hosts.
fn https_servers(bundle: &Bundle) -> Vec<(String, Option<String>, Vec<String>)> {
    let mut out = Vec::new();
    for g in gateways(bundle) {
        for server in &g.spec.servers {
            if let Some(tls) = &server.tls
                && tls.mode != "PASSTHROUGH"
            {
                out.push((
                    key(
                        "Gateway",
                        g.metadata.namespace.as_deref().unwrap_or(""),
                        g.metadata.name.as_deref().unwrap_or(""),
                    ),
                    tls.credential_name.clone(),
                    server.hosts.clone(),
                ));
            }
        }
    }
    out
}

fn tls_secret(view: &PipelineView) -> Judgement {
    let servers = https_servers(view.bundle);
    if servers.is_empty() {
        return Judgement::Findings(vec![Finding::new(
            "no Gateway serves HTTPS (no server with tls): the pipeline promises HTTPS at the ingress",
        )]);
    }
    let mut out = Vec::new();
    for (gateway, credential, _) in servers {
        let Some(credential) = credential else {
            out.push(Finding::about(
                gateway,
                "an HTTPS server names no credentialName",
            ));
            continue;
        };
        let all = secrets(view.bundle);
        let in_gateway_ns = all.iter().find(|s| {
            s.metadata.name.as_deref() == Some(credential.as_str())
                && s.metadata.namespace.as_deref() == Some(GATEWAY_NAMESPACE)
        });
        let Some(secret) = in_gateway_ns else {
            let elsewhere = all
                .iter()
                .find(|s| s.metadata.name.as_deref() == Some(credential.as_str()));
            out.push(Finding::about(
                gateway,
                match elsewhere {
                    Some(s) => format!(
                        "credentialName {credential} is in namespace {}, but the gateway reads Secrets only from {GATEWAY_NAMESPACE}",
                        s.metadata.namespace.as_deref().unwrap_or("")
                    ),
                    None => format!(
                        "credentialName {credential}: no such Secret in {GATEWAY_NAMESPACE}"
                    ),
                },
            ));
            continue;
        };
        let secret_key = key("Secret", GATEWAY_NAMESPACE, &credential);
        let kind = secret.type_.clone().unwrap_or_else(|| "Opaque".into());
        let (cert_keys, key_keys): (&[&str], &[&str]) = if kind == "kubernetes.io/tls" {
            (&["tls.crt"], &["tls.key"])
        } else {
            (&["cert"], &["key"])
        };
        if !has_key(secret, cert_keys) || !has_key(secret, key_keys) {
            out.push(Finding::about(
                secret_key,
                format!(
                    "type {kind} needs {} and {}",
                    cert_keys.join("/"),
                    key_keys.join("/")
                ),
            ));
        }
    }
    Judgement::Findings(out)
}

fn certificate(view: &PipelineView) -> Judgement {
    let servers = https_servers(view.bundle);
    if servers.is_empty() {
        return Judgement::NotApplicable("no Gateway serves HTTPS".into());
    }
    let mut out = Vec::new();
    for (gateway, credential, hosts) in servers {
        let Some(secret) = credential.and_then(|c| {
            secrets(view.bundle).into_iter().find(|s| {
                s.metadata.name.as_deref() == Some(c.as_str())
                    && s.metadata.namespace.as_deref() == Some(GATEWAY_NAMESPACE)
            })
        }) else {
            out.push(Finding::about(
                gateway,
                "no certificate to check (see tls-secret)",
            ));
            continue;
        };
        let secret_key = key(
            "Secret",
            GATEWAY_NAMESPACE,
            secret.metadata.name.as_deref().unwrap_or(""),
        );
        let Some(pem) = certificate_pem(secret) else {
            out.push(Finding::about(secret_key, "holds no certificate"));
            continue;
        };
        match certificate_facts(&pem) {
            Err(why) => out.push(Finding::about(secret_key, why)),
            Ok((names, not_after)) => {
                for host in hosts.iter().filter(|h| h.as_str() != "*") {
                    let host = host.rsplit('/').next().unwrap_or(host);
                    if !names
                        .iter()
                        .any(|n| crate::manifests::tls::name_covers_host(n, host))
                    {
                        out.push(Finding::about(
                            secret_key.clone(),
                            format!(
                                "the certificate (for {}) does not cover host {host}",
                                names.join(", ")
                            ),
                        ));
                    }
                }
                let left = not_after - time::OffsetDateTime::now_utc();
                if left.whole_days() < view.certificate_min_days {
                    out.push(Finding::about(
                        secret_key,
                        format!(
                            "the certificate expires in {} day(s) (at {not_after}); at least {} required",
                            left.whole_days(),
                            view.certificate_min_days
                        ),
                    ));
                }
            }
        }
    }
    Judgement::Findings(out)
}

fn certificate_facts(pem: &str) -> Result<(Vec<String>, time::OffsetDateTime), String> {
    let mut reader = pem.as_bytes();
    let der = rustls_pemfile::certs(&mut reader)
        .next()
        .ok_or("holds no PEM certificate")?
        .map_err(|e| format!("holds an unreadable certificate: {e}"))?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| format!("holds an unparsable certificate: {e}"))?;
    let names = crate::manifests::tls::dns_names(&cert);
    Ok((names, cert.validity().not_after.to_datetime()))
}

/// The tag of an image reference (`repo/name:tag@sha256:...` -> `tag`).
fn image_tag(image: &str) -> Option<&str> {
    crate::manifests::image::ImageRef::parse(image).tag
}

fn feature_names(view: &PipelineView) -> Judgement {
    let services: Vec<_> = view
        .bundle
        .objects
        .iter()
        .filter_map(|o| match o {
            Object::Service(s) => Some(s),
            _ => None,
        })
        .collect();
    let mut features = 0;
    let mut out = Vec::new();
    for d in view.bundle.deployments() {
        let Some(image) = containers(d).first().and_then(|c| c.image.clone()) else {
            continue;
        };
        let Some(tag) = image_tag(&image) else {
            continue;
        };
        let name = d.metadata.name.clone().unwrap_or_default();
        let Ok(suffix) = crate::manifests::feature::branch_suffix(&name, tag) else {
            continue;
        };
        if suffix.is_empty() {
            continue;
        }
        features += 1;
        let app = app_of(d);
        if !name.ends_with(&suffix) {
            out.push(Finding::about(
                deployment_key(d),
                format!("image tag {tag} names branch {suffix}, but the Deployment is not named *{suffix}"),
            ));
        }
        if !app.ends_with(&suffix) {
            out.push(Finding::about(
                deployment_key(d),
                format!("image tag {tag}: its pods' app label {app} lacks {suffix}, so mainline Services select them"),
            ));
        }
        let selected_by: Vec<_> = services
            .iter()
            .filter(|s| {
                s.spec
                    .as_ref()
                    .and_then(|s| s.selector.as_ref())
                    .is_some_and(|sel| {
                        !sel.is_empty()
                            && sel
                                .iter()
                                .all(|(k, v)| template_labels(d).get(k) == Some(v))
                    })
            })
            .collect();
        if selected_by.is_empty() {
            out.push(Finding::about(
                deployment_key(d),
                format!("no Service selects the {suffix} pods"),
            ));
        }
        for s in selected_by {
            let service = s.metadata.name.clone().unwrap_or_default();
            if !service.ends_with(&suffix) {
                out.push(Finding::about(
                    key(
                        "Service",
                        s.metadata.namespace.as_deref().unwrap_or(""),
                        &service,
                    ),
                    format!("selects the {suffix} pods but is not named *{suffix}"),
                ));
            }
        }
    }
    if features == 0 {
        return Judgement::NotApplicable("no Deployment runs a feature image tag".into());
    }
    Judgement::Findings(out)
}

fn virtual_services(bundle: &Bundle) -> Vec<&VirtualService> {
    bundle
        .objects
        .iter()
        .filter_map(|o| match o {
            Object::VirtualService(v) => Some(v),
            _ => None,
        })
        .collect()
}

fn vs_key(vs: &VirtualService) -> String {
    key(
        "VirtualService",
        vs.metadata.namespace.as_deref().unwrap_or(""),
        vs.metadata.name.as_deref().unwrap_or(""),
    )
}

/// How Envoy applies a header `regex`: to the whole value (RE2 full match).
fn full_match(pattern: &str) -> Result<regex::Regex, regex::Error> {
    regex::Regex::new(&format!("^(?:{pattern})$"))
}

fn session_routes_anchored(view: &PipelineView) -> Judgement {
    let mut out = Vec::new();
    let mut routes = 0;
    for vs in virtual_services(view.bundle) {
        for route in &vs.spec.http {
            for m in &route.matches {
                for (header, matcher) in &m.headers {
                    let place = format!("{} route {}", vs_key(vs), route.name);
                    if header == "cookie" {
                        let StringMatch::Regex(pattern) = matcher else {
                            routes += 1;
                            out.push(Finding::about(
                                place,
                                "matches the cookie header with exact/prefix: the session cookie among other cookies does not match, and prefix lets look-alikes in",
                            ));
                            continue;
                        };
                        routes += 1;
                        out.extend(cookie_regex_findings(&place, pattern));
                    } else if header == USERID_METADATA {
                        routes += 1;
                        if !matches!(matcher, StringMatch::Exact(_)) {
                            out.push(Finding::about(
                                place,
                                format!(
                                    "matches {USERID_METADATA} with {matcher:?}: only exact keeps other users off the feature"
                                ),
                            ));
                        }
                    }
                }
            }
        }
    }
    if routes == 0 {
        // A feature branch nobody can reach is the pipeline's fault; no branch, no question.
        let branches: Vec<String> = view
            .bundle
            .deployments()
            .filter(|d| {
                containers(d)
                    .first()
                    .and_then(|c| c.image.as_deref())
                    .and_then(image_tag)
                    .and_then(|tag| crate::manifests::feature::branch_suffix("", tag).ok())
                    .is_some_and(|suffix| !suffix.is_empty())
            })
            .map(deployment_key)
            .collect();
        if branches.is_empty() {
            return Judgement::NotApplicable("no VirtualService routes by session".into());
        }
        return Judgement::Findings(
            branches
                .into_iter()
                .map(|b| {
                    Finding::about(
                        b,
                        "is a feature branch, but no VirtualService routes a session (cookie or userid) to anything",
                    )
                })
                .collect(),
        );
    }
    Judgement::Findings(out)
}

/// Tries the cookie regex as Envoy would on the session's own cookie and on look-alikes.
fn cookie_regex_findings(place: &str, pattern: &str) -> Vec<Finding> {
    let regex = match full_match(pattern) {
        Ok(r) => r,
        Err(e) => {
            return vec![Finding::about(
                place,
                format!("regex does not compile: {e}"),
            )];
        }
    };
    // The id is what follows `shop_session-id=` in the pattern, unescaped.
    let escaped = format!("{}=", regex::escape(SESSION_COOKIE));
    let plain = format!("{SESSION_COOKIE}=");
    let after = pattern
        .split_once(&escaped)
        .or_else(|| pattern.split_once(&plain));
    let Some(id) = after.map(|(_, rest)| {
        let mut id = String::new();
        let mut chars = rest.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '\\' => {
                    if let Some(n) = chars.next() {
                        id.push(n)
                    }
                }
                c if c.is_ascii_alphanumeric() || c == '-' || c == '_' => id.push(c),
                _ => break,
            }
        }
        id
    }) else {
        return vec![Finding::about(
            place,
            format!("regex {pattern:?} does not name the {SESSION_COOKIE} cookie"),
        )];
    };
    if id.is_empty() {
        return vec![Finding::about(
            place,
            format!("regex {pattern:?} matches any {SESSION_COOKIE}, not one session"),
        )];
    }
    let cookie = SESSION_COOKIE;
    let short = &id[..id.len() - 1];
    let must_match = [
        format!("{cookie}={id}"),
        format!("a=b; {cookie}={id}"),
        format!("{cookie}={id}; a=b"),
    ];
    let must_not = [
        (format!("{cookie}={id}x"), "the id plus one character"),
        (
            format!("{cookie}={short}"),
            "the id less its last character",
        ),
        (format!("x{cookie}={id}"), "the id in another cookie's name"),
        (
            format!("a=x{cookie}={id}"),
            "the id inside another cookie's value",
        ),
        (String::new(), "no cookie"),
    ];
    let mut out = Vec::new();
    for value in &must_match {
        if !regex.is_match(value) {
            out.push(Finding::about(
                place,
                format!("regex {pattern:?} does not route the session's own cookie {value:?}"),
            ));
        }
    }
    for (value, what) in &must_not {
        if regex.is_match(value) {
            out.push(Finding::about(
                place,
                format!("regex {pattern:?} also routes {what} ({value:?}): sessions leak onto the feature"),
            ));
        }
    }
    out
}

fn session_routes_ordered(view: &PipelineView) -> Vec<Finding> {
    let mut out = Vec::new();
    for vs in virtual_services(view.bundle) {
        let catch_all = vs.spec.http.iter().position(|r| r.matches.is_empty());
        if let Some(at) = catch_all {
            for late in vs.spec.http.iter().skip(at + 1) {
                out.push(Finding::about(
                    vs_key(vs),
                    format!(
                        "route {} comes after the catch-all route {} (the first match wins), so it never applies",
                        late.name, vs.spec.http[at].name
                    ),
                ));
            }
        }
    }
    out
}

/// The Service a destination host names, as `(name, namespace)`.
fn service_of_host(host: &str, default_namespace: &str) -> (String, String) {
    let parts: Vec<&str> = host.split('.').collect();
    match parts.as_slice() {
        [name] => (name.to_string(), default_namespace.to_string()),
        [name, namespace, ..] => (name.to_string(), namespace.to_string()),
        [] => (String::new(), default_namespace.to_string()),
    }
}

fn route_destinations(view: &PipelineView) -> Vec<Finding> {
    let services: BTreeSet<(String, String)> = view
        .bundle
        .objects
        .iter()
        .filter_map(|o| match o {
            Object::Service(s) => Some((
                s.metadata.name.clone().unwrap_or_default(),
                s.metadata.namespace.clone().unwrap_or_default(),
            )),
            _ => None,
        })
        .collect();
    let mut out = Vec::new();
    for vs in virtual_services(view.bundle) {
        let namespace = vs.metadata.namespace.as_deref().unwrap_or(view.namespace);
        for route in &vs.spec.http {
            for dest in &route.route {
                let target = service_of_host(&dest.destination.host, namespace);
                if !services.contains(&target) {
                    out.push(Finding::about(
                        vs_key(vs),
                        format!(
                            "route {} sends to {}, which is no Service the pipeline deploys",
                            route.name, dest.destination.host
                        ),
                    ));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifests::{self, Options};

    fn bundle(configure: impl FnOnce(&mut Options)) -> Bundle {
        let mut options = Options::for_env("dev");
        options.loadgenerator = false;
        options.features = vec![
            manifests::FeatureBranch::new("frontend", "0.10.6-myfeature").unwrap(),
            manifests::FeatureBranch::new("adservice", "0.10.6-myfeature").unwrap(),
        ];
        options.sessions = vec![manifests::SessionId::parse("3f1c2a9e").unwrap()];
        configure(&mut options);
        manifests::render(&options).unwrap()
    }

    fn judge(check: CheckName, bundle: &Bundle) -> Judgement {
        let single = vec!["redis-cart".to_string(), "loadgenerator".to_string()];
        let view = PipelineView {
            namespace: "dev",
            bundle,
            single_instance: &single,
            not_deployed: &[],
            certificate_min_days: 30,
        };
        run_static(check, &view)
    }

    fn findings(check: CheckName, bundle: &Bundle) -> Vec<Finding> {
        match judge(check, bundle) {
            Judgement::Findings(f) => f,
            Judgement::NotApplicable(why) => panic!("{} not applicable: {why}", check.as_str()),
        }
    }

    const STATIC: [CheckName; 15] = [
        CheckName::Replicas,
        CheckName::AntiAffinityInSpec,
        CheckName::PdbPerHaService,
        CheckName::RollingStrategy,
        CheckName::ReadinessProbes,
        CheckName::GracefulShutdown,
        CheckName::HealthzProbe,
        CheckName::GrpcProbes,
        CheckName::TlsSecret,
        CheckName::Certificate,
        CheckName::FeatureNames,
        CheckName::SessionRoutesAnchored,
        CheckName::SessionRoutesOrdered,
        CheckName::RouteDestinations,
        CheckName::NamespaceScoped,
    ];

    #[test]
    fn the_reference_pipeline_passes_every_static_check() {
        let b = bundle(|_| {});
        for check in STATIC {
            assert_eq!(findings(check, &b), vec![], "{}", check.as_str());
        }
    }

    fn mutate_deployment(b: &mut Bundle, name: &str, f: impl FnOnce(&mut Deployment)) {
        for o in &mut b.objects {
            if let Object::Deployment(d) = o
                && d.metadata.name.as_deref() == Some(name)
            {
                f(d);
                return;
            }
        }
        panic!("no deployment {name}");
    }

    #[test]
    fn one_deployment_without_anti_affinity_is_found() {
        let mut b = bundle(|_| {});
        mutate_deployment(&mut b, "cartservice", |d| {
            d.spec
                .as_mut()
                .unwrap()
                .template
                .spec
                .as_mut()
                .unwrap()
                .affinity = None
        });
        let f = findings(CheckName::AntiAffinityInSpec, &b);
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].object.as_deref(), Some("Deployment/dev/cartservice"));
    }

    #[test]
    fn a_recreate_strategy_or_one_replica_is_found() {
        let b = bundle(|o| o.strategy = manifests::Strategy::Recreate);
        let f = findings(CheckName::RollingStrategy, &b);
        assert!(f.len() >= 10, "{f:?}");
        assert!(f[0].message.contains("Recreate"), "{f:?}");
        let mut b = bundle(|_| {});
        mutate_deployment(&mut b, "frontend", |d| {
            d.spec.as_mut().unwrap().replicas = Some(1)
        });
        let f = findings(CheckName::Replicas, &b);
        assert_eq!(f.len(), 1, "{f:?}");
    }

    #[test]
    fn a_missing_pdb_is_found() {
        let mut b = bundle(|_| {});
        b.objects.retain(|o| {
            !(matches!(o, Object::PodDisruptionBudget(_)) && o.name() == "checkoutservice")
        });
        let f = findings(CheckName::PdbPerHaService, &b);
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(
            f[0].object.as_deref(),
            Some("Deployment/dev/checkoutservice")
        );
    }

    #[test]
    fn a_container_without_readiness_probe_is_found() {
        let mut b = bundle(|_| {});
        mutate_deployment(&mut b, "emailservice", |d| {
            d.spec
                .as_mut()
                .unwrap()
                .template
                .spec
                .as_mut()
                .unwrap()
                .containers[0]
                .readiness_probe = None
        });
        let f = findings(CheckName::ReadinessProbes, &b);
        assert_eq!(f.len(), 1, "{f:?}");
        assert!(f[0].message.contains("readiness"));
        assert!(!findings(CheckName::GrpcProbes, &b).is_empty());
    }

    #[test]
    fn an_unanchored_cookie_regex_is_found_by_its_look_alikes() {
        let findings = cookie_regex_findings("vs", r".*shop_session-id=abc.*");
        let shown: Vec<String> = findings.iter().map(|f| f.message.clone()).collect();
        assert!(
            shown.iter().any(|m| m.contains("plus one character")),
            "{shown:?}"
        );
        assert!(
            shown.iter().any(|m| m.contains("another cookie's name")),
            "{shown:?}"
        );
        let anchored = crate::manifests::routing::session_cookie_regex(
            &crate::manifests::SessionId::parse("abc").unwrap(),
        );
        assert_eq!(cookie_regex_findings("vs", &anchored), vec![]);
        // Anchored at the start but open at the end: only the longer id leaks.
        let open_end = r"^(.*;\s*)?shop_session-id=abc.*$";
        let f = cookie_regex_findings("vs", open_end);
        assert_eq!(f.len(), 1, "{f:?}");
        assert!(f[0].message.contains("plus one character"));
    }

    #[test]
    fn a_session_route_after_the_catch_all_is_found() {
        let mut b = bundle(|_| {});
        for o in &mut b.objects {
            if let Object::VirtualService(vs) = o
                && vs.metadata.name.as_deref() == Some("frontend")
            {
                vs.spec.http.rotate_left(1);
            }
        }
        let f = findings(CheckName::SessionRoutesOrdered, &b);
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].object.as_deref(), Some("VirtualService/dev/frontend"));
    }

    #[test]
    fn a_destination_without_a_service_is_found() {
        let mut b = bundle(|_| {});
        b.objects
            .retain(|o| !(matches!(o, Object::Service(_)) && o.name() == "frontend-myfeature"));
        let f = findings(CheckName::RouteDestinations, &b);
        assert_eq!(f.len(), 1, "{f:?}");
        assert!(f[0].message.contains("frontend-myfeature"), "{f:?}");
    }

    #[test]
    fn a_tls_secret_outside_the_gateway_namespace_is_found() {
        let mut b = bundle(|_| {});
        for o in &mut b.objects {
            if let Object::Secret(s) = o {
                s.metadata.namespace = Some("dev".into());
            }
        }
        let f = findings(CheckName::TlsSecret, &b);
        assert_eq!(f.len(), 1, "{f:?}");
        assert!(f[0].message.contains("in namespace dev"), "{f:?}");
    }

    #[test]
    fn a_feature_deployment_keeping_the_mainline_app_label_is_found() {
        let mut b = bundle(|_| {});
        mutate_deployment(&mut b, "frontend-myfeature", |d| {
            let t = &mut d.spec.as_mut().unwrap().template;
            t.metadata
                .as_mut()
                .unwrap()
                .labels
                .as_mut()
                .unwrap()
                .insert("app".into(), "frontend".into());
        });
        let f = findings(CheckName::FeatureNames, &b);
        assert!(
            f.iter().any(|f| f.message.contains("app label frontend")),
            "{f:?}"
        );
    }

    #[test]
    fn a_feature_branch_without_session_routes_is_found() {
        let mut b = bundle(|_| {});
        b.objects
            .retain(|o| !matches!(o, Object::VirtualService(_)));
        let f = findings(CheckName::SessionRoutesAnchored, &b);
        assert_eq!(f.len(), 2, "{f:?}");
        assert!(
            f[0].message.contains("no VirtualService routes a session"),
            "{f:?}"
        );
    }

    #[test]
    fn a_pipeline_without_features_is_not_judged_on_them() {
        let b = bundle(|o| {
            o.features.clear();
            o.sessions.clear()
        });
        assert!(matches!(
            judge(CheckName::FeatureNames, &b),
            Judgement::NotApplicable(_)
        ));
        assert!(matches!(
            judge(CheckName::SessionRoutesAnchored, &b),
            Judgement::NotApplicable(_)
        ));
    }
}
