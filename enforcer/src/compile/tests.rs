//! Compiler tests: real Kubernetes YAML in, the compiled maps judged by the userspace model
//! (the probe's decision logic) and by their entries.

use std::collections::BTreeMap;
use std::net::IpAddr;

use tollgate_schemas::{EndpointKey, EndpointState, addr, endpoint_flags, proto};

use super::*;
use crate::decision::ProbeFlow;
use crate::manifest::parse_manifests;
use crate::model::decide_flow;
use crate::sync::diff;

/// Namespaces x (ns=x), y (ns=y, env=prod), z (ns=z, env=dev); w exists only through its pod.
const NAMESPACES: &str = "
apiVersion: v1
kind: Namespace
metadata: {name: x, labels: {ns: x}}
---
apiVersion: v1
kind: Namespace
metadata: {name: y, labels: {ns: y, env: prod}}
---
apiVersion: v1
kind: Namespace
metadata: {name: z, labels: {ns: z, env: dev}}
";

/// A pod serving 80/TCP, 81/UDP and 82/SCTP under upstream-style names, plus `extra` ports.
fn pod(namespace: &str, name: &str, labels: &str, ips: &[&str], extra: &str) -> String {
    let first = ips.first().copied().unwrap_or_default();
    let ips: Vec<String> = ips.iter().map(|ip| format!("{{ip: \"{ip}\"}}")).collect();
    format!(
        "
---
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: {namespace}, labels: {labels}}}
spec:
  containers:
  - name: main
    image: agnhost
    ports:
    - {{name: serve-80-tcp, containerPort: 80}}
    - {{name: serve-81-udp, containerPort: 81, protocol: UDP}}
    - {{name: serve-82-sctp, containerPort: 82, protocol: SCTP}}
{extra}
status:
  phase: Running
  podIP: \"{first}\"
  podIPs: [{list}]
",
        list = ips.join(", "),
    )
}

/// The cluster every test starts from.
fn world() -> String {
    let mut text = NAMESPACES.to_owned();
    text += &pod(
        "x",
        "a",
        "{pod: a, app: web}",
        &["10.0.1.1", "fd00::1:1"],
        "",
    );
    text += &pod(
        "x",
        "b",
        "{pod: b}",
        &["10.0.1.2"],
        "    - {name: web, containerPort: 8080}",
    );
    text += &pod("x", "c", "{pod: c}", &["10.0.1.3", "fd00::1:3"], "");
    text += &pod(
        "y",
        "a",
        "{pod: a}",
        &["10.0.2.1"],
        "    - {name: web, containerPort: 9090}",
    );
    text += &pod("y", "b", "{pod: b}", &["10.0.2.2"], "");
    text += &pod("z", "a", "{pod: a}", &["10.0.3.1"], "");
    text += &pod("w", "a", "{pod: a}", &["10.0.4.1"], "");
    text += "
---
apiVersion: v1
kind: Pod
metadata: {name: host, namespace: x, labels: {pod: host}}
spec:
  hostNetwork: true
  containers: [{name: main, image: agnhost}]
status: {phase: Running, podIP: 192.168.0.10}
---
apiVersion: v1
kind: Pod
metadata: {name: done, namespace: x, labels: {pod: done}}
spec:
  containers: [{name: main, image: agnhost}]
status: {phase: Succeeded, podIP: 10.0.1.99}
";
    text
}

fn snapshot(policies: &str) -> Snapshot {
    let text = format!("{}\n---\n{policies}", world());
    let (snapshot, errors) = parse_manifests(&text, "test.yaml");
    assert_eq!(errors, vec![], "the test's YAML must parse");
    snapshot
}

fn compile_all(snapshot: &Snapshot) -> Compiled {
    compile(
        snapshot,
        &Placement::AllPods { ifindex: 1 },
        &Ids::default(),
    )
}

/// Compiles the world plus `policies`, insisting that there are no errors.
fn compiled(policies: &str) -> (Snapshot, Compiled) {
    let snapshot = snapshot(policies);
    let compiled = compile_all(&snapshot);
    assert_eq!(compiled.errors, vec![], "{policies}");
    (snapshot, compiled)
}

/// `ns/name` → the pod's first address, or an address literal.
fn address(snapshot: &Snapshot, who: &str) -> IpAddr {
    if let Ok(ip) = who.parse() {
        return ip;
    }
    let (namespace, name) = who.split_once('/').unwrap();
    let pod = snapshot
        .pods
        .iter()
        .find(|p| {
            p.metadata.namespace.as_deref() == Some(namespace)
                && p.metadata.name.as_deref() == Some(name)
        })
        .unwrap_or_else(|| panic!("no pod {who}"));
    crate::snapshot::pod_addresses(pod)[0]
}

/// What the model says about a new flow: `allow <rule>`, or `<verdict> <reason>`.
fn probe(snapshot: &Snapshot, compiled: &Compiled, from: &str, to: &str, port: &str) -> String {
    let (number, protocol) = port.split_once('/').unwrap();
    let protocol = match protocol {
        "TCP" => proto::TCP,
        "UDP" => proto::UDP,
        "SCTP" => proto::SCTP,
        "ICMP" => proto::ICMP,
        other => panic!("protocol {other}"),
    };
    let flow = ProbeFlow {
        src: address(snapshot, from),
        dst: address(snapshot, to),
        protocol,
        src_port: 40000,
        dst_port: number.parse().unwrap(),
        service: None,
    };
    let outcome = decide_flow(&compiled.desired, &flow);
    let verdict = outcome.verdict().name();
    match outcome.deciding() {
        Some((_, d)) if d.rule_id != 0 => format!("{verdict} {}", compiled.rules[&d.rule_id]),
        Some((_, d)) => format!("{verdict} {}", d.reason.name()),
        None => format!("{verdict} no-endpoint"),
    }
}

