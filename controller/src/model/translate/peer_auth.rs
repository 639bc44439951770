//! Istio's PeerAuthentication: the mTLS mode (and per-port exceptions) each workload takes.

use weft_core::mesh::MtlsPolicy;

use super::common::{ROOT_NAMESPACES, labels_match};
use crate::model::objects::{Objects, Pod};
use crate::model::policy::PolicySpec;
use crate::model::policy::istio::{self, MtlsMode};

/// The PeerAuthentication that decides for `pod`: one selecting it in its namespace, else its
/// namespace's, else the mesh's (root namespace). Among equals, the first by name.
pub fn peer_authentication(objects: &Objects, pod: &Pod) -> (MtlsMode, MtlsPolicy) {
    let mut workload = None;
    let mut namespace = None;
    let mut mesh = None;
    for p in objects.policies.values() {
        let PolicySpec::PeerAuthentication(pa) = &p.spec else {
            continue;
        };
        if p.key.namespace == pod.namespace {
            match &pa.selector {
                Some(sel) if labels_match(&sel.match_labels, &pod.labels) => {
                    workload = workload.or(Some(&**pa));
                }
                Some(_) => {}
                None => namespace = namespace.or(Some(&**pa)),
            }
        } else if ROOT_NAMESPACES.contains(&p.key.namespace.as_str()) && pa.selector.is_none() {
            mesh = mesh.or(Some(&**pa));
        }
    }
    let mode_of = |pa: Option<&istio::PeerAuthenticationSpec>| {
        pa.and_then(|p| p.mtls.as_ref())
            .map(|m| m.mode)
            .filter(|m| *m != MtlsMode::Unset)
    };
    let mode = mode_of(workload)
        .or_else(|| mode_of(namespace))
        .or_else(|| mode_of(mesh))
        .unwrap_or(MtlsMode::Strict);
    let permissive = mode == MtlsMode::Permissive;
    let except_ports = workload
        .map(|pa| {
            pa.port_level_mtls
                .iter()
                .filter(|(_, m)| {
                    let plaintext = matches!(m.mode, MtlsMode::Permissive | MtlsMode::Disable);
                    m.mode != MtlsMode::Unset && plaintext != permissive
                })
                .map(|(port, _)| *port)
                .collect()
        })
        .unwrap_or_default();
    (
        mode,
        MtlsPolicy {
            permissive,
            except_ports,
        },
    )
}
