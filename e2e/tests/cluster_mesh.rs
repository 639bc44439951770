//! The mesh on a real API server: the test bed in Kubernetes mode plays kubelet (pods created
//! through the API, run as network-namespace pods, given their status), the controller
//! watches with its own ServiceAccount token, and node proxies prove their node with tokens
//! bound to a node-proxy pod. Without the Kubernetes binaries each test says so and does
//! nothing else. Needs root.

use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use weft_testbed::cluster::tier_assets;

#[test]
fn kubectl_label_namespace_makes_running_pods_mtls_within_1s_and_unlabel_returns_them() -> Result<()>
{
    let Some(assets) = tier_assets() else {
        return Ok(());
    };
    // Pods created through the API, run by the bed as a kubelet would; the controller
    // watches the API with its own token; node proxies prove their node with bound tokens.
    let mut bed = weft_testbed::TestBed::new("kubelabel", 2)?;
    bed.with_kubernetes(&assets);
    let client = bed
        .pod("client")
        .namespace("shop")
        .on_node(0)
        .not_enrolled()
        .add()?;
    let web = bed
        .pod("web")
        .namespace("shop")
        .on_node(1)
        .not_enrolled()
        .add()?;
    bed.start()?;
    bed.serve_http(&web, 8080, &[("x", "web")])?;
    let fetch =
        |bed: &weft_testbed::TestBed| -> Result<bool> { Ok(bed.fetch(&client, &web, "x")?.0) };
    ensure!(fetch(&bed)?, "direct request failed");
    ensure!(
        bed.mtls_connections_from(0)? == 0.0,
        "captured before the label"
    );

    let (log0, log1) = (bed.proxy_log(0).len(), bed.proxy_log(1).len());
    let labelled = Instant::now();
    bed.label_namespace("shop", true)?; // kubectl label namespace shop weft.io/dataplane-mode=ambient
    bed.wait_log(0, log0, "pod enrolled", Duration::from_secs(2))?;
    bed.wait_log(1, log1, "pod enrolled", Duration::from_secs(2))?;
    ensure!(fetch(&bed)?, "request after the label failed");
    let took = labelled.elapsed();
    ensure!(
        bed.mtls_connections_from(0)? == 1.0,
        "the request after the label was not mTLS"
    );
    ensure!(
        took < Duration::from_secs(1),
        "kubectl label to first mTLS request took {took:?}"
    );
    eprintln!("kubectl label -> mTLS request in {took:?}");

    let log0 = bed.proxy_log(0).len();
    bed.label_namespace("shop", false)?; // kubectl label namespace shop weft.io/dataplane-mode-
    bed.wait_log(0, log0, "pod released", Duration::from_secs(2))?;
    ensure!(fetch(&bed)?, "request after removing the label failed");
    ensure!(
        bed.mtls_connections_from(0)? == 1.0,
        "still captured after the label was removed"
    );
    // Out of the mesh and backing no service, the pods are no business of any node proxy:
    // neither holds them in its config any more.
    for node in 0..2 {
        let (_, dump) = bed.http_get_node(node, 15000, "/config_dump")?;
        let dump: serde_json::Value = serde_json::from_str(&dump)?;
        let held: Vec<&str> = dump["mesh"]["workloads"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|w| w["name"].as_str())
            .collect();
        ensure!(
            !held.contains(&"client") && !held.contains(&"web"),
            "node {node} still holds pods outside the mesh: {held:?}"
        );
    }
    Ok(())
}

#[test]
fn the_ca_refuses_a_token_for_another_node_another_account_or_another_audience() -> Result<()> {
    let Some(assets) = tier_assets() else {
        return Ok(());
    };
    let mut bed = weft_testbed::TestBed::new("kubetoken", 2)?;
    bed.with_kubernetes(&assets);
    let client = bed.pod("client").namespace("shop").on_node(0).add()?;
    let web = bed.pod("web").namespace("shop").on_node(1).add()?;
    bed.start()?;
    // node1's token is bound to node1's node-proxy pod: TokenReview names node1.
    let node1 = bed.node_credential(0)?;
    let own = bed.ask_for_cert(&node1, &client.identity())?;
    ensure!(
        own.as_ref()
            .is_ok_and(|pem| pem.contains("BEGIN CERTIFICATE")),
        "node1 could not get its own pod's identity: {own:?}"
    );
    let other = bed.ask_for_cert(&node1, &web.identity())?;
    ensure!(
        matches!(other, Err((tonic::Code::PermissionDenied, _))),
        "node1's token got a certificate for a pod on node2: {other:?}"
    );
    // Another ServiceAccount's token with the right audience is no node proxy's.
    let controller_token = bed.kubectl(&[
        "create",
        "token",
        "weft-controller",
        "-n",
        "weft-system",
        "--audience=weft",
    ])?;
    let as_controller = bed.ask_for_cert(controller_token.trim(), &client.identity())?;
    ensure!(
        matches!(
            as_controller,
            Err((
                tonic::Code::PermissionDenied | tonic::Code::Unauthenticated,
                _
            ))
        ),
        "the controller's account got a workload certificate: {as_controller:?}"
    );
    // The node proxy's own account, but a token for the API server's audience.
    let wrong_audience =
        bed.kubectl(&["create", "token", "weft-node-proxy", "-n", "weft-system"])?;
    let refused = bed.ask_for_cert(wrong_audience.trim(), &client.identity())?;
    ensure!(
        matches!(refused, Err((tonic::Code::Unauthenticated, _))),
        "a token for another audience was accepted: {refused:?}"
    );
    Ok(())
}

