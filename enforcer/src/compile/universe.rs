//! The universe: what the rules of all policies refer to, kept between compilations and
//! changed policy by policy.
//!
//! Each policy's references (the [`PeerSelector`]s of its rules' peers, its ipBlocks' cidrs
//! and excepts, the named ports its egress rules use) are kept with it and counted: a policy
//! that changes takes its old references back and adds its new ones, so a pass looks at the
//! changed policies only. A selector keeps its index while any rule refers to it; an index
//! that fell free is handed out again only after [`Universe::commit`], once the identities
//! have let go of it. `0.0.0.0/0` and `::/0` are always regions.

use std::collections::{BTreeMap, BTreeSet};

use foldhash::HashMap;

use tollgate_schemas::ANY_PROTOCOL;

use super::cidr::Prefix;
use super::identities::PeerSelector;
use super::peers::Peer;
use super::policy::Policy;
use super::ports::PortSpec;

/// A policy's key: (namespace, name).
type PolicyKey = (String, String);

/// What the rules of all policies refer to (see the module doc).
#[derive(Debug, Clone)]
pub(crate) struct Universe {
    /// Selectors by index; `None` for a free index.
    selectors: Vec<Option<PeerSelector>>,
    /// The index of each selector.
    index: HashMap<PeerSelector, usize>,
    /// References to each selector, by index.
    refs: Vec<usize>,
    /// Free indices, handed out again.
    free: Vec<usize>,
    /// Region prefixes, with their references.
    regions: HashMap<Prefix, usize>,
    /// Named ports (name, protocol) of egress rules, with their references.
    egress_names: HashMap<(String, u8), usize>,
    /// What each policy refers to.
    by_policy: HashMap<PolicyKey, References>,
}

/// What one policy refers to, each once per mention.
#[derive(Debug, Clone, Default)]
struct References {
    selectors: Vec<PeerSelector>,
    regions: Vec<Prefix>,
    egress_names: Vec<(String, u8)>,
}

/// What an update changed.
#[derive(Debug, Clone, Default)]
pub(crate) struct UniverseChange {
    /// Indices of the selectors that came.
    pub(crate) new: Vec<usize>,
    /// Indices of the selectors that went: still readable until [`Universe::commit`].
    pub(crate) gone: Vec<usize>,
    /// Whether a region or an egress named port came or went.
    pub(crate) regions_or_names: bool,
}

impl UniverseChange {
    /// Whether the selectors stayed.
    pub(crate) fn same_selectors(&self) -> bool {
        self.new.is_empty() && self.gone.is_empty()
    }
}

impl Default for Universe {
    fn default() -> Universe {
        Universe {
            selectors: Vec::new(),
            index: HashMap::default(),
            refs: Vec::new(),
            free: Vec::new(),
            regions: [(Prefix::ALL_V4, 1), (Prefix::ALL_V6, 1)]
                .into_iter()
                .collect(),
            egress_names: HashMap::default(),
            by_policy: HashMap::default(),
        }
    }
}

impl Universe {
    /// Takes in the policies `changed` (by key; gone from `policies` when removed).
    pub(crate) fn update(
        &mut self,
        policies: &BTreeMap<PolicyKey, Policy>,
        changed: &BTreeSet<PolicyKey>,
    ) -> UniverseChange {
        let mut change = UniverseChange::default();
        let mut dropped = Vec::new();
        // New references first: a selector a policy keeps is never free in between.
        for key in changed {
            if let Some(old) = self.by_policy.remove(key) {
                dropped.push(old);
            }
            let Some(policy) = policies.get(key) else {
                continue;
            };
            let references = references(policy);
            for selector in &references.selectors {
                if let Some(index) = self.add_selector(selector) {
                    change.new.push(index);
                }
            }
            for region in &references.regions {
                change.regions_or_names |= count_up(&mut self.regions, *region);
            }
            for name in &references.egress_names {
                change.regions_or_names |= count_up(&mut self.egress_names, name.clone());
            }
            self.by_policy.insert(key.clone(), references);
        }
        for old in dropped {
            for selector in &old.selectors {
                let index = self.index[selector];
                self.refs[index] -= 1;
                if self.refs[index] == 0 {
                    change.gone.push(index);
                }
            }
            for region in &old.regions {
                change.regions_or_names |= count_down(&mut self.regions, region);
            }
            for name in &old.egress_names {
                change.regions_or_names |= count_down(&mut self.egress_names, name);
            }
        }
        change.new.sort_unstable();
        change.gone.sort_unstable();
        change
    }

