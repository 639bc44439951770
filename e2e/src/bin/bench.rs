//! `weft-bench`: the same traffic with no mesh, with capture only, and through two node proxies
//! over HBONE, in one run.
//!
//! Run as root: `cargo run --release -p weft-e2e --bin weft-bench [-- --capture nftables]`. The
//! orchestrator builds a 2-node test bed with an enrolled client/server pair and a non-enrolled
//! pair on the same nodes and fabric, then runs this binary's `serve` and `load` modes inside the
//! pods. "Capture only" is the enrolled client calling the non-enrolled server: redirected into
//! its node proxy and passed through as plain TCP (no HBONE, no destination proxy), which is the
//! cost of having capture in the path.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use clap::{Parser, Subcommand};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Parser)]
#[command(about = "Weft benchmark: no mesh vs. through two node proxies")]
struct Cli {
    #[command(subcommand)]
    mode: Option<Mode>,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 5)]
    secs: u64,
    /// Capture mechanism of the node proxies: ebpf or nftables.
    #[arg(long, default_value = "ebpf")]
    capture: String,
    /// The node proxies' `--worker-threads` (default: theirs).
    #[arg(long)]
    proxy_workers: Option<usize>,
}

#[derive(Subcommand)]
enum Mode {
    /// Servers: sink on 5001, 64 B echo on 5002, accept-and-answer on 5003.
    Serve,
    /// One measurement against `target`; prints a JSON line.
    Load {
        #[arg(long)]
        kind: String,
        #[arg(long)]
        target: SocketAddr,
        #[arg(long, default_value_t = 1)]
        streams: usize,
        #[arg(long, default_value_t = 5)]
        secs: u64,
    },
}

#[derive(Serialize, Deserialize, Default, Clone, Copy)]
struct Measured {
    bytes: u64,
    ops: u64,
    secs: f64,
    p50_us: f64,
    p99_us: f64,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.mode {
        Some(Mode::Serve) => runtime()?.block_on(serve()),
        Some(Mode::Load {
            kind,
            target,
            streams,
            secs,
        }) => {
            let measured =
                runtime()?.block_on(load(&kind, target, streams, Duration::from_secs(secs)))?;
            println!("{}", serde_json::to_string(&measured)?);
            Ok(())
        }
        None => {
            let mode = match cli.capture.as_str() {
                "ebpf" => weft_testbed::CaptureMode::Ebpf,
                "nftables" => weft_testbed::CaptureMode::Nftables,
                other => anyhow::bail!("--capture {other}: expected ebpf or nftables"),
            };
            orchestrate(cli.secs, mode, cli.proxy_workers)
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?)
}

async fn serve() -> Result<()> {
    let sink = TcpListener::bind("0.0.0.0:5001").await?;
    let echo = TcpListener::bind("0.0.0.0:5002").await?;
    let answer = TcpListener::bind("0.0.0.0:5003").await?;
    tokio::spawn(accept_loop(sink, |mut s| async move {
        let mut buf = vec![0u8; 256 * 1024];
        while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
    }));
    tokio::spawn(accept_loop(echo, |mut s| async move {
        let _ = s.set_nodelay(true);
        let mut buf = [0u8; 64];
        while s.read_exact(&mut buf).await.is_ok() {
            if s.write_all(&buf).await.is_err() {
                break;
            }
        }
    }));
    accept_loop(answer, |mut s| async move {
        let mut b = [0u8; 1];
        if s.read_exact(&mut b).await.is_ok() {
            let _ = s.write_all(&b).await;
        }
    })
    .await;
    Ok(())
}

async fn accept_loop<F, Fut>(listener: TcpListener, handle: F)
where
    F: Fn(TcpStream) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    while let Ok((stream, _)) = listener.accept().await {
        tokio::spawn(handle(stream));
    }
}

