//! The cluster objects a compilation starts from: a whole [`Snapshot`], or the [`Delta`] of
//! what changed since the last one; and the error type for bad input.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::{
    core::v1::{Namespace, Node, Pod, Service},
    discovery::v1::EndpointSlice,
    networking::v1::NetworkPolicy,
};

use crate::crd::{AwsClusterNetworkPolicy, ClusterNetworkPolicy};

/// The objects the compiler reads: everything it needs to know about the cluster.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// v1 Namespaces (their labels feed namespaceSelectors).
    pub namespaces: Vec<Namespace>,
    /// v1 Pods (labels, `status.podIP(s)`, container ports, node).
    pub pods: Vec<Pod>,
    /// networking.k8s.io/v1 NetworkPolicies.
    pub policies: Vec<NetworkPolicy>,
    /// v1 Services: their ClusterIPs and ports, and the selector that picks their backends
    /// when no EndpointSlice names them.
    pub services: Vec<Service>,
    /// discovery.k8s.io/v1 EndpointSlices: the backends of the Service each one's
    /// `kubernetes.io/service-name` label names, as kube-proxy programs them.
    pub endpoint_slices: Vec<EndpointSlice>,
    /// policy.networking.k8s.io/v1alpha2 ClusterNetworkPolicies (the Admin and Baseline tiers).
    pub cluster_policies: Vec<ClusterNetworkPolicy>,
    /// networking.k8s.aws/v1alpha1 ClusterNetworkPolicies (AWS's, the same tiers).
    pub aws_cluster_policies: Vec<AwsClusterNetworkPolicy>,
    /// v1 Nodes: their labels and addresses, what a ClusterNetworkPolicy's `nodes` peer
    /// selects.
    pub nodes: Vec<Node>,
    /// The addresses of the node the compilation is for (not a cluster object: the agent finds
    /// them on the node). Traffic from them to a local pod passes ingress policy, as the
    /// NetworkPolicy API requires (kubelet probes); empty when that allowance is turned off.
    pub node_addresses: Vec<IpAddr>,
}

/// Objects of one kind that changed, by key (namespace, name; a Namespace's namespace is
/// empty, a namespaced object without one is in `default`), each with what it is now: `None`
/// when it is gone.
pub type Updates<K> = BTreeMap<(String, String), Option<Arc<K>>>;

/// What changed in the cluster since the last delta, kind by kind: a watch's events (the
/// latest state of each object they name), or everything a first list holds. Objects are
/// shared, not copied: the agent's watches hand over the ones they decoded.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Delta {
    /// Namespaces.
    pub namespaces: Updates<Namespace>,
    /// Pods.
    pub pods: Updates<Pod>,
    /// NetworkPolicies.
    pub policies: Updates<NetworkPolicy>,
    /// Services.
    pub services: Updates<Service>,
    /// EndpointSlices.
    pub endpoint_slices: Updates<EndpointSlice>,
    /// policy.networking.k8s.io ClusterNetworkPolicies (keyed by their API group and name).
    pub cluster_policies: Updates<ClusterNetworkPolicy>,
    /// networking.k8s.aws ClusterNetworkPolicies (keyed by their API group and name).
    pub aws_cluster_policies: Updates<AwsClusterNetworkPolicy>,
    /// Nodes (keyed like Namespaces: an empty namespace).
    pub nodes: Updates<Node>,
}

impl Delta {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.namespaces.is_empty()
            && self.pods.is_empty()
            && self.policies.is_empty()
            && self.services.is_empty()
            && self.endpoint_slices.is_empty()
            && self.cluster_policies.is_empty()
            && self.aws_cluster_policies.is_empty()
            && self.nodes.is_empty()
    }

    /// Objects changed, all kinds together.
    pub fn len(&self) -> usize {
        self.namespaces.len()
            + self.pods.len()
            + self.policies.len()
            + self.services.len()
            + self.endpoint_slices.len()
            + self.cluster_policies.len()
            + self.aws_cluster_policies.len()
            + self.nodes.len()
    }
}

/// The addresses a pod lists, each with the field it comes from: `status.podIPs[i].ip`, or
/// `status.podIP` when `podIPs` is empty (the API server keeps the two in step; `podIP` alone is
/// what older manifests carry). The texts are not checked: callers parse them.
pub fn pod_ip_fields(pod: &Pod) -> Vec<(String, &str)> {
    let status = pod.status.as_ref();
    let listed: Vec<(String, &str)> = status
        .and_then(|s| s.pod_ips.as_ref())
        .into_iter()
        .flatten()
        .enumerate()
        .map(|(i, ip)| (format!("status.podIPs[{i}].ip"), ip.ip.as_str()))
        .collect();
    if !listed.is_empty() {
        return listed;
    }
    status
        .and_then(|s| s.pod_ip.as_deref())
        .filter(|ip| !ip.is_empty())
        .map(|ip| ("status.podIP".to_owned(), ip))
        .into_iter()
        .collect()
}

/// The addresses of [`pod_ip_fields`] that parse, in the pod's order; the others are left out
/// (the compiler reports them).
pub fn pod_addresses(pod: &Pod) -> Vec<IpAddr> {
    pod_ip_fields(pod)
        .into_iter()
        .filter_map(|(_, text)| text.parse().ok())
        .collect()
}

/// A pod's `namespace/name`, the namespace defaulting to `default` as for any namespaced
/// object without one.
pub fn pod_key(pod: &Pod) -> String {
    format!(
        "{}/{}",
        pod.metadata
            .namespace
            .as_deref()
            .unwrap_or(crate::manifest::DEFAULT_NAMESPACE),
        pod.metadata.name.as_deref().unwrap_or_default()
    )
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
