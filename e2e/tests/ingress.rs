//! The ingress gateway: an Istio `Gateway` (the guide's `bookinfo-gateway`, applied unchanged)
//! selects a gateway pod, and VirtualServices naming it in `gateways` route clients outside
//! the mesh by host. The gateway enters the mesh over HBONE as its own workload: the link
//! between the nodes carries only TLS, and an AuthorizationPolicy naming the gateway's
//! identity admits it while refusing a mesh pod that is not the gateway.

use std::time::Duration;

use anyhow::{Result, ensure};
use weft_testbed::{Pod, TestBed, pcap, wait_until};

const PRODUCTPAGE_VIP: &str = "10.96.0.40";
const DETAILS_VIP: &str = "10.96.0.41";

/// Routes bound to the guide's Gateway: every host to productpage, except
/// `details.example.test` to details.
const BOUND: &str = "apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata:
  name: bookinfo
spec:
  hosts:
  - \"*\"
  gateways:
  - bookinfo-gateway
  http:
  - route:
    - destination:
        host: productpage
        port:
          number: 9080
---
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata:
  name: details-external
spec:
  hosts:
  - details.example.test
  gateways:
  - bookinfo-gateway
  http:
  - route:
    - destination:
        host: details
";

fn status(bed: &TestBed, pod: &Pod, args: &[&str]) -> Result<(String, String)> {
    let mut argv = vec![
        "curl",
        "-sS",
        "-o",
        "/dev/stderr",
        "-w",
        "%{http_code}",
        "--max-time",
        "5",
    ];
    argv.extend_from_slice(args);
    let out = bed.exec(pod, &argv)?;
    Ok((
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// A bed (not started) with a client outside the mesh on node 0, a gateway pod on node 0
/// (`name` in `namespace`, labelled `labels`), and productpage and details (services on 9080)
/// on node 1.
struct Shop {
    bed: TestBed,
    outside: Pod,
    gateway: Pod,
    productpage: Pod,
    details: Pod,
}

fn shop(label: &str, name: &str, namespace: &str, labels: &[(&str, &str)]) -> Result<Shop> {
    let mut bed = TestBed::new(label, 2)?;
    bed.with_controller();
    // The internet: a client outside the mesh.
    let outside = bed
        .pod("internet")
        .namespace("outside")
        .on_node(0)
        .not_enrolled()
        .add()?;
    let gateway = bed.ingress_gateway(name, namespace, 0, labels)?;
    let productpage = bed
        .pod("productpage")
        .namespace("default")
        .service_account("bookinfo-productpage")
        .label("app", "productpage")
        .on_node(1)
        .add()?;
    let details = bed
        .pod("details")
        .namespace("default")
        .label("app", "details")
        .on_node(1)
        .add()?;
    bed.service(
        "productpage",
        "default",
        PRODUCTPAGE_VIP.parse()?,
        9080,
        8080,
        &[&productpage],
    );
    bed.service(
        "details",
        "default",
        DETAILS_VIP.parse()?,
        9080,
        8080,
        &[&details],
    );
    Ok(Shop {
        bed,
        outside,
        gateway,
        productpage,
        details,
    })
}

#[test]
fn the_guides_gateway_routes_outside_clients_into_the_mesh_by_host_over_mtls() -> Result<()> {
    let Shop {
        mut bed,
        outside,
        gateway,
        productpage,
        details,
    } = shop(
        "ingr",
        "istio-ingressgateway",
        "istio-system",
        &[("istio", "ingressgateway")],
    )?;
    let sneaky = bed.pod("sneaky").namespace("default").on_node(0).add()?;
    // The guide's traffic-management YAML, its Gateway included, as users apply it.
    bed.preload_manifest(
        "guide.yaml",
        &weft_testbed::fixtures::guide("istio-traffic-management.yaml")?,
    )?;
    bed.preload_manifest("bound.yaml", BOUND)?;
    bed.start()?;
    let secret = format!(
        "weft-ingress-secret-{}",
        bed.dir().display().to_string().len()
    );
    bed.serve_http(&productpage, 8080, &[("marker.txt", &secret)])?;
    bed.serve_testsrv(&details, "details")?;
    let capture = bed.capture(0, "link.pcap")?;

    let gw = gateway.ip;
    let url = format!("http://{gw}/marker.txt");
    let (code, body) = status(&bed, &outside, &[&url])?;
    ensure!(
        code == "200" && body == secret,
        "outside client through the gateway to productpage: {code} {body}\n{}",
        std::fs::read_to_string(bed.waypoint_log_path(&gateway)).unwrap_or_default()
    );
    // By host: details.example.test goes to details, which sees the outside client in
    // x-forwarded-for.
    let (code, body) = status(
        &bed,
        &outside,
        &[
            "-D",
            "/dev/stdout",
            "-H",
            "Host: details.example.test",
            "-H",
            "x-echo-header: x-forwarded-for",
            &format!("http://{gw}/"),
        ],
    )?;
    ensure!(
        code.ends_with("200") && body.contains("details"),
        "{code} {body}"
    );
    ensure!(
        code.lines()
            .any(|l| l.trim() == format!("x-echo: {}", outside.ip)),
        "x-forwarded-for is not the outside client: {code}"
    );

    // Only the gateway may reach productpage: it is admitted, a mesh pod is not.
    bed.write_manifest(
        "authz.yaml",
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: productpage-from-ingress
  namespace: default
spec:
  selector:
    matchLabels:
      app: productpage
  action: ALLOW
  rules:
  - from:
    - source:
        principals:
        - cluster.local/ns/istio-system/sa/istio-ingressgateway
",
    )?;
    let direct = format!("http://{PRODUCTPAGE_VIP}:9080/marker.txt");
    wait_until("the policy applies", Duration::from_secs(10), || {
        Ok(!bed.curl(&sneaky, &direct)?.0)
    })?;
    let (code, body) = status(&bed, &outside, &[&url])?;
    ensure!(
        code == "200" && body == secret,
        "the gateway was refused by a policy naming it: {code} {body}"
    );

    // The link between the nodes carried TLS on 15008 and never the payload.
    bed.stop_helpers();
    let bytes = std::fs::read(&capture)?;
    let segments = pcap::tcp_segments(&bytes)?;
    ensure!(
        segments
            .iter()
            .any(|s| s.dst.port() == 15008 && s.payload.starts_with(&[0x16, 0x03])),
        "no TLS to 15008 on the link"
    );
    // Besides HBONE, only the proxies' streams to the controller (TLS too) cross the link.
    let controller = bed.controller_address();
    let other: Vec<String> = segments
        .iter()
        .filter(|s| {
            !s.payload.is_empty()
                && ![s.src.port(), s.dst.port()].contains(&15008)
                && std::net::SocketAddr::V4(s.src) != controller
                && std::net::SocketAddr::V4(s.dst) != controller
        })
        .map(|s| format!("{} -> {}", s.src, s.dst))
        .collect();
    ensure!(
        other.is_empty(),
        "traffic other than HBONE crossed the link: {other:?}"
    );
    ensure!(
        !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
        "the payload is visible on the wire"
    );

    Ok(())
}

/// HTTPS for two hosts on one port, each with its own certificate, and HTTP redirected.
const TLS_GATEWAY: &str = "apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: shop-gateway
  namespace: istio-system
spec:
  selector:
    istio: ingressgateway
  servers:
  - port: {number: 443, name: https-a, protocol: HTTPS}
    hosts: [a.example.test]
    tls: {mode: SIMPLE, credentialName: a-cert}
  - port: {number: 443, name: https-b, protocol: HTTPS}
    hosts: [b.example.test]
    tls: {mode: SIMPLE, credentialName: b-cert}
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: [\"*\"]
    tls: {httpsRedirect: true}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: shop
  namespace: default
spec:
  hosts: [a.example.test, b.example.test]
  gateways: [istio-system/shop-gateway]
  http:
  - route:
    - destination:
        host: productpage
";

#[test]
fn https_picks_each_hosts_certificate_by_sni_and_http_is_redirected() -> Result<()> {
    let Shop {
        mut bed,
        outside,
        gateway,
        productpage,
        ..
    } = shop(
        "ingtls",
        "istio-ingressgateway",
        "istio-system",
        &[("istio", "ingressgateway")],
    )?;
    let credentials = bed.dir().join("gateway-credentials");
    let a = bed.tls_credential(&credentials, "a-cert", "a.example.test")?;
    let b = bed.tls_credential(&credentials, "b-cert", "b.example.test")?;
    std::fs::write(bed.dir().join("a.pem"), a)?;
    std::fs::write(bed.dir().join("b.pem"), b)?;
    let dir = credentials.display().to_string();
    bed.waypoint_args_for("istio-ingressgateway", &["--credential-dir", &dir]);
    bed.preload_manifest("gateway.yaml", TLS_GATEWAY)?;
    bed.start()?;
    bed.serve_http(&productpage, 8080, &[("x", "shop")])?;

    let https = |host: &str, trust: &str| -> Result<(String, String)> {
        let resolve = format!("{host}:443:{}", gateway.ip);
        let ca = bed.dir().join(trust).display().to_string();
        let url = format!("https://{host}/x");
        status(
            &bed,
            &outside,
            &["--resolve", &resolve, "--cacert", &ca, &url],
        )
    };
    for host in ["a", "b"] {
        let (code, body) = https(&format!("{host}.example.test"), &format!("{host}.pem"))?;
        ensure!(
            code == "200" && body == "shop",
            "https to {host}.example.test: {code} {body}\n{}",
            std::fs::read_to_string(bed.waypoint_log_path(&gateway)).unwrap_or_default()
        );
    }
    // b's name is answered with b's certificate: a client trusting only a's refuses it.
    let (code, _) = https("b.example.test", "a.pem")?;
    ensure!(
        code == "000",
        "b.example.test was served a's certificate: {code}"
    );

    let (code, headers) = status(
        &bed,
        &outside,
        &[
            "-D",
            "/dev/stderr",
            "-H",
            "Host: a.example.test",
            &format!("http://{}/x?y=1", gateway.ip),
        ],
    )?;
    ensure!(
        code == "301"
            && headers.lines().any(|l| l
                .trim()
                .eq_ignore_ascii_case("location: https://a.example.test/x?y=1")),
        "{code} {headers}"
    );
    Ok(())
}

/// The Gateway API form: a Gateway of class `weft` with an HTTP listener for
/// `*.example.test`, and an HTTPRoute attached to it sending `/api` to details and the rest to
/// productpage.
const API_GATEWAY: &str = "apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: shop
  namespace: default
spec:
  gatewayClassName: weft
  listeners:
  - name: web
    port: 8000
    protocol: HTTP
    hostname: \"*.example.test\"
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: shop
  namespace: default
spec:
  parentRefs:
  - name: shop
    sectionName: web
  hostnames: [shop.example.test]
  rules:
  - matches: [{path: {type: PathPrefix, value: /api}}]
    backendRefs: [{name: details, port: 9080}]
  - backendRefs: [{name: productpage, port: 9080}]
";

#[test]
fn the_gateway_api_form_routes_by_hostname_and_path() -> Result<()> {
    // Its pod, as a Gateway API implementation labels it.
    let Shop {
        mut bed,
        outside,
        gateway,
        productpage,
        details,
    } = shop(
        "ingapi",
        "shop",
        "default",
        &[("gateway.networking.k8s.io/gateway-name", "shop")],
    )?;
    bed.preload_manifest("gateway.yaml", API_GATEWAY)?;
    bed.start()?;
    bed.serve_http(&productpage, 8080, &[("x", "productpage")])?;
    bed.serve_testsrv(&details, "details")?;
    let get = |host: &str, path: &str| -> Result<(String, String)> {
        let header = format!("Host: {host}");
        let url = format!("http://{}:8000{path}", gateway.ip);
        status(&bed, &outside, &["-H", &header, &url])
    };
    let (code, body) = get("shop.example.test", "/x")?;
    ensure!(
        code == "200" && body == "productpage",
        "{code} {body}\n{}",
        std::fs::read_to_string(bed.waypoint_log_path(&gateway)).unwrap_or_default()
    );
    let (code, body) = get("shop.example.test", "/api/items")?;
    ensure!(code == "200" && body.contains("details"), "{code} {body}");
    // A host the route does not name is not routed.
    let (code, _) = get("other.example.test", "/x")?;
    ensure!(code == "404", "other.example.test: {code}");
    Ok(())
}