async fn load(kind: &str, target: SocketAddr, streams: usize, dur: Duration) -> Result<Measured> {
    let start = Instant::now();
    let deadline = start + dur;
    let mut tasks = Vec::new();
    for _ in 0..streams {
        let kind = kind.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut bytes = 0u64;
            let mut lat = Vec::new();
            match kind.as_str() {
                "stream" => {
                    let mut s = TcpStream::connect(target).await?;
                    let buf = vec![0x5au8; 256 * 1024];
                    while Instant::now() < deadline {
                        s.write_all(&buf).await?;
                        bytes += buf.len() as u64;
                    }
                }
                "pingpong" => {
                    let mut s = TcpStream::connect(target).await?;
                    s.set_nodelay(true)?;
                    let mut buf = [7u8; 64];
                    while Instant::now() < deadline {
                        let t = Instant::now();
                        s.write_all(&buf).await?;
                        s.read_exact(&mut buf).await?;
                        lat.push(t.elapsed().as_secs_f64() * 1e6);
                    }
                }
                _ => {
                    while Instant::now() < deadline {
                        let t = Instant::now();
                        let mut s = TcpStream::connect(target).await?;
                        s.write_all(b"x").await?;
                        let mut b = [0u8; 1];
                        s.read_exact(&mut b).await?;
                        lat.push(t.elapsed().as_secs_f64() * 1e6);
                    }
                }
            }
            Ok::<_, anyhow::Error>((bytes, lat))
        }));
    }
    let mut bytes = 0;
    let mut lat = Vec::new();
    for t in tasks {
        let (b, l) = t.await??;
        bytes += b;
        lat.extend(l);
    }
    lat.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0.0)
    };
    Ok(Measured {
        bytes,
        ops: lat.len() as u64,
        secs: start.elapsed().as_secs_f64(),
        p50_us: pct(0.50),
        p99_us: pct(0.99),
    })
}

