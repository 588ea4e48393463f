//! The agent's Prometheus metrics: verdict counters of the probe, endpoints enforced, the
//! propagation latency of changes (watch event → maps synced) as a histogram, sync outcomes
//! (failures labelled by [`Error::metric_label`]), the entries of each policy map against its
//! capacity and the entries the drift check repaired.
//!
//! The daemon feeds them after every pass: the map gauges from the pass's
//! `DesiredState::usage` (what the agent keeps in the maps, which is what they hold once the
//! pass synced), the drift counter from the repairs of the pass's drift check. At each scrape
//! of `/metrics`, [`AgentMetrics`] and the collector's `Metrics` (events, records, ring-buffer
//! losses, spool depth) are encoded by prometheus-client as they are then
//! (`tollgate_collector::metrics::exposition`).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::{MetricType, gauge::ConstGauge, histogram::Histogram};
use tollgate_collector::metrics::{counter, gauge, labelled};
use tollgate_enforcer::{desired::MapUsage, sync::SyncStats};
use tollgate_schemas::Counter;

use crate::{ERROR_LABELS, Error};

/// Upper bounds of the latency histogram's buckets, seconds.
pub const LATENCY_BUCKETS_S: [f64; 10] = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// The agent's counters and gauges.
#[derive(Debug)]
pub struct AgentMetrics {
    /// Reconcile passes that synced the maps.
    pub passes: AtomicU64,
    /// Local endpoints whose rules are programmed (gauge).
    pub endpoints: AtomicU64,
    /// The probe's verdict and error counters, last read, indexed by [`Counter`].
    pub probe: [AtomicU64; Counter::COUNT as usize],
    /// Passes whose sync failed (retried), indexed as [`ERROR_LABELS`].
    sync_failures: [AtomicU64; ERROR_LABELS.len()],
    latency: Histogram,
    maps: Mutex<Maps>,
}

impl Default for AgentMetrics {
    fn default() -> Self {
        Self {
            passes: AtomicU64::default(),
            endpoints: AtomicU64::default(),
            probe: Default::default(),
            sync_failures: Default::default(),
            latency: Histogram::new(LATENCY_BUCKETS_S),
            maps: Mutex::default(),
        }
    }
}

/// The policy maps' gauges and drift counters.
#[derive(Debug, Default)]
struct Maps {
    /// Entries and capacity per map, as of the last pass that synced.
    usage: Option<[MapUsage; 5]>,
    /// Entries repaired by drift checks, per map name.
    repaired: BTreeMap<&'static str, u64>,
}

impl AgentMetrics {
    /// Records one propagation latency.
    pub fn observe_latency(&self, latency: Duration) {
        self.latency.observe(latency.as_secs_f64());
    }

