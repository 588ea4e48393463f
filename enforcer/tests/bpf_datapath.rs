//! The real probe programs under BPF_PROG_TEST_RUN, with maps filled by the real compiler and
//! sync: every verdict path and reason, conntrack, deduplicated denies, IPv6, and packets that
//! are malformed, truncated, fragmented or unusual on purpose.
//!
//! Needs root (CI runs as root); without it every test says SKIPPED loudly and returns, except
//! under CI, where it fails.

use std::net::IpAddr;

use tollgate_enforcer::{
    bpf_datapath::{BpfDatapath, HookRun},
    compile::{Compiled, Placement, compile, compile_with},
    decision::{Datapath, Decision, FlowOutcome, ProbeFlow, ServiceHop},
    desired::{Capacity, DesiredState, Ids, PeerEntryKey},
    manifest::parse_manifests,
    model::ModelDatapath,
    packet::{Fragment, PacketSpec},
    probe::monotonic_ns,
    snapshot::Snapshot,
};
use tollgate_schemas::{
    ANY_PROTOCOL, Config, Counter, CtEntry, Direction, EndpointKey, EndpointState, FlowKey,
    FragEntry, FragKey, PeerIdentity, PeerKey, PolicyEntry, PolicyKey, PolicyValue, PortRule,
    Reason, Verdict, addr, config_flags, endpoint_flags, port_action, proto,
};
use tollgate_test_support::privileged;

/// Namespace `default` with a client, a server and an IPv6 server; `policies` is appended.
fn cluster(policies: &str) -> Snapshot {
    let objects = format!(
        r#"
apiVersion: v1
kind: Namespace
metadata: {{name: default}}
---
apiVersion: v1
kind: Pod
metadata: {{name: client, namespace: default, labels: {{app: client}}}}
spec: {{containers: [{{name: c, image: amazonlinux}}]}}
status: {{phase: Running, podIP: 198.18.0.20, podIPs: [{{ip: 198.18.0.20}}, {{ip: "fd00::20"}}]}}
---
apiVersion: v1
kind: Pod
metadata: {{name: server, namespace: default, labels: {{app: server}}}}
spec:
  containers:
  - name: s
    image: nginx
    ports: [{{name: http, containerPort: 80, protocol: TCP}}]
status: {{phase: Running, podIP: 198.18.0.10, podIPs: [{{ip: 198.18.0.10}}, {{ip: "fd00::10"}}]}}
---
{policies}
"#
    );
    let (snapshot, errors) = parse_manifests(&objects, "test");
    assert!(errors.is_empty(), "fixture errors: {errors:?}");
    snapshot
}

const ALLOW_CLIENT_HTTP: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-client-http, namespace: default}
spec:
  podSelector: {matchLabels: {app: server}}
  policyTypes: [Ingress]
  ingress:
  - from: [{podSelector: {matchLabels: {app: client}}}]
    ports: [{protocol: TCP, port: http}]
"#;

const ALLOW_CLIENT_ANY: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-client-any, namespace: default}
spec:
  podSelector: {matchLabels: {app: server}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: client}}}]
"#;

const DENY_ALL: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: all-deny, namespace: default}
spec:
  podSelector: {}
  policyTypes: [Ingress, Egress]
"#;

const CLIENT: &str = "198.18.0.20";
const SERVER: &str = "198.18.0.10";
const CLIENT6: &str = "fd00::20";
const SERVER6: &str = "fd00::10";
const OUTSIDE: &str = "203.0.113.9";

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

struct Lab {
    datapath: BpfDatapath,
    compiled: Compiled,
}

impl Lab {
    fn new(policies: &str) -> Self {
        Self::of(&cluster(policies))
    }

    fn of(snapshot: &Snapshot) -> Self {
        let mut datapath = BpfDatapath::new().expect("load the probe");
        let compiled = compile(
            snapshot,
            &Placement::AllPods { ifindex: 1 },
            &Ids::default(),
        );
        assert!(compiled.errors.is_empty(), "{:?}", compiled.errors);
        datapath.program(&compiled.desired).expect("sync");
        Self { datapath, compiled }
    }

    /// Recompiles with other policies, keeping ids, and syncs the difference.
    fn apply(&mut self, policies: &str) {
        self.apply_snapshot(&cluster(policies));
    }

    /// Recompiles another snapshot, keeping ids, and syncs the difference.
    fn apply_snapshot(&mut self, snapshot: &Snapshot) {
        self.compiled = compile(
            snapshot,
            &Placement::AllPods { ifindex: 1 },
            &self.compiled.ids,
        );
        assert!(self.compiled.errors.is_empty());
        self.datapath.program(&self.compiled.desired).expect("sync");
    }

    fn decide(&mut self, src: &str, dst: &str, protocol: u8, port: u16) -> FlowOutcome {
        self.decide_flow(ProbeFlow {
            src: ip(src),
            dst: ip(dst),
            protocol,
            src_port: 40_000,
            dst_port: port,
            service: None,
        })
    }

    fn decide_flow(&mut self, flow: ProbeFlow) -> FlowOutcome {
        let outcome = self.datapath.decide(&flow).expect("bpf decide");
        let mut model = ModelDatapath::default();
        model.program(&self.compiled.desired).expect("model");
        assert_eq!(
            outcome,
            model.decide(&flow).expect("model decide"),
            "bpf and model disagree on {flow:?}"
        );
        outcome
    }

    fn run(&mut self, direction: Direction, spec: &PacketSpec) -> HookRun {
        self.run_frame(direction, &spec.build())
    }

    fn run_frame(&mut self, direction: Direction, frame: &[u8]) -> HookRun {
        self.datapath.run(direction, frame).expect("test run")
    }

    fn rule_name(&self, id: u32) -> String {
        self.compiled.rules[&id].to_string()
    }

    fn set_flags(&mut self, addr_of: &str, set: u32, clear: u32) {
        let mut desired = self.compiled.desired.clone();
        let state = desired
            .endpoints
            .get_mut(&EndpointKey {
                addr: addr::to_bytes(ip(addr_of)),
            })
            .expect("endpoint");
        state.flags = (state.flags | set) & !clear;
        self.datapath.program(&desired).expect("sync");
    }
}

fn decision(verdict: Verdict, reason: Reason) -> Decision {
    Decision {
        verdict,
        reason,
        rule_id: 0,
    }
}

fn one_event(run: &HookRun) -> (Verdict, Reason, u64) {
    assert_eq!(
        run.events.len(),
        1,
        "expected one event, got {:?}",
        run.events
    );
    let e = &run.events[0];
    (
        Verdict::from_raw(e.verdict).expect("verdict"),
        Reason::from_raw(e.reason).expect("reason"),
        e.packets,
    )
}

#[test]
fn privileged_allowed_flow_names_its_rule_and_replies_pass_through_conntrack() {
    if !privileged("privileged_allowed_flow_names_its_rule_and_replies_pass_through_conntrack") {
        return;
    }
    let mut lab = Lab::new(ALLOW_CLIENT_HTTP);
    let outcome = lab.decide(CLIENT, SERVER, proto::TCP, 80);
    assert_eq!(
        outcome.egress,
        Some(decision(Verdict::Allow, Reason::NotSelected))
    );
    let ingress = outcome.ingress.expect("ingress decided");
    assert_eq!(
        (ingress.verdict, ingress.reason),
        (Verdict::Allow, Reason::AllowedByRule)
    );
    assert_eq!(
        lab.rule_name(ingress.rule_id),
        "default/allow-client-http ingress[0]"
    );
    assert_eq!(
        outcome.reply_egress,
        Some(decision(Verdict::Allow, Reason::Reply))
    );
    assert_eq!(
        outcome.reply_ingress,
        Some(decision(Verdict::Allow, Reason::Reply))
    );

    // A second packet of the flow is established: it passes without an event.
    let first = PacketSpec::first(ip(CLIENT), ip(SERVER), proto::TCP, 40_000, 80);
    let mut next = first.clone();
    next.tcp_flags = 0x10;
    lab.datapath.probe_mut().clear_flow_state().expect("clear");
    assert!(lab.run(Direction::Ingress, &first).passed);
    let run = lab.run(Direction::Ingress, &next);
    assert!(run.passed && run.events.is_empty(), "{run:?}");

    // The same tuple leaving the client, on its own flow: conntrack keys each flow the same for
    // both directions, and reads each back as its first packet went.
    let run = lab.run(Direction::Egress, &first);
    assert!(run.passed, "{run:?}");
    let mut flows: Vec<_> = lab
        .datapath
        .tracked_flows()
        .expect("conntrack")
        .iter()
        .map(|(key, _)| {
            (
                key.direction,
                addr::from_bytes(key.src_addr),
                key.src_port,
                addr::from_bytes(key.dst_addr),
                key.dst_port,
            )
        })
        .collect();
    flows.sort_unstable();
    let first_packet = |direction: Direction| (direction as u8, ip(CLIENT), 40_000, ip(SERVER), 80);
    assert_eq!(
        flows,
        [
            first_packet(Direction::Ingress),
            first_packet(Direction::Egress)
        ]
    );
}

