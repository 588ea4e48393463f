//! `tollgate bench agent`: what a node agent holds, how high its memory goes and how long its
//! first pass takes, for a generated cluster (`tollgate_enforcer::bench::scale`'s generator).
//!
//! Data flows the way it does on a node, through the agent's own code:
//! 1. [`write_listing`] writes the generated cluster's objects as JSON, one per line and a
//!    file per kind, as the API server's lists send them (in one process, which then ends:
//!    the generated objects are never in the measured one).
//! 2. [`agent`] runs a real [`Agent`] on a [`Listing`] source: each kind's list is read a page
//!    at a time, each object decoded, slimmed and handed on by the kind's watch
//!    [`Follower`] (fingerprints, pending changes, the backlog notice, the change log), and
//!    the agent takes the backlog as the lists arrive, as it does from the watches. Its first
//!    pass compiles the node's endpoints and syncs them into [`KernelMaps`], which keep
//!    nothing (the kernel holds the entries, not the agent). The pass's pods then go to the
//!    collector's identities.
//! 3. What is left is measured: the resident set beyond what the process held before the
//!    lists were read, and the peak resident set of the process since then (`tollgate bench
//!    agent` runs it with an allocator that gives freed memory back at once).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Lines, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use k8s_openapi::api::{
    core::v1::{Namespace, Pod, Service},
    discovery::v1::EndpointSlice,
    networking::v1::NetworkPolicy,
};
use kube::runtime::watcher;
use serde::{Serialize, de::DeserializeOwned};
use tokio::sync::Notify;
use tollgate_collector::identity::Identities;

use crate::naming::naming;
use tollgate_enforcer::{
    bench::scale::{self, Shape, current_rss_mib, generate},
    compile::{ClusterObject, ObjectKind},
    desired::{Capacity, DesiredState, PeerEntryKey},
    snapshot::{Delta, Updates},
    sync::{MapFull, PolicyMaps},
};
use tollgate_schemas::{
    EndpointKey, EndpointState, PeerIdentity, PolicyEntry, PolicyKey, PolicyValue,
};

use crate::run::Agent;
use crate::slim::{slim_endpoint_slice, slim_namespace, slim_pod, slim_policy, slim_service};
use crate::source::ClusterSource;
use crate::watch::{ChangeLog, Changes, Debounce, Follower};

/// Objects per page of a list (kube's watcher asks for 500).
const PAGE: usize = 500;

/// The file of the node's endpoints in a listing (`namespace/name` → ifindex, JSON).
const LOCAL: &str = "local.json";

/// The kinds of a listing, in the order they are read, with their files.
const FILES: [(ObjectKind, &str); 5] = [
    (ObjectKind::Namespace, "namespaces.jsonl"),
    (ObjectKind::Pod, "pods.jsonl"),
    (ObjectKind::NetworkPolicy, "policies.jsonl"),
    (ObjectKind::Service, "services.jsonl"),
    (ObjectKind::EndpointSlice, "endpointslices.jsonl"),
];

/// What one case measured.
#[derive(Debug, Clone, Serialize)]
pub struct AgentCase {
    /// The cluster.
    pub shape: Shape,
    /// From the start to every list read and handed on (decoded, slimmed, fingerprinted,
    /// taken by the agent as they arrived), ms.
    pub list_ms: f64,
    /// The first pass's compile, ms.
    pub compile_ms: f64,
    /// The first pass's sync, ms.
    pub sync_ms: f64,
    /// Peer identities after it.
    pub identities: usize,
    /// What the agent holds after the pass (the watches' fingerprints, the compiler, the
    /// compilation, what was written, the collector's identities), MiB.
    pub held_mib: f64,
    /// Peak resident set of the process while it listed and passed, MiB.
    pub peak_mib: f64,
}

