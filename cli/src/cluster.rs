//! What the commands ask the cluster and the controller: nodes, permissions, waypoint
//! Gateways, and the controller's admin endpoint.

use std::net::SocketAddr;

use anyhow::{Context, Result};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::api::{DynamicObject, ListParams, PostParams};
use weft_controller::model::policy::PolicyKind;

/// A client from the kubeconfig (`KUBECONFIG`, or `~/.kube/config`).
pub(crate) async fn client() -> Result<kube::Client> {
    kube::Client::try_default()
        .await
        .context("no cluster: the kubeconfig (KUBECONFIG or ~/.kube/config) could not be used")
}

/// GET `path` on the controller's admin endpoint, as JSON.
pub(crate) async fn admin_json(admin: SocketAddr, path: &str) -> Result<serde_json::Value> {
    let path = path.to_owned();
    let (status, body) = tokio::task::spawn_blocking(move || {
        weft_testbed::http_get_in(std::path::Path::new("/proc/self/ns/net"), admin, &path)
    })
    .await??;
    anyhow::ensure!(status == 200, "HTTP {status}: {}", body.trim());
    serde_json::from_str(&body).context("not JSON")
}

/// Nodes, by name.
pub(crate) async fn nodes(client: &kube::Client) -> Vec<String> {
    let api: Api<Node> = Api::all(client.clone());
    api.list(&ListParams::default())
        .await
        .map(|l| {
            l.items
                .into_iter()
                .filter_map(|n| n.metadata.name)
                .collect()
        })
        .unwrap_or_default()
}

/// Whether the current user may `verb` `resource` (SelfSubjectAccessReview).
pub(crate) async fn may(
    client: &kube::Client,
    verb: &str,
    group: &str,
    resource: &str,
) -> Result<bool> {
    let api: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    let review = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                verb: Some(verb.into()),
                group: Some(group.into()),
                resource: Some(resource.into()),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let answer = api.create(&PostParams::default(), &review).await?;
    Ok(answer.status.is_some_and(|s| s.allowed))
}

/// Gateway API Gateways, in `namespace` or all.
pub(crate) fn gateways(client: &kube::Client, namespace: Option<&str>) -> Api<DynamicObject> {
    let api = PolicyKind::Gateway.api();
    let resource = kube::api::ApiResource {
        group: api.group.into(),
        version: api.version.into(),
        api_version: format!("{}/{}", api.group, api.version),
        kind: "Gateway".into(),
        plural: api.plural.into(),
    };
    match namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
        None => Api::all_with(client.clone(), &resource),
    }
}

/// Gateways of class `weft-waypoint`, as dynamic objects.
pub(crate) async fn waypoint_gateways(client: &kube::Client) -> Result<Vec<DynamicObject>> {
    Ok(gateways(client, None)
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|g| g.data["spec"]["gatewayClassName"] == "weft-waypoint")
        .collect())
}
