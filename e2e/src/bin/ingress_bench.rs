//! `weft-ingress-bench`: HTTPS from a client outside the mesh at a fixed request rate, through
//! Weft's ingress gateway (TLS terminated, then HBONE into the mesh to the service, an access-log
//! line per request) and through HAProxy doing the same job (Debian's: the same TLS termination,
//! then mutual TLS to a second HAProxy in the server's pod that terminates it, as the server's
//! node proxy does for the gateway, and a log line per request), in one run, rounds
//! interleaved; requests/s, latency percentiles, and each edge proxy's CPU and RSS.
//! `--haproxy-plain`: HAProxy proxies plain HTTP to the server and logs nothing (the first
//! comparison, less work than the gateway does).
//!
//! Run as root, with release binaries and HAProxy installed (`apt-get install haproxy`):
//! `cargo build --release --workspace --bins && ./target/release/weft-ingress-bench
//! [--rate 1000 --secs 10 --rounds 3]`. The client is `weft-testsrv load` over TLS with
//! keep-alive connections (`--concurrency` of them), the servers `weft-testsrv serve`; the
//! latency is per request, send to end of response (no coordinated-omission correction).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};
use clap::Parser;
use weft_testbed::TestBed;

#[derive(Parser)]
struct Args {
    /// Requests per second.
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 10)]
    secs: u64,
    /// Rounds, each measuring both proxies.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Connections (and requests in flight at most).
    #[arg(long, default_value_t = 16)]
    concurrency: u64,
    /// HAProxy's threads (`nbthread`).
    #[arg(long, default_value_t = 1)]
    haproxy_threads: u32,
    /// The gateway's threads (its `--worker-threads`).
    #[arg(long, default_value_t = 1)]
    gateway_threads: u32,
    /// HAProxy sends plain HTTP to the server and logs nothing.
    #[arg(long)]
    haproxy_plain: bool,
}

/// The name the server side's HAProxy presents and the edge checks.
const BACKEND_HOST: &str = "backend.mesh.test";
/// Where the server side's HAProxy terminates mutual TLS.
const BACKEND_PORT: u16 = 8443;

const HOST: &str = "shop.example.test";
const VIP: &str = "10.96.0.40";

const GATEWAY: &str = "apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: shop-gateway
  namespace: istio-system
spec:
  selector:
    istio: ingressgateway
  servers:
  - port:
      number: 443
      name: https
      protocol: HTTPS
    hosts:
    - shop.example.test
    tls:
      mode: SIMPLE
      credentialName: shop-cert
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: shop
  namespace: default
spec:
  hosts:
  - shop.example.test
  gateways:
  - istio-system/shop-gateway
  http:
  - route:
    - destination:
        host: productpage
        port:
          number: 9080
";

/// CPU seconds (user + system) and RSS (KiB) of a process, if it runs.
fn proc_stat(pid: u32) -> Option<(f64, u64)> {
    let rss = weft_testbed::process::rss_kib(pid);
    (rss > 0).then(|| (weft_testbed::process::cpu_secs(pid), rss))
}

/// The pid of the process whose command line holds `needle`.
fn pid_of(needle: &str) -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.find_map(|e| {
        let pid: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        (text.starts_with("haproxy") && text.contains(needle)).then_some(pid)
    })
}

/// How the edge HAProxy reaches the server.
enum Upstream<'a> {
    /// Plain HTTP to `addr`, no log.
    Plain { addr: String },
    /// Mutual TLS to the server pod's HAProxy at `ip`, with `tls`'s files; a log line per request.
    Mtls { ip: String, tls: &'a HaproxyTls },
}

/// The certificates of the HAProxy pair: each side's self-signed ECDSA P-256 certificate is
/// what the other trusts.
struct HaproxyTls {
    edge_pem: PathBuf,
    edge_crt: PathBuf,
    backend_pem: PathBuf,
    backend_crt: PathBuf,
}

impl HaproxyTls {
    fn create(bed: &TestBed, dir: &Path) -> Result<Self> {
        let pair = |name: &str, host: &str| -> Result<(PathBuf, PathBuf)> {
            bed.tls_credential(dir, name, host)?;
            let pem = dir.join(format!("{name}.pem"));
            combined_pem(&dir.join(name), &pem)?;
            Ok((pem, dir.join(name).join("tls.crt")))
        };
        let (edge_pem, edge_crt) = pair("edge", "edge.mesh.test")?;
        let (backend_pem, backend_crt) = pair("backend", BACKEND_HOST)?;
        Ok(Self {
            edge_pem,
            edge_crt,
            backend_pem,
            backend_crt,
        })
    }
}

/// Writes the certificate and key of the credential in `credential` (`tls.crt`, `tls.key`) as
/// one PEM file at `out`, as HAProxy's `crt` takes them.
fn combined_pem(credential: &Path, out: &Path) -> Result<()> {
    let cert = std::fs::read_to_string(credential.join("tls.crt"))?;
    let key = std::fs::read_to_string(credential.join("tls.key"))?;
    Ok(std::fs::write(out, format!("{cert}{key}"))?)
}

