//! The agent's loop: wait for the cluster to change, reconcile, say what it did.
//!
//! [`Agent::next`] waits for a batch of [`Changes`] from the [`ClusterSource`], takes the
//! source's delta *after* the batch (so it holds every change the batch names) and hands it
//! to the [`Reconciler`]'s compiler, tells [`LocalEndpoints`] which pods changed and asks it
//! for the node's endpoints and the node's own addresses, and has the [`Reconciler`] compile
//! and sync. While it waits, a source that holds many changes (a first list as it arrives:
//! [`ClusterSource::backlog`]) has them taken and handed on the same way, without a compile,
//! so that the objects of a whole cluster are never held at once. What the changed pods claim
//! ([`PodChanges`]) is kept until a pass syncs: the [`Pass`] hands it on to what names
//! addresses (the collector's identities). The
//! propagation latency of a pass runs from the arrival of the batch's oldest change to the
//! end of the sync. A pass that fails is retried after 1 s, doubling to 30 s, each delay plus
//! a random jitter of up to as much again (the nodes of a cluster do not retry the API server
//! in lockstep), or sooner when the cluster changes again. Once a pass has synced, a change of the node itself
//! ([`LocalEndpoints::changed`]: a new veth, a late host route) also starts a pass, on the
//! cluster the compiler already has, and so does the periodic drift check
//! ([`Agent::check_drift_every`], [`DRIFT_CHECK`] by default): the maps are read back and what
//! differs from what the agent wrote is repaired before the pass syncs.

use std::net::IpAddr;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::{sync::Notify, time::Instant};
use tollgate_collector::{
    identity::{PendingPods, PodChanges},
    ship::{RetryDelays, retry_delays},
};
use tollgate_enforcer::{
    compile::Compiled,
    sync::{MapsError, PolicyMaps, SyncStats},
};

use crate::Error;
use crate::naming;
use crate::reconcile::{LocalEndpoints, Reconciler, Report};
use crate::source::ClusterSource;
use crate::watch::Changes;
use tollgate_enforcer::causes::Causes;

/// Delay before the first retry of a failed pass.
const RETRY_FIRST: Duration = Duration::from_secs(1);
/// Longest delay between retries, before its jitter.
const RETRY_MAX: Duration = Duration::from_secs(30);

/// How often the maps are read back and compared with what was written, by default.
pub const DRIFT_CHECK: Duration = Duration::from_secs(300);

/// The cluster source, the node's endpoints and the reconciler, driven together.
#[derive(Debug)]
pub struct Agent<S, E> {
    source: S,
    endpoints: E,
    reconciler: Reconciler,
    /// What the pods that changed since the last pass that synced claim (the next one hands
    /// it on).
    unobserved: PendingPods,
    /// The source's [`ClusterSource::backlog`].
    backlog: Option<Arc<Notify>>,
    /// The node's addresses the last pass that synced compiled.
    node_addresses: Vec<IpAddr>,
    /// The delays of the failed passes since the last pass that synced.
    retries: RetryDelays,
    /// When the next pass without a change is due (after a failed pass, or as
    /// [`Agent::pass_again_after`] asks): a deadline, so a [`Agent::next`] dropped and called
    /// again (it is cancel-safe) does not wait anew.
    retry_at: Option<Instant>,
    /// Whether a pass has synced: the source was complete then, so a pass that the node
    /// starts compiles a whole cluster.
    synced_once: bool,
    /// Time between two drift checks.
    drift_every: Duration,
    /// When the next drift check is due; set by the first pass that synced.
    drift_at: Option<Instant>,
}

/// One pass of the agent.
#[derive(Debug, Clone)]
pub struct Pass {
    /// The changes that caused it; `None` for the retry of a failed pass, a pass asked for
    /// by [`Agent::pass_again_after`], or one that a change of the node started.
    pub changes: Option<Changes>,
    /// What the reconciliation did.
    pub report: Report,
    /// From the arrival of the oldest change to the maps synced.
    pub latency: Option<Duration>,
    /// The repairs of the drift check that came first, when the pass made one.
    pub drift: Option<SyncStats>,
    /// What the pods that changed since the previous pass that synced claim now (`None`:
    /// gone, or nothing); every pod at the first.
    pub pods: PodChanges,
    /// The source's update that the pass compiled, for a source that numbers them
    /// ([`ClusterSource::update`]).
    pub update: Option<u64>,
}

