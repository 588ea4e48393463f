//! The policy compiler: a cluster [`Snapshot`] (NetworkPolicies and ClusterNetworkPolicies) →
//! the probe's [`DesiredState`] for the endpoints of one node. Pure (no I/O, no aya) and
//! deterministic: the same input gives the same output, entry for entry.
//!
//! How a rule becomes map entries:
//! 1. Checking. A [`Compiler`] (`incremental`) keeps the cluster between compilations and
//!    checks each object once, when it arrives: `cluster` checks namespaces and pods, `policy`
//!    NetworkPolicies (with `selector`, `peers`, `ports` and `cidr`), `cluster_policy`
//!    ClusterNetworkPolicies of both APIs (whose unreadable rules fail closed), and nodes are
//!    kept with the pods (`cluster::NODE_SCOPE`: their addresses for `nodes` peers, never
//!    endpoints); Services are checked
//!    with their backends (`services`) in each pass. An invalid object is left out, with every
//!    problem reported as an [`InputError`] naming the object and the field. [`compile_with`]
//!    is one pass of a compiler loaded with a whole [`Snapshot`].
//! 2. Ids. Every rule of every valid policy (namespace, name, direction, index) and every
//!    endpoint pod gets a stable id (`ids`): the one it had in `prior`, else the smallest free.
//!    After a policy change only its rules are looked at (all of them when `prior` holds other
//!    ids); until then every pass hands on the same shared map.
//! 3. Peer identities (`identities`). Every address policy can name gets an identity: pods
//!    that every rule peer sees alike share one (same matching selectors, same ipBlock region,
//!    same named ports that egress rules use), the addresses of one ipBlock region share one,
//!    and each ClusterIP has one that falls back to its region's. The node-wide peer trie maps
//!    prefixes to them, so map entries grow with identities, not with pods × pods. The table is
//!    kept between compilations and changed by difference: a pod change reclassifies that pod
//!    only.
//! 4. Policy sets (`sets`). For each endpoint pod (chosen by [`Placement`]) and direction
//!    (`endpoint`), the Admin tier's ClusterNetworkPolicies whose subject selects it (by
//!    priority), the policies of its namespace that select it and have that policy type (which
//!    isolate it), and, when none does, the Baseline tier's: their rule ids in that order (plus,
//!    for ingress named ports, the pod's named ports, and whether it is isolated) make its
//!    policy set, shared by every endpoint with the same. A set holds one rule list per peer
//!    identity its rules match, each rule with its action and tier, NetworkPolicy rules
//!    deduplicated and ordered, ClusterNetworkPolicy rules in order (`ports`); named ports
//!    resolve against the destination pod. A quarantine (`tollgate quarantine`) is an
//!    Admin-tier Deny at priority 0 like any other; among policies of one priority, whose
//!    order the API leaves to the implementation, the quarantine policies come first. Egress
//!    sets then gain each Service's ClusterIP, decided by its
//!    ready backends (`services` finds them from EndpointSlices or the selector; `vips` writes
//!    the entries): allowed when the set may reach every backend on its targetPort, denied with
//!    reason `service-backends-denied` when only some. A set's entries are used again in the
//!    next pass while none of its rules changed and each still matches the same identities;
//!    a kept ingress set whose rules match identities that came or went has only those
//!    identities' values made again; after ClusterIPs changed, a kept egress set has only those
//!    decided again.
//! 5. Fitting (`fit`): the peer trie, the sets' entries with their distinct rule sets, and the
//!    endpoints go into the maps within their [`Capacity`]; an endpoint whose set does not fit
//!    is written not programmed (denied) and reported with its policies. Every endpoint gets a
//!    revision, a counter that moves exactly when what its decisions depend on changes.
//! 6. The node's own addresses (`Snapshot::node_addresses`) go into the node-address map:
//!    their traffic to a local pod passes ingress policy (`from-node`), as the API requires.

pub(crate) mod cidr;
mod cluster;
mod cluster_policy;
mod endpoint;
mod fit;
mod identities;
mod ids;
mod incremental;
mod peers;
mod policy;
mod ports;
mod recover;
mod revisions;
mod selector;
pub mod services;
mod sets;
mod universe;
mod vips;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use tollgate_schemas::{Direction, EndpointKey, addr, port_action, rule_tier};

