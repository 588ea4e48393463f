//! The node's endpoints as the AWS VPC CNI wires them: which host-side veth carries each local
//! pod, and the probe attached to exactly those veths.
//!
//! How the VPC CNI wires a pod (`cmd/routed-eni-cni-plugin/driver/driver.go`,
//! `setupVeth` and `setupIPBasedContainerRouteRules`): a veth pair whose host side is named
//! `<prefix><11 hex digits of sha1("<namespace>.<name>")>` — the prefix is
//! `AWS_VPC_K8S_CNI_VETHPREFIX`, `eni` by default — stays in the node's namespace, and the
//! traffic *to* the pod is routed by a host route `<pod IP>/32 dev <veth> scope link` (`/128`
//! for IPv6) in the **main** table, selected by the rule `to <pod IP> lookup main` (priority
//! 512) ahead of the per-ENI tables that only the traffic *from* pods on secondary ENIs uses
//! (`from <pod IP> lookup <table>`). A host veth left over from an earlier pod of the same name
//! is deleted and created anew, so a veth name can come back with another ifindex.
//!
//! [`discover`] reads those host routes from the kernel of the calling thread's network
//! namespace (the agent runs with `hostNetwork`: the node's), without external tools:
//! - `/proc/thread-self/net/route` (IPv4, the main table only; each address is the hex of its
//!   four network-order bytes read as a native-endian `u32`) and
//!   `/proc/thread-self/net/ipv6_route` (IPv6, every table; 32 hex digits in network order).
//!   `thread-self`, not `self`: `/proc/self/net` shows the namespace of the process's main
//!   thread, not that of a thread that entered another namespace with `setns`.
//! - the ifindex through `if_nametoindex(3)` (an ioctl on a socket, which lives in the calling
//!   thread's namespace), not `/sys/class/net/<if>/ifindex`, which shows the namespace sysfs
//!   was mounted in.
//!
//! A pod is found on the veth whose name starts with the prefix and which holds a host route
//! to one of the pod's addresses. Not found: pods of `hostNetwork`, pods whose CNI ADD has not
//! finished (found on a later pass), and security-groups-for-pods pods in strict mode, whose
//! route the VPC CNI puts in a per-VLAN table (`vlanID + 100`), not in main.
//!
//! [`discover`] also lists every interface of the prefix ([`Discovery::links`]), a known pod's
//! or not.
//!
//! [`Endpoints`] keeps the probe attached to every veth of the prefix through an [`Attacher`]
//! (the pinned probe of [`crate::pins`] on a node, an in-memory one in tests), so a pod the
//! cluster has not named yet is enforced as an unknown endpoint (denied in strict mode):
//! [`Endpoints::apply`] detaches from veths that are gone and from veths that came back under
//! the same name with another ifindex (a veth that vanished with its pod took its links with
//! it; only the bookkeeping and pins are left to drop), then attaches to the new ones;
//! [`Endpoints::attach_new`] attaches to a veth the moment [`crate::links`] sees it appear. [`Endpoints::interfaces`] is the pod → ifindex map for the compiler's
//! [`tollgate_enforcer::compile::Placement::Interfaces`]: only pods whose veth is attached.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::CString;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::links::prefixed_links;

/// The VPC CNI's default host veth prefix (`AWS_VPC_K8S_CNI_VETHPREFIX`).
pub const DEFAULT_VETH_PREFIX: &str = "eni";

/// Where the kernel lists the IPv4 main table of the calling thread's namespace.
const IPV4_ROUTES: &str = "/proc/thread-self/net/route";
/// Where the kernel lists the IPv6 routes of the calling thread's namespace.
const IPV6_ROUTES: &str = "/proc/thread-self/net/ipv6_route";

/// `RTF_UP`: the route is usable.
const RTF_UP: u32 = 0x0001;
/// `RTF_GATEWAY`: through a next hop, not on the link.
const RTF_GATEWAY: u32 = 0x0002;
/// `RTF_REJECT`: unreachable, prohibit, blackhole.
const RTF_REJECT: u32 = 0x0200;
/// `RTF_CACHE` (IPv6): a cloned exception route (PMTU, redirect).
const RTF_CACHE: u32 = 0x0100_0000;
/// `RTF_ANYCAST` (IPv6).
const RTF_ANYCAST: u32 = 0x0010_0000;
/// `RTF_LOCAL` (IPv6): an address of this host.
const RTF_LOCAL: u32 = 0x8000_0000;

