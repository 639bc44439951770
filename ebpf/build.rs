//! Compiles the C eBPF programs with clang into `$OUT_DIR`, for `include_bytes!`.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, bail};

const SOURCES: &[&str] = &["capture"];

fn main() -> anyhow::Result<()> {
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let clang = std::env::var("WEFT_CLANG").unwrap_or_else(|_| "clang".to_owned());
    // <asm/types.h> lives in the multiarch include directory on Debian.
    let multiarch = Command::new("gcc")
        .arg("-dumpmachine")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| format!("{}-linux-gnu", std::env::consts::ARCH));
    for name in SOURCES {
        let src = format!("bpf/{name}.bpf.c");
        println!("cargo:rerun-if-changed={src}");
        let obj = out.join(format!("{name}.bpf.o"));
        let status = Command::new(&clang)
            .args(["-O2", "-g", "-target", "bpf", "-Wall", "-Werror"])
            .arg(format!("-I/usr/include/{multiarch}"))
            .args(["-c", &src, "-o"])
            .arg(&obj)
            .status()
            .with_context(|| {
                format!(
                    "running {clang} to build {src}: install clang and libbpf-dev \
                     (./scripts/deps.sh does)"
                )
            })?;
        if !status.success() {
            bail!(
                "{clang} failed on {src} ({status}); are libbpf-dev and linux-libc-dev installed?"
            );
        }
    }
    println!("cargo:rerun-if-env-changed=WEFT_CLANG");
    Ok(())
}
