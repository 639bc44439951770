//! Shapes that are not in the upstream APIs but that guides print and users copy: Weft reads
//! them as their authors meant, and the verdict says which upstream field was meant, so a
//! user knows why the same YAML is refused by a cluster with the upstream CRDs installed.

use serde_yaml::Value;

/// What a non-upstream key stands for.
struct Shape {
    /// The kind (`VirtualService`).
    kind: &'static str,
    /// The key as guides write it.
    key: &'static str,
    /// Only where its value is a list (`None`: any value).
    list: Option<bool>,
    /// What the upstream API has instead.
    upstream: &'static str,
}

const SHAPES: &[Shape] = &[
    Shape {
        kind: "VirtualService",
        key: "retry",
        list: None,
        upstream: "`retries`",
    },
    Shape {
        kind: "VirtualService",
        key: "retryOn",
        list: Some(true),
        upstream: "one comma-separated string (`retryOn: 5xx,connect-failure`)",
    },
    Shape {
        kind: "DestinationRule",
        key: "consecutiveGatewayFailure",
        list: None,
        upstream: "`consecutiveGatewayErrors`",
    },
    Shape {
        kind: "ServiceProfile",
        key: "statusCodes",
        list: None,
        upstream: "`condition.status` with `min` and `max`",
    },
    Shape {
        kind: "ServiceProfile",
        key: "circuitBreakers",
        list: None,
        upstream: "nothing in ServiceProfile (Linkerd configures failure accrual with Service annotations)",
    },
];

/// Linkerd serves ServiceProfiles as this version.
const SERVICE_PROFILE_VERSION: &str = "linkerd.io/v1alpha2";

/// A hint for each non-upstream shape in a policy of `kind` (`spec` as written).
pub fn hints(kind: &str, api_version: Option<&str>, spec: &Value) -> Vec<String> {
    let mut out = Vec::new();
    if kind == "ServiceProfile"
        && let Some(version) = api_version
        && !version.starts_with("linkerd.io/")
    {
        out.push(format!(
            "apiVersion {version}: Linkerd serves ServiceProfiles as {SERVICE_PROFILE_VERSION}; read as that"
        ));
    }
    walk(kind, "spec", spec, &mut out);
    out
}

fn walk(kind: &str, at: &str, value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Mapping(map) => {
            for (key, child) in map {
                let Some(key) = key.as_str() else { continue };
                let path = format!("{at}.{key}");
                let shape = SHAPES.iter().find(|s| {
                    s.kind == kind
                        && s.key == key
                        && s.list.is_none_or(|list| list == child.is_sequence())
                });
                if let Some(shape) = shape {
                    out.push(format!(
                        "{path}: not in the upstream API, which has {} here; read as meant",
                        shape.upstream
                    ));
                }
                walk(kind, &path, child, out);
            }
        }
        Value::Sequence(items) => {
            for (i, child) in items.iter().enumerate() {
                walk(kind, &format!("{at}[{i}]"), child, out);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> Value {
        serde_yaml::from_str(yaml).unwrap_or(Value::Null)
    }

    #[test]
    fn guide_shapes_name_the_upstream_field_and_upstream_shapes_get_none() {
        let vs = spec(
            "http: [{route: [{destination: {host: a}}], retry: {attempts: 3, retryOn: [5xx, reset]}}]",
        );
        assert_eq!(
            hints("VirtualService", Some("networking.istio.io/v1"), &vs),
            vec![
                "spec.http[0].retry: not in the upstream API, which has `retries` here; read as meant".to_owned(),
                "spec.http[0].retry.retryOn: not in the upstream API, which has one comma-separated string (`retryOn: 5xx,connect-failure`) here; read as meant".to_owned(),
            ]
        );
        let upstream = spec("http: [{retries: {attempts: 3, retryOn: '5xx,reset'}}]");
        assert!(hints("VirtualService", None, &upstream).is_empty());
        let dr = spec("trafficPolicy: {outlierDetection: {consecutiveGatewayFailure: 5}}");
        assert_eq!(
            hints("DestinationRule", None, &dr),
            vec!["spec.trafficPolicy.outlierDetection.consecutiveGatewayFailure: not in the upstream API, which has `consecutiveGatewayErrors` here; read as meant".to_owned()]
        );
        // The key matters only in its own kind.
        assert!(hints("DestinationRule", None, &vs).is_empty());
        let profile = hints("ServiceProfile", Some("v1"), &spec("routes: []"));
        assert_eq!(
            profile,
            vec!["apiVersion v1: Linkerd serves ServiceProfiles as linkerd.io/v1alpha2; read as that".to_owned()]
        );
        assert!(
            hints(
                "ServiceProfile",
                Some("linkerd.io/v1alpha2"),
                &spec("routes: []")
            )
            .is_empty()
        );
    }
}
