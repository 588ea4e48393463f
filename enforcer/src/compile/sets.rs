//! Policy sets: what decides for an endpoint in one direction (the rules of the policies that
//! select it, tier by tier, and for ingress with named ports the endpoint's own named ports),
//! compiled once for every endpoint it decides for into one rule list per peer identity.
//!
//! How a set's entries are made:
//! 1. Each rule's peers are resolved into the identities they match (once per compilation):
//!    no peers, every address identity; a pod selector, the identities that carry it; an
//!    ipBlock, the identities whose region lies inside it and in none of its holes (same
//!    family only).
//! 2. Each matched identity gets the rule's port ranges, with its action and tier, in the
//!    set's rule order. Named ports resolve against the destination pod: for ingress the
//!    endpoint (part of the set's key), for egress the peer identity's own named ports (an
//!    address that is no pod's gets nothing from a named port).
//! 3. Per identity, the ranges make one value (`ports::normalize`: a NetworkPolicy run
//!    deduplicated and ordered, a ClusterNetworkPolicy run kept in order). An identity no rule
//!    matches gets no value: the set leaves it to the endpoint's flags.
//! 4. Egress sets then gain the Services' ClusterIPs, decided by their ready backends (`vips`):
//!    in a set that isolates, only those with a backend or a region the set has a value for.
//!
//! A set's entries are kept for the next pass ([`SetCache`]). While nothing they were made
//! from changed (the policies, the rule ids, the identities: `Peers::generation`) they are used
//! as they are. After a change, a kept set is used again when none of its rules is new,
//! renumbered or of a changed policy, and each of its rules matches the very identities it
//! matched (compared as (index, id) pairs). A kept ingress set none of whose rules changed but
//! some of which match other identities now has the values of just those identities made again
//! (`rematched`: the identities a new selector split off, or that went); else it is compiled
//! again. ClusterIPs are checked apart: when only some Services' ClusterIPs changed, a kept
//! egress set has those decided again (and is sealed again only if an entry changed); when any
//! may have, every egress set is compiled again. Ingress sets hold no ClusterIP.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::rc::Rc;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use tollgate_schemas::{Direction, MAX_PORT_RULES, PolicyValue, PortRule};

use super::cluster::PodInfo;
use super::identities::{PeerSelector, Peers};
use super::peers::{Block, Peer};
use super::policy::{Policy, Rule};
use super::ports::{NamedPort, has_named, normalize, resolve};
use super::services::ServiceInfo;
use super::vips;
use crate::desired::RuleRef;

/// What makes two endpoints share a set.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct SetKey {
    /// The direction it decides.
    pub(crate) direction: Direction,
    /// Ids of the isolating rules, in policy order.
    pub(crate) rules: Vec<u32>,
    /// The endpoint's named ports (ingress with named ports only; else empty).
    pub(crate) named: Vec<(String, u8, u16)>,
    /// No NetworkPolicy isolates its endpoints: what no rule decides passes (only
    /// ClusterNetworkPolicies apply). Its ClusterIPs are decided accordingly.
    pub(crate) open: bool,
}

impl SetKey {
    /// Canonical form, the key of its stable id.
    pub(crate) fn canonical(&self) -> String {
        let open = if self.open { " open" } else { "" };
        format!(
            "{} {:?} {:?}{open}",
            self.direction.name(),
            self.rules,
            self.named
        )
    }
}

/// What a set allows towards or from one identity: the port rules of its map value, in
/// order (at most [`MAX_PORT_RULES`]). Kept as the rules alone: a map value has room for
/// all of them (388 bytes), and a set may hold a value for each of 10,000 identities.
pub(crate) type Rules = Arc<[PortRule]>;

/// One compiled set: a value per peer identity (by index into [`Peers::identities`]).
#[derive(Debug, Clone, Default)]
pub(crate) struct SetEntries {
    /// Identity index → what the set allows there.
    pub(crate) values: BTreeMap<usize, Rules>,
    /// Identity index → port rules left out for lack of room in a value.
    pub(crate) dropped: BTreeMap<usize, usize>,
    /// (identity id, identity index, rule list) of every value, by id: the order of the map's
    /// entries. The rule list is an index into `rulesets`, `None` for an empty value.
    pub(crate) by_peer: Vec<(u32, usize, Option<usize>)>,
    /// The distinct non-empty rule lists of the values, in order.
    pub(crate) rulesets: Vec<Ruleset>,
    /// Digest of the entries by identity id, with their rules (what the revisions compare).
    pub(crate) digest: [u8; 32],
}

