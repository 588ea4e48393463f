//! What quarantine needs from a cluster, as one trait with two implementations: the
//! Kubernetes API ([`KubeCluster`], kubeconfig or in-cluster) and the lab's objects in memory
//! (in `tollgate-lab`).
//!
//! The quarantine logic ([`crate::quarantine`]) only ever talks to a [`Cluster`]: who am I,
//! may I, read the pod, the namespace's NetworkPolicies and the cluster's
//! ClusterNetworkPolicies, create or delete one ClusterNetworkPolicy, set or remove one label
//! of one pod — the last one only if the pod is still at the version that was read, so a
//! concurrent change is a conflict, not a silent overwrite.

use k8s_openapi::api::{
    authentication::v1::SelfSubjectReview,
    authorization::v1::{ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec},
    core::v1::Pod,
    networking::v1::NetworkPolicy,
};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use tollgate_enforcer::crd::ClusterNetworkPolicy;

/// An API call that failed.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The object does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// The API server refused the call (RBAC).
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// The object changed since it was read, or already exists.
    #[error("conflict: {0}")]
    Conflict(String),
    /// Anything else: the connection, an admission webhook, a server error.
    #[error("{0}")]
    Api(String),
}

/// One permission quarantine or release needs: `verb` on `resource` (of `group`) in
/// `namespace`, or cluster-wide.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    /// `get`, `list`, `create`, `patch`, `delete`.
    pub verb: &'static str,
    /// API group: `""` for core, `networking.k8s.io`.
    pub group: &'static str,
    /// Plural resource name: `pods`, `networkpolicies`.
    pub resource: &'static str,
    /// The namespace; empty: cluster-wide (a cluster-scoped resource, or every namespace).
    pub namespace: String,
}

impl std::fmt::Display for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let resource = if self.group.is_empty() {
            self.resource.to_owned()
        } else {
            format!("{}.{}", self.resource, self.group)
        };
        match self.namespace.as_str() {
            "" => write!(f, "{} {resource} cluster-wide", self.verb),
            namespace => write!(f, "{} {resource} in namespace {namespace}", self.verb),
        }
    }
}

/// The cluster operations quarantine and release are made of.
pub trait Cluster {
    /// Who the cluster says the caller is (the user name it authenticated).
    fn whoami(&self) -> impl Future<Output = Result<String, ClusterError>>;
    /// Whether the caller may do `access`.
    fn allowed(&self, access: &Access) -> impl Future<Output = Result<bool, ClusterError>>;
    /// The pod, if it exists.
    fn pod(
        &self,
        namespace: &str,
        name: &str,
    ) -> impl Future<Output = Result<Option<Pod>, ClusterError>>;
    /// Every NetworkPolicy of `namespace`.
    fn policies(
        &self,
        namespace: &str,
    ) -> impl Future<Output = Result<Vec<NetworkPolicy>, ClusterError>>;
    /// Every ClusterNetworkPolicy (`policy.networking.k8s.io`); [`ClusterError::NotFound`]
    /// when the cluster serves none (the CRD is not installed).
    fn cluster_policies(
        &self,
    ) -> impl Future<Output = Result<Vec<ClusterNetworkPolicy>, ClusterError>>;
    /// Creates the ClusterNetworkPolicy `policy`; the stored object.
    fn create_cluster_policy(
        &self,
        policy: &ClusterNetworkPolicy,
    ) -> impl Future<Output = Result<ClusterNetworkPolicy, ClusterError>>;
    /// Deletes a ClusterNetworkPolicy.
    fn delete_cluster_policy(&self, name: &str) -> impl Future<Output = Result<(), ClusterError>>;
    /// Sets label `key` of the pod to `value` (removes it for `None`), only if the pod's
    /// resourceVersion is still `resource_version`; the pod as stored afterwards.
    fn set_pod_label(
        &self,
        namespace: &str,
        name: &str,
        key: &str,
        value: Option<&str>,
        resource_version: &str,
    ) -> impl Future<Output = Result<Pod, ClusterError>>;
}

/// A cluster behind the Kubernetes API.
#[derive(Clone)]
pub struct KubeCluster {
    client: kube::Client,
}

impl KubeCluster {
    /// The cluster `client` talks to.
    pub fn new(client: kube::Client) -> Self {
        Self { client }
    }
}

