//! The control plane failing under traffic: requests between two mesh pods on different nodes
//! run (a new connection each, so each one crosses capture, HBONE and the peer's policy
//! checks) while the leading controller is killed, and while the API server is down. Without
//! the Kubernetes binaries each test says so and does nothing else. Needs root.

#[path = "support/cluster.rs"]
mod support;

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use weft_testbed::cluster::tier_assets;
use weft_testbed::{Pod, TestBed};

/// Requests per second of the background traffic.
const RATE: u64 = 20;

/// A bed on a real API server: `client` on node 1 and `web` (weft-testsrv) on node 2, both in
/// the mesh, with traffic checked once.
fn mesh_under_traffic(label: &str) -> Result<Option<(TestBed, Pod, Pod)>> {
    let Some(assets) = tier_assets() else {
        return Ok(None);
    };
    let mut bed = TestBed::new(label, 2)?;
    bed.with_kubernetes(&assets);
    let client = bed.pod("client").namespace("shop").on_node(0).add()?;
    let web = bed.pod("web").namespace("shop").on_node(1).add()?;
    bed.start()?;
    bed.serve_testsrv(&web, "web")?;
    let url = format!("http://{}:8080/", web.ip);
    let once = bed.load(&client, &["--url", &url, "--requests", "1"])?;
    ensure!(once["status"]["200"] == 1, "first request: {once}");
    ensure!(
        bed.mtls_connections_from(0)? >= 1.0,
        "the first request was not mTLS"
    );
    Ok(Some((bed, client, web)))
}

/// `weft-testsrv load` from `client` to `web` for `secs` at [`RATE`], in a thread.
fn traffic(
    client: &Pod,
    web: &Pod,
    secs: u64,
) -> std::thread::JoinHandle<Result<serde_json::Value>> {
    let argv: Vec<String> = [
        weft_testbed::bin_dir()
            .map(|d| d.join("weft-testsrv").display().to_string())
            .unwrap_or_default(),
        "load".into(),
        "--url".into(),
        format!("http://{}:8080/", web.ip),
        "--requests".into(),
        (secs * RATE).to_string(),
        "--rate".into(),
        RATE.to_string(),
        "--timeout-ms".into(),
        "5000".into(),
        "--fresh-connections".into(),
    ]
    .into();
    let netns = client.netns.clone();
    std::thread::spawn(move || -> Result<serde_json::Value> {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &netns])
            .args(&argv)
            .output()?;
        ensure!(
            out.status.success(),
            "load: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(serde_json::from_slice(&out.stdout)?)
    })
}

/// Every request of a `load` tally answered 200.
fn all_answered(tally: &serde_json::Value, sent: u64) -> Result<()> {
    ensure!(
        tally["status"]["200"] == sent,
        "not every request was answered: {}",
        tally["status"]
    );
    Ok(())
}

#[test]
fn a_killed_leader_hands_over_within_the_lease_while_traffic_never_stops() -> Result<()> {
    let Some((mut bed, client, web)) = mesh_under_traffic("failtraffic")? else {
        return Ok(());
    };
    bed.start_controller_replica("replica-b", 1)?;
    ensure!(
        bed.lease_holder()? == "bed-controller",
        "the bed's controller should lead"
    );
    let secs = 30;
    let load = traffic(&client, &web, secs);
    support::wait_until("traffic flowing", Duration::from_secs(10), || {
        Ok(bed.testsrv_count(&web)? >= 2 * RATE)
    })?;

    // SIGKILL: the leader cannot give the Lease up. The other replica takes it once it has
    // run out: within the lease (15 s) plus one retry period (5 s).
    let killed = Instant::now();
    bed.kill_controller()?;
    support::wait_until("replica-b leads", Duration::from_secs(20), || {
        Ok(bed.lease_holder()? == "replica-b")
    })
    .with_context(|| {
        std::fs::read_to_string(bed.dir().join("controller-replica-b.log")).unwrap_or_default()
    })?;
    eprintln!(
        "replica-b took the Lease {:?} after SIGKILL",
        killed.elapsed()
    );

    // Status writing moved with it: a VirtualService applied now gets its verdict.
    let plane = bed.control_plane().context("Kubernetes mode")?;
    support::bookinfo(plane)?;
    support::guide_gets_a_verdict(plane, Duration::from_secs(15))?;
    eprintln!("verdict written {:?} after SIGKILL", killed.elapsed());

    let tally = load.join().map_err(|_| anyhow::anyhow!("load thread"))??;
    all_answered(&tally, secs * RATE)?;
    eprintln!(
        "{} of {} requests answered across the handover",
        tally["status"]["200"],
        secs * RATE
    );
    Ok(())
}

#[test]
fn the_api_server_restarted_under_traffic_proxies_keep_serving_and_a_later_pod_joins() -> Result<()>
{
    let Some((mut bed, client, web)) = mesh_under_traffic("apitraffic")? else {
        return Ok(());
    };
    let secs = 25;
    let load = traffic(&client, &web, secs);
    support::wait_until("traffic flowing", Duration::from_secs(10), || {
        Ok(bed.testsrv_count(&web)? >= 2 * RATE)
    })?;

    // An outage of 8 s: the controller's watches break, the proxies keep their config (the
    // outage's length is the point; nothing is being waited for).
    let plane = bed.control_plane_mut().context("Kubernetes mode")?;
    plane.kill("apiserver")?;
    std::thread::sleep(Duration::from_secs(8));
    plane.start_again("apiserver")?;
    let back = Instant::now();

    // A pod created after the restart is in the mesh: the watches resumed and the node
    // proxy got it.
    let log0 = bed.proxy_log(0).len();
    let late = bed.pod("late").namespace("shop").on_node(0).add()?;
    bed.wait_log(0, log0, "pod enrolled", Duration::from_secs(15))?;
    eprintln!(
        "a pod created after the restart enrolled {:?} after it",
        back.elapsed()
    );
    let before = bed.mtls_connections_from(0)?;
    let once = bed.load(
        &late,
        &[
            "--url",
            &format!("http://{}:8080/", web.ip),
            "--requests",
            "1",
        ],
    )?;
    ensure!(once["status"]["200"] == 1, "the late pod's request: {once}");
    ensure!(
        bed.mtls_connections_from(0)? > before,
        "the late pod's request was not mTLS"
    );

    let tally = load.join().map_err(|_| anyhow::anyhow!("load thread"))??;
    all_answered(&tally, secs * RATE)?;
    eprintln!(
        "{} of {} requests answered across the outage",
        tally["status"]["200"],
        secs * RATE
    );
    let pid = bed.controller_pid().context("controller")?;
    ensure!(
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|stat| !stat.contains(") Z ")),
        "the controller exited:\n{}",
        bed.controller_log()
    );
    Ok(())
}
