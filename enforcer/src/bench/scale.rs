//! `tollgate bench scale`: what compiling a large cluster costs, in time, map entries and
//! memory. A benchmark, not a test: it prints numbers and checks nothing but its own input.
//!
//! Each case is one generated cluster ([`generate`], deterministic: the same [`Shape`] always
//! gives the same objects) measured in a process of its own, so that its peak RSS is its own:
//! [`run_children`] re-executes the current binary once per case ([`measure`] in the child)
//! and reads back one JSON line.
//!
//! The cluster, as an EKS cluster of that size looks:
//! - nodes of `node_pods` pods each (110, EKS's usual limit, or 250 with prefix delegation);
//!   the node under test is full: a monitoring DaemonSet pod and `node_pods - 1` pods sampled
//!   evenly across the cluster's Deployments; the others fill the remaining nodes;
//! - `kube-system` with CoreDNS (two replicas) behind the `kube-dns` Service;
//! - `monitoring` with the `node-agent` DaemonSet, one pod per node;
//! - application namespaces of 50 to 100 pods, each of Deployments of 1 to 20 replicas whose
//!   pods carry `app`, `app.kubernetes.io/name` and `pod-template-hash` labels and name their
//!   container ports `http` (80, 3000, 8000 or 8080 by app), `grpc` (9090, some apps) and
//!   `metrics` (9100); every other Deployment has a Service (ClusterIP, port 80 → `http`)
//!   with its EndpointSlice.
//!
//! Policies come in per-namespace bundles, in this order: default-deny (both directions),
//! egress to kube-dns, allow the same namespace (both directions), ingress from the monitoring
//! DaemonSet on `metrics`, ingress from any namespace on `http` to one app, egress to
//! `0.0.0.0/0` except the private ranges on 443, then app-to-app ingress on `http` or `grpc`,
//! as many as the count asks. With fewer than seven policies per namespace, whole bundles go
//! to namespaces spread evenly over the cluster; with more, every namespace gets its share.
//!
//! Per case: the first compile (prior ids empty), then four changes each compiled once more
//! with the first pass's ids as prior (each applied to the base cluster and undone after):
//! a local pod relabelled (to another app of its namespace), a remote pod added (a replica
//! more of a Deployment with a Service, its EndpointSlice updated), a policy added in a
//! namespace with no local pod, and a node added (`node_pods` pods: a DaemonSet pod and
//! replicas of existing Deployments; `Snapshot::node_addresses` holds only this node's
//! addresses, so a node is known by its pods).

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    process::{Command, Stdio},
    time::Instant,
};

use k8s_openapi::{
    api::{
        core::v1::{
            Container, ContainerPort, Namespace, ObjectReference, Pod, PodCondition, PodIP,
            PodSpec, PodStatus, Service, ServicePort, ServiceSpec,
        },
        discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice},
        networking::v1::{
            IPBlock, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule,
            NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec,
        },
    },
    apimachinery::pkg::{
        apis::meta::v1::{LabelSelector, ObjectMeta},
        util::intstr::IntOrString,
    },
};

use super::median;
use crate::{
    compile::{
        Compiler, NAMESPACE_NAME_LABEL, Object, ObjectKind, Placement, services::SERVICE_NAME_LABEL,
    },
    desired::{Capacity, DesiredState, Ids},
    snapshot::Snapshot,
};

/// One case: the cluster's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Shape {
    /// Pods in the cluster (system, DaemonSet and application pods).
    pub pods: usize,
    /// NetworkPolicies in the cluster.
    pub policies: usize,
    /// Pods per node; the node under test holds exactly this many.
    pub node_pods: usize,
}

impl Shape {
    /// Whether the generator can build this cluster.
    pub fn check(&self) -> Result<(), String> {
        if self.node_pods < 10 {
            return Err(format!("--node-pods {}: at least 10", self.node_pods));
        }
        if self.pods < 100 || self.pods < self.node_pods {
            return Err(format!(
                "{} pods: at least 100 and at least --node-pods ({})",
                self.pods, self.node_pods
            ));
        }
        Ok(())
    }
}

/// The policy count a size gets when `--policies` is not given: 100 up to 1k pods, 1,000 up
/// to 10k, 5,000 beyond (the 100k pods / 5k policies target).
pub fn default_policies(pods: usize) -> usize {
    if pods <= 1_000 {
        100
    } else if pods <= 10_000 {
        1_000
    } else {
        5_000
    }
}

/// A count as the command line gives it: `1000`, `1k`, `100k`, `1m`.
pub fn parse_count(text: &str) -> Result<usize, String> {
    let lower = text.trim().to_ascii_lowercase();
    let (digits, factor) = match lower.strip_suffix('k') {
        Some(d) => (d, 1_000),
        None => match lower.strip_suffix('m') {
            Some(d) => (d, 1_000_000),
            None => (lower.as_str(), 1),
        },
    };
    digits
        .parse::<usize>()
        .ok()
        .and_then(|n| n.checked_mul(factor))
        .ok_or_else(|| format!("{text:?}: a count such as 1000, 10k or 1m"))
}

/// Map entries of one map after the first compile.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MapEntries {
    /// Map name.
    pub map: String,
    /// Entries desired.
    pub entries: usize,
    /// The map's capacity.
    pub capacity: u32,
}

/// Time of one compile after one change, ms.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ChangeMs {
    /// A local pod relabelled.
    pub local_pod_relabelled: f64,
    /// A remote pod added.
    pub remote_pod_added: f64,
    /// A policy added in a namespace with no local pod.
    pub policy_added: f64,
    /// A node (of `node_pods` pods) added.
    pub node_added: f64,
}