/// Writes the cluster of `shape` into `dir` as [`agent`] reads it.
pub fn write_listing(shape: Shape, dir: &Path) -> Result<(), String> {
    shape.check()?;
    let cluster = generate(shape);
    let snapshot = cluster.snapshot;
    let local = serde_json::to_vec(&cluster.local).map_err(|e| e.to_string())?;
    std::fs::write(dir.join(LOCAL), local).map_err(|e| format!("{}: {e}", LOCAL))?;
    write_list(dir, &snapshot.namespaces)?;
    write_list(dir, &snapshot.pods)?;
    write_list(dir, &snapshot.policies)?;
    write_list(dir, &snapshot.services)?;
    write_list(dir, &snapshot.endpoint_slices)
}

/// Writes the list of `K`, one object per line.
fn write_list<K: ClusterObject + Serialize>(dir: &Path, objects: &[K]) -> Result<(), String> {
    let path = list_path(dir, K::OBJECT_KIND);
    let failed = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    let mut out = BufWriter::new(File::create(&path).map_err(|e| failed(&e))?);
    for object in objects {
        serde_json::to_writer(&mut out, object).map_err(|e| failed(&e))?;
        out.write_all(b"\n").map_err(|e| failed(&e))?;
    }
    out.flush().map_err(|e| failed(&e))
}

fn list_path(dir: &Path, kind: ObjectKind) -> PathBuf {
    let (_, file) = FILES
        .iter()
        .find(|(listed, _)| *listed == kind)
        .expect("every kind has a file");
    dir.join(file)
}

/// Measures the listing in `dir` ([`write_listing`] of `shape`) in this process.
pub fn agent(shape: Shape, dir: &Path) -> Result<AgentCase, String> {
    let local = std::fs::read(dir.join(LOCAL)).map_err(|e| format!("{LOCAL}: {e}"))?;
    let local: BTreeMap<String, u32> =
        serde_json::from_slice(&local).map_err(|e| format!("{LOCAL}: {e}"))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .map_err(|e| e.to_string())?;
    scale::reset_peak_rss();
    let baseline = current_rss_mib();

    let start = Instant::now();
    let mut agent = Agent::new(Listing::open(dir)?, local);
    let mut maps = KernelMaps;
    let pass = runtime.block_on(agent.next(&mut maps));
    let pass = match pass {
        Some(Ok(pass)) => pass,
        Some(Err(error)) => return Err(format!("the first pass failed: {error}")),
        None => {
            let error = agent.source().error.as_deref().unwrap_or("no error");
            return Err(format!(
                "the listing ended before every list was read: {error}"
            ));
        }
    };
    let listed = pass
        .changes
        .as_ref()
        .map_or(start, |changes| changes.last_arrival.into_std());
    let compiled = agent.synced().ok_or("the first pass did not sync")?;
    let mut identities = Identities::default();
    identities.observe(naming(pass.pods, agent.node_addresses(), compiled), 0);
    let identities_count = compiled.ids.identities.len();
    let report = pass.report;
    let case = AgentCase {
        shape,
        list_ms: (listed - start).as_secs_f64() * 1e3,
        compile_ms: report.compile_time.as_secs_f64() * 1e3,
        sync_ms: report.sync_time.as_secs_f64() * 1e3,
        identities: identities_count,
        held_mib: current_rss_mib() - baseline,
        peak_mib: scale::peak_rss_mib(),
    };
    drop((agent, identities));
    Ok(case)
}

/// The cluster's first lists, read from a listing's files a page at a time, each object
/// handed on by its kind's watch follower. Between two pages it yields, so that the agent
/// can take the backlog.
struct Listing {
    dir: PathBuf,
    /// Kinds whose list is complete.
    done: usize,
    /// The list being read.
    reading: Option<Lines<BufReader<File>>>,
    /// Why reading stopped early.
    error: Option<String>,
    namespaces: Follower<Namespace>,
    pods: Follower<Pod>,
    policies: Follower<NetworkPolicy>,
    services: Follower<Service>,
    endpoint_slices: Follower<EndpointSlice>,
    changes: Arc<ChangeLog>,
    backlog: Arc<Notify>,
}

