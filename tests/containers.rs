//! The local registry of feature images on a real container engine, through testcontainers:
//! it starts, takes a pushed image and serves its manifest back, is removed when its handle
//! drops, and a registry that stopped makes the push step fail saying so.
//!
//! Needs a Docker API (Docker, or Podman's `podman system service` with `DOCKER_HOST` set to
//! its socket, as .ci/run starts it) and Distribution's registry binary, built by
//! `scripts/build-registry.sh` (or named by `CDCHECK_REGISTRY_BIN`). No image can be pulled
//! on the machines this runs on, so the registry image is built here from that binary and
//! tests/support_registry (`FROM scratch`), and it is the image the tests push. Without an
//! engine or the binary each test skips, and fails when `CI` is set.

#[path = "common/skip.rs"]
mod skip;

use std::path::{Path, PathBuf};
use std::time::Instant;

use cdcheck::substrate::containers::{self, ContainersError, LocalRegistry, RegistryOptions};
use cdcheck::substrate::doctor::Engine;
use cdcheck::substrate::host::{Cmd, Host, SystemHost};
use cdcheck::versions;
use sha2::{Digest, Sha256};
use testcontainers::GenericBuildableImage;
use testcontainers::core::BuildImageOptions;
use testcontainers::runners::AsyncBuilder;

/// The tag the feature-branch scenario deploys, as the kind substrate pushes it.
const TARGET: &str = "online-boutique-ci/microservices-demo/frontend:0.10.6-myfeature";

/// The Docker API socket testcontainers will use, if one is there.
fn docker_api() -> Option<String> {
    match std::env::var("DOCKER_HOST").ok().filter(|v| !v.is_empty()) {
        Some(host) => {
            let path = host.strip_prefix("unix://").unwrap_or(&host).to_string();
            Path::new(&path).exists().then_some(host)
        }
        None => Path::new("/var/run/docker.sock")
            .exists()
            .then(|| "unix:///var/run/docker.sock".to_string()),
    }
}

/// The CLI that shares the API's image store: Podman when the API is Podman's service.
fn engine(api: &str) -> Engine {
    match std::env::var("CDCHECK_CONTAINER_ENGINE").as_deref() {
        Ok("podman") => Engine::Podman,
        Ok("docker") => Engine::Docker,
        _ if api.contains("podman") => Engine::Podman,
        _ => Engine::Docker,
    }
}

fn registry_binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("CDCHECK_REGISTRY_BIN").filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(path));
    }
    let cached = cdcheck::substrate::binaries::cache_root()
        .join(format!("registry-{}", versions::DISTRIBUTION))
        .join("registry");
    cached.exists().then_some(cached)
}

/// What the tests need, or the reason they cannot run.
struct Machine {
    engine: Engine,
    image: String,
}

/// Builds the registry image from local files through testcontainers.
async fn machine() -> Option<Machine> {
    let Some(api) = docker_api() else {
        skip::skip_or_fail(
            "no Docker API (set DOCKER_HOST to Podman's service socket, or start Docker)",
        );
        return None;
    };
    let Some(binary) = registry_binary() else {
        skip::skip_or_fail(&format!(
            "no registry binary: CDCHECK_DISTRIBUTION_VERSION={} scripts/build-registry.sh",
            versions::DISTRIBUTION
        ));
        return None;
    };
    let support = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support_registry");
    let name = "localhost/cdcheck-test-registry";
    // Tagged by what goes into it, so an unchanged image is reused (no rebuild, no dangling
    // copy per run) and any change to the binary or the files builds a new one.
    let mut hasher = Sha256::new();
    for file in [
        support.join("Dockerfile"),
        support.join("config.yml"),
        binary.clone(),
    ] {
        hasher.update(std::fs::read(&file).expect("read the registry image's files"));
    }
    let digest: String = hasher.finalize()[..6]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let tag = format!("{}-{digest}", versions::DISTRIBUTION);
    let started = Instant::now();
    let _image = GenericBuildableImage::new(name, &tag)
        .with_dockerfile(support.join("Dockerfile"))
        .with_file(support.join("config.yml"), "./config.yml")
        .with_file(binary, "./registry")
        .build_image_with(BuildImageOptions::new().with_skip_if_exists(true))
        .await
        .expect("build the registry image from local files");
    eprintln!(
        "registry image {name}:{tag} ready in {:.1?}",
        started.elapsed()
    );
    Some(Machine {
        engine: engine(&api),
        image: format!("{name}:{tag}"),
    })
}

