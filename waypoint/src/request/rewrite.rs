//! Redirects and rewrites (Istio's `redirect` and `rewrite`). A redirect answers the client
//! with where to go (what the route does not say is kept from the request); a rewrite changes
//! the path (the prefix the route matched, or the whole path) and the authority before the
//! request is forwarded.

use bytes::Bytes;
use http::header::{HOST, LOCATION};
use http::{HeaderValue, Request, Response, StatusCode, Uri};
use weft_core::mesh::{Redirect, Rewrite};

use super::reply::{Reply, ResponseFlag, full};

/// The redirect answer for a request to `host` (`name[:port]`) and `path_and_query`.
pub(crate) fn redirect(r: &Redirect, host: &str, path_and_query: &str) -> Reply {
    let (name, port) = match host.rsplit_once(':') {
        Some((name, port)) if port.parse::<u16>().is_ok() => (name, Some(port.to_owned())),
        _ => (host, None),
    };
    let scheme = r.scheme.as_deref().unwrap_or("http");
    let authority = r.authority.as_deref().unwrap_or(name);
    let port = r.port.map(|p| p.to_string()).or(port);
    let path = r.path.as_deref().unwrap_or(path_and_query);
    let location = match port {
        Some(port) => format!("{scheme}://{authority}:{port}{path}"),
        None => format!("{scheme}://{authority}{path}"),
    };
    let mut response = Response::new(full(Bytes::new()));
    *response.status_mut() =
        StatusCode::from_u16(r.status).unwrap_or(StatusCode::MOVED_PERMANENTLY);
    if let Ok(location) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(LOCATION, location);
    }
    Reply {
        response,
        flag: ResponseFlag::None,
    }
}

/// Rewrites `request` in place. `matched_prefix` is the prefix the route matched, if any.
pub(crate) fn rewrite<B>(w: &Rewrite, matched_prefix: Option<&str>, request: &mut Request<B>) {
    if let Some(path) = &w.path {
        let old = request.uri().path();
        let new_path = match matched_prefix {
            Some(prefix) if old.starts_with(prefix) => format!("{path}{}", &old[prefix.len()..]),
            _ => path.clone(),
        };
        let with_query = match request.uri().query() {
            Some(query) => format!("{new_path}?{query}"),
            None => new_path,
        };
        let mut parts = request.uri().clone().into_parts();
        if let Ok(pq) = with_query.parse() {
            parts.path_and_query = Some(pq);
            if let Ok(uri) = Uri::from_parts(parts) {
                *request.uri_mut() = uri;
            }
        }
    }
    if let Some(authority) = &w.authority
        && let Ok(host) = HeaderValue::from_str(authority)
    {
        request.headers_mut().insert(HOST, host);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rewrite_replaces_the_matched_prefix_or_the_whole_path() {
        let mut request = Request::builder()
            .uri("/reviews/1?x=2")
            .body(())
            .expect("request");
        let w = Rewrite {
            path: Some("/v2/reviews".into()),
            authority: Some("reviews.internal".into()),
        };
        rewrite(&w, Some("/reviews"), &mut request);
        assert_eq!(request.uri(), "/v2/reviews/1?x=2");
        assert_eq!(request.headers()["host"], "reviews.internal");
        let mut whole = Request::builder().uri("/old").body(()).expect("request");
        rewrite(&w, None, &mut whole);
        assert_eq!(whole.uri(), "/v2/reviews");
    }

    #[test]
    fn a_redirect_keeps_what_it_does_not_change() {
        let moved = Redirect {
            path: Some("/new".into()),
            status: 301,
            ..Redirect::default()
        };
        let reply = redirect(&moved, "reviews:9080", "/old?x=1");
        assert_eq!(reply.response.status(), 301);
        assert_eq!(
            reply.response.headers()["location"],
            "http://reviews:9080/new"
        );
        let secure = Redirect {
            scheme: Some("https".into()),
            port: Some(443),
            status: 308,
            ..Redirect::default()
        };
        let reply = redirect(&secure, "reviews:9080", "/a?b=1");
        assert_eq!(
            reply.response.headers()["location"],
            "https://reviews:443/a?b=1"
        );
    }
}
