//! The field walk: every field of every policy kind Weft reads, found in the JSON schema
//! generated from the types the controller deserializes into (so a field added to a type is
//! walked without anyone listing it). Each field is either
//! - marked not honoured (`Unhonoured` in the types): the walk sets it in an otherwise minimal
//!   valid object and checks that the policy's notes name it, so its verdict says
//!   PartiallyHonoured; or
//! - typed but not acted on: it must be in [`NOTED`], and the walk checks the same way that
//!   setting it gets it named;
//! - a label ([`LABELS`]), or honoured: it must be in [`HONOURED`], the list of what the
//!   translation acts on.
//!
//! A field in none of these fails the walk, and so does a listed path the types no longer have.

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};
use weft_controller::model::policy::{PolicyKind, parse};

/// Leaf fields the translation acts on, per kind (`[]`: an array's elements, `{}`: a map's
/// values). Some are honoured for some values and noted for others, which other tests check:
/// VirtualService `gateways` (only `mesh`), `retries.retryOn` (unknown tokens), HTTPRoute
/// `filters[].type` (other filters), `backendRefs[].port` (another port), AuthorizationPolicy
/// `action` (CUSTOM is enforced as DENY, AUDIT decides nothing), Gateway `listeners` (other
/// than HBONE on 15008).
const HONOURED: &[(&str, &[&str])] = &[
    (
        "VirtualService",
        &[
            "spec.gateways",
            "spec.hosts",
            "spec.http[].directResponse.body.string",
            "spec.http[].directResponse.status",
            "spec.http[].fault.abort.httpStatus",
            "spec.http[].fault.abort.percentage.value",
            "spec.http[].fault.delay.fixedDelay",
            "spec.http[].fault.delay.percent",
            "spec.http[].fault.delay.percentage.value",
            "spec.http[].headers.request.add",
            "spec.http[].headers.request.remove",
            "spec.http[].headers.request.set",
            "spec.http[].headers.response.add",
            "spec.http[].headers.response.remove",
            "spec.http[].headers.response.set",
            "spec.http[].match[].headers{}.exact",
            "spec.http[].match[].headers{}.prefix",
            "spec.http[].match[].headers{}.regex",
            "spec.http[].match[].method.exact",
            "spec.http[].match[].method.prefix",
            "spec.http[].match[].method.regex",
            "spec.http[].match[].port",
            "spec.http[].match[].queryParams{}.exact",
            "spec.http[].match[].queryParams{}.prefix",
            "spec.http[].match[].queryParams{}.regex",
            "spec.http[].match[].uri.exact",
            "spec.http[].match[].uri.prefix",
            "spec.http[].match[].uri.regex",
            "spec.http[].match[].withoutHeaders{}.exact",
            "spec.http[].match[].withoutHeaders{}.prefix",
            "spec.http[].match[].withoutHeaders{}.regex",
            "spec.http[].mirror.host",
            "spec.http[].mirror.port.number",
            "spec.http[].mirror.subset",
            "spec.http[].mirrorPercent",
            "spec.http[].mirrorPercentage.value",
            "spec.http[].mirrors[].destination.host",
            "spec.http[].mirrors[].destination.port.number",
            "spec.http[].mirrors[].destination.subset",
            "spec.http[].mirrors[].percentage.value",
            "spec.http[].name",
            "spec.http[].redirect.authority",
            "spec.http[].redirect.port",
            "spec.http[].redirect.redirectCode",
            "spec.http[].redirect.scheme",
            "spec.http[].redirect.uri",
            "spec.http[].retries.attempts",
            "spec.http[].retries.backoff",
            "spec.http[].retries.perTryTimeout",
            "spec.http[].retries.retryOn",
            "spec.http[].rewrite.authority",
            "spec.http[].rewrite.uri",
            "spec.http[].route[].destination.host",
            "spec.http[].route[].destination.subset",
            "spec.http[].route[].weight",
            "spec.http[].timeout",
        ],
    ),
    (
        "DestinationRule",
        &[
            "spec.host",
            "spec.subsets[].labels",
            "spec.subsets[].name",
            "spec.subsets[].trafficPolicy.connectionPool.http.http1MaxPendingRequests",
            "spec.subsets[].trafficPolicy.connectionPool.http.http2MaxRequests",
            "spec.subsets[].trafficPolicy.connectionPool.http.maxRequestsPerConnection",
            "spec.subsets[].trafficPolicy.connectionPool.tcp.connectTimeout",
            "spec.subsets[].trafficPolicy.connectionPool.tcp.maxConnections",
            "spec.subsets[].trafficPolicy.outlierDetection.baseEjectionTime",
            "spec.subsets[].trafficPolicy.outlierDetection.consecutive5xxErrors",
            "spec.subsets[].trafficPolicy.outlierDetection.consecutiveErrors",
            "spec.subsets[].trafficPolicy.outlierDetection.consecutiveGatewayErrors",
            "spec.subsets[].trafficPolicy.outlierDetection.consecutiveLocalOriginFailures",
            "spec.subsets[].trafficPolicy.outlierDetection.interval",
            "spec.subsets[].trafficPolicy.outlierDetection.maxEjectionPercent",
            "spec.subsets[].trafficPolicy.outlierDetection.minHealthPercent",
            "spec.trafficPolicy.connectionPool.http.http1MaxPendingRequests",
            "spec.trafficPolicy.connectionPool.http.http2MaxRequests",
            "spec.trafficPolicy.connectionPool.http.maxRequestsPerConnection",
            "spec.trafficPolicy.connectionPool.tcp.connectTimeout",
            "spec.trafficPolicy.connectionPool.tcp.maxConnections",
            "spec.trafficPolicy.outlierDetection.baseEjectionTime",
            "spec.trafficPolicy.outlierDetection.consecutive5xxErrors",
            "spec.trafficPolicy.outlierDetection.consecutiveErrors",
            "spec.trafficPolicy.outlierDetection.consecutiveGatewayErrors",
            "spec.trafficPolicy.outlierDetection.consecutiveLocalOriginFailures",
            "spec.trafficPolicy.outlierDetection.interval",
            "spec.trafficPolicy.outlierDetection.maxEjectionPercent",
            "spec.trafficPolicy.outlierDetection.minHealthPercent",
        ],
    ),
    ("IstioGateway", &["spec.selector"]),
    (
        "PeerAuthentication",
        &[
            "spec.mtls.mode",
            "spec.portLevelMtls",
            "spec.selector.matchLabels",
        ],
    ),
    (
        "AuthorizationPolicy",
        &[
            "spec.action",
            "spec.rules[].from[].source.ipBlocks",
            "spec.rules[].from[].source.namespaces",
            "spec.rules[].from[].source.notIpBlocks",
            "spec.rules[].from[].source.notNamespaces",
            "spec.rules[].from[].source.notPrincipals",
            "spec.rules[].from[].source.principals",
            "spec.rules[].to[].operation.hosts",
            "spec.rules[].to[].operation.methods",
            "spec.rules[].to[].operation.notHosts",
            "spec.rules[].to[].operation.notMethods",
            "spec.rules[].to[].operation.notPaths",
            "spec.rules[].to[].operation.notPorts",
            "spec.rules[].to[].operation.paths",
            "spec.rules[].to[].operation.ports",
            "spec.rules[].when[].key",
            "spec.rules[].when[].notValues",
            "spec.rules[].when[].values",
            "spec.selector.matchLabels",
            "spec.targetRef.group",
            "spec.targetRef.kind",
            "spec.targetRef.name",
            "spec.targetRef.namespace",
            "spec.targetRefs[].group",
            "spec.targetRefs[].kind",
            "spec.targetRefs[].name",
            "spec.targetRefs[].namespace",
        ],
    ),
    (
        "ServiceProfile",
        &[
            "spec.circuitBreakers.consecutiveErrors",
            "spec.circuitBreakers.interval",
            "spec.circuitBreakers.maxPendingRequests",
            "spec.circuitBreakers.trippingTimeout",
            "spec.retryBudget.initialDelayMs",
            "spec.retryBudget.maxDelayMs",
            "spec.retryBudget.minRetriesPerSecond",
            "spec.retryBudget.retryRatio",
            "spec.retryBudget.ttl",
            "spec.routes[].circuitBreakers.consecutiveErrors",
            "spec.routes[].circuitBreakers.interval",
            "spec.routes[].circuitBreakers.maxPendingRequests",
            "spec.routes[].circuitBreakers.trippingTimeout",
            "spec.routes[].condition.all[]",
            "spec.routes[].condition.any[]",
            "spec.routes[].condition.method",
            "spec.routes[].condition.pathRegex",
            "spec.routes[].isRetryable",
            "spec.routes[].name",
            "spec.routes[].responseClasses[].condition.status.max",
            "spec.routes[].responseClasses[].condition.status.min",
            "spec.routes[].responseClasses[].isFailure",
            "spec.routes[].responseClasses[].statusCodes",
            "spec.routes[].retries.budget.initialDelayMs",
            "spec.routes[].retries.budget.maxDelayMs",
            "spec.routes[].retries.budget.minRetriesPerSecond",
            "spec.routes[].retries.budget.retryRatio",
            "spec.routes[].retries.budget.ttl",
            "spec.routes[].timeout",
        ],
    ),
    (
        "TrafficSplit",
        &[
            "spec.backends[].service",
            "spec.backends[].weight",
            "spec.service",
        ],
    ),
    (
        "HttpRoute",
        &[
            "spec.parentRefs[].group",
            "spec.parentRefs[].kind",
            "spec.parentRefs[].name",
            "spec.parentRefs[].namespace",
            "spec.parentRefs[].port",
            "spec.rules[].backendRefs[].group",
            "spec.rules[].backendRefs[].kind",
            "spec.rules[].backendRefs[].name",
            "spec.rules[].backendRefs[].namespace",
            "spec.rules[].backendRefs[].port",
            "spec.rules[].backendRefs[].weight",
            "spec.rules[].filters[].requestHeaderModifier.add[].name",
            "spec.rules[].filters[].requestHeaderModifier.add[].value",
            "spec.rules[].filters[].requestHeaderModifier.remove",
            "spec.rules[].filters[].requestHeaderModifier.set[].name",
            "spec.rules[].filters[].requestHeaderModifier.set[].value",
            "spec.rules[].filters[].requestMirror.backendRef.group",
            "spec.rules[].filters[].requestMirror.backendRef.kind",
            "spec.rules[].filters[].requestMirror.backendRef.name",
            "spec.rules[].filters[].requestMirror.backendRef.namespace",
            "spec.rules[].filters[].requestMirror.backendRef.port",
            "spec.rules[].filters[].requestMirror.fraction.denominator",
            "spec.rules[].filters[].requestMirror.fraction.numerator",
            "spec.rules[].filters[].requestMirror.percent",
            "spec.rules[].filters[].requestRedirect.hostname",
            "spec.rules[].filters[].requestRedirect.path.replaceFullPath",
            "spec.rules[].filters[].requestRedirect.path.replacePrefixMatch",
            "spec.rules[].filters[].requestRedirect.path.type",
            "spec.rules[].filters[].requestRedirect.port",
            "spec.rules[].filters[].requestRedirect.scheme",
            "spec.rules[].filters[].requestRedirect.statusCode",
            "spec.rules[].filters[].responseHeaderModifier.add[].name",
            "spec.rules[].filters[].responseHeaderModifier.add[].value",
            "spec.rules[].filters[].responseHeaderModifier.remove",
            "spec.rules[].filters[].responseHeaderModifier.set[].name",
            "spec.rules[].filters[].responseHeaderModifier.set[].value",
            "spec.rules[].filters[].type",
            "spec.rules[].filters[].urlRewrite.hostname",
            "spec.rules[].filters[].urlRewrite.path.replaceFullPath",
            "spec.rules[].filters[].urlRewrite.path.replacePrefixMatch",
            "spec.rules[].filters[].urlRewrite.path.type",
            "spec.rules[].matches[].headers[].name",
            "spec.rules[].matches[].headers[].type",
            "spec.rules[].matches[].headers[].value",
            "spec.rules[].matches[].method",
            "spec.rules[].matches[].path.type",
            "spec.rules[].matches[].path.value",
            "spec.rules[].matches[].queryParams[].name",
            "spec.rules[].matches[].queryParams[].type",
            "spec.rules[].matches[].queryParams[].value",
            "spec.rules[].name",
            "spec.rules[].retry.attempts",
            "spec.rules[].retry.backoff",
            "spec.rules[].retry.codes",
            "spec.rules[].timeouts.backendRequest",
            "spec.rules[].timeouts.request",
        ],
    ),
    (
        "Gateway",
        &[
            "spec.gatewayClassName",
            "spec.listeners[].name",
            "spec.listeners[].port",
            "spec.listeners[].protocol",
        ],
    ),
];

