//! The probes file: text → [`ProbeSpec`]s ([`parse_probes`]) → flows between addresses
//! ([`resolve_probes`], which looks pod names up in the snapshot).
//!
//! One probe per line, `FROM TO PORT/PROTOCOL`, where FROM and TO are `namespace/pod` or an IP
//! address (a client or server outside the cluster); TO may also be `service:namespace/name`
//! or a Service's ClusterIP, with the Service's port. A probe to a Service stands for one flow
//! per ready backend of that port (in the client's family), as kube-proxy may send it to any:
//! the client's egress sees the ClusterIP and port, the backend's ingress the backend's address
//! and targetPort. `#` starts a comment, anywhere on a line; blank lines are ignored. A line that cannot be used becomes an [`InputError`] naming
//! `FILE line N` and the field; the other probes still run.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::Arc;

use tollgate_schemas::proto;

use crate::compile::services::{Backend, ServiceInfo};
use crate::decision::{ProbeFlow, ServiceHop};
use crate::snapshot::{self, InputError, Snapshot, pod_key};

/// The layer-4 protocols a probe (and a NetworkPolicy port) can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
}

impl Protocol {
    /// IANA protocol number.
    pub const fn number(self) -> u8 {
        match self {
            Self::Tcp => proto::TCP,
            Self::Udp => proto::UDP,
            Self::Sctp => proto::SCTP,
        }
    }

    /// Upper-case name, as in the NetworkPolicy API (`TCP`, `UDP`, `SCTP`).
    pub const fn name(self) -> &'static str {
        match self {
            Self::Tcp => "TCP",
            Self::Udp => "UDP",
            Self::Sctp => "SCTP",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A protocol name that is not TCP, UDP or SCTP.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown protocol {0:?}: expected TCP, UDP or SCTP")]
pub struct UnknownProtocol(pub String);

impl FromStr for Protocol {
    type Err = UnknownProtocol;

    /// Parses a protocol name, case-insensitively.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [Self::Tcp, Self::Udp, Self::Sctp]
            .into_iter()
            .find(|p| p.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| UnknownProtocol(s.to_owned()))
    }
}

/// One side of a probe.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Peer {
    /// A pod of the manifests, by namespace and name.
    Pod {
        /// The pod's namespace.
        namespace: String,
        /// The pod's name.
        name: String,
    },
    /// An address, usually of a client or server outside the cluster, or a ClusterIP.
    Address(IpAddr),
    /// A Service of the manifests (`service:namespace/name`), reached through its ClusterIP.
    Service {
        /// The Service's namespace.
        namespace: String,
        /// The Service's name.
        name: String,
    },
}

/// Prefix of a probe peer that names a Service.
const SERVICE_PREFIX: &str = "service:";

impl Peer {
    /// Parses `namespace/pod`, `service:namespace/name` or an IP address; `None` when `text`
    /// is none of them.
    pub fn parse(text: &str) -> Option<Self> {
        if let Ok(ip) = text.parse() {
            return Some(Self::Address(ip));
        }
        let (service, text) = match text.strip_prefix(SERVICE_PREFIX) {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let (namespace, name) = text.split_once('/')?;
        let valid = |part: &str| !part.is_empty() && !part.contains('/');
        if !(valid(namespace) && valid(name)) {
            return None;
        }
        let (namespace, name) = (namespace.to_owned(), name.to_owned());
        Some(if service {
            Self::Service { namespace, name }
        } else {
            Self::Pod { namespace, name }
        })
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Pod { namespace, name } => write!(f, "{namespace}/{name}"),
            Self::Address(ip) => write!(f, "{ip}"),
            Self::Service { namespace, name } => write!(f, "{SERVICE_PREFIX}{namespace}/{name}"),
        }
    }
}

