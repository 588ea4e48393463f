//! `tollgate verify` from text to text: the probes file (parsing, errors, resolution of pods
//! to addresses) and the two renderings, checked against golden strings on the example in
//! `examples/verify` (so the README's output is the real output).

use std::net::IpAddr;
use std::path::Path;

use k8s_openapi::api::core::v1::Pod;
use tollgate_enforcer::bpf_datapath::BpfDatapath;
use tollgate_enforcer::decision::ProbeFlow;
use tollgate_enforcer::model::ModelDatapath;
use tollgate_enforcer::snapshot::{InputError, Snapshot};
use tollgate_enforcer::verify::{self, Peer, ProbeSpec, Protocol, SourceText, VerifyInput};
use tollgate_test_support::{privileged, temp_dir};

fn error(object: &str, field: &str) -> (String, String) {
    (object.to_owned(), field.to_owned())
}

fn located(errors: &[InputError]) -> Vec<(String, String)> {
    errors
        .iter()
        .map(|e| (e.object.clone(), e.field.clone()))
        .collect()
}

fn pod(peer: &str) -> Peer {
    Peer::parse(peer).expect("a pod reference")
}

#[test]
fn parse_probes_reads_fields_comments_and_blank_lines() {
    let text = "\
# a comment line

x/a   y/b  80/TCP
x/a 10.0.0.1 53/udp   # trailing comment
  2001:db8::7 x/b 9000/Sctp
x/a y/b 81/TCP#comment right after the field
";
    let (probes, errors) = verify::parse_probes(text, "probes.txt");
    assert!(errors.is_empty(), "{errors:?}");
    let ip = |s: &str| Peer::Address(s.parse::<IpAddr>().unwrap());
    assert_eq!(
        probes,
        vec![
            ProbeSpec {
                origin: "probes.txt line 3".into(),
                from: pod("x/a"),
                to: pod("y/b"),
                port: 80,
                protocol: Protocol::Tcp,
            },
            ProbeSpec {
                origin: "probes.txt line 4".into(),
                from: pod("x/a"),
                to: ip("10.0.0.1"),
                port: 53,
                protocol: Protocol::Udp,
            },
            ProbeSpec {
                origin: "probes.txt line 5".into(),
                from: ip("2001:db8::7"),
                to: pod("x/b"),
                port: 9000,
                protocol: Protocol::Sctp,
            },
            ProbeSpec {
                origin: "probes.txt line 6".into(),
                from: pod("x/a"),
                to: pod("y/b"),
                port: 81,
                protocol: Protocol::Tcp,
            },
        ]
    );
}

#[test]
fn parse_probes_reports_each_bad_field_and_keeps_the_good_lines() {
    let text = "\
x/a y/b 80/TCP
x/a y/b
x/a y/b 80/TCP extra
x/a y/b 0/TCP
x/a y/b 65536/TCP
x/a y/b http/TCP
x/a y/b 80/ICMP
x/a y/b 80
just-a-name y/b 80/TCP
x/a /b 80/TCP
x/a a/b/c 80/TCP
x/a 300.1.1.1 80/TCP
x/a y/b 65535/udp
nope also/bad 0/XX
";
    let (probes, errors) = verify::parse_probes(text, "p.txt");
    assert_eq!(
        probes.iter().map(|p| p.origin.as_str()).collect::<Vec<_>>(),
        ["p.txt line 1", "p.txt line 13"]
    );
    assert_eq!(probes[1].port, 65535);
    assert_eq!(
        located(&errors),
        [
            error("p.txt line 2", "fields"),
            error("p.txt line 3", "fields"),
            error("p.txt line 4", "port"),
            error("p.txt line 5", "port"),
            error("p.txt line 6", "port"),
            error("p.txt line 7", "protocol"),
            error("p.txt line 8", "protocol"),
            error("p.txt line 9", "from"),
            error("p.txt line 10", "to"),
            error("p.txt line 11", "to"),
            error("p.txt line 12", "to"),
            error("p.txt line 14", "from"),
            error("p.txt line 14", "port"),
            error("p.txt line 14", "protocol"),
        ]
    );
    assert_eq!(
        errors[0].to_string(),
        "p.txt line 2: fields: expected 3 fields (FROM TO PORT/PROTOCOL), found 2"
    );
    assert_eq!(
        errors[5].to_string(),
        "p.txt line 7: protocol: unknown protocol \"ICMP\": expected TCP, UDP or SCTP"
    );
    assert_eq!(
        errors[7].to_string(),
        "p.txt line 9: from: \"just-a-name\" is neither namespace/pod, service:namespace/name \
         nor an IP address"
    );
}

