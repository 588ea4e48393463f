//! Header parsing: from the skb to a [`Packet`], or a reason not to decide it.
//!
//! Choices, made on purpose and tested in `enforcer/tests/bpf_datapath.rs` (and, where the
//! kernel around the hooks decides what they see, through real veths in
//! `enforcer/tests/veth_datapath.rs`):
//! - ARP passes without a decision (NetworkPolicy is layer 3/4; the pod needs it). Every other
//!   non-IP frame is dropped: a pod on the VPC CNI speaks only IP and ARP, and a frame the probe
//!   cannot read must not slip past policy. A VLAN tag is rarely still in the frame here: the
//!   kernel takes a received frame's outer tag into the skb's metadata before TC ingress, and a
//!   veth sends the tag as metadata too, so such frames are decided as the IP packets they
//!   carry. A tag left in the data (the inner tag of QinQ) is a non-IP ethertype: dropped.
//! - IPv6 packets with an IPv4-mapped source or destination (`::ffff:a.b.c.d`) are malformed:
//!   the 16-byte form of the maps stores IPv4 that way, and such a packet is IPv6, not the
//!   IPv4 host it names.
//! - IPv4 options are skipped by the header length and not interpreted; a header length below
//!   20 bytes is malformed.
//! - IPv6 extension headers (hop-by-hop, routing, destination options, fragment, AH) are walked,
//!   at most [`MAX_IPV6_EXT_HEADERS`] of them; more, or a truncated one, is malformed.
//! - Fragments: the first fragment carries the ports and is decided like any packet; the
//!   fragments that follow take its verdict (see `decide`). A non-first fragment whose first
//!   fragment was not seen is denied, since its ports cannot be known.
//! - Protocols other than TCP, UDP, SCTP, ICMP and ICMPv6 are decided with port 0, so only
//!   rules without `ports` (which match every protocol) can allow them.
//! - ICMPv6 neighbor discovery with hop limit 255 (RFC 4861 §7.1) passes without a decision,
//!   like ARP for IPv4.
//! - ICMP errors keep the packet they quote ([`Quoted`]), so `decide` can let an error about a
//!   tracked flow through (path MTU discovery needs "packet too big" from any router); only
//!   errors no longer than a router sends (576 bytes of IPv4, 1280 of IPv6) are read so.
//! - Truncated headers are malformed. Malformed packets are denied (fail closed).
//!
//! Headers are read straight from the skb's linear data when they lie in it (the common case,
//! without a helper call: 55–90 ns less per packet in `bench datapath`), else with
//! `bpf_skb_load_bytes`, which also reaches paged data; past the packet's end both fail.

use aya_ebpf::{
    cty::c_void,
    helpers::{bpf_jiffies64, bpf_ktime_get_coarse_ns, bpf_skb_load_bytes},
    programs::TcContext,
};
use tollgate_schemas::{Config, Direction, proto};

use crate::maps::{HEADER, HEADER_WORDS};

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_ARP: u16 = 0x0806;

/// IPv6 extension headers walked before giving up as malformed.
pub const MAX_IPV6_EXT_HEADERS: usize = 6;

const IPV6_HOPOPTS: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_AH: u8 = 51;
const IPV6_DSTOPTS: u8 = 60;

/// A 16-byte address (IPv4 in the mapped form the maps use), 8-byte aligned: LLVM copies it a
/// word at a time, and its copies on the stack stay aligned, as the verifier requires there
/// (see [`crate::stack`]; without misaligned access allowed, the BPF backend copied an array
/// it could not prove aligned one byte at a time).
#[derive(Clone, Copy)]
#[repr(C, align(8))]
pub struct Addr(pub [u8; 16]);

impl Addr {
    /// `::` (no address yet).
    pub const ZERO: Self = Self([0; 16]);

    /// The IPv4-mapped form of `v4` (`::ffff:a.b.c.d`), written as two 8-byte words.
    #[inline(always)]
    fn mapped(v4: [u8; 4]) -> Self {
        let [a, b, c, d] = v4;
        Self::from_words([0, u64::from_ne_bytes([0, 0, 0xff, 0xff, a, b, c, d])])
    }

    /// Whether the address is IPv4-mapped (`::ffff:0:0/96`, RFC 4291 §2.5.5.2), compared a
    /// word at a time.
    #[inline(always)]
    fn is_v4_mapped(&self) -> bool {
        let [low, high] = self.words();
        let [a, b, c, d, ..] = high.to_ne_bytes();
        low == 0 && [a, b, c, d] == [0, 0, 0xff, 0xff]
    }

