//! Per-flow state kept by the probe: passed flows, denied flows being deduplicated, and
//! fragmented datagrams.
//!
//! A flow is keyed per interface (the pod's host-side veth), so that a flow between two pods of
//! one node is decided twice (egress of one, ingress of the other). Conntrack keys it the same
//! for both of its directions ([`FlowKey::tracked`]), and its entry says which way its first
//! packet went: a packet of either end finds the flow with one lookup, and one that went the
//! other way is its reply. A denied flow is keyed per direction of its packets. The key holds
//! nothing the probe must look up first: a packet of a known flow is decided with one lookup,
//! its entry's, which names the endpoint and the policy revision the flow was decided under.

use core::mem::{offset_of, size_of};

/// A flow as one endpoint saw its first packet.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKey {
    /// Interface index of the host-side veth the packet crossed (the endpoint's own,
    /// [`crate::EndpointState::ifindex`], unless the packet was spoofed).
    pub ifindex: u32,
    /// [`crate::Direction`] of the flow's first packet.
    pub direction: u8,
    /// IANA protocol number.
    pub protocol: u8,
    /// Zero.
    pub _pad: [u8; 2],
    /// Source address of the first packet (16-byte form, network byte order).
    pub src_addr: [u8; 16],
    /// Destination address of the first packet (16-byte form, network byte order).
    pub dst_addr: [u8; 16],
    /// Source port (host byte order); the echo identifier for ICMP echo; 0 otherwise.
    pub src_port: u16,
    /// Destination port (host byte order); the echo identifier for ICMP echo; 0 otherwise.
    pub dst_port: u16,
}

impl FlowKey {
    /// The key conntrack keeps this packet's flow under, the same for both of its directions:
    /// the key as a packet into the pod ([`crate::Direction::Ingress`]) has it, so a key of a
    /// packet out of the pod is reversed. The entry says which way the flow's first packet
    /// went ([`CtEntry::direction`]), and one lookup finds a flow from either end.
    pub const fn tracked(&self) -> Self {
        if self.direction == crate::Direction::Egress as u8 {
            self.reversed()
        } else {
            *self
        }
    }

    /// The key of the first packet of the flow tracked under this key ([`Self::tracked`])
    /// with the entry `entry`: reversed when that packet went out of the pod.
    pub const fn first_of(&self, entry: &CtEntry) -> Self {
        if entry.direction == crate::Direction::Egress as u8 {
            self.reversed()
        } else {
            *self
        }
    }

    /// The same flow seen from its other end: the opposite direction, addresses and ports
    /// swapped.
    pub const fn reversed(&self) -> Self {
        let direction = match crate::Direction::from_raw(self.direction) {
            Some(direction) => direction.reverse() as u8,
            None => self.direction,
        };
        Self {
            ifindex: self.ifindex,
            direction,
            protocol: self.protocol,
            _pad: [0; 2],
            src_addr: self.dst_addr,
            dst_addr: self.src_addr,
            src_port: self.dst_port,
            dst_port: self.src_port,
        }
    }
}

/// A flow that passed: later packets in either direction pass without a policy lookup.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CtEntry {
    /// When the first packet was decided, ns of `CLOCK_MONOTONIC` (as of the last tick).
    pub created_ns: u64,
    /// When the last packet (either direction) was seen, ns of `CLOCK_MONOTONIC`.
    pub last_seen_ns: u64,
    /// Packets seen, both directions.
    pub packets: u64,
    /// Bytes seen, both directions.
    pub bytes: u64,
    /// [`crate::EndpointState::revision`] the flow was decided under.
    pub revision: u64,
    /// Rule that allowed the flow (0 when the reason is not a rule).
    pub rule_id: u32,
    /// [`crate::Verdict`]: allow or audit-deny.
    pub verdict: u8,
    /// [`crate::Reason`] of the decision.
    pub reason: u8,
    /// OR of the TCP flags seen, both directions.
    pub tcp_flags: u8,
    /// [`crate::Direction`] of the flow's first packet: a packet that went the other way is
    /// its reply. Any other byte: the entry is not the probe's, and vouches for nothing.
    pub direction: u8,
    /// Length of the first packet (the one the flow's decision event reported), bytes: the
    /// collector's accounting starts after it.
    pub first_len: u32,
    /// Endpoint id ([`crate::EndpointState::id`]) the flow was decided for.
    pub endpoint: u32,
}

/// A denied flow: the packets and bytes denied since its last event.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DenyEntry {
    /// When its last event was written, ns of `CLOCK_MONOTONIC`.
    pub last_report_ns: u64,
    /// Packets denied since the last event.
    pub packets: u64,
    /// Bytes denied since the last event.
    pub bytes: u64,
    /// OR of the TCP flags denied since the last event.
    pub tcp_flags: u8,
    /// [`crate::Reason`] of the last denial.
    pub reason: u8,
    /// Zero.
    pub _pad: [u8; 2],
    /// The rule of the last denial (a ClusterNetworkPolicy's Deny), 0 for none: what the
    /// residual count names when it is flushed without an event of its own.
    pub rule_id: u32,
    /// The endpoint's policy revision when policy denied the flow's last packet; 0 when an
    /// endpoint check or a fragment's lookup denied it. While the endpoint keeps this revision,
    /// policy would deny the flow again the same way, so the probe drops the flow's packets that
    /// report nothing without deciding them again.
    pub revision: u64,
    /// Endpoint id the flow was denied for (0: no endpoint claims the address).
    pub endpoint: u32,
    /// Zero.
    pub _pad2: u32,
}

