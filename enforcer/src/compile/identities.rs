//! Peer identities: every address a policy can name gets the identity of what policy can tell
//! about it, and the node-wide peer trie maps address prefixes to identities.
//!
//! How an address becomes an identity:
//! 1. The universe. Every distinct pod selector of a rule's peers (`podSelector`,
//!    `namespaceSelector` or both, with the policy's namespace when it has no namespace
//!    selector) is a [`PeerSelector`]; every ipBlock's cidr and excepts is a *region* prefix, and
//!    so are `0.0.0.0/0` and `::/0`, so that every address has one; the names of the named ports
//!    egress rules use are collected too (they resolve against the peer pod).
//! 2. Regions. An address's region is the longest region prefix that contains it. Whether an
//!    ipBlock covers an address depends only on its region, because every cidr and except is a
//!    region prefix itself.
//! 3. Pods. Pods are grouped by namespace and labels first (pods of one workload share them),
//!    each group is matched against the selectors once, and each pod address gets the identity
//!    keyed by (selectors that match it, its region, its named ports that egress rules use).
//!    Pods that no selector matches and whose named ports no rule uses share their region's
//!    identity. So identities grow with the distinct ways policy sees pods, not with pods.
//! 4. ClusterIPs. Each Service address gets an identity of its own whose fallback is its
//!    region's identity: a policy set has an entry for it only where the Service's backends
//!    decide otherwise than the address itself would (see `vips`).
//!
//! The trie holds every region prefix, every ClusterIP and every pod address (the longest
//! prefix wins, so a pod's own entry shadows the region around it). Ids are stable across
//! compilations (by the identity's canonical form), so unchanged identities keep their
//! entries.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use tollgate_schemas::{PeerIdentity, PeerKey};

use super::cidr::Prefix;
use super::cluster::Cluster;
use super::ids;
use super::peers::Peer;
use super::policy::Policy;
use super::ports::{NamedPort, PortSpec};
use super::selector::Selector;
use super::services::ServiceInfo;
use crate::desired::PeerEntryKey;

/// Which namespaces a [`PeerSelector`] looks in.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Namespaces {
    /// The policy's own namespace (no `namespaceSelector`).
    Own(String),
    /// Those whose labels match.
    Matching(Selector),
}

/// A distinct pod selector of some rule's peers.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct PeerSelector {
    /// Where.
    pub(crate) namespaces: Namespaces,
    /// Which pods there (`None`: all).
    pub(crate) pods: Option<Selector>,
}

impl PeerSelector {
    /// The selector of a `Pods` peer of a policy in `namespace`.
    pub(crate) fn of(
        namespace: &str,
        namespaces: Option<&Selector>,
        pods: Option<&Selector>,
    ) -> Self {
        PeerSelector {
            namespaces: match namespaces {
                None => Namespaces::Own(namespace.to_owned()),
                Some(selector) => Namespaces::Matching(selector.clone()),
            },
            pods: pods.cloned(),
        }
    }

    /// Canonical form, the key of its stable id.
    fn canonical(&self) -> String {
        format!("{:?} {:?}", self.namespaces, self.pods)
    }
}

/// What an identity stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Pod addresses (and, when `selectors` and `named` are empty, the other addresses of the
    /// region too).
    Pods {
        /// Indices into [`Peers::selectors`] of the selectors that match these pods.
        selectors: Vec<usize>,
        /// Their named ports that egress rules use.
        named: Vec<NamedPort>,
    },
    /// A Service's ClusterIP.
    ClusterIp(IpAddr),
}

/// One peer identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Identity {
    /// Its id in the maps (never 0).
    pub(crate) id: u32,
    /// The region prefix of its addresses.
    pub(crate) region: Prefix,
    /// What it stands for.
    pub(crate) kind: Kind,
}

impl Identity {
    /// Whether rule peers select it by address (pods and regions; a ClusterIP only counts
    /// through its backends).
    pub(crate) fn is_address(&self) -> bool {
        matches!(self.kind, Kind::Pods { .. })
    }

    /// The named ports egress rules resolve against: the pods' own (none for a region's other
    /// addresses, so a named port allows them nothing).
    pub(crate) fn named_ports(&self) -> &[NamedPort] {
        match &self.kind {
            Kind::Pods { named, .. } => named,
            Kind::ClusterIp(_) => &[],
        }
    }
}

/// Key of an identity before it has an id.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    selectors: Vec<usize>,
    region: Prefix,
    named: Vec<NamedPort>,
    cluster_ip: Option<IpAddr>,
}

