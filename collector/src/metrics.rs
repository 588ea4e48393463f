//! The collector's counters and gauges: shared atomics that every stage bumps, read by the
//! lab's report, `tollgate bench`, and rendered in the Prometheus text format for `/metrics`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::loss::LossSource;
use crate::sink::Failure;

/// Counters and gauges of one collector.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Flow events decoded from the ring buffer (and residual deny reports).
    pub events: AtomicU64,
    /// Flow records (loss records included) in files committed to the spool.
    pub records: AtomicU64,
    /// Files closed and spooled.
    pub files_spooled: AtomicU64,
    /// Files delivered to the sink and removed from the spool.
    pub files_shipped: AtomicU64,
    /// Failed deliveries (each retried later), indexed by [`Failure::index`].
    pub ship_failures: [AtomicU64; Failure::ALL.len()],
    /// Digests sealed, signed and spooled.
    pub digests_sealed: AtomicU64,
    /// Failed attempts to seal or sign a digest (each retried later).
    pub digest_failures: AtomicU64,
    /// Bytes waiting in the spool (gauge).
    pub spool_bytes: AtomicU64,
    /// Files waiting in the spool (gauge).
    pub spool_files: AtomicU64,
    /// 1 while the spool refuses files (a full disk, its byte bound): closed records are
    /// counted as lost, and the pending loss records are retried every second (gauge).
    pub spool_blocked: AtomicU64,
    /// Kernel ring-buffer reservation failures, as last read from the probe's counters.
    pub ringbuf_reserve_failed: AtomicU64,
    /// Security Lake objects written beside the flow log that the spool could not keep (their
    /// records are in the flow log; their sequence numbers are lost sequences of the digests).
    pub security_lake_files_lost: AtomicU64,
    /// Lost events, indexed by [`LossSource`] (`source as usize`); unknown counts add 0.
    pub lost: [AtomicU64; LossSource::ALL.len()],
    /// Loss records written, indexed by [`LossSource`].
    pub loss_records: [AtomicU64; LossSource::ALL.len()],
}

impl Metrics {
    /// Counts `events` lost at `source` (unknown counts only count the loss record).
    pub fn lose(&self, source: LossSource, events: Option<u64>) {
        self.lost[source as usize].fetch_add(events.unwrap_or(0), Ordering::Relaxed);
    }

    /// Counts one failed delivery of kind `failure`.
    pub fn ship_failed(&self, failure: Failure) {
        self.ship_failures[failure.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Failed deliveries so far, every kind.
    pub fn ship_failures_total(&self) -> u64 {
        self.ship_failures
            .iter()
            .map(|count| count.load(Ordering::Relaxed))
            .sum()
    }

    /// Counts one loss record written for `source`.
    pub fn loss_record(&self, source: LossSource) {
        self.loss_records[source as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Events lost at `source` so far.
    pub fn lost(&self, source: LossSource) -> u64 {
        self.lost[source as usize].load(Ordering::Relaxed)
    }

    /// Everything, in the Prometheus text exposition format.
    pub fn render_prometheus(&self) -> String {
        let mut out = String::new();
        let mut one = |name: &str, kind: &str, help: &str, value: &AtomicU64| {
            let _ = writeln!(out, "# HELP tollgate_collector_{name} {help}");
            let _ = writeln!(out, "# TYPE tollgate_collector_{name} {kind}");
            let _ = writeln!(
                out,
                "tollgate_collector_{name} {}",
                value.load(Ordering::Relaxed)
            );
        };
        one("events_total", "counter", "Flow events read.", &self.events);
        one(
            "records_total",
            "counter",
            "Flow records written.",
            &self.records,
        );
        one(
            "files_spooled_total",
            "counter",
            "Parquet files closed into the spool.",
            &self.files_spooled,
        );
        one(
            "files_shipped_total",
            "counter",
            "Parquet files delivered to the sink.",
            &self.files_shipped,
        );
        one(
            "digests_sealed_total",
            "counter",
            "Digests of the flow-log objects sealed, signed and spooled.",
            &self.digests_sealed,
        );
        one(
            "digest_failures_total",
            "counter",
            "Failed attempts to seal or sign a digest (retried).",
            &self.digest_failures,
        );
        one(
            "security_lake_files_lost_total",
            "counter",
            "Security Lake objects beside the flow log that the spool could not keep.",
            &self.security_lake_files_lost,
        );
        one(
            "spool_bytes",
            "gauge",
            "Bytes waiting in the spool.",
            &self.spool_bytes,
        );
        one(
            "spool_files",
            "gauge",
            "Files waiting in the spool.",
            &self.spool_files,
        );
        one(
            "spool_blocked",
            "gauge",
            "1 while the spool refuses files and records are counted as lost.",
            &self.spool_blocked,
        );
        one(
            "ringbuf_reserve_failed_total",
            "counter",
            "Events the kernel dropped because the ring buffer was full.",
            &self.ringbuf_reserve_failed,
        );
        labelled(
            &mut out,
            "ship_failures_total",
            "Failed deliveries (retried), by kind.",
            "kind",
            Failure::ALL
                .iter()
                .map(|f| f.label())
                .zip(&self.ship_failures),
        );
        labelled(
            &mut out,
            "lost_events_total",
            "Events lost, by where.",
            "source",
            LossSource::ALL.iter().map(|s| s.name()).zip(&self.lost),
        );
        labelled(
            &mut out,
            "loss_records_total",
            "SKIPDATA records written, by where.",
            "source",
            LossSource::ALL
                .iter()
                .map(|s| s.name())
                .zip(&self.loss_records),
        );
        out
    }
}

/// A counter with one series per value of `key`: `tollgate_collector_<name>{<key>="…"}`.
fn labelled<'a>(
    out: &mut String,
    name: &str,
    help: &str,
    key: &str,
    series: impl Iterator<Item = (&'a str, &'a AtomicU64)>,
) {
    let _ = writeln!(
        out,
        "# HELP tollgate_collector_{name} {help}\n# TYPE tollgate_collector_{name} counter"
    );
    for (value, count) in series {
        let _ = writeln!(
            out,
            "tollgate_collector_{name}{{{key}=\"{value}\"}} {}",
            count.load(Ordering::Relaxed)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_text_has_every_counter_and_loss_source() {
        let metrics = Metrics::default();
        metrics.events.fetch_add(5, Ordering::Relaxed);
        metrics.lose(LossSource::RingbufFull, Some(3));
        metrics.lose(LossSource::CollectorRestart, None);
        metrics.loss_record(LossSource::CollectorRestart);
        let text = metrics.render_prometheus();
        assert!(text.contains("tollgate_collector_events_total 5\n"));
        assert!(text.contains("tollgate_collector_lost_events_total{source=\"ringbuf-full\"} 3\n"));
        assert!(
            text.contains(
                "tollgate_collector_loss_records_total{source=\"collector-restart\"} 1\n"
            )
        );
        assert_eq!(
            metrics.lost(LossSource::CollectorRestart),
            0,
            "unknown counts add 0"
        );
        for source in LossSource::ALL {
            assert!(text.contains(&format!("source=\"{}\"", source.name())));
        }
    }
}
