//! Evidence bundles: every flow-log record about one pod in a time window, written so that
//! anyone can check later that nothing in it changed.
//!
//! [`collect`] lists the window's files ([`Reader::list`]), reads each one whole (keeping its
//! ETag, version and SHA-256 as a [`SourceObject`]), brings every batch to the current record
//! schema (files written before a column was appended get nulls) and keeps three kinds of
//! rows (with [`Request::athena`], one Athena query — [`crate::athena::objects`] — names the
//! objects that hold the pod's records instead, and only those are read, the same way). A file
//! that cannot be read (truncated, another schema, a codec not compiled in, an S3 error) is
//! skipped whole — none of its rows is kept — and named with the reason in the manifest's
//! `skipped`; [`Bundle::shortfalls`] tells the caller, as it tells a bundle without a single
//! record of the pod (not proof of no traffic). The kinds of rows:
//! - `flows`: `OK` records with the pod at either end (both directions, every verdict) whose
//!   span `[start, end]` overlaps `[from, to)`;
//! - `isolations`: the pod's `ISOLATION` records in the window;
//! - `losses`: `SKIPDATA` records overlapping the window, from any node (a flow of the pod may
//!   be recorded by its peer's node too), which say the other two may be incomplete.
//!
//! Each kind is written sorted by time as Parquet (the flow log's own schema) and as CSV; then
//! `policies.json` (the NetworkPolicies in force: from the cluster when the caller read them,
//! and as every isolation record saw them), `sources.json`, `timeline.txt` (the three kinds on
//! one timeline, as `tollgate flows` prints it), the signed digests that list the sources
//! (`digest-*.json`, [`crate::provenance`]), and last `manifest.json`: what was asked, and
//! the size and SHA-256 of every other file. [`verify`] recomputes them and fails on any
//! difference, missing or extra file; only regular files of the bundle count (a symbolic link
//!
//! The parts: this module collects (reads the sources, keeps and sorts the rows, writes the
//! files); [`manifest`] holds the manifest's types, the digests of the files and [`verify`];
//! [`render`] writes the rows as CSV, the timeline and the policies document.

mod manifest;
mod render;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::{
    Array, ArrayRef, BooleanArray, RecordBatch, StringArray, UInt32Array, cast::AsArray,
    new_null_array,
};
use arrow_schema::SchemaRef;
use parquet::arrow::{ArrowWriter, arrow_reader::ParquetRecordBatchReaderBuilder};
use serde::Serialize;
use tollgate_collector::{
    clock::rfc3339_utc, readback::read_file, record::schema, writer::writer_properties,
};

use crate::{
    PodRef,
    athena::{AthenaError, AthenaOptions},
    legal_hold::{Holds, Target},
    location::{FlowLogLocation, S3Options},
    source::{Reader, SourceError, SourceObject, sha256_hex},
};

pub use manifest::{
    Counts, FileDigest, Manifest, ManifestPod, ManifestWindow, PolicySnapshot, SkippedSource,
    Tampered, verify,
};
pub use render::{Split, Story};

use manifest::digest;
use render::{isolation_snapshots, policies_document, render_timeline, to_csv};

/// The `format` of a bundle's manifest.
pub const FORMAT: &str = "tollgate-evidence/1";

/// The manifest's file name.
pub const MANIFEST: &str = "manifest.json";

/// The most problems [`verify`] names; the others are counted ([`Tampered::more`]).
pub const MAX_PROBLEMS: usize = 20;

/// The largest manifest [`verify`] reads: a manifest lists a dozen files, so anything near
/// this is not one `evidence` wrote.
pub const MAX_MANIFEST_BYTES: u64 = 1 << 20;

