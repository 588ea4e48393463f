//! Records decisions: conntrack entries for passed flows, deduplicated deny state, fragment
//! verdicts, per-CPU counters, and flow events in the ring buffer.
//!
//! Events: a passed flow gets one event when it is first decided; a denied flow gets one on its
//! first packet and then at most one per report interval, carrying the packets and bytes denied
//! since the previous event. Between its events, a flow policy denied drops on its deny entry
//! ([`denied_again`]) while the endpoint's revision stands, found through its interface's deny
//! hint. A failed ring-buffer reservation is counted per CPU
//! ([`Counter::RingbufReserveFailed`]), so userspace can report the gap.
//!
//! Wakeups are adaptive: a submit wakes the reader only when it takes the waiting bytes across
//! [`WAKEUP_PENDING_BYTES`], so once per 64 KiB of events however fast they come and however
//! slow the reader is. Each wakeup is an irq_work self-IPI, which costs about 8 µs on a virtual
//! machine (an EKS node), twenty times the rest of a new flow's decision; readers therefore
//! also drain on a short timer, which also covers a crossing missed by two CPUs submitting at
//! once.

use tollgate_schemas::{
    Config, Counter, CtEntry, DenyEntry, Direction, EndpointState, FLOW_EVENT_VERSION, FlowEvent,
    FlowKey, FragEntry, FragKey, Reason, Verdict, map_sizes,
};

use aya_ebpf::bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP};

use crate::{
    DROP, PASS,
    decide::{Outcome, current, or_default},
    maps::{CONNTRACK, DENIES, DENY_HINTS, EVENTS, FRAGS, count},
    parse::Packet,
    stack::Aligned,
};

/// Bytes waiting in the ring buffer whose crossing wakes the reader (1/64 of the ring).
pub const WAKEUP_PENDING_BYTES: u64 = 64 * 1024;

/// Bytes one event takes in the ring: the kernel's 8-byte record header, then the event,
/// rounded up to 8 bytes.
const EVENT_RECORD_BYTES: u64 = (8 + size_of::<FlowEvent>() as u64).next_multiple_of(8);

/// The flow key of `packet`, in its own direction.
#[inline(always)]
pub fn key_of(packet: &Packet) -> FlowKey {
    FlowKey {
        ifindex: packet.ifindex,
        direction: packet.direction as u8,
        protocol: packet.protocol,
        _pad: [0; 2],
        src_addr: packet.src.0,
        dst_addr: packet.dst.0,
        src_port: packet.src_port,
        dst_port: packet.dst_port,
    }
}

/// Counts a passing packet and returns the TC action for it.
#[inline(always)]
pub fn pass(outcome: Outcome) -> i32 {
    match outcome.verdict {
        Verdict::AuditDeny => count(Counter::AuditDeny),
        _ => count(Counter::Allow),
    }
    PASS
}

/// Starts tracking a newly passed flow (`key`: its first packet's) under its key for both
/// directions, and writes its event; an entry of that key (a connection opened again on the
/// tuple, from either end) is replaced. A BPF function of its own, so its stack frame is not
/// added to the entry point's.
#[inline(never)]
pub fn track(packet: &Packet, key: &FlowKey, endpoint: &EndpointState, outcome: &Outcome) {
    let tracked = Aligned(key.tracked());
    let tracked = &tracked.0;
    let entry = CtEntry {
        created_ns: packet.now,
        last_seen_ns: packet.now,
        packets: 1,
        bytes: packet.len,
        rule_id: outcome.rule_id,
        revision: endpoint.revision,
        verdict: outcome.verdict as u8,
        reason: outcome.reason as u8,
        tcp_flags: packet.tcp_flags,
        direction: packet.direction as u8,
        first_len: u32::try_from(packet.len).unwrap_or(u32::MAX),
        endpoint: endpoint.id,
    };
    if CONNTRACK.insert(tracked, entry, 0).is_err() {
        // The flow still passes (it was allowed); its replies are decided on their own.
        count(Counter::MapUpdateFailed);
    }
    emit(packet, endpoint.id, outcome, 1, packet.len);
}

/// Accounts a packet of a tracked flow.
#[inline(always)]
pub fn touch(entry: &mut CtEntry, packet: &Packet) {
    entry.last_seen_ns = packet.now;
    entry.packets += 1;
    entry.bytes += packet.len;
    entry.tcp_flags |= packet.tcp_flags;
}

