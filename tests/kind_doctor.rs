//! `cdcheck doctor`, the kind substrate's preflight: every failure it knows is driven
//! through a scripted host (tests/support_host), and the ready host is the control
//! that each problem comes from what was changed and from nothing else. One test runs
//! it on this machine and checks its verdicts against the machine read independently;
//! two run the binary with an empty PATH.

mod support_host;

use cdcheck::substrate::doctor::{self, Check, Engine};
use cdcheck::versions;
use support_host::{FakeHost, fails, ok};

fn checks(host: &FakeHost) -> Vec<Check> {
    doctor::diagnose(host)
        .problems
        .iter()
        .map(|p| p.check)
        .collect()
}

#[test]
fn a_ready_host_has_no_problem_and_names_what_it_found() {
    let report = doctor::diagnose(&FakeHost::ready());
    assert_eq!(report.problems, vec![], "{report:#?}");
    assert_eq!(report.engine, Some(Engine::Docker));
    let ok = report.ok.join("\n");
    for found in [
        versions::KIND,
        versions::ISTIOCTL,
        versions::KUBECTL,
        "524288",
        "512",
    ] {
        assert!(ok.contains(found), "{found} not in {ok}");
    }
}

#[test]
fn a_missing_tool_is_one_problem_with_its_pinned_install_command() {
    for (prefix, check, fix) in [
        (
            "kind version",
            Check::Kind,
            format!("go install sigs.k8s.io/kind@{}", versions::KIND),
        ),
        (
            "istioctl version",
            Check::Istioctl,
            format!(
                "https://github.com/istio/istio/releases/download/{0}/istio-{0}-",
                versions::ISTIO
            ),
        ),
        (
            "kubectl version",
            Check::Kubectl,
            format!("https://dl.k8s.io/release/{}/bin/", versions::KUBECTL),
        ),
    ] {
        let mut host = FakeHost::ready();
        host.answer(prefix, None);
        let report = doctor::diagnose(&host);
        assert_eq!(checks(&host), vec![check], "{prefix}: {report:#?}");
        let problem = &report.problems[0];
        assert!(problem.message.ends_with("is not installed"), "{problem}");
        assert!(problem.fix.contains(&fix), "{problem}");
        assert!(!problem.to_string().contains('\n'), "one line: {problem}");
    }
}

