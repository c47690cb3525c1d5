//! Locating and parsing the read-only reference files in `../shared/reference/`.
//!
//! The files sit beside the clone (locally and in CI). When one is missing the
//! test that needs it goes through the suite's one skip-or-fail
//! (`tests/common/skip.rs`): it fails under `CI`, and otherwise is reported as
//! skipped where `cargo test` shows it and in the ledger of what did not run.

#![allow(dead_code)]

use std::path::PathBuf;

use serde_json::Value;

#[path = "../common/skip.rs"]
pub mod skip;

/// Online Boutique's `release/kubernetes-manifests.yaml` at v0.10.6.
pub const UPSTREAM_MANIFESTS: &str = "online-boutique-v0.10.6-kubernetes-manifests.yaml";
/// Istio 1.30.3's `manifests/charts/base/files/crd-all.gen.yaml`.
pub const ISTIO_CRDS: &str = "istio-1.30.3-crd-all.gen.yaml";

/// `<CARGO_MANIFEST_DIR>/../shared/reference/<file>`.
pub fn reference_path(file: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/reference")).join(file)
}

/// The text of a reference file, or `None` after `skip_or_fail` (which panics
/// under `CI`) when it is absent or unreadable.
pub fn reference_text(test: &str, file: &str) -> Option<String> {
    text_beside_clone(test, &reference_path(file), "../shared/reference")
}

/// The text of a file that `shared/` beside the clone holds, or `None` after
/// `skip_or_fail` (which panics under `CI`).
fn text_beside_clone(test: &str, path: &std::path::Path, expected_in: &str) -> Option<String> {
    match std::fs::read_to_string(path) {
        Ok(text) => Some(text),
        Err(error) => {
            let reason = format!(
                "{test}: {} is not readable ({error}); it is expected in {expected_in} beside the clone",
                path.display()
            );
            skip::skip_or_fail(&reason);
            None
        }
    }
}

/// `<CARGO_MANIFEST_DIR>/../shared/boutique-src/<path>`: Online Boutique v0.10.6's sources
/// (its PROVENANCE.md), reference data beside the clone like `shared/reference`.
pub fn boutique_src_path(path: &str) -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/boutique-src"
    ))
    .join(path)
}

/// The text of a file of upstream's sources, or `None` after `skip_or_fail` (which panics
/// under `CI`) when it is absent or unreadable.
pub fn boutique_src_text(test: &str, path: &str) -> Option<String> {
    text_beside_clone(test, &boutique_src_path(path), "../shared/boutique-src")
}

/// Every non-empty document of a multi-document YAML stream, as JSON values.
/// Documents that are empty or hold only comments are skipped.
pub fn yaml_documents(file: &str, text: &str) -> Vec<Value> {
    let documents: Vec<Value> = serde_saphyr::from_multiple(text)
        .unwrap_or_else(|error| panic!("parse {file} as multi-document YAML: {error}"));
    documents.into_iter().filter(|d| !d.is_null()).collect()
}
