//! `weft check`: is Weft healthy on this cluster? A list of checks, each ✓ (fine), ‼ (works,
//! but not as it should) or × (broken), every one not ✓ with a hint and a link to its entry in
//! `docs/check.md`. `--pre` checks a cluster before install instead.
//!
//! Cluster facts come from the API (the current kubeconfig); what only the controller knows
//! (proxies connected, configs acknowledged, certificates issued) from its admin endpoint, which
//! listens on the controller pod's loopback: `kubectl port-forward -n weft-system
//! deploy/weft-controller 15014` makes it `127.0.0.1:15014`, the default of `--controller-admin`.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::Result;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Api;
use kube::api::{ListParams, PostParams};
use weft_controller::model::policy::PolicyKind;

use crate::cluster::admin_json;
use crate::output::{Format, Style, print_data};
use crate::report::{Outcome, Report};

/// The namespace Weft runs in.
const SYSTEM: &str = "weft-system";
/// A root closer than this to its expiry is a warning.
const ROOT_WARN: Duration = Duration::from_secs(30 * 24 * 3600);
/// Clock skew against the API server beyond this is a warning (certificates and leases are
/// judged by clocks).
const SKEW_WARN: Duration = Duration::from_secs(5);

/// `weft check` flags.
#[derive(clap::Args, Debug)]
pub(crate) struct CheckArgs {
    /// Check a cluster before installing: kernel features on this machine, a CNI config,
    /// permission to install.
    #[arg(long)]
    pre: bool,
    /// The controller's admin endpoint (after `kubectl port-forward -n weft-system
    /// deploy/weft-controller 15014`).
    #[arg(long, default_value = "127.0.0.1:15014")]
    controller_admin: SocketAddr,
    /// Where this node's CNI configuration lives (`--pre`).
    #[arg(long, default_value = "/etc/cni/net.d")]
    cni_conf_dir: std::path::PathBuf,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t)]
    output: Format,
}