/// What one case measured.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ScaleResult {
    /// The case.
    pub shape: Shape,
    /// Nodes in the cluster.
    pub nodes: usize,
    /// Namespaces.
    pub namespaces: usize,
    /// Services (each with one EndpointSlice).
    pub services: usize,
    /// Pods on the node under test (the placement).
    pub local_pods: usize,
    /// Peer identities of the first compile (`Ids::identities`).
    pub identities: usize,
    /// First compile, prior ids empty, ms.
    pub compile_ms: f64,
    /// One compile per change, the first pass's ids as prior.
    pub change_ms: ChangeMs,
    /// Entries per map after the first compile, against the default capacities.
    pub maps: Vec<MapEntries>,
    /// Errors of the first compile (capacity; the generated input has no invalid object).
    pub errors: usize,
    /// Peak RSS once the cluster is generated, before any compile, MiB.
    pub input_rss_mib: f64,
    /// What the incremental compiler keeps of the cluster: resident memory it added when it
    /// loaded the generated objects, MiB.
    pub state_mib: f64,
    /// Peak RSS of the whole case, MiB.
    pub peak_rss_mib: f64,
}

/// A case that did not finish (its process failed or was killed).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{pods} pods, {policies} policies, {node_pods} pods per node: {message}", pods = .shape.pods, policies = .shape.policies, node_pods = .shape.node_pods)]
pub struct ScaleError {
    /// The case.
    pub shape: Shape,
    /// What went wrong.
    pub message: String,
}

/// Makes the peak resident set that the kernel reports (`VmHWM`) the current one, so that
/// [`peak_rss_mib`] reads the peak since this call.
pub fn reset_peak_rss() {
    // Writing 5 resets the peak (Linux 4.0 on); without it, the peak since the start stands.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Peak resident set of this process so far (or since [`reset_peak_rss`]), MiB (`VmHWM` of
/// `/proc/self/status`, what `getrusage` reports as `ru_maxrss`); 0 when it cannot be read.
pub fn peak_rss_mib() -> f64 {
    let kib = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
            line.split_whitespace().nth(1)?.parse::<f64>().ok()
        })
        .unwrap_or(0.0);
    kib / 1024.0
}

/// Resident set of this process now, MiB (`/proc/self/statm`); 0 when it cannot be read.
pub fn current_rss_mib() -> f64 {
    let pages = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|statm| statm.split_whitespace().nth(1)?.parse::<f64>().ok())
        .unwrap_or(0.0);
    let page_size = rustix::param::page_size() as f64;
    pages * page_size / (1024.0 * 1024.0)
}

/// How many times each change is made (and undone) in a case: its time is their median.
const CHANGE_RUNS: usize = 5;

fn ms_since(start: Instant) -> f64 {
    start.elapsed().as_secs_f64() * 1e3
}

/// Generates `shape`'s cluster and measures it in this process (the child's side of
/// [`run_children`]).
pub fn measure(shape: Shape) -> Result<ScaleResult, String> {
    shape.check()?;
    let mut cluster = generate(shape);
    let input_rss_mib = peak_rss_mib();
    let capacity = Capacity::default();

    let before = current_rss_mib();
    let start = Instant::now();
    let mut compiler = Compiler::from_snapshot(&cluster.snapshot);
    let state_mib = current_rss_mib() - before;
    let first = compiler.compile(
        &Placement::Interfaces(&cluster.local),
        &Ids::default(),
        &capacity,
    );
    let compile_ms = ms_since(start);
    for error in first.errors.iter().take(3) {
        tracing::warn!(%error, "bench scale: first compile");
    }

    // Each pass takes the previous pass's ids, as the agent's do; undoing a change is a pass
    // too (not timed), so every change starts from the base cluster.
    let mut prior = first.ids.clone();
    // Each change is made and undone `CHANGE_RUNS` times; its time is the median.
    let mut change = |apply: fn(&mut GeneratedCluster) -> Undo| {
        median((0..CHANGE_RUNS).map(|_| {
            let undo = apply(&mut cluster);
            let start = Instant::now();
            undo.apply_to(&cluster.snapshot, &mut compiler);
            let compiled =
                compiler.compile(&Placement::Interfaces(&cluster.local), &prior, &capacity);
            let ms = ms_since(start);
            undo.revert(&mut cluster.snapshot, &mut compiler);
            prior = compiler
                .compile(
                    &Placement::Interfaces(&cluster.local),
                    &compiled.ids,
                    &capacity,
                )
                .ids;
            ms
        }))
    };
    let change_ms = ChangeMs {
        local_pod_relabelled: change(GeneratedCluster::relabel_local_pod),
        remote_pod_added: change(GeneratedCluster::add_remote_pod),
        policy_added: change(GeneratedCluster::add_unrelated_policy),
        node_added: change(GeneratedCluster::add_node),
    };

    Ok(ScaleResult {
        shape,
        nodes: cluster.nodes,
        namespaces: cluster.snapshot.namespaces.len(),
        services: cluster.snapshot.services.len(),
        local_pods: cluster.local.len(),
        identities: first.ids.identities.len(),
        compile_ms,
        change_ms,
        maps: map_entries(&first.desired),
        errors: first.errors.len(),
        input_rss_mib,
        state_mib,
        peak_rss_mib: peak_rss_mib(),
    })
}

fn map_entries(desired: &DesiredState) -> Vec<MapEntries> {
    desired
        .usage(&Capacity::default())
        .iter()
        .map(|u| MapEntries {
            map: u.map.to_owned(),
            entries: u.entries,
            capacity: u.capacity,
        })
        .collect()
}

/// Runs each case in a fresh process: the current executable with `args(shape)` (the command
/// line that makes it call [`measure`] and print the result as one JSON line), one case after
/// the other; `each` gets every result as it arrives.
pub fn run_children(
    shapes: &[Shape],
    args: impl Fn(&Shape) -> Vec<String>,
    mut each: impl FnMut(Result<ScaleResult, ScaleError>),
) {
    for shape in shapes {
        each(run_child(shape, &args(shape)));
    }
}