/// Why a bundle could not be written. A message holds its cause, and `source()` returns
/// none: the cause is printed once, alone or with the chain.
#[derive(Debug, thiserror::Error)]
pub enum EvidenceError {
    /// The request makes no sense.
    #[error("{0}")]
    Request(String),
    /// Listing the flow log (a file that cannot be read is skipped instead, and named).
    #[error("reading the flow log: {0}")]
    Source(SourceError),
    /// Asking Athena which objects to read (its messages name Athena or the flag).
    #[error(transparent)]
    Athena(#[from] AthenaError),
    /// Writing the bundle.
    #[error("writing {path}: {message}")]
    Write {
        /// The file.
        path: PathBuf,
        /// What failed.
        message: String,
    },
}

impl From<SourceError> for EvidenceError {
    fn from(error: SourceError) -> Self {
        Self::Source(error)
    }
}

/// What to put in a bundle.
#[derive(Debug, Clone)]
pub struct Request {
    /// The pod.
    pub pod: PodRef,
    /// Only this cluster's records; every cluster's when absent.
    pub cluster: Option<String>,
    /// Window start, Unix seconds, inclusive.
    pub from_s: u64,
    /// Window end, Unix seconds, exclusive.
    pub to_s: u64,
    /// The flow log.
    pub location: FlowLogLocation,
    /// How to reach S3.
    pub s3: S3Options,
    /// The bundle's directory (created; must be empty if it exists).
    pub out: PathBuf,
    /// Athena as the index of an S3 flow log: which objects to read; every file of the
    /// window's partitions when absent.
    pub athena: Option<AthenaOptions>,
}

/// A written bundle.
#[derive(Debug, Clone)]
pub struct Bundle {
    /// Its directory.
    pub dir: PathBuf,
    /// Its manifest.
    pub manifest: Manifest,
    /// SHA-256 of `manifest.json` itself: note it elsewhere (a ticket, a chat) and
    /// `evidence verify --manifest-sha256` proves the manifest unchanged too.
    pub manifest_sha256: String,
    /// The timeline, as in `timeline.txt`.
    pub timeline: String,
    /// What the records tell about the pod's quarantine.
    pub story: Story,
    /// How many sources a signed digest in the bundle lists, and how many none does.
    pub provenance: crate::provenance::Provenance,
    /// The legal holds placed on the sources and digests.
    pub holds: Holds,
}

/// Why a written bundle may not tell the whole story of its pod in its window.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Shortfall {
    /// Flow-log files of the window could not be read.
    #[error(
        "{} flow-log file(s) could not be read; their records are not in the bundle (its \
         manifest lists them under `skipped`):{}",
        .0.len(),
        .0.iter().map(|s| format!("\n  {}: {}", s.location, s.reason)).collect::<String>()
    )]
    Unread(Vec<SkippedSource>),
    /// Legal holds that could not be placed on a bucket with Object Lock.
    #[error(
        "{} legal hold(s) could not be placed; those objects can still be deleted:{}",
        .0.len(),
        .0.iter().map(|(key, why)| format!("\n  {key}: {why}")).collect::<String>()
    )]
    HoldsFailed(Vec<(String, String)>),
    /// Not one flow or isolation record of the pod in the window.
    #[error(
        "NO RECORD of {pod} in the flow log from {from_utc} to {to_utc} ({files} file(s) read): \
         the bundle is empty, which is not proof that the pod had no traffic — check the pod's \
         namespace and name, --cluster, the window and --flow-log (--allow-empty accepts an \
         empty bundle)"
    )]
    NoRecords {
        /// The pod, as `namespace/name`.
        pod: String,
        /// Window start, RFC 3339.
        from_utc: String,
        /// Window end, RFC 3339.
        to_utc: String,
        /// Flow-log files read.
        files: u64,
    },
}

impl Bundle {
    /// What keeps this bundle from being the whole story: files skipped, and — unless
    /// `allow_empty` — no record of the pod at all. Empty when it is complete.
    pub fn shortfalls(&self, allow_empty: bool) -> Vec<Shortfall> {
        let manifest = &self.manifest;
        let mut shortfalls = Vec::new();
        if !manifest.skipped.is_empty() {
            shortfalls.push(Shortfall::Unread(manifest.skipped.clone()));
        }
        if !self.holds.complete() {
            shortfalls.push(Shortfall::HoldsFailed(self.holds.failed.clone()));
        }
        if !allow_empty && manifest.counts.flows == 0 && manifest.counts.isolations == 0 {
            shortfalls.push(Shortfall::NoRecords {
                pod: format!("{}/{}", manifest.pod.namespace, manifest.pod.name),
                from_utc: manifest.window.from_utc.clone(),
                to_utc: manifest.window.to_utc.clone(),
                files: manifest.counts.sources,
            });
        }
        shortfalls
    }
}

