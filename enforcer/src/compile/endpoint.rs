//! One endpoint's map state: which policies isolate the pod in each direction, its trie
//! entries (from [`Grants`]) written into the desired tries, its flags, and the revision
//! digest over flags and entries; then its addresses in the endpoint map.

use std::collections::BTreeMap;

use tollgate_schemas::{
    Direction, EndpointKey, EndpointState, MAX_PORT_RULES, PolicyKey, addr, endpoint_flags,
    policy_prefix_len,
};

use super::cluster::PodInfo;
use super::grants::Grants;
use super::lpm::Entry;
use super::policy::Policy;
use crate::desired::{DesiredState, PolicyEntryKey};
use crate::snapshot::InputError;

/// A valid policy with the ids of its compiled rules.
pub(crate) struct PolicyRules<'c> {
    /// The policy.
    pub(crate) policy: &'c Policy,
    /// Ids of `spec.ingress[*]`, or `None` when the policy has no Ingress type.
    pub(crate) ingress: Option<Vec<u32>>,
    /// Ids of `spec.egress[*]`, or `None` when the policy has no Egress type.
    pub(crate) egress: Option<Vec<u32>>,
}

impl PolicyRules<'_> {
    fn ids(&self, direction: Direction) -> Option<&[u32]> {
        match direction {
            Direction::Ingress => self.ingress.as_deref(),
            Direction::Egress => self.egress.as_deref(),
        }
    }
}

/// Where the endpoints' state goes, and the errors found on the way.
pub(crate) struct Writer<'c> {
    /// The maps' desired state, filled endpoint by endpoint.
    pub(crate) desired: DesiredState,
    /// Capacity problems and address conflicts.
    pub(crate) errors: Vec<InputError>,
    /// Which endpoint pod owns each address written so far.
    owners: BTreeMap<EndpointKey, &'c PodInfo>,
}

impl<'c> Writer<'c> {
    /// An empty desired state.
    pub(crate) fn new() -> Writer<'c> {
        Writer {
            desired: DesiredState::default(),
            errors: Vec::new(),
            owners: BTreeMap::new(),
        }
    }

    /// Compiles endpoint `id`, pod `pod` on interface `ifindex`, under `policies`.
    ///
    /// A direction is isolated when a policy of the pod's namespace selects the pod and has
    /// that type; it is in audit mode when, besides, the namespace is, or every isolating
    /// policy is. A quarantine policy that selects the pod is the only one that counts, and
    /// never in audit mode.
    pub(crate) fn endpoint(
        &mut self,
        grants: &mut Grants<'_>,
        policies: &[PolicyRules<'_>],
        namespace_audit: bool,
        pod: &'c PodInfo,
        id: u32,
        ifindex: u32,
    ) {
        let mut flags = endpoint_flags::PROGRAMMED;
        let mut digest = Fnv1a::new();
        let mut directions = Vec::new();
        let selecting = |p: &&PolicyRules<'_>| {
            p.policy.namespace == pod.namespace && p.policy.selector.matches(&pod.labels)
        };
        let quarantined = policies
            .iter()
            .filter(selecting)
            .any(|p| p.policy.quarantine);
        for direction in [Direction::Ingress, Direction::Egress] {
            let isolating: Vec<&PolicyRules<'_>> = policies
                .iter()
                .filter(|p| p.ids(direction).is_some())
                .filter(selecting)
                .filter(|p| !quarantined || p.policy.quarantine)
                .collect();
            if isolating.is_empty() {
                continue;
            }
            flags |= endpoint_flags::isolated(direction);
            if !quarantined && (namespace_audit || isolating.iter().all(|p| p.policy.audit)) {
                flags |= endpoint_flags::audit(direction);
            }
            let ids = isolating
                .iter()
                .flat_map(|p| p.ids(direction).unwrap_or_default())
                .copied()
                .collect();
            directions.push((direction, grants.entries(direction, ids, pod)));
        }
        digest.write(&flags.to_le_bytes());
        for (direction, entries) in &directions {
            for entry in entries.iter() {
                digest.entry(*direction, entry);
                self.entry(pod, id, *direction, entry);
            }
        }
        let state = EndpointState {
            id,
            ifindex,
            flags,
            revision: digest.finish(),
        };
        self.addresses(pod, state);
    }

    fn entry(&mut self, pod: &PodInfo, id: u32, direction: Direction, entry: &Entry) {
        if entry.dropped > 0 {
            self.errors.push(InputError {
                object: format!("Pod {}", pod.key()),
                field: format!("{} peer {}", direction.name(), entry.prefix),
                message: format!(
                    "more port rules allow this peer prefix than a map value holds \
                     ({MAX_PORT_RULES}); {} were left out, and what only they allow is denied",
                    entry.dropped
                ),
            });
        }
        self.desired.policy_mut(direction).insert(
            PolicyEntryKey {
                prefix_len: policy_prefix_len(entry.prefix.len()),
                key: PolicyKey {
                    endpoint: id,
                    addr: entry.prefix.bytes(),
                },
            },
            entry.value,
        );
    }

    /// Every address of the pod → `state`, unless an earlier endpoint pod has it.
    fn addresses(&mut self, pod: &'c PodInfo, state: EndpointState) {
        for ip in &pod.ips {
            let key = EndpointKey {
                addr: addr::to_bytes(*ip),
            };
            if let Some(owner) = self.owners.get(&key) {
                self.errors.push(InputError {
                    object: format!("Pod {}", pod.key()),
                    field: "status.podIPs".to_owned(),
                    message: format!(
                        "{ip} is already the address of endpoint pod {}; left out of the \
                         endpoint map",
                        owner.key()
                    ),
                });
                continue;
            }
            self.owners.insert(key, pod);
            self.desired.endpoints.insert(key, state);
        }
    }
}

/// FNV-1a, 32 bits: the endpoint revision digest.
struct Fnv1a(u32);

impl Fnv1a {
    fn new() -> Self {
        Fnv1a(0x811c_9dc5)
    }

    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 ^= u32::from(*byte);
            self.0 = self.0.wrapping_mul(0x0100_0193);
        }
    }

    /// One trie entry, in a fixed layout that leaves out the endpoint id.
    fn entry(&mut self, direction: Direction, entry: &Entry) {
        self.write(&[direction as u8, entry.prefix.len()]);
        self.write(&entry.prefix.bytes());
        self.write(&entry.value.count.to_le_bytes());
        for rule in &entry.value.rules[..entry.value.count as usize] {
            self.write(&rule.rule_id.to_le_bytes());
            self.write(&rule.port_lo.to_le_bytes());
            self.write(&rule.port_hi.to_le_bytes());
            self.write(&[rule.protocol, rule.action]);
        }
    }

    fn finish(&self) -> u32 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_reference_values() {
        let digest = |bytes: &[u8]| {
            let mut d = Fnv1a::new();
            d.write(bytes);
            d.finish()
        };
        assert_eq!(digest(b""), 0x811c_9dc5);
        assert_eq!(digest(b"a"), 0xe40c_292c);
        assert_eq!(digest(b"foobar"), 0xbf9c_f968);
    }
}
