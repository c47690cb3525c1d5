//! Every rendered Istio object is valid under Istio 1.30.3's own CRD schema,
//! and keeps every field it sets.
//!
//! Two checks, because the API server does two things with a custom resource:
//! it *rejects* what violates the OpenAPI schema (types, enums, `oneOf`,
//! required fields: checked with `jsonschema`, draft 4 as OpenAPI v3 is), and
//! it silently *prunes* fields the schema does not declare (checked by walking
//! the instance against `properties`/`items`/`additionalProperties`). A
//! misspelled field would pass the first check and vanish on apply.
//!
//! Not covered: the CEL rules (`x-kubernetes-validations`, only on durations
//! the pipeline does not set) and string formats (`int32`, `byte`...).

mod common_reference;

use cdcheck::manifests::{FeatureBranch, Object, Options, RbacMode, SessionId, Strategy, render};
use rstest::rstest;
use serde_json::{Value, json};

use common_reference::{ISTIO_CRDS, reference_text, yaml_documents};

const GATEWAY_CRD: &str = "gateways.networking.istio.io";
const VIRTUAL_SERVICE_CRD: &str = "virtualservices.networking.istio.io";
/// The version cdcheck renders (`networking.istio.io/v1`).
const VERSION: &str = "v1";

/// Fields the API server manages on every object whatever the schema says.
const IMPLICIT_ROOT_FIELDS: &[&str] = &["apiVersion", "kind", "metadata"];

/// A CRD version's `openAPIV3Schema` and a validator built from it.
struct CrdSchema {
    crd: String,
    schema: Value,
    validator: jsonschema::Validator,
}

impl CrdSchema {
    fn load(crds: &[Value], crd: &str) -> Self {
        let definition = crds
            .iter()
            .find(|d| d["kind"] == "CustomResourceDefinition" && d["metadata"]["name"] == crd)
            .unwrap_or_else(|| panic!("{ISTIO_CRDS} has no CustomResourceDefinition {crd}"));
        let version = definition["spec"]["versions"]
            .as_array()
            .and_then(|vs| vs.iter().find(|v| v["name"] == VERSION))
            .unwrap_or_else(|| panic!("{crd} has no version {VERSION}"));
        assert_eq!(version["served"], json!(true), "{crd} {VERSION} is served");
        let schema = version["schema"]["openAPIV3Schema"].clone();
        assert!(schema.is_object(), "{crd} {VERSION} has an openAPIV3Schema");
        let validator = jsonschema::options()
            .with_draft(jsonschema::Draft::Draft4)
            .build(&without_kubernetes_extensions(&schema))
            .unwrap_or_else(|e| panic!("compile the schema of {crd} {VERSION}: {e}"));
        Self {
            crd: crd.to_string(),
            schema,
            validator,
        }
    }

    /// The schema violations, as `<instance path>: <message>`.
    fn violations(&self, instance: &Value) -> Vec<String> {
        self.validator
            .iter_errors(instance)
            .map(|e| format!("{}: {e}", e.instance_path()))
            .collect()
    }

    /// Paths of the fields the API server would prune.
    fn pruned(&self, instance: &Value) -> Vec<String> {
        let mut pruned = Vec::new();
        let Value::Object(root) = instance else {
            return vec!["<root is not an object>".to_string()];
        };
        for (key, value) in root {
            if IMPLICIT_ROOT_FIELDS.contains(&key.as_str()) {
                continue;
            }
            let path = format!("/{key}");
            match self.schema.pointer(&format!("/properties/{key}")) {
                Some(schema) => pruned_fields(schema, value, &path, &mut pruned),
                None => pruned.push(path),
            }
        }
        pruned
    }

    /// Both checks; panics with every problem and the object.
    fn assert_accepts(&self, what: &str, instance: &Value) {
        let violations = self.violations(instance);
        let pruned = self.pruned(instance);
        assert!(
            violations.is_empty() && pruned.is_empty(),
            "{what} under {} {VERSION}:\n  schema violations: {violations:#?}\n  \
             fields the API server would prune: {pruned:#?}\n  object: {}",
            self.crd,
            serde_json::to_string_pretty(instance).unwrap()
        );
    }
}

