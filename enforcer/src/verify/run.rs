//! Resolved probes → [`ProbeResult`]s: programs a [`Datapath`] with the compiled state, asks
//! it about each probe's flow, and names the rules behind its decisions.
//!
//! A probe from an address to itself (a pod probing itself) is answered `allow`, reason
//! `loopback`, without the datapath: such a packet never crosses the pod's veth. A flow
//! between two addresses that are not endpoints meets no hook: `allow`, reason `no-endpoint`.
//! A probe to a Service port without a ready backend is `deny`, reason `no-ready-backends`
//! (kube-proxy rejects it), with the hooks the datapath saw still listed.

use std::net::IpAddr;

use tollgate_schemas::Verdict;

use super::probes::{Protocol, ResolvedProbe};
use crate::compile::Compiled;
use crate::decision::{Datapath, DatapathError, Decision, FlowOutcome};

/// Reason reported for a probe from an address to itself.
pub const LOOPBACK_REASON: &str = "loopback";

/// Reason reported for a flow that no hook sees: neither address is an endpoint.
pub const NO_ENDPOINT_REASON: &str = "no-endpoint";

/// Reason reported for a probe to a Service port without a ready backend: kube-proxy rejects
/// the connection, whatever policy says.
pub const NO_BACKENDS_REASON: &str = "no-ready-backends";

/// Whether a probe's flow gets through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProbeVerdict {
    /// The flow and its replies pass (possibly only because of audit mode: see
    /// [`ProbeResult::audit`]).
    Allow,
    /// Some hook drops the flow.
    Deny,
}

/// One hook's decision, with the rule behind it named.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct HookResult {
    /// `allow`, `deny` or `audit-deny` ([`Verdict::name`]).
    pub verdict: &'static str,
    /// [`tollgate_schemas::Reason::name`].
    pub reason: &'static str,
    /// The policy (`namespace/name`, `ClusterNetworkPolicy/name`) of the rule that decided the
    /// packet, if a rule did.
    pub policy: Option<String>,
    /// That rule (`ingress[0]`, `egress[2]`).
    pub rule: Option<String>,
}

/// The four hooks a flow meets ([`FlowOutcome`]'s, each named).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Hooks {
    /// Egress of the source endpoint.
    pub egress: Option<HookResult>,
    /// Ingress of the destination endpoint.
    pub ingress: Option<HookResult>,
    /// The reply leaving the destination endpoint.
    pub reply_egress: Option<HookResult>,
    /// The reply entering the source endpoint.
    pub reply_ingress: Option<HookResult>,
}

/// The answer to one probe. Serialized as one JSON object (see [`super::render_json`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ProbeResult {
    /// The client as written: `namespace/pod`, or an address (in its canonical form).
    pub from: String,
    /// The server as written.
    pub to: String,
    /// The address the client resolved to.
    pub src: IpAddr,
    /// The address the server resolved to (through a Service: the backend's, or the ClusterIP
    /// when the port has no ready backend).
    pub dst: IpAddr,
    /// Through a Service: its `namespace/name`; null otherwise.
    pub service: Option<String>,
    /// Through a Service: the backend this result is for (`namespace/pod`, or its address when
    /// no pod has it); null otherwise, and when the port has no ready backend.
    pub backend: Option<String>,
    /// Through a Service: the ClusterIP and port the client addressed; null otherwise.
    pub service_addr: Option<IpAddr>,
    /// Destination port, as written (a Service's port).
    pub port: u16,
    /// The port the server receives on: the backend's targetPort through a Service, else
    /// `port`.
    pub target_port: u16,
    /// Protocol.
    pub protocol: Protocol,
    /// Whether the flow gets through.
    pub verdict: ProbeVerdict,
    /// The flow gets through only because an endpoint is in audit mode: policy would deny it.
    pub audit: bool,
    /// Why: the deciding decision's [`tollgate_schemas::Reason::name`], or `loopback`.
    pub reason: &'static str,
    /// Where: the hook of the deciding decision ([`crate::decision::Hook::name`]), null when
    /// no hook was reached.
    pub at: Option<&'static str>,
    /// The policy (`namespace/name`, `ClusterNetworkPolicy/name`) of the rule behind the
    /// deciding decision, if any.
    pub policy: Option<String>,
    /// That rule (`ingress[0]`).
    pub rule: Option<String>,
    /// Every hook's decision.
    pub hooks: Hooks,
    /// The datapath's raw answer; `None` for loopback probes, which never reach it.
    #[serde(skip)]
    pub outcome: Option<FlowOutcome>,
}

