//! What the `weft` command-line tests share: running the real binary against the bed's (or a
//! bare) control plane.
#![allow(dead_code)]

use std::process::Output;

use anyhow::{Context, Result, ensure};
use weft_testbed::TestBed;

/// Runs `weft <args>` in the control plane's namespace with the admin kubeconfig.
pub(crate) fn weft(bed: &TestBed, args: &[&str]) -> Result<Output> {
    let plane = bed.control_plane().context("Kubernetes mode")?;
    Ok(plane
        .command(weft_testbed::bin_dir()?.join("weft"))
        .args(args)
        .env("KUBECONFIG", &plane.kubeconfig)
        .env("NO_COLOR", "1")
        .output()?)
}

/// Runs `weft <args>` and returns its stdout; fails unless it exits 0.
pub(crate) fn weft_ok(bed: &TestBed, args: &[&str]) -> Result<String> {
    let out = weft(bed, args)?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(
        out.status.success(),
        "weft {args:?} exited {:?}: {text}{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("$ weft {}\n{text}", args.join(" "));
    Ok(text)
}

/// Runs `weft <args>` against a bare control plane (no bed).
pub(crate) fn weft_on(
    plane: &weft_testbed::cluster::ControlPlane,
    args: &[&str],
) -> Result<Output> {
    Ok(plane
        .command(weft_testbed::bin_dir()?.join("weft"))
        .args(args)
        .env("KUBECONFIG", &plane.kubeconfig)
        .env("NO_COLOR", "1")
        .output()?)
}
