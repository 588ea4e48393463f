//! The node's own addresses, in a node-shaped set of namespaces (the VPC CNI's wiring; every
//! address inside the namespaces the test creates, of 198.18.0.0/15 and 2001:db8::/32):
//! found by the agent inside the node namespace (two ENIs' primary addresses, not the
//! loopback's, not a pod veth's, not kube-proxy's IPVS dummy, not link-local), a new address
//! heard over netlink, and end to end with `run_agent`: under default-deny ingress the node
//! reaches its pod (the kubelet's probes) with `agent.node_ingress: allow`, an address added
//! while the agent runs included, and not with `policy`; a pod never does.
//!
//! Needs root (CI runs as root); without it every test says SKIPPED loudly and returns.

mod support;

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::Duration;

use tollgate_agent::{
    cni::VethNames, config::NodeIngress, links::LinkWatch, node_addresses, source::StaticSource,
};
use tollgate_enforcer::manifest::parse_manifests;

use support::{
    Bpffs, Node, Pod, RunningAgent, agent_config, cluster_yaml, eventually, http_ok, in_netns, ip,
    privileged, spawn_in_netns, udp_reaches,
};
use tollgate_test_support::temp_dir;

/// The primary ENI's addresses, the secondary ENI's, and one added later.
const ETH0_V4: &str = "198.18.10.17";
const ETH0_V6: &str = "2001:db8:10::17";
const ETH1_V4: &str = "198.18.10.211";
const ADDED_V4: &str = "198.18.10.18";

const WAIT: Duration = Duration::from_secs(2);
const WAIT_DENY: Duration = Duration::from_millis(700);

/// Gives the node namespace two ENIs with their primary addresses, an address on a pod's host
/// veth, and kube-proxy's IPVS dummy holding a ClusterIP. Each interface is one end of a veth
/// pair whose other end stays in the node namespace without an address (kernels without the
/// dummy driver have veths).
fn add_enis(node: &Node, pod_veth: &str) {
    let netns = node.netns.as_str();
    for (eni, peer) in [
        ("eth0", "eth0-peer"),
        ("eth1", "eth1-peer"),
        ("kube-ipvs0", "ipvs-peer"),
    ] {
        ip(&[
            "-n", netns, "link", "add", eni, "type", "veth", "peer", "name", peer,
        ]);
        ip(&["-n", netns, "link", "set", eni, "up"]);
        ip(&["-n", netns, "link", "set", peer, "up"]);
    }
    ip(&[
        "-n",
        netns,
        "addr",
        "add",
        &format!("{ETH0_V4}/24"),
        "dev",
        "eth0",
    ]);
    ip(&[
        "-n",
        netns,
        "addr",
        "add",
        &format!("{ETH0_V6}/64"),
        "dev",
        "eth0",
        "nodad",
    ]);
    ip(&[
        "-n",
        netns,
        "addr",
        "add",
        &format!("{ETH1_V4}/24"),
        "dev",
        "eth1",
    ]);
    ip(&[
        "-n",
        netns,
        "addr",
        "add",
        "198.18.0.99/32",
        "dev",
        pod_veth,
    ]);
    ip(&[
        "-n",
        netns,
        "addr",
        "add",
        "198.19.0.10/32",
        "dev",
        "kube-ipvs0",
    ]);
}

fn addresses(list: &[&str]) -> Vec<IpAddr> {
    list.iter().map(|a| a.parse().unwrap()).collect()
}

#[test]
fn privileged_the_nodes_addresses_are_found_in_its_namespace_and_changes_are_heard() {
    if !privileged(
        "privileged_the_nodes_addresses_are_found_in_its_namespace_and_changes_are_heard",
    ) {
        return;
    }
    let mut node = Node::new("naddr");
    let pod = node.add_pod("a", "198.18.0.10", 1);
    add_enis(&node, &pod.host_veth);

    let found = in_netns(&node.netns, || {
        node_addresses::discover(&VethNames::default())
    })
    .expect("read the node's addresses");
    assert_eq!(found, addresses(&[ETH0_V4, ETH1_V4, ETH0_V6]));
    // The root namespace has none of them.
    let outside = node_addresses::discover(&VethNames::default()).expect("read outside");
    assert!(found.iter().all(|a| !outside.contains(a)), "{outside:?}");

    // A watch with the address groups hears a new address; one without does not.
    let (ready, listening) = std::sync::mpsc::channel();
    let watching = spawn_in_netns(&node.netns, move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let mut with = LinkWatch::open(&VethNames::default(), true).expect("watch");
            let mut without = LinkWatch::open(&VethNames::default(), false).expect("watch");
            ready.send(()).unwrap();
            let heard = tokio::time::timeout(WAIT, async {
                loop {
                    if with.next().await.expect("read").addresses_changed {
                        return;
                    }
                }
            })
            .await
            .is_ok();
            let other = tokio::time::timeout(Duration::from_millis(200), without.next()).await;
            (heard, other.is_ok_and(|events| events.unwrap().relevant()))
        })
    });
    listening.recv_timeout(WAIT).expect("the watch is open");
    ip(&[
        "-n",
        &node.netns,
        "addr",
        "add",
        &format!("{ADDED_V4}/24"),
        "dev",
        "eth0",
    ]);
    let (heard, other) = watching.join().expect("watch thread");
    assert!(heard, "RTM_NEWADDR of {ADDED_V4} not heard");
    assert!(
        !other,
        "a watch without the address groups reported a change"
    );
    let found = in_netns(&node.netns, || {
        node_addresses::discover(&VethNames::default())
    })
    .unwrap();
    assert_eq!(found, addresses(&[ETH0_V4, ADDED_V4, ETH1_V4, ETH0_V6]));
}

