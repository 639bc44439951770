//! Outbound: connections captured from a pod (port 15001 inside the pod's namespace). The
//! listener belongs to one pod, so the source workload is known without trusting anything the
//! pod sends. The original destination is resolved to a workload (through a service VIP if
//! need be) and reached over HBONE, presenting the source workload's certificate; destinations
//! outside the mesh are passed through as plain TCP, or carried over HBONE to the egress
//! gateway a VirtualService routes them through.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio::net::TcpStream;
use tracing::warn;
use weft_core::drain;
use weft_core::hbone::{ConnectRequest, PoolKey};
use weft_core::identity::SpiffeId;
use weft_core::mesh::{Service, Workload};
use weft_core::metrics::{RefusalReason, Reporter, SecurityPolicy};
use weft_core::tls;
use weft_core::trace::{Kind, traceparent};

use crate::capture::PROXY_MARK;
use crate::forward::{ConnSpan, Connection, Peer, Via, forward};
use crate::pod::Pod;
use crate::proxy::Proxy;

/// Serves one captured connection of `pod` (the accept loop's handler).
pub(crate) async fn handle(
    proxy: Arc<Proxy>,
    pod: Arc<Pod>,
    stream: TcpStream,
    client: SocketAddr,
    _drain: drain::Watch,
) {
    serve_connection(&proxy, &pod, stream, client).await;
}

async fn serve_connection(proxy: &Proxy, pod: &Pod, stream: TcpStream, client: SocketAddr) {
    let started = Instant::now();
    // Phase 1: context. The capture kept the original destination (eBPF map or conntrack).
    let dst = match proxy.capture.original_dst(pod.cookie, &stream, client) {
        Ok(dst) => dst,
        Err(e) => {
            warn!(%client, error = %e, "early deny: original destination unknown");
            return;
        }
    };
    if let Some(why) = forbidden_destination(pod, dst) {
        warn!(%client, %dst, "early deny: {why}");
        return;
    }
    // DNS over TCP: answered by the DNS proxy like the UDP queries.
    if dst.port() == 53 {
        return crate::dns::serve::serve_tcp(proxy, pod, stream).await;
    }
    let _ = stream.set_nodelay(true);
    let index = proxy.index.load();
    let src_id = index.identity(&pod.workload);
    let source = Peer {
        workload: Some(&pod.workload),
        identity: Some(&src_id),
    };
    let upstream = index.resolve(dst, |n| proxy.pick(n));
    // A waypoint-bound destination: the tunnel goes to the waypoint, addressed to what the
    // app asked for (the service VIP, or the pod); the waypoint picks the endpoint, so the
    // service needs no endpoints of its own (a TrafficSplit apex, say).
    let waypoint = index.waypoint_for(dst).cloned();

    // Phase 2: choose the path. Phase 3: forward.
    let hop = match (&waypoint, &upstream) {
        (Some(w), _) => Hop {
            proxy_addr: SocketAddr::new(w.ip, weft_core::ports::HBONE),
            identity: w.identity.clone(),
            destination: dst,
            workload: index.workload_by_ip(w.ip).cloned(),
            service: index.service_at(dst).cloned(),
        },
        (None, None) => {
            if index.is_service(dst) {
                warn!(%client, %dst, "early deny: service has no endpoints");
                return;
            }
            // Outside the mesh: under REGISTRY_ONLY, only what a ServiceEntry holds.
            let outbound = &index.config().outbound;
            let external = outbound.external_for(dst);
            if outbound.registry_only(&pod.workload.namespace) && external.is_none() {
                warn!(%client, %dst, namespace = %pod.workload.namespace, "refused: the outbound traffic policy is REGISTRY_ONLY and {dst} is not in the registry (no workload, service or ServiceEntry holds it)");
                proxy
                    .metrics
                    .refuse_outbound(RefusalReason::not_in_registry, &src_id);
                return;
            }
            // Through an egress gateway: in HBONE as the source, to the gateway's listener.
            match external.and_then(|e| e.via_for(dst.port())) {
                Some(via) => Hop {
                    proxy_addr: SocketAddr::new(via.gateway.ip, weft_core::ports::HBONE),
                    identity: via.gateway.identity.clone(),
                    destination: SocketAddr::new(via.gateway.ip, via.gateway_port),
                    workload: index.workload_by_ip(via.gateway.ip).cloned(),
                    service: None,
                },
                None => {
                    // An address the mesh allocated a host: the host as resolved upstream.
                    let dst = match external.and_then(|e| e.allocated_host(dst.ip())) {
                        Some(host) => match proxy.dns.resolve_upstream(host).await {
                            Ok(found) if !found.is_empty() => {
                                SocketAddr::new(found[0].into(), dst.port())
                            }
                            Ok(_) | Err(_) => {
                                warn!(%client, %dst, %host, "connection failed: {host} (an address the mesh allocated) does not resolve upstream");
                                return;
                            }
                        },
                        None => dst,
                    };
                    let plain = Plain {
                        client,
                        dst,
                        source,
                        destination: Peer::UNKNOWN,
                        service: None,
                        started,
                    };
                    return passthrough(proxy, pod, stream, plain).await;
                }
            }
        }
        (None, Some(upstream)) => {
            let dst_id = index.identity(&upstream.workload);
            if upstream.workload.protocol == weft_core::mesh::Protocol::Tcp {
                let plain = Plain {
                    client,
                    dst: upstream.addr,
                    source,
                    destination: Peer {
                        workload: Some(&upstream.workload),
                        identity: Some(&dst_id),
                    },
                    service: upstream.service.as_deref(),
                    started,
                };
                return passthrough(proxy, pod, stream, plain).await;
            }
            Hop {
                proxy_addr: SocketAddr::new(upstream.workload.ip, weft_core::ports::HBONE),
                identity: dst_id,
                destination: upstream.addr,
                workload: Some(upstream.workload.clone()),
                service: upstream.service.clone(),
            }
        }
    };

    let certs = proxy.certs_with(&src_id).await;
    let Some((identity, bundle)) = certs
        .as_ref()
        .and_then(|c| Some((c.get(&src_id)?, c.bundle.as_ref()?)))
    else {
        warn!(%client, %dst, source = %src_id, "early deny: no certificate for the source identity");
        return;
    };
    let key = PoolKey {
        source: src_id.clone(),
        proxy: hop.proxy_addr,
        destination: hop.identity.clone(),
    };
    // With connection tracing on, the tunnel carries this connection's span as its context.
    let span = ConnSpan::start(proxy, None, Kind::Client);
    // The pod's own address: with eBPF capture the listener saw the client on loopback.
    let request = ConnectRequest {
        destination: hop.destination,
        client: SocketAddr::new(pod.ip.into(), client.port()),
        traceparent: span.as_ref().map(|s| traceparent(s.context)),
        baggage: None,
    };
    let netns = pod.netns.clone();
    let tunnel = proxy
        .pool
        .connect(
            &key,
            || tls::client_config(&identity.cert, hop.identity.clone(), bundle),
            |addr| async move { netns.connect(addr, Some(PROXY_MARK)).await },
            &request,
        )
        .await;
    let tunnel = match tunnel {
        Ok(tunnel) => tunnel,
        Err(e) => {
            warn!(%client, %dst, destination = %hop.identity, error = %e, "connection failed");
            return;
        }
    };
    // Through a waypoint, the peer this proxy talked to is the waypoint (it picks the
    // endpoint): metrics and the access log name it, not an endpoint that never saw the
    // connection.
    let conn = Connection {
        reporter: Reporter::source,
        via: Via::Hbone,
        security: SecurityPolicy::mutual_tls,
        src_addr: client,
        source,
        dst_addr: match waypoint {
            Some(_) => hop.proxy_addr,
            None => hop.destination,
        },
        destination: Peer {
            workload: hop.workload.as_deref(),
            identity: Some(&hop.identity),
        },
        service: hop.service.as_deref(),
        started,
        trace: span,
    };
    forward(proxy, conn, stream, tunnel).await;
}

