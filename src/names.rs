//! The names cdcheck shares across modules: its labels and annotations, Istio's namespace,
//! the broken release's tag. The ground floor: it imports nothing of the crate.

/// Every pipeline-rendered object carries it, so a later release prunes what an earlier made.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// The value of [`MANAGED_BY_LABEL`], and of every `cdcheck.io/*-by` label below.
pub const CDCHECK: &str = "cdcheck";

/// The environment a rendered object belongs to.
pub const ENVIRONMENT_LABEL: &str = "cdcheck.io/environment";
/// The release (blue/green colour or revision) a rendered object belongs to.
pub const RELEASE_LABEL: &str = "cdcheck.io/release";

/// Marks every object a run creates, so an interrupted run's leftovers can be found.
pub const RUN_LABEL: &str = "cdcheck.io/run";
/// The scenario namespace an object belongs to (also on its objects in the gateway's namespace).
pub const SCENARIO_LABEL: &str = "cdcheck.io/scenario-namespace";

/// Every namespace cdcheck created on an existing cluster (value [`CDCHECK`]).
pub const OWNED_BY_LABEL: &str = "cdcheck.io/owned-by";
/// The run that created a namespace on an existing cluster (cleaned up together).
pub const OWNED_RUN_LABEL: &str = "cdcheck.io/owner-run";

/// The kind nodes and the containers cdcheck starts (value [`CDCHECK`]), so a leftover is
/// recognised as ours.
pub const CREATED_BY_LABEL: &str = "cdcheck.io/created-by";

/// The sidecar pod the local mesh injects for a pod: the pod it serves.
pub const SIDECAR_FOR_LABEL: &str = "cdcheck.io/sidecar-for";

/// A pod kwok must never make ready (the broken release on the plain local substrate);
/// `src/substrate/kwok-stages.yaml` matches it by this name.
pub const NEVER_READY_ANNOTATION: &str = "cdcheck.io/kwok-never-ready";

/// The image tag of the broken release: no registry has it, so its pods never become ready
/// (the local mesh's stand-ins refuse to serve at it, as a missing image would).
pub const BROKEN_TAG: &str = "cdcheck-broken-never-ready";

/// Istio's control plane, its ingress gateway, and the gateway's certificate Secrets.
pub const ISTIO_NAMESPACE: &str = "istio-system";

/// The local substrate's pod range (kwok's `--cidr`): the mesh's own namespace holds its
/// first /24, and each pod an address from 10.244.1.0 on.
pub const POD_CIDR: &str = "10.244.0.0/16";

/// The local substrate's Service range (the API server's `--service-cluster-ip-range`): the
/// mesh routes these virtual addresses to the Services' endpoints, as kube-proxy does.
pub const SERVICE_CIDR: &str = "10.96.0.0/16";
