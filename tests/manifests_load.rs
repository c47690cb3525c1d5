//! A pipeline's own manifests (`--manifests DIR`) load into a Bundle: what
//! `cdcheck render` prints loads back equal, every object keeps its file,
//! document and line, bad input is refused naming file, document, line and
//! field, objects outside the environment's namespace are reported, and no
//! input makes the loader panic.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use cdcheck::manifests::load::{self, LoadError, Loaded, Misplacement, Source};
use cdcheck::manifests::{self, Bundle, FeatureBranch, Object, Options, RbacMode, SessionId};
use cdcheck::manifests::{Strategy, TlsSource, tls};
use proptest::prelude::*;
use proptest::strategy::Strategy as _;

fn file() -> &'static Path {
    Path::new("deploy/app.yaml")
}

fn load_text(text: &str) -> Result<Vec<(Object, Source)>, LoadError> {
    load::load_str(file(), text)
}

fn by_key(objects: &[Object]) -> BTreeMap<String, &Object> {
    objects.iter().map(|o| (o.key(), o)).collect()
}

fn assert_same_objects(loaded: &[Object], rendered: &[Object]) {
    let (loaded, rendered) = (by_key(loaded), by_key(rendered));
    assert_eq!(
        loaded.keys().collect::<Vec<_>>(),
        rendered.keys().collect::<Vec<_>>()
    );
    for (key, object) in &rendered {
        assert!(loaded[key] == *object, "{key} differs after the round trip");
    }
}

fn rich_options() -> Options {
    let mut options = Options::for_env("test");
    options.strategy = Strategy::Bluegreen;
    options.rbac = RbacMode::Least;
    options.features = vec![
        FeatureBranch::parse("frontend=0.10.6-myfeature").unwrap(),
        FeatureBranch::parse("adservice=0.10.6-myfeature").unwrap(),
    ];
    options.sessions = vec![SessionId::parse("3f1c2a9e-0d1b-4c55-9a37-1b2c3d4e5f60").unwrap()];
    options
}

#[test]
fn a_rendered_bundle_loads_back_equal_in_order() {
    for options in [Options::for_env("dev"), rich_options()] {
        let bundle = manifests::render(&options).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("bundle.yaml"), bundle.to_yaml().unwrap()).unwrap();
        let loaded = load::load_dir(dir.path()).unwrap();
        assert_same_objects(&loaded.bundle.objects, &bundle.objects);
        assert_eq!(loaded.bundle, bundle, "order or content differs");
        // No object fell back to an untyped one: every rendered kind is typed.
        assert!(
            !loaded
                .bundle
                .objects
                .iter()
                .any(|o| matches!(o, Object::Other(_)))
        );
        // Sources count documents from 1, each rendered document starting after its `---`.
        let first = loaded.source_of(&bundle.objects[0]).unwrap();
        assert_eq!((first.document, first.line), (1, 2), "{first}");
        let second = loaded.source_of(&bundle.objects[1]).unwrap();
        assert_eq!(second.document, 2, "{second}");
    }
}