impl Listing {
    fn open(dir: &Path) -> Result<Listing, String> {
        for (kind, _) in FILES {
            let path = list_path(dir, kind);
            if !path.is_file() {
                return Err(format!("{}: no such list", path.display()));
            }
        }
        let changes = Arc::new(ChangeLog::default());
        let backlog = Arc::new(Notify::new());
        Ok(Listing {
            dir: dir.to_owned(),
            done: 0,
            reading: None,
            error: None,
            namespaces: Follower::new(changes.clone(), backlog.clone()),
            pods: Follower::new(changes.clone(), backlog.clone()),
            policies: Follower::new(changes.clone(), backlog.clone()),
            services: Follower::new(changes.clone(), backlog.clone()),
            endpoint_slices: Follower::new(changes.clone(), backlog.clone()),
            changes,
            backlog,
        })
    }

    /// Reads the next page of the list under way (starting the next list when none is):
    /// `false` once every list is complete.
    fn page(&mut self) -> Result<bool, String> {
        let Some(&(kind, _)) = FILES.get(self.done) else {
            return Ok(false);
        };
        let lines = match &mut self.reading {
            Some(lines) => lines,
            None => {
                let path = list_path(&self.dir, kind);
                let file = File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
                self.event(kind, None)?;
                self.reading.insert(BufReader::new(file).lines())
            }
        };
        let mut page = Vec::with_capacity(PAGE);
        for line in lines.by_ref().take(PAGE) {
            page.push(line.map_err(|e| e.to_string())?);
        }
        let complete = page.len() < PAGE;
        for line in page {
            self.event(kind, Some(&line))?;
        }
        if complete {
            self.reading = None;
            self.done += 1;
            self.finish(kind);
        }
        Ok(true)
    }

    /// The list of `kind` starts (`None`), or holds the object `line`.
    fn event(&mut self, kind: ObjectKind, line: Option<&str>) -> Result<(), String> {
        match kind {
            ObjectKind::Namespace => listed(&mut self.namespaces, line, slim_namespace),
            ObjectKind::Pod => listed(&mut self.pods, line, slim_pod),
            ObjectKind::NetworkPolicy => listed(&mut self.policies, line, slim_policy),
            ObjectKind::Service => listed(&mut self.services, line, slim_service),
            ObjectKind::EndpointSlice => {
                listed(&mut self.endpoint_slices, line, slim_endpoint_slice)
            }
            ObjectKind::ClusterNetworkPolicy
            | ObjectKind::AwsClusterNetworkPolicy
            | ObjectKind::Node => Err(format!("{} is not in a bench listing", kind.name())),
        }
    }

    /// The list of `kind` is complete.
    fn finish(&mut self, kind: ObjectKind) {
        match kind {
            ObjectKind::Namespace => self.namespaces.follow(watcher::Event::InitDone),
            ObjectKind::Pod => self.pods.follow(watcher::Event::InitDone),
            ObjectKind::NetworkPolicy => self.policies.follow(watcher::Event::InitDone),
            ObjectKind::Service => self.services.follow(watcher::Event::InitDone),
            ObjectKind::EndpointSlice => self.endpoint_slices.follow(watcher::Event::InitDone),
            // Never listed (see `event`).
            ObjectKind::ClusterNetworkPolicy
            | ObjectKind::AwsClusterNetworkPolicy
            | ObjectKind::Node => {}
        }
    }
}

/// Hands `follower` the start of its list (`None`), or the object of `line`, decoded and
/// slimmed with `slim` as the watch's stream does.
fn listed<K>(follower: &mut Follower<K>, line: Option<&str>, slim: fn(&mut K)) -> Result<(), String>
where
    K: ClusterObject + DeserializeOwned + kube::Resource<DynamicType = ()> + Clone + Serialize,
{
    let Some(line) = line else {
        follower.follow(watcher::Event::Init);
        return Ok(());
    };
    let mut object: K = serde_json::from_str(line).map_err(|e| e.to_string())?;
    slim(&mut object);
    follower.follow(watcher::Event::InitApply(object));
    Ok(())
}

