//! Enforcement in the lab: the real probe on the lab's host veths, programmed step by step.
//!
//! [`Enforcement::start`] loads the probe (strict mode), takes its event ring buffer and
//! attaches both programs to every host veth from a thread inside the node namespace (the
//! interfaces are looked up by name in the attaching thread's namespace), before any pod sends
//! a packet. [`Enforcement::apply`] compiles a step's snapshot with
//! [`Placement::Interfaces`] (each pod on its host veth's ifindex), carrying the ids of the
//! previous compilation, and syncs the policy maps. [`Enforcement::take_events`] hands the
//! probe's ring buffer to the flow log.

use std::collections::BTreeMap;

use tollgate_enforcer::{
    compile::{Compiled, Placement, compile},
    desired::Ids,
    events::EventReader,
    probe::{AttachMode, Counters, Probe},
    snapshot::Snapshot,
    sync::sync,
};

use crate::{Attach, LabError, netns::in_netns, topology::Topology};

/// The loaded, attached probe and the compiler's ids so far.
pub struct Enforcement {
    probe: Probe,
    attach_mode: AttachMode,
    interfaces: BTreeMap<String, u32>,
    ids: Ids,
}

impl Enforcement {
    /// Loads the probe and attaches it to every host veth of `topology`, in its node
    /// namespace. Nothing is enforced until [`Enforcement::apply`]: in strict mode, traffic of
    /// pods that are not endpoints yet is denied.
    pub fn start(topology: &Topology, attach: Attach) -> Result<Self, LabError> {
        let mut probe = Probe::load()?;
        let veths: Vec<&str> = topology.links().map(|l| l.host_veth.as_str()).collect();
        let modes = in_netns(topology.node_netns(), || {
            veths
                .iter()
                .map(|veth| match attach {
                    Attach::Auto => probe.attach(veth),
                    Attach::Clsact => probe.attach_clsact(veth),
                })
                .collect::<Result<Vec<_>, _>>()
        })??;
        for (veth, mode) in veths.iter().zip(&modes) {
            tracing::debug!(veth, mode = %mode, "probe attached");
        }
        // Every veth of one kernel gets the same mode; report the first.
        let attach_mode = modes.first().copied().unwrap_or(AttachMode::Tcx);
        Ok(Self {
            probe,
            attach_mode,
            interfaces: topology.interfaces(),
            ids: Ids::default(),
        })
    }

    /// How the programs were attached.
    pub fn attach_mode(&self) -> AttachMode {
        self.attach_mode
    }

    /// Compiles `snapshot` for the lab's pods and syncs the probe's maps to it. Any input or
    /// capacity error of the compiler fails the step: the lab's manifests must be exact.
    pub fn apply(&mut self, step: u32, snapshot: &Snapshot) -> Result<Compiled, LabError> {
        let placement = Placement::Interfaces(&self.interfaces);
        let compiled = compile(snapshot, &placement, &self.ids);
        if !compiled.errors.is_empty() {
            return Err(LabError::Compile {
                step,
                errors: compiled.errors,
            });
        }
        let stats = sync(&mut self.probe.policy_maps(), &compiled.desired)?;
        tracing::info!(
            step,
            endpoints = compiled.desired.endpoints.len(),
            ingress_entries = compiled.desired.ingress.len(),
            egress_entries = compiled.desired.egress.len(),
            upserts = stats.upserts,
            deletes = stats.deletes,
            "policy maps synced"
        );
        self.ids = compiled.ids.clone();
        Ok(compiled)
    }

    /// The probe's event ring buffer, with its own handles on the deny map and counters.
    pub fn take_events(&mut self) -> Result<EventReader, LabError> {
        Ok(self.probe.take_events()?)
    }

    /// The probe's counters, summed over CPUs.
    pub fn counters(&self) -> Result<Counters, LabError> {
        Ok(self.probe.counters()?)
    }
}
