//! The collector's counters and gauges: shared atomics that every stage bumps, read by the
//! lab's report and `tollgate bench`, and encoded at each scrape of `/metrics` by
//! prometheus-client (`Metrics` is a [`Collector`]; [`exposition`] renders collectors in the
//! Prometheus text format).

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, prometheus_text};
use prometheus_client::metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge};
use prometheus_client::registry::Registry;

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
}

impl Collector for Metrics {
    /// Every counter and gauge as it is at the scrape.
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        for (name, help, value) in [
            ("events", "Flow events read.", &self.events),
            ("records", "Flow records written.", &self.records),
            (
                "files_spooled",
                "Parquet files closed into the spool.",
                &self.files_spooled,
            ),
            (
                "files_shipped",
                "Parquet files delivered to the sink.",
                &self.files_shipped,
            ),
            (
                "digests_sealed",
                "Digests of the flow-log objects sealed, signed and spooled.",
                &self.digests_sealed,
            ),
            (
                "digest_failures",
                "Failed attempts to seal or sign a digest (retried).",
                &self.digest_failures,
            ),
            (
                "security_lake_files_lost",
                "Security Lake objects beside the flow log that the spool could not keep.",
                &self.security_lake_files_lost,
            ),
            (
                "ringbuf_reserve_failed",
                "Events the kernel dropped because the ring buffer was full.",
                &self.ringbuf_reserve_failed,
            ),
        ] {
            counter(
                &mut encoder,
                &format!("tollgate_collector_{name}"),
                help,
                value.load(Ordering::Relaxed),
            )?;
        }
        for (name, help, value) in [
            (
                "spool_bytes",
                "Bytes waiting in the spool.",
                &self.spool_bytes,
            ),
            (
                "spool_files",
                "Files waiting in the spool.",
                &self.spool_files,
            ),
            (
                "spool_blocked",
                "1 while the spool refuses files and records are counted as lost.",
                &self.spool_blocked,
            ),
        ] {
            gauge(
                &mut encoder,
                &format!("tollgate_collector_{name}"),
                help,
                value.load(Ordering::Relaxed),
            )?;
        }
        labelled(
            &mut encoder,
            "tollgate_collector_ship_failures",
            "Failed deliveries (retried), by kind.",
            "kind",
            Failure::ALL
                .iter()
                .map(|f| f.label())
                .zip(loads(&self.ship_failures)),
        )?;
        for (name, help, counts) in [
            ("lost_events", "Events lost, by where.", &self.lost),
            (
                "loss_records",
                "SKIPDATA records written, by where.",
                &self.loss_records,
            ),
        ] {
            labelled(
                &mut encoder,
                &format!("tollgate_collector_{name}"),
                help,
                "source",
                LossSource::ALL.iter().map(|s| s.name()).zip(loads(counts)),
            )?;
        }
        Ok(())
    }
}

fn loads(counts: &[AtomicU64]) -> impl Iterator<Item = u64> + '_ {
    counts.iter().map(|count| count.load(Ordering::Relaxed))
}

/// One counter series, `<name>_total`, as it is now.
pub fn counter(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> fmt::Result {
    let counter = ConstCounter::new(value);
    counter.encode(encoder.encode_descriptor(name, help, None, counter.metric_type())?)
}

/// One gauge series, as it is now.
pub fn gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> fmt::Result {
    let gauge = ConstGauge::new(value);
    gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)
}

/// A counter with one series per value of `key`: `<name>_total{<key>="…"}`.
pub fn labelled<'a>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    key: &str,
    series: impl Iterator<Item = (&'a str, u64)>,
) -> fmt::Result {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (value, count) in series {
        ConstCounter::new(count).encode(family.encode_family(&[(key, value)])?)?;
    }
    Ok(())
}

/// `collectors` at this moment, in the Prometheus text format (version 0.0.4) that `/metrics`
/// serves.
pub fn exposition(collectors: impl IntoIterator<Item = Box<dyn Collector>>) -> String {
    let mut registry = Registry::default();
    for collector in collectors {
        registry.register_collector(collector);
    }
    let mut text = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_text::encode(&mut text, &registry);
    text
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn prometheus_text_has_every_counter_and_loss_source() {
        let metrics = Arc::new(Metrics::default());
        metrics.events.fetch_add(5, Ordering::Relaxed);
        metrics.lose(LossSource::RingbufFull, Some(3));
        metrics.lose(LossSource::CollectorRestart, None);
        metrics.loss_record(LossSource::CollectorRestart);
        let text = exposition([Box::new(Arc::clone(&metrics)) as Box<dyn Collector>]);
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
