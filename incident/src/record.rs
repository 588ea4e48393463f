//! An isolation record into the flow log: one row ([`FlowRecord::isolation`]) encoded by the
//! collector's encoder, written as one Parquet file with the collector's writer properties,
//! and delivered by the collector's sink (a local directory or S3) under the collector's
//! layout, so every reader of the flow log — Athena, `tollgate flows`, the notebooks, an
//! evidence bundle — sees it next to the flows it explains.
//!
//! The key is `cluster=<c>/dt=<day>/hour=<HH>/isolation-<namespace>-<pod>-<action>-<time>.parquet`
//! (the partition of the act's time): deterministic, so a retried delivery overwrites its own
//! earlier attempt rather than adding a second record.

use std::fs::File;
use std::path::{Path, PathBuf};

use parquet::arrow::ArrowWriter;
use tollgate_collector::{
    clock::{compact_utc, partition_date},
    record::{FlowRecord, encode, schema},
    sink::{Sink, SinkError},
    writer::writer_properties,
};

use crate::{
    location::{FlowLogLocation, S3Options},
    quarantine::Outcome,
};

/// Why an isolation record was not written.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// Encoding or writing the Parquet file failed.
    #[error("writing the isolation record to {path}: {message}")]
    Write {
        /// The local file.
        path: PathBuf,
        /// What failed.
        message: String,
    },
    /// Delivering it to the flow log failed (the sink's message names the record's file).
    #[error(transparent)]
    Deliver(#[from] SinkError),
}

/// `--cluster` as given, if it can name a cluster in the flow log (the collectors' `cluster`
/// setting, the `cluster=` partition of every key): for the command line, which checks it
/// before it changes anything.
pub fn parse_cluster(text: &str) -> Result<String, String> {
    let segment = !text.is_empty()
        && text != "."
        && text != ".."
        && !text
            .chars()
            .any(|c| c == '/' || c == '=' || c.is_whitespace() || c.is_control());
    if segment {
        Ok(text.to_owned())
    } else {
        Err(
            "must be a non-empty name without '/', '=' or whitespace, as the collectors' \
             `cluster` setting"
                .to_owned(),
        )
    }
}

/// The object key of `outcome`'s record in `cluster`'s part of the flow log.
pub fn key(cluster: &str, outcome: &Outcome) -> String {
    let (dt, hour) = partition_date(outcome.at_s);
    let pod = &outcome.isolation.pod;
    format!(
        "cluster={cluster}/dt={dt}/hour={hour}/isolation-{}-{}-{}-{}.parquet",
        pod.namespace,
        pod.name,
        outcome.isolation.action.name(),
        compact_utc(outcome.at_s)
    )
}

/// Writes `outcome`'s isolation record of `cluster` as a Parquet file at `path`.
pub fn write_file(cluster: &str, outcome: &Outcome, path: &Path) -> Result<(), RecordError> {
    let failed = |message: String| RecordError::Write {
        path: path.to_owned(),
        message,
    };
    let record = FlowRecord::isolation(outcome.isolation.clone(), outcome.at_s);
    let schema = schema();
    let batch =
        encode(&[record], &outcome.node, cluster, &schema).map_err(|e| failed(e.to_string()))?;
    let file = File::create(path).map_err(|e| failed(e.to_string()))?;
    let mut writer = ArrowWriter::try_new(file, schema, Some(writer_properties()))
        .map_err(|e| failed(e.to_string()))?;
    writer.write(&batch).map_err(|e| failed(e.to_string()))?;
    writer.close().map_err(|e| failed(e.to_string()))?;
    Ok(())
}

/// Writes `outcome`'s record of `cluster` into the flow log at `location`; where it went.
///
/// The file is first written to `staging` (a directory that survives a failed delivery: the
/// caller names it in its error so the record is not lost), then delivered and removed.
pub async fn deliver(
    cluster: &str,
    outcome: &Outcome,
    location: &FlowLogLocation,
    s3: &S3Options,
    staging: &Path,
) -> Result<String, RecordError> {
    let key = key(cluster, outcome);
    let file_name = key.rsplit('/').next().unwrap_or(&key);
    let path = staging.join(file_name);
    std::fs::create_dir_all(staging).map_err(|e| RecordError::Write {
        path: staging.to_owned(),
        message: e.to_string(),
    })?;
    write_file(cluster, outcome, &path)?;
    let sink = Sink::from_config(&location.sink(s3)).await?;
    sink.put(&key, &path).await?;
    // Delivered: the staged copy has done its job.
    let _ = std::fs::remove_file(&path);
    Ok(sink.location(&key))
}