async fn start(image: &str) -> LocalRegistry {
    let started = Instant::now();
    let registry = match LocalRegistry::start(&RegistryOptions::new(image)).await {
        Ok(registry) => registry,
        Err(e) => {
            let error = cdcheck::error_chain(&e);
            match rlimit_cause(&error) {
                Some(cause) => panic!("start the local registry: {error}\n{cause}"),
                None => panic!("start the local registry: {error}"),
            }
        }
    };
    eprintln!(
        "registry {} serving on {} in {:.1?}",
        registry.id(),
        registry.address(),
        started.elapsed()
    );
    registry
}

/// When runc refused a container's rlimits, why: the engine asked for a limit above the hard
/// limit of the service process that starts containers, which only CAP_SYS_RESOURCE could raise.
fn rlimit_cause(error: &str) -> Option<String> {
    if !error.contains("error setting rlimit") {
        return None;
    }
    let service = docker_api()
        .and_then(|api| socket_owner(api.strip_prefix("unix://").unwrap_or(&api)))
        .map(|pid| {
            let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap_or_default();
            let hard: Vec<String> = limits
                .lines()
                .filter(|l| l.starts_with("Max processes") || l.starts_with("Max open files"))
                .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
                .collect();
            format!("the service (pid {pid}) holds: {}", hard.join("; "))
        })
        .unwrap_or_else(|| "the service's process was not found".into());
    Some(format!(
        "cause: the container engine asked runc for an rlimit (type 6 is RLIMIT_NPROC, 7 RLIMIT_NOFILE) \
         above the hard limit of its own service process, and without CAP_SYS_RESOURCE runc cannot \
         raise it; {service}. Set the containers' default_ulimits to the service's own hard limits \
         (.ci/run reads them from /proc/PID/limits of the service it starts) and restart the service."
    ))
}

/// The process listening on a unix socket, from /proc/net/unix and the processes' descriptors.
fn socket_owner(path: &str) -> Option<u32> {
    let table = std::fs::read_to_string("/proc/net/unix").ok()?;
    let inode = table
        .lines()
        .find(|l| l.split_whitespace().nth(7) == Some(path))?
        .split_whitespace()
        .nth(6)?
        .to_string();
    let wanted = format!("socket:[{inode}]");
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            std::fs::read_dir(entry.path().join("fd"))
                .ok()?
                .flatten()
                .any(|fd| {
                    std::fs::read_link(fd.path()).is_ok_and(|l| l.to_string_lossy() == wanted)
                })
                .then_some(pid)
        })
}

#[test]
fn an_rlimit_refusal_is_told_apart_with_the_service_limits() {
    let error = "start the registry container: runc create failed: unable to start container \
                 process: error during container init: error setting rlimit type 6: operation not permitted";
    let cause = rlimit_cause(error).expect("an rlimit refusal is recognised");
    assert!(cause.contains("RLIMIT_NPROC"), "{cause}");
    assert!(cause.contains("CAP_SYS_RESOURCE"), "{cause}");
    assert_eq!(rlimit_cause("image not found: localhost/x"), None);
}