/// Typed fields Weft reads but does not act on: any value set is named in the verdict (the
/// walk checks it with the smallest value of the field's type).
const NOTED: &[(&str, &[&str])] = &[
    (
        "VirtualService",
        &[
            "spec.http[].match[].authority.exact",
            "spec.http[].match[].authority.prefix",
            "spec.http[].match[].authority.regex",
            "spec.http[].match[].ignoreUriCase",
            "spec.http[].route[].destination.port.number",
        ],
    ),
    (
        "DestinationRule",
        &[
            "spec.trafficPolicy.connectionPool.http.maxRetries",
            "spec.subsets[].trafficPolicy.connectionPool.http.maxRetries",
        ],
    ),
    (
        "ServiceProfile",
        &[
            "spec.dstOverrides[].authority",
            "spec.dstOverrides[].weight",
            "spec.routes[].condition.not",
            "spec.routes[].responseClasses[].condition.all[]",
            "spec.routes[].responseClasses[].condition.any[]",
            "spec.routes[].responseClasses[].condition.not",
        ],
    ),
    (
        "HttpRoute",
        &["spec.hostnames", "spec.parentRefs[].sectionName"],
    ),
];

/// Names that only label what they sit in (logs, metrics), with no effect on traffic.
const LABELS: &[(&str, &[&str])] = &[
    ("VirtualService", &["spec.http[].match[].name"]),
    ("ServiceProfile", &["spec.routes[].responseClasses[].name"]),
];

