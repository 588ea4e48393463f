//! The desired contents of the probe's policy maps, as the compiler produces them and the
//! map sync writes them, plus the tables userspace needs to name what the maps refer to.

use std::collections::{BTreeMap, BTreeSet};

use tollgate_schemas::{Direction, EndpointKey, EndpointState, PolicyKey, PolicyValue};

/// Key of one LPM trie entry: the trie's prefix length and its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyEntryKey {
    /// Prefix length in bits over [`PolicyKey`]: 32 (endpoint id) + the peer prefix length in
    /// the 16-byte address form (see [`tollgate_schemas::policy_prefix_len`]).
    pub prefix_len: u32,
    /// Endpoint id and peer prefix (host bits zero).
    pub key: PolicyKey,
}

/// Everything the probe's policy maps should hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DesiredState {
    /// Endpoint map: pod address → endpoint.
    pub endpoints: BTreeMap<EndpointKey, EndpointState>,
    /// Ingress LPM trie: (endpoint, source prefix) → what may enter from there.
    pub ingress: BTreeMap<PolicyEntryKey, PolicyValue>,
    /// Egress LPM trie: (endpoint, destination prefix) → what may leave towards there.
    pub egress: BTreeMap<PolicyEntryKey, PolicyValue>,
    /// Node-address map: the node's own addresses, whose traffic to a local pod passes
    /// ingress policy (reason `from-node`).
    pub node_addrs: BTreeSet<EndpointKey>,
}

impl DesiredState {
    /// The LPM trie of one direction.
    pub fn policy(&self, direction: Direction) -> &BTreeMap<PolicyEntryKey, PolicyValue> {
        match direction {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }

    /// The LPM trie of one direction, to change.
    pub fn policy_mut(
        &mut self,
        direction: Direction,
    ) -> &mut BTreeMap<PolicyEntryKey, PolicyValue> {
        match direction {
            Direction::Ingress => &mut self.ingress,
            Direction::Egress => &mut self.egress,
        }
    }
}

/// One rule of one NetworkPolicy: what a compiled rule id stands for.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct RuleRef {
    /// Namespace of the NetworkPolicy.
    pub namespace: String,
    /// Name of the NetworkPolicy.
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

impl std::fmt::Display for RuleRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}/{} {}[{}]",
            self.namespace,
            self.policy,
            self.direction.name(),
            self.index
        )
    }
}

/// Stable ids for endpoints and rules.
///
/// Ids are inputs as well as outputs of the compiler: an endpoint or rule that existed in the
/// previous compilation keeps its id, a new one takes the smallest free id (never 0), so a
/// change to one policy does not renumber, and thereby rewrite, the map entries of others.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ids {
    /// Endpoint id of each pod, by `namespace/name`.
    pub endpoints: BTreeMap<String, u32>,
    /// Rule id of each rule.
    pub rules: BTreeMap<RuleRef, u32>,
}
