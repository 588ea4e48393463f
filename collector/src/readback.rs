//! Reading a local flow directory back: every Parquet file under it (any partition), decoded
//! into [`StoredRecord`]s, filtered, sorted by time, and rendered as a table. `tollgate flows`
//! and the lab's summary use it; Athena and DuckDB read the same files with SQL.
//!
//! A file that cannot be read (truncated, another schema, a compression this build lacks) does
//! not hide the others: [`read_flow_log`] returns what could be read and names each file it
//! skipped, with why. A time filter prunes by the partitions (`dt`/`hour`, the hour of each
//! record's start) and, inside the files it still opens, by the row groups' `end` statistics.

use std::fs::File;
use std::path::{Path, PathBuf};

use arrow_array::{
    Array, ArrayRef, Int32Array, Int64Array, RecordBatch, StringArray,
    cast::AsArray,
    types::{Int32Type, Int64Type},
};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::file::{metadata::ParquetMetaData, statistics::Statistics};
use serde::{Serialize, ser::SerializeMap as _};
use serde_json::Value;
use tollgate_enforcer::columns;
use tollgate_schemas::record::{COLUMNS, ColumnType};

use crate::clock::{parse_utc, rfc3339_utc};

/// How far before a `since` filter the partitions are still read: a loss span starts when the
/// loss began (a `collector-restart` span when the collector stopped), and it is filed under
/// the hour of its start; flow records span at most one aggregation window. The same margin
/// as the `loss-records` Athena query; spans that began longer before are not found.
const SINCE_LOOKBACK_S: u64 = 7 * 86_400;

/// Reading a flow directory failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// A directory or file could not be read.
    #[error("reading {path}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A file is not a flow-record Parquet file.
    #[error("{path}: {message}")]
    Parquet {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

impl ReadError {
    /// The directory or file.
    pub fn path(&self) -> &Path {
        match self {
            Self::Io { path, .. } | Self::Parquet { path, .. } => path,
        }
    }

    /// What is wrong with it, in words.
    pub fn reason(&self) -> String {
        match self {
            Self::Io { source, .. } => source.to_string(),
            Self::Parquet { message, .. } => message.clone(),
        }
    }
}

/// Which records to keep.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only `action = 'REJECT'` (and loss records, which say where denials may be missing).
    pub denied: bool,
    /// Only records whose `end` is at or after this Unix second.
    pub since_s: Option<u64>,
}

/// Parses a `--since` value into a Unix second: `YYYY-MM-DDTHH:MM:SSZ`, a Unix second count,
/// or an age before `now_s` such as `90s`, `15m`, `2h`, `1d`.
pub fn parse_since(text: &str, now_s: u64) -> Option<u64> {
    let units = [('s', 1), ('m', 60), ('h', 3600), ('d', 86_400)];
    for (suffix, seconds) in units {
        if let Some(count) = text
            .strip_suffix(suffix)
            .and_then(|n| n.parse::<u64>().ok())
        {
            return Some(now_s.saturating_sub(count.saturating_mul(seconds)));
        }
    }
    crate::clock::parse_utc(text)
}

