//! `tollgate lab`: the seed scenario for real, on one machine, with no cluster.
//!
//! Data flows through the modules in this order:
//! - [`family`] and [`pods`]: the seed's pods and Services of one address family
//!   (`examples/seed/` for IPv4, `examples/seed/ipv6/`, embedded) → the lab's pods, their
//!   addresses and what each one serves, the Services' ClusterIPs.
//! - [`names`] and [`topology`]: a node network namespace (with the node's own address on a
//!   dummy `eth0`) and one per pod, wired like the AWS VPC CNI (host veth `eni…` in the node,
//!   `eth0` with a /32 or /128 in the pod, static neighbors, host routes; with `--sgp` the
//!   client on a branch ENI: a `vlan…` veth, a VLAN of the trunk, a per-VLAN table and a VPC
//!   namespace); [`netns`] runs code inside one of them.
//! - [`enforce`]: the node agent (`tollgate agent`'s code path, with a static cluster source
//!   instead of the API server) in the node namespace, on a bpffs of the run's own
//!   ([`bpffs`]): it attaches the probe to the pods' host veths, and for each step compiles the
//!   policies and Services and syncs the maps.
//! - [`kubeproxy`]: the Services' backends as the compiler resolved them → kube-proxy's
//!   `KUBE-SERVICES` → `KUBE-SVC-…` → `KUBE-SEP-…` DNAT chains, with the machine's iptables,
//!   in the node namespace.
//! - [`flowlog`]: the agent's collector on the probe's ring buffer, writing Parquet flow
//!   records into a local directory in the bucket's layout (`--out`), read back at the end.
//! - [`resolv`] (each pod's `resolv.conf`, as the kubelet writes it), [`servers`] (Debian's
//!   nginx, apache2 and dnsmasq in the pods), [`kubelet`] (probes from the node) and
//!   [`client`] (curl in the amazonlinux pod).
//! - [`scenario`]: the seed's steps, policies and expected outcomes; [`walk`] runs them, and
//!   [`run`] runs the walk under a time limit and the signal handlers.
//! - [`isolate`] (with `--quarantine`): the lab's objects as the cluster `tollgate quarantine`
//!   acts on, and the client's evidence bundle at the end.
//! - [`report`]: each step's checks and flow events, and the flow log's denied flows, as a
//!   table or as JSON lines.
//!
//! Everything the lab creates is named with one run prefix and removed when the run ends: on
//! success, on error, on panic (drop guards) and on Ctrl-C/SIGTERM/SIGHUP, the server processes
//! included. Test traffic never leaves the namespaces the run creates: addresses come from
//! 198.18.0.0/15 and 2001:db8::/32 and are only put on interfaces inside them, iptables runs in
//! the node namespace only, and neither the node namespace nor the VPC namespace of `--sgp` has
//! a route out.

pub mod bench;
pub mod bpffs;
pub mod client;
pub mod enforce;
pub mod family;
pub mod flowlog;
pub mod isolate;
pub mod kubelet;
pub mod kubeproxy;
pub mod names;
pub mod netns;
pub mod pods;
pub mod report;
pub mod resolv;
pub mod scenario;
pub mod servers;
pub mod topology;
pub mod walk;

use std::path::PathBuf;
use std::time::Duration;

use tokio::signal::unix::SignalKind;
use tollgate_enforcer::snapshot::InputError;

pub use family::IpFamily;
pub use report::{CheckResult, LabReport, NamedEvent, StepReport};

/// Longest a whole lab run may take before it is stopped (and cleaned up): the seed's steps
/// take about 25 s, the incident steps of `--quarantine` about 15 s more.
pub const RUN_TIME_LIMIT: Duration = Duration::from_secs(120);

/// How the lab's report is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutputFormat {
    /// A readable table per step, with its flow events.
    #[default]
    Table,
    /// One JSON object per check per line.
    Json,
}

/// Options of a lab run.
#[derive(Debug, Clone, Default)]
pub struct LabOptions {
    /// How the report is meant to be printed ([`LabReport::render`]).
    pub output: OutputFormat,
    /// How the probe is attached to the host veths.
    pub attach: Attach,
    /// The flow directory to write into (kept); a temporary one named after the run when
    /// absent (also kept, and named in the report).
    pub out: Option<PathBuf>,
    /// After the seed's steps, an audit-mode default-deny step, then the client quarantined
    /// (`tollgate quarantine`'s code on the lab's objects) and its evidence bundle written
    /// to `<out>/evidence`.
    pub quarantine: bool,
    /// The cluster's address family: the seed on IPv4 (the default) or on IPv6.
    pub ip_family: IpFamily,
    /// The client (`default/amazonlinux`) as a pod with security groups: a branch ENI in the
    /// VPC CNI's strict mode (IPv4 only; [`topology`]).
    pub sgp: bool,
    /// The records as OCSF for Amazon Security Lake too, beside the flow log in the custom
    /// source's layout (`<out>/ext/tollgate/…`; [`flowlog`]).
    pub ocsf: bool,
}

