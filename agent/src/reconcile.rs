//! One reconciliation: the cluster's changes → the probe's policy maps for this node's
//! endpoints.
//!
//! 1. [`Reconciler::apply`] hands the compiler (`tollgate_enforcer::compile::Compiler`, kept
//!    between passes) the source's [`Delta`]: it checks the objects that changed, once, and
//!    keeps the cluster in the form it compiles; no pass copies the cluster.
//! 2. [`LocalEndpoints::local`] names the node's endpoints: the pods whose host-side veth is
//!    on this node (and has the probe attached), each with that veth's ifindex;
//!    [`LocalEndpoints::node_addresses`] the node's own addresses, which the compilation
//!    gets with them.
//! 3. The compiler turns what it keeps into
//!    the desired state of those endpoints within the maps' capacity (read from the maps at
//!    the first pass and after a failed one), keeping the ids of the previous compilation, so
//!    an unchanged endpoint compiles to the very same entries. What does not fit is reported
//!    in the report's `errors`, its endpoints written not programmed (denied).
//! 4. A long-lived `tollgate_enforcer::sync::Syncer` writes the difference between that state
//!    and the one it last wrote, in an order that never opens an allow window; the endpoints
//!    whose entries changed are the report's `touched`. It reads the maps only at the first
//!    pass, after a failed one (a failure leaves them partly written; the next pass completes
//!    the change) and for [`Reconciler::check_drift`], which the agent's loop runs
//!    periodically.
//!
//! Revisions (what makes the probe decide tracked flows again) start at the wall clock's
//! nanoseconds, so that a restarted agent never hands out a revision that a flow tracked under
//! the previous agent still carries. The first pass of an agent that finds maps a previous one
//! wrote compiles twice: once from scratch, then with the ids recovered from those maps
//! (`tollgate_enforcer::compile::recover_ids`), so that no id the maps hold passes to something
//! else while entries still mean the old thing.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::IpAddr;
use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::api::core::v1::Pod;
use tollgate_enforcer::{
    compile::{Compiled, Compiler, Placement, recover_ids},
    desired::{Capacity, Ids, MapUsage},
    snapshot::{Delta, InputError, Updates},
    sync::{Diff, MapsError, PolicyMaps, SyncError, SyncStats, Syncer},
};
use tollgate_schemas::endpoint_flags;

use crate::Error;

/// The pods of this node that are endpoints, and the node's own addresses.
///
/// Called once per pass, before the compiler, with the pods that changed since the last
/// pass: the place to find the veths of new pods and attach the probe to them, so a pod is
/// attached by the time its entries are written (hence `&mut self`).
pub trait LocalEndpoints {
    /// Takes note of `pods`, the pods that changed since the last call (every pod, over the
    /// first calls), each as it is now (`None`: gone). Nothing, by default.
    fn track(&mut self, pods: &Updates<Pod>) {
        let _ = pods;
    }

    /// Endpoint pods by `namespace/name`, each with the ifindex of its host-side veth, as the
    /// pods tracked so far place them.
    fn local(&mut self) -> BTreeMap<String, u32>;

    /// The addresses of endpoint pods that are on another veth than their pod's (multi-NIC
    /// pods: one veth per address), with that veth's ifindex, as the last
    /// [`LocalEndpoints::local`] found them. None, by default.
    fn address_interfaces(&self) -> BTreeMap<IpAddr, u32> {
        BTreeMap::new()
    }

    /// The node's own addresses, whose traffic to a local pod passes ingress policy (reason
    /// `from-node`); empty when that allowance is off. Called once per pass, after
    /// [`LocalEndpoints::local`]. None, by default.
    fn node_addresses(&mut self) -> Vec<IpAddr> {
        Vec::new()
    }

    /// Resolves when the node itself changed so that the next pass may find other endpoints
    /// (a veth or a pod's host route came or went), without any cluster change. Must be
    /// cancel-safe: the loop drops it when the cluster changes first. Never, by default.
    fn changed(&mut self) -> impl Future<Output = ()> + Send {
        std::future::pending()
    }
}

/// A fixed set of endpoints, whatever the pods say (the lab's topology).
impl LocalEndpoints for BTreeMap<String, u32> {
    fn local(&mut self) -> BTreeMap<String, u32> {
        self.clone()
    }
}