/// A fragmented datagram, as seen by one endpoint in one direction.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FragKey {
    /// Endpoint id.
    pub endpoint: u32,
    /// [`crate::Direction`].
    pub direction: u8,
    /// IANA protocol number of the fragmented payload.
    pub protocol: u8,
    /// Zero.
    pub _pad: [u8; 2],
    /// IPv4 identification (16 bits, zero-extended) or IPv6 fragment identification, host
    /// byte order.
    pub id: u32,
    /// Source address (16-byte form, network byte order).
    pub src_addr: [u8; 16],
    /// Destination address (16-byte form, network byte order).
    pub dst_addr: [u8; 16],
}

/// The verdict of a datagram's first fragment, applied to the fragments that follow it.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FragEntry {
    /// [`crate::Verdict`] of the first fragment.
    pub verdict: u8,
    /// [`crate::Reason`] of the first fragment.
    pub reason: u8,
    /// Zero.
    pub _pad: [u8; 2],
    /// Rule that decided the first fragment (0 when none).
    pub rule_id: u32,
}

const _: () = {
    assert!(size_of::<FlowKey>() == 44);
    assert!(offset_of!(FlowKey, ifindex) == 0);
    assert!(offset_of!(FlowKey, direction) == 4);
    assert!(offset_of!(FlowKey, protocol) == 5);
    assert!(offset_of!(FlowKey, src_addr) == 8);
    assert!(offset_of!(FlowKey, dst_addr) == 24);
    assert!(offset_of!(FlowKey, src_port) == 40);
    assert!(offset_of!(FlowKey, dst_port) == 42);
    assert!(size_of::<CtEntry>() == 56);
    assert!(offset_of!(CtEntry, revision) == 32);
    assert!(offset_of!(CtEntry, rule_id) == 40);
    assert!(offset_of!(CtEntry, verdict) == 44);
    assert!(offset_of!(CtEntry, reason) == 45);
    assert!(offset_of!(CtEntry, tcp_flags) == 46);
    assert!(offset_of!(CtEntry, first_len) == 48);
    assert!(offset_of!(CtEntry, endpoint) == 52);
    assert!(size_of::<DenyEntry>() == 48);
    assert!(offset_of!(DenyEntry, tcp_flags) == 24);
    assert!(offset_of!(DenyEntry, reason) == 25);
    assert!(offset_of!(DenyEntry, rule_id) == 28);
    assert!(offset_of!(DenyEntry, revision) == 32);
    assert!(offset_of!(DenyEntry, endpoint) == 40);
    assert!(size_of::<FragKey>() == 44);
    assert!(offset_of!(FragKey, id) == 8);
    assert!(offset_of!(FragKey, src_addr) == 12);
    assert!(offset_of!(FragKey, dst_addr) == 28);
    assert!(size_of::<FragEntry>() == 8);
    assert!(offset_of!(FragEntry, rule_id) == 4);
};

crate::user_pod!(FlowKey, CtEntry, DenyEntry, FragKey, FragEntry);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Direction;

    /// A client's flow out of its pod, as its first packet has it.
    fn out_of_the_pod() -> FlowKey {
        FlowKey {
            ifindex: 7,
            direction: Direction::Egress as u8,
            protocol: 6,
            _pad: [0; 2],
            src_addr: [1; 16],
            dst_addr: [2; 16],
            src_port: 40_000,
            dst_port: 80,
        }
    }

    #[test]
    fn a_reversed_key_is_the_other_end_of_the_flow() {
        let key = out_of_the_pod();
        let reply = key.reversed();
        assert_eq!(reply.direction, Direction::Ingress as u8);
        assert_eq!((reply.src_addr, reply.dst_addr), ([2; 16], [1; 16]));
        assert_eq!((reply.src_port, reply.dst_port), (80, 40_000));
        assert_eq!(reply.reversed(), key);
    }

    #[test]
    fn both_ends_of_a_flow_are_tracked_under_one_key_and_its_entry_gives_the_first_back() {
        let out = out_of_the_pod();
        let into = out.reversed();
        assert_eq!(out.tracked(), into, "keyed as a packet into the pod has it");
        assert_eq!(into.tracked(), into);
        let mut entry = CtEntry {
            created_ns: 0,
            last_seen_ns: 0,
            packets: 1,
            bytes: 60,
            revision: 1,
            rule_id: 0,
            verdict: 1,
            reason: 0,
            tcp_flags: 0x02,
            direction: Direction::Egress as u8,
            first_len: 60,
            endpoint: 1,
        };
        assert_eq!(out.tracked().first_of(&entry), out);
        entry.direction = Direction::Ingress as u8;
        assert_eq!(into.tracked().first_of(&entry), into);
    }
}
