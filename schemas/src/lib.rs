//! Every type that crosses the tollgate kernel/user boundary, defined once.
//!
//! Data flows through these types like this:
//!
//! 1. The enforcer's compiler turns Kubernetes objects into [`EndpointState`] values (keyed by
//!    [`EndpointKey`]), peer identities ([`PeerKey`] → [`PeerIdentity`]), policy entries
//!    ([`PolicyKey`] → [`PolicyEntry`]) and rule sets ([`PolicyValue`]); the map sync writes
//!    them into the maps named in [`map_names`].
//! 2. The probe (`probe/`, TC programs on each pod's host-side veth) reads them for every packet,
//!    keeps per-flow state in [`FlowKey`] → [`CtEntry`] / [`DenyEntry`] and fragment state in
//!    [`FragKey`] → [`FragEntry`], counts verdicts in [`Counter`] slots, and writes one
//!    [`FlowEvent`] per flow decision into the ring buffer.
//! 3. Userspace reads the events and names the rule through [`FlowEvent::rule_id`]; the
//!    collector turns them into flow records, whose columns [`record::COLUMNS`] defines.
//!
//! Conventions for every field below:
//! - Addresses are 16 bytes in network byte order. IPv4 addresses are stored IPv4-mapped
//!   (`::ffff:a.b.c.d`, RFC 4291 §2.5.5.2), so one map serves both families.
//! - Ports are in host byte order. Timestamps are nanoseconds of `CLOCK_MONOTONIC` as of the
//!   kernel's last tick (`bpf_ktime_get_coarse_ns`: cheap on every packet, exact to the tick);
//!   userspace converts them to wall-clock time.
//! - Enumerations travel as raw `u8`: the kernel writes the discriminant, userspace converts it
//!   with `from_raw`, which refuses unknown values instead of trusting them.
//! - No `bool` and no implicit padding: every gap is an explicit `_pad` field that must be zero.

#![no_std]

#[cfg(feature = "user")]
extern crate alloc;

pub mod addr;
#[cfg(feature = "user")]
pub mod athena;
mod conntrack;
mod event;
mod policy;
pub mod record;
#[cfg(feature = "user")]
pub mod rule;

pub use conntrack::{CtEntry, DenyEntry, FlowKey, FragEntry, FragKey};
pub use event::{Direction, FLOW_EVENT_VERSION, FlowEvent, Reason, Verdict};
pub use policy::{
    ANY_PROTOCOL, Config, Counter, EndpointKey, EndpointState, MAX_PORT_RULES, NodeAddr,
    PeerIdentity, PeerKey, PolicyEntry, PolicyKey, PolicyValue, PortRule, config_flags,
    endpoint_flags, port_action, rule_tier,
};

/// IANA protocol numbers the probe understands at layer 4.
pub mod proto {
    /// ICMP for IPv4.
    pub const ICMP: u8 = 1;
    /// TCP.
    pub const TCP: u8 = 6;
    /// UDP.
    pub const UDP: u8 = 17;
    /// ICMPv6.
    pub const ICMPV6: u8 = 58;
    /// SCTP.
    pub const SCTP: u8 = 132;
}

/// Names of the probe's maps, used by the eBPF statics and by userspace lookups alike.
///
/// BPF object names are at most 15 bytes.
pub mod map_names {
    /// Hash map: [`crate::EndpointKey`] → [`crate::EndpointState`].
    pub const ENDPOINTS: &str = "TG_ENDPOINTS";
    /// LPM trie, node-wide: [`crate::PeerKey`] → [`crate::PeerIdentity`].
    pub const PEERS: &str = "TG_PEERS";
    /// Hash map (not preallocated): [`crate::PolicyKey`] → [`crate::PolicyEntry`].
    pub const POLICY: &str = "TG_POLICY";
    /// Array: rule-set id → [`crate::PolicyValue`]; index 0 stays empty.
    pub const RULESETS: &str = "TG_RULESETS";
    /// LRU hash: [`crate::FlowKey`] → [`crate::CtEntry`], the flows that passed.
    pub const CONNTRACK: &str = "TG_CONNTRACK";
    /// LRU hash: [`crate::FlowKey`] → [`crate::DenyEntry`], the denied flows being deduplicated.
    pub const DENIES: &str = "TG_DENIES";
    /// LRU hash: [`crate::FragKey`] → [`crate::FragEntry`], verdicts of fragmented datagrams.
    pub const FRAGS: &str = "TG_FRAGS";
    /// Array with one [`crate::Config`] at index 0.
    pub const CONFIG: &str = "TG_CONFIG";
    /// Per-CPU array of `u64`, indexed by [`crate::Counter`].
    pub const COUNTERS: &str = "TG_COUNTERS";
    /// Ring buffer of [`crate::FlowEvent`].
    pub const EVENTS: &str = "TG_EVENTS";
    /// Hash map: [`crate::EndpointKey`] (an address of the node itself) → [`crate::NodeAddr`]:
    /// traffic from these addresses passes ingress policy (reason `from-node`).
    pub const NODE_ADDRS: &str = "TG_NODE_ADDRS";
    /// Array of `u64`: per (interface, direction) slot, when policy last denied one of its
    /// flows (the probe's clock). Written and read by the probe; userspace only clears it.
    pub const DENY_HINTS: &str = "TG_DENY_HINTS";
    /// Array of `u64`, indexed by endpoint id: the endpoint's revision while every address of
    /// it is programmed with that revision and none has left it since, 0 otherwise. A tracked
    /// or denied flow whose entry holds this revision is decided without looking the endpoint
    /// up. Written by userspace in step with [`ENDPOINTS`].
    pub const REVISIONS: &str = "TG_REVISIONS";
}

