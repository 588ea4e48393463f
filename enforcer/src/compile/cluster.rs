//! The cluster as the compiler sees it: namespaces with their labels and enforcement mode,
//! and pods with their labels, addresses, named ports and readiness, each checked once when
//! it arrives ([`check_namespace`], [`check_pod`]) and kept by key in a [`Cluster`] that
//! changes one object at a time.
//!
//! Namespaces that pods live in but that are not listed exist implicitly, and every namespace
//! carries `kubernetes.io/metadata.name: <name>`, as the API server ensures. A pod with an
//! invalid address or container port is left out (the API server would have refused it).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::Problems;
use super::cidr::parse_ip;
use super::ports::{NamedPort, protocol_number, valid_port_name};
use crate::manifest::DEFAULT_NAMESPACE;
use crate::snapshot::{InputError, pod_ip_fields};

/// Label the API server puts on every namespace.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// Annotation (on a Namespace or a NetworkPolicy) that selects audit mode: denials are
/// reported and pass.
pub const ENFORCEMENT_ANNOTATION: &str = "tollgate.io/enforcement";

/// Label that marks a pod quarantined by `tollgate quarantine`; its value names the pod.
pub const QUARANTINE_LABEL: &str = "tollgate.io/quarantine";

/// Name prefix of the quarantine ClusterNetworkPolicies `tollgate quarantine` creates.
pub const QUARANTINE_POLICY_PREFIX: &str = "tollgate-quarantine-";

/// What stands for a namespace in the key of a node (kept with the pods: a
/// ClusterNetworkPolicy's `nodes` peer selects its addresses). No namespace name has a colon.
pub(crate) const NODE_SCOPE: &str = ":nodes";

/// Label (key, value) on every object tollgate creates.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "tollgate");

/// Whether `meta` carries [`MANAGED_BY`]: the object is one tollgate created.
pub(crate) fn managed_by_tollgate(meta: &ObjectMeta) -> bool {
    meta.labels
        .as_ref()
        .and_then(|labels| labels.get(MANAGED_BY.0))
        .is_some_and(|value| value == MANAGED_BY.1)
}

/// One namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NamespaceInfo {
    /// Labels, `kubernetes.io/metadata.name` included.
    pub(crate) labels: BTreeMap<String, String>,
    /// Annotated for audit mode.
    pub(crate) audit: bool,
}

/// A label map, shared.
pub(crate) type Labels = Arc<BTreeMap<String, String>>;

/// A pod's named container ports, shared.
pub(crate) type NamedPorts = Arc<[NamedPort]>;

/// One valid pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PodInfo {
    /// Namespace.
    pub(crate) namespace: String,
    /// Name.
    pub(crate) name: String,
    /// Labels, shared by every kept pod with the same (the pods of a workload).
    pub(crate) labels: Labels,
    /// Addresses from `status.podIPs` (or `status.podIP`), without duplicates.
    pub(crate) ips: Vec<IpAddr>,
    /// Container ports that have a name, shared like the labels.
    pub(crate) named_ports: NamedPorts,
    /// `spec.hostNetwork`: the pod uses the node's addresses and has no veth.
    pub(crate) host_network: bool,
    /// Phase is Succeeded or Failed: the pod's address may already belong to another pod.
    pub(crate) finished: bool,
    /// Its `Ready` condition is not `False`: a Service's backend when its selector matches.
    pub(crate) ready: bool,
    /// A node, not a pod (in [`NODE_SCOPE`]): its addresses are peers of `nodes` selectors
    /// only; it is never an endpoint nor a Service's backend pod.
    pub(crate) node: bool,
}

impl PodInfo {
    /// `namespace/name`.
    pub(crate) fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Whether the pod takes part in pod networking: it has an address of its own and is
    /// not finished. Only such pods are endpoints and selector peers.
    pub(crate) fn is_networked(&self) -> bool {
        !self.ips.is_empty() && !self.host_network && !self.finished && !self.node
    }

