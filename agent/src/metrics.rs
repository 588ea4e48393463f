//! The agent's Prometheus metrics: verdict counters of the probe, endpoints enforced, the
//! propagation latency of changes (watch event → maps synced) as a histogram, sync outcomes,
//! the entries of each policy map against its capacity and the entries the drift check
//! repaired — rendered with the collector's own metrics (events, records, ring-buffer losses,
//! spool depth) into one `/metrics` page.
//!
//! The daemon feeds them after every pass: the map gauges from the pass's
//! `DesiredState::usage` (what the agent keeps in the maps, which is what they hold once the
//! pass synced), the drift counter from the repairs of the pass's drift check.

use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tollgate_enforcer::{desired::MapUsage, sync::SyncStats};
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
    maps: Mutex<Maps>,
}

/// The policy maps' gauges and drift counters.
#[derive(Debug, Default)]
struct Maps {
    /// Entries and capacity per map, as of the last pass that synced.
    usage: Option<[MapUsage; 5]>,
    /// Entries repaired by drift checks, per map name.
    repaired: std::collections::BTreeMap<&'static str, u64>,
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

    /// Records the maps' entries against their capacity, after a pass that synced.
    pub fn set_map_usage(&self, usage: [MapUsage; 5]) {
        self.lock_maps().usage = Some(usage);
    }

    /// Counts the entries a drift check rewrote or removed.
    pub fn count_drift_repairs(&self, repairs: &SyncStats) {
        let mut maps = self.lock_maps();
        for (map, stats) in repairs.per_map() {
            *maps.repaired.entry(map).or_default() += (stats.upserts + stats.deletes) as u64;
        }
    }

    fn lock_maps(&self) -> std::sync::MutexGuard<'_, Maps> {
        self.maps
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
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
        self.render_maps(&mut out);
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

    /// `tollgate_map_entries`, `tollgate_map_capacity` (once a pass synced) and
    /// `tollgate_map_drift_repairs_total`, by map name.
    fn render_maps(&self, out: &mut String) {
        let maps = self.lock_maps();
        if let Some(usage) = &maps.usage {
            let _ = writeln!(
                out,
                "# HELP tollgate_map_entries Entries the agent keeps in each policy map.\n\
                 # TYPE tollgate_map_entries gauge"
            );
            for map in usage {
                let _ = writeln!(
                    out,
                    "tollgate_map_entries{{map=\"{}\"}} {}",
                    map.map, map.entries
                );
            }
            let _ = writeln!(
                out,
                "# HELP tollgate_map_capacity Entries each policy map can hold.\n\
                 # TYPE tollgate_map_capacity gauge"
            );
            for map in usage {
                let _ = writeln!(
                    out,
                    "tollgate_map_capacity{{map=\"{}\"}} {}",
                    map.map, map.capacity
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP tollgate_map_drift_repairs_total Policy map entries a drift check found \
             differing from what the agent wrote, and rewrote or removed.\n\
             # TYPE tollgate_map_drift_repairs_total counter"
        );
        for (map, _) in SyncStats::default().per_map() {
            let repaired = maps.repaired.get(map).copied().unwrap_or(0);
            let _ = writeln!(
                out,
                "tollgate_map_drift_repairs_total{{map=\"{map}\"}} {repaired}"
            );
        }
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

    #[test]
    fn map_gauges_and_drift_repairs_are_labelled_by_map() {
        let metrics = AgentMetrics::default();
        let text = metrics.render_prometheus();
        assert!(!text.contains("tollgate_map_entries"), "no pass synced yet");
        assert!(text.contains("tollgate_map_drift_repairs_total{map=\"TG_POLICY\"} 0\n"));

        let mut desired = tollgate_enforcer::desired::DesiredState::default();
        desired
            .node_addrs
            .insert(tollgate_schemas::EndpointKey { addr: [0; 16] });
        metrics.set_map_usage(desired.usage(&tollgate_enforcer::desired::Capacity::default()));
        let mut repairs = SyncStats::default();
        repairs.policy.deletes = 2;
        repairs.endpoints.upserts = 1;
        metrics.count_drift_repairs(&repairs);
        metrics.count_drift_repairs(&repairs);
        let text = metrics.render_prometheus();
        assert!(text.contains("# TYPE tollgate_map_entries gauge\n"));
        assert!(text.contains("tollgate_map_entries{map=\"TG_NODE_ADDRS\"} 1\n"));
        assert!(text.contains("tollgate_map_entries{map=\"TG_RULESETS\"} 1\n"));
        assert!(text.contains("tollgate_map_capacity{map=\"TG_POLICY\"} 1048576\n"));
        assert!(text.contains("tollgate_map_drift_repairs_total{map=\"TG_POLICY\"} 4\n"));
        assert!(text.contains("tollgate_map_drift_repairs_total{map=\"TG_ENDPOINTS\"} 2\n"));
        assert!(text.contains("tollgate_map_drift_repairs_total{map=\"TG_PEERS\"} 0\n"));
    }
}
