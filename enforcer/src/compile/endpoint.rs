//! One endpoint's plan: which policies isolate the pod in each direction, the policy set they
//! make (shared with every endpoint isolated by the same rules), and its flags. `fit` turns the
//! plans into map entries.

use tollgate_schemas::{Direction, endpoint_flags};

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
    /// `namespace/name` of the policies that isolate it, for error messages.
    pub(crate) policies: Vec<String>,
}

/// Plans endpoint `id`, pod `pod` on interface `ifindex`, under `policies` (those of the pod's
/// namespace, in order).
///
/// A direction is isolated when a policy of the pod's namespace selects the pod and has that
/// type; it is in audit mode when, besides, the namespace is, or every isolating policy is. A
/// quarantine policy that selects the pod is the only one that counts, and never in audit mode.
pub(crate) fn plan<'c>(
    sets: &Sets<'_>,
    policies: &[PolicyRules<'_>],
    namespace_audit: bool,
    pod: &'c PodInfo,
    id: u32,
    ifindex: u32,
) -> Plan<'c> {
    let mut flags = endpoint_flags::PROGRAMMED;
    let selecting = |p: &&PolicyRules<'_>| p.policy.selector.matches(&pod.labels);
    let quarantined = policies
        .iter()
        .filter(selecting)
        .any(|p| p.policy.quarantine);
    let mut plan_sets = [None, None];
    let mut names = Vec::new();
    for (slot, direction) in [Direction::Ingress, Direction::Egress]
        .into_iter()
        .enumerate()
    {
        let isolating: Vec<&PolicyRules<'_>> = policies
            .iter()
            .filter(|p| p.ids(direction).is_some())
            .filter(selecting)
            .filter(|p| !quarantined || p.policy.quarantine)
            .collect();
        if isolating.is_empty() {
            continue;
        }
        flags |= endpoint_flags::isolated(direction);
        if !quarantined && (namespace_audit || isolating.iter().all(|p| p.policy.audit)) {
            flags |= endpoint_flags::audit(direction);
        }
        names.extend(
            isolating
                .iter()
                .map(|p| format!("{}/{}", p.policy.namespace, p.policy.name)),
        );
        let ids = isolating
            .iter()
            .flat_map(|p| p.ids(direction).unwrap_or_default())
            .copied()
            .collect();
        plan_sets[slot] = Some(sets.key(direction, ids, pod));
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
    }
}
