//! Hostile peers against a node proxy's HBONE port, each attack followed by the same checks: a
//! legitimate client still reaches its server, the proxy is still running, and its file
//! descriptors and resident memory return to the baseline measured before the first attack.
//! The attacker dials from node 0's namespace (outside any pod, so nothing captures it) with a
//! certificate the mesh's CA issued: it gets as far as a real peer can. Needs root.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use weft_core::identity::TrustBundle;
use weft_core::netns::Netns;
use weft_testbed::hostile::{self, Usage};
use weft_testbed::{Pod, TestBed};

/// One peer's HBONE connections to one pod (the node proxy's `MAX_HBONE_PER_PEER`).
const PER_PEER: usize = 256;

struct Arena {
    bed: TestBed,
    client: Pod,
    web: Pod,
    rt: tokio::runtime::Runtime,
    netns: Arc<Netns>,
    cert: weft_core::identity::WorkloadCert,
    bundle: TrustBundle,
    baseline: Usage,
}

impl Arena {
    fn hbone(&self) -> SocketAddr {
        SocketAddr::new(self.web.ip.into(), 15008)
    }

    /// After an attack: legitimate traffic flows, the proxy runs, and what it holds returns to
    /// the baseline. Slack: 16 descriptors (the pool's and the log's come and go) and 24 MiB
    /// (the allocator keeps freed pages of its per-thread arenas; an attack that leaked per
    /// connection would hold hundreds of MiB after the ones here).
    fn survived(&mut self, attack: &str) -> Result<()> {
        let (ok, body, err) = self.bed.fetch(&self.client, &self.web, "x")?;
        ensure!(
            ok && body == "web",
            "after {attack}: client -> web failed: {err}"
        );
        ensure!(self.bed.proxy_running(1), "after {attack}: the proxy died");
        let now = self
            .bed
            .wait_proxy_back(1, self.baseline, 16, 24 * 1024, Duration::from_secs(20))
            .map_err(|e| e.context(format!("after {attack}")))?;
        eprintln!("after {attack}: {now:?} (baseline {:?})", self.baseline);
        Ok(())
    }
}

fn arena() -> Result<Arena> {
    let mut bed = TestBed::new("hostile", 2)?;
    let client = bed.pod("client").namespace("shop").on_node(0).add()?;
    let web = bed.pod("web").namespace("shop").on_node(1).add()?;
    bed.start()?;
    bed.serve_http(&web, 8080, &[("x", "web")])?;
    // Warm up, so the baseline includes the pools and buffers normal traffic creates.
    for _ in 0..20 {
        let (ok, _, err) = bed.fetch(&client, &web, "x")?;
        ensure!(ok, "client -> web: {err}");
    }
    let baseline = bed.proxy_usage(1)?;
    let netns = Arc::new(Netns::open(
        &Path::new("/run/netns").join(&bed.nodes()[0].netns),
    )?);
    let cert = weft_testbed::rogue::cert(bed.ca(), &client.identity(), None)?;
    let bundle = TrustBundle::from_pem("bed root", bed.ca().root_pem())?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    Ok(Arena {
        bed,
        client,
        web,
        rt,
        netns,
        cert,
        bundle,
        baseline,
    })
}

