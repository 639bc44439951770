//! The names telemetry reports for a pod (workload, app, version, canonical service and
//! revision), as Istio derives them; an ingress gateway runs under its workload's name too.

use weft_core::mesh::WorkloadMeta;

use crate::model::objects::Pod;

/// The names telemetry reports for a pod, as Istio derives them: the workload is the
/// Deployment behind a ReplicaSet (its name less the pod-template hash) or the owner itself;
/// the canonical service and revision come from the first label present.
pub(crate) fn telemetry_names(pod: &Pod) -> WorkloadMeta {
    let label = |keys: &[&str]| {
        keys.iter()
            .find_map(|k| pod.labels.get(*k).filter(|v| !v.is_empty()))
            .cloned()
            .unwrap_or_default()
    };
    let workload = match &pod.owner {
        Some((kind, name)) if kind == "ReplicaSet" => pod
            .labels
            .get("pod-template-hash")
            .and_then(|hash| name.strip_suffix(&format!("-{hash}")))
            .unwrap_or(name)
            .to_owned(),
        Some((_, name)) => name.clone(),
        None => String::new(),
    };
    WorkloadMeta {
        workload,
        app: label(&["app"]),
        version: label(&["version"]),
        canonical_service: label(&[
            "service.istio.io/canonical-name",
            "app.kubernetes.io/name",
            "app",
        ]),
        canonical_revision: label(&[
            "service.istio.io/canonical-revision",
            "app.kubernetes.io/version",
            "version",
        ]),
    }
}
