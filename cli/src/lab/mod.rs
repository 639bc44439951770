//! The lab: the embedded default of Weft. Two nodes, a controller reading Kubernetes manifests
//! from a directory, pods in the ambient namespace `shop`, one pod outside the mesh, sample HTTP
//! services behind VIPs, a waypoint applying the guide's VirtualService to `reviews` in
//! `default`, traffic, and a summary read from the proxies' own metrics.

mod manifests;
mod sample;
mod scenario;
mod user;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, ensure};

use weft_testbed::{CaptureMode, TestBed, metric_sum};

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
    /// Run the lab on your own YAML instead of the sample: Namespaces, Pods, Deployments,
    /// Services and waypoint Gateways in DIR become the lab's; every other object (your
    /// policies) goes to the lab controller unchanged.
    #[arg(long, value_name = "DIR")]
    manifests: Option<PathBuf>,
    /// With --manifests: the pod traffic is sent from (NAMESPACE/NAME); default: the first pod
    /// in the mesh.
    #[arg(long, value_name = "NS/POD", requires = "manifests")]
    from: Option<String>,
    /// Back the lab with a real Kubernetes control plane (kube-apiserver, etcd,
    /// kube-controller-manager) so that your own kubectl drives it: label namespaces, apply
    /// policies, and watch the traffic change. Needs the binaries (--kube-assets).
    #[arg(long)]
    kube: bool,
    /// Directory holding kube-apiserver and kube-controller-manager (default:
    /// WEFT_KUBE_ASSETS, else ../shared/k8s/bin of the source tree).
    #[arg(long, value_name = "DIR", requires = "kube")]
    kube_assets: Option<PathBuf>,
    /// Local port of the lab's Prometheus (started when Debian's `prometheus` is installed).
    #[arg(long, default_value_t = 9090)]
    prometheus_port: u16,
    /// Do not start Prometheus.
    #[arg(long)]
    no_prometheus: bool,
    /// Seconds between rounds of the watched traffic while the lab runs (0: no watching).
    #[arg(long, default_value_t = 2)]
    watch_secs: u64,
}

