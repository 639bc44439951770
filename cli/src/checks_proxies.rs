//! The checks of `weft check` that need the controller's view: every node proxy and waypoint
//! connected with its config acknowledged, each node's capture mode, the certificates the CA
//! issued, one trust bundle everywhere, waypoints programmed.

use std::collections::BTreeSet;
use std::time::SystemTime;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::ListParams;
use serde_json::Value;

use crate::cluster::{nodes, waypoint_gateways};
use crate::report::{Outcome, Report};

/// One check per node (its node proxy) and per waypoint stream, then the certificates.
pub(crate) async fn run(client: &kube::Client, proxies: &Value, mesh: &Value, report: &mut Report) {
    for node in nodes(client).await {
        let name = format!("node proxy on {node}");
        let Some(status) = proxies.get(&node) else {
            report.push(
                &name,
                Outcome::Fail,
                "never connected to the controller".into(),
                "kubectl -n weft-system get pods -o wide -l app.kubernetes.io/name=weft-node-proxy; then its logs",
                "node-proxy-connected",
            );
            continue;
        };
        stream_check(&name, status, report, true);
    }
    if let Some(all) = proxies.as_object() {
        for (name, status) in all.iter().filter(|(n, _)| n.starts_with("waypoint.")) {
            stream_check(
                &format!("waypoint {}", &name["waypoint.".len()..]),
                status,
                report,
                false,
            );
        }
    }
    certificates(proxies, mesh, report);
}

/// Connected, in sync (or the NACK's reason), and for a node proxy its capture mode.
fn stream_check(name: &str, status: &Value, report: &mut Report, node_proxy: bool) {
    let connected = status["connected"].as_bool().unwrap_or(false);
    let in_sync = status["in_sync"].as_bool().unwrap_or(false);
    if !connected {
        report.push(
            name,
            Outcome::Fail,
            "not connected to the controller (it was once)".into(),
            "its pod may be down or unable to reach the controller's Service; see its logs",
            "node-proxy-connected",
        );
        return;
    }
    if !in_sync {
        let detail = match status["last_nack"].as_str() {
            Some(why) => {
                format!("refused the latest config (NACK): {why}; it runs on its last good one")
            }
            None => "connected, the first config not acknowledged yet".into(),
        };
        report.push(
            name,
            Outcome::Fail,
            detail,
            "a NACK names what the proxy could not use; `weft analyze --cluster` shows the policy behind it",
            "config-acked",
        );
        return;
    }
    let resources = status["acked_resources"].as_u64().unwrap_or(0);
    let version = status["about"]["version"].as_str().unwrap_or("?");
    if !node_proxy {
        report.ok(
            name,
            format!("connected, config acknowledged ({resources} resources), version {version}"),
        );
        return;
    }
    let capture = status["about"]["capture"].as_str().unwrap_or("unknown");
    match (capture, status["about"]["capture_fallback"].as_str()) {
        ("ebpf", _) => report.ok(
            name,
            format!("connected, config acknowledged ({resources} resources), capture eBPF, version {version}"),
        ),
        ("nftables", Some(why)) => report.push(
            name,
            Outcome::Warn,
            format!("connected, config acknowledged; capture nftables because eBPF failed: {why}"),
            "eBPF capture needs Linux 5.x+ with BTF, a writable bpffs at /sys/fs/bpf and cgroup v2; nftables works but costs more CPU",
            "capture-mode",
        ),
        (mode, _) => report.ok(
            name,
            format!("connected, config acknowledged ({resources} resources), capture {mode} (as configured), version {version}"),
        ),
    }
}

