//! Restart safety: the probe's maps and links live in bpffs, not in the agent's process, so
//! restarting or upgrading the agent never leaves a pod unenforced, and uninstalling removes
//! everything.
//!
//! # Layout
//!
//! Under the root ([`DEFAULT_ROOT`], `/sys/fs/bpf/tollgate`):
//!
//! | path | what |
//! |---|---|
//! | `maps/<layout>/TG_*` | every map the programs share with userspace ([`PINNED_MAPS`]); `<layout>` is [`map_layout_id`] |
//! | `links/<ifname>/from_pod`, `links/<ifname>/to_pod` | the TCX links of one host veth |
//! | `links/<ifname>/clsact/` | an empty directory: the veth's programs are clsact filters (kernels before 6.6) |
//!
//! A pinned TCX link stays attached, running its program with the pinned maps, until its pin
//! is removed and no process holds it. A clsact filter cannot be pinned, but it stays until it
//! is deleted; the agent gives its filters a fixed priority and handle
//! ([`tollgate_enforcer::probe::CLSACT_PRIORITY`], [`tollgate_enforcer::probe::CLSACT_HANDLE`])
//! and only marks the veth, so a restarted agent finds them by name.
//!
//! # Start: restart and upgrade alike
//!
//! 1. [`PinnedProbe::open`] takes the root's lock (one agent at a time: a second one waits),
//!    then loads the embedded programs with the maps of `maps/<layout>`: reused as they are
//!    when the previous agent had the same layout (entries, settings, conntrack, counters,
//!    unread events), created empty (strict mode) otherwise. Nothing is attached or replaced:
//!    the links of the previous agent keep running its programs with its maps.
//! 2. The agent discovers the endpoints ([`crate::endpoints::discover`]) and syncs the maps
//!    for them ([`crate::endpoints::Discovery::interfaces`] as the placement), by difference
//!    as always: with reused maps that changes only what changed in the cluster meanwhile;
//!    with new ones it writes everything.
//! 3. [`PinnedProbe::adopt`] takes over every pinned link and every marked clsact filter:
//!    `BPF_LINK_UPDATE` (TCX) or an in-place filter change (clsact) swaps the program of the
//!    existing attachment for this agent's, atomically: each packet runs either the old program
//!    or the new one, never none — no allow window, and no moment where both run. Links whose
//!    veth is gone are unpinned. Maps of other layouts are unpinned last, once no link of this
//!    agent's uses them; they are freed when the old programs are.
//! 4. [`crate::endpoints::Endpoints::apply`] attaches to new veths and detaches from those
//!    gone; from then on the placement is [`crate::endpoints::Endpoints::interfaces`].
//!
//! Adopting before the first sync is safe too, but with new maps it would switch the veths to
//! programs that deny every pod (strict mode, no endpoints yet) until the sync: closed, not
//! open, and still to be avoided.
//!
//! A restart with the same programs is the same sequence: the swap puts identical code in
//! place. An upgrade that changes the programs but not the maps keeps all state. An upgrade
//! that changes a map's layout starts from empty maps: step 2 reprograms every endpoint and
//! policy before step 3 switches the veths to them, so enforcement is continuous, but tracked
//! flows are forgotten: a reply that arrives before its flow is seen again on the new
//! programs is decided as a new flow (and may be denied, as for a flow the agent never saw).
//!
//! # Uninstall
//!
//! [`PinnedProbe::uninstall`] (from the running agent) or [`uninstall`] (with no agent running,
//! e.g. from a cleanup job on the node): deletes the clsact filters, unpins every link (the
//! programs detach once nothing holds them) and map, and removes the root. The clsact qdiscs
//! themselves are left: other software may share them.

use std::collections::BTreeMap;
use std::fs::File;
use std::mem::ManuallyDrop;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use aya::programs::{
    links::{FdLink, Link, LinkError, PinnedLink},
    tc::SchedClassifierLink,
};
use tollgate_enforcer::probe::{
    AttachMode, HOOKS, MapsOrigin, PINNED_MAPS, Probe, ProbeError, clsact_link, map_layout_id,
};

use crate::endpoints::{Attacher, Veth, ifindex};
use tollgate_enforcer::causes::Causes;

/// Where the agent pins, by default.
pub const DEFAULT_ROOT: &str = "/sys/fs/bpf/tollgate";

/// The marker directory of a veth whose programs are clsact filters.
const CLSACT_MARKER: &str = "clsact";

