//! The flow event: one record per flow decision, written by the probe into the ring buffer.

use core::mem::{offset_of, size_of};
use core::net::IpAddr;

use crate::{CtEntry, DenyEntry, FlowKey, addr};

/// Layout version of [`FlowEvent`]; bumped whenever a field changes meaning or position.
pub const FLOW_EVENT_VERSION: u16 = 1;

/// Which way a packet travels, seen from the pod that owns the endpoint.
#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    /// Into the pod (the host-side veth's TC egress hook).
    Ingress = 1,
    /// Out of the pod (the host-side veth's TC ingress hook).
    Egress = 2,
}

impl Direction {
    /// The direction a raw byte names, if any.
    pub const fn from_raw(raw: u8) -> Option<Self> {
        match raw {
            1 => Some(Self::Ingress),
            2 => Some(Self::Egress),
            _ => None,
        }
    }

    /// The other direction: where a reply to this packet travels.
    pub const fn reverse(self) -> Self {
        match self {
            Self::Ingress => Self::Egress,
            Self::Egress => Self::Ingress,
        }
    }

    /// Lower-case name, as used in output and in the NetworkPolicy API (`ingress`, `egress`).
    pub const fn name(self) -> &'static str {
        match self {
            Self::Ingress => "ingress",
            Self::Egress => "egress",
        }
    }
}

/// What the probe did with a packet.
#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// The packet passed.
    Allow = 1,
    /// The packet was dropped.
    Deny = 2,
    /// Policy would have dropped the packet, but the endpoint is in audit mode: it passed.
    AuditDeny = 3,
}

impl Verdict {
    /// The verdict a raw byte names, if any.
    pub const fn from_raw(raw: u8) -> Option<Self> {
        match raw {
            1 => Some(Self::Allow),
            2 => Some(Self::Deny),
            3 => Some(Self::AuditDeny),
            _ => None,
        }
    }

    /// Lower-case name (`allow`, `deny`, `audit-deny`).
    pub const fn name(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
            Self::AuditDeny => "audit-deny",
        }
    }

    /// Whether the packet passed.
    pub const fn passes(self) -> bool {
        matches!(self, Self::Allow | Self::AuditDeny)
    }
}

/// Why the probe reached its verdict.
#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// A policy rule allowed the flow; [`FlowEvent::rule_id`] names it.
    AllowedByRule = 1,
    /// The packet belongs to a flow already allowed in this direction (conntrack hit).
    Established = 2,
    /// The packet answers a flow allowed in the other direction (conntrack reverse hit).
    Reply = 3,
    /// No policy selects the pod for this direction, so the pod is not isolated.
    NotSelected = 4,
    /// Policies isolate the pod for this direction and none of their rules matched.
    IsolatedNoMatch = 5,
    /// The endpoint is known but its rules are not programmed yet: denied, never allowed.
    NotProgrammed = 6,
    /// The pod-side address is not a known endpoint (denied in strict mode).
    UnknownEndpoint = 7,
    /// The pod-side address belongs to an endpoint on another interface (spoofed source).
    Spoofed = 8,
    /// A non-first fragment whose first fragment was never seen: its ports are unknown.
    Fragment = 9,
    /// Truncated or unparseable headers.
    Malformed = 10,
    /// An ICMP error (unreachable, packet too big, time exceeded, parameter problem) about a
    /// packet of a tracked flow of this endpoint: passes like the flow's own packets.
    Related = 11,
    /// The destination is a Service's ClusterIP and policy allows only some of its ready
    /// backends on that port: denied, since kube-proxy could pick a denied one.
    ServiceBackendsDenied = 12,
    /// The source is one of the node's own addresses (kubelet probes, node agents): the
    /// NetworkPolicy API exempts it from ingress policy.
    FromNode = 13,
    /// A ClusterNetworkPolicy's Deny rule matched (or a rule it could not read, which fails
    /// closed); [`FlowEvent::rule_id`] names it.
    DeniedByRule = 14,
    /// ClusterNetworkPolicies select the pod for this direction, no NetworkPolicy isolates it,
    /// and no rule decided (none matched, or a Pass led past the last tier): the API's default
    /// allows.
    DefaultAllow = 15,
}