/// Checks every (from, to, port, expected) row and reports all mismatches at once.
fn expect(snapshot: &Snapshot, compiled: &Compiled, rows: &[(&str, &str, &str, &str)]) {
    let mismatches: Vec<String> = rows
        .iter()
        .filter_map(|(from, to, port, want)| {
            let got = probe(snapshot, compiled, from, to, port);
            (got != *want).then(|| format!("{from} -> {to} {port}: got {got:?}, want {want:?}"))
        })
        .collect();
    assert!(mismatches.is_empty(), "\n{}", mismatches.join("\n"));
}

const DENY: &str = "deny isolated-no-rule-matched";
const OPEN: &str = "allow no-policy-selects-pod";

fn check(policies: &str, rows: &[(&str, &str, &str, &str)]) {
    let (snapshot, compiled) = compiled(policies);
    expect(&snapshot, &compiled, rows);
}

fn flags_of(compiled: &Compiled, ip: &str) -> u32 {
    let key = EndpointKey {
        addr: addr::to_bytes(ip.parse().unwrap()),
    };
    compiled.desired.endpoints[&key].flags
}

#[test]
fn default_deny_ingress() {
    check(
        "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny, namespace: x}
spec: {podSelector: {}}
",
        &[
            ("y/a", "x/a", "80/TCP", DENY),
            ("x/b", "x/a", "80/TCP", DENY),
            ("x/a", "y/a", "80/TCP", OPEN),
            ("y/a", "y/b", "80/TCP", OPEN),
            ("203.0.113.7", "x/a", "80/TCP", DENY),
        ],
    );
}

#[test]
fn policy_types_default() {
    // No policyTypes, egress rules given: Ingress and Egress.
    let (_, both) = compiled(
        "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  egress: [{to: [{podSelector: {matchLabels: {pod: b}}}]}]
",
    );
    let isolated = endpoint_flags::INGRESS_ISOLATED | endpoint_flags::EGRESS_ISOLATED;
    assert_eq!(
        flags_of(&both, "10.0.1.1"),
        endpoint_flags::PROGRAMMED | isolated
    );
    assert_eq!(flags_of(&both, "10.0.1.2"), endpoint_flags::PROGRAMMED);
    // No policyTypes, empty egress: Ingress only.
    let (_, ingress) = compiled(
        "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: x}
spec: {podSelector: {matchLabels: {pod: a}}, egress: []}
",
    );
    assert_eq!(
        flags_of(&ingress, "10.0.1.1"),
        endpoint_flags::PROGRAMMED | endpoint_flags::INGRESS_ISOLATED
    );
    check(
        "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  egress: [{to: [{podSelector: {matchLabels: {pod: b}}}]}]
",
        &[
            ("y/a", "x/a", "80/TCP", DENY),
            ("x/a", "x/b", "80/TCP", "allow x/p egress[0]"),
            ("x/a", "y/a", "80/TCP", DENY),
            ("x/b", "x/c", "80/TCP", OPEN),
        ],
    );
    // Explicit [Egress]: the ingress rules are not compiled and ingress is not isolated.
    check(
        "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  ingress: [{}]
",
        &[
            ("y/a", "x/a", "80/TCP", OPEN),
            ("x/a", "y/a", "80/TCP", DENY),
        ],
    );
}

#[test]
fn absent_empty_and_empty_rule() {
    let isolate = |rules: &str| {
        format!(
            "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: p, namespace: x}}
spec:
  podSelector: {{matchLabels: {{pod: a}}}}
  policyTypes: [Ingress]
{rules}
"
        )
    };
    fn everyone(rule: &str) -> [(&str, &str, &str, &str); 6] {
        [
            ("y/a", "x/a", "80/TCP", rule),
            ("x/b", "x/a", "81/UDP", rule),
            ("203.0.113.7", "x/a", "443/TCP", rule),
            ("fd00::1:3", "fd00::1:1", "80/TCP", rule),
            ("2001:db8::7", "fd00::1:1", "80/TCP", rule),
            ("y/a", "x/a", "0/ICMP", rule),
        ]
    }
    // Rule list absent or empty: isolated, nothing allowed.
    check(&isolate(""), &everyone(DENY));
    check(&isolate("  ingress: []"), &everyone(DENY));
    // One empty rule: everything allowed.
    check(
        &isolate("  ingress: [{}]"),
        &everyone("allow x/p ingress[0]"),
    );
    // A rule whose peers are absent or empty: every peer.
    check(
        &isolate("  ingress: [{from: []}]"),
        &everyone("allow x/p ingress[0]"),
    );
    check(
        &isolate("  ingress: [{from: [], ports: []}]"),
        &everyone("allow x/p ingress[0]"),
    );
    // A peer with nothing in it is invalid: the policy is left out.
    let snapshot = snapshot(&isolate("  ingress: [{from: [{}]}]"));
    let compiled = compile_all(&snapshot);
    assert_eq!(
        compiled.errors,
        vec![InputError {
            object: "NetworkPolicy x/p".into(),
            field: "spec.ingress[0].from[0]".into(),
            message: "a peer needs podSelector, namespaceSelector or ipBlock".into(),
        }]
    );
    expect(&snapshot, &compiled, &[("y/a", "x/a", "80/TCP", OPEN)]);
    // An empty podSelector peer: every pod of the policy's namespace, nothing else.
    check(
        &isolate("  ingress: [{from: [{podSelector: {}}]}]"),
        &[
            ("x/b", "x/a", "80/TCP", "allow x/p ingress[0]"),
            ("y/a", "x/a", "80/TCP", DENY),
            ("203.0.113.7", "x/a", "80/TCP", DENY),
        ],
    );
    // An empty namespaceSelector peer: every pod of every namespace, nothing else.
    check(
        &isolate("  ingress: [{from: [{namespaceSelector: {}}]}]"),
        &[
            ("x/b", "x/a", "80/TCP", "allow x/p ingress[0]"),
            ("w/a", "x/a", "80/TCP", "allow x/p ingress[0]"),
            ("203.0.113.7", "x/a", "80/TCP", DENY),
        ],
    );
}