pub use cluster::{
    ENFORCEMENT_ANNOTATION, MANAGED_BY, NAMESPACE_NAME_LABEL, QUARANTINE_LABEL,
    QUARANTINE_POLICY_PREFIX,
};
pub use incremental::{ClusterObject, Compiler, Object, ObjectKind};
pub use recover::recover_ids;

use crate::desired::{Capacity, DesiredState, Ids, NamedRule, PolicyTier, RuleAction, RuleRef};
use crate::snapshot::{InputError, Snapshot};
use cluster::{Cluster, PodInfo};
use endpoint::PolicyRules;
use identities::Peers;
use policy::Policy;
use sets::{SetCache, SetEntries, SetKey, Sets};

/// Which pods are endpoints on this node, and the ifindex of each one's host-side veth.
#[derive(Debug, Clone, Copy)]
pub enum Placement<'a> {
    /// Every pod with an IP is an endpoint, all on one interface (verify, tests).
    AllPods {
        /// Interface index every endpoint gets.
        ifindex: u32,
    },
    /// Only these pods, by "namespace/name", on these interfaces (lab, agent).
    Interfaces(&'a BTreeMap<String, u32>),
    /// As [`Placement::Interfaces`], except that the addresses of `addresses` are each on
    /// their own interface: a pod with one interface per address (the VPC CNI's multi-NIC
    /// pods) is one endpoint, the same identity and rules on each of its interfaces (agent).
    InterfacesByAddress {
        /// Each endpoint pod's first interface, by "namespace/name".
        pods: &'a BTreeMap<String, u32>,
        /// The interface of each address that is not on its pod's first one.
        addresses: &'a BTreeMap<IpAddr, u32>,
    },
}

impl Placement<'_> {
    /// The endpoint pods of `cluster` (networked ones only) with their interfaces, in pod
    /// order.
    fn endpoints<'c>(&self, cluster: &'c Cluster) -> Vec<(&'c PodInfo, u32)> {
        match self {
            Placement::AllPods { ifindex } => cluster
                .pods
                .values()
                .filter(|pod| pod.is_networked())
                .map(|pod| (pod, *ifindex))
                .collect(),
            Placement::Interfaces(pods) | Placement::InterfacesByAddress { pods, .. } => pods
                .iter()
                .filter_map(|(key, ifindex)| Some((cluster.pods.get(key)?, *ifindex)))
                .filter(|(pod, _)| pod.is_networked())
                .collect(),
        }
    }

    /// The interfaces of addresses that are not on their pod's first interface.
    fn by_address(&self) -> BTreeMap<IpAddr, u32> {
        match self {
            Placement::InterfacesByAddress { addresses, .. } => (*addresses).clone(),
            Placement::AllPods { .. } | Placement::Interfaces(_) => BTreeMap::new(),
        }
    }
}

/// The result of one compilation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Compiled {
    /// What the probe's maps should hold.
    pub desired: DesiredState,
    /// The ids this compilation used: pass them as `prior` to the next one.
    pub ids: Ids,
    /// Rule id → the policy rule it stands for, with its tier, action and policy version.
    pub rules: Arc<BTreeMap<u32, NamedRule>>,
    /// Endpoint id → the pod, as `namespace/name`.
    pub endpoint_pods: BTreeMap<u32, String>,
    /// Endpoint id → the NetworkPolicies (`namespace/name`) that isolate it, ingress then
    /// egress (endpoints isolated in neither direction are left out): what a denial for want
    /// of a matching rule names.
    pub isolating: BTreeMap<u32, [Vec<String>; 2]>,
    /// Every valid Service with its ready backends (see [`services`]), by namespace and name:
    /// what a ClusterIP stands for, for flow records, verify and the lab's kube-proxy.
    pub services: services::Services,
    /// Invalid objects (left out), by kind (Namespace, Pod, NetworkPolicy, Service,
    /// EndpointSlice) then namespace and name, after those of unnamed and duplicate objects;
    /// then capacity problems.
    pub errors: Vec<InputError>,
}

/// Problems found in one object, by field; reported as [`InputError`]s once the object is
/// named.
#[derive(Debug, Default)]
pub(crate) struct Problems(Vec<(String, String)>);

impl Problems {
    /// Records that `field` is wrong, and why.
    pub(crate) fn push(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push((field.into(), message.into()));
    }