fn run_child(shape: &Shape, args: &[String]) -> Result<ScaleResult, ScaleError> {
    let fail = |message: String| ScaleError {
        shape: *shape,
        message,
    };
    let exe = std::env::current_exe().map_err(|e| fail(format!("finding this program: {e}")))?;
    let output = Command::new(&exe)
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| fail(format!("running {}: {e}", exe.display())))?;
    if !output.status.success() {
        return Err(fail(format!(
            "the measuring process ended with {}",
            output.status
        )));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .rfind(|l| !l.trim().is_empty())
        .ok_or_else(|| fail("the measuring process printed nothing".to_owned()))?;
    serde_json::from_str(line).map_err(|e| fail(format!("reading its result {line:?}: {e}")))
}

/// Column headers and one line per result, fixed widths (rows can be printed as they come).
pub fn render_header() -> String {
    let maps: Vec<String> = DesiredState::default()
        .usage(&Capacity::default())
        .iter()
        .map(|u| short_map_name(u.map).to_owned())
        .collect();
    let mut line = format!(
        "{:>7} {:>6} {:>5} {:>5} {:>6} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "PODS",
        "POLS",
        "NODE",
        "NODES",
        "IDENT",
        "COMPILE",
        "RELABEL",
        "+POD",
        "+POLICY",
        "+NODE",
        "ERRORS",
    );
    for map in &maps {
        line.push_str(&format!(" {map:>10}"));
    }
    line.push_str(&format!(" {:>8} {:>8} {:>8}\n", "INPUT", "STATE", "PEAK"));
    line
}

/// One result as a line under [`render_header`]: times in ms, memory in MiB.
pub fn render_row(r: &ScaleResult) -> String {
    let mut line = format!(
        "{:>7} {:>6} {:>5} {:>5} {:>6} {:>8.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9}",
        r.shape.pods,
        r.shape.policies,
        r.shape.node_pods,
        r.nodes,
        r.identities,
        r.compile_ms,
        r.change_ms.local_pod_relabelled,
        r.change_ms.remote_pod_added,
        r.change_ms.policy_added,
        r.change_ms.node_added,
        r.errors,
    );
    for map in &r.maps {
        line.push_str(&format!(" {:>10}", map.entries));
    }
    line.push_str(&format!(
        " {:>8.0} {:>8.0} {:>8.0}\n",
        r.input_rss_mib, r.state_mib, r.peak_rss_mib
    ));
    line
}

/// What the columns mean and the maps' capacities, after the table.
pub fn render_footer() -> String {
    let capacities: Vec<String> = DesiredState::default()
        .usage(&Capacity::default())
        .iter()
        .map(|u| format!("{} {}", short_map_name(u.map), u.capacity))
        .collect();
    format!(
        "NODE: pods per node (the node under test holds that many); IDENT: peer identities; \
         COMPILE: loading the objects into the compiler and the first compile, ms; \
         RELABEL/+POD/+POLICY/+NODE: handing the changed objects to the compiler and one \
         compile after a local pod relabelled, a remote pod added, a policy added elsewhere, a \
         node added, ms; map columns: entries after the first compile (capacity: {}); \
         INPUT/PEAK: peak RSS after generating the cluster / of the whole case, MiB; STATE: \
         what the compiler keeps of the cluster, MiB.\n",
        capacities.join(", ")
    )
}

fn short_map_name(map: &str) -> &str {
    map.strip_prefix("TG_").unwrap_or(map)
}

// ---------------------------------------------------------------------------------------------
// The generator.

/// A generated cluster, and what the changes need to know about it.
#[derive(Debug, Clone)]
pub struct GeneratedCluster {
    /// The objects.
    pub snapshot: Snapshot,
    /// The node under test's pods, `namespace/name` → ifindex.
    pub local: BTreeMap<String, u32>,
    /// Nodes in the cluster.
    pub nodes: usize,
    namespaces: Vec<AppNamespace>,
    /// Index into `snapshot.pods` of the first local application pod.
    first_local_app_pod: Option<usize>,
    /// Pods generated so far (addresses and name suffixes continue from it).
    next_pod: u32,
}

/// One application namespace.
#[derive(Debug, Clone)]
struct AppNamespace {
    name: String,
    apps: Vec<App>,
    local_pods: usize,
}

/// One Deployment.
#[derive(Debug, Clone)]
struct App {
    name: String,
    hash: String,
    replicas: usize,
    http: u16,
    grpc: bool,
    /// Index into `snapshot.endpoint_slices` of its Service's slice.
    slice: Option<usize>,
}

/// How to take a change back: lengths to truncate to and objects to restore.
#[derive(Debug, Default)]
#[must_use]
struct Undo {
    pods_len: usize,
    policies_len: usize,
    pods: Vec<(usize, Pod)>,
    slices: Vec<(usize, EndpointSlice)>,
}

impl Undo {
    fn new(snapshot: &Snapshot) -> Self {
        Self {
            pods_len: snapshot.pods.len(),
            policies_len: snapshot.policies.len(),
            ..Self::default()
        }
    }

    /// Saves slice `index` before its first change.
    fn save_slice(&mut self, snapshot: &Snapshot, index: usize) {
        if !self.slices.iter().any(|(i, _)| *i == index) {
            self.slices
                .push((index, snapshot.endpoint_slices[index].clone()));
        }
    }

    /// Hands the objects the change added or changed to `compiler`, as a watch would.
    fn apply_to(&self, snapshot: &Snapshot, compiler: &mut Compiler) {
        let changed = snapshot.pods[self.pods_len..]
            .iter()
            .chain(self.pods.iter().map(|(index, _)| &snapshot.pods[*index]))
            .map(Object::Pod)
            .chain(
                snapshot.policies[self.policies_len..]
                    .iter()
                    .map(Object::NetworkPolicy),
            )
            .chain(
                self.slices
                    .iter()
                    .map(|(index, _)| Object::EndpointSlice(&snapshot.endpoint_slices[*index])),
            );
        for object in changed {
            compiler.apply(object).expect("generated objects are named");
        }
    }

