//! The node's host veths as the kernel reports them, and a netlink watch that says at once when
//! one appears, a pod's host route changes, or the node's own addresses change — without
//! waiting for the Kubernetes watch.
//!
//! Why: the VPC CNI creates a pod's veth and host route during CNI ADD, before the kubelet
//! starts the pod's containers, and seconds before the pod's address reaches the API server
//! and the agent's watch. [`LinkWatch`] closes that gap: a `NETLINK_ROUTE` socket bound to the
//! link, route and rule multicast groups (`RTNLGRP_LINK`, `RTNLGRP_IPV4_ROUTE`,
//! `RTNLGRP_IPV6_ROUTE`, `RTNLGRP_IPV4_RULE`, `RTNLGRP_IPV6_RULE`), and when asked the address
//! groups (`RTNLGRP_IPV4_IFADDR`, `RTNLGRP_IPV6_IFADDR`), of the calling thread's network
//! namespace, read through tokio's `AsyncFd` (no polling). [`parse`] turns a datagram of
//! messages into [`NodeEvents`]:
//! - `RTM_NEWLINK` of a pod veth (`eni…`, `vlan…`: [`VethNames`]) →
//!   [`NodeEvents::new_links`]: the agent attaches the probe to it right away; in strict mode
//!   the probe then denies the pod's traffic (unknown endpoint) until its entries are written.
//! - `RTM_DELLINK` of such an interface, `RTM_NEWROUTE`/`RTM_DELROUTE` of a host route
//!   (`/32`, `/128`; not the local table's addresses of this host), or `RTM_NEWRULE`/
//!   `RTM_DELRULE` (a rule decides which tables hold pods' routes: a branch ENI's `iif` rules
//!   come after its route) → [`NodeEvents::changed`]: the next pass should discover again (a
//!   pod's route arrived after the pass that saw its address, or a pod left).
//! - `RTM_NEWADDR`/`RTM_DELADDR` of an address wider than link scope →
//!   [`NodeEvents::addresses_changed`]: the node's own addresses
//!   ([`crate::node_addresses`]) are read again by the next pass. Link-local and host-scope
//!   addresses (every new veth's `fe80::`, the loopback's) are never node addresses and start
//!   nothing.
//! - A full socket buffer (`ENOBUFS`: notifications were dropped) → [`NodeEvents::overflowed`]:
//!   the caller lists every pod veth again with [`pod_links`].
//!
//! Everything runs in the network namespace of the thread that opened the socket (the agent
//! runs with `hostNetwork`: the node's).

use std::ffi::CStr;
use std::io;

use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};
use tokio::io::{Interest, unix::AsyncFd};

use crate::cni::VethNames;
use crate::endpoints::Veth;

/// `nlmsghdr`: length, type, flags, sequence, port id.
const NLMSG_HDRLEN: usize = 16;
/// `ifinfomsg`: family, pad, type, index, flags, change.
const IFINFOMSG_LEN: usize = 16;
/// `rtmsg`: family, dst_len, src_len, tos, table, protocol, scope, type, flags.
const RTMSG_LEN: usize = 12;
/// `rtattr`: length, type.
const RTA_HDRLEN: usize = 4;
/// The local routing table (addresses of this host).
const RT_TABLE_LOCAL: u8 = 255;
/// `ifaddrmsg`: family, prefix length, flags, scope, index.
const IFADDRMSG_LEN: usize = 8;
/// `RT_SCOPE_LINK`: scopes from here on (link, host, nowhere) are not the node's addresses.
const RT_SCOPE_LINK: u8 = 253;
/// Receive buffer for one datagram: netlink notifications are far smaller.
const RECV_BUFFER: usize = 64 * 1024;

/// What one read of the watch saw.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct NodeEvents {
    /// Pod veths that were created or changed (`RTM_NEWLINK`), in the order of
    /// the messages; a link may appear more than once.
    pub new_links: Vec<Veth>,
    /// A pod veth went away, or a host route came or went.
    pub changed: bool,
    /// An address of the node came or went (only reported when the watch was opened with
    /// the address groups).
    pub addresses_changed: bool,
    /// The kernel dropped notifications (the socket buffer was full): list again.
    pub overflowed: bool,
}

impl NodeEvents {
    /// Whether the next pass should discover the node's endpoints (and addresses) again.
    pub fn relevant(&self) -> bool {
        !self.new_links.is_empty() || self.changed || self.addresses_changed || self.overflowed
    }
}

