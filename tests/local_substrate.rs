//! The local substrate itself: nodes, kubeconfig, Istio CRD validation, and the
//! lifecycle (`up` twice, a crashed substrate cleaned up, `down` leaves nothing).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use cdcheck::kube::apply;
use cdcheck::manifests::Object;
use cdcheck::substrate::{ZONE_LABEL, local};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, ListParams};

#[tokio::test]
async fn nodes_are_ready_and_spread_over_zones_a_b_c() {
    let cluster = require_cluster!();
    let nodes: Api<Node> = Api::all(cluster.client.clone());
    let list = nodes
        .list(&ListParams::default().labels("type=kwok"))
        .await
        .unwrap();
    assert!(list.items.len() >= 3, "expected at least 3 fake nodes");
    let mut zones: Vec<String> = Vec::new();
    for node in &list.items {
        let labels = node.metadata.labels.clone().unwrap_or_default();
        let name = node.metadata.name.clone().unwrap();
        assert_eq!(
            labels.get("kubernetes.io/hostname"),
            Some(&name),
            "hostname label"
        );
        zones.push(labels.get(ZONE_LABEL).cloned().unwrap_or_default());
        let ready = node
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        assert!(ready, "node {name} is not Ready");
    }
    zones.sort();
    zones.dedup();
    assert_eq!(zones, ["a", "b", "c"]);
}

#[tokio::test]
async fn the_admin_kubeconfig_is_readable_only_by_its_owner() {
    let cluster = require_cluster!();
    let mode = std::fs::metadata(&cluster.kubeconfig)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(
        mode & 0o077,
        0,
        "kubeconfig mode {mode:o} is readable by others"
    );
}

#[tokio::test]
async fn an_invalid_virtualservice_is_rejected_with_the_api_servers_message_intact() {
    let cluster = &require_cluster!();
    common::with_temp_env(cluster, "vs", |env| async move {
        let bundle = common::render(&env, "v0.10.6", |_| {});
        let vs = bundle
            .objects
            .iter()
            .find(|o| matches!(o, Object::VirtualService(_)))
            .expect("the bundle has a VirtualService");

        // Positive control: the rendered VirtualService is accepted as is.
        apply::apply_object(&cluster.client, vs)
            .await
            .unwrap_or_else(|e| panic!("valid VirtualService refused: {}", common::chain(&e)));

        // A route timeout below Istio's CEL minimum ("must be a valid duration greater than 1ms").
        let mut invalid = vs.to_json().unwrap();
        invalid["metadata"]["name"] = serde_json::json!("invalid-timeout");
        invalid["spec"]["http"][0]["timeout"] = serde_json::json!("0s");
        let error = apply::apply_value(&cluster.client, &vs.gvk(), &invalid)
            .await
            .expect_err("the API server must reject a 0s route timeout");
        let status = error
            .api_status()
            .expect("the error carries the API Status")
            .clone();
        assert_eq!(status.code, 422, "{status:?}");
        assert_eq!(
            invalid_fields(&status),
            ["spec.http[0].timeout"],
            "{status:?}"
        );
        assert!(
            status
                .message
                .contains("must be a valid duration greater than 1ms"),
            "{}",
            status.message
        );
        let shown = format!("{:#}", anyhow::Error::new(error));
        assert!(shown.starts_with("apply VirtualService/"), "{shown}");
        assert!(shown.contains(&status.message), "{shown}");

        // A field Istio does not define is refused too. kube-apiserver answers a
        // server-side apply with an undeclared field with 500 and no details (it
        // fails building the typed patch before validation), naming the field
        // path in the message: that path is what is asserted.
        let mut unknown = vs.to_json().unwrap();
        unknown["metadata"]["name"] = serde_json::json!("invalid-field");
        unknown["spec"]["http"][0]["rout"] = unknown["spec"]["http"][0]["route"].clone();
        let error = apply::apply_value(&cluster.client, &vs.gvk(), &unknown)
            .await
            .expect_err("the API server must reject an undeclared field");
        let status = error
            .api_status()
            .expect("the error carries the API Status")
            .clone();
        assert_eq!(status.code, 500, "{status:?}");
        let undeclared = status
            .message
            .rsplit_once("): ")
            .and_then(|(_, tail)| tail.strip_suffix(": field not declared in schema"));
        assert_eq!(undeclared, Some(".spec.http[0].rout"), "{status:?}");
    })
    .await;
}

/// The field paths of the API Status's causes (`details.causes[].field`).
fn invalid_fields(status: &kube::core::Status) -> Vec<String> {
    status
        .details
        .iter()
        .flat_map(|d| d.causes.iter())
        .map(|c| c.field.clone())
        .collect()
}

fn pids_mentioning(dir: &std::path::Path) -> Vec<i32> {
    let needle = dir.to_string_lossy().to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let zombie = stat
                .rsplit(')')
                .next()
                .is_some_and(|s| s.trim_start().starts_with('Z'));
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            !zombie && String::from_utf8_lossy(&cmd).contains(&needle)
        })
        .collect()
}

/// Boots a second, private substrate (its own state dir): `up` twice reuses it,
/// a crash is cleaned up by the next `up`, and `down` leaves no process and no state.
#[tokio::test]
async fn up_twice_is_safe_a_crash_is_cleaned_up_and_down_leaves_nothing() {
    cdcheck::install_crypto_provider();
    let Some(found) = common::binaries_or_skip() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let state_dir = dir.path().join("state");
    let options = local::UpOptions {
        nodes: 2,
        state_dir: state_dir.clone(),
        timeout: Duration::from_secs(120),
        mesh: None,
    };
    let first = local::up(&found, &options)
        .await
        .unwrap_or_else(|e| panic!("failed to boot: {}", common::chain(&e)));
    assert!(!first.reused);
    assert_eq!(first.nodes, ["node-1", "node-2"]);
    eprintln!("private substrate booted in {:?}", first.boot);
    let pids = pids_mentioning(&state_dir);
    assert_eq!(
        pids.len(),
        5,
        "etcd, apiserver, controller-manager, scheduler, kwok: {pids:?}"
    );

    let started = Instant::now();
    let second = local::up(&found, &options).await.unwrap();
    assert!(second.reused, "a healthy substrate must be reused");
    assert_eq!(second.server, first.server);
    assert_eq!(
        pids_mentioning(&state_dir),
        pids,
        "reuse must not start processes"
    );
    eprintln!("up on a running substrate took {:?}", started.elapsed());

    // Crash: kill the API server hard; the next `up` must clean up and boot anew.
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(state_dir.join("state.json")).unwrap())
            .unwrap();
    let apiserver = state["processes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["component"] == "kube-apiserver")
        .unwrap()["pid"]
        .as_i64()
        .unwrap() as i32;
    unsafe {
        libc::kill(apiserver, libc::SIGKILL);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let third = local::up(&found, &options).await.unwrap();
    assert!(!third.reused, "a crashed substrate must not be reused");
    let new_pids = pids_mentioning(&state_dir);
    assert_eq!(new_pids.len(), 5, "{new_pids:?}");
    assert!(
        pids.iter().all(|p| !new_pids.contains(p)),
        "stale processes survived: old {pids:?}, now {new_pids:?}"
    );

    let down = local::down(&state_dir).await.unwrap();
    assert_eq!(down.stopped, 5);
    assert!(!state_dir.exists(), "down must remove the state directory");
    assert!(
        pids_mentioning(&state_dir).is_empty(),
        "down left processes behind"
    );
    // And `down` again is harmless.
    let again = local::down(&state_dir).await.unwrap();
    assert_eq!(again.stopped, 0);
}