/// Runs `weft check`: exit 0 when nothing failed (warnings allowed), 1 otherwise.
pub(crate) fn run(args: &CheckArgs) -> Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let report = runtime.block_on(async {
        let mut report = Report::default();
        let Some(client) = api_checks(&mut report).await else {
            return report;
        };
        if args.pre {
            crate::precheck::run(&client, &args.cni_conf_dir, &mut report).await;
        } else {
            installed(&client, args.controller_admin, &mut report).await;
        }
        report
    });
    match args.output {
        Format::Table => print_checks(&report, Style::detect()),
        format => print_data(format, &report.0)?,
    }
    Ok(if report.failed() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// The API is reachable, its version supported, and the clocks agree.
async fn api_checks(report: &mut Report) -> Option<kube::Client> {
    let client = match kube::Client::try_default().await {
        Ok(client) => client,
        Err(e) => {
            report.push(
                "Kubernetes API reachable",
                Outcome::Fail,
                format!("no usable kubeconfig: {e}"),
                "set KUBECONFIG or ~/.kube/config to the cluster's",
                "api-reachable",
            );
            return None;
        }
    };
    let request = http::Request::get("/version")
        .body(Vec::new())
        .expect("a static request");
    let response = match client.send(request.map(kube::client::Body::from)).await {
        Ok(response) => response,
        Err(e) => {
            report.push(
                "Kubernetes API reachable",
                Outcome::Fail,
                e.to_string(),
                "is the API server up, and does the kubeconfig point at it?",
                "api-reachable",
            );
            return None;
        }
    };
    report.ok("Kubernetes API reachable", "GET /version answered".into());
    let date = response
        .headers()
        .get(http::header::DATE)
        .and_then(|d| d.to_str().ok())
        .and_then(|d| httpdate::parse_http_date(d).ok());
    match client.apiserver_version().await {
        Ok(info) => {
            let minor: u32 = info.minor.trim_end_matches('+').parse().unwrap_or_default();
            if info.major == "1" && minor >= 29 {
                report.ok("Kubernetes version supported", info.git_version);
            } else {
                report.push(
                    "Kubernetes version supported",
                    Outcome::Fail,
                    format!("{} (Weft needs 1.29 or later)", info.git_version),
                    "upgrade the cluster",
                    "api-version",
                );
            }
        }
        Err(e) => report.push(
            "Kubernetes version supported",
            Outcome::Fail,
            e.to_string(),
            "the API server did not say its version",
            "api-version",
        ),
    }
    if let Some(server) = date {
        let now = SystemTime::now();
        let skew = now
            .duration_since(server)
            .or_else(|_| server.duration_since(now))
            .unwrap_or_default();
        // The Date header has whole seconds.
        if skew <= SKEW_WARN + Duration::from_secs(1) {
            report.ok(
                "clock skew",
                format!("{} s against the API server", skew.as_secs()),
            );
        } else {
            report.push(
                "clock skew",
                Outcome::Warn,
                format!("{} s against the API server", skew.as_secs()),
                "run NTP (chrony, systemd-timesyncd) here and on the nodes: certificates and leases are judged by clocks",
                "clock-skew",
            );
        }
    }
    Some(client)
}

/// The checks of an installed Weft.
async fn installed(client: &kube::Client, admin: SocketAddr, report: &mut Report) {
    crds(client, report).await;
    controller(client, report).await;
    controller_rbac(client, report).await;
    let root = root_certificate(client, report).await;
    match admin_json(admin, "/debug/proxies").await {
        Ok(proxies) => {
            let mesh = admin_json(admin, "/config_dump").await.unwrap_or_default();
            crate::checks_proxies::run(client, &proxies, &mesh, report).await;
        }
        Err(e) => report.push(
            "controller admin reachable",
            Outcome::Fail,
            format!("{admin}: {e}"),
            "kubectl port-forward -n weft-system deploy/weft-controller 15014 (or pass --controller-admin)",
            "controller-admin",
        ),
    }
    if let Some(root) = root {
        crate::checks_proxies::trust_bundles(client, &root, report).await;
    }
    crate::checks_proxies::waypoints(client, report).await;
}

/// Every policy API Weft reads has its CRD.
async fn crds(client: &kube::Client, report: &mut Report) {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let names: Vec<String> = match api.list(&ListParams::default()).await {
        Ok(list) => list
            .items
            .into_iter()
            .filter_map(|c| c.metadata.name)
            .collect(),
        Err(e) => {
            report.push(
                "CRDs present",
                Outcome::Fail,
                e.to_string(),
                "this user may not list CustomResourceDefinitions",
                "crds",
            );
            return;
        }
    };
    let custom: Vec<PolicyKind> = PolicyKind::ALL
        .into_iter()
        .filter(|k| k.is_custom())
        .collect();
    let missing: Vec<String> = custom
        .iter()
        .map(|k| {
            let api = k.api();
            format!("{}.{}", api.plural, api.group)
        })
        .filter(|name| !names.contains(name))
        .collect();
    if missing.is_empty() {
        report.ok("CRDs present", format!("all {} policy APIs", custom.len()));
    } else {
        report.push(
            "CRDs present",
            Outcome::Fail,
            format!(
                "missing: {} (objects of these kinds cannot be created, and Weft reads none)",
                missing.join(", ")
            ),
            "deploy/crds/install-missing.sh installs the ones the cluster lacks",
            "crds",
        );
    }
}

/// The controller's Deployment has a ready replica and one of them holds the Lease.
async fn controller(client: &kube::Client, report: &mut Report) {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), SYSTEM);
    match deployments.get_opt("weft-controller").await {
        Ok(Some(d)) => {
            let ready = d.status.and_then(|s| s.ready_replicas).unwrap_or(0);
            if ready > 0 {
                report.ok("controller ready", format!("{ready} replica(s) ready"));
            } else {
                report.push(
                    "controller ready",
                    Outcome::Fail,
                    "no replica of deployment/weft-controller is ready".into(),
                    "kubectl -n weft-system describe deploy/weft-controller; kubectl -n weft-system logs deploy/weft-controller",
                    "controller-ready",
                );
            }
        }
        Ok(None) => report.push(
            "controller ready",
            Outcome::Fail,
            "no deployment/weft-controller in weft-system".into(),
            "install Weft: kubectl apply -k deploy/overlays/production",
            "controller-ready",
        ),
        Err(e) => report.push(
            "controller ready",
            Outcome::Fail,
            e.to_string(),
            "this user may not read deployments in weft-system",
            "controller-ready",
        ),
    }
    let leases: Api<Lease> = Api::namespaced(client.clone(), SYSTEM);
    let lease = leases.get_opt("weft-controller").await.ok().flatten();
    let spec = lease.and_then(|l| l.spec);
    let holder = spec.as_ref().and_then(|s| s.holder_identity.clone());
    let fresh = spec.as_ref().is_some_and(|s| {
        let duration = i64::from(s.lease_duration_seconds.unwrap_or(15));
        s.renew_time.as_ref().is_some_and(|t| {
            let renewed = t.0.as_second();
            let now = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64);
            now - renewed <= duration
        })
    });
    match (holder, fresh) {
        (Some(holder), true) if !holder.is_empty() => {
            report.ok("leader elected", format!("{holder} holds the Lease"));
        }
        (holder, _) => report.push(
            "leader elected",
            Outcome::Fail,
            match holder {
                Some(h) if !h.is_empty() => format!("{h} holds the Lease but has not renewed it: it is gone or cut off"),
                _ => "nobody holds lease/weft-controller: no verdicts are written, no waypoints deployed".into(),
            },
            "a ready controller replica takes the Lease within 20 s; see its logs",
            "leader-elected",
        ),
    }
}

/// A permission: verb, API group, resource, and the namespace and name where the grant is
/// that narrow.
type Need<'a> = (&'a str, &'a str, &'a str, Option<(&'a str, &'a str)>);

