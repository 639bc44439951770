//! What a route does to headers (Istio's `headers`, Gateway API's header modifiers), and the
//! answers it gives itself (`directResponse`).

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Response, StatusCode};
use weft_core::mesh::{DirectResponse, HeaderEdits};

use super::reply::{Reply, ResponseFlag, full};

/// Applies `edits` to `headers`: remove, then set (replacing), then add (appending). Names and
/// values were validated when the config arrived; one that still does not parse is skipped.
pub(crate) fn apply(edits: &HeaderEdits, headers: &mut HeaderMap) {
    if edits.is_empty() {
        return;
    }
    for name in &edits.remove {
        headers.remove(name.as_str());
    }
    let parsed = |(name, value): (&String, &String)| {
        Some((
            HeaderName::from_bytes(name.as_bytes()).ok()?,
            HeaderValue::from_str(value).ok()?,
        ))
    };
    for (name, value) in edits.set.iter().filter_map(parsed) {
        headers.insert(name, value);
    }
    for (name, value) in edits.add.iter().filter_map(parsed) {
        headers.append(name, value);
    }
}

/// The route's own answer.
pub(crate) fn direct(d: &DirectResponse) -> Reply {
    let mut response = Response::new(full(Bytes::from(d.body.clone())));
    *response.status_mut() = StatusCode::from_u16(d.status).unwrap_or(StatusCode::OK);
    if !d.body.is_empty() {
        response
            .headers_mut()
            .insert("content-type", HeaderValue::from_static("text/plain"));
    }
    Reply {
        response,
        flag: ResponseFlag::None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remove_then_set_then_add() {
        let mut headers = HeaderMap::new();
        headers.insert("x-old", HeaderValue::from_static("1"));
        headers.insert("x-set", HeaderValue::from_static("before"));
        headers.insert("x-add", HeaderValue::from_static("first"));
        let edits = HeaderEdits {
            set: [("x-set".to_owned(), "after".to_owned())].into(),
            add: [("x-add".to_owned(), "second".to_owned())].into(),
            remove: vec!["x-old".to_owned()],
        };
        apply(&edits, &mut headers);
        assert!(!headers.contains_key("x-old"));
        assert_eq!(headers["x-set"], "after");
        let added: Vec<_> = headers.get_all("x-add").iter().collect();
        assert_eq!(added, ["first", "second"]);
    }

    #[test]
    fn a_direct_response_has_its_status_and_body() {
        let reply = direct(&DirectResponse {
            status: 418,
            body: "short and stout".into(),
        });
        assert_eq!(reply.response.status(), 418);
        assert_eq!(reply.flag, ResponseFlag::None);
    }
}
