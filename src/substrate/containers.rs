//! Container-side helpers run through testcontainers-rs wherever a Docker API answers (Docker,
//! or Podman's Docker-compatible service with `DOCKER_HOST` pointing at its socket): the local
//! OCI registry the kind substrate's feature images go through, as kind's documentation
//! recommends over `kind load`, and the push and manifest read that use it.
//!
//! Lifecycle: a [`LocalRegistry`] is the handle on a running container, and dropping it removes
//! the container (testcontainers removes on drop), so the registry lives exactly as long as the
//! command holding it. Ctrl-C: testcontainers' `watchdog` feature is left off, because after
//! removing its containers it re-raises the signal and ends the process, which would cut short
//! the caller's own cleanup; callers hold the handle in the scope their Ctrl-C handling unwinds,
//! so the drop runs. Only a SIGKILL leaves the container behind: it carries
//! [`CREATED_BY_LABEL`], and the next start under the same name removes that leftover
//! ([`remove_leftover`]) rather than failing on the name.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use testcontainers::bollard::models::PortBinding;
use testcontainers::core::{IntoContainerPort, WaitFor};
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, GenericImage, ImageExt, TestcontainersError};

use super::doctor::Engine;
use super::host::{Cmd, Host, Output};
use crate::names::{CDCHECK, CREATED_BY_LABEL};
use crate::versions;

/// The port the registry listens on inside its container (Distribution's default).
pub const REGISTRY_CONTAINER_PORT: u16 = 5000;

/// The registry container's name when the kind nodes reach it on the `kind` network.
pub const KIND_REGISTRY_NAME: &str = "cdcheck-registry";

/// The host port kind's documentation gives the local registry (`localhost:5001`): 5000 is
/// taken by the AirPlay receiver on macOS.
pub const KIND_REGISTRY_HOST_PORT: u16 = 5001;

/// What Distribution logs once it accepts connections (`msg="listening on [::]:5000"`).
const READY_LINE: &str = "listening on";

/// How long a push step waits for the registry to answer before calling it unreachable.
const PING_TIMEOUT: Duration = Duration::from_secs(5);

/// testcontainers' errors are boxed: they are large, and every result here would carry them.
#[derive(Debug, thiserror::Error)]
pub enum ContainersError {
    #[error(
        "start the local registry from {image} through the Docker API (is Docker running, or DOCKER_HOST set to Podman's service socket?)"
    )]
    Start {
        image: String,
        #[source]
        source: Box<TestcontainersError>,
    },
    #[error("find the host port the local registry's container {id} publishes")]
    Port {
        id: String,
        #[source]
        source: Box<TestcontainersError>,
    },
    #[error(
        "reach the local registry at {address} (GET /v2/): is its container running? (`docker ps --filter label={CREATED_BY_LABEL}`)"
    )]
    Unreachable {
        address: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "reach the local registry at {address}: GET /v2/ answered `{status_line}`, not a registry's 200"
    )]
    NotARegistry {
        address: String,
        status_line: String,
    },
    #[error(transparent)]
    Command(#[from] super::host::CommandError),
    #[error("read the manifest of {reference} from the local registry at {address}")]
    Manifest {
        address: String,
        reference: String,
        #[source]
        source: reqwest::Error,
    },
    #[error(
        "read the manifest of {reference} from the local registry at {address}: it answered {status}"
    )]
    ManifestStatus {
        address: String,
        reference: String,
        status: u16,
    },
    #[error("stop the local registry's container {id}")]
    Stop {
        id: String,
        #[source]
        source: Box<TestcontainersError>,
    },
    #[error("remove the local registry's container {id}")]
    Remove {
        id: String,
        #[source]
        source: Box<TestcontainersError>,
    },
}

/// How to start the registry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegistryOptions {
    /// Image reference, `name[:tag][@digest]`; an image already in the engine's store is used
    /// as is (testcontainers pulls only a missing one).
    pub image: String,
    /// Container name; `None` lets the engine choose (tests, several at once).
    pub name: Option<String>,
    /// Host port on 127.0.0.1; `None` for one the engine picks.
    pub host_port: Option<u16>,
    pub startup_timeout: Duration,
}

impl RegistryOptions {
    pub fn new(image: impl Into<String>) -> RegistryOptions {
        RegistryOptions {
            image: image.into(),
            name: None,
            host_port: None,
            startup_timeout: Duration::from_secs(60),
        }
    }

