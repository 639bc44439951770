//! CustomResourceDefinitions for the policy APIs Weft reads, generated from the types it reads
//! them into ([`PolicyKind::spec_schema`]), not copied from the projects that define them. A
//! cluster that already has a kind's CRD (Istio, Linkerd, the Gateway API installed) keeps its
//! own; these are for clusters that lack one. Each serves every version the guides and
//! upstream manifests use, with one schema.
//!
//! The generated JSON schema is turned into a Kubernetes structural schema: references are
//! inlined (a recursive type is cut to a free-form object where it recurs), `type: [T, null]`
//! becomes `nullable`, and what the API server does not accept (`$schema`, `title`, `default:
//! null`, `additionalProperties: false`, Weft's own `x-weft-*` marks, formats it does not know)
//! is dropped.

use serde_json::{Map, Value, json};

use crate::model::policy::PolicyKind;

/// The label every object Weft installs carries.
pub const PART_OF: (&str, &str) = ("app.kubernetes.io/part-of", "weft");

/// The versions a kind's CRD serves; the last is stored.
fn versions(kind: PolicyKind) -> &'static [&'static str] {
    match kind {
        PolicyKind::VirtualService
        | PolicyKind::DestinationRule
        | PolicyKind::IstioGateway
        | PolicyKind::ServiceEntry => &["v1alpha3", "v1beta1", "v1"],
        PolicyKind::PeerAuthentication | PolicyKind::AuthorizationPolicy => &["v1beta1", "v1"],
        PolicyKind::ServiceProfile => &["v1alpha1", "v1alpha2"],
        PolicyKind::TrafficSplit => &["v1alpha1", "v1alpha2", "v1alpha3", "v1alpha4"],
        PolicyKind::HttpRoute | PolicyKind::Gateway => &["v1beta1", "v1"],
        PolicyKind::Telemetry => &["v1alpha1", "v1"],
        PolicyKind::IstioOperator => &["v1alpha1"],
        // A ConfigMap: core, no CRD.
        PolicyKind::LinkerdConfig => &[],
    }
}

/// The CRD of `kind`.
pub fn crd(kind: PolicyKind) -> Value {
    let api = kind.api();
    let root = serde_json::to_value(kind.spec_schema()).unwrap_or_default();
    let spec = structural(&root, &root, &mut Vec::new());
    let status = json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true});
    let schema = json!({
        "openAPIV3Schema": {
            "type": "object",
            "properties": {"spec": spec, "status": status},
        }
    });
    let all = versions(kind);
    let served: Vec<Value> = all
        .iter()
        .map(|v| {
            let mut version = json!({
                "name": v,
                "served": true,
                "storage": Some(v) == all.last(),
                "schema": schema,
            });
            if kind.has_status() {
                version["subresources"] = json!({"status": {}});
            }
            version
        })
        .collect();
    let kind_name = kind.kind();
    let singular = kind_name.to_ascii_lowercase();
    let mut metadata = json!({
        "name": format!("{}.{}", api.plural, api.group),
        "labels": {PART_OF.0: PART_OF.1},
    });
    // The API server protects *.k8s.io groups: a definition from outside Kubernetes must say so.
    if api.group.ends_with(".k8s.io") {
        metadata["annotations"] = json!({
            "api-approved.kubernetes.io":
                "unapproved, Weft's own schema for clusters without the Gateway API CRDs",
        });
    }
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": metadata,
        "spec": {
            "group": api.group,
            "scope": "Namespaced",
            "names": {
                "kind": kind_name,
                "listKind": format!("{kind_name}List"),
                "plural": api.plural,
                "singular": singular,
            },
            "versions": served,
        }
    })
}

/// Every policy kind's CRD, in [`PolicyKind::ALL`] order.
pub fn crds() -> Vec<Value> {
    PolicyKind::ALL
        .into_iter()
        .filter(|k| k.is_custom())
        .map(crd)
        .collect()
}

fn definition<'a>(root: &'a Value, reference: &str) -> Option<(&'a Value, String)> {
    let name = reference.rsplit('/').next()?;
    Some((
        root.get("components")?.get("schemas")?.get(name)?,
        name.to_owned(),
    ))
}