impl SetEntries {
    /// Makes `rules` (as granted, in rule order) the value for `identity`.
    fn set_value(&mut self, identity: usize, rules: Vec<PortRule>) {
        let normalized = normalize(rules);
        if normalized.dropped > 0 {
            self.dropped.insert(identity, normalized.dropped);
        }
        self.values.insert(identity, rules_of(&normalized.rules));
    }

    /// Fills in what is derived from the values: their order by identity id, their distinct
    /// rule lists and the digest.
    fn seal(&mut self, peers: &Peers) {
        let mut rulesets: Vec<&[PortRule]> = self
            .values
            .values()
            .filter(|rules| !rules.is_empty())
            .map(|rules| &rules[..])
            .collect();
        rulesets.sort_unstable();
        rulesets.dedup();
        self.by_peer = self
            .values
            .iter()
            .map(|(identity, rules)| {
                let rules = &rules[..];
                let ruleset = (!rules.is_empty())
                    .then(|| rulesets.binary_search(&rules).expect("a listed rule list"));
                (peers.identities[*identity].id, *identity, ruleset)
            })
            .collect();
        self.by_peer.sort_unstable();
        let mut digest = Sha256::new();
        for (peer, identity, _) in &self.by_peer {
            digest.update(peer.to_le_bytes());
            for rule in self.values[identity].iter() {
                digest.update(rule.rule_id.to_le_bytes());
                digest.update(rule.port_lo.to_le_bytes());
                digest.update(rule.port_hi.to_le_bytes());
                digest.update([rule.protocol, rule.action]);
            }
            digest.update([0xff]);
        }
        self.digest = digest.finalize().into();
        self.rulesets = rulesets.into_iter().map(Ruleset::new).collect();
    }
}

/// A distinct rule list of a set's values, hashed once: fitting looks up every set's rule
/// lists in every pass.
#[derive(Debug, Clone, Eq)]
pub(crate) struct Ruleset {
    /// The rules, as a value holds them.
    pub(crate) rules: Vec<PortRule>,
    hash: u64,
}

impl Ruleset {
    fn new(rules: &[PortRule]) -> Ruleset {
        Ruleset {
            rules: rules.to_vec(),
            hash: foldhash::quality::FixedState::default().hash_one(rules),
        }
    }
}

impl PartialEq for Ruleset {
    fn eq(&self, other: &Ruleset) -> bool {
        self.hash == other.hash && self.rules == other.rules
    }
}

impl std::hash::Hash for Ruleset {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

/// What a pass's set entries were made from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Basis {
    /// The compiler's count of policy changes.
    pub(crate) policies: u64,
    /// `Peers::generation`.
    pub(crate) identities: u64,
    /// The rule ids.
    pub(crate) rules: Arc<BTreeMap<RuleRef, u32>>,
}

/// Set entries kept from the last pass, with what they were made from (and the ClusterIPs,
/// which must not have changed since).
#[derive(Debug, Clone, Default)]
pub(crate) struct SetCache {
    basis: Option<Basis>,
    cluster_ips: vips::ClusterIps,
    entries: HashMap<SetKey, Arc<SetEntries>>,
    /// Rule id → the identities its peers matched when the kept entries were made, as
    /// (index, id): an identity's index and id together say what it is (its selectors'
    /// matches, region and named ports never change while it keeps its id). Rules whose peers
    /// match alike share one list (every "from any namespace" rule: 10,000 identities).
    matched: HashMap<u32, Matched>,
}

/// The identities one or more rules match, as (index, id), by index.
type Matched = Arc<Vec<(usize, u32)>>;

