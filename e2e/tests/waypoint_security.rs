//! Waypoint security end to end: AuthorizationPolicy at the waypoint, PeerAuthentication modes,
//! pods behind a waypoint refusing tunnels that skip it, the waypoint's own certificate, and
//! garbage on its HBONE port. Needs root.

use std::path::Path;

use anyhow::{Context, Result, ensure};
use weft_testbed::fixtures::{
    Bookinfo, REVIEWS_VIP, bookinfo, guide, reviews_url as url, tally_count as count,
};
use weft_testbed::{Pod, TestBed, metric_sum};

#[test]
fn authorization_policy_allows_get_from_productpage_and_denies_the_rest() -> Result<()> {
    let mut bed = TestBed::new("wpauthz", 2)?;
    bed.with_controller();
    let productpage = bed
        .pod("productpage")
        .namespace("default")
        .service_account("bookinfo-productpage")
        .on_node(0)
        .add()?;
    let other = bed
        .pod("ratings")
        .namespace("default")
        .service_account("bookinfo-ratings")
        .on_node(0)
        .add()?;
    let v1 = bed
        .pod("reviews-v1")
        .namespace("default")
        .service_account("reviews")
        .label("app", "reviews")
        .on_node(1)
        .add()?;
    let waypoint = bed.waypoint("reviews-waypoint", "default", 1)?;
    bed.service("reviews", "default", REVIEWS_VIP, 9080, 8080, &[&v1]);
    bed.use_waypoint("default", "reviews", Some("reviews-waypoint"))?;
    bed.start()?;
    bed.serve_testsrv(&v1, "v1")?;
    let b = Bookinfo {
        client: productpage.clone(),
        v1: v1.clone(),
        v2: v1.clone(),
        waypoint,
        bed,
    };
    b.apply("security.yaml", &guide("istio-security.yaml")?)?;
    let code = |pod: &Pod, method: &str| -> Result<(String, String)> {
        let out = b.bed.exec(
            pod,
            &[
                "curl",
                "-sS",
                "-X",
                method,
                "-w",
                "\n%{http_code}",
                "--max-time",
                "5",
                &url("/reviews/1"),
            ],
        )?;
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", ""));
        Ok((code.to_owned(), body.to_owned()))
    };
    let (get, get_body) = code(&productpage, "GET")?;
    let (post, post_body) = code(&productpage, "POST")?;
    let (stranger, stranger_body) = code(&other, "GET")?;
    eprintln!(
        "GET from productpage {get}; POST {post} ({post_body}); GET from ratings {stranger} ({stranger_body})"
    );
    ensure!(
        get == "200",
        "GET from productpage: {get} {get_body}\nwaypoint log:\n{}\nnode2 log (tail):\n{}",
        std::fs::read_to_string(b.bed.waypoint_log_path(&b.waypoint)).unwrap_or_default(),
        b.bed
            .proxy_log(1)
            .lines()
            .rev()
            .take(30)
            .collect::<Vec<_>>()
            .join("\n")
    );
    ensure!(
        post == "403" && post_body.contains("RBAC: access denied"),
        "POST: {post} {post_body}"
    );
    ensure!(
        stranger == "403" && stranger_body.contains("bookinfo-ratings"),
        "GET from another principal: {stranger} {stranger_body}"
    );
    Ok(())
}

