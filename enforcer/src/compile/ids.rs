//! Stable ids: what existed in the previous compilation keeps its id, what is new takes the
//! smallest free id (never 0, which the maps use for "none"), and ids of what is gone are
//! dropped, free for reuse.

use std::collections::{BTreeMap, BTreeSet};

/// Ids for `wanted` (each once), keeping those of `prior`.
pub(crate) fn assign<K: Ord + Clone>(
    prior: &BTreeMap<K, u32>,
    wanted: impl IntoIterator<Item = K>,
) -> BTreeMap<K, u32> {
    let wanted: BTreeSet<K> = wanted.into_iter().collect();
    let mut ids = BTreeMap::new();
    let mut used = BTreeSet::new();
    for key in &wanted {
        // A corrupt prior (0, or one id twice) loses: the key gets a new id below.
        if let Some(&id) = prior.get(key)
            && id != 0
            && used.insert(id)
        {
            ids.insert(key.clone(), id);
        }
    }
    let mut next = 1u32;
    for key in wanted {
        if ids.contains_key(&key) {
            continue;
        }
        while used.contains(&next) {
            next += 1;
        }
        used.insert(next);
        ids.insert(key, next);
    }
    ids
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_prior_and_fills_gaps() {
        let prior = BTreeMap::from([("a", 1), ("c", 3), ("gone", 2), ("zero", 0)]);
        let ids = assign(&prior, ["a", "b", "c", "d", "zero"]);
        assert_eq!(
            ids,
            BTreeMap::from([("a", 1), ("b", 2), ("c", 3), ("d", 4), ("zero", 5)])
        );
        let twice = BTreeMap::from([("a", 7), ("b", 7)]);
        assert_eq!(
            assign(&twice, ["a", "b"]),
            BTreeMap::from([("a", 7), ("b", 1)])
        );
    }
}
