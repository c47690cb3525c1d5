//! The runner's agent Pod on the local mesh, as on a real cluster: the pod runner runs
//! `cdcheck agent` beside an injected Istio sidecar bound to the pod's address, the
//! sidecar routes gRPC `userid` metadata by the rendered VirtualService, and the records
//! come back through the pod log API (the API server proxying to the mesh's kubelet
//! endpoint). The session batch must reach only `adservice-myfeature`, the batch without
//! `userid` only `adservice`; a VirtualService sending the session to mainline is caught.
//! Plus `kubectl logs` of a plain stand-in pod.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use cdcheck::agent::{self, Record};
use cdcheck::manifests::FeatureBranch;
use cdcheck::manifests::routing::SessionId;
use futures::{AsyncBufReadExt, StreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, LogParams, PostParams};
use serde_json::{Value, json};

const SESSION: &str = "3f1c2a9e-agent";
/// Requests per batch.
const REQUESTS: u32 = 20;

/// `env` rendered with the adservice feature branch and the session routed to it.
fn rendered(env: &str) -> cdcheck::manifests::Bundle {
    common::render(env, "v0.10.6", |options| {
        options
            .features
            .push(FeatureBranch::new("adservice", "0.10.6-myfeature").expect("feature"));
        options
            .sessions
            .push(SessionId::parse(SESSION).expect("session"));
    })
}

/// The rendered VirtualService of adservice (the session's `userid` route first).
fn adservice_routes(env: &str) -> Value {
    rendered(env)
        .objects
        .iter()
        .find(|o| o.kind() == "VirtualService" && o.name() == "adservice")
        .expect("the adservice VirtualService")
        .to_json()
        .expect("json")
}

async fn apply_routes(client: &kube::Client, routes: &Value) {
    let gvk = kube::api::GroupVersionKind::gvk("networking.istio.io", "v1", "VirtualService");
    cdcheck::kube::apply::apply_value(client, &gvk, routes)
        .await
        .unwrap_or_else(|e| panic!("apply the adservice VirtualService: {}", common::chain(&e)));
}

/// The agent's arguments with only the health checks of what the test deploys.
fn agent_args(env: &str) -> Vec<String> {
    let all = agent::pod::args(env, SESSION, REQUESTS);
    let mut args = all[..6].to_vec();
    for pair in all[6..].chunks(2) {
        if pair[1].contains("//adservice.") {
            args.extend(pair.iter().cloned());
        }
    }
    assert_eq!(args.len(), 8, "adservice's health check is among {all:?}");
    args
}

/// What one agent pod printed, and when.
struct AgentRun {
    records: Vec<Value>,
    first_record: Duration,
    done: Duration,
    phase: Option<String>,
}