/// One record, as read back.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct StoredRecord {
    /// `start`, Unix seconds.
    pub start: i64,
    /// `end`, Unix seconds.
    pub end: i64,
    /// `log_status`.
    pub log_status: String,
    /// `action`.
    pub action: Option<String>,
    /// `flow_direction`.
    pub flow_direction: Option<String>,
    /// `protocol`.
    pub protocol: Option<i32>,
    /// `srcaddr`.
    pub srcaddr: Option<String>,
    /// `srcport`.
    pub srcport: Option<i32>,
    /// `dstaddr`.
    pub dstaddr: Option<String>,
    /// `dstport`.
    pub dstport: Option<i32>,
    /// `src_namespace`/`src_pod`.
    pub src_pod: Option<String>,
    /// `src_workload` (`Node/<node>` for the node itself, with `src_pod` null).
    pub src_workload: Option<String>,
    /// `dst_namespace`/`dst_pod`.
    pub dst_pod: Option<String>,
    /// `dst_workload`.
    pub dst_workload: Option<String>,
    /// `verdict`.
    pub verdict: Option<String>,
    /// `verdict_reason`.
    pub verdict_reason: Option<String>,
    /// `policy_namespace`/`policy_name`; for a cluster-scoped policy (no namespace),
    /// `policy_kind`/`policy_name`.
    pub policy: Option<String>,
    /// `policy_rule`.
    pub policy_rule: Option<i32>,
    /// `enforcement_mode`.
    pub enforcement_mode: Option<String>,
    /// `packets`.
    pub packets: Option<i64>,
    /// `bytes`.
    pub bytes: Option<i64>,
    /// `events`.
    pub events: i64,
    /// `skipped_events`.
    pub skipped_events: Option<i64>,
    /// `loss_source`.
    pub loss_source: Option<String>,
    /// `node`.
    pub node: String,
    /// `cluster`.
    pub cluster: String,
    /// `isolation_action` (null in files written before the column existed).
    pub isolation_action: Option<String>,
    /// `isolation_actor`.
    pub isolation_actor: Option<String>,
    /// `isolation_reason`.
    pub isolation_reason: Option<String>,
    /// `isolation_detail` (JSON).
    pub isolation_detail: Option<String>,
    /// `svc_namespace`/`svc_name`: the Service the flow was addressed to (null in files
    /// written before the columns existed).
    pub service: Option<String>,
    /// `svc_addr`.
    pub svc_addr: Option<String>,
    /// `svc_port`.
    pub svc_port: Option<i32>,
    /// `endpoint_interface`: the deciding pod's host interface (null in files written before
    /// the column existed).
    pub endpoint_interface: Option<String>,
    /// `endpoint_eni`: `branch` or `node`.
    pub endpoint_eni: Option<String>,
}

impl StoredRecord {
    /// Whether the packets were dropped.
    pub fn is_reject(&self) -> bool {
        self.action.as_deref() == Some("REJECT")
    }

    /// Whether this is a loss record.
    pub fn is_loss(&self) -> bool {
        self.log_status == "SKIPDATA"
    }

    /// Whether this is an isolation record.
    pub fn is_isolation(&self) -> bool {
        self.log_status == "ISOLATION"
    }
}

/// What a flow directory held: the records that could be read, and the files that could not.
#[derive(Debug)]
pub struct FlowLog<T = StoredRecord> {
    /// The records of the readable files that pass the filter, oldest first.
    pub records: Vec<T>,
    /// One error per file that could not be read, naming the file; none of its records are in
    /// `records`.
    pub skipped: Vec<ReadError>,
}

