//! Peer identities: every address a policy can name gets the identity of what policy can tell
//! about it, and the node-wide peer trie maps address prefixes to identities.
//!
//! How an address becomes an identity:
//! 1. The universe (`universe`, kept policy by policy). Every distinct pod selector of a rule's
//!    peers (`podSelector`, `namespaceSelector` or both, with the policy's namespace when it has
//!    no namespace selector) is a [`PeerSelector`] with an index it keeps while rules refer to
//!    it; every ipBlock's cidr and excepts is a *region* prefix, and so are `0.0.0.0/0` and
//!    `::/0`, so that every address has one; the names of the named ports egress rules use are
//!    collected too (they resolve against the peer pod).
//! 2. Regions. An address's region is the longest region prefix that contains it. Whether an
//!    ipBlock covers an address depends only on its region, because every cidr and except is a
//!    region prefix itself.
//! 3. Pods (and nodes, kept as pods of no namespace: a `nodes` peer's selector looks only
//!    there). Pods are grouped by namespace and labels first (pods of one workload share them),
//!    each group is matched against the selectors once, and each pod address gets the identity
//!    keyed by (selectors that match it, its region, its named ports that egress rules use).
//!    Pods that no selector matches and whose named ports no rule uses share their region's
//!    identity. So identities grow with the distinct ways policy sees pods, not with pods.
//! 4. ClusterIPs. Each Service address gets an identity of its own whose fallback is its
//!    region's identity: a policy set has an entry for it only where the Service's backends
//!    decide otherwise than the address itself would (see `vips`).
//!
//! The trie holds every region prefix, every ClusterIP and every pod address (the longest
//! prefix wins, so a pod's own entry shadows the region around it). Ids are stable across
//! compilations (by the identity's canonical form), so unchanged identities keep their
//! entries.
//!
//! [`Peers`] is kept between compilations and changed by difference ([`Peers::update`]): while
//! the regions and the named ports of egress rules stay the same and the prior ids are the ones
//! it gave, only the pods that changed and the ClusterIPs that came or went are classified
//! again, and the ClusterIPs of the Services that changed. A policy change that adds or removes
//! selectors tries only the new selectors on each class, and only on those of the namespaces
//! they look in, and takes the gone ones from the classes (`reselect`); a namespace
//! that changed has its classes matched again (`rematch`); the pods of the classes whose
//! matches changed take new identities (`move_pods`). An identity lives while an address has
//! it (reference counts) and a class while a pod is in it; the trie's entries and the identity
//! of every address are updated for the addresses that moved, which the pass then hands on
//! (`revisions` compares only those). Anything else (the first pass, other regions or named
//! ports, other prior ids) builds the table again from the whole cluster, the same way.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Weak};

// Keyed with foldhash: the address and identity tables are looked up for every pod of a
// rebuild and for every backend of every Service in each pass.
use foldhash::HashMap;

use tollgate_schemas::{PeerIdentity, PeerKey};

use super::cidr::Prefix;
use super::cluster::{Cluster, NODE_SCOPE, PodInfo};
use super::ids;
use super::policy::Policy;
use super::ports::NamedPort;
use super::selector::Selector;
use super::services::{self, Services};
use super::universe::{Universe, UniverseChange};
use crate::desired::{Ids, PeerEntryKey};

/// Which namespaces a [`PeerSelector`] looks in.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Namespaces {
    /// The policy's own namespace (no `namespaceSelector`).
    Own(String),
    /// Those whose labels match.
    Matching(Selector),
    /// No namespace: nodes (a ClusterNetworkPolicy's `nodes` peer; kept in `NODE_SCOPE`).
    Nodes,
}

/// A distinct pod selector of some rule's peers.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct PeerSelector {
    /// Where.
    pub(crate) namespaces: Namespaces,
    /// Which pods there (`None`: all).
    pub(crate) pods: Option<Selector>,
}

impl PeerSelector {
    /// The selector of a `Pods` peer of a policy in `namespace`.
    pub(crate) fn of(
        namespace: &str,
        namespaces: Option<&Selector>,
        pods: Option<&Selector>,
    ) -> Self {
        PeerSelector {
            namespaces: match namespaces {
                None => Namespaces::Own(namespace.to_owned()),
                Some(selector) => Namespaces::Matching(selector.clone()),
            },
            pods: pods.cloned(),
        }
    }

    /// The selector of a `nodes` peer.
    pub(crate) fn nodes(nodes: &Selector) -> Self {
        PeerSelector {
            namespaces: Namespaces::Nodes,
            pods: Some(nodes.clone()),
        }
    }

    /// Whether it looks in `namespace`, whose labels are `namespace_labels` (`None`: the
    /// cluster has no such namespace).
    fn looks_in(
        &self,
        namespace: &str,
        namespace_labels: Option<&BTreeMap<String, String>>,
    ) -> bool {
        match &self.namespaces {
            Namespaces::Own(own) => own == namespace,
            // The node scope is no namespace: it has no labels to match.
            Namespaces::Matching(namespaces) => {
                namespace_labels.is_some_and(|ns| namespaces.matches(ns))
            }
            Namespaces::Nodes => namespace == NODE_SCOPE,
        }
    }

    /// Whether it selects pods with `labels` (in a namespace it looks in).
    fn selects(&self, labels: &BTreeMap<String, String>) -> bool {
        self.pods.as_ref().is_none_or(|pods| pods.matches(labels))
    }

