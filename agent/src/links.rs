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

use std::io;

use netlink_packet_core::{NetlinkBuffer, NetlinkMessage, NetlinkPayload};
use netlink_packet_route::address::{AddressMessage, AddressScope};
use netlink_packet_route::link::LinkMessage;
use netlink_packet_route::route::{RouteAttribute, RouteMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};
use tokio::io::{Interest, unix::AsyncFd};

use crate::cni::VethNames;
use crate::endpoints::Veth;
use crate::netlink;

/// The local routing table (addresses of this host).
const RT_TABLE_LOCAL: u32 = 255;
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

/// The pod veths ([`VethNames::matches`]) in the calling thread's network namespace, sorted:
/// an `RTM_GETLINK` dump of that namespace ([`netlink::links`]; `/sys/class/net` would show
/// the namespace sysfs was mounted in).
pub fn pod_links(names: &VethNames) -> io::Result<Vec<Veth>> {
    let mut links: Vec<Veth> = netlink::links(&netlink::socket()?)?
        .into_iter()
        .filter(|link| names.matches(&link.name))
        .map(|link| Veth {
            ifname: link.name,
            ifindex: link.index,
        })
        .collect();
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
/// A truncated message ends the parse, one the crate cannot read is skipped (the kernel sends
/// neither).
pub fn parse(datagram: &[u8], names: &VethNames, events: &mut NodeEvents) {
    let mut rest = datagram;
    while let Ok(buffer) = NetlinkBuffer::new_checked(rest) {
        let length = buffer.length() as usize;
        if let Ok(NetlinkMessage {
            payload: NetlinkPayload::InnerMessage(message),
            ..
        }) = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&rest[..length])
        {
            notice(message, names, events);
        }
        rest = &rest[length.next_multiple_of(4).min(rest.len())..];
    }
}

/// Adds what one notification says to `events`.
fn notice(message: RouteNetlinkMessage, names: &VethNames, events: &mut NodeEvents) {
    match message {
        RouteNetlinkMessage::NewLink(link) => {
            if let Some(veth) = pod_veth(&link, names) {
                events.new_links.push(veth);
            }
        }
        RouteNetlinkMessage::DelLink(link) => {
            events.changed |= pod_veth(&link, names).is_some();
        }
        RouteNetlinkMessage::NewRoute(route) | RouteNetlinkMessage::DelRoute(route) => {
            events.changed |= is_host_route(&route);
        }
        // A rule decides which tables hold the pods' routes: a branch ENI's `iif` rules
        // come after its route, in its VLAN's table.
        RouteNetlinkMessage::NewRule(_) | RouteNetlinkMessage::DelRule(_) => events.changed = true,
        RouteNetlinkMessage::NewAddress(address) | RouteNetlinkMessage::DelAddress(address) => {
            events.addresses_changed |= is_wider_than_link(&address);
        }
        _ => {}
    }
}

/// The index and name of an `RTM_*LINK` message's interface, when it is a pod veth.
fn pod_veth(link: &LinkMessage, names: &VethNames) -> Option<Veth> {
    let name = netlink::link_name(link).filter(|name| names.matches(name))?;
    Some(Veth {
        ifname: name.to_owned(),
        ifindex: link.header.index,
    })
}

/// Whether an `RTM_*ROUTE` message is about a host route (a `/32` or `/128`) outside the
/// local table.
fn is_host_route(route: &RouteMessage) -> bool {
    let header = &route.header;
    let host = match header.address_family {
        AddressFamily::Inet => header.destination_prefix_length == 32,
        AddressFamily::Inet6 => header.destination_prefix_length == 128,
        _ => false,
    };
    // A table above 255 is only in the attribute.
    let table = route
        .attributes
        .iter()
        .find_map(|attribute| match attribute {
            RouteAttribute::Table(table) => Some(*table),
            _ => None,
        })
        .unwrap_or(u32::from(header.table));
    host && table != RT_TABLE_LOCAL
}

/// Whether an `RTM_*ADDR` message is about an address of a scope wider than the link (global
/// or site): one that may be a node address. Scopes from link on (link, host, nowhere) are
/// not the node's addresses.
fn is_wider_than_link(address: &AddressMessage) -> bool {
    u8::from(address.header.scope) < u8::from(AddressScope::Link)
}

#[cfg(test)]
mod tests {
    use netlink_packet_core::NLM_F_REQUEST;
    use netlink_packet_route::link::LinkAttribute;
    use netlink_packet_route::rule::RuleMessage;

