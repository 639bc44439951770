//! `weft install` and `weft uninstall`. Install renders `deploy/` (an overlay, with `kubectl
//! kustomize`), adds the policy CRDs the cluster lacks (generated from Weft's types, as `weft
//! crds` writes them), applies everything with server-side apply through the API (field manager
//! `weft`), and waits until the controller and every node proxy are ready. Uninstall does what
//! the README's uninstall says, in order: namespaces out of the mesh, waypoints deleted, and
//! once every node proxy has released its pods (from the controller's admin endpoint), Weft's
//! objects deleted; then it waits until the node proxies are gone (each cleans its node as it
//! stops).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::Api;
use kube::api::{
    ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams,
};
use kube::discovery::Scope;
use serde::Deserialize as _;
use weft_controller::model::translate::{AMBIENT, DATAPLANE_MODE, USE_WAYPOINT};

/// The field manager of what `weft install` applies (the same as `kubectl apply
/// --field-manager=weft` in the README).
const MANAGER: &str = "weft";
const SYSTEM: &str = "weft-system";

/// `weft install` flags.
#[derive(clap::Args, Debug)]
pub(crate) struct InstallArgs {
    /// `base`, or an overlay under deploy/overlays (`small`, `production`).
    #[arg(long, default_value = "base")]
    overlay: String,
    /// Where Weft's `deploy/` tree is.
    #[arg(long, default_value = "deploy")]
    deploy_dir: PathBuf,
    /// Ask the API server to check everything without changing anything.
    #[arg(long)]
    dry_run: bool,
    /// How long to wait for the controller and the node proxies (0: do not wait).
    #[arg(long, default_value_t = 300)]
    wait_secs: u64,
}

