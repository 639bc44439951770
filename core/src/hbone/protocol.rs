//! The HBONE wire format shared by both ends: the port, the targets never allowed, the H2
//! settings, the `CONNECT` request and its `forwarded` header, and the errors.

use std::net::{IpAddr, SocketAddr};

/// The HBONE port.
pub const PORT: u16 = 15008;

/// Ports of the mesh itself, never valid tunnel targets.
pub const MESH_PORTS: &[u16] = &[15000, 15001, 15006, 15008, 15020, 15021];

/// H2 flow-control and framing settings shared by both ends. Bulk throughput depends on these.
pub(crate) mod settings {
    /// Largest header list a peer may send (Envoy's default is 60 KiB): h2's own default of
    /// 16 MiB let twenty tunnels hold 300 MB of one proxy's memory.
    pub(crate) const MAX_HEADER_LIST: u32 = 64 * 1024;
    /// How long a CONNECT may wait for its response.
    pub(crate) const RESPONSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
    pub(crate) const STREAM_WINDOW: u32 = 4 * 1024 * 1024;
    pub(crate) const CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;
    pub(crate) const MAX_FRAME: u32 = 1024 * 1024;
    pub(crate) const MAX_SEND_BUFFER: usize = 1024 * 1024;
}

/// What the tunnel asks for, beyond its destination.
#[derive(Clone, Debug)]
pub struct ConnectRequest {
    /// The original destination: `:authority`.
    pub destination: SocketAddr,
    /// The original client, sent as `forwarded: for="ip:port"`.
    pub client: SocketAddr,
    /// W3C trace context to propagate, if any.
    pub traceparent: Option<String>,
    /// W3C baggage to propagate, if any.
    pub baggage: Option<String>,
}

/// Why opening a tunnel failed.
#[derive(Debug, thiserror::Error)]
pub enum HboneError {
    /// TCP connect to the peer proxy failed.
    #[error(
        "connecting to {addr}: {source} (is port 15008 blocked by a NetworkPolicy, or the peer's node proxy down?)"
    )]
    Connect {
        /// The peer proxy.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The TLS handshake failed (wrong identity, unknown CA, expired certificate...).
    #[error("mTLS handshake with {addr}: {reason}")]
    Tls {
        /// The peer proxy.
        addr: SocketAddr,
        /// What TLS reported, for an operator.
        reason: String,
    },
    /// The local TLS configuration could not be built.
    #[error(transparent)]
    Config(#[from] crate::tls::TlsError),
    /// The HTTP/2 layer failed.
    #[error("HTTP/2 with {addr}: {source}")]
    H2 {
        /// The peer proxy.
        addr: SocketAddr,
        /// What h2 reported.
        source: h2::Error,
    },
    /// The peer answered the CONNECT with a non-200 status.
    #[error("peer {addr} refused the tunnel to {destination}: {status}{}", denial_hint(*status))]
    Refused {
        /// The peer proxy.
        addr: SocketAddr,
        /// The tunnel's destination.
        destination: SocketAddr,
        /// The status it answered.
        status: http::StatusCode,
    },
    /// The request could not be built (bad header value).
    /// The peer did not answer the CONNECT in time.
    #[error("peer {addr} did not answer the tunnel to {destination} within {timeout:?}")]
    ResponseTimeout {
        /// The peer proxy.
        addr: SocketAddr,
        /// The destination asked for.
        destination: SocketAddr,
        /// How long it was given.
        timeout: std::time::Duration,
    },
    #[error("building the CONNECT request: {0}")]
    Request(#[from] http::Error),
}

fn denial_hint(status: http::StatusCode) -> &'static str {
    match status.as_u16() {
        401 => " (denied by the destination's policy)",
        503 => " (the destination workload is not accepting connections)",
        400 => " (the destination proxy did not accept the request: version skew?)",
        _ => "",
    }
}

/// Formats the `forwarded` header for a client address.
pub fn forwarded_header(client: SocketAddr) -> String {
    format!("for=\"{client}\"")
}

/// Reads the client address out of a `forwarded` header (`for="ip:port"`, `for=ip`,
/// `for="[v6]:port"`); the first `for` element wins.
pub fn parse_forwarded(value: &str) -> Option<SocketAddr> {
    for element in value.split([';', ',']) {
        let Some((key, val)) = element.trim().split_once('=') else {
            continue;
        };
        if !key.trim().eq_ignore_ascii_case("for") {
            continue;
        }
        let val = val.trim().trim_matches('"');
        if let Ok(addr) = val.parse::<SocketAddr>() {
            return Some(addr);
        }
        if let Ok(ip) = val.trim_matches(['[', ']']).parse::<IpAddr>() {
            return Some(SocketAddr::new(ip, 0));
        }
        return None;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_round_trips() {
        let addr: SocketAddr = "10.1.2.3:45678".parse().expect("addr");
        assert_eq!(parse_forwarded(&forwarded_header(addr)), Some(addr));
        assert_eq!(
            parse_forwarded("proto=http; for=10.0.0.9"),
            Some("10.0.0.9:0".parse().expect("addr"))
        );
        assert_eq!(
            parse_forwarded("for=\"[2001:db8::1]:80\""),
            Some("[2001:db8::1]:80".parse().expect("addr"))
        );
        assert_eq!(parse_forwarded("for=unknown"), None);
        assert_eq!(parse_forwarded("by=1.2.3.4"), None);
    }
}