    use super::*;

    /// `message` serialized as the kernel sends it.
    fn message(message: RouteNetlinkMessage) -> Vec<u8> {
        netlink::encode(NLM_F_REQUEST, message)
    }

    /// A link message of interface `index` with `attributes`.
    fn link(index: u32, attributes: Vec<LinkAttribute>) -> LinkMessage {
        let mut link = LinkMessage::default();
        link.header.index = index;
        link.attributes = attributes;
        link
    }

    fn named(index: u32, name: &str) -> LinkMessage {
        link(index, vec![LinkAttribute::IfName(name.to_owned())])
    }

    /// A route message of `family`, prefix length `dst_len`, in `table`: in the header up to
    /// 255, above in the attribute (the header says `RT_TABLE_COMPAT`), as the kernel does.
    fn route(family: AddressFamily, dst_len: u8, table: u32) -> RouteMessage {
        const RT_TABLE_COMPAT: u8 = 252;
        let mut route = RouteMessage::default();
        route.header.address_family = family;
        route.header.destination_prefix_length = dst_len;
        route.header.table = u8::try_from(table).unwrap_or(RT_TABLE_COMPAT);
        route.attributes.push(RouteAttribute::Table(table));
        route
    }

    fn parsed(messages: &[Vec<u8>]) -> NodeEvents {
        let mut events = NodeEvents::default();
        parse(&messages.concat(), &VethNames::default(), &mut events);
        events
    }

    #[test]
    fn new_links_of_the_prefix_are_reported_with_their_index() {
        let events = parsed(&[
            message(RouteNetlinkMessage::NewLink(named(7, "eni0a1b2c3d4e5"))),
            message(RouteNetlinkMessage::NewLink(named(8, "eth1"))),
            message(RouteNetlinkMessage::NewLink(link(
                9,
                vec![
                    LinkAttribute::Mtu(9001),
                    LinkAttribute::IfName("enif".to_owned()),
                ],
            ))),
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
        let gone = parsed(&[message(RouteNetlinkMessage::DelLink(named(
            7,
            "eni0a1b2c3d4e5",
        )))]);
        assert!(gone.changed && gone.new_links.is_empty());
        assert!(!parsed(&[message(RouteNetlinkMessage::DelLink(named(8, "eth1")))]).relevant());

        for rule in [
            RouteNetlinkMessage::NewRule(RuleMessage::default()),
            RouteNetlinkMessage::DelRule(RuleMessage::default()),
        ] {
            let events = parsed(&[message(rule)]);
            assert!(events.changed && events.relevant());
        }

        for (family, dst_len, table, relevant) in [
            (AddressFamily::Inet, 32, 254, true),
            (AddressFamily::Inet6, 128, 254, true),
            (AddressFamily::Inet, 24, 254, false),
            (AddressFamily::Inet, 32, RT_TABLE_LOCAL, false),
            (AddressFamily::Inet6, 64, 254, false),
            (AddressFamily::Inet, 32, 1000, true),
        ] {
            let route = route(family, dst_len, table);
            for message in [
                RouteNetlinkMessage::NewRoute(route.clone()),
                RouteNetlinkMessage::DelRoute(route),
            ]
            .map(message)
            {
                assert_eq!(
                    parsed(&[message]).relevant(),
                    relevant,
                    "{family:?} /{dst_len} table {table}"
                );
            }
        }
    }

    #[test]
    fn node_address_changes_of_global_scope_ask_for_a_pass() {
        for (family, scope, relevant) in [
            (AddressFamily::Inet, AddressScope::Universe, true),
            (AddressFamily::Inet6, AddressScope::Universe, true),
            (AddressFamily::Inet6, AddressScope::Link, false),
            (AddressFamily::Inet, AddressScope::Host, false),
        ] {
            let mut address = AddressMessage::default();
            address.header.family = family;
            address.header.scope = scope;
            for message in [
                RouteNetlinkMessage::NewAddress(address.clone()),
                RouteNetlinkMessage::DelAddress(address),
            ]
            .map(message)
            {
                let events = parsed(&[message]);
                assert_eq!(
                    events.addresses_changed, relevant,
                    "{family:?} scope {scope:?}"
                );
                assert_eq!(events.relevant(), relevant);
                assert!(!events.changed && events.new_links.is_empty());
            }
        }
    }

    #[test]
    fn truncated_datagrams_end_the_parse() {
        let whole = message(RouteNetlinkMessage::NewLink(named(7, "enia")));
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
