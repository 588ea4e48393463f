//! The probe's clock, from userspace: [`monotonic_ns`] reads it, [`calibrate`] tells the
//! programs how to read it cheaply.
//!
//! The programs stamp packets with `CLOCK_MONOTONIC` as of the kernel's last tick. The helper
//! that reads it (`bpf_ktime_get_coarse_ns`) costs ~20 ns a packet on a virtual machine;
//! `jiffies` counts the same ticks and the verifier inlines its helper into one load. Turning
//! it into ns needs the tick's length, which `clock_getres(CLOCK_MONOTONIC_COARSE)` gives
//! (`TICK_NSEC`), and an offset, which the `clock` program gives: run once under
//! BPF_PROG_TEST_RUN, it writes the coarse clock, `jiffies` and the coarse clock again into the
//! packet. Both go into `Config` (`clock_tick_ns`, `clock_offset_ns`) with every setting the
//! probe writes. Without a calibration the programs ask the helper: the same clock, slower.

use aya::programs::{ProgramError, SchedClassifier, TestRun, TestRunOptions};
use rustix::time::{ClockId, Timespec};

/// Now, in ns of `CLOCK_MONOTONIC`: the clock of the probe's timestamps (which read it as of
/// the kernel's last tick, up to a tick behind this). The one definition userspace uses.
pub fn monotonic_ns() -> u64 {
    clock_ns(ClockId::Monotonic)
}

/// Now, in ns of `clock` since its epoch.
pub fn clock_ns(clock: ClockId) -> u64 {
    timespec_ns(&rustix::time::clock_gettime(clock))
}

/// `ts` in ns (0 for a negative time, which the clocks read here never give).
fn timespec_ns(ts: &Timespec) -> u64 {
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

/// A tick outside 0.5–20 ms (`HZ` 50–2000) is not believed: no kernel is built so.
const TICK_NS: std::ops::RangeInclusive<u64> = 500_000..=20_000_000;

/// Runs of the `clock` program before giving up on a pair of readings without a tick between.
const ATTEMPTS: usize = 8;

/// Why the probe's clock was left uncalibrated (the programs then use the helper).
#[derive(Debug, thiserror::Error)]
pub enum ClockError {
    /// The `clock` program would not run.
    #[error("BPF_PROG_TEST_RUN of the clock program")]
    Program(#[from] ProgramError),
    /// `clock_getres(CLOCK_MONOTONIC_COARSE)` gave no believable tick.
    #[error("CLOCK_MONOTONIC_COARSE's resolution is {0} ns, not a kernel tick")]
    Tick(u64),
    /// Every run saw a tick between its two readings of the coarse clock.
    #[error("a tick came between the clock program's readings {ATTEMPTS} times")]
    Unsteady,
}

/// The tick's length and the offset that make `jiffies` the probe's clock: the calibration
/// [`tollgate_schemas::Config::with_clock`] takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Calibration {
    /// `TICK_NSEC`.
    pub tick_ns: u64,
    /// `CLOCK_MONOTONIC` as of the last tick, less `jiffies × tick_ns` (wrapping).
    pub offset_ns: u64,
}

/// Runs the loaded `clock` program to calibrate the probe's clock.
pub(super) fn calibrate(program: &SchedClassifier) -> Result<Calibration, ClockError> {
    let tick_ns = timespec_ns(&rustix::time::clock_getres(ClockId::MonotonicCoarse));
    if !TICK_NS.contains(&tick_ns) {
        return Err(ClockError::Tick(tick_ns));
    }
    // The smallest frame BPF_PROG_TEST_RUN takes for a TC program is an Ethernet header; the
    // program overwrites the first 24 bytes.
    let frame = [0u8; 64];
    for _ in 0..ATTEMPTS {
        let mut out = [0u8; 64];
        program.test_run(TestRunOptions {
            data_in: Some(&frame),
            data_out: Some(&mut out),
            repeat: 1,
            ..TestRunOptions::default()
        })?;
        let word = |i: usize| {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(&out[i * 8..i * 8 + 8]);
            u64::from_ne_bytes(bytes)
        };
        let (before, jiffies, after) = (word(0), word(1), word(2));
        if before == after && before != 0 {
            return Ok(Calibration {
                tick_ns,
                offset_ns: before.wrapping_sub(jiffies.wrapping_mul(tick_ns)),
            });
        }
    }
    Err(ClockError::Unsteady)
}
