//! The controller's life on a real API server: leader handover, an API server outage, a CRD
//! deleted and created again, and a waypoint Gateway's objects from creation to garbage
//! collection. Without the Kubernetes binaries each test says so and does nothing else.

#[path = "support/cluster.rs"]
mod support;

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use support::{
    Controller, guide_gets_a_verdict, install, leading_with_bookinfo, lease_holder, plane,
    wait_until,
};

#[test]
fn a_stopped_leader_hands_the_lease_and_status_writing_to_the_other_replica() -> Result<()> {
    let Some(plane) = plane("failover")? else {
        return Ok(());
    };
    let a = leading_with_bookinfo(&plane)?;
    let b = Controller::start(&plane, "replica-b")?;

    // Stopped, the leader gives the lease up: replica-b takes it at its next round (every 5 s,
    // a third of the 15 s lease), not when the lease would have run out.
    let stopped = Instant::now();
    a.stop()?;
    wait_until("replica-b leads", Duration::from_secs(10), || {
        Ok(lease_holder(&plane) == "replica-b")
    })
    .with_context(|| b.log())?;
    eprintln!("lease handed over {:?} after SIGTERM", stopped.elapsed());

    // And writes the verdicts now.
    guide_gets_a_verdict(&plane, Duration::from_secs(15)).with_context(|| b.log())?;
    Ok(())
}

#[test]
fn after_the_api_server_comes_back_the_controller_sees_changes_within_seconds() -> Result<()> {
    let Some(mut plane) = plane("restart")? else {
        return Ok(());
    };
    let controller = leading_with_bookinfo(&plane)?;

    // An outage of 10 s: every watch breaks and is retried while the server is away (the
    // outage's length is the point; nothing is being waited for).
    plane.kill("apiserver")?;
    std::thread::sleep(Duration::from_secs(10));
    plane.start_again("apiserver")?;
    let back = Instant::now();

    // A change made after the restart arrives: watches resumed, retries did not back off to
    // half a minute (2 s at most, then a relist).
    guide_gets_a_verdict(&plane, Duration::from_secs(15)).with_context(|| controller.log())?;
    eprintln!(
        "verdict written {:?} after the API server was back",
        back.elapsed()
    );
    ensure!(
        controller.child_running(),
        "the controller exited:\n{}",
        controller.log()
    );
    Ok(())
}

#[test]
fn a_crd_deleted_and_created_again_is_watched_again() -> Result<()> {
    let Some(plane) = plane("crd")? else {
        return Ok(());
    };
    let controller = leading_with_bookinfo(&plane)?;
    let crd = "virtualservices.networking.istio.io";
    plane.run(&["delete", "crd", crd, "--wait=true"])?;
    let said = plane.install_crds()?;
    ensure!(said.contains(&format!("created {crd}")), "{said}");
    let again = Instant::now();
    guide_gets_a_verdict(&plane, Duration::from_secs(15)).with_context(|| controller.log())?;
    eprintln!("verdict {:?} after the CRD was back", again.elapsed());
    Ok(())
}

/// A VirtualService CRD that keeps any field, as a cluster may have it from another mesh's
/// install: the API server no longer refuses what Weft does not know, so Weft must say it.
const PERMISSIVE_CRD: &str = "apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: virtualservices.networking.istio.io}
spec:
  group: networking.istio.io
  names: {kind: VirtualService, listKind: VirtualServiceList, plural: virtualservices, singular: virtualservice}
  scope: Namespaced
  versions:
  - name: v1alpha3
    served: true
    storage: false
    subresources: {status: {}}
    schema: {openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}}
  - name: v1
    served: true
    storage: true
    subresources: {status: {}}
    schema: {openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}}
";

