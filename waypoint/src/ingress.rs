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

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};
use weft_core::accept::{ConnectionLimits, serve_accepted};
use weft_core::drain;

use crate::ingress_tls::{Credentials, server_config};
use crate::request;
use crate::shared::{Tunnel, Waypoint};

/// Client connections a listener holds open, in all and from one address.
const MAX_CONNECTIONS: usize = 16_384;
const MAX_CONNECTIONS_PER_CLIENT: usize = 512;

/// How long a client's TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The listeners running, by port, and the drain their connections hold (none once the
/// gateway drains: nothing more is bound).
pub(crate) struct Listeners {
    running: Mutex<HashMap<u16, JoinHandle<()>>>,
    drain: Mutex<Option<drain::Watch>>,
    credentials: Arc<Credentials>,
}

impl Listeners {
    /// Listeners whose TLS credentials are read from `credential_dir`.
    pub(crate) fn new(credential_dir: std::path::PathBuf) -> Self {
        Self {
            running: Mutex::new(HashMap::new()),
            drain: Mutex::new(None),
            credentials: Arc::new(Credentials::new(credential_dir)),
        }
    }

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
            let tls = match server_config(waypoint.clone(), port, self.credentials.clone()) {
                Ok(config) => TlsAcceptor::from(config),
                Err(e) => {
                    warn!(%addr, error = %e, "gateway listener not bound: TLS settings refused");
                    continue;
                }
            };
            info!(%addr, "gateway listening for clients outside the mesh");
            running.insert(
                port,
                tokio::spawn(accept(waypoint.clone(), listener, tls, drain.clone())),
            );
        }
    }
}

async fn accept(
    waypoint: Arc<Waypoint>,
    listener: TcpListener,
    tls: TlsAcceptor,
    drain: drain::Watch,
) {
    let limits = ConnectionLimits::new(MAX_CONNECTIONS, MAX_CONNECTIONS_PER_CLIENT);
    let watch = drain.clone();
    serve_accepted(
        "gateway",
        listener,
        limits,
        &watch,
        |stream, client, slot| {
            let (waypoint, drain, tls) = (waypoint.clone(), drain.clone(), tls.clone());
            tokio::spawn(async move {
                let Ok(target) = stream.local_addr() else {
                    return;
                };
                // TLS if the listener has certificates now (the config may change them).
                let secure = waypoint
                    .snapshot
                    .load()
                    .listener(target.port())
                    .is_some_and(|l| !l.certificates.is_empty());
                if secure {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(stream)).await {
                        Ok(Ok(stream)) => serve(waypoint, stream, client, target, drain).await,
                        Ok(Err(e)) => debug!(%client, error = %e, "TLS handshake failed"),
                        Err(_) => debug!(%client, "TLS handshake timed out"),
                    }
                } else {
                    serve(waypoint, stream, client, target, drain).await;
                }
                drop(slot);
            });
        },
    )
    .await;
}

async fn serve<S>(
    waypoint: Arc<Waypoint>,
    stream: S,
    client: SocketAddr,
    target: SocketAddr,
    drain: drain::Watch,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let tunnel = Arc::new(Tunnel {
        waypoint,
        peer: None,
        client,
        target,
        at_listener: true,
    });
    if let Err(e) = request::serve_connection(tunnel, stream, &drain).await {
        debug!(%client, error = %e, "gateway connection ended");
    }
}
