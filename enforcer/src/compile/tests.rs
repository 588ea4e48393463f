//! Compiler tests: real Kubernetes YAML in, the compiled maps judged by the userspace model
//! (the probe's decision logic) and by their entries.
//!
//! The YAML is in `tests/fixtures/compile` (the format is in the fixtures' README):
//! `world.yaml`, the cluster every case starts from, and one `CompileCase` file per case under
//! `cases/`, named `<test>[.<step>].yaml` after the test it belongs to. Data flows like this:
//! 1. [`load`] reads a case: its `base` (the world) and then its own objects, as one
//!    multi-document text through `parse_manifests`, which must find no error.
//! 2. [`every_case_compiles_to_its_errors_and_flows`] walks every case as a table: the compile
//!    errors must be the case's `errors`, and each of its `flows` must get its expected answer
//!    from the model ([`probe`]).
//! 3. The other tests load cases by name for what a table cannot say: map entries and flags,
//!    ids and revisions across recompiles, diffs, capacities, inputs scaled up from a template.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::PodIP;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Deserialize;
use tollgate_schemas::{EndpointKey, EndpointState, addr, endpoint_flags, proto};

use super::*;
use crate::decision::ProbeFlow;
use crate::manifest::parse_manifests;
use crate::model::decide_flow;
use crate::sync::diff;

