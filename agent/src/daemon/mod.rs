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
//!
//! The parts: this module wires them and runs the loop; [`NodeEndpoints`] (`node_endpoints`)
//! discovers the node's endpoints and attaches the probe; [`SharedProbe`] (`shared_probe`)
//! lets the loop, the link watch and the HTTP routes share the pinned probe; `health` keeps
//! the loop's [`Liveness`] and serves `/metrics`, `/healthz` and `/readyz`.

mod health;
mod node_endpoints;
mod shared_probe;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tollgate_collector::{
    clock::monotonic_ns,
    identity::Identities,
    pipeline::Tap,
    service::{Collector, CollectorError, Stopped},
};
use tollgate_enforcer::{
    compile::Compiled,
    probe::{AttachMode, Counters, ProbeError},
};
use tollgate_schemas::{Config, config_flags};

use crate::cni::{VETH_PREFIX_ENV, VethNames};
use crate::config::{AgentConfig, AgentSettings, EnforcementMode};
use crate::metrics::AgentMetrics;
use crate::naming::naming;
use crate::pins::{PinError, PinnedProbe};
use crate::reconcile::Report;
use crate::run::Agent;
use crate::source::ClusterSource;
use tollgate_enforcer::causes::Causes;

pub use health::{Liveness, STALLED_AFTER};
pub use node_endpoints::NodeEndpoints;
pub use shared_probe::SharedProbe;

use health::start_http;

/// How long [`run_agent`] waits for another agent to release the pins (a rolling update).
pub const LOCK_WAIT: Duration = Duration::from_secs(30);

/// How long the collector may ship on shutdown (the DaemonSet's grace period is longer).
pub const SHIP_WITHIN: Duration = Duration::from_secs(20);

/// How soon a pass runs again when the last one left a local endpoint without the probe (a
/// failed attach or discovery), even if the cluster does not change.
pub const RECHECK: Duration = Duration::from_secs(1);

/// How often the agent's loop shows it turns, when nothing else happens.
const HEARTBEAT: Duration = Duration::from_secs(5);

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
                Some(Err(error)) => {
                    // Logged by the loop; retried by the next call.
                    metrics.count_sync_failure(&error);
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
                let now = monotonic_ns();
                identities.observe(naming(pass.pods, agent.node_addresses(), compiled), now);
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
        // Each cause once, after the message that names what failed.
        let bind = DaemonError::Bind {
            address: "127.0.0.1:9100".parse().unwrap(),
            source: full(),
        };
        assert_eq!(
            Causes(&bind).to_string(),
            "binding 127.0.0.1:9100: No space left on device (os error 28)"
        );
    }
}
