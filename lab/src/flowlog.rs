//! The lab's flow log: the agent's collector on the probe's ring buffer, writing Parquet into
//! a local directory in the bucket's layout, then read back for the report.
//!
//! [`FlowLog::new`] gives the collector settings the agent runs with (cluster `lab`, node
//! `lab-node`, sink the `--out` directory or a temporary one that is kept, spool in its hidden
//! `.spool/`, which readers of the layout skip: a run stopped by a signal leaves its last
//! records there, and the next run into the same directory delivers them first, as an agent
//! restart would) and a tap on the events it reads. The agent names records with the pods and
//! policies of each pass, as on a node. [`FlowLog::step_events`] returns a step's own events
//! after the agent's barrier (every event written so far has gone through the collector).
//! [`FlowLog::finish`] reads the denied flows back from the Parquet files once the agent has
//! stopped (every window and file closed and delivered).
//!
//! With `--ocsf` the collector also writes the records as OCSF for Amazon Security Lake, into
//! the same directory in the custom source's layout (`ext/tollgate/region=lab/
//! accountId=000000000000/eventDay=…/`), through the same spool and digest chain; the flow
//! log's readers skip `ext/`, and `schemas/athena/run_duckdb.py` reads it as `ocsf_flows`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use tollgate_agent::daemon::NodeState;
use tollgate_collector::{
    clock::{NS_PER_S, unix_now_ns},
    config::{CollectorConfig, DigestConfig, SecurityLakeConfig, SigningConfig, SinkConfig},
    identity::Identities,
    loss::LossSource,
    metrics::Metrics,
    pipeline::Tap,
    readback::{Filter, StoredRecord, read_dir},
    service::Stopped,
};
use tollgate_schemas::FlowEvent;

use crate::{LabError, report::NamedEvent};

/// The lab's cluster name, in every record and path.
pub const CLUSTER: &str = "lab";

/// The lab's node name (the pods' `spec.nodeName`).
pub const NODE: &str = "lab-node";

/// The custom source the lab's OCSF objects are written for (`--ocsf`).
pub const OCSF_SOURCE: &str = "tollgate";

/// The region and account of the lab's custom source: names for the partitions, not AWS's.
pub const OCSF_REGION: &str = "lab";
/// See [`OCSF_REGION`].
pub const OCSF_ACCOUNT: &str = "000000000000";

/// What the flow log holds at the end of the run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlowLogSummary {
    /// The flow directory (kept after the run).
    pub dir: PathBuf,
    /// Records of this run in it (loss records included).
    pub records: usize,
    /// Parquet files in it.
    pub files: u64,
    /// Events the collector read.
    pub events: u64,
    /// Events lost anywhere (kernel, collector, spool).
    pub lost: u64,
    /// This run's denied flows (`action = 'REJECT'`) and loss records, oldest first.
    pub denied: Vec<StoredRecord>,
    /// With `--ocsf`: the custom source's directory and the OCSF objects in it.
    pub ocsf: Option<(PathBuf, usize)>,
}

/// The events the collector read since the previous step, named as it names them.
#[derive(Debug, Default)]
struct Tapped {
    named: Vec<NamedEvent>,
    /// Events with a direction, verdict or reason this build does not know.
    unnamed: u64,
}

/// The flow log of a lab run: where the agent's collector delivers, and the events it taps.
pub struct FlowLog {
    seen: Arc<Mutex<Tapped>>,
    spool: PathBuf,
    dir: PathBuf,
    started_s: u64,
    /// Undecodable records the collector had counted at the previous step's end.
    undecodable: u64,
    /// Whether OCSF objects are written too.
    ocsf: bool,
}

/// The lab's digest signing key for the flow directory `dir`: an Ed25519 key the collector
/// makes at its first start, kept (hidden, with the spool) so that a run into the same
/// directory continues the chain.
pub fn signing_key(dir: &Path) -> PathBuf {
    dir.join(".spool").join("digest-signing.pem")
}

