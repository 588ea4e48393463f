//! The shipper: spooled files → their sink (the flow log's, or Security Lake's for its
//! objects: [`Sinks`]), oldest key first, each removed from the spool only
//! once the sink has it; and the node's digests sealed and signed on the way.
//!
//! Before each pass, a digest that is due (an interval boundary passed) is sealed by the
//! [`Sealer`] into the spool, to be shipped like any file; a failure to seal or sign (a KMS
//! that does not answer) is logged, counted and retried on the next pass, while flow files
//! keep shipping. On stop, one last digest is sealed before the last pass.
//!
//! [`ship`] runs until told to stop. It wakes when the writer spools a file (a [`Notify`]),
//! and every [`RESCAN`] in any case; a failed delivery stops the pass and is retried after an
//! exponential backoff ([`retry_delays`]: 1 s doubling to 60 s, each with a random jitter of up
//! to as much again, so the nodes of a cluster do not retry a sink in lockstep after an
//! outage), without limit: files are given up only by the spool's bound, never by the shipper.
//! On stop, it makes one last pass within the given time; what remains stays in the spool and
//! is shipped first by the next start.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use tokio::sync::{Notify, watch};

use crate::{
    chain::ChainError,
    chain::Sealer,
    clock::{NS_PER_S, unix_now_ns},
    metrics::Metrics,
    sink::SinkError,
    sink::Sinks,
    spool::{SpoolError, pending_in, remove},
};
use tollgate_enforcer::causes::Causes;

/// How often the spool is looked at without a wakeup.
pub const RESCAN: Duration = Duration::from_secs(5);

/// The delay after the first failed pass.
const RETRY_FIRST: Duration = Duration::from_secs(1);
/// The longest delay between failed passes, before its jitter.
const RETRY_MAX: Duration = Duration::from_secs(60);

/// Delays between consecutive failures (see [`retry_delays`]).
pub type RetryDelays = ExponentialBackoff;

/// The delays between consecutive failures, without end: `first` doubling to `max`, each plus
/// a random jitter below itself, so that the nodes of a cluster do not retry in lockstep. The
/// shipper's, and the node agent's for its failed passes.
pub fn retry_delays(first: Duration, max: Duration) -> RetryDelays {
    ExponentialBuilder::new()
        .with_min_delay(first)
        .with_max_delay(max)
        .with_jitter()
        .without_max_times()
        .build()
}

/// What a shipper did before it stopped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Shipped {
    /// Files delivered.
    pub files: u64,
    /// Files left in the spool.
    pub left: u64,
}

/// Delivers the spool at `root` to `sink` until `stop` carries a deadline for the last pass,
/// sealing digests with `sealer` as they fall due.
pub async fn ship(
    root: PathBuf,
    sink: Sinks,
    metrics: Arc<Metrics>,
    wake: Arc<Notify>,
    mut stop: watch::Receiver<Option<Duration>>,
    mut sealer: Sealer,
) -> Shipped {
    let mut shipped = Shipped::default();
    let mut retries = retry_delays(RETRY_FIRST, RETRY_MAX);
    loop {
        let stopping = *stop.borrow_and_update();
        if let Some(within) = stopping {
            let last = tokio::time::timeout(within, async {
                // A digest that cannot be signed now stays in the spool for the next start.
                let sealed = seal(&mut sealer, &metrics, true).await;
                settle(
                    sealed,
                    pass(&root, &sink, &metrics, &mut shipped).await,
                    &metrics,
                )
            });
            let _ = last.await;
            shipped.left = pending_in(&root).map_or(0, |p| p.len() as u64);
            return shipped;
        }
        let sealed = seal(&mut sealer, &metrics, false).await;
        let passed = pass(&root, &sink, &metrics, &mut shipped).await;
        let delay = if settle(sealed, passed, &metrics) {
            retries = retry_delays(RETRY_FIRST, RETRY_MAX);
            RESCAN
        } else {
            retries.next().unwrap_or(RETRY_MAX)
        };
        tokio::select! {
            _ = wake.notified() => {}
            _ = tokio::time::sleep(delay) => {}
            _ = stop.changed() => {}
        }
    }
}

