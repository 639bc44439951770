//! The capture programs in the real kernel: two network namespaces joined by a veth pair, the
//! programs loaded and pinned under a bpffs directory of the test's own, sockets made inside
//! the namespaces. Needs root (as the whole end-to-end suite does).

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use weft_core::netns::{ListenOpts, Netns, listen_socket};
use weft_ebpf::{Capture, PROXY_MARK, cgroup2_root, netns_cookie, remove_pins};

struct Bed {
    names: Vec<String>,
    pins: PathBuf,
}

impl Drop for Bed {
    fn drop(&mut self) {
        let _ = remove_pins(&self.pins);
        for name in &self.names {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}

fn sh(args: &[&str]) {
    let status = Command::new(args[0])
        .args(&args[1..])
        .status()
        .expect("spawn");
    assert!(status.success(), "{args:?} failed");
}

/// Two namespaces `client` (10.77.0.1) and `pod` (10.77.0.2) on a veth pair.
fn bed(tag: &str) -> (Bed, Arc<Netns>, Arc<Netns>) {
    let id = format!("we{}{}", std::process::id() % 100_000, tag);
    let (a, b) = (format!("{id}c"), format!("{id}p"));
    let bed = Bed {
        names: vec![a.clone(), b.clone()],
        pins: PathBuf::from(format!("/sys/fs/bpf/weft-test-{id}")),
    };
    sh(&["ip", "netns", "add", &a]);
    sh(&["ip", "netns", "add", &b]);
    sh(&[
        "ip", "link", "add", "va", "netns", &a, "type", "veth", "peer", "vb", "netns", &b,
    ]);
    for (ns, dev, ip) in [(&a, "va", "10.77.0.1/24"), (&b, "vb", "10.77.0.2/24")] {
        sh(&["ip", "-n", ns, "addr", "add", ip, "dev", dev]);
        sh(&["ip", "-n", ns, "link", "set", dev, "up"]);
        sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
    }
    let open =
        |n: &str| Arc::new(Netns::open(Path::new(&format!("/run/netns/{n}"))).expect("netns"));
    let (client, pod) = (open(&a), open(&b));
    (bed, client, pod)
}

/// Connects to the pod's app (10.77.0.2:8080) from 10.77.0.9, a source that is not the probe
/// source. Run inside the client namespace.
fn connect_from_other_source(timeout: Duration) -> std::io::Result<socket2::Socket> {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    s.bind(&SocketAddr::from(([10, 77, 0, 9], 0)).into())?;
    let dst: SocketAddr = "10.77.0.2:8080".parse().expect("a");
    s.connect_timeout(&dst.into(), timeout).map(|()| s)
}

fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(f)
}

fn in_ns<T: Send + 'static>(ns: &Netns, f: impl FnOnce() -> T + Send + 'static) -> T {
    block_on(ns.run(f)).expect("netns thread")
}

#[test]
fn outbound_connects_reach_the_pod_listener_with_their_original_destination() {
    let (bed, _client, pod) = bed("o");
    let capture =
        Arc::new(Capture::load(&bed.pins, &cgroup2_root().expect("cgroup2")).expect("load"));
    let listener: TcpListener = in_ns(&pod, || {
        listen_socket(
            "127.0.0.1:15001".parse().expect("addr"),
            ListenOpts {
                transparent: false,
                mark: Some(PROXY_MARK),
            },
        )
        .expect("listen")
        .into()
    });
    listener.set_nonblocking(false).expect("blocking");
    let cookie = netns_cookie(&listener).expect("cookie");

    // Not enrolled yet: the connect goes where the app asked (nobody there: refused).
    let direct = in_ns(&pod, || {
        TcpStream::connect_timeout(&"10.77.0.1:9".parse().expect("a"), Duration::from_secs(2))
    });
    assert!(direct.is_err(), "unenrolled connect was redirected");

    capture
        .enroll(cookie, Ipv4Addr::new(10, 77, 0, 2), None)
        .expect("enroll");
    let client = in_ns(&pod, || {
        let s = TcpStream::connect("10.96.7.7:8080").expect("captured connect");
        let peer = s.peer_addr().expect("peer");
        (s, peer)
    });
    let (mut accepted, seen) = listener.accept().expect("accept");
    let SocketAddr::V4(seen) = seen else {
        panic!("v4")
    };
    assert_eq!(
        capture.original_dst(cookie, seen),
        Some("10.96.7.7:8080".parse().expect("a")),
        "original destination recovered from the client address"
    );
    assert_eq!(
        client.1,
        "10.96.7.7:8080".parse::<SocketAddr>().expect("a"),
        "the app sees its original peer"
    );
    let mut app = client.0;
    app.write_all(b"ping").expect("write");
    let mut buf = [0u8; 4];
    accepted.read_exact(&mut buf).expect("read");
    assert_eq!(&buf, b"ping");

    // A dual-stack socket reaching IPv4 through a v4-mapped address is captured the same way;
    // native IPv6 is refused (the mesh carries IPv4 only), never let around it.
    let mapped = in_ns(&pod, || {
        TcpStream::connect("[::ffff:10.96.7.9]:82").map(|s| s.local_addr())
    });
    assert!(mapped.is_ok(), "v4-mapped connect failed: {mapped:?}");
    let (_, seen) = listener.accept().expect("accept v4-mapped");
    let SocketAddr::V4(seen) = seen else {
        panic!("v4")
    };
    assert_eq!(
        capture.original_dst(cookie, seen),
        Some("10.96.7.9:82".parse().expect("a"))
    );
    let native = in_ns(&pod, || TcpStream::connect("[fd00::1]:80"));
    assert_eq!(
        native.map_err(|e| e.raw_os_error()).err(),
        Some(Some(libc::EPERM)),
        "native IPv6 from an enrolled pod must be refused"
    );

    // A socket with the proxy mark goes where it asked.
    let marked = in_ns(&pod, || {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        s.set_mark(PROXY_MARK).expect("mark");
        let addr: SocketAddr = "10.77.0.1:9".parse().expect("a");
        s.connect_timeout(&addr.into(), Duration::from_secs(2))
    });
    assert!(
        marked.is_err(),
        "a proxy-marked socket must not be captured"
    );

    // The loader's handles dropped (a proxy exiting): the pinned links keep capturing. A new
    // load (a restarted proxy) finds the pinned maps, enrollment included, and replaces links.
    drop(capture);
    let captured = |listener: &TcpListener| {
        let client = in_ns(&pod, || {
            TcpStream::connect("10.96.7.8:81").expect("captured connect")
        });
        let (_, seen) = listener.accept().expect("accept");
        (client, seen)
    };
    let (_c, _) = captured(&listener);
    let capture = Capture::load(&bed.pins, &cgroup2_root().expect("cgroup2")).expect("reload");
    assert_eq!(capture.enrolled_count(), 1, "enrollment survives a reload");
    let (_c, seen) = captured(&listener);
    let SocketAddr::V4(seen) = seen else {
        panic!("v4")
    };
    assert_eq!(
        capture.original_dst(cookie, seen),
        Some("10.96.7.8:81".parse().expect("a"))
    );

    // Released: direct again.
    capture
        .release(cookie, Ipv4Addr::new(10, 77, 0, 2))
        .expect("release");
    let direct = in_ns(&pod, || {
        TcpStream::connect_timeout(
            &"10.96.7.7:8080".parse().expect("a"),
            Duration::from_millis(300),
        )
    });
    assert!(direct.is_err());
    listener.set_nonblocking(true).expect("nb");
    assert!(listener.accept().is_err(), "released pod still captured");
    drop(bed);
}

