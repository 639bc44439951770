//! The manifest-directory source: the same Kubernetes YAML users apply with kubectl, read from
//! a directory (multi-document files; files added, edited and removed while running). What the
//! lab and the end-to-end tests drive the mesh with.
//!
//! Each document is judged on its own: a bad one keeps its object's last good version while
//! the file's other documents take effect, and each error names the file, the
//! document, the object and the field; other files are not disturbed.

use std::collections::BTreeMap;

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::Deserialize;

use crate::model::{Object, Objects};

pub use super::object::parse_object;

/// A directory of manifests, as last read.
#[derive(Debug)]
pub struct ManifestDir {
    dir: PathBuf,
    files: BTreeMap<PathBuf, FileState>,
}

#[derive(Debug)]
struct FileState {
    stamp: (SystemTime, u64),
    objects: Vec<Object>,
    errors: Vec<String>,
}

/// What a refresh found.
#[derive(Debug, Default)]
pub struct Refresh {
    /// Whether the objects changed.
    pub changed: bool,
    /// New errors (a file that is still broken is not reported again).
    pub errors: Vec<String>,
}

impl ManifestDir {
    /// A directory, not read yet.
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
            files: BTreeMap::new(),
        }
    }

    /// Rereads files that were added, changed or removed since the last call.
    pub fn refresh(&mut self) -> Refresh {
        let mut refresh = Refresh::default();
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) => {
                refresh
                    .errors
                    .push(format!("manifest directory {}: {e}", self.dir.display()));
                return refresh;
            }
        };
        let mut present = BTreeMap::new();
        for entry in entries.flatten() {
            let path = entry.path();
            let is_manifest = path
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"));
            let Ok(meta) = entry.metadata() else { continue };
            if !is_manifest || !meta.is_file() {
                continue;
            }
            let stamp = (
                meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                meta.len(),
            );
            present.insert(path, stamp);
        }
        let before = self.files.len();
        self.files.retain(|path, _| present.contains_key(path));
        refresh.changed |= self.files.len() != before;

        for (path, stamp) in present {
            if self.files.get(&path).is_some_and(|f| f.stamp == stamp) {
                continue;
            }
            let text = match std::fs::read_to_string(&path) {
                Ok(text) => text,
                Err(e) => {
                    refresh.errors.push(format!("{}: {e}", path.display()));
                    continue;
                }
            };
            let parsed = parse_documents(&path, &text);
            let previous = self.files.remove(&path);
            let errors = parsed.errors;
            if !errors.is_empty() && previous.as_ref().is_none_or(|p| p.errors != errors) {
                for e in &errors {
                    refresh
                        .errors
                        .push(format!("{e}; keeping that object's last good version"));
                }
            }
            // Each document is judged on its own: good ones take effect, a bad one keeps its
            // object's last good version; after a syntax error, whatever could not be read
            // keeps its last good version too.
            let mut objects = parsed.objects;
            if let Some(previous) = &previous {
                let read: std::collections::BTreeSet<String> =
                    objects.iter().map(Object::describe).collect();
                for old in &previous.objects {
                    let id = old.describe();
                    let kept = parsed.refused.contains(&id)
                        || (parsed.unreadable_rest && !read.contains(&id));
                    if kept {
                        objects.push(old.clone());
                    }
                }
            }
            refresh.changed |= previous.as_ref().is_none_or(|p| p.objects != objects);
            let state = FileState {
                stamp,
                objects,
                errors,
            };
            self.files.insert(path, state);
        }
        refresh
    }

    /// The objects of every file (a later file's version of an object wins).
    pub fn objects(&self) -> Objects {
        let mut objects = Objects::default();
        for file in self.files.values() {
            for object in &file.objects {
                objects.upsert(object.clone());
            }
        }
        objects
    }

    /// Current errors, by file.
    pub fn errors(&self) -> Vec<String> {
        self.files.values().flat_map(|f| f.errors.clone()).collect()
    }
}

/// Parses every document of a file. Returns the objects and, if any document was bad, the
/// errors (the caller then keeps the file's last good objects).
pub fn parse_file(path: &Path, text: &str) -> (Vec<Object>, Vec<String>) {
    let parsed = parse_documents(path, text);
    (parsed.objects, parsed.errors)
}