/// Whether one UDP datagram from the node namespace, sent from `src`, reaches `to` (port
/// 7000) within `wait`.
fn node_reaches(node: &Node, src: &str, to: &Pod, wait: Duration) -> bool {
    let receiver = in_netns(&to.netns, || {
        UdpSocket::bind(SocketAddr::new(to.ip, 7000)).expect("bind the receiver")
    });
    receiver.set_read_timeout(Some(wait)).unwrap();
    let src: IpAddr = src.parse().unwrap();
    in_netns(&node.netns, || {
        let sender = UdpSocket::bind(SocketAddr::new(src, 0)).expect("bind the sender");
        sender
            .send_to(b"kubelet", SocketAddr::new(to.ip, 7000))
            .expect("send");
    });
    let mut buf = [0u8; 16];
    matches!(receiver.recv_from(&mut buf), Ok((n, _)) if &buf[..n] == b"kubelet")
}

/// httpd's ingress isolated by a policy that allows nothing.
const ISOLATE_HTTPD: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: isolate-httpd, namespace: default}
spec:
  podSelector: {matchLabels: {app: httpd}}
  policyTypes: [Ingress]
"#;

#[test]
fn privileged_the_node_reaches_its_isolated_pod_unless_node_ingress_is_policy() {
    if !privileged("privileged_the_node_reaches_its_isolated_pod_unless_node_ingress_is_policy") {
        return;
    }
    let mut node = Node::new("nodein");
    let httpd = node.add_pod("httpd", "198.18.0.30", 1);
    let amazonlinux = node.add_pod("amazonlinux", "198.18.0.40", 2);
    add_enis(&node, &amazonlinux.host_veth);
    let bpffs = Bpffs::new("nodein");
    let files = temp_dir("nodein");
    let cluster = || {
        let (snapshot, errors) = parse_manifests(&cluster_yaml(&node.pods, ISOLATE_HTTPD), "c");
        assert_eq!(errors, vec![]);
        snapshot
    };

    // `allow` (the default): the node's addresses pass httpd's ingress policy, a pod's not.
    let config = agent_config(&node, &bpffs, files.path());
    assert_eq!(config.agent.node_ingress, NodeIngress::Allow);
    let http = config.agent.health_address;
    let (source, _handle) = StaticSource::new(cluster());
    let agent = RunningAgent::start(&node.netns, config.clone(), source);
    eventually("the agent is ready", || http_ok(&node, http, "/readyz"));
    for src in [ETH0_V4, ETH1_V4] {
        assert!(node_reaches(&node, src, &httpd, WAIT), "node {src} → httpd");
    }
    assert!(
        !udp_reaches(&amazonlinux, &httpd, WAIT_DENY),
        "amazonlinux → httpd"
    );
    // An address the node gains while the agent runs is its own from the next pass on, which
    // the address's netlink notification starts (the cluster does not change).
    ip(&[
        "-n",
        &node.netns,
        "addr",
        "add",
        &format!("{ADDED_V4}/24"),
        "dev",
        "eth0",
    ]);
    eventually("the added address reaches httpd", || {
        node_reaches(&node, ADDED_V4, &httpd, Duration::from_millis(200))
    });
    agent.stop().expect("the first agent stops cleanly");

    // `policy`: the next agent adopts the pins and removes the node's addresses; httpd's
    // ingress policy now denies the node like any other peer.
    let mut strict = config;
    strict.agent.node_ingress = NodeIngress::Policy;
    let (source, _handle) = StaticSource::new(cluster());
    let agent = RunningAgent::start(&node.netns, strict, source);
    eventually("the second agent is ready", || {
        http_ok(&node, http, "/readyz")
    });
    for src in [ETH0_V4, ETH1_V4, ADDED_V4] {
        assert!(
            !node_reaches(&node, src, &httpd, WAIT_DENY),
            "node {src} → httpd with node_ingress: policy"
        );
    }
    assert!(
        !udp_reaches(&amazonlinux, &httpd, WAIT_DENY),
        "amazonlinux → httpd"
    );
    agent.stop().expect("the second agent stops cleanly");
}
