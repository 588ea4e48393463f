//! The lab's network without enforcement: the VPC CNI wiring, the servers and the client, and
//! cleanup on success, on a failed build and on panic. Needs root (namespaces, veths).

mod support;

use std::net::Ipv4Addr;
use std::process::Command;

use serde_json::Value;
use tollgate_lab::{
    LabError,
    client::{Client, Outcome, Timeouts},
    names::{RunNames, host_veth_name},
    pods::LabPods,
    scenario::CLIENT_POD,
    servers::Servers,
    topology::{GATEWAY, Topology, list_netns},
};

use support::is_root;

/// `ip ARGS -j …` as JSON.
fn ip_json(args: &[&str]) -> Value {
    let out = Command::new("ip").arg("-j").args(args).output().unwrap();
    assert!(out.status.success(), "ip -j {args:?}: {out:?}");
    serde_json::from_slice(&out.stdout).unwrap()
}

fn left_over(prefix: &str) -> Vec<String> {
    list_netns()
        .unwrap()
        .into_iter()
        .filter(|n| n.starts_with(&format!("{prefix}-")))
        .collect()
}

fn root_forwarding() -> String {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap()
}

#[test]
fn pods_are_wired_like_the_vpc_cni() {
    if !is_root("pods_are_wired_like_the_vpc_cni") {
        return;
    }
    let forwarding_before = root_forwarding();
    let root_routes_before = ip_json(&["route", "show"]);
    let pods = LabPods::embedded().unwrap();
    let names = RunNames::new();
    let prefix = names.prefix().to_string();
    let topology = Topology::create(names, &pods).unwrap();
    let node = topology.node_netns().to_string();

    let node_routes = ip_json(&["-n", &node, "route", "show"]);
    let node_neighbors = ip_json(&["-n", &node, "neigh", "show"]);
    assert_eq!(
        node_routes.as_array().unwrap().len(),
        pods.pods.len(),
        "the node has one /32 per pod and nothing else: {node_routes}"
    );
    for pod in &pods.pods {
        let link = topology.link(&pod.key()).unwrap();
        assert_eq!(link.host_veth, host_veth_name(&pod.namespace, &pod.name));
        assert!(link.netns.starts_with(&prefix));

        let host = &ip_json(&["-n", &node, "link", "show", "dev", &link.host_veth])[0];
        assert_eq!(host["ifindex"].as_u64(), Some(u64::from(link.host_ifindex)));
        let host_mac = host["address"].as_str().unwrap();
        let eth0 = &ip_json(&["-n", &link.netns, "link", "show", "dev", "eth0"])[0];
        let pod_mac = eth0["address"].as_str().unwrap();

        // Node: /32 route to the host veth, permanent neighbor → the pod's MAC.
        let route = node_routes
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["dst"] == pod.ip.to_string())
            .unwrap_or_else(|| panic!("no route to {}: {node_routes}", pod.ip));
        assert_eq!(route["dev"], link.host_veth.as_str());
        assert_eq!(route["scope"], "link");
        let neighbor = node_neighbors
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["dst"] == pod.ip.to_string())
            .unwrap();
        assert_eq!(neighbor["lladdr"], pod_mac);
        assert_eq!(neighbor["state"][0], "PERMANENT");

        // Pod: the address as /32 on eth0, the on-link gateway and the default route through
        // it, and a permanent neighbor for the gateway → the host veth's MAC.
        let addrs = ip_json(&["-n", &link.netns, "addr", "show", "dev", "eth0"]);
        let inet: Vec<_> = addrs[0]["addr_info"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["family"] == "inet")
            .collect();
        assert_eq!(inet.len(), 1);
        assert_eq!(inet[0]["local"], pod.ip.to_string());
        assert_eq!(inet[0]["prefixlen"], 32);
        let routes = ip_json(&["-n", &link.netns, "route", "show"]);
        let routes = routes.as_array().unwrap();
        assert!(routes.iter().any(|r| r["dst"] == "default"
            && r["gateway"] == GATEWAY.to_string()
            && r["dev"] == "eth0"));
        assert!(routes.iter().any(|r| r["dst"] == GATEWAY.to_string()
            && r["dev"] == "eth0"
            && r["scope"] == "link"));
        let neighbors = ip_json(&["-n", &link.netns, "neigh", "show"]);
        let gateway = neighbors
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["dst"] == GATEWAY.to_string())
            .unwrap();
        assert_eq!(gateway["lladdr"], host_mac);
        assert_eq!(gateway["state"][0], "PERMANENT");
    }

    // The root namespace is untouched.
    assert_eq!(root_forwarding(), forwarding_before);
    assert_eq!(ip_json(&["route", "show"]), root_routes_before);
    let root_links = ip_json(&["link", "show"]);
    for link in topology.links() {
        assert!(
            !root_links
                .as_array()
                .unwrap()
                .iter()
                .any(|l| l["ifname"] == link.host_veth.as_str()),
            "{} leaked into the root namespace",
            link.host_veth
        );
    }

    drop(topology);
    assert_eq!(left_over(&prefix), Vec::<String>::new());
}

