//! Request bodies kept for replay: a retry sends the same frames (data and trailers) again.
//! Only bodies up to a cap are kept; a larger one is streamed once and not retried.

use bytes::Bytes;
use http::HeaderMap;
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Incoming;
use tracing::debug;

use crate::body::{Body, BoxError};

/// The most of a body kept for mirrored copies when the route has no retries.
pub(crate) const MIRROR_CAP: u64 = 64 * 1024;

/// A request body that can be sent again: its frames as received.
#[derive(Clone)]
pub(crate) struct Replayable(Vec<BufferedFrame>);

#[derive(Clone)]
enum BufferedFrame {
    Data(Bytes),
    Trailers(HeaderMap),
}

impl Replayable {
    pub(crate) fn body(&self) -> Body {
        let frames: Vec<Result<Frame<Bytes>, BoxError>> = self
            .0
            .iter()
            .map(|f| {
                Ok(match f {
                    BufferedFrame::Data(b) => Frame::data(b.clone()),
                    BufferedFrame::Trailers(t) => Frame::trailers(t.clone()),
                })
            })
            .collect();
        StreamBody::new(tokio_stream::iter(frames)).boxed_unsync()
    }
}

/// Reads up to `cap` bytes of `body`. Returns the whole body if it fits, else the body to
/// stream once (what was read, then the rest).
pub(crate) async fn buffer(mut body: Body, cap: u64) -> Result<Replayable, Body> {
    let mut frames = Vec::new();
    let mut size = 0u64;
    loop {
        match body.frame().await {
            None => return Ok(Replayable(frames)),
            Some(Err(e)) => {
                debug!(error = %e, "request body broken");
                return Ok(Replayable(frames));
            }
            Some(Ok(frame)) => {
                let frame = match frame.into_data() {
                    Ok(data) => {
                        size += data.len() as u64;
                        BufferedFrame::Data(data)
                    }
                    Err(frame) => match frame.into_trailers() {
                        Ok(t) => BufferedFrame::Trailers(t),
                        Err(_) => continue,
                    },
                };
                frames.push(frame);
                if size > cap {
                    let head = Replayable(frames).body();
                    let rest = body;
                    let chained = tokio_stream::StreamExt::chain(
                        http_body_util::BodyStream::new(head),
                        http_body_util::BodyStream::new(rest),
                    );
                    return Err(StreamBody::new(chained).boxed_unsync());
                }
            }
        }
    }
}

/// A body streamed once, as received.
pub(crate) fn once(body: Incoming) -> Body {
    body.map_err(|e| Box::new(e) as BoxError).boxed_unsync()
}
