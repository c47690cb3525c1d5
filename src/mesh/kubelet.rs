//! The kubelet's log endpoint on the local mesh: `GET /containerLogs/{namespace}/{pod}/{container}`
//! over HTTPS, which the API server calls for `kubectl logs` and the pod log API, served
//! from the files the pod runner writes each container's output to. The nodes point at
//! it (InternalIP 127.0.0.1, kubelet port [`KUBELET_PORT`]); the API server authenticates
//! with its kubelet client certificate, checked against the cluster's CA, and does not
//! check this endpoint's certificate (it has no `--kubelet-certificate-authority`).
//!
//! Understood: `follow` (ends when the container's process exits), `tailLines`,
//! `limitBytes`. Not: `timestamps` (the files keep no time per line), `sinceSeconds`,
//! `sinceTime`, `previous` (one file per container across restarts), `stream`
//! (stdout and stderr share the file).

use std::collections::HashMap;
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::Frame;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::watch;

/// The kubelet port of every node of a mesh substrate (on 127.0.0.1). Fixed, as the
/// gateway's node ports are: one local mesh per machine.
pub const KUBELET_PORT: u16 = 30250;

#[derive(Debug, thiserror::Error)]
pub enum KubeletError {
    #[error("read the cluster's CA {path} (to check the API server's client certificate)")]
    ReadCa {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("use the cluster's CA {path}: {reason}")]
    Ca { path: PathBuf, reason: String },
    #[error("make the kubelet endpoint's serving certificate")]
    Certificate(#[source] rcgen::Error),
    #[error("set up TLS for the kubelet endpoint")]
    Tls(#[source] rustls::Error),
}

/// Where each container's output is and whether its process runs, by pod.
#[derive(Debug, Default)]
pub struct ContainerLogs {
    pods: Mutex<HashMap<(String, String), PodLogs>>,
}

#[derive(Debug)]
struct PodLogs {
    uid: String,
    containers: HashMap<String, (PathBuf, watch::Sender<bool>)>,
}

impl ContainerLogs {
    /// A container's process started, writing to `path`.
    pub fn started(&self, namespace: &str, pod: &str, uid: &str, container: &str, path: PathBuf) {
        let mut pods = self.pods.lock().expect("log registry lock");
        let key = (namespace.to_string(), pod.to_string());
        let entry = pods.entry(key).or_insert_with(|| PodLogs {
            uid: uid.to_string(),
            containers: HashMap::new(),
        });
        if entry.uid != uid {
            // A new pod of the same name: the old one's logs are gone with it.
            entry.uid = uid.to_string();
            entry.containers.clear();
        }
        match entry.containers.get_mut(container) {
            Some((old, running)) => {
                *old = path;
                running.send_replace(true);
            }
            None => {
                entry
                    .containers
                    .insert(container.to_string(), (path, watch::channel(true).0));
            }
        }
    }

    /// A container's process exited: followers read what is left and end.
    pub fn exited(&self, namespace: &str, pod: &str, uid: &str, container: &str) {
        let pods = self.pods.lock().expect("log registry lock");
        if let Some(entry) = pods.get(&(namespace.to_string(), pod.to_string()))
            && entry.uid == uid
            && let Some((_, running)) = entry.containers.get(container)
        {
            running.send_replace(false);
        }
    }

    /// The pod is gone, and its logs with it.
    pub fn forget(&self, namespace: &str, pod: &str, uid: &str) {
        let mut pods = self.pods.lock().expect("log registry lock");
        let key = (namespace.to_string(), pod.to_string());
        if pods.get(&key).is_some_and(|e| e.uid == uid)
            && let Some(entry) = pods.remove(&key)
        {
            for (_, running) in entry.containers.values() {
                running.send_replace(false);
            }
        }
    }

    fn find(
        &self,
        namespace: &str,
        pod: &str,
        container: &str,
    ) -> Option<(PathBuf, watch::Receiver<bool>)> {
        let pods = self.pods.lock().expect("log registry lock");
        let (path, running) = pods
            .get(&(namespace.to_string(), pod.to_string()))?
            .containers
            .get(container)?;
        Some((path.clone(), running.subscribe()))
    }
}

/// The TLS side of the endpoint: a fresh self-signed serving certificate, and client
/// certificates required and checked against the cluster's CA (`ca_path`).
pub fn tls_acceptor(ca_path: &Path) -> Result<tokio_rustls::TlsAcceptor, KubeletError> {
    let ca = std::fs::read(ca_path).map_err(|source| KubeletError::ReadCa {
        path: ca_path.to_path_buf(),
        source,
    })?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut ca.as_slice()) {
        let cert = cert.map_err(|source| KubeletError::ReadCa {
            path: ca_path.to_path_buf(),
            source,
        })?;
        roots.add(cert).map_err(|e| KubeletError::Ca {
            path: ca_path.to_path_buf(),
            reason: e.to_string(),
        })?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
        .build()
        .map_err(|e| KubeletError::Ca {
            path: ca_path.to_path_buf(),
            reason: e.to_string(),
        })?;
    let key = rcgen::KeyPair::generate().map_err(KubeletError::Certificate)?;
    let params = rcgen::CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])
        .map_err(KubeletError::Certificate)?;
    let cert = params
        .self_signed(&key)
        .map_err(KubeletError::Certificate)?;
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let mut config = rustls::ServerConfig::builder()
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![cert.der().clone()], key)
        .map_err(KubeletError::Tls)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Serves the endpoint on `listener` until the task is dropped.
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: tokio_rustls::TlsAcceptor,
    logs: Arc<ContainerLogs>,
) {
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let (tls, logs) = (tls.clone(), logs.clone());
        tokio::spawn(async move {
            let stream = match tls.accept(stream).await {
                Ok(stream) => stream,
                Err(e) => {
                    tracing::debug!("kubelet endpoint: TLS with {peer}: {e}");
                    return;
                }
            };
            let service = hyper::service::service_fn(move |request| {
                let logs = logs.clone();
                async move { Ok::<_, Infallible>(handle(&logs, &request).await) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!("kubelet endpoint: connection from {peer}: {e}");
            }
        });
    }
}

type Body = BoxBody<Bytes, std::io::Error>;

fn plain(status: u16, text: String) -> hyper::Response<Body> {
    hyper::Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "text/plain")
        .body(Full::new(Bytes::from(text)).map_err(|e| match e {}).boxed())
        .expect("a response")
}

