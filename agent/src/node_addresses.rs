//! The node's own addresses: the sources whose traffic to a local pod passes ingress policy
//! (reason `from-node`), as the NetworkPolicy API requires for kubelet probes and node-local
//! agents.
//!
//! [`read`] lists every address of every interface in the calling thread's network namespace
//! (the agent runs with `hostNetwork`: the node's; in the lab, the lab's node namespace) with
//! `RTM_GETLINK` and `RTM_GETADDR` dumps over a `NETLINK_ROUTE` socket of that namespace
//! ([`crate::netlink`]), both families, secondary addresses included, read as `getifaddrs(3)`
//! reads them ([`interface_addresses`]).
//! [`node_addresses`] then keeps the node's own:
//! - every interface's addresses, so also each secondary ENI's primary address (`eth1`, …: the
//!   VPC CNI configures it on the interface; the secondary addresses and prefixes it hands to
//!   pods are routed, never configured on an interface);
//! - not the loopback interface's, nor loopback addresses anywhere;
//! - not the addresses of the pods' host veths (`eni…`, `vlan…`: [`VethNames`]), which belong
//!   to the pods' side;
//! - not `kube-ipvs0`'s: kube-proxy's IPVS mode puts every ClusterIP on that dummy interface,
//!   and those are Services' addresses, not the node's;
//! - no link-local address (`169.254.0.0/16`, `fe80::/10`): the VPC CNI's pod gateway
//!   `169.254.1.1` and every veth's IPv6 link-local address are not the node's identity, and
//!   a pod cannot tell one node's link-local source from another's.
//!
//! The result is sorted and without duplicates, so an unchanged node compiles to the same
//! entries. [`crate::links::LinkWatch`] says when an address comes or goes, and the next pass
//! reads them again.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::IpAddr;

use netlink_packet_route::address::{AddressAttribute, AddressMessage};

use crate::cni::VethNames;
use crate::netlink::{self, Link};

/// The dummy interface on which kube-proxy's IPVS mode configures every ClusterIP.
const IPVS_INTERFACE: &str = "kube-ipvs0";

/// One address of one interface, as the kernel lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceAddress {
    /// The interface's name.
    pub ifname: String,
    /// Whether the interface is a loopback (`IFF_LOOPBACK`).
    pub loopback: bool,
    /// The address.
    pub addr: IpAddr,
}

/// The node's own addresses among `addresses`, sorted; see the module doc. `veths` names the
/// pods' host veths.
pub fn node_addresses(addresses: &[InterfaceAddress], veths: &VethNames) -> Vec<IpAddr> {
    let kept: BTreeSet<IpAddr> = addresses
        .iter()
        .filter(|a| {
            !a.loopback
                && !veths.matches(&a.ifname)
                && a.ifname != IPVS_INTERFACE
                && !a.addr.is_loopback()
                && !a.addr.is_unspecified()
                && !is_link_local(a.addr)
        })
        .map(|a| a.addr)
        .collect();
    kept.into_iter().collect()
}

fn is_link_local(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => v6.is_unicast_link_local(),
    }
}

/// Every IPv4 and IPv6 address of every interface in the calling thread's network
/// namespace.
pub fn read() -> io::Result<Vec<InterfaceAddress>> {
    let socket = netlink::socket()?;
    for _ in 0..netlink::DUMP_TRIES {
        let links = netlink::links(&socket)?;
        let addresses = netlink::addresses(&socket)?;
        if let Some(found) = interface_addresses(&links, &addresses) {
            return Ok(found);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::Interrupted,
        format!(
            "interfaces appeared between the link and the address dump {} times",
            netlink::DUMP_TRIES
        ),
    ))
}

/// Each of `addresses` with its interface, as `getifaddrs(3)` reads them: the address is
/// `IFA_LOCAL` when there is one (an IPv4 point-to-point link's `IFA_ADDRESS` is the peer's),
/// `IFA_ADDRESS` otherwise; the name is the address's label (`IFA_LABEL`, IPv4) or else its
/// interface's; the loopback flag is its interface's. `None` when an address's interface is
/// not in `links` (it appeared between the two dumps): both are dumped again, as
/// `getifaddrs(3)` does.
pub fn interface_addresses(
    links: &[Link],
    addresses: &[AddressMessage],
) -> Option<Vec<InterfaceAddress>> {
    let links: BTreeMap<u32, &Link> = links.iter().map(|link| (link.index, link)).collect();
    let mut found = Vec::new();
    for message in addresses {
        let link = links.get(&message.header.index)?;
        let (mut local, mut address, mut label) = (None, None, None);
        for attribute in &message.attributes {
            match attribute {
                AddressAttribute::Local(ip) => local = Some(*ip),
                AddressAttribute::Address(ip) => address = Some(*ip),
                AddressAttribute::Label(name) => label = Some(name),
                _ => {}
            }
        }
        if let Some(addr) = local.or(address) {
            found.push(InterfaceAddress {
                ifname: label.unwrap_or(&link.name).clone(),
                loopback: link.loopback,
                addr,
            });
        }
    }
    Some(found)
}