/// One record with every column of the flow record under its own name, in file order
/// ([`COLUMNS`]): what `tollgate flows --output json` prints. `*_labels` are objects; a column
/// a file does not have (written before the column was appended) is null.
#[derive(Debug, Clone, PartialEq)]
pub struct Columns(Vec<(&'static str, Value)>);

impl Serialize for Columns {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (name, value) in &self.0 {
            map.serialize_entry(name, value)?;
        }
        map.end()
    }
}

/// Every `.parquet` file under `dir` in partition directories (`key=value`, the layout's
/// `cluster=…/dt=…/hour=…`) or directly in it, sorted. Hidden files (a sink's partial copies)
/// and other directories (an evidence bundle kept next to the flow log) are skipped.
pub fn parquet_files(dir: &Path) -> Result<Vec<PathBuf>, ReadError> {
    files_since(dir, None)
}

/// [`parquet_files`], without the partitions that cannot hold a record ending at or after
/// `since_s` (their hour ends more than [`SINCE_LOOKBACK_S`] before it).
fn files_since(dir: &Path, since_s: Option<u64>) -> Result<Vec<PathBuf>, ReadError> {
    let mut files = Vec::new();
    let mut dirs = vec![dir.to_owned()];
    while let Some(dir) = dirs.pop() {
        let entries = std::fs::read_dir(&dir).map_err(|source| ReadError::Io {
            path: dir.clone(),
            source,
        })?;
        for entry in entries {
            let path = entry
                .map_err(|source| ReadError::Io {
                    path: dir.clone(),
                    source,
                })?
                .path();
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if name.starts_with('.') {
                continue;
            }
            if path.is_dir() {
                let before = since_s.is_some_and(|since| {
                    partition_end(&path).is_some_and(|end| end + SINCE_LOOKBACK_S <= since)
                });
                if name.contains('=') && !before {
                    dirs.push(path);
                }
            } else if path.extension().is_some_and(|e| e == "parquet") {
                files.push(path);
            }
        }
    }
    files.sort();
    Ok(files)
}

/// When the records of partition directory `path` start at the latest (Unix seconds, the end
/// of its day or hour), from its `dt=YYYY-MM-DD` and `hour=HH` names; `None` for any other
/// directory.
fn partition_end(path: &Path) -> Option<u64> {
    let value = |key: &str| {
        path.ancestors()
            .filter_map(|p| p.file_name()?.to_str()?.strip_prefix(key))
            .next()
            .map(str::to_owned)
    };
    let name = path.file_name()?.to_str()?;
    let day = value("dt=")?;
    if name.starts_with("dt=") {
        return Some(parse_utc(&format!("{day}T00:00:00Z"))? + 86_400);
    }
    let hour = name.strip_prefix("hour=")?;
    Some(parse_utc(&format!("{day}T{hour}:00:00Z"))? + 3_600)
}

/// The records of every file under `dir` that pass `filter`, oldest first; the first file
/// that cannot be read is the error (see [`read_flow_log`] to read the others anyway).
pub fn read_dir(dir: &Path, filter: &Filter) -> Result<Vec<StoredRecord>, ReadError> {
    let log = read_flow_log(dir, filter)?;
    match log.skipped.into_iter().next() {
        Some(error) => Err(error),
        None => Ok(log.records),
    }
}

/// The records of every readable file under `dir` that pass `filter`, oldest first, and the
/// files that could not be read, each with why. The error is the directory's own (missing,
/// unreadable).
pub fn read_flow_log(dir: &Path, filter: &Filter) -> Result<FlowLog, ReadError> {
    read_log(dir, filter, stored_rows, |r| r)
}

/// [`read_flow_log`] with every column of each record, under the columns' own names.
pub fn read_flow_log_columns(dir: &Path, filter: &Filter) -> Result<FlowLog<Columns>, ReadError> {
    let log = read_log(
        dir,
        filter,
        |batch| {
            let stored = stored_rows(batch)?;
            let columns = column_rows(batch)?;
            Ok(stored.into_iter().zip(columns).collect())
        },
        |(stored, _): &(StoredRecord, Columns)| stored,
    )?;
    Ok(FlowLog {
        records: log.records.into_iter().map(|(_, c)| c).collect(),
        skipped: log.skipped,
    })
}

fn read_log<T>(
    dir: &Path,
    filter: &Filter,
    rows: impl Fn(&RecordBatch) -> Result<Vec<T>, &'static str>,
    record: impl Fn(&T) -> &StoredRecord,
) -> Result<FlowLog<T>, ReadError> {
    let mut log = FlowLog {
        records: Vec::new(),
        skipped: Vec::new(),
    };
    for path in files_since(dir, filter.since_s)? {
        match file_rows(&path, filter.since_s, &rows) {
            Ok(read) => log.records.extend(read.into_iter().filter(|row| {
                let r = record(row);
                (!filter.denied || r.is_reject() || r.is_loss())
                    && filter.since_s.is_none_or(|s| r.end >= s as i64)
            })),
            Err(error) => log.skipped.push(error),
        }
    }
    log.records.sort_by_key(|row| {
        let r = record(row);
        (r.start, r.end)
    });
    Ok(log)
}

/// Every record of one Parquet file.
pub fn read_file(path: &Path) -> Result<Vec<StoredRecord>, ReadError> {
    file_rows(path, None, stored_rows)
}

/// The rows of one file, from the row groups that can hold a record ending at or after
/// `since_s` (by their `end` statistics).
fn file_rows<T>(
    path: &Path,
    since_s: Option<u64>,
    rows: impl Fn(&RecordBatch) -> Result<Vec<T>, &'static str>,
) -> Result<Vec<T>, ReadError> {
    let parquet = |message: String| ReadError::Parquet {
        path: path.to_owned(),
        message,
    };
    let file = File::open(path).map_err(|source| ReadError::Io {
        path: path.to_owned(),
        source,
    })?;
    let mut builder =
        ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| parquet(e.to_string()))?;
    if let Some(since) = since_s {
        let groups = row_groups_ending_since(builder.metadata(), since as i64);
        builder = builder.with_row_groups(groups);
    }
    let reader = builder.build().map_err(|e| parquet(e.to_string()))?;
    let mut out = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| parquet(e.to_string()))?;
        out.extend(
            rows(&batch).map_err(|column| {
                parquet(format!("column {column}: missing or of another type"))
            })?,
        );
    }
    Ok(out)
}

