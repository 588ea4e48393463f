//! `tollgate bench datapath`: what one packet costs in the probe, as the kernel measures it
//! under BPF_PROG_TEST_RUN.
//!
//! Each case compiles a real NetworkPolicy into the maps, then runs the `to_pod` program:
//! - established: one packet of an already tracked flow (an ACK, after the SYN that opened it),
//!   `repeat` times per syscall (the kernel reports the mean per run), over several rounds;
//! - new flow allowed among N CIDR rules: every run a packet of a different flow (another source
//!   port), so each one takes the whole path: endpoint, conntrack miss, peer-trie lookup, policy
//!   entry, rule set, port match, conntrack insert and the flow event;
//! - denied: one packet of a denied flow, `repeat` times per syscall: the deduplicated path;
//! - reply: the server's ACK of a tracked flow (the `from_pod` program), `repeat` times per
//!   syscall: conntrack finds the flow its client opened under the key of both directions;
//! - the same four on IPv6 (the server is a dual-stack pod; its rules are /64s of
//!   2001:db8::/32), with 1 and 10,000 rules;
//! - new flow past the Admin tier: the client is a pod, and an Admin-tier ClusterNetworkPolicy
//!   first denies it another port, then passes its port to the NetworkPolicy tier, whose one
//!   CIDR rule allows it (what tiers add to a new flow: two more rules tried);
//! - new egress flow (the `from_pod` program) of a client whose policy allows one server: to the
//!   server's address, and to a Service's ClusterIP whose one backend is that server (what the
//!   Service handling costs: the ClusterIP has a peer identity of its own in the peer trie,
//!   and the client's policy set has an entry for it that allows the Service's port).
//!
//! Medians are printed: of the per-round means for repeated runs, of the single runs otherwise.
//! The harness's own cost is measured first, on an empty program run the same two ways (one run
//! per syscall, many per syscall); each case also prints its own cost, its median less the
//! floor measured the same way. Then both programs' sizes as the kernel holds them
//! ([`ProgramSize`]).

pub mod scale;

use std::{collections::BTreeMap, net::IpAddr};

use k8s_openapi::{
    api::{
        core::v1::{Namespace, Pod, PodIP, PodSpec, PodStatus},
        networking::v1::{
            IPBlock, NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicySpec,
        },
    },
    apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta},
};
use tollgate_schemas::{Direction, program_names, proto};

use crate::{
    bpf_datapath::{BpfDatapath, error, failed},
    causes::Causes,
    compile::{Placement, compile},
    crd::ClusterNetworkPolicy,
    decision::{Datapath, DatapathError},
    desired::Ids,
    packet::{PacketSpec, TCP_ACK},
    snapshot::Snapshot,
};

/// Addresses of the pod the benchmark's packets enter (a dual-stack pod).
const SERVER: &str = "198.18.0.10";
const SERVER_V6: &str = "2001:db8::10";
/// Runs of one round of repeated runs.
const ROUNDS: u32 = 10;

/// One measured case.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchResult {
    /// What was measured.
    pub case: String,
    /// Median kernel-reported time per packet, ns.
    pub median_ns: f64,
    /// What the program itself costs: the median less the empty program's, run the same way.
    pub own_ns: f64,
    /// Packets measured.
    pub packets: u64,
}

impl BenchResult {
    /// The median of `samples`; its own cost is all of it until a floor is taken off
    /// ([`Floor`]).
    fn new(case: &str, samples: Vec<f64>, packets: u64) -> Self {
        let median_ns = median(samples);
        Self {
            case: case.to_owned(),
            median_ns,
            own_ns: median_ns,
            packets,
        }
    }
}

/// What `bench datapath` measured: its cases, then the programs they ran.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DatapathBench {
    /// The floors first, then every case in the order it ran.
    pub cases: Vec<BenchResult>,
    /// `to_pod`, then `from_pod`.
    pub programs: Vec<ProgramSize>,
}