    /// Takes the change back, in `snapshot` and in `compiler`.
    fn revert(self, snapshot: &mut Snapshot, compiler: &mut Compiler) {
        let meta_of = |meta: &ObjectMeta| {
            (
                meta.namespace.clone().unwrap_or_default(),
                meta.name.clone().unwrap_or_default(),
            )
        };
        for pod in snapshot.pods.drain(self.pods_len..) {
            let (namespace, name) = meta_of(&pod.metadata);
            compiler.delete(ObjectKind::Pod, &namespace, &name);
        }
        for policy in snapshot.policies.drain(self.policies_len..) {
            let (namespace, name) = meta_of(&policy.metadata);
            compiler.delete(ObjectKind::NetworkPolicy, &namespace, &name);
        }
        for (index, pod) in self.pods {
            snapshot.pods[index] = pod;
            compiler
                .apply(Object::Pod(&snapshot.pods[index]))
                .expect("generated objects are named");
        }
        for (index, slice) in self.slices {
            snapshot.endpoint_slices[index] = slice;
            compiler
                .apply(Object::EndpointSlice(&snapshot.endpoint_slices[index]))
                .expect("generated objects are named");
        }
    }
}

/// Fixed seed: the generator is deterministic.
const SEED: u64 = 0x7011_6a7e_5ca1_e000;

/// splitmix64: small, deterministic, good enough to pick sizes.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `low..=high` (the bias is irrelevant here).
    fn range(&mut self, low: usize, high: usize) -> usize {
        low + (self.next() % (high - low + 1) as u64) as usize
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.range(0, items.len() - 1)]
    }
}

/// The alphabet Kubernetes uses for generated name suffixes.
const NAME_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// `len` characters of [`NAME_ALPHABET`] from `n`.
fn suffix(mut n: u64, len: usize) -> String {
    let base = NAME_ALPHABET.len() as u64;
    (0..len)
        .map(|_| {
            let c = NAME_ALPHABET[(n % base) as usize] as char;
            n /= base;
            c
        })
        .collect()
}

/// The 5-character suffix of the n-th pod: distinct for every n below 27^5 (the multiplier is
/// prime to 27^5, so n ↦ n·k mod 27^5 is a bijection).
fn pod_suffix(n: u32) -> String {
    const SPACE: u64 = 27u64.pow(5);
    suffix((u64::from(n) * 7_368_787) % SPACE, 5)
}

const NAMESPACE_WORDS: &[&str] = &[
    "payments",
    "checkout",
    "catalog",
    "search",
    "orders",
    "identity",
    "billing",
    "shipping",
    "inventory",
    "reviews",
    "ads",
    "analytics",
    "messaging",
    "media",
    "profile",
    "pricing",
];
const APP_WORDS: &[&str] = &[
    "api",
    "web",
    "worker",
    "gateway",
    "auth",
    "cache-proxy",
    "ledger",
    "notifier",
    "scheduler",
    "reporting",
    "ingest",
    "frontend",
    "backend",
    "indexer",
    "exporter",
    "sync",
];
const REPLICAS: &[usize] = &[1, 2, 2, 3, 3, 3, 5, 5, 8, 10, 15, 20];
const HTTP_PORTS: &[u16] = &[80, 3000, 8000, 8080];
const GRPC_PORT: u16 = 9090;
const METRICS_PORT: u16 = 9100;
const KUBE_SYSTEM: &str = "kube-system";
const MONITORING: &str = "monitoring";
const NODE_AGENT: &str = "node-agent";
/// Policies of a namespace's full bundle (see the module doc).
const BUNDLE: usize = 7;

fn pod_ip(n: u32) -> String {
    // 10.0.1.0 and up: the VPC's pod addresses.
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 0, 1, 0)) + n).to_string()
}

fn node_ip(k: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(192, 168, 0, 10)) + k as u32)
}

fn node_name(k: usize) -> String {
    let [a, b, c, d] = node_ip(k).octets();
    format!("ip-{a}-{b}-{c}-{d}.ec2.internal")
}

fn cluster_ip(n: usize) -> String {
    // 172.20.0.0/16, EKS's default Service range; .10 is kube-dns, apps from .100.
    Ipv4Addr::from(u32::from(Ipv4Addr::new(172, 20, 0, 100)) + n as u32).to_string()
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn meta(namespace: &str, name: &str, labels: BTreeMap<String, String>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: Some(namespace.to_owned()),
        labels: (!labels.is_empty()).then_some(labels),
        resource_version: Some("1".to_owned()),
        ..ObjectMeta::default()
    }
}

fn container_port(name: &str, port: u16, protocol: &str) -> ContainerPort {
    ContainerPort {
        name: Some(name.to_owned()),
        container_port: i32::from(port),
        protocol: Some(protocol.to_owned()),
        ..ContainerPort::default()
    }
}

/// A running, ready pod.
fn pod(
    namespace: &str,
    name: &str,
    labels: BTreeMap<String, String>,
    ports: Vec<ContainerPort>,
    node: &str,
    ip: String,
) -> Pod {
    Pod {
        metadata: meta(namespace, name, labels),
        spec: Some(PodSpec {
            node_name: Some(node.to_owned()),
            containers: vec![Container {
                name: "main".to_owned(),
                ports: Some(ports),
                ..Container::default()
            }],
            ..PodSpec::default()
        }),
        status: Some(PodStatus {
            phase: Some("Running".to_owned()),
            pod_ip: Some(ip.clone()),
            pod_ips: Some(vec![PodIP { ip }]),
            conditions: Some(vec![PodCondition {
                type_: "Ready".to_owned(),
                status: "True".to_owned(),
                ..PodCondition::default()
            }]),
            ..PodStatus::default()
        }),
    }
}

fn slice_endpoint(pod: &Pod) -> Endpoint {
    let ip = pod
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .unwrap_or_default();
    Endpoint {
        addresses: vec![ip],
        conditions: Some(EndpointConditions {
            ready: Some(true),
            serving: Some(true),
            terminating: Some(false),
        }),
        node_name: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
        target_ref: Some(ObjectReference {
            kind: Some("Pod".to_owned()),
            namespace: pod.metadata.namespace.clone(),
            name: pod.metadata.name.clone(),
            ..ObjectReference::default()
        }),
        ..Endpoint::default()
    }
}

