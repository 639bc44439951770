//! The lab: the embedded default of Weft. Two nodes, a controller reading Kubernetes manifests
//! from a directory, pods in the ambient namespace `shop`, one pod outside the mesh, sample HTTP
//! services behind VIPs, a waypoint applying the guide's VirtualService to `reviews` in
//! `default`, traffic, and a summary read from the proxies' own metrics.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use weft_testbed::fixtures::{REVIEWS_VIP, ReviewsBehindWaypoint, reviews_behind_waypoint};
use weft_testbed::{CaptureMode, Pod, TestBed, metric_sum};

#[derive(clap::Args, Debug)]
pub(crate) struct LabArgs {
    /// Requests sent to each service.
    #[arg(long, default_value_t = 5)]
    requests: u32,
    /// Exit after this many seconds instead of waiting for Ctrl-C.
    #[arg(long)]
    duration_secs: Option<u64>,
    /// First local port where the nodes' metrics are exposed (one port per node).
    #[arg(long, default_value_t = 15120)]
    metrics_port: u16,
    /// How the node proxies capture pod traffic: ebpf or nftables.
    #[arg(long, default_value = "ebpf")]
    capture: String,
    /// Keep the logs, manifests and certificates after the lab stops (their directory is
    /// printed).
    #[arg(long)]
    keep: bool,
}

struct Svc {
    name: &'static str,
    vip: Ipv4Addr,
    pod: Pod,
}

