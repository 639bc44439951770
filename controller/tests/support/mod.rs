//! A Kubernetes API server that answers from recorded exchanges, for kube's real client.
//!
//! Tests queue recorded responses per request (`list <path>`, `watch <path>`, `post <path>`,
//! ...); a request waits until one is queued, so a test decides when each event arrives. Every
//! request's method and URI is logged for assertions.

#![allow(dead_code, unreachable_pub)]

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, StreamBody};
use tokio_stream::Stream;

/// Recorded exchanges from `tests/recorded/<name>.json`.
pub fn recorded(json: &str) -> serde_json::Value {
    serde_json::from_str(json).expect("recorded exchanges are JSON")
}

/// One recorded answer.
#[derive(Clone, Debug)]
pub struct Reply {
    status: u16,
    chunks: Vec<Bytes>,
}

impl Reply {
    /// A JSON document (a list, an object or a Status).
    pub fn json(status: u16, body: &serde_json::Value) -> Self {
        Self {
            status,
            chunks: vec![Bytes::from(body.to_string())],
        }
    }

    /// A watch response: one event per line, then the end of the stream.
    pub fn events(events: &serde_json::Value) -> Self {
        let events = events.as_array().expect("events are an array");
        Self {
            status: 200,
            chunks: events
                .iter()
                .map(|e| Bytes::from(format!("{e}\n")))
                .collect(),
        }
    }
}

#[derive(Default)]
struct Inner {
    queues: BTreeMap<String, VecDeque<Reply>>,
    log: Vec<(String, String)>,
    bodies: Vec<(String, serde_json::Value)>,
}

/// The replaying API server.
#[derive(Clone, Default)]
pub struct ApiServer(Arc<Mutex<Inner>>);

type Frames = Pin<Box<dyn Stream<Item = Result<http_body::Frame<Bytes>, Infallible>> + Send>>;

impl ApiServer {
    /// Queues `reply` for the next request matching `key` (`list /api/v1/pods`,
    /// `watch /api/v1/pods`, `post /apis/...`, `get /apis/...`, `put /apis/...`).
    pub fn push(&self, key: &str, reply: Reply) {
        self.0
            .lock()
            .expect("lock")
            .queues
            .entry(key.to_owned())
            .or_default()
            .push_back(reply);
    }

    /// Every request so far: (method, path?query).
    pub fn log(&self) -> Vec<(String, String)> {
        self.0.lock().expect("lock").log.clone()
    }

    /// Request bodies sent with POST/PUT/PATCH, by key.
    pub fn bodies(&self) -> Vec<(String, serde_json::Value)> {
        self.0.lock().expect("lock").bodies.clone()
    }

    /// A kube client talking to this server.
    pub fn client(&self) -> kube::Client {
        let server = self.clone();
        let service = tower::service_fn(move |request: Request<kube::client::Body>| {
            let server = server.clone();
            async move { Ok::<_, Infallible>(server.answer(request).await) }
        });
        kube::Client::new(service, "default")
    }

    async fn answer(&self, request: Request<kube::client::Body>) -> Response<StreamBody<Frames>> {
        let uri = request.uri().clone();
        let query = uri.query().unwrap_or("");
        let watching = query.split('&').any(|p| p == "watch=true");
        let method = request.method().as_str().to_ascii_lowercase();
        let verb = match (method.as_str(), watching) {
            ("get", true) => "watch".to_owned(),
            ("get", false) if is_collection(uri.path()) => "list".to_owned(),
            (m, _) => m.to_owned(),
        };
        let key = format!("{verb} {}", uri.path());
        {
            let mut inner = self.0.lock().expect("lock");
            inner.log.push((
                request.method().to_string(),
                uri.path_and_query()
                    .map(|p| p.to_string())
                    .unwrap_or_default(),
            ));
        }
        if matches!(method.as_str(), "post" | "put" | "patch") {
            let bytes = request
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let body = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
            self.0
                .lock()
                .expect("lock")
                .bodies
                .push((key.clone(), body));
        }
        // Wait for the test to queue an answer; an unanswered watch simply stays open.
        let reply = loop {
            if let Some(reply) = self
                .0
                .lock()
                .expect("lock")
                .queues
                .get_mut(&key)
                .and_then(|q| q.pop_front())
            {
                break reply;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        let frames: Frames = Box::pin(tokio_stream::iter(
            reply
                .chunks
                .into_iter()
                .map(|c| Ok(http_body::Frame::data(c))),
        ));
        Response::builder()
            .status(reply.status)
            .header("content-type", "application/json")
            .body(StreamBody::new(frames))
            .expect("response")
    }
}

/// Whether `path` names a collection (`/api/v1/pods`, `/apis/g/v/namespaces/ns/kind`) rather
/// than one object.
fn is_collection(path: &str) -> bool {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let rest = match parts.first() {
        Some(&"api") => &parts[2.min(parts.len())..],
        _ => &parts[3.min(parts.len())..],
    };
    matches!(rest, [_] | ["namespaces", _, _])
}

/// Waits until `check` holds for the latest value of `rx`, up to 10 s.
pub async fn until<T: Clone>(
    rx: &mut tokio::sync::watch::Receiver<T>,
    what: &str,
    check: impl Fn(&T) -> bool,
) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let current = rx.borrow_and_update().clone();
        if check(&current) {
            return current;
        }
        if tokio::time::timeout_at(deadline, rx.changed())
            .await
            .is_err()
        {
            panic!("timed out waiting for {what}");
        }
    }
}
