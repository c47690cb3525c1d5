//! Deployments, Services, ServiceAccounts and PodDisruptionBudgets from the catalog.
//!
//! One builder serves both renderings: the upstream one (every pipeline option
//! off, compared with upstream's manifests) and the pipeline's (namespace, HA,
//! strategy, feature branches).

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, GRPCAction,
    HTTPGetAction, HTTPHeader, Lifecycle, LifecycleHandler, PodAffinityTerm, PodAntiAffinity,
    PodSecurityContext, PodSpec, PodTemplateSpec, Probe, ResourceRequirements, SecurityContext,
    Service, ServiceAccount, ServicePort, ServiceSpec, SleepAction, TCPSocketAction, Volume,
    VolumeMount, WeightedPodAffinityTerm,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{
    ENVIRONMENT_LABEL, FeatureBranch, MANAGED_BY_LABEL, MANAGED_BY_VALUE, ManifestError, Object,
    Options, RELEASE_LABEL, Strategy,
};
use crate::catalog::{self, ImageSource, ProbeAction, Role, ServiceType, Workload};

/// The pod label every Service and PDB selects on.
pub const APP_LABEL: &str = "app";
/// Banner a frontend feature branch shows, so a response tells which deployment served it.
pub const FEATURE_MESSAGE_ENV: &str = "FRONTEND_MESSAGE";

/// How one Deployment of a workload differs from upstream.
#[derive(Clone, Debug, Default)]
struct Shape {
    /// Deployment name and `app` label (`frontend`, `frontend-myfeature`, `frontend-v0.10.6`'s app stays `frontend`).
    deployment_name: String,
    app: String,
    image_tag: String,
    namespace: Option<String>,
    /// Labels on every object's metadata (not on selectors).
    metadata_labels: BTreeMap<String, String>,
    /// Labels added to the selector and the pod template (blue/green's release).
    selector_extra: BTreeMap<String, String>,
    replicas: Option<i32>,
    strategy: Option<DeploymentStrategy>,
    progress_deadline_seconds: Option<i32>,
    anti_affinity_topology_key: Option<String>,
    pre_stop_delay_seconds: Option<i64>,
    termination_grace_period_seconds: Option<i64>,
    extra_env: Vec<(String, String)>,
}

/// The pipeline's `progressDeadlineSeconds` for every Deployment: a rollout that makes no
/// progress for a minute fails, and the pipeline's deploy step with it.
pub const PROGRESS_DEADLINE_SECONDS: i32 = 60;

/// What upstream's `kubernetes-manifests.yaml` holds for every workload.
pub fn render_upstream() -> Vec<Object> {
    let mut objects = Vec::new();
    for workload in catalog::all() {
        let shape = Shape {
            deployment_name: workload.name.to_string(),
            app: workload.name.to_string(),
            image_tag: crate::versions::ONLINE_BOUTIQUE.to_string(),
            replicas: workload.upstream_replicas,
            termination_grace_period_seconds: workload.termination_grace_period_seconds,
            ..Shape::default()
        };
        objects.push(Object::Deployment(deployment(workload, &shape)));
        for port in workload.services {
            objects.push(Object::Service(service(port, &shape)));
        }
        if workload.service_account {
            objects.push(Object::ServiceAccount(service_account(workload, &shape)));
        }
    }
    objects
}

/// The pipeline's workloads for an environment: mainline, then feature branches.
pub fn render_pipeline(options: &Options) -> Result<Vec<Object>, ManifestError> {
    let mut objects = Vec::new();
    for workload in catalog::all() {
        if workload.role == Role::LoadGenerator && !options.loadgenerator {
            continue;
        }
        let shape = mainline_shape(workload, options);
        if workload.service_account {
            objects.push(Object::ServiceAccount(service_account(workload, &shape)));
        }
        objects.push(Object::Deployment(deployment(workload, &shape)));
        for port in workload.services {
            objects.push(Object::Service(service(port, &shape)));
        }
        if workload.is_stateless() {
            objects.push(Object::PodDisruptionBudget(pod_disruption_budget(
                &shape,
                options.ha.pdb_min_available,
            )));
        }
    }
    for feature in &options.features {
        objects.extend(render_feature(feature, options)?);
    }
    Ok(objects)
}

