//! From the rules that isolate an endpoint in one direction to its trie entries: each rule's
//! peers are resolved against the cluster into targets (once per compilation), the targets
//! with the rule's port ranges become [`Grant`]s, and the LPM merge turns the grants into
//! entries (once per distinct set of rules, shared by every endpoint that set isolates).
//!
//! Named ports resolve against the destination pod: for ingress the endpoint itself (so the
//! merge is shared only between endpoints with the same named ports), for egress each peer
//! pod, whose addresses then get grants of their own. An address that is no pod's gets nothing
//! from a named port, even inside an ipBlock or under a rule without peers.
//!
//! Egress entries then gain the Services' ClusterIPs, decided by their backends (`vips`).

use std::collections::HashMap;
use std::rc::Rc;

use tollgate_schemas::Direction;

use super::cidr::Prefix;
use super::cluster::{Cluster, PodInfo};
use super::lpm::{self, Entry, Grant};
use super::peers::{Block, Peer, selected_pods};
use super::policy::{Policy, Rule};
use super::ports::{NamedPort, PortRange, PortSpec, has_named, resolve};
use super::services::ServiceInfo;
use super::vips;

/// What a rule's peers stand for, resolved against the cluster.
enum Target<'c> {
    /// Every address.
    Everything,
    /// One pod's addresses.
    Pod(&'c PodInfo),
    /// An ipBlock.
    Block(&'c Block),
}

/// Key of one LPM merge: direction, the isolating rules, and (ingress with named ports only)
/// the endpoint's named ports.
type MergeKey = (Direction, Vec<u32>, Vec<NamedPort>);

/// Rules by id, with the per-compilation caches of the grant and merge steps.
pub(crate) struct Grants<'c> {
    cluster: &'c Cluster,
    /// Rule id → its policy and rule.
    rules: HashMap<u32, (&'c Policy, &'c Rule)>,
    /// The Services whose ClusterIPs egress entries decide by their backends.
    services: &'c [ServiceInfo],
    /// Rule id → what its peers resolve to.
    targets: HashMap<u32, Rc<Vec<Target<'c>>>>,
    /// Merged entries, shared by endpoints isolated by the same rules.
    merged: HashMap<MergeKey, Rc<Vec<Entry>>>,
}

impl<'c> Grants<'c> {
    /// Grants of `rules` (rule id → policy and rule) over `cluster` and its `services`.
    pub(crate) fn new(
        cluster: &'c Cluster,
        rules: HashMap<u32, (&'c Policy, &'c Rule)>,
        services: &'c [ServiceInfo],
    ) -> Grants<'c> {
        Grants {
            cluster,
            rules,
            services,
            targets: HashMap::new(),
            merged: HashMap::new(),
        }
    }

    /// The trie entries of `endpoint` in `direction`, isolated by the rules `ids`.
    pub(crate) fn entries(
        &mut self,
        direction: Direction,
        ids: Vec<u32>,
        endpoint: &PodInfo,
    ) -> Rc<Vec<Entry>> {
        let named = direction == Direction::Ingress
            && ids.iter().any(|id| has_named(&self.rules[id].1.ports));
        let named_ports = if named {
            endpoint.named_ports.clone()
        } else {
            Vec::new()
        };
        let key = (direction, ids, named_ports);
        if let Some(entries) = self.merged.get(&key) {
            return Rc::clone(entries);
        }
        let mut grants = Vec::new();
        for &id in &key.1 {
            let (_, rule) = self.rules[&id];
            let targets = self.targets(id);
            match direction {
                Direction::Ingress => {
                    let ranges = resolve(&rule.ports, Some(&key.2), true);
                    for target in targets.iter() {
                        target_grants(target, id, &ranges, &mut grants);
                    }
                }
                Direction::Egress => self.egress_grants(id, &rule.ports, &targets, &mut grants),
            }
        }
        let mut entries = lpm::merge(&grants);
        if direction == Direction::Egress {
            vips::add_cluster_ips(&mut entries, self.services);
        }
        let entries = Rc::new(entries);
        self.merged.insert(key, Rc::clone(&entries));
        entries
    }

    /// What rule `id`'s peers resolve to (computed once per compilation).
    fn targets(&mut self, id: u32) -> Rc<Vec<Target<'c>>> {
        let (policy, rule) = self.rules[&id];
        let cluster = self.cluster;
        let targets = self.targets.entry(id).or_insert_with(|| {
            let Some(peers) = &rule.peers else {
                return Rc::new(vec![Target::Everything]);
            };
            let mut targets = Vec::new();
            for peer in peers {
                match peer {
                    Peer::Pods { namespaces, pods } => targets.extend(
                        selected_pods(
                            cluster,
                            &policy.namespace,
                            namespaces.as_ref(),
                            pods.as_ref(),
                        )
                        .map(Target::Pod),
                    ),
                    Peer::Block(block) => targets.push(Target::Block(block)),
                }
            }
            Rc::new(targets)
        });
        Rc::clone(targets)
    }

    /// Egress grants of rule `id`: towards a pod, its numeric and named ports; towards
    /// everything or an ipBlock, the numeric ports, plus each networked pod's own named ports
    /// on those of its addresses that lie inside.
    fn egress_grants(
        &self,
        id: u32,
        specs: &[PortSpec],
        targets: &[Target<'_>],
        grants: &mut Vec<Grant>,
    ) {
        let numeric = resolve(specs, None, true);
        let named = has_named(specs);
        for target in targets {
            if let Target::Pod(pod) = target {
                let ranges = resolve(specs, Some(&pod.named_ports), true);
                target_grants(target, id, &ranges, grants);
                continue;
            }
            target_grants(target, id, &numeric, grants);
            if !named {
                continue;
            }
            for pod in self.cluster.pods.iter().filter(|p| p.is_networked()) {
                let ranges = resolve(specs, Some(&pod.named_ports), false);
                if ranges.is_empty() {
                    continue;
                }
                let rules: Vec<_> = ranges.iter().map(|r| r.rule(id)).collect();
                let inside =
                    pod.ips
                        .iter()
                        .map(|ip| Prefix::host(*ip))
                        .filter(|host| match target {
                            Target::Block(block) => block.covers(*host),
                            _ => true,
                        });
                grants.extend(inside.map(|prefix| Grant {
                    prefix,
                    excepts: Vec::new(),
                    rules: rules.clone(),
                }));
            }
        }
    }
}

/// Grants of one target for rule `id`, with its port ranges already resolved.
fn target_grants(target: &Target<'_>, id: u32, ranges: &[PortRange], grants: &mut Vec<Grant>) {
    if ranges.is_empty() {
        return;
    }
    let rules: Vec<_> = ranges.iter().map(|r| r.rule(id)).collect();
    let mut grant = |prefix, excepts: &[Prefix]| {
        grants.push(Grant {
            prefix,
            excepts: excepts.to_vec(),
            rules: rules.clone(),
        });
    };
    match target {
        Target::Everything => {
            grant(Prefix::ALL_V6, &[]);
            grant(Prefix::ALL_V4, &[]);
        }
        Target::Pod(pod) => {
            for ip in &pod.ips {
                grant(Prefix::host(*ip), &[]);
            }
        }
        Target::Block(block) => grant(block.cidr, &block.excepts),
    }
}
