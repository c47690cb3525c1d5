//! What a failure report needs to explain a rollout: recent events, pod
//! statuses and the ReplicaSet history of a Deployment. Gathering never fails;
//! what could not be read is said in the result.

use std::fmt;

use ::kube::api::{Api, ListParams};
use ::kube::{Client, ResourceExt};
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::{Event, Pod};

/// Revision annotation the deployment controller sets on Deployments and ReplicaSets.
pub const REVISION_ANNOTATION: &str = "deployment.kubernetes.io/revision";

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Diagnostics {
    /// `namespace/deployment` (or the namespace) this is about.
    pub subject: String,
    /// ReplicaSets owned by the Deployment, oldest revision first.
    pub replicasets: Vec<String>,
    /// One line per pod: name, node, phase, readiness, container states.
    pub pods: Vec<String>,
    /// Recent events of the Deployment, its ReplicaSets and pods, oldest first.
    pub events: Vec<String>,
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "diagnostics for {}:", self.subject)?;
        for (title, lines) in [
            ("replicasets", &self.replicasets),
            ("pods", &self.pods),
            ("events", &self.events),
        ] {
            writeln!(f, "  {title}:")?;
            if lines.is_empty() {
                writeln!(f, "    (none)")?;
            }
            for line in lines {
                writeln!(f, "    {line}")?;
            }
        }
        Ok(())
    }
}

fn owned_by(
    refs: Option<&Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference>>,
    kind: &str,
    names: &[String],
) -> bool {
    refs.is_some_and(|refs| {
        refs.iter()
            .any(|r| r.kind == kind && names.contains(&r.name))
    })
}

/// One line describing a pod's state.
pub fn describe_pod(pod: &Pod) -> String {
    let status = pod.status.clone().unwrap_or_default();
    let ready = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "Ready")
        .map(|c| {
            let why = c
                .reason
                .clone()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default();
            format!("Ready={}{why}", c.status)
        })
        .unwrap_or_else(|| "Ready=?".into());
    let containers: Vec<String> = status
        .container_statuses
        .iter()
        .flatten()
        .map(|c| {
            let state = c.state.clone().unwrap_or_default();
            let s = if let Some(w) = state.waiting {
                format!("waiting {}", w.reason.unwrap_or_default())
            } else if let Some(t) = state.terminated {
                format!(
                    "terminated {} (exit {})",
                    t.reason.unwrap_or_default(),
                    t.exit_code
                )
            } else if state.running.is_some() {
                "running".to_string()
            } else {
                "unknown".to_string()
            };
            format!(
                "{}={s}{}",
                c.name,
                if c.ready { " ready" } else { " not-ready" }
            )
        })
        .collect();
    format!(
        "{} node={} phase={} {ready}{} [{}]",
        pod.name_any(),
        pod.spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_else(|| "<unscheduled>".into()),
        status.phase.unwrap_or_default(),
        if pod.metadata.deletion_timestamp.is_some() {
            " terminating"
        } else {
            ""
        },
        containers.join(", ")
    )
}

/// Gathers the diagnostics of `deployment` in `namespace` (or of the whole
/// namespace when `deployment` is `None`).
pub async fn gather(client: &Client, namespace: &str, deployment: Option<&str>) -> Diagnostics {
    let mut out = Diagnostics {
        subject: match deployment {
            Some(d) => format!("{namespace}/{d}"),
            None => namespace.to_string(),
        },
        ..Default::default()
    };
    let rs_api: Api<ReplicaSet> = Api::namespaced(client.clone(), namespace);
    let mut rs_names: Vec<String> = Vec::new();
    match rs_api.list(&ListParams::default()).await {
        Ok(list) => {
            let mut sets: Vec<&ReplicaSet> = list
                .items
                .iter()
                .filter(|rs| match deployment {
                    Some(d) => owned_by(
                        rs.metadata.owner_references.as_ref(),
                        "Deployment",
                        &[d.to_string()],
                    ),
                    None => true,
                })
                .collect();
            let revision = |rs: &ReplicaSet| {
                rs.annotations()
                    .get(REVISION_ANNOTATION)
                    .and_then(|r| r.parse::<i64>().ok())
                    .unwrap_or(0)
            };
            sets.sort_by_key(|rs| revision(rs));
            for rs in sets {
                rs_names.push(rs.name_any());
                let status = rs.status.clone().unwrap_or_default();
                let images: Vec<String> = rs
                    .spec
                    .as_ref()
                    .and_then(|s| s.template.as_ref())
                    .and_then(|t| t.spec.as_ref())
                    .map(|s| {
                        s.containers
                            .iter()
                            .filter_map(|c| c.image.clone())
                            .collect()
                    })
                    .unwrap_or_default();
                out.replicasets.push(format!(
                    "revision {} {} desired={} ready={} available={} images={}",
                    revision(rs),
                    rs.name_any(),
                    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0),
                    status.ready_replicas.unwrap_or(0),
                    status.available_replicas.unwrap_or(0),
                    images.join(",")
                ));
            }
        }
        Err(e) => out
            .replicasets
            .push(format!("(could not list ReplicaSets: {e})")),
    }
    let pod_api: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let mut pod_names: Vec<String> = Vec::new();
    match pod_api.list(&ListParams::default()).await {
        Ok(list) => {
            for pod in list.items.iter().filter(|p| {
                deployment.is_none()
                    || owned_by(
                        p.metadata.owner_references.as_ref(),
                        "ReplicaSet",
                        &rs_names,
                    )
            }) {
                pod_names.push(pod.name_any());
                out.pods.push(describe_pod(pod));
            }
        }
        Err(e) => out.pods.push(format!("(could not list pods: {e})")),
    }
    let event_api: Api<Event> = Api::namespaced(client.clone(), namespace);
    match event_api.list(&ListParams::default()).await {
        Ok(list) => {
            let mut related: Vec<&Event> = list
                .items
                .iter()
                .filter(|e| {
                    let name = e.involved_object.name.clone().unwrap_or_default();
                    match deployment {
                        Some(d) => {
                            name == d || rs_names.contains(&name) || pod_names.contains(&name)
                        }
                        None => true,
                    }
                })
                .collect();
            related.sort_by_key(|e| {
                e.last_timestamp
                    .as_ref()
                    .map(|t| t.0)
                    .or(e.event_time.as_ref().map(|t| t.0))
            });
            let skip = related.len().saturating_sub(40);
            for e in related.into_iter().skip(skip) {
                out.events.push(format!(
                    "{} {}/{} {}: {}",
                    e.type_.clone().unwrap_or_default(),
                    e.involved_object.kind.clone().unwrap_or_default(),
                    e.involved_object.name.clone().unwrap_or_default(),
                    e.reason.clone().unwrap_or_default(),
                    e.message.clone().unwrap_or_default()
                ));
            }
        }
        Err(e) => out.events.push(format!("(could not list events: {e})")),
    }
    out
}