/// Whether the engine still knows a container of that id.
fn container_exists(engine: Engine, id: &str) -> bool {
    SystemHost
        .run(&Cmd::new(engine.program(), ["container", "inspect", id]))
        .expect("run the engine's CLI")
        .success()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_local_registry_serves_back_what_the_feature_push_step_put_there() {
    let Some(machine) = machine().await else {
        return;
    };
    let registry = start(&machine.image).await;
    let id = registry.id().to_string();
    let address = registry.address().to_string();
    assert!(container_exists(machine.engine, &id));

    let host = SystemHost;
    let (image, address_) = (machine.image.clone(), address.clone());
    let pushed = tokio::task::spawn_blocking(move || {
        containers::push_image(&host, machine.engine, &image, &address_, TARGET)
    })
    .await
    .unwrap()
    .expect("push the feature image");
    assert_eq!(pushed, format!("{address}/{TARGET}"));
    // The push left a tag naming this registry's port in the engine's store: not for keeps.
    SystemHost
        .run(&Cmd::new(machine.engine.program(), ["rmi", &pushed]))
        .unwrap();

    let manifest = containers::manifest(&address, TARGET)
        .await
        .expect("read the pushed manifest back");
    assert!(
        manifest.digest.starts_with("sha256:") && manifest.digest.len() == 71,
        "{manifest:?}"
    );
    assert!(
        manifest.media_type.contains("manifest"),
        "a single-image manifest: {manifest:?}"
    );
    let layers = manifest.body["layers"].as_array().expect("layers");
    assert!(!layers.is_empty(), "{}", manifest.body);
    // A tag nobody pushed is the registry's 404, not an empty success.
    let missing = containers::manifest(&address, "online-boutique-ci/none:0")
        .await
        .unwrap_err();
    assert!(
        matches!(missing, ContainersError::ManifestStatus { status: 404, .. }),
        "{missing}"
    );

    drop(registry);
    assert!(
        !container_exists(machine.engine, &id),
        "dropping the handle removes the registry's container"
    );
    assert!(matches!(
        containers::ping(&address),
        Err(ContainersError::Unreachable { .. })
    ));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stopped_registry_makes_the_feature_push_step_fail_saying_so() {
    let Some(machine) = machine().await else {
        return;
    };
    let registry = start(&machine.image).await;
    let address = registry.address().to_string();
    registry.stop().await.expect("stop the registry");

    let host = SystemHost;
    let (image, address_) = (machine.image.clone(), address.clone());
    let err = tokio::task::spawn_blocking(move || {
        containers::push_image(&host, machine.engine, &image, &address_, TARGET)
    })
    .await
    .unwrap()
    .expect_err("a push to a stopped registry fails");
    assert!(
        matches!(err, ContainersError::Unreachable { .. }),
        "{err:?}"
    );
    let message = format!("failed to {err}");
    assert!(
        message.contains(&address) && message.contains("is its container running?"),
        "{message}"
    );
    let id = registry.id().to_string();
    registry
        .remove()
        .await
        .expect("remove the stopped registry");
    assert!(!container_exists(machine.engine, &id));
}

#[tokio::test(flavor = "multi_thread")]
async fn only_a_leftover_registry_labelled_as_ours_is_removed_to_free_its_name() {
    let Some(machine) = machine().await else {
        return;
    };
    let host = SystemHost;
    let ours = format!("cdcheck-test-leftover-{}", std::process::id());
    let mut options = RegistryOptions::new(&machine.image);
    options.name = Some(ours.clone());
    let registry = LocalRegistry::start(&options)
        .await
        .expect("start a named registry");
    // What a SIGKILL leaves: the container without its handle's drop.
    std::mem::forget(registry);

    let foreign = format!("cdcheck-test-foreign-{}", std::process::id());
    let run = host
        .run(&Cmd::new(
            machine.engine.program(),
            ["create", "--name", &foreign, &machine.image],
        ))
        .unwrap();
    assert!(run.success(), "{}", run.stderr);

    let (engine, ours_, foreign_) = (machine.engine, ours.clone(), foreign.clone());
    let (removed_ours, removed_foreign) = tokio::task::spawn_blocking(move || {
        (
            containers::remove_leftover(&SystemHost, engine, &ours_).unwrap(),
            containers::remove_leftover(&SystemHost, engine, &foreign_).unwrap(),
        )
    })
    .await
    .unwrap();
    let foreign_left = container_exists(machine.engine, &foreign);
    host.run(&Cmd::new(
        machine.engine.program(),
        ["rm", "--force", &foreign],
    ))
    .unwrap();
    assert!(removed_ours && !container_exists(machine.engine, &ours));
    assert!(
        !removed_foreign && foreign_left,
        "a container not labelled as ours stays"
    );
}
