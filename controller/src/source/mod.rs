//! Where the controller learns the cluster's objects: the Kubernetes API ([`kubernetes`]) or a
//! manifest directory ([`manifests`]). Both read objects with the same parser.

pub mod kubernetes;
pub mod manifests;
