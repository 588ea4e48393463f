//! The agent's Prometheus metrics: verdict counters of the probe, endpoints enforced, the
//! propagation latency of changes (watch event → maps synced) as a histogram, sync outcomes —
//! rendered with the collector's own metrics (events, records, ring-buffer losses, spool
//! depth) into one `/metrics` page.

use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tollgate_schemas::Counter;

/// Upper bounds of the latency histogram's buckets, seconds.
pub const LATENCY_BUCKETS_S: [f64; 10] = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// A cumulative histogram, as Prometheus exposes it.
#[derive(Debug, Default)]
struct Histogram {
    counts: [u64; LATENCY_BUCKETS_S.len()],
    count: u64,
    sum_s: f64,
}

/// The agent's counters and gauges.
#[derive(Debug, Default)]
pub struct AgentMetrics {
    /// Reconcile passes that synced the maps.
    pub passes: AtomicU64,
    /// Passes whose sync failed (retried).
    pub sync_failures: AtomicU64,
    /// Local endpoints whose rules are programmed (gauge).
    pub endpoints: AtomicU64,
    /// The probe's verdict and error counters, last read, indexed by [`Counter`].
    pub probe: [AtomicU64; Counter::COUNT as usize],
    latency: Mutex<Histogram>,
}

impl AgentMetrics {
    /// Records one propagation latency.
    pub fn observe_latency(&self, latency: Duration) {
        let seconds = latency.as_secs_f64();
        let mut histogram = self
            .latency
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (bound, count) in LATENCY_BUCKETS_S.iter().zip(&mut histogram.counts) {
            if seconds <= *bound {
                *count += 1;
            }
        }
        histogram.count += 1;
        histogram.sum_s += seconds;
    }

    /// The agent's part of `/metrics`.
    pub fn render_prometheus(&self) -> String {
        let mut out = String::new();
        let mut counter = |name: &str, help: &str, kind: &str, value: u64| {
            let _ = writeln!(
                out,
                "# HELP tollgate_agent_{name} {help}\n# TYPE tollgate_agent_{name} {kind}\ntollgate_agent_{name} {value}"
            );
        };
        counter(
            "sync_passes_total",
            "Reconcile passes that synced the maps.",
            "counter",
            self.passes.load(Ordering::Relaxed),
        );
        counter(
            "sync_failures_total",
            "Reconcile passes whose sync failed (retried).",
            "counter",
            self.sync_failures.load(Ordering::Relaxed),
        );
        counter(
            "endpoints_enforced",
            "Local endpoints whose rules are programmed.",
            "gauge",
            self.endpoints.load(Ordering::Relaxed),
        );
        let _ = writeln!(
            out,
            "# HELP tollgate_probe_packets_total Packets the probe decided or counted, by kind.\n\
             # TYPE tollgate_probe_packets_total counter"
        );
        for counter in Counter::ALL {
            let _ = writeln!(
                out,
                "tollgate_probe_packets_total{{kind=\"{}\"}} {}",
                counter.name(),
                self.probe[counter as usize].load(Ordering::Relaxed)
            );
        }
        let histogram = self
            .latency
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let name = "tollgate_agent_propagation_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Time from a watch event's arrival to the maps synced.\n# TYPE {name} histogram"
        );
        for (bound, count) in LATENCY_BUCKETS_S.iter().zip(&histogram.counts) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {count}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", histogram.count);
        let _ = writeln!(out, "{name}_sum {}", histogram.sum_s);
        let _ = writeln!(out, "{name}_count {}", histogram.count);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_histogram_is_cumulative_and_counters_are_named() {
        let metrics = AgentMetrics::default();
        metrics.observe_latency(Duration::from_millis(20));
        metrics.observe_latency(Duration::from_millis(300));
        metrics.probe[Counter::Deny as usize].store(7, Ordering::Relaxed);
        let text = metrics.render_prometheus();
        assert!(text.contains("tollgate_agent_propagation_seconds_bucket{le=\"0.01\"} 0\n"));
        assert!(text.contains("tollgate_agent_propagation_seconds_bucket{le=\"0.025\"} 1\n"));
        assert!(text.contains("tollgate_agent_propagation_seconds_bucket{le=\"0.5\"} 2\n"));
        assert!(text.contains("tollgate_agent_propagation_seconds_bucket{le=\"+Inf\"} 2\n"));
        assert!(text.contains("tollgate_agent_propagation_seconds_count 2\n"));
        assert!(text.contains("tollgate_probe_packets_total{kind=\"deny\"} 7\n"));
    }
}