pub(crate) fn run(args: &LabArgs) -> Result<()> {
    // The user's YAML is read first: a mistake in it fails now, not after the build.
    let user = args.manifests.as_deref().map(manifests::read).transpose()?;
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
    // So is a missing control plane.
    let kube = if args.kube {
        Some(kube_assets(args.kube_assets.as_deref())?)
    } else {
        None
    };
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
    // Prometheus, where it is installed: its port too.
    let prometheus = if args.no_prometheus || !has_prometheus() {
        None
    } else {
        let port = args.prometheus_port;
        Some(
            runtime
                .block_on(tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port)))
                .with_context(|| {
                    format!(
                        "127.0.0.1:{port} is taken: pass --prometheus-port with a free port, or \
                         --no-prometheus"
                    )
                })?,
        )
    };
    match &user {
        Some(mesh) => println!(
            "Weft lab: building 2 nodes with your {} pod(s), {} service(s) and {} waypoint(s)...",
            mesh.pods.len(),
            mesh.services.len(),
            mesh.waypoints.len()
        ),
        None => println!("Weft lab: building 2 nodes and the ambient namespace \"shop\"..."),
    }
    let mut bed = TestBed::new("lab", 2)?;
    if args.keep {
        bed.keep_files();
    }
    // The embedded default: a weft-controller reading Kubernetes YAML from a directory programs
    // the node proxies, as it would from the API server.
    match &kube {
        // Through a real API server: the controller watches it, the bed plays kubelet.
        Some(assets) => bed.with_kubernetes(assets),
        None => bed.with_controller(),
    };
    bed.capture_mode(match args.capture.as_str() {
        "ebpf" => CaptureMode::Ebpf,
        "nftables" => CaptureMode::Nftables,
        other => anyhow::bail!("--capture {other}: expected ebpf or nftables"),
    });
    let scenario = match &user {
        Some(mesh) => user::run(&mut bed, mesh, args.requests, args.from.as_deref())?,
        None => sample::sample(&mut bed, args.requests)?,
    };
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
        scenario.problems.is_empty(),
        "{}; logs in {}",
        scenario.problems.join("; "),
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
    match prometheus {
        Some(listener) => {
            bed.prometheus(0).context("starting Prometheus")?;
            let netns = Arc::new(weft_core::netns::Netns::open(
                &PathBuf::from("/run/netns").join(&bed.nodes()[0].netns),
            )?);
            let url = format!("http://127.0.0.1:{}", args.prometheus_port);
            runtime.spawn(forward(
                listener,
                netns,
                SocketAddr::from((Ipv4Addr::LOCALHOST, 9090)),
            ));
            println!(
                "\nPrometheus: {url} (scrapes both node proxies, the waypoints and the controller \
                 every second; deploy/observability's alert rules loaded; its dashboards read it)"
            );
            println!("  weft stat deploy -A --prometheus {url} -t 30s");
            println!(
                "  curl -s {url}/api/v1/query --data-urlencode \
                 'query=sum by (destination_service, response_code) (rate(weft_requests_total[1m]))'"
            );
            println!("  curl -s {url}/api/v1/alerts");
        }
        None if !args.no_prometheus => {
            println!("\nPrometheus: not installed (apt-get install prometheus), so none started")
        }
        None => {}
    }
    if let Some(plane) = bed.control_plane() {
        let kubeconfig = expose_api_server(&runtime, plane, bed.dir())?;
        println!("\nKubernetes (a real API server; the lab's kubelet runs its own pods only):");
        println!("  export KUBECONFIG={}", kubeconfig.display());
        println!("  kubectl get pods -A -o wide");
        println!(
            "  kubectl label namespace {} weft.io/dataplane-mode-   (its pods leave the mesh)",
            if user.is_some() {
                "<namespace>"
            } else {
                "shop"
            }
        );
        println!(
            "  kubectl apply -f <policy.yaml>   (its verdict: kubectl get <kind> <name> -o yaml)"
        );
    }
    println!("\nTry it: {}", scenario.try_it);
    println!(
        "Node proxy logs: {}/node*-proxy.log ({})",
        bed.dir().display(),
        if args.keep {
            "kept after the lab stops"
        } else {
            "removed when the lab stops; --keep keeps them"
        }
    );
    if bed.control_plane().is_some() {
        println!(
            "Controller log: {} (it reads the API server: change things with kubectl)",
            bed.controller_log_path().display()
        );
    } else {
        println!(
            "Controller: manifests in {} (edit them and the controller applies the change{}), \
             log {}",
            bed.manifests_dir().display(),
            if user.is_some() {
                "; yours are the user-*.yaml files"
            } else {
                ": e.g. remove the namespace label weft.io/dataplane-mode: ambient from shop in \
                 bed.yaml and its pods leave the mesh"
            },
            bed.controller_log_path().display()
        );
    }
    let until = args.duration_secs.map(|secs| {
        println!("Running for {secs} s...");
        std::time::Instant::now() + Duration::from_secs(secs)
    });
    if until.is_none() {
        println!("Running until Ctrl-C...");
    }
    if args.watch_secs > 0 {
        println!(
            "Watching the traffic every {} s (a line when what it gets changes):",
            args.watch_secs
        );
    }
    let mut last = String::new();
    let mut next_probe = std::time::Instant::now();
    while !stopped() && until.is_none_or(|t| std::time::Instant::now() < t) {
        if args.watch_secs > 0 && std::time::Instant::now() >= next_probe {
            let line = (scenario.probe)(&bed);
            if line != last {
                println!("  [{}] {line}", clock());
                last = line;
            }
            next_probe = std::time::Instant::now() + Duration::from_secs(args.watch_secs);
        }
        let mut stop = stop.clone();
        runtime.block_on(async move {
            let _ = tokio::time::timeout(Duration::from_millis(200), stop.wait_for(|s| *s)).await;
        });
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

/// The control plane's binaries: `explicit`, else where the test bed looks for them.
fn kube_assets(explicit: Option<&std::path::Path>) -> Result<PathBuf> {
    let dir = match explicit {
        Some(dir) => dir.to_owned(),
        None => weft_testbed::cluster::assets().context(
            "--kube: no kube-apiserver found: pass --kube-assets DIR or set WEFT_KUBE_ASSETS to a \
             directory holding kube-apiserver and kube-controller-manager",
        )?,
    };
    for binary in ["kube-apiserver", "kube-controller-manager"] {
        anyhow::ensure!(
            dir.join(binary).is_file(),
            "--kube: {} has no {binary}",
            dir.display()
        );
    }
    anyhow::ensure!(
        std::process::Command::new("kubectl")
            .args(["version", "--client"])
            .output()
            .is_ok_and(|o| o.status.success()),
        "--kube: kubectl is not installed (scripts/deps.sh installs it)"
    );
    Ok(dir)
}

/// Makes the API server (inside node 1's namespace) reachable from this machine's loopback
/// and writes an admin kubeconfig that points there; returns its path.
fn expose_api_server(
    runtime: &tokio::runtime::Runtime,
    plane: &weft_testbed::cluster::ControlPlane,
    dir: &std::path::Path,
) -> Result<PathBuf> {
    let target: SocketAddr = plane
        .server
        .trim_start_matches("https://")
        .parse()
        .context("the API server's address")?;
    let listener = runtime.block_on(tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))?;
    let local = listener.local_addr()?;
    let netns = plane.netns().context("the control plane runs in a node")?;
    let netns = Arc::new(weft_core::netns::Netns::open(
        &PathBuf::from("/run/netns").join(netns),
    )?);
    runtime.spawn(forward(listener, netns, target));
    // The server certificate names 127.0.0.1, whatever the port.
    let admin = std::fs::read_to_string(&plane.kubeconfig)?;
    let path = dir.join("lab.kubeconfig");
    std::fs::write(
        &path,
        admin.replace(&plane.server, &format!("https://{local}")),
    )?;
    Ok(path)
}

/// Whether Debian's `prometheus` is on this machine.
fn has_prometheus() -> bool {
    std::process::Command::new("prometheus")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The time of day (UTC) for the watched traffic's lines.
fn clock() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format!(
        "{:02}:{:02}:{:02}",
        (secs / 3600) % 24,
        (secs / 60) % 60,
        secs % 60
    )
}

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
