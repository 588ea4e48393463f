//! ClusterIPs in an egress policy set: a connection to `ClusterIP:port` is decided by the
//! backends kube-proxy may send it to.
//!
//! The probe sees a pod's egress at the host veth, before netfilter, where kube-proxy rewrites a
//! ClusterIP to one backend picked at random. So the decision is made over every ready backend
//! at once, from the set's own values for the backends' identities (what it may reach by
//! address):
//! - every backend allowed on its targetPort: the ClusterIP's port is allowed, naming the rule
//!   that allowed the first backend;
//! - only some: the port gets a [`port_action::DENY_SERVICE`] rule, so the connection is denied
//!   with reason `service-backends-denied` (fail closed: it could reach a denied backend);
//! - none (or no ready backend): nothing, so the connection is denied as no rule matched.
//!
//! The ClusterIP has a peer identity of its own, whose entry in a set shadows what an ipBlock
//! around it says: the virtual address does not count, only the backends do (as with enforcers
//! that decide after the DNAT). The entry is written only where it changes an answer: when the
//! ClusterIP's region (its fallback identity) already gives each Service port the same verdict
//! (and no port is partly allowed, whose reason must be told), it is left out, so a broad allow
//! (`0.0.0.0/0`) does not cost an entry per Service per set.

use std::net::IpAddr;

use tollgate_schemas::{PolicyValue, PortRule, port_action};

use super::identities::Peers;
use super::services::{ServiceInfo, ServicePort};
use super::sets::{SetEntries, value_of};

/// What the backends of one Service port say, for one set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backends {
    /// Every ready backend is allowed: the first one's rule id.
    Allowed(u32),
    /// Some are allowed, some are not.
    Partly,
    /// None is, or there is none.
    Denied,
}

/// Adds to `entries` (one egress set's values by identity) an entry for each ClusterIP of
/// `services` whose answer differs from its region's.
pub(crate) fn add_cluster_ips(entries: &mut SetEntries, peers: &Peers, services: &[ServiceInfo]) {
    let mut added: Vec<(usize, PolicyValue)> = Vec::new();
    {
        let values = &entries.values;
        let lookup = |addr: IpAddr| values.get(&peers.of_address(addr));
        for service in services {
            for vip in &service.cluster_ips {
                let Some(&identity) = peers.by_cluster_ip.get(vip) else {
                    continue;
                };
                let region = peers.of_region(peers.identities[identity].region);
                let vip_value = values.get(&region);
                let mut rules = Vec::new();
                let mut differs = false;
                for port in &service.ports {
                    let answer = backends(port, *vip, &lookup);
                    let by_address = vip_value
                        .and_then(|value| value.matching_rule(port.protocol, port.port))
                        .filter(|rule| rule.action == port_action::ALLOW);
                    differs |= match answer {
                        Backends::Allowed(_) => by_address.is_none(),
                        // The reason names the Service, whatever the addresses say.
                        Backends::Partly => true,
                        Backends::Denied => by_address.is_some(),
                    };
                    let action = match answer {
                        Backends::Allowed(rule_id) => Some((rule_id, port_action::ALLOW)),
                        Backends::Partly => Some((0, port_action::DENY_SERVICE)),
                        Backends::Denied => None,
                    };
                    if let Some((rule_id, action)) = action {
                        rules.push(PortRule {
                            rule_id,
                            port_lo: port.port,
                            port_hi: port.port,
                            protocol: port.protocol,
                            action,
                            _pad: [0; 2],
                        });
                    }
                }
                if differs {
                    // A Service has far fewer ports than a value holds; `value_of` keeps the
                    // first ones.
                    added.push((identity, value_of(&rules)));
                }
            }
        }
    }
    entries.values.extend(added);
}

/// What the backends of `port` in `vip`'s family say, through `lookup`.
fn backends<'e>(
    port: &ServicePort,
    vip: IpAddr,
    lookup: &impl Fn(IpAddr) -> Option<&'e PolicyValue>,
) -> Backends {
    let mut first = None;
    let mut denied = false;
    for backend in port
        .backends
        .iter()
        .filter(|b| b.addr.is_ipv4() == vip.is_ipv4())
    {
        let rule = lookup(backend.addr)
            .and_then(|value| value.matching_rule(port.protocol, backend.port))
            .filter(|rule| rule.action == port_action::ALLOW);
        match rule {
            Some(rule) => {
                first.get_or_insert(rule.rule_id);
            }
            None => denied = true,
        }
    }
    match (first, denied) {
        (Some(rule_id), false) => Backends::Allowed(rule_id),
        (Some(_), true) => Backends::Partly,
        (None, _) => Backends::Denied,
    }
}
