//! Endpoint and policy state, written by the enforcer and read by the probe for every packet.
//!
//! A packet is decided for one endpoint (a pod address on this node) in one direction:
//! 1. [`EndpointKey`] (the pod-side address of the packet) → [`EndpointState`]: which endpoint,
//!    whether its rules are programmed, whether it is isolated in this direction, and the
//!    policy set that isolates it there.
//! 2. If isolated: the node-wide peer trie, keyed by [`PeerKey`] (the peer address), gives the
//!    [`PeerIdentity`] of the longest matching prefix: pods that every policy treats alike share
//!    one identity, and so do the addresses of one ipBlock region. Its size grows with the
//!    identities, not with pods × pods.
//! 3. The policy map, keyed by [`PolicyKey`] (policy set, peer identity), names the rule set
//!    ([`PolicyEntry`]); a ClusterIP's identity that has no entry there falls back to the
//!    identity of the address region around it ([`PeerIdentity::fallback`]).
//! 4. The rule-set array holds each distinct [`PolicyValue`] once. The first [`PortRule`]
//!    matching the packet's protocol and port decides, and names the rule.
//!
//! Policy tiers: a value lists its rules tier by tier in the order they apply (the Admin tier
//! of ClusterNetworkPolicies, then NetworkPolicies, then the Baseline tier), each with its
//! [`PortRule::tier`] and [`PortRule::action`]. A matching rule that passes
//! ([`port_action::PASS`]) skips the rest of its tier. What no rule decides is decided by the
//! endpoint's flags: denied where NetworkPolicies isolate the pod, else allowed (the API's
//! default).

use core::mem::{offset_of, size_of};

/// Endpoint flags ([`EndpointState::flags`]).
pub mod endpoint_flags {
    /// The endpoint's policy entries are written. Until it is set every packet is denied with
    /// [`crate::Reason::NotProgrammed`].
    pub const PROGRAMMED: u32 = 1 << 0;
    /// Some policy selects the pod for ingress: only what its rules allow may enter.
    pub const INGRESS_ISOLATED: u32 = 1 << 1;
    /// Some policy selects the pod for egress: only what its rules allow may leave.
    pub const EGRESS_ISOLATED: u32 = 1 << 2;
    /// Ingress denials are reported as audit-deny and pass.
    pub const INGRESS_AUDIT: u32 = 1 << 3;
    /// Egress denials are reported as audit-deny and pass.
    pub const EGRESS_AUDIT: u32 = 1 << 4;
    /// ClusterNetworkPolicies apply to the pod's ingress: its policy set is looked at even
    /// when it is not isolated; what no rule decides then passes unless it is isolated.
    pub const INGRESS_TIERED: u32 = 1 << 5;
    /// ClusterNetworkPolicies apply to the pod's egress (see [`INGRESS_TIERED`]).
    pub const EGRESS_TIERED: u32 = 1 << 6;

    use crate::Direction;

    /// The isolation flag of `direction`.
    pub const fn isolated(direction: Direction) -> u32 {
        match direction {
            Direction::Ingress => INGRESS_ISOLATED,
            Direction::Egress => EGRESS_ISOLATED,
        }
    }

    /// The audit flag of `direction`.
    pub const fn audit(direction: Direction) -> u32 {
        match direction {
            Direction::Ingress => INGRESS_AUDIT,
            Direction::Egress => EGRESS_AUDIT,
        }
    }

    /// The ClusterNetworkPolicy flag of `direction`.
    pub const fn tiered(direction: Direction) -> u32 {
        match direction {
            Direction::Ingress => INGRESS_TIERED,
            Direction::Egress => EGRESS_TIERED,
        }
    }
}

/// Global flags ([`Config::flags`]).
pub mod config_flags {
    /// `standard` mode: packets of addresses that are not endpoints pass instead of being
    /// denied. The default (flag clear) is `strict`.
    pub const ALLOW_UNKNOWN_ENDPOINTS: u32 = 1 << 0;
}

/// What a matching [`PortRule`] does ([`PortRule::action`]).
pub mod port_action {
    /// The rule allows the packet (reason [`crate::Reason::AllowedByRule`]).
    pub const ALLOW: u8 = 0;
    /// The peer is a Service's ClusterIP and policy allows only some of the Service's ready
    /// backends on this port: the packet is denied (reason
    /// [`crate::Reason::ServiceBackendsDenied`]), since kube-proxy may pick any backend.
    pub const DENY_SERVICE: u8 = 1;
    /// A ClusterNetworkPolicy's Deny rule: the packet is denied (reason
    /// [`crate::Reason::DeniedByRule`]), never in audit mode.
    pub const DENY: u8 = 2;
    /// A ClusterNetworkPolicy's Pass rule: the rest of its tier is skipped. The rule
    /// [`crate::PolicyValue::matching_rule`] returns only when no later rule decides: the
    /// endpoint's flags then decide, and the Pass is what the record names.
    pub const PASS: u8 = 3;
}