    /// Whether its addresses get a peer identity of its own: a networked pod's, or a node's.
    pub(crate) fn has_address_identity(&self) -> bool {
        self.is_networked() || (self.node && !self.ips.is_empty())
    }
}

/// Namespaces and pods, checked, kept up to date one object at a time.
#[derive(Debug, Clone, Default)]
pub(crate) struct Cluster {
    /// Every namespace, by name: the listed ones, and those that exist only through their
    /// pods.
    pub(crate) namespaces: BTreeMap<String, NamespaceInfo>,
    /// Valid pods, by `namespace/name`.
    pub(crate) pods: BTreeMap<String, PodInfo>,
    /// The names of the listed namespaces (the others exist only through their pods).
    listed: BTreeSet<String>,
    /// Pods per namespace, to know when an implicit namespace goes.
    pod_counts: BTreeMap<String, usize>,
    /// The networked pods of each address, their keys in order (two only while an address
    /// moves: a list, which costs a pod far less than a set).
    by_ip: BTreeMap<IpAddr, Vec<String>>,
    /// The distinct label maps of the kept pods, so that pods with the same labels share one
    /// (and a map's address names it).
    labels: HashSet<Labels>,
    /// The distinct named-port lists of the kept pods, shared the same way.
    named_ports: HashSet<NamedPorts>,
}

/// Whether an object's [`ENFORCEMENT_ANNOTATION`] asks for audit mode. An unknown value is a
/// problem and means enforce (fail closed).
pub(crate) fn audit_annotation(meta: &ObjectMeta, problems: &mut Problems) -> bool {
    let value = meta
        .annotations
        .as_ref()
        .and_then(|a| a.get(ENFORCEMENT_ANNOTATION));
    match value.map(String::as_str) {
        None | Some("enforce") => false,
        Some("audit") => true,
        Some(other) => {
            problems.push(
                format!("metadata.annotations[{ENFORCEMENT_ANNOTATION:?}]"),
                format!("unknown value {other:?} (audit or enforce); enforcing"),
            );
            false
        }
    }
}

/// `Kind namespace/name` of a namespaced object, or a stand-in naming its position when it
/// has no name.
pub(crate) fn object_label(kind: &str, meta: &ObjectMeta, list: &str, index: usize) -> String {
    let namespace = meta.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE);
    match meta.name.as_deref() {
        Some(name) if !name.is_empty() => format!("{kind} {namespace}/{name}"),
        _ => format!("{kind} {namespace}/(unnamed, snapshot {list}[{index}])"),
    }
}

impl Cluster {
    /// Sets namespace `name` to `info` (`None`: no longer listed). A namespace that is not
    /// listed and still has pods stays, with only its name label.
    pub(crate) fn set_namespace(&mut self, name: &str, info: Option<NamespaceInfo>) {
        match info {
            Some(info) => {
                self.listed.insert(name.to_owned());
                self.namespaces.insert(name.to_owned(), info);
            }
            None => {
                self.listed.remove(name);
                if self.pod_counts.contains_key(name) {
                    self.namespaces
                        .insert(name.to_owned(), implicit_namespace(name));
                } else {
                    self.namespaces.remove(name);
                }
            }
        }
    }

    /// Sets the pod `key` to `info` (`None`: gone or invalid).
    pub(crate) fn set_pod(&mut self, key: &str, info: Option<PodInfo>) {
        if let Some(old) = self.pods.remove(key) {
            self.index(&old, false);
            // Only the pool and `old` hold them: no other pod has the same.
            if Arc::strong_count(&old.labels) == 2 {
                self.labels.remove(&old.labels);
            }
            if Arc::strong_count(&old.named_ports) == 2 {
                self.named_ports.remove(&old.named_ports);
            }
            let count = self.pod_counts.entry(old.namespace.clone()).or_default();
            *count -= 1;
            if *count == 0 {
                self.pod_counts.remove(&old.namespace);
                if !self.listed.contains(&old.namespace) {
                    self.namespaces.remove(&old.namespace);
                }
            }
        }
        let Some(mut info) = info else { return };
        info.labels = share(&mut self.labels, info.labels);
        info.named_ports = share(&mut self.named_ports, info.named_ports);
        *self.pod_counts.entry(info.namespace.clone()).or_default() += 1;
        if info.namespace != NODE_SCOPE && !self.namespaces.contains_key(&info.namespace) {
            self.namespaces
                .insert(info.namespace.clone(), implicit_namespace(&info.namespace));
        }
        self.index(&info, true);
        self.pods.insert(key.to_owned(), info);
    }

