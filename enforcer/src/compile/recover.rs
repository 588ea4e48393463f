//! Ids recovered from maps that a previous agent wrote, so that a restarted agent does not give
//! an id that the maps hold to something else.
//!
//! Ids are kept from one compilation to the next (`ids`), but a new agent starts without them.
//! Compiled from scratch, a cluster that changed while no agent ran can number its policy sets,
//! peer identities or endpoints differently from the maps it finds; the sync would then write
//! new meanings under ids that old entries still use. So the first compilation of a new agent
//! is matched against the maps ([`recover_ids`]): each set, identity, endpoint and rule set takes
//! the id the maps give the same thing (by the addresses that have it, or its content), and
//! every other id the maps hold is reserved for one compilation. The agent then compiles again
//! with these ids.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use tollgate_schemas::PortRule;

use super::Compiled;
use crate::desired::{DesiredState, Ids};

/// `compiled.ids` with the ids `maps` hold: what is the same thing keeps the maps' id, the
/// maps' other ids are reserved. Pass the result as `prior` to compile again.
pub fn recover_ids(compiled: &Compiled, maps: &DesiredState) -> Ids {
    let ids = &compiled.ids;
    let desired = &compiled.desired;

    let mut identity_votes = Votes::default();
    for (key, now) in &desired.peers {
        if let Some(then) = maps.peers.get(key) {
            identity_votes.add(now.id, then.id);
        }
    }
    let identities = identity_votes.remap(
        &ids.identities,
        maps.peers
            .values()
            .flat_map(|p| [p.id, p.fallback])
            .chain(maps.policy.keys().map(|k| k.peer)),
    );

    let mut set_votes = Votes::default();
    let mut endpoint_votes = Votes::default();
    for (key, now) in &desired.endpoints {
        let Some(then) = maps.endpoints.get(key) else {
            continue;
        };
        endpoint_votes.add(now.id, then.id);
        set_votes.add(now.ingress_set, then.ingress_set);
        set_votes.add(now.egress_set, then.egress_set);
    }
    let sets = set_votes.remap(
        &ids.sets,
        maps.endpoints
            .values()
            .flat_map(|e| [e.ingress_set, e.egress_set])
            .chain(maps.policy.keys().map(|k| k.set)),
    );
    let endpoints = endpoint_votes.remap(&ids.endpoints, maps.endpoints.values().map(|e| e.id));

    // Rule sets: by content, every one the maps hold.
    let rulesets: BTreeMap<Vec<PortRule>, u32> = maps
        .rulesets
        .iter()
        .map(|(id, value)| (value.rules[..value.count as usize].to_vec(), *id))
        .collect();

    tracing::debug!(
        identities = identities.len(),
        sets = sets.len(),
        endpoints = endpoints.len(),
        rulesets = rulesets.len(),
        addresses = maps.endpoints.len(),
        "ids recovered from the maps"
    );
    Ids {
        endpoints,
        identities: identities.into(),
        sets,
        rulesets,
        ..ids.clone()
    }
}

/// Which of the maps' ids each new id meets, by how many addresses.
#[derive(Default)]
struct Votes(BTreeMap<u32, HashMap<u32, usize>>);

impl Votes {
    fn add(&mut self, now: u32, then: u32) {
        if now != 0 && then != 0 {
            *self.0.entry(now).or_default().entry(then).or_default() += 1;
        }
    }

    /// `ids` (key → new id) with each key moved to the maps' id most of its addresses had (each
    /// maps' id to one key, the one with most votes), plus a placeholder key for every other
    /// id in `held`, which reserves it.
    fn remap(
        &self,
        ids: &BTreeMap<String, u32>,
        held: impl IntoIterator<Item = u32>,
    ) -> BTreeMap<String, u32> {
        let mut claims: Vec<(usize, u32, u32)> = self
            .0
            .iter()
            .flat_map(|(now, thens)| thens.iter().map(|(then, n)| (*n, *now, *then)))
            .collect();
        // Most votes first; ties by the lower ids, so the result is deterministic.
        claims.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
        let mut moved: BTreeMap<u32, u32> = BTreeMap::new();
        let mut taken = BTreeSet::new();
        for (_, now, then) in claims {
            if !moved.contains_key(&now) && taken.insert(then) {
                moved.insert(now, then);
            }
        }
        let mut recovered: BTreeMap<String, u32> = ids
            .iter()
            .filter_map(|(key, now)| moved.get(now).map(|then| (key.clone(), *then)))
            .collect();
        for id in held.into_iter().collect::<BTreeSet<u32>>() {
            if id != 0 && !taken.contains(&id) {
                // No canonical form or `namespace/name` has this shape.
                recovered.insert(format!("(held by the maps: {id})"), id);
            }
        }
        recovered
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::{Placement, compile};
    use crate::manifest::parse_manifests;

    const PODS: &str = "
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {app: a}}
status: {phase: Running, podIP: 10.0.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: x, labels: {app: b}}
status: {phase: Running, podIP: 10.0.0.2}
---
apiVersion: v1
kind: Pod
metadata: {name: c, namespace: x, labels: {app: c}}
status: {phase: Running, podIP: 10.0.0.3}
";