/// One leaf field of a kind's spec.
struct Field {
    path: String,
    unhonoured: bool,
}

fn components(root: &Value) -> &Map<String, Value> {
    static EMPTY: std::sync::OnceLock<Map<String, Value>> = std::sync::OnceLock::new();
    root["components"]["schemas"]
        .as_object()
        .unwrap_or_else(|| EMPTY.get_or_init(Map::new))
}

/// The schema behind `s`: through `$ref` and the non-null branch of an `anyOf`, with the name
/// of the last definition followed.
fn deref<'a>(root: &'a Value, mut s: &'a Value) -> (&'a Value, Option<&'a str>) {
    let mut name = None;
    loop {
        if let Some(r) = s.get("$ref").and_then(Value::as_str) {
            let n = r.rsplit('/').next().expect("a ref name");
            name = Some(n);
            s = &components(root)[n];
        } else if let Some(alts) = s.get("anyOf").and_then(Value::as_array) {
            let Some(alt) = alts.iter().find(|a| a.get("nullable").is_none()) else {
                return (s, name);
            };
            s = alt;
        } else {
            return (s, name);
        }
    }
}

fn has_type(s: &Value, t: &str) -> bool {
    match &s["type"] {
        Value::String(x) => x == t,
        Value::Array(xs) => xs.iter().any(|x| x == t),
        _ => false,
    }
}

