//! The kind substrate as a plan: what `cdcheck up --substrate kind` and `down` would run,
//! snapshotted with every argument (tests/snapshots/kind_plan__*.snap), and the reuse
//! rule over the fingerprint cdcheck writes. Each test drives a scripted host
//! (tests/support_host) whose `kind get clusters`, node labels and fingerprint ConfigMap
//! describe the cluster already there; nothing here needs Docker.

mod support_host;

use std::path::PathBuf;

use cdcheck::substrate::containers::{self, ContainersError};
use cdcheck::substrate::kind::{
    self, Decision, Fingerprint, KindError, KindOptions, Observed, RegistryMirror, Step,
};
use support_host::{FakeHost, fails, ok};

fn options() -> KindOptions {
    KindOptions::new(PathBuf::from("/state/kind"))
}

fn lines(plan: &kind::Plan) -> Vec<String> {
    plan.steps.iter().map(|s| s.to_string()).collect()
}

/// A host where a kind cluster `cdcheck` exists, labelled as ours, with this fingerprint.
fn host_with_cluster(labelled: bool, fingerprint: Option<&Fingerprint>) -> FakeHost {
    let mut host = FakeHost::ready();
    host.answer("kind get clusters", ok("other\ncdcheck\n"));
    host.answer(
        "kubectl --kubeconfig /state/kind/kubeconfig --context kind-cdcheck get nodes -l cdcheck.io/created-by=cdcheck",
        ok(if labelled { "node/cdcheck-control-plane\n" } else { "" }),
    );
    let cm = fingerprint.map(|f| {
        serde_json::json!({
            "metadata": {"labels": {"cdcheck.io/created-by": "cdcheck"}},
            "data": serde_json::to_value(f).unwrap(),
        })
        .to_string()
    });
    host.answer(
        "kubectl --kubeconfig /state/kind/kubeconfig --context kind-cdcheck -n kube-system get configmap cdcheck-fingerprint",
        ok(cm.as_deref().unwrap_or("")),
    );
    host
}

#[test]
fn a_fresh_cluster_is_created_with_the_pinned_config_istio_overlay_and_feature_images() {
    let plan = kind::up_plan(&options(), &Decision::Create);
    insta::assert_yaml_snapshot!("create", plan);
    let lines = lines(&plan);
    let create = lines
        .iter()
        .position(|l| l.starts_with("kind create cluster"))
        .unwrap();
    let install = lines
        .iter()
        .position(|l| l.starts_with("istioctl install"))
        .unwrap();
    let fingerprint = lines
        .iter()
        .position(|l| l.contains("apply --server-side"))
        .unwrap();
    assert!(create < install && install < fingerprint, "{lines:#?}");
    // The fingerprint is written last: a provisioning that stops earlier leaves none.
    assert_eq!(fingerprint, lines.len() - 1);
    assert!(
        lines
            .iter()
            .all(|l| !l.starts_with("kind load") || !l.contains("pilot"))
    );
}

#[test]
fn preload_pulls_and_loads_every_image_of_the_run_before_istio_starts() {
    let mut options = options();
    options.preload = true;
    options.agent_image = Some("cdcheck-agent:dev".into());
    let plan = kind::up_plan(&options, &Decision::Create);
    insta::assert_yaml_snapshot!("create_preload", plan);
    let lines = lines(&plan);
    let install = lines
        .iter()
        .position(|l| l.starts_with("istioctl install"))
        .unwrap();
    for image in kind::run_images()
        .iter()
        .chain([&"cdcheck-agent:dev".to_string()])
    {
        let load = lines
            .iter()
            .position(|l| *l == format!("kind load docker-image --name cdcheck {image}"))
            .unwrap_or_else(|| panic!("{image} is not loaded: {lines:#?}"));
        assert!(load < install, "{image} is loaded after istioctl install");
    }
    // 11 Online Boutique images (no loadgenerator) + redis... are 11 with redis; + pilot, proxyv2.
    assert_eq!(kind::run_images().len(), 13, "{:#?}", kind::run_images());
}

#[test]
fn a_matching_fingerprint_reuses_the_cluster_and_only_waits_for_istio() {
    let host = host_with_cluster(true, Some(&Fingerprint::wanted()));
    let cluster = kind::up(&host, &options(), |_| {}).unwrap();
    assert_eq!(cluster.decision, Decision::Reuse);
    let ran = host.lines();
    // Nothing created, deleted, installed or pulled: a reused cluster works offline.
    assert!(
        !ran.iter().any(|l| l.starts_with("kind create")
            || l.starts_with("kind delete")
            || l.starts_with("istioctl install")
            || l.starts_with("docker pull")),
        "{ran:#?}"
    );
    insta::assert_yaml_snapshot!("reuse", kind::up_plan(&options(), &Decision::Reuse));
}

