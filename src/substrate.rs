//! Provisions the cluster scenarios run against: the local substrate (a real control
//! plane as local processes, kwok as the kubelets), kind with Istio, or an existing cluster.
//!
//! - [`binaries`]: find or build etcd, kube-apiserver, kube-controller-manager,
//!   kube-scheduler and kwok at the pins of [`crate::versions`].
//! - [`local`]: `up` / `down` / the kubeconfig of the local control plane.
//! - [`istio_crds`]: the embedded Istio CRDs, installed at boot.
//! - [`host`]: the machine behind a trait (commands, files, free disk), for plans and preflight.
//! - [`doctor`]: the kind substrate's preflight (`cdcheck doctor`).
//! - [`kind`]: the kind substrate as a plan of commands, its fingerprint and reuse rule.
//! - [`tools`]: `substrate install --substrate kind`: kind from the Go module proxy, nothing unverified.
//! - [`containers`]: container-side helpers through testcontainers (the local registry of feature images).
//! - [`existing`]: a cluster of the user's: the Istio check and namespaces labelled as cdcheck's.

pub mod binaries;
pub mod containers;
pub mod doctor;
pub mod existing;
pub mod host;
pub mod istio_crds;
pub mod kind;
pub mod local;
mod pki;
pub mod tools;

pub use binaries::{Binaries, Binary, BinaryError};
pub use local::{LocalError, NEVER_READY_ANNOTATION, Substrate, UpOptions, ZONE_LABEL};
