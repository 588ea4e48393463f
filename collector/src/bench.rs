//! `tollgate bench collector`: what the collector costs per event, from the kernel's ring
//! buffer to Parquet bytes in the spool, against the bare arrow-rs writer.
//!
//! Each round fills the real ring buffer through the real probe ([`Flood`]: a distinct denied
//! flow per event, the worst case for aggregation, since no two events share a record), then
//! measures, in CPU time of the collecting thread: draining and decoding the ring, enrichment
//! and aggregation, closing every record, Arrow encoding and Parquet writing (ZSTD,
//! dictionaries, page statistics) of a rotated file into the spool. Filling is not measured.
//!
//! The upper bound: the same record batches (read back from the files) written again by a bare
//! `ArrowWriter` with the same properties into memory; the ratio says how much of the
//! writer's speed the whole pipeline keeps.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde::Serialize;
use tokio::sync::Notify;

use crate::{
    config::{CollectorConfig, SinkConfig},
    flood::{Flood, FloodError, RING_EVENTS},
    identity::Identities,
    metrics::Metrics,
    pipeline::Pipeline,
    readback::parquet_files,
    reader::MemorySource,
    spool::SpoolError,
    writer::writer_properties,
};

/// The benchmark could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The probe or a test run failed.
    #[error(transparent)]
    Flood(#[from] FloodError),
    /// The spool failed.
    #[error(transparent)]
    Spool(#[from] SpoolError),
    /// Reading the files back or rewriting them failed.
    #[error("{0}")]
    Files(String),
}

/// What one run measured.
#[derive(Debug, Clone, Serialize)]
pub struct CollectorBench {
    /// Events collected.
    pub events: u64,
    /// Flow records written.
    pub records: u64,
    /// Parquet bytes written.
    pub parquet_bytes: u64,
    /// CPU seconds of the collecting thread, all of it.
    pub pipeline_cpu_s: f64,
    /// Of which: draining, decoding, enriching and aggregating (the reader).
    pub reader_cpu_s: f64,
    /// CPU seconds of the bare writer on the same batches.
    pub bare_writer_cpu_s: f64,
    /// Peak resident set of the process, KiB.
    pub peak_rss_kib: u64,
}

impl CollectorBench {
    /// Events per CPU second, ring buffer to Parquet bytes.
    pub fn events_per_s(&self) -> f64 {
        self.events as f64 / self.pipeline_cpu_s.max(f64::EPSILON)
    }

    /// Events per CPU second of the reader stage alone (ring buffer to aggregated records).
    pub fn reader_events_per_s(&self) -> f64 {
        self.events as f64 / self.reader_cpu_s.max(f64::EPSILON)
    }

    /// Events per CPU second of the bare writer on the same batches.
    pub fn bare_events_per_s(&self) -> f64 {
        self.events as f64 / self.bare_writer_cpu_s.max(f64::EPSILON)
    }

    /// Parquet bytes per flow record.
    pub fn bytes_per_record(&self) -> f64 {
        self.parquet_bytes as f64 / self.records.max(1) as f64
    }
}

/// Collects `events` events (in ring-sized rounds) into Parquet files in a temporary spool.
pub fn collector(events: u64) -> Result<CollectorBench, BenchError> {
    let spool_dir = std::env::temp_dir().join(format!("tollgate-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&spool_dir);
    let config = CollectorConfig {
        spool_dir: spool_dir.clone(),
        sink: SinkConfig::Local {
            dir: spool_dir.join("unused"),
        },
        rotate_age_secs: 3600,
        ..CollectorConfig::default()
    };
    let metrics = Arc::new(Metrics::default());
    let identities = Arc::new(Mutex::new(Identities::default()));
    let (mut pipeline, _) = Pipeline::open(
        &config,
        identities,
        Arc::clone(&metrics),
        Arc::new(Notify::new()),
    )?;
    let (mut flood, mut reader) = Flood::new()?;
    let mut cpu = Duration::ZERO;
    let mut reader_cpu = Duration::ZERO;
    let mut collected = 0;
    while collected < events {
        let round = RING_EVENTS.min(usize::try_from(events - collected).unwrap_or(RING_EVENTS));
        flood.deny(round)?;
        let started = thread_cpu();
        pipeline.drain(&mut reader, &mut None);
        let drained = thread_cpu();
        pipeline.flush();
        reader_cpu += drained.saturating_sub(started);
        cpu += thread_cpu().saturating_sub(started);
        collected += round as u64;
    }
    let records = metrics.records.load(std::sync::atomic::Ordering::Relaxed);
    // The flows alone are measured: no kernel loss is read into the files.
    pipeline.finish(&MemorySource::default())?;
    let files =
        parquet_files(&spool_dir.join("ready")).map_err(|e| BenchError::Files(e.to_string()))?;
    let parquet_bytes = files
        .iter()
        .map(|f| std::fs::metadata(f).map_or(0, |m| m.len()))
        .sum();
    let bare_writer_cpu_s = bare_writer(&files)?.as_secs_f64();
    let _ = std::fs::remove_dir_all(&spool_dir);
    Ok(CollectorBench {
        events: collected,
        records,
        parquet_bytes,
        pipeline_cpu_s: cpu.as_secs_f64(),
        reader_cpu_s: reader_cpu.as_secs_f64(),
        bare_writer_cpu_s,
        peak_rss_kib: (tollgate_enforcer::bench::scale::peak_rss_mib() * 1024.0) as u64,
    })
}

/// CPU time of writing every batch of `files` again with a bare `ArrowWriter` into memory.
fn bare_writer(files: &[std::path::PathBuf]) -> Result<Duration, BenchError> {
    let error = |e: &dyn std::fmt::Display| BenchError::Files(e.to_string());
    let mut cpu = Duration::ZERO;
    for path in files {
        let file = std::fs::File::open(path).map_err(|e| error(&e))?;
        let reader = ParquetRecordBatchReaderBuilder::try_new(file)
            .and_then(|b| b.build())
            .map_err(|e| error(&e))?;
        let batches = reader
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| error(&e))?;
        let Some(first) = batches.first() else {
            continue;
        };
        let started = thread_cpu();
        let mut writer =
            ArrowWriter::try_new(Vec::new(), first.schema(), Some(writer_properties()))
                .map_err(|e| error(&e))?;
        for batch in &batches {
            writer.write(batch).map_err(|e| error(&e))?;
        }
        writer.close().map_err(|e| error(&e))?;
        cpu += thread_cpu().saturating_sub(started);
    }
    Ok(cpu)
}

/// CPU time of the calling thread.
fn thread_cpu() -> Duration {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(
        u64::try_from(ts.tv_sec).unwrap_or(0),
        u32::try_from(ts.tv_nsec).unwrap_or(0),
    )
}

/// The result as a table.
pub fn render(bench: &CollectorBench) -> String {
    format!(
        "events collected (distinct denied flows):  {}\n\
         flow records written:                      {}\n\
         reader, ring buffer -> aggregated records: {:.0} events/s per core ({:.0} ns/event)\n\
         collector, ring buffer -> Parquet bytes:   {:.0} events/s per core ({:.0} ns/event)\n\
         bare ArrowWriter, same batches:            {:.0} events/s per core\n\
         ratio collector / bare writer:             {:.2}\n\
         Parquet bytes per flow record (ZSTD):      {:.1}\n\
         peak RSS:                                  {:.1} MiB\n",
        bench.events,
        bench.records,
        bench.reader_events_per_s(),
        1e9 / bench.reader_events_per_s(),
        bench.events_per_s(),
        1e9 / bench.events_per_s(),
        bench.bare_events_per_s(),
        bench.events_per_s() / bench.bare_events_per_s(),
        bench.bytes_per_record(),
        bench.peak_rss_kib as f64 / 1024.0,
    )
}
