//! The lab's network: a node namespace and one namespace per pod, wired like the AWS VPC CNI,
//! built and torn down with iproute2, for one [`IpFamily`].
//!
//! For each pod, [`Topology::create`] makes a veth pair whose host side (`eni…`, see
//! [`crate::names::host_veth_name`]) stays in the node namespace and whose pod side is `eth0` in
//! the pod's namespace, then wires it as the VPC CNI does:
//! - pod: the pod address as a /32 (/128) on `eth0`, the family's gateway (`169.254.1.1`,
//!   `fe80::1`) as an on-link route and the default route through it, and a permanent neighbor
//!   entry gateway → the host veth's MAC (no ARP or neighbor discovery for the gateway);
//! - node: a /32 (/128) route per pod to its host veth and a permanent neighbor entry pod
//!   address → the pod's `eth0` MAC; forwarding on in the node namespace only.
//!
//! The node's own address (its primary ENI's) sits on a dummy `eth0` (or an `ifb`, which
//! likewise drops what is sent to it, where the kernel has no dummy driver) in the node
//! namespace:
//! the kubelet's probes and kube-proxy's hairpin masquerade leave from it, and the agent finds
//! it there. The node namespace has no other route, so nothing the pods or the node send can
//! leave it, and nothing in the root namespace is touched.
//!
//! With a branch-ENI pod (`--sgp`: security groups for pods, the VPC CNI's default `strict`
//! mode; IPv4), the pod is wired as `SetupBranchENIPodNetwork` does it, and the node gets a VPC
//! to send that pod's traffic through, since that is where strict mode sends it:
//! - a VPC namespace (`<run>-vpc`) behind the node's `eth0`, now a veth (the primary ENI,
//!   still holding the node's address), with the VPC router [`VPC_ROUTER`] as the node's
//!   default route; the VPC routes the pod network back to the node, except the branch ENI's
//!   address, which it sends down the branch ENI's VLAN;
//! - the trunk ENI `eth1`, a veth to the VPC (`trunk`), and on it the VLAN sub-interface
//!   `vlan.eth.<id>` (`trunk.<id>` on the VPC's side, which holds the branch subnet's gateway
//!   [`BRANCH_GATEWAY`]). Where the kernel has no 802.1Q (`CONFIG_VLAN_8021Q`), the two
//!   sub-interfaces are a veth pair of the same names instead: the same routes and rules,
//!   without the tag on the wire, which nothing in the node sees;
//! - the pod's host veth `vlan…`, its `/32` in table `<id> + 100` (with the gateway's on-link
//!   route and the default route through it), and the rules `iif <host veth> lookup <table>`
//!   and `iif vlan.eth.<id> lookup <table>` (priority 10), nothing in the main table: the pod's
//!   packets, also those kube-proxy DNATs to a pod of this node, leave through the VLAN and
//!   come back through `eth0`, and replies to it come in through the VLAN.
//!
//! The VPC has no route out either.
//!
//! The other family is off: IPv6 is disabled in every namespace of an IPv4 run before any
//! interface exists. An IPv6 run keeps IPv6 but generates no link-local addresses, runs no
//! duplicate address detection (addresses are added `nodad`), takes no router advertisements,
//! joins no multicast group it would report over MLD (the pods' `eth0` is `arp off`, so no
//! solicited-node group; the host veths are not routers on their link), so the only packets on
//! a veth are the pods' own traffic: chatter from `::` or link-local addresses no pod owns
//! would be reported by the probe (strict mode denies unknown sources).
//!
//! Every namespace is recorded as soon as it exists; dropping the [`Topology`] deletes them all
//! (and with them the veths, routes and neighbors), whether the build finished or not.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::{
    LabError,
    family::IpFamily,
    names::{self, RunNames},
    netns::netns_path,
    pods::LabPods,
};
use tollgate_enforcer::causes::Causes;