/// Rules by id, with the per-compilation caches of rule resolution.
pub(crate) struct Sets<'c> {
    peers: &'c Peers,
    rules: HashMap<u32, (&'c Policy, &'c Rule)>,
    /// Identity indices of every address identity (the target of a rule without peers).
    everything: Rc<Vec<usize>>,
    /// Rule id → the identities its peers match (one list for the rules of one peer that
    /// match alike).
    matched: HashMap<u32, Rc<Vec<usize>>>,
    /// Selector index → the identities it matches.
    selected: HashMap<usize, Rc<Vec<usize>>>,
    /// ipBlock → the identities it covers (blocks repeat across policies).
    blocks: HashMap<Block, Rc<Vec<usize>>>,
    /// Entries of the last pass and of this one.
    cache: SetCache,
    /// `None` when the kept entries are valid as they are (nothing they were made from
    /// changed); else the rules whose ids or contents changed: a kept set is valid when it
    /// has none of them and each of its rules matches the identities it matched.
    dirty: Option<HashSet<u32>>,
    /// What changed of the ClusterIPs since the last pass: kept egress sets are patched.
    cluster_ips: vips::Changed,
    /// Rule id → whether its kept entries' basis still holds (see `dirty`).
    unchanged: HashMap<u32, bool>,
    /// Rule id → the identities it matches in this pass, as [`SetCache::matched`] keeps them.
    matched_now: HashMap<u32, Matched>,
    /// The lists of `matched_now`, by the list of `matched` each was made from (held there
    /// for the whole pass, so its address names it).
    matched_lists: HashMap<*const Vec<usize>, Matched>,
    /// The keys this pass asked for.
    used: HashSet<SetKey>,
}

