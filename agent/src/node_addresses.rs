//! The node's own addresses: the sources whose traffic to a local pod passes ingress policy
//! (reason `from-node`), as the NetworkPolicy API requires for kubelet probes and node-local
//! agents.
//!
//! [`read`] lists every address of every interface in the calling thread's network namespace
//! (the agent runs with `hostNetwork`: the node's; in the lab, the lab's node namespace) with
//! `getifaddrs(3)`, which asks the kernel over a `NETLINK_ROUTE` socket of that namespace
//! (`RTM_GETLINK` and `RTM_GETADDR` dumps), both families, secondary addresses included.
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

use std::collections::BTreeSet;
use std::ffi::CStr;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::cni::VethNames;

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
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: `list` is a valid place for the result, freed below.
    if unsafe { libc::getifaddrs(&raw mut list) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut addresses = Vec::new();
    let mut entry = list;
    // SAFETY: a list from getifaddrs: each entry is valid until `freeifaddrs`, its name a
    // NUL-terminated string, its address null or a sockaddr of the family it names (a
    // sockaddr_in for AF_INET, a sockaddr_in6 for AF_INET6).
    unsafe {
        while !entry.is_null() {
            let ifa = &*entry;
            entry = ifa.ifa_next;
            if ifa.ifa_addr.is_null() || ifa.ifa_name.is_null() {
                continue;
            }
            let addr = match i32::from((*ifa.ifa_addr).sa_family) {
                libc::AF_INET => {
                    let sin = &*ifa.ifa_addr.cast::<libc::sockaddr_in>();
                    IpAddr::V4(Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes()))
                }
                libc::AF_INET6 => {
                    let sin6 = &*ifa.ifa_addr.cast::<libc::sockaddr_in6>();
                    IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr))
                }
                _ => continue,
            };
            addresses.push(InterfaceAddress {
                ifname: CStr::from_ptr(ifa.ifa_name).to_string_lossy().into_owned(),
                loopback: ifa.ifa_flags & libc::IFF_LOOPBACK as libc::c_uint != 0,
                addr,
            });
        }
        libc::freeifaddrs(list);
    }
    Ok(addresses)
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

    #[test]
    fn this_namespace_is_read_without_its_loopback() {
        let found = discover(&VethNames::default()).expect("getifaddrs");
        assert!(found.iter().all(|a| !a.is_loopback()), "{found:?}");
    }
}
