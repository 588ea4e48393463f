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
//! Pods with security groups (branch ENIs) in the `strict` enforcing mode are wired otherwise
//! (`setupIIFBasedContainerRouteRules`, `setupVlan`): the host veth is named `vlan…` (see
//! [`crate::cni`]), and the pod's host route is in the per-VLAN table `<vlan id> + 100`,
//! selected by the rules `iif <host veth> lookup <table>` and `iif vlan.eth.<vlan id> lookup
//! <table>` (priority 10), next to that table's own routes through the VLAN sub-interface.
//! In `standard` mode a branch-ENI pod is wired like any other, with `from <pod IP> lookup
//! <table>`. A multi-NIC pod has one veth per address (the index in the veth's name), each
//! address's route on its own veth.
//!
//! [`discover`] reads those host routes from the kernel of the calling thread's network
//! namespace (the agent runs with `hostNetwork`: the node's) over netlink, without external
//! tools: a dump of the `ip rule`s gives every table a rule looks up (the local table aside),
//! a dump of the routes every host route (`/32`, `/128`, unicast, straight onto an interface,
//! no gateway) of those tables; [`read_host_routes`] then names each route's interface (a dump
//! of the links). Only the tables a rule reaches count: a route in a table nothing looks up
//! routes no packet. The ifindex of a veth comes from an `RTM_GETLINK` request by name
//! ([`ifindex`]); all of it goes through [`crate::netlink`] on sockets of the calling thread's
//! namespace, never `/sys/class/net/<if>/ifindex`, which shows the namespace sysfs was mounted
//! in.
//!
//! A pod is found on the interface which holds a host route to one of the pod's addresses, in
//! whichever table a rule looks up (a VLAN sub-interface `vlan.eth.<id>` aside: it holds the
//! branch subnet's gateway): the route, not the name, says which veth is the pod's, so a
//! prefix that is not the CNI's ([`crate::cni`]) still finds every pod the cluster named, and
//! says so ([`Discovery::outside_names`]). Not found: pods of `hostNetwork`, pods whose CNI
//! ADD has not finished (found on a later pass). A multi-NIC pod, whose addresses are each
//! routed onto a veth of their own, is one endpoint on all of them ([`Discovery::extra`]); a
//! pod with one address routed onto several veths is left out ([`Discovery::conflicts`]):
//! either could be the wrong one (its veths still carry the probe, so in strict mode its
//! traffic is denied, never let through).
//!
//! [`discover`] also lists every pod veth by its name ([`Discovery::links`]), a known pod's or
//! not: those get the probe before the cluster names their pod. Discovery marks the veths of
//! pods with a branch ENI ([`Discovery::branch_eni`]), which flow records say.
//!
//! [`Endpoints`] keeps the probe attached to every pod veth through an [`Attacher`]
//! (the pinned probe of [`crate::pins`] on a node, an in-memory one in tests), so a pod the
//! cluster has not named yet is enforced as an unknown endpoint (denied in strict mode):
//! [`Endpoints::apply`] detaches from veths that are gone and from veths that came back under
//! the same name with another ifindex (a veth that vanished with its pod took its links with
//! it; only the bookkeeping and pins are left to drop), then attaches to the new ones;
//! [`Endpoints::attach_new`] attaches to a veth the moment [`crate::links`] sees it appear.
//! [`Endpoints::interfaces`] is the pod → ifindex map for the compiler's
//! [`tollgate_enforcer::compile::Placement::InterfacesByAddress`] (with
//! [`Endpoints::address_interfaces`] for multi-NIC pods): only pods whose veths are attached.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::IpAddr;

use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteType,
};
use netlink_packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};

use crate::cni::{VethNames, is_branch_veth, is_vlan_link};
use crate::links::pod_links;
use crate::netlink;
pub use crate::netlink::ifindex;
use tollgate_enforcer::causes::Causes;

/// The local routing table (addresses of this host): never a pod's route.
const RT_TABLE_LOCAL: u32 = 255;