#[test]
fn hostile_peers_are_refused_and_the_node_proxy_returns_to_its_baseline() -> Result<()> {
    let mut a = arena()?;
    let web_id = a.web.identity();

    // 1. A flood of mTLS connections from one peer, held open: the peer gets its share of
    //    places and no more, and the client (another peer) is served meanwhile.
    let mut held = a.rt.block_on(async {
        let mut held = Vec::new();
        for _ in 0..PER_PEER + 100 {
            if let Ok(tls) = hostile::tls(&a.netns, a.hbone(), &a.cert, &a.bundle, &web_id).await {
                held.push(tls);
            }
        }
        held
    });
    // A place refused after the TLS handshake started shows as a closed session: count the
    // sessions the proxy still holds.
    let open = a.rt.block_on(async {
        let mut open = 0;
        for tls in &mut held {
            let mut byte = [0u8; 1];
            let read = tokio::time::timeout(Duration::from_millis(20), tls.read(&mut byte)).await;
            // Still open: nothing to read yet (timeout), or the server's HTTP/2 preface.
            if read.is_err() || matches!(read, Ok(Ok(n)) if n > 0) {
                open += 1;
            }
        }
        open
    });
    ensure!(
        (PER_PEER - 16..=PER_PEER).contains(&open),
        "{open} of {} connections from one peer held open",
        PER_PEER + 100
    );
    let (ok, _, err) = a.bed.fetch(&a.client, &a.web, "x")?;
    ensure!(ok, "the client was starved by the flood: {err}");
    drop(held);
    a.survived("a connection flood")?;

    // 2. Connections that never say anything are closed after the handshake timeout (10 s).
    let started = Instant::now();
    let silent = a.rt.block_on(async {
        let mut closed = 0;
        let mut conns = Vec::new();
        for _ in 0..50 {
            conns.push(a.netns.connect(a.hbone(), None).await?);
        }
        for mut c in conns {
            let mut buf = [0u8; 64];
            if let Ok(Ok(0) | Err(_)) =
                tokio::time::timeout(Duration::from_secs(20), c.read(&mut buf)).await
            {
                closed += 1;
            }
        }
        anyhow::Ok(closed)
    })?;
    ensure!(
        silent == 50,
        "{silent} of 50 silent connections were closed"
    );
    ensure!(
        started.elapsed() < Duration::from_secs(18),
        "silent connections were held {:?}",
        started.elapsed()
    );
    a.survived("silent connections")?;

    // 3. Garbage instead of a TLS hello.
    a.rt.block_on(async {
        for i in 0..50u32 {
            let mut c = a.netns.connect(a.hbone(), None).await?;
            let noise: Vec<u8> = (0..65_536u32)
                .map(|j| (j.wrapping_mul(2_654_435_761) ^ i) as u8)
                .collect();
            let _ = c.write_all(&noise).await;
            let mut buf = [0u8; 64];
            let read = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf)).await;
            ensure!(read.is_ok(), "a garbage connection was left hanging");
        }
        anyhow::Ok(())
    })?;
    a.survived("garbage")?;

    // 4. Rapid reset: streams opened and cancelled at once, thousands of them.
    let client_addr = SocketAddr::new(a.client.ip.into(), 40000);
    let target = SocketAddr::new(a.web.ip.into(), 8080);
    a.rt.block_on(async {
        let mut sender = hostile::h2(&a.netns, a.hbone(), &a.cert, &a.bundle, &web_id).await?;
        for _ in 0..2000 {
            let Ok(ready) = sender.clone().ready().await else {
                break; // the server closed the connection: also a fine answer
            };
            sender = ready;
            let Ok((response, mut stream)) =
                sender.send_request(hostile::connect_request(target, client_addr), false)
            else {
                break;
            };
            stream.send_reset(h2::Reason::CANCEL);
            drop(response);
        }
        anyhow::Ok(())
    })?;
    a.survived("rapid reset")?;

    // 5. A header list far over the limit (64 KiB), and CONNECTs to the proxy's own ports.
    a.rt.block_on(async {
        let sender = hostile::h2(&a.netns, a.hbone(), &a.cert, &a.bundle, &web_id).await?;
        let mut huge = hostile::connect_request(target, client_addr);
        huge.headers_mut()
            .insert("x-pad", http::HeaderValue::from_str(&"a".repeat(1 << 20))?);
        let answer = send(sender, huge).await;
        ensure!(answer != Some(200), "a 1 MiB header list was accepted");
        for forbidden in [
            SocketAddr::new(a.web.ip.into(), 15001),
            SocketAddr::new(a.web.ip.into(), 15008),
            "127.0.0.1:8080".parse()?,
        ] {
            let sender = hostile::h2(&a.netns, a.hbone(), &a.cert, &a.bundle, &web_id).await?;
            let answer = send(sender, hostile::connect_request(forbidden, client_addr)).await;
            ensure!(answer != Some(200), "a tunnel to {forbidden} was opened");
        }
        anyhow::Ok(())
    })?;
    a.survived("oversized headers and forbidden targets")?;
    Ok(())
}

/// Sends `request` and returns the status it got, if any.
async fn send(sender: h2::client::SendRequest<Bytes>, request: http::Request<()>) -> Option<u16> {
    let mut sender = sender.ready().await.ok()?;
    let (response, _stream) = sender.send_request(request, false).ok()?;
    let response = tokio::time::timeout(Duration::from_secs(5), response)
        .await
        .ok()?
        .ok()?;
    Some(response.status().as_u16())
}
