//! The tries of one request: balance → send to the endpoint under the try's timeout → record
//! the outcome for outlier detection → retry if the policy, the route's timeout and the retry
//! budget allow, after a jittered backoff.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{Response, StatusCode};
use tracing::debug;
use weft_core::mesh::Retry;

use super::body::Replayable;
use super::reply::{Reply, ResponseFlag, downstream_response, full, local, upstream_request};
use super::retry::{self, Budget, TryResult};
use super::timeout::Deadlines;
use crate::backend::{Backend, Outcome, PickError, Reach};
use crate::body::Body;
use crate::metrics::RequestLabels;
use crate::shared::Waypoint;
use crate::upstream::{self, Dialer, Guarded, UpstreamError};
use weft_core::trace;

/// What the tries of one request share.
pub(crate) struct Tries<'a> {
    pub(crate) waypoint: &'a Waypoint,
    pub(crate) backend: &'a Arc<Backend>,
    pub(crate) dialer: &'a Dialer,
    pub(crate) parts: &'a http::request::Parts,
    /// The service address the request is sent as (`vip:port`).
    pub(crate) authority: String,
    pub(crate) http2: bool,
    /// The protocol an `Upgrade:` request asks for.
    pub(crate) upgrade: Option<http::HeaderValue>,
    /// Set when the client addressed one pod.
    pub(crate) pinned: Option<IpAddr>,
    /// The retry policy, if the request may be retried (its body was kept).
    pub(crate) retry: Option<&'a Retry>,
    pub(crate) budget: &'a Budget,
    pub(crate) deadlines: Deadlines,
    /// The request's trace: each try is a client span under its server span.
    pub(crate) trace: &'a trace::Scope,
}

/// The body of each try: a replayable one is sent again, a streamed one only once.
pub(crate) enum TryBody {
    Replay(Replayable),
    Once(Option<Body>),
}

impl TryBody {
    fn next(&mut self) -> Body {
        match self {
            Self::Replay(replay) => replay.body(),
            Self::Once(body) => body.take().unwrap_or_else(|| full(Bytes::new())),
        }
    }
}

