//! A pipeline's own manifests (`--manifests DIR|FILE|-`): every YAML document of every file, as a [`Bundle`].
//!
//! Pure except for reading the files. Every object remembers its [`Source`]
//! (file, document, line), so that a finding can point at the line a pipeline
//! author has to change. Bad input (invalid YAML, a document that is not a
//! Kubernetes object, a known kind that does not fit its type) is a
//! [`LoadError`] naming file, document and line; an object outside the
//! environment's namespace is not bad input but a [`Misplaced`] finding.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use kube::api::DynamicObject;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use serde_saphyr::MessageFormatter;

use super::{Bundle, Object};
use crate::names::ISTIO_NAMESPACE;

/// Where an object was written: the file, the document in it (1 = the first)
/// and the line the document's content starts on (1-based).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Source {
    pub file: PathBuf,
    pub document: usize,
    pub line: u64,
    /// The position in `items` (0-based) when the document is a `kind: List`.
    pub item: Option<usize>,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}, document {}, line {}",
            self.file.display(),
            self.document,
            self.line
        )?;
        if let Some(item) = self.item {
            write!(f, ", items[{item}]")?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("read manifests directory {dir}")]
    ReadDir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("find a *.yaml or *.yml file under {dir}")]
    NoManifests { dir: PathBuf },
    /// The input holds no object at all (an empty pipe when the command before it failed).
    #[error("find a Kubernetes object in {input}: it holds none")]
    NoObjects { input: PathBuf },
    #[error("read manifest file {file}")]
    ReadFile {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The parser's own error, its location moved from the document to the file.
    #[error("parse {file}, document {document}, line {line}:{column}: not valid YAML: {message}")]
    Yaml {
        file: PathBuf,
        document: usize,
        line: u64,
        column: u64,
        message: String,
    },
    #[error("read {at} as a Kubernetes object: it has no {missing}")]
    NotAnObject {
        at: Box<Source>,
        missing: &'static str,
    },
    #[error("read {at} as {kind}: field {path}{}: {message}", on_line(*.field_line))]
    InvalidObject {
        at: Box<Source>,
        kind: String,
        /// Dotted path of the offending field, e.g. `spec.replicas`.
        path: String,
        /// The field's own line, when the parser could place it.
        field_line: Option<u64>,
        message: String,
    },
    #[error("load {key} from {second}: {first} defines it already")]
    Duplicate {
        key: String,
        first: Box<Source>,
        second: Box<Source>,
    },
}

fn on_line(line: Option<u64>) -> String {
    line.map(|l| format!(" (line {l})")).unwrap_or_default()
}

/// A loaded pipeline: its objects in file and document order, and where each came from.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Loaded {
    pub bundle: Bundle,
    /// [`Source`] of each object of `bundle`, by [`Object::key`].
    pub sources: BTreeMap<String, Source>,
}

impl Loaded {
    pub fn source_of(&self, object: &Object) -> Option<&Source> {
        self.sources.get(&object.key())
    }
}

/// Loads every `*.yaml`/`*.yml` file under `dir` (recursively, in path order,
/// skipping hidden entries and symbolic links to directories), every non-empty
/// document of each, `kind: List` documents expanded into their items; files that
/// hold no object at all are refused ([`LoadError::NoObjects`]).
pub fn load_dir(dir: &Path) -> Result<Loaded, LoadError> {
    let files = yaml_files(dir)?;
    if files.is_empty() {
        return Err(LoadError::NoManifests {
            dir: dir.to_path_buf(),
        });
    }
    let mut texts = Vec::new();
    for file in files {
        let text = read_file(&file)?;
        texts.push((file, text));
    }
    holding_objects(load_texts(texts)?, dir)
}

/// What a pipeline hands over: a directory (see [`load_dir`]), one file of any name
/// (`helm template ... > out.yaml`), or `-` for standard input (`helm template ... |
/// cdcheck run --manifests -`), whose findings name the file `<stdin>`.
pub fn load_path(path: &Path) -> Result<Loaded, LoadError> {
    if path == Path::new("-") {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text).map_err(|source| {
            LoadError::ReadFile {
                file: PathBuf::from(STDIN_NAME),
                source,
            }
        })?;
        let stdin = PathBuf::from(STDIN_NAME);
        return holding_objects(load_texts(vec![(stdin.clone(), text)])?, &stdin);
    }
    if path.is_file() {
        return holding_objects(
            load_texts(vec![(path.to_path_buf(), read_file(path)?)])?,
            path,
        );
    }
    load_dir(path)
}

