//! Load for the collector from the real probe: denied flows run through `from_pod` with
//! BPF_PROG_TEST_RUN, each a different flow, so each writes one flow event into the real ring
//! buffer. `tollgate bench collector` and the collector's kernel tests use it.
//!
//! The probe is loaded in strict mode with no endpoints: every packet's source is an unknown
//! endpoint and is denied, which takes the full deny path (event, dedup entry).

use std::net::{IpAddr, Ipv4Addr};

use aya::programs::{TestRun, TestRunOptions};
use tollgate_enforcer::{
    packet::PacketSpec,
    probe::{Probe, ProbeError},
};
use tollgate_schemas::{program_names, proto};

use crate::reader::EventReader;

/// Flows per source address (source ports 1024…65535).
const PORTS: u32 = 64_512;

/// Most events the ring buffer holds (4 MiB of 96-byte records) rounded down, so that a
/// batch of this size never finds it full.
pub const RING_EVENTS: usize = 40_000;

/// The flooding probe.
pub struct Flood {
    probe: Probe,
    next: u32,
    out: Vec<u8>,
}

/// A test run failed.
#[derive(Debug, thiserror::Error)]
pub enum FloodError {
    /// Loading the probe or taking its ring buffer.
    #[error(transparent)]
    Probe(#[from] ProbeError),
    /// BPF_PROG_TEST_RUN failed.
    #[error("BPF_PROG_TEST_RUN: {0}")]
    TestRun(String),
}

impl Flood {
    /// Loads the probe (needs root) and returns it with its ring buffer.
    pub fn new() -> Result<(Self, EventReader), FloodError> {
        let mut probe = Probe::load()?;
        let reader = probe.take_events()?;
        Ok((
            Self {
                probe,
                next: 0,
                out: vec![0; 256],
            },
            reader,
        ))
    }

    /// The `n`th flow's first packet: TCP SYN from `198.18.<1 + n / 64512>` port
    /// `1024 + n % 64512` to 198.18.0.30:80.
    pub fn frame(n: u32) -> Vec<u8> {
        let base = u32::from(Ipv4Addr::new(198, 18, 1, 0));
        let src = IpAddr::V4(Ipv4Addr::from(base + n / PORTS));
        let dst = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 30));
        let port = u16::try_from(1024 + n % PORTS).unwrap_or(u16::MAX);
        PacketSpec::first(src, dst, proto::TCP, port, 80).build()
    }

    /// Denies `count` new flows, one event each (flows never repeat within a flood).
    pub fn deny(&mut self, count: usize) -> Result<(), FloodError> {
        let program = self.probe.program(program_names::FROM_POD)?;
        for _ in 0..count {
            let frame = Self::frame(self.next);
            self.next = self.next.wrapping_add(1);
            program
                .test_run(TestRunOptions {
                    data_in: Some(&frame),
                    data_out: Some(&mut self.out),
                    repeat: 1,
                    ..TestRunOptions::default()
                })
                .map_err(|e| FloodError::TestRun(e.to_string()))?;
        }
        Ok(())
    }
}
