//! Tracing: a server span per request and a client span per upstream try (retries are sibling
//! tries), trace context read from and written to W3C `traceparent`/`tracestate` and B3 (the
//! `x-b3-*` headers or the single `b3` header), and an incoming sampling decision honoured.
//! Spans go to a bounded queue that [`export`] drains: the request path never waits for it, and
//! what does not fit is dropped and counted.

pub mod config;
pub mod export;

use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderValue};
use prometheus_client::metrics::counter::Counter;
use tokio::sync::mpsc;

use crate::rng::Rng;

/// Where a request's trace context came from, and so how it is passed on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// W3C Trace Context (also what a request without a context gets).
    W3c,
    /// B3, one header per field.
    B3Multi,
    /// B3, the single `b3` header.
    B3Single,
}

/// One span's identity in its trace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpanContext {
    pub trace_id: u128,
    pub span_id: u64,
    pub sampled: bool,
}

/// The context a request arrived with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Incoming {
    pub parent: SpanContext,
    pub format: Format,
    /// W3C `tracestate`, passed on unchanged.
    pub tracestate: Option<HeaderValue>,
}

fn hex_u128(s: &str) -> Option<u128> {
    // B3 allows 64-bit trace ids: they are the low half.
    (matches!(s.len(), 16 | 32) && s.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| u128::from_str_radix(s, 16).ok())
        .flatten()
        .filter(|v| *v != 0)
}

fn hex_u64(s: &str) -> Option<u64> {
    (s.len() == 16 && s.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| u64::from_str_radix(s, 16).ok())
        .flatten()
        .filter(|v| *v != 0)
}

/// A W3C `traceparent` value (`00-<trace>-<span>-<flags>`); `None` if malformed.
pub fn parse_traceparent(tp: &str) -> Option<SpanContext> {
    let parts: Vec<&str> = tp.trim().split('-').collect();
    if let [version, trace, span, flags] = parts[..]
        && version.len() == 2
        && version != "ff"
        && trace.len() == 32
        && flags.len() == 2
        && let (Some(trace_id), Some(span_id), Ok(flags)) = (
            hex_u128(trace),
            hex_u64(span),
            u8::from_str_radix(flags, 16),
        )
    {
        return Some(SpanContext {
            trace_id,
            span_id,
            sampled: flags & 1 == 1,
        });
    }
    None
}

/// `ctx` as a W3C `traceparent` value.
pub fn traceparent(ctx: SpanContext) -> String {
    format!(
        "00-{:032x}-{:016x}-{:02x}",
        ctx.trace_id,
        ctx.span_id,
        u8::from(ctx.sampled)
    )
}

/// Reads the trace context of a request: W3C first, then B3 (multi, then single). A malformed
/// context is ignored (the request starts a new trace), never trusted in part.
pub fn extract(headers: &HeaderMap) -> Option<Incoming> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(parent) = header("traceparent").and_then(parse_traceparent) {
        return Some(Incoming {
            parent,
            format: Format::W3c,
            tracestate: headers.get("tracestate").cloned(),
        });
    }
    if let (Some(trace), Some(span)) = (header("x-b3-traceid"), header("x-b3-spanid"))
        && let (Some(trace_id), Some(span_id)) = (hex_u128(trace.trim()), hex_u64(span.trim()))
    {
        let sampled = header("x-b3-flags") == Some("1")
            || matches!(header("x-b3-sampled"), Some("1" | "true") | None);
        return Some(Incoming {
            parent: SpanContext {
                trace_id,
                span_id,
                sampled,
            },
            format: Format::B3Multi,
            tracestate: None,
        });
    }
    if let Some(b3) = header("b3") {
        let fields: Vec<&str> = b3.trim().split('-').collect();
        if fields.len() >= 2
            && let (Some(trace_id), Some(span_id)) = (hex_u128(fields[0]), hex_u64(fields[1]))
        {
            return Some(Incoming {
                parent: SpanContext {
                    trace_id,
                    span_id,
                    sampled: !matches!(fields.get(2), Some(&"0")),
                },
                format: Format::B3Single,
                tracestate: None,
            });
        }
    }
    None
}

