//! A substrate's data plane as the scenarios see it: the ingress gateway's addresses from the
//! host, and how calls from inside the mesh are made (the local mesh's client, or agent pods).

use std::net::SocketAddr;
use std::path::PathBuf;

/// A substrate's data plane: where its ingress gateway answers from the host, and how calls
/// from inside the mesh are made.
#[derive(Clone, Debug)]
pub struct DataPlane {
    pub http: SocketAddr,
    pub https: SocketAddr,
    pub in_mesh: InMesh,
}

/// How calls from inside the mesh are made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InMesh {
    /// The local mesh's in-mesh client (a sidecar-only pod whose egress listeners host
    /// ports are forwarded to), from its state directory.
    LocalClient(PathBuf),
    /// An agent pod running `cdcheck agent` from this image next to an injected sidecar;
    /// its records are read through the pod log API.
    Agent { image: String },
}

#[derive(Debug, thiserror::Error)]
pub enum IngressError {
    #[error("parse --ingress {value:?}: expected http://HOST[:PORT] or https://HOST[:PORT]")]
    Url { value: String },
    #[error("parse --ingress: {scheme}:// is given twice ({first} and {second})")]
    Twice {
        scheme: String,
        first: String,
        second: String,
    },
    #[error("resolve the ingress host {host}")]
    Resolve {
        host: String,
        #[source]
        source: std::io::Error,
    },
    #[error("resolve the ingress host {host}: it has no address")]
    NoAddress { host: String },
}

/// The local mesh's and kind's gateway NodePorts on 127.0.0.1 (kind maps them there).
fn node_ports() -> (SocketAddr, SocketAddr) {
    (
        SocketAddr::from(([127, 0, 0, 1], crate::mesh::gateway::HTTP_NODE_PORT)),
        SocketAddr::from(([127, 0, 0, 1], crate::mesh::gateway::HTTPS_NODE_PORT)),
    )
}

impl DataPlane {
    /// The local mesh's gateway on 127.0.0.1:30080/30443, as kind maps it.
    pub fn local_mesh(state_dir: PathBuf) -> DataPlane {
        let (http, https) = node_ports();
        DataPlane {
            http,
            https,
            in_mesh: InMesh::LocalClient(state_dir),
        }
    }

    /// kind's gateway NodePorts, mapped to 127.0.0.1:30080/30443 by the kind config, with
    /// the agent image loaded into the nodes.
    pub fn kind(agent_image: String) -> DataPlane {
        let (http, https) = node_ports();
        DataPlane {
            http,
            https,
            in_mesh: InMesh::Agent { image: agent_image },
        }
    }

    /// An existing cluster's gateway at these addresses.
    pub fn existing(http: SocketAddr, https: SocketAddr, agent_image: String) -> DataPlane {
        DataPlane {
            http,
            https,
            in_mesh: InMesh::Agent { image: agent_image },
        }
    }
}

/// `--ingress` URLs (at most one `http://` and one `https://`): the addresses of the
/// gateway's plain and TLS ports. A scheme not given is the other's host on its default
/// port (80 or 443), as a load balancer in front of a gateway serves them.
pub async fn ingress_from_urls(urls: &[String]) -> Result<(SocketAddr, SocketAddr), IngressError> {
    let mut http: Option<(String, url::Url)> = None;
    let mut https: Option<(String, url::Url)> = None;
    for value in urls {
        let bad = || IngressError::Url {
            value: value.clone(),
        };
        let url = url::Url::parse(value.trim()).map_err(|_| bad())?;
        if url.host_str().is_none() || !matches!(url.path(), "" | "/") {
            return Err(bad());
        }
        let slot = match url.scheme() {
            "http" => &mut http,
            "https" => &mut https,
            _ => return Err(bad()),
        };
        if let Some((first, _)) = slot {
            return Err(IngressError::Twice {
                scheme: url.scheme().to_string(),
                first: first.clone(),
                second: value.clone(),
            });
        }
        *slot = Some((value.clone(), url));
    }
    let host_port = |url: &url::Url, default: u16| {
        (
            url.host_str()
                .unwrap_or_default()
                .trim_matches(['[', ']'])
                .to_string(),
            url.port().unwrap_or(default),
        )
    };
    let (http, https) = match (http, https) {
        (Some((_, h)), Some((_, s))) => (host_port(&h, 80), host_port(&s, 443)),
        (Some((_, h)), None) => (host_port(&h, 80), (host_port(&h, 80).0, 443)),
        (None, Some((_, s))) => ((host_port(&s, 443).0, 80), host_port(&s, 443)),
        (None, None) => {
            return Err(IngressError::Url {
                value: String::new(),
            });
        }
    };
    Ok((
        resolve(&http.0, http.1).await?,
        resolve(&https.0, https.1).await?,
    ))
}

/// The first address of `host` (an IP, or a name such as a cloud load balancer's).
pub async fn resolve(host: &str, port: u16) -> Result<SocketAddr, IngressError> {
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    let mut addresses = tokio::net::lookup_host((host, port))
        .await
        .map_err(|source| IngressError::Resolve {
            host: host.to_string(),
            source,
        })?;
    addresses.next().ok_or_else(|| IngressError::NoAddress {
        host: host.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn urls(values: &[&str]) -> Vec<String> {
        values.iter().map(|v| v.to_string()).collect()
    }

    #[tokio::test]
    async fn ingress_urls_give_both_ports_and_a_missing_scheme_takes_its_default_port() {
        let both = ingress_from_urls(&urls(&[
            "http://127.0.0.1:30080",
            "https://127.0.0.1:30443",
        ]))
        .await
        .unwrap();
        assert_eq!(both.0.to_string(), "127.0.0.1:30080");
        assert_eq!(both.1.to_string(), "127.0.0.1:30443");
        let only_http = ingress_from_urls(&urls(&["http://10.0.0.7"]))
            .await
            .unwrap();
        assert_eq!(only_http.0.to_string(), "10.0.0.7:80");
        assert_eq!(only_http.1.to_string(), "10.0.0.7:443");
        let only_https = ingress_from_urls(&urls(&["https://[::1]:8443/"]))
            .await
            .unwrap();
        assert_eq!(only_https.0.to_string(), "[::1]:80");
        assert_eq!(only_https.1.to_string(), "[::1]:8443");
        let named = ingress_from_urls(&urls(&["http://localhost:30080"]))
            .await
            .unwrap();
        assert!(named.0.ip().is_loopback(), "{named:?}");
    }

    #[tokio::test]
    async fn bad_ingress_urls_name_the_value() {
        for bad in [
            "10.0.0.7",
            "ftp://10.0.0.7",
            "http://10.0.0.7/shop",
            "http://",
        ] {
            let error = ingress_from_urls(&urls(&[bad]))
                .await
                .unwrap_err()
                .to_string();
            assert!(error.contains(&format!("{bad:?}")), "{error}");
        }
        let twice = ingress_from_urls(&urls(&["http://a", "http://b"]))
            .await
            .unwrap_err()
            .to_string();
        assert!(twice.contains("http:// is given twice"), "{twice}");
    }
}
