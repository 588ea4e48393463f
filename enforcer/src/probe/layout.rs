//! What the programs expect of each map they share with userspace, and loading with those maps
//! pinned.
//!
//! [`pinned_maps`] lists every shared map with its [`MapSpec`] (type, key and value sizes,
//! capacity, flags) at given capacities; [`map_layout_id`] hashes that list into the name of the
//! directory the agent pins them in, so an agent never reuses maps of another layout.
//! [`Probe::load_pinned`] checks each map found pinned against its spec before the programs bind
//! to it, and each map it creates after.

use std::path::{Path, PathBuf};

use aya::{
    EbpfLoader,
    maps::{MapInfo, MapType},
};
use tollgate_schemas::{
    Config, Counter, CtEntry, DenyEntry, EndpointKey, EndpointState, FlowKey, FragEntry, FragKey,
    NodeAddr, PeerIdentity, PeerKey, PolicyEntry, PolicyKey, PolicyValue, map_names, map_sizes,
};

use super::{PROBE_OBJECT, Probe, ProbeError};
use crate::desired::Capacity;

/// `BPF_F_NO_PREALLOC` of the kernel's uapi (`linux/bpf.h`): elements are allocated on insert
/// and freed after an RCU grace period.
const BPF_F_NO_PREALLOC: u32 = 1;

/// What the kernel knows of a map, as far as its programs depend on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapSpec {
    /// `bpf_map_type`.
    pub map_type: u32,
    /// Key size, bytes.
    pub key_size: u32,
    /// Value size, bytes.
    pub value_size: u32,
    /// Capacity (for the ring buffer: its size in bytes).
    pub max_entries: u32,
    /// `map_flags`: `BPF_F_NO_PREALLOC` for the peer trie (the kernel requires it of an LPM
    /// trie), the policy map (sized for the largest node) and the endpoint map (the programs
    /// read its values in place), else 0.
    pub flags: u32,
}

impl std::fmt::Display for MapSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "type {} key {} B value {} B max {} flags {:#x}",
            self.map_type, self.key_size, self.value_size, self.max_entries, self.flags
        )
    }
}

impl MapSpec {
    const fn of<K, V>(map_type: MapType, max_entries: u32) -> Self {
        Self {
            map_type: map_type as u32,
            key_size: size_of::<K>() as u32,
            value_size: size_of::<V>() as u32,
            max_entries,
            flags: 0,
        }
    }

    /// The map is created with `BPF_F_NO_PREALLOC`.
    const fn not_preallocated(self) -> Self {
        Self {
            flags: BPF_F_NO_PREALLOC,
            ..self
        }
    }

    fn from_info(info: &MapInfo) -> Self {
        Self {
            map_type: info.map_type().map_or(u32::MAX, |t| t as u32),
            key_size: info.key_size(),
            value_size: info.value_size(),
            max_entries: info.max_entries(),
            flags: info.map_flags(),
        }
    }
}

/// Bump when a map's key or value changes meaning without changing size: maps pinned by an
/// agent of another format are then never reused (see [`map_layout_id`]).
pub const MAP_FORMAT: u32 = 3;

/// The capacities of [`tollgate_schemas::map_sizes`], what `Capacity::default()` holds, as a
/// constant.
pub(super) const DEFAULT_CAPACITY: Capacity = Capacity {
    endpoints: map_sizes::ENDPOINTS,
    peers: map_sizes::PEERS,
    policy: map_sizes::POLICY,
    rulesets: map_sizes::RULESETS,
    node_addrs: map_sizes::NODE_ADDRS,
};

/// How many maps the programs share with userspace.
pub const SHARED_MAPS: usize = 12;

/// Every map the programs share with userspace, with what they expect of it, at the default
/// capacities: the maps [`Probe::load_pinned`] pins. See [`pinned_maps`].
pub const PINNED_MAPS: [(&str, MapSpec); SHARED_MAPS] = pinned_maps(&DEFAULT_CAPACITY);