/// Why a packet is denied, as [`deny`] records it.
pub struct Denial {
    /// Endpoint id (0: none claims the address).
    pub endpoint: u32,
    /// What denied it.
    pub reason: Reason,
    /// The rule that denied it, 0 for none.
    pub rule_id: u32,
    /// The endpoint's revision when policy denied it, 0 when something else did (see
    /// [`DenyEntry::revision`]).
    pub revision: u64,
}

impl Denial {
    /// A denial by a check before policy (the endpoint, parsing, fragments).
    #[inline(always)]
    pub const fn check(endpoint: u32, reason: Reason) -> Self {
        Self {
            endpoint,
            reason,
            rule_id: 0,
            revision: 0,
        }
    }

    /// A denial by the endpoint's policy at its current revision.
    #[inline(always)]
    pub const fn by_policy(endpoint: &EndpointState, outcome: &Outcome) -> Self {
        Self {
            endpoint: endpoint.id,
            reason: outcome.reason,
            rule_id: outcome.rule_id,
            revision: endpoint.revision,
        }
    }
}

/// Drops the packet, deduplicating its event per flow and report interval; the event names
/// the reason and the rule that denied as this packet was decided. A BPF function of its own,
/// like [`track`].
#[inline(never)]
pub fn deny(packet: &Packet, denial: &Denial, config: &Config) -> i32 {
    count(Counter::Deny);
    let key = Aligned(key_of(packet));
    let key = &key.0;
    let outcome = Outcome {
        verdict: Verdict::Deny,
        reason: denial.reason,
        rule_id: denial.rule_id,
    };
    if denial.revision != 0 {
        hint_denied(packet);
    }
    match DENIES.get_ptr_mut(key) {
        Some(entry) => {
            // SAFETY: a pointer into the LRU map value, valid for this program run.
            let entry = unsafe { &mut *entry };
            add_denied(entry, packet);
            entry.reason = denial.reason as u8;
            entry.rule_id = denial.rule_id;
            entry.revision = denial.revision;
            entry.endpoint = denial.endpoint;
            if report_due(entry, packet, report_interval(config)) {
                emit(
                    packet,
                    denial.endpoint,
                    &outcome,
                    entry.packets,
                    entry.bytes,
                );
                entry.last_report_ns = packet.now;
                entry.packets = 0;
                entry.bytes = 0;
                entry.tcp_flags = 0;
            }
        }
        None => {
            emit(packet, denial.endpoint, &outcome, 1, packet.len);
            let entry = DenyEntry {
                last_report_ns: packet.now,
                packets: 0,
                bytes: 0,
                tcp_flags: 0,
                reason: denial.reason as u8,
                _pad: [0; 2],
                rule_id: denial.rule_id,
                revision: denial.revision,
                endpoint: denial.endpoint,
                _pad2: 0,
            };
            if DENIES.insert(key, entry, 0).is_err() {
                // The packet is still dropped; the next one will produce an event again.
                count(Counter::MapUpdateFailed);
            }
        }
    }
    DROP
}

/// Whether the packet, of a flow (`key`) that conntrack does not pass, is one more packet
/// that its endpoint's policy denied under the endpoint's current revision and that reports
/// nothing: if so it is counted in the flow's deny entry and must be dropped, without deciding
/// it again (policy cannot decide otherwise until the revision moves). `false` when the flow
/// has no such entry or its report is due: the packet is then decided by policy, and a report
/// names the rule as decided now.
#[inline(always)]
pub fn denied_again(packet: &Packet, key: &FlowKey, config: &Config) -> bool {
    let interval = report_interval(config);
    // An entry whose report is not due reported within the interval, and the hint of its
    // interface was written then or later: an older hint means there is no such entry, and
    // the lookup is skipped. A missing slot cannot happen (the index is masked): decide by
    // policy.
    let Some(hint) = DENY_HINTS.get(hint_slot(key.ifindex, packet.direction)) else {
        return false;
    };
    if packet.now.saturating_sub(*hint) >= interval {
        return false;
    }
    let Some(entry) = DENIES.get_ptr_mut(key) else {
        return false;
    };
    // SAFETY: a pointer into the LRU map value, valid for this program run.
    let entry = unsafe { &mut *entry };
    // Revision 0 marks a denial that policy did not make (`current` is false for it); a
    // revision that is not the endpoint's current one, or an endpoint no longer programmed,
    // is decided again.
    if !current(entry.endpoint, entry.revision) || report_due(entry, packet, interval) {
        return false;
    }
    count(Counter::Deny);
    add_denied(entry, packet);
    true
}

