//! The node proxy's side of the controller's config stream (the shared client is
//! `weft_core::xds`): each update is validated as a config file would be, its trust bundle
//! adopted, and the new state swapped in; waiting tasks are told.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::{Notify, oneshot};
use weft_core::config::State;
use weft_core::identity::SpiffeId;
use weft_core::xds::{self, StreamSettings};

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

/// Runs until the process ends. `changed` and `cert_changed` are notified after every applied
/// update; `first` is sent once, after the first.
pub(crate) async fn run(
    inputs: Arc<Inputs>,
    settings: ControllerSettings,
    changed: Arc<Notify>,
    first: oneshot::Sender<()>,
    cert_changed: Arc<Notify>,
) {
    let stream = StreamSettings {
        addr: settings.addr,
        credential_file: settings.credential_file,
        identity: settings.identity,
        node: inputs.config.node.clone(),
        trust_bundle: inputs.config.trust_bundle.clone(),
    };
    let mut first = Some(first);
    xds::follow(stream, move |mesh, bundle| {
        xds::adopt_bundle(&inputs.config.trust_bundle, &bundle, |path, pem| {
            weft_core::ca_client::write_atomic(path, pem, 0o644).map_err(|e| e.to_string())
        })?;
        inputs.state.store(Arc::new(State::new(mesh)));
        changed.notify_one();
        cert_changed.notify_one();
        if let Some(first) = first.take() {
            let _ = first.send(());
        }
        Ok(())
    })
    .await;
}