/// Error of pinning, adopting or uninstalling.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    /// Loading or attaching the probe failed.
    #[error(transparent)]
    Probe(#[from] ProbeError),
    /// A file system operation under the root failed.
    #[error("{path}")]
    Io {
        /// The path.
        path: PathBuf,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
    /// A pinned link could not be opened or converted.
    #[error("link {path}")]
    Link {
        /// Its pin.
        path: PathBuf,
        /// What failed.
        #[source]
        source: LinkError,
    },
    /// A link could not be pinned.
    #[error("pinning {path}")]
    Pin {
        /// The pin path.
        path: PathBuf,
        /// What failed.
        #[source]
        source: aya::pin::PinError,
    },
    /// Another agent holds the root.
    #[error("{root} is held by another agent (waited {waited:?})")]
    Locked {
        /// The root.
        root: PathBuf,
        /// How long this one waited.
        waited: Duration,
    },
    /// A clsact filter of an interface that still exists could not be deleted.
    #[error("deleting the clsact filters of {ifname}")]
    Detach {
        /// Interface name.
        ifname: String,
        /// What failed.
        #[source]
        source: aya::programs::ProgramError,
    },
    /// The root is not on a BPF file system.
    #[error("{root} is not on a BPF file system (mount one: mount -t bpf bpf /sys/fs/bpf)")]
    NotBpffs {
        /// The root.
        root: PathBuf,
    },
    /// The interface changed while the probe was being attached to it.
    #[error("{ifname} is no longer ifindex {ifindex}")]
    Replaced {
        /// Interface name.
        ifname: String,
        /// The ifindex that was to be attached.
        ifindex: u32,
    },
}

fn io_error(path: &Path) -> impl Fn(std::io::Error) -> PinError + '_ {
    move |source| PinError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The maps' directory for this build's layout.
pub fn maps_dir(root: &Path) -> PathBuf {
    root.join("maps").join(map_layout_id())
}

fn links_dir(root: &Path) -> PathBuf {
    root.join("links")
}

/// How the probe holds one veth.
#[derive(Debug)]
enum Hold {
    /// Pinned TCX links, one per hook: closing these descriptors leaves them attached.
    Tcx(Vec<FdLink>),
    /// Clsact filters, one per hook: dropping one deletes the filter, so they are only
    /// dropped on purpose (detach, uninstall) and otherwise left in place when the agent ends.
    Clsact(Vec<ManuallyDrop<SchedClassifierLink>>),
}

#[derive(Debug)]
struct Attached {
    ifindex: u32,
    hold: Hold,
}

/// What [`PinnedProbe::adopt`] found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Adoption {
    /// Veths whose links (or filters) now run this agent's programs.
    pub adopted: Vec<Veth>,
    /// Veths whose pins were dropped: the interface is gone (or is another one now).
    pub stale: Vec<String>,
    /// Map layouts of earlier agents that were unpinned.
    pub old_layouts: Vec<String>,
}

/// What [`uninstall`] removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Uninstalled {
    /// Veths whose pins or filters were removed.
    pub veths: Vec<String>,
    /// Whether there was a root to remove.
    pub removed_root: bool,
}

/// The probe with its maps and links pinned under a root; see the module doc.
pub struct PinnedProbe {
    probe: Probe,
    root: PathBuf,
    origin: MapsOrigin,
    veths: BTreeMap<String, Attached>,
    clsact: bool,
    _lock: PinLock,
}

impl std::fmt::Debug for PinnedProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PinnedProbe")
            .field("root", &self.root)
            .field("origin", &self.origin)
            .field("veths", &self.veths)
            .finish_non_exhaustive()
    }
}

impl PinnedProbe {
    /// Takes the lock of `root` (waiting up to `lock_wait` for another agent to end) and
    /// loads the probe with the maps pinned under it (see the module doc, step 1). Attaches
    /// nothing and touches no link.
    pub fn open(root: &Path, lock_wait: Duration) -> Result<Self, PinError> {
        // Checked on the nearest existing ancestor first: creating the root on another file
        // system (sysfs, when no bpffs is mounted on /sys/fs/bpf) fails obscurely.
        let existing = root.ancestors().find(|p| p.exists()).unwrap_or(root);
        if !is_bpffs(existing)? {
            return Err(PinError::NotBpffs {
                root: root.to_owned(),
            });
        }
        std::fs::create_dir_all(root).map_err(io_error(root))?;
        let lock = PinLock::acquire(root, lock_wait)?;
        let (probe, origin) = Probe::load_pinned(&maps_dir(root))?;
        tracing::info!(root = %root.display(), layout = %map_layout_id(), ?origin, "probe loaded with pinned maps");
        Ok(Self {
            probe,
            root: root.to_owned(),
            origin,
            veths: BTreeMap::new(),
            clsact: false,
            _lock: lock,
        })
    }

