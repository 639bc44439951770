//! `weft lab --kube`: the lab on a real API server, driven by the user's own kubectl from this
//! machine, its watched traffic showing what a change did; Ctrl-C tears it all down.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

/// Stops the lab if the test ends early: SIGINT, then SIGKILL.
struct Lab(Child);

impl Drop for Lab {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = Command::new("kill")
                .args(["-INT", &self.0.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(60);
            while matches!(self.0.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// The next line of the lab's output that `wanted` accepts, within `within`.
fn line_where(
    lines: &Receiver<String>,
    within: Duration,
    what: &str,
    wanted: impl Fn(&str) -> bool,
) -> Result<String> {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if wanted(&line) => return Ok(line),
            Ok(_) => {}
            Err(RecvTimeoutError::Timeout) => bail!("the lab never printed {what}"),
            Err(RecvTimeoutError::Disconnected) => bail!("the lab exited before {what}"),
        }
    }
}

/// The guide's reviews VirtualService, changed by a user: everyone to v2.
const ALL_TO_V2: &str = "apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata:
  name: reviews
  namespace: default
spec:
  hosts:
  - reviews
  http:
  - route:
    - destination:
        host: reviews
        subset: v2
";

#[test]
fn the_kube_lab_is_driven_by_the_users_kubectl_and_its_watch_shows_the_change() -> Result<()> {
    let Some(assets) = weft_testbed::cluster::tier_assets() else {
        return Ok(());
    };
    let port = weft_testbed::cluster::ControlPlane::free_addr()?.port();
    let mut child = Command::new(weft_testbed::bin_dir()?.join("weft"))
        .args(["lab", "--kube", "--kube-assets"])
        .arg(&assets)
        .args(["--requests", "2", "--watch-secs", "1", "--no-prometheus"])
        .args(["--metrics-port", &port.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let stdout = child.stdout.take().context("stdout")?;
    let mut lab = Lab(child);
    let (tx, lines) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            eprintln!("lab| {line}");
            if tx.send(line).is_err() {
                break;
            }
        }
    });

    // The lab is up and says how to reach its API server.
    let export = line_where(&lines, Duration::from_secs(300), "its KUBECONFIG", |l| {
        l.trim_start().starts_with("export KUBECONFIG=")
    })?;
    let kubeconfig = export
        .trim()
        .trim_start_matches("export KUBECONFIG=")
        .to_owned();
    let kubectl = |args: &[&str], input: Option<&str>| -> Result<String> {
        let mut c = Command::new("kubectl")
            .args(args)
            .env("KUBECONFIG", &kubeconfig)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        if let Some(text) = input {
            c.stdin
                .take()
                .context("stdin")?
                .write_all(text.as_bytes())?;
        }
        let out = c.wait_with_output()?;
        ensure!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    // This machine's kubectl sees the lab's pods.
    let pods = kubectl(&["get", "pods", "-n", "shop", "-o", "name"], None)?;
    ensure!(pods.contains("pod/productpage"), "{pods}");

    // The watched traffic: the guide's VirtualService sends only jason to v2.
    line_where(
        &lines,
        Duration::from_secs(60),
        "others answered by v1",
        |l| l.contains("as others: 200 from reviews-v1"),
    )?;
    kubectl(&["apply", "-f", "-"], Some(ALL_TO_V2))?;
    let changed = Instant::now();
    line_where(
        &lines,
        Duration::from_secs(60),
        "others answered by v2",
        |l| l.contains("as others: 200 from reviews-v2"),
    )?;
    eprintln!(
        "the watch showed kubectl's change {:.1} s after it",
        changed.elapsed().as_secs_f64()
    );

    // Ctrl-C: the lab tears down and exits 0.
    Command::new("kill")
        .args(["-INT", &lab.0.id().to_string()])
        .status()?;
    line_where(&lines, Duration::from_secs(60), "its teardown", |l| {
        l.contains("Tearing the lab down.")
    })?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = lab.0.try_wait()? {
            break status;
        }
        ensure!(
            Instant::now() < deadline,
            "the lab did not exit after Ctrl-C"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    ensure!(status.success(), "the lab exited {status}");
    Ok(())
}
