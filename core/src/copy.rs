//! Bidirectional copying between the two legs of a proxied connection, counting bytes as they
//! pass so that metrics move during long transfers, not only at the end.

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
