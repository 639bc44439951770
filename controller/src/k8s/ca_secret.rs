//! The CA's root and intermediate kept in a Secret (Istio's `cacerts` keys): read by every
//! replica, created only by the leader on first start, never overwritten. An operator who
//! creates the Secret first (plug-in CA) keeps their own root.

use std::path::Path;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PostParams};
use kube::{Client, Error};
use tokio::sync::watch;
use tracing::info;

use crate::ca::{Ca, CaError, CaFiles};

/// Why the CA could not come from its Secret.
#[derive(Debug, thiserror::Error)]
pub enum CaSecretError {
    /// The API server refused or failed.
    #[error("CA Secret {0}: {1}")]
    Api(String, Error),
    /// The Secret's contents are unusable.
    #[error(transparent)]
    Ca(#[from] CaError),
}

/// Loads the CA from `namespace/name`; if the Secret does not exist, the leader generates a
/// root and an intermediate and creates it, while followers wait for it to appear.
pub async fn load_or_create(
    client: Client,
    namespace: &str,
    name: &str,
    trust_domain: &str,
    mut leading: watch::Receiver<bool>,
) -> Result<Ca, CaSecretError> {
    let api_client = client.clone();
    let api: Api<Secret> = Api::namespaced(client, namespace);
    let what = format!("{namespace}/{name}");
    let mut last_missing: Option<std::time::Instant> = None;
    let mut since = std::time::Instant::now();
    let origin = Path::new("secret").join(namespace).join(name);
    let mut waiting_logged = false;
    loop {
        let secret = api
            .get_opt(name)
            .await
            .map_err(|e| CaSecretError::Api(what.clone(), e))?;
        if let Some(secret) = secret {
            let files: CaFiles = secret
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
                .collect();
            return Ok(Ca::from_files(&files, &origin, trust_domain)?);
        }
        if *leading.borrow_and_update() {
            let (ca, files) = Ca::generate(trust_domain)?;
            let secret = Secret {
                metadata: ObjectMeta {
                    name: Some(name.to_owned()),
                    labels: Some(
                        [("app.kubernetes.io/part-of".to_owned(), "weft".to_owned())].into(),
                    ),
                    ..ObjectMeta::default()
                },
                type_: Some("Opaque".to_owned()),
                data: Some(
                    files
                        .into_iter()
                        .map(|(k, v)| (k, ByteString(v.into_bytes())))
                        .collect(),
                ),
                ..Secret::default()
            };
            match api.create(&PostParams::default(), &secret).await {
                Ok(_) => {
                    info!(secret = %what, "generated the mesh root and intermediate");
                    return Ok(ca);
                }
                // Another replica created it first: read theirs.
                Err(Error::Api(status)) if status.code == 409 => continue,
                Err(e) => return Err(CaSecretError::Api(what, e)),
            }
        }
        if !waiting_logged {
            info!(secret = %what, "waiting for the leader to create the CA Secret");
            waiting_logged = true;
        }
        // Without its namespace no replica can lead (the Lease lives there too): after a few
        // seconds of waiting, look, and say so plainly every half minute.
        let due = last_missing.map_or(Duration::from_secs(4), |_| Duration::from_secs(30));
        if since.elapsed() >= due {
            since = std::time::Instant::now();
            let namespaces: Api<k8s_openapi::api::core::v1::Namespace> =
                Api::all(api_client.clone());
            let found = tokio::time::timeout(Duration::from_secs(2), namespaces.get_opt(namespace));
            if let Ok(Ok(None)) = found.await {
                tracing::error!(
                    %namespace,
                    "namespace {namespace} does not exist: the controller can neither lead nor keep its CA; install Weft with `kubectl apply --server-side -k deploy/overlays/<overlay>` (it creates the namespace)"
                );
                last_missing = Some(since);
            }
        }
        let changed = tokio::time::timeout(Duration::from_secs(2), leading.changed()).await;
        if let Ok(Err(_)) = changed {
            // The election ended: keep looking for the Secret at the same pace.
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }
}

/// The ConfigMap (in the controller's namespace) holding the root certificate node proxies
/// trust the controller by, as `root-cert.pem`.
pub const ROOT_CONFIG_MAP: &str = "weft-root-cert";

/// Publishes `root_pem` as [`ROOT_CONFIG_MAP`] in `namespace` (server-side apply; every
/// replica applies the same content), retrying until the API server takes it.
pub async fn publish_root(client: Client, namespace: String, root_pem: String) {
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::{Patch, PatchParams};
    let api: Api<ConfigMap> = Api::namespaced(client, &namespace);
    let object = serde_json::json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": ROOT_CONFIG_MAP,
            "labels": {"app.kubernetes.io/managed-by": "weft"},
        },
        "data": {"root-cert.pem": root_pem},
    });
    let params = PatchParams::apply("weft-controller").force();
    let mut delay = Duration::from_millis(500);
    loop {
        match api
            .patch(ROOT_CONFIG_MAP, &params, &Patch::Apply(&object))
            .await
        {
            Ok(_) => {
                info!(configmap = %format!("{namespace}/{ROOT_CONFIG_MAP}"), "root certificate published");
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "publishing the root certificate failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
            }
        }
    }
}
