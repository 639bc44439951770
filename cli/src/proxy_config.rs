//! `weft proxy-config workloads|services|policies|certs NAME`: what one node proxy or waypoint
//! holds, from its own `/config_dump` (its admin port, 15000 on its loopback: `kubectl
//! port-forward -n weft-system pod/<node-proxy pod> 15000`, or the waypoint's pod), as tables.

use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::{Result, bail};
use serde_json::Value;

use crate::output::{Format, print_data, table};

/// What to show.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Section {
    /// Workloads the node proxy knows (node proxies only).
    Workloads,
    /// Services: addresses, ports, endpoints, waypoint (a waypoint: its services, routes and
    /// backends).
    Services,
    /// Authorization policies, by workload (a waypoint: by service).
    Policies,
    /// Certificates held, with their time left.
    Certs,
}

/// `weft proxy-config` flags.
#[derive(clap::Args, Debug)]
pub(crate) struct ProxyConfigArgs {
    #[arg(value_enum)]
    section: Section,
    /// The node (its node proxy) or the waypoint (`namespace/name`) expected at --admin; a
    /// different proxy there is an error, not a wrong answer.
    name: String,
    /// The proxy's admin endpoint (after a port-forward to its pod's 15000).
    #[arg(long, default_value = "127.0.0.1:15000")]
    admin: SocketAddr,
    #[arg(short, long, value_enum, default_value_t)]
    output: Format,
}

/// Runs `weft proxy-config`.
pub(crate) fn run(args: &ProxyConfigArgs) -> Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let dump = runtime
        .block_on(crate::cluster::admin_json(args.admin, "/config_dump"))
        .map_err(|e| {
            anyhow::anyhow!(
                "{}: {e:#} (port-forward the proxy's pod: kubectl port-forward -n NS pod/POD 15000)",
                args.admin
            )
        })?;
    let waypoint = dump["waypoint"].as_str();
    let holder = waypoint.or(dump["node"].as_str()).unwrap_or("?");
    if holder != args.name {
        bail!(
            "the proxy at {} is {holder}, not {}: port-forward the right pod",
            args.admin,
            args.name
        );
    }
    let (header, rows, data) = match (args.section, waypoint.is_some()) {
        (Section::Workloads, true) => {
            bail!("a waypoint holds services, not workloads: try `services` or `policies`")
        }
        (Section::Workloads, false) => workloads(&dump),
        (Section::Services, false) => node_services(&dump),
        (Section::Services, true) => waypoint_services(&dump),
        (Section::Policies, w) => policies(&dump, w),
        (Section::Certs, _) => certs(&dump),
    };
    match args.output {
        Format::Table => table(&header, &rows),
        format => print_data(format, &data)?,
    }
    Ok(ExitCode::SUCCESS)
}

type Section3 = (Vec<&'static str>, Vec<Vec<String>>, Value);

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn list(v: &Value) -> impl Iterator<Item = &Value> {
    v.as_array().into_iter().flatten()
}

fn workloads(dump: &Value) -> Section3 {
    let workloads = &dump["mesh"]["workloads"];
    let rows = list(workloads)
        .map(|w| {
            vec![
                s(&w["namespace"]),
                s(&w["name"]),
                s(&w["ip"]),
                s(&w["node"]),
                s(&w["protocol"]),
                match (w["protocol"].as_str(), w["mtls"]["permissive"] == true) {
                    (Some("HBONE"), true) => "PERMISSIVE".into(),
                    (Some("HBONE"), false) => "STRICT".into(),
                    _ => "-".into(),
                },
                list(&w["authz"]).count().to_string(),
            ]
        })
        .collect();
    (
        vec![
            "NAMESPACE",
            "NAME",
            "IP",
            "NODE",
            "PROTOCOL",
            "MTLS",
            "POLICIES",
        ],
        rows,
        workloads.clone(),
    )
}

fn ports(service: &Value) -> String {
    list(&service["ports"])
        .map(|p| format!("{}->{}", s(&p["port"]), s(&p["targetPort"])))
        .collect::<Vec<_>>()
        .join(",")
}

fn node_services(dump: &Value) -> Section3 {
    let services = &dump["mesh"]["services"];
    let rows = list(services)
        .map(|svc| {
            vec![
                s(&svc["namespace"]),
                s(&svc["name"]),
                s(&svc["vip"]),
                ports(svc),
                list(&svc["endpoints"]).map(s).collect::<Vec<_>>().join(","),
                s(&svc["waypoint"]["name"]),
            ]
        })
        .collect();
    (
        vec!["NAMESPACE", "NAME", "VIP", "PORTS", "ENDPOINTS", "WAYPOINT"],
        rows,
        services.clone(),
    )
}

fn waypoint_services(dump: &Value) -> Section3 {
    let services = &dump["config"]["services"];
    let rows = list(services)
        .map(|svc| {
            vec![
                s(&svc["namespace"]),
                s(&svc["name"]),
                s(&svc["vip"]),
                ports(svc),
                list(&svc["routes"])
                    .map(|r| s(&r["name"]))
                    .collect::<Vec<_>>()
                    .join(","),
                list(&svc["backends"])
                    .map(|b| s(&b["name"]))
                    .collect::<Vec<_>>()
                    .join(","),
            ]
        })
        .collect();
    (
        vec!["NAMESPACE", "NAME", "VIP", "PORTS", "ROUTES", "BACKENDS"],
        rows,
        services.clone(),
    )
}

fn policies(dump: &Value, waypoint: bool) -> Section3 {
    let holders = if waypoint {
        &dump["config"]["services"]
    } else {
        &dump["mesh"]["workloads"]
    };
    let mut rows = Vec::new();
    let mut data = Vec::new();
    for holder in list(holders) {
        let at = format!("{}/{}", s(&holder["namespace"]), s(&holder["name"]));
        for p in list(&holder["authz"]) {
            rows.push(vec![
                at.clone(),
                s(&p["name"]),
                s(&p["action"]),
                list(&p["rules"]).count().to_string(),
            ]);
            data.push(serde_json::json!({"at": at, "policy": p}));
        }
    }
    (
        vec![
            if waypoint { "SERVICE" } else { "WORKLOAD" },
            "POLICY",
            "ACTION",
            "RULES",
        ],
        rows,
        Value::from(data),
    )
}

fn certs(dump: &Value) -> Section3 {
    let certs = &dump["certificates"];
    let rows = list(certs)
        .map(|c| {
            let secs = c["expires_in_secs"].as_u64().unwrap_or(0);
            vec![
                s(&c["identity"]),
                if secs == 0 {
                    "EXPIRED".into()
                } else {
                    format!("{}h{:02}m{:02}s", secs / 3600, secs % 3600 / 60, secs % 60)
                },
            ]
        })
        .collect();
    (vec!["IDENTITY", "EXPIRES IN"], rows, certs.clone())
}