#[test]
fn privileged_isolated_pod_denies_what_no_rule_allows() {
    if !privileged("privileged_isolated_pod_denies_what_no_rule_allows") {
        return;
    }
    let mut lab = Lab::new(ALLOW_CLIENT_HTTP);
    for (src, port, protocol) in [
        (CLIENT, 81, proto::TCP),
        (CLIENT, 80, proto::UDP),
        (OUTSIDE, 80, proto::TCP),
    ] {
        let outcome = lab.decide(src, SERVER, protocol, port);
        assert_eq!(
            outcome.ingress,
            Some(decision(Verdict::Deny, Reason::IsolatedNoMatch)),
            "{src} -> {port}/{protocol}"
        );
        assert_eq!(outcome.reply_egress, None);
    }
}

#[test]
fn privileged_ipv6_flows_are_decided_like_ipv4() {
    if !privileged("privileged_ipv6_flows_are_decided_like_ipv4") {
        return;
    }
    let mut lab = Lab::new(ALLOW_CLIENT_HTTP);
    let allowed = lab.decide(CLIENT6, SERVER6, proto::TCP, 80);
    assert_eq!(allowed.verdict(), Verdict::Allow);
    assert_eq!(
        allowed.ingress.map(|d| d.reason),
        Some(Reason::AllowedByRule)
    );
    assert_eq!(
        allowed.reply_ingress,
        Some(decision(Verdict::Allow, Reason::Reply))
    );
    let denied = lab.decide(CLIENT6, SERVER6, proto::TCP, 443);
    assert_eq!(
        denied.ingress,
        Some(decision(Verdict::Deny, Reason::IsolatedNoMatch))
    );
}

#[test]
fn privileged_endpoint_without_programmed_rules_is_denied_never_allowed() {
    if !privileged("privileged_endpoint_without_programmed_rules_is_denied_never_allowed") {
        return;
    }
    let mut lab = Lab::new("");
    lab.set_flags(SERVER, 0, endpoint_flags::PROGRAMMED);
    let spec = PacketSpec::first(ip(CLIENT), ip(SERVER), proto::TCP, 40_000, 80);
    let run = lab.run(Direction::Ingress, &spec);
    assert!(!run.passed);
    assert_eq!(one_event(&run), (Verdict::Deny, Reason::NotProgrammed, 1));
}

#[test]
fn privileged_unknown_endpoint_is_denied_in_strict_mode_and_passes_in_standard_mode() {
    if !privileged(
        "privileged_unknown_endpoint_is_denied_in_strict_mode_and_passes_in_standard_mode",
    ) {
        return;
    }
    let mut lab = Lab::new("");
    let stranger = PacketSpec::first(ip(CLIENT), ip("198.18.0.99"), proto::TCP, 40_000, 80);
    let run = lab.run(Direction::Ingress, &stranger);
    assert!(!run.passed);
    assert_eq!(one_event(&run), (Verdict::Deny, Reason::UnknownEndpoint, 1));
    let standard = Config {
        flags: config_flags::ALLOW_UNKNOWN_ENDPOINTS,
        ..Config::default()
    };
    lab.datapath
        .probe_mut()
        .set_config(&standard)
        .expect("config");
    assert!(lab.run(Direction::Ingress, &stranger).passed);
}

#[test]
fn privileged_address_on_the_wrong_interface_is_denied_as_spoofed() {
    if !privileged("privileged_address_on_the_wrong_interface_is_denied_as_spoofed") {
        return;
    }
    let mut lab = Lab::new("");
    let mut desired = lab.compiled.desired.clone();
    for state in desired.endpoints.values_mut() {
        state.ifindex = 4242;
    }
    lab.datapath.program(&desired).expect("sync");
    let spec = PacketSpec::first(ip(CLIENT), ip(SERVER), proto::TCP, 40_000, 80);
    let run = lab.run(Direction::Egress, &spec);
    assert!(!run.passed);
    assert_eq!(one_event(&run), (Verdict::Deny, Reason::Spoofed, 1));
}

/// An Admin-tier Deny of the client into the server, over a NetworkPolicy that allows it.
const ADMIN_DENY_CLIENT: &str = r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: no-client}
spec:
  tier: Admin
  priority: 1
  subject: {pods: {namespaceSelector: {}, podSelector: {matchLabels: {app: server}}}}
  ingress:
  - action: Deny
    from: [{pods: {namespaceSelector: {}, podSelector: {matchLabels: {app: client}}}}]
"#;

#[test]
fn privileged_a_denial_by_rule_names_the_rule_in_every_report() {
    if !privileged("privileged_a_denial_by_rule_names_the_rule_in_every_report") {
        return;
    }
    let mut lab = Lab::new(&format!("{ALLOW_CLIENT_ANY}---{ADMIN_DENY_CLIENT}"));
    let spec = PacketSpec::first(ip(CLIENT), ip(SERVER), proto::TCP, 40_000, 80);
    let first = lab.run(Direction::Ingress, &spec);
    assert_eq!(one_event(&first), (Verdict::Deny, Reason::DeniedByRule, 1));
    let rule_id = first.events[0].rule_id;
    let rule = &lab.compiled.rules[&rule_id];
    assert_eq!(
        rule.to_string(),
        "ClusterNetworkPolicy/no-client ingress[0]"
    );
    // The packets counted after the event are flushed naming the same rule.
    for _ in 0..2 {
        assert!(lab.run(Direction::Ingress, &spec).events.is_empty());
    }
    let residual = lab.datapath.probe_mut().flush_denies().expect("flush");
    assert_eq!(residual.len(), 1, "{residual:?}");
    assert_eq!(
        (residual[0].packets, residual[0].rule_id),
        (2, rule_id),
        "{residual:?}"
    );
}

#[test]
fn privileged_denied_flows_are_deduplicated_and_carry_their_packet_count() {
    if !privileged("privileged_denied_flows_are_deduplicated_and_carry_their_packet_count") {
        return;
    }
    let mut lab = Lab::new(DENY_ALL);
    let spec = PacketSpec::first(ip(CLIENT), ip(SERVER), proto::TCP, 40_000, 80);
    let first = lab.run(Direction::Ingress, &spec);
    assert_eq!(
        one_event(&first),
        (Verdict::Deny, Reason::IsolatedNoMatch, 1)
    );
    for _ in 0..4 {
        let run = lab.run(Direction::Ingress, &spec);
        assert!(!run.passed && run.events.is_empty(), "{run:?}");
    }
    // Once the report interval has passed, the next packet reports all it accumulated.
    let short = Config {
        deny_report_interval_ns: 1,
        ..Config::default()
    };
    lab.datapath.probe_mut().set_config(&short).expect("config");
    // The probe's clock moves at the kernel's tick (10 ms at most): past one, the interval has
    // passed.
    std::thread::sleep(std::time::Duration::from_millis(25));
    let run = lab.run(Direction::Ingress, &spec);
    assert_eq!(one_event(&run), (Verdict::Deny, Reason::IsolatedNoMatch, 5));
    let event = &run.events[0];
    assert_eq!(event.bytes, 5 * spec.build().len() as u64);

    // What was counted after the last event is flushed on demand, and then starts afresh.
    lab.datapath
        .probe_mut()
        .set_config(&Config::default())
        .expect("config");
    for _ in 0..3 {
        assert!(lab.run(Direction::Ingress, &spec).events.is_empty());
    }
    let residual = lab.datapath.probe_mut().flush_denies().expect("flush");
    assert_eq!(residual.len(), 1, "{residual:?}");
    assert_eq!(residual[0].packets, 3);
    assert_eq!(
        Reason::from_raw(residual[0].reason),
        Some(Reason::IsolatedNoMatch)
    );
    assert!(
        lab.datapath
            .probe_mut()
            .flush_denies()
            .expect("flush")
            .is_empty()
    );
    assert_eq!(one_event(&lab.run(Direction::Ingress, &spec)).2, 1);
}

#[test]
fn privileged_events_carry_the_monotonic_clock_as_of_the_last_tick() {
    if !privileged("privileged_events_carry_the_monotonic_clock_as_of_the_last_tick") {
        return;
    }
    let mut lab = Lab::new(DENY_ALL);
    // This kernel (6.18, root) runs the clock program: the programs read jiffies.
    let clock = lab.datapath.probe_mut().clock().expect("calibrated");
    assert!(
        (1_000_000..=10_000_000).contains(&clock.tick_ns),
        "{clock:?}"
    );
    for port in 40_000..40_010 {
        let before = monotonic_ns();
        let spec = PacketSpec::first(ip(CLIENT), ip(SERVER), proto::TCP, port, 80);
        let run = lab.run(Direction::Ingress, &spec);
        let after = monotonic_ns();
        let stamped = run.events[0].ts_ns;
        // The clock as of the last tick: at most a tick behind, never ahead (a tick more for
        // the calibration's own rounding).
        assert!(
            stamped <= after && stamped + 2 * clock.tick_ns >= before,
            "{before} <= {stamped} <= {after}, tick {}",
            clock.tick_ns
        );
        std::thread::sleep(std::time::Duration::from_millis(3));
    }
}

