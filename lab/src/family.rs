//! The cluster's address family (`tollgate lab --ip-family ipv4|ipv6`): which manifests the
//! lab reads, and which addresses it may hand out.
//!
//! An EKS cluster is IPv4 or IPv6, never both for pods: an [`IpFamily`] picks the seed's
//! manifests for one of them (`examples/seed/` for IPv4, `examples/seed/ipv6/` for IPv6), the
//! ranges every pod address and ClusterIP must fall in (RFC 2544's 198.18.0.0/15 and the
//! documentation prefix 2001:db8::/32, never anything routable), the node's own address, and
//! the VPC CNI's on-link gateway. [`crate::topology`], [`crate::kubeproxy`] and
//! [`crate::pods`] take everything family-specific from here.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

/// The address family of a lab cluster.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum IpFamily {
    /// IPv4 only (the default, like most EKS clusters).
    #[default]
    V4,
    /// IPv6 only (an EKS IPv6 cluster: pods, Services and kube-dns).
    V6,
}

/// A manifest of `examples/seed/`, embedded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Manifest {
    /// Path in the repository.
    pub path: &'static str,
    /// The YAML, verbatim.
    pub yaml: &'static str,
}

const PODS_V4: Manifest = Manifest {
    path: "examples/seed/lab-pods.yaml",
    yaml: include_str!("../../examples/seed/lab-pods.yaml"),
};
const SERVICES_V4: Manifest = Manifest {
    path: "examples/seed/services.yaml",
    yaml: include_str!("../../examples/seed/services.yaml"),
};
const PODS_V6: Manifest = Manifest {
    path: "examples/seed/ipv6/lab-pods.yaml",
    yaml: include_str!("../../examples/seed/ipv6/lab-pods.yaml"),
};
const SERVICES_V6: Manifest = Manifest {
    path: "examples/seed/ipv6/services.yaml",
    yaml: include_str!("../../examples/seed/ipv6/services.yaml"),
};

impl IpFamily {
    /// `ipv4` or `ipv6`, as the CLI spells it.
    pub fn name(self) -> &'static str {
        match self {
            Self::V4 => "ipv4",
            Self::V6 => "ipv6",
        }
    }

    /// The seed's pods and Services for this family.
    pub fn manifests(self) -> [Manifest; 2] {
        match self {
            Self::V4 => [PODS_V4, SERVICES_V4],
            Self::V6 => [PODS_V6, SERVICES_V6],
        }
    }

    /// Where pod addresses come from (the VPC subnet of the lab's node).
    pub fn pod_network(self) -> IpNet {
        match self {
            Self::V4 => net("198.18.0.0/24"),
            Self::V6 => net("2001:db8::/64"),
        }
    }

    /// Where ClusterIPs come from (EKS: 10.100.0.0/16 or an fd00::/108 of the cluster's).
    pub fn service_network(self) -> IpNet {
        match self {
            Self::V4 => net("198.19.0.0/16"),
            Self::V6 => net("2001:db8:ffff::/112"),
        }
    }

    /// The node's own address (its primary ENI's), in the pod network as on the VPC CNI.
    pub fn node_address(self) -> IpAddr {
        match self {
            Self::V4 => IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1)),
            Self::V6 => IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
        }
    }

    /// The on-link gateway every pod routes through, answered by its host veth (the VPC CNI's
    /// `169.254.1.1` and `fe80::1`).
    pub fn gateway(self) -> IpAddr {
        match self {
            Self::V4 => IpAddr::V4(Ipv4Addr::new(169, 254, 1, 1)),
            Self::V6 => IpAddr::V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1)),
        }
    }

    /// Prefix length of a host route (`/32`, `/128`).
    pub fn host_prefix_len(self) -> u8 {
        match self {
            Self::V4 => 32,
            Self::V6 => 128,
        }
    }

    /// The family of `addr`.
    pub fn of(addr: IpAddr) -> Self {
        match addr {
            IpAddr::V4(_) => Self::V4,
            IpAddr::V6(_) => Self::V6,
        }
    }

    /// Whether `addr` may be a pod's: in [`Self::pod_network`], neither its first address nor
    /// (for IPv4) its broadcast address, and not the node's.
    pub fn is_pod_address(self, addr: IpAddr) -> bool {
        let network = self.pod_network();
        network.contains(&addr)
            && addr != network.network()
            && (self == Self::V6 || addr != network.broadcast())
            && addr != self.node_address()
    }

    /// Whether `addr` may be a ClusterIP: in [`Self::service_network`], not its first address.
    pub fn is_service_address(self, addr: IpAddr) -> bool {
        let network = self.service_network();
        network.contains(&addr) && addr != network.network()
    }

    /// `iptables-nft` or `ip6tables-nft`: the program (nft backend, whatever the machine's
    /// `iptables` alternative is) that writes this family's netfilter rules.
    pub fn iptables(self) -> &'static str {
        match self {
            Self::V4 => "iptables-nft",
            Self::V6 => "ip6tables-nft",
        }
    }
}

impl std::str::FromStr for IpFamily {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "ipv4" => Ok(Self::V4),
            "ipv6" => Ok(Self::V6),
            other => Err(format!("{other:?} is not an IP family (ipv4 or ipv6)")),
        }
    }
}

impl std::fmt::Display for IpFamily {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A network written in this file.
fn net(text: &str) -> IpNet {
    text.parse()
        .unwrap_or_else(|_| unreachable!("{text} is a network"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_stay_in_the_documentation_and_benchmarking_blocks() {
        let benchmarking: IpNet = "198.18.0.0/15".parse().unwrap();
        let documentation: IpNet = "2001:db8::/32".parse().unwrap();
        for family in [IpFamily::V4, IpFamily::V6] {
            let block = match family {
                IpFamily::V4 => benchmarking,
                IpFamily::V6 => documentation,
            };
            assert!(block.contains(&family.pod_network()), "{family}");
            assert!(block.contains(&family.service_network()), "{family}");
            assert!(block.contains(&family.node_address()), "{family}");
            assert!(!family.is_pod_address(family.node_address()));
        }
        let v4 = IpFamily::V4;
        assert!(v4.is_pod_address("198.18.0.20".parse().unwrap()));
        for outside in ["198.18.0.0", "198.18.0.255", "198.18.1.1", "10.0.0.1"] {
            assert!(!v4.is_pod_address(outside.parse().unwrap()), "{outside}");
        }
        assert!(v4.is_service_address("198.19.0.10".parse().unwrap()));
        assert!(!v4.is_service_address("198.18.0.10".parse().unwrap()));
        let v6 = IpFamily::V6;
        assert!(v6.is_pod_address("2001:db8::20".parse().unwrap()));
        assert!(!v6.is_pod_address("2001:db8:1::20".parse().unwrap()));
        assert!(v6.is_service_address("2001:db8:ffff::a".parse().unwrap()));
        assert!(!v6.is_service_address("2001:db8:fffe::a".parse().unwrap()));
        assert_eq!("ipv6".parse::<IpFamily>(), Ok(IpFamily::V6));
        assert!("inet".parse::<IpFamily>().is_err());
    }
}
