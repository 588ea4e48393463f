//! Endpoint revisions: a 64-bit counter per endpoint that moves exactly when a decision of the
//! endpoint may change, so the probe decides its tracked flows again (and only then).
//!
//! An endpoint keeps its revision while its flags and policy sets stay the same and none of its
//! sets is *affected*. A set is affected when its own entries or rule sets changed (its digest),
//! when the region prefixes changed (any address may now resolve elsewhere), or when an address
//! moved between identities (a pod relabelled, added, removed; a ClusterIP added or removed) and
//! the set gives the old and the new identity different entries. Addresses that move between
//! identities the set treats alike do not touch it, so pod churn elsewhere in the cluster does
//! not re-decide this node's flows.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::IpAddr;

use tollgate_schemas::PeerIdentity;

use crate::desired::{DesiredState, Ids, PeerEntryKey, Revision};

/// One endpoint as it is about to be written.
pub(crate) struct Planned {
    /// Endpoint id.
    pub(crate) id: u32,
    /// Its flags.
    pub(crate) flags: u32,
    /// Its ingress and egress set ids (0: none).
    pub(crate) sets: [u32; 2],
}

/// What the peer trie says now, for comparison with the prior compilation's.
pub(crate) struct PeerView<'a> {
    /// Identity of every pod address and ClusterIP written.
    pub(crate) addresses: &'a BTreeMap<IpAddr, PeerIdentity>,
    /// The region prefixes written.
    pub(crate) regions: &'a BTreeSet<PeerEntryKey>,
    /// The identity an address not in `addresses` resolves to (its region's).
    pub(crate) region_of: &'a dyn Fn(IpAddr) -> PeerIdentity,
    /// When known, the only addresses whose identity may differ from the prior
    /// compilation's (else any may).
    pub(crate) touched: Option<&'a BTreeSet<IpAddr>>,
}

/// Revisions of `endpoints`, given the sets' digests and the peer trie, against `prior`.
pub(crate) fn assign(
    endpoints: &[Planned],
    set_digests: &BTreeMap<u32, [u8; 32]>,
    peers: &PeerView<'_>,
    desired: &DesiredState,
    prior: &Ids,
) -> (BTreeMap<u32, Revision>, u64) {
    let affected = affected_sets(set_digests, peers, desired, prior);
    let mut next = prior.next_revision.max(1);
    let mut revisions = BTreeMap::new();
    for endpoint in endpoints {
        let kept = prior.revisions.get(&endpoint.id).filter(|r| {
            r.flags == endpoint.flags
                && r.sets == endpoint.sets
                && !endpoint.sets.iter().any(|set| affected.contains(set))
        });
        let revision = match kept {
            Some(prior) => prior.revision,
            None => {
                next += 1;
                next - 1
            }
        };
        revisions.insert(
            endpoint.id,
            Revision {
                flags: endpoint.flags,
                sets: endpoint.sets,
                revision,
            },
        );
    }
    (revisions, next)
}

/// The sets whose decisions may differ from the prior compilation's.
fn affected_sets(
    set_digests: &BTreeMap<u32, [u8; 32]>,
    peers: &PeerView<'_>,
    desired: &DesiredState,
    prior: &Ids,
) -> HashSet<u32> {
    if prior.regions != *peers.regions {
        return set_digests.keys().copied().collect();
    }
    let mut affected: HashSet<u32> = set_digests
        .iter()
        .filter(|(id, digest)| prior.set_digests.get(id) != Some(digest))
        .map(|(id, _)| *id)
        .collect();
    let identity = |ids: &BTreeMap<IpAddr, PeerIdentity>, ip: &IpAddr| {
        ids.get(ip)
            .copied()
            .unwrap_or_else(|| (peers.region_of)(*ip))
    };
    let candidates: Box<dyn Iterator<Item = &IpAddr>> = match peers.touched {
        Some(touched) => Box::new(touched.iter()),
        None => Box::new(peers.addresses.keys().chain(prior.peer_ids.keys())),
    };
    let moves: BTreeSet<(PeerIdentity, PeerIdentity)> = candidates
        .map(|ip| (identity(&prior.peer_ids, ip), identity(peers.addresses, ip)))
        .filter(|(before, now)| before != now)
        .collect();
    if moves.is_empty() {
        return affected;
    }
    for set in set_digests.keys() {
        if affected.contains(set) {
            continue;
        }
        if moves.iter().any(|(before, now)| {
            desired.rules_for_identity(*set, *before) != desired.rules_for_identity(*set, *now)
        }) {
            affected.insert(*set);
        }
    }
    affected
}
