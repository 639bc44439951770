//! `security.istio.io` PeerAuthentication: mTLS mode per workload, namespace or mesh, and per port.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::model::policy::common::{Notes, Selector};

/// `PeerAuthentication.spec`.
#[derive(Clone, Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PeerAuthenticationSpec {
    /// Workloads it applies to (absent: the namespace, or the mesh in the root namespace).
    #[serde(default)]
    pub selector: Option<Selector>,
    /// The mode.
    #[serde(default)]
    pub mtls: Option<MtlsSpec>,
    /// Modes per workload port (needs a selector).
    #[serde(default, deserialize_with = "port_keys")]
    pub port_level_mtls: BTreeMap<u16, MtlsSpec>,
}

/// A map keyed by port, as YAML writes it (`9090:`) and as the API server sends it (`"9090":`,
/// JSON having string keys only).
fn port_keys<'de, D: serde::Deserializer<'de>>(d: D) -> Result<BTreeMap<u16, MtlsSpec>, D::Error> {
    #[derive(Deserialize, PartialEq, Eq, PartialOrd, Ord)]
    #[serde(untagged)]
    enum Key {
        Number(u16),
        Text(String),
    }
    let raw = BTreeMap::<Key, MtlsSpec>::deserialize(d)?;
    raw.into_iter()
        .map(|(key, spec)| {
            let port = match key {
                Key::Number(port) => port,
                Key::Text(text) => text
                    .trim()
                    .parse()
                    .map_err(|_| serde::de::Error::custom(format!("{text:?} is not a port")))?,
            };
            Ok((port, spec))
        })
        .collect()
}

/// `{mode: STRICT}`.
#[derive(Clone, Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MtlsSpec {
    /// The mode.
    #[serde(default)]
    pub mode: MtlsMode,
}

/// PeerAuthentication modes.
#[derive(
    Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, serde::Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MtlsMode {
    /// Inherit from the parent scope.
    #[default]
    Unset,
    /// mTLS only.
    Strict,
    /// mTLS and plaintext.
    Permissive,
    /// Plaintext only: the workload is plain TCP both ways.
    Disable,
}

impl PeerAuthenticationSpec {
    /// Reports what Weft does not do.
    pub fn notes(&self, notes: &mut Notes) {
        if let Some(s) = &self.selector {
            notes.unhonoured(
                "spec.selector.matchExpressions",
                &s.match_expressions,
                "use matchLabels",
            );
        }
        if !self.port_level_mtls.is_empty() && self.selector.is_none() {
            notes.note(
                "spec.portLevelMtls",
                "not honoured without a selector (as in Istio)",
            );
        }
    }
}
