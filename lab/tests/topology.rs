//! The lab's network without enforcement: the VPC CNI wiring of both families (and of a
//! branch-ENI pod in strict mode), kube-proxy's
//! chains, the pods' resolv.conf, the real servers, curl and the kubelet's probes, and cleanup
//! on success, on a failed build and on panic. Needs root (namespaces, veths, iptables).

mod support;

use std::net::IpAddr;
use std::process::Command;

use serde_json::Value;
use tollgate_enforcer::{
    compile::{Placement, compile},
    desired::Ids,
};
use tollgate_lab::{
    IpFamily, LabError,
    client::{Client, Timeouts},
    kubelet::Kubelet,
    kubeproxy,
    names::{BRANCH_VETH_PREFIX, HOST_VETH_PREFIX, RunNames, host_veth_name},
    pods::LabPods,
    resolv::{NETNS_ETC, ResolvConfs},
    scenario::CLIENT_POD,
    servers::Servers,
    topology::{BRANCH_GATEWAY, Topology, VPC_ROUTER, list_netns},
};

use support::privileged;

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
        + &std::fs::read_to_string("/proc/sys/net/ipv6/conf/all/forwarding").unwrap_or_default()
}

/// The root namespace's nat tables (both families), as `iptables-save` prints them without
/// its timestamps.
fn root_nat() -> String {
    ["iptables-save", "ip6tables-save"]
        .iter()
        .map(|save| {
            let out = Command::new(save).args(["-t", "nat"]).output().unwrap();
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter(|l| !l.starts_with('#'))
                .collect::<Vec<_>>()
                .join("\n")
        })
        .collect()
}

fn family_flag(family: IpFamily) -> &'static str {
    match family {
        IpFamily::V4 => "-4",
        IpFamily::V6 => "-6",
    }
}

#[test]
fn privileged_pods_are_wired_like_the_vpc_cni() {
    if !privileged("privileged_pods_are_wired_like_the_vpc_cni") {
        return;
    }
    for family in [IpFamily::V4, IpFamily::V6] {
        wired(family);
    }
}