/// A file, document by document: the objects read, the errors, which objects the bad
/// documents were (so each keeps its own last good version), and whether the rest of the file
/// could not be read at all (a YAML syntax error: the parser cannot find the next document).
#[derive(Debug, Default)]
pub struct Parsed {
    /// Objects of the good documents.
    pub objects: Vec<Object>,
    /// One per bad document, naming the file, the document, the object and the field.
    pub errors: Vec<String>,
    /// `Kind namespace/name` of each bad document that says who it is.
    pub refused: Vec<String>,
    /// The bad documents that are policies, as their verdicts report them.
    pub rejected: Vec<crate::model::status::Rejected>,
    /// Set when the documents after a syntax error could not be read.
    pub unreadable_rest: bool,
}

/// Parses every document of a file on its own.
pub fn parse_documents(path: &Path, text: &str) -> Parsed {
    let mut parsed = Parsed::default();
    for (i, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let at = format!("{}: document {}", path.display(), i + 1);
        let value = match serde_yaml::Value::deserialize(document) {
            Ok(serde_yaml::Value::Null) => continue,
            Ok(value) => value,
            Err(e) => {
                parsed.errors.push(format!("{at}: {e}"));
                // The parser cannot find the next document after a syntax error.
                parsed.unreadable_rest = true;
                break;
            }
        };
        match parse_object(&value) {
            Ok(Some(object)) => parsed.objects.push(object),
            Ok(None) => {}
            Err(e) => {
                parsed.errors.push(format!("{at} {e}"));
                parsed
                    .rejected
                    .extend(crate::model::status::Rejected::of(&value, &e));
                if let Some(identity) = identity_of(&value) {
                    parsed.refused.push(identity);
                }
            }
        }
    }
    parsed
}

