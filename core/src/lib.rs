//! The library the Weft binaries share: identity and TLS, HBONE, the mesh state, metrics,
//! drain, the admin server and network-namespace sockets.

pub mod accept;
pub mod admin;
pub mod api;
pub mod authz;
pub mod ca_client;
pub mod config_client;
pub mod control;
pub mod copy;
pub mod drain;
pub mod hbone;
pub mod identity;
pub mod mesh;
pub mod metrics;
pub mod netns;
pub mod rng;
pub mod telemetry;
pub mod testing;
pub mod tls;
pub mod trace;

/// Well-known ports (Istio's numbering, so its NetworkPolicy guidance carries over).
pub mod ports {
    /// Admin (localhost only): config dump.
    pub const ADMIN: u16 = 15000;
    /// Captured outbound connections.
    pub const OUTBOUND: u16 = 15001;
    /// Captured inbound plaintext.
    pub const INBOUND_PLAINTEXT: u16 = 15006;
    /// HBONE.
    pub const HBONE: u16 = 15008;
    /// Captured DNS (UDP, each enrolled pod's 127.0.0.1).
    pub const DNS: u16 = 15053;
    /// Prometheus metrics.
    pub const METRICS: u16 = 15020;
    /// Readiness.
    pub const READINESS: u16 = 15021;
}
