//! Kubernetes identity over time: who held an address (a pod, or the node itself), which
//! Service a ClusterIP and port stood for, what a rule id stood for, and whether an endpoint
//! ran in audit mode, *at the time of an event*.
//!
//! The enforcer tells the collector what the cluster looks like after every change
//! ([`Identities::observe`], with the time of the change in the probe's clock); each fact is
//! kept as a [`History`] of spans:
//! - pods by address, from the snapshot's pods (hostNetwork pods left out: their addresses
//!   are their node's, shared by every such pod of the node);
//! - the node's own addresses, from the snapshot (the agent finds them on the node);
//! - Services by (ClusterIP, protocol, port), from the compiled Services (headless Services
//!   have no ClusterIP and name nothing);
//! - rule ids, and each endpoint's audit flags and interface index, from the compilation;
//! - the endpoints' host interfaces by index (name, branch ENI or not), from the agent's
//!   discovery of the node ([`Identities::observe_interfaces`]).
//!
//! Enrichment asks for the fact at the event's timestamp ([`Identities::holder_at`],
//! [`Identities::service_at`], [`Identities::rule_at`], [`Identities::audit_at`],
//! [`Identities::interface_at`]), so an
//! address that moved to another pod, or a ClusterIP handed to another Service, between the
//! event and the write is still attributed to what held it when the packet was decided.
//! Histories are bounded: closed spans older than the retention are pruned, and each key keeps
//! at most a few spans.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Arc;

use foldhash::fast::RandomState;
use k8s_openapi::api::core::v1::Pod;
use tollgate_enforcer::{
    compile::{Compiled, services::ServiceInfo},
    desired::RuleRef,
    snapshot::{Snapshot, pod_addresses},
};
use tollgate_schemas::{Direction, addr, endpoint_flags};

/// How long a closed span is kept: events older than this arrive only from a stalled reader.
pub const DEFAULT_RETENTION_NS: u64 = 15 * 60 * 1_000_000_000;

/// Most spans kept per key (the newest win).
pub const MAX_SPANS_PER_KEY: usize = 8;

/// Who a pod is, as flow records name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodIdentity {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Owning workload as `Kind/name` (see [`workload_of`]).
    pub workload: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
}

impl PodIdentity {
    /// The identity of `pod`.
    pub fn of(pod: &Pod) -> Self {
        let meta = &pod.metadata;
        let name = meta.name.clone().unwrap_or_default();
        Self {
            namespace: meta
                .namespace
                .clone()
                .unwrap_or_else(|| "default".to_owned()),
            workload: workload_of(pod),
            labels: meta
                .labels
                .clone()
                .unwrap_or_default()
                .into_iter()
                .collect(),
            name,
        }
    }
}

/// The workload that owns `pod`, as `Kind/name`: its controller owner, with a ReplicaSet
/// named `<deployment>-<pod-template-hash>` read as `Deployment/<deployment>` (what
/// `kubectl get deploy` shows); `Pod/<name>` for a pod without a controller.
pub fn workload_of(pod: &Pod) -> String {
    let meta = &pod.metadata;
    let controller = meta
        .owner_references
        .iter()
        .flatten()
        .find(|owner| owner.controller == Some(true));
    let Some(owner) = controller else {
        return format!("Pod/{}", meta.name.as_deref().unwrap_or_default());
    };
    let hash = meta
        .labels
        .as_ref()
        .and_then(|labels| labels.get("pod-template-hash"));
    if owner.kind == "ReplicaSet"
        && let Some(hash) = hash
        && let Some(deployment) = owner
            .name
            .strip_suffix(hash.as_str())
            .and_then(|rest| rest.strip_suffix('-'))
        && !deployment.is_empty()
    {
        return format!("Deployment/{deployment}");
    }
    format!("{}/{}", owner.kind, owner.name)
}

/// Who held an address at a moment, as flow records name an end of a flow.
#[derive(Debug, Clone, PartialEq)]
pub enum Holder {
    /// A pod of the cluster.
    Pod(Arc<PodIdentity>),
    /// The node itself: one of the addresses the agent found on it (kubelet probes and
    /// node-local agents come from these). Records name it `Node/<node>`.
    Node,
}

