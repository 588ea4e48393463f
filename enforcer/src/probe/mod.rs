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
//! bpffs directory (reused when already pinned: the kernel objects outlive the process),
//! [`Probe::attach_links`] hands the caller the links of one veth instead of keeping them (so
//! they can be pinned, or left attached on exit), and [`Probe::replace_link`] moves an existing
//! link, found again after a restart, to this probe's programs in one atomic step. `tollgate-agent`'s `pins` module builds restart
//! safety from these.
//!
//! The parts: this module loads the object and owns the maps; [`layout`] says what the programs
//! expect of each shared map (its [`MapSpec`], the layout id) and loads with the maps pinned;
//! [`attach`] puts the programs on veths (TCX or clsact) and hands out their links; [`reports`]
//! reads the per-CPU counters and turns deny entries not reported yet into events; [`clock`]
//! reads the programs' clock and calibrates their cheap reading of it, which every
//! [`Probe::set_config`] writes along.

mod attach;
mod clock;
mod layout;
mod reports;

use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, LpmTrie, Map, MapData, MapError, PerCpuArray, RingBuf},
    programs::{ProgramError, SchedClassifier},
};
use tollgate_schemas::{
    Config, CtEntry, DenyEntry, EndpointKey, EndpointState, FlowKey, FragEntry, FragKey, NodeAddr,
    PeerIdentity, PeerKey, PolicyEntry, PolicyKey, PolicyValue, map_names, program_names,
};

use crate::{
    aya_maps::{AyaMaps, write_slots},
    causes::Causes,
    desired::Capacity,
    events::EventReader,
    revision_slots::RevisionSlots,
};

pub use attach::{
    AttachMode, CLSACT_HANDLE, CLSACT_PRIORITY, HOOKS, VethLinks, clsact_link, hook_of,
};
pub use clock::{Calibration, ClockError, clock_ns, monotonic_ns};
pub use layout::{
    MAP_FORMAT, MapSpec, MapsOrigin, PINNED_MAPS, SHARED_MAPS, map_layout_id, map_layout_id_with,
    pinned_maps,
};
pub use reports::Counters;
pub(crate) use reports::{flush_denies, read_counters};

use layout::{DEFAULT_CAPACITY, sized_maps};

/// The eBPF object built from `probe/` by `build.rs`.
static PROBE_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tollgate-probe"));