    /// Counts a pass that failed with `error`, by its [`Error::metric_label`].
    pub fn count_sync_failure<E: tollgate_enforcer::sync::MapsError>(&self, error: &Error<E>) {
        self.sync_failures[error.metric_index()].fetch_add(1, Ordering::Relaxed);
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

    fn lock_maps(&self) -> MutexGuard<'_, Maps> {
        self.maps.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `tollgate_map_entries`, `tollgate_map_capacity` (once a pass synced) and
    /// `tollgate_map_drift_repairs_total`, by map name.
    fn encode_maps(&self, encoder: &mut DescriptorEncoder) -> fmt::Result {
        let maps = self.lock_maps();
        if let Some(usage) = &maps.usage {
            for (name, help, value) in [
                (
                    "tollgate_map_entries",
                    "Entries the agent keeps in each policy map.",
                    (|map: &MapUsage| map.entries as u64) as fn(&MapUsage) -> u64,
                ),
                (
                    "tollgate_map_capacity",
                    "Entries each policy map can hold.",
                    |map: &MapUsage| u64::from(map.capacity),
                ),
            ] {
                let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
                for map in usage {
                    let gauge = ConstGauge::new(value(map));
                    gauge.encode(family.encode_family(&[("map", map.map)])?)?;
                }
            }
        }
        labelled(
            encoder,
            "tollgate_map_drift_repairs",
            "Policy map entries a drift check found differing from what the agent wrote, and \
             rewrote or removed.",
            "map",
            SyncStats::default()
                .per_map()
                .into_iter()
                .map(|(map, _)| (map, maps.repaired.get(map).copied().unwrap_or(0))),
        )
    }
}

impl Collector for AgentMetrics {
    /// The agent's part of `/metrics`, as it is at the scrape.
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        counter(
            &mut encoder,
            "tollgate_agent_sync_passes",
            "Reconcile passes that synced the maps.",
            self.passes.load(Ordering::Relaxed),
        )?;
        labelled(
            &mut encoder,
            "tollgate_agent_sync_failures",
            "Reconcile passes whose sync failed (retried), by what failed.",
            "error",
            ERROR_LABELS
                .into_iter()
                .zip(self.sync_failures.iter().map(|c| c.load(Ordering::Relaxed))),
        )?;
        gauge(
            &mut encoder,
            "tollgate_agent_endpoints_enforced",
            "Local endpoints whose rules are programmed.",
            self.endpoints.load(Ordering::Relaxed),
        )?;
        labelled(
            &mut encoder,
            "tollgate_probe_packets",
            "Packets the probe decided or counted, by kind.",
            "kind",
            Counter::ALL.into_iter().map(|counter| {
                (
                    counter.name(),
                    self.probe[counter as usize].load(Ordering::Relaxed),
                )
            }),
        )?;
        self.encode_maps(&mut encoder)?;
        self.latency.encode(encoder.encode_descriptor(
            "tollgate_agent_propagation_seconds",
            "Time from a watch event's arrival to the maps synced.",
            None,
            self.latency.metric_type(),
        )?)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tollgate_collector::metrics::exposition;
    use tollgate_enforcer::sync::{MapFull, SyncError};

    use super::*;

    fn render(metrics: &Arc<AgentMetrics>) -> String {
        exposition([Box::new(Arc::clone(metrics)) as Box<dyn Collector>])
    }

    #[test]
    fn the_histogram_is_cumulative_and_counters_are_named_and_labelled() {
        let metrics = Arc::new(AgentMetrics::default());
        metrics.observe_latency(Duration::from_millis(20));
        metrics.observe_latency(Duration::from_millis(300));
        metrics.probe[Counter::Deny as usize].store(7, Ordering::Relaxed);
        let full = MapFull { map: "TG_POLICY" };
        metrics.count_sync_failure(&Error::from(SyncError::Read { source: full }));
        let text = render(&metrics);
        assert!(text.contains("tollgate_agent_propagation_seconds_bucket{le=\"0.01\"} 0\n"));
        assert!(text.contains("tollgate_agent_propagation_seconds_bucket{le=\"0.025\"} 1\n"));
        assert!(text.contains("tollgate_agent_propagation_seconds_bucket{le=\"0.5\"} 2\n"));
        assert!(text.contains("tollgate_agent_propagation_seconds_bucket{le=\"+Inf\"} 2\n"));
        assert!(text.contains("tollgate_agent_propagation_seconds_count 2\n"));
        assert!(text.contains("tollgate_probe_packets_total{kind=\"deny\"} 7\n"));
        assert!(text.contains("tollgate_agent_sync_failures_total{error=\"map_read\"} 1\n"));
        assert!(text.contains("tollgate_agent_sync_failures_total{error=\"maps_full\"} 0\n"));
    }

    #[test]
    fn map_gauges_and_drift_repairs_are_labelled_by_map() {
        let metrics = Arc::new(AgentMetrics::default());
        let text = render(&metrics);
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
        let text = render(&metrics);
        assert!(text.contains("# TYPE tollgate_map_entries gauge\n"));
        assert!(text.contains("tollgate_map_entries{map=\"TG_NODE_ADDRS\"} 1\n"));
        assert!(text.contains("tollgate_map_entries{map=\"TG_RULESETS\"} 1\n"));
        assert!(text.contains("tollgate_map_capacity{map=\"TG_POLICY\"} 1048576\n"));
        assert!(text.contains("tollgate_map_drift_repairs_total{map=\"TG_POLICY\"} 4\n"));
        assert!(text.contains("tollgate_map_drift_repairs_total{map=\"TG_ENDPOINTS\"} 2\n"));
        assert!(text.contains("tollgate_map_drift_repairs_total{map=\"TG_PEERS\"} 0\n"));
    }
}
