//! Map sync: makes the probe's policy maps hold a [`DesiredState`] by writing the difference
//! from what they hold, never by rewriting them.
//!
//! How data flows: the compiler's [`DesiredState`] → [`Syncer::sync`] → [`diff`] against the
//! state the syncer last wrote → one write per changed entry through [`PolicyMaps`], in the
//! order below → the state now written, kept for the next sync. The kernel maps are read
//! ([`PolicyMaps::read`]) only by the first sync, the first after a failed one, and
//! [`Syncer::check_drift`], which compares them with what was written and repairs them.
//! [`PolicyMaps`] is implemented over the kernel maps by [`crate::aya_maps::AyaMaps`] and in
//! memory by [`InMemoryMaps`] (tests, and anything that wants the sync's result without a
//! kernel; given a [`Capacity`] it refuses new keys beyond it as a full kernel map does).
//!
//! # Write order
//!
//! A packet is decided through the endpoint (its policy set), the peer trie (the peer's
//! identity), the policy map ((set, identity) → rule set) and the rule-set array; the order
//! makes every state in between deny rather than allow what neither the old nor the new state
//! allows, and no endpoint point at entries that are not there yet:
//!
//! 1. node-address deletes: an address that is no longer the node's loses `from-node` first;
//! 2. policy deletes that are revocations: the set is still used by a desired endpoint and the
//!    identity is still some prefix's, so the entry is what stands between the two; gone before
//!    anything is added;
//! 3. rule-set writes (ids the maps do not hold yet: the compiler never reuses an id for other
//!    content while it is referenced);
//! 4. policy upserts, new and changed entries, each naming a rule set already written;
//! 5. deletes of entries of identities that have a fallback (a ClusterIP's): without its own
//!    entry the identity is what its fallback is, and the fallback's entries are final now;
//! 6. peer upserts: a prefix moves to an identity whose entries are all there;
//! 7. node-address inserts;
//! 8. endpoint upserts: an endpoint takes its new sets, flags and revision once everything
//!    they point at is written (a new endpoint appears with its entries in place);
//! 9. peer deletes, shortest prefix first, so that an address moves from its old identity to
//!    its desired one, never through a third;
//! 10. the other policy deletes (sets no endpoint uses, identities no prefix has any more);
//! 11. rule-set clears (ids no entry names any more: the slot is written empty);
//! 12. endpoint deletes: until then the endpoint's entries are gone and it denies.
//!
//! A rule set whose id the maps hold with other content (maps read back after a restart, or
//! tampered with) cannot be rewritten in place without changing what the entries naming it
//! allow: the endpoints whose sets name it are written not programmed first (they deny) and
//! get their desired state in step 8.
//!
//! # A full map
//!
//! A change never needs the old and the new entries to fit together. When a write fails
//! because a map is full ([`MapsError::is_full`]: the kernel's E2BIG, ENOSPC or ENOMEM), the
//! sync writes every endpoint whose desired entry differs from what the maps hold as not
//! programmed (it denies everything: fail closed), runs every delete, writes every upsert
//! again, going on past the ones that still do not fit, and then writes the endpoints. An
//! endpoint that something it depends on could not be written for (a policy entry of its set,
//! a rule set one of them names, a peer prefix its sets decide differently than the prefix
//! around it) stays not programmed, and the error ([`SyncError::NotProgrammed`]) names it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use tollgate_schemas::{
    EndpointKey, EndpointState, PeerIdentity, PolicyEntry, PolicyKey, PolicyValue, addr,
    endpoint_flags, map_names,
};

use crate::causes::Causes;
use crate::{
    compile::cidr::Prefix,
    desired::{Capacity, DesiredState, PeerEntryKey},
};

/// An error of the maps, as the sync needs to tell it apart.
pub trait MapsError: std::error::Error + Send + Sync + 'static {
    /// Whether a map had no room for a new entry (the kernel's E2BIG, ENOSPC or ENOMEM, or an
    /// array index past its end): the sync then deletes before it inserts.
    fn is_full(&self) -> bool;
}

/// The probe's policy maps, as the sync sees them: read everything, change one entry.
///
/// Implemented over the kernel maps by [`crate::aya_maps::AyaMaps`] and in memory by
/// [`InMemoryMaps`].
pub trait PolicyMaps {
    /// Error of the underlying maps.
    type Error: MapsError;

    /// How many entries each map can hold.
    fn capacity(&self) -> Result<Capacity, Self::Error>;
    /// Everything the maps hold now (rule sets: every non-empty slot).
    fn read(&self) -> Result<DesiredState, Self::Error>;
    /// Inserts or replaces one endpoint.
    fn upsert_endpoint(
        &mut self,
        key: &EndpointKey,
        value: &EndpointState,
    ) -> Result<(), Self::Error>;
    /// Removes one endpoint.
    fn delete_endpoint(&mut self, key: &EndpointKey) -> Result<(), Self::Error>;
    /// Inserts or replaces one peer prefix.
    fn upsert_peer(&mut self, key: &PeerEntryKey, value: &PeerIdentity) -> Result<(), Self::Error>;
    /// Removes one peer prefix.
    fn delete_peer(&mut self, key: &PeerEntryKey) -> Result<(), Self::Error>;
    /// Inserts or replaces one policy entry.
    fn upsert_policy(&mut self, key: &PolicyKey, value: &PolicyEntry) -> Result<(), Self::Error>;
    /// Removes one policy entry.
    fn delete_policy(&mut self, key: &PolicyKey) -> Result<(), Self::Error>;
    /// Writes rule set `id` (1 and up).
    fn write_ruleset(&mut self, id: u32, value: &PolicyValue) -> Result<(), Self::Error>;
    /// Writes rule set `id` empty ([`PolicyValue::EMPTY`]: an array slot cannot go).
    fn clear_ruleset(&mut self, id: u32) -> Result<(), Self::Error>;
    /// Adds one of the node's own addresses.
    fn insert_node_addr(&mut self, key: &EndpointKey) -> Result<(), Self::Error>;
    /// Removes one of the node's own addresses.
    fn delete_node_addr(&mut self, key: &EndpointKey) -> Result<(), Self::Error>;
}

/// The changes that turn one map's contents into another's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapDiff<K, V> {
    /// Entries that are missing or hold another value, with the value they must hold.
    pub upserts: Vec<(K, V)>,
    /// Entries that must go, with the value they held.
    pub deletes: Vec<(K, V)>,
}

impl<K, V> Default for MapDiff<K, V> {
    fn default() -> Self {
        Self {
            upserts: Vec::new(),
            deletes: Vec::new(),
        }
    }
}

impl<K, V> MapDiff<K, V> {
    /// Whether nothing changes.
    pub fn is_empty(&self) -> bool {
        self.upserts.is_empty() && self.deletes.is_empty()
    }
}

/// The changes of every policy map, each in key order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diff {
    /// Changes of the endpoint map.
    pub endpoints: MapDiff<EndpointKey, EndpointState>,
    /// Changes of the peer trie.
    pub peers: MapDiff<PeerEntryKey, PeerIdentity>,
    /// Changes of the policy map.
    pub policy: MapDiff<PolicyKey, PolicyEntry>,
    /// Changes of the rule-set array (a delete is a slot written empty).
    pub rulesets: MapDiff<u32, PolicyValue>,
    /// Changes of the node-address map.
    pub node_addrs: MapDiff<EndpointKey, ()>,
}

impl Diff {
    /// Whether nothing changes.
    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
            && self.peers.is_empty()
            && self.policy.is_empty()
            && self.rulesets.is_empty()
            && self.node_addrs.is_empty()
    }
}

/// The difference of two sorted sequences of entries, walked side by side (linear in their
/// lengths, no lookups).
fn diff_sorted<K: Ord + Copy, V: PartialEq + Copy>(
    current: impl Iterator<Item = (K, V)>,
    desired: impl Iterator<Item = (K, V)>,
) -> MapDiff<K, V> {
    let mut out = MapDiff::default();
    let (mut current, mut desired) = (current.peekable(), desired.peekable());
    loop {
        match (current.peek(), desired.peek()) {
            (None, None) => return out,
            (Some(held), None) => {
                out.deletes.push(*held);
                current.next();
            }
            (None, Some(wanted)) => {
                out.upserts.push(*wanted);
                desired.next();
            }
            (Some(held), Some(wanted)) => match held.0.cmp(&wanted.0) {
                std::cmp::Ordering::Less => {
                    out.deletes.push(*held);
                    current.next();
                }
                std::cmp::Ordering::Greater => {
                    out.upserts.push(*wanted);
                    desired.next();
                }
                std::cmp::Ordering::Equal => {
                    if held.1 != wanted.1 {
                        out.upserts.push(*wanted);
                    }
                    current.next();
                    desired.next();
                }
            },
        }
    }
}

