//! The Deployments of a rendered bundle and their application container, to read or edit in
//! tests.
#![allow(dead_code)]

use cdcheck::manifests::{Bundle, Object};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Container;

/// The bundle's Deployment `name`.
pub fn deployment<'a>(bundle: &'a Bundle, name: &str) -> &'a Deployment {
    match bundle.find("Deployment", name) {
        Some(Object::Deployment(d)) => d,
        _ => panic!("no Deployment {name} in the bundle"),
    }
}

/// The bundle's Deployment `name`, to edit.
pub fn deployment_mut<'a>(bundle: &'a mut Bundle, name: &str) -> &'a mut Deployment {
    bundle
        .objects
        .iter_mut()
        .find_map(|o| match o {
            Object::Deployment(d) if d.metadata.name.as_deref() == Some(name) => Some(d),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no Deployment {name} in the bundle"))
}

/// The Deployment's first container: the application (a sidecar is injected later).
pub fn first_container(deployment: &Deployment) -> &Container {
    let spec = deployment.spec.as_ref().expect("a Deployment spec");
    let pod = spec.template.spec.as_ref().expect("a pod spec");
    &pod.containers[0]
}

/// [`first_container`], to edit.
pub fn first_container_mut(deployment: &mut Deployment) -> &mut Container {
    let spec = deployment.spec.as_mut().expect("a Deployment spec");
    let pod = spec.template.spec.as_mut().expect("a pod spec");
    &mut pod.containers[0]
}
