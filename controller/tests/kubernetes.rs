//! The Kubernetes source through kube's real client, against recorded API-server exchanges:
//! list, watch, bookmarks, `410 Gone` → relist, a pod changing IP, a namespace label flipping,
//! and an object the parser refuses.

mod support;

use std::net::IpAddr;

use support::{ApiServer, Reply, recorded, until};
use weft_controller::model::{self, Objects};
use weft_controller::source::kubernetes;
use weft_core::mesh::Protocol;

const KINDS: [&str; 3] = ["/api/v1/namespaces", "/api/v1/pods", "/api/v1/services"];

fn workload<'a>(
    mesh: &'a weft_core::mesh::MeshConfig,
    name: &str,
) -> Option<&'a weft_core::mesh::Workload> {
    mesh.workloads.iter().find(|w| w.name == name)
}

fn mesh(objects: &Objects) -> weft_core::mesh::MeshConfig {
    model::mesh_config(objects, "cluster.local")
}

#[tokio::test]
async fn lists_watches_follows_bookmarks_and_relists_after_410_gone() {
    let exchanges = recorded(include_str!("recorded/watch.json"));
    let api = ApiServer::default();
    api.push(
        "list /api/v1/namespaces",
        Reply::json(200, &exchanges["namespaces-list"]),
    );
    api.push(
        "list /api/v1/pods",
        Reply::json(200, &exchanges["pods-list"]),
    );
    api.push(
        "list /api/v1/services",
        Reply::json(200, &exchanges["services-list"]),
    );
    let mut snapshots = kubernetes::spawn_kinds(&api.client(), &kubernetes::watched()[..3]);

    // The first list of every kind: the pod is known, not enrolled (no ambient label yet).
    let first = until(&mut snapshots, "the first full list", |s| s.synced).await;
    let config = mesh(&first.objects);
    let web = workload(&config, "web-1").expect("web-1 listed");
    assert_eq!(web.protocol, Protocol::Tcp);
    assert_eq!(web.ip, "10.244.1.7".parse::<IpAddr>().expect("ip"));
    assert_eq!(config.services[0].endpoints, vec!["web-1".to_owned()]);
    assert_eq!(config.services[0].ports[0].target_port, 8080, "named port");

    // The namespace label flips to ambient: its running pod is enrolled.
    api.push(
        "watch /api/v1/namespaces",
        Reply::events(&exchanges["namespace-labelled-ambient"]),
    );
    until(&mut snapshots, "the namespace label", |s| {
        workload(&mesh(&s.objects), "web-1").is_some_and(|w| w.protocol == Protocol::Hbone)
    })
    .await;

    // The pod is rescheduled with a new IP; a bookmark follows, then the watch ends.
    api.push(
        "watch /api/v1/pods",
        Reply::events(&exchanges["pod-new-ip-then-bookmark"]),
    );
    let moved = until(&mut snapshots, "the new pod IP", |s| {
        workload(&mesh(&s.objects), "web-1")
            .is_some_and(|w| w.ip.to_string() == "10.244.2.9" && w.node == "node2")
    })
    .await;
    assert_eq!(
        mesh(&moved.objects).services[0].endpoints,
        vec!["web-1".to_owned()]
    );
    // The watch resumes from the bookmark's version, not the last object's.
    wait_for_request(&api, |(m, uri)| {
        m == "GET"
            && uri.starts_with("/api/v1/pods?")
            && uri.contains("watch=true")
            && uri.contains("resourceVersion=1377")
    })
    .await;

    // The resumed watch is too old (410 Gone): the source relists, and a pod deleted while it
    // was away (web-1) is gone; the new one (web-2) is there.
    api.push(
        "watch /api/v1/pods",
        Reply::events(&exchanges["pod-watch-expired"]),
    );
    api.push(
        "list /api/v1/pods",
        Reply::json(200, &exchanges["pods-relist"]),
    );
    let relisted = until(&mut snapshots, "the relist after 410", |s| {
        let config = mesh(&s.objects);
        workload(&config, "web-1").is_none() && workload(&config, "web-2").is_some()
    })
    .await;
    let config = mesh(&relisted.objects);
    assert_eq!(
        workload(&config, "web-2").map(|w| w.protocol),
        Some(Protocol::Hbone),
        "the namespace's label survives the pods' relist"
    );
    assert_eq!(config.services[0].endpoints, vec!["web-2".to_owned()]);

    // An object the parser refuses: a clear error naming it and the field; its last good
    // version and everything else stay.
    api.push(
        "watch /api/v1/services",
        Reply::events(&exchanges["service-broken-cluster-ip"]),
    );
    let broken = until(&mut snapshots, "the service error", |s| {
        !s.errors.is_empty()
    })
    .await;
    assert_eq!(broken.errors.len(), 1, "{:?}", broken.errors);
    let error = &broken.errors[0];
    assert!(
        error.contains("Service shop/web") && error.contains("spec.ports[0].port"),
        "{error}"
    );
    let config = mesh(&broken.objects);
    assert_eq!(config.services.len(), 1, "last good service kept");
    assert_eq!(config.services[0].vip.to_string(), "10.96.40.12");
    assert_eq!(config.services[0].endpoints, vec!["web-2".to_owned()]);

    // The label is removed: the pod goes back to direct.
    api.push(
        "watch /api/v1/namespaces",
        Reply::events(&exchanges["namespace-label-removed"]),
    );
    until(&mut snapshots, "the label removed", |s| {
        workload(&mesh(&s.objects), "web-2").is_some_and(|w| w.protocol == Protocol::Tcp)
    })
    .await;

    // One cluster-wide list and watch per kind: never per object, namespace or node.
    let log = api.log();
    for (method, uri) in &log {
        assert_eq!(method, "GET", "{uri}");
        let path = uri.split('?').next().unwrap_or("");
        assert!(KINDS.contains(&path), "unexpected request {uri}");
        if uri.contains("watch=true") {
            assert!(
                uri.contains("allowWatchBookmarks=true"),
                "bookmarks asked for: {uri}"
            );
        }
    }
    let pod_lists = log
        .iter()
        .filter(|(_, u)| u.starts_with("/api/v1/pods?") && !u.contains("watch=true"))
        .count();
    assert_eq!(
        pod_lists, 2,
        "listed once, relisted once after 410: {log:?}"
    );
    let namespace_lists = log
        .iter()
        .filter(|(_, u)| u.starts_with("/api/v1/namespaces?") && !u.contains("watch=true"))
        .count();
    assert_eq!(
        namespace_lists, 1,
        "a pod relist does not relist namespaces"
    );
}

