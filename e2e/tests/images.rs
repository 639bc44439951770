//! The images: `scripts/images.sh` builds each component's image from the binaries the test
//! command built (pulling nothing), each image's entrypoint runs, and the names `deploy/` and
//! the controller's waypoint Deployments use are the ones the script builds. Needs root and
//! buildah.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, ensure};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn run(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .current_dir(workspace())
        .output()
        .with_context(|| format!("running {program}"))?;
    ensure!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn each_image_builds_from_the_binaries_and_its_entrypoint_runs() -> Result<()> {
    let version = env!("CARGO_PKG_VERSION");
    let bin_dir = weft_testbed::bin_dir()?;
    let tag = format!("test-{}", std::process::id());
    let built = run(
        "scripts/images.sh",
        &["--bin-dir", &bin_dir.display().to_string(), "--tag", &tag],
    )?;
    let mut checked = Vec::new();
    for component in ["controller", "node-proxy", "waypoint"] {
        let image = format!("weft/{component}:{tag}");
        ensure!(built.contains(&image), "{image} not built: {built}");
        let container = run("buildah", &["from", "--pull=never", &image])?;
        let container = container.trim();
        let entrypoint = run(
            "buildah",
            &[
                "inspect",
                "--format",
                "{{index .OCIv1.Config.Entrypoint 0}}",
                container,
            ],
        )?;
        let said = run(
            "buildah",
            &[
                "run",
                "--isolation",
                "chroot",
                container,
                "--",
                entrypoint.trim(),
                "--version",
            ],
        );
        // The nftables fallback's tools run in the node proxy's image, libraries and all.
        let mut tools = Vec::new();
        if component == "node-proxy" {
            for (tool, flag) in [("nsenter", "--version"), ("nft", "--version"), ("ip", "-V")] {
                let args = ["run", "--isolation", "chroot", container, "--", tool, flag];
                tools.push((tool, run("buildah", &args)));
            }
        }
        let _ = run("buildah", &["rm", container]);
        let _ = run("buildah", &["rmi", &image]);
        for (tool, said) in tools {
            said.map_err(|e| anyhow::anyhow!("{tool} in {image}: {e:#}"))?;
        }
        let said = said?;
        ensure!(
            said.trim() == format!("weft-{component} {version}"),
            "{image}: {said}"
        );
        checked.push(component);
    }
    ensure!(checked.len() == 3);

    // What deploy/ and the controller name is what the script builds at the release tag.
    let rendered = run("kubectl", &["kustomize", "deploy/base"])?;
    let images: Vec<&str> = rendered
        .lines()
        .filter_map(|l| l.trim().strip_prefix("image: "))
        .collect();
    ensure!(!images.is_empty(), "no image in deploy/base");
    for image in images {
        ensure!(
            ["controller", "node-proxy"]
                .iter()
                .any(|c| image == format!("weft/{c}:{version}")),
            "deploy/base names {image}"
        );
    }
    ensure!(
        rendered.contains(&format!("--waypoint-image=weft/waypoint:{version}")),
        "the controller's waypoint image"
    );
    Ok(())
}
