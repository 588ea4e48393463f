//! The pinned probe shared by the agent's loop, its link watch and its HTTP routes: a mutex
//! around [`PinnedProbe`] that attaches to veths ([`Attacher`]) and writes the policy maps
//! ([`PolicyMaps`]) through whichever holds it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tollgate_enforcer::{
    aya_maps::AyaMapError,
    desired::{Capacity, DesiredState, PeerEntryKey},
    sync::PolicyMaps,
};
use tollgate_schemas::{
    EndpointKey, EndpointState, PeerIdentity, PolicyEntry, PolicyKey, PolicyValue,
};

use crate::endpoints::{Attacher, Veth};
use crate::pins::{PinError, PinnedProbe};

/// The pinned probe, shared by the endpoint manager (attach), the sync (maps) and `/metrics`
/// (counters). Locked only for synchronous work, never across an await.
#[derive(Debug, Clone)]
pub struct SharedProbe(Arc<Mutex<PinnedProbe>>);

impl SharedProbe {
    /// Shares `probe`.
    pub fn new(probe: PinnedProbe) -> Self {
        Self(Arc::new(Mutex::new(probe)))
    }

    /// The probe, locked.
    pub fn lock(&self) -> MutexGuard<'_, PinnedProbe> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Attacher for SharedProbe {
    type Error = PinError;

    fn attached(&self) -> BTreeMap<String, u32> {
        self.lock().attached()
    }

    fn attach(&mut self, veth: &Veth) -> Result<(), PinError> {
        self.lock().attach(veth)
    }

    fn detach(&mut self, ifname: &str) -> Result<(), PinError> {
        self.lock().detach(ifname)
    }
}

impl PolicyMaps for SharedProbe {
    type Error = AyaMapError;

    fn capacity(&self) -> Result<Capacity, AyaMapError> {
        self.lock().probe().policy_maps().capacity()
    }

    fn read(&self) -> Result<DesiredState, AyaMapError> {
        self.lock().probe().policy_maps().read()
    }

    fn upsert_endpoint(
        &mut self,
        key: &EndpointKey,
        value: &EndpointState,
    ) -> Result<(), AyaMapError> {
        self.lock()
            .probe()
            .policy_maps()
            .upsert_endpoint(key, value)
    }

    fn delete_endpoint(&mut self, key: &EndpointKey) -> Result<(), AyaMapError> {
        self.lock().probe().policy_maps().delete_endpoint(key)
    }

    fn upsert_peer(&mut self, key: &PeerEntryKey, value: &PeerIdentity) -> Result<(), AyaMapError> {
        self.lock().probe().policy_maps().upsert_peer(key, value)
    }

    fn delete_peer(&mut self, key: &PeerEntryKey) -> Result<(), AyaMapError> {
        self.lock().probe().policy_maps().delete_peer(key)
    }

    fn upsert_policy(&mut self, key: &PolicyKey, value: &PolicyEntry) -> Result<(), AyaMapError> {
        self.lock().probe().policy_maps().upsert_policy(key, value)
    }

    fn delete_policy(&mut self, key: &PolicyKey) -> Result<(), AyaMapError> {
        self.lock().probe().policy_maps().delete_policy(key)
    }

    fn write_ruleset(&mut self, id: u32, value: &PolicyValue) -> Result<(), AyaMapError> {
        self.lock().probe().policy_maps().write_ruleset(id, value)
    }

    fn clear_ruleset(&mut self, id: u32) -> Result<(), AyaMapError> {
        self.lock().probe().policy_maps().clear_ruleset(id)
    }

    fn insert_node_addr(&mut self, key: &EndpointKey) -> Result<(), AyaMapError> {
        self.lock().probe().policy_maps().insert_node_addr(key)
    }

    fn delete_node_addr(&mut self, key: &EndpointKey) -> Result<(), AyaMapError> {
        self.lock().probe().policy_maps().delete_node_addr(key)
    }
}