/// `error` of the call that did `what`, classified.
fn classify(what: &str, error: kube::Error) -> ClusterError {
    match error {
        kube::Error::Api(status) if status.is_not_found() => ClusterError::NotFound(what.into()),
        kube::Error::Api(status) if status.is_forbidden() => {
            ClusterError::Forbidden(format!("{what}: {}", status.message))
        }
        kube::Error::Api(status) if status.is_conflict() || status.is_already_exists() => {
            ClusterError::Conflict(format!("{what}: {}", status.message))
        }
        // In words: kube prints an API error with its whole structure (`{0} ({0:?})`).
        kube::Error::Api(status) => ClusterError::Api(format!(
            "{what}: {} (HTTP {}{})",
            status.message,
            status.code,
            if status.reason.is_empty() {
                String::new()
            } else {
                format!(", {}", status.reason)
            }
        )),
        other => ClusterError::Api(format!("{what}: {other}")),
    }
}

impl Cluster for KubeCluster {
    async fn whoami(&self) -> Result<String, ClusterError> {
        let api: Api<SelfSubjectReview> = Api::all(self.client.clone());
        let review = api
            .create(&PostParams::default(), &SelfSubjectReview::default())
            .await
            .map_err(|e| classify("SelfSubjectReview", e))?;
        review
            .status
            .and_then(|s| s.user_info)
            .and_then(|u| u.username)
            .ok_or_else(|| {
                ClusterError::Api("SelfSubjectReview: no user name in the answer".into())
            })
    }

    async fn allowed(&self, access: &Access) -> Result<bool, ClusterError> {
        let api: Api<SelfSubjectAccessReview> = Api::all(self.client.clone());
        let review = SelfSubjectAccessReview {
            spec: SelfSubjectAccessReviewSpec {
                resource_attributes: Some(ResourceAttributes {
                    verb: Some(access.verb.to_owned()),
                    group: Some(access.group.to_owned()),
                    resource: Some(access.resource.to_owned()),
                    namespace: (!access.namespace.is_empty()).then(|| access.namespace.clone()),
                    ..ResourceAttributes::default()
                }),
                ..SelfSubjectAccessReviewSpec::default()
            },
            ..SelfSubjectAccessReview::default()
        };
        let answer = api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| classify("SelfSubjectAccessReview", e))?;
        Ok(answer.status.is_some_and(|s| s.allowed))
    }

    async fn pod(&self, namespace: &str, name: &str) -> Result<Option<Pod>, ClusterError> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        api.get_opt(name)
            .await
            .map_err(|e| classify(&format!("pod {namespace}/{name}"), e))
    }

    async fn policies(&self, namespace: &str) -> Result<Vec<NetworkPolicy>, ClusterError> {
        let api: Api<NetworkPolicy> = Api::namespaced(self.client.clone(), namespace);
        api.list(&ListParams::default())
            .await
            .map(|list| list.items)
            .map_err(|e| classify(&format!("NetworkPolicies of {namespace}"), e))
    }

    async fn cluster_policies(&self) -> Result<Vec<ClusterNetworkPolicy>, ClusterError> {
        let api: Api<ClusterNetworkPolicy> = Api::all(self.client.clone());
        api.list(&ListParams::default())
            .await
            .map(|list| list.items)
            .map_err(|e| classify("ClusterNetworkPolicies (policy.networking.k8s.io)", e))
    }

    async fn create_cluster_policy(
        &self,
        policy: &ClusterNetworkPolicy,
    ) -> Result<ClusterNetworkPolicy, ClusterError> {
        let name = policy.metadata.name.as_deref().unwrap_or_default();
        let api: Api<ClusterNetworkPolicy> = Api::all(self.client.clone());
        api.create(&PostParams::default(), policy)
            .await
            .map_err(|e| classify(&format!("ClusterNetworkPolicy {name}"), e))
    }

    async fn delete_cluster_policy(&self, name: &str) -> Result<(), ClusterError> {
        let api: Api<ClusterNetworkPolicy> = Api::all(self.client.clone());
        api.delete(name, &DeleteParams::default())
            .await
            .map(|_| ())
            .map_err(|e| classify(&format!("ClusterNetworkPolicy {name}"), e))
    }

    async fn set_pod_label(
        &self,
        namespace: &str,
        name: &str,
        key: &str,
        value: Option<&str>,
        resource_version: &str,
    ) -> Result<Pod, ClusterError> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        // A merge patch that names the resourceVersion read: the API server refuses it with a
        // conflict if the pod changed in between (optimistic concurrency).
        let patch = serde_json::json!({
            "metadata": {
                "resourceVersion": resource_version,
                "labels": { key: value },
            }
        });
        api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|e| classify(&format!("pod {namespace}/{name}"), e))
    }
}