/// Writes the bundle `request` describes; `policies` are snapshots the caller read (the
/// cluster's, the lab's), added to those of the isolation records.
#[tracing::instrument(
    skip_all,
    fields(
        pod = %request.pod,
        from = request.from_s,
        to = request.to_s,
        out = %request.out.display()
    )
)]
pub async fn collect(
    request: &Request,
    policies: Vec<PolicySnapshot>,
    now_s: u64,
) -> Result<Bundle, EvidenceError> {
    if request.from_s >= request.to_s {
        return Err(EvidenceError::Request(format!(
            "--from {} is not before --to {}",
            rfc3339_utc(request.from_s),
            rfc3339_utc(request.to_s)
        )));
    }
    if let Some(athena) = &request.athena {
        if !matches!(request.location, FlowLogLocation::S3 { .. }) {
            return Err(EvidenceError::Request(
                "--athena-workgroup needs an s3:// --flow-log".to_owned(),
            ));
        }
        athena.validate()?;
    }
    prepare_dir(&request.out)?;
    let reader = Reader::new(&request.location, &request.s3).await;
    let names = match &request.athena {
        Some(athena) => crate::athena::objects(athena, &request.s3.region, request).await?,
        None => {
            reader
                .list(request.cluster.as_deref(), request.from_s, request.to_s)
                .await?
        }
    };
    let schema = schema();
    let mut kept = Kept::default();
    let mut sources = Vec::with_capacity(names.len());
    let mut skipped = Vec::new();
    for name in &names {
        match read_source(&reader, name, &schema, request).await {
            Ok((object, file)) => {
                sources.push(SourceUse {
                    object,
                    records: file.rows(),
                    key: reader.relative(name),
                    digest: None,
                    legal_hold: false,
                });
                kept.append(file);
            }
            Err(source) => {
                // The caller reports it ([`Bundle::shortfalls`]); this is for the trace.
                tracing::info!(
                    location = %source.location,
                    reason = %source.reason,
                    "flow-log file skipped: its records are not in the bundle"
                );
                skipped.push(source);
            }
        }
    }
    let out = &request.out;
    let mut files = Vec::new();
    let mut counts = Counts {
        sources: sources.len() as u64,
        skipped: skipped.len() as u64,
        ..Counts::default()
    };
    let mut timeline = Vec::new();
    for (kind, batches) in [
        ("flows", &kept.flows),
        ("isolations", &kept.isolations),
        ("losses", &kept.losses),
    ] {
        let batch = sorted(&schema, batches)?;
        let rows = batch.num_rows() as u64;
        match kind {
            "flows" => counts.flows = rows,
            "isolations" => counts.isolations = rows,
            _ => counts.losses = rows,
        }
        let parquet = out.join(format!("{kind}.parquet"));
        write_parquet(&parquet, &schema, &batch)?;
        let csv = out.join(format!("{kind}.csv"));
        let text = to_csv(&batch).map_err(|e| EvidenceError::Write {
            path: csv.clone(),
            message: e.to_string(),
        })?;
        write_file(&csv, &text)?;
        timeline.extend(read_file(&parquet).map_err(|e| EvidenceError::Write {
            path: parquet.clone(),
            message: e.to_string(),
        })?);
        files.push(format!("{kind}.parquet"));
        files.push(format!("{kind}.csv"));
    }
    let keys: Vec<String> = sources.iter().map(|s| s.key.clone()).collect();
    let gathered = crate::provenance::gather(&reader, &keys, out).await?;
    for source in &mut sources {
        source.digest = gathered.covering.get(&source.key).cloned();
    }
    let provenance = crate::provenance::Provenance {
        proven: sources.iter().filter(|s| s.digest.is_some()).count(),
        uncovered: sources.iter().filter(|s| s.digest.is_none()).count(),
    };
    let mut targets: Vec<Target> = sources
        .iter()
        .map(|s| Target {
            key: s.key.clone(),
            version_id: s.object.version_id.clone(),
        })
        .collect();
    targets.extend(gathered.keys.iter().map(|key| Target {
        key: key.clone(),
        version_id: None,
    }));
    let holds = Holds::place(&reader, &targets).await;
    for source in &mut sources {
        source.legal_hold = holds.held.contains(&source.key);
    }
    files.extend(gathered.files);
    let mut snapshots = policies;
    snapshots.extend(isolation_snapshots(&timeline));
    write_json(&out.join("policies.json"), &policies_document(snapshots))?;
    files.push("policies.json".to_owned());
    write_json(&out.join("sources.json"), &sources)?;
    files.push("sources.json".to_owned());
    timeline.sort_by_key(|r| (r.start, r.end));
    let story = Story::of(&timeline);
    let timeline = render_timeline(&request.pod, &timeline, &story, &counts, &skipped);
    write_file(&out.join("timeline.txt"), &timeline)?;
    files.push("timeline.txt".to_owned());
    files.sort();
    let manifest = Manifest {
        format: FORMAT.to_owned(),
        pod: ManifestPod {
            namespace: request.pod.namespace.clone(),
            name: request.pod.name.clone(),
        },
        cluster: request.cluster.clone(),
        window: ManifestWindow {
            from: request.from_s,
            to: request.to_s,
            from_utc: rfc3339_utc(request.from_s),
            to_utc: rfc3339_utc(request.to_s),
        },
        created: now_s,
        source: match &request.athena {
            Some(athena) => format!("{athena} → {}", request.location),
            None => request.location.to_string(),
        },
        tool: format!("tollgate {}", env!("CARGO_PKG_VERSION")),
        counts,
        skipped,
        legal_holds: Some(holds.summary()),
        files: files
            .iter()
            .map(|path| digest(out, path))
            .collect::<Result<_, _>>()?,
    };
    let text = serde_json::to_string_pretty(&manifest).map_err(|e| EvidenceError::Write {
        path: out.join(MANIFEST),
        message: e.to_string(),
    })?;
    write_file(&out.join(MANIFEST), format!("{text}\n"))?;
    Ok(Bundle {
        dir: out.clone(),
        manifest,
        manifest_sha256: sha256_hex(format!("{text}\n").as_bytes()),
        timeline,
        story,
        provenance,
        holds,
    })
}

