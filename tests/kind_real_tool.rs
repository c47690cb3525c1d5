//! The real kind v0.32.0 and istioctl 1.30.3 (from the Go module proxy: `cdcheck substrate
//! install --substrate kind`) against the repository's files, without Docker or a cluster:
//! - `kind version` and `istioctl version --remote=false` are read by the preflight as the pins;
//! - `kind create cluster` decodes `kind-config.yaml` strictly (a misspelled field is
//!   refused before any container engine is asked; the control);
//! - `istioctl manifest generate`, with the arguments of the plan's `istioctl install`,
//!   renders `istio-overlay.yaml` into the gateway Service on NodePorts 30080/30443, the
//!   access log and holdApplicationUntilProxyStarts, with images `--preload` loads; a
//!   misspelled Service field is refused (the control).
//!
//! The tools are found through `CDCHECK_KIND`/`CDCHECK_ISTIOCTL`, PATH, or the binary cache.

#[path = "common/skip.rs"]
mod common_skip;

use std::path::PathBuf;
use std::process::Command;

use cdcheck::substrate::{binaries, doctor, kind, tools};
use cdcheck::versions;

fn tool_or_skip(name: &str, var: &str, version: &str) -> Option<PathBuf> {
    let found = std::env::var_os(var)
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("PATH").and_then(|p| {
                std::env::split_paths(&p)
                    .map(|d| d.join(name))
                    .find(|k| k.is_file())
            })
        })
        .or_else(|| {
            let cached = tools::tool_dir(&binaries::cache_root(), name, version).join(name);
            cached.is_file().then_some(cached)
        });
    if found.is_none() {
        common_skip::skip_or_fail(&format!(
            "{name} not found ({var}, PATH, cache): run `cdcheck substrate install --substrate kind`"
        ));
    }
    found
}

fn kind_or_skip() -> Option<PathBuf> {
    tool_or_skip("kind", "CDCHECK_KIND", versions::KIND)
}

fn istioctl_or_skip() -> Option<PathBuf> {
    tool_or_skip("istioctl", "CDCHECK_ISTIOCTL", versions::ISTIOCTL)
}

#[test]
fn the_real_kinds_version_is_the_pin_as_the_preflight_reads_it() {
    let Some(kind) = kind_or_skip() else { return };
    let out = Command::new(&kind).arg("version").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        doctor::find_version(&text).as_deref(),
        Some(versions::KIND),
        "{text}"
    );
}

#[test]
fn the_real_kind_decodes_the_repository_config_and_refuses_a_misspelled_one() {
    let Some(kind) = kind_or_skip() else { return };
    let dir = tempfile::tempdir().unwrap();
    let create = |config: &std::path::Path| {
        let out = Command::new(&kind)
            .args([
                "create",
                "cluster",
                "--name",
                "cdcheck-decode-test",
                "--config",
            ])
            .arg(config)
            .arg("--kubeconfig")
            .arg(dir.path().join("kubeconfig"))
            // No engine at this address: kind stops at the engine, after decoding.
            .env(
                "DOCKER_HOST",
                format!("unix://{}", dir.path().join("no-docker.sock").display()),
            )
            .env("KIND_EXPERIMENTAL_PROVIDER", "docker")
            .output()
            .unwrap();
        assert!(!out.status.success(), "kind created a cluster?");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let good = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/kind-config.yaml"));
    let stderr = create(&good);
    assert!(!stderr.contains("unable to decode config"), "{stderr}");
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        std::fs::read_to_string(&good)
            .unwrap()
            .replace("extraPortMappings", "extraPortMapingz"),
    )
    .unwrap();
    let stderr = create(&bad);
    assert!(
        stderr.contains("unable to decode config") && stderr.contains("extraPortMapingz"),
        "{stderr}"
    );
}

