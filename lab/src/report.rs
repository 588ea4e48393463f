//! What a lab run found: per step, each check's expected and observed outcome (curl's own
//! line and exit code), the kubelet's probes, and the flow events the probe wrote during the
//! step, named.
//!
//! [`CheckResult::new`] judges a curl [`Outcome`] against the seed; [`NamedEvent::from_event`]
//! (a raw event, named: not a record of the flow log, which the collector writes) names a raw
//! [`FlowEvent`] as the collector names its record, through the collector's identities at the
//! moment it reads the event: the pods holding its addresses, the Service a ClusterIP stands
//! for, the deciding endpoint's pod and the policy rule. [`LabReport`] renders the whole run as a table ([`LabReport::render_table`])
//! or as one JSON object per check per line ([`LabReport::render_json`]).

use std::fmt::Write as _;
use std::net::IpAddr;

use serde::Serialize;
use tollgate_collector::{
    clock::rfc3339_utc,
    identity::{Holder, Identities, ServiceAddress},
    readback::{StoredRecord, render_table as render_records},
};
use tollgate_enforcer::columns;
use tollgate_schemas::{
    Counter, Direction, FlowEvent, Reason, Verdict, addr, proto, rule::RuleRef,
};

use crate::{
    OutputFormat,
    client::Outcome,
    flowlog::FlowLogSummary,
    isolate::{IncidentCheck, IncidentReport},
    kubelet::ProbeTally,
    scenario::{CLIENT_POD, Check, DeniedFlow, Destination, Step},
};

/// One check of one step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckResult {
    /// Step number.
    pub step: u32,
    /// `curl HOST`.
    pub check: String,
    /// What the seed shows, as curl prints it.
    pub expected: String,
    /// What curl printed.
    pub observed: String,
    /// Whether the outcome is the seed's.
    pub ok: bool,
    /// curl's exit code.
    pub exit_code: i32,
}

impl CheckResult {
    /// The result of `check` (curl given `host`) in step `step`, which ended with `outcome`.
    pub fn new(step: u32, check: &Check, host: &str, outcome: &Outcome) -> Self {
        Self {
            step,
            check: format!("curl {host}"),
            expected: check.expect.describe(host),
            observed: outcome.curl_line(check.expect.marker()),
            ok: check.expect.matches(outcome),
            exit_code: outcome.exit,
        }
    }
}

/// One side of a flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowPeer {
    /// Address.
    pub addr: IpAddr,
    /// Port (0 for protocols without ports).
    pub port: u16,
    /// The pod with that address, as `namespace/name`.
    pub pod: Option<String>,
    /// The Service whose ClusterIP and port it is, as `namespace/name`.
    pub service: Option<String>,
}

impl std::fmt::Display for FlowPeer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.pod, &self.service) {
            (Some(pod), _) => write!(f, "{pod}:{}", self.port),
            (None, Some(service)) => write!(f, "service {service}:{}", self.port),
            (None, None) => write!(f, "{}", std::net::SocketAddr::new(self.addr, self.port)),
        }
    }
}

/// A flow event, named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedEvent {
    /// Direction seen from the deciding endpoint's pod.
    pub direction: Direction,
    /// What the probe did.
    pub verdict: Verdict,
    /// Why.
    pub reason: Reason,
    /// IANA protocol number.
    pub protocol: u8,
    /// Source.
    pub src: FlowPeer,
    /// Destination.
    pub dst: FlowPeer,
    /// The pod whose policy decided (`namespace/name`), when the endpoint is known.
    pub endpoint_pod: Option<String>,
    /// The rule id that allowed the flow (0 when no rule did).
    pub rule_id: u32,
    /// The policy rule the id stands for.
    pub rule: Option<RuleRef>,
    /// Packets the event accounts for.
    pub packets: u64,
    /// Bytes the event accounts for.
    pub bytes: u64,
}

