//! Istio's Telemetry API (`telemetry.istio.io`), read for its tracing rules: providers by name
//! and `randomSamplingPercentage`. In the root namespace a Telemetry applies mesh-wide;
//! elsewhere, to the waypoints of its namespace.

use serde::Deserialize;

use super::common::{Notes, Unhonoured};
use super::tracing_config::{TracingSettings, percent};

/// `Telemetry.spec` (`telemetry.istio.io`): its tracing rules. In the root namespace it applies
/// mesh-wide; elsewhere, to the waypoints of its namespace.
#[derive(Clone, Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TelemetrySpec {
    /// Not honoured: a Telemetry with a selector is not applied.
    #[serde(default)]
    pub selector: Unhonoured,
    /// Not honoured: a Telemetry with a target is not applied.
    #[serde(default)]
    pub target_ref: Unhonoured,
    /// Not honoured: a Telemetry with targets is not applied.
    #[serde(default)]
    pub target_refs: Unhonoured,
    /// Tracing rules; the first without a `match` is the one read.
    #[serde(default)]
    pub tracing: Vec<TracingRule>,
    /// Not honoured.
    #[serde(default)]
    pub metrics: Unhonoured,
    /// Not honoured.
    #[serde(default)]
    pub access_logging: Unhonoured,
}

/// One tracing rule.
#[derive(Clone, Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TracingRule {
    /// Not honoured (a rule with a match is not applied).
    #[serde(default, rename = "match")]
    pub match_: Unhonoured,
    /// Providers, by their `meshConfig.extensionProviders` name.
    #[serde(default)]
    pub providers: Vec<ProviderRef>,
    /// Percent of new traces sampled.
    #[serde(default)]
    pub random_sampling_percentage: Option<f64>,
    /// True: no spans.
    #[serde(default)]
    pub disable_span_reporting: Option<bool>,
    /// Not honoured.
    #[serde(default)]
    pub custom_tags: Unhonoured,
    /// Not honoured.
    #[serde(default)]
    pub use_request_id_for_trace_sampling: Unhonoured,
    /// Not honoured.
    #[serde(default)]
    pub enable_istio_tags: Unhonoured,
}

/// A provider by name.
#[derive(Clone, Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProviderRef {
    pub name: String,
}

impl TelemetrySpec {
    /// Whether it applies at all (it targets no particular workload).
    pub fn applies(&self) -> bool {
        !(self.selector.is_set() || self.target_ref.is_set() || self.target_refs.is_set())
    }

    /// What its first unconditional rule says.
    pub fn tracing(&self) -> Option<TracingSettings> {
        if !self.applies() {
            return None;
        }
        let rule = self.tracing.iter().find(|r| !r.match_.is_set())?;
        Some(TracingSettings {
            disabled: rule.disable_span_reporting == Some(true),
            collector: None,
            sampling_percent: rule.random_sampling_percentage,
            providers: rule.providers.iter().map(|p| p.name.clone()).collect(),
        })
    }

    /// Checks the rates and reports what Weft does not do.
    pub fn read(&self, notes: &mut Notes) -> Result<(), String> {
        let why = "Weft applies a Telemetry to a whole namespace (or, in the root namespace, the mesh): this one is not applied";
        notes.unhonoured("spec.selector", &self.selector, why);
        notes.unhonoured("spec.targetRef", &self.target_ref, why);
        notes.unhonoured("spec.targetRefs", &self.target_refs, why);
        notes.unhonoured(
            "spec.metrics",
            &self.metrics,
            "metrics are always on, with Istio's names and labels",
        );
        notes.unhonoured(
            "spec.accessLogging",
            &self.access_logging,
            "waypoints log every request; set the format with --log-format",
        );
        for (i, rule) in self.tracing.iter().enumerate() {
            let at = format!("spec.tracing[{i}]");
            if let Some(p) = rule.random_sampling_percentage {
                percent(&format!("{at}.randomSamplingPercentage"), p)?;
            }
            notes.unhonoured(
                &format!("{at}.match"),
                &rule.match_,
                "a rule with a match is not applied; the first without one is",
            );
            notes.unhonoured(
                &format!("{at}.customTags"),
                &rule.custom_tags,
                "spans carry Weft's own attributes",
            );
            notes.unhonoured(
                &format!("{at}.useRequestIdForTraceSampling"),
                &rule.use_request_id_for_trace_sampling,
                "sampling is random",
            );
            notes.unhonoured(
                &format!("{at}.enableIstioTags"),
                &rule.enable_istio_tags,
                "spans carry Weft's own attributes",
            );
            if rule.providers.len() > 1 {
                notes.note(
                    &format!("{at}.providers"),
                    "spans go to the first provider only",
                );
            }
        }
        Ok(())
    }
}
