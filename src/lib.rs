//! cdcheck: a conformance suite for Kubernetes continuous delivery on Istio.
//!
//! Data flows left to right (ARCHITECTURE.md):
//!
//! - [`names`], [`settings`]: the ground floor: the labels, annotations and namespaces
//!   cdcheck shares across modules; every default and every environment variable it reads.
//! - [`versions`]: every pinned external version.
//! - [`catalog`]: the Online Boutique workloads as typed data.
//! - [`manifests`]: pure functions from catalog + pipeline options to a [`manifests::Bundle`].
//! - [`traffic`]: load generation, probes and request attribution.
//! - [`substrate`]: provisions the cluster through one entry, [`substrate::provision`]: the local
//!   control plane (with or without the mesh), kind, or an existing cluster.
//! - [`mesh`]: the local substrate's Istio data plane (istiod, Envoy, pods as processes).
//! - [`kube`]: apply, wait, rollback, RBAC checks and diagnostics against a cluster.
//! - [`scenario`]: scenario files, their checks, and the runner that emits events.
//! - [`report`]: the runner's events, the run report, and the reporters that write it.
//! - [`agent`]: the in-mesh client (`cdcheck agent`) and its attribution by sidecar counters.
//! - [`standin`]: the local mesh's pod process, a stand-in for each Online Boutique workload.

pub mod agent;
pub mod catalog;
pub mod kube;
pub mod manifests;
pub mod mesh;
pub mod names;
pub mod report;
pub mod scenario;
pub mod settings;
pub mod standin;
pub mod substrate;
pub mod traffic;
pub mod versions;

/// Installs the process-wide rustls crypto provider. Both ring and aws-lc-rs end
/// up linked, and rustls panics on the first TLS connection unless one is chosen.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// An error and its sources on one line (`a: b: c`), for logs and report entries.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
