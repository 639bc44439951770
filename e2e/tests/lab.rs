//! `weft lab`, the README's first command, run as a user runs it (a short run): it builds the
//! local mesh, sends its traffic, prints a summary that says what happened, and tears down.
//! Needs root.

use anyhow::{Context, Result, ensure};

#[test]
fn the_lab_runs_its_traffic_and_summarises_it_truthfully() -> Result<()> {
    let port = weft_testbed::cluster::ControlPlane::free_addr()?.port();
    let prometheus = weft_testbed::cluster::ControlPlane::free_addr()?.port();
    let mut lab = std::process::Command::new(weft_testbed::bin_dir()?.join("weft"))
        .args(["lab", "--duration-secs", "120", "--requests", "3"])
        .args(["--metrics-port", &port.to_string()])
        .args(["--prometheus-port", &prometheus.to_string()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    // While it runs, its Prometheus answers on this machine's loopback and scrapes both node
    // proxies, the waypoint and the controller.
    let stdout = lab.stdout.take().context("stdout")?;
    let reader = std::thread::spawn(move || std::io::read_to_string(stdout));
    let query = format!("http://127.0.0.1:{prometheus}/api/v1/query?query=sum(up)");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let up = loop {
        let out = std::process::Command::new("curl")
            .args(["-s", "--max-time", "2", &query])
            .output()?;
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let up: f64 = json["data"]["result"][0]["value"][1]
            .as_str()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        if up >= 4.0 || std::time::Instant::now() > deadline || lab.try_wait()?.is_some() {
            break up;
        }
        std::thread::sleep(std::time::Duration::from_millis(250));
    };
    // Then Ctrl-C, as a user stops it.
    std::process::Command::new("kill")
        .args(["-INT", &lab.id().to_string()])
        .status()?;
    let status = lab.wait()?;
    let text = reader.join().expect("reader")?;
    let errors = std::io::read_to_string(lab.stderr.take().context("stderr")?)?;
    ensure!(status.success(), "weft lab failed:\n{text}\n{errors}");
    ensure!(
        up >= 4.0,
        "the lab's Prometheus had {up} targets up:\n{text}"
    );
    ensure!(
        text.contains(&format!("Prometheus: http://127.0.0.1:{prometheus}")),
        "{text}"
    );
    // Pods by namespace, the waypoint as a waypoint.
    ensure!(
        text.lines()
            .any(|l| l.contains("shop") && l.contains("reviews-v1") && l.contains("ambient")),
        "{text}"
    );
    ensure!(
        text.lines().any(|l| l.contains("default")
            && l.contains("reviews-waypoint")
            && l.contains("waypoint")),
        "{text}"
    );
    // What it sent, and what came of it.
    ensure!(text.contains("refused (STRICT mTLS)"), "{text}");
    ensure!(
        text.contains("as jason: 3 answered by reviews-v2"),
        "{text}"
    );
    ensure!(
        text.contains("as anyone else: 3 answered by reviews-v1"),
        "{text}"
    );
    ensure!(
        text.lines().any(
            |l| l.contains("shop/productpage -> shop/details-v1") && l.contains("mTLS (HBONE)")
        ),
        "{text}"
    );
    ensure!(text.contains("Tearing the lab down."), "{text}");
    Ok(())
}

/// `weft lab --manifests examples/lab`: the user's Deployments, Services and waypoint run, and
/// the user's policies decide what the traffic gets.
#[test]
fn the_lab_runs_your_own_manifests_and_your_policies_decide() -> Result<()> {
    let port = weft_testbed::cluster::ControlPlane::free_addr()?.port();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/lab");
    let out = std::process::Command::new(weft_testbed::bin_dir()?.join("weft"))
        .args([
            "lab",
            "--duration-secs",
            "1",
            "--requests",
            "4",
            "--no-prometheus",
        ])
        .args(["--metrics-port", &port.to_string()])
        .arg("--manifests")
        .arg(&dir)
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let errors = String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.success(), "weft lab failed:\n{text}\n{errors}");
    // Two replicas of api-v1, one of api-v2, the waypoint.
    for pod in ["api-v1-0", "api-v1-1", "api-v2-0", "frontend-0"] {
        ensure!(
            text.lines()
                .any(|l| l.contains("shop") && l.contains(pod) && l.contains("ambient")),
            "{pod}: {text}"
        );
    }
    ensure!(
        text.lines()
            .any(|l| l.contains("shop-waypoint") && l.contains("waypoint")),
        "{text}"
    );
    ensure!(text.contains("VirtualService shop/api: Accepted"), "{text}");
    // The VirtualService sends every request to v2 (the Service alone spreads them over three
    // pods); the AuthorizationPolicy lets only api call the frontend.
    ensure!(text.contains("4× 200 from api-v2-0"), "{text}");
    ensure!(
        text.lines()
            .any(|l| l.contains("shop/frontend:80") && l.contains("4× no answer")),
        "{text}"
    );
    Ok(())
}

/// A mistake in the user's YAML fails at once, naming the file and field, before anything is
/// built.
#[test]
fn the_lab_refuses_broken_manifests_before_building_anything() -> Result<()> {
    let dir = std::env::temp_dir().join(format!("weft-lab-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join("broken.yaml"),
        "apiVersion: v1\nkind: Service\nmetadata: {name: api}\nspec: {ports: [{port: 99999}]}\n",
    )?;
    let out = std::process::Command::new(weft_testbed::bin_dir()?.join("weft"))
        .args(["lab", "--duration-secs", "1", "--manifests"])
        .arg(&dir)
        .output();
    let _ = std::fs::remove_dir_all(&dir);
    let out = out?;
    let text = String::from_utf8_lossy(&out.stdout);
    let errors = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success(), "{text}");
    ensure!(
        errors.contains("broken.yaml") && errors.contains("spec.ports[0].port"),
        "{errors}"
    );
    ensure!(
        !text.contains("building"),
        "it built before reading: {text}"
    );
    Ok(())
}
