//! `weft-testsrv`: the backend and load client of the waypoint suites.
//!
//! `serve`: an HTTP/1.1 + HTTP/2 (h2c) + gRPC server that answers with its name, and can be
//! told at run time to fail a share of requests, delay, or answer gRPC `UNAVAILABLE`
//! (`/__set?fail=30&status=503&delay_ms=0&grpc_unavailable=0`); `/__count` says how many
//! requests it served (control requests excluded). `x-echo-header: <name>` on a request asks
//! for that request header back, as `x-echo`; `x-path` says which path was asked for.
//!
//! A request with `upgrade: weft-echo` is answered `101 Switching Protocols` and the connection
//! then echoes what it gets (a stand-in for WebSocket). `upgrade` is its client: it asks for
//! the upgrade, sends a line, and prints the status and the echo as JSON.
//!
//! `load` (`load.rs`): sends N requests (HTTP/1.1, or gRPC over h2c; TLS for `https://`) with a
//! concurrency and headers, and prints one JSON line: counts by status, by body, by
//! `grpc-status`, and response flags, and latency percentiles.

mod collect;
mod load;
mod tls;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use clap::{Parser, Subcommand};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};

#[derive(Parser)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// A trace collector: print each POSTed body (a Zipkin or OTLP JSON batch) on one line and
    /// answer 202; with `--otlp-grpc`, OTLP's gRPC TraceService instead, each export printed
    /// as OTLP JSON.
    Collect {
        /// Listen address.
        #[arg(long, default_value = "127.0.0.1:9411")]
        listen: SocketAddr,
        /// Serve OTLP over gRPC.
        #[arg(long)]
        otlp_grpc: bool,
    },
    /// Ask `url` for a `weft-echo` upgrade, send one line, print the answer.
    Upgrade {
        /// `http://host:port/path`.
        #[arg(long)]
        url: String,
    },
    /// Serve.
    Serve {
        /// Listen address.
        #[arg(long, default_value = "0.0.0.0:8080")]
        listen: SocketAddr,
        /// The name answered (e.g. `v1`).
        #[arg(long)]
        name: String,
    },
    /// Send requests.
    Load {
        /// `http://host:port/path`.
        #[arg(long)]
        url: String,
        /// Requests.
        #[arg(long, default_value_t = 100)]
        requests: u64,
        /// Requests in flight.
        #[arg(long, default_value_t = 1)]
        concurrency: u64,
        /// Extra header `name:value` (repeatable).
        #[arg(long)]
        header: Vec<String>,
        /// Method.
        #[arg(long, default_value = "GET")]
        method: String,
        /// Request body size in bytes.
        #[arg(long, default_value_t = 0)]
        body_bytes: usize,
        /// Speak gRPC (HTTP/2 prior knowledge, unary call).
        #[arg(long)]
        grpc: bool,
        /// Requests per second (0: as fast as possible).
        #[arg(long, default_value_t = 0)]
        rate: u64,
        /// Per-request timeout, milliseconds.
        #[arg(long, default_value_t = 15_000)]
        timeout_ms: u64,
        /// No request starts after this many milliseconds from the first (the rest are
        /// tallied as `unsent`), so a broken path ends the run instead of hanging it.
        #[arg(long, default_value_t = 120_000)]
        deadline_ms: u64,
        /// A new connection for every request (each one crosses the mesh's connection path).
        #[arg(long)]
        fresh_connections: bool,
        /// For an `https://` URL: the CA certificates (PEM) the server's must chain to.
        #[arg(long)]
        cacert: Option<std::path::PathBuf>,
        /// For an `https://` URL: the name sent in SNI and checked in the certificate (also
        /// the `host` header).
        #[arg(long)]
        sni: Option<String>,
    },
}

#[derive(Default)]
struct Behaviour {
    fail_percent: AtomicU64,
    fail_status: AtomicU64,
    delay_ms: AtomicU64,
    grpc_unavailable_percent: AtomicU64,
    served: AtomicU64,
    /// Served requests whose host ends in `-shadow` (mirrored copies).
    shadowed: AtomicU64,
    seq: AtomicU64,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    match args.command {
        Command::Serve { listen, name } => runtime.block_on(serve(listen, name)),
        Command::Upgrade { url } => runtime.block_on(upgrade(&url)),
        Command::Collect {
            listen,
            otlp_grpc: false,
        } => runtime.block_on(collect::http(listen)),
        Command::Collect {
            listen,
            otlp_grpc: true,
        } => runtime
            .block_on(
                tonic::transport::Server::builder()
                    .add_service(collect::grpc())
                    .serve(listen),
            )
            .context("the OTLP gRPC collector"),
        Command::Load {
            url,
            requests,
            concurrency,
            header,
            method,
            body_bytes,
            grpc,
            rate,
            timeout_ms,
            deadline_ms,
            fresh_connections,
            cacert,
            sni,
        } => runtime.block_on(load::load(load::LoadSpec {
            tls: tls::for_load(&url, cacert.as_deref(), sni.as_deref())?,
            url,
            requests,
            concurrency,
            headers: header,
            method,
            body_bytes,
            grpc,
            rate,
            timeout: Duration::from_millis(timeout_ms),
            deadline: Duration::from_millis(deadline_ms),
            fresh_connections,
        })),
    }
}

fn full(text: impl Into<Bytes>) -> Full<Bytes> {
    Full::new(text.into())
}

/// Whether this request (the `seq`-th) is one of `percent` in 100, spread evenly (30: three
/// of every ten).
fn chosen(seq: u64, percent: u64) -> bool {
    percent > 0 && (seq * percent) % 100 < percent
}

