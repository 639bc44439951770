//! The config stream client: the proxy's side of the controller's `ConfigDiscovery`. It says
//! what it already holds, applies each update only if the result is a valid config (else it
//! NACKs with the reason and keeps the last good one), ACKs what it applied, and reconnects with
//! backoff when the controller is away, serving its last good config all along.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, mpsc, oneshot};
use tracing::{error, info, warn};
use weft_core::api::{self, Resources, v1};
use weft_core::config::State;
use weft_core::identity::{SpiffeId, TrustBundle};

use crate::inputs::Inputs;

/// Where the controller is and how to prove who we are.
#[derive(Clone, Debug)]
pub(crate) struct ControllerSettings {
    pub(crate) addr: SocketAddr,
    /// File holding this node's credential (re-read on every connect: it may be rotated).
    pub(crate) credential_file: PathBuf,
    /// The identity the controller must prove.
    pub(crate) identity: SpiffeId,
}

/// Why a stream ended.
#[derive(Debug, thiserror::Error)]
enum StreamError {
    #[error("reading the node credential {path}: {source}")]
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

/// Runs until the process ends. `changed` and `cert_changed` are notified after every applied
/// update; `first` is sent once, after the first.
pub(crate) async fn run(
    inputs: Arc<Inputs>,
    settings: ControllerSettings,
    changed: Arc<Notify>,
    first: oneshot::Sender<()>,
    cert_changed: Arc<Notify>,
) {
    let mut held = Resources::new();
    let mut first = Some(first);
    let mut backoff = Duration::from_millis(100);
    loop {
        let applied_before = held.clone();
        let result = session(
            &inputs,
            &settings,
            &mut held,
            &[&changed, &cert_changed],
            &mut first,
        )
        .await;
        if let Err(e) = result {
            warn!(controller = %settings.addr, error = %e, retry_in = ?backoff, "config stream down; serving the last good config");
        }
        if held != applied_before {
            backoff = Duration::from_millis(100);
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

async fn session(
    inputs: &Inputs,
    settings: &ControllerSettings,
    held: &mut Resources,
    changed: &[&Notify],
    first: &mut Option<oneshot::Sender<()>>,
) -> Result<(), StreamError> {
    let token = std::fs::read_to_string(&settings.credential_file).map_err(|source| {
        StreamError::Credential {
            path: settings.credential_file.display().to_string(),
            source,
        }
    })?;
    let bundle = TrustBundle::load(&inputs.config.trust_bundle)
        .map_err(|e| StreamError::Bundle(e.to_string()))?;
    let channel = weft_core::control::channel(settings.addr, settings.identity.clone(), &bundle)
        .map_err(|e| StreamError::Bundle(e.to_string()))?;
    // A full push to a new proxy carries the whole mesh: allow large messages.
    let mut client = v1::config_discovery_client::ConfigDiscoveryClient::new(channel)
        .max_decoding_message_size(256 * 1024 * 1024);

    let (tx, rx) = mpsc::channel(4);
    let known: std::collections::HashMap<String, String> = held
        .values()
        .map(|r| (r.name.clone(), r.version.clone()))
        .collect();
    let _ = tx
        .send(v1::ConfigRequest {
            node: inputs.config.node.clone(),
            known,
            ..Default::default()
        })
        .await;
    let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    let bearer = format!("Bearer {}", token.trim());
    request.metadata_mut().insert(
        api::AUTHORIZATION,
        bearer.parse().map_err(|_| {
            StreamError::Bundle("the node credential is not valid header text".into())
        })?,
    );
    let mut updates = client.stream(request).await?.into_inner();
    info!(controller = %settings.addr, held = held.len(), "config stream open");
    while let Some(update) = updates.message().await? {
        let mut next: BTreeMap<String, v1::Resource> = held.clone();
        for name in &update.removed {
            next.remove(name);
        }
        let count = update.resources.len();
        for resource in update.resources {
            next.insert(resource.name.clone(), resource);
        }
        let error = match api::to_mesh(&next).map_err(|e| e.to_string()).and_then(
            |(mesh, bundle)| {
                adopt_bundle(&inputs.config.trust_bundle, &bundle)?;
                Ok(mesh)
            },
        ) {
            Ok(mesh) => {
                info!(nonce = %update.nonce, changed = count, removed = update.removed.len(), workloads = mesh.workloads.len(), services = mesh.services.len(), "config update applied");
                inputs.state.store(Arc::new(State::new(mesh)));
                *held = next;
                for notify in changed {
                    notify.notify_one();
                }
                if let Some(first) = first.take() {
                    let _ = first.send(());
                }
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

/// The trust bundle travels with the config: a valid one that differs from the file the proxy
/// verifies peers with replaces it (atomically; the certificate store reloads on change). An
/// unusable one refuses the whole update.
fn adopt_bundle(path: &std::path::Path, pem: &str) -> Result<(), String> {
    if pem.trim().is_empty() {
        // A controller that sends no bundle leaves the bootstrap bundle in charge.
        return Ok(());
    }
    TrustBundle::from_pem("the config stream's trust bundle", pem).map_err(|e| e.to_string())?;
    if std::fs::read_to_string(path).ok().as_deref() == Some(pem) {
        return Ok(());
    }
    crate::ca_client::write(path, pem, 0o644).map_err(|e| e.to_string())?;
    info!(path = %path.display(), "trust bundle updated from the controller");
    Ok(())
}
