//! The node proxy's certificates: the shared CA client (`weft_core::ca_client`) asked for the
//! identities of the enrolled workloads on this node.

use std::collections::BTreeSet;
use std::sync::Arc;

use weft_core::ca_client::{self, CaSettings};
use weft_core::identity::SpiffeId;
use weft_core::mesh::Protocol;

use weft_core::control::ControllerEndpoint;

use crate::proxy::Proxy;

/// Runs until the process ends.
pub(crate) async fn run(
    proxy: Arc<Proxy>,
    controller: ControllerEndpoint,
    changed: Arc<tokio::sync::Notify>,
) {
    let ca = CaSettings {
        controller,
        cert_dir: proxy.config.cert_dir.clone(),
        trust_bundle: proxy.config.trust_bundle.clone(),
    };
    let wanted = move || -> BTreeSet<SpiffeId> {
        let index = proxy.index.load();
        index
            .workloads_on(&proxy.config.node)
            .filter(|w| w.protocol == Protocol::Hbone)
            .map(|w| index.identity(w))
            .collect()
    };
    ca_client::run(ca, wanted, changed).await;
}
