//! What the privileged agent tests share: a node-shaped set of network namespaces wired like
//! the VPC CNI, running code inside one, UDP probes between pods, a bpffs to pin into, and
//! the compiler and sync on the node's pods. Everything is removed on drop, also when a test
//! fails; addresses exist only inside the namespaces a test creates.

#![allow(dead_code, reason = "each test binary uses its own part")]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use aya::programs::{SchedClassifier, TcAttachType};
use tollgate_agent::{
    config::AgentConfig,
    daemon::run_agent,
    endpoints::{LocalPod, ifindex},
    source::StaticSource,
};
use tollgate_collector::config::SinkConfig;
use tollgate_enforcer::{
    compile::{Compiled, Placement, compile},
    desired::Ids,
    manifest::parse_manifests,
    probe::Probe,
    snapshot::Snapshot,
    sync::sync,
};
use tollgate_test_support::netns::{Netns, sysctl};
#[allow(unused_imports, reason = "each test binary uses its own part")]
pub use tollgate_test_support::netns::{enter_netns, in_netns, ip, spawn_in_netns};
#[allow(unused_imports, reason = "each test binary uses its own part")]
pub use tollgate_test_support::{privileged, run};

/// The seed scenario's manifests: the lab's pods, `all-deny`, and the two allow policies.
pub const SEED: [&str; 3] = [
    include_str!("../../../examples/seed/lab-pods.yaml"),
    include_str!("../../../examples/seed/all-deny.yaml"),
    include_str!("../../../examples/seed/allow-amazonlinux-to-nginx.yaml"),
];

/// The seed scenario as one snapshot.
pub fn seed() -> Snapshot {
    let (snapshot, errors) = parse_manifests(&SEED.join("\n---\n"), "seed");
    assert!(errors.is_empty(), "{errors:?}");
    snapshot
}

/// One wired pod.
#[derive(Debug, Clone)]
pub struct Pod {
    /// `namespace/name`.
    pub key: String,
    /// Its network namespace.
    pub netns: String,
    /// Its address.
    pub ip: IpAddr,
    /// Its host-side veth, in the node namespace.
    pub host_veth: String,
}

/// How the VPC CNI wires a pod ([`Node::add_wired_pod`]).
#[derive(Debug, Clone, Copy)]
pub enum Wiring {
    /// A host veth `<prefix>…`, the pod's /32 in the main table.
    Regular {
        /// `AWS_VPC_K8S_CNI_VETHPREFIX`.
        prefix: &'static str,
    },
    /// Security groups for pods in strict mode: a host veth `vlan…`, the pod's /32 in table
    /// `<vlan> + 100`, its traffic through `vlan.eth.<vlan>` and the VPC.
    BranchStrict {
        /// The branch ENI's VLAN id.
        vlan: u16,
    },
}

/// A node namespace and one namespace per pod, wired like the VPC CNI; removed on drop.
#[derive(Debug)]
pub struct Node {
    /// The node's network namespace.
    pub netns: String,
    tag: String,
    /// Namespaces created, in order.
    created: Vec<Netns>,
    /// The pods, in the order they were added.
    pub pods: Vec<Pod>,
}

impl Node {
    /// An empty node namespace with forwarding on, named after `tag` and the process.
    pub fn new(tag: &str) -> Self {
        let tag = format!("tg-{tag}-{}", std::process::id());
        let mut node = Self {
            netns: format!("{tag}-node"),
            tag,
            created: Vec::new(),
            pods: Vec::new(),
        };
        node.add_netns(&node.netns.clone());
        sysctl(&node.netns, &["net.ipv4.ip_forward=1"]);
        node
    }

    fn add_netns(&mut self, netns: &str) {
        self.created.push(Netns::add(netns));
    }

    /// Adds pod `default/<name>` with address `addr` on a host veth `eni…` numbered `n`: an
    /// IPv4 pod gets the VPC CNI's full wiring (so it can send), an IPv6 pod only its veth and
    /// the node's /128 route to it (enough to be discovered and attached to).
    pub fn add_pod(&mut self, name: &str, addr: &str, n: u32) -> Pod {
        self.add_wired_pod(name, addr, n, Wiring::Regular { prefix: "eni" })
    }

