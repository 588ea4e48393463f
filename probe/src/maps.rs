//! The probe's maps. Names, sizes and every key and value type come from `tollgate-schemas`,
//! the single definition userspace uses too.

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
};
use tollgate_schemas::{
    Config, Counter, CtEntry, DenyEntry, EndpointKey, EndpointState, FlowKey, FragEntry, FragKey,
    NodeAddr, PeerIdentity, PeerKey, PolicyEntry, PolicyKey, PolicyValue, map_sizes,
};

use crate::parse::Packet;

/// Pod address → endpoint. Not preallocated, so that the probe may read a value in place
/// (`decide::endpoint`): an update then never rewrites an element a running program reads.
#[map(name = "TG_ENDPOINTS")]
pub static ENDPOINTS: HashMap<EndpointKey, EndpointState> =
    HashMap::with_max_entries(map_sizes::ENDPOINTS, BPF_F_NO_PREALLOC);

/// Endpoint id → its revision while every address of it is programmed with that revision and
/// none has left it since (`enforcer/src/revision_slots.rs`), else 0: a known flow's entry is
/// checked against it (`decide::known`), so that the packet needs no lookup of its endpoint.
/// An array lookup is inlined by the verifier, where a hash lookup is a call (about 30 ns of an
/// established packet's 80, measured). Userspace writes a slot after the endpoint and clears
/// it before, so the slot never holds a revision the endpoint map does not.
#[map(name = "TG_REVISIONS")]
pub static REVISIONS: Array<u64> = Array::with_max_entries(map_sizes::REVISIONS, 0);

/// Node-wide peer trie. The kernel requires BPF_F_NO_PREALLOC of an LPM trie; aya-ebpf's
/// `LpmTrie` constructors add it themselves, so the flags given here stay 0.
#[map(name = "TG_PEERS")]
pub static PEERS: LpmTrie<PeerKey, PeerIdentity> = LpmTrie::with_max_entries(map_sizes::PEERS, 0);

/// (policy set, peer identity) → rule set. Not preallocated: sized for the largest node, it
/// holds far fewer entries on most, and a preallocated hash would take the memory of every
/// slot at load.
#[map(name = "TG_POLICY")]
pub static POLICY: HashMap<PolicyKey, PolicyEntry> =
    HashMap::with_max_entries(map_sizes::POLICY, BPF_F_NO_PREALLOC);

/// Rule-set id → rule set; index 0 is never written, so it stays the empty set.
#[map(name = "TG_RULESETS")]
pub static RULESETS: Array<PolicyValue> = Array::with_max_entries(map_sizes::RULESETS, 0);

#[map(name = "TG_NODE_ADDRS")]
pub static NODE_ADDRS: HashMap<EndpointKey, NodeAddr> =
    HashMap::with_max_entries(map_sizes::NODE_ADDRS, 0);

#[map(name = "TG_CONNTRACK")]
pub static CONNTRACK: LruHashMap<FlowKey, CtEntry> =
    LruHashMap::with_max_entries(map_sizes::CONNTRACK, 0);

#[map(name = "TG_DENIES")]
pub static DENIES: LruHashMap<FlowKey, DenyEntry> =
    LruHashMap::with_max_entries(map_sizes::DENIES, 0);

/// When policy last denied a flow of an (interface, direction), in slots shared by interfaces
/// beyond the array's size (a shared slot holds the later time). A deny entry the probe may
/// drop on (`flow::denied_again`) reported within the report interval, when its slot was
/// written: the probe looks the entry up only while the slot is that recent, so new flows of
/// pods that policy did not deny lately skip the lookup. Not pinned: a new load starts
/// without hints, and decides by policy until it has some.
#[map(name = "TG_DENY_HINTS")]
pub static DENY_HINTS: Array<u64> = Array::with_max_entries(map_sizes::DENY_HINTS, 0);

#[map(name = "TG_FRAGS")]
pub static FRAGS: LruHashMap<FragKey, FragEntry> =
    LruHashMap::with_max_entries(map_sizes::FRAGS, 0);

#[map(name = "TG_CONFIG")]
pub static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

#[map(name = "TG_COUNTERS")]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::COUNT, 0);

#[map(name = "TG_EVENTS")]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(map_sizes::EVENTS_BYTES, 0);

/// Per-CPU room for the packet being decided, so it does not take 80 bytes of the 512-byte BPF
/// stack. Kernel-only: userspace never reads it. Safe to share per CPU because TC programs run
/// with bottom halves disabled, so two runs never interleave on one CPU.
#[map(name = "TG_SCRATCH")]
pub static SCRATCH: PerCpuArray<Packet> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU room for a header that `bpf_skb_load_bytes` copies out of the skb's paged data
/// (`parse::load`). The probe is built with misaligned loads allowed, and LLVM reads such a
/// header with them: the verifier accepts those from a map value, as from the packet, but
/// not from the stack. Kernel-only, like [`SCRATCH`].
#[map(name = "TG_HEADER")]
pub static HEADER: PerCpuArray<[u64; HEADER_WORDS]> = PerCpuArray::with_max_entries(1, 0);

/// The room of [`HEADER`], in 8-byte words: the longest header read at once is IPv4's 20
/// bytes.
pub const HEADER_WORDS: usize = 3;

/// Adds one to a per-CPU counter.
#[inline(always)]
pub fn count(counter: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot of this CPU; the program is not preempted while it runs.
        unsafe { *slot += 1 };
    }
}
