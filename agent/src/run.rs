//! The agent's loop: wait for the cluster to change, reconcile, say what it did.
//!
//! [`Agent::next`] waits for a batch of [`Changes`] from the [`ClusterSource`], takes a
//! snapshot *after* the batch (so it holds every change the batch names), asks
//! [`LocalEndpoints`] for the node's endpoints and its own addresses (which replace the
//! snapshot's `node_addresses`: they are the node's, not the cluster's) and has the
//! [`Reconciler`] compile and sync. The
//! propagation latency of a pass runs from the arrival of the batch's oldest change to the
//! end of the sync. A pass that fails is retried after 1 s, doubling to 30 s, or sooner
//! when the cluster changes again. Once a pass has synced, a change of the node itself
//! ([`LocalEndpoints::changed`]: a new veth, a late host route) also starts a pass, on the
//! snapshot the agent already has.

use std::time::Duration;

use tokio::time::Instant;
use tollgate_enforcer::{compile::Compiled, snapshot::Snapshot, sync::PolicyMaps};

use crate::Error;
use crate::reconcile::{LocalEndpoints, Reconciler, Report};
use crate::source::ClusterSource;
use crate::watch::Changes;

/// Delay before the first retry of a failed pass.
const RETRY_FIRST: Duration = Duration::from_secs(1);
/// Longest delay between retries.
const RETRY_MAX: Duration = Duration::from_secs(30);

/// The cluster source, the node's endpoints and the reconciler, driven together.
#[derive(Debug)]
pub struct Agent<S, E> {
    source: S,
    endpoints: E,
    reconciler: Reconciler,
    /// The snapshot of the last pass that synced (what the collector's identities observe).
    snapshot: Option<Snapshot>,
    /// Set after a failed pass (or by [`Agent::pass_again_after`]): how long to wait before
    /// the next pass without a change.
    retry: Option<Duration>,
    /// When that next pass is due: a deadline, so a [`Agent::next`] dropped and called again
    /// (it is cancel-safe) does not wait anew.
    retry_at: Option<Instant>,
    /// Whether a pass has synced: the source was complete then, so a pass that the node
    /// starts compiles a whole cluster.
    synced_once: bool,
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
}

impl<S: ClusterSource, E: LocalEndpoints> Agent<S, E> {
    /// An agent that has not synced yet.
    pub fn new(source: S, endpoints: E) -> Agent<S, E> {
        Agent {
            source,
            endpoints,
            reconciler: Reconciler::new(),
            snapshot: None,
            retry: None,
            retry_at: None,
            synced_once: false,
        }
    }

    /// The snapshot and compilation the maps were last synced to: what
    /// `tollgate_collector::identity::Identities::observe` records after a pass. `None` before
    /// the first pass and after a failed one.
    pub fn synced(&self) -> Option<(&Snapshot, &Compiled)> {
        Some((self.snapshot.as_ref()?, self.reconciler.synced()?))
    }