fn wired(family: IpFamily) {
    let forwarding_before = root_forwarding();
    let root_routes_before = ip_json(&["route", "show"]);
    let root_routes6_before = ip_json(&["-6", "route", "show"]);
    let pods = LabPods::embedded(family).unwrap();
    let names = RunNames::new();
    let prefix = names.prefix().to_string();
    let topology = Topology::create(names, &pods, None).unwrap();
    let node = topology.node_netns().to_string();
    let fam = family_flag(family);
    let gateway = family.gateway().to_string();

    // Loopback's own route (`::1`) aside.
    let node_routes = Value::Array(
        ip_json(&[fam, "-n", &node, "route", "show"])
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["dev"] != "lo")
            .cloned()
            .collect(),
    );
    let node_neighbors = ip_json(&[fam, "-n", &node, "neigh", "show"]);
    assert_eq!(
        node_routes.as_array().unwrap().len(),
        pods.pods.len(),
        "{family}: the node has one host route per pod and nothing else: {node_routes}"
    );
    // The node's own address, on its eth0 and nowhere else.
    let node_eth0 = ip_json(&[fam, "-n", &node, "addr", "show", "dev", "eth0"]);
    let addresses: Vec<&str> = node_eth0[0]["addr_info"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["local"].as_str().unwrap())
        .collect();
    assert_eq!(addresses, [family.node_address().to_string()], "{family}");
    for pod in &pods.pods {
        let link = topology.link(&pod.key()).unwrap();
        assert_eq!(
            link.host_veth,
            host_veth_name(HOST_VETH_PREFIX, &pod.namespace, &pod.name)
        );
        assert!(link.netns.starts_with(&prefix));

        let host = &ip_json(&["-n", &node, "link", "show", "dev", &link.host_veth])[0];
        assert_eq!(host["ifindex"].as_u64(), Some(u64::from(link.host_ifindex)));
        let host_mac = host["address"].as_str().unwrap();
        let eth0 = &ip_json(&["-n", &link.netns, "link", "show", "dev", "eth0"])[0];
        let pod_mac = eth0["address"].as_str().unwrap();

        // Node: host route to the host veth, permanent neighbor → the pod's MAC.
        let route = node_routes
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["dst"] == pod.ip.to_string())
            .unwrap_or_else(|| panic!("no route to {}: {node_routes}", pod.ip));
        assert_eq!(route["dev"], link.host_veth.as_str());
        let neighbor = node_neighbors
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["dst"] == pod.ip.to_string())
            .unwrap();
        assert_eq!(neighbor["lladdr"], pod_mac);
        assert_eq!(neighbor["state"][0], "PERMANENT");

        // Pod: its one address as a host prefix on eth0 (no link-local one), the on-link
        // gateway and the default route through it, and a permanent neighbor for the gateway →
        // the host veth's MAC.
        let addrs = ip_json(&["-n", &link.netns, "addr", "show", "dev", "eth0"]);
        let inet: Vec<_> = addrs[0]["addr_info"].as_array().unwrap().iter().collect();
        assert_eq!(inet.len(), 1, "{family} {}: {addrs}", pod.key());
        assert_eq!(inet[0]["local"], pod.ip.to_string());
        assert_eq!(inet[0]["prefixlen"], family.host_prefix_len());
        let routes = ip_json(&[fam, "-n", &link.netns, "route", "show"]);
        let routes = routes.as_array().unwrap();
        assert!(
            routes
                .iter()
                .any(|r| r["dst"] == "default" && r["gateway"] == gateway && r["dev"] == "eth0"),
            "{routes:?}"
        );
        assert!(
            routes
                .iter()
                .any(|r| r["dst"] == gateway && r["dev"] == "eth0")
        );
        let neighbors = ip_json(&[fam, "-n", &link.netns, "neigh", "show"]);
        let gw = neighbors
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["dst"] == gateway)
            .unwrap();
        assert_eq!(gw["lladdr"], host_mac);
        assert_eq!(gw["state"][0], "PERMANENT");
    }

    // The root namespace is untouched.
    assert_eq!(root_forwarding(), forwarding_before);
    assert_eq!(ip_json(&["route", "show"]), root_routes_before);
    assert_eq!(ip_json(&["-6", "route", "show"]), root_routes6_before);
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