/// Every map the programs share with userspace, with what they expect of it when the policy
/// maps are sized by `capacity`: the maps [`Probe::load_pinned_with`] pins. `TG_SCRATCH`,
/// `TG_HEADER` and `TG_DENY_HINTS` are left out: the programs' own (per-CPU room of one run;
/// when policy last denied, which a new load may start without), they are created anew by each
/// load. `TG_REVISIONS` is pinned: programs attached by an earlier load must see it change
/// with the endpoint map they share.
pub const fn pinned_maps(capacity: &Capacity) -> [(&'static str, MapSpec); SHARED_MAPS] {
    [
        (
            map_names::ENDPOINTS,
            MapSpec::of::<EndpointKey, EndpointState>(MapType::Hash, capacity.endpoints)
                .not_preallocated(),
        ),
        (
            map_names::NODE_ADDRS,
            MapSpec::of::<EndpointKey, NodeAddr>(MapType::Hash, capacity.node_addrs),
        ),
        (
            map_names::REVISIONS,
            MapSpec::of::<u32, u64>(MapType::Array, revision_slots(capacity)),
        ),
        (
            map_names::PEERS,
            MapSpec::of::<aya::maps::lpm_trie::Key<PeerKey>, PeerIdentity>(
                MapType::LpmTrie,
                capacity.peers,
            )
            .not_preallocated(),
        ),
        (
            map_names::POLICY,
            MapSpec::of::<PolicyKey, PolicyEntry>(MapType::Hash, capacity.policy)
                .not_preallocated(),
        ),
        (
            map_names::RULESETS,
            MapSpec::of::<u32, PolicyValue>(MapType::Array, capacity.rulesets),
        ),
        (
            map_names::CONNTRACK,
            MapSpec::of::<FlowKey, CtEntry>(MapType::LruHash, map_sizes::CONNTRACK),
        ),
        (
            map_names::DENIES,
            MapSpec::of::<FlowKey, DenyEntry>(MapType::LruHash, map_sizes::DENIES),
        ),
        (
            map_names::FRAGS,
            MapSpec::of::<FragKey, FragEntry>(MapType::LruHash, map_sizes::FRAGS),
        ),
        (
            map_names::CONFIG,
            MapSpec::of::<u32, Config>(MapType::Array, 1),
        ),
        (
            map_names::COUNTERS,
            MapSpec::of::<u32, u64>(MapType::PerCpuArray, Counter::COUNT),
        ),
        (
            map_names::EVENTS,
            MapSpec::of::<(), ()>(MapType::RingBuf, map_sizes::EVENTS_BYTES),
        ),
    ]
}

/// The maps whose capacity a [`Capacity`] sets, with it.
pub(super) fn sized_maps(capacity: &Capacity) -> [(&'static str, u32); 6] {
    [
        (map_names::ENDPOINTS, capacity.endpoints),
        (map_names::REVISIONS, revision_slots(capacity)),
        (map_names::PEERS, capacity.peers),
        (map_names::POLICY, capacity.policy),
        (map_names::RULESETS, capacity.rulesets),
        (map_names::NODE_ADDRS, capacity.node_addrs),
    ]
}

/// Slots of the revisions array for `capacity`: endpoint ids go up to twice the endpoints
/// ([`map_sizes::REVISIONS`]).
const fn revision_slots(capacity: &Capacity) -> u32 {
    capacity.endpoints.saturating_mul(2)
}

/// A name for the layout of [`PINNED_MAPS`] (and [`MAP_FORMAT`]): 16 hex digits of an FNV-1a
/// hash over every map's name and [`MapSpec`], at the default capacities. Maps pinned under one layout id are reused only
/// by probes of the same layout, so an agent never binds its programs to maps whose entries it
/// would misread.
pub fn map_layout_id() -> String {
    map_layout_id_with(&DEFAULT_CAPACITY)
}

/// The layout id of the maps sized by `capacity` ([`pinned_maps`]): capacities are part of the
/// layout, so maps of other sizes are pinned apart and never reused (an agent given new
/// capacities starts on new maps, and unpins the old ones like those of an older layout).
pub fn map_layout_id_with(capacity: &Capacity) -> String {
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for byte in bytes {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(PRIME);
        }
    };
    eat(&MAP_FORMAT.to_le_bytes());
    for (name, spec) in pinned_maps(capacity) {
        eat(name.as_bytes());
        eat(&[0]);
        for field in [
            spec.map_type,
            spec.key_size,
            spec.value_size,
            spec.max_entries,
            spec.flags,
        ] {
            eat(&field.to_le_bytes());
        }
    }
    format!("{hash:016x}")
}

/// Whether [`Probe::load_pinned`] found the maps pinned already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapsOrigin {
    /// Created by this load and pinned (all, or those an interrupted earlier load had not
    /// pinned yet): empty; the settings default unless they were pinned.
    Created,
    /// Pinned by an earlier load (an earlier agent): entries, settings, tracked flows, counters
    /// and unread events as that load left them.
    Reused,
}