#[test]
fn privileged_tightened_policy_cuts_established_flows_and_their_replies() {
    if !privileged("privileged_tightened_policy_cuts_established_flows_and_their_replies") {
        return;
    }
    let mut lab = Lab::new(ALLOW_CLIENT_HTTP);
    let request = PacketSpec::first(ip(CLIENT), ip(SERVER), proto::TCP, 40_000, 80);
    let reply = request.reply();
    assert!(lab.run(Direction::Ingress, &request).passed);
    assert!(lab.run(Direction::Egress, &reply).passed);

    lab.apply(DENY_ALL);
    let run = lab.run(Direction::Ingress, &request);
    assert!(!run.passed);
    assert_eq!(one_event(&run).1, Reason::IsolatedNoMatch);
    assert!(!lab.run(Direction::Egress, &reply).passed);

    // Loosening again lets the flow be decided anew, and allowed.
    lab.apply(ALLOW_CLIENT_HTTP);
    let run = lab.run(Direction::Ingress, &request);
    assert!(run.passed);
    assert_eq!(one_event(&run).1, Reason::AllowedByRule);
}

#[test]
fn privileged_audit_mode_passes_would_be_denials_as_audit_deny() {
    if !privileged("privileged_audit_mode_passes_would_be_denials_as_audit_deny") {
        return;
    }
    let mut lab = Lab::new(DENY_ALL);
    lab.set_flags(SERVER, endpoint_flags::INGRESS_AUDIT, 0);
    let spec = PacketSpec::first(ip(CLIENT), ip(SERVER), proto::TCP, 40_000, 80);
    let run = lab.run(Direction::Ingress, &spec);
    assert!(run.passed);
    assert_eq!(
        one_event(&run),
        (Verdict::AuditDeny, Reason::IsolatedNoMatch, 1)
    );
    let counters = lab.datapath.probe_mut().counters().expect("counters");
    assert_eq!(counters.get(Counter::AuditDeny), 1);
}

#[test]
fn privileged_truncated_and_malformed_packets_never_pass_an_isolated_pod() {
    if !privileged("privileged_truncated_and_malformed_packets_never_pass_an_isolated_pod") {
        return;
    }
    let mut lab = Lab::new(ALLOW_CLIENT_HTTP);
    let allowed = PacketSpec::first(ip(CLIENT), ip(SERVER), proto::TCP, 40_000, 80).build();
    let allowed6 = PacketSpec::first(ip(CLIENT6), ip(SERVER6), proto::TCP, 40_000, 80).build();
    let mut cases: Vec<(String, Vec<u8>)> = Vec::new();
    // Cut inside the TCP header. BPF_PROG_TEST_RUN refuses frames whose IP header is cut
    // (EINVAL), so a broken IP header is tested through its fields below.
    for len in [34, 35, 40, 47] {
        cases.push((format!("IPv4 cut at {len}"), allowed[..len].to_vec()));
    }
    for len in [54, 55, 60, 67] {
        cases.push((format!("IPv6 cut at {len}"), allowed6[..len].to_vec()));
    }
    let mut bad_ihl = allowed.clone();
    bad_ihl[14] = 0x44;
    cases.push(("IPv4 header length 16".into(), bad_ihl));
    let mut bad_version = allowed.clone();
    bad_version[14] = 0x65;
    cases.push(("IP version 6 in an IPv4 frame".into(), bad_version));
    let mut vlan = allowed.clone();
    vlan[12..14].copy_from_slice(&0x8100u16.to_be_bytes());
    cases.push(("VLAN-tagged frame".into(), vlan));
    let mut unknown = allowed.clone();
    unknown[12..14].copy_from_slice(&0x88b5u16.to_be_bytes());
    cases.push(("unknown ethertype".into(), unknown));
    let mut long_chain = PacketSpec::first(ip(CLIENT6), ip(SERVER6), proto::TCP, 40_000, 80);
    long_chain.ipv6_extensions = (0..7).map(|_| (60u8, vec![1, 4, 0, 0, 0, 0])).collect();
    cases.push(("seven IPv6 extension headers".into(), long_chain.build()));

    for (name, frame) in cases {
        lab.datapath.probe_mut().clear_flow_state().expect("clear");
        let run = lab.run_frame(Direction::Ingress, &frame);
        assert!(!run.passed, "{name}: passed");
        for event in &run.events {
            assert_eq!(
                Reason::from_raw(event.reason),
                Some(Reason::Malformed),
                "{name}"
            );
        }
    }
    let counters = lab.datapath.probe_mut().counters().expect("counters");
    assert!(counters.get(Counter::Malformed) >= 13, "{counters:?}");
}

#[test]
fn privileged_ip_options_and_extension_headers_are_skipped_to_the_real_ports() {
    if !privileged("privileged_ip_options_and_extension_headers_are_skipped_to_the_real_ports") {
        return;
    }
    let mut lab = Lab::new(ALLOW_CLIENT_HTTP);
    for (port, allowed) in [(80, true), (81, false)] {
        let mut v4 = PacketSpec::first(ip(CLIENT), ip(SERVER), proto::TCP, 40_000, port);
        v4.ipv4_options = vec![1; 12]; // NOPs
        let mut v6 = PacketSpec::first(ip(CLIENT6), ip(SERVER6), proto::TCP, 40_000, port);
        v6.ipv6_extensions = vec![(0, vec![1, 4, 0, 0, 0, 0]), (60, vec![1, 4, 0, 0, 0, 0])];
        for spec in [v4, v6] {
            lab.datapath.probe_mut().clear_flow_state().expect("clear");
            let run = lab.run(Direction::Ingress, &spec);
            assert_eq!(run.passed, allowed, "{spec:?}");
            let expected = if allowed {
                Reason::AllowedByRule
            } else {
                Reason::IsolatedNoMatch
            };
            assert_eq!(one_event(&run).1, expected);
        }
    }
}

#[test]
fn privileged_later_fragments_follow_the_first_and_unknown_ones_are_denied() {
    if !privileged("privileged_later_fragments_follow_the_first_and_unknown_ones_are_denied") {
        return;
    }
    let mut lab = Lab::new(ALLOW_CLIENT_HTTP);
    for (client, server) in [(CLIENT, SERVER), (CLIENT6, SERVER6)] {
        for (port, allowed) in [(80, true), (81, false)] {
            lab.datapath.probe_mut().clear_flow_state().expect("clear");
            let mut first = PacketSpec::first(ip(client), ip(server), proto::TCP, 40_000, port);
            first.fragment = Some(Fragment {
                id: 77,
                offset: 0,
                more: true,
            });
            let mut later = first.clone();
            later.fragment = Some(Fragment {
                id: 77,
                offset: 185,
                more: false,
            });
            assert_eq!(lab.run(Direction::Ingress, &first).passed, allowed);
            let run = lab.run(Direction::Ingress, &later);
            assert_eq!(run.passed, allowed, "{client} later fragment, port {port}");
            if allowed {
                assert!(run.events.is_empty(), "{run:?}");
            }
        }
        // A later fragment whose first fragment never came: its ports are unknown.
        lab.datapath.probe_mut().clear_flow_state().expect("clear");
        let mut orphan = PacketSpec::first(ip(client), ip(server), proto::TCP, 40_000, 80);
        orphan.fragment = Some(Fragment {
            id: 78,
            offset: 185,
            more: false,
        });
        let run = lab.run(Direction::Ingress, &orphan);
        assert!(!run.passed);
        assert_eq!(one_event(&run), (Verdict::Deny, Reason::Fragment, 1));
    }
}

#[test]
fn privileged_protocols_without_ports_need_a_rule_without_ports() {
    if !privileged("privileged_protocols_without_ports_need_a_rule_without_ports") {
        return;
    }
    const GRE: u8 = 47;
    let mut lab = Lab::new(ALLOW_CLIENT_HTTP);
    for protocol in [GRE, proto::ICMP] {
        let outcome = lab.decide(CLIENT, SERVER, protocol, 0);
        assert_eq!(
            outcome.ingress,
            Some(decision(Verdict::Deny, Reason::IsolatedNoMatch)),
            "protocol {protocol}"
        );
    }
    lab.apply(ALLOW_CLIENT_ANY);
    for protocol in [GRE, proto::ICMP, proto::SCTP] {
        let outcome = lab.decide(CLIENT, SERVER, protocol, 0);
        assert_eq!(outcome.verdict(), Verdict::Allow, "protocol {protocol}");
    }
    let ping = lab.decide(CLIENT6, SERVER6, proto::ICMPV6, 0);
    assert_eq!(
        ping.reply_ingress,
        Some(decision(Verdict::Allow, Reason::Reply)),
        "echo reply through conntrack"
    );
}