/// The pod side of every veth pair.
pub const POD_IFNAME: &str = "eth0";
/// The node's primary interface (a dummy in the lab), holding the node's address.
pub const NODE_IFNAME: &str = "eth0";
/// The trunk ENI of a node with branch ENIs.
pub const TRUNK_IFNAME: &str = "eth1";
/// The VLAN id of the branch ENI (`--sgp`).
pub const BRANCH_VLAN: u16 = 1;
/// The VPC router as the node sees it, on the VPC's end of the node's `eth0` (`--sgp`).
pub const VPC_ROUTER: &str = "198.18.2.1";
/// The branch ENI subnet's gateway, on the VPC's end of the VLAN (`--sgp`).
pub const BRANCH_GATEWAY: &str = "198.18.3.1";
/// The VPC's end of the node's `eth0`.
const VPC_NODE_IFNAME: &str = "node0";
/// The VPC's end of the trunk.
const VPC_TRUNK_IFNAME: &str = "trunk";
/// Priority of the VPC CNI's `iif` rules of a branch ENI (`VlanRulePriority`).
const VLAN_RULE_PRIORITY: &str = "10";

/// One pod's wiring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodLink {
    /// The pod, as `namespace/name`.
    pub pod: String,
    /// The pod's network namespace.
    pub netns: String,
    /// The pod's address.
    pub ip: IpAddr,
    /// Name of the host-side veth, in the node namespace.
    pub host_veth: String,
    /// Interface index of the host-side veth, in the node namespace.
    pub host_ifindex: u32,
    /// Whether the pod has a branch ENI (strict mode: its route is in the VLAN's table).
    pub branch_eni: bool,
}

/// The lab's namespaces, veths, routes and neighbors; dropping it removes them.
#[derive(Debug)]
pub struct Topology {
    names: RunNames,
    family: IpFamily,
    node: String,
    links: BTreeMap<String, PodLink>,
    /// Namespaces created so far, in creation order.
    created: Vec<String>,
}

impl Topology {
    /// Builds the node namespace and one wired namespace per pod, `branch_eni` (a pod's
    /// `namespace/name`) with a branch ENI in strict mode (see the module doc). On error, what
    /// was built is removed before the error is returned.
    pub fn create(
        names: RunNames,
        pods: &LabPods,
        branch_eni: Option<&str>,
    ) -> Result<Self, LabError> {
        let family = pods.family;
        if let Some(pod) = branch_eni {
            if family != IpFamily::V4 {
                return Err(LabError::Scenario(format!(
                    "a branch ENI ({pod}) is wired on IPv4 only"
                )));
            }
            if !pods.pods.iter().any(|p| p.key() == pod) {
                return Err(LabError::Scenario(format!(
                    "no pod {pod} to wire with a branch ENI"
                )));
            }
        }
        let node = names.node_netns();
        let mut topology = Self {
            names,
            family,
            node: node.clone(),
            links: BTreeMap::new(),
            created: Vec::new(),
        };
        topology.add_netns(&node)?;
        match family {
            IpFamily::V4 => sysctl(&node, &["net.ipv4.ip_forward=1"])?,
            // Forwarding follows `all`; an interface's own `forwarding` only makes it act as
            // a router on its link (joining the all-routers groups, and reporting that over
            // MLD), which the host veths, created after this, do not.
            IpFamily::V6 => sysctl(
                &node,
                &[
                    "net.ipv6.conf.all.forwarding=1",
                    "net.ipv6.conf.default.forwarding=0",
                ],
            )?,
        }
        let vpc = match branch_eni {
            None => {
                add_node_address(&node, None, family)?;
                None
            }
            Some(_) => {
                let vpc = topology.names.vpc_netns();
                topology.add_netns(&vpc)?;
                sysctl(&vpc, &["net.ipv4.ip_forward=1"])?;
                add_node_address(&node, Some(&vpc), family)?;
                Some(vpc)
            }
        };
        for pod in &pods.pods {
            // Checked when the pods were read; checked again here because this is where an
            // address would be put on an interface.
            if !family.is_pod_address(pod.ip) {
                return Err(LabError::Scenario(format!(
                    "pod {} has address {} outside the lab's {family} pod network",
                    pod.key(),
                    pod.ip
                )));
            }
            let netns = topology.names.pod_netns(&pod.namespace, &pod.name);
            topology.add_netns(&netns)?;
            let branch = branch_eni == Some(pod.key().as_str());
            let prefix = match branch {
                true => names::BRANCH_VETH_PREFIX,
                false => names::HOST_VETH_PREFIX,
            };
            let host_veth = names::host_veth_name(prefix, &pod.namespace, &pod.name);
            let table = match (branch, &vpc) {
                (true, Some(vpc)) => Some(wire_branch_eni(&node, vpc, pod.ip)?),
                _ => None,
            };
            let link = wire_pod(family, &node, &netns, &host_veth, pod.ip, pod.key(), table)?;
            tracing::debug!(pod = %link.pod, netns = %link.netns, host_veth = %link.host_veth,
                ifindex = link.host_ifindex, ip = %link.ip, branch_eni = link.branch_eni,
                "pod wired");
            topology.links.insert(link.pod.clone(), link);
        }
        Ok(topology)
    }