/// Pods as `kubectl get pods -o yaml` shows them (only the fields resolution reads).
fn snapshot(pods: &[(&str, &str, &[&str])]) -> Snapshot {
    let pods = pods
        .iter()
        .map(|(namespace, name, ips)| {
            let ips: Vec<String> = ips.iter().map(|ip| format!("{{ip: \"{ip}\"}}")).collect();
            let yaml = format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {namespace}}}\n\
                 status: {{phase: Running, podIPs: [{}]}}\n",
                ips.join(", ")
            );
            serde_yaml_ng::from_str::<Pod>(&yaml).expect("a pod")
        })
        .collect();
    Snapshot {
        pods,
        ..Snapshot::default()
    }
}

#[test]
fn resolve_probes_picks_addresses_by_family() {
    let snapshot = snapshot(&[
        ("x", "dual", &["10.0.0.1", "fd00::1"]),
        ("x", "dual2", &["fd00::2", "10.0.0.2"]),
        ("x", "v4", &["10.0.0.3"]),
        ("x", "v6", &["fd00::4", "fd00::44"]),
        ("x", "none", &[]),
    ]);
    let text = "\
x/dual x/dual2 80/TCP
x/dual x/v6 80/TCP
x/v6 x/dual 80/UDP
2001:db8::9 x/dual 80/TCP
x/dual2 198.51.100.1 443/TCP
x/dual x/dual 80/TCP
x/v4 x/v6 80/TCP
x/v6 10.1.1.1 80/TCP
10.1.1.1 x/v6 80/TCP
10.1.1.1 2001:db8::1 80/TCP
x/missing x/other 80/TCP
x/none x/dual 80/TCP
198.51.100.1 203.0.113.1 80/SCTP
";
    let (specs, parse_errors) = verify::parse_probes(text, "p");
    assert!(parse_errors.is_empty());
    let (resolved, errors) = verify::resolve_probes(&specs, &snapshot, &[]);
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    let flows: Vec<(String, ProbeFlow)> = resolved
        .iter()
        .map(|r| (r.spec.origin.clone(), r.flow))
        .collect();
    let flow = |line: usize, src: &str, dst: &str, protocol: u8, port: u16| {
        (
            format!("p line {line}"),
            ProbeFlow {
                src: ip(src),
                dst: ip(dst),
                protocol,
                src_port: 40_000 + u16::try_from(line - 1).unwrap(),
                dst_port: port,
                service: None,
            },
        )
    };
    assert_eq!(
        flows,
        vec![
            flow(1, "10.0.0.1", "10.0.0.2", 6, 80),
            flow(2, "fd00::1", "fd00::4", 6, 80),
            flow(3, "fd00::4", "fd00::1", 17, 80),
            flow(4, "2001:db8::9", "fd00::1", 6, 80),
            flow(5, "10.0.0.2", "198.51.100.1", 6, 443),
            flow(6, "10.0.0.1", "10.0.0.1", 6, 80),
            flow(13, "198.51.100.1", "203.0.113.1", 132, 80),
        ]
    );
    assert!(resolved[5].is_loopback());
    assert!(!resolved[0].is_loopback());
    let messages: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert_eq!(
        messages,
        [
            "p line 7: to: no common address family: pod x/v4 has IPv4 only, pod x/v6 has IPv6 only",
            "p line 8: from: pod x/v6 has no IPv4 address",
            "p line 9: to: pod x/v6 has no IPv4 address",
            "p line 10: to: 2001:db8::1 is IPv6 but 10.1.1.1 is IPv4",
            "p line 11: from: no pod x/missing in the manifests",
            "p line 11: to: no pod x/other in the manifests",
            "p line 12: from: pod x/none has no IP address (status.podIPs)",
        ]
    );
}

