//! Synthesized packets for BPF_PROG_TEST_RUN: Ethernet + IPv4/IPv6 (with options, extension
//! headers and fragments when asked) + TCP, UDP, SCTP or ICMP.
//!
//! The probe does not check checksums, so none are computed. Lengths in the IP headers are
//! consistent with the bytes built, so a truncation is always the caller's deliberate cut.

use std::net::IpAddr;

use tollgate_schemas::proto;

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const TCP_SYN: u8 = 0x02;
/// The TCP ACK flag.
pub const TCP_ACK: u8 = 0x10;

/// Where a packet sits in a fragmented datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fragment {
    /// IPv4 identification (low 16 bits) or IPv6 fragment identification.
    pub id: u32,
    /// Offset in 8-byte units; 0 for the first fragment.
    pub offset: u16,
    /// More fragments follow.
    pub more: bool,
}

/// A packet to build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PacketSpec {
    /// Source address; the family decides IPv4 or IPv6.
    pub src: IpAddr,
    /// Destination address, same family as `src`.
    pub dst: IpAddr,
    /// IANA protocol number.
    pub protocol: u8,
    /// Source port (TCP, UDP, SCTP) or echo identifier (ICMP echo).
    pub src_port: u16,
    /// Destination port (TCP, UDP, SCTP).
    pub dst_port: u16,
    /// TCP flags.
    pub tcp_flags: u8,
    /// ICMP/ICMPv6 type (echo request when building ICMP echo).
    pub icmp_type: u8,
    /// IPv4 options (a multiple of 4 bytes, at most 40).
    pub ipv4_options: Vec<u8>,
    /// IPv6 extension headers before the fragment header, as (header type, body of 6 + 8n
    /// bytes); the next-header and length bytes are filled in.
    pub ipv6_extensions: Vec<(u8, Vec<u8>)>,
    /// Fragment position; `None` for an unfragmented packet.
    pub fragment: Option<Fragment>,
    /// Payload bytes after the layer-4 header.
    pub payload_len: usize,
    /// For an ICMP error (set `icmp_type`): the packet it quotes, of which its IP header and
    /// the first 8 bytes after it are carried.
    pub quote: Option<Box<PacketSpec>>,
}

impl PacketSpec {
    /// The first packet of a flow: a TCP SYN, or a UDP/SCTP datagram, or an ICMP echo request.
    pub fn first(src: IpAddr, dst: IpAddr, protocol: u8, src_port: u16, dst_port: u16) -> Self {
        let icmp_type = match (protocol, dst) {
            (proto::ICMP, _) => 8,
            (proto::ICMPV6, _) => 128,
            _ => 0,
        };
        Self {
            src,
            dst,
            protocol,
            src_port,
            dst_port,
            tcp_flags: TCP_SYN,
            icmp_type,
            ipv4_options: Vec::new(),
            ipv6_extensions: Vec::new(),
            fragment: None,
            payload_len: 16,
            quote: None,
        }
    }

    /// An ICMP or ICMPv6 error of `icmp_type` from `src` about `quoted` (sent to its source).
    pub fn icmp_error(src: IpAddr, icmp_type: u8, quoted: PacketSpec) -> Self {
        let protocol = if src.is_ipv4() {
            proto::ICMP
        } else {
            proto::ICMPV6
        };
        Self {
            icmp_type,
            payload_len: 0,
            quote: Some(Box::new(quoted.clone())),
            ..Self::first(src, quoted.src, protocol, 0, 0)
        }
    }

    /// The reply to this packet: addresses and ports swapped (an ICMP echo keeps its
    /// identifier), SYN-ACK for a SYN, echo reply for an echo request.
    pub fn reply(&self) -> Self {
        let (src_port, dst_port) = match self.protocol {
            proto::ICMP | proto::ICMPV6 => (self.src_port, self.dst_port),
            _ => (self.dst_port, self.src_port),
        };
        let icmp_type = match self.icmp_type {
            8 => 0,
            128 => 129,
            other => other,
        };
        Self {
            src: self.dst,
            dst: self.src,
            src_port,
            dst_port,
            tcp_flags: if self.tcp_flags == TCP_SYN {
                TCP_SYN | TCP_ACK
            } else {
                self.tcp_flags
            },
            icmp_type,
            ..self.clone()
        }
    }