    /// The run's names.
    pub fn names(&self) -> &RunNames {
        &self.names
    }

    /// The node's network namespace.
    pub fn node_netns(&self) -> &str {
        &self.node
    }

    /// The address family of every address in it.
    pub fn family(&self) -> IpFamily {
        self.family
    }

    /// The wiring of pod `namespace/name`.
    pub fn link(&self, pod: &str) -> Option<&PodLink> {
        self.links.get(pod)
    }

    /// Every pod's wiring, by `namespace/name`.
    pub fn links(&self) -> impl Iterator<Item = &PodLink> {
        self.links.values()
    }

    /// Host veth ifindex by `namespace/name`: where each pod's traffic crosses the node.
    pub fn interfaces(&self) -> BTreeMap<String, u32> {
        self.links
            .iter()
            .map(|(pod, link)| (pod.clone(), link.host_ifindex))
            .collect()
    }

    /// Creates network namespace `netns` (with loopback up and the family's sysctls, see the
    /// module doc) and records it for removal.
    fn add_netns(&mut self, netns: &str) -> Result<(), LabError> {
        debug_assert!(self.names.owns(netns));
        ip(&["netns", "add", netns])?;
        self.created.push(netns.to_string());
        match self.family {
            IpFamily::V4 => sysctl(
                netns,
                &[
                    "net.ipv6.conf.all.disable_ipv6=1",
                    "net.ipv6.conf.default.disable_ipv6=1",
                ],
            )?,
            IpFamily::V6 => {
                let mut settings = Vec::new();
                for scope in ["all", "default"] {
                    for (key, value) in [
                        ("disable_ipv6", "0"),
                        ("addr_gen_mode", "1"),
                        ("accept_dad", "0"),
                        ("accept_ra", "0"),
                        ("autoconf", "0"),
                    ] {
                        settings.push(format!("net.ipv6.conf.{scope}.{key}={value}"));
                    }
                }
                let settings: Vec<&str> = settings.iter().map(String::as_str).collect();
                sysctl(netns, &settings)?;
            }
        }
        ip(&["-n", netns, "link", "set", "lo", "up"]).map(drop)
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for netns in self.created.iter().rev() {
            match ip(&["netns", "del", netns]) {
                Ok(_) => tracing::debug!(netns = %netns, "network namespace removed"),
                Err(error) => {
                    tracing::warn!(netns = %netns, error = %Causes(&error), "network namespace not removed")
                }
            }
        }
    }
}

