//! The probe's decision logic in userspace, over a [`DesiredState`].
//!
//! A flow goes through the same hooks as in the kernel: [`decide_hook`] at the source
//! endpoint's egress (towards the Service address when the flow goes through one), then at
//! the destination endpoint's ingress (the backend, after kube-proxy's DNAT), each one reading
//! the maps exactly as the probe does: the endpoint map (programmed? isolated? which policy
//! set?), then [`DesiredState::rules_for`] (the peer's identity by longest prefix, the set's
//! entry for it or else for its fallback, the rule set that entry names), then
//! [`PolicyValue::matching_rule`](tollgate_schemas::PolicyValue::matching_rule), the one
//! matching function both share. If both let the first packet pass, the reply passes through
//! conntrack. [`ModelDatapath`] wraps this as a [`Datapath`].
//!
//! Not modelled: conntrack state across flows, the standard mode's unknown endpoints, spoofing,
//! fragments and malformed packets (the BPF datapath covers those) — except one kind a flow can
//! be asked about: an IPv6 packet with an IPv4-mapped address (`::ffff:a.b.c.d`), which every
//! hook it reaches denies as malformed, after its endpoint checks, as the probe does.

use std::net::IpAddr;

use tollgate_schemas::{
    Direction, EndpointKey, Reason, Verdict, addr, endpoint_flags, port_action,
};

use crate::decision::{Datapath, DatapathError, Decision, FlowOutcome, ProbeFlow};
use crate::desired::DesiredState;

/// The probe's decision logic in userspace, over a [`DesiredState`].
#[derive(Debug, Clone, Default)]
pub struct ModelDatapath {
    desired: DesiredState,
}

impl ModelDatapath {
    /// A datapath with empty maps (no endpoints: every hook is skipped).
    pub fn new() -> Self {
        Self::default()
    }
}

impl Datapath for ModelDatapath {
    fn program(&mut self, desired: &DesiredState) -> Result<(), DatapathError> {
        self.desired = desired.clone();
        Ok(())
    }

    fn decide(&mut self, flow: &ProbeFlow) -> Result<FlowOutcome, DatapathError> {
        Ok(decide_flow(&self.desired, flow))
    }
}

/// Every hook a new flow meets under `desired`: see [`Datapath::decide`].
pub fn decide_flow(desired: &DesiredState, flow: &ProbeFlow) -> FlowOutcome {
    let src = addr::to_bytes(flow.src);
    let dst = addr::to_bytes(flow.dst);
    let (addressed, addressed_port) = flow.addressed();
    let hook = |direction, endpoint, peer, port, mapped: bool| {
        let decision = decide_hook(desired, direction, endpoint, peer, flow.protocol, port)?;
        if mapped && decision.reason != Reason::NotProgrammed {
            return Some(Decision {
                verdict: Verdict::Deny,
                reason: Reason::Malformed,
                rule_id: 0,
            });
        }
        Some(decision)
    };
    let mut outcome = FlowOutcome {
        egress: hook(
            Direction::Egress,
            src,
            addr::to_bytes(addressed),
            addressed_port,
            is_v4_mapped(flow.src) || is_v4_mapped(addressed),
        ),
        ..FlowOutcome::default()
    };
    if outcome.egress.is_some_and(|d| !d.verdict.passes()) {
        return outcome;
    }
    outcome.ingress = hook(
        Direction::Ingress,
        dst,
        src,
        flow.dst_port,
        is_v4_mapped(flow.src) || is_v4_mapped(flow.dst),
    );
    if outcome.ingress.is_some_and(|d| !d.verdict.passes()) {
        return outcome;
    }
    let reply = |endpoint: [u8; 16]| {
        desired
            .endpoints
            .contains_key(&EndpointKey { addr: endpoint })
            .then_some(Decision {
                verdict: Verdict::Allow,
                reason: Reason::Reply,
                rule_id: 0,
            })
    };
    outcome.reply_egress = reply(dst);
    outcome.reply_ingress = reply(src);
    outcome
}

/// Whether `ip` is an IPv6 address of the IPv4-mapped form, which the probe drops as malformed.
fn is_v4_mapped(ip: IpAddr) -> bool {
    matches!(ip, IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some())
}

