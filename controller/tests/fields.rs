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

#[path = "fields/tables.rs"]
mod tables;

use tables::{HONOURED, LABELS, NOTED};

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
    let doc = if kind == PolicyKind::LinkerdConfig {
        // A ConfigMap: its `data` is what Weft reads.
        json!({
            "apiVersion": api.version,
            "kind": kind.kind(),
            "metadata": {"name": "linkerd-config", "namespace": "linkerd"},
            "data": spec,
        })
    } else {
        json!({
            "apiVersion": format!("{}/{}", api.group, api.version),
            "kind": kind.kind(),
            "metadata": {"name": "walk", "namespace": "shop"},
            "spec": spec,
        })
    };
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
            let root_field = if kind == PolicyKind::LinkerdConfig {
                "data"
            } else {
                "spec"
            };
            let concrete = format!("{root_field}{concrete}");
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
