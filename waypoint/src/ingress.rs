//! The gateway role: listeners for clients outside the mesh, one per port the config's
//! `listeners` name, bound and closed as the config changes. Each connection is served like a
//! tunnel's, without a peer identity: the request's host picks the VirtualService bound to the
//! Gateway, and the request goes through the same pipeline (routes, authorization, retries,
//! timeouts, metrics, access log, traces), into the mesh over HBONE as the gateway's own
//! workload.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};
use weft_core::accept::{ConnectionLimits, RefusalLog};
use weft_core::drain;

use crate::request;
use crate::shared::{Tunnel, Waypoint};

/// Client connections a listener holds open, in all and from one address.
const MAX_CONNECTIONS: usize = 16_384;
const MAX_CONNECTIONS_PER_CLIENT: usize = 512;
/// How long a request's head may take to arrive.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest request head (HTTP/1.1) or header list (HTTP/2).
const MAX_HEADER_BYTES: usize = 64 * 1024;

/// The listeners running, by port, and the drain their connections hold (none once the
/// gateway drains: nothing more is bound).
#[derive(Default)]
pub(crate) struct Listeners {
    running: Mutex<HashMap<u16, JoinHandle<()>>>,
    drain: Mutex<Option<drain::Watch>>,
}

impl Listeners {
    /// Lets listeners run, their connections holding `drain`.
    pub(crate) fn open(&self, drain: drain::Watch) {
        *self.drain.lock().unwrap_or_else(|e| e.into_inner()) = Some(drain);
    }

    /// Stops accepting on every port (connections finish under their drain).
    pub(crate) fn close(&self) {
        self.drain.lock().unwrap_or_else(|e| e.into_inner()).take();
        for (_, task) in self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
        {
            task.abort();
        }
    }

    /// Listens on each of `ports` (binding the new ones) and stops listening on the others; a
    /// port that cannot be bound is logged and tried again on the next config.
    pub(crate) fn reconcile(&self, waypoint: &Arc<Waypoint>, ports: &[u16]) {
        let Some(drain) = self.drain.lock().unwrap_or_else(|e| e.into_inner()).clone() else {
            return;
        };
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        running.retain(|port, task| {
            let keep = ports.contains(port) && !task.is_finished();
            if !keep {
                task.abort();
                info!(port, "gateway listener closed");
            }
            keep
        });
        for &port in ports {
            if running.contains_key(&port) {
                continue;
            }
            let addr = SocketAddr::from(([0, 0, 0, 0], port));
            let listener = match std::net::TcpListener::bind(addr)
                .and_then(|l| l.set_nonblocking(true).map(|()| l))
                .and_then(TcpListener::from_std)
            {
                Ok(listener) => listener,
                Err(e) => {
                    warn!(%addr, error = %e, "gateway listener not bound");
                    continue;
                }
            };
            info!(%addr, "gateway listening for clients outside the mesh");
            running.insert(
                port,
                tokio::spawn(accept(waypoint.clone(), listener, drain.clone())),
            );
        }
    }
}

async fn accept(waypoint: Arc<Waypoint>, listener: TcpListener, drain: drain::Watch) {
    let mut backoff = weft_core::accept::Backoff::default();
    let limits = ConnectionLimits::new(MAX_CONNECTIONS, MAX_CONNECTIONS_PER_CLIENT);
    let mut refusals = RefusalLog::default();
    loop {
        let accepted = tokio::select! {
            _ = drain.signaled() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, client) = match accepted {
            Ok(accepted) => {
                backoff.succeeded();
                accepted
            }
            Err(e) => {
                backoff.failed("gateway", &e).await;
                continue;
            }
        };
        let slot = match limits.admit(client.ip()) {
            Ok(slot) => slot,
            Err(why) => {
                refusals.refused("gateway", client.ip(), why);
                continue;
            }
        };
        refusals.admitted();
        let _ = stream.set_nodelay(true);
        let (waypoint, drain) = (waypoint.clone(), drain.clone());
        tokio::spawn(async move {
            serve(waypoint, stream, client, drain).await;
            drop(slot);
        });
    }
}

async fn serve(
    waypoint: Arc<Waypoint>,
    stream: TcpStream,
    client: SocketAddr,
    drain: drain::Watch,
) {
    let Ok(target) = stream.local_addr() else {
        return;
    };
    let tunnel = Arc::new(Tunnel {
        waypoint,
        peer: None,
        client,
        target,
    });
    let service =
        hyper::service::service_fn(move |request| request::handle(tunnel.clone(), request));
    let mut http = auto::Builder::new(TokioExecutor::new());
    // A client that sends half a request head is cut off; header lists are bounded.
    http.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_HEADER_BYTES);
    http.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(MAX_HEADER_BYTES as u32);
    let conn = http.serve_connection_with_upgrades(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let served = tokio::select! {
        served = conn.as_mut() => served,
        _ = drain.signaled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = served {
        debug!(%client, error = %e, "gateway connection ended");
    }
}
