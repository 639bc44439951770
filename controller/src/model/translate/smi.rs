//! SMI TrafficSplit: the default route's weighted split when its apex is the service.

use weft_core::mesh::WeightedBackend;

use super::backends::Backends;
use super::common::{host_is, service_for};
use crate::model::objects::{Objects, Service};
use crate::model::policy::PolicySpec;

/// The default route's split: a TrafficSplit whose apex is the service, else the service.
pub(crate) fn default_backends(
    objects: &Objects,
    backends: &mut Backends<'_>,
    svc: &Service,
) -> Vec<WeightedBackend> {
    let split = objects.policies.values().find_map(|p| match &p.spec {
        PolicySpec::TrafficSplit(ts) if host_is(&ts.service, &p.key.namespace, svc) => {
            Some((&p.key, &**ts))
        }
        _ => None,
    });
    if let Some((key, ts)) = split {
        let weighted: Vec<WeightedBackend> = ts
            .backends
            .iter()
            .filter_map(|b| {
                let target = service_for(objects, &b.service, &key.namespace)?;
                Some(WeightedBackend {
                    backend: backends.get(target, None),
                    weight: (b.weight.0.max(0.0) * 1000.0).round() as u32,
                })
            })
            .collect();
        if weighted.iter().any(|w| w.weight > 0) {
            return weighted;
        }
    }
    vec![WeightedBackend {
        backend: backends.get(svc, None),
        weight: 1,
    }]
}