/// `loaded`, unless it holds no object: nothing to judge is bad input, not a pipeline.
fn holding_objects(loaded: Loaded, input: &Path) -> Result<Loaded, LoadError> {
    if loaded.bundle.objects.is_empty() {
        return Err(LoadError::NoObjects {
            input: input.to_path_buf(),
        });
    }
    Ok(loaded)
}

/// How standard input is named in findings and errors.
pub const STDIN_NAME: &str = "<stdin>";

fn read_file(file: &Path) -> Result<String, LoadError> {
    std::fs::read_to_string(file).map_err(|source| LoadError::ReadFile {
        file: file.to_path_buf(),
        source,
    })
}

/// Loads files already read, in the given order, refusing an object defined twice.
fn load_texts(texts: Vec<(PathBuf, String)>) -> Result<Loaded, LoadError> {
    let mut loaded = Loaded::default();
    for (file, text) in texts {
        for (object, source) in load_str(&file, &text)? {
            let key = object.key();
            if let Some(first) = loaded.sources.get(&key) {
                return Err(LoadError::Duplicate {
                    key,
                    first: Box::new(first.clone()),
                    second: Box::new(source),
                });
            }
            loaded.sources.insert(key, source);
            loaded.bundle.objects.push(object);
        }
    }
    Ok(loaded)
}

/// The YAML files under `dir`, recursively, sorted by path.
pub fn yaml_files(dir: &Path) -> Result<Vec<PathBuf>, LoadError> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        let entries = std::fs::read_dir(&current).map_err(|source| LoadError::ReadDir {
            dir: current.clone(),
            source,
        })?;
        for entry in entries {
            let entry = entry.map_err(|source| LoadError::ReadDir {
                dir: current.clone(),
                source,
            })?;
            let path = entry.path();
            if entry.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            let file_type = entry.file_type().map_err(|source| LoadError::ReadDir {
                dir: current.clone(),
                source,
            })?;
            if file_type.is_dir() {
                pending.push(path);
            } else if is_yaml(&path) && std::fs::metadata(&path).is_ok_and(|m| m.is_file()) {
                files.push(path);
            }
        }
    }
    files.sort();
    Ok(files)
}

fn is_yaml(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("yaml") || e.eq_ignore_ascii_case("yml"))
}

/// One YAML document of a file, with its text's place in the file.
#[derive(Debug, PartialEq)]
struct Document {
    /// 1 = the first document of the file.
    index: usize,
    /// The file line of the document text's first line.
    first_line: u64,
    /// The file line of the first line that is not blank, a comment or a directive.
    content_line: Option<u64>,
    text: String,
}

fn is_marker(line: &str, marker: &str) -> bool {
    line.strip_prefix(marker)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t', '\r']))
}

/// Splits a YAML stream at its document markers (`---`, `...` at column 0).
/// YAML forbids both inside any scalar or collection, so a line split finds the
/// same documents the parser does, and keeps each document's line in the file.
fn split_documents(text: &str) -> Vec<Document> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut documents = Vec::new();
    // Content before the first `---` is a document only when it has content.
    let mut current = Document {
        index: 1,
        first_line: 1,
        content_line: None,
        text: String::new(),
    };
    let mut explicit = false;
    for (number, line) in (1u64..).zip(text.lines()) {
        let end = is_marker(line, "...");
        if is_marker(line, "---") || end {
            if explicit || current.content_line.is_some() {
                let index = current.index;
                documents.push(current);
                current = Document {
                    index: index + 1,
                    first_line: number,
                    content_line: None,
                    text: String::new(),
                };
            } else {
                current.first_line = number;
                current.text.clear();
            }
            // After `...` comes a document only if content does.
            explicit = !end;
            if end {
                current.first_line = number + 1;
                continue;
            }
            // `--- value` starts the document on the marker's line; blanks keep the columns.
            let rest = &line[3..];
            current.text.push_str("   ");
            current.text.push_str(rest);
            current.text.push('\n');
            if has_content(rest) {
                current.content_line.get_or_insert(number);
            }
            continue;
        }
        if line.starts_with('%') && current.content_line.is_none() {
            // A directive: it belongs to the stream, not to the document's text.
            current.text.push('\n');
            continue;
        }
        current.text.push_str(line);
        current.text.push('\n');
        if has_content(line) {
            current.content_line.get_or_insert(number);
        }
    }
    if explicit || current.content_line.is_some() {
        documents.push(current);
    }
    documents
}

fn has_content(line: &str) -> bool {
    let trimmed = line.trim_start();
    !trimmed.is_empty() && !trimmed.starts_with('#')
}