/// The row groups whose largest `end` is at or after `since_s`, or that have no statistics.
fn row_groups_ending_since(metadata: &ParquetMetaData, since_s: i64) -> Vec<usize> {
    let schema = metadata.file_metadata().schema_descr();
    let end = (0..schema.num_columns()).find(|&i| schema.column(i).path().string() == "end");
    (0..metadata.num_row_groups())
        .filter(|&group| {
            let statistics = end.and_then(|end| metadata.row_group(group).column(end).statistics());
            match statistics {
                Some(Statistics::Int64(end)) => end.max_opt().is_none_or(|&max| max >= since_s),
                _ => true,
            }
        })
        .collect()
}

fn stored_rows(batch: &RecordBatch) -> Result<Vec<StoredRecord>, &'static str> {
    let mut out = Vec::with_capacity(batch.num_rows());
    decode(batch, &mut out)?;
    Ok(out)
}

/// Every column of every row of `batch`, as [`Columns`]; the error names a column of another
/// type than the record's.
fn column_rows(batch: &RecordBatch) -> Result<Vec<Columns>, &'static str> {
    let mut rows = vec![Vec::with_capacity(COLUMNS.len()); batch.num_rows()];
    for column in COLUMNS {
        let array = batch.column_by_name(column.name);
        for (row, values) in rows.iter_mut().enumerate() {
            let value = match array {
                Some(array) => json_value(array, column.kind, row).ok_or(column.name)?,
                None => Value::Null,
            };
            values.push((column.name, value));
        }
    }
    Ok(rows.into_iter().map(Columns).collect())
}

/// Row `row` of `array` as JSON, if `array` is of `kind`'s Arrow type.
fn json_value(array: &ArrayRef, kind: ColumnType, row: usize) -> Option<Value> {
    if array.is_null(row) {
        return Some(Value::Null);
    }
    Some(match kind {
        ColumnType::Int => array.as_primitive_opt::<Int32Type>()?.value(row).into(),
        ColumnType::BigInt => array.as_primitive_opt::<Int64Type>()?.value(row).into(),
        ColumnType::String => array.as_string_opt::<i32>()?.value(row).into(),
        ColumnType::StringMap => {
            let entries = array.as_map_opt()?.value(row);
            let keys = entries.column(0).as_string_opt::<i32>()?;
            let values = entries.column(1).as_string_opt::<i32>()?;
            let mut map = serde_json::Map::new();
            for i in 0..entries.len() {
                let value = if values.is_valid(i) {
                    Value::from(values.value(i))
                } else {
                    Value::Null
                };
                map.insert(keys.value(i).to_owned(), value);
            }
            Value::Object(map)
        }
        ColumnType::StringList => {
            let items = array.as_list_opt::<i32>()?.value(row);
            let items = items.as_string_opt::<i32>()?;
            Value::Array(
                items
                    .iter()
                    .map(|item| item.map(Value::from).unwrap_or_default())
                    .collect(),
            )
        }
    })
}

