//! `weft-cluster-bench`: Weft's controller and two node proxies on a real kube-apiserver (the
//! test bed in Kubernetes mode) with N pods in M namespaces created through the API. Reports:
//! the time from one `kubectl label` of every namespace to every node proxy holding all of
//! their pods as mesh workloads; the watches the controller holds (from the API server's own
//! metrics, with and without the controller); the controller's RSS; the API server's requests
//! per minute at rest. Needs root and the Kubernetes binaries (`WEFT_KUBE_ASSETS`). A
//! benchmark, run on purpose: `weft-cluster-bench [--namespaces 100] [--pods-per-namespace 20]`.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use weft_testbed::{TestBed, http_get_in};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 100)]
    namespaces: usize,
    #[arg(long, default_value_t = 20)]
    pods_per_namespace: usize,
}

fn apiserver_metric(bed: &TestBed, name: &str, filter: &str) -> Result<f64> {
    let text = bed.kubectl(&["get", "--raw", "/metrics"])?;
    Ok(text
        .lines()
        .filter(|l| l.starts_with(name) && l.contains(filter))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum())
}

/// How many bench pods node `i`'s proxy holds as mesh (HBONE) workloads.
fn meshed(bed: &TestBed, i: usize) -> Result<usize> {
    let (_, body) = http_get_in(
        &Path::new("/run/netns").join(&bed.nodes()[i].netns),
        SocketAddr::from((Ipv4Addr::LOCALHOST, 15000)),
        "/config_dump",
    )?;
    let dump: serde_json::Value = serde_json::from_str(&body)?;
    Ok(dump["mesh"]["workloads"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|w| {
            w["namespace"]
                .as_str()
                .is_some_and(|n| n.starts_with("bench-"))
                && w["protocol"] != "TCP"
        })
        .count())
}

fn main() -> Result<()> {
    let args = Args::parse();
    let Some(assets) = weft_testbed::cluster::assets() else {
        bail!(
            "no kube-apiserver: set WEFT_KUBE_ASSETS to a directory holding kube-apiserver and kube-controller-manager"
        );
    };
    let total = args.namespaces * args.pods_per_namespace;
    let mut bed = TestBed::new("scale", 2)?;
    bed.with_kubernetes(&assets);
    bed.start()?;
    let controller = bed.controller_pid().context("no controller")?;
    let rss_start = weft_testbed::process::rss_kib(controller) as f64 / 1024.0;

    // The cluster: namespaces (not yet in the mesh), a ServiceAccount each, pods spread over
    // the two nodes, then their status as a kubelet reports it.
    let (mut objects, mut status) = (String::new(), String::new());
    for n in 0..args.namespaces {
        let ns = format!("bench-{n:03}");
        let _ = write!(
            objects,
            "---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}, labels: {{bench: \"yes\"}}}}\n---\napiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: app, namespace: {ns}}}\n"
        );
        for p in 0..args.pods_per_namespace {
            let k = n * args.pods_per_namespace + p;
            let node = k % 2;
            let ip = Ipv4Addr::new(10, 100 + node as u8, (k / 250) as u8, (k % 250 + 2) as u8);
            let _ = write!(
                objects,
                "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: app-{p}, namespace: {ns}, labels: {{app: app}}}}\nspec: {{nodeName: node{}, serviceAccountName: app, automountServiceAccountToken: false, containers: [{{name: app, image: example/app}}]}}\n",
                node + 1
            );
            let _ = write!(
                status,
                "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: app-{p}, namespace: {ns}}}\nstatus: {{phase: Running, podIP: {ip}, podIPs: [{{ip: {ip}}}], conditions: [{{type: Ready, status: \"True\"}}]}}\n"
            );
        }
    }
    let dir = bed.dir().to_owned();
    std::fs::write(dir.join("bench.yaml"), objects)?;
    std::fs::write(dir.join("bench-status.yaml"), status)?;
    let created = Instant::now();
    bed.kubectl(&[
        "apply",
        "--server-side",
        "--field-manager=bench",
        "-f",
        &dir.join("bench.yaml").display().to_string(),
    ])?;
    bed.kubectl(&[
        "apply",
        "--server-side",
        "--field-manager=bench-kubelet",
        "--subresource=status",
        "-f",
        &dir.join("bench-status.yaml").display().to_string(),
    ])?;
    println!(
        "created {total} pods in {} namespaces through the API in {:.1} s",
        args.namespaces,
        created.elapsed().as_secs_f64()
    );

    // One kubectl label for every namespace; then until both node proxies hold every pod.
    let labelled = Instant::now();
    bed.kubectl(&[
        "label",
        "namespace",
        "-l",
        "bench=yes",
        "weft.io/dataplane-mode=ambient",
    ])?;
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let (a, b) = (meshed(&bed, 0)?, meshed(&bed, 1)?);
        if a == total && b == total {
            break;
        }
        if Instant::now() > deadline {
            bail!("after 300 s the node proxies hold {a} and {b} of {total}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let took = labelled.elapsed();
    println!(
        "kubectl label of {} namespaces → both node proxies hold all {total} pods as mesh workloads: {:.2} s",
        args.namespaces,
        took.as_secs_f64()
    );

    // At rest: requests per minute, watches with and without the controller, its memory.
    std::thread::sleep(Duration::from_secs(5));
    let rss = weft_testbed::process::rss_kib(controller) as f64 / 1024.0;
    let before = apiserver_metric(&bed, "apiserver_request_total", "")?;
    std::thread::sleep(Duration::from_secs(60));
    let after = apiserver_metric(&bed, "apiserver_request_total", "")?;
    let watches_with = apiserver_metric(&bed, "apiserver_longrunning_requests", "verb=\"WATCH\"")?;
    bed.kill_controller()?;
    std::thread::sleep(Duration::from_secs(3));
    let watches_without =
        apiserver_metric(&bed, "apiserver_longrunning_requests", "verb=\"WATCH\"")?;
    println!(
        "API server requests per minute at rest (all clients, 2 of them this tool's): {:.0}",
        after - before
    );
    println!(
        "watches open: {watches_with:.0} with the controller, {watches_without:.0} without: the controller holds {:.0} (one per kind it reads; none per node)",
        watches_with - watches_without
    );
    println!(
        "controller RSS: {rss_start:.1} MiB at start, {rss:.1} MiB with {total} pods in the mesh"
    );
    Ok(())
}