    /// How many problems were recorded (compare before and after a check).
    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether no problem was recorded.
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Adds the problems of `other`.
    pub(crate) fn extend(&mut self, other: Problems) {
        self.0.extend(other.0);
    }

    /// Turns the problems into errors of `object`.
    pub(crate) fn report(self, object: &str, errors: &mut Vec<InputError>) {
        errors.extend(self.0.into_iter().map(|(field, message)| InputError {
            object: object.to_owned(),
            field,
            message,
        }));
    }

    /// The problems as (field, message) pairs.
    #[cfg(test)]
    pub(crate) fn into_fields(self) -> Vec<(String, String)> {
        self.0
    }
}

/// Compiles `snapshot` into the maps' desired state for the endpoints `placement` names,
/// keeping the ids of `prior` for what still exists, within the default map capacities.
pub fn compile(snapshot: &Snapshot, placement: &Placement<'_>, prior: &Ids) -> Compiled {
    compile_with(snapshot, placement, prior, &Capacity::default())
}

/// [`compile`] within `capacity`: what does not fit is reported in [`Compiled::errors`], and
/// its endpoints are denied (see `fit`).
pub fn compile_with(
    snapshot: &Snapshot,
    placement: &Placement<'_>,
    prior: &Ids,
    capacity: &Capacity,
) -> Compiled {
    Compiler::from_snapshot(snapshot).compile(placement, prior, capacity)
}

