//! [`PolicyMaps`] over the probe's kernel maps: what the sync writes lands in the maps the
//! programs read.
//!
//! Each call is one `bpf(2)` map operation on one of the five policy maps of a loaded
//! [`crate::probe::Probe`] (an endpoint's also clears and sets its slots of the revisions array
//! around it, [`crate::revision_slots`]); its error keeps the map's name, and says whether the
//! map was full ([`MapsError::is_full`]), which the sync answers by deleting before it inserts.
//! [`PolicyMaps::read`] walks every map (the rule-set array slot by slot, keeping the slots
//! that are not empty).

use aya::maps::{Array, IterableMap, MapData, MapError, lpm_trie::Key};
use tollgate_schemas::{
    EndpointKey, EndpointState, NodeAddr, PeerIdentity, PolicyEntry, PolicyKey, PolicyValue,
    map_names,
};

use crate::{
    desired::{Capacity, DesiredState, PeerEntryKey},
    probe::ProbeMaps,
    sync::{MapsError, PolicyMaps},
};

/// Error of one kernel map operation, naming the map.
#[derive(Debug, thiserror::Error)]
#[error("map {map}")]
pub struct AyaMapError {
    /// Map name.
    pub map: &'static str,
    /// What the kernel said.
    #[source]
    pub source: MapError,
}

impl MapsError for AyaMapError {
    /// No room for a new entry: a hash map at `max_entries` (E2BIG), an LPM trie at
    /// `max_entries` (ENOSPC), a map that is not preallocated and could not allocate an entry
    /// (ENOMEM), or an array index past the end (aya checks it before the kernel would say
    /// E2BIG).
    fn is_full(&self) -> bool {
        match &self.source {
            MapError::OutOfBounds { .. } => true,
            MapError::SyscallError(error) => matches!(
                error.io_error.raw_os_error(),
                Some(libc::E2BIG | libc::ENOSPC | libc::ENOMEM)
            ),
            _ => false,
        }
    }
}

/// The probe's policy maps, borrowed from a loaded [`crate::probe::Probe`].
pub struct AyaMaps<'a> {
    maps: &'a mut ProbeMaps,
}

impl<'a> AyaMaps<'a> {
    pub(crate) fn new(maps: &'a mut ProbeMaps) -> Self {
        Self { maps }
    }
}

impl AyaMaps<'_> {
    /// Writes address `key` as `state` (`None`: deletes it), its slots of the revisions array
    /// cleared before and set after, as [`crate::revision_slots`] says.
    fn write_endpoint(
        &mut self,
        key: &EndpointKey,
        state: Option<&EndpointState>,
    ) -> Result<(), AyaMapError> {
        let before = self.maps.slots.before(key, state);
        write_slots(&mut self.maps.revisions, &before)?;
        let endpoints = &mut self.maps.endpoints;
        match state {
            Some(value) => endpoints.insert(key, value, 0),
            None => endpoints.remove(key),
        }
        .map_err(named(map_names::ENDPOINTS))?;
        let after = self.maps.slots.after(key, state);
        write_slots(&mut self.maps.revisions, &after)
    }
}

/// Writes slots of the revisions array, `(id, value)` in order: around an endpoint write, and
/// at load ([`crate::probe`]). A slot cleared before an endpoint write that then fails stays 0:
/// that endpoint's flows are decided with its lookup until it is written again.
pub(crate) fn write_slots(
    revisions: &mut Array<MapData, u64>,
    writes: &[(u32, u64)],
) -> Result<(), AyaMapError> {
    for &(id, value) in writes {
        revisions
            .set(id, value, 0)
            .map_err(named(map_names::REVISIONS))?;
    }
    Ok(())
}

fn named(map: &'static str) -> impl Fn(MapError) -> AyaMapError {
    move |source| AyaMapError { map, source }
}

/// The `max_entries` the kernel gives map `name`.
fn max_entries(map: &MapData, name: &'static str) -> Result<u32, AyaMapError> {
    Ok(map.info().map_err(named(name))?.max_entries())
}

fn peer_key(key: &PeerEntryKey) -> Key<tollgate_schemas::PeerKey> {
    Key::new(key.prefix_len, key.key)
}

