//! An enrolled pod as its listeners see it, and the accept loop each of them runs.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use weft_core::accept::{ConnectionLimits, RefusalLog};
use weft_core::drain;
use weft_core::mesh::Workload;
use weft_core::netns::Netns;

use crate::proxy::Proxy;

/// An enrolled pod.
pub(crate) struct Pod {
    pub(crate) workload: Arc<Workload>,
    pub(crate) netns: Arc<Netns>,
    /// The kernel's cookie of the pod's network namespace (eBPF capture keys on it).
    pub(crate) cookie: u64,
    /// The pod's IP (as the CNI plugin reported it).
    pub(crate) ip: Ipv4Addr,
}

/// Connections one listener of one pod may have open at once: beyond it new ones are closed,
/// so one pod cannot take the node proxy's file descriptors from every other.
pub(crate) const MAX_CONNECTIONS_PER_LISTENER: usize = 4096;
/// HBONE connections from one peer address to one pod: peers pool their tunnels over a few
/// connections, so more is a peer hoarding places.
pub(crate) const MAX_HBONE_PER_PEER: usize = 256;
/// Plaintext connections from one peer address to one pod (PERMISSIVE/DISABLE clients open one
/// per request stream, so more room than HBONE).
pub(crate) const MAX_PLAINTEXT_PER_PEER: usize = 1024;

/// Accepts on one of a pod's listeners until `drain`, running `handle` for each connection in
/// its own task, under a span naming the listener, a connection id, the pod and the peer.
pub(crate) async fn accept_loop<F, Fut>(
    listener: tokio::net::TcpListener,
    listener_name: &'static str,
    limits: Arc<ConnectionLimits>,
    proxy: Arc<Proxy>,
    pod: Arc<Pod>,
    drain: drain::Watch,
    handle: F,
) where
    F: Fn(Arc<Proxy>, Arc<Pod>, tokio::net::TcpStream, SocketAddr, drain::Watch) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    use tracing::Instrument;
    let mut backoff = weft_core::accept::Backoff::default();
    let mut refusals = RefusalLog::default();
    loop {
        let (stream, peer) = tokio::select! {
            _ = drain.signaled() => return,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tokio::select! {
                        _ = drain.signaled() => return,
                        _ = backoff.failed(listener_name, &e) => continue,
                    }
                }
            },
        };
        backoff.succeeded();
        let slot = match limits.admit(peer.ip()) {
            Ok(slot) => slot,
            Err(why) => {
                let _pod = tracing::warn_span!("pod", pod = %pod.workload.name).entered();
                refusals.refused(listener_name, peer.ip(), why);
                continue;
            }
        };
        refusals.admitted();
        let span = tracing::info_span!(
            "conn",
            listener = listener_name,
            id = proxy.conn_id(),
            pod = %pod.workload.name,
            %peer
        );
        let task = handle(proxy.clone(), pod.clone(), stream, peer, drain.clone());
        tokio::spawn(
            async move {
                task.await;
                drop(slot);
            }
            .instrument(span),
        );
    }
}
