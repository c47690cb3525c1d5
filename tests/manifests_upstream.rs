//! The catalog is faithful: with every pipeline option off, cdcheck renders
//! exactly what Online Boutique v0.10.6's `kubernetes-manifests.yaml` deploys,
//! object by object, so drift on either side (a changed port, env value, probe
//! period, resource, label, image...) fails here.
//!
//! Normalisation is deliberately narrow: it drops what serialisers disagree on
//! without meaning (nulls, empty lists, empty maps) and writes numeric resource
//! quantities as strings. It keeps list order (env order matters to `$(VAR)`
//! expansion), keeps empty strings, never converts ports between numbers and
//! names, and keeps `emptyDir: {}` (an empty map there chooses the volume type).

mod common_reference;

use std::collections::BTreeMap;
use std::fmt::Write as _;

use cdcheck::manifests::render_upstream;
use rstest::rstest;
use serde_json::{Value, json};

use common_reference::{UPSTREAM_MANIFESTS, reference_text, yaml_documents};

/// Keys whose value is meaningful even when it is an empty map: the map's
/// presence is the choice (a volume's type), not an absent setting.
const PRESENCE_SIGNIFICANT_KEYS: &[&str] = &["emptyDir"];

/// Maps of resource quantities (`cpu: 1` in YAML is the quantity `"1"`).
const QUANTITY_MAPS: &[&str] = &["requests", "limits"];

/// The object with nulls, empty lists and (except [`PRESENCE_SIGNIFICANT_KEYS`])
/// empty maps removed, and numeric quantities written as strings. `None` when
/// nothing is left.
fn normalise(value: &Value) -> Option<Value> {
    normalise_under(None, value)
}

fn normalise_under(key: Option<&str>, value: &Value) -> Option<Value> {
    match value {
        Value::Null => None,
        Value::Array(items) => {
            let items: Vec<Value> = items.iter().filter_map(normalise).collect();
            (!items.is_empty()).then_some(Value::Array(items))
        }
        Value::Object(map) => {
            let in_quantity_map = key.is_some_and(|k| QUANTITY_MAPS.contains(&k));
            let mut out = serde_json::Map::new();
            for (k, v) in map {
                let v = match v {
                    Value::Number(n) if in_quantity_map => Some(Value::String(n.to_string())),
                    _ => normalise_under(Some(k), v),
                };
                if let Some(v) = v {
                    out.insert(k.clone(), v);
                }
            }
            let keep_empty = key.is_some_and(|k| PRESENCE_SIGNIFICANT_KEYS.contains(&k));
            (!out.is_empty() || keep_empty).then_some(Value::Object(out))
        }
        scalar => Some(scalar.clone()),
    }
}

/// `kind/namespace/name`, the same key as `Object::key()`.
fn key_of(object: &Value) -> String {
    let field = |pointer: &str| {
        object
            .pointer(pointer)
            .and_then(Value::as_str)
            .unwrap_or("")
    };
    format!(
        "{}/{}/{}",
        field("/kind"),
        field("/metadata/namespace"),
        field("/metadata/name")
    )
}

/// One field that differs between the two sides.
#[derive(Debug, PartialEq)]
struct FieldDifference {
    path: String,
    upstream: Option<Value>,
    rendered: Option<Value>,
}

impl std::fmt::Display for FieldDifference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let show = |v: &Option<Value>| v.as_ref().map_or("<absent>".to_string(), Value::to_string);
        write!(
            f,
            "{}: upstream {} rendered {}",
            self.path,
            show(&self.upstream),
            show(&self.rendered)
        )
    }
}