/// The pod veths ([`VethNames::matches`]) in the calling thread's network namespace.
pub fn pod_links(names: &VethNames) -> io::Result<Vec<Veth>> {
    let mut links = all_links()?;
    links.retain(|link| names.matches(&link.ifname));
    Ok(links)
}

/// Every interface in the calling thread's network namespace, by `if_nameindex(3)` (a
/// netlink dump of that namespace; `/sys/class/net` would show the namespace sysfs was
/// mounted in).
pub fn all_links() -> io::Result<Vec<Veth>> {
    // SAFETY: no arguments; the result is freed below.
    let list = unsafe { libc::if_nameindex() };
    if list.is_null() {
        return Err(io::Error::last_os_error());
    }
    let mut links = Vec::new();
    let mut entry = list;
    // SAFETY: the array ends with an entry of index 0 and a null name; every name before it is
    // a NUL-terminated string owned by the array, which lives until `if_freenameindex`.
    unsafe {
        while (*entry).if_index != 0 && !(*entry).if_name.is_null() {
            let name = CStr::from_ptr((*entry).if_name).to_string_lossy();
            links.push(Veth {
                ifname: name.into_owned(),
                ifindex: (*entry).if_index,
            });
            entry = entry.add(1);
        }
        libc::if_freenameindex(list);
    }
    links.sort();
    Ok(links)
}

/// A netlink socket subscribed to the link and route changes of the namespace it was opened
/// in, and to its address changes when asked.
#[derive(Debug)]
pub struct LinkWatch {
    socket: AsyncFd<Socket>,
    names: VethNames,
    buffer: Vec<u8>,
}

impl LinkWatch {
    /// Subscribes to the link and route changes of the calling thread's network namespace,
    /// and to its address changes when `addresses` is set; only pod veths (`names`) are
    /// reported. Needs a tokio runtime with I/O enabled.
    pub fn open(names: &VethNames, addresses: bool) -> io::Result<LinkWatch> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.set_non_blocking(true)?;
        let mut groups = libc::RTMGRP_LINK
            | libc::RTMGRP_IPV4_ROUTE
            | libc::RTMGRP_IPV6_ROUTE
            | libc::RTMGRP_IPV4_RULE;
        if addresses {
            groups |= libc::RTMGRP_IPV4_IFADDR | libc::RTMGRP_IPV6_IFADDR;
        }
        socket.bind(&SocketAddr::new(0, groups as u32))?;
        // The IPv6 rules have no bit in the legacy group mask.
        socket.add_membership(libc::RTNLGRP_IPV6_RULE)?;
        // SAFETY: the watch owns the socket for as long as it is registered and never
        // replaces its descriptor.
        let socket = unsafe { AsyncFd::register_with_interest(socket, Interest::READABLE) }?;
        Ok(LinkWatch {
            socket,
            names: names.clone(),
            buffer: Vec::with_capacity(RECV_BUFFER),
        })
    }

    /// Waits for the socket to be readable, then reads every datagram queued. Cancel-safe:
    /// nothing is consumed before the read that returns.
    pub async fn next(&mut self) -> io::Result<NodeEvents> {
        loop {
            let mut ready = self.socket.readable().await?;
            let mut events = NodeEvents::default();
            let mut read_any = false;
            loop {
                self.buffer.clear();
                let error = match self.socket.get_ref().recv(&mut self.buffer, 0) {
                    Ok(_) => {
                        read_any = true;
                        parse(&self.buffer, &self.names, &mut events);
                        continue;
                    }
                    Err(error) => error,
                };
                match error.raw_os_error() {
                    Some(libc::EAGAIN) => {
                        ready.clear_ready();
                        break;
                    }
                    Some(libc::EINTR) => continue,
                    Some(libc::ENOBUFS) => {
                        read_any = true;
                        events.overflowed = true;
                    }
                    _ => return Err(error),
                }
            }
            if read_any {
                return Ok(events);
            }
        }
    }
}

