//! Inbound HBONE (port 15008 inside each enrolled pod's namespace): mTLS with the pod's own
//! certificate, then per tunnel: validate the CONNECT, authorize the peer's identity against the
//! workload the config says sits at the client's address, and connect to the pod.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio::net::{TcpListener, TcpStream};
use tracing::{Instrument, info, warn};
use weft_core::config::State;
use weft_core::drain;
use weft_core::hbone::{self, ConnectTarget, PendingTunnel, Rejection};
use weft_core::identity::SpiffeId;
use weft_core::metrics::{Reporter, SecurityPolicy};

use crate::capture::PROXY_MARK;
use crate::inputs::{Inputs, Peer, tcp_labels};
use crate::pods::{Pod, accept_loop};

pub(crate) struct Inbound {
    inputs: Arc<Inputs>,
    pod: Arc<Pod>,
    listener: TcpListener,
}

impl Inbound {
    pub(crate) fn new(inputs: Arc<Inputs>, pod: Arc<Pod>, listener: TcpListener) -> Self {
        Self {
            inputs,
            pod,
            listener,
        }
    }

    pub(crate) async fn run(self, drain: drain::Watch) {
        let handle =
            |inputs, pod, stream, _peer, drain| serve_connection(inputs, pod, stream, drain);
        accept_loop(
            self.listener,
            "inbound",
            self.inputs,
            self.pod,
            drain,
            handle,
        )
        .await;
    }
}

async fn serve_connection(
    inputs: Arc<Inputs>,
    pod: Arc<Pod>,
    stream: TcpStream,
    drain: drain::Watch,
) {
    let local_id = inputs.state.load().identity(&pod.workload);
    let Some(identity) = inputs
        .certs_with(&local_id)
        .await
        .and_then(|c| c.get(&local_id).cloned())
    else {
        warn!(identity = %local_id, "early deny: no certificate for this pod's identity");
        return;
    };
    // Small frames (a response's HEADERS, a WINDOW_UPDATE) must not wait for Nagle.
    let _ = stream.set_nodelay(true);
    let mut incoming = match hbone::accept(
        stream,
        identity.server.clone(),
        inputs.config.handshake_timeout,
    )
    .await
    {
        Ok(incoming) => incoming,
        Err(e) => {
            warn!(error = %e, "HBONE connection refused");
            return;
        }
    };
    let peer_id = incoming.peer().clone();
    let mut draining = false;
    loop {
        let next = tokio::select! {
            _ = drain.signaled(), if !draining => {
                draining = true;
                incoming.graceful_shutdown();
                continue;
            }
            next = incoming.next() => next,
        };
        match next {
            None => break,
            Some(Err(e)) => {
                if !e.is_go_away() {
                    warn!(peer = %peer_id, error = %e, "HBONE connection error");
                }
                break;
            }
            Some(Ok(tunnel)) => {
                let (inputs, pod, peer_id) = (inputs.clone(), pod.clone(), peer_id.clone());
                tokio::spawn(
                    async move { tunnel_to_pod(&inputs, &pod, &peer_id, tunnel).await }
                        .in_current_span(),
                );
            }
        }
    }
    let _ = incoming.closed().await;
}

async fn tunnel_to_pod(inputs: &Inputs, pod: &Pod, peer_id: &SpiffeId, tunnel: PendingTunnel) {
    let started = Instant::now();
    let state = inputs.state.load();
    let (target, client) = match authorize(&state, pod, peer_id, tunnel.target()) {
        Ok(ok) => ok,
        Err(rejection) => {
            warn!(peer = %peer_id, "tunnel refused: {rejection}");
            tunnel.reject(&rejection);
            return;
        }
    };
    let upstream = match pod
        .netns
        .connect(target.destination, Some(PROXY_MARK))
        .await
    {
        Ok(upstream) => upstream,
        Err(e) => {
            let rejection = Rejection::Unavailable(format!("{}: {e}", target.destination));
            warn!(peer = %peer_id, "tunnel refused: {rejection}");
            tunnel.reject(&rejection);
            return;
        }
    };
    let Ok(stream) = tunnel.open() else {
        return;
    };
    let dst_id = state.identity(&pod.workload);
    let src_workload = state.workload_by_ip(client.ip()).cloned();
    let labels = tcp_labels(
        Reporter::destination,
        &Peer {
            workload: src_workload.as_deref(),
            identity: Some(peer_id),
        },
        &Peer {
            workload: Some(&pod.workload),
            identity: Some(&dst_id),
        },
        None,
        SecurityPolicy::mutual_tls,
    );
    let metrics = inputs.metrics.open(&labels);
    let result = weft_core::copy::proxy(stream, upstream, &metrics).await;
    let (sent, received) = result.as_ref().map_or((0, 0), |r| *r);
    info!(
        target: "access",
        src_addr = %client,
        src_identity = %peer_id,
        dst_addr = %target.destination,
        dst_workload = %pod.workload.name,
        dst_identity = %dst_id,
        via = "hbone",
        bytes_sent = sent,
        bytes_received = received,
        duration_ms = started.elapsed().as_millis() as u64,
        "connection complete"
    );
}

/// Who may open a tunnel to this pod: the CONNECT must name this pod, say which workload it
/// comes from, and that workload's identity must be the one the peer proved.
fn authorize(
    state: &State,
    pod: &Pod,
    peer_id: &SpiffeId,
    target: Result<ConnectTarget, Rejection>,
) -> Result<(ConnectTarget, SocketAddr), Rejection> {
    let target = target?;
    if target.destination.ip() != pod.workload.ip {
        return Err(Rejection::BadRequest(format!(
            ":authority {} is not this pod ({} has {})",
            target.destination, pod.workload.name, pod.workload.ip
        )));
    }
    let client = target.client.ok_or_else(|| {
        Rejection::Denied("no forwarded header: the source workload is unknown".into())
    })?;
    // A pod behind a waypoint takes traffic only from it; the waypoint vouches for the
    // original client (in `forwarded`), having applied the service's L7 policy.
    if let Some(waypoint) = state.waypoint_guarding(pod.workload.ip) {
        if peer_id.to_string() == waypoint.identity {
            return Ok((target, client));
        }
        return Err(Rejection::Denied(format!(
            "{} is behind waypoint {}: traffic must come through it, not from {peer_id}",
            pod.workload.name, waypoint.name
        )));
    }
    let source = state.workload_by_ip(client.ip()).ok_or_else(|| {
        Rejection::Denied(format!(
            "source {} is not a workload of this mesh (peer identity {peer_id})",
            client.ip()
        ))
    })?;
    let expected = state.identity(source);
    if &expected != peer_id {
        return Err(Rejection::Denied(format!(
            "peer identity {peer_id} does not match the source {} ({}/{}, identity {expected})",
            client.ip(),
            source.namespace,
            source.name
        )));
    }
    // L4 authorization: the pod's AuthorizationPolicies, as of now.
    if let Some(workload) = state.workload_by_ip(pod.workload.ip)
        && !workload.authz.is_empty()
    {
        let principal = peer_id.to_string();
        let subject = weft_core::authz::Subject {
            principal: Some(principal.strip_prefix("spiffe://").unwrap_or(&principal)),
            namespace: Some(peer_id.namespace()),
            ip: client.ip(),
            port: target.destination.port(),
            request: None,
        };
        weft_core::authz::check(&workload.authz, &subject).map_err(|denied| {
            Rejection::Denied(format!(
                "{peer_id} may not connect to {} port {}: {}",
                pod.workload.name,
                target.destination.port(),
                denied.policy
            ))
        })?;
    }
    Ok((target, client))
}