/// Puts the node's address on `eth0` in the node namespace: a local address only (no prefix
/// route). Without a VPC, `eth0` is a dummy, an interface that sends nothing anywhere (where
/// the kernel has no `dummy` driver, an `ifb` device serves: it too drops whatever is sent to
/// it); with one (`vpc`), a veth to it and the node's default route (see the module doc).
fn add_node_address(node: &str, vpc: Option<&str>, family: IpFamily) -> Result<(), LabError> {
    let address = format!("{}/{}", family.node_address(), family.host_prefix_len());
    match vpc {
        None => {
            let dummy = ["-n", node, "link", "add", NODE_IFNAME, "type", "dummy"];
            if let Err(error) = ip(&dummy) {
                tracing::debug!(error = %Causes(&error), "no dummy driver; the node's eth0 is an ifb device");
                ip(&["-n", node, "link", "add", NODE_IFNAME, "type", "ifb"])?;
            }
        }
        Some(vpc) => {
            ip(&[
                "-n",
                node,
                "link",
                "add",
                NODE_IFNAME,
                "type",
                "veth",
                "peer",
                "name",
                VPC_NODE_IFNAME,
                "netns",
                vpc,
            ])?;
            ip(&["-n", vpc, "link", "set", VPC_NODE_IFNAME, "up"])?;
        }
    }
    let mut add = vec!["-n", node, "addr", "add", &address, "dev", NODE_IFNAME];
    if family == IpFamily::V6 {
        add.extend(["nodad", "noprefixroute"]);
    }
    ip(&add)?;
    ip(&["-n", node, "link", "set", NODE_IFNAME, "up"])?;
    if let Some(vpc) = vpc {
        let node_address = family.node_address().to_string();
        let vpc_mac = link_info(vpc, VPC_NODE_IFNAME)?.1;
        let node_mac = link_info(node, NODE_IFNAME)?.1;
        on_link(node, VPC_ROUTER, NODE_IFNAME, &vpc_mac, None)?;
        ip(&[
            "-n",
            node,
            "route",
            "add",
            "default",
            "via",
            VPC_ROUTER,
            "dev",
            NODE_IFNAME,
        ])?;
        on_link(vpc, &node_address, VPC_NODE_IFNAME, &node_mac, None)?;
        let pods = family.pod_network().to_string();
        ip(&[
            "-n",
            vpc,
            "route",
            "add",
            &pods,
            "via",
            &node_address,
            "dev",
            VPC_NODE_IFNAME,
        ])?;
    }
    Ok(())
}

/// An on-link route to `address` through `ifname` of `netns` (in `table`, else main), and a
/// permanent neighbor entry for it: no ARP.
fn on_link(
    netns: &str,
    address: &str,
    ifname: &str,
    mac: &str,
    table: Option<&str>,
) -> Result<(), LabError> {
    let mut route = vec![
        "-n", netns, "route", "add", address, "dev", ifname, "scope", "link",
    ];
    if let Some(table) = table {
        route.extend(["table", table]);
    }
    ip(&route)?;
    ip(&[
        "-n",
        netns,
        "neigh",
        "replace",
        address,
        "lladdr",
        mac,
        "dev",
        ifname,
        "nud",
        "permanent",
    ])
    .map(drop)
}

/// The VPC CNI's `setupVlan` for the branch ENI of the pod at `pod_ip`, and the VPC's side:
/// the trunk, the VLAN sub-interfaces, the VLAN's table with the subnet gateway's routes, and
/// the VPC's route to the pod down the VLAN. Returns the table, where the pod's route goes.
fn wire_branch_eni(node: &str, vpc: &str, pod_ip: IpAddr) -> Result<String, LabError> {
    let vlan = BRANCH_VLAN.to_string();
    let link = format!("vlan.eth.{vlan}");
    let branch = format!("{VPC_TRUNK_IFNAME}.{vlan}");
    let table = (u32::from(BRANCH_VLAN) + 100).to_string();
    ip(&[
        "-n",
        node,
        "link",
        "add",
        TRUNK_IFNAME,
        "type",
        "veth",
        "peer",
        "name",
        VPC_TRUNK_IFNAME,
        "netns",
        vpc,
    ])?;
    ip(&["-n", node, "link", "set", TRUNK_IFNAME, "up"])?;
    ip(&["-n", vpc, "link", "set", VPC_TRUNK_IFNAME, "up"])?;
    let tagged = [
        "-n",
        node,
        "link",
        "add",
        "link",
        TRUNK_IFNAME,
        "name",
        &link,
        "type",
        "vlan",
        "id",
        &vlan,
    ];
    match ip(&tagged) {
        Ok(_) => {
            ip(&[
                "-n",
                vpc,
                "link",
                "add",
                "link",
                VPC_TRUNK_IFNAME,
                "name",
                &branch,
                "type",
                "vlan",
                "id",
                &vlan,
            ])?;
        }
        Err(error) => {
            tracing::info!(error = %Causes(&error), "no 802.1Q in this kernel; vlan.eth.{vlan} is a veth to the VPC");
            ip(&[
                "-n", node, "link", "add", &link, "type", "veth", "peer", "name", &branch, "netns",
                vpc,
            ])?;
        }
    }
    ip(&["-n", node, "link", "set", &link, "up"])?;
    ip(&["-n", vpc, "link", "set", &branch, "up"])?;
    ip(&[
        "-n",
        vpc,
        "addr",
        "add",
        &format!("{BRANCH_GATEWAY}/32"),
        "dev",
        &branch,
    ])?;
    let link_mac = link_info(node, &link)?.1;
    let branch_mac = link_info(vpc, &branch)?.1;
    on_link(node, BRANCH_GATEWAY, &link, &branch_mac, Some(&table))?;
    ip(&[
        "-n",
        node,
        "route",
        "add",
        "default",
        "via",
        BRANCH_GATEWAY,
        "dev",
        &link,
        "table",
        &table,
    ])?;
    add_iif_rule(node, &link, &table)?;
    on_link(vpc, &pod_ip.to_string(), &branch, &link_mac, None)?;
    Ok(table)
}