impl PolicyMaps for AyaMaps<'_> {
    type Error = AyaMapError;

    fn capacity(&self) -> Result<Capacity, Self::Error> {
        Ok(Capacity {
            endpoints: max_entries(self.maps.endpoints.map(), map_names::ENDPOINTS)?,
            peers: max_entries(self.maps.peers.map(), map_names::PEERS)?,
            policy: max_entries(self.maps.policy.map(), map_names::POLICY)?,
            rulesets: self.maps.rulesets.len(),
            node_addrs: max_entries(self.maps.node_addrs.map(), map_names::NODE_ADDRS)?,
        })
    }

    fn read(&self) -> Result<DesiredState, Self::Error> {
        let mut state = DesiredState::default();
        for entry in self.maps.endpoints.iter() {
            let (key, value) = entry.map_err(named(map_names::ENDPOINTS))?;
            state.endpoints.insert(key, value);
        }
        for entry in self.maps.peers.iter() {
            let (key, value) = entry.map_err(named(map_names::PEERS))?;
            let key = PeerEntryKey {
                prefix_len: key.prefix_len(),
                key: key.data(),
            };
            state.peers.insert(key, value);
        }
        for entry in self.maps.policy.iter() {
            let (key, value) = entry.map_err(named(map_names::POLICY))?;
            state.policy.insert(key, value);
        }
        // Slot 0 included: it must stay empty, and a drift check that finds it written
        // clears it.
        for (id, value) in (0..).zip(self.maps.rulesets.iter()) {
            let value = value.map_err(named(map_names::RULESETS))?;
            if value != PolicyValue::EMPTY {
                state.rulesets.insert(id, value);
            }
        }
        for key in self.maps.node_addrs.keys() {
            state
                .node_addrs
                .insert(key.map_err(named(map_names::NODE_ADDRS))?);
        }
        Ok(state)
    }

    fn upsert_endpoint(
        &mut self,
        key: &EndpointKey,
        value: &EndpointState,
    ) -> Result<(), Self::Error> {
        self.write_endpoint(key, Some(value))
    }

    fn delete_endpoint(&mut self, key: &EndpointKey) -> Result<(), Self::Error> {
        self.write_endpoint(key, None)
    }

    fn upsert_peer(&mut self, key: &PeerEntryKey, value: &PeerIdentity) -> Result<(), Self::Error> {
        self.maps
            .peers
            .insert(&peer_key(key), value, 0)
            .map_err(named(map_names::PEERS))
    }

    fn delete_peer(&mut self, key: &PeerEntryKey) -> Result<(), Self::Error> {
        self.maps
            .peers
            .remove(&peer_key(key))
            .map_err(named(map_names::PEERS))
    }

    fn upsert_policy(&mut self, key: &PolicyKey, value: &PolicyEntry) -> Result<(), Self::Error> {
        self.maps
            .policy
            .insert(key, value, 0)
            .map_err(named(map_names::POLICY))
    }

    fn delete_policy(&mut self, key: &PolicyKey) -> Result<(), Self::Error> {
        self.maps
            .policy
            .remove(key)
            .map_err(named(map_names::POLICY))
    }

    fn write_ruleset(&mut self, id: u32, value: &PolicyValue) -> Result<(), Self::Error> {
        self.maps
            .rulesets
            .set(id, value, 0)
            .map_err(named(map_names::RULESETS))
    }

    fn clear_ruleset(&mut self, id: u32) -> Result<(), Self::Error> {
        self.write_ruleset(id, &PolicyValue::EMPTY)
    }

    fn insert_node_addr(&mut self, key: &EndpointKey) -> Result<(), Self::Error> {
        self.maps
            .node_addrs
            .insert(key, NodeAddr::default(), 0)
            .map_err(named(map_names::NODE_ADDRS))
    }

    fn delete_node_addr(&mut self, key: &EndpointKey) -> Result<(), Self::Error> {
        self.maps
            .node_addrs
            .remove(key)
            .map_err(named(map_names::NODE_ADDRS))
    }
}

#[cfg(test)]
mod tests {
    use tollgate_schemas::{PeerKey, addr, endpoint_flags};

    use super::*;
    use crate::{probe::Probe, sync::Syncer};

    fn endpoint(last: u8, set: u32) -> (EndpointKey, EndpointState) {
        let key = EndpointKey {
            addr: addr::v4_bytes([10, 0, 0, last]),
        };
        let state = EndpointState {
            id: u32::from(last),
            ifindex: 1,
            flags: endpoint_flags::PROGRAMMED | endpoint_flags::INGRESS_ISOLATED,
            ingress_set: set,
            egress_set: 0,
            _pad: 0,
            revision: 1,
        };
        (key, state)
    }

