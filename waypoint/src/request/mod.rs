//! One request through the L7 pipeline, one concern per file:
//!
//! ```text
//! normalize→ one spelling of the path for every layer and the endpoint (400 if ambiguous)
//! route    → the first route whose conditions match (404 NR otherwise)
//! authz    → the service's AuthorizationPolicies (403 RBAC)
//! headers  → the route's direct response, or its header edits (request, then response)
//! fault    → injected delays and aborts
//! rewrite  → a redirect answered, or the path and authority rewritten
//! split    → a backend by weight, or the one holding the pod the client addressed
//! mirror   → copies of a share of requests to other backends, answers dropped
//! timeout  → the route's deadline and each try's
//! retry    → eligibility, budget, backoff (over a body kept by `body`)
//! tries    → balance → upstream, recording outcomes for outlier detection
//! reply    → the waypoint's own answers (flag in `x-weft-response-flags`), hop-by-hop
//! upgrade  → `Upgrade:` requests (WebSocket) joined end to end after a 101; CONNECT refused
//! ```
//!
//! Every request ends with one metrics sample and one access log line (`handle`).

mod access;
mod authz;
mod body;
mod fault;
mod headers;
mod mirror;
mod normalize;
mod reply;
pub(crate) mod retry;
mod rewrite;
pub(crate) mod route;
mod split;
mod timeout;
mod tries;
mod upgrade;

