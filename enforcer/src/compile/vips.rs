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

use tollgate_schemas::{PolicyValue, PortRule, port_action};

use super::identities::Peers;
use super::services::ServiceInfo;
use super::sets::{SetEntries, value_of};

/// One ClusterIP with its backends by peer identity, found once per compilation and then
/// asked about by every egress set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ClusterIp {
    /// Its own identity (index into the identities).
    identity: usize,
    /// The identity of the region around it: what it is where it has no entry.
    region: usize,
    /// Its ports.
    ports: Vec<Port>,
}

/// One Service port of a ClusterIP.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Port {
    protocol: u8,
    port: u16,
    /// Distinct (backend identity, targetPort) of its ready backends in the ClusterIP's family.
    backends: Vec<(usize, u16)>,
}

/// Every ClusterIP of `services` that has an identity, with its backends by identity.
pub(crate) fn cluster_ips(peers: &Peers, services: &[ServiceInfo]) -> Vec<ClusterIp> {
    let mut out = Vec::new();
    for service in services {
        for vip in &service.cluster_ips {
            let Some(&identity) = peers.by_cluster_ip.get(vip) else {
                continue;
            };
            let ports = service
                .ports
                .iter()
                .map(|port| {
                    let mut backends: Vec<(usize, u16)> = port
                        .backends
                        .iter()
                        .filter(|b| b.addr.is_ipv4() == vip.is_ipv4())
                        .map(|b| (peers.of_address(b.addr), b.port))
                        .collect();
                    backends.sort_unstable();
                    backends.dedup();
                    Port {
                        protocol: port.protocol,
                        port: port.port,
                        backends,
                    }
                })
                .collect();
            out.push(ClusterIp {
                identity,
                region: peers.of_region(peers.identities[identity].region),
                ports,
            });
        }
    }
    out
}

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

/// Adds to `entries` (one egress set's values by identity) an entry for each of
/// `cluster_ips` whose answer differs from its region's.
pub(crate) fn add_cluster_ips(entries: &mut SetEntries, cluster_ips: &[ClusterIp]) {
    let mut added: Vec<(usize, PolicyValue)> = Vec::new();
    for vip in cluster_ips {
        let values = &entries.values;
        let vip_value = values.get(&vip.region);
        let mut rules = Vec::new();
        let mut differs = false;
        for port in &vip.ports {
            let answer = backends(port, |identity| values.get(&identity));
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
            // A Service has far fewer ports than a value holds; `value_of` keeps the first
            // ones.
            added.push((vip.identity, value_of(&rules)));
        }
    }
    entries.values.extend(added);
}

/// What the backends of `port` say, through `lookup` (identity → the set's value).
fn backends<'e>(port: &Port, lookup: impl Fn(usize) -> Option<&'e PolicyValue>) -> Backends {
    let mut first = None;
    let mut denied = false;
    for (identity, target) in &port.backends {
        let rule = lookup(*identity)
            .and_then(|value| value.matching_rule(port.protocol, *target))
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