fn service(
    namespace: &str,
    name: &str,
    cluster_ip: String,
    selector: BTreeMap<String, String>,
    ports: Vec<ServicePort>,
) -> Service {
    Service {
        metadata: meta(namespace, name, BTreeMap::new()),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".to_owned()),
            cluster_ip: Some(cluster_ip.clone()),
            cluster_ips: Some(vec![cluster_ip]),
            selector: Some(selector),
            ports: Some(ports),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

fn service_port(name: &str, port: u16, protocol: &str, target: IntOrString) -> ServicePort {
    ServicePort {
        name: Some(name.to_owned()),
        port: i32::from(port),
        protocol: Some(protocol.to_owned()),
        target_port: Some(target),
        ..ServicePort::default()
    }
}

fn endpoint_slice(
    namespace: &str,
    service: &str,
    ports: Vec<EndpointPort>,
    endpoints: Vec<Endpoint>,
) -> EndpointSlice {
    EndpointSlice {
        metadata: meta(
            namespace,
            &format!("{service}-{}", suffix(service.len() as u64 * 31 + 7, 5)),
            labels(&[(SERVICE_NAME_LABEL, service)]),
        ),
        address_type: "IPv4".to_owned(),
        endpoints: Some(endpoints),
        ports: Some(ports),
    }
}

fn endpoint_port(name: &str, port: u16, protocol: &str) -> EndpointPort {
    EndpointPort {
        name: Some(name.to_owned()),
        port: Some(i32::from(port)),
        protocol: Some(protocol.to_owned()),
        ..EndpointPort::default()
    }
}

fn selector(pairs: &[(&str, &str)]) -> LabelSelector {
    LabelSelector {
        match_labels: (!pairs.is_empty()).then(|| labels(pairs)),
        ..LabelSelector::default()
    }
}

fn named_port(name: &str) -> NetworkPolicyPort {
    NetworkPolicyPort {
        port: Some(IntOrString::String(name.to_owned())),
        protocol: Some("TCP".to_owned()),
        ..NetworkPolicyPort::default()
    }
}

fn number_port(port: u16, protocol: &str) -> NetworkPolicyPort {
    NetworkPolicyPort {
        port: Some(IntOrString::Int(i32::from(port))),
        protocol: Some(protocol.to_owned()),
        ..NetworkPolicyPort::default()
    }
}

fn policy(
    namespace: &str,
    name: &str,
    pod_selector: LabelSelector,
    ingress: Option<Vec<NetworkPolicyIngressRule>>,
    egress: Option<Vec<NetworkPolicyEgressRule>>,
) -> NetworkPolicy {
    let mut types = Vec::new();
    if ingress.is_some() {
        types.push("Ingress".to_owned());
    }
    if egress.is_some() {
        types.push("Egress".to_owned());
    }
    NetworkPolicy {
        metadata: meta(namespace, name, BTreeMap::new()),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(pod_selector),
            policy_types: Some(types),
            ingress,
            egress,
        }),
    }
}

fn ingress(
    from: Vec<NetworkPolicyPeer>,
    ports: Vec<NetworkPolicyPort>,
) -> NetworkPolicyIngressRule {
    NetworkPolicyIngressRule {
        from: Some(from),
        ports: (!ports.is_empty()).then_some(ports),
    }
}

fn egress(to: Vec<NetworkPolicyPeer>, ports: Vec<NetworkPolicyPort>) -> NetworkPolicyEgressRule {
    NetworkPolicyEgressRule {
        to: Some(to),
        ports: (!ports.is_empty()).then_some(ports),
    }
}

fn pods_peer(pod_selector: LabelSelector) -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        pod_selector: Some(pod_selector),
        ..NetworkPolicyPeer::default()
    }
}

fn namespace_peer(namespace: &str, pod_selector: Option<LabelSelector>) -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        namespace_selector: Some(selector(&[(NAMESPACE_NAME_LABEL, namespace)])),
        pod_selector,
        ..NetworkPolicyPeer::default()
    }
}

impl App {
    fn labels(&self) -> BTreeMap<String, String> {
        labels(&[
            ("app", &self.name),
            ("app.kubernetes.io/name", &self.name),
            ("pod-template-hash", &self.hash),
        ])
    }

    fn ports(&self) -> Vec<ContainerPort> {
        let mut ports = vec![container_port("http", self.http, "TCP")];
        if self.grpc {
            ports.push(container_port("grpc", GRPC_PORT, "TCP"));
        }
        ports.push(container_port("metrics", METRICS_PORT, "TCP"));
        ports
    }
}

/// The `k`-th policy of namespace `ns`'s bundle (see the module doc).
fn bundle_policy(ns: &AppNamespace, k: usize) -> NetworkPolicy {
    let name = ns.name.as_str();
    let all = LabelSelector::default;
    match k {
        0 => policy(name, "default-deny", all(), Some(vec![]), Some(vec![])),
        1 => policy(
            name,
            "allow-dns",
            all(),
            None,
            Some(vec![egress(
                vec![namespace_peer(
                    KUBE_SYSTEM,
                    Some(selector(&[("k8s-app", "kube-dns")])),
                )],
                vec![number_port(53, "UDP"), number_port(53, "TCP")],
            )]),
        ),
        2 => policy(
            name,
            "allow-same-namespace",
            all(),
            Some(vec![ingress(vec![pods_peer(all())], vec![])]),
            Some(vec![egress(vec![pods_peer(all())], vec![])]),
        ),
        3 => policy(
            name,
            "allow-monitoring",
            all(),
            Some(vec![ingress(
                vec![namespace_peer(
                    MONITORING,
                    Some(selector(&[("app", NODE_AGENT)])),
                )],
                vec![named_port("metrics")],
            )]),
            None,
        ),
        4 => policy(
            name,
            "allow-http-from-any-namespace",
            selector(&[("app", &ns.apps[0].name)]),
            Some(vec![ingress(
                vec![NetworkPolicyPeer {
                    namespace_selector: Some(all()),
                    ..NetworkPolicyPeer::default()
                }],
                vec![named_port("http")],
            )]),
            None,
        ),
        5 => policy(
            name,
            "allow-https-egress",
            all(),
            None,
            Some(vec![egress(
                vec![NetworkPolicyPeer {
                    ip_block: Some(IPBlock {
                        cidr: "0.0.0.0/0".to_owned(),
                        except: Some(vec![
                            "10.0.0.0/8".to_owned(),
                            "172.16.0.0/12".to_owned(),
                            "192.168.0.0/16".to_owned(),
                        ]),
                    }),
                    ..NetworkPolicyPeer::default()
                }],
                vec![number_port(443, "TCP")],
            )]),
        ),
        _ => app_to_app(ns, k - (BUNDLE - 1), ""),
    }
}

