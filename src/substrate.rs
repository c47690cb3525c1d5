//! Provisions the cluster scenarios run against; this module holds the local
//! substrate (a real control plane as local processes, kwok as the kubelets).
//!
//! - [`binaries`]: find or build etcd, kube-apiserver, kube-controller-manager,
//!   kube-scheduler and kwok at the pins of [`crate::versions`].
//! - [`local`]: `up` / `down` / the kubeconfig of the local control plane.
//! - [`istio_crds`]: the embedded Istio CRDs, installed at boot.

pub mod binaries;
pub mod istio_crds;
pub mod local;
mod pki;

pub use binaries::{Binaries, Binary, BinaryError};
pub use local::{LocalError, NEVER_READY_ANNOTATION, Substrate, UpOptions, ZONE_LABEL};
