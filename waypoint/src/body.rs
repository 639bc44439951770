//! The body type of every request and response the waypoint handles.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;

/// Bodies the waypoint sends and receives.
pub(crate) type Body = http_body_util::combinators::UnsyncBoxBody<bytes::Bytes, BoxError>;
/// Errors inside bodies.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A body that adds the length of its data frames to a shared count as they pass, and runs a
/// callback with its own count once it is dropped (finished, or abandoned by the peer).
pub(crate) struct Counted {
    inner: Body,
    count: Arc<AtomicU64>,
    on_drop: Option<Box<dyn FnOnce(u64) + Send>>,
}

impl Counted {
    /// Counts `inner`'s bytes into `count`.
    pub(crate) fn new(inner: Body, count: Arc<AtomicU64>) -> Self {
        Self {
            inner,
            count,
            on_drop: None,
        }
    }

    /// Runs `f` with the count once the body is dropped.
    pub(crate) fn on_drop(mut self, f: impl FnOnce(u64) + Send + 'static) -> Self {
        self.on_drop = Some(Box::new(f));
        self
    }

    /// Boxed as the waypoint's body type.
    pub(crate) fn boxed(self) -> Body {
        BodyExt::boxed_unsync(self)
    }
}

impl http_body::Body for Counted {
    type Data = bytes::Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            self.count.fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        if let Some(f) = self.on_drop.take() {
            f(self.count.load(Ordering::Relaxed));
        }
    }
}