    /// Canonical form, the key of its stable id.
    pub(crate) fn canonical(&self) -> String {
        format!("{:?} {:?}", self.namespaces, self.pods)
    }
}

/// What an identity stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Pod addresses (and, when `selectors` and `named` are empty, the other addresses of the
    /// region too).
    Pods {
        /// Indices into [`Peers::selectors`] of the selectors that match these pods.
        selectors: Vec<usize>,
        /// Their named ports that egress rules use.
        named: Vec<NamedPort>,
    },
    /// A Service's ClusterIP.
    ClusterIp(IpAddr),
}

/// One peer identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Identity {
    /// Its id in the maps (never 0).
    pub(crate) id: u32,
    /// The region prefix of its addresses.
    pub(crate) region: Prefix,
    /// What it stands for.
    pub(crate) kind: Kind,
}

impl Identity {
    /// Whether rule peers select it by address (pods and regions; a ClusterIP only counts
    /// through its backends).
    pub(crate) fn is_address(&self) -> bool {
        matches!(self.kind, Kind::Pods { .. })
    }

    /// The named ports egress rules resolve against: the pods' own (none for a region's other
    /// addresses, so a named port allows them nothing).
    pub(crate) fn named_ports(&self) -> &[NamedPort] {
        match &self.kind {
            Kind::Pods { named, .. } => named,
            Kind::ClusterIp(_) => &[],
        }
    }
}

/// An object's (namespace, name).
type NamedKey = (String, String);

/// Key of an identity before it has an id.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    selectors: Vec<usize>,
    region: Prefix,
    named: Vec<NamedPort>,
    cluster_ip: Option<IpAddr>,
}

impl Key {
    /// The key of region `region`'s identity.
    fn region(region: Prefix) -> Key {
        Key {
            selectors: Vec::new(),
            region,
            named: Vec::new(),
            cluster_ip: None,
        }
    }
}

/// What the table keeps of one identity besides the [`Identity`] itself.
#[derive(Debug, Clone, Default)]
struct Slot {
    /// Its key; `None` for a free slot.
    key: Option<Key>,
    /// Its canonical form (see [`canonical`]).
    canonical: String,
    /// Addresses that have it (pod addresses and ClusterIPs; one more for a region's, which
    /// lives as long as the universe).
    refs: usize,
}

/// Pods of one namespace with the same labels and named ports: policy sees them alike.
#[derive(Debug, Clone)]
struct Class {
    namespace: String,
    /// Keep the allocations of the shared label map and named ports, whose addresses are the
    /// class's key, from being reused by other values while the class lasts.
    labels: Weak<BTreeMap<String, String>>,
    named_ports: Weak<[NamedPort]>,
    /// Indices of the selectors that match the class, in order.
    matched: Vec<usize>,
    /// Its named ports that egress rules use, in order.
    named: Vec<NamedPort>,
    /// Pods in it.
    pods: usize,
}

/// A classified pod: its class and the identity of each of its addresses.
#[derive(Debug, Clone)]
struct Classified {
    class: usize,
    addresses: Vec<(IpAddr, usize)>,
}

/// Every identity of the cluster and the peer trie that names them, kept between
/// compilations (see the module doc).
#[derive(Debug, Clone, Default)]
pub(crate) struct Peers {
    /// Whether the table was built once.
    built: bool,
    /// Moves whenever an identity is added or removed (or the table is built again): while
    /// it stays, every identity keeps its index and what it stands for.
    pub(crate) generation: u64,
    /// What the policies' rules refer to: the distinct selectors of rule peers (by index),
    /// the regions and the named ports of egress rules.
    universe: Universe,
    /// Stable ids of the selectors, by canonical form (for [`crate::desired::Ids`]).
    pub(crate) selector_ids: Arc<BTreeMap<String, u32>>,
    /// The stable id of each selector, by index.
    selector_stable: Vec<u32>,
    /// Selectors of the policy's own namespace, by that namespace; the others (with a
    /// namespace selector) are tried on every class.
    own_selectors: HashMap<String, Vec<usize>>,
    namespace_selectors: Vec<usize>,
    /// Every identity, by index; a free slot's entry is stale and never referred to.
    pub(crate) identities: Vec<Identity>,
    slots: Vec<Slot>,
    free_slots: Vec<usize>,
    by_key: HashMap<Key, usize>,
    /// Identities whose last reference went in this pass (freed at its end unless taken
    /// again).
    released: Vec<usize>,
    /// Stable ids of the identities, by canonical form.
    pub(crate) identity_ids: Arc<BTreeMap<String, u32>>,
    /// Per selector index, the identities it matches.
    pub(crate) by_selector: Vec<Vec<usize>>,
    /// Identity of each region prefix.
    pub(crate) by_region: HashMap<Prefix, usize>,
    /// Identity of each pod address (of the last pod by key when two have it).
    pub(crate) by_address: HashMap<IpAddr, usize>,
    /// Identity of each ClusterIP.
    pub(crate) by_cluster_ip: HashMap<IpAddr, usize>,
    /// The Services whose ClusterIPs those are.
    services: Option<Services>,
    /// The ClusterIPs of each of them that has any.
    service_ips: HashMap<(String, String), Vec<IpAddr>>,
    /// How many of them have each ClusterIP.
    cluster_ip_refs: HashMap<IpAddr, usize>,
    /// Classes by slot, and by the addresses of their labels and named ports.
    classes: Vec<Option<Class>>,
    free_classes: Vec<usize>,
    class_index: HashMap<(usize, usize), Vec<usize>>,
    /// Every networked pod, by key.
    pods: HashMap<String, Classified>,
    /// Pod addresses over all pods (an address two pods have counts twice).
    pod_addresses: usize,
    /// Region prefixes, for the longest match.
    regions: Regions,
    /// The peer trie: every entry, the longest prefix winning at lookup.
    pub(crate) trie: BTreeMap<PeerEntryKey, PeerIdentity>,
    /// The region prefixes of the trie.
    pub(crate) region_keys: BTreeSet<PeerEntryKey>,
    /// The identity of every pod address and ClusterIP in the trie.
    pub(crate) peer_ids: Arc<BTreeMap<IpAddr, PeerIdentity>>,
}