#[test]
fn peer_authentication_strict_permissive_and_disable() -> Result<()> {
    let mut bed = TestBed::new("wppeer", 2)?;
    bed.with_controller();
    let outsider = bed
        .pod("outsider")
        .namespace("legacy")
        .not_enrolled()
        .on_node(0)
        .add()?;
    let client = bed.pod("client").namespace("default").on_node(0).add()?;
    let app = bed
        .pod("my-app-1")
        .namespace("default")
        .label("app", "my-app")
        .on_node(1)
        .add()?;
    let legacy = bed
        .pod("legacy-app-1")
        .namespace("default")
        .label("app", "legacy-app")
        .on_node(1)
        .add()?;
    bed.start()?;
    bed.serve_testsrv(&app, "my-app")?;
    bed.serve_testsrv(&legacy, "legacy")?;
    let get = |from: &Pod, to: &Pod| -> Result<bool> {
        let out = bed.exec(
            from,
            &[
                "curl",
                "-sS",
                "--max-time",
                "3",
                &format!("http://{}:8080/", to.ip),
            ],
        )?;
        Ok(out.status.success())
    };
    let docs: Vec<String> = guide("istio-mtls.yaml")?
        .split("\n---\n")
        .map(str::to_owned)
        .collect();
    let wait_for = |needle: &str| -> Result<()> {
        let mark = bed.proxy_log(1).len();
        let _ = bed.wait_log(1, mark, needle, std::time::Duration::from_secs(3));
        std::thread::sleep(std::time::Duration::from_millis(300));
        Ok(())
    };

    // STRICT (the guide's strict-mtls): plaintext from outside the mesh is refused; the
    // enrolled client still gets through over mTLS.
    bed.write_manifest("peer.yaml", &docs[0])?;
    wait_for("config update applied")?;
    ensure!(!get(&outsider, &app)?, "STRICT let plaintext through");
    ensure!(get(&client, &app)?, "mTLS client refused under STRICT");

    // PERMISSIVE: both.
    bed.write_manifest("peer.yaml", &docs[1])?;
    wait_for("config update applied")?;
    ensure!(get(&outsider, &app)?, "PERMISSIVE refused plaintext");
    ensure!(get(&client, &app)?, "PERMISSIVE refused mTLS");
    let plaintext_seen = metric_sum(
        &bed.metrics(1)?,
        "weft_tcp_connections_opened_total",
        &[
            ("reporter", "destination"),
            ("connection_security_policy", "none"),
        ],
    );
    ensure!(
        plaintext_seen >= 1.0,
        "PERMISSIVE plaintext not counted as none"
    );

    // DISABLE on legacy-app: plain TCP both ways, no HBONE to it; the source reports none.
    bed.write_manifest("peer.yaml", &docs[2])?;
    wait_for("config update applied")?;
    let before = bed.metrics(0)?;
    ensure!(
        get(&client, &legacy)?,
        "enrolled client to DISABLE workload failed"
    );
    ensure!(
        get(&outsider, &legacy)?,
        "plaintext to DISABLE workload failed"
    );
    let after = bed.metrics(0)?;
    let none = |m| {
        metric_sum(
            m,
            "weft_tcp_connections_opened_total",
            &[
                ("reporter", "source"),
                ("destination_workload", "legacy-app-1"),
                ("connection_security_policy", "none"),
            ],
        )
    };
    let mtls = |m| {
        metric_sum(
            m,
            "weft_tcp_connections_opened_total",
            &[
                ("destination_workload", "legacy-app-1"),
                ("connection_security_policy", "mutual_tls"),
            ],
        )
    };
    ensure!(
        none(&after) - none(&before) == 1.0,
        "DISABLE not reported as connection_security_policy=none"
    );
    ensure!(
        mtls(&after) == mtls(&before),
        "HBONE still used to the DISABLE workload"
    );
    Ok(())
}

