//! Where the controller learns the cluster's objects.

pub mod manifests;
