//! The policy YAML users already have: every example of the guide is accepted unchanged, what
//! Weft does not do is noted by field, and a typo is an error naming the object and the field.

use std::path::Path;

use weft_controller::model::Object;
use weft_controller::model::policy::{PolicyKind, PolicySpec};
use weft_controller::source::manifests::parse_file;

fn guide() -> Vec<(String, Vec<Object>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/guide");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("examples/guide")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).expect("read");
            let (objects, errors) = parse_file(&path, &text);
            assert!(errors.is_empty(), "{}: {errors:?}", path.display());
            (
                path.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                objects,
            )
        })
        .collect()
}

fn policies(objects: &[Object]) -> Vec<&weft_controller::model::policy::Policy> {
    objects
        .iter()
        .filter_map(|o| match o {
            Object::Policy(p) => Some(&**p),
            _ => None,
        })
        .collect()
}

#[test]
fn every_example_of_the_guide_is_accepted_unchanged() {
    let guide = guide();
    let count: usize = guide.iter().map(|(_, o)| policies(o).len()).sum();
    assert_eq!(count, 19, "every policy of the guide is read");
    for (file, objects) in &guide {
        for p in policies(objects) {
            match (file.as_str(), &p.spec) {
                ("istio-retry.yaml", PolicySpec::VirtualService(vs)) => {
                    let retries = vs.http[0].retries.as_ref().expect("`retry:` is read");
                    assert_eq!(retries.attempts, 3);
                    assert_eq!(retries.per_try_timeout.map(|d| d.0.as_millis()), Some(2000));
                    assert_eq!(
                        retries.retry_on.as_ref().map(|r| r.0.len()),
                        Some(5),
                        "a list of conditions"
                    );
                    assert!(p.notes.is_empty(), "{:?}", p.notes);
                    // Read as meant, and the verdict names what the upstream API has.
                    assert!(
                        p.hints.iter().any(
                            |h| h.starts_with("spec.http[0].retry:") && h.contains("`retries`")
                        ),
                        "{:?}",
                        p.hints
                    );
                }
                ("istio-circuit-breaker.yaml", PolicySpec::DestinationRule(dr)) => {
                    let outlier = dr
                        .traffic_policy
                        .as_ref()
                        .and_then(|t| t.outlier_detection.as_ref())
                        .expect("outlierDetection");
                    assert_eq!(outlier.consecutive_gateway_errors, Some(5));
                    assert_eq!(outlier.max_ejection_percent, Some(50));
                    assert!(p.notes.is_empty(), "{:?}", p.notes);
                    assert!(
                        p.hints
                            .iter()
                            .any(|h| h.contains("`consecutiveGatewayErrors`")),
                        "{:?}",
                        p.hints
                    );
                }
                ("istio-traffic-management.yaml", PolicySpec::IstioGateway(g)) => {
                    // Served as it is: port 80 HTTP for every host, on the pods it selects.
                    assert!(p.notes.is_empty(), "{:?}", p.notes);
                    assert_eq!(
                        g.selector.get("istio").map(String::as_str),
                        Some("ingressgateway")
                    );
                    assert!(g.servers[0].served());
                    assert_eq!(g.servers[0].port.number, 80);
                    assert_eq!(g.servers[0].hostnames().collect::<Vec<_>>(), ["*"]);
                }
                ("linkerd-retry.yaml", PolicySpec::ServiceProfile(sp)) => {
                    let budget = sp.routes[0]
                        .retries
                        .as_ref()
                        .and_then(|r| r.budget.as_ref())
                        .expect("budget");
                    assert_eq!(budget.retry_ratio, Some(0.2));
                    assert_eq!(budget.min_retries_per_second, Some(10));
                    assert!(
                        p.notes.iter().any(|n| n.contains("percentile")),
                        "{:?}",
                        p.notes
                    );
                    assert!(
                        p.hints
                            .iter()
                            .any(|h| h.contains("apiVersion v1")
                                && h.contains("linkerd.io/v1alpha2")),
                        "{:?}",
                        p.hints
                    );
                }
                ("linkerd-config.yaml", PolicySpec::ServiceProfile(sp)) => {
                    assert_eq!(sp.routes[0].response_classes[1].status_codes.len(), 4);
                    assert_eq!(p.key.namespace, "emojivoto");
                }
                ("istio-tracing.yaml", PolicySpec::IstioOperator(o)) => {
                    let c = o.tracing.collector.as_ref().expect("a collector");
                    assert_eq!(
                        c.to_string(),
                        "zipkin:jaeger-collector.istio-system:9411",
                        "the Jaeger host's Zipkin port"
                    );
                    assert_eq!(o.tracing.sampling_percent, Some(10.0));
                    assert!(
                        p.notes.iter().any(|n| n.starts_with(
                            "spec.values.tracing.jaeger.agentPort: 6831 is the Jaeger agent's UDP port"
                        )),
                        "the verdict says the agent's transport is not spoken: {:?}",
                        p.notes
                    );
                }
                ("linkerd-tracing.yaml", PolicySpec::LinkerdConfig(l)) => {
                    let c = l.tracing.collector.as_ref().expect("a collector");
                    assert_eq!(c.to_string(), "zipkin:collector.linkerd-jaeger:9411");
                    assert_eq!(l.tracing.sampling_percent, Some(100.0));
                    assert!(
                        p.notes
                            .iter()
                            .any(|n| n.starts_with("data[config.yaml].profiler:")),
                        "{:?}",
                        p.notes
                    );
                }
                ("linkerd-config.yaml", PolicySpec::LinkerdConfig(l)) => {
                    assert_eq!(l.tracing.collector, None, "it names no collector");
                    for field in ["proxy", "identityTrustAnchorsPEM", "profile"] {
                        assert!(
                            p.notes
                                .iter()
                                .any(|n| n.starts_with(&format!("data[config.yaml].{field}:"))),
                            "{field} is named: {:?}",
                            p.notes
                        );
                    }
                }
                ("linkerd-canary.yaml", PolicySpec::TrafficSplit(ts)) => {
                    assert_eq!(ts.backends[0].weight.0, 90.0);
                }
                _ => {}
            }
        }
    }
    // The ConfigMap beside the ServiceProfile is read for its tracing.
    let (_, config) = guide
        .iter()
        .find(|(f, _)| f == "linkerd-config.yaml")
        .expect("file");
    assert!(
        policies(config)
            .iter()
            .any(|p| p.kind == PolicyKind::LinkerdConfig)
    );
}

