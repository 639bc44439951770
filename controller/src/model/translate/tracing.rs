//! Which tracing each waypoint runs, from the users' tracing config, widest scope first:
//! Linkerd's `linkerd-config`, an IstioOperator, a Telemetry in the root namespace, a Telemetry
//! in the waypoint's namespace. A narrower scope overrides what it sets (collector, rate, or
//! turning tracing off) and keeps the rest. A Telemetry's providers are the names an
//! IstioOperator's `meshConfig.extensionProviders` define. No collector named: no tracing.

use weft_core::mesh::Tracing;

use super::common::ROOT_NAMESPACES;
use crate::model::objects::Objects;
use crate::model::policy::tracing_config::{Collector, TracingSettings};
use crate::model::policy::{Policy, PolicyKind, PolicySpec};

/// The share of new traces sampled when a collector is named but no rate (Istio's default).
pub const DEFAULT_SAMPLING_PERCENT: f64 = 1.0;

/// The object of each kind that is read mesh-wide: the first by namespace and name.
fn first_of(objects: &Objects, kind: PolicyKind) -> Option<&Policy> {
    objects
        .policies
        .iter()
        .find(|((k, _), _)| *k == kind)
        .map(|(_, p)| p)
}

/// The Telemetry read for `namespace`: the first by name that targets no particular workload
/// and has an unconditional tracing rule.
fn telemetry_in<'a>(
    objects: &'a Objects,
    namespace: &str,
) -> Option<(&'a Policy, TracingSettings)> {
    objects.policies.values().find_map(|p| match &p.spec {
        PolicySpec::Telemetry(t) if p.key.namespace == namespace => Some((p, t.tracing()?)),
        _ => None,
    })
}

/// The extension providers the IstioOperators define, by name (the first definition wins).
fn provider(objects: &Objects, name: &str) -> Option<Collector> {
    objects.policies.values().find_map(|p| match &p.spec {
        PolicySpec::IstioOperator(o) => o.providers.get(name).cloned(),
        _ => None,
    })
}

/// The scopes that apply to `namespace`'s waypoints, widest first.
fn layers<'a>(objects: &'a Objects, namespace: &str) -> Vec<(&'a Policy, TracingSettings)> {
    let mut out = Vec::new();
    for kind in [PolicyKind::LinkerdConfig, PolicyKind::IstioOperator] {
        if let Some(p) = first_of(objects, kind) {
            let settings = match &p.spec {
                PolicySpec::LinkerdConfig(l) => l.tracing.clone(),
                PolicySpec::IstioOperator(o) => o.tracing.clone(),
                _ => continue,
            };
            out.push((p, settings));
        }
    }
    if let Some(root) = ROOT_NAMESPACES
        .iter()
        .find_map(|ns| telemetry_in(objects, ns))
    {
        out.push(root);
    }
    if !ROOT_NAMESPACES.contains(&namespace)
        && let Some(local) = telemetry_in(objects, namespace)
    {
        out.push(local);
    }
    out
}

/// The tracing of the waypoints in `namespace`.
pub fn tracing_for(objects: &Objects, namespace: &str) -> Option<Tracing> {
    let mut disabled = false;
    let mut collector: Option<Collector> = None;
    let mut sampling = None;
    let mut sources = Vec::new();
    for (policy, layer) in layers(objects, namespace) {
        let named = layer
            .collector
            .clone()
            .or_else(|| layer.providers.iter().find_map(|n| provider(objects, n)));
        if layer.disabled {
            disabled = true;
        } else if named.is_some() {
            disabled = false;
        }
        if named.is_some() || layer.sampling_percent.is_some() || layer.disabled {
            sources.push(policy.describe());
        }
        collector = named.or(collector);
        sampling = layer.sampling_percent.or(sampling);
    }
    if disabled {
        return None;
    }
    Some(Tracing {
        collector: collector?.to_string(),
        sampling_percent: sampling.unwrap_or(DEFAULT_SAMPLING_PERCENT),
        source: sources.join(", "),
    })
}