impl NamedEvent {
    /// Names `event` with the collector's `identities`, as its record names it (the holders
    /// of its addresses, the Service of its destination, its rule, each as of the event's
    /// time); `None` when the event carries a direction, verdict or reason this build does not
    /// know.
    pub fn from_event(event: &FlowEvent, identities: &Identities) -> Option<Self> {
        let at = event.ts_ns;
        let pod = |bytes: &[u8; 16]| match identities.holder_at(bytes, at)?.holder {
            Holder::Pod(pod) => Some(pod.to_string()),
            Holder::Node => None,
        };
        let peer = |bytes: [u8; 16], port: u16, service: Option<String>| FlowPeer {
            addr: addr::from_bytes(bytes),
            port,
            pod: pod(&bytes),
            service,
        };
        let service = identities
            .service_at(
                &ServiceAddress {
                    addr: event.dst_addr,
                    protocol: event.protocol,
                    port: event.dst_port,
                },
                at,
            )
            .map(|held| held.value.to_string());
        let direction = Direction::from_raw(event.direction)?;
        let own = match direction {
            Direction::Egress => &event.src_addr,
            Direction::Ingress => &event.dst_addr,
        };
        Some(Self {
            direction,
            verdict: Verdict::from_raw(event.verdict)?,
            reason: Reason::from_raw(event.reason)?,
            protocol: event.protocol,
            src: peer(event.src_addr, event.src_port, None),
            dst: peer(event.dst_addr, event.dst_port, service),
            endpoint_pod: pod(own),
            rule_id: event.rule_id,
            rule: (event.rule_id != 0)
                .then(|| identities.rule_at(event.rule_id, at))
                .flatten()
                .map(|held| held.value.rule.clone()),
            packets: event.packets,
            bytes: event.bytes,
        })
    }

    /// `namespace/policy direction[index]`, `rule #ID` for an id the compilation does not
    /// know, or `-` when no rule decided.
    pub fn rule_label(&self) -> String {
        match (&self.rule, self.rule_id) {
            (Some(rule), _) => rule.to_string(),
            (None, 0) => "-".to_string(),
            (None, id) => format!("rule #{id}"),
        }
    }
}

fn protocol_name(protocol: u8) -> String {
    match protocol {
        proto::TCP => "tcp".into(),
        proto::UDP => "udp".into(),
        proto::ICMP => "icmp".into(),
        proto::ICMPV6 => "icmpv6".into(),
        proto::SCTP => "sctp".into(),
        other => format!("proto {other}"),
    }
}

/// One step of the walk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepReport {
    /// Step number.
    pub number: u32,
    /// What the step is about.
    pub title: String,
    /// The manifests applied during the step.
    pub policies: Vec<String>,
    /// The checks, in order.
    pub checks: Vec<CheckResult>,
    /// The kubelet's probes during the step, per pod and probe.
    pub kubelet: Vec<ProbeTally>,
    /// The flow events written during the step, oldest first.
    pub flows: Vec<NamedEvent>,
    /// Events that could not be decoded or named (unknown enumeration values).
    pub undecodable: u64,
}

impl StepReport {
    /// The report of `step`: its checks, the kubelet's probes, its events as the collector
    /// named them, and how many it could not decode or name.
    pub fn new(
        step: &Step,
        checks: Vec<CheckResult>,
        kubelet: Vec<ProbeTally>,
        flows: Vec<NamedEvent>,
        undecodable: u64,
    ) -> Self {
        Self {
            number: step.number,
            title: step.title.to_string(),
            policies: step.policies.iter().map(|p| p.path.to_string()).collect(),
            checks,
            kubelet,
            flows,
            undecodable,
        }
    }
}

/// One denial of the seed, looked up in the flow log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FlowCheck {
    /// What the seed shows.
    pub what: String,
    /// The records expected, as `REJECT src -> dst:port/proto`.
    pub expected: String,
    /// Matching `REJECT` records found.
    pub records: usize,
    /// Packets they account for.
    pub packets: i64,
    /// Whether at least one was found.
    pub ok: bool,
}