fn diff_map<K: Ord + Copy, V: PartialEq + Copy>(
    current: &BTreeMap<K, V>,
    desired: &BTreeMap<K, V>,
) -> MapDiff<K, V> {
    diff_sorted(
        current.iter().map(|(k, v)| (*k, *v)),
        desired.iter().map(|(k, v)| (*k, *v)),
    )
}

/// Rule sets that are not empty: an empty slot and a missing one are the same.
fn rule_sets(rulesets: &BTreeMap<u32, PolicyValue>) -> impl Iterator<Item = (u32, PolicyValue)> {
    rulesets
        .iter()
        .filter(|(_, value)| **value != PolicyValue::EMPTY)
        .map(|(id, value)| (*id, *value))
}

/// What must change so that maps holding `current` hold `desired`: only entries that are
/// missing, hold another value, or must go.
pub fn diff(current: &DesiredState, desired: &DesiredState) -> Diff {
    Diff {
        endpoints: diff_map(&current.endpoints, &desired.endpoints),
        peers: diff_map(&current.peers, &desired.peers),
        policy: diff_map(&current.policy, &desired.policy),
        rulesets: diff_sorted(rule_sets(&current.rulesets), rule_sets(&desired.rulesets)),
        node_addrs: diff_sorted(
            current.node_addrs.iter().map(|k| (*k, ())),
            desired.node_addrs.iter().map(|k| (*k, ())),
        ),
    }
}

/// Writes to one map.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MapStats {
    /// Entries written.
    pub upserts: usize,
    /// Entries removed (rule sets: written empty).
    pub deletes: usize,
}

/// What one sync wrote, in all and per map.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncStats {
    /// Entries written, all maps.
    pub upserts: usize,
    /// Entries removed, all maps.
    pub deletes: usize,
    /// The endpoint map.
    pub endpoints: MapStats,
    /// The peer trie.
    pub peers: MapStats,
    /// The policy map.
    pub policy: MapStats,
    /// The rule-set array.
    pub rulesets: MapStats,
    /// The node-address map.
    pub node_addrs: MapStats,
    /// Whether the maps were read first (first sync, after a failed one, drift check).
    pub read: bool,
    /// Whether a full map made the sync delete before it inserted (see the module doc).
    pub fallback: bool,
}

impl SyncStats {
    /// The writes of each map, by map name ([`map_names`]).
    pub fn per_map(&self) -> [(&'static str, MapStats); 5] {
        [
            (map_names::ENDPOINTS, self.endpoints),
            (map_names::PEERS, self.peers),
            (map_names::POLICY, self.policy),
            (map_names::RULESETS, self.rulesets),
            (map_names::NODE_ADDRS, self.node_addrs),
        ]
    }

    /// Whether anything was written or removed.
    pub fn changed(&self) -> bool {
        self.upserts + self.deletes > 0
    }
}

impl std::fmt::Display for SyncStats {
    /// `3 written, 1 removed (TG_POLICY +2 -1, TG_ENDPOINTS +1)`: the maps that changed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} written, {} removed", self.upserts, self.deletes)?;
        let mut maps = self
            .per_map()
            .into_iter()
            .filter(|(_, m)| m.upserts + m.deletes > 0)
            .peekable();
        if maps.peek().is_none() {
            return Ok(());
        }
        f.write_str(" (")?;
        for (i, (name, m)) in maps.enumerate() {
            let sep = if i == 0 { "" } else { ", " };
            match (m.upserts, m.deletes) {
                (u, 0) => write!(f, "{sep}{name} +{u}")?,
                (0, d) => write!(f, "{sep}{name} -{d}")?,
                (u, d) => write!(f, "{sep}{name} +{u} -{d}")?,
            }
        }
        f.write_str(")")
    }
}

/// One key of one map, as errors name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapKey {
    /// An endpoint (pod address).
    Endpoint(EndpointKey),
    /// A peer prefix.
    Peer(PeerEntryKey),
    /// A (policy set, peer identity) entry.
    Policy(PolicyKey),
    /// A rule-set id.
    Ruleset(u32),
    /// One of the node's addresses.
    NodeAddr(EndpointKey),
}

impl MapKey {
    /// The map the key belongs to ([`map_names`]).
    pub fn map(&self) -> &'static str {
        match self {
            MapKey::Endpoint(_) => map_names::ENDPOINTS,
            MapKey::Peer(_) => map_names::PEERS,
            MapKey::Policy(_) => map_names::POLICY,
            MapKey::Ruleset(_) => map_names::RULESETS,
            MapKey::NodeAddr(_) => map_names::NODE_ADDRS,
        }
    }
}

impl std::fmt::Display for MapKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let map = self.map();
        match self {
            MapKey::Endpoint(key) => write!(f, "endpoint {} in {map}", addr::from_bytes(key.addr)),
            MapKey::Peer(key) => write!(f, "peer {} in {map}", Prefix::of_entry(key)),
            MapKey::Policy(key) => {
                write!(f, "entry (set {}, identity {}) in {map}", key.set, key.peer)
            }
            MapKey::Ruleset(id) => write!(f, "rule set {id} in {map}"),
            MapKey::NodeAddr(key) => {
                write!(f, "node address {} in {map}", addr::from_bytes(key.addr))
            }
        }
    }
}

/// A sync that failed, naming the map and the key.
#[derive(Debug, thiserror::Error)]
pub enum SyncError<E: std::error::Error + 'static> {
    /// The maps could not be read.
    #[error("reading the policy maps")]
    Read {
        /// The maps' error.
        source: E,
    },
    /// Writing or removing one entry failed.
    #[error("{operation} of {key}")]
    Write {
        /// `upsert`, `delete`, `insert`, `write` or `clear`.
        operation: &'static str,
        /// The entry.
        key: MapKey,
        /// The maps' error.
        source: E,
    },
    /// Maps full even after every delete: these endpoints are written not programmed (they
    /// deny everything) because entries they depend on could not be written.
    #[error(
        "endpoints {} left not programmed (denying): {operation} of {key}",
        list(endpoints)
    )]
    NotProgrammed {
        /// The endpoints' addresses.
        endpoints: Vec<IpAddr>,
        /// The first write that failed.
        operation: &'static str,
        /// Its entry.
        key: MapKey,
        /// The maps' error.
        source: E,
    },
}