    /// Makes the next [`Agent::next`] pass after `delay` at the latest, even when the cluster
    /// does not change: the node's endpoints are not all in place yet (a failed attach).
    pub fn pass_again_after(&mut self, delay: Duration) {
        self.retry = Some(self.retry.map_or(delay, |retry| retry.min(delay)));
        let at = Instant::now() + delay;
        self.retry_at = Some(self.retry_at.map_or(at, |due| due.min(at)));
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
    pub async fn next<M: PolicyMaps>(&mut self, maps: &mut M) -> Option<Result<Pass, Error>> {
        let retry = async {
            match self.retry_at {
                Some(due) => tokio::time::sleep_until(due).await,
                None => std::future::pending().await,
            }
        };
        // The node's own changes count once the maps were synced to a complete cluster.
        let node = self.synced_once;
        let changes = tokio::select! {
            changes = self.source.changed() => Some(changes?),
            () = retry => None,
            () = self.endpoints.changed(), if node => None,
        };
        let mut snapshot = self.source.snapshot();
        let local = self.endpoints.local(&snapshot);
        snapshot.node_addresses = self.endpoints.node_addresses();
        let report = match self.reconciler.reconcile(&snapshot, &local, maps) {
            Ok(report) => report,
            Err(error) => {
                self.snapshot = None;
                let delay = self
                    .retry
                    .map_or(RETRY_FIRST, |delay| (delay * 2).min(RETRY_MAX));
                self.retry = Some(delay);
                self.retry_at = Some(Instant::now() + delay);
                tracing::warn!(
                    retry_in_ms = delay.as_millis() as u64,
                    %error,
                    "reconciliation failed"
                );
                return Some(Err(error));
            }
        };
        self.retry = None;
        self.retry_at = None;
        self.snapshot = Some(snapshot);
        self.synced_once = true;
        let latency = changes.as_ref().map(|c| c.first_arrival.elapsed());
        log_pass(changes.as_ref(), &report, latency);
        Some(Ok(Pass {
            changes,
            report,
            latency,
        }))
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
                touched = report.touched.len(),
                upserts = report.upserts,
                deletes = report.deletes,
                errors = report.errors.len(),
                compile_ms,
                sync_ms,
                latency_ms,
                $message
            )
        };
    }
    if report.upserts + report.deletes > 0 {
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
        desired::{DesiredState, PolicyEntryKey},
        manifest::parse_manifests,
        model::decide_flow,
        snapshot::Snapshot,
        sync::InMemoryMaps,
    };
    use tollgate_schemas::{
        Direction, EndpointKey, EndpointState, PolicyValue, Verdict, endpoint_flags,
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
    #[error("map full")]
    struct Full;

    impl Flaky {
        fn check(&self) -> Result<(), Full> {
            if self.failing { Err(Full) } else { Ok(()) }
        }
    }

    impl PolicyMaps for Flaky {
        type Error = Full;

        fn read(&self) -> Result<DesiredState, Full> {
            self.reads.set(self.reads.get() + 1);
            Ok(self.maps.state.clone())
        }

        fn upsert_endpoint(
            &mut self,
            key: &EndpointKey,
            value: &EndpointState,
        ) -> Result<(), Full> {
            self.check()?;
            self.maps.state.endpoints.insert(*key, *value);
            Ok(())
        }

        fn delete_endpoint(&mut self, key: &EndpointKey) -> Result<(), Full> {
            self.check()?;
            self.maps.state.endpoints.remove(key);
            Ok(())
        }

        fn upsert_policy(
            &mut self,
            direction: Direction,
            key: &PolicyEntryKey,
            value: &PolicyValue,
        ) -> Result<(), Full> {
            self.check()?;
            self.maps.state.policy_mut(direction).insert(*key, *value);
            Ok(())
        }

        fn delete_policy(
            &mut self,
            direction: Direction,
            key: &PolicyEntryKey,
        ) -> Result<(), Full> {
            self.check()?;
            self.maps.state.policy_mut(direction).remove(key);
            Ok(())
        }

        fn insert_node_addr(&mut self, key: &EndpointKey) -> Result<(), Full> {
            self.check()?;
            self.maps.state.node_addrs.insert(*key);
            Ok(())
        }

        fn delete_node_addr(&mut self, key: &EndpointKey) -> Result<(), Full> {
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
        // enforced yet.
        handle.set(seed(true));
        maps.failing = true;
        let failed = agent.next(&mut maps).await.unwrap().unwrap_err();
        assert_eq!(
            failed.to_string(),
            "syncing the policy maps: upsert of entry (endpoint 3, 198.18.0.40/32) in the \
             ingress policy map: map full"
        );
        assert_eq!(
            verdict(&maps, "198.18.0.20", "198.18.0.30", 80),
            Verdict::Allow
        );

        // Without any further change, the retry (1 s later) completes it.
        maps.failing = false;
        let started = tokio::time::Instant::now();
        let retried = agent.next(&mut maps).await.unwrap().unwrap();
        assert_eq!(started.elapsed(), RETRY_FIRST);
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

        // The same snapshot again: compiled, and the maps not even read.
        handle.set(seed(true));
        let reads = maps.reads.get();
        let again = agent.next(&mut maps).await.unwrap().unwrap();
        assert_eq!(maps.reads.get(), reads);
        assert!(again.report.touched.is_empty());
        assert_eq!((again.report.upserts, again.report.deletes), (0, 0));

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
        fn local(&mut self, _snapshot: &Snapshot) -> BTreeMap<String, u32> {
            self.interfaces.clone()
        }

        fn node_addresses(&mut self) -> Vec<std::net::IpAddr> {
            self.addresses.clone()
        }
    }

    #[tokio::test]
    async fn the_nodes_addresses_replace_the_snapshots_and_reach_the_maps() {
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
        let (snapshot, _) = agent.synced().unwrap();
        assert_eq!(snapshot.node_addresses, agent.endpoints().addresses);
        let key = EndpointKey {
            addr: tollgate_schemas::addr::to_bytes("198.18.10.17".parse().unwrap()),
        };
        assert_eq!(maps.maps.state.node_addrs, [key].into());

        // The node loses its address: the next pass removes it, and nothing else.
        agent.endpoints_mut().addresses.clear();
        handle.set(seed(true));
        let pass = agent.next(&mut maps).await.unwrap().unwrap();
        assert!(maps.maps.state.node_addrs.is_empty());
        assert_eq!((pass.report.upserts, pass.report.deletes), (0, 1));
    }
}