/// One hook: endpoint `endpoint` (16-byte addr) in `direction`, peer address, protocol, the
/// flow's destination port. None when `endpoint` is not in `desired.endpoints`.
pub fn decide_hook(
    desired: &DesiredState,
    direction: Direction,
    endpoint: [u8; 16],
    peer: [u8; 16],
    protocol: u8,
    dst_port: u16,
) -> Option<Decision> {
    let state = desired.endpoints.get(&EndpointKey { addr: endpoint })?;
    let decision = |verdict, reason, rule_id| {
        Some(Decision {
            verdict,
            reason,
            rule_id,
        })
    };
    if state.flags & endpoint_flags::PROGRAMMED == 0 {
        return decision(Verdict::Deny, Reason::NotProgrammed, 0);
    }
    let isolated = state.flags & endpoint_flags::isolated(direction) != 0;
    if !isolated && state.flags & endpoint_flags::tiered(direction) == 0 {
        return decision(Verdict::Allow, Reason::NotSelected, 0);
    }
    let denied = if state.flags & endpoint_flags::audit(direction) != 0 {
        Verdict::AuditDeny
    } else {
        Verdict::Deny
    };
    let mut passed = 0;
    let rule = desired
        .rules_for(state.set(direction), peer)
        .and_then(|value| value.matching_rule(protocol, dst_port, &mut passed));
    match rule {
        Some(rule) if rule.action == port_action::ALLOW => {
            decision(Verdict::Allow, Reason::AllowedByRule, rule.rule_id)
        }
        Some(rule) if rule.action == port_action::DENY_SERVICE => {
            decision(denied, Reason::ServiceBackendsDenied, rule.rule_id)
        }
        Some(rule) => decision(Verdict::Deny, Reason::DeniedByRule, rule.rule_id),
        // No rule decided; a Pass may have sent the packet past its tier.
        None if !isolated => decision(Verdict::Allow, Reason::DefaultAllow, passed),
        None if direction == Direction::Ingress
            && desired.node_addrs.contains(&EndpointKey { addr: peer }) =>
        {
            decision(Verdict::Allow, Reason::FromNode, 0)
        }
        None => decision(denied, Reason::IsolatedNoMatch, 0),
    }
}

#[cfg(test)]
mod tests {
    use tollgate_schemas::{
        PeerIdentity, PeerKey, PolicyEntry, PolicyKey, PolicyValue, PortRule, proto,
    };

    use super::*;
    use crate::desired::PeerEntryKey;

    const EP: [u8; 16] = addr::v4_bytes([10, 0, 0, 1]);
    const OTHER: [u8; 16] = addr::v4_bytes([10, 0, 0, 2]);

    /// Endpoint 1 (EP) and 2 (OTHER), each with a policy set of its own per direction. Set 1
    /// (EP's ingress) lets 10.0.0.0/8 reach port 80 (rule 7) but not 10.0.0.0/24; of two
    /// ClusterIPs in 10.0.0.0/8, one has no entry of its own (its fallback's applies), the
    /// other one naming the empty rule set 0.
    fn state(flags: u32) -> DesiredState {
        let mut desired = DesiredState::default();
        for (addr, id) in [(EP, 1), (OTHER, 2)] {
            desired.endpoints.insert(
                EndpointKey { addr },
                tollgate_schemas::EndpointState {
                    id,
                    ifindex: 1,
                    flags,
                    ingress_set: id,
                    egress_set: id + 2,
                    _pad: 0,
                    revision: 0,
                },
            );
        }
        let v4 = |octets: [u8; 4], len: u32| PeerEntryKey {
            prefix_len: 96 + len,
            key: PeerKey {
                addr: addr::v4_bytes(octets),
            },
        };
        let identity = |id, fallback| PeerIdentity { id, fallback };
        let world = PeerEntryKey {
            prefix_len: 0,
            key: PeerKey { addr: [0; 16] },
        };
        for (key, identity) in [
            (world, identity(1, 0)),
            (v4([0, 0, 0, 0], 0), identity(2, 0)),
            (v4([10, 0, 0, 0], 8), identity(10, 0)),
            (v4([10, 0, 0, 0], 24), identity(11, 0)),
            (v4([10, 0, 5, 5], 32), identity(12, 10)),
            (v4([10, 0, 6, 6], 32), identity(13, 10)),
        ] {
            desired.peers.insert(key, identity);
        }
        let mut allow = PolicyValue::EMPTY;
        allow.count = 1;
        allow.rules[0] = PortRule {
            rule_id: 7,
            port_lo: 80,
            port_hi: 80,
            protocol: proto::TCP,
            action: port_action::ALLOW,
            tier: 0,
            _pad: 0,
        };
        desired.rulesets.insert(1, allow);
        desired
            .policy
            .insert(PolicyKey { set: 1, peer: 10 }, PolicyEntry { ruleset: 1 });
        desired
            .policy
            .insert(PolicyKey { set: 1, peer: 13 }, PolicyEntry { ruleset: 0 });
        desired
    }

    fn hook(desired: &DesiredState, peer: [u8; 4], port: u16) -> Option<Decision> {
        decide_hook(
            desired,
            Direction::Ingress,
            EP,
            addr::v4_bytes(peer),
            proto::TCP,
            port,
        )
    }

    fn decision(verdict: Verdict, reason: Reason, rule_id: u32) -> Option<Decision> {
        Some(Decision {
            verdict,
            reason,
            rule_id,
        })
    }

