//! The compiler's inputs, kept between compilations and changed one object at a time.
//!
//! A [`Compiler`] holds the cluster as the compiler reads it: each object is checked once,
//! when it arrives ([`Compiler::apply`]), and kept by key in the form the compilation uses
//! (pods and namespaces as `cluster`'s infos, policies as checked [`Policy`]s, Services and
//! EndpointSlices as given), with its problems. A change replaces or removes one object; a
//! pass ([`Compiler::compile`]) reads what is kept, never a copy of the cluster's objects.
//! A caller that holds whole snapshots hands them over with [`Compiler::load`], which checks
//! again only the objects whose resourceVersion moved.
//! [`super::compile_with`] is the same compilation over a [`Snapshot`] loaded at once
//! ([`Compiler::from_snapshot`]), so an incremental compiler and a full one give the same maps
//! for the same cluster (`tests::incremental`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::Resource;
use k8s_openapi::api::{
    core::v1::{Namespace, Node, Pod, Service},
    discovery::v1::EndpointSlice,
    networking::v1::NetworkPolicy,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::cluster::{self, Cluster, object_label};
use super::cluster_policy::{self, Api};
use super::identities::{self, Peers};
use super::policy::{self, Policy};
use super::services::{self, ServiceInfo};
use super::sets::SetCache;
use super::{Compiled, Placement, Problems, RuleIds};
use crate::crd::{AwsClusterNetworkPolicy, ClusterNetworkPolicy};
use crate::desired::{Capacity, Ids};
use crate::manifest::DEFAULT_NAMESPACE;
use crate::snapshot::{Delta, InputError, Snapshot, Updates};

/// One cluster object, as a watch or a file delivers it.
#[derive(Debug, Clone, Copy)]
pub enum Object<'a> {
    /// A v1 Namespace.
    Namespace(&'a Namespace),
    /// A v1 Pod.
    Pod(&'a Pod),
    /// A networking.k8s.io/v1 NetworkPolicy.
    NetworkPolicy(&'a NetworkPolicy),
    /// A v1 Service.
    Service(&'a Service),
    /// A discovery.k8s.io/v1 EndpointSlice.
    EndpointSlice(&'a EndpointSlice),
    /// A policy.networking.k8s.io/v1alpha2 ClusterNetworkPolicy.
    ClusterNetworkPolicy(&'a ClusterNetworkPolicy),
    /// A networking.k8s.aws/v1alpha1 ClusterNetworkPolicy.
    AwsClusterNetworkPolicy(&'a AwsClusterNetworkPolicy),
    /// A v1 Node.
    Node(&'a Node),
}

/// A type of cluster object the compiler reads: its kind, and itself as an [`Object`].
pub trait ClusterObject {
    /// Its kind.
    const OBJECT_KIND: ObjectKind;

    /// It, as an [`Object`].
    fn object(&self) -> Object<'_>;
}

macro_rules! cluster_object {
    ($($type:ident),*) => {$(
        impl ClusterObject for $type {
            const OBJECT_KIND: ObjectKind = ObjectKind::$type;

            fn object(&self) -> Object<'_> {
                Object::$type(self)
            }
        }
    )*};
}

cluster_object!(
    Namespace,
    Pod,
    NetworkPolicy,
    Service,
    EndpointSlice,
    ClusterNetworkPolicy,
    AwsClusterNetworkPolicy,
    Node
);

/// The kinds of [`Object`], to name one that is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ObjectKind {
    /// Namespace.
    Namespace,
    /// Pod.
    Pod,
    /// NetworkPolicy.
    NetworkPolicy,
    /// Service.
    Service,
    /// EndpointSlice.
    EndpointSlice,
    /// policy.networking.k8s.io ClusterNetworkPolicy.
    ClusterNetworkPolicy,
    /// networking.k8s.aws ClusterNetworkPolicy.
    AwsClusterNetworkPolicy,
    /// Node.
    Node,
}

impl ObjectKind {
    /// The API's kind.
    pub fn name(self) -> &'static str {
        match self {
            ObjectKind::Namespace => Namespace::KIND,
            ObjectKind::Pod => Pod::KIND,
            ObjectKind::NetworkPolicy => NetworkPolicy::KIND,
            ObjectKind::Service => Service::KIND,
            ObjectKind::EndpointSlice => EndpointSlice::KIND,
            ObjectKind::ClusterNetworkPolicy => ClusterNetworkPolicy::KIND,
            ObjectKind::AwsClusterNetworkPolicy => AwsClusterNetworkPolicy::KIND,
            ObjectKind::Node => Node::KIND,
        }
    }

    /// What stands in its objects' keys for a namespace: empty for a Namespace, the API group
    /// for a cluster-scoped policy (no namespace name has a dot, so keys never collide);
    /// `None` for a namespaced kind.
    pub fn scope(self) -> Option<&'static str> {
        match self {
            ObjectKind::Namespace | ObjectKind::Node => Some(""),
            ObjectKind::ClusterNetworkPolicy => Some(ClusterNetworkPolicy::GROUP),
            ObjectKind::AwsClusterNetworkPolicy => Some(AwsClusterNetworkPolicy::GROUP),
            ObjectKind::Pod
            | ObjectKind::NetworkPolicy
            | ObjectKind::Service
            | ObjectKind::EndpointSlice => None,
        }
    }
}

impl<'a> Object<'a> {
    /// Its kind.
    pub fn kind(&self) -> ObjectKind {
        match self {
            Object::Namespace(_) => ObjectKind::Namespace,
            Object::Pod(_) => ObjectKind::Pod,
            Object::NetworkPolicy(_) => ObjectKind::NetworkPolicy,
            Object::Service(_) => ObjectKind::Service,
            Object::EndpointSlice(_) => ObjectKind::EndpointSlice,
            Object::ClusterNetworkPolicy(_) => ObjectKind::ClusterNetworkPolicy,
            Object::AwsClusterNetworkPolicy(_) => ObjectKind::AwsClusterNetworkPolicy,
            Object::Node(_) => ObjectKind::Node,
        }
    }

    /// Its key: (namespace, name), the namespace empty for a Namespace and `default` for a
    /// namespaced object without one; `None` when it has no name.
    pub fn key(&self) -> Option<(String, String)> {
        key_of(*self)
    }

    fn meta(&self) -> &'a ObjectMeta {
        match self {
            Object::Namespace(o) => &o.metadata,
            Object::Pod(o) => &o.metadata,
            Object::NetworkPolicy(o) => &o.metadata,
            Object::Service(o) => &o.metadata,
            Object::EndpointSlice(o) => &o.metadata,
            Object::ClusterNetworkPolicy(o) => &o.metadata,
            Object::AwsClusterNetworkPolicy(o) => &o.metadata,
            Object::Node(o) => &o.metadata,
        }
    }
}

/// An object's key: (namespace, name); a Namespace's namespace is empty, a cluster-scoped
/// policy's is its API group ([`ObjectKind::scope`]).
type Key = (String, String);

/// The compiler's inputs, changed one object at a time (see the module doc).
#[derive(Debug, Clone, Default)]
pub struct Compiler {
    cluster: Cluster,
    policies: BTreeMap<Key, Policy>,
    services: BTreeMap<Key, Service>,
    slices: BTreeMap<Key, EndpointSlice>,
    node_addresses: Vec<IpAddr>,
    /// Each kept object's problems, by kind and key (reported by every pass).
    problems: BTreeMap<(ObjectKind, Key), Vec<InputError>>,
    /// Problems of a loaded snapshot that belong to no key: unnamed objects, duplicates.
    load_errors: Vec<InputError>,
    /// The resourceVersion of every kept object, valid or not (see [`Compiler::load`]).
    versions: Versions,
    /// Each valid Service with its backends, as last resolved.
    resolved: BTreeMap<Key, Arc<ServiceInfo>>,
    /// `resolved` as the last pass handed it on (stale once `services_changed` is not empty).
    services_listed: Option<services::Services>,
    /// The Services whose entry in `resolved` changed since the last pass.
    services_changed: BTreeSet<Key>,
    /// Services to resolve again before the next pass: they, their slices or the pods they may
    /// name changed.
    stale_services: BTreeSet<Key>,
    /// The Service of each slice that belongs to one.
    slice_service: HashMap<Key, Key>,
    /// The slices of each Service.
    service_slices: BTreeMap<Key, BTreeSet<Key>>,
    /// Services with a slice endpoint that names no pod (found by address, in any namespace):
    /// resolved again on every pod change.
    by_address: BTreeSet<Key>,
    /// The peer identities, as the last pass left them.
    peers: Peers,
    /// What changed for them since.
    changes: identities::Changes,
    /// Policy changes so far (kept set entries are valid while it stays).
    policy_changes: u64,
    /// The policies (by key) that changed since the last pass.
    policies_changed: BTreeSet<Key>,
    /// The policy sets' entries of the last pass.
    set_cache: SetCache,
    /// The rule ids of the last pass.
    rule_ids: Option<RuleIds>,
}

impl Compiler {
    /// A compiler that knows no object yet.
    pub fn new() -> Compiler {
        Compiler::default()
    }

    /// A compiler that knows `snapshot`'s objects (see [`Compiler::load`]).
    pub fn from_snapshot(snapshot: &Snapshot) -> Compiler {
        let mut compiler = Compiler::new();
        compiler.load(snapshot);
        compiler
    }

    /// Makes the kept objects those of `snapshot`: an object with the resourceVersion of the
    /// one kept under its key is not checked again, the others are applied, and kept objects
    /// the snapshot no longer lists are removed. An unnamed object is reported and left out;
    /// of an object listed twice, the last definition is used and the duplicate reported.
    pub fn load(&mut self, snapshot: &Snapshot) {
        self.load_errors.clear();
        let lists: [(&str, Vec<Object<'_>>); 8] = [
            (
                "namespaces",
                snapshot.namespaces.iter().map(Object::Namespace).collect(),
            ),
            ("pods", snapshot.pods.iter().map(Object::Pod).collect()),
            (
                "policies",
                snapshot
                    .policies
                    .iter()
                    .map(Object::NetworkPolicy)
                    .collect(),
            ),
            (
                "services",
                snapshot.services.iter().map(Object::Service).collect(),
            ),
            (
                "endpointSlices",
                snapshot
                    .endpoint_slices
                    .iter()
                    .map(Object::EndpointSlice)
                    .collect(),
            ),
            (
                "clusterPolicies",
                snapshot
                    .cluster_policies
                    .iter()
                    .map(Object::ClusterNetworkPolicy)
                    .collect(),
            ),
            (
                "awsClusterPolicies",
                snapshot
                    .aws_cluster_policies
                    .iter()
                    .map(Object::AwsClusterNetworkPolicy)
                    .collect(),
            ),
            ("nodes", snapshot.nodes.iter().map(Object::Node).collect()),
        ];
        // Objects this load lists are marked with its number; the others are gone.
        self.versions.loads += 1;
        let this_load = self.versions.loads;
        for (list, objects) in lists {
            for (index, object) in objects.into_iter().enumerate() {
                let Some((namespace, name)) = key_ref(object) else {
                    self.load_errors.push(unnamed(object, list, index));
                    continue;
                };
                let kind = object.kind();
                let version = object.meta().resource_version.as_ref();
                if let Some(seen) = self.versions.get_mut(kind, namespace, name) {
                    if seen.load == this_load {
                        let label = self.label(kind, object.meta());
                        self.load_errors.push(cluster::duplicate(&label));
                    } else if version.is_some() && seen.version.as_ref() == version {
                        seen.load = this_load;
                        continue;
                    }
                }
                self.apply_as(object, (namespace.to_owned(), name.to_owned()));
            }
        }
        for (kind, (namespace, name)) in self.versions.not_seen_in(this_load) {
            self.delete(kind, &namespace, &name);
        }
        self.node_addresses = snapshot.node_addresses.clone();
    }

    /// Adds `object`, or replaces the one of its kind with its namespace and name. Returns
    /// that (namespace, name); an object without a name is refused, with that error.
    pub fn apply(&mut self, object: Object<'_>) -> Result<(String, String), InputError> {
        let Some(key) = key_of(object) else {
            return Err(InputError {
                object: format!("{} (unnamed)", object.kind().name()),
                ..unnamed(object, "", 0)
            });
        };
        self.apply_as(object, key.clone());
        Ok(key)
    }

    /// [`Compiler::apply`] of a named object, its key given.
    fn apply_as(&mut self, object: Object<'_>, key: Key) {
        let meta = object.meta();
        let kind = object.kind();
        self.versions
            .insert(kind, &key, meta.resource_version.clone());
        let mut problems = Problems::default();
        match object {
            Object::Namespace(o) => {
                let info = cluster::check_namespace(o, &mut problems);
                self.cluster.set_namespace(&key.1, Some(info));
                self.changes.namespaces.insert(key.1.clone());
            }
            Object::Pod(o) => {
                let info = cluster::check_pod(o, &mut problems);
                self.cluster.set_pod(&pod_key(&key), info);
                self.pod_changed(&key);
            }
            Object::NetworkPolicy(o) => {
                let policy = policy::check_one(o, &mut problems);
                self.set_policy(&key, policy);
            }
            Object::ClusterNetworkPolicy(o) => {
                let policy =
                    cluster_policy::check(&o.metadata, &o.spec, Api::Upstream, &mut problems);
                self.set_policy(&key, policy);
            }
            Object::Node(o) => {
                let info = cluster::check_node(o, &mut problems);
                let key = node_key(&key.1);
                self.cluster.set_pod(&pod_key(&key), info);
                self.pod_changed(&key);
            }
            Object::AwsClusterNetworkPolicy(o) => {
                let policy = cluster_policy::check(&o.metadata, &o.spec, Api::Aws, &mut problems);
                self.set_policy(&key, policy);
            }
            Object::Service(o) => {
                services::check_service(o, &mut problems);
                self.services.insert(key.clone(), o.clone());
                self.stale_services.insert(key.clone());
            }
            Object::EndpointSlice(o) => {
                self.unlink_slice(&key);
                if let Some(service) = services::check_slice(o, &mut problems) {
                    let service = (key.0.clone(), service);
                    self.stale_services.insert(service.clone());
                    self.service_slices
                        .entry(service.clone())
                        .or_default()
                        .insert(key.clone());
                    self.slice_service.insert(key.clone(), service);
                }
                self.slices.insert(key.clone(), o.clone());
            }
        }
        if problems.is_empty() {
            if !self.problems.is_empty() {
                self.problems.remove(&(kind, key.clone()));
            }
        } else {
            let mut errors = Vec::new();
            problems.report(&self.label(kind, meta), &mut errors);
            self.problems.insert((kind, key), errors);
        }
    }

    /// A policy of any kind changed: `policy` is what it is now (`None`: gone or invalid).
    fn set_policy(&mut self, key: &Key, policy: Option<Policy>) {
        self.policy_changes += 1;
        self.policies_changed.insert(key.clone());
        match policy {
            Some(policy) => {
                self.policies.insert(key.clone(), policy);
            }
            None => {
                self.policies.remove(key);
            }
        }
    }

    /// Removes the object of `kind` named `name` in `namespace` (ignored for a Namespace and a
    /// cluster-scoped policy); nothing when it is not known.
    pub fn delete(&mut self, kind: ObjectKind, namespace: &str, name: &str) {
        let namespace = kind.scope().unwrap_or(namespace);
        let key = (namespace.to_owned(), name.to_owned());
        match kind {
            ObjectKind::Namespace => {
                self.cluster.set_namespace(name, None);
                self.changes.namespaces.insert(name.to_owned());
            }
            ObjectKind::Pod => {
                self.cluster.set_pod(&pod_key(&key), None);
                self.pod_changed(&key);
            }
            ObjectKind::Node => {
                let key = node_key(&key.1);
                self.cluster.set_pod(&pod_key(&key), None);
                self.pod_changed(&key);
            }
            ObjectKind::NetworkPolicy
            | ObjectKind::ClusterNetworkPolicy
            | ObjectKind::AwsClusterNetworkPolicy => {
                self.policies.remove(&key);
                self.policy_changes += 1;
                self.policies_changed.insert(key.clone());
            }
            ObjectKind::Service => {
                self.services.remove(&key);
                self.stale_services.insert(key.clone());
            }
            ObjectKind::EndpointSlice => {
                self.unlink_slice(&key);
                self.slices.remove(&key);
            }
        }
        self.problems.remove(&(kind, key.clone()));
        self.versions.remove(kind, &key);
    }

    /// Applies what `delta` says changed: each object given is applied, each gone one removed.
    /// Every object a delta holds is named by its key, so none is refused.
    pub fn apply_delta(&mut self, delta: &Delta) {
        self.apply_updates(&delta.namespaces);
        self.apply_updates(&delta.pods);
        self.apply_updates(&delta.policies);
        self.apply_updates(&delta.services);
        self.apply_updates(&delta.endpoint_slices);
        self.apply_updates(&delta.cluster_policies);
        self.apply_updates(&delta.aws_cluster_policies);
        self.apply_updates(&delta.nodes);
    }

    /// Applies one kind's `updates`.
    fn apply_updates<K: ClusterObject>(&mut self, updates: &Updates<K>) {
        for ((namespace, name), update) in updates {
            match update {
                Some(update) => self.apply_as(update.object(), (namespace.clone(), name.clone())),
                None => self.delete(K::OBJECT_KIND, namespace, name),
            }
        }
    }

    /// Sets the node's own addresses (see `Snapshot::node_addresses`).
    pub fn set_node_addresses(&mut self, addresses: Vec<IpAddr>) {
        self.node_addresses = addresses;
    }

    /// Compiles what is kept for the endpoints `placement` names, keeping the ids of `prior`
    /// for what still exists, within `capacity` (see [`super::compile_with`]).
    #[tracing::instrument(
        level = "debug",
        skip_all,
        fields(
            policies = self.policies.len(),
            services = self.services.len(),
            endpoints = tracing::field::Empty,
            rules = tracing::field::Empty,
            errors = tracing::field::Empty,
        )
    )]
    pub fn compile(
        &mut self,
        placement: &Placement<'_>,
        prior: &Ids,
        capacity: &Capacity,
    ) -> Compiled {
        self.resolve_services();
        let mut errors = self.load_errors.clone();
        errors.extend(self.problems.values().flatten().cloned());
        let policies: Vec<&Policy> = self.policies.values().collect();
        if !self.services_changed.is_empty() {
            self.services_listed = None;
        }
        let services = Arc::clone(
            self.services_listed
                .get_or_insert_with(|| Arc::new(self.resolved.values().cloned().collect())),
        );
        let changes = std::mem::take(&mut self.changes);
        let touched = self.peers.update(
            &self.cluster,
            (&self.policies, &self.policies_changed),
            (&services, &self.services_changed),
            prior,
            &changes,
        );
        let rule_ids = RuleIds::assign(
            &self.policies,
            (self.policy_changes, &self.policies_changed),
            prior,
            self.rule_ids.as_ref(),
        );
        let compiled = super::run(
            &rule_ids,
            &self.cluster,
            &self.peers,
            touched.as_ref(),
            (
                self.policy_changes,
                &std::mem::take(&mut self.policies_changed),
                &mut self.set_cache,
            ),
            &policies,
            (services, Some(&self.services_changed)),
            &self.node_addresses,
            placement,
            prior,
            capacity,
            errors,
        );
        self.rule_ids = Some(rule_ids);
        self.services_changed.clear();
        let span = tracing::Span::current();
        span.record("endpoints", compiled.endpoint_pods.len());
        span.record("rules", compiled.rules.len());
        span.record("errors", compiled.errors.len());
        compiled
    }

    /// Resolves again the backends of the Services that may have changed since the last
    /// pass.
    fn resolve_services(&mut self) {
        for key in std::mem::take(&mut self.stale_services) {
            self.by_address.remove(&key);
            let Some(service) = self.services.get(&key) else {
                if self.resolved.remove(&key).is_some() {
                    self.services_changed.insert(key);
                }
                continue;
            };
            let slices: Vec<&EndpointSlice> = self
                .service_slices
                .get(&key)
                .into_iter()
                .flatten()
                .filter_map(|slice| self.slices.get(slice))
                .collect();
            if slices.iter().any(|s| services::names_pods_by_address(s)) {
                self.by_address.insert(key.clone());
            }
            let info = services::resolve_one(service, &slices, &self.cluster);
            if self.resolved.get(&key).map(|kept| &**kept) == info.as_ref() {
                continue;
            }
            self.services_changed.insert(key.clone());
            match info {
                Some(info) => self.resolved.insert(key, Arc::new(info)),
                None => self.resolved.remove(&key),
            };
        }
    }

    /// Pod `key` changed: its addresses may have other identities, and Services that read
    /// pods may have other backends: those of its namespace without slices (their selector
    /// picks pods) and those whose slices find pods by address. A slice that names its pod is
    /// read without the pod.
    fn pod_changed(&mut self, key: &Key) {
        self.changes.pods.insert(pod_key(key));
        let namespace = key.0.as_str();
        let start = (namespace.to_owned(), String::new());
        let here = self
            .services
            .range(start..)
            .take_while(|((ns, _), _)| ns == namespace)
            .map(|(key, _)| key)
            .filter(|key| !self.service_slices.contains_key(*key))
            .cloned();
        self.stale_services.extend(here);
        self.stale_services.extend(self.by_address.iter().cloned());
    }

    /// Forgets which Service slice `key` belonged to (that Service is resolved again).
    fn unlink_slice(&mut self, key: &Key) {
        let Some(service) = self.slice_service.remove(key) else {
            return;
        };
        if let Some(slices) = self.service_slices.get_mut(&service) {
            slices.remove(key);
            if slices.is_empty() {
                self.service_slices.remove(&service);
            }
        }
        self.stale_services.insert(service);
    }

    /// `Kind namespace/name` (`Namespace name`, `ClusterNetworkPolicy name`).
    fn label(&self, kind: ObjectKind, meta: &ObjectMeta) -> String {
        let name = meta.name.as_deref().unwrap_or_default();
        match kind {
            ObjectKind::Namespace | ObjectKind::Node => format!("{} {name}", kind.name()),
            ObjectKind::ClusterNetworkPolicy | ObjectKind::AwsClusterNetworkPolicy => {
                cluster_policy::label(kind, name)
            }
            _ => format!(
                "{} {}/{name}",
                kind.name(),
                meta.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE)
            ),
        }
    }
}

/// An object's key; `None` when it has no name.
fn key_of(object: Object<'_>) -> Option<Key> {
    key_ref(object).map(|(namespace, name)| (namespace.to_owned(), name.to_owned()))
}

/// [`key_of`], borrowed.
fn key_ref<'o>(object: Object<'o>) -> Option<(&'o str, &'o str)> {
    let meta = object.meta();
    let name = meta.name.as_deref().filter(|n| !n.is_empty())?;
    let namespace = match object.kind().scope() {
        Some(scope) => scope,
        None => meta.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE),
    };
    Some((namespace, name))
}