/// A flow-log file, how many of its rows went into the bundle, and the digest of the bundle
/// that lists it.
#[derive(Debug, Serialize)]
struct SourceUse {
    #[serde(flatten)]
    object: SourceObject,
    records: u64,
    /// Its key relative to the flow log's root, as digests name it.
    key: String,
    /// The bundle's file of the signed digest that lists it; null when none does.
    digest: Option<String>,
    /// Whether a legal hold was placed on it.
    legal_hold: bool,
}

/// Fetches the listed file `name` and keeps the rows of it that `request` asks for: all of
/// them, or — when it cannot be fetched or read to its end — none, and why.
async fn read_source(
    reader: &Reader,
    name: &str,
    schema: &SchemaRef,
    request: &Request,
) -> Result<(SourceObject, Kept), SkippedSource> {
    let (object, data) = reader.fetch(name).await.map_err(|e| SkippedSource {
        location: reader.location(name),
        reason: e.reason(),
    })?;
    match Kept::of(data, schema, request) {
        Ok(kept) => Ok((object, kept)),
        Err(reason) => Err(SkippedSource {
            location: object.location,
            reason,
        }),
    }
}

/// The rows kept, per kind.
#[derive(Default)]
struct Kept {
    flows: Vec<RecordBatch>,
    isolations: Vec<RecordBatch>,
    losses: Vec<RecordBatch>,
}

