//! Inbound HBONE (port 15008 inside each enrolled pod's namespace): mTLS with the pod's own
//! certificate, then per tunnel: validate the CONNECT, admit it (`super::admit`), connect to
//! the pod and forward.

use std::sync::Arc;
use std::time::Instant;

use tokio::net::TcpStream;
use tracing::{Instrument, warn};
use weft_core::drain;
use weft_core::hbone::{self, PendingTunnel, Rejection};
use weft_core::identity::SpiffeId;
use weft_core::metrics::RefusalReason;

use super::admit::{Arrival, admit, refused};
use crate::capture::PROXY_MARK;
use crate::forward::{ConnSpan, forward};
use crate::pod::Pod;
use crate::proxy::Proxy;

pub(super) async fn serve_connection(
    proxy: Arc<Proxy>,
    pod: Arc<Pod>,
    stream: TcpStream,
    drain: drain::Watch,
) {
    let local_id = proxy.index.load().identity(&pod.workload);
    let Some(identity) = proxy
        .certs_with(&local_id)
        .await
        .and_then(|c| c.get(&local_id).cloned())
    else {
        warn!(identity = %local_id, "early deny: no certificate for this pod's identity");
        proxy
            .metrics
            .refuse(RefusalReason::no_certificate, None, Some(&pod.workload));
        return;
    };
    // Small frames (a response's HEADERS, a WINDOW_UPDATE) must not wait for Nagle.
    let _ = stream.set_nodelay(true);
    let incoming = match hbone::accept(
        stream,
        identity.server.clone(),
        proxy.config.handshake_timeout,
    )
    .await
    {
        Ok(incoming) => incoming,
        Err(e) => {
            warn!(error = %e, "HBONE connection refused");
            proxy
                .metrics
                .refuse(RefusalReason::handshake_failed, None, Some(&pod.workload));
            return;
        }
    };
    let peer_id = incoming.peer().clone();
    let failure = incoming
        .serve(&drain, hbone::IDLE_TIMEOUT, |tunnel, open| {
            let (proxy, pod, peer_id) = (proxy.clone(), pod.clone(), peer_id.clone());
            tokio::spawn(
                async move {
                    tunnel_to_pod(&proxy, &pod, &peer_id, tunnel).await;
                    drop(open);
                }
                .in_current_span(),
            );
        })
        .await;
    if let Some(e) = failure {
        warn!(peer = %peer_id, error = %e, "HBONE connection error");
    }
}

async fn tunnel_to_pod(proxy: &Proxy, pod: &Pod, peer_id: &SpiffeId, tunnel: PendingTunnel) {
    let started = Instant::now();
    let index = proxy.index.load();
    // The source proxy's connection span, when it traces: this side's span joins its trace.
    let parent = tunnel
        .target()
        .ok()
        .and_then(|t| t.traceparent)
        .and_then(|tp| weft_core::trace::parse_traceparent(&tp));
    let admitted = tunnel
        .target()
        .map_err(|r| refused(RefusalReason::bad_request, r))
        .and_then(|target| {
            admit(
                &index,
                &pod.workload,
                Arrival::Hbone {
                    peer: peer_id,
                    destination: target.destination,
                    client: target.client,
                },
            )
        });
    let admitted = match admitted {
        Ok(admitted) => admitted,
        Err(no) => {
            warn!(peer = %peer_id, "tunnel refused: {}", no.rejection);
            proxy
                .metrics
                .refuse(no.reason, Some(peer_id), Some(&pod.workload));
            tunnel.reject(&no.rejection);
            return;
        }
    };
    let upstream = match pod
        .netns
        .connect(admitted.destination, Some(PROXY_MARK))
        .await
    {
        Ok(upstream) => upstream,
        Err(e) => {
            let rejection = Rejection::Unavailable(format!("{}: {e}", admitted.destination));
            warn!(peer = %peer_id, "tunnel refused: {rejection}");
            proxy.metrics.refuse(
                RefusalReason::upstream_unavailable,
                Some(peer_id),
                Some(&pod.workload),
            );
            tunnel.reject(&rejection);
            return;
        }
    };
    let Ok(stream) = tunnel.open() else {
        return;
    };
    let dst_id = index.identity(&pod.workload);
    let mut conn = admitted.connection(&pod.workload, &dst_id, Some(peer_id), started);
    conn.trace = ConnSpan::start(proxy, parent, weft_core::trace::Kind::Server);
    forward(proxy, conn, stream, upstream).await;
}