/// The client may reach the server's port 80 and nothing may reach the client.
const CLIENT_EGRESS_ONLY: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: client-out, namespace: default}
spec:
  podSelector: {matchLabels: {app: client}}
  policyTypes: [Ingress, Egress]
  egress:
  - to: [{podSelector: {matchLabels: {app: server}}}]
    ports: [{protocol: TCP, port: 80}]
"#;

#[test]
fn privileged_icmp_errors_about_tracked_flows_pass_as_related() {
    if !privileged("privileged_icmp_errors_about_tracked_flows_pass_as_related") {
        return;
    }
    let mut lab = Lab::new(CLIENT_EGRESS_ONLY);
    for (client, server, router, too_big) in [
        (CLIENT, SERVER, "203.0.113.1", 3u8),
        (CLIENT6, SERVER6, "2001:db8::1", 2u8),
    ] {
        lab.datapath.probe_mut().clear_flow_state().expect("clear");
        let request = PacketSpec::first(ip(client), ip(server), proto::TCP, 40_000, 80);
        let error = PacketSpec::icmp_error(ip(router), too_big, request.clone());
        // Before the flow exists, the error is an ICMP packet like any other: denied.
        let run = lab.run(Direction::Ingress, &error);
        assert!(!run.passed, "{client}: unsolicited error passed");
        assert_eq!(one_event(&run).1, Reason::IsolatedNoMatch);

        assert!(lab.run(Direction::Egress, &request).passed);
        let run = lab.run(Direction::Ingress, &error);
        assert!(run.passed && run.events.is_empty(), "{client}: {run:?}");

        // An error quoting a flow that was never allowed stays denied.
        let other = PacketSpec::first(ip(client), ip(server), proto::TCP, 40_001, 443);
        let unrelated = PacketSpec::icmp_error(ip(router), too_big, other);
        assert!(!lab.run(Direction::Ingress, &unrelated).passed);
    }
    // After a policy change the flow must be decided again before its errors are related.
    lab.apply(DENY_ALL);
    let request = PacketSpec::first(ip(CLIENT), ip(SERVER), proto::TCP, 40_000, 80);
    let error = PacketSpec::icmp_error(ip("203.0.113.1"), 3, request);
    assert!(!lab.run(Direction::Ingress, &error).passed);
}

#[test]
fn privileged_icmp_errors_longer_than_a_router_sends_are_not_related() {
    if !privileged("privileged_icmp_errors_longer_than_a_router_sends_are_not_related") {
        return;
    }
    let mut lab = Lab::new(CLIENT_EGRESS_ONLY);
    // IP bytes of an error quoting an IP header and 8 bytes, without payload: IPv4 20 + 8 +
    // 20 + 8, IPv6 40 + 8 + 40 + 8. Routers send at most 576 (IPv4) and 1280 (IPv6) bytes.
    for (client, server, router, too_big, bare, limit) in [
        (CLIENT, SERVER, "203.0.113.1", 3u8, 56usize, 576usize),
        (CLIENT6, SERVER6, "2001:db8::1", 2u8, 96, 1280),
    ] {
        lab.datapath.probe_mut().clear_flow_state().expect("clear");
        let request = PacketSpec::first(ip(client), ip(server), proto::TCP, 40_000, 80);
        assert!(lab.run(Direction::Egress, &request).passed);
        let mut error = PacketSpec::icmp_error(ip(router), too_big, request.clone());
        error.payload_len = limit - bare;
        assert_eq!(error.build().len(), 14 + limit);
        let run = lab.run(Direction::Ingress, &error);
        assert!(run.passed && run.events.is_empty(), "{client}: {run:?}");
        // One byte more is no router's error: an ICMP packet like any other, denied.
        error.payload_len += 1;
        let run = lab.run(Direction::Ingress, &error);
        assert!(
            !run.passed,
            "{client}: an oversized error passed as related"
        );
        assert_eq!(one_event(&run).1, Reason::IsolatedNoMatch);
    }
}

/// Entries the programs did not write (a verdict or reason byte they do not know, or a verdict
/// that does not pass) vouch for nothing: the packet is decided by policy, and denied here.
#[test]
fn privileged_conntrack_and_fragment_entries_with_unknown_bytes_never_pass_a_packet() {
    if !privileged(
        "privileged_conntrack_and_fragment_entries_with_unknown_bytes_never_pass_a_packet",
    ) {
        return;
    }
    let mut lab = Lab::new(DENY_ALL);
    let server = lab.compiled.desired.endpoints[&EndpointKey {
        addr: addr::to_bytes(ip(SERVER)),
    }];
    let key = FlowKey {
        ifindex: server.ifindex,
        direction: Direction::Ingress as u8,
        protocol: proto::TCP,
        _pad: [0; 2],
        src_addr: addr::to_bytes(ip(CLIENT)),
        dst_addr: addr::to_bytes(ip(SERVER)),
        src_port: 40_000,
        dst_port: 80,
    };
    let mut next = PacketSpec::first(ip(CLIENT), ip(SERVER), proto::TCP, 40_000, 80);
    next.tcp_flags = 0x10;
    // The server's own packet of the flow, as quoted by an error sent back to it.
    let quoted = next.reply();
    let error = PacketSpec::icmp_error(ip("203.0.113.1"), 3, quoted);
    let ingress = Direction::Ingress as u8;
    let allow = Verdict::Allow as u8;
    for (verdict, direction) in [
        (0u8, ingress),
        (Verdict::Deny as u8, ingress),
        (9, ingress),
        (allow, 0),
        (allow, 9),
    ] {
        let entry = CtEntry {
            created_ns: 0,
            last_seen_ns: u64::MAX,
            packets: 1,
            bytes: 60,
            rule_id: 0,
            revision: server.revision,
            verdict,
            reason: Reason::AllowedByRule as u8,
            tcp_flags: 0x02,
            direction,
            first_len: 60,
            endpoint: server.id,
        };
        lab.datapath.probe_mut().clear_flow_state().expect("clear");
        lab.datapath
            .probe_mut()
            .write_conntrack(&key, &entry)
            .expect("write");
        let run = lab.run(Direction::Ingress, &error);
        assert!(
            !run.passed,
            "verdict byte {verdict}, direction byte {direction}: error passed as related"
        );
        let run = lab.run(Direction::Ingress, &next);
        assert!(
            !run.passed,
            "verdict byte {verdict}, direction byte {direction}: packet passed"
        );
        assert_eq!(one_event(&run).1, Reason::IsolatedNoMatch);
    }

    let frag_key = FragKey {
        endpoint: server.id,
        direction: Direction::Ingress as u8,
        protocol: proto::TCP,
        _pad: [0; 2],
        id: 77,
        src_addr: addr::to_bytes(ip(CLIENT)),
        dst_addr: addr::to_bytes(ip(SERVER)),
    };
    let mut later = PacketSpec::first(ip(CLIENT), ip(SERVER), proto::TCP, 40_000, 80);
    later.fragment = Some(Fragment {
        id: 77,
        offset: 185,
        more: false,
    });
    for (verdict, reason) in [
        (0u8, Reason::AllowedByRule as u8),
        (Verdict::Allow as u8, 0),
        (Verdict::Allow as u8, 200),
    ] {
        lab.datapath.probe_mut().clear_flow_state().expect("clear");
        let entry = FragEntry {
            verdict,
            reason,
            _pad: [0; 2],
            rule_id: 0,
        };
        lab.datapath
            .probe_mut()
            .write_fragment(&frag_key, &entry)
            .expect("write");
        let run = lab.run(Direction::Ingress, &later);
        assert!(!run.passed, "fragment entry ({verdict}, {reason}) passed");
        assert_eq!(one_event(&run).1, Reason::Fragment);
    }
}

/// Allows the server's port 80 from 198.18.0.0/16 and the client's egress to 203.0.113.0/24:
/// IPv4 blocks only.
const IPV4_BLOCKS: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: v4-in, namespace: default}
spec:
  podSelector: {matchLabels: {app: server}}
  policyTypes: [Ingress]
  ingress:
  - from: [{ipBlock: {cidr: 198.18.0.0/16}}]
    ports: [{protocol: TCP, port: 80}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: v4-out, namespace: default}
spec:
  podSelector: {matchLabels: {app: client}}
  policyTypes: [Egress]
  egress:
  - to: [{ipBlock: {cidr: 203.0.113.0/24}}]
"#;

