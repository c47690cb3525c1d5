//! The client sidecar's counters: Envoy's `/stats/prometheus` text, the per-upstream-cluster
//! `envoy_cluster_upstream_rq_total{cluster_name="outbound|9555||adservice-myfeature.<ns>.svc.cluster.local"}`
//! read before and after a batch of requests, and the clusters whose counters moved.
//!
//! Istio's bootstrap names the tag `cluster_name` (`stats_tags`, regex
//! `^cluster\.((.+?(\..+?\.svc\.cluster\.local)?)\.)`); Envoy's own default tag is
//! `envoy_cluster_name`: both are read. Istio records no `cluster.outbound` stats unless
//! the pod asks (`proxy.istio.io/config` with `proxyStatsMatcher.inclusionPrefixes:
//! [cluster.outbound]`), which the agent's pod does.
//!
//! The same sidecar's admin `/clusters?format=json` gives each upstream host's own
//! `rq_total` (Envoy keeps host counters whatever the stats matcher says): read before
//! and after a batch, the addresses whose counters moved are the pods that answered it.

use std::collections::BTreeMap;

/// The counter of requests a sidecar sent to an upstream cluster.
pub const UPSTREAM_RQ_TOTAL: &str = "envoy_cluster_upstream_rq_total";

#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    #[error("read the sidecar's stats at {url}")]
    Fetch {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("read the sidecar's stats at {url}: HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("parse the sidecar's upstream hosts at {url}")]
    Hosts {
        url: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("parse line {line} of the sidecar's stats: {reason}: {text:?}")]
    Parse {
        line: usize,
        reason: &'static str,
        text: String,
    },
}

/// Reads the labels of `{a="x",b="y\"z"}` (Prometheus text escapes `\\`, `\"`, `\n`).
fn parse_labels(text: &str) -> Option<(BTreeMap<String, String>, &str)> {
    let mut labels = BTreeMap::new();
    let mut rest = text.strip_prefix('{')?;
    loop {
        rest = rest.trim_start_matches([' ', ',']);
        if let Some(after) = rest.strip_prefix('}') {
            return Some((labels, after));
        }
        let eq = rest.find('=')?;
        let name = rest[..eq].trim().to_string();
        rest = rest[eq + 1..].strip_prefix('"')?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                '"' => break i,
                other => value.push(other),
            }
        };
        labels.insert(name, value);
        rest = &rest[end + 1..];
    }
}

/// Every sample of `metric` by its cluster label; samples without one are left out.
pub fn cluster_counters(text: &str, metric: &str) -> Result<BTreeMap<String, u64>, StatsError> {
    let mut counters = BTreeMap::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some(rest) = line.strip_prefix(metric) else {
            continue;
        };
        if !(rest.starts_with('{') || rest.starts_with(' ')) {
            continue; // a longer name with this prefix
        }
        let error = |reason| StatsError::Parse {
            line: index + 1,
            reason,
            text: line.to_string(),
        };
        let (labels, value) = if rest.starts_with('{') {
            parse_labels(rest).ok_or_else(|| error("unterminated labels"))?
        } else {
            (BTreeMap::new(), rest)
        };
        let value: f64 = value
            .split_whitespace()
            .next()
            .ok_or_else(|| error("no value"))?
            .parse()
            .map_err(|_| error("the value is not a number"))?;
        let Some(cluster) = labels
            .get("cluster_name")
            .or_else(|| labels.get("envoy_cluster_name"))
        else {
            continue;
        };
        *counters.entry(cluster.clone()).or_insert(0) += value as u64;
    }
    Ok(counters)
}

/// What moved between two readings: clusters whose counter grew, by how much.
pub fn delta(
    before: &BTreeMap<String, u64>,
    after: &BTreeMap<String, u64>,
) -> BTreeMap<String, u64> {
    after
        .iter()
        .filter_map(|(cluster, now)| {
            let then = before.get(cluster).copied().unwrap_or(0);
            (*now > then).then(|| (cluster.clone(), now - then))
        })
        .collect()
}

/// An Istio outbound cluster name, `outbound|<port>|<subset>|<host>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IstioCluster {
    pub port: u16,
    pub subset: String,
    pub host: String,
}

impl IstioCluster {
    pub fn parse(name: &str) -> Option<IstioCluster> {
        let mut parts = name.split('|');
        if parts.next()? != "outbound" {
            return None;
        }
        let port = parts.next()?.parse().ok()?;
        let subset = parts.next()?.to_string();
        let host = parts.next()?.to_string();
        (parts.next().is_none() && !host.is_empty()).then_some(IstioCluster { port, subset, host })
    }