#[test]
fn a_reused_cluster_still_loads_the_agent_image_built_on_this_machine() {
    let host = host_with_cluster(true, Some(&Fingerprint::wanted()));
    let mut options = options();
    options.agent_image = Some("localhost/cdcheck-agent:dev".into());
    let cluster = kind::up(&host, &options, |_| {}).unwrap();
    assert_eq!(cluster.decision, Decision::Reuse);
    let ran = host.lines();
    let loads: Vec<&String> = ran.iter().filter(|l| l.starts_with("kind load")).collect();
    assert_eq!(
        loads,
        ["kind load docker-image --name cdcheck localhost/cdcheck-agent:dev"],
        "{ran:#?}"
    );
    assert!(
        !ran.iter().any(|l| l.starts_with("docker pull")),
        "{ran:#?}"
    );
}

#[test]
fn a_fingerprint_that_differs_recreates_and_says_what_differs() {
    let mut old = Fingerprint::wanted();
    old.istio = "1.29.0".into();
    old.overlay_sha256 = "0".repeat(64);
    let host = host_with_cluster(true, Some(&old));
    let cluster = kind::up(&host, &options(), |_| {}).unwrap();
    let Decision::Recreate(reason) = &cluster.decision else {
        panic!("{:?}", cluster.decision)
    };
    assert!(
        reason.contains("istio: have 1.29.0, want 1.30.3"),
        "{reason}"
    );
    assert!(reason.contains("overlay-sha256: have 0000"), "{reason}");
    assert!(
        !reason.contains("node-image"),
        "only what differs: {reason}"
    );
    let ran = host.lines();
    let delete = ran
        .iter()
        .position(|l| l.starts_with("kind delete cluster --name cdcheck"))
        .unwrap();
    let create = ran
        .iter()
        .position(|l| l.starts_with("kind create cluster --name cdcheck"))
        .unwrap();
    assert!(delete < create, "{ran:#?}");
}

#[test]
fn recreate_forces_a_new_cluster_even_when_the_fingerprint_matches() {
    let wanted = Fingerprint::wanted();
    let ours = Observed::Ours(Some(wanted.clone()));
    assert_eq!(kind::decide(&ours, &wanted, false), Decision::Reuse);
    assert_eq!(
        kind::decide(&ours, &wanted, true),
        Decision::Recreate("--recreate".into())
    );
    // Ours without a fingerprint: an earlier provisioning stopped half way.
    assert!(matches!(
        kind::decide(&Observed::Ours(None), &wanted, false),
        Decision::Recreate(r) if r.contains("stopped")
    ));
    assert_eq!(
        kind::decide(&Observed::Absent, &wanted, true),
        Decision::Create
    );
}

#[test]
fn a_foreign_cluster_of_the_same_name_is_never_reused_recreated_or_deleted() {
    let wanted = Fingerprint::wanted();
    assert_eq!(
        kind::decide(&Observed::Foreign, &wanted, true),
        Decision::Refuse
    );
    let host = host_with_cluster(false, None);
    let mut opts = options();
    opts.recreate = true;
    let error = kind::up(&host, &opts, |_| {}).unwrap_err();
    assert!(matches!(error, KindError::Foreign { .. }), "{error}");
    assert!(
        error
            .to_string()
            .contains("kind delete cluster --name cdcheck"),
        "{error}"
    );
    let error = kind::down(&host, &options()).unwrap_err();
    assert!(
        error
            .to_string()
            .starts_with("delete kind cluster cdcheck: cdcheck did not create it"),
        "{error}"
    );
    let ran = host.lines();
    assert!(
        !ran.iter()
            .any(|l| l.starts_with("kind delete") || l.starts_with("kind create")),
        "{ran:#?}"
    );
    assert!(host.removed.lock().unwrap().is_empty());
}

#[test]
fn a_fingerprint_configmap_without_our_label_does_not_count_as_ours() {
    let mut host = host_with_cluster(true, None);
    let planted = serde_json::json!({
        "metadata": {"labels": {}},
        "data": serde_json::to_value(Fingerprint::wanted()).unwrap(),
    });
    host.answer(
        "kubectl --kubeconfig /state/kind/kubeconfig --context kind-cdcheck -n kube-system get configmap",
        ok(&planted.to_string()),
    );
    assert_eq!(
        kind::observe(&host, &options()).unwrap(),
        Observed::Ours(None)
    );
}