    #[inline(always)]
    const fn from_words(words: [u64; 2]) -> Self {
        // SAFETY: 16 bytes either way, and every bit pattern is a valid `u8`.
        Self(unsafe { core::mem::transmute::<[u64; 2], [u8; 16]>(words) })
    }

    #[inline(always)]
    const fn words(&self) -> [u64; 2] {
        // SAFETY: 16 bytes either way, and every bit pattern is a valid `u64`.
        unsafe { core::mem::transmute::<[u8; 16], [u64; 2]>(self.0) }
    }
}

/// The packet being decided: filled in place by [`parse`], then read by every record.
pub struct Packet {
    /// Direction seen from the endpoint's pod.
    pub direction: Direction,
    /// When the program ran, ns of `CLOCK_MONOTONIC` as of the kernel's last tick (coarse: 4 ms
    /// at `HZ=250`), from `jiffies`. The exact clock cost 40 ns of every packet here (the TSC is
    /// slow to read on a virtual machine), the coarse one's helper 20, `jiffies` (a load)
    /// almost nothing; records keep whole seconds.
    pub now: u64,
    /// Interface the packet crossed.
    pub ifindex: u32,
    /// skb length in bytes, from the link-layer header on.
    pub len: u64,
    /// 4 or 6.
    pub family: u8,
    /// IANA protocol number of the layer-4 payload.
    pub protocol: u8,
    /// Source address.
    pub src: Addr,
    /// Destination address.
    pub dst: Addr,
    /// Source port (host order); ICMP echo identifier; 0 otherwise.
    pub src_port: u16,
    /// Destination port (host order); ICMP echo identifier; 0 otherwise.
    pub dst_port: u16,
    /// TCP flags; 0 for other protocols.
    pub tcp_flags: u8,
    /// ICMP/ICMPv6 type.
    pub icmp_type: u8,
    /// ICMP/ICMPv6 code.
    pub icmp_code: u8,
    /// Fragment position.
    pub fragment: Fragment,
    /// For an ICMP error: the packet it is about, as quoted in it.
    pub quoted: Quoted,
}

/// The packet an ICMP error quotes (RFC 792, RFC 4443 §2.4): its addresses, protocol and
/// ports, enough to find its flow in conntrack.
pub struct Quoted {
    /// 1 when the fields below hold a quoted packet, 0 otherwise.
    pub present: u8,
    /// IANA protocol number of the quoted packet.
    pub protocol: u8,
    /// Source address of the quoted packet.
    pub src: Addr,
    /// Destination address of the quoted packet.
    pub dst: Addr,
    /// Source port (or echo identifier) of the quoted packet.
    pub src_port: u16,
    /// Destination port (or echo identifier) of the quoted packet.
    pub dst_port: u16,
}

/// Where a packet stands in a fragmented datagram.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Fragment {
    /// Not fragmented.
    None,
    /// First fragment (offset 0, more fragments follow): has the layer-4 header.
    First { id: u32 },
    /// Any later fragment: no layer-4 header.
    Later { id: u32 },
}

impl Fragment {
    /// The position of a packet whose fragment offset is `offset` (8-byte units) and whose
    /// more-fragments flag is `more`.
    #[inline(always)]
    fn of(id: u32, offset: u16, more: bool) -> Self {
        if offset != 0 {
            Self::Later { id }
        } else if more {
            Self::First { id }
        } else {
            Self::None
        }
    }
}

/// What parsing found.
pub enum Parsed {
    /// An IP packet to decide.
    Ip,
    /// ARP or IPv6 neighbor discovery: passes without a decision.
    Infrastructure,
    /// Addresses readable, but the packet cannot be decided: its layer-4 header is truncated,
    /// or an IPv6 address is IPv4-mapped. Dropped as malformed, attributed to its endpoint.
    Truncated,
    /// Not IP and not ARP: dropped.
    NotIp,
    /// Truncated or inconsistent network header: dropped, counted, no event (no addresses).
    Malformed,
}