/// The slot of the deny hints for the flows of interface `ifindex` in `direction`.
#[inline(always)]
fn hint_slot(ifindex: u32, direction: Direction) -> u32 {
    let ingress = u32::from(direction == Direction::Ingress);
    ((ifindex << 1) | ingress) & (map_sizes::DENY_HINTS - 1)
}

/// Notes that policy denied a flow of the packet's interface in its direction now.
#[inline(always)]
fn hint_denied(packet: &Packet) {
    if let Some(slot) = DENY_HINTS.get_ptr_mut(hint_slot(packet.ifindex, packet.direction)) {
        // SAFETY: a pointer into the array's value. Another CPU may write the slot at once;
        // either time is recent, and an older one only costs a decision by policy.
        unsafe { *slot = packet.now };
    }
}

/// Accounts a denied packet in its flow's deny entry.
#[inline(always)]
fn add_denied(entry: &mut DenyEntry, packet: &Packet) {
    entry.packets += 1;
    entry.bytes += packet.len;
    entry.tcp_flags |= packet.tcp_flags;
}

/// Whether a deny entry's next event is due: `interval` has passed since its last one.
#[inline(always)]
fn report_due(entry: &DenyEntry, packet: &Packet, interval: u64) -> bool {
    packet.now.saturating_sub(entry.last_report_ns) >= interval
}

/// The deny report interval, ns.
#[inline(always)]
fn report_interval(config: &Config) -> u64 {
    or_default(
        config.deny_report_interval_ns,
        Config::DEFAULT_DENY_REPORT_INTERVAL_NS,
    )
}

/// Keeps a first fragment's verdict for the fragments that follow it.
#[inline(always)]
pub fn remember_fragment(key: &FragKey, outcome: &Outcome) {
    let entry = FragEntry {
        verdict: outcome.verdict as u8,
        reason: outcome.reason as u8,
        _pad: [0; 2],
        rule_id: outcome.rule_id,
    };
    if FRAGS.insert(key, entry, 0).is_err() {
        // Later fragments will be denied as unknown: fail closed.
        count(Counter::MapUpdateFailed);
    }
}

/// Writes one event straight into the ring buffer (no copy on the 512-byte stack). The TCP
/// flags are the current packet's.
#[inline(always)]
fn emit(packet: &Packet, endpoint: u32, outcome: &Outcome, packets: u64, bytes: u64) {
    let Some(mut slot) = EVENTS.reserve::<FlowEvent>(0) else {
        count(Counter::RingbufReserveFailed);
        return;
    };
    let event = slot.as_mut_ptr();
    // SAFETY: the reserved slot holds one FlowEvent; every field is written before submit.
    unsafe {
        (*event).version = FLOW_EVENT_VERSION;
        (*event).family = packet.family;
        (*event).protocol = packet.protocol;
        (*event).direction = packet.direction as u8;
        (*event).verdict = outcome.verdict as u8;
        (*event).reason = outcome.reason as u8;
        (*event).tcp_flags = packet.tcp_flags;
        (*event).ts_ns = packet.now;
        (*event).ifindex = packet.ifindex;
        (*event).endpoint = endpoint;
        (*event).rule_id = outcome.rule_id;
        (*event).src_port = packet.src_port;
        (*event).dst_port = packet.dst_port;
        (*event).src_addr = packet.src.0;
        (*event).dst_addr = packet.dst.0;
        (*event).packets = packets;
        (*event).bytes = bytes;
        (*event).icmp_type = packet.icmp_type;
        (*event).icmp_code = packet.icmp_code;
        (*event)._pad = [0; 6];
    }
    // The reservation already counts in the waiting bytes: wake only if this event is the one
    // that takes them across the mark.
    let waiting = EVENTS.query(BPF_RB_AVAIL_DATA as u64);
    let crossed =
        (WAKEUP_PENDING_BYTES..WAKEUP_PENDING_BYTES + EVENT_RECORD_BYTES).contains(&waiting);
    let wakeup = if crossed {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    slot.submit(wakeup as u64);
}
