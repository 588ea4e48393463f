//! Parquet files: flow records → one open file per partition → closed files in the spool.
//!
//! A writer makes the files of one [`Layout`]: the flow log (the record schema, partitions
//! `cluster=…/dt=…/hour=…`) or Amazon Security Lake (OCSF Network Activity, [`crate::ocsf`],
//! partitions `ext/<source>/region=…/accountId=…/eventDay=YYYYMMDD`, one OCSF class per
//! object, its rows in time order: each write's records are sorted ([`ocsf::time_order`]), and
//! a write that starts before the last row of the partition's open object goes into a new
//! object, the open one closed).
//!
//! [`FileWriter::write`] routes each record to the partition of its start time (UTC),
//! encodes each partition's records as Arrow batches of at most [`BATCH_ROWS`] rows and
//! appends them to that partition's open file (a temporary file in the spool). A file is closed
//! when it reaches the size limit ([`FileWriter::write`]) or the age limit
//! ([`FileWriter::rotate_aged`]), or on shutdown ([`FileWriter::close_all`]); closing writes
//! the Parquet footer and commits the file to the spool under its object key,
//! `<partition>/<node>-<first record's start, YYYYMMDDTHHMMSSZ>-<spool sequence>.parquet`. The
//! name is fixed before the first byte is written, so every retry of the upload uses it; the
//! spool's sequence numbers are shared by both layouts, so one digest chain covers both.
//!
//! Writer properties are built once ([`writer_properties`]): ZSTD, dictionary encoding,
//! page-level statistics, [`ROW_GROUP_ROWS`] rows per row group.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use arrow_schema::SchemaRef;
use parquet::{
    arrow::ArrowWriter,
    basic::{Compression, ZstdLevel},
    file::properties::{EnabledStatistics, WriterProperties},
};

use crate::{
    clock::{NS_PER_S, compact_utc, partition_date, unix_now_ns},
    config::SecurityLakeConfig,
    loss::{LossSource, LossSpan},
    ocsf,
    record::{FlowRecord, encode, schema},
    spool::{Commit, FileFacts, Spool, Spooled},
};

/// The first key segment of every Security Lake object: what the shipper routes to the
/// Security Lake's sink.
pub const SECURITY_LAKE_ROOT: &str = "ext";

/// Which files a writer makes.
#[derive(Debug, Clone, PartialEq)]
pub enum Layout {
    /// The flow log.
    FlowLog,
    /// Amazon Security Lake's custom source.
    SecurityLake(CustomSource),
}

/// The custom source a Security Lake writer's partitions name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomSource {
    /// The source's name (`ext/<source_name>/`).
    pub source_name: String,
    /// `region=`.
    pub region: String,
    /// `accountId=`.
    pub account_id: String,
}

impl Layout {
    /// Seconds per partition: an hour for the flow log, a day for Security Lake.
    fn partition_secs(&self) -> u64 {
        match self {
            Self::FlowLog => 3600,
            Self::SecurityLake(_) => 86_400,
        }
    }

    /// The partition directory that starts at `start_s`.
    fn partition(&self, cluster: &str, start_s: u64) -> String {
        match self {
            Self::FlowLog => {
                let (dt, hour) = partition_date(start_s);
                format!("cluster={cluster}/dt={dt}/hour={hour}")
            }
            Self::SecurityLake(lake) => {
                let day = &compact_utc(start_s)[..8];
                format!(
                    "{SECURITY_LAKE_ROOT}/{}/region={}/accountId={}/eventDay={day}",
                    lake.source_name, lake.region, lake.account_id
                )
            }
        }
    }
}

/// Rows per Parquet row group: large enough for good compression and pruning, small enough
/// that a row group in progress stays within a few tens of MiB.
pub const ROW_GROUP_ROWS: usize = 128 * 1024;

/// Records encoded into one record batch and handed to the Parquet writer at a time: a
/// window's records (up to `max_open_records`) are never all in Arrow form at once, and each
/// batch's arrays are still in the CPU's cache when the writer encodes them. `bench
/// collector`: at 8,192 the flood's peak RSS was 8 MiB higher (82 against 74 MiB) and no
/// faster; at 1,024, no lower and slower.
pub const BATCH_ROWS: usize = 2 * 1024;

