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

/// The pod side of every veth pair.
pub const POD_IFNAME: &str = "eth0";
/// The node's primary interface (a dummy in the lab), holding the node's address.
pub const NODE_IFNAME: &str = "eth0";

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
    /// Builds the node namespace and one wired namespace per pod. On error, what was built is
    /// removed before the error is returned.
    pub fn create(names: RunNames, pods: &LabPods) -> Result<Self, LabError> {
        let family = pods.family;
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
        add_node_address(&node, family)?;
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
            let host_veth = names::host_veth_name(&pod.namespace, &pod.name);
            let link = wire_pod(family, &node, &netns, &host_veth, pod.ip, pod.key())?;
            tracing::debug!(pod = %link.pod, netns = %link.netns, host_veth = %link.host_veth,
                ifindex = link.host_ifindex, ip = %link.ip, "pod wired");
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
                    tracing::warn!(netns = %netns, %error, "network namespace not removed")
                }
            }
        }
    }
}

/// Puts the node's address on a dummy `eth0` in the node namespace: a local address only
/// (no prefix route), on an interface that sends nothing anywhere. Where the kernel has no
/// `dummy` driver, an `ifb` device serves: it too drops whatever is sent to it.
fn add_node_address(node: &str, family: IpFamily) -> Result<(), LabError> {
    let address = format!("{}/{}", family.node_address(), family.host_prefix_len());
    let dummy = ["-n", node, "link", "add", NODE_IFNAME, "type", "dummy"];
    if let Err(error) = ip(&dummy) {
        tracing::debug!(%error, "no dummy driver; the node's eth0 is an ifb device");
        ip(&["-n", node, "link", "add", NODE_IFNAME, "type", "ifb"])?;
    }
    let mut add = vec!["-n", node, "addr", "add", &address, "dev", NODE_IFNAME];
    if family == IpFamily::V6 {
        add.extend(["nodad", "noprefixroute"]);
    }
    ip(&add)?;
    ip(&["-n", node, "link", "set", NODE_IFNAME, "up"]).map(drop)
}

/// Wires pod namespace `netns` to the node: veth pair, addresses, routes, neighbors.
fn wire_pod(
    family: IpFamily,
    node: &str,
    netns: &str,
    host_veth: &str,
    ip_addr: IpAddr,
    pod: String,
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
    ip(&[
        fam, "-n", node, "route", "add", &pod_cidr, "dev", host_veth, "scope", "link",
    ])?;
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
            tracing::warn!(%error, "cannot list network namespaces; no stale lab namespaces removed");
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
            Err(error) => tracing::warn!(netns = %netns, %error, "stale lab namespace not removed"),
        }
    }
    removed
}