#[test]
fn the_real_istioctls_version_is_the_pin_as_the_preflight_reads_it() {
    let Some(istioctl) = istioctl_or_skip() else {
        return;
    };
    let out = Command::new(&istioctl)
        .args(["version", "--remote=false"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        doctor::find_version(&text).as_deref(),
        Some(versions::ISTIOCTL),
        "{text}"
    );
}

/// The plan's `istioctl install` arguments as `manifest generate` arguments, reading `overlay`.
fn generate_args(overlay: &std::path::Path) -> Vec<String> {
    let plan = kind::up_plan(
        &kind::KindOptions::new("/state".into()),
        &kind::Decision::Create,
    );
    let install = plan
        .steps
        .iter()
        .find_map(|s| match s {
            kind::Step::Run { cmd, .. } if cmd.program == "istioctl" => Some(cmd.args.clone()),
            _ => None,
        })
        .expect("the plan installs Istio");
    let mut args = vec!["manifest".to_string(), "generate".to_string()];
    let mut rest = install.iter().skip_while(|a| *a != "-f");
    while let Some(arg) = rest.next() {
        let value = rest.next().expect("a flag's value").clone();
        match arg.as_str() {
            "-f" => args.extend(["-f".to_string(), overlay.display().to_string()]),
            "--set" => args.extend(["--set".to_string(), value]),
            other => panic!("unexpected istioctl install argument {other}"),
        }
    }
    args
}

fn generate(istioctl: &std::path::Path, overlay: &std::path::Path) -> (bool, String, String) {
    let out = Command::new(istioctl)
        .args(generate_args(overlay))
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_real_istioctl_renders_the_overlay_as_the_kind_substrate_needs_it() {
    let Some(istioctl) = istioctl_or_skip() else {
        return;
    };
    let overlay = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/istio-overlay.yaml"));
    let (ok, stdout, stderr) = generate(&istioctl, &overlay);
    assert!(ok, "{stderr}");
    let docs: Vec<serde_json::Value> = stdout
        .split("\n---")
        .filter(|d| !d.trim().is_empty())
        .filter_map(|d| serde_saphyr::from_str::<serde_json::Value>(d).ok())
        .filter(|d| d.is_object())
        .collect();
    let find = |kind: &str, name: &str| {
        docs.iter()
            .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no {kind} {name} in istioctl's output"))
    };
    let service = find("Service", "istio-ingressgateway");
    assert_eq!(service["spec"]["type"], "NodePort");
    let node_ports: Vec<(String, u64)> = service["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| Some((p["name"].as_str()?.to_string(), p["nodePort"].as_u64()?)))
        .collect();
    assert_eq!(
        node_ports,
        [("http2".to_string(), 30080), ("https".to_string(), 30443)]
    );
    // The gateway pods carry the label the rendered Gateway selects (istio: ingressgateway).
    assert_eq!(service["spec"]["selector"]["istio"], "ingressgateway");
    let mesh: serde_json::Value =
        serde_saphyr::from_str(find("ConfigMap", "istio")["data"]["mesh"].as_str().unwrap())
            .unwrap();
    assert_eq!(mesh["accessLogFile"], "/dev/stdout");
    assert_eq!(
        mesh["defaultConfig"]["holdApplicationUntilProxyStarts"],
        true
    );
    // Every image istioctl deploys is one `--preload` loads.
    let preloaded = kind::run_images();
    for name in ["istiod", "istio-ingressgateway"] {
        let image = find("Deployment", name)["spec"]["template"]["spec"]["containers"][0]["image"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(
            preloaded.contains(&image),
            "{name}'s {image} is not preloaded"
        );
    }

    // Control: a misspelled Service field is refused by istioctl's decoder.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("overlay.yaml");
    std::fs::write(
        &bad,
        std::fs::read_to_string(&overlay)
            .unwrap()
            .replace("nodePort: 30443", "nodePortt: 30443"),
    )
    .unwrap();
    let (ok, _, stderr) = generate(&istioctl, &bad);
    assert!(
        !ok && stderr.contains("unknown field \"nodePortt\""),
        "{stderr}"
    );
}

/// Every flag of every kind and istioctl command the plans run, in that command's `--help`.
#[test]
fn every_flag_the_plans_pass_to_kind_and_istioctl_is_one_the_real_tools_accept() {
    let (Some(kind_bin), Some(istioctl)) = (kind_or_skip(), istioctl_or_skip()) else {
        return;
    };
    let mut options = kind::KindOptions::new("/state".into());
    options.preload = true;
    options.agent_image = Some("cdcheck-agent:dev".into());
    let mut cmds: Vec<cdcheck::substrate::host::Cmd> = Vec::new();
    for decision in [
        kind::Decision::Create,
        kind::Decision::Recreate("test".into()),
    ] {
        for step in kind::up_plan(&options, &decision).steps {
            if let kind::Step::Run { cmd, .. } = step {
                cmds.push(cmd);
            }
        }
    }
    let down = kind::down_plan(&options, &kind::Observed::Ours(None)).unwrap();
    for step in down.steps {
        if let kind::Step::Run { cmd, .. } = step {
            cmds.push(cmd);
        }
    }
    let mut checked = 0;
    for cmd in cmds
        .iter()
        .filter(|c| c.program == "kind" || c.program == "istioctl")
    {
        let binary = if cmd.program == "kind" {
            &kind_bin
        } else {
            &istioctl
        };
        let subcommands: Vec<&String> = cmd
            .args
            .iter()
            .take_while(|a| !a.starts_with('-'))
            .collect();
        let help = Command::new(binary)
            .args(&subcommands)
            .arg("--help")
            .output()
            .unwrap();
        let help = String::from_utf8_lossy(&help.stdout).into_owned();
        assert!(
            help.contains("Flags:"),
            "{} {subcommands:?} --help: {help}",
            cmd.program
        );
        for flag in cmd.args.iter().filter(|a| a.starts_with('-')) {
            let flag = flag.split('=').next().unwrap();
            let listed = help
                .lines()
                .any(|line| line.trim_start().split([',', ' ']).any(|word| word == flag));
            assert!(
                listed,
                "`{cmd}`: {flag} is not a flag of {} {subcommands:?}",
                cmd.program
            );
            checked += 1;
        }
    }
    assert!(checked >= 20, "only {checked} flags checked");
    // Control: a flag neither tool has is not found the same way.
    let help = Command::new(&kind_bin)
        .args(["create", "cluster", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        !help
            .lines()
            .any(|l| l.trim_start().split([',', ' ']).any(|w| w == "--nodes"))
    );
}