async fn serve(listen: SocketAddr, name: String) -> Result<()> {
    let behaviour = Arc::new(Behaviour::default());
    behaviour.fail_status.store(503, Ordering::Relaxed);
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    loop {
        let (stream, _) = listener.accept().await?;
        let (behaviour, name) = (behaviour.clone(), name.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let (behaviour, name) = (behaviour.clone(), name.clone());
                async move { Ok::<_, Infallible>(answer(&behaviour, &name, req).await) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn answer(b: &Behaviour, name: &str, mut req: Request<Incoming>) -> Response<Full<Bytes>> {
    if req
        .headers()
        .get("upgrade")
        .is_some_and(|v| v == "weft-echo")
    {
        let upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let Ok(upgraded) = upgrade.await else { return };
            let mut io = TokioIo::new(upgraded);
            let mut buf = [0u8; 4096];
            while let Ok(n) = io.read(&mut buf).await {
                if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        });
        let mut response = Response::new(full(""));
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        response
            .headers_mut()
            .insert("connection", "upgrade".parse().expect("value"));
        response
            .headers_mut()
            .insert("upgrade", "weft-echo".parse().expect("value"));
        return response;
    }
    let path = req.uri().path().to_owned();
    if path == "/__count" {
        let counter = match req.uri().query() {
            Some("shadowed") => &b.shadowed,
            _ => &b.served,
        };
        return Response::new(full(format!("{}\n", counter.load(Ordering::Relaxed))));
    }
    if path == "/__set" {
        for pair in req.uri().query().unwrap_or("").split('&') {
            let Some((k, v)) = pair.split_once('=') else {
                continue;
            };
            let v: u64 = v.parse().unwrap_or(0);
            match k {
                "fail" => b.fail_percent.store(v, Ordering::Relaxed),
                "status" => b.fail_status.store(v, Ordering::Relaxed),
                "delay_ms" => b.delay_ms.store(v, Ordering::Relaxed),
                "grpc_unavailable" => b.grpc_unavailable_percent.store(v, Ordering::Relaxed),
                "reset" => {
                    // Counting and the failure pattern both start over.
                    b.served.store(0, Ordering::Relaxed);
                    b.shadowed.store(0, Ordering::Relaxed);
                    b.seq.store(0, Ordering::Relaxed);
                }
                _ => {}
            }
        }
        return Response::new(full("ok\n"));
    }
    b.served.fetch_add(1, Ordering::Relaxed);
    let host = req
        .headers()
        .get("host")
        .and_then(|v| v.to_str().ok())
        .or(req.uri().host())
        .unwrap_or("");
    if host
        .split(':')
        .next()
        .is_some_and(|h| h.ends_with("-shadow"))
    {
        b.shadowed.fetch_add(1, Ordering::Relaxed);
    }
    let seq = b.seq.fetch_add(1, Ordering::Relaxed);
    // `x-echo-header: <name>` asks for that request header back, as `x-echo`.
    let echoed = req
        .headers()
        .get("x-echo-header")
        .and_then(|v| v.to_str().ok())
        .and_then(|name| req.headers().get(name))
        .cloned();
    let grpc = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"));
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let delay = b.delay_ms.load(Ordering::Relaxed);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    if grpc {
        let mut response = Response::new(full(Bytes::new()));
        response
            .headers_mut()
            .insert("content-type", "application/grpc".parse().expect("value"));
        if chosen(seq, b.grpc_unavailable_percent.load(Ordering::Relaxed)) {
            // Trailers-only response, as gRPC servers answer errors.
            response
                .headers_mut()
                .insert("grpc-status", "14".parse().expect("value"));
            response
                .headers_mut()
                .insert("grpc-message", "unavailable".parse().expect("value"));
            return response;
        }
        response
            .headers_mut()
            .insert("grpc-status", "0".parse().expect("value"));
        response
            .headers_mut()
            .insert("x-served-by", name.parse().expect("value"));
        *response.body_mut() = full(body);
        return response;
    }
    if chosen(seq, b.fail_percent.load(Ordering::Relaxed)) {
        let status = StatusCode::from_u16(b.fail_status.load(Ordering::Relaxed) as u16)
            .unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        let mut response = Response::new(full(format!("{name} failing\n")));
        *response.status_mut() = status;
        return response;
    }
    let mut response = Response::new(full(format!("{name}\n")));
    response
        .headers_mut()
        .insert("x-served-by", name.parse().expect("value"));
    if let Some(echoed) = echoed {
        response.headers_mut().insert("x-echo", echoed);
    }
    if let Ok(path) = path.parse() {
        response.headers_mut().insert("x-path", path);
    }
    response
}

/// Asks for a `weft-echo` upgrade over plain TCP (as a WebSocket client would), sends a line,
/// and prints `{"status": <code>, "echo": "<line>"}`.
async fn upgrade(url: &str) -> Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").context("an http:// URL")?;
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let mut stream = tokio::net::TcpStream::connect(authority).await?;
    stream
        .write_all(
            format!(
                "GET /{path} HTTP/1.1\r\nHost: {authority}\r\nConnection: Upgrade\r\nUpgrade: weft-echo\r\n\r\n"
            )
            .as_bytes(),
        )
        .await?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).await? == 0 {
            break;
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_string();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut echo = String::new();
    if status == 101 {
        stream.write_all(b"ping through the waypoint\n").await?;
        let mut buf = vec![0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await??;
        echo = String::from_utf8_lossy(&buf[..n]).trim().to_owned();
    }
    println!("{}", serde_json::json!({ "status": status, "echo": echo }));
    Ok(())
}
