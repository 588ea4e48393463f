//! The lab's network: a node namespace and one namespace per pod, wired like the AWS VPC CNI,
//! built and torn down with iproute2.
//!
//! For each pod, [`Topology::create`] makes a veth pair whose host side (`eni…`, see
//! [`crate::names::host_veth_name`]) stays in the node namespace and whose pod side is `eth0` in
//! the pod's namespace, then wires it as the VPC CNI does:
//! - pod: the pod address as a /32 on `eth0`, `169.254.1.1` as an on-link gateway and the
//!   default route through it, and a permanent neighbor entry `169.254.1.1` → the host veth's
//!   MAC (no ARP for the gateway);
//! - node: a /32 route per pod to its host veth (`scope link`) and a permanent neighbor entry
//!   pod address → the pod's `eth0` MAC; forwarding on in the node namespace only.
//!
//! The node namespace has no other route, so nothing the pods send can leave it, and nothing in
//! the root namespace is touched. IPv6 is disabled in every namespace of the run before any
//! interface exists, so the pods' link-local chatter does not reach the probe (which, in strict
//! mode, would report it as traffic of unknown endpoints).
//!
//! Every namespace is recorded as soon as it exists; dropping the [`Topology`] deletes them all
//! (and with them the veths, routes and neighbors), whether the build finished or not.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::{
    LabError,
    names::{self, RunNames},
    netns::netns_path,
    pods::{LabPods, is_lab_address},
};

/// The gateway address every pod routes through, answered by the host veth (VPC CNI).
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
/// The pod side of every veth pair.
pub const POD_IFNAME: &str = "eth0";

/// One pod's wiring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodLink {
    /// The pod, as `namespace/name`.
    pub pod: String,
    /// The pod's network namespace.
    pub netns: String,
    /// The pod's address.
    pub ip: Ipv4Addr,
    /// Name of the host-side veth, in the node namespace.
    pub host_veth: String,
    /// Interface index of the host-side veth, in the node namespace.
    pub host_ifindex: u32,
}

/// The lab's namespaces, veths, routes and neighbors; dropping it removes them.
#[derive(Debug)]
pub struct Topology {
    names: RunNames,
    node: String,
    links: BTreeMap<String, PodLink>,
    /// Namespaces created so far, in creation order.
    created: Vec<String>,
}

impl Topology {
    /// Builds the node namespace and one wired namespace per pod. On error, what was built is
    /// removed before the error is returned.
    pub fn create(names: RunNames, pods: &LabPods) -> Result<Self, LabError> {
        let node = names.node_netns();
        let mut topology = Self {
            names,
            node: node.clone(),
            links: BTreeMap::new(),
            created: Vec::new(),
        };
        topology.add_netns(&node)?;
        sysctl(&node, &["net.ipv4.ip_forward=1"])?;
        for pod in &pods.pods {
            // Checked when the pods were read; checked again here because this is where an
            // address would be put on an interface.
            if !is_lab_address(pod.ip) {
                return Err(LabError::Scenario(format!(
                    "pod {} has address {} outside the lab's range",
                    pod.key(),
                    pod.ip
                )));
            }
            let netns = topology.names.pod_netns(&pod.namespace, &pod.name);
            topology.add_netns(&netns)?;
            let host_veth = names::host_veth_name(&pod.namespace, &pod.name);
            let link = wire_pod(&node, &netns, &host_veth, pod.ip, pod.key())?;
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

    /// Creates network namespace `netns` (with loopback up and IPv6 off) and records it for
    /// removal.
    fn add_netns(&mut self, netns: &str) -> Result<(), LabError> {
        debug_assert!(self.names.owns(netns));
        ip(&["netns", "add", netns])?;
        self.created.push(netns.to_string());
        ip(&["-n", netns, "link", "set", "lo", "up"])?;
        sysctl(
            netns,
            &[
                "net.ipv6.conf.all.disable_ipv6=1",
                "net.ipv6.conf.default.disable_ipv6=1",
            ],
        )
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

/// Wires pod namespace `netns` to the node: veth pair, addresses, routes, neighbors.
fn wire_pod(
    node: &str,
    netns: &str,
    host_veth: &str,
    ip_addr: Ipv4Addr,
    pod: String,
) -> Result<PodLink, LabError> {
    let pod_cidr = format!("{ip_addr}/32");
    let pod_ip = ip_addr.to_string();
    let gateway = GATEWAY.to_string();
    ip(&[
        "-n", node, "link", "add", host_veth, "type", "veth", "peer", "name", POD_IFNAME, "netns",
        netns,
    ])?;
    ip(&["-n", node, "link", "set", host_veth, "up"])?;
    ip(&["-n", netns, "link", "set", POD_IFNAME, "up"])?;
    ip(&["-n", netns, "addr", "add", &pod_cidr, "dev", POD_IFNAME])?;
    ip(&[
        "-n", netns, "route", "add", &gateway, "dev", POD_IFNAME, "scope", "link",
    ])?;
    ip(&[
        "-n", netns, "route", "add", "default", "via", &gateway, "dev", POD_IFNAME,
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
        "-n", node, "route", "add", &pod_cidr, "dev", host_veth, "scope", "link",
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
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let age = std::fs::metadata(netns_path(&netns))
            .and_then(|m| m.modified())
            .ok()
            .and_then(|modified| modified.elapsed().ok());
        if age.is_none_or(|age| age <= STALE_AFTER) {
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