    /// The pinned image ([`versions::REGISTRY_IMAGE`]) on an ephemeral port.
    pub fn pinned() -> RegistryOptions {
        RegistryOptions::new(versions::REGISTRY_IMAGE)
    }

    /// As kind's documentation sets it up: named [`KIND_REGISTRY_NAME`] (the name the nodes'
    /// containerd resolves on the `kind` network) on `localhost:5001`.
    pub fn for_kind(image: impl Into<String>) -> RegistryOptions {
        RegistryOptions {
            name: Some(KIND_REGISTRY_NAME.to_string()),
            host_port: Some(KIND_REGISTRY_HOST_PORT),
            ..RegistryOptions::new(image)
        }
    }
}

/// Splits `name[:tag][@digest]` into testcontainers' name and tag (the tag keeps the digest,
/// which the engine then checks); a colon before the last `/` is a registry's port, not a tag.
pub fn split_reference(image: &str) -> (String, String) {
    let image = crate::manifests::image::ImageRef::parse(image);
    let tag = image.tag.unwrap_or("latest");
    let tag = match image.digest {
        Some(digest) => format!("{tag}@{digest}"),
        None => tag.to_string(),
    };
    (image.repository.to_string(), tag)
}

/// A running local registry; dropping it removes its container.
pub struct LocalRegistry {
    container: ContainerAsync<GenericImage>,
    address: String,
    name: Option<String>,
}

impl std::fmt::Debug for LocalRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalRegistry")
            .field("id", &self.container.id())
            .field("address", &self.address)
            .field("name", &self.name)
            .finish()
    }
}