    /// Adds pod `default/<name>` as [`Node::add_pod`] does, wired as `wiring` says (IPv4 only
    /// for a branch ENI).
    pub fn add_wired_pod(&mut self, name: &str, addr: &str, n: u32, wiring: Wiring) -> Pod {
        let ip_addr: IpAddr = addr.parse().expect("pod address");
        let netns = format!("{}-{name}", self.tag);
        self.add_netns(&netns);
        // The VPC CNI's names: the prefix and 11 hex digits.
        let host_veth = match wiring {
            Wiring::Regular { prefix } => format!("{prefix}{n:011x}"),
            Wiring::BranchStrict { .. } => format!("vlan{n:011x}"),
        };
        let node = self.netns.clone();
        ip(&[
            "-n", &node, "link", "add", &host_veth, "type", "veth", "peer", "name", "eth0",
            "netns", &netns,
        ]);
        ip(&["-n", &node, "link", "set", &host_veth, "up"]);
        ip(&["-n", &netns, "link", "set", "eth0", "up"]);
        match ip_addr {
            IpAddr::V4(_) => {
                // No IPv6 chatter from this pod into the probe.
                sysctl(&netns, &["net.ipv6.conf.all.disable_ipv6=1"]);
                let cidr = format!("{addr}/32");
                let gateway = "169.254.1.1";
                ip(&["-n", &netns, "addr", "add", &cidr, "dev", "eth0"]);
                ip(&[
                    "-n", &netns, "route", "add", gateway, "dev", "eth0", "scope", "link",
                ]);
                ip(&[
                    "-n", &netns, "route", "add", "default", "via", gateway, "dev", "eth0",
                ]);
                let host_mac = mac(&node, &host_veth);
                let pod_mac = mac(&netns, "eth0");
                ip(&[
                    "-n",
                    &netns,
                    "neigh",
                    "add",
                    gateway,
                    "lladdr",
                    &host_mac,
                    "dev",
                    "eth0",
                    "nud",
                    "permanent",
                ]);
                match wiring {
                    Wiring::Regular { .. } => {
                        ip(&[
                            "-n", &node, "route", "add", &cidr, "dev", &host_veth, "scope", "link",
                        ]);
                    }
                    Wiring::BranchStrict { vlan } => {
                        self.branch_eni_routes(vlan, &cidr, &host_veth);
                    }
                }
                ip(&[
                    "-n",
                    &node,
                    "neigh",
                    "add",
                    addr,
                    "lladdr",
                    &pod_mac,
                    "dev",
                    &host_veth,
                    "nud",
                    "permanent",
                ]);
            }
            IpAddr::V6(_) => {
                let cidr = format!("{addr}/128");
                ip(&["-n", &node, "-6", "route", "add", &cidr, "dev", &host_veth]);
            }
        }
        let pod = Pod {
            key: format!("default/{name}"),
            netns,
            ip: ip_addr,
            host_veth,
        };
        self.pods.push(pod.clone());
        pod
    }

    /// The VPC behind the node, created once: namespace `<tag>-vpc`, joined to the node's
    /// `eth0` (the primary ENI, 198.18.255.1/30, the node's default route), routing every pod
    /// address but the branch ENIs' back to the node through `eth0`.
    fn vpc(&mut self) -> String {
        let vpc = format!("{}-vpc", self.tag);
        if self.created.iter().any(|netns| netns.name() == vpc) {
            return vpc;
        }
        self.add_netns(&vpc);
        sysctl(
            &vpc,
            &["net.ipv4.ip_forward=1", "net.ipv6.conf.all.disable_ipv6=1"],
        );
        let node = self.netns.clone();
        ip(&[
            "-n", &node, "link", "add", "eth0", "type", "veth", "peer", "name", "node0", "netns",
            &vpc,
        ]);
        ip(&["-n", &node, "link", "set", "eth0", "up"]);
        ip(&["-n", &vpc, "link", "set", "node0", "up"]);
        ip(&["-n", &node, "addr", "add", "198.18.255.1/30", "dev", "eth0"]);
        ip(&["-n", &vpc, "addr", "add", "198.18.255.2/30", "dev", "node0"]);
        ip(&[
            "-n",
            &node,
            "route",
            "add",
            "default",
            "via",
            "198.18.255.2",
            "dev",
            "eth0",
        ]);
        ip(&[
            "-n",
            &vpc,
            "route",
            "add",
            "198.18.0.0/16",
            "via",
            "198.18.255.1",
            "dev",
            "node0",
        ]);
        vpc
    }