#[test]
fn inbound_syns_go_to_the_transparent_listener_or_are_dropped() {
    let (bed, client, pod) = bed("i");
    let capture =
        Arc::new(Capture::load(&bed.pins, &cgroup2_root().expect("cgroup2")).expect("load"));
    let pod_ip = Ipv4Addr::new(10, 77, 0, 2);
    let plaintext: TcpListener = in_ns(&pod, || {
        listen_socket(
            "0.0.0.0:15006".parse().expect("addr"),
            ListenOpts {
                transparent: true,
                mark: Some(PROXY_MARK),
            },
        )
        .expect("listen")
        .into()
    });
    let app: TcpListener = in_ns(&pod, || TcpListener::bind("0.0.0.0:8080").expect("app"));
    let cookie = netns_cookie(&plaintext).expect("cookie");
    capture
        .enroll(cookie, pod_ip, Some(Ipv4Addr::new(10, 77, 0, 1)))
        .expect("enroll");
    let cap = capture.clone();
    let links = in_ns(&pod, move || cap.attach_pod_interfaces()).expect("attach");
    let attached = capture.pin_pod_links(cookie, pod_ip, links).expect("pin");
    assert_eq!(attached, vec!["vb".to_owned()]);

    // The probe source (10.77.0.1) reaches the app directly.
    let probe = in_ns(&client, || {
        TcpStream::connect_timeout(
            &"10.77.0.2:8080".parse().expect("a"),
            Duration::from_secs(2),
        )
    });
    assert!(probe.is_ok(), "probe source must reach the app: {probe:?}");
    app.set_nonblocking(false).expect("b");
    let _ = app.accept().expect("app accept");

    // Any other source is captured: the proxy's listener gets it, with the original destination
    // as its local address.
    in_ns(&client, || {
        Command::new("ip")
            .args(["addr", "add", "10.77.0.9/24", "dev", "va"])
            .status()
            .expect("ip")
    });
    let other = in_ns(&client, || {
        connect_from_other_source(Duration::from_secs(2))
    });
    assert!(other.is_ok(), "captured connect failed: {other:?}");
    plaintext.set_nonblocking(false).expect("b");
    let (accepted, from) = plaintext.accept().expect("proxy accept");
    assert_eq!(
        accepted.local_addr().expect("local"),
        "10.77.0.2:8080".parse::<SocketAddr>().expect("a")
    );
    assert_eq!(from.ip(), Ipv4Addr::new(10, 77, 0, 9));

    // HBONE's port is never redirected.
    let hbone: TcpListener = in_ns(&pod, || TcpListener::bind("0.0.0.0:15008").expect("hbone"));
    let to_hbone = in_ns(&client, || {
        TcpStream::connect_timeout(
            &"10.77.0.2:15008".parse().expect("a"),
            Duration::from_secs(2),
        )
    });
    assert!(to_hbone.is_ok());
    hbone.set_nonblocking(false).expect("b");
    let _ = hbone.accept().expect("hbone accept");

    // Proxy gone (listener closed): new connections fail, they do not reach the app.
    drop(plaintext);
    let bypass = in_ns(&client, || {
        connect_from_other_source(Duration::from_millis(500)).map(drop)
    });
    assert!(
        bypass.is_err(),
        "with the proxy down the app was reached in plaintext"
    );

    // Sweep keeps nothing: the pod's links and entries go, and the app is reachable directly.
    assert_eq!(capture.sweep(&BTreeSet::new()).expect("sweep"), 1);
    let direct = in_ns(&client, || {
        connect_from_other_source(Duration::from_secs(2)).map(drop)
    });
    assert!(
        direct.is_ok(),
        "after release the app is reachable directly: {direct:?}"
    );
    drop(bed);
}