/// An IPv6 packet with an IPv4-mapped address is IPv6, routed by IPv6 routes, never to or from
/// the IPv4 host it names: it must not match IPv4 ipBlocks, pod addresses or flows (the maps
/// store IPv4 in that very form). The probe and the model deny it as malformed.
#[test]
fn privileged_ipv4_mapped_ipv6_addresses_never_match_ipv4_blocks_or_endpoints() {
    if !privileged("privileged_ipv4_mapped_ipv6_addresses_never_match_ipv4_blocks_or_endpoints") {
        return;
    }
    let mut lab = Lab::new(IPV4_BLOCKS);
    // The IPv4 forms are allowed: the policies do what they say.
    assert_eq!(
        lab.decide("198.18.0.99", SERVER, proto::TCP, 80).verdict(),
        Verdict::Allow
    );
    assert_eq!(
        lab.decide(CLIENT, "203.0.113.9", proto::UDP, 53).verdict(),
        Verdict::Allow
    );
    let malformed = Some(decision(Verdict::Deny, Reason::Malformed));
    // From a mapped source to the IPv6 server: the IPv4 block must not allow it.
    let outcome = lab.decide("::ffff:198.18.0.99", SERVER6, proto::TCP, 80);
    assert_eq!(outcome.ingress, malformed);
    // The client's IPv6 address to a mapped destination: the IPv4 block must not allow it.
    let outcome = lab.decide(CLIENT6, "::ffff:203.0.113.9", proto::UDP, 53);
    assert_eq!(outcome.egress, malformed);
    // Mapped forms of both IPv4 pods: not the IPv4 pods' flows.
    let outcome = lab.decide("::ffff:198.18.0.20", "::ffff:198.18.0.10", proto::TCP, 80);
    assert_eq!(outcome.egress, malformed);
    let run = lab.run(
        Direction::Ingress,
        &PacketSpec::first(
            ip("::ffff:198.18.0.20"),
            ip("::ffff:198.18.0.10"),
            proto::TCP,
            40_000,
            80,
        ),
    );
    assert!(!run.passed);
    assert_eq!(one_event(&run).1, Reason::Malformed);
    // Nor does a tracked IPv4 flow let its mapped twin through.
    lab.datapath.probe_mut().clear_flow_state().expect("clear");
    let v4 = PacketSpec::first(ip("198.18.0.99"), ip(SERVER), proto::TCP, 40_000, 80);
    assert!(lab.run(Direction::Ingress, &v4).passed);
    let mut twin = v4.clone();
    twin.src = ip("::ffff:198.18.0.99");
    twin.dst = ip("::ffff:198.18.0.10");
    twin.tcp_flags = 0x10;
    assert!(!lab.run(Direction::Ingress, &twin).passed);
}

#[test]
fn privileged_arp_and_neighbor_discovery_pass_without_a_decision() {
    if !privileged("privileged_arp_and_neighbor_discovery_pass_without_a_decision") {
        return;
    }
    let mut lab = Lab::new(DENY_ALL);
    let mut arp = vec![0xff; 6];
    arp.extend_from_slice(&[0x02, 0, 0, 0, 0, 1, 0x08, 0x06]);
    arp.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    arp.extend_from_slice(&[0; 20]);
    let run = lab.run_frame(Direction::Ingress, &arp);
    assert!(run.passed && run.events.is_empty());

    let mut solicit = PacketSpec::first(ip(CLIENT6), ip(SERVER6), proto::ICMPV6, 0, 0);
    solicit.icmp_type = 135;
    let mut frame = solicit.build();
    frame[14 + 7] = 255; // hop limit
    let run = lab.run_frame(Direction::Ingress, &frame);
    assert!(run.passed && run.events.is_empty());
    // The same message routed from afar (hop limit below 255) is an ordinary, denied packet.
    frame[14 + 7] = 64;
    assert!(!lab.run_frame(Direction::Ingress, &frame).passed);
    let counters = lab.datapath.probe_mut().counters().expect("counters");
    assert_eq!(counters.get(Counter::Infrastructure), 2);
    assert_eq!(counters.get(Counter::RingbufReserveFailed), 0);
}

/// The node's own address and the Service of these tests' server (ClusterIP 198.19.0.10, port
/// 8080 → the server's named port `http`).
const NODE: &str = "198.18.0.1";
const NODE6: &str = "fd00::1";
const SERVICE_IP: &str = "198.19.0.10";

const SERVER_SERVICE: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  clusterIP: 198.19.0.10
  clusterIPs: [198.19.0.10]
  selector: {app: server}
  ports: [{port: 8080, protocol: TCP, targetPort: http}]
"#;

const CLIENT_TO_SERVER_HTTP: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: client-to-server, namespace: default}
spec:
  podSelector: {matchLabels: {app: client}}
  policyTypes: [Ingress, Egress]
  egress:
  - to: [{podSelector: {matchLabels: {app: server}}}]
    ports: [{protocol: TCP, port: 80}]
"#;

fn through_service(port: u16) -> ProbeFlow {
    ProbeFlow {
        src: ip(CLIENT),
        dst: ip(SERVER),
        protocol: proto::TCP,
        src_port: 40_000,
        dst_port: 80,
        service: Some(ServiceHop {
            addr: ip(SERVICE_IP),
            port,
        }),
    }
}

#[test]
fn privileged_node_addresses_pass_ingress_as_from_node_unless_turned_off() {
    if !privileged("privileged_node_addresses_pass_ingress_as_from_node_unless_turned_off") {
        return;
    }
    let mut snapshot = cluster(DENY_ALL);
    snapshot.node_addresses = vec![ip(NODE), ip(NODE6)];
    let mut lab = Lab::of(&snapshot);
    for (node, server) in [(NODE, SERVER), (NODE6, SERVER6)] {
        let outcome = lab.decide(node, server, proto::TCP, 80);
        assert_eq!(
            outcome.ingress,
            Some(decision(Verdict::Allow, Reason::FromNode)),
            "{node} -> {server}"
        );
        assert_eq!(
            outcome.reply_egress,
            Some(decision(Verdict::Allow, Reason::Reply))
        );
    }
    // The event names the allowance.
    lab.datapath.probe_mut().clear_flow_state().expect("clear");
    let first = PacketSpec::first(ip(NODE), ip(SERVER), proto::TCP, 41_000, 80);
    let run = lab.run(Direction::Ingress, &first);
    assert!(run.passed);
    assert_eq!(one_event(&run).1, Reason::FromNode);
    // Only ingress: the pod's own connection to the node is still its egress, and denied.
    let outcome = lab.decide(SERVER, NODE, proto::TCP, 10_250);
    assert_eq!(
        outcome.egress,
        Some(decision(Verdict::Deny, Reason::IsolatedNoMatch))
    );
    // Another address than the node's gets nothing from it.
    let outcome = lab.decide(OUTSIDE, SERVER, proto::TCP, 80);
    assert_eq!(
        outcome.ingress,
        Some(decision(Verdict::Deny, Reason::IsolatedNoMatch))
    );

    // Turned off (the agent hands the compiler no node addresses): policy decides.
    snapshot.node_addresses.clear();
    lab.apply_snapshot(&snapshot);
    let outcome = lab.decide(NODE, SERVER, proto::TCP, 80);
    assert_eq!(
        outcome.ingress,
        Some(decision(Verdict::Deny, Reason::IsolatedNoMatch))
    );
}

#[test]
fn privileged_cluster_ip_passes_when_every_backend_is_allowed_and_replies_come_back_from_it() {
    if !privileged(
        "privileged_cluster_ip_passes_when_every_backend_is_allowed_and_replies_come_back_from_it",
    ) {
        return;
    }
    let mut lab = Lab::new(&format!("{CLIENT_TO_SERVER_HTTP}\n---\n{SERVER_SERVICE}"));
    let outcome = lab.decide_flow(through_service(8080));
    let egress = outcome.egress.expect("egress decided");
    assert_eq!(
        (egress.verdict, egress.reason),
        (Verdict::Allow, Reason::AllowedByRule)
    );
    assert_eq!(
        lab.rule_name(egress.rule_id),
        "default/client-to-server egress[0]"
    );
    assert_eq!(
        outcome.reply_ingress,
        Some(decision(Verdict::Allow, Reason::Reply)),
        "the reply from the ClusterIP passes through conntrack"
    );

    // On the wire: the client's SYN to the ClusterIP, then the reply from it.
    lab.datapath.probe_mut().clear_flow_state().expect("clear");
    let sent = PacketSpec::first(ip(CLIENT), ip(SERVICE_IP), proto::TCP, 41_000, 8080);
    assert!(lab.run(Direction::Egress, &sent).passed);
    let mut reply = sent.reply();
    reply.tcp_flags = 0x12;
    let run = lab.run(Direction::Ingress, &reply);
    assert!(run.passed, "{run:?}");
    // An ICMP error from the ClusterIP about the connection (kube-proxy's reject, a path MTU
    // error after the un-DNAT) quotes the client's packet to the ClusterIP: related.
    let error = PacketSpec::icmp_error(ip(SERVICE_IP), 3, sent.clone());
    let run = lab.run(Direction::Ingress, &error);
    assert!(run.passed && run.events.is_empty(), "{run:?}");
    // The ClusterIP on a port the Service does not have: nothing allows it.
    let other = PacketSpec::first(ip(CLIENT), ip(SERVICE_IP), proto::TCP, 41_001, 80);
    let run = lab.run(Direction::Egress, &other);
    assert!(!run.passed);
    assert_eq!(one_event(&run).1, Reason::IsolatedNoMatch);
    // Port 8080 straight to the pod is not what the rule allows (it allows the targetPort).
    let outcome = lab.decide(CLIENT, SERVER, proto::TCP, 8080);
    assert_eq!(
        outcome.egress,
        Some(decision(Verdict::Deny, Reason::IsolatedNoMatch))
    );
}