fn list(addresses: &[IpAddr]) -> String {
    addresses
        .iter()
        .map(IpAddr::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

impl<E: MapsError> SyncError<E> {
    /// Whether a full map caused it.
    pub fn is_full(&self) -> bool {
        match self {
            SyncError::Read { source } | SyncError::Write { source, .. } => source.is_full(),
            SyncError::NotProgrammed { .. } => true,
        }
    }
}

/// One write.
#[derive(Debug, Clone, Copy)]
enum Op<'a> {
    UpsertEndpoint(EndpointKey, EndpointState),
    DeleteEndpoint(EndpointKey),
    UpsertPeer(PeerEntryKey, PeerIdentity),
    DeletePeer(PeerEntryKey),
    UpsertPolicy(PolicyKey, PolicyEntry),
    DeletePolicy(PolicyKey),
    WriteRuleset(u32, &'a PolicyValue),
    ClearRuleset(u32),
    InsertNodeAddr(EndpointKey),
    DeleteNodeAddr(EndpointKey),
}

impl Op<'_> {
    fn operation(&self) -> &'static str {
        match self {
            Op::UpsertEndpoint(..) | Op::UpsertPeer(..) | Op::UpsertPolicy(..) => "upsert",
            Op::DeleteEndpoint(_)
            | Op::DeletePeer(_)
            | Op::DeletePolicy(_)
            | Op::DeleteNodeAddr(_) => "delete",
            Op::WriteRuleset(..) => "write",
            Op::ClearRuleset(_) => "clear",
            Op::InsertNodeAddr(_) => "insert",
        }
    }

    fn key(&self) -> MapKey {
        match *self {
            Op::UpsertEndpoint(key, _) | Op::DeleteEndpoint(key) => MapKey::Endpoint(key),
            Op::UpsertPeer(key, _) | Op::DeletePeer(key) => MapKey::Peer(key),
            Op::UpsertPolicy(key, _) | Op::DeletePolicy(key) => MapKey::Policy(key),
            Op::WriteRuleset(id, _) | Op::ClearRuleset(id) => MapKey::Ruleset(id),
            Op::InsertNodeAddr(key) | Op::DeleteNodeAddr(key) => MapKey::NodeAddr(key),
        }
    }

    fn send<M: PolicyMaps>(&self, maps: &mut M) -> Result<(), M::Error> {
        match self {
            Op::UpsertEndpoint(key, value) => maps.upsert_endpoint(key, value),
            Op::DeleteEndpoint(key) => maps.delete_endpoint(key),
            Op::UpsertPeer(key, value) => maps.upsert_peer(key, value),
            Op::DeletePeer(key) => maps.delete_peer(key),
            Op::UpsertPolicy(key, value) => maps.upsert_policy(key, value),
            Op::DeletePolicy(key) => maps.delete_policy(key),
            Op::WriteRuleset(id, value) => maps.write_ruleset(*id, value),
            Op::ClearRuleset(id) => maps.clear_ruleset(*id),
            Op::InsertNodeAddr(key) => maps.insert_node_addr(key),
            Op::DeleteNodeAddr(key) => maps.delete_node_addr(key),
        }
    }

    /// Records the write, done, in `state` (what the maps hold) and `stats`.
    fn record(self, state: &mut DesiredState, stats: &mut SyncStats) {
        let (map, deleted) = match self {
            Op::UpsertEndpoint(key, value) => {
                state.endpoints.insert(key, value);
                (&mut stats.endpoints, false)
            }
            Op::DeleteEndpoint(key) => {
                state.endpoints.remove(&key);
                (&mut stats.endpoints, true)
            }
            Op::UpsertPeer(key, value) => {
                state.peers.insert(key, value);
                (&mut stats.peers, false)
            }
            Op::DeletePeer(key) => {
                state.peers.remove(&key);
                (&mut stats.peers, true)
            }
            Op::UpsertPolicy(key, value) => {
                state.policy.insert(key, value);
                (&mut stats.policy, false)
            }
            Op::DeletePolicy(key) => {
                state.policy.remove(&key);
                (&mut stats.policy, true)
            }
            Op::WriteRuleset(id, value) => {
                state.rulesets.insert(id, *value);
                (&mut stats.rulesets, false)
            }
            Op::ClearRuleset(id) => {
                state.rulesets.remove(&id);
                (&mut stats.rulesets, true)
            }
            Op::InsertNodeAddr(key) => {
                state.node_addrs.insert(key);
                (&mut stats.node_addrs, false)
            }
            Op::DeleteNodeAddr(key) => {
                state.node_addrs.remove(&key);
                (&mut stats.node_addrs, true)
            }
        };
        if deleted {
            map.deletes += 1;
            stats.deletes += 1;
        } else {
            map.upserts += 1;
            stats.upserts += 1;
        }
    }
}

/// `state` as not programmed: the probe denies all of the endpoint's traffic.
fn closed(state: &EndpointState) -> EndpointState {
    EndpointState {
        flags: state.flags & !endpoint_flags::PROGRAMMED,
        ingress_set: 0,
        egress_set: 0,
        ..*state
    }
}

/// The policy deletes of a change, by the step that runs them (see the module doc).
#[derive(Debug, Default)]
struct PolicyDeletes {
    /// Step 2.
    revocations: Vec<PolicyKey>,
    /// Step 5.
    fallbacks: Vec<PolicyKey>,
    /// Step 10.
    vanished: Vec<PolicyKey>,
}

impl PolicyDeletes {
    fn split(deletes: &[(PolicyKey, PolicyEntry)], desired: &DesiredState) -> Self {
        let mut sorted = PolicyDeletes::default();
        if deletes.is_empty() {
            return sorted;
        }
        let sets = used_sets(desired);
        let mut identities = BTreeSet::new();
        let mut with_fallback = BTreeSet::new();
        for identity in desired.peers.values() {
            identities.insert(identity.id);
            if identity.fallback != 0 {
                identities.insert(identity.fallback);
                with_fallback.insert(identity.id);
            }
        }
        for (key, _) in deletes {
            if !sets.contains(&key.set) || !identities.contains(&key.peer) {
                sorted.vanished.push(*key);
            } else if with_fallback.contains(&key.peer) {
                sorted.fallbacks.push(*key);
            } else {
                sorted.revocations.push(*key);
            }
        }
        sorted
    }
}

/// The policy sets the endpoints of `state` use.
fn used_sets(state: &DesiredState) -> BTreeSet<u32> {
    state
        .endpoints
        .values()
        .flat_map(|e| [e.ingress_set, e.egress_set])
        .filter(|set| *set != 0)
        .collect()
}

/// The writes of one sync to `maps`, `state` following what they hold.
struct Writer<'a, M: PolicyMaps> {
    maps: &'a mut M,
    state: &'a mut DesiredState,
    stats: SyncStats,
}

/// A write that failed because a map is full.
struct Refused<E> {
    operation: &'static str,
    key: MapKey,
    source: E,
}

/// Writes that did not fit, once everything that could go went.
struct Unwritten<E> {
    /// The first failed write.
    first: Option<Refused<E>>,
    /// Policy sets whose decisions differ from the desired ones.
    sets: BTreeSet<u32>,
    /// Endpoints that could not be written (they stay as they are, or missing).
    endpoints: Vec<EndpointKey>,
}

impl<E> Unwritten<E> {
    fn note(&mut self, failure: Refused<E>) {
        self.first.get_or_insert(failure);
    }
}