/// Adds what the netlink messages of one datagram say to `events`; see the module doc.
/// Malformed or truncated messages end the parse (the kernel does not send them).
pub fn parse(datagram: &[u8], names: &VethNames, events: &mut NodeEvents) {
    let mut rest = datagram;
    while rest.len() >= NLMSG_HDRLEN {
        let length = u32::from_ne_bytes(rest[0..4].try_into().unwrap_or_default()) as usize;
        let kind = u16::from_ne_bytes(rest[4..6].try_into().unwrap_or_default());
        if length < NLMSG_HDRLEN || length > rest.len() {
            return;
        }
        let body = &rest[NLMSG_HDRLEN..length];
        match kind {
            libc::RTM_NEWLINK | libc::RTM_DELLINK => {
                if let Some(veth) = link(body).filter(|veth| names.matches(&veth.ifname)) {
                    if kind == libc::RTM_NEWLINK {
                        events.new_links.push(veth);
                    } else {
                        events.changed = true;
                    }
                }
            }
            libc::RTM_NEWROUTE | libc::RTM_DELROUTE => {
                events.changed |= is_host_route(body);
            }
            // A rule decides which tables hold the pods' routes: a branch ENI's `iif` rules
            // come after its route, in its VLAN's table.
            libc::RTM_NEWRULE | libc::RTM_DELRULE => events.changed = true,
            libc::RTM_NEWADDR | libc::RTM_DELADDR => {
                events.addresses_changed |= is_wider_than_link(body);
            }
            _ => {}
        }
        rest = &rest[align(length).min(rest.len())..];
    }
}

/// Netlink messages and attributes are 4-byte aligned.
fn align(length: usize) -> usize {
    (length + 3) & !3
}

/// The index and name of an `RTM_*LINK` message's interface.
fn link(body: &[u8]) -> Option<Veth> {
    let header = body.get(..IFINFOMSG_LEN)?;
    let ifindex = i32::from_ne_bytes(header[4..8].try_into().ok()?);
    let name = attributes(&body[IFINFOMSG_LEN..])
        .find(|(kind, _)| *kind == libc::IFLA_IFNAME)
        .map(|(_, value)| value)?;
    let name = CStr::from_bytes_until_nul(name).ok()?.to_str().ok()?;
    Some(Veth {
        ifname: name.to_owned(),
        ifindex: u32::try_from(ifindex).ok()?,
    })
}

/// Whether an `RTM_*ROUTE` message is about a host route (a `/32` or `/128`) outside the
/// local table.
fn is_host_route(body: &[u8]) -> bool {
    let Some(header) = body.get(..RTMSG_LEN) else {
        return false;
    };
    let (family, dst_len, table) = (header[0], header[1], header[4]);
    let host = match i32::from(family) {
        libc::AF_INET => dst_len == 32,
        libc::AF_INET6 => dst_len == 128,
        _ => false,
    };
    host && table != RT_TABLE_LOCAL
}

/// Whether an `RTM_*ADDR` message is about an address of a scope wider than the link (global
/// or site): one that may be a node address.
fn is_wider_than_link(body: &[u8]) -> bool {
    body.get(..IFADDRMSG_LEN)
        .is_some_and(|header| header[3] < RT_SCOPE_LINK)
}

