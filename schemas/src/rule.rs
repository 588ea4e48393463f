//! What a compiled rule id stands for, as records and tools name it: the rule of a policy
//! ([`RuleRef`]), its tier, its action and its policy's version ([`NamedRule`]). The compiler
//! hands out the ids; the collector names flows with them. Userspace only (`user` feature).

use alloc::{format, string::String};

use serde::Serialize;

use crate::Direction;

/// The API group of the `policy.networking.k8s.io` ClusterNetworkPolicy.
pub const CLUSTER_NETWORK_POLICY_GROUP: &str = "policy.networking.k8s.io";

/// The API group of the `networking.k8s.aws` ClusterNetworkPolicy.
pub const AWS_CLUSTER_NETWORK_POLICY_GROUP: &str = "networking.k8s.aws";

/// One rule of one policy (a NetworkPolicy or a ClusterNetworkPolicy): what a compiled rule
/// id stands for.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
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

impl core::fmt::Display for RuleRef {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
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
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
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

impl core::fmt::Display for NamedRule {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        self.rule.fmt(f)
    }
}

/// The policy tiers, in the order they decide.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
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
