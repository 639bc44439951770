//! The access log: one line per request, written when its response body is done (so it has
//! the bytes both ways), with Envoy's fields: start time, method, path, authority, protocol,
//! response code and flags, route, upstream host and cluster, tries, duration, bytes,
//! `x-request-id`, trace id, and both sides' identities. `--log-format json` makes each line a
//! JSON object of these fields.
//!
//! A request without `x-request-id` gets one here, sent upstream with it.

use std::net::IpAddr;
use std::time::SystemTime;

use http::{HeaderMap, HeaderValue, Request, Version};
use tracing::info;

use crate::metrics::RequestLabels;
use weft_core::rng::Rng;

/// Which endpoint answered a request, and after how many tries: set on the response by the
/// tries loop (a response extension, never sent).
#[derive(Clone, Debug)]
pub(crate) struct Upstream {
    pub(crate) host: IpAddr,
    pub(crate) cluster: String,
    pub(crate) tries: u32,
}

/// What the line says about the request, taken when it arrives.
pub(crate) struct Entry {
    start: SystemTime,
    pub(crate) method: String,
    pub(crate) path: String,
    authority: String,
    protocol: &'static str,
    pub(crate) request_id: String,
    pub(crate) trace_id: String,
}

/// The `x-request-id` header.
const REQUEST_ID: &str = "x-request-id";

impl Entry {
    /// Reads the request (before routing rewrites it) and gives it an `x-request-id` if it has
    /// none.
    pub(crate) fn begin<B>(request: &mut Request<B>, rng: &mut Rng) -> Self {
        let request_id = match request
            .headers()
            .get(REQUEST_ID)
            .and_then(|v| v.to_str().ok())
        {
            // The client's id is kept if it is a plausible one: it goes into every log line.
            Some(id) if is_request_id(id) => id.to_owned(),
            _ => {
                let id = uuid_v4(rng.next_u64(), rng.next_u64());
                if let Ok(value) = HeaderValue::from_str(&id) {
                    request.headers_mut().insert(REQUEST_ID, value);
                }
                id
            }
        };
        Self {
            start: SystemTime::now(),
            method: request.method().to_string(),
            path: request
                .uri()
                .path_and_query()
                .map_or_else(|| "/".to_owned(), ToString::to_string),
            authority: request
                .headers()
                .get(http::header::HOST)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
                .or_else(|| request.uri().authority().map(ToString::to_string))
                .unwrap_or_default(),
            protocol: match request.version() {
                Version::HTTP_2 => "HTTP/2",
                Version::HTTP_10 => "HTTP/1.0",
                _ => "HTTP/1.1",
            },
            request_id,
            trace_id: trace_id(request.headers()).unwrap_or_default(),
        }
    }

    /// Writes the line.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn write(
        &self,
        labels: &RequestLabels,
        client: std::net::SocketAddr,
        upstream: Option<&Upstream>,
        duration_ms: u64,
        bytes_received: u64,
        bytes_sent: u64,
    ) {
        info!(
            target: "access",
            start_time = %weft_core::telemetry::rfc3339(self.start),
            method = %self.method,
            path = %self.path,
            authority = %self.authority,
            protocol = %self.protocol,
            code = labels.response_code,
            flags = %labels.response_flags,
            route = %labels.route,
            upstream_host = %upstream.map_or_else(|| "-".to_owned(), |u| u.host.to_string()),
            upstream_cluster = %upstream.map_or("-", |u| u.cluster.as_str()),
            tries = upstream.map_or(0, |u| u.tries),
            duration_ms,
            bytes_received,
            bytes_sent,
            request_id = %self.request_id,
            trace_id = %self.trace_id,
            src = %client,
            src_identity = %labels.source.source_principal,
            src_workload = %labels.source.source_workload,
            dst_service = %labels.destination.destination_service,
            dst_workload = %labels.destination.destination_workload,
            dst_identity = %labels.destination.destination_principal,
            "request"
        );
    }
}