#[test]
fn privileged_cluster_ip_with_a_denied_backend_is_denied_for_every_connection() {
    if !privileged("privileged_cluster_ip_with_a_denied_backend_is_denied_for_every_connection") {
        return;
    }
    // A second backend that the client's policy does not allow.
    let other_backend = r#"
apiVersion: v1
kind: Pod
metadata: {name: server-2, namespace: default, labels: {app: server, canary: "true"}}
spec:
  containers:
  - name: s
    image: nginx
    ports: [{name: http, containerPort: 80, protocol: TCP}]
status: {phase: Running, podIP: 198.18.0.11, podIPs: [{ip: 198.18.0.11}]}
"#;
    let only_first = CLIENT_TO_SERVER_HTTP.replace(
        "podSelector: {matchLabels: {app: server}}",
        "podSelector: {matchLabels: {app: server}, matchExpressions: [{key: canary, operator: DoesNotExist}]}",
    );
    let mut lab = Lab::new(&format!(
        "{only_first}\n---\n{SERVER_SERVICE}\n---\n{other_backend}"
    ));
    let outcome = lab.decide_flow(through_service(8080));
    assert_eq!(
        outcome.egress,
        Some(decision(Verdict::Deny, Reason::ServiceBackendsDenied))
    );
    let sent = PacketSpec::first(ip(CLIENT), ip(SERVICE_IP), proto::TCP, 41_000, 8080);
    let run = lab.run(Direction::Egress, &sent);
    assert!(!run.passed);
    assert_eq!(one_event(&run).1, Reason::ServiceBackendsDenied);
    // The allowed backend stays reachable by its own address.
    let outcome = lab.decide(CLIENT, SERVER, proto::TCP, 80);
    assert_eq!(outcome.egress.map(|d| d.verdict), Some(Verdict::Allow));
}

/// Small policy maps, for the hand-built states below (and to load the probe with a capacity).
const SMALL: Capacity = Capacity {
    endpoints: 16,
    peers: 32,
    policy: 32,
    rulesets: 8,
    node_addrs: 4,
};

/// A peer-trie entry of `prefix` (an IPv4 prefix, `a.b.c.d/len`) → `id`, falling back to
/// `fallback`.
fn peer(prefix: &str, id: u32, fallback: u32) -> (PeerEntryKey, PeerIdentity) {
    let (address, len) = prefix.split_once('/').expect("prefix");
    let address = ip(address);
    let len: u8 = len.parse().expect("prefix length");
    (
        PeerEntryKey {
            prefix_len: u32::from(addr::mapped_prefix_len(address, len)),
            key: PeerKey {
                addr: addr::to_bytes(address),
            },
        },
        PeerIdentity { id, fallback },
    )
}

/// A rule set of one rule: `protocol` on `port` (every port and protocol for
/// [`ANY_PROTOCOL`]).
fn ruleset(rule_id: u32, protocol: u8, port: u16) -> PolicyValue {
    let mut value = PolicyValue::EMPTY;
    value.count = 1;
    value.rules[0] = PortRule {
        rule_id,
        port_lo: port,
        port_hi: port,
        protocol,
        action: port_action::ALLOW,
        tier: 0,
        _pad: 0,
    };
    value
}

fn endpoint(
    id: u32,
    flags: u32,
    ingress_set: u32,
    egress_set: u32,
    revision: u64,
) -> EndpointState {
    EndpointState {
        id,
        ifindex: 1,
        flags: endpoint_flags::PROGRAMMED | flags,
        ingress_set,
        egress_set,
        _pad: 0,
        revision,
    }
}

fn endpoint_key(address: &str) -> EndpointKey {
    EndpointKey {
        addr: addr::to_bytes(ip(address)),
    }
}

/// The verdict, reason and rule of a first packet, from its event.
fn first_decision(run: &HookRun) -> (Verdict, Reason, u32) {
    let (verdict, reason, _) = one_event(run);
    assert_eq!(verdict.passes(), run.passed);
    (verdict, reason, run.events[0].rule_id)
}

/// Policy set of the server's ingress and of the client's egress in [`identities_lab`].
const SERVER_IN: u32 = 7;
const CLIENT_OUT: u32 = 8;
/// Rule ids of the two rule sets.
const ANY_RULE: u32 = 100;
const SERVICE_PORT_RULE: u32 = 200;

/// A state written by hand, as the compiler might: the server is ingress-isolated (set 7), the
/// client egress-isolated (set 8). The peer trie has no `::/0` nor `0.0.0.0/0`, so addresses
/// outside its prefixes miss it.
fn identities_lab() -> DesiredState {
    let mut desired = DesiredState::default();
    desired.endpoints.insert(
        endpoint_key(SERVER),
        endpoint(1, endpoint_flags::INGRESS_ISOLATED, SERVER_IN, 0, 1),
    );
    desired.endpoints.insert(
        endpoint_key(CLIENT),
        endpoint(2, endpoint_flags::EGRESS_ISOLATED, 0, CLIENT_OUT, 1),
    );
    desired.peers.extend([
        peer("10.0.0.0/24", 10, 0),
        peer("10.0.1.0/24", 11, 0),
        // The Service range, and three ClusterIPs in it with identities of their own.
        peer("198.19.0.0/16", 12, 0),
        peer("198.19.0.10/32", 20, 12),
        peer("198.19.0.11/32", 21, 12),
        peer("198.19.0.12/32", 22, 0),
    ]);
    desired.policy.extend([
        (
            PolicyKey {
                set: SERVER_IN,
                peer: 10,
            },
            PolicyEntry { ruleset: 1 },
        ),
        // An entry naming the empty rule set: nothing allowed.
        (
            PolicyKey {
                set: SERVER_IN,
                peer: 11,
            },
            PolicyEntry { ruleset: 0 },
        ),
        (
            PolicyKey {
                set: CLIENT_OUT,
                peer: 12,
            },
            PolicyEntry { ruleset: 2 },
        ),
        // A ClusterIP whose entry stops the fallback to the range's.
        (
            PolicyKey {
                set: CLIENT_OUT,
                peer: 21,
            },
            PolicyEntry { ruleset: 0 },
        ),
    ]);
    desired.rulesets.extend([
        (1, ruleset(ANY_RULE, ANY_PROTOCOL, 0)),
        (2, ruleset(SERVICE_PORT_RULE, proto::TCP, 8080)),
    ]);
    desired
}

#[test]
fn privileged_peer_identities_decide_through_policy_entries_and_fallbacks() {
    if !privileged("privileged_peer_identities_decide_through_policy_entries_and_fallbacks") {
        return;
    }
    let mut datapath = BpfDatapath::with_capacity(&SMALL).expect("load the probe");
    assert_eq!(datapath.probe_mut().capacity(), SMALL);
    let desired = identities_lab();
    datapath.program(&desired).expect("sync");
    let allowed = |rule| (Verdict::Allow, Reason::AllowedByRule, rule);
    let denied = (Verdict::Deny, Reason::IsolatedNoMatch, 0);
    let cases = [
        // Ingress of the server, by the peer's identity.
        (
            Direction::Ingress,
            "10.0.0.7",
            SERVER,
            80,
            allowed(ANY_RULE),
        ),
        // An entry naming rule set 0.
        (Direction::Ingress, "10.0.1.7", SERVER, 80, denied),
        // No prefix of the trie holds the address: fail closed.
        (Direction::Ingress, OUTSIDE, SERVER, 80, denied),
        // A ClusterIP without an entry of its own is what the range around it is.
        (
            Direction::Egress,
            CLIENT,
            "198.19.0.10",
            8080,
            allowed(SERVICE_PORT_RULE),
        ),
        (Direction::Egress, CLIENT, "198.19.0.10", 80, denied),
        // A ClusterIP whose entry names rule set 0: its fallback is not looked at.
        (Direction::Egress, CLIENT, "198.19.0.11", 8080, denied),
        // A ClusterIP without an entry nor a fallback.
        (Direction::Egress, CLIENT, "198.19.0.12", 8080, denied),
        (
            Direction::Egress,
            CLIENT,
            "198.19.0.99",
            8080,
            allowed(SERVICE_PORT_RULE),
        ),
        (Direction::Egress, CLIENT, OUTSIDE, 8080, denied),
    ];
    for (direction, src, dst, port, expected) in cases {
        let spec = PacketSpec::first(ip(src), ip(dst), proto::TCP, 40_000, port);
        let run = datapath.run(direction, &spec.build()).expect("test run");
        assert_eq!(
            first_decision(&run),
            expected,
            "{} {src} -> {dst}:{port}",
            direction.name()
        );
        // The userspace lookup chain agrees.
        let (own, peer, set) = match direction {
            Direction::Ingress => (dst, src, SERVER_IN),
            Direction::Egress => (src, dst, CLIENT_OUT),
        };
        assert_eq!(desired.endpoints[&endpoint_key(own)].set(direction), set);
        let model = desired
            .rules_for(set, addr::to_bytes(ip(peer)))
            .and_then(|value| value.matching_rule(proto::TCP, port, &mut 0))
            .map_or(0, |rule| rule.rule_id);
        assert_eq!(model, expected.2, "model: {src} -> {dst}:{port}");
    }
}