    #[test]
    fn hook_steps() {
        use endpoint_flags::*;
        let isolated = state(PROGRAMMED | INGRESS_ISOLATED);
        assert_eq!(
            decide_hook(
                &isolated,
                Direction::Ingress,
                addr::v4_bytes([10, 9, 9, 9]),
                EP,
                6,
                80
            ),
            None
        );
        assert_eq!(
            hook(&state(INGRESS_ISOLATED), [10, 1, 0, 1], 80),
            decision(Verdict::Deny, Reason::NotProgrammed, 0)
        );
        assert_eq!(
            hook(&state(PROGRAMMED | EGRESS_ISOLATED), [10, 1, 0, 1], 80),
            decision(Verdict::Allow, Reason::NotSelected, 0)
        );
        assert_eq!(
            hook(&isolated, [10, 1, 0, 1], 80),
            decision(Verdict::Allow, Reason::AllowedByRule, 7)
        );
        // Longest prefix: the /24's identity, which has no entry, shadows the /8's.
        assert_eq!(
            hook(&isolated, [10, 0, 0, 9], 80),
            decision(Verdict::Deny, Reason::IsolatedNoMatch, 0)
        );
        // A ClusterIP without an entry of its own is what its fallback is; one whose entry
        // names rule set 0 allows nothing, whatever its fallback allows.
        assert_eq!(
            hook(&isolated, [10, 0, 5, 5], 80),
            decision(Verdict::Allow, Reason::AllowedByRule, 7)
        );
        assert_eq!(
            hook(&isolated, [10, 0, 6, 6], 80),
            decision(Verdict::Deny, Reason::IsolatedNoMatch, 0)
        );
        // Another endpoint's set does not apply.
        assert_eq!(
            decide_hook(
                &isolated,
                Direction::Ingress,
                OTHER,
                addr::v4_bytes([10, 1, 0, 1]),
                proto::TCP,
                80
            ),
            decision(Verdict::Deny, Reason::IsolatedNoMatch, 0)
        );
        assert_eq!(
            hook(&isolated, [10, 1, 0, 1], 81),
            decision(Verdict::Deny, Reason::IsolatedNoMatch, 0)
        );
        assert_eq!(
            hook(&isolated, [192, 0, 2, 1], 80),
            decision(Verdict::Deny, Reason::IsolatedNoMatch, 0)
        );
        assert_eq!(
            hook(
                &state(PROGRAMMED | INGRESS_ISOLATED | INGRESS_AUDIT),
                [192, 0, 2, 1],
                80
            ),
            decision(Verdict::AuditDeny, Reason::IsolatedNoMatch, 0)
        );
    }

    #[test]
    fn flows_go_egress_then_ingress_then_reply() {
        use endpoint_flags::*;
        let flow = |src: [u8; 4], dst: [u8; 4], port| ProbeFlow {
            src: std::net::Ipv4Addr::from(src).into(),
            dst: std::net::Ipv4Addr::from(dst).into(),
            protocol: proto::TCP,
            src_port: 40000,
            dst_port: port,
            service: None,
        };
        let reply = decision(Verdict::Allow, Reason::Reply, 0);
        let mut model = ModelDatapath::new();
        model
            .program(&state(PROGRAMMED | INGRESS_ISOLATED))
            .unwrap();
        // 10.0.0.2 → 10.0.0.1: the /24 allows nothing; no reply.
        let denied = model
            .decide(&flow([10, 0, 0, 2], [10, 0, 0, 1], 80))
            .unwrap();
        assert_eq!(
            denied.egress,
            decision(Verdict::Allow, Reason::NotSelected, 0)
        );
        assert_eq!(
            denied.ingress,
            decision(Verdict::Deny, Reason::IsolatedNoMatch, 0)
        );
        assert_eq!((denied.reply_egress, denied.reply_ingress), (None, None));
        // From outside: no egress hook; the reply leaves through endpoint 1 only.
        let allowed = model
            .decide(&flow([10, 1, 0, 1], [10, 0, 0, 1], 80))
            .unwrap();
        assert_eq!(allowed.egress, None);
        assert_eq!(
            allowed.ingress,
            decision(Verdict::Allow, Reason::AllowedByRule, 7)
        );
        assert_eq!((allowed.reply_egress, allowed.reply_ingress), (reply, None));
        // Out of endpoint 2 to the outside, egress-isolated with no entries: stops at egress.
        model.program(&state(PROGRAMMED | EGRESS_ISOLATED)).unwrap();
        let out = model
            .decide(&flow([10, 0, 0, 2], [192, 0, 2, 1], 443))
            .unwrap();
        assert_eq!(
            out.egress,
            decision(Verdict::Deny, Reason::IsolatedNoMatch, 0)
        );
        assert_eq!(
            out,
            FlowOutcome {
                egress: out.egress,
                ..FlowOutcome::default()
            }
        );
    }
}