/// One of the probe's programs as the kernel holds it after loading (`bpf_prog_info`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct ProgramSize {
    /// The program's name in the probe's object.
    pub program: &'static str,
    /// Instructions after the verifier, its rewrites and every BPF function of the program
    /// included (what `bpftool prog show` counts as `xlated` bytes, in 8-byte instructions).
    pub instructions: u32,
    /// Instructions the verifier processed, path by path (it refuses a program past
    /// 1,000,000).
    pub verified: u32,
}

/// Bytes of one BPF instruction.
const INSTRUCTION_BYTES: u32 = 8;

/// Runs every case with `repeat` packets each (at least 100,000 is meaningful).
pub fn datapath(repeat: u32) -> Result<DatapathBench, DatapathError> {
    let floor = Floor::measure(repeat)?;
    let mut results = vec![floor.single.clone(), floor.repeated.clone()];
    for (family, rules) in [
        (Family::V4, 1usize),
        (Family::V4, 100),
        (Family::V4, 10_000),
        (Family::V6, 1),
        (Family::V6, 10_000),
    ] {
        let mut datapath = BpfDatapath::new()?;
        program(&mut datapath, family, rules, false)?;
        results.push(floor.under_single(new_flows(&mut datapath, family, rules, repeat)?));
        if rules == 1 {
            results.push(floor.under_repeated(established(&mut datapath, family, repeat)?));
            results.push(floor.under_repeated(denied(&mut datapath, family, repeat)?));
            results.push(floor.under_repeated(reply(&mut datapath, family, repeat)?));
            if family == Family::V4 {
                results.push(floor.under_repeated(denied_udp(&mut datapath, repeat)?));
            }
        }
    }
    let mut datapath = BpfDatapath::new()?;
    program(&mut datapath, Family::V4, 1, true)?;
    let (_, client) = client_net(Family::V4, 0);
    results.push(floor.under_single(fresh_flows(
        &mut datapath,
        "new flow, past an Admin-tier Deny and Pass",
        Direction::Ingress,
        repeat,
        |port| packet(client, port, 80),
    )?));
    // Every load holds the same programs: their sizes are read from this one.
    let programs = [program_names::TO_POD, program_names::FROM_POD]
        .into_iter()
        .map(|name| program_size(&datapath, name))
        .collect::<Result<_, _>>()?;
    let server = Family::V4.server();
    let cluster_ip: IpAddr = CLUSTER_IP.parse().expect("valid address");
    let client: IpAddr = CLIENT.parse().expect("valid address");
    for (case, dst, port) in [
        ("new egress flow, to the pod's address", server, 80),
        ("new egress flow, to a ClusterIP", cluster_ip, 8080),
    ] {
        // Each case on maps of its own, as the rule cases: the conntrack map a case filled and
        // cleared must not weigh on the next.
        let mut datapath = BpfDatapath::new()?;
        program_service(&mut datapath)?;
        results.push(floor.under_single(fresh_flows(
            &mut datapath,
            case,
            Direction::Egress,
            repeat,
            |src_port| PacketSpec::first(client, dst, proto::TCP, src_port, port).build(),
        )?));
    }
    Ok(DatapathBench {
        cases: results,
        programs,
    })
}

/// The size of the loaded program `name`, from the kernel's `bpf_prog_info`.
fn program_size(datapath: &BpfDatapath, name: &'static str) -> Result<ProgramSize, DatapathError> {
    let info = datapath
        .probe()
        .program(name)
        .map_err(error)?
        .info()
        .map_err(|e| {
            failed(format!(
                "reading the kernel's information on {name}: {}",
                Causes(&e)
            ))
        })?;
    let missing = |field: &str| failed(format!("the kernel does not report {name}'s {field}"));
    Ok(ProgramSize {
        program: name,
        instructions: info
            .size_translated()
            .ok_or_else(|| missing("xlated size"))?
            / INSTRUCTION_BYTES,
        verified: info
            .verified_instruction_count()
            .ok_or_else(|| missing("verified instruction count"))?,
    })
}