impl LocalRegistry {
    /// Starts the registry and waits until it serves `/v2/`.
    pub async fn start(options: &RegistryOptions) -> Result<LocalRegistry, ContainersError> {
        let (name, tag) = split_reference(&options.image);
        let host_port = options.host_port;
        let mut request = GenericImage::new(name, tag)
            .with_exposed_port(REGISTRY_CONTAINER_PORT.tcp())
            .with_wait_for(WaitFor::message_on_either_std(READY_LINE))
            .with_label(CREATED_BY_LABEL, CDCHECK)
            .with_startup_timeout(options.startup_timeout)
            // Loopback only: the registry takes pushes without authentication.
            .with_host_config_modifier(move |config| {
                config.publish_all_ports = Some(false);
                config.port_bindings = Some(
                    [(
                        format!("{REGISTRY_CONTAINER_PORT}/tcp"),
                        Some(vec![PortBinding {
                            host_ip: Some("127.0.0.1".to_string()),
                            host_port: Some(host_port.map(|p| p.to_string()).unwrap_or_default()),
                        }]),
                    )]
                    .into_iter()
                    .collect(),
                );
            });
        if let Some(name) = &options.name {
            request = request.with_container_name(name);
        }
        let container = request
            .start()
            .await
            .map_err(|source| ContainersError::Start {
                image: options.image.clone(),
                source: Box::new(source),
            })?;
        let port = container
            .get_host_port_ipv4(REGISTRY_CONTAINER_PORT.tcp())
            .await
            .map_err(|source| ContainersError::Port {
                id: container.id().to_string(),
                source: Box::new(source),
            })?;
        let registry = LocalRegistry {
            address: format!("127.0.0.1:{port}"),
            name: options.name.clone(),
            container,
        };
        // The log line comes just before the listener accepts: wait for an answer too.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let address = registry.address.clone();
            let ping = tokio::task::spawn_blocking(move || ping(&address))
                .await
                .expect("the ping task does not panic");
            match ping {
                Ok(()) => return Ok(registry),
                Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// `host:port` on this machine (`127.0.0.1:<port>`), where pushes go.
    pub fn address(&self) -> &str {
        &self.address
    }

    pub fn id(&self) -> &str {
        self.container.id()
    }

    /// The container name the kind nodes reach it by, when it was given one.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// Stops the container but keeps it (and the handle): what a registry that died looks like.
    pub async fn stop(&self) -> Result<(), ContainersError> {
        self.container
            .stop()
            .await
            .map_err(|source| ContainersError::Stop {
                id: self.id().to_string(),
                source: Box::new(source),
            })
    }

    /// Removes the container now, reporting a failure that a drop could only log.
    pub async fn remove(self) -> Result<(), ContainersError> {
        let id = self.id().to_string();
        self.container
            .rm()
            .await
            .map_err(|source| ContainersError::Remove {
                id,
                source: Box::new(source),
            })
    }
}

/// `GET /v2/` (Distribution's API version check): `Ok` when it answers 200. Plain HTTP over a
/// socket, so it runs anywhere (a plan executing on a blocking thread, a test) without a runtime.
pub fn ping(address: &str) -> Result<(), ContainersError> {
    let unreachable = |source| ContainersError::Unreachable {
        address: address.to_string(),
        source,
    };
    // Every address the name resolves to (`localhost` may be ::1 first while the registry
    // publishes on 127.0.0.1 only), the first that connects.
    let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "no address");
    let mut connected = None;
    for socket in address.to_socket_addrs().map_err(unreachable)? {
        match TcpStream::connect_timeout(&socket, PING_TIMEOUT) {
            Ok(stream) => {
                connected = Some(stream);
                break;
            }
            Err(e) => last = e,
        }
    }
    let mut stream = connected.ok_or_else(|| unreachable(last))?;
    stream
        .set_read_timeout(Some(PING_TIMEOUT))
        .map_err(unreachable)?;
    stream
        .write_all(
            format!("GET /v2/ HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .map_err(unreachable)?;
    let mut head = [0u8; 64];
    let n = stream.read(&mut head).map_err(unreachable)?;
    let status_line = String::from_utf8_lossy(&head[..n])
        .lines()
        .next()
        .unwrap_or_default()
        .to_string();
    if status_line.split_whitespace().nth(1) == Some("200") {
        Ok(())
    } else {
        Err(ContainersError::NotARegistry {
            address: address.to_string(),
            status_line,
        })
    }
}

/// The repository a feature image is pushed to: its upstream path without the registry host,
/// so a node whose containerd mirrors the upstream host to the local registry finds it under
/// the name the manifests use (`us-central1-docker.pkg.dev/a/b/frontend:t` -> `a/b/frontend:t`).
pub fn repository_path(image: &str) -> &str {
    match image.split_once('/') {
        Some((host, rest)) if host.contains('.') || host.contains(':') || host == "localhost" => {
            rest
        }
        _ => image,
    }
}

/// The commands that put a local image into the registry at `address` as `target`
/// (`repository:tag`): tag it with the registry's address, then push (Podman insists on TLS
/// unless told otherwise; Docker takes loopback registries as plain HTTP by itself).
pub fn push_commands(
    engine: Engine,
    source: &str,
    address: &str,
    target: &str,
) -> Vec<(String, Cmd)> {
    let destination = format!("{address}/{target}");
    let mut push = vec!["push".to_string()];
    if engine == Engine::Podman {
        push.push("--tls-verify=false".to_string());
    }
    push.push(destination.clone());
    vec![
        (
            format!("tag {source} as {destination}"),
            Cmd::new(engine.program(), ["tag", source, &destination]),
        ),
        (
            format!("push {destination} to the local registry"),
            Cmd::new(engine.program(), push),
        ),
    ]
}

fn output(host: &dyn Host, purpose: &str, cmd: &Cmd) -> Result<Output, ContainersError> {
    Ok(super::host::output(host, purpose, cmd)?)
}

/// Pushes a local image to the registry at `address` as `target`; first checks the registry
/// answers, so a registry that is gone reads as such rather than as the engine's retry noise.
/// Returns the pushed reference (`address/target`).
pub fn push_image(
    host: &dyn Host,
    engine: Engine,
    source: &str,
    address: &str,
    target: &str,
) -> Result<String, ContainersError> {
    ping(address)?;
    for (purpose, cmd) in push_commands(engine, source, address, target) {
        output(host, &purpose, &cmd)?;
    }
    Ok(format!("{address}/{target}"))
}

/// Removes a container of that name left behind by an earlier cdcheck (killed before its
/// drop ran), and nothing that is not labelled as ours. `Ok(true)` when one was removed.
pub fn remove_leftover(
    host: &dyn Host,
    engine: Engine,
    name: &str,
) -> Result<bool, ContainersError> {
    let inspect = Cmd::new(
        engine.program(),
        [
            "container",
            "inspect",
            "--format",
            &format!("{{{{index .Config.Labels \"{CREATED_BY_LABEL}\"}}}}"),
            name,
        ],
    );
    let purpose = format!("inspect the container {name}");
    let out = host
        .run(&inspect)
        .map_err(|source| super::host::CommandError::Spawn {
            purpose: purpose.clone(),
            cmd: inspect.to_string(),
            source,
        })?;
    // No such container: nothing to do (the engine's message differs, the exit code does not).
    if !out.success() || out.stdout.trim() != CDCHECK {
        return Ok(false);
    }
    output(
        host,
        &format!("remove the leftover container {name}"),
        &Cmd::new(engine.program(), ["rm", "--force", name]),
    )?;
    Ok(true)
}

/// A manifest as the registry serves it.
#[derive(Clone, Debug)]
pub struct Manifest {
    /// `Content-Type`: an OCI image manifest or index, or Docker's v2 schema 2.
    pub media_type: String,
    /// `Docker-Content-Digest`, the digest a node would pull by.
    pub digest: String,
    pub body: serde_json::Value,
}

/// Reads `repository:tag`'s manifest from the registry at `address`.
pub async fn manifest(address: &str, reference: &str) -> Result<Manifest, ContainersError> {
    crate::install_crypto_provider();
    let (repository, tag) = reference.rsplit_once(':').unwrap_or((reference, "latest"));
    let error = |source| ContainersError::Manifest {
        address: address.to_string(),
        reference: reference.to_string(),
        source,
    };
    let response = reqwest::Client::new()
        .get(format!("http://{address}/v2/{repository}/manifests/{tag}"))
        .header(
            reqwest::header::ACCEPT,
            [
                "application/vnd.oci.image.manifest.v1+json",
                "application/vnd.oci.image.index.v1+json",
                "application/vnd.docker.distribution.manifest.v2+json",
                "application/vnd.docker.distribution.manifest.list.v2+json",
            ]
            .join(", "),
        )
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .map_err(error)?;
    if !response.status().is_success() {
        return Err(ContainersError::ManifestStatus {
            address: address.to_string(),
            reference: reference.to_string(),
            status: response.status().as_u16(),
        });
    }
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let media_type = header("content-type");
    let digest = header("docker-content-digest");
    let body = response.json().await.map_err(error)?;
    Ok(Manifest {
        media_type,
        digest,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_split_into_name_and_tag_keeping_ports_and_digests() {
        let split = |s: &str| split_reference(s);
        assert_eq!(
            split("docker.io/library/registry:3"),
            ("docker.io/library/registry".into(), "3".into())
        );
        assert_eq!(
            split("localhost:5001/cdcheck/registry"),
            ("localhost:5001/cdcheck/registry".into(), "latest".into())
        );
        assert_eq!(
            split("registry:3@sha256:abc"),
            ("registry".into(), "3@sha256:abc".into())
        );
    }

    #[test]
    fn feature_images_keep_their_upstream_path_in_the_local_registry() {
        assert_eq!(
            repository_path(
                "us-central1-docker.pkg.dev/online-boutique-ci/microservices-demo/frontend:0.10.6-myfeature"
            ),
            "online-boutique-ci/microservices-demo/frontend:0.10.6-myfeature"
        );
        assert_eq!(repository_path("redis:alpine"), "redis:alpine");
        assert_eq!(
            repository_path("library/redis:alpine"),
            "library/redis:alpine"
        );
    }

    #[test]
    fn podman_pushes_to_the_loopback_registry_without_tls() {
        let lines: Vec<String> = push_commands(Engine::Podman, "a:1", "127.0.0.1:5001", "x/a:1")
            .into_iter()
            .map(|(_, cmd)| cmd.to_string())
            .collect();
        assert_eq!(
            lines,
            [
                "podman tag a:1 127.0.0.1:5001/x/a:1",
                "podman push --tls-verify=false 127.0.0.1:5001/x/a:1"
            ]
        );
    }

    #[test]
    fn a_closed_port_reads_as_an_unreachable_registry() {
        // Bind then drop: the port is free and nothing listens on it.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let err = ping(&format!("127.0.0.1:{port}")).unwrap_err();
        assert!(matches!(err, ContainersError::Unreachable { .. }), "{err}");
        assert!(
            err.to_string().contains("is its container running?"),
            "{err}"
        );
    }
}
