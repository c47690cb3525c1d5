//! A scenario's namespaces: created for its release (labelled as cdcheck's on an existing
//! cluster), and everything a scenario or a run created deleted when it ends.

use ::kube::api::{Api, DeleteParams, ListParams, PostParams};
use ::kube::{Client, ResourceExt};
use k8s_openapi::api::core::v1::Namespace;

use super::{Abort, ScenarioRun};
use crate::error_chain as chain;
use crate::manifests::{MANAGED_BY_LABEL, MANAGED_BY_VALUE, Object};
use crate::names::{ISTIO_NAMESPACE, RUN_LABEL, SCENARIO_LABEL};
use crate::scenario::pipeline::Placed;

/// Creates the scenario's namespace when the release brings none, labelled as cdcheck's.
pub(super) async fn ensure_namespace(
    run: &mut ScenarioRun<'_>,
    placed: &Placed,
) -> Result<(), Abort> {
    if placed
        .bundle
        .objects
        .iter()
        .any(|o| matches!(o, Object::Namespace(_)))
    {
        return Ok(());
    }
    let api: Api<Namespace> = Api::all(run.cluster.client.clone());
    let ns: Namespace = serde_json::from_value(serde_json::json!({
        "metadata": {"name": run.namespace, "labels": {
            MANAGED_BY_LABEL: MANAGED_BY_VALUE,
            crate::names::OWNED_BY_LABEL: crate::names::CDCHECK,
            RUN_LABEL: run.config.run_id,
            SCENARIO_LABEL: run.namespace,
            "istio-injection": "enabled",
        }}
    }))
    .expect("a namespace object");
    match api.create(&PostParams::default(), &ns).await {
        Ok(_) => Ok(()),
        // Already there: ours only if this run labelled it (an earlier step created
        // it); anyone else's namespace is never used, let alone cleaned up.
        Err(::kube::Error::Api(s)) if s.code == 409 => {
            let existing = api.get_opt(&run.namespace).await.ok().flatten();
            let ours = existing.as_ref().is_some_and(|n| {
                n.labels().get(RUN_LABEL).map(String::as_str) == Some(run.config.run_id.as_str())
            });
            if ours {
                Ok(())
            } else {
                Err(run.error(
                    "namespace",
                    "the scenario's namespace can be created",
                    format!(
                        "namespace {} already exists and this run did not create it: cdcheck leaves it alone",
                        run.namespace
                    ),
                ))
            }
        }
        Err(e) => Err(run.error(
            "namespace",
            "the scenario's namespace can be created",
            chain(&e),
        )),
    }
}

/// Deletes the scenario's namespaces and its objects in the gateway's namespace.
pub async fn cleanup_scenario(client: &Client, namespace: &str) {
    delete_labelled(client, &format!("{SCENARIO_LABEL}={namespace}")).await;
    // Created from the pipeline's own Namespace object, it may carry no label of ours.
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let _ = namespaces.delete(namespace, &DeleteParams::default()).await;
}

/// Deletes every namespace and gateway object of a run (Ctrl-C, a crash of a previous run).
pub async fn cleanup_run(client: &Client, run_id: &str) {
    delete_labelled(client, &format!("{RUN_LABEL}={run_id}")).await;
}

/// Best effort: what cannot be deleted now is left to the next run's clean-up.
pub(super) async fn delete_labelled(client: &Client, selector: &str) {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    if let Ok(list) = namespaces
        .list(&ListParams::default().labels(selector))
        .await
    {
        for ns in list.items {
            let _ = namespaces
                .delete(&ns.name_any(), &DeleteParams::default())
                .await;
        }
    }
    delete_gateway_objects(client, selector).await;
}

pub(super) async fn delete_gateway_objects(client: &Client, selector: &str) {
    use k8s_openapi::api::core::v1::Secret;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ISTIO_NAMESPACE);
    let _ = secrets
        .delete_collection(
            &DeleteParams::default(),
            &ListParams::default().labels(selector),
        )
        .await;
    let gateways: Api<crate::manifests::istio::Gateway> =
        Api::namespaced(client.clone(), ISTIO_NAMESPACE);
    let _ = gateways
        .delete_collection(
            &DeleteParams::default(),
            &ListParams::default().labels(selector),
        )
        .await;
}
