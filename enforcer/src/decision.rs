//! What happens to a flow: the question both datapaths answer, the userspace model and the
//! real programs under BPF_PROG_TEST_RUN.

use std::net::IpAddr;

use tollgate_schemas::{Reason, Verdict};

use crate::desired::DesiredState;

/// The first packet of a flow, from `src` to `dst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeFlow {
    /// Source address (a pod's or an outside client's).
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// IANA protocol number (TCP, UDP or SCTP).
    pub protocol: u8,
    /// Source port.
    pub src_port: u16,
    /// Destination port: the port policy rules match, in both directions.
    pub dst_port: u16,
    /// The Service address the client connected to, when `dst`:`dst_port` is a backend that
    /// kube-proxy picked for it: the source's egress (and the reply arriving at the source)
    /// sees this address and port, the destination's ingress sees `dst`:`dst_port`.
    pub service: Option<ServiceHop>,
}

/// A Service's ClusterIP and port, as the client addressed it before kube-proxy's DNAT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceHop {
    /// The ClusterIP.
    pub addr: IpAddr,
    /// The Service port.
    pub port: u16,
}

impl ProbeFlow {
    /// The destination address and port the source's egress sees: the Service's when there is
    /// one, else the flow's own.
    pub fn addressed(&self) -> (IpAddr, u16) {
        self.service
            .map_or((self.dst, self.dst_port), |hop| (hop.addr, hop.port))
    }
}

/// One decision at one hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// What happened to the packet.
    pub verdict: Verdict,
    /// Why.
    pub reason: Reason,
    /// The compiled rule that allowed it, for [`Reason::AllowedByRule`]; 0 otherwise.
    pub rule_id: u32,
}

/// A place where a flow is decided, in the order the flow meets them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// Egress of the source endpoint.
    Egress,
    /// Ingress of the destination endpoint.
    Ingress,
    /// The reply leaving the destination endpoint.
    ReplyEgress,
    /// The reply entering the source endpoint.
    ReplyIngress,
}

impl Hook {
    /// Snake-case name, as the fields of [`FlowOutcome`] and in output.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Egress => "egress",
            Self::Ingress => "ingress",
            Self::ReplyEgress => "reply_egress",
            Self::ReplyIngress => "reply_ingress",
        }
    }
}

/// Every decision one flow meets on its way, in order. A hook the packet never reaches (the
/// address is not an endpoint, or an earlier hook denied it) is `None`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FlowOutcome {
    /// Egress of the source endpoint.
    pub egress: Option<Decision>,
    /// Ingress of the destination endpoint.
    pub ingress: Option<Decision>,
    /// The reply leaving the destination endpoint (its egress), through conntrack.
    pub reply_egress: Option<Decision>,
    /// The reply entering the source endpoint (its ingress), through conntrack.
    pub reply_ingress: Option<Decision>,
}

impl FlowOutcome {
    /// Allow only when every hook the flow and its reply met let them pass.
    pub fn verdict(&self) -> Verdict {
        let denied = self.decisions().any(|d| !d.verdict.passes());
        if denied {
            Verdict::Deny
        } else if self.decisions().any(|d| d.verdict == Verdict::AuditDeny) {
            Verdict::AuditDeny
        } else {
            Verdict::Allow
        }
    }

    /// The decision that settled the flow, and the hook that took it: the first denial, else
    /// the first audit-deny, else the first rule that allowed it (the destination's ingress
    /// rule before the source's egress rule), else the destination's ingress decision, else the
    /// source's egress one.
    pub fn deciding(&self) -> Option<(Hook, Decision)> {
        let first = |v: Verdict| self.hooks().find(|(_, d)| d.verdict == v);
        let by_rule = self
            .hooks()
            .filter(|(hook, d)| {
                matches!(hook, Hook::Ingress | Hook::Egress) && d.reason == Reason::AllowedByRule
            })
            .min_by_key(|(hook, _)| *hook != Hook::Ingress);
        let at = |hook: Hook| self.hooks().find(|(h, _)| *h == hook);
        first(Verdict::Deny)
            .or_else(|| first(Verdict::AuditDeny))
            .or(by_rule)
            .or_else(|| at(Hook::Ingress))
            .or_else(|| at(Hook::Egress))
    }

    /// The hooks the flow met, in order, with their decisions.
    pub fn hooks(&self) -> impl Iterator<Item = (Hook, Decision)> + '_ {
        [
            (Hook::Egress, self.egress),
            (Hook::Ingress, self.ingress),
            (Hook::ReplyEgress, self.reply_egress),
            (Hook::ReplyIngress, self.reply_ingress),
        ]
        .into_iter()
        .filter_map(|(hook, decision)| Some((hook, decision?)))
    }

    fn decisions(&self) -> impl Iterator<Item = Decision> + '_ {
        self.hooks().map(|(_, decision)| decision)
    }
}

/// Error of a datapath: the question could not be answered (not: the flow was denied).
#[derive(Debug, thiserror::Error)]
#[error("{datapath} datapath: {message}")]
pub struct DatapathError {
    /// `model` or `bpf`.
    pub datapath: &'static str,
    /// What failed.
    pub message: String,
}

/// Something that decides flows the way the probe does.
pub trait Datapath {
    /// Makes `desired` the state every following decision is taken under.
    fn program(&mut self, desired: &DesiredState) -> Result<(), DatapathError>;

    /// Decides a new flow, as if no earlier flow had been seen: egress of the source endpoint,
    /// ingress of the destination endpoint, then the reply through conntrack.
    fn decide(&mut self, flow: &ProbeFlow) -> Result<FlowOutcome, DatapathError>;
}
