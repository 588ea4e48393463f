//! Kubernetes identity over time: who held an address (a pod, or the node itself), which
//! Service a ClusterIP and port stood for, what a rule id stood for, and whether an endpoint
//! ran in audit mode, *at the time of an event*.
//!
//! Whoever watches the cluster (the agent, the lab) tells the collector what it looks like
//! after every change in a [`Naming`] table of plain names, built from its own snapshot and
//! compilation ([`Identities::observe`], with the time of the change in the probe's clock);
//! each fact is kept as a [`History`] of spans:
//! - pods by address, kept by difference: each observe is given only the pods that changed
//!   since the last one (every pod the first time; a gone pod as `None`). Each pod claims the
//!   addresses it lists (hostNetwork pods claim none: their addresses are their node's, shared
//!   by every such pod of the node) and each address keeps its claimants in the order they
//!   first claimed it: the last of them holds it (an address two pods list, a finished pod's
//!   reused by a new one, is the new one's; once that one is gone, the earlier holds it again).
//!   Only addresses whose claims changed are touched, and the identity is shared between the
//!   claim and the span;
//! - the node's own addresses, as the agent finds them on the node;
//! - Services by (ClusterIP, protocol, port) (headless Services have no ClusterIP and name
//!   nothing);
//! - rule ids, and each endpoint's audit flags and interface index;
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

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Arc;

use foldhash::fast::RandomState;
use tollgate_schemas::{Direction, addr, endpoint_flags, rule::NamedRule};

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
    /// Owning workload as `Kind/name` (a Deployment's pods say `Deployment/<name>`, not their
    /// ReplicaSet; `Pod/<name>` for a pod without a controller).
    pub workload: String,
    /// Labels (shared by the identities with the same: a workload's pods).
    pub labels: Arc<BTreeMap<String, String>>,
}