/// Region prefixes, for longest-prefix matches of addresses.
#[derive(Debug, Clone, Default)]
struct Regions {
    prefixes: HashSet<Prefix>,
    lengths: Vec<u8>,
}

impl Regions {
    fn new(prefixes: HashSet<Prefix>) -> Regions {
        let lengths: BTreeSet<u8> = prefixes.iter().map(|p| p.len()).collect();
        Regions {
            prefixes,
            lengths: lengths.into_iter().rev().collect(),
        }
    }

    /// The longest region prefix that contains `prefix` (always one: `0.0.0.0/0` and `::/0`
    /// are regions).
    fn of(&self, prefix: Prefix) -> Prefix {
        self.lengths
            .iter()
            .filter(|len| **len <= prefix.len())
            .map(|len| prefix.truncate(*len))
            .find(|candidate| self.prefixes.contains(candidate))
            .unwrap_or(Prefix::ALL_V6)
    }
}

/// The trie's key of `prefix`.
fn entry_key(prefix: Prefix) -> PeerEntryKey {
    PeerEntryKey {
        prefix_len: u32::from(prefix.len()),
        key: PeerKey {
            addr: prefix.bytes(),
        },
    }
}

/// What changed for the identities since the last pass.
#[derive(Debug, Clone, Default)]
pub(crate) struct Changes {
    /// Pods (by key) that were added, changed or removed.
    pub(crate) pods: BTreeSet<String>,
    /// Namespaces that were listed, changed or removed.
    pub(crate) namespaces: BTreeSet<String>,
}

impl Peers {
    /// Brings the table up to date with `cluster` as `policies` (of which those `changed`
    /// since the last pass; every one before the first) and `services` (of which those
    /// `services_changed` since the last pass) see it, ids kept from `prior`, after `changes`.
    /// Returns the addresses whose identity may differ from `prior`'s (`None`: any may).
    pub(crate) fn update(
        &mut self,
        cluster: &Cluster,
        (policies, changed): (&BTreeMap<NamedKey, Policy>, &BTreeSet<NamedKey>),
        (services, services_changed): (&Services, &BTreeSet<NamedKey>),
        prior: &Ids,
        changes: &Changes,
    ) -> Option<BTreeSet<IpAddr>> {
        let universe = self.universe.update(policies, changed);
        let by_difference = self.built
            && !universe.regions_or_names
            && prior.selectors == self.selector_ids
            && prior.identities == self.identity_ids
            && prior.regions == self.region_keys
            && prior.peer_ids == self.peer_ids;
        if !by_difference {
            self.universe.commit(&universe.gone);
            self.rebuild(cluster, services, prior);
            return None;
        }
        let reserved: BTreeSet<u32> = self.identity_ids.values().copied().collect();
        let mut touched = BTreeSet::new();
        // Pods first (classified by the table's universe): then every class left has pods in
        // the cluster, whose labels it can read to be matched again.
        let mut memo = HashMap::default();
        for key in &changes.pods {
            if let Some(old) = self.pods.remove(key) {
                self.pod_addresses -= old.addresses.len();
                for (ip, identity) in old.addresses {
                    self.release(identity);
                    touched.insert(ip);
                }
                self.leave_class(old.class);
            }
            if let Some(pod) = cluster
                .pods
                .get(key)
                .filter(|pod| pod.has_address_identity())
            {
                self.add_pod(cluster, pod, &mut memo, Some(&mut touched));
            }
        }
        let mut moved = match universe.same_selectors() {
            true => HashSet::new(),
            false => self.reselect(cluster, &universe),
        };
        if !changes.namespaces.is_empty() {
            moved.extend(self.rematch(cluster, &changes.namespaces));
        }
        self.move_pods(cluster, &moved, &mut touched);
        if !self
            .services
            .as_ref()
            .is_some_and(|kept| Arc::ptr_eq(kept, services))
        {
            self.set_cluster_ips(services, Some(services_changed), &mut touched);
        }
        for ip in &touched {
            self.elect(cluster, *ip);
        }
        self.free_released();
        self.assign_new_ids(&reserved);
        for ip in &touched {
            self.write_entry(*ip);
        }
        self.index_selectors();
        Some(touched)
    }

