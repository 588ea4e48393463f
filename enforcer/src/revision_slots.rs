//! The revisions array (`TG_REVISIONS`), kept in step with the endpoint map: for each endpoint
//! id, the revision under which the probe decides a known flow of the endpoint without looking
//! the endpoint up, or 0 for none.
//!
//! A flow's entry names the endpoint id and revision it was decided under, not its address, so
//! slot `id` holds revision `v` only while every address the endpoint map gives id `id` is
//! programmed with `v` on the interface it had, and none has left `(id, v)` since (deleted,
//! moved to another id or interface, written not programmed): the flows of an address that
//! left would pass on their entries otherwise. [`RevisionSlots::before`] and
//! [`RevisionSlots::after`] say what to write around one endpoint-map write: every slot it may
//! change is cleared *before* the map write and set *after* it, so a slot never holds a
//! revision the endpoint map does not (a packet in between is decided with the endpoint's
//! lookup, as before).
//!
//! Pure: the caller ([`crate::aya_maps`]) does the writes. An id past the array's end has no
//! slot and is always decided with the endpoint's lookup.

use std::collections::{BTreeMap, BTreeSet};

use tollgate_schemas::{EndpointKey, EndpointState, endpoint_flags};

/// What the endpoint map holds, and what the array holds of it.
#[derive(Debug, Default)]
pub struct RevisionSlots {
    /// The endpoint map's contents.
    addresses: BTreeMap<EndpointKey, EndpointState>,
    /// The addresses of each endpoint id.
    by_id: BTreeMap<u32, BTreeSet<EndpointKey>>,
    /// Per endpoint id, the revision an address left: never vouched for again.
    spoiled: BTreeMap<u32, u64>,
    /// The slots written with a revision (every other slot is 0).
    written: BTreeMap<u32, u64>,
    /// Slots in the array.
    len: u32,
}

/// Slot writes, `(id, value)`, in order.
pub type SlotWrites = Vec<(u32, u64)>;

impl RevisionSlots {
    /// The bookkeeping of an array of `len` slots as the maps hold them at load: `endpoints`,
    /// and `slot(id)` what each slot holds (a pinned array keeps what an earlier agent wrote).
    /// A slot keeps its revision only where it is the one the endpoint map vouches for; a slot
    /// that is 0 although the endpoint map would vouch may have been cleared when an address
    /// left, which the maps do not tell, so its revision is taken as spoiled. Returns the
    /// writes that bring the array there.
    pub fn recover(
        len: u32,
        endpoints: impl IntoIterator<Item = (EndpointKey, EndpointState)>,
        mut slot: impl FnMut(u32) -> u64,
    ) -> (Self, SlotWrites) {
        let mut slots = Self {
            len,
            ..Self::default()
        };
        for (key, state) in endpoints {
            slots.insert(key, state);
        }
        let mut writes = Vec::new();
        for id in 0..len {
            let held = slot(id);
            let vouched = slots.vouched(id);
            if held != 0 && held == vouched {
                slots.written.insert(id, held);
                continue;
            }
            if vouched != 0 {
                slots.spoiled.insert(id, vouched);
            }
            if held != 0 {
                writes.push((id, 0));
            }
        }
        (slots, writes)
    }

    /// The slots to clear before address `key` is written as `state` (`None`: deleted).
    pub fn before(&mut self, key: &EndpointKey, state: Option<&EndpointState>) -> SlotWrites {
        let mut writes = Vec::new();
        for id in self.ids(key, state) {
            if self.written.remove(&id).is_some() {
                writes.push((id, 0));
            }
        }
        writes
    }

    /// Records that address `key` was written as `state` (`None`: deleted), after
    /// [`RevisionSlots::before`]; returns the slots to set now.
    pub fn after(&mut self, key: &EndpointKey, state: Option<&EndpointState>) -> SlotWrites {
        let ids = self.ids(key, state);
        if let Some(old) = self.remove(key)
            && programmed(&old)
            && !state.is_some_and(|new| {
                programmed(new)
                    && (new.id, new.revision, new.ifindex) == (old.id, old.revision, old.ifindex)
            })
        {
            self.spoiled.insert(old.id, old.revision);
        }
        if let Some(state) = state {
            self.insert(*key, *state);
        }
        let mut writes = Vec::new();
        for id in ids {
            let revision = self.vouched(id);
            if revision != 0 {
                self.written.insert(id, revision);
                writes.push((id, revision));
            }
        }
        writes
    }

    /// The ids whose slot a write of `key` as `state` may change, within the array.
    fn ids(&self, key: &EndpointKey, state: Option<&EndpointState>) -> BTreeSet<u32> {
        let old = self.addresses.get(key).map(|old| old.id);
        old.into_iter()
            .chain(state.map(|new| new.id))
            .filter(|id| *id < self.len)
            .collect()
    }

    /// The revision slot `id` may hold now, 0 for none.
    fn vouched(&self, id: u32) -> u64 {
        let Some(keys) = self.by_id.get(&id) else {
            return 0;
        };
        let mut revisions = keys.iter().map(|key| {
            let state = &self.addresses[key];
            if programmed(state) { state.revision } else { 0 }
        });
        let Some(first) = revisions.next() else {
            return 0;
        };
        if revisions.all(|revision| revision == first) && self.spoiled.get(&id) != Some(&first) {
            first
        } else {
            0
        }
    }