fn walk(root: &Value, s: &Value, path: &str, stack: &mut Vec<String>, out: &mut Vec<Field>) {
    let (s, name) = deref(root, s);
    if s.get("x-weft-unhonoured").is_some() {
        out.push(Field {
            path: path.to_owned(),
            unhonoured: true,
        });
        return;
    }
    if let Some(name) = name {
        if stack.iter().any(|n| n == name) {
            // A recursive type (a ServiceProfile condition's `all`/`any`/`not`): its fields were
            // walked where it first appeared.
            out.push(Field {
                path: path.to_owned(),
                unhonoured: false,
            });
            return;
        }
        stack.push(name.to_owned());
    }
    if let Some(props) = s.get("properties").and_then(Value::as_object) {
        for (field, sub) in props {
            walk(root, sub, &format!("{path}.{field}"), stack, out);
        }
    } else if has_type(s, "array") {
        let items = &s["items"];
        let (inner, _) = deref(root, items);
        if inner.get("properties").is_some() || inner.get("x-weft-unhonoured").is_some() {
            walk(root, items, &format!("{path}[]"), stack, out);
        } else {
            out.push(Field {
                path: path.to_owned(),
                unhonoured: false,
            });
        }
    } else if let Some(values) = s.get("additionalProperties").filter(|v| v.is_object()) {
        let (inner, _) = deref(root, values);
        if inner.get("properties").is_some() {
            walk(root, values, &format!("{path}{{}}"), stack, out);
        } else {
            out.push(Field {
                path: path.to_owned(),
                unhonoured: false,
            });
        }
    } else {
        out.push(Field {
            path: path.to_owned(),
            unhonoured: false,
        });
    }
    if name.is_some() {
        stack.pop();
    }
}

