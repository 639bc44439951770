//! The node proxy's side of the controller's config stream (the shared client is
//! `weft_core::config_client`): each update is validated as a config file would be, its trust bundle
//! adopted, and the new index swapped in; waiting tasks are told.

use std::sync::Arc;

use tokio::sync::{Notify, oneshot};
use weft_core::config_client::{self, StreamSettings};
use weft_core::control::ControllerEndpoint;
use weft_core::mesh::MeshIndex;

use crate::proxy::Proxy;

/// Runs until the process ends. `changed` and `cert_changed` are notified after every applied
/// update; `first` is sent once, after the first.
pub(crate) async fn run(
    proxy: Arc<Proxy>,
    controller: ControllerEndpoint,
    changed: Arc<Notify>,
    first: oneshot::Sender<()>,
    cert_changed: Arc<Notify>,
) {
    let stream = StreamSettings {
        controller,
        node: proxy.config.node.clone(),
        trust_bundle: proxy.config.trust_bundle.clone(),
        about: proxy.capture.about(),
    };
    let mut first = Some(first);
    config_client::follow(stream, move |mesh, bundle| {
        config_client::adopt_bundle(&proxy.config.trust_bundle, &bundle, |path, pem| {
            weft_core::ca_client::write_atomic(path, pem, 0o644).map_err(|e| e.to_string())
        })?;
        proxy.index.store(Arc::new(MeshIndex::new(mesh)));
        changed.notify_one();
        cert_changed.notify_one();
        if let Some(first) = first.take() {
            let _ = first.send(());
        }
        Ok(())
    })
    .await;
}
