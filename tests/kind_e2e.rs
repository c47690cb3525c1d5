//! End to end on kind: `cdcheck doctor`, `cdcheck up --substrate kind --preload`, then every
//! scenario with `--require data-plane`, reports kept. Needs Docker (or Podman), kind,
//! istioctl and kubectl at the pins and the internet for the first pull, so it is opt-in:
//!
//!   CDCHECK_E2E=kind cargo test --test kind_e2e -- --ignored
//!
//! Listed as ignored in every other run (never passed silently); run with `--ignored`
//! but without `CDCHECK_E2E=kind`, or with the machine not ready, it fails.

use std::process::Command;

fn cdcheck(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_cdcheck"))
        .args(args)
        .output()
        .expect("run cdcheck")
}

#[test]
#[ignore = "end to end on kind (Docker): CDCHECK_E2E=kind cargo test --test kind_e2e -- --ignored"]
fn every_scenario_passes_on_kind_with_the_data_plane_required() {
    assert_eq!(
        std::env::var("CDCHECK_E2E").as_deref(),
        Ok("kind"),
        "this test runs a kind cluster: set CDCHECK_E2E=kind to mean it"
    );
    let doctor = cdcheck(&["doctor"]);
    assert!(
        doctor.status.success(),
        "the machine is not ready for kind:\n{}",
        String::from_utf8_lossy(&doctor.stdout)
    );
    // The in-mesh agent is cdcheck itself, in an image built from this checkout.
    let pin = |name: &str| {
        cdcheck::versions::all()
            .into_iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.to_string())
            .unwrap()
    };
    let engine = std::env::var("CDCHECK_ENGINE").unwrap_or_else(|_| "docker".into());
    let build = std::process::Command::new(&engine)
        .args(["build", "-f", "agent/Dockerfile", "--build-arg"])
        .arg(format!("BUILDER_IMAGE={}", pin("AGENT_BUILDER_IMAGE")))
        .arg("--build-arg")
        .arg(format!("RUNTIME_IMAGE={}", pin("AGENT_RUNTIME_IMAGE")))
        .args(["-t", cdcheck::versions::AGENT_IMAGE, "."])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run the container engine");
    assert!(
        build.status.success(),
        "{engine} build of the agent image failed:\n{}",
        String::from_utf8_lossy(&build.stderr)
    );
    let up = cdcheck(&[
        "up",
        "--substrate",
        "kind",
        "--preload",
        "--agent-image",
        cdcheck::versions::AGENT_IMAGE,
    ]);
    assert!(
        up.status.success(),
        "cdcheck up --substrate kind failed:\n{}",
        String::from_utf8_lossy(&up.stderr)
    );
    let reports = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("kind-e2e-report");
    let run = cdcheck(&[
        "run",
        "--substrate",
        "kind",
        "--require",
        "data-plane",
        "--report-dir",
        reports.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(
        run.status.code(),
        Some(0),
        "{stderr}\nreports kept in {}",
        reports.display()
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(reports.join("report.json")).unwrap())
            .unwrap();
    assert_eq!(report["substrate"], "kind");
    assert_eq!(report["verdict"], "passed", "{report}");
}