/// The `n`-th app-to-app policy of `ns`: ordered pairs of its apps (client, server), the
/// server's `grpc` port when it has one, else `http`; past the last pair, the same pairs again
/// under other names.
fn app_to_app(ns: &AppNamespace, n: usize, prefix: &str) -> NetworkPolicy {
    let apps = ns.apps.len();
    let pairs = if apps > 1 { apps * (apps - 1) } else { 1 };
    let pair = n % pairs;
    let (client, server) = if apps > 1 {
        let client = pair / (apps - 1);
        let server = (client + 1 + pair % (apps - 1)) % apps;
        (&ns.apps[client], &ns.apps[server])
    } else {
        (&ns.apps[0], &ns.apps[0])
    };
    let port = if server.grpc { "grpc" } else { "http" };
    let round = n / pairs;
    let name = if round == 0 {
        format!("{prefix}allow-{}-to-{}", client.name, server.name)
    } else {
        format!("{prefix}allow-{}-to-{}-{round}", client.name, server.name)
    };
    policy(
        &ns.name,
        &name,
        selector(&[("app", &server.name)]),
        Some(vec![ingress(
            vec![pods_peer(selector(&[("app", &client.name)]))],
            vec![named_port(port)],
        )]),
        None,
    )
}

/// How many policies each namespace gets: whole bundles to namespaces spread evenly when there
/// are fewer than [`BUNDLE`] per namespace, else an even share each.
fn policy_counts(policies: usize, namespaces: usize) -> Vec<usize> {
    let mut counts = vec![0; namespaces];
    if namespaces == 0 {
        return counts;
    }
    if policies >= BUNDLE * namespaces {
        for (i, count) in counts.iter_mut().enumerate() {
            *count = policies / namespaces + usize::from(i < policies % namespaces);
        }
    } else {
        let with = policies.div_ceil(BUNDLE);
        for j in 0..with {
            let count = if j + 1 == with {
                policies - BUNDLE * (with - 1)
            } else {
                BUNDLE
            };
            counts[j * namespaces / with] = count;
        }
    }
    counts
}

