//! What goes back to the client and on to the endpoint, besides the body: the waypoint's own
//! answers (with the reason in the body and an Envoy-style response flag), and the hop-by-hop
//! headers that must not cross it.

use std::convert::Infallible;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Full};

use crate::body::Body;

/// Why the waypoint answered a request itself (Envoy's response flags), or `None`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ResponseFlag {
    /// The endpoint answered.
    None,
    /// No route matched (`NR`).
    NoRoute,
    /// No healthy endpoint (`UH`).
    NoHealthyUpstream,
    /// A pool limit was reached (`UO`).
    Overflow,
    /// The endpoint could not be reached (`UF`).
    ConnectFailure,
    /// The route or try timed out (`UT`).
    Timeout,
    /// Retries were exhausted (`URX`).
    RetriesExhausted,
    /// Authorization denied it (`RBAC`).
    Denied,
    /// The request itself was refused, e.g. an ambiguous path (`DPE`).
    BadRequest,
    /// A fault was injected: the route aborted the request (`FI`).
    FaultInjected,
}

impl ResponseFlag {
    /// The flag as metrics and the `x-weft-response-flags` header say it.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::None => "-",
            Self::NoRoute => "NR",
            Self::NoHealthyUpstream => "UH",
            Self::Overflow => "UO",
            Self::ConnectFailure => "UF",
            Self::Timeout => "UT",
            Self::RetriesExhausted => "URX",
            Self::Denied => "RBAC",
            Self::BadRequest => "DPE",
            Self::FaultInjected => "FI",
        }
    }
}

/// A response, and why the waypoint made it if it did.
pub(crate) struct Reply {
    pub(crate) response: Response<Body>,
    pub(crate) flag: ResponseFlag,
}

/// The waypoint's own answer: `text` says why, the header names the flag.
pub(crate) fn local(status: StatusCode, flag: ResponseFlag, text: String) -> Reply {
    let mut response = Response::new(full(Bytes::from(text + "\n")));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert("content-type", HeaderValue::from_static("text/plain"));
    headers.insert(
        "x-weft-response-flags",
        HeaderValue::from_static(flag.as_str()),
    );
    Reply { response, flag }
}

/// A body of these bytes.
pub(crate) fn full(bytes: Bytes) -> Body {
    Full::new(bytes)
        .map_err(|never: Infallible| match never {})
        .boxed_unsync()
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

/// The request as sent to an endpoint: same method, path and end-to-end headers, addressed
/// to `authority` in the form the upstream protocol wants.
pub(crate) fn upstream_request(
    parts: &http::request::Parts,
    body: Body,
    authority: &str,
    http2: bool,
    upgrade: Option<&HeaderValue>,
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
    // The two hop-by-hop headers an upgrade needs at the next hop too.
    if let Some(protocol) = upgrade {
        headers.insert(
            http::header::CONNECTION,
            HeaderValue::from_static("upgrade"),
        );
        headers.insert(http::header::UPGRADE, protocol.clone());
    }
    request
}

/// The endpoint's response as sent to the client: without hop-by-hop headers.
pub(crate) fn downstream_response<B>(response: Response<B>) -> Reply
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let (mut parts, body) = response.into_parts();
    let switching = parts.status == StatusCode::SWITCHING_PROTOCOLS;
    for name in HOP_BY_HOP {
        // A 101 keeps the headers that say what it switched to.
        if switching && (name == "connection" || name == "upgrade") {
            continue;
        }
        parts.headers.remove(name);
    }
    Reply {
        response: Response::from_parts(
            parts,
            body.map_err(|e| Box::new(e) as crate::body::BoxError)
                .boxed_unsync(),
        ),
        flag: ResponseFlag::None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_stop_at_the_waypoint() {
        let (parts, ()) = Request::builder()
            .uri("/reviews/1?x=2")
            .header("connection", "keep-alive")
            .header("te", "trailers")
            .header("transfer-encoding", "chunked")
            .header("end-user", "jason")
            .body(())
            .expect("request")
            .into_parts();
        let h1 = upstream_request(&parts, full(Bytes::new()), "10.96.0.1:9080", false, None);
        assert_eq!(h1.uri(), "/reviews/1?x=2");
        assert_eq!(h1.headers()["host"], "10.96.0.1:9080");
        assert_eq!(h1.headers()["end-user"], "jason");
        assert_eq!(h1.headers()["te"], "trailers", "gRPC needs te: trailers");
        assert!(!h1.headers().contains_key("connection"));
        assert!(!h1.headers().contains_key("transfer-encoding"));
        let h2 = upstream_request(&parts, full(Bytes::new()), "10.96.0.1:9080", true, None);
        assert_eq!(h2.uri(), "http://10.96.0.1:9080/reviews/1?x=2");
        assert!(!h2.headers().contains_key("host"));
    }

    #[test]
    fn local_answers_carry_their_flag() {
        let reply = local(
            StatusCode::SERVICE_UNAVAILABLE,
            ResponseFlag::Overflow,
            "full".into(),
        );
        assert_eq!(reply.flag, ResponseFlag::Overflow);
        assert_eq!(reply.response.headers()["x-weft-response-flags"], "UO");
        assert_eq!(reply.response.status(), 503);
    }
}