/// Every leaf at which `upstream` and `rendered` differ, as JSON pointers.
fn field_differences(
    path: &str,
    upstream: Option<&Value>,
    rendered: Option<&Value>,
) -> Vec<FieldDifference> {
    match (upstream, rendered) {
        (Some(Value::Object(a)), Some(Value::Object(b))) => {
            let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            keys.into_iter()
                .flat_map(|k| field_differences(&format!("{path}/{k}"), a.get(k), b.get(k)))
                .collect()
        }
        (Some(Value::Array(a)), Some(Value::Array(b))) => (0..a.len().max(b.len()))
            .flat_map(|i| field_differences(&format!("{path}/{i}"), a.get(i), b.get(i)))
            .collect(),
        (a, b) if a == b => Vec::new(),
        (a, b) => vec![FieldDifference {
            path: path.to_string(),
            upstream: a.cloned(),
            rendered: b.cloned(),
        }],
    }
}

/// What a comparison of two sets of objects found.
#[derive(Debug, Default)]
struct Comparison {
    /// Keys upstream has and the rendering lacks.
    missing: Vec<String>,
    /// Keys the rendering has and upstream lacks.
    extra: Vec<String>,
    /// Keys that occur more than once on one side (`upstream:`/`rendered:` prefixed).
    duplicated: Vec<String>,
    /// Objects on both sides that differ after normalisation.
    differing: Vec<ObjectDifference>,
}

#[derive(Debug)]
struct ObjectDifference {
    key: String,
    upstream: Value,
    rendered: Value,
    fields: Vec<FieldDifference>,
}

impl Comparison {
    fn is_equal(&self) -> bool {
        self.missing.is_empty()
            && self.extra.is_empty()
            && self.duplicated.is_empty()
            && self.differing.is_empty()
    }

    fn differing_keys(&self) -> Vec<&str> {
        self.differing.iter().map(|d| d.key.as_str()).collect()
    }

    /// A report a reader can act on: which objects, which fields, and a diff per object.
    fn report(&self) -> String {
        let mut out = String::new();
        for key in &self.missing {
            let _ = writeln!(out, "MISSING from the rendering (upstream has it): {key}");
        }
        for key in &self.extra {
            let _ = writeln!(out, "EXTRA in the rendering (upstream lacks it): {key}");
        }
        for key in &self.duplicated {
            let _ = writeln!(out, "DUPLICATED key: {key}");
        }
        for difference in &self.differing {
            let _ = writeln!(out, "\nDIFFERS: {}", difference.key);
            for field in &difference.fields {
                let _ = writeln!(out, "  {field}");
            }
            let upstream = serde_json::to_string_pretty(&difference.upstream).unwrap();
            let rendered = serde_json::to_string_pretty(&difference.rendered).unwrap();
            let _ = writeln!(
                out,
                "  diff (< upstream / > rendered):\n{}",
                pretty_assertions::StrComparison::new(&upstream, &rendered)
            );
        }
        out
    }
}

/// Normalises and indexes both sides by `kind/namespace/name`, then compares
/// the key sets and every object present on both sides.
fn compare(upstream: &[Value], rendered: &[Value]) -> Comparison {
    let mut comparison = Comparison::default();
    let mut index = |side: &str, objects: &[Value]| {
        let mut by_key = BTreeMap::new();
        for object in objects {
            let normalised = normalise(object).unwrap_or(Value::Null);
            let key = key_of(&normalised);
            if by_key.insert(key.clone(), normalised).is_some() {
                comparison.duplicated.push(format!("{side}: {key}"));
            }
        }
        by_key
    };
    let upstream = index("upstream", upstream);
    let rendered = index("rendered", rendered);
    for (key, expected) in &upstream {
        match rendered.get(key) {
            None => comparison.missing.push(key.clone()),
            Some(actual) if actual != expected => comparison.differing.push(ObjectDifference {
                key: key.clone(),
                upstream: expected.clone(),
                rendered: actual.clone(),
                fields: field_differences("", Some(expected), Some(actual)),
            }),
            Some(_) => {}
        }
    }
    comparison.extra = rendered
        .keys()
        .filter(|k| !upstream.contains_key(*k))
        .cloned()
        .collect();
    comparison
}

fn rendered_objects() -> Vec<Value> {
    cdcheck::install_crypto_provider();
    render_upstream()
        .objects
        .iter()
        .map(|o| {
            o.to_json()
                .unwrap_or_else(|e| panic!("serialize {}: {e}", o.key()))
        })
        .collect()
}

