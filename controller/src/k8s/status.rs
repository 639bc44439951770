//! Writes each policy's verdict as a status condition (`Accepted`, with the reason and what
//! Weft does not honour), only when it changed, only on the leader. HTTPRoutes get the Gateway
//! API's per-parent form.

use std::collections::HashMap;
use std::time::SystemTime;

use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use tracing::{debug, warn};

use crate::model::ObjectKey;
use crate::model::policy::PolicyKind;
use crate::model::status::Verdict;

/// The controller name in Gateway API status.
pub const CONTROLLER_NAME: &str = "weft.io/controller";

/// Remembers what it wrote, so an unchanged verdict costs no request.
pub struct StatusWriter {
    client: Client,
    written: HashMap<(PolicyKind, ObjectKey), Verdict>,
}

impl StatusWriter {
    /// A writer with nothing written yet.
    pub fn new(client: Client) -> Self {
        Self {
            client,
            written: HashMap::new(),
        }
    }

    /// Forgets what was written (leadership was lost: the next leader may have changed it).
    pub fn forget(&mut self) {
        self.written.clear();
    }

    /// Writes every verdict that differs from the last one written. Returns how many were
    /// written; a failed write is logged and retried on the next call.
    pub async fn write(&mut self, verdicts: &[Verdict]) -> usize {
        let mut count = 0;
        for verdict in verdicts {
            if !verdict.kind.has_status() {
                continue;
            }
            let id = (verdict.kind, verdict.key.clone());
            if self.written.get(&id) == Some(verdict) {
                continue;
            }
            let api = verdict.kind.api();
            let resource = ApiResource {
                group: api.group.to_owned(),
                version: api.version.to_owned(),
                api_version: format!("{}/{}", api.group, api.version),
                kind: verdict.kind.kind().to_owned(),
                plural: api.plural.to_owned(),
            };
            let objects: Api<DynamicObject> =
                Api::namespaced_with(self.client.clone(), &verdict.key.namespace, &resource);
            let mut body = patch_body(verdict, SystemTime::now());
            if verdict.kind == PolicyKind::HttpRoute {
                // `status.parents` is shared with other controllers: keep their entries, and
                // write only if nobody changed it since it was read.
                match objects.get_status(&verdict.key.name).await {
                    Ok(current) => merge_parents(&mut body, &current),
                    Err(e) => {
                        warn!(object = %format!("{} {}", verdict.kind.kind(), verdict.key), error = %e, "reading status failed; will retry");
                        continue;
                    }
                }
            }
            let params = PatchParams {
                field_manager: Some(FIELD_MANAGER.to_owned()),
                ..PatchParams::default()
            };
            match objects
                .patch_status(&verdict.key.name, &params, &Patch::Merge(&body))
                .await
            {
                Ok(_) => {
                    debug!(object = %format!("{} {}", verdict.kind.kind(), verdict.key), reason = verdict.reason.as_str(), "status written");
                    self.written.insert(id, verdict.clone());
                    count += 1;
                }
                Err(e) => {
                    warn!(object = %format!("{} {}", verdict.kind.kind(), verdict.key), error = %e, "writing status failed; will retry");
                }
            }
        }
        count
    }
}

/// The field manager of the status Weft writes.
const FIELD_MANAGER: &str = "weft-controller";

