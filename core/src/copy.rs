//! Bidirectional copying between the two legs of a proxied connection, counting bytes as they
//! pass so that metrics move during long transfers, not only at the end. Between a TCP
//! connection and an HBONE tunnel no byte is copied in user space: what is read from the socket
//! becomes the DATA frame's buffer, and a received DATA frame's buffer is written to the socket
//! as it is.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::metrics::ConnMetrics;

/// Buffer per direction: large enough to fill 16 KB TLS records and big H2 frames.
const BUF: usize = 64 * 1024;

/// The client-facing leg, counting what the client sends (reads) and receives (writes).
struct Counted<'a, S> {
    inner: S,
    read: &'a Counter,
    written: &'a Counter,
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<'_, S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.read.inc_by(n as u64);
        }
        res
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<'_, S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = res {
            self.written.inc_by(n as u64);
        }
        res
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Copies both ways until both sides are done. `client` is the leg towards the connection's
/// originator; its reads count as sent bytes and its writes as received bytes. Returns
/// (client → server, server → client) byte counts.
pub async fn proxy<C, S>(client: C, server: S, metrics: &ConnMetrics) -> io::Result<(u64, u64)>
where
    C: AsyncRead + AsyncWrite + Unpin,
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut client = Counted {
        inner: client,
        read: &metrics.sent,
        written: &metrics.received,
    };
    let mut server = server;
    tokio::io::copy_bidirectional_with_sizes(&mut client, &mut server, BUF, BUF).await
}

/// One leg of a proxied connection.
pub enum Leg {
    Tcp(tokio::net::TcpStream),
    Tunnel(crate::hbone::H2Stream),
}

impl From<tokio::net::TcpStream> for Leg {
    fn from(s: tokio::net::TcpStream) -> Self {
        Self::Tcp(s)
    }
}

impl From<crate::hbone::H2Stream> for Leg {
    fn from(s: crate::hbone::H2Stream) -> Self {
        Self::Tunnel(s)
    }
}

/// [`proxy`] for the legs the proxies have: between TCP and a tunnel without copies, else the
/// generic loop.
pub async fn proxy_legs(client: Leg, server: Leg, metrics: &ConnMetrics) -> io::Result<(u64, u64)> {
    match (client, server) {
        (Leg::Tcp(tcp), Leg::Tunnel(tunnel)) => {
            tunnel::proxy(tcp, tunnel, &metrics.sent, &metrics.received).await
        }
        (Leg::Tunnel(tunnel), Leg::Tcp(tcp)) => {
            // The tunnel is the client's leg: what it delivers is what the client sent.
            let (to_tunnel, to_tcp) =
                tunnel::proxy(tcp, tunnel, &metrics.received, &metrics.sent).await?;
            Ok((to_tcp, to_tunnel))
        }
        (Leg::Tcp(a), Leg::Tcp(b)) => proxy(a, b, metrics).await,
        (Leg::Tunnel(a), Leg::Tunnel(b)) => proxy(a, b, metrics).await,
    }
}

mod tunnel {
    use std::future::poll_fn;
    use std::io;

    use bytes::{Bytes, BytesMut};
    use h2::{RecvStream, SendStream};
    use prometheus_client::metrics::counter::Counter;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    use tokio::net::tcp::{ReadHalf, WriteHalf};

    use super::BUF;
    use crate::hbone::H2Stream;
    use crate::hbone::stream::h2_io;

    /// Copies both ways until both are done; `from_tcp` counts what the socket delivers,
    /// `to_tcp` what is written to it. Returns (TCP → tunnel, tunnel → TCP) byte counts.
    pub(super) async fn proxy(
        mut tcp: TcpStream,
        tunnel: H2Stream,
        from_tcp: &Counter,
        to_tcp: &Counter,
    ) -> io::Result<(u64, u64)> {
        let (mut send, mut recv, pending, _active) = tunnel.into_parts();
        let (read, write) = tcp.split();
        tokio::try_join!(
            tcp_to_tunnel(read, &mut send, from_tcp),
            tunnel_to_tcp(&mut recv, pending, write, to_tcp),
        )
    }

    async fn tcp_to_tunnel(
        mut read: ReadHalf<'_>,
        send: &mut SendStream<Bytes>,
        counter: &Counter,
    ) -> io::Result<u64> {
        let mut total = 0;
        let mut buf = BytesMut::with_capacity(BUF);
        loop {
            // Reads go into what is left of the allocation until little is: small messages
            // share one, and a frame's bytes stay valid while h2 still holds them.
            if buf.capacity() < BUF / 8 {
                buf.reserve(BUF);
            }
            let n = read.read_buf(&mut buf).await?;
            if n == 0 {
                // END_STREAM carries the half-close; an error means the stream is gone.
                let _ = send.send_data(Bytes::new(), true);
                return Ok(total);
            }
            counter.inc_by(n as u64);
            total += n as u64;
            let mut data = buf.split().freeze();
            while !data.is_empty() {
                send.reserve_capacity(data.len());
                let granted = match poll_fn(|cx| send.poll_capacity(cx)).await {
                    Some(Ok(0)) => continue,
                    Some(Ok(granted)) => granted,
                    Some(Err(e)) => return Err(h2_io(e)),
                    None => {
                        let reason = poll_fn(|cx| send.poll_reset(cx)).await;
                        return Err(match reason {
                            Ok(reason) => io::Error::new(
                                io::ErrorKind::BrokenPipe,
                                format!("tunnel reset by peer: {reason}"),
                            ),
                            Err(e) => h2_io(e),
                        });
                    }
                };
                let chunk = data.split_to(granted.min(data.len()));
                send.send_data(chunk, false).map_err(h2_io)?;
            }
        }
    }

    async fn tunnel_to_tcp(
        recv: &mut RecvStream,
        pending: Bytes,
        mut write: WriteHalf<'_>,
        counter: &Counter,
    ) -> io::Result<u64> {
        let mut total = pending.len() as u64;
        if !pending.is_empty() {
            write.write_all(&pending).await?;
            counter.inc_by(pending.len() as u64);
        }
        loop {
            match poll_fn(|cx| recv.poll_data(cx)).await {
                Some(Ok(data)) => {
                    write.write_all(&data).await?;
                    // Written: the peer may send as much again.
                    let _ = recv.flow_control().release_capacity(data.len());
                    counter.inc_by(data.len() as u64);
                    total += data.len() as u64;
                }
                Some(Err(e)) if e.reason() != Some(h2::Reason::NO_ERROR) => {
                    return Err(h2_io(e));
                }
                Some(Err(_)) | None => {
                    write.shutdown().await?;
                    return Ok(total);
                }
            }
        }
    }
}
