//! HBONE in (port 15008): mTLS with the waypoint's identity, one CONNECT per client
//! connection, whose `:authority` is the service (VIP:port) or endpoint it was addressed to.
//! Inside each tunnel the waypoint speaks HTTP/1.1 or HTTP/2 (gRPC), as the client does.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, warn};
use weft_core::accept::{ConnectionLimits, serve_accepted};
use weft_core::drain;
use weft_core::hbone::{self, PendingTunnel, Rejection};
use weft_core::identity::SpiffeId;
use weft_core::metrics::{
    ConnMetrics, DestinationLabels, Reporter, SecurityPolicy, SourceLabels, TcpLabels,
};

use crate::request;
use crate::shared::Tunnel;
use crate::shared::Waypoint;

/// HBONE connections the waypoint holds open, in all and from one peer address (node proxies
/// pool their tunnels over a few connections).
const MAX_CONNECTIONS: usize = 16_384;
const MAX_CONNECTIONS_PER_PEER: usize = 256;

/// Accepts until `drain` is signalled; every connection then finishes its requests (GOAWAY
/// to the peer, no new tunnels, keep-alive connections closed after their current request).
pub(crate) async fn run(waypoint: Arc<Waypoint>, listener: TcpListener, drain: drain::Watch) {
    let limits = ConnectionLimits::new(MAX_CONNECTIONS, MAX_CONNECTIONS_PER_PEER);
    let watch = drain.clone();
    serve_accepted("HBONE", listener, limits, &watch, |stream, peer, slot| {
        let (waypoint, drain) = (waypoint.clone(), drain.clone());
        tokio::spawn(async move {
            if let Err(e) = connection(&waypoint, stream, &drain).await {
                warn!(%peer, "HBONE connection refused: {e}");
            }
            drop(slot);
        });
    })
    .await;
}

async fn connection(
    waypoint: &Arc<Waypoint>,
    stream: TcpStream,
    drain: &drain::Watch,
) -> Result<(), String> {
    let identity = waypoint
        .certs
        .get()
        .ok_or("no certificate loaded yet (early deny)")?;
    // The gateway's own address: a tunnel addressed to it is for one of its listeners.
    let own = stream.local_addr().map_err(|e| e.to_string())?.ip();
    let incoming = hbone::accept(stream, identity.server.clone(), Duration::from_secs(10))
        .await
        .map_err(|e| e.to_string())?;
    let peer = incoming.peer().clone();
    let failure = incoming
        .serve(drain, hbone::IDLE_TIMEOUT, |tunnel, open| {
            let (waypoint, peer, drain) = (waypoint.clone(), peer.clone(), drain.clone());
            tokio::spawn(async move {
                serve_tunnel(waypoint, peer, own, tunnel, drain).await;
                drop(open);
            });
        })
        .await;
    if let Some(e) = failure {
        debug!(%peer, error = %e, "HBONE connection ended");
    }
    Ok(())
}

async fn serve_tunnel(
    waypoint: Arc<Waypoint>,
    peer: SpiffeId,
    own: std::net::IpAddr,
    pending: PendingTunnel,
    drain: drain::Watch,
) {
    let target = match pending.target() {
        Ok(target) => target,
        Err(rejection) => {
            warn!(%peer, "tunnel refused: {rejection}");
            pending.reject(&rejection);
            return;
        }
    };
    let Some(client) = target.client else {
        let rejection = Rejection::Denied("no forwarded header: the client is unknown".into());
        warn!(%peer, "tunnel refused: {rejection}");
        pending.reject(&rejection);
        return;
    };
    let snapshot = waypoint.snapshot.load();
    // The `forwarded` address is a claim: it stands only if the workload there has the identity
    // the peer proved. An unverified address is never used for policy, metrics, or passed on.
    let verified = snapshot
        .mesh
        .workload_by_ip(client.ip())
        .is_some_and(|w| snapshot.mesh.has_identity(w, &peer));
    if !verified {
        let rejection = Rejection::Denied(format!(
            "forwarded address {client} is not a workload with identity {peer}"
        ));
        warn!(%peer, "tunnel refused: {rejection}");
        pending.reject(&rejection);
        return;
    }
    // A mesh client's tunnel to one of a gateway's listeners (an egress gateway's, say):
    // routed by host like an outside client's, as the client's proven identity.
    let at_listener =
        target.destination.ip() == own && snapshot.listener(target.destination.port()).is_some();
    let service = snapshot.service_for(target.destination).map(|s| &s.policy);
    if !at_listener && service.is_none() {
        let rejection = Rejection::BadRequest(format!(
            "{} is not a service bound to waypoint {}/{}, nor one of its listeners",
            target.destination, waypoint.namespace, waypoint.name
        ));
        warn!(%peer, "tunnel refused: {rejection}");
        pending.reject(&rejection);
        return;
    }
    let Ok(stream) = pending.open() else { return };
    // The tunnel as a TCP connection: opened, closed and its bytes both ways, labelled as the
    // node proxies label theirs.
    let labels = TcpLabels {
        reporter: Reporter::waypoint,
        source: SourceLabels::of(
            snapshot.mesh.workload_by_ip(client.ip()).map(|w| &**w),
            Some(&peer),
        ),
        destination: DestinationLabels::of(
            None,
            None,
            service.map(|s| (s.name.as_str(), s.namespace.as_str())),
        ),
        request_protocol: "tcp",
        connection_security_policy: SecurityPolicy::mutual_tls,
    };
    let stream = Metered {
        inner: stream,
        metrics: waypoint.tcp.open(&labels),
    };
    let tunnel = Arc::new(Tunnel {
        waypoint,
        peer: Some(peer),
        client,
        target: target.destination,
        at_listener,
    });
    if let Err(e) = request::serve_connection(tunnel, stream, &drain).await {
        debug!(error = %e, "HTTP connection in tunnel ended");
    }
}

/// A tunnel's stream that counts its bytes into its connection's counters (client to server:
/// what is read; server to client: what is written), and the connection closed when dropped.
struct Metered<S> {
    inner: S,
    metrics: ConnMetrics,
}

impl<S: AsyncRead + Unpin> AsyncRead for Metered<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = buf.filled().len() - before;
        self.metrics.sent.inc_by(read as u64);
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Metered<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &polled {
            self.metrics.received.inc_by(*n as u64);
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