    /// The Service: the host's first label (`adservice-myfeature` of
    /// `adservice-myfeature.dev.svc.cluster.local`).
    pub fn service(&self) -> &str {
        self.host.split('.').next().unwrap_or(&self.host)
    }

    /// The cluster name of `service` in `namespace` on `port`.
    pub fn name_of(service: &str, namespace: &str, port: u16) -> String {
        format!("outbound|{port}||{service}.{namespace}.svc.cluster.local")
    }
}

/// The sidecar's admin `/clusters` as JSON, as seen from the agent's container.
pub const DEFAULT_HOSTS_URL: &str = "http://127.0.0.1:15000/clusters?format=json";

/// `/clusters?format=json` of Envoy's admin, the parts read here.
#[derive(serde::Deserialize)]
struct ClustersDump {
    #[serde(default)]
    cluster_statuses: Vec<ClusterStatus>,
}

#[derive(serde::Deserialize)]
struct ClusterStatus {
    #[serde(default)]
    host_statuses: Vec<HostStatus>,
}

#[derive(serde::Deserialize)]
struct HostStatus {
    address: Option<HostAddress>,
    #[serde(default)]
    stats: Vec<HostStat>,
}

#[derive(serde::Deserialize)]
struct HostAddress {
    socket_address: Option<SocketAddress>,
}

#[derive(serde::Deserialize)]
struct SocketAddress {
    address: String,
    #[serde(default)]
    port_value: u32,
}

/// Proto3 JSON writes a uint64 as a string and leaves a zero out.
#[derive(serde::Deserialize)]
struct HostStat {
    name: String,
    #[serde(default)]
    value: Option<serde_json::Value>,
}

/// Every upstream host's `rq_total` by its address (`10.244.1.5:9555`, `[fd00::5]:9555`),
/// summed over the clusters that list it (a pod behind two Services is one host).
pub fn host_counters(text: &str, url: &str) -> Result<BTreeMap<String, u64>, StatsError> {
    let dump: ClustersDump = serde_json::from_str(text).map_err(|source| StatsError::Hosts {
        url: url.to_string(),
        source,
    })?;
    let mut counters = BTreeMap::new();
    for host in dump.cluster_statuses.iter().flat_map(|c| &c.host_statuses) {
        let Some(socket) = host
            .address
            .as_ref()
            .and_then(|a| a.socket_address.as_ref())
        else {
            continue; // a pipe or an internal address: no pod behind it
        };
        let value = host
            .stats
            .iter()
            .find(|s| s.name == "rq_total")
            .and_then(|s| match &s.value {
                Some(serde_json::Value::String(v)) => v.parse().ok(),
                Some(serde_json::Value::Number(v)) => v.as_u64(),
                _ => Some(0),
            })
            .unwrap_or(0);
        let address = match socket.address.parse::<std::net::IpAddr>() {
            Ok(ip) => std::net::SocketAddr::new(ip, socket.port_value as u16).to_string(),
            Err(_) => format!("{}:{}", socket.address, socket.port_value),
        };
        *counters.entry(address).or_insert(0) += value;
    }
    Ok(counters)
}

/// GETs `url` and returns its body.
async fn get_text(client: &reqwest::Client, url: &str) -> Result<String, StatsError> {
    let response = client
        .get(url)
        .send()
        .await
        .map_err(|source| StatsError::Fetch {
            url: url.to_string(),
            source,
        })?;
    if !response.status().is_success() {
        return Err(StatsError::Status {
            url: url.to_string(),
            status: response.status().as_u16(),
        });
    }
    response.text().await.map_err(|source| StatsError::Fetch {
        url: url.to_string(),
        source,
    })
}

/// Reads the upstream hosts' counters once.
pub async fn scrape_hosts(
    client: &reqwest::Client,
    url: &str,
) -> Result<BTreeMap<String, u64>, StatsError> {
    host_counters(&get_text(client, url).await?, url)
}