    /// Attaches new veths through clsact filters even where TCX exists (veths attached
    /// already stay as they are).
    pub fn prefer_clsact(&mut self, clsact: bool) {
        self.clsact = clsact;
    }

    /// How the probe is attached to each veth, by name.
    pub fn attach_modes(&self) -> BTreeMap<String, AttachMode> {
        self.veths
            .iter()
            .map(|(ifname, attached)| {
                let mode = match attached.hold {
                    Hold::Tcx(_) => AttachMode::Tcx,
                    Hold::Clsact(_) => AttachMode::Clsact,
                };
                (ifname.clone(), mode)
            })
            .collect()
    }

    /// Whether the maps were found pinned or created.
    pub fn origin(&self) -> MapsOrigin {
        self.origin
    }

    /// The root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Whether an earlier agent left links (or a clsact marker) for `ifname` that this one has
    /// not taken over yet: [`PinnedProbe::adopt`] swaps them; attaching would swap them early.
    pub fn has_foreign_pins(&self, ifname: &str) -> bool {
        !self.veths.contains_key(ifname) && links_dir(&self.root).join(ifname).exists()
    }

    /// The probe: its maps (to sync), settings and events.
    pub fn probe(&mut self) -> &mut Probe {
        &mut self.probe
    }

    /// Takes over every pinned link and marked clsact filter under the root, then unpins the
    /// maps of other layouts (see the module doc, step 3). Call it after the maps are synced.
    /// Runs in the calling thread's network namespace: clsact filters are found by interface
    /// name.
    pub fn adopt(&mut self) -> Result<Adoption, PinError> {
        let mut adoption = Adoption::default();
        for ifname in list_dir(&links_dir(&self.root))? {
            if self.veths.contains_key(&ifname) {
                continue;
            }
            match self.adopt_veth(&ifname)? {
                Some(veth) => {
                    tracing::info!(ifname = %veth.ifname, ifindex = veth.ifindex, "veth adopted");
                    adoption.adopted.push(veth);
                }
                None => {
                    tracing::info!(ifname = %ifname, "stale pins of a vanished veth dropped");
                    adoption.stale.push(ifname);
                }
            }
        }
        let layout = map_layout_id();
        let maps = self.root.join("maps");
        for old in list_dir(&maps)? {
            if old != layout {
                let path = maps.join(&old);
                std::fs::remove_dir_all(&path).map_err(io_error(&path))?;
                tracing::info!(layout = %old, "maps of an earlier layout unpinned");
                adoption.old_layouts.push(old);
            }
        }
        Ok(adoption)
    }

    /// Takes over the pins or filters of `ifname`; `None` when they were stale (and are gone
    /// now).
    fn adopt_veth(&mut self, ifname: &str) -> Result<Option<Veth>, PinError> {
        let dir = links_dir(&self.root).join(ifname);
        if dir.join(CLSACT_MARKER).is_dir() {
            let Some(index) = ifindex(ifname) else {
                remove_all(&dir)?;
                return Ok(None);
            };
            // Creates a missing filter, takes over an existing one in place.
            let links = self.probe.attach_links_clsact(ifname)?;
            self.keep(ifname, index, links.mode, links.links)?;
            return Ok(Some(Veth {
                ifname: ifname.to_string(),
                ifindex: index,
            }));
        }
        // TCX: the live links of the veth, by hook; pins of defunct links are dropped.
        let mut live = Vec::new();
        for (program, _) in HOOKS {
            let path = dir.join(program);
            if !path.exists() {
                continue;
            }
            let info = sys::link_info(&path).map_err(io_error(&path))?;
            if info.ifindex == 0 {
                std::fs::remove_file(&path).map_err(io_error(&path))?;
            } else {
                live.push((program, path, info.ifindex));
            }
        }
        let current = ifindex(ifname);
        if live.is_empty() || live.iter().any(|(_, _, index)| Some(*index) != current) {
            // Gone, or the name is another interface's now: nothing of ours to keep.
            remove_all(&dir)?;
            return Ok(None);
        }
        let index = live[0].2;
        let mut links = Vec::new();
        for (program, _) in HOOKS {
            let link = match live.iter().find(|(name, _, _)| *name == program) {
                Some((_, path, _)) => {
                    let link = open_pinned(path)?;
                    let link = match self.probe.replace_link(ifname, program, link) {
                        Ok(link) => link,
                        // The veth went away since its link was read (ENOLINK): stale after
                        // all. The links taken over so far are on the same gone veth.
                        Err(_) if sys::link_info(path).is_ok_and(|info| info.ifindex == 0) => {
                            drop(links);
                            remove_all(&dir)?;
                            return Ok(None);
                        }
                        Err(error) => return Err(error.into()),
                    };
                    FdLink::try_from(link).map_err(|source| PinError::Link {
                        path: path.clone(),
                        source,
                    })?
                }
                // An earlier agent ended between two pins: attach the missing hook now.
                None => {
                    let link = self.probe.attach_tcx_link(ifname, program)?;
                    pin(link, &dir.join(program))?
                }
            };
            links.push(link);
        }
        self.veths.insert(
            ifname.to_string(),
            Attached {
                ifindex: index,
                hold: Hold::Tcx(links),
            },
        );
        Ok(Some(Veth {
            ifname: ifname.to_string(),
            ifindex: index,
        }))
    }