/// Error of loading, attaching or reading the probe.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The object could not be loaded (permissions, kernel support, verifier).
    #[error("loading the eBPF object (this needs root, or CAP_BPF and CAP_NET_ADMIN)")]
    Load(#[from] aya::EbpfError),
    /// A map's file descriptor could not be duplicated.
    #[error("duplicating the descriptor of map {name}")]
    Duplicate {
        /// Map name.
        name: &'static str,
        /// What failed.
        source: std::io::Error,
    },
    /// A program is missing from the object or was refused.
    #[error("program {name}")]
    Program {
        /// Program name.
        name: &'static str,
        /// What failed.
        #[source]
        source: ProgramError,
    },
    /// A map is missing from the object or has an unexpected type or size.
    #[error("map {name}")]
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
    /// The programs' clock could not be calibrated.
    #[error("calibrating the probe's clock")]
    Clock(#[source] ClockError),
    /// Attaching to an interface failed, with TCX and with clsact.
    #[error("attaching {program} to {ifname}")]
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
    #[error("pin directory {path}")]
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

/// The probe's maps, each in its typed handle.
pub(crate) struct ProbeMaps {
    /// Pod address → endpoint.
    pub(crate) endpoints: HashMap<MapData, EndpointKey, EndpointState>,
    /// Endpoint id → the revision its known flows pass under without the endpoint's lookup.
    pub(crate) revisions: Array<MapData, u64>,
    /// What the endpoint map and `revisions` hold, for writing them in step.
    pub(crate) slots: RevisionSlots,
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
    /// When policy last denied a flow, per (endpoint, direction) slot: the probe's own, only
    /// cleared here.
    pub(crate) deny_hints: Array<MapData, u64>,
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
    /// How the programs read their clock from `jiffies`; `None`: through the helper.
    clock: Option<Calibration>,
}

/// The bookkeeping of the revisions array as the maps hold it at load (pinned maps keep what an
/// earlier agent wrote), and the array brought in line with it.
fn recover_slots(
    endpoints: &HashMap<MapData, EndpointKey, EndpointState>,
    revisions: &mut Array<MapData, u64>,
) -> Result<RevisionSlots, ProbeError> {
    let named = |name| move |source| ProbeError::Map { name, source };
    let entries = endpoints
        .iter()
        .collect::<Result<Vec<_>, _>>()
        .map_err(named(map_names::ENDPOINTS))?;
    let held = (0..revisions.len())
        .map(|id| revisions.get(&id, 0))
        .collect::<Result<Vec<_>, _>>()
        .map_err(named(map_names::REVISIONS))?;
    let (slots, writes) = RevisionSlots::recover(revisions.len(), entries, |id| held[id as usize]);
    write_slots(revisions, &writes).map_err(|e| ProbeError::Map {
        name: e.map,
        source: e.source,
    })?;
    Ok(slots)
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
        let endpoints = typed(&mut ebpf, map_names::ENDPOINTS)?;
        let mut revisions = typed(&mut ebpf, map_names::REVISIONS)?;
        let slots = recover_slots(&endpoints, &mut revisions)?;
        let maps = ProbeMaps {
            endpoints,
            revisions,
            slots,
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
            deny_hints: typed(&mut ebpf, map_names::DENY_HINTS)?,
            conntrack_fd,
            denies_fd,
            counters_fd,
        };
        let events = Some(typed(&mut ebpf, map_names::EVENTS)?);
        let clock = calibrated_clock(&mut ebpf);
        Ok(Self {
            ebpf,
            maps,
            events,
            capacity,
            clock,
        })
    }

    /// How the programs read their clock: `None` when the calibration failed and they ask the
    /// helper (the same clock, ~20 ns slower).
    pub fn clock(&self) -> Option<Calibration> {
        self.clock
    }

    /// Replaces the global settings. The clock fields are the probe's own: its calibration
    /// replaces them (zeros when it has none).
    pub fn set_config(&mut self, config: &Config) -> Result<(), ProbeError> {
        let (tick_ns, offset_ns) = self
            .clock
            .map_or((0, 0), |clock| (clock.tick_ns, clock.offset_ns));
        let config = config.with_clock(tick_ns, offset_ns);
        self.maps
            .config
            .set(0, config, 0)
            .map_err(|source| ProbeError::Map {
                name: map_names::CONFIG,
                source,
            })
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

    /// Forgets every tracked, denied and fragmented flow, as if no packet had been seen.
    pub fn clear_flow_state(&mut self) -> Result<(), ProbeError> {
        let maps = &mut self.maps;
        clear(&mut maps.conntrack, map_names::CONNTRACK)?;
        clear(&mut maps.denies, map_names::DENIES)?;
        clear(&mut maps.frags, map_names::FRAGS)?;
        for slot in 0..maps.deny_hints.len() {
            maps.deny_hints
                .set(slot, 0, 0)
                .map_err(|source| ProbeError::Map {
                    name: map_names::DENY_HINTS,
                    source,
                })?;
        }
        Ok(())
    }

    /// Writes the conntrack entry of the flow whose first packet has `key`, under the flow's
    /// key for both directions ([`FlowKey::tracked`]), as only the programs do in operation:
    /// for tests of what they make of an entry they did not write (an unknown verdict or
    /// direction byte must not pass a packet).
    pub fn write_conntrack(&mut self, key: &FlowKey, entry: &CtEntry) -> Result<(), ProbeError> {
        self.maps
            .conntrack
            .insert(key.tracked(), entry, 0)
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

    /// Loads the [`program_names::FLOOR`] program, which only benchmarks run ([`Probe::program`]
    /// then finds it, and [`Probe::attach_floor`] attaches it).
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

/// Loads the `clock` program of `ebpf` and calibrates the programs' clock with it; `None`, with
/// a warning, when that fails: the programs then read the clock through the helper.
fn calibrated_clock(ebpf: &mut Ebpf) -> Option<Calibration> {
    let name = program_names::CLOCK;
    let calibrated = classifier(ebpf, name).and_then(|program| {
        program
            .load()
            .map_err(|source| ProbeError::Program { name, source })?;
        clock::calibrate(program).map_err(ProbeError::Clock)
    });
    match calibrated {
        Ok(calibration) => {
            tracing::debug!(
                tick_ns = calibration.tick_ns,
                "probe clock calibrated on jiffies"
            );
            Some(calibration)
        }
        Err(error) => {
            tracing::warn!(
                error = %Causes(&error),
                "probe clock not calibrated: the programs read it through the helper, ~20 ns more per packet"
            );
            None
        }
    }
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