impl std::fmt::Display for PodIdentity {
    /// `namespace/name`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
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

impl std::fmt::Display for ServiceIdentity {
    /// `namespace/name`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
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
    /// `addr`'s `protocol` and `port`.
    pub fn new(addr: IpAddr, protocol: u8, port: u16) -> Self {
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

/// One value of a key over a span of time (ns of `CLOCK_MONOTONIC`, the probe's clock).
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
    /// From `at_ns` on, `key` holds `value` (a no-op when it already holds an equal value).
    fn set(&mut self, key: &K, value: Arc<V>, at_ns: u64, serial: &mut u64) {
        // Most keys only ever hold one value: room for one span (a deque's default is four).
        let spans = self
            .spans
            .entry(key.clone())
            .or_insert_with(|| VecDeque::with_capacity(1));
        if let Some(last) = spans.back_mut()
            && last.until_ns.is_none()
        {
            if *last.value == *value {
                return;
            }
            last.until_ns = Some(at_ns);
        }
        *serial += 1;
        spans.push_back(Span {
            from_ns: at_ns,
            until_ns: None,
            serial: *serial,
            value,
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

/// What the compilation says of one endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointFacts {
    /// Its flags (`endpoint_flags`: audit per direction).
    pub flags: u32,
    /// The index of its host interface.
    pub ifindex: u32,
    /// The NetworkPolicies (`namespace/name`) that isolate it: ingress, egress.
    pub isolating: [Arc<[String]>; 2],
}

/// The naming table: what the cluster looks like after a change, as flow records name it.
/// Whoever watches the cluster (the agent, the lab) builds one from its snapshot and
/// compilation after every change, and [`Identities::observe`] keeps it over time.
#[derive(Debug, Clone, Default)]
pub struct Naming {
    /// The pods that changed since the previous table (every pod the first time), each with
    /// what it claims now.
    pub pods: PodChanges,
    /// The node's own addresses, all of them each time.
    pub node_addresses: Vec<IpAddr>,
    /// The Service each (ClusterIP, protocol, port) stands for (headless Services have none).
    pub services: HashMap<ServiceAddress, ServiceIdentity>,
    /// What each compiled rule id stands for.
    pub rules: HashMap<u32, NamedRule>,
    /// What the compilation says of each endpoint, by endpoint id.
    pub endpoints: HashMap<u32, EndpointFacts>,
}

/// Label maps, each once.
type LabelSets = HashSet<Arc<BTreeMap<String, String>>, RandomState>;

/// A pod's key: (namespace, name), as [`Updates`] name it.
type PodKey = (String, String);

/// What one pod claims: its identity and the addresses it lists (16-byte form, without
/// duplicates; never empty). All the records need of a pod: what the agent keeps of a changed
/// pod until it is observed, instead of the pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodClaims {
    identity: Arc<PodIdentity>,
    addresses: Vec<[u8; 16]>,
}

impl PodClaims {
    /// What a pod of `identity` that lists `addresses` claims: its addresses (16-byte form,
    /// without duplicates) with its identity; `None` when it lists none. A hostNetwork pod
    /// claims nothing (its addresses are its node's): whoever builds the claims leaves it out.
    pub fn new(identity: PodIdentity, addresses: impl IntoIterator<Item = IpAddr>) -> Option<Self> {
        let mut kept: Vec<[u8; 16]> = Vec::new();
        for address in addresses {
            let address = addr::to_bytes(address);
            if !kept.contains(&address) {
                kept.push(address);
            }
        }
        if kept.is_empty() {
            return None;
        }
        Some(PodClaims {
            identity: Arc::new(identity),
            addresses: kept,
        })
    }

    /// The same claims, whose identity's label map is the one of `label_sets` equal to it
    /// (added when none is).
    fn sharing(self, label_sets: &mut LabelSets) -> Self {
        let labels = shared(label_sets, &self.identity.labels);
        if Arc::ptr_eq(&labels, &self.identity.labels) {
            return self;
        }
        let identity = Arc::new(PodIdentity {
            labels,
            ..(*self.identity).clone()
        });
        PodClaims { identity, ..self }
    }
}

/// Pods that changed, by (namespace, name), each with what it claims now: `None` for a gone
/// pod, and for one that claims nothing.
pub type PodChanges = BTreeMap<PodKey, Option<PodClaims>>;

/// Pod changes gathered for the next [`Identities::observe`] as they arrive, the pods with the
/// same labels sharing one label map (a first list of 100,000 pods has a few thousand).
#[derive(Debug, Default)]
pub struct PendingPods {
    changes: PodChanges,
    label_sets: LabelSets,
}

impl PendingPods {
    /// Adds what pod `key` (namespace, name) claims now (`None`: gone, or claims nothing); a
    /// pod's later change replaces its earlier one.
    pub fn add(&mut self, key: (String, String), claims: Option<PodClaims>) {
        let claims = claims.map(|claims| claims.sharing(&mut self.label_sets));
        self.changes.insert(key, claims);
    }

    /// The changes gathered; none is kept.
    pub fn take(&mut self) -> PodChanges {
        self.label_sets.clear();
        std::mem::take(&mut self.changes)
    }
}

/// The label map of `label_sets` equal to `labels`; `labels`, added, when there is none.
fn shared(
    label_sets: &mut LabelSets,
    labels: &Arc<BTreeMap<String, String>>,
) -> Arc<BTreeMap<String, String>> {
    match label_sets.get(labels) {
        Some(shared) => Arc::clone(shared),
        None => {
            label_sets.insert(Arc::clone(labels));
            Arc::clone(labels)
        }
    }
}

/// One pod that claims an address: its identity (the `Arc` its [`PodClaims`] and the
/// address's span share), which names it.
type Claimant = Arc<PodIdentity>;

/// Whether `claimant` is the pod of `key`.
fn is_pod(claimant: &Claimant, key: &PodKey) -> bool {
    claimant.namespace == key.0 && claimant.name == key.1
}

/// Every identity fact the collector needs, over time.
#[derive(Debug)]
pub struct Identities {
    pods: History<[u8; 16], PodIdentity>,
    /// What each pod claims, by key: the pods as the observes so far left them.
    pod_claims: HashMap<PodKey, PodClaims, RandomState>,
    /// The pods that claim each address, in the order they first claimed it: the last one
    /// holds it. Addresses no pod claims are left out.
    claimants: HashMap<[u8; 16], Vec<Claimant>, RandomState>,
    /// Every pod identity's label map, once: the pods of a workload share theirs.
    label_sets: LabelSets,
    nodes: History<[u8; 16], NodeAddress>,
    services: History<ServiceAddress, ServiceIdentity>,
    rules: History<u32, NamedRule>,
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
            pod_claims: HashMap::default(),
            claimants: HashMap::default(),
            label_sets: LabelSets::default(),
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

    /// Records the cluster as `naming` tells it from `at_ns` (ns of `CLOCK_MONOTONIC`) on: the
    /// pods that changed since the last call by address, the node's own addresses, and the
    /// Services, rule ids and endpoint facts. What the first call records is taken to hold
    /// since before the collector started.
    ///
    /// Pods are kept by difference: a changed pod replaces the addresses it claims
    /// (hostNetwork pods and pods without an address claim none), a gone pod drops them, and
    /// only the addresses whose claims changed get a new span (or end). An address several
    /// pods claim is held by the one that claimed it last; a pod that keeps an address it
    /// already claimed keeps its place. A pod given again unchanged opens no span.
    pub fn observe(&mut self, naming: Naming, at_ns: u64) {
        let at_ns = if self.observed { at_ns } else { 0 };
        self.observed = true;

        self.observe_pods(naming.pods, at_ns);

        let nodes: HashMap<[u8; 16], NodeAddress> = naming
            .node_addresses
            .iter()
            .map(|address| (addr::to_bytes(*address), NodeAddress))
            .collect();
        replace(&mut self.nodes, nodes, at_ns, &mut self.serial);
        replace(&mut self.services, naming.services, at_ns, &mut self.serial);
        replace(&mut self.rules, naming.rules, at_ns, &mut self.serial);
        replace(
            &mut self.endpoints,
            naming.endpoints,
            at_ns,
            &mut self.serial,
        );

        if let Some(before) = at_ns.checked_sub(self.retention_ns) {
            self.pods.prune(before);
            self.nodes.prune(before);
            self.services.prune(before);
            self.rules.prune(before);
            self.endpoints.prune(before);
        }
    }

    /// Applies the pod changes of `pods` to the claims, and sets the history of every address
    /// whose claims changed to its last claimant from `at_ns` on (or ends it).
    fn observe_pods(&mut self, pods: PodChanges, at_ns: u64) {
        let mut changed: BTreeSet<[u8; 16]> = BTreeSet::new();
        let mut dropped = false;
        for (key, update) in pods {
            let old = self.pod_claims.remove(&key);
            let new = update.map(|claims| kept(claims, old.as_ref(), &mut self.label_sets));
            dropped |= old.is_some();
            if let Some(old) = &old {
                for address in &old.addresses {
                    if new
                        .as_ref()
                        .is_some_and(|new| new.addresses.contains(address))
                    {
                        continue;
                    }
                    if let Some(claimants) = self.claimants.get_mut(address) {
                        claimants.retain(|claimant| !is_pod(claimant, &key));
                        if claimants.is_empty() {
                            self.claimants.remove(address);
                        }
                    }
                    changed.insert(*address);
                }
            }
            let Some(new) = new else {
                continue;
            };
            for address in &new.addresses {
                let claimants = self.claimants.entry(*address).or_default();
                match claimants.iter_mut().find(|claimant| is_pod(claimant, &key)) {
                    Some(claimant) => {
                        if !Arc::ptr_eq(claimant, &new.identity) {
                            *claimant = Arc::clone(&new.identity);
                            changed.insert(*address);
                        }
                    }
                    None => {
                        claimants.push(Arc::clone(&new.identity));
                        changed.insert(*address);
                    }
                }
            }
            self.pod_claims.insert(key, new);
        }
        for address in &changed {
            match self
                .claimants
                .get(address)
                .and_then(|claimants| claimants.last())
            {
                Some(holder) => self
                    .pods
                    .set(address, Arc::clone(holder), at_ns, &mut self.serial),
                None => self.pods.end(address, at_ns),
            }
        }
        if dropped {
            // Label maps no identity holds any more (the history's pruned spans let go of
            // theirs later: a later sweep drops them).
            self.label_sets
                .retain(|labels| Arc::strong_count(labels) > 1);
        }
    }

    /// Records the endpoints' host interfaces, by interface index, as the agent found them on
    /// the node from `at_ns` on (ns of `CLOCK_MONOTONIC`). What the first call records is
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
    /// index `ifindex` (the one the packet was seen on, or for a report of a map entry the one
    /// its flow is keyed by), or, for an event that names none (0), the interface endpoint
    /// `endpoint` was compiled on.
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
    pub fn rule_at(&self, rule_id: u32, ts_ns: u64) -> Option<Held<NamedRule>> {
        self.rules.at(&rule_id, ts_ns)
    }

    /// The NetworkPolicies (`namespace/name`) that isolated endpoint `endpoint` in
    /// `direction` at `ts_ns`, with the serial of what the compilation said of the endpoint
    /// then; `None` when nothing is known of it.
    pub fn isolating_at(
        &self,
        endpoint: u32,
        direction: Direction,
        ts_ns: u64,
    ) -> Option<(u64, Arc<[String]>)> {
        let facts = self.endpoints.at(&endpoint, ts_ns)?;
        let slot = match direction {
            Direction::Ingress => 0,
            Direction::Egress => 1,
        };
        Some((facts.serial, Arc::clone(&facts.value.isolating[slot])))
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

/// `claims` as kept: the identity of `old` (what the pod claimed before) when equal, so that
/// the claims and the history share one, and else one whose label map is shared with the
/// identities that have the same.
fn kept(claims: PodClaims, old: Option<&PodClaims>, label_sets: &mut LabelSets) -> PodClaims {
    match old {
        Some(old) if old.identity == claims.identity => PodClaims {
            identity: Arc::clone(&old.identity),
            addresses: claims.addresses,
        },
        _ => claims.sharing(label_sets),
    }
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
        history.set(&key, Arc::new(value), at_ns, serial);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pod of namespace `default` with `labels`, listing `ips`: its name and claims (none
    /// for a hostNetwork pod, as the agent builds them).
    fn pod(
        name: &str,
        labels: &[(&str, &str)],
        ips: &[&str],
        host_network: bool,
    ) -> (String, Option<PodClaims>) {
        let identity = PodIdentity {
            namespace: "default".to_owned(),
            name: name.to_owned(),
            workload: format!("Pod/{name}"),
            labels: Arc::new(self::labels(labels)),
        };
        let addresses = ips.iter().map(|ip| ip.parse().unwrap());
        let claims = (!host_network)
            .then(|| PodClaims::new(identity, addresses))
            .flatten();
        (name.to_owned(), claims)
    }

    /// The changes that give `changed` as they are now and `gone` as deleted.
    fn updates(changed: &[&(String, Option<PodClaims>)], gone: &[&str]) -> PodChanges {
        let mut pending = PendingPods::default();
        for (name, claims) in changed {
            pending.add(("default".to_owned(), name.clone()), claims.clone());
        }
        for name in gone {
            pending.add(("default".to_owned(), (*name).to_owned()), None);
        }
        pending.take()
    }

    fn observe(identities: &mut Identities, pods: &PodChanges, at_ns: u64) {
        let naming = Naming {
            pods: pods.clone(),
            ..Naming::default()
        };
        identities.observe(naming, at_ns);
    }

    /// The pod that held `ip` at `ts_ns`: its serial, name and labels.
    fn held(
        identities: &Identities,
        ip: &str,
        ts_ns: u64,
    ) -> Option<(u64, String, BTreeMap<String, String>)> {
        let address = addr::to_bytes(ip.parse().unwrap());
        let holding = identities.holder_at(&address, ts_ns)?;
        match holding.holder {
            Holder::Pod(pod) => Some((holding.serial, pod.name.clone(), (*pod.labels).clone())),
            Holder::Node => panic!("{ip} is no node address"),
        }
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn a_relabelled_pod_opens_a_span_only_for_its_addresses() {
        let mut identities = Identities::default();
        let web = pod("web", &[("app", "web")], &["10.0.0.1", "fd00::1"], false);
        let db = pod("db", &[("app", "db")], &["10.0.0.2"], false);
        // The first observe is recorded as holding since before the collector started.
        observe(&mut identities, &updates(&[&web, &db], &[]), 1_000);
        assert_eq!(identities.pod_spans(), 3);

        let relabelled = pod(
            "web",
            &[("app", "web"), ("tier", "front")],
            &["10.0.0.1", "fd00::1"],
            false,
        );
        observe(&mut identities, &updates(&[&relabelled], &[]), 100);
        assert_eq!(identities.pod_spans(), 5, "one new span per address of web");

        for ip in ["10.0.0.1", "fd00::1"] {
            let (before, name, old) = held(&identities, ip, 50).unwrap();
            assert_eq!((name.as_str(), old), ("web", labels(&[("app", "web")])));
            let (after, _, new) = held(&identities, ip, 150).unwrap();
            assert_eq!(new, labels(&[("app", "web"), ("tier", "front")]));
            assert_ne!(before, after, "{ip}: a new span");
        }
        // The first observe holds since before the collector started.
        assert!(held(&identities, "10.0.0.1", 0).is_some());
        let (before, name, _) = held(&identities, "10.0.0.2", 50).unwrap();
        let (after, _, _) = held(&identities, "10.0.0.2", 150).unwrap();
        assert_eq!((name.as_str(), before), ("db", after), "db's span goes on");
    }

    #[test]
    fn a_deleted_pod_ends_its_addresses() {
        let mut identities = Identities::default();
        let web = pod("web", &[("app", "web")], &["10.0.0.1", "fd00::1"], false);
        let db = pod("db", &[("app", "db")], &["10.0.0.2"], false);
        observe(&mut identities, &updates(&[&web, &db], &[]), 0);
        observe(&mut identities, &updates(&[], &["web"]), 100);

        for ip in ["10.0.0.1", "fd00::1"] {
            assert_eq!(held(&identities, ip, 50).unwrap().1, "web");
            assert_eq!(held(&identities, ip, 150), None, "{ip} ended");
        }
        assert_eq!(held(&identities, "10.0.0.2", 150).unwrap().1, "db");
        assert_eq!(identities.pod_spans(), 3);
        // A pod unknown to the collector is gone: nothing to end.
        observe(&mut identities, &updates(&[], &["never-seen"]), 200);
        assert_eq!(identities.pod_spans(), 3);
    }

    #[test]
    fn a_reused_address_is_held_by_the_newer_claimant_then_the_older_again() {
        let mut identities = Identities::default();
        let job = pod("job", &[("app", "job")], &["10.0.0.1"], false);
        observe(&mut identities, &updates(&[&job], &[]), 0);
        // job finished but is still listed; web gets its address.
        let web = pod("web", &[("app", "web")], &["10.0.0.1"], false);
        observe(&mut identities, &updates(&[&web], &[]), 100);
        // job is given again (a relist, or a status update): web keeps the address.
        let job_again = pod("job", &[("app", "job")], &["10.0.0.1"], false);
        observe(&mut identities, &updates(&[&job_again, &web], &[]), 150);
        // web goes: job, still listed, holds the address again.
        observe(&mut identities, &updates(&[], &["web"]), 200);

        let (first, name, _) = held(&identities, "10.0.0.1", 50).unwrap();
        assert_eq!(name, "job");
        let (reused, name, _) = held(&identities, "10.0.0.1", 120).unwrap();
        assert_eq!(name, "web");
        assert_eq!(held(&identities, "10.0.0.1", 180).unwrap().0, reused);
        let (again, name, _) = held(&identities, "10.0.0.1", 250).unwrap();
        assert_eq!(name, "job");
        assert!(first != reused && reused != again && again != first);

        // job goes too: the address ends.
        observe(&mut identities, &updates(&[], &["job"]), 300);
        assert_eq!(held(&identities, "10.0.0.1", 350), None);
        assert_eq!(identities.pod_spans(), 3);
    }

    #[test]
    fn an_unchanged_pod_observed_again_opens_no_span() {
        let mut identities = Identities::default();
        let web = pod("web", &[("app", "web")], &["10.0.0.1"], false);
        observe(&mut identities, &updates(&[&web], &[]), 0);
        let (serial, _, _) = held(&identities, "10.0.0.1", 50).unwrap();
        // The same pod, and an equal one (a new object from the API server).
        observe(&mut identities, &updates(&[&web], &[]), 100);
        let equal = pod("web", &[("app", "web")], &["10.0.0.1"], false);
        observe(&mut identities, &updates(&[&equal], &[]), 200);
        assert_eq!(identities.pod_spans(), 1);
        assert_eq!(held(&identities, "10.0.0.1", 250).unwrap().0, serial);
        // The claims and the span share one identity.
        let Holder::Pod(holder) = identities
            .holder_at(&addr::to_bytes("10.0.0.1".parse().unwrap()), 250)
            .unwrap()
            .holder
        else {
            panic!("a pod holds 10.0.0.1");
        };
        let key = ("default".to_owned(), "web".to_owned());
        assert!(Arc::ptr_eq(&holder, &identities.pod_claims[&key].identity));
        // Nothing changed: nothing to do.
        observe(&mut identities, &PodChanges::new(), 300);
        assert_eq!(held(&identities, "10.0.0.1", 350).unwrap().0, serial);
        assert_eq!(identities.pod_spans(), 1);
    }

    #[test]
    fn a_host_network_pod_claims_nothing() {
        let mut identities = Identities::default();
        let agent = pod("agent", &[("app", "agent")], &["10.0.0.9"], true);
        let web = pod("web", &[("app", "web")], &["10.0.0.1"], false);
        observe(&mut identities, &updates(&[&agent, &web], &[]), 0);
        assert_eq!(held(&identities, "10.0.0.9", 50), None);

        // A hostNetwork pod listing a pod's address takes nothing from it.
        let on_web = pod("on-web", &[("app", "agent")], &["10.0.0.1"], true);
        observe(&mut identities, &updates(&[&on_web], &[]), 100);
        assert_eq!(held(&identities, "10.0.0.1", 150).unwrap().1, "web");

        // A pod that turns out to be hostNetwork gives up what it claimed.
        let web_on_host = pod("web", &[("app", "web")], &["10.0.0.1"], true);
        observe(&mut identities, &updates(&[&web_on_host], &[]), 200);
        assert_eq!(held(&identities, "10.0.0.1", 250), None);
        assert_eq!(identities.pod_spans(), 1);
    }

    #[test]
    fn node_addresses_name_the_node() {
        let mut identities = Identities::default();
        let web = pod("web", &[("app", "web")], &["10.0.0.1"], false);
        let node: IpAddr = "192.168.1.10".parse().unwrap();
        let naming = Naming {
            pods: updates(&[&web], &[]),
            node_addresses: vec![node],
            ..Naming::default()
        };
        identities.observe(naming, 0);
        let holding = identities.holder_at(&addr::to_bytes(node), 50).unwrap();
        assert_eq!(holding.holder, Holder::Node);
        identities.observe(Naming::default(), 100);
        assert!(identities.holder_at(&addr::to_bytes(node), 150).is_none());
        assert_eq!(held(&identities, "10.0.0.1", 150).unwrap().1, "web");
    }
}