use std::convert::Infallible;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use http::{Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use weft_core::mesh::PathPart;
use weft_core::metrics::{DestinationLabels, SecurityPolicy, SourceLabels};

pub(crate) use self::mirror::MIRRORS_IN_FLIGHT;
use self::reply::{Reply, ResponseFlag, local};
use self::route::RequestView;
use self::timeout::Deadlines;
use self::tries::{Tries, TryBody};
use crate::body::{Body, Counted};
use crate::metrics::RequestLabels;
use crate::shared::Tunnel;
use crate::snapshot::BoundService;
use crate::upstream::Dialer;
use weft_core::trace;

/// Serves one request: the pipeline, then its metrics sample and access log line.
pub(crate) async fn handle(
    tunnel: Arc<Tunnel>,
    mut request: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let started = Instant::now();
    let span_start = std::time::SystemTime::now();
    let mut entry = access::Entry::begin(&mut request, &mut tunnel.waypoint.rng());
    // The trace this request continues (or starts): its server span, and how tries pass it on.
    let incoming = trace::extract(request.headers());
    let incoming_parent = incoming.as_ref().map(|i| i.parent.span_id);
    let tracer = tunnel.waypoint.tracing.get();
    let scope = trace::Scope {
        server: tracer.server_span(incoming.as_ref(), &mut tunnel.waypoint.rng()),
        tracer,
        format: incoming.as_ref().map_or(trace::Format::W3c, |i| i.format),
        tracestate: incoming.and_then(|i| i.tracestate),
    };
    // The access log names the trace the request is part of: the waypoint's when it traces,
    // else the caller's (if any).
    if scope.tracer.enabled() {
        entry.trace_id = format!("{:032x}", scope.server.trace_id);
    }
    let snapshot = tunnel.waypoint.snapshot.load_full();
    // An outside client is no workload, whatever address it comes from.
    let source = if tunnel.outside() {
        None
    } else {
        snapshot.mesh.workload_by_ip(tunnel.client.ip()).cloned()
    };
    let grpc = request
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"));
    // Upstream in the client's protocol; from outside the mesh (a browser that chose h2 by
    // ALPN, say) HTTP/1.1 unless it is gRPC, which is HTTP/2 only.
    let http2 = if tunnel.at_listener {
        grpc
    } else {
        request.version() == Version::HTTP_2
    };
    let service = if tunnel.at_listener {
        snapshot.host_for(tunnel.target.port(), &host_of(&request, &tunnel))
    } else {
        snapshot.service_for(tunnel.target)
    }
    .cloned();
    let mut labels = RequestLabels {
        reporter: "waypoint",
        source: SourceLabels::of(source.as_deref(), tunnel.peer.as_ref()),
        destination: DestinationLabels::of(
            None,
            None,
            service
                .as_ref()
                .map(|s| (s.policy.name.as_str(), s.policy.namespace.as_str())),
        ),
        route: "none".into(),
        request_protocol: if grpc {
            "grpc"
        } else if http2 {
            "http2"
        } else {
            "http"
        },
        response_code: 0,
        grpc_response_status: String::new(),
        response_flags: "-",
        connection_security_policy: SecurityPolicy::mutual_tls,
    };
    // Body sizes are known once the response body is done; they are recorded then.
    let request_bytes = Arc::new(AtomicU64::new(0));
    let request = request.map(|b| Counted::new(body::once(b), request_bytes.clone()).boxed());
    // An ingress listener that only redirects to https.
    let redirect = tunnel.at_listener
        && snapshot
            .listener(tunnel.target.port())
            .is_some_and(|l| l.https_redirect);
    let reply = match service {
        _ if redirect => {
            let location = format!(
                "https://{}{}",
                host_of(&request, &tunnel)
                    .rsplit_once(':')
                    .filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit()))
                    .map_or_else(|| host_of(&request, &tunnel), |(h, _)| h.to_owned()),
                request.uri().path_and_query().map_or("/", |p| p.as_str())
            );
            let mut reply = local(
                StatusCode::MOVED_PERMANENTLY,
                ResponseFlag::None,
                format!("moved to {location}"),
            );
            if let Ok(v) = http::HeaderValue::from_str(&location) {
                reply
                    .response
                    .headers_mut()
                    .insert(http::header::LOCATION, v);
            }
            reply
        }
        None if tunnel.at_listener => local(
            StatusCode::NOT_FOUND,
            ResponseFlag::NoRoute,
            format!(
                "weft gateway {}/{}: no VirtualService bound to it serves this host on port {}",
                tunnel.waypoint.namespace,
                tunnel.waypoint.name,
                tunnel.target.port()
            ),
        ),
        None => local(
            StatusCode::NOT_FOUND,
            ResponseFlag::NoRoute,
            format!(
                "weft waypoint {}/{}: {} is not a service bound to this waypoint",
                tunnel.waypoint.namespace, tunnel.waypoint.name, tunnel.target
            ),
        ),
        Some(service) => serve(&tunnel, &service, request, &mut labels, http2, &scope).await,
    };
    let response = reply.response;
    labels.response_code = response.status().as_u16();
    labels.response_flags = reply.flag.as_str();
    if let Some(g) = response
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
    {
        labels.grpc_response_status = g.to_owned();
    }
    let millis = started.elapsed().as_secs_f64() * 1000.0;
    tunnel.waypoint.metrics.record(&labels, millis);
    // The span is built only for a sampled trace: an unsampled request pays nothing for it.
    if scope.server.sampled {
        scope.tracer.finish(trace::Span {
            context: scope.server,
            parent: incoming_parent,
            name: format!(
                "{} {}",
                entry.method, labels.destination.destination_service
            ),
            kind: trace::Kind::Server,
            start: span_start,
            duration: started.elapsed(),
            error: labels.response_code >= 500,
            attributes: vec![
                ("http.method", entry.method.clone()),
                ("http.url", entry.path.clone()),
                ("http.status_code", labels.response_code.to_string()),
                ("route", labels.route.clone()),
                ("response_flags", labels.response_flags.to_owned()),
                (
                    "destination_service",
                    labels.destination.destination_service.clone(),
                ),
                (
                    "upstream_workload",
                    labels.destination.destination_workload.clone(),
                ),
                ("peer.identity", labels.source.source_principal.clone()),
                ("request_id", entry.request_id.clone()),
            ],
        });
    }
    // The bytes and the access log line once the response body is done.
    let metrics = tunnel.waypoint.metrics.clone();
    let upstream = response.extensions().get::<access::Upstream>().cloned();
    let client = tunnel.client;
    let response = response.map(move |b| {
        Counted::new(b, Arc::new(AtomicU64::new(0)))
            .on_drop(move |sent| {
                let received = request_bytes.load(Ordering::Relaxed);
                metrics.record_bytes(&labels, received, sent);
                entry.write(
                    &labels,
                    client,
                    upstream.as_ref(),
                    millis as u64,
                    received,
                    sent,
                );
            })
            .boxed()
    });
    Ok(response)
}