    /// The VPC CNI's strict-mode wiring of a branch-ENI pod at `cidr` on `host_veth`
    /// (`setupVlan`, `setupIIFBasedContainerRouteRules`): the link `vlan.eth.<vlan>`, table
    /// `<vlan> + 100` with the subnet gateway (198.18.254.<vlan>) and the pod's route, the two
    /// `iif` rules (priority 10); and the VPC's side: the branch ENI behind that link.
    ///
    /// On a node `vlan.eth.<vlan>` is an 802.1Q sub-interface of the trunk ENI; the kernel
    /// these tests run on has no 802.1Q (`CONFIG_VLAN_8021Q` unset), so here it is a veth to
    /// the VPC namespace under the same name: the same routes, rules and names, without the
    /// tag on the wire (which nothing in the node namespace sees).
    fn branch_eni_routes(&mut self, vlan: u16, cidr: &str, host_veth: &str) {
        let vpc = self.vpc();
        let node = self.netns.clone();
        let table = (u32::from(vlan) + 100).to_string();
        let (link, branch) = (format!("vlan.eth.{vlan}"), format!("branch.{vlan}"));
        let gateway = format!("198.18.254.{vlan}");
        ip(&[
            "-n", &node, "link", "add", &link, "type", "veth", "peer", "name", &branch, "netns",
            &vpc,
        ]);
        ip(&["-n", &node, "link", "set", &link, "up"]);
        ip(&["-n", &vpc, "link", "set", &branch, "up"]);
        ip(&[
            "-n",
            &vpc,
            "addr",
            "add",
            &format!("{gateway}/32"),
            "dev",
            &branch,
        ]);
        let (link_mac, branch_mac) = (mac(&node, &link), mac(&vpc, &branch));
        ip(&[
            "-n", &node, "route", "add", &gateway, "dev", &link, "scope", "link", "table", &table,
        ]);
        ip(&[
            "-n", &node, "route", "add", "default", "via", &gateway, "dev", &link, "table", &table,
        ]);
        ip(&[
            "-n",
            &node,
            "neigh",
            "add",
            &gateway,
            "lladdr",
            &branch_mac,
            "dev",
            &link,
            "nud",
            "permanent",
        ]);
        ip(&[
            "-n", &node, "route", "add", cidr, "dev", host_veth, "scope", "link", "table", &table,
        ]);
        for iif in [&link, host_veth] {
            ip(&[
                "-n", &node, "rule", "add", "iif", iif, "lookup", &table, "priority", "10",
            ]);
        }
        let pod_ip = cidr.trim_end_matches("/32");
        ip(&["-n", &vpc, "route", "add", cidr, "dev", &branch]);
        ip(&[
            "-n",
            &vpc,
            "neigh",
            "add",
            pod_ip,
            "lladdr",
            &link_mac,
            "dev",
            &branch,
            "nud",
            "permanent",
        ]);
    }

    /// Gives `pod` a second interface as the VPC CNI does for a multi-NIC pod: a host veth
    /// `eni…` numbered `n`; `eth1` in the pod with `addr`, whose traffic a rule sends out
    /// through `eth1` (table 2, gateway 169.254.1.2); the node's /32 to it. Returns the pod as
    /// seen from that address (same key and namespace), also in [`Node::pods`]: the pod's
    /// addresses are those of every entry with its key.
    pub fn add_interface(&mut self, pod: &Pod, addr: &str, n: u32) -> Pod {
        let host_veth = format!("eni{n:011x}");
        let node = self.netns.clone();
        let netns = pod.netns.clone();
        ip(&[
            "-n", &node, "link", "add", &host_veth, "type", "veth", "peer", "name", "eth1",
            "netns", &netns,
        ]);
        ip(&["-n", &node, "link", "set", &host_veth, "up"]);
        ip(&["-n", &netns, "link", "set", "eth1", "up"]);
        let cidr = format!("{addr}/32");
        let gateway = "169.254.1.2";
        ip(&["-n", &netns, "addr", "add", &cidr, "dev", "eth1"]);
        ip(&[
            "-n", &netns, "route", "add", gateway, "dev", "eth1", "scope", "link", "table", "2",
        ]);
        ip(&[
            "-n", &netns, "route", "add", "default", "via", gateway, "dev", "eth1", "table", "2",
        ]);
        ip(&["-n", &netns, "rule", "add", "from", addr, "lookup", "2"]);
        let (host_mac, pod_mac) = (mac(&node, &host_veth), mac(&netns, "eth1"));
        ip(&[
            "-n",
            &netns,
            "neigh",
            "add",
            gateway,
            "lladdr",
            &host_mac,
            "dev",
            "eth1",
            "nud",
            "permanent",
        ]);
        ip(&[
            "-n", &node, "route", "add", &cidr, "dev", &host_veth, "scope", "link",
        ]);
        ip(&[
            "-n",
            &node,
            "neigh",
            "add",
            addr,
            "lladdr",
            &pod_mac,
            "dev",
            &host_veth,
            "nud",
            "permanent",
        ]);
        let second = Pod {
            key: pod.key.clone(),
            netns,
            ip: addr.parse().expect("an address"),
            host_veth,
        };
        self.pods.push(second.clone());
        second
    }

