//! Where the agent's view of the cluster comes from: the [`ClusterSource`] trait and its two
//! implementations.
//!
//! The reconciler asks a source for two things: [`ClusterSource::changed`] waits until there
//! is something new (a batch of [`Changes`]), and [`ClusterSource::take_delta`] hands over
//! what changed since it last asked, object by object (every object the first time): a
//! [`Delta`], whose objects are shared with the source, never a copy of the cluster. A source
//! may also say when it holds many changes not handed over yet ([`ClusterSource::backlog`]):
//! the agent then takes them early, so that a cluster's first lists never sit in the source
//! whole.
//! [`KubeSource`] answers from the watches of [`crate::watch`] on a real cluster;
//! [`StaticSource`] from a [`Snapshot`] that code sets through a [`StaticHandle`] (the lab,
//! tests): every object kind of the snapshot, Services and EndpointSlices included, as given,
//! an object counting as changed when it differs from the one handed over. Everything after
//! the source is the same code.
//!
//! A snapshot's `node_addresses` are not the cluster's: the agent finds the node's addresses
//! itself ([`crate::reconcile::LocalEndpoints::node_addresses`]).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use kube::{Client, runtime::watcher};
use tokio::sync::Notify;
use tollgate_enforcer::{
    compile::ClusterObject,
    snapshot::{Delta, Snapshot, Updates},
};

use crate::watch::{Change, ChangeLog, Changes, Debounce, Watchers};
use tollgate_enforcer::causes::Causes;

/// The cluster, as the reconciler reads it.
pub trait ClusterSource {
    /// What changed since the last call; every object at the first.
    fn take_delta(&mut self) -> Delta;

    /// The number of the last update [`ClusterSource::take_delta`] handed over, for a source
    /// that numbers its updates ([`StaticSource`]: the numbers [`StaticHandle::set`] returns).
    /// `None`, by default.
    fn update(&self) -> Option<u64> {
        None
    }

    /// Waits for the next batch of changes. The first batch comes once the source knows the
    /// whole cluster (every initial list is complete); `None` when the source has ended.
    /// Cancel-safe: dropping the future loses no change.
    fn changed(&mut self) -> impl Future<Output = Option<Changes>> + Send;

    /// Notified when the source holds so many changes not handed over that they should be
    /// taken before their batch is due (the objects of a first list, as it arrives). `None`,
    /// by default: the source holds only what its batches name.
    fn backlog(&self) -> Option<Arc<Notify>> {
        None
    }
}

/// The cluster through the API server: the watches of [`Watchers`].
#[derive(Debug)]
pub struct KubeSource {
    watchers: Watchers,
    debounce: Debounce,
    ready: bool,
}

impl KubeSource {
    /// Starts the watches with kube's default watcher settings and the default
    /// [`Debounce`].
    pub fn start(client: Client) -> KubeSource {
        KubeSource::with_config(client, watcher::Config::default(), Debounce::default())
    }

    /// Starts the watches with `config` for every kind, coalescing by `debounce`.
    pub fn with_config(client: Client, config: watcher::Config, debounce: Debounce) -> KubeSource {
        KubeSource {
            watchers: Watchers::start(client, config),
            debounce,
            ready: false,
        }
    }
}

impl ClusterSource for KubeSource {
    fn take_delta(&mut self) -> Delta {
        self.watchers.take_delta()
    }

    async fn changed(&mut self) -> Option<Changes> {
        if !self.ready {
            if let Err(error) = self.watchers.ready().await {
                tracing::error!(error = %Causes(&error), "the cluster source ended");
                return None;
            }
            self.ready = true;
            tracing::info!("every initial list complete");
        }
        self.watchers.changed(self.debounce).await
    }

    fn backlog(&self) -> Option<Arc<Notify>> {
        Some(self.watchers.backlog())
    }
}

/// A snapshot given in code; its [`StaticHandle`] replaces it.
#[derive(Debug)]
pub struct StaticSource {
    shared: Arc<Shared>,
    /// Every object handed over (and not gone since), by kind and key.
    handed: Delta,
    /// The number of the update handed over last.
    update: Option<u64>,
}

/// Replaces the snapshot of its [`StaticSource`]; dropping it ends the source.
#[derive(Debug)]
pub struct StaticHandle {
    shared: Arc<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    /// The snapshot, and the number of its update (0 for the one the source started with).
    snapshot: Mutex<(Snapshot, u64)>,
    changes: ChangeLog,
}

impl StaticSource {
    /// A source that holds `snapshot` (update 0); its first [`ClusterSource::changed`]
    /// returns at once.
    pub fn new(snapshot: Snapshot) -> (StaticSource, StaticHandle) {
        let shared = Arc::new(Shared {
            snapshot: Mutex::new((snapshot, 0)),
            changes: ChangeLog::default(),
        });
        shared.changes.record(Change::Update);
        (
            StaticSource {
                shared: shared.clone(),
                handed: Delta::default(),
                update: None,
            },
            StaticHandle { shared },
        )
    }
}

impl StaticHandle {
    /// From now on the cluster is `snapshot`; the number of this update (one more than the
    /// last).
    pub fn set(&self, snapshot: Snapshot) -> u64 {
        let number = {
            let mut state = self
                .shared
                .snapshot
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            state.1 += 1;
            state.0 = snapshot;
            state.1
        };
        self.shared.changes.record(Change::Update);
        number
    }
}

impl Drop for StaticHandle {
    fn drop(&mut self) {
        self.shared.changes.close();
    }
}