/// Waits until the pod's container `container` has started (the log API answers only then).
async fn wait_started(pods: &Api<Pod>, name: &str, container: &str) {
    for _ in 0..600 {
        let pod = pods.get(name).await.expect("get the pod");
        let started = pod
            .status
            .and_then(|s| s.container_statuses)
            .into_iter()
            .flatten()
            .any(|c| {
                c.name == container
                    && c.state
                        .is_some_and(|s| s.running.is_some() || s.terminated.is_some())
            });
        if started {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("container {container} of pod {name} never started");
}

async fn phase_of(pods: &Api<Pod>, name: &str) -> Option<String> {
    pods.get(name).await.ok()?.status?.phase
}

/// Creates the agent pod with `args` (`edit` may change it first) and follows its log
/// through the API until the agent is done.
async fn run_agent(
    client: &kube::Client,
    env: &str,
    name: &str,
    args: &[String],
    edit: impl FnOnce(&mut Pod),
) -> AgentRun {
    let pods: Api<Pod> = Api::namespaced(client.clone(), env);
    let labels = BTreeMap::from([("cdcheck.io/run".to_string(), "mesh-agent-test".to_string())]);
    let mut pod = agent::pod::pod(env, name, &agent::pod::default_image(), args, &labels);
    edit(&mut pod);
    let created = Instant::now();
    pods.create(&PostParams::default(), &pod)
        .await
        .expect("create the agent pod");
    wait_started(&pods, name, "agent").await;
    let params = LogParams {
        follow: true,
        container: Some("agent".into()),
        ..Default::default()
    };
    let stream = pods
        .log_stream(name, &params)
        .await
        .unwrap_or_else(|e| panic!("read the agent's log through the API: {e}"));
    let mut lines = stream.lines();
    let mut records = Vec::new();
    let mut first_record = None;
    let read = async {
        while let Some(line) = lines.next().await {
            let line = line.expect("a log line");
            let Ok(record) = serde_json::from_str::<Value>(&line) else {
                eprintln!("agent (not a record): {line}");
                continue;
            };
            first_record.get_or_insert(created.elapsed());
            records.push(record);
        }
    };
    tokio::time::timeout(Duration::from_secs(120), read)
        .await
        .expect("the log follow ends when the agent exits");
    let done = created.elapsed();
    // The pod ends Succeeded or Failed (restartPolicy Never), not restarted.
    let mut phase = phase_of(&pods, name).await;
    for _ in 0..50 {
        if matches!(phase.as_deref(), Some("Succeeded" | "Failed")) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        phase = phase_of(&pods, name).await;
    }
    eprintln!(
        "agent pod {env}/{name}: first record {:?} after creation, done after {done:?}, phase {phase:?}",
        first_record
    );
    AgentRun {
        first_record: first_record.expect("the agent printed a record"),
        records,
        done,
        phase,
    }
}

/// The batch record of `userid` (`None`: the batch without), as the agent's type.
fn batch(records: &[Value], userid: Option<&str>) -> Record {
    let value = records
        .iter()
        .find(|r| r["record"] == "batch" && r["userid"].as_str() == userid)
        .unwrap_or_else(|| panic!("no batch record for userid {userid:?} in {records:#?}"));
    let map = |v: &Value| -> BTreeMap<String, u64> {
        serde_json::from_value(v.clone()).expect("a counter map")
    };
    Record::Batch {
        batch: value["batch"].as_u64().expect("batch") as usize,
        userid: value["userid"].as_str().map(str::to_string),
        requests: value["requests"].as_u64().expect("requests") as u32,
        succeeded: value["succeeded"].as_u64().expect("succeeded") as u32,
        clusters: map(&value["clusters"]),
        services: map(&value["services"]),
        endpoints: map(&value["endpoints"]),
    }
}

/// The pods whose addresses answered a batch (from its per-host counters), by name.
async fn answering_pods(client: &kube::Client, env: &str, batch: &Record) -> BTreeMap<String, u64> {
    let Record::Batch { endpoints, .. } = batch else {
        panic!("not a batch: {batch:?}")
    };
    let pods: Api<Pod> = Api::namespaced(client.clone(), env);
    let pods = pods.list(&Default::default()).await.expect("list pods");
    let mut answered = BTreeMap::new();
    for (address, count) in endpoints {
        let ip = address
            .parse::<std::net::SocketAddr>()
            .expect("an ip:port")
            .ip()
            .to_string();
        let pod = pods
            .items
            .iter()
            .find(|p| p.status.as_ref().and_then(|s| s.pod_ip.as_deref()) == Some(ip.as_str()))
            .and_then(|p| p.metadata.name.clone())
            .unwrap_or_else(|| format!("{address} (no pod)"));
        *answered.entry(pod).or_insert(0) += count;
    }
    answered
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_pod_sends_its_session_to_the_feature_only_and_a_route_to_mainline_is_caught() {
    let Some(cluster) = common::mesh_cluster().await else {
        return;
    };
    let client = cluster.client.clone();
    let cluster_ref = &cluster;
    common::with_temp_env(&cluster, "mesh-agent", |env| async move {
        let bundle = common::only_services(&rendered(&env), &["adservice", "adservice-myfeature"]);
        common::deploy(cluster_ref, &bundle, &env).await;
        let routes = adservice_routes(&env);
        apply_routes(&client, &routes).await;

        let run = run_agent(&client, &env, "cdcheck-agent", &agent_args(&env), |_| {}).await;
        let records = &run.records;
        assert_eq!(
            agent::judge_batch(&batch(records, Some(SESSION)), "adservice-myfeature"),
            Ok(()),
            "{records:#?}"
        );
        assert_eq!(
            agent::judge_batch(&batch(records, None), "adservice"),
            Ok(()),
            "{records:#?}"
        );
        // Per host: the session was answered by the feature's pods alone, the rest by the
        // mainline's alone.
        let by_pod = answering_pods(&client, &env, &batch(records, Some(SESSION))).await;
        assert!(
            !by_pod.is_empty() && by_pod.keys().all(|p| p.starts_with("adservice-myfeature-")),
            "{by_pod:#?}"
        );
        assert!(
            by_pod.values().sum::<u64>() >= u64::from(REQUESTS),
            "{by_pod:#?}"
        );
        let by_pod = answering_pods(&client, &env, &batch(records, None)).await;
        assert!(
            !by_pod.is_empty()
                && by_pod
                    .keys()
                    .all(|p| p.starts_with("adservice-") && !p.starts_with("adservice-myfeature-")),
            "{by_pod:#?}"
        );
        let health: Vec<&Value> = records.iter().filter(|r| r["record"] == "health").collect();
        assert_eq!(health.len(), 1, "{records:#?}");
        assert!(health.iter().all(|h| h["healthy"] == true), "{health:#?}");
        assert_eq!(
            records.last(),
            Some(&json!({"record": "done", "failed": false}))
        );
        assert_eq!(run.phase.as_deref(), Some("Succeeded"));
        assert!(run.first_record < run.done);
        // The pod's Sidecar goes with its proxy.
        let sidecars = kube::api::ApiResource::from_gvk(&kube::api::GroupVersionKind::gvk(
            "networking.istio.io",
            "v1",
            "Sidecar",
        ));
        let sidecars: Api<kube::api::DynamicObject> =
            Api::namespaced_with(client.clone(), &env, &sidecars);
        assert!(
            sidecars
                .get_opt("cdcheck-agent")
                .await
                .expect("get")
                .is_none(),
            "the agent's Sidecar outlived its proxy"
        );

        // Control: the session's route sends it to mainline: the same agent catches it.
        let mut wrong = routes.clone();
        for route in wrong["spec"]["http"].as_array_mut().expect("http routes") {
            if route["match"].to_string().contains("userid") {
                route["route"][0]["destination"]["host"] = json!("adservice");
            }
        }
        apply_routes(&client, &wrong).await;
        // istiod pushes the change to the proxies within a second (debounce 10 ms).
        tokio::time::sleep(Duration::from_secs(1)).await;
        let run = run_agent(
            &client,
            &env,
            "cdcheck-agent-control",
            &agent_args(&env),
            |_| {},
        )
        .await;
        let verdict =
            agent::judge_batch(&batch(&run.records, Some(SESSION)), "adservice-myfeature");
        assert!(
            verdict
                .as_ref()
                .is_err_and(|why| why.contains("to adservice")),
            "a session routed to mainline must fail the judgement: {verdict:?}"
        );

        // Control: without `proxyStatsMatcher` in the pod's proxy config a sidecar records
        // no outbound cluster stats, as on a real cluster: the batch cannot be attributed.
        apply_routes(&client, &routes).await;
        let run = run_agent(
            &client,
            &env,
            "cdcheck-agent-no-stats",
            &agent_args(&env),
            |pod| {
                pod.metadata.annotations = Some(BTreeMap::from([(
                    "proxy.istio.io/config".to_string(),
                    "holdApplicationUntilProxyStarts: true\n".to_string(),
                )]));
            },
        )
        .await;
        let verdict =
            agent::judge_batch(&batch(&run.records, Some(SESSION)), "adservice-myfeature");
        assert!(
            verdict.as_ref().is_err_and(|why| why.contains("only 0 of")),
            "without proxyStatsMatcher nothing is counted: {verdict:?}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_pod_with_the_runners_arguments_finds_every_backend_of_the_boutique_serving() {
    let Some(cluster) = common::mesh_cluster().await else {
        return;
    };
    let client = cluster.client.clone();
    let cluster_ref = &cluster;
    common::with_temp_env(&cluster, "mesh-agent-all", |env| async move {
        // Every workload but the Gateway (a test's Gateway would compete for the shared
        // ingress) and the loadgenerator (it would add its own GetAds calls).
        let mut names: Vec<String> = cdcheck::catalog::all()
            .iter()
            .map(|w| w.name.to_string())
            .filter(|n| n != "loadgenerator")
            .collect();
        names.push("adservice-myfeature".into());
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let bundle = common::only_services(&rendered(&env), &names);
        common::deploy(cluster_ref, &bundle, &env).await;
        apply_routes(&client, &adservice_routes(&env)).await;

        let args = agent::pod::args(&env, SESSION, REQUESTS);
        let run = run_agent(&client, &env, "cdcheck-agent", &args, |_| {}).await;
        let records = &run.records;
        assert_eq!(
            agent::judge_batch(&batch(records, Some(SESSION)), "adservice-myfeature"),
            Ok(()),
            "{records:#?}"
        );
        assert_eq!(
            agent::judge_batch(&batch(records, None), "adservice"),
            Ok(())
        );
        let health: Vec<&Value> = records.iter().filter(|r| r["record"] == "health").collect();
        assert_eq!(health.len(), 9, "{records:#?}");
        assert!(health.iter().all(|h| h["healthy"] == true), "{health:#?}");
        assert_eq!(run.phase.as_deref(), Some("Succeeded"));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_api_returns_a_stand_in_pods_output_and_a_follow_ends_with_the_pod() {
    let Some(cluster) = common::mesh_cluster().await else {
        return;
    };
    let client = cluster.client.clone();
    common::with_temp_env(&cluster, "mesh-logs", |env| async move {
        let pods: Api<Pod> = Api::namespaced(client.clone(), &env);
        let pod: Pod = serde_json::from_value(json!({
            "metadata": { "name": "plain", "namespace": env },
            "spec": {
                "terminationGracePeriodSeconds": 1,
                "containers": [{
                    "name": "server",
                    "image": format!("{}/productcatalogservice:v0.10.6", cdcheck::versions::ONLINE_BOUTIQUE_REGISTRY),
                    "ports": [{ "containerPort": 3550 }]
                }]
            }
        }))
        .expect("a Pod");
        pods.create(&PostParams::default(), &pod).await.expect("create the pod");
        wait_started(&pods, "plain", "server").await;
        // The stand-in prints one line once it listens.
        let mut text = String::new();
        for _ in 0..50 {
            text = pods
                .logs("plain", &LogParams::default())
                .await
                .unwrap_or_else(|e| panic!("read the pod's log through the API: {e}"));
            if !text.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(text.contains("plain"), "the stand-in's line names its pod: {text:?}");
        let tail = pods
            .logs("plain", &LogParams { tail_lines: Some(1), ..Default::default() })
            .await
            .expect("tailLines=1");
        assert_eq!(tail.lines().count(), 1, "{tail:?}");
        let missing = pods
            .logs("plain", &LogParams { container: Some("nope".into()), ..Default::default() })
            .await;
        assert!(missing.is_err(), "a container the pod does not have: {missing:?}");

        // A follower reads until the pod's process ends.
        let params = LogParams { follow: true, ..Default::default() };
        let mut lines = pods.log_stream("plain", &params).await.expect("follow").lines();
        let first = lines.next().await.expect("a line").expect("read");
        assert!(first.contains("plain"), "{first:?}");
        pods.delete("plain", &DeleteParams::default()).await.expect("delete the pod");
        let ended = tokio::time::timeout(Duration::from_secs(15), async {
            while let Some(line) = lines.next().await {
                if line.is_err() {
                    break;
                }
            }
        })
        .await;
        assert!(ended.is_ok(), "the follow did not end after the pod's process was stopped");
    })
    .await;
}