#[test]
fn files_are_read_recursively_in_path_order() {
    let bundle = manifests::render(&rich_options()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    // One object per file, nested by kind; a non-YAML file and a hidden directory are ignored.
    for (i, object) in bundle.objects.iter().enumerate() {
        let sub = dir.path().join(object.kind().to_lowercase());
        std::fs::create_dir_all(&sub).unwrap();
        let one = Bundle {
            objects: vec![object.clone()],
        };
        let ext = if i % 2 == 0 { "yaml" } else { "yml" };
        std::fs::write(sub.join(format!("{i:03}.{ext}")), one.to_yaml().unwrap()).unwrap();
    }
    std::fs::write(dir.path().join("README.md"), "not: [a manifest").unwrap();
    std::fs::create_dir(dir.path().join(".git")).unwrap();
    std::fs::write(dir.path().join(".git/config.yaml"), "not: [a manifest").unwrap();
    let loaded = load::load_dir(dir.path()).unwrap();
    assert_same_objects(&loaded.bundle.objects, &bundle.objects);
    let paths: Vec<&PathBuf> = loaded
        .bundle
        .objects
        .iter()
        .map(|o| &loaded.source_of(o).unwrap().file)
        .collect();
    let mut sorted = paths.clone();
    sorted.sort();
    assert_eq!(paths, sorted, "files are not loaded in path order");
}

fn write_pair(dir: &Path, host: &str) -> (PathBuf, PathBuf) {
    let mut params = rcgen::CertificateParams::new(vec![host.to_string()]).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, host);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    let (cert_path, key_path) = (dir.join("tls.crt"), dir.join("tls.key"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    (cert_path, key_path)
}

#[test]
fn what_cdcheck_render_prints_loads_back_equal_to_the_rendered_bundle() {
    let dir = tempfile::tempdir().unwrap();
    // A given certificate, so that the Secret is the same in both renderings.
    let (cert, key) = write_pair(dir.path(), "dev.boutique.test");
    let out = Command::new(env!("CARGO_BIN_EXE_cdcheck"))
        .args(["render", "--env", "dev", "--tls-cert"])
        .arg(&cert)
        .arg("--tls-key")
        .arg(&key)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let manifests_dir = dir.path().join("manifests");
    std::fs::create_dir(&manifests_dir).unwrap();
    std::fs::write(manifests_dir.join("dev.yaml"), &out.stdout).unwrap();
    let loaded = load::load_dir(&manifests_dir).unwrap();

    let mut options = Options::for_env("dev");
    options.tls = TlsSource::Files {
        pem: tls::PemPair {
            cert_pem: std::fs::read_to_string(&cert).unwrap(),
            key_pem: std::fs::read_to_string(&key).unwrap(),
        },
        cert,
        key,
    };
    let rendered = manifests::render(&options).unwrap();
    assert_same_objects(&loaded.bundle.objects, &rendered.objects);
    assert_eq!(loaded.bundle.objects.len(), rendered.objects.len());
}

const DEPLOYMENT: &str = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: web
        image: example/web:1.0
";

#[test]
fn invalid_yaml_names_file_document_line_and_column() {
    // Document 2 starts after the marker; its flow sequence is never closed.
    let text = format!("{DEPLOYMENT}---\n# comment\nkind: [Service\n");
    let broken_line = DEPLOYMENT.lines().count() as u64 + 3;
    let error = load_text(&text).unwrap_err();
    let LoadError::Yaml {
        document,
        line,
        column,
        ..
    } = &error
    else {
        panic!("expected a YAML error, got {error}");
    };
    assert_eq!(*document, 2, "{error}");
    // The parser notices the missing `]` on that line or at the end of the document.
    assert!(
        (broken_line..=broken_line + 1).contains(line),
        "line {line} is not that of the broken sequence ({broken_line}): {error}"
    );
    let message = error.to_string();
    assert!(message.contains("deploy/app.yaml"), "{message}");
    assert!(message.contains("document 2"), "{message}");
    assert!(
        message.contains(&format!("line {line}:{column}")),
        "{message}"
    );
    assert!(message.contains("not valid YAML"), "{message}");
}

#[test]
fn a_syntax_error_on_a_known_line_is_reported_on_that_line() {
    // Line 4 has a tab-free but broken mapping: `key: value: other` is not YAML.
    let text = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\ndata: {a: b\n";
    let error = load_text(text).unwrap_err();
    let message = error.to_string();
    assert!(message.contains("document 1"), "{message}");
    let LoadError::Yaml { line, .. } = error else {
        panic!("{message}")
    };
    assert!((4..=5).contains(&line), "{message}");
}

#[test]
fn a_document_that_is_not_a_kubernetes_object_names_the_missing_field() {
    let cases = [
        ("kind: ConfigMap\nmetadata: {name: a}\n", "apiVersion"),
        ("apiVersion: v1\nmetadata: {name: a}\n", "kind"),
        ("apiVersion: v1\nkind: ConfigMap\n", "metadata"),
        (
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {labels: {a: b}}\n",
            "metadata.name",
        ),
        (
            "- just\n- a list\n",
            "apiVersion, kind and metadata (it is not a mapping)",
        ),
    ];
    for (document, missing) in cases {
        // The offending document is the third, after a comment-only one; its content starts on line 9.
        let text = format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: dev}}\n---\n# nothing here\n---\n\n# note\n{document}"
        );
        let error = load_text(&text).unwrap_err();
        let message = error.to_string();
        let LoadError::NotAnObject { at, .. } = &error else {
            panic!("{missing}: expected NotAnObject, got {message}");
        };
        assert_eq!((at.document, at.line), (3, 9), "{missing}: {message}");
        assert!(
            message.contains("deploy/app.yaml, document 3, line 9"),
            "{message}"
        );
        assert!(message.contains(&format!("no {missing}")), "{message}");
    }
}