impl Kept {
    /// The rows of the Parquet file `data` that `request` asks for; why not, when the file
    /// cannot be read to its end.
    fn of(data: bytes::Bytes, schema: &SchemaRef, request: &Request) -> Result<Self, String> {
        let reader = ParquetRecordBatchReaderBuilder::try_new(data)
            .and_then(|b| b.build())
            .map_err(|e| e.to_string())?;
        let mut kept = Self::default();
        for batch in reader {
            let batch = conform(&batch.map_err(|e| e.to_string())?, schema)?;
            let masks = masks(&batch, request)?;
            for (mask, into) in [
                (masks.flows, &mut kept.flows),
                (masks.isolations, &mut kept.isolations),
                (masks.losses, &mut kept.losses),
            ] {
                let rows = arrow_select::filter::filter_record_batch(&batch, &mask)
                    .map_err(|e| e.to_string())?;
                if rows.num_rows() > 0 {
                    into.push(rows);
                }
            }
        }
        Ok(kept)
    }

    /// How many rows.
    fn rows(&self) -> u64 {
        [&self.flows, &self.isolations, &self.losses]
            .into_iter()
            .flatten()
            .map(|b| b.num_rows() as u64)
            .sum()
    }

    /// Adds `other`'s rows.
    fn append(&mut self, other: Self) {
        self.flows.extend(other.flows);
        self.isolations.extend(other.isolations);
        self.losses.extend(other.losses);
    }
}

/// The columns a file must have to be a flow-record file: the ones every layout has had, that
/// say which rows belong to a bundle.
const REQUIRED_COLUMNS: [&str; 8] = [
    "log_status",
    "cluster",
    "start",
    "end",
    "src_namespace",
    "src_pod",
    "dst_namespace",
    "dst_pod",
];

/// `batch` with the columns of `schema`, in its order: columns appended to the record after
/// the file was written are null. A batch without the [`REQUIRED_COLUMNS`] is not of a flow
/// log.
fn conform(batch: &RecordBatch, schema: &SchemaRef) -> Result<RecordBatch, String> {
    if let Some(missing) = REQUIRED_COLUMNS
        .iter()
        .find(|name| batch.column_by_name(name).is_none())
    {
        return Err(format!(
            "not a flow-record file: it has no column {missing}"
        ));
    }
    let columns = schema
        .fields()
        .iter()
        .map(|field| match batch.column_by_name(field.name()) {
            Some(column) if column.data_type() == field.data_type() => Ok(Arc::clone(column)),
            Some(column) => Err(format!(
                "column {} is {}, the flow record has {}",
                field.name(),
                column.data_type(),
                field.data_type()
            )),
            None => Ok(new_null_array(field.data_type(), batch.num_rows())),
        })
        .collect::<Result<Vec<ArrayRef>, String>>()?;
    RecordBatch::try_new(Arc::clone(schema), columns).map_err(|e| e.to_string())
}

struct Masks {
    flows: BooleanArray,
    isolations: BooleanArray,
    losses: BooleanArray,
}

/// Which rows of `batch` are flows, isolations and losses of the request.
fn masks(batch: &RecordBatch, request: &Request) -> Result<Masks, String> {
    let text = |name: &str| {
        batch
            .column_by_name(name)
            .and_then(|c| c.as_string_opt::<i32>())
            .ok_or_else(|| format!("column {name} missing or not a string"))
    };
    let bigint = |name: &str| {
        batch
            .column_by_name(name)
            .and_then(|c| c.as_primitive_opt::<arrow_array::types::Int64Type>())
            .ok_or_else(|| format!("column {name} missing or not a bigint"))
    };
    let (status, cluster) = (text("log_status")?, text("cluster")?);
    let (src_ns, src_pod) = (text("src_namespace")?, text("src_pod")?);
    let (dst_ns, dst_pod) = (text("dst_namespace")?, text("dst_pod")?);
    let (start, end) = (bigint("start")?, bigint("end")?);
    let is = |array: &StringArray, row: usize, value: &str| {
        array.is_valid(row) && array.value(row) == value
    };
    let pod = &request.pod;
    let (from, to) = (
        i64::try_from(request.from_s).unwrap_or(i64::MAX),
        i64::try_from(request.to_s).unwrap_or(i64::MAX),
    );
    let rows = batch.num_rows();
    let (mut flows, mut isolations, mut losses) = (
        Vec::with_capacity(rows),
        Vec::with_capacity(rows),
        Vec::with_capacity(rows),
    );
    for row in 0..rows {
        let in_cluster = request
            .cluster
            .as_deref()
            .is_none_or(|c| is(cluster, row, c));
        let overlaps = in_cluster && end.value(row) >= from && start.value(row) < to;
        let src = is(src_ns, row, &pod.namespace) && is(src_pod, row, &pod.name);
        let dst = is(dst_ns, row, &pod.namespace) && is(dst_pod, row, &pod.name);
        flows.push(overlaps && is(status, row, "OK") && (src || dst));
        isolations.push(overlaps && is(status, row, "ISOLATION") && src);
        losses.push(overlaps && is(status, row, "SKIPDATA"));
    }
    Ok(Masks {
        flows: BooleanArray::from(flows),
        isolations: BooleanArray::from(isolations),
        losses: BooleanArray::from(losses),
    })
}