#[test]
fn protocols_parse_case_insensitively() {
    assert_eq!("sctp".parse(), Ok(Protocol::Sctp));
    assert_eq!("Udp".parse(), Ok(Protocol::Udp));
    assert_eq!(Protocol::Udp.to_string(), "UDP");
    assert_eq!(
        "icmp".parse::<Protocol>().unwrap_err().to_string(),
        "unknown protocol \"icmp\": expected TCP, UDP or SCTP"
    );
}

fn example() -> VerifyInput {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/verify");
    let read = |name: &str| {
        let mut file = SourceText::read(dir.join(name)).expect("example file");
        file.source = format!("examples/verify/{name}");
        file
    };
    VerifyInput {
        manifests: vec![
            read("cluster.yaml"),
            read("services.yaml"),
            read("policies.yaml"),
        ],
        probes: read("probes.txt"),
    }
}

const EXAMPLE_TABLE: &str = "\
FROM           TO                                                                    PORT/PROTO  VERDICT  REASON                    AT       POLICY/RULE\n\
default/pod-1  kube-system/coredns-5d8d9f5b7c-8vz4p                                  53/UDP      allow    allowed-by-rule           egress   default/allow-amazonlinux-to-nginx egress[0]\n\
default/pod-1  default/nginx-7854ff8877-9x2kq                                        80/TCP      allow    allowed-by-rule           ingress  default/allow-nginx-from-amazonlinux ingress[0]\n\
default/pod-1  default/httpd-6d6c5d8f7b-4mzrt                                        80/TCP      deny     isolated-no-rule-matched  egress   -\n\
default/pod-1  kube-system/coredns-5d8d9f5b7c-8vz4p                                  53/TCP      deny     isolated-no-rule-matched  egress   -\n\
203.0.113.7    default/nginx-7854ff8877-9x2kq                                        80/TCP      deny     isolated-no-rule-matched  ingress  -\n\
default/pod-1  default/pod-1                                                         8080/TCP    allow    loopback                  -        -\n\
198.51.100.10  kube-system/coredns-5d8d9f5b7c-8vz4p                                  53/UDP      allow    no-policy-selects-pod     ingress  -\n\
default/pod-1  service:kube-system/kube-dns -> kube-system/coredns-5d8d9f5b7c-8vz4p  53/UDP      allow    allowed-by-rule           egress   default/allow-amazonlinux-to-nginx egress[0]\n\
default/pod-1  service:default/nginx -> default/nginx-7854ff8877-9x2kq               80/TCP      allow    allowed-by-rule           ingress  default/allow-nginx-from-amazonlinux ingress[0]\n\
default/pod-1  10.100.193.141 -> default/httpd-6d6c5d8f7b-4mzrt                      80/TCP      deny     isolated-no-rule-matched  egress   -\n";