impl<'c> Sets<'c> {
    /// Sets over `peers`, whose addresses `touched` (`None`: any) may have another identity
    /// since the last pass, for `rules` (rule id → policy and rule, the ids `rule_ids`) and
    /// `services` (of which `services_changed` changed since the last pass; `None`: any may
    /// have), after `policies` policy changes, of which those of the policies `changed` (by
    /// namespace and name) came since the last pass; `cache` is the last pass's.
    pub(crate) fn new(
        peers: &'c Peers,
        touched: Option<&BTreeSet<IpAddr>>,
        rules: HashMap<u32, (&'c Policy, &'c Rule)>,
        rule_ids: &Arc<BTreeMap<RuleRef, u32>>,
        (policies, changed): (u64, &BTreeSet<(String, String)>),
        (services, services_changed): (&[Arc<ServiceInfo>], Option<&BTreeSet<vips::ServiceKey>>),
        mut cache: SetCache,
    ) -> Sets<'c> {
        let everything = peers
            .live()
            .filter(|i| peers.identities[*i].is_address())
            .collect();
        let cluster_ips = cache
            .cluster_ips
            .update(peers, services, touched, services_changed);
        let basis = Basis {
            policies,
            identities: peers.generation,
            rules: Arc::clone(rule_ids),
        };
        if cluster_ips == vips::Changed::Everything {
            // Every egress set holds the ClusterIPs; no ingress set does.
            cache
                .entries
                .retain(|key, _| key.direction == Direction::Ingress);
        }
        let dirty = match cache.basis.replace(basis) {
            Some(kept) if cache.basis.as_ref() == Some(&kept) => None,
            Some(kept) => Some(dirty_rules(&kept.rules, rule_ids, changed)),
            None => {
                cache.entries.clear();
                cache.matched.clear();
                None
            }
        };
        Sets {
            peers,
            rules,
            everything: Rc::new(everything),
            matched: HashMap::new(),
            selected: HashMap::new(),
            blocks: HashMap::new(),
            cache,
            dirty,
            cluster_ips,
            unchanged: HashMap::new(),
            matched_now: HashMap::new(),
            matched_lists: HashMap::new(),
            used: HashSet::new(),
        }
    }

    /// The entries kept for the next pass: those of the sets this pass asked for, with what
    /// their rules matched.
    pub(crate) fn into_cache(self) -> SetCache {
        let Sets {
            mut cache,
            used,
            dirty,
            matched_now,
            ..
        } = self;
        cache.entries.retain(|key, _| used.contains(key));
        match dirty {
            // What the kept lists say still holds: this pass's add to them.
            None => cache.matched.extend(matched_now),
            // This pass's lists cover every rule of every set it kept.
            Some(_) => cache.matched = matched_now,
        }
        cache
    }

    /// The key of the set that `ids` (rule ids) make for `endpoint` in `direction` (`open`: no
    /// NetworkPolicy isolates it there).
    pub(crate) fn key(
        &self,
        direction: Direction,
        ids: Vec<u32>,
        open: bool,
        endpoint: &PodInfo,
    ) -> SetKey {
        let named = direction == Direction::Ingress
            && ids.iter().any(|id| has_named(&self.rules[id].1.ports));
        SetKey {
            direction,
            rules: ids,
            named: if named {
                let mut named: Vec<_> = endpoint
                    .named_ports
                    .iter()
                    .map(|p| (p.name.clone(), p.protocol, p.port))
                    .collect();
                named.sort();
                named
            } else {
                Vec::new()
            },
            open,
        }
    }

    /// The entries of set `key`: the last pass's when still valid, else compiled.
    pub(crate) fn entries(&mut self, key: &SetKey) -> Arc<SetEntries> {
        self.used.insert(key.clone());
        let entries = match self.cache.entries.remove(key) {
            Some(kept) if key.rules.iter().all(|id| self.unchanged(*id)) => {
                self.with_cluster_ips(key, kept)
            }
            Some(kept) => match self.rematched(key, kept) {
                Some(entries) => entries,
                None => Arc::new(self.compile(key)),
            },
            None => Arc::new(self.compile(key)),
        };
        self.cache.entries.insert(key.clone(), Arc::clone(&entries));
        entries
    }

    /// The kept entries of set `key`, valid but for the ClusterIPs that changed since the
    /// last pass (decided again in an egress set).
    fn with_cluster_ips(&self, key: &SetKey, kept: Arc<SetEntries>) -> Arc<SetEntries> {
        let vips::Changed::Some { gone, now } = &self.cluster_ips else {
            return kept;
        };
        if key.direction == Direction::Ingress {
            return kept;
        }
        let Some(mut patched) = vips::patch_cluster_ips(&kept, gone, now, key.open) else {
            return kept;
        };
        patched.seal(self.peers);
        Arc::new(patched)
    }

    /// Whether the kept entries of a set can stand for rule `id` (see [`Sets::dirty`]).
    fn unchanged(&mut self, id: u32) -> bool {
        let Some(dirty) = &self.dirty else {
            return true;
        };
        if dirty.contains(&id) {
            return false;
        }
        if let Some(unchanged) = self.unchanged.get(&id) {
            return *unchanged;
        }
        self.record_matched(id);
        let unchanged = self.cache.matched.get(&id) == self.matched_now.get(&id);
        self.unchanged.insert(id, unchanged);
        unchanged
    }

    /// Records what rule `id` matches in this pass, for the next one to compare.
    fn record_matched(&mut self, id: u32) {
        if self.matched_now.contains_key(&id) {
            return;
        }
        let matched = self.matched(id);
        let pairs = match self.matched_lists.get(&Rc::as_ptr(&matched)) {
            Some(pairs) => Arc::clone(pairs),
            None => {
                let pairs: Vec<(usize, u32)> = matched
                    .iter()
                    .map(|index| (*index, self.peers.identities[*index].id))
                    .collect();
                // The kept list when it is the same: one list, compared by address next time.
                let pairs = match self.cache.matched.get(&id) {
                    Some(kept) if **kept == pairs => Arc::clone(kept),
                    _ => Arc::new(pairs),
                };
                self.matched_lists
                    .insert(Rc::as_ptr(&matched), Arc::clone(&pairs));
                pairs
            }
        };
        self.matched_now.insert(id, pairs);
    }

    /// `kept`, the entries of ingress set `key` whose rules are all as they were but some match
    /// other identities now, with the values of the identities that came, went or changed
    /// made again; `None` when the set has to be compiled again. (An egress set's values also
    /// decide its ClusterIPs, so it is compiled again.)
    fn rematched(&mut self, key: &SetKey, mut kept: Arc<SetEntries>) -> Option<Arc<SetEntries>> {
        let dirty = self.dirty.as_ref()?;
        if key.direction != Direction::Ingress || key.rules.iter().any(|id| dirty.contains(id)) {
            return None;
        }
        let mut changed: BTreeSet<usize> = BTreeSet::new();
        for &id in &key.rules {
            if self.unchanged(id) {
                continue;
            }
            let before = self.cache.matched.get(&id)?;
            changed_identities(before, &self.matched_now[&id], &mut changed);
        }
        let named_ports = named_ports(key);
        let granted: Vec<(Rc<Vec<usize>>, Vec<PortRule>)> = key
            .rules
            .iter()
            .map(|&id| {
                let (policy, rule) = self.rules[&id];
                (
                    self.matched(id),
                    granted(id, (policy, rule), Some(&named_ports)),
                )
            })
            .collect();
        let entries = Arc::make_mut(&mut kept);
        for identity in changed {
            entries.values.remove(&identity);
            entries.dropped.remove(&identity);
            let list: Vec<PortRule> = granted
                .iter()
                .filter(|(matched, _)| matched.binary_search(&identity).is_ok())
                .flat_map(|(_, granted)| granted.iter().copied())
                .collect();
            if !list.is_empty() {
                entries.set_value(identity, list);
            }
        }
        entries.seal(self.peers);
        Some(kept)
    }

    /// Compiles the set `key`.
    fn compile(&mut self, key: &SetKey) -> SetEntries {
        let named_ports = named_ports(key);
        let mut rules: HashMap<usize, Vec<PortRule>> = HashMap::new();
        for &id in &key.rules {
            let (policy, rule) = self.rules[&id];
            self.record_matched(id);
            let matched = self.matched(id);
            if key.direction == Direction::Ingress || !has_named(&rule.ports) {
                let named = (key.direction == Direction::Ingress).then_some(&named_ports[..]);
                let granted = granted(id, (policy, rule), named);
                if granted.is_empty() {
                    continue;
                }
                for identity in matched.iter() {
                    rules.entry(*identity).or_default().extend(&granted);
                }
            } else {
                for identity in matched.iter() {
                    let named = self.peers.identities[*identity].named_ports();
                    let granted = granted(id, (policy, rule), Some(named));
                    if !granted.is_empty() {
                        rules.entry(*identity).or_default().extend(granted);
                    }
                }
            }
        }
        let mut entries = SetEntries::default();
        for (identity, list) in rules {
            entries.set_value(identity, list);
        }
        if key.direction == Direction::Egress {
            vips::add_cluster_ips(&mut entries, &self.cache.cluster_ips, key.open);
        }
        entries.seal(self.peers);
        entries
    }

    /// The identities rule `id`'s peers match (computed once per compilation).
    fn matched(&mut self, id: u32) -> Rc<Vec<usize>> {
        if let Some(matched) = self.matched.get(&id) {
            return Rc::clone(matched);
        }
        let (policy, rule) = self.rules[&id];
        let matched = match &rule.peers {
            None => Rc::clone(&self.everything),
            Some(peers) => {
                let mut lists: Vec<Rc<Vec<usize>>> = peers
                    .iter()
                    .map(|peer| match peer {
                        Peer::Pods { namespaces, pods } => {
                            let selector = PeerSelector::of(
                                &policy.namespace,
                                namespaces.as_ref(),
                                pods.as_ref(),
                            );
                            self.selected(self.peers.selector_index(&selector))
                        }
                        Peer::Block(block) => self.block(block),
                        Peer::Nodes(nodes) => {
                            let selector = PeerSelector::nodes(nodes);
                            self.selected(self.peers.selector_index(&selector))
                        }
                    })
                    .collect();
                match lists.len() {
                    1 => lists.remove(0),
                    _ => {
                        let mut all: Vec<usize> =
                            lists.iter().flat_map(|l| l.iter()).copied().collect();
                        all.sort_unstable();
                        all.dedup();
                        Rc::new(all)
                    }
                }
            }
        };
        self.matched.insert(id, Rc::clone(&matched));
        matched
    }

    /// The identities selector `index` matches.
    fn selected(&mut self, index: usize) -> Rc<Vec<usize>> {
        let selected = self
            .selected
            .entry(index)
            .or_insert_with(|| Rc::new(self.peers.by_selector[index].clone()));
        Rc::clone(selected)
    }

    /// The address identities whose region `block` covers.
    fn block(&mut self, block: &Block) -> Rc<Vec<usize>> {
        if let Some(matched) = self.blocks.get(block) {
            return Rc::clone(matched);
        }
        let matched: Vec<usize> = self
            .everything
            .iter()
            .copied()
            .filter(|i| {
                let region = self.peers.identities[*i].region;
                region.is_v4() == block.cidr.is_v4() && block.covers(region)
            })
            .collect();
        let matched = Rc::new(matched);
        self.blocks.insert(block.clone(), Rc::clone(&matched));
        matched
    }
}

