//! Map sync: makes the probe's policy maps hold a [`DesiredState`] by applying the difference
//! between what they hold and what is desired (adds/deletes), never by rewriting them.
//!
//! [`sync`] reads the maps through [`PolicyMaps::read`], computes a [`Diff`] with [`diff`]
//! (only entries that really change), and applies it entry by entry in an order chosen so that
//! the probe never sees an endpoint pointing at policy entries that are not there yet (see
//! [`sync`]). [`InMemoryMaps`] is the in-memory implementation of the maps, used by tests and
//! by anything that wants the sync's result without a kernel.

use std::collections::{BTreeMap, BTreeSet};

use tollgate_schemas::{Direction, EndpointKey, EndpointState, PolicyValue};

use crate::{
    compile::cidr::Prefix,
    desired::{DesiredState, PolicyEntryKey},
};

/// The probe's policy maps, as the sync sees them: read everything, change one entry.
///
/// Implemented over the kernel maps by [`crate::aya_maps::AyaMaps`] and in memory by
/// `InMemoryMaps`.
pub trait PolicyMaps {
    /// Error of the underlying maps.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Everything the maps hold now.
    fn read(&self) -> Result<DesiredState, Self::Error>;
    /// Inserts or replaces one endpoint.
    fn upsert_endpoint(
        &mut self,
        key: &EndpointKey,
        value: &EndpointState,
    ) -> Result<(), Self::Error>;
    /// Removes one endpoint.
    fn delete_endpoint(&mut self, key: &EndpointKey) -> Result<(), Self::Error>;
    /// Inserts or replaces one policy entry of one direction.
    fn upsert_policy(
        &mut self,
        direction: Direction,
        key: &PolicyEntryKey,
        value: &PolicyValue,
    ) -> Result<(), Self::Error>;
    /// Removes one policy entry of one direction.
    fn delete_policy(
        &mut self,
        direction: Direction,
        key: &PolicyEntryKey,
    ) -> Result<(), Self::Error>;
    /// Adds one of the node's own addresses.
    fn insert_node_addr(&mut self, key: &EndpointKey) -> Result<(), Self::Error>;
    /// Removes one of the node's own addresses.
    fn delete_node_addr(&mut self, key: &EndpointKey) -> Result<(), Self::Error>;
}

/// The changes that turn one map's contents into another's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapDiff<K, V> {
    /// Entries that are missing or hold another value, with the value they must hold.
    pub upserts: Vec<(K, V)>,
    /// Keys that must go.
    pub deletes: Vec<K>,
}

impl<K, V> Default for MapDiff<K, V> {
    fn default() -> Self {
        Self {
            upserts: Vec::new(),
            deletes: Vec::new(),
        }
    }
}

impl<K, V> MapDiff<K, V> {
    /// Whether nothing changes.
    pub fn is_empty(&self) -> bool {
        self.upserts.is_empty() && self.deletes.is_empty()
    }
}

/// The changes of all three policy maps, in key order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diff {
    /// Changes of the endpoint map.
    pub endpoints: MapDiff<EndpointKey, EndpointState>,
    /// Changes of the ingress LPM trie.
    pub ingress: MapDiff<PolicyEntryKey, PolicyValue>,
    /// Changes of the egress LPM trie.
    pub egress: MapDiff<PolicyEntryKey, PolicyValue>,
    /// Changes of the node-address map.
    pub node_addrs: MapDiff<EndpointKey, ()>,
}

impl Diff {
    /// Whether nothing changes.
    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
            && self.ingress.is_empty()
            && self.egress.is_empty()
            && self.node_addrs.is_empty()
    }

    /// The changes of one direction's trie.
    pub fn policy(&self, direction: Direction) -> &MapDiff<PolicyEntryKey, PolicyValue> {
        match direction {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }
}

fn diff_map<K: Ord + Copy, V: PartialEq + Copy>(
    current: &BTreeMap<K, V>,
    desired: &BTreeMap<K, V>,
) -> MapDiff<K, V> {
    let upserts = desired
        .iter()
        .filter(|(key, value)| current.get(key) != Some(value))
        .map(|(key, value)| (*key, *value))
        .collect();
    let deletes = current
        .keys()
        .filter(|key| !desired.contains_key(key))
        .copied()
        .collect();
    MapDiff { upserts, deletes }
}

