//! ClusterIPs in an egress policy set: a connection to `ClusterIP:port` is decided by the
//! backends kube-proxy may send it to.
//!
//! The probe sees a pod's egress at the host veth, before netfilter, where kube-proxy rewrites a
//! ClusterIP to one backend picked at random. So the decision is made over every ready backend
//! at once, from the set's own values for the backends' identities (what it may reach by
//! address):
//! - every backend allowed on its targetPort: the ClusterIP's port is allowed, naming the rule
//!   that allowed the first backend (none when the set's default allowed them all);
//! - only some: the port gets a [`port_action::DENY_SERVICE`] rule, so the connection is denied
//!   with reason `service-backends-denied` (fail closed: it could reach a denied backend);
//! - none (or no ready backend): a [`port_action::DENY`] rule naming the first backend's
//!   denying rule when a ClusterNetworkPolicy's Deny denied one; else nothing, so the
//!   connection is denied as no rule matched. A set that no NetworkPolicy isolates (`open`:
//!   ClusterNetworkPolicies only) allows what no rule decides, backends included.
//!
//! The ClusterIP has a peer identity of its own, whose entry in a set shadows what an ipBlock
//! around it says: the virtual address does not count, only the backends do (as with enforcers
//! that decide after the DNAT). The entry is written only where it changes an answer: when the
//! ClusterIP's region (its fallback identity) already gives each Service port the same verdict
//! (and no port is partly allowed, whose reason must be told), it is left out, so a broad allow
//! (`0.0.0.0/0`) does not cost an entry per Service per set.
//!
//! The ClusterIPs with their backends by identity ([`ClusterIps`]) are kept between passes: a
//! pass finds again only those of the Services that changed and of those with a backend at an
//! address whose identity may have moved, and says which changed ([`Changed`]): a kept egress
//! set has only those decided again ([`patch_cluster_ips`]). An index from identity to the
//! Services whose ClusterIPs have it as a backend's or region's lets a set look only at the
//! ClusterIPs it can concern.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use tollgate_schemas::{PortRule, port_action, rule_tier};

use super::identities::Peers;
use super::services::{self, ServiceInfo};
use super::sets::{Rules, SetEntries, rules_of};

/// One ClusterIP with its backends by peer identity, found once per compilation and then
/// asked about by every egress set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ClusterIp {
    /// Its own identity (index into the identities).
    identity: usize,
    /// That identity's id: the key of its entry in a set. Kept so that a ClusterIP whose
    /// identity was numbered anew counts as changed (an open set has entries for ClusterIPs
    /// that no rule's matched identities account for).
    id: u32,
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

/// A Service's (namespace, name).
pub(crate) type ServiceKey = (String, String);

/// What a pass changed of the ClusterIPs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Changed {
    /// Nothing.
    Nothing,
    /// The ClusterIPs of some Services: a kept egress set is brought up to date by deciding
    /// these again.
    Some {
        /// The identities of the changed Services' ClusterIPs before.
        gone: BTreeSet<usize>,
        /// Their ClusterIPs now.
        now: Vec<ClusterIp>,
    },
    /// Any may have: every egress set is compiled again.
    Everything,
}

/// The ClusterIPs of every Service with their backends by identity, kept between passes: a pass
/// finds again only those of the Services that changed and of those with a backend whose
/// identity may have moved.
#[derive(Debug, Clone, Default)]
pub(crate) struct ClusterIps {
    /// Whether they were found once.
    built: bool,
    /// Per Service, in the order of the Services.
    of_service: BTreeMap<ServiceKey, Found>,
    /// The Services with a ready backend at each address, in order (a list: an address is
    /// the backend of one Service or a few, and there are as many addresses as pods).
    by_backend: HashMap<IpAddr, Vec<ServiceKey>>,
    /// The Services with a ClusterIP that has each identity as a backend's or as its
    /// region's: the only ones a set with no value for that identity cannot concern.
    by_identity: HashMap<usize, BTreeSet<ServiceKey>>,
}

/// What is kept of one Service.
#[derive(Debug, Clone)]
struct Found {
    /// Its ClusterIPs that have an identity.
    cluster_ips: Vec<ClusterIp>,
    /// The addresses of its ready backends.
    backends: Vec<IpAddr>,
}

