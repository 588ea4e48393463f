//! Enforcement in the lab: the node agent itself (`tollgate_agent::daemon::run_agent_with`) in
//! the lab's node, on the code path it runs on EKS except for the cluster source — a
//! `StaticSource` that the walk sets to each step's snapshot instead of the API server's
//! watches.
//!
//! [`NodeAgent::start`] mounts the run's bpffs ([`crate::bpffs`]) and starts the agent on a
//! thread of its own inside the node namespace (discovery reads that namespace's routes, the
//! probe is attached by interface name there, the netlink watch listens there), with its own
//! current-thread runtime. Like on a node, the agent pins its maps and links, finds the pods'
//! host veths from their `/32` routes, attaches the probe to them before their entries are
//! written (in strict mode their traffic is denied until then), compiles, syncs by
//! difference, and runs the collector on the probe's ring buffer. The walk talks to it through
//! the agent's hooks: [`NodeAgent::apply`] sets a step's snapshot and waits for the pass that
//! synced it ([`NodeAgent::synced`] only waits: for the first step's); [`NodeAgent::barrier`]
//! waits until the collector has every event so far and returns the probe's counters;
//! [`NodeAgent::stop`] stops the agent (the collector ships its last files) and unmounts the
//! bpffs, which takes the pinned links and maps with it.

use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tollgate_agent::{
    config::AgentConfig,
    daemon::{Hooks, NodeState, Synced, run_agent_with},
    source::{StaticHandle, StaticSource},
};
use tollgate_collector::{config::CollectorConfig, pipeline::Tap, service::Stopped};
use tollgate_enforcer::{causes::Causes, snapshot::Snapshot};

use crate::{Attach, LabError, bpffs::RunBpffs, netns::netns_path, topology::Topology};

/// Longest the lab waits for the agent to sync a step.
const PASS_WITHIN: Duration = Duration::from_secs(10);

/// The agent running in the lab's node.
pub struct NodeAgent {
    handle: Option<StaticHandle>,
    /// The number of the handle's last update (0: the first step's snapshot).
    update: u64,
    passes: mpsc::UnboundedReceiver<Synced>,
    barriers: mpsc::UnboundedSender<oneshot::Sender<NodeState>>,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<Result<Stopped, String>>>,
    /// Dropped after the agent's thread ended: unmounting takes the pins with it.
    bpffs: Option<RunBpffs>,
}

