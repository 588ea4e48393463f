//! The cluster objects a compilation starts from, and the error type for bad input.

use k8s_openapi::api::{
    core::v1::{Namespace, Pod},
    networking::v1::NetworkPolicy,
};

/// The objects the compiler reads: everything it needs to know about the cluster.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// v1 Namespaces (their labels feed namespaceSelectors).
    pub namespaces: Vec<Namespace>,
    /// v1 Pods (labels, `status.podIP(s)`, container ports, node).
    pub pods: Vec<Pod>,
    /// networking.k8s.io/v1 NetworkPolicies.
    pub policies: Vec<NetworkPolicy>,
}

/// Invalid input: which object, which field, what is wrong.
///
/// The object that carries the error is left out of the compilation; every valid object is
/// still used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{object}: {field}: {message}")]
pub struct InputError {
    /// The object, as `Kind namespace/name`, or the document (`FILE document N`) when the
    /// object cannot be named.
    pub object: String,
    /// The field, as a path into the object (`spec.ingress[0].ports[1].endPort`).
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}