/// The harness's own cost: the empty program ([`program_names::FLOOR`]) on the same packet,
/// run once per syscall (as the new-flow cases are) and many times per syscall (as the
/// established and denied cases are).
struct Floor {
    single: BenchResult,
    repeated: BenchResult,
}

impl Floor {
    fn measure(count: u32) -> Result<Self, DatapathError> {
        let mut datapath = BpfDatapath::new()?;
        datapath.probe_mut().load_floor().map_err(error)?;
        let (_, client) = client_net(Family::V4, 0);
        let frame = packet(client, 40_000, 80);
        let mut samples = Vec::with_capacity(count as usize);
        for _ in 0..count {
            samples.push(run_floor(&mut datapath, &frame, 1)?);
        }
        let per_round = count.div_ceil(ROUNDS);
        let mut means = Vec::with_capacity(ROUNDS as usize);
        for _ in 0..ROUNDS {
            means.push(run_floor(&mut datapath, &frame, per_round)?);
        }
        let single = BenchResult::new(
            "empty program, one run per syscall (floor)",
            samples,
            u64::from(count),
        );
        let repeated = BenchResult::new(
            "empty program, many runs per syscall (floor)",
            means,
            u64::from(per_round * ROUNDS),
        );
        // The floor's own cost is nothing, by definition.
        Ok(Self {
            single: BenchResult {
                own_ns: 0.0,
                ..single
            },
            repeated: BenchResult {
                own_ns: 0.0,
                ..repeated
            },
        })
    }

    /// `result`, measured one run per syscall, with its own cost.
    fn under_single(&self, result: BenchResult) -> BenchResult {
        Self::under(result, &self.single)
    }

    /// `result`, measured many runs per syscall, with its own cost.
    fn under_repeated(&self, result: BenchResult) -> BenchResult {
        Self::under(result, &self.repeated)
    }

    fn under(result: BenchResult, floor: &BenchResult) -> BenchResult {
        BenchResult {
            own_ns: result.median_ns - floor.median_ns,
            ..result
        }
    }
}

fn run_floor(datapath: &mut BpfDatapath, frame: &[u8], repeat: u32) -> Result<f64, DatapathError> {
    let run = datapath.run_program(program_names::FLOOR, frame, repeat)?;
    expect_passed(run.passed, program_names::FLOOR, true)?;
    Ok(run.duration_ns as f64)
}

/// Client of the egress cases, and the ClusterIP of the server's Service.
const CLIENT: &str = "198.18.0.20";
const CLUSTER_IP: &str = "198.19.0.10";

/// A client allowed to the server on 80/TCP, and a Service (8080 → 80) in front of the server.
fn program_service(datapath: &mut BpfDatapath) -> Result<(), DatapathError> {
    let manifests = format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: server, namespace: bench, labels: {{app: server}}}}
status: {{phase: Running, podIP: {SERVER}, podIPs: [{{ip: {SERVER}}}]}}
---
apiVersion: v1
kind: Pod
metadata: {{name: client, namespace: bench, labels: {{app: client}}}}
status: {{phase: Running, podIP: {CLIENT}, podIPs: [{{ip: {CLIENT}}}]}}
---
apiVersion: v1
kind: Service
metadata: {{name: server, namespace: bench}}
spec:
  clusterIP: {CLUSTER_IP}
  selector: {{app: server}}
  ports: [{{port: 8080, protocol: TCP, targetPort: 80}}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: client-to-server, namespace: bench}}
spec:
  podSelector: {{matchLabels: {{app: client}}}}
  policyTypes: [Egress]
  egress:
  - to: [{{podSelector: {{matchLabels: {{app: server}}}}}}]
    ports: [{{port: 80, protocol: TCP}}]
