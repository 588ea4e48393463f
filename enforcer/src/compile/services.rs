//! Services: what a connection to a ClusterIP reaches, as kube-proxy programs it.
//!
//! Data flows in two steps:
//! 1. Checking, as each object arrives ([`check_service`], [`check_slice`]): each v1 Service
//!    gives its ClusterIPs (none when headless, `None`) and its ports (protocol, `port`,
//!    `targetPort` as a number or a container port name). An invalid Service is left out,
//!    with each problem naming the field.
//! 2. Backends ([`resolve_one`], again only when the Service, its slices or the pods it may
//!    name changed): for each Service port, the ready endpoints of the EndpointSlices
//!    labelled `kubernetes.io/service-name: <service>` in its namespace, matched to the port
//!    by name and protocol, each with the port the slice gives (the `targetPort` already
//!    resolved for that backend, as the EndpointSlice controller does). A Service no slice
//!    names falls back to the ready pods its selector matches in its namespace, with a named
//!    `targetPort` resolved against each pod's own container ports (a pod without that name is
//!    no backend of the port). A Service without a selector and without slices has no
//!    backends.
//!
//! A ready endpoint is one whose `conditions.ready` is not false (absent means ready, as the
//! API says); a ready pod is a networked one whose `Ready` condition is not `False`.
//!
//! The compiler then decides, per egress policy set, each `ClusterIP:port` from the backends
//! (see [`super::vips`]), and names the Service in flow records through [`ServiceInfo`].

use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::Problems;
use super::cidr::parse_ip;
use super::cluster::Cluster;
use super::ports::{protocol_number, valid_port_name};
use super::selector::Selector;

/// Label of an EndpointSlice that names its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Every valid Service with its backends, in (namespace, name) order; shared, so that a
/// pass hands on the Services that stayed without copying them.
pub type Services = Arc<Vec<Arc<ServiceInfo>>>;

/// One Service with its backends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceInfo {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// `spec.clusterIPs` (or `spec.clusterIP`); empty for a headless Service.
    pub cluster_ips: Vec<IpAddr>,
    /// The ports, in the Service's order.
    pub ports: Vec<ServicePort>,
}

/// Service `namespace`/`name` of `services`, which are in (namespace, name) order as
/// [`Services`] are.
pub(crate) fn find<'s>(
    services: &'s [Arc<ServiceInfo>],
    namespace: &str,
    name: &str,
) -> Option<&'s ServiceInfo> {
    let index = services
        .binary_search_by(|s| (s.namespace.as_str(), s.name.as_str()).cmp(&(namespace, name)))
        .ok()?;
    Some(&services[index])
}

impl ServiceInfo {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Whether the Service has no virtual address (`clusterIP: None`): DNS names its pods.
    pub fn is_headless(&self) -> bool {
        self.cluster_ips.is_empty()
    }
}

/// One port of a Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    /// `name` (required by the API when a Service has several ports).
    pub name: Option<String>,
    /// IANA protocol number (TCP, UDP or SCTP).
    pub protocol: u8,
    /// `port`: what clients connect to on the ClusterIP.
    pub port: u16,
    /// The ready backends, of every address family.
    pub backends: Vec<Backend>,
}

/// One ready backend of a Service port: where kube-proxy may send a connection.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Backend {
    /// The backend's address.
    pub addr: IpAddr,
    /// The port connections arrive on (the resolved `targetPort`).
    pub port: u16,
    /// The pod, as `namespace/name`, when known (the slice's `targetRef`, or the pod found by
    /// its address); shared, so that a compilation's copy of the Services is cheap.
    pub pod: Option<Arc<str>>,
}

/// A checked Service, before its backends are found.
struct Checked<'s> {
    namespace: String,
    name: String,
    cluster_ips: Vec<IpAddr>,
    selector: Option<Selector>,
    ports: Vec<CheckedPort<'s>>,
}

struct CheckedPort<'s> {
    name: Option<&'s str>,
    protocol: u8,
    port: u16,
    target: Target<'s>,
}

/// `targetPort`.
enum Target<'s> {
    Number(u16),
    Name(&'s str),
}

/// The problems of a Service (an invalid one is left out when resolved).
pub(crate) fn check_service(service: &Service, problems: &mut Problems) {
    check(service, problems);
}

