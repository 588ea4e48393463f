//! NetworkPolicies: each object is checked in full into a [`Policy`] or left out with every
//! problem reported (a policy the API server would refuse is as if it had never been applied).
//!
//! Checking also settles the API's defaults: `podSelector` absent means `{}`; `policyTypes`
//! absent or empty means `[Ingress]`, plus `Egress` when `spec.egress` is non-empty. A rule
//! list of a type the policy does not have is checked but not compiled; a rule list that is
//! absent or empty for a type the policy has isolates and allows nothing.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use sha2::{Digest, Sha256};
use tollgate_schemas::{port_action, rule_tier};

use super::Problems;
use super::cluster::{QUARANTINE_POLICY_PREFIX, audit_annotation, managed_by_tollgate};
use super::peers::{Peer, parse_peers};
use super::ports::{PortSpec, parse_ports};
use super::selector::Selector;
use crate::manifest::DEFAULT_NAMESPACE;

/// One rule of `spec.ingress` or `spec.egress`, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rule {
    /// `from`/`to`; `None`: every address.
    pub(crate) peers: Option<Vec<Peer>>,
    /// `ports`; `[PortSpec::Any]` when the rule has none.
    pub(crate) ports: Vec<PortSpec>,
    /// What it does to what it matches ([`port_action`]): a NetworkPolicy's rule allows; a
    /// ClusterNetworkPolicy's accepts (allows), denies or passes.
    pub(crate) action: u8,
}

/// The tier of a ClusterNetworkPolicy, its priority in the tier and the pods it applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ClusterScope {
    /// [`rule_tier::ADMIN`] or [`rule_tier::BASELINE`].
    pub(crate) tier: u8,
    /// `spec.priority`, 0 to 1000: lower first.
    pub(crate) priority: u16,
    /// `spec.subject`.
    pub(crate) subject: Subject,
}

/// The pods a ClusterNetworkPolicy applies to: those of the namespaces `namespaces` selects
/// that `pods` selects (`None`: all of them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Subject {
    /// Namespace selector.
    pub(crate) namespaces: Selector,
    /// Pod selector.
    pub(crate) pods: Option<Selector>,
}

impl Subject {
    /// Whether it selects a pod labelled `labels` in a namespace labelled `namespace_labels`
    /// (`None`: a namespace the cluster does not list).
    pub(crate) fn selects(
        &self,
        namespace_labels: Option<&BTreeMap<String, String>>,
        labels: &BTreeMap<String, String>,
    ) -> bool {
        namespace_labels.is_some_and(|ns| self.namespaces.matches(ns))
            && self.pods.as_ref().is_none_or(|pods| pods.matches(labels))
    }
}

/// A valid NetworkPolicy, or ClusterNetworkPolicy (`cluster`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Policy {
    /// Namespace; for a ClusterNetworkPolicy its API group (see `ObjectKind::scope`).
    pub(crate) namespace: String,
    /// Name.
    pub(crate) name: String,
    /// `spec.podSelector`: which pods of the namespace it applies to.
    pub(crate) selector: Selector,
    /// Annotated for audit mode.
    pub(crate) audit: bool,
    /// A ClusterNetworkPolicy `tollgate quarantine` created (see
    /// `cluster_policy::is_quarantine`): it applies first among the policies of its priority.
    pub(crate) quarantine: bool,
    /// Ingress rules, when the policy has the Ingress type.
    pub(crate) ingress: Option<Vec<Rule>>,
    /// Egress rules, when the policy has the Egress type.
    pub(crate) egress: Option<Vec<Rule>>,
    /// A ClusterNetworkPolicy's tier, priority and subject (`selector` is then unused, and a
    /// direction without rules is `None`: it does not affect that direction); `None` for a
    /// NetworkPolicy.
    pub(crate) cluster: Option<ClusterScope>,
    /// Its version, as records name it (see [`version`]).
    pub(crate) version: String,
}

impl Policy {
    /// The tier its rules are in ([`rule_tier`]).
    pub(crate) fn tier(&self) -> u8 {
        self.cluster
            .as_ref()
            .map_or(rule_tier::NETWORK_POLICY, |cluster| cluster.tier)
    }

    /// How it is named in messages: `namespace/name`, or `ClusterNetworkPolicy name`.
    pub(crate) fn label(&self) -> String {
        match &self.cluster {
            None => format!("{}/{}", self.namespace, self.name),
            Some(_) => super::cluster_policy::label_in(&self.namespace, &self.name),
        }
    }
}

