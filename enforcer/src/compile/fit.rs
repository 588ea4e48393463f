//! Fitting the compiled policy into the maps: the peer trie, the policy sets' entries and rule
//! sets, and the endpoints, each within its map's [`Capacity`], then the endpoints' revisions.
//!
//! What does not fit fails closed and is reported:
//! - peer trie: region prefixes and ClusterIPs first, then pod addresses in order; a pod address
//!   left out is seen as its region (it loses what selectors allow it: never more allowed);
//! - policy map and rule sets: sets in id order, each whole or not at all; an endpoint whose set
//!   is left out is written *not programmed* (every packet denied) and reported with the
//!   policies that isolate it, never left with part of its rules;
//! - endpoint map: addresses in endpoint order; one left out is an unknown endpoint (denied in
//!   strict mode).
//!
//! Then every endpoint gets its revision (`revisions`).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use tollgate_schemas::{
    Direction, EndpointKey, EndpointState, PeerIdentity, PolicyEntry, PolicyKey, PortRule, addr,
    endpoint_flags, map_names,
};

use super::cluster::{Cluster, PodInfo};
use super::endpoint::Plan;
use super::identities::Peers;
use super::revisions::{self, PeerView, Planned};
use super::sets::{Ruleset, SetEntries, SetKey};
use crate::desired::{Capacity, DesiredState, Ids, PeerEntryKey, Revision};
use crate::snapshot::InputError;

// Rule lists are hashed once, when their set is sealed (see `Ruleset`).
use foldhash::{HashMap, HashSet};

/// What fitting produced besides the desired state: the ids, digests and revisions to keep.
pub(crate) struct Fitted {
    /// The maps' contents.
    pub(crate) desired: DesiredState,
    /// Rule-set ids.
    pub(crate) rulesets: BTreeMap<Vec<PortRule>, u32>,
    /// Revisions by endpoint id.
    pub(crate) revisions: BTreeMap<u32, Revision>,
    /// The next revision.
    pub(crate) next_revision: u64,
    /// Digest of each written set.
    pub(crate) set_digests: BTreeMap<u32, [u8; 32]>,
    /// Identity of each pod address and ClusterIP written to the peer trie.
    pub(crate) peer_ids: Arc<BTreeMap<IpAddr, PeerIdentity>>,
    /// The region prefixes written.
    pub(crate) regions: BTreeSet<PeerEntryKey>,
}

