//! The cluster as the API server tells it: one watch each for Namespaces, Pods (all
//! namespaces: policies' peers select pods cluster-wide), NetworkPolicies, Services and
//! EndpointSlices (what a ClusterIP reaches), ClusterNetworkPolicies of both APIs
//! (`policy.networking.k8s.io` and `networking.k8s.aws`) and Nodes (their addresses, for the
//! `nodes` peers of ClusterNetworkPolicies), the changes they hold for the next
//! pass, and the change log that tells the reconciler when to look again. No store of the
//! cluster is kept here: the compiler keeps what it reads, in its own form.
//!
//! Data flows like this, per kind:
//! 1. `watcher(api).default_backoff()` lists, then watches from the list's resourceVersion;
//!    after a `410 Gone` (the resourceVersion expired) or any other desync it lists again,
//!    with backoff. A watch that ends (its timeout) resumes from the last resourceVersion.
//!    A list the API server answers `404 Not Found` (a custom resource whose definition is
//!    not installed: no such policy can exist) counts as a complete, empty list, once; the
//!    watch goes on trying, and hands on what a later list finds. Any other failure (`403
//!    Forbidden`: the agent may not read the kind) leaves the first list incomplete, and the
//!    agent compiles nothing until it completes: fail closed, never without a tier.
//! 2. Every object is slimmed ([`crate::slim`]) to what the compiler and the collector read.
//! 3. The watch keeps, per object it handed on, only a fingerprint of what slimming kept
//!    ([`crate::slim::fingerprint`]). An object whose fingerprint is the one handed on last
//!    is no change (an update that only touched other fields, such as a container's restart
//!    count or an EndpointSlice endpoint's `serving` condition, or an unchanged object of a
//!    relist) and is dropped here. Any other goes into the kind's pending changes (the latest
//!    state per key: a later event for the same object replaces it), and is recorded in the
//!    [`ChangeLog`]. A delete is handed on as gone. A relist hands on what changed while the
//!    watch was down as its objects arrive, and at its end (`InitDone`) every object it did
//!    not list as gone, although no delete event was ever seen; the completed list is
//!    recorded too.
//! 4. [`Watchers::take_delta`] takes every kind's pending changes as one [`Delta`]. Once a
//!    kind holds [`BACKLOG`] changes, [`Watchers::backlog`] is notified: they are to be taken
//!    without waiting for their batch, so that a first list of 100,000 pods is handed on in
//!    parts as it arrives, not held whole here.
//!
//! [`ChangeLog::next`] hands the recorded changes over as one [`Changes`] batch once the
//! burst is over: when no change came for [`Debounce::quiet`], or at the latest
//! [`Debounce::max_delay`] after the batch's first change. A batch holds counts, the newest
//! resourceVersion per kind and the arrival times (for the propagation latency), so its size
//! does not grow with the burst. [`Watchers::ready`] resolves once every kind's first list is
//! complete: until then the cluster is not known and nothing may be compiled.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt::Debug;
use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::{
    core::v1::{Namespace, Node, Pod, Service},
    discovery::v1::EndpointSlice,
    networking::v1::NetworkPolicy,
};
use kube::{
    Api, Client, Resource, ResourceExt,
    runtime::{WatchStreamExt, watcher},
};
use serde::{Serialize, de::DeserializeOwned};
use tokio::{
    sync::{Notify, watch},
    task::JoinSet,
    time::Instant,
};
use tollgate_enforcer::{
    compile::{ClusterObject, ObjectKind},
    crd::{AwsClusterNetworkPolicy, ClusterNetworkPolicy},
    snapshot::{Delta, Updates},
};

use crate::slim::{
    Fingerprint, fingerprint, slim_aws_cluster_policy, slim_cluster_policy, slim_endpoint_slice,
    slim_namespace, slim_node, slim_pod, slim_policy, slim_service,
};
use tollgate_enforcer::causes::Causes;

/// Changes one kind holds for the next delta before [`Watchers::backlog`] is notified.
pub const BACKLOG: usize = 2_000;

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
    pub resource_versions: BTreeMap<ObjectKind, String>,
    /// Kinds whose store was replaced by a complete list: the first list, or a relist after
    /// the watch expired.
    pub listed: BTreeSet<ObjectKind>,
}

/// One change, as the recording side sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Change {
    /// An object was added, changed or deleted; its resourceVersion.
    Event(ObjectKind, Option<String>),
    /// A kind's store was replaced by a complete list.
    Listed(ObjectKind),
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