/// One probe, as written: a new flow from `from` to `to` on `port`/`protocol`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeSpec {
    /// Where the probe was written, as errors name it (`FILE line N`).
    pub origin: String,
    /// The client.
    pub from: Peer,
    /// The server.
    pub to: Peer,
    /// Destination port (1 to 65535).
    pub port: u16,
    /// Layer-4 protocol.
    pub protocol: Protocol,
}

/// Parses a probes file. `source` names it in errors (`SOURCE line N`).
///
/// Returns every valid probe, in input order, and one error per invalid line (more when
/// several fields of one line are wrong).
pub fn parse_probes(text: &str, source: &str) -> (Vec<ProbeSpec>, Vec<InputError>) {
    parse_probe_bytes(text.as_bytes(), source)
}

/// [`parse_probes`] of a file's bytes, as read: a leading UTF-8 byte-order mark is dropped, and
/// a line that is not valid UTF-8 is an error of its own (with the column of its first invalid
/// byte); the other lines are still read.
pub fn parse_probe_bytes(bytes: &[u8], source: &str) -> (Vec<ProbeSpec>, Vec<InputError>) {
    let mut probes = Vec::new();
    let mut errors = Vec::new();
    let bytes = bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(bytes);
    for (index, line) in bytes.split(|b| *b == b'\n').enumerate() {
        let origin = format!("{source} line {}", index + 1);
        let raw = match std::str::from_utf8(line.strip_suffix(b"\r").unwrap_or(line)) {
            Ok(raw) => raw,
            Err(e) => {
                errors.push(InputError {
                    object: origin,
                    field: "(line)".to_owned(),
                    message: format!(
                        "invalid UTF-8 at column {} (byte 0x{:02x}): the line is left out",
                        e.valid_up_to() + 1,
                        line[e.valid_up_to()]
                    ),
                });
                continue;
            }
        };
        let content = raw.split_once('#').map_or(raw, |(before, _)| before);
        let fields: Vec<&str> = content.split_whitespace().collect();
        if fields.is_empty() {
            continue;
        }
        match parse_fields(&fields, &origin) {
            Ok(probe) => probes.push(probe),
            Err(mut line_errors) => errors.append(&mut line_errors),
        }
    }
    (probes, errors)
}

fn parse_fields(fields: &[&str], origin: &str) -> Result<ProbeSpec, Vec<InputError>> {
    let error = |field: &str, message: String| InputError {
        object: origin.to_owned(),
        field: field.to_owned(),
        message,
    };
    let &[from, to, port_protocol] = fields else {
        return Err(vec![error(
            "fields",
            format!(
                "expected 3 fields (FROM TO PORT/PROTOCOL), found {}",
                fields.len()
            ),
        )]);
    };
    let mut errors = Vec::new();
    let peer = |field: &str, text: &str, errors: &mut Vec<InputError>| {
        let peer = Peer::parse(text);
        if peer.is_none() {
            errors.push(error(
                field,
                format!(
                    "{text:?} is neither namespace/pod, service:namespace/name nor an IP address"
                ),
            ));
        }
        peer
    };
    let from = peer("from", from, &mut errors);
    if let Some(Peer::Service { .. }) = from {
        errors.push(error(
            "from",
            "a Service is only a destination: name one of its pods as the client".to_owned(),
        ));
    }
    let to = peer("to", to, &mut errors);
    let (port_text, protocol_text) = match port_protocol.split_once('/') {
        Some((port, protocol)) => (port, Some(protocol)),
        None => (port_protocol, None),
    };
    let port = match port_text.parse::<u16>() {
        Ok(port) if port > 0 => Some(port),
        _ => {
            errors.push(error(
                "port",
                format!("{port_text:?} is not a port number from 1 to 65535"),
            ));
            None
        }
    };
    let protocol = match protocol_text {
        None => {
            errors.push(error(
                "protocol",
                format!("missing in {port_protocol:?}: expected PORT/PROTOCOL, e.g. 80/TCP"),
            ));
            None
        }
        Some(text) => match text.parse::<Protocol>() {
            Ok(protocol) => Some(protocol),
            Err(e) => {
                errors.push(error("protocol", e.to_string()));
                None
            }
        },
    };
    match (from, to, port, protocol) {
        (Some(from), Some(to), Some(port), Some(protocol)) if errors.is_empty() => Ok(ProbeSpec {
            origin: origin.to_owned(),
            from,
            to,
            port,
            protocol,
        }),
        _ => Err(errors),
    }
}