/// The schema without `x-kubernetes-*` keys, which are not JSON Schema.
fn without_kubernetes_extensions(schema: &Value) -> Value {
    match schema {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(k, _)| !k.starts_with("x-kubernetes-"))
                .map(|(k, v)| {
                    // Under `properties` the keys are field names, not keywords.
                    let v = if k == "properties" {
                        Value::Object(
                            v.as_object()
                                .into_iter()
                                .flatten()
                                .map(|(name, s)| (name.clone(), without_kubernetes_extensions(s)))
                                .collect(),
                        )
                    } else {
                        without_kubernetes_extensions(v)
                    };
                    (k.clone(), v)
                })
                .collect(),
        ),
        Value::Array(items) => {
            Value::Array(items.iter().map(without_kubernetes_extensions).collect())
        }
        other => other.clone(),
    }
}

/// Structural pruning as the API server does it: an object keeps a key only
/// when its schema declares it in `properties`, or has `additionalProperties`,
/// or `x-kubernetes-preserve-unknown-fields: true`.
fn pruned_fields(schema: &Value, instance: &Value, path: &str, pruned: &mut Vec<String>) {
    if schema["x-kubernetes-preserve-unknown-fields"] == json!(true) {
        return;
    }
    match instance {
        Value::Object(map) => {
            let properties = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties");
            for (key, value) in map {
                let child = format!("{path}/{key}");
                match (properties.and_then(|p| p.get(key)), additional) {
                    (Some(declared), _) => pruned_fields(declared, value, &child, pruned),
                    (None, Some(Value::Bool(true))) => {}
                    (None, Some(additional @ Value::Object(_))) => {
                        pruned_fields(additional, value, &child, pruned)
                    }
                    (None, _) => pruned.push(child),
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    pruned_fields(item_schema, item, &format!("{path}/{i}"), pruned);
                }
            }
        }
        _ => {}
    }
}

/// Both CRD schemas, or `None` (reason on stderr) when the reference is absent outside CI.
fn schemas(test: &str) -> Option<(CrdSchema, CrdSchema)> {
    let text = reference_text(test, ISTIO_CRDS)?;
    let crds = yaml_documents(ISTIO_CRDS, &text);
    Some((
        CrdSchema::load(&crds, GATEWAY_CRD),
        CrdSchema::load(&crds, VIRTUAL_SERVICE_CRD),
    ))
}

fn options(case: &str) -> Options {
    let mut options = Options::for_env("dev");
    match case {
        "default" => {}
        "features_and_sessions" => {
            options.features = vec![
                FeatureBranch::new("frontend", "0.10.6-myfeature").unwrap(),
                FeatureBranch::new("adservice", "0.10.6-myfeature").unwrap(),
            ];
            options.sessions = vec![
                SessionId::parse("abc").unwrap(),
                SessionId::parse("0b6c4d0e-7f1a-4c53-9d8e-2a1f3e5b7c90").unwrap(),
            ];
        }
        "bluegreen" => options.strategy = Strategy::Bluegreen,
        "least_rbac" => options.rbac = RbacMode::Least,
        other => panic!("unknown case {other}"),
    }
    options
}

/// Objects as `(key, JSON)` pairs.
type Keyed = Vec<(String, Value)>;

/// The Gateways and the VirtualServices of one render, as JSON.
fn istio_objects(case: &str) -> (Keyed, Keyed) {
    cdcheck::install_crypto_provider();
    let bundle = render(&options(case)).unwrap_or_else(|e| panic!("render {case}: {e}"));
    let json = |o: &Object| (o.key(), o.to_json().unwrap_or_else(|e| panic!("{e}")));
    let gateways = bundle
        .objects
        .iter()
        .filter(|o| matches!(o, Object::Gateway(_)))
        .map(json)
        .collect();
    let virtual_services = bundle
        .objects
        .iter()
        .filter(|o| matches!(o, Object::VirtualService(_)))
        .map(json)
        .collect();
    (gateways, virtual_services)
}