/// Error of endpoint discovery.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    /// The rules or routes could not be dumped over netlink.
    #[error("dumping the {what} over netlink")]
    Routes {
        /// `rules` or `routes`.
        what: &'static str,
        /// What failed.
        #[source]
        source: io::Error,
    },
    /// The node's interfaces could not be listed.
    #[error("listing the network interfaces")]
    Links {
        /// What failed.
        #[source]
        source: io::Error,
    },
}

/// A host route: one address routed straight onto an interface, without a gateway.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct HostRoute {
    /// The destination (a /32 or /128).
    pub addr: IpAddr,
    /// The interface it is routed onto.
    pub ifname: String,
    /// Whether the address is a branch ENI's: the route is in a table whose traffic leaves
    /// through a VLAN of the trunk (strict mode), or a rule sends the address's own traffic to
    /// such a table (`from <pod IP>`, standard mode).
    pub branch_eni: bool,
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
    /// Pods with no host route on a pod veth (not wired yet, or `hostNetwork`).
    pub unrouted: Vec<String>,
    /// Pods whose addresses are routed onto more than one veth: left out, as either could be
    /// the wrong one.
    pub conflicts: BTreeMap<String, BTreeSet<String>>,
    /// Every pod veth on the node, a known pod's or not (yet): the probe sits on all
    /// of them, so a pod the cluster has not named yet is enforced from its first packet
    /// (denied in strict mode, as an unknown endpoint).
    pub links: Vec<Veth>,
    /// The pod veths whose pod has a branch ENI (security groups for pods): `vlan…` veths,
    /// and veths holding a [`HostRoute::branch_eni`] route.
    pub branch_eni: BTreeSet<String>,
    /// Pods found on a veth whose name is not a pod veth's ([`VethNames`]): endpoints all the
    /// same (see [`match_pods`]); the names in force are probably not the CNI's.
    pub outside_names: BTreeMap<String, String>,
    /// The addresses of a pod that are on another veth than its first (a multi-NIC pod: one
    /// veth per address), by pod.
    pub extra: BTreeMap<String, BTreeMap<IpAddr, Veth>>,
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

/// The tables `rules` look up, the local table aside: where the node routes to its pods.
pub fn rule_tables(rules: &[RuleMessage]) -> BTreeSet<u32> {
    rules
        .iter()
        .filter(|rule| rule.header.action == RuleAction::ToTable)
        .map(table_of)
        .filter(|table| *table != RT_TABLE_LOCAL)
        .collect()
}

/// A rule that looks up the main table: what discovery assumes when the rules cannot be read.
fn main_table_rule() -> RuleMessage {
    let mut rule = RuleMessage::default();
    rule.header.action = RuleAction::ToTable;
    rule.header.table = RouteHeader::RT_TABLE_MAIN;
    rule
}

/// The table a rule looks up (above 255, only the attribute has it).
fn table_of(rule: &RuleMessage) -> u32 {
    rule.attributes
        .iter()
        .find_map(|attribute| match attribute {
            RuleAttribute::Table(table) => Some(*table),
            _ => None,
        })
        .unwrap_or(u32::from(rule.header.table))
}

/// What discovery reads of one route.
struct RouteFacts {
    table: u32,
    /// The destination, when the route is unicast and to one address (a /32 or /128).
    host: Option<IpAddr>,
    /// Whether it is a default route (prefix length 0).
    default: bool,
    /// The interface, when the route names one.
    oif: Option<u32>,
    /// Whether it goes through a next hop (a gateway, `via`, several paths).
    via: bool,
}

