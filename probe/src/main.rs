//! tollgate's eBPF programs: NetworkPolicy enforcement and flow events on pod veths.
//!
//! Two TC programs sit on each pod's host-side veth (a third, [`floor`], is only benchmarked,
//! and a fourth, [`clock`], only run by the loader):
//! - [`from_pod`] on the TC ingress hook sees what the pod sends (its egress);
//! - [`to_pod`] on the TC egress hook sees what the pod receives (its ingress).
//!
//! A packet flows through [`parse`] (headers → [`parse::Packet`]), then [`decide`] (endpoint,
//! conntrack, policy → verdict), and [`flow`] records the decision: conntrack and deny
//! deduplication state, per-CPU counters, and one [`tollgate_schemas::FlowEvent`] per flow
//! decision in the ring buffer.
//!
//! Return values work with TCX and with clsact in direct-action mode alike: [`PASS`] hands the
//! packet to the next program (or the stack when there is none), [`DROP`] drops it.

#![no_std]
#![no_main]

mod decide;
mod flow;
mod maps;
mod parse;
mod stack;

use aya_ebpf::{
    helpers::{bpf_jiffies64, bpf_ktime_get_coarse_ns},
    macros::classifier,
    programs::TcContext,
};
use tollgate_schemas::Direction;

/// TC_ACT_UNSPEC / TCX_NEXT: continue with the next program; the packet passes if none.
pub const PASS: i32 = -1;
/// TC_ACT_SHOT / TCX_DROP.
pub const DROP: i32 = 2;

/// Packets leaving the pod: the host-side veth's TC ingress hook.
#[classifier]
pub fn from_pod(ctx: TcContext) -> i32 {
    decide::run(&ctx, Direction::Egress)
}

/// Packets entering the pod: the host-side veth's TC egress hook.
#[classifier]
pub fn to_pod(ctx: TcContext) -> i32 {
    decide::run(&ctx, Direction::Ingress)
}

/// Passes every packet and does nothing else: only benchmarks load it. `tollgate bench datapath`
/// runs it to measure what the harness itself costs per run, and `tollgate bench veth` attaches
/// it to both hooks of the pods' veths to measure what the hooks cost traffic.
#[classifier]
pub fn floor(_ctx: TcContext) -> i32 {
    PASS
}

/// Writes the coarse monotonic clock, `jiffies` and the coarse clock again into the packet's
/// first 24 bytes: never attached, run once by the loader to calibrate the probe's clock
/// (`Config::clock_offset_ns`). Equal readings of the coarse clock show that no tick came
/// between them.
#[classifier]
pub fn clock(ctx: TcContext) -> i32 {
    // SAFETY: helpers without arguments.
    let readings = unsafe {
        [
            bpf_ktime_get_coarse_ns(),
            bpf_jiffies64(),
            bpf_ktime_get_coarse_ns(),
        ]
    };
    // Fail open on purpose: never attached. A frame too short keeps its bytes, and the loader,
    // which reads them back, refuses the calibration.
    let _ = ctx.store(0, &readings, 0);
    PASS
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