#[test]
fn a_wrong_version_names_the_found_and_the_pinned_one() {
    let mut host = FakeHost::ready();
    host.answer("kind version", ok("kind v0.31.0 go1.24.0 linux/amd64\n"));
    host.answer("istioctl version", ok("client version: 1.29.2\n"));
    host.answer(
        "kubectl version",
        ok(r#"{"clientVersion":{"gitVersion":"v1.32.4-dispatcher"}}"#),
    );
    let report = doctor::diagnose(&host);
    assert_eq!(
        checks(&host),
        vec![Check::Kind, Check::Istioctl, Check::Kubectl],
        "{report:#?}"
    );
    let text: Vec<String> = report.problems.iter().map(|p| p.message.clone()).collect();
    assert!(
        text[0].contains("v0.31.0") && text[0].contains(versions::KIND),
        "{text:?}"
    );
    assert!(
        text[1].contains("1.29.2") && text[1].contains(versions::ISTIOCTL),
        "{text:?}"
    );
    assert!(
        text[2].contains("v1.32.4") && text[2].contains(versions::KUBECTL),
        "{text:?}"
    );
}

#[test]
fn kubectl_one_minor_away_is_within_the_skew_policy_and_two_is_not() {
    let pinned_minor: u32 = versions::KUBECTL
        .split('.')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let mut host = FakeHost::ready();
    let near = format!(
        r#"{{"clientVersion":{{"gitVersion":"v1.{}.0"}}}}"#,
        pinned_minor + 1
    );
    host.answer("kubectl version", ok(&near));
    assert_eq!(checks(&host), vec![]);
    let far = format!(
        r#"{{"clientVersion":{{"gitVersion":"v1.{}.0"}}}}"#,
        pinned_minor + 2
    );
    host.answer("kubectl version", ok(&far));
    assert_eq!(checks(&host), vec![Check::Kubectl]);
}

#[test]
fn a_docker_daemon_that_does_not_answer_is_a_problem_unless_podman_does() {
    let mut host = FakeHost::ready();
    host.answer(
        "docker info",
        fails(
            1,
            "Cannot connect to the Docker daemon at unix:///var/run/docker.sock.",
        ),
    );
    let report = doctor::diagnose(&host);
    assert_eq!(checks(&host), vec![Check::ContainerEngine]);
    assert!(
        report.problems[0].message.contains("Cannot connect"),
        "{report:#?}"
    );
    assert!(
        report.problems[0]
            .fix
            .starts_with("sudo systemctl start docker")
    );
    assert_eq!(report.engine, None);

    host.answer("podman info --format '{{.Version.Version}}'", ok("5.4.0\n"));
    host.answer(
        "podman info --format '{{.Store.GraphRoot}}'",
        ok("/var/lib/containers\n"),
    );
    let report = doctor::diagnose(&host);
    assert_eq!(report.problems, vec![]);
    assert_eq!(report.engine, Some(Engine::Podman));
}

#[test]
fn inotify_limits_below_kinds_values_are_problems_with_the_sysctl_that_fixes_them() {
    let mut host = FakeHost::ready();
    host.files.insert(
        "/proc/sys/fs/inotify/max_user_watches".into(),
        "8192\n".into(),
    );
    host.files.insert(
        "/proc/sys/fs/inotify/max_user_instances".into(),
        "128\n".into(),
    );
    let report = doctor::diagnose(&host);
    assert_eq!(
        checks(&host),
        vec![Check::InotifyWatches, Check::InotifyInstances]
    );
    assert!(
        report.problems[0]
            .fix
            .starts_with("sudo sysctl -w fs.inotify.max_user_watches=524288")
    );
    assert!(
        report.problems[1]
            .fix
            .starts_with("sudo sysctl -w fs.inotify.max_user_instances=512")
    );
    assert!(report.problems[0].message.contains("is 8192"));
}

#[test]
fn too_little_memory_or_disk_is_a_problem() {
    let mut host = FakeHost::ready();
    host.files.insert(
        "/proc/meminfo".into(),
        "MemTotal: 8000000 kB\nMemAvailable: 4194304 kB\n".into(),
    );
    host.free = 5 * 1024 * 1024 * 1024;
    let report = doctor::diagnose(&host);
    assert_eq!(
        checks(&host),
        vec![Check::Memory, Check::Disk],
        "{report:#?}"
    );
    assert!(
        report.problems[0]
            .message
            .starts_with("4.0 GiB of memory available")
    );
    assert!(
        report.problems[1]
            .message
            .contains("5.0 GiB free under /var/lib/docker")
    );
}

#[test]
fn a_bare_machine_gets_one_line_per_problem() {
    let mut host = FakeHost::ready();
    for prefix in ["docker", "podman", "kind", "istioctl", "kubectl"] {
        host.answer(prefix, None);
    }
    host.files.clear();
    host.free = 0;
    let error = doctor::require_ready(&host).unwrap_err();
    let text = error.to_string();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1 + 8, "{text}");
    assert!(lines[0].starts_with("pass the kind substrate's preflight (8 problems)"));
    assert!(
        lines[1..]
            .iter()
            .all(|l| l.starts_with("  - ") && l.contains("; fix: ")),
        "{text}"
    );
}