/// The resourceVersion of every kept object, by kind, namespace and name (looked up without
/// building a key: a load asks for every object of the cluster), with the last load that
/// listed it.
#[derive(Debug, Clone, Default)]
struct Versions {
    by_kind:
        foldhash::HashMap<ObjectKind, foldhash::HashMap<String, foldhash::HashMap<String, Seen>>>,
    /// Loads so far.
    loads: u64,
}

/// A kept object's resourceVersion, and the last load that listed it.
#[derive(Debug, Clone)]
struct Seen {
    version: Option<String>,
    load: u64,
}

impl Versions {
    fn get_mut(&mut self, kind: ObjectKind, namespace: &str, name: &str) -> Option<&mut Seen> {
        self.by_kind
            .get_mut(&kind)?
            .get_mut(namespace)?
            .get_mut(name)
    }

    /// Keeps `version` of object `key` of `kind`, listed by the current load.
    fn insert(&mut self, kind: ObjectKind, (namespace, name): &Key, version: Option<String>) {
        let seen = Seen {
            version,
            load: self.loads,
        };
        self.by_kind
            .entry(kind)
            .or_default()
            .entry(namespace.clone())
            .or_default()
            .insert(name.clone(), seen);
    }

    fn remove(&mut self, kind: ObjectKind, (namespace, name): &Key) {
        let Some(namespaces) = self.by_kind.get_mut(&kind) else {
            return;
        };
        if let Some(names) = namespaces.get_mut(namespace) {
            names.remove(name);
            if names.is_empty() {
                namespaces.remove(namespace);
            }
        }
    }