/// Appends the rows of `batch`; the error names a column that is missing or mistyped.
fn decode(batch: &RecordBatch, out: &mut Vec<StoredRecord>) -> Result<(), &'static str> {
    let text = |name: &'static str| {
        batch
            .column_by_name(name)
            .and_then(|c| c.as_string_opt::<i32>())
            .ok_or(name)
    };
    let int = |name: &'static str| {
        batch
            .column_by_name(name)
            .and_then(|c| c.as_primitive_opt::<Int32Type>())
            .ok_or(name)
    };
    let bigint = |name: &'static str| {
        batch
            .column_by_name(name)
            .and_then(|c| c.as_primitive_opt::<Int64Type>())
            .ok_or(name)
    };
    let (start, end, events) = (bigint("start")?, bigint("end")?, bigint("events")?);
    let (packets, bytes, skipped) = (
        bigint("packets")?,
        bigint("bytes")?,
        bigint("skipped_events")?,
    );
    let (protocol, srcport, dstport, rule) = (
        int("protocol")?,
        int("srcport")?,
        int("dstport")?,
        int("policy_rule")?,
    );
    let columns = [
        "log_status",
        "action",
        "flow_direction",
        "srcaddr",
        "dstaddr",
        "src_namespace",
        "src_pod",
        "src_workload",
        "dst_namespace",
        "dst_pod",
        "dst_workload",
        "verdict",
        "verdict_reason",
        "policy_namespace",
        "policy_name",
        "enforcement_mode",
        "loss_source",
        "node",
        "cluster",
    ];
    let texts = columns
        .iter()
        .map(|name| text(name))
        .collect::<Result<Vec<&StringArray>, _>>()?;
    let s = |column: usize, row: usize| opt_text(texts[column], row);
    // Appended columns: files written before they existed read as null.
    let appended = |name: &'static str| match batch.column_by_name(name) {
        None => Ok(None),
        Some(column) => column.as_string_opt::<i32>().map(Some).ok_or(name),
    };
    let (isolation_action, isolation_actor, isolation_reason, isolation_detail) = (
        appended("isolation_action")?,
        appended("isolation_actor")?,
        appended("isolation_reason")?,
        appended("isolation_detail")?,
    );
    let (svc_namespace, svc_name, svc_addr) = (
        appended("svc_namespace")?,
        appended("svc_name")?,
        appended("svc_addr")?,
    );
    let (endpoint_interface, endpoint_eni) =
        (appended("endpoint_interface")?, appended("endpoint_eni")?);
    let policy_kind = appended("policy_kind")?;
    let svc_port = match batch.column_by_name("svc_port") {
        None => None,
        Some(column) => Some(column.as_primitive_opt::<Int32Type>().ok_or("svc_port")?),
    };
    let a = |column: Option<&StringArray>, row: usize| column.and_then(|c| opt_text(c, row));
    for row in 0..batch.num_rows() {
        out.push(StoredRecord {
            start: start.value(row),
            end: end.value(row),
            log_status: s(0, row).unwrap_or_default(),
            action: s(1, row),
            flow_direction: s(2, row),
            protocol: opt_int(protocol, row),
            srcaddr: s(3, row),
            srcport: opt_int(srcport, row),
            dstaddr: s(4, row),
            dstport: opt_int(dstport, row),
            src_pod: joined(s(5, row), s(6, row)),
            src_workload: s(7, row),
            dst_pod: joined(s(8, row), s(9, row)),
            dst_workload: s(10, row),
            verdict: s(11, row),
            verdict_reason: s(12, row),
            policy: joined(s(13, row).or_else(|| a(policy_kind, row)), s(14, row)),
            policy_rule: opt_int(rule, row),
            enforcement_mode: s(15, row),
            packets: opt_bigint(packets, row),
            bytes: opt_bigint(bytes, row),
            events: events.value(row),
            skipped_events: opt_bigint(skipped, row),
            loss_source: s(16, row),
            node: s(17, row).unwrap_or_default(),
            cluster: s(18, row).unwrap_or_default(),
            isolation_action: a(isolation_action, row),
            isolation_actor: a(isolation_actor, row),
            isolation_reason: a(isolation_reason, row),
            isolation_detail: a(isolation_detail, row),
            service: joined(a(svc_namespace, row), a(svc_name, row)),
            svc_addr: a(svc_addr, row),
            svc_port: svc_port.and_then(|c| opt_int(c, row)),
            endpoint_interface: a(endpoint_interface, row),
            endpoint_eni: a(endpoint_eni, row),
        });
    }
    Ok(())
}

fn opt_text(array: &StringArray, row: usize) -> Option<String> {
    array.is_valid(row).then(|| array.value(row).to_owned())
}