async fn wait_for_request(api: &ApiServer, check: impl Fn(&(String, String)) -> bool) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while !api.log().iter().any(&check) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "request not seen: {:?}",
            api.log()
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn node_proxies_are_authenticated_with_token_review() {
    use weft_controller::grpc::NodeAuth;
    use weft_controller::k8s::TokenReviewer;

    let exchanges = recorded(include_str!("recorded/tokenreview.json"));
    let api = ApiServer::default();
    let auth = NodeAuth::TokenReview(TokenReviewer::new(
        api.client(),
        "weft",
        "weft-system",
        "weft-node-proxy",
    ));
    let bearer = |token: &str| {
        let mut metadata = tonic::metadata::MetadataMap::new();
        metadata.insert(
            "authorization",
            format!("Bearer {token}").parse().expect("header"),
        );
        metadata
    };
    const REVIEWS: &str = "post /apis/authentication.k8s.io/v1/tokenreviews";

    // The node proxy's projected token: the node comes from the API server's answer.
    api.push(REVIEWS, Reply::json(201, &exchanges["node-proxy-on-node1"]));
    let node1 = bearer("eyJhbGciOiJSUzI1NiIsImtpZCI6Im5vZGUxIn0.node1.sig");
    assert_eq!(auth.node_of(&node1).await.expect("node1"), "node1");
    let (_, sent) = &api.bodies()[0];
    assert_eq!(sent["spec"]["audiences"], serde_json::json!(["weft"]));
    assert_eq!(
        sent["spec"]["token"],
        "eyJhbGciOiJSUzI1NiIsImtpZCI6Im5vZGUxIn0.node1.sig"
    );
    // Reviewed once, then cached: a reconnect does not cost another review.
    assert_eq!(auth.node_of(&node1).await.expect("cached"), "node1");
    assert_eq!(api.bodies().len(), 1);

    // A token the API server rejects.
    api.push(REVIEWS, Reply::json(201, &exchanges["invalid-token"]));
    let refused = auth.node_of(&bearer("garbage")).await.expect_err("invalid");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    assert!(
        refused.message().contains("invalid bearer token"),
        "{refused:?}"
    );

    // A valid token of another service account is that account, not a node: the services
    // let it act only as the waypoint running as it.
    api.push(REVIEWS, Reply::json(201, &exchanges["workload-token"]));
    assert_eq!(
        auth.node_of(&bearer("eyJ.web.sig"))
            .await
            .expect("workload"),
        "sa:shop:web"
    );
    let published = weft_controller::grpc::Published::default();
    assert!(!published.may_stream_as("sa:shop:web", "node2"));
    assert!(!published.may_stream_as("sa:shop:web", "waypoint.shop.web"));
    assert!(published.waypoint_identity("sa:shop:web").is_none());

    // No credential at all.
    let refused = auth
        .node_of(&tonic::metadata::MetadataMap::new())
        .await
        .expect_err("none");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
}