/// A probe whose peers are addresses: the flow a datapath decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedProbe {
    /// The probe as written.
    pub spec: ProbeSpec,
    /// Its first packet.
    pub flow: ProbeFlow,
    /// Through a Service: which one (`namespace/name`) and the backend this flow stands for
    /// (`namespace/pod`, or its address when no pod has it); `None` for a backend when the
    /// Service port has no ready backend in the client's family.
    pub service: Option<(String, Option<String>)>,
}

impl ResolvedProbe {
    /// Whether the flow goes from an address to itself (a pod probing itself): such a packet
    /// never crosses the pod's veth, so no hook sees it.
    pub fn is_loopback(&self) -> bool {
        self.flow.src == self.flow.dst
    }
}

/// First source port handed out; probe `i` uses `FIRST_SOURCE_PORT + i % SOURCE_PORTS`.
const FIRST_SOURCE_PORT: u16 = 40_000;
/// How many source ports are handed out before they repeat (all inside Linux's default
/// ephemeral range, 32768 to 60999).
const SOURCE_PORTS: usize = 20_000;

/// Turns each probe's peers into addresses, looking pods up in `snapshot` and Services up in
/// `services` (the compiler's, with their ready backends).
///
/// A pod stands for its first address (`status.podIPs`, else `status.podIP`) of the family
/// the other side uses: an IP address forces its family; between two pods IPv4 is preferred
/// when both have it, else IPv6. A Service (by name or by ClusterIP) stands for one flow per
/// ready backend of the probe's port and protocol, through the ClusterIP of the client's
/// family; with no ready backend, one flow to the ClusterIP itself. A probe whose peers cannot
/// be resolved (unknown pod or Service, pod without addresses, no common family, no such
/// Service port) becomes an [`InputError`] and is skipped. Probe `i` (its position in
/// `probes`) gets the source port `40000 + i % 20000`, so that flows stay distinct.
pub fn resolve_probes(
    probes: &[ProbeSpec],
    snapshot: &Snapshot,
    services: &[Arc<ServiceInfo>],
) -> (Vec<ResolvedProbe>, Vec<InputError>) {
    let addresses = pod_addresses(snapshot);
    let mut resolved = Vec::new();
    let mut errors = Vec::new();
    for (index, spec) in probes.iter().enumerate() {
        let flow = |src, dst, dst_port, service| ProbeFlow {
            src,
            dst,
            protocol: spec.protocol.number(),
            src_port: source_port(index),
            dst_port,
            service,
        };
        let through = match &spec.to {
            Peer::Service { namespace, name } => services
                .iter()
                .find(|s| s.namespace == *namespace && s.name == *name)
                .ok_or_else(|| {
                    vec![probe_error(
                        spec,
                        "to",
                        format!("no Service {namespace}/{name} in the manifests"),
                    )]
                })
                .map(Some),
            Peer::Address(ip) => Ok(services.iter().find(|s| s.cluster_ips.contains(ip))),
            Peer::Pod { .. } => Ok(None),
        };
        let outcome = through.and_then(|service| match service {
            None => resolve(spec, &addresses).map(|(src, dst)| {
                vec![ResolvedProbe {
                    spec: spec.clone(),
                    flow: flow(src, dst, spec.port, None),
                    service: None,
                }]
            }),
            Some(service) => {
                resolve_service(spec, service, &addresses).map(|(src, vip, backends)| {
                    let hop = Some(ServiceHop {
                        addr: vip,
                        port: spec.port,
                    });
                    if backends.is_empty() {
                        return vec![ResolvedProbe {
                            spec: spec.clone(),
                            flow: flow(src, vip, spec.port, hop),
                            service: Some((service.key(), None)),
                        }];
                    }
                    backends
                        .into_iter()
                        .map(|backend| ResolvedProbe {
                            spec: spec.clone(),
                            flow: flow(src, backend.addr, backend.port, hop),
                            service: Some((
                                service.key(),
                                Some(backend.pod.map_or_else(
                                    || backend.addr.to_string(),
                                    |pod| pod.to_string(),
                                )),
                            )),
                        })
                        .collect()
                })
            }
        });
        match outcome {
            Ok(mut probes) => resolved.append(&mut probes),
            Err(mut probe_errors) => errors.append(&mut probe_errors),
        }
    }
    (resolved, errors)
}