/// Reads the counters once.
pub async fn scrape(
    client: &reqwest::Client,
    url: &str,
) -> Result<BTreeMap<String, u64>, StatsError> {
    cluster_counters(&get_text(client, url).await?, UPSTREAM_RQ_TOTAL)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"# TYPE envoy_cluster_upstream_rq_total counter
envoy_cluster_upstream_rq_total{cluster_name="outbound|9555||adservice.dev.svc.cluster.local"} 40
envoy_cluster_upstream_rq_total{cluster_name="outbound|9555||adservice-myfeature.dev.svc.cluster.local"} 7
envoy_cluster_upstream_rq_total{cluster_name="xds-grpc"} 3
envoy_cluster_upstream_rq_total_extra{cluster_name="outbound|9555||adservice.dev.svc.cluster.local"} 99
envoy_cluster_upstream_rq_timeout{cluster_name="outbound|9555||adservice.dev.svc.cluster.local"} 5
envoy_cluster_upstream_rq_total{envoy_cluster_name="plain"} 2
envoy_cluster_upstream_rq_total{cluster_name="odd \"name\", with } inside"} 1
"#;

    #[test]
    fn counters_are_read_per_cluster_and_other_metrics_are_ignored() {
        let counters = cluster_counters(SAMPLE, UPSTREAM_RQ_TOTAL).unwrap();
        assert_eq!(
            counters["outbound|9555||adservice.dev.svc.cluster.local"],
            40
        );
        assert_eq!(
            counters["outbound|9555||adservice-myfeature.dev.svc.cluster.local"],
            7
        );
        assert_eq!(counters["plain"], 2);
        assert_eq!(counters["odd \"name\", with } inside"], 1);
        assert_eq!(counters.len(), 5, "{counters:#?}");
    }

    #[test]
    fn a_broken_line_is_an_error_naming_it() {
        let error = cluster_counters(
            "envoy_cluster_upstream_rq_total{cluster_name=\"a\"} many\n",
            UPSTREAM_RQ_TOTAL,
        )
        .unwrap_err();
        assert_eq!(
            error.to_string(),
            "parse line 1 of the sidecar's stats: the value is not a number: \"envoy_cluster_upstream_rq_total{cluster_name=\\\"a\\\"} many\""
        );
        assert!(
            cluster_counters(
                "envoy_cluster_upstream_rq_total{cluster_name=\"a 1\n",
                UPSTREAM_RQ_TOTAL
            )
            .is_err()
        );
    }

    #[test]
    fn the_delta_keeps_only_clusters_that_moved() {
        let before = BTreeMap::from([("a".to_string(), 5), ("b".to_string(), 2)]);
        let after = BTreeMap::from([
            ("a".to_string(), 5),
            ("b".to_string(), 12),
            ("c".to_string(), 1),
        ]);
        assert_eq!(
            delta(&before, &after),
            BTreeMap::from([("b".to_string(), 10), ("c".to_string(), 1)])
        );
    }

    /// Trimmed from a sidecar's `/clusters?format=json`: a pod behind two clusters, a
    /// host with no requests (its `rq_total` left out), an IPv6 host, a pipe.
    const HOSTS: &str = r#"{"cluster_statuses": [
      {"name": "outbound|9555||adservice.dev.svc.cluster.local", "host_statuses": [
        {"address": {"socket_address": {"address": "10.0.0.5", "port_value": 9555}},
         "stats": [{"name": "cx_connect_fail"}, {"value": "40", "name": "rq_total", "type": "COUNTER"}]},
        {"address": {"socket_address": {"address": "10.0.0.6", "port_value": 9555}},
         "stats": [{"name": "rq_total", "type": "COUNTER"}]}]},
      {"name": "outbound|9555||adservice-myfeature.dev.svc.cluster.local", "host_statuses": [
        {"address": {"socket_address": {"address": "10.0.0.5", "port_value": 9555}},
         "stats": [{"value": "2", "name": "rq_total"}]},
        {"address": {"socket_address": {"address": "fd00::7", "port_value": 9555}},
         "stats": [{"value": 3, "name": "rq_total"}]}]},
      {"name": "sds-grpc", "host_statuses": [
        {"address": {"pipe": {"path": "./var/run/secrets/workload-spiffe-uds/socket"}}, "stats": []}]},
      {"name": "BlackHoleCluster"}
    ]}"#;

    #[test]
    fn host_counters_are_read_per_address_across_clusters() {
        let counters = host_counters(HOSTS, "u").unwrap();
        assert_eq!(
            counters,
            BTreeMap::from([
                ("10.0.0.5:9555".to_string(), 42),
                ("10.0.0.6:9555".to_string(), 0),
                ("[fd00::7]:9555".to_string(), 3),
            ])
        );
        let error = host_counters("<html>", "http://p/clusters").unwrap_err();
        assert!(error.to_string().contains("http://p/clusters"), "{error}");
    }

    #[test]
    fn istio_cluster_names_give_the_service() {
        let c = IstioCluster::parse("outbound|9555||adservice-myfeature.dev.svc.cluster.local")
            .unwrap();
        assert_eq!(
            (c.port, c.subset.as_str(), c.service()),
            (9555, "", "adservice-myfeature")
        );
        assert_eq!(
            IstioCluster::name_of("adservice", "dev", 9555),
            "outbound|9555||adservice.dev.svc.cluster.local"
        );
        assert_eq!(IstioCluster::parse("inbound|9555||"), None);
        assert_eq!(IstioCluster::parse("xds-grpc"), None);
    }
}
