//! Reading a message field by field: what does not convert is named by its path
//! (`services[0].routes[1].retry.on.statuses`).

use std::net::IpAddr;

use super::v1;
use crate::mesh::ServicePort;

/// A field of a message that does not convert: its path and what is wrong.
#[derive(Debug)]
pub(super) struct FieldError {
    pub(super) field: String,
    pub(super) message: String,
}

impl FieldError {
    pub(super) fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }

    /// The same error, under `parent` (`services[0]` + `routes[1].name`).
    pub(super) fn under(self, parent: &str) -> Self {
        Self {
            field: format!("{parent}.{}", self.field),
            message: self.message,
        }
    }
}

pub(super) type Result<T> = std::result::Result<T, FieldError>;

/// Converts each item of `items`, naming the failing one by its index.
pub(super) fn each<T, U>(field: &str, items: &[T], f: impl Fn(&T) -> Result<U>) -> Result<Vec<U>> {
    items
        .iter()
        .enumerate()
        .map(|(i, x)| f(x).map_err(|e| e.under(&format!("{field}[{i}]"))))
        .collect()
}

pub(super) fn port(field: &str, value: u32) -> Result<u16> {
    u16::try_from(value).map_err(|_| FieldError::new(field, format!("{value} is not a port")))
}

pub(super) fn ip(field: &str, value: &str) -> Result<IpAddr> {
    value
        .parse()
        .map_err(|e| FieldError::new(field, format!("{value:?}: {e}")))
}

pub(super) fn ports_to(ports: &[ServicePort]) -> Vec<v1::ServicePort> {
    ports
        .iter()
        .map(|p| v1::ServicePort {
            port: u32::from(p.port),
            target_port: u32::from(p.target_port),
        })
        .collect()
}

pub(super) fn ports_from(ports: &[v1::ServicePort]) -> Result<Vec<ServicePort>> {
    each("ports", ports, |p| {
        Ok(ServicePort {
            port: port("port", p.port)?,
            target_port: port("targetPort", p.target_port)?,
        })
    })
}