#[tokio::test]
async fn missing_crds_do_not_block_the_sync_and_a_refused_policy_keeps_its_last_good_version() {
    use weft_controller::model::policy::PolicyKind;

    let api = ApiServer::default();
    let not_found = serde_json::json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": "the server could not find the requested resource",
        "reason": "NotFound", "details": {}, "code": 404
    });
    let empty = |kind: &str| serde_json::json!({"kind": kind, "apiVersion": "v1", "metadata": {"resourceVersion": "10"}, "items": []});
    api.push(
        "list /api/v1/namespaces",
        Reply::json(200, &empty("NamespaceList")),
    );
    api.push("list /api/v1/pods", Reply::json(200, &empty("PodList")));
    api.push(
        "list /api/v1/services",
        Reply::json(200, &empty("ServiceList")),
    );
    api.push(
        "list /apis/discovery.k8s.io/v1/endpointslices",
        Reply::json(200, &empty("EndpointSliceList")),
    );
    let vs = |generation: i64, spec: serde_json::Value| {
        serde_json::json!({
            "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": "reviews", "namespace": "shop", "generation": generation,
                         "resourceVersion": format!("{}", 20 + generation), "uid": "4d5e6f70-0000-4b8c-9dae-aaaaaaaaaaaa"},
            "spec": spec
        })
    };
    for kind in PolicyKind::ALL {
        let a = kind.api();
        if !kind.is_custom() {
            // linkerd-config: a ConfigMap, in the core group (none here).
            api.push(
                "list /api/v1/configmaps",
                Reply::json(200, &empty("ConfigMapList")),
            );
            continue;
        }
        let path = format!("list /apis/{}/{}/{}", a.group, a.version, a.plural);
        if kind == PolicyKind::VirtualService {
            let mut list = serde_json::json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualServiceList",
                "metadata": {"resourceVersion": "30"}, "items": []});
            list["items"] = serde_json::json!([vs(
                1,
                serde_json::json!({"hosts": ["reviews"], "http": [{"timeout": "2s", "route": [{"destination": {"host": "reviews"}}]}]})
            )]);
            api.push(&path, Reply::json(200, &list));
        } else {
            api.push(&path, Reply::json(404, &not_found));
        }
    }
    let mut snapshots = kubernetes::spawn(&api.client());
    let synced = until(&mut snapshots, "sync without the missing CRDs", |s| {
        s.synced
    })
    .await;
    assert_eq!(synced.objects.policies.len(), 1);

    // A new generation with a typo: refused by field, the last good version stays.
    api.push(
        "watch /apis/networking.istio.io/v1/virtualservices",
        Reply::events(&serde_json::json!([{"type": "MODIFIED", "object": vs(2, serde_json::json!({"hosts": ["reviews"], "http": [{"timeuot": "2s", "route": [{"destination": {"host": "reviews"}}]}]}))}])),
    );
    let refused = until(&mut snapshots, "the refused policy", |s| {
        !s.rejected.is_empty()
    })
    .await;
    let rejected = &refused.rejected[0];
    assert_eq!(rejected.kind, PolicyKind::VirtualService);
    assert_eq!(rejected.generation, Some(2));
    assert!(rejected.message.contains("timeuot"), "{}", rejected.message);
    let kept = refused
        .objects
        .policies
        .values()
        .next()
        .expect("last good kept");
    assert_eq!(kept.generation, Some(1));
}