    /// Records fresh links of `ifname`: TCX links are pinned, clsact filters marked.
    fn keep(
        &mut self,
        ifname: &str,
        index: u32,
        mode: AttachMode,
        links: Vec<(&'static str, SchedClassifierLink)>,
    ) -> Result<(), PinError> {
        let dir = links_dir(&self.root).join(ifname);
        std::fs::create_dir_all(&dir).map_err(io_error(&dir))?;
        let hold = match mode {
            AttachMode::Tcx => {
                let mut pinned = Vec::with_capacity(links.len());
                for (program, link) in links {
                    // On error the links not pinned yet are dropped, so detached, and those
                    // pinned already are unpinned below: all or nothing.
                    match pin(link, &dir.join(program)) {
                        Ok(link) => pinned.push(link),
                        Err(error) => {
                            drop(pinned);
                            remove_all(&dir)?;
                            return Err(error);
                        }
                    }
                }
                Hold::Tcx(pinned)
            }
            AttachMode::Clsact => {
                let marker = dir.join(CLSACT_MARKER);
                let links = links
                    .into_iter()
                    .map(|(_, link)| ManuallyDrop::new(link))
                    .collect();
                std::fs::create_dir_all(&marker).map_err(io_error(&marker))?;
                Hold::Clsact(links)
            }
        };
        self.veths.insert(
            ifname.to_string(),
            Attached {
                ifindex: index,
                hold,
            },
        );
        Ok(())
    }

    /// Detaches from every veth, unpins everything and removes the root: nothing of tollgate
    /// is left in the kernel once this returns (the maps are freed with the probe).
    pub fn uninstall(mut self) -> Result<Uninstalled, PinError> {
        let ifnames: Vec<String> = self.veths.keys().cloned().collect();
        for ifname in &ifnames {
            self.detach(ifname)?;
        }
        let Self {
            probe, root, _lock, ..
        } = self;
        drop(probe);
        let mut uninstalled = remove_everything(&root)?;
        uninstalled.veths.extend(ifnames);
        uninstalled.veths.sort();
        drop(_lock);
        Ok(uninstalled)
    }
}

impl Attacher for PinnedProbe {
    type Error = PinError;

    fn attached(&self) -> BTreeMap<String, u32> {
        self.veths
            .iter()
            .map(|(ifname, attached)| (ifname.clone(), attached.ifindex))
            .collect()
    }

    fn attach(&mut self, veth: &Veth) -> Result<(), PinError> {
        match self.veths.get(&veth.ifname) {
            Some(attached) if attached.ifindex == veth.ifindex => return Ok(()),
            Some(_) => self.detach(&veth.ifname)?,
            None => {}
        }
        // Pins left by an earlier agent (adopt was not called, or the veth came back since).
        let dir = links_dir(&self.root).join(&veth.ifname);
        if dir.exists() {
            if let Some(adopted) = self.adopt_veth(&veth.ifname)?
                && adopted.ifindex == veth.ifindex
            {
                return Ok(());
            }
            self.detach(&veth.ifname)?;
        }
        let links = if self.clsact {
            self.probe.attach_links_clsact(&veth.ifname)?
        } else {
            self.probe.attach_links(&veth.ifname)?
        };
        if ifindex(&veth.ifname) != Some(veth.ifindex) {
            // The veth was replaced between discovery and attach: these links are on the new
            // one; the next discovery finds it.
            drop(links);
            return Err(PinError::Replaced {
                ifname: veth.ifname.clone(),
                ifindex: veth.ifindex,
            });
        }
        self.keep(&veth.ifname, veth.ifindex, links.mode, links.links)
    }