/// What became of a closed file.
#[derive(Debug)]
pub enum Closed {
    /// Committed to the spool.
    Spooled {
        /// The file.
        file: Spooled,
        /// Records in it.
        records: u64,
        /// The loss records among them.
        losses: Vec<LossSpan>,
    },
    /// Its records could not be kept.
    Lost {
        /// Why: [`LossSource::SpoolFull`] or [`LossSource::SpoolError`].
        source: LossSource,
        /// Flow events its records aggregated.
        events: u64,
        /// Records in it.
        records: u64,
        /// First record's start (Unix s).
        from_s: u64,
        /// Last record's end (Unix s).
        to_s: u64,
        /// What went wrong, for the log.
        detail: String,
        /// Loss records the file carried: still unreported, to be written again.
        requeue: Vec<LossSpan>,
    },
}

/// Records given up without a file (the spool cannot take any now), added as they come and
/// counted lost once for them all ([`Refused::lost`]).
#[derive(Debug, Default)]
pub struct Refused {
    tally: Tally,
    /// Where they are lost, and why: the last reason given.
    reason: Option<(LossSource, String)>,
}

impl Refused {
    /// Gives up `records` too, lost at `source` for want of room or spool (`detail`).
    pub fn add(&mut self, records: &[FlowRecord], source: LossSource, detail: &str) {
        if records.is_empty() {
            return;
        }
        self.tally.add(Tally::of(records));
        self.reason = Some((source, detail.to_owned()));
    }

    /// What is lost with every record given up; `None` when none was.
    pub fn lost(self) -> Option<Closed> {
        let (source, detail) = self.reason?;
        Some(self.tally.lost(source, detail))
    }
}

/// What a file (or a batch) holds, for accounting.
#[derive(Debug, Default)]
struct Tally {
    records: u64,
    events: u64,
    first_s: u64,
    /// The latest start (an OCSF row's `time`).
    last_start_s: u64,
    last_s: u64,
    losses: Vec<LossSpan>,
}

impl Tally {
    fn of(records: &[FlowRecord]) -> Self {
        Self {
            records: records.len() as u64,
            events: records.iter().map(FlowRecord::events).sum(),
            first_s: records.iter().map(|r| r.start_s).min().unwrap_or_default(),
            last_start_s: records.iter().map(|r| r.start_s).max().unwrap_or_default(),
            last_s: records.iter().map(|r| r.end_s).max().unwrap_or_default(),
            losses: records.iter().filter_map(FlowRecord::loss_span).collect(),
        }
    }

    fn add(&mut self, other: Self) {
        if self.records == 0 {
            self.first_s = other.first_s;
        }
        self.records += other.records;
        self.events += other.events;
        self.first_s = self.first_s.min(other.first_s);
        self.last_start_s = self.last_start_s.max(other.last_start_s);
        self.last_s = self.last_s.max(other.last_s);
        self.losses.extend(other.losses);
    }

    /// What is lost with these records.
    fn lost(self, source: LossSource, detail: String) -> Closed {
        Closed::Lost {
            source,
            events: self.events,
            records: self.records,
            from_s: self.first_s,
            to_s: self.last_s,
            detail,
            requeue: self.losses,
        }
    }
}

/// A file being written.
struct OpenFile {
    writer: ArrowWriter<File>,
    sequence: u64,
    temp: PathBuf,
    key: String,
    opened: Instant,
    tally: Tally,
}

/// Writes flow records into rotated Parquet files in the spool.
pub struct FileWriter {
    cluster: String,
    node: String,
    layout: Layout,
    schema: SchemaRef,
    properties: WriterProperties,
    rotate_bytes: u64,
    rotate_age: Duration,
    open: BTreeMap<String, OpenFile>,
}

/// The writer properties of every flow file: ZSTD (level 3), dictionary encoding, page-level
/// statistics (min/max for pruning), [`ROW_GROUP_ROWS`] rows per row group.
pub fn writer_properties() -> WriterProperties {
    WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .set_dictionary_enabled(true)
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .set_created_by(format!("tollgate {}", env!("CARGO_PKG_VERSION")))
        .build()
}

impl FileWriter {
    /// A flow-log writer for `node` of `cluster`, rotating at `rotate_bytes` or `rotate_age`.
    pub fn new(cluster: &str, node: &str, rotate_bytes: u64, rotate_age: Duration) -> Self {
        Self::with_layout(Layout::FlowLog, cluster, node, rotate_bytes, rotate_age)
    }