/// The `T` at `offset` of the packet: from the linear data when it lies there, else copied
/// by the helper (paged data) into [`HEADER`]; `None` past the packet's end.
#[inline(always)]
fn load<T>(ctx: &TcContext, offset: usize) -> Option<T> {
    const { assert!(size_of::<T>() <= HEADER_WORDS * 8) };
    let start = ctx.data();
    let at = start + offset;
    if at + size_of::<T>() <= ctx.data_end() {
        // SAFETY: `at .. at + size_of::<T>()` lies in the skb's linear data, checked just above
        // (and by the verifier); `read_unaligned` makes no alignment assumption.
        return Some(unsafe { (at as *const T).read_unaligned() });
    }
    // The callers fail closed on `None`; the per-CPU array always has its one slot.
    let room = HEADER.get_ptr_mut(0)?;
    // SAFETY: the skb is the context the kernel handed to the program; `room` is this CPU's
    // slot, at least `size_of::<T>()` bytes (asserted above), which no other run uses until
    // this one returns.
    let copied = unsafe {
        bpf_skb_load_bytes(
            ctx.skb.skb as *const c_void,
            offset as u32,
            room as *mut c_void,
            size_of::<T>() as u32,
        )
    };
    // SAFETY: the helper wrote `size_of::<T>()` bytes at `room` when it returned 0.
    (copied == 0).then(|| unsafe { (room as *const T).read_unaligned() })
}

#[inline(always)]
fn be16(b: [u8; 2]) -> u16 {
    u16::from_be_bytes(b)
}

impl Packet {
    /// Its endpoint's address and its peer's, as seen from the pod in its direction.
    #[inline(always)]
    pub fn ends(&self) -> (&Addr, &Addr) {
        match self.direction {
            Direction::Egress => (&self.src, &self.dst),
            Direction::Ingress => (&self.dst, &self.src),
        }
    }

    /// Makes this record an empty one for a packet crossing `ctx` in `direction`.
    #[inline(always)]
    pub fn reset(&mut self, ctx: &TcContext, direction: Direction, config: &Config) {
        self.direction = direction;
        self.now = now(config);
        // SAFETY: `skb` is the context pointer the kernel handed to the program.
        self.ifindex = unsafe { (*ctx.skb.skb).ifindex };
        self.len = ctx.len() as u64;
        self.family = 0;
        self.protocol = 0;
        self.src = Addr::ZERO;
        self.dst = Addr::ZERO;
        self.src_port = 0;
        self.dst_port = 0;
        self.tcp_flags = 0;
        self.icmp_type = 0;
        self.icmp_code = 0;
        self.fragment = Fragment::None;
        self.quoted.present = 0;
    }
}

/// `CLOCK_MONOTONIC` as of the kernel's last tick, ns: `jiffies` (which the verifier inlines,
/// a load) in ns by the loader's calibration, else the helper that reads the same clock.
#[inline(always)]
fn now(config: &Config) -> u64 {
    // SAFETY: a helper without arguments.
    let jiffies = unsafe { bpf_jiffies64() };
    match config.jiffies_ns(jiffies) {
        Some(now) => now,
        // SAFETY: a helper without arguments.
        None => unsafe { bpf_ktime_get_coarse_ns() },
    }
}

/// Parses the packet in `ctx` into `packet`.
#[inline(always)]
pub fn parse(ctx: &TcContext, packet: &mut Packet) -> Parsed {
    let Some(ethertype) = load::<[u8; 2]>(ctx, 12) else {
        return Parsed::Malformed;
    };
    match be16(ethertype) {
        ETH_P_IP => parse_v4(ctx, packet),
        ETH_P_IPV6 => parse_v6(ctx, packet),
        ETH_P_ARP => Parsed::Infrastructure,
        _ => Parsed::NotIp,
    }
}

#[inline(always)]
fn parse_v4(ctx: &TcContext, packet: &mut Packet) -> Parsed {
    let Some(h) = load::<[u8; 20]>(ctx, ETH_HLEN) else {
        return Parsed::Malformed;
    };
    let version = h[0] >> 4;
    let ihl = (h[0] & 0x0f) as usize;
    if version != 4 || ihl < 5 {
        return Parsed::Malformed;
    }
    let id = be16([h[4], h[5]]) as u32;
    let frag = be16([h[6], h[7]]);
    let more_fragments = frag & 0x2000 != 0;
    let offset = frag & 0x1fff;
    packet.fragment = Fragment::of(id, offset, more_fragments);
    packet.family = 4;
    packet.protocol = h[9];
    packet.src = Addr::mapped([h[12], h[13], h[14], h[15]]);
    packet.dst = Addr::mapped([h[16], h[17], h[18], h[19]]);
    if let Fragment::Later { .. } = packet.fragment {
        return Parsed::Ip;
    }
    match parse_l4(ctx, ETH_HLEN + ihl * 4, packet) {
        Some(()) => Parsed::Ip,
        None => Parsed::Truncated,
    }
}

