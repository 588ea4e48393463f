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
//! exponential backoff ([`Backoff`], 1 s doubling to 60 s), without limit: files are given up
//! only by the spool's bound, never by the shipper. On stop, it makes one last pass within
//! the given time; what remains stays in the spool and is shipped first by the next start.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::{Notify, watch};

use crate::{
    chain::Sealer,
    clock::{NS_PER_S, unix_now_ns},
    metrics::Metrics,
    sink::Sinks,
    spool::{pending_in, remove},
};

/// How often the spool is looked at without a wakeup.
pub const RESCAN: Duration = Duration::from_secs(5);

/// Exponential backoff between failed passes.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            next: Duration::from_secs(1),
            max: Duration::from_secs(60),
        }
    }
}

impl Backoff {
    /// The delay before the next attempt, doubling each time up to the maximum.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        delay
    }

    /// Back to the first delay after a success.
    pub fn reset(&mut self) {
        *self = Self {
            max: self.max,
            ..Self::default()
        };
    }
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
    let mut backoff = Backoff::default();
    loop {
        let stopping = *stop.borrow_and_update();
        if let Some(within) = stopping {
            let last = tokio::time::timeout(within, async {
                // A digest that cannot be signed now stays in the spool for the next start.
                let _ = seal(&mut sealer, &metrics, true).await;
                pass(&root, &sink, &metrics, &mut shipped).await
            });
            let _ = last.await;
            shipped.left = pending_in(&root).map_or(0, |p| p.len() as u64);
            return shipped;
        }
        let sealed = seal(&mut sealer, &metrics, false).await;
        let delay = match pass(&root, &sink, &metrics, &mut shipped).await.and(sealed) {
            Ok(()) => {
                backoff.reset();
                RESCAN
            }
            Err(()) => backoff.next_delay(),
        };
        tokio::select! {
            _ = wake.notified() => {}
            _ = tokio::time::sleep(delay) => {}
            _ = stop.changed() => {}
        }
    }
}

/// Seals a digest when one is due (or `now`); a failure is logged, counted and left for the
/// next attempt.
async fn seal(sealer: &mut Sealer, metrics: &Metrics, now: bool) -> Result<(), ()> {
    let now_s = unix_now_ns() / NS_PER_S;
    if !now && !sealer.due(now_s) {
        return Ok(());
    }
    match sealer.seal(now_s).await {
        Ok(_) => {
            metrics.digests_sealed.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
        Err(error) => {
            metrics.digest_failures.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%error, "sealing a digest failed; its entries wait for the next attempt");
            Err(())
        }
    }
}

/// Delivers every spooled file, oldest key first; stops at the first failure.
async fn pass(
    root: &std::path::Path,
    sink: &Sinks,
    metrics: &Metrics,
    shipped: &mut Shipped,
) -> Result<(), ()> {
    let pending = match pending_in(root) {
        Ok(pending) => pending,
        Err(error) => {
            tracing::error!(%error, "listing the spool");
            return Err(());
        }
    };
    gauges(metrics, &pending);
    for file in &pending {
        match sink.put(&file.key, &file.path).await {
            Ok(()) => {
                if let Err(error) = remove(root, file) {
                    // Delivered, so nothing is lost; the next pass delivers it again under the
                    // same key, which overwrites it.
                    tracing::error!(%error, key = file.key, "removing a shipped file");
                    return Err(());
                }
                shipped.files += 1;
                metrics.files_shipped.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(
                    key = file.key,
                    bytes = file.bytes,
                    location = sink.location(&file.key),
                    "shipped"
                );
            }
            Err(error) => {
                metrics.ship_failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%error, key = file.key, "delivery failed; retrying later");
                return Err(());
            }
        }
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
    fn backoff_doubles_to_a_cap_and_resets() {
        let mut backoff = Backoff::default();
        let delays: Vec<u64> = (0..8).map(|_| backoff.next_delay().as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 60, 60]);
        backoff.reset();
        assert_eq!(backoff.next_delay(), Duration::from_secs(1));
    }
}