/// Capacities of the probe's maps (`docs/datapath.md`, "Map sizes", says why each and what it
/// costs). The policy maps are sized for a 100,000-pod dual-stack cluster with 250 pods on the
/// node; the loader may set smaller ones (tests), and the compiler fits its output to them.
pub mod map_sizes {
    /// Pod addresses on one node (a dual-stack pod has two).
    pub const ENDPOINTS: u32 = 8192;
    /// Slots of the revisions array: endpoint ids go up to twice the endpoints (an id of a
    /// removed endpoint is reused only by the compilation after), so this is what the loader
    /// creates for [`ENDPOINTS`]; an id past it is decided with the endpoint's lookup.
    pub const REVISIONS: u32 = 2 * ENDPOINTS;
    /// Peer prefixes: every pod address of the cluster, every ClusterIP, every ipBlock prefix.
    pub const PEERS: u32 = 524_288;
    /// (policy set, peer identity) entries over the node's endpoints.
    pub const POLICY: u32 = 1_048_576;
    /// Distinct rule sets, the empty one at index 0 included.
    pub const RULESETS: u32 = 8192;
    /// Tracked flows (LRU: the oldest are evicted first).
    pub const CONNTRACK: u32 = 262_144;
    /// Denied flows being deduplicated (LRU).
    pub const DENIES: u32 = 65_536;
    /// Fragmented datagrams in flight (LRU).
    pub const FRAGS: u32 = 8192;
    /// Addresses of the node itself (every ENI's, both families).
    pub const NODE_ADDRS: u32 = 256;
    /// Slots of the deny hints (a power of two): one per (interface, direction) of 2,048
    /// consecutive interface indexes, shared beyond.
    pub const DENY_HINTS: u32 = 4096;
    /// Ring buffer size in bytes (power of two, multiple of the page size).
    pub const EVENTS_BYTES: u32 = 4 << 20;
}

/// Program names as they appear in the object file.
pub mod program_names {
    /// Attached to the host-side veth's TC ingress hook: packets leaving the pod (its egress).
    pub const FROM_POD: &str = "from_pod";
    /// Attached to the host-side veth's TC egress hook: packets entering the pod (its ingress).
    pub const TO_POD: &str = "to_pod";
    /// Passes every packet and does nothing else; only benchmarks load it. `bench datapath`
    /// runs it under the same harness as the others: what it measures is the harness's own
    /// cost. `bench veth` attaches it to both hooks of the pods' veths: what the hooks cost.
    pub const FLOOR: &str = "floor";
    /// Writes `jiffies` and `CLOCK_MONOTONIC` as of the last tick into the packet; never
    /// attached. The loader runs it once to calibrate the probe's clock
    /// ([`crate::Config::clock_offset_ns`]).
    pub const CLOCK: &str = "clock";
}

/// Implements `aya::Pod` for the listed types when the `user` feature is on.
macro_rules! user_pod {
    ($($t:ty),+ $(,)?) => {
        $(
            // SAFETY: the type is `#[repr(C)]`, `Copy`, made of integers and byte arrays only,
            // with every padding byte written out as a field (checked by the layout assertions).
            #[cfg(feature = "user")]
            unsafe impl aya::Pod for $t {}
        )+
    };
}
pub(crate) use user_pod;