/// Every object of one file's text (`file` only names it): pure, for tests and
/// for callers that read the files themselves.
pub fn load_str(file: &Path, text: &str) -> Result<Vec<(Object, Source)>, LoadError> {
    let mut objects = Vec::new();
    for document in split_documents(text) {
        let Some(content_line) = document.content_line else {
            continue;
        };
        let value = parse_document(file, &document)?;
        if value.is_null() {
            continue;
        }
        let at = Source {
            file: file.to_path_buf(),
            document: document.index,
            line: content_line,
            item: None,
        };
        let is_list = value.get("kind").and_then(Value::as_str) == Some("List")
            || (value
                .get("kind")
                .and_then(Value::as_str)
                .is_some_and(|k| k.ends_with("List"))
                && value.get("items").is_some_and(Value::is_array));
        if is_list {
            let Some(Value::Array(items)) = value.get("items").cloned() else {
                return Err(LoadError::NotAnObject {
                    at: Box::new(at),
                    missing: "items (a List needs them)",
                });
            };
            for (item, value) in items.into_iter().enumerate() {
                let at = Source {
                    item: Some(item),
                    ..at.clone()
                };
                objects.push((to_object(value, &at, None)?, at));
            }
        } else {
            objects.push((to_object(value, &at, Some(&document))?, at));
        }
    }
    Ok(objects)
}

fn parse_document(file: &Path, document: &Document) -> Result<Value, LoadError> {
    let options = serde_saphyr::options! { with_snippet: false };
    serde_saphyr::from_str_with_options::<Value>(&document.text, options).map_err(|error| {
        let error = error.without_snippet();
        let (line, column) = error
            .location()
            .map(|l| (document.first_line + l.line().saturating_sub(1), l.column()))
            .unwrap_or((document.content_line.unwrap_or(document.first_line), 0));
        let message = serde_saphyr::DefaultMessageFormatter.format_message(error);
        LoadError::Yaml {
            file: file.to_path_buf(),
            document: document.index,
            line,
            column,
            // One line, whatever the input held: the message may quote it.
            message: message
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect(),
        }
    })
}

/// Non-empty string at `field` of a JSON object.
fn string_at<'a>(value: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter()
        .try_fold(value, |v, key| v.get(key))
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// The typed object of a document (or List item) that has apiVersion, kind and metadata.name.
fn to_object(value: Value, at: &Source, document: Option<&Document>) -> Result<Object, LoadError> {
    let not_an_object = |missing| LoadError::NotAnObject {
        at: Box::new(at.clone()),
        missing,
    };
    if !value.is_object() {
        return Err(not_an_object(
            "apiVersion, kind and metadata (it is not a mapping)",
        ));
    }
    let api_version = string_at(&value, &["apiVersion"])
        .ok_or_else(|| not_an_object("apiVersion"))?
        .to_string();
    let kind = string_at(&value, &["kind"])
        .ok_or_else(|| not_an_object("kind"))?
        .to_string();
    if !value.get("metadata").is_some_and(Value::is_object) {
        return Err(not_an_object("metadata"));
    }
    string_at(&value, &["metadata", "name"]).ok_or_else(|| not_an_object("metadata.name"))?;
    let typed = Typed {
        at,
        kind: &kind,
        document,
    };
    match (api_version.as_str(), kind.as_str()) {
        ("v1", "Namespace") => typed.k8s(value, Object::Namespace),
        ("v1", "ServiceAccount") => typed.k8s(value, Object::ServiceAccount),
        ("v1", "ConfigMap") => typed.k8s(value, Object::ConfigMap),
        ("v1", "Secret") => typed.k8s(value, Object::Secret),
        ("v1", "Service") => typed.k8s(value, Object::Service),
        ("apps/v1", "Deployment") => typed.k8s(value, Object::Deployment),
        ("policy/v1", "PodDisruptionBudget") => typed.k8s(value, Object::PodDisruptionBudget),
        ("rbac.authorization.k8s.io/v1", "Role") => typed.k8s(value, Object::Role),
        ("rbac.authorization.k8s.io/v1", "RoleBinding") => typed.k8s(value, Object::RoleBinding),
        ("rbac.authorization.k8s.io/v1", "ClusterRole") => typed.k8s(value, Object::ClusterRole),
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
            typed.k8s(value, Object::ClusterRoleBinding)
        }
        (version, "Gateway") if is_istio_networking(version) => typed.istio(value, Object::Gateway),
        (version, "VirtualService") if is_istio_networking(version) => {
            typed.istio(value, Object::VirtualService)
        }
        _ => typed.other(value),
    }
}

