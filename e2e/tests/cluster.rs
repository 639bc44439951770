//! The cluster tier: Weft's install (`deploy/`) and controller against a real kube-apiserver
//! with RBAC enforced, started on loopback for each test (see `weft_testbed::cluster`). Without
//! the Kubernetes binaries (`WEFT_KUBE_ASSETS`, or `../shared/k8s/bin`) each test says so in
//! one line and does nothing else.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use weft_testbed::cluster::{ControlPlane, assets};

fn plane(label: &str) -> Result<Option<ControlPlane>> {
    let Some(assets) = assets() else {
        eprintln!(
            "cluster tier did not run: no kube-apiserver in WEFT_KUBE_ASSETS or ../shared/k8s/bin \
             (set WEFT_KUBE_ASSETS to a directory holding kube-apiserver and kube-controller-manager)"
        );
        return Ok(None);
    };
    Ok(Some(ControlPlane::start(&assets, label)?))
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn deploy(path: &str) -> String {
    workspace().join("deploy").join(path).display().to_string()
}

/// Installs the CRDs the cluster lacks (all of them, here).
fn install_crds(plane: &ControlPlane) -> Result<()> {
    let out = Command::new(workspace().join("deploy/crds/install-missing.sh"))
        .env("KUBECONFIG", &plane.kubeconfig)
        .output()?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    ensure!(said.matches("created").count() == 9, "{said}");
    for crd in [
        "virtualservices.networking.istio.io",
        "httproutes.gateway.networking.k8s.io",
    ] {
        plane.run(&[
            "wait",
            "--for=condition=Established",
            "--timeout=30s",
            &format!("crd/{crd}"),
        ])?;
    }
    Ok(())
}

/// The CRDs and the base install.
fn install(plane: &ControlPlane) -> Result<()> {
    install_crds(plane)?;
    plane.run(&[
        "apply",
        "--server-side",
        "--field-manager=weft",
        "-k",
        &deploy("base"),
    ])?;
    Ok(())
}

/// Polls `probe` until it is true (`within` at most).
fn wait_until(what: &str, within: Duration, mut probe: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + within;
    loop {
        if probe()? {
            return Ok(());
        }
        ensure!(Instant::now() < deadline, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn every_overlay_passes_server_side_dry_run_and_rbac_grants_only_what_is_needed() -> Result<()> {
    let Some(plane) = plane("deploy")? else {
        return Ok(());
    };
    install_crds(&plane)?;
    // Installing again changes nothing, and keeps the CRDs a cluster already has.
    let again = Command::new(workspace().join("deploy/crds/install-missing.sh"))
        .env("KUBECONFIG", &plane.kubeconfig)
        .output()?;
    ensure!(
        String::from_utf8_lossy(&again.stdout)
            .matches("kept")
            .count()
            == 9
    );
    // Each overlay as a first install would apply it (its namespace must exist for the
    // objects in it to be judged).
    plane.run(&["create", "namespace", "weft-system"])?;
    for overlay in ["overlays/small", "overlays/production", "base"] {
        plane
            .run(&[
                "apply",
                "--server-side",
                "--field-manager=weft",
                "--dry-run=server",
                "-k",
                &deploy(overlay),
            ])
            .with_context(|| format!("dry run of {overlay}"))?;
    }
    plane.run(&[
        "apply",
        "--server-side",
        "--field-manager=weft",
        "-k",
        &deploy("base"),
    ])?;

    let can = |who: &str, args: &[&str]| -> Result<bool> {
        let sa = format!("--as=system:serviceaccount:weft-system:{who}");
        let mut all = vec!["auth", "can-i", sa.as_str()];
        all.extend_from_slice(args);
        let out = plane.kubectl(&all)?;
        Ok(String::from_utf8_lossy(&out.stdout).trim() == "yes")
    };
    let controller = "weft-controller";
    for granted in [
        &["watch", "pods", "--all-namespaces"][..],
        &[
            "list",
            "endpointslices.discovery.k8s.io",
            "--all-namespaces",
        ],
        &[
            "watch",
            "virtualservices.networking.istio.io",
            "--all-namespaces",
        ],
        &[
            "patch",
            "virtualservices.networking.istio.io",
            "--subresource=status",
            "-n",
            "shop",
        ],
        &[
            "patch",
            "httproutes.gateway.networking.k8s.io",
            "--subresource=status",
            "-n",
            "shop",
        ],
        &["create", "tokenreviews.authentication.k8s.io"],
        &["patch", "deployments.apps", "-n", "shop"],
        &["get", "secrets/weft-ca", "-n", "weft-system"],
        &[
            "update",
            "leases.coordination.k8s.io/weft-controller",
            "-n",
            "weft-system",
        ],
    ] {
        ensure!(
            can(controller, granted)?,
            "the controller may not {granted:?}"
        );
    }
    for refused in [
        &["get", "secrets", "-n", "default"][..],
        &["list", "secrets", "-n", "weft-system"],
        &["get", "secrets/other", "-n", "weft-system"],
        &["create", "pods", "-n", "shop"],
        &["delete", "pods", "-n", "shop"],
        &["patch", "virtualservices.networking.istio.io", "-n", "shop"],
        &[
            "update",
            "leases.coordination.k8s.io/other",
            "-n",
            "weft-system",
        ],
        &["create", "clusterrolebindings.rbac.authorization.k8s.io"],
        &["delete", "deployments.apps", "-n", "shop"],
    ] {
        ensure!(!can(controller, refused)?, "the controller may {refused:?}");
    }
    // The node proxy talks to the controller only.
    for refused in [
        &["list", "pods", "--all-namespaces"][..],
        &["get", "secrets", "-n", "weft-system"],
        &["create", "tokenreviews.authentication.k8s.io"],
    ] {
        ensure!(
            !can("weft-node-proxy", refused)?,
            "the node proxy may {refused:?}"
        );
    }
    Ok(())
}

/// A controller replica running in Kubernetes mode with the weft-controller ServiceAccount's
/// token; killed when dropped.
struct Controller {
    child: Child,
    log: PathBuf,
}

impl Controller {
    fn start(plane: &ControlPlane, identity: &str) -> Result<Self> {
        let token = plane.token("weft-system", "weft-controller", None)?;
        let kubeconfig = plane.token_kubeconfig(&format!("weft-controller-{identity}"), &token)?;
        let readiness = ControlPlane::free_addr()?;
        let log = plane
            .dir()
            .join(format!("logs/weft-controller-{identity}.log"));
        let child = Command::new(weft_testbed::bin_dir()?.join("weft-controller"))
            .env("KUBECONFIG", &kubeconfig)
            .env("RUST_LOG", "info")
            .args(["--identity", identity])
            .args(["--listen", &ControlPlane::free_addr()?.to_string()])
            .args(["--admin-addr", &ControlPlane::free_addr()?.to_string()])
            .args(["--readiness-addr", &readiness.to_string()])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("weft-controller (cargo build --workspace --bins first)")?;
        let controller = Self { child, log };
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

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn child_running(&self) -> bool {
        std::fs::metadata(format!("/proc/{}", self.child.id())).is_ok()
            && !std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))
                .unwrap_or_default()
                .contains(") Z ")
    }

    /// SIGTERM, as the kubelet stops a pod; waits for the exit.
    fn stop(mut self) -> Result<()> {
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

fn lease_holder(plane: &ControlPlane) -> String {
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
fn accepted_reason(plane: &ControlPlane, kind: &str, name: &str, namespace: &str) -> String {
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

#[test]
fn the_controller_runs_with_its_own_service_account_and_writes_verdicts() -> Result<()> {
    let Some(plane) = plane("controller")? else {
        return Ok(());
    };
    install(&plane)?;
    let controller = Controller::start(&plane, "replica-a")?;
    let controller_log = || controller.log();

    // It leads, keeps the CA in its Secret and publishes the root node proxies trust.
    let get = |args: &[&str]| plane.run(args).unwrap_or_default();
    wait_until("the lease", Duration::from_secs(15), || {
        Ok(lease_holder(&plane) == "replica-a")
    })?;
    let secret = get(&[
        "get",
        "secret",
        "weft-ca",
        "-n",
        "weft-system",
        "-o",
        "name",
    ]);
    ensure!(secret.trim() == "secret/weft-ca", "{secret}");
    wait_until("the root ConfigMap", Duration::from_secs(15), || {
        Ok(get(&[
            "get",
            "configmap",
            "weft-root-cert",
            "-n",
            "weft-system",
            "-o",
            "jsonpath={.data.root-cert\\.pem}",
        ])
        .contains("BEGIN CERTIFICATE"))
    })?;

    // The guide's VirtualService, applied with kubectl as users do, gets its verdict.
    let guide = workspace().join("examples/guide/istio-traffic-management.yaml");
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
    plane.run(&[
        "apply",
        "-n",
        "bookinfo",
        "-f",
        &guide.display().to_string(),
    ])?;
    wait_until(
        "the VirtualService's status",
        Duration::from_secs(15),
        || Ok(!accepted_reason(&plane, "virtualservice", "reviews", "bookinfo").is_empty()),
    )
    .with_context(controller_log)?;
    let log = controller_log();
    if log.contains("forbidden") {
        bail!("the controller was refused something its RBAC should grant:\n{log}");
    }
    Ok(())
}

#[test]
fn a_stopped_leader_hands_the_lease_and_status_writing_to_the_other_replica() -> Result<()> {
    let Some(plane) = plane("failover")? else {
        return Ok(());
    };
    install(&plane)?;
    let a = Controller::start(&plane, "replica-a")?;
    wait_until("replica-a leads", Duration::from_secs(15), || {
        Ok(lease_holder(&plane) == "replica-a")
    })?;
    let b = Controller::start(&plane, "replica-b")?;
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

    // Stopped, the leader gives the lease up: replica-b takes it at its next round (every 5 s,
    // a third of the 15 s lease), not when the lease would have run out.
    let stopped = Instant::now();
    a.stop()?;
    wait_until("replica-b leads", Duration::from_secs(10), || {
        Ok(lease_holder(&plane) == "replica-b")
    })
    .with_context(|| b.log())?;
    eprintln!("lease handed over {:?} after SIGTERM", stopped.elapsed());

    // And writes the verdicts now.
    let guide = workspace().join("examples/guide/istio-traffic-management.yaml");
    plane.run(&[
        "apply",
        "-n",
        "bookinfo",
        "-f",
        &guide.display().to_string(),
    ])?;
    wait_until("a verdict from replica-b", Duration::from_secs(15), || {
        Ok(!accepted_reason(&plane, "virtualservice", "reviews", "bookinfo").is_empty())
    })
    .with_context(|| b.log())?;
    Ok(())
}

#[test]
fn after_the_api_server_comes_back_the_controller_sees_changes_within_seconds() -> Result<()> {
    let Some(mut plane) = plane("restart")? else {
        return Ok(());
    };
    install(&plane)?;
    let controller = Controller::start(&plane, "replica-a")?;
    wait_until("the lease", Duration::from_secs(15), || {
        Ok(lease_holder(&plane) == "replica-a")
    })?;
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

    // An outage of 10 s: every watch breaks and is retried while the server is away (the
    // outage's length is the point; nothing is being waited for).
    plane.kill("apiserver")?;
    std::thread::sleep(Duration::from_secs(10));
    plane.start_again("apiserver")?;
    let back = Instant::now();

    // A change made after the restart arrives: watches resumed, retries did not back off to
    // half a minute (2 s at most, then a relist).
    let guide = workspace().join("examples/guide/istio-traffic-management.yaml");
    plane.run(&[
        "apply",
        "-n",
        "bookinfo",
        "-f",
        &guide.display().to_string(),
    ])?;
    wait_until(
        "a verdict after the restart",
        Duration::from_secs(15),
        || Ok(!accepted_reason(&plane, "virtualservice", "reviews", "bookinfo").is_empty()),
    )
    .with_context(|| controller.log())?;
    eprintln!(
        "verdict written {:?} after the API server was back",
        back.elapsed()
    );
    ensure!(
        controller.child_running(),
        "the controller exited:\n{}",
        controller.log()
    );
    Ok(())
}

#[test]
fn a_crd_deleted_and_created_again_is_watched_again() -> Result<()> {
    let Some(plane) = plane("crd")? else {
        return Ok(());
    };
    install(&plane)?;
    let controller = Controller::start(&plane, "replica-a")?;
    wait_until("the lease", Duration::from_secs(15), || {
        Ok(lease_holder(&plane) == "replica-a")
    })?;
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
    let crd = "virtualservices.networking.istio.io";
    plane.run(&["delete", "crd", crd, "--wait=true"])?;
    let installed = plane
        .command(workspace().join("deploy/crds/install-missing.sh"))
        .env("KUBECONFIG", &plane.kubeconfig)
        .output()?;
    ensure!(
        installed.status.success(),
        "{}",
        String::from_utf8_lossy(&installed.stderr)
    );
    plane.run(&[
        "wait",
        "--for=condition=Established",
        "--timeout=30s",
        &format!("crd/{crd}"),
    ])?;
    let again = Instant::now();
    let guide = workspace().join("examples/guide/istio-traffic-management.yaml");
    plane.run(&[
        "apply",
        "-n",
        "bookinfo",
        "-f",
        &guide.display().to_string(),
    ])?;
    wait_until("a verdict on the new CRD", Duration::from_secs(15), || {
        Ok(!accepted_reason(&plane, "virtualservice", "reviews", "bookinfo").is_empty())
    })
    .with_context(|| controller.log())?;
    eprintln!("verdict {:?} after the CRD was back", again.elapsed());
    Ok(())
}

#[test]
fn a_waypoint_gateway_gets_its_objects_and_is_programmed_and_they_go_with_it() -> Result<()> {
    let Some(plane) = plane("waypoint")? else {
        return Ok(());
    };
    install(&plane)?;
    let controller = Controller::start(&plane, "replica-a")?;
    wait_until("the lease", Duration::from_secs(15), || {
        Ok(lease_holder(&plane) == "replica-a")
    })?;
    plane.run(&["create", "namespace", "bookinfo"])?;
    let gateway = plane.dir().join("gateway.yaml");
    std::fs::write(
        &gateway,
        "apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: reviews-waypoint, namespace: bookinfo}
spec:
  gatewayClassName: weft-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
",
    )?;
    plane.run(&["apply", "-f", &gateway.display().to_string()])?;
    // The controller applies the waypoint's objects, each owned by the Gateway.
    let objects = [
        "serviceaccount/reviews-waypoint",
        "configmap/reviews-waypoint-root-cert",
        "deployment/reviews-waypoint",
        "service/reviews-waypoint",
    ];
    let owner = |object: &str| {
        plane
            .run(&[
                "get",
                object,
                "-n",
                "bookinfo",
                "-o",
                "jsonpath={.metadata.ownerReferences[0].kind}",
            ])
            .unwrap_or_default()
    };
    wait_until("the waypoint's objects", Duration::from_secs(20), || {
        Ok(objects.iter().all(|o| owner(o) == "Gateway"))
    })
    .with_context(|| controller.log())?;
    let programmed = || {
        plane
            .run(&[
                "get",
                "gateway.gateway.networking.k8s.io/reviews-waypoint",
                "-n",
                "bookinfo",
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Programmed\")].status}",
            ])
            .unwrap_or_default()
    };
    wait_until(
        "Programmed False while no pod runs",
        Duration::from_secs(15),
        || Ok(programmed() == "False"),
    )?;
    // kube-controller-manager made the Deployment's pod; the bed plays its kubelet.
    let pod = || {
        plane
            .run(&[
                "get",
                "pods",
                "-n",
                "bookinfo",
                "-l",
                "gateway.networking.k8s.io/gateway-name=reviews-waypoint",
                "-o",
                "jsonpath={.items[0].metadata.name}",
            ])
            .unwrap_or_default()
    };
    wait_until("the waypoint's pod", Duration::from_secs(20), || {
        Ok(!pod().is_empty())
    })?;
    plane.run(&[
        "patch", "pod", &pod(), "-n", "bookinfo", "--subresource=status", "--type=merge", "-p",
        "{\"status\":{\"phase\":\"Running\",\"podIP\":\"10.10.1.50\",\"podIPs\":[{\"ip\":\"10.10.1.50\"}],\"conditions\":[{\"type\":\"Ready\",\"status\":\"True\"}]}}",
    ])?;
    wait_until(
        "Programmed True once the pod runs",
        Duration::from_secs(15),
        || Ok(programmed() == "True"),
    )
    .with_context(|| controller.log())?;

    // Deleting the Gateway takes its objects with it (garbage collection).
    plane.run(&[
        "delete",
        "-f",
        &gateway.display().to_string(),
        "--wait=true",
    ])?;
    let gone = |object: &str| {
        plane
            .kubectl(&["get", object, "-n", "bookinfo"])
            .is_ok_and(|out| !out.status.success())
    };
    wait_until(
        "the waypoint's objects gone",
        Duration::from_secs(30),
        || Ok(objects.iter().all(|o| gone(o))),
    )?;
    Ok(())
}