impl FlowCheck {
    /// Looks `denied` up among the records of `summary`.
    pub fn new(denied: &DeniedFlow, summary: &FlowLogSummary) -> Self {
        let found: Vec<&StoredRecord> = summary
            .denied
            .iter()
            .filter(|r| {
                let to = match denied.dst {
                    Destination::Pod(pod) => r.dst_pod.as_deref() == Some(pod),
                    Destination::Service(service) => r.service.as_deref() == Some(service),
                };
                r.is_reject()
                    && r.src_pod.as_deref() == Some(denied.src_pod)
                    && to
                    && r.protocol == Some(denied.protocol)
                    && r.dstport == Some(denied.dst_port)
            })
            .collect();
        let dst = match denied.dst {
            Destination::Pod(pod) => pod.to_owned(),
            Destination::Service(service) => format!("service {service}"),
        };
        Self {
            what: denied.what.to_owned(),
            expected: format!(
                "REJECT {} -> {dst}:{}/{}",
                denied.src_pod,
                denied.dst_port,
                protocol_name(u8::try_from(denied.protocol).unwrap_or_default())
            ),
            records: found.len(),
            packets: found.iter().filter_map(|r| r.packets).sum(),
            ok: !found.is_empty(),
        }
    }
}

/// The whole run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabReport {
    /// The run's prefix (`tg<pid>-<n>`), which every namespace it created started with.
    pub run: String,
    /// The cluster's address family (`ipv4`, `ipv6`).
    pub ip_family: String,
    /// How the probe was attached (`tcx` or `clsact`).
    pub attach_mode: String,
    /// Host veths the probe was attached to.
    pub interfaces: usize,
    /// The pods wired with a branch ENI in strict mode (`--sgp`), with their host veth.
    pub branch_eni: Vec<(String, String)>,
    /// The steps, in order.
    pub steps: Vec<StepReport>,
    /// The probe's counters at the end of the run, by name.
    pub counters: Vec<(&'static str, u64)>,
    /// What the collector wrote.
    pub flow_log: FlowLogSummary,
    /// The seed's denials, looked up in the flow log.
    pub flow_checks: Vec<FlowCheck>,
    /// With `--quarantine`: the quarantine, and the evidence bundle and what it shows.
    pub incident: Option<IncidentReport>,
}

impl LabReport {
    /// Whether every check of every step had the seed's outcome (and there was at least one),
    /// the kubelet's probes passed in every step (and there were some), and the flow log shows
    /// every denial of the seed.
    pub fn all_ok(&self) -> bool {
        let mut checks = self.steps.iter().flat_map(|s| &s.checks).peekable();
        checks.peek().is_some()
            && checks.all(|c| c.ok)
            && self
                .steps
                .iter()
                .all(|s| !s.kubelet.is_empty() && s.kubelet.iter().all(ProbeTally::ok))
            && self.flow_checks.iter().all(|c| c.ok)
            && self.incident_checks().all(|c| c.ok)
    }

    /// The incident steps' checks (none without `--quarantine`).
    fn incident_checks(&self) -> impl Iterator<Item = &IncidentCheck> {
        self.incident.iter().flat_map(|i| &i.checks)
    }

    /// The report in `format`.
    pub fn render(&self, format: OutputFormat) -> String {
        match format {
            OutputFormat::Table => self.render_table(),
            OutputFormat::Json => self.render_json(),
        }
    }

    /// One JSON object per check, one per line: `step`, `check`, `expected`, `observed`, `ok`
    /// and curl's `exit_code`; then one per step and kubelet probe: `step`, `kubelet` (pod and
    /// probe), `observed`, `ok`; with `--quarantine`, then one per evidence check: `evidence`,
    /// `observed`, `ok`.
    pub fn render_json(&self) -> String {
        let mut out = String::new();
        for check in self.steps.iter().flat_map(|s| &s.checks) {
            // A struct of strings, numbers and a bool always serializes.
            out.push_str(&serde_json::to_string(check).unwrap_or_default());
            out.push('\n');
        }
        for step in &self.steps {
            for probe in &step.kubelet {
                let line = serde_json::json!({
                    "step": step.number,
                    "kubelet": format!("{} {}", probe.pod, probe.probe),
                    "observed": probe.describe(),
                    "ok": probe.ok(),
                });
                out.push_str(&line.to_string());
                out.push('\n');
            }
        }
        for check in self.incident_checks() {
            let line = serde_json::json!({
                "evidence": check.what,
                "observed": check.found,
                "ok": check.ok,
            });
            out.push_str(&line.to_string());
            out.push('\n');
        }
        out
    }

