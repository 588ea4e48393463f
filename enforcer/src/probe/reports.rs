//! What the probe counted: the per-CPU counters summed over CPUs ([`Counters`]), and the
//! denied packets its deny entries hold that no event reported yet, turned into events
//! ([`Probe::flush_denies`]; the collector's reader does the same on its own handle).

use aya::maps::{HashMap, MapData, MapError, PerCpuArray};
use tollgate_schemas::{Counter, DenyEntry, FlowEvent, FlowKey, map_names};

use super::{Probe, ProbeError, clock::monotonic_ns};

/// Sums over all CPUs of the probe's counters, indexed by [`Counter`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counters(pub [u64; Counter::COUNT as usize]);

impl Counters {
    /// One counter's total.
    pub fn get(&self, counter: Counter) -> u64 {
        self.0[counter as usize]
    }
}

impl Probe {
    /// Totals of the per-CPU counters.
    pub fn counters(&self) -> Result<Counters, ProbeError> {
        read_counters(&self.maps.counters)
    }

    /// Reports what the kernel counted but has not reported yet: every denied flow with packets
    /// since its last event becomes one more event ([`FlowEvent::residual_deny`]), and its
    /// entry is removed, so that its next packet starts a new report at once. Packets denied
    /// between the read and the removal of an entry are the only ones that can go unreported.
    pub fn flush_denies(&mut self) -> Result<Vec<FlowEvent>, ProbeError> {
        flush_denies(&mut self.maps.denies)
    }
}

/// Reports what `denies` counted but has not reported yet; see [`Probe::flush_denies`].
pub(crate) fn flush_denies(
    denies: &mut HashMap<MapData, FlowKey, DenyEntry>,
) -> Result<Vec<FlowEvent>, ProbeError> {
    let error = |source| ProbeError::Map {
        name: map_names::DENIES,
        source,
    };
    let pending = denies
        .iter()
        .filter_map(|entry| match entry {
            Ok((_, deny)) if deny.packets == 0 => None,
            other => Some(other),
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(error)?;
    let now = monotonic_ns();
    let mut events = Vec::with_capacity(pending.len());
    for (key, deny) in pending {
        match denies.remove(&key) {
            Ok(()) | Err(MapError::KeyNotFound) => {}
            Err(source) => return Err(error(source)),
        }
        events.push(FlowEvent::residual_deny(&key, &deny, now));
    }
    Ok(events)
}

/// Totals of the per-CPU `counters`.
pub(crate) fn read_counters(counters: &PerCpuArray<MapData, u64>) -> Result<Counters, ProbeError> {
    let mut totals = Counters::default();
    for counter in Counter::ALL {
        let values = counters
            .get(&(counter as u32), 0)
            .map_err(|source| ProbeError::Map {
                name: map_names::COUNTERS,
                source,
            })?;
        totals.0[counter as usize] = values.iter().sum();
    }
    Ok(totals)
}