fn diff_set<K: Ord + Copy>(current: &BTreeSet<K>, desired: &BTreeSet<K>) -> MapDiff<K, ()> {
    MapDiff {
        upserts: desired.difference(current).map(|key| (*key, ())).collect(),
        deletes: current.difference(desired).copied().collect(),
    }
}

/// What must change so that maps holding `current` hold `desired`: only entries that are
/// missing, hold another value, or must go.
pub fn diff(current: &DesiredState, desired: &DesiredState) -> Diff {
    Diff {
        endpoints: diff_map(&current.endpoints, &desired.endpoints),
        ingress: diff_map(&current.ingress, &desired.ingress),
        egress: diff_map(&current.egress, &desired.egress),
        node_addrs: diff_set(&current.node_addrs, &desired.node_addrs),
    }
}

/// What one [`sync`] changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncStats {
    /// Entries written (all three maps).
    pub upserts: usize,
    /// Entries removed (all three maps).
    pub deletes: usize,
}

/// A map operation that failed, naming the map and the key.
#[derive(Debug, thiserror::Error)]
pub enum SyncError<E: std::error::Error + 'static> {
    /// The maps could not be read.
    #[error("reading the policy maps: {source}")]
    Read {
        /// The maps' error.
        source: E,
    },
    /// Writing or removing one endpoint failed.
    #[error("{operation} of endpoint {addr} in the endpoint map: {source}")]
    Endpoint {
        /// `upsert` or `delete`.
        operation: &'static str,
        /// The endpoint's address.
        addr: std::net::IpAddr,
        /// The maps' error.
        source: E,
    },
    /// Writing or removing one of the node's addresses failed.
    #[error("{operation} of node address {addr} in the node-address map: {source}")]
    NodeAddr {
        /// `insert` or `delete`.
        operation: &'static str,
        /// The address.
        addr: std::net::IpAddr,
        /// The maps' error.
        source: E,
    },
    /// Writing or removing one policy entry failed.
    #[error(
        "{operation} of entry (endpoint {endpoint}, {prefix}) in the {} policy map: {source}",
        direction.name()
    )]
    Policy {
        /// `upsert` or `delete`.
        operation: &'static str,
        /// Which trie.
        direction: Direction,
        /// Endpoint id of the entry.
        endpoint: u32,
        /// Peer prefix of the entry, in its own family (`10.0.0.0/8`).
        prefix: String,
        /// The maps' error.
        source: E,
    },
}

fn policy_error<E: std::error::Error>(
    operation: &'static str,
    direction: Direction,
    key: &PolicyEntryKey,
    source: E,
) -> SyncError<E> {
    SyncError::Policy {
        operation,
        direction,
        endpoint: key.key.endpoint,
        prefix: Prefix::of_entry(key).to_string(),
        source,
    }
}

fn endpoint_error<E: std::error::Error>(
    operation: &'static str,
    key: &EndpointKey,
    source: E,
) -> SyncError<E> {
    SyncError::Endpoint {
        operation,
        addr: tollgate_schemas::addr::from_bytes(key.addr),
        source,
    }
}

fn node_addr_error<E: std::error::Error>(
    operation: &'static str,
    key: &EndpointKey,
    source: E,
) -> SyncError<E> {
    SyncError::NodeAddr {
        operation,
        addr: tollgate_schemas::addr::from_bytes(key.addr),
        source,
    }
}