/// Who held an address at a moment, with the serial of the span in which they held it (as
/// [`Held`]: two holders of one address never share a record).
#[derive(Debug, Clone)]
pub struct Holding {
    /// Serial of the span, unique within the [`Identities`].
    pub serial: u64,
    /// Who held the address.
    pub holder: Holder,
}

/// A Service, as flow records name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceIdentity {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

/// What a connection is addressed to when it goes to a Service: a ClusterIP (16-byte form),
/// the IANA protocol and the Service port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ServiceAddress {
    /// The ClusterIP.
    pub addr: [u8; 16],
    /// TCP, UDP or SCTP.
    pub protocol: u8,
    /// The Service port (not the backends' `targetPort`).
    pub port: u16,
}

impl ServiceAddress {
    fn new(addr: IpAddr, protocol: u8, port: u16) -> Self {
        Self {
            addr: addr::to_bytes(addr),
            protocol,
            port,
        }
    }
}

/// Which ENI a pod's address is on, as the VPC CNI wired it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Eni {
    /// One of the node's ENIs (the node's security groups).
    Node,
    /// A branch ENI of the pod's own, on the node's trunk ENI (security groups for pods).
    Branch,
}

impl Eni {
    /// The name flow records use (`endpoint_eni`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Node => "node",
            Self::Branch => "branch",
        }
    }
}

/// The host-side interface of an endpoint, as flow records name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointInterface {
    /// The interface's name (`eni…`, `vlan…`).
    pub name: String,
    /// The ENI of the pod's address.
    pub eni: Eni,
}

/// The mark of one of the node's own addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct NodeAddress;

/// One value of a key over a span of time (ns of `CLOCK_BOOTTIME`).
#[derive(Debug, Clone)]
struct Span<V> {
    from_ns: u64,
    until_ns: Option<u64>,
    serial: u64,
    value: Arc<V>,
}

/// A fact at one moment: the value and the serial of its span, which tells two holders of the
/// same key apart (flow records never merge across them).
#[derive(Debug, Clone)]
pub struct Held<V> {
    /// Serial of the span, unique within the [`Identities`].
    pub serial: u64,
    /// The value.
    pub value: Arc<V>,
}

/// The values a key took over time, newest last.
#[derive(Debug)]
pub struct History<K, V> {
    /// Keyed with foldhash: looked up twice for every event.
    spans: HashMap<K, VecDeque<Span<V>>, RandomState>,
}

impl<K, V> Default for History<K, V> {
    fn default() -> Self {
        Self {
            spans: HashMap::default(),
        }
    }
}

impl<K: Eq + Hash + Clone, V: PartialEq> History<K, V> {
    /// From `at_ns` on, `key` holds `value` (a no-op when it already does).
    fn set(&mut self, key: &K, value: V, at_ns: u64, serial: &mut u64) {
        let spans = self.spans.entry(key.clone()).or_default();
        if let Some(last) = spans.back_mut()
            && last.until_ns.is_none()
        {
            if *last.value == value {
                return;
            }
            last.until_ns = Some(at_ns);
        }
        *serial += 1;
        spans.push_back(Span {
            from_ns: at_ns,
            until_ns: None,
            serial: *serial,
            value: Arc::new(value),
        });
        while spans.len() > MAX_SPANS_PER_KEY {
            spans.pop_front();
        }
    }

    /// From `at_ns` on, `key` holds nothing.
    fn end(&mut self, key: &K, at_ns: u64) {
        if let Some(last) = self.spans.get_mut(key).and_then(VecDeque::back_mut)
            && last.until_ns.is_none()
        {
            last.until_ns = Some(at_ns);
        }
    }

    /// Keys that hold a value now.
    fn current_keys(&self) -> Vec<K> {
        self.spans
            .iter()
            .filter(|(_, spans)| spans.back().is_some_and(|s| s.until_ns.is_none()))
            .map(|(key, _)| key.clone())
            .collect()
    }

    /// What `key` held at `ts_ns`. A time before the first span the history knows of is read
    /// as that first span when it started with the collector (`from_ns` 0): the collector
    /// cannot know of earlier holders.
    pub fn at(&self, key: &K, ts_ns: u64) -> Option<Held<V>> {
        let spans = self.spans.get(key)?;
        spans
            .iter()
            .rev()
            .find(|s| s.from_ns <= ts_ns && s.until_ns.is_none_or(|until| ts_ns < until))
            .map(|s| Held {
                serial: s.serial,
                value: Arc::clone(&s.value),
            })
    }