/// `Kind namespace/name` of a document, as [`Object::describe`] names the object, if it says.
fn identity_of(value: &serde_yaml::Value) -> Option<String> {
    let kind = value.get("kind")?.as_str()?;
    let metadata = value.get("metadata")?;
    let name = metadata.get("name")?.as_str()?;
    if kind == "Namespace" {
        return Some(format!("Namespace {name}"));
    }
    let namespace = metadata
        .get("namespace")
        .and_then(|n| n.as_str())
        .unwrap_or("default");
    Some(format!("{kind} {namespace}/{name}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHOP: &str = r#"
apiVersion: v1
kind: Namespace
metadata:
  name: shop
  labels:
    weft.io/dataplane-mode: ambient
---
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: shop}
spec:
  selector: {app: reviews}
  clusterIP: 10.96.0.21
  ports: [{name: http, port: 9080, targetPort: 8080}]
---
apiVersion: v1
kind: Pod
metadata: {name: reviews-v1, namespace: shop, labels: {app: reviews}}
spec:
  nodeName: node2
  serviceAccountName: reviews
  containers: [{name: app, image: x, ports: [{containerPort: 8080}]}]
status: {podIP: 10.10.2.2, phase: Running}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: shop}
spec: {hosts: [reviews]}
"#;

    #[test]
    fn reads_kubectl_yaml() {
        let (objects, errors) = parse_file(Path::new("shop.yaml"), SHOP);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(objects.len(), 4, "namespace, service, pod, policy");
        assert!(matches!(&objects[3], Object::Policy(_)));
        let Object::Pod(pod) = &objects[2] else {
            panic!("pod")
        };
        assert_eq!(pod.ip, "10.10.2.2".parse().ok());
        assert_eq!(pod.service_account, "reviews");
    }

    #[test]
    fn errors_name_the_file_document_object_and_field() {
        let bad = SHOP.replace("port: 9080", "port: nine");
        let (_, errors) = parse_file(Path::new("shop.yaml"), &bad);
        assert_eq!(errors.len(), 1, "{errors:?}");
        let e = &errors[0];
        assert!(
            e.contains("shop.yaml: document 2")
                && e.contains("Service shop/reviews")
                && e.contains("spec.ports[0].port"),
            "{e}"
        );
    }

    #[test]
    fn a_broken_file_keeps_its_last_good_objects_and_others_are_untouched() {
        let dir = std::env::temp_dir().join(format!("weft-manifests-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(dir.join("shop.yaml"), SHOP).expect("write");
        std::fs::write(
            dir.join("other.yaml"),
            "kind: Namespace\nmetadata: {name: other}\n",
        )
        .expect("write");
        let mut source = ManifestDir::new(&dir);
        assert!(source.refresh().changed);
        assert_eq!(source.objects().pods.len(), 1);

        std::fs::write(
            dir.join("shop.yaml"),
            "kind: Pod\nmetadata: {name: [broken\n",
        )
        .expect("write");
        let refresh = source.refresh();
        assert!(!refresh.changed);
        assert_eq!(refresh.errors.len(), 1, "{:?}", refresh.errors);
        assert_eq!(source.objects().pods.len(), 1, "last good objects kept");
        assert_eq!(source.objects().namespaces.len(), 2);

        std::fs::remove_file(dir.join("shop.yaml")).expect("rm");
        assert!(source.refresh().changed);
        assert!(source.objects().pods.is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn each_document_is_judged_on_its_own() {
        let dir = std::env::temp_dir().join(format!("weft-manifests-docs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let service = |name: &str, ip: &str| {
            format!(
                "kind: Service\nmetadata: {{name: {name}, namespace: shop}}\nspec: {{clusterIP: {ip}, ports: [{{port: 80}}]}}\n"
            )
        };
        std::fs::write(
            dir.join("shop.yaml"),
            format!(
                "{}---\n{}",
                service("a", "10.96.0.1"),
                service("b", "10.96.0.2")
            ),
        )
        .expect("write");
        let mut source = ManifestDir::new(&dir);
        source.refresh();
        let vip = |source: &ManifestDir, name: &str| {
            source
                .objects()
                .services
                .get(&crate::model::ObjectKey::new("shop", name))
                .and_then(|s| s.cluster_ip)
                .map(|ip| ip.to_string())
        };
        assert_eq!(vip(&source, "b").as_deref(), Some("10.96.0.2"));

        // a changes, b gets a typo, c is new: a and c take effect, b keeps its last good
        // version.
        std::fs::write(
            dir.join("shop.yaml"),
            format!(
                "{}---\nkind: Service\nmetadata: {{name: b, namespace: shop}}\nspec: {{clusterIP: 10.96.0.9, ports: [{{port: eighty}}]}}\n---\n{}",
                service("a", "10.96.0.11"),
                service("c", "10.96.0.3")
            ),
        )
        .expect("write");
        let refresh = source.refresh();
        assert!(refresh.changed);
        assert_eq!(refresh.errors.len(), 1, "{:?}", refresh.errors);
        assert!(
            refresh.errors[0].contains("document 2"),
            "{:?}",
            refresh.errors
        );
        assert_eq!(vip(&source, "a").as_deref(), Some("10.96.0.11"));
        assert_eq!(
            vip(&source, "b").as_deref(),
            Some("10.96.0.2"),
            "last good b"
        );
        assert_eq!(vip(&source, "c").as_deref(), Some("10.96.0.3"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Property: policy YAML a few edits away from the guide's parses document by document;
    /// every error names the file and its document, nothing panics.
    #[test]
    fn almost_right_policy_yaml_is_judged_per_document() {
        let guide = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/guide");
        let mut texts = Vec::new();
        for entry in std::fs::read_dir(&guide).expect("guide") {
            let path = entry.expect("entry").path();
            if path.extension().is_some_and(|e| e == "yaml") {
                texts.push(std::fs::read_to_string(&path).expect("read"));
            }
        }
        assert!(texts.len() >= 5, "the guide's examples");
        let mut g = weft_core::testing::Gen::new(13);
        let noise = [
            ":",
            " ",
            "\n",
            "- ",
            "[",
            "]",
            "{",
            "}",
            "---\n",
            "kind: Pod\n",
            "weight: -1",
            "timeout: 5x",
            "apiVersion: v9",
            "\"",
            "#",
            "&a",
            "*a",
            "1e999",
        ];
        for _ in 0..1500 {
            let original = texts[g.below(texts.len())].clone();
            let text = g.mutate(&original, &noise);
            let parsed = parse_documents(Path::new("guide.yaml"), &text);
            for e in &parsed.errors {
                assert!(e.starts_with("guide.yaml: document "), "{e}");
            }
        }
    }
}
