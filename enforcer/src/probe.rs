//! Loading the embedded eBPF object and attaching its programs to pod veths.
//!
//! [`Probe::load`] loads the object built from `probe/` (embedded at build time), loads both
//! TC programs into the kernel and takes every map into a typed handle; [`Probe::load_with`]
//! sizes the policy maps by a [`Capacity`] instead of [`tollgate_schemas::map_sizes`] (tests
//! make them small, to fill one). [`Probe::attach`] puts `from_pod` on the TC ingress hook and
//! `to_pod` on the TC egress hook of a host-side veth, with TCX links where the kernel has them
//! (6.6+), else through a clsact qdisc. Dropping the probe detaches the programs and frees the
//! maps.
//!
//! For an agent that must survive its own restarts, [`Probe::load_pinned`] (and
//! [`Probe::load_pinned_with`]) loads the same object with every shared map pinned under a
//! bpffs directory (reused when already pinned:
//! the kernel objects outlive the process), [`Probe::attach_links`] hands the caller the links
//! of one veth instead of keeping them (so they can be pinned, or left attached on exit), and
//! [`Probe::replace_link`] moves an existing link, found again after a restart, to this
//! probe's programs in one atomic step. `tollgate-agent`'s `pins` module builds restart
//! safety from these.

use std::path::{Path, PathBuf};

use std::os::fd::{AsFd, OwnedFd};

use aya::{
    Ebpf, EbpfLoader,
    maps::{
        Array, HashMap, LpmTrie, Map, MapData, MapError, MapInfo, MapType, PerCpuArray, RingBuf,
    },
    programs::{
        ProgramError, SchedClassifier, TcAttachType,
        links::LinkOrder,
        tc::{
            self, NlOptions, SchedClassifierLink, SchedClassifierLinkId, TcAttachOptions, TcHandle,
        },
    },
};
use tollgate_schemas::{
    Config, Counter, CtEntry, DenyEntry, EndpointKey, EndpointState, FLOW_EVENT_VERSION, FlowEvent,
    FlowKey, FragEntry, FragKey, NodeAddr, PeerIdentity, PeerKey, PolicyEntry, PolicyKey,
    PolicyValue, Verdict, addr, map_names, map_sizes, program_names,
};

use crate::{aya_maps::AyaMaps, desired::Capacity, events::EventReader};

/// The eBPF object built from `probe/` by `build.rs`.
static PROBE_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tollgate-probe"));

/// Error of loading, attaching or reading the probe.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The object could not be loaded (permissions, kernel support, verifier).
    #[error("loading the eBPF object (this needs root, or CAP_BPF and CAP_NET_ADMIN): {0}")]
    Load(#[from] aya::EbpfError),
    /// A map's file descriptor could not be duplicated.
    #[error("duplicating the descriptor of map {name}: {source}")]
    Duplicate {
        /// Map name.
        name: &'static str,
        /// What failed.
        source: std::io::Error,
    },
    /// A program is missing from the object or was refused.
    #[error("program {name}: {source}")]
    Program {
        /// Program name.
        name: &'static str,
        /// What failed.
        #[source]
        source: ProgramError,
    },
    /// A map is missing from the object or has an unexpected type or size.
    #[error("map {name}: {source}")]
    Map {
        /// Map name.
        name: &'static str,
        /// What failed.
        #[source]
        source: MapError,
    },
    /// A map is missing from the object.
    #[error("map {0}: not in the eBPF object")]
    MissingMap(&'static str),
    /// Attaching to an interface failed, with TCX and with clsact.
    #[error("attaching {program} to {ifname}: {source}")]
    Attach {
        /// Interface name.
        ifname: String,
        /// Program name.
        program: &'static str,
        /// What failed.
        #[source]
        source: ProgramError,
    },
    /// The ring buffer was taken already.
    #[error("the event ring buffer was taken already")]
    EventsTaken,
    /// The pin directory could not be created or read.
    #[error("pin directory {path}: {source}")]
    PinDir {
        /// The directory.
        path: PathBuf,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
    /// A map pinned under the pin directory is not the map this probe's programs expect (an
    /// object of another layout pinned under the same name).
    #[error("pinned map {name}: found {found}, expected {expected}")]
    PinnedMapMismatch {
        /// Map name.
        name: &'static str,
        /// What the programs expect.
        expected: MapSpec,
        /// What the kernel holds.
        found: MapSpec,
    },
}

/// How the programs were attached to an interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachMode {
    /// TCX links (Linux 6.6+).
    Tcx,
    /// A clsact qdisc with direct-action filters.
    Clsact,
}

impl std::fmt::Display for AttachMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Tcx => "tcx",
            Self::Clsact => "clsact",
        })
    }
}

