//! The cluster tier: Weft's install (`deploy/`) and controller against a real kube-apiserver
//! with RBAC enforced, started on loopback for each test (see `weft_testbed::cluster`). Without
//! the Kubernetes binaries (`WEFT_KUBE_ASSETS`, or `../shared/k8s/bin`) each test says so in
//! one line and does nothing else. Controller lifecycle: `cluster_controller.rs`; the mesh on
//! the API: `cluster_mesh.rs`.

#[path = "support/cluster.rs"]
mod support;

use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use support::{
    Controller, accepted_reason, deploy, install, install_crds, lease_holder, plane, wait_until,
    workspace,
};

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
            == 12
    );
    // Each overlay as a first install would apply it (its namespace must exist for the
    // objects in it to be judged).
    plane.run(&["create", "namespace", "weft-system"])?;
    for overlay in [
        "overlays/small",
        "overlays/production",
        "base",
        "gateways/ingress",
    ] {
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
    support::bookinfo(&plane)?;
    support::apply_guide(&plane, "istio-traffic-management.yaml")?;
    wait_until(
        "the VirtualService's status",
        Duration::from_secs(15),
        || Ok(!accepted_reason(&plane, "virtualservice", "reviews", "bookinfo").is_empty()),
    )
    .with_context(controller_log)?;
    // A route the controller refuses (the API's own rule: ReplacePrefixMatch needs a
    // PathPrefix) still gets a per-parent condition saying why and what stays in effect.
    let route = plane.dir().join("route.yaml");
    std::fs::write(
        &route,
        "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: bad, namespace: bookinfo}
spec:
  parentRefs: [{group: \"\", kind: Service, name: reviews}]
  rules:
  - matches: [{path: {type: Exact, value: /a}}]
    filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /b}}}]
",
    )?;
    plane.run(&["apply", "-f", &route.display().to_string()])?;
    let condition = |field: &str| {
        plane
            .run(&[
                "get",
                "httproute",
                "bad",
                "-n",
                "bookinfo",
                "-o",
                &format!(
                    "jsonpath={{.status.parents[?(@.controllerName==\"weft.io/controller\")].conditions[0].{field}}}"
                ),
            ])
            .unwrap_or_default()
    };
    wait_until(
        "the refused route's condition",
        Duration::from_secs(15),
        || Ok(condition("reason") == "Invalid"),
    )
    .with_context(controller_log)?;
    let message = condition("message");
    ensure!(
        message.contains("ReplacePrefixMatch") && message.contains("nothing of it is applied"),
        "{message}"
    );
    let log = controller_log();
    if log.contains("forbidden") {
        bail!("the controller was refused something its RBAC should grant:\n{log}");
    }
    Ok(())
}