/// The server of [`identities_lab`] isolated both ways, its egress allowing nothing: its
/// replies pass only through conntrack.
fn server_isolated_both_ways(revision: u64) -> EndpointState {
    endpoint(
        1,
        endpoint_flags::INGRESS_ISOLATED | endpoint_flags::EGRESS_ISOLATED,
        SERVER_IN,
        9,
        revision,
    )
}

#[test]
fn privileged_a_syn_without_ack_is_never_taken_for_a_reply() {
    if !privileged("privileged_a_syn_without_ack_is_never_taken_for_a_reply") {
        return;
    }
    let mut datapath = BpfDatapath::with_capacity(&SMALL).expect("load the probe");
    let mut desired = identities_lab();
    desired
        .endpoints
        .insert(endpoint_key(SERVER), server_isolated_both_ways(1));
    datapath.program(&desired).expect("sync");
    let request = PacketSpec::first(ip("10.0.0.7"), ip(SERVER), proto::TCP, 40_000, 80);
    let run = datapath
        .run(Direction::Ingress, &request.build())
        .expect("run");
    assert_eq!(first_decision(&run).1, Reason::AllowedByRule);
    // The server's SYN on the reversed tuple (a simultaneous open) is decided by policy.
    let mut syn = request.reply();
    syn.tcp_flags = 0x02;
    let run = datapath.run(Direction::Egress, &syn.build()).expect("run");
    assert_eq!(first_decision(&run).1, Reason::IsolatedNoMatch);
    // Its SYN-ACK is the reply.
    let run = datapath
        .run(Direction::Egress, &request.reply().build())
        .expect("run");
    assert!(run.passed && run.events.is_empty(), "{run:?}");
}

#[test]
fn privileged_a_new_revision_decides_tracked_flows_again() {
    if !privileged("privileged_a_new_revision_decides_tracked_flows_again") {
        return;
    }
    let mut datapath = BpfDatapath::with_capacity(&SMALL).expect("load the probe");
    let mut desired = identities_lab();
    let revise = |desired: &mut DesiredState, revision: u64| {
        desired
            .endpoints
            .insert(endpoint_key(SERVER), server_isolated_both_ways(revision));
    };
    // Revisions above 2^32 whose low 32 bits are equal: a comparison of truncated revisions
    // would take them for one.
    let revisions = [(1u64 << 32) | 5, (2u64 << 32) | 5, (3u64 << 32) | 5];
    revise(&mut desired, revisions[0]);
    datapath.program(&desired).expect("sync");
    let flows = [40_000, 40_001].map(|port| {
        let request = PacketSpec::first(ip("10.0.0.7"), ip(SERVER), proto::TCP, port, 80);
        let mut next = request.clone();
        next.tcp_flags = 0x10;
        let mut reply = request.reply();
        reply.tcp_flags = 0x10;
        (request, next, reply)
    });
    for (request, _, reply) in &flows {
        let first = datapath
            .run(Direction::Ingress, &request.build())
            .expect("run");
        assert_eq!(first_decision(&first).1, Reason::AllowedByRule);
        let back = datapath
            .run(Direction::Egress, &reply.build())
            .expect("run");
        assert!(back.passed && back.events.is_empty(), "{back:?}");
    }

    // A new revision under which the flow is still allowed: it is decided again, silently.
    revise(&mut desired, revisions[1]);
    datapath.program(&desired).expect("sync");
    let (_, next, reply) = &flows[0];
    for (direction, spec) in [(Direction::Ingress, next), (Direction::Egress, reply)] {
        let run = datapath.run(direction, &spec.build()).expect("run");
        assert!(run.passed && run.events.is_empty(), "{run:?}");
    }

    // Policy revoked under the same revision: tracked flows keep passing (a revision is what
    // makes the probe decide them again), new flows are denied.
    desired.policy.insert(
        PolicyKey {
            set: SERVER_IN,
            peer: 10,
        },
        PolicyEntry { ruleset: 0 },
    );
    datapath.program(&desired).expect("sync");
    let run = datapath
        .run(Direction::Ingress, &next.build())
        .expect("run");
    assert!(run.passed && run.events.is_empty(), "{run:?}");
    let other = PacketSpec::first(ip("10.0.0.7"), ip(SERVER), proto::TCP, 40_002, 80);
    let run = datapath
        .run(Direction::Ingress, &other.build())
        .expect("run");
    assert_eq!(first_decision(&run).1, Reason::IsolatedNoMatch);

    // The next revision: the first flow's request and the second flow's reply (its tracked
    // entry found reversed) are decided again, and denied.
    revise(&mut desired, revisions[2]);
    datapath.program(&desired).expect("sync");
    let run = datapath
        .run(Direction::Ingress, &next.build())
        .expect("run");
    assert_eq!(first_decision(&run).1, Reason::IsolatedNoMatch);
    let (_, _, reply) = &flows[1];
    let run = datapath
        .run(Direction::Egress, &reply.build())
        .expect("run");
    assert_eq!(first_decision(&run).1, Reason::IsolatedNoMatch);
}

/// A packet of a known flow is decided on the flow's entry, without the endpoint's lookup,
/// while the endpoint keeps the revision the flow was decided under. What the endpoint checks
/// deny still cuts the flow at once, the revision unchanged: its address removed (while the
/// endpoint's other address keeps the revision), the endpoint written not programmed, or moved
/// to another interface.
#[test]
fn privileged_endpoint_checks_cut_known_flows_under_an_unchanged_revision() {
    if !privileged("privileged_endpoint_checks_cut_known_flows_under_an_unchanged_revision") {
        return;
    }
    let mut datapath = BpfDatapath::with_capacity(&SMALL).expect("load the probe");
    let mut desired = identities_lab();
    let server = desired.endpoints[&endpoint_key(SERVER)];
    desired.endpoints.insert(endpoint_key(SERVER6), server);
    datapath.program(&desired).expect("sync");
    let flows = [40_000, 40_001, 40_002].map(|port| {
        let request = PacketSpec::first(ip("10.0.0.7"), ip(SERVER), proto::TCP, port, 80);
        let run = datapath
            .run(Direction::Ingress, &request.build())
            .expect("run");
        assert_eq!(first_decision(&run).1, Reason::AllowedByRule);
        let mut next = request;
        next.tcp_flags = 0x10;
        let run = datapath
            .run(Direction::Ingress, &next.build())
            .expect("run");
        assert!(run.passed && run.events.is_empty(), "{run:?}");
        next
    });
    let mut expect = |desired: &DesiredState, flow: &PacketSpec, reason: Option<Reason>| {
        datapath.program(desired).expect("sync");
        let run = datapath
            .run(Direction::Ingress, &flow.build())
            .expect("run");
        match reason {
            Some(reason) => assert_eq!(first_decision(&run), (Verdict::Deny, reason, 0)),
            None => assert!(run.passed && run.events.is_empty(), "{run:?}"),
        }
    };

    // The address removed; the server's IPv6 address keeps the revision.
    desired.endpoints.remove(&endpoint_key(SERVER));
    expect(&desired, &flows[0], Some(Reason::UnknownEndpoint));
    // Back with the same revision: the flow passes on its entry, as the endpoint says.
    desired.endpoints.insert(endpoint_key(SERVER), server);
    expect(&desired, &flows[0], None);

    let closed = EndpointState {
        flags: server.flags & !endpoint_flags::PROGRAMMED,
        ..server
    };
    desired.endpoints.insert(endpoint_key(SERVER), closed);
    expect(&desired, &flows[1], Some(Reason::NotProgrammed));

    let moved = EndpointState {
        ifindex: 4242,
        ..server
    };
    desired.endpoints.insert(endpoint_key(SERVER), moved);
    expect(&desired, &flows[2], Some(Reason::Spoofed));
}