/// One compilation of checked inputs (the objects' problems already in `errors`).
#[allow(clippy::too_many_arguments)]
fn run(
    rule_ids: &RuleIds,
    cluster: &Cluster,
    peers: &Peers,
    touched: Option<&BTreeSet<IpAddr>>,
    (policy_changes, policies_changed, set_cache): (
        u64,
        &BTreeSet<(String, String)>,
        &mut SetCache,
    ),
    policies: &[&Policy],
    (services, services_changed): (services::Services, Option<&BTreeSet<vips::ServiceKey>>),
    node_addresses: &[IpAddr],
    placement: &Placement<'_>,
    prior: &Ids,
    capacity: &Capacity,
    mut errors: Vec<InputError>,
) -> Compiled {
    let RuleIds {
        by_rule: rule_ids,
        by_id: rules_by_id,
        ..
    } = rule_ids.clone();
    let mut rules = HashMap::new();
    let policy_rules: Vec<PolicyRules<'_>> = policies
        .iter()
        .copied()
        .map(|policy| {
            let mut listed = rules_of(&rule_ids, &policy.namespace, &policy.name)
                .map(|(rule, id)| (rule.direction, *id));
            let mut ids = |direction| {
                let list = match direction {
                    Direction::Ingress => policy.ingress.as_deref(),
                    Direction::Egress => policy.egress.as_deref(),
                }?;
                Some(
                    list.iter()
                        .map(|compiled| {
                            let (listed_as, id) = listed.next().expect("every rule has an id");
                            debug_assert_eq!(listed_as, direction);
                            rules.insert(id, (policy, compiled));
                            id
                        })
                        .collect(),
                )
            };
            PolicyRules {
                policy,
                ingress: ids(Direction::Ingress),
                egress: ids(Direction::Egress),
            }
        })
        .collect();

    let endpoints = placement.endpoints(cluster);
    let endpoint_ids = ids::assign(&prior.endpoints, endpoints.iter().map(|(pod, _)| pod.key()));

    let mut sets = Sets::new(
        peers,
        touched,
        rules,
        &rule_ids,
        (policy_changes, policies_changed),
        (&services, services_changed),
        std::mem::take(set_cache),
    );
    // Policies are in (namespace, name) order: each namespace's are one run. A
    // ClusterNetworkPolicy's "namespace" is its API group, which no pod's namespace is.
    let mut of_namespace: HashMap<&str, &[PolicyRules<'_>]> = HashMap::new();
    for run in policy_rules.chunk_by(|a, b| a.policy.namespace == b.policy.namespace) {
        of_namespace.insert(&run[0].policy.namespace, run);
    }
    let mut cluster_rules: Vec<&PolicyRules<'_>> = policy_rules
        .iter()
        .filter(|rules| rules.policy.cluster.is_some())
        .collect();
    cluster_rules.sort_by(|a, b| {
        cluster_policy::order_key(a.policy).cmp(&cluster_policy::order_key(b.policy))
    });
    let plans: Vec<endpoint::Plan<'_>> = endpoints
        .into_iter()
        .map(|(pod, ifindex)| {
            let namespace = cluster.namespaces.get(&pod.namespace);
            let id = endpoint_ids[&pod.key()];
            let policies = of_namespace.get(pod.namespace.as_str()).copied();
            endpoint::plan(
                &sets,
                (policies.unwrap_or_default(), &cluster_rules),
                (
                    namespace.map(|ns| &ns.labels),
                    namespace.is_some_and(|ns| ns.audit),
                ),
                pod,
                id,
                ifindex,
            )
        })
        .collect();
    let keys: BTreeSet<SetKey> = plans
        .iter()
        .flat_map(|plan| plan.sets.iter().flatten().cloned())
        .collect();
    let set_ids = ids::assign(&prior.sets, keys.iter().map(SetKey::canonical));
    let set_entries: BTreeMap<SetKey, Arc<SetEntries>> = keys
        .into_iter()
        .map(|key| {
            let entries = sets.entries(&key);
            (key, entries)
        })
        .collect();
    *set_cache = sets.into_cache();

    let isolating = plans
        .iter()
        .filter(|plan| plan.isolating.iter().any(|names| !names.is_empty()))
        .map(|plan| (plan.id, plan.isolating.clone()))
        .collect();
    let by_address = placement.by_address();
    let fitted = fit::fit(
        cluster,
        peers,
        touched,
        &set_entries,
        &set_ids,
        &plans,
        &by_address,
        capacity,
        prior,
        &mut errors,
    );
    let mut desired = fitted.desired;
    desired.node_addrs = node_addresses
        .iter()
        .map(|ip| EndpointKey {
            addr: addr::to_bytes(*ip),
        })
        .take(capacity.node_addrs as usize)
        .collect();

    tracing::debug!(
        endpoints = endpoint_ids.len(),
        rules = rule_ids.len(),
        identities = peers.identity_ids.len(),
        sets = set_ids.len(),
        peer_entries = desired.peers.len(),
        policy_entries = desired.policy.len(),
        rulesets = desired.rulesets.len(),
        errors = errors.len(),
        "compiled network policies"
    );
    Compiled {
        desired,
        rules: rules_by_id,
        endpoint_pods: endpoint_ids
            .iter()
            .map(|(p, id)| (*id, p.clone()))
            .collect(),
        isolating,
        ids: Ids {
            endpoints: endpoint_ids,
            rules: rule_ids,
            selectors: peers.selector_ids.clone(),
            sets: set_ids,
            identities: peers.identity_ids.clone(),
            rulesets: fitted.rulesets,
            revisions: fitted.revisions,
            next_revision: fitted.next_revision,
            set_digests: fitted.set_digests,
            peer_ids: fitted.peer_ids,
            regions: fitted.regions,
        },
        services,
        errors,
    }
}

/// The ids of the rules of every valid policy, both ways, with the count of policy changes
/// they were assigned after.
#[derive(Debug, Clone, Default)]
struct RuleIds {
    policy_changes: u64,
    by_rule: Arc<BTreeMap<RuleRef, u32>>,
    by_id: Arc<BTreeMap<u32, NamedRule>>,
}

impl RuleIds {
    /// The ids of the rules of `policies` (after the `policy_changes`-th policy change, the
    /// policies `changed` since `kept` was made), those of `prior` kept. When `kept` was made
    /// from the same prior ids, only the rules of the changed policies are looked at: the
    /// others keep their ids, as assigning them all again would give.
    fn assign(
        policies: &BTreeMap<(String, String), Policy>,
        (policy_changes, changed): (u64, &BTreeSet<(String, String)>),
        prior: &Ids,
        kept: Option<&RuleIds>,
    ) -> RuleIds {
        let Some(kept) = kept.filter(|kept| kept.by_rule == prior.rules) else {
            let by_rule = ids::assign(&prior.rules, policies.values().flat_map(rule_refs));
            return RuleIds {
                policy_changes,
                by_id: Arc::new(
                    by_rule
                        .iter()
                        .map(|(rule, id)| (*id, named(policies, rule)))
                        .collect(),
                ),
                by_rule: Arc::new(by_rule),
            };
        };
        if kept.policy_changes == policy_changes {
            return kept.clone();
        }
        // As `ids::assign`: a new rule takes the smallest id that no prior rule had.
        let reserved: HashSet<u32> = kept.by_rule.values().copied().collect();
        let mut by_rule = (*kept.by_rule).clone();
        let mut by_id = (*kept.by_id).clone();
        let mut new = BTreeSet::new();
        for (namespace, name) in changed {
            let now: BTreeSet<RuleRef> = policies
                .get(&(namespace.clone(), name.clone()))
                .into_iter()
                .flat_map(rule_refs)
                .collect();
            let gone: Vec<RuleRef> = rules_of(&by_rule, namespace, name)
                .map(|(rule, _)| rule)
                .filter(|rule| !now.contains(*rule))
                .cloned()
                .collect();
            for rule in gone {
                let id = by_rule.remove(&rule).expect("a listed rule");
                by_id.remove(&id);
            }
            // The rules kept may have another action, and the policy another version.
            for (rule, id) in rules_of(&by_rule, namespace, name) {
                by_id.insert(*id, named(policies, rule));
            }
            new.extend(now.into_iter().filter(|rule| !by_rule.contains_key(rule)));
        }
        for (rule, id) in new.into_iter().zip(ids::fresh(|id| reserved.contains(&id))) {
            by_id.insert(id, named(policies, &rule));
            by_rule.insert(rule, id);
        }
        RuleIds {
            policy_changes,
            by_rule: Arc::new(by_rule),
            by_id: Arc::new(by_id),
        }
    }
}

/// The rules of policy `namespace`/`name` in `ids`, with their ids, in (direction, index)
/// order: ingress first.
fn rules_of<'i>(
    ids: &'i BTreeMap<RuleRef, u32>,
    namespace: &'i str,
    name: &'i str,
) -> impl Iterator<Item = (&'i RuleRef, &'i u32)> {
    let first = RuleRef {
        namespace: namespace.to_owned(),
        policy: name.to_owned(),
        direction: Direction::Ingress,
        index: 0,
    };
    ids.range(first..)
        .take_while(move |(rule, _)| rule.namespace == namespace && rule.policy == name)
}

