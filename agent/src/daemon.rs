//! `tollgate agent`: the parts of this crate wired into one running node agent.
//!
//! [`run_agent`] follows the start sequence of `docs/agent.md`:
//! 1. [`PinnedProbe::open`] under `agent.bpffs` (maps reused or created, no link touched), the
//!    enforcement mode written to the probe's settings (`standard` sets
//!    `ALLOW_UNKNOWN_ENDPOINTS`);
//! 2. the probe's events go to the collector (`tollgate_collector::service::Collector`), which
//!    names flows with the [`Identities`] this loop keeps up to date;
//! 3. `/metrics`, `/healthz` and `/readyz` are served ([`crate::http`]);
//! 4. the passes of [`crate::run::Agent`]: each asks [`NodeEndpoints`] (the reconciler's
//!    [`LocalEndpoints`]) for the node's endpoints — it discovers the veths and attaches the
//!    probe to new ones before their entries are written — and, unless `agent.node_ingress`
//!    is `policy`, for the node's own addresses ([`crate::node_addresses`]), then compiles and
//!    syncs. Between passes, [`NodeEndpoints`]'s netlink watch ([`crate::links`]) attaches the
//!    probe to a veth the moment it appears (the VPC CNI's ADD, before the pod runs and long
//!    before its address reaches the API server) and starts a pass when a host route or one of
//!    the node's addresses comes or goes. After the first pass, [`PinnedProbe::adopt`] swaps
//!    the links an earlier agent left to this agent's programs (never before: with new maps
//!    that would deny every pod until the sync). Every `agent.drift_check_secs` a pass first
//!    reads the maps back and repairs what differs from what the agent wrote. After every pass
//!    the identities observe the pods that changed and the compilation, the propagation latency, the maps'
//!    entries against their capacity and the drift repairs go into [`AgentMetrics`], and the
//!    agent is ready once a pass has programmed every local endpoint; while one is missing (a
//!    failed attach), the next pass comes after [`RECHECK`].
//!
//! On shutdown the collector drains and ships (within [`SHIP_WITHIN`]); pins and links stay, so
//! enforcement goes on with no agent running, and the next agent adopts them.
//!
//! Enforcement never depends on the flow log: a collector that cannot start (its settings, its
//! sink, a spool whose state cannot be read) is logged and the agent enforces without it; its
//! error is [`run_agent`]'s result once the agent stops. A full disk does not even stop the
//! collector (see `docs/collector.md`).

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tollgate_collector::{
    clock::boottime_ns,
    identity::{EndpointInterface, Eni, Identities},
    pipeline::Tap,
    service::{Collector, CollectorError, Stopped},
};
use tollgate_enforcer::{
    aya_maps::AyaMapError,
    compile::Compiled,
    desired::{Capacity, DesiredState, PeerEntryKey},
    probe::{AttachMode, Counters, ProbeError},
    snapshot::{Updates, pod_addresses},
    sync::PolicyMaps,
};
use tollgate_schemas::{
    Config, EndpointKey, EndpointState, PeerIdentity, PolicyEntry, PolicyKey, PolicyValue,
    config_flags,
};

use crate::cni::{VETH_PREFIX_ENV, VethNames};
use crate::config::{AgentConfig, AgentSettings, EnforcementMode, NodeIngress};
use crate::endpoints::{Attacher, Discovery, Endpoints, LocalPod, Veth, discover};
use crate::http::{Response, Routes, serve};
use crate::links::{LinkWatch, pod_links};
use crate::metrics::AgentMetrics;
use crate::node_addresses;
use crate::pins::{PinError, PinnedProbe};
use crate::reconcile::{LocalEndpoints, Report};
use crate::run::Agent;
use crate::source::ClusterSource;
use tollgate_enforcer::causes::Causes;

/// How long [`run_agent`] waits for another agent to release the pins (a rolling update).
pub const LOCK_WAIT: Duration = Duration::from_secs(30);

/// How long the collector may ship on shutdown (the DaemonSet's grace period is longer).
pub const SHIP_WITHIN: Duration = Duration::from_secs(20);

/// How soon a pass runs again when the last one left a local endpoint without the probe (a
/// failed attach or discovery), even if the cluster does not change.
pub const RECHECK: Duration = Duration::from_secs(1);

