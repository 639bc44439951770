//! The control-plane transport: gRPC (tonic) over TLS 1.3 with the mesh's own certificates. The
//! controller presents its SPIFFE identity; a proxy verifies it against the trust bundle it
//! was bootstrapped with, and authenticates itself with its node credential in the request
//! metadata (it has no certificate before it has talked to the controller).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tracing::debug;

use crate::identity::{SpiffeId, TrustBundle};

/// Namespace and service account of the controller's identity.
pub const CONTROLLER_NAMESPACE: &str = "weft-system";
/// Service account of the controller's identity.
pub const CONTROLLER_SERVICE_ACCOUNT: &str = "weft-controller";

/// The controller's SPIFFE ID in `trust_domain`.
pub fn controller_identity(trust_domain: &str) -> SpiffeId {
    SpiffeId::new(
        trust_domain,
        CONTROLLER_NAMESPACE,
        CONTROLLER_SERVICE_ACCOUNT,
    )
}

/// Where the controller is and how a proxy proves who it is to it: what the config stream and
/// the certificate client both need.
#[derive(Clone, Debug)]
pub struct ControllerEndpoint {
    /// The controller's gRPC address.
    pub addr: SocketAddr,
    /// File holding the caller's credential (re-read on every connect: it may be rotated).
    pub credential_file: std::path::PathBuf,
    /// The identity the controller must prove.
    pub identity: SpiffeId,
}

/// An accepted TLS connection, as tonic's server takes it.
pub struct TlsIo(tokio_rustls::server::TlsStream<TcpStream>);

impl tonic::transport::server::Connected for TlsIo {
    type ConnectInfo = Option<SocketAddr>;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.0.get_ref().0.peer_addr().ok()
    }
}

impl AsyncRead for TlsIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// TLS connections accepted on `listener`, handshakes done concurrently; failed handshakes are
/// logged and skipped.
pub fn incoming(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
) -> tokio_stream::wrappers::ReceiverStream<io::Result<TlsIo>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let acceptor = TlsAcceptor::from(config);
    tokio::spawn(async move {
        let mut backoff = crate::accept::Backoff::default();
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(pair) => {
                    backoff.succeeded();
                    pair
                }
                Err(e) => {
                    backoff.failed("control plane", &e).await;
                    continue;
                }
            };
            if tx.is_closed() {
                return;
            }
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let _ = tcp.set_nodelay(true);
                match tokio::time::timeout(std::time::Duration::from_secs(10), acceptor.accept(tcp))
                    .await
                {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(Ok(TlsIo(tls))).await;
                    }
                    Ok(Err(e)) => debug!(%peer, error = %e, "control-plane TLS handshake failed"),
                    Err(_) => debug!(%peer, "control-plane TLS handshake timed out"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// A lazily connecting channel to the controller at `addr` that accepts only a server proving
/// `expected` (chained to `bundle`).
pub fn channel(
    addr: SocketAddr,
    expected: SpiffeId,
    bundle: &TrustBundle,
) -> Result<tonic::transport::Channel, crate::tls::TlsError> {
    let config = Arc::new(crate::tls::control_client_config(expected, bundle)?);
    let connector = TlsConnector::from(config);
    let endpoint = tonic::transport::Endpoint::from_static("http://weft-controller")
        .connect_timeout(std::time::Duration::from_secs(5))
        .http2_keep_alive_interval(std::time::Duration::from_secs(10))
        .keep_alive_timeout(std::time::Duration::from_secs(5));
    let connect = tower::service_fn(move |_uri: http::Uri| {
        let connector = connector.clone();
        async move {
            let tcp = TcpStream::connect(addr).await?;
            tcp.set_nodelay(true)?;
            let name = rustls_pki_types::ServerName::try_from("weft-controller")
                .map_err(io::Error::other)?;
            let tls = connector.connect(name, tcp).await?;
            Ok::<_, io::Error>(hyper_util::rt::TokioIo::new(tls))
        }
    });
    Ok(endpoint.connect_with_connector_lazy(connect))
}