/// `rule` (of one of `policies`) as records name it.
fn named(policies: &BTreeMap<(String, String), Policy>, rule: &RuleRef) -> NamedRule {
    let policy = &policies[&(rule.namespace.clone(), rule.policy.clone())];
    let rules = match rule.direction {
        Direction::Ingress => policy.ingress.as_deref(),
        Direction::Egress => policy.egress.as_deref(),
    };
    let action = rules.and_then(|rules| rules.get(rule.index as usize));
    let action = match (action.map(|r| r.action), &policy.cluster) {
        (_, None) => RuleAction::Allow,
        (Some(port_action::DENY), Some(_)) => RuleAction::Deny,
        (Some(port_action::PASS), Some(_)) => RuleAction::Pass,
        (_, Some(_)) => RuleAction::Accept,
    };
    let tier = match policy.tier() {
        rule_tier::ADMIN => PolicyTier::Admin,
        rule_tier::BASELINE => PolicyTier::Baseline,
        _ => PolicyTier::NetworkPolicy,
    };
    NamedRule {
        rule: rule.clone(),
        tier,
        action,
        version: policy.version.clone(),
    }
}

/// Every compiled rule of `policy`: those of the types it has.
fn rule_refs(policy: &Policy) -> impl Iterator<Item = RuleRef> + '_ {
    let ingress = policy.ingress.as_ref().map_or(0, Vec::len);
    let egress = policy.egress.as_ref().map_or(0, Vec::len);
    rule_refs_of(policy, Direction::Ingress, ingress).chain(rule_refs_of(
        policy,
        Direction::Egress,
        egress,
    ))
}

fn rule_refs_of(
    policy: &Policy,
    direction: Direction,
    count: usize,
) -> impl Iterator<Item = RuleRef> + '_ {
    (0..count).map(move |index| RuleRef {
        namespace: policy.namespace.clone(),
        policy: policy.name.clone(),
        direction,
        index: index as u32,
    })
}

#[cfg(test)]
mod tests;