fn probe_error(spec: &ProbeSpec, field: &str, message: String) -> InputError {
    InputError {
        object: spec.origin.clone(),
        field: field.to_owned(),
        message,
    }
}

/// The client's address, the ClusterIP of its family, and the ready backends of the probe's
/// Service port in that family.
fn resolve_service(
    spec: &ProbeSpec,
    service: &ServiceInfo,
    addresses: &BTreeMap<String, Vec<IpAddr>>,
) -> Result<(IpAddr, IpAddr, Vec<Backend>), Vec<InputError>> {
    let error = |field: &str, message: String| vec![probe_error(spec, field, message)];
    let key = service.key();
    if service.is_headless() {
        return Err(error(
            "to",
            format!(
                "Service {key} is headless (clusterIP: None): name the pod, as its DNS name does"
            ),
        ));
    }
    let port = service
        .ports
        .iter()
        .find(|p| p.port == spec.port && p.protocol == spec.protocol.number())
        .ok_or_else(|| {
            error(
                "port",
                format!("Service {key} has no port {}/{}", spec.port, spec.protocol),
            )
        })?;
    let clients: Vec<IpAddr> = match &spec.from {
        Peer::Address(ip) => vec![*ip],
        peer => match addresses.get(&peer.to_string()) {
            Some(ips) if !ips.is_empty() => ips.clone(),
            Some(_) => {
                return Err(error(
                    "from",
                    format!("pod {peer} has no IP address (status.podIPs)"),
                ));
            }
            None => return Err(error("from", format!("no pod {peer} in the manifests"))),
        },
    };
    let wanted: Vec<IpAddr> = match &spec.to {
        Peer::Address(ip) => vec![*ip],
        _ => service.cluster_ips.clone(),
    };
    let v4_first = clients
        .iter()
        .filter(|ip| ip.is_ipv4())
        .chain(clients.iter().filter(|ip| ip.is_ipv6()));
    let (src, vip) = v4_first
        .clone()
        .find_map(|src| {
            wanted
                .iter()
                .find(|vip| vip.is_ipv4() == src.is_ipv4())
                .map(|vip| (*src, *vip))
        })
        .ok_or_else(|| {
            error(
                "to",
                format!(
                    "no common address family: {} has {}, Service {key} has {}",
                    spec.from,
                    families(&clients),
                    families(&wanted)
                ),
            )
        })?;
    let backends = port
        .backends
        .iter()
        .filter(|b| b.addr.is_ipv4() == vip.is_ipv4())
        .cloned()
        .collect();
    Ok((src, vip, backends))
}

fn source_port(index: usize) -> u16 {
    let offset = u16::try_from(index % SOURCE_PORTS).unwrap_or_default();
    FIRST_SOURCE_PORT + offset
}