    fn insert(&mut self, key: EndpointKey, state: EndpointState) {
        if let Some(old) = self.addresses.insert(key, state) {
            self.unindex(&key, old.id);
        }
        self.by_id.entry(state.id).or_default().insert(key);
    }

    fn remove(&mut self, key: &EndpointKey) -> Option<EndpointState> {
        let old = self.addresses.remove(key)?;
        self.unindex(key, old.id);
        Some(old)
    }

    fn unindex(&mut self, key: &EndpointKey, id: u32) {
        if let Some(keys) = self.by_id.get_mut(&id) {
            keys.remove(key);
            if keys.is_empty() {
                self.by_id.remove(&id);
            }
        }
    }
}

fn programmed(state: &EndpointState) -> bool {
    state.flags & endpoint_flags::PROGRAMMED != 0 && state.revision != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(last: u8) -> EndpointKey {
        let mut addr = [0; 16];
        addr[15] = last;
        EndpointKey { addr }
    }

    fn state(id: u32, revision: u64) -> EndpointState {
        EndpointState {
            id,
            ifindex: 10 + id,
            flags: endpoint_flags::PROGRAMMED,
            ingress_set: 0,
            egress_set: 0,
            _pad: 0,
            revision,
        }
    }

    impl RevisionSlots {
        /// An empty endpoint map and an array of `len` zero slots.
        fn empty(len: u32) -> Self {
            Self::recover(len, [], |_| 0).0
        }

        /// The slot of `id` as last written.
        fn slot(&self, id: u32) -> u64 {
            self.written.get(&id).copied().unwrap_or(0)
        }
    }

    /// One write through `slots`, as `aya_maps` does it: the writes around it, in order.
    fn write(
        slots: &mut RevisionSlots,
        at: u8,
        to: Option<EndpointState>,
    ) -> (SlotWrites, SlotWrites) {
        let before = slots.before(&key(at), to.as_ref());
        (before, slots.after(&key(at), to.as_ref()))
    }

    #[test]
    fn a_slot_holds_the_revision_only_while_every_address_of_the_id_has_it() {
        let mut slots = RevisionSlots::empty(16);
        assert_eq!(
            write(&mut slots, 1, Some(state(3, 7))),
            (vec![], vec![(3, 7)])
        );
        // The second address of a dual-stack pod, at the same revision.
        assert_eq!(
            write(&mut slots, 2, Some(state(3, 7))),
            (vec![(3, 0)], vec![(3, 7)])
        );
        // A new revision reaches one address: the slot waits, cleared, for the other.
        assert_eq!(
            write(&mut slots, 1, Some(state(3, 8))),
            (vec![(3, 0)], vec![])
        );
        assert_eq!(slots.slot(3), 0);
        assert_eq!(
            write(&mut slots, 2, Some(state(3, 8))),
            (vec![], vec![(3, 8)])
        );
        // Not programmed: no slot.
        let closed = EndpointState {
            flags: 0,
            ..state(3, 8)
        };
        assert_eq!(write(&mut slots, 2, Some(closed)), (vec![(3, 0)], vec![]));
    }

    #[test]
    fn an_address_that_leaves_spoils_its_revision_for_the_id() {
        let mut slots = RevisionSlots::empty(16);
        write(&mut slots, 1, Some(state(3, 7)));
        write(&mut slots, 2, Some(state(3, 7)));
        // One address deleted: the other still has revision 7, but the deleted address's flows
        // carry it too.
        assert_eq!(write(&mut slots, 1, None), (vec![(3, 0)], vec![]));
        // Until the id moves on.
        assert_eq!(
            write(&mut slots, 2, Some(state(3, 9))),
            (vec![], vec![(3, 9)])
        );
        // An address moving to another id spoils the old id and leaves the new one to vouch.
        assert_eq!(
            write(&mut slots, 2, Some(state(4, 10))),
            (vec![(3, 0)], vec![(4, 10)])
        );
        assert_eq!(slots.slot(3), 0);
        // A new interface for the same id and revision spoils it too.
        let moved = EndpointState {
            ifindex: 99,
            ..state(4, 10)
        };
        assert_eq!(write(&mut slots, 2, Some(moved)), (vec![(4, 0)], vec![]));
    }

    #[test]
    fn ids_past_the_array_have_no_slot() {
        let mut slots = RevisionSlots::empty(4);
        assert_eq!(write(&mut slots, 1, Some(state(4, 7))), (vec![], vec![]));
        assert_eq!(slots.slot(4), 0);
    }

    #[test]
    fn recovery_keeps_only_slots_the_endpoint_map_vouches_for() {
        let endpoints = [
            (key(1), state(1, 5)),
            (key(2), state(2, 6)),
            (key(3), state(3, 7)),
        ];
        // Slot 1 as vouched; slot 2 cleared (an address left before the restart); slot 3 from
        // an older revision; slot 5 of an endpoint gone.
        let held = |id: u32| match id {
            1 => 5,
            3 => 4,
            5 => 9,
            _ => 0,
        };
        let (mut slots, writes) = RevisionSlots::recover(8, endpoints, held);
        assert_eq!(writes, vec![(3, 0), (5, 0)]);
        assert_eq!((slots.slot(1), slots.slot(2), slots.slot(3)), (5, 0, 0));
        // Spoiled: slot 2 stays 0 until the endpoint's revision moves.
        assert_eq!(write(&mut slots, 2, Some(state(2, 6))), (vec![], vec![]));
        assert_eq!(
            write(&mut slots, 2, Some(state(2, 8))),
            (vec![], vec![(2, 8)])
        );
    }
}