async fn serve(
    tunnel: &Tunnel,
    service: &Arc<BoundService>,
    mut request: Request<Body>,
    labels: &mut RequestLabels,
    http2: bool,
    trace: &trace::Scope,
) -> Reply {
    // The waypoint opens no arbitrary tunnels: an HTTP CONNECT is answered now, not left to
    // hang.
    if request.method() == http::Method::CONNECT {
        return local(
            StatusCode::METHOD_NOT_ALLOWED,
            ResponseFlag::BadRequest,
            "weft waypoint: CONNECT is not proxied".into(),
        );
    }
    // Normalize.
    match normalize::normalize_uri(request.uri()) {
        Ok(Some(uri)) => *request.uri_mut() = uri,
        Ok(None) => {}
        Err(e) => {
            return local(
                StatusCode::BAD_REQUEST,
                ResponseFlag::BadRequest,
                format!("weft waypoint: {e}"),
            );
        }
    }
    let port = service.service_port(tunnel.target);
    let host = host_of(&request, tunnel);
    if tunnel.outside() {
        // The mesh sees the gateway as the client; the outside client is named in the headers.
        let secure = tunnel
            .waypoint
            .snapshot
            .load()
            .listener(tunnel.target.port())
            .is_some_and(|l| !l.certificates.is_empty());
        forwarded_headers(request.headers_mut(), tunnel.client, secure);
    }

    // Route.
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
            ResponseFlag::NoRoute,
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
    // Only a rewrite or redirect of the matched prefix needs to know which prefix matched.
    let by_matched_prefix = |part: &PathPart| *part == PathPart::MatchedPrefix;
    let matched_prefix = (route
        .rewrite
        .as_ref()
        .is_some_and(|w| by_matched_prefix(&w.replaces))
        || route
            .redirect
            .as_ref()
            .is_some_and(|r| by_matched_prefix(&r.replaces)))
    .then(|| service.routes[index].matched_prefix(&view))
    .flatten()
    .map(str::to_owned);
    labels.route = route.name.clone();

    // Authorize.
    if let Some(denied) = authz::authorize(tunnel, service, &request, port, &host) {
        return denied;
    }

    // A direct response, or header edits.
    if let Some(direct) = &route.direct_response {
        let mut reply = headers::direct(direct);
        headers::apply(&route.response_headers, reply.response.headers_mut());
        return reply;
    }
    headers::apply(&route.request_headers, request.headers_mut());
    if let Some(fault) = &route.fault
        && let Some(mut aborted) = fault::inject(fault, &mut tunnel.waypoint.rng()).await
    {
        headers::apply(&route.response_headers, aborted.response.headers_mut());
        return aborted;
    }

    if let Some(redirect) = &route.redirect {
        let mut reply =
            rewrite::redirect(redirect, &host, request.uri(), matched_prefix.as_deref());
        headers::apply(&route.response_headers, reply.response.headers_mut());
        return reply;
    }
    if let Some(w) = &route.rewrite {
        rewrite::rewrite(w, matched_prefix.as_deref(), &mut request);
    }

    // Split.
    let budget = &service.budgets[index];
    budget.deposit();
    // A tunnel to one endpoint goes to it; a gateway's own address pins nothing.
    let pinned = (!tunnel.at_listener && tunnel.target.ip() != service.policy.vip)
        .then(|| tunnel.target.ip());
    let backend_index = split::choose(route, service, pinned, &mut tunnel.waypoint.rng());
    let Some((backend, ports)) = service.backends.get(backend_index) else {
        return local(
            StatusCode::SERVICE_UNAVAILABLE,
            ResponseFlag::NoHealthyUpstream,
            "weft waypoint: route without backend".into(),
        );
    };
    let target_port = match pinned {
        Some(_) => tunnel.target.port(),
        // From outside, the listener's port says nothing of the service's: its port of the
        // same number, else its first.
        None if tunnel.at_listener => ports
            .iter()
            .find(|p| p.port == port)
            .or(ports.first())
            .map_or(port, |p| p.target_port),
        None => ports
            .iter()
            .find(|p| p.port == port)
            .map_or(port, |p| p.target_port),
    };

    // Timeout and retries: keep the body for replay if it may be retried or copied.
    let upgrade = upgrade::requested(&request);
    let on_client = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut request));
    let (parts, incoming) = request.into_parts();
    // An upgrade is tried once and not copied: what follows the 101 cannot be replayed.
    let retry = route
        .retry
        .as_ref()
        .filter(|r| r.attempts > 0 && upgrade.is_none());
    let mirrors = match upgrade {
        None => mirror::chosen(route, &mut tunnel.waypoint.rng()),
        Some(_) => Vec::new(),
    };
    let keep = match (retry, mirrors.is_empty()) {
        (Some(r), _) => Some(r.max_body_bytes),
        (None, false) => Some(body::MIRROR_CAP),
        (None, true) => None,
    };
    let body = match keep {
        Some(cap) => match body::buffer(incoming, cap).await {
            Ok(replay) => TryBody::Replay(replay),
            Err(stream) => TryBody::Once(Some(stream)),
        },
        None => TryBody::Once(Some(incoming)),
    };
    let Some(identity) = tunnel.waypoint.certs.get() else {
        return local(
            StatusCode::SERVICE_UNAVAILABLE,
            ResponseFlag::ConnectFailure,
            "weft waypoint: no certificate loaded yet".into(),
        );
    };
    let dialer = Dialer {
        pool: tunnel.waypoint.pool.clone(),
        identity,
        client: tunnel.forwarded(),
        port: target_port,
    };
    if !mirrors.is_empty() {
        let copy = mirror::Copy {
            waypoint: &tunnel.waypoint,
            service,
            dialer: &dialer,
            parts: &parts,
            host: &host,
            port,
            http2,
            timeout: route.timeout_ms.map(std::time::Duration::from_millis),
        };
        let kept = match &body {
            TryBody::Replay(replay) => Some(replay),
            TryBody::Once(_) => None,
        };
        for m in &mirrors {
            copy.launch(m, kept);
        }
    }
    let tries = Tries {
        waypoint: &tunnel.waypoint,
        backend,
        dialer: &dialer,
        parts: &parts,
        authority: tries::authority(service.policy.vip, port),
        http2,
        upgrade,
        pinned,
        retry,
        budget,
        deadlines: Deadlines::new(
            route.timeout_ms,
            retry.and_then(|r| r.per_try_timeout_ms),
            Instant::now(),
        ),
        trace,
    };
    let mut reply = tries.run(body, labels).await;
    headers::apply(&route.response_headers, reply.response.headers_mut());
    if let Some(client) = on_client {
        upgrade::join(client, &mut reply.response);
    }
    reply
}

