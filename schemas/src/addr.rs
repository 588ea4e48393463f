//! The 16-byte address form shared by every map key and the flow event.
//!
//! IPv6 addresses are stored as they are; IPv4 addresses as IPv4-mapped IPv6 addresses
//! (`::ffff:a.b.c.d`), so a single LPM trie holds both families and a /24 IPv4 prefix is a
//! /120 prefix of the mapped form.

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Length, in bits, of the `::ffff:0:0/96` prefix that IPv4-mapped addresses share.
pub const V4_MAPPED_PREFIX_BITS: u8 = 96;

/// The 16-byte form of an address (network byte order, IPv4-mapped for IPv4).
pub const fn to_bytes(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// The address a 16-byte form stands for: IPv4 when it is IPv4-mapped, IPv6 otherwise.
pub const fn from_bytes(bytes: [u8; 16]) -> IpAddr {
    let v6 = Ipv6Addr::from_octets(bytes);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

/// The 16-byte form of an IPv4 address given as its four octets.
pub const fn v4_bytes(octets: [u8; 4]) -> [u8; 16] {
    Ipv4Addr::from_octets(octets).to_ipv6_mapped().octets()
}

/// The prefix length in the 16-byte form of a prefix of `ip`'s own family.
pub const fn mapped_prefix_len(ip: IpAddr, prefix_len: u8) -> u8 {
    match ip {
        IpAddr::V4(_) => V4_MAPPED_PREFIX_BITS + prefix_len,
        IpAddr::V6(_) => prefix_len,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_travels_ipv4_mapped_and_comes_back() {
        let ip: IpAddr = "198.18.0.10".parse().expect("address");
        let bytes = to_bytes(ip);
        assert_eq!(bytes[..12], [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff]);
        assert_eq!(bytes[12..], [198, 18, 0, 10]);
        assert_eq!(v4_bytes([198, 18, 0, 10]), bytes);
        assert_eq!(from_bytes(bytes), ip);
    }

    #[test]
    fn ipv6_is_stored_as_is() {
        let ip: IpAddr = "fd00::10".parse().expect("address");
        assert_eq!(to_bytes(ip)[0], 0xfd);
        assert_eq!(from_bytes(to_bytes(ip)), ip);
    }

    #[test]
    fn prefix_lengths_count_in_the_mapped_form() {
        let v4: IpAddr = "10.0.0.0".parse().expect("address");
        let v6: IpAddr = "fd00::".parse().expect("address");
        assert_eq!(mapped_prefix_len(v4, 24), 120);
        assert_eq!(mapped_prefix_len(v6, 64), 64);
    }
}
