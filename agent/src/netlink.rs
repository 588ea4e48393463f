//! What the agent asks the kernel over `NETLINK_ROUTE`, through the rust-netlink crates
//! (`netlink-sys` for the socket, `netlink-packet-route` for the messages): dumps of the rules
//! and routes ([`crate::endpoints`]), of the links ([`crate::links`]) and of the addresses
//! ([`crate::node_addresses`]), and one link by name ([`ifindex`]).
//!
//! A netlink socket lives in the network namespace of the thread that opened it, so every
//! answer is the calling thread's namespace's (the agent runs with `hostNetwork`: the node's).
//! `/sys/class/net` would show the namespace sysfs was mounted in.

use std::io;

use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::address::AddressMessage;
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

/// How often a dump the kernel marks interrupted (the table changed under it) is tried again.
pub const DUMP_TRIES: usize = 3;
/// `IFNAMSIZ`: an interface name is shorter, its NUL included.
const IFNAMSIZ: usize = 16;

/// One interface, as the link dump lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// The interface's name.
    pub name: String,
    /// The interface's index.
    pub index: u32,
    /// Whether the interface is a loopback (`IFF_LOOPBACK`).
    pub loopback: bool,
}

/// A `NETLINK_ROUTE` socket of the calling thread's network namespace, connected to the
/// kernel.
pub fn socket() -> io::Result<Socket> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    Ok(socket)
}

/// `message` as one netlink request of `flags` (`NLM_F_REQUEST` and the like), ready to send.
pub fn encode(flags: u16, message: RouteNetlinkMessage) -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(message));
    packet.finalize();
    let mut bytes = vec![0; packet.buffer_len()];
    packet.serialize(&mut bytes);
    bytes
}

/// A message the crate cannot read, as an I/O error.
fn invalid(error: impl std::error::Error + Send + Sync + 'static) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, error)
}

/// Sends a dump request and collects the answer; a dump the kernel marks interrupted is
/// tried again, up to [`DUMP_TRIES`] times.
pub fn dump(socket: &Socket, request: RouteNetlinkMessage) -> io::Result<Vec<RouteNetlinkMessage>> {
    let bytes = encode(NLM_F_REQUEST | NLM_F_DUMP, request);
    for _ in 0..DUMP_TRIES {
        socket.send(&bytes, 0)?;
        let mut messages = Vec::new();
        let mut interrupted = false;
        'datagrams: loop {
            let (datagram, _) = socket.recv_from_full()?;
            let mut rest = datagram.as_slice();
            while !rest.is_empty() {
                let message =
                    NetlinkMessage::<RouteNetlinkMessage>::deserialize(rest).map_err(invalid)?;
                interrupted |= message.header.flags & NLM_F_DUMP_INTR != 0;
                let length = (message.header.length as usize).next_multiple_of(4);
                match message.payload {
                    NetlinkPayload::Done(_) => break 'datagrams,
                    NetlinkPayload::Error(error) if error.code.is_some() => {
                        return Err(error.to_io());
                    }
                    NetlinkPayload::InnerMessage(inner) => messages.push(inner),
                    _ => {}
                }
                if length == 0 || length > rest.len() {
                    break;
                }
                rest = &rest[length..];
            }
        }
        if !interrupted {
            return Ok(messages);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::Interrupted,
        format!("the kernel interrupted the dump {DUMP_TRIES} times (tables changing)"),
    ))
}

/// The name of a link message's interface (`IFLA_IFNAME`).
pub fn link_name(link: &LinkMessage) -> Option<&str> {
    link.attributes
        .iter()
        .find_map(|attribute| match attribute {
            LinkAttribute::IfName(name) => Some(name.as_str()),
            _ => None,
        })
}

/// Every interface of the socket's network namespace (an `RTM_GETLINK` dump), in the kernel's
/// order.
pub fn links(socket: &Socket) -> io::Result<Vec<Link>> {
    let messages = dump(socket, RouteNetlinkMessage::GetLink(LinkMessage::default()))?;
    Ok(messages
        .iter()
        .filter_map(|message| match message {
            RouteNetlinkMessage::NewLink(link) => Some(Link {
                name: link_name(link)?.to_owned(),
                index: link.header.index,
                loopback: link.header.flags.contains(LinkFlags::Loopback),
            }),
            _ => None,
        })
        .collect())
}

/// Every address of every interface of the socket's network namespace, IPv4 and IPv6,
/// secondary addresses included (an `RTM_GETADDR` dump).
pub fn addresses(socket: &Socket) -> io::Result<Vec<AddressMessage>> {
    let messages = dump(
        socket,
        RouteNetlinkMessage::GetAddress(AddressMessage::default()),
    )?;
    Ok(messages
        .into_iter()
        .filter_map(|message| match message {
            RouteNetlinkMessage::NewAddress(address) => Some(address),
            _ => None,
        })
        .collect())
}

/// The index of interface `ifname` in the calling thread's network namespace, if it exists:
/// one `RTM_GETLINK` request by name (no dump), as cheap as `if_nametoindex(3)` was. A name
/// no interface has (`ENODEV`), one no interface can have (empty, too long, a NUL in it), and
/// a request that fails are all `None`, as with `if_nametoindex(3)`.
pub fn ifindex(ifname: &str) -> Option<u32> {
    if ifname.is_empty() || ifname.len() >= IFNAMSIZ || ifname.contains('\0') {
        return None;
    }
    match link_index(ifname) {
        Ok(index) => index,
        Err(error) => {
            tracing::debug!(ifname, %error, "the interface's index could not be read");
            None
        }
    }
}

fn link_index(ifname: &str) -> io::Result<Option<u32>> {
    let socket = socket()?;
    let mut request = LinkMessage::default();
    request
        .attributes
        .push(LinkAttribute::IfName(ifname.to_owned()));
    socket.send(
        &encode(NLM_F_REQUEST, RouteNetlinkMessage::GetLink(request)),
        0,
    )?;
    let (datagram, _) = socket.recv_from_full()?;
    let answer = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&datagram).map_err(invalid)?;
    match answer.payload {
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) => {
            Ok(Some(link.header.index))
        }
        NetlinkPayload::Error(error) if error.to_io().raw_os_error() == Some(libc::ENODEV) => {
            Ok(None)
        }
        NetlinkPayload::Error(error) => Err(error.to_io()),
        other => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unexpected answer to RTM_GETLINK: {other:?}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_namespace_lists_its_loopback_and_names_it_by_index() {
        let links = links(&socket().expect("socket")).expect("link dump");
        let lo = links.iter().find(|link| link.name == "lo").expect("lo");
        assert!(lo.loopback);
        assert!(links.iter().filter(|link| link.loopback).count() == 1);
        assert_eq!(ifindex("lo"), Some(lo.index));
        for name in ["", "no-such-link0", "a-name-too-long-for-a-link", "lo\0"] {
            assert_eq!(ifindex(name), None, "{name:?}");
        }
    }
}