    fn peer(octets: [u8; 4], len: u32, id: u32) -> (PeerEntryKey, PeerIdentity) {
        let key = PeerEntryKey {
            prefix_len: 96 + len,
            key: PeerKey {
                addr: addr::v4_bytes(octets),
            },
        };
        (key, PeerIdentity { id, fallback: 0 })
    }

    fn rules(port: u16) -> PolicyValue {
        let mut value = PolicyValue::EMPTY;
        value.count = 1;
        value.rules[0].port_lo = port;
        value.rules[0].port_hi = port;
        value.rules[0].protocol = 6;
        value
    }

    /// Privileged (root or CAP_BPF): the probe's own maps, made tiny.
    #[test]
    fn privileged_kernel_maps_sync_read_back_and_say_when_they_are_full() {
        if !tollgate_test_support::privileged(
            "privileged_kernel_maps_sync_read_back_and_say_when_they_are_full",
        ) {
            return;
        }
        let capacity = Capacity {
            endpoints: 2,
            peers: 3,
            policy: 2,
            rulesets: 3,
            node_addrs: 1,
        };
        let mut probe = Probe::load_with(&capacity).expect("loading the probe needs root");
        let mut maps = probe.policy_maps();
        assert_eq!(maps.capacity().unwrap(), capacity);

        let mut desired = DesiredState::default();
        desired.endpoints.extend([endpoint(1, 1), endpoint(2, 2)]);
        desired.peers.extend([
            peer([0, 0, 0, 0], 0, 1),
            peer([10, 0, 0, 0], 24, 2),
            peer([10, 0, 0, 3], 32, 3),
        ]);
        desired
            .policy
            .insert(PolicyKey { set: 1, peer: 2 }, PolicyEntry { ruleset: 1 });
        desired
            .policy
            .insert(PolicyKey { set: 2, peer: 3 }, PolicyEntry { ruleset: 2 });
        desired.rulesets.extend([(1, rules(80)), (2, rules(443))]);
        desired.node_addrs.insert(EndpointKey {
            addr: addr::v4_bytes([10, 0, 1, 17]),
        });
        let mut syncer = Syncer::new();
        syncer.sync(&mut maps, &desired).unwrap();
        assert_eq!(maps.read().unwrap(), desired);

        // Every map is full now, and says so when asked for one more key.
        let (key, value) = endpoint(9, 1);
        let full = [
            maps.upsert_endpoint(&key, &value).unwrap_err(),
            {
                let (key, value) = peer([10, 0, 0, 9], 32, 9);
                maps.upsert_peer(&key, &value).unwrap_err()
            },
            maps.upsert_policy(&PolicyKey { set: 9, peer: 9 }, &PolicyEntry { ruleset: 1 })
                .unwrap_err(),
            maps.write_ruleset(3, &rules(8080)).unwrap_err(),
            maps.insert_node_addr(&key).unwrap_err(),
        ];
        for error in &full {
            assert!(error.is_full(), "{error}");
        }
        assert_eq!(
            full.map(|e| e.map),
            [
                map_names::ENDPOINTS,
                map_names::PEERS,
                map_names::POLICY,
                map_names::RULESETS,
                map_names::NODE_ADDRS
            ]
        );
        // A key that is there is replaced in a full hash map.
        maps.upsert_endpoint(&endpoint(1, 1).0, &endpoint(1, 1).1)
            .unwrap();
        assert!(
            !maps
                .delete_policy(&PolicyKey { set: 9, peer: 9 })
                .unwrap_err()
                .is_full()
        );

        // Both endpoints move to new policy sets: the old sets' entries and the new ones do
        // not fit together, the sync deletes first.
        let mut moved = desired.clone();
        moved.endpoints.extend([endpoint(1, 3), endpoint(2, 4)]);
        moved.policy.clear();
        moved
            .policy
            .insert(PolicyKey { set: 3, peer: 3 }, PolicyEntry { ruleset: 2 });
        moved
            .policy
            .insert(PolicyKey { set: 4, peer: 2 }, PolicyEntry { ruleset: 2 });
        moved.rulesets.remove(&1);
        let report = syncer.sync(&mut maps, &moved).unwrap();
        assert!(report.stats.fallback);
        assert_eq!(maps.read().unwrap(), moved);
        assert_eq!(
            syncer.check_drift(&mut maps).unwrap().map(|s| s.changed()),
            Some(false)
        );
    }
}
