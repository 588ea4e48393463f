//! Putting the programs on a host-side veth: `from_pod` on its TC ingress hook, `to_pod` on its
//! egress hook ([`HOOKS`]), with TCX links where the kernel has them (6.6+), else through a
//! clsact qdisc at a fixed priority and handle, so that a restarted agent finds its own filters
//! again. [`Probe::attach`] keeps the links in the probe; [`Probe::attach_links`] hands them to
//! the caller (to pin them, or leave them attached on exit), and [`Probe::replace_link`] moves
//! a link found again after a restart to this probe's programs in one step.
//! [`Probe::attach_floor`] puts the empty program on both hooks instead, for `bench veth`.

use aya::programs::{
    ProgramError, TcAttachType,
    links::LinkOrder,
    tc::{self, NlOptions, SchedClassifierLink, SchedClassifierLinkId, TcAttachOptions, TcHandle},
};
use tollgate_schemas::program_names;

use super::{Probe, ProbeError, classifier};
use crate::causes::Causes;

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

impl Probe {
    /// Attaches `from_pod` to the TC ingress hook and `to_pod` to the TC egress hook of
    /// `ifname`, a host-side veth in the calling thread's network namespace: TCX links when the
    /// kernel has them, else a clsact qdisc.
    pub fn attach(&mut self, ifname: &str) -> Result<AttachMode, ProbeError> {
        self.attach_each(ifname, HOOKS)
    }

    /// Attaches the [`program_names::FLOOR`] program (see [`Probe::load_floor`]) to both TC
    /// hooks of `ifname` the way [`Probe::attach`] attaches the real ones: the hooks with a
    /// program that passes every packet and does nothing else, which `tollgate bench veth`
    /// measures traffic against.
    pub fn attach_floor(&mut self, ifname: &str) -> Result<AttachMode, ProbeError> {
        self.attach_each(ifname, HOOKS.map(|(_, hook)| (program_names::FLOOR, hook)))
    }

    /// Attaches like [`Probe::attach`], but through a clsact qdisc even where TCX exists: the
    /// fallback [`Probe::attach`] takes on kernels before 6.6, also for setups that must share
    /// the qdisc with other direct-action filters.
    pub fn attach_clsact(&mut self, ifname: &str) -> Result<AttachMode, ProbeError> {
        self.attach_clsact_each(ifname, HOOKS)
    }

    /// Attaches each program to its hook of `ifname` with TCX links, else through a clsact
    /// qdisc; the probe keeps the links.
    fn attach_each(
        &mut self,
        ifname: &str,
        programs: [(&'static str, TcAttachType); 2],
    ) -> Result<AttachMode, ProbeError> {
        let mut attached = Vec::with_capacity(programs.len());
        for (name, hook) in programs {
            let options = TcAttachOptions::TcxOrder(LinkOrder::default());
            match self.attach_one(ifname, name, hook, options) {
                Ok(link) => attached.push((name, link)),
                Err(error) => {
                    tracing::info!(ifname, error = %Causes(&error), "TCX attach failed, falling back to clsact");
                    // Undo a half-done TCX attach before trying clsact.
                    for (name, link) in attached.drain(..) {
                        classifier(&mut self.ebpf, name)?
                            .detach(link)
                            .map_err(|source| ProbeError::Program { name, source })?;
                    }
                    return self.attach_clsact_each(ifname, programs);
                }
            }
        }
        Ok(AttachMode::Tcx)
    }

    fn attach_clsact_each(
        &mut self,
        ifname: &str,
        programs: [(&'static str, TcAttachType); 2],
    ) -> Result<AttachMode, ProbeError> {
        // A qdisc that already exists is fine: it is the one we need.
        if let Err(error) = tc::qdisc_add_clsact(ifname) {
            tracing::debug!(ifname, error = %Causes(&error), "clsact qdisc not added");
        }
        for (name, hook) in programs {
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
                    tracing::info!(ifname, error = %Causes(&error), "TCX attach failed, falling back to clsact");
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
            tracing::debug!(ifname, error = %Causes(&error), "clsact qdisc not added");
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