/// `batches` as one batch sorted by start, end, node, then source and destination address.
fn sorted(schema: &SchemaRef, batches: &[RecordBatch]) -> Result<RecordBatch, EvidenceError> {
    let failed = |e: arrow_schema::ArrowError| EvidenceError::Write {
        path: PathBuf::from("(sorting)"),
        message: e.to_string(),
    };
    let all = arrow_select::concat::concat_batches(schema, batches).map_err(failed)?;
    let column = |name: &str| all.column_by_name(name).map(Arc::clone);
    let (Some(start), Some(end), Some(node), Some(src), Some(dst)) = (
        column("start"),
        column("end"),
        column("node"),
        column("srcaddr"),
        column("dstaddr"),
    ) else {
        return Ok(all);
    };
    let (start, end) = (
        start.as_primitive::<arrow_array::types::Int64Type>(),
        end.as_primitive::<arrow_array::types::Int64Type>(),
    );
    let (node, src, dst) = (
        node.as_string::<i32>(),
        src.as_string::<i32>(),
        dst.as_string::<i32>(),
    );
    let text = |a: &StringArray, i: usize| a.is_valid(i).then(|| a.value(i).to_owned());
    let mut order: Vec<u32> = (0..u32::try_from(all.num_rows()).unwrap_or(u32::MAX)).collect();
    order.sort_by_key(|&i| {
        let i = i as usize;
        (
            start.value(i),
            end.value(i),
            text(node, i),
            text(src, i),
            text(dst, i),
        )
    });
    arrow_select::take::take_record_batch(&all, &UInt32Array::from(order)).map_err(failed)
}

fn prepare_dir(dir: &Path) -> Result<(), EvidenceError> {
    let failed = |message: String| EvidenceError::Write {
        path: dir.to_owned(),
        message,
    };
    if dir.exists() {
        let mut entries = std::fs::read_dir(dir).map_err(|e| failed(e.to_string()))?;
        if entries.next().is_some() {
            return Err(failed(
                "exists and is not empty; a bundle needs a directory of its own".to_owned(),
            ));
        }
    }
    std::fs::create_dir_all(dir).map_err(|e| failed(e.to_string()))
}

fn write_file(path: &Path, text: impl AsRef<[u8]>) -> Result<(), EvidenceError> {
    std::fs::write(path, text).map_err(|e| EvidenceError::Write {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

fn write_json(path: &Path, value: &impl Serialize) -> Result<(), EvidenceError> {
    let text = serde_json::to_string_pretty(value).map_err(|e| EvidenceError::Write {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    write_file(path, format!("{text}\n"))
}

fn write_parquet(
    path: &Path,
    schema: &SchemaRef,
    batch: &RecordBatch,
) -> Result<(), EvidenceError> {
    let failed = |message: String| EvidenceError::Write {
        path: path.to_owned(),
        message,
    };
    let file = File::create(path).map_err(|e| failed(e.to_string()))?;
    let mut writer = ArrowWriter::try_new(file, Arc::clone(schema), Some(writer_properties()))
        .map_err(|e| failed(e.to_string()))?;
    writer.write(batch).map_err(|e| failed(e.to_string()))?;
    writer.close().map_err(|e| failed(e.to_string()))?;
    Ok(())
}
