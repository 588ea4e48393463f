//! Stable ids: what existed in the previous compilation keeps its id, what is new takes the
//! smallest id that neither this compilation nor the previous one uses (never 0, which the maps
//! use for "none"). An id of something gone is free again only from the compilation after: the
//! sync that removes the old meaning's entries is the one that writes the new meaning's, so one
//! sync never reuses an id for something else while map entries still mean the old one.

use std::collections::{BTreeMap, BTreeSet};

/// Ids for `wanted` (each once), keeping those of `prior`.
pub(crate) fn assign<K: Ord + Clone>(
    prior: &BTreeMap<K, u32>,
    wanted: impl IntoIterator<Item = K>,
) -> BTreeMap<K, u32> {
    let wanted: BTreeSet<K> = wanted.into_iter().collect();
    let mut ids = BTreeMap::new();
    let mut used = BTreeSet::new();
    let reserved: BTreeSet<u32> = prior.values().copied().collect();
    for key in &wanted {
        // A corrupt prior (0, or one id twice) loses: the key gets a new id below.
        if let Some(&id) = prior.get(key)
            && id != 0
            && used.insert(id)
        {
            ids.insert(key.clone(), id);
        }
    }
    let new: Vec<K> = wanted
        .into_iter()
        .filter(|key| !ids.contains_key(key))
        .collect();
    // The ids kept are prior ones: `reserved` holds them.
    for (key, id) in new.into_iter().zip(fresh(|id| reserved.contains(&id))) {
        ids.insert(key, id);
    }
    ids
}

/// The ids that new keys take, in order: the smallest that are not `reserved` (what the
/// previous compilation used, see the module doc).
pub(crate) fn fresh(reserved: impl Fn(u32) -> bool) -> impl Iterator<Item = u32> {
    (1..=u32::MAX).filter(move |id| !reserved(*id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_prior_and_fills_gaps() {
        let prior = BTreeMap::from([("a", 1), ("c", 3), ("gone", 2), ("zero", 0)]);
        let ids = assign(&prior, ["a", "b", "c", "d", "zero"]);
        // "gone"'s 2 is not reused in the same pass.
        assert_eq!(
            ids,
            BTreeMap::from([("a", 1), ("b", 4), ("c", 3), ("d", 5), ("zero", 6)])
        );
        // The pass after, it is.
        assert_eq!(assign(&ids, ["a", "new"])["new"], 2);
        let twice = BTreeMap::from([("a", 7), ("b", 7)]);
        assert_eq!(
            assign(&twice, ["a", "b"]),
            BTreeMap::from([("a", 7), ("b", 1)])
        );
    }
}