#[test]
fn a_known_kind_that_does_not_fit_its_type_names_the_field_path_and_its_line() {
    let broken = DEPLOYMENT.replace("replicas: 2", "replicas: two");
    let text = format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: dev}}\n---\n{broken}");
    let error = load_text(&text).unwrap_err();
    let message = error.to_string();
    let LoadError::InvalidObject {
        at,
        kind,
        path,
        field_line,
        ..
    } = &error
    else {
        panic!("expected InvalidObject, got {message}");
    };
    assert_eq!((at.document, at.line), (2, 5), "{message}");
    assert_eq!(kind, "Deployment");
    assert_eq!(path, "spec.replicas");
    assert_eq!(*field_line, Some(10), "{message}");
    for part in [
        "deploy/app.yaml, document 2, line 5",
        "as Deployment",
        "field spec.replicas (line 10)",
        "invalid type",
    ] {
        assert!(message.contains(part), "{part:?} not in {message}");
    }
    // A nested field, in a list.
    let broken = DEPLOYMENT.replace(
        "image: example/web:1.0",
        "image: example/web:1.0\n        ports: [{containerPort: http}]",
    );
    let message = load_text(&broken).unwrap_err().to_string();
    assert!(
        message.contains("field spec.template.spec.containers[0].ports[0].containerPort (line 16)"),
        "{message}"
    );
}

#[test]
fn a_list_document_is_expanded_and_other_kinds_are_kept_whole() {
    let text = "\
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: ConfigMap
  metadata: {name: settings}
  data: {a: b}
- apiVersion: autoscaling/v2
  kind: HorizontalPodAutoscaler
  metadata: {name: web}
  spec:
    scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: web}
    minReplicas: 2
    maxReplicas: 5
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: web, namespace: dev}
spec:
  host: web
  trafficPolicy: {tls: {mode: ISTIO_MUTUAL}}
";
    let objects = load_text(text).unwrap();
    let keys: Vec<String> = objects.iter().map(|(o, _)| o.key()).collect();
    assert_eq!(
        keys,
        [
            "ConfigMap//settings",
            "HorizontalPodAutoscaler//web",
            "DestinationRule/dev/web"
        ]
    );
    assert!(matches!(objects[0].0, Object::ConfigMap(_)));
    assert_eq!(objects[1].1.item, Some(1));
    assert_eq!(
        objects[1].1.to_string(),
        "deploy/app.yaml, document 1, line 1, items[1]"
    );
    let Object::Other(hpa) = &objects[1].0 else {
        panic!("HPA should be kept as Other")
    };
    assert_eq!(hpa.data["spec"]["maxReplicas"], 5);
    let Object::Other(rule) = &objects[2].0 else {
        panic!("DestinationRule should be kept as Other")
    };
    assert_eq!(objects[2].0.gvk().group, "networking.istio.io");
    // Written back, nothing is lost.
    let json = objects[2].0.to_json().unwrap();
    assert_eq!(json["spec"]["trafficPolicy"]["tls"]["mode"], "ISTIO_MUTUAL");
    assert_eq!(json["apiVersion"], "networking.istio.io/v1");
    assert_eq!(rule.metadata.namespace.as_deref(), Some("dev"));
    assert_eq!((objects[2].1.document, objects[2].1.line), (2, 16));
}

#[test]
fn an_istio_object_the_typed_subset_cannot_hold_stays_whole() {
    let typed = "\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web}
spec:
  hosts: [web]
  http:
  - name: default
    route:
    - destination: {host: web}
";
    let objects = load_text(typed).unwrap();
    assert!(matches!(objects[0].0, Object::VirtualService(_)));
    // A timeout (and an unnamed route) are not in the typed subset: kept as written.
    let richer = typed.replace("  - name: default\n", "  - timeout: 5s\n");
    let objects = load_text(&richer).unwrap();
    let Object::Other(vs) = &objects[0].0 else {
        panic!("a VirtualService with a timeout was typed, losing it")
    };
    assert_eq!(vs.data["spec"]["http"][0]["timeout"], "5s");
    assert_eq!(objects[0].0.kind(), "VirtualService");
}

#[test]
fn the_same_object_twice_is_refused_naming_both_places() {
    let dir = tempfile::tempdir().unwrap();
    let cm = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n";
    std::fs::write(dir.path().join("a.yaml"), cm).unwrap();
    std::fs::write(dir.path().join("b.yaml"), format!("---\n{cm}")).unwrap();
    let message = load::load_dir(dir.path()).unwrap_err().to_string();
    assert!(message.contains("ConfigMap//a"), "{message}");
    assert!(message.contains("a.yaml, document 1, line 1"), "{message}");
    assert!(message.contains("b.yaml, document 1, line 2"), "{message}");
}