    /// Deletes a pod's namespace (and with it its veth pair, routes and neighbors), as the
    /// VPC CNI's DEL and the runtime do, and waits (at most 5 s) for the host veth to go: the
    /// kernel tears a namespace down asynchronously.
    pub fn delete_pod(&mut self, name: &str) {
        let key = format!("default/{name}");
        let position = self
            .pods
            .iter()
            .position(|pod| pod.key == key)
            .expect("known pod");
        let pod = self.pods.remove(position);
        let at = self
            .created
            .iter()
            .position(|netns| netns.name() == pod.netns)
            .expect("the pod's namespace");
        self.created.remove(at).delete();
        let started = Instant::now();
        while in_netns(&self.netns, || ifindex(&pod.host_veth)).is_some() {
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "{} still there",
                pod.host_veth
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The pods as the agent's watch would report them.
    pub fn local_pods(&self) -> Vec<LocalPod> {
        local_pods(&self.pods)
    }

    /// The pod `default/<name>`.
    pub fn pod(&self, name: &str) -> &Pod {
        let key = format!("default/{name}");
        self.pods
            .iter()
            .find(|pod| pod.key == key)
            .expect("known pod")
    }

    /// The ifindex of `ifname` in the node namespace, as `ip` reports it.
    pub fn ifindex(&self, ifname: &str) -> u32 {
        let out = ip(&["-n", &self.netns, "-o", "link", "show", "dev", ifname]);
        out.split(':')
            .next()
            .unwrap()
            .trim()
            .parse()
            .expect("ifindex")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // The pods' namespaces before the node's.
        while let Some(netns) = self.created.pop() {
            drop(netns);
        }
    }
}

fn mac(netns: &str, ifname: &str) -> String {
    let out = ip(&["-n", netns, "-o", "link", "show", "dev", ifname]);
    let at = out.find("link/ether ").expect("ether address") + "link/ether ".len();
    out[at..at + 17].to_string()
}

/// Whether one UDP datagram from `from` reaches `to` (port 7000) within `wait`.
pub fn udp_reaches(from: &Pod, to: &Pod, wait: Duration) -> bool {
    let receiver = in_netns(&to.netns, || {
        UdpSocket::bind(SocketAddr::new(to.ip, 7000)).expect("bind the receiver")
    });
    let sender = in_netns(&from.netns, || {
        UdpSocket::bind(SocketAddr::new(from.ip, 0)).expect("bind the sender")
    });
    let deadline = Instant::now() + wait;
    receiver.set_read_timeout(Some(wait)).unwrap();
    sender
        .send_to(b"tollgate", SocketAddr::new(to.ip, 7000))
        .expect("send");
    let mut buf = [0u8; 16];
    loop {
        match receiver.recv_from(&mut buf) {
            Ok((n, _)) => return &buf[..n] == b"tollgate",
            // A signal (SIGCHLD of an agent process a test killed) ends a receive that has a
            // timeout with EINTR, whatever SA_RESTART says (signal(7)): wait out the rest.
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return false;
                }
                receiver.set_read_timeout(Some(left)).unwrap();
            }
            Err(error)
                if matches!(
                    error.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return false;
            }
            Err(error) => panic!("receive: {error}"),
        }
    }
}

/// `pods` as the agent's watch would report them.
pub fn local_pods(pods: &[Pod]) -> Vec<LocalPod> {
    let mut local: Vec<LocalPod> = Vec::new();
    for pod in pods {
        match local.iter_mut().find(|p| p.pod == pod.key) {
            // A second interface of a multi-NIC pod ([`Node::add_interface`]).
            Some(known) => known.ips.push(pod.ip),
            None => local.push(LocalPod {
                pod: pod.key.clone(),
                ips: vec![pod.ip],
            }),
        }
    }
    local
}

