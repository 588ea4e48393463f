//! The running collector: a reader thread and a shipper task around one [`Pipeline`].
//!
//! [`Collector::start`] opens the spool, builds the sink and starts:
//! - the reader, on a thread of its own with a single-threaded tokio runtime (the pipeline's
//!   work is CPU-bound and must not stall the caller's runtime): it waits on the ring buffer
//!   with [`AsyncFd`] (no busy polling), drains it on every wakeup and every drain interval
//!   (the probe wakes readers only once 64 KiB are waiting), reports residual denies every
//!   deny report interval, accounts the packets of allowed flows from conntrack every
//!   [`ACCOUNTING_INTERVAL`], and ticks the pipeline;
//! - the shipper ([`crate::ship::ship`]) on the caller's runtime, which also seals the node's
//!   digests ([`crate::chain::Sealer`]) every `digest.interval_secs` and at stop.
//!
//! [`Collector::sync`] drains everything the kernel has now (a barrier for tests and the lab);
//! [`Collector::stop`] drains, closes every window and file, ships within a deadline and marks
//! the spool clean.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{Interest, unix::AsyncFd};
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio::time::MissedTickBehavior;
use tollgate_schemas::Config;

use crate::{
    chain::Sealer,
    clock::{NS_PER_S, unix_now_ns},
    config::CollectorConfig,
    metrics::Metrics,
    pipeline::{Pipeline, SharedIdentities, Tap},
    reader::EventReader,
    ship::{Shipped, ship},
    sink::{SinkError, Sinks},
    spool::{Recovery, SpoolError},
};

/// The collector could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum CollectorError {
    /// Settings that cannot work, each as `field: why`.
    #[error("collector settings: {}", .0.join("; "))]
    Config(Vec<String>),
    /// The sink could not be set up.
    #[error(transparent)]
    Sink(#[from] SinkError),
    /// The spool could not be opened or closed.
    #[error(transparent)]
    Spool(#[from] SpoolError),
    /// The ring buffer could not be registered with the reactor, or the thread not started.
    #[error("collector reader")]
    Reader(#[source] std::io::Error),
    /// The reader thread is gone (it panicked).
    #[error("the collector's reader thread stopped unexpectedly")]
    ReaderGone,
}

enum Command {
    Sync(oneshot::Sender<()>),
    Stop(oneshot::Sender<Result<(), SpoolError>>),
}

/// How often conntrack is walked to account the packets of allowed flows (a walk of a full
/// table costs about half a CPU second).
pub const ACCOUNTING_INTERVAL: Duration = Duration::from_secs(10);

/// What a stopped collector did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stopped {
    /// Delivered and left files.
    pub shipped: Shipped,
}

/// A running collector.
///
/// Dropping it without [`Collector::stop`] still closes every window and file into the spool
/// (the reader sees its command channel close), but ships nothing more: the next start does.
pub struct Collector {
    commands: mpsc::Sender<Command>,
    thread: Option<std::thread::JoinHandle<()>>,
    shipper: Option<tokio::task::JoinHandle<Shipped>>,
    stop_shipping: watch::Sender<Option<Duration>>,
    metrics: Arc<Metrics>,
    sink: String,
}

impl Collector {
    /// Starts collecting from the probe's ring buffer and maps (`source`, the kernel's
    /// [`crate::reader::FlowSource`], whose file descriptor wakes the reader) with `config`,
    /// naming flows with `identities`. Returns what the spool held from a previous run
    /// (shipped first).
    pub async fn start(
        config: &CollectorConfig,
        source: EventReader,
        identities: SharedIdentities,
        tap: Option<Tap>,
    ) -> Result<(Self, Recovery), CollectorError> {
        let problems = config.problems();
        if !problems.is_empty() {
            return Err(CollectorError::Config(problems));
        }
        let sink = Sinks::from_config(config).await?;
        let sink_location = sink.flow_log().location("");
        let metrics = Arc::new(Metrics::default());
        let spooled = Arc::new(Notify::new());
        let (pipeline, recovery) = Pipeline::open(
            config,
            identities,
            Arc::clone(&metrics),
            Arc::clone(&spooled),
        )?;
        tracing::info!(
            spool = %config.spool_dir.display(),
            sink = sink_location,
            pending = recovery.pending,
            "collector starting"
        );
        let (stop_shipping, stop_rx) = watch::channel(None);
        let sealer = Sealer::new(
            &config.spool_dir,
            &config.cluster,
            &config.node,
            Duration::from_secs(config.digest.interval_secs),
            config.digest.signing.clone(),
            unix_now_ns() / NS_PER_S,
        );
        let shipper = tokio::spawn(ship(
            config.spool_dir.clone(),
            sink,
            Arc::clone(&metrics),
            spooled,
            stop_rx,
            sealer,
        ));
        let (commands, commands_rx) = mpsc::channel(8);
        let (started_tx, started_rx) = oneshot::channel();
        let timers = Timers {
            drain: config.drain_interval(),
            deny_flush: Duration::from_nanos(Config::DEFAULT_DENY_REPORT_INTERVAL_NS),
        };
        let thread = std::thread::Builder::new()
            .name("tollgate-collector".to_owned())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build();
                match runtime {
                    Ok(runtime) => runtime.block_on(read_loop(
                        pipeline,
                        source,
                        commands_rx,
                        tap,
                        timers,
                        started_tx,
                    )),
                    Err(error) => {
                        let _ = started_tx.send(Err(error));
                    }
                }
            })
            .map_err(CollectorError::Reader)?;
        started_rx
            .await
            .map_err(|_| CollectorError::ReaderGone)?
            .map_err(CollectorError::Reader)?;
        Ok((
            Self {
                commands,
                thread: Some(thread),
                shipper: Some(shipper),
                stop_shipping,
                metrics,
                sink: sink_location,
            },
            recovery,
        ))
    }

    /// The collector's metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Where files go (`s3://bucket/prefix/` or a directory).
    pub fn sink(&self) -> &str {
        &self.sink
    }

    /// Returns once every event the kernel has written so far, every residual deny (both also
    /// through the tap) and what conntrack counted for allowed flows have gone through the
    /// pipeline.
    pub async fn sync(&self) -> Result<(), CollectorError> {
        let (reply, done) = oneshot::channel();
        self.commands
            .send(Command::Sync(reply))
            .await
            .map_err(|_| CollectorError::ReaderGone)?;
        done.await.map_err(|_| CollectorError::ReaderGone)
    }

    /// Drains, closes every window and file, ships what it can within `ship_within`, and
    /// marks the spool clean. Files not shipped stay in the spool for the next start.
    pub async fn stop(mut self, ship_within: Duration) -> Result<Stopped, CollectorError> {
        let (reply, done) = oneshot::channel();
        self.commands
            .send(Command::Stop(reply))
            .await
            .map_err(|_| CollectorError::ReaderGone)?;
        let finished = done.await.map_err(|_| CollectorError::ReaderGone)?;
        let _ = self.stop_shipping.send(Some(ship_within));
        let shipped = match self.shipper.take() {
            Some(shipper) => shipper.await.unwrap_or_default(),
            None => Shipped::default(),
        };
        if let Some(thread) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
        finished?;
        tracing::info!(
            files = shipped.files,
            left = shipped.left,
            "collector stopped"
        );
        Ok(Stopped { shipped })
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        // The reader finishes on its own once the command channel closes; the shipper is told
        // to stop at once (what it has not shipped stays in the spool).
        let _ = self.stop_shipping.send(Some(Duration::ZERO));
    }
}

