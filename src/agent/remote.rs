//! The runner's side of the agent: creates the agent pod in an environment's namespace,
//! waits for its container to start, follows its log through the pod log API until the
//! `done` record, and deletes the pod. Records are read as JSON values, so a newer agent
//! image with more fields still reads.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures::{AsyncBufReadExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::{Api, DeleteParams, LogParams, PostParams};

/// The agent's container (the log read is of it, not of the sidecar).
pub const CONTAINER: &str = "agent";

/// Waiting reasons that will not resolve by waiting: the image cannot be had.
const IMAGE_PROBLEMS: [&str; 5] = [
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "ErrImageNeverPull",
    "CreateContainerConfigError",
];

#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("create the agent pod {namespace}/{name}")]
    Create {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error(
        "start the agent pod {namespace}/{name}: its container is {reason} ({message}); the image {image} must be in the cluster's reach: on kind `cdcheck up --substrate kind --agent-image {image}` loads it, elsewhere push it and pass --agent-image"
    )]
    Image {
        namespace: String,
        name: String,
        image: String,
        reason: String,
        message: String,
    },
    #[error(
        "start the agent pod {namespace}/{name}: its container did not start within {waited:?} (last seen: {state})"
    )]
    NotStarted {
        namespace: String,
        name: String,
        waited: Duration,
        state: String,
    },
    #[error("read the agent pod {namespace}/{name}")]
    Read {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("read the agent's log ({namespace}/{name}, container {CONTAINER})")]
    Log {
        namespace: String,
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "read the agent's records: its log ({namespace}/{name}) ended after {records} records without the done record{}",
        tail.as_deref().map(|t| format!("; last lines:\n{t}")).unwrap_or_default()
    )]
    Truncated {
        namespace: String,
        name: String,
        records: usize,
        tail: Option<String>,
    },
    #[error(
        "read the agent's records: no done record within {waited:?} ({records} records so far)"
    )]
    Timeout { waited: Duration, records: usize },
}

/// What to run: the pod's name, image, arguments and labels.
#[derive(Clone, Debug)]
pub struct AgentPod {
    pub namespace: String,
    pub name: String,
    pub image: String,
    pub args: Vec<String>,
    pub labels: BTreeMap<String, String>,
}

impl AgentPod {
    fn read_error(&self, source: kube::Error) -> RemoteError {
        RemoteError::Read {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            source,
        }
    }
}

/// Runs the agent pod to its `done` record and returns its records (the `done` one
/// last). `timeout` bounds everything after the pod is created, image pull included.
/// The pod is deleted in every case.
pub async fn run(
    client: &Client,
    agent: &AgentPod,
    timeout: Duration,
) -> Result<Vec<serde_json::Value>, RemoteError> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), &agent.namespace);
    let pod = super::pod::pod(
        &agent.namespace,
        &agent.name,
        &agent.image,
        &agent.args,
        &agent.labels,
    );
    pods.create(&PostParams::default(), &pod)
        .await
        .map_err(|source| RemoteError::Create {
            namespace: agent.namespace.clone(),
            name: agent.name.clone(),
            source,
        })?;
    let started = Instant::now();
    let result = async {
        wait_started(&pods, agent, timeout).await?;
        let left = timeout.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, read_records(&pods, agent)).await {
            Ok(result) => result,
            Err(_) => Err(RemoteError::Timeout {
                waited: started.elapsed(),
                records: 0,
            }),
        }
    }
    .await;
    let _ = pods
        .delete(&agent.name, &DeleteParams::default().grace_period(0))
        .await;
    result
}

/// How the agent container stands, for messages.
fn container_state(pod: &Pod) -> (String, Option<(String, String)>, bool) {
    let status = pod.status.as_ref();
    let phase = status
        .and_then(|s| s.phase.clone())
        .unwrap_or_else(|| "Pending".into());
    let container = status
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.iter().find(|c| c.name == CONTAINER));
    let state = container.and_then(|c| c.state.as_ref());
    let started = matches!(phase.as_str(), "Running" | "Succeeded" | "Failed")
        && state.is_none_or(|s| s.waiting.is_none())
        || state.is_some_and(|s| s.running.is_some() || s.terminated.is_some());
    let waiting = state.and_then(|s| s.waiting.as_ref()).map(|w| {
        (
            w.reason.clone().unwrap_or_default(),
            w.message.clone().unwrap_or_default(),
        )
    });
    let shown = match &waiting {
        Some((reason, _)) => format!("phase {phase}, container waiting: {reason}"),
        None => format!("phase {phase}"),
    };
    (shown, waiting, started)
}

