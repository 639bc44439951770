//! Meshes the lab and the tests share.

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};

use crate::bed::TestBed;
use crate::pod::Pod;

/// The address of the guide's `reviews` service in [`reviews_behind_waypoint`].
pub const REVIEWS_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 30);

/// The guide's bookinfo `reviews` in namespace `default` (where its YAML lands when applied
/// without a namespace): v1 on node 2, v2 on node 1, service account `reviews`, labelled
/// `app: reviews` and `version: v1|v2`, behind the `reviews-waypoint` (on node 2).
pub struct ReviewsBehindWaypoint {
    /// `reviews-v1`.
    pub v1: Pod,
    /// `reviews-v2`.
    pub v2: Pod,
    /// The waypoint's pod.
    pub waypoint: Pod,
}

/// Adds [`ReviewsBehindWaypoint`] to a bed that is not started yet (nodes 0 and 1).
pub fn reviews_behind_waypoint(bed: &mut TestBed) -> Result<ReviewsBehindWaypoint> {
    let version = |bed: &mut TestBed, v: &str, node| {
        bed.pod(&format!("reviews-{v}"))
            .namespace("default")
            .service_account("reviews")
            .label("app", "reviews")
            .label("version", v)
            .on_node(node)
            .add()
    };
    let v1 = version(bed, "v1", 1)?;
    let v2 = version(bed, "v2", 0)?;
    let waypoint = bed.waypoint("reviews-waypoint", "default", 1)?;
    bed.service("reviews", "default", REVIEWS_VIP, 9080, 8080, &[&v1, &v2]);
    bed.use_waypoint("default", "reviews", Some("reviews-waypoint"))?;
    Ok(ReviewsBehindWaypoint { v1, v2, waypoint })
}

/// A guide example (`examples/guide/<file>`), as users apply it.
pub fn guide(file: &str) -> Result<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/guide")
        .join(file);
    std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
}

/// A started mesh with [`ReviewsBehindWaypoint`] serving `weft-testsrv`, and a client pod
/// `productpage` (service account `bookinfo-productpage`) on node 1.
pub struct Bookinfo {
    pub bed: TestBed,
    /// The client pod.
    pub client: Pod,
    /// `reviews-v1`.
    pub v1: Pod,
    /// `reviews-v2`.
    pub v2: Pod,
    /// The waypoint's pod.
    pub waypoint: Pod,
}

/// [`Bookinfo`], its namespaces named after `label`.
pub fn bookinfo(label: &str) -> Result<Bookinfo> {
    bookinfo_on(label, None)
}

/// [`Bookinfo`] on a real API server from `assets` (Kubernetes mode), or from a manifest
/// directory with `None`.
pub fn bookinfo_on(label: &str, assets: Option<&Path>) -> Result<Bookinfo> {
    bookinfo_with(label, assets, &[])
}

/// [`bookinfo_on`], its waypoint run with `waypoint_args` too (manifest-directory mode).
pub fn bookinfo_with(
    label: &str,
    assets: Option<&Path>,
    waypoint_args: &[&str],
) -> Result<Bookinfo> {
    let mut bed = TestBed::new(label, 2)?;
    match assets {
        Some(assets) => bed.with_kubernetes(assets),
        None => bed.with_controller(),
    };
    bed.waypoint_args(waypoint_args);
    let client = bed
        .pod("productpage")
        .namespace("default")
        .service_account("bookinfo-productpage")
        .on_node(0)
        .add()?;
    let ReviewsBehindWaypoint { v1, v2, waypoint } = reviews_behind_waypoint(&mut bed)?;
    Bookinfo::start(bed, client, v1, v2, waypoint)
}

impl Bookinfo {
    /// Starts `bed` and serves `weft-testsrv` as `v1` and `v2` on their pods.
    fn start(mut bed: TestBed, client: Pod, v1: Pod, v2: Pod, waypoint: Pod) -> Result<Self> {
        bed.start()?;
        bed.serve_testsrv(&v1, "v1")?;
        bed.serve_testsrv(&v2, "v2")?;
        Ok(Self {
            bed,
            client,
            v1,
            v2,
            waypoint,
        })
    }