    /// A table per step (checks, then flow events), and a summary.
    pub fn render_table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "tollgate lab: run {} ({}), probe attached ({}) to {} host veths",
            self.run, self.ip_family, self.attach_mode, self.interfaces
        );
        for (pod, host_veth) in &self.branch_eni {
            let _ = writeln!(
                out,
                "  {pod}: a branch ENI (security groups for pods, strict mode) on {host_veth}, \
                 its route in the VLAN's table"
            );
        }
        for step in &self.steps {
            let _ = writeln!(out, "\nStep {}: {}", step.number, step.title);
            let policies = if step.policies.is_empty() {
                "(none)".to_string()
            } else {
                step.policies.join(", ")
            };
            let _ = writeln!(out, "  policies: {policies}");
            let rows = step
                .checks
                .iter()
                .map(|c| {
                    let mark = if c.ok { "ok" } else { "MISMATCH" };
                    vec![
                        c.check.clone(),
                        c.expected.clone(),
                        c.observed.clone(),
                        c.exit_code.to_string(),
                        mark.into(),
                    ]
                })
                .collect();
            out.push_str(&table(
                "  ",
                &["CHECK", "EXPECTED (seed)", "OBSERVED", "EXIT", "OK"],
                rows,
            ));
            let rows = step
                .kubelet
                .iter()
                .map(|p| {
                    vec![
                        p.pod.clone(),
                        p.probe.clone(),
                        p.describe(),
                        if p.ok() { "ok" } else { "FAILED" }.into(),
                    ]
                })
                .collect();
            out.push_str(&table(
                "  ",
                &["KUBELET PROBE (from the node)", "PROBE", "OBSERVED", "OK"],
                rows,
            ));
            let _ = writeln!(out, "  flow events: {}", step.flows.len());
            let rows = step
                .flows
                .iter()
                .map(|f| {
                    vec![
                        f.direction.name().into(),
                        f.endpoint_pod.clone().unwrap_or("-".into()),
                        f.verdict.name().into(),
                        f.reason.name().into(),
                        format!("{} -> {}", f.src, f.dst),
                        protocol_name(f.protocol),
                        f.rule_label(),
                        f.packets.to_string(),
                    ]
                })
                .collect::<Vec<_>>();
            if !rows.is_empty() {
                out.push_str(&table(
                    "    ",
                    &[
                        "DIRECTION",
                        "POD",
                        "VERDICT",
                        "REASON",
                        "FLOW",
                        "PROTO",
                        "RULE",
                        "PACKETS",
                    ],
                    rows,
                ));
            }
            if step.undecodable > 0 {
                let _ = writeln!(out, "  undecodable events: {}", step.undecodable);
            }
        }
        let total = self.steps.iter().map(|s| s.checks.len()).sum::<usize>();
        let failed = self
            .steps
            .iter()
            .flat_map(|s| &s.checks)
            .filter(|c| !c.ok)
            .count();
        let counters = self
            .counters
            .iter()
            .map(|(name, value)| format!("{name}={value}"))
            .collect::<Vec<_>>()
            .join(" ");
        let _ = writeln!(out, "\nprobe counters: {counters}");
        out.push_str(&self.render_flow_log());
        if let Some(incident) = &self.incident {
            out.push_str(&render_incident(incident));
        }
        if self.all_ok() {
            let _ = writeln!(
                out,
                "result: all {total} checks match the seed, and the flow log shows its {} \
                 denials",
                self.flow_checks.len()
            );
        } else {
            let missing = self.flow_checks.iter().filter(|c| !c.ok).count();
            let _ = writeln!(
                out,
                "result: {failed} of {total} checks differ from the seed; {missing} of {} \
                 denials missing from the flow log",
                self.flow_checks.len()
            );
        }
        out
    }

    /// The flow log: where it is, what it holds, the denied flows read back from its Parquet
    /// files, and the seed's denials found in them.
    fn render_flow_log(&self) -> String {
        let log = &self.flow_log;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "\nFlow log: {} records in {} Parquet files under {} ({} events read, {} lost)",
            log.records,
            log.files,
            log.dir.display(),
            log.events,
            log.lost
        );
        if let Some((source, objects)) = &log.ocsf {
            let _ = writeln!(
                out,
                "Security Lake (OCSF 1.1 Network Activity): {objects} {} under {}",
                if *objects == 1 { "object" } else { "objects" },
                source.display()
            );
        }
        let _ = writeln!(
            out,
            "  denied flows (action = 'REJECT'), read back from Parquet:"
        );
        for line in render_records(&log.denied).lines() {
            let _ = writeln!(out, "    {line}");
        }
        let rows = self
            .flow_checks
            .iter()
            .map(|c| {
                vec![
                    c.what.clone(),
                    c.expected.clone(),
                    format!("{} records, {} packets", c.records, c.packets),
                    if c.ok { "ok" } else { "MISSING" }.into(),
                ]
            })
            .collect();
        out.push_str(&table(
            "  ",
            &["SEED DENIAL", "EXPECTED RECORD", "FOUND", "OK"],
            rows,
        ));
        out
    }
}