/// What one reconciliation did.
#[derive(Debug, Clone)]
pub struct Report {
    /// Endpoints compiled (local pods with an address).
    pub endpoints: usize,
    /// Of those, the endpoints whose rules are programmed (the others did not fit the maps).
    pub programmed: usize,
    /// Endpoint pods (`namespace/name`) whose entries changed: the endpoint entry, or an
    /// entry of its policy sets, written, rewritten or removed. An entry left in the maps by
    /// an earlier agent, whose pod is unknown, is named `endpoint #<id>`.
    pub touched: BTreeSet<String>,
    /// What the sync wrote, per map.
    pub sync: SyncStats,
    /// Entries per map against the maps' capacity.
    pub usage: [MapUsage; 5],
    /// Invalid objects (left out of the compilation) and capacity problems.
    pub errors: Vec<InputError>,
    /// Time the compiler took.
    pub compile_time: Duration,
    /// Time the map sync took.
    pub sync_time: Duration,
}

/// Compiles and syncs, remembering what the maps were last synced to.
#[derive(Debug)]
pub struct Reconciler {
    /// The cluster as the compiler keeps it, changed by the sources' deltas.
    compiler: Compiler,
    /// The ids of the last compilation: the next one keeps them.
    ids: Ids,
    /// Writes the maps by difference from what it last wrote.
    syncer: Syncer,
    /// The maps' capacity; `None` before the first pass and after a failed one (read again).
    capacity: Option<Capacity>,
    /// Whether the ids of maps a previous agent left were recovered (at the first pass).
    recovered: bool,
    /// The compilation the maps were last synced to; `None` before the first sync and after
    /// a failed one.
    synced: Option<Compiled>,
}

impl Default for Reconciler {
    fn default() -> Self {
        Self::new()
    }
}

impl Reconciler {
    /// A reconciler that has not synced yet: its first reconciliation reads what the maps
    /// hold and writes only the difference. Revisions start at the wall clock's nanoseconds.
    pub fn new() -> Reconciler {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |since| since.as_nanos());
        Reconciler {
            compiler: Compiler::new(),
            ids: Ids {
                next_revision: u64::try_from(now).unwrap_or(u64::MAX),
                ..Ids::default()
            },
            syncer: Syncer::new(),
            capacity: None,
            recovered: false,
            synced: None,
        }
    }

    /// The compilation the maps were last synced to; `None` before the first sync and after
    /// a failed one.
    pub fn synced(&self) -> Option<&Compiled> {
        self.synced.as_ref()
    }

    /// Hands the compiler what changed in the cluster. Kept even when the reconciliation
    /// that follows fails: its retry compiles the same cluster.
    pub fn apply(&mut self, delta: &Delta) {
        self.compiler.apply_delta(delta);
    }

    /// Makes `maps` hold the compiled state of the cluster (as [`Reconciler::apply`] left
    /// it) for the endpoints `local` names, the addresses of `addresses` each on its own
    /// interface, with the node's own addresses `node_addresses`.
    #[tracing::instrument(
        skip_all,
        fields(
            local = local.len(),
            endpoints = tracing::field::Empty,
            programmed = tracing::field::Empty,
            touched = tracing::field::Empty,
            upserts = tracing::field::Empty,
            deletes = tracing::field::Empty,
            compile_ms = tracing::field::Empty,
            sync_ms = tracing::field::Empty,
        )
    )]
    pub fn reconcile<M: PolicyMaps>(
        &mut self,
        node_addresses: Vec<IpAddr>,
        local: &BTreeMap<String, u32>,
        addresses: &BTreeMap<IpAddr, u32>,
        maps: &mut M,
    ) -> Result<Report, Error<M::Error>> {
        let previous = self.synced.take();
        let capacity = match self.capacity {
            Some(capacity) => capacity,
            None => maps.capacity().map_err(read_error)?,
        };
        self.capacity = Some(capacity);
        let started = Instant::now();
        let placement = Placement::InterfacesByAddress {
            pods: local,
            addresses,
        };
        self.compiler.set_node_addresses(node_addresses);
        let mut compiled = self.compiler.compile(&placement, &self.ids, &capacity);
        if !self.recovered {
            // The first pass of this agent: maps left by a previous one keep their ids for
            // what is still the same, and lend none of them to something else.
            self.recovered = true;
            let held = maps.read().map_err(read_error)?;
            if !(held.endpoints.is_empty() && held.peers.is_empty()) {
                let prior = recover_ids(&compiled, &held);
                compiled = self.compiler.compile(&placement, &prior, &capacity);
            }
        }
        let compile_time = started.elapsed();
        self.ids = compiled.ids.clone();
        report_new_errors(&compiled, previous.as_ref());

        let started = Instant::now();
        let synced = self
            .syncer
            .sync(maps, &compiled.desired)
            .inspect_err(|_| self.capacity = None)?;
        let before_pods = previous.map(|p| p.endpoint_pods).unwrap_or_default();
        let report = Report {
            endpoints: compiled.endpoint_pods.len(),
            programmed: programmed(&compiled),
            touched: touched(&synced.changes, &before_pods, &compiled),
            sync: synced.stats,
            usage: compiled.desired.usage(&capacity),
            errors: compiled.errors.clone(),
            compile_time,
            sync_time: started.elapsed(),
        };
        let span = tracing::Span::current();
        span.record("endpoints", report.endpoints);
        span.record("programmed", report.programmed);
        span.record("touched", report.touched.len());
        span.record("upserts", report.sync.upserts);
        span.record("deletes", report.sync.deletes);
        span.record("compile_ms", report.compile_time.as_secs_f64() * 1e3);
        span.record("sync_ms", report.sync_time.as_secs_f64() * 1e3);
        self.synced = Some(compiled);
        Ok(report)
    }

    /// Reads the maps and repairs what differs from what was last written (see
    /// `Syncer::check_drift`): the repairs, `None` before the first sync.
    pub fn check_drift<M: PolicyMaps>(
        &mut self,
        maps: &mut M,
    ) -> Result<Option<SyncStats>, Error<M::Error>> {
        self.syncer.check_drift(maps).map_err(|error| {
            self.synced = None;
            self.capacity = None;
            error.into()
        })
    }
}

