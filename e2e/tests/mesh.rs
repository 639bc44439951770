//! End to end, in network namespaces, with the real node proxy, real CNI plugins, curl and
//! Python's http.server. Needs root.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::{Result, ensure};
use weft_testbed::{CaptureMode, TestBed, metric_sum, pcap};

weft_testbed::in_both_capture_modes!(
    pod_to_pod_across_nodes_is_mtls_on_the_wire,
    same_node_non_mesh_and_strict_plaintext,
);

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);

fn marker(bed: &TestBed) -> String {
    format!(
        "weft-e2e-secret-payload-{}",
        bed.dir()
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("x")
    )
}

fn pod_to_pod_across_nodes_is_mtls_on_the_wire(mode: CaptureMode) -> Result<()> {
    let mut bed = TestBed::new("mtls", 2)?;
    bed.capture_mode(mode);
    let client = bed.pod("client").namespace("shop").on_node(0).add()?;
    let web = bed.pod("web").namespace("shop").on_node(1).add()?;
    bed.service("web", "shop", VIP, 80, 8080, &[&web]);
    bed.start()?;
    let secret = marker(&bed);
    bed.serve_http(&web, 8080, &[("marker.txt", &secret)])?;
    let capture = bed.capture(0, "link.pcap")?;

    let (ok, body, err) = bed.curl(&client, &format!("http://{}:8080/marker.txt", web.ip))?;
    ensure!(ok && body == secret, "curl to the pod IP: {err} {body}");
    let (ok, body, err) = bed.curl(&client, &format!("http://{VIP}/marker.txt"))?;
    ensure!(
        ok && body == secret,
        "curl to the service VIP: {err} {body}"
    );
    bed.stop_helpers();
    for i in 0..2 {
        let active = metric_sum(
            &bed.metrics(i)?,
            "weft_capture_mode",
            &[("mode", mode.flag())],
        );
        ensure!(
            active == 1.0,
            "node {i} does not report capture mode {}",
            mode.flag()
        );
    }

    // The wire between the nodes carried TLS on 15008 and never the payload.
    let bytes = std::fs::read(&capture)?;
    let segments = pcap::tcp_segments(&bytes)?;
    let hbone: Vec<_> = segments
        .iter()
        .filter(|s| s.dst.port() == 15008 || s.src.port() == 15008)
        .collect();
    ensure!(!hbone.is_empty(), "no HBONE traffic captured");
    ensure!(
        hbone
            .iter()
            .any(|s| s.dst.port() == 15008 && s.payload.starts_with(&[0x16, 0x03])),
        "no TLS ClientHello to 15008 on the link"
    );
    ensure!(
        segments
            .iter()
            .all(|s| s.src.port() == 15008 || s.dst.port() == 15008 || s.payload.is_empty()),
        "traffic other than HBONE crossed the link"
    );
    let leaked = bytes.windows(secret.len()).any(|w| w == secret.as_bytes());
    ensure!(!leaked, "the payload marker is visible on the wire");
    ensure!(
        segments
            .iter()
            .all(|s| s.dst.port() != 8080 && s.src.port() != 8080),
        "plaintext port 8080 seen between nodes"
    );

    // Both node proxies counted both connections, with the right identities.
    let labels = [
        (
            "source_principal",
            "spiffe://cluster.local/ns/shop/sa/client",
        ),
        (
            "destination_principal",
            "spiffe://cluster.local/ns/shop/sa/web",
        ),
        ("connection_security_policy", "mutual_tls"),
    ];
    let src = bed.metrics(0)?;
    let opened = metric_sum(&src, "weft_tcp_connections_opened_total", &labels);
    ensure!(opened == 2.0, "source proxy counted {opened} connections");
    let sent = metric_sum(&src, "weft_tcp_received_bytes_total", &labels);
    ensure!(sent >= 2.0 * secret.len() as f64, "received bytes {sent}");
    let dst = bed.metrics(1)?;
    let opened = metric_sum(
        &dst,
        "weft_tcp_connections_opened_total",
        &[&labels[..], &[("reporter", "destination")]].concat(),
    );
    ensure!(
        opened == 2.0,
        "destination proxy counted {opened} connections"
    );
    let access = bed.wait_log(1, 0, "connection complete", Duration::from_secs(2))?;
    ensure!(
        access.contains("src_identity=spiffe://cluster.local/ns/shop/sa/client"),
        "{access}"
    );
    Ok(())
}