#[test]
fn a_pod_behind_a_waypoint_refuses_tunnels_that_skip_it() -> Result<()> {
    use weft_core::hbone::HboneError;
    use weft_core::identity::TrustBundle;

    let b = bookinfo("wpbypass")?;
    // Through the mesh (even addressed to the pod's own IP) the request passes the waypoint.
    let direct_ip = format!("http://{}:8080/", b.v1.ip);
    let out = b
        .bed
        .exec(&b.client, &["curl", "-sS", "--max-time", "5", &direct_ip])?;
    ensure!(
        String::from_utf8_lossy(&out.stdout).trim() == "v1",
        "pod-IP request via the waypoint failed: {} {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let via_waypoint = metric_sum(
        &b.bed.waypoint_metrics(&b.waypoint)?,
        "weft_requests_total",
        &[
            ("destination_workload", "reviews-v1"),
            ("response_code", "200"),
        ],
    );
    ensure!(
        via_waypoint == 1.0,
        "the pod-IP request did not pass the waypoint"
    );

    // The client's own, valid certificate, but a tunnel straight to reviews-v1: refused (401).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // Dialled from node 1's namespace, outside the client pod (whose own connects are captured).
    let netns = std::sync::Arc::new(weft_core::netns::Netns::open(
        &Path::new("/run/netns").join(&b.bed.nodes()[0].netns),
    )?);
    let client_cert = weft_testbed::rogue::cert(b.bed.ca(), &b.client.identity(), None)?;
    let bundle = TrustBundle::from_pem("bed root", b.bed.ca().root_pem())?;
    let mark = b.bed.proxy_log(1).len();
    let refused = rt
        .block_on(weft_testbed::rogue::tunnel(
            &netns,
            &client_cert,
            &bundle,
            std::net::SocketAddr::new(b.v1.ip.into(), 8080),
            &b.v1.identity(),
            std::net::SocketAddr::new(b.client.ip.into(), 40000),
        ))
        .err()
        .context("a tunnel that skipped the waypoint was opened")?;
    ensure!(
        matches!(refused, HboneError::Refused { status, .. } if status == 401),
        "{refused}"
    );
    b.bed.wait_log(
        1,
        mark,
        "traffic must come through it",
        std::time::Duration::from_secs(2),
    )?;
    Ok(())
}

#[test]
fn a_deny_on_a_path_holds_for_every_spelling_of_it() -> Result<()> {
    let b = bookinfo("wppath")?;
    b.apply(
        "no-admin.yaml",
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-admin, namespace: default}
spec:
  selector: {matchLabels: {app: reviews}}
  action: DENY
  rules: [{to: [{operation: {paths: [/admin]}}]}]
",
    )?;
    let status = |path: &str| b.bed.http_status(&b.client, &url(path), &["--path-as-is"]);
    ensure!(status("/reviews/1")? == "200", "an ordinary request failed");
    for spelling in [
        "/admin",
        "/x/../admin",
        "//admin",
        "/./admin",
        "/%61dmin",
        "/x/%2E%2E/admin",
    ] {
        let code = status(spelling)?;
        ensure!(code == "403", "{spelling} answered {code}, not 403");
    }
    for ambiguous in ["/a%2Fadmin", "/a%5Cadmin"] {
        let code = status(ambiguous)?;
        ensure!(code == "400", "{ambiguous} answered {code}, not 400");
    }
    Ok(())
}

#[test]
fn the_waypoint_refuses_a_forwarded_address_the_peer_cannot_vouch_for() -> Result<()> {
    use weft_core::hbone::HboneError;
    use weft_core::identity::TrustBundle;

    let b = bookinfo("wpspoof")?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let netns = std::sync::Arc::new(weft_core::netns::Netns::open(
        &Path::new("/run/netns").join(&b.bed.nodes()[0].netns),
    )?);
    // The client's own, valid certificate, claiming to forward for reviews-v2 (another
    // identity), then for an address that is no workload at all: both refused (401), logged.
    let client_cert = weft_testbed::rogue::cert(b.bed.ca(), &b.client.identity(), None)?;
    let bundle = TrustBundle::from_pem("bed root", b.bed.ca().root_pem())?;
    let service = std::net::SocketAddr::new(REVIEWS_VIP.into(), 9080);
    let open_as = |client: std::net::Ipv4Addr| {
        rt.block_on(weft_testbed::rogue::tunnel_via(
            &netns,
            &client_cert,
            &bundle,
            b.waypoint.ip.into(),
            &b.waypoint.identity(),
            service,
            std::net::SocketAddr::new(client.into(), 40000),
        ))
    };
    let log = b.bed.waypoint_log_path(&b.waypoint);
    for spoofed in [b.v2.ip, std::net::Ipv4Addr::new(10, 10, 9, 9)] {
        let refused = open_as(spoofed)
            .err()
            .with_context(|| format!("a tunnel forwarding for {spoofed} was opened"))?;
        ensure!(
            matches!(refused, HboneError::Refused { status, .. } if status == 401),
            "{refused}"
        );
    }
    let text = std::fs::read_to_string(&log)?;
    ensure!(
        text.contains("is not a workload with identity"),
        "the refusal was not logged:\n{text}"
    );
    // The truth still opens a tunnel.
    ensure!(
        open_as(b.client.ip).is_ok(),
        "the client's own address was refused"
    );
    Ok(())
}