/// The tier of a [`PortRule`] ([`PortRule::tier`]); a value lists its rules in the order the
/// tiers apply: Admin, NetworkPolicy, Baseline. Only the order counts in the datapath: a Pass
/// skips the rules that follow it in its own tier.
pub mod rule_tier {
    /// A NetworkPolicy's rule (0: the values written before tiers existed read alike).
    pub const NETWORK_POLICY: u8 = 0;
    /// A ClusterNetworkPolicy of the Admin tier.
    pub const ADMIN: u8 = 1;
    /// A ClusterNetworkPolicy of the Baseline tier.
    pub const BASELINE: u8 = 2;
}

/// [`PortRule::protocol`] value that matches every protocol and port: a rule with no `ports`.
pub const ANY_PROTOCOL: u8 = 0;

/// How many port rules one [`PolicyValue`] holds.
pub const MAX_PORT_RULES: usize = 32;

/// Key of the endpoint map: the pod-side address of a packet. Transparent over the address,
/// so a borrowed address is a borrowed key ([`EndpointKey::of`]).
#[repr(transparent)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EndpointKey {
    /// Pod address (16-byte form, network byte order).
    pub addr: [u8; 16],
}

impl EndpointKey {
    /// `addr` as a key, without a copy (the probe's stack is 512 bytes).
    #[inline(always)]
    pub fn of(addr: &[u8; 16]) -> &EndpointKey {
        // SAFETY: `EndpointKey` is `repr(transparent)` over `[u8; 16]`: same size, alignment
        // and validity, so the reference may be reinterpreted.
        unsafe { &*(addr as *const [u8; 16]).cast::<EndpointKey>() }
    }
}

/// One endpoint: a pod address whose traffic crosses a veth this node's probe is attached to.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EndpointState {
    /// Endpoint id, the first field of [`PolicyKey`] and [`crate::FlowKey`]; never 0. The
    /// addresses of a dual-stack pod share one id.
    pub id: u32,
    /// Interface index of the pod's host-side veth. A packet of this address on any other
    /// interface is denied as spoofed.
    pub ifindex: u32,
    /// [`endpoint_flags`].
    pub flags: u32,
    /// Policy set of the ingress direction ([`PolicyKey::set`]); 0 when not isolated.
    pub ingress_set: u32,
    /// Policy set of the egress direction; 0 when not isolated.
    pub egress_set: u32,
    /// Zero.
    pub _pad: u32,
    /// Revision of the endpoint's compiled policy, a counter that never repeats: a tracked
    /// flow that was decided under another revision is decided again before it may pass.
    pub revision: u64,
}

impl EndpointState {
    /// The policy set of `direction` (0: none).
    #[inline(always)]
    pub fn set(&self, direction: crate::Direction) -> u32 {
        match direction {
            crate::Direction::Ingress => self.ingress_set,
            crate::Direction::Egress => self.egress_set,
        }
    }
}

/// Key of the node-wide peer trie: a peer address or prefix. The trie's prefix length is that
/// of the prefix in the 16-byte address form (an IPv4 /24 is 96 + 24 = 120).
#[repr(transparent)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerKey {
    /// Address or prefix (16-byte form, network byte order), host bits zero.
    pub addr: [u8; 16],
}

/// Value of the peer trie: who the addresses under a prefix are, as policy sees them.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct PeerIdentity {
    /// Peer identity; never 0.
    pub id: u32,
    /// Identity to look up when a policy set has no entry for `id` (0: none). A ClusterIP has
    /// an identity of its own, with entries only where its backends decide otherwise than its
    /// address would; elsewhere it is what the addresses around it are.
    pub fallback: u32,
}

/// Key of the policy map: one policy set (what isolates some endpoints in one direction) and
/// one peer identity.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyKey {
    /// Policy set id ([`EndpointState::ingress_set`] or `egress_set`); never 0.
    pub set: u32,
    /// Peer identity ([`PeerIdentity::id`]).
    pub peer: u32,
}

/// Value of the policy map: the rule set that applies.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct PolicyEntry {
    /// Index into the rule-set array. Rule set 0 is always empty: an entry naming it allows
    /// nothing (it stops the fallback of a ClusterIP whose backends are all denied).
    pub ruleset: u32,
}