/// Namespace `default` with `pods` (label `app: <name>`), then `policies`.
pub fn cluster_yaml(pods: &[Pod], policies: &str) -> String {
    let mut yaml = String::from("apiVersion: v1\nkind: Namespace\nmetadata: {name: default}\n");
    for pod in local_pods(pods) {
        let name = pod.pod.trim_start_matches("default/");
        let ips: Vec<String> = pod
            .ips
            .iter()
            .map(|ip| format!("{{ip: \"{ip}\"}}"))
            .collect();
        yaml.push_str(&format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: default, labels: {{app: {name}}}}}\n\
             spec: {{containers: [{{name: c, image: busybox}}]}}\n\
             status: {{phase: Running, podIP: \"{ip}\", podIPs: [{ips}]}}\n",
            ip = pod.ips[0],
            ips = ips.join(", "),
        ));
    }
    if !policies.is_empty() {
        yaml.push_str("---\n");
        yaml.push_str(policies);
    }
    yaml
}

/// Compiles `pods` and `policies` for the endpoints in `interfaces`.
pub fn compiled(pods: &[Pod], policies: &str, interfaces: &BTreeMap<String, u32>) -> Compiled {
    compiled_by_address(pods, policies, interfaces, &BTreeMap::new())
}

/// Compiles `pods` and `policies` for the endpoints in `interfaces`, the addresses of
/// `addresses` each on its own interface (multi-NIC pods).
pub fn compiled_by_address(
    pods: &[Pod],
    policies: &str,
    interfaces: &BTreeMap<String, u32>,
    addresses: &BTreeMap<IpAddr, u32>,
) -> Compiled {
    let (snapshot, errors) = parse_manifests(&cluster_yaml(pods, policies), "test");
    assert!(errors.is_empty(), "fixture errors: {errors:?}");
    let placement = Placement::InterfacesByAddress {
        pods: interfaces,
        addresses,
    };
    let compiled = compile(&snapshot, &placement, &Ids::default());
    assert!(compiled.errors.is_empty(), "{:?}", compiled.errors);
    compiled
}

/// Compiles and syncs the probe's maps.
pub fn program(
    probe: &mut Probe,
    pods: &[Pod],
    policies: &str,
    interfaces: &BTreeMap<String, u32>,
) -> Compiled {
    program_by_address(probe, pods, policies, interfaces, &BTreeMap::new())
}

/// Compiles and syncs the probe's maps, the addresses of `addresses` each on its own
/// interface (multi-NIC pods).
pub fn program_by_address(
    probe: &mut Probe,
    pods: &[Pod],
    policies: &str,
    interfaces: &BTreeMap<String, u32>,
    addresses: &BTreeMap<IpAddr, u32>,
) -> Compiled {
    let compiled = compiled_by_address(pods, policies, interfaces, addresses);
    sync(&mut probe.policy_maps(), &compiled.desired).expect("sync");
    compiled
}

/// An ingress policy on `default/b` that allows nothing.
pub const ISOLATE_B: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: isolate-b, namespace: default}
spec:
  podSelector: {matchLabels: {app: b}}
  policyTypes: [Ingress]
"#;

/// A directory on a BPF file system for one test: under `/sys/fs/bpf` when a bpffs is mounted
/// there, else a private bpffs instance mounted on a temporary directory. Removed (and
/// unmounted) on drop.
#[derive(Debug)]
pub struct Bpffs {
    /// Where to pin.
    pub root: PathBuf,
    mount: Option<PathBuf>,
}

impl Bpffs {
    pub fn new(tag: &str) -> Self {
        let name = format!("tollgate-test-{}-{tag}", std::process::id());
        let system = Path::new("/sys/fs/bpf");
        if tollgate_agent::pins::is_bpffs(system).unwrap_or(false) {
            return Self {
                root: system.join(name),
                mount: None,
            };
        }
        let mount = std::env::temp_dir().join(name);
        std::fs::create_dir_all(&mount).expect("mount point");
        run("mount", &["-t", "bpf", "bpf", mount.to_str().unwrap()]);
        Self {
            root: mount.join("tollgate"),
            mount: Some(mount),
        }
    }
}

impl Drop for Bpffs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
        if let Some(mount) = &self.mount {
            let _ = Command::new("umount").arg("-l").arg(mount).status();
            let _ = std::fs::remove_dir(mount);
        }
    }
}