impl<S: ClusterSource, E: LocalEndpoints> Agent<S, E> {
    /// An agent that has not synced yet.
    pub fn new(source: S, endpoints: E) -> Agent<S, E> {
        let backlog = source.backlog();
        Agent {
            source,
            endpoints,
            reconciler: Reconciler::new(),
            unobserved: PendingPods::default(),
            backlog,
            node_addresses: Vec::new(),
            retries: retry_delays(RETRY_FIRST, RETRY_MAX),
            retry_at: None,
            synced_once: false,
            drift_every: DRIFT_CHECK,
            drift_at: None,
        }
    }

    /// Reads the maps back every `every` (instead of [`DRIFT_CHECK`]) and repairs what
    /// differs from what the agent wrote.
    pub fn check_drift_every(&mut self, every: Duration) {
        self.drift_every = every;
        self.drift_at = self.drift_at.map(|_| Instant::now() + every);
    }

    /// The compilation the maps were last synced to: what the collector's naming table is
    /// built from after a pass ([`crate::naming::naming`], with the pass's pods and
    /// [`Agent::node_addresses`]). `None` before the first pass and after a
    /// failed one.
    pub fn synced(&self) -> Option<&Compiled> {
        self.reconciler.synced()
    }

    /// The node's own addresses that the last pass that synced compiled.
    pub fn node_addresses(&self) -> &[IpAddr] {
        &self.node_addresses
    }

    /// Makes the next [`Agent::next`] pass after `delay` at the latest, even when the cluster
    /// does not change: the node's endpoints are not all in place yet (a failed attach).
    pub fn pass_again_after(&mut self, delay: Duration) {
        let at = Instant::now() + delay;
        self.retry_at = Some(self.retry_at.map_or(at, |due| due.min(at)));
    }

    /// The cluster source.
    pub fn source(&self) -> &S {
        &self.source
    }

    /// The node's endpoints.
    pub fn endpoints(&self) -> &E {
        &self.endpoints
    }

    /// The node's endpoints, to act on them between passes.
    pub fn endpoints_mut(&mut self) -> &mut E {
        &mut self.endpoints
    }

    /// Waits for the cluster to change (or for a retry to be due) and brings `maps` in line.
    /// The first pass comes once the source knows the whole cluster. A failed pass is logged
    /// here and returned; the next call retries it. `None` when the source has ended.
    ///
    /// Cancel-safe: dropped while it waits, nothing is lost (the source and the endpoints keep
    /// what they have not handed over, a retry keeps its deadline).
    pub async fn next<M: PolicyMaps>(
        &mut self,
        maps: &mut M,
    ) -> Option<Result<Pass, Error<M::Error>>> {
        let mut retry = pin!(due(self.retry_at));
        let mut drift = pin!(due(self.drift_at));
        // The node's own changes count once the maps were synced to a complete cluster.
        let node = self.synced_once;
        let changes = loop {
            let woke = tokio::select! {
                changes = self.source.changed() => Woke::Pass(Some(changes?)),
                () = &mut retry => Woke::Pass(None),
                () = &mut drift => Woke::Pass(None),
                () = self.endpoints.changed(), if node => Woke::Pass(None),
                () = notified(self.backlog.as_deref()) => Woke::Backlog,
            };
            match woke {
                Woke::Pass(changes) => break changes,
                // Taken now (a first list as it arrives), compiled with their batch.
                Woke::Backlog => self.take_changes(),
            }
        };
        let check_drift = self.drift_at.is_some_and(|due| due <= Instant::now());
        self.take_changes();
        let update = self.source.update();
        let local = self.endpoints.local();
        let addresses = self.endpoints.address_interfaces();
        let node_addresses = self.endpoints.node_addresses();
        let drift = if check_drift {
            // Due again in full even if it fails: the retry of a failed pass reads the maps
            // anyway.
            self.drift_at = Some(Instant::now() + self.drift_every);
            match self.reconciler.check_drift(maps) {
                Ok(drift) => drift,
                Err(error) => return Some(Err(self.failed(error))),
            }
        } else {
            None
        };
        let report =
            match self
                .reconciler
                .reconcile(node_addresses.clone(), &local, &addresses, maps)
            {
                Ok(report) => report,
                Err(error) => return Some(Err(self.failed(error))),
            };
        self.retries = retry_delays(RETRY_FIRST, RETRY_MAX);
        self.retry_at = None;
        self.node_addresses = node_addresses;
        self.synced_once = true;
        if self.drift_at.is_none() {
            self.drift_at = Some(Instant::now() + self.drift_every);
        }
        let latency = changes.as_ref().map(|c| c.first_arrival.elapsed());
        log_pass(changes.as_ref(), &report, latency);
        Some(Ok(Pass {
            changes,
            report,
            latency,
            drift,
            pods: self.unobserved.take(),
            update,
        }))
    }