impl ClusterIps {
    /// Brings them up to date with `services` (in (namespace, name) order) and `peers`, after
    /// the Services `changed` changed and the identities of the addresses `touched` may have
    /// moved since the last call (`None`: any may have). Returns what changed.
    pub(crate) fn update(
        &mut self,
        peers: &Peers,
        services: &[Arc<ServiceInfo>],
        touched: Option<&BTreeSet<IpAddr>>,
        changed: Option<&BTreeSet<ServiceKey>>,
    ) -> Changed {
        let (Some(touched), Some(changed), true) = (touched, changed, self.built) else {
            return match self.rebuild(peers, services) {
                true => Changed::Everything,
                false => Changed::Nothing,
            };
        };
        let mut stale = changed.clone();
        stale.extend(
            touched
                .iter()
                .filter_map(|ip| self.by_backend.get(ip))
                .flatten()
                .cloned(),
        );
        let (mut gone, mut now) = (BTreeSet::new(), Vec::new());
        for key in stale {
            let service = services::find(services, &key.0, &key.1);
            let found = service.map(|s| of_service(peers, s)).unwrap_or_default();
            let kept = self
                .forget(&key)
                .map_or(Vec::new(), |kept| kept.cluster_ips);
            if kept != found {
                gone.extend(kept.iter().map(|vip| vip.identity));
                now.extend(found.iter().cloned());
            }
            if let Some(service) = service {
                self.keep(key, service, found);
            }
        }
        match gone.is_empty() && now.is_empty() {
            true => Changed::Nothing,
            false => Changed::Some { gone, now },
        }
    }

    /// Finds every ClusterIP again; whether any changed.
    fn rebuild(&mut self, peers: &Peers, services: &[Arc<ServiceInfo>]) -> bool {
        let before = std::mem::take(&mut self.of_service);
        self.by_backend.clear();
        self.by_identity.clear();
        for service in services {
            let key = (service.namespace.clone(), service.name.clone());
            self.keep(key, service, of_service(peers, service));
        }
        // Other Services need not mean other ClusterIPs: a new ready backend of a Deployment
        // usually has the identity its replicas have.
        let changed = !self.built
            || !before
                .values()
                .flat_map(|kept| &kept.cluster_ips)
                .eq(self.iter());
        self.built = true;
        changed
    }

    /// Keeps `cluster_ips`, found for `service`, and notes its backends.
    fn keep(&mut self, key: ServiceKey, service: &ServiceInfo, cluster_ips: Vec<ClusterIp>) {
        let mut addresses: Vec<IpAddr> = service
            .ports
            .iter()
            .flat_map(|port| port.backends.iter().map(|b| b.addr))
            .collect();
        addresses.sort_unstable();
        addresses.dedup();
        for address in &addresses {
            let services = self.by_backend.entry(*address).or_default();
            if let Err(at) = services.binary_search(&key) {
                services.insert(at, key.clone());
            }
        }
        for identity in identities_of(&cluster_ips) {
            self.by_identity
                .entry(identity)
                .or_default()
                .insert(key.clone());
        }
        self.of_service.insert(
            key,
            Found {
                cluster_ips,
                backends: addresses,
            },
        );
    }

    /// Forgets the Service `key`; what was kept of it.
    fn forget(&mut self, key: &ServiceKey) -> Option<Found> {
        let kept = self.of_service.remove(key)?;
        for address in &kept.backends {
            if let Some(services) = self.by_backend.get_mut(address) {
                services.retain(|service| service != key);
                if services.is_empty() {
                    self.by_backend.remove(address);
                }
            }
        }
        for identity in identities_of(&kept.cluster_ips) {
            if let Some(services) = self.by_identity.get_mut(&identity) {
                services.remove(key);
                if services.is_empty() {
                    self.by_identity.remove(&identity);
                }
            }
        }
        Some(kept)
    }

    /// The ClusterIPs that a set with values for `identities` may concern: those with one
    /// of them as a backend's or their region's identity.
    fn concerning<'a>(
        &'a self,
        identities: impl Iterator<Item = &'a usize>,
    ) -> impl Iterator<Item = &'a ClusterIp> {
        let services: BTreeSet<&ServiceKey> = identities
            .filter_map(|identity| self.by_identity.get(identity))
            .flatten()
            .collect();
        services
            .into_iter()
            .flat_map(|key| &self.of_service[key].cluster_ips)
    }

    /// Every ClusterIP, Service by Service.
    fn iter(&self) -> impl Iterator<Item = &ClusterIp> {
        self.of_service.values().flat_map(|kept| &kept.cluster_ips)
    }
}

/// The identities of the backends and regions of `cluster_ips`, each once.
fn identities_of(cluster_ips: &[ClusterIp]) -> BTreeSet<usize> {
    cluster_ips
        .iter()
        .flat_map(|vip| {
            let backends = vip.ports.iter().flat_map(|port| &port.backends);
            backends.map(|(identity, _)| *identity).chain([vip.region])
        })
        .collect()
}

/// The ClusterIPs of `service` that have an identity, with their backends by identity.
fn of_service(peers: &Peers, service: &ServiceInfo) -> Vec<ClusterIp> {
    service
        .cluster_ips
        .iter()
        .filter_map(|vip| {
            let identity = *peers.by_cluster_ip.get(vip)?;
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
            Some(ClusterIp {
                identity,
                id: peers.identities[identity].id,
                region: peers.of_region(peers.identities[identity].region),
                ports,
            })
        })
        .collect()
}

