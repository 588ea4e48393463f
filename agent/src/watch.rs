//! The cluster as the API server tells it: one reflector each for Namespaces, Pods (all
//! namespaces: policies' peers select pods cluster-wide), NetworkPolicies, Services and
//! EndpointSlices (what a ClusterIP reaches), and the change log that tells the reconciler
//! when to look again.
//!
//! Data flows like this, per kind:
//! 1. `watcher(api).default_backoff()` lists, then watches from the list's resourceVersion;
//!    after a `410 Gone` (the resourceVersion expired) or any other desync it lists again,
//!    with backoff. A watch that ends (its timeout) resumes from the last resourceVersion.
//! 2. Every object is slimmed ([`crate::slim`]) to what the compiler and the collector read,
//!    so a store of every pod and EndpointSlice of a large cluster stays small.
//! 3. The event goes into kube's reflector store ([`Writer::apply_watcher_event`]): an
//!    add, change or delete at once; a list into a buffer that replaces the whole store only
//!    when the list is complete (`InitDone`). A store therefore always holds one complete
//!    list plus the events after it, never half a relist, and an object deleted while the
//!    watch was down is gone after the relist even though no delete event was ever seen.
//! 4. A change that matters is recorded in the [`ChangeLog`] *after* the store holds it:
//!    an add or delete, a change of what slimming kept (an update that only touched other
//!    fields, such as a container's restart count or an EndpointSlice endpoint's `serving`
//!    condition, is dropped here), and every completed list.
//!
//! [`ChangeLog::next`] hands the recorded changes over as one [`Changes`] batch once the
//! burst is over: when no change came for [`Debounce::quiet`], or at the latest
//! [`Debounce::max_delay`] after the batch's first change. A batch holds counts, the newest
//! resourceVersion per kind and the arrival times (for the propagation latency), so its size
//! does not grow with the burst. [`Watchers::ready`] resolves once every kind's first list is
//! in its store: until then the cluster is not known and nothing may be compiled.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::{
    core::v1::{Namespace, Pod, Service},
    discovery::v1::EndpointSlice,
    networking::v1::NetworkPolicy,
};
use kube::{
    Api, Client, Resource, ResourceExt,
    runtime::{
        WatchStreamExt,
        reflector::{self, ObjectRef, Store, store::Writer},
        watcher,
    },
};
use serde::de::DeserializeOwned;
use tokio::{sync::Notify, task::JoinSet, time::Instant};
use tollgate_enforcer::snapshot::Snapshot;

use crate::slim::{
    same_but_version, slim_endpoint_slice, slim_namespace, slim_pod, slim_policy, slim_service,
};

/// The kinds the agent watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// v1 Namespace.
    Namespace,
    /// v1 Pod.
    Pod,
    /// networking.k8s.io/v1 NetworkPolicy.
    NetworkPolicy,
    /// v1 Service.
    Service,
    /// discovery.k8s.io/v1 EndpointSlice.
    EndpointSlice,
}

impl Kind {
    /// The kind's name, as the API spells it.
    pub const fn name(self) -> &'static str {
        match self {
            Kind::Namespace => "Namespace",
            Kind::Pod => "Pod",
            Kind::NetworkPolicy => "NetworkPolicy",
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
        }
    }
}

/// How bursts of changes are coalesced into one batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Debounce {
    /// A batch is handed over once no change arrived for this long…
    pub quiet: Duration,
    /// …or once its first change has waited this long, whichever comes first.
    pub max_delay: Duration,
}

impl Debounce {
    /// No coalescing: a batch is handed over as soon as it has a change.
    pub const NONE: Debounce = Debounce {
        quiet: Duration::ZERO,
        max_delay: Duration::ZERO,
    };
}

impl Default for Debounce {
    /// 100 ms of quiet, at most 1 s: a rollout's burst of pod updates becomes a few
    /// compilations, and a lone change waits 100 ms.
    fn default() -> Self {
        Debounce {
            quiet: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
        }
    }
}

/// Changes coalesced into one batch: what the reconciler is told when it should look again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Changes {
    /// Changes in the batch (events that mattered, completed lists, static updates).
    pub events: usize,
    /// When the oldest change arrived: the propagation latency runs from here.
    pub first_arrival: Instant,
    /// When the newest change arrived.
    pub last_arrival: Instant,
    /// The newest resourceVersion seen per kind (of an event's object; a list does not name
    /// one). Opaque strings, as the API server hands them out.
    pub resource_versions: BTreeMap<Kind, String>,
    /// Kinds whose store was replaced by a complete list: the first list, or a relist after
    /// the watch expired.
    pub listed: BTreeSet<Kind>,
}

/// One change, as the recording side sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Change {
    /// An object was added, changed or deleted; its resourceVersion.
    Event(Kind, Option<String>),
    /// A kind's store was replaced by a complete list.
    Listed(Kind),
    /// A static snapshot was replaced.
    Update,
}

/// Changes recorded and not yet handed over, and the wakeup of the one consumer.
#[derive(Debug, Default)]
pub(crate) struct ChangeLog {
    state: Mutex<LogState>,
    notify: Notify,
}