/// The quarantine and the evidence bundle: who, why, which policy, where the record and the
/// bundle are, the bundle's timeline, and its checks.
fn render_incident(incident: &IncidentReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nIncident: {} quarantined {CLIENT_POD} at {} with {}",
        incident.actor,
        rfc3339_utc(incident.at_s),
        incident.policy
    );
    let _ = writeln!(out, "  reason: {}", incident.reason);
    let _ = writeln!(out, "  isolation record: {}", incident.record);
    let counts = incident.counts;
    let _ = writeln!(
        out,
        "  evidence bundle: {} ({} flow records, {} isolation records, {} loss records, from \
         {} flow-log files)",
        incident.bundle.display(),
        counts.flows,
        counts.isolations,
        counts.losses,
        counts.sources
    );
    let _ = writeln!(
        out,
        "  manifest SHA-256: {} (tollgate evidence verify {} --manifest-sha256 …)",
        incident.manifest_sha256,
        incident.bundle.display()
    );
    for line in incident.timeline.lines() {
        let _ = writeln!(out, "    {line}");
    }
    let rows = incident
        .checks
        .iter()
        .map(|c| {
            vec![
                c.what.clone(),
                c.found.clone(),
                if c.ok { "ok" } else { "MISSING" }.into(),
            ]
        })
        .collect();
    out.push_str(&table("  ", &["EVIDENCE", "FOUND", "OK"], rows));
    out
}

/// Counter values by name, in slot order.
pub fn named_counters(counters: &tollgate_enforcer::probe::Counters) -> Vec<(&'static str, u64)> {
    Counter::ALL
        .iter()
        .map(|&c| (c.name(), counters.get(c)))
        .collect()
}

