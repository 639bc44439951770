//! The cluster the translation tests read: reviews v1/v2 behind a waypoint in `default`.

use std::path::Path;

use weft_controller::model::Objects;
use weft_controller::source::manifests::parse_file;

const CLUSTER: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: default, labels: {weft.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Pod
metadata: {name: reviews-v1, namespace: default, labels: {app: reviews, version: v1}}
spec: {nodeName: node1, serviceAccountName: reviews, containers: [{name: app, image: x, ports: [{name: http, containerPort: 8080}]}]}
status: {podIP: 10.10.1.2}
---
apiVersion: v1
kind: Pod
metadata: {name: reviews-v2, namespace: default, labels: {app: reviews, version: v2}}
spec: {nodeName: node2, serviceAccountName: reviews, containers: [{name: app, image: x, ports: [{name: http, containerPort: 8080}]}]}
status: {podIP: 10.10.2.2}
---
apiVersion: v1
kind: Pod
metadata: {name: waypoint-abc, namespace: default, labels: {gateway.networking.k8s.io/gateway-name: waypoint}}
spec: {nodeName: node1, serviceAccountName: waypoint, containers: [{name: w, image: x}]}
status: {podIP: 10.10.1.9}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: default}
spec: {gatewayClassName: weft-waypoint, listeners: [{name: mesh, port: 15008, protocol: HBONE}]}
---
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: default, labels: {weft.io/use-waypoint: waypoint}}
spec: {clusterIP: 10.96.0.30, selector: {app: reviews}, ports: [{port: 9080, targetPort: http}]}
---
apiVersion: v1
kind: Service
metadata: {name: reviews-v2, namespace: default}
spec: {clusterIP: 10.96.0.32, selector: {app: reviews, version: v2}, ports: [{port: 9080, targetPort: 8080}]}
"#;

pub(crate) fn objects(extra: &str) -> Objects {
    let (parsed, errors) = parse_file(Path::new("cluster.yaml"), &format!("{CLUSTER}---\n{extra}"));
    assert!(errors.is_empty(), "{errors:?}");
    let mut objects = Objects::default();
    for o in parsed {
        objects.upsert(o);
    }
    objects
}