    /// Takes what the source holds: the compiler and the endpoints are told, and the pods'
    /// claims are kept for the next pass that syncs.
    fn take_changes(&mut self) {
        let delta = self.source.take_delta();
        self.reconciler.apply(&delta);
        self.endpoints.track(&delta.pods);
        naming::add_pods(&mut self.unobserved, &delta.pods);
    }

    /// A failed pass: logged, and retried after the next of [`retry_delays`].
    fn failed<M: MapsError>(&mut self, error: Error<M>) -> Error<M> {
        let delay = self.retries.next().unwrap_or(RETRY_MAX);
        self.retry_at = Some(Instant::now() + delay);
        tracing::warn!(
            retry_in_ms = delay.as_millis() as u64,
            error = %Causes(&error),
            "reconciliation failed"
        );
        error
    }
}

/// What ended a wait of [`Agent::next`].
enum Woke {
    /// A pass is due: for a batch of changes, or without one (`None`: a retry, a drift check,
    /// a change of the node).
    Pass(Option<Changes>),
    /// The source holds a backlog to take.
    Backlog,
}

/// Resolves at `at`; never without it.
async fn due(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Resolves when `backlog` is notified; never without one.
async fn notified(backlog: Option<&Notify>) {
    match backlog {
        Some(backlog) => backlog.notified().await,
        None => std::future::pending().await,
    }
}

/// One line per pass: at info when the maps changed, at debug when they did not.
fn log_pass(changes: Option<&Changes>, report: &Report, latency: Option<Duration>) {
    let events = changes.map_or(0, |c| c.events);
    let latency_ms = latency.map_or(0.0, |l| l.as_secs_f64() * 1e3);
    let compile_ms = report.compile_time.as_secs_f64() * 1e3;
    let sync_ms = report.sync_time.as_secs_f64() * 1e3;
    let versions = changes.map(|c| format!("{:?}", c.resource_versions));
    macro_rules! pass {
        ($level:expr, $message:literal) => {
            tracing::event!(
                $level,
                events,
                resource_versions = versions.as_deref().unwrap_or(""),
                endpoints = report.endpoints,
                programmed = report.programmed,
                touched = report.touched.len(),
                upserts = report.sync.upserts,
                deletes = report.sync.deletes,
                writes = %report.sync,
                errors = report.errors.len(),
                compile_ms,
                sync_ms,
                latency_ms,
                $message
            )
        };
    }
    if report.sync.changed() {
        pass!(tracing::Level::INFO, "policy maps synced");
    } else {
        pass!(tracing::Level::DEBUG, "policy maps already in line");
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use tollgate_enforcer::{
        decision::ProbeFlow,
        desired::{Capacity, DesiredState, PeerEntryKey},
        manifest::parse_manifests,
        model::decide_flow,
        snapshot::Snapshot,
        sync::{InMemoryMaps, MapsError},
    };
    use tollgate_schemas::{
        EndpointKey, EndpointState, PeerIdentity, PolicyEntry, PolicyKey, PolicyValue, Verdict,
        endpoint_flags,
    };

    use super::*;
    use crate::source::StaticSource;

    const PODS: &str = include_str!("../../examples/seed/lab-pods.yaml");
    // all-deny, then allow-amazonlinux-to-nginx and allow-nginx-from-amazonlinux.
    const POLICIES: [&str; 2] = [
        include_str!("../../examples/seed/all-deny.yaml"),
        include_str!("../../examples/seed/allow-amazonlinux-to-nginx.yaml"),
    ];

    fn seed(policies: bool) -> Snapshot {
        let mut text = PODS.to_owned();
        if policies {
            for policy in POLICIES {
                text = format!("{text}\n---\n{policy}");
            }
        }
        let (snapshot, errors) = parse_manifests(&text, "seed");
        assert_eq!(errors, vec![]);
        snapshot
    }

    /// In-memory maps whose writes fail while `failing` is set, and that count reads.
    #[derive(Default)]
    struct Flaky {
        maps: InMemoryMaps,
        failing: bool,
        reads: std::cell::Cell<usize>,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("refused")]
    struct Refused;

    impl MapsError for Refused {
        fn is_full(&self) -> bool {
            false
        }
    }

    impl Flaky {
        fn check(&self) -> Result<(), Refused> {
            if self.failing { Err(Refused) } else { Ok(()) }
        }
    }

    impl PolicyMaps for Flaky {
        type Error = Refused;

        fn capacity(&self) -> Result<Capacity, Refused> {
            Ok(Capacity::default())
        }

        fn read(&self) -> Result<DesiredState, Refused> {
            self.reads.set(self.reads.get() + 1);
            Ok(self.maps.state.clone())
        }

        fn upsert_endpoint(
            &mut self,
            key: &EndpointKey,
            value: &EndpointState,
        ) -> Result<(), Refused> {
            self.check()?;
            self.maps.state.endpoints.insert(*key, *value);
            Ok(())
        }

        fn delete_endpoint(&mut self, key: &EndpointKey) -> Result<(), Refused> {
            self.check()?;
            self.maps.state.endpoints.remove(key);
            Ok(())
        }

        fn upsert_peer(&mut self, key: &PeerEntryKey, value: &PeerIdentity) -> Result<(), Refused> {
            self.check()?;
            self.maps.state.peers.insert(*key, *value);
            Ok(())
        }

        fn delete_peer(&mut self, key: &PeerEntryKey) -> Result<(), Refused> {
            self.check()?;
            self.maps.state.peers.remove(key);
            Ok(())
        }

        fn upsert_policy(&mut self, key: &PolicyKey, value: &PolicyEntry) -> Result<(), Refused> {
            self.check()?;
            self.maps.state.policy.insert(*key, *value);
            Ok(())
        }

        fn delete_policy(&mut self, key: &PolicyKey) -> Result<(), Refused> {
            self.check()?;
            self.maps.state.policy.remove(key);
            Ok(())
        }

        fn write_ruleset(&mut self, id: u32, value: &PolicyValue) -> Result<(), Refused> {
            self.check()?;
            self.maps.state.rulesets.insert(id, *value);
            Ok(())
        }

        fn clear_ruleset(&mut self, id: u32) -> Result<(), Refused> {
            self.check()?;
            self.maps.state.rulesets.remove(&id);
            Ok(())
        }

        fn insert_node_addr(&mut self, key: &EndpointKey) -> Result<(), Refused> {
            self.check()?;
            self.maps.state.node_addrs.insert(*key);
            Ok(())
        }

        fn delete_node_addr(&mut self, key: &EndpointKey) -> Result<(), Refused> {
            self.check()?;
            self.maps.state.node_addrs.remove(key);
            Ok(())
        }
    }

    fn verdict(maps: &Flaky, src: &str, dst: &str, port: u16) -> Verdict {
        let flow = ProbeFlow {
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            protocol: 6,
            src_port: 40_000,
            dst_port: port,
            service: None,
        };
        decide_flow(&maps.maps.state, &flow).verdict()
    }

    #[tokio::test(start_paused = true)]
    async fn a_static_source_drives_the_loop_and_a_failed_sync_is_retried() {
        let interfaces = BTreeMap::from([
            ("kube-system/kube-dns".to_owned(), 10),
            ("default/nginx".to_owned(), 20),
            ("default/httpd".to_owned(), 30),
            ("default/amazonlinux".to_owned(), 40),
        ]);
        let (source, handle) = StaticSource::new(seed(false));
        let mut agent = Agent::new(source, interfaces);
        let mut maps = Flaky::default();

        let first = agent.next(&mut maps).await.unwrap().unwrap();
        assert_eq!(first.report.endpoints, 4);
        assert_eq!(first.report.touched.len(), 4);
        assert!(
            maps.maps
                .state
                .endpoints
                .values()
                .all(|e| e.flags == endpoint_flags::PROGRAMMED)
        );

        // The policies arrive while the maps refuse writes: the pass fails, nothing is
        // enforced yet; the error names the first write.
        handle.set(seed(true));
        maps.failing = true;
        let failed = agent.next(&mut maps).await.unwrap().unwrap_err();
        assert_eq!(
            Causes(&failed).to_string(),
            "syncing the policy maps: write of rule set 1 in TG_RULESETS: refused"
        );
        assert_eq!(
            verdict(&maps, "198.18.0.20", "198.18.0.30", 80),
            Verdict::Allow
        );

        // Without any further change, the retry (1 s later, and its jitter) completes it.
        maps.failing = false;
        let started = tokio::time::Instant::now();
        let retried = agent.next(&mut maps).await.unwrap().unwrap();
        let waited = started.elapsed();
        assert!(
            RETRY_FIRST <= waited && waited < RETRY_FIRST * 2,
            "{waited:?}"
        );
        assert!(retried.changes.is_none() && retried.latency.is_none());
        assert_eq!(retried.report.touched.len(), 3);
        assert_eq!(
            verdict(&maps, "198.18.0.20", "198.18.0.30", 80),
            Verdict::Deny
        );
        assert_eq!(
            verdict(&maps, "198.18.0.40", "198.18.0.20", 80),
            Verdict::Allow
        );
        assert_eq!(
            verdict(&maps, "198.18.0.40", "198.18.0.30", 80),
            Verdict::Deny
        );

        // The pods that changed since the last pass that synced are handed on once: the
        // failed pass's came with the retry (none: only policies changed).
        assert!(retried.pods.is_empty() && first.pods.len() == 4);
        assert_eq!((first.update, retried.update), (Some(0), Some(1)));

        // The same snapshot again: compiled, and the maps not even read.
        assert_eq!(handle.set(seed(true)), 2);
        let reads = maps.reads.get();
        let again = agent.next(&mut maps).await.unwrap().unwrap();
        assert_eq!(maps.reads.get(), reads);
        assert_eq!(again.update, Some(2));
        assert!(again.report.touched.is_empty());
        assert!(!again.report.sync.changed());

        // A pass asked for without a change.
        agent.pass_again_after(Duration::from_millis(300));
        let started = tokio::time::Instant::now();
        let asked = agent.next(&mut maps).await.unwrap().unwrap();
        assert_eq!(started.elapsed(), Duration::from_millis(300));
        assert!(asked.changes.is_none() && asked.report.touched.is_empty());

        drop(handle);
        assert!(agent.next(&mut maps).await.is_none());
    }

    /// The seed's endpoints on a node whose addresses the test sets.
    struct Node {
        interfaces: BTreeMap<String, u32>,
        addresses: Vec<std::net::IpAddr>,
    }

    impl LocalEndpoints for Node {
        fn local(&mut self) -> BTreeMap<String, u32> {
            self.interfaces.clone()
        }

        fn node_addresses(&mut self) -> Vec<std::net::IpAddr> {
            self.addresses.clone()
        }
    }

    #[tokio::test]
    async fn the_nodes_addresses_not_the_snapshots_reach_the_maps() {
        let node = Node {
            interfaces: BTreeMap::from([("default/httpd".to_owned(), 30)]),
            addresses: vec!["198.18.10.17".parse().unwrap()],
        };
        let mut cluster = seed(true);
        cluster.node_addresses = vec!["198.18.99.99".parse().unwrap()];
        let (source, handle) = StaticSource::new(cluster);
        let mut agent = Agent::new(source, node);
        let mut maps = Flaky::default();
        agent.next(&mut maps).await.unwrap().unwrap();
        assert_eq!(agent.node_addresses(), agent.endpoints().addresses);
        let key = EndpointKey {
            addr: tollgate_schemas::addr::to_bytes("198.18.10.17".parse().unwrap()),
        };
        assert_eq!(maps.maps.state.node_addrs, [key].into());

        // The node loses its address: the next pass removes it, and nothing else.
        agent.endpoints_mut().addresses.clear();
        handle.set(seed(true));
        let pass = agent.next(&mut maps).await.unwrap().unwrap();
        assert!(maps.maps.state.node_addrs.is_empty());
        assert_eq!((pass.report.sync.upserts, pass.report.sync.deletes), (0, 1));
    }

    /// A cluster that arrives in two parts: the pods first, held as a backlog (the source is
    /// not ready yet); the policies once they were taken.
    struct InParts {
        inner: StaticSource,
        handle: crate::source::StaticHandle,
        rest: Option<Snapshot>,
        backlog: Arc<Notify>,
    }

    impl ClusterSource for InParts {
        fn take_delta(&mut self) -> tollgate_enforcer::snapshot::Delta {
            let delta = self.inner.take_delta();
            if let Some(rest) = self.rest.take() {
                self.handle.set(rest);
            }
            delta
        }

        async fn changed(&mut self) -> Option<Changes> {
            if self.rest.is_some() {
                std::future::pending::<()>().await;
            }
            self.inner.changed().await
        }

        fn backlog(&self) -> Option<Arc<Notify>> {
            Some(self.backlog.clone())
        }
    }

    #[tokio::test]
    async fn a_backlog_is_taken_before_the_source_is_ready_and_compiled_with_the_rest() {
        let (inner, handle) = StaticSource::new(seed(false));
        let backlog = Arc::new(Notify::new());
        backlog.notify_one();
        let source = InParts {
            inner,
            handle,
            rest: Some(seed(true)),
            backlog,
        };
        let interfaces = BTreeMap::from([("default/amazonlinux".to_owned(), 40)]);
        let mut agent = Agent::new(source, interfaces);
        let mut maps = Flaky::default();
        // Without the backlog taken, the source would never be ready.
        let pass = tokio::time::timeout(Duration::from_secs(10), agent.next(&mut maps))
            .await
            .expect("the backlog was taken")
            .unwrap()
            .unwrap();
        // The pods came with the backlog, the policies with the batch: both compiled, and
        // every pod's claims handed on.
        assert_eq!(pass.pods.len(), seed(false).pods.len());
        assert_eq!(pass.report.endpoints, 1);
        assert_eq!(verdict(&maps, "10.9.9.9", "198.18.0.40", 80), Verdict::Deny);
    }

    #[tokio::test(start_paused = true)]
    async fn a_periodic_drift_check_repairs_the_maps() {
        let interfaces = BTreeMap::from([
            ("default/nginx".to_owned(), 20),
            ("default/amazonlinux".to_owned(), 40),
        ]);
        let (source, _handle) = StaticSource::new(seed(true));
        let mut agent = Agent::new(source, interfaces);
        agent.check_drift_every(Duration::from_secs(60));
        let mut maps = Flaky::default();
        let first = agent.next(&mut maps).await.unwrap().unwrap();
        assert!(first.drift.is_none());
        let synced = maps.maps.state.clone();
        assert_eq!(verdict(&maps, "10.9.9.9", "198.18.0.40", 80), Verdict::Deny);

        // Someone lifts amazonlinux's isolation (all-deny's, for a client off the cluster); a
        // minute later the agent reads the maps back and puts it back, without any change of
        // the cluster.
        let amazonlinux = EndpointKey {
            addr: tollgate_schemas::addr::to_bytes("198.18.0.40".parse().unwrap()),
        };
        maps.maps
            .state
            .endpoints
            .get_mut(&amazonlinux)
            .unwrap()
            .flags = endpoint_flags::PROGRAMMED;
        assert_eq!(
            verdict(&maps, "10.9.9.9", "198.18.0.40", 80),
            Verdict::Allow
        );
        let reads = maps.reads.get();
        let started = tokio::time::Instant::now();
        let checked = agent.next(&mut maps).await.unwrap().unwrap();
        assert_eq!(started.elapsed(), Duration::from_secs(60));
        assert!(checked.changes.is_none());
        let drift = checked.drift.unwrap();
        assert_eq!(
            (drift.endpoints.upserts, drift.upserts + drift.deletes),
            (1, 1)
        );
        assert_eq!(maps.reads.get(), reads + 1);
        assert_eq!(maps.maps.state, synced);
        assert_eq!(verdict(&maps, "10.9.9.9", "198.18.0.40", 80), Verdict::Deny);
    }
}
