//! tollgate's eBPF programs: NetworkPolicy enforcement and flow events on pod veths.
//!
//! Two TC programs sit on each pod's host-side veth (a third, [`floor`], is only benchmarked):
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

use aya_ebpf::{macros::classifier, programs::TcContext};
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

/// Passes every packet and does nothing else: never attached, loaded only by `tollgate bench
/// datapath` to measure what the harness itself costs per run.
#[classifier]
pub fn floor(_ctx: TcContext) -> i32 {
    PASS
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