/// Writes `plans` with their `sets` (by key, with ids `set_ids`) and `peers` into the maps'
/// desired state within `capacity`; problems go to `errors`. `touched`, when known, are the
/// only addresses whose identity may differ from `prior`'s.
#[allow(clippy::too_many_arguments)]
pub(crate) fn fit(
    cluster: &Cluster,
    peers: &Peers,
    touched: Option<&BTreeSet<IpAddr>>,
    sets: &BTreeMap<SetKey, Arc<SetEntries>>,
    set_ids: &BTreeMap<String, u32>,
    plans: &[Plan<'_>],
    by_address: &BTreeMap<IpAddr, u32>,
    capacity: &Capacity,
    prior: &Ids,
    errors: &mut Vec<InputError>,
) -> Fitted {
    let mut desired = DesiredState::default();
    let written = fit_peers(cluster, peers, capacity, &mut desired, errors);
    let (regions, peer_ids, touched) = match written {
        Some((regions, peer_ids)) => (regions, Arc::new(peer_ids), None),
        None => (peers.region_keys.clone(), peers.peer_ids.clone(), touched),
    };

    // Sets in id order, each whole or not at all.
    let mut by_id: Vec<(u32, &SetKey, &SetEntries)> = sets
        .iter()
        .map(|(key, entries)| (set_ids[&key.canonical()], key, &**entries))
        .collect();
    by_id.sort_by_key(|(id, ..)| *id);
    let mut values: HashSet<&Ruleset> = HashSet::default();
    let mut entries_used = 0usize;
    let mut refused: BTreeMap<u32, &'static str> = BTreeMap::new();
    let ruleset_room = capacity.rulesets.saturating_sub(1) as usize;
    for (id, _, entries) in &by_id {
        let new_values: Vec<&Ruleset> = entries
            .rulesets
            .iter()
            .filter(|rules| !values.contains(*rules))
            .collect();
        if entries_used + entries.values.len() > capacity.policy as usize {
            refused.insert(*id, map_names::POLICY);
            continue;
        }
        if values.len() + new_values.len() > ruleset_room {
            refused.insert(*id, map_names::RULESETS);
            continue;
        }
        entries_used += entries.values.len();
        values.extend(new_values);
    }
    let ruleset_ids = ruleset_ids(&prior.rulesets, values, capacity.rulesets);
    for (rules, id) in &ruleset_ids {
        desired
            .rulesets
            .insert(*id, super::sets::value_of(&rules.rules));
    }

    let mut set_digests: BTreeMap<u32, [u8; 32]> = BTreeMap::new();
    // Sets in id order, each with its entries in identity order: the map's order, built at
    // once.
    let mut policy = Vec::with_capacity(entries_used);
    for (id, _, entries) in &by_id {
        if refused.contains_key(id) {
            continue;
        }
        let ids_of: Vec<u32> = entries.rulesets.iter().map(|r| ruleset_ids[r]).collect();
        policy.extend(entries.by_peer.iter().map(|(peer, _, ruleset)| {
            let key = PolicyKey {
                set: *id,
                peer: *peer,
            };
            (
                key,
                PolicyEntry {
                    ruleset: ruleset.map_or(0, |index| ids_of[index]),
                },
            )
        }));
        set_digests.insert(*id, entries.digest);
    }
    desired.policy = policy.into_iter().collect();

    let mut planned = Vec::with_capacity(plans.len());
    for plan in plans {
        let mut flags = plan.flags;
        let mut sets_of = [0u32; 2];
        for (slot, key) in plan.sets.iter().enumerate() {
            let Some(key) = key else { continue };
            let id = set_ids[&key.canonical()];
            if let Some(map) = refused.get(&id) {
                errors.push(not_fitting(plan, key.direction, &sets[key], map, capacity));
                flags &= !endpoint_flags::PROGRAMMED;
            }
            sets_of[slot] = id;
        }
        if flags & endpoint_flags::PROGRAMMED == 0 {
            sets_of = [0, 0];
        } else {
            dropped_rules(plan, sets, peers, errors);
        }
        planned.push(Planned {
            id: plan.id,
            flags,
            sets: sets_of,
        });
    }
    let region_of = |ip| {
        let identity = &peers.identities[peers.region_of_address(ip)];
        PeerIdentity {
            id: identity.id,
            fallback: 0,
        }
    };
    let view = PeerView {
        addresses: &peer_ids,
        regions: &regions,
        region_of: &region_of,
        touched,
    };
    let (revisions, next_revision) =
        revisions::assign(&planned, &set_digests, &view, &desired, prior);
    let mut owners: BTreeMap<EndpointKey, &PodInfo> = BTreeMap::new();
    for (plan, planned) in plans.iter().zip(&planned) {
        let state = EndpointState {
            id: plan.id,
            ifindex: plan.ifindex,
            flags: planned.flags,
            ingress_set: planned.sets[0],
            egress_set: planned.sets[1],
            _pad: 0,
            revision: revisions[&plan.id].revision,
        };
        addresses(
            plan.pod,
            state,
            by_address,
            capacity,
            &mut owners,
            &mut desired,
            errors,
        );
    }
    Fitted {
        desired,
        rulesets: ruleset_ids
            .into_iter()
            .map(|(rules, id)| (rules.rules.clone(), id))
            .collect(),
        revisions,
        next_revision,
        set_digests,
        peer_ids,
        regions,
    }
}

/// Ids for the rule sets `values` (at most `capacity - 1` of them): each keeps its prior id; a
/// new one takes an id no prior rule set had, so that the sync never rewrites a rule set that
/// entries still point to. Only when no such id is left below `capacity` does it reuse an id
/// freed by this compilation; the sync writes it before the entries that move to it, so for
/// that instant the old entries see the new rule set (near capacity only; `docs/datapath.md`).
fn ruleset_ids<'r>(
    prior: &BTreeMap<Vec<PortRule>, u32>,
    values: HashSet<&'r Ruleset>,
    capacity: u32,
) -> HashMap<&'r Ruleset, u32> {
    let prior_ids: BTreeSet<u32> = prior.values().copied().collect();
    let mut ids = HashMap::default();
    let mut taken = BTreeSet::new();
    let mut fresh = Vec::new();
    for rules in values {
        match prior.get(&rules.rules) {
            Some(&id) if id != 0 && id < capacity && taken.insert(id) => {
                ids.insert(rules, id);
            }
            _ => fresh.push(rules),
        }
    }
    fresh.sort_by(|a, b| a.rules.cmp(&b.rules));
    let unused = (1..capacity).filter(|id| !prior_ids.contains(id) && !taken.contains(id));
    let freed = (1..capacity).filter(|id| prior_ids.contains(id) && !taken.contains(id));
    for (rules, id) in fresh.into_iter().zip(unused.chain(freed)) {
        ids.insert(rules, id);
    }
    ids
}