#[test]
fn a_waypoint_gets_its_own_certificate_from_the_controller_and_no_other() -> Result<()> {
    let b = bookinfo("wpca")?;
    let log = std::fs::read_to_string(b.bed.waypoint_log_path(&b.waypoint))?;
    ensure!(
        log.contains("certificate issued by the controller"),
        "the waypoint did not get its certificate from the CA:\n{log}"
    );
    let credential = std::fs::read_to_string(
        b.bed
            .dir()
            .join("waypoint.default.reviews-waypoint.credential"),
    )?;
    let own = b.bed.ask_for_cert(&credential, &b.waypoint.identity())?;
    ensure!(own.is_ok(), "the waypoint's own identity: {own:?}");
    let Err((code, message)) = b.bed.ask_for_cert(&credential, &b.v1.identity())? else {
        anyhow::bail!("a waypoint got a certificate for the workload it fronts");
    };
    ensure!(
        code == tonic::Code::PermissionDenied && message.contains("may have only"),
        "{code:?}: {message}"
    );
    Ok(())
}

#[test]
fn garbage_on_the_waypoint_port_is_refused_and_it_keeps_serving() -> Result<()> {
    use std::io::{Read, Write};

    let b = bookinfo("wpgarbage")?;
    let node = Path::new("/run/netns").join(&b.bed.nodes()[0].netns);
    let target = std::net::SocketAddr::new(b.waypoint.ip.into(), 15008);
    for payload in [
        &b"GET / HTTP/1.1\r\nHost: reviews\r\n\r\n"[..],
        &[0x16, 0x03, 0x01, 0xff, 0xff, 0x00, 0x13, 0x37, 0x42][..],
    ] {
        let payload = payload.to_vec();
        let closed = weft_testbed::in_netns(&node, move || -> Result<bool> {
            let mut stream =
                std::net::TcpStream::connect_timeout(&target, std::time::Duration::from_secs(2))?;
            stream.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
            stream.write_all(&payload)?;
            let mut buf = [0u8; 64];
            // The waypoint closes the connection (or sends a TLS alert, then closes).
            let mut total = 0;
            loop {
                match stream.read(&mut buf) {
                    Ok(0) => return Ok(true),
                    Ok(n) => total += n,
                    // Still open after 5 s: hung, not closed.
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) =>
                    {
                        return Ok(false);
                    }
                    // Reset by the waypoint: closed.
                    Err(_) => return Ok(true),
                }
                if total > 4096 {
                    return Ok(false);
                }
            }
        })??;
        ensure!(closed, "the waypoint kept a garbage connection open");
    }
    // The refusal is logged by the connection's task, after the socket closed: wait for it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    loop {
        let log = std::fs::read_to_string(b.bed.waypoint_log_path(&b.waypoint))?;
        if log.matches("HBONE connection refused").count() >= 2 {
            break;
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "no refusal logged:\n{log}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let tally = b
        .bed
        .load(&b.client, &["--url", &url("/"), "--requests", "20"])?;
    ensure!(
        count(&tally, "status", "200") == 20,
        "after garbage: {tally}"
    );
    Ok(())
}
