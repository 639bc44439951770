//! One request through the L7 pipeline: route → authorize → (timeout → retry → split →
//! balance → upstream). Every answer the waypoint makes itself says why, in its body and in
//! `x-weft-response-flags` (Envoy's flags: NR no route, UH no healthy endpoint, UO pool
//! overflow, UF connect failure, UT timeout, URX retries exhausted, RL budget spent).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Uri, Version};
use http_body::Frame;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Incoming;
use tracing::{debug, info};
use weft_core::identity::SpiffeId;
use weft_core::l7::Retry;

use crate::balance::{Outcome, PickError};
use crate::metrics::RequestLabels;
use crate::retry::{self, TryResult};
use crate::route::{self, RequestView};
use crate::state::ServiceRt;
use crate::upstream::{self, Dialer, UpstreamError};
use crate::{Body, Waypoint};
use weft_core::authz::{self, Subject};

/// The tunnel a request arrived in.
pub(crate) struct Tunnel {
    pub(crate) waypoint: Arc<Waypoint>,
    /// The client's proven identity (its node proxy presented the source workload's cert).
    pub(crate) peer: SpiffeId,
    /// The original client address (`forwarded`).
    pub(crate) client: SocketAddr,
    /// The original destination (service VIP:port or endpoint:port).
    pub(crate) target: SocketAddr,
}

const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "te",
    "trailer",
];

fn local(status: StatusCode, flags: &'static str, text: String) -> Response<Body> {
    let mut response = Response::new(
        Full::new(Bytes::from(text + "\n"))
            .map_err(|never: Infallible| match never {})
            .boxed_unsync(),
    );
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert("content-type", HeaderValue::from_static("text/plain"));
    response
        .headers_mut()
        .insert("x-weft-response-flags", HeaderValue::from_static(flags));
    response
}

/// A request body that can be sent again: its frames (data and trailers) as received.
#[derive(Clone)]
struct Replayable(Vec<BufferedFrame>);

#[derive(Clone)]
enum BufferedFrame {
    Data(Bytes),
    Trailers(HeaderMap),
}

