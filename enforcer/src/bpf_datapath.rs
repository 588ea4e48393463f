//! The real datapath under BPF_PROG_TEST_RUN: the probe's programs run on synthesized packets,
//! with maps filled by the real compiler and sync.
//!
//! A flow is decided hook by hook, the way it crosses a node: `from_pod` at the source endpoint
//! (its egress), `to_pod` at the destination endpoint (its ingress), then the reply through
//! `from_pod` at the destination and `to_pod` at the source, which conntrack must let through.
//! Verdicts come from the programs' return values; reasons and rules from the flow events they
//! write. A hook that passes a packet without an event has passed it through conntrack: that is
//! the one case the probe writes no event for a decided IP packet.

use std::{collections::BTreeSet, net::IpAddr};

use aya::programs::{TestRun, TestRunOptions};
use tollgate_schemas::{
    CtEntry, Direction, EndpointKey, FlowEvent, FlowKey, Reason, Verdict, addr, program_names,
};

use crate::{
    causes::Causes,
    decision::{Datapath, DatapathError, Decision, FlowOutcome, ProbeFlow},
    desired::Capacity,
    events::EventReader,
    packet::PacketSpec,
    probe::Probe,
    sync,
};

/// TC_ACT_SHOT / TCX_DROP, the probe's return value for a dropped packet.
const TC_ACT_SHOT: u32 = 2;
/// TC_ACT_UNSPEC / TCX_NEXT (-1), the probe's return value for a passed packet.
const TC_ACT_UNSPEC: u32 = u32::MAX;

/// What one program run did with one packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookRun {
    /// Whether the packet passed.
    pub passed: bool,
    /// The events the run wrote (none for a conntrack hit or a deduplicated deny).
    pub events: Vec<FlowEvent>,
    /// Run time the kernel reported, ns per repetition.
    pub duration_ns: u128,
}

/// The probe's programs, run by BPF_PROG_TEST_RUN.
pub struct BpfDatapath {
    probe: Probe,
    events: EventReader,
    endpoints: BTreeSet<EndpointKey>,
    /// Writes each programmed state by difference from the last one.
    syncer: sync::Syncer,
}

/// A datapath error that names `e` and each of its causes: a program the verifier refused
/// brings the verifier's log.
pub(crate) fn error(e: impl std::error::Error + 'static) -> DatapathError {
    failed(Causes(&e))
}

/// A datapath error that says `message`.
pub(crate) fn failed(message: impl std::fmt::Display) -> DatapathError {
    DatapathError {
        datapath: "bpf",
        message: message.to_string(),
    }
}

impl BpfDatapath {
    /// Loads the probe (needs root, or CAP_BPF and CAP_NET_ADMIN).
    pub fn new() -> Result<Self, DatapathError> {
        Self::with_capacity(&Capacity::default())
    }

    /// Loads the probe with its policy maps sized by `capacity` (small maps, to fill one).
    pub fn with_capacity(capacity: &Capacity) -> Result<Self, DatapathError> {
        let mut probe = Probe::load_with(capacity).map_err(error)?;
        let events = probe.take_events().map_err(error)?;
        Ok(Self {
            probe,
            events,
            endpoints: BTreeSet::new(),
            syncer: sync::Syncer::new(),
        })
    }

    /// The loaded probe, for tests that inspect or change its maps (the next
    /// [`Datapath::program`] then reads the maps again).
    pub fn probe_mut(&mut self) -> &mut Probe {
        self.syncer = sync::Syncer::new();
        &mut self.probe
    }

    /// Every flow conntrack tracks now, keyed as its first packet, as the collector reads them.
    pub fn tracked_flows(&self) -> Result<Vec<(FlowKey, CtEntry)>, DatapathError> {
        self.events.tracked_flows().map_err(error)
    }

    /// The loaded probe, to read what the kernel holds of it.
    pub fn probe(&self) -> &Probe {
        &self.probe
    }

    /// Runs the program of `direction` once on `frame` and collects what it wrote.
    pub fn run(&mut self, direction: Direction, frame: &[u8]) -> Result<HookRun, DatapathError> {
        self.run_repeated(direction, frame, 1)
    }

    /// Runs the program of `direction` `repeat` times on `frame` (the kernel reports the mean
    /// time per run) and collects what it wrote.
    pub fn run_repeated(
        &mut self,
        direction: Direction,
        frame: &[u8],
        repeat: u32,
    ) -> Result<HookRun, DatapathError> {
        let name = match direction {
            Direction::Egress => program_names::FROM_POD,
            Direction::Ingress => program_names::TO_POD,
        };
        self.run_program(name, frame, repeat)
    }