    const POLICY_A: &str = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: a, namespace: x}
spec:
  podSelector: {matchLabels: {app: a}}
  ingress: [{from: [{podSelector: {matchLabels: {app: b}}}]}]
";

    const POLICY_C: &str = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: c, namespace: x}
spec:
  podSelector: {matchLabels: {app: c}}
  ingress: [{from: [{podSelector: {matchLabels: {app: a}}}]}, {ports: [{port: 53, protocol: UDP}]}]
";

    const POD_D: &str = "
apiVersion: v1
kind: Pod
metadata: {name: d, namespace: x, labels: {app: a}}
status: {phase: Running, podIP: 10.0.0.4}
";

    /// An id that both `before` and `after` give to addresses without one address in common:
    /// an id that passed to something else entirely.
    fn changed_meaning(before: &[(u32, [u8; 16])], after: &[(u32, [u8; 16])]) -> Option<u32> {
        let by_id = |pairs: &[(u32, [u8; 16])]| {
            let mut map: BTreeMap<u32, BTreeSet<[u8; 16]>> = BTreeMap::new();
            for (id, addr) in pairs {
                map.entry(*id).or_default().insert(*addr);
            }
            map
        };
        let (before, after) = (by_id(before), by_id(after));
        after
            .iter()
            .find(|(id, addresses)| before.get(id).is_some_and(|old| old.is_disjoint(addresses)))
            .map(|(id, _)| *id)
    }

    /// (set id, endpoint address), (identity id, peer prefix), (endpoint id, address) of `desired`.
    fn uses(desired: &DesiredState) -> [Vec<(u32, [u8; 16])>; 3] {
        let sets = desired
            .endpoints
            .iter()
            .flat_map(|(k, e)| [(e.ingress_set, k.addr), (e.egress_set, k.addr)])
            .filter(|(set, _)| *set != 0)
            .collect();
        let identities = desired
            .peers
            .iter()
            .map(|(k, p)| (p.id, k.key.addr))
            .collect();
        let endpoints = desired
            .endpoints
            .iter()
            .map(|(k, e)| (e.id, k.addr))
            .collect();
        [sets, identities, endpoints]
    }

    #[test]
    fn a_restarted_agent_keeps_the_maps_ids_for_the_same_things() {
        let (before, errors) =
            parse_manifests(&[PODS, POLICY_A, POLICY_C].join("---"), "test.yaml");
        assert_eq!(errors, vec![]);
        let placement = Placement::AllPods { ifindex: 1 };
        let old = compile(&before, &placement, &Ids::default());
        // While no agent ran: policy `a` went, pod a was relabelled, a pod d came.
        let text = [
            &PODS.replace("labels: {app: a}}", "labels: {app: a, tier: new}}"),
            POLICY_C,
            POD_D,
        ]
        .join("---");
        let (after, errors) = parse_manifests(&text, "test.yaml");
        assert_eq!(errors, vec![]);
        let scratch = compile(&after, &placement, &Ids::default());
        let prior = recover_ids(&scratch, &old.desired);
        let new = compile(&after, &placement, &prior);
        assert_eq!(new.errors, vec![]);
        let [old_sets, old_identities, old_endpoints] = uses(&old.desired);
        let [sets, identities, endpoints] = uses(&new.desired);
        assert_eq!(changed_meaning(&old_sets, &sets), None, "sets");
        assert_eq!(
            changed_meaning(&old_identities, &identities),
            None,
            "identities"
        );
        assert_eq!(
            changed_meaning(&old_endpoints, &endpoints),
            None,
            "endpoints"
        );
        // From scratch, without the maps' ids, some id does change meaning (else this test
        // would prove nothing).
        let [scratch_sets, scratch_identities, _] = uses(&scratch.desired);
        assert!(
            changed_meaning(&old_sets, &scratch_sets).is_some()
                || changed_meaning(&old_identities, &scratch_identities).is_some()
        );
        // Same decisions as a compilation from scratch.
        let flows = [("10.0.0.1", "10.0.0.3", 80), ("10.0.0.2", "10.0.0.1", 80)];
        for (src, dst, port) in flows {
            let flow = crate::decision::ProbeFlow {
                src: src.parse().unwrap(),
                dst: dst.parse().unwrap(),
                protocol: tollgate_schemas::proto::TCP,
                src_port: 40_000,
                dst_port: port,
                service: None,
            };
            assert_eq!(
                crate::model::decide_flow(&new.desired, &flow),
                crate::model::decide_flow(&scratch.desired, &flow)
            );
        }
    }
}
