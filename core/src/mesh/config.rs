//! The mesh config as a proxy receives it (from the controller's stream, or a YAML file): its
//! form, and validation. Every error names the file and the field, and a proxy that fails to
//! load a new version keeps the last good one.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::service::Service;
use super::waypoint::WaypointConfig;
use super::workload::Workload;
use crate::identity::DEFAULT_TRUST_DOMAIN;

/// The whole file.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MeshConfig {
    /// Trust domain of SPIFFE IDs.
    #[serde(default = "default_trust_domain")]
    pub trust_domain: String,
    /// All workloads of the mesh.
    #[serde(default)]
    pub workloads: Vec<Workload>,
    /// All services.
    #[serde(default)]
    pub services: Vec<Service>,
    /// What each waypoint applies.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub waypoints: Vec<WaypointConfig>,
}

fn default_trust_domain() -> String {
    DEFAULT_TRUST_DOMAIN.to_owned()
}

/// Why a config was refused. The message names the file and the field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("config {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The YAML does not match the schema.
    #[error("config {path}: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The parser's message (it names the field and the line).
        message: String,
    },
    /// The YAML is well-formed but inconsistent.
    #[error("config {path}: {field}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The offending field, e.g. `services[1].endpoints[0]`.
        field: String,
        /// What is wrong.
        message: String,
    },
}

impl MeshConfig {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Parses and validates YAML; `path` is only used in messages.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let config: MeshConfig = serde_yaml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        config.validate(path)?;
        Ok(config)
    }

    /// Checks the config for consistency; `path` (or a description of the source) is only
    /// used in messages.
    pub fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |field: String, message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            field,
            message,
        };
        let mut by_ip = HashMap::new();
        let mut by_name = HashMap::new();
        for (i, w) in self.workloads.iter().enumerate() {
            for (field, value) in [
                ("name", &w.name),
                ("namespace", &w.namespace),
                ("serviceAccount", &w.service_account),
                ("node", &w.node),
            ] {
                if value.is_empty() || value.contains('/') {
                    return Err(invalid(
                        format!("workloads[{i}].{field}"),
                        format!("{value:?} must be a non-empty name without '/'"),
                    ));
                }
            }
            if let Some(j) = by_ip.insert(w.ip, i) {
                return Err(invalid(
                    format!("workloads[{i}].ip"),
                    format!("{} is already the IP of workloads[{j}]", w.ip),
                ));
            }
            if let Some(j) = by_name.insert((w.namespace.as_str(), w.name.as_str()), i) {
                return Err(invalid(
                    format!("workloads[{i}].name"),
                    format!("{}/{} is already workloads[{j}]", w.namespace, w.name),
                ));
            }
        }
        let mut vips = HashMap::new();
        for (i, s) in self.services.iter().enumerate() {
            if s.ports.is_empty() {
                return Err(invalid(
                    format!("services[{i}].ports"),
                    "a service needs at least one port".into(),
                ));
            }
            for (p, port) in s.ports.iter().enumerate() {
                if port.port == 0 || port.target_port == 0 {
                    return Err(invalid(
                        format!("services[{i}].ports[{p}]"),
                        "ports must be 1-65535".into(),
                    ));
                }
                if let Some(j) = vips.insert(SocketAddr::new(s.vip, port.port), i) {
                    return Err(invalid(
                        format!("services[{i}].ports[{p}]"),
                        format!("{}:{} is already served by services[{j}]", s.vip, port.port),
                    ));
                }
            }
            if by_ip.contains_key(&s.vip) {
                return Err(invalid(
                    format!("services[{i}].vip"),
                    format!("{} is a workload IP", s.vip),
                ));
            }
            for (e, name) in s.endpoints.iter().enumerate() {
                if !by_name.contains_key(&(s.namespace.as_str(), name.as_str())) {
                    return Err(invalid(
                        format!("services[{i}].endpoints[{e}]"),
                        format!("no workload {}/{name}", s.namespace),
                    ));
                }
            }
        }
        for (i, w) in self.waypoints.iter().enumerate() {
            w.validate()
                .map_err(|e| invalid(format!("waypoints[{i}]"), e))?;
            for (s, service) in w.services.iter().enumerate() {
                for (b, backend) in service.backends.iter().enumerate() {
                    for (e, name) in backend.endpoints.iter().enumerate() {
                        if !by_name.contains_key(&(backend.namespace.as_str(), name.as_str())) {
                            return Err(invalid(
                                format!(
                                    "waypoints[{i}].services[{s}].backends[{b}].endpoints[{e}]"
                                ),
                                format!("no workload {}/{name}", backend.namespace),
                            ));
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::mesh::fixture::{GOOD, parse};

    #[test]
    fn errors_name_the_file_and_field() {
        let bad_ip = GOOD.replace("ip: 10.0.2.3", "ip: 10.0.2.300");
        let err = parse(&bad_ip).expect_err("bad ip").to_string();
        assert!(err.contains("/etc/weft/mesh.yaml"), "{err}");
        assert!(err.contains("workloads[2].ip"), "{err}");

        let typo = GOOD.replace("targetPort", "targetport");
        let err = parse(&typo).expect_err("unknown field").to_string();
        assert!(err.contains("targetport"), "{err}");

        let dangling = GOOD.replace("[web-1, web-2]", "[web-1, web-3]");
        let err = parse(&dangling).expect_err("dangling").to_string();
        assert!(err.contains("services[0].endpoints[1]"), "{err}");
        assert!(err.contains("no workload shop/web-3"), "{err}");

        let dup = GOOD.replace("ip: 10.0.2.3", "ip: 10.0.2.2");
        let err = parse(&dup).expect_err("dup").to_string();
        assert!(err.contains("workloads[2].ip"), "{err}");

        assert!(parse("workloads: {").is_err());
    }
}
