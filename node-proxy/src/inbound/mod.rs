//! Inbound: connections to an enrolled pod, on the two listeners inside its network namespace.
//! HBONE tunnels arrive on 15008 (`hbone`), captured plaintext on 15006 (`plaintext`). Both
//! are judged by the same `admit::admit` and forwarded by the same tail (`crate::forward`).

mod admit;
mod hbone;
mod plaintext;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpStream;
use weft_core::drain;

use crate::pod::Pod;
use crate::proxy::Proxy;

/// Serves one connection to the pod's HBONE listener (15008): the accept loop's handler.
pub(crate) async fn handle_hbone(
    proxy: Arc<Proxy>,
    pod: Arc<Pod>,
    stream: TcpStream,
    _peer: SocketAddr,
    drain: drain::Watch,
) {
    hbone::serve_connection(proxy, pod, stream, drain).await;
}

/// Serves one connection to the pod's plaintext listener (15006): the accept loop's handler.
pub(crate) async fn handle_plaintext(
    proxy: Arc<Proxy>,
    pod: Arc<Pod>,
    stream: TcpStream,
    client: SocketAddr,
    _drain: drain::Watch,
) {
    plaintext::serve_connection(&proxy, &pod, stream, client).await;
}