impl Reason {
    /// The reason a raw byte names, if any.
    pub const fn from_raw(raw: u8) -> Option<Self> {
        match raw {
            1 => Some(Self::AllowedByRule),
            2 => Some(Self::Established),
            3 => Some(Self::Reply),
            4 => Some(Self::NotSelected),
            5 => Some(Self::IsolatedNoMatch),
            6 => Some(Self::NotProgrammed),
            7 => Some(Self::UnknownEndpoint),
            8 => Some(Self::Spoofed),
            9 => Some(Self::Fragment),
            10 => Some(Self::Malformed),
            11 => Some(Self::Related),
            12 => Some(Self::ServiceBackendsDenied),
            13 => Some(Self::FromNode),
            14 => Some(Self::DeniedByRule),
            15 => Some(Self::DefaultAllow),
            _ => None,
        }
    }

    /// Kebab-case name, as used in output and in flow records.
    pub const fn name(self) -> &'static str {
        match self {
            Self::AllowedByRule => "allowed-by-rule",
            Self::Established => "established",
            Self::Reply => "reply",
            Self::NotSelected => "no-policy-selects-pod",
            Self::IsolatedNoMatch => "isolated-no-rule-matched",
            Self::NotProgrammed => "endpoint-not-programmed",
            Self::UnknownEndpoint => "unknown-endpoint",
            Self::Spoofed => "spoofed-source",
            Self::Fragment => "unknown-fragment",
            Self::Malformed => "malformed",
            Self::Related => "related",
            Self::ServiceBackendsDenied => "service-backends-denied",
            Self::FromNode => "from-node",
            Self::DeniedByRule => "denied-by-rule",
            Self::DefaultAllow => "default-allow",
        }
    }
}

/// One flow decision, as the probe writes it into the ring buffer.
///
/// Allowed flows produce one event when their first packet is decided; established and reply
/// packets produce none. Denied flows produce one event on the first packet and then at most one
/// per report interval ([`crate::Config::deny_report_interval_ns`]), carrying the packets and
/// bytes denied since the previous event.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowEvent {
    /// Layout version, [`FLOW_EVENT_VERSION`].
    pub version: u16,
    /// Address family: 4 or 6.
    pub family: u8,
    /// IANA protocol number of the layer-4 header (after IPv6 extension headers).
    pub protocol: u8,
    /// [`Direction`] of the packet, seen from the endpoint's pod.
    pub direction: u8,
    /// [`Verdict`].
    pub verdict: u8,
    /// [`Reason`].
    pub reason: u8,
    /// TCP flags of the packet that produced the event (FIN=0x01 … CWR=0x80); 0 for non-TCP.
    pub tcp_flags: u8,
    /// When the event was produced, ns of `CLOCK_MONOTONIC` (as of the last tick).
    pub ts_ns: u64,
    /// Interface index of the host-side veth the packet crossed.
    pub ifindex: u32,
    /// Endpoint id ([`crate::EndpointState::id`]) whose policy decided; 0 when none is known.
    pub endpoint: u32,
    /// Compiled rule that decided the flow ([`Reason::AllowedByRule`],
    /// [`Reason::DeniedByRule`], [`Reason::ServiceBackendsDenied`]); 0 otherwise.
    pub rule_id: u32,
    /// Source port (host byte order); ICMP echo identifier for ICMP echo; 0 otherwise.
    pub src_port: u16,
    /// Destination port (host byte order); ICMP echo identifier for ICMP echo; 0 otherwise.
    pub dst_port: u16,
    /// Source address (16-byte form, network byte order).
    pub src_addr: [u8; 16],
    /// Destination address (16-byte form, network byte order).
    pub dst_addr: [u8; 16],
    /// Packets this event accounts for (1 for a new allowed flow; the deduplicated count for
    /// denied flows).
    pub packets: u64,
    /// Bytes this event accounts for (skb length, from the link-layer header on).
    pub bytes: u64,
    /// ICMP or ICMPv6 type; 0 for other protocols.
    pub icmp_type: u8,
    /// ICMP or ICMPv6 code; 0 for other protocols.
    pub icmp_code: u8,
    /// Zero.
    pub _pad: [u8; 6],
}