/// [`columns::lines`], each line indented by `indent`.
fn table(indent: &str, headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let header = headers.iter().map(|h| (*h).to_owned()).collect();
    columns::lines(header, rows)
        .into_iter()
        .map(|line| format!("{indent}{line}\n"))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use k8s_openapi::api::core::v1::Pod;
    use tollgate_agent::naming::{naming, pod_changes};
    use tollgate_enforcer::{
        compile::{Compiled, Object},
        snapshot::Updates,
    };
    use tollgate_schemas::rule::{NamedRule, PolicyTier, RuleAction};

    use super::*;
    use crate::scenario::STEPS;

    fn report(ok: bool) -> LabReport {
        let step = &STEPS[0];
        let checks = step
            .checks
            .iter()
            .map(|c| {
                let host = c.host(&crate::pods::LabPods::embedded(Default::default()).unwrap());
                let host = host.unwrap();
                let outcome = Outcome {
                    exit: 6,
                    body: String::new(),
                    error: format!("curl: (6) Could not resolve host: {host}"),
                    elapsed: std::time::Duration::from_secs(4),
                };
                let mut result = CheckResult::new(step.number, c, &host, &outcome);
                result.ok = ok;
                result
            })
            .collect();
        let kubelet = vec![ProbeTally {
            pod: "default/nginx".into(),
            probe: "httpGet http://198.18.0.20:80/".into(),
            succeeded: 3,
            failed: 0,
            last_error: None,
        }];
        LabReport {
            run: "tg1-0".into(),
            ip_family: "ipv4".into(),
            attach_mode: "tcx".into(),
            interfaces: 4,
            branch_eni: Vec::new(),
            steps: vec![StepReport::new(step, checks, kubelet, Vec::new(), 0)],
            counters: vec![("allow", 3)],
            flow_log: FlowLogSummary::default(),
            flow_checks: Vec::new(),
            incident: None,
        }
    }

    #[test]
    fn json_has_one_object_per_check_with_the_five_fields_and_the_exit_code() {
        let json = report(true).render_json();
        let lines: Vec<&str> = json.lines().collect();
        assert_eq!(lines.len(), 3, "two checks and a kubelet probe");
        let first: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        let keys: Vec<&str> = first
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(keys.len(), 6);
        for key in ["step", "check", "expected", "observed", "ok", "exit_code"] {
            assert!(keys.contains(&key), "{key}");
        }
        assert_eq!(first["step"], 1);
        assert_eq!(first["check"], "curl nginx");
        assert_eq!(first["observed"], "curl: (6) Could not resolve host: nginx");
        assert_eq!(first["exit_code"], 6);
        let kubelet: serde_json::Value = serde_json::from_str(lines[2]).unwrap();
        assert_eq!(
            kubelet["kubelet"],
            "default/nginx httpGet http://198.18.0.20:80/"
        );
        assert_eq!(kubelet["ok"], true);
    }

    #[test]
    fn all_ok_needs_every_check_and_at_least_one() {
        assert!(report(true).all_ok());
        assert!(!report(false).all_ok());
        let mut empty = report(true);
        empty.steps.clear();
        assert!(!empty.all_ok());
        assert!(
            report(false)
                .render_table()
                .contains("2 of 2 checks differ")
        );
    }

    #[test]
    fn events_are_named_by_the_collectors_identities() {
        let snapshot = crate::pods::LabPods::embedded(Default::default())
            .unwrap()
            .snapshot;
        let mut compiled = Compiled::default();
        std::sync::Arc::make_mut(&mut compiled.rules).insert(
            2,
            NamedRule {
                rule: RuleRef {
                    namespace: "default".into(),
                    policy: "allow-amazonlinux-to-nginx".into(),
                    direction: Direction::Egress,
                    index: 1,
                },
                tier: PolicyTier::NetworkPolicy,
                action: RuleAction::Allow,
                version: "812".into(),
            },
        );
        let event = FlowEvent {
            version: tollgate_schemas::FLOW_EVENT_VERSION,
            family: 4,
            protocol: proto::TCP,
            direction: Direction::Egress as u8,
            verdict: Verdict::Allow as u8,
            reason: Reason::AllowedByRule as u8,
            tcp_flags: 0x02,
            ts_ns: 0,
            ifindex: 9,
            endpoint: 4,
            rule_id: 2,
            src_port: 40000,
            dst_port: 80,
            src_addr: addr::v4_bytes([198, 18, 0, 40]),
            dst_addr: addr::v4_bytes([198, 18, 0, 20]),
            packets: 1,
            bytes: 74,
            icmp_type: 0,
            icmp_code: 0,
            _pad: [0; 6],
        };
        let pods: Updates<Pod> = snapshot
            .pods
            .iter()
            .map(|pod| {
                let key = Object::Pod(pod).key().expect("a named pod");
                (key, Some(Arc::new(pod.clone())))
            })
            .collect();
        let mut identities = Identities::default();
        identities.observe(naming(pod_changes(&pods), &[], &compiled), 0);
        let flow = NamedEvent::from_event(&event, &identities).unwrap();
        assert_eq!(flow.endpoint_pod.as_deref(), Some("default/amazonlinux"));
        assert_eq!(
            flow.rule_label(),
            "default/allow-amazonlinux-to-nginx egress[1]"
        );
        assert_eq!(
            format!("{} -> {}", flow.src, flow.dst),
            "default/amazonlinux:40000 -> default/nginx:80"
        );
        let bad = FlowEvent {
            reason: 200,
            ..event
        };
        assert_eq!(NamedEvent::from_event(&bad, &identities), None);
    }
}