impl FlowLog {
    /// The flow log of run `run`, delivering into `out` (or a temporary directory named after
    /// the run), with OCSF objects beside it when `ocsf`: the collector settings for the agent,
    /// and the tap that hands this flow log every event the collector reads.
    pub fn new(run: &str, out: Option<&Path>, ocsf: bool) -> (Self, CollectorConfig, Tap) {
        let dir = out.map_or_else(
            || std::env::temp_dir().join(format!("tollgate-lab-{run}-flows")),
            Path::to_owned,
        );
        let config = CollectorConfig {
            cluster: CLUSTER.to_owned(),
            node: NODE.to_owned(),
            spool_dir: dir.join(".spool"),
            sink: SinkConfig::Local { dir: dir.clone() },
            digest: DigestConfig {
                signing: SigningConfig::LocalKey {
                    key_file: Some(signing_key(&dir)),
                },
                ..DigestConfig::default()
            },
            security_lake: ocsf.then(|| {
                SecurityLakeConfig::new(
                    OCSF_SOURCE,
                    OCSF_REGION,
                    OCSF_ACCOUNT,
                    SinkConfig::Local { dir: dir.clone() },
                )
            }),
            ..CollectorConfig::default()
        };
        let seen = Arc::new(Mutex::new(Tapped::default()));
        let tap: Tap = {
            let seen = Arc::clone(&seen);
            Box::new(move |event: &FlowEvent, identities: &Identities| {
                let mut seen = seen.lock().unwrap_or_else(PoisonError::into_inner);
                match NamedEvent::from_event(event, identities) {
                    Some(named) => seen.named.push(named),
                    None => seen.unnamed += 1,
                }
            })
        };
        let flow_log = Self {
            seen,
            spool: config.spool_dir.clone(),
            dir,
            started_s: unix_now_ns() / NS_PER_S,
            undecodable: 0,
            ocsf,
        };
        (flow_log, config, tap)
    }

    /// The flow directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// When the run started (Unix seconds): its records end at or after it.
    pub fn started_s(&self) -> u64 {
        self.started_s
    }

    /// Every event the probe wrote since the previous call (residual denies included), named
    /// as the collector named it, as of `barrier` (the collector has taken them in by then);
    /// and how many could not be decoded or named.
    pub fn step_events(&mut self, barrier: &NodeState) -> (Vec<NamedEvent>, u64) {
        let tapped = std::mem::take(&mut *self.seen.lock().unwrap_or_else(PoisonError::into_inner));
        let undecodable = barrier.collector.lost(LossSource::Undecodable);
        let step = undecodable - self.undecodable;
        self.undecodable = undecodable;
        (tapped.named, step + tapped.unnamed)
    }

    /// Reads the flow directory back once the agent stopped (`stopped`: what its collector
    /// shipped; `metrics`: its counters).
    pub fn finish(self, stopped: &Stopped, metrics: &Metrics) -> Result<FlowLogSummary, LabError> {
        if stopped.shipped.left > 0 {
            return Err(LabError::Undelivered {
                left: stopped.shipped.left,
                dir: self.dir,
                spool: self.spool,
            });
        }
        // The directory may hold earlier runs (`--out`): only this run's records count.
        let read = |denied| {
            let filter = Filter {
                denied,
                since_s: Some(self.started_s),
            };
            read_dir(&self.dir, &filter)
        };
        let all = read(false)?;
        let denied = read(true)?;
        let lost = LossSource::ALL.iter().map(|s| metrics.lost(*s)).sum();
        let ocsf = self.ocsf.then(|| {
            let source = self.dir.join("ext").join(OCSF_SOURCE);
            let objects = count_parquet(&source);
            (source, objects)
        });
        Ok(FlowLogSummary {
            ocsf,
            dir: self.dir,
            records: all.len(),
            files: stopped.shipped.files,
            events: metrics.events.load(std::sync::atomic::Ordering::Relaxed),
            lost,
            denied,
        })
    }
}

/// Parquet files under `dir`, at any depth (none when it cannot be read).
fn count_parquet(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |entries| {
        entries
            .filter_map(Result::ok)
            .map(|entry| entry.path())
            .map(|path| {
                if path.is_dir() {
                    count_parquet(&path)
                } else {
                    usize::from(path.extension().is_some_and(|e| e == "parquet"))
                }
            })
            .sum()
    })
}
