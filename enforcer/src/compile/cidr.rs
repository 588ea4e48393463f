//! Address prefixes in the maps' 16-byte form: parsed from CIDR text and pod IPs, compared for
//! containment, and turned into LPM trie keys.
//!
//! An IPv4 prefix `a.b.c.d/n` becomes `::ffff:a.b.c.d/(96+n)`; an IPv6 prefix stays as it is.
//! IPv4-mapped IPv6 text (`::ffff:10.0.0.0/104`) is refused, so the family of a prefix can be
//! read off the prefix itself: it is IPv4 exactly when it lies inside `::ffff:0:0/96`.

use std::net::{IpAddr, Ipv6Addr};

use tollgate_schemas::addr::{self, V4_MAPPED_PREFIX_BITS};

use crate::desired::PeerEntryKey;

/// An address prefix in the 16-byte form, host bits zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Prefix {
    /// The address bits, big-endian (the first byte of the 16-byte form is the top byte).
    bits: u128,
    /// Prefix length in the 16-byte form, 0 to 128.
    len: u8,
}

/// `::ffff:0:0`, the start of the IPv4-mapped space.
const V4_MAPPED: u128 = 0xffff_0000_0000;

fn mask(len: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0)
}

impl Prefix {
    /// Every IPv4 address (`0.0.0.0/0`).
    pub(crate) const ALL_V4: Prefix = Prefix {
        bits: V4_MAPPED,
        len: V4_MAPPED_PREFIX_BITS,
    };
    /// Every IPv6 address (`::/0`).
    pub(crate) const ALL_V6: Prefix = Prefix { bits: 0, len: 0 };

    /// The prefix of `len` bits (16-byte form) of `bits`, host bits cleared.
    fn new(bits: u128, len: u8) -> Prefix {
        Prefix {
            bits: bits & mask(len),
            len,
        }
    }

    /// The prefix of a peer-trie entry.
    pub(crate) fn of_entry(key: &PeerEntryKey) -> Prefix {
        let len = key.prefix_len.min(128) as u8;
        Prefix::new(u128::from_be_bytes(key.key.addr), len)
    }

    /// One address, as a /32 or /128.
    pub(crate) fn host(ip: IpAddr) -> Prefix {
        Prefix::new(u128::from_be_bytes(addr::to_bytes(ip)), 128)
    }

    /// Prefix length in the 16-byte form.
    pub(crate) fn len(self) -> u8 {
        self.len
    }

    /// The address bits, 16-byte form.
    pub(crate) fn bytes(self) -> [u8; 16] {
        self.bits.to_be_bytes()
    }

    /// Whether this is an IPv4 prefix (inside `::ffff:0:0/96`).
    pub(crate) fn is_v4(self) -> bool {
        self.len >= V4_MAPPED_PREFIX_BITS && self.bits & mask(V4_MAPPED_PREFIX_BITS) == V4_MAPPED
    }

    /// Whether every address of `other` is in `self`.
    pub(crate) fn contains(self, other: Prefix) -> bool {
        self.len <= other.len && other.bits & mask(self.len) == self.bits
    }

    /// The `len`-bit prefix that contains `self` (`len` ≤ `self.len()`).
    pub(crate) fn truncate(self, len: u8) -> Prefix {
        Prefix::new(self.bits, len.min(self.len))
    }
}

impl std::fmt::Display for Prefix {
    /// In the prefix's own family: `10.0.0.0/8`, `2001:db8::/32`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match addr::from_bytes(self.bytes()) {
            IpAddr::V4(v4) if self.is_v4() => {
                write!(f, "{v4}/{}", self.len - V4_MAPPED_PREFIX_BITS)
            }
            _ => write!(f, "{}/{}", Ipv6Addr::from(self.bits), self.len),
        }
    }
}

/// Parses an address as Kubernetes writes it in `status.podIPs` (no prefix length).
pub(crate) fn parse_ip(text: &str) -> Result<IpAddr, String> {
    let ip: IpAddr = text
        .parse()
        .map_err(|_| format!("{text:?} is not an IPv4 or IPv6 address"))?;
    if let IpAddr::V6(v6) = ip
        && v6.to_ipv4_mapped().is_some()
    {
        return Err(format!(
            "{text:?} is an IPv4-mapped IPv6 address; write it as an IPv4 address"
        ));
    }
    Ok(ip)
}

