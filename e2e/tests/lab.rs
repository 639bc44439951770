//! `weft lab`, the README's first command, run as a user runs it (a short run): it builds the
//! local mesh, sends its traffic, prints a summary that says what happened, and tears down.
//! Needs root.

use anyhow::{Result, ensure};

#[test]
fn the_lab_runs_its_traffic_and_summarises_it_truthfully() -> Result<()> {
    let port = weft_testbed::cluster::ControlPlane::free_addr()?.port();
    let out = std::process::Command::new(weft_testbed::bin_dir()?.join("weft"))
        .args(["lab", "--duration-secs", "1", "--requests", "3"])
        .args(["--metrics-port", &port.to_string()])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let errors = String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.success(), "weft lab failed:\n{text}\n{errors}");
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