    fn detach(&mut self, ifname: &str) -> Result<(), PinError> {
        let dir = links_dir(&self.root).join(ifname);
        if let Some(attached) = self.veths.remove(ifname) {
            match attached.hold {
                Hold::Tcx(links) => {
                    // Unpinned first, then our descriptors closed: the last reference goes and
                    // the kernel detaches the programs (a veth already gone took them along).
                    remove_all(&dir)?;
                    drop(links);
                }
                Hold::Clsact(links) => {
                    for link in links {
                        let link = ManuallyDrop::into_inner(link);
                        if let Err(error) = link.detach()
                            && ifindex(ifname) == Some(attached.ifindex)
                        {
                            return Err(PinError::Detach {
                                ifname: ifname.to_string(),
                                source: error,
                            });
                        }
                    }
                }
            }
        }
        remove_all(&dir)
    }
}

/// Removes everything tollgate pinned under `root` with no agent running: deletes the clsact
/// filters of marked veths (in the calling thread's network namespace), unpins every link and
/// map, removes the root. Fails when an agent holds the root.
pub fn uninstall(root: &Path) -> Result<Uninstalled, PinError> {
    if !root.exists() {
        return Ok(Uninstalled::default());
    }
    let lock = PinLock::acquire(root, Duration::ZERO)?;
    let uninstalled = remove_everything(root)?;
    drop(lock);
    Ok(uninstalled)
}

/// Deletes marked clsact filters and removes `root` with everything pinned under it.
fn remove_everything(root: &Path) -> Result<Uninstalled, PinError> {
    let mut uninstalled = Uninstalled::default();
    let links = links_dir(root);
    for ifname in list_dir(&links)? {
        if links.join(&ifname).join(CLSACT_MARKER).is_dir() {
            for (program, _) in HOOKS {
                // No such interface: its filters went with it.
                if let Ok(link) = clsact_link(&ifname, program)
                    && let Err(error) = link.detach()
                {
                    tracing::warn!(ifname = %ifname, program, error = %Causes(&error), "clsact filter not deleted");
                }
            }
        }
        uninstalled.veths.push(ifname);
    }
    // Unpinning a TCX link whose descriptors are all closed detaches it; unpinning a map
    // frees it once no program uses it.
    remove_all(root)?;
    uninstalled.removed_root = true;
    Ok(uninstalled)
}

/// Whether `path` is on a BPF file system.
pub fn is_bpffs(path: &Path) -> Result<bool, PinError> {
    /// `BPF_FS_MAGIC`.
    const BPF_FS_MAGIC: u32 = 0xcafe_4a11;
    let stat = rustix::fs::statfs(path).map_err(|e| io_error(path)(e.into()))?;
    Ok(stat.f_type as u32 == BPF_FS_MAGIC)
}

/// Opens the TCX link pinned at `path`, leaving the pin in place.
fn open_pinned(path: &Path) -> Result<SchedClassifierLink, PinError> {
    let error = |source| PinError::Link {
        path: path.to_owned(),
        source,
    };
    let link: FdLink = PinnedLink::from_pin(path).map_err(error)?.into();
    SchedClassifierLink::try_from(link).map_err(error)
}

/// Pins the TCX `link` at `path` and keeps a descriptor on it.
fn pin(link: SchedClassifierLink, path: &Path) -> Result<FdLink, PinError> {
    let link = FdLink::try_from(link).map_err(|source| PinError::Link {
        path: path.to_owned(),
        source,
    })?;
    let pinned = link.pin(path).map_err(|source| PinError::Pin {
        path: path.to_owned(),
        source,
    })?;
    Ok(pinned.into())
}

/// The names in directory `dir`, sorted; none when it does not exist.
fn list_dir(dir: &Path) -> Result<Vec<String>, PinError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(io_error(dir)(error)),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_error(dir))?;
        names.push(entry.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    Ok(names)
}

/// Removes `path` and everything under it; nothing to do when it does not exist.
fn remove_all(path: &Path) -> Result<(), PinError> {
    match std::fs::remove_dir_all(path) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(io_error(path)(error)),
        _ => Ok(()),
    }
}