fn render_feature(
    feature: &FeatureBranch,
    options: &Options,
) -> Result<Vec<Object>, ManifestError> {
    let workload =
        catalog::find(&feature.service).ok_or_else(|| ManifestError::UnknownService {
            name: feature.service.clone(),
            known: catalog::names().join(", "),
        })?;
    let mut shape = mainline_shape(workload, options);
    shape.deployment_name = feature.name();
    shape.app = feature.name();
    shape.image_tag = feature.tag.clone();
    // A feature branch lives beside mainline on its own rollout, whatever the
    // mainline strategy; it never takes over the mainline Service.
    shape.selector_extra.clear();
    if options.strategy == Strategy::Bluegreen {
        shape.strategy = Some(rolling_strategy());
    }
    if workload.name == "frontend" {
        shape.extra_env.push((
            FEATURE_MESSAGE_ENV.to_string(),
            format!("feature branch {}", feature.suffix.trim_start_matches('-')),
        ));
    }
    let mut objects = vec![Object::Deployment(deployment(workload, &shape))];
    // Only the in-cluster Service is branched; frontend-external stays mainline.
    if let Some(port) = workload
        .services
        .iter()
        .find(|p| p.service_type == ServiceType::ClusterIp)
    {
        objects.push(Object::Service(service_named(
            port,
            &feature.name(),
            &shape,
        )));
    }
    if workload.is_stateless() {
        objects.push(Object::PodDisruptionBudget(pod_disruption_budget(
            &shape,
            options.ha.pdb_min_available,
        )));
    }
    Ok(objects)
}

fn rolling_strategy() -> DeploymentStrategy {
    DeploymentStrategy {
        type_: Some("RollingUpdate".to_string()),
        rolling_update: Some(RollingUpdateDeployment {
            max_unavailable: Some(IntOrString::Int(0)),
            max_surge: Some(IntOrString::Int(1)),
        }),
    }
}

fn recreate_strategy() -> DeploymentStrategy {
    DeploymentStrategy {
        type_: Some("Recreate".to_string()),
        rolling_update: None,
    }
}

/// The name of a workload's Deployment under the pipeline's options.
pub fn mainline_deployment_name(workload: &Workload, options: &Options) -> String {
    if options.strategy == Strategy::Bluegreen && workload.is_stateless() {
        format!("{}-{}", workload.name, options.release)
    } else {
        workload.name.to_string()
    }
}

fn mainline_shape(workload: &Workload, options: &Options) -> Shape {
    let metadata_labels = BTreeMap::from([
        (MANAGED_BY_LABEL.to_string(), MANAGED_BY_VALUE.to_string()),
        (ENVIRONMENT_LABEL.to_string(), options.env.clone()),
        (RELEASE_LABEL.to_string(), options.release.clone()),
    ]);
    let mut shape = Shape {
        deployment_name: mainline_deployment_name(workload, options),
        app: workload.name.to_string(),
        image_tag: options.release.clone(),
        namespace: Some(options.env.clone()),
        metadata_labels,
        termination_grace_period_seconds: workload.termination_grace_period_seconds,
        ..Shape::default()
    };
    // A release that makes no progress is reported within a minute, not Kubernetes' ten.
    shape.progress_deadline_seconds = Some(PROGRESS_DEADLINE_SECONDS);
    match workload.role {
        Role::Stateless => {
            shape.replicas = Some(options.ha.replicas);
            shape.anti_affinity_topology_key = Some(options.ha.topology_key.clone());
            shape.pre_stop_delay_seconds = Some(options.ha.pre_stop_delay_seconds);
            shape.termination_grace_period_seconds = Some(
                options
                    .ha
                    .termination_grace_period_seconds()
                    .max(workload.termination_grace_period_seconds.unwrap_or(0)),
            );
            shape.strategy = Some(match options.strategy {
                Strategy::Rolling | Strategy::Bluegreen => rolling_strategy(),
                Strategy::Recreate => recreate_strategy(),
            });
            if options.strategy == Strategy::Bluegreen {
                shape
                    .selector_extra
                    .insert(RELEASE_LABEL.to_string(), options.release.clone());
            }
        }
        // Redis keeps its data in an emptyDir: a surge pod would be a second,
        // empty Redis, so it is replaced in place.
        Role::SingleInstance => {
            shape.replicas = Some(1);
            shape.strategy = Some(recreate_strategy());
        }
        Role::LoadGenerator => {
            shape.replicas = Some(1);
        }
    }
    shape
}