/// The node's own addresses in the calling thread's network namespace ([`read`], then
/// [`node_addresses`]).
pub fn discover(veths: &VethNames) -> io::Result<Vec<IpAddr>> {
    Ok(node_addresses(&read()?, veths))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ifname: &str, addr: &str) -> InterfaceAddress {
        InterfaceAddress {
            ifname: ifname.to_owned(),
            loopback: ifname == "lo",
            addr: addr.parse().unwrap(),
        }
    }

    #[test]
    fn the_node_keeps_its_enis_addresses_and_nothing_else() {
        // An EKS node: eth0 (primary ENI) and eth1 (a secondary ENI) with their primary
        // addresses, a pod's host veth, kube-proxy's IPVS dummy, NodeLocal DNSCache.
        let addresses = [
            at("lo", "127.0.0.1"),
            at("lo", "::1"),
            at("eth0", "198.18.10.17"),
            at("eth0", "2001:db8:10::17"),
            at("eth0", "fe80::4a1:2ff:fe3b:4c5d"),
            at("eth1", "198.18.10.211"),
            at("eth1", "198.18.10.17"),
            at("eni1a2b3c4d5e6", "fe80::8c3e:42ff:fe11:2233"),
            at("eni1a2b3c4d5e6", "198.18.0.99"),
            at("kube-ipvs0", "198.19.0.10"),
            at("nodelocaldns", "169.254.20.10"),
        ];
        let found = node_addresses(&addresses, &VethNames::default());
        let expected: Vec<IpAddr> = ["198.18.10.17", "198.18.10.211", "2001:db8:10::17"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        assert_eq!(found, expected);
        // A global address on the loopback interface is still the loopback's.
        assert!(node_addresses(&[at("lo", "198.18.10.5")], &VethNames::default()).is_empty());
    }

    fn link(name: &str, index: u32) -> Link {
        Link {
            name: name.to_owned(),
            index,
            loopback: name == "lo",
        }
    }

    fn address(index: u32, attributes: Vec<AddressAttribute>) -> AddressMessage {
        let mut message = AddressMessage::default();
        message.header.index = index;
        message.attributes = attributes;
        message
    }

    #[test]
    fn addresses_are_read_as_getifaddrs_reads_them() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let links = [link("lo", 1), link("eth0", 2), link("ppp0", 3)];
        let addresses = [
            address(
                1,
                vec![
                    AddressAttribute::Address(ip("127.0.0.1")),
                    AddressAttribute::Local(ip("127.0.0.1")),
                    AddressAttribute::Label("lo".to_owned()),
                ],
            ),
            // A secondary address with its own label.
            address(
                2,
                vec![
                    AddressAttribute::Address(ip("198.18.10.18")),
                    AddressAttribute::Local(ip("198.18.10.18")),
                    AddressAttribute::Label("eth0:1".to_owned()),
                ],
            ),
            // IPv6: no IFA_LOCAL, no label.
            address(2, vec![AddressAttribute::Address(ip("2001:db8:10::17"))]),
            // Point-to-point: IFA_ADDRESS is the peer, IFA_LOCAL this end.
            address(
                3,
                vec![
                    AddressAttribute::Address(ip("198.19.0.1")),
                    AddressAttribute::Local(ip("198.18.20.1")),
                ],
            ),
            // No address at all: nothing to list.
            address(2, vec![]),
        ];
        assert_eq!(
            interface_addresses(&links, &addresses),
            Some(vec![
                at("lo", "127.0.0.1"),
                at("eth0:1", "198.18.10.18"),
                at("eth0", "2001:db8:10::17"),
                at("ppp0", "198.18.20.1"),
            ])
        );
        // An interface that appeared after the link dump: dump again.
        assert_eq!(interface_addresses(&links[..1], &addresses), None);
    }

    #[test]
    fn this_namespace_is_read_without_its_loopback() {
        let found = discover(&VethNames::default()).expect("netlink dumps");
        assert!(found.iter().all(|a| !a.is_loopback()), "{found:?}");
    }
}