/// An exclusive `flock` on the root directory: one agent per root at a time (a DaemonSet
/// update with `maxSurge` starts the new agent while the old one still runs). Released when
/// dropped, or when the process ends however it ends.
#[derive(Debug)]
struct PinLock {
    _file: File,
}

impl PinLock {
    fn acquire(root: &Path, wait: Duration) -> Result<Self, PinError> {
        let file = File::open(root).map_err(io_error(root))?;
        let start = Instant::now();
        loop {
            let error: std::io::Error = match rustix::fs::flock(
                &file,
                rustix::fs::FlockOperation::NonBlockingLockExclusive,
            ) {
                Ok(()) => return Ok(Self { _file: file }),
                Err(error) => error.into(),
            };
            if error.kind() != std::io::ErrorKind::WouldBlock {
                return Err(io_error(root)(error));
            }
            if start.elapsed() >= wait {
                return Err(PinError::Locked {
                    root: root.to_owned(),
                    waited: start.elapsed(),
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// The pieces of `bpf(2)` aya 0.14 does not expose: a TCX link's interface. Its `LinkInfo`
/// (`FdLink::info`, `loaded_links`) has the link's id, program and type but not the union that
/// holds the TCX ifindex, and `FdLink` does not lend its descriptor; rustix has no `bpf(2)`.
mod sys {
    use std::ffi::CString;
    use std::os::fd::{FromRawFd, OwnedFd};
    use std::os::unix::ffi::OsStrExt;
    use std::path::Path;

    const BPF_OBJ_GET: libc::c_long = 7;
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;

    /// `bpf_attr` for `BPF_OBJ_GET`.
    #[repr(C)]
    struct ObjGet {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
        path_fd: i32,
        _pad: u32,
    }

    /// `bpf_attr` for `BPF_OBJ_GET_INFO_BY_FD`.
    #[repr(C)]
    struct InfoByFd {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }

    /// Room for a `bpf_link_info`, aligned like it.
    #[repr(C, align(8))]
    struct Info([u32; 64]);

    /// What tollgate reads of a link's `bpf_link_info`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct LinkInfo {
        /// `bpf_link_type` (`BPF_LINK_TYPE_TCX` = 11).
        pub link_type: u32,
        /// The program it runs.
        pub prog_id: u32,
        /// For a TCX link, its interface; 0 once the interface is gone.
        pub ifindex: u32,
    }

    fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<libc::c_long> {
        // SAFETY: `attr` is a valid `bpf_attr` prefix for `cmd` of exactly `size_of::<T>()`
        // bytes, alive for the whole call; the kernel zero-extends a shorter attribute.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                cmd,
                attr as *mut T as *mut libc::c_void,
                size_of::<T>() as libc::c_uint,
            )
        };
        if ret < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(ret)
        }
    }

    /// The `bpf_link_info` of the link pinned at `path`.
    pub fn link_info(path: &Path) -> std::io::Result<LinkInfo> {
        let name = CString::new(path.as_os_str().as_bytes())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let mut get = ObjGet {
            pathname: name.as_ptr() as u64,
            bpf_fd: 0,
            file_flags: 0,
            path_fd: 0,
            _pad: 0,
        };
        let fd = bpf(BPF_OBJ_GET, &mut get)?;
        // SAFETY: BPF_OBJ_GET returned a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        // `struct bpf_link_info`: type, id, prog_id, then (8-aligned) the union whose `tcx`
        // member starts with ifindex. Larger than any kernel's, zeroed as the kernel requires.
        let mut info = Info([0; 64]);
        let mut by_fd = InfoByFd {
            bpf_fd: std::os::fd::AsRawFd::as_raw_fd(&fd) as u32,
            info_len: size_of::<Info>() as u32,
            info: info.0.as_mut_ptr() as u64,
        };
        bpf(BPF_OBJ_GET_INFO_BY_FD, &mut by_fd)?;
        Ok(LinkInfo {
            link_type: info.0[0],
            prog_id: info.0[2],
            ifindex: info.0[4],
        })
    }
}

/// Every map name pinned under `maps/<layout>`, for tests and diagnostics.
pub fn pinned_map_names() -> impl Iterator<Item = &'static str> {
    PINNED_MAPS.iter().map(|(name, _)| *name)
}

/// The `bpf_link_info` fields tollgate reads of the TCX link pinned at `path`: its program
/// id and interface (0 when the interface is gone).
pub fn pinned_link_target(path: &Path) -> Result<(u32, u32), PinError> {
    let info = sys::link_info(path).map_err(io_error(path))?;
    Ok((info.prog_id, info.ifindex))
}
