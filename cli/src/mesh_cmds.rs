//! `weft namespace enroll|unenroll` and `weft waypoint apply|list|status|delete`: the labels and
//! Gateways users would otherwise write by hand, through the Kubernetes API.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::{Namespace, Service};
use kube::Api;
use kube::api::{DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use weft_controller::model::translate::{AMBIENT, DATAPLANE_MODE, USE_WAYPOINT};

use crate::cluster::gateways;
use crate::output::{Format, print_data, table};

/// The field manager of what `weft` applies.
const MANAGER: &str = "weft-cli";

/// `weft namespace` subcommands.
#[derive(clap::Subcommand, Debug)]
pub(crate) enum NamespaceCommand {
    /// Labels NS `weft.io/dataplane-mode=ambient`: its pods join the mesh (running ones too).
    Enroll { namespace: String },
    /// Removes the label: its pods leave the mesh and their traffic goes direct.
    Unenroll { namespace: String },
}

/// What a waypoint serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum For {
    /// One Service (labelled `weft.io/use-waypoint`).
    Service,
    /// Every Service of the namespace (the namespace is labelled).
    Namespace,
}

/// `weft waypoint` subcommands.
#[derive(clap::Subcommand, Debug)]
pub(crate) enum WaypointCommand {
    /// Deploys a waypoint (a Gateway of class weft-waypoint, which the controller runs) and puts
    /// a Service, or the whole namespace, behind it.
    Apply {
        /// What it serves.
        #[arg(long = "for", value_enum)]
        target: For,
        /// The Service's name (`--for service`).
        service: Option<String>,
        #[arg(short, long, default_value = "default")]
        namespace: String,
        /// The waypoint's name.
        #[arg(long, default_value = "waypoint")]
        name: String,
        /// Wait until the controller reports it Programmed (up to this many seconds).
        #[arg(long)]
        wait_secs: Option<u64>,
    },
    /// The waypoints, with whether each is programmed and what uses it.
    List {
        /// One namespace (default: all).
        #[arg(short, long)]
        namespace: Option<String>,
        #[arg(short, long, value_enum, default_value_t)]
        output: Format,
    },
    /// One waypoint's conditions. Exits 1 unless it is Programmed.
    Status {
        name: String,
        #[arg(short, long, default_value = "default")]
        namespace: String,
    },
    /// Deletes a waypoint and the labels that pointed at it (what the controller created for it
    /// goes with it).
    Delete {
        name: String,
        #[arg(short, long, default_value = "default")]
        namespace: String,
    },
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// Sets (or removes, with `None`) one label with a merge patch.
fn label_patch(key: &str, value: Option<&str>) -> Patch<serde_json::Value> {
    Patch::Merge(serde_json::json!({"metadata": {"labels": {key: value}}}))
}

/// Runs `weft namespace …`.
pub(crate) fn namespace(command: &NamespaceCommand) -> Result<ExitCode> {
    runtime()?.block_on(async {
        let api: Api<Namespace> = Api::all(crate::cluster::client().await?);
        let (ns, value) = match command {
            NamespaceCommand::Enroll { namespace } => (namespace, Some(AMBIENT)),
            NamespaceCommand::Unenroll { namespace } => (namespace, None),
        };
        api.patch(
            ns,
            &PatchParams::default(),
            &label_patch(DATAPLANE_MODE, value),
        )
        .await
        .with_context(|| format!("labelling namespace {ns}"))?;
        match value {
            Some(_) => println!(
                "namespace/{ns} enrolled: its pods are in the mesh (running ones within a second)"
            ),
            None => {
                println!("namespace/{ns} unenrolled: its pods left the mesh and connect directly")
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// The `Programmed` condition of a Gateway: (status, message).
fn programmed(gw: &DynamicObject) -> (bool, String) {
    let condition = gw.data["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "Programmed");
    match condition {
        Some(c) => (
            c["status"] == "True",
            c["message"].as_str().unwrap_or_default().to_owned(),
        ),
        None => (false, "not judged by the controller yet".into()),
    }
}

/// Runs `weft waypoint …`.
pub(crate) fn waypoint(command: &WaypointCommand) -> Result<ExitCode> {
    runtime()?.block_on(async {
        let client = crate::cluster::client().await?;
        match command {
            WaypointCommand::Apply {
                target,
                service,
                namespace,
                name,
                wait_secs,
            } => {
                apply(
                    &client,
                    *target,
                    service.as_deref(),
                    namespace,
                    name,
                    *wait_secs,
                )
                .await
            }
            WaypointCommand::List { namespace, output } => {
                list(&client, namespace.as_deref(), *output).await
            }
            WaypointCommand::Status { name, namespace } => {
                let gw = gateways(&client, Some(namespace))
                    .get_opt(name)
                    .await?
                    .with_context(|| format!("no waypoint {namespace}/{name}"))?;
                let (ok, message) = programmed(&gw);
                println!(
                    "waypoint {namespace}/{name}: {}: {message}",
                    if ok { "Programmed" } else { "not programmed" }
                );
                Ok(if ok {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(1)
                })
            }
            WaypointCommand::Delete { name, namespace } => {
                delete_gateway(&client, namespace, name).await
            }
        }
    })
}

async fn apply(
    client: &kube::Client,
    target: For,
    service: Option<&str>,
    namespace: &str,
    name: &str,
    wait_secs: Option<u64>,
) -> Result<ExitCode> {
    if target == For::Service && service.is_none() {
        bail!("--for service needs the Service's name: weft waypoint apply --for service NAME");
    }
    let gateway = serde_json::json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "Gateway",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "gatewayClassName": "weft-waypoint",
            "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}],
        },
    });
    gateways(client, Some(namespace))
        .patch(name, &PatchParams::apply(MANAGER), &Patch::Apply(&gateway))
        .await
        .with_context(|| format!("applying Gateway {namespace}/{name}"))?;
    println!("gateway/{name} applied in {namespace} (class weft-waypoint)");
    match (target, service) {
        (For::Service, Some(svc)) => {
            let api: Api<Service> = Api::namespaced(client.clone(), namespace);
            api.patch(
                svc,
                &PatchParams::default(),
                &label_patch(USE_WAYPOINT, Some(name)),
            )
            .await
            .with_context(|| format!("labelling service {namespace}/{svc}"))?;
            println!("service/{svc} uses waypoint {name}");
        }
        _ => {
            let api: Api<Namespace> = Api::all(client.clone());
            api.patch(
                namespace,
                &PatchParams::default(),
                &label_patch(USE_WAYPOINT, Some(name)),
            )
            .await
            .with_context(|| format!("labelling namespace {namespace}"))?;
            println!("namespace/{namespace}: its services use waypoint {name}");
        }
    }
    let Some(secs) = wait_secs else {
        return Ok(ExitCode::SUCCESS);
    };
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(gw) = gateways(client, Some(namespace)).get_opt(name).await? {
            let (ok, message) = programmed(&gw);
            if ok {
                println!("waypoint {namespace}/{name} programmed: {message}");
                return Ok(ExitCode::SUCCESS);
            }
            if Instant::now() >= deadline {
                println!("waypoint {namespace}/{name} not programmed after {secs} s: {message}");
                return Ok(ExitCode::from(1));
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn list(client: &kube::Client, namespace: Option<&str>, output: Format) -> Result<ExitCode> {
    let found: Vec<DynamicObject> = gateways(client, namespace)
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|g| g.data["spec"]["gatewayClassName"] == "weft-waypoint")
        .collect();
    let services: Api<Service> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let labelled = services
        .list(&ListParams::default().labels(USE_WAYPOINT))
        .await?
        .items;
    let mut rows = Vec::new();
    let mut data = Vec::new();
    for gw in &found {
        let ns = gw.metadata.namespace.clone().unwrap_or_default();
        let name = gw.metadata.name.clone().unwrap_or_default();
        let users: Vec<String> = labelled
            .iter()
            .filter(|s| {
                s.metadata.namespace.as_deref() == Some(&ns)
                    && s.metadata.labels.as_ref().and_then(|l| l.get(USE_WAYPOINT)) == Some(&name)
            })
            .filter_map(|s| s.metadata.name.clone())
            .collect();
        let (ok, message) = programmed(gw);
        rows.push(vec![
            ns.clone(),
            name.clone(),
            if ok { "True" } else { "False" }.to_owned(),
            users.join(","),
            message.clone(),
        ]);
        data.push(serde_json::json!({
            "namespace": ns, "name": name, "programmed": ok, "services": users, "message": message,
        }));
    }
    match output {
        Format::Table => table(
            &["NAMESPACE", "NAME", "PROGRAMMED", "SERVICES", "MESSAGE"],
            &rows,
        ),
        format => print_data(format, &data)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// Deletes waypoint `namespace/name` and the labels that pointed at it.
pub(crate) async fn delete_gateway(
    client: &kube::Client,
    namespace: &str,
    name: &str,
) -> Result<ExitCode> {
    gateways(client, Some(namespace))
        .delete(name, &DeleteParams::default())
        .await
        .with_context(|| format!("deleting Gateway {namespace}/{name}"))?;
    println!("gateway/{name} deleted from {namespace} (its Deployment and Service go with it)");
    let services: Api<Service> = Api::namespaced(client.clone(), namespace);
    let selector = format!("{USE_WAYPOINT}={name}");
    for svc in services
        .list(&ListParams::default().labels(&selector))
        .await?
        .items
    {
        let svc_name = svc.metadata.name.unwrap_or_default();
        services
            .patch(
                &svc_name,
                &PatchParams::default(),
                &label_patch(USE_WAYPOINT, None),
            )
            .await?;
        println!("service/{svc_name} no longer uses waypoint {name}");
    }
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let uses = namespaces
        .get_opt(namespace)
        .await?
        .and_then(|n| n.metadata.labels)
        .and_then(|l| l.get(USE_WAYPOINT).cloned());
    if uses.as_deref() == Some(name) {
        namespaces
            .patch(
                namespace,
                &PatchParams::default(),
                &label_patch(USE_WAYPOINT, None),
            )
            .await?;
        println!("namespace/{namespace} no longer uses waypoint {name}");
    }
    Ok(ExitCode::SUCCESS)
}