#[test]
fn a_typo_in_a_policy_names_the_object_and_the_field() {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/guide/istio-retry.yaml"),
    )
    .expect("read");
    let typo = text.replace("perTryTimeout", "perTryTimout");
    let (objects, errors) = parse_file(Path::new("retry.yaml"), &typo);
    assert!(objects.is_empty());
    assert_eq!(errors.len(), 1, "{errors:?}");
    let e = &errors[0];
    assert!(
        e.contains("retry.yaml: document 1")
            && e.contains("VirtualService default/reviews")
            && e.contains("spec.http[0].retry")
            && e.contains("perTryTimout"),
        "{e}"
    );

    let bad_duration = text.replace("perTryTimeout: 2s", "perTryTimeout: 2");
    let (_, errors) = parse_file(Path::new("retry.yaml"), &bad_duration);
    assert!(
        errors[0].contains("perTryTimeout") && errors[0].contains("no unit"),
        "{errors:?}"
    );

    let bad_mode = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: p, namespace: shop}\nspec: {mtls: {mode: STRICTEST}}\n";
    let (_, errors) = parse_file(Path::new("pa.yaml"), bad_mode);
    assert!(
        errors[0].contains("PeerAuthentication shop/p")
            && errors[0].contains("spec.mtls.mode")
            && errors[0].contains("STRICTEST"),
        "{errors:?}"
    );
}

#[test]
fn fields_weft_does_not_honour_are_noted_by_field() {
    let text = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: shop}
spec:
  hosts: [reviews]
  gateways: [bookinfo-gateway]
  http:
  - corsPolicy: {allowOrigins: [{exact: "https://shop.example"}]}
    route: [{destination: {host: reviews}}]