#[test]
fn a_directory_without_manifests_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("notes.txt"), "kind: ConfigMap").unwrap();
    let error = load::load_dir(dir.path()).unwrap_err();
    assert!(matches!(error, LoadError::NoManifests { .. }), "{error}");
    let missing = load::load_dir(&dir.path().join("absent")).unwrap_err();
    assert!(matches!(missing, LoadError::ReadDir { .. }), "{missing}");
    assert!(missing.to_string().contains("absent"), "{missing}");
}

#[test]
fn empty_documents_are_skipped_but_counted() {
    let text =
        "---\n---\n# nothing\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n---\n~\n";
    let objects = load_text(text).unwrap();
    assert_eq!(objects.len(), 1);
    assert_eq!((objects[0].1.document, objects[0].1.line), (3, 5));
}

fn loaded_from(text: &str) -> Loaded {
    let mut loaded = Loaded::default();
    for (object, source) in load_text(text).unwrap() {
        loaded.sources.insert(object.key(), source);
        loaded.bundle.objects.push(object);
    }
    loaded
}

#[test]
fn objects_outside_the_environment_are_reported_and_not_deployed() {
    let text = "\
apiVersion: v1
kind: Namespace
metadata: {name: dev}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: no-namespace}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: own, namespace: dev}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: elsewhere, namespace: test}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: ingress, namespace: istio-system}
spec: {selector: {istio: ingressgateway}, servers: []}
---
apiVersion: v1
kind: Secret
metadata: {name: cert, namespace: istio-system}
type: kubernetes.io/tls
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: sneaky, namespace: istio-system}
spec: {hosts: [x], http: []}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: deployer-admin}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: cluster-admin}
subjects: [{kind: ServiceAccount, name: dev-deployer, namespace: dev}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: reader}
rules: []
---
apiVersion: v1
kind: Namespace
metadata: {name: prod}
---
apiVersion: scheduling.k8s.io/v1
kind: PriorityClass
metadata: {name: high}
value: 1000
";
    let mut loaded = loaded_from(text);
    let misplaced = load::place_in_namespace(&mut loaded, "dev").unwrap();
    let kept: Vec<String> = loaded.bundle.objects.iter().map(Object::key).collect();
    assert_eq!(
        kept,
        [
            "Namespace//dev",
            "ConfigMap/dev/no-namespace",
            "ConfigMap/dev/own",
            "Gateway/istio-system/ingress",
            "Secret/istio-system/cert"
        ]
    );
    // The defaulted object keeps its source under its new key.
    let defaulted = loaded.bundle.find("ConfigMap", "no-namespace").unwrap();
    assert_eq!(loaded.source_of(defaulted).unwrap().line, 5);
    let reported: Vec<(String, Misplacement)> = misplaced
        .iter()
        .map(|m| (m.object.key(), m.reason.clone()))
        .collect();
    let other = |ns: &str| Misplacement::OtherNamespace {
        namespace: ns.to_string(),
    };
    assert_eq!(
        reported,
        [
            ("ConfigMap/test/elsewhere".to_string(), other("test")),
            (
                "VirtualService/istio-system/sneaky".to_string(),
                other("istio-system")
            ),
            (
                "ClusterRoleBinding//deployer-admin".to_string(),
                Misplacement::ClusterRbac
            ),
            ("ClusterRole//reader".to_string(), Misplacement::ClusterRbac),
            ("Namespace//prod".to_string(), other("prod")),
            (
                "PriorityClass//high".to_string(),
                Misplacement::ClusterScoped
            ),
        ]
    );
    let binding = misplaced[2].to_string();
    assert_eq!(
        binding,
        "ClusterRoleBinding//deployer-admin (deploy/app.yaml, document 8, line 32): \
cluster-scoped RBAC, reaching beyond the environment's namespace dev"
    );
}

#[test]
fn defaulting_the_namespace_can_reveal_a_duplicate() {
    let text = "\
apiVersion: v1
kind: ConfigMap
metadata: {name: a}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: a, namespace: dev}
";
    let mut loaded = loaded_from(text);
    let error = load::place_in_namespace(&mut loaded, "dev").unwrap_err();
    assert!(matches!(error, LoadError::Duplicate { .. }), "{error}");
    assert!(error.to_string().contains("ConfigMap/dev/a"), "{error}");
}

