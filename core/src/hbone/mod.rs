//! HBONE: TCP tunnelled in HTTP/2 `CONNECT` streams over mutual TLS, on port 15008.
//!
//! Wire format (as Istio's ztunnel speaks it): TLS 1.3, ALPN `h2`, no SNI; one `CONNECT` per
//! tunnelled connection with `:authority` = the original destination `ip:port`; request headers
//! `forwarded: for="<client ip:port>"`, and `traceparent` / `baggage` when the caller has them;
//! response 200 (tunnel open), 400 (bad request or authority), 401 (denied), 503 (upstream
//! unavailable).

mod client;
mod protocol;
mod server;
pub(crate) mod stream;

pub use client::{Pool, PoolConfig, PoolKey, PoolStats};
pub use protocol::{
    ConnectRequest, HboneError, MESH_PORTS, PORT, forwarded_header, parse_forwarded,
};
pub use server::{
    AcceptError, ConnectTarget, IDLE_TIMEOUT, Incoming, OpenTunnels, PendingTunnel, Rejection,
    accept,
};
pub use stream::H2Stream;