pub(crate) fn run(args: &LabArgs) -> Result<()> {
    // Catch Ctrl-C/SIGTERM/SIGHUP before building anything, so an interruption at any point
    // still tears the namespaces down (the TestBed's Drop) instead of leaving them behind.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    runtime.spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut int), Ok(mut term), Ok(mut hup)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
            signal(SignalKind::hangup()),
        ) else {
            return;
        };
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
            _ = hup.recv() => {}
        }
        let _ = stop_tx.send(true);
    });
    let stopped = || *stop.borrow();
    // The metrics ports first: a clash fails now, with the fix, not after the lab is built.
    let mut listeners = Vec::new();
    for i in 0..2u16 {
        let port = args.metrics_port + i;
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port)))
            .with_context(|| {
                format!("127.0.0.1:{port} is taken: pass --metrics-port with two free ports")
            })?;
        listeners.push(listener);
    }
    println!("Weft lab: building 2 nodes and the ambient namespace \"shop\"...");
    let mut bed = TestBed::new("lab", 2)?;
    if args.keep {
        bed.keep_files();
    }
    // The embedded default: a weft-controller reading Kubernetes YAML from a directory programs
    // the node proxies, as it would from the API server.
    bed.with_controller();
    bed.capture_mode(match args.capture.as_str() {
        "ebpf" => CaptureMode::Ebpf,
        "nftables" => CaptureMode::Nftables,
        other => anyhow::bail!("--capture {other}: expected ebpf or nftables"),
    });
    let productpage = bed
        .pod("productpage")
        .namespace("shop")
        .service_account("bookinfo-productpage")
        .on_node(0)
        .add()?;
    let details = bed
        .pod("details-v1")
        .namespace("shop")
        .service_account("details")
        .on_node(0)
        .add()?;
    let reviews = bed
        .pod("reviews-v1")
        .namespace("shop")
        .service_account("reviews")
        .on_node(1)
        .add()?;
    let ratings = bed
        .pod("ratings-v1")
        .namespace("shop")
        .service_account("ratings")
        .on_node(1)
        .add()?;
    let legacy = bed
        .pod("legacy")
        .namespace("legacy")
        .on_node(1)
        .not_enrolled()
        .add()?;
    // L7: the guide's bookinfo reviews, v1 and v2, behind a waypoint, in `default` (where the
    // guide's YAML lands when applied without a namespace).
    let ReviewsBehindWaypoint {
        v1: l7_v1,
        v2: l7_v2,
        waypoint,
    } = reviews_behind_waypoint(&mut bed)?;
    let services = [
        Svc {
            name: "details",
            vip: Ipv4Addr::new(10, 96, 0, 20),
            pod: details,
        },
        Svc {
            name: "reviews",
            vip: Ipv4Addr::new(10, 96, 0, 21),
            pod: reviews,
        },
        Svc {
            name: "ratings",
            vip: Ipv4Addr::new(10, 96, 0, 22),
            pod: ratings,
        },
    ];
    for svc in &services {
        bed.service(svc.name, "shop", svc.vip, 9080, 8080, &[&svc.pod]);
    }
    bed.start().context("starting the node proxies")?;
    bed.serve_testsrv(&l7_v1, "reviews-v1")?;
    bed.serve_testsrv(&l7_v2, "reviews-v2")?;
    bed.write_manifest("istio-traffic-management.yaml", GUIDE_TRAFFIC)?;
    for svc in &services {
        let body = format!(
            "{{\"service\":\"{}\",\"pod\":\"{}\"}}\n",
            svc.name, svc.pod.name
        );
        bed.serve_http(&svc.pod, 8080, &[("index.html", &body)])?;
    }
    print!("{}", bed.describe());

    println!(
        "\nTraffic: productpage -> details, reviews, ratings ({} requests each, by service VIP)",
        args.requests
    );
    let mut failures = 0;
    for svc in &services {
        for _ in 0..args.requests {
            let (ok, _, err) = bed.curl(&productpage, &format!("http://{}:9080/", svc.vip))?;
            if !ok {
                failures += 1;
                eprintln!("  request to {} failed: {}", svc.name, err.trim());
            }
        }
    }
    let (legacy_ok, _, _) = bed.curl(&legacy, &format!("http://{}:8080/", services[1].pod.ip))?;
    println!(
        "Traffic: legacy (outside the mesh) -> reviews-v1 in plaintext: {}",
        if legacy_ok {
            "ALLOWED (unexpected!)"
        } else {
            "refused (STRICT mTLS)"
        }
    );

    // L7 through the waypoint: the guide's VirtualService sends end-user: jason to v2.
    std::thread::sleep(Duration::from_millis(300));
    let url = format!("http://{REVIEWS_VIP}:9080/reviews/1");
    let mut answers: BTreeMap<(&str, String), u32> = BTreeMap::new();
    for (who, header) in [
        ("jason", "end-user: jason"),
        ("anyone else", "end-user: alice"),
    ] {
        for _ in 0..args.requests {
            let out = bed.exec(
                &productpage,
                &["curl", "-sS", "--max-time", "5", "-H", header, &url],
            )?;
            let body = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            *answers.entry((who, body)).or_default() += 1;
        }
    }
    println!(
        "\nL7: productpage -> reviews.default through reviews-waypoint, with the guide's \
         VirtualService (end-user: jason -> v2, the rest -> v1):"
    );
    for ((who, body), n) in &answers {
        println!("  as {who}: {n} answered by {body}");
    }
    let l7_ok = answers.get(&("jason", "reviews-v2".to_owned())) == Some(&args.requests)
        && answers.get(&("anyone else", "reviews-v1".to_owned())) == Some(&args.requests);
    let waypoint_metrics = bed.waypoint_metrics(&waypoint)?;
    println!(
        "  the waypoint counted {} requests (weft_requests_total, reporter=waypoint)",
        metric_sum(
            &waypoint_metrics,
            "weft_requests_total",
            &[("reporter", "waypoint")]
        )
    );
    std::thread::sleep(Duration::from_millis(200));

    println!("\nWhat talked to what (reported by the source node proxy):");
    let mut rows = BTreeMap::new();
    for i in 0..bed.nodes().len() {
        let metrics = bed.metrics(i)?;
        for series in metrics.keys().filter(|s| {
            s.starts_with("weft_tcp_connections_opened_total{") && s.contains("reporter=\"source\"")
        }) {
            let label = |k: &str| {
                series
                    .split(&format!("{k}=\""))
                    .nth(1)
                    .and_then(|r| r.split('"').next())
                    .unwrap_or("?")
                    .to_owned()
            };
            let (src_ns, dst_ns) = (
                label("source_workload_namespace"),
                label("destination_workload_namespace"),
            );
            let (src, dst) = (label("source_workload"), label("destination_workload"));
            let filter = [
                ("reporter", "source"),
                ("source_workload", src.as_str()),
                ("source_workload_namespace", src_ns.as_str()),
                ("destination_workload", dst.as_str()),
                ("destination_workload_namespace", dst_ns.as_str()),
            ];
            let key = (format!("{src_ns}/{src}"), format!("{dst_ns}/{dst}"));
            rows.insert(
                key.clone(),
                (
                    label("source_principal"),
                    label("destination_principal"),
                    label("connection_security_policy"),
                    metric_sum(&metrics, "weft_tcp_connections_opened_total", &filter),
                    metric_sum(&metrics, "weft_tcp_sent_bytes_total", &filter),
                    metric_sum(&metrics, "weft_tcp_received_bytes_total", &filter),
                ),
            );
        }
    }
    for ((src, dst), (sp, dp, policy, conns, sent, received)) in &rows {
        println!(
            "  {src} -> {dst}: {conns} connections, {sent} B sent, {received} B received, {}",
            if policy == "mutual_tls" {
                "mTLS (HBONE)"
            } else {
                "plain TCP"
            }
        );
        println!("      {sp}  ->  {dp}");
    }
    ensure!(
        failures == 0,
        "{failures} requests failed; node proxy logs are in {}",
        bed.dir().display()
    );
    ensure!(
        !legacy_ok,
        "plaintext from outside the mesh reached an enrolled pod"
    );
    ensure!(
        l7_ok,
        "the waypoint did not route as the VirtualService says; logs in {}",
        bed.dir().display()
    );

    if stopped() {
        println!("Interrupted: tearing the lab down.");
        return Ok(());
    }
    // Each node's metrics, reachable from this machine's loopback.
    println!("\nMetrics (Prometheus text):");
    for ((i, node), listener) in bed.nodes().iter().enumerate().zip(listeners) {
        let port = args.metrics_port + i as u16;
        let netns = Arc::new(weft_core::netns::Netns::open(
            &PathBuf::from("/run/netns").join(&node.netns),
        )?);
        runtime.spawn(forward(
            listener,
            netns,
            SocketAddr::from((Ipv4Addr::LOCALHOST, 15020)),
        ));
        println!("  {}: curl http://127.0.0.1:{port}/metrics", node.name);
    }
    println!(
        "\nTry it: ip netns exec {} curl http://{}:9080/",
        productpage.netns, services[1].vip
    );
    println!(
        "Node proxy logs: {}/node*-proxy.log ({})",
        bed.dir().display(),
        if args.keep {
            "kept after the lab stops"
        } else {
            "removed when the lab stops; --keep keeps them"
        }
    );
    println!(
        "Controller: manifests in {} (edit them: e.g. remove the namespace label \
         weft.io/dataplane-mode: ambient from shop in bed.yaml and its pods leave the mesh), \
         log {}",
        bed.manifests_dir().display(),
        bed.controller_log_path().display()
    );
    match args.duration_secs {
        Some(secs) => {
            println!("Running for {secs} s...");
            std::thread::sleep(Duration::from_secs(secs));
        }
        None => {
            println!("Running until Ctrl-C...");
            let mut stop = stop.clone();
            runtime.block_on(async move { stop.wait_for(|s| *s).await.map(|_| ()) })?;
        }
    }
    println!("Tearing the lab down.");
    let dir = bed.dir().to_path_buf();
    drop(runtime);
    drop(bed);
    if args.keep {
        println!("Logs, manifests and certificates kept in {}", dir.display());
    }
    Ok(())
}

/// The guide's traffic-management example, applied unchanged.
const GUIDE_TRAFFIC: &str = include_str!("../../examples/guide/istio-traffic-management.yaml");

/// Forwards connections from a loopback port of this namespace to `target` inside `netns`.
async fn forward(
    listener: tokio::net::TcpListener,
    netns: Arc<weft_core::netns::Netns>,
    target: SocketAddr,
) {
    while let Ok((mut inbound, _)) = listener.accept().await {
        let netns = netns.clone();
        tokio::spawn(async move {
            if let Ok(mut outbound) = netns.connect(target, None).await {
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            }
        });
    }
}