/// Makes `maps` hold `desired`: reads what they hold, computes the [`diff`], and applies it.
///
/// The order is: node-address deletes, policy upserts (ingress, then egress), node-address
/// inserts, endpoint upserts, policy deletes, endpoint deletes. A node address that no longer
/// belongs to the node loses its ingress allowance before anything else is written. A new endpoint's entries are therefore in the tries before the endpoint
/// appears (it is never seen isolated with its allow entries missing), and an endpoint's new
/// flags and revision are written only once the entries they describe are there. Policy entries
/// are removed only after the endpoints stopped pointing at them, and a removed endpoint's
/// entries go before the endpoint does, so a packet in between is denied (the endpoint is still
/// isolated), never let through by a half-removed state.
///
/// Stops at the first failing operation; what was applied before stays applied, and the next
/// sync completes the rest (the diff is recomputed from what the maps hold).
pub fn sync<M: PolicyMaps>(
    maps: &mut M,
    desired: &DesiredState,
) -> Result<SyncStats, SyncError<M::Error>> {
    let current = maps.read().map_err(|source| SyncError::Read { source })?;
    let diff = diff(&current, desired);
    for key in &diff.node_addrs.deletes {
        maps.delete_node_addr(key)
            .map_err(|e| node_addr_error("delete", key, e))?;
    }
    for direction in [Direction::Ingress, Direction::Egress] {
        for (key, value) in &diff.policy(direction).upserts {
            maps.upsert_policy(direction, key, value)
                .map_err(|e| policy_error("upsert", direction, key, e))?;
        }
    }
    for (key, ()) in &diff.node_addrs.upserts {
        maps.insert_node_addr(key)
            .map_err(|e| node_addr_error("insert", key, e))?;
    }
    for (key, value) in &diff.endpoints.upserts {
        maps.upsert_endpoint(key, value)
            .map_err(|e| endpoint_error("upsert", key, e))?;
    }
    for direction in [Direction::Ingress, Direction::Egress] {
        for key in &diff.policy(direction).deletes {
            maps.delete_policy(direction, key)
                .map_err(|e| policy_error("delete", direction, key, e))?;
        }
    }
    for key in &diff.endpoints.deletes {
        maps.delete_endpoint(key)
            .map_err(|e| endpoint_error("delete", key, e))?;
    }
    let stats = SyncStats {
        upserts: diff.endpoints.upserts.len()
            + diff.ingress.upserts.len()
            + diff.egress.upserts.len()
            + diff.node_addrs.upserts.len(),
        deletes: diff.endpoints.deletes.len()
            + diff.ingress.deletes.len()
            + diff.egress.deletes.len()
            + diff.node_addrs.deletes.len(),
    };
    tracing::debug!(
        upserts = stats.upserts,
        deletes = stats.deletes,
        "policy maps synced"
    );
    Ok(stats)
}

/// Policy maps held in memory: the sync target of tests and of the userspace model.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InMemoryMaps {
    /// What the maps hold.
    pub state: DesiredState,
}

impl PolicyMaps for InMemoryMaps {
    type Error = std::convert::Infallible;

    fn read(&self) -> Result<DesiredState, Self::Error> {
        Ok(self.state.clone())
    }

    fn upsert_endpoint(
        &mut self,
        key: &EndpointKey,
        value: &EndpointState,
    ) -> Result<(), Self::Error> {
        self.state.endpoints.insert(*key, *value);
        Ok(())
    }

    fn delete_endpoint(&mut self, key: &EndpointKey) -> Result<(), Self::Error> {
        self.state.endpoints.remove(key);
        Ok(())
    }

    fn upsert_policy(
        &mut self,
        direction: Direction,
        key: &PolicyEntryKey,
        value: &PolicyValue,
    ) -> Result<(), Self::Error> {
        self.state.policy_mut(direction).insert(*key, *value);
        Ok(())
    }

    fn delete_policy(
        &mut self,
        direction: Direction,
        key: &PolicyEntryKey,
    ) -> Result<(), Self::Error> {
        self.state.policy_mut(direction).remove(key);
        Ok(())
    }

    fn insert_node_addr(&mut self, key: &EndpointKey) -> Result<(), Self::Error> {
        self.state.node_addrs.insert(*key);
        Ok(())
    }