/// The watches of one agent (one per [`ObjectKind`]), the changes they hold for the next delta,
/// and the change log they feed.
///
/// Dropping it stops the watches.
#[derive(Debug)]
pub struct Watchers {
    namespaces: Arc<Pending<Namespace>>,
    pods: Arc<Pending<Pod>>,
    policies: Arc<Pending<NetworkPolicy>>,
    services: Arc<Pending<Service>>,
    endpoint_slices: Arc<Pending<EndpointSlice>>,
    cluster_policies: Arc<Pending<ClusterNetworkPolicy>>,
    aws_cluster_policies: Arc<Pending<AwsClusterNetworkPolicy>>,
    nodes: Arc<Pending<Node>>,
    changes: Arc<ChangeLog>,
    backlog: Arc<Notify>,
    _tasks: JoinSet<()>,
}

impl Watchers {
    /// Starts watching Namespaces, Pods, NetworkPolicies, Services, EndpointSlices,
    /// ClusterNetworkPolicies and Nodes of the whole cluster through `client`, each with
    /// `config` (inside a tokio runtime).
    pub fn start(client: Client, config: watcher::Config) -> Watchers {
        let changes = Arc::new(ChangeLog::default());
        let backlog = Arc::new(Notify::new());
        let mut spawner = Spawner {
            client,
            config,
            changes: changes.clone(),
            backlog: backlog.clone(),
            tasks: JoinSet::new(),
        };
        Watchers {
            namespaces: spawner.watch(slim_namespace),
            pods: spawner.watch(slim_pod),
            policies: spawner.watch(slim_policy),
            services: spawner.watch(slim_service),
            endpoint_slices: spawner.watch(slim_endpoint_slice),
            cluster_policies: spawner.watch(slim_cluster_policy),
            aws_cluster_policies: spawner.watch(slim_aws_cluster_policy),
            nodes: spawner.watch(slim_node),
            changes,
            backlog,
            _tasks: spawner.tasks,
        }
    }

    /// Resolves once every kind's first list is complete. Fails only when a watch stopped
    /// before that (its task panicked).
    pub async fn ready(&self) -> Result<(), crate::Error> {
        self.namespaces.ready().await?;
        self.pods.ready().await?;
        self.policies.ready().await?;
        self.services.ready().await?;
        self.endpoint_slices.ready().await?;
        self.cluster_policies.ready().await?;
        self.aws_cluster_policies.ready().await?;
        self.nodes.ready().await?;
        Ok(())
    }

    /// The next batch of changes (see [`Debounce`]).
    pub async fn changed(&self, debounce: Debounce) -> Option<Changes> {
        self.changes.next(debounce).await
    }

    /// Notified once a kind holds [`BACKLOG`] changes for the next delta.
    pub fn backlog(&self) -> Arc<Notify> {
        self.backlog.clone()
    }

    /// What changed since the last call: every object of the first lists the first time.
    ///
    /// The kinds are taken one after the other, so an event arriving in between may be in one
    /// and not yet in another — the change log has it, and the next delta brings it. (The API
    /// server orders nothing across kinds either: an EndpointSlice may name a pod whose own
    /// event has not arrived yet.)
    pub fn take_delta(&self) -> Delta {
        Delta {
            namespaces: self.namespaces.take(),
            pods: self.pods.take(),
            policies: self.policies.take(),
            services: self.services.take(),
            endpoint_slices: self.endpoint_slices.take(),
            cluster_policies: self.cluster_policies.take(),
            aws_cluster_policies: self.aws_cluster_policies.take(),
            nodes: self.nodes.take(),
        }
    }
}

/// One kind's changes not handed over yet, and whether its first list is complete.
#[derive(Debug)]
pub(crate) struct Pending<K> {
    updates: Mutex<Updates<K>>,
    listed: watch::Receiver<bool>,
    /// Notified once `updates` holds [`BACKLOG`].
    backlog: Arc<Notify>,
}

impl<K: ClusterObject> Pending<K> {
    /// Resolves once the first list of the kind is complete.
    async fn ready(&self) -> Result<(), crate::Error> {
        let mut listed = self.listed.clone();
        listed
            .wait_for(|listed| *listed)
            .await
            .map(|_| ())
            .map_err(|_| crate::Error::WatchStopped {
                kind: K::OBJECT_KIND.name(),
            })
    }