impl Probe {
    /// Loads the embedded object like [`Probe::load`], with every map of [`PINNED_MAPS`]
    /// pinned in `dir` (a bpffs directory, created if missing) under its name. Maps already
    /// pinned there are reused as they are — entries, settings, tracked flows, unread events —
    /// after checking that each is the map the programs expect; missing ones are created, pinned
    /// and, for the settings, set to the default (strict mode).
    ///
    /// Programs attached by an earlier load keep running with these same maps, so whatever
    /// this probe writes reaches them too.
    pub fn load_pinned(dir: &Path) -> Result<(Self, MapsOrigin), ProbeError> {
        Self::load_pinned_with(dir, &DEFAULT_CAPACITY)
    }

    /// Loads like [`Probe::load_pinned`], with the policy maps sized by `capacity`. Maps pinned
    /// in `dir` with other capacities are refused ([`ProbeError::PinnedMapMismatch`]): give
    /// each capacity a directory of its own ([`map_layout_id_with`]).
    pub fn load_pinned_with(
        dir: &Path,
        capacity: &Capacity,
    ) -> Result<(Self, MapsOrigin), ProbeError> {
        std::fs::create_dir_all(dir).map_err(|source| ProbeError::PinDir {
            path: dir.to_owned(),
            source,
        })?;
        let expected = pinned_maps(capacity);
        let pins: Vec<(&'static str, PathBuf)> = expected
            .iter()
            .map(|(name, _)| (*name, dir.join(name)))
            .collect();
        let mut existing = 0;
        for (name, path) in &pins {
            if path.exists() {
                check_pinned(&expected, name, path)?;
                existing += 1;
            }
        }
        let config_pinned = dir.join(map_names::CONFIG).exists();
        let mut loader = EbpfLoader::new();
        for (name, path) in &pins {
            loader.map_pin_path(name, path.as_path());
        }
        for (name, max_entries) in sized_maps(capacity) {
            loader.map_max_entries(name, max_entries);
        }
        let mut probe = Self::from_ebpf(loader.load(PROBE_OBJECT)?, *capacity)?;
        // The maps this load created must be what the next load will expect.
        for (name, path) in &pins {
            check_pinned(&expected, name, path)?;
        }
        if !config_pinned {
            probe.set_config(&Config::default())?;
        }
        let origin = if existing == pins.len() {
            MapsOrigin::Reused
        } else {
            MapsOrigin::Created
        };
        Ok((probe, origin))
    }
}

/// Checks that the map pinned at `path` is the map `name` of `maps` ([`pinned_maps`]).
fn check_pinned(
    maps: &[(&'static str, MapSpec)],
    name: &'static str,
    path: &Path,
) -> Result<(), ProbeError> {
    let Some((_, expected)) = maps.iter().find(|(n, _)| *n == name) else {
        return Err(ProbeError::MissingMap(name));
    };
    let info = MapInfo::from_pin(path).map_err(|source| ProbeError::Map { name, source })?;
    let found = MapSpec::from_info(&info);
    if found != *expected {
        return Err(ProbeError::PinnedMapMismatch {
            name,
            expected: *expected,
            found,
        });
    }
    Ok(())
}
