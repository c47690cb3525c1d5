//! Online Boutique's own services, as `cdcheck substrate install --mesh` builds them from
//! upstream's sources: each starts from its launcher with the environment upstream's
//! v0.10.6 manifest gives its Deployment, except PORT, which is set to a free port that no
//! manifest names, and must then serve its health check on exactly that port. A service
//! that ignored PORT (as the stand-ins do) would not answer there.

mod common_reference;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cdcheck::substrate::boutique;
use serde_json::Value;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// How long a service may take from its start to its first healthy answer (the JVM's
/// adservice is the slowest: about 2 s here; generous for a loaded 2-core machine).
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The services' processes, killed however the test ends.
struct Running(Vec<(String, Child)>);

impl Drop for Running {
    fn drop(&mut self) {
        for (_, child) in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on loopback")
}

/// Each Deployment's literal env (name → value) from upstream's release manifest.
fn manifest_env(documents: &[Value]) -> BTreeMap<String, Vec<(String, String)>> {
    let mut envs = BTreeMap::new();
    for doc in documents.iter().filter(|d| d["kind"] == "Deployment") {
        let name = doc["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let container = &doc["spec"]["template"]["spec"]["containers"][0];
        let env = container["env"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| {
                Some((
                    e["name"].as_str()?.to_string(),
                    e["value"].as_str()?.to_string(),
                ))
            })
            .collect();
        envs.insert(name, env);
    }
    envs
}

async fn grpc_serving(port: u16) -> Result<(), String> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .map_err(|e| e.to_string())?
        .connect()
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let status = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .map_err(|e| format!("health check: {e}"))?
        .into_inner()
        .status;
    if status == ServingStatus::Serving as i32 {
        Ok(())
    } else {
        Err(format!("status {status}"))
    }
}

async fn http_healthz(port: u16) -> Result<(), String> {
    let response = reqwest::get(format!("http://127.0.0.1:{port}/_healthz"))
        .await
        .map_err(|e| format!("GET /_healthz: {e}"))?;
    if response.status().is_success() {
        Ok(())
    } else {
        Err(format!("GET /_healthz: {}", response.status()))
    }
}

/// Polls until the service answers healthy on `port`, or fails with what it last said and
/// the end of its output.
async fn wait_healthy(service: &str, port: u16, log: &std::path::Path, child: &mut Child) {
    let started = Instant::now();
    let mut last = String::new();
    while started.elapsed() < START_TIMEOUT {
        if let Ok(Some(status)) = child.try_wait() {
            last = format!("exited with {status}");
            break;
        }
        let answer = if service == "frontend" {
            http_healthz(port).await
        } else {
            grpc_serving(port).await
        };
        match answer {
            Ok(()) => {
                eprintln!(
                    "{service}: healthy on PORT={port} after {:?}",
                    started.elapsed()
                );
                return;
            }
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let output = std::fs::read_to_string(log).unwrap_or_default();
    let tail: Vec<&str> = output.lines().rev().take(20).collect();
    panic!(
        "{service} did not answer healthy on PORT={port} within {START_TIMEOUT:?} ({last}); \
         its last output:\n{}",
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    );
}

#[tokio::test]
async fn every_built_service_serves_on_the_port_its_env_names() {
    let test = "every_built_service_serves_on_the_port_its_env_names";
    let dir = match boutique::locate() {
        Ok(dir) => dir,
        Err(e) => {
            common_reference::skip::skip_or_fail(&format!(
                "{test}: the services are not built ({e}); run `cdcheck substrate install --mesh`"
            ));
            return;
        }
    };
    let Some(text) = common_reference::reference_text(test, common_reference::UPSTREAM_MANIFESTS)
    else {
        return;
    };
    let envs = manifest_env(&common_reference::yaml_documents(
        common_reference::UPSTREAM_MANIFESTS,
        &text,
    ));
    let logs = tempfile::tempdir().unwrap();
    // Every service gets a port of its own first, so that the *_SERVICE_ADDR of the ones
    // started later point at where the earlier ones really listen.
    let ports: BTreeMap<&str, u16> = boutique::BUILT.iter().map(|s| (*s, free_port())).collect();
    let address_of = |service: &str| -> Option<String> {
        ports.get(service).map(|port| format!("127.0.0.1:{port}"))
    };
    let mut running = Running(Vec::new());
    // The frontend last: it dials every backend it is given at start.
    let order = boutique::BUILT
        .iter()
        .filter(|s| **s != "frontend")
        .chain(["frontend"].iter());
    for service in order {
        let env = envs
            .get(*service)
            .unwrap_or_else(|| panic!("upstream's manifest has no Deployment {service}"));
        assert!(
            env.iter().any(|(k, _)| k == "PORT"),
            "upstream's {service} takes its port from PORT: {env:?}"
        );
        let port = ports[service];
        let log_path = logs.path().join(format!("{service}.log"));
        let log = std::fs::File::create(&log_path).unwrap();
        let mut command = Command::new(boutique::launcher(&dir, service));
        command
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOSTNAME", format!("{service}-test"))
            // No GCE metadata server here: fail its lookups at once instead of after DNS.
            .env("GCE_METADATA_HOST", "127.0.0.1:9")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        for (key, value) in env {
            let value = if key == "PORT" {
                port.to_string()
            } else if let Some(backend) = key
                .strip_suffix("_SERVICE_ADDR")
                .and_then(|_| value.split(':').next())
                .and_then(address_of)
            {
                backend
            } else {
                value.clone()
            };
            command.env(key, value);
        }
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("start {service}: {e}"));
        running.0.push((service.to_string(), child));
        let (_, child) = running.0.last_mut().unwrap();
        wait_healthy(service, port, &log_path, child).await;
    }
    assert_eq!(running.0.len(), boutique::BUILT.len());
    // Nothing answers on a port no service was given: the checks above can fail.
    assert!(grpc_serving(free_port()).await.is_err());
}
