//! Where the agent's view of the cluster comes from: the [`ClusterSource`] trait and its two
//! implementations.
//!
//! The reconciler asks a source for two things: [`ClusterSource::changed`] waits until there
//! is something new (a batch of [`Changes`]), and [`ClusterSource::snapshot`] hands over the
//! whole cluster as it is now. [`KubeSource`] answers from the reflectors of [`crate::watch`]
//! on a real cluster; [`StaticSource`] from a [`Snapshot`] that code sets through a
//! [`StaticHandle`] (the lab, tests): every object kind of the snapshot, Services and
//! EndpointSlices included, as given. Everything after the source is the same code.
//!
//! A snapshot's `node_addresses` are not the cluster's: the agent replaces them, at every pass,
//! with the addresses it finds on the node ([`crate::reconcile::LocalEndpoints::node_addresses`]).

use std::future::Future;
use std::sync::{Arc, Mutex};

use kube::{Client, runtime::watcher};
use tollgate_enforcer::snapshot::Snapshot;

use crate::watch::{Change, ChangeLog, Changes, Debounce, Watchers};

/// The cluster, as the reconciler reads it.
pub trait ClusterSource {
    /// The whole cluster as the source holds it now.
    fn snapshot(&self) -> Snapshot;

    /// Waits for the next batch of changes. The first batch comes once the source knows the
    /// whole cluster (every initial list is complete); `None` when the source has ended.
    /// Cancel-safe: dropping the future loses no change.
    fn changed(&mut self) -> impl Future<Output = Option<Changes>> + Send;
}

/// The cluster through the API server: the reflectors of [`Watchers`].
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
    fn snapshot(&self) -> Snapshot {
        self.watchers.snapshot()
    }

    async fn changed(&mut self) -> Option<Changes> {
        if !self.ready {
            if let Err(error) = self.watchers.ready().await {
                tracing::error!(%error, "the cluster source ended");
                return None;
            }
            self.ready = true;
            tracing::info!("every initial list complete");
        }
        self.watchers.changed(self.debounce).await
    }
}

/// A snapshot given in code; its [`StaticHandle`] replaces it.
#[derive(Debug)]
pub struct StaticSource {
    shared: Arc<Shared>,
}

/// Replaces the snapshot of its [`StaticSource`]; dropping it ends the source.
#[derive(Debug)]
pub struct StaticHandle {
    shared: Arc<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    snapshot: Mutex<Snapshot>,
    changes: ChangeLog,
}

impl StaticSource {
    /// A source that holds `snapshot`; its first [`ClusterSource::changed`] returns at once.
    pub fn new(snapshot: Snapshot) -> (StaticSource, StaticHandle) {
        let shared = Arc::new(Shared {
            snapshot: Mutex::new(snapshot),
            changes: ChangeLog::default(),
        });
        shared.changes.record(Change::Update);
        (
            StaticSource {
                shared: shared.clone(),
            },
            StaticHandle { shared },
        )
    }
}

impl StaticHandle {
    /// From now on the cluster is `snapshot`.
    pub fn set(&self, snapshot: Snapshot) {
        *self
            .shared
            .snapshot
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = snapshot;
        self.shared.changes.record(Change::Update);
    }
}

impl Drop for StaticHandle {
    fn drop(&mut self) {
        self.shared.changes.close();
    }
}

impl ClusterSource for StaticSource {
    fn snapshot(&self) -> Snapshot {
        self.shared
            .snapshot
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Updates are steps: handed over at once, not coalesced in time (two updates set
    /// before the reconciler looks are still one batch).
    async fn changed(&mut self) -> Option<Changes> {
        self.shared.changes.next(Debounce::NONE).await
    }
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
        let (mut source, handle) = StaticSource::new(empty);
        assert_eq!(source.changed().await.unwrap().events, 1);
        assert!(source.snapshot().namespaces.is_empty());

        handle.set(one.clone());
        handle.set(one);
        let changes = source.changed().await.unwrap();
        assert_eq!(changes.events, 2);
        assert!(changes.resource_versions.is_empty() && changes.listed.is_empty());
        assert_eq!(source.snapshot().namespaces.len(), 1);

        drop(handle);
        assert_eq!(source.changed().await, None);
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
        handle.set(cluster.clone());
        source.changed().await.unwrap();
        assert_eq!(source.snapshot(), cluster);
    }
}