    /// Applies a manifest and waits until the waypoint has the resulting config.
    pub fn apply(&self, file: &str, text: &str) -> Result<()> {
        let applied = || self.bed.waypoint_updates(&self.waypoint);
        let before = applied();
        self.bed.write_manifest(file, text)?;
        let deadline = Instant::now() + Duration::from_secs(5);
        while applied() <= before {
            ensure!(
                Instant::now() < deadline,
                "the waypoint did not get {file}; its log:\n{}\ncontroller log:\n{}",
                std::fs::read_to_string(self.bed.waypoint_log_path(&self.waypoint))
                    .unwrap_or_default(),
                self.bed.controller_log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }
}

impl Bookinfo {
    /// The last lines of the node proxies' and the waypoint's logs, for a failure's message.
    pub fn logs(&self) -> String {
        let tail = |name: String, text: String| {
            let lines: Vec<&str> = text.lines().collect();
            let from = lines.len().saturating_sub(40);
            format!(
                "--- {name} (last {} lines)\n{}\n",
                lines.len() - from,
                lines[from..].join("\n")
            )
        };
        let mut out = String::new();
        for i in 0..self.bed.nodes().len() {
            out += &tail(format!("node proxy {i}"), self.bed.proxy_log(i));
        }
        out += &tail(
            "waypoint".into(),
            std::fs::read_to_string(self.bed.waypoint_log_path(&self.waypoint)).unwrap_or_default(),
        );
        out
    }
}

/// `http://<reviews VIP>:9080<path>`.
pub fn reviews_url(path: &str) -> String {
    format!("http://{REVIEWS_VIP}:9080{path}")
}

/// How many requests of a `weft-testsrv load` tally had `key` in `field` (`status`, `body`,
/// `flags`...).
pub fn tally_count(tally: &serde_json::Value, field: &str, key: &str) -> u64 {
    tally[field][key].as_u64().unwrap_or(0)
}

/// The guide's DestinationRule subsets for `reviews`, which its retry example refers to.
pub const REVIEWS_SUBSETS: &str = "apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata:
  name: reviews
spec:
  host: reviews
  subsets:
  - name: v1
    labels:
      version: v1
  - name: v2
    labels:
      version: v2
";

/// `reviews` bound to a waypoint with no pods of its own, and two leaf services `reviews-v1`
/// (10.96.0.31, pod on node 1) and `reviews-v2` (10.96.0.32, pod on node 0) whose pods are not
/// behind the waypoint, so their node proxies see the waypoint forwarding for the client.
pub fn leaf_services(label: &str) -> Result<Bookinfo> {
    let mut bed = TestBed::new(label, 2)?;
    bed.with_controller();
    let client = bed.pod("client").namespace("default").on_node(0).add()?;
    let v1 = bed
        .pod("reviews-v1")
        .namespace("default")
        .on_node(1)
        .add()?;
    let v2 = bed
        .pod("reviews-v2")
        .namespace("default")
        .on_node(0)
        .add()?;
    let waypoint = bed.waypoint("waypoint", "default", 1)?;
    bed.service("reviews", "default", REVIEWS_VIP, 9080, 8080, &[]);
    for (name, vip, pod) in [
        ("reviews-v1", [10, 96, 0, 31], &v1),
        ("reviews-v2", [10, 96, 0, 32], &v2),
    ] {
        bed.service(name, "default", Ipv4Addr::from(vip), 9080, 8080, &[pod]);
    }
    bed.use_waypoint("default", "reviews", Some("waypoint"))?;
    Bookinfo::start(bed, client, v1, v2, waypoint)
}

/// The guide's SMI canary: `reviews` (both versions) behind waypoint `waypoint`, and leaf
/// services `reviews-v1` (10.96.0.31) and `reviews-v2` (10.96.0.32) for a TrafficSplit to
/// name; a client on node 0. Added to a bed that is not started yet; returns (client, v1, v2,
/// waypoint).
pub fn smi_reviews(bed: &mut TestBed) -> Result<(Pod, Pod, Pod, Pod)> {
    let client = bed.pod("client").namespace("default").on_node(0).add()?;
    let version = |bed: &mut TestBed, name: &str, node| {
        bed.pod(name)
            .namespace("default")
            .label("app", "reviews")
            .on_node(node)
            .add()
    };
    let v1 = version(bed, "reviews-v1", 1)?;
    let v2 = version(bed, "reviews-v2", 0)?;
    let waypoint = bed.waypoint("waypoint", "default", 1)?;
    bed.service("reviews", "default", REVIEWS_VIP, 9080, 8080, &[&v1, &v2]);
    for (name, vip, pod) in [
        ("reviews-v1", [10, 96, 0, 31], &v1),
        ("reviews-v2", [10, 96, 0, 32], &v2),
    ] {
        bed.service(name, "default", Ipv4Addr::from(vip), 9080, 8080, &[pod]);
    }
    bed.use_waypoint("default", "reviews", Some("waypoint"))?;
    Ok((client, v1, v2, waypoint))
}

/// `httpbin` with two endpoints behind a waypoint.
pub fn httpbin(label: &str) -> Result<(Bookinfo, Pod)> {
    let mut bed = TestBed::new(label, 2)?;
    bed.with_controller();
    let client = bed.pod("client").namespace("default").on_node(0).add()?;
    let a = bed
        .pod("httpbin-a")
        .namespace("default")
        .service_account("httpbin")
        .label("app", "httpbin")
        .on_node(1)
        .add()?;
    let b2 = bed
        .pod("httpbin-b")
        .namespace("default")
        .service_account("httpbin")
        .label("app", "httpbin")
        .on_node(0)
        .add()?;
    let waypoint = bed.waypoint("waypoint", "default", 1)?;
    bed.service(
        "httpbin",
        "default",
        Ipv4Addr::new(10, 96, 0, 50),
        8000,
        8080,
        &[&a, &b2],
    );
    bed.use_waypoint("default", "httpbin", Some("waypoint"))?;
    bed.start()?;
    bed.serve_testsrv(&a, "a")?;
    bed.serve_testsrv(&b2, "b")?;
    Ok((
        Bookinfo {
            bed,
            client: client.clone(),
            v1: a,
            v2: b2,
            waypoint,
        },
        client,
    ))
}