/// Where an HBONE tunnel goes: the proxy to dial and the identity it must prove, the
/// `:authority` to ask for, and what metrics name as the destination.
struct Hop {
    proxy_addr: SocketAddr,
    identity: SpiffeId,
    destination: SocketAddr,
    workload: Option<Arc<Workload>>,
    service: Option<Arc<Service>>,
}

/// Why a captured connection may not go where it asked: loopback (captured traffic to
/// loopback can only be a connection to the proxy's own listener, which passed through would
/// reach that listener again, without end) or the mesh's own ports on the pod.
fn forbidden_destination(pod: &Pod, dst: SocketAddr) -> Option<&'static str> {
    if dst.ip().is_loopback() || dst.ip().is_unspecified() {
        return Some("loopback is not a destination of captured traffic");
    }
    if dst.ip() == std::net::IpAddr::V4(pod.ip)
        && weft_core::hbone::MESH_PORTS.contains(&dst.port())
    {
        return Some("the mesh's own ports are not a destination");
    }
    None
}

/// A connection that leaves as plain TCP.
struct Plain<'a> {
    client: SocketAddr,
    dst: SocketAddr,
    source: Peer<'a>,
    destination: Peer<'a>,
    service: Option<&'a Service>,
    started: Instant,
}

async fn passthrough(proxy: &Proxy, pod: &Pod, stream: TcpStream, plain: Plain<'_>) {
    let upstream = match pod.netns.connect(plain.dst, Some(PROXY_MARK)).await {
        Ok(upstream) => upstream,
        Err(e) => {
            warn!(client = %plain.client, dst = %plain.dst, error = %e, "passthrough connection failed");
            return;
        }
    };
    let conn = Connection {
        reporter: Reporter::source,
        via: Via::Passthrough,
        security: SecurityPolicy::none,
        src_addr: plain.client,
        source: plain.source,
        dst_addr: plain.dst,
        destination: plain.destination,
        service: plain.service,
        started: plain.started,
        trace: None,
    };
    forward(proxy, conn, stream, upstream).await;
}