#[test]
fn down_deletes_only_cdchecks_cluster_and_its_files() {
    let host = host_with_cluster(true, Some(&Fingerprint::wanted()));
    assert_eq!(kind::down(&host, &options()).unwrap(), kind::Down::Deleted);
    let ran = host.lines();
    assert!(
        ran.contains(
            &"kind delete cluster --name cdcheck --kubeconfig /state/kind/kubeconfig".to_string()
        ),
        "{ran:#?}"
    );
    assert_eq!(
        *host.removed.lock().unwrap(),
        vec![PathBuf::from("/state/kind")]
    );

    let mut absent = FakeHost::ready();
    absent.answer("kind get clusters", ok("other\n"));
    assert_eq!(kind::down(&absent, &options()).unwrap(), kind::Down::Absent);
    assert!(!absent.lines().iter().any(|l| l.starts_with("kind delete")));
}

#[test]
fn a_failing_step_stops_the_plan_and_names_its_purpose_command_and_output() {
    let mut host = FakeHost::ready();
    host.answer("kind get clusters", ok(""));
    host.answer(
        "istioctl install",
        fails(1, "Error: failed to install manifests: webhook timeout\n"),
    );
    let error = kind::up(&host, &options(), |_| {}).unwrap_err();
    let text = error.to_string();
    assert!(
        text.starts_with("install Istio 1.30.3 with istioctl: `istioctl install -y"),
        "{text}"
    );
    assert!(
        text.ends_with("exited with 1: Error: failed to install manifests: webhook timeout"),
        "{text}"
    );
    let ran = host.lines();
    assert!(
        ran.last().unwrap().starts_with("istioctl install"),
        "nothing after the failure: {ran:#?}"
    );
}

#[test]
fn podman_runs_kind_with_its_provider_and_pulls_with_podman() {
    let mut options = options();
    options.engine = cdcheck::substrate::doctor::Engine::Podman;
    let plan = kind::up_plan(&options, &Decision::Create);
    for step in &plan.steps {
        if let Step::Run { cmd, .. } = step {
            match cmd.program.as_str() {
                "kind" => assert_eq!(
                    cmd.env,
                    vec![("KIND_EXPERIMENTAL_PROVIDER".into(), "podman".into())]
                ),
                "docker" => panic!("docker with podman: {cmd}"),
                _ => {}
            }
        }
    }
}

#[test]
fn the_repository_files_are_what_the_plan_writes_and_the_fingerprint_hashes() {
    let config =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/kind-config.yaml")).unwrap();
    let overlay =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/istio-overlay.yaml"))
            .unwrap();
    assert_eq!(config, kind::KIND_CONFIG);
    assert_eq!(overlay, kind::ISTIO_OVERLAY);
    // kind-config: 1 control plane + 3 zoned workers, the label, ports on 127.0.0.1.
    let value: serde_json::Value = serde_saphyr::from_str(&config).unwrap();
    let nodes = value["nodes"].as_array().unwrap();
    let roles: Vec<&str> = nodes.iter().map(|n| n["role"].as_str().unwrap()).collect();
    assert_eq!(roles, ["control-plane", "worker", "worker", "worker"]);
    assert_eq!(nodes[0]["labels"]["cdcheck.io/created-by"], "cdcheck");
    let zones: Vec<&str> = nodes[1..]
        .iter()
        .map(|n| n["labels"]["topology.kubernetes.io/zone"].as_str().unwrap())
        .collect();
    assert_eq!(zones, ["a", "b", "c"]);
    for mapping in nodes[0]["extraPortMappings"].as_array().unwrap() {
        assert_eq!(mapping["listenAddress"], "127.0.0.1");
    }
    assert!(
        nodes
            .iter()
            .all(|n| n["image"] == cdcheck::versions::KIND_NODE_IMAGE)
    );
    // The overlay: NodePorts 30080/30443, access log, holdApplicationUntilProxyStarts.
    let overlay: serde_json::Value = serde_saphyr::from_str(&overlay).unwrap();
    let gateway = &overlay["spec"]["components"]["ingressGateways"][0];
    assert_eq!(gateway["name"], "istio-ingressgateway");
    assert_eq!(gateway["k8s"]["service"]["type"], "NodePort");
    let node_ports: Vec<u64> = gateway["k8s"]["service"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["nodePort"].as_u64())
        .collect();
    assert_eq!(node_ports, [30080, 30443]);
    assert_eq!(
        overlay["spec"]["meshConfig"]["accessLogFile"],
        "/dev/stdout"
    );
    assert_eq!(
        overlay["spec"]["meshConfig"]["defaultConfig"]["holdApplicationUntilProxyStarts"],
        true
    );
}