    fn index(&mut self, pod: &PodInfo, add: bool) {
        if !pod.has_address_identity() {
            return;
        }
        let key = pod.key();
        for ip in &pod.ips {
            if add {
                let keys = self.by_ip.entry(*ip).or_default();
                if let Err(at) = keys.binary_search(&key) {
                    keys.insert(at, key.clone());
                }
            } else if let Some(keys) = self.by_ip.get_mut(ip) {
                keys.retain(|k| *k != key);
                if keys.is_empty() {
                    self.by_ip.remove(ip);
                }
            }
        }
    }

    /// The pods of `namespace`, by name.
    pub(crate) fn pods_of<'a>(&'a self, namespace: &str) -> impl Iterator<Item = &'a PodInfo> {
        let prefix = format!("{namespace}/");
        self.pods
            .range(prefix.clone()..)
            .take_while(move |(key, _)| key.starts_with(&prefix))
            .map(|(_, pod)| pod)
    }

    /// The networked pod that has address `ip` (the last by key when two claim it).
    pub(crate) fn pod_at(&self, ip: IpAddr) -> Option<&PodInfo> {
        let key = self.by_ip.get(&ip)?.last()?;
        self.pods.get(key)
    }
}

/// The value of `pool` equal to `value`, which joins the pool when it has none.
fn share<T: ?Sized + Eq + std::hash::Hash>(pool: &mut HashSet<Arc<T>>, value: Arc<T>) -> Arc<T> {
    match pool.get(&value) {
        Some(shared) => shared.clone(),
        None => {
            pool.insert(value.clone());
            value
        }
    }
}

/// A namespace known only through its pods: the name label the API server would give it.
fn implicit_namespace(name: &str) -> NamespaceInfo {
    NamespaceInfo {
        labels: BTreeMap::from([(NAMESPACE_NAME_LABEL.to_owned(), name.to_owned())]),
        audit: false,
    }
}

/// Checks a named namespace: its name and what it says, with its problems.
pub(crate) fn check_namespace(namespace: &Namespace, problems: &mut Problems) -> NamespaceInfo {
    let meta = &namespace.metadata;
    let name = meta.name.clone().unwrap_or_default();
    let audit = audit_annotation(meta, problems);
    let mut labels = meta.labels.clone().unwrap_or_default();
    labels.insert(NAMESPACE_NAME_LABEL.to_owned(), name);
    NamespaceInfo { labels, audit }
}

pub(crate) fn duplicate(label: &str) -> InputError {
    InputError {
        object: label.to_owned(),
        field: "metadata.name".to_owned(),
        message: "defined more than once; the last definition is used".to_owned(),
    }
}

/// `status.podIP` next to `status.podIPs`: the API server keeps it equal to `podIPs[0]`, so a
/// pod that says otherwise was not written by one. Its addresses cannot be trusted either way
/// (which one would the pod's packets carry?), so the pod is left out, as for an invalid
/// address: not an endpoint (its veth denies as `unknown-endpoint`), no selector's peer.
fn check_pod_ip(pod: &Pod, problems: &mut Problems) {
    let Some(status) = pod.status.as_ref() else {
        return;
    };
    let Some(first) = status.pod_ips.as_ref().and_then(|ips| ips.first()) else {
        return;
    };
    let Some(single) = status.pod_ip.as_deref().filter(|ip| !ip.is_empty()) else {
        return;
    };
    match (parse_ip(single), parse_ip(&first.ip)) {
        (Err(message), _) => problems.push("status.podIP", message),
        (Ok(single), Ok(listed)) if single != listed => problems.push(
            "status.podIP",
            format!(
                "{single} is not status.podIPs[0] ({listed}); the API server keeps them equal, \
                 so the pod is left out"
            ),
        ),
        // Equal, or podIPs[0] is invalid and reported on its own.
        _ => {}
    }
}

