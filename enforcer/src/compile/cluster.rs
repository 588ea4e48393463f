//! The cluster as the compiler sees it: namespaces with their labels and enforcement mode,
//! and pods with their labels, addresses and named ports, all checked once.
//!
//! Namespaces that pods live in but that the snapshot does not list exist implicitly, and
//! every namespace carries `kubernetes.io/metadata.name: <name>`, as the API server ensures.
//! A pod with an invalid address or container port is left out (the API server would have
//! refused it); so is a duplicate's earlier definition.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::Problems;
use super::cidr::parse_ip;
use super::ports::{NamedPort, protocol_number, valid_port_name};
use crate::manifest::DEFAULT_NAMESPACE;
use crate::snapshot::{InputError, Snapshot, pod_ip_fields};

/// Label the API server puts on every namespace.
pub(crate) const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// Annotation (on a Namespace or a NetworkPolicy) that selects audit mode: denials are
/// reported and pass.
pub const ENFORCEMENT_ANNOTATION: &str = "tollgate.io/enforcement";

/// Label that marks a pod quarantined by `tollgate quarantine`; its value names the pod.
pub const QUARANTINE_LABEL: &str = "tollgate.io/quarantine";

/// Name prefix of the quarantine NetworkPolicies `tollgate quarantine` creates.
pub const QUARANTINE_POLICY_PREFIX: &str = "tollgate-quarantine-";

/// Label (key, value) on every object tollgate creates.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "tollgate");

/// One namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NamespaceInfo {
    /// Labels, `kubernetes.io/metadata.name` included.
    pub(crate) labels: BTreeMap<String, String>,
    /// Annotated for audit mode.
    pub(crate) audit: bool,
}

/// One valid pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PodInfo {
    /// Namespace.
    pub(crate) namespace: String,
    /// Name.
    pub(crate) name: String,
    /// Labels.
    pub(crate) labels: BTreeMap<String, String>,
    /// Addresses from `status.podIPs` (or `status.podIP`), without duplicates.
    pub(crate) ips: Vec<IpAddr>,
    /// Container ports that have a name.
    pub(crate) named_ports: Vec<NamedPort>,
    /// `spec.hostNetwork`: the pod uses the node's addresses and has no veth.
    pub(crate) host_network: bool,
    /// Phase is Succeeded or Failed: the pod's address may already belong to another pod.
    pub(crate) finished: bool,
}

impl PodInfo {
    /// `namespace/name`.
    pub(crate) fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Whether the pod takes part in pod networking: it has an address of its own and is
    /// not finished. Only such pods are endpoints and selector peers.
    pub(crate) fn is_networked(&self) -> bool {
        !self.ips.is_empty() && !self.host_network && !self.finished
    }
}

/// Namespaces and pods, checked.
#[derive(Debug, Clone, Default)]
pub(crate) struct Cluster {
    /// Every namespace, by name.
    pub(crate) namespaces: BTreeMap<String, NamespaceInfo>,
    /// Valid pods, ordered by namespace and name.
    pub(crate) pods: Vec<PodInfo>,
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
    /// Checks the snapshot's namespaces and pods; problems go to `errors`.
    pub(crate) fn build(snapshot: &Snapshot, errors: &mut Vec<InputError>) -> Cluster {
        let mut cluster = Cluster::default();
        for (index, namespace) in snapshot.namespaces.iter().enumerate() {
            cluster.namespace(namespace, index, errors);
        }
        let mut pods = BTreeMap::new();
        for (index, pod) in snapshot.pods.iter().enumerate() {
            let label = object_label("Pod", &pod.metadata, "pods", index);
            let mut problems = Problems::default();
            let checked = check_pod(pod, &mut problems);
            problems.report(&label, errors);
            if let Some(info) = checked
                && pods.insert(info.key(), info).is_some()
            {
                errors.push(duplicate(&label));
            }
        }
        for pod in pods.values() {
            cluster
                .namespaces
                .entry(pod.namespace.clone())
                .or_insert_with(|| NamespaceInfo {
                    labels: BTreeMap::from([(
                        NAMESPACE_NAME_LABEL.to_owned(),
                        pod.namespace.clone(),
                    )]),
                    audit: false,
                });
        }
        cluster.pods = pods.into_values().collect();
        cluster
    }

    fn namespace(&mut self, namespace: &Namespace, index: usize, errors: &mut Vec<InputError>) {
        let meta = &namespace.metadata;
        let Some(name) = meta.name.as_deref().filter(|n| !n.is_empty()) else {
            errors.push(InputError {
                object: format!("Namespace (unnamed, snapshot namespaces[{index}])"),
                field: "metadata.name".to_owned(),
                message: "missing: a Namespace needs a name".to_owned(),
            });
            return;
        };
        let label = format!("Namespace {name}");
        let mut problems = Problems::default();
        let audit = audit_annotation(meta, &mut problems);
        problems.report(&label, errors);
        let mut labels = meta.labels.clone().unwrap_or_default();
        labels.insert(NAMESPACE_NAME_LABEL.to_owned(), name.to_owned());
        let info = NamespaceInfo { labels, audit };
        if self.namespaces.insert(name.to_owned(), info).is_some() {
            errors.push(duplicate(&label));
        }
    }
}

fn duplicate(label: &str) -> InputError {
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
fn check_pod(pod: &Pod, problems: &mut Problems) -> Option<PodInfo> {
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
            let at = format!("spec.containers[{c}].ports[{p}]");
            let protocol = protocol_number(port.protocol.as_deref())
                .map_err(|message| problems.push(format!("{at}.protocol"), message))
                .ok();
            let number = u16::try_from(port.container_port)
                .ok()
                .filter(|n| *n != 0)
                .or_else(|| {
                    problems.push(
                        format!("{at}.containerPort"),
                        format!("{} is out of range 1-65535", port.container_port),
                    );
                    None
                });
            let Some(port_name) = &port.name else {
                continue;
            };
            if !valid_port_name(port_name) {
                problems.push(
                    format!("{at}.name"),
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
        labels: meta.labels.clone().unwrap_or_default(),
        ips,
        named_ports,
        host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
        finished: matches!(
            pod.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        ),
    })
}