#[test]
fn privileged_a_denied_flow_is_decided_again_for_a_new_revision_or_a_report() {
    if !privileged("privileged_a_denied_flow_is_decided_again_for_a_new_revision_or_a_report") {
        return;
    }
    let mut datapath = BpfDatapath::with_capacity(&SMALL).expect("load the probe");
    let mut desired = identities_lab();
    datapath.program(&desired).expect("sync");
    // 10.0.1.0/24 is identity 11, whose entry names the empty rule set.
    let flows = [40_000, 40_001]
        .map(|port| PacketSpec::first(ip("10.0.1.5"), ip(SERVER), proto::TCP, port, 80));
    let run = |datapath: &mut BpfDatapath, spec: &PacketSpec| {
        datapath
            .run(Direction::Ingress, &spec.build())
            .expect("run")
    };
    let allowed = PacketSpec::first(ip("10.0.0.7"), ip(SERVER), proto::TCP, 40_000, 80);
    let first = run(&mut datapath, &allowed);
    assert_eq!(first_decision(&first).1, Reason::AllowedByRule);
    for spec in &flows {
        let first = run(&mut datapath, spec);
        assert_eq!(first_decision(&first).1, Reason::IsolatedNoMatch);
    }
    // The endpoint denied lately, so a SYN's deny entry is looked up: a tracked flow's repeated
    // SYN has none, and is decided again by policy (it opens a connection, whatever conntrack
    // holds). The flow's other packets pass on its conntrack entry, without events.
    let again = run(&mut datapath, &allowed);
    assert_eq!(first_decision(&again).1, Reason::AllowedByRule);
    let mut ack = allowed.clone();
    ack.tcp_flags = 0x10;
    let next = run(&mut datapath, &ack);
    assert!(next.passed && next.events.is_empty(), "{next:?}");

    // Policy allows the peer under the same revision: a denied flow's packets keep dropping on
    // their deny entries, without events (a revision is what makes the probe decide again).
    desired.policy.insert(
        PolicyKey {
            set: SERVER_IN,
            peer: 11,
        },
        PolicyEntry { ruleset: 1 },
    );
    datapath.program(&desired).expect("sync");
    for spec in &flows {
        let again = run(&mut datapath, spec);
        assert!(!again.passed && again.events.is_empty(), "{again:?}");
    }

    // The packet whose report is due is decided again: the second flow passes.
    let short = Config {
        deny_report_interval_ns: 1,
        ..Config::default()
    };
    datapath.probe_mut().set_config(&short).expect("config");
    std::thread::sleep(std::time::Duration::from_millis(25));
    let due = run(&mut datapath, &flows[1]);
    assert_eq!(
        first_decision(&due),
        (Verdict::Allow, Reason::AllowedByRule, ANY_RULE)
    );

    // A new revision decides the first flow again, before its report is due.
    datapath
        .probe_mut()
        .set_config(&Config::default())
        .expect("config");
    let again = run(&mut datapath, &flows[0]);
    assert!(!again.passed && again.events.is_empty(), "{again:?}");
    desired.endpoints.insert(
        endpoint_key(SERVER),
        endpoint(1, endpoint_flags::INGRESS_ISOLATED, SERVER_IN, 0, 2),
    );
    datapath.program(&desired).expect("sync");
    let revised = run(&mut datapath, &flows[0]);
    assert_eq!(
        first_decision(&revised),
        (Verdict::Allow, Reason::AllowedByRule, ANY_RULE)
    );
    // The packets dropped without an event are still reported: two of the first flow, one of
    // the second.
    let residual = datapath.probe_mut().flush_denies().expect("flush");
    let mut packets: Vec<_> = residual.iter().map(|e| (e.src_port, e.packets)).collect();
    packets.sort_unstable();
    assert_eq!(packets, [(40_000, 2), (40_001, 1)], "{residual:?}");
}

#[test]
fn privileged_bench_datapath_runs_every_case() {
    if !privileged("privileged_bench_datapath_runs_every_case") {
        return;
    }
    let bench = tollgate_enforcer::bench::datapath(200).expect("bench");
    let results = &bench.cases;
    let cases: Vec<&str> = results.iter().map(|r| r.case.as_str()).collect();
    assert_eq!(cases.len(), 17, "{cases:?}");
    assert!(cases.contains(&"reply of an established flow, IPv6"));
    assert!(cases.contains(&"denied flow, UDP (deduplicated)"));
    assert!(cases.contains(&"established flow, IPv6"));
    assert!(cases.contains(&"new flow, IPv6, allowed among 10000 CIDR rules"));
    assert!(cases.contains(&"empty program, one run per syscall (floor)"));
    assert!(cases.contains(&"new egress flow, to a ClusterIP"));
    assert!(cases.contains(&"new flow, past an Admin-tier Deny and Pass"));
    assert!(results.iter().all(|r| r.median_ns > 0.0), "{results:?}");
    let programs: Vec<&str> = bench.programs.iter().map(|p| p.program).collect();
    assert_eq!(programs, ["to_pod", "from_pod"]);
    // Each program is thousands of instructions, which the verifier explores many times over
    // along its paths, within its limit.
    assert!(
        bench.programs.iter().all(|p| p.instructions > 1_000
            && p.verified > p.instructions
            && p.verified < 1_000_000),
        "{:?}",
        bench.programs
    );
}

/// Every pod isolated for ingress; two servers each allowed from the client by a policy of its
/// own, a third allowed from every pod: four policy sets. `without` names a policy left out.
fn three_allows(without: Option<&str>) -> Snapshot {
    let mut snapshot = cluster(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: server-b, namespace: default, labels: {{app: server-b}}}}
status: {{phase: Running, podIP: 198.18.0.11}}
---
apiVersion: v1
kind: Pod
metadata: {{name: server-c, namespace: default, labels: {{app: server-c}}}}
status: {{phase: Running, podIP: 198.18.0.12}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: ingress-deny, namespace: default}}
spec: {{podSelector: {{}}, policyTypes: [Ingress]}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: to-b, namespace: default}}
spec:
  podSelector: {{matchLabels: {{app: server-b}}}}
  ingress: [{{from: [{{podSelector: {{matchLabels: {{app: client}}}}}}]}}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: to-c, namespace: default}}
spec:
  podSelector: {{matchLabels: {{app: server-c}}}}
  ingress: [{{from: [{{podSelector: {{}}}}]}}]
---
{ALLOW_CLIENT_ANY}"#
    ));
    snapshot
        .policies
        .retain(|p| p.metadata.name.as_deref() != without);
    snapshot
}

#[test]
fn privileged_maps_at_capacity_deny_what_does_not_fit_and_still_revoke_on_both_datapaths() {
    if !privileged(
        "privileged_maps_at_capacity_deny_what_does_not_fit_and_still_revoke_on_both_datapaths",
    ) {
        return;
    }
    let placement = Placement::AllPods { ifindex: 1 };
    let roomy = compile(&three_allows(None), &placement, &Ids::default());
    assert_eq!(roomy.errors, vec![]);
    // One policy entry short of what the sets need: one set does not fit.
    let capacity = Capacity {
        policy: roomy.desired.policy.len() as u32 - 1,
        ..Capacity::default()
    };
    let mut datapath = BpfDatapath::with_capacity(&capacity).expect("load the probe");
    let mut model = ModelDatapath::default();
    let full = compile_with(&three_allows(None), &placement, &Ids::default(), &capacity);
    assert_eq!(full.errors.len(), 1, "{:?}", full.errors);
    assert!(full.errors[0].message.contains("denied (not programmed)"));
    datapath.program(&full.desired).expect("sync");
    model.program(&full.desired).expect("model");
    let denied_pod = full.errors[0]
        .object
        .trim_start_matches("Pod default/")
        .to_owned();
    let pods = [
        ("server", SERVER, "allow-client-any"),
        ("server-b", "198.18.0.11", "to-b"),
        ("server-c", "198.18.0.12", "to-c"),
    ];
    let flow = |dst: &str| ProbeFlow {
        src: ip(CLIENT),
        dst: ip(dst),
        protocol: proto::TCP,
        src_port: 40_000,
        dst_port: 80,
        service: None,
    };
    let both = |datapath: &mut BpfDatapath, model: &mut ModelDatapath, dst: &str| {
        let bpf = datapath.decide(&flow(dst)).expect("bpf decide");
        assert_eq!(bpf, model.decide(&flow(dst)).expect("model"), "to {dst}");
        bpf.ingress.expect("the server is an endpoint")
    };
    for (pod, address, _) in pods {
        let want = if pod == denied_pod {
            decision(Verdict::Deny, Reason::NotProgrammed)
        } else {
            let allowed = both(&mut datapath, &mut model, address);
            assert_eq!(allowed.reason, Reason::AllowedByRule, "client -> {pod}");
            allowed
        };
        assert_eq!(
            both(&mut datapath, &mut model, address),
            want,
            "client -> {pod}"
        );
    }

    // Deleting an allow while the maps are full revokes it on both datapaths.
    let (pod, address, policy) = pods
        .into_iter()
        .find(|(pod, ..)| *pod != denied_pod)
        .expect("a server whose set fits");
    let revoked = compile_with(
        &three_allows(Some(policy)),
        &placement,
        &full.ids,
        &capacity,
    );
    datapath.program(&revoked.desired).expect("sync");
    model.program(&revoked.desired).expect("model");
    assert_eq!(
        both(&mut datapath, &mut model, address),
        decision(Verdict::Deny, Reason::IsolatedNoMatch),
        "client -> {pod} after {policy} was deleted"
    );
}