/// Error of endpoint discovery.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    /// A routing table could not be read.
    #[error("reading {path}: {source}")]
    Routes {
        /// The file.
        path: &'static str,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
    /// The node's interfaces could not be listed.
    #[error("listing the network interfaces: {source}")]
    Links {
        /// What failed.
        #[source]
        source: std::io::Error,
    },
}

/// A host route: one address routed straight onto an interface, without a gateway.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct HostRoute {
    /// The destination (a /32 or /128).
    pub addr: IpAddr,
    /// The interface it is routed onto.
    pub ifname: String,
}

/// A host-side veth in the agent's network namespace.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Veth {
    /// Interface name.
    pub ifname: String,
    /// Interface index.
    pub ifindex: u32,
}

/// A pod of this node, as the cluster knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalPod {
    /// `namespace/name`.
    pub pod: String,
    /// Its addresses (`status.podIPs`).
    pub ips: Vec<IpAddr>,
}

/// Where each local pod's traffic crosses the node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Discovery {
    /// The host veth of each pod found, by `namespace/name`.
    pub veths: BTreeMap<String, Veth>,
    /// Pods with no host route on a veth of the prefix (not wired yet, `hostNetwork`, or
    /// wired in another table).
    pub unrouted: Vec<String>,
    /// Pods whose addresses are routed onto more than one veth: left out, as either could be
    /// the wrong one.
    pub conflicts: BTreeMap<String, BTreeSet<String>>,
    /// Every interface of the prefix on the node, a pod's or not (yet): the probe sits on all
    /// of them, so a pod the cluster has not named yet is enforced from its first packet
    /// (denied in strict mode, as an unknown endpoint).
    pub links: Vec<Veth>,
}

impl Discovery {
    /// Host veth ifindex by `namespace/name` for every pod found: the placement of a sync
    /// before the probe is attached (an agent's first sync after a restart).
    pub fn interfaces(&self) -> BTreeMap<String, u32> {
        self.veths
            .iter()
            .map(|(pod, veth)| (pod.clone(), veth.ifindex))
            .collect()
    }
}

/// The host routes of the IPv4 main table in `/proc/net/route`'s format: up, no gateway, not
/// rejecting, mask `/32`.
pub fn parse_ipv4_routes(text: &str) -> Vec<HostRoute> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // Iface Destination Gateway Flags RefCnt Use Metric Mask MTU Window IRTT
            let [ifname, dest, _gateway, flags, _, _, _, mask, ..] = fields.as_slice() else {
                return None;
            };
            let flags = u32::from_str_radix(flags, 16).ok()?;
            let mask = u32::from_str_radix(mask, 16).ok()?;
            if flags & RTF_UP == 0 || flags & (RTF_GATEWAY | RTF_REJECT) != 0 || mask != u32::MAX {
                return None;
            }
            // The kernel prints the network-order address as a native-endian number.
            let dest = u32::from_str_radix(dest, 16).ok()?;
            Some(HostRoute {
                addr: IpAddr::V4(Ipv4Addr::from(dest.to_ne_bytes())),
                ifname: (*ifname).to_string(),
            })
        })
        .collect()
}

/// The host routes of every IPv6 table in `/proc/net/ipv6_route`'s format: prefix length
/// 128, up, no gateway, not rejecting, not a local or anycast address of this host, not a
/// cached exception.
pub fn parse_ipv6_routes(text: &str) -> Vec<HostRoute> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // dest dest_plen src src_plen next_hop metric refcnt use flags ifname
            let [dest, plen, _, _, _, _, _, _, flags, ifname] = fields.as_slice() else {
                return None;
            };
            let plen = u8::from_str_radix(plen, 16).ok()?;
            let flags = u32::from_str_radix(flags, 16).ok()?;
            let excluded = RTF_GATEWAY | RTF_REJECT | RTF_CACHE | RTF_ANYCAST | RTF_LOCAL;
            if plen != 128 || flags & RTF_UP == 0 || flags & excluded != 0 {
                return None;
            }
            let dest = u128::from_str_radix(dest, 16).ok()?;
            Some(HostRoute {
                addr: IpAddr::V6(Ipv6Addr::from(dest)),
                ifname: (*ifname).to_string(),
            })
        })
        .collect()
}