impl Replayable {
    fn body(&self) -> Body {
        let frames: Vec<Result<Frame<Bytes>, crate::BoxError>> = self
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
async fn buffer(mut body: Incoming, cap: u64) -> Result<Replayable, Body> {
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
                    let rest = body.map_err(|e| Box::new(e) as crate::BoxError);
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

fn upstream_request(
    parts: &http::request::Parts,
    body: Body,
    authority: &str,
    http2: bool,
) -> Request<Body> {
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let uri: Uri = if http2 {
        format!("http://{authority}{path}")
            .parse()
            .unwrap_or_else(|_| Uri::from_static("/"))
    } else {
        path.parse().unwrap_or_else(|_| Uri::from_static("/"))
    };
    let mut request = Request::new(body);
    *request.method_mut() = parts.method.clone();
    *request.uri_mut() = uri;
    *request.version_mut() = if http2 {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    };
    let headers = request.headers_mut();
    for (name, value) in &parts.headers {
        if !HOP_BY_HOP.contains(&name.as_str()) || (name == "te" && value == "trailers") {
            headers.append(name.clone(), value.clone());
        }
    }
    if !http2
        && !headers.contains_key(http::header::HOST)
        && let Ok(host) = HeaderValue::from_str(authority)
    {
        headers.insert(http::header::HOST, host);
    }
    request
}

/// Serves one request.
pub(crate) async fn handle(
    tunnel: Arc<Tunnel>,
    request: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let started = Instant::now();
    let snapshot = tunnel.waypoint.state.load_full();
    let source = snapshot.mesh.workload_by_ip(tunnel.client.ip()).cloned();
    let grpc = request
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"));
    let http2 = request.version() == Version::HTTP_2;
    let service = snapshot.service_for(tunnel.target).cloned();
    let mut labels = RequestLabels {
        reporter: "waypoint",
        source_workload: source
            .as_ref()
            .map_or_else(|| "unknown".into(), |w| w.name.clone()),
        source_workload_namespace: source
            .as_ref()
            .map_or_else(|| "unknown".into(), |w| w.namespace.clone()),
        source_principal: tunnel.peer.to_string(),
        destination_service: service
            .as_ref()
            .map_or_else(|| tunnel.target.to_string(), |s| s.label.clone()),
        destination_service_namespace: service
            .as_ref()
            .map_or_else(|| "unknown".into(), |s| s.policy.namespace.clone()),
        destination_workload: "unknown".into(),
        route: "none".into(),
        response_code: 0,
        response_flags: "-",
        request_protocol: if grpc {
            "grpc"
        } else if http2 {
            "http2"
        } else {
            "http"
        },
        grpc_response_status: String::new(),
    };
    let response = match service {
        None => local(
            StatusCode::NOT_FOUND,
            "NR",
            format!(
                "weft waypoint {}/{}: {} is not a service bound to this waypoint",
                tunnel.waypoint.namespace, tunnel.waypoint.name, tunnel.target
            ),
        ),
        Some(service) => serve(&tunnel, &service, request, &mut labels, http2).await,
    };
    labels.response_code = response.status().as_u16();
    if let Some(flags) = response
        .headers()
        .get("x-weft-response-flags")
        .and_then(|v| v.to_str().ok())
    {
        labels.response_flags = match flags {
            "NR" => "NR",
            "UH" => "UH",
            "UO" => "UO",
            "UF" => "UF",
            "UT" => "UT",
            "URX" => "URX",
            "RBAC" => "RBAC",
            _ => "-",
        };
    }
    if let Some(g) = response
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
    {
        labels.grpc_response_status = g.to_owned();
    }
    let millis = started.elapsed().as_secs_f64() * 1000.0;
    tunnel.waypoint.metrics.record(&labels, millis);
    info!(
        target: "access",
        src = %tunnel.client,
        src_identity = %tunnel.peer,
        dst_service = %labels.destination_service,
        dst_workload = %labels.destination_workload,
        route = %labels.route,
        code = labels.response_code,
        flags = labels.response_flags,
        duration_ms = millis as u64,
        "request"
    );
    Ok(response)
}

async fn serve(
    tunnel: &Tunnel,
    service: &Arc<ServiceRt>,
    request: Request<Incoming>,
    labels: &mut RequestLabels,
    http2: bool,
) -> Response<Body> {
    let port = service.service_port(tunnel.target);
    let host = request
        .headers()
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| request.uri().authority().map(|a| a.to_string()))
        .unwrap_or_else(|| tunnel.target.to_string());
    let view = RequestView {
        path: request.uri().path(),
        query: request.uri().query(),
        method: request.method().as_str(),
        headers: request.headers(),
        port,
    };
    let Some(index) = route::select(&service.routes, &view) else {
        return local(
            StatusCode::NOT_FOUND,
            "NR",
            format!(
                "weft waypoint: no route of {}.{} matches {} {}",
                service.policy.name,
                service.policy.namespace,
                request.method(),
                request.uri().path()
            ),
        );
    };
    let route = &service.routes[index].route;
    labels.route = route.name.clone();

    let principal = tunnel.peer.to_string();
    let principal = principal.strip_prefix("spiffe://").unwrap_or(&principal);
    let subject = Subject {
        principal: Some(principal),
        namespace: Some(tunnel.peer.namespace()),
        ip: tunnel.client.ip(),
        port,
        request: Some(authz::Request {
            method: request.method().as_str(),
            path: request.uri().path(),
            host: host.split(':').next().unwrap_or(&host),
            headers: request.headers(),
        }),
    };
    if let Err(denied) = authz::check(&service.policy.authz, &subject) {
        return local(
            StatusCode::FORBIDDEN,
            "RBAC",
            format!(
                "RBAC: access denied: {} may not {} {} on {}.{} ({})",
                tunnel.peer,
                request.method(),
                request.uri().path(),
                service.policy.name,
                service.policy.namespace,
                denied.policy
            ),
        );
    }

    let budget = &service.budgets[index];
    budget.deposit();
    let backend_index = {
        let mut rng = tunnel.waypoint.rng();
        let total: u64 = route.backends.iter().map(|b| u64::from(b.weight)).sum();
        let mut roll = rng.below(total.max(1) as usize) as u64;
        route
            .backends
            .iter()
            .find(|b| {
                if roll < u64::from(b.weight) {
                    true
                } else {
                    roll -= u64::from(b.weight);
                    false
                }
            })
            .map_or(0, |b| b.backend)
    };
    // A client that addressed one pod (not the service) gets that pod, after the same policy.
    let pinned = (tunnel.target.ip() != service.policy.vip).then(|| tunnel.target.ip());
    let backend_index = match pinned {
        Some(ip) => service
            .backends
            .iter()
            .position(|(b, _)| b.endpoints().iter().any(|e| e.workload.ip == ip))
            .unwrap_or(backend_index),
        None => backend_index,
    };
    let Some((backend, ports)) = service.backends.get(backend_index) else {
        return local(
            StatusCode::SERVICE_UNAVAILABLE,
            "UH",
            "weft waypoint: route without backend".into(),
        );
    };
    let target_port = match pinned {
        Some(_) => tunnel.target.port(),
        None => ports
            .iter()
            .find(|p| p.port == port)
            .map_or(port, |p| p.target_port),
    };

    let (parts, body) = request.into_parts();
    let retry: Option<&Retry> = route.retry.as_ref().filter(|r| r.attempts > 0);
    let (replay, mut once) = match retry {
        Some(r) => match buffer(body, r.max_body_bytes).await {
            Ok(replay) => (Some(replay), None),
            Err(stream) => (None, Some(stream)),
        },
        None => (
            None,
            Some(
                body.map_err(|e| Box::new(e) as crate::BoxError)
                    .boxed_unsync(),
            ),
        ),
    };
    let attempts = if replay.is_some() {
        retry.map_or(0, |r| r.attempts)
    } else {
        0
    };
    let deadline = route
        .timeout_ms
        .map(|ms| Instant::now() + Duration::from_millis(ms));
    let dialer = Dialer {
        pool: tunnel.waypoint.pool.clone(),
        identity: match tunnel.waypoint.certs.get() {
            Some(identity) => identity,
            None => {
                return local(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "UF",
                    "weft waypoint: no certificate loaded yet".into(),
                );
            }
        },
        client: tunnel.client,
        port: target_port,
    };
    let per_try = retry
        .and_then(|r| r.per_try_timeout_ms)
        .map(Duration::from_millis);
    let mut previous = None;
    let mut attempt = 0u32;
    loop {
        let picked = {
            let mut rng = tunnel.waypoint.rng();
            backend.pick(&mut rng, previous, pinned)
        };
        let (endpoint, in_flight) = match picked {
            Ok(picked) => picked,
            Err(PickError::NoHealthy) => {
                return local(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "UH",
                    format!(
                        "weft waypoint: no healthy endpoint of {} (all ejected or none)",
                        backend.name
                    ),
                );
            }
            Err(PickError::Overflow) => {
                return local(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "UO",
                    format!(
                        "weft waypoint: circuit breaker open for {}: too many requests in flight",
                        backend.name
                    ),
                );
            }
        };
        labels.destination_workload = endpoint.workload.name.clone();
        previous = Some(endpoint.workload.ip);
        let body = match (&replay, once.take()) {
            (Some(replay), _) => replay.body(),
            (None, Some(body)) => body,
            (None, None) => Full::new(Bytes::new())
                .map_err(|never: Infallible| match never {})
                .boxed_unsync(),
        };
        let authority = format!("{}:{}", service.policy.vip, port);
        let upstream_req = upstream_request(&parts, body, &authority, http2);
        let send = upstream::send(backend, &endpoint, &dialer, upstream_req, http2);
        let limit = match (per_try, deadline) {
            (Some(t), Some(d)) => Some(t.min(d.saturating_duration_since(Instant::now()))),
            (Some(t), None) => Some(t),
            (None, Some(d)) => Some(d.saturating_duration_since(Instant::now())),
            (None, None) => None,
        };
        let result = match limit {
            Some(limit) => tokio::time::timeout(limit, send).await.ok(),
            None => Some(send.await),
        };
        drop(in_flight);
        let route_timed_out = deadline.is_some_and(|d| Instant::now() >= d);
        let response: Option<Result<Response<upstream::Guarded>, UpstreamError>> = result;
        let outcome = match &response {
            None | Some(Err(UpstreamError::Overflow)) => None,
            Some(Ok(r)) => Some(Outcome::Status(r.status().as_u16())),
            Some(Err(_)) => Some(Outcome::ConnectFailure),
        };
        if let Some(outcome) = outcome {
            backend.record(&endpoint, outcome);
        }
        let verdict = match &response {
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
        };
        let wants_retry = retry.is_some_and(|r| retry::retryable(&r.on, &verdict));
        if wants_retry && attempt < attempts && !route_timed_out {
            if budget.withdraw() {
                attempt += 1;
                tunnel
                    .waypoint
                    .metrics
                    .retries
                    .get_or_create(&vec![(
                        "destination_service".to_owned(),
                        labels.destination_service.clone(),
                    )])
                    .inc();
                if let Some(r) = retry {
                    let pause = {
                        let mut rng = tunnel.waypoint.rng();
                        retry::backoff(r, attempt, &mut rng)
                    };
                    tokio::time::sleep(pause).await;
                }
                continue;
            }
            debug!(backend = %backend.name, "retry budget spent; returning the last answer");
        }
        return match response {
            Some(Ok(response)) => {
                let (mut parts, body) = response.into_parts();
                for name in HOP_BY_HOP {
                    parts.headers.remove(name);
                }
                Response::from_parts(
                    parts,
                    body.map_err(|e| Box::new(e) as crate::BoxError)
                        .boxed_unsync(),
                )
            }
            Some(Err(UpstreamError::Overflow)) => local(
                StatusCode::SERVICE_UNAVAILABLE,
                "UO",
                format!(
                    "weft waypoint: circuit breaker open for {}: connection pool and pending queue full",
                    backend.name
                ),
            ),
            Some(Err(e)) => local(
                StatusCode::SERVICE_UNAVAILABLE,
                if attempt > 0 { "URX" } else { "UF" },
                format!(
                    "weft waypoint: upstream {} failed after {} tries: {e}",
                    endpoint.workload.name,
                    attempt + 1
                ),
            ),
            None => local(
                StatusCode::GATEWAY_TIMEOUT,
                "UT",
                format!(
                    "weft waypoint: upstream request timeout ({} tries)",
                    attempt + 1
                ),
            ),
        };
    }
}