    /// Frees the indices of the selectors `gone` (no identity refers to them any more).
    pub(crate) fn commit(&mut self, gone: &[usize]) {
        for index in gone {
            let selector = self.selectors[*index].take().expect("a gone selector");
            self.index.remove(&selector);
            self.free.push(*index);
        }
    }

    /// One reference more to `selector`; its index when it is new.
    fn add_selector(&mut self, selector: &PeerSelector) -> Option<usize> {
        if let Some(index) = self.index.get(selector) {
            self.refs[*index] += 1;
            return None;
        }
        let index = match self.free.pop() {
            Some(index) => {
                self.selectors[index] = Some(selector.clone());
                self.refs[index] = 1;
                index
            }
            None => {
                self.selectors.push(Some(selector.clone()));
                self.refs.push(1);
                self.selectors.len() - 1
            }
        };
        self.index.insert(selector.clone(), index);
        Some(index)
    }

    /// The selectors in use, by index.
    pub(crate) fn selectors(&self) -> impl Iterator<Item = (usize, &PeerSelector)> {
        self.selectors
            .iter()
            .enumerate()
            .filter_map(|(index, selector)| Some((index, selector.as_ref()?)))
    }

    /// Selector `index` (one in use, or gone and not committed yet).
    pub(crate) fn selector(&self, index: usize) -> &PeerSelector {
        self.selectors[index].as_ref().expect("a selector in use")
    }

    /// One more than the highest selector index.
    pub(crate) fn selector_slots(&self) -> usize {
        self.selectors.len()
    }

    /// The index of `selector`, one in use.
    pub(crate) fn index_of(&self, selector: &PeerSelector) -> usize {
        self.index[selector]
    }

    /// The region prefixes.
    pub(crate) fn regions(&self) -> impl Iterator<Item = Prefix> + '_ {
        self.regions.keys().copied()
    }

    /// Whether egress rules use named port `name` of `protocol`.
    pub(crate) fn egress_name(&self, name: &str, protocol: u8) -> bool {
        let mut key = (name.to_owned(), protocol);
        if self.egress_names.contains_key(&key) {
            return true;
        }
        // A ClusterNetworkPolicy's named port names no protocol.
        key.1 = ANY_PROTOCOL;
        self.egress_names.contains_key(&key)
    }
}

/// What `policy`'s rules refer to.
fn references(policy: &Policy) -> References {
    let mut references = References::default();
    let lists = [(&policy.ingress, false), (&policy.egress, true)];
    for (rules, egress) in lists {
        for rule in rules.iter().flatten() {
            if egress {
                for spec in &rule.ports {
                    if let PortSpec::Named { protocol, name } = spec {
                        references.egress_names.push((name.clone(), *protocol));
                    }
                }
            }
            for peer in rule.peers.iter().flatten() {
                match peer {
                    Peer::Pods { namespaces, pods } => {
                        references.selectors.push(PeerSelector::of(
                            &policy.namespace,
                            namespaces.as_ref(),
                            pods.as_ref(),
                        ));
                    }
                    Peer::Block(block) => {
                        references.regions.push(block.cidr);
                        references.regions.extend(block.excepts.iter().copied());
                    }
                    Peer::Nodes(nodes) => references.selectors.push(PeerSelector::nodes(nodes)),
                }
            }
        }
    }
    references
}

/// One reference more to `key`; whether it is new.
fn count_up<K: std::hash::Hash + Eq>(counts: &mut HashMap<K, usize>, key: K) -> bool {
    let count = counts.entry(key).or_default();
    *count += 1;
    *count == 1
}

/// One reference less to `key`; whether it is gone.
fn count_down<K: std::hash::Hash + Eq>(counts: &mut HashMap<K, usize>, key: &K) -> bool {
    let count = counts.get_mut(key).expect("a counted reference");
    *count -= 1;
    if *count > 0 {
        return false;
    }
    counts.remove(key);
    true
}