fn facts(route: &RouteMessage) -> RouteFacts {
    let header = &route.header;
    let full = match header.address_family {
        netlink_packet_route::AddressFamily::Inet => 32,
        netlink_packet_route::AddressFamily::Inet6 => 128,
        _ => 0,
    };
    let host = header.kind == RouteType::Unicast && header.destination_prefix_length == full;
    let mut facts = RouteFacts {
        // A table above 255 is only in the attribute.
        table: u32::from(header.table),
        host: None,
        default: header.destination_prefix_length == 0,
        oif: None,
        via: false,
    };
    for attribute in &route.attributes {
        match attribute {
            RouteAttribute::Destination(RouteAddress::Inet(ip)) if host => {
                facts.host = Some(IpAddr::V4(*ip));
            }
            RouteAttribute::Destination(RouteAddress::Inet6(ip)) if host => {
                facts.host = Some(IpAddr::V6(*ip));
            }
            RouteAttribute::Oif(index) => facts.oif = Some(*index),
            RouteAttribute::Table(id) => facts.table = *id,
            RouteAttribute::Gateway(_) | RouteAttribute::Via(_) | RouteAttribute::MultiPath(_) => {
                facts.via = true;
            }
            _ => {}
        }
    }
    facts
}

/// The host routes among `routes` that are in a table one of `rules` looks up: unicast, prefix
/// length 32 or 128, onto an interface (named by `ifname`), without a next hop; each marked
/// when it is a branch ENI's (see [`HostRoute::branch_eni`]).
pub fn host_routes(
    routes: &[RouteMessage],
    rules: &[RuleMessage],
    ifname: impl Fn(u32) -> Option<String>,
) -> Vec<HostRoute> {
    let routes: Vec<RouteFacts> = routes.iter().map(facts).collect();
    let tables = rule_tables(rules);
    // The VPC CNI's per-VLAN tables: their default route leaves through `vlan.eth.<id>`
    // (not any route: the link's IPv6 `fe80::/64` is in main).
    let vlan_tables: BTreeSet<u32> = routes
        .iter()
        .filter(|route| {
            route.default
                && route
                    .oif
                    .and_then(&ifname)
                    .is_some_and(|name| is_vlan_link(&name))
        })
        .map(|route| route.table)
        .collect();
    // Standard mode: `from <pod IP> lookup <VLAN table>`.
    let branch_sources: BTreeSet<IpAddr> = rules
        .iter()
        .filter(|rule| rule.header.action == RuleAction::ToTable)
        .filter(|rule| vlan_tables.contains(&table_of(rule)))
        .flat_map(|rule| {
            rule.attributes
                .iter()
                .filter_map(|attribute| match attribute {
                    RuleAttribute::Source(ip) => Some(*ip),
                    _ => None,
                })
        })
        .collect();
    routes
        .iter()
        .filter(|route| !route.via && tables.contains(&route.table))
        .filter_map(|route| {
            let addr = route.host?;
            Some(HostRoute {
                addr,
                ifname: ifname(route.oif?)?,
                branch_eni: vlan_tables.contains(&route.table) || branch_sources.contains(&addr),
            })
        })
        .collect()
}

/// The host routes of every table a rule looks up, in the calling thread's network
/// namespace, IPv4 and IPv6 (see the module doc).
#[tracing::instrument(level = "debug", skip_all, fields(tables, routes))]
pub fn read_host_routes() -> Result<Vec<HostRoute>, EndpointError> {
    let failed = |what| move |source| EndpointError::Routes { what, source };
    let socket = netlink::socket().map_err(failed("rules"))?;
    let rules: Vec<RuleMessage> = match netlink::dump(
        &socket,
        RouteNetlinkMessage::GetRule(RuleMessage::default()),
    ) {
        Ok(messages) => messages
            .into_iter()
            .filter_map(|message| match message {
                RouteNetlinkMessage::NewRule(rule) => Some(rule),
                _ => None,
            })
            .collect(),
        Err(error) => {
            // The VPC CNI's own default: pods are routed in main (branch ENIs in strict mode
            // are then found on the next pass that reads the rules).
            tracing::warn!(error = %Causes(&error), "the ip rules could not be read; pod routes looked for in the main table only");
            vec![main_table_rule()]
        }
    };
    let mut request = RouteMessage::default();
    request.header.table = RouteHeader::RT_TABLE_UNSPEC;
    let routes: Vec<RouteMessage> = netlink::dump(&socket, RouteNetlinkMessage::GetRoute(request))
        .map_err(failed("routes"))?
        .into_iter()
        .filter_map(|message| match message {
            RouteNetlinkMessage::NewRoute(route) => Some(route),
            _ => None,
        })
        .collect();
    let names: BTreeMap<u32, String> = netlink::links(&socket)
        .map_err(|source| EndpointError::Links { source })?
        .into_iter()
        .map(|link| (link.index, link.name))
        .collect();
    let found = host_routes(&routes, &rules, |index| names.get(&index).cloned());
    let span = tracing::Span::current();
    span.record("tables", tracing::field::debug(&rule_tables(&rules)));
    span.record("routes", found.len());
    Ok(found)
}