    /// The changes since the last call, each object as it is now.
    pub(crate) fn take(&self) -> Updates<K> {
        std::mem::take(&mut *self.updates.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// `key` is now `object` (`None`: gone), replacing any change not handed over yet.
    fn put(&self, key: Key, object: Option<Arc<K>>) {
        let mut updates = self.updates.lock().unwrap_or_else(|e| e.into_inner());
        updates.insert(key, object);
        if updates.len() >= BACKLOG {
            self.backlog.notify_one();
        }
    }
}

/// An object's key in the [`Delta`] (`tollgate_enforcer::compile::Object::key`).
type Key = (String, String);

/// What a watched kind is: a cluster-wide API object that a watch decodes, slims and
/// fingerprints, and hands on across tasks.
trait Watched:
    ClusterObject
    + Resource<DynamicType = ()>
    + Clone
    + DeserializeOwned
    + Serialize
    + Debug
    + Send
    + Sync
    + 'static
{
}

impl<K> Watched for K where
    K: ClusterObject
        + Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + Serialize
        + Debug
        + Send
        + Sync
        + 'static
{
}

/// Starts watches, all on one client, with one watcher config, into one change log.
struct Spawner {
    client: Client,
    config: watcher::Config,
    changes: Arc<ChangeLog>,
    backlog: Arc<Notify>,
    tasks: JoinSet<()>,
}

impl Spawner {
    /// Starts the watch of `K`, slimming every object with `slim`; the changes it holds.
    fn watch<K: Watched>(&mut self, slim: fn(&mut K)) -> Arc<Pending<K>> {
        let follower = Follower::new(self.changes.clone(), self.backlog.clone());
        let pending = follower.pending.clone();
        self.tasks.spawn(follow(
            Api::all(self.client.clone()),
            self.config.clone(),
            slim,
            follower,
        ));
        pending
    }
}

/// One kind's watch, as it follows the API server: what it has handed on of each object, the
/// list under way, and where changes go.
pub(crate) struct Follower<K> {
    /// Every object handed on and not gone since: the fingerprint of what was handed on.
    known: HashMap<Key, Fingerprint>,
    /// The keys of the list under way (from `Init` to `InitDone`).
    listing: Option<HashSet<Key>>,
    /// The last list failed as not served (see [`Follower::not_served`]).
    not_served: bool,
    /// The changes it holds for the next delta.
    pub(crate) pending: Arc<Pending<K>>,
    listed: watch::Sender<bool>,
    changes: Arc<ChangeLog>,
}

impl<K> Follower<K> {
    /// The follower of `K`, before its first list, recording into `changes` and notifying
    /// `backlog` (see [`BACKLOG`]).
    pub(crate) fn new(changes: Arc<ChangeLog>, backlog: Arc<Notify>) -> Follower<K> {
        let (listed_tx, listed) = watch::channel(false);
        Follower {
            known: HashMap::new(),
            listing: None,
            not_served: false,
            pending: Arc::new(Pending {
                updates: Mutex::new(Updates::new()),
                listed,
                backlog,
            }),
            listed: listed_tx,
            changes,
        }
    }
}

/// Runs one kind's watch for as long as the agent does (the watcher retries forever).
async fn follow<K: Watched>(
    api: Api<K>,
    config: watcher::Config,
    slim: fn(&mut K),
    mut follower: Follower<K>,
) {
    let kind = K::OBJECT_KIND.name();
    let api_version = K::api_version(&());
    let mut events = pin!(watcher(api, config).default_backoff().modify(slim));
    while let Some(event) = events.next().await {
        match event {
            Ok(event) => follower.follow(event),
            Err(watcher::Error::InitialListFailed(kube::Error::Api(status)))
                if status.is_not_found() =>
            {
                follower.not_served(&api_version);
            }
            // A 410 Gone restarts from a new list; other errors resume the watch. Both after
            // the backoff.
            Err(error) => {
                tracing::warn!(kind, %api_version, error = %Causes(&error), "watch failed; retrying")
            }
        }
    }
}

impl<K: ClusterObject + Resource<DynamicType = ()> + Clone + Serialize> Follower<K> {
    /// Hands on what `event` changed, if anything, and records it in the change log.
    pub(crate) fn follow(&mut self, event: watcher::Event<K>) {
        match event {
            watcher::Event::Apply(object) => {
                let version = object.meta().resource_version.clone();
                if self.hand_on(object) {
                    self.changes.record(Change::Event(K::OBJECT_KIND, version));
                }
            }
            watcher::Event::Delete(object) => {
                let Some(key) = object.object().key() else {
                    return;
                };
                if self.known.remove(&key).is_some() {
                    self.pending.put(key, None);
                    let version = object.meta().resource_version.clone();
                    self.changes.record(Change::Event(K::OBJECT_KIND, version));
                }
            }
            watcher::Event::Init => self.listing = Some(HashSet::new()),
            watcher::Event::InitApply(object) => {
                if let Some((listing, key)) = self.listing.as_mut().zip(object.object().key()) {
                    listing.insert(key);
                }
                self.hand_on(object);
            }
            watcher::Event::InitDone => {
                self.not_served = false;
                let listed = self.listing.take().unwrap_or_default();
                let gone: Vec<Key> = self
                    .known
                    .keys()
                    .filter(|key| !listed.contains(*key))
                    .cloned()
                    .collect();
                for key in gone {
                    self.known.remove(&key);
                    self.pending.put(key, None);
                }
                tracing::info!(
                    kind = K::OBJECT_KIND.name(),
                    objects = self.known.len(),
                    "list complete"
                );
                self.listed.send_replace(true);
                self.changes.record(Change::Listed(K::OBJECT_KIND));
            }
        }
    }

    /// The API server does not serve the kind (`api_version`: its CRD is not installed), so
    /// it has no objects: the first time, as a complete, empty list (what was handed on is
    /// gone); again only after a list succeeded in between.
    pub(crate) fn not_served(&mut self, api_version: &str) {
        if self.not_served {
            return;
        }
        tracing::warn!(
            kind = K::OBJECT_KIND.name(),
            api_version,
            "the API server does not serve this kind (its CRD is not installed): none until it \
             does; still trying"
        );
        self.follow(watcher::Event::Init);
        self.follow(watcher::Event::InitDone);
        self.not_served = true;
    }

    /// Hands `object` on unless what slimming kept of it is what was handed on last, or it has
    /// no name (which the API server never sends: no key can name it): whether it was.
    fn hand_on(&mut self, object: K) -> bool {
        let Some(key) = object.object().key() else {
            tracing::warn!(
                kind = K::OBJECT_KIND.name(),
                "an object without a name left out"
            );
            return false;
        };
        let fingerprint = fingerprint(&object);
        if self.known.get(&key) == Some(&fingerprint) {
            tracing::trace!(
                kind = K::OBJECT_KIND.name(),
                object = %object.name_any(),
                "no change after slimming"
            );
            return false;
        }
        self.known.insert(key.clone(), fingerprint);
        self.pending.put(key, Some(Arc::new(object)));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn namespace(name: &str, version: &str, team: &str) -> Namespace {
        Namespace {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                resource_version: Some(version.to_owned()),
                labels: Some(BTreeMap::from([("team".to_owned(), team.to_owned())])),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        }
    }

    /// The pending changes as (name, team or `None` when gone).
    fn taken(pending: &Pending<Namespace>) -> Vec<(String, Option<String>)> {
        pending
            .take()
            .into_iter()
            .map(|((_, name), object)| {
                let team = object.map(|o| o.metadata.labels.as_ref().unwrap()["team"].clone());
                (name, team)
            })
            .collect()
    }

    /// The events of the batch `changes` holds (taking it), 0 when none.
    fn events(changes: &ChangeLog) -> usize {
        let batch = changes.state.lock().unwrap().pending.take();
        batch.map_or(0, |batch| batch.events)
    }

    #[tokio::test]
    async fn only_changes_are_handed_on_and_a_relist_hands_on_what_it_no_longer_lists() {
        let changes = Arc::new(ChangeLog::default());
        let mut follower = Follower::<Namespace>::new(changes.clone(), Arc::default());
        let pending = follower.pending.clone();

        follower.follow(watcher::Event::Init);
        follower.follow(watcher::Event::InitApply(namespace("a", "1", "x")));
        follower.follow(watcher::Event::InitApply(namespace("b", "1", "x")));
        assert_eq!(events(&changes), 0, "a list counts once it is complete");
        follower.follow(watcher::Event::InitDone);
        assert_eq!(events(&changes), 1);
        pending.ready().await.unwrap();
        assert_eq!(
            taken(&pending),
            [
                ("a".into(), Some("x".into())),
                ("b".into(), Some("x".into()))
            ]
        );

        // A new resourceVersion of the same content is churn; a changed label is a change;
        // two changes of one object before a pass are one.
        follower.follow(watcher::Event::Apply(namespace("a", "2", "x")));
        assert_eq!((events(&changes), taken(&pending)), (0, vec![]));
        follower.follow(watcher::Event::Apply(namespace("a", "3", "y")));
        follower.follow(watcher::Event::Apply(namespace("a", "4", "z")));
        assert_eq!(events(&changes), 2);
        assert_eq!(taken(&pending), [("a".into(), Some("z".into()))]);

        // The watch expired; the relist no longer has b (deleted meanwhile, no event seen),
        // has a unchanged and c new.
        follower.follow(watcher::Event::Init);
        follower.follow(watcher::Event::InitApply(namespace("a", "9", "z")));
        follower.follow(watcher::Event::InitApply(namespace("c", "9", "x")));
        follower.follow(watcher::Event::InitDone);
        assert_eq!(
            taken(&pending),
            [("b".into(), None), ("c".into(), Some("x".into()))]
        );

        // A delete of what was never handed on is nothing.
        follower.follow(watcher::Event::Delete(namespace("d", "10", "x")));
        follower.follow(watcher::Event::Delete(namespace("c", "10", "x")));
        assert_eq!(taken(&pending), [("c".into(), None)]);
    }

    #[tokio::test]
    async fn a_kind_not_served_is_an_empty_list_once() {
        let changes = Arc::new(ChangeLog::default());
        let mut follower = Follower::<Namespace>::new(changes.clone(), Arc::default());
        let pending = follower.pending.clone();

        // Not served before a first list: the kind is known to be empty.
        follower.not_served("v1");
        pending.ready().await.unwrap();
        assert_eq!((events(&changes), taken(&pending)), (1, vec![]));
        // Every retry fails the same way: nothing new.
        follower.not_served("v1");
        assert_eq!(events(&changes), 0);

        // Served: a list hands on what it finds; then not served again (the CRD deleted):
        // what was handed on is gone.
        follower.follow(watcher::Event::Init);
        follower.follow(watcher::Event::InitApply(namespace("a", "1", "x")));
        follower.follow(watcher::Event::InitDone);
        assert_eq!(taken(&pending), [("a".into(), Some("x".into()))]);
        follower.not_served("v1");
        follower.not_served("v1");
        assert_eq!(taken(&pending), [("a".into(), None)]);
    }

    #[test]
    fn a_long_list_is_to_be_taken_as_it_arrives() {
        use futures::FutureExt;
        let backlog = Arc::new(Notify::new());
        let mut follower = Follower::<Namespace>::new(Arc::default(), backlog.clone());
        follower.follow(watcher::Event::Init);
        for i in 1..BACKLOG {
            follower.follow(watcher::Event::InitApply(namespace(
                &i.to_string(),
                "1",
                "x",
            )));
        }
        assert!(backlog.notified().now_or_never().is_none());
        follower.follow(watcher::Event::InitApply(namespace("last", "1", "x")));
        assert!(backlog.notified().now_or_never().is_some());
        assert_eq!(follower.pending.take().len(), BACKLOG);

        // Taken, the next objects of the list start a new count.
        follower.follow(watcher::Event::InitApply(namespace("after", "1", "x")));
        assert!(backlog.notified().now_or_never().is_none());
        follower.follow(watcher::Event::InitDone);
        assert_eq!(follower.known.len(), BACKLOG + 1);
    }

    #[tokio::test(start_paused = true)]
    async fn bursts_become_one_batch_within_the_bounds() {
        let log = ChangeLog::default();
        let debounce = Debounce {
            quiet: Duration::from_millis(100),
            max_delay: Duration::from_millis(1000),
        };
        let started = tokio::time::Instant::now();
        log.record(Change::Listed(ObjectKind::Pod));
        log.record(Change::Event(ObjectKind::Pod, Some("7".to_owned())));
        log.record(Change::Event(ObjectKind::Pod, Some("8".to_owned())));
        log.record(Change::Event(ObjectKind::Namespace, None));
        let batch = log.next(debounce).await.unwrap();
        assert_eq!(batch.events, 4);
        assert_eq!(
            batch.resource_versions,
            BTreeMap::from([(ObjectKind::Pod, "8".to_owned())])
        );
        assert_eq!(batch.listed, BTreeSet::from([ObjectKind::Pod]));
        assert_eq!(started.elapsed(), Duration::from_millis(100));

        // A change every 60 ms never leaves 100 ms of quiet: the batch goes after 1 s, with
        // the 17 changes of 0..=960 ms; the other 23 wait for the next one.
        let started = tokio::time::Instant::now();
        let feeding = async {
            for _ in 0..40 {
                log.record(Change::Event(ObjectKind::Pod, None));
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