/// A protocol and port range that a compiled rule decides.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct PortRule {
    /// Compiled rule id; userspace maps it to the NetworkPolicy and the rule's index.
    pub rule_id: u32,
    /// First port allowed (host byte order).
    pub port_lo: u16,
    /// Last port allowed, inclusive (host byte order).
    pub port_hi: u16,
    /// IANA protocol number, or [`ANY_PROTOCOL`] for a rule without ports: then every protocol
    /// and port matches, ICMP included.
    pub protocol: u8,
    /// What the rule does when it matches: [`port_action`].
    pub action: u8,
    /// Which tier the rule belongs to: [`rule_tier`].
    pub tier: u8,
    /// Zero.
    pub _pad: u8,
}

impl PortRule {
    /// Whether the rule covers `protocol` to `port`.
    #[inline(always)]
    pub fn covers(&self, protocol: u8, port: u16) -> bool {
        self.protocol == ANY_PROTOCOL
            || (self.protocol == protocol && self.port_lo <= port && port <= self.port_hi)
    }
}

/// Everything one policy set decides towards or from one peer identity.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PolicyValue {
    /// How many entries of `rules` are in use.
    pub count: u32,
    /// Port rules, in the order they are tried; entries past `count` are zero.
    pub rules: [PortRule; MAX_PORT_RULES],
}

impl PolicyValue {
    /// An empty value: nothing allowed.
    pub const EMPTY: Self = Self {
        count: 0,
        rules: [PortRule {
            rule_id: 0,
            port_lo: 0,
            port_hi: 0,
            protocol: 0,
            action: 0,
            tier: 0,
            _pad: 0,
        }; MAX_PORT_RULES],
    };

    /// The rule that decides `protocol` to `port`, if any: the first that covers them and
    /// does not pass; a covering Pass rule ([`port_action::PASS`]) skips the rules after it of
    /// its tier. The rule's [`PortRule::action`] says what it does; `None` leaves the decision
    /// to the endpoint's flags. `passed` is set to the id of the last covering Pass rule (what
    /// a decision left to the flags names), or 0.
    ///
    /// This is the matching the probe runs in the kernel and the userspace model runs in
    /// `verify`: one definition, so both decide alike. The loop is bounded by
    /// [`MAX_PORT_RULES`] for the verifier.
    #[inline(always)]
    pub fn matching_rule(&self, protocol: u8, port: u16, passed: &mut u32) -> Option<&PortRule> {
        let count = self.count as usize;
        // No rule has this tier: nothing is skipped until a Pass matches. (A rule id, not an
        // index, is kept of the Pass: a value read from the map, which the verifier does not
        // tell apart iteration by iteration.)
        let mut skipped = u8::MAX;
        *passed = 0;
        let mut i = 0;
        while i < MAX_PORT_RULES {
            if i >= count {
                return None;
            }
            let rule = &self.rules[i];
            if rule.covers(protocol, port) && rule.tier != skipped {
                if rule.action != port_action::PASS {
                    return Some(rule);
                }
                skipped = rule.tier;
                *passed = rule.rule_id;
            }
            i += 1;
        }
        None
    }
}

/// Value of the node-address map: an address of the node itself, whose traffic to a local pod
/// passes ingress policy.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NodeAddr {
    /// Zero; room for per-address flags.
    pub flags: u32,
}

/// Global settings, at index 0 of the config array. A zero field means its default.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Config {
    /// [`config_flags`].
    pub flags: u32,
    /// Zero.
    pub _pad: u32,
    /// Minimum time between two events of one denied flow, ns (default 5 s).
    pub deny_report_interval_ns: u64,
    /// Idle time after which a TCP flow is forgotten, ns (default 2 h; 10 s after FIN or RST).
    pub ct_tcp_timeout_ns: u64,
    /// Idle time after which a non-TCP flow is forgotten, ns (default 60 s).
    pub ct_other_timeout_ns: u64,
    /// The kernel's tick, ns (`TICK_NSEC`, 4 ms at `HZ=250`): with
    /// [`Config::clock_offset_ns`], how the probe turns `jiffies` into its clock. 0: not
    /// calibrated, the probe asks `bpf_ktime_get_coarse_ns` instead (the same clock, 20 ns
    /// slower). The loader sets both ([`Config::with_clock`]); a user's setting is replaced.
    pub clock_tick_ns: u64,
    /// `CLOCK_MONOTONIC` as of the last tick, less `jiffies × clock_tick_ns`, ns (wrapping:
    /// `jiffies` starts 5 minutes before it wraps).
    pub clock_offset_ns: u64,
}

