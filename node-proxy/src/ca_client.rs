//! The node proxy's certificates: the shared CA client (`weft_core::ca_client`) asked for the
//! identities of the enrolled workloads on this node.

use std::collections::BTreeSet;
use std::sync::Arc;

use weft_core::ca_client::{self, CaSettings};
use weft_core::config::Protocol;
use weft_core::identity::SpiffeId;

use crate::inputs::Inputs;
use crate::xds::ControllerSettings;

/// Runs until the process ends.
pub(crate) async fn run(
    inputs: Arc<Inputs>,
    settings: ControllerSettings,
    changed: Arc<tokio::sync::Notify>,
) {
    let ca = CaSettings {
        addr: settings.addr,
        credential_file: settings.credential_file,
        controller: settings.identity,
        cert_dir: inputs.config.cert_dir.clone(),
        trust_bundle: inputs.config.trust_bundle.clone(),
    };
    let wanted = move || -> BTreeSet<SpiffeId> {
        let state = inputs.state.load();
        state
            .workloads_on(&inputs.config.node)
            .filter(|w| w.protocol == Protocol::Hbone)
            .map(|w| state.identity(w))
            .collect()
    };
    ca_client::run(ca, wanted, changed).await;
}