/// The query parameters the endpoint understands.
#[derive(Debug, Default, PartialEq)]
struct LogQuery {
    follow: bool,
    tail_lines: Option<u64>,
    limit_bytes: Option<u64>,
    previous: bool,
}

fn parse_query(query: &str) -> Result<LogQuery, String> {
    let mut parsed = LogQuery::default();
    for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
        let flag = || matches!(value.as_ref(), "true" | "1");
        let number = || {
            value
                .parse::<i64>()
                .map(|n| n.max(0) as u64)
                .map_err(|_| format!("{key}={value:?} is not a number"))
        };
        match key.as_ref() {
            "follow" => parsed.follow = flag(),
            "previous" => parsed.previous = flag(),
            "tailLines" => parsed.tail_lines = Some(number()?),
            "limitBytes" => parsed.limit_bytes = Some(number()?),
            _ => {}
        }
    }
    Ok(parsed)
}

async fn handle(
    logs: &ContainerLogs,
    request: &hyper::Request<hyper::body::Incoming>,
) -> hyper::Response<Body> {
    let path = request.uri().path();
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let ["containerLogs", namespace, pod, container] = parts[..] else {
        return plain(
            404,
            format!(
                "{path}: only /containerLogs/{{namespace}}/{{pod}}/{{container}} is served by the local mesh's kubelet\n"
            ),
        );
    };
    if request.method() != http::Method::GET {
        return plain(405, "only GET\n".into());
    }
    let query = match parse_query(request.uri().query().unwrap_or_default()) {
        Ok(query) => query,
        Err(why) => return plain(400, format!("{why}\n")),
    };
    if query.previous {
        return plain(
            400,
            format!("previous terminated container \"{container}\" in pod \"{pod}\" not found\n"),
        );
    }
    let Some((file, running)) = logs.find(namespace, pod, container) else {
        return plain(
            404,
            format!(
                "container \"{container}\" of pod {namespace}/{pod} has not started on this node\n"
            ),
        );
    };
    match open_at(&file, query.tail_lines).await {
        Ok(opened) => {
            let stream = follow_stream(opened, running, query.follow, query.limit_bytes);
            hyper::Response::builder()
                .status(200)
                .header(http::header::CONTENT_TYPE, "text/plain")
                .body(StreamBody::new(stream).boxed())
                .expect("a response")
        }
        Err(e) => plain(500, format!("open {}: {e}\n", file.display())),
    }
}

/// The offset of the last `lines` lines of `text` (a final line without its newline counts).
fn tail_offset(text: &[u8], lines: u64) -> usize {
    if lines == 0 {
        return text.len();
    }
    let body = text.strip_suffix(b"\n").unwrap_or(text);
    let mut seen = 0;
    for (i, b) in body.iter().enumerate().rev() {
        if *b == b'\n' {
            seen += 1;
            if seen == lines {
                return i + 1;
            }
        }
    }
    0
}

