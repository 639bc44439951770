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
    #[serde(default)]
    pub port_level_mtls: BTreeMap<u16, MtlsSpec>,
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