#[test]
fn selectors_and_within_a_peer_or_across_peers() {
    let policy = |from: &str| {
        format!(
            "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: p, namespace: x}}
spec:
  podSelector: {{matchLabels: {{pod: b}}}}
  ingress: [{{from: {from}}}]
"
        )
    };
    let allow = "allow x/p ingress[0]";
    // Both selectors in one peer: pods a of namespace y.
    check(
        &policy(
            "[{namespaceSelector: {matchLabels: {ns: y}}, podSelector: {matchLabels: {pod: a}}}]",
        ),
        &[
            ("y/a", "x/b", "80/TCP", allow),
            ("y/b", "x/b", "80/TCP", DENY),
            ("x/a", "x/b", "80/TCP", DENY),
        ],
    );
    // Two peers: any pod of y, or pods a of x.
    check(
        &policy(
            "[{namespaceSelector: {matchLabels: {ns: y}}}, {podSelector: {matchLabels: {pod: a}}}]",
        ),
        &[
            ("y/a", "x/b", "80/TCP", allow),
            ("y/b", "x/b", "80/TCP", allow),
            ("x/a", "x/b", "80/TCP", allow),
            ("x/c", "x/b", "80/TCP", DENY),
            ("z/a", "x/b", "80/TCP", DENY),
        ],
    );
    // The four operators, on namespace labels (w has none but its name).
    let operators: [(&str, [&str; 4]); 5] = [
        (
            "{key: env, operator: In, values: [prod, staging]}",
            [DENY, allow, DENY, DENY],
        ),
        (
            "{key: env, operator: NotIn, values: [prod]}",
            [allow, DENY, allow, allow],
        ),
        ("{key: env, operator: Exists}", [DENY, allow, allow, DENY]),
        (
            "{key: env, operator: DoesNotExist}",
            [allow, DENY, DENY, allow],
        ),
        (
            "{key: kubernetes.io/metadata.name, operator: In, values: [w]}",
            [DENY, DENY, DENY, allow],
        ),
    ];
    for (expression, [x, y, z, w]) in operators {
        check(
            &policy(&format!(
                "[{{namespaceSelector: {{matchExpressions: [{expression}]}}}}]"
            )),
            &[
                ("x/a", "x/b", "80/TCP", x),
                ("y/a", "x/b", "80/TCP", y),
                ("z/a", "x/b", "80/TCP", z),
                ("w/a", "x/b", "80/TCP", w),
            ],
        );
    }
    // matchLabels and matchExpressions in one selector are ANDed.
    check(
        &policy(
            "[{podSelector: {matchLabels: {pod: a}, matchExpressions: [{key: app, operator: In, values: [web]}]}, namespaceSelector: {}}]",
        ),
        &[
            ("x/a", "x/b", "80/TCP", allow),
            ("y/a", "x/b", "80/TCP", DENY),
        ],
    );
}

#[test]
fn pods_that_do_not_network_are_neither_endpoints_nor_peers() {
    let (snapshot, compiled) = compiled(
        "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{podSelector: {}}]}]
",
    );
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
    expect(
        &snapshot,
        &compiled,
        &[
            ("x/host", "x/a", "80/TCP", DENY),
            ("x/done", "x/a", "80/TCP", DENY),
            ("x/b", "x/a", "80/TCP", "allow x/p ingress[0]"),
        ],
    );
}