fn same_node_non_mesh_and_strict_plaintext(mode: CaptureMode) -> Result<()> {
    let mut bed = TestBed::new("paths", 2)?;
    bed.capture_mode(mode);
    let client = bed.pod("client").namespace("shop").on_node(0).add()?;
    let local = bed.pod("local").namespace("shop").on_node(0).add()?;
    let legacy = bed
        .pod("legacy")
        .namespace("old")
        .on_node(1)
        .not_enrolled()
        .add()?;
    bed.start()?;
    bed.serve_http(&local, 8080, &[("x", "same-node")])?;
    bed.serve_http(&legacy, 8080, &[("x", "legacy")])?;

    // Same node: captured and carried over HBONE inside the node, not bridged around the mesh.
    let (ok, body, err) = bed.curl(&client, &format!("http://{}:8080/x", local.ip))?;
    ensure!(ok && body == "same-node", "{err}");
    // Enrolled client to a pod outside the mesh: plain TCP, counted as such.
    let (ok, body, err) = bed.curl(&client, &format!("http://{}:8080/x", legacy.ip))?;
    ensure!(ok && body == "legacy", "{err}");
    let metrics = bed.metrics(0)?;
    ensure!(
        metric_sum(
            &metrics,
            "weft_tcp_connections_opened_total",
            &[
                ("reporter", "source"),
                ("destination_workload", "local"),
                ("connection_security_policy", "mutual_tls")
            ]
        ) == 1.0,
        "same-node connection not over mTLS"
    );
    ensure!(
        metric_sum(
            &metrics,
            "weft_tcp_connections_opened_total",
            &[
                ("reporter", "source"),
                ("destination_workload", "legacy"),
                ("connection_security_policy", "none")
            ]
        ) == 1.0,
        "connection to the non-mesh pod not counted as plain"
    );

    // A pod outside the mesh cannot reach an enrolled pod in plaintext (STRICT).
    let (ok, _, _) = bed.curl(&legacy, &format!("http://{}:8080/x", local.ip))?;
    ensure!(
        !ok,
        "plaintext from outside the mesh reached an enrolled pod"
    );
    bed.wait_log(0, 0, "plaintext connection refused", Duration::from_secs(2))?;
    let refused = metric_sum(
        &bed.metrics(0)?,
        "weft_tcp_connections_refused_total",
        &[
            ("reason", "mtls_required"),
            ("source_principal", "unknown"),
            ("destination_workload", "local"),
        ],
    );
    ensure!(refused >= 1.0, "the plaintext refusal was not counted");
    // The node's state as gauges: its two pods captured, their certificates' expiry ahead, the
    // HBONE connection the client's requests used still pooled.
    let metrics = bed.metrics(0)?;
    ensure!(
        metric_sum(&metrics, "weft_enrolled_pods", &[]) == 2.0,
        "enrolled pods: {}",
        metric_sum(&metrics, "weft_enrolled_pods", &[])
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs_f64();
    let expiry = metrics
        .iter()
        .filter(|(k, _)| k.starts_with("weft_certificate_expiration_timestamp_seconds{"))
        .map(|(_, v)| *v)
        .collect::<Vec<_>>();
    ensure!(
        !expiry.is_empty() && expiry.iter().all(|t| *t > now),
        "certificate expiry gauges: {expiry:?}"
    );
    ensure!(
        metric_sum(&metrics, "weft_hbone_pool_connections", &[]) >= 1.0,
        "no pooled HBONE connection after the client's request"
    );
    Ok(())
}

mod rogue {
    //! Clients that must be refused by a node proxy's HBONE port.

    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use weft_controller::ca::Ca;
    use weft_core::hbone::HboneError;
    use weft_core::identity::{SpiffeId, TrustBundle};
    use weft_core::netns::Netns;

    use weft_testbed::rogue::{cert, tunnel};

    #[test]
    fn hbone_port_fails_closed() -> Result<()> {
        let mut bed = TestBed::new("rogue", 2)?;
        let client = bed.pod("client").namespace("shop").on_node(0).add()?;
        let web = bed.pod("web").namespace("shop").on_node(1).add()?;
        bed.start()?;
        bed.serve_http(&web, 8080, &[("x", "ok")])?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        // The attacker sits in node 1's namespace, outside any pod.
        let netns = std::sync::Arc::new(Netns::open(
            &std::path::Path::new("/run/netns").join(&bed.nodes()[0].netns),
        )?);
        let bundle = TrustBundle::from_pem("bed root", bed.ca().root_pem())?;
        let web_id = web.identity();
        let server = SocketAddr::new(web.ip.into(), 8080);
        let client_addr = SocketAddr::new(client.ip.into(), 40000);
        let now = time::OffsetDateTime::now_utc();

        // A valid mesh certificate, but not the identity of the workload it claims to be.
        let intruder = cert(
            bed.ca(),
            &SpiffeId::new("cluster.local", "shop", "intruder"),
            None,
        )?;
        let mark = bed.proxy_log(1).len();
        let err = rt
            .block_on(tunnel(
                &netns,
                &intruder,
                &bundle,
                server,
                &web_id,
                client_addr,
            ))
            .err()
            .ok_or_else(|| anyhow::anyhow!("intruder got a tunnel"))?;
        ensure!(
            matches!(err, HboneError::Refused { status, .. } if status == 401),
            "{err}"
        );
        bed.wait_log(1, mark, "does not match the source", Duration::from_secs(2))?;

        // A certificate from another CA.
        let foreign = cert(&Ca::generate("cluster.local")?.0, &client.identity(), None)?;
        let mark = bed.proxy_log(1).len();
        ensure!(
            rt.block_on(tunnel(
                &netns,
                &foreign,
                &bundle,
                server,
                &web_id,
                client_addr
            ))
            .is_err()
        );
        bed.wait_log(
            1,
            mark,
            "not issued by this mesh's CA",
            Duration::from_secs(2),
        )?;

        // An expired certificate from the right CA.
        let expired = cert(
            bed.ca(),
            &client.identity(),
            Some((
                now - time::Duration::hours(30),
                now - time::Duration::hours(6),
            )),
        )?;
        let mark = bed.proxy_log(1).len();
        ensure!(
            rt.block_on(tunnel(
                &netns,
                &expired,
                &bundle,
                server,
                &web_id,
                client_addr
            ))
            .is_err()
        );
        bed.wait_log(1, mark, "expired", Duration::from_secs(2))?;

        // Plaintext HTTP, then random garbage, to 15008.
        for (payload, needle) in [
            (
                &b"GET / HTTP/1.1\r\nHost: web\r\n\r\n"[..],
                "did not speak TLS",
            ),
            (
                &[0x5a, 0x00, 0xff, 0x13, 0x37, 0x42, 0x99, 0x01, 0x02, 0x03][..],
                "HBONE connection refused",
            ),
        ] {
            let mark = bed.proxy_log(1).len();
            let netns = netns.clone();
            let answered = rt.block_on(async move {
                let mut tcp = netns
                    .connect(SocketAddr::new(web.ip.into(), 15008), None)
                    .await?;
                tcp.write_all(payload).await?;
                let mut buf = Vec::new();
                let _ =
                    tokio::time::timeout(Duration::from_secs(3), tcp.read_to_end(&mut buf)).await;
                Ok::<_, anyhow::Error>(buf)
            })?;
            ensure!(
                !String::from_utf8_lossy(&answered).contains("ok"),
                "garbage got an answer from the app"
            );
            bed.wait_log(1, mark, needle, Duration::from_secs(2))?;
        }

        // The proxy kept serving legitimate traffic throughout.
        ensure!(bed.proxy_running(1), "node proxy died");
        let (ok, body, err) = bed.curl(&client, &format!("http://{}:8080/x", web.ip))?;
        ensure!(
            ok && body == "ok",
            "legitimate traffic broken after attacks: {err}"
        );
        Ok(())
    }
}

#[test]
fn malformed_config_is_reported_and_the_last_good_one_kept() -> Result<()> {
    let mut bed = TestBed::new("badcfg", 2)?;
    let client = bed.pod("client").namespace("shop").on_node(0).add()?;
    let web = bed.pod("web").namespace("shop").on_node(1).add()?;
    bed.start()?;
    bed.serve_http(&web, 8080, &[("x", "ok")])?;
    let url = format!("http://{}:8080/x", web.ip);
    ensure!(bed.curl(&client, &url)?.0, "baseline request failed");
    let good = std::fs::read_to_string(bed.config_path())?;

    // Broken YAML, then a bad field: each is named, and traffic keeps flowing.
    for (text, field) in [
        ("workloads: [ {name: x\n".to_owned(), "mesh.yaml"),
        (
            good.replacen(&format!("ip: {}", web.ip), "ip: 10.10.2.999", 1),
            "workloads[1].ip",
        ),
        (
            good.replacen("serviceAccount", "serviceAcount", 1),
            "serviceAcount",
        ),
    ] {
        let mark = bed.proxy_log(0).len();
        bed.write_config(&text)?;
        let line = bed.wait_log(
            0,
            mark,
            "keeping the last good config",
            Duration::from_secs(3),
        )?;
        ensure!(line.contains("mesh.yaml") && line.contains(field), "{line}");
        let (ok, body, err) = bed.curl(&client, &url)?;
        ensure!(ok && body == "ok", "traffic broke on a bad config: {err}");
    }
    let mark = bed.proxy_log(0).len();
    bed.write_config(&good)?;
    bed.wait_log(0, mark, "config reloaded", Duration::from_secs(3))?;
    Ok(())
}

#[test]
fn proxy_refuses_to_start_on_a_malformed_config() -> Result<()> {
    let dir = std::env::temp_dir().join(format!("weft-badstart-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let config = dir.join("mesh.yaml");
    std::fs::write(
        &config,
        "workloads:\n  - {name: a, namespace: shop, serviceAccount: a, ip: not-an-ip, node: n1}\n",
    )?;
    let out = std::process::Command::new(weft_testbed::bin_dir()?.join("weft-node-proxy"))
        .args(["--node", "n1", "--config"])
        .arg(&config)
        .arg("--cert-dir")
        .arg(&dir)
        .args([
            "--metrics-addr",
            "127.0.0.1:0",
            "--readiness-addr",
            "127.0.0.1:0",
            "--admin-addr",
            "127.0.0.1:0",
        ])
        .output()?;
    std::fs::remove_dir_all(&dir)?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success(), "started on a bad config");
    ensure!(
        stderr.contains(&config.display().to_string()) && stderr.contains("workloads[0].ip"),
        "error does not name the file and field: {stderr}"
    );
    Ok(())
}

/// `--metrics-prefix istio`: the same metrics under Istio's names, for dashboards and queries
/// written for Istio.
#[test]
fn metrics_prefix_istio_names_the_metrics_as_istio_does() -> Result<()> {
    let mut bed = TestBed::new("istiopfx", 2)?;
    bed.proxy_args(&["--metrics-prefix", "istio"]);
    let client = bed.pod("client").namespace("shop").on_node(0).add()?;
    let web = bed.pod("web").namespace("shop").on_node(1).add()?;
    bed.start()?;
    bed.serve_http(&web, 8080, &[("x", "ok")])?;
    let (ok, _, err) = bed.curl(&client, &format!("http://{}:8080/x", web.ip))?;
    ensure!(ok, "{err}");
    let metrics = bed.metrics(0)?;
    let opened = metric_sum(
        &metrics,
        "istio_tcp_connections_opened_total",
        &[
            ("reporter", "source"),
            ("destination_workload", "web"),
            ("connection_security_policy", "mutual_tls"),
        ],
    );
    ensure!(
        opened == 1.0,
        "istio_tcp_connections_opened_total: {opened}"
    );
    ensure!(
        !metrics.keys().any(|k| k.starts_with("weft_")),
        "weft_ names beside istio_ ones"
    );
    Ok(())
}
