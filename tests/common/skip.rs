//! The one "skip or fail" of the test suite: a test that cannot run fails when
//! `CI` is set, and otherwise says so where `cargo test` shows it and records it
//! in a ledger that `scripts/test-summary.sh` prints after the run.
//!
//! Standalone (std only) so that helper modules outside `tests/common/` can
//! include it with `#[path = "../common/skip.rs"] mod skip;`.
#![allow(dead_code)]

use std::io::Write;
use std::path::PathBuf;

/// The ledger of skipped tests: `$CDCHECK_SKIP_LEDGER`, else
/// `skipped-tests.tsv` in cargo's per-target temporary directory.
pub fn ledger_path() -> PathBuf {
    match std::env::var_os("CDCHECK_SKIP_LEDGER").filter(|v| !v.is_empty()) {
        Some(path) => PathBuf::from(path),
        None => PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("skipped-tests.tsv"),
    }
}

/// The running test's name: libtest names each test's thread after it.
fn current_test() -> String {
    match std::thread::current().name() {
        Some(name) if name != "main" => name.to_string(),
        _ => "(test on the main thread)".to_string(),
    }
}

fn binary() -> String {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().to_string()))
        .map(|stem| match stem.rsplit_once('-') {
            Some((name, hash)) if hash.chars().all(|c| c.is_ascii_hexdigit()) => name.to_string(),
            _ => stem,
        })
        .unwrap_or_default()
}

/// Fails the test when `CI` is set (a CI run must never pass a test it did not
/// run); otherwise writes `SKIPPED <binary>::<test>: <reason>` to the real
/// stderr (libtest captures only the print macros, so the line shows in
/// `cargo test`'s output) and appends it to the ledger. The caller returns.
pub fn skip_or_fail(reason: &str) {
    let test = format!("{}::{}", binary(), current_test());
    if std::env::var_os("CI").is_some() {
        panic!("{test} cannot run (CI is set, so this fails): {reason}");
    }
    let line = format!("SKIPPED {test}: {reason} (set CI to make this a failure)\n");
    let _ = std::io::stderr().write_all(line.as_bytes());
    let path = ledger_path();
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let entry = format!("{test}\t{}\n", reason.replace(['\t', '\n'], " "));
    // One write per line in append mode, so concurrent tests do not interleave.
    if let Ok(mut file) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
    {
        let _ = file.write_all(entry.as_bytes());
    }
}