/// Waits (at most 10 s) until `check` holds.
pub fn eventually(what: &str, check: impl Fn() -> bool) {
    let started = Instant::now();
    while !check() {
        assert!(started.elapsed() < Duration::from_secs(10), "{what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// How many TCX programs sit on each hook (ingress, egress) of `ifname` in `netns`.
pub fn tcx_programs(netns: &str, ifname: &str) -> (usize, usize) {
    in_netns(netns, || {
        let count = |hook| {
            SchedClassifier::query_tcx(ifname, hook)
                .map(|(_, programs)| programs.len())
                .expect("query TCX")
        };
        (count(TcAttachType::Ingress), count(TcAttachType::Egress))
    })
}

/// The tc filters on the ingress hook (traffic from the pod) of `ifname` in `netns`, as
/// `tc filter show` prints them.
pub fn ingress_filters(netns: &str, ifname: &str) -> String {
    ip(&[
        "netns", "exec", netns, "tc", "filter", "show", "dev", ifname, "ingress",
    ])
}

/// Whether a TCP connection from `from` to `to` on port 80 is established within `wait`.
pub fn tcp_reaches(from: &Pod, to: &Pod, wait: Duration) -> bool {
    let address = SocketAddr::new(to.ip, 80);
    let _listener = in_netns(&to.netns, || TcpListener::bind(address).expect("listen"));
    in_netns(&from.netns, || {
        TcpStream::connect_timeout(&address, wait).is_ok()
    })
}

/// `GET path` on `address` in the node namespace: the status and the body; `None` when
/// nothing answers.
pub fn http_get(node: &Node, address: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut stream = in_netns(&node.netns, || {
        TcpStream::connect_timeout(&address, Duration::from_millis(500)).ok()
    })?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: agent\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split(' ').nth(1)?.parse().ok()?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    Some((status, body))
}

/// Whether `GET path` answers 200.
pub fn http_ok(node: &Node, address: SocketAddr, path: &str) -> bool {
    http_get(node, address, path).is_some_and(|(status, _)| status == 200)
}

/// A free loopback port of the node namespace (nothing else binds there).
pub fn free_port(node: &Node) -> SocketAddr {
    in_netns(&node.netns, || {
        TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
    })
}

/// The agent's settings for a test in `node`: pins under `bpffs`, one HTTP address for
/// `/metrics` and health on the node's loopback, spool and flows under `files`.
pub fn agent_config(node: &Node, bpffs: &Bpffs, files: &Path) -> AgentConfig {
    agent_settings(&bpffs.root, free_port(node), files)
}

/// The agent's settings for a test: pins under `bpffs`, `/metrics` and health on `http`,
/// spool and flows under `files`, the VPC CNI configuration `files/10-aws.conflist`.
pub fn agent_settings(bpffs: &Path, http: SocketAddr, files: &Path) -> AgentConfig {
    let mut config = AgentConfig::default();
    config.agent.bpffs = bpffs.to_owned();
    config.agent.metrics_address = http;
    config.agent.health_address = http;
    config.collector.node = "lab-node".to_owned();
    // The test's own VPC CNI configuration (none unless a test writes one), not the host's.
    config.agent.cni_config = files.join("10-aws.conflist");
    config.collector.spool_dir = files.join("spool");
    config.collector.sink = SinkConfig::Local {
        dir: files.join("flows"),
    };
    config
}

/// `run_agent` on a thread of its own inside a node namespace; stopped and joined on drop,
/// also when the test fails.
pub struct RunningAgent {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<(), String>>>,
}

impl RunningAgent {
    /// Starts the agent on `source` in `netns`.
    pub fn start(netns: &str, config: AgentConfig, source: StaticSource) -> Self {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = spawn_in_netns(netns, move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime
                .block_on(run_agent(config, source, async {
                    let _ = stopped.await;
                }))
                .map_err(|e| e.to_string())
        });
        Self {
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Stops the agent and says how it ended.
    pub fn stop(mut self) -> Result<(), String> {
        self.finish().expect("agent thread")
    }

    fn finish(&mut self) -> Option<Result<(), String>> {
        drop(self.stop.take());
        let thread = self.thread.take()?;
        Some(
            thread
                .join()
                .unwrap_or_else(|_| Err("agent panicked".to_owned())),
        )
    }
}

impl Drop for RunningAgent {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}