/// Parses CIDR text (`10.0.0.0/8`, `2001:db8::/32`). Host bits are accepted and cleared, as
/// the API server accepts them.
pub(crate) fn parse_cidr(text: &str) -> Result<Prefix, String> {
    let Some((ip, len)) = text.split_once('/') else {
        return Err(format!(
            "{text:?} is not a CIDR: it needs a prefix length (like 10.0.0.0/8)"
        ));
    };
    let ip = parse_ip(ip).map_err(|e| format!("{text:?} is not a valid CIDR: {e}"))?;
    let max = match ip {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    };
    let canonical = !len.is_empty()
        && len.bytes().all(|b| b.is_ascii_digit())
        && (len == "0" || !len.starts_with('0'));
    let Some(len) = len
        .parse::<u8>()
        .ok()
        .filter(|len| canonical && *len <= max)
    else {
        return Err(format!(
            "{text:?} is not a valid CIDR: the prefix length must be 0 to {max}"
        ));
    };
    Ok(Prefix::new(
        u128::from_be_bytes(addr::to_bytes(ip)),
        addr::mapped_prefix_len(ip, len),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_display() {
        let cases = [
            ("10.0.0.0/8", Ok("10.0.0.0/8")),
            ("10.1.2.3/8", Ok("10.0.0.0/8")),
            ("0.0.0.0/0", Ok("0.0.0.0/0")),
            ("192.168.1.7/32", Ok("192.168.1.7/32")),
            ("2001:db8::1/32", Ok("2001:db8::/32")),
            ("::/0", Ok("::/0")),
            ("fd00::1/128", Ok("fd00::1/128")),
            ("10.0.0.0", Err("needs a prefix length")),
            ("10.0.0.0/33", Err("0 to 32")),
            ("10.0.0.0/+8", Err("0 to 32")),
            ("10.0.0.0/08", Err("0 to 32")),
            ("2001:db8::/129", Err("0 to 128")),
            ("10.0.0/8", Err("not a valid CIDR")),
            ("::ffff:10.0.0.0/104", Err("IPv4-mapped")),
        ];
        for (text, want) in cases {
            let got = parse_cidr(text).map(|p| p.to_string());
            match (got, want) {
                (Ok(got), Ok(want)) => assert_eq!(got, want, "{text}"),
                (Err(got), Err(want)) => assert!(got.contains(want), "{text}: {got}"),
                (got, want) => panic!("{text}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn families_and_containment() {
        let p = |t| parse_cidr(t).unwrap();
        assert!(p("10.0.0.0/8").is_v4());
        assert!(p("0.0.0.0/0").is_v4());
        assert!(!p("::/0").is_v4());
        assert!(!p("::/96").is_v4());
        assert!(p("10.0.0.0/8").contains(p("10.1.0.0/16")));
        assert!(p("10.0.0.0/8").contains(p("10.0.0.0/8")));
        assert!(!p("10.1.0.0/16").contains(p("10.0.0.0/8")));
        assert!(!p("10.0.0.0/8").contains(p("11.0.0.0/16")));
        assert!(p("2001:db8::/32").contains(p("2001:db8:1::/48")));
        assert_eq!(Prefix::ALL_V4, p("0.0.0.0/0"));
        assert_eq!(Prefix::ALL_V6, p("::/0"));
        assert_eq!(p("10.1.0.0/16").truncate(104), p("10.0.0.0/8"));
        let host = Prefix::host("10.1.2.3".parse().unwrap());
        assert_eq!(host.to_string(), "10.1.2.3/32");
        assert_eq!(host.len(), 128);
    }

    #[test]
    fn pod_ips() {
        assert!(parse_ip("10.0.0.1").is_ok());
        assert!(parse_ip("fd00::1").is_ok());
        assert!(
            parse_ip("::ffff:10.0.0.1")
                .unwrap_err()
                .contains("IPv4-mapped")
        );
        assert!(parse_ip("10.0.0.1/32").is_err());
    }
}
