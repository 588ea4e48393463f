//! Map sync: makes the probe's policy maps hold a [`DesiredState`] by applying the difference
//! between what they hold and what is desired (adds/deletes), never by rewriting them.
//!
//! (The diff and the in-memory implementation are in progress.)

use tollgate_schemas::{Direction, EndpointKey, EndpointState, PolicyValue};

use crate::desired::{DesiredState, PolicyEntryKey};

/// The probe's policy maps, as the sync sees them: read everything, change one entry.
///
/// Implemented over the kernel maps by [`crate::aya_maps::AyaMaps`] and in memory by
/// `InMemoryMaps`.
pub trait PolicyMaps {
    /// Error of the underlying maps.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Everything the maps hold now.
    fn read(&self) -> Result<DesiredState, Self::Error>;
    /// Inserts or replaces one endpoint.
    fn upsert_endpoint(&mut self, key: &EndpointKey, value: &EndpointState)
    -> Result<(), Self::Error>;
    /// Removes one endpoint.
    fn delete_endpoint(&mut self, key: &EndpointKey) -> Result<(), Self::Error>;
    /// Inserts or replaces one policy entry of one direction.
    fn upsert_policy(
        &mut self,
        direction: Direction,
        key: &PolicyEntryKey,
        value: &PolicyValue,
    ) -> Result<(), Self::Error>;
    /// Removes one policy entry of one direction.
    fn delete_policy(&mut self, direction: Direction, key: &PolicyEntryKey)
    -> Result<(), Self::Error>;
}