"#
    );
    let (snapshot, errors) = crate::manifest::parse_manifests(&manifests, "bench");
    let compiled = compile(
        &snapshot,
        &Placement::AllPods { ifindex: 1 },
        &Ids::default(),
    );
    if let Some(error) = errors.first().or(compiled.errors.first()) {
        return Err(failed(format!(
            "benchmark objects did not compile: {error}"
        )));
    }
    datapath.program(&compiled.desired)
}

/// The tables the `bench` command prints: the cases, then the programs' sizes.
pub fn render(bench: &DatapathBench) -> String {
    let mut out = format!(
        "{:<46} {:>10} {:>10} {:>10}\n",
        "CASE", "MEDIAN ns", "OWN ns", "PACKETS"
    );
    for r in &bench.cases {
        out.push_str(&format!(
            "{:<46} {:>10.1} {:>10.1} {:>10}\n",
            r.case, r.median_ns, r.own_ns, r.packets
        ));
    }
    out.push_str(&format!(
        "\n{:<46} {:>21} {:>10}\n",
        "PROGRAM", "INSNS AFTER VERIFIER", "VERIFIED"
    ));
    for p in &bench.programs {
        out.push_str(&format!(
            "{:<46} {:>21} {:>10}\n",
            p.program, p.instructions, p.verified
        ));
    }
    out
}

/// The address family of a case's packets and rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

impl Family {
    /// The case name's note of the family: none for IPv4.
    fn note(self) -> &'static str {
        match self {
            Self::V4 => "",
            Self::V6 => ", IPv6",
        }
    }

    /// The server's address of this family.
    fn server(self) -> IpAddr {
        match self {
            Self::V4 => SERVER,
            Self::V6 => SERVER_V6,
        }
        .parse()
        .expect("valid address")
    }

    /// An address no rule allows.
    fn outside(self) -> IpAddr {
        match self {
            Self::V4 => "203.0.113.9",
            Self::V6 => "2001:db8:ffff::9",
        }
        .parse()
        .expect("valid address")
    }
}

/// The n-th client network (10.a.b.0/24, or 2001:db8:a:b::/64); its host 7 is a client the
/// rules allow.
fn client_net(family: Family, n: usize) -> (String, IpAddr) {
    let (a, b) = (n / 256, n % 256);
    let (net, host) = match family {
        Family::V4 => (format!("10.{a}.{b}.0/24"), format!("10.{a}.{b}.7")),
        Family::V6 => (
            format!("2001:db8:{a:x}:{b:x}::/64"),
            format!("2001:db8:{a:x}:{b:x}::7"),
        ),
    };
    (net, host.parse().expect("valid address"))
}