/// Small edits of a valid stream: what a hand-edited or half-templated file looks like.
#[derive(Clone, Debug)]
enum Mutation {
    Delete(usize, usize),
    Insert(usize, String),
    Truncate(usize),
    DuplicateLine(usize),
    SwapLines(usize, usize),
}

fn apply(text: &str, mutation: &Mutation) -> String {
    let at = |i: usize| {
        let mut i = i % (text.len() + 1);
        while !text.is_char_boundary(i) {
            i -= 1;
        }
        i
    };
    match mutation {
        Mutation::Delete(start, len) => {
            let (start, end) = (at(*start), at(start + len));
            let (start, end) = (start.min(end), start.max(end));
            format!("{}{}", &text[..start], &text[end..])
        }
        Mutation::Insert(i, s) => format!("{}{s}{}", &text[..at(*i)], &text[at(*i)..]),
        Mutation::Truncate(i) => text[..at(*i)].to_string(),
        Mutation::DuplicateLine(i) => {
            let mut lines: Vec<&str> = text.lines().collect();
            if !lines.is_empty() {
                let i = i % lines.len();
                lines.insert(i, lines[i]);
            }
            lines.join("\n")
        }
        Mutation::SwapLines(a, b) => {
            let mut lines: Vec<&str> = text.lines().collect();
            if !lines.is_empty() {
                let n = lines.len();
                lines.swap(a % n, b % n);
            }
            lines.join("\n")
        }
    }
}

fn mutation() -> impl proptest::strategy::Strategy<Value = Mutation> {
    let yamlish = prop::sample::select(vec![
        "---",
        "...",
        ":",
        "- ",
        "  ",
        "\t",
        "{",
        "}",
        "[",
        "]",
        "&a ",
        "*a",
        "<<: *a",
        "!!binary ",
        "|",
        ">",
        "'",
        "\"",
        "#",
        "%YAML 1.2\n",
        "\n",
        "kind: List\n",
        "items: 3\n",
        "\u{feff}",
        "é",
        "kind: ",
        "apiVersion: v1\n",
        "metadata: {name: x}\n",
    ])
    .prop_map(str::to_string);
    prop_oneof![
        (any::<usize>(), 0..40usize).prop_map(|(s, l)| Mutation::Delete(s, l)),
        (any::<usize>(), yamlish).prop_map(|(i, s)| Mutation::Insert(i, s)),
        (any::<usize>(), "\\PC{0,12}").prop_map(|(i, s)| Mutation::Insert(i, s)),
        any::<usize>().prop_map(Mutation::Truncate),
        any::<usize>().prop_map(Mutation::DuplicateLine),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Mutation::SwapLines(a, b)),
    ]
}

fn reference_yaml() -> &'static str {
    static YAML: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    YAML.get_or_init(|| {
        let mut options = rich_options();
        options.loadgenerator = false;
        let mut yaml = manifests::render(&options).unwrap().to_yaml().unwrap();
        yaml.push_str(
            "---\napiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: ConfigMap\n  metadata: {name: listed}\n",
        );
        yaml
    })
}

/// Any outcome but a panic: an error must still name the file.
fn assert_no_panic_and_named_errors(text: &str) {
    if let Err(error) = load_text(text) {
        let message = error.to_string();
        assert!(message.contains("deploy/app.yaml"), "{message}");
    }
    let mut loaded = Loaded::default();
    if let Ok(objects) = load_text(text) {
        for (object, source) in objects {
            loaded.sources.insert(object.key(), source);
            loaded.bundle.objects.push(object);
        }
        let _ = load::place_in_namespace(&mut loaded, "dev");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn random_text_never_panics(text in "\\PC{0,400}") {
        assert_no_panic_and_named_errors(&text);
    }

    #[test]
    fn random_yaml_shaped_text_never_panics(
        parts in prop::collection::vec(prop::sample::select(vec![
            "---\n", "apiVersion: v1\n", "kind: ConfigMap\n", "kind: List\n", "items:\n", "- ",
            "metadata:\n", "  name: a\n", "  namespace: b\n", "data: {a: 1}\n", "  ", "[", "]",
            "{", "}", ": ", "&x ", "*x\n", "<<: *x\n", "null\n", "~\n", "...\n", "# c\n",
            "kind: Deployment\napiVersion: apps/v1\n", "spec: {replicas: x}\n",
        ]), 0..40)
    ) {
        assert_no_panic_and_named_errors(&parts.concat());
    }

    #[test]
    fn mutated_rendered_manifests_never_panic(mutations in prop::collection::vec(mutation(), 1..4)) {
        let text = mutations
            .iter()
            .fold(reference_yaml().to_string(), |text, m| apply(&text, m));
        assert_no_panic_and_named_errors(&text);
    }
}

/// A pipeline's output as one file, or on standard input, loads as a directory holding it.
#[test]
fn one_file_and_standard_input_load_like_a_directory_of_them() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/pipeline/current");
    let file = dir.join("20-workloads.yaml");
    let from_file = load::load_path(&file).expect("load one file");
    let only = tempfile::tempdir().unwrap();
    std::fs::copy(&file, only.path().join("20-workloads.yaml")).unwrap();
    let from_dir = load::load_path(only.path()).expect("load a directory of it");
    assert_eq!(from_file.bundle, from_dir.bundle);
    assert!(!from_file.bundle.objects.is_empty());
    let source = from_file.source_of(&from_file.bundle.objects[0]).unwrap();
    assert!(source.to_string().contains("20-workloads.yaml"), "{source}");
}

