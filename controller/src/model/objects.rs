//! The Kubernetes objects Weft reads, reduced to what it uses.

use std::collections::BTreeMap;
use std::net::IpAddr;

use super::key::ObjectKey;
use super::policy::{Policy, PolicyKind};

/// A namespace and its labels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Namespace {
    pub name: String,
    /// Labels (`weft.io/dataplane-mode=ambient` enrolls it).
    pub labels: BTreeMap<String, String>,
}

/// A container port of a pod, for services' named target ports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodPort {
    /// Port name, if any.
    pub name: Option<String>,
    /// Port number.
    pub container_port: u16,
}

/// A pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pod {
    pub name: String,
    pub namespace: String,
    /// Labels (`weft.io/dataplane-mode=none` opts it out).
    pub labels: BTreeMap<String, String>,
    /// Service account (`default` when unset).
    pub service_account: String,
    /// Node it is scheduled on, once scheduled.
    pub node: Option<String>,
    /// Its IP, once it has one.
    pub ip: Option<IpAddr>,
    /// Container ports.
    pub ports: Vec<PodPort>,
    /// Being deleted: a waypoint pod in this state drains and takes no new tunnels.
    pub terminating: bool,
    /// Its controlling owner, as (kind, name): a ReplicaSet, StatefulSet, DaemonSet, Job.
    pub owner: Option<(String, String)>,
}

/// A service's target port: a number, or the name of a container port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetPort {
    /// A port number.
    Number(u16),
    /// A container port name.
    Name(String),
}

/// One port of a service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePortSpec {
    /// Port on the cluster IP.
    pub port: u16,
    /// Port on the pods.
    pub target_port: TargetPort,
}

/// A service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    pub name: String,
    pub namespace: String,
    /// Labels (`weft.io/use-waypoint`).
    pub labels: BTreeMap<String, String>,
    /// Pod selector (a service without one has no endpoints Weft manages).
    pub selector: BTreeMap<String, String>,
    /// Cluster IP (`None` for headless services).
    pub cluster_ip: Option<IpAddr>,
    pub ports: Vec<ServicePortSpec>,
}

/// An EndpointSlice: the endpoints of a service without a selector (or managed by someone
/// else), by address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointSlice {
    pub name: String,
    pub namespace: String,
    /// The service it belongs to (`kubernetes.io/service-name`).
    pub service: String,
    /// Addresses of ready endpoints.
    pub addresses: Vec<IpAddr>,
}

/// Every object Weft reads, as last seen.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Objects {
    /// Namespaces by name.
    pub namespaces: BTreeMap<String, Namespace>,
    pub pods: BTreeMap<ObjectKey, Pod>,
    pub services: BTreeMap<ObjectKey, Service>,
    /// Policies (Istio, Linkerd, SMI, Gateway API).
    pub policies: BTreeMap<(PolicyKind, ObjectKey), Policy>,
    pub endpoint_slices: BTreeMap<ObjectKey, EndpointSlice>,
}

/// One object of any kind Weft reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Object {
    /// A namespace.
    Namespace(Namespace),
    /// A pod.
    Pod(Pod),
    /// A service.
    Service(Service),
    /// A policy.
    Policy(Box<Policy>),
    /// An EndpointSlice.
    EndpointSlice(EndpointSlice),
}

impl Object {
    /// `Kind namespace/name`, for messages.
    pub fn describe(&self) -> String {
        match self {
            Self::Namespace(n) => format!("Namespace {}", n.name),
            Self::Pod(p) => format!("Pod {}/{}", p.namespace, p.name),
            Self::Service(s) => format!("Service {}/{}", s.namespace, s.name),
            Self::Policy(p) => p.describe(),
            Self::EndpointSlice(e) => format!("EndpointSlice {}/{}", e.namespace, e.name),
        }
    }
}

impl Objects {
    /// Adds or replaces a namespace.
    pub fn upsert_namespace(&mut self, ns: Namespace) {
        self.namespaces.insert(ns.name.clone(), ns);
    }

    /// Adds or replaces a pod.
    pub fn upsert_pod(&mut self, pod: Pod) {
        self.pods
            .insert(ObjectKey::new(&pod.namespace, &pod.name), pod);
    }

    /// Adds or replaces a service.
    pub fn upsert_service(&mut self, svc: Service) {
        self.services
            .insert(ObjectKey::new(&svc.namespace, &svc.name), svc);
    }

    /// Adds or replaces any object.
    pub fn upsert(&mut self, object: Object) {
        match object {
            Object::Namespace(n) => self.upsert_namespace(n),
            Object::Pod(p) => self.upsert_pod(p),
            Object::Service(s) => self.upsert_service(s),
            Object::Policy(p) => {
                self.policies.insert((p.kind, p.key.clone()), *p);
            }
            Object::EndpointSlice(e) => {
                self.endpoint_slices
                    .insert(ObjectKey::new(&e.namespace, &e.name), e);
            }
        }
    }
}

impl FromIterator<Object> for Objects {
    fn from_iter<I: IntoIterator<Item = Object>>(objects: I) -> Self {
        let mut out = Self::default();
        for object in objects {
            out.upsert(object);
        }
        out
    }
}