fn orchestrate(
    secs: u64,
    mode: weft_testbed::CaptureMode,
    proxy_workers: Option<usize>,
) -> Result<()> {
    let mut bed = weft_testbed::TestBed::new("bench", 2)?;
    bed.capture_mode(mode);
    if let Some(n) = proxy_workers {
        bed.proxy_args(&["--worker-threads", &n.to_string()]);
    }
    let mesh_client = bed.pod("client").namespace("bench").on_node(0).add()?;
    let mesh_server = bed.pod("server").namespace("bench").on_node(1).add()?;
    let plain_client = bed
        .pod("plain-client")
        .namespace("nomesh")
        .on_node(0)
        .not_enrolled()
        .add()?;
    let plain_server = bed
        .pod("plain-server")
        .namespace("nomesh")
        .on_node(1)
        .not_enrolled()
        .add()?;
    bed.start()?;
    let exe = std::env::current_exe()?.display().to_string();
    for server in [&mesh_server, &plain_server] {
        bed.spawn_in(
            &server.netns.clone(),
            &[&exe, "serve"],
            &format!("serve-{}.log", server.name),
        )?;
        weft_testbed::wait_listening(
            &server.netns_path(),
            SocketAddr::from(([127, 0, 0, 1], 5003)),
        )?;
    }
    let pids = [
        bed.proxy_pid(0).context("proxy 1")?,
        bed.proxy_pid(1).context("proxy 2")?,
    ];
    let rss_idle = pids.map(weft_testbed::process::rss_kib);

    let run = |client: &weft_testbed::Pod,
               server: &weft_testbed::Pod,
               kind: &str,
               port: u16,
               streams: usize|
     -> Result<(Measured, [f64; 2], [u64; 2])> {
        let cpu0 = pids.map(weft_testbed::process::cpu_secs);
        let target = format!("{}:{port}", server.ip);
        let (s, secs_s) = (streams.to_string(), secs.to_string());
        let sampler = std::thread::spawn(move || {
            let mut max = [0u64; 2];
            let end = Instant::now() + Duration::from_secs(secs);
            while Instant::now() < end {
                for (m, pid) in max.iter_mut().zip(pids) {
                    *m = (*m).max(weft_testbed::process::rss_kib(pid));
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            max
        });
        let out = bed.exec(
            client,
            &[
                &exe,
                "load",
                "--kind",
                kind,
                "--target",
                &target,
                "--streams",
                &s,
                "--secs",
                &secs_s,
            ],
        )?;
        ensure!(
            out.status.success(),
            "load {kind}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let measured: Measured = serde_json::from_slice(&out.stdout)?;
        let cpu1 = pids.map(weft_testbed::process::cpu_secs);
        let rss = sampler.join().map_err(|_| anyhow::anyhow!("sampler"))?;
        Ok((measured, [cpu1[0] - cpu0[0], cpu1[1] - cpu0[1]], rss))
    };

    let mut rows = Vec::new();
    let mut json = serde_json::Map::new();
    let mut rss_load = [0u64; 2];
    let mut cpu_per_gb = [0.0f64; 2];
    for (name, kind, port, streams) in [
        ("throughput_1_stream_gbps", "stream", 5001, 1),
        ("throughput_4_streams_gbps", "stream", 5001, 4),
        ("latency_64b", "pingpong", 5002, 1),
        ("new_connections_per_sec", "connect", 5003, 1),
    ] {
        let (base, _, _) = run(&plain_client, &plain_server, kind, port, streams)?;
        let (capture, _, _) = run(&mesh_client, &plain_server, kind, port, streams)?;
        let (mesh, cpu, rss) = run(&mesh_client, &mesh_server, kind, port, streams)?;
        let gbps = |m: &Measured| m.bytes as f64 * 8.0 / m.secs / 1e9;
        let rate = |m: &Measured| m.ops as f64 / m.secs;
        let mut figures: Vec<(String, f64, f64, f64)> = Vec::new();
        match kind {
            "stream" => {
                figures.push((name.to_owned(), gbps(&base), gbps(&capture), gbps(&mesh)));
                if streams == 4 {
                    let gb = mesh.bytes as f64 / 1e9;
                    cpu_per_gb = [cpu[0] / gb, cpu[1] / gb];
                    rss_load = rss;
                }
            }
            "pingpong" => {
                figures.push((
                    "latency_64b_p50_us".into(),
                    base.p50_us,
                    capture.p50_us,
                    mesh.p50_us,
                ));
                figures.push((
                    "latency_64b_p99_us".into(),
                    base.p99_us,
                    capture.p99_us,
                    mesh.p99_us,
                ));
            }
            _ => {
                figures.push((name.to_owned(), rate(&base), rate(&capture), rate(&mesh)));
                figures.push((
                    "new_connection_p50_us".into(),
                    base.p50_us,
                    capture.p50_us,
                    mesh.p50_us,
                ));
                figures.push((
                    "new_connection_p99_us".into(),
                    base.p99_us,
                    capture.p99_us,
                    mesh.p99_us,
                ));
            }
        }
        for (label, b, c, m) in figures {
            json.insert(
                label.clone(),
                serde_json::json!({"no_mesh": b, "capture_only": c, "mesh": m, "capture_only_ratio": c / b, "ratio": m / b}),
            );
            rows.push((label, b, c, m));
        }
    }
    println!("capture mode: {}", mode.flag());
    println!(
        "{:<28} {:>10} {:>12} {:>10} {:>10} {:>8}",
        "metric", "no mesh", "capture only", "ratio", "mesh", "ratio"
    );
    for (name, base, capture, mesh) in &rows {
        println!(
            "{name:<28} {base:>10.2} {capture:>12.2} {:>10.3} {mesh:>10.2} {:>8.3}",
            capture / base,
            mesh / base
        );
    }
    for (i, node) in ["source proxy", "destination proxy"].iter().enumerate() {
        println!(
            "{node}: CPU {:.2} s/GB (4 streams), RSS idle {} KiB, under load {} KiB",
            cpu_per_gb[i], rss_idle[i], rss_load[i]
        );
    }
    json.insert(
        "cpu_seconds_per_gb".into(),
        serde_json::json!({"source_proxy": cpu_per_gb[0], "destination_proxy": cpu_per_gb[1]}),
    );
    json.insert(
        "rss_kib".into(),
        serde_json::json!({"idle": rss_idle, "load": rss_load}),
    );
    json.insert("secs_per_measurement".into(), secs.into());
    json.insert("capture_mode".into(), mode.flag().into());
    println!("{}", serde_json::Value::Object(json));
    Ok(())
}