/// The trace id a request carries: W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`), else
/// B3 (`x-b3-traceid`, or the single `b3` header's first field).
pub(crate) fn trace_id(headers: &HeaderMap) -> Option<String> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let hex = |s: &str, lens: &[usize]| {
        lens.contains(&s.len()) && s.bytes().all(|b| b.is_ascii_hexdigit())
    };
    if let Some(tp) = header("traceparent") {
        let parts: Vec<&str> = tp.trim().split('-').collect();
        if let [_, trace, span, _] = parts[..]
            && hex(trace, &[32])
            && hex(span, &[16])
            && trace.bytes().any(|b| b != b'0')
        {
            return Some(trace.to_ascii_lowercase());
        }
    }
    let b3 = header("x-b3-traceid").or_else(|| header("b3").and_then(|v| v.split('-').next()));
    b3.map(str::trim)
        .filter(|t| hex(t, &[16, 32]))
        .map(str::to_ascii_lowercase)
}

/// Up to 128 visible ASCII characters without spaces or quotes (a UUID, a hex id...). Another
/// value is replaced, so a client cannot write arbitrary text into access log lines.
fn is_request_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'"' | b'\\' | b'='))
}

/// A random (version 4) UUID from 128 random bits.
fn uuid_v4(hi: u64, lo: u64) -> String {
    let hi = (hi & 0xFFFF_FFFF_FFFF_0FFF) | 0x0000_0000_0000_4000;
    let lo = (lo & 0x3FFF_FFFF_FFFF_FFFF) | 0x8000_0000_0000_0000;
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        hi >> 32,
        (hi >> 16) & 0xFFFF,
        hi & 0xFFFF,
        lo >> 48,
        lo & 0xFFFF_FFFF_FFFF
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_ids_from_w3c_and_both_b3_forms_and_nothing_from_garbage() {
        let headers = |pairs: &[(&'static str, &str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.insert(*k, HeaderValue::from_str(v).expect("value"));
            }
            h
        };
        let w3c = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(
            trace_id(&headers(&[("traceparent", w3c)])).as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_eq!(
            trace_id(&headers(&[("x-b3-traceid", "463ac35c9f6413ad")])).as_deref(),
            Some("463ac35c9f6413ad")
        );
        assert_eq!(
            trace_id(&headers(&[(
                "b3",
                "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1"
            )]))
            .as_deref(),
            Some("80f198ee56343ba864fe8b2a57d3eff7")
        );
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-xyz-00f067aa0ba902b7-01",
            "garbage",
        ] {
            assert_eq!(trace_id(&headers(&[("traceparent", bad)])), None, "{bad}");
        }
    }

    #[test]
    fn a_request_without_an_id_gets_a_v4_uuid_and_one_with_an_id_keeps_it() {
        let mut rng = Rng::seeded(7);
        let mut plain = Request::new(());
        let entry = Entry::begin(&mut plain, &mut rng);
        let id = plain.headers()[REQUEST_ID]
            .to_str()
            .expect("ascii")
            .to_owned();
        assert_eq!(id, entry.request_id);
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4", "{id}");
        assert!(matches!(&id[19..20], "8" | "9" | "a" | "b"), "{id}");
        let mut given = Request::builder()
            .header(REQUEST_ID, "abc-123")
            .body(())
            .expect("request");
        assert_eq!(Entry::begin(&mut given, &mut rng).request_id, "abc-123");
        for forged in ["a b code=500", &"x".repeat(129), "q\"uote"] {
            let mut request = Request::builder()
                .header(REQUEST_ID, forged)
                .body(())
                .expect("request");
            let id = Entry::begin(&mut request, &mut rng).request_id;
            assert_eq!(id.len(), 36, "{forged:?} kept as {id:?}");
            assert_eq!(request.headers()[REQUEST_ID], id.as_str());
        }
    }
}
