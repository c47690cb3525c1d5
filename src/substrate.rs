//! Provisions the cluster scenarios run against: the local substrate (a real control
//! plane as local processes, kwok as the kubelets), kind with Istio, or an existing cluster.
//!
//! - [`target`]: the one entry: [`SubstrateOptions`] in, a [`Target`] out (cluster, data
//!   plane, capabilities), and [`teardown`]. A new substrate is one file plus one variant.
//! - [`data_plane`]: the gateway's addresses and how in-mesh calls are made.
//! - [`binaries`]: find or build etcd, kube-apiserver, kube-controller-manager,
//!   kube-scheduler and kwok at the pins of [`crate::versions`].
//! - [`boutique`]: Online Boutique's own services, built from upstream's sources for the mesh.
//! - [`local`]: `up` / `down` / the kubeconfig of the local control plane.
//! - [`istio_crds`]: the embedded Istio CRDs, installed at boot.
//! - [`host`]: the machine behind a trait (commands, files, free disk), for plans and preflight.
//! - [`doctor`]: the kind substrate's preflight (`cdcheck doctor`).
//! - [`kind`]: the kind substrate as a plan of commands, its fingerprint and reuse rule.
//! - [`tools`]: `substrate install --substrate kind`: kind from the Go module proxy, nothing unverified.
//! - [`containers`]: container-side helpers through testcontainers (the local registry of feature images).
//! - [`existing`]: a cluster of the user's: the Istio check and namespaces labelled as cdcheck's.

pub mod binaries;
pub mod boutique;
pub mod containers;
pub mod data_plane;
pub mod doctor;
pub mod existing;
pub mod host;
pub mod istio_crds;
pub mod kind;
pub mod local;
mod pki;
pub mod target;
pub mod tools;

pub use binaries::{Binaries, Binary, BinaryError};
pub use data_plane::{DataPlane, InMesh};
pub use local::{LocalError, Substrate, UpOptions, ZONE_LABEL};
pub use target::{
    Capabilities, Cluster, MeshChoice, ProvisionError, SubstrateKind, SubstrateOptions, Target,
    provision, teardown,
};