/// Every identity of the cluster, and the peer trie that names them.
pub(crate) struct Peers {
    /// The distinct selectors of rule peers.
    pub(crate) selectors: Vec<PeerSelector>,
    /// Stable ids of the selectors, by canonical form (for [`crate::desired::Ids`]).
    pub(crate) selector_ids: BTreeMap<String, u32>,
    /// Every identity.
    pub(crate) identities: Vec<Identity>,
    /// Stable ids of the identities, by canonical form.
    pub(crate) identity_ids: BTreeMap<String, u32>,
    /// Per selector index, the identities it matches.
    pub(crate) by_selector: Vec<Vec<usize>>,
    /// Identity of each region prefix.
    pub(crate) by_region: HashMap<Prefix, usize>,
    /// Identity of each pod address.
    pub(crate) by_address: HashMap<IpAddr, usize>,
    /// Identity of each ClusterIP.
    pub(crate) by_cluster_ip: HashMap<IpAddr, usize>,
    /// The peer trie's entries, in the order they are kept when the trie is full: regions,
    /// ClusterIPs, then pod addresses; the flag says a pod address (only those are left out).
    pub(crate) entries: Vec<(PeerEntryKey, PeerIdentity, bool)>,
    /// Region prefixes by length, for the longest match.
    regions: Regions,
}

/// Region prefixes, for longest-prefix matches of addresses.
struct Regions {
    prefixes: HashSet<Prefix>,
    lengths: Vec<u8>,
}

impl Regions {
    fn new(prefixes: HashSet<Prefix>) -> Regions {
        let lengths: BTreeSet<u8> = prefixes.iter().map(|p| p.len()).collect();
        Regions {
            prefixes,
            lengths: lengths.into_iter().rev().collect(),
        }
    }

    /// The longest region prefix that contains `prefix` (always one: `0.0.0.0/0` and `::/0`
    /// are regions).
    fn of(&self, prefix: Prefix) -> Prefix {
        self.lengths
            .iter()
            .filter(|len| **len <= prefix.len())
            .map(|len| prefix.truncate(*len))
            .find(|candidate| self.prefixes.contains(candidate))
            .unwrap_or(Prefix::ALL_V6)
    }
}