/// Programs the server's ingress: `rules` CIDR rules of `family` (the last one the client's);
/// `tiered`: the client is a pod too, and an Admin-tier ClusterNetworkPolicy denies it TCP 81,
/// then passes TCP 80 to the NetworkPolicy tier.
fn program(
    datapath: &mut BpfDatapath,
    family: Family,
    rules: usize,
    tiered: bool,
) -> Result<(), DatapathError> {
    let meta = |name: &str| ObjectMeta {
        name: Some(name.to_owned()),
        namespace: Some("bench".to_owned()),
        labels: Some(BTreeMap::from([("app".to_owned(), name.to_owned())])),
        ..ObjectMeta::default()
    };
    let running = |name: &str, ips: &[String]| Pod {
        metadata: meta(name),
        spec: Some(PodSpec::default()),
        status: Some(PodStatus {
            phase: Some("Running".to_owned()),
            pod_ip: ips.first().cloned(),
            pod_ips: Some(ips.iter().map(|ip| PodIP { ip: ip.clone() }).collect()),
            ..PodStatus::default()
        }),
    };
    let server = running("server", &[SERVER.to_owned(), SERVER_V6.to_owned()]);
    let peers = (0..rules)
        .map(|n| NetworkPolicyPeer {
            ip_block: Some(IPBlock {
                cidr: client_net(family, n).0,
                except: None,
            }),
            ..NetworkPolicyPeer::default()
        })
        .collect();
    let policy = NetworkPolicy {
        metadata: meta("allow-clients"),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(BTreeMap::from([("app".to_owned(), "server".to_owned())])),
                ..LabelSelector::default()
            }),
            policy_types: Some(vec!["Ingress".to_owned()]),
            ingress: Some(vec![NetworkPolicyIngressRule {
                from: Some(peers),
                ports: None,
            }]),
            ..NetworkPolicySpec::default()
        }),
    };
    let mut snapshot = Snapshot {
        namespaces: vec![Namespace {
            metadata: ObjectMeta {
                name: Some("bench".to_owned()),
                labels: Some(BTreeMap::from([(
                    "kubernetes.io/metadata.name".to_owned(),
                    "bench".to_owned(),
                )])),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        }],
        pods: vec![server],
        policies: vec![policy],
        ..Snapshot::default()
    };
    if tiered {
        let (_, client) = client_net(family, rules - 1);
        snapshot.pods.push(running("client", &[client.to_string()]));
        let client_peer = serde_json::json!({"pods": {
            "namespaceSelector": {},
            "podSelector": {"matchLabels": {"app": "client"}},
        }});
        snapshot.cluster_policies.push(ClusterNetworkPolicy {
            metadata: ObjectMeta {
                name: Some("admin".to_owned()),
                ..ObjectMeta::default()
            },
            spec: serde_json::json!({
                "tier": "Admin",
                "priority": 1,
                "subject": {"namespaces": {}},
                "ingress": [
                    {"action": "Deny", "from": [client_peer],
                     "protocols": [{"tcp": {"destinationPort": {"number": 81}}}]},
                    {"action": "Pass", "from": [client_peer],
                     "protocols": [{"tcp": {"destinationPort": {"number": 80}}}]},
                ],
            }),
        });
    }
    let compiled = compile(
        &snapshot,
        &Placement::AllPods { ifindex: 1 },
        &Ids::default(),
    );
    if let Some(error) = compiled.errors.first() {
        return Err(failed(format!("benchmark policy did not compile: {error}")));
    }
    datapath.program(&compiled.desired)
}

/// A TCP SYN from `src` to the server's address of the same family.
fn packet(src: IpAddr, src_port: u16, dst_port: u16) -> Vec<u8> {
    let family = if src.is_ipv4() {
        Family::V4
    } else {
        Family::V6
    };
    PacketSpec::first(src, family.server(), proto::TCP, src_port, dst_port).build()
}