/// How often the agent's loop shows it turns, when nothing else happens.
const HEARTBEAT: Duration = Duration::from_secs(5);

/// How long the loop may go without turning (a sync or a discovery that hangs) before
/// `/healthz` fails; the liveness probe then restarts the agent, and the pinned programs keep
/// enforcing meanwhile.
pub const STALLED_AFTER: Duration = Duration::from_secs(60);

/// When the agent's loop last turned.
#[derive(Debug)]
pub struct Liveness {
    started: std::time::Instant,
    /// Milliseconds from `started` to the last turn.
    last_ms: AtomicU64,
}

impl Default for Liveness {
    fn default() -> Self {
        Self {
            started: std::time::Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }
}

impl Liveness {
    /// The loop turned now.
    pub fn beat(&self) {
        let ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// How long the loop has not turned, when that is longer than [`STALLED_AFTER`].
    pub fn stalled_for(&self) -> Option<Duration> {
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        let since = self.started.elapsed().saturating_sub(last);
        (since > STALLED_AFTER).then_some(since)
    }
}

/// Quiet time that ends a burst of node changes (a pod's CNI ADD: the veth, its state, the
/// host route) before the pass they start.
const NODE_QUIET: Duration = Duration::from_millis(20);

/// Longest a burst of node changes delays its pass.
const NODE_BURST_MAX: Duration = Duration::from_millis(200);

/// The agent could not start, or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The pinned probe could not be opened or adopted.
    #[error(transparent)]
    Pins(#[from] PinError),
    /// The probe's settings or events could not be set up.
    #[error(transparent)]
    Probe(#[from] ProbeError),
    /// The collector could not start or stop.
    #[error(transparent)]
    Collector(#[from] CollectorError),
    /// An HTTP address could not be bound.
    #[error("binding {address}")]
    Bind {
        /// The configured address.
        address: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// The pinned probe, shared by the endpoint manager (attach), the sync (maps) and `/metrics`
/// (counters). Locked only for synchronous work, never across an await.
#[derive(Debug, Clone)]
pub struct SharedProbe(Arc<Mutex<PinnedProbe>>);

impl SharedProbe {
    /// Shares `probe`.
    pub fn new(probe: PinnedProbe) -> Self {
        Self(Arc::new(Mutex::new(probe)))
    }

    /// The probe, locked.
    pub fn lock(&self) -> MutexGuard<'_, PinnedProbe> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Attacher for SharedProbe {
    type Error = PinError;

    fn attached(&self) -> BTreeMap<String, u32> {
        self.lock().attached()
    }

    fn attach(&mut self, veth: &Veth) -> Result<(), PinError> {
        self.lock().attach(veth)
    }

    fn detach(&mut self, ifname: &str) -> Result<(), PinError> {
        self.lock().detach(ifname)
    }
}

impl PolicyMaps for SharedProbe {
    type Error = AyaMapError;

    fn capacity(&self) -> Result<Capacity, AyaMapError> {
        self.lock().probe().policy_maps().capacity()
    }

    fn read(&self) -> Result<DesiredState, AyaMapError> {
        self.lock().probe().policy_maps().read()
    }

    fn upsert_endpoint(
        &mut self,
        key: &EndpointKey,
        value: &EndpointState,
    ) -> Result<(), AyaMapError> {
        self.lock()
            .probe()
            .policy_maps()
            .upsert_endpoint(key, value)
    }

    fn delete_endpoint(&mut self, key: &EndpointKey) -> Result<(), AyaMapError> {
        self.lock().probe().policy_maps().delete_endpoint(key)
    }

    fn upsert_peer(&mut self, key: &PeerEntryKey, value: &PeerIdentity) -> Result<(), AyaMapError> {
        self.lock().probe().policy_maps().upsert_peer(key, value)
    }

    fn delete_peer(&mut self, key: &PeerEntryKey) -> Result<(), AyaMapError> {
        self.lock().probe().policy_maps().delete_peer(key)
    }

    fn upsert_policy(&mut self, key: &PolicyKey, value: &PolicyEntry) -> Result<(), AyaMapError> {
        self.lock().probe().policy_maps().upsert_policy(key, value)
    }

    fn delete_policy(&mut self, key: &PolicyKey) -> Result<(), AyaMapError> {
        self.lock().probe().policy_maps().delete_policy(key)
    }

    fn write_ruleset(&mut self, id: u32, value: &PolicyValue) -> Result<(), AyaMapError> {
        self.lock().probe().policy_maps().write_ruleset(id, value)
    }

    fn clear_ruleset(&mut self, id: u32) -> Result<(), AyaMapError> {
        self.lock().probe().policy_maps().clear_ruleset(id)
    }

    fn insert_node_addr(&mut self, key: &EndpointKey) -> Result<(), AyaMapError> {
        self.lock().probe().policy_maps().insert_node_addr(key)
    }

    fn delete_node_addr(&mut self, key: &EndpointKey) -> Result<(), AyaMapError> {
        self.lock().probe().policy_maps().delete_node_addr(key)
    }
}

/// The node's endpoints as the reconciler asks for them: discovered from the host routes of
/// the calling thread's network namespace, with the probe attached to their veths, and to
/// every other pod veth (pods the cluster has not named yet); and the node's own
/// addresses, read from the same namespace.
#[derive(Debug)]
pub struct NodeEndpoints {
    endpoints: Endpoints<SharedProbe>,
    node: String,
    names: VethNames,
    /// Whether the node's addresses pass ingress policy (then they are read and watched).
    node_ingress: NodeIngress,
    /// The node's addresses as last read: kept when a read fails.
    addresses: Vec<IpAddr>,
    /// Whether the addresses must be read again: at first, after the netlink watch heard one
    /// come or go (or dropped notifications), and after a failed read. Reading them costs a
    /// netlink dump of every link (~0.8 ms with 220 interfaces), so a pass that nothing about
    /// them started does not pay it.
    addresses_stale: bool,
    /// The netlink watch of the node's links, routes and (with `node_ingress: allow`)
    /// addresses; `None` if it could not be opened or failed (discovery then happens only on
    /// cluster changes and rechecks).
    watch: Option<LinkWatch>,
    /// Set by the first node change of a burst: when the burst's pass is due at the latest.
    /// Kept here, not in [`LocalEndpoints::changed`]'s future, which the loop may drop.
    burst_end: Option<tokio::time::Instant>,
    /// Whether [`NodeEndpoints::adopt`] ran: before, veths an earlier agent pinned are left
    /// to it (their entries are written, their programs swapped by the adoption).
    adopted: bool,
    discovery: Discovery,
    /// The pods that may be on this node (see [`NodeEndpoints::track`]), by `namespace/name`.
    pods: BTreeMap<String, LocalPod>,
    /// What the last call returned: the endpoints kept when a discovery fails.
    interfaces: BTreeMap<String, u32>,
    /// The addresses of those endpoints on another veth than their pod's (multi-NIC pods).
    extra_addresses: BTreeMap<IpAddr, u32>,
    /// Whether the last call attached every discovered veth.
    complete: bool,
}

impl NodeEndpoints {
    /// The endpoints of node `node` on the pod veths `names`, watching the links and routes
    /// of the calling thread's network namespace, and its addresses unless `node_ingress` is
    /// [`NodeIngress::Policy`] (call it inside the runtime).
    pub fn new(
        probe: SharedProbe,
        node: &str,
        names: &VethNames,
        node_ingress: NodeIngress,
    ) -> Self {
        let watch = LinkWatch::open(names, node_ingress == NodeIngress::Allow)
            .inspect_err(|error| {
                tracing::warn!(error = %Causes(error), "no netlink watch: new veths wait for the pod's watch event");
            })
            .ok();
        Self {
            endpoints: Endpoints::new(probe),
            node: node.to_owned(),
            names: names.clone(),
            node_ingress,
            addresses: Vec::new(),
            addresses_stale: true,
            watch,
            burst_end: None,
            adopted: false,
            discovery: Discovery::default(),
            pods: BTreeMap::new(),
            interfaces: BTreeMap::new(),
            extra_addresses: BTreeMap::new(),
            complete: false,
        }
    }

    /// Whether the last pass found every local endpoint's veth with the probe on it.
    pub fn complete(&self) -> bool {
        self.complete
    }

    /// Takes over the links of an earlier agent, then attaches and detaches to match the
    /// last discovery. Call once, after the first pass synced the maps.
    pub fn adopt(&mut self) -> Result<(), PinError> {
        let adoption = self.endpoints.attacher().lock().adopt()?;
        tracing::info!(
            adopted = adoption.adopted.len(),
            stale = adoption.stale.len(),
            old_layouts = adoption.old_layouts.len(),
            "links of an earlier agent adopted"
        );
        self.adopted = true;
        let applied = self.endpoints.apply(&self.discovery);
        self.complete = applied.failed.is_empty();
        Ok(())
    }
}

fn is_local(pod: &Pod, node: &str) -> bool {
    let Some(spec) = &pod.spec else {
        return false;
    };
    spec.host_network != Some(true)
        && spec
            .node_name
            .as_deref()
            .is_none_or(|name| node.is_empty() || name == node)
}

impl NodeEndpoints {
    /// The host interfaces the probe is on, by index, as flow records name them: the veth's
    /// name, and a branch ENI when discovery found one behind it (a `vlan…` veth, or a route
    /// through a VLAN of the trunk: [`Discovery::branch_eni`]).
    pub fn endpoint_interfaces(&self) -> HashMap<u32, EndpointInterface> {
        self.endpoints
            .attacher()
            .attached()
            .into_iter()
            .map(|(name, ifindex)| {
                let eni = match self.discovery.branch_eni.contains(&name) {
                    true => Eni::Branch,
                    false => Eni::Node,
                };
                (ifindex, EndpointInterface { name, eni })
            })
            .collect()
    }
}

impl LocalEndpoints for NodeEndpoints {
    /// Keeps the pods that may be on this node: those with an address, not `hostNetwork`,
    /// and scheduled here (or not scheduled anywhere yet, as in a snapshot set in code).
    fn track(&mut self, changed: &Updates<Pod>) {
        for ((namespace, name), pod) in changed {
            let key = format!("{namespace}/{name}");
            let local = pod
                .as_deref()
                .filter(|pod| is_local(pod, &self.node))
                .map(|pod| LocalPod {
                    pod: key.clone(),
                    ips: pod_addresses(pod),
                })
                .filter(|pod| !pod.ips.is_empty());
            match local {
                Some(local) => self.pods.insert(key, local),
                None => self.pods.remove(&key),
            };
        }
    }

    fn local(&mut self) -> BTreeMap<String, u32> {
        let pods: Vec<LocalPod> = self.pods.values().cloned().collect();
        match discover(&pods, &self.names) {
            Ok(discovery) => self.discovery = discovery,
            Err(error) => {
                // The previous endpoints stand (none before the first discovery).
                tracing::warn!(error = %Causes(&error), "endpoint discovery failed");
                self.complete = false;
                return self.interfaces.clone();
            }
        }
        if self.adopted {
            let applied = self.endpoints.apply(&self.discovery);
            self.complete = applied.failed.is_empty();
            self.interfaces = self.endpoints.interfaces();
            self.extra_addresses = self.endpoints.address_interfaces();
            return self.interfaces.clone();
        }
        // Before the adoption: new veths are attached now, veths pinned by an earlier agent
        // keep its programs (on the maps this pass syncs) until the adoption swaps them.
        let (pinned, fresh, fresh_links) = {
            let probe = self.endpoints.attacher().lock();
            let (pinned, fresh): (BTreeMap<_, _>, BTreeMap<_, _>) = self
                .discovery
                .veths
                .clone()
                .into_iter()
                .partition(|(_, veth)| probe.has_foreign_pins(&veth.ifname));
            let fresh_links: Vec<Veth> = self
                .discovery
                .links
                .iter()
                .filter(|veth| !probe.has_foreign_pins(&veth.ifname))
                .cloned()
                .collect();
            (pinned, fresh, fresh_links)
        };
        let (fresh_extra, pinned_extra): (BTreeMap<_, _>, BTreeMap<_, _>) = self
            .discovery
            .extra
            .clone()
            .into_iter()
            .partition(|(pod, _)| fresh.contains_key(pod));
        let applied = self.endpoints.apply(&Discovery {
            veths: fresh,
            links: fresh_links,
            extra: fresh_extra,
            ..Discovery::default()
        });
        self.complete = applied.failed.is_empty();
        let mut interfaces = self.endpoints.interfaces();
        let mut extra_addresses = self.endpoints.address_interfaces();
        extra_addresses.extend(pinned_extra.into_iter().flat_map(|(pod, addresses)| {
            let kept = pinned.contains_key(&pod);
            addresses
                .into_iter()
                .filter(move |_| kept)
                .map(|(ip, veth)| (ip, veth.ifindex))
        }));
        interfaces.extend(pinned.into_iter().map(|(pod, veth)| (pod, veth.ifindex)));
        self.interfaces = interfaces;
        self.extra_addresses = extra_addresses;
        self.interfaces.clone()
    }

    fn address_interfaces(&self) -> BTreeMap<IpAddr, u32> {
        self.extra_addresses.clone()
    }

    fn node_addresses(&mut self) -> Vec<IpAddr> {
        if self.node_ingress == NodeIngress::Policy {
            return Vec::new();
        }
        // Without the watch no change would be heard: read at every pass.
        if !self.addresses_stale && self.watch.is_some() {
            return self.addresses.clone();
        }
        match node_addresses::discover(&self.names) {
            Ok(addresses) => {
                if addresses != self.addresses {
                    tracing::info!(
                        ?addresses,
                        "node addresses: their traffic to local pods passes ingress policy"
                    );
                    self.addresses = addresses;
                }
                self.addresses_stale = false;
            }
            // The previous addresses stand (none before the first read); read again next pass.
            Err(error) => {
                tracing::warn!(error = %Causes(&error), "reading the node's addresses failed")
            }
        }
        self.addresses.clone()
    }

    fn changed(&mut self) -> impl Future<Output = ()> + Send {
        let Self {
            watch,
            endpoints,
            names,
            burst_end,
            addresses_stale,
            ..
        } = self;
        async move {
            let Some(link_watch) = watch.as_mut() else {
                return std::future::pending().await;
            };
            loop {
                let read = match *burst_end {
                    None => link_watch.next().await,
                    Some(end) => {
                        let quiet = (tokio::time::Instant::now() + NODE_QUIET).min(end);
                        match tokio::time::timeout_at(quiet, link_watch.next()).await {
                            Ok(read) => read,
                            Err(_) => {
                                *burst_end = None;
                                return;
                            }
                        }
                    }
                };
                let events = match read {
                    Ok(events) => events,
                    Err(error) => {
                        tracing::warn!(error = %Causes(&error), "netlink watch failed; new veths now wait for the pod's watch event");
                        *watch = None;
                        *burst_end = None;
                        return;
                    }
                };
                let mut links = events.new_links.clone();
                if events.overflowed {
                    match pod_links(names) {
                        Ok(all) => links = all,
                        Err(error) => {
                            tracing::warn!(error = %Causes(&error), "listing the veths after a netlink overflow")
                        }
                    }
                }
                // A new veth gets the probe before anything else: from here on its pod is
                // enforced (an unknown endpoint until its entries are written). The loop asks
                // for node changes only after a pass synced, and the adoption follows that
                // first pass: no earlier agent's pins are left to leave alone here.
                endpoints.attach_new(&links);
                *addresses_stale |= events.addresses_changed || events.overflowed;
                if events.relevant() && burst_end.is_none() {
                    *burst_end = Some(tokio::time::Instant::now() + NODE_BURST_MAX);
                }
            }
        }
    }
}

/// The probe's settings for `mode`.
fn probe_config(mode: EnforcementMode) -> Config {
    let flags = match mode {
        EnforcementMode::Strict => 0,
        EnforcementMode::Standard => config_flags::ALLOW_UNKNOWN_ENDPOINTS,
    };
    // Zero fields are the probe's defaults.
    Config {
        flags,
        ..Config::default()
    }
}

/// What a program that runs the agent in its own process (the lab) may plug in; a node's
/// agent runs with none. Everything else is the node's code path.
#[derive(Default)]
pub struct Hooks {
    /// Sees every event the collector reads, in order.
    pub tap: Option<Tap>,
    /// Gets every pass that synced: what the maps hold from then on.
    pub passes: Option<mpsc::UnboundedSender<Synced>>,
    /// Barriers: each is answered once every event the probe wrote before it has gone
    /// through the collector, with the node's state then.
    pub barriers: Option<mpsc::UnboundedReceiver<oneshot::Sender<NodeState>>>,
    /// Attach new veths through clsact filters even where TCX exists.
    pub prefer_clsact: bool,
}

/// A pass that synced the maps.
#[derive(Debug, Clone)]
pub struct Synced {
    /// The source's update the pass compiled, for a source that numbers them (a
    /// `StaticSource`: the number its handle's `set` returned).
    pub update: Option<u64>,
    /// The node's addresses the pass compiled (empty with `agent.node_ingress: policy`).
    pub node_addresses: Vec<IpAddr>,
    /// The compilation the maps now hold.
    pub compiled: Compiled,
    /// What the pass did.
    pub report: Report,
}

/// The node as a barrier finds it.
#[derive(Debug, Clone)]
pub struct NodeState {
    /// The probe's counters, summed over CPUs; `None` when they could not be read.
    pub counters: Option<Counters>,
    /// How the probe is attached to each veth, by name.
    pub attached: BTreeMap<String, AttachMode>,
    /// The collector's counters.
    pub collector: Arc<tollgate_collector::metrics::Metrics>,
}

/// Runs the node agent on `source` until `shutdown` completes or the source ends; see the
/// module doc. Endpoint discovery and attach run in the network namespace of the runtime's
/// threads (the node's: the agent runs with `hostNetwork`).
pub async fn run_agent<S: ClusterSource>(
    config: AgentConfig,
    source: S,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DaemonError> {
    run_agent_with(config, source, shutdown, Hooks::default())
        .await
        .map(drop)
}

/// The pod veths of this node: the prefix of `agent.interface_prefix`, of the VPC CNI's
/// configuration, or of `AWS_VPC_K8S_CNI_VETHPREFIX`, down to `eni` ([`VethNames::load`]),
/// each source that could not be used logged at error with its file and field.
fn veth_names(settings: &AgentSettings) -> VethNames {
    let env = std::env::var(VETH_PREFIX_ENV).ok();
    let (names, problems) = VethNames::load(
        settings.interface_prefix.as_deref(),
        &settings.cni_config,
        env.as_deref(),
    );
    for problem in &problems {
        tracing::error!(error = %problem, "VPC CNI setting not used; trying the next source");
    }
    tracing::info!(
        prefix = names.prefix(),
        source = ?names.source(),
        "pod veths: <prefix>… and vlan… (branch-ENI pods, strict mode)"
    );
    names
}

/// [`run_agent`] with `hooks`; what the collector delivered when it stopped.
pub async fn run_agent_with<S: ClusterSource>(
    config: AgentConfig,
    source: S,
    shutdown: impl Future<Output = ()>,
    hooks: Hooks,
) -> Result<Stopped, DaemonError> {
    let settings = &config.agent;
    // Waiting for the lock sleeps: off the runtime's threads.
    let bpffs = settings.bpffs.clone();
    let mut pinned = tokio::task::spawn_blocking(move || PinnedProbe::open(&bpffs, LOCK_WAIT))
        .await
        .unwrap_or_else(|error| std::panic::resume_unwind(error.into_panic()))?;
    pinned
        .probe()
        .set_config(&probe_config(settings.enforcement))?;
    pinned.prefer_clsact(hooks.prefer_clsact);
    let reader = pinned.probe().take_events()?;
    let probe = SharedProbe::new(pinned);

    let identities = Arc::new(Mutex::new(Identities::default()));
    // Enforcement never waits on the flow log: a collector that cannot start is reported,
    // the agent enforces without it (the probe counts the events nobody reads, which the
    // next collector records as `ringbuf-full`), and its error ends the run once stopped.
    let (collector, collector_failed) = match Collector::start(
        &config.collector,
        reader,
        Arc::clone(&identities),
        hooks.tap,
    )
    .await
    {
        Ok((collector, recovery)) => {
            tracing::info!(
                sink = collector.sink(),
                pending = recovery.pending,
                "collector started"
            );
            (Some(collector), None)
        }
        Err(error) => {
            tracing::error!(
                error = %Causes(&error),
                "the collector could not start; enforcing without a flow log"
            );
            (None, Some(error))
        }
    };
    let collector_metrics = collector
        .as_ref()
        .map_or_else(Arc::default, |collector| Arc::clone(collector.metrics()));

    let metrics = Arc::new(AgentMetrics::default());
    let ready = Arc::new(AtomicBool::new(false));
    let liveness = Arc::new(Liveness::default());
    let servers = start_http(
        &config,
        &probe,
        &metrics,
        &collector_metrics,
        &ready,
        &liveness,
    )
    .await?;

    let names = veth_names(settings);
    let node_endpoints = NodeEndpoints::new(
        probe.clone(),
        &config.collector.node,
        &names,
        settings.node_ingress,
    );
    let mut agent = Agent::new(source, node_endpoints);
    agent.check_drift_every(Duration::from_secs(settings.drift_check_secs));
    let mut maps = probe.clone();
    let (passes, mut barriers) = (hooks.passes, hooks.barriers);
    let result = async {
        let mut shutdown = std::pin::pin!(shutdown);
        let mut adopted = false;
        let mut heartbeat = tokio::time::interval(HEARTBEAT);
        loop {
            liveness.beat();
            let barrier = async {
                match barriers.as_mut() {
                    Some(barriers) => barriers.recv().await,
                    None => std::future::pending().await,
                }
            };
            let pass = tokio::select! {
                () = &mut shutdown => break,
                _ = heartbeat.tick() => continue,
                Some(reply) = barrier => {
                    if let Some(collector) = &collector {
                        collector.sync().await?;
                    }
                    let _ = reply.send(node_state(&probe, &collector_metrics));
                    continue;
                }
                pass = agent.next(&mut maps) => pass,
            };
            let pass = match pass {
                None => {
                    tracing::info!("the cluster source ended");
                    break;
                }
                Some(Err(_)) => {
                    // Logged by the loop; retried by the next call.
                    metrics.sync_failures.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                Some(Ok(pass)) => pass,
            };
            if !adopted {
                agent.endpoints_mut().adopt()?;
                adopted = true;
            }
            let interfaces = agent.endpoints().endpoint_interfaces();
            if let Some(compiled) = agent.synced() {
                let mut identities = identities.lock().unwrap_or_else(PoisonError::into_inner);
                let now = boottime_ns();
                identities.observe(pass.pods, agent.node_addresses(), compiled, now);
                identities.observe_interfaces(interfaces, now);
                drop(identities);
                if let Some(passes) = &passes {
                    let _ = passes.send(Synced {
                        update: pass.update,
                        node_addresses: agent.node_addresses().to_vec(),
                        compiled: compiled.clone(),
                        report: pass.report.clone(),
                    });
                }
            }
            metrics.passes.fetch_add(1, Ordering::Relaxed);
            metrics
                .endpoints
                .store(pass.report.programmed as u64, Ordering::Relaxed);
            metrics.set_map_usage(pass.report.usage);
            if let Some(repairs) = &pass.drift {
                metrics.count_drift_repairs(repairs);
            }
            if let Some(latency) = pass.latency {
                metrics.observe_latency(latency);
            }
            if !agent.endpoints().complete() {
                agent.pass_again_after(RECHECK);
            } else if !ready.swap(true, Ordering::Relaxed) {
                tracing::info!(
                    endpoints = pass.report.endpoints,
                    "ready: every local endpoint programmed"
                );
            }
        }
        Ok::<(), DaemonError>(())
    }
    .await;

    for server in servers {
        server.abort();
    }
    let stopped = match collector {
        Some(collector) => collector.stop(SHIP_WITHIN).await,
        None => Ok(Stopped::default()),
    };
    drop(agent);
    drop(maps);
    // The pins and links stay: enforcement goes on until the next agent adopts them.
    drop(probe);
    result?;
    if let Some(error) = collector_failed {
        return Err(error.into());
    }
    let stopped = stopped?;
    tracing::info!("agent stopped; pinned maps and links left in place");
    Ok(stopped)
}

/// The probe's counters and attachments, and the collector's counters.
fn node_state(
    probe: &SharedProbe,
    collector: &Arc<tollgate_collector::metrics::Metrics>,
) -> NodeState {
    let mut pinned = probe.lock();
    let counters = pinned
        .probe()
        .counters()
        .inspect_err(|error| tracing::warn!(error = %Causes(error), "reading the probe's counters"))
        .ok();
    NodeState {
        counters,
        attached: pinned.attach_modes(),
        collector: Arc::clone(collector),
    }
}

/// Binds `/metrics` and the health endpoints (one listener when both addresses are the same).
async fn start_http(
    config: &AgentConfig,
    probe: &SharedProbe,
    metrics: &Arc<AgentMetrics>,
    collector: &Arc<tollgate_collector::metrics::Metrics>,
    ready: &Arc<AtomicBool>,
    liveness: &Arc<Liveness>,
) -> Result<Vec<tokio::task::JoinHandle<()>>, DaemonError> {
    let render_metrics = {
        let (probe, metrics, collector) =
            (probe.clone(), Arc::clone(metrics), Arc::clone(collector));
        move || {
            match probe.lock().probe().counters() {
                Ok(counters) => {
                    for (slot, value) in metrics.probe.iter().zip(counters.0) {
                        slot.store(value, Ordering::Relaxed);
                    }
                }
                Err(error) => {
                    tracing::warn!(error = %Causes(&error), "reading the probe's counters")
                }
            }
            let mut body = metrics.render_prometheus();
            body.push_str(&collector.render_prometheus());
            body
        }
    };
    let health = {
        let (ready, liveness) = (Arc::clone(ready), Arc::clone(liveness));
        move |path: &str| match path {
            "/healthz" => Some(match liveness.stalled_for() {
                None => Response::text(200, "ok\n"),
                Some(stalled) => Response::text(
                    503,
                    format!("stalled: the agent's loop has not turned for {stalled:?}\n"),
                ),
            }),
            "/readyz" if ready.load(Ordering::Relaxed) => Some(Response::text(200, "ready\n")),
            "/readyz" => Some(Response::text(503, "not ready: first sync pending\n")),
            _ => None,
        }
    };
    let metrics_route = move |path: &str| {
        (path == "/metrics").then(|| Response {
            status: 200,
            content_type: "text/plain; version=0.0.4; charset=utf-8",
            body: render_metrics(),
        })
    };
    let settings = &config.agent;
    let mut routes: Vec<(SocketAddr, Routes)> = Vec::new();
    if settings.metrics_address == settings.health_address {
        routes.push((
            settings.metrics_address,
            Arc::new(move |path: &str| metrics_route(path).or_else(|| health(path))),
        ));
    } else {
        routes.push((settings.metrics_address, Arc::new(metrics_route)));
        routes.push((settings.health_address, Arc::new(health)));
    }
    let mut servers = Vec::new();
    for (address, routes) in routes {
        let listener = TcpListener::bind(address)
            .await
            .map_err(|source| DaemonError::Bind { address, source })?;
        tracing::info!(%address, "serving http");
        servers.push(tokio::spawn(serve(listener, routes)));
    }
    Ok(servers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_is_printed_with_each_cause_once() {
        let full = || std::io::Error::from_raw_os_error(libc::ENOSPC);
        let spool = DaemonError::Collector(CollectorError::Spool(
            tollgate_collector::spool::SpoolError {
                path: "/var/lib/tollgate/spool/state".into(),
                what: "allocating",
                source: full(),
            },
        ));
        // Its own message names what failed, not why: the lab printed only this.
        assert!(!spool.to_string().contains("No space left on device"));
        assert_eq!(
            Causes(&spool).to_string(),
            "spool /var/lib/tollgate/spool/state: allocating: No space left on device (os error 28)"
        );
        // A message that already ends with its cause does not get it twice.
        let bind = DaemonError::Bind {
            address: "127.0.0.1:9100".parse().unwrap(),
            source: full(),
        };
        assert_eq!(
            Causes(&bind).to_string(),
            "binding 127.0.0.1:9100: No space left on device (os error 28)"
        );
    }

    #[test]
    fn a_loop_that_stops_turning_fails_the_health_check() {
        let liveness = Liveness::default();
        assert_eq!(liveness.stalled_for(), None);
        let stuck = Liveness {
            started: std::time::Instant::now() - STALLED_AFTER - Duration::from_secs(5),
            last_ms: AtomicU64::new(0),
        };
        assert!(stuck.stalled_for().is_some_and(|d| d > STALLED_AFTER));
        stuck.beat();
        assert_eq!(stuck.stalled_for(), None);
    }
}