/// The versions of `networking.istio.io` whose Gateway and VirtualService share the v1 schema.
fn is_istio_networking(api_version: &str) -> bool {
    matches!(
        api_version,
        "networking.istio.io/v1" | "networking.istio.io/v1beta1" | "networking.istio.io/v1alpha3"
    )
}

/// Deserializes one document into its type, errors pointing at the field.
struct Typed<'a> {
    at: &'a Source,
    kind: &'a str,
    document: Option<&'a Document>,
}

impl Typed<'_> {
    fn deserialize<K: DeserializeOwned>(&self, value: Value) -> Result<K, LoadError> {
        serde_path_to_error::deserialize::<_, K>(value).map_err(|error| {
            let path = error.path().to_string();
            LoadError::InvalidObject {
                at: Box::new(self.at.clone()),
                kind: self.kind.to_string(),
                field_line: self.field_line::<K>(&path),
                path,
                message: error.inner().to_string(),
            }
        })
    }

    /// The offending field's line, from the parser deserializing the document
    /// text directly into `K` (not possible for the items of a List). The parser
    /// may stop elsewhere (it reads scalars more leniently than JSON does), so its
    /// line counts only when it holds the field's key.
    fn field_line<K: DeserializeOwned>(&self, path: &str) -> Option<u64> {
        let document = self.document?;
        let options = serde_saphyr::options! { with_snippet: false };
        let error = serde_saphyr::from_str_with_options::<K>(&document.text, options).err()?;
        let line = error.location()?.line();
        let key = path.rsplit('.').next()?.split('[').next()?;
        let text = document
            .text
            .lines()
            .nth(usize::try_from(line).ok()?.checked_sub(1)?)?;
        (!key.is_empty() && text.contains(&format!("{key}:")))
            .then(|| document.first_line + line - 1)
    }

    fn k8s<K: DeserializeOwned>(
        &self,
        value: Value,
        wrap: fn(K) -> Object,
    ) -> Result<Object, LoadError> {
        self.deserialize(value).map(wrap)
    }

    /// The Istio types model the subset cdcheck renders: a document they cannot
    /// hold entirely stays an [`Object::Other`], so no field is lost.
    fn istio<K: DeserializeOwned + Serialize>(
        &self,
        value: Value,
        wrap: fn(K) -> Object,
    ) -> Result<Object, LoadError> {
        if let Ok(typed) = serde_json::from_value::<K>(value.clone()) {
            let lossless = serde_json::to_value(&typed)
                .is_ok_and(|back| same_ignoring_version(&without_nulls(&value), &back));
            if lossless {
                return Ok(wrap(typed));
            }
        }
        self.other(value)
    }

    fn other(&self, value: Value) -> Result<Object, LoadError> {
        self.deserialize::<DynamicObject>(value).map(Object::Other)
    }
}

/// `null` means "not set" in a manifest; typed objects leave such fields out.
fn without_nulls(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), without_nulls(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(without_nulls).collect()),
        other => other.clone(),
    }
}

fn same_ignoring_version(written: &Value, typed: &Value) -> bool {
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(map) = v.as_object_mut() {
            map.remove("apiVersion");
        }
        v
    };
    strip(written) == strip(typed)
}

/// Why an object is not deployed into the environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Misplacement {
    /// In another namespace (or another Namespace object) than the environment's.
    OtherNamespace { namespace: String },
    /// A ClusterRole or ClusterRoleBinding: grants reach beyond the environment.
    ClusterRbac,
    /// Another cluster-scoped kind.
    ClusterScoped,
}

/// An object the environment's namespace does not hold: a finding, not bad input.
#[derive(Clone, Debug, PartialEq)]
pub struct Misplaced {
    pub object: Object,
    pub source: Option<Source>,
    pub environment: String,
    pub reason: Misplacement,
}

impl fmt::Display for Misplaced {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.object.key())?;
        if let Some(source) = &self.source {
            write!(f, " ({source})")?;
        }
        match &self.reason {
            Misplacement::OtherNamespace { namespace } => write!(
                f,
                ": in namespace {namespace}, outside the environment's namespace {}",
                self.environment
            ),
            Misplacement::ClusterRbac => write!(
                f,
                ": cluster-scoped RBAC, reaching beyond the environment's namespace {}",
                self.environment
            ),
            Misplacement::ClusterScoped => write!(
                f,
                ": cluster-scoped, outside the environment's namespace {}",
                self.environment
            ),
        }
    }
}