/// The host routes of the calling thread's network namespace, IPv4 and IPv6. A kernel
/// without IPv6 has no `ipv6_route`: no IPv6 routes then.
pub fn read_host_routes() -> Result<Vec<HostRoute>, EndpointError> {
    let read = |path: &'static str| {
        std::fs::read_to_string(path).map_err(|source| EndpointError::Routes { path, source })
    };
    let mut routes = parse_ipv4_routes(&read(IPV4_ROUTES)?);
    match read(IPV6_ROUTES) {
        Ok(text) => routes.extend(parse_ipv6_routes(&text)),
        Err(EndpointError::Routes { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(error),
    }
    Ok(routes)
}

/// The index of interface `ifname` in the calling thread's network namespace, if it exists.
pub fn ifindex(ifname: &str) -> Option<u32> {
    let name = CString::new(ifname).ok()?;
    // SAFETY: `name` is a valid NUL-terminated string for the whole call.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    (index != 0).then_some(index)
}

/// Finds each pod's host veth among `routes`: the interfaces named `prefix…` that hold a host
/// route to one of its addresses; `ifindex` names each interface's index (`None`: it is gone).
pub fn match_pods(
    pods: &[LocalPod],
    routes: &[HostRoute],
    prefix: &str,
    ifindex: impl Fn(&str) -> Option<u32>,
) -> Discovery {
    let mut by_addr: BTreeMap<IpAddr, BTreeSet<&str>> = BTreeMap::new();
    for route in routes.iter().filter(|r| r.ifname.starts_with(prefix)) {
        by_addr
            .entry(route.addr)
            .or_default()
            .insert(route.ifname.as_str());
    }
    let mut discovery = Discovery::default();
    for pod in pods {
        let ifnames: BTreeSet<&str> = pod
            .ips
            .iter()
            .filter_map(|ip| by_addr.get(ip))
            .flatten()
            .copied()
            .collect();
        let mut names = ifnames.iter();
        match (names.next(), names.next()) {
            (None, _) => discovery.unrouted.push(pod.pod.clone()),
            (Some(ifname), None) => match ifindex(ifname) {
                Some(index) => {
                    discovery.veths.insert(
                        pod.pod.clone(),
                        Veth {
                            ifname: (*ifname).to_string(),
                            ifindex: index,
                        },
                    );
                }
                None => discovery.unrouted.push(pod.pod.clone()),
            },
            (Some(_), Some(_)) => {
                discovery.conflicts.insert(
                    pod.pod.clone(),
                    ifnames.iter().map(|s| (*s).to_string()).collect(),
                );
            }
        }
    }
    discovery
}

/// Finds each pod's host veth, and every veth of the prefix, in the calling thread's network
/// namespace; see the module doc.
pub fn discover(pods: &[LocalPod], prefix: &str) -> Result<Discovery, EndpointError> {
    let routes = read_host_routes()?;
    let mut discovery = match_pods(pods, &routes, prefix, ifindex);
    discovery.links = prefixed_links(prefix).map_err(|source| EndpointError::Links { source })?;
    for (pod, ifnames) in &discovery.conflicts {
        tracing::warn!(pod = %pod, ?ifnames, "pod addresses routed onto several veths; not an endpoint");
    }
    Ok(discovery)
}

/// Puts the probe on host veths and takes it off again.
///
/// Implemented by [`crate::pins::PinnedProbe`] over the kernel; every call runs in the calling
/// thread's network namespace.
pub trait Attacher {
    /// Error of attaching or detaching.
    type Error: std::error::Error + Send + Sync + 'static;

    /// The veths the probe is attached to now, by name, with the ifindex attached to.
    fn attached(&self) -> BTreeMap<String, u32>;
    /// Attaches both programs to `veth`.
    fn attach(&mut self, veth: &Veth) -> Result<(), Self::Error>;
    /// Detaches both programs from the veth attached under `ifname`, or, when it is gone,
    /// drops what is left of it (bookkeeping, pins).
    fn detach(&mut self, ifname: &str) -> Result<(), Self::Error>;
}

/// What one [`Endpoints::apply`] changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// Veths the probe was attached to.
    pub attached: Vec<Veth>,
    /// Veths the probe was detached from (or whose leftovers were dropped), by name.
    pub detached: Vec<String>,
    /// Veths that could not be attached or detached, with why; tried again by the next apply.
    pub failed: Vec<(String, String)>,
}