    /// Forgets spans that ended before `before_ns`.
    fn prune(&mut self, before_ns: u64) {
        self.spans.retain(|_, spans| {
            spans.retain(|s| s.until_ns.is_none_or(|until| until >= before_ns));
            !spans.is_empty()
        });
    }

    /// How many spans are kept, over all keys.
    pub fn len(&self) -> usize {
        self.spans.values().map(VecDeque::len).sum()
    }

    /// Whether no span is kept.
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }
}

/// What the compilation says of one endpoint: its flags (audit per direction) and the index
/// of its host interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct EndpointFacts {
    flags: u32,
    ifindex: u32,
}

/// Every identity fact the collector needs, over time.
#[derive(Debug)]
pub struct Identities {
    pods: History<[u8; 16], PodIdentity>,
    nodes: History<[u8; 16], NodeAddress>,
    services: History<ServiceAddress, ServiceIdentity>,
    rules: History<u32, RuleRef>,
    endpoints: History<u32, EndpointFacts>,
    interfaces: History<u32, EndpointInterface>,
    serial: u64,
    retention_ns: u64,
    observed: bool,
    interfaces_observed: bool,
}

impl Default for Identities {
    fn default() -> Self {
        Self::new(DEFAULT_RETENTION_NS)
    }
}

impl Identities {
    /// Empty, keeping closed spans for `retention_ns`.
    pub fn new(retention_ns: u64) -> Self {
        Self {
            pods: History::default(),
            nodes: History::default(),
            services: History::default(),
            rules: History::default(),
            endpoints: History::default(),
            interfaces: History::default(),
            serial: 0,
            retention_ns,
            observed: false,
            interfaces_observed: false,
        }
    }

    /// Records the cluster as it is from `at_ns` (ns of `CLOCK_BOOTTIME`) on: the pods of
    /// `snapshot` by address and the node's own addresses, and the Services, rule ids and
    /// endpoint audit flags of `compiled`. What the first call records is taken to hold since
    /// before the collector started.
    pub fn observe(&mut self, snapshot: &Snapshot, compiled: &Compiled, at_ns: u64) {
        let at_ns = if self.observed { at_ns } else { 0 };
        self.observed = true;

        let mut pods: HashMap<[u8; 16], PodIdentity> = HashMap::new();
        for pod in snapshot.pods.iter().filter(|pod| !is_host_network(pod)) {
            let identity = PodIdentity::of(pod);
            for address in pod_addresses(pod) {
                pods.insert(addr::to_bytes(address), identity.clone());
            }
        }
        replace(&mut self.pods, pods, at_ns, &mut self.serial);

        let nodes: HashMap<[u8; 16], NodeAddress> = snapshot
            .node_addresses
            .iter()
            .map(|address| (addr::to_bytes(*address), NodeAddress))
            .collect();
        replace(&mut self.nodes, nodes, at_ns, &mut self.serial);

        replace(
            &mut self.services,
            service_addresses(&compiled.services),
            at_ns,
            &mut self.serial,
        );

        let rules: HashMap<u32, RuleRef> = compiled
            .rules
            .iter()
            .map(|(id, rule)| (*id, rule.clone()))
            .collect();
        replace(&mut self.rules, rules, at_ns, &mut self.serial);

        let endpoints: HashMap<u32, EndpointFacts> = compiled
            .desired
            .endpoints
            .values()
            .map(|state| {
                let facts = EndpointFacts {
                    flags: state.flags,
                    ifindex: state.ifindex,
                };
                (state.id, facts)
            })
            .collect();
        replace(&mut self.endpoints, endpoints, at_ns, &mut self.serial);

        if let Some(before) = at_ns.checked_sub(self.retention_ns) {
            self.pods.prune(before);
            self.nodes.prune(before);
            self.services.prune(before);
            self.rules.prune(before);
            self.endpoints.prune(before);
        }
    }