/// Why a pass or a seal did not finish; what it did not do is tried again by the next one.
#[derive(Debug, thiserror::Error)]
enum PassError {
    /// The spool could not be listed.
    #[error("listing the spool")]
    List {
        /// The spool's error.
        source: SpoolError,
    },
    /// A delivered file could not be removed: nothing is lost, the next pass delivers it again
    /// under the same key, which overwrites it.
    #[error("removing shipped file {key}")]
    Remove {
        /// Its object key.
        key: String,
        /// The spool's error.
        source: SpoolError,
    },
    /// The sink did not take a file.
    #[error("delivering {key}")]
    Deliver {
        /// Its object key.
        key: String,
        /// The sink's error.
        source: SinkError,
    },
    /// A due digest could not be sealed or signed; its entries wait for the next attempt.
    #[error("sealing a digest")]
    Seal {
        /// The chain's error.
        source: ChainError,
    },
}

impl PassError {
    /// Counts and logs the failure: an error when only an operator can fix it (a spool that
    /// cannot be listed or emptied, a bucket or credentials that refuse), else a warning.
    fn report(&self, metrics: &Metrics) {
        let error = Causes(self);
        match self {
            Self::List { .. } | Self::Remove { .. } => tracing::error!(%error, "shipping stopped"),
            Self::Deliver { source, .. } => {
                let failure = source.failure();
                metrics.ship_failed(failure);
                if failure.needs_operator() {
                    tracing::error!(
                        %error,
                        kind = failure.label(),
                        "delivery refused; retrying later, but the bucket or the credentials need an operator"
                    );
                } else {
                    tracing::warn!(%error, kind = failure.label(), "delivery failed; retrying later");
                }
            }
            Self::Seal { .. } => {
                metrics.digest_failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%error, "retrying at the next pass");
            }
        }
    }
}

/// Reports the failures of a seal and a pass; whether both succeeded.
fn settle(sealed: Result<(), PassError>, passed: Result<(), PassError>, metrics: &Metrics) -> bool {
    let mut succeeded = true;
    for error in [sealed.err(), passed.err()].into_iter().flatten() {
        error.report(metrics);
        succeeded = false;
    }
    succeeded
}

/// Seals a digest when one is due (or `now`).
async fn seal(sealer: &mut Sealer, metrics: &Metrics, now: bool) -> Result<(), PassError> {
    let now_s = unix_now_ns() / NS_PER_S;
    if !now && !sealer.due(now_s) {
        return Ok(());
    }
    sealer
        .seal(now_s)
        .await
        .map_err(|source| PassError::Seal { source })?;
    metrics.digests_sealed.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// Delivers every spooled file, oldest key first; stops at the first failure.
#[tracing::instrument(
    level = "debug",
    name = "ship",
    skip_all,
    fields(pending = tracing::field::Empty, files = 0u64, bytes = 0u64)
)]
async fn pass(
    root: &std::path::Path,
    sink: &Sinks,
    metrics: &Metrics,
    shipped: &mut Shipped,
) -> Result<(), PassError> {
    let pending = pending_in(root).map_err(|source| PassError::List { source })?;
    gauges(metrics, &pending);
    let span = tracing::Span::current();
    span.record("pending", pending.len());
    let (mut files, mut bytes) = (0u64, 0u64);
    for file in &pending {
        let key = || file.key.clone();
        sink.put(&file.key, &file.path)
            .await
            .map_err(|source| PassError::Deliver { key: key(), source })?;
        remove(root, file).map_err(|source| PassError::Remove { key: key(), source })?;
        shipped.files += 1;
        files += 1;
        bytes += file.bytes;
        span.record("files", files);
        span.record("bytes", bytes);
        metrics.files_shipped.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(
            key = file.key,
            bytes = file.bytes,
            location = sink.location(&file.key),
            "shipped"
        );
    }
    if let Ok(left) = pending_in(root) {
        gauges(metrics, &left);
    }
    Ok(())
}

fn gauges(metrics: &Metrics, pending: &[crate::spool::Spooled]) {
    metrics
        .spool_files
        .store(pending.len() as u64, Ordering::Relaxed);
    metrics
        .spool_bytes
        .store(pending.iter().map(|f| f.bytes).sum(), Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delays_double_to_a_cap_each_with_its_jitter() {
        let delays: Vec<Duration> = retry_delays(RETRY_FIRST, RETRY_MAX).take(8).collect();
        for (delay, base) in delays.iter().zip([1, 2, 4, 8, 16, 32, 60, 60]) {
            let base = Duration::from_secs(base);
            assert!(base <= *delay && *delay < base * 2, "{delays:?}");
        }
        // Jittered: a cluster's nodes do not all wait alike.
        let other: Vec<Duration> = retry_delays(RETRY_FIRST, RETRY_MAX).take(8).collect();
        assert_ne!(delays, other);
    }
}
