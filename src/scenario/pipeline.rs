//! The pipeline under test and its releases, placed in a scenario's namespace:
//! cdcheck's reference rendering (re-rendered per namespace), or the objects a
//! real pipeline produced (`--manifests`), moved into the namespace. Objects in
//! the gateway's namespace are renamed per scenario so concurrent scenarios
//! never share one; what cannot be deployed (cluster-scoped, another namespace)
//! is set aside as findings.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;

use std::path::Path;

use super::spec::Release;
use crate::manifests::image::ImageRef;
use crate::manifests::load::{self, LoadError, Loaded};
use crate::manifests::{
    self, Bundle, ENVIRONMENT_LABEL, MANAGED_BY_LABEL, MANAGED_BY_VALUE, ManifestError, Object,
    Options, RELEASE_LABEL, SessionId, Strategy,
};
use crate::names::{BROKEN_TAG, ISTIO_NAMESPACE, RUN_LABEL, SCENARIO_LABEL};
use crate::report::Finding;

/// `kubectl rollout restart`'s annotation: how release N+1 differs from N when
/// the pipeline gives no next release.
pub const RESTARTED_AT_ANNOTATION: &str = "kubectl.kubernetes.io/restartedAt";
/// The workload the broken release breaks (the one users reach first).
pub const BROKEN_WORKLOAD: &str = "frontend";
/// The test session the reference feature branch routes by cookie and `userid`.
pub const REFERENCE_SESSION: &str = "5e3b9c1a-cdcheck-test-session";

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("render the reference pipeline")]
    Render(#[from] ManifestError),
    #[error("load the pipeline's manifests")]
    Load(#[from] LoadError),
    #[error("read the pipeline's manifests: standard input (-) can be given once")]
    StdinTwice,
    #[error("make the {release} release: {why}")]
    Release { release: &'static str, why: String },
    /// The pipeline does not have this release: what needs it does not apply.
    #[error("make the {release} release: the pipeline gives none ({flag})")]
    NotGiven {
        release: &'static str,
        flag: &'static str,
    },
}

/// Where the pipeline's objects come from.
#[derive(Clone, Debug)]
pub enum Pipeline {
    /// cdcheck's own rendering with these options (`env` is replaced by each
    /// scenario's namespace).
    Reference(Box<Options>),
    /// The objects a real pipeline produced for one environment (`--manifests`).
    Manifests(Box<Manifests>),
}

/// A pipeline's own manifests, loaded once.
#[derive(Clone, Debug)]
pub struct Manifests {
    /// `--manifests`, as given (for the report).
    pub dir: String,
    /// The environment's namespace: its Namespace object's name, else the
    /// namespace most of its objects name, else `default`.
    pub namespace: String,
    /// `--feature-manifests`: objects added to (or replacing) the current ones.
    feature: Option<Loaded>,
    /// `--next-manifests`: the next release, whole.
    next: Option<Loaded>,
    /// `--feature-image SERVICE=REF`: images replacing the feature Deployments' ones.
    pub feature_images: Vec<(String, String)>,
    /// The releases in the environment's namespace, computed once at load: each
    /// placement only copies one into its scenario's namespace.
    prepared: PreparedReleases,
}

/// A release of a pipeline's own manifests in the environment's namespace: the objects
/// deployed, and those set aside (another namespace, cluster-scoped) as findings.
#[derive(Clone, Debug)]
struct Prepared {
    bundle: Bundle,
    not_deployed: Vec<Finding>,
}

#[derive(Clone, Debug)]
struct PreparedReleases {
    current: Prepared,
    /// The current release with the feature's objects added or replacing theirs.
    feature: Option<Prepared>,
    next: Option<Prepared>,
}

impl PreparedReleases {
    fn new(
        namespace: &str,
        current: &Loaded,
        feature: Option<&Loaded>,
        next: Option<&Loaded>,
    ) -> Result<PreparedReleases, PipelineError> {
        let prepare = |loaded: Loaded| -> Result<Prepared, PipelineError> {
            let mut loaded = loaded;
            let misplaced = load::place_in_namespace(&mut loaded, namespace)?;
            Ok(Prepared {
                bundle: loaded.bundle,
                not_deployed: misplaced
                    .iter()
                    .map(|x| Finding::about(x.object.key(), format!("not deployed: {x}")))
                    .collect(),
            })
        };
        Ok(PreparedReleases {
            current: prepare(current.clone())?,
            feature: feature
                .map(|feature| prepare(with_feature(current, feature)))
                .transpose()?,
            next: next.map(|next| prepare(next.clone())).transpose()?,
        })
    }
}

/// The current release with the feature's objects added, or replacing the current
/// ones of the same kind, namespace and name.
fn with_feature(current: &Loaded, feature: &Loaded) -> Loaded {
    let mut loaded = current.clone();
    for object in &feature.bundle.objects {
        let key = object.key();
        match loaded.bundle.objects.iter().position(|o| o.key() == key) {
            Some(at) => loaded.bundle.objects[at] = object.clone(),
            None => loaded.bundle.objects.push(object.clone()),
        }
        if let Some(source) = feature.sources.get(&key) {
            loaded.sources.insert(key, source.clone());
        }
    }
    loaded
}

impl Manifests {
    pub fn load(
        current: &Path,
        feature: Option<&Path>,
        next: Option<&Path>,
    ) -> Result<Manifests, PipelineError> {
        let stdin = [Some(current), feature, next]
            .into_iter()
            .flatten()
            .filter(|p| *p == Path::new("-"))
            .count();
        if stdin > 1 {
            return Err(PipelineError::StdinTwice);
        }
        let dir = if current == Path::new("-") {
            load::STDIN_NAME.to_string()
        } else {
            current.display().to_string()
        };
        Manifests::from_loaded(
            dir,
            load::load_path(current)?,
            feature.map(load::load_path).transpose()?,
            next.map(load::load_path).transpose()?,
        )
    }

    /// The manifests of loaded objects; `dir` names where they came from.
    pub fn from_loaded(
        dir: String,
        current: Loaded,
        feature: Option<Loaded>,
        next: Option<Loaded>,
    ) -> Result<Manifests, PipelineError> {
        let namespace = environment_namespace(&current.bundle);
        let prepared =
            PreparedReleases::new(&namespace, &current, feature.as_ref(), next.as_ref())?;
        Ok(Manifests {
            dir,
            namespace,
            feature,
            next,
            feature_images: Vec::new(),
            prepared,
        })
    }

    /// The releases' objects as the pipeline has them, in its own namespace.
    pub fn release_bundles(&self) -> impl Iterator<Item = &Bundle> {
        std::iter::once(&self.prepared.current)
            .chain(&self.prepared.feature)
            .chain(&self.prepared.next)
            .map(|p| &p.bundle)
    }

    /// Whether `host` names the environment's namespace (`svc.<namespace>` or
    /// `svc.<namespace>.svc.cluster.local`), so that it moves with each scenario.
    pub fn host_names_namespace(&self, host: &str) -> bool {
        host.ends_with(&format!(".{}", self.namespace))
            || host.ends_with(&format!(".{}.svc.cluster.local", self.namespace))
    }
}

/// The namespace a pipeline's output is for.
fn environment_namespace(bundle: &Bundle) -> String {
    if let Some(ns) = bundle
        .objects
        .iter()
        .find(|o| matches!(o, Object::Namespace(_)))
    {
        return ns.name();
    }
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for o in &bundle.objects {
        if let Some(ns) = o.namespace()
            && ns != ISTIO_NAMESPACE
        {
            *counts.entry(ns).or_default() += 1;
        }
    }
    counts
        .into_iter()
        .max_by_key(|(_, n)| *n)
        .map(|(ns, _)| ns)
        .unwrap_or_else(|| "default".to_string())
}

/// A release placed in a scenario's namespace.
#[derive(Clone, Debug, Default)]
pub struct Placed {
    pub bundle: Bundle,
    /// Objects of the pipeline left out, with why; the `namespace-scoped` check reports them.
    pub not_deployed: Vec<Finding>,
    /// The broken release: the Deployment it broke.
    pub broken: Option<String>,
}

/// What a scenario may change of the reference rendering.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReferenceOverrides {
    pub strategy: Option<Strategy>,
}

impl Pipeline {
    /// The reference pipeline with `render`'s defaults (no loadgenerator: it is
    /// not HA and not part of what the pipeline promises).
    pub fn reference() -> Pipeline {
        let mut options = Options::for_env("cdcheck");
        options.loadgenerator = false;
        Pipeline::Reference(Box::new(options))
    }

    pub fn describe(&self) -> String {
        match self {
            Pipeline::Reference(_) => "reference rendering".to_string(),
            Pipeline::Manifests(m) => format!("manifests in {} (namespace {})", m.dir, m.namespace),
        }
    }

    /// The pipeline with `images` (SERVICE, REF) replacing the feature release's images of
    /// those services; fails, changing nothing, when a service has no image in the
    /// feature release's Deployments.
    pub fn with_feature_images(
        self,
        images: &[(String, String)],
    ) -> Result<Pipeline, PipelineError> {
        if images.is_empty() {
            return Ok(self);
        }
        let pipeline = match self {
            Pipeline::Reference(mut options) => {
                options.feature_images = images.to_vec();
                Pipeline::Reference(options)
            }
            Pipeline::Manifests(mut m) => {
                m.feature_images = images.to_vec();
                Pipeline::Manifests(m)
            }
        };
        // A trial placement checks every service names an image of the feature release.
        pipeline.place(
            Release::Feature,
            "cdcheck-check",
            "check",
            ReferenceOverrides::default(),
        )?;
        Ok(pipeline)
    }

    /// The feature release's own Deployments (beside mainline) and the images given for it.
    fn feature_deployments(&self) -> (Vec<String>, &[(String, String)]) {
        match self {
            Pipeline::Reference(o) => (
                reference_features()
                    .map(|f| f.into_iter().map(|f| f.name()).collect())
                    .unwrap_or_default(),
                &o.feature_images,
            ),
            Pipeline::Manifests(m) => (
                m.feature
                    .iter()
                    .flat_map(|f| f.bundle.deployments())
                    .filter_map(|d| d.metadata.name.clone())
                    .collect(),
                &m.feature_images,
            ),
        }
    }

    /// True when blue/green releases can be made (the reference rendering can
    /// render one; a pipeline's own must give `--next-manifests`).
    pub fn can_switch(&self) -> bool {
        match self {
            Pipeline::Reference(_) => true,
            Pipeline::Manifests(m) => m.next.is_some(),
        }
    }

    /// `release` of the pipeline, in `namespace`, labelled for `run`.
    pub fn place(
        &self,
        release: Release,
        namespace: &str,
        run: &str,
        overrides: ReferenceOverrides,
    ) -> Result<Placed, PipelineError> {
        let mut placed = match self {
            Pipeline::Reference(base) => {
                let mut options = (**base).clone();
                options.env = namespace.to_string();
                if let Some(strategy) = overrides.strategy {
                    options.strategy = strategy;
                }
                match release {
                    Release::Current | Release::Broken => {}
                    Release::Next if options.strategy == Strategy::Bluegreen => {
                        // Blue/green Deployments are named by release: N+1 is a new name.
                        options.release = format!("{}-next", options.release);
                    }
                    Release::Next => {}
                    Release::Feature => {
                        options.features = reference_features()?;
                        options.sessions = vec![SessionId::parse(REFERENCE_SESSION)?];
                    }
                }
                Placed {
                    bundle: manifests::render(&options)?,
                    not_deployed: Vec::new(),
                    broken: None,
                }
            }
            Pipeline::Manifests(m) => place_manifests(m, release, namespace)?,
        };
        match release {
            Release::Next if !self.renames_next(overrides) => restart(&mut placed.bundle),
            Release::Broken => placed.broken = Some(break_release(&mut placed.bundle)?),
            Release::Feature => {
                let (deployments, images) = self.feature_deployments();
                set_feature_images(&mut placed.bundle, &deployments, images)?;
            }
            _ => {}
        }
        isolate_gateway_objects(&mut placed.bundle, namespace);
        label(&mut placed.bundle, namespace, run, release);
        Ok(placed)
    }

    fn renames_next(&self, overrides: ReferenceOverrides) -> bool {
        match self {
            Pipeline::Reference(o) => {
                overrides.strategy.unwrap_or(o.strategy) == Strategy::Bluegreen
            }
            // A given next release is taken as it is.
            Pipeline::Manifests(m) => m.next.is_some(),
        }
    }
}

/// The reference pipeline's feature branches: frontend and adservice at `<release>-myfeature`.
fn reference_features() -> Result<Vec<manifests::FeatureBranch>, ManifestError> {
    ["frontend", "adservice"]
        .iter()
        .map(|s| {
            manifests::FeatureBranch::new(
                s,
                &format!(
                    "{}-myfeature",
                    crate::versions::ONLINE_BOUTIQUE.trim_start_matches('v')
                ),
            )
        })
        .collect()
}

/// The repository's last path segment of an image reference (`frontend` of
/// `registry.example.com/shop/frontend:pr-1@sha256:...`).
fn image_name(image: &str) -> &str {
    ImageRef::parse(image).name()
}

/// Replaces, in the named Deployments, every container image of SERVICE by REF.
fn set_feature_images(
    bundle: &mut Bundle,
    deployments: &[String],
    images: &[(String, String)],
) -> Result<(), PipelineError> {
    for (service, image) in images {
        let mut replaced = 0;
        for o in &mut bundle.objects {
            let Object::Deployment(d) = o else { continue };
            if !d
                .metadata
                .name
                .as_ref()
                .is_some_and(|n| deployments.contains(n))
            {
                continue;
            }
            let containers = d
                .spec
                .as_mut()
                .and_then(|s| s.template.spec.as_mut())
                .map(|s| s.containers.iter_mut());
            for c in containers.into_iter().flatten() {
                if c.image.as_deref().is_some_and(|i| image_name(i) == service) {
                    c.image = Some(image.clone());
                    replaced += 1;
                }
            }
        }
        if replaced == 0 {
            return Err(PipelineError::Release {
                release: "feature",
                why: format!(
                    "--feature-image {service}={image}: no container of the feature Deployments ({}) runs an image of {service}",
                    if deployments.is_empty() {
                        "none".to_string()
                    } else {
                        deployments.join(", ")
                    }
                ),
            });
        }
    }
    Ok(())
}

/// A pipeline's own release moved into `namespace`: what sits outside the
/// environment's namespace is set aside as findings, references to the
/// namespace follow it.
fn place_manifests(
    m: &Manifests,
    release: Release,
    namespace: &str,
) -> Result<Placed, PipelineError> {
    let prepared = match release {
        Release::Next => m.prepared.next.as_ref().unwrap_or(&m.prepared.current),
        Release::Feature => m.prepared.feature.as_ref().ok_or(PipelineError::NotGiven {
            release: "feature",
            flag: "--feature-manifests",
        })?,
        Release::Current | Release::Broken => &m.prepared.current,
    };
    let mut bundle = prepared.bundle.clone();
    move_namespace(&mut bundle, &m.namespace, namespace);
    Ok(Placed {
        bundle,
        not_deployed: prepared.not_deployed.clone(),
        broken: None,
    })
}

/// Moves every object of namespace `from` to `to`, with what names the
/// namespace: the Namespace object, RoleBinding subjects, and service host
/// names (`svc.from.svc.cluster.local`, `svc.from`).
fn move_namespace(bundle: &mut Bundle, from: &str, to: &str) {
    for o in &mut bundle.objects {
        match o {
            Object::Namespace(n) => {
                n.metadata.name = Some(to.to_string());
            }
            Object::RoleBinding(rb) => {
                for s in rb.subjects.iter_mut().flatten() {
                    if s.namespace.as_deref() == Some(from) {
                        s.namespace = Some(to.to_string());
                    }
                }
            }
            Object::VirtualService(vs) => {
                let rename = |h: &mut String| {
                    if let Some(rest) = h.strip_suffix(&format!(".{from}.svc.cluster.local")) {
                        *h = format!("{rest}.{to}.svc.cluster.local");
                    } else if let Some(rest) = h.strip_suffix(&format!(".{from}")) {
                        *h = format!("{rest}.{to}");
                    }
                };
                vs.spec.hosts.iter_mut().for_each(rename);
                for route in &mut vs.spec.http {
                    for d in &mut route.route {
                        rename(&mut d.destination.host);
                    }
                }
            }
            _ => {}
        }
        let meta = o.metadata_mut();
        if meta.namespace.as_deref() == Some(from) {
            meta.namespace = Some(to.to_string());
        }
    }
}

fn deployments_mut(bundle: &mut Bundle) -> impl Iterator<Item = &mut Deployment> {
    bundle.objects.iter_mut().filter_map(|o| match o {
        Object::Deployment(d) => Some(d),
        _ => None,
    })
}

/// Release N+1 as `kubectl rollout restart` makes it: a changed pod template annotation.
fn restart(bundle: &mut Bundle) {
    let stamp = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "next".into());
    for d in deployments_mut(bundle) {
        if let Some(spec) = d.spec.as_mut() {
            spec.template
                .metadata
                .get_or_insert_with(Default::default)
                .annotations
                .get_or_insert_with(BTreeMap::new)
                .insert(RESTARTED_AT_ANNOTATION.to_string(), stamp.clone());
        }
    }
}