fn haproxy_config(dir: &Path, threads: u32, upstream: &Upstream<'_>) -> Result<PathBuf> {
    let pem = dir.join("haproxy.pem");
    combined_pem(&dir.join("credentials/shop-cert"), &pem)?;
    let (log, server) = match upstream {
        Upstream::Plain { addr } => (String::new(), format!("{addr} maxconn 1000")),
        Upstream::Mtls { ip, tls } => (
            "    log stdout format raw local0 info\n".to_owned(),
            format!(
                "{ip}:{BACKEND_PORT} maxconn 1000 ssl verify required ca-file {} \
                 verifyhost {BACKEND_HOST} sni str({BACKEND_HOST}) crt {} alpn http/1.1",
                tls.backend_crt.display(),
                tls.edge_pem.display()
            ),
        ),
    };
    let config = dir.join("haproxy.cfg");
    std::fs::write(
        &config,
        format!(
            "global
    nbthread {threads}
    maxconn 8000
{log}defaults
    mode http
    log global
    option httplog
    timeout connect 10s
    timeout client 30s
    timeout server 30s
    option http-keep-alive
frontend tls
    bind 0.0.0.0:443 ssl crt {pem} alpn http/1.1
    default_backend app
backend app
    retries 2
    retry-on conn-failure empty-response 503
    server s1 {server}
",
            pem = pem.display()
        ),
    )?;
    Ok(config)
}

/// The server pod's HAProxy: terminates mutual TLS (the edge's certificate required) and passes
/// plain HTTP to the server beside it, as a destination node proxy does.
fn backend_config(dir: &Path, tls: &HaproxyTls) -> Result<PathBuf> {
    let config = dir.join("haproxy-backend.cfg");
    std::fs::write(
        &config,
        format!(
            "global
    nbthread 1
    maxconn 8000
defaults
    mode http
    timeout connect 10s
    timeout client 30s
    timeout server 30s
    option http-keep-alive
frontend mtls
    bind 0.0.0.0:{BACKEND_PORT} ssl crt {} ca-file {} verify required alpn http/1.1
    default_backend app
backend app
    server s1 127.0.0.1:8080 maxconn 1000
",
            tls.backend_pem.display(),
            tls.edge_crt.display()
        ),
    )?;
    Ok(config)
}