async fn open_at(path: &Path, tail_lines: Option<u64>) -> std::io::Result<tokio::fs::File> {
    let mut file = tokio::fs::File::open(path).await?;
    if let Some(lines) = tail_lines {
        let text = tokio::fs::read(path).await?;
        file.seek(std::io::SeekFrom::Start(tail_offset(&text, lines) as u64))
            .await?;
    }
    Ok(file)
}

struct Tail {
    file: tokio::fs::File,
    running: watch::Receiver<bool>,
    follow: bool,
    left: Option<u64>,
    /// The process exited: read what is left, then end.
    draining: bool,
}

/// The file from where it is, then (with `follow`) what is appended until the container's
/// process exits.
fn follow_stream(
    file: tokio::fs::File,
    running: watch::Receiver<bool>,
    follow: bool,
    limit: Option<u64>,
) -> impl futures::Stream<Item = Result<Frame<Bytes>, std::io::Error>> + Send + Sync + 'static {
    let tail = Tail {
        file,
        running,
        follow,
        left: limit,
        draining: false,
    };
    futures::stream::unfold(tail, |mut tail| async move {
        let mut buffer = vec![0u8; 32 * 1024];
        loop {
            if tail.left == Some(0) {
                return None;
            }
            let n = match tail.file.read(&mut buffer).await {
                Ok(n) => n,
                Err(e) => return Some((Err(e), tail)),
            };
            if n > 0 {
                let n = tail.left.map_or(n, |left| n.min(left as usize));
                if let Some(left) = tail.left.as_mut() {
                    *left -= n as u64;
                }
                buffer.truncate(n);
                return Some((Ok(Frame::data(Bytes::from(buffer))), tail));
            }
            if !tail.follow || tail.draining {
                return None;
            }
            if !*tail.running.borrow() {
                tail.draining = true;
                continue;
            }
            // The file grows by the process's own writes: poll it, or wake on the exit.
            let _ = tokio::time::timeout(Duration::from_millis(100), tail.running.changed()).await;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    #[test]
    fn tail_lines_count_from_the_end_and_a_final_line_without_newline_counts() {
        assert_eq!(tail_offset(b"a\nb\nc\n", 1), 4);
        assert_eq!(tail_offset(b"a\nb\nc\n", 2), 2);
        assert_eq!(tail_offset(b"a\nb\nc\n", 5), 0);
        assert_eq!(tail_offset(b"a\nb\nc", 1), 4);
        assert_eq!(tail_offset(b"a\nb\n", 0), 4);
    }

    #[test]
    fn the_query_names_the_bad_value() {
        assert_eq!(
            parse_query("follow=true&tailLines=3").unwrap(),
            LogQuery {
                follow: true,
                tail_lines: Some(3),
                ..Default::default()
            }
        );
        assert!(
            parse_query("tailLines=x")
                .unwrap_err()
                .contains("tailLines")
        );
    }

    async fn collect(
        stream: impl futures::Stream<Item = Result<Frame<Bytes>, std::io::Error>>,
    ) -> String {
        let frames: Vec<_> = stream.collect().await;
        let mut text = Vec::new();
        for frame in frames {
            text.extend_from_slice(frame.unwrap().data_ref().unwrap());
        }
        String::from_utf8(text).unwrap()
    }

    #[tokio::test]
    async fn a_follower_gets_what_is_appended_and_ends_when_the_process_exits() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.log");
        std::fs::write(&path, "one\n").unwrap();
        let logs = Arc::new(ContainerLogs::default());
        logs.started("dev", "p", "u1", "agent", path.clone());
        let (file, running) = logs.find("dev", "p", "agent").unwrap();
        let follower = tokio::spawn(collect(follow_stream(
            tokio::fs::File::open(&file).await.unwrap(),
            running,
            true,
            None,
        )));
        tokio::time::sleep(Duration::from_millis(150)).await;
        use std::io::Write;
        let mut out = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        writeln!(out, "two").unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(
            !follower.is_finished(),
            "follow ended while the process runs"
        );
        writeln!(out, "three").unwrap();
        // A stale uid (an older pod of the same name) does not end it.
        logs.exited("dev", "p", "u0", "agent");
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(!follower.is_finished());
        logs.exited("dev", "p", "u1", "agent");
        let text = tokio::time::timeout(Duration::from_secs(2), follower)
            .await
            .expect("follow ends once the process exited")
            .unwrap();
        assert_eq!(text, "one\ntwo\nthree\n");

        // Without follow, what is there; limitBytes cuts it.
        let (file, running) = logs.find("dev", "p", "agent").unwrap();
        let stream = follow_stream(
            tokio::fs::File::open(&file).await.unwrap(),
            running,
            false,
            Some(5),
        );
        assert_eq!(collect(stream).await, "one\nt");
        logs.forget("dev", "p", "u1");
        assert!(logs.find("dev", "p", "agent").is_none());
    }
}