/// What rule `id` (`rule` of `policy`) decides: its port rules, with its action and tier,
/// named ports resolved against `named` (`None`: no named port resolves).
fn granted(
    id: u32,
    (policy, rule): (&Policy, &Rule),
    named: Option<&[NamedPort]>,
) -> Vec<PortRule> {
    resolve(&rule.ports, named, true)
        .into_iter()
        .map(|range| range.rule(id, rule.action, policy.tier()))
        .collect()
}

/// The endpoint's named ports of set `key` (empty unless an ingress set with named ports).
fn named_ports(key: &SetKey) -> Vec<NamedPort> {
    key.named
        .iter()
        .map(|(name, protocol, port)| NamedPort {
            name: name.clone(),
            protocol: *protocol,
            port: *port,
        })
        .collect()
}

/// Adds to `changed` the identities (by index) that are in one of the (index, id) lists
/// `before` and `now`, both in index order, and not in the other: matched or no longer
/// matched, or an index that stands for another identity now.
fn changed_identities(
    before: &[(usize, u32)],
    now: &[(usize, u32)],
    changed: &mut BTreeSet<usize>,
) {
    let (mut b, mut n) = (before.iter().peekable(), now.iter().peekable());
    loop {
        match (b.peek(), n.peek()) {
            (Some(x), Some(y)) if x == y => {
                b.next();
                n.next();
            }
            (Some(x), Some(y)) if x.0 == y.0 => {
                changed.insert(x.0);
                b.next();
                n.next();
            }
            (Some(x), Some(y)) if x.0 < y.0 => {
                changed.insert(x.0);
                b.next();
            }
            (_, Some(y)) => {
                changed.insert(y.0);
                n.next();
            }
            (Some(x), None) => {
                changed.insert(x.0);
                b.next();
            }
            (None, None) => return,
        }
    }
}

