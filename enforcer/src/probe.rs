//! Loading the embedded eBPF object and attaching its programs to pod veths.
//!
//! [`Probe::load`] loads the object built from `probe/` (embedded at build time), loads both
//! TC programs into the kernel and takes every map into a typed handle. [`Probe::attach`] puts
//! `from_pod` on the TC ingress hook and `to_pod` on the TC egress hook of a host-side veth,
//! with TCX links where the kernel has them (6.6+), else through a clsact qdisc. Dropping the
//! probe detaches the programs and frees the maps.

use std::os::fd::{AsFd, OwnedFd};

use aya::{
    Ebpf,
    maps::{Array, HashMap, LpmTrie, Map, MapData, MapError, PerCpuArray, RingBuf},
    programs::{
        ProgramError, SchedClassifier, TcAttachType,
        links::LinkOrder,
        tc::{self, NlOptions, SchedClassifierLinkId, TcAttachOptions},
    },
};
use tollgate_schemas::{
    Config, Counter, CtEntry, DenyEntry, EndpointKey, EndpointState, FLOW_EVENT_VERSION, FlowEvent,
    FlowKey, FragEntry, FragKey, PolicyKey, PolicyValue, Verdict, addr, map_names, program_names,
};

use crate::{aya_maps::AyaMaps, events::EventReader};

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
const HOOKS: [(&str, TcAttachType); 2] = [
    (program_names::FROM_POD, TcAttachType::Ingress),
    (program_names::TO_POD, TcAttachType::Egress),
];

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
    pub endpoints: HashMap<MapData, EndpointKey, EndpointState>,
    pub ingress: LpmTrie<MapData, PolicyKey, PolicyValue>,
    pub egress: LpmTrie<MapData, PolicyKey, PolicyValue>,
    pub conntrack: HashMap<MapData, FlowKey, CtEntry>,
    pub denies: HashMap<MapData, FlowKey, DenyEntry>,
    pub frags: HashMap<MapData, FragKey, FragEntry>,
    pub config: Array<MapData, Config>,
    pub counters: PerCpuArray<MapData, u64>,
    /// Duplicated descriptors of the conntrack, deny and counter maps, to open second handles
    /// on them (opening a map by id would need CAP_SYS_ADMIN, which the agent does not have).
    pub conntrack_fd: OwnedFd,
    pub denies_fd: OwnedFd,
    pub counters_fd: OwnedFd,
}

/// The loaded probe: both programs and every map.
pub struct Probe {
    ebpf: Ebpf,
    maps: ProbeMaps,
    events: Option<RingBuf<MapData>>,
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
    /// Loads the embedded object and both programs, in strict mode (unknown endpoints denied).
    pub fn load() -> Result<Self, ProbeError> {
        let mut ebpf = Ebpf::load(PROBE_OBJECT)?;
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
            ingress: typed(&mut ebpf, map_names::INGRESS)?,
            egress: typed(&mut ebpf, map_names::EGRESS)?,
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
        let mut probe = Self { ebpf, maps, events };
        probe.set_config(&Config::default())?;
        Ok(probe)
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

    /// One of the two programs, for BPF_PROG_TEST_RUN.
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
        rule_id: 0,
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