#[test]
fn under_crds_that_keep_any_field_an_unknown_field_is_named_and_guide_shapes_name_the_upstream_one()
-> Result<()> {
    let Some(plane) = plane("permissive")? else {
        return Ok(());
    };
    let controller = leading_with_bookinfo(&plane)?;
    let crd = "virtualservices.networking.istio.io";
    plane.run(&["delete", "crd", crd, "--wait=true"])?;
    let file = plane.dir().join("permissive-crd.yaml");
    std::fs::write(&file, PERMISSIVE_CRD)?;
    plane.run(&["apply", "-f", &file.display().to_string()])?;
    plane.wait_established(crd)?;
    let condition = |name: &str, field: &str| {
        plane
            .run(&[
                "get",
                "virtualservice",
                name,
                "-n",
                "bookinfo",
                "-o",
                &format!("jsonpath={{.status.conditions[?(@.type==\"Accepted\")].{field}}}"),
            ])
            .unwrap_or_default()
    };

    // A typo the API server let through: refused, the condition names the field.
    let typo = plane.dir().join("typo.yaml");
    std::fs::write(
        &typo,
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: typo, namespace: bookinfo}
spec:
  hosts: [reviews]
  http:
  - route: [{destination: {host: reviews}}]
    retires: {attempts: 3}
",
    )?;
    plane.run(&["apply", "-f", &typo.display().to_string()])?;
    wait_until("the typo's condition", Duration::from_secs(15), || {
        Ok(condition("typo", "reason") == "Invalid")
    })
    .with_context(|| controller.log())?;
    let message = condition("typo", "message");
    ensure!(message.contains("retires"), "{message}");

    // The guide's `retry:` (not in the upstream API): applied, acted on, and the condition
    // names the upstream field.
    support::apply_guide(&plane, "istio-retry.yaml")?;
    wait_until("the guide's condition", Duration::from_secs(15), || {
        Ok(!condition("reviews", "reason").is_empty())
    })
    .with_context(|| controller.log())?;
    let (reason, message) = (
        condition("reviews", "reason"),
        condition("reviews", "message"),
    );
    ensure!(
        reason != "Invalid"
            && message.contains("spec.http[0].retry:")
            && message.contains("`retries`"),
        "{reason}: {message}"
    );
    eprintln!("typo: {}\nguide: {message}", condition("typo", "message"));
    Ok(())
}

#[test]
fn a_waypoint_gateway_gets_its_objects_and_is_programmed_and_they_go_with_it() -> Result<()> {
    let Some(plane) = plane("waypoint")? else {
        return Ok(());
    };
    install(&plane)?;
    let controller = Controller::start(&plane, "replica-a")?;
    wait_until("the lease", Duration::from_secs(15), || {
        Ok(lease_holder(&plane) == "replica-a")
    })?;
    plane.run(&["create", "namespace", "bookinfo"])?;
    let gateway = plane.dir().join("gateway.yaml");
    std::fs::write(
        &gateway,
        "apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: reviews-waypoint, namespace: bookinfo}
spec:
  gatewayClassName: weft-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
",
    )?;
    plane.run(&["apply", "-f", &gateway.display().to_string()])?;
    // The controller applies the waypoint's objects, each owned by the Gateway.
    let objects = [
        "serviceaccount/reviews-waypoint",
        "configmap/reviews-waypoint-root-cert",
        "deployment/reviews-waypoint",
        "service/reviews-waypoint",
    ];
    let owner = |object: &str| {
        plane
            .run(&[
                "get",
                object,
                "-n",
                "bookinfo",
                "-o",
                "jsonpath={.metadata.ownerReferences[0].kind}",
            ])
            .unwrap_or_default()
    };
    wait_until("the waypoint's objects", Duration::from_secs(20), || {
        Ok(objects.iter().all(|o| owner(o) == "Gateway"))
    })
    .with_context(|| controller.log())?;
    let programmed = || {
        plane
            .run(&[
                "get",
                "gateway.gateway.networking.k8s.io/reviews-waypoint",
                "-n",
                "bookinfo",
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Programmed\")].status}",
            ])
            .unwrap_or_default()
    };
    wait_until(
        "Programmed False while no pod runs",
        Duration::from_secs(15),
        || Ok(programmed() == "False"),
    )?;
    // kube-controller-manager made the Deployment's pod; the bed plays its kubelet.
    let pod = || {
        plane
            .run(&[
                "get",
                "pods",
                "-n",
                "bookinfo",
                "-l",
                "gateway.networking.k8s.io/gateway-name=reviews-waypoint",
                "-o",
                "jsonpath={.items[0].metadata.name}",
            ])
            .unwrap_or_default()
    };
    wait_until("the waypoint's pod", Duration::from_secs(20), || {
        Ok(!pod().is_empty())
    })?;
    plane.run(&[
        "patch", "pod", &pod(), "-n", "bookinfo", "--subresource=status", "--type=merge", "-p",
        "{\"status\":{\"phase\":\"Running\",\"podIP\":\"10.10.1.50\",\"podIPs\":[{\"ip\":\"10.10.1.50\"}],\"conditions\":[{\"type\":\"Ready\",\"status\":\"True\"}]}}",
    ])?;
    wait_until(
        "Programmed True once the pod runs",
        Duration::from_secs(15),
        || Ok(programmed() == "True"),
    )
    .with_context(|| controller.log())?;

    // Deleting the Gateway takes its objects with it (garbage collection).
    plane.run(&[
        "delete",
        "-f",
        &gateway.display().to_string(),
        "--wait=true",
    ])?;
    let gone = |object: &str| {
        plane
            .kubectl(&["get", object, "-n", "bookinfo"])
            .is_ok_and(|out| !out.status.success())
    };
    wait_until(
        "the waypoint's objects gone",
        Duration::from_secs(30),
        || Ok(objects.iter().all(|o| gone(o))),
    )?;
    Ok(())
}