const EXAMPLE_JSON: &str = concat!(
    r#"{"from":"default/pod-1","to":"kube-system/coredns-5d8d9f5b7c-8vz4p","src":"192.168.10.11","dst":"192.168.40.44","service":null,"backend":null,"service_addr":null,"port":53,"target_port":53,"protocol":"UDP","verdict":"allow","audit":false,"reason":"allowed-by-rule","at":"egress","policy":"default/allow-amazonlinux-to-nginx","rule":"egress[0]","hooks":{"egress":{"verdict":"allow","reason":"allowed-by-rule","policy":"default/allow-amazonlinux-to-nginx","rule":"egress[0]"},"ingress":{"verdict":"allow","reason":"no-policy-selects-pod","policy":null,"rule":null},"reply_egress":{"verdict":"allow","reason":"reply","policy":null,"rule":null},"reply_ingress":{"verdict":"allow","reason":"reply","policy":null,"rule":null}}}"#,
    "\n",
    r#"{"from":"default/pod-1","to":"default/nginx-7854ff8877-9x2kq","src":"192.168.10.11","dst":"192.168.20.22","service":null,"backend":null,"service_addr":null,"port":80,"target_port":80,"protocol":"TCP","verdict":"allow","audit":false,"reason":"allowed-by-rule","at":"ingress","policy":"default/allow-nginx-from-amazonlinux","rule":"ingress[0]","hooks":{"egress":{"verdict":"allow","reason":"allowed-by-rule","policy":"default/allow-amazonlinux-to-nginx","rule":"egress[1]"},"ingress":{"verdict":"allow","reason":"allowed-by-rule","policy":"default/allow-nginx-from-amazonlinux","rule":"ingress[0]"},"reply_egress":{"verdict":"allow","reason":"reply","policy":null,"rule":null},"reply_ingress":{"verdict":"allow","reason":"reply","policy":null,"rule":null}}}"#,
    "\n",
    r#"{"from":"default/pod-1","to":"default/httpd-6d6c5d8f7b-4mzrt","src":"192.168.10.11","dst":"192.168.30.33","service":null,"backend":null,"service_addr":null,"port":80,"target_port":80,"protocol":"TCP","verdict":"deny","audit":false,"reason":"isolated-no-rule-matched","at":"egress","policy":null,"rule":null,"hooks":{"egress":{"verdict":"deny","reason":"isolated-no-rule-matched","policy":null,"rule":null},"ingress":null,"reply_egress":null,"reply_ingress":null}}"#,
    "\n",
    r#"{"from":"default/pod-1","to":"kube-system/coredns-5d8d9f5b7c-8vz4p","src":"192.168.10.11","dst":"192.168.40.44","service":null,"backend":null,"service_addr":null,"port":53,"target_port":53,"protocol":"TCP","verdict":"deny","audit":false,"reason":"isolated-no-rule-matched","at":"egress","policy":null,"rule":null,"hooks":{"egress":{"verdict":"deny","reason":"isolated-no-rule-matched","policy":null,"rule":null},"ingress":null,"reply_egress":null,"reply_ingress":null}}"#,
    "\n",
    r#"{"from":"203.0.113.7","to":"default/nginx-7854ff8877-9x2kq","src":"203.0.113.7","dst":"192.168.20.22","service":null,"backend":null,"service_addr":null,"port":80,"target_port":80,"protocol":"TCP","verdict":"deny","audit":false,"reason":"isolated-no-rule-matched","at":"ingress","policy":null,"rule":null,"hooks":{"egress":null,"ingress":{"verdict":"deny","reason":"isolated-no-rule-matched","policy":null,"rule":null},"reply_egress":null,"reply_ingress":null}}"#,
    "\n",
    r#"{"from":"default/pod-1","to":"default/pod-1","src":"192.168.10.11","dst":"192.168.10.11","service":null,"backend":null,"service_addr":null,"port":8080,"target_port":8080,"protocol":"TCP","verdict":"allow","audit":false,"reason":"loopback","at":null,"policy":null,"rule":null,"hooks":{"egress":null,"ingress":null,"reply_egress":null,"reply_ingress":null}}"#,
    "\n",
    r#"{"from":"198.51.100.10","to":"kube-system/coredns-5d8d9f5b7c-8vz4p","src":"198.51.100.10","dst":"192.168.40.44","service":null,"backend":null,"service_addr":null,"port":53,"target_port":53,"protocol":"UDP","verdict":"allow","audit":false,"reason":"no-policy-selects-pod","at":"ingress","policy":null,"rule":null,"hooks":{"egress":null,"ingress":{"verdict":"allow","reason":"no-policy-selects-pod","policy":null,"rule":null},"reply_egress":{"verdict":"allow","reason":"reply","policy":null,"rule":null},"reply_ingress":null}}"#,
    "\n",
    r#"{"from":"default/pod-1","to":"service:kube-system/kube-dns","src":"192.168.10.11","dst":"192.168.40.44","service":"kube-system/kube-dns","backend":"kube-system/coredns-5d8d9f5b7c-8vz4p","service_addr":"10.100.0.10","port":53,"target_port":53,"protocol":"UDP","verdict":"allow","audit":false,"reason":"allowed-by-rule","at":"egress","policy":"default/allow-amazonlinux-to-nginx","rule":"egress[0]","hooks":{"egress":{"verdict":"allow","reason":"allowed-by-rule","policy":"default/allow-amazonlinux-to-nginx","rule":"egress[0]"},"ingress":{"verdict":"allow","reason":"no-policy-selects-pod","policy":null,"rule":null},"reply_egress":{"verdict":"allow","reason":"reply","policy":null,"rule":null},"reply_ingress":{"verdict":"allow","reason":"reply","policy":null,"rule":null}}}"#,
    "\n",
    r#"{"from":"default/pod-1","to":"service:default/nginx","src":"192.168.10.11","dst":"192.168.20.22","service":"default/nginx","backend":"default/nginx-7854ff8877-9x2kq","service_addr":"10.100.83.206","port":80,"target_port":80,"protocol":"TCP","verdict":"allow","audit":false,"reason":"allowed-by-rule","at":"ingress","policy":"default/allow-nginx-from-amazonlinux","rule":"ingress[0]","hooks":{"egress":{"verdict":"allow","reason":"allowed-by-rule","policy":"default/allow-amazonlinux-to-nginx","rule":"egress[1]"},"ingress":{"verdict":"allow","reason":"allowed-by-rule","policy":"default/allow-nginx-from-amazonlinux","rule":"ingress[0]"},"reply_egress":{"verdict":"allow","reason":"reply","policy":null,"rule":null},"reply_ingress":{"verdict":"allow","reason":"reply","policy":null,"rule":null}}}"#,
    "\n",
    r#"{"from":"default/pod-1","to":"10.100.193.141","src":"192.168.10.11","dst":"192.168.30.33","service":"default/httpd","backend":"default/httpd-6d6c5d8f7b-4mzrt","service_addr":"10.100.193.141","port":80,"target_port":80,"protocol":"TCP","verdict":"deny","audit":false,"reason":"isolated-no-rule-matched","at":"egress","policy":null,"rule":null,"hooks":{"egress":{"verdict":"deny","reason":"isolated-no-rule-matched","policy":null,"rule":null},"ingress":null,"reply_egress":null,"reply_ingress":null}}"#,
    "\n",
);