    /// The frame's bytes.
    pub fn build(&self) -> Vec<u8> {
        let l4 = self.layer4();
        let mut frame = Vec::with_capacity(128 + l4.len());
        frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x02]); // destination MAC
        frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01]); // source MAC
        match (self.src, self.dst) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => {
                frame.extend_from_slice(&ETH_P_IP.to_be_bytes());
                let ihl = 5 + self.ipv4_options.len() / 4;
                let total = (ihl * 4 + l4.len()) as u16;
                let (id, flags_offset) = match self.fragment {
                    Some(f) => (f.id as u16, (u16::from(f.more) << 13) | (f.offset & 0x1fff)),
                    None => (0, 0),
                };
                frame.push(0x40 | ihl as u8);
                frame.push(0);
                frame.extend_from_slice(&total.to_be_bytes());
                frame.extend_from_slice(&id.to_be_bytes());
                frame.extend_from_slice(&flags_offset.to_be_bytes());
                frame.push(64);
                frame.push(self.protocol);
                frame.extend_from_slice(&[0, 0]);
                frame.extend_from_slice(&src.octets());
                frame.extend_from_slice(&dst.octets());
                frame.extend_from_slice(&self.ipv4_options);
            }
            (IpAddr::V6(src), IpAddr::V6(dst)) => {
                frame.extend_from_slice(&ETH_P_IPV6.to_be_bytes());
                let mut ext = Vec::new();
                let mut types: Vec<u8> = self.ipv6_extensions.iter().map(|(t, _)| *t).collect();
                if self.fragment.is_some() {
                    types.push(44);
                }
                types.push(self.protocol);
                for (i, (_, body)) in self.ipv6_extensions.iter().enumerate() {
                    ext.push(types[i + 1]);
                    ext.push(((body.len() + 2) / 8 - 1) as u8);
                    ext.extend_from_slice(body);
                }
                if let Some(f) = self.fragment {
                    ext.push(self.protocol);
                    ext.push(0);
                    let offset_flags = (f.offset << 3) | u16::from(f.more);
                    ext.extend_from_slice(&offset_flags.to_be_bytes());
                    ext.extend_from_slice(&f.id.to_be_bytes());
                }
                let payload = (ext.len() + l4.len()) as u16;
                frame.extend_from_slice(&[0x60, 0, 0, 0]);
                frame.extend_from_slice(&payload.to_be_bytes());
                frame.push(types[0]);
                frame.push(64);
                frame.extend_from_slice(&src.octets());
                frame.extend_from_slice(&dst.octets());
                frame.extend_from_slice(&ext);
            }
            _ => panic!("PacketSpec: source and destination of different families"),
        }
        if self.fragment.is_none_or(|f| f.offset == 0) {
            frame.extend_from_slice(&l4);
        } else {
            frame.extend(std::iter::repeat_n(0xab, self.payload_len.max(8)));
        }
        frame
    }

    fn layer4(&self) -> Vec<u8> {
        let mut h = Vec::new();
        let ports = |h: &mut Vec<u8>| {
            h.extend_from_slice(&self.src_port.to_be_bytes());
            h.extend_from_slice(&self.dst_port.to_be_bytes());
        };
        match self.protocol {
            proto::TCP => {
                ports(&mut h);
                h.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0]); // seq, ack
                h.push(0x50); // data offset: 5 words
                h.push(self.tcp_flags);
                h.extend_from_slice(&[0xff, 0xff, 0, 0, 0, 0]); // window, checksum, urgent
            }
            proto::UDP => {
                ports(&mut h);
                h.extend_from_slice(&((8 + self.payload_len) as u16).to_be_bytes());
                h.extend_from_slice(&[0, 0]);
            }
            proto::SCTP => {
                ports(&mut h);
                h.extend_from_slice(&[0; 8]); // verification tag, checksum
            }
            proto::ICMP | proto::ICMPV6 => {
                h.push(self.icmp_type);
                h.push(0);
                h.extend_from_slice(&[0, 0]);
                match &self.quote {
                    Some(quoted) => {
                        h.extend_from_slice(&[0, 0, 0x05, 0xdc]); // unused / MTU 1500
                        let frame = quoted.build();
                        let ip_len = match quoted.src {
                            IpAddr::V4(_) => usize::from(frame[14] & 0x0f) * 4,
                            IpAddr::V6(_) => 40,
                        };
                        h.extend_from_slice(&frame[14..(14 + ip_len + 8).min(frame.len())]);
                    }
                    None => {
                        h.extend_from_slice(&self.src_port.to_be_bytes());
                        h.extend_from_slice(&[0, 1]);
                    }
                }
            }
            _ => {}
        }
        h.extend(std::iter::repeat_n(0xab, self.payload_len));
        h
    }
}
