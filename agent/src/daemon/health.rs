//! The agent's liveness (when its loop last turned) and its HTTP routes: `/metrics` (the
//! agent's, the probe's and the collector's counters), `/healthz` (the loop turns) and
//! `/readyz` (the first sync is done and every local endpoint is programmed).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;

use super::{DaemonError, SharedProbe};
use crate::config::AgentConfig;
use crate::http::{Response, Routes, serve};
use crate::metrics::AgentMetrics;
use prometheus_client::collector::Collector;
use tollgate_collector::metrics::exposition;
use tollgate_enforcer::causes::Causes;

/// How long the loop may go without turning (a sync or a discovery that hangs) before
/// `/healthz` fails; the liveness probe then restarts the agent, and the pinned programs keep
/// enforcing meanwhile.
pub const STALLED_AFTER: Duration = Duration::from_secs(60);

/// When the agent's loop last turned.
#[derive(Debug)]
pub struct Liveness {
    started: std::time::Instant,
    /// Milliseconds from `started` to the last turn.
    last_ms: AtomicU64,
}

impl Default for Liveness {
    fn default() -> Self {
        Self {
            started: std::time::Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }
}

impl Liveness {
    /// The loop turned now.
    pub fn beat(&self) {
        let ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// How long the loop has not turned, when that is longer than [`STALLED_AFTER`].
    pub fn stalled_for(&self) -> Option<Duration> {
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        let since = self.started.elapsed().saturating_sub(last);
        (since > STALLED_AFTER).then_some(since)
    }
}

/// Binds `/metrics` and the health endpoints (one listener when both addresses are the same).
pub(super) async fn start_http(
    config: &AgentConfig,
    probe: &SharedProbe,
    metrics: &Arc<AgentMetrics>,
    collector: &Arc<tollgate_collector::metrics::Metrics>,
    ready: &Arc<AtomicBool>,
    liveness: &Arc<Liveness>,
) -> Result<Vec<tokio::task::JoinHandle<()>>, DaemonError> {
    let render_metrics = {
        let (probe, metrics, collector) =
            (probe.clone(), Arc::clone(metrics), Arc::clone(collector));
        move || {
            match probe.lock().probe().counters() {
                Ok(counters) => {
                    for (slot, value) in metrics.probe.iter().zip(counters.0) {
                        slot.store(value, Ordering::Relaxed);
                    }
                }
                Err(error) => {
                    tracing::warn!(error = %Causes(&error), "reading the probe's counters")
                }
            }
            exposition([
                Box::new(Arc::clone(&metrics)) as Box<dyn Collector>,
                Box::new(Arc::clone(&collector)),
            ])
        }
    };
    let health = {
        let (ready, liveness) = (Arc::clone(ready), Arc::clone(liveness));
        move |path: &str| match path {
            "/healthz" => Some(match liveness.stalled_for() {
                None => Response::text(200, "ok\n"),
                Some(stalled) => Response::text(
                    503,
                    format!("stalled: the agent's loop has not turned for {stalled:?}\n"),
                ),
            }),
            "/readyz" if ready.load(Ordering::Relaxed) => Some(Response::text(200, "ready\n")),
            "/readyz" => Some(Response::text(503, "not ready: first sync pending\n")),
            _ => None,
        }
    };
    let metrics_route = move |path: &str| {
        (path == "/metrics").then(|| Response {
            status: 200,
            content_type: "text/plain; version=0.0.4; charset=utf-8",
            body: render_metrics(),
        })
    };
    let settings = &config.agent;
    let mut routes: Vec<(SocketAddr, Routes)> = Vec::new();
    if settings.metrics_address == settings.health_address {
        routes.push((
            settings.metrics_address,
            Arc::new(move |path: &str| metrics_route(path).or_else(|| health(path))),
        ));
    } else {
        routes.push((settings.metrics_address, Arc::new(metrics_route)));
        routes.push((settings.health_address, Arc::new(health)));
    }
    let mut servers = Vec::new();
    for (address, routes) in routes {
        let listener = TcpListener::bind(address)
            .await
            .map_err(|source| DaemonError::Bind { address, source })?;
        tracing::info!(%address, "serving http");
        servers.push(tokio::spawn(serve(listener, routes)));
    }
    Ok(servers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loop_that_stops_turning_fails_the_health_check() {
        let liveness = Liveness::default();
        assert_eq!(liveness.stalled_for(), None);
        let stuck = Liveness {
            started: std::time::Instant::now() - STALLED_AFTER - Duration::from_secs(5),
            last_ms: AtomicU64::new(0),
        };
        assert!(stuck.stalled_for().is_some_and(|d| d > STALLED_AFTER));
        stuck.beat();
        assert_eq!(stuck.stalled_for(), None);
    }
}