impl<M: PolicyMaps> Writer<'_, M> {
    fn apply(&mut self, op: Op<'_>) -> Result<(), SyncError<M::Error>> {
        op.send(self.maps).map_err(|source| SyncError::Write {
            operation: op.operation(),
            key: op.key(),
            source,
        })?;
        op.record(self.state, &mut self.stats);
        Ok(())
    }

    /// Like [`Writer::apply`], with a full map returned instead of failing.
    fn try_apply(&mut self, op: Op<'_>) -> Result<Option<Refused<M::Error>>, SyncError<M::Error>> {
        match op.send(self.maps) {
            Ok(()) => {
                op.record(self.state, &mut self.stats);
                Ok(None)
            }
            Err(source) if source.is_full() => Ok(Some(Refused {
                operation: op.operation(),
                key: op.key(),
                source,
            })),
            Err(source) => Err(SyncError::Write {
                operation: op.operation(),
                key: op.key(),
                source,
            }),
        }
    }

    /// Makes the maps hold `desired`; what changed.
    fn run(&mut self, desired: &DesiredState) -> Result<Diff, SyncError<M::Error>> {
        let changes = diff(self.state, desired);
        match self.in_order(&changes, desired) {
            Ok(()) => Ok(changes),
            Err(error) if error.is_full() => {
                tracing::warn!(
                    error = %Causes(&error),
                    "a policy map is full: endpoints that change deny while every delete runs first"
                );
                self.stats.fallback = true;
                self.make_room(desired)?;
                Ok(changes)
            }
            Err(error) => Err(error),
        }
    }

    /// The writes of `changes` in the order of the module doc.
    fn in_order(
        &mut self,
        changes: &Diff,
        desired: &DesiredState,
    ) -> Result<(), SyncError<M::Error>> {
        self.close_rewritten(changes)?;
        let deletes = PolicyDeletes::split(&changes.policy.deletes, desired);
        for (key, ()) in &changes.node_addrs.deletes {
            self.apply(Op::DeleteNodeAddr(*key))?;
        }
        for key in &deletes.revocations {
            self.apply(Op::DeletePolicy(*key))?;
        }
        for (id, value) in &changes.rulesets.upserts {
            self.apply(Op::WriteRuleset(*id, value))?;
        }
        for (key, value) in &changes.policy.upserts {
            self.apply(Op::UpsertPolicy(*key, *value))?;
        }
        for key in &deletes.fallbacks {
            self.apply(Op::DeletePolicy(*key))?;
        }
        for (key, value) in &changes.peers.upserts {
            self.apply(Op::UpsertPeer(*key, *value))?;
        }
        for (key, ()) in &changes.node_addrs.upserts {
            self.apply(Op::InsertNodeAddr(*key))?;
        }
        self.write_endpoints(desired)?;
        for (key, _) in &changes.peers.deletes {
            self.apply(Op::DeletePeer(*key))?;
        }
        for key in &deletes.vanished {
            self.apply(Op::DeletePolicy(*key))?;
        }
        for (id, _) in &changes.rulesets.deletes {
            self.apply(Op::ClearRuleset(*id))?;
        }
        for (key, _) in &changes.endpoints.deletes {
            self.apply(Op::DeleteEndpoint(*key))?;
        }
        Ok(())
    }

    /// Writes not programmed the endpoints whose sets name a rule set that is about to be
    /// rewritten with other content.
    fn close_rewritten(&mut self, changes: &Diff) -> Result<(), SyncError<M::Error>> {
        let rewritten: BTreeSet<u32> = changes
            .rulesets
            .upserts
            .iter()
            .filter(|(id, _)| self.state.rulesets.contains_key(id))
            .map(|(id, _)| *id)
            .collect();
        if rewritten.is_empty() {
            return Ok(());
        }
        let sets: BTreeSet<u32> = self
            .state
            .policy
            .iter()
            .filter(|(_, entry)| rewritten.contains(&entry.ruleset))
            .map(|(key, _)| key.set)
            .collect();
        let closing: Vec<(EndpointKey, EndpointState)> = self
            .state
            .endpoints
            .iter()
            .filter(|(_, e)| sets.contains(&e.ingress_set) || sets.contains(&e.egress_set))
            .map(|(key, e)| (*key, closed(e)))
            .collect();
        tracing::info!(
            rule_sets = rewritten.len(),
            endpoints = closing.len(),
            "rule sets rewritten in place: their endpoints deny until written again"
        );
        for (key, value) in closing {
            self.apply(Op::UpsertEndpoint(key, value))?;
        }
        Ok(())
    }

    /// Step 8: every desired endpoint the maps do not hold as desired.
    fn write_endpoints(&mut self, desired: &DesiredState) -> Result<(), SyncError<M::Error>> {
        let pending: Vec<(EndpointKey, EndpointState)> = desired
            .endpoints
            .iter()
            .filter(|(key, value)| self.state.endpoints.get(key) != Some(value))
            .map(|(key, value)| (*key, *value))
            .collect();
        for (key, value) in pending {
            self.apply(Op::UpsertEndpoint(key, value))?;
        }
        Ok(())
    }

    /// The full-map path of the module doc, from whatever the maps hold now.
    fn make_room(&mut self, desired: &DesiredState) -> Result<(), SyncError<M::Error>> {
        // Fail closed: every endpoint about to change denies until it is written.
        let closing: Vec<(EndpointKey, EndpointState)> = desired
            .endpoints
            .iter()
            .filter(|(key, value)| self.state.endpoints.get(key) != Some(value))
            .map(|(key, value)| (*key, closed(value)))
            .filter(|(key, value)| self.state.endpoints.get(key) != Some(value))
            .collect();
        for (key, value) in closing {
            // A new endpoint that does not fit stays unknown to the probe (denied in strict
            // mode); it is tried again below, once the deletes made room.
            self.try_apply(Op::UpsertEndpoint(key, value))?;
        }

        // Every delete.
        let changes = diff(self.state, desired);
        for (key, ()) in &changes.node_addrs.deletes {
            self.apply(Op::DeleteNodeAddr(*key))?;
        }
        for (key, _) in &changes.policy.deletes {
            self.apply(Op::DeletePolicy(*key))?;
        }
        for (key, _) in &changes.peers.deletes {
            self.apply(Op::DeletePeer(*key))?;
        }
        for (id, _) in &changes.rulesets.deletes {
            self.apply(Op::ClearRuleset(*id))?;
        }
        for (key, _) in &changes.endpoints.deletes {
            self.apply(Op::DeleteEndpoint(*key))?;
        }

        // Every upsert again, past the ones that still do not fit.
        let mut unwritten = Unwritten {
            first: None,
            sets: BTreeSet::new(),
            endpoints: Vec::new(),
        };
        let mut lost_rulesets = BTreeSet::new();
        for (id, value) in &changes.rulesets.upserts {
            if let Some(failure) = self.try_apply(Op::WriteRuleset(*id, value))? {
                unwritten.note(failure);
                lost_rulesets.insert(*id);
            }
        }
        if !lost_rulesets.is_empty() {
            unwritten.sets.extend(
                desired
                    .policy
                    .iter()
                    .filter(|(_, entry)| lost_rulesets.contains(&entry.ruleset))
                    .map(|(key, _)| key.set),
            );
        }
        for (key, value) in &changes.policy.upserts {
            if lost_rulesets.contains(&value.ruleset) {
                continue;
            }
            if let Some(failure) = self.try_apply(Op::UpsertPolicy(*key, *value))? {
                unwritten.note(failure);
                unwritten.sets.insert(key.set);
            }
        }
        for (key, value) in &changes.peers.upserts {
            if let Some(failure) = self.try_apply(Op::UpsertPeer(*key, *value))? {
                unwritten.note(failure);
                // What the prefix's addresses find instead: the prefix as it was (a trie that
                // refuses even a replacement when full, before Linux 6.14), or the one around.
                let around = self
                    .state
                    .peers
                    .get(key)
                    .copied()
                    .or_else(|| self.state.identity_around(key));
                unwritten
                    .sets
                    .extend(used_sets(desired).into_iter().filter(|set| {
                        desired.rules_for_identity(*set, *value)
                            != around.and_then(|a| desired.rules_for_identity(*set, a))
                    }));
            }
        }
        for (key, ()) in &changes.node_addrs.upserts {
            // A node address that does not fit denies more, it allows nothing: reported, no
            // endpoint depends on it alone.
            if let Some(failure) = self.try_apply(Op::InsertNodeAddr(*key))? {
                unwritten.note(failure);
            }
        }

        // The endpoints: each as desired, or not programmed when it depends on what is missing.
        for (key, value) in &desired.endpoints {
            let depends = [value.ingress_set, value.egress_set]
                .iter()
                .any(|set| *set != 0 && unwritten.sets.contains(set));
            let target = if depends { closed(value) } else { *value };
            if depends {
                unwritten.endpoints.push(*key);
            }
            if self.state.endpoints.get(key) == Some(&target) {
                continue;
            }
            if let Some(failure) = self.try_apply(Op::UpsertEndpoint(*key, target))? {
                unwritten.note(failure);
                if !depends {
                    unwritten.endpoints.push(*key);
                }
            }
        }

        match unwritten.first {
            None => Ok(()),
            Some(Refused {
                operation,
                key,
                source,
            }) if unwritten.endpoints.is_empty() => Err(SyncError::Write {
                operation,
                key,
                source,
            }),
            Some(Refused {
                operation,
                key,
                source,
            }) => {
                let mut endpoints: Vec<IpAddr> = unwritten
                    .endpoints
                    .iter()
                    .map(|key| addr::from_bytes(key.addr))
                    .collect();
                endpoints.sort();
                endpoints.dedup();
                Err(SyncError::NotProgrammed {
                    endpoints,
                    operation,
                    key,
                    source,
                })
            }
        }
    }
}

/// What one [`Syncer::sync`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// The writes.
    pub stats: SyncStats,
    /// What changed: the maps' contents before against the desired state.
    pub changes: Diff,
}

/// Syncs by difference from what it last wrote.
///
/// Keeps the state the maps were last brought to; the next sync diffs the desired state
/// against it and writes only the difference, without reading the maps. It reads them when it
/// knows nothing (the first sync, and the first after a failed one: a failure leaves the maps
/// partly written) and in [`Syncer::check_drift`].
#[derive(Debug, Clone, Default)]
pub struct Syncer {
    /// What the maps hold, as written; `None`: unknown.
    written: Option<DesiredState>,
}

impl Syncer {
    /// A syncer that knows nothing of the maps yet: its first sync reads them.
    pub fn new() -> Self {
        Self::default()
    }

    /// What the maps were last brought to; `None` before the first sync and after a failed
    /// one.
    pub fn written(&self) -> Option<&DesiredState> {
        self.written.as_ref()
    }

    /// Makes `maps` hold `desired`, writing the difference in the order of the module doc.
    pub fn sync<M: PolicyMaps>(
        &mut self,
        maps: &mut M,
        desired: &DesiredState,
    ) -> Result<SyncReport, SyncError<M::Error>> {
        let read = self.written.is_none();
        let span = tracing::debug_span!(
            "map_sync",
            read,
            endpoints = desired.endpoints.len(),
            upserts = tracing::field::Empty,
            deletes = tracing::field::Empty,
        );
        let _entered = span.enter();
        let mut state = match self.written.take() {
            Some(state) => state,
            None => maps.read().map_err(|source| SyncError::Read { source })?,
        };
        let mut writer = Writer {
            maps,
            state: &mut state,
            stats: SyncStats {
                read,
                ..SyncStats::default()
            },
        };
        let changes = writer.run(desired)?;
        let stats = writer.stats;
        span.record("upserts", stats.upserts);
        span.record("deletes", stats.deletes);
        tracing::debug!(%stats, fallback = stats.fallback, "policy maps synced");
        self.written = Some(state);
        Ok(SyncReport { stats, changes })
    }