    /// Builds the table from the whole cluster (and the universe as it is).
    fn rebuild(&mut self, cluster: &Cluster, services: &Services, prior: &Ids) {
        *self = Peers {
            built: true,
            generation: self.generation + 1,
            universe: std::mem::take(&mut self.universe),
            ..Peers::default()
        };
        self.regions = Regions::new(self.universe.regions().collect());
        self.index_universe(prior);

        let mut sorted_regions: Vec<Prefix> = self.regions.prefixes.iter().copied().collect();
        sorted_regions.sort();
        for region in &sorted_regions {
            let index = self.intern(Key::region(*region));
            self.slots[index].refs += 1;
            self.by_region.insert(*region, index);
        }
        self.set_cluster_ips(services, None, &mut BTreeSet::new());
        let mut memo = HashMap::default();
        for pod in cluster
            .pods
            .values()
            .filter(|pod| pod.has_address_identity())
        {
            // In key order: the last pod wins an address two pods claim.
            self.add_pod(cluster, pod, &mut memo, None);
        }

        let live: Vec<usize> = self.live().collect();
        self.identity_ids = Arc::new(ids::assign(
            &prior.identities,
            live.iter().map(|i| self.slots[*i].canonical.clone()),
        ));
        for index in live {
            self.identities[index].id = self.identity_ids[&self.slots[index].canonical];
        }
        // Built at once; of two entries for one key the last is kept (a pod's address over
        // a ClusterIP, an address over a region prefix that is the same host), as
        // `write_entry` decides.
        let mut cluster_ips: Vec<(IpAddr, PeerIdentity)> = self
            .by_cluster_ip
            .iter()
            .map(|(ip, index)| (*ip, self.cluster_ip_value(*index)))
            .collect();
        cluster_ips.sort_unstable_by_key(|(ip, _)| *ip);
        let mut pod_addresses: Vec<(IpAddr, PeerIdentity)> = self
            .by_address
            .iter()
            .map(|(ip, index)| (*ip, self.pod_value(*index)))
            .collect();
        pod_addresses.sort_unstable_by_key(|(ip, _)| *ip);
        self.peer_ids = Arc::new(cluster_ips.into_iter().chain(pod_addresses).collect());
        self.region_keys = sorted_regions.iter().map(|r| entry_key(*r)).collect();
        self.trie = sorted_regions
            .iter()
            .map(|region| (entry_key(*region), self.pod_value(self.by_region[region])))
            .chain(
                self.peer_ids
                    .iter()
                    .map(|(ip, value)| (entry_key(Prefix::host(*ip)), *value)),
            )
            .collect();
        self.index_selectors();
    }

    /// Indexes the universe's selectors: their ids (kept from `prior`), and which namespaces
    /// they look in.
    fn index_universe(&mut self, prior: &Ids) {
        let canonicals: Vec<(usize, String)> = self
            .universe
            .selectors()
            .map(|(index, selector)| (index, selector.canonical()))
            .collect();
        self.selector_ids = Arc::new(ids::assign(
            &prior.selectors,
            canonicals.iter().map(|(_, canonical)| canonical.clone()),
        ));
        self.selector_stable = vec![0; self.universe.selector_slots()];
        for (index, canonical) in &canonicals {
            self.selector_stable[*index] = self.selector_ids[canonical];
        }
        self.own_selectors.clear();
        self.namespace_selectors.clear();
        let indices: Vec<usize> = canonicals.iter().map(|(index, _)| *index).collect();
        self.list_selectors(&indices);
    }

    /// Adds the selectors `indices` to the lists of where they look.
    fn list_selectors(&mut self, indices: &[usize]) {
        for index in indices {
            match &self.universe.selector(*index).namespaces {
                Namespaces::Own(namespace) => self
                    .own_selectors
                    .entry(namespace.clone())
                    .or_default()
                    .push(*index),
                Namespaces::Matching(_) | Namespaces::Nodes => {
                    self.namespace_selectors.push(*index)
                }
            }
        }
    }

