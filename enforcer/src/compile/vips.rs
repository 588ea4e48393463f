//! ClusterIPs in an endpoint's egress entries: a connection to `ClusterIP:port` is decided by
//! the backends kube-proxy may send it to.
//!
//! The probe sees a pod's egress at the host veth, before netfilter, where kube-proxy rewrites a
//! ClusterIP to one backend picked at random. So the decision is made over every ready backend
//! at once, from the endpoint's own merged egress entries (what it may reach by address):
//! - every backend allowed on its targetPort: the ClusterIP's port is allowed, naming the rule
//!   that allowed the first backend;
//! - only some: the port gets a [`port_action::DENY_SERVICE`] rule, so the connection is denied
//!   with reason `service-backends-denied` (fail closed: it could reach a denied backend);
//! - none (or no ready backend): nothing, so the connection is denied as no rule matched.
//!
//! The ClusterIP becomes a host entry of its own, which shadows any ipBlock around it: what an
//! ipBlock says of the virtual address does not count, only the backends do (as with enforcers
//! that decide after the DNAT). The entry is written only where it changes an answer: when the
//! entries without it already give each Service port the same verdict (and no port is partly
//! allowed, whose reason must be told), it is left out, so a broad allow (`0.0.0.0/0`) does not
//! cost an entry per Service per endpoint.

use std::collections::HashMap;
use std::net::IpAddr;

use tollgate_schemas::{PolicyValue, PortRule, port_action};

use super::cidr::Prefix;
use super::lpm::Entry;
use super::services::{ServiceInfo, ServicePort};

/// What the backends of one Service port say, for one endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backends {
    /// Every ready backend is allowed: the first one's rule id.
    Allowed(u32),
    /// Some are allowed, some are not.
    Partly,
    /// None is, or there is none.
    Denied,
}

/// Adds to `entries` (one endpoint's merged egress entries) a host entry for each ClusterIP of
/// `services` whose answer differs from what `entries` alone say; keeps `entries` ordered by
/// prefix.
pub(crate) fn add_cluster_ips(entries: &mut Vec<Entry>, services: &[ServiceInfo]) {
    let index: HashMap<Prefix, usize> = entries
        .iter()
        .enumerate()
        .map(|(i, entry)| (entry.prefix, i))
        .collect();
    let lookup = |addr: IpAddr| longest_match(entries, &index, addr);
    let mut added: Vec<Entry> = Vec::new();
    for service in services {
        for vip in &service.cluster_ips {
            let mut rules = Vec::new();
            let mut differs = false;
            let vip_value = lookup(*vip);
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
                added.push(entry(*vip, &rules));
            }
        }
    }
    if added.is_empty() {
        return;
    }
    for entry in added {
        match index.get(&entry.prefix) {
            Some(&i) => entries[i] = entry,
            None => entries.push(entry),
        }
    }
    entries.sort_by_key(|entry| entry.prefix);
}

/// The host entry of `vip` holding `rules` (at most one per Service port; a Service has far
/// fewer ports than a value holds, the rest are reported as dropped).
fn entry(vip: IpAddr, rules: &[PortRule]) -> Entry {
    let mut value = PolicyValue::EMPTY;
    let kept = rules.len().min(value.rules.len());
    value.rules[..kept].copy_from_slice(&rules[..kept]);
    value.count = kept as u32;
    Entry {
        prefix: Prefix::host(vip),
        value,
        dropped: rules.len() - kept,
    }
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

/// The value of the longest prefix of `entries` that holds `addr`, as the kernel's LPM trie
/// answers.
fn longest_match<'e>(
    entries: &'e [Entry],
    index: &HashMap<Prefix, usize>,
    addr: IpAddr,
) -> Option<&'e PolicyValue> {
    let host = Prefix::host(addr);
    (0..=128u8)
        .rev()
        .find_map(|len| index.get(&host.truncate(len)))
        .map(|&i| &entries[i].value)
}
