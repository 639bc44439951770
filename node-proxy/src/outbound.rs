//! Outbound: connections captured from a pod (port 15001 inside the pod's namespace). The
//! listener belongs to one pod, so the source workload is known without trusting anything the
//! pod sends. The original destination is resolved to a workload (through a service VIP if
//! need be) and reached over HBONE, presenting the source workload's certificate; destinations
//! outside the mesh are passed through as plain TCP.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio::net::{TcpListener, TcpStream};
use tracing::{info, warn};
use weft_core::drain;
use weft_core::hbone::{ConnectRequest, PoolKey};
use weft_core::identity::SpiffeId;
use weft_core::metrics::{Reporter, SecurityPolicy};
use weft_core::tls;

use crate::capture::PROXY_MARK;
use crate::inputs::{Inputs, Peer, tcp_labels};
use crate::pods::{Pod, accept_loop};

pub(crate) struct Outbound {
    inputs: Arc<Inputs>,
    pod: Arc<Pod>,
    listener: TcpListener,
}

impl Outbound {
    pub(crate) fn new(inputs: Arc<Inputs>, pod: Arc<Pod>, listener: TcpListener) -> Self {
        Self {
            inputs,
            pod,
            listener,
        }
    }

    pub(crate) async fn run(self, drain: drain::Watch) {
        let handle = |inputs: Arc<Inputs>, pod: Arc<Pod>, stream, client, conn_drain| async move {
            proxy(&inputs, &pod, stream, client).await;
            drop(conn_drain);
        };
        accept_loop(
            self.listener,
            "outbound",
            self.inputs,
            self.pod,
            drain,
            handle,
        )
        .await;
    }
}

