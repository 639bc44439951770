//! Redirects and rewrites (Istio's `redirect` and `rewrite`, Gateway API's `RequestRedirect`
//! and `URLRewrite`). A redirect answers the client with where to go (what the route does not
//! say is kept from the request); a rewrite changes the path (the prefix the route matched, a
//! given prefix, or the whole path) and the authority before the request is forwarded.

use bytes::Bytes;
use http::header::{HOST, LOCATION};
use http::{HeaderValue, Request, Response, StatusCode, Uri};
use weft_core::mesh::{PathPart, Redirect, Rewrite};

use super::reply::{Reply, ResponseFlag, full};

/// The redirect answer for a request to `host` (`name[:port]`) for `uri`. `matched_prefix` is
/// the prefix the route matched, if any.
pub(crate) fn redirect(r: &Redirect, host: &str, uri: &Uri, matched_prefix: Option<&str>) -> Reply {
    let (name, port) = match host.rsplit_once(':') {
        Some((name, port)) if port.parse::<u16>().is_ok() => (name, Some(port.to_owned())),
        _ => (host, None),
    };
    let scheme = r.scheme.as_deref().unwrap_or("http");
    let authority = r.authority.as_deref().unwrap_or(name);
    // A scheme's own port is not written.
    let port = r
        .port
        .map(|p| p.to_string())
        .or(port)
        .filter(|p| !matches!((scheme, p.as_str()), ("http", "80") | ("https", "443")));
    let path = match &r.path {
        Some(path) => replaced(uri, path, &r.replaces, matched_prefix),
        None => uri.path_and_query().map_or("/", |p| p.as_str()).to_owned(),
    };
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

/// `uri`'s path and query with `new` in place of the part `replaces` names. The query is kept
/// unless `new` brings its own.
fn replaced(uri: &Uri, new: &str, replaces: &PathPart, matched_prefix: Option<&str>) -> String {
    let old = uri.path();
    let path = match replaces {
        PathPart::Whole => new.to_owned(),
        PathPart::MatchedPrefix => match matched_prefix {
            Some(prefix) if old.starts_with(prefix) => format!("{new}{}", &old[prefix.len()..]),
            _ => new.to_owned(),
        },
        PathPart::Prefix(prefix) => {
            let prefix = prefix.trim_end_matches('/');
            match old.strip_prefix(prefix) {
                Some(rest) if rest.is_empty() || rest.starts_with('/') => {
                    let joined = match (new.strip_suffix('/'), rest) {
                        (Some(head), rest) if rest.starts_with('/') => format!("{head}{rest}"),
                        _ => format!("{new}{rest}"),
                    };
                    if joined.is_empty() {
                        "/".to_owned()
                    } else {
                        joined
                    }
                }
                _ => old.to_owned(),
            }
        }
    };
    match uri.query() {
        Some(query) if !path.contains('?') => format!("{path}?{query}"),
        _ => path,
    }
}

/// Rewrites `request` in place. `matched_prefix` is the prefix the route matched, if any.
pub(crate) fn rewrite<B>(w: &Rewrite, matched_prefix: Option<&str>, request: &mut Request<B>) {
    if let Some(path) = &w.path {
        let with_query = replaced(request.uri(), path, &w.replaces, matched_prefix);
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
            ..Rewrite::default()
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
        let old = Uri::from_static("/old?x=1");
        let reply = redirect(&moved, "reviews:9080", &old, None);
        assert_eq!(reply.response.status(), 301);
        assert_eq!(
            reply.response.headers()["location"],
            "http://reviews:9080/new?x=1"
        );
        let secure = Redirect {
            scheme: Some("https".into()),
            port: Some(443),
            status: 308,
            ..Redirect::default()
        };
        let reply = redirect(&secure, "reviews:9080", &Uri::from_static("/a?b=1"), None);
        assert_eq!(
            reply.response.headers()["location"],
            "https://reviews/a?b=1",
            "https on 443 needs no port"
        );
    }

    #[test]
    fn a_prefix_is_replaced_in_whole_segments() {
        let part = PathPart::Prefix("/foo/".into());
        let at =
            |path: &'static str, new: &str| replaced(&Uri::from_static(path), new, &part, None);
        assert_eq!(at("/foo/bar", "/xyz"), "/xyz/bar");
        assert_eq!(at("/foo/bar", "/xyz/"), "/xyz/bar");
        assert_eq!(at("/foo", "/xyz"), "/xyz");
        assert_eq!(at("/foo/bar?q=1", "/"), "/bar?q=1");
        assert_eq!(at("/foo", ""), "/");
        assert_eq!(at("/foobar", "/xyz"), "/foobar", "not a whole segment");
        let whole = replaced(
            &Uri::from_static("/a/b?q=1"),
            "/c?z=2",
            &PathPart::Whole,
            None,
        );
        assert_eq!(whole, "/c?z=2", "a new query replaces the old");
    }
}
