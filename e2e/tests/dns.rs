//! The DNS proxy end to end, under eBPF and the nftables fallback: an enrolled pod's
//! unmodified clients (curl, getent, a TCP query) resolve through it. A service's cluster name
//! and ServiceEntry hosts are answered from the registry — an entry with STATIC endpoints by
//! their address, an entry resolved by DNS by an address the mesh allocated (240.240/16), which
//! the node proxy then dials as the upstream resolves the host — and other names are
//! forwarded to the upstream nameserver. Each answer is counted.

use std::time::Duration;

use anyhow::{Result, ensure};
use weft_testbed::{CaptureMode, TestBed, metric_sum, wait_until};

/// A stand-in upstream nameserver: every A query is answered with `ANSWER`, other types with
/// no records.
const UPSTREAM: &str = r#"
import socket, sys
answer = bytes(int(x) for x in sys.argv[1].split("."))
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 53))
while True:
    q, peer = s.recvfrom(4096)
    end = 12
    while q[end]:
        end += q[end] + 1
    end += 5
    qtype = q[end - 4:end - 2]
    records = b""
    if qtype == b"\x00\x01":
        records = b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x05\x00\x04" + answer
    count = b"\x00\x01" if records else b"\x00\x00"
    s.sendto(q[:2] + b"\x81\x80\x00\x01" + count + b"\x00\x00\x00\x00" + q[12:end] + records, peer)
"#;

/// A DNS query over TCP, as a client with `+tcp` sends it; prints the first A record.
const TCP_QUERY: &str = r#"
import socket, struct, sys
name, server = sys.argv[1], sys.argv[2]
q = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"
q += b"".join(bytes([len(l)]) + l.encode() for l in name.split(".")) + b"\x00\x00\x01\x00\x01"
c = socket.create_connection((server, 53), timeout=5)
c.sendall(struct.pack(">H", len(q)) + q)
n = struct.unpack(">H", c.recv(2))[0]
r = b""
while len(r) < n:
    r += c.recv(n - len(r))
print(".".join(str(b) for b in r[-4:]) if struct.unpack(">H", r[6:8])[0] else "none")
"#;

fn entries(api_ip: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: static-api
  namespace: shop
spec:
  hosts:
  - static.example.test
  ports:
  - number: 8080
    name: http
    protocol: HTTP
  resolution: STATIC
  endpoints:
  - address: {api_ip}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: resolved-api
  namespace: shop
spec:
  hosts:
  - resolved.example.test
  ports:
  - number: 8080
    name: http
    protocol: HTTP
  resolution: DNS
"
    )
}

fn resolves_through_the_dns_proxy(label: &str, mode: CaptureMode) -> Result<()> {
    let mut bed = TestBed::new(label, 2)?;
    bed.with_controller().capture_mode(mode);
    let app = bed.pod("app").namespace("shop").on_node(0).add()?;
    let web = bed.pod("web").namespace("shop").on_node(1).add()?;
    bed.service("web", "shop", "10.96.0.60".parse()?, 80, 8080, &[&web]);
    // The internet: a server, and the upstream nameserver the node proxies forward to.
    let api = bed
        .pod("api")
        .namespace("internet")
        .on_node(1)
        .not_enrolled()
        .add()?;
    let upstream = format!("{}:53", api.ip);
    bed.proxy_args(&["--dns-upstream", &upstream]);
    bed.preload_manifest("entries.yaml", &entries(&api.ip.to_string()))?;
    bed.start()?;
    bed.serve_http(&api, 8080, &[("x", "outside")])?;
    bed.serve_http(&web, 8080, &[("y", "inside")])?;
    let api_ip = api.ip.to_string();
    bed.spawn_in(
        &api.netns.clone(),
        &["python3", "-c", UPSTREAM, &api_ip],
        "upstream-dns.log",
    )?;

    let get = |url: &str| -> Result<String> {
        let out = bed.exec(&app, &["curl", "-sS", "--max-time", "5", url])?;
        ensure!(
            out.status.success(),
            "curl {url}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    // A name only the registry knows: once it answers, the proxy is up.
    wait_until("the DNS proxy answers", Duration::from_secs(20), || {
        Ok(get("http://static.example.test:8080/x").is_ok_and(|b| b == "outside"))
    })?;
    ensure!(get("http://web.shop.svc.cluster.local/y")? == "inside");
    // Not in the registry: the upstream's answer (once the stand-in listens).
    let mut seen = String::new();
    wait_until("the upstream answers", Duration::from_secs(10), || {
        let out = bed.exec(&app, &["getent", "hosts", "elsewhere.example.org"])?;
        seen = String::from_utf8_lossy(&out.stdout).into_owned();
        Ok(seen.starts_with(&format!("{api_ip} ")))
    })
    .map_err(|e| anyhow::anyhow!("elsewhere.example.org: {seen:?}: {e}"))?;
    let resolved = get("http://resolved.example.test:8080/x");
    ensure!(
        resolved.as_deref().is_ok_and(|b| b == "outside"),
        "{resolved:?}\n{}",
        bed.proxy_log(0)
    );
    // The allocated address is what the pod sees.
    let out = bed.exec(&app, &["getent", "hosts", "resolved.example.test"])?;
    let seen = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(
        seen.starts_with("240.240."),
        "resolved.example.test: {seen:?}"
    );
    // Over TCP, to whatever nameserver the pod names: answered by the proxy too.
    let out = bed.exec(
        &app,
        &[
            "python3",
            "-c",
            TCP_QUERY,
            "web.shop.svc.cluster.local",
            "10.255.255.53",
        ],
    )?;
    let seen = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    ensure!(
        seen == "10.96.0.60",
        "TCP query: {seen:?} {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let metrics = bed.metrics(0)?;
    let answered = metric_sum(
        &metrics,
        "weft_dns_requests_total",
        &[("outcome", "answered")],
    );
    let forwarded = metric_sum(
        &metrics,
        "weft_dns_requests_total",
        &[("outcome", "forwarded")],
    );
    ensure!(
        answered >= 4.0 && forwarded >= 1.0,
        "answered {answered}, forwarded {forwarded}"
    );
    Ok(())
}

#[test]
fn unmodified_clients_resolve_through_the_dns_proxy_under_ebpf() -> Result<()> {
    resolves_through_the_dns_proxy("dnse", CaptureMode::Ebpf)
}

#[test]
fn unmodified_clients_resolve_through_the_dns_proxy_under_nftables() -> Result<()> {
    resolves_through_the_dns_proxy("dnsn", CaptureMode::Nftables)
}
