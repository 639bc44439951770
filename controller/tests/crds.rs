//! The CRDs shipped in `deploy/crds` are the ones the types generate: a change to a policy
//! type without regenerating them fails here.

use std::path::Path;

use weft_controller::k8s::crds::crds;

#[test]
fn shipped_crds_match_the_types() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/crds");
    for crd in crds() {
        let name = crd["metadata"]["name"].as_str().expect("a name");
        let path = dir.join(format!("{name}.yaml"));
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (run `weft crds --out deploy/crds`)",
                path.display()
            )
        });
        let shipped: serde_json::Value = serde_yaml::from_str(&text).expect("YAML");
        assert!(
            shipped == crd,
            "{} is stale: run `cargo run -p weft-cli -- crds --out deploy/crds`",
            path.display()
        );
    }
}