    /// Takes the universe's `change` of selectors (the regions and named ports stayed): the
    /// new selectors get ids (as `ids::assign` would give, the prior ids being the table's),
    /// the gone ones are forgotten, and each class is matched against the new selectors and
    /// loses the gone ones. Identities keep their keys: every pod whose identity has a gone
    /// selector moves. Returns the classes whose matches changed: their pods are to move
    /// ([`Peers::move_pods`]).
    fn reselect(&mut self, cluster: &Cluster, change: &UniverseChange) -> HashSet<usize> {
        let gone: HashSet<usize> = change.gone.iter().copied().collect();
        let reserved: HashSet<u32> = self.selector_ids.values().copied().collect();
        for index in &change.gone {
            let canonical = self.universe.selector(*index).canonical();
            Arc::make_mut(&mut self.selector_ids).remove(&canonical);
            self.selector_stable[*index] = 0;
        }
        self.own_selectors.retain(|_, indices| {
            indices.retain(|index| !gone.contains(index));
            !indices.is_empty()
        });
        self.namespace_selectors
            .retain(|index| !gone.contains(index));
        self.universe.commit(&change.gone);
        let mut new: Vec<(String, usize)> = change
            .new
            .iter()
            .map(|index| (self.universe.selector(*index).canonical(), *index))
            .collect();
        new.sort_unstable();
        self.selector_stable
            .resize(self.universe.selector_slots(), 0);
        for ((canonical, index), id) in new.into_iter().zip(ids::fresh(|id| reserved.contains(&id)))
        {
            Arc::make_mut(&mut self.selector_ids).insert(canonical, id);
            self.selector_stable[index] = id;
        }
        self.list_selectors(&change.new);

        // Which new selectors look in each namespace (by namespace labels), found once per
        // namespace.
        let mut looking: HashMap<String, Vec<usize>> = HashMap::default();
        let mut moved: HashSet<usize> = HashSet::new();
        for index in 0..self.classes.len() {
            let Some(class) = &self.classes[index] else {
                continue;
            };
            let lost = class.matched.iter().any(|selector| gone.contains(selector));
            if !looking.contains_key(&class.namespace) {
                let namespace_labels = cluster
                    .namespaces
                    .get(&class.namespace)
                    .map(|ns| &ns.labels);
                let here = change
                    .new
                    .iter()
                    .copied()
                    .filter(|selector| {
                        self.universe
                            .selector(*selector)
                            .looks_in(&class.namespace, namespace_labels)
                    })
                    .collect();
                looking.insert(class.namespace.clone(), here);
            }
            let candidates = &looking[&class.namespace];
            if !lost && candidates.is_empty() {
                continue;
            }
            let labels = class.labels.upgrade().expect("a live class's labels");
            let mut matched: Vec<usize> = class
                .matched
                .iter()
                .copied()
                .filter(|selector| !gone.contains(selector))
                .collect();
            let before = matched.len();
            matched.extend(
                candidates
                    .iter()
                    .copied()
                    .filter(|selector| self.universe.selector(*selector).selects(&labels)),
            );
            if lost || matched.len() > before {
                moved.insert(index);
            }
            matched.sort_unstable();
            self.classes[index].as_mut().expect("a live class").matched = matched;
        }
        moved
    }

    /// Matches the classes of `namespaces` (whose labels may have changed) against every
    /// selector again. Returns those whose matches changed.
    fn rematch(&mut self, cluster: &Cluster, namespaces: &BTreeSet<String>) -> HashSet<usize> {
        let mut moved = HashSet::new();
        for index in 0..self.classes.len() {
            let Some(class) = self.classes[index]
                .as_ref()
                .filter(|class| namespaces.contains(&class.namespace))
            else {
                continue;
            };
            let labels = class.labels.upgrade().expect("a live class's labels");
            let matched = self.matching(cluster, &class.namespace, &labels);
            let class = self.classes[index].as_mut().expect("a live class");
            if matched != class.matched {
                class.matched = matched;
                moved.insert(index);
            }
        }
        moved
    }

    /// The pods of the classes `moved` take the identities of their class's key now (their
    /// addresses go to `touched`). They are found among the pods of the classes' namespaces.
    fn move_pods(
        &mut self,
        cluster: &Cluster,
        moved: &HashSet<usize>,
        touched: &mut BTreeSet<IpAddr>,
    ) {
        if moved.is_empty() {
            return;
        }
        let namespaces: BTreeSet<&str> = moved
            .iter()
            .filter_map(|class| self.classes[*class].as_ref())
            .map(|class| class.namespace.as_str())
            .collect();
        let pods: Vec<String> = namespaces
            .into_iter()
            .flat_map(|namespace| cluster.pods_of(namespace))
            .map(PodInfo::key)
            .filter(|key| {
                self.pods
                    .get(key)
                    .is_some_and(|classified| moved.contains(&classified.class))
            })
            .collect();
        let mut memo: HashMap<(usize, Prefix), usize> = HashMap::default();
        for key in pods {
            let classified = self.pods.get_mut(&key).expect("a classified pod");
            let class = classified.class;
            let addresses = std::mem::take(&mut classified.addresses);
            let mut now = Vec::with_capacity(addresses.len());
            for (ip, old) in addresses {
                self.release(old);
                let region = self.identities[old].region;
                let identity = self.take_identity(class, region, &mut memo);
                now.push((ip, identity));
                touched.insert(ip);
            }
            self.pods.get_mut(&key).expect("a classified pod").addresses = now;
        }
    }

    /// Whether selector `index` matches pods with `labels` in `namespace`, whose own labels
    /// are `namespace_labels` (`None`: the cluster has no such namespace).
    fn matches(
        &self,
        index: usize,
        namespace: &str,
        namespace_labels: Option<&BTreeMap<String, String>>,
        labels: &BTreeMap<String, String>,
    ) -> bool {
        let selector = self.universe.selector(index);
        selector.looks_in(namespace, namespace_labels) && selector.selects(labels)
    }

    /// The trie's value for a pod address or region prefix of identity `index`.
    fn pod_value(&self, index: usize) -> PeerIdentity {
        PeerIdentity {
            id: self.identities[index].id,
            fallback: 0,
        }
    }

    /// The trie's value for ClusterIP identity `index`: it falls back to its region's.
    fn cluster_ip_value(&self, index: usize) -> PeerIdentity {
        let identity = &self.identities[index];
        PeerIdentity {
            id: identity.id,
            fallback: self.identities[self.by_region[&identity.region]].id,
        }
    }