#[test]
fn the_guides_header_route_applied_with_kubectl_steers_traffic_through_the_waypoint() -> Result<()>
{
    let Some(assets) = tier_assets() else {
        return Ok(());
    };
    let mut bed = weft_testbed::TestBed::new("kuberoute", 2)?;
    bed.with_kubernetes(&assets);
    let client = bed
        .pod("productpage")
        .namespace("default")
        .service_account("bookinfo-productpage")
        .on_node(0)
        .add()?;
    let reviews = weft_testbed::fixtures::reviews_behind_waypoint(&mut bed)?;
    bed.start()?;
    bed.serve_testsrv(&reviews.v1, "v1")?;
    bed.serve_testsrv(&reviews.v2, "v2")?;
    let url = weft_testbed::fixtures::reviews_url("/reviews/1");
    let ask = |jason: bool| -> Result<String> {
        let mut argv = vec!["curl", "-sS", "--max-time", "5"];
        if jason {
            argv.extend(["-H", "end-user: jason"]);
        }
        argv.push(&url);
        Ok(String::from_utf8_lossy(&bed.exec(&client, &argv)?.stdout)
            .trim()
            .to_owned())
    };
    ensure!(
        ask(false)?.starts_with('v'),
        "reviews not reachable through the waypoint"
    );
    // The waypoint answering is the pod of the Deployment the controller applied (its
    // ReplicaSet made by kube-controller-manager), run by the bed's kubelet on its node.
    let pod = bed.kubectl(&[
        "get",
        "pods",
        "-n",
        "default",
        "-l",
        "gateway.networking.k8s.io/gateway-name=reviews-waypoint",
        "-o",
        "jsonpath={.items[0].metadata.ownerReferences[0].kind} {.items[0].spec.nodeName} {.items[0].status.conditions[?(@.type==\"Ready\")].status}",
    ])?;
    ensure!(
        pod == "ReplicaSet node2 True",
        "the waypoint's pod (owner, node, Ready): {pod:?}"
    );

    // kubectl apply of the guide's YAML, unchanged, in the namespace users apply it to.
    let guide = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/guide/istio-traffic-management.yaml");
    let applied = Instant::now();
    bed.kubectl(&["apply", "-n", "default", "-f", &guide.display().to_string()])?;
    let deadline = Instant::now() + Duration::from_secs(15);
    while ask(true)? != "v2" {
        ensure!(Instant::now() < deadline, "jason never reached v2");
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "kubectl apply -> header route in effect: {:?}",
        applied.elapsed()
    );
    for _ in 0..10 {
        ensure!(ask(true)? == "v2", "jason left v2");
        ensure!(ask(false)? == "v1", "everyone else must get v1");
    }
    let reason = bed.kubectl(&[
        "get",
        "virtualservice",
        "reviews",
        "-n",
        "default",
        "-o",
        "jsonpath={.status.conditions[?(@.type==\"Accepted\")].reason}",
    ])?;
    ensure!(
        reason == "Accepted",
        "the VirtualService's verdict: {reason:?}"
    );
    Ok(())
}

#[test]
fn the_guides_smi_traffic_split_applied_with_kubectl_sends_90_10() -> Result<()> {
    use weft_testbed::fixtures::{reviews_url, tally_count};
    let Some(assets) = tier_assets() else {
        return Ok(());
    };
    let mut bed = weft_testbed::TestBed::new("kubesplit", 2)?;
    bed.with_kubernetes(&assets);
    let (client, v1, v2, waypoint) = weft_testbed::fixtures::smi_reviews(&mut bed)?;
    bed.start()?;
    bed.serve_testsrv(&v1, "v1")?;
    bed.serve_testsrv(&v2, "v2")?;
    // Applied, the split reaches the waypoint as one more config update (before it the
    // apex's two pods share the traffic evenly, so the answers alone cannot tell).
    let updates = || bed.waypoint_updates(&waypoint);
    let before = updates();
    let guide = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/guide/linkerd-canary.yaml");
    bed.kubectl(&["apply", "-f", &guide.display().to_string()])?;
    let deadline = Instant::now() + Duration::from_secs(15);
    while updates() <= before {
        ensure!(
            Instant::now() < deadline,
            "the waypoint never got the TrafficSplit"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let url = reviews_url("/");
    let tally = bed.load(
        &client,
        &["--url", &url, "--requests", "2000", "--concurrency", "4"],
    )?;
    let v2_share = tally_count(&tally, "body", "v2") as f64 / 20.0;
    eprintln!("TrafficSplit 90/10 via kubectl: {v2_share:.1}% to v2");
    ensure!(tally_count(&tally, "status", "200") == 2000, "{tally}");
    // Binomial(2000, 0.1): mean 200, sd 13.4 (0.67 points); 7..=13% is 4.5 sd either side.
    ensure!((7.0..=13.0).contains(&v2_share), "v2 got {v2_share:.1}%");
    Ok(())
}
