//! The bundle's text files: the kept rows as CSV, the policies document (the cluster's and
//! every isolation record's snapshot), and the timeline of flows, isolations and losses as
//! `tollgate flows` prints it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;

use arrow_array::{Array, ArrayRef, RecordBatch, StringArray, cast::AsArray};
use arrow_schema::{ArrowError, DataType, Field, Schema};
use tollgate_collector::{
    clock::rfc3339_utc,
    readback::{StoredRecord, render_table},
};

use crate::PodRef;

use super::{Counts, PolicySnapshot, SkippedSource};

/// `batch` as CSV (arrow-csv): a header of column names, one line per row, nulls as empty
/// fields, fields quoted when they need it; map and list columns (which CSV has not) as JSON
/// objects and arrays.
pub(super) fn to_csv(batch: &RecordBatch) -> Result<Vec<u8>, ArrowError> {
    let (fields, columns): (Vec<Field>, Vec<ArrayRef>) = batch
        .schema()
        .fields()
        .iter()
        .zip(batch.columns())
        .map(|(field, column)| match as_json(column.as_ref()) {
            Some(text) => (
                Field::new(field.name(), DataType::Utf8, true),
                Arc::new(text) as ArrayRef,
            ),
            None => (field.as_ref().clone(), Arc::clone(column)),
        })
        .unzip();
    let flat = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)?;
    let mut out = Vec::new();
    arrow_csv::Writer::new(&mut out).write(&flat)?;
    Ok(out)
}

/// A map column (`map<string,string>`) as JSON objects, keys sorted and a null value as
/// `null`; a list column (`array<string>`) as JSON arrays; `None` for any other column.
fn as_json(column: &dyn Array) -> Option<StringArray> {
    let json = |row: usize| -> Option<String> {
        if column.is_null(row) {
            return None;
        }
        let value = if let Some(maps) = column.as_map_opt() {
            let entries = maps.value(row);
            let (keys, values) = (entries.column(0), entries.column(1));
            let (keys, values) = (keys.as_string::<i32>(), values.as_string::<i32>());
            let map: BTreeMap<&str, Option<&str>> = (0..entries.len())
                .map(|i| (keys.value(i), values.is_valid(i).then(|| values.value(i))))
                .collect();
            serde_json::to_string(&map)
        } else {
            let items = column.as_list::<i32>().value(row);
            let items = items.as_string::<i32>();
            serde_json::to_string(&items.iter().collect::<Vec<_>>())
        };
        value.ok()
    };
    matches!(column.data_type(), DataType::Map(..) | DataType::List(_))
        .then(|| (0..column.len()).map(json).collect())
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

#[cfg(test)]
mod tests {
    use arrow_array::builder::{ListBuilder, StringBuilder};

    use super::*;

    #[test]
    fn a_list_column_is_written_as_json_arrays_and_a_null_list_as_an_empty_field() {
        let mut lists = ListBuilder::new(StringBuilder::new());
        lists.values().append_value("shop/deny-all");
        lists.values().append_value("shop/only-dns");
        lists.append(true);
        lists.append(false);
        let lists: ArrayRef = Arc::new(lists.finish());
        let batch = RecordBatch::try_from_iter([("isolating_policies", lists)]).unwrap();
        let csv = String::from_utf8(to_csv(&batch).unwrap()).unwrap();
        assert_eq!(
            csv,
            // A row of one empty field is quoted, or it would be an empty line.
            "isolating_policies\n\"[\"\"shop/deny-all\"\",\"\"shop/only-dns\"\"]\"\n\"\"\n"
        );
    }
}
