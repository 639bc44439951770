//! `weft-controller-bench`: the controller at scale. Writes a synthetic cluster (by default
//! 10,000 pods on 50 nodes, 1,000 services, 500 policies, 100 namespaces) as manifests, starts the real
//! `weft-controller` on loopback, and measures with real gRPC/TLS streams:
//! - the full push to a new proxy (connect to the whole config received and validated);
//! - how long one change (a pod's label edited in its manifest file) takes to reach each of 50
//!   connected proxies (p50/p99 over several changes), including the controller noticing it;
//! - the controller's RSS.
//!
//! Not a test: run on purpose, `cargo run --release -p weft-controller --bin weft-controller-bench`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use clap::Parser;
use tokio::sync::mpsc;
use weft_core::api::{self, v1};

#[derive(Parser)]
struct Args {
    /// Pods in the synthetic cluster.
    #[arg(long, default_value_t = 10_000)]
    pods: usize,
    /// Services (each selects pods/services pods).
    #[arg(long, default_value_t = 1_000)]
    services: usize,
    /// Nodes (pods are spread evenly; one proxy stream per node).
    #[arg(long, default_value_t = 50)]
    nodes: usize,
    /// Policies (a mix of VirtualServices, DestinationRules, AuthorizationPolicies and
    /// PeerAuthentications on the services).
    #[arg(long, default_value_t = 500)]
    policies: usize,
    /// Changes measured.
    #[arg(long, default_value_t = 20)]
    changes: usize,
    /// The controller's manifest refresh interval, in milliseconds.
    #[arg(long, default_value_t = 20)]
    refresh_interval_ms: u64,
}

const NAMESPACES: usize = 100;

