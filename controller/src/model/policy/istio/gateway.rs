//! `networking.istio.io` Gateway (ingress): read and reported, not run.

use std::collections::BTreeMap;

use serde::Deserialize;

/// Istio's ingress `Gateway.spec`: accepted and reported, since Weft has no ingress gateway.
#[derive(Clone, Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IstioGatewaySpec {
    /// Gateway pods.
    #[serde(default)]
    pub selector: BTreeMap<String, String>,
    /// Servers.
    #[serde(default)]
    #[schemars(with = "Vec<super::super::common::Unhonoured>")]
    pub servers: Vec<serde_yaml::Value>,
}
