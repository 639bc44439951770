//! The mesh config as a proxy receives it (from the controller's stream, or a YAML file): its
//! form, and validation. Every error names the file and the field, and a proxy that fails to
//! load a new version keeps the last good one.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::outbound::Outbound;
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
    /// Where pods may connect outside the mesh.
    #[serde(default, skip_serializing_if = "Outbound::is_default")]
    pub outbound: Outbound,
}

/// The text of a config file, refused if it is larger than [`MAX_CONFIG_BYTES`].
pub fn read_config(path: &Path) -> Result<String, ConfigError> {
    use std::io::Read as _;
    let io = |source| ConfigError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let mut text = String::new();
    file.take(MAX_CONFIG_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(io)?;
    if text.len() as u64 > MAX_CONFIG_BYTES {
        return Err(ConfigError::Syntax {
            path: path.to_path_buf(),
            message: format!("larger than {MAX_CONFIG_BYTES} bytes"),
        });
    }
    Ok(text)
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

/// The largest config file a proxy reads: a mesh of 100,000 workloads fits in a few MiB.
pub const MAX_CONFIG_BYTES: u64 = 16 * 1024 * 1024;

impl MeshConfig {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = read_config(path)?;
        Self::parse(path, &text)
    }

    /// Parses and validates YAML; `path` is only used in messages. A file that holds nothing
    /// (empty, or only comments) is refused: read as a mesh with no workloads it would take
    /// every pod out of the mesh.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let document: serde_yaml::Value =
            serde_yaml::from_str(text).map_err(|e| ConfigError::Syntax {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
        if document.is_null() {
            return Err(ConfigError::Syntax {
                path: path.to_path_buf(),
                message: "the file holds no config (empty, or only comments)".into(),
            });
        }
        // From the text again, not the value: errors then name the field's path.
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
        if !crate::identity::valid_trust_domain(&self.trust_domain) {
            return Err(invalid(
                "trustDomain".into(),
                format!(
                    "{:?} is not a trust domain (lowercase letters, digits, '.', '-', '_')",
                    self.trust_domain
                ),
            ));
        }
        let mut by_ip = HashMap::new();
        let mut by_name = HashMap::new();
        for (i, w) in self.workloads.iter().enumerate() {
            for (field, value) in [
                ("name", &w.name),
                ("namespace", &w.namespace),
                ("serviceAccount", &w.service_account),
                ("node", &w.node),
            ] {
                if !crate::identity::valid_name(value) {
                    return Err(invalid(
                        format!("workloads[{i}].{field}"),
                        format!(
                            "{value:?} is not a Kubernetes name (lowercase letters, digits, '-' and '.', starting and ending with a letter or digit)"
                        ),
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
            let services = w
                .services
                .iter()
                .enumerate()
                .map(|(s, service)| (format!("services[{s}]"), service));
            let hosts = w.listeners.iter().enumerate().flat_map(|(l, listener)| {
                listener.hosts.iter().enumerate().map(move |(h, host)| {
                    (format!("listeners[{l}].hosts[{h}].policy"), &host.policy)
                })
            });
            for (at, service) in services.chain(hosts) {
                for (b, backend) in service.backends.iter().enumerate() {
                    for (e, name) in backend.endpoints.iter().enumerate() {
                        if !by_name.contains_key(&(backend.namespace.as_str(), name.as_str())) {
                            return Err(invalid(
                                format!("waypoints[{i}].{at}.backends[{b}].endpoints[{e}]"),
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
    use super::*;
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

        // Names become certificate directories: nothing that climbs out of one.
        let climbing = GOOD.replace(
            "serviceAccount: web, ip: 10.0.2.2",
            "serviceAccount: .., ip: 10.0.2.2",
        );
        let err = parse(&climbing).expect_err("..").to_string();
        assert!(err.contains("workloads[1].serviceAccount"), "{err}");
        let err = parse(&GOOD.replace("namespace: old", "namespace: ../x"))
            .expect_err("..")
            .to_string();
        assert!(err.contains("workloads[3].namespace"), "{err}");
    }

    #[test]
    fn an_empty_file_or_trust_domain_is_not_a_mesh() {
        for empty in ["", "\n", "# nothing yet\n", "---\n"] {
            let err = parse(empty).expect_err("empty").to_string();
            assert!(err.contains("holds no config"), "{empty:?}: {err}");
        }
        let err = parse(&format!("trustDomain: \"\"\n{GOOD}"))
            .expect_err("no trust domain")
            .to_string();
        assert!(err.contains("trustDomain"), "{err}");
    }

    #[test]
    fn a_file_larger_than_the_cap_is_refused_without_reading_it_all() {
        let dir = std::env::temp_dir().join(format!("weft-config-cap-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("mesh.yaml");
        let file = std::fs::File::create(&path).expect("file");
        file.set_len(MAX_CONFIG_BYTES + 1).expect("sparse file");
        let err = read_config(&path).expect_err("too large").to_string();
        assert!(err.contains("larger than"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Property: a config file a few edits away from a good one parses or is refused with a
    /// message naming the file, never a panic; what parses prints back and re-parses equal.
    #[test]
    fn almost_right_config_files_parse_or_are_refused_by_name() {
        let mut g = crate::testing::Gen::new(11);
        let noise = [
            ":",
            " ",
            "\n",
            "-",
            "[",
            "]",
            "{",
            "}",
            "..",
            "/",
            "10.0.2.2",
            "port: 0",
            "targetPort: 70000",
            "protocol: UDP",
            "\"",
            "'",
            "#",
            "&a",
            "*a",
        ];
        for _ in 0..2000 {
            let text = g.mutate(GOOD, &noise);
            match parse(&text) {
                Ok(config) => {
                    let printed = serde_yaml::to_string(&config).expect("prints");
                    assert_eq!(parse(&printed).expect("re-parses"), config, "{text}");
                }
                Err(e) => assert!(e.to_string().contains("/etc/weft/mesh.yaml"), "{e}"),
            }
        }
    }
}