"#;
    let (objects, errors) = parse_file(Path::new("vs.yaml"), text);
    assert!(errors.is_empty(), "{errors:?}");
    let Object::Policy(p) = &objects[0] else {
        panic!("policy")
    };
    assert_eq!(p.kind, PolicyKind::VirtualService);
    assert!(
        p.notes
            .iter()
            .any(|n| n.starts_with("spec.http[0].corsPolicy")),
        "{:?}",
        p.notes
    );
    // `gateways` is honoured: the routes apply at that ingress gateway only.
    assert!(
        !p.notes.iter().any(|n| n.starts_with("spec.gateways")),
        "{:?}",
        p.notes
    );
}

#[test]
fn a_regex_that_does_not_compile_refuses_the_policy_not_the_mesh() {
    let vs = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: shop}
spec:
  hosts: [reviews]
  http:
  - match: [{uri: {regex: \"/api/(v1\"}}]
    route: [{destination: {host: reviews}}]
";
    let (objects, errors) = parse_file(Path::new("vs.yaml"), vs);
    assert!(objects.is_empty());
    assert!(
        errors[0].contains("VirtualService shop/reviews")
            && errors[0].contains("spec.http[0].match[0].uri.regex")
            && errors[0].contains("not a valid regular expression"),
        "{errors:?}"
    );
    let guide = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../examples/guide/linkerd-circuit-breaker.yaml"),
    )
    .expect("guide");
    let (_, errors) = parse_file(
        Path::new("sp.yaml"),
        &guide.replace("pathRegex: /api/.*", "pathRegex: /api/[a-"),
    );
    assert!(
        errors[0].contains("spec.routes[0].condition.pathRegex"),
        "{errors:?}"
    );
    let route = "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: shop}
spec:
  parentRefs: [{group: \"\", kind: Service, name: reviews}]
  rules: [{matches: [{headers: [{type: RegularExpression, name: x, value: \"*bad\"}]}]}]
";
    let (_, errors) = parse_file(Path::new("r.yaml"), route);
    assert!(
        errors[0].contains("spec.rules[0].matches[0].headers[0].value"),
        "{errors:?}"
    );
}

/// Fields each API has, that Weft reads but does not act on: every one is named in the notes.
#[test]
fn typed_fields_weft_ignores_are_each_named() {
    let text = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: vs, namespace: shop}
spec:
  hosts: [reviews]
  http:
  - match: [{authority: {exact: reviews.shop}, ignoreUriCase: true}]
    route: [{destination: {host: reviews, port: {number: 9080}}}]
    retries: {attempts: 2, retryOn: "5xx,reset-before-request"}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: dr, namespace: shop}
spec:
  host: reviews
  trafficPolicy: {connectionPool: {http: {maxRetries: 3}}}
---
apiVersion: linkerd.io/v1alpha2
kind: ServiceProfile
metadata: {name: reviews.shop.svc.cluster.local, namespace: shop}
spec:
  dstOverrides: [{authority: reviews-v2.shop.svc.cluster.local:9080, weight: 1}]
  routes:
  - name: not-get
    condition: {not: {method: GET}}
    responseClasses: [{condition: {any: [{status: {min: 500}}]}, isFailure: true}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: route, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: reviews, sectionName: http}]
  hostnames: [reviews.example]
  rules: [{backendRefs: [{name: reviews, port: 9080}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: shop}
spec:
  gatewayClassName: weft-waypoint
  addresses: [{value: 10.0.0.1}]
  infrastructure: {labels: {a: b}}
  listeners: [{name: mesh, port: 15008, protocol: HBONE, hostname: x.example, allowedRoutes: {namespaces: {from: All}}, tls: {mode: Terminate}}]
"#;
    let (objects, errors) = parse_file(Path::new("all.yaml"), text);
    assert!(errors.is_empty(), "{errors:?}");
    let notes: Vec<String> = policies(&objects)
        .iter()
        .flat_map(|p| p.notes.iter().map(move |n| format!("{} {n}", p.describe())))
        .collect();
    for field in [
        "VirtualService shop/vs spec.http[0].match[0].authority",
        "VirtualService shop/vs spec.http[0].match[0].ignoreUriCase",
        "VirtualService shop/vs spec.http[0].route[0].destination.port",
        "VirtualService shop/vs spec.http[0].retries.retryOn[1]",
        "DestinationRule shop/dr spec.trafficPolicy.connectionPool.http.maxRetries",
        "ServiceProfile shop/reviews.shop.svc.cluster.local spec.dstOverrides",
        "ServiceProfile shop/reviews.shop.svc.cluster.local spec.routes[0].condition",
        "ServiceProfile shop/reviews.shop.svc.cluster.local spec.routes[0].responseClasses[0].condition",
        "HTTPRoute shop/route spec.hostnames",
        "HTTPRoute shop/route spec.parentRefs[0].sectionName",
        "Gateway shop/waypoint spec.addresses",
        "Gateway shop/waypoint spec.infrastructure",
        "Gateway shop/waypoint spec.listeners[0].hostname",
        "Gateway shop/waypoint spec.listeners[0].allowedRoutes",
        "Gateway shop/waypoint spec.listeners[0].tls",
    ] {
        assert!(
            notes.iter().any(|n| n.starts_with(field)),
            "{field} is not named: {notes:#?}"
        );
    }
}

#[test]
fn http_route_filters_the_api_forbids_refuse_the_route_naming_the_filter() {
    let route = |rule: &str| {
        format!(
            "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: r, namespace: shop}}
spec:
  parentRefs: [{{group: \"\", kind: Service, name: reviews}}]
  rules:
  - {rule}
"
        )
    };
    for (rule, expected) in [
        (
            "{matches: [{path: {type: Exact, value: /a}}], filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /b}}}]}",
            "spec.rules[0].filters[0]: ReplacePrefixMatch needs every match",
        ),
        (
            "{filters: [{type: RequestRedirect, requestRedirect: {statusCode: 200}}]}",
            "spec.rules[0].filters[0].requestRedirect.statusCode: 200",
        ),
        (
            "{filters: [{type: RequestMirror}]}",
            "spec.rules[0].filters[0]: a RequestMirror filter needs its settings",
        ),
        (
            "{filters: [{type: RequestMirror, requestMirror: {backendRef: {name: v2}, percent: 150}}]}",
            "spec.rules[0].filters[0].requestMirror: not a share",
        ),
        (
            "{filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplaceFullPath}}}]}",
            "spec.rules[0].filters[0]: path type \"ReplaceFullPath\" needs its own field",
        ),
        (
            "{filters: [{type: URLRewrite, urlRewrite: {hostname: a}}, {type: RequestRedirect, requestRedirect: {hostname: b}}]}",
            "RequestRedirect and URLRewrite cannot both be used",
        ),
    ] {
        let (objects, errors) = parse_file(Path::new("r.yaml"), &route(rule));
        assert!(objects.is_empty(), "{rule} was accepted");
        assert!(
            errors.len() == 1 && errors[0].contains(expected),
            "{rule}: {errors:?}"
        );
    }
    let (objects, errors) = parse_file(
        Path::new("r.yaml"),
        &route(
            "{matches: [{path: {value: /a}}], filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /b}}}]}",
        ),
    );
    assert!(errors.is_empty() && objects.len() == 1, "{errors:?}");
}

#[test]
fn port_level_mtls_keys_arrive_as_numbers_from_yaml_and_as_strings_from_the_api_server() {
    use weft_controller::model::policy::{PolicyKind, PolicySpec, parse};
    for keys in ["9090: {mode: DISABLE}", "\"9090\": {mode: DISABLE}"] {
        let doc: serde_yaml::Value = serde_yaml::from_str(&format!(
            "apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: pa, namespace: shop}}
spec:
  selector: {{matchLabels: {{app: web}}}}
  portLevelMtls: {{{keys}}}
"
        ))
        .expect("yaml");
        let policy = parse(PolicyKind::PeerAuthentication, &doc).expect("accepted");
        let PolicySpec::PeerAuthentication(pa) = &policy.spec else {
            panic!("a PeerAuthentication");
        };
        assert!(pa.port_level_mtls.contains_key(&9090), "{keys}");
    }
    let doc: serde_yaml::Value = serde_yaml::from_str(
        "apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: pa, namespace: shop}
spec: {portLevelMtls: {\"http\": {mode: DISABLE}}}
",
    )
    .expect("yaml");
    let refused = parse(PolicyKind::PeerAuthentication, &doc).expect_err("not a port");
    assert!(refused.contains("\"http\" is not a port"), "{refused}");
}