    /// Reads the maps, and repairs whatever differs from what this syncer last wrote (an
    /// entry changed or removed by something else, or a kernel that did not keep a write):
    /// the repairs, logged when there are any. `None` when nothing was written yet (there is
    /// nothing to compare with; the next sync reads the maps anyway).
    pub fn check_drift<M: PolicyMaps>(
        &mut self,
        maps: &mut M,
    ) -> Result<Option<SyncStats>, SyncError<M::Error>> {
        let Some(written) = self.written.take() else {
            return Ok(None);
        };
        let _span = tracing::debug_span!("drift_check").entered();
        self.written = Some(maps.read().map_err(|source| SyncError::Read { source })?);
        let mut stats = self.sync(maps, &written)?.stats;
        stats.read = true;
        if stats.changed() {
            tracing::warn!(
                repairs = %stats,
                "the policy maps differed from what was written; repaired"
            );
        }
        Ok(Some(stats))
    }
}

/// Makes `maps` hold `desired` once: reads them, then writes the difference as
/// [`Syncer::sync`] does.
pub fn sync<M: PolicyMaps>(
    maps: &mut M,
    desired: &DesiredState,
) -> Result<SyncStats, SyncError<M::Error>> {
    Syncer::new().sync(maps, desired).map(|report| report.stats)
}

/// A map of [`InMemoryMaps`] without room for another entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("map {map} is full (E2BIG)")]
pub struct MapFull {
    /// The map's name.
    pub map: &'static str,
}

impl MapsError for MapFull {
    fn is_full(&self) -> bool {
        true
    }
}

/// Policy maps held in memory: the sync target of tests, and of anything that wants the
/// sync's result without a kernel.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InMemoryMaps {
    /// What the maps hold.
    pub state: DesiredState,
    /// How many entries each map may hold, as the kernel's; `None`: no limit.
    pub capacity: Option<Capacity>,
}

impl InMemoryMaps {
    /// Empty maps that refuse new keys beyond `capacity`, as full kernel maps do.
    pub fn with_capacity(capacity: Capacity) -> Self {
        Self {
            state: DesiredState::default(),
            capacity: Some(capacity),
        }
    }

    fn limit(&self, of: fn(&Capacity) -> u32) -> Option<usize> {
        self.capacity.as_ref().map(|c| of(c) as usize)
    }
}

/// Inserts into `map` as a kernel hash map does: a new key beyond `limit` is refused.
fn insert<K: Ord, V>(
    map: &mut BTreeMap<K, V>,
    key: K,
    value: V,
    limit: Option<usize>,
    name: &'static str,
) -> Result<(), MapFull> {
    if !map.contains_key(&key) && limit.is_some_and(|limit| map.len() >= limit) {
        return Err(MapFull { map: name });
    }
    map.insert(key, value);
    Ok(())
}

impl PolicyMaps for InMemoryMaps {
    type Error = MapFull;

    fn capacity(&self) -> Result<Capacity, MapFull> {
        Ok(self.capacity.unwrap_or_default())
    }

    fn read(&self) -> Result<DesiredState, MapFull> {
        Ok(self.state.clone())
    }

    fn upsert_endpoint(&mut self, key: &EndpointKey, value: &EndpointState) -> Result<(), MapFull> {
        let limit = self.limit(|c| c.endpoints);
        insert(
            &mut self.state.endpoints,
            *key,
            *value,
            limit,
            map_names::ENDPOINTS,
        )
    }

    fn delete_endpoint(&mut self, key: &EndpointKey) -> Result<(), MapFull> {
        self.state.endpoints.remove(key);
        Ok(())
    }

    fn upsert_peer(&mut self, key: &PeerEntryKey, value: &PeerIdentity) -> Result<(), MapFull> {
        let limit = self.limit(|c| c.peers);
        insert(&mut self.state.peers, *key, *value, limit, map_names::PEERS)
    }

    fn delete_peer(&mut self, key: &PeerEntryKey) -> Result<(), MapFull> {
        self.state.peers.remove(key);
        Ok(())
    }

    fn upsert_policy(&mut self, key: &PolicyKey, value: &PolicyEntry) -> Result<(), MapFull> {
        let limit = self.limit(|c| c.policy);
        insert(
            &mut self.state.policy,
            *key,
            *value,
            limit,
            map_names::POLICY,
        )
    }

    fn delete_policy(&mut self, key: &PolicyKey) -> Result<(), MapFull> {
        self.state.policy.remove(key);
        Ok(())
    }

    fn write_ruleset(&mut self, id: u32, value: &PolicyValue) -> Result<(), MapFull> {
        // An array: the index must be below its size, whatever the other slots hold.
        if self
            .limit(|c| c.rulesets)
            .is_some_and(|size| id as usize >= size)
        {
            return Err(MapFull {
                map: map_names::RULESETS,
            });
        }
        if *value == PolicyValue::EMPTY {
            self.state.rulesets.remove(&id);
        } else {
            self.state.rulesets.insert(id, *value);
        }
        Ok(())
    }

    fn clear_ruleset(&mut self, id: u32) -> Result<(), MapFull> {
        self.state.rulesets.remove(&id);
        Ok(())
    }

    fn insert_node_addr(&mut self, key: &EndpointKey) -> Result<(), MapFull> {
        let nodes = &mut self.state.node_addrs;
        if !nodes.contains(key)
            && self
                .capacity
                .is_some_and(|c| nodes.len() >= c.node_addrs as usize)
        {
            return Err(MapFull {
                map: map_names::NODE_ADDRS,
            });
        }
        nodes.insert(*key);
        Ok(())
    }

    fn delete_node_addr(&mut self, key: &EndpointKey) -> Result<(), MapFull> {
        self.state.node_addrs.remove(key);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use tollgate_schemas::{Reason, proto};

    use super::*;
    use crate::compile::{Compiled, Placement, compile};
    use crate::decision::ProbeFlow;
    use crate::desired::Ids;
    use crate::manifest::parse_manifests;
    use crate::model::{decide_flow, decide_hook};

    const PODS: &str = "
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: shop, labels: {app: web}}
status: {podIP: 10.0.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: db, namespace: shop, labels: {app: db}}
status: {podIPs: [{ip: 10.0.0.2}, {ip: 'fd00::2'}]}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: shop, labels: {app: client}}
status: {podIP: 10.0.0.3}
";

    const WEB_FROM_CLIENT: &str = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress: [{from: [{podSelector: {matchLabels: {app: client}}}], ports: [{port: 80}]}]
";

    /// The same policy (same name, same rule) with another peer.
    const WEB_FROM_DB: &str = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress: [{from: [{podSelector: {matchLabels: {app: db}}}], ports: [{port: 80}]}]
";

    const DB_FROM_WEB: &str = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db, namespace: shop}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress: [{from: [{podSelector: {matchLabels: {app: web}}}, {ipBlock: {cidr: 10.0.0.0/8, except: [10.0.0.0/30]}}], ports: [{port: 5432}]}]