/// The first document of a case file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct CaseHeader {
    api_version: String,
    kind: String,
    metadata: CaseMetadata,
    spec: CaseSpec,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseMetadata {
    /// The file's name without `.yaml`.
    name: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseSpec {
    /// What the case shows.
    description: String,
    /// The file whose objects come first, relative to the case file.
    base: String,
    /// Every compile error the case expects, in any order.
    #[serde(default)]
    errors: Vec<ExpectedError>,
    /// `FROM TO PORT/PROTOCOL ANSWER`, the answer as [`probe`] gives it.
    #[serde(default)]
    flows: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExpectedError {
    object: String,
    field: String,
    /// The whole message, when the case pins it.
    #[serde(default)]
    message: Option<String>,
}

/// A case file, loaded: its spec and its snapshot.
struct Case {
    spec: CaseSpec,
    snapshot: Snapshot,
}

fn cases_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/compile/cases")
}

/// A fixture file's objects, its base chain's first, as one multi-document text; and its case
/// header, when its first document is a `CompileCase`.
fn objects(path: &Path) -> (String, Option<CaseHeader>) {
    let shown = path.display();
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{shown}: {e}"));
    let (first, rest) = text.split_once("\n---\n").unwrap_or((&text, ""));
    let first: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(first).unwrap_or_else(|e| panic!("{shown}: {e}"));
    if first.get("kind").and_then(|k| k.as_str()) != Some("CompileCase") {
        return (text, None);
    }
    let header: CaseHeader =
        serde_yaml_ng::from_value(first).unwrap_or_else(|e| panic!("{shown}: bad header: {e}"));
    assert_eq!(header.api_version, "tollgate.io/v1alpha1", "{shown}");
    let base = path.parent().unwrap().join(&header.spec.base);
    let (base, _) = objects(&base);
    (format!("{base}\n---\n{rest}"), Some(header))
}

/// Loads `cases/<name>.yaml`; the YAML must parse.
fn load(name: &str) -> Case {
    let (text, header) = objects(&cases_dir().join(format!("{name}.yaml")));
    let header = header.unwrap_or_else(|| panic!("{name}: the first document must be a case"));
    assert_eq!(header.kind, "CompileCase");
    assert_eq!(header.metadata.name, name, "a case is named after its file");
    assert!(
        !header.spec.description.is_empty(),
        "{name}: no description"
    );
    let (snapshot, errors) = parse_manifests(&text, &format!("{name}.yaml"));
    assert_eq!(errors, vec![], "{name}: the case's YAML must parse");
    Case {
        spec: header.spec,
        snapshot,
    }
}

fn snapshot(name: &str) -> Snapshot {
    load(name).snapshot
}

fn compile_all(snapshot: &Snapshot) -> Compiled {
    compile(
        snapshot,
        &Placement::AllPods { ifindex: 1 },
        &Ids::default(),
    )
}

/// Compiles `snapshot`, insisting that there are no errors.
fn compile_cleanly(snapshot: &Snapshot) -> Compiled {
    let compiled = compile_all(snapshot);
    assert_eq!(compiled.errors, vec![]);
    compiled
}

/// Compiles the case `name`, insisting that there are no errors.
fn compiled(name: &str) -> Compiled {
    compile_cleanly(&snapshot(name))
}

/// `ns/name` → the pod's first address, or an address literal.
fn address(snapshot: &Snapshot, who: &str) -> Result<IpAddr, String> {
    if let Ok(ip) = who.parse() {
        return Ok(ip);
    }
    let (namespace, name) = who.split_once('/').ok_or(format!("{who:?}: not a pod"))?;
    let pod = snapshot
        .pods
        .iter()
        .find(|p| {
            p.metadata.namespace.as_deref() == Some(namespace)
                && p.metadata.name.as_deref() == Some(name)
        })
        .ok_or(format!("no pod {who}"))?;
    Ok(crate::snapshot::pod_addresses(pod)[0])
}

/// What the model says about a new flow: `allow <rule>`, or `<verdict> <reason>`; an error
/// when the flow does not resolve.
fn try_probe(
    snapshot: &Snapshot,
    compiled: &Compiled,
    from: &str,
    to: &str,
    port: &str,
) -> Result<String, String> {
    let (number, protocol) = port.split_once('/').ok_or(format!("{port:?}: no /"))?;
    let protocol = match protocol {
        "TCP" => proto::TCP,
        "UDP" => proto::UDP,
        "SCTP" => proto::SCTP,
        "ICMP" => proto::ICMP,
        other => return Err(format!("protocol {other}")),
    };
    let flow = ProbeFlow {
        src: address(snapshot, from)?,
        dst: address(snapshot, to)?,
        protocol,
        src_port: 40000,
        dst_port: number.parse().map_err(|_| format!("port {number:?}"))?,
        service: None,
    };
    let outcome = decide_flow(&compiled.desired, &flow);
    let verdict = outcome.verdict().name();
    Ok(match outcome.deciding() {
        Some((_, d)) if d.rule_id != 0 => format!("{verdict} {}", compiled.rules[&d.rule_id]),
        Some((_, d)) => format!("{verdict} {}", d.reason.name()),
        None => format!("{verdict} no-endpoint"),
    })
}

/// [`try_probe`] of a flow that must resolve.
fn probe(snapshot: &Snapshot, compiled: &Compiled, from: &str, to: &str, port: &str) -> String {
    try_probe(snapshot, compiled, from, to, port).unwrap_or_else(|e| panic!("{e}"))
}

/// Every flow (`FROM TO PORT/PROTOCOL ANSWER`) that does not get its answer, described.
fn wrong_flows(snapshot: &Snapshot, compiled: &Compiled, flows: &[impl AsRef<str>]) -> Vec<String> {
    flows
        .iter()
        .filter_map(|line| {
            let line = line.as_ref();
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [from, to, port, answer @ ..] = fields.as_slice() else {
                return Some(format!("{line:?}: expected FROM TO PORT/PROTOCOL ANSWER"));
            };
            let want = answer.join(" ");
            match try_probe(snapshot, compiled, from, to, port) {
                Ok(got) if got == want => None,
                Ok(got) => Some(format!("{from} -> {to} {port}: got {got:?}, want {want:?}")),
                Err(e) => Some(format!("{line:?}: {e}")),
            }
        })
        .collect()
}

/// Checks every flow and reports all mismatches at once.
fn expect(snapshot: &Snapshot, compiled: &Compiled, flows: &[&str]) {
    let wrong = wrong_flows(snapshot, compiled, flows);
    assert!(wrong.is_empty(), "\n{}", wrong.join("\n"));
}

/// How `got` differs from the errors a case expects: every (object, field) as often as
/// expected, and the whole message where the case gives one.
fn wrong_errors(expected: &[ExpectedError], got: &[InputError]) -> Vec<String> {
    let mut want: Vec<(&str, &str)> = expected
        .iter()
        .map(|e| (e.object.as_str(), e.field.as_str()))
        .collect();
    let mut found: Vec<(&str, &str)> = got
        .iter()
        .map(|e| (e.object.as_str(), e.field.as_str()))
        .collect();
    want.sort_unstable();
    found.sort_unstable();
    let mut wrong = Vec::new();
    if want != found {
        let listed: Vec<String> = got.iter().map(|e| format!("  {e}")).collect();
        wrong.push(format!(
            "errors differ: want (object, field) {want:?}, got\n{}",
            listed.join("\n")
        ));
    }
    for e in expected {
        let Some(message) = &e.message else { continue };
        if !got.contains(&InputError {
            object: e.object.clone(),
            field: e.field.clone(),
            message: message.clone(),
        }) {
            wrong.push(format!("no error {}: {}: {message}", e.object, e.field));
        }
    }
    wrong
}

fn flags_of(compiled: &Compiled, ip: &str) -> u32 {
    let key = EndpointKey {
        addr: addr::to_bytes(ip.parse().unwrap()),
    };
    compiled.desired.endpoints[&key].flags
}

/// The table: every case's compile errors and flows, all failures reported at once by case file
/// and flow.
#[test]
fn every_case_compiles_to_its_errors_and_flows() {
    let mut names: Vec<String> = std::fs::read_dir(cases_dir())
        .expect("the cases directory")
        .map(|entry| entry.expect("a case file").path())
        .filter(|path| path.extension().is_some_and(|e| e == "yaml"))
        .map(|path| path.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mut failures = Vec::new();
    let mut flows = 0;
    for name in &names {
        let case = load(name);
        let compiled = compile_all(&case.snapshot);
        let wrong = wrong_errors(&case.spec.errors, &compiled.errors)
            .into_iter()
            .chain(wrong_flows(&case.snapshot, &compiled, &case.spec.flows));
        failures.extend(wrong.map(|w| format!("cases/{name}.yaml: {w}")));
        flows += case.spec.flows.len();
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
    // As many as the tests had before they were fixtures: a lost file cannot pass unseen.
    assert!(names.len() >= 58, "only {} cases", names.len());
    assert!(flows >= 163, "only {flows} flows");
}

/// The flows of these cases and of `policy-types-default.explicit-egress` are in the table.
#[test]
fn policy_types_default() {
    // No policyTypes, egress rules given: Ingress and Egress.
    let both = compiled("policy-types-default.egress-rules");
    let isolated = endpoint_flags::INGRESS_ISOLATED | endpoint_flags::EGRESS_ISOLATED;
    assert_eq!(
        flags_of(&both, "10.0.1.1"),
        endpoint_flags::PROGRAMMED | isolated
    );
    assert_eq!(flags_of(&both, "10.0.1.2"), endpoint_flags::PROGRAMMED);
    // No policyTypes, empty egress: Ingress only.
    let ingress = compiled("policy-types-default.empty-egress");
    assert_eq!(
        flags_of(&ingress, "10.0.1.1"),
        endpoint_flags::PROGRAMMED | endpoint_flags::INGRESS_ISOLATED
    );
}

/// The case's flows (as peers) are in the table.
#[test]
fn pods_that_do_not_network_are_neither_endpoints_nor_peers() {
    let compiled = compiled("pods-that-do-not-network-are-neither-endpoints-nor-peers");
    for ip in ["192.168.0.10", "10.0.1.99"] {
        let key = EndpointKey {
            addr: addr::to_bytes(ip.parse().unwrap()),
        };
        assert!(!compiled.desired.endpoints.contains_key(&key), "{ip}");
    }
    assert!(
        !compiled
            .endpoint_pods
            .values()
            .any(|p| p == "x/host" || p == "x/done")
    );
}

/// The IPv6 flows are the table's `ipv6-and-dual-stack.*` cases.
#[test]
fn ipv6_and_dual_stack() {
    // Both addresses of a dual-stack pod are one endpoint.
    let compiled = compiled("ipv6-and-dual-stack.one-endpoint");
    let state = |ip: &str| {
        compiled.desired.endpoints[&EndpointKey {
            addr: addr::to_bytes(ip.parse().unwrap()),
        }]
    };
    assert_eq!(state("10.0.1.1"), state("fd00::1:1"));
}

/// The flows (audit-deny) and the unknown mode's error are the table's `audit-mode.*` cases.
#[test]
fn audit_mode() {
    let audit = endpoint_flags::INGRESS_AUDIT | endpoint_flags::EGRESS_AUDIT;
    let all_audit = compiled("audit-mode.all-audit");
    assert_eq!(flags_of(&all_audit, "10.0.1.1") & audit, audit);
    let mixed = compiled("audit-mode.mixed");
    assert_eq!(flags_of(&mixed, "10.0.1.1") & audit, 0);
    // The namespace's annotation covers every policy in it.
    let by_namespace = compiled("audit-mode.namespace");
    assert_eq!(flags_of(&by_namespace, "10.0.4.1") & audit, audit);
    // Not isolated: no audit flag.
    assert_eq!(
        flags_of(&by_namespace, "10.0.1.1"),
        endpoint_flags::PROGRAMMED
    );
}

/// The errors, by object and field, and the flows are in the table.
#[test]
fn invalid_objects_are_reported_and_left_out() {
    let compiled = compile_all(&snapshot("invalid-objects-are-reported-and-left-out"));
    assert_eq!(
        compiled
            .rules
            .values()
            .map(|r| r.to_string())
            .collect::<Vec<_>>(),
        ["x/good ingress[0]"]
    );
}

#[test]
fn placement_by_interface() {
    let snapshot = snapshot("placement-by-interface");
    let interfaces = BTreeMap::from([
        ("x/a".to_owned(), 7),
        ("y/b".to_owned(), 9),
        ("x/gone".to_owned(), 11),
        ("x/host".to_owned(), 12),
    ]);
    let compiled = compile(
        &snapshot,
        &Placement::Interfaces(&interfaces),
        &Ids::default(),
    );
    assert_eq!(
        compiled.endpoint_pods,
        BTreeMap::from([(1, "x/a".to_owned()), (2, "y/b".to_owned())])
    );
    let ifindexes: Vec<(IpAddr, u32)> = compiled
        .desired
        .endpoints
        .iter()
        .map(|(k, v)| (addr::from_bytes(k.addr), v.ifindex))
        .collect();
    assert_eq!(
        ifindexes,
        [
            ("10.0.1.1".parse().unwrap(), 7),
            ("10.0.2.2".parse().unwrap(), 9),
            ("fd00::1:1".parse().unwrap(), 7),
        ]
    );
    // x/a with one interface per address (a multi-NIC pod): one endpoint, the same id, flags
    // and sets, each address on its own interface.
    let addresses = BTreeMap::from([("fd00::1:1".parse().unwrap(), 8)]);
    let by_address = compile(
        &snapshot,
        &Placement::InterfacesByAddress {
            pods: &interfaces,
            addresses: &addresses,
        },
        &Ids::default(),
    );
    assert_eq!(by_address.endpoint_pods, compiled.endpoint_pods);
    let states: Vec<(IpAddr, EndpointState)> = by_address
        .desired
        .endpoints
        .iter()
        .map(|(k, v)| (addr::from_bytes(k.addr), *v))
        .collect();
    let (v4, v6) = (states[0].1, states[2].1);
    assert_eq!((v4.ifindex, v6.ifindex), (7, 8));
    assert_eq!(EndpointState { ifindex: 7, ..v6 }, v4);
    // Only the sets of x/a and y/b have entries.
    let sets: std::collections::BTreeSet<u32> = compiled
        .desired
        .endpoints
        .values()
        .flat_map(|e| [e.ingress_set, e.egress_set])
        .collect();
    assert!(
        compiled
            .desired
            .policy
            .keys()
            .all(|k| sets.contains(&k.set))
    );
}

#[test]
fn ids_are_stable_across_recompiles() {
    let first = compile_all(&snapshot("ids-are-stable-across-recompiles.first"));
    // A policy that sorts first, a new pod, and one rule less.
    let second_snapshot = snapshot("ids-are-stable-across-recompiles.second");
    let second = compile(
        &second_snapshot,
        &Placement::AllPods { ifindex: 1 },
        &first.ids,
    );
    for (pod, id) in &first.ids.endpoints {
        assert_eq!(second.ids.endpoints.get(pod), Some(id), "{pod}");
    }
    assert_eq!(
        second.ids.endpoints["a-first/new"],
        first.ids.endpoints.len() as u32 + 1
    );
    let rule = |c: &Compiled, name: &str| {
        c.rules
            .iter()
            .find(|(_, r)| r.to_string() == name)
            .map(|(id, _)| *id)
    };
    assert_eq!(rule(&first, "x/m ingress[0]"), Some(1));
    assert_eq!(rule(&first, "x/m ingress[1]"), Some(2));
    // x/m ingress[1] is gone, which frees id 2, but only for the compilation after this one:
    // the new policy's rule takes 3.
    assert_eq!(rule(&second, "x/m ingress[0]"), Some(1));
    assert_eq!(rule(&second, "x/m ingress[1]"), None);
    assert_eq!(rule(&second, "a-first/a ingress[0]"), Some(3));
    // The same input with the previous ids is the same output.
    let again = compile(
        &second_snapshot,
        &Placement::AllPods { ifindex: 1 },
        &second.ids,
    );
    assert_eq!(again, second);
}

#[test]
fn an_object_listed_twice_is_reported_and_its_last_definition_used() {
    let both = snapshot("an-object-listed-twice-is-reported-and-its-last-definition-used");
    let duplicate = InputError {
        object: "NetworkPolicy x/twice".to_owned(),
        field: "metadata.name".to_owned(),
        message: "defined more than once; the last definition is used".to_owned(),
    };
    let (allow, deny) = ("allow x/twice ingress[0]", "deny isolated-no-rule-matched");
    let unselected = "allow no-policy-selects-pod";
    // (policies listed, duplicate reported, 80/TCP, 81/TCP): listed twice, then the same
    // objects again unchanged (still reported), then once, then not at all (gone).
    let steps = [
        (2, true, deny, allow),
        (2, true, deny, allow),
        (1, false, allow, deny),
        (0, false, unselected, unselected),
    ];
    let mut compiler = Compiler::new();
    let placement = Placement::AllPods { ifindex: 1 };
    for (step, (listed, reported, port_80, port_81)) in steps.into_iter().enumerate() {
        let mut snapshot = both.clone();
        snapshot.policies.truncate(listed);
        compiler.load(&snapshot);
        let compiled = compiler.compile(&placement, &Ids::default(), &Capacity::default());
        let errors = if reported {
            vec![duplicate.clone()]
        } else {
            vec![]
        };
        assert_eq!(compiled.errors, errors, "step {step}");
        let verdict = |port| probe(&snapshot, &compiled, "y/a", "x/a", port);
        assert_eq!(verdict("80/TCP"), port_80, "step {step}");
        assert_eq!(verdict("81/TCP"), port_81, "step {step}");
    }
}

#[test]
fn deterministic_whatever_the_input_order() {
    let forward = snapshot("deterministic-whatever-the-input-order");
    let mut reversed = forward.clone();
    reversed.pods.reverse();
    reversed.namespaces.reverse();
    reversed.policies.reverse();
    assert_eq!(compile_all(&forward), compile_all(&reversed));
}

#[test]
fn a_label_change_touches_only_affected_entries() {
    let before_snapshot = snapshot("a-label-change-touches-only-affected-entries");
    let before = compile_all(&before_snapshot);
    let mut after_snapshot = before_snapshot.clone();
    let y_b = after_snapshot
        .pods
        .iter_mut()
        .find(|p| {
            p.metadata.name.as_deref() == Some("b") && p.metadata.namespace.as_deref() == Some("y")
        })
        .unwrap();
    y_b.metadata
        .labels
        .get_or_insert_default()
        .insert("role".into(), "client".into());
    let after = compile(
        &after_snapshot,
        &Placement::AllPods { ifindex: 1 },
        &before.ids,
    );
    expect(
        &after_snapshot,
        &after,
        &[
            "y/b x/a 80/TCP allow x/p ingress[0]",
            "y/a x/a 80/TCP deny isolated-no-rule-matched",
        ],
    );
    let changes = diff(&before.desired, &after.desired);
    let x_a = after.ids.endpoints["x/a"];
    let x_a_set = after.desired.endpoints[&EndpointKey {
        addr: addr::to_bytes("10.0.1.1".parse().unwrap()),
    }]
        .ingress_set;
    // y/b's address changes identity; x/a's set gains one entry for the new identity (and its
    // rule set, which nothing needed before); no other set changes.
    let peers: Vec<IpAddr> = changes
        .peers
        .upserts
        .iter()
        .map(|(k, _)| addr::from_bytes(k.key.addr))
        .collect();
    assert_eq!(peers, ["10.0.2.2".parse::<IpAddr>().unwrap()]);
    assert!(changes.peers.deletes.is_empty());
    let added: Vec<u32> = changes.policy.upserts.iter().map(|(k, _)| k.set).collect();
    assert_eq!(added, [x_a_set]);
    assert!(changes.policy.deletes.is_empty());
    assert_eq!(changes.rulesets.upserts.len(), 1);
    assert!(changes.rulesets.deletes.is_empty());
    // Revisions move (a peer changed identity), nothing else about the endpoints does.
    assert!(changes.endpoints.deletes.is_empty());
    for (key, state) in &changes.endpoints.upserts {
        let before = before.desired.endpoints[key];
        assert_ne!(before.revision, state.revision);
        assert_eq!(
            EndpointState {
                revision: state.revision,
                ..before
            },
            *state
        );
    }
    assert!(after.ids.endpoints.values().any(|id| *id == x_a));
}

/// The error's object and field, and the flows, are in the table.
#[test]
fn too_many_port_rules_for_one_prefix_are_reported() {
    let compiled = compile_all(&snapshot("too-many-port-rules-for-one-prefix-are-reported"));
    assert_eq!(compiled.errors.len(), 1, "{:?}", compiled.errors);
    assert!(
        compiled.errors[0].message.contains("8 were left out"),
        "{}",
        compiled.errors[0].message
    );
}

#[test]
fn ten_thousand_ip_blocks_on_one_endpoint() {
    // 100 rules of 100 blocks each, made from the case's one rule.
    let mut snapshot = snapshot("ten-thousand-ip-blocks-on-one-endpoint");
    let [big] = snapshot.policies.as_mut_slice() else {
        panic!("the case has one policy, x/big");
    };
    let rules = big.spec.as_mut().and_then(|s| s.ingress.as_mut()).unwrap();
    let template = rules.pop().unwrap();
    let peer = &template.from.as_ref().unwrap()[0];
    *rules = (0..100u32)
        .map(|rule| {
            let mut from = Vec::new();
            for b in 0..100u32 {
                let ip = Ipv4Addr::from(0xc633_0000 + (rule * 100 + b) * 4);
                let mut peer = peer.clone();
                let block = peer.ip_block.as_mut().unwrap();
                block.cidr = format!("{ip}/30");
                block.except = Some(vec![format!("{ip}/32")]);
                from.push(peer);
            }
            let mut copy = template.clone();
            copy.from = Some(from);
            copy.ports.as_mut().unwrap()[0].port = Some(IntOrString::Int(1 + rule as i32));
            copy
        })
        .collect();
    let started = std::time::Instant::now();
    let compiled = compile_cleanly(&snapshot);
    let elapsed = started.elapsed();
    // 10,000 blocks and 10,000 excepts are regions in the peer trie; x/a's set has an entry
    // for each block's region (an except's region allows nothing: no entry).
    assert!(compiled.desired.peers.len() >= 20_000);
    let x_a_set = compiled.desired.endpoints[&EndpointKey {
        addr: addr::to_bytes("10.0.1.1".parse().unwrap()),
    }]
        .ingress_set;
    let entries = compiled
        .desired
        .policy
        .keys()
        .filter(|k| k.set == x_a_set)
        .count();
    assert_eq!(entries, 10_000);
    // Debug builds are slow; release must stay well under a second.
    assert!(elapsed < std::time::Duration::from_secs(20), "{elapsed:?}");
    expect(
        &snapshot,
        &compiled,
        &[
            "198.51.0.1 x/a 1/TCP allow x/big ingress[0]",
            "198.51.0.0 x/a 1/TCP deny isolated-no-rule-matched",
            "198.51.0.5 x/a 1/TCP allow x/big ingress[0]",
            "198.51.1.145 x/a 2/TCP allow x/big ingress[1]",
            "198.51.1.145 x/a 1/TCP deny isolated-no-rule-matched",
        ],
    );
}

/// The case `name` with `count` copies of its Service svc-1: svc-N at ClusterIP 10.96.0.N.
fn with_services(name: &str, count: u8) -> Snapshot {
    let mut snapshot = snapshot(name);
    let [template] = std::mem::take(&mut snapshot.services).try_into().unwrap();
    snapshot.services = (1..=count)
        .map(|n| {
            let mut service = template.clone();
            service.metadata.name = Some(format!("svc-{n}"));
            service.spec.as_mut().unwrap().cluster_ip = Some(format!("10.96.0.{n}"));
            service
        })
        .collect();
    snapshot
}

#[test]
fn cluster_ips_get_entries_only_where_they_change_an_answer() {
    let allow_all = "cluster-ips-get-entries-only-where-they-change-an-answer.egress-anywhere";
    let to_web = "cluster-ips-get-entries-only-where-they-change-an-answer.egress-to-web";
    let egress_entries = |snapshot: &Snapshot| compile_cleanly(snapshot).desired.policy.len();
    // Everything allowed already: the addresses answer for the ClusterIPs.
    assert_eq!(
        egress_entries(&with_services(allow_all, 50)),
        egress_entries(&with_services(allow_all, 0))
    );
    // Only the backends allowed: one entry per ClusterIP per egress policy set (the pods of y
    // share one).
    let snapshot = with_services(to_web, 50);
    let with_services_compiled = compile_cleanly(&snapshot);
    let sets = with_services_compiled
        .desired
        .endpoints
        .values()
        .filter(|e| e.flags & endpoint_flags::EGRESS_ISOLATED != 0)
        .map(|e| e.egress_set)
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    assert_eq!(sets, 1);
    assert_eq!(
        with_services_compiled.desired.policy.len(),
        egress_entries(&with_services(to_web, 0)) + 50 * sets
    );
    assert_eq!(with_services_compiled.services.len(), 50);
    assert!(snapshot.services.len() == 50);
}

/// The errors' objects and fields are also in the table; here, in the order given.
#[test]
fn pod_ip_that_is_not_the_first_of_pod_ips_leaves_the_pod_out() {
    let compiled = compile_all(&snapshot(
        "pod-ip-that-is-not-the-first-of-pod-ips-leaves-the-pod-out",
    ));
    let got: Vec<(&str, &str)> = compiled
        .errors
        .iter()
        .map(|e| (e.object.as_str(), e.field.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            ("Pod x/garbled", "status.podIP"),
            ("Pod x/two-faced", "status.podIP"),
        ]
    );
    assert!(
        compiled.errors[1]
            .message
            .starts_with("10.0.1.50 is not status.podIPs[0] (10.0.1.51)"),
        "{}",
        compiled.errors[1].message
    );
    // Left out: neither address is an endpoint (fail closed: unknown-endpoint on a node).
    for left_out in ["10.0.1.50", "10.0.1.51", "10.0.1.52"] {
        let ip: IpAddr = left_out.parse().unwrap();
        assert!(
            !compiled.desired.endpoints.contains_key(&EndpointKey {
                addr: addr::to_bytes(ip)
            }),
            "{left_out}"
        );
    }
    let same: IpAddr = "fd00::53".parse().unwrap();
    assert!(compiled.desired.endpoints.contains_key(&EndpointKey {
        addr: addr::to_bytes(same)
    }));
}

#[test]
fn sets_that_do_not_fit_deny_their_endpoints_and_are_named() {
    let snapshot = snapshot("three-allows");
    let roomy = compile_all(&snapshot);
    assert_eq!(roomy.errors, vec![]);
    let needed = roomy.desired.policy.len() as u32;
    // One entry short: the last set (by id) does not fit, the others are untouched.
    let capacity = Capacity {
        policy: needed - 1,
        ..Capacity::default()
    };
    let tight = compile_with(
        &snapshot,
        &Placement::AllPods { ifindex: 1 },
        &Ids::default(),
        &capacity,
    );
    assert!(tight.desired.policy.len() as u32 <= capacity.policy);
    assert_eq!(tight.errors.len(), 1, "{:?}", tight.errors);
    let error = &tight.errors[0];
    assert_eq!(error.field, "ingress policy");
    assert!(error.message.contains("TG_POLICY"), "{}", error.message);
    assert!(
        error.message.contains("denied (not programmed)"),
        "{}",
        error.message
    );
    let denied = &error.object;
    let denied_pod = denied.strip_prefix("Pod ").unwrap();
    assert!(error.message.contains(&format!(
        "isolated by x/to-{}",
        denied_pod.strip_prefix("x/").unwrap()
    )));
    let not_programmed = "deny endpoint-not-programmed";
    for (from, to) in [("y/a", "x/a"), ("y/b", "x/b"), ("z/a", "x/c")] {
        let want = if to == denied_pod {
            not_programmed.to_owned()
        } else {
            probe(&snapshot, &roomy, from, to, "80/TCP")
        };
        assert_eq!(
            probe(&snapshot, &tight, from, to, "80/TCP"),
            want,
            "{from} -> {to}"
        );
    }
    // The rule-set array: room for nothing but the empty set denies every isolated endpoint
    // whose set needs a rule set.
    let capacity = Capacity {
        rulesets: 1,
        ..Capacity::default()
    };
    let none = compile_with(
        &snapshot,
        &Placement::AllPods { ifindex: 1 },
        &Ids::default(),
        &capacity,
    );
    assert!(none.desired.rulesets.is_empty());
    assert_eq!(none.errors.len(), 3, "{:?}", none.errors);
    assert!(
        none.errors
            .iter()
            .all(|e| e.message.contains("TG_RULESETS"))
    );
    assert_eq!(
        probe(&snapshot, &none, "y/a", "x/a", "80/TCP"),
        not_programmed
    );
}

#[test]
fn peer_map_overflow_leaves_pods_to_their_region_and_says_so() {
    let snapshot = snapshot("three-allows");
    let roomy = compile_all(&snapshot);
    // Regions (0.0.0.0/0, ::/0) always fit; pod addresses are left out from the end.
    let capacity = Capacity {
        peers: roomy.desired.peers.len() as u32 - 1,
        ..Capacity::default()
    };
    let tight = compile_with(
        &snapshot,
        &Placement::AllPods { ifindex: 1 },
        &Ids::default(),
        &capacity,
    );
    assert_eq!(tight.desired.peers.len() as u32, capacity.peers);
    assert_eq!(tight.errors.len(), 1, "{:?}", tight.errors);
    assert!(tight.errors[0].message.contains("TG_PEERS"));
}

#[test]
fn revisions_are_counters_that_move_only_on_change() {
    let snapshot = snapshot("three-allows");
    let prior = Ids {
        next_revision: 1 << 40,
        ..Ids::default()
    };
    let first = compile(&snapshot, &Placement::AllPods { ifindex: 1 }, &prior);
    let revisions: std::collections::BTreeSet<u64> = first
        .desired
        .endpoints
        .values()
        .map(|e| e.revision)
        .collect();
    assert!(revisions.iter().all(|r| *r >= 1 << 40));
    // Dual-stack pods share one revision; every endpoint its own.
    assert_eq!(revisions.len(), first.ids.endpoints.len());
    let again = compile(&snapshot, &Placement::AllPods { ifindex: 1 }, &first.ids);
    assert_eq!(again.desired, first.desired);
    assert_eq!(again.ids.next_revision, first.ids.next_revision);
    // Dropping to-a: x/a is no longer isolated and takes a new revision; endpoints that no
    // policy isolates keep theirs (their decisions cannot change).
    let mut fewer = snapshot.clone();
    fewer
        .policies
        .retain(|p| p.metadata.name.as_deref() != Some("to-a"));
    let after = compile(&fewer, &Placement::AllPods { ifindex: 1 }, &first.ids);
    let x_a = EndpointKey {
        addr: addr::to_bytes("10.0.1.1".parse().unwrap()),
    };
    let x_a = after.desired.endpoints[&x_a];
    assert!(x_a.revision >= first.ids.next_revision);
    for (key, state) in &after.desired.endpoints {
        if state.ingress_set == 0 && state.egress_set == 0 && state.id != x_a.id {
            assert_eq!(state.revision, first.desired.endpoints[key].revision);
        }
    }
    // A pod relabelled in a way no selector sees keeps every revision.
    let mut relabelled = snapshot.clone();
    relabelled
        .pods
        .iter_mut()
        .find(|p| {
            p.metadata.name.as_deref() == Some("b") && p.metadata.namespace.as_deref() == Some("y")
        })
        .unwrap()
        .metadata
        .labels
        .get_or_insert_default()
        .insert("pod-template-hash".into(), "f00".into());
    let after = compile(&relabelled, &Placement::AllPods { ifindex: 1 }, &first.ids);
    assert_eq!(after.desired, first.desired);
}

#[test]
fn identities_grow_with_label_sets_not_pods() {
    // 2,000 pods of one Deployment in y, allowed into x/a from any namespace: one identity for
    // all of them, one entry in x/a's set. The case has the first, web-0 (10.5.0.0).
    let mut snapshot = snapshot("identities-grow-with-label-sets-not-pods");
    let template = snapshot
        .pods
        .iter()
        .find(|p| p.metadata.name.as_deref() == Some("web-0"))
        .unwrap()
        .clone();
    for i in 1..2000u32 {
        let mut pod = template.clone();
        pod.metadata.name = Some(format!("web-{i}"));
        let ip = Ipv4Addr::from(0x0a05_0000 + i).to_string();
        let status = pod.status.as_mut().unwrap();
        status.pod_ips = Some(vec![PodIP { ip: ip.clone() }]);
        status.pod_ip = Some(ip);
        snapshot.pods.push(pod);
    }
    let compiled = compile_cleanly(&snapshot);
    assert_eq!(compiled.desired.policy.len(), 1);
    assert_eq!(compiled.desired.rulesets.len(), 1);
    expect(
        &snapshot,
        &compiled,
        &[
            "y/web-0 x/a 80/TCP allow x/from-clients ingress[0]",
            "y/web-1999 x/a 80/TCP allow x/from-clients ingress[0]",
            "y/a x/a 80/TCP deny isolated-no-rule-matched",
        ],
    );
}