impl Peers {
    /// The identities of `cluster` as `policies` and `services` see it, with ids kept from
    /// `prior_selectors` and `prior_identities`.
    pub(crate) fn build(
        cluster: &Cluster,
        policies: &[&Policy],
        services: &[ServiceInfo],
        prior_selectors: &BTreeMap<String, u32>,
        prior_identities: &BTreeMap<String, u32>,
    ) -> Peers {
        let universe = Universe::of(policies);
        let selector_ids = ids::assign(
            prior_selectors,
            universe.selectors.iter().map(PeerSelector::canonical),
        );
        let regions = Regions::new(universe.regions);

        let mut keys: Vec<Key> = Vec::new();
        let mut key_index: HashMap<Key, usize> = HashMap::new();
        let mut intern = |key: Key| -> usize {
            *key_index.entry(key.clone()).or_insert_with(|| {
                keys.push(key);
                keys.len() - 1
            })
        };
        let region_key = |region: Prefix| Key {
            selectors: Vec::new(),
            region,
            named: Vec::new(),
            cluster_ip: None,
        };
        let mut sorted_regions: Vec<Prefix> = regions.prefixes.iter().copied().collect();
        sorted_regions.sort();
        let by_region: HashMap<Prefix, usize> = sorted_regions
            .iter()
            .map(|region| (*region, intern(region_key(*region))))
            .collect();

        let mut by_cluster_ip = HashMap::new();
        for service in services {
            for ip in &service.cluster_ips {
                let key = Key {
                    cluster_ip: Some(*ip),
                    ..region_key(regions.of(Prefix::host(*ip)))
                };
                by_cluster_ip.insert(*ip, intern(key));
            }
        }

        let classes = match_classes(cluster, &universe.selectors);
        // Per class, the named ports egress rules use; then per (class, region) the identity.
        let mut class_named: Vec<Option<Vec<NamedPort>>> = vec![None; classes.matched.len()];
        let mut class_identity: HashMap<(usize, Prefix), usize> = HashMap::new();
        let mut by_address = HashMap::new();
        let mut pod_entries = Vec::new();
        let networked = cluster.pods.values().filter(|pod| pod.is_networked());
        for (pod, &class) in networked.zip(&classes.of_pod) {
            for ip in &pod.ips {
                let region = regions.of(Prefix::host(*ip));
                let index = *class_identity.entry((class, region)).or_insert_with(|| {
                    let named = class_named[class].get_or_insert_with(|| {
                        let mut named: Vec<NamedPort> = pod
                            .named_ports
                            .iter()
                            .filter(|p| {
                                universe
                                    .egress_names
                                    .contains(&(p.name.clone(), p.protocol))
                            })
                            .cloned()
                            .collect();
                        named.sort_by(|a, b| {
                            (&a.name, a.protocol, a.port).cmp(&(&b.name, b.protocol, b.port))
                        });
                        named
                    });
                    intern(Key {
                        selectors: classes.matched[class].clone(),
                        region,
                        named: named.clone(),
                        cluster_ip: None,
                    })
                });
                by_address.insert(*ip, index);
                pod_entries.push((*ip, index));
            }
        }

        let stable: Vec<u32> = universe
            .selectors
            .iter()
            .map(|s| selector_ids[&s.canonical()])
            .collect();
        let canonical: Vec<String> = keys.iter().map(|key| canonical(key, &stable)).collect();
        let identity_ids = ids::assign(prior_identities, canonical.iter().cloned());
        let identities: Vec<Identity> = keys
            .into_iter()
            .zip(&canonical)
            .map(|(key, canonical)| Identity {
                id: identity_ids[canonical],
                region: key.region,
                kind: match key.cluster_ip {
                    Some(ip) => Kind::ClusterIp(ip),
                    None => Kind::Pods {
                        selectors: key.selectors,
                        named: key.named,
                    },
                },
            })
            .collect();

        let mut by_selector = vec![Vec::new(); universe.selectors.len()];
        for (index, identity) in identities.iter().enumerate() {
            if let Kind::Pods { selectors, .. } = &identity.kind {
                for selector in selectors {
                    by_selector[*selector].push(index);
                }
            }
        }

        let entry = |prefix: Prefix, identity: &Identity, fallback: u32| {
            (
                PeerEntryKey {
                    prefix_len: u32::from(prefix.len()),
                    key: PeerKey {
                        addr: prefix.bytes(),
                    },
                },
                PeerIdentity {
                    id: identity.id,
                    fallback,
                },
            )
        };
        let mut entries = Vec::new();
        for region in &sorted_regions {
            let (key, value) = entry(*region, &identities[by_region[region]], 0);
            entries.push((key, value, false));
        }
        let mut cluster_ips: Vec<(&IpAddr, &usize)> = by_cluster_ip.iter().collect();
        cluster_ips.sort();
        for (ip, index) in cluster_ips {
            let identity = &identities[*index];
            let fallback = identities[by_region[&identity.region]].id;
            let (key, value) = entry(Prefix::host(*ip), identity, fallback);
            entries.push((key, value, false));
        }
        for (ip, index) in pod_entries {
            let (key, value) = entry(Prefix::host(ip), &identities[index], 0);
            entries.push((key, value, true));
        }

        Peers {
            selectors: universe.selectors,
            selector_ids,
            identities,
            identity_ids,
            by_selector,
            by_region,
            by_address,
            by_cluster_ip,
            entries,
            regions,
        }
    }

    /// The identity an address has as a peer (a pod's own, else its region's).
    pub(crate) fn of_address(&self, ip: IpAddr) -> usize {
        self.by_address
            .get(&ip)
            .copied()
            .unwrap_or_else(|| self.region_of_address(ip))
    }

    /// An address or prefix that has identity `index`, for messages.
    pub(crate) fn describe(&self, index: usize) -> String {
        let identity = &self.identities[index];
        if let Kind::ClusterIp(ip) = identity.kind {
            return format!("ClusterIP {ip}");
        }
        let mut addresses: Vec<&IpAddr> = self
            .by_address
            .iter()
            .filter(|(_, i)| **i == index)
            .map(|(ip, _)| ip)
            .collect();
        addresses.sort();
        match addresses.first() {
            Some(ip) => format!("{ip} (and {} more)", addresses.len() - 1),
            None => identity.region.to_string(),
        }
    }

    /// Index of the identity of the region of `ip`.
    pub(crate) fn region_of_address(&self, ip: IpAddr) -> usize {
        self.by_region[&self.regions.of(Prefix::host(ip))]
    }

    /// Index of the identity of region `region`.
    pub(crate) fn of_region(&self, region: Prefix) -> usize {
        self.by_region[&region]
    }
}

/// What the rules of all policies refer to.
struct Universe {
    selectors: Vec<PeerSelector>,
    regions: HashSet<Prefix>,
    egress_names: HashSet<(String, u8)>,
}