/// `cdcheck run --manifests - ARGS` with `input` on standard input, aimed at a
/// cluster it cannot reach (a kubeconfig that does not exist) and at state and report
/// directories of its own under the returned directory: were the input accepted, the
/// run would fail at provisioning without touching anything of this machine.
fn run_on_stdin(input: &str, args: &[&str]) -> (Option<i32>, String, tempfile::TempDir) {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_cdcheck"))
        .args(["run", "--manifests", "-"])
        .args(args)
        .args(["--substrate", "existing", "--kubeconfig"])
        .arg(dir.path().join("no-kubeconfig"))
        .arg("--report-dir")
        .arg(dir.path().join("reports"))
        .env("CDCHECK_STATE_DIR", dir.path().join("state"))
        .env("CDCHECK_MESH_STATE_DIR", dir.path().join("mesh-state"))
        .env("CDCHECK_KIND_STATE_DIR", dir.path().join("kind-state"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run cdcheck");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.code(), stderr, dir)
}

/// Bad input is refused before anything is provisioned, written or reported.
fn assert_nothing_changed(dir: &tempfile::TempDir) {
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "the refused run left {left:?}");
}

/// Two documents on standard input, the second a Deployment (from its line 6).
const TWO_DOCUMENTS: &str = "apiVersion: v1
kind: ConfigMap
metadata:
  name: a
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: REPLICAS
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: web, image: web:1}]
";

#[test]
fn bad_yaml_on_standard_input_is_refused_naming_stdin_and_the_line() {
    let input = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\n---\nkind: [unclosed\n";
    let (code, stderr, dir) = run_on_stdin(input, &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("<stdin>, document 2, line 6"), "{stderr}");
    assert_nothing_changed(&dir);
}

#[test]
fn a_bad_field_on_standard_input_is_refused_naming_stdin_the_lines_and_the_field() {
    let (code, stderr, dir) = run_on_stdin(&TWO_DOCUMENTS.replace("REPLICAS", "two"), &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains(
            "read <stdin>, document 2, line 6 as Deployment: field spec.replicas (line 11)"
        ),
        "{stderr}"
    );
    assert_nothing_changed(&dir);
}

#[test]
fn empty_standard_input_is_refused_naming_it() {
    // What `helm template ... | cdcheck run --manifests -` hands over when helm failed.
    for input in ["", "---\n# nothing rendered\n---\n"] {
        let (code, stderr, dir) = run_on_stdin(input, &[]);
        assert_eq!(code, Some(2), "{input:?}: {stderr}");
        assert!(
            stderr.contains("find a Kubernetes object in <stdin>: it holds none"),
            "{input:?}: {stderr}"
        );
        assert_nothing_changed(&dir);
    }
}

#[test]
fn a_file_or_a_directory_holding_no_object_is_refused_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("out.yaml");
    std::fs::write(&file, "# helm printed nothing\n---\n").unwrap();
    for input in [file.as_path(), dir.path()] {
        let error = load::load_path(input).unwrap_err();
        assert!(
            matches!(&error, LoadError::NoObjects { input: i } if i == input),
            "{error}"
        );
        assert!(
            error.to_string().contains(&input.display().to_string()),
            "{error}"
        );
    }
}

#[test]
fn standard_input_given_twice_is_refused() {
    let (code, stderr, dir) = run_on_stdin("", &["--feature-manifests", "-"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("standard input (-) can be given once"),
        "{stderr}"
    );
    assert_nothing_changed(&dir);
}