    /// Runs the loaded program `name` `repeat` times on `frame` (the kernel reports the mean
    /// time per run) and collects what it wrote.
    pub fn run_program(
        &mut self,
        name: &'static str,
        frame: &[u8],
        repeat: u32,
    ) -> Result<HookRun, DatapathError> {
        let program = self.probe.program(name).map_err(error)?;
        let mut out = vec![0u8; frame.len() + 256];
        let result = program
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                repeat,
                ..TestRunOptions::default()
            })
            .map_err(|e| failed(format!("BPF_PROG_TEST_RUN of {name}: {}", Causes(&e))))?;
        let passed = match result.return_value {
            TC_ACT_UNSPEC => true,
            TC_ACT_SHOT => false,
            other => return Err(failed(format!("{name} returned unexpected action {other}"))),
        };
        Ok(HookRun {
            passed,
            events: self.events.drain(),
            duration_ns: result.duration.as_nanos(),
        })
    }

    fn hook(
        &mut self,
        direction: Direction,
        spec: &PacketSpec,
        conntrack: Reason,
    ) -> Result<Decision, DatapathError> {
        let run = self.run(direction, &spec.build())?;
        match run.events.as_slice() {
            [] if run.passed => Ok(Decision {
                verdict: Verdict::Allow,
                reason: conntrack,
                rule_id: 0,
            }),
            [] => Err(failed(format!(
                "{} dropped the packet without an event",
                direction.name()
            ))),
            [event] => decision_of(event, run.passed),
            many => Err(failed(format!(
                "{} wrote {} events for one packet",
                direction.name(),
                many.len()
            ))),
        }
    }

    fn is_endpoint(&self, ip: IpAddr) -> bool {
        self.endpoints.contains(&EndpointKey {
            addr: addr::to_bytes(ip),
        })
    }
}

fn decision_of(event: &FlowEvent, passed: bool) -> Result<Decision, DatapathError> {
    let verdict = Verdict::from_raw(event.verdict)
        .ok_or_else(|| failed(format!("event with unknown verdict {}", event.verdict)))?;
    let reason = Reason::from_raw(event.reason)
        .ok_or_else(|| failed(format!("event with unknown reason {}", event.reason)))?;
    if verdict.passes() != passed {
        return Err(failed(format!(
            "event says {} but the program {} the packet",
            verdict.name(),
            if passed { "passed" } else { "dropped" }
        )));
    }
    Ok(Decision {
        verdict,
        reason,
        rule_id: event.rule_id,
    })
}

impl Datapath for BpfDatapath {
    fn program(&mut self, desired: &crate::desired::DesiredState) -> Result<(), DatapathError> {
        let mut maps = self.probe.policy_maps();
        self.syncer.sync(&mut maps, desired).map_err(error)?;
        self.endpoints = desired.endpoints.keys().copied().collect();
        Ok(())
    }

    fn decide(&mut self, flow: &ProbeFlow) -> Result<FlowOutcome, DatapathError> {
        self.probe.clear_flow_state().map_err(error)?;
        self.events.drain();
        // Through a Service, the source sees the ClusterIP both ways and the backend sees the
        // client after kube-proxy's DNAT; without one, both packets are the same.
        let (addressed, addressed_port) = flow.addressed();
        let sent = PacketSpec::first(
            flow.src,
            addressed,
            flow.protocol,
            flow.src_port,
            addressed_port,
        );
        let delivered = PacketSpec::first(
            flow.src,
            flow.dst,
            flow.protocol,
            flow.src_port,
            flow.dst_port,
        );
        let mut outcome = FlowOutcome::default();
        let passes = |d: &Option<Decision>| d.is_none_or(|d| d.verdict.passes());
        if self.is_endpoint(flow.src) {
            outcome.egress = Some(self.hook(Direction::Egress, &sent, Reason::Established)?);
        }
        if passes(&outcome.egress) && self.is_endpoint(flow.dst) {
            outcome.ingress =
                Some(self.hook(Direction::Ingress, &delivered, Reason::Established)?);
        }
        if !(passes(&outcome.egress) && passes(&outcome.ingress)) {
            return Ok(outcome);
        }
        if self.is_endpoint(flow.dst) {
            outcome.reply_egress =
                Some(self.hook(Direction::Egress, &delivered.reply(), Reason::Reply)?);
        }
        if passes(&outcome.reply_egress) && self.is_endpoint(flow.src) {
            outcome.reply_ingress =
                Some(self.hook(Direction::Ingress, &sent.reply(), Reason::Reply)?);
        }
        Ok(outcome)
    }
}