/// How the probe is attached to the host veths.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Attach {
    /// TCX links where the kernel has them, else a clsact qdisc (what the agent does).
    #[default]
    Auto,
    /// A clsact qdisc even where TCX exists: the fallback path, for older kernels.
    Clsact,
}

/// Why a lab run failed (as opposed to: ran, and some outcome differed from the seed, which
/// the [`LabReport`] tells).
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// The lab needs root: network namespaces, veths and BPF.
    #[error("the lab needs root (network namespaces, veths, BPF)")]
    NotRoot,
    /// Invalid objects in a manifest the lab reads, or pods the lab cannot run.
    #[error("{manifest}: {}", join_errors(errors))]
    Input {
        /// The manifest's name.
        manifest: String,
        /// Every problem, naming object and field.
        errors: Vec<InputError>,
    },
    /// A file or directory of the run could not be written or removed.
    #[error("{what} {path}")]
    File {
        /// The path.
        path: PathBuf,
        /// What was being done.
        what: &'static str,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
    /// A command (iproute2, iptables, a server) failed.
    #[error("`{command}` failed: {message}")]
    Command {
        /// The command line.
        command: String,
        /// Its exit status and standard error.
        message: String,
    },
    /// Entering a network namespace failed.
    #[error("entering network namespace {netns}")]
    Netns {
        /// The namespace's name.
        netns: String,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
    /// A socket could not be created or bound inside a pod.
    #[error("{what} in pod {pod}")]
    Socket {
        /// The pod, as `namespace/name`.
        pod: String,
        /// Which socket.
        what: String,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
    /// The lab's pods lack something the walk needs.
    #[error("lab pods: {0}")]
    Scenario(String),
    /// The compiler refused part of a step's objects.
    #[error("step {step}: compiling: {}", join_errors(errors))]
    Compile {
        /// The step's number.
        step: u32,
        /// What the compiler reported.
        errors: Vec<InputError>,
    },
    /// The run's bpffs could not be set up.
    #[error("bpffs {path}: {what}")]
    Bpffs {
        /// Its mount point.
        path: PathBuf,
        /// What was being done.
        what: &'static str,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
    /// The node agent failed to start, sync a step, or stop.
    #[error("node agent: {0}")]
    Agent(String),
    /// The flow directory could not be read back.
    #[error("flow log: reading the flow directory back")]
    FlowRead(#[from] tollgate_collector::readback::ReadError),
    /// Files did not reach the flow directory in time.
    #[error("flow log: {left} files were not delivered to {dir} (still in the spool {spool})")]
    Undelivered {
        /// Files left.
        left: u64,
        /// The flow directory.
        dir: PathBuf,
        /// The spool that still holds them.
        spool: PathBuf,
    },
    /// Signal handlers could not be installed.
    #[error("installing signal handlers")]
    Signals(#[source] std::io::Error),
    /// The run was stopped by a signal; everything it created was removed.
    #[error("interrupted by {0}; cleaned up")]
    Interrupted(&'static str),
    /// The incident steps (`--quarantine`) failed: the quarantine, its record, the bundle.
    #[error("incident: {0}")]
    Incident(String),
    /// The run took longer than [`RUN_TIME_LIMIT`]; everything it created was removed.
    #[error("the lab did not finish within {0:?}; cleaned up")]
    TimedOut(Duration),
}

fn join_errors(errors: &[InputError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Runs the seed scenario: builds the topology, loads and attaches the probe, installs
/// kube-proxy's chains, starts the servers and the kubelet, walks the steps, and removes
/// everything it created before returning.
///
/// Returns the report even when outcomes differ from the seed ([`LabReport::all_ok`] tells);
/// errors are reserved for runs that could not be carried out. Ctrl-C, SIGTERM and SIGHUP (a
/// closed terminal) stop the run with [`LabError::Interrupted`], after cleanup.
pub async fn run(options: &LabOptions) -> Result<LabReport, LabError> {
    if !rustix::process::geteuid().is_root() {
        return Err(LabError::NotRoot);
    }
    topology::sweep_stale();
    bpffs::sweep_stale();
    resolv::sweep_stale();
    servers::sweep_stale();
    let names = names::RunNames::new();
    tracing::info!(run = names.prefix(), family = %options.ip_family, output = ?options.output,
        "lab starting");
    let listen = |kind| tokio::signal::unix::signal(kind).map_err(LabError::Signals);
    let mut sigterm = listen(SignalKind::terminate())?;
    // A closed terminal (an SSH session that drops) sends SIGHUP, whose default action ends
    // the process without any cleanup.
    let mut sighup = listen(SignalKind::hangup())?;
    // Dropping the walk (on a signal or the time limit) drops its guards: servers stop, the
    // probe detaches, the namespaces go.
    tokio::select! {
        walked = tokio::time::timeout(RUN_TIME_LIMIT, walk::walk(names, options)) => {
            walked.map_err(|_| LabError::TimedOut(RUN_TIME_LIMIT))?
        }
        _ = tokio::signal::ctrl_c() => Err(LabError::Interrupted("SIGINT")),
        _ = sigterm.recv() => Err(LabError::Interrupted("SIGTERM")),
        _ = sighup.recv() => Err(LabError::Interrupted("SIGHUP")),
    }
}