impl Config {
    /// Default of [`Config::deny_report_interval_ns`].
    pub const DEFAULT_DENY_REPORT_INTERVAL_NS: u64 = 5_000_000_000;
    /// Default of [`Config::ct_tcp_timeout_ns`].
    pub const DEFAULT_CT_TCP_TIMEOUT_NS: u64 = 7_200_000_000_000;
    /// Idle timeout of a TCP flow after FIN or RST was seen, ns.
    pub const CT_TCP_CLOSING_TIMEOUT_NS: u64 = 10_000_000_000;
    /// Default of [`Config::ct_other_timeout_ns`].
    pub const DEFAULT_CT_OTHER_TIMEOUT_NS: u64 = 60_000_000_000;

    /// These settings with the probe's clock calibration.
    pub const fn with_clock(self, tick_ns: u64, offset_ns: u64) -> Self {
        Self {
            clock_tick_ns: tick_ns,
            clock_offset_ns: offset_ns,
            ..self
        }
    }

    /// The probe's clock at `jiffies` under this calibration, ns; `None` when not calibrated.
    pub const fn jiffies_ns(&self, jiffies: u64) -> Option<u64> {
        if self.clock_tick_ns == 0 {
            return None;
        }
        Some(
            jiffies
                .wrapping_mul(self.clock_tick_ns)
                .wrapping_add(self.clock_offset_ns),
        )
    }
}

/// Slots of the per-CPU counter array.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counter {
    /// Packets allowed (any reason).
    Allow = 0,
    /// Packets denied (any reason).
    Deny = 1,
    /// Packets that policy would deny, passed in audit mode.
    AuditDeny = 2,
    /// Flow events lost because the ring buffer had no room.
    RingbufReserveFailed = 3,
    /// Packets denied because their headers were truncated or unparseable.
    Malformed = 4,
    /// Non-IP packets and IPv6 neighbor discovery passed without a decision.
    Infrastructure = 5,
    /// Flow-state map updates that failed (conntrack, deny dedup, fragments).
    MapUpdateFailed = 6,
}

impl Counter {
    /// Number of slots.
    pub const COUNT: u32 = 7;

    /// Every counter, in slot order.
    pub const ALL: [Counter; Self::COUNT as usize] = [
        Self::Allow,
        Self::Deny,
        Self::AuditDeny,
        Self::RingbufReserveFailed,
        Self::Malformed,
        Self::Infrastructure,
        Self::MapUpdateFailed,
    ];

    /// Snake-case name, as used for metrics.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
            Self::AuditDeny => "audit_deny",
            Self::RingbufReserveFailed => "ringbuf_reserve_failed",
            Self::Malformed => "malformed",
            Self::Infrastructure => "infrastructure",
            Self::MapUpdateFailed => "map_update_failed",
        }
    }
}

const _: () = {
    assert!(size_of::<EndpointKey>() == 16);
    assert!(size_of::<EndpointState>() == 32);
    assert!(offset_of!(EndpointState, id) == 0);
    assert!(offset_of!(EndpointState, ifindex) == 4);
    assert!(offset_of!(EndpointState, flags) == 8);
    assert!(offset_of!(EndpointState, ingress_set) == 12);
    assert!(offset_of!(EndpointState, egress_set) == 16);
    assert!(offset_of!(EndpointState, revision) == 24);
    assert!(size_of::<PeerKey>() == 16);
    assert!(size_of::<PeerIdentity>() == 8);
    assert!(offset_of!(PeerIdentity, fallback) == 4);
    assert!(size_of::<PolicyKey>() == 8);
    assert!(offset_of!(PolicyKey, peer) == 4);
    assert!(size_of::<PolicyEntry>() == 4);
    assert!(size_of::<PortRule>() == 12);
    assert!(offset_of!(PortRule, rule_id) == 0);
    assert!(offset_of!(PortRule, port_lo) == 4);
    assert!(offset_of!(PortRule, port_hi) == 6);
    assert!(offset_of!(PortRule, protocol) == 8);
    assert!(offset_of!(PortRule, action) == 9);
    assert!(offset_of!(PortRule, tier) == 10);
    assert!(offset_of!(PortRule, _pad) == 11);
    assert!(size_of::<PolicyValue>() == 4 + 12 * MAX_PORT_RULES);
    assert!(offset_of!(PolicyValue, rules) == 4);
    assert!(size_of::<NodeAddr>() == 4);
    assert!(size_of::<Config>() == 48);
    assert!(offset_of!(Config, deny_report_interval_ns) == 8);
    assert!(offset_of!(Config, ct_tcp_timeout_ns) == 16);
    assert!(offset_of!(Config, ct_other_timeout_ns) == 24);
    assert!(offset_of!(Config, clock_tick_ns) == 32);
    assert!(offset_of!(Config, clock_offset_ns) == 40);
};

crate::user_pod!(
    EndpointKey,
    EndpointState,
    PeerKey,
    PeerIdentity,
    PolicyKey,
    PolicyEntry,
    PortRule,
    PolicyValue,
    NodeAddr,
    Config
);