fn main() -> Result<()> {
    let args = Args::parse();
    let dir = std::env::temp_dir().join(format!("weft-controller-bench-{}", std::process::id()));
    let result = run(&args, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn run(args: &Args, dir: &Path) -> Result<()> {
    let manifests = dir.join("manifests");
    std::fs::create_dir_all(&manifests)?;
    std::fs::create_dir_all(dir.join("ca"))?;
    let credentials: BTreeMap<String, String> = (0..args.nodes)
        .map(|n| {
            (
                format!("node{n}"),
                format!("credential-{n}-{}", std::process::id()),
            )
        })
        .collect();
    std::fs::write(dir.join("nodes.yaml"), serde_yaml::to_string(&credentials)?)?;
    for node in 0..args.nodes {
        write_node_file(&manifests, args, node, None)?;
    }
    write_services(&manifests, args)?;

    let addr: SocketAddr = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0")?;
        probe.local_addr()?
    };
    let exe = std::env::current_exe()?;
    let bin = exe.parent().context("exe dir")?.join("weft-controller");
    let started = Instant::now();
    let mut controller = Controller(
        Command::new(&bin)
            .arg("--manifests")
            .arg(&manifests)
            .arg("--ca-dir")
            .arg(dir.join("ca"))
            .arg("--node-credentials")
            .arg(dir.join("nodes.yaml"))
            .args(["--listen", &addr.to_string(), "--admin-addr", "127.0.0.1:0"])
            .args([
                "--readiness-addr",
                "127.0.0.1:0",
                "--metrics-addr",
                "127.0.0.1:0",
            ])
            .args([
                "--refresh-interval-ms",
                &args.refresh_interval_ms.to_string(),
            ])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| {
                format!(
                    "starting {} (cargo build --release --workspace --bins)",
                    bin.display()
                )
            })?,
    );
    let root = dir.join("ca/root-cert.pem");
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(addr).is_err() || !root.exists() {
        ensure!(Instant::now() < deadline, "controller did not come up");
        std::thread::sleep(Duration::from_millis(20));
    }
    let ready_after = started.elapsed();
    let bundle = weft_core::identity::TrustBundle::load(&root)?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        // The first config is computed after the listener opens: wait for it with one proxy,
        // so the next one measures a full push alone.
        let mut warm = Proxy::connect(addr, &bundle, "node1", &credentials["node1"]).await?;
        warm.next().await?;
        let first_config = started.elapsed();
        drop(warm);

        // Full push to one new proxy.
        let t0 = Instant::now();
        let mut first = Proxy::connect(addr, &bundle, "node0", &credentials["node0"]).await?;
        let full = first.next().await?;
        let received = t0.elapsed();
        let (mesh, _) = api::to_mesh(&full.resources).context("validating the full push")?;
        let validated = t0.elapsed();
        ensure!(mesh.workloads.len() == args.pods, "full push had {} workloads", mesh.workloads.len());
        drop(first);

        // 50 connected proxies, all in sync.
        let mut proxies = Vec::new();
        for node in 0..args.nodes {
            let name = format!("node{node}");
            let mut proxy = Proxy::connect(addr, &bundle, &name, &credentials[&name]).await?;
            proxy.next().await?;
            proxies.push(proxy);
        }
        let (tx, mut rx) = mpsc::unbounded_channel::<(usize, Instant)>();
        for (i, mut proxy) in proxies.into_iter().enumerate() {
            let tx = tx.clone();
            tokio::spawn(async move {
                while let Ok(update) = proxy.next().await {
                    if !update.resources.is_empty() && tx.send((i, Instant::now())).is_err() {
                        return;
                    }
                }
            });
        }
        let mut latencies = Vec::new();
        for change in 0..args.changes {
            let node = change % args.nodes;
            let t = Instant::now();
            write_node_file(&manifests, args, node, Some(change))?;
            let mut seen = vec![false; args.nodes];
            while seen.iter().any(|s| !s) {
                let (i, at) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
                    .await
                    .context("a proxy did not get the change within 10 s")?
                    .context("proxy streams ended")?;
                if !seen[i] {
                    seen[i] = true;
                    latencies.push(at.duration_since(t));
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        latencies.sort();
        let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
        let rss = rss_kib(controller.0.id());
        let resources = args.pods + args.services + 1;
        println!("synthetic cluster: {} pods on {} nodes, {} services, {} policies, {} namespaces ({resources} resources)", args.pods, args.nodes, args.services, args.policies, NAMESPACES);
        println!("controller listening: {ready_after:.2?}; first config published (manifests read and translated): {first_config:.2?}");
        println!("full push to a new proxy: received {received:.2?}, validated {validated:.2?}");
        println!(
            "one change to {} proxies ({} changes, refresh every {} ms): p50 {:.2?}, p99 {:.2?}, max {:.2?}",
            args.nodes,
            args.changes,
            args.refresh_interval_ms,
            pct(0.50),
            pct(0.99),
            latencies[latencies.len() - 1]
        );
        println!("controller RSS with {} streams: {:.1} MiB", args.nodes, rss as f64 / 1024.0);
        println!(
            "{}",
            serde_json::json!({
                "pods": args.pods, "services": args.services, "nodes": args.nodes,
                "policies": args.policies,
                "full_push_received_ms": received.as_secs_f64() * 1e3,
                "full_push_validated_ms": validated.as_secs_f64() * 1e3,
                "change_p50_ms": pct(0.50).as_secs_f64() * 1e3,
                "change_p99_ms": pct(0.99).as_secs_f64() * 1e3,
                "controller_rss_kib": rss,
            })
        );
        Ok::<_, anyhow::Error>(())
    })?;
    controller.stop();
    Ok(())
}

struct Controller(Child);

impl Controller {
    fn stop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One proxy's stream: it applies and ACKs every update.
struct Proxy {
    updates: tonic::Streaming<v1::ConfigUpdate>,
    acks: mpsc::Sender<v1::ConfigRequest>,
    held: api::Resources,
}

struct Applied {
    resources: api::Resources,
}

impl Proxy {
    async fn connect(
        addr: SocketAddr,
        bundle: &weft_core::identity::TrustBundle,
        node: &str,
        credential: &str,
    ) -> Result<Self> {
        let channel = weft_core::control::channel(
            addr,
            weft_core::control::controller_identity("cluster.local"),
            bundle,
        )?;
        let (acks, rx) = mpsc::channel(4);
        acks.send(v1::ConfigRequest {
            node: node.to_owned(),
            ..Default::default()
        })
        .await?;
        let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {credential}").parse()?);
        let updates = v1::config_discovery_client::ConfigDiscoveryClient::new(channel)
            .max_decoding_message_size(256 * 1024 * 1024)
            .stream(request)
            .await?
            .into_inner();
        Ok(Self {
            updates,
            acks,
            held: api::Resources::new(),
        })
    }

    async fn next(&mut self) -> Result<Applied> {
        let Some(update) = self.updates.message().await? else {
            bail!("stream closed");
        };
        let mut changed = api::Resources::new();
        for name in &update.removed {
            self.held.remove(name);
        }
        for r in update.resources {
            changed.insert(r.name.clone(), r.clone());
            self.held.insert(r.name.clone(), r);
        }
        self.acks
            .send(v1::ConfigRequest {
                response_nonce: update.nonce,
                ..Default::default()
            })
            .await?;
        Ok(Applied {
            resources: if changed.len() == self.held.len() {
                self.held.clone()
            } else {
                changed
            },
        })
    }
}

fn write_node_file(dir: &Path, args: &Args, node: usize, change: Option<usize>) -> Result<()> {
    let mut out = String::new();
    for pod in (0..args.pods).filter(|p| p % args.nodes == node) {
        let ns = pod % NAMESPACES;
        let svc = pod % args.services;
        // A change opts the node's first pod out of the mesh: its workload resource changes.
        let extra = match change {
            Some(_) if pod == node => "\n    weft.io/dataplane-mode: none".to_owned(),
            _ => String::new(),
        };
        let _ = write!(
            out,
            "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: pod-{pod}\n  namespace: ns-{ns}\n  labels:\n    app: svc-{svc}{extra}\nspec:\n  nodeName: node{node}\n  serviceAccountName: sa-{svc}\nstatus:\n  podIP: 10.{}.{}.{}\n",
            100 + pod / 65536,
            (pod / 256) % 256,
            pod % 256
        );
    }
    let file: PathBuf = dir.join(format!("node{node}.yaml"));
    let tmp = file.with_extension("tmp");
    std::fs::write(&tmp, out)?;
    std::fs::rename(&tmp, &file)?;
    Ok(())
}

fn write_services(dir: &Path, args: &Args) -> Result<()> {
    let mut out = String::new();
    for ns in 0..NAMESPACES {
        let _ = write!(
            out,
            "---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: ns-{ns}\n  labels:\n    weft.io/dataplane-mode: ambient\n"
        );
    }
    for svc in 0..args.services {
        let ns = svc % NAMESPACES;
        let _ = write!(
            out,
            "---\napiVersion: v1\nkind: Service\nmetadata:\n  name: svc-{svc}\n  namespace: ns-{ns}\nspec:\n  clusterIP: 10.96.{}.{}\n  selector:\n    app: svc-{svc}\n  ports:\n  - port: 80\n    targetPort: 8080\n",
            svc / 256,
            svc % 256
        );
    }
    std::fs::write(dir.join("services.yaml"), out)?;
    let mut out = String::new();
    for p in 0..args.policies {
        let svc = p % args.services.max(1);
        let ns = svc % NAMESPACES;
        let _ = match p % 4 {
            0 => write!(
                out,
                "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: vs-{p}, namespace: ns-{ns}}}\nspec:\n  hosts: [svc-{svc}]\n  http:\n  - match: [{{headers: {{end-user: {{exact: jason}}}}}}]\n    route: [{{destination: {{host: svc-{svc}, subset: v2}}}}]\n  - route: [{{destination: {{host: svc-{svc}, subset: v1}}, weight: 90}}, {{destination: {{host: svc-{svc}, subset: v2}}, weight: 10}}]\n    retries: {{attempts: 3, perTryTimeout: 2s, retryOn: 5xx}}\n"
            ),
            1 => write!(
                out,
                "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: dr-{p}, namespace: ns-{ns}}}\nspec:\n  host: svc-{svc}\n  subsets: [{{name: v1, labels: {{version: v1}}}}, {{name: v2, labels: {{version: v2}}}}]\n  trafficPolicy:\n    connectionPool: {{tcp: {{maxConnections: 100}}, http: {{http1MaxPendingRequests: 50}}}}\n    outlierDetection: {{consecutive5xxErrors: 5, interval: 30s, baseEjectionTime: 30s}}\n"
            ),
            2 => write!(
                out,
                "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: authz-{p}, namespace: ns-{ns}}}\nspec:\n  selector: {{matchLabels: {{app: svc-{svc}}}}}\n  action: ALLOW\n  rules: [{{from: [{{source: {{principals: [cluster.local/ns/ns-{ns}/sa/default]}}}}], to: [{{operation: {{methods: [GET]}}}}]}}]\n"
            ),
            _ => write!(
                out,
                "---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: pa-{p}, namespace: ns-{ns}}}\nspec:\n  selector: {{matchLabels: {{app: svc-{svc}}}}}\n  mtls: {{mode: STRICT}}\n"
            ),
        };
    }
    std::fs::write(dir.join("policies.yaml"), out)?;
    Ok(())
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}
