//! What the controller says about each policy it reads: accepted (with what it does not
//! honour, by field) or refused (with the reason). Logged in every mode; written as status
//! conditions in Kubernetes mode.

use super::key::ObjectKey;
use super::objects::Objects;
use super::policy::gateway::{INGRESS_CLASS, ParentRef};
use super::policy::{PolicyKind, PolicySpec};

/// The verdict on one policy.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Verdict {
    /// Kind.
    #[serde(serialize_with = "kind_name")]
    pub kind: PolicyKind,
    /// Namespace and name.
    #[serde(serialize_with = "key_name")]
    pub key: ObjectKey,
    /// The generation judged.
    pub generation: Option<i64>,
    /// Accepted, partially honoured, or refused.
    #[serde(serialize_with = "reason_name")]
    pub reason: Reason,
    /// Human-readable detail: what the fields below say, in one line (the condition's
    /// message).
    pub message: String,
    /// Fields Weft reads but does not act on, each `field: why`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// What the policy cannot do among the other objects (a host with no service, a subset no
    /// DestinationRule defines...), each `field: what`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub findings: Vec<String>,
    /// Shapes not in the upstream API, read as meant, each naming the upstream field.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub hints: Vec<String>,
    /// For HTTPRoutes: the Service parents the verdict is about.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub parents: Vec<ParentRef>,
    /// For waypoint Gateways: whether the waypoint runs (its pod has an address), and where.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub programmed: Option<Result<String, String>>,
    /// For ingress Gateways (class `weft`): the gateway's address, once it runs.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<String>,
    /// For ingress Gateways: each listener, whether it is served, and the routes attached.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub listeners: Vec<ListenerStatus>,
}

/// One listener of an ingress Gateway, as its status reports it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ListenerStatus {
    pub name: String,
    pub served: bool,
    pub attached_routes: u32,
}

/// How a policy was judged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// Weft acts on every field.
    Accepted,
    /// Weft acts on it, but not on the fields the message names.
    PartiallyHonoured,
    /// Refused: its latest version could not be read (the last good one, if any, stays).
    Invalid,
}

impl Reason {
    /// The reason as a status condition writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Accepted => "Accepted",
            Self::PartiallyHonoured => "PartiallyHonoured",
            Self::Invalid => "Invalid",
        }
    }
}

impl Verdict {
    /// Whether Weft acts on the policy (at least in part).
    pub fn accepted(&self) -> bool {
        self.reason != Reason::Invalid
    }
}

fn reason_name<S: serde::Serializer>(reason: &Reason, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(reason.as_str())
}

fn kind_name<S: serde::Serializer>(kind: &PolicyKind, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(kind.kind())
}

fn key_name<S: serde::Serializer>(key: &ObjectKey, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&key.to_string())
}

/// A policy whose latest version could not be read (the last good one, if any, stays).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejected {
    pub kind: PolicyKind,
    /// Namespace and name.
    pub key: ObjectKey,
    /// Its generation.
    pub generation: Option<i64>,
    /// Why.
    pub message: String,
}

impl Rejected {
    /// The policy a refused manifest (`value`) is, if it is one of Weft's kinds, refused with
    /// `message`.
    pub fn of(value: &serde_yaml::Value, message: &str) -> Option<Self> {
        fn text(v: Option<&serde_yaml::Value>) -> &str {
            v.and_then(|v| v.as_str()).unwrap_or("")
        }
        let kind = PolicyKind::of(text(value.get("kind")), text(value.get("apiVersion")))?;
        let metadata = value.get("metadata");
        let namespace = text(metadata.and_then(|m| m.get("namespace")));
        Some(Self {
            kind,
            key: ObjectKey::new(
                if namespace.is_empty() {
                    "default"
                } else {
                    namespace
                },
                text(metadata.and_then(|m| m.get("name"))),
            ),
            generation: metadata
                .and_then(|m| m.get("generation"))
                .and_then(|g| g.as_i64()),
            message: message.to_owned(),
        })
    }
}

