//! HBONE client and server over real TLS on loopback, with certificates from a test CA.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use weft_core::hbone::{self, ConnectRequest, HboneError, Pool, PoolConfig, PoolKey, Rejection};
use weft_core::identity::{SpiffeId, TrustBundle, WorkloadCert};
use weft_core::testing::TestCa;
use weft_core::tls;

fn id(sa: &str) -> SpiffeId {
    SpiffeId::new("cluster.local", "shop", sa)
}

fn issue(ca: &TestCa, sa: &str) -> anyhow::Result<WorkloadCert> {
    Ok(ca.issue(&id(sa))?)
}

/// An HBONE server that echoes on tunnels to port 7 and answers 503 to anything else. Returns
/// its address and a channel of the peer identities / rejections it saw.
async fn echo_server(
    cert: &WorkloadCert,
    bundle: &TrustBundle,
) -> anyhow::Result<(SocketAddr, tokio::sync::mpsc::UnboundedReceiver<String>)> {
    let config = Arc::new(tls::server_config(cert, bundle)?);
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (events, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let config = config.clone();
            let events = events.clone();
            tokio::spawn(async move {
                let mut incoming = match hbone::accept(tcp, config, Duration::from_secs(5)).await {
                    Ok(incoming) => incoming,
                    Err(e) => {
                        let _ = events.send(format!("refused: {e}"));
                        return;
                    }
                };
                let _ = events.send(format!("peer {}", incoming.peer()));
                while let Some(Ok(tunnel)) = incoming.next().await {
                    tokio::spawn(async move {
                        match tunnel.target() {
                            Ok(target) if target.destination.port() == 7 => {
                                let Ok(mut stream) = tunnel.open() else {
                                    return;
                                };
                                let mut buf = vec![0u8; 64 * 1024];
                                loop {
                                    match stream.read(&mut buf).await {
                                        Ok(0) | Err(_) => break,
                                        Ok(n) => {
                                            if stream.write_all(&buf[..n]).await.is_err() {
                                                break;
                                            }
                                        }
                                    }
                                }
                                let _ = stream.shutdown().await;
                            }
                            Ok(target) => tunnel.reject(&Rejection::Unavailable(format!(
                                "nothing listens on {}",
                                target.destination
                            ))),
                            Err(rejection) => tunnel.reject(&rejection),
                        }
                    });
                }
            });
        }
    });
    Ok((addr, rx))
}

fn request(port: u16) -> ConnectRequest {
    ConnectRequest {
        destination: SocketAddr::from(([10, 0, 0, 2], port)),
        client: "10.0.0.1:40000".parse().expect("addr"),
        traceparent: None,
        baggage: None,
    }
}

async fn open(
    pool: &Pool,
    client: &WorkloadCert,
    bundle: &TrustBundle,
    proxy: SocketAddr,
    expect: &str,
    port: u16,
) -> Result<hbone::H2Stream, HboneError> {
    let key = PoolKey {
        source: client.identity().clone(),
        proxy,
        destination: id(expect),
    };
    pool.connect(
        &key,
        || tls::client_config(client, id(expect), bundle),
        TcpStream::connect,
        &request(port),
    )
    .await
}