#[test]
fn ip_blocks_and_excepts() {
    let policy = |name: &str, block: &str, ports: &str| {
        format!(
            "
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: {name}, namespace: x}}
spec:
  podSelector: {{matchLabels: {{pod: a}}}}
  ingress: [{{from: [{{ipBlock: {block}}}], ports: {ports}}}]
"
        )
    };
    check(
        &policy("p", "{cidr: 10.0.0.0/16, except: [10.0.2.0/24]}", "[]"),
        &[
            ("x/b", "x/a", "80/TCP", "allow x/p ingress[0]"),
            ("y/a", "x/a", "80/TCP", DENY),
            ("z/a", "x/a", "80/TCP", "allow x/p ingress[0]"),
            ("203.0.113.7", "x/a", "80/TCP", DENY),
        ],
    );
    // An except on one pod's address; host bits in the cidr are cleared.
    check(
        &policy("p", "{cidr: 10.0.1.77/24, except: [10.0.1.2/32]}", "[]"),
        &[
            ("x/b", "x/a", "80/TCP", DENY),
            ("x/c", "x/a", "80/TCP", "allow x/p ingress[0]"),
        ],
    );
    // Nested excepts from two policies, with different ports.
    let both = policy(
        "outer",
        "{cidr: 10.0.0.0/8, except: [10.0.2.0/24]}",
        "[{port: 80}]",
    ) + &policy(
        "inner",
        "{cidr: 10.0.2.0/24, except: [10.0.2.2/32]}",
        "[{port: 81, protocol: UDP}]",
    );
    check(
        &both,
        &[
            ("x/b", "x/a", "80/TCP", "allow x/outer ingress[0]"),
            ("x/b", "x/a", "81/UDP", DENY),
            ("y/a", "x/a", "80/TCP", DENY),
            ("y/a", "x/a", "81/UDP", "allow x/inner ingress[0]"),
            ("y/b", "x/a", "80/TCP", DENY),
            ("y/b", "x/a", "81/UDP", DENY),
            ("203.0.113.7", "x/a", "80/TCP", DENY),
        ],
    );
    // A pod peer inside another rule's except keeps its own allow.
    let union = policy(
        "block",
        "{cidr: 10.0.0.0/8, except: [10.0.1.0/24]}",
        "[{port: 80}]",
    ) + "
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: pods, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}], ports: [{port: 443}]}]
";
    check(
        &union,
        &[
            ("x/b", "x/a", "443/TCP", "allow x/pods ingress[0]"),
            ("x/b", "x/a", "80/TCP", DENY),
            ("x/c", "x/a", "443/TCP", DENY),
            ("y/a", "x/a", "80/TCP", "allow x/block ingress[0]"),
        ],
    );
}

#[test]
fn ipv6_and_dual_stack() {
    let policy = |from: &str| {
        format!(
            "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: p, namespace: x}}
spec:
  podSelector: {{matchLabels: {{pod: a}}}}
  ingress: [{{from: {from}}}]
"
        )
    };
    let allow = "allow x/p ingress[0]";
    check(
        &policy("[{ipBlock: {cidr: 'fd00::/64'}}]"),
        &[
            ("fd00::1:3", "fd00::1:1", "80/TCP", allow),
            ("10.0.1.3", "10.0.1.1", "80/TCP", DENY),
            ("2001:db8::1", "fd00::1:1", "80/TCP", DENY),
        ],
    );
    // ::/0 is every IPv6 address and no IPv4 one.
    check(
        &policy("[{ipBlock: {cidr: '::/0'}}]"),
        &[
            ("fd00::1:3", "fd00::1:1", "80/TCP", allow),
            ("2001:db8::1", "fd00::1:1", "80/TCP", allow),
            ("10.0.1.3", "10.0.1.1", "80/TCP", DENY),
            ("203.0.113.7", "10.0.1.1", "80/TCP", DENY),
        ],
    );
    // A pod peer stands for all its addresses.
    check(
        &policy("[{podSelector: {matchLabels: {pod: c}}}]"),
        &[
            ("fd00::1:3", "fd00::1:1", "80/TCP", allow),
            ("10.0.1.3", "10.0.1.1", "80/TCP", allow),
            ("10.0.1.2", "10.0.1.1", "80/TCP", DENY),
        ],
    );
    // Both addresses of a dual-stack pod are one endpoint.
    let (_, compiled) = compiled(&policy("[]"));
    let state = |ip: &str| {
        compiled.desired.endpoints[&EndpointKey {
            addr: addr::to_bytes(ip.parse().unwrap()),
        }]
    };
    assert_eq!(state("10.0.1.1"), state("fd00::1:1"));
}

#[test]
fn named_ports() {
    // Ingress: the name resolves against the selected pod itself.
    check(
        "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: x}
spec:
  podSelector: {}
  ingress: [{ports: [{port: web}, {port: serve-81-udp, protocol: UDP}, {port: serve-82-sctp}]}]
",
        &[
            ("x/a", "x/b", "8080/TCP", "allow x/p ingress[0]"),
            ("x/a", "x/b", "80/TCP", DENY),
            ("x/a", "x/b", "81/UDP", "allow x/p ingress[0]"),
            // x/a has no port named web: the name allows nothing there.
            ("x/b", "x/a", "8080/TCP", DENY),
            ("x/b", "x/a", "81/UDP", "allow x/p ingress[0]"),
            // serve-82-sctp is SCTP; the rule asks for it over TCP: unresolvable.
            ("x/b", "x/a", "82/SCTP", DENY),
            ("x/b", "x/a", "82/TCP", DENY),
        ],
    );
    // Egress: each peer pod's own number.
    check(
        "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress: [{to: [{namespaceSelector: {}}], ports: [{port: web}]}]
",
        &[
            ("x/a", "x/b", "8080/TCP", "allow x/p egress[0]"),
            ("x/a", "x/b", "9090/TCP", DENY),
            ("x/a", "y/a", "9090/TCP", "allow x/p egress[0]"),
            ("x/a", "y/a", "8080/TCP", DENY),
            ("x/a", "y/b", "8080/TCP", DENY),
        ],
    );
    // Egress to an ipBlock or to everyone: pod addresses inside get their own number, other
    // addresses nothing from the name (the numeric port still applies to them).
    for to in [
        "[{ipBlock: {cidr: 10.0.0.0/8, except: [10.0.1.0/24]}}]",
        "[]",
    ] {
        let text = format!(
            "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: p, namespace: x}}
spec:
  podSelector: {{matchLabels: {{pod: a}}}}
  policyTypes: [Egress]
  egress: [{{to: {to}, ports: [{{port: web}}, {{port: 443}}]}}]
"
        );
        let allow = "allow x/p egress[0]";
        check(
            &text,
            &[
                ("x/a", "y/a", "9090/TCP", allow),
                ("x/a", "y/a", "443/TCP", allow),
                ("x/a", "10.9.9.9", "9090/TCP", DENY),
                ("x/a", "10.9.9.9", "443/TCP", allow),
            ],
        );
    }
    let (snapshot, compiled) = compiled(
        "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress: [{to: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.0.1.0/24]}}], ports: [{port: web}]}]
",
    );
    // x/b (10.0.1.2) has web, but lies in the except.
    expect(&snapshot, &compiled, &[("x/a", "x/b", "8080/TCP", DENY)]);
}