/// Every pod's addresses, in the order the pod lists them, by `namespace/name`. Addresses that
/// do not parse are left out here; the compiler reports them.
fn pod_addresses(snapshot: &Snapshot) -> BTreeMap<String, Vec<IpAddr>> {
    snapshot
        .pods
        .iter()
        .filter(|pod| pod.metadata.name.is_some())
        .map(|pod| (pod_key(pod), snapshot::pod_addresses(pod)))
        .collect()
}

/// The address family of an address, for messages.
fn family(ip: &IpAddr) -> &'static str {
    match ip {
        IpAddr::V4(_) => "IPv4",
        IpAddr::V6(_) => "IPv6",
    }
}

/// The address families of a pod's addresses, for messages.
fn families(ips: &[IpAddr]) -> &'static str {
    match (
        ips.iter().any(IpAddr::is_ipv4),
        ips.iter().any(IpAddr::is_ipv6),
    ) {
        (true, true) => "IPv4 and IPv6",
        (true, false) => "IPv4 only",
        _ => "IPv6 only",
    }
}

/// One side of a probe, looked up: an address, or a pod's addresses (never empty).
enum Side<'a> {
    Address(IpAddr),
    Pod(&'a [IpAddr]),
}

fn resolve(
    spec: &ProbeSpec,
    addresses: &BTreeMap<String, Vec<IpAddr>>,
) -> Result<(IpAddr, IpAddr), Vec<InputError>> {
    let error = |field: &str, message: String| InputError {
        object: spec.origin.clone(),
        field: field.to_owned(),
        message,
    };
    let lookup = |field: &str, peer: &Peer| match peer {
        Peer::Address(ip) => Ok(Side::Address(*ip)),
        Peer::Service { .. } => Err(error(field, format!("{peer} is not a pod or an address"))),
        Peer::Pod { .. } => match addresses.get(&peer.to_string()) {
            None => Err(error(field, format!("no pod {peer} in the manifests"))),
            Some(ips) if ips.is_empty() => Err(error(
                field,
                format!("pod {peer} has no IP address (status.podIPs)"),
            )),
            Some(ips) => Ok(Side::Pod(ips)),
        },
    };
    let (from, to) = match (lookup("from", &spec.from), lookup("to", &spec.to)) {
        (Ok(from), Ok(to)) => (from, to),
        (from, to) => return Err([from.err(), to.err()].into_iter().flatten().collect()),
    };
    let first_like = |ips: &[IpAddr], like: &IpAddr| {
        ips.iter()
            .find(|ip| ip.is_ipv4() == like.is_ipv4())
            .copied()
    };
    match (from, to) {
        (Side::Address(src), Side::Address(dst)) => {
            if src.is_ipv4() == dst.is_ipv4() {
                Ok((src, dst))
            } else {
                let message = format!("{dst} is {} but {src} is {}", family(&dst), family(&src));
                Err(vec![error("to", message)])
            }
        }
        (Side::Address(src), Side::Pod(ips)) => {
            first_like(ips, &src).map(|dst| (src, dst)).ok_or_else(|| {
                let message = format!("pod {} has no {} address", spec.to, family(&src));
                vec![error("to", message)]
            })
        }
        (Side::Pod(ips), Side::Address(dst)) => {
            first_like(ips, &dst).map(|src| (src, dst)).ok_or_else(|| {
                let message = format!("pod {} has no {} address", spec.from, family(&dst));
                vec![error("from", message)]
            })
        }
        (Side::Pod(from_ips), Side::Pod(to_ips)) => {
            let v4_first = from_ips.iter().filter(|ip| ip.is_ipv4());
            v4_first
                .chain(from_ips.iter().filter(|ip| ip.is_ipv6()))
                .find_map(|src| first_like(to_ips, src).map(|dst| (*src, dst)))
                .ok_or_else(|| {
                    let message = format!(
                        "no common address family: pod {} has {}, pod {} has {}",
                        spec.from,
                        families(from_ips),
                        spec.to,
                        families(to_ips)
                    );
                    vec![error("to", message)]
                })
        }
    }
}