    fn delete_node_addr(&mut self, key: &EndpointKey) -> Result<(), Self::Error> {
        self.state.node_addrs.remove(key);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::{Compiled, Placement, compile};
    use crate::desired::Ids;
    use crate::manifest::parse_manifests;

    const PODS: &str = "
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: shop, labels: {app: web}}
status: {podIP: 10.0.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: db, namespace: shop, labels: {app: db}}
status: {podIPs: [{ip: 10.0.0.2}, {ip: 'fd00::2'}]}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: shop, labels: {app: client}}
status: {podIP: 10.0.0.3}
";

    const WEB_FROM_CLIENT: &str = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress: [{from: [{podSelector: {matchLabels: {app: client}}}], ports: [{port: 80}]}]
";

    const DB_FROM_WEB: &str = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db, namespace: shop}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress: [{from: [{podSelector: {matchLabels: {app: web}}}, {ipBlock: {cidr: 10.0.0.0/8, except: [10.0.0.0/30]}}], ports: [{port: 5432}]}]
";

    fn compiled(policies: &[&str], prior: &Ids) -> Compiled {
        let text = std::iter::once(PODS)
            .chain(policies.iter().copied())
            .collect::<Vec<_>>()
            .join("\n---\n");
        let (snapshot, errors) = parse_manifests(&text, "sync-test.yaml");
        assert_eq!(errors, vec![]);
        let compiled = compile(&snapshot, &Placement::AllPods { ifindex: 3 }, prior);
        assert_eq!(compiled.errors, vec![]);
        compiled
    }

    #[test]
    fn diff_lists_only_changes() {
        let first = compiled(&[WEB_FROM_CLIENT], &Ids::default());
        assert!(diff(&first.desired, &first.desired).is_empty());
        let from_empty = diff(&DesiredState::default(), &first.desired);
        assert_eq!(
            from_empty.endpoints.upserts.len(),
            first.desired.endpoints.len()
        );
        assert_eq!(
            from_empty.ingress.upserts.len(),
            first.desired.ingress.len()
        );
        assert!(from_empty.ingress.deletes.is_empty() && from_empty.egress.is_empty());

        // Adding the db policy touches db's endpoint entries and db's trie entries only.
        let second = compiled(&[WEB_FROM_CLIENT, DB_FROM_WEB], &first.ids);
        let changes = diff(&first.desired, &second.desired);
        let db = second.ids.endpoints["shop/db"];
        assert!(changes.endpoints.upserts.iter().all(|(_, v)| v.id == db));
        assert_eq!(changes.endpoints.upserts.len(), 2);
        assert!(
            changes
                .ingress
                .upserts
                .iter()
                .all(|(k, _)| k.key.endpoint == db)
        );
        // web's /32, the /8 and its /30 hole.
        assert_eq!(changes.ingress.upserts.len(), 3);
        assert!(changes.endpoints.deletes.is_empty() && changes.ingress.deletes.is_empty());

        // And removing it again deletes exactly those entries.
        let back = diff(&second.desired, &first.desired);
        let deleted: Vec<PolicyEntryKey> = back.ingress.deletes.clone();
        let added: Vec<PolicyEntryKey> = changes.ingress.upserts.iter().map(|(k, _)| *k).collect();
        assert_eq!(deleted, added);
    }

    /// Every operation, in order, as (kind, direction or "endpoint").
    #[derive(Default)]
    struct Recording {
        maps: InMemoryMaps,
        log: Vec<(&'static str, &'static str)>,
        fail_on: Option<(&'static str, &'static str)>,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("injected failure")]
    struct Injected;

    impl Recording {
        fn record(&mut self, op: &'static str, map: &'static str) -> Result<(), Injected> {
            if self.fail_on == Some((op, map)) {
                return Err(Injected);
            }
            self.log.push((op, map));
            Ok(())
        }
    }

    impl PolicyMaps for Recording {
        type Error = Injected;

        fn read(&self) -> Result<DesiredState, Injected> {
            Ok(self.maps.state.clone())
        }

        fn upsert_endpoint(
            &mut self,
            key: &EndpointKey,
            value: &EndpointState,
        ) -> Result<(), Injected> {
            self.record("upsert", "endpoint")?;
            let _ = self.maps.upsert_endpoint(key, value);
            Ok(())
        }

        fn delete_endpoint(&mut self, key: &EndpointKey) -> Result<(), Injected> {
            self.record("delete", "endpoint")?;
            let _ = self.maps.delete_endpoint(key);
            Ok(())
        }

        fn upsert_policy(
            &mut self,
            direction: Direction,
            key: &PolicyEntryKey,
            value: &PolicyValue,
        ) -> Result<(), Injected> {
            self.record("upsert", direction.name())?;
            let _ = self.maps.upsert_policy(direction, key, value);
            Ok(())
        }

        fn delete_policy(
            &mut self,
            direction: Direction,
            key: &PolicyEntryKey,
        ) -> Result<(), Injected> {
            self.record("delete", direction.name())?;
            let _ = self.maps.delete_policy(direction, key);
            Ok(())
        }

        fn insert_node_addr(&mut self, key: &EndpointKey) -> Result<(), Injected> {
            self.record("insert", "node")?;
            let _ = self.maps.insert_node_addr(key);
            Ok(())
        }

        fn delete_node_addr(&mut self, key: &EndpointKey) -> Result<(), Injected> {
            self.record("delete", "node")?;
            let _ = self.maps.delete_node_addr(key);
            Ok(())
        }
    }

    #[test]
    fn sync_reaches_the_desired_state_in_order() {
        let first = compiled(&[WEB_FROM_CLIENT, DB_FROM_WEB], &Ids::default());
        let mut maps = InMemoryMaps::default();
        let stats = sync(&mut maps, &first.desired).unwrap();
        assert_eq!(maps.state, first.desired);
        let total = first.desired.endpoints.len() + first.desired.ingress.len();
        assert_eq!(
            stats,
            SyncStats {
                upserts: total,
                deletes: 0
            }
        );
        assert_eq!(
            sync(&mut maps, &first.desired).unwrap(),
            SyncStats::default()
        );

        // Dropping db's policy and replacing the client by one with another address: policy
        // upserts come first, then
        // endpoint upserts, then policy deletes, then endpoint deletes.
        let mut recording = Recording {
            maps,
            ..Recording::default()
        };
        let text = PODS
            .replace(
                "name: client, namespace: shop",
                "name: client2, namespace: shop",
            )
            .replace("podIP: 10.0.0.3", "podIP: 10.0.0.4");
        let (snapshot, _) = parse_manifests(&format!("{text}\n---\n{WEB_FROM_CLIENT}"), "t.yaml");
        let second = compile(&snapshot, &Placement::AllPods { ifindex: 3 }, &first.ids);
        let stats = sync(&mut recording, &second.desired).unwrap();
        assert_eq!(recording.maps.state, second.desired);
        assert_eq!(stats.upserts + stats.deletes, recording.log.len());
        let phase = |op: &(&str, &str)| match *op {
            ("upsert", "endpoint") => 1,
            ("upsert", _) => 0,
            ("delete", "endpoint") => 3,
            _ => 2,
        };
        let phases: Vec<u8> = recording.log.iter().map(phase).collect();
        assert!(phases.is_sorted(), "{:?}", recording.log);
        assert!((0..4).all(|p| phases.contains(&p)), "{:?}", recording.log);
    }

    #[test]
    fn errors_name_the_map_and_the_key() {
        let desired = compiled(&[DB_FROM_WEB], &Ids::default()).desired;
        let mut failing = Recording {
            fail_on: Some(("upsert", "ingress")),
            ..Recording::default()
        };
        let error = sync(&mut failing, &desired).unwrap_err().to_string();
        assert_eq!(
            error,
            "upsert of entry (endpoint 2, 10.0.0.0/8) in the ingress policy map: injected failure"
        );
        let mut failing = Recording {
            fail_on: Some(("upsert", "endpoint")),
            ..Recording::default()
        };
        let error = sync(&mut failing, &desired).unwrap_err().to_string();
        assert_eq!(
            error,
            "upsert of endpoint 10.0.0.1 in the endpoint map: injected failure"
        );
    }
}
