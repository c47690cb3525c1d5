//! The Istio 1.30.3 CRDs (embedded from `fixtures/`), installed so the API
//! server validates Gateway and VirtualService objects with Istio's own schemas.

use std::time::Duration;

use ::kube::api::{Api, Patch, PatchParams};
use ::kube::runtime::wait::{await_condition, conditions};
use ::kube::{Client, ResourceExt};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;

/// `crd-all.gen.yaml` of Istio 1.30.3 (provenance next to the file).
pub const CRD_YAML: &str = include_str!("../../fixtures/istio-1.30.3-crd-all.gen.yaml");

/// The one field manager, defined in [`crate::kube`].
pub use crate::kube::FIELD_MANAGER;

#[derive(Debug, thiserror::Error)]
pub enum CrdError {
    #[error("parse the embedded Istio CRDs")]
    Parse(#[source] serde_json::Error),
    #[error("parse the embedded Istio CRDs as YAML: {0}")]
    Yaml(String),
    #[error("apply CRD {name}")]
    Apply {
        name: String,
        #[source]
        source: ::kube::Error,
    },
    #[error("wait for CRD {name} to become Established within {timeout:?}")]
    NotEstablished { name: String, timeout: Duration },
}

/// The embedded CRDs, parsed.
pub fn crds() -> Result<Vec<CustomResourceDefinition>, CrdError> {
    let docs: Vec<serde_json::Value> =
        serde_saphyr::from_multiple(CRD_YAML).map_err(|e| CrdError::Yaml(e.to_string()))?;
    docs.into_iter()
        .filter(|d| !d.is_null())
        .map(|d| serde_json::from_value(d).map_err(CrdError::Parse))
        .collect()
}

/// Applies every Istio CRD and waits until each is Established.
pub async fn install(client: &Client, timeout: Duration) -> Result<Vec<String>, CrdError> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crds = crds()?;
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let applies = crds.iter().map(|crd| {
        let api = api.clone();
        let params = params.clone();
        async move {
            let name = crd.name_any();
            let mut crd = crd.clone();
            crd.metadata.managed_fields = None;
            api.patch(&name, &params, &Patch::Apply(&crd))
                .await
                .map_err(|source| CrdError::Apply {
                    name: name.clone(),
                    source,
                })?;
            let established = await_condition(api, &name, conditions::is_crd_established());
            match tokio::time::timeout(timeout, established).await {
                Ok(Ok(_)) => Ok(name),
                _ => Err(CrdError::NotEstablished { name, timeout }),
            }
        }
    });
    futures::future::try_join_all(applies).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_crds_include_gateway_and_virtualservice() {
        let names: Vec<String> = crds().unwrap().iter().map(|c| c.name_any()).collect();
        assert!(names.contains(&"gateways.networking.istio.io".to_string()));
        assert!(names.contains(&"virtualservices.networking.istio.io".to_string()));
        assert_eq!(names.len(), 15, "{names:?}");
    }
}