/// The Service an EndpointSlice belongs to (its `kubernetes.io/service-name`), if any and if
/// its address type is one kube-proxy programs; problems go to `problems`. A slice without
/// the label belongs to no Service and is ignored, as kube-proxy ignores it.
pub(crate) fn check_slice(slice: &EndpointSlice, problems: &mut Problems) -> Option<String> {
    let service = slice
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(SERVICE_NAME_LABEL))?;
    if !matches!(slice.address_type.as_str(), "IPv4" | "IPv6") {
        problems.push(
            "addressType",
            format!(
                "{:?} is not IPv4 or IPv6; its endpoints are left out",
                slice.address_type
            ),
        );
        return None;
    }
    Some(service.clone())
}

/// Whether some endpoint of `slice` names no pod: its pod is then found by address, in any
/// namespace.
pub(crate) fn names_pods_by_address(slice: &EndpointSlice) -> bool {
    slice.endpoints.iter().flatten().any(|endpoint| {
        endpoint
            .target_ref
            .as_ref()
            .is_none_or(|r| r.kind.as_deref() != Some("Pod"))
    })
}

/// `service` with its backends, from `slices` (those that belong to it, checked by
/// [`check_slice`]) or, when it has none, `cluster`'s pods (see the module doc); `None` when
/// the Service is invalid (its problems are reported by [`check_service`]).
pub(crate) fn resolve_one(
    service: &Service,
    slices: &[&EndpointSlice],
    cluster: &Cluster,
) -> Option<ServiceInfo> {
    let service = check(service, &mut Problems::default())?;
    let ports = service
        .ports
        .iter()
        .map(|port| ServicePort {
            name: port.name.map(str::to_owned),
            protocol: port.protocol,
            port: port.port,
            backends: if slices.is_empty() {
                selector_backends(&service, port, cluster)
            } else {
                slice_backends(slices, port, cluster)
            },
        })
        .collect();
    Some(ServiceInfo {
        namespace: service.namespace,
        name: service.name,
        cluster_ips: service.cluster_ips,
        ports,
    })
}

fn check<'s>(service: &'s Service, problems: &mut Problems) -> Option<Checked<'s>> {
    let meta = &service.metadata;
    let Some(name) = meta.name.clone().filter(|n| !n.is_empty()) else {
        problems.push("metadata.name", "missing: a Service needs a name");
        return None;
    };
    let namespace = meta
        .namespace
        .clone()
        .unwrap_or_else(|| crate::manifest::DEFAULT_NAMESPACE.to_owned());
    let Some(spec) = service.spec.as_ref() else {
        problems.push("spec", "missing");
        return None;
    };
    let before = problems.len();
    let texts: Vec<(String, &str)> = match spec.cluster_ips.as_deref() {
        Some(ips) if !ips.is_empty() => ips
            .iter()
            .enumerate()
            .map(|(i, ip)| (format!("spec.clusterIPs[{i}]"), ip.as_str()))
            .collect(),
        _ => spec
            .cluster_ip
            .as_deref()
            .filter(|ip| !ip.is_empty())
            .map(|ip| ("spec.clusterIP".to_owned(), ip))
            .into_iter()
            .collect(),
    };
    let mut cluster_ips = Vec::new();
    for (field, text) in texts {
        if text == "None" {
            continue;
        }
        match parse_ip(text) {
            Ok(ip) if !cluster_ips.contains(&ip) => cluster_ips.push(ip),
            Ok(_) => {}
            Err(message) => problems.push(field, message),
        }
    }
    let selector = spec
        .selector
        .as_ref()
        .filter(|labels| !labels.is_empty())
        .and_then(|labels| {
            let selector = k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector {
                match_labels: Some(labels.clone()),
                match_expressions: None,
            };
            Selector::parse(&selector, "spec.selector", problems)
        });
    let mut ports = Vec::new();
    for (index, port) in spec.ports.iter().flatten().enumerate() {
        let at = format!("spec.ports[{index}]");
        let protocol = protocol_number(port.protocol.as_deref())
            .map_err(|message| problems.push(format!("{at}.protocol"), message))
            .ok();
        let number = checked_port(port.port, &format!("{at}.port"), problems);
        let target = match &port.target_port {
            None => number.map(Target::Number),
            Some(IntOrString::Int(n)) => {
                checked_port(*n, &format!("{at}.targetPort"), problems).map(Target::Number)
            }
            Some(IntOrString::String(text)) => match text.parse::<i32>() {
                Ok(n) => checked_port(n, &format!("{at}.targetPort"), problems).map(Target::Number),
                Err(_) if valid_port_name(text) => Some(Target::Name(text)),
                Err(_) => {
                    problems.push(
                        format!("{at}.targetPort"),
                        format!("{text:?} is neither a port number nor a valid port name"),
                    );
                    None
                }
            },
        };
        if let (Some(protocol), Some(port_number), Some(target)) = (protocol, number, target) {
            ports.push(CheckedPort {
                name: port.name.as_deref().filter(|n| !n.is_empty()),
                protocol,
                port: port_number,
                target,
            });
        }
    }
    if problems.len() != before {
        return None;
    }
    Some(Checked {
        namespace,
        name,
        cluster_ips,
        selector,
        ports,
    })
}