#[inline(always)]
fn parse_v6(ctx: &TcContext, packet: &mut Packet) -> Parsed {
    let Some(h) = load::<[u8; 8]>(ctx, ETH_HLEN) else {
        return Parsed::Malformed;
    };
    if h[0] >> 4 != 6 {
        return Parsed::Malformed;
    }
    let hop_limit = h[7];
    let (Some(src), Some(dst)) = (
        load::<[u8; 16]>(ctx, ETH_HLEN + 8),
        load::<[u8; 16]>(ctx, ETH_HLEN + 24),
    ) else {
        return Parsed::Malformed;
    };
    packet.family = 6;
    packet.src = Addr(src);
    packet.dst = Addr(dst);
    if packet.src.is_v4_mapped() || packet.dst.is_v4_mapped() {
        // Fail closed: an IPv6 packet to or from `::ffff:a.b.c.d` is routed as IPv6, never to
        // or from the IPv4 host it names, yet in the maps' 16-byte form it would be that
        // host's address (IPv4 endpoints, ipBlocks and conntrack entries). No Kubernetes
        // address is of this form: dropped, attributed to its endpoint as malformed.
        return Parsed::Truncated;
    }
    let mut next = h[6];
    let mut offset = ETH_HLEN + 40;
    let mut walked = 0;
    while walked < MAX_IPV6_EXT_HEADERS {
        match next {
            IPV6_HOPOPTS | IPV6_ROUTING | IPV6_DSTOPTS => {
                let Some(ext) = load::<[u8; 2]>(ctx, offset) else {
                    return Parsed::Truncated;
                };
                next = ext[0];
                offset += (ext[1] as usize + 1) * 8;
            }
            IPV6_AH => {
                let Some(ext) = load::<[u8; 2]>(ctx, offset) else {
                    return Parsed::Truncated;
                };
                next = ext[0];
                offset += (ext[1] as usize + 2) * 4;
            }
            IPV6_FRAGMENT => {
                let Some(ext) = load::<[u8; 8]>(ctx, offset) else {
                    return Parsed::Truncated;
                };
                next = ext[0];
                offset += 8;
                let frag_offset = be16([ext[2], ext[3]]) >> 3;
                let more = ext[3] & 1 != 0;
                let id = u32::from_be_bytes([ext[4], ext[5], ext[6], ext[7]]);
                packet.fragment = Fragment::of(id, frag_offset, more);
            }
            _ => break,
        }
        walked += 1;
    }
    packet.protocol = next;
    if is_ext_header(next) {
        // Fail closed: a chain longer than we walk could hide the real layer-4 header.
        return Parsed::Truncated;
    }
    if let Fragment::Later { .. } = packet.fragment {
        return Parsed::Ip;
    }
    if parse_l4(ctx, offset, packet).is_none() {
        return Parsed::Truncated;
    }
    if packet.protocol == proto::ICMPV6
        && (133..=137).contains(&packet.icmp_type)
        && hop_limit == 255
    {
        return Parsed::Infrastructure;
    }
    Parsed::Ip
}

#[inline(always)]
fn is_ext_header(next: u8) -> bool {
    matches!(
        next,
        IPV6_HOPOPTS | IPV6_ROUTING | IPV6_DSTOPTS | IPV6_FRAGMENT | IPV6_AH
    )
}

/// Reads ports, flags and ICMP fields at `offset`. `None` when the header is truncated.
#[inline(always)]
fn parse_l4(ctx: &TcContext, offset: usize, packet: &mut Packet) -> Option<()> {
    match packet.protocol {
        proto::TCP => {
            let h = load::<[u8; 14]>(ctx, offset)?;
            packet.src_port = be16([h[0], h[1]]);
            packet.dst_port = be16([h[2], h[3]]);
            packet.tcp_flags = h[13];
        }
        proto::UDP => {
            let h = load::<[u8; 8]>(ctx, offset)?;
            packet.src_port = be16([h[0], h[1]]);
            packet.dst_port = be16([h[2], h[3]]);
        }
        proto::SCTP => {
            let h = load::<[u8; 12]>(ctx, offset)?;
            packet.src_port = be16([h[0], h[1]]);
            packet.dst_port = be16([h[2], h[3]]);
        }
        proto::ICMP | proto::ICMPV6 => {
            let h = load::<[u8; 8]>(ctx, offset)?;
            packet.icmp_type = h[0];
            packet.icmp_code = h[1];
            if is_echo(packet.protocol, h[0]) {
                // Echo request and reply share the identifier: use it as both "ports", so a
                // reply matches its request's reversed tuple.
                let id = be16([h[4], h[5]]);
                packet.src_port = id;
                packet.dst_port = id;
            } else if is_error(packet.protocol, h[0]) && packet.len <= max_error_len(packet) {
                // A quote that cannot be read leaves the error unrelated: it is then decided
                // like any ICMP packet (fail closed). So does an error longer than any router
                // sends: the quote is not even read (see `max_error_len`).
                parse_quoted(ctx, offset + 8, packet);
            }
        }
        _ => {}
    }
    Some(())
}