/// What the backends of one Service port say, for one set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backends {
    /// Every ready backend is allowed: the first one's rule id.
    Allowed(u32),
    /// Some are allowed, some are not.
    Partly,
    /// None is, or there is none: the first ClusterNetworkPolicy Deny rule that denied one,
    /// if any.
    Denied(Option<u32>),
}

/// Adds to `entries` (one egress set's values by identity) an entry for each of
/// `cluster_ips` whose answer differs from its region's. In a set that denies what no rule
/// decides, only the ClusterIPs with a backend or a region the set has a value for are looked
/// at: for any other, every port is denied both by its backends and by its region, so it needs
/// no entry. An `open` set (it allows what no rule decides) looks at every ClusterIP: one with
/// a port without a ready backend is denied there, though its region is allowed.
pub(crate) fn add_cluster_ips(entries: &mut SetEntries, cluster_ips: &ClusterIps, open: bool) {
    let lookup = |identity: usize| entries.values.get(&identity);
    let decide = |vip: &ClusterIp| Some((vip.identity, entry(vip, lookup, open)?));
    let added: Vec<(usize, Rules)> = match open {
        true => cluster_ips.iter().filter_map(decide).collect(),
        false => cluster_ips
            .concerning(entries.values.keys())
            .filter_map(decide)
            .collect(),
    };
    entries.values.extend(added);
}

/// `entries` (one egress set's, made by [`add_cluster_ips`] when the ClusterIPs were others)
/// with the ClusterIPs that `changed` decided again: `None` when no entry changed.
pub(crate) fn patch_cluster_ips(
    entries: &SetEntries,
    gone: &BTreeSet<usize>,
    now: &[ClusterIp],
    open: bool,
) -> Option<SetEntries> {
    // A gone ClusterIP's identity may be a pod's now, one this set has no rule for (else the
    // set is compiled again, not patched): its old entry is no value of that pod's.
    let lookup = |identity: usize| {
        (!gone.contains(&identity))
            .then(|| entries.values.get(&identity))
            .flatten()
    };
    let decided: BTreeMap<usize, Rules> = now
        .iter()
        .filter_map(|vip| Some((vip.identity, entry(vip, lookup, open)?)))
        .collect();
    let same = decided
        .iter()
        .all(|(identity, value)| entries.values.get(identity) == Some(value))
        && gone
            .iter()
            .chain(now.iter().map(|vip| &vip.identity))
            .all(|identity| {
                decided.contains_key(identity) || !entries.values.contains_key(identity)
            });
    if same {
        return None;
    }
    let mut values = entries.values.clone();
    for identity in gone.iter().chain(now.iter().map(|vip| &vip.identity)) {
        values.remove(identity);
    }
    values.extend(decided);
    Some(SetEntries {
        values,
        dropped: entries.dropped.clone(),
        ..SetEntries::default()
    })
}

/// The entry of `vip` in a set whose values by identity `lookup` gives (the backends' and the
/// region's: a ClusterIP's own identity is never a rule's), when its answer differs from its
/// region's; `open`: the set allows what no rule decides.
fn entry<'e>(
    vip: &ClusterIp,
    lookup: impl Fn(usize) -> Option<&'e Rules> + Copy,
    open: bool,
) -> Option<Rules> {
    let vip_value = lookup(vip.region);
    let mut rules = Vec::new();
    let mut differs = false;
    for port in &vip.ports {
        let answer = backends(port, lookup, open);
        let region_rule =
            vip_value.and_then(|rules| matching_rule(rules, port.protocol, port.port));
        let by_address = allows(region_rule, open);
        differs |= match answer {
            Backends::Allowed(_) => !by_address,
            // The reason names the Service, whatever the addresses say.
            Backends::Partly => true,
            // The record names the Deny rule, unless the region's answer is that very rule.
            Backends::Denied(Some(rule_id)) => region_rule
                .is_none_or(|rule| rule.action != port_action::DENY || rule.rule_id != rule_id),
            Backends::Denied(None) => by_address,
        };
        let action = match answer {
            Backends::Allowed(rule_id) => Some((rule_id, port_action::ALLOW)),
            Backends::Partly => Some((0, port_action::DENY_SERVICE)),
            Backends::Denied(Some(rule_id)) => Some((rule_id, port_action::DENY)),
            Backends::Denied(None) => None,
        };
        if let Some((rule_id, action)) = action {
            rules.push(PortRule {
                rule_id,
                port_lo: port.port,
                port_hi: port.port,
                protocol: port.protocol,
                action,
                tier: rule_tier::NETWORK_POLICY,
                _pad: 0,
            });
        }
    }
    // A Service has far fewer ports than a value holds; `rules_of` keeps the first ones.
    differs.then(|| rules_of(&rules))
}