    /// Records the endpoints' host interfaces, by interface index, as the agent found them on
    /// the node from `at_ns` on (ns of `CLOCK_BOOTTIME`). What the first call records is
    /// taken to hold since before the collector started.
    pub fn observe_interfaces(&mut self, interfaces: HashMap<u32, EndpointInterface>, at_ns: u64) {
        let at_ns = if self.interfaces_observed { at_ns } else { 0 };
        self.interfaces_observed = true;
        replace(&mut self.interfaces, interfaces, at_ns, &mut self.serial);
        if let Some(before) = at_ns.checked_sub(self.retention_ns) {
            self.interfaces.prune(before);
        }
    }

    /// The host interface of the endpoint that decided an event at `ts_ns`: the interface of
    /// index `ifindex` (the one the packet was seen on), or, for a report that names none (0:
    /// a connection-tracking report), the interface endpoint `endpoint` was compiled on.
    pub fn interface_at(
        &self,
        endpoint: u32,
        ifindex: u32,
        ts_ns: u64,
    ) -> Option<Held<EndpointInterface>> {
        let ifindex = match ifindex {
            0 => self.endpoints.at(&endpoint, ts_ns)?.value.ifindex,
            ifindex => ifindex,
        };
        self.interfaces.at(&ifindex, ts_ns)
    }

    /// Who held `address` (16-byte form) at `ts_ns`: the node, when it was one of the node's
    /// own addresses then, or else the pod that had it.
    pub fn holder_at(&self, address: &[u8; 16], ts_ns: u64) -> Option<Holding> {
        if let Some(node) = self.nodes.at(address, ts_ns) {
            return Some(Holding {
                serial: node.serial,
                holder: Holder::Node,
            });
        }
        self.pods.at(address, ts_ns).map(|pod| Holding {
            serial: pod.serial,
            holder: Holder::Pod(pod.value),
        })
    }

    /// The Service whose ClusterIP, protocol and port `to` was at `ts_ns`.
    pub fn service_at(&self, to: &ServiceAddress, ts_ns: u64) -> Option<Held<ServiceIdentity>> {
        self.services.at(to, ts_ns)
    }

    /// The policy rule `rule_id` stood for at `ts_ns`.
    pub fn rule_at(&self, rule_id: u32, ts_ns: u64) -> Option<Held<RuleRef>> {
        self.rules.at(&rule_id, ts_ns)
    }

    /// Whether endpoint `endpoint` ran `direction` in audit mode at `ts_ns`.
    pub fn audit_at(&self, endpoint: u32, direction: Direction, ts_ns: u64) -> bool {
        self.endpoints
            .at(&endpoint, ts_ns)
            .is_some_and(|facts| facts.value.flags & endpoint_flags::audit(direction) != 0)
    }

    /// Spans kept for pod addresses (for metrics).
    pub fn pod_spans(&self) -> usize {
        self.pods.len()
    }
}

/// Whether `pod` shares its node's network namespace (`spec.hostNetwork`): its addresses are
/// the node's, so they name no pod.
fn is_host_network(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|spec| spec.host_network)
        .unwrap_or(false)
}

/// Every (ClusterIP, protocol, port) of `services` with the Service it stands for; headless
/// Services have no ClusterIP and add nothing.
fn service_addresses(services: &[ServiceInfo]) -> HashMap<ServiceAddress, ServiceIdentity> {
    let mut table = HashMap::new();
    for service in services {
        let identity = ServiceIdentity {
            namespace: service.namespace.clone(),
            name: service.name.clone(),
        };
        for cluster_ip in &service.cluster_ips {
            for port in &service.ports {
                table.insert(
                    ServiceAddress::new(*cluster_ip, port.protocol, port.port),
                    identity.clone(),
                );
            }
        }
    }
    table
}

/// Makes `history` hold exactly `now` from `at_ns` on: changed keys get a new span, vanished
/// ones end.
fn replace<K: Eq + Hash + Clone, V: PartialEq>(
    history: &mut History<K, V>,
    now: HashMap<K, V>,
    at_ns: u64,
    serial: &mut u64,
) {
    for key in history.current_keys() {
        if !now.contains_key(&key) {
            history.end(&key, at_ns);
        }
    }
    for (key, value) in now {
        history.set(&key, value, at_ns, serial);
    }
}