fn fields(kind: PolicyKind) -> (Value, Vec<Field>) {
    let root = serde_json::to_value(kind.spec_schema()).expect("a schema");
    let mut out = Vec::new();
    walk(&root, &root, "spec", &mut Vec::new(), &mut out);
    (root, out)
}

/// The smallest value `s` accepts: its required fields, each at its smallest.
fn minimal(root: &Value, s: &Value) -> Value {
    let (s, _) = deref(root, s);
    if let Some(first) = s
        .get("enum")
        .and_then(Value::as_array)
        .and_then(|e| e.first())
    {
        return first.clone();
    }
    if s.get("x-kubernetes-int-or-string").is_some() {
        return json!(1);
    }
    if let Some(props) = s.get("properties").and_then(Value::as_object) {
        let mut object = Map::new();
        for required in s["required"].as_array().into_iter().flatten() {
            let name = required.as_str().expect("a field name");
            object.insert(name.to_owned(), minimal(root, &props[name]));
        }
        return Value::Object(object);
    }
    if has_type(s, "array") {
        return json!([]);
    }
    if has_type(s, "object") {
        return json!({});
    }
    if has_type(s, "integer") || has_type(s, "number") {
        return json!(1);
    }
    if has_type(s, "boolean") {
        return json!(true);
    }
    json!("x")
}

/// The smallest value of `s` that counts as set: a list or map gets one element.
fn sample(root: &Value, s: &Value) -> Value {
    let (s, _) = deref(root, s);
    if has_type(s, "array") {
        return json!([minimal(root, &s["items"])]);
    }
    if let Some(values) = s.get("additionalProperties").filter(|v| v.is_object())
        && s.get("properties").is_none()
    {
        return json!({"x": minimal(root, values)});
    }
    minimal(root, s)
}