/// The rule `iif <ifname> lookup <table>` of a branch ENI.
fn add_iif_rule(node: &str, ifname: &str, table: &str) -> Result<(), LabError> {
    ip(&[
        "-n",
        node,
        "rule",
        "add",
        "iif",
        ifname,
        "lookup",
        table,
        "priority",
        VLAN_RULE_PRIORITY,
    ])
    .map(drop)
}

/// Wires pod namespace `netns` to the node: veth pair, addresses, routes, neighbors. The
/// node's route to the pod goes into the main table, or for a branch ENI into `table`, with
/// the rule that sends the pod's packets there.
fn wire_pod(
    family: IpFamily,
    node: &str,
    netns: &str,
    host_veth: &str,
    ip_addr: IpAddr,
    pod: String,
    table: Option<String>,
) -> Result<PodLink, LabError> {
    let pod_cidr = format!("{ip_addr}/{}", family.host_prefix_len());
    let pod_ip = ip_addr.to_string();
    let gateway = family.gateway().to_string();
    let fam = match family {
        IpFamily::V4 => "-4",
        IpFamily::V6 => "-6",
    };
    ip(&[
        "-n", node, "link", "add", host_veth, "type", "veth", "peer", "name", POD_IFNAME, "netns",
        netns,
    ])?;
    ip(&["-n", node, "link", "set", host_veth, "up"])?;
    if family == IpFamily::V6 {
        // No solicited-node group for the pod's address, so no MLD report from `::` (the pod
        // has no link-local address to send it from); the gateway's neighbor entry is static.
        ip(&["-n", netns, "link", "set", POD_IFNAME, "arp", "off"])?;
    }
    ip(&["-n", netns, "link", "set", POD_IFNAME, "up"])?;
    let mut add = vec!["-n", netns, "addr", "add", &pod_cidr, "dev", POD_IFNAME];
    if family == IpFamily::V6 {
        add.push("nodad");
    }
    ip(&add)?;
    ip(&[
        fam, "-n", netns, "route", "add", &gateway, "dev", POD_IFNAME, "scope", "link",
    ])?;
    ip(&[
        fam, "-n", netns, "route", "add", "default", "via", &gateway, "dev", POD_IFNAME,
    ])?;
    let (host_ifindex, host_mac) = link_info(node, host_veth)?;
    let (_, pod_mac) = link_info(netns, POD_IFNAME)?;
    ip(&[
        "-n",
        netns,
        "neigh",
        "add",
        &gateway,
        "lladdr",
        &host_mac,
        "dev",
        POD_IFNAME,
        "nud",
        "permanent",
    ])?;
    let mut route = vec![
        fam, "-n", node, "route", "add", &pod_cidr, "dev", host_veth, "scope", "link",
    ];
    if let Some(table) = &table {
        route.extend(["table", table]);
        add_iif_rule(node, host_veth, table)?;
    }
    ip(&route)?;
    ip(&[
        "-n",
        node,
        "neigh",
        "add",
        &pod_ip,
        "lladdr",
        &pod_mac,
        "dev",
        host_veth,
        "nud",
        "permanent",
    ])?;
    Ok(PodLink {
        pod,
        netns: netns.to_string(),
        ip: ip_addr,
        host_veth: host_veth.to_string(),
        host_ifindex,
        branch_eni: table.is_some(),
    })
}