/// Checks one named policy: the policy when valid, and its problems either way (an unknown
/// enforcement mode, or a quarantine policy of an earlier tollgate, is reported but does not
/// invalidate the policy).
pub(crate) fn check_one(policy: &NetworkPolicy, problems: &mut Problems) -> Option<Policy> {
    let audit = audit_annotation(&policy.metadata, problems);
    if is_legacy_quarantine(&policy.metadata) {
        problems.push(
            "metadata.name",
            "a quarantine NetworkPolicy of an earlier tollgate: a quarantine is an Admin-tier \
             ClusterNetworkPolicy now, and this policy only adds a deny-all to the pod's other \
             policies; run `tollgate quarantine --release` and quarantine the pod again",
        );
    }
    let mut invalid = Problems::default();
    let checked = check_policy(policy, audit, &mut invalid);
    problems.extend(invalid);
    checked
}

/// Whether a NetworkPolicy is one `tollgate quarantine` created before quarantines were
/// ClusterNetworkPolicies: named with the quarantine prefix and labelled as managed by
/// tollgate.
fn is_legacy_quarantine(meta: &ObjectMeta) -> bool {
    let named = meta
        .name
        .as_deref()
        .is_some_and(|name| name.starts_with(QUARANTINE_POLICY_PREFIX));
    named && managed_by_tollgate(meta)
}

fn check_policy(policy: &NetworkPolicy, audit: bool, problems: &mut Problems) -> Option<Policy> {
    let before = problems.len();
    let meta = &policy.metadata;
    let name = meta.name.clone().filter(|n| !n.is_empty());
    if name.is_none() {
        problems.push("metadata.name", "missing: a NetworkPolicy needs a name");
    }
    let spec = policy.spec.clone().unwrap_or_default();
    let selector = Selector::parse(
        spec.pod_selector
            .as_ref()
            .unwrap_or(&LabelSelector::default()),
        "spec.podSelector",
        problems,
    );
    let egress_given = spec.egress.as_ref().is_some_and(|e| !e.is_empty());
    let mut types = (false, false);
    let declared = spec.policy_types.as_deref().unwrap_or_default();
    for (index, policy_type) in declared.iter().enumerate() {
        match policy_type.as_str() {
            "Ingress" => types.0 = true,
            "Egress" => types.1 = true,
            other => problems.push(
                format!("spec.policyTypes[{index}]"),
                format!("unknown policy type {other:?} (Ingress or Egress)"),
            ),
        }
    }
    if declared.is_empty() {
        types = (true, egress_given);
    }
    let ingress: Vec<Rule> = spec
        .ingress
        .iter()
        .flatten()
        .enumerate()
        .filter_map(|(i, rule)| {
            let at = format!("spec.ingress[{i}]");
            check_rule(
                rule.from.as_deref(),
                "from",
                rule.ports.as_deref(),
                &at,
                problems,
            )
        })
        .collect();
    let egress: Vec<Rule> = spec
        .egress
        .iter()
        .flatten()
        .enumerate()
        .filter_map(|(i, rule)| {
            let at = format!("spec.egress[{i}]");
            check_rule(
                rule.to.as_deref(),
                "to",
                rule.ports.as_deref(),
                &at,
                problems,
            )
        })
        .collect();
    if problems.len() != before {
        return None;
    }
    Some(Policy {
        namespace: meta
            .namespace
            .clone()
            .unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned()),
        name: name?,
        selector: selector?,
        audit,
        quarantine: false,
        ingress: types.0.then_some(ingress),
        egress: types.1.then_some(egress),
        cluster: None,
        version: version(meta, &policy.spec),
    })
}

/// A policy's version: its resourceVersion, or for an object without one (a manifest file)
/// `sha256:` and the first 16 hex digits of the SHA-256 of its spec's JSON.
pub(crate) fn version(meta: &ObjectMeta, spec: &impl serde::Serialize) -> String {
    if let Some(version) = meta.resource_version.as_ref().filter(|v| !v.is_empty()) {
        return version.clone();
    }
    // A spec of k8s-openapi types or JSON values always serializes.
    let json = serde_json::to_vec(spec).unwrap_or_default();
    let digest = Sha256::digest(&json);
    let mut version = String::from("sha256:");
    for byte in &digest[..8] {
        let _ = write!(version, "{byte:02x}");
    }
    version
}

fn check_rule(
    peers: Option<&[NetworkPolicyPeer]>,
    peers_field: &str,
    ports: Option<&[NetworkPolicyPort]>,
    at: &str,
    problems: &mut Problems,
) -> Option<Rule> {
    let peers = parse_peers(peers, &format!("{at}.{peers_field}"), problems);
    let ports = parse_ports(ports, &format!("{at}.ports"), problems);
    Some(Rule {
        peers: peers?,
        ports: ports?,
        action: port_action::ALLOW,
    })
}
