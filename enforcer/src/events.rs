//! Reading flow events from the probe's ring buffer.
//!
//! The kernel writes one [`FlowEvent`] per flow decision; [`EventReader::drain`] copies out
//! every event available now, [`EventReader::drain_with`] hands each to a function without
//! collecting them. The reader is also a file descriptor for an async reactor, but the probe
//! wakes it only when the waiting events cross 64 KiB (a wakeup costs the kernel a self-IPI per
//! event otherwise): a reader must also drain on a timer, or after each test run as `verify`
//! does.
//!
//! The reader holds its own handles on the conntrack and deny maps and the counters, so
//! whoever owns it (the collector) can also account the packets of tracked flows
//! ([`EventReader::tracked_flows`]), report residual denies ([`EventReader::flush_denies`])
//! and read the kernel's loss counters ([`EventReader::counters`]) while the probe itself
//! stays with the enforcer.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};

use aya::maps::{HashMap, MapData, PerCpuArray, RingBuf};
use tollgate_schemas::{CtEntry, DenyEntry, FLOW_EVENT_VERSION, FlowEvent, FlowKey, map_names};

use crate::probe::{Counters, ProbeError, flush_denies, read_counters};

/// The probe's event ring buffer, with handles on the conntrack and deny maps and the
/// counters.
pub struct EventReader {
    ring: RingBuf<MapData>,
    conntrack: HashMap<MapData, FlowKey, CtEntry>,
    denies: HashMap<MapData, FlowKey, DenyEntry>,
    counters: PerCpuArray<MapData, u64>,
    /// Records that were not a whole [`FlowEvent`] of the known version.
    undecodable: u64,
}

impl EventReader {
    pub(crate) fn new(
        ring: RingBuf<MapData>,
        conntrack: HashMap<MapData, FlowKey, CtEntry>,
        denies: HashMap<MapData, FlowKey, DenyEntry>,
        counters: PerCpuArray<MapData, u64>,
    ) -> Self {
        Self {
            ring,
            conntrack,
            denies,
            counters,
            undecodable: 0,
        }
    }

    /// Every event available now, oldest first.
    pub fn drain(&mut self) -> Vec<FlowEvent> {
        let mut events = Vec::new();
        self.drain_with(|event| events.push(*event));
        events
    }

    /// Hands every event available now to `each`, oldest first, and returns how many records
    /// were read (undecodable ones included).
    pub fn drain_with(&mut self, mut each: impl FnMut(&FlowEvent)) -> u64 {
        let mut read = 0;
        while let Some(item) = self.ring.next() {
            read += 1;
            match decode(&item) {
                Some(event) => each(&event),
                None => self.undecodable += 1,
            }
        }
        read
    }

    /// How many records could not be decoded (wrong size or version), since the reader was
    /// created. They are counted, never silently skipped.
    pub fn undecodable(&self) -> u64 {
        self.undecodable
    }

    /// Reports the denied packets the kernel counted but has not reported yet, as
    /// [`crate::probe::Probe::flush_denies`] does.
    pub fn flush_denies(&mut self) -> Result<Vec<FlowEvent>, ProbeError> {
        flush_denies(&mut self.denies)
    }

    /// Every flow conntrack tracks now, keyed as its first packet ([`FlowKey::first_of`]),
    /// with its packet and byte totals. Entries that vanish while the map is walked (expired,
    /// evicted) are skipped.
    pub fn tracked_flows(&self) -> Result<Vec<(FlowKey, CtEntry)>, ProbeError> {
        let mut flows = Vec::new();
        for entry in self.conntrack.iter() {
            match entry {
                Ok((key, entry)) => flows.push((key.first_of(&entry), entry)),
                Err(aya::maps::MapError::KeyNotFound) => {}
                Err(source) => {
                    return Err(ProbeError::Map {
                        name: map_names::CONNTRACK,
                        source,
                    });
                }
            }
        }
        Ok(flows)
    }

    /// The probe's counters, summed over CPUs.
    pub fn counters(&self) -> Result<Counters, ProbeError> {
        read_counters(&self.counters)
    }
}

/// Decodes one ring-buffer record; `None` when its size or version is not [`FlowEvent`]'s.
pub fn decode(bytes: &[u8]) -> Option<FlowEvent> {
    if bytes.len() != size_of::<FlowEvent>() {
        return None;
    }
    // SAFETY: the length is checked; FlowEvent is plain old data with no invalid bit patterns,
    // and read_unaligned copes with any alignment of the record.
    let event = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<FlowEvent>()) };
    (event.version == FLOW_EVENT_VERSION).then_some(event)
}

impl AsFd for EventReader {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.ring.as_fd()
    }
}

impl AsRawFd for EventReader {
    fn as_raw_fd(&self) -> RawFd {
        self.ring.as_raw_fd()
    }
}