";

    fn compiled_from(pods: &str, policies: &[&str], prior: &Ids) -> Compiled {
        let text = std::iter::once(pods)
            .chain(policies.iter().copied())
            .collect::<Vec<_>>()
            .join("\n---\n");
        let (snapshot, errors) = parse_manifests(&text, "sync-test.yaml");
        assert_eq!(errors, vec![]);
        let compiled = compile(&snapshot, &Placement::AllPods { ifindex: 3 }, prior);
        assert_eq!(compiled.errors, vec![]);
        compiled
    }

    fn compiled(policies: &[&str], prior: &Ids) -> Compiled {
        compiled_from(PODS, policies, prior)
    }

    /// Exactly as much room as `state` takes (full maps).
    fn room_for(state: &DesiredState) -> Capacity {
        let [endpoints, peers, policy, rulesets, node_addrs] =
            state.usage(&Capacity::default()).map(|u| u.entries as u32);
        Capacity {
            endpoints,
            peers,
            policy,
            rulesets,
            node_addrs,
        }
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn tcp(src: &str, dst: &str, port: u16) -> ProbeFlow {
        ProbeFlow {
            src: ip(src),
            dst: ip(dst),
            protocol: proto::TCP,
            src_port: 40_000,
            dst_port: port,
            service: None,
        }
    }

    /// Every flow between the test's addresses (and from an outside one) on the ports the
    /// tests' policies name.
    fn flows() -> Vec<ProbeFlow> {
        let addresses = ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4", "10.9.0.1"];
        let mut flows = Vec::new();
        for src in addresses {
            for dst in addresses {
                for port in [80, 5432, 8080, 9999] {
                    if src != dst {
                        flows.push(tcp(src, dst, port));
                    }
                }
            }
        }
        flows.push(tcp("fd00::9", "fd00::2", 5432));
        flows
    }

    /// Whether `flow` passes under `state`; an address of `endpoints` that `state` does not
    /// hold (yet, or any more) is an unknown endpoint, denied as in strict mode.
    fn passes(state: &DesiredState, endpoints: &BTreeSet<EndpointKey>, flow: &ProbeFlow) -> bool {
        let unknown = |ip: IpAddr| {
            let key = EndpointKey {
                addr: addr::to_bytes(ip),
            };
            endpoints.contains(&key) && !state.endpoints.contains_key(&key)
        };
        !unknown(flow.src) && !unknown(flow.dst) && decide_flow(state, flow).verdict().passes()
    }

    /// Watches the writes of one sync from `before` to `after`: no state in between may let a
    /// flow pass that neither lets pass. Flows of an endpoint that goes are left out: its pod
    /// is gone.
    struct Window {
        flows: Vec<(ProbeFlow, bool)>,
        endpoints: BTreeSet<EndpointKey>,
        opened: Vec<String>,
    }

    #[derive(Debug, thiserror::Error)]
    enum Failure {
        #[error("injected failure")]
        Injected,
        #[error(transparent)]
        Full(#[from] MapFull),
    }

    impl MapsError for Failure {
        fn is_full(&self) -> bool {
            matches!(self, Failure::Full(_))
        }
    }

    /// In-memory maps that log every write, count reads, may fail one kind of write, and may
    /// watch for allow windows.
    #[derive(Default)]
    struct Recording {
        maps: InMemoryMaps,
        log: Vec<(&'static str, MapKey)>,
        reads: Cell<usize>,
        fail_on: Option<(&'static str, &'static str)>,
        window: Option<Window>,
    }

    impl Recording {
        fn new(maps: InMemoryMaps) -> Self {
            Self {
                maps,
                ..Self::default()
            }
        }

        /// Watches the next sync, from `before` to `after`, for allow windows.
        fn watch(&mut self, before: &DesiredState, after: &DesiredState) {
            let endpoints: BTreeSet<EndpointKey> = before
                .endpoints
                .keys()
                .chain(after.endpoints.keys())
                .copied()
                .collect();
            let gone = |ip: IpAddr| {
                let key = EndpointKey {
                    addr: addr::to_bytes(ip),
                };
                before.endpoints.contains_key(&key) && !after.endpoints.contains_key(&key)
            };
            let flows = flows()
                .into_iter()
                .filter(|flow| !gone(flow.src) && !gone(flow.dst))
                .map(|flow| {
                    let allowed =
                        passes(before, &endpoints, &flow) || passes(after, &endpoints, &flow);
                    (flow, allowed)
                })
                .collect();
            self.window = Some(Window {
                flows,
                endpoints,
                opened: Vec::new(),
            });
        }

        fn opened(&self) -> &[String] {
            self.window.as_ref().map_or(&[], |w| &w.opened)
        }

        fn write(
            &mut self,
            operation: &'static str,
            key: MapKey,
            write: impl FnOnce(&mut InMemoryMaps) -> Result<(), MapFull>,
        ) -> Result<(), Failure> {
            if self.fail_on == Some((operation, key.map())) {
                return Err(Failure::Injected);
            }
            write(&mut self.maps)?;
            self.log.push((operation, key));
            if let Some(window) = &mut self.window {
                for (flow, allowed) in &window.flows {
                    if !allowed && passes(&self.maps.state, &window.endpoints, flow) {
                        window
                            .opened
                            .push(format!("{flow:?} passes after the {operation} of {key}"));
                    }
                }
            }
            Ok(())
        }
    }

    impl PolicyMaps for Recording {
        type Error = Failure;

        fn capacity(&self) -> Result<Capacity, Failure> {
            Ok(self.maps.capacity()?)
        }

        fn read(&self) -> Result<DesiredState, Failure> {
            self.reads.set(self.reads.get() + 1);
            Ok(self.maps.read()?)
        }

        fn upsert_endpoint(
            &mut self,
            key: &EndpointKey,
            value: &EndpointState,
        ) -> Result<(), Failure> {
            self.write("upsert", MapKey::Endpoint(*key), |m| {
                m.upsert_endpoint(key, value)
            })
        }

        fn delete_endpoint(&mut self, key: &EndpointKey) -> Result<(), Failure> {
            self.write("delete", MapKey::Endpoint(*key), |m| m.delete_endpoint(key))
        }

        fn upsert_peer(&mut self, key: &PeerEntryKey, value: &PeerIdentity) -> Result<(), Failure> {
            self.write("upsert", MapKey::Peer(*key), |m| m.upsert_peer(key, value))
        }

        fn delete_peer(&mut self, key: &PeerEntryKey) -> Result<(), Failure> {
            self.write("delete", MapKey::Peer(*key), |m| m.delete_peer(key))
        }

        fn upsert_policy(&mut self, key: &PolicyKey, value: &PolicyEntry) -> Result<(), Failure> {
            self.write("upsert", MapKey::Policy(*key), |m| {
                m.upsert_policy(key, value)
            })
        }

        fn delete_policy(&mut self, key: &PolicyKey) -> Result<(), Failure> {
            self.write("delete", MapKey::Policy(*key), |m| m.delete_policy(key))
        }

        fn write_ruleset(&mut self, id: u32, value: &PolicyValue) -> Result<(), Failure> {
            self.write("write", MapKey::Ruleset(id), |m| m.write_ruleset(id, value))
        }

        fn clear_ruleset(&mut self, id: u32) -> Result<(), Failure> {
            self.write("clear", MapKey::Ruleset(id), |m| m.clear_ruleset(id))
        }

        fn insert_node_addr(&mut self, key: &EndpointKey) -> Result<(), Failure> {
            self.write("insert", MapKey::NodeAddr(*key), |m| {
                m.insert_node_addr(key)
            })
        }

        fn delete_node_addr(&mut self, key: &EndpointKey) -> Result<(), Failure> {
            self.write("delete", MapKey::NodeAddr(*key), |m| {
                m.delete_node_addr(key)
            })
        }
    }

    fn entries(state: &DesiredState) -> usize {
        state.endpoints.len()
            + state.peers.len()
            + state.policy.len()
            + rule_sets(&state.rulesets).count()
            + state.node_addrs.len()
    }

    /// Upserts and deletes of every map.
    fn count(diff: &Diff) -> (usize, usize) {
        let Diff {
            endpoints,
            peers,
            policy,
            rulesets,
            node_addrs,
        } = diff;
        (
            endpoints.upserts.len()
                + peers.upserts.len()
                + policy.upserts.len()
                + rulesets.upserts.len()
                + node_addrs.upserts.len(),
            endpoints.deletes.len()
                + peers.deletes.len()
                + policy.deletes.len()
                + rulesets.deletes.len()
                + node_addrs.deletes.len(),
        )
    }

    fn keys<K: Copy, V>(entries: &[(K, V)]) -> Vec<K> {
        entries.iter().map(|(key, _)| *key).collect()
    }

    #[test]
    fn diff_lists_only_changes() {
        let first = compiled(&[WEB_FROM_CLIENT], &Ids::default());
        assert!(diff(&first.desired, &first.desired).is_empty());
        let from_empty = diff(&DesiredState::default(), &first.desired);
        assert_eq!(count(&from_empty), (entries(&first.desired), 0));

        // Adding the db policy: db's endpoints take a set; nothing goes that was there.
        let second = compiled(&[WEB_FROM_CLIENT, DB_FROM_WEB], &first.ids);
        let changes = diff(&first.desired, &second.desired);
        let db = second.ids.endpoints["shop/db"];
        let db_changes: Vec<&EndpointState> = changes
            .endpoints
            .upserts
            .iter()
            .map(|(_, state)| state)
            .filter(|state| state.id == db)
            .collect();
        assert_eq!(db_changes.len(), 2);
        assert!(db_changes.iter().all(|state| state.ingress_set != 0));
        assert!(changes.endpoints.deletes.is_empty());
        let db_set = db_changes[0].ingress_set;
        assert!(
            changes
                .policy
                .upserts
                .iter()
                .any(|(key, _)| key.set == db_set)
        );
        assert!(!first.desired.policy.keys().any(|key| key.set == db_set));

        // And removing it again removes exactly the keys it added, and restores the rest.
        let back = diff(&second.desired, &first.desired);
        let added = |upserts: Vec<PolicyKey>| -> Vec<PolicyKey> {
            upserts
                .into_iter()
                .filter(|key| !first.desired.policy.contains_key(key))
                .collect()
        };
        assert_eq!(
            keys(&back.policy.deletes),
            added(keys(&changes.policy.upserts))
        );
        let added_peers: Vec<PeerEntryKey> = keys(&changes.peers.upserts)
            .into_iter()
            .filter(|key| !first.desired.peers.contains_key(key))
            .collect();
        assert_eq!(keys(&back.peers.deletes), added_peers);
    }

    #[test]
    fn sync_reaches_the_desired_state_in_order() {
        let first = compiled(&[WEB_FROM_CLIENT, DB_FROM_WEB], &Ids::default());
        let mut maps = InMemoryMaps::default();
        let stats = sync(&mut maps, &first.desired).unwrap();
        assert_eq!(maps.state, first.desired);
        assert_eq!((stats.upserts, stats.deletes), (entries(&first.desired), 0));
        assert_eq!(stats.policy.upserts, first.desired.policy.len());
        assert_eq!(stats.peers.upserts, first.desired.peers.len());
        assert!(stats.read && !stats.fallback);
        assert!(!sync(&mut maps, &first.desired).unwrap().changed());

        // Dropping db's policy and replacing the client by one with another address.
        let pods = PODS
            .replace(
                "name: client, namespace: shop",
                "name: client2, namespace: shop",
            )
            .replace("podIP: 10.0.0.3", "podIP: 10.0.0.4");
        let second = compiled_from(&pods, &[WEB_FROM_CLIENT], &first.ids);
        let mut recording = Recording::new(maps);
        recording.watch(&first.desired, &second.desired);
        let stats = sync(&mut recording, &second.desired).unwrap();
        assert_eq!(recording.maps.state, second.desired);
        assert_eq!(stats.upserts + stats.deletes, recording.log.len());
        assert_eq!(recording.opened(), [] as [String; 0]);

        // Every kind of write in its step; policy deletes of sets no endpoint uses any more
        // come after the endpoints moved off them.
        let step = |(operation, key): &(&str, MapKey)| match (*operation, key) {
            ("delete", MapKey::NodeAddr(_)) => Some(0),
            ("write", MapKey::Ruleset(_)) => Some(1),
            ("upsert", MapKey::Policy(_)) => Some(2),
            ("upsert", MapKey::Peer(_)) => Some(3),
            ("insert", MapKey::NodeAddr(_)) => Some(4),
            ("upsert", MapKey::Endpoint(_)) => Some(5),
            ("delete", MapKey::Peer(_)) => Some(6),
            ("clear", MapKey::Ruleset(_)) => Some(7),
            ("delete", MapKey::Endpoint(_)) => Some(8),
            _ => None,
        };
        let steps: Vec<u8> = recording.log.iter().filter_map(step).collect();
        assert!(steps.is_sorted(), "{:?}", recording.log);
        for step in [3, 5, 6, 7, 8] {
            assert!(steps.contains(&step), "step {step}: {:?}", recording.log);
        }
        let used = used_sets(&second.desired);
        let last_endpoint = recording
            .log
            .iter()
            .rposition(|w| matches!(w, ("upsert", MapKey::Endpoint(_))))
            .unwrap();
        let vanished: Vec<usize> = recording
            .log
            .iter()
            .enumerate()
            .filter(
                |(_, w)| matches!(w, ("delete", MapKey::Policy(key)) if !used.contains(&key.set)),
            )
            .map(|(i, _)| i)
            .collect();
        assert!(!vanished.is_empty(), "db's set goes: {:?}", recording.log);
        assert!(
            vanished.iter().all(|i| *i > last_endpoint),
            "{:?}",
            recording.log
        );
    }

    #[test]
    fn errors_name_the_map_and_the_key() {
        let desired = compiled(&[DB_FROM_WEB], &Ids::default()).desired;
        let error = |map| {
            let mut failing = Recording {
                fail_on: Some(map),
                ..Recording::default()
            };
            let error = sync(&mut failing, &desired).unwrap_err();
            crate::causes::Causes(&error).to_string()
        };
        assert_eq!(
            error(("upsert", map_names::ENDPOINTS)),
            "upsert of endpoint 10.0.0.1 in TG_ENDPOINTS: injected failure"
        );
        assert_eq!(
            error(("upsert", map_names::PEERS)),
            "upsert of peer ::/0 in TG_PEERS: injected failure"
        );
        let first = desired.policy.keys().next().unwrap();
        assert_eq!(
            error(("upsert", map_names::POLICY)),
            format!(
                "upsert of entry (set {}, identity {}) in TG_POLICY: injected failure",
                first.set, first.peer
            )
        );
        let first = rule_sets(&desired.rulesets).next().unwrap().0;
        assert_eq!(
            error(("write", map_names::RULESETS)),
            format!("write of rule set {first} in TG_RULESETS: injected failure")
        );
    }

    #[test]
    fn a_revoked_allow_is_gone_after_the_sync_even_when_the_maps_are_full() {
        let before = compiled(&[WEB_FROM_CLIENT, DB_FROM_WEB], &Ids::default());
        let after = compiled(&[WEB_FROM_DB, DB_FROM_WEB], &before.ids);
        let mut maps = Recording::new(InMemoryMaps::with_capacity(room_for(&before.desired)));
        let mut syncer = Syncer::new();
        syncer.sync(&mut maps, &before.desired).unwrap();
        let endpoints: BTreeSet<EndpointKey> = before.desired.endpoints.keys().copied().collect();
        let revoked = tcp("10.0.0.3", "10.0.0.1", 80);
        assert!(passes(&maps.maps.state, &endpoints, &revoked));

        // The new state needs one more policy entry than there is room for: web, whose set
        // it is, is denied, and named.
        assert_eq!(after.desired.policy.len(), before.desired.policy.len() + 1);
        maps.watch(&before.desired, &after.desired);
        let error = syncer.sync(&mut maps, &after.desired).unwrap_err();
        let named = match &error {
            SyncError::NotProgrammed { endpoints, .. } => endpoints.clone(),
            _ => Vec::new(),
        };
        assert_eq!(named, [ip("10.0.0.1")], "{error}");
        assert!(!passes(&maps.maps.state, &endpoints, &revoked));
        assert_eq!(maps.opened(), [] as [String; 0]);
        let web = maps.maps.state.endpoints[&EndpointKey {
            addr: addr::to_bytes(ip("10.0.0.1")),
        }];
        assert_eq!(web.flags & endpoint_flags::PROGRAMMED, 0);

        // With room for one more entry, the next sync (which reads the maps after the failure)
        // completes it.
        maps.maps.capacity = Some(room_for(&after.desired));
        let report = syncer.sync(&mut maps, &after.desired).unwrap();
        assert!(report.stats.read);
        assert_eq!(maps.maps.state, after.desired);
        assert!(!passes(&maps.maps.state, &endpoints, &revoked));
        assert!(passes(
            &maps.maps.state,
            &endpoints,
            &tcp("10.0.0.2", "10.0.0.1", 80)
        ));
    }

    #[test]
    fn endpoints_whose_entries_do_not_fit_are_denied_and_named() {
        let desired = compiled(&[WEB_FROM_CLIENT, DB_FROM_WEB], &Ids::default()).desired;
        let mut capacity = room_for(&desired);
        capacity.policy -= 1;
        let mut maps = InMemoryMaps::with_capacity(capacity);
        let error = sync(&mut maps, &desired).unwrap_err();
        let SyncError::NotProgrammed { endpoints, .. } = &error else {
            panic!("{error}");
        };
        // Those whose set misses an entry: denied, and named.
        let missing: BTreeSet<u32> = desired
            .policy
            .keys()
            .filter(|key| !maps.state.policy.contains_key(key))
            .map(|key| key.set)
            .collect();
        assert_eq!(missing.len(), 1);
        let mut denied: Vec<IpAddr> = desired
            .endpoints
            .iter()
            .filter(|(_, e)| missing.contains(&e.ingress_set) || missing.contains(&e.egress_set))
            .map(|(key, _)| addr::from_bytes(key.addr))
            .collect();
        denied.sort();
        assert!(!denied.is_empty());
        assert_eq!(*endpoints, denied);
        assert!(error.to_string().starts_with(&format!(
            "endpoints {} left not programmed (denying): upsert of entry",
            list(&denied)
        )));
        for (key, state) in &maps.state.endpoints {
            let named = denied.contains(&addr::from_bytes(key.addr));
            assert_eq!(state.flags & endpoint_flags::PROGRAMMED == 0, named);
            if !named {
                assert_eq!(*state, desired.endpoints[key]);
            }
        }
        let to = addr::to_bytes(denied[0]);
        let hook = decide_hook(
            &maps.state,
            tollgate_schemas::Direction::Ingress,
            to,
            to,
            6,
            80,
        );
        assert_eq!(hook.map(|d| d.reason), Some(Reason::NotProgrammed));
    }

    #[test]
    fn a_change_that_needs_old_and_new_entries_together_deletes_first() {
        // web moves to a new policy set with as many entries as its old one (db may reach it
        // on 8080 instead of client on 80): with the policy map full, the new set's entries
        // fit only once the old set's are gone.
        let before = compiled(&[WEB_FROM_CLIENT, DB_FROM_WEB], &Ids::default()).desired;
        let web_key = EndpointKey {
            addr: addr::to_bytes(ip("10.0.0.1")),
        };
        let web = before.endpoints[&web_key];
        let old_set = web.ingress_set;
        let new_set = before.policy.keys().map(|key| key.set).max().unwrap() + 1;
        let db = before
            .peer_identity(addr::to_bytes(ip("10.0.0.2")))
            .unwrap();
        let mut after = before.clone();
        after.policy.retain(|key, _| key.set != old_set);
        let moved = before.rulesets.keys().max().unwrap() + 1;
        let mut value = PolicyValue::EMPTY;
        value.count = 1;
        value.rules[0] = tollgate_schemas::PortRule {
            rule_id: 99,
            port_lo: 8080,
            port_hi: 8080,
            protocol: proto::TCP,
            action: tollgate_schemas::port_action::ALLOW,
            tier: 0,
            _pad: 0,
        };
        after.rulesets.insert(moved, value);
        for key in before.policy.keys().filter(|key| key.set == old_set) {
            after.policy.insert(
                PolicyKey {
                    set: new_set,
                    peer: if key.peer == db.id { key.peer } else { db.id },
                },
                PolicyEntry { ruleset: moved },
            );
        }
        after
            .rulesets
            .retain(|id, _| after.policy.values().any(|e| e.ruleset == *id));
        after.endpoints.insert(
            web_key,
            EndpointState {
                ingress_set: new_set,
                revision: web.revision + 100,
                ..web
            },
        );
        assert_eq!(after.policy.len(), before.policy.len());

        let mut capacity = room_for(&before);
        // The rule-set array is indexed by id: room there comes from the compiler's choice of
        // ids, not from deletes.
        capacity.rulesets = Capacity::default().rulesets;
        let mut maps = Recording::new(InMemoryMaps::with_capacity(capacity));
        let mut syncer = Syncer::new();
        syncer.sync(&mut maps, &before).unwrap();
        maps.watch(&before, &after);
        let report = syncer.sync(&mut maps, &after).unwrap();
        assert!(report.stats.fallback, "{:?}", maps.log);
        assert_eq!(maps.maps.state, after);
        assert_eq!(syncer.written(), Some(&after));
        assert_eq!(maps.opened(), [] as [String; 0]);
        assert_eq!(report.changes, diff(&before, &after));
        // web was denied (not programmed) while its old set's entries went.
        let closed = maps
            .log
            .iter()
            .position(|w| *w == ("upsert", MapKey::Endpoint(web_key)))
            .unwrap();
        let old_entry = maps
            .log
            .iter()
            .position(|(operation, key)| {
                *operation == "delete" && matches!(key, MapKey::Policy(key) if key.set == old_set)
            })
            .unwrap();
        assert!(closed < old_entry, "{:?}", maps.log);
    }

    #[test]
    fn syncing_by_difference_reads_the_maps_only_when_it_must() {
        let first = compiled(&[WEB_FROM_CLIENT], &Ids::default());
        let second = compiled(&[WEB_FROM_CLIENT, DB_FROM_WEB], &first.ids);
        let mut maps = Recording::default();
        let mut syncer = Syncer::new();
        assert!(syncer.sync(&mut maps, &first.desired).unwrap().stats.read);
        assert_eq!(maps.reads.get(), 1);
        let report = syncer.sync(&mut maps, &second.desired).unwrap();
        assert!(!report.stats.read && report.stats.changed());
        assert_eq!(maps.reads.get(), 1);
        assert_eq!(maps.maps.state, second.desired);

        // A failed sync: the next one reads what the maps hold, and completes the change.
        maps.fail_on = Some(("upsert", map_names::ENDPOINTS));
        assert!(syncer.sync(&mut maps, &first.desired).is_err());
        assert_eq!((maps.reads.get(), syncer.written()), (1, None));
        maps.fail_on = None;
        assert!(syncer.sync(&mut maps, &first.desired).unwrap().stats.read);
        assert_eq!(maps.reads.get(), 2);
        assert_eq!(maps.maps.state, first.desired);
        assert!(
            !syncer
                .sync(&mut maps, &first.desired)
                .unwrap()
                .stats
                .changed()
        );
        assert_eq!(maps.reads.get(), 2);

        // A drift check reads.
        let drift = syncer.check_drift(&mut maps).unwrap().unwrap();
        assert!(drift.read && !drift.changed());
        assert_eq!(maps.reads.get(), 3);
    }

    #[test]
    fn a_drift_check_repairs_a_tampered_map() {
        let desired = compiled(&[WEB_FROM_CLIENT, DB_FROM_WEB], &Ids::default()).desired;
        let mut maps = InMemoryMaps::default();
        let mut syncer = Syncer::new();
        assert_eq!(syncer.check_drift(&mut maps).unwrap(), None);
        syncer.sync(&mut maps, &desired).unwrap();

        // Someone removes an entry, adds an allow for the world to web's set, lifts an
        // endpoint's isolation and writes rule set 0 (which entries name to allow nothing).
        let web = EndpointKey {
            addr: addr::to_bytes(ip("10.0.0.1")),
        };
        let removed = *desired.policy.keys().next().unwrap();
        maps.state.policy.remove(&removed);
        let allow = rule_sets(&desired.rulesets).next().unwrap().0;
        let world = desired
            .peer_identity(addr::to_bytes(ip("192.0.2.1")))
            .unwrap();
        let web_set = desired.endpoints[&web].ingress_set;
        maps.state.policy.insert(
            PolicyKey {
                set: web_set,
                peer: world.id,
            },
            PolicyEntry { ruleset: allow },
        );
        maps.state.endpoints.get_mut(&web).unwrap().flags = endpoint_flags::PROGRAMMED;
        maps.state.rulesets.insert(0, desired.rulesets[&allow]);
        assert_ne!(maps.state, desired);

        let repairs = syncer.check_drift(&mut maps).unwrap().unwrap();
        assert_eq!(maps.state, desired);
        assert_eq!(
            (repairs.policy, repairs.endpoints, repairs.rulesets),
            (
                MapStats {
                    upserts: 1,
                    deletes: 1
                },
                MapStats {
                    upserts: 1,
                    deletes: 0
                },
                MapStats {
                    upserts: 0,
                    deletes: 1
                }
            )
        );
        assert!(repairs.read);
        assert!(!syncer.check_drift(&mut maps).unwrap().unwrap().changed());
    }

    #[test]
    fn a_rule_set_rewritten_in_place_denies_its_endpoints_meanwhile() {
        // Two sets name one rule set; the new state gives it other content for one of them and
        // moves the other to a new id with the old content.
        let before = compiled(&[WEB_FROM_CLIENT, DB_FROM_WEB], &Ids::default()).desired;
        let mut maps = Recording::default();
        let mut syncer = Syncer::new();
        syncer.sync(&mut maps, &before).unwrap();
        let mut after = before.clone();
        let mut naming = BTreeMap::<u32, usize>::new();
        for entry in before.policy.values() {
            *naming.entry(entry.ruleset).or_default() += 1;
        }
        let (shared, entries) = naming.into_iter().max_by_key(|(_, n)| *n).unwrap();
        assert!(entries >= 2, "{before:?}");
        let value = before.rulesets[&shared];
        let moved = before.rulesets.keys().max().unwrap() + 1;
        after.rulesets.insert(moved, value);
        let mut other = value;
        other.rules[0].port_lo = 9999;
        other.rules[0].port_hi = 9999;
        after.rulesets.insert(shared, other);
        let mut naming = after
            .policy
            .iter_mut()
            .filter(|(_, entry)| entry.ruleset == shared);
        naming.next().unwrap();
        for (_, entry) in naming {
            entry.ruleset = moved;
        }

        maps.watch(&before, &after);
        maps.log.clear();
        syncer.sync(&mut maps, &after).unwrap();
        assert_eq!(maps.maps.state, after);
        assert_eq!(maps.opened(), [] as [String; 0]);
        let write = maps
            .log
            .iter()
            .position(|w| *w == ("write", MapKey::Ruleset(shared)))
            .unwrap();
        assert!(
            maps.log[..write]
                .iter()
                .any(|w| matches!(w, ("upsert", MapKey::Endpoint(_)))),
            "{:?}",
            maps.log
        );
    }
}
