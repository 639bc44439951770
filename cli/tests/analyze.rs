//! `weft analyze` as a user runs it before `kubectl apply`: the real binary on files.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn weft(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .expect("run weft")
}

fn guide() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/guide")
}

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// A scratch directory, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("weft-analyze-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Self(dir)
    }

    fn write(&self, name: &str, text: &str) -> String {
        let path = self.0.join(name);
        std::fs::write(&path, text).expect("write");
        path.display().to_string()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn the_guide_is_accepted_and_each_object_names_what_it_does_not_honour() {
    let dir = guide().display().to_string();
    let out = weft(&["analyze", "-f", &dir, "-o", "json"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = json(&out);
    let verdicts = report["verdicts"].as_array().expect("verdicts");
    // 19 objects, 14 names: where files reuse a name (VirtualService default/reviews is in
    // four, linkerd/linkerd-config in two), the later file's version wins, as
    // `kubectl apply -f DIR` would leave it.
    assert_eq!(verdicts.len(), 14, "one verdict per object");
    assert!(report["errors"].as_array().is_some_and(Vec::is_empty));
    let of = |kind: &str, key: &str| {
        verdicts
            .iter()
            .find(|v| v["kind"] == kind && v["key"] == key)
            .unwrap_or_else(|| panic!("no verdict for {kind} {key}"))
    };
    // The ingress Gateway is read; with no gateway pod and no VirtualService bound to it, the
    // verdict says it serves nothing yet. `retry:` is read as `retries`.
    let gateway = of("Gateway", "default/bookinfo-gateway");
    assert_eq!(gateway["reason"], "PartiallyHonoured");
    assert!(
        gateway["findings"][0]
            .as_str()
            .is_some_and(|n| n.starts_with("spec.selector: no pod has these labels")),
        "{gateway}"
    );
    let retry_file = guide().join("istio-retry.yaml").display().to_string();
    let retry = json(&weft(&["analyze", "-f", &retry_file, "-o", "json"]));
    let hints = retry["verdicts"][0]["hints"].to_string();
    assert!(
        hints.contains("spec.http[0].retry:") && hints.contains("`retries`"),
        "{hints}"
    );

    // The table says the same for people.
    let out = weft(&["analyze", "-f", &dir]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines().any(|l| l.contains("Gateway")
            && l.contains("default/bookinfo-gateway")
            && l.contains("PartiallyHonoured")),
        "{text}"
    );
    assert!(
        text.contains("spec.selector: no pod has these labels"),
        "{text}"
    );
    assert!(text.contains(" refused, 0 unreadable"), "{text}");
}

#[test]
fn broken_and_conflicting_files_get_each_finding_and_a_failing_exit() {
    let s = Scratch::new("broken");
    s.write(
        "services.yaml",
        "apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: shop}
spec: {clusterIP: 10.96.0.20, selector: {app: reviews}, ports: [{port: 9080}]}
---
apiVersion: v1
kind: Pod
metadata: {name: reviews-v1, namespace: shop, labels: {app: reviews, version: v1}}
spec: {nodeName: node1, containers: [{name: c, image: x}]}
status: {podIP: 10.10.1.5}
",
    );
    s.write(
        "routes.yaml",
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: first, namespace: shop}
spec:
  hosts: [reviews]
  http:
  - route:
    - {destination: {host: reviews, subset: v1}, weight: 60}
    - {destination: {host: reviews, subset: v3}, weight: 30}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: second, namespace: shop}
spec:
  hosts: [reviews]
  http: [{route: [{destination: {host: reviews}}]}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: ratings, namespace: shop}
spec: {host: ratings, subsets: [{name: v1, labels: {version: v1}}]}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: shop}
spec: {host: reviews, subsets: [{name: v1, labels: {version: v1}}]}
---
apiVersion: split.smi-spec.io/v1alpha2
kind: TrafficSplit
metadata: {name: canary, namespace: shop}
spec: {service: reviews, backends: [{service: reviews-v9, weight: 100}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: nobody, namespace: shop}
spec: {selector: {matchLabels: {app: payments}}, rules: [{}]}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: typo, namespace: shop}
spec: {hosts: [reviews], http: [{route: [{destination: {host: reviews}}], retires: {attempts: 3}}]}
",
    );
    s.write(
        "broken.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: x\n",
    );
    let out = weft(&["analyze", "-f", &s.0.display().to_string(), "-o", "json"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "refused and unreadable documents fail the run"
    );
    let report = json(&out);
    let said = |kind: &str, key: &str| -> String {
        report["verdicts"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|v| v["kind"] == kind && v["key"] == key)
            .map(|v| v.to_string())
            .unwrap_or_else(|| panic!("no verdict for {kind} {key}: {report}"))
    };
    let expect = [
        (
            "VirtualService",
            "shop/second",
            "VirtualService shop/first already routes reviews",
        ),
        ("VirtualService", "shop/first", "weights sum to 90, not 100"),
        ("VirtualService", "shop/first", "defines subset \\\"v3\\\""),
        ("VirtualService", "shop/first", "is not bound to a waypoint"),
        (
            "DestinationRule",
            "shop/ratings",
            "no service \\\"ratings\\\"",
        ),
        (
            "TrafficSplit",
            "shop/canary",
            "no service \\\"reviews-v9\\\"",
        ),
        ("AuthorizationPolicy", "shop/nobody", "it selects nothing"),
        ("VirtualService", "shop/typo", "unknown field `retires`"),
    ];
    for (kind, key, finding) in expect {
        let verdict = said(kind, key);
        assert!(
            verdict.contains(finding),
            "{kind} {key}: expected {finding:?} in {verdict}"
        );
    }
    assert!(said("VirtualService", "shop/typo").contains("\"reason\":\"Invalid\""));
    let errors = report["errors"].to_string();
    assert!(errors.contains("broken.yaml: document 1"), "{errors}");

    // Fixed, the same set passes: exit 0 with the warnings still listed.
    s.write("broken.yaml", "");
    let fixed = std::fs::read_to_string(s.0.join("routes.yaml"))
        .expect("read")
        .replace("retires", "retries");
    s.write("routes.yaml", &fixed);
    let out = weft(&["analyze", "-f", &s.0.display().to_string()]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn a_missing_file_is_an_error_of_its_own() {
    let out = weft(&["analyze", "-f", "/nonexistent/weft.yaml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/weft.yaml: cannot read"));
}

#[test]
fn every_docs_entry_a_check_links_to_exists() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let docs = std::fs::read_to_string(root.join("../docs/check.md")).expect("docs/check.md");
    let headings: Vec<&str> = docs.lines().filter_map(|l| l.strip_prefix("## ")).collect();
    let mut linked = 0;
    for file in ["check.rs", "checks_proxies.rs", "precheck.rs"] {
        let source = std::fs::read_to_string(root.join("src").join(file)).expect("source");
        // Each failing check ends its `report.push(...)` with the anchor of its entry.
        let lines: Vec<&str> = source.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let next = lines.get(i + 1).map(|l| l.trim());
            let in_push = lines[i.saturating_sub(6)..i]
                .iter()
                .any(|l| l.contains(".push("));
            if in_push && next.is_some_and(|n| n.starts_with(')')) {
                let t = line.trim();
                if let Some(anchor) = t.strip_prefix('"').and_then(|t| t.strip_suffix("\","))
                    && anchor.chars().all(|c| c.is_ascii_lowercase() || c == '-')
                {
                    linked += 1;
                    assert!(
                        headings.contains(&anchor),
                        "docs/check.md has no ## {anchor}"
                    );
                }
            }
        }
    }
    assert!(
        linked >= 20,
        "only {linked} anchors found: the scan is broken"
    );
}

#[test]
fn completions_name_every_command() {
    let out = weft(&["completions", "bash"]);
    assert_eq!(out.status.code(), Some(0));
    let script = String::from_utf8_lossy(&out.stdout);
    for command in [
        "analyze",
        "check",
        "proxy-status",
        "proxy-config",
        "install",
        "uninstall",
        "namespace",
        "waypoint",
        "lab",
    ] {
        assert!(
            script.contains(command),
            "no {command} in the bash completions"
        );
    }
}