/// Finds each pod's host veth among `routes`: the interface that holds a host route to one of
/// its addresses (never a VLAN sub-interface of the trunk, which holds the branch subnet's
/// gateway). A pod found on an interface outside `names` is an endpoint all the same, and
/// listed in [`Discovery::outside_names`]: the route says it is the pod's veth, and the probe
/// on it fails closed where a wrong prefix would leave the pod unenforced. `ifindex` names each
/// interface's index (`None`: it is gone).
pub fn match_pods(
    pods: &[LocalPod],
    routes: &[HostRoute],
    names: &VethNames,
    ifindex: impl Fn(&str) -> Option<u32>,
) -> Discovery {
    let routes: Vec<&HostRoute> = routes.iter().filter(|r| !is_vlan_link(&r.ifname)).collect();
    let mut by_addr: BTreeMap<IpAddr, BTreeSet<&str>> = BTreeMap::new();
    for route in &routes {
        by_addr
            .entry(route.addr)
            .or_default()
            .insert(route.ifname.as_str());
    }
    let mut discovery = Discovery {
        branch_eni: routes
            .iter()
            .filter(|r| r.branch_eni || is_branch_veth(&r.ifname))
            .map(|r| r.ifname.clone())
            .collect(),
        ..Discovery::default()
    };
    for pod in pods {
        // Each routed address with the interfaces its routes name, in the pod's order.
        let routed: Vec<(IpAddr, &BTreeSet<&str>)> = pod
            .ips
            .iter()
            .filter_map(|ip| by_addr.get(ip).map(|ifnames| (*ip, ifnames)))
            .collect();
        if routed.is_empty() {
            discovery.unrouted.push(pod.pod.clone());
            continue;
        }
        if routed.iter().any(|(_, ifnames)| ifnames.len() > 1) {
            discovery.conflicts.insert(
                pod.pod.clone(),
                routed
                    .iter()
                    .flat_map(|(_, ifnames)| ifnames.iter().map(|s| (*s).to_string()))
                    .collect(),
            );
            continue;
        }
        // One interface per address: the first address's is the pod's veth, the others'
        // (a multi-NIC pod) carry their own addresses.
        let veth = |ifname: &str| {
            ifindex(ifname).map(|ifindex| Veth {
                ifname: ifname.to_owned(),
                ifindex,
            })
        };
        let placed: Option<Vec<(IpAddr, Veth)>> = routed
            .iter()
            .map(|(ip, ifnames)| {
                ifnames
                    .first()
                    .and_then(|ifname| veth(ifname))
                    .map(|v| (*ip, v))
            })
            .collect();
        let Some(placed) = placed else {
            discovery.unrouted.push(pod.pod.clone());
            continue;
        };
        let first = placed[0].1.clone();
        for (_, veth) in &placed {
            if !names.matches(&veth.ifname) {
                discovery
                    .outside_names
                    .insert(pod.pod.clone(), veth.ifname.clone());
            }
        }
        let others: BTreeMap<IpAddr, Veth> = placed
            .into_iter()
            .filter(|(_, veth)| *veth != first)
            .collect();
        if !others.is_empty() {
            discovery.extra.insert(pod.pod.clone(), others);
        }
        discovery.veths.insert(pod.pod.clone(), first);
    }
    discovery
}