#[test]
fn port_ranges_and_protocols() {
    let rule = |ports: &str| {
        format!(
            "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: p, namespace: x}}
spec:
  podSelector: {{matchLabels: {{pod: a}}}}
  ingress: [{{ports: {ports}}}]
"
        )
    };
    let allow = "allow x/p ingress[0]";
    check(
        &rule("[{port: 8000, endPort: 8100}]"),
        &[
            ("y/a", "x/a", "7999/TCP", DENY),
            ("y/a", "x/a", "8000/TCP", allow),
            ("y/a", "x/a", "8100/TCP", allow),
            ("y/a", "x/a", "8101/TCP", DENY),
            ("y/a", "x/a", "8050/UDP", DENY),
        ],
    );
    check(
        &rule("[{protocol: UDP, port: 81}]"),
        &[
            ("y/a", "x/a", "81/UDP", allow),
            ("y/a", "x/a", "81/TCP", DENY),
            ("y/a", "x/a", "81/SCTP", DENY),
            ("y/a", "x/a", "0/ICMP", DENY),
        ],
    );
    check(
        &rule("[{protocol: SCTP, port: 82}]"),
        &[
            ("y/a", "x/a", "82/SCTP", allow),
            ("y/a", "x/a", "82/TCP", DENY),
            ("y/a", "x/a", "82/UDP", DENY),
        ],
    );
    check(
        &rule("[{protocol: UDP}]"),
        &[
            ("y/a", "x/a", "1/UDP", allow),
            ("y/a", "x/a", "65535/UDP", allow),
            ("y/a", "x/a", "53/TCP", DENY),
        ],
    );
}

#[test]
fn rules_are_a_union_and_name_the_first_allowing_rule() {
    check(
        "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: one, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from: [{podSelector: {matchLabels: {pod: b}}}]
    ports: [{port: 80}]
  - from: [{namespaceSelector: {matchLabels: {ns: y}}}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: two, namespace: x}
spec:
  podSelector: {}
  ingress: [{from: [{podSelector: {}}], ports: [{port: 80}, {port: 81, protocol: UDP}]}]
",
        &[
            ("x/b", "x/a", "80/TCP", "allow x/one ingress[0]"),
            ("x/c", "x/a", "80/TCP", "allow x/two ingress[0]"),
            ("x/b", "x/a", "81/UDP", "allow x/two ingress[0]"),
            ("y/b", "x/a", "5432/TCP", "allow x/one ingress[1]"),
            ("x/c", "x/a", "443/TCP", DENY),
            ("x/a", "x/c", "80/TCP", "allow x/two ingress[0]"),
        ],
    );
}

#[test]
fn policies_of_other_namespaces_do_not_apply() {
    check(
        "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny, namespace: y}
spec: {podSelector: {}, policyTypes: [Ingress, Egress]}
",
        &[
            ("x/b", "x/a", "80/TCP", OPEN),
            ("x/a", "y/a", "80/TCP", DENY),
            ("y/a", "x/a", "80/TCP", DENY),
            ("z/a", "w/a", "80/TCP", OPEN),
        ],
    );
}

#[test]
fn audit_mode() {
    let deny = |name: &str, namespace: &str, audit: bool| {
        let annotation = if audit {
            "annotations: {tollgate.io/enforcement: audit}, "
        } else {
            ""
        };
        format!(
            "
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: {name}, namespace: {namespace}, {annotation}}}
spec: {{podSelector: {{}}, policyTypes: [Ingress, Egress]}}
"
        )
    };
    let audit = endpoint_flags::INGRESS_AUDIT | endpoint_flags::EGRESS_AUDIT;
    let (snapshot, all_audit) = compiled(&(deny("a", "x", true) + &deny("b", "x", true)));
    assert_eq!(flags_of(&all_audit, "10.0.1.1") & audit, audit);
    expect(
        &snapshot,
        &all_audit,
        &[(
            "y/a",
            "x/a",
            "80/TCP",
            "audit-deny isolated-no-rule-matched",
        )],
    );
    let (_, mixed) = compiled(&(deny("a", "x", true) + &deny("b", "x", false)));
    assert_eq!(flags_of(&mixed, "10.0.1.1") & audit, 0);
    // The namespace's annotation covers every policy in it.
    let namespace = "