/// The probe on exactly the veths of the node's endpoints.
#[derive(Debug)]
pub struct Endpoints<A> {
    attacher: A,
    /// Each pod's veth, for the pods whose veth is attached.
    pods: BTreeMap<String, Veth>,
}

impl<A: Attacher> Endpoints<A> {
    /// Starts from what `attacher` is attached to already (adopted after a restart); no pod is
    /// an endpoint until the first [`Endpoints::apply`].
    pub fn new(attacher: A) -> Self {
        Self {
            attacher,
            pods: BTreeMap::new(),
        }
    }

    /// Makes the probe sit on exactly the veths of `discovery` (its pods' and its links):
    /// detaches first (veths that are gone, and veths whose name came back with another
    /// ifindex), then attaches. A failure is reported in [`Applied::failed`] and leaves that
    /// veth's pods out of [`Endpoints::interfaces`]; the next apply tries again.
    pub fn apply(&mut self, discovery: &Discovery) -> Applied {
        let wanted: BTreeMap<&str, u32> = discovery
            .links
            .iter()
            .chain(discovery.veths.values())
            .map(|veth| (veth.ifname.as_str(), veth.ifindex))
            .collect();
        let mut applied = Applied::default();
        for (ifname, ifindex) in self.attacher.attached() {
            if wanted.get(ifname.as_str()) == Some(&ifindex) {
                continue;
            }
            match self.attacher.detach(&ifname) {
                Ok(()) => {
                    tracing::info!(ifname = %ifname, ifindex, "probe detached");
                    applied.detached.push(ifname);
                }
                Err(error) => {
                    tracing::warn!(ifname = %ifname, ifindex, %error, "probe not detached");
                    applied.failed.push((ifname, error.to_string()));
                }
            }
        }
        let wanted: Vec<Veth> = wanted
            .into_iter()
            .map(|(ifname, ifindex)| Veth {
                ifname: ifname.to_owned(),
                ifindex,
            })
            .collect();
        let added = self.attach_new(&wanted);
        applied.attached = added.attached;
        applied.failed.extend(added.failed);
        let attached = self.attacher.attached();
        self.pods = discovery
            .veths
            .iter()
            .filter(|(_, veth)| attached.get(&veth.ifname) == Some(&veth.ifindex))
            .map(|(pod, veth)| (pod.clone(), veth.clone()))
            .collect();
        applied
    }

    /// Attaches the probe to each of `links` it is not on yet (under that ifindex), and
    /// detaches nothing: also a veth that just appeared, before any pass names its pod.
    pub fn attach_new(&mut self, links: &[Veth]) -> Applied {
        let mut applied = Applied::default();
        for veth in links {
            if self.attacher.attached().get(&veth.ifname) == Some(&veth.ifindex) {
                continue;
            }
            match self.attacher.attach(veth) {
                Ok(()) => {
                    tracing::info!(ifname = %veth.ifname, ifindex = veth.ifindex, "probe attached");
                    applied.attached.push(veth.clone());
                }
                Err(error) => {
                    tracing::warn!(ifname = %veth.ifname, ifindex = veth.ifindex, %error, "probe not attached");
                    applied
                        .failed
                        .push((veth.ifname.clone(), error.to_string()));
                }
            }
        }
        applied
    }

    /// Host veth ifindex by `namespace/name`, for the pods whose veth the probe is on: the
    /// compiler's [`tollgate_enforcer::compile::Placement::Interfaces`].
    pub fn interfaces(&self) -> BTreeMap<String, u32> {
        self.pods
            .iter()
            .map(|(pod, veth)| (pod.clone(), veth.ifindex))
            .collect()
    }

    /// Each endpoint pod's veth.
    pub fn veths(&self) -> &BTreeMap<String, Veth> {
        &self.pods
    }

    /// The attacher.
    pub fn attacher(&self) -> &A {
        &self.attacher
    }

    /// The attacher, to change the probe's maps or settings.
    pub fn attacher_mut(&mut self) -> &mut A {
        &mut self.attacher
    }

