//! An HTTP/2 CONNECT stream as a byte stream (`AsyncRead + AsyncWrite`).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use h2::{RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Largest capacity asked for in one write; bounds what one stream buffers in h2.
const MAX_WRITE: usize = 256 * 1024;

/// One tunnel: bytes written go out as DATA frames, DATA frames received are read.
pub struct H2Stream {
    send: SendStream<Bytes>,
    recv: RecvStream,
    pending: Bytes,
    shut_down: bool,
    _active: Option<ActiveGuard>,
}

/// Decrements a connection's active stream count when its stream ends.
/// Counts a stream out of its connection's count (and the pool's) when dropped.
pub(crate) struct ActiveGuard(
    pub(crate) Arc<AtomicUsize>,
    pub(crate) Option<Arc<AtomicUsize>>,
);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
        if let Some(total) = &self.1 {
            total.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl H2Stream {
    pub(crate) fn new(
        send: SendStream<Bytes>,
        recv: RecvStream,
        active: Option<ActiveGuard>,
    ) -> Self {
        Self {
            send,
            recv,
            pending: Bytes::new(),
            shut_down: false,
            _active: active,
        }
    }
}

impl H2Stream {
    /// The stream's halves (and bytes received but not yet read), for a copy loop that hands
    /// DATA frames' buffers on without copying them (`crate::copy`). The guard keeps the
    /// stream counted until it is dropped.
    pub(crate) fn into_parts(self) -> (SendStream<Bytes>, RecvStream, Bytes, Option<ActiveGuard>) {
        (self.send, self.recv, self.pending, self._active)
    }
}

pub(crate) fn h2_io(e: h2::Error) -> io::Error {
    if e.is_io() {
        e.into_io()
            .unwrap_or_else(|| io::Error::other("h2 I/O error"))
    } else if e.reason() == Some(h2::Reason::NO_ERROR) {
        io::Error::new(io::ErrorKind::UnexpectedEof, "tunnel closed")
    } else {
        io::Error::new(io::ErrorKind::ConnectionReset, e)
    }
}

impl AsyncRead for H2Stream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        while this.pending.is_empty() {
            match ready!(this.recv.poll_data(cx)) {
                None => return Poll::Ready(Ok(())),
                Some(Ok(data)) => {
                    // The bytes are ours now: let the peer send more.
                    let _ = this.recv.flow_control().release_capacity(data.len());
                    this.pending = data;
                }
                Some(Err(e)) if e.reason() == Some(h2::Reason::NO_ERROR) => {
                    return Poll::Ready(Ok(()));
                }
                Some(Err(e)) => return Poll::Ready(Err(h2_io(e))),
            }
        }
        let n = buf.remaining().min(this.pending.len());
        buf.put_slice(&this.pending[..n]);
        this.pending.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for H2Stream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let this = &mut *self;
        this.send.reserve_capacity(buf.len().min(MAX_WRITE));
        loop {
            match ready!(this.send.poll_capacity(cx)) {
                Some(Ok(0)) => continue,
                Some(Ok(n)) => {
                    let n = n.min(buf.len());
                    return match this
                        .send
                        .send_data(Bytes::copy_from_slice(&buf[..n]), false)
                    {
                        Ok(()) => Poll::Ready(Ok(n)),
                        Err(e) => Poll::Ready(Err(h2_io(e))),
                    };
                }
                Some(Err(e)) => return Poll::Ready(Err(h2_io(e))),
                None => {
                    // The stream was reset: report why.
                    let reason = ready!(this.send.poll_reset(cx));
                    return Poll::Ready(Err(match reason {
                        Ok(reason) => io::Error::new(
                            io::ErrorKind::BrokenPipe,
                            format!("tunnel reset by peer: {reason}"),
                        ),
                        Err(e) => h2_io(e),
                    }));
                }
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.shut_down {
            self.shut_down = true;
            // END_STREAM carries the half-close; an error means the stream is already gone.
            let _ = self.send.send_data(Bytes::new(), true);
        }
        Poll::Ready(Ok(()))
    }
}
