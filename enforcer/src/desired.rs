//! The desired contents of the probe's policy maps, as the compiler produces them and the
//! map sync writes them, plus the tables userspace needs to name what the maps refer to.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use tollgate_schemas::{
    Direction, EndpointKey, EndpointState, PeerIdentity, PeerKey, PolicyEntry, PolicyKey,
    PolicyValue, PortRule, map_names, map_sizes,
};

use crate::crd::{AWS_CLUSTER_NETWORK_POLICY_GROUP, CLUSTER_NETWORK_POLICY_GROUP};

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

/// One rule of one policy (a NetworkPolicy or a ClusterNetworkPolicy): what a compiled rule
/// id stands for.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct RuleRef {
    /// Namespace of the NetworkPolicy; for a ClusterNetworkPolicy, which is cluster-scoped, its
    /// API group (no namespace name has a dot, so the two never collide): see
    /// [`RuleRef::kind`].
    pub namespace: String,
    /// Name of the policy.
    pub policy: String,
    /// `ingress` or `egress`: which rule list of the spec.
    #[serde(serialize_with = "serialize_direction")]
    pub direction: Direction,
    /// Index of the rule in `spec.ingress` or `spec.egress`.
    pub index: u32,
}

fn serialize_direction<S: serde::Serializer>(d: &Direction, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(d.name())
}

impl RuleRef {
    /// The kind of policy the rule is in.
    pub fn kind(&self) -> PolicyKind {
        match self.namespace.as_str() {
            CLUSTER_NETWORK_POLICY_GROUP => PolicyKind::ClusterNetworkPolicy,
            AWS_CLUSTER_NETWORK_POLICY_GROUP => PolicyKind::AwsClusterNetworkPolicy,
            _ => PolicyKind::NetworkPolicy,
        }
    }

    /// The policy's namespace: `None` for a cluster-scoped one.
    pub fn policy_namespace(&self) -> Option<&str> {
        match self.kind() {
            PolicyKind::NetworkPolicy => Some(&self.namespace),
            PolicyKind::ClusterNetworkPolicy | PolicyKind::AwsClusterNetworkPolicy => None,
        }
    }

    /// The policy as tools name it: `namespace/name` for a NetworkPolicy, `KIND/name` for a
    /// cluster-scoped one ([`PolicyKind::name`]).
    pub fn policy_label(&self) -> String {
        match self.policy_namespace() {
            Some(namespace) => format!("{namespace}/{}", self.policy),
            None => format!("{}/{}", self.kind().name(), self.policy),
        }
    }
}

impl std::fmt::Display for RuleRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}[{}]",
            self.policy_label(),
            self.direction.name(),
            self.index
        )
    }
}

/// What a compiled rule id stands for, as records and tools name it: the rule, the tier it
/// decides in, what it does, and the version of its policy.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
pub struct NamedRule {
    /// Which policy's rule.
    pub rule: RuleRef,
    /// The tier it decides in.
    pub tier: PolicyTier,
    /// What it does to what it matches.
    pub action: RuleAction,
    /// The policy's version: its resourceVersion, or a digest of its spec when it has none
    /// (a manifest file): `sha256:` and 16 hex digits.
    pub version: String,
}

impl std::fmt::Display for NamedRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.rule.fmt(f)
    }
}

/// The policy tiers, in the order they decide.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub enum PolicyTier {
    /// ClusterNetworkPolicies of the Admin tier.
    Admin,
    /// NetworkPolicies.
    NetworkPolicy,
    /// ClusterNetworkPolicies of the Baseline tier.
    Baseline,
}

impl PolicyTier {
    /// Its name in records and output, as the API spells it.
    pub const fn name(self) -> &'static str {
        match self {
            PolicyTier::Admin => "Admin",
            PolicyTier::NetworkPolicy => "NetworkPolicy",
            PolicyTier::Baseline => "Baseline",
        }
    }
}

/// What a rule does to what it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum RuleAction {
    /// A NetworkPolicy's rule: allows.
    Allow,
    /// A ClusterNetworkPolicy's Accept: allows, and ends evaluation.
    Accept,
    /// A ClusterNetworkPolicy's Deny.
    Deny,
    /// A ClusterNetworkPolicy's Pass: the next tier decides.
    Pass,
}

impl RuleAction {
    /// Its name in records and output: the API's action, `Allow` for a NetworkPolicy's rule.
    pub const fn name(self) -> &'static str {
        match self {
            RuleAction::Allow => "Allow",
            RuleAction::Accept => "Accept",
            RuleAction::Deny => "Deny",
            RuleAction::Pass => "Pass",
        }
    }
}

/// The kinds of policy a rule can be in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PolicyKind {
    /// networking.k8s.io/v1 NetworkPolicy.
    NetworkPolicy,
    /// policy.networking.k8s.io ClusterNetworkPolicy.
    ClusterNetworkPolicy,
    /// networking.k8s.aws ClusterNetworkPolicy.
    AwsClusterNetworkPolicy,
}

impl PolicyKind {
    /// Its name in records and output: the API's kind, qualified with the group where two
    /// APIs share the kind (`ClusterNetworkPolicy.networking.k8s.aws`).
    pub const fn name(self) -> &'static str {
        match self {
            PolicyKind::NetworkPolicy => "NetworkPolicy",
            PolicyKind::ClusterNetworkPolicy => "ClusterNetworkPolicy",
            PolicyKind::AwsClusterNetworkPolicy => "ClusterNetworkPolicy.networking.k8s.aws",
        }
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