/// The rule of `rules` (a set's value for one identity) that decides `protocol` and `port`:
/// the first that covers them and does not pass, a Pass skipping the rest of its tier, as the
/// probe's `PolicyValue::matching_rule` finds it.
fn matching_rule(rules: &[PortRule], protocol: u8, port: u16) -> Option<&PortRule> {
    let mut skipped = None;
    for rule in rules {
        if rule.covers(protocol, port) && Some(rule.tier) != skipped {
            if rule.action != port_action::PASS {
                return Some(rule);
            }
            skipped = Some(rule.tier);
        }
    }
    None
}

/// Whether the deciding rule `rule` (`None`: none decided) lets the packet pass, in a set that
/// allows what no rule decides when `open`.
fn allows(rule: Option<&PortRule>, open: bool) -> bool {
    rule.map_or(open, |rule| rule.action == port_action::ALLOW)
}

/// What the backends of `port` say, through `lookup` (identity → the set's value); `open`:
/// the set allows what no rule decides.
fn backends<'e>(port: &Port, lookup: impl Fn(usize) -> Option<&'e Rules>, open: bool) -> Backends {
    let mut first = None;
    // Some when a backend is denied: the first Deny rule that denied one, if any.
    let mut denied: Option<Option<u32>> = None;
    for (identity, target) in &port.backends {
        let rule = lookup(*identity).and_then(|rules| matching_rule(rules, port.protocol, *target));
        if allows(rule, open) {
            first.get_or_insert(rule.map_or(0, |rule| rule.rule_id));
        } else {
            let deny = rule.filter(|rule| rule.action == port_action::DENY);
            denied = Some(denied.flatten().or(deny.map(|rule| rule.rule_id)));
        }
    }
    match (first, denied) {
        (Some(rule_id), None) => Backends::Allowed(rule_id),
        (Some(_), Some(_)) => Backends::Partly,
        (None, denied) => Backends::Denied(denied.flatten()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::sets::value_of;
    use tollgate_schemas::{ANY_PROTOCOL, proto};

    fn rule(rule_id: u32, protocol: u8, port_lo: u16, port_hi: u16) -> PortRule {
        tiered(
            rule_id,
            protocol,
            port_lo,
            port_hi,
            (port_action::ALLOW, rule_tier::NETWORK_POLICY),
        )
    }

    fn tiered(
        rule_id: u32,
        protocol: u8,
        port_lo: u16,
        port_hi: u16,
        (action, tier): (u8, u8),
    ) -> PortRule {
        PortRule {
            rule_id,
            port_lo,
            port_hi,
            protocol,
            action,
            tier,
            _pad: 0,
        }
    }

    #[test]
    fn a_values_rule_is_the_one_the_probe_finds() {
        let values = [
            vec![],
            vec![rule(1, proto::TCP, 80, 80)],
            vec![rule(1, proto::TCP, 8000, 8080), rule(2, proto::UDP, 53, 53)],
            vec![rule(3, ANY_PROTOCOL, 0, 0), rule(4, proto::TCP, 80, 80)],
            // Admin: pass TCP 80, deny TCP; NetworkPolicy: allow TCP 80.
            vec![
                tiered(5, proto::TCP, 80, 80, (port_action::PASS, rule_tier::ADMIN)),
                tiered(
                    6,
                    proto::TCP,
                    0,
                    65535,
                    (port_action::DENY, rule_tier::ADMIN),
                ),
                rule(7, proto::TCP, 80, 80),
            ],
            // Admin: pass everything; Baseline: deny UDP 53, accept everything.
            vec![
                tiered(8, ANY_PROTOCOL, 0, 0, (port_action::PASS, rule_tier::ADMIN)),
                tiered(
                    9,
                    proto::TCP,
                    80,
                    80,
                    (port_action::ALLOW, rule_tier::ADMIN),
                ),
                tiered(
                    10,
                    proto::UDP,
                    53,
                    53,
                    (port_action::DENY, rule_tier::BASELINE),
                ),
                tiered(
                    11,
                    ANY_PROTOCOL,
                    0,
                    0,
                    (port_action::ALLOW, rule_tier::BASELINE),
                ),
            ],
        ];
        for rules in &values {
            let value = value_of(rules);
            for (protocol, port) in [(proto::TCP, 80), (proto::TCP, 8080), (proto::UDP, 53)] {
                assert_eq!(
                    matching_rule(&rules_of(rules), protocol, port),
                    value.matching_rule(protocol, port, &mut 0),
                    "{rules:?} {protocol}/{port}"
                );
            }
        }
    }
}