/// The broken release: [`BROKEN_WORKLOAD`]'s image becomes a tag no registry has
/// (on the local substrate, kwok's never-ready stage plays the failing pull).
fn break_release(bundle: &mut Bundle) -> Result<String, PipelineError> {
    let target = deployments_mut(bundle)
        .find(|d| super::checks::app_of(d) == BROKEN_WORKLOAD)
        .ok_or(PipelineError::Release {
            release: "broken",
            why: format!("the pipeline deploys no {BROKEN_WORKLOAD} to break"),
        })?;
    let name = target.metadata.name.clone().unwrap_or_default();
    let spec = target
        .spec
        .as_mut()
        .expect("a rendered Deployment has a spec");
    // The pipeline's own progressDeadlineSeconds stays: it is what the scenario judges.
    spec.template
        .metadata
        .get_or_insert_with(Default::default)
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(
            crate::names::NEVER_READY_ANNOTATION.to_string(),
            "true".to_string(),
        );
    if let Some(pod) = spec.template.spec.as_mut() {
        for c in &mut pod.containers {
            if let Some(image) = c.image.as_mut() {
                *image = ImageRef::parse(image).with_tag(BROKEN_TAG);
            }
        }
    }
    Ok(name)
}

/// Renames objects in the gateway's namespace to `<namespace>-<name>` and points
/// their references (Gateway credentialName, VirtualService gateways) at the new names.
fn isolate_gateway_objects(bundle: &mut Bundle, namespace: &str) {
    let mut renamed: BTreeMap<(String, String), String> = BTreeMap::new();
    for o in &mut bundle.objects {
        let kind = o.kind();
        let meta = o.metadata_mut();
        if meta.namespace.as_deref() == Some(ISTIO_NAMESPACE) {
            let old = meta.name.clone().unwrap_or_default();
            let new = format!("{namespace}-{old}");
            meta.name = Some(new.clone());
            renamed.insert((kind, old), new);
        }
    }
    for o in &mut bundle.objects {
        match o {
            Object::Gateway(g) => {
                for server in &mut g.spec.servers {
                    if let Some(tls) = server.tls.as_mut()
                        && let Some(c) = tls.credential_name.as_mut()
                        && let Some(new) = renamed.get(&("Secret".to_string(), c.clone()))
                    {
                        *c = new.clone();
                    }
                }
            }
            Object::VirtualService(vs) => {
                for g in &mut vs.spec.gateways {
                    let (ns, name) = g.split_once('/').unwrap_or((namespace, g.as_str()));
                    if ns == ISTIO_NAMESPACE
                        && let Some(new) = renamed.get(&("Gateway".to_string(), name.to_string()))
                    {
                        *g = format!("{ISTIO_NAMESPACE}/{new}");
                    }
                }
            }
            _ => {}
        }
    }
}