    /// Classifies networked `pod` and counts its addresses' identities. Its addresses go to
    /// `touched` (for [`Peers::elect`] to decide); without `touched`, they have its
    /// identities (pods added in key order, the last wins).
    fn add_pod(
        &mut self,
        cluster: &Cluster,
        pod: &PodInfo,
        memo: &mut HashMap<(usize, Prefix), usize>,
        mut touched: Option<&mut BTreeSet<IpAddr>>,
    ) {
        let class = self.join_class(cluster, pod);
        let mut addresses = Vec::with_capacity(pod.ips.len());
        for ip in &pod.ips {
            let region = self.regions.of(Prefix::host(*ip));
            let identity = self.take_identity(class, region, memo);
            addresses.push((*ip, identity));
            match touched.as_deref_mut() {
                Some(touched) => {
                    touched.insert(*ip);
                }
                None => {
                    self.by_address.insert(*ip, identity);
                }
            }
        }
        self.pod_addresses += addresses.len();
        self.pods.insert(pod.key(), Classified { class, addresses });
    }

    /// The identity of one more address in `region` of a pod of `class`: its class's key
    /// (interned once per pass and class, in `memo`), with the address counted.
    fn take_identity(
        &mut self,
        class: usize,
        region: Prefix,
        memo: &mut HashMap<(usize, Prefix), usize>,
    ) -> usize {
        let identity = match memo.get(&(class, region)) {
            Some(identity) => *identity,
            None => {
                let class_of = self.classes[class].as_ref().expect("a live class");
                let identity = self.intern(Key {
                    selectors: class_of.matched.clone(),
                    region,
                    named: class_of.named.clone(),
                    cluster_ip: None,
                });
                memo.insert((class, region), identity);
                identity
            }
        };
        self.slots[identity].refs += 1;
        identity
    }

    /// The class of `pod`, which counts it.
    fn join_class(&mut self, cluster: &Cluster, pod: &PodInfo) -> usize {
        let address = (
            Arc::as_ptr(&pod.labels) as usize,
            Arc::as_ptr(&pod.named_ports) as *const () as usize,
        );
        let found = self.class_index.get(&address).and_then(|candidates| {
            candidates.iter().copied().find(|class| {
                self.classes[*class]
                    .as_ref()
                    .is_some_and(|c| c.namespace == pod.namespace)
            })
        });
        let class = match found {
            Some(class) => class,
            None => {
                let class = Class {
                    namespace: pod.namespace.clone(),
                    labels: Arc::downgrade(&pod.labels),
                    named_ports: Arc::downgrade(&pod.named_ports),
                    matched: self.matching_selectors(cluster, pod),
                    named: self.egress_named(pod),
                    pods: 0,
                };
                let index = match self.free_classes.pop() {
                    Some(index) => {
                        self.classes[index] = Some(class);
                        index
                    }
                    None => {
                        self.classes.push(Some(class));
                        self.classes.len() - 1
                    }
                };
                self.class_index.entry(address).or_default().push(index);
                index
            }
        };
        self.classes[class].as_mut().expect("a live class").pods += 1;
        class
    }

    /// A pod left `class`; the class goes with its last pod.
    fn leave_class(&mut self, class: usize) {
        let slot = &mut self.classes[class];
        let live = slot.as_mut().expect("a live class");
        live.pods -= 1;
        if live.pods > 0 {
            return;
        }
        let gone = slot.take().expect("a live class");
        let address = (
            gone.labels.as_ptr() as usize,
            gone.named_ports.as_ptr() as *const () as usize,
        );
        if let Some(candidates) = self.class_index.get_mut(&address) {
            candidates.retain(|c| *c != class);
            if candidates.is_empty() {
                self.class_index.remove(&address);
            }
        }
        self.free_classes.push(class);
    }

    /// The selectors (indices, in order) that match `pod`'s labels in its namespace.
    fn matching_selectors(&self, cluster: &Cluster, pod: &PodInfo) -> Vec<usize> {
        self.matching(cluster, &pod.namespace, &pod.labels)
    }

    /// The selectors (indices, in order) that match pods with `labels` in `namespace`.
    fn matching(
        &self,
        cluster: &Cluster,
        namespace: &str,
        labels: &BTreeMap<String, String>,
    ) -> Vec<usize> {
        let namespace_labels = cluster.namespaces.get(namespace).map(|ns| &ns.labels);
        // Only the selectors of this namespace and those with a namespace selector can match.
        let mut matched: Vec<usize> = self
            .own_selectors
            .get(namespace)
            .into_iter()
            .flatten()
            .chain(&self.namespace_selectors)
            .copied()
            .filter(|index| self.matches(*index, namespace, namespace_labels, labels))
            .collect();
        matched.sort_unstable();
        matched
    }

    /// `pod`'s named ports that egress rules use, in order.
    fn egress_named(&self, pod: &PodInfo) -> Vec<NamedPort> {
        let mut named: Vec<NamedPort> = pod
            .named_ports
            .iter()
            .filter(|p| self.universe.egress_name(&p.name, p.protocol))
            .cloned()
            .collect();
        named.sort_by(|a, b| (&a.name, a.protocol, a.port).cmp(&(&b.name, b.protocol, b.port)));
        named
    }

