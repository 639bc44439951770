//! `weft-testsrv load`: N requests (HTTP/1.1, or gRPC over h2c; over TLS for an `https://`
//! URL) at a rate and concurrency, tallied by status, body, `grpc-status` and response flags,
//! with latency percentiles, printed as one JSON line.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::tls;

pub(crate) struct LoadSpec {
    pub(crate) url: String,
    pub(crate) requests: u64,
    pub(crate) concurrency: u64,
    pub(crate) headers: Vec<String>,
    pub(crate) method: String,
    pub(crate) body_bytes: usize,
    pub(crate) grpc: bool,
    pub(crate) rate: u64,
    pub(crate) timeout: Duration,
    /// No request starts after this long; the ones left are tallied as `unsent`.
    pub(crate) deadline: Duration,
    pub(crate) fresh_connections: bool,
    /// For an `https://` URL: the connector and the server's name.
    pub(crate) tls: Option<tls::Tls>,
}

#[derive(Default)]
struct Tally {
    by_status: BTreeMap<String, u64>,
    by_body: BTreeMap<String, u64>,
    by_grpc: BTreeMap<String, u64>,
    by_flags: BTreeMap<String, u64>,
    latencies_us: Vec<u64>,
}

pub(crate) async fn load(spec: LoadSpec) -> Result<()> {
    let uri: http::Uri = spec.url.parse().context("--url")?;
    let authority = uri.authority().context("--url needs host:port")?.clone();
    let addr: SocketAddr = authority
        .as_str()
        .parse()
        .context("--url host must be ip:port")?;
    let spec = Arc::new(spec);
    let next = Arc::new(AtomicU64::new(0));
    let tally = Arc::new(std::sync::Mutex::new(Tally::default()));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..spec.concurrency.max(1) {
        let (spec, next, tally, uri) = (spec.clone(), next.clone(), tally.clone(), uri.clone());
        workers.push(tokio::spawn(async move {
            let mut conn: Option<Sender> = None;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= spec.requests {
                    return;
                }
                if started.elapsed() >= spec.deadline {
                    let mut tally = tally.lock().unwrap_or_else(|e| e.into_inner());
                    *tally.by_status.entry("unsent".into()).or_default() += 1;
                    continue;
                }
                if spec.rate > 0 {
                    let at = started + Duration::from_secs_f64(i as f64 / spec.rate as f64);
                    tokio::time::sleep_until(at.into()).await;
                }
                if spec.fresh_connections {
                    conn = None;
                }
                let t = Instant::now();
                let result =
                    tokio::time::timeout(spec.timeout, one(&spec, &uri, addr, &mut conn)).await;
                let elapsed = t.elapsed().as_micros() as u64;
                let mut tally = tally.lock().unwrap_or_else(|e| e.into_inner());
                match result {
                    Ok(Ok((status, body, grpc, flags))) => {
                        *tally.by_status.entry(status.to_string()).or_default() += 1;
                        *tally.by_body.entry(body).or_default() += 1;
                        if let Some(g) = grpc {
                            *tally.by_grpc.entry(g).or_default() += 1;
                        }
                        if let Some(f) = flags {
                            *tally.by_flags.entry(f).or_default() += 1;
                        }
                        tally.latencies_us.push(elapsed);
                    }
                    Ok(Err(e)) => {
                        conn = None;
                        *tally.by_status.entry(format!("error: {e}")).or_default() += 1;
                    }
                    Err(_) => {
                        conn = None;
                        *tally.by_status.entry("timeout".into()).or_default() += 1;
                    }
                }
            }
        }));
    }
    for w in workers {
        let _ = w.await;
    }
    let mut tally = Arc::try_unwrap(tally)
        .map_err(|_| anyhow::anyhow!("workers still running"))?
        .into_inner()
        .unwrap_or_else(|e| e.into_inner());
    tally.latencies_us.sort_unstable();
    let pct = |p: f64| {
        let l = &tally.latencies_us;
        if l.is_empty() {
            0
        } else {
            l[((l.len() as f64 * p) as usize).min(l.len() - 1)]
        }
    };
    println!(
        "{}",
        serde_json::json!({
            "status": tally.by_status,
            "body": tally.by_body,
            "grpc_status": tally.by_grpc,
            "flags": tally.by_flags,
            "p50_us": pct(0.5),
            "p99_us": pct(0.99),
            "secs": started.elapsed().as_secs_f64(),
        })
    );
    Ok(())
}

enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

/// An HTTP/1.1 (or, for gRPC, HTTP/2) client connection over `io`.
async fn handshake<IO>(io: IO, grpc: bool) -> Result<Sender>
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    Ok(if grpc {
        let (s, c) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
        tokio::spawn(c);
        Sender::H2(s)
    } else {
        let (s, c) = hyper::client::conn::http1::handshake(io).await?;
        tokio::spawn(c);
        Sender::H1(s)
    })
}

async fn one(
    spec: &LoadSpec,
    uri: &http::Uri,
    addr: SocketAddr,
    conn: &mut Option<Sender>,
) -> Result<(u16, String, Option<String>, Option<String>)> {
    if conn.as_ref().is_none_or(|c| match c {
        Sender::H1(s) => s.is_closed(),
        Sender::H2(s) => s.is_closed(),
    }) {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        let _ = stream.set_nodelay(true);
        *conn = Some(match &spec.tls {
            Some(tls) => handshake(TokioIo::new(tls.connect(stream).await?), spec.grpc).await?,
            None => handshake(TokioIo::new(stream), spec.grpc).await?,
        });
    }
    let body = if spec.grpc {
        let mut framed = vec![0u8];
        framed.extend_from_slice(&(spec.body_bytes as u32).to_be_bytes());
        framed.extend(std::iter::repeat_n(b'x', spec.body_bytes));
        Bytes::from(framed)
    } else {
        Bytes::from(vec![b'x'; spec.body_bytes])
    };
    let mut request = Request::builder()
        .method(if spec.grpc {
            "POST"
        } else {
            spec.method.as_str()
        })
        .uri(if spec.grpc {
            uri.to_string()
        } else {
            uri.path_and_query()
                .map_or("/".to_owned(), |p| p.to_string())
        })
        .header(
            "host",
            spec.tls
                .as_ref()
                .map(|t| t.name.as_str())
                .unwrap_or_else(|| uri.authority().map_or("", |a| a.as_str())),
        );
    if spec.grpc {
        request = request
            .header("content-type", "application/grpc")
            .header("te", "trailers");
    }
    for h in &spec.headers {
        if let Some((k, v)) = h.split_once(':') {
            request = request.header(k.trim(), v.trim());
        }
    }
    let request = request.body(Full::new(body))?;
    let response = match conn.as_mut() {
        Some(Sender::H1(s)) => {
            s.ready().await?;
            s.send_request(request).await?
        }
        Some(Sender::H2(s)) => {
            s.ready().await?;
            s.send_request(request).await?
        }
        None => anyhow::bail!("no connection"),
    };
    let status = response.status().as_u16();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let mut grpc = header("grpc-status");
    let flags = header("x-weft-response-flags");
    let collected = response.into_body().collect().await?;
    if let Some(g) = collected
        .trailers()
        .and_then(|t| t.get("grpc-status"))
        .and_then(|v| v.to_str().ok())
    {
        grpc = Some(g.to_owned());
    }
    let bytes = collected.to_bytes();
    let body = if spec.grpc {
        format!("{} bytes", bytes.len())
    } else {
        String::from_utf8_lossy(&bytes)
            .trim()
            .lines()
            .next()
            .unwrap_or("")
            .to_owned()
    };
    Ok((status, body, grpc, flags))
}