/// Finds each pod's host veth, and every pod veth, in the calling thread's network namespace;
/// see the module doc.
pub fn discover(pods: &[LocalPod], names: &VethNames) -> Result<Discovery, EndpointError> {
    let routes = read_host_routes()?;
    let mut discovery = match_pods(pods, &routes, names, ifindex);
    discovery.links = pod_links(names).map_err(|source| EndpointError::Links { source })?;
    for (pod, ifname) in &discovery.outside_names {
        tracing::warn!(pod = %pod, ifname = %ifname, prefix = names.prefix(),
            "pod routed onto a veth outside the pod veth names; attached all the same \
             (is the VPC CNI's vethPrefix the one in force?)");
    }
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
    /// Each pod's veth, for the pods whose veths are all attached.
    pods: BTreeMap<String, Veth>,
    /// The addresses of those pods on other veths (multi-NIC pods).
    extra: BTreeMap<String, BTreeMap<IpAddr, Veth>>,
}

impl<A: Attacher> Endpoints<A> {
    /// Starts from what `attacher` is attached to already (adopted after a restart); no pod is
    /// an endpoint until the first [`Endpoints::apply`].
    pub fn new(attacher: A) -> Self {
        Self {
            attacher,
            pods: BTreeMap::new(),
            extra: BTreeMap::new(),
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
            .chain(discovery.extra.values().flat_map(BTreeMap::values))
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
                    tracing::warn!(ifname = %ifname, ifindex, error = %Causes(&error), "probe not detached");
                    applied.failed.push((ifname, Causes(&error).to_string()));
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
        let on = |veth: &Veth| attached.get(&veth.ifname) == Some(&veth.ifindex);
        let extra = |pod: &String| {
            discovery
                .extra
                .get(pod)
                .into_iter()
                .flat_map(BTreeMap::values)
        };
        self.pods = discovery
            .veths
            .iter()
            .filter(|(pod, veth)| on(veth) && extra(pod).all(on))
            .map(|(pod, veth)| (pod.clone(), veth.clone()))
            .collect();
        self.extra = discovery
            .extra
            .iter()
            .filter(|(pod, _)| self.pods.contains_key(*pod))
            .map(|(pod, addresses)| (pod.clone(), addresses.clone()))
            .collect();
        applied
    }

    /// The interface of each address of an endpoint pod that is not on the pod's first veth
    /// (multi-NIC pods): the compiler's
    /// [`tollgate_enforcer::compile::Placement::InterfacesByAddress`].
    pub fn address_interfaces(&self) -> BTreeMap<IpAddr, u32> {
        self.extra
            .values()
            .flat_map(|addresses| addresses.iter().map(|(ip, veth)| (*ip, veth.ifindex)))
            .collect()
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
                    tracing::warn!(ifname = %veth.ifname, ifindex = veth.ifindex, error = %Causes(&error), "probe not attached");
                    applied
                        .failed
                        .push((veth.ifname.clone(), error.to_string()));
                }
            }
        }
        applied
    }

    /// Host veth ifindex by `namespace/name`, for the pods whose veths the probe is on: the
    /// compiler's [`tollgate_enforcer::compile::Placement::InterfacesByAddress`], with
    /// [`Endpoints::address_interfaces`].
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
    use crate::cni::PrefixSource;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn route(addr: &str, ifname: &str) -> HostRoute {
        HostRoute {
            addr: ip(addr),
            ifname: ifname.to_string(),
            branch_eni: false,
        }
    }

    fn rule(table: u32, action: RuleAction) -> RuleMessage {
        let mut rule = RuleMessage::default();
        rule.header.action = action;
        rule.header.table = u8::try_from(table).unwrap_or(252);
        rule.attributes.push(RuleAttribute::Table(table));
        rule
    }

    #[test]
    fn the_tables_rules_look_up_but_local() {
        let rules = [
            rule(255, RuleAction::ToTable),
            rule(254, RuleAction::ToTable),
            rule(101, RuleAction::ToTable),
            rule(1001, RuleAction::ToTable),
            rule(7, RuleAction::Blackhole),
        ];
        assert_eq!(rule_tables(&rules), BTreeSet::from([101, 254, 1001]));
        // Rules that cannot be read: the main table.
        assert_eq!(rule_tables(&[main_table_rule()]), BTreeSet::from([254]));
    }

    fn route_message(
        dst: &str,
        len: u8,
        table: u32,
        attributes: Vec<RouteAttribute>,
    ) -> RouteMessage {
        let mut route = RouteMessage::default();
        let dst = ip(dst);
        route.header.address_family = match dst {
            IpAddr::V4(_) => netlink_packet_route::AddressFamily::Inet,
            IpAddr::V6(_) => netlink_packet_route::AddressFamily::Inet6,
        };
        route.header.destination_prefix_length = len;
        route.header.kind = RouteType::Unicast;
        route.header.table = u8::try_from(table).unwrap_or(252);
        route.attributes = vec![
            RouteAttribute::Table(table),
            RouteAttribute::Destination(dst.into()),
        ];
        route.attributes.extend(attributes);
        route
    }

    #[test]
    fn host_routes_of_the_looked_up_tables_only_and_branch_enis_marked() {
        let oif = RouteAttribute::Oif;
        let gateway = |gw: &str| RouteAttribute::Gateway(ip(gw).into());
        let mut local = route_message("198.18.0.30", 32, 255, vec![oif(11)]);
        local.header.kind = RouteType::Local;
        let routes = [
            // Regular pods: main, and a table of another ENI.
            route_message("198.18.0.10", 32, 254, vec![oif(11)]),
            route_message("2001:db8::11", 128, 1001, vec![oif(11)]),
            // Strict mode: the pod's route in the VLAN's table, with the gateway's.
            route_message("198.18.0.11", 32, 101, vec![oif(12)]),
            route_message("198.18.3.1", 32, 101, vec![oif(21)]),
            route_message("0.0.0.0", 0, 101, vec![oif(21), gateway("198.18.3.1")]),
            // Standard mode: the pod's route in main, its traffic to the VLAN's table.
            route_message("198.18.0.20", 32, 254, vec![oif(13)]),
            route_message("0.0.0.0", 0, 102, vec![oif(22), gateway("198.18.3.2")]),
            // The VLAN's IPv6 link-local prefix in main makes main no VLAN table.
            route_message("fe80::", 64, 254, vec![oif(21)]),
            // A table no rule looks up, a prefix, a gateway, a local address, a gone link.
            route_message("198.18.0.12", 32, 103, vec![oif(11)]),
            route_message("198.18.0.0", 24, 254, vec![oif(11)]),
            route_message("198.18.0.13", 32, 254, vec![oif(11), gateway("198.18.0.1")]),
            local,
            route_message("198.18.0.14", 32, 254, vec![oif(99)]),
        ];
        let mut from_pod = rule(102, RuleAction::ToTable);
        from_pod
            .attributes
            .push(RuleAttribute::Source(ip("198.18.0.20")));
        let rules = [
            rule(255, RuleAction::ToTable),
            rule(254, RuleAction::ToTable),
            rule(101, RuleAction::ToTable),
            rule(1001, RuleAction::ToTable),
            from_pod,
        ];
        let name = |index| {
            Some(
                match index {
                    11 => "eniaaa",
                    12 => "vlanbbb",
                    13 => "eniccc",
                    21 => "vlan.eth.1",
                    22 => "vlan.eth.2",
                    _ => return None,
                }
                .to_owned(),
            )
        };
        let branch = |addr: &str, ifname: &str| HostRoute {
            branch_eni: true,
            ..route(addr, ifname)
        };
        assert_eq!(
            host_routes(&routes, &rules, name),
            [
                route("198.18.0.10", "eniaaa"),
                route("2001:db8::11", "eniaaa"),
                branch("198.18.0.11", "vlanbbb"),
                branch("198.18.3.1", "vlan.eth.1"),
                branch("198.18.0.20", "eniccc"),
            ]
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
            "vlan0a1b" => Some(14),
            "vlan.eth.1" => Some(15),
            "vethxyz" => Some(16),
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
            route("198.18.0.16", "vlan0a1b"),
            route("198.18.0.17", "vlan.eth.1"),
            route("198.18.0.18", "eniccc"),
            route("198.18.0.19", "enibbb"),
        ];
        let pods = [
            pod("default/a", &["198.18.0.10"]),
            pod("default/b", &["fd00::11"]),
            pod("default/conflict", &["198.18.0.12"]),
            pod("default/other-prefix", &["198.18.0.13"]),
            pod("default/gone", &["198.18.0.14"]),
            pod("default/pending", &["198.18.0.15"]),
            pod("default/dual", &["198.18.0.99", "fd00::11"]),
            pod("default/sgp", &["198.18.0.16"]),
            pod("default/not-a-veth", &["198.18.0.17"]),
            pod("default/multi-nic", &["198.18.0.18", "198.18.0.19"]),
        ];
        let found = match_pods(&pods, &routes, &VethNames::default(), index);
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
                ("default/sgp".to_string(), veth("vlan0a1b", 14)),
                ("default/other-prefix".to_string(), veth("vethxyz", 16)),
                ("default/multi-nic".to_string(), veth("eniccc", 13)),
            ])
        );
        // A multi-NIC pod: its first address's veth, and its second address on its own.
        assert_eq!(
            found.extra,
            BTreeMap::from([(
                "default/multi-nic".to_string(),
                BTreeMap::from([(ip("198.18.0.19"), veth("enibbb", 12))])
            )])
        );
        // Routed onto a veth of another prefix: an endpoint all the same, and said so.
        assert_eq!(
            found.outside_names,
            BTreeMap::from([("default/other-prefix".to_string(), "vethxyz".to_string())])
        );
        // `vlan.eth.1` holds the branch subnet's gateway, never a pod.
        assert_eq!(
            found.unrouted,
            ["default/gone", "default/pending", "default/not-a-veth"]
        );
        assert_eq!(
            found.conflicts["default/conflict"],
            BTreeSet::from(["eniaaa".to_string(), "eniccc".to_string()])
        );
        // A `vlan…` veth is a branch ENI's, whatever its route says; `vlan.eth.1` is no veth.
        assert_eq!(found.branch_eni, BTreeSet::from(["vlan0a1b".to_string()]));
        // With the prefix in force, nothing is outside the names.
        let names = VethNames::with_prefix("veth", PrefixSource::Settings).unwrap();
        let other = match_pods(&pods, &routes, &names, index);
        assert_eq!(other.veths, found.veths);
        assert_eq!(
            other.outside_names,
            BTreeMap::from([
                ("default/a".to_string(), "eniaaa".to_string()),
                ("default/b".to_string(), "enibbb".to_string()),
                ("default/dual".to_string(), "enibbb".to_string()),
                ("default/multi-nic".to_string(), "enibbb".to_string()),
            ])
        );
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
    fn a_multi_nic_pod_is_an_endpoint_once_all_its_veths_are_attached() {
        let mut fake = Fake::default();
        fake.fail.insert("enib2".to_string());
        let mut endpoints = Endpoints::new(fake);
        let mut state = discovery(&[("ns/b", "enib", 6)]);
        let second = Veth {
            ifname: "enib2".to_string(),
            ifindex: 7,
        };
        state.extra.insert(
            "ns/b".to_string(),
            BTreeMap::from([(ip("198.18.0.2"), second)]),
        );
        let applied = endpoints.apply(&state);
        assert_eq!(applied.failed.len(), 1);
        assert!(endpoints.interfaces().is_empty());
        assert!(endpoints.address_interfaces().is_empty());
        endpoints.attacher_mut().fail.clear();
        let retried = endpoints.apply(&state);
        assert_eq!(retried.attached.len(), 1);
        assert_eq!(
            endpoints.interfaces(),
            BTreeMap::from([("ns/b".to_string(), 6)])
        );
        assert_eq!(
            endpoints.address_interfaces(),
            BTreeMap::from([(ip("198.18.0.2"), 7)])
        );
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