#[test]
fn baseline_rendering_equals_upstream_object_by_object() {
    let Some(text) = reference_text(
        "baseline_rendering_equals_upstream_object_by_object",
        UPSTREAM_MANIFESTS,
    ) else {
        return;
    };
    let upstream = yaml_documents(UPSTREAM_MANIFESTS, &text);
    // 12 Deployments, 12 Services (frontend-external included, loadgenerator
    // has none), 11 ServiceAccounts (redis-cart has none): a parse that lost
    // documents must not make the comparison vacuous.
    let count = |kind: &str| upstream.iter().filter(|o| o["kind"] == kind).count();
    assert_eq!(
        (
            count("Deployment"),
            count("Service"),
            count("ServiceAccount"),
            upstream.len()
        ),
        (12, 12, 11, 35),
        "documents parsed from {UPSTREAM_MANIFESTS}"
    );

    let rendered = rendered_objects();
    let comparison = compare(&upstream, &rendered);
    assert!(
        comparison.is_equal(),
        "the baseline rendering differs from upstream {UPSTREAM_MANIFESTS}:\n{}",
        comparison.report()
    );
}

/// Sets (or with `None` removes) the value at `pointer` in the object `key`.
fn mutate(objects: &mut [Value], key: &str, pointer: &str, value: Option<Value>) {
    let object = objects
        .iter_mut()
        .find(|o| key_of(o) == key)
        .unwrap_or_else(|| panic!("no rendered object {key}"));
    let (parent, last) = pointer.rsplit_once('/').expect("a JSON pointer");
    let parent = object
        .pointer_mut(parent)
        .unwrap_or_else(|| panic!("{key} has no {parent}"));
    match (parent, value) {
        (Value::Object(map), Some(v)) => {
            assert!(
                map.insert(last.to_string(), v).is_some(),
                "{key} has no {pointer}"
            );
        }
        (Value::Object(map), None) => {
            assert!(map.remove(last).is_some(), "{key} has no {pointer}");
        }
        (Value::Array(items), Some(v)) => items[last.parse::<usize>().unwrap()] = v,
        (Value::Array(items), None) => {
            items.remove(last.parse::<usize>().unwrap());
        }
        (other, _) => panic!("{key}{pointer}: parent is not a map or list: {other}"),
    }
}

#[rstest]
#[case::service_target_port("Service//emailservice", "/spec/ports/0/targetPort", Some(json!(5000)))]
#[case::env_var_removed(
    "Deployment//checkoutservice",
    "/spec/template/spec/containers/0/env/0",
    None
)]
#[case::env_value("Deployment//frontend", "/spec/template/spec/containers/0/env/0/value", Some(json!("8081")))]
#[case::probe_period("Deployment//cartservice", "/spec/template/spec/containers/0/livenessProbe/periodSeconds", Some(json!(11)))]
#[case::resource_limit("Deployment//adservice", "/spec/template/spec/containers/0/resources/limits/memory", Some(json!("301Mi")))]
#[case::image("Deployment//paymentservice", "/spec/template/spec/containers/0/image", Some(json!("us-central1-docker.pkg.dev/online-boutique-ci/microservices-demo/paymentservice:v0.10.5")))]
#[case::label("Service//currencyservice", "/metadata/labels/app", Some(json!("currency")))]
#[case::port_number_becomes_name("Service//frontend", "/spec/ports/0/targetPort", Some(json!("8080")))]
#[case::empty_dir_volume_removed(
    "Deployment//redis-cart",
    "/spec/template/spec/volumes/0/emptyDir",
    None
)]
#[case::empty_env_value("Deployment//shippingservice", "/spec/template/spec/containers/0/env/0/value", Some(json!("")))]
fn comparison_catches_a_drifted_field(
    #[case] key: &str,
    #[case] pointer: &str,
    #[case] value: Option<Value>,
) {
    let rendered = rendered_objects();
    let baseline = compare(&rendered, &rendered);
    assert!(
        baseline.is_equal(),
        "a rendering differs from itself:\n{}",
        baseline.report()
    );

    let mut drifted = rendered.clone();
    mutate(&mut drifted, key, pointer, value);
    let comparison = compare(&rendered, &drifted);
    assert!(
        comparison.missing.is_empty() && comparison.extra.is_empty(),
        "{}",
        comparison.report()
    );
    assert_eq!(
        comparison.differing_keys(),
        vec![key],
        "exactly the drifted object is reported:\n{}",
        comparison.report()
    );
    let fields: Vec<&str> = comparison.differing[0]
        .fields
        .iter()
        .map(|f| f.path.as_str())
        .collect();
    // A removed list item shifts its successors, so the scope is the parent.
    let (scope, _) = pointer.rsplit_once('/').expect("a JSON pointer");
    assert!(
        !fields.is_empty() && fields.iter().all(|f| f.starts_with(scope)),
        "the reported fields {fields:?} are those under {scope}:\n{}",
        comparison.report()
    );
    let report = comparison.report();
    assert!(report.contains(key), "the report names {key}:\n{report}");
}