/// `doc` with the field at `path` (segments after `spec`) set to `value`, creating what leads
/// to it at its smallest. Returns the concrete path (`[0]` for each array).
fn set(root: &Value, s: &Value, doc: &mut Value, path: &[&str], value: Option<&Value>) -> String {
    let Some((head, rest)) = path.split_first() else {
        *doc = value.cloned().unwrap_or_else(|| sample(root, s));
        return String::new();
    };
    let (s, _) = deref(root, s);
    if *head == "[]" {
        let items = &s["items"];
        let array = doc.as_array_mut().expect("an array");
        if array.is_empty() {
            array.push(minimal(root, items));
        }
        return format!("[0]{}", set(root, items, &mut array[0], rest, value));
    }
    let sub = &s["properties"][*head];
    let object = doc.as_object_mut().expect("an object");
    let slot = object
        .entry((*head).to_owned())
        .or_insert_with(|| minimal(root, sub));
    format!(".{head}{}", set(root, sub, slot, rest, value))
}

fn segments(path: &str) -> Vec<&str> {
    let mut out = Vec::new();
    for part in path
        .trim_start_matches("spec")
        .split('.')
        .filter(|p| !p.is_empty())
    {
        let (name, arrays) = match part.find("[]") {
            Some(i) => (&part[..i], part[i..].matches("[]").count()),
            None => (part, 0),
        };
        out.push(name);
        out.extend(std::iter::repeat_n("[]", arrays));
    }
    out
}

/// Whether `note` (`field: why`) is about `path` or a field that holds it.
fn names(note: &str, path: &str) -> bool {
    let field = note.split_once(':').map_or(note, |(f, _)| f);
    path == field
        || path
            .strip_prefix(field)
            .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
}

fn document(kind: PolicyKind, spec: &Value) -> serde_yaml::Value {
    let api = kind.api();
    let doc = json!({
        "apiVersion": format!("{}/{}", api.group, api.version),
        "kind": kind.kind(),
        "metadata": {"name": "walk", "namespace": "shop"},
        "spec": spec,
    });
    serde_yaml::to_value(doc).expect("yaml")
}

fn table(t: &[(&str, &[&str])]) -> BTreeSet<(String, String)> {
    t.iter()
        .flat_map(|(kind, paths)| paths.iter().map(|p| ((*kind).to_owned(), (*p).to_owned())))
        .collect()
}

#[test]
fn every_field_of_every_kind_is_honoured_or_named_in_the_verdict() {
    let mut problems = Vec::new();
    let mut honoured = table(HONOURED);
    honoured.extend(table(LABELS));
    let mut noted = table(NOTED);
    let mut checked = 0;
    for kind in PolicyKind::ALL {
        let name = format!("{kind:?}");
        let (root, fields) = fields(kind);
        let spec = minimal(&root, &root);
        if let Err(e) = parse(kind, &document(kind, &spec)) {
            problems.push(format!("{name}: the smallest spec is refused: {e}"));
            continue;
        }
        for field in fields {
            let key = (name.clone(), field.path.clone());
            let walked = json!({"weft-walk": true});
            let value = if field.unhonoured {
                Some(&walked)
            } else if noted.remove(&key) {
                None
            } else {
                if !honoured.remove(&key) {
                    problems.push(format!(
                        "{name} {}: neither honoured (listed) nor noted",
                        field.path
                    ));
                }
                continue;
            };
            checked += 1;
            let mut doc = spec.clone();
            let concrete = set(&root, &root, &mut doc, &segments(&field.path), value);
            let concrete = format!("spec{concrete}");
            match parse(kind, &document(kind, &doc)) {
                Err(e) => problems.push(format!("{name} {concrete}: refused when set: {e}")),
                // A note on the field, or on a field holding it, names it.
                Ok(p) if !p.notes.iter().any(|n| names(n, &concrete)) => {
                    problems.push(format!(
                        "{name} {concrete}: set but not named: {:?}",
                        p.notes
                    ));
                }
                Ok(_) => {}
            }
        }
    }
    for (kind, path) in honoured.into_iter().chain(noted) {
        problems.push(format!("{kind} {path}: listed but not a field"));
    }
    assert!(
        problems.is_empty(),
        "{} problems:\n{}",
        problems.len(),
        problems.join("\n")
    );
    // The walk reached the fields (82 when written): a broken walk does not pass by finding none.
    assert!(checked >= 60, "only {checked} fields were set and checked");
}