---
apiVersion: v1
kind: Namespace
metadata: {name: w, annotations: {tollgate.io/enforcement: audit}}
";
    let (snapshot, by_namespace) = compiled(&(deny("d", "w", false) + namespace));
    assert_eq!(flags_of(&by_namespace, "10.0.4.1") & audit, audit);
    expect(
        &snapshot,
        &by_namespace,
        &[(
            "w/a",
            "x/a",
            "80/TCP",
            "audit-deny isolated-no-rule-matched",
        )],
    );
    // Not isolated: no audit flag.
    assert_eq!(
        flags_of(&by_namespace, "10.0.1.1"),
        endpoint_flags::PROGRAMMED
    );
    // An unknown mode is reported and enforced.
    let snapshot = self::snapshot(
        "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: x, annotations: {tollgate.io/enforcement: dry-run}}
spec: {podSelector: {}}
",
    );
    let compiled = compile_all(&snapshot);
    assert_eq!(compiled.errors.len(), 1);
    assert_eq!(compiled.errors[0].object, "NetworkPolicy x/p");
    assert_eq!(
        compiled.errors[0].field,
        "metadata.annotations[\"tollgate.io/enforcement\"]"
    );
    expect(&snapshot, &compiled, &[("y/a", "x/a", "80/TCP", DENY)]);
}

#[test]
fn invalid_objects_are_reported_and_left_out() {
    let policy = |name: &str, spec: &str| {
        format!(
            "
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: {name}, namespace: x}}
spec: {spec}
"
        )
    };
    let bad = [
        (
            "cidr",
            "{podSelector: {}, ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/33}}]}]}",
            "spec.ingress[0].from[0].ipBlock.cidr",
        ),
        (
            "except",
            "{podSelector: {}, ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/16, except: [10.1.0.0/24]}}]}]}",
            "spec.ingress[0].from[0].ipBlock.except[0]",
        ),
        (
            "except-family",
            "{podSelector: {}, ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/16, except: ['fd00::/64']}}]}]}",
            "spec.ingress[0].from[0].ipBlock.except[0]",
        ),
        (
            "except-same",
            "{podSelector: {}, ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/16, except: [10.0.0.0/16]}}]}]}",
            "spec.ingress[0].from[0].ipBlock.except[0]",
        ),
        (
            "port",
            "{podSelector: {}, egress: [{ports: [{port: 70000}]}]}",
            "spec.egress[0].ports[0].port",
        ),
        (
            "endport",
            "{podSelector: {}, ingress: [{ports: [{port: 90, endPort: 80}]}]}",
            "spec.ingress[0].ports[0].endPort",
        ),
        (
            "endport-named",
            "{podSelector: {}, ingress: [{ports: [{port: web, endPort: 80}]}]}",
            "spec.ingress[0].ports[0].endPort",
        ),
        (
            "port-name",
            "{podSelector: {}, ingress: [{ports: [{port: web--1}]}]}",
            "spec.ingress[0].ports[0].port",
        ),
        (
            "protocol",
            "{podSelector: {}, ingress: [{ports: [{protocol: ICMP}]}]}",
            "spec.ingress[0].ports[0].protocol",
        ),
        (
            "operator",
            "{podSelector: {matchExpressions: [{key: a, operator: Gt, values: ['1']}]}}",
            "spec.podSelector.matchExpressions[0].operator",
        ),
        (
            "in-empty",
            "{podSelector: {}, ingress: [{from: [{namespaceSelector: {matchExpressions: [{key: a, operator: In}]}}]}]}",
            "spec.ingress[0].from[0].namespaceSelector.matchExpressions[0].values",
        ),
        (
            "exists-values",
            "{podSelector: {}, ingress: [{from: [{podSelector: {matchExpressions: [{key: a, operator: Exists, values: [b]}]}}]}]}",
            "spec.ingress[0].from[0].podSelector.matchExpressions[0].values",
        ),
        (
            "type",
            "{podSelector: {}, policyTypes: [Ingres]}",
            "spec.policyTypes[0]",
        ),
        (
            "mixed-peer",
            "{podSelector: {}, ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8}, podSelector: {}}]}]}",
            "spec.ingress[0].from[0]",
        ),
    ];
    let mut text: String = bad
        .iter()
        .map(|(name, spec, _)| policy(name, spec))
        .collect();
    // Problems are reported even in a rule list the policy types leave out.
    text += &policy(
        "egress-only",
        "{podSelector: {}, policyTypes: [Egress], ingress: [{ports: [{port: 0}]}]}",
    );
    text += "
---
apiVersion: v1
kind: Pod
metadata: {name: broken, namespace: x}
spec: {containers: [{name: main, image: agnhost}]}
status: {podIPs: [{ip: 10.0.1.300}]}
";
    // One valid policy among them still applies.
    text += &policy(
        "good",
        "{podSelector: {matchLabels: {pod: a}}, ingress: [{ports: [{port: 80}]}]}",
    );
    let snapshot = snapshot(&text);
    let compiled = compile_all(&snapshot);
    let mut got: Vec<(String, String)> = compiled
        .errors
        .iter()
        .map(|e| (e.object.clone(), e.field.clone()))
        .collect();
    got.sort();
    let mut want: Vec<(String, String)> = bad
        .iter()
        .map(|(name, _, field)| (format!("NetworkPolicy x/{name}"), field.to_string()))
        .chain([
            (
                "NetworkPolicy x/egress-only".to_owned(),
                "spec.ingress[0].ports[0].port".to_owned(),
            ),
            ("Pod x/broken".to_owned(), "status.podIPs[0].ip".to_owned()),
        ])
        .collect();
    want.sort();
    assert_eq!(got, want);
    assert_eq!(
        compiled
            .rules
            .values()
            .map(|r| r.to_string())
            .collect::<Vec<_>>(),
        ["x/good ingress[0]"]
    );
    expect(
        &snapshot,
        &compiled,
        &[
            ("y/a", "x/a", "80/TCP", "allow x/good ingress[0]"),
            ("y/a", "x/a", "81/UDP", DENY),
            ("y/a", "x/b", "81/UDP", OPEN),
        ],
    );
}