/// The median of `values` (the upper one of an even count), for every benchmark's runs.
pub fn median(values: impl IntoIterator<Item = f64>) -> f64 {
    let mut values: Vec<f64> = values.into_iter().collect();
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn expect_passed(passed: bool, case: &str, expected: bool) -> Result<(), DatapathError> {
    if passed == expected {
        Ok(())
    } else {
        Err(failed(format!(
            "{case}: the packet was {}",
            if passed { "passed" } else { "dropped" }
        )))
    }
}

fn new_flows(
    datapath: &mut BpfDatapath,
    family: Family,
    rules: usize,
    count: u32,
) -> Result<BenchResult, DatapathError> {
    let case = format!(
        "new flow{}, allowed among {rules} CIDR rules",
        family.note()
    );
    let (_, client) = client_net(family, rules - 1);
    fresh_flows(datapath, &case, Direction::Ingress, count, |port| {
        packet(client, port, 80)
    })
}

/// `count` runs of `direction`'s program, each on the packet `frame(source port)` of a flow
/// not seen before, so each one takes the whole path: endpoint, conntrack miss, peer-trie,
/// policy and rule-set lookups, port match, conntrack insert and the flow event.
fn fresh_flows(
    datapath: &mut BpfDatapath,
    case: &str,
    direction: Direction,
    count: u32,
    frame: impl Fn(u16) -> Vec<u8>,
) -> Result<BenchResult, DatapathError> {
    datapath.probe_mut().clear_flow_state().map_err(error)?;
    let mut samples = Vec::with_capacity(count as usize);
    for i in 0..count {
        // A different flow every run: source ports cycle, and the flow state is cleared before
        // they would repeat.
        let port = 1024 + (i % 60_000) as u16;
        if i > 0 && i % 60_000 == 0 {
            datapath.probe_mut().clear_flow_state().map_err(error)?;
        }
        let run = datapath.run(direction, &frame(port))?;
        expect_passed(run.passed, case, true)?;
        samples.push(run.duration_ns as f64);
    }
    Ok(BenchResult::new(case, samples, u64::from(count)))
}

fn repeated(
    datapath: &mut BpfDatapath,
    case: &str,
    direction: Direction,
    frame: &[u8],
    count: u32,
    passes: bool,
) -> Result<BenchResult, DatapathError> {
    let per_round = count.div_ceil(ROUNDS);
    let mut means = Vec::with_capacity(ROUNDS as usize);
    for _ in 0..ROUNDS {
        let run = datapath.run_repeated(direction, frame, per_round)?;
        expect_passed(run.passed, case, passes)?;
        means.push(run.duration_ns as f64);
    }
    Ok(BenchResult::new(case, means, u64::from(per_round * ROUNDS)))
}

fn established(
    datapath: &mut BpfDatapath,
    family: Family,
    count: u32,
) -> Result<BenchResult, DatapathError> {
    let (_, client) = client_net(family, 0);
    // The SYN tracks the flow; every measured run is then an ACK of it. A repeated SYN would be
    // decided again each time: it opens a connection, whatever conntrack holds.
    datapath.run(Direction::Ingress, &packet(client, 40_000, 80))?;
    let mut ack = PacketSpec::first(client, family.server(), proto::TCP, 40_000, 80);
    ack.tcp_flags = TCP_ACK;
    let case = format!("established flow{}", family.note());
    repeated(
        datapath,
        &case,
        Direction::Ingress,
        &ack.build(),
        count,
        true,
    )
}

/// The server's ACK of a flow its client opened, repeated through `from_pod`: a reply, which
/// conntrack finds under the flow's key for both directions.
fn reply(
    datapath: &mut BpfDatapath,
    family: Family,
    count: u32,
) -> Result<BenchResult, DatapathError> {
    let (_, client) = client_net(family, 0);
    let case = format!("reply of an established flow{}", family.note());
    let syn = PacketSpec::first(client, family.server(), proto::TCP, 40_002, 80);
    let opened = datapath.run(Direction::Ingress, &syn.build())?;
    expect_passed(opened.passed, &case, true)?;
    let mut ack = syn.reply();
    ack.tcp_flags = TCP_ACK;
    repeated(
        datapath,
        &case,
        Direction::Egress,
        &ack.build(),
        count,
        true,
    )
}

/// A denied TCP SYN, repeated: it looks up its deny entry only (a SYN opens a connection: it
/// is never a reply, nor passed on conntrack).
fn denied(
    datapath: &mut BpfDatapath,
    family: Family,
    count: u32,
) -> Result<BenchResult, DatapathError> {
    let frame = packet(family.outside(), 40_001, 80);
    let case = format!("denied flow{} (deduplicated)", family.note());
    repeated(datapath, &case, Direction::Ingress, &frame, count, false)
}

/// A denied UDP datagram, repeated: any packet but a SYN looks conntrack up first.
fn denied_udp(datapath: &mut BpfDatapath, count: u32) -> Result<BenchResult, DatapathError> {
    let family = Family::V4;
    let frame =
        PacketSpec::first(family.outside(), family.server(), proto::UDP, 40_001, 53).build();
    repeated(
        datapath,
        "denied flow, UDP (deduplicated)",
        Direction::Ingress,
        &frame,
        count,
        false,
    )
}