#[tokio::test]
async fn many_streams_share_one_mtls_connection() -> anyhow::Result<()> {
    let ca = TestCa::new("mesh")?;
    let bundle = TrustBundle::from_pem("root", ca.root_pem())?;
    let (client, server) = (issue(&ca, "client")?, issue(&ca, "web")?);
    let (addr, mut events) = echo_server(&server, &bundle).await?;
    let pool = Pool::new(PoolConfig::default());

    let mut tasks = Vec::new();
    let pool = Arc::new(pool);
    let client = Arc::new(client);
    for i in 0..40u32 {
        let (pool, client, bundle) = (pool.clone(), client.clone(), bundle.clone());
        tasks.push(tokio::spawn(async move {
            let mut stream = open(&pool, &client, &bundle, addr, "web", 7).await?;
            // Bigger than the stream window so flow control is exercised.
            let payload: Vec<u8> = (0..(5 * 1024 * 1024 + i as usize))
                .map(|b| (b % 251) as u8)
                .collect();
            let (mut rd, mut wr) = tokio::io::split(stream_box(&mut stream));
            let send = async {
                wr.write_all(&payload).await?;
                wr.shutdown().await
            };
            let mut echoed = Vec::new();
            let recv = rd.read_to_end(&mut echoed);
            let (sent, received) = tokio::join!(send, recv);
            sent?;
            received?;
            anyhow::ensure!(echoed == payload, "stream {i}: echo differs");
            Ok::<_, anyhow::Error>(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    assert_eq!(pool.connections(), 1, "all streams on one connection");
    assert_eq!(
        events.recv().await.as_deref(),
        Some("peer spiffe://cluster.local/ns/shop/sa/client")
    );
    Ok(())
}

/// What dialling a new connection does in a test.
#[derive(Clone, Copy)]
enum NewConn {
    Connect,
    Refused,
    Hangs,
}

/// A pool spreading tunnels over `spread` connections to an echo server, counting its dials.
struct Spread {
    pool: Pool,
    key: PoolKey,
    client: WorkloadCert,
    bundle: TrustBundle,
    dials: std::sync::atomic::AtomicUsize,
}

impl Spread {
    async fn new(spread: usize) -> anyhow::Result<Self> {
        let ca = TestCa::new("mesh")?;
        let bundle = TrustBundle::from_pem("root", ca.root_pem())?;
        let (client, server) = (issue(&ca, "client")?, issue(&ca, "web")?);
        let (addr, _events) = echo_server(&server, &bundle).await?;
        let key = PoolKey {
            source: client.identity().clone(),
            proxy: addr,
            destination: id("web"),
        };
        let pool = Pool::new(PoolConfig {
            spread,
            ..PoolConfig::default()
        });
        Ok(Self {
            pool,
            key,
            client,
            bundle,
            dials: Default::default(),
        })
    }

    /// Opens a tunnel to the echo port and checks that it echoes. A new connection's dial
    /// does what `dial` says.
    async fn tunnel(&self, dial: NewConn) -> anyhow::Result<hbone::H2Stream> {
        let mut stream = self
            .pool
            .connect(
                &self.key,
                || tls::client_config(&self.client, id("web"), &self.bundle),
                |addr| {
                    self.dials
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    async move {
                        match dial {
                            NewConn::Connect => TcpStream::connect(addr).await,
                            NewConn::Refused => Err(std::io::ErrorKind::ConnectionRefused.into()),
                            NewConn::Hangs => std::future::pending().await,
                        }
                    }
                },
                &request(7),
            )
            .await?;
        stream.write_all(b"ping").await?;
        let mut buf = [0u8; 4];
        stream.read_exact(&mut buf).await?;
        anyhow::ensure!(&buf == b"ping", "the tunnel did not echo");
        Ok(stream)
    }

    fn dials(&self) -> usize {
        self.dials.load(std::sync::atomic::Ordering::Relaxed)
    }
}

#[tokio::test]
async fn busy_tunnels_to_one_peer_are_spread_over_connections() -> anyhow::Result<()> {
    let spread = Spread::new(3).await?;
    let mut open_now = Vec::new();
    for n in 1..=5 {
        open_now.push(spread.tunnel(NewConn::Connect).await?);
        let stats = spread.pool.stats();
        assert_eq!(stats.streams, n);
        assert_eq!(
            stats.connections,
            n.min(3),
            "each of the first 3 tunnels gets a connection of its own, the next share them"
        );
    }
    assert_eq!(
        spread.dials(),
        3,
        "a connection was dialled past the spread"
    );
    // All closed: the next tunnels reuse the connections there are, dialling none.
    open_now.clear();
    for _ in 0..4 {
        open_now.push(spread.tunnel(NewConn::Connect).await?);
    }
    assert_eq!(spread.pool.stats().connections, 3);
    assert_eq!(spread.dials(), 3);
    Ok(())
}

#[tokio::test]
async fn a_failed_extra_connection_leaves_tunnels_on_the_open_one() -> anyhow::Result<()> {
    let spread = Spread::new(4).await?;
    let first = spread.tunnel(NewConn::Connect).await?;
    // The peer takes no new connection now: a second tunnel still opens, on the first one.
    let second = spread.tunnel(NewConn::Refused).await?;
    assert_eq!(spread.dials(), 2, "no further connection was tried");
    assert_eq!(spread.pool.stats().connections, 1);
    assert_eq!(spread.pool.stats().streams, 2);
    // With no connection open at all, a refused dial is the tunnel's error.
    drop((first, second));
    let alone = Spread::new(4).await?;
    assert!(
        alone.tunnel(NewConn::Refused).await.is_err(),
        "a tunnel opened with no connection to carry it"
    );
    Ok(())
}

#[tokio::test]
async fn an_extra_connection_that_hangs_delays_one_tunnel_briefly_then_spreading_pauses()
-> anyhow::Result<()> {
    let spread = Spread::new(4).await?;
    let _first = spread.tunnel(NewConn::Connect).await?;
    // The peer takes the first connection and never answers a second: the tunnel waits for
    // the short spreading timeout (1 s), not the connect timeout (10 s), then shares the first.
    let started = std::time::Instant::now();
    let _second = spread.tunnel(NewConn::Hangs).await?;
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_secs(5),
        "a tunnel waited {waited:?} for a connection it did not need"
    );
    assert_eq!(spread.dials(), 2);
    // Spreading pauses: the next tunnel dials nothing and waits for nothing.
    let _third = spread.tunnel(NewConn::Hangs).await?;
    assert_eq!(
        spread.dials(),
        2,
        "spreading was tried again right after it failed"
    );
    assert_eq!(spread.pool.stats().connections, 1);
    assert_eq!(spread.pool.stats().streams, 3);
    Ok(())
}

fn stream_box(s: &mut hbone::H2Stream) -> &mut hbone::H2Stream {
    s
}

#[tokio::test]
async fn refused_tunnels_report_the_status() -> anyhow::Result<()> {
    let ca = TestCa::new("mesh")?;
    let bundle = TrustBundle::from_pem("root", ca.root_pem())?;
    let (client, server) = (issue(&ca, "client")?, issue(&ca, "web")?);
    let (addr, _events) = echo_server(&server, &bundle).await?;
    let pool = Pool::new(PoolConfig::default());
    let err = open(&pool, &client, &bundle, addr, "web", 8080)
        .await
        .err()
        .expect("503");
    assert!(
        matches!(err, HboneError::Refused { status, .. } if status == 503),
        "{err}"
    );
    let err = open(&pool, &client, &bundle, addr, "web", 15008)
        .await
        .err()
        .expect("400");
    assert!(
        matches!(err, HboneError::Refused { status, .. } if status == 400),
        "{err}"
    );
    // The connection survives refused streams.
    let mut ok = open(&pool, &client, &bundle, addr, "web", 7).await?;
    ok.write_all(b"ping").await?;
    let mut buf = [0u8; 4];
    ok.read_exact(&mut buf).await?;
    assert_eq!(&buf, b"ping");
    Ok(())
}

#[tokio::test]
async fn client_refuses_a_server_with_another_identity() -> anyhow::Result<()> {
    let ca = TestCa::new("mesh")?;
    let bundle = TrustBundle::from_pem("root", ca.root_pem())?;
    let (client, impostor) = (issue(&ca, "client")?, issue(&ca, "impostor")?);
    let (addr, _events) = echo_server(&impostor, &bundle).await?;
    let pool = Pool::new(PoolConfig::default());
    let err = open(&pool, &client, &bundle, addr, "web", 7)
        .await
        .err()
        .expect("must refuse");
    let text = err.to_string();
    assert!(matches!(err, HboneError::Tls { .. }), "{text}");
    assert!(
        text.contains("sa/impostor") && text.contains("sa/web"),
        "{text}"
    );
    Ok(())
}

#[tokio::test]
async fn server_refuses_foreign_ca_expired_and_plaintext() -> anyhow::Result<()> {
    let ca = TestCa::new("mesh")?;
    let bundle = TrustBundle::from_pem("root", ca.root_pem())?;
    let server = issue(&ca, "web")?;
    let (addr, mut events) = echo_server(&server, &bundle).await?;
    let pool = Pool::new(PoolConfig::default());

    // A client whose certificate comes from another CA.
    let other = TestCa::new("foreign")?;
    let foreign = issue(&other, "client")?;
    assert!(
        open(&pool, &foreign, &bundle, addr, "web", 7)
            .await
            .is_err()
    );
    let event = events.recv().await.unwrap_or_default();
    assert!(event.contains("not issued by this mesh's CA"), "{event}");

    // An expired certificate from the right CA.
    let now = time::OffsetDateTime::now_utc();
    let expired = ca.issue_valid(
        &id("client"),
        now - time::Duration::hours(48),
        now - time::Duration::hours(24),
    )?;
    assert!(
        open(&pool, &expired, &bundle, addr, "web", 7)
            .await
            .is_err()
    );
    let event = events.recv().await.unwrap_or_default();
    assert!(event.contains("expired"), "{event}");

    // Plaintext HTTP to the HBONE port.
    let mut tcp = TcpStream::connect(addr).await?;
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await?;
    let event = events.recv().await.unwrap_or_default();
    assert!(event.contains("did not speak TLS"), "{event}");
    Ok(())
}

#[tokio::test]
async fn a_header_list_over_64_kib_is_refused_and_the_connection_keeps_serving()
-> anyhow::Result<()> {
    let ca = TestCa::new("mesh")?;
    let bundle = TrustBundle::from_pem("root", ca.root_pem())?;
    let (client, server) = (issue(&ca, "client")?, issue(&ca, "web")?);
    let (addr, _events) = echo_server(&server, &bundle).await?;
    let pool = Pool::new(PoolConfig::default());
    let key = PoolKey {
        source: client.identity().clone(),
        proxy: addr,
        destination: id("web"),
    };
    let huge = ConnectRequest {
        traceparent: Some("x".repeat(200 * 1024)),
        ..request(7)
    };
    let refused = pool
        .connect(
            &key,
            || tls::client_config(&client, id("web"), &bundle),
            TcpStream::connect,
            &huge,
        )
        .await;
    assert!(refused.is_err(), "a 200 KiB header list was accepted");
    // An ordinary tunnel still opens and echoes.
    let mut stream = open(&pool, &client, &bundle, addr, "web", 7).await?;
    stream.write_all(b"ping").await?;
    let mut buf = [0u8; 4];
    stream.read_exact(&mut buf).await?;
    assert_eq!(&buf, b"ping");
    Ok(())
}

#[tokio::test]
async fn the_pool_forgets_peers_whose_connections_went_idle() -> anyhow::Result<()> {
    let ca = TestCa::new("mesh")?;
    let bundle = TrustBundle::from_pem("root", ca.root_pem())?;
    let (client, server) = (issue(&ca, "client")?, issue(&ca, "web")?);
    let (addr, _events) = echo_server(&server, &bundle).await?;
    let pool = Pool::new(PoolConfig {
        idle_timeout: Duration::from_millis(50),
        ..PoolConfig::default()
    });
    let mut stream = open(&pool, &client, &bundle, addr, "web", 7).await?;
    stream.write_all(b"x").await?;
    let mut one = [0u8; 1];
    stream.read_exact(&mut one).await?;
    pool.sweep();
    assert_eq!(pool.peers(), 1, "a connection in use is kept");
    drop(stream);
    tokio::time::sleep(Duration::from_millis(120)).await;
    pool.sweep();
    assert_eq!(pool.peers(), 0, "an idle peer is forgotten");
    Ok(())
}

#[tokio::test]
async fn a_connection_left_idle_is_closed_by_the_server() -> anyhow::Result<()> {
    let ca = TestCa::new("mesh")?;
    let bundle = TrustBundle::from_pem("root", ca.root_pem())?;
    let (client, server) = (issue(&ca, "client")?, issue(&ca, "web")?);
    let config = Arc::new(tls::server_config(&server, &bundle)?);
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (closed_tx, closed_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let Ok((tcp, _)) = listener.accept().await else {
            return;
        };
        let Ok(mut incoming) = hbone::accept(tcp, config, Duration::from_secs(5)).await else {
            return;
        };
        let open = hbone::OpenTunnels::default();
        let idle = Duration::from_millis(300);
        while let Some(Ok(tunnel)) = incoming.next_unless_idle(idle, &open).await {
            let open = open.clone();
            tokio::spawn(async move {
                if let Ok(mut stream) = tunnel.open() {
                    let mut buf = [0u8; 1];
                    while let Ok(1) = stream.read(&mut buf).await {
                        let _ = stream.write_all(&buf).await;
                    }
                }
                drop(open);
            });
        }
        let _ = incoming.closed().await;
        let _ = closed_tx.send(());
    });
    let pool = Pool::new(PoolConfig::default());
    let mut stream = open(&pool, &client, &bundle, addr, "web", 7).await?;
    // A tunnel in use keeps the connection however long it is quiet.
    tokio::time::sleep(Duration::from_millis(700)).await;
    stream.write_all(b"x").await?;
    let mut one = [0u8; 1];
    stream.read_exact(&mut one).await?;
    drop(stream);
    // With no tunnel left, the server closes it after the idle time.
    tokio::time::timeout(Duration::from_secs(3), closed_rx)
        .await
        .map_err(|_| anyhow::anyhow!("the idle connection was not closed"))??;
    Ok(())
}

/// A peer whose first connection takes tunnels and never answers them; later connections
/// echo as [`echo_server`] does.
async fn server_silent_on_its_first_connection(
    cert: &WorkloadCert,
    bundle: &TrustBundle,
) -> anyhow::Result<SocketAddr> {
    let config = Arc::new(tls::server_config(cert, bundle)?);
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        for n in 0.. {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let config = config.clone();
            tokio::spawn(async move {
                let Ok(mut incoming) = hbone::accept(tcp, config, Duration::from_secs(5)).await
                else {
                    return;
                };
                let mut held = Vec::new();
                while let Some(Ok(tunnel)) = incoming.next().await {
                    if n == 0 {
                        held.push(tunnel);
                        continue;
                    }
                    let Ok(mut stream) = tunnel.open() else {
                        return;
                    };
                    tokio::spawn(async move {
                        let mut buf = [0u8; 1024];
                        while let Ok(n) = stream.read(&mut buf).await {
                            if n == 0 || stream.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    });
                }
            });
        }
    });
    Ok(addr)
}

#[tokio::test]
async fn a_peer_that_stops_answering_tunnels_gets_new_ones_on_a_fresh_connection()
-> anyhow::Result<()> {
    let ca = TestCa::new("mesh")?;
    let bundle = TrustBundle::from_pem("root", ca.root_pem())?;
    let (client, server) = (issue(&ca, "client")?, issue(&ca, "web")?);
    let addr = server_silent_on_its_first_connection(&server, &bundle).await?;
    let pool = Pool::new(PoolConfig::default());
    let err = open(&pool, &client, &bundle, addr, "web", 7)
        .await
        .err()
        .expect("no answer");
    assert!(matches!(err, HboneError::ResponseTimeout { .. }), "{err}");
    // The next tunnel does not queue behind the silent connection.
    let mut ok = tokio::time::timeout(
        Duration::from_secs(5),
        open(&pool, &client, &bundle, addr, "web", 7),
    )
    .await??;
    ok.write_all(b"ping").await?;
    let mut buf = [0u8; 4];
    ok.read_exact(&mut buf).await?;
    assert_eq!(&buf, b"ping");
    Ok(())
}
