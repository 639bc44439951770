//! `weft-controller`: reads the cluster's objects (the Kubernetes API, or a manifest directory),
//! computes what every proxy must know, streams it to them over gRPC (TLS), and signs their
//! workload certificates. The runtime only: flags, wiring, the refresh loop and the admin
//! endpoint.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use tokio::sync::watch;
use tracing::{error, info, warn};
use weft_controller::admin;
use weft_controller::ca::{Ca, DEFAULT_WORKLOAD_TTL};
use weft_controller::grpc::certs::CertService;
use weft_controller::grpc::config::ConfigService;
use weft_controller::grpc::publish::publication;
use weft_controller::grpc::{NodeAuth, NodeCredentials, Proxies, Published, Shared};
use weft_controller::k8s::lease::while_leading;
use weft_controller::k8s::waypoints::{DeploySettings, WaypointGateway};
use weft_controller::k8s::{
    LeaderElection, StatusWriter, TokenReviewer, WaypointDeployer, ca_secret,
};
use weft_controller::model::status;
use weft_controller::model::{self, translate};
use weft_controller::source::{Source, kubernetes};
use weft_core::api::v1;
use weft_core::telemetry::{self, LogFormat};

/// The Weft controller.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Directory of Kubernetes manifests (Namespaces, Pods, Services, policies), re-read on
    /// change. Without it the controller watches the Kubernetes API (in-cluster config or
    /// kubeconfig).
    #[arg(long, env = "WEFT_MANIFESTS")]
    manifests: Option<PathBuf>,
    /// Directory of the CA's files (`root-cert.pem`, `ca-cert.pem`, `ca-key.pem`,
    /// `cert-chain.pem`; `root-key.pem` where Weft generated the root): generated there on first
    /// start, or supplied by the operator (plug-in CA). Required with `--manifests`; in
    /// Kubernetes mode the CA lives in `--ca-secret` unless this is given.
    #[arg(long, env = "WEFT_CA_DIR")]
    ca_dir: Option<PathBuf>,
    /// Secret (`namespace/name`) holding the CA in Kubernetes mode: created by the leader on
    /// first start, or by the operator beforehand (plug-in CA).
    #[arg(long, default_value = "weft-system/weft-ca")]
    ca_secret: String,
    /// Image of the waypoints the controller deploys for Gateways of class weft-waypoint
    /// (Kubernetes mode).
    #[arg(long, default_value = concat!("weft/waypoint:", env!("CARGO_PKG_VERSION")))]
    waypoint_image: String,
    /// The controller's own Service (`namespace/name`): waypoints reach it at its cluster IP.
    #[arg(long, default_value = "weft-system/weft-controller")]
    controller_service: String,
    /// Lease (`namespace/name`) the replicas elect their leader with (Kubernetes mode).
    #[arg(long, default_value = "weft-system/weft-controller")]
    lease: String,
    /// This replica's name in the lease (defaults to `$POD_NAME`, else the host name).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Trust domain of the mesh's SPIFFE IDs.
    #[arg(long, default_value = "cluster.local")]
    trust_domain: String,
    /// YAML map `node: token` of the node proxies' credentials. Required with `--manifests`;
    /// in Kubernetes mode node proxies present projected ServiceAccount tokens instead, checked
    /// with TokenReview.
    #[arg(long, env = "WEFT_NODE_CREDENTIALS")]
    node_credentials: Option<PathBuf>,
    /// The node proxy's service account (`namespace/name`), whose tokens identify nodes.
    #[arg(long, default_value = "weft-system/weft-node-proxy")]
    node_proxy_service_account: String,
    /// Audience node proxies' projected tokens are issued for.
    #[arg(long, default_value = "weft")]
    token_audience: String,
    /// gRPC address (config stream and certificates, TLS).
    #[arg(long, default_value = "0.0.0.0:15012")]
    listen: SocketAddr,
    /// Admin address: /debug/proxies, /debug/manifests, /config_dump, /healthz/ready.
    #[arg(long, default_value = "127.0.0.1:15014")]
    admin_addr: SocketAddr,
    /// Readiness address (`/healthz/ready` only, for the kubelet's probe).
    #[arg(long, default_value = "0.0.0.0:15021")]
    readiness_addr: SocketAddr,
    /// Metrics address (`/metrics` only, for Prometheus).
    #[arg(long, default_value = "0.0.0.0:15020")]
    metrics_addr: SocketAddr,
    /// How often the manifest directory is checked for changes, in milliseconds.
    #[arg(long, default_value_t = 100)]
    refresh_interval_ms: u64,
    /// Lifetime of workload certificates, in seconds (proxies renew at half-life).
    #[arg(long, default_value_t = DEFAULT_WORKLOAD_TTL.as_secs())]
    cert_ttl_secs: u64,
    /// Log format: plain or json.
    #[arg(long, default_value = "plain")]
    log_format: LogFormat,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _log = telemetry::init(args.log_format, "info");
    match weft_core::accept::raise_fd_limit() {
        Ok(limit) => tracing::debug!(limit, "file descriptor limit"),
        Err(e) => tracing::warn!(error = %e, "could not raise the file descriptor limit"),
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let client = match &args.manifests {
        Some(_) => None,
        None => Some(
            kube::Client::try_default()
                .await
                .context("connecting to the Kubernetes API (in-cluster config or kubeconfig)")?,
        ),
    };
    let (leading, lease) = match &client {
        Some(client) => {
            let (namespace, name) = split_ref(&args.lease, "--lease")?;
            let identity = match &args.identity {
                Some(identity) => identity.clone(),
                None => std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .map(|h| h.trim().to_owned())
                    .unwrap_or_else(|_| format!("weft-controller-{}", std::process::id())),
            };
            let (leading, release) =
                LeaderElection::new(client.clone(), namespace, name, &identity, LEASE_DURATION)
                    .spawn();
            (leading, Some(release))
        }
        // One controller per manifest directory: it leads.
        None => (watch::channel(true).1, None),
    };
    let ca = Arc::new(match (&args.ca_dir, &client) {
        (Some(dir), _) => Ca::load_or_generate(dir, &args.trust_domain)
            .with_context(|| format!("mesh CA in {}", dir.display()))?,
        (None, Some(client)) => {
            let (namespace, name) = split_ref(&args.ca_secret, "--ca-secret")?;
            ca_secret::load_or_create(
                client.clone(),
                namespace,
                name,
                &args.trust_domain,
                leading.clone(),
            )
            .await
            .context("mesh CA")?
        }
        (None, None) => anyhow::bail!("--manifests needs --ca-dir"),
    });
    let credentials = match (&args.node_credentials, &client) {
        (Some(path), _) => {
            NodeAuth::Credentials(NodeCredentials::load(path).map_err(anyhow::Error::msg)?)
        }
        (None, Some(client)) => {
            let (namespace, name) = split_ref(
                &args.node_proxy_service_account,
                "--node-proxy-service-account",
            )?;
            NodeAuth::TokenReview(TokenReviewer::new(
                client.clone(),
                &args.token_audience,
                namespace,
                name,
            ))
        }
        (None, None) => anyhow::bail!("--manifests needs --node-credentials"),
    };
    if let Some(client) = &client {
        // Node proxies mount it to trust the controller before their first config.
        let namespace = split_ref(&args.ca_secret, "--ca-secret")?.0.to_owned();
        tokio::spawn(ca_secret::publish_root(
            client.clone(),
            namespace,
            ca.root_pem().to_owned(),
        ));
    }
    let serving = ca.serving_cert()?;
    let tls = Arc::new(weft_core::tls::control_server_config(&serving)?);

    let status_writer = client.clone().map(StatusWriter::new);
    let deployer = client.clone().map(WaypointDeployer::new);
    let mut source = match (&args.manifests, client) {
        (Some(dir), _) => Source::manifests(dir),
        (None, Some(client)) => Source::Kubernetes(kubernetes::spawn(&client)),
        (None, None) => anyhow::bail!("no source of objects"),
    };
    let (publish, published) = watch::channel(Arc::new(Published::default()));
    let proxies = Proxies::default();
    let shared = Shared {
        published: published.clone(),
        credentials: Arc::new(credentials),
        proxies: proxies.clone(),
    };

    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding the gRPC address {}", args.listen))?;
    let ttl = Duration::from_secs(args.cert_ttl_secs);
    let grpc = tonic::transport::Server::builder()
        .add_service(v1::config_discovery_server::ConfigDiscoveryServer::new(
            ConfigService::new(shared.clone()),
        ))
        .add_service(v1::certificates_server::CertificatesServer::new(
            CertService::new(shared, ca.clone(), ttl),
        ))
        .serve_with_incoming(weft_core::control::incoming(listener, tls));
    tokio::spawn(async move {
        if let Err(e) = grpc.await {
            error!(error = %e, "gRPC server stopped");
        }
    });

    let admin = tokio::net::TcpListener::bind(args.admin_addr)
        .await
        .with_context(|| format!("binding the admin address {}", args.admin_addr))?;
    let errors = Arc::new(std::sync::Mutex::new(Vec::new()));
    let ready = Arc::new(AtomicBool::new(false));
    let (verdicts_tx, verdicts) = watch::channel(Vec::new());
    if let Some(writer) = status_writer {
        tokio::spawn(while_leading(writer, verdicts.clone(), leading.clone()));
    }
    let (waypoints_tx, waypoints_rx) = watch::channel(None);
    if let Some(deployer) = deployer {
        tokio::spawn(while_leading(deployer, waypoints_rx, leading.clone()));
    }
    let controller_service = split_ref(&args.controller_service, "--controller-service")?;
    let controller_service = model::ObjectKey::new(controller_service.0, controller_service.1);
    let readiness = tokio::net::TcpListener::bind(args.readiness_addr)
        .await
        .with_context(|| format!("binding the readiness address {}", args.readiness_addr))?;
    let metrics_listener = tokio::net::TcpListener::bind(args.metrics_addr)
        .await
        .with_context(|| format!("binding the metrics address {}", args.metrics_addr))?;
    let (_stop, watch_drain) = weft_core::drain::channel();
    tokio::spawn(weft_core::admin::serve(
        metrics_listener,
        admin::metrics(proxies.clone(), verdicts.clone()),
        watch_drain.clone(),
    ));
    tokio::spawn(weft_core::admin::serve(
        admin,
        admin::handler(proxies, published, errors.clone(), ready.clone(), verdicts),
        watch_drain.clone(),
    ));
    tokio::spawn(weft_core::admin::serve(
        readiness,
        admin::readiness(ready.clone()),
        watch_drain,
    ));
    info!(listen = %args.listen, %source, trust_domain = %args.trust_domain, "controller started");

    let mut tick = tokio::time::interval(Duration::from_millis(args.refresh_interval_ms));
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        let objects = tokio::select! {
            objects = source.next(&mut tick) => objects,
            _ = sigterm.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        };
        let Some(observed) = objects else {
            continue;
        };
        let objects = observed.objects;
        *errors.lock().unwrap_or_else(|e| e.into_inner()) = observed.errors;
        let judged = status::verdicts(&objects, &observed.rejected);
        status::log_changes(&verdicts_tx.borrow(), &judged);
        verdicts_tx.send_replace(judged);
        let gateways: Vec<WaypointGateway> = translate::waypoint_gateways(&objects)
            .map(|p| WaypointGateway {
                key: p.key.clone(),
                uid: p.uid.clone(),
                ingress: None,
            })
            .chain(weft_controller::k8s::ingress_gateways::planned(&objects))
            .chain(weft_controller::k8s::ingress_gateways::planned_api(
                &objects,
            ))
            .collect();
        let controller_ip = objects
            .services
            .get(&controller_service)
            .and_then(|s| s.cluster_ip);
        let plan = controller_ip.map(|ip| {
            (
                gateways.clone(),
                DeploySettings {
                    image: args.waypoint_image.clone(),
                    controller: SocketAddr::new(ip, args.listen.port()),
                    trust_domain: args.trust_domain.clone(),
                    root_pem: ca.root_pem().to_owned(),
                },
            )
        });
        if plan.is_none() && !gateways.is_empty() && args.manifests.is_none() {
            warn!(service = %controller_service, "waypoints not deployed: the controller's Service has no cluster IP (--controller-service)");
        }
        waypoints_tx.send_if_modified(|current| {
            let changed = *current != plan;
            *current = plan;
            changed
        });
        let next = publication(&objects, &args.trust_domain, ca.root_pem());
        if next.resources != publish.borrow().resources || !ready.load(Ordering::Relaxed) {
            info!(
                workloads = next.mesh.workloads.len(),
                services = next.mesh.services.len(),
                "publishing a new config"
            );
            publish.send_replace(Arc::new(next));
            if !ready.swap(true, Ordering::Relaxed) {
                info!("controller ready: the first config is published");
            }
        }
    }
    if let Some(lease) = lease {
        // The next replica leads at its next round, not after the lease runs out.
        lease.release(Duration::from_secs(3)).await;
    }
    info!("controller stopped");
    Ok(())
}

/// How long a leader holds the lease without renewing it.
const LEASE_DURATION: Duration = Duration::from_secs(15);

/// `namespace/name` from a flag's value.
fn split_ref<'a>(value: &'a str, flag: &str) -> anyhow::Result<(&'a str, &'a str)> {
    value
        .split_once('/')
        .filter(|(ns, name)| !ns.is_empty() && !name.is_empty())
        .with_context(|| format!("{flag} must be namespace/name, not {value:?}"))
}