/// Writes `ctx` into `headers` in `format` (replacing any context there).
pub fn inject(
    headers: &mut HeaderMap,
    ctx: SpanContext,
    format: Format,
    tracestate: Option<&HeaderValue>,
) {
    for name in [
        "traceparent",
        "tracestate",
        "b3",
        "x-b3-traceid",
        "x-b3-spanid",
        "x-b3-parentspanid",
        "x-b3-sampled",
        "x-b3-flags",
    ] {
        headers.remove(name);
    }
    let mut put = |name: &'static str, value: String| {
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(name, v);
        }
    };
    let sampled = u8::from(ctx.sampled);
    match format {
        Format::W3c => {
            put("traceparent", traceparent(ctx));
            if let Some(state) = tracestate {
                headers.insert("tracestate", state.clone());
            }
        }
        Format::B3Multi => {
            put("x-b3-traceid", format!("{:032x}", ctx.trace_id));
            put("x-b3-spanid", format!("{:016x}", ctx.span_id));
            put("x-b3-sampled", sampled.to_string());
        }
        Format::B3Single => put(
            "b3",
            format!("{:032x}-{:016x}-{sampled}", ctx.trace_id, ctx.span_id),
        ),
    }
}

/// A request's place in its trace.
pub struct Scope {
    /// The tracer the request started with (kept to its end, across a swap).
    pub tracer: std::sync::Arc<Tracer>,
    /// The waypoint's server span.
    pub server: SpanContext,
    /// How the context came in, and so goes out.
    pub format: Format,
    /// W3C `tracestate`, passed on.
    pub tracestate: Option<http::HeaderValue>,
}

impl Scope {
    /// A client span under the server span (one per try).
    pub fn child(&self, rng: &mut crate::rng::Rng) -> SpanContext {
        SpanContext {
            span_id: nonzero(rng),
            ..self.server
        }
    }
}

/// Server or client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Server,
    Client,
}

/// A finished span, as exported.
#[derive(Clone, Debug)]
pub struct Span {
    pub context: SpanContext,
    pub parent: Option<u64>,
    pub name: String,
    pub kind: Kind,
    pub start: SystemTime,
    pub duration: Duration,
    pub error: bool,
    pub attributes: Vec<(&'static str, String)>,
}

/// Spans queued for export at most; more are dropped (and counted).
pub const QUEUE: usize = 4096;

/// Makes sampling decisions and hands sampled spans to the exporter.
pub struct Tracer {
    /// Share of new traces sampled, in percent (an incoming decision is kept).
    pub sampling_percent: f64,
    queue: Option<mpsc::Sender<Span>>,
    /// Spans dropped because the queue was full.
    pub dropped: Counter,
}

impl Tracer {
    /// A tracer that exports nothing (no collector configured).
    pub fn off() -> Self {
        Self::off_with(Counter::default())
    }

    /// [`Tracer::off`], sharing the drop counter.
    pub fn off_with(dropped: Counter) -> Self {
        Self {
            sampling_percent: 0.0,
            queue: None,
            dropped,
        }
    }

    /// A tracer sampling `percent` of new traces into `queue`; drops count in `dropped`.
    pub fn new(percent: f64, queue: mpsc::Sender<Span>, dropped: Counter) -> Self {
        Self {
            sampling_percent: percent.clamp(0.0, 100.0),
            queue: Some(queue),
            dropped,
        }
    }

    /// Whether spans go anywhere (a collector is configured).
    pub fn enabled(&self) -> bool {
        self.queue.is_some()
    }

    /// The server span of a request that arrived with `incoming`: it continues that trace
    /// (and its decision), or starts a new one sampled at the configured rate.
    pub fn server_span(&self, incoming: Option<&Incoming>, rng: &mut Rng) -> SpanContext {
        let span_id = nonzero(rng);
        match incoming {
            Some(i) => SpanContext {
                trace_id: i.parent.trace_id,
                span_id,
                sampled: i.parent.sampled && self.queue.is_some(),
            },
            None => SpanContext {
                trace_id: (u128::from(nonzero(rng)) << 64) | u128::from(rng.next_u64()),
                span_id,
                sampled: self.queue.is_some() && rng.chance(self.sampling_percent),
            },
        }
    }

