//! What the cluster-tier tests share: a control plane per test, Weft installed from
//! `deploy/`, controller replicas on their own ServiceAccount token, and polling.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use weft_testbed::cluster::{ControlPlane, tier_assets};

pub(crate) fn plane(label: &str) -> Result<Option<ControlPlane>> {
    let Some(assets) = tier_assets() else {
        return Ok(None);
    };
    Ok(Some(ControlPlane::start(&assets, label)?))
}

pub(crate) fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub(crate) fn deploy(path: &str) -> String {
    workspace().join("deploy").join(path).display().to_string()
}

/// Installs the CRDs the cluster lacks (all of them, here).
pub(crate) fn install_crds(plane: &ControlPlane) -> Result<()> {
    let said = plane.install_crds()?;
    ensure!(said.matches("created").count() == 12, "{said}");
    Ok(())
}

/// The CRDs and the base install.
pub(crate) fn install(plane: &ControlPlane) -> Result<()> {
    install_crds(plane)?;
    plane.apply_deploy("base")?;
    Ok(())
}

/// Weft installed, replica `replica-a` leading, and namespace `bookinfo` with a Service
/// `reviews`: where most controller tests start.
pub(crate) fn leading_with_bookinfo(plane: &ControlPlane) -> Result<Controller> {
    install(plane)?;
    let controller = Controller::start(plane, "replica-a")?;
    wait_until("replica-a leads", Duration::from_secs(15), || {
        Ok(lease_holder(plane) == "replica-a")
    })?;
    bookinfo(plane)?;
    Ok(controller)
}

/// Namespace `bookinfo` with a Service `reviews` (9080), for the guide's YAML to land on.
pub(crate) fn bookinfo(plane: &ControlPlane) -> Result<()> {
    plane.run(&["create", "namespace", "bookinfo"])?;
    plane.run(&[
        "create",
        "service",
        "clusterip",
        "reviews",
        "--tcp=9080:9080",
        "-n",
        "bookinfo",
    ])?;
    Ok(())
}

/// Applies the guide's `istio-traffic-management.yaml` in `bookinfo` and waits for the
/// VirtualService's verdict.
pub(crate) fn guide_gets_a_verdict(plane: &ControlPlane, within: Duration) -> Result<()> {
    apply_guide(plane, "istio-traffic-management.yaml")?;
    wait_until("the VirtualService's verdict", within, || {
        Ok(!accepted_reason(plane, "virtualservice", "reviews", "bookinfo").is_empty())
    })
}

/// `kubectl apply -n bookinfo -f examples/guide/<file>`, unchanged, as users apply it.
pub(crate) fn apply_guide(plane: &ControlPlane, file: &str) -> Result<()> {
    let guide = workspace().join("examples/guide").join(file);
    plane.run(&[
        "apply",
        "-n",
        "bookinfo",
        "-f",
        &guide.display().to_string(),
    ])?;
    Ok(())
}

pub(crate) use weft_testbed::wait_until;

/// A controller replica running in Kubernetes mode with the weft-controller ServiceAccount's
/// token; killed when dropped.
pub(crate) struct Controller {
    child: Child,
    log: PathBuf,
}

impl Controller {
    /// A replica on the weft-controller ServiceAccount's token; returns once it is ready.
    pub(crate) fn start(plane: &ControlPlane, identity: &str) -> Result<Self> {
        let token = plane.token("weft-system", "weft-controller", None)?;
        let kubeconfig = plane.token_kubeconfig(&format!("weft-controller-{identity}"), &token)?;
        let (controller, readiness) = Self::spawn(plane, identity, &kubeconfig)?;
        wait_until("the controller ready", Duration::from_secs(30), || {
            Ok(weft_testbed::http_get_in(
                Path::new("/proc/self/ns/net"),
                readiness,
                "/healthz/ready",
            )
            .is_ok_and(|(code, _)| code == 200))
        })
        .with_context(|| controller.log())?;
        Ok(controller)
    }

    /// A replica with `kubeconfig`, not waited for; and its readiness address.
    pub(crate) fn spawn(
        plane: &ControlPlane,
        identity: &str,
        kubeconfig: &Path,
    ) -> Result<(Self, std::net::SocketAddr)> {
        let readiness = ControlPlane::free_addr()?;
        let log = plane
            .dir()
            .join(format!("logs/weft-controller-{identity}.log"));
        let child = Command::new(weft_testbed::bin_dir()?.join("weft-controller"))
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "info")
            .args(["--identity", identity])
            .args(["--listen", &ControlPlane::free_addr()?.to_string()])
            .args(["--admin-addr", &ControlPlane::free_addr()?.to_string()])
            .args(["--readiness-addr", &readiness.to_string()])
            .args(["--metrics-addr", &ControlPlane::free_addr()?.to_string()])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("weft-controller (cargo build --workspace --bins first)")?;
        Ok((Self { child, log }, readiness))
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub(crate) fn child_running(&self) -> bool {
        std::fs::metadata(format!("/proc/{}", self.child.id())).is_ok()
            && !std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))
                .unwrap_or_default()
                .contains(") Z ")
    }

    /// SIGTERM, as the kubelet stops a pod; waits for the exit.
    pub(crate) fn stop(mut self) -> Result<()> {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )?;
        self.child.wait()?;
        Ok(())
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn lease_holder(plane: &ControlPlane) -> String {
    plane
        .run(&[
            "get",
            "lease",
            "weft-controller",
            "-n",
            "weft-system",
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ])
        .unwrap_or_default()
}

/// The reason of a policy's `Accepted` condition ("" while there is none).
pub(crate) fn accepted_reason(
    plane: &ControlPlane,
    kind: &str,
    name: &str,
    namespace: &str,
) -> String {
    plane
        .run(&[
            "get",
            kind,
            name,
            "-n",
            namespace,
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Accepted\")].reason}",
        ])
        .unwrap_or_default()
}