/// Interface index and MAC address of `ifname` in `netns`.
fn link_info(netns: &str, ifname: &str) -> Result<(u32, String), LabError> {
    let args = ["-n", netns, "-j", "link", "show", "dev", ifname];
    let out = ip(&args)?;
    let bad = |message: &str| LabError::Command {
        command: command_line(&args),
        message: message.to_string(),
    };
    let parsed: serde_json::Value =
        serde_json::from_str(&out).map_err(|_| bad("output is not JSON"))?;
    let link = parsed.get(0).ok_or_else(|| bad("no link in output"))?;
    let ifindex = link
        .get("ifindex")
        .and_then(serde_json::Value::as_u64)
        .and_then(|i| u32::try_from(i).ok())
        .ok_or_else(|| bad("no ifindex"))?;
    let mac = link
        .get("address")
        .and_then(serde_json::Value::as_str)
        .ok_or_else(|| bad("no address"))?;
    Ok((ifindex, mac.to_string()))
}

/// Sets sysctls inside `netns` (never in the root namespace).
fn sysctl(netns: &str, settings: &[&str]) -> Result<(), LabError> {
    let mut args = vec!["netns", "exec", netns, "sysctl", "-q", "-w"];
    args.extend_from_slice(settings);
    ip(&args).map(drop)
}

/// Runs `ip ARGS` and returns its standard output.
fn ip(args: &[&str]) -> Result<String, LabError> {
    let output = Command::new("ip")
        .args(args)
        .output()
        .map_err(|error| LabError::Command {
            command: command_line(args),
            message: error.to_string(),
        })?;
    if !output.status.success() {
        return Err(LabError::Command {
            command: command_line(args),
            message: format!(
                "{}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn command_line(args: &[&str]) -> String {
    format!("ip {}", args.join(" "))
}

/// Every network namespace `ip netns` knows, by name.
pub fn list_netns() -> Result<Vec<String>, LabError> {
    let out = ip(&["netns", "list"])?;
    // Lines look like `NAME` or `NAME (id: N)`.
    Ok(out
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_string)
        .collect())
}

/// Age past which a lab namespace whose creator is gone counts as stale: far longer than a run
/// may take ([`crate::RUN_TIME_LIMIT`]), so a run of another pid namespace, whose creator this
/// process cannot see in `/proc`, is never mistaken for a dead one.
pub const STALE_AFTER: Duration = Duration::from_secs(10 * 60);

/// Whether what lab run `pid` left at `path` is stale: its process is gone and the path was
/// last changed more than [`STALE_AFTER`] ago (unknown age: not stale).
pub fn is_stale(pid: u32, path: &Path) -> bool {
    if Path::new(&format!("/proc/{pid}")).exists() {
        return false;
    }
    let age = std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|modified| modified.elapsed().ok());
    age.is_some_and(|age| age > STALE_AFTER)
}

/// Removes the namespaces of lab runs whose process is gone (killed before it could clean
/// up) and that are older than [`STALE_AFTER`]. Everything else is left alone. Returns the
/// names removed.
pub fn sweep_stale() -> Vec<String> {
    let listed = match list_netns() {
        Ok(listed) => listed,
        Err(error) => {
            tracing::warn!(error = %Causes(&error), "cannot list network namespaces; no stale lab namespaces removed");
            return Vec::new();
        }
    };
    let mut removed = Vec::new();
    for netns in listed {
        let Some(pid) = names::creator_pid(&netns) else {
            continue;
        };
        if !is_stale(pid, Path::new(&netns_path(&netns))) {
            continue;
        }
        match ip(&["netns", "del", &netns]) {
            Ok(_) => {
                tracing::info!(netns = %netns, pid, "stale lab namespace removed");
                removed.push(netns);
            }
            Err(error) => {
                tracing::warn!(netns = %netns, error = %Causes(&error), "stale lab namespace not removed")
            }
        }
    }
    removed
}
