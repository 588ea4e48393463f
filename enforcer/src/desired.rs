//! The desired contents of the probe's policy maps, as the compiler produces them and the
//! map sync writes them, plus the tables userspace needs to name what the maps refer to.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use tollgate_schemas::{
    EndpointKey, EndpointState, PeerIdentity, PeerKey, PolicyEntry, PolicyKey, PolicyValue,
    PortRule, map_names, map_sizes,
};

pub use tollgate_schemas::rule::{NamedRule, PolicyKind, PolicyTier, RuleAction, RuleRef};

/// Key of one peer-trie entry: the prefix length (0 to 128, over the 16-byte address form)
/// and the prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerEntryKey {
    /// Prefix length in bits of the 16-byte address form (an IPv4 /24 is 120).
    pub prefix_len: u32,
    /// The prefix, host bits zero.
    pub key: PeerKey,
}

/// Everything the probe's policy maps should hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DesiredState {
    /// Endpoint map: pod address → endpoint (its policy set per direction).
    pub endpoints: BTreeMap<EndpointKey, EndpointState>,
    /// Peer trie: address prefix → peer identity, node-wide.
    pub peers: BTreeMap<PeerEntryKey, PeerIdentity>,
    /// Policy map: (policy set, peer identity) → rule set.
    pub policy: BTreeMap<PolicyKey, PolicyEntry>,
    /// Rule-set array: id (1 and up; 0 is the empty set, never written) → value.
    pub rulesets: BTreeMap<u32, PolicyValue>,
    /// Node-address map: the node's own addresses, whose traffic to a local pod passes
    /// ingress policy (reason `from-node`).
    pub node_addrs: BTreeSet<EndpointKey>,
}

/// How many entries each policy map may hold: the compiler fits its output to these, the
/// loader creates the maps with them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    /// Endpoint map (addresses).
    pub endpoints: u32,
    /// Peer trie (prefixes).
    pub peers: u32,
    /// Policy map ((set, identity) entries).
    pub policy: u32,
    /// Rule-set array, index 0 (the empty set) included.
    pub rulesets: u32,
    /// Node-address map.
    pub node_addrs: u32,
}

impl Default for Capacity {
    fn default() -> Self {
        Self {
            endpoints: map_sizes::ENDPOINTS,
            peers: map_sizes::PEERS,
            policy: map_sizes::POLICY,
            rulesets: map_sizes::RULESETS,
            node_addrs: map_sizes::NODE_ADDRS,
        }
    }
}

/// One map's use: entries the desired state puts there against the map's capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct MapUsage {
    /// Map name ([`map_names`]).
    pub map: &'static str,
    /// Entries desired.
    pub entries: usize,
    /// Capacity.
    pub capacity: u32,
}

impl DesiredState {
    /// Entries per map against `capacity` (the rule-set array counts its empty slot 0).
    pub fn usage(&self, capacity: &Capacity) -> [MapUsage; 5] {
        let usage = |map, entries, capacity| MapUsage {
            map,
            entries,
            capacity,
        };
        [
            usage(
                map_names::ENDPOINTS,
                self.endpoints.len(),
                capacity.endpoints,
            ),
            usage(map_names::PEERS, self.peers.len(), capacity.peers),
            usage(map_names::POLICY, self.policy.len(), capacity.policy),
            usage(
                map_names::RULESETS,
                self.rulesets.len() + 1,
                capacity.rulesets,
            ),
            usage(
                map_names::NODE_ADDRS,
                self.node_addrs.len(),
                capacity.node_addrs,
            ),
        ]
    }

    /// The rule set that policy set `set` applies to the peer address `peer` (16-byte form), as
    /// the probe finds it: the peer's identity (longest prefix), its policy entry or else its
    /// fallback's, then the rule set. `None`: no identity, or no entry (nothing allowed).
    pub fn rules_for(&self, set: u32, peer: [u8; 16]) -> Option<&PolicyValue> {
        self.rules_for_identity(set, self.peer_identity(peer)?)
    }

