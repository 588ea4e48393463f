//! [`PolicyMaps`] over the probe's kernel maps: what the sync writes lands in the maps the
//! programs read.

use aya::maps::{MapError, lpm_trie::Key};
use tollgate_schemas::{Direction, EndpointKey, EndpointState, NodeAddr, PolicyValue, map_names};

use crate::{
    desired::{DesiredState, PolicyEntryKey},
    probe::ProbeMaps,
    sync::PolicyMaps,
};

/// Error of one kernel map operation, naming the map.
#[derive(Debug, thiserror::Error)]
#[error("map {map}: {source}")]
pub struct AyaMapError {
    /// Map name.
    pub map: &'static str,
    /// What the kernel said.
    #[source]
    pub source: MapError,
}

/// The probe's policy maps, borrowed from a loaded [`crate::probe::Probe`].
pub struct AyaMaps<'a> {
    maps: &'a mut ProbeMaps,
}

impl<'a> AyaMaps<'a> {
    pub(crate) fn new(maps: &'a mut ProbeMaps) -> Self {
        Self { maps }
    }

    fn trie(
        &mut self,
        direction: Direction,
    ) -> (
        &mut aya::maps::LpmTrie<aya::maps::MapData, tollgate_schemas::PolicyKey, PolicyValue>,
        &'static str,
    ) {
        match direction {
            Direction::Ingress => (&mut self.maps.ingress, map_names::INGRESS),
            Direction::Egress => (&mut self.maps.egress, map_names::EGRESS),
        }
    }
}

fn named(map: &'static str) -> impl Fn(MapError) -> AyaMapError {
    move |source| AyaMapError { map, source }
}

impl PolicyMaps for AyaMaps<'_> {
    type Error = AyaMapError;

    fn read(&self) -> Result<DesiredState, Self::Error> {
        let mut state = DesiredState::default();
        for entry in self.maps.endpoints.iter() {
            let (key, value) = entry.map_err(named(map_names::ENDPOINTS))?;
            state.endpoints.insert(key, value);
        }
        for (trie, name, out) in [
            (&self.maps.ingress, map_names::INGRESS, &mut state.ingress),
            (&self.maps.egress, map_names::EGRESS, &mut state.egress),
        ] {
            for entry in trie.iter() {
                let (key, value) = entry.map_err(named(name))?;
                let key = PolicyEntryKey {
                    prefix_len: key.prefix_len(),
                    key: key.data(),
                };
                out.insert(key, value);
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
        self.maps
            .endpoints
            .insert(key, value, 0)
            .map_err(named(map_names::ENDPOINTS))
    }

    fn delete_endpoint(&mut self, key: &EndpointKey) -> Result<(), Self::Error> {
        self.maps
            .endpoints
            .remove(key)
            .map_err(named(map_names::ENDPOINTS))
    }

    fn upsert_policy(
        &mut self,
        direction: Direction,
        key: &PolicyEntryKey,
        value: &PolicyValue,
    ) -> Result<(), Self::Error> {
        let (trie, name) = self.trie(direction);
        trie.insert(&Key::new(key.prefix_len, key.key), value, 0)
            .map_err(named(name))
    }

    fn delete_policy(
        &mut self,
        direction: Direction,
        key: &PolicyEntryKey,
    ) -> Result<(), Self::Error> {
        let (trie, name) = self.trie(direction);
        trie.remove(&Key::new(key.prefix_len, key.key))
            .map_err(named(name))
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