/// Checks one pod; `None` (with problems) when it must be left out.
pub(crate) fn check_pod(pod: &Pod, problems: &mut Problems) -> Option<PodInfo> {
    let meta = &pod.metadata;
    let Some(name) = meta.name.clone().filter(|n| !n.is_empty()) else {
        problems.push("metadata.name", "missing: a Pod needs a name");
        return None;
    };
    let texts = pod_ip_fields(pod);
    let before = problems.len();
    let mut ips = Vec::new();
    for (field, text) in texts {
        match parse_ip(text) {
            Ok(ip) if !ips.contains(&ip) => ips.push(ip),
            Ok(_) => {}
            Err(message) => problems.push(field, message),
        }
    }
    check_pod_ip(pod, problems);
    let spec = pod.spec.as_ref();
    let mut named_ports = Vec::new();
    for (c, container) in spec
        .map(|s| s.containers.as_slice())
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        for (p, port) in container.ports.iter().flatten().enumerate() {
            // Named only for a problem: most pods have none.
            let at = || format!("spec.containers[{c}].ports[{p}]");
            let protocol = protocol_number(port.protocol.as_deref())
                .map_err(|message| problems.push(format!("{}.protocol", at()), message))
                .ok();
            let number = u16::try_from(port.container_port)
                .ok()
                .filter(|n| *n != 0)
                .or_else(|| {
                    problems.push(
                        format!("{}.containerPort", at()),
                        format!("{} is out of range 1-65535", port.container_port),
                    );
                    None
                });
            let Some(port_name) = &port.name else {
                continue;
            };
            if !valid_port_name(port_name) {
                problems.push(
                    format!("{}.name", at()),
                    format!("{port_name:?} is not a valid port name"),
                );
                continue;
            }
            if let (Some(protocol), Some(port)) = (protocol, number) {
                named_ports.push(NamedPort {
                    name: port_name.clone(),
                    protocol,
                    port,
                });
            }
        }
    }
    if problems.len() != before {
        return None;
    }
    Some(PodInfo {
        namespace: meta
            .namespace
            .clone()
            .unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned()),
        name,
        labels: Arc::new(meta.labels.clone().unwrap_or_default()),
        ips,
        named_ports: named_ports.into(),
        host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
        finished: matches!(
            pod.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        ),
        ready: !pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .into_iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status == "False"),
        node: false,
    })
}

/// Checks a node: what a `nodes` peer selects of it (its labels, and the addresses of its
/// `status.addresses`, InternalIP and ExternalIP), as the pod it is kept as in
/// [`NODE_SCOPE`]. An address that does not parse is reported and left out.
pub(crate) fn check_node(node: &Node, problems: &mut Problems) -> Option<PodInfo> {
    let meta = &node.metadata;
    let Some(name) = meta.name.clone().filter(|n| !n.is_empty()) else {
        problems.push("metadata.name", "missing: a Node needs a name");
        return None;
    };
    let mut ips: Vec<IpAddr> = Vec::new();
    let addresses = node.status.as_ref().and_then(|s| s.addresses.as_ref());
    for (index, address) in addresses.into_iter().flatten().enumerate() {
        if !matches!(address.type_.as_str(), "InternalIP" | "ExternalIP") {
            continue;
        }
        match address.address.parse::<IpAddr>() {
            Ok(ip) if !ips.contains(&ip) => ips.push(ip),
            Ok(_) => {}
            Err(_) => problems.push(
                format!("status.addresses[{index}].address"),
                format!("{:?} is not an IP address", address.address),
            ),
        }
    }
    Some(PodInfo {
        namespace: NODE_SCOPE.to_owned(),
        name,
        labels: Arc::new(meta.labels.clone().unwrap_or_default()),
        ips,
        named_ports: Arc::from([]),
        host_network: false,
        finished: false,
        ready: true,
        node: true,
    })
}