    /// The rule set that policy set `set` applies to a peer of identity `identity`: its own
    /// entry, else its fallback's. `None`: no entry (nothing allowed).
    pub fn rules_for_identity(&self, set: u32, identity: PeerIdentity) -> Option<&PolicyValue> {
        let entry = |peer| self.policy.get(&PolicyKey { set, peer });
        let entry = entry(identity.id).or_else(|| {
            (identity.fallback != 0)
                .then(|| entry(identity.fallback))
                .flatten()
        })?;
        Some(
            self.rulesets
                .get(&entry.ruleset)
                .unwrap_or(&PolicyValue::EMPTY),
        )
    }

    /// The identity of `peer`: the value of its longest prefix in the peer trie, as the kernel's
    /// LPM trie answers.
    pub fn peer_identity(&self, peer: [u8; 16]) -> Option<PeerIdentity> {
        self.longest_peer(peer, 128)
    }

    /// The identity the addresses of peer prefix `key` have when `key` itself is not in the
    /// trie: that of the longest shorter prefix around it.
    pub fn identity_around(&self, key: &PeerEntryKey) -> Option<PeerIdentity> {
        let below = key.prefix_len.min(128).checked_sub(1)?;
        self.longest_peer(key.key.addr, below)
    }

    /// The value of the longest prefix of `addr` in the peer trie that is at most `max_len` bits.
    fn longest_peer(&self, addr: [u8; 16], max_len: u32) -> Option<PeerIdentity> {
        let bits = u128::from_be_bytes(addr);
        (0..=max_len).rev().find_map(|len| {
            let mask = u128::MAX.checked_shl(128 - len).unwrap_or(0);
            self.peers
                .get(&PeerEntryKey {
                    prefix_len: len,
                    key: PeerKey {
                        addr: (bits & mask).to_be_bytes(),
                    },
                })
                .copied()
        })
    }
}

/// Stable ids, and the endpoints' revisions.
///
/// Ids are inputs as well as outputs of the compiler: an endpoint, rule, selector, policy set,
/// peer identity or rule set that existed in the previous compilation keeps its id, a new one
/// takes the smallest free id (never 0), so a change to one policy does not renumber, and
/// thereby rewrite, the map entries of others.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ids {
    /// Endpoint id of each pod, by `namespace/name`.
    pub endpoints: BTreeMap<String, u32>,
    /// Rule id of each rule (shared with the compiler, which hands the same map on while the
    /// rules stay).
    pub rules: Arc<BTreeMap<RuleRef, u32>>,
    /// Id of each distinct peer selector, by its canonical form (shared with the compiler,
    /// as are `identities` and `peer_ids`).
    pub selectors: Arc<BTreeMap<String, u32>>,
    /// Policy set id of each set, by its canonical form (direction, rule ids, named ports).
    pub sets: BTreeMap<String, u32>,
    /// Peer identity id of each identity, by its canonical form.
    pub identities: Arc<BTreeMap<String, u32>>,
    /// Rule-set id of each distinct rule set, by its rules.
    pub rulesets: BTreeMap<Vec<PortRule>, u32>,
    /// Per endpoint id: what its revision was given for.
    pub revisions: BTreeMap<u32, Revision>,
    /// The next revision to hand out (0: start at 1). The agent starts it at the wall clock's
    /// nanoseconds, so that a restarted agent never reuses a revision a tracked flow carries.
    pub next_revision: u64,
    /// Digest of each policy set's entries and rule sets, by set id.
    pub set_digests: BTreeMap<u32, [u8; 32]>,
    /// The identity of every pod address and ClusterIP in the peer trie.
    pub peer_ids: Arc<BTreeMap<IpAddr, PeerIdentity>>,
    /// The region prefixes of the peer trie.
    pub regions: BTreeSet<PeerEntryKey>,
}

/// An endpoint's revision and what it was given for: it stays while the endpoint's flags and
/// sets stay and no set decides anything differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Revision {
    /// The endpoint's flags.
    pub flags: u32,
    /// Its ingress and egress set ids.
    pub sets: [u32; 2],
    /// The revision.
    pub revision: u64,
}