    /// The objects load `load` did not list, in order.
    fn not_seen_in(&self, load: u64) -> Vec<(ObjectKind, Key)> {
        let mut gone = Vec::new();
        for (kind, namespaces) in &self.by_kind {
            for (namespace, names) in namespaces {
                for (name, seen) in names {
                    if seen.load != load {
                        gone.push((*kind, (namespace.clone(), name.clone())));
                    }
                }
            }
        }
        gone.sort_unstable();
        gone
    }
}

/// The key a node is kept under among the pods (see `cluster::NODE_SCOPE`).
fn node_key(name: &str) -> Key {
    (cluster::NODE_SCOPE.to_owned(), name.to_owned())
}

/// A pod's key in `Cluster`: `namespace/name`.
fn pod_key((namespace, name): &Key) -> String {
    format!("{namespace}/{name}")
}

/// The error of an unnamed object, entry `index` of a snapshot's `list`.
fn unnamed(object: Object<'_>, list: &str, index: usize) -> InputError {
    let kind = object.kind().name();
    InputError {
        object: match object.kind() {
            ObjectKind::Namespace | ObjectKind::Node => {
                format!("{kind} (unnamed, snapshot {list}[{index}])")
            }
            ObjectKind::ClusterNetworkPolicy | ObjectKind::AwsClusterNetworkPolicy => {
                cluster_policy::label(
                    object.kind(),
                    &format!("(unnamed, snapshot {list}[{index}])"),
                )
            }
            _ => object_label(kind, object.meta(), list, index),
        },
        field: "metadata.name".to_owned(),
        message: format!("missing: a {kind} needs a name"),
    }
}