/// Verdicts on every policy that is Weft's: all Istio, Linkerd and SMI policies, HTTPRoutes
/// with a Service parent, Gateways of class `weft-waypoint`.
pub fn verdicts(objects: &Objects, rejected: &[Rejected]) -> Vec<Verdict> {
    let mut out = Vec::new();
    for policy in objects.policies.values() {
        if rejected
            .iter()
            .any(|r| r.kind == policy.kind && r.key == policy.key)
        {
            continue;
        }
        let ingress_class = |ns: &str, name: &str| {
            objects.policies.values().any(|p| {
                matches!(&p.spec, PolicySpec::Gateway(g) if g.gateway_class_name == INGRESS_CLASS)
                    && p.key.namespace == ns
                    && p.key.name == name
            })
        };
        let parents = match &policy.spec {
            PolicySpec::HttpRoute(route) => {
                let parents: Vec<ParentRef> = route
                    .service_parents()
                    .chain(route.gateway_parents().filter(|g| {
                        ingress_class(
                            g.namespace.as_deref().unwrap_or(&policy.key.namespace),
                            &g.name,
                        )
                    }))
                    .cloned()
                    .collect();
                if parents.is_empty() {
                    continue;
                }
                parents
            }
            PolicySpec::Gateway(g) if g.gateway_class_name == INGRESS_CLASS => Vec::new(),
            PolicySpec::Gateway(_) if !super::translate::is_waypoint_gateway(policy) => continue,
            _ => Vec::new(),
        };
        let running_ingress = super::translate::running_gateways(objects)
            .into_iter()
            .find(|g| g.key == policy.key)
            .and_then(|g| g.pod.ip);
        let (addresses, listeners) = match &policy.spec {
            PolicySpec::Gateway(g) if g.gateway_class_name == INGRESS_CLASS => (
                running_ingress.iter().map(ToString::to_string).collect(),
                g.listeners
                    .iter()
                    .map(|l| ListenerStatus {
                        name: l.name.clone(),
                        served: l.served(),
                        attached_routes: attached_routes(objects, policy, l),
                    })
                    .collect(),
            ),
            _ => (Vec::new(), Vec::new()),
        };
        let programmed = match &policy.spec {
            PolicySpec::Gateway(g) if g.gateway_class_name == INGRESS_CLASS => Some(
                running_ingress
                    .map(|ip| format!("gateway pod running at {ip}"))
                    .ok_or_else(|| {
                        "no gateway pod with an address yet (label gateway.networking.k8s.io/gateway-name)"
                            .to_owned()
                    }),
            ),
            PolicySpec::Gateway(_) => Some(
                super::translate::running_waypoints(objects)
                    .iter()
                    .find(|w| w.key == policy.key)
                    .and_then(|w| w.pod.ip)
                    .map(|ip| format!("waypoint pod running at {ip}"))
                    .ok_or_else(|| {
                        "no waypoint pod with an address yet (label gateway.networking.k8s.io/gateway-name)"
                            .to_owned()
                    }),
            ),
            _ => None,
        };
        let findings = super::translate::findings(objects, policy);
        let (reason, mut message) = match (policy.notes.is_empty(), findings.is_empty()) {
            (true, true) => (Reason::Accepted, "accepted by Weft".to_owned()),
            (notes_empty, _) => {
                let mut parts = Vec::new();
                if !notes_empty {
                    parts.push(format!("Weft does not honour: {}", policy.notes.join("; ")));
                }
                if !findings.is_empty() {
                    parts.push(format!("without effect: {}", findings.join("; ")));
                }
                (
                    Reason::PartiallyHonoured,
                    format!("accepted; {}", parts.join("; ")),
                )
            }
        };
        if !policy.hints.is_empty() {
            message.push_str(&format!(
                "; written in a shape the upstream API does not have: {}",
                policy.hints.join("; ")
            ));
        }
        out.push(Verdict {
            kind: policy.kind,
            key: policy.key.clone(),
            generation: policy.generation,
            reason,
            message,
            notes: policy.notes.clone(),
            findings,
            hints: policy.hints.clone(),
            parents,
            programmed,
            addresses,
            listeners,
        });
    }
    for r in rejected {
        // What stays in force says so: a refused change does not undo the last good version.
        let kept = objects
            .policies
            .values()
            .any(|p| p.kind == r.kind && p.key == r.key);
        let message = if kept {
            format!("{}; the last good version stays in effect", r.message)
        } else {
            format!("{}; nothing of it is applied", r.message)
        };
        out.push(Verdict {
            kind: r.kind,
            key: r.key.clone(),
            generation: r.generation,
            reason: Reason::Invalid,
            message,
            notes: Vec::new(),
            findings: Vec::new(),
            hints: Vec::new(),
            parents: Vec::new(),
            programmed: None,
            addresses: Vec::new(),
            listeners: Vec::new(),
        });
    }
    out.sort_by(|a, b| (a.kind, &a.key).cmp(&(b.kind, &b.key)));
    out
}

/// Logs each verdict that is new or changed: what is not honoured as a warning, a refusal as
/// an error.
pub fn log_changes(before: &[Verdict], now: &[Verdict]) {
    for v in now {
        if before.contains(v) {
            continue;
        }
        let object = format!("{} {}", v.kind.kind(), v.key);
        match v.reason {
            Reason::Accepted => tracing::info!(%object, "policy accepted"),
            Reason::PartiallyHonoured => tracing::warn!(%object, "{}", v.message),
            Reason::Invalid => tracing::error!(%object, "policy refused: {}", v.message),
        }
    }
}

/// The HTTPRoutes attached to listener `l` of ingress Gateway `gateway`.
fn attached_routes(
    objects: &Objects,
    gateway: &super::policy::Policy,
    l: &super::policy::gateway::Listener,
) -> u32 {
    objects
        .policies
        .values()
        .filter(|p| {
            matches!(&p.spec, PolicySpec::HttpRoute(route)
                if route.attaches_to(&p.key.namespace, &gateway.key, l))
        })
        .count() as u32
}