#[rstest]
#[case::default("default")]
#[case::features_and_sessions("features_and_sessions")]
#[case::bluegreen("bluegreen")]
#[case::least_rbac("least_rbac")]
fn rendered_istio_objects_satisfy_their_crd_schemas(#[case] case: &str) {
    let Some((gateway_schema, virtual_service_schema)) =
        schemas("rendered_istio_objects_satisfy_their_crd_schemas")
    else {
        return;
    };
    let (gateways, virtual_services) = istio_objects(case);
    assert_eq!(gateways.len(), 1, "{case}: one Gateway");
    assert_eq!(virtual_services.len(), 2, "{case}: two VirtualServices");
    for (key, gateway) in &gateways {
        assert_eq!(gateway["apiVersion"], "networking.istio.io/v1", "{key}");
        gateway_schema.assert_accepts(&format!("{case}: {key}"), gateway);
    }
    for (key, virtual_service) in &virtual_services {
        assert_eq!(
            virtual_service["apiVersion"], "networking.istio.io/v1",
            "{key}"
        );
        virtual_service_schema.assert_accepts(&format!("{case}: {key}"), virtual_service);
    }
    if case == "features_and_sessions" {
        // The session routes are what is at stake: 2 sessions + default each.
        for (key, virtual_service) in &virtual_services {
            let routes = virtual_service["spec"]["http"]
                .as_array()
                .map_or(0, Vec::len);
            assert_eq!(routes, 3, "{key}: two session routes and the default");
        }
    }
}

/// A rendered object to break, from the render with session routes.
fn rendered(kind: &str, name: &str) -> Value {
    let (gateways, virtual_services) = istio_objects("features_and_sessions");
    gateways
        .into_iter()
        .chain(virtual_services)
        .find(|(_, o)| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no rendered {kind} {name}"))
        .1
}

/// Moves `spec<from>` to `spec<to>` (a rename of the last segment).
fn rename(object: &mut Value, parent: &str, from: &str, to: &str) {
    let map = object
        .pointer_mut(parent)
        .and_then(Value::as_object_mut)
        .unwrap_or_else(|| panic!("no map at {parent}"));
    let value = map
        .remove(from)
        .unwrap_or_else(|| panic!("no {from} at {parent}"));
    map.insert(to.to_string(), value);
}

#[rstest]
#[case::gateways_misspelled("frontend", "/spec", "gateways", "gateway", "/spec/gateway")]
#[case::match_misspelled("frontend", "/spec/http/0", "match", "matches", "/spec/http/0/matches")]
#[case::destination_misspelled(
    "adservice",
    "/spec/http/2/route/0",
    "destination",
    "destinations",
    "/spec/http/2/route/0/destinations"
)]
fn a_misspelled_virtual_service_field_is_reported_as_pruned(
    #[case] name: &str,
    #[case] parent: &str,
    #[case] from: &str,
    #[case] to: &str,
    #[case] expected: &str,
) {
    let Some((_, schema)) = schemas("a_misspelled_virtual_service_field_is_reported_as_pruned")
    else {
        return;
    };
    let mut virtual_service = rendered("VirtualService", name);
    schema.assert_accepts("the unbroken object", &virtual_service);
    rename(&mut virtual_service, parent, from, to);
    assert_eq!(schema.pruned(&virtual_service), vec![expected.to_string()]);
}

#[test]
fn a_misspelled_optional_field_passes_the_schema_but_not_the_pruning_check() {
    let Some((_, schema)) =
        schemas("a_misspelled_optional_field_passes_the_schema_but_not_the_pruning_check")
    else {
        return;
    };
    // `gateways` is optional and the CRD does not forbid unknown keys, so the
    // schema alone accepts the typo; the API server would drop the binding
    // and the VirtualService would apply to the mesh instead of the ingress.
    let mut virtual_service = rendered("VirtualService", "frontend");
    rename(&mut virtual_service, "/spec", "gateways", "gateway");
    assert_eq!(schema.violations(&virtual_service), Vec::<String>::new());
    assert_eq!(schema.pruned(&virtual_service), vec!["/spec/gateway"]);
}