fn label(bundle: &mut Bundle, namespace: &str, run: &str, release: Release) {
    for o in &mut bundle.objects {
        let labels = o.metadata_mut().labels.get_or_insert_with(BTreeMap::new);
        labels.insert(MANAGED_BY_LABEL.into(), MANAGED_BY_VALUE.into());
        labels.insert(ENVIRONMENT_LABEL.into(), namespace.into());
        labels.insert(RUN_LABEL.into(), run.into());
        labels.insert(SCENARIO_LABEL.into(), namespace.into());
        labels
            .entry(RELEASE_LABEL.into())
            .or_insert_with(|| release.as_str().into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn place(release: Release, overrides: ReferenceOverrides) -> Placed {
        Pipeline::reference()
            .place(release, "cdcheck-ha-1a2b3c", "run1", overrides)
            .unwrap()
    }

    fn images_by_deployment(placed: &Placed) -> BTreeMap<String, String> {
        placed
            .bundle
            .deployments()
            .map(|d| {
                let image = d
                    .spec
                    .as_ref()
                    .unwrap()
                    .template
                    .spec
                    .as_ref()
                    .unwrap()
                    .containers[0]
                    .image
                    .clone()
                    .unwrap();
                (d.metadata.name.clone().unwrap(), image)
            })
            .collect()
    }

    #[test]
    fn feature_images_replace_only_the_feature_deployments_images_of_their_service() {
        let given = vec![(
            "frontend".to_string(),
            "registry.example.com/shop/frontend:pr-7".to_string(),
        )];
        let pipeline = Pipeline::reference().with_feature_images(&given).unwrap();
        let placed = pipeline
            .place(
                Release::Feature,
                "s1",
                "run1",
                ReferenceOverrides::default(),
            )
            .unwrap();
        let images = images_by_deployment(&placed);
        assert_eq!(
            images["frontend-myfeature"],
            "registry.example.com/shop/frontend:pr-7"
        );
        assert!(
            images["frontend"].ends_with("/frontend:v0.10.6"),
            "{images:?}"
        );
        assert!(
            images["adservice-myfeature"].ends_with("/adservice:0.10.6-myfeature"),
            "{images:?}"
        );
        // The current release is untouched.
        let current = pipeline
            .place(
                Release::Current,
                "s1",
                "run1",
                ReferenceOverrides::default(),
            )
            .unwrap();
        assert!(!images_of(&current).contains("pr-7"));

        // A pipeline's own feature manifests: the Deployments they add.
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/pipeline");
        let m = Manifests::load(&dir.join("current"), Some(&dir.join("feature")), None).unwrap();
        let pipeline = Pipeline::Manifests(Box::new(m))
            .with_feature_images(&[("adservice".into(), "reg.example/ads@sha256:abc".into())])
            .unwrap();
        let placed = pipeline
            .place(
                Release::Feature,
                "s1",
                "run1",
                ReferenceOverrides::default(),
            )
            .unwrap();
        let images = images_by_deployment(&placed);
        let changed: Vec<_> = images
            .iter()
            .filter(|(_, i)| i.starts_with("reg.example/"))
            .collect();
        assert_eq!(changed.len(), 1, "{images:?}");
        assert!(changed[0].0.starts_with("adservice-"), "{changed:?}");
    }

    fn images_of(placed: &Placed) -> String {
        format!("{:?}", images_by_deployment(placed))
    }

    #[test]
    fn a_feature_image_of_a_service_the_feature_release_does_not_run_is_refused() {
        let error = Pipeline::reference()
            .with_feature_images(&[("cartservice".into(), "reg/cart:1".into())])
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("--feature-image cartservice=reg/cart:1: no container of the feature Deployments (frontend-myfeature, adservice-myfeature)"),
            "{error}"
        );
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/pipeline");
        let m = Manifests::load(&dir.join("current"), None, None).unwrap();
        let error = Pipeline::Manifests(Box::new(m))
            .with_feature_images(&[("frontend".into(), "reg/f:1".into())])
            .unwrap_err()
            .to_string();
        assert!(error.contains("--feature-manifests"), "{error}");
    }

    #[test]
    fn the_reference_release_lives_in_the_scenario_namespace_and_its_own_gateway_objects() {
        let placed = place(Release::Current, ReferenceOverrides::default());
        for o in &placed.bundle.objects {
            let ns = o.namespace().unwrap_or_default();
            match o.kind().as_str() {
                "Namespace" => assert_eq!(o.name(), "cdcheck-ha-1a2b3c"),
                "Gateway" | "Secret" => {
                    assert_eq!(ns, ISTIO_NAMESPACE);
                    assert!(o.name().starts_with("cdcheck-ha-1a2b3c-"), "{}", o.key());
                }
                _ => assert_eq!(ns, "cdcheck-ha-1a2b3c", "{}", o.key()),
            }
        }
        let gateway = placed
            .bundle
            .find("Gateway", "cdcheck-ha-1a2b3c-ingressgateway");
        let Some(Object::Gateway(g)) = gateway else {
            panic!("no renamed gateway")
        };
        let credential = g.spec.servers[0]
            .tls
            .as_ref()
            .unwrap()
            .credential_name
            .clone();
        assert_eq!(
            credential.as_deref(),
            Some("cdcheck-ha-1a2b3c-cdcheck-ingress-cert")
        );
        let Some(Object::VirtualService(vs)) = placed.bundle.find("VirtualService", "frontend")
        else {
            panic!("no frontend VirtualService")
        };
        assert_eq!(
            vs.spec.gateways,
            ["istio-system/cdcheck-ha-1a2b3c-ingressgateway"]
        );
    }

    #[test]
    fn the_next_release_changes_every_pod_template_and_nothing_else() {
        let current = place(Release::Current, ReferenceOverrides::default());
        let next = place(Release::Next, ReferenceOverrides::default());
        let (a, b): (Vec<_>, Vec<_>) = (
            current.bundle.deployments().collect(),
            next.bundle.deployments().collect(),
        );
        assert_eq!(a.len(), b.len());
        for (a, b) in a.iter().zip(&b) {
            assert_eq!(a.metadata.name, b.metadata.name);
            let ann = b.spec.as_ref().unwrap().template.metadata.as_ref().unwrap();
            assert!(
                ann.annotations
                    .as_ref()
                    .unwrap()
                    .contains_key(RESTARTED_AT_ANNOTATION)
            );
            let mut b = (*b).clone();
            b.spec
                .as_mut()
                .unwrap()
                .template
                .metadata
                .as_mut()
                .unwrap()
                .annotations
                .as_mut()
                .unwrap()
                .remove(RESTARTED_AT_ANNOTATION);
            let strip = |d: &Deployment| {
                let mut d = d.clone();
                d.metadata.labels.as_mut().unwrap().remove(RELEASE_LABEL);
                d
            };
            let (mut x, mut y) = (strip(a), strip(&b));
            for d in [&mut x, &mut y] {
                let m = d.spec.as_mut().unwrap().template.metadata.as_mut().unwrap();
                if m.annotations.as_ref().is_some_and(|a| a.is_empty()) {
                    m.annotations = None;
                }
            }
            assert_eq!(x, y);
        }
    }

    #[test]
    fn the_broken_release_breaks_only_the_frontend_with_a_short_deadline() {
        let broken = place(Release::Broken, ReferenceOverrides::default());
        for d in broken.bundle.deployments() {
            let spec = d.spec.as_ref().unwrap();
            let image = spec.template.spec.as_ref().unwrap().containers[0]
                .image
                .clone()
                .unwrap();
            if d.metadata.name.as_deref() == Some("frontend") {
                assert!(image.ends_with(&format!(":{BROKEN_TAG}")), "{image}");
                assert_eq!(
                    spec.progress_deadline_seconds,
                    Some(crate::manifests::workload::PROGRESS_DEADLINE_SECONDS),
                    "the broken release keeps the pipeline's own deadline"
                );
            } else {
                assert!(!image.contains(BROKEN_TAG), "{image}");
            }
        }
    }

    #[test]
    fn a_blue_green_next_release_has_new_deployment_names() {
        let bg = ReferenceOverrides {
            strategy: Some(Strategy::Bluegreen),
        };
        let current = place(Release::Current, bg);
        let next = place(Release::Next, bg);
        let names = |p: &Placed| -> Vec<String> {
            p.bundle
                .deployments()
                .map(|d| d.metadata.name.clone().unwrap())
                .collect()
        };
        let (a, b) = (names(&current), names(&next));
        assert!(a.iter().any(|n| n.starts_with("frontend-")), "{a:?}");
        assert!(
            a.iter().all(|n| !b.contains(n) || n == "redis-cart"),
            "{a:?} {b:?}"
        );
    }
}