#[test]
fn without_its_namespace_the_controller_says_so_and_starts_once_installed() -> Result<()> {
    let Some(plane) = plane("nonamespace")? else {
        return Ok(());
    };
    // Weft's CRDs and RBAC are not installed yet: the controller runs as cluster admin here.
    let (controller, readiness) = Controller::spawn(&plane, "replica-a", &plane.kubeconfig)?;
    wait_until("a clear message", Duration::from_secs(15), || {
        Ok(controller
            .log()
            .contains("namespace weft-system does not exist"))
    })
    .with_context(|| controller.log())?;
    ensure!(
        controller.child_running(),
        "it gave up:\n{}",
        controller.log()
    );
    install(&plane)?;
    wait_until("ready once installed", Duration::from_secs(30), || {
        Ok(weft_testbed::http_get_in(
            std::path::Path::new("/proc/self/ns/net"),
            readiness,
            "/healthz/ready",
        )
        .is_ok_and(|(code, _)| code == 200))
    })
    .with_context(|| controller.log())?;
    Ok(())
}

#[test]
fn the_guides_tracing_yaml_applies_unchanged_and_its_verdict_names_the_jaeger_agent() -> Result<()>
{
    let Some(plane) = plane("tracing")? else {
        return Ok(());
    };
    let controller = leading_with_bookinfo(&plane)?;
    plane.run(&["create", "namespace", "istio-system"])?;
    plane.run(&["create", "namespace", "linkerd"])?;
    // Unchanged: Weft's IstioOperator CRD takes the guide's form, and linkerd-config is a
    // plain ConfigMap.
    for file in ["istio-tracing.yaml", "linkerd-tracing.yaml"] {
        let path = support::workspace().join("examples/guide").join(file);
        plane.run(&["apply", "-f", &path.display().to_string()])?;
    }
    let condition = |field: &str| {
        plane
            .run(&[
                "get",
                "istiooperator",
                "istio-operator",
                "-n",
                "istio-system",
                "-o",
                &format!("jsonpath={{.status.conditions[?(@.type==\"Accepted\")].{field}}}"),
            ])
            .unwrap_or_default()
    };
    wait_until(
        "the IstioOperator's condition",
        Duration::from_secs(15),
        || Ok(!condition("reason").is_empty()),
    )
    .with_context(|| controller.log())?;
    let (reason, message) = (condition("reason"), condition("message"));
    ensure!(
        reason == "PartiallyHonoured"
            && message.contains("6831 is the Jaeger agent's UDP port")
            && message.contains("jaeger-collector.istio-system:9411"),
        "{reason}: {message}"
    );
    // The ConfigMap has no status: the controller's log carries its verdict.
    wait_until("linkerd-config's verdict", Duration::from_secs(15), || {
        Ok(controller.log().contains("linkerd/linkerd-config"))
    })?;
    eprintln!("IstioOperator: {reason}: {message}");
    Ok(())
}

