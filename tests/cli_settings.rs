//! The CLI and the library choose a substrate's state directory in one place
//! (`cdcheck::settings`): with `CDCHECK_STATE_DIR` set, `down` looks for the plain substrate
//! there and for the mesh one beside it, as `run` and `up --mesh` would start them.

use std::process::Command;

#[test]
fn down_looks_where_the_library_puts_the_plain_and_the_mesh_substrate() {
    let root = tempfile::tempdir().unwrap();
    let plain = root.path().join("state");
    let out = Command::new(env!("CARGO_BIN_EXE_cdcheck"))
        .arg("down")
        .env("CDCHECK_STATE_DIR", &plain)
        .env_remove("CDCHECK_MESH_STATE_DIR")
        .output()
        .expect("run cdcheck down");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let mesh = root.path().join("state-mesh");
    assert!(
        stderr.contains(&format!("no local substrate in {}", plain.display())),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("no local substrate in {}", mesh.display())),
        "{stderr}"
    );
}

#[test]
fn a_flag_for_another_substrate_is_refused_by_name() {
    let out = Command::new(env!("CARGO_BIN_EXE_cdcheck"))
        .args([
            "run",
            "--substrate",
            "kind",
            "--ingress",
            "http://10.0.0.7",
            "--nodes",
            "5",
        ])
        .output()
        .expect("run cdcheck run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(
            "use --nodes, --ingress with --substrate kind: --nodes applies to --substrate \
             local only; --ingress applies to --substrate existing only"
        ),
        "{stderr}"
    );
}