/// The latest certificate issued for each identity still in use: none expired or about to.
fn certificates(proxies: &Value, mesh: &Value, report: &mut Report) {
    // Identities still wanted: each enrolled workload's on its node; waypoints' own.
    let wanted: BTreeSet<(String, String)> = mesh["mesh"]["workloads"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|w| w["protocol"] == "HBONE")
        .map(|w| {
            (
                w["node"].as_str().unwrap_or_default().to_owned(),
                format!(
                    "spiffe://{}/ns/{}/sa/{}",
                    mesh["mesh"]["trustDomain"]
                        .as_str()
                        .unwrap_or("cluster.local"),
                    w["namespace"].as_str().unwrap_or_default(),
                    w["serviceAccount"].as_str().unwrap_or_default()
                ),
            )
        })
        .collect();
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut count = 0;
    let mut earliest: Option<(u64, String)> = None;
    let mut expired = Vec::new();
    // Renewed at half-life, a certificate never has less than half its life left; under a
    // quarter, renewal has failed for a while.
    let mut overdue = Vec::new();
    for (caller, status) in proxies.as_object().into_iter().flatten() {
        for (identity, issued) in status["certificates"].as_object().into_iter().flatten() {
            let in_use = caller.starts_with("waypoint.")
                || wanted.contains(&(caller.clone(), identity.clone()));
            let (Some(from), Some(expires)) = (
                issued["issued_unix"].as_u64(),
                issued["expires_unix"].as_u64(),
            ) else {
                continue;
            };
            if !in_use {
                continue;
            }
            count += 1;
            if expires <= now {
                expired.push(format!("{identity} on {caller}"));
            } else if (expires - now) * 4 < expires.saturating_sub(from) {
                overdue.push(format!("{identity} on {caller} ({} s left)", expires - now));
            }
            if earliest.as_ref().is_none_or(|(t, _)| expires < *t) {
                earliest = Some((expires, format!("{identity} on {caller}")));
            }
        }
    }
    let name = "workload certificates";
    match earliest {
        _ if !expired.is_empty() => report.push(
            name,
            Outcome::Fail,
            format!("expired and not renewed: {}", expired.join(", ")),
            "the node proxy renews at half-life: is it connected, and may it reach the controller's CA?",
            "certificates",
        ),
        _ if !overdue.is_empty() => report.push(
            name,
            Outcome::Warn,
            format!("not renewed at half-life: {}", overdue.join(", ")),
            "the node proxy renews at half-life: is it connected, and may it reach the controller's CA?",
            "certificates",
        ),
        Some((t, who)) => report.ok(
            name,
            format!("{count} in use; the first to expire ({who}) has {} s left", t - now),
        ),
        None => report.ok(name, "none issued (no pod in the mesh yet)".into()),
    }
}

/// Every waypoint's bootstrap root is the mesh root.
pub(crate) async fn trust_bundles(client: &kube::Client, root: &str, report: &mut Report) {
    let maps: Api<ConfigMap> = Api::all(client.clone());
    let params = ListParams::default().labels("app.kubernetes.io/managed-by=weft");
    let maps = match maps.list(&params).await {
        Ok(list) => list.items,
        Err(e) => {
            report.push(
                "trust bundle consistent",
                Outcome::Warn,
                format!("could not list ConfigMaps: {e}"),
                "this user may not list ConfigMaps in every namespace",
                "trust-bundle",
            );
            return;
        }
    };
    let differ: Vec<String> = maps
        .iter()
        .filter(|m| {
            m.data
                .as_ref()
                .and_then(|d| d.get("root-cert.pem"))
                .is_some_and(|pem| pem.trim() != root.trim())
        })
        .map(|m| {
            format!(
                "{}/{}",
                m.metadata.namespace.as_deref().unwrap_or_default(),
                m.metadata.name.as_deref().unwrap_or_default()
            )
        })
        .collect();
    if differ.is_empty() {
        report.ok(
            "trust bundle consistent",
            format!("weft-root-cert and {} waypoint root(s) agree", maps.len()),
        );
    } else {
        report.push(
            "trust bundle consistent",
            Outcome::Fail,
            format!(
                "these hold another root than weft-system/weft-root-cert: {}",
                differ.join(", ")
            ),
            "the leading controller re-applies them; if the CA was replaced, restart the waypoints",
            "trust-bundle",
        );
    }
}

/// Every Gateway of class `weft-waypoint` says Programmed.
pub(crate) async fn waypoints(client: &kube::Client, report: &mut Report) {
    let gateways = match waypoint_gateways(client).await {
        Ok(gateways) => gateways,
        Err(e) => {
            report.push(
                "waypoints programmed",
                Outcome::Warn,
                format!("could not list Gateways: {e}"),
                "is the Gateway API CRD installed?",
                "waypoints",
            );
            return;
        }
    };
    let mut pending = Vec::new();
    for gw in &gateways {
        let programmed = gw.data["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["type"] == "Programmed");
        if programmed.is_none_or(|c| c["status"] != "True") {
            let why = programmed
                .and_then(|c| c["message"].as_str())
                .unwrap_or("no Programmed condition yet");
            pending.push(format!(
                "{}/{} ({why})",
                gw.metadata.namespace.as_deref().unwrap_or_default(),
                gw.metadata.name.as_deref().unwrap_or_default()
            ));
        }
    }
    if pending.is_empty() {
        report.ok(
            "waypoints programmed",
            format!("{} of {}", gateways.len(), gateways.len()),
        );
    } else {
        report.push(
            "waypoints programmed",
            Outcome::Fail,
            format!("not programmed: {}", pending.join(", ")),
            "kubectl get pods -l gateway.networking.k8s.io/gateway-name=<name> -n <namespace>: is its pod running?",
            "waypoints",
        );
    }
}
