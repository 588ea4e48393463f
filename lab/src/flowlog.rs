//! The lab's flow log: the real collector on the probe's ring buffer, writing Parquet into a
//! local directory in the bucket's layout, then read back for the report.
//!
//! [`FlowLog::start`] starts the collector (cluster `lab`, node `lab-node`, sink the `--out`
//! directory or a temporary one that is kept, spool in its hidden `.spool/`, which readers of
//! the layout skip: a run stopped by a signal leaves its last records there, and the next run
//! into the same directory delivers them first, as an agent restart would).
//! [`FlowLog::observe`] tells it the cluster after each step's policies are synced, so records
//! name pods and policies; [`FlowLog::step_events`] is the step barrier: every event written
//! so far has gone through the collector, and the step's own events are returned for the
//! step report. [`FlowLog::finish`] stops the collector (every window and file closed and
//! delivered) and reads the denied flows back from the Parquet files.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tollgate_collector::{
    clock::{NS_PER_S, boottime_ns, unix_now_ns},
    config::{CollectorConfig, SinkConfig},
    identity::Identities,
    loss::LossSource,
    pipeline::SharedIdentities,
    read::{Filter, StoredRecord, read_dir},
    service::Collector,
};
use tollgate_enforcer::{compile::Compiled, events::EventReader, snapshot::Snapshot};
use tollgate_schemas::FlowEvent;

use crate::LabError;

/// The lab's cluster name, in every record and path.
pub const CLUSTER: &str = "lab";

/// The lab's node name (the pods' `spec.nodeName`).
pub const NODE: &str = "lab-node";

/// Longest the lab waits for the last files to reach the flow directory.
const SHIP_WITHIN: Duration = Duration::from_secs(10);

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
}

/// The running collector of a lab run.
pub struct FlowLog {
    collector: Collector,
    identities: SharedIdentities,
    seen: Arc<Mutex<Vec<FlowEvent>>>,
    spool: PathBuf,
    dir: PathBuf,
    started_s: u64,
}

impl FlowLog {
    /// Starts the collector on `reader` for run `run`, delivering into `out` (or a temporary
    /// directory named after the run).
    pub async fn start(
        reader: EventReader,
        run: &str,
        out: Option<&Path>,
    ) -> Result<Self, LabError> {
        let dir = out.map_or_else(
            || std::env::temp_dir().join(format!("tollgate-lab-{run}-flows")),
            Path::to_owned,
        );
        let config = CollectorConfig {
            cluster: CLUSTER.to_owned(),
            node: NODE.to_owned(),
            spool_dir: dir.join(".spool"),
            sink: SinkConfig::Local { dir: dir.clone() },
            ..CollectorConfig::default()
        };
        let identities: SharedIdentities = Arc::new(Mutex::new(Identities::default()));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let tap = {
            let seen = Arc::clone(&seen);
            Box::new(move |event: &FlowEvent| {
                seen.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(*event);
            })
        };
        let (collector, _) =
            Collector::start(&config, reader, Arc::clone(&identities), Some(tap)).await?;
        Ok(Self {
            collector,
            identities,
            seen,
            spool: config.spool_dir,
            dir,
            started_s: unix_now_ns() / NS_PER_S,
        })
    }

    /// Records the cluster as compiled for a step, from now on.
    pub fn observe(&self, snapshot: &Snapshot, compiled: &Compiled) {
        self.identities
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .observe(snapshot, compiled, boottime_ns());
    }

    /// Every event the probe wrote since the previous call (residual denies included), once
    /// the collector has taken them in; and how many records could not be decoded.
    pub async fn step_events(&self) -> Result<(Vec<FlowEvent>, u64), LabError> {
        let before = self.collector.metrics().lost(LossSource::Undecodable);
        self.collector.sync().await?;
        let events = std::mem::take(&mut *self.seen.lock().unwrap_or_else(PoisonError::into_inner));
        let undecodable = self.collector.metrics().lost(LossSource::Undecodable) - before;
        Ok((events, undecodable))
    }

    /// Stops the collector and reads the flow directory back.
    pub async fn finish(self) -> Result<FlowLogSummary, LabError> {
        let metrics = Arc::clone(self.collector.metrics());
        let stopped = self.collector.stop(SHIP_WITHIN).await?;
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
        Ok(FlowLogSummary {
            dir: self.dir,
            records: all.len(),
            files: stopped.shipped.files,
            events: metrics.events.load(std::sync::atomic::Ordering::Relaxed),
            lost,
            denied,
        })
    }
}