const _: () = {
    assert!(size_of::<FlowEvent>() == 88);
    assert!(offset_of!(FlowEvent, version) == 0);
    assert!(offset_of!(FlowEvent, family) == 2);
    assert!(offset_of!(FlowEvent, protocol) == 3);
    assert!(offset_of!(FlowEvent, direction) == 4);
    assert!(offset_of!(FlowEvent, verdict) == 5);
    assert!(offset_of!(FlowEvent, reason) == 6);
    assert!(offset_of!(FlowEvent, tcp_flags) == 7);
    assert!(offset_of!(FlowEvent, ts_ns) == 8);
    assert!(offset_of!(FlowEvent, ifindex) == 16);
    assert!(offset_of!(FlowEvent, endpoint) == 20);
    assert!(offset_of!(FlowEvent, rule_id) == 24);
    assert!(offset_of!(FlowEvent, src_port) == 28);
    assert!(offset_of!(FlowEvent, dst_port) == 30);
    assert!(offset_of!(FlowEvent, src_addr) == 32);
    assert!(offset_of!(FlowEvent, dst_addr) == 48);
    assert!(offset_of!(FlowEvent, packets) == 64);
    assert!(offset_of!(FlowEvent, bytes) == 72);
    assert!(offset_of!(FlowEvent, icmp_type) == 80);
    assert!(offset_of!(FlowEvent, icmp_code) == 81);
    assert!(offset_of!(FlowEvent, _pad) == 82);
};

/// Events userspace makes itself, for what the probe counted in a map entry after a flow's
/// decision event (it writes no event for those packets): the only two kinds of event that do
/// not come from the ring buffer, made here so that they are made once.
///
/// Both name the flow as its key does (interface, direction and addresses of its first packet)
/// and the endpoint as its entry does, and carry no ICMP type or code.
impl FlowEvent {
    /// What deny entry `deny` of flow `key` counted since its last event, reported at `now_ns`
    /// (ns of `CLOCK_MONOTONIC`): verdict deny, the entry's last reason, rule and TCP flags.
    pub const fn residual_deny(key: &FlowKey, deny: &DenyEntry, now_ns: u64) -> Self {
        Self {
            verdict: Verdict::Deny as u8,
            reason: deny.reason,
            tcp_flags: deny.tcp_flags,
            ts_ns: now_ns,
            rule_id: deny.rule_id,
            packets: deny.packets,
            bytes: deny.bytes,
            ..Self::of_flow(key, deny.endpoint)
        }
    }

    /// `packets` and `bytes` conntrack entry `entry` of flow `key` counted (after the flow's
    /// decision), with the flow's own verdict, reason, rule and TCP flags, stamped with the
    /// entry's last packet.
    pub const fn tracked(key: &FlowKey, entry: &CtEntry, packets: u64, bytes: u64) -> Self {
        Self {
            verdict: entry.verdict,
            reason: entry.reason,
            tcp_flags: entry.tcp_flags,
            ts_ns: entry.last_seen_ns,
            rule_id: entry.rule_id,
            packets,
            bytes,
            ..Self::of_flow(key, entry.endpoint)
        }
    }

    /// An event of flow `key` of `endpoint` that says nothing else yet.
    const fn of_flow(key: &FlowKey, endpoint: u32) -> Self {
        let family = match addr::from_bytes(key.src_addr) {
            IpAddr::V4(_) => 4,
            IpAddr::V6(_) => 6,
        };
        Self {
            version: FLOW_EVENT_VERSION,
            family,
            protocol: key.protocol,
            direction: key.direction,
            verdict: 0,
            reason: 0,
            tcp_flags: 0,
            ts_ns: 0,
            ifindex: key.ifindex,
            endpoint,
            rule_id: 0,
            src_port: key.src_port,
            dst_port: key.dst_port,
            src_addr: key.src_addr,
            dst_addr: key.dst_addr,
            packets: 0,
            bytes: 0,
            icmp_type: 0,
            icmp_code: 0,
            _pad: [0; 6],
        }
    }
}

crate::user_pod!(FlowEvent);
