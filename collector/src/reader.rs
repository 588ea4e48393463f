//! The collector's input: where flow events come from, as the collector sees it.
//!
//! A [`FlowSource`] gives the collector everything it reads from the kernel: the events
//! waiting now, the residual denies (what deny entries counted since their last event), the
//! flows conntrack tracks (for [`crate::accounting`]) and what the kernel lost before anyone
//! read it (undecodable records, ring-buffer reserve failures). The agent hands the collector
//! the probe's [`EventReader`], which is one ([`kernel`] below); tests and benches that feed
//! events themselves use a [`MemorySource`].

use std::collections::VecDeque;
use std::convert::Infallible;

use tollgate_schemas::{CtEntry, FlowEvent, FlowKey};

pub use kernel::EventReader;

/// Where the collector reads flow events from.
pub trait FlowSource {
    /// Why a map could not be read.
    type Error: std::error::Error + 'static;

    /// Hands every event available now to `each`, oldest first.
    fn drain_with(&mut self, each: impl FnMut(&FlowEvent));

    /// The residual denies: what the kernel denied but has not reported yet, as events
    /// ([`FlowEvent::residual_deny`]). Each is reported once.
    fn residual_denies(&mut self) -> Result<Vec<FlowEvent>, Self::Error>;

    /// Every flow conntrack tracks now, with its packet and byte totals.
    fn tracked_flows(&self) -> Result<Vec<(FlowKey, CtEntry)>, Self::Error>;

    /// Ring-buffer entries that could not be decoded into an event so far (wrong size or
    /// version).
    fn undecodable(&self) -> u64;

    /// The kernel's count of events it could not write because the ring buffer was full, since
    /// its maps were created; `None` when the source has no such counter.
    fn ringbuf_reserve_failed(&self) -> Result<Option<u64>, Self::Error>;
}

/// The probe's ring buffer and maps, through the enforcer's [`EventReader`].
pub mod kernel {
    use tollgate_enforcer::probe::ProbeError;
    use tollgate_schemas::{Counter, CtEntry, FlowEvent, FlowKey};

    pub use tollgate_enforcer::events::EventReader;

    use super::FlowSource;

    impl FlowSource for EventReader {
        type Error = ProbeError;

        fn drain_with(&mut self, each: impl FnMut(&FlowEvent)) {
            EventReader::drain_with(self, each);
        }

        fn residual_denies(&mut self) -> Result<Vec<FlowEvent>, ProbeError> {
            self.flush_denies()
        }

        fn tracked_flows(&self) -> Result<Vec<(FlowKey, CtEntry)>, ProbeError> {
            EventReader::tracked_flows(self)
        }

        fn undecodable(&self) -> u64 {
            EventReader::undecodable(self)
        }

        fn ringbuf_reserve_failed(&self) -> Result<Option<u64>, ProbeError> {
            Ok(Some(self.counters()?.get(Counter::RingbufReserveFailed)))
        }
    }
}

/// Flow events held in memory: what a test or a bench puts in is what the collector reads.
#[derive(Debug, Default)]
pub struct MemorySource {
    /// Events waiting to be drained, oldest first.
    pub events: VecDeque<FlowEvent>,
    /// Residual denies, reported (and emptied) at the next [`FlowSource::residual_denies`].
    pub residual_denies: Vec<FlowEvent>,
    /// The flows conntrack tracks.
    pub tracked: Vec<(FlowKey, CtEntry)>,
    /// Undecodable ring-buffer entries so far.
    pub undecodable: u64,
    /// The ring buffer's reserve failures; `None`: no counter (no probe was read).
    pub ringbuf_reserve_failed: Option<u64>,
}

impl MemorySource {
    /// A source with `events` waiting and nothing else.
    pub fn new(events: impl IntoIterator<Item = FlowEvent>) -> Self {
        Self {
            events: events.into_iter().collect(),
            ..Self::default()
        }
    }
}

impl FlowSource for MemorySource {
    type Error = Infallible;

    fn drain_with(&mut self, mut each: impl FnMut(&FlowEvent)) {
        for event in self.events.drain(..) {
            each(&event);
        }
    }

    fn residual_denies(&mut self) -> Result<Vec<FlowEvent>, Infallible> {
        Ok(std::mem::take(&mut self.residual_denies))
    }

    fn tracked_flows(&self) -> Result<Vec<(FlowKey, CtEntry)>, Infallible> {
        Ok(self.tracked.clone())
    }

    fn undecodable(&self) -> u64 {
        self.undecodable
    }

    fn ringbuf_reserve_failed(&self) -> Result<Option<u64>, Infallible> {
        Ok(self.ringbuf_reserve_failed)
    }
}