/// The ids in `now` whose rule changed since `kept` was handed out: assigned anew (a rule
/// that was not there, or had another id) or of a policy in `changed`.
fn dirty_rules(
    kept: &BTreeMap<RuleRef, u32>,
    now: &Arc<BTreeMap<RuleRef, u32>>,
    changed: &BTreeSet<(String, String)>,
) -> HashSet<u32> {
    if changed.is_empty() && std::ptr::eq(kept, now.as_ref()) {
        return HashSet::new();
    }
    let changed: HashSet<(&str, &str)> = changed
        .iter()
        .map(|(namespace, name)| (namespace.as_str(), name.as_str()))
        .collect();
    now.iter()
        .filter(|(rule, id)| {
            changed.contains(&(rule.namespace.as_str(), rule.policy.as_str()))
                || kept.get(*rule) != Some(*id)
        })
        .map(|(_, id)| *id)
        .collect()
}

/// The value of a set holding `rules`: the first [`MAX_PORT_RULES`] of them (`normalize`
/// leaves no more), as [`value_of`] keeps them.
pub(crate) fn rules_of(rules: &[PortRule]) -> Rules {
    Arc::from(&rules[..rules.len().min(MAX_PORT_RULES)])
}

/// A map value holding `rules` (at most [`MAX_PORT_RULES`], as `normalize` leaves them).
pub(crate) fn value_of(rules: &[PortRule]) -> PolicyValue {
    let mut value = PolicyValue::EMPTY;
    let kept = rules.len().min(value.rules.len());
    value.rules[..kept].copy_from_slice(&rules[..kept]);
    value.count = kept as u32;
    value
}