/// Completes an HTTPRoute status patch against the `current` object: other controllers'
/// `parents` entries are kept; a route refused before its parents were known reports on the
/// Service parents the object names; the patch carries the resourceVersion it was read at.
pub fn merge_parents(body: &mut serde_json::Value, current: &DynamicObject) {
    let status = current.data.get("status");
    let others: Vec<serde_json::Value> = status
        .and_then(|s| s.get("parents"))
        .and_then(|p| p.as_array())
        .into_iter()
        .flatten()
        .filter(|p| p["controllerName"] != CONTROLLER_NAME)
        .cloned()
        .collect();
    let ours = body["status"]["parents"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let ours = if ours.is_empty() {
        // Refused before its parents were read: report on what the object names.
        let template = serde_json::json!({"controllerName": CONTROLLER_NAME});
        let conditions = body["status"]["conditions"].clone();
        current
            .data
            .get("spec")
            .and_then(|s| s.get("parentRefs"))
            .and_then(|p| p.as_array())
            .into_iter()
            .flatten()
            .filter(|p| p["kind"] == "Service" && p.get("group").is_none_or(|g| g == ""))
            .map(|parent| {
                let mut entry = template.clone();
                entry["parentRef"] = parent.clone();
                entry["conditions"] = conditions.clone();
                entry
            })
            .collect()
    } else {
        ours
    };
    let mut parents = others;
    parents.extend(ours);
    body["status"] = serde_json::json!({ "parents": parents });
    if let Some(version) = &current.metadata.resource_version {
        body["metadata"] = serde_json::json!({ "resourceVersion": version });
    }
}

/// The merge patch for `verdict`'s status at `now`.
pub fn patch_body(verdict: &Verdict, now: SystemTime) -> serde_json::Value {
    let seconds = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0));
    let time = Timestamp::from_second(seconds)
        .unwrap_or(Timestamp::UNIX_EPOCH)
        .to_string();
    let condition = |kind: &str, status: bool, reason: &str, message: &str| {
        let mut c = serde_json::json!({
            "type": kind,
            "status": if status { "True" } else { "False" },
            "reason": reason,
            "message": message,
            "lastTransitionTime": time,
        });
        if let Some(g) = verdict.generation {
            c["observedGeneration"] = g.into();
        }
        c
    };
    let accepted = condition(
        "Accepted",
        verdict.accepted(),
        verdict.reason.as_str(),
        &verdict.message,
    );
    match verdict.kind {
        PolicyKind::HttpRoute => {
            let (resolved, why) = if verdict.accepted() {
                ("ResolvedRefs", "references resolved")
            } else {
                ("Invalid", verdict.message.as_str())
            };
            let conditions = serde_json::json!([
                accepted,
                condition("ResolvedRefs", verdict.accepted(), resolved, why),
            ]);
            let parents: Vec<serde_json::Value> = verdict
                .parents
                .iter()
                .map(|parent| {
                    serde_json::json!({
                        "parentRef": parent,
                        "controllerName": CONTROLLER_NAME,
                        "conditions": conditions,
                    })
                })
                .collect();
            // Without parents (refused before they were read) the conditions travel beside,
            // for `merge_parents` to attach to the parents the object names.
            serde_json::json!({ "status": { "parents": parents, "conditions": conditions } })
        }
        _ => {
            let mut conditions = vec![accepted];
            if let Some(programmed) = &verdict.programmed {
                conditions.push(match programmed {
                    Ok(message) => condition("Programmed", true, "Programmed", message),
                    Err(message) => condition("Programmed", false, "Pending", message),
                });
            }
            let mut status = serde_json::json!({ "conditions": conditions });
            // An ingress Gateway (class weft): its address and each listener's state.
            if !verdict.addresses.is_empty() {
                status["addresses"] = verdict
                    .addresses
                    .iter()
                    .map(|a| serde_json::json!({"type": "IPAddress", "value": a}))
                    .collect();
            }
            if !verdict.listeners.is_empty() {
                status["listeners"] = verdict
                    .listeners
                    .iter()
                    .map(|l| {
                        let why = if l.served {
                            "served"
                        } else {
                            "this protocol or TLS mode is not served by Weft"
                        };
                        serde_json::json!({
                            "name": l.name,
                            "attachedRoutes": l.attached_routes,
                            "supportedKinds": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute"}],
                            "conditions": [
                                condition("Accepted", l.served, if l.served { "Accepted" } else { "UnsupportedProtocol" }, why),
                                condition("Programmed", l.served && !verdict.addresses.is_empty(), if l.served { "Programmed" } else { "Invalid" }, why),
                                condition("ResolvedRefs", true, "ResolvedRefs", "references resolved"),
                            ],
                        })
                    })
                    .collect();
            }
            serde_json::json!({ "status": status })
        }
    }
}

impl super::lease::LeaderTask<Vec<Verdict>> for StatusWriter {
    async fn act(&mut self, verdicts: &Vec<Verdict>) {
        self.write(verdicts).await;
    }

    fn forget(&mut self) {
        StatusWriter::forget(self);
    }
}