/// What a tracing object cannot do among the others: a provider no IstioOperator defines, a
/// second mesh-wide object of a kind (only the first is read), a rate with no collector.
pub fn tracing_findings(objects: &Objects, policy: &Policy) -> Vec<String> {
    let mut out = Vec::new();
    let mesh_wide = matches!(
        policy.kind,
        PolicyKind::IstioOperator | PolicyKind::LinkerdConfig
    );
    if mesh_wide
        && let Some(first) = first_of(objects, policy.kind)
        && first.key != policy.key
    {
        out.push(format!(
            "metadata.name: {} already sets the mesh's tracing; this one is not read",
            first.describe()
        ));
        return out;
    }
    let settings = match &policy.spec {
        PolicySpec::Telemetry(t) => {
            let Some(settings) = t.tracing() else {
                return out;
            };
            let read = telemetry_in(objects, &policy.key.namespace)
                .is_some_and(|(p, _)| p.key == policy.key);
            if !read {
                out.push(format!(
                    "metadata.name: another Telemetry in {} is read for it (the first by name)",
                    policy.key.namespace
                ));
                return out;
            }
            for (i, name) in settings.providers.iter().enumerate() {
                if provider(objects, name).is_none() {
                    out.push(format!(
                        "spec.tracing.providers[{i}]: no IstioOperator defines the provider {name:?} (meshConfig.extensionProviders with zipkin or opentelemetry): spans do not go to it"
                    ));
                }
            }
            settings
        }
        PolicySpec::IstioOperator(o) => o.tracing.clone(),
        PolicySpec::LinkerdConfig(l) => l.tracing.clone(),
        _ => return out,
    };
    let names_one = settings.collector.is_some()
        || settings
            .providers
            .iter()
            .any(|n| provider(objects, n).is_some());
    let namespace = if mesh_wide {
        ROOT_NAMESPACES[0]
    } else {
        policy.key.namespace.as_str()
    };
    if !settings.disabled && !names_one && tracing_for(objects, namespace).is_none() {
        out.push(
            "spec: no collector is named here or in a wider scope (IstioOperator, linkerd-config, a Telemetry in the root namespace): nothing is traced".into(),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn objects(docs: &str) -> Objects {
        let (objects, errors) =
            crate::source::manifests::parse_file(std::path::Path::new("t.yaml"), docs);
        assert!(errors.is_empty(), "{errors:?}");
        objects.into_iter().collect()
    }

    const GUIDE_ISTIO: &str = r#"
apiVersion: install.istio.io/v1alpha1
kind: IstioOperator
metadata:
  name: istio-operator
  namespace: istio-system
spec:
  profile: default
  values:
    tracing:
      enabled: true
      sampling: 10.0
      provider: jaeger
      jaeger:
        enabled: false
        agentHost: jaeger-collector.istio-system
        agentPort: 6831
"#;

    const GUIDE_LINKERD: &str = r#"
apiVersion: v1
kind: ConfigMap
metadata:
  name: linkerd-config
  namespace: linkerd
data:
  config.yaml: |-
    profiler:
      enabled: true
    traceCollector:
      host: collector.linkerd-jaeger
      port: 9411
    sampling: 1.0
"#;

    #[test]
    fn the_guides_istio_tracing_goes_to_the_jaeger_hosts_zipkin_port_at_ten_percent() {
        let o = objects(GUIDE_ISTIO);
        let t = tracing_for(&o, "bookinfo").expect("traced");
        assert_eq!(t.collector, "zipkin:jaeger-collector.istio-system:9411");
        assert_eq!(t.sampling_percent, 10.0);
        assert_eq!(t.source, "IstioOperator istio-system/istio-operator");
        let p = o.policies.values().next().expect("one");
        assert!(
            p.notes.iter().any(|n| n.starts_with(
                "spec.values.tracing.jaeger.agentPort: 6831 is the Jaeger agent's UDP port"
            )),
            "{:?}",
            p.notes
        );
        assert!(p.notes.iter().any(|n| n.starts_with("spec.profile:")));
    }

    #[test]
    fn the_guides_linkerd_config_samples_every_trace_into_zipkin() {
        let o = objects(GUIDE_LINKERD);
        let t = tracing_for(&o, "emojivoto").expect("traced");
        assert_eq!(t.collector, "zipkin:collector.linkerd-jaeger:9411");
        assert_eq!(t.sampling_percent, 100.0);
        let p = o.policies.values().next().expect("one");
        assert_eq!(p.kind, PolicyKind::LinkerdConfig);
        assert!(
            p.notes
                .iter()
                .any(|n| n.starts_with("data[config.yaml].profiler:")),
            "{:?}",
            p.notes
        );
    }

    #[test]
    fn telemetry_overrides_the_rate_per_namespace_and_names_providers() {
        let o = objects(&format!(
            r#"{GUIDE_ISTIO}
---
apiVersion: install.istio.io/v1alpha1
kind: IstioOperator
metadata: {{name: second, namespace: istio-system}}
spec:
  meshConfig:
    extensionProviders:
    - name: otel
      opentelemetry: {{service: opentelemetry-collector.observability.svc.cluster.local, port: 4317}}
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {{name: mesh-default, namespace: istio-system}}
spec:
  tracing:
  - randomSamplingPercentage: 50
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {{name: shop, namespace: shop}}
spec:
  tracing:
  - providers: [{{name: otel}}]
    randomSamplingPercentage: 100
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {{name: quiet, namespace: quiet}}
spec:
  tracing:
  - disableSpanReporting: true
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {{name: picky, namespace: picky}}
spec:
  selector: {{matchLabels: {{app: web}}}}
  tracing:
  - randomSamplingPercentage: 0
"#
        ));
        let mesh = tracing_for(&o, "default").expect("traced");
        assert_eq!(
            (mesh.collector.as_str(), mesh.sampling_percent),
            ("zipkin:jaeger-collector.istio-system:9411", 50.0)
        );
        let shop = tracing_for(&o, "shop").expect("traced");
        assert_eq!(
            (shop.collector.as_str(), shop.sampling_percent),
            (
                "otlp-grpc:opentelemetry-collector.observability.svc.cluster.local:4317",
                100.0
            )
        );
        assert!(
            shop.source.ends_with("Telemetry shop/shop"),
            "{}",
            shop.source
        );
        assert_eq!(tracing_for(&o, "quiet"), None);
        // A selector is not honoured: the namespace gets the mesh's tracing.
        assert_eq!(
            tracing_for(&o, "picky").map(|t| t.sampling_percent),
            Some(50.0)
        );
        let second = o
            .policies
            .values()
            .find(|p| p.key.name == "second")
            .expect("second");
        assert!(tracing_findings(&o, second)[0].contains("already sets the mesh's tracing"));
    }

    #[test]
    fn no_collector_means_no_tracing_and_a_finding() {
        let o = objects(
            r#"
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: mesh-default, namespace: istio-system}
spec:
  tracing:
  - providers: [{name: zipkin}]
    randomSamplingPercentage: 100
"#,
        );
        assert_eq!(tracing_for(&o, "default"), None);
        let t = o.policies.values().next().expect("one");
        let findings = tracing_findings(&o, t);
        assert!(
            findings
                .iter()
                .any(|f| f.contains("no IstioOperator defines the provider \"zipkin\"")),
            "{findings:?}"
        );
        assert!(
            findings.iter().any(|f| f.contains("nothing is traced")),
            "{findings:?}"
        );
    }

    #[test]
    fn malformed_tracing_is_refused_with_the_field() {
        for (doc, field) in [
            (
                "apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {name: t, namespace: x}\nspec:\n  tracing:\n  - randomSamplingPercentage: 150\n",
                "spec.tracing[0].randomSamplingPercentage",
            ),
            (
                "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: linkerd-config, namespace: linkerd}\ndata:\n  config.yaml: |-\n    sampling: 10\n",
                "data[config.yaml].sampling",
            ),
            (
                "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: linkerd-config, namespace: linkerd}\ndata:\n  config.yaml: |-\n    traceCollector: nohost\n",
                "data[config.yaml].traceCollector",
            ),
            (
                "apiVersion: install.istio.io/v1alpha1\nkind: IstioOperator\nmetadata: {name: o, namespace: istio-system}\nspec:\n  values:\n    tracing:\n      sampling: many\n",
                "spec.values.tracing.sampling",
            ),
        ] {
            let value: serde_yaml::Value = serde_yaml::from_str(doc).expect("yaml");
            let err = crate::source::object::parse_object(&value).expect_err("refused");
            assert!(err.contains(field), "{err} should name {field}");
        }
        // Any other ConfigMap is not Weft's business.
        let other: serde_yaml::Value = serde_yaml::from_str(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: app, namespace: x}\ndata: {a: b}\n",
        )
        .expect("yaml");
        assert!(matches!(
            crate::source::object::parse_object(&other),
            Ok(None)
        ));
    }
}