#[tokio::test]
async fn a_waypoint_gateway_becomes_a_service_account_config_map_deployment_and_service() {
    use weft_controller::k8s::WaypointDeployer;
    use weft_controller::k8s::waypoints::{DeploySettings, WaypointGateway};
    use weft_controller::model::ObjectKey;

    let api = ApiServer::default();
    let gateway = WaypointGateway {
        key: ObjectKey::new("default", "reviews-waypoint"),
        uid: Some("7e1d0c2b-0000-4a5b-8c7d-bbbbbbbbbbbb".into()),
        ingress: None,
    };
    let settings = DeploySettings {
        image: "weft/waypoint:0.1.0".into(),
        controller: "10.96.0.5:15012".parse().expect("addr"),
        trust_domain: "cluster.local".into(),
        root_pem: "-----BEGIN CERTIFICATE-----\nroot\n-----END CERTIFICATE-----\n".into(),
    };
    let paths = [
        "/api/v1/namespaces/default/serviceaccounts/reviews-waypoint",
        "/api/v1/namespaces/default/configmaps/reviews-waypoint-root-cert",
        "/apis/apps/v1/namespaces/default/deployments/reviews-waypoint",
        "/api/v1/namespaces/default/services/reviews-waypoint",
    ];
    let echo = |path: &str| {
        let name = path.rsplit('/').next().unwrap_or_default().to_owned();
        Reply::json(
            200,
            &serde_json::json!({"apiVersion": "v1", "kind": "Any", "metadata": {"name": name, "namespace": "default"}}),
        )
    };
    for path in paths {
        api.push(&format!("patch {path}"), echo(path));
    }
    let mut deployer = WaypointDeployer::new(api.client());
    assert_eq!(
        deployer
            .apply(std::slice::from_ref(&gateway), &settings)
            .await,
        4
    );

    let log = api.log();
    for path in paths {
        assert!(
            log.iter().any(|(m, uri)| m == "PATCH"
                && uri.starts_with(path)
                && uri.contains("fieldManager=weft-controller")
                && uri.contains("force=true")),
            "server-side apply of {path}: {log:?}"
        );
    }
    let bodies = api.bodies();
    let deployment = &bodies
        .iter()
        .find(|(k, _)| k.ends_with("deployments/reviews-waypoint"))
        .expect("deployment applied")
        .1;
    let pod = &deployment["spec"]["template"];
    assert_eq!(
        pod["metadata"]["labels"]["gateway.networking.k8s.io/gateway-name"],
        "reviews-waypoint"
    );
    assert_eq!(
        pod["metadata"]["labels"]["weft.io/dataplane-mode"], "none",
        "never captured"
    );
    assert_eq!(pod["spec"]["serviceAccountName"], "reviews-waypoint");
    let args: Vec<&str> = pod["spec"]["containers"][0]["args"]
        .as_array()
        .expect("args")
        .iter()
        .filter_map(|a| a.as_str())
        .collect();
    assert!(
        args.windows(2)
            .any(|w| w == ["--controller", "10.96.0.5:15012"]),
        "{args:?}"
    );
    assert!(
        args.windows(2).any(|w| w == ["--name", "reviews-waypoint"]),
        "{args:?}"
    );
    assert_eq!(
        pod["spec"]["volumes"][0]["projected"]["sources"][0]["serviceAccountToken"]["audience"],
        "weft"
    );
    assert_eq!(
        deployment["metadata"]["ownerReferences"][0]["uid"], "7e1d0c2b-0000-4a5b-8c7d-bbbbbbbbbbbb",
        "owned by the Gateway: deleting it removes the waypoint"
    );

    // Unchanged: nothing applied. A new image: applied again.
    assert_eq!(
        deployer
            .apply(std::slice::from_ref(&gateway), &settings)
            .await,
        0
    );
    for path in paths {
        api.push(&format!("patch {path}"), echo(path));
    }
    let newer = DeploySettings {
        image: "weft/waypoint:0.2.0".into(),
        ..settings
    };
    assert_eq!(deployer.apply(&[gateway], &newer).await, 4);
}
