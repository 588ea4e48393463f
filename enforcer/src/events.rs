//! Reading flow events from the probe's ring buffer.
//!
//! The kernel writes one [`FlowEvent`] per flow decision; [`EventReader::drain`] copies out
//! every event available now. The reader is also a file descriptor for an async reactor, but
//! the probe wakes it only once 64 KiB of events are waiting (a wakeup costs the kernel a
//! self-IPI per event otherwise): a reader must also drain on a timer, or after each test run
//! as `verify` does.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};

use aya::maps::{MapData, RingBuf};
use tollgate_schemas::{FLOW_EVENT_VERSION, FlowEvent};

/// The probe's event ring buffer.
pub struct EventReader {
    ring: RingBuf<MapData>,
    /// Records that were not a whole [`FlowEvent`] of the known version.
    undecodable: u64,
}

impl EventReader {
    pub(crate) fn new(ring: RingBuf<MapData>) -> Self {
        Self {
            ring,
            undecodable: 0,
        }
    }

    /// Every event available now, oldest first.
    pub fn drain(&mut self) -> Vec<FlowEvent> {
        let mut events = Vec::new();
        while let Some(item) = self.ring.next() {
            match decode(&item) {
                Some(event) => events.push(event),
                None => self.undecodable += 1,
            }
        }
        events
    }

    /// How many records could not be decoded (wrong size or version), since the reader was
    /// created. They are counted, never silently skipped.
    pub fn undecodable(&self) -> u64 {
        self.undecodable
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