#[test]
fn example_renders_as_documented() {
    let verification = verify::verify(&example(), &mut ModelDatapath::new()).expect("model");
    assert!(verification.errors.is_empty(), "{:?}", verification.errors);
    assert_eq!(verify::render_table(&verification.results), EXAMPLE_TABLE);
    assert_eq!(verify::render_json(&verification.results), EXAMPLE_JSON);
}

#[test]
fn invalid_input_is_reported_and_the_rest_still_evaluated() {
    let mut input = example();
    input.manifests.push(SourceText {
        source: "extra.yaml".into(),
        bytes: "\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: bad-port
  namespace: default
spec:
  podSelector: {}
  ingress:
  - ports:
    - port: 0
"
        .into(),
    });
    input
        .probes
        .bytes
        .extend_from_slice(b"default/pod-1 default/nobody 80/TCP\nbroken line\n");
    let verification = verify::verify(&input, &mut ModelDatapath::new()).expect("model");
    assert_eq!(
        located(&verification.errors),
        [
            error(
                "NetworkPolicy default/bad-port",
                "spec.ingress[0].ports[0].port"
            ),
            error("examples/verify/probes.txt line 18", "fields"),
            error("examples/verify/probes.txt line 17", "to"),
        ]
    );
    let clean = verify::verify(&example(), &mut ModelDatapath::new()).expect("model");
    assert_eq!(verification.results, clean.results);
}