/// The reader's timers.
struct Timers {
    drain: Duration,
    deny_flush: Duration,
}

enum Wake {
    Readable,
    Tick,
    DenyFlush,
    Accounting,
    Command(Option<Command>),
}

async fn read_loop(
    mut pipeline: Pipeline,
    source: EventReader,
    mut commands: mpsc::Receiver<Command>,
    mut tap: Option<Tap>,
    timers: Timers,
    started: oneshot::Sender<std::io::Result<()>>,
) {
    // SAFETY: the reader owns its ring buffer's file descriptor for as long as it lives, and
    // always returns that one; `get_mut` below only drains the ring, never replaces it.
    let registered = unsafe { AsyncFd::register_with_interest(source, Interest::READABLE) };
    let mut ring = match registered {
        Ok(ring) => ring,
        Err(error) => {
            let _ = started.send(Err(error.into_parts().1));
            return;
        }
    };
    let _ = started.send(Ok(()));
    let mut tick = tokio::time::interval(timers.drain);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut deny_flush = tokio::time::interval(timers.deny_flush);
    deny_flush.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut accounting = tokio::time::interval(ACCOUNTING_INTERVAL);
    accounting.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        let wake = tokio::select! {
            ready = ring.readable() => {
                if let Ok(mut guard) = ready {
                    guard.clear_ready();
                }
                Wake::Readable
            }
            _ = tick.tick() => Wake::Tick,
            _ = deny_flush.tick() => Wake::DenyFlush,
            _ = accounting.tick() => Wake::Accounting,
            command = commands.recv() => Wake::Command(command),
        };
        let tap = &mut tap;
        match wake {
            Wake::Readable => pipeline.drain(ring.get_mut(), tap),
            Wake::Tick => {
                pipeline.drain(ring.get_mut(), tap);
                pipeline.tick(ring.get_ref());
            }
            Wake::DenyFlush => pipeline.report_residual_denies(ring.get_mut(), tap),
            Wake::Accounting => pipeline.account_tracked(ring.get_ref()),
            Wake::Command(Some(Command::Sync(reply))) => {
                pipeline.report_residual_denies(ring.get_mut(), tap);
                pipeline.account_tracked(ring.get_ref());
                let _ = reply.send(());
            }
            Wake::Command(command) => {
                pipeline.report_residual_denies(ring.get_mut(), tap);
                pipeline.account_tracked(ring.get_ref());
                let finished = pipeline.finish(ring.get_ref());
                if let Some(Command::Stop(reply)) = command {
                    let _ = reply.send(finished);
                }
                return;
            }
        }
    }
}