    /// Queues a finished span if its trace is sampled; never waits.
    pub fn finish(&self, span: Span) {
        if !span.context.sampled {
            return;
        }
        if let Some(queue) = &self.queue
            && queue.try_send(span).is_err()
        {
            self.dropped.inc();
        }
    }
}

/// A random id that is not 0 (0 means "none" in both formats).
pub fn nonzero(rng: &mut Rng) -> u64 {
    loop {
        let v = rng.next_u64();
        if v != 0 {
            return v;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).expect("value"));
        }
        h
    }

    #[test]
    fn w3c_and_both_b3_forms_are_read_and_written_back_in_their_own_form() {
        let w3c = headers(&[
            (
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
            ("tracestate", "vendor=x"),
        ]);
        let b3m = headers(&[
            ("x-b3-traceid", "463ac35c9f6413ad48485a3953bb6124"),
            ("x-b3-spanid", "a2fb4a1d1a96d312"),
            ("x-b3-sampled", "0"),
        ]);
        let b3s = headers(&[("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1")]);
        for (input, format, sampled) in [
            (&w3c, Format::W3c, true),
            (&b3m, Format::B3Multi, false),
            (&b3s, Format::B3Single, true),
        ] {
            let got = extract(input).expect("a context");
            assert_eq!((got.format, got.parent.sampled), (format, sampled));
            let child = SpanContext {
                span_id: 0x1234,
                ..got.parent
            };
            let mut out = HeaderMap::new();
            inject(&mut out, child, got.format, got.tracestate.as_ref());
            let again = extract(&out).expect("written back");
            assert_eq!(again.parent, child);
            assert_eq!(again.format, format);
            assert_eq!(again.tracestate, got.tracestate);
        }
    }

    #[test]
    fn a_malformed_context_starts_a_new_trace() {
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e47-00f067aa0ba902b7-01",
            "nonsense",
        ] {
            assert_eq!(extract(&headers(&[("traceparent", bad)])), None, "{bad}");
        }
        assert_eq!(extract(&headers(&[("b3", "zz-e457b5a2e4d86bd1")])), None);
    }

    #[test]
    fn an_incoming_decision_is_kept_and_new_traces_are_sampled_at_the_rate() {
        let (tx, _rx) = mpsc::channel(1);
        let tracer = Tracer::new(10.0, tx, Counter::default());
        let mut rng = Rng::seeded(42);
        let unsampled = extract(&headers(&[(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
        )]));
        let ctx = tracer.server_span(unsampled.as_ref(), &mut rng);
        assert!(!ctx.sampled);
        assert_eq!(ctx.trace_id, 0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736);
        // 10% of 20,000 new traces: binomial sd = sqrt(20000 * 0.1 * 0.9) ≈ 42; 5 sd is 212.
        let sampled = (0..20_000)
            .filter(|_| tracer.server_span(None, &mut rng).sampled)
            .count();
        assert!((1_788..=2_212).contains(&sampled), "{sampled}");
    }

    #[test]
    fn a_full_queue_drops_and_counts_instead_of_waiting() {
        let (tx, _rx) = mpsc::channel(1);
        let tracer = Tracer::new(100.0, tx, Counter::default());
        let span = |id| Span {
            context: SpanContext {
                trace_id: 1,
                span_id: id,
                sampled: true,
            },
            parent: None,
            name: "x".into(),
            kind: Kind::Server,
            start: SystemTime::now(),
            duration: Duration::ZERO,
            error: false,
            attributes: Vec::new(),
        };
        tracer.finish(span(1));
        tracer.finish(span(2));
        tracer.finish(span(3));
        assert_eq!(tracer.dropped.get(), 2);
    }
}
