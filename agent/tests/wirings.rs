//! `run_agent` on a node whose pods the VPC CNI wires in several ways (issue 21): a custom
//! veth prefix read from the node's CNI configuration (`vethPrefix` in a conflist of the test's
//! own), branch-ENI pods in strict mode (`vlan…` veths, routes in per-VLAN tables, traffic
//! through `vlan.eth.<id>` and a VPC namespace), and a pod that moves from one wiring to another
//! while no agent runs; the flow records name each deciding pod's interface and ENI.
//!
//! Needs root (CI runs as root); without it the test says SKIPPED loudly and returns.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use tollgate_agent::source::StaticSource;
use tollgate_collector::readback::{Filter, StoredRecord, read_dir, render_table};

use support::{
    Bpffs, Node, RunningAgent, Wiring, agent_config, http_ok, privileged, seed, tcp_reaches,
    tcx_programs,
};
use tollgate_test_support::temp_dir;

const WAIT_PASS: Duration = Duration::from_secs(2);
const WAIT_DENY: Duration = Duration::from_millis(700);
/// The VPC CNI configuration of the test's node: veths `tgx…`.
const CONFLIST: &str = r#"{"cniVersion": "0.4.0", "name": "aws-cni", "plugins": [
  {"name": "aws-cni", "type": "aws-cni", "vethPrefix": "tgx", "podSGEnforcingMode": "strict"},
  {"name": "egress-cni", "type": "egress-cni"},
  {"type": "portmap", "capabilities": {"portMappings": true}, "snat": true}]}"#;

/// Waits (at most 10 s) for the agent's `/readyz` to answer 200.
fn wait_ready(node: &Node, agent: std::net::SocketAddr) {
    for _ in 0..100 {
        if http_ok(node, agent, "/readyz") {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("/readyz never answered 200");
}

#[test]
fn privileged_every_wiring_is_enforced_and_a_pod_moved_between_wirings_across_a_restart_stays_so() {
    if !privileged(
        "privileged_every_wiring_is_enforced_and_a_pod_moved_between_wirings_across_a_restart_stays_so",
    ) {
        return;
    }
    let mut node = Node::new("wire");
    let files = temp_dir("wire");
    std::fs::write(files.path().join("10-aws.conflist"), CONFLIST).expect("conflist");
    let tgx = Wiring::Regular { prefix: "tgx" };
    let nginx = node.add_wired_pod("nginx", "198.18.0.20", 1, tgx);
    let httpd = node.add_wired_pod("httpd", "198.18.0.30", 2, Wiring::BranchStrict { vlan: 3 });
    let amazonlinux = node.add_wired_pod("amazonlinux", "198.18.0.40", 3, tgx);
    let bpffs = Bpffs::new("wire");
    let config = agent_config(&node, &bpffs, files.path());
    let http = config.agent.health_address;

    // The seed: amazonlinux → nginx:80 allowed, → httpd:80 (a branch-ENI pod) denied.
    let (source, handle) = StaticSource::new(seed());
    let agent = RunningAgent::start(&node.netns, config.clone(), source);
    wait_ready(&node, http);
    for pod in [&nginx, &httpd, &amazonlinux] {
        assert_eq!(
            tcx_programs(&node.netns, &pod.host_veth),
            (1, 1),
            "{}",
            pod.key
        );
    }
    assert!(
        tcp_reaches(&amazonlinux, &nginx, WAIT_PASS),
        "amazonlinux → nginx:80 (tgx veths)"
    );
    assert!(
        !tcp_reaches(&amazonlinux, &httpd, WAIT_DENY),
        "amazonlinux → httpd:80 (a vlan veth) is denied"
    );
    agent.stop().expect("agent stopped cleanly");
    drop(handle);

    // While no agent runs, amazonlinux is deleted and comes back as a branch-ENI pod (its
    // workload got a security group): a `vlan…` veth and a table of its own.
    let old_veth = amazonlinux.host_veth.clone();
    node.delete_pod("amazonlinux");
    let amazonlinux = node.add_wired_pod(
        "amazonlinux",
        "198.18.0.40",
        4,
        Wiring::BranchStrict { vlan: 4 },
    );
    assert!(amazonlinux.host_veth.starts_with("vlan"));

    // The next agent finds it on its new veth, drops the old veth's pins, and enforces the
    // same policy on it: its traffic now leaves through `vlan.eth.4` and comes back by the VPC.
    let (source, handle) = StaticSource::new(seed());
    let agent = RunningAgent::start(&node.netns, config, source);
    wait_ready(&node, http);
    assert_eq!(tcx_programs(&node.netns, &amazonlinux.host_veth), (1, 1));
    assert!(
        !bpffs.root.join("links").join(&old_veth).exists(),
        "the old veth's pins are gone"
    );
    assert!(
        tcp_reaches(&amazonlinux, &nginx, WAIT_PASS),
        "amazonlinux (vlan veth) → nginx:80"
    );
    assert!(
        !tcp_reaches(&amazonlinux, &httpd, WAIT_DENY),
        "amazonlinux (vlan veth) → httpd:80 (vlan veth) is denied"
    );
    assert!(
        !tcp_reaches(&nginx, &amazonlinux, WAIT_DENY),
        "nginx → amazonlinux: all-deny isolates amazonlinux's ingress"
    );
    agent.stop().expect("agent stopped cleanly");
    drop(handle);

    // The flow records of both agents name the deciding pod's interface and ENI: the same
    // denied connection (amazonlinux → httpd:80) from a `tgx…` veth on a node ENI, then from
    // a `vlan…` veth on a branch ENI; nginx's ingress on its `tgx…` veth. (Reports the second
    // collector read from the first agent's connections before its first pass name no pod and
    // no interface: no identity was known yet.)
    let records =
        read_dir(&files.path().join("flows"), &Filter::default()).expect("read the flows");
    eprintln!("{}", render_table(&records));
    let wired = |record: &StoredRecord| {
        (
            record.endpoint_interface.clone().unwrap_or_default(),
            record.endpoint_eni.clone().unwrap_or_default(),
        )
    };
    let denied: BTreeSet<(String, String)> = records
        .iter()
        .filter(|r| r.is_reject() && r.dstaddr.as_deref() == Some("198.18.0.30"))
        .filter(|r| r.src_pod.is_some())
        .map(wired)
        .collect();
    assert_eq!(
        denied,
        BTreeSet::from([
            (old_veth, "node".to_owned()),
            (amazonlinux.host_veth.clone(), "branch".to_owned()),
        ])
    );
    let nginx_ingress: BTreeSet<(String, String)> = records
        .iter()
        .filter(|r| r.flow_direction.as_deref() == Some("ingress"))
        .filter(|r| r.dstaddr.as_deref() == Some("198.18.0.20") && r.dst_pod.is_some())
        .map(wired)
        .collect();
    assert_eq!(
        nginx_ingress,
        BTreeSet::from([(nginx.host_veth.clone(), "node".to_owned())])
    );
}
