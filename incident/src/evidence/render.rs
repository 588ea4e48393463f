//! The bundle's text files: the kept rows as CSV, the policies document (the cluster's and
//! every isolation record's snapshot), and the timeline of flows, isolations and losses as
//! `tollgate flows` prints it.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use arrow_array::{
    Array, Int32Array, Int64Array, MapArray, RecordBatch, StringArray, cast::AsArray,
};
use arrow_schema::DataType;
use tollgate_collector::{
    clock::rfc3339_utc,
    readback::{StoredRecord, render_table},
};

use crate::PodRef;

use super::{Counts, PolicySnapshot, SkippedSource};

/// `batch` as CSV: a header of column names, one line per row; maps as JSON objects, nulls
/// as empty fields, fields quoted when they hold a comma, quote or line break.
pub(super) fn to_csv(batch: &RecordBatch) -> String {
    let mut out = String::new();
    let header: Vec<String> = batch
        .schema()
        .fields()
        .iter()
        .map(|f| quote(f.name()))
        .collect();
    let _ = writeln!(out, "{}", header.join(","));
    for row in 0..batch.num_rows() {
        let fields: Vec<String> = batch
            .columns()
            .iter()
            .map(|column| quote(&cell(column.as_ref(), row)))
            .collect();
        let _ = writeln!(out, "{}", fields.join(","));
    }
    out
}

fn cell(column: &dyn Array, row: usize) -> String {
    if column.is_null(row) {
        return String::new();
    }
    match column.data_type() {
        DataType::Int32 => column
            .as_any()
            .downcast_ref::<Int32Array>()
            .map(|a| a.value(row).to_string()),
        DataType::Int64 => column
            .as_any()
            .downcast_ref::<Int64Array>()
            .map(|a| a.value(row).to_string()),
        DataType::Utf8 => column
            .as_any()
            .downcast_ref::<StringArray>()
            .map(|a| a.value(row).to_owned()),
        DataType::Map(..) => column.as_any().downcast_ref::<MapArray>().map(|a| {
            let entries = a.value(row);
            let keys = entries.column(0).as_string::<i32>();
            let values = entries.column(1).as_string::<i32>();
            let map: BTreeMap<&str, Option<&str>> = (0..entries.len())
                .map(|i| (keys.value(i), values.is_valid(i).then(|| values.value(i))))
                .collect();
            serde_json::to_string(&map).unwrap_or_default()
        }),
        _ => None,
    }
    .unwrap_or_default()
}

fn quote(field: &str) -> String {
    if field.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", field.replace('"', "\"\""))
    } else {
        field.to_owned()
    }
}

/// The policies each isolation record saw right after its act.
pub(super) fn isolation_snapshots(records: &[StoredRecord]) -> Vec<PolicySnapshot> {
    records
        .iter()
        .filter(|r| r.is_isolation())
        .filter_map(|r| {
            let detail: serde_json::Value =
                serde_json::from_str(r.isolation_detail.as_deref()?).ok()?;
            let policies = detail.get("policies_in_force")?.as_array()?.clone();
            Some(PolicySnapshot {
                source: format!(
                    "isolation record ({})",
                    r.isolation_action.as_deref().unwrap_or("?")
                ),
                at: u64::try_from(r.start).unwrap_or_default(),
                policies,
            })
        })
        .collect()
}

/// `policies.json`: the latest snapshot's policies as `policies`, and every snapshot.
pub(super) fn policies_document(mut snapshots: Vec<PolicySnapshot>) -> serde_json::Value {
    snapshots.sort_by_key(|s| s.at);
    let latest = snapshots.last();
    serde_json::json!({
        "policies": latest.map(|s| s.policies.clone()).unwrap_or_default(),
        "as_of": latest.map(|s| s.at),
        "as_of_utc": latest.map(|s| rfc3339_utc(s.at)),
        "source": latest.map(|s| s.source.clone()),
        "snapshots": snapshots,
    })
}

/// The timeline: a line on what it shows (and on what it cannot show: files skipped, no
/// record of the pod at all), then the records as `tollgate flows` prints them.
pub(super) fn render_timeline(
    pod: &PodRef,
    records: &[StoredRecord],
    story: &Story,
    counts: &Counts,
    skipped: &[SkippedSource],
) -> String {
    let mut out = String::new();
    if !skipped.is_empty() {
        let _ = writeln!(
            out,
            "INCOMPLETE: {} flow-log file(s) could not be read; their records are not here:",
            skipped.len()
        );
        for source in skipped {
            let _ = writeln!(out, "  {}: {}", source.location, source.reason);
        }
    }
    if counts.flows == 0 && counts.isolations == 0 {
        let _ = writeln!(
            out,
            "NO RECORD of {pod} in {} flow-log file(s) read: not proof that it had no traffic",
            counts.sources
        );
    }
    let _ = write!(out, "Timeline of {pod}: {} records", records.len());
    if let Some(split) = &story.first_quarantine {
        let _ = write!(
            out,
            "; quarantined at {}: {} allowed before, {} denied after",
            rfc3339_utc(split.at_s),
            split.allowed_before,
            split.denied_after
        );
    }
    let _ = writeln!(out, "\n");
    out.push_str(&render_table(records));
    out
}

/// What a bundle's records tell about the quarantine of its pod.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Story {
    /// Isolation records of action `quarantine`.
    pub quarantines: usize,
    /// Around the first quarantine, if there is one.
    pub first_quarantine: Option<Split>,
}

/// The pod's flow records on either side of its first quarantine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Split {
    /// When (Unix seconds).
    pub at_s: u64,
    /// Flow records allowed that ended before it.
    pub allowed_before: usize,
    /// Flow records denied that started at it or after.
    pub denied_after: usize,
}

impl Story {
    /// The story of `records` (flows, isolations and losses, sorted by time).
    pub(super) fn of(records: &[StoredRecord]) -> Self {
        let quarantines: Vec<i64> = records
            .iter()
            .filter(|r| r.is_isolation() && r.isolation_action.as_deref() == Some("quarantine"))
            .map(|r| r.start)
            .collect();
        let flows = || records.iter().filter(|r| !r.is_isolation() && !r.is_loss());
        Self {
            quarantines: quarantines.len(),
            first_quarantine: quarantines.first().map(|&at| Split {
                at_s: u64::try_from(at).unwrap_or_default(),
                allowed_before: flows().filter(|r| !r.is_reject() && r.end < at).count(),
                denied_after: flows().filter(|r| r.is_reject() && r.start >= at).count(),
            }),
        }
    }
}