/// The cluster of `shape` (see the module doc). Deterministic. `shape` must pass
/// [`Shape::check`].
pub fn generate(shape: Shape) -> GeneratedCluster {
    let mut rng = Rng(SEED);
    let nodes = shape.pods.div_ceil(shape.node_pods).max(1);
    // Pods other than the DaemonSet's: CoreDNS, then the applications.
    let others = shape.pods - nodes;
    let apps_total = others - 2;

    // Namespaces and Deployments.
    let mut namespaces = Vec::new();
    let mut left = apps_total;
    while left > 0 {
        let index = namespaces.len();
        let size = rng.range(50, 100).min(left);
        left -= size;
        let name = format!("{}-{index}", NAMESPACE_WORDS[index % NAMESPACE_WORDS.len()]);
        let mut apps: Vec<App> = Vec::new();
        let mut ns_left = size;
        while ns_left > 0 {
            let replicas = rng.pick(REPLICAS).min(ns_left);
            ns_left -= replicas;
            let a = apps.len();
            let word = APP_WORDS[a % APP_WORDS.len()];
            let app_name = if a < APP_WORDS.len() {
                word.to_owned()
            } else {
                format!("{word}-{}", a / APP_WORDS.len())
            };
            apps.push(App {
                name: app_name,
                hash: suffix(rng.next(), 10),
                replicas,
                http: rng.pick(HTTP_PORTS),
                grpc: rng.next().is_multiple_of(3),
                slice: None,
            });
        }
        namespaces.push(AppNamespace {
            name,
            apps,
            local_pods: 0,
        });
    }

    let mut snapshot = Snapshot {
        node_addresses: vec![node_ip(0).into()],
        ..Snapshot::default()
    };
    for (name, extra) in [(KUBE_SYSTEM, None), (MONITORING, None)].into_iter().chain(
        namespaces.iter().enumerate().map(|(i, ns)| {
            (
                ns.name.as_str(),
                Some(if i % 4 == 0 { "staging" } else { "production" }),
            )
        }),
    ) {
        let mut l = labels(&[(NAMESPACE_NAME_LABEL, name)]);
        if let Some(env) = extra {
            l.insert("env".to_owned(), env.to_owned());
            l.insert("team".to_owned(), name.to_owned());
        }
        snapshot.namespaces.push(Namespace {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                labels: Some(l),
                resource_version: Some("1".to_owned()),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        });
    }

    // Placement: the node under test takes `node_pods - 1` of the non-DaemonSet pods, every
    // `stride`-th one (so pods of many namespaces), the others go round-robin to the other
    // nodes; each node also runs a DaemonSet pod.
    let local_others = if nodes == 1 {
        others
    } else {
        (shape.node_pods - 1).min(others)
    };
    let stride = (others / local_others.max(1)).max(1);
    let mut local = BTreeMap::new();
    let mut next_pod = 0u32;
    let mut remote = 0usize;
    let mut first_local_app_pod = None;
    let mut place = |j: usize, taken: usize| -> usize {
        if j % stride == stride / 2 && taken < local_others || nodes == 1 {
            0
        } else {
            remote += 1;
            1 + (remote - 1) % (nodes - 1)
        }
    };

    // kube-system: CoreDNS and kube-dns.
    let dns_labels = labels(&[("k8s-app", "kube-dns"), ("pod-template-hash", "5d8c9f7b6d")]);
    let mut dns_endpoints = Vec::new();
    for j in 0..2 {
        let node = place(j, local.len());
        let name = format!("coredns-5d8c9f7b6d-{}", pod_suffix(next_pod));
        let p = pod(
            KUBE_SYSTEM,
            &name,
            dns_labels.clone(),
            vec![
                container_port("dns", 53, "UDP"),
                container_port("dns-tcp", 53, "TCP"),
                container_port("metrics", 9153, "TCP"),
            ],
            &node_name(node),
            pod_ip(next_pod),
        );
        next_pod += 1;
        if node == 0 {
            let ifindex = 10 + local.len() as u32;
            local.insert(format!("{KUBE_SYSTEM}/{name}"), ifindex);
        }
        dns_endpoints.push(slice_endpoint(&p));
        snapshot.pods.push(p);
    }
    snapshot.services.push(service(
        KUBE_SYSTEM,
        "kube-dns",
        "172.20.0.10".to_owned(),
        labels(&[("k8s-app", "kube-dns")]),
        vec![
            service_port("dns", 53, "UDP", IntOrString::Int(53)),
            service_port("dns-tcp", 53, "TCP", IntOrString::Int(53)),
        ],
    ));
    snapshot.endpoint_slices.push(endpoint_slice(
        KUBE_SYSTEM,
        "kube-dns",
        vec![
            endpoint_port("dns", 53, "UDP"),
            endpoint_port("dns-tcp", 53, "TCP"),
        ],
        dns_endpoints,
    ));

    // Applications.
    let mut j = 2;
    for ns in &mut namespaces {
        for (a, app) in ns.apps.iter_mut().enumerate() {
            let mut endpoints = Vec::new();
            for _ in 0..app.replicas {
                let node = place(j, local.len());
                j += 1;
                let name = format!("{}-{}-{}", app.name, app.hash, pod_suffix(next_pod));
                let p = pod(
                    &ns.name,
                    &name,
                    app.labels(),
                    app.ports(),
                    &node_name(node),
                    pod_ip(next_pod),
                );
                next_pod += 1;
                if node == 0 {
                    first_local_app_pod.get_or_insert(snapshot.pods.len());
                    let ifindex = 10 + local.len() as u32;
                    local.insert(format!("{}/{name}", ns.name), ifindex);
                    ns.local_pods += 1;
                }
                endpoints.push(slice_endpoint(&p));
                snapshot.pods.push(p);
            }
            if a % 2 == 0 {
                snapshot.services.push(service(
                    &ns.name,
                    &app.name,
                    cluster_ip(snapshot.services.len()),
                    labels(&[("app", &app.name)]),
                    vec![service_port(
                        "http",
                        80,
                        "TCP",
                        IntOrString::String("http".to_owned()),
                    )],
                ));
                app.slice = Some(snapshot.endpoint_slices.len());
                snapshot.endpoint_slices.push(endpoint_slice(
                    &ns.name,
                    &app.name,
                    vec![endpoint_port("http", app.http, "TCP")],
                    endpoints,
                ));
            }
        }
    }

    // The monitoring DaemonSet, one pod per node.
    for node in 0..nodes {
        let name = format!("{NODE_AGENT}-{}", pod_suffix(next_pod));
        snapshot
            .pods
            .push(daemonset_pod(&name, node, pod_ip(next_pod)));
        next_pod += 1;
        if node == 0 {
            let ifindex = 10 + local.len() as u32;
            local.insert(format!("{MONITORING}/{name}"), ifindex);
        }
    }

    // Policies.
    for (ns, count) in namespaces
        .iter()
        .zip(policy_counts(shape.policies, namespaces.len()))
    {
        for k in 0..count {
            snapshot.policies.push(bundle_policy(ns, k));
        }
    }

    GeneratedCluster {
        snapshot,
        local,
        nodes,
        namespaces,
        first_local_app_pod,
        next_pod,
    }
}

fn daemonset_pod(name: &str, node: usize, ip: String) -> Pod {
    pod(
        MONITORING,
        name,
        labels(&[
            ("app", NODE_AGENT),
            ("controller-revision-hash", "6b9f8d7c5"),
            ("pod-template-generation", "1"),
        ]),
        vec![container_port("metrics", METRICS_PORT, "TCP")],
        &node_name(node),
        ip,
    )
}

impl GeneratedCluster {
    /// A new replica of `app` in namespace `ns` on `node`, added to its Service's slice.
    fn add_replica(&mut self, ns: usize, app: usize, node: usize, undo: &mut Undo) {
        let n = self.next_pod;
        self.next_pod += 1;
        let (namespace, app) = (&self.namespaces[ns].name, &self.namespaces[ns].apps[app]);
        let name = format!("{}-{}-{}", app.name, app.hash, pod_suffix(n));
        let p = pod(
            namespace,
            &name,
            app.labels(),
            app.ports(),
            &node_name(node),
            pod_ip(n),
        );
        if let Some(slice) = app.slice {
            undo.save_slice(&self.snapshot, slice);
            self.snapshot.endpoint_slices[slice]
                .endpoints
                .get_or_insert_with(Vec::new)
                .push(slice_endpoint(&p));
        }
        self.snapshot.pods.push(p);
    }

