//! `cdcheck render` as a user runs it: the documented flags work, bad input is named and prints no YAML.

use std::path::Path;
use std::process::{Command, Output};

fn cdcheck(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cdcheck"))
        .args(args)
        .output()
        .expect("run cdcheck")
}

fn render(args: &[&str]) -> Output {
    let mut all = vec!["render"];
    all.extend_from_slice(args);
    cdcheck(&all)
}

/// Bad input fails, names the offending value on stderr and writes nothing to stdout.
fn assert_refused(args: &[&str], named: &str) {
    let out = render(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} was accepted");
    assert!(out.stdout.is_empty(), "{args:?} wrote to stdout");
    assert!(
        stderr.contains(named),
        "{args:?}: stderr does not name {named:?}: {stderr}"
    );
}

fn kinds(yaml: &str) -> Vec<String> {
    yaml.lines()
        .filter_map(|l| l.strip_prefix("kind: "))
        .map(str::to_string)
        .collect()
}

#[test]
fn render_dev_prints_the_whole_environment() {
    let out = render(&["--env", "dev"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let yaml = String::from_utf8(out.stdout).unwrap();
    let kinds = kinds(&yaml);
    let n = |k: &str| kinds.iter().filter(|x| *x == k).count();
    assert_eq!(n("Deployment"), 12);
    assert_eq!(n("PodDisruptionBudget"), 10);
    assert_eq!(n("Namespace"), 1);
    assert_eq!(n("Role"), 1);
    assert_eq!(n("RoleBinding"), 1);
    assert_eq!(n("Secret"), 1);
    assert_eq!(n("Gateway"), 1);
    assert_eq!(n("VirtualService"), 2);
    assert_eq!(yaml.matches("replicas: 2").count(), 10);
    assert_eq!(yaml.matches("podAntiAffinity").count(), 10);
}

#[test]
fn render_output_parses_back_as_yaml_documents() {
    let out = render(&[
        "--env",
        "test",
        "--feature",
        "frontend=0.10.6-myfeature",
        "--session",
        "s1",
    ]);
    assert!(out.status.success());
    let yaml = String::from_utf8(out.stdout).unwrap();
    let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&yaml).expect("valid YAML");
    assert!(
        docs.iter()
            .all(|d| d["apiVersion"].is_string() && d["kind"].is_string())
    );
    assert!(
        docs.iter()
            .any(|d| d["metadata"]["name"] == "frontend-myfeature")
    );
}

#[test]
fn help_documents_every_option() {
    let out = cdcheck(&["render", "--help"]);
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--env",
        "--release",
        "--feature",
        "--strategy",
        "--replicas",
        "--tls-cert",
        "--tls-key",
        "--tls-host",
        "--session",
        "--rbac",
    ] {
        assert!(help.contains(flag), "help lacks {flag}");
    }
}

#[test]
fn unknown_service_is_refused() {
    assert_refused(&["--feature", "fronted=0.10.6-x"], "fronted");
}

#[test]
fn malformed_tag_is_refused() {
    assert_refused(&["--feature", "frontend=latest"], "latest");
}

#[test]
fn session_id_full_of_regex_metacharacters_is_refused() {
    assert_refused(
        &["--feature", "frontend=0.10.6-x", "--session", ".*|(a)"],
        ".*|(a)",
    );
}

#[test]
fn zero_replicas_are_refused() {
    assert_refused(&["--replicas", "0"], "replicas 0");
}

#[test]
fn invalid_environment_name_is_refused() {
    assert_refused(&["--env", "Dev_1"], "Dev_1");
}

#[test]
fn missing_certificate_file_is_refused() {
    assert_refused(
        &[
            "--tls-cert",
            "/nonexistent/cert.pem",
            "--tls-key",
            "/nonexistent/key.pem",
        ],
        "/nonexistent/cert.pem",
    );
}

fn write_pair(dir: &Path, name: &str, host: &str) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec![host.to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let cert_path = dir.join(format!("{name}.crt"));
    let key_path = dir.join(format!("{name}.key"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    (
        cert_path.to_string_lossy().into_owned(),
        key_path.to_string_lossy().into_owned(),
    )
}

#[test]
fn user_certificate_is_used_and_its_host_served() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = write_pair(dir.path(), "shop", "shop.example.org");
    let out = render(&["--tls-cert", &cert, "--tls-key", &key]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let yaml = String::from_utf8(out.stdout).unwrap();
    assert!(
        yaml.contains("- shop.example.org"),
        "frontend VirtualService host"
    );
}

#[test]
fn key_that_does_not_match_the_certificate_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, _) = write_pair(dir.path(), "a", "shop.example.org");
    let (_, other_key) = write_pair(dir.path(), "b", "shop.example.org");
    assert_refused(
        &["--tls-cert", &cert, "--tls-key", &other_key],
        "does not match",
    );
}

#[test]
fn certificate_that_does_not_cover_the_host_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = write_pair(dir.path(), "a", "shop.example.org");
    assert_refused(
        &[
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--tls-host",
            "other.example.org",
        ],
        "other.example.org",
    );
}

#[test]
fn file_without_a_certificate_is_refused_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let (_, key) = write_pair(dir.path(), "a", "shop.example.org");
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate").unwrap();
    let garbage = garbage.to_string_lossy().into_owned();
    assert_refused(
        &[
            "--tls-cert",
            &garbage,
            "--tls-key",
            &key,
            "--tls-host",
            "shop.example.org",
        ],
        &garbage,
    );
}

#[test]
fn unreadable_certificate_is_refused_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let (_, key) = write_pair(dir.path(), "a", "shop.example.org");
    // A directory cannot be read as a file, even by root.
    let path = dir.path().to_string_lossy().into_owned();
    assert_refused(
        &[
            "--tls-cert",
            &path,
            "--tls-key",
            &key,
            "--tls-host",
            "shop.example.org",
        ],
        &path,
    );
}

#[test]
fn expired_certificate_is_refused_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["shop.example.org".to_string()]).unwrap();
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    let cert = params.self_signed(&key).unwrap();
    let cert_path = dir.path().join("old.crt");
    let key_path = dir.path().join("old.key");
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    let cert_path = cert_path.to_string_lossy().into_owned();
    let key_path = key_path.to_string_lossy().into_owned();
    assert_refused(
        &["--tls-cert", &cert_path, "--tls-key", &key_path],
        "expired",
    );
}

#[test]
fn redis_is_reported_as_a_single_point_of_failure_without_polluting_the_yaml() {
    let out = render(&[]);
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("redis-cart is a known single point of failure"),
        "{stderr}"
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("single point"));
}