#[tokio::test]
async fn servers_answer_the_client_without_enforcement() {
    if !is_root("servers_answer_the_client_without_enforcement") {
        return;
    }
    let pods = LabPods::embedded().unwrap();
    let names = RunNames::new();
    let prefix = names.prefix().to_string();
    {
        let topology = Topology::create(names, &pods).unwrap();
        let servers = Servers::start(&topology, &pods).await.unwrap();
        let client = Client::new(&topology, &pods, CLIENT_POD, Timeouts::default()).unwrap();

        for (host, marker) in [
            ("nginx", "Welcome to nginx!"),
            ("httpd.default.svc.cluster.local", "It works!"),
        ] {
            match client.curl(host).await.unwrap() {
                Outcome::Response { status, body } => {
                    assert_eq!(status, 200, "{host}");
                    assert!(body.contains(marker), "{host}: {body}");
                }
                other => panic!("{host}: {other:?}"),
            }
        }
        assert_eq!(
            client.resolve("kube-dns.kube-system").await.unwrap(),
            Some(Ipv4Addr::new(198, 18, 0, 10))
        );
        assert_eq!(
            client.curl("nothing-here").await.unwrap(),
            Outcome::CouldNotResolve {
                host: "nothing-here".into()
            }
        );
        // kube-dns serves no HTTP: refused at once, not timed out.
        assert!(matches!(
            client.curl("kube-dns").await.unwrap(),
            Outcome::ConnectFailed { .. }
        ));
        drop(servers);
    }
    assert_eq!(left_over(&prefix), Vec::<String>::new());
}

#[test]
fn a_failed_build_removes_what_it_made() {
    if !is_root("a_failed_build_removes_what_it_made") {
        return;
    }
    let mut pods = LabPods::embedded().unwrap();
    // The same pod twice: its namespace exists already when the copy is built.
    let copy = pods.pods[1].clone();
    pods.pods.push(copy);
    let names = RunNames::new();
    let prefix = names.prefix().to_string();
    let error = Topology::create(names, &pods).unwrap_err();
    assert!(
        matches!(&error, LabError::Command { command, .. } if command.contains("netns add")),
        "{error}"
    );
    assert_eq!(left_over(&prefix), Vec::<String>::new());
}

#[test]
fn a_panic_removes_the_namespaces() {
    if !is_root("a_panic_removes_the_namespaces") {
        return;
    }
    let pods = LabPods::embedded().unwrap();
    let names = RunNames::new();
    let prefix = names.prefix().to_string();
    let panicked = std::panic::catch_unwind(|| {
        let topology = Topology::create(names, &pods).unwrap();
        assert!(!left_over(&prefix).is_empty());
        panic!("while {} exists", topology.node_netns());
    });
    assert!(panicked.is_err());
    assert_eq!(left_over(&prefix), Vec::<String>::new());
}