impl Tries<'_> {
    pub(crate) async fn run(&self, mut body: TryBody, labels: &mut RequestLabels) -> Reply {
        let attempts = match (&body, self.retry) {
            (TryBody::Replay(_), Some(r)) => r.attempts,
            _ => 0,
        };
        let mut previous = None;
        let mut attempt = 0u32;
        loop {
            let picked = self
                .backend
                .pick(&mut self.waypoint.rng(), previous, self.pinned);
            let (endpoint, request_slot) = match picked {
                Ok(picked) => picked,
                Err(PickError::NoHealthy) => {
                    return local(
                        StatusCode::SERVICE_UNAVAILABLE,
                        ResponseFlag::NoHealthyUpstream,
                        format!(
                            "weft waypoint: no healthy endpoint of {} (all ejected or none)",
                            self.backend.name
                        ),
                    );
                }
                Err(PickError::Overflow) => {
                    return local(
                        StatusCode::SERVICE_UNAVAILABLE,
                        ResponseFlag::Overflow,
                        format!(
                            "weft waypoint: circuit breaker open for {}: too many requests in flight",
                            self.backend.name
                        ),
                    );
                }
            };
            match &endpoint.reach {
                Reach::Mesh(id) => labels.destination.set_workload(&endpoint.workload, id),
                Reach::Outside(_) => labels.destination.set_outside(&endpoint.workload.name),
            }
            previous = Some(endpoint.workload.ip);
            let mut request = upstream_request(
                self.parts,
                body.next(),
                &self.authority,
                self.http2,
                self.upgrade.as_ref(),
            );
            let span = self.trace.child(&mut self.waypoint.rng());
            // A waypoint that does not trace passes the caller's context on untouched (its
            // sampled flag included), rather than a context of spans it never reports.
            if self.trace.tracer.enabled() {
                trace::inject(
                    request.headers_mut(),
                    span,
                    self.trace.format,
                    self.trace.tracestate.as_ref(),
                );
            }
            let (span_start, span_clock) = (std::time::SystemTime::now(), Instant::now());
            let send = upstream::send(self.backend, &endpoint, self.dialer, request, self.http2);
            let result = match self.deadlines.try_limit(Instant::now()) {
                Some(limit) => tokio::time::timeout(limit, send).await.ok(),
                None => Some(send.await),
            };
            drop(request_slot);
            let route_expired = self.deadlines.route_expired(Instant::now());
            if let Some(outcome) = outcome(&result) {
                self.backend.record(&endpoint, outcome);
            }
            let verdict = verdict(&result);
            if span.sampled {
                let (status, error) = match &verdict {
                    TryResult::Response { status, .. } => (status.to_string(), *status >= 500),
                    TryResult::PerTryTimeout => ("timeout".to_owned(), true),
                    TryResult::Failed(e) => (format!("failed: {e}"), true),
                };
                self.trace.tracer.finish(trace::Span {
                    context: span,
                    parent: Some(self.trace.server.span_id),
                    name: format!("{} try {}", self.backend.name, attempt + 1),
                    kind: trace::Kind::Client,
                    start: span_start,
                    duration: span_clock.elapsed(),
                    error,
                    attributes: vec![
                        ("attempt", (attempt + 1).to_string()),
                        ("upstream_cluster", self.backend.name.clone()),
                        ("upstream_host", endpoint.workload.ip.to_string()),
                        ("upstream_workload", endpoint.workload.name.clone()),
                        ("peer.identity", endpoint.reach.principal()),
                        ("http.status_code", status),
                    ],
                });
            }
            let wants_retry = self
                .retry
                .is_some_and(|r| retry::retryable(&r.on, &verdict));
            if wants_retry && attempt < attempts && !route_expired {
                if self.budget.withdraw() {
                    attempt += 1;
                    self.waypoint
                        .metrics
                        .retries
                        .get_or_create(&vec![(
                            "destination_service".to_owned(),
                            labels.destination.destination_service.clone(),
                        )])
                        .inc();
                    if let Some(r) = self.retry {
                        let pause = retry::backoff(r, attempt, &mut self.waypoint.rng());
                        tokio::time::sleep(pause).await;
                    }
                    continue;
                }
                debug!(backend = %self.backend.name, "retry budget spent; returning the last answer");
            }
            let mut reply = self.answer(result, &endpoint.workload.name, attempt);
            reply
                .response
                .extensions_mut()
                .insert(super::access::Upstream {
                    host: endpoint.workload.ip,
                    cluster: self.backend.name.clone(),
                    tries: attempt + 1,
                });
            return reply;
        }
    }

    fn answer(
        &self,
        result: Option<Result<Response<Guarded>, UpstreamError>>,
        endpoint: &str,
        attempt: u32,
    ) -> Reply {
        match result {
            Some(Ok(response)) => downstream_response(response),
            Some(Err(UpstreamError::Overflow)) => local(
                StatusCode::SERVICE_UNAVAILABLE,
                ResponseFlag::Overflow,
                format!(
                    "weft waypoint: circuit breaker open for {}: connection pool and pending queue full",
                    self.backend.name
                ),
            ),
            Some(Err(e)) => local(
                StatusCode::SERVICE_UNAVAILABLE,
                if attempt > 0 {
                    ResponseFlag::RetriesExhausted
                } else {
                    ResponseFlag::ConnectFailure
                },
                format!(
                    "weft waypoint: upstream {endpoint} failed after {} tries: {e}",
                    attempt + 1
                ),
            ),
            None => local(
                StatusCode::GATEWAY_TIMEOUT,
                ResponseFlag::Timeout,
                format!(
                    "weft waypoint: upstream request timeout ({} tries)",
                    attempt + 1
                ),
            ),
        }
    }
}

/// What outlier detection learns from a try (`None`: the try said nothing about the
/// endpoint, e.g. it timed out or never left the pool).
fn outcome(result: &Option<Result<Response<Guarded>, UpstreamError>>) -> Option<Outcome> {
    match result {
        None | Some(Err(UpstreamError::Overflow)) => None,
        Some(Ok(r)) => Some(Outcome::Status(r.status().as_u16())),
        Some(Err(_)) => Some(Outcome::ConnectFailure),
    }
}

fn verdict(result: &Option<Result<Response<Guarded>, UpstreamError>>) -> TryResult<'_> {
    match result {
        None => TryResult::PerTryTimeout,
        Some(Ok(r)) => TryResult::Response {
            status: r.status().as_u16(),
            grpc: r
                .headers()
                .get("grpc-status")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok()),
        },
        Some(Err(e)) => TryResult::Failed(e),
    }
}

/// The address the client's request reached, as `vip:port` of the service.
pub(crate) fn authority(vip: IpAddr, port: u16) -> String {
    SocketAddr::new(vip, port).to_string()
}
