//! The real kind v0.32.0 (from the Go module proxy: `cdcheck substrate install --substrate
//! kind`) against the repository's files, without Docker: `kind version` is read by the
//! preflight as the pin, and `kind create cluster` decodes `kind-config.yaml` strictly
//! (a misspelled field is refused before any container engine is asked), so the config
//! is at least kind's schema. The control: the same config with a misspelled field.
//! kind is found through `CDCHECK_KIND`, PATH, or the binary cache.

#[path = "common/skip.rs"]
mod common_skip;

use std::path::PathBuf;
use std::process::Command;

use cdcheck::substrate::{binaries, doctor, tools};
use cdcheck::versions;

fn kind_or_skip() -> Option<PathBuf> {
    let found = std::env::var_os("CDCHECK_KIND")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("PATH").and_then(|p| {
                std::env::split_paths(&p)
                    .map(|d| d.join("kind"))
                    .find(|k| k.is_file())
            })
        })
        .or_else(|| {
            let cached =
                tools::tool_dir(&binaries::cache_root(), "kind", versions::KIND).join("kind");
            cached.is_file().then_some(cached)
        });
    if found.is_none() {
        common_skip::skip_or_fail(
            "kind not found (CDCHECK_KIND, PATH, cache): run `cdcheck substrate install --substrate kind`",
        );
    }
    found
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