/// Each program and the TC hook of the host-side veth it goes on.
pub const HOOKS: [(&str, TcAttachType); 2] = [
    (program_names::FROM_POD, TcAttachType::Ingress),
    (program_names::TO_POD, TcAttachType::Egress),
];

/// Priority of tollgate's filters on both clsact hooks. Fixed, with [`CLSACT_HANDLE`], so
/// that a restarted agent finds its own filters again (they are not pinned: a clsact filter
/// stays until it is deleted) and replaces their program in place. 1 runs first.
pub const CLSACT_PRIORITY: u16 = 1;
/// Handle of tollgate's filters on both clsact hooks: `0x7467` ("tg"), not 1, so that a filter
/// of another tool at priority 1 (which commonly takes handle 1) is never mistaken for ours
/// and replaced. See [`CLSACT_PRIORITY`].
pub const CLSACT_HANDLE: TcHandle = TcHandle::new(0, 0x7467);

/// The hook of the host-side veth that `program` goes on.
pub fn hook_of(program: &str) -> Option<TcAttachType> {
    HOOKS
        .iter()
        .find(|(name, _)| *name == program)
        .map(|(_, hook)| *hook)
}

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
pub const MAP_FORMAT: u32 = 1;

/// The capacities of [`tollgate_schemas::map_sizes`], what `Capacity::default()` holds, as a
/// constant.
const DEFAULT_CAPACITY: Capacity = Capacity {
    endpoints: map_sizes::ENDPOINTS,
    peers: map_sizes::PEERS,
    policy: map_sizes::POLICY,
    rulesets: map_sizes::RULESETS,
    node_addrs: map_sizes::NODE_ADDRS,
};

/// How many maps the programs share with userspace.
pub const SHARED_MAPS: usize = 11;

/// Every map the programs share with userspace, with what they expect of it, at the default
/// capacities: the maps [`Probe::load_pinned`] pins. See [`pinned_maps`].
pub const PINNED_MAPS: [(&str, MapSpec); SHARED_MAPS] = pinned_maps(&DEFAULT_CAPACITY);

