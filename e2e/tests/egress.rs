//! Egress under the outbound traffic policy: with `REGISTRY_ONLY` (an IstioOperator's
//! `meshConfig.outboundTrafficPolicy.mode`), an enrolled pod's connection to an address no
//! workload, service or ServiceEntry holds is refused by its node proxy and counted; a
//! ServiceEntry for that address and port lets it through again.

use std::time::Duration;

use anyhow::{Result, ensure};
use weft_testbed::{TestBed, metric_sum, wait_until};

#[test]
fn registry_only_refuses_an_unknown_outside_host_until_a_service_entry_names_it() -> Result<()> {
    let mut bed = TestBed::new("egress", 2)?;
    bed.with_controller();
    let app = bed.pod("app").namespace("shop").on_node(0).add()?;
    // The internet: a server no service selects, outside the mesh.
    let api = bed
        .pod("api")
        .namespace("internet")
        .on_node(1)
        .not_enrolled()
        .add()?;
    bed.start()?;
    bed.serve_http(&api, 8080, &[("x", "outside")])?;
    let url = format!("http://{}:8080/x", api.ip);
    let reaches = |bed: &TestBed| -> Result<bool> {
        let (ok, body, _) = bed.curl(&app, &url)?;
        Ok(ok && body == "outside")
    };
    ensure!(reaches(&bed)?, "ALLOW_ANY (the default) let nothing out");

    bed.write_manifest(
        "mesh.yaml",
        "apiVersion: install.istio.io/v1alpha1
kind: IstioOperator
metadata:
  name: mesh
  namespace: istio-system
spec:
  meshConfig:
    outboundTrafficPolicy:
      mode: REGISTRY_ONLY
",
    )?;
    wait_until("REGISTRY_ONLY applies", Duration::from_secs(10), || {
        Ok(!reaches(&bed)?)
    })?;
    let refused = metric_sum(
        &bed.metrics(0)?,
        "weft_tcp_connections_refused_total",
        &[
            ("reporter", "source"),
            ("reason", "not_in_registry"),
            ("source_principal", "spiffe://cluster.local/ns/shop/sa/app"),
        ],
    );
    ensure!(refused >= 1.0, "the refusal is not counted: {refused}");
    let log = bed.proxy_log(0);
    ensure!(
        log.contains("REGISTRY_ONLY") && log.contains(&format!("{}:8080", api.ip)),
        "the node proxy does not say why:\n{log}"
    );

    // A ServiceEntry for the address and port: let through.
    bed.write_manifest(
        "api.yaml",
        &format!(
            "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: api
  namespace: shop
spec:
  hosts:
  - api.example.test
  addresses:
  - {}/32
  ports:
  - number: 8080
    name: http
    protocol: HTTP
  location: MESH_EXTERNAL
  resolution: NONE
",
            api.ip
        ),
    )?;
    wait_until("the ServiceEntry applies", Duration::from_secs(10), || {
        reaches(&bed)
    })?;
    Ok(())
}