    /// Makes the ClusterIPs those of `services`, of which those `changed` (by namespace and
    /// name) changed since the table last saw them (`None`: any may have): each an identity
    /// of its own.
    fn set_cluster_ips(
        &mut self,
        services: &Services,
        changed: Option<&BTreeSet<NamedKey>>,
        touched: &mut BTreeSet<IpAddr>,
    ) {
        self.services = Some(Arc::clone(services));
        // The addresses whose Services may have changed.
        let mut candidates: BTreeSet<IpAddr> = BTreeSet::new();
        let changed: Vec<(&str, &str)> = match changed {
            Some(changed) => changed
                .iter()
                .map(|(namespace, name)| (namespace.as_str(), name.as_str()))
                .collect(),
            None => {
                self.service_ips.clear();
                self.cluster_ip_refs.clear();
                candidates.extend(self.by_cluster_ip.keys());
                services
                    .iter()
                    .map(|s| (s.namespace.as_str(), s.name.as_str()))
                    .collect()
            }
        };
        // New references first: an address that moves to another Service stays.
        let mut dropped = Vec::new();
        for key in changed {
            let ips = services::find(services, key.0, key.1)
                .map_or(Vec::new(), |service| service.cluster_ips.clone());
            for ip in &ips {
                *self.cluster_ip_refs.entry(*ip).or_default() += 1;
                candidates.insert(*ip);
            }
            let key = (key.0.to_owned(), key.1.to_owned());
            let old = match ips.is_empty() {
                true => self.service_ips.remove(&key),
                false => self.service_ips.insert(key, ips),
            };
            dropped.extend(old.into_iter().flatten());
        }
        for ip in dropped {
            candidates.insert(ip);
            let refs = self
                .cluster_ip_refs
                .get_mut(&ip)
                .expect("a counted ClusterIP");
            *refs -= 1;
            if *refs == 0 {
                self.cluster_ip_refs.remove(&ip);
            }
        }
        let (wanted, gone): (Vec<IpAddr>, Vec<IpAddr>) = candidates
            .into_iter()
            .partition(|ip| self.cluster_ip_refs.contains_key(ip));
        for ip in gone {
            if let Some(identity) = self.by_cluster_ip.remove(&ip) {
                self.release(identity);
                touched.insert(ip);
            }
        }
        for ip in wanted {
            if self.by_cluster_ip.contains_key(&ip) {
                continue;
            }
            let key = Key {
                cluster_ip: Some(ip),
                ..Key::region(self.regions.of(Prefix::host(ip)))
            };
            let identity = self.intern(key);
            self.slots[identity].refs += 1;
            self.by_cluster_ip.insert(ip, identity);
            touched.insert(ip);
        }
    }

    /// The identity of `key`, a new one (without an id yet) when there is none.
    fn intern(&mut self, key: Key) -> usize {
        if let Some(index) = self.by_key.get(&key) {
            return *index;
        }
        let canonical = canonical(&key, &self.selector_stable);
        let identity = Identity {
            id: 0,
            region: key.region,
            kind: match key.cluster_ip {
                Some(ip) => Kind::ClusterIp(ip),
                None => Kind::Pods {
                    selectors: key.selectors.clone(),
                    named: key.named.clone(),
                },
            },
        };
        let slot = Slot {
            key: Some(key.clone()),
            canonical,
            refs: 0,
        };
        self.generation += 1;
        let index = match self.free_slots.pop() {
            Some(index) => {
                self.identities[index] = identity;
                self.slots[index] = slot;
                index
            }
            None => {
                self.identities.push(identity);
                self.slots.push(slot);
                self.identities.len() - 1
            }
        };
        self.by_key.insert(key, index);
        index
    }

    /// One address no longer has `identity`.
    fn release(&mut self, identity: usize) {
        let slot = &mut self.slots[identity];
        slot.refs -= 1;
        if slot.refs == 0 {
            self.released.push(identity);
        }
    }

    /// Frees the identities no address has any more.
    fn free_released(&mut self) {
        for index in std::mem::take(&mut self.released) {
            let slot = &mut self.slots[index];
            if slot.refs > 0 || slot.key.is_none() {
                continue;
            }
            let key = slot.key.take().expect("a live slot");
            // A key left out when the selectors changed may equal another identity's.
            if self.by_key.get(&key) == Some(&index) {
                self.by_key.remove(&key);
            }
            Arc::make_mut(&mut self.identity_ids).remove(&slot.canonical);
            self.free_slots.push(index);
            self.generation += 1;
        }
    }

    /// Ids for the identities that have none, in canonical order: the smallest that neither
    /// an identity has nor the prior pass gave (`reserved`), as `ids::assign` does.
    fn assign_new_ids(&mut self, reserved: &BTreeSet<u32>) {
        let mut new: Vec<usize> = self
            .live()
            .filter(|index| self.identities[*index].id == 0)
            .collect();
        if new.is_empty() {
            return;
        }
        new.sort_by(|a, b| self.slots[*a].canonical.cmp(&self.slots[*b].canonical));
        for (index, id) in new.into_iter().zip(ids::fresh(|id| reserved.contains(&id))) {
            Arc::make_mut(&mut self.identity_ids).insert(self.slots[index].canonical.clone(), id);
            self.identities[index].id = id;
        }
    }

    /// Which identity address `ip` has now: that of the last pod by key that has it.
    fn elect(&mut self, cluster: &Cluster, ip: IpAddr) {
        let identity = cluster.pod_at(ip).and_then(|pod| {
            let classified = self.pods.get(&pod.key())?;
            let (_, identity) = classified.addresses.iter().find(|(a, _)| *a == ip)?;
            Some(*identity)
        });
        match identity {
            Some(identity) => self.by_address.insert(ip, identity),
            None => self.by_address.remove(&ip),
        };
    }