#[test]
fn a_local_registry_brings_the_feature_images_to_every_node_under_their_manifest_names() {
    let mut options = options();
    options.registry = Some(RegistryMirror::kind_default());
    let plan = kind::up_plan(&options, &Decision::Create);
    insta::assert_yaml_snapshot!("create_registry", plan);
    let lines = lines(&plan);
    let at = |prefix: &str| {
        lines
            .iter()
            .position(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no `{prefix}`: {lines:#?}"))
    };
    // The kind network exists once the cluster does; the registry is checked before any push.
    let create = at("kind create cluster");
    let connect = at("docker network connect kind cdcheck-registry");
    let check = at("check the local registry at localhost:5001");
    let push = at("docker push");
    assert!(
        create < connect && connect < check && check < push,
        "{lines:#?}"
    );
    assert!(
        !lines.iter().any(|l| l.starts_with("kind load")),
        "{lines:#?}"
    );
    let nodes = kind::node_names("cdcheck");
    assert_eq!(
        nodes,
        [
            "cdcheck-control-plane",
            "cdcheck-worker",
            "cdcheck-worker2",
            "cdcheck-worker3"
        ]
    );
    for node in &nodes {
        for host in ["localhost:5001", "us-central1-docker.pkg.dev"] {
            let write = format!(
                "docker exec -i {node} sh -c 'mkdir -p /etc/containerd/certs.d/{host} && cat > /etc/containerd/certs.d/{host}/hosts.toml' <<'EOF' ... EOF"
            );
            assert!(lines.contains(&write), "{write}: {lines:#?}");
        }
    }
    for (upstream, feature) in kind::feature_images() {
        let pushed = format!("localhost:5001/{}", containers::repository_path(&feature));
        assert!(lines.contains(&format!("docker tag {upstream} {pushed}")));
        let push = at(&format!("docker push {pushed}"));
        for node in &nodes {
            // Pulled by the name the manifests use: the mirror resolves it to the registry.
            let pull = at(&format!("docker exec {node} crictl pull {feature}"));
            assert!(push < pull, "{lines:#?}");
        }
    }
    // The upstream host stays the fallback, so only what the registry holds comes from it.
    let hosts = kind::registry_hosts(&RegistryMirror::kind_default());
    assert_eq!(hosts[0].1, "[host.\"http://cdcheck-registry:5000\"]\n");
    assert!(
        hosts[1]
            .1
            .starts_with("server = \"https://us-central1-docker.pkg.dev\""),
        "{}",
        hosts[1].1
    );
    assert!(kind::local_registry_hosting_yaml().contains("host: \"localhost:5001\""));
    let hosting = at("kubectl --kubeconfig /state/kind/kubeconfig --context kind-cdcheck apply");
    assert!(hosting < lines.len() - 1, "the fingerprint stays last");
}

#[test]
fn a_reused_cluster_with_a_local_registry_pushes_again_but_creates_nothing() {
    let mut options = options();
    options.registry = Some(RegistryMirror::kind_default());
    let lines = lines(&kind::up_plan(&options, &Decision::Reuse));
    assert!(
        !lines
            .iter()
            .any(|l| l.starts_with("kind create") || l.starts_with("istioctl install")),
        "{lines:#?}"
    );
    // The registry is new with each `up`: it joins the network and gets the images again.
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("docker network connect kind"))
    );
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.starts_with("docker push"))
            .count(),
        kind::FEATURE_SERVICES.len()
    );
}

#[test]
fn a_stopped_local_registry_fails_the_feature_push_step_before_anything_is_pushed() {
    // Bind then drop: nothing listens on that port, as after the registry's container stopped.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let address = format!("127.0.0.1:{port}");
    let mut options = options();
    options.registry = Some(RegistryMirror {
        container: "cdcheck-registry".into(),
        push_address: address.clone(),
    });
    let plan = kind::up_plan(&options, &Decision::Reuse);
    let host = FakeHost::ready();
    let error = kind::execute(&host, &plan, |_| {}).unwrap_err();
    assert!(
        matches!(
            error,
            KindError::Registry(ContainersError::Unreachable { .. })
        ),
        "{error:?}"
    );
    let message = format!("failed to {error}");
    assert!(
        message.starts_with(&format!("failed to reach the local registry at {address}")),
        "{message}"
    );
    assert!(
        !host.lines().iter().any(|l| l.contains(" push ")),
        "{:#?}",
        host.lines()
    );
}
