//! What the controller publishes to the config streams, computed from the objects: the mesh,
//! its resources (versioned, as streams send them) and which waypoint runs as which identity.

use weft_core::identity::SpiffeId;

use super::{Published, WAYPOINT_PREFIX};
use crate::model::{Objects, mesh_config, translate};

/// The publication for `objects`.
pub fn publication(objects: &Objects, trust_domain: &str, root_pem: &str) -> Published {
    let mesh = mesh_config(objects, trust_domain);
    let resources = weft_core::api::resources(&mesh, root_pem);
    let waypoints = translate::running_waypoints(objects)
        .into_iter()
        .chain(translate::running_gateways(objects))
        .map(|w| {
            (
                format!("{WAYPOINT_PREFIX}{}.{}", w.key.namespace, w.key.name),
                SpiffeId::new(trust_domain, &w.pod.namespace, &w.pod.service_account),
            )
        })
        .collect();
    Published {
        mesh,
        resources,
        waypoints,
    }
}