#[derive(Debug, Default)]
struct LogState {
    pending: Option<Changes>,
    closed: bool,
}

impl ChangeLog {
    /// Records one change, arrived now.
    pub(crate) fn record(&self, change: Change) {
        let now = Instant::now();
        {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            let batch = state.pending.get_or_insert_with(|| Changes {
                events: 0,
                first_arrival: now,
                last_arrival: now,
                resource_versions: BTreeMap::new(),
                listed: BTreeSet::new(),
            });
            batch.events += 1;
            batch.last_arrival = now;
            match change {
                Change::Event(kind, Some(version)) => {
                    batch.resource_versions.insert(kind, version);
                }
                Change::Listed(kind) => {
                    batch.listed.insert(kind);
                }
                Change::Event(_, None) | Change::Update => {}
            }
        }
        self.notify.notify_one();
    }

    /// No change will be recorded any more: [`ChangeLog::next`] returns `None` once the
    /// pending batch is handed over.
    pub(crate) fn close(&self) {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).closed = true;
        self.notify.notify_one();
    }

    /// The next batch, once `debounce` says the burst is over; `None` when the log is closed
    /// and empty. Cancel-safe: a batch is taken only when it is returned.
    pub(crate) async fn next(&self, debounce: Debounce) -> Option<Changes> {
        loop {
            let due = {
                let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
                match &state.pending {
                    None if state.closed => return None,
                    None => None,
                    Some(batch) => {
                        let due = (batch.last_arrival + debounce.quiet)
                            .min(batch.first_arrival + debounce.max_delay);
                        if due <= Instant::now() {
                            return state.pending.take();
                        }
                        Some(due)
                    }
                }
            };
            match due {
                // A change recorded since the look above left a permit: this returns at once.
                None => self.notify.notified().await,
                // A change arriving meanwhile moves the deadline: looked at again on waking.
                Some(due) => tokio::time::sleep_until(due).await,
            }
        }
    }
}

/// The reflectors of one agent (one per [`Kind`]), their stores, and the change log they feed.
///
/// Dropping it stops the watches.
#[derive(Debug)]
pub struct Watchers {
    namespaces: Store<Namespace>,
    pods: Store<Pod>,
    policies: Store<NetworkPolicy>,
    services: Store<Service>,
    endpoint_slices: Store<EndpointSlice>,
    changes: Arc<ChangeLog>,
    _tasks: JoinSet<()>,
}

impl Watchers {
    /// Starts watching Namespaces, Pods, NetworkPolicies, Services and EndpointSlices of the
    /// whole cluster through `client`, each with `config` (inside a tokio runtime).
    pub fn start(client: Client, config: watcher::Config) -> Watchers {
        let changes = Arc::new(ChangeLog::default());
        let mut spawner = Spawner {
            client,
            config,
            changes: changes.clone(),
            tasks: JoinSet::new(),
        };
        Watchers {
            namespaces: spawner.reflector(Kind::Namespace, slim_namespace),
            pods: spawner.reflector(Kind::Pod, slim_pod),
            policies: spawner.reflector(Kind::NetworkPolicy, slim_policy),
            services: spawner.reflector(Kind::Service, slim_service),
            endpoint_slices: spawner.reflector(Kind::EndpointSlice, slim_endpoint_slice),
            changes,
            _tasks: spawner.tasks,
        }
    }

    /// Resolves once every kind's first list is complete. Fails only when a reflector
    /// stopped before that (its task panicked).
    pub async fn ready(&self) -> Result<(), crate::Error> {
        self.namespaces.wait_until_ready().await?;
        self.pods.wait_until_ready().await?;
        self.policies.wait_until_ready().await?;
        self.services.wait_until_ready().await?;
        self.endpoint_slices.wait_until_ready().await?;
        Ok(())
    }

    /// The next batch of changes (see [`Debounce`]).
    pub async fn changed(&self, debounce: Debounce) -> Option<Changes> {
        self.changes.next(debounce).await
    }

    /// What the stores hold now, each kind ordered by namespace and name.
    ///
    /// Each kind is read at once (one complete list plus the events after it); the kinds are
    /// read one after the other, so an event arriving in between may be in one and not yet in
    /// another — the change log has it, and the next snapshot is complete. (The API server
    /// orders nothing across kinds either: an EndpointSlice may name a pod whose own event has
    /// not arrived yet.) The node's addresses are not the cluster's: left empty here.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            namespaces: sorted(&self.namespaces),
            pods: sorted(&self.pods),
            policies: sorted(&self.policies),
            services: sorted(&self.services),
            endpoint_slices: sorted(&self.endpoint_slices),
            node_addresses: Vec::new(),
        }
    }
}

/// The objects of `store`, by namespace and name.
fn sorted<K: Resource + Clone>(store: &Store<K>) -> Vec<K>
where
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    let mut objects: Vec<K> = store.state().iter().map(|o| K::clone(o)).collect();
    objects.sort_by(|a, b| {
        (a.meta().namespace.as_deref(), a.meta().name.as_deref())
            .cmp(&(b.meta().namespace.as_deref(), b.meta().name.as_deref()))
    });
    objects
}

