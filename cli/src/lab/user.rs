//! `weft lab --manifests DIR`, run: the user's pods, services and waypoints built in the
//! bed, their policies handed to its controller, traffic to every service port.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use weft_testbed::{Pod, TestBed};

use super::manifests::{DATAPLANE_MODE, UserMesh};
use super::scenario::{Scenario, answer, apply};

/// First address of the VIPs given to Services without a `clusterIP`.
const VIP_BASE: [u8; 3] = [10, 96, 100];

/// Builds `mesh` in `bed` (not started), starts it, applies the passed-on objects, and sends
/// `requests` requests to every port of every service from one pod. What the policies refuse
/// is reported, not counted as the lab failing; a pod that cannot be built is.
pub(crate) fn run(
    bed: &mut TestBed,
    mesh: &UserMesh,
    requests: u32,
    from: Option<&str>,
) -> Result<Scenario> {
    for note in &mesh.notes {
        println!("  note: {note}");
    }
    let mut pods: BTreeMap<(String, String), Pod> = BTreeMap::new();
    for (i, p) in mesh.pods.iter().enumerate() {
        let mut builder = bed
            .pod(&p.name)
            .namespace(&p.namespace)
            .service_account(&p.service_account)
            .on_node(i % 2);
        for (k, v) in p.labels.iter().filter(|(k, _)| *k != DATAPLANE_MODE) {
            builder = builder.label(k, v);
        }
        if !mesh.enrolled(p) {
            builder = builder.not_enrolled();
        }
        let pod = builder
            .add()
            .with_context(|| format!("pod {}/{}", p.namespace, p.name))?;
        pods.insert((p.namespace.clone(), p.name.clone()), pod);
    }
    let mut vips = Vec::new();
    let mut next_vip = 1u8;
    for svc in &mesh.services {
        let vip = svc.cluster_ip.unwrap_or_else(|| {
            let [a, b, c] = VIP_BASE;
            next_vip = next_vip.wrapping_add(1);
            Ipv4Addr::new(a, b, c, next_vip)
        });
        let endpoints: Vec<&Pod> = mesh
            .endpoints(svc)
            .iter()
            .filter_map(|p| pods.get(&(p.namespace.clone(), p.name.clone())))
            .collect();
        // A named target port is the same number on every endpoint here (one template).
        let ports: Vec<(u16, u16)> = svc
            .ports
            .iter()
            .map(|(port, target)| {
                let number = mesh
                    .endpoints(svc)
                    .iter()
                    .find_map(|p| UserMesh::target_port(p, target))
                    .unwrap_or(*port);
                (*port, number)
            })
            .collect();
        bed.service_ports(&svc.name, &svc.namespace, vip, &ports, &endpoints);
        vips.push((svc, vip, ports));
    }
    let mut waypoints = Vec::new();
    for (i, (ns, name)) in mesh.waypoints.iter().enumerate() {
        waypoints.push(bed.waypoint(name, ns, (i + 1) % 2)?);
    }
    for svc in &mesh.services {
        if let Some(w) = &svc.waypoint {
            bed.use_waypoint(&svc.namespace, &svc.name, Some(w))?;
        }
    }
    bed.start().context("starting the node proxies")?;
    let testsrv = weft_testbed::bin_dir()?
        .join("weft-testsrv")
        .display()
        .to_string();
    for p in &mesh.pods {
        let pod = &pods[&(p.namespace.clone(), p.name.clone())];
        for port in mesh.serving_ports(p) {
            let listen = format!("0.0.0.0:{port}");
            bed.spawn_in(
                &pod.netns.clone(),
                &[&testsrv, "serve", "--name", &p.name, "--listen", &listen],
                &format!("app-{}-{}-{port}.log", p.namespace, p.name),
            )?;
            weft_testbed::wait_listening(
                &pod.netns_path(),
                std::net::SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            )?;
        }
    }
    // Your policies, as `kubectl apply` would send them; then give the controller a moment
    // to push them (a waypoint says when it has its update).
    let before: Vec<usize> = waypoints.iter().map(|w| bed.waypoint_updates(w)).collect();
    for (file, text) in &mesh.passed_on {
        apply(bed, &format!("user-{file}"), text)?;
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while !mesh.passed_on.is_empty()
        && Instant::now() < deadline
        && waypoints
            .iter()
            .zip(&before)
            .any(|(w, b)| bed.waypoint_updates(w) <= *b)
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(300));
    print!("{}", bed.describe());
    if !mesh.passed_on.is_empty() {
        println!("Your policies, as the controller judges them (weft analyze says the same):");
        // Judged among the lab's own objects (namespaces, pods, services) and yours.
        let mut documents = vec![("lab.yaml".to_owned(), bed.manifests())];
        documents.extend(mesh.passed_on.iter().cloned());
        for line in verdicts(&documents) {
            println!("  {line}");
        }
    }

    let client = match from {
        Some(spec) => {
            let (ns, name) = spec
                .split_once('/')
                .with_context(|| format!("--from {spec:?}: expected NAMESPACE/NAME"))?;
            pods.get(&(ns.to_owned(), name.to_owned()))
                .with_context(|| format!("--from {spec}: no such pod in your manifests"))?
        }
        None => mesh
            .pods
            .iter()
            .find(|p| mesh.enrolled(p))
            .or(mesh.pods.first())
            .and_then(|p| pods.get(&(p.namespace.clone(), p.name.clone())))
            .context("no pod to send from")?,
    };
    println!(
        "\nTraffic: {}/{} -> every service port ({requests} requests each, by VIP):",
        client.namespace, client.name
    );
    let mut first_url = None;
    for (svc, vip, ports) in &vips {
        for (port, _) in ports {
            let url = format!("http://{vip}:{port}/");
            first_url.get_or_insert_with(|| url.clone());
            let mut answers: BTreeMap<String, u32> = BTreeMap::new();
            for _ in 0..requests {
                *answers.entry(answer(bed, client, &url, None)?).or_default() += 1;
            }
            let summary: Vec<String> = answers
                .iter()
                .map(|(what, n)| format!("{n}× {what}"))
                .collect();
            println!(
                "  {}/{}:{port} ({url}): {}",
                svc.namespace,
                svc.name,
                summary.join(", ")
            );
        }
    }
    let targets: Vec<(String, String)> = vips
        .iter()
        .flat_map(|(svc, vip, ports)| {
            ports.iter().map(move |(port, _)| {
                (
                    format!("{}/{}:{port}", svc.namespace, svc.name),
                    format!("http://{vip}:{port}/"),
                )
            })
        })
        .collect();
    let prober = client.clone();
    Ok(Scenario {
        problems: Vec::new(),
        try_it: format!(
            "ip netns exec {} curl {}",
            client.netns,
            first_url.unwrap_or_else(|| "http://<service VIP>:<port>/".into())
        ),
        probe: Box::new(move |bed: &TestBed| {
            let parts: Vec<String> = targets
                .iter()
                .map(|(name, url)| {
                    let got = answer(bed, &prober, url, None).unwrap_or_else(|e| e.to_string());
                    format!("{name} {got}")
                })
                .collect();
            parts.join(" · ")
        }),
    })
}

/// One line per policy in the controller's manifest directory: its verdict and what is not
/// honoured, from the controller's own parsers and verdicts.
fn verdicts(documents: &[(String, String)]) -> Vec<String> {
    use weft_controller::model::status::{self, Reason};
    let mut objects = weft_controller::model::Objects::default();
    let mut rejected = Vec::new();
    for (file, text) in documents {
        let parsed = weft_controller::source::manifests::parse_documents(Path::new(file), text);
        for object in parsed.objects {
            objects.upsert(object);
        }
        rejected.extend(parsed.rejected);
    }
    status::verdicts(&objects, &rejected)
        .into_iter()
        .map(|v| {
            let mut line = format!("{} {}: {}", v.kind.kind(), v.key, v.reason.as_str());
            if v.reason == Reason::Invalid {
                line.push_str(&format!(" ({})", v.message));
            }
            for n in v.notes.iter().chain(&v.findings) {
                line.push_str(&format!("; {n}"));
            }
            line
        })
        .collect()
}