#[test]
fn comparison_reports_the_target_port_drift_with_both_values() {
    let rendered = rendered_objects();
    let mut drifted = rendered.clone();
    mutate(
        &mut drifted,
        "Service//emailservice",
        "/spec/ports/0/targetPort",
        Some(json!(5000)),
    );
    let comparison = compare(&rendered, &drifted);
    assert_eq!(
        comparison.differing[0].fields,
        vec![FieldDifference {
            path: "/spec/ports/0/targetPort".to_string(),
            upstream: Some(json!(8080)),
            rendered: Some(json!(5000)),
        }]
    );
}

#[test]
fn comparison_catches_a_missing_and_an_extra_object() {
    let rendered = rendered_objects();
    let mut drifted: Vec<Value> = rendered
        .iter()
        .filter(|o| key_of(o) != "ServiceAccount//adservice")
        .cloned()
        .collect();
    let mut renamed = drifted
        .iter()
        .find(|o| key_of(o) == "Service//frontend")
        .cloned()
        .expect("a frontend Service");
    renamed["metadata"]["name"] = json!("frontend-myfeature");
    drifted.push(renamed);
    let comparison = compare(&rendered, &drifted);
    assert_eq!(comparison.missing, vec!["ServiceAccount//adservice"]);
    assert_eq!(comparison.extra, vec!["Service//frontend-myfeature"]);
    assert!(comparison.differing.is_empty(), "{}", comparison.report());
}

#[test]
fn comparison_catches_a_duplicated_object() {
    let rendered = rendered_objects();
    let mut drifted = rendered.clone();
    drifted.push(rendered[0].clone());
    let comparison = compare(&rendered, &drifted);
    assert_eq!(
        comparison.duplicated,
        vec![format!("rendered: {}", key_of(&rendered[0]))]
    );
    assert!(!comparison.is_equal());
}

#[test]
fn normalisation_drops_only_meaningless_empties() {
    let object = json!({
        "kind": "Deployment",
        "metadata": {"name": "x", "annotations": {}, "namespace": null},
        "spec": {
            "volumes": [{"name": "data", "emptyDir": {}}],
            "env": [{"name": "EMPTY", "value": ""}],
            "args": [],
            "resources": {"requests": {"cpu": 1, "memory": "64Mi"}},
            "port": 8080,
            "targetPort": "http"
        }
    });
    assert_eq!(
        normalise(&object),
        Some(json!({
            "kind": "Deployment",
            "metadata": {"name": "x"},
            "spec": {
                "volumes": [{"name": "data", "emptyDir": {}}],
                "env": [{"name": "EMPTY", "value": ""}],
                "resources": {"requests": {"cpu": "1", "memory": "64Mi"}},
                "port": 8080,
                "targetPort": "http"
            }
        }))
    );
}