#[test]
fn placement_by_interface() {
    let snapshot = snapshot(
        "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny, namespace: x}
spec: {podSelector: {}}
",
    );
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
    let first_policy = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: m, namespace: x}
spec:
  podSelector: {}
  ingress: [{ports: [{port: 80}]}, {ports: [{port: 81, protocol: UDP}]}]
";
    let first = compile_all(&snapshot(first_policy));
    // A policy that sorts first, a new pod, and one rule less.
    let second_text = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: a, namespace: a-first}
spec: {podSelector: {}, ingress: [{}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: m, namespace: x}
spec:
  podSelector: {}
  ingress: [{ports: [{port: 81, protocol: UDP}]}]
"
    .to_owned()
        + &pod("a-first", "new", "{}", &["10.0.9.9"], "");
    let second = compile(
        &snapshot(&second_text),
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
        &snapshot(&second_text),
        &Placement::AllPods { ifindex: 1 },
        &second.ids,
    );
    assert_eq!(again, second);
}

#[test]
fn an_object_listed_twice_is_reported_and_its_last_definition_used() {
    let policy = |port: u16| {
        format!(
            "
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: twice, namespace: x, resourceVersion: '{port}'}}
spec: {{podSelector: {{}}, ingress: [{{ports: [{{port: {port}}}]}}]}}
"
        )
    };
    let both = snapshot(&(policy(80) + &policy(81)));
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
    let text = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: x}
spec:
  podSelector: {}
  ingress: [{from: [{namespaceSelector: {}}], ports: [{port: web}]}]
  egress: [{to: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.0.2.0/24]}}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: q, namespace: y}
spec: {podSelector: {}, ingress: [{from: [{podSelector: {}}]}]}
";
    let forward = snapshot(text);
    let mut reversed = forward.clone();
    reversed.pods.reverse();
    reversed.namespaces.reverse();
    reversed.policies.reverse();
    assert_eq!(compile_all(&forward), compile_all(&reversed));
}

#[test]
fn a_label_change_touches_only_affected_entries() {
    let policies = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{namespaceSelector: {}, podSelector: {matchLabels: {role: client}}}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: other, namespace: x}
spec:
  podSelector: {matchLabels: {pod: b}}
  ingress: [{from: [{podSelector: {}}]}]
";
    let before_snapshot = snapshot(policies);
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
            ("y/b", "x/a", "80/TCP", "allow x/p ingress[0]"),
            ("y/a", "x/a", "80/TCP", DENY),
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

#[test]
fn too_many_port_rules_for_one_prefix_are_reported() {
    let ports: Vec<String> = (0..40)
        .map(|i| format!("{{port: {}}}", 1000 + 2 * i))
        .collect();
    let text = format!(
        "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: p, namespace: x}}
spec:
  podSelector: {{matchLabels: {{pod: a}}}}
  ingress: [{{from: [{{ipBlock: {{cidr: 203.0.113.0/24}}}}], ports: [{}]}}]
",
        ports.join(", ")
    );
    let snapshot = snapshot(&text);
    let compiled = compile_all(&snapshot);
    assert_eq!(compiled.errors.len(), 1, "{:?}", compiled.errors);
    assert_eq!(compiled.errors[0].object, "Pod x/a");
    assert_eq!(compiled.errors[0].field, "ingress peer 203.0.113.0/24");
    assert!(
        compiled.errors[0].message.contains("8 were left out"),
        "{}",
        compiled.errors[0].message
    );
    expect(
        &snapshot,
        &compiled,
        &[
            ("203.0.113.7", "x/a", "1000/TCP", "allow x/p ingress[0]"),
            ("203.0.113.7", "x/a", "1062/TCP", "allow x/p ingress[0]"),
            ("203.0.113.7", "x/a", "1064/TCP", DENY),
        ],
    );
}

#[test]
fn ten_thousand_ip_blocks_on_one_endpoint() {
    let mut snapshot = snapshot("");
    // 100 rules of 100 blocks each.
    let rules: Vec<String> = (0..100u32)
        .map(|rule| {
            let blocks: Vec<String> = (0..100u32)
                .map(|b| {
                    let ip = std::net::Ipv4Addr::from(0xc633_0000 + (rule * 100 + b) * 4);
                    format!("{{\"ipBlock\": {{\"cidr\": \"{ip}/30\", \"except\": [\"{ip}/32\"]}}}}")
                })
                .collect();
            format!(
                "{{\"from\": [{}], \"ports\": [{{\"port\": {}}}]}}",
                blocks.join(", "),
                1 + rule
            )
        })
        .collect();
    let policy = format!(
        "{{\"apiVersion\": \"networking.k8s.io/v1\", \"kind\": \"NetworkPolicy\", \
         \"metadata\": {{\"name\": \"big\", \"namespace\": \"x\"}}, \
         \"spec\": {{\"podSelector\": {{\"matchLabels\": {{\"pod\": \"a\"}}}}, \"ingress\": [{}]}}}}",
        rules.join(", ")
    );
    snapshot
        .policies
        .push(serde_json::from_str(&policy).unwrap());
    let started = std::time::Instant::now();
    let compiled = compile_all(&snapshot);
    let elapsed = started.elapsed();
    assert_eq!(compiled.errors, vec![]);
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
            ("198.51.0.1", "x/a", "1/TCP", "allow x/big ingress[0]"),
            ("198.51.0.0", "x/a", "1/TCP", DENY),
            ("198.51.0.5", "x/a", "1/TCP", "allow x/big ingress[0]"),
            ("198.51.1.145", "x/a", "2/TCP", "allow x/big ingress[1]"),
            ("198.51.1.145", "x/a", "1/TCP", DENY),
        ],
    );
}