#[test]
fn a_gateway_tls_mode_outside_the_enum_fails_the_schema() {
    let Some((schema, _)) = schemas("a_gateway_tls_mode_outside_the_enum_fails_the_schema") else {
        return;
    };
    let mut gateway = rendered("Gateway", "ingressgateway");
    let servers = gateway["spec"]["servers"].as_array().expect("servers");
    let https = servers
        .iter()
        .position(|s| s.get("tls").is_some())
        .expect("a server with tls");
    assert_eq!(gateway["spec"]["servers"][https]["tls"]["mode"], "SIMPLE");
    gateway["spec"]["servers"][https]["tls"]["mode"] = json!("SIMPLEST");
    let violations = schema.violations(&gateway);
    assert_eq!(violations.len(), 1, "{violations:#?}");
    let violation = &violations[0];
    assert!(
        violation.starts_with(&format!("/spec/servers/{https}/tls/mode: ")),
        "{violation}"
    );
    assert!(
        violation.contains("\"SIMPLEST\"") && violation.contains("\"SIMPLE\""),
        "the message names the value and the allowed ones: {violation}"
    );
}

#[test]
fn a_header_match_with_two_kinds_of_string_match_fails_the_schema() {
    let Some((_, schema)) =
        schemas("a_header_match_with_two_kinds_of_string_match_fails_the_schema")
    else {
        return;
    };
    let mut virtual_service = rendered("VirtualService", "frontend");
    let cookie = virtual_service
        .pointer_mut("/spec/http/0/match/0/headers/cookie")
        .and_then(Value::as_object_mut)
        .expect("the first session route matches the cookie header");
    assert!(cookie.contains_key("regex"), "{cookie:?}");
    cookie.insert("exact".to_string(), json!("shop_session-id=abc"));
    let violations = schema.violations(&virtual_service);
    assert_eq!(violations.len(), 1, "{violations:#?}");
    let violation = &violations[0];
    assert!(
        violation.starts_with("/spec/http/0/match/0/headers/cookie: ")
            && violation.contains("oneOf"),
        "the message names the header and the oneOf rule: {violation}"
    );
}

#[test]
fn a_port_number_given_as_a_string_fails_the_schema() {
    let Some((schema, _)) = schemas("a_port_number_given_as_a_string_fails_the_schema") else {
        return;
    };
    let mut gateway = rendered("Gateway", "ingressgateway");
    gateway["spec"]["servers"][0]["port"]["number"] = json!("443");
    let violations = schema.violations(&gateway);
    assert_eq!(violations.len(), 1, "{violations:#?}");
    assert!(
        violations[0].starts_with("/spec/servers/0/port/number: ")
            && violations[0].contains("integer"),
        "{}",
        violations[0]
    );
}

#[test]
fn a_route_without_a_destination_host_fails_the_schema() {
    let Some((_, schema)) = schemas("a_route_without_a_destination_host_fails_the_schema") else {
        return;
    };
    let mut virtual_service = rendered("VirtualService", "adservice");
    virtual_service
        .pointer_mut("/spec/http/0/route/0/destination")
        .and_then(Value::as_object_mut)
        .expect("a destination")
        .remove("host")
        .expect("a host");
    let violations = schema.violations(&virtual_service);
    assert_eq!(violations.len(), 1, "{violations:#?}");
    assert!(
        violations[0].starts_with("/spec/http/0/route/0/destination: ")
            && violations[0].contains("\"host\""),
        "{}",
        violations[0]
    );
}

#[test]
fn pruning_check_follows_maps_lists_and_preserved_fields() {
    let schema = json!({
        "type": "object",
        "properties": {
            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
            "list": {"type": "array", "items": {"type": "object", "properties": {"a": {"type": "string"}}}},
            "closed": {"type": "object"}
        }
    });
    let instance = json!({
        "labels": {"any": "x"},
        "free": {"anything": {"deep": 1}},
        "list": [{"a": "1"}, {"a": "2", "b": "typo"}],
        "closed": {"k": 1},
        "unknown": true
    });
    let mut pruned = Vec::new();
    pruned_fields(&schema, &instance, "", &mut pruned);
    assert_eq!(pruned, vec!["/closed/k", "/list/1/b", "/unknown"]);
}
