//! Manifest files → one [`Snapshot`]: each file is parsed by
//! [`crate::manifest::parse_manifest_bytes`], then the objects are merged in file order.
//!
//! A later object of the same kind, namespace and name replaces the earlier one, in its place,
//! as `kubectl apply` would: a base cluster can be followed by files that relabel a pod or
//! update a policy. Every replacement is logged; objects without a name are never merged.

use std::collections::HashMap;
use std::path::Path;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::manifest::parse_manifest_bytes;
use crate::snapshot::{InputError, Snapshot};

/// A file's bytes and the name it is known by in errors (usually its path).
///
/// The bytes are kept as read: manifests are decoded document by document and probes line by
/// line, so invalid UTF-8 costs only the document or line that holds it (an error naming its
/// line), never the whole file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceText {
    /// Name of the text in errors (`SOURCE document N`, `SOURCE line N`).
    pub source: String,
    /// The file's bytes.
    pub bytes: Vec<u8>,
}

impl SourceText {
    /// A text named `source`.
    pub fn new(source: impl Into<String>, bytes: impl Into<Vec<u8>>) -> Self {
        Self {
            source: source.into(),
            bytes: bytes.into(),
        }
    }

    /// Reads a file; its path, as given, names it. Only a file that cannot be read is an error
    /// here: its content is checked where it is parsed.
    pub fn read(path: impl AsRef<Path>) -> std::io::Result<Self> {
        let path = path.as_ref();
        Ok(Self::new(path.display().to_string(), std::fs::read(path)?))
    }
}

/// Parses every file and merges their objects into one snapshot (see the module doc), with
/// the errors of every file.
pub fn load_manifests(files: &[SourceText]) -> (Snapshot, Vec<InputError>) {
    let mut merged = Merged::default();
    let mut errors = Vec::new();
    for file in files {
        let (snapshot, mut file_errors) = parse_manifest_bytes(&file.bytes, &file.source);
        errors.append(&mut file_errors);
        for namespace in snapshot.namespaces {
            merged
                .namespaces
                .upsert("Namespace", &file.source, namespace, |n| &n.metadata);
        }
        for pod in snapshot.pods {
            merged
                .pods
                .upsert("Pod", &file.source, pod, |p| &p.metadata);
        }
        for policy in snapshot.policies {
            merged
                .policies
                .upsert("NetworkPolicy", &file.source, policy, |p| &p.metadata);
        }
        for service in snapshot.services {
            merged
                .services
                .upsert("Service", &file.source, service, |s| &s.metadata);
        }
        for slice in snapshot.endpoint_slices {
            merged
                .endpoint_slices
                .upsert("EndpointSlice", &file.source, slice, |s| &s.metadata);
        }
        for policy in snapshot.cluster_policies {
            merged
                .cluster_policies
                .upsert("ClusterNetworkPolicy", &file.source, policy, |p| {
                    &p.metadata
                });
        }
        for node in snapshot.nodes {
            merged
                .nodes
                .upsert("Node", &file.source, node, |n| &n.metadata);
        }
        for policy in snapshot.aws_cluster_policies {
            merged.aws_cluster_policies.upsert(
                "ClusterNetworkPolicy (networking.k8s.aws)",
                &file.source,
                policy,
                |p| &p.metadata,
            );
        }
    }
    let snapshot = Snapshot {
        namespaces: merged.namespaces.items,
        pods: merged.pods.items,
        policies: merged.policies.items,
        services: merged.services.items,
        endpoint_slices: merged.endpoint_slices.items,
        cluster_policies: merged.cluster_policies.items,
        aws_cluster_policies: merged.aws_cluster_policies.items,
        nodes: merged.nodes.items,
        node_addresses: Vec::new(),
    };
    (snapshot, errors)
}

#[derive(Default)]
struct Merged {
    namespaces: Objects<k8s_openapi::api::core::v1::Namespace>,
    pods: Objects<k8s_openapi::api::core::v1::Pod>,
    policies: Objects<k8s_openapi::api::networking::v1::NetworkPolicy>,
    services: Objects<k8s_openapi::api::core::v1::Service>,
    endpoint_slices: Objects<k8s_openapi::api::discovery::v1::EndpointSlice>,
    cluster_policies: Objects<crate::crd::ClusterNetworkPolicy>,
    aws_cluster_policies: Objects<crate::crd::AwsClusterNetworkPolicy>,
    nodes: Objects<k8s_openapi::api::core::v1::Node>,
}

/// Objects of one kind, in first-seen order, with the position of each named one.
struct Objects<T> {
    items: Vec<T>,
    positions: HashMap<(Option<String>, String), usize>,
}

impl<T> Default for Objects<T> {
    fn default() -> Self {
        Self {
            items: Vec::new(),
            positions: HashMap::new(),
        }
    }
}

impl<T> Objects<T> {
    fn upsert(&mut self, kind: &str, source: &str, item: T, meta: impl Fn(&T) -> &ObjectMeta) {
        let metadata = meta(&item);
        let Some(name) = metadata.name.clone() else {
            self.items.push(item);
            return;
        };
        let key = (metadata.namespace.clone(), name);
        match self.positions.get(&key) {
            Some(&position) => {
                let object = match &key.0 {
                    Some(namespace) => format!("{kind} {namespace}/{}", key.1),
                    None => format!("{kind} {}", key.1),
                };
                tracing::info!(%object, %source, "a later manifest replaces an object");
                self.items[position] = item;
            }
            None => {
                self.positions.insert(key, self.items.len());
                self.items.push(item);
            }
        }
    }
}