impl ClusterSource for StaticSource {
    /// The objects that differ from those handed over last (an object of a snapshot set in
    /// code need not have a resourceVersion). An unnamed object is left out, and of an object
    /// listed twice the last definition is used; both are logged.
    fn take_delta(&mut self) -> Delta {
        let state = self
            .shared
            .snapshot
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let (snapshot, number) = &*state;
        self.update = Some(*number);
        let handed = &mut self.handed;
        Delta {
            namespaces: differ(&snapshot.namespaces, &mut handed.namespaces),
            pods: differ(&snapshot.pods, &mut handed.pods),
            policies: differ(&snapshot.policies, &mut handed.policies),
            services: differ(&snapshot.services, &mut handed.services),
            endpoint_slices: differ(&snapshot.endpoint_slices, &mut handed.endpoint_slices),
            cluster_policies: differ(&snapshot.cluster_policies, &mut handed.cluster_policies),
            aws_cluster_policies: differ(
                &snapshot.aws_cluster_policies,
                &mut handed.aws_cluster_policies,
            ),
            nodes: differ(&snapshot.nodes, &mut handed.nodes),
        }
    }

    fn update(&self) -> Option<u64> {
        self.update
    }

    /// Updates are steps: handed over at once, not coalesced in time (two updates set
    /// before the reconciler looks are still one batch).
    async fn changed(&mut self) -> Option<Changes> {
        self.shared.changes.next(Debounce::NONE).await
    }
}

/// The updates that make `handed` hold `objects`, applied to it.
fn differ<K: ClusterObject + Clone + PartialEq>(
    objects: &[K],
    handed: &mut Updates<K>,
) -> Updates<K> {
    let mut now: BTreeMap<(String, String), &K> = BTreeMap::new();
    for (index, item) in objects.iter().enumerate() {
        let kind = K::OBJECT_KIND.name();
        let Some(key) = item.object().key() else {
            tracing::warn!(kind, index, "an object without a name left out");
            continue;
        };
        if now.insert(key.clone(), item).is_some() {
            tracing::warn!(
                kind,
                namespace = key.0,
                name = key.1,
                "listed twice: the last kept"
            );
        }
    }
    let mut updates = Updates::new();
    handed.retain(|key, _| {
        let kept = now.contains_key(key);
        if !kept {
            updates.insert(key.clone(), None);
        }
        kept
    });
    for (key, item) in now {
        let same = handed
            .get(&key)
            .and_then(Option::as_ref)
            .is_some_and(|kept| kept.as_ref() == item);
        if !same {
            let item = Arc::new(item.clone());
            handed.insert(key.clone(), Some(item.clone()));
            updates.insert(key, Some(item));
        }
    }
    updates
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_enforcer::manifest::parse_manifests;

    #[tokio::test]
    async fn static_updates_are_steps_and_the_handle_ends_the_source() {
        let (empty, _) = parse_manifests("", "empty.yaml");
        let (one, errors) = parse_manifests(
            "{apiVersion: v1, kind: Namespace, metadata: {name: shop}}",
            "one.yaml",
        );
        assert_eq!(errors, vec![]);
        let (mut source, handle) = StaticSource::new(empty.clone());
        assert_eq!(source.changed().await.unwrap().events, 1);
        assert!(source.take_delta().is_empty());
        assert_eq!(source.update(), Some(0));

        assert_eq!(handle.set(one.clone()), 1);
        assert_eq!(handle.set(one), 2);
        let changes = source.changed().await.unwrap();
        assert_eq!(changes.events, 2);
        assert!(changes.resource_versions.is_empty() && changes.listed.is_empty());
        let shop = ("".to_owned(), "shop".to_owned());
        let delta = source.take_delta();
        assert_eq!(delta.len(), 1);
        assert!(delta.namespaces[&shop].is_some());
        assert_eq!(source.update(), Some(2));
        // Handed over once: the same snapshot again changes nothing.
        assert!(source.take_delta().is_empty());

        handle.set(empty);
        assert_eq!(source.changed().await.unwrap().events, 1);
        let delta = source.take_delta();
        assert_eq!(delta.namespaces, BTreeMap::from([(shop, None)]));

        drop(handle);
        assert_eq!(source.changed().await, None);
    }

    /// The objects `updates` gives, in key order.
    fn given<K: Clone>(updates: &Updates<K>) -> Vec<K> {
        updates
            .values()
            .flatten()
            .map(|o| o.as_ref().clone())
            .collect()
    }

    #[tokio::test]
    async fn services_and_endpoint_slices_pass_through() {
        let (cluster, errors) = parse_manifests(
            r#"
apiVersion: v1
kind: Service
metadata: {name: nginx, namespace: default}
spec:
  clusterIP: 198.19.117.42
  selector: {app: nginx}
  ports: [{port: 80, protocol: TCP, targetPort: 80}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: nginx-6xq8v
  namespace: default
  labels: {kubernetes.io/service-name: nginx}
addressType: IPv4
endpoints: [{addresses: [198.18.0.20], conditions: {ready: true}}]
ports: [{name: "", port: 80, protocol: TCP}]
"#,
            "services.yaml",
        );
        assert_eq!(errors, vec![]);
        assert_eq!(
            (cluster.services.len(), cluster.endpoint_slices.len()),
            (1, 1)
        );
        let (mut source, handle) = StaticSource::new(Snapshot::default());
        source.changed().await.unwrap();
        assert!(source.take_delta().is_empty());
        handle.set(cluster.clone());
        source.changed().await.unwrap();
        let delta = source.take_delta();
        assert_eq!(given(&delta.services), cluster.services);
        assert_eq!(given(&delta.endpoint_slices), cluster.endpoint_slices);
    }
}