fn main() -> Result<()> {
    let args = Args::parse();
    ensure!(
        std::process::Command::new("haproxy")
            .arg("-v")
            .output()
            .is_ok_and(|o| o.status.success()),
        "HAProxy is not installed (apt-get install haproxy)"
    );
    let mut bed = TestBed::new("ingbench", 2)?;
    bed.with_controller();
    let client = bed
        .pod("client")
        .namespace("outside")
        .not_enrolled()
        .on_node(0)
        .add()?;
    let gateway = bed.ingress_gateway(
        "istio-ingressgateway",
        "istio-system",
        0,
        &[("istio", "ingressgateway")],
    )?;
    let edge = bed
        .pod("haproxy")
        .namespace("edge")
        .not_enrolled()
        .on_node(0)
        .add()?;
    let productpage = bed
        .pod("productpage")
        .namespace("default")
        .label("app", "productpage")
        .on_node(1)
        .add()?;
    let plain = bed
        .pod("plain")
        .namespace("plain")
        .not_enrolled()
        .on_node(1)
        .add()?;
    bed.service(
        "productpage",
        "default",
        VIP.parse()?,
        9080,
        8080,
        &[&productpage],
    );
    let dir = bed.dir().to_path_buf();
    let credentials = dir.join("credentials");
    let ca = bed.tls_credential(&credentials, "shop-cert", HOST)?;
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca)?;
    let credential_dir = credentials.display().to_string();
    let gateway_threads = args.gateway_threads.to_string();
    bed.waypoint_args_for(
        "istio-ingressgateway",
        &[
            "--credential-dir",
            &credential_dir,
            "--worker-threads",
            &gateway_threads,
        ],
    );
    bed.preload_manifest("gateway.yaml", GATEWAY)?;
    bed.start()?;
    bed.serve_testsrv(&productpage, "productpage")?;
    bed.serve_testsrv(&plain, "plain")?;
    let tls = HaproxyTls::create(&bed, &dir.join("haproxy-tls"))?;
    let upstream = if args.haproxy_plain {
        Upstream::Plain {
            addr: format!("{}:8080", plain.ip),
        }
    } else {
        let backend = backend_config(&dir, &tls)?.display().to_string();
        bed.spawn_in(
            &plain.netns,
            &["haproxy", "-db", "-f", &backend],
            "haproxy-backend.log",
        )?;
        weft_testbed::wait_listening(
            &plain.netns_path(),
            std::net::SocketAddr::from(([127, 0, 0, 1], BACKEND_PORT)),
        )
        .with_context(|| {
            std::fs::read_to_string(dir.join("haproxy-backend.log")).unwrap_or_default()
        })?;
        Upstream::Mtls {
            ip: plain.ip.to_string(),
            tls: &tls,
        }
    };
    let config = haproxy_config(&dir, args.haproxy_threads, &upstream)?;
    let config_str = config.display().to_string();
    bed.spawn_in(
        &edge.netns,
        &["haproxy", "-db", "-f", &config_str],
        "haproxy.log",
    )?;
    weft_testbed::wait_listening(
        &edge.netns_path(),
        std::net::SocketAddr::from(([127, 0, 0, 1], 443)),
    )
    .with_context(|| std::fs::read_to_string(dir.join("haproxy.log")).unwrap_or_default())?;

    let (ca_str, requests, rate, conc) = (
        ca_file.display().to_string(),
        (args.rate * args.secs).to_string(),
        args.rate.to_string(),
        args.concurrency.to_string(),
    );
    // Twice the run's length and half a minute: only a broken path is cut short.
    let deadline = (args.secs * 2000 + 30_000).to_string();
    let run = |ip: std::net::Ipv4Addr, n: &str, rate: &str| {
        let url = format!("https://{ip}:443/");
        bed.load(
            &client,
            &[
                "--url",
                &url,
                "--cacert",
                &ca_str,
                "--sni",
                HOST,
                "--requests",
                n,
                "--rate",
                rate,
                "--concurrency",
                &conc,
                "--deadline-ms",
                &deadline,
            ],
        )
    };
    // Both answer before anything is measured; then a warm-up of each.
    for ip in [gateway.ip, edge.ip] {
        let warm = run(ip, "500", "0")?;
        ensure!(
            warm["status"]["200"].as_u64() == Some(500),
            "warm-up through {ip}: {warm}"
        );
    }
    let gateway_pid = bed.waypoint_pid(&gateway).context("gateway pid")?;
    let haproxy_pid = pid_of(&config_str).context("haproxy pid")?;

    let mut rows = Vec::new();
    for round in 0..args.rounds {
        for (name, ip, pid) in [
            ("weft gateway", gateway.ip, gateway_pid),
            ("haproxy", edge.ip, haproxy_pid),
        ] {
            let before = proc_stat(pid).context("stat")?;
            let result = run(ip, &requests, &rate)?;
            let after = proc_stat(pid).context("stat")?;
            let secs = result["secs"].as_f64().unwrap_or(1.0);
            let ok = result["status"]["200"].as_u64().unwrap_or(0);
            rows.push(serde_json::json!({
                "round": round, "proxy": name, "ok": ok, "requests": args.rate * args.secs,
                "rps": ok as f64 / secs,
                "p50_us": result["p50_us"], "p99_us": result["p99_us"],
                "cpu_s_per_s": (after.0 - before.0) / secs,
                "rss_kib": after.1,
                "status": result["status"],
            }));
        }
    }
    println!(
        "HTTPS at {} requests/s for {} s, {} connections, {} rounds interleaved; HAProxy upstream: {}",
        args.rate,
        args.secs,
        args.concurrency,
        args.rounds,
        if args.haproxy_plain {
            "plain HTTP, no log"
        } else {
            "mutual TLS, a log line per request"
        }
    );
    println!("| proxy | ok | req/s | p50 (µs) | p99 (µs) | CPU-s/s | RSS (MiB) |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for name in ["weft gateway", "haproxy"] {
        let mine: Vec<&serde_json::Value> = rows.iter().filter(|r| r["proxy"] == name).collect();
        let median = |key: &str| {
            let mut v: Vec<f64> = mine.iter().filter_map(|r| r[key].as_f64()).collect();
            v.sort_by(f64::total_cmp);
            let (lo, hi) = (
                v.first().copied().unwrap_or(0.0),
                v.last().copied().unwrap_or(0.0),
            );
            (v.get(v.len() / 2).copied().unwrap_or(0.0), lo, hi)
        };
        let cell = |key: &str, scale: f64, digits: usize| {
            let (m, lo, hi) = median(key);
            format!(
                "{:.d$} ({:.d$}–{:.d$})",
                m * scale,
                lo * scale,
                hi * scale,
                d = digits
            )
        };
        println!(
            "| {name} | {} | {} | {} | {} | {} | {} |",
            cell("ok", 1.0, 0),
            cell("rps", 1.0, 0),
            cell("p50_us", 1.0, 0),
            cell("p99_us", 1.0, 0),
            cell("cpu_s_per_s", 1.0, 3),
            cell("rss_kib", 1.0 / 1024.0, 1),
        );
    }
    println!(
        "{}",
        serde_json::json!({"rate": args.rate, "secs": args.secs, "rows": rows})
    );
    Ok(())
}
