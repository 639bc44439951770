//! The config stream client, shared by the node proxy and the waypoint: it says what it
//! already holds, hands each update's resulting config to the caller (which refuses it, and so
//! NACKs with the reason, or applies it), ACKs what was applied, and reconnects with backoff
//! when the controller is away; the caller serves its last good config all along.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::mpsc;
use tracing::{error, info, warn};

use crate::api::{self, Resources, v1};
use crate::control::ControllerEndpoint;
use crate::identity::TrustBundle;
use crate::mesh::MeshConfig;

/// Who streams from which controller.
#[derive(Clone, Debug)]
pub struct StreamSettings {
    /// The controller.
    pub controller: ControllerEndpoint,
    /// The name this client streams as (a node, or `waypoint.<ns>.<name>`).
    pub node: String,
    /// The trust bundle file the controller's certificate is verified with.
    pub trust_bundle: PathBuf,
    /// Facts for operators, sent on the stream's first message (`role`, `version`...).
    pub about: std::collections::HashMap<String, String>,
}

/// Why a stream ended.
#[derive(Debug, thiserror::Error)]
enum StreamError {
    #[error("reading the credential {path}: {source}")]
    Credential {
        path: String,
        source: std::io::Error,
    },
    #[error("trust bundle: {0}")]
    Bundle(String),
    #[error("{0}")]
    Status(#[from] tonic::Status),
    #[error("the controller closed the stream")]
    Closed,
}

/// Follows the controller until the process ends. `apply` gets every update's whole result
/// (config and trust bundle PEM) and returns `Err(reason)` to refuse it.
pub async fn follow<F>(settings: StreamSettings, mut apply: F)
where
    F: FnMut(MeshConfig, String) -> Result<(), String> + Send,
{
    let mut held = Resources::new();
    let mut backoff = Duration::from_millis(100);
    loop {
        let applied_before = held.clone();
        if let Err(e) = session(&settings, &mut held, &mut apply).await {
            warn!(controller = %settings.controller.addr, error = %e, retry_in = ?backoff, "config stream down; serving the last good config");
        }
        if held != applied_before {
            backoff = Duration::from_millis(100);
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

async fn session<F>(
    settings: &StreamSettings,
    held: &mut Resources,
    apply: &mut F,
) -> Result<(), StreamError>
where
    F: FnMut(MeshConfig, String) -> Result<(), String> + Send,
{
    let token =
        std::fs::read_to_string(&settings.controller.credential_file).map_err(|source| {
            StreamError::Credential {
                path: settings.controller.credential_file.display().to_string(),
                source,
            }
        })?;
    let bundle = TrustBundle::load(&settings.trust_bundle)
        .map_err(|e| StreamError::Bundle(e.to_string()))?;
    let channel = crate::control::channel(
        settings.controller.addr,
        settings.controller.identity.clone(),
        &bundle,
    )
    .map_err(|e| StreamError::Bundle(e.to_string()))?;
    // A full push carries the whole mesh: allow large messages.
    let mut client = v1::config_discovery_client::ConfigDiscoveryClient::new(channel)
        .max_decoding_message_size(256 * 1024 * 1024);

    let (tx, rx) = mpsc::channel(4);
    let known: std::collections::HashMap<String, String> = held
        .values()
        .map(|r| (r.name.clone(), r.version.clone()))
        .collect();
    let _ = tx
        .send(v1::ConfigRequest {
            node: settings.node.clone(),
            known,
            about: settings.about.clone(),
            ..Default::default()
        })
        .await;
    let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    let bearer = format!("Bearer {}", token.trim());
    request.metadata_mut().insert(
        api::AUTHORIZATION,
        bearer
            .parse()
            .map_err(|_| StreamError::Bundle("the credential is not valid header text".into()))?,
    );
    let mut updates = client.stream(request).await?.into_inner();
    info!(controller = %settings.controller.addr, held = held.len(), "config stream open");
    while let Some(update) = updates.message().await? {
        let mut next: BTreeMap<String, v1::Resource> = held.clone();
        for name in &update.removed {
            next.remove(name);
        }
        let count = update.resources.len();
        for resource in update.resources {
            next.insert(resource.name.clone(), resource);
        }
        let result = api::to_mesh(&next)
            .map_err(|e| e.to_string())
            .and_then(|(mesh, bundle)| {
                let summary = (
                    mesh.workloads.len(),
                    mesh.services.len(),
                    mesh.waypoints.len(),
                );
                apply(mesh, bundle).map(|()| summary)
            });
        let error = match result {
            Ok((workloads, services, waypoints)) => {
                info!(nonce = %update.nonce, changed = count, removed = update.removed.len(), workloads, services, waypoints, "config update applied");
                *held = next;
                String::new()
            }
            Err(e) => {
                error!(nonce = %update.nonce, error = %e, "config update refused (NACK); keeping the last good config");
                e
            }
        };
        let answer = v1::ConfigRequest {
            response_nonce: update.nonce,
            error,
            ..Default::default()
        };
        if tx.send(answer).await.is_err() {
            break;
        }
    }
    Err(StreamError::Closed)
}

/// The trust bundle travels with the config: a valid one that differs from the file at `path`
/// replaces it atomically (`write` does the writing). An unusable one is an error, so the whole
/// update is refused.
pub fn adopt_bundle(
    path: &std::path::Path,
    pem: &str,
    write: impl FnOnce(&std::path::Path, &str) -> Result<(), String>,
) -> Result<(), String> {
    if pem.trim().is_empty() {
        // A controller that sends no bundle leaves the bootstrap bundle in charge.
        return Ok(());
    }
    TrustBundle::from_pem("the config stream's trust bundle", pem).map_err(|e| e.to_string())?;
    if std::fs::read_to_string(path).ok().as_deref() == Some(pem) {
        return Ok(());
    }
    write(path, pem)?;
    info!(path = %path.display(), "trust bundle updated from the controller");
    Ok(())
}
