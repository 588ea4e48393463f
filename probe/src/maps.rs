//! The probe's maps. Names, sizes and every key and value type come from `tollgate-schemas`,
//! the single definition userspace uses too.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
};
use tollgate_schemas::{
    Config, Counter, CtEntry, DenyEntry, EndpointKey, EndpointState, FlowKey, FragEntry, FragKey,
    NodeAddr, PolicyKey, PolicyValue, map_sizes,
};

use crate::parse::Packet;

#[map(name = "TG_ENDPOINTS")]
pub static ENDPOINTS: HashMap<EndpointKey, EndpointState> =
    HashMap::with_max_entries(map_sizes::ENDPOINTS, 0);

#[map(name = "TG_INGRESS")]
pub static INGRESS: LpmTrie<PolicyKey, PolicyValue> =
    LpmTrie::with_max_entries(map_sizes::POLICY, 0);

#[map(name = "TG_EGRESS")]
pub static EGRESS: LpmTrie<PolicyKey, PolicyValue> =
    LpmTrie::with_max_entries(map_sizes::POLICY, 0);

#[map(name = "TG_NODE_ADDRS")]
pub static NODE_ADDRS: HashMap<EndpointKey, NodeAddr> =
    HashMap::with_max_entries(map_sizes::NODE_ADDRS, 0);

#[map(name = "TG_CONNTRACK")]
pub static CONNTRACK: LruHashMap<FlowKey, CtEntry> =
    LruHashMap::with_max_entries(map_sizes::CONNTRACK, 0);

#[map(name = "TG_DENIES")]
pub static DENIES: LruHashMap<FlowKey, DenyEntry> =
    LruHashMap::with_max_entries(map_sizes::DENIES, 0);

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

/// Adds one to a per-CPU counter.
#[inline(always)]
pub fn count(counter: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot of this CPU; the program is not preempted while it runs.
        unsafe { *slot += 1 };
    }
}
