//! One endpoint's plan: which policies apply to the pod in each direction, the policy set they
//! make (shared with every endpoint with the same rules), and its flags. `fit` turns the plans
//! into map entries.
//!
//! A direction's rules, in the order the set lists them: the Admin tier's ClusterNetworkPolicies
//! that select the pod, by priority; then the NetworkPolicies of its namespace that select it
//! (which isolate it); then, only when none does, the Baseline tier's. A matching Pass rule
//! skips the rest of its tier (in the datapath, by each rule's tier).

use std::collections::BTreeMap;

use tollgate_schemas::{Direction, endpoint_flags, rule_tier};

use super::cluster::PodInfo;
use super::policy::Policy;
use super::sets::{SetKey, Sets};

/// A valid policy with the ids of its compiled rules.
pub(crate) struct PolicyRules<'c> {
    /// The policy.
    pub(crate) policy: &'c Policy,
    /// Ids of `spec.ingress[*]`, or `None` when the policy has no Ingress type.
    pub(crate) ingress: Option<Vec<u32>>,
    /// Ids of `spec.egress[*]`, or `None` when the policy has no Egress type.
    pub(crate) egress: Option<Vec<u32>>,
}

impl PolicyRules<'_> {
    fn ids(&self, direction: Direction) -> Option<&[u32]> {
        match direction {
            Direction::Ingress => self.ingress.as_deref(),
            Direction::Egress => self.egress.as_deref(),
        }
    }
}

/// What one endpoint is to become.
pub(crate) struct Plan<'c> {
    /// The pod.
    pub(crate) pod: &'c PodInfo,
    /// Endpoint id.
    pub(crate) id: u32,
    /// Its veth's interface index.
    pub(crate) ifindex: u32,
    /// Flags (programmed, isolated and audit per direction).
    pub(crate) flags: u32,
    /// The set of each direction it is isolated in (ingress, egress), by key.
    pub(crate) sets: [Option<SetKey>; 2],
    /// The policies that apply to it (`namespace/name`, `ClusterNetworkPolicy name`), for error
    /// messages.
    pub(crate) policies: Vec<String>,
    /// The NetworkPolicies (`namespace/name`) that isolate it, ingress then egress: what a
    /// denial for want of a matching rule names.
    pub(crate) isolating: [Vec<String>; 2],
}

/// Plans endpoint `id`, pod `pod` on interface `ifindex`, under `policies` (those of the pod's
/// namespace, in order) and `cluster` (the ClusterNetworkPolicies, Admin tier first, each tier
/// in order); its namespace is labelled `namespace_labels`.
///
/// A direction is isolated when a policy of the pod's namespace selects the pod and has that
/// type; it is in audit mode when, besides, the namespace is, or every isolating policy is. It
/// is tiered when only ClusterNetworkPolicies with rules of that direction select the pod.
pub(crate) fn plan<'c>(
    sets: &Sets<'_>,
    (policies, cluster): (&[PolicyRules<'_>], &[&PolicyRules<'_>]),
    (namespace_labels, namespace_audit): (Option<&BTreeMap<String, String>>, bool),
    pod: &'c PodInfo,
    id: u32,
    ifindex: u32,
) -> Plan<'c> {
    let mut flags = endpoint_flags::PROGRAMMED;
    let selecting = |p: &&PolicyRules<'_>| p.policy.selector.matches(&pod.labels);
    let subject_of: Vec<&PolicyRules<'_>> = cluster
        .iter()
        .copied()
        .filter(|p| {
            p.policy
                .cluster
                .as_ref()
                .is_some_and(|c| c.subject.selects(namespace_labels, &pod.labels))
        })
        .collect();
    let mut plan_sets = [None, None];
    let mut names = Vec::new();
    let mut isolating_names: [Vec<String>; 2] = Default::default();
    for (slot, direction) in [Direction::Ingress, Direction::Egress]
        .into_iter()
        .enumerate()
    {
        let isolating: Vec<&PolicyRules<'_>> = policies
            .iter()
            .filter(|p| p.ids(direction).is_some())
            .filter(selecting)
            .collect();
        let (admin, baseline): (Vec<&PolicyRules<'_>>, Vec<&PolicyRules<'_>>) = subject_of
            .iter()
            .copied()
            .filter(|p| p.ids(direction).is_some())
            .partition(|p| p.policy.tier() == rule_tier::ADMIN);
        let open = isolating.is_empty();
        let applying: Vec<&PolicyRules<'_>> = match open {
            true => admin.iter().chain(&baseline).copied().collect(),
            false => admin.iter().chain(&isolating).copied().collect(),
        };
        if applying.is_empty() {
            continue;
        }
        if open {
            // Only ClusterNetworkPolicies apply: what none of their rules decides passes.
            flags |= endpoint_flags::tiered(direction);
        } else {
            isolating_names[slot] = isolating.iter().map(|p| p.policy.label()).collect();
            flags |= endpoint_flags::isolated(direction);
            if namespace_audit || isolating.iter().all(|p| p.policy.audit) {
                flags |= endpoint_flags::audit(direction);
            }
        }
        names.extend(applying.iter().map(|p| p.policy.label()));
        let ids = applying
            .iter()
            .flat_map(|p| p.ids(direction).unwrap_or_default())
            .copied()
            .collect();
        plan_sets[slot] = Some(sets.key(direction, ids, open, pod));
    }
    names.sort();
    names.dedup();
    Plan {
        pod,
        id,
        ifindex,
        flags,
        sets: plan_sets,
        policies: names,
        isolating: isolating_names,
    }
}