/// The peer trie's entries, as many as fit: regions, ClusterIPs, then pod addresses. `None`
/// when there is room for all of them, so the trie is written whole; else the region prefixes
/// and the addresses' identities that were written.
#[allow(clippy::type_complexity)]
fn fit_peers(
    cluster: &Cluster,
    peers: &Peers,
    capacity: &Capacity,
    desired: &mut DesiredState,
    errors: &mut Vec<InputError>,
) -> Option<(BTreeSet<PeerEntryKey>, BTreeMap<IpAddr, PeerIdentity>)> {
    let room = capacity.peers as usize;
    if peers.entry_count() <= room {
        desired.peers = peers.trie.clone();
        return None;
    }
    let entries = peers.ordered_entries(cluster);
    let mut left_out = BTreeSet::new();
    for (key, value, pod_address) in &entries {
        if desired.peers.len() < room {
            desired.peers.insert(*key, *value);
        } else if *pod_address {
            left_out.insert(addr::from_bytes(key.key.addr));
        }
    }
    let regions = peers.by_region.len();
    let written = Some((
        entries[..regions]
            .iter()
            .map(|(key, ..)| *key)
            .filter(|key| desired.peers.contains_key(key))
            .collect(),
        entries[regions..]
            .iter()
            .filter(|(key, ..)| desired.peers.contains_key(key))
            .map(|(key, value, _)| (addr::from_bytes(key.key.addr), *value))
            .collect(),
    ));
    if left_out.is_empty() {
        return written;
    }
    for pod in cluster.pods.values() {
        let ips: Vec<String> = pod
            .ips
            .iter()
            .filter(|ip| left_out.contains(ip))
            .map(ToString::to_string)
            .collect();
        if ips.is_empty() {
            continue;
        }
        errors.push(InputError {
            object: format!("Pod {}", pod.key()),
            field: "status.podIPs".to_owned(),
            message: format!(
                "{} left out of the peer map {} (full: {room} entries); policy sees the \
                 address as the ipBlock region around it, so selectors no longer allow it",
                ips.join(", "),
                map_names::PEERS,
            ),
        });
    }
    written
}

/// The error of an endpoint whose set of `direction` did not fit in `map`.
fn not_fitting(
    plan: &Plan<'_>,
    direction: Direction,
    entries: &SetEntries,
    map: &'static str,
    capacity: &Capacity,
) -> InputError {
    let room = if map == map_names::POLICY {
        capacity.policy
    } else {
        capacity.rulesets
    };
    InputError {
        object: format!("Pod {}", plan.pod.key()),
        field: format!("{} policy", direction.name()),
        message: format!(
            "its {} policy set ({} entries) does not fit in {map} ({room} entries); the \
             endpoint is denied (not programmed) until it fits; isolated by {}",
            direction.name(),
            entries.values.len(),
            plan.policies.join(", "),
        ),
    }
}

/// Errors for the port rules that did not fit in a value of the endpoint's sets.
fn dropped_rules(
    plan: &Plan<'_>,
    sets: &BTreeMap<SetKey, Arc<SetEntries>>,
    peers: &Peers,
    errors: &mut Vec<InputError>,
) {
    for key in plan.sets.iter().flatten() {
        // By identity id: identity indices are the table's own.
        let mut dropped: Vec<(u32, usize, usize)> = sets[key]
            .dropped
            .iter()
            .map(|(identity, dropped)| (peers.identities[*identity].id, *identity, *dropped))
            .collect();
        dropped.sort_unstable();
        for (_, identity, dropped) in dropped {
            errors.push(InputError {
                object: format!("Pod {}", plan.pod.key()),
                field: format!("{} peer {}", key.direction.name(), peers.describe(identity)),
                message: format!(
                    "more port rules allow this peer than a map value holds ({}); {dropped} \
                     were left out, and what only they allow is denied",
                    tollgate_schemas::MAX_PORT_RULES
                ),
            });
        }
    }
}

/// Every address of the pod → `state`, on the address's own interface when `by_address` names
/// one (a pod with one interface per address), unless an earlier endpoint pod has it or the
/// endpoint map is full.
fn addresses<'c>(
    pod: &'c PodInfo,
    state: EndpointState,
    by_address: &BTreeMap<IpAddr, u32>,
    capacity: &Capacity,
    owners: &mut BTreeMap<EndpointKey, &'c PodInfo>,
    desired: &mut DesiredState,
    errors: &mut Vec<InputError>,
) {
    for ip in &pod.ips {
        let key = EndpointKey {
            addr: addr::to_bytes(*ip),
        };
        if let Some(owner) = owners.get(&key) {
            errors.push(InputError {
                object: format!("Pod {}", pod.key()),
                field: "status.podIPs".to_owned(),
                message: format!(
                    "{ip} is already the address of endpoint pod {}; left out of the \
                     endpoint map",
                    owner.key()
                ),
            });
            continue;
        }
        if desired.endpoints.len() >= capacity.endpoints as usize {
            errors.push(InputError {
                object: format!("Pod {}", pod.key()),
                field: "status.podIPs".to_owned(),
                message: format!(
                    "{ip} left out of the endpoint map {} (full: {} entries); its packets \
                     are denied as an unknown endpoint",
                    map_names::ENDPOINTS,
                    capacity.endpoints
                ),
            });
            continue;
        }
        owners.insert(key, pod);
        let ifindex = by_address.get(ip).copied().unwrap_or(state.ifindex);
        desired
            .endpoints
            .insert(key, EndpointState { ifindex, ..state });
    }
}