/// The maps could not be read (their capacity, or what they hold).
fn read_error<E: MapsError>(source: E) -> Error<E> {
    SyncError::Read { source }.into()
}

/// Logs the compiler's errors that the previous compilation did not have: an invalid object
/// or an endpoint that does not fit is reported once, not at every reconciliation.
fn report_new_errors(compiled: &Compiled, previous: Option<&Compiled>) {
    for error in &compiled.errors {
        if previous.is_some_and(|p| p.errors.contains(error)) {
            continue;
        }
        tracing::warn!(
            object = %error.object,
            field = %error.field,
            problem = %error.message,
            "left out of the compilation"
        );
    }
}

/// The endpoint pods whose rules are programmed.
fn programmed(compiled: &Compiled) -> usize {
    let ids: BTreeSet<u32> = compiled
        .desired
        .endpoints
        .values()
        .filter(|state| state.flags & endpoint_flags::PROGRAMMED != 0)
        .map(|state| state.id)
        .collect();
    ids.len()
}

/// The endpoints whose entries `changes` writes or removes, by pod: the endpoint entry
/// itself, or an entry of one of its policy sets; both pods when an id changed hands.
fn touched(
    changes: &Diff,
    before_pods: &BTreeMap<u32, String>,
    after: &Compiled,
) -> BTreeSet<String> {
    let mut ids: BTreeSet<u32> = changes
        .endpoints
        .upserts
        .iter()
        .chain(&changes.endpoints.deletes)
        .map(|(_, state)| state.id)
        .collect();
    let sets: BTreeSet<u32> = changes
        .policy
        .upserts
        .iter()
        .chain(&changes.policy.deletes)
        .map(|(key, _)| key.set)
        .collect();
    if !sets.is_empty() {
        ids.extend(
            after
                .desired
                .endpoints
                .values()
                .filter(|e| sets.contains(&e.ingress_set) || sets.contains(&e.egress_set))
                .map(|e| e.id),
        );
    }
    let mut pods = BTreeSet::new();
    for id in ids {
        let names = [after.endpoint_pods.get(&id), before_pods.get(&id)];
        if names.iter().all(Option::is_none) {
            pods.insert(format!("endpoint #{id}"));
        }
        pods.extend(names.into_iter().flatten().cloned());
    }
    pods
}