/// `s` as a structural schema, references inlined. `stack` holds the definitions being inlined
/// (a recursive one is cut to a free-form object).
fn structural(root: &Value, s: &Value, stack: &mut Vec<String>) -> Value {
    let Some(object) = s.as_object() else {
        return json!({"x-kubernetes-preserve-unknown-fields": true});
    };
    if let Some(reference) = object.get("$ref").and_then(Value::as_str) {
        let Some((target, name)) = definition(root, reference) else {
            return json!({"x-kubernetes-preserve-unknown-fields": true});
        };
        if stack.contains(&name) {
            return json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true});
        }
        stack.push(name);
        let mut inlined = structural(root, target, stack);
        stack.pop();
        if let (Some(d), Some(out)) = (object.get("description"), inlined.as_object_mut()) {
            out.insert("description".into(), d.clone());
        }
        return inlined;
    }
    // `allOf: [T]` with a default or description beside it: T with them.
    if let Some([only]) = object
        .get("allOf")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
    {
        let mut out = structural(root, only, stack);
        if let Some(out) = out.as_object_mut() {
            for key in ["description", "default"] {
                if let Some(v) = object.get(key).filter(|v| !v.is_null()) {
                    out.insert(key.into(), v.clone());
                }
            }
        }
        return out;
    }
    // A unit enum with documented variants: one string of a list.
    if let Some(alternatives) = object.get("oneOf").and_then(Value::as_array)
        && let Some(values) = alternatives
            .iter()
            .map(|a| a.get("const").filter(|c| c.is_string()).cloned())
            .collect::<Option<Vec<Value>>>()
    {
        let mut out = json!({"type": "string", "enum": values});
        if let Some(d) = object.get("description") {
            out["description"] = d.clone();
        }
        return out;
    }
    // `Option<T>`: T, nullable.
    if let Some(alternatives) = object.get("anyOf").and_then(Value::as_array) {
        let present: Vec<&Value> = alternatives
            .iter()
            .filter(|a| a.get("nullable").is_none() && a.get("type") != Some(&json!("null")))
            .collect();
        if let [only] = present.as_slice() {
            let mut out = structural(root, only, stack);
            if let Some(out) = out.as_object_mut() {
                out.insert("nullable".into(), json!(true));
                if let Some(d) = object.get("description") {
                    out.insert("description".into(), d.clone());
                }
            }
            return out;
        }
        return json!({"x-kubernetes-preserve-unknown-fields": true});
    }
    let mut out = Map::new();
    for (key, value) in object {
        match key.as_str() {
            "$schema" | "title" | "components" | "x-weft-unhonoured" => {}
            "default" if value.is_null() => {}
            "additionalProperties" if value == &json!(false) => {}
            "format" if !matches!(value.as_str(), Some("int32" | "int64" | "float" | "double")) => {
            }
            "type" => match value {
                Value::Array(types) => {
                    let real: Vec<&Value> = types.iter().filter(|t| *t != "null").collect();
                    if let [one] = real.as_slice() {
                        out.insert("type".into(), (*one).clone());
                    }
                    if real.len() < types.len() {
                        out.insert("nullable".into(), json!(true));
                    }
                }
                other => {
                    out.insert("type".into(), other.clone());
                }
            },
            "properties" => {
                let props: Map<String, Value> = value
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(k, v)| (k.clone(), structural(root, v, stack)))
                    .collect();
                out.insert(key.clone(), Value::Object(props));
            }
            "items" | "additionalProperties" => {
                out.insert(key.clone(), structural(root, value, stack));
            }
            // A map with number keys (ports): Kubernetes has string keys only.
            "patternProperties" => {
                if let Some((_, values)) = value.as_object().and_then(|p| p.iter().next()) {
                    out.insert(
                        "additionalProperties".into(),
                        structural(root, values, stack),
                    );
                }
            }
            _ => {
                out.insert(key.clone(), value.clone());
            }
        }
    }
    if out
        .get("enum")
        .is_some_and(|e| e.as_array().is_some_and(|e| e.iter().any(Value::is_null)))
    {
        out.insert("nullable".into(), json!(true));
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every node of a structural schema has a type, or says it is free-form or int-or-string;
    /// no reference, no `x-weft-*`, no `anyOf` is left.
    fn assert_structural(s: &Value, at: &str) {
        let object = s
            .as_object()
            .unwrap_or_else(|| panic!("{at}: not an object"));
        assert!(
            object.contains_key("type")
                || object.contains_key("x-kubernetes-preserve-unknown-fields")
                || object.contains_key("x-kubernetes-int-or-string"),
            "{at}: no type: {s}"
        );
        for bad in [
            "$ref",
            "anyOf",
            "oneOf",
            "x-weft-unhonoured",
            "$schema",
            "components",
        ] {
            assert!(!object.contains_key(bad), "{at}: {bad} left");
        }
        if let Some(props) = object.get("properties").and_then(Value::as_object) {
            for (k, v) in props {
                assert_structural(v, &format!("{at}.{k}"));
            }
        }
        for key in ["items", "additionalProperties"] {
            if let Some(v) = object.get(key).filter(|v| v.is_object()) {
                assert_structural(v, &format!("{at}.{key}"));
            }
        }
    }

    #[test]
    fn every_crd_schema_is_structural_and_serves_the_guides_versions() {
        for kind in PolicyKind::ALL.into_iter().filter(|k| k.is_custom()) {
            let crd = crd(kind);
            let versions = crd["spec"]["versions"].as_array().expect("versions");
            let stored: Vec<_> = versions.iter().filter(|v| v["storage"] == true).collect();
            assert_eq!(stored.len(), 1, "{kind:?}: one stored version");
            assert_structural(
                &versions[0]["schema"]["openAPIV3Schema"],
                &format!("{kind:?}"),
            );
        }
        let vs = crd(PolicyKind::VirtualService);
        let names: Vec<_> = vs["spec"]["versions"]
            .as_array()
            .expect("versions")
            .iter()
            .map(|v| v["name"].as_str().unwrap_or_default().to_owned())
            .collect();
        assert_eq!(
            names,
            ["v1alpha3", "v1beta1", "v1"],
            "the guide's v1alpha3 is served"
        );
        let sp = crd(PolicyKind::ServiceProfile);
        let condition = &sp["spec"]["versions"][1]["schema"]["openAPIV3Schema"]["properties"]["spec"]
            ["properties"]["routes"]["items"]["properties"]["condition"];
        assert_eq!(condition["type"], "object", "{condition}");
        assert_eq!(
            condition["properties"]["not"]["x-kubernetes-preserve-unknown-fields"], true,
            "the recursion is cut: {condition}"
        );
    }
}