    /// Gives the attacher back; the probe stays where it is.
    pub fn into_attacher(self) -> A {
        self.attacher
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROUTE: &str = "\
Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
eth0\t00000000\t0100A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0
eth0\t0000A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
eni1a2b3c4d5e6\t0A0012C6\t00000000\t0005\t0\t0\t0\tFFFFFFFF\t0\t0\t0
eni0f0f0f0f0f0\t0B0012C6\t00000000\t0005\t0\t0\t0\tFFFFFFFF\t0\t0\t0
eth1\t0C0012C6\t0100A8C0\t0007\t0\t0\t0\tFFFFFFFF\t0\t0\t0
eni9999999999\t0D0012C6\t00000000\t0205\t0\t0\t0\tFFFFFFFF\t0\t0\t0
";

    const IPV6_ROUTE: &str = "\
fd000000000000000000000000000010 80 00000000000000000000000000000000 00 00000000000000000000000000000000 00000400 00000001 00000000 00000001 eni1a2b3c4d5e6
fd000000000000000000000000000011 80 00000000000000000000000000000000 00 fe800000000000000000000000000001 00000400 00000001 00000000 00000003 eni0f0f0f0f0f0
fe800000000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001 eni1a2b3c4d5e6
fd000000000000000000000000000001 80 00000000000000000000000000000000 00 00000000000000000000000000000000 00000000 00000002 00000000 80200001 eth0
fd000000000000000000000000000012 80 00000000000000000000000000000000 00 00000000000000000000000000000000 00000000 00000001 00000000 01000001 eni0f0f0f0f0f0
00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 ffffffff 00000001 00000000 00200200 lo
";

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn route(addr: &str, ifname: &str) -> HostRoute {
        HostRoute {
            addr: ip(addr),
            ifname: ifname.to_string(),
        }
    }

    #[test]
    fn ipv4_host_routes_only() {
        // Not the default route, not the /24, not via a gateway, not a reject route.
        assert_eq!(
            parse_ipv4_routes(ROUTE),
            [
                route("198.18.0.10", "eni1a2b3c4d5e6"),
                route("198.18.0.11", "eni0f0f0f0f0f0"),
            ]
        );
    }

    #[test]
    fn ipv6_host_routes_only() {
        // Not via a gateway, not the /64, not a local address, not a cached exception, not the
        // unreachable default.
        assert_eq!(
            parse_ipv6_routes(IPV6_ROUTE),
            [route("fd00::10", "eni1a2b3c4d5e6")]
        );
    }

    fn pod(name: &str, ips: &[&str]) -> LocalPod {
        LocalPod {
            pod: name.to_string(),
            ips: ips.iter().map(|s| ip(s)).collect(),
        }
    }

    fn index(ifname: &str) -> Option<u32> {
        match ifname {
            "eniaaa" => Some(11),
            "enibbb" => Some(12),
            "eniccc" => Some(13),
            _ => None,
        }
    }

    #[test]
    fn pods_are_matched_to_their_veths() {
        let routes = [
            route("198.18.0.10", "eniaaa"),
            route("fd00::11", "enibbb"),
            route("198.18.0.12", "eniaaa"),
            route("198.18.0.12", "eniccc"),
            route("198.18.0.13", "vethxyz"),
            route("198.18.0.14", "enigone"),
        ];
        let pods = [
            pod("default/a", &["198.18.0.10"]),
            pod("default/b", &["fd00::11"]),
            pod("default/conflict", &["198.18.0.12"]),
            pod("default/other-prefix", &["198.18.0.13"]),
            pod("default/gone", &["198.18.0.14"]),
            pod("default/pending", &["198.18.0.15"]),
            pod("default/dual", &["198.18.0.99", "fd00::11"]),
        ];
        let found = match_pods(&pods, &routes, "eni", index);
        let veth = |ifname: &str, ifindex| Veth {
            ifname: ifname.to_string(),
            ifindex,
        };
        assert_eq!(
            found.veths,
            BTreeMap::from([
                ("default/a".to_string(), veth("eniaaa", 11)),
                ("default/b".to_string(), veth("enibbb", 12)),
                ("default/dual".to_string(), veth("enibbb", 12)),
            ])
        );
        assert_eq!(
            found.unrouted,
            ["default/other-prefix", "default/gone", "default/pending"]
        );
        assert_eq!(
            found.conflicts["default/conflict"],
            BTreeSet::from(["eniaaa".to_string(), "eniccc".to_string()])
        );
        // Another prefix (AWS_VPC_K8S_CNI_VETHPREFIX).
        let other = match_pods(&pods, &routes, "veth", index);
        assert_eq!(other.veths.len(), 0);
        assert!(other.unrouted.contains(&"default/other-prefix".to_string()));
    }

    /// An attacher in memory; names in `fail` fail to attach.
    #[derive(Debug, Default)]
    struct Fake {
        attached: BTreeMap<String, u32>,
        fail: BTreeSet<String>,
        calls: Vec<String>,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("refused")]
    struct Refused;

    impl Attacher for Fake {
        type Error = Refused;

        fn attached(&self) -> BTreeMap<String, u32> {
            self.attached.clone()
        }

        fn attach(&mut self, veth: &Veth) -> Result<(), Refused> {
            self.calls
                .push(format!("attach {}/{}", veth.ifname, veth.ifindex));
            if self.fail.contains(&veth.ifname) {
                return Err(Refused);
            }
            self.attached.insert(veth.ifname.clone(), veth.ifindex);
            Ok(())
        }

        fn detach(&mut self, ifname: &str) -> Result<(), Refused> {
            self.calls.push(format!("detach {ifname}"));
            self.attached.remove(ifname);
            Ok(())
        }
    }

    fn discovery(pods: &[(&str, &str, u32)]) -> Discovery {
        Discovery {
            veths: pods
                .iter()
                .map(|(pod, ifname, ifindex)| {
                    (
                        pod.to_string(),
                        Veth {
                            ifname: ifname.to_string(),
                            ifindex: *ifindex,
                        },
                    )
                })
                .collect(),
            ..Discovery::default()
        }
    }

    #[test]
    fn apply_attaches_detaches_and_reattaches_recreated_veths() {
        let mut endpoints = Endpoints::new(Fake::default());
        let first = endpoints.apply(&discovery(&[("ns/a", "enia", 5), ("ns/b", "enib", 6)]));
        assert_eq!(first.attached.len(), 2);
        assert_eq!(
            endpoints.interfaces(),
            BTreeMap::from([("ns/a".to_string(), 5), ("ns/b".to_string(), 6)])
        );
        // Same state: nothing to do.
        let calls = endpoints.attacher().calls.len();
        assert_eq!(
            endpoints.apply(&discovery(&[("ns/a", "enia", 5), ("ns/b", "enib", 6)])),
            Applied::default()
        );
        assert_eq!(endpoints.attacher().calls.len(), calls);
        // b deleted, a recreated under the same name with another ifindex.
        let next = endpoints.apply(&discovery(&[("ns/a", "enia", 9)]));
        assert_eq!(next.detached, ["enia", "enib"]);
        assert_eq!(next.attached.len(), 1);
        assert_eq!(
            endpoints.attacher().calls[calls..],
            ["detach enia", "detach enib", "attach enia/9"]
        );
        assert_eq!(
            endpoints.interfaces(),
            BTreeMap::from([("ns/a".to_string(), 9)])
        );
    }

    #[test]
    fn a_failed_attach_leaves_the_pod_out_and_is_retried() {
        let mut fake = Fake::default();
        fake.fail.insert("enib".to_string());
        let mut endpoints = Endpoints::new(fake);
        let state = discovery(&[("ns/a", "enia", 5), ("ns/b", "enib", 6)]);
        let applied = endpoints.apply(&state);
        assert_eq!(applied.failed.len(), 1);
        assert_eq!(
            endpoints.interfaces(),
            BTreeMap::from([("ns/a".to_string(), 5)])
        );
        endpoints.attacher_mut().fail.clear();
        let retried = endpoints.apply(&state);
        assert_eq!(retried.attached.len(), 1);
        assert_eq!(endpoints.interfaces().len(), 2);
    }

    #[test]
    fn adopted_veths_are_kept_or_dropped() {
        // A restarted agent's attacher starts with the veths it adopted.
        let mut fake = Fake::default();
        fake.attached.insert("enia".to_string(), 5);
        fake.attached.insert("enigone".to_string(), 7);
        let mut endpoints = Endpoints::new(fake);
        let applied = endpoints.apply(&discovery(&[("ns/a", "enia", 5)]));
        assert_eq!(applied.detached, ["enigone"]);
        assert!(applied.attached.is_empty());
        assert_eq!(endpoints.interfaces().len(), 1);
    }
}