/// `weft uninstall` flags.
#[derive(clap::Args, Debug)]
pub(crate) struct UninstallArgs {
    /// The overlay it was installed with.
    #[arg(long, default_value = "base")]
    overlay: String,
    #[arg(long, default_value = "deploy")]
    deploy_dir: PathBuf,
    /// The controller's admin endpoint, to see the node proxies release their pods (after
    /// `kubectl port-forward -n weft-system deploy/weft-controller 15014`).
    #[arg(long, default_value = "127.0.0.1:15014")]
    controller_admin: SocketAddr,
    /// How long to wait at each step.
    #[arg(long, default_value_t = 120)]
    wait_secs: u64,
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// The overlay's objects, rendered by `kubectl kustomize`.
fn render(deploy: &Path, overlay: &str) -> Result<Vec<DynamicObject>> {
    let dir = if overlay == "base" {
        deploy.join("base")
    } else {
        deploy.join("overlays").join(overlay)
    };
    if !dir.join("kustomization.yaml").exists() {
        bail!(
            "{}: no kustomization (overlays: base, small, production; --deploy-dir points at Weft's deploy/)",
            dir.display()
        );
    }
    let out = std::process::Command::new("kubectl")
        .arg("kustomize")
        .arg(&dir)
        .output()
        .context("running `kubectl kustomize` (kubectl must be installed)")?;
    if !out.status.success() {
        bail!(
            "kubectl kustomize {}: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8(out.stdout)?;
    let mut objects = Vec::new();
    for document in serde_yaml::Deserializer::from_str(&text) {
        let value = serde_yaml::Value::deserialize(document)?;
        if value.is_null() {
            continue;
        }
        objects.push(serde_yaml::from_value(value)?);
    }
    Ok(objects)
}

/// The API resource and scope of `object`'s kind.
async fn resource_of(
    client: &kube::Client,
    object: &DynamicObject,
) -> Result<(ApiResource, Scope)> {
    let types = object
        .types
        .as_ref()
        .context("an object without apiVersion/kind")?;
    let gvk = GroupVersionKind::try_from(types)?;
    let (resource, caps) = kube::discovery::pinned_kind(client, &gvk)
        .await
        .with_context(|| format!("the API server does not serve {}", types.kind))?;
    Ok((resource, caps.scope))
}

fn api_for(
    client: &kube::Client,
    resource: &ApiResource,
    scope: &Scope,
    namespace: Option<&str>,
) -> Api<DynamicObject> {
    match (scope, namespace) {
        (Scope::Namespaced, Some(ns)) => Api::namespaced_with(client.clone(), ns, resource),
        (Scope::Namespaced, None) => Api::default_namespaced_with(client.clone(), resource),
        (Scope::Cluster, _) => Api::all_with(client.clone(), resource),
    }
}

/// Runs `weft install`.
pub(crate) fn install(args: &InstallArgs) -> Result<ExitCode> {
    let objects = render(&args.deploy_dir, &args.overlay)?;
    runtime()?.block_on(async {
        let client = crate::cluster::client().await?;
        let mut params = PatchParams::apply(MANAGER).force();
        if args.dry_run {
            params = params.dry_run();
        }
        // The policy CRDs the cluster lacks (a cluster with Istio, Linkerd, SMI or the Gateway
        // API keeps its own).
        let crds: Api<DynamicObject> = Api::all_with(
            client.clone(),
            &ApiResource::from_gvk_with_plural(
                &GroupVersionKind::gvk("apiextensions.k8s.io", "v1", "CustomResourceDefinition"),
                "customresourcedefinitions",
            ),
        );
        let mut created = Vec::new();
        for crd in weft_controller::k8s::crds::crds() {
            let name = crd["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            if crds.get_opt(&name).await?.is_some() {
                println!("kept     customresourcedefinition/{name} (already installed)");
                continue;
            }
            crds.patch(&name, &params, &Patch::Apply(&crd))
                .await
                .with_context(|| format!("applying CRD {name}"))?;
            println!("created  customresourcedefinition/{name}");
            created.push(name);
        }
        if !args.dry_run {
            for name in &created {
                wait_until(Duration::from_secs(30), || {
                    let (crds, name) = (crds.clone(), name.clone());
                    async move {
                        let crd = crds.get(&name).await?;
                        Ok(crd.data["status"]["conditions"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .any(|c| c["type"] == "Established" && c["status"] == "True"))
                    }
                })
                .await
                .with_context(|| format!("CRD {name} not established"))?;
            }
        }
        // A dry run cannot place objects in a namespace this install would create.
        let namespaces: Api<Namespace> = Api::all(client.clone());
        let mut missing = std::collections::BTreeSet::new();
        for object in &objects {
            if object.types.as_ref().is_some_and(|t| t.kind == "Namespace")
                && let Some(name) = &object.metadata.name
                && namespaces.get_opt(name).await?.is_none()
            {
                missing.insert(name.clone());
            }
        }
        for object in &objects {
            let (resource, scope) = resource_of(&client, object).await?;
            let name = object
                .metadata
                .name
                .clone()
                .context("an object without a name")?;
            if args.dry_run
                && let Some(ns) = object
                    .metadata
                    .namespace
                    .as_ref()
                    .filter(|ns| missing.contains(*ns))
            {
                println!(
                    "would apply {}/{name} (not checked by the server: namespace {ns} does not exist yet)",
                    resource.kind.to_lowercase()
                );
                continue;
            }
            let api = api_for(
                &client,
                &resource,
                &scope,
                object.metadata.namespace.as_deref(),
            );
            api.patch(&name, &params, &Patch::Apply(object))
                .await
                .with_context(|| format!("applying {} {name}", resource.kind))?;
            println!(
                "applied  {}/{name}{}",
                resource.kind.to_lowercase(),
                if args.dry_run {
                    " (server dry run)"
                } else {
                    ""
                }
            );
        }
        if args.dry_run {
            println!("dry run: the API server accepted every object; nothing was changed");
            return Ok(ExitCode::SUCCESS);
        }
        if args.wait_secs == 0 {
            return Ok(ExitCode::SUCCESS);
        }
        println!(
            "waiting up to {} s for the controller and the node proxies",
            args.wait_secs
        );
        let ready = wait_ready(&client, Duration::from_secs(args.wait_secs)).await?;
        Ok(if ready {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        })
    })
}

/// Waits until a controller replica and every node proxy the DaemonSet wants are ready,
/// printing progress as it changes; false when `within` ran out.
async fn wait_ready(client: &kube::Client, within: Duration) -> Result<bool> {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), SYSTEM);
    let daemonsets: Api<DaemonSet> = Api::namespaced(client.clone(), SYSTEM);
    let deadline = Instant::now() + within;
    let mut last = String::new();
    loop {
        let controller = deployments.get_opt("weft-controller").await?;
        let (ready, wanted) = controller
            .map(|d| {
                (
                    d.status.and_then(|s| s.ready_replicas).unwrap_or(0),
                    d.spec.and_then(|s| s.replicas).unwrap_or(1),
                )
            })
            .unwrap_or((0, 1));
        let proxies = daemonsets.get_opt("weft-node-proxy").await?;
        let (proxies_ready, nodes) = proxies
            .and_then(|d| d.status)
            .map(|s| (s.number_ready, s.desired_number_scheduled))
            .unwrap_or((0, 0));
        let now = format!(
            "controller {ready}/{wanted} ready, node proxies {proxies_ready}/{nodes} ready"
        );
        if now != last {
            println!("  {now}");
            last.clone_from(&now);
        }
        if ready >= 1 && nodes > 0 && proxies_ready == nodes {
            println!(
                "Weft is running: the controller ({ready} of {wanted} replicas) and a node proxy on each of {nodes} node(s). Next: weft namespace enroll NS; weft check"
            );
            return Ok(true);
        }
        if Instant::now() >= deadline {
            println!(
                "not ready after {} s: {now}; see `weft check` and `kubectl -n weft-system get pods`",
                within.as_secs()
            );
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn wait_until<F, Fut>(within: Duration, mut probe: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool>>,
{
    let deadline = Instant::now() + within;
    loop {
        if probe().await? {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("not within {} s", within.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Runs `weft uninstall`.
pub(crate) fn uninstall(args: &UninstallArgs) -> Result<ExitCode> {
    let objects = render(&args.deploy_dir, &args.overlay)?;
    let within = Duration::from_secs(args.wait_secs);
    runtime()?.block_on(async {
        let client = crate::cluster::client().await?;
        // 1. Namespaces out of the mesh, waypoints gone, and every node proxy has applied the
        //    config that says so (its pods released: nothing stays captured when it stops).
        crate::cluster::admin_json(args.controller_admin, "/debug/proxies")
            .await
            .with_context(|| format!("the controller's admin endpoint {} (kubectl port-forward -n weft-system deploy/weft-controller 15014): uninstall waits on it to see node proxies release their pods", args.controller_admin))?;
        let namespaces: Api<Namespace> = Api::all(client.clone());
        // Enrolled namespaces (not those labelled `none`, which only opt out) and every
        // namespace-wide waypoint.
        let enrolled = format!("{DATAPLANE_MODE}={AMBIENT}");
        for (label, selector) in [(DATAPLANE_MODE, enrolled.as_str()), (USE_WAYPOINT, USE_WAYPOINT)] {
            for ns in namespaces.list(&ListParams::default().labels(selector)).await?.items {
                let name = ns.metadata.name.unwrap_or_default();
                let patch = Patch::Merge(serde_json::json!({"metadata": {"labels": {label: null}}}));
                namespaces.patch(&name, &PatchParams::default(), &patch).await?;
                println!("namespace/{name}: label {label} removed");
            }
        }
        for gw in crate::cluster::waypoint_gateways(&client).await.unwrap_or_default() {
            let (ns, name) = (gw.metadata.namespace.unwrap_or_default(), gw.metadata.name.unwrap_or_default());
            crate::mesh_cmds::delete_gateway(&client, &ns, &name).await?;
        }
        println!("waiting for every node proxy to release its pods");
        let admin = args.controller_admin;
        wait_until(within, || async move {
            // The published config has no pod in the mesh, and every node proxy holds it.
            let dump = crate::cluster::admin_json(admin, "/config_dump").await?;
            let in_mesh = dump["mesh"]["workloads"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|w| w["protocol"] == "HBONE");
            let proxies = crate::cluster::admin_json(admin, "/debug/proxies").await?;
            let behind = proxies
                .as_object()
                .into_iter()
                .flatten()
                .filter(|(name, s)| !name.starts_with("waypoint.") && s["connected"] == true)
                .any(|(_, s)| s["current"] != true);
            Ok(!in_mesh && !behind)
        })
        .await
        .context("the node proxies did not all release their pods")?;
        println!("  every node proxy released its pods");

        // 2. Weft's objects, in reverse order (the namespace last).
        for object in objects.iter().rev() {
            let (resource, scope) = resource_of(&client, object).await?;
            let name = object.metadata.name.clone().unwrap_or_default();
            let api = api_for(&client, &resource, &scope, object.metadata.namespace.as_deref());
            match api.delete(&name, &DeleteParams::background()).await {
                Ok(_) => println!("deleted  {}/{name}", resource.kind.to_lowercase()),
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e).with_context(|| format!("deleting {} {name}", resource.kind)),
            }
        }
        // 3. The node proxies stop (each takes weft-cni out of its node's CNI chain and, with
        //    nothing captured, its eBPF programs).
        println!("waiting for the node proxies to stop");
        let pods: Api<Pod> = Api::namespaced(client.clone(), SYSTEM);
        wait_until(within, || {
            let pods = pods.clone();
            async move {
            Ok(pods
                .list(&ListParams::default().labels("app.kubernetes.io/name=weft-node-proxy"))
                .await
                .map(|l| l.items.is_empty())
                .unwrap_or(true))
            }
        })
        .await
        .context("node-proxy pods are still there")?;
        println!("Weft is uninstalled. Its CRDs stay (policies in them are kept): kubectl delete crd -l app.kubernetes.io/part-of=weft removes the ones it created.");
        Ok(ExitCode::SUCCESS)
    })
}