    /// Writes the trie's entry for address `ip` and its identity: its pod's, else its
    /// ClusterIP's (which falls back to its region's), else none (the region prefix itself
    /// when it is one).
    fn write_entry(&mut self, ip: IpAddr) {
        let value = match self.by_address.get(&ip) {
            Some(index) => Some(self.pod_value(*index)),
            None => self
                .by_cluster_ip
                .get(&ip)
                .map(|index| self.cluster_ip_value(*index)),
        };
        let host = Prefix::host(ip);
        let key = entry_key(host);
        match value {
            Some(value) => {
                Arc::make_mut(&mut self.peer_ids).insert(ip, value);
                self.trie.insert(key, value);
            }
            None => {
                Arc::make_mut(&mut self.peer_ids).remove(&ip);
                match self.by_region.get(&host) {
                    Some(region) => {
                        self.trie.insert(key, self.pod_value(*region));
                    }
                    None => {
                        self.trie.remove(&key);
                    }
                }
            }
        }
    }

    /// Per selector, the identities that carry it.
    fn index_selectors(&mut self) {
        let mut by_selector = vec![Vec::new(); self.universe.selector_slots()];
        for index in self.live() {
            if let Kind::Pods { selectors, .. } = &self.identities[index].kind {
                for selector in selectors {
                    by_selector[*selector].push(index);
                }
            }
        }
        self.by_selector = by_selector;
    }

    /// Indices of the identities in use.
    pub(crate) fn live(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.slots.len()).filter(|index| self.slots[*index].key.is_some())
    }

    /// How many entries the trie would hold if nothing were left out (an address two pods
    /// have counts twice, as each is written).
    pub(crate) fn entry_count(&self) -> usize {
        self.by_region.len() + self.by_cluster_ip.len() + self.pod_addresses
    }

    /// The trie's entries in the order they are kept when it is full: regions, ClusterIPs,
    /// then pod addresses in pod order; the flag says a pod address (only those are left
    /// out).
    pub(crate) fn ordered_entries(
        &self,
        cluster: &Cluster,
    ) -> Vec<(PeerEntryKey, PeerIdentity, bool)> {
        let mut entries: Vec<(PeerEntryKey, PeerIdentity, bool)> = self
            .region_keys
            .iter()
            .map(|key| (*key, self.trie[key], false))
            .collect();
        let mut cluster_ips: Vec<(&IpAddr, &usize)> = self.by_cluster_ip.iter().collect();
        cluster_ips.sort();
        for (ip, index) in cluster_ips {
            let value = self.cluster_ip_value(*index);
            entries.push((entry_key(Prefix::host(*ip)), value, false));
        }
        for pod in cluster
            .pods
            .values()
            .filter(|pod| pod.has_address_identity())
        {
            let Some(classified) = self.pods.get(&pod.key()) else {
                continue;
            };
            for (ip, index) in &classified.addresses {
                entries.push((entry_key(Prefix::host(*ip)), self.pod_value(*index), true));
            }
        }
        entries
    }

    /// The identity an address has as a peer (a pod's own, else its region's).
    pub(crate) fn of_address(&self, ip: IpAddr) -> usize {
        self.by_address
            .get(&ip)
            .copied()
            .unwrap_or_else(|| self.region_of_address(ip))
    }

    /// An address or prefix that has identity `index`, for messages.
    pub(crate) fn describe(&self, index: usize) -> String {
        let identity = &self.identities[index];
        if let Kind::ClusterIp(ip) = identity.kind {
            return format!("ClusterIP {ip}");
        }
        let mut addresses: Vec<&IpAddr> = self
            .by_address
            .iter()
            .filter(|(_, i)| **i == index)
            .map(|(ip, _)| ip)
            .collect();
        addresses.sort();
        match addresses.first() {
            Some(ip) => format!("{ip} (and {} more)", addresses.len() - 1),
            None => identity.region.to_string(),
        }
    }

    /// The index of `selector`, one of the universe's.
    pub(crate) fn selector_index(&self, selector: &PeerSelector) -> usize {
        self.universe.index_of(selector)
    }

    /// Index of the identity of the region of `ip`.
    pub(crate) fn region_of_address(&self, ip: IpAddr) -> usize {
        self.by_region[&self.regions.of(Prefix::host(ip))]
    }

    /// Index of the identity of region `region`.
    pub(crate) fn of_region(&self, region: Prefix) -> usize {
        self.by_region[&region]
    }
}

/// The canonical form of an identity: stable across compilations as long as what it stands for
/// is (selectors by their own stable ids).
fn canonical(key: &Key, selector_ids: &[u32]) -> String {
    if let Some(ip) = key.cluster_ip {
        return format!("clusterip {ip}");
    }
    let mut selector_ids: Vec<u32> = key.selectors.iter().map(|s| selector_ids[*s]).collect();
    selector_ids.sort_unstable();
    let named: Vec<String> = key
        .named
        .iter()
        .map(|p| format!("{}/{}={}", p.name, p.protocol, p.port))
        .collect();
    format!(
        "region {} selectors {selector_ids:?} named {named:?}",
        key.region
    )
}