/// Programs `datapath` with `compiled.desired`, then decides every probe, in order.
pub fn run(
    compiled: &Compiled,
    probes: &[ResolvedProbe],
    datapath: &mut dyn Datapath,
) -> Result<Vec<ProbeResult>, DatapathError> {
    datapath.program(&compiled.desired)?;
    probes
        .iter()
        .map(|probe| {
            let outcome = if probe.is_loopback() {
                None
            } else {
                Some(datapath.decide(&probe.flow)?)
            };
            Ok(describe(compiled, probe, outcome))
        })
        .collect()
}

fn describe(
    compiled: &Compiled,
    probe: &ResolvedProbe,
    outcome: Option<FlowOutcome>,
) -> ProbeResult {
    let hook = |decision: Option<Decision>| {
        decision.map(|d| {
            let (policy, rule) = rule_names(compiled, &d);
            HookResult {
                verdict: d.verdict.name(),
                reason: d.reason.name(),
                policy,
                rule,
            }
        })
    };
    let (verdict, audit, reason, at, policy, rule) = match &outcome {
        None => (
            ProbeVerdict::Allow,
            false,
            LOOPBACK_REASON,
            None,
            None,
            None,
        ),
        Some(outcome) => {
            let (verdict, audit) = match outcome.verdict() {
                Verdict::Allow => (ProbeVerdict::Allow, false),
                Verdict::AuditDeny => (ProbeVerdict::Allow, true),
                Verdict::Deny => (ProbeVerdict::Deny, false),
            };
            match outcome.deciding() {
                Some((hook, deciding)) => {
                    let (policy, rule) = rule_names(compiled, &deciding);
                    let reason = deciding.reason.name();
                    (verdict, audit, reason, Some(hook.name()), policy, rule)
                }
                None => (verdict, audit, NO_ENDPOINT_REASON, None, None, None),
            }
        }
    };
    let (service, backend) = probe.service.clone().unzip();
    let backend = backend.flatten();
    let (verdict, reason) = if service.is_some() && backend.is_none() {
        (ProbeVerdict::Deny, NO_BACKENDS_REASON)
    } else {
        (verdict, reason)
    };
    let hooks = outcome.unwrap_or_default();
    ProbeResult {
        from: probe.spec.from.to_string(),
        to: probe.spec.to.to_string(),
        src: probe.flow.src,
        dst: probe.flow.dst,
        service,
        backend,
        service_addr: probe.flow.service.map(|hop| hop.addr),
        port: probe.spec.port,
        target_port: probe.flow.dst_port,
        protocol: probe.spec.protocol,
        verdict,
        audit,
        reason,
        at,
        policy,
        rule,
        hooks: Hooks {
            egress: hook(hooks.egress),
            ingress: hook(hooks.ingress),
            reply_egress: hook(hooks.reply_egress),
            reply_ingress: hook(hooks.reply_ingress),
        },
        outcome,
    }
}

/// The policy and rule a decision names: none when no rule decided it; the bare id when the
/// compilation does not know it (which would be a compiler bug, shown rather than hidden).
fn rule_names(compiled: &Compiled, decision: &Decision) -> (Option<String>, Option<String>) {
    if decision.rule_id == 0 {
        return (None, None);
    }
    match compiled
        .rules
        .get(&decision.rule_id)
        .map(|named| &named.rule)
    {
        Some(rule) => (
            Some(rule.policy_label()),
            Some(format!("{}[{}]", rule.direction.name(), rule.index)),
        ),
        None => (None, Some(format!("unknown rule id {}", decision.rule_id))),
    }
}
