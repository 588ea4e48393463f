//! `tollgate bench agent`: what a node agent holds, and how long its first pass takes, for a
//! generated cluster (`tollgate_enforcer::bench::scale`'s generator).
//!
//! The cluster's objects go the way a watch hands them on: each slimmed
//! ([`crate::slim`]), its [`Fingerprint`] kept by key (all a watch keeps of an object), the
//! object itself in the delta. The delta goes to a compiler, which compiles the node's
//! endpoints once, and its pods to the collector's identities. Then the delta and the
//! generated objects are dropped, as the agent drops them after a pass, and what is left is
//! measured: the resident set beyond what the process held before the cluster was generated
//! (`tollgate bench agent` runs it with an allocator that gives freed memory back at once).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use kube::Resource;
use serde::Serialize;
use tollgate_collector::identity::Identities;
use tollgate_enforcer::{
    bench::scale::{Shape, current_rss_mib, generate, peak_rss_mib},
    compile::{ClusterObject, Compiler, ObjectKind, Placement},
    desired::{Capacity, Ids},
    snapshot::{Delta, Updates},
};

use crate::slim::{
    Fingerprint, fingerprint, slim_endpoint_slice, slim_namespace, slim_pod, slim_policy,
    slim_service,
};

/// What one case measured.
#[derive(Debug, Clone, Serialize)]
pub struct AgentCase {
    /// The cluster.
    pub shape: Shape,
    /// Slimming and fingerprinting every object, as the watches do on their first lists, ms.
    pub watch_ms: f64,
    /// The first pass: the delta applied to a new compiler and one compile, ms.
    pub first_pass_ms: f64,
    /// Peer identities after it.
    pub identities: usize,
    /// What the agent holds after the pass (the watches' fingerprints, the compiler, the
    /// compilation, the identities), MiB.
    pub held_mib: f64,
    /// Peak resident set of the case, generated objects included, MiB.
    pub peak_mib: f64,
}

/// Measures `shape` in this process.
pub fn agent(shape: Shape) -> Result<AgentCase, String> {
    shape.check()?;
    let baseline = current_rss_mib();
    let cluster = generate(shape);
    let local = cluster.local;
    let snapshot = cluster.snapshot;

    let start = Instant::now();
    let mut fingerprints = HashMap::new();
    let delta = Delta {
        namespaces: handed_on(snapshot.namespaces, slim_namespace, &mut fingerprints),
        pods: handed_on(snapshot.pods, slim_pod, &mut fingerprints),
        policies: handed_on(snapshot.policies, slim_policy, &mut fingerprints),
        services: handed_on(snapshot.services, slim_service, &mut fingerprints),
        endpoint_slices: handed_on(
            snapshot.endpoint_slices,
            slim_endpoint_slice,
            &mut fingerprints,
        ),
    };
    let watch_ms = start.elapsed().as_secs_f64() * 1e3;

    let start = Instant::now();
    let mut compiler = Compiler::new();
    compiler.apply_delta(&delta);
    let compiled = compiler.compile(
        &Placement::Interfaces(&local),
        &Ids::default(),
        &Capacity::default(),
    );
    let first_pass_ms = start.elapsed().as_secs_f64() * 1e3;
    let mut identities = Identities::default();
    identities.observe(&delta.pods, &[], &compiled, 0);
    drop(delta);
    let held_mib = current_rss_mib() - baseline;
    let case = AgentCase {
        shape,
        watch_ms,
        first_pass_ms,
        identities: compiled.ids.identities.len(),
        held_mib,
        peak_mib: peak_rss_mib(),
    };
    drop((fingerprints, compiler, compiled, identities));
    Ok(case)
}

/// `objects` as a watch hands them on: slimmed with `slim`, each with its fingerprint kept
/// in `fingerprints` by kind and key.
fn handed_on<K: ClusterObject + Resource + Clone + Serialize>(
    objects: Vec<K>,
    slim: fn(&mut K),
    fingerprints: &mut HashMap<(ObjectKind, (String, String)), Fingerprint>,
) -> Updates<K> {
    let mut updates = Updates::new();
    for mut item in objects {
        slim(&mut item);
        let Some(key) = item.object().key() else {
            continue;
        };
        fingerprints.insert((K::OBJECT_KIND, key.clone()), fingerprint(&item));
        updates.insert(key, Some(Arc::new(item)));
    }
    updates
}

/// The case as a table: a header line and one row.
pub fn render(case: &AgentCase) -> String {
    format!(
        "{:>7} {:>6} {:>5} {:>6} {:>9} {:>10} {:>9} {:>8}\n\
         {:>7} {:>6} {:>5} {:>6} {:>9.0} {:>10.0} {:>9.0} {:>8.0}\n\
         WATCH: slimming and fingerprinting every object, ms; FIRST: the delta into a new \
         compiler and the first compile, ms; HELD: what the agent holds after its first pass \
         (fingerprints, compiler, compilation, identities), MiB; PEAK: peak RSS with the \
         generated objects, MiB.\n",
        "PODS",
        "POLS",
        "NODE",
        "IDENT",
        "WATCH",
        "FIRST",
        "HELD",
        "PEAK",
        case.shape.pods,
        case.shape.policies,
        case.shape.node_pods,
        case.identities,
        case.watch_ms,
        case.first_pass_ms,
        case.held_mib,
        case.peak_mib,
    )
}