/// What the controller's ServiceAccount may do, against what it needs.
async fn controller_rbac(client: &kube::Client, report: &mut Report) {
    let user = format!("system:serviceaccount:{SYSTEM}:weft-controller");
    let mut needed: Vec<Need<'_>> = vec![
        ("list", "", "pods", None),
        ("watch", "", "services", None),
        ("watch", "", "namespaces", None),
        ("watch", "discovery.k8s.io", "endpointslices", None),
        ("create", "authentication.k8s.io", "tokenreviews", None),
        (
            "update",
            "coordination.k8s.io",
            "leases",
            Some((SYSTEM, "weft-controller")),
        ),
        ("patch", "apps", "deployments", None),
    ];
    let policies: Vec<(String, String)> = PolicyKind::ALL
        .iter()
        .map(|k| (k.api().group.to_owned(), k.api().plural.to_owned()))
        .collect();
    for (group, plural) in &policies {
        needed.push(("watch", group, plural, None));
    }
    let sars: Api<SubjectAccessReview> = Api::all(client.clone());
    let mut denied = Vec::new();
    for (verb, group, resource, scope) in needed {
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(user.clone()),
                groups: Some(vec!["system:serviceaccounts".into()]),
                resource_attributes: Some(ResourceAttributes {
                    verb: Some(verb.into()),
                    group: Some(group.into()),
                    resource: Some(resource.into()),
                    namespace: scope.map(|(ns, _)| ns.to_owned()),
                    name: scope.map(|(_, name)| name.to_owned()),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        match sars.create(&PostParams::default(), &review).await {
            Ok(r) if r.status.as_ref().is_some_and(|s| s.allowed) => {}
            Ok(_) => denied.push(format!("{verb} {resource}")),
            Err(e) => {
                report.push(
                    "controller RBAC",
                    Outcome::Warn,
                    format!("could not ask: {e}"),
                    "checking another account's permissions needs create on subjectaccessreviews",
                    "controller-rbac",
                );
                return;
            }
        }
    }
    if denied.is_empty() {
        report.ok(
            "controller RBAC",
            "weft-controller may read every kind it watches and write what it owns".into(),
        );
    } else {
        report.push(
            "controller RBAC",
            Outcome::Fail,
            format!("weft-controller may not: {}", denied.join(", ")),
            "re-apply deploy/ (its ClusterRole grants these)",
            "controller-rbac",
        );
    }
}

/// The mesh root, from `weft-system/weft-root-cert`: present and not near expiry.
async fn root_certificate(client: &kube::Client, report: &mut Report) -> Option<String> {
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), SYSTEM);
    let pem = maps
        .get_opt("weft-root-cert")
        .await
        .ok()
        .flatten()
        .and_then(|m| m.data)
        .and_then(|d| d.get("root-cert.pem").cloned());
    let Some(pem) = pem else {
        report.push(
            "mesh root certificate",
            Outcome::Fail,
            "no configmap/weft-root-cert in weft-system".into(),
            "the leading controller publishes it; see its logs",
            "root-certificate",
        );
        return None;
    };
    match weft_core::identity::expiries("weft-root-cert", &pem) {
        Ok(expiries) if !expiries.is_empty() => {
            let first = expiries
                .iter()
                .min()
                .copied()
                .unwrap_or(SystemTime::UNIX_EPOCH);
            let left = first.duration_since(SystemTime::now()).unwrap_or_default();
            let days = left.as_secs() / 86_400;
            if left.is_zero() {
                report.push(
                    "mesh root certificate",
                    Outcome::Fail,
                    "expired: no certificate it signed is trusted".into(),
                    "rotate the CA (a new weft-ca Secret) and restart the controller",
                    "root-certificate",
                );
            } else if left < ROOT_WARN {
                report.push(
                    "mesh root certificate",
                    Outcome::Warn,
                    format!("expires in {days} days"),
                    "rotate the CA before it expires",
                    "root-certificate",
                );
            } else {
                report.ok(
                    "mesh root certificate",
                    format!("valid for {days} more days"),
                );
            }
        }
        _ => report.push(
            "mesh root certificate",
            Outcome::Fail,
            "configmap/weft-root-cert holds no readable certificate".into(),
            "the leading controller rewrites it; see its logs",
            "root-certificate",
        ),
    }
    Some(pem)
}

fn print_checks(report: &Report, style: Style) {
    for check in &report.0 {
        let mark = match check.outcome {
            Outcome::Ok => style.ok(),
            Outcome::Warn => style.warn(),
            Outcome::Fail => style.bad(),
        };
        println!("{mark} {}: {}", check.name, check.detail);
        if !check.hint.is_empty() {
            println!("    hint: {}", check.hint);
            println!("    see: {}", check.docs);
        }
    }
    let count = |o: Outcome| report.0.iter().filter(|c| c.outcome == o).count();
    println!(
        "\n{} passed, {} warnings, {} failed",
        count(Outcome::Ok),
        count(Outcome::Warn),
        count(Outcome::Fail)
    );
}
