//! The egress gateway, as Istio's recipe writes it and applied unchanged: a ServiceEntry for an
//! outside host, a Gateway on the egress gateway's pod, a VirtualService sending the mesh's
//! port-80 traffic for the host to the gateway and the gateway's on to the host's port 443, a
//! DestinationRule originating TLS there, and an AuthorizationPolicy at the gateway letting
//! only one ServiceAccount reach the host. A pod speaks plain HTTP to the host by name (resolved
//! by the DNS proxy); what crosses the link is
//! TLS both ways (HBONE to the gateway, the originated TLS from it), and a second
//! ServiceAccount is refused at the gateway.

use std::time::Duration;

use anyhow::{Result, ensure};
use weft_testbed::{TestBed, pcap, wait_until};

const GATEWAY_VIP: &str = "10.96.0.90";

fn recipe(api_ip: &str, ca_file: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: api
  namespace: shop
spec:
  hosts:
  - api.example.test
  ports:
  - number: 80
    name: http
    protocol: HTTP
  - number: 443
    name: https
    protocol: HTTPS
  resolution: STATIC
  endpoints:
  - address: {api_ip}
  location: MESH_EXTERNAL
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: istio-egressgateway
  namespace: istio-system
spec:
  selector:
    istio: egressgateway
  servers:
  - port:
      number: 8080
      name: http
      protocol: HTTP
    hosts:
    - api.example.test
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: api-through-egress-gateway
  namespace: shop
spec:
  hosts:
  - api.example.test
  gateways:
  - istio-system/istio-egressgateway
  - mesh
  http:
  - match:
    - gateways:
      - mesh
      port: 80
    route:
    - destination:
        host: istio-egressgateway.istio-system.svc.cluster.local
        port:
          number: 80
  - match:
    - gateways:
      - istio-system/istio-egressgateway
      port: 8080
    route:
    - destination:
        host: api.example.test
        port:
          number: 443
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: originate-tls-for-api
  namespace: shop
spec:
  host: api.example.test
  trafficPolicy:
    portLevelSettings:
    - port:
        number: 443
      tls:
        mode: SIMPLE
        caCertificates: {ca_file}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: only-app-reaches-api
  namespace: istio-system
spec:
  selector:
    matchLabels:
      istio: egressgateway
  action: ALLOW
  rules:
  - from:
    - source:
        principals:
        - cluster.local/ns/shop/sa/app
    to:
    - operation:
        hosts:
        - api.example.test
"
    )
}

#[test]
fn a_pods_plain_http_leaves_through_the_egress_gateway_in_tls_and_only_for_its_service_account()
-> Result<()> {
    let mut bed = TestBed::new("egrgw", 2)?;
    bed.with_controller();
    let app = bed.pod("app").namespace("shop").on_node(0).add()?;
    let intruder = bed.pod("intruder").namespace("shop").on_node(0).add()?;
    // The internet: an HTTPS server outside the mesh, on node 0, so that what the gateway
    // (node 1) sends it crosses node 0's link.
    let api = bed
        .pod("api")
        .namespace("internet")
        .on_node(0)
        .not_enrolled()
        .add()?;
    let gateway = bed.ingress_gateway(
        "istio-egressgateway",
        "istio-system",
        1,
        &[("istio", "egressgateway")],
    )?;
    bed.service(
        "istio-egressgateway",
        "istio-system",
        GATEWAY_VIP.parse()?,
        80,
        8080,
        &[&gateway],
    );
    let credentials = bed.dir().join("outside");
    let ca = bed.tls_credential(&credentials, "api", "api.example.test")?;
    let ca_file = credentials.join("api").join("tls.crt");
    bed.preload_manifest(
        "egress.yaml",
        &recipe(&api.ip.to_string(), &ca_file.display().to_string()),
    )?;
    bed.start()?;
    let secret = format!("weft-egress-secret-{}", ca.len());
    bed.serve_https(
        &api,
        443,
        &[("x", &secret)],
        &ca_file,
        &credentials.join("api").join("tls.key"),
    )?;
    let capture = bed.capture(0, "link.pcap")?;

    // Plain HTTP to the host's port 80, the name resolved by the node proxy's DNS proxy (to
    // the entry's endpoint), as an unmodified client does it.
    let get = |pod| -> Result<(String, String)> {
        let out = bed.exec(
            pod,
            &[
                "curl",
                "-sS",
                "-o",
                "/dev/stderr",
                "-w",
                "%{http_code}",
                "--max-time",
                "5",
                "http://api.example.test/x",
            ],
        )?;
        Ok((
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    };
    let mut last = (String::new(), String::new());
    let reached = wait_until("the egress gateway routes", Duration::from_secs(20), || {
        last = get(&app)?;
        Ok(last.0 == "200" && last.1 == secret)
    });
    ensure!(
        reached.is_ok(),
        "app through the egress gateway: {last:?}\n{}",
        std::fs::read_to_string(bed.waypoint_log_path(&gateway)).unwrap_or_default()
    );
    // Nothing listens on the server's port 80: the answer came over the TLS the gateway
    // originated to 443.
    let direct = bed.exec(
        &api,
        &[
            "curl",
            "-sS",
            "--max-time",
            "2",
            &format!("http://{}/x", api.ip),
        ],
    )?;
    ensure!(
        !direct.status.success(),
        "the server answers plain HTTP on 80"
    );

    // Another ServiceAccount is refused at the gateway (once its node proxy holds its
    // certificate: until then its connections are dropped, with no answer at all).
    let mut answer = (String::new(), String::new());
    wait_until(
        "the intruder gets an answer",
        Duration::from_secs(10),
        || {
            answer = get(&intruder)?;
            Ok(answer.0 != "000")
        },
    )?;
    let (code, body) = answer;
    ensure!(
        code == "403",
        "intruder through the egress gateway: {code} {body}\n{}\n{}",
        std::fs::read_to_string(bed.waypoint_log_path(&gateway)).unwrap_or_default(),
        bed.proxy_log(0)
    );

    let bytes = std::fs::read(&capture)?;
    let segments = pcap::tcp_segments(&bytes)?;
    ensure!(
        segments.iter().any(|s| *s.dst.ip() == gateway.ip
            && s.dst.port() == 15008
            && s.payload.starts_with(&[0x16, 0x03])),
        "no HBONE (TLS) from the pod's node to the gateway on the link"
    );
    ensure!(
        segments.iter().any(|s| *s.src.ip() == gateway.ip
            && s.dst == std::net::SocketAddrV4::new(api.ip, 443)
            && s.payload.starts_with(&[0x16, 0x03])),
        "no TLS from the gateway to the server's 443 on the link"
    );
    let plain = segments.iter().find(|s| {
        let text = String::from_utf8_lossy(&s.payload);
        text.contains(&secret) || text.contains("GET /x")
    });
    ensure!(
        plain.is_none(),
        "plaintext on the link: {:?}",
        plain.map(|s| (s.src, s.dst))
    );
    Ok(())
}