#[test]
fn privileged_a_branch_eni_pod_is_wired_like_the_vpc_cni_in_strict_mode() {
    if !privileged("privileged_a_branch_eni_pod_is_wired_like_the_vpc_cni_in_strict_mode") {
        return;
    }
    let root_routes_before = ip_json(&["route", "show"]);
    let root_rules_before = ip_json(&["rule", "show"]);
    let pods = LabPods::embedded(IpFamily::V4).unwrap();
    let names = RunNames::new();
    let prefix = names.prefix().to_string();
    let vpc = names.vpc_netns();
    let topology = Topology::create(names, &pods, Some(CLIENT_POD)).unwrap();
    let node = topology.node_netns().to_string();
    let client = topology.link(CLIENT_POD).unwrap();
    assert!(client.branch_eni);
    assert_eq!(
        client.host_veth,
        host_veth_name(BRANCH_VETH_PREFIX, "default", "amazonlinux")
    );
    let ip_addr = client.ip.to_string();

    // The client's route is in the VLAN's table (101) only, with the subnet gateway's.
    let main = ip_json(&["-n", &node, "route", "show", "table", "main"]);
    assert!(
        main.as_array()
            .unwrap()
            .iter()
            .all(|r| r["dst"] != ip_addr.as_str()),
        "{main}"
    );
    let table = ip_json(&["-n", &node, "route", "show", "table", "101"]);
    let table: Vec<(&str, &str)> = table
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["dst"].as_str().unwrap(), r["dev"].as_str().unwrap()))
        .collect();
    assert_eq!(
        table,
        [
            ("default", "vlan.eth.1"),
            (ip_addr.as_str(), client.host_veth.as_str()),
            (BRANCH_GATEWAY, "vlan.eth.1"),
        ]
    );
    // The two `iif` rules of priority 10 look it up.
    let rules = ip_json(&["-n", &node, "rule", "show"]);
    let mut iif: Vec<&str> = rules
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["table"] == "101")
        .inspect(|r| assert_eq!(r["priority"], 10, "{r}"))
        .map(|r| r["iif"].as_str().unwrap())
        .collect();
    iif.sort();
    assert_eq!(iif, ["vlan.eth.1", client.host_veth.as_str()]);
    // The other pods are wired as before, in the main table; the node's default route is the
    // VPC, whose own routes stay inside the lab.
    for link in topology.links().filter(|l| !l.branch_eni) {
        assert!(link.host_veth.starts_with(HOST_VETH_PREFIX));
        let ip_addr = link.ip.to_string();
        assert!(
            main.as_array()
                .unwrap()
                .iter()
                .any(|r| r["dst"] == ip_addr.as_str()),
            "{main}"
        );
    }
    assert!(
        main.as_array()
            .unwrap()
            .iter()
            .any(|r| r["dst"] == "default" && r["gateway"] == VPC_ROUTER),
        "{main}"
    );
    let vpc_routes = ip_json(&["-n", &vpc, "route", "show"]);
    assert!(
        vpc_routes
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["dst"] != "default"),
        "the VPC has no route out: {vpc_routes}"
    );

    drop(topology);
    assert!(left_over(&prefix).is_empty());
    assert_eq!(ip_json(&["route", "show"]), root_routes_before);
    assert_eq!(ip_json(&["rule", "show"]), root_rules_before);

    // IPv4 only, and refused before anything is built.
    let pods = LabPods::embedded(IpFamily::V6).unwrap();
    let names = RunNames::new();
    let prefix = names.prefix().to_string();
    let error = Topology::create(names, &pods, Some(CLIENT_POD)).unwrap_err();
    assert!(
        matches!(&error, LabError::Scenario(m) if m.contains("IPv4 only")),
        "{error}"
    );
    assert!(left_over(&prefix).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn privileged_curl_reaches_the_servers_through_kube_dns_and_kube_proxy() {
    if !privileged("privileged_curl_reaches_the_servers_through_kube_dns_and_kube_proxy") {
        return;
    }
    for family in [IpFamily::V4, IpFamily::V6] {
        through_services(family).await;
    }
}

async fn through_services(family: IpFamily) {
    let root_nat_before = root_nat();
    let pods = LabPods::embedded(family).unwrap();
    let names = RunNames::new();
    let prefix = names.prefix().to_string();
    let run_dir = names.run_dir();
    {
        let topology = Topology::create(names, &pods, None).unwrap();
        let compiled = compile(
            &pods.snapshot,
            &Placement::AllPods { ifindex: 1 },
            &Ids::default(),
        );
        kubeproxy::install(topology.node_netns(), &compiled.services, family).unwrap();
        let nat = kubeproxy::saved(topology.node_netns(), family).unwrap();
        for chain in [
            "KUBE-SERVICES",
            "KUBE-SVC-",
            "KUBE-SEP-",
            "KUBE-POSTROUTING",
        ] {
            assert!(nat.contains(chain), "{family}: no {chain} in {nat}");
        }
        assert!(
            nat.contains("-A PREROUTING") && nat.contains("-A OUTPUT"),
            "{nat}"
        );
        let dns = pods.dns_cluster_ip().unwrap();
        let resolv = ResolvConfs::write(
            pods.pods.iter().map(|pod| {
                let link = topology.link(&pod.key()).unwrap();
                (link.netns.as_str(), pod.namespace.as_str())
            }),
            dns,
        )
        .unwrap();
        let client_netns = topology.link(CLIENT_POD).unwrap().netns.clone();
        let resolv_conf =
            std::fs::read_to_string(format!("{NETNS_ETC}/{client_netns}/resolv.conf")).unwrap();
        assert!(
            resolv_conf.contains(&format!("nameserver {dns}")),
            "{resolv_conf}"
        );

        let servers = Servers::start(&topology, &pods).await.unwrap();
        // Each server listens on its pod's address only.
        for pod in pods.pods.iter().filter(|p| !p.serves.is_empty()) {
            let netns = &topology.link(&pod.key()).unwrap().netns;
            let out = Command::new("ip")
                .args(["netns", "exec", netns, "ss", "-Hlntu"])
                .output()
                .unwrap();
            let listening = String::from_utf8_lossy(&out.stdout).into_owned();
            for line in listening.lines() {
                let local = line.split_whitespace().nth(4).unwrap();
                let host = local.rsplit_once(':').unwrap().0;
                let host = host.trim_start_matches('[').trim_end_matches(']');
                assert_eq!(
                    host.parse::<IpAddr>().ok(),
                    Some(pod.ip),
                    "{}: {line}",
                    pod.key()
                );
            }
        }
        let kubelet = Kubelet::start(&topology, &pods);
        let client = Client::new(&topology, CLIENT_POD, Timeouts::default()).unwrap();

        for (host, marker) in [
            ("nginx", "Welcome to nginx!"),
            ("httpd.default.svc.cluster.local", "It works!"),
        ] {
            let outcome = client.curl(host).await.unwrap();
            assert_eq!(outcome.exit, 0, "{family} {host}: {outcome:?}");
            assert!(outcome.body.contains(marker), "{host}: {outcome:?}");
        }
        let outcome = client.curl("nothing-here").await.unwrap();
        assert_eq!(outcome.exit, 6, "{outcome:?}");
        assert_eq!(
            outcome.error,
            "curl: (6) Could not resolve host: nothing-here"
        );
        // kube-dns's Service has no port 80: nothing listens there, refused at once.
        let outcome = client.curl("kube-dns.kube-system").await.unwrap();
        assert_eq!(outcome.exit, 7, "{outcome:?}");
        // The servers logged the client (through kube-proxy's DNAT: its own address).
        let nginx = pods
            .pods
            .iter()
            .find(|p| p.key() == "default/nginx")
            .unwrap();
        let client_ip = topology.link(CLIENT_POD).unwrap().ip.to_string();
        assert!(servers.access_log(nginx).contains(&client_ip));

        kubelet.round().await;
        let probes = kubelet.take();
        assert_eq!(probes.len(), 3, "{probes:?}");
        assert!(probes.iter().all(|p| p.ok()), "{probes:?}");
        drop(kubelet);
        drop(servers);
        drop(resolv);
        assert!(!std::path::Path::new(&format!("{NETNS_ETC}/{client_netns}")).exists());
    }
    assert!(!run_dir.exists(), "{} left behind", run_dir.display());
    assert_eq!(left_over(&prefix), Vec::<String>::new());
    assert_eq!(
        root_nat(),
        root_nat_before,
        "the root namespace's nat tables are untouched"
    );
}

#[test]
fn privileged_a_failed_build_removes_what_it_made() {
    if !privileged("privileged_a_failed_build_removes_what_it_made") {
        return;
    }
    let mut pods = LabPods::embedded(IpFamily::V4).unwrap();
    // The same pod twice: its namespace exists already when the copy is built.
    let copy = pods.pods[1].clone();
    pods.pods.push(copy);
    let names = RunNames::new();
    let prefix = names.prefix().to_string();
    let error = Topology::create(names, &pods, None).unwrap_err();
    assert!(
        matches!(&error, LabError::Command { command, .. } if command.contains("netns add")),
        "{error}"
    );
    assert_eq!(left_over(&prefix), Vec::<String>::new());
}

#[test]
fn privileged_a_panic_removes_the_namespaces() {
    if !privileged("privileged_a_panic_removes_the_namespaces") {
        return;
    }
    let pods = LabPods::embedded(IpFamily::V6).unwrap();
    let names = RunNames::new();
    let prefix = names.prefix().to_string();
    let panicked = std::panic::catch_unwind(|| {
        let topology = Topology::create(names, &pods, None).unwrap();
        assert!(!left_over(&prefix).is_empty());
        panic!("while {} exists", topology.node_netns());
    });
    assert!(panicked.is_err());
    assert_eq!(left_over(&prefix), Vec::<String>::new());
}