impl ClusterSource for Listing {
    fn take_delta(&mut self) -> Delta {
        Delta {
            namespaces: self.namespaces.pending.take(),
            pods: self.pods.pending.take(),
            policies: self.policies.pending.take(),
            services: self.services.pending.take(),
            endpoint_slices: self.endpoint_slices.pending.take(),
            cluster_policies: Updates::new(),
            aws_cluster_policies: Updates::new(),
            nodes: Updates::new(),
        }
    }

    async fn changed(&mut self) -> Option<Changes> {
        loop {
            match self.page() {
                Ok(true) => tokio::task::yield_now().await,
                Ok(false) => break,
                Err(error) => {
                    self.error = Some(error);
                    return None;
                }
            }
        }
        self.changes.next(Debounce::NONE).await
    }

    fn backlog(&self) -> Option<Arc<Notify>> {
        Some(self.backlog.clone())
    }
}

/// Policy maps that keep nothing: the kernel holds the entries, not the agent. Every write
/// succeeds.
struct KernelMaps;

impl PolicyMaps for KernelMaps {
    type Error = MapFull;

    fn capacity(&self) -> Result<Capacity, MapFull> {
        Ok(Capacity::default())
    }

    fn read(&self) -> Result<DesiredState, MapFull> {
        Ok(DesiredState::default())
    }

    fn upsert_endpoint(&mut self, _: &EndpointKey, _: &EndpointState) -> Result<(), MapFull> {
        Ok(())
    }

    fn delete_endpoint(&mut self, _: &EndpointKey) -> Result<(), MapFull> {
        Ok(())
    }

    fn upsert_peer(&mut self, _: &PeerEntryKey, _: &PeerIdentity) -> Result<(), MapFull> {
        Ok(())
    }

    fn delete_peer(&mut self, _: &PeerEntryKey) -> Result<(), MapFull> {
        Ok(())
    }

    fn upsert_policy(&mut self, _: &PolicyKey, _: &PolicyEntry) -> Result<(), MapFull> {
        Ok(())
    }

    fn delete_policy(&mut self, _: &PolicyKey) -> Result<(), MapFull> {
        Ok(())
    }

    fn write_ruleset(&mut self, _: u32, _: &PolicyValue) -> Result<(), MapFull> {
        Ok(())
    }

    fn clear_ruleset(&mut self, _: u32) -> Result<(), MapFull> {
        Ok(())
    }

    fn insert_node_addr(&mut self, _: &EndpointKey) -> Result<(), MapFull> {
        Ok(())
    }

    fn delete_node_addr(&mut self, _: &EndpointKey) -> Result<(), MapFull> {
        Ok(())
    }
}

/// The case as a table: a header line and one row.
pub fn render(case: &AgentCase) -> String {
    format!(
        "{:>7} {:>6} {:>5} {:>6} {:>7} {:>8} {:>6} {:>6} {:>6}\n\
         {:>7} {:>6} {:>5} {:>6} {:>7.0} {:>8.0} {:>6.0} {:>6.0} {:>6.0}\n\
         LIST: every first list read, decoded, slimmed and taken by the agent as it arrived, \
         ms; COMPILE, SYNC: the first pass's, ms; HELD: what the agent holds after it \
         (fingerprints, compiler, compilation, what was written, the collector's identities), \
         MiB; PEAK: peak RSS of the process while it listed and passed, MiB.\n",
        "PODS",
        "POLS",
        "NODE",
        "IDENT",
        "LIST",
        "COMPILE",
        "SYNC",
        "HELD",
        "PEAK",
        case.shape.pods,
        case.shape.policies,
        case.shape.node_pods,
        case.identities,
        case.list_ms,
        case.compile_ms,
        case.sync_ms,
        case.held_mib,
        case.peak_mib,
    )
}