#[test]
fn the_guides_production_gateways_and_a_gateway_api_gateway_become_deployments_pdbs_and_services()
-> Result<()> {
    let Some(plane) = plane("operator")? else {
        return Ok(());
    };
    install(&plane)?;
    let controller = Controller::start(&plane, "replica-a")?;
    wait_until("the lease", Duration::from_secs(15), || {
        Ok(lease_holder(&plane) == "replica-a")
    })?;
    plane.run(&["create", "namespace", "istio-system"])?;
    // The guide's production resources, its ingressGateways block as written.
    let operator = plane.dir().join("operator.yaml");
    std::fs::write(
        &operator,
        "apiVersion: install.istio.io/v1alpha1
kind: IstioOperator
metadata:
  name: istio-operator
  namespace: istio-system
spec:
  profile: production
  components:
    ingressGateways:
    - name: istio-ingressgateway
      enabled: true
      k8s:
        service:
          type: LoadBalancer
        resources:
          requests: {cpu: 500m, memory: 512Mi}
          limits: {cpu: 1000m, memory: 1024Mi}
        replicas: 2
    egressGateways:
    - name: istio-egressgateway
      enabled: true
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: shop
  namespace: istio-system
spec:
  selector:
    istio: ingressgateway
  servers:
  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: [shop.example.test]
    tls: {mode: SIMPLE, credentialName: shop-cert}
",
    )?;
    plane.run(&["apply", "-f", &operator.display().to_string()])?;
    let get = |object: &str, path: &str| {
        plane
            .run(&[
                "get",
                object,
                "-n",
                "istio-system",
                "-o",
                &format!("jsonpath={path}"),
            ])
            .unwrap_or_default()
    };
    wait_until("the gateway's Deployment", Duration::from_secs(20), || {
        Ok(get("deployment/istio-ingressgateway", "{.spec.replicas}") == "2")
    })
    .with_context(|| controller.log())?;
    ensure!(
        get(
            "deployment/istio-ingressgateway",
            "{.metadata.ownerReferences[0].kind}"
        ) == "IstioOperator"
    );
    ensure!(
        get(
            "deployment/istio-ingressgateway",
            "{.spec.template.metadata.labels.istio}"
        ) == "ingressgateway",
        "the pods carry what the guide's Gateway selects"
    );
    ensure!(
        get(
            "deployment/istio-ingressgateway",
            "{.spec.template.spec.containers[0].resources.requests.cpu}"
        ) == "500m",
        "the entry's resources"
    );
    ensure!(get("service/istio-ingressgateway", "{.spec.type}") == "LoadBalancer");
    // The Secret the Gateway selecting it names is mounted under its name.
    ensure!(
        get(
            "deployment/istio-ingressgateway",
            "{.spec.template.spec.volumes[?(@.secret.secretName==\"shop-cert\")].name}"
        ) == "credential-0"
    );
    ensure!(
        get(
            "deployment/istio-ingressgateway",
            "{.spec.template.spec.containers[0].volumeMounts[?(@.name==\"credential-0\")].mountPath}"
        ) == "/etc/weft/credentials/shop-cert"
    );
    ensure!(get("pdb/istio-ingressgateway", "{.spec.minAvailable}") == "1");
    // The egress gateway too: Istio's labels, one replica behind a ClusterIP Service.
    wait_until(
        "the egress gateway's Deployment",
        Duration::from_secs(20),
        || {
            Ok(get(
                "deployment/istio-egressgateway",
                "{.spec.template.metadata.labels.istio}",
            ) == "egressgateway")
        },
    )
    .with_context(|| controller.log())?;
    ensure!(get("deployment/istio-egressgateway", "{.spec.replicas}") == "1");
    ensure!(get("service/istio-egressgateway", "{.spec.type}") == "ClusterIP");
    // A Gateway API Gateway of class `weft` is deployed as Gateway API implementations do:
    // named after it and owned by it, on its listeners' ports, its certificateRefs mounted.
    let api = plane.dir().join("gateway-api.yaml");
    std::fs::write(
        &api,
        "apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: shop-gw
  namespace: istio-system
spec:
  gatewayClassName: weft
  listeners:
  - name: http
    port: 80
    protocol: HTTP
  - name: https
    port: 8443
    protocol: HTTPS
    tls:
      mode: Terminate
      certificateRefs:
      - name: shop-gw-cert
",
    )?;
    plane.run(&["apply", "-f", &api.display().to_string()])?;
    wait_until("the Gateway's Deployment", Duration::from_secs(20), || {
        Ok(get("deployment/shop-gw", "{.spec.replicas}") == "2")
    })
    .with_context(|| controller.log())?;
    ensure!(get("deployment/shop-gw", "{.metadata.ownerReferences[0].kind}") == "Gateway");
    ensure!(
        get(
            "deployment/shop-gw",
            "{.spec.template.metadata.labels.gateway\\.networking\\.k8s\\.io/gateway-name}"
        ) == "shop-gw"
    );
    ensure!(get("service/shop-gw", "{.spec.type}") == "LoadBalancer");
    ensure!(get("service/shop-gw", "{.spec.ports[*].port}") == "80 8443");
    ensure!(get("pdb/shop-gw", "{.spec.minAvailable}") == "1");
    ensure!(
        get(
            "deployment/shop-gw",
            "{.spec.template.spec.volumes[?(@.secret.secretName==\"shop-gw-cert\")].name}"
        ) == "credential-0"
    );
    // What does not map is named in the verdict; the gateways are not.
    let message = get(
        "istiooperator/istio-operator",
        "{.status.conditions[?(@.type==\"Accepted\")].message}",
    );
    ensure!(
        message.contains("spec.profile") && !message.contains("egressGateways"),
        "{message}"
    );
    Ok(())
}