fn object_meta(name: &str, shape: &Shape, app: Option<&str>) -> ObjectMeta {
    let mut labels = BTreeMap::new();
    if let Some(app) = app {
        labels.insert(APP_LABEL.to_string(), app.to_string());
    }
    labels.extend(shape.metadata_labels.clone());
    ObjectMeta {
        name: Some(name.to_string()),
        namespace: shape.namespace.clone(),
        labels: (!labels.is_empty()).then_some(labels),
        ..ObjectMeta::default()
    }
}

fn selector_labels(shape: &Shape) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::from([(APP_LABEL.to_string(), shape.app.clone())]);
    labels.extend(shape.selector_extra.clone());
    labels
}

fn service_account(workload: &Workload, shape: &Shape) -> ServiceAccount {
    ServiceAccount {
        metadata: object_meta(workload.name, shape, None),
        ..ServiceAccount::default()
    }
}

fn service(port: &catalog::ServicePort, shape: &Shape) -> Service {
    service_named(port, port.service_name, shape)
}

fn service_named(port: &catalog::ServicePort, name: &str, shape: &Shape) -> Service {
    Service {
        metadata: object_meta(name, shape, Some(&shape.app)),
        spec: Some(ServiceSpec {
            type_: Some(
                match port.service_type {
                    ServiceType::ClusterIp => "ClusterIP",
                    ServiceType::LoadBalancer => "LoadBalancer",
                }
                .to_string(),
            ),
            selector: Some(selector_labels(shape)),
            ports: Some(vec![ServicePort {
                name: Some(port.port_name.to_string()),
                port: port.port,
                target_port: Some(IntOrString::Int(port.target_port)),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

fn pod_disruption_budget(shape: &Shape, min_available: i32) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: object_meta(&shape.deployment_name, shape, Some(&shape.app)),
        spec: Some(PodDisruptionBudgetSpec {
            min_available: Some(IntOrString::Int(min_available)),
            selector: Some(LabelSelector {
                match_labels: Some(selector_labels(shape)),
                ..LabelSelector::default()
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    }
}

fn quantity(q: &str) -> Quantity {
    Quantity(q.to_string())
}

fn probe(p: &catalog::Probe) -> Probe {
    let mut probe = Probe {
        initial_delay_seconds: p.initial_delay_seconds,
        period_seconds: p.period_seconds,
        ..Probe::default()
    };
    match p.action {
        ProbeAction::Grpc { port } => {
            probe.grpc = Some(GRPCAction {
                port,
                service: None,
            })
        }
        ProbeAction::HttpGet { path, port, cookie } => {
            probe.http_get = Some(HTTPGetAction {
                path: Some(path.to_string()),
                port: IntOrString::Int(port),
                http_headers: Some(vec![HTTPHeader {
                    name: "Cookie".to_string(),
                    value: cookie.to_string(),
                }]),
                ..HTTPGetAction::default()
            })
        }
        ProbeAction::TcpSocket { port } => {
            probe.tcp_socket = Some(TCPSocketAction {
                port: IntOrString::Int(port),
                host: None,
            })
        }
    }
    probe
}

fn restricted_container_security() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".to_string()]),
            add: None,
        }),
        privileged: Some(false),
        read_only_root_filesystem: Some(true),
        ..SecurityContext::default()
    }
}

fn env_vars(pairs: impl IntoIterator<Item = (String, String)>) -> Option<Vec<EnvVar>> {
    let vars: Vec<EnvVar> = pairs
        .into_iter()
        .map(|(name, value)| EnvVar {
            name,
            value: Some(value),
            value_from: None,
        })
        .collect();
    (!vars.is_empty()).then_some(vars)
}

fn deployment(workload: &Workload, shape: &Shape) -> Deployment {
    let selector = selector_labels(shape);
    let image = match workload.image {
        ImageSource::Boutique => workload.image_at(&shape.image_tag),
        ImageSource::Fixed(image) => image.to_string(),
    };
    let env = workload
        .env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .chain(shape.extra_env.iter().cloned());
    let container = Container {
        name: workload.container_name.to_string(),
        image: Some(image),
        ports: workload.container_port.map(|p| {
            vec![ContainerPort {
                container_port: p.port,
                name: p.name.map(str::to_string),
                ..ContainerPort::default()
            }]
        }),
        env: env_vars(env),
        readiness_probe: workload.readiness.as_ref().map(probe),
        liveness_probe: workload.liveness.as_ref().map(probe),
        resources: Some(ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".to_string(), quantity(workload.resources.request_cpu)),
                (
                    "memory".to_string(),
                    quantity(workload.resources.request_memory),
                ),
            ])),
            limits: Some(BTreeMap::from([
                ("cpu".to_string(), quantity(workload.resources.limit_cpu)),
                (
                    "memory".to_string(),
                    quantity(workload.resources.limit_memory),
                ),
            ])),
            ..ResourceRequirements::default()
        }),
        security_context: Some(restricted_container_security()),
        volume_mounts: workload.data_volume.map(|(name, path)| {
            vec![VolumeMount {
                name: name.to_string(),
                mount_path: path.to_string(),
                ..VolumeMount::default()
            }]
        }),
        lifecycle: shape.pre_stop_delay_seconds.map(|seconds| Lifecycle {
            // The images are distroless: the kubelet's sleep action needs no shell.
            pre_stop: Some(LifecycleHandler {
                sleep: Some(SleepAction { seconds }),
                ..LifecycleHandler::default()
            }),
            ..Lifecycle::default()
        }),
        ..Container::default()
    };
    let init_containers = workload.init_container.map(|init| {
        vec![Container {
            name: init.name.to_string(),
            image: Some(init.image.to_string()),
            command: Some(init.command.iter().map(|s| s.to_string()).collect()),
            env: env_vars(init.env.iter().map(|(k, v)| (k.to_string(), v.to_string()))),
            security_context: Some(restricted_container_security()),
            ..Container::default()
        }]
    });
    let affinity = shape
        .anti_affinity_topology_key
        .as_ref()
        .map(|key| Affinity {
            pod_anti_affinity: Some(PodAntiAffinity {
                preferred_during_scheduling_ignored_during_execution: Some(vec![
                    WeightedPodAffinityTerm {
                        weight: 100,
                        pod_affinity_term: PodAffinityTerm {
                            label_selector: Some(LabelSelector {
                                match_labels: Some(BTreeMap::from([(
                                    APP_LABEL.to_string(),
                                    shape.app.clone(),
                                )])),
                                ..LabelSelector::default()
                            }),
                            topology_key: key.clone(),
                            ..PodAffinityTerm::default()
                        },
                    },
                ]),
                ..PodAntiAffinity::default()
            }),
            ..Affinity::default()
        });
    let annotations = workload.rewrite_app_http_probers.then(|| {
        BTreeMap::from([(
            "sidecar.istio.io/rewriteAppHTTPProbers".to_string(),
            "true".to_string(),
        )])
    });
    let mut template_labels = selector.clone();
    template_labels.extend(shape.metadata_labels.clone());
    Deployment {
        metadata: object_meta(&shape.deployment_name, shape, Some(&shape.app)),
        spec: Some(DeploymentSpec {
            replicas: shape.replicas,
            selector: LabelSelector {
                match_labels: Some(selector),
                ..LabelSelector::default()
            },
            strategy: shape.strategy.clone(),
            progress_deadline_seconds: shape.progress_deadline_seconds,
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(template_labels),
                    annotations,
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    service_account_name: workload
                        .service_account
                        .then(|| workload.name.to_string()),
                    termination_grace_period_seconds: shape.termination_grace_period_seconds,
                    restart_policy: workload
                        .explicit_restart_policy
                        .then(|| "Always".to_string()),
                    security_context: Some(PodSecurityContext {
                        fs_group: Some(1000),
                        run_as_group: Some(1000),
                        run_as_non_root: Some(true),
                        run_as_user: Some(1000),
                        ..PodSecurityContext::default()
                    }),
                    affinity,
                    init_containers,
                    containers: vec![container],
                    volumes: workload.data_volume.map(|(name, _)| {
                        vec![Volume {
                            name: name.to_string(),
                            empty_dir: Some(EmptyDirVolumeSource::default()),
                            ..Volume::default()
                        }]
                    }),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    }
}