#[test]
fn on_this_machine_the_verdicts_agree_with_the_machine_read_directly() {
    use cdcheck::substrate::host::SystemHost;
    let report = doctor::diagnose(&SystemHost);
    let docker_answers = std::process::Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    let podman_answers = std::process::Command::new("podman")
        .args(["info"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert_eq!(
        report.has(Check::ContainerEngine),
        !docker_answers && !podman_answers,
        "{report:#?}"
    );
    for (check, file, min) in [
        (
            Check::InotifyWatches,
            "max_user_watches",
            doctor::MIN_INOTIFY_WATCHES,
        ),
        (
            Check::InotifyInstances,
            "max_user_instances",
            doctor::MIN_INOTIFY_INSTANCES,
        ),
    ] {
        let value: u64 = std::fs::read_to_string(format!("/proc/sys/fs/inotify/{file}"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert_eq!(
            report.has(check),
            value < min,
            "{file} = {value}: {report:#?}"
        );
    }
    let on_path = |tool: &str| {
        std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
            .unwrap_or(false)
    };
    for (check, tool) in [(Check::Kind, "kind"), (Check::Istioctl, "istioctl")] {
        if !on_path(tool) {
            assert!(report.has(check), "{tool} is not on PATH: {report:#?}");
        }
    }
}

fn cdcheck_with_empty_path(args: &[&str]) -> std::process::Output {
    let empty = tempfile::tempdir().unwrap();
    std::process::Command::new(env!("CARGO_BIN_EXE_cdcheck"))
        .args(args)
        .env("PATH", empty.path())
        .env("CDCHECK_KIND_STATE_DIR", empty.path().join("kind"))
        .output()
        .unwrap()
}

#[test]
fn cdcheck_doctor_without_the_tools_exits_1_with_a_line_per_missing_tool() {
    let out = cdcheck_with_empty_path(&["doctor"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    for tool in [
        "docker nor podman",
        "kind is not installed",
        "istioctl is not installed",
        "kubectl is not installed",
    ] {
        assert!(
            stdout
                .lines()
                .any(|l| l.contains(tool) && l.contains("fix: ")),
            "no line for {tool}:\n{stdout}"
        );
    }
}

#[test]
fn up_on_kind_without_the_tools_stops_at_the_preflight_and_runs_nothing() {
    let out = cdcheck_with_empty_path(&["up", "--substrate", "kind"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.starts_with("error: failed to pass the kind substrate's preflight"),
        "{stderr}"
    );
    assert!(
        stderr.contains("kind is not installed; fix: go install sigs.k8s.io/kind@"),
        "{stderr}"
    );
}

#[test]
fn run_on_kind_without_the_tools_stops_at_the_preflight_with_exit_2() {
    let out = cdcheck_with_empty_path(&["run", "--substrate", "kind", "--filter", "ha"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.starts_with("error: failed to pass the kind substrate's preflight"),
        "{stderr}"
    );
}

#[test]
fn kubeconfig_context_and_ingress_are_refused_outside_the_existing_substrate() {
    for substrate in ["local", "kind"] {
        for flag in [["--context", "prod"], ["--ingress", "http://10.0.0.7"]] {
            let out = cdcheck_with_empty_path(&["run", "--substrate", substrate, flag[0], flag[1]]);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{stderr}");
            assert_eq!(
                stderr.trim(),
                format!(
                    "error: failed to use {0} with --substrate {substrate}: {0} applies to \
                     --substrate existing only",
                    flag[0]
                )
            );
        }
    }
    let out = cdcheck_with_empty_path(&["run", "--agent-image", "reg/agent:1"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--agent-image applies to --substrate kind and existing"),
        "{stderr}"
    );
    let out = cdcheck_with_empty_path(&["run", "--feature-image", "cartservice=reg/cart:1"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(
            "--feature-image cartservice=reg/cart:1: no container of the feature Deployments"
        ),
        "{stderr}"
    );
    let out = cdcheck_with_empty_path(&["up", "--substrate", "local", "--preload"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("they apply to --substrate kind only"),
        "{stderr}"
    );
}