#[test]
fn privileged_example_renders_the_same_on_the_ebpf_programs() {
    if !privileged("privileged_example_renders_the_same_on_the_ebpf_programs") {
        return;
    }
    let mut bpf = BpfDatapath::new().expect("load the eBPF programs");
    let verification = verify::verify(&example(), &mut bpf).expect("bpf");
    assert_eq!(verify::render_json(&verification.results), EXAMPLE_JSON);
}

#[test]
fn later_manifests_replace_objects_of_the_same_kind_namespace_and_name() {
    let pod = |name: &str, labels: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: x\n  \
             labels: {{{labels}}}\nstatus:\n  podIP: 10.0.0.1\n"
        )
    };
    let policy = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  \
                  name: a\n  namespace: x\nspec:\n  podSelector: {}\n";
    let files = [
        SourceText {
            source: "base.yaml".into(),
            bytes: format!(
                "{}---\n{}---\n{policy}",
                pod("a", "v: '1'"),
                pod("b", "v: '1'")
            )
            .into(),
        },
        SourceText {
            source: "change.yaml".into(),
            bytes: pod("a", "v: '2'").into(),
        },
    ];
    let (snapshot, errors) = verify::load_manifests(&files);
    assert!(errors.is_empty(), "{errors:?}");
    let pods: Vec<(String, String)> = snapshot
        .pods
        .iter()
        .map(|p| {
            let labels = p.metadata.labels.as_ref().expect("labels");
            (p.metadata.name.clone().unwrap(), labels["v"].clone())
        })
        .collect();
    assert_eq!(pods, [("a".into(), "2".into()), ("b".into(), "1".into())]);
    assert_eq!(
        snapshot.policies.len(),
        1,
        "a policy and a pod may share a name"
    );
}

/// A file read from disk with a byte-order mark and a stray Latin-1 byte (what Windows editors
/// write): the mark is dropped, the bad byte costs only its document (manifests) or line
/// (probes) with its position, and everything else is still evaluated.
#[test]
fn files_with_a_byte_order_mark_or_invalid_utf8_are_read_document_by_document() {
    let scratch = temp_dir("verify-utf8");
    let dir = scratch.path();
    let cluster = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/verify/cluster.yaml"),
    )
    .expect("example");
    let mut manifests = b"\xef\xbb\xbf".to_vec();
    manifests.extend_from_slice(&cluster);
    manifests
        .extend_from_slice(b"\n---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: caf\xe9\n");
    let mut probes = b"\xef\xbb\xbfdefault/pod-1 default/nginx-7854ff8877-9x2kq 80/TCP\n".to_vec();
    probes.extend_from_slice(b"default/pod-1 caf\xe9 80/TCP\n");
    std::fs::write(dir.join("cluster.yaml"), &manifests).expect("write");
    std::fs::write(dir.join("probes.txt"), &probes).expect("write");
    let read = |name: &str| {
        let mut file = SourceText::read(dir.join(name)).expect("invalid UTF-8 is not fatal");
        file.source = name.to_owned();
        file
    };
    let input = VerifyInput {
        manifests: vec![read("cluster.yaml")],
        probes: read("probes.txt"),
    };
    let verification = verify::verify(&input, &mut ModelDatapath::new()).expect("model");
    let documents = cluster
        .split(|b| *b == b'\n')
        .filter(|l| *l == b"---")
        .count();
    let lines = cluster.split(|b| *b == b'\n').count();
    let messages: Vec<String> = verification.errors.iter().map(|e| e.to_string()).collect();
    assert_eq!(
        messages,
        [
            format!(
                "cluster.yaml document {}: (document): invalid UTF-8 at line {} column 12 \
                 (byte 0xe9): the document is left out",
                documents + 2,
                lines + 5
            ),
            "probes.txt line 2: (line): invalid UTF-8 at column 18 (byte 0xe9): the line is left \
             out"
            .to_owned(),
        ]
    );
    // The first document (after the mark) and the first probe were evaluated.
    assert_eq!(verification.results.len(), 1);
    assert_eq!(verification.results[0].reason, "no-policy-selects-pod");
}