/// The `(type, value)` of each attribute in `bytes`.
fn attributes(mut bytes: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if bytes.len() < RTA_HDRLEN {
            return None;
        }
        let length = usize::from(u16::from_ne_bytes([bytes[0], bytes[1]]));
        let kind = u16::from_ne_bytes([bytes[2], bytes[3]]);
        if length < RTA_HDRLEN || length > bytes.len() {
            return None;
        }
        let value = &bytes[RTA_HDRLEN..length];
        bytes = &bytes[align(length).min(bytes.len())..];
        Some((kind, value))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A netlink message of `kind` with `header` and `(type, value)` attributes.
    fn message(kind: u16, header: &[u8], attributes: &[(u16, &[u8])]) -> Vec<u8> {
        let mut body = header.to_vec();
        for (kind, value) in attributes {
            let length = (RTA_HDRLEN + value.len()) as u16;
            body.extend(length.to_ne_bytes());
            body.extend(kind.to_ne_bytes());
            body.extend(*value);
            body.resize(align(body.len()), 0);
        }
        let mut message = ((NLMSG_HDRLEN + body.len()) as u32).to_ne_bytes().to_vec();
        message.extend(kind.to_ne_bytes());
        message.extend([0; 10]);
        message.extend(body);
        message
    }

    fn ifinfo(index: i32) -> Vec<u8> {
        let mut header = vec![0; IFINFOMSG_LEN];
        header[4..8].copy_from_slice(&index.to_ne_bytes());
        header
    }

    fn rtmsg(family: i32, dst_len: u8, table: u8) -> Vec<u8> {
        let mut header = vec![0; RTMSG_LEN];
        header[0] = family as u8;
        header[1] = dst_len;
        header[4] = table;
        header
    }

    fn parsed(messages: &[Vec<u8>]) -> NodeEvents {
        let mut events = NodeEvents::default();
        parse(&messages.concat(), &VethNames::default(), &mut events);
        events
    }

    #[test]
    fn new_links_of_the_prefix_are_reported_with_their_index() {
        let events = parsed(&[
            message(
                libc::RTM_NEWLINK,
                &ifinfo(7),
                &[(libc::IFLA_IFNAME, b"eni0a1b2c3d4e5\0")],
            ),
            message(
                libc::RTM_NEWLINK,
                &ifinfo(8),
                &[(libc::IFLA_IFNAME, b"eth1\0")],
            ),
            message(
                libc::RTM_NEWLINK,
                &ifinfo(9),
                &[
                    (libc::IFLA_MTU, &9001u32.to_ne_bytes()),
                    (libc::IFLA_IFNAME, b"enif\0"),
                ],
            ),
        ]);
        assert_eq!(
            events.new_links,
            [
                Veth {
                    ifname: "eni0a1b2c3d4e5".to_owned(),
                    ifindex: 7
                },
                Veth {
                    ifname: "enif".to_owned(),
                    ifindex: 9
                },
            ]
        );
        assert!(!events.changed);
    }

    #[test]
    fn removed_links_and_host_routes_ask_for_a_discovery() {
        let gone = parsed(&[message(
            libc::RTM_DELLINK,
            &ifinfo(7),
            &[(libc::IFLA_IFNAME, b"eni0a1b2c3d4e5\0")],
        )]);
        assert!(gone.changed && gone.new_links.is_empty());
        assert!(
            !parsed(&[message(
                libc::RTM_DELLINK,
                &ifinfo(8),
                &[(libc::IFLA_IFNAME, b"eth1\0")]
            )])
            .relevant()
        );

        for kind in [libc::RTM_NEWRULE, libc::RTM_DELRULE] {
            let events = parsed(&[message(kind, &[0; 12], &[])]);
            assert!(events.changed && events.relevant());
        }

        for (family, dst_len, table, relevant) in [
            (libc::AF_INET, 32, 254, true),
            (libc::AF_INET6, 128, 254, true),
            (libc::AF_INET, 24, 254, false),
            (libc::AF_INET, 32, RT_TABLE_LOCAL, false),
            (libc::AF_INET6, 64, 254, false),
        ] {
            for kind in [libc::RTM_NEWROUTE, libc::RTM_DELROUTE] {
                let events = parsed(&[message(kind, &rtmsg(family, dst_len, table), &[])]);
                assert_eq!(
                    events.relevant(),
                    relevant,
                    "{family} /{dst_len} table {table}"
                );
            }
        }
    }

    fn ifaddr(family: i32, scope: u8) -> Vec<u8> {
        let mut header = vec![0; IFADDRMSG_LEN];
        header[0] = family as u8;
        header[3] = scope;
        header
    }

    #[test]
    fn node_address_changes_of_global_scope_ask_for_a_pass() {
        const RT_SCOPE_UNIVERSE: u8 = 0;
        const RT_SCOPE_HOST: u8 = 254;
        for (family, scope, relevant) in [
            (libc::AF_INET, RT_SCOPE_UNIVERSE, true),
            (libc::AF_INET6, RT_SCOPE_UNIVERSE, true),
            (libc::AF_INET6, RT_SCOPE_LINK, false),
            (libc::AF_INET, RT_SCOPE_HOST, false),
        ] {
            for kind in [libc::RTM_NEWADDR, libc::RTM_DELADDR] {
                let events = parsed(&[message(kind, &ifaddr(family, scope), &[])]);
                assert_eq!(events.addresses_changed, relevant, "{family} scope {scope}");
                assert_eq!(events.relevant(), relevant);
                assert!(!events.changed && events.new_links.is_empty());
            }
        }
    }

    #[test]
    fn truncated_datagrams_end_the_parse() {
        let whole = message(
            libc::RTM_NEWLINK,
            &ifinfo(7),
            &[(libc::IFLA_IFNAME, b"enia\0")],
        );
        for cut in 0..whole.len() {
            let mut events = NodeEvents::default();
            parse(&whole[..cut], &VethNames::default(), &mut events);
            assert!(events.new_links.is_empty(), "cut at {cut}");
        }
        let mut events = NodeEvents::default();
        parse(
            &[whole.clone(), whole].concat(),
            &VethNames::default(),
            &mut events,
        );
        assert_eq!(events.new_links.len(), 2);
    }
}