    /// Change: the first local application pod moves to another app of its namespace (its
    /// `app` labels and `pod-template-hash`).
    fn relabel_local_pod(&mut self) -> Undo {
        let mut undo = Undo::new(&self.snapshot);
        let Some(index) = self.first_local_app_pod else {
            return undo;
        };
        let pod = &mut self.snapshot.pods[index];
        undo.pods.push((index, pod.clone()));
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let labels = pod.metadata.labels.get_or_insert_with(BTreeMap::new);
        let current = labels.get("app").cloned().unwrap_or_default();
        let apps = &self
            .namespaces
            .iter()
            .find(|ns| ns.name == namespace)
            .expect("a generated pod's namespace")
            .apps;
        let other = apps
            .iter()
            .position(|a| a.name == current)
            .map(|i| &apps[(i + 1) % apps.len()])
            .filter(|a| a.name != current);
        match other {
            Some(other) => *labels = other.labels(),
            None => {
                labels.insert("app".to_owned(), format!("{current}-canary"));
            }
        }
        undo
    }

    /// Change: one replica more of the first Deployment with a Service in the middle
    /// namespace, on another node.
    fn add_remote_pod(&mut self) -> Undo {
        let mut undo = Undo::new(&self.snapshot);
        let ns = self.namespaces.len() / 2;
        let app = self.namespaces[ns]
            .apps
            .iter()
            .position(|a| a.slice.is_some())
            .unwrap_or(0);
        self.add_replica(ns, app, 1, &mut undo);
        undo
    }

    /// Change: an app-to-app policy in the last namespace with no local pod (the last
    /// namespace if every one has some).
    fn add_unrelated_policy(&mut self) -> Undo {
        let undo = Undo::new(&self.snapshot);
        let ns = self
            .namespaces
            .iter()
            .rev()
            .find(|ns| ns.local_pods == 0)
            .or(self.namespaces.last())
            .expect("at least one namespace");
        self.snapshot
            .policies
            .push(app_to_app(ns, 0, "bench-added-"));
        undo
    }

    /// Change: a new node with its DaemonSet pod and `node_pods - 1` new replicas of
    /// Deployments spread over the cluster.
    fn add_node(&mut self) -> Undo {
        let mut undo = Undo::new(&self.snapshot);
        let node = self.nodes;
        let n = self.next_pod;
        self.next_pod += 1;
        let name = format!("{NODE_AGENT}-{}", pod_suffix(n));
        self.snapshot
            .pods
            .push(daemonset_pod(&name, node, pod_ip(n)));
        let apps: Vec<(usize, usize)> = self
            .namespaces
            .iter()
            .enumerate()
            .flat_map(|(i, ns)| (0..ns.apps.len()).map(move |a| (i, a)))
            .collect();
        let new = self.local.len().saturating_sub(1).max(1);
        let stride = (apps.len() / new).max(1);
        for k in 0..new {
            let (ns, app) = apps[(k * stride) % apps.len()];
            self.add_replica(ns, app, node, &mut undo);
        }
        undo
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generator_is_deterministic_and_gives_the_counts_asked() {
        for shape in [
            Shape {
                pods: 1_000,
                policies: 100,
                node_pods: 110,
            },
            Shape {
                pods: 2_000,
                policies: 1_000,
                node_pods: 250,
            },
        ] {
            shape.check().expect("a valid shape");
            let a = generate(shape);
            let b = generate(shape);
            assert_eq!(
                a.snapshot, b.snapshot,
                "{shape:?}: same input, same cluster"
            );
            assert_eq!(a.local, b.local);
            assert_eq!(a.snapshot.pods.len(), shape.pods, "{shape:?}");
            assert_eq!(a.snapshot.policies.len(), shape.policies, "{shape:?}");
            assert_eq!(
                a.local.len(),
                shape.node_pods,
                "{shape:?}: the node is full"
            );
            let names: std::collections::BTreeSet<String> = a
                .snapshot
                .pods
                .iter()
                .map(crate::snapshot::pod_key)
                .collect();
            assert_eq!(names.len(), shape.pods, "{shape:?}: pod names are distinct");
            let policy_names: std::collections::BTreeSet<String> = a
                .snapshot
                .policies
                .iter()
                .map(|p| format!("{:?}/{:?}", p.metadata.namespace, p.metadata.name))
                .collect();
            assert_eq!(
                policy_names.len(),
                shape.policies,
                "{shape:?}: policy names are distinct"
            );
        }
    }

    #[test]
    fn changes_reach_the_compiler_and_are_undone() {
        let shape = Shape {
            pods: 1_000,
            policies: 100,
            node_pods: 110,
        };
        let mut cluster = generate(shape);
        let base = cluster.snapshot.clone();
        let mut compiler = Compiler::from_snapshot(&base);
        let capacity = Capacity::default();
        let local = cluster.local.clone();
        let placement = Placement::Interfaces(&local);
        let full = |snapshot: &Snapshot| {
            crate::compile::compile_with(snapshot, &placement, &Ids::default(), &capacity)
        };
        let base_compiled = full(&base);
        for apply in [
            GeneratedCluster::relabel_local_pod,
            GeneratedCluster::add_remote_pod,
            GeneratedCluster::add_unrelated_policy,
            GeneratedCluster::add_node,
        ] {
            let undo = apply(&mut cluster);
            assert_ne!(cluster.snapshot, base, "the change changes something");
            undo.apply_to(&cluster.snapshot, &mut compiler);
            let changed = compiler.compile(&placement, &Ids::default(), &capacity);
            assert!(
                changed == full(&cluster.snapshot),
                "the compiler sees the change"
            );
            undo.revert(&mut cluster.snapshot, &mut compiler);
            assert_eq!(cluster.snapshot, base, "and is undone");
            let reverted = compiler.compile(&placement, &Ids::default(), &capacity);
            assert!(reverted == base_compiled, "in the compiler too");
        }
    }

    #[test]
    fn counts_parse() {
        assert_eq!(parse_count("1k"), Ok(1_000));
        assert_eq!(parse_count("100K"), Ok(100_000));
        assert_eq!(parse_count("2500"), Ok(2_500));
        assert!(parse_count("k").is_err());
    }
}