/// Starts reflectors, all on one client, with one watcher config, into one change log.
struct Spawner {
    client: Client,
    config: watcher::Config,
    changes: Arc<ChangeLog>,
    tasks: JoinSet<()>,
}

impl Spawner {
    /// Starts the reflector of `kind`, slimming every object with `slim`; its store.
    fn reflector<K>(&mut self, kind: Kind, slim: fn(&mut K)) -> Store<K>
    where
        K: Resource<DynamicType = ()>
            + Clone
            + DeserializeOwned
            + Debug
            + PartialEq
            + Send
            + Sync
            + 'static,
    {
        let (store, writer) = reflector::store();
        let reflector = Reflector {
            kind,
            writer,
            store: store.clone(),
            slim,
            changes: self.changes.clone(),
        };
        self.tasks.spawn(reflect(
            Api::all(self.client.clone()),
            self.config.clone(),
            reflector,
        ));
        store
    }
}

/// One kind's reflector: its store, both sides, and where changes go.
struct Reflector<K: Resource + Clone + 'static>
where
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    kind: Kind,
    writer: Writer<K>,
    store: Store<K>,
    slim: fn(&mut K),
    changes: Arc<ChangeLog>,
}

/// Runs one kind's watch for as long as the agent does (the watcher retries forever).
async fn reflect<K>(api: Api<K>, config: watcher::Config, mut reflector: Reflector<K>)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + PartialEq + Send + Sync,
{
    let kind = reflector.kind.name();
    let mut events = pin!(
        watcher(api, config)
            .default_backoff()
            .modify(reflector.slim)
    );
    while let Some(event) = events.next().await {
        match event {
            Ok(event) => {
                let change = reflector.change(&event);
                reflector.writer.apply_watcher_event(&event);
                if let watcher::Event::InitDone = event {
                    tracing::info!(kind, objects = reflector.store.len(), "list complete");
                }
                if let Some(change) = change {
                    reflector.changes.record(change);
                }
            }
            // A 410 Gone restarts from a new list; other errors resume the watch. Both after
            // the backoff.
            Err(error) => tracing::warn!(kind, %error, "watch failed; retrying"),
        }
    }
}

impl<K> Reflector<K>
where
    K: Resource<DynamicType = ()> + Clone + PartialEq,
{
    /// The change `event` makes, if it matters; to be called before the store applies it.
    fn change(&self, event: &watcher::Event<K>) -> Option<Change> {
        match event {
            watcher::Event::Apply(object) => {
                let stored = self.store.get(&ObjectRef::from_obj(object));
                if stored.is_some_and(|stored| same_but_version(stored.as_ref(), object)) {
                    tracing::trace!(
                        kind = self.kind.name(),
                        object = %object.name_any(),
                        "no change after slimming"
                    );
                    return None;
                }
                Some(Change::Event(self.kind, object.resource_version()))
            }
            watcher::Event::Delete(object) => {
                Some(Change::Event(self.kind, object.resource_version()))
            }
            watcher::Event::InitDone => Some(Change::Listed(self.kind)),
            // The store does not change until the list is complete.
            watcher::Event::Init | watcher::Event::InitApply(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn bursts_become_one_batch_within_the_bounds() {
        let log = ChangeLog::default();
        let debounce = Debounce {
            quiet: Duration::from_millis(100),
            max_delay: Duration::from_millis(1000),
        };
        let started = tokio::time::Instant::now();
        log.record(Change::Listed(Kind::Pod));
        log.record(Change::Event(Kind::Pod, Some("7".to_owned())));
        log.record(Change::Event(Kind::Pod, Some("8".to_owned())));
        log.record(Change::Event(Kind::Namespace, None));
        let batch = log.next(debounce).await.unwrap();
        assert_eq!(batch.events, 4);
        assert_eq!(
            batch.resource_versions,
            BTreeMap::from([(Kind::Pod, "8".to_owned())])
        );
        assert_eq!(batch.listed, BTreeSet::from([Kind::Pod]));
        assert_eq!(started.elapsed(), Duration::from_millis(100));

        // A change every 60 ms never leaves 100 ms of quiet: the batch goes after 1 s, with
        // the 17 changes of 0..=960 ms; the other 23 wait for the next one.
        let started = tokio::time::Instant::now();
        let feeding = async {
            for _ in 0..40 {
                log.record(Change::Event(Kind::Pod, None));
                tokio::time::sleep(Duration::from_millis(60)).await;
            }
        };
        let (batch, ()) = tokio::join!(log.next(debounce), feeding);
        let batch = batch.unwrap();
        assert_eq!(batch.events, 17);
        assert_eq!(batch.first_arrival - started, Duration::ZERO);
        assert_eq!(batch.last_arrival - started, Duration::from_millis(960));
        assert_eq!(log.next(debounce).await.unwrap().events, 23);

        log.record(Change::Update);
        log.close();
        assert_eq!(log.next(Debounce::NONE).await.unwrap().events, 1);
        assert_eq!(log.next(Debounce::NONE).await, None);
    }
}