async fn wait_started(
    pods: &Api<Pod>,
    agent: &AgentPod,
    timeout: Duration,
) -> Result<(), RemoteError> {
    let started = Instant::now();
    let mut last = "not created yet".to_string();
    while started.elapsed() < timeout {
        let pod = pods
            .get_opt(&agent.name)
            .await
            .map_err(|source| agent.read_error(source))?;
        if let Some(pod) = pod {
            let (shown, waiting, running) = container_state(&pod);
            if running {
                return Ok(());
            }
            if let Some((reason, message)) = waiting
                && IMAGE_PROBLEMS.contains(&reason.as_str())
            {
                return Err(RemoteError::Image {
                    namespace: agent.namespace.clone(),
                    name: agent.name.clone(),
                    image: agent.image.clone(),
                    reason,
                    message,
                });
            }
            last = shown;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Err(RemoteError::NotStarted {
        namespace: agent.namespace.clone(),
        name: agent.name.clone(),
        waited: started.elapsed(),
        state: last,
    })
}

async fn read_records(
    pods: &Api<Pod>,
    agent: &AgentPod,
) -> Result<Vec<serde_json::Value>, RemoteError> {
    let params = LogParams {
        container: Some(CONTAINER.to_string()),
        follow: true,
        ..LogParams::default()
    };
    let stream = pods
        .log_stream(&agent.name, &params)
        .await
        .map_err(|source| agent.read_error(source))?;
    let mut lines = stream.lines();
    let mut records = Vec::new();
    // The log carries stderr too: lines that are not records are kept for the message.
    let mut other: Vec<String> = Vec::new();
    while let Some(line) = lines.try_next().await.map_err(|source| RemoteError::Log {
        namespace: agent.namespace.clone(),
        name: agent.name.clone(),
        source,
    })? {
        match parse_record(&line) {
            Some(record) => {
                let done = record["record"] == "done";
                records.push(record);
                if done {
                    return Ok(records);
                }
            }
            None if !line.trim().is_empty() => {
                other.push(line);
                if other.len() > 5 {
                    other.remove(0);
                }
            }
            None => {}
        }
    }
    Err(RemoteError::Truncated {
        namespace: agent.namespace.clone(),
        name: agent.name.clone(),
        records: records.len(),
        tail: (!other.is_empty()).then(|| other.join("\n")),
    })
}

/// A log line that is one of the agent's records.
pub fn parse_record(line: &str) -> Option<serde_json::Value> {
    let value: serde_json::Value = serde_json::from_str(line.trim()).ok()?;
    value["record"].is_string().then_some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_json_objects_with_a_record_kind_are_records() {
        assert!(parse_record(r#"{"record":"done","failed":false}"#).is_some());
        assert!(parse_record("  {\"record\":\"health\"}\r").is_some());
        assert!(parse_record("2026-11-29T19:00:00Z WARN something").is_none());
        assert!(parse_record(r#"{"level":"warn"}"#).is_none());
        assert!(parse_record("").is_none());
    }

    fn pod(status: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({"metadata": {"name": "a"}, "status": status}))
            .unwrap()
    }

    #[test]
    fn a_container_starts_when_running_or_terminated_and_an_image_problem_is_named() {
        let running = pod(
            serde_json::json!({"phase": "Running", "containerStatuses": [
                {"name": "istio-proxy", "image": "p", "imageID": "", "ready": true, "restartCount": 0, "state": {"running": {}}},
                {"name": "agent", "image": "a", "imageID": "", "ready": true, "restartCount": 0, "state": {"running": {}}}
            ]}),
        );
        assert!(container_state(&running).2);
        let done = pod(serde_json::json!({"phase": "Succeeded"}));
        assert!(container_state(&done).2);
        let pulling = pod(
            serde_json::json!({"phase": "Pending", "containerStatuses": [
                {"name": "agent", "image": "a", "imageID": "", "ready": false, "restartCount": 0,
                 "state": {"waiting": {"reason": "ImagePullBackOff", "message": "not found"}}}
            ]}),
        );
        let (shown, waiting, started) = container_state(&pulling);
        assert!(!started);
        assert_eq!(waiting.unwrap().0, "ImagePullBackOff");
        assert!(shown.contains("ImagePullBackOff"), "{shown}");
        // The sidecar runs, the agent is held until the proxy starts: not started yet.
        let held = pod(
            serde_json::json!({"phase": "Running", "containerStatuses": [
                {"name": "agent", "image": "a", "imageID": "", "ready": false, "restartCount": 0,
                 "state": {"waiting": {"reason": "PodInitializing"}}}
            ]}),
        );
        assert!(!container_state(&held).2);
    }
}
