//! One reconciliation: a cluster snapshot → the probe's policy maps for this node's endpoints.
//!
//! 1. [`LocalEndpoints::local`] names the node's endpoints: the pods whose host-side veth is
//!    on this node (and has the probe attached), each with that veth's ifindex;
//!    [`LocalEndpoints::node_addresses`] the node's own addresses, which the caller puts into
//!    the snapshot (`Snapshot::node_addresses`) before it is compiled.
//! 2. The pure compiler (`tollgate_enforcer::compile`) turns the whole snapshot into the
//!    desired state of those endpoints, keeping the endpoint and rule ids of the previous
//!    compilation, so an unchanged endpoint compiles to the very same entries.
//! 3. The desired state is compared with the one the maps were last synced to: equal, and
//!    the maps are not touched at all (most pod updates elsewhere in the cluster change
//!    nothing here); otherwise the endpoints whose entries differ are the report's `touched`.
//! 4. `tollgate_enforcer::sync::sync` reads the maps, diffs them against the desired state
//!    and writes only the entries that differ, in an order that never opens an allow window.
//!
//! The compiler is whole-snapshot: every reconciliation recompiles the node's endpoints
//! against every pod and policy of the cluster, and only the writes are limited to what
//! changed. A failed sync leaves the maps partly written; the next reconciliation reads them
//! and completes the change.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use tollgate_enforcer::{
    compile::{Compiled, Placement, compile},
    desired::{DesiredState, Ids},
    snapshot::{InputError, Snapshot},
    sync::{PolicyMaps, diff, sync},
};
use tollgate_schemas::Direction;

use crate::Error;

/// The pods of this node that are endpoints, and the node's own addresses.
///
/// Called once per pass, before the compiler, with the snapshot the pass compiles: the
/// place to find the veths of new pods and attach the probe to them, so a pod is attached
/// by the time its entries are written (hence `&mut self`).
pub trait LocalEndpoints {
    /// Endpoint pods by `namespace/name`, each with the ifindex of its host-side veth.
    fn local(&mut self, snapshot: &Snapshot) -> BTreeMap<String, u32>;

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

/// A fixed set of endpoints, whatever the snapshot says (the lab's topology).
impl LocalEndpoints for BTreeMap<String, u32> {
    fn local(&mut self, _snapshot: &Snapshot) -> BTreeMap<String, u32> {
        self.clone()
    }
}

/// What one reconciliation did.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Endpoints compiled (local pods with an address).
    pub endpoints: usize,
    /// Endpoint pods (`namespace/name`) whose entries changed: written, rewritten or removed.
    /// An entry left in the maps by an earlier agent, whose pod is unknown, is named
    /// `endpoint #<id>`.
    pub touched: BTreeSet<String>,
    /// Entries written (all three maps).
    pub upserts: usize,
    /// Entries removed (all three maps).
    pub deletes: usize,
    /// Invalid objects (left out of the compilation) and capacity problems.
    pub errors: Vec<InputError>,
    /// Time the compiler took.
    pub compile_time: Duration,
    /// Time the map sync took (zero when nothing changed).
    pub sync_time: Duration,
}

/// Compiles and syncs, remembering what the maps were last synced to.
#[derive(Debug, Default)]
pub struct Reconciler {
    /// The ids of the last compilation: the next one keeps them.
    ids: Ids,
    /// The compilation the maps were last synced to; `None` before the first sync and after
    /// a failed one (the maps' contents are then read back).
    synced: Option<Compiled>,
}

impl Reconciler {
    /// A reconciler that has not synced yet: its first reconciliation reads what the maps
    /// hold and writes only the difference.
    pub fn new() -> Reconciler {
        Reconciler::default()
    }

    /// The compilation the maps were last synced to; `None` before the first sync and after
    /// a failed one.
    pub fn synced(&self) -> Option<&Compiled> {
        self.synced.as_ref()
    }

    /// Makes `maps` hold the compiled state of `snapshot` for the endpoints `local` names.
    pub fn reconcile<M: PolicyMaps>(
        &mut self,
        snapshot: &Snapshot,
        local: &BTreeMap<String, u32>,
        maps: &mut M,
    ) -> Result<Report, Error> {
        let started = Instant::now();
        let compiled = compile(snapshot, &Placement::Interfaces(local), &self.ids);
        let compile_time = started.elapsed();
        self.ids = compiled.ids.clone();

        let synced = self.synced.take();
        report_new_errors(&compiled, synced.as_ref());
        let (before, before_pods) = match synced {
            Some(synced) if synced.desired == compiled.desired => {
                let report = Report {
                    endpoints: compiled.endpoint_pods.len(),
                    errors: compiled.errors.clone(),
                    compile_time,
                    ..Report::default()
                };
                self.synced = Some(compiled);
                return Ok(report);
            }
            Some(synced) => (synced.desired, synced.endpoint_pods),
            None => (maps.read().map_err(sync_error)?, BTreeMap::new()),
        };
        let touched = touched(&before, &before_pods, &compiled);

        let started = Instant::now();
        let stats = sync(maps, &compiled.desired).map_err(sync_error)?;
        let report = Report {
            endpoints: compiled.endpoint_pods.len(),
            touched,
            upserts: stats.upserts,
            deletes: stats.deletes,
            errors: compiled.errors.clone(),
            compile_time,
            sync_time: started.elapsed(),
        };
        self.synced = Some(compiled);
        Ok(report)
    }
}

fn sync_error<E: std::error::Error + Send + Sync + 'static>(error: E) -> Error {
    Error::Sync {
        source: Box::new(error),
    }
}

/// Logs the compiler's errors that the previous compilation did not have: an invalid object
/// is reported once, not at every reconciliation.
fn report_new_errors(compiled: &Compiled, previous: Option<&Compiled>) {
    for error in &compiled.errors {
        if previous.is_some_and(|p| p.errors.contains(error)) {
            continue;
        }
        tracing::warn!(
            object = %error.object,
            field = %error.field,
            problem = %error.message,
            "invalid input left out"
        );
    }
}

/// The endpoints whose entries differ between `before` and `after`, by pod; both pods when
/// an id changed hands.
fn touched(
    before: &DesiredState,
    before_pods: &BTreeMap<u32, String>,
    after: &Compiled,
) -> BTreeSet<String> {
    let changes = diff(before, &after.desired);
    let mut ids: BTreeSet<u32> = changes
        .endpoints
        .upserts
        .iter()
        .map(|(_, state)| state.id)
        .collect();
    ids.extend(
        changes
            .endpoints
            .deletes
            .iter()
            .filter_map(|key| before.endpoints.get(key))
            .map(|state| state.id),
    );
    for direction in [Direction::Ingress, Direction::Egress] {
        let changes = changes.policy(direction);
        ids.extend(changes.upserts.iter().map(|(key, _)| key.key.endpoint));
        ids.extend(changes.deletes.iter().map(|key| key.key.endpoint));
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