fn checked_port(value: i32, field: &str, problems: &mut Problems) -> Option<u16> {
    match u16::try_from(value) {
        Ok(port) if port != 0 => Some(port),
        _ => {
            problems.push(field, format!("{value} is out of range 1-65535"));
            None
        }
    }
}

/// Ready endpoints of `slices` for `port`: the slice port with the Service port's name and
/// protocol gives the number.
fn slice_backends(
    slices: &[&EndpointSlice],
    port: &CheckedPort<'_>,
    cluster: &Cluster,
) -> Vec<Backend> {
    let mut backends = Vec::new();
    for slice in slices {
        let number = slice.ports.iter().flatten().find_map(|p| {
            let same_name = p.name.as_deref().filter(|n| !n.is_empty()) == port.name;
            let same_protocol = protocol_number(p.protocol.as_deref()).ok() == Some(port.protocol);
            (same_name && same_protocol)
                .then(|| p.port.and_then(|n| u16::try_from(n).ok()))
                .flatten()
                .filter(|n| *n != 0)
        });
        let Some(number) = number else {
            continue;
        };
        for endpoint in slice.endpoints.iter().flatten() {
            let ready = endpoint
                .conditions
                .as_ref()
                .and_then(|c| c.ready)
                .unwrap_or(true);
            if !ready {
                continue;
            }
            let named_pod: Option<Arc<str>> = endpoint.target_ref.as_ref().and_then(|r| {
                (r.kind.as_deref() == Some("Pod")).then(|| {
                    format!(
                        "{}/{}",
                        r.namespace.as_deref().unwrap_or_default(),
                        r.name.as_deref().unwrap_or_default()
                    )
                    .into()
                })
            });
            for text in &endpoint.addresses {
                let Ok(addr) = text.parse::<IpAddr>() else {
                    continue;
                };
                let pod = named_pod.clone().or_else(|| {
                    let pod = cluster.pod_at(addr).filter(|pod| !pod.node)?;
                    Some(pod.key().into())
                });
                backends.push(Backend {
                    addr,
                    port: number,
                    pod,
                });
            }
        }
    }
    backends.sort();
    backends.dedup();
    backends
}

/// Without slices: the ready networked pods the selector matches in the Service's namespace.
fn selector_backends(
    service: &Checked<'_>,
    port: &CheckedPort<'_>,
    cluster: &Cluster,
) -> Vec<Backend> {
    let Some(selector) = &service.selector else {
        return Vec::new();
    };
    let mut backends = Vec::new();
    for pod in cluster.pods_of(&service.namespace) {
        if !pod.is_networked() || !pod.ready || !selector.matches(&pod.labels) {
            continue;
        }
        let number = match port.target {
            Target::Number(n) => Some(n),
            Target::Name(name) => pod
                .named_ports
                .iter()
                .find(|p| p.name == name && p.protocol == port.protocol)
                .map(|p| p.port),
        };
        let Some(number) = number else {
            continue;
        };
        let key: Arc<str> = pod.key().into();
        backends.extend(pod.ips.iter().map(|addr| Backend {
            addr: *addr,
            port: number,
            pod: Some(key.clone()),
        }));
    }
    backends.sort();
    backends
}