impl Universe {
    fn of(policies: &[&Policy]) -> Universe {
        let mut selectors = Vec::new();
        let mut seen = HashSet::new();
        let mut regions = HashSet::from([Prefix::ALL_V4, Prefix::ALL_V6]);
        let mut egress_names = HashSet::new();
        for policy in policies {
            let lists = [(&policy.ingress, false), (&policy.egress, true)];
            for (rules, egress) in lists {
                for rule in rules.iter().flatten() {
                    if egress {
                        for spec in &rule.ports {
                            if let PortSpec::Named { protocol, name } = spec {
                                egress_names.insert((name.clone(), *protocol));
                            }
                        }
                    }
                    for peer in rule.peers.iter().flatten() {
                        match peer {
                            Peer::Pods { namespaces, pods } => {
                                let selector = PeerSelector::of(
                                    &policy.namespace,
                                    namespaces.as_ref(),
                                    pods.as_ref(),
                                );
                                if seen.insert(selector.clone()) {
                                    selectors.push(selector);
                                }
                            }
                            Peer::Block(block) => {
                                regions.insert(block.cidr);
                                regions.extend(block.excepts.iter().copied());
                            }
                        }
                    }
                }
            }
        }
        Universe {
            selectors,
            regions,
            egress_names,
        }
    }
}

/// Networked pods in classes: same namespace, labels and named ports (the same policy sees
/// them alike, up to their addresses).
struct Classes {
    /// Each networked pod's class, in pod order.
    of_pod: Vec<usize>,
    /// Per class, the selectors (indices into the universe's) that match it.
    matched: Vec<Vec<usize>>,
}

/// The classes of `cluster`'s networked pods, each matched against `selectors` once: a
/// selector only against the classes of the namespaces it looks in.
fn match_classes(cluster: &Cluster, selectors: &[PeerSelector]) -> Classes {
    // Pods with equal labels (and named ports) share one value (`Cluster::set_pod`): its
    // address names it.
    type ClassKey<'a> = (&'a str, *const BTreeMap<String, String>, *const [NamedPort]);
    let mut class_of: HashMap<ClassKey<'_>, usize> = HashMap::new();
    let mut classes: Vec<(&str, &BTreeMap<String, String>)> = Vec::new();
    let mut by_namespace: HashMap<&str, Vec<usize>> = HashMap::new();
    let of_pod: Vec<usize> = cluster
        .pods
        .values()
        .filter(|pod| pod.is_networked())
        .map(|pod| {
            let key = (
                pod.namespace.as_str(),
                Arc::as_ptr(&pod.labels),
                Arc::as_ptr(&pod.named_ports),
            );
            *class_of.entry(key).or_insert_with(|| {
                classes.push((pod.namespace.as_str(), &pod.labels));
                by_namespace
                    .entry(pod.namespace.as_str())
                    .or_default()
                    .push(classes.len() - 1);
                classes.len() - 1
            })
        })
        .collect();
    let mut matched: Vec<Vec<usize>> = vec![Vec::new(); classes.len()];
    for (index, selector) in selectors.iter().enumerate() {
        let namespaces: Vec<&str> = match &selector.namespaces {
            Namespaces::Own(namespace) => vec![namespace.as_str()],
            Namespaces::Matching(namespace_selector) => cluster
                .namespaces
                .iter()
                .filter(|(_, ns)| namespace_selector.matches(&ns.labels))
                .map(|(name, _)| name.as_str())
                .collect(),
        };
        for namespace in namespaces {
            for class in by_namespace.get(namespace).into_iter().flatten() {
                if selector
                    .pods
                    .as_ref()
                    .is_none_or(|pods| pods.matches(classes[*class].1))
                {
                    matched[*class].push(index);
                }
            }
        }
    }
    Classes { of_pod, matched }
}

/// The canonical form of an identity: stable across compilations as long as what it stands for
/// is (selectors by their own stable ids).
fn canonical(key: &Key, selector_ids: &[u32]) -> String {
    if let Some(ip) = key.cluster_ip {
        return format!("clusterip {ip}");
    }
    let mut selector_ids: Vec<u32> = key.selectors.iter().map(|s| selector_ids[*s]).collect();
    selector_ids.sort_unstable();
    let named: Vec<String> = key
        .named
        .iter()
        .map(|p| format!("{}/{}={}", p.name, p.protocol, p.port))
        .collect();
    format!(
        "region {} selectors {selector_ids:?} named {named:?}",
        key.region
    )
}