fn opt_int(array: &Int32Array, row: usize) -> Option<i32> {
    array.is_valid(row).then(|| array.value(row))
}

fn opt_bigint(array: &Int64Array, row: usize) -> Option<i64> {
    array.is_valid(row).then(|| array.value(row))
}

fn joined(namespace: Option<String>, name: Option<String>) -> Option<String> {
    Some(format!("{}/{}", namespace?, name?))
}

/// `records` as a table: time, action, direction, protocol, source, destination, reason,
/// policy, packets; loss records say what was lost, isolation records who isolated which pod,
/// why and with which policy. An end is named by its pod, else its workload (`Node/<node>`
/// for the node itself), else its address; a destination that was a Service's ClusterIP as
/// `service:<namespace>/<name>`.
pub fn render_table(records: &[StoredRecord]) -> String {
    let mut rows = Vec::with_capacity(records.len());
    for r in records {
        let time = |s: i64| rfc3339_utc(u64::try_from(s).unwrap_or_default());
        if r.is_loss() {
            rows.push([
                time(r.start),
                time(r.end),
                "SKIPDATA".to_owned(),
                "-".to_owned(),
                "-".to_owned(),
                format!("node {}", r.node),
                "-".to_owned(),
                r.loss_source.clone().unwrap_or_default(),
                "-".to_owned(),
                r.skipped_events
                    .map_or_else(|| "unknown".to_owned(), |n| format!("{n} events lost")),
            ]);
            continue;
        }
        if r.is_isolation() {
            rows.push([
                time(r.start),
                time(r.end),
                r.isolation_action
                    .clone()
                    .unwrap_or_default()
                    .to_uppercase(),
                "both".to_owned(),
                "-".to_owned(),
                r.src_pod.clone().unwrap_or_default(),
                "-".to_owned(),
                format!(
                    "{:?} by {}",
                    r.isolation_reason.clone().unwrap_or_default(),
                    r.isolation_actor.clone().unwrap_or_default()
                ),
                r.policy.clone().unwrap_or_default(),
                "-".to_owned(),
            ]);
            continue;
        }
        let peer = |who: Option<String>, addr: &Option<String>, port: Option<i32>| {
            let who = who.or_else(|| addr.clone()).unwrap_or_default();
            match port {
                Some(port) if port != 0 => format!("{who}:{port}"),
                _ => who,
            }
        };
        let mut reason = r.verdict_reason.clone().unwrap_or_default();
        if r.enforcement_mode.as_deref() == Some("audit") {
            reason.push_str(" (audit)");
        }
        rows.push([
            time(r.start),
            time(r.end),
            r.action.clone().unwrap_or_default(),
            r.flow_direction.clone().unwrap_or_default(),
            protocol_name(r.protocol),
            peer(
                r.src_pod.clone().or_else(|| r.src_workload.clone()),
                &r.srcaddr,
                r.srcport,
            ),
            peer(
                r.service
                    .as_ref()
                    .map(|service| format!("service:{service}"))
                    .or_else(|| r.dst_pod.clone())
                    .or_else(|| r.dst_workload.clone()),
                &r.dstaddr,
                r.dstport,
            ),
            reason,
            match (&r.policy, r.policy_rule) {
                (Some(policy), Some(rule)) => format!("{policy}[{rule}]"),
                _ => "-".to_owned(),
            },
            r.packets.unwrap_or_default().to_string(),
        ]);
    }
    let header = [
        "START",
        "END",
        "ACTION",
        "DIR",
        "PROTO",
        "SOURCE",
        "DESTINATION",
        "REASON",
        "POLICY",
        "PACKETS",
    ];
    columns::render(header.map(str::to_owned), rows)
}

fn protocol_name(protocol: Option<i32>) -> String {
    match protocol {
        Some(6) => "TCP".to_owned(),
        Some(17) => "UDP".to_owned(),
        Some(1) => "ICMP".to_owned(),
        Some(58) => "ICMPv6".to_owned(),
        Some(132) => "SCTP".to_owned(),
        Some(other) => other.to_string(),
        None => "-".to_owned(),
    }
}