impl NodeAgent {
    /// Starts the agent in `topology`'s node on `first` (the first step's snapshot), with the
    /// collector of `collector` (its events also go to `tap`). Returns once the agent runs;
    /// [`NodeAgent::synced`] waits for its first pass.
    pub fn start(
        topology: &Topology,
        attach: Attach,
        collector: CollectorConfig,
        tap: Tap,
        first: Snapshot,
    ) -> Result<Self, LabError> {
        let bpffs = RunBpffs::mount(topology.names().prefix())?;
        let mut config = AgentConfig::default();
        config.agent.bpffs = bpffs.root().to_owned();
        // The lab's pods are named as the VPC CNI names them by default (`eni…`, `vlan…`):
        // no CNI configuration of the machine's own is read.
        config.agent.cni_config = topology.names().run_dir().join("10-aws.conflist");
        config.collector = collector;
        let (source, handle) = StaticSource::new(first);
        let (passes_in, passes) = mpsc::unbounded_channel();
        let (barriers, barriers_in) = mpsc::unbounded_channel();
        let (shutdown, stopped) = oneshot::channel::<()>();
        let hooks = Hooks {
            tap: Some(tap),
            passes: Some(passes_in),
            barriers: Some(barriers_in),
            prefer_clsact: attach == Attach::Clsact,
        };
        let node = topology.node_netns().to_owned();
        let netns = std::fs::File::open(netns_path(&node)).map_err(|source| LabError::Netns {
            netns: node.clone(),
            source,
        })?;
        let thread = std::thread::Builder::new()
            .name("tollgate-agent".to_owned())
            .spawn(move || {
                use std::os::fd::AsFd;
                // Only this thread (and the threads it starts, which inherit it) moves into
                // the node namespace.
                if let Err(error) = rustix::thread::move_into_link_name_space(
                    netns.as_fd(),
                    Some(rustix::thread::LinkNameSpaceType::Network),
                ) {
                    return Err(format!("entering network namespace {node}: {error}"));
                }
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|error| format!("the agent's runtime: {error}"))?;
                runtime
                    .block_on(run_agent_with(
                        config,
                        source,
                        async {
                            let _ = stopped.await;
                        },
                        hooks,
                    ))
                    .map_err(|error| Causes(&error).to_string())
            })
            .map_err(|error| LabError::Agent(format!("starting its thread: {error}")))?;
        Ok(Self {
            handle: Some(handle),
            update: 0,
            passes,
            barriers,
            shutdown: Some(shutdown),
            thread: Some(thread),
            bpffs: Some(bpffs),
        })
    }

    /// Makes `snapshot` the cluster and waits for the agent's pass that synced it (see
    /// [`NodeAgent::synced`]).
    pub async fn apply(&mut self, step: u32, snapshot: &Snapshot) -> Result<Synced, LabError> {
        if let Some(handle) = &self.handle {
            self.update = handle.set(snapshot.clone());
        }
        self.synced(step).await
    }

    /// Waits for the agent's pass that synced the last snapshot (the first step's, given to
    /// [`NodeAgent::start`], or the one last [`NodeAgent::apply`]-ed): the maps hold it from
    /// then on. The compiler must accept every object of a step: the lab's manifests are exact.
    pub async fn synced(&mut self, step: u32) -> Result<Synced, LabError> {
        let update = self.update;
        let synced = tokio::time::timeout(PASS_WITHIN, async {
            while let Some(synced) = self.passes.recv().await {
                if synced.update.is_some_and(|synced| synced >= update) {
                    return Some(synced);
                }
            }
            None
        })
        .await
        .map_err(|_| {
            LabError::Agent(format!("step {step} was not synced within {PASS_WITHIN:?}"))
        })?;
        let Some(synced) = synced else {
            return Err(self.ended().await);
        };
        if !synced.report.errors.is_empty() {
            return Err(LabError::Compile {
                step,
                errors: synced.report.errors,
            });
        }
        tracing::info!(
            step,
            endpoints = synced.report.endpoints,
            writes = %synced.report.sync,
            "policy maps synced by the agent"
        );
        Ok(synced)
    }

    /// Waits until the collector has taken in every event the probe wrote so far; the node's
    /// state then.
    pub async fn barrier(&mut self) -> Result<NodeState, LabError> {
        let (reply, state) = oneshot::channel();
        if self.barriers.send(reply).is_err() {
            return Err(self.ended().await);
        }
        match state.await {
            Ok(state) => Ok(state),
            Err(_) => Err(self.ended().await),
        }
    }

    /// Stops the agent: the collector closes its windows and files and ships them; the pins
    /// are removed with the run's bpffs.
    pub async fn stop(mut self) -> Result<Stopped, LabError> {
        self.handle = None;
        drop(self.shutdown.take());
        let stopped = self.join().await;
        drop(self.bpffs.take());
        stopped
    }

    /// Why the agent ended before it was stopped.
    async fn ended(&mut self) -> LabError {
        match self.join().await {
            Ok(_) => LabError::Agent("it ended before the walk did".to_owned()),
            Err(error) => error,
        }
    }

    /// Waits for the agent's thread to end; what its collector shipped.
    async fn join(&mut self) -> Result<Stopped, LabError> {
        let thread = self.thread.take();
        let joined = tokio::task::spawn_blocking(move || thread.map(JoinHandle::join))
            .await
            .map_err(|error| LabError::Agent(error.to_string()))?;
        match joined {
            Some(Ok(Ok(stopped))) => Ok(stopped),
            Some(Ok(Err(error))) => Err(LabError::Agent(error)),
            Some(Err(_)) => Err(LabError::Agent("its thread panicked".to_owned())),
            None => Err(LabError::Agent("already stopped".to_owned())),
        }
    }
}

impl Drop for NodeAgent {
    /// A walk that failed or was stopped: the agent stops (its collector keeps what it has in
    /// the spool) before the bpffs is unmounted.
    fn drop(&mut self) {
        self.handle = None;
        drop(self.shutdown.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        drop(self.bpffs.take());
    }
}