/// Cluster-scoped kinds a pipeline may ship besides the typed ones. A kind not
/// listed is taken as namespaced.
const CLUSTER_SCOPED_KINDS: &[&str] = &[
    "APIService",
    "CSIDriver",
    "ClusterIssuer",
    "CustomResourceDefinition",
    "GatewayClass",
    "IngressClass",
    "MutatingWebhookConfiguration",
    "Node",
    "PersistentVolume",
    "PriorityClass",
    "RuntimeClass",
    "StorageClass",
    "ValidatingAdmissionPolicy",
    "ValidatingAdmissionPolicyBinding",
    "ValidatingWebhookConfiguration",
];

/// Puts the loaded objects into the environment's `namespace`: objects without
/// one get it; the environment's own Namespace object stays. Every other object
/// outside it is taken out of the bundle (it is not deployed) and returned, for
/// the runner to report as a finding; Gateways and Secrets in `istio-system`
/// (what the ingress gateway needs) are not outside.
pub fn place_in_namespace(
    loaded: &mut Loaded,
    namespace: &str,
) -> Result<Vec<Misplaced>, LoadError> {
    let mut sources = std::mem::take(&mut loaded.sources);
    let mut kept = Loaded::default();
    let mut misplaced = Vec::new();
    for mut object in std::mem::take(&mut loaded.bundle.objects) {
        let source = sources.remove(&object.key());
        let kind = object.kind();
        let reason = match &object {
            Object::Namespace(_) if object.name() == namespace => None,
            Object::Namespace(_) => Some(Misplacement::OtherNamespace {
                namespace: object.name(),
            }),
            Object::ClusterRole(_) | Object::ClusterRoleBinding(_) => {
                Some(Misplacement::ClusterRbac)
            }
            Object::Other(_) if CLUSTER_SCOPED_KINDS.contains(&kind.as_str()) => {
                Some(Misplacement::ClusterScoped)
            }
            _ => match object.namespace() {
                None => {
                    set_namespace(&mut object, namespace);
                    None
                }
                Some(ns) if ns == namespace => None,
                Some(ns)
                    if ns == ISTIO_NAMESPACE
                        && matches!(object, Object::Gateway(_) | Object::Secret(_)) =>
                {
                    None
                }
                Some(ns) => Some(Misplacement::OtherNamespace { namespace: ns }),
            },
        };
        match reason {
            Some(reason) => misplaced.push(Misplaced {
                object,
                source,
                environment: namespace.to_string(),
                reason,
            }),
            None => {
                let key = object.key();
                if let Some(source) = source {
                    if let Some(first) = kept.sources.get(&key) {
                        return Err(LoadError::Duplicate {
                            key,
                            first: Box::new(first.clone()),
                            second: Box::new(source),
                        });
                    }
                    kept.sources.insert(key, source);
                }
                kept.bundle.objects.push(object);
            }
        }
    }
    *loaded = kept;
    Ok(misplaced)
}

fn set_namespace(object: &mut Object, namespace: &str) {
    object.metadata_mut().namespace = Some(namespace.to_string());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn indexes_and_lines(text: &str) -> Vec<(usize, Option<u64>)> {
        split_documents(text)
            .iter()
            .map(|d| (d.index, d.content_line))
            .collect()
    }

    #[test]
    fn documents_are_split_at_markers_keeping_their_lines() {
        let text = "# leading comment\n---\na: 1\n---\n\n# only a comment\n---\nb: 2\n...\n---\n";
        assert_eq!(
            indexes_and_lines(text),
            [(1, Some(3)), (2, None), (3, Some(8)), (4, None)]
        );
    }

    #[test]
    fn content_before_the_first_marker_is_the_first_document() {
        assert_eq!(
            indexes_and_lines("a: 1\n---\nb: 2\n"),
            [(1, Some(1)), (2, Some(3))]
        );
    }

    #[test]
    fn a_marker_with_content_starts_the_document_on_its_line() {
        let docs = split_documents("--- {a: 1}\n---   |\n  text\n");
        assert_eq!(docs[0].content_line, Some(1));
        assert_eq!(docs[0].text, "    {a: 1}\n");
        assert_eq!(docs[1].content_line, Some(2));
    }

    #[test]
    fn dashes_inside_a_line_are_not_a_marker() {
        assert_eq!(
            indexes_and_lines("a: ---\nb: '---'\n----\n"),
            [(1, Some(1))]
        );
    }

    #[test]
    fn a_byte_order_mark_is_not_content() {
        assert_eq!(indexes_and_lines("\u{feff}---\na: 1\n"), [(1, Some(2))]);
    }
}