    /// A Security Lake writer for `node` of `cluster`, rotating as `lake` says.
    pub fn security_lake(lake: &SecurityLakeConfig, cluster: &str, node: &str) -> Self {
        Self::with_layout(
            Layout::SecurityLake(CustomSource {
                source_name: lake.source_name.clone(),
                region: lake.region.clone(),
                account_id: lake.account_id.clone(),
            }),
            cluster,
            node,
            lake.rotate_bytes,
            lake.rotate_age(),
        )
    }

    fn with_layout(
        layout: Layout,
        cluster: &str,
        node: &str,
        rotate_bytes: u64,
        rotate_age: Duration,
    ) -> Self {
        let schema = match layout {
            Layout::FlowLog => schema(),
            Layout::SecurityLake(_) => ocsf::schema(),
        };
        Self {
            cluster: cluster.to_owned(),
            node: node.to_owned(),
            layout,
            schema,
            properties: writer_properties(),
            rotate_bytes,
            rotate_age,
            open: BTreeMap::new(),
        }
    }

    /// Files open now.
    pub fn open_files(&self) -> usize {
        self.open.len()
    }

    /// The losses whose records are in files still open (not acknowledged yet).
    pub fn open_losses(&self) -> impl Iterator<Item = LossSpan> + '_ {
        self.open
            .values()
            .flat_map(|file| file.tally.losses.iter().copied())
    }

    /// Appends `records` to their partitions' files; returns the files this closed.
    pub fn write(&mut self, spool: &mut Spool, records: Vec<FlowRecord>) -> Vec<Closed> {
        // Group by the partition of each record's start, name each partition once. Records
        // all of one partition (a window's, mostly) are that partition's as they are.
        let span = self.layout.partition_secs();
        let mut by_partition: BTreeMap<u64, Vec<FlowRecord>> = BTreeMap::new();
        match records.first().map(|r| r.start_s / span) {
            Some(index) if records.iter().all(|r| r.start_s / span == index) => {
                by_partition.insert(index, records);
            }
            _ => {
                for record in records {
                    by_partition
                        .entry(record.start_s / span)
                        .or_default()
                        .push(record);
                }
            }
        }
        let mut closed = Vec::new();
        for (index, records) in by_partition {
            let partition = self.layout.partition(&self.cluster, index * span);
            closed.extend(self.append(spool, partition, records));
        }
        closed
    }

    fn append(
        &mut self,
        spool: &mut Spool,
        partition: String,
        mut records: Vec<FlowRecord>,
    ) -> Vec<Closed> {
        let batch = Tally::of(&records);
        // An OCSF object keeps its rows in time order: records older than its last row (a
        // conntrack walk's packets of a window already closed, a loss record of an earlier
        // span) start a new object.
        let late = matches!(self.layout, Layout::SecurityLake(_))
            && self
                .open
                .get(&partition)
                .is_some_and(|open| batch.first_s < open.tally.last_start_s);
        let mut closed: Vec<Closed> = late
            .then(|| self.close(spool, &partition))
            .flatten()
            .into_iter()
            .collect();
        let mut file = match self.open.remove(&partition) {
            Some(file) => file,
            None => match self.create(spool, &partition, batch.first_s) {
                Ok(file) => file,
                Err(detail) => {
                    closed.push(batch.lost(LossSource::SpoolError, detail));
                    return closed;
                }
            },
        };
        if matches!(self.layout, Layout::SecurityLake(_)) {
            // In time order before it is cut into batches, each of which OCSF encoding sorts.
            records.sort_by_key(ocsf::time_order);
        }
        let logged_ms = i64::try_from(unix_now_ns() / (NS_PER_S / 1000)).unwrap_or(i64::MAX);
        let mut first_row = file.tally.records;
        let written = records.chunks(BATCH_ROWS).try_for_each(|chunk| {
            let encoded = match &self.layout {
                Layout::FlowLog => encode(chunk, &self.node, &self.cluster, &self.schema),
                Layout::SecurityLake(lake) => {
                    let origin = ocsf::Origin {
                        cluster: &self.cluster,
                        node: &self.node,
                        region: &lake.region,
                        account_id: &lake.account_id,
                        sequence: file.sequence,
                        first_row,
                        logged_ms,
                    };
                    ocsf::encode(chunk, &origin, &self.schema)
                }
            };
            first_row += chunk.len() as u64;
            let batch = encoded.map_err(|e| format!("encoding: {e}"))?;
            file.writer
                .write(&batch)
                .map_err(|e| format!("writing {}: {e}", file.temp.display()))
        });
        file.tally.add(batch);
        if let Err(detail) = written {
            // The file is unusable: what it held so far is lost with it.
            let _ = std::fs::remove_file(&file.temp);
            spool.lose_sequence(file.sequence, LossSource::SpoolError, &detail);
            closed.push(file.tally.lost(LossSource::SpoolError, detail));
            return closed;
        }
        let size = file.writer.bytes_written() + file.writer.in_progress_size();
        self.open.insert(partition.clone(), file);
        if size as u64 >= self.rotate_bytes {
            closed.extend(self.close(spool, &partition));
        }
        closed
    }

    fn create(&self, spool: &mut Spool, partition: &str, first_s: u64) -> Result<OpenFile, String> {
        let (seq, temp) = spool.begin().map_err(|e| e.detail())?;
        let key = format!(
            "{partition}/{}-{}-{seq:06}.parquet",
            self.node,
            compact_utc(first_s)
        );
        let writer = File::create(&temp)
            .map_err(|e| format!("creating {}: {e}", temp.display()))
            .and_then(|file| {
                ArrowWriter::try_new(file, self.schema.clone(), Some(self.properties.clone()))
                    .map_err(|e| {
                        let _ = std::fs::remove_file(&temp);
                        format!("starting {}: {e}", temp.display())
                    })
            })
            .inspect_err(|detail| spool.lose_sequence(seq, LossSource::SpoolError, detail))?;
        Ok(OpenFile {
            writer,
            sequence: seq,
            temp,
            key,
            opened: Instant::now(),
            tally: Tally::default(),
        })
    }

    /// Closes every file open for `rotate_age` or longer.
    pub fn rotate_aged(&mut self, spool: &mut Spool) -> Vec<Closed> {
        let aged: Vec<_> = self
            .open
            .iter()
            .filter(|(_, f)| f.opened.elapsed() >= self.rotate_age)
            .map(|(p, _)| p.clone())
            .collect();
        aged.iter()
            .filter_map(|partition| self.close(spool, partition))
            .collect()
    }

    /// Closes every open file.
    pub fn close_all(&mut self, spool: &mut Spool) -> Vec<Closed> {
        let all: Vec<_> = self.open.keys().cloned().collect();
        all.iter()
            .filter_map(|partition| self.close(spool, partition))
            .collect()
    }

    /// Finishes the file of `partition` and commits it to the spool, or counts its records
    /// lost.
    #[tracing::instrument(
        level = "debug",
        name = "flush",
        skip(self, spool),
        fields(key = tracing::field::Empty, records = tracing::field::Empty, bytes = tracing::field::Empty)
    )]
    fn close(&mut self, spool: &mut Spool, partition: &str) -> Option<Closed> {
        let mut file = self.open.remove(partition)?;
        let span = tracing::Span::current();
        span.record("key", file.key.as_str());
        span.record("records", file.tally.records);
        if let Err(error) = file.writer.finish() {
            let _ = std::fs::remove_file(&file.temp);
            let detail = format!("closing {}: {error}", file.temp.display());
            spool.lose_sequence(file.sequence, LossSource::SpoolError, &detail);
            return Some(file.tally.lost(LossSource::SpoolError, detail));
        }
        let facts = FileFacts {
            sequence: file.sequence,
            records: file.tally.records,
            first_record_s: file.tally.first_s,
            last_record_s: file.tally.last_s,
            loss_records: file.tally.losses.clone(),
        };
        Some(match spool.commit(&file.temp, &file.key, facts) {
            Ok(Commit::Spooled(spooled)) => {
                span.record("bytes", spooled.bytes);
                Closed::Spooled {
                    file: spooled,
                    records: file.tally.records,
                    losses: file.tally.losses,
                }
            }
            Ok(Commit::Full { bytes, waiting }) => {
                let detail = format!("{}: {bytes} bytes do not fit, {waiting} waiting", file.key);
                file.tally.lost(LossSource::SpoolFull, detail)
            }
            Err(error) => {
                let _ = std::fs::remove_file(&file.temp);
                spool.lose_sequence(file.sequence, LossSource::SpoolError, &error.detail());
                file.tally.lost(LossSource::SpoolError, error.detail())
            }
        })
    }
}