async fn proxy(inputs: &Inputs, pod: &Pod, stream: TcpStream, client: SocketAddr) {
    let started = Instant::now();
    // Phase 1: context. The capture kept the original destination (eBPF map or conntrack).
    let dst = match inputs.capture.original_dst(pod.cookie, &stream, client) {
        Ok(dst) => dst,
        Err(e) => {
            warn!(%client, error = %e, "early deny: original destination unknown");
            return;
        }
    };
    let _ = stream.set_nodelay(true);
    let state = inputs.state.load();
    let src_id = state.identity(&pod.workload);
    let source = Peer {
        workload: Some(&pod.workload),
        identity: Some(&src_id),
    };
    let upstream = state.resolve(dst, |n| inputs.pick(n));

    // Phase 2: choose the path. Phase 3: forward.
    let Some(upstream) = upstream else {
        if state.is_service(dst) {
            warn!(%client, %dst, "early deny: service has no endpoints");
            return;
        }
        let labels = tcp_labels(
            Reporter::source,
            &source,
            &Peer::UNKNOWN,
            None,
            SecurityPolicy::none,
        );
        return passthrough(inputs, pod, stream, client, dst, &labels, started).await;
    };
    let dst_id = state.identity(&upstream.workload);
    let destination = Peer {
        workload: Some(&upstream.workload),
        identity: Some(&dst_id),
    };
    if upstream.workload.protocol == weft_core::config::Protocol::Tcp {
        let labels = tcp_labels(
            Reporter::source,
            &source,
            &destination,
            upstream.service.as_deref(),
            SecurityPolicy::none,
        );
        return passthrough(inputs, pod, stream, client, upstream.addr, &labels, started).await;
    }

    let certs = inputs.certs_with(&src_id).await;
    let Some((identity, bundle)) = certs
        .as_ref()
        .and_then(|c| Some((c.get(&src_id)?, c.bundle.as_ref()?)))
    else {
        warn!(%client, %dst, source = %src_id, "early deny: no certificate for the source identity");
        return;
    };
    // A waypoint-bound destination: the tunnel goes to the waypoint, addressed to what the
    // app asked for (the service VIP, or the pod); the waypoint picks the endpoint.
    let waypoint = state.waypoint_for(dst).cloned();
    let (proxy_addr, tunnel_id, tunnel_dst) = match &waypoint {
        Some(w) => match w.identity.parse::<SpiffeId>() {
            Ok(id) => (SocketAddr::new(w.ip, weft_core::ports::HBONE), id, dst),
            Err(_) => {
                warn!(%client, %dst, waypoint = %w.name, "early deny: the waypoint's identity is not a SPIFFE ID");
                return;
            }
        },
        None => (
            SocketAddr::new(upstream.workload.ip, weft_core::ports::HBONE),
            dst_id.clone(),
            upstream.addr,
        ),
    };
    let key = PoolKey {
        source: src_id.clone(),
        proxy: proxy_addr,
        destination: tunnel_id.clone(),
    };
    // The pod's own address: with eBPF capture the listener saw the client on loopback.
    let request = ConnectRequest {
        destination: tunnel_dst,
        client: SocketAddr::new(pod.ip.into(), client.port()),
        traceparent: None,
        baggage: None,
    };
    let netns = pod.netns.clone();
    let tunnel = inputs
        .pool
        .connect(
            &key,
            || tls::client_config(&identity.cert, tunnel_id.clone(), bundle),
            |addr| async move { netns.connect(addr, Some(PROXY_MARK)).await },
            &request,
        )
        .await;
    let tunnel = match tunnel {
        Ok(tunnel) => tunnel,
        Err(e) => {
            warn!(%client, %dst, destination = %dst_id, error = %e, "connection failed");
            return;
        }
    };
    // Through a waypoint, the peer this proxy talked to is the waypoint: it picks the endpoint.
    let waypoint_workload = waypoint.as_ref().and_then(|w| state.workload_by_ip(w.ip));
    let reached = match &waypoint {
        Some(_) => Peer {
            workload: waypoint_workload.map(|w| &**w),
            identity: Some(&tunnel_id),
        },
        None => destination,
    };
    let labels = tcp_labels(
        Reporter::source,
        &source,
        &reached,
        upstream.service.as_deref(),
        SecurityPolicy::mutual_tls,
    );
    let metrics = inputs.metrics.open(&labels);
    let result = weft_core::copy::proxy(stream, tunnel, &metrics).await;
    let (sent, received) = result.as_ref().map_or((0, 0), |r| *r);
    info!(
        target: "access",
        src_workload = %pod.workload.name,
        src_identity = %src_id,
        dst_addr = %upstream.addr,
        dst_workload = %upstream.workload.name,
        dst_identity = %dst_id,
        dst_service = upstream.service.as_ref().map_or("", |s| s.name.as_str()),
        via = "hbone",
        bytes_sent = sent,
        bytes_received = received,
        duration_ms = started.elapsed().as_millis() as u64,
        error = result.err().map(|e| e.to_string()),
        "connection complete"
    );
}

async fn passthrough(
    inputs: &Inputs,
    pod: &Pod,
    stream: TcpStream,
    client: SocketAddr,
    dst: SocketAddr,
    labels: &weft_core::metrics::TcpLabels,
    started: Instant,
) {
    let upstream = match pod.netns.connect(dst, Some(PROXY_MARK)).await {
        Ok(upstream) => upstream,
        Err(e) => {
            warn!(%client, %dst, error = %e, "passthrough connection failed");
            return;
        }
    };
    let metrics = inputs.metrics.open(labels);
    let result = weft_core::copy::proxy(stream, upstream, &metrics).await;
    let (sent, received) = result.as_ref().map_or((0, 0), |r| *r);
    info!(
        target: "access",
        src_workload = %pod.workload.name,
        dst_addr = %dst,
        dst_workload = %labels.destination_workload,
        via = "passthrough",
        bytes_sent = sent,
        bytes_received = received,
        duration_ms = started.elapsed().as_millis() as u64,
        "connection complete"
    );
}