/// The longest frame an ICMP error may be and still pass as related: an IPv4 router's error
/// is at most 576 bytes of IP (RFC 1812 §4.3.2.3; Linux's `icmp_send` quotes to that size), an
/// IPv6 one at most the minimum MTU, 1280 bytes (RFC 4443 §2.4 (c); `icmp6_send`). Anything
/// longer is no router's error: it is decided like any ICMP packet, so a sender that guesses
/// a tracked flow cannot push more than a router would through an isolated pod's ingress.
#[inline(always)]
fn max_error_len(packet: &Packet) -> u64 {
    let ip_len = if packet.family == 4 {
        MAX_ICMP_ERROR_LEN_V4
    } else {
        MAX_ICMP_ERROR_LEN_V6
    };
    (ETH_HLEN + ip_len) as u64
}

/// Longest IPv4 ICMP error, IP header included, that can pass as related (RFC 1812 §4.3.2.3).
pub const MAX_ICMP_ERROR_LEN_V4: usize = 576;
/// Longest ICMPv6 error, IPv6 header included, that can pass as related (RFC 4443 §2.4 (c)).
pub const MAX_ICMP_ERROR_LEN_V6: usize = 1280;

/// ICMP errors that quote the packet they are about: destination unreachable (including
/// fragmentation needed), time exceeded, parameter problem; for ICMPv6 also packet too big.
#[inline(always)]
fn is_error(protocol: u8, icmp_type: u8) -> bool {
    match protocol {
        proto::ICMP => matches!(icmp_type, 3 | 11 | 12),
        _ => matches!(icmp_type, 1..=4),
    }
}

/// Reads the quoted IP header and the first four bytes of its layer-4 header (the ports, or an
/// echo's type, code and checksum, whose identifier follows). Quoted IPv6 extension headers are
/// not walked: such a quote stays unread. A BPF function of its own, so its loads do not weigh
/// on the entry point's stack frame.
#[inline(never)]
fn parse_quoted(ctx: &TcContext, offset: usize, packet: &mut Packet) {
    let quoted = &mut packet.quoted;
    let l4 = if packet.family == 4 {
        let Some(h) = load::<[u8; 20]>(ctx, offset) else {
            return;
        };
        let ihl = (h[0] & 0x0f) as usize;
        if h[0] >> 4 != 4 || ihl < 5 {
            return;
        }
        quoted.protocol = h[9];
        quoted.src = Addr::mapped([h[12], h[13], h[14], h[15]]);
        quoted.dst = Addr::mapped([h[16], h[17], h[18], h[19]]);
        offset + ihl * 4
    } else {
        let Some(h) = load::<[u8; 8]>(ctx, offset) else {
            return;
        };
        let (Some(src), Some(dst)) = (
            load::<[u8; 16]>(ctx, offset + 8),
            load::<[u8; 16]>(ctx, offset + 24),
        ) else {
            return;
        };
        if h[0] >> 4 != 6 {
            return;
        }
        quoted.protocol = h[6];
        quoted.src = Addr(src);
        quoted.dst = Addr(dst);
        offset + 40
    };
    let Some(ports) = load::<[u8; 8]>(ctx, l4) else {
        return;
    };
    (quoted.src_port, quoted.dst_port) = match quoted.protocol {
        proto::TCP | proto::UDP | proto::SCTP => {
            (be16([ports[0], ports[1]]), be16([ports[2], ports[3]]))
        }
        proto::ICMP | proto::ICMPV6 if is_echo(quoted.protocol, ports[0]) => {
            let id = be16([ports[4], ports[5]]);
            (id, id)
        }
        _ => (0, 0),
    };
    quoted.present = 1;
}

#[inline(always)]
fn is_echo(protocol: u8, icmp_type: u8) -> bool {
    match protocol {
        proto::ICMP => icmp_type == 8 || icmp_type == 0,
        _ => icmp_type == 128 || icmp_type == 129,
    }
}