/// The host a request asks for: `Host`, else the URI's authority, else the address it came to.
fn host_of<B>(request: &Request<B>, tunnel: &Tunnel) -> String {
    request
        .headers()
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| request.uri().authority().map(|a| a.to_string()))
        .unwrap_or_else(|| tunnel.target.to_string())
}

/// `x-forwarded-for` gains the outside client's address; `x-forwarded-proto` says how it came.
fn forwarded_headers(headers: &mut http::HeaderMap, client: std::net::SocketAddr, secure: bool) {
    let chain = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(earlier) => format!("{earlier}, {}", client.ip()),
        None => client.ip().to_string(),
    };
    if let Ok(v) = http::HeaderValue::from_str(&chain) {
        headers.insert("x-forwarded-for", v);
    }
    headers.insert(
        "x-forwarded-proto",
        http::HeaderValue::from_static(if secure { "https" } else { "http" }),
    );
}

/// How long a request's head may take to arrive.
const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// Largest request head (HTTP/1.1) or header list (HTTP/2).
const MAX_HEADER_BYTES: usize = 64 * 1024;

/// Serves one client connection (a tunnel's stream, or an outside client's at a gateway)
/// with HTTP/1.1 or HTTP/2, each request through [`handle`], until it closes; on drain the
/// request in flight finishes, then it closes. A client that sends half a request head is
/// cut off, and heads and header lists are bounded.
pub(crate) async fn serve_connection<S>(
    tunnel: Arc<Tunnel>,
    stream: S,
    drain: &weft_core::drain::Watch,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    let service = hyper::service::service_fn(move |request| handle(tunnel.clone(), request));
    let mut http = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    http.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_HEADER_BYTES);
    http.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(MAX_HEADER_BYTES as u32);
    let conn = http.serve_connection_with_upgrades(TokioIo::new(stream), service);
    tokio::pin!(conn);
    tokio::select! {
        served = conn.as_mut() => served,
        _ = drain.signaled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    }
}