/// `count` Services in namespace `x`, each a ClusterIP 10.96.0.N in front of the pods `app=web`
/// (x/a) on port 80.
fn services(count: u8) -> String {
    (1..=count)
        .map(|n| {
            format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: svc-{n}, namespace: x}}\n\
                 spec: {{clusterIP: 10.96.0.{n}, selector: {{app: web}}, ports: [{{port: 80}}]}}\n"
            )
        })
        .collect::<Vec<_>>()
        .join("---\n")
}

#[test]
fn cluster_ips_get_entries_only_where_they_change_an_answer() {
    let allow_all = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: egress-anywhere, namespace: y}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress: [{}]
";
    let to_web = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: egress-to-web, namespace: y}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress:
  - to: [{namespaceSelector: {}, podSelector: {matchLabels: {app: web}}}]
    ports: [{port: 80}]
";
    let egress_entries = |policies: &str| compiled(policies).1.desired.policy.len();
    // Everything allowed already: the addresses answer for the ClusterIPs.
    assert_eq!(
        egress_entries(&format!("{allow_all}---\n{}", services(50))),
        egress_entries(allow_all)
    );
    // Only the backends allowed: one entry per ClusterIP per egress policy set (the pods of y
    // share one).
    let (snapshot, with_services) = compiled(&format!("{to_web}---\n{}", services(50)));
    let sets = with_services
        .desired
        .endpoints
        .values()
        .filter(|e| e.flags & endpoint_flags::EGRESS_ISOLATED != 0)
        .map(|e| e.egress_set)
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    assert_eq!(sets, 1);
    assert_eq!(
        with_services.desired.policy.len(),
        egress_entries(to_web) + 50 * sets
    );
    assert_eq!(with_services.services.len(), 50);
    assert!(snapshot.services.len() == 50);
}

#[test]
fn pod_ip_that_is_not_the_first_of_pod_ips_leaves_the_pod_out() {
    let text = format!(
        "{}
---
apiVersion: v1
kind: Pod
metadata: {{name: two-faced, namespace: x, labels: {{pod: two-faced}}}}
spec: {{containers: [{{name: main, image: agnhost}}]}}
status: {{phase: Running, podIP: 10.0.1.50, podIPs: [{{ip: 10.0.1.51}}]}}
---
apiVersion: v1
kind: Pod
metadata: {{name: garbled, namespace: x}}
spec: {{containers: [{{name: main, image: agnhost}}]}}
status: {{phase: Running, podIP: not-an-ip, podIPs: [{{ip: 10.0.1.52}}]}}
---
apiVersion: v1
kind: Pod
metadata: {{name: same, namespace: x}}
spec: {{containers: [{{name: main, image: agnhost}}]}}
status: {{phase: Running, podIP: 'fd00::0:53', podIPs: [{{ip: 'fd00::53'}}, {{ip: 10.0.1.53}}]}}
",
        world()
    );
    let (snapshot, errors) = parse_manifests(&text, "test.yaml");
    assert_eq!(errors, vec![]);
    let compiled = compile_all(&snapshot);
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

/// Three policies in x, each allowing one pod of y into one pod of x.
const THREE_ALLOWS: &str = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: to-a, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}, podSelector: {matchLabels: {pod: a}}}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: to-b, namespace: x}
spec:
  podSelector: {matchLabels: {pod: b}}
  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: to-c, namespace: x}
spec:
  podSelector: {matchLabels: {pod: c}}
  ingress: [{from: [{namespaceSelector: {}}]}]
";

#[test]
fn sets_that_do_not_fit_deny_their_endpoints_and_are_named() {
    let snapshot = snapshot(THREE_ALLOWS);
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
    let snapshot = snapshot(THREE_ALLOWS);
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
    let snapshot = snapshot(THREE_ALLOWS);
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
    // all of them, one entry in x/a's set.
    let mut text = world();
    for i in 0..2000u32 {
        text += &pod(
            "y",
            &format!("web-{i}"),
            "{app: client, pod-template-hash: abc}",
            &[&std::net::Ipv4Addr::from(0x0a05_0000 + i).to_string()],
            "",
        );
    }
    text += "
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-clients, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{namespaceSelector: {}, podSelector: {matchLabels: {app: client}}}]}]
";
    let (snapshot, errors) = parse_manifests(&text, "test.yaml");
    assert_eq!(errors, vec![]);
    let compiled = compile_all(&snapshot);
    assert_eq!(compiled.errors, vec![]);
    assert_eq!(compiled.desired.policy.len(), 1);
    assert_eq!(compiled.desired.rulesets.len(), 1);
    expect(
        &snapshot,
        &compiled,
        &[
            (
                "y/web-0",
                "x/a",
                "80/TCP",
                "allow x/from-clients ingress[0]",
            ),
            (
                "y/web-1999",
                "x/a",
                "80/TCP",
                "allow x/from-clients ingress[0]",
            ),
            ("y/a", "x/a", "80/TCP", DENY),
        ],
    );
}