/// Every map the programs share with userspace, with what they expect of it when the policy
/// maps are sized by `capacity`: the maps [`Probe::load_pinned_with`] pins. `TG_SCRATCH` is
/// left out: per-CPU room of one run, it is created anew by each load.
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
fn sized_maps(capacity: &Capacity) -> [(&'static str, u32); 5] {
    [
        (map_names::ENDPOINTS, capacity.endpoints),
        (map_names::PEERS, capacity.peers),
        (map_names::POLICY, capacity.policy),
        (map_names::RULESETS, capacity.rulesets),
        (map_names::NODE_ADDRS, capacity.node_addrs),
    ]
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

/// Both programs' links on one host-side veth, owned by the caller rather than the probe.
///
/// Dropping a link detaches its program — except a TCX link that is pinned (the pin holds it)
/// — so an agent that must leave its clsact filters in place on exit forgets them instead.
#[derive(Debug)]
pub struct VethLinks {
    /// How they were attached.
    pub mode: AttachMode,
    /// Each program's link, in the order of [`HOOKS`].
    pub links: Vec<(&'static str, SchedClassifierLink)>,
}

/// Sums over all CPUs of the probe's counters, indexed by [`Counter`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counters(pub [u64; Counter::COUNT as usize]);

impl Counters {
    /// One counter's total.
    pub fn get(&self, counter: Counter) -> u64 {
        self.0[counter as usize]
    }
}

/// The probe's maps, each in its typed handle.
pub(crate) struct ProbeMaps {
    /// Pod address → endpoint.
    pub(crate) endpoints: HashMap<MapData, EndpointKey, EndpointState>,
    /// The node's own addresses.
    pub(crate) node_addrs: HashMap<MapData, EndpointKey, NodeAddr>,
    /// Peer prefix → peer identity, node-wide.
    pub(crate) peers: LpmTrie<MapData, PeerKey, PeerIdentity>,
    /// (policy set, peer identity) → rule set.
    pub(crate) policy: HashMap<MapData, PolicyKey, PolicyEntry>,
    /// Rule-set id → rule set (written with `set(id, value, 0)`; index 0 stays empty).
    pub(crate) rulesets: Array<MapData, PolicyValue>,
    pub(crate) conntrack: HashMap<MapData, FlowKey, CtEntry>,
    pub(crate) denies: HashMap<MapData, FlowKey, DenyEntry>,
    pub(crate) frags: HashMap<MapData, FragKey, FragEntry>,
    pub(crate) config: Array<MapData, Config>,
    pub(crate) counters: PerCpuArray<MapData, u64>,
    /// Duplicated descriptors of the conntrack, deny and counter maps, to open second handles
    /// on them (opening a map by id would need CAP_SYS_ADMIN, which the agent does not have).
    pub(crate) conntrack_fd: OwnedFd,
    pub(crate) denies_fd: OwnedFd,
    pub(crate) counters_fd: OwnedFd,
}

/// The loaded probe: both programs and every map.
pub struct Probe {
    ebpf: Ebpf,
    maps: ProbeMaps,
    events: Option<RingBuf<MapData>>,
    capacity: Capacity,
}

fn take(ebpf: &mut Ebpf, name: &'static str) -> Result<Map, ProbeError> {
    ebpf.take_map(name).ok_or(ProbeError::MissingMap(name))
}

fn typed<T: TryFrom<Map, Error = MapError>>(
    ebpf: &mut Ebpf,
    name: &'static str,
) -> Result<T, ProbeError> {
    T::try_from(take(ebpf, name)?).map_err(|source| ProbeError::Map { name, source })
}

impl Probe {
    /// Loads the embedded object and both programs, in strict mode (unknown endpoints denied),
    /// with the policy maps at their default capacities ([`tollgate_schemas::map_sizes`]).
    pub fn load() -> Result<Self, ProbeError> {
        Self::load_with(&DEFAULT_CAPACITY)
    }

    /// Loads like [`Probe::load`], with the policy maps (endpoints, peers, policy, rule sets,
    /// node addresses) sized by `capacity`.
    pub fn load_with(capacity: &Capacity) -> Result<Self, ProbeError> {
        let mut loader = EbpfLoader::new();
        for (name, max_entries) in sized_maps(capacity) {
            loader.map_max_entries(name, max_entries);
        }
        let mut probe = Self::from_ebpf(loader.load(PROBE_OBJECT)?, *capacity)?;
        probe.set_config(&Config::default())?;
        Ok(probe)
    }

    /// The capacities the policy maps were created with.
    pub fn capacity(&self) -> Capacity {
        self.capacity
    }

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

    /// Loads both programs of `ebpf` and takes every map.
    fn from_ebpf(mut ebpf: Ebpf, capacity: Capacity) -> Result<Self, ProbeError> {
        for name in [program_names::FROM_POD, program_names::TO_POD] {
            classifier(&mut ebpf, name)?
                .load()
                .map_err(|source| ProbeError::Program { name, source })?;
        }
        let conntrack = take(&mut ebpf, map_names::CONNTRACK)?;
        let conntrack_fd = duplicate(&conntrack, map_names::CONNTRACK)?;
        let denies = take(&mut ebpf, map_names::DENIES)?;
        let counters = take(&mut ebpf, map_names::COUNTERS)?;
        let denies_fd = duplicate(&denies, map_names::DENIES)?;
        let counters_fd = duplicate(&counters, map_names::COUNTERS)?;
        let maps = ProbeMaps {
            endpoints: typed(&mut ebpf, map_names::ENDPOINTS)?,
            node_addrs: typed(&mut ebpf, map_names::NODE_ADDRS)?,
            peers: typed(&mut ebpf, map_names::PEERS)?,
            policy: typed(&mut ebpf, map_names::POLICY)?,
            rulesets: typed(&mut ebpf, map_names::RULESETS)?,
            conntrack: HashMap::try_from(conntrack).map_err(|source| ProbeError::Map {
                name: map_names::CONNTRACK,
                source,
            })?,
            denies: HashMap::try_from(denies).map_err(|source| ProbeError::Map {
                name: map_names::DENIES,
                source,
            })?,
            frags: typed(&mut ebpf, map_names::FRAGS)?,
            config: typed(&mut ebpf, map_names::CONFIG)?,
            counters: PerCpuArray::try_from(counters).map_err(|source| ProbeError::Map {
                name: map_names::COUNTERS,
                source,
            })?,
            conntrack_fd,
            denies_fd,
            counters_fd,
        };
        let events = Some(typed(&mut ebpf, map_names::EVENTS)?);
        Ok(Self {
            ebpf,
            maps,
            events,
            capacity,
        })
    }

    /// Replaces the global settings.
    pub fn set_config(&mut self, config: &Config) -> Result<(), ProbeError> {
        self.maps
            .config
            .set(0, config, 0)
            .map_err(|source| ProbeError::Map {
                name: map_names::CONFIG,
                source,
            })
    }

    /// Attaches `from_pod` to the TC ingress hook and `to_pod` to the TC egress hook of
    /// `ifname`, a host-side veth in the calling thread's network namespace: TCX links when the
    /// kernel has them, else a clsact qdisc.
    pub fn attach(&mut self, ifname: &str) -> Result<AttachMode, ProbeError> {
        let mut attached = Vec::with_capacity(HOOKS.len());
        for (name, hook) in HOOKS {
            let options = TcAttachOptions::TcxOrder(LinkOrder::default());
            match self.attach_one(ifname, name, hook, options) {
                Ok(link) => attached.push((name, link)),
                Err(error) => {
                    tracing::info!(ifname, %error, "TCX attach failed, falling back to clsact");
                    // Undo a half-done TCX attach before trying clsact.
                    for (name, link) in attached.drain(..) {
                        classifier(&mut self.ebpf, name)?
                            .detach(link)
                            .map_err(|source| ProbeError::Program { name, source })?;
                    }
                    return self.attach_clsact(ifname);
                }
            }
        }
        Ok(AttachMode::Tcx)
    }

    /// Attaches like [`Probe::attach`], but through a clsact qdisc even where TCX exists: the
    /// fallback [`Probe::attach`] takes on kernels before 6.6, also for setups that must share
    /// the qdisc with other direct-action filters.
    pub fn attach_clsact(&mut self, ifname: &str) -> Result<AttachMode, ProbeError> {
        // A qdisc that already exists is fine: it is the one we need.
        if let Err(error) = tc::qdisc_add_clsact(ifname) {
            tracing::debug!(ifname, %error, "clsact qdisc not added");
        }
        for (name, hook) in HOOKS {
            let options = TcAttachOptions::Netlink(NlOptions::default());
            self.attach_one(ifname, name, hook, options)?;
        }
        Ok(AttachMode::Clsact)
    }

    fn attach_one(
        &mut self,
        ifname: &str,
        name: &'static str,
        hook: TcAttachType,
        options: TcAttachOptions,
    ) -> Result<SchedClassifierLinkId, ProbeError> {
        classifier(&mut self.ebpf, name)?
            .attach_with_options(ifname, hook, options)
            .map_err(|source| ProbeError::Attach {
                ifname: ifname.to_owned(),
                program: name,
                source,
            })
    }

    /// Attaches both programs to `ifname` like [`Probe::attach`] (TCX, else clsact) and hands
    /// the links to the caller: dropping them detaches the programs, unless pinned. Clsact
    /// filters get [`CLSACT_PRIORITY`] and [`CLSACT_HANDLE`]; a filter of an earlier load found
    /// there has its program replaced in place.
    pub fn attach_links(&mut self, ifname: &str) -> Result<VethLinks, ProbeError> {
        let mut links = Vec::with_capacity(HOOKS.len());
        for (name, _) in HOOKS {
            match self.attach_tcx_link(ifname, name) {
                Ok(link) => links.push((name, link)),
                Err(error) => {
                    tracing::info!(ifname, %error, "TCX attach failed, falling back to clsact");
                    // Dropping them undoes a half-done TCX attach before trying clsact.
                    drop(links);
                    return self.attach_links_clsact(ifname);
                }
            }
        }
        Ok(VethLinks {
            mode: AttachMode::Tcx,
            links,
        })
    }

    /// Attaches `program` alone to its hook of `ifname` (see [`HOOKS`]) with a TCX link after
    /// any others there, and hands the link to the caller.
    pub fn attach_tcx_link(
        &mut self,
        ifname: &str,
        program: &'static str,
    ) -> Result<SchedClassifierLink, ProbeError> {
        let hook = hook_of(program).ok_or(ProbeError::Program {
            name: program,
            source: ProgramError::NotLoaded,
        })?;
        let options = TcAttachOptions::TcxOrder(LinkOrder::default());
        let id = self.attach_one(ifname, program, hook, options)?;
        self.take_link(program, id)
    }

    /// Attaches like [`Probe::attach_links`], through a clsact qdisc even where TCX exists.
    pub fn attach_links_clsact(&mut self, ifname: &str) -> Result<VethLinks, ProbeError> {
        if let Err(error) = tc::qdisc_add_clsact(ifname) {
            tracing::debug!(ifname, %error, "clsact qdisc not added");
        }
        // Filters already in place when a later hook fails are left, not deleted: they
        // enforce with this probe's maps (fail closed), and the next attach takes them over.
        let mut links = Vec::with_capacity(HOOKS.len());
        for (name, hook) in HOOKS {
            let options = TcAttachOptions::Netlink(NlOptions {
                priority: CLSACT_PRIORITY,
                handle: CLSACT_HANDLE,
                classid: None,
            });
            let link = match self.attach_one(ifname, name, hook, options) {
                Ok(id) => self.take_link(name, id)?,
                // The filter exists already (an earlier agent's): take it over.
                Err(error) => match clsact_link(ifname, name)
                    .ok()
                    .map(|existing| self.replace_link(ifname, name, existing))
                {
                    Some(Ok(link)) => link,
                    _ => return Err(error),
                },
            };
            links.push((name, std::mem::ManuallyDrop::new(link)));
        }
        Ok(VethLinks {
            mode: AttachMode::Clsact,
            links: links
                .into_iter()
                .map(|(name, link)| (name, std::mem::ManuallyDrop::into_inner(link)))
                .collect(),
        })
    }

    /// Moves `link`, an attachment of `program` that exists already (a TCX link found through
    /// its pin, or a clsact filter found by [`clsact_link`]), to this probe's `program`: TCX
    /// swaps the program of the link in one step (`BPF_LINK_UPDATE`), clsact replaces the
    /// filter's program in place. No packet passes the hook unprogrammed in between. `ifname`
    /// only names the interface in errors.
    ///
    /// Fails for a TCX link whose interface is gone (ENOLINK): such a link enforces nothing.
    pub fn replace_link(
        &mut self,
        ifname: &str,
        program: &'static str,
        link: SchedClassifierLink,
    ) -> Result<SchedClassifierLink, ProbeError> {
        let id = classifier(&mut self.ebpf, program)?
            .attach_to_link(link)
            .map_err(|source| ProbeError::Attach {
                ifname: ifname.to_owned(),
                program,
                source,
            })?;
        self.take_link(program, id)
    }

    fn take_link(
        &mut self,
        name: &'static str,
        id: SchedClassifierLinkId,
    ) -> Result<SchedClassifierLink, ProbeError> {
        classifier(&mut self.ebpf, name)?
            .take_link(id)
            .map_err(|source| ProbeError::Program { name, source })
    }

    /// The policy maps, for [`crate::sync::sync`].
    pub fn policy_maps(&mut self) -> AyaMaps<'_> {
        AyaMaps::new(&mut self.maps)
    }

    /// The event ring buffer, with handles of its own on the conntrack, deny and counter maps
    /// (for [`EventReader::tracked_flows`], [`EventReader::flush_denies`] and
    /// [`EventReader::counters`]), so that a collector can own it while the probe stays with
    /// the enforcer; it can be taken once.
    pub fn take_events(&mut self) -> Result<EventReader, ProbeError> {
        let ring = self.events.take().ok_or(ProbeError::EventsTaken)?;
        let conntrack = reopen(&self.maps.conntrack_fd, map_names::CONNTRACK)?;
        let denies = reopen(&self.maps.denies_fd, map_names::DENIES)?;
        let counters = reopen(&self.maps.counters_fd, map_names::COUNTERS)?;
        Ok(EventReader::new(ring, conntrack, denies, counters))
    }

    /// Totals of the per-CPU counters.
    pub fn counters(&self) -> Result<Counters, ProbeError> {
        read_counters(&self.maps.counters)
    }

    /// Reports what the kernel counted but has not reported yet: every denied flow with packets
    /// since its last event becomes one more event (verdict deny, its last reason, those
    /// packets and bytes, `ifindex` 0 as the entry does not keep it), and its entry is removed,
    /// so that its next packet starts a new report at once. Packets denied between the read and
    /// the removal of an entry are the only ones that can go unreported.
    pub fn flush_denies(&mut self) -> Result<Vec<FlowEvent>, ProbeError> {
        flush_denies(&mut self.maps.denies)
    }

    /// Forgets every tracked, denied and fragmented flow, as if no packet had been seen.
    pub fn clear_flow_state(&mut self) -> Result<(), ProbeError> {
        let maps = &mut self.maps;
        clear(&mut maps.conntrack, map_names::CONNTRACK)?;
        clear(&mut maps.denies, map_names::DENIES)?;
        clear(&mut maps.frags, map_names::FRAGS)
    }

    /// Writes a conntrack entry, as only the programs do in operation: for tests of what they
    /// make of an entry they did not write (an unknown verdict byte must not pass a packet).
    pub fn write_conntrack(&mut self, key: &FlowKey, entry: &CtEntry) -> Result<(), ProbeError> {
        self.maps
            .conntrack
            .insert(key, entry, 0)
            .map_err(|source| ProbeError::Map {
                name: map_names::CONNTRACK,
                source,
            })
    }

    /// Writes a first fragment's verdict, as only the programs do in operation: for tests, like
    /// [`Probe::write_conntrack`].
    pub fn write_fragment(&mut self, key: &FragKey, entry: &FragEntry) -> Result<(), ProbeError> {
        self.maps
            .frags
            .insert(key, entry, 0)
            .map_err(|source| ProbeError::Map {
                name: map_names::FRAGS,
                source,
            })
    }

    /// Loads the [`program_names::FLOOR`] program, which only benchmarks run (it is never
    /// attached); [`Probe::program`] then finds it.
    pub fn load_floor(&mut self) -> Result<(), ProbeError> {
        let name = program_names::FLOOR;
        classifier(&mut self.ebpf, name)?
            .load()
            .map_err(|source| ProbeError::Program { name, source })
    }

    /// One of the loaded programs, for BPF_PROG_TEST_RUN.
    pub fn program(&self, name: &'static str) -> Result<&SchedClassifier, ProbeError> {
        let program = self.ebpf.program(name).ok_or(ProbeError::Program {
            name,
            source: ProgramError::NotLoaded,
        })?;
        program
            .try_into()
            .map_err(|source| ProbeError::Program { name, source })
    }
}

/// Reports what `denies` counted but has not reported yet; see [`Probe::flush_denies`].
pub(crate) fn flush_denies(
    denies: &mut HashMap<MapData, FlowKey, DenyEntry>,
) -> Result<Vec<FlowEvent>, ProbeError> {
    let error = |source| ProbeError::Map {
        name: map_names::DENIES,
        source,
    };
    let pending = denies
        .iter()
        .filter_map(|entry| match entry {
            Ok((_, deny)) if deny.packets == 0 => None,
            other => Some(other),
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(error)?;
    let now = boottime_ns();
    let mut events = Vec::with_capacity(pending.len());
    for (key, deny) in pending {
        match denies.remove(&key) {
            Ok(()) | Err(MapError::KeyNotFound) => {}
            Err(source) => return Err(error(source)),
        }
        events.push(residual_event(&key, &deny, now));
    }
    Ok(events)
}

/// Totals of the per-CPU `counters`.
pub(crate) fn read_counters(counters: &PerCpuArray<MapData, u64>) -> Result<Counters, ProbeError> {
    let mut totals = Counters::default();
    for counter in Counter::ALL {
        let values = counters
            .get(&(counter as u32), 0)
            .map_err(|source| ProbeError::Map {
                name: map_names::COUNTERS,
                source,
            })?;
        totals.0[counter as usize] = values.iter().sum();
    }
    Ok(totals)
}

/// A second, independent handle on the map behind `fd`.
fn reopen<T: TryFrom<Map, Error = MapError>>(
    fd: &OwnedFd,
    name: &'static str,
) -> Result<T, ProbeError> {
    let error = |source| ProbeError::Map { name, source };
    let fd = fd
        .try_clone()
        .map_err(|source| ProbeError::Duplicate { name, source })?;
    let data = MapData::from_fd(fd).map_err(error)?;
    T::try_from(Map::from_map_data(data).map_err(error)?).map_err(error)
}

/// A duplicate of a map's descriptor, to open it again with [`reopen`].
fn duplicate(map: &Map, name: &'static str) -> Result<OwnedFd, ProbeError> {
    let data = match map {
        Map::HashMap(data) | Map::LruHashMap(data) | Map::PerCpuArray(data) => data,
        _ => return Err(ProbeError::MissingMap(name)),
    };
    data.fd()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|source| ProbeError::Duplicate { name, source })
}

/// The clsact filter of `program` on `ifname` that [`Probe::attach_links_clsact`] creates
/// (priority [`CLSACT_PRIORITY`], handle [`CLSACT_HANDLE`]), as a link: to replace its program
/// with [`Probe::replace_link`], or to delete the filter by dropping it. Fails only when there
/// is no interface `ifname` in the calling thread's network namespace; whether the filter
/// exists shows when it is used.
pub fn clsact_link(ifname: &str, program: &str) -> Result<SchedClassifierLink, std::io::Error> {
    let hook = hook_of(program).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("no program {program}"),
        )
    })?;
    SchedClassifierLink::attached(ifname, hook, CLSACT_PRIORITY, CLSACT_HANDLE, None)
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

/// The event for what a deny entry counted since its last event.
fn residual_event(key: &FlowKey, deny: &DenyEntry, now: u64) -> FlowEvent {
    let family = match addr::from_bytes(key.src_addr) {
        std::net::IpAddr::V4(_) => 4,
        std::net::IpAddr::V6(_) => 6,
    };
    FlowEvent {
        version: FLOW_EVENT_VERSION,
        family,
        protocol: key.protocol,
        direction: key.direction,
        verdict: Verdict::Deny as u8,
        reason: deny.reason,
        tcp_flags: deny.tcp_flags,
        ts_ns: now,
        ifindex: 0,
        endpoint: key.endpoint,
        rule_id: deny.rule_id,
        src_port: key.src_port,
        dst_port: key.dst_port,
        src_addr: key.src_addr,
        dst_addr: key.dst_addr,
        packets: deny.packets,
        bytes: deny.bytes,
        icmp_type: 0,
        icmp_code: 0,
        _pad: [0; 6],
    }
}

/// Now, in ns of `CLOCK_BOOTTIME`: the clock of the probe's timestamps.
fn boottime_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write into; CLOCK_BOOTTIME always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn classifier<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut SchedClassifier, ProbeError> {
    let program = ebpf.program_mut(name).ok_or(ProbeError::Program {
        name,
        source: ProgramError::NotLoaded,
    })?;
    program
        .try_into()
        .map_err(|source| ProbeError::Program { name, source })
}

fn clear<K: aya::Pod, V: aya::Pod>(
    map: &mut HashMap<MapData, K, V>,
    name: &'static str,
) -> Result<(), ProbeError> {
    let error = |source| ProbeError::Map { name, source };
    let keys = map.keys().collect::<Result<Vec<K>, _>>().map_err(error)?;
    for key in keys {
        match map.remove(&key) {
            Ok(()) | Err(MapError::KeyNotFound) => {}
            Err(source) => return Err(error(source)),
        }
    }
    Ok(())
}
