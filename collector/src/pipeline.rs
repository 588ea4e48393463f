//! The collector's synchronous stages in one place: events in, Parquet files out.
//!
//! [`Pipeline::ingest`] takes each decoded event through enrichment and aggregation
//! ([`Pipeline::account_tracked`] adds the packets conntrack counted for allowed flows);
//! [`Pipeline::tick`] (every drain interval) reads the kernel's loss counters, closes the
//! windows that ended, writes their records (taken out of the aggregator's table a batch at a
//! time, [`close_rows`]) and any pending loss records, rotates aged files,
//! and accounts for every file that could not be kept; [`Pipeline::finish`] closes everything
//! on shutdown. Opening the pipeline opens the spool, and a previous collector that died
//! without flushing becomes a `collector-restart` loss record.
//!
//! The records go to the flow log's files, or to Security Lake's (OCSF) when the flow log is
//! off; with both on, a *mirror* writer gets a copy of every record for Security Lake. The
//! primary output is the record of account: its files carry the loss records that are
//! acknowledged, and a file of it the spool refuses blocks the pipeline as below. A mirror
//! file the spool refuses is counted (`security_lake_files_lost`) and its sequence number is
//! a lost sequence of the digest chain; its records are in the flow log.
//!
//! Losses not yet in an acknowledged file (pending, or in a file still open) are noted in the
//! spool's state at every tick and saved within [`LEDGER_SAVE_INTERVAL`] (at once when a file
//! is lost or one carrying loss records is spooled): the losses a previous collector left
//! there are written first, before anything else. Once the spool refuses a file (a full disk,
//! its byte bound), the pipeline is *blocked*: the pending losses are written alone, in files
//! of their own, every [`SPOOL_RETRY`], and until that succeeds the records of closing windows
//! are counted as lost without trying; the first success unblocks it.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tollgate_schemas::FlowEvent;

use crate::{
    accounting::Accounting,
    aggregate::{Aggregator, Closing, Skipped},
    clock::{Clock, NS_PER_S, unix_now_ns},
    config::CollectorConfig,
    identity::Identities,
    loss::{LossLedger, LossSource},
    metrics::Metrics,
    reader::FlowSource,
    record::FlowRecord,
    spool::{Recovery, RingbufMark, Spool, SpoolError},
    writer::{BATCH_ROWS, Closed, FileWriter, Refused},
};
use tollgate_enforcer::causes::Causes;

/// How often a blocked pipeline tries to write its pending loss records.
pub const SPOOL_RETRY: Duration = Duration::from_secs(1);

/// How long a change of the loss ledger may wait before it is saved in the spool's state.
pub const LEDGER_SAVE_INTERVAL: Duration = Duration::from_secs(1);

/// Seconds after a window's end before it is closed: events reach the collector up to a drain
/// interval after they were stamped.
pub const WINDOW_GRACE_S: u64 = 2;

/// The identities shared between whoever watches the cluster and the collector.
pub type SharedIdentities = Arc<Mutex<Identities>>;

/// A function that sees every event the collector reads, with the identities that name it as
/// its record does (the lab lists each step's events, named).
pub type Tap = Box<dyn FnMut(&FlowEvent, &Identities) + Send>;

/// Events in, Parquet files out.
pub struct Pipeline {
    clock: Clock,
    identities: SharedIdentities,
    aggregator: Aggregator,
    /// Records of closing windows written at a time ([`Closing::write`]).
    close_rows: usize,
    accounting: Accounting,
    losses: LossLedger,
    writer: FileWriter,
    /// Writes loss records alone, in files closed at once (while blocked, and at start).
    loss_writer: FileWriter,
    /// Security Lake's writer beside the flow log's, when both are on.
    mirror: Option<FileWriter>,
    spool: Spool,
    /// Why the spool refuses files, while it does: where the records it refuses are lost.
    blocked: Option<(LossSource, String)>,
    /// When the pending losses were last written alone.
    last_loss_write: Option<Instant>,
    /// When the loss ledger was last saved, and whether that failed.
    ledger_saved: (Instant, bool),
    metrics: Arc<Metrics>,
    spooled: Arc<Notify>,
    /// The probe's ring-buffer reserve failures reported so far (its pinned counter outlives
    /// this collector: the mark starts where the previous collector's ended).
    ringbuf: RingbufMark,
    /// Whether the probe's counter was read (the mark is saved only from then on).
    ringbuf_read: bool,
    /// Undecodable records seen so far.
    undecodable: u64,
    last_tick_s: u64,
}

/// The ring-buffer reserve failures counted since `seen`, from the probe's counter `failed`.
/// A counter below the mark belongs to maps created anew (an uninstall, a new layout): all of
/// it is new.
fn ringbuf_failures_since(seen: u64, failed: u64) -> u64 {
    if failed >= seen {
        failed - seen
    } else {
        failed
    }
}

/// Records of closing windows handed to the writers at a time. For the flow log, a batch's
/// worth ([`BATCH_ROWS`]): a closing window's records are never all out of the table at once
/// (`bench collector`: a full table's peak RSS 240-263 → 233-243 MiB, no slower; and once the
/// allocator gives freed memory back after 10 ms, `src/main.rs`, a close in one piece cost
/// 750-810 ns per event against ~570: its records were freed and faulted in every round).
/// Security Lake's objects keep their rows in time order, which only the whole of a close can
/// be sorted into, so with Security Lake on a close is written in one piece.
fn close_rows(config: &CollectorConfig) -> usize {
    if config.security_lake.is_some() {
        usize::MAX
    } else {
        BATCH_ROWS
    }
}

impl Pipeline {
    /// Opens the spool of `config` and readies every stage. `spooled` is notified whenever
    /// a file is committed to the spool.
    pub fn open(
        config: &CollectorConfig,
        identities: SharedIdentities,
        metrics: Arc<Metrics>,
        spooled: Arc<Notify>,
    ) -> Result<(Self, Recovery), SpoolError> {
        let now_s = unix_now_ns() / NS_PER_S;
        let (spool, recovery) = Spool::open(&config.spool_dir, config.spool_max_bytes, now_s)?;
        let primary = || match (&config.security_lake, config.flow_log) {
            (Some(lake), false) => FileWriter::security_lake(lake, &config.cluster, &config.node),
            _ => FileWriter::new(
                &config.cluster,
                &config.node,
                config.rotate_bytes,
                config.rotate_age(),
            ),
        };
        let mut pipeline = Self {
            clock: Clock::sample(),
            identities,
            aggregator: Aggregator::new(config.window_secs, config.mode, config.max_open_records),
            close_rows: close_rows(config),
            accounting: Accounting::default(),
            losses: LossLedger::default(),
            writer: primary(),
            loss_writer: primary(),
            mirror: config
                .security_lake
                .as_ref()
                .filter(|_| config.flow_log)
                .map(|lake| FileWriter::security_lake(lake, &config.cluster, &config.node)),
            spool,
            blocked: None,
            last_loss_write: None,
            ledger_saved: (Instant::now(), false),
            metrics,
            spooled,
            ringbuf: recovery.ringbuf_reported.unwrap_or(RingbufMark {
                failed: 0,
                read_s: now_s,
            }),
            ringbuf_read: false,
            undecodable: 0,
            last_tick_s: now_s,
        };
        if let Some(since) = recovery.unclean_since_s {
            tracing::warn!(
                since,
                partial_files = recovery.removed_partial,
                lost_sequences = recovery.lost_sequences,
                "the previous collector stopped without flushing; recording the gap"
            );
            pipeline.lose(LossSource::CollectorRestart, None, since, now_s);
        }
        if let Some(detail) = &recovery.unsaved {
            tracing::error!(
                detail,
                "the spool cannot be written; records will be counted as lost until it can"
            );
        }
        // The previous collector counted these in its metrics; here they only become records.
        for span in &recovery.losses {
            pipeline.losses.add_span(*span);
        }
        if !pipeline.losses.is_empty() {
            pipeline.write_losses();
        }
        pipeline.keep_ledger(true);
        Ok((pipeline, recovery))
    }

    /// The metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Adds every event waiting in `source`, handing each to `tap` too (when given).
    pub fn drain(&mut self, source: &mut impl FlowSource, tap: &mut Option<Tap>) {
        let identities = Arc::clone(&self.identities);
        let identities = identities.lock().unwrap_or_else(PoisonError::into_inner);
        let mut events = 0;
        source.drain_with(|event| {
            events += 1;
            self.add_tapped(event, &identities, tap);
        });
        self.metrics.events.fetch_add(events, Ordering::Relaxed);
    }

    /// Drains `source`, then adds its residual denies (handing each to `tap` too), so that
    /// they follow every event the kernel wrote before them.
    pub fn report_residual_denies(&mut self, source: &mut impl FlowSource, tap: &mut Option<Tap>) {
        self.drain(source, tap);
        match source.residual_denies() {
            Ok(events) => self.add_events(&events, tap),
            Err(error) => tracing::warn!(error = %Causes(&error), "reporting residual denies"),
        }
    }

    /// Adds `events` (residual denies, or events from elsewhere than a ring buffer).
    pub fn ingest(&mut self, events: &[FlowEvent]) {
        self.add_events(events, &mut None);
    }

    /// Adds what conntrack counted for allowed flows since the previous call (see
    /// [`Accounting`]).
    pub fn account_tracked(&mut self, source: &impl FlowSource) {
        match source.tracked_flows() {
            Ok(flows) => {
                let events = self.accounting.report(&flows);
                self.ingest(&events);
            }
            Err(error) => {
                tracing::warn!(error = %Causes(&error), "reading conntrack for accounting")
            }
        }
    }

    /// Adds `events`, handing each to `tap` too (when given).
    fn add_events(&mut self, events: &[FlowEvent], tap: &mut Option<Tap>) {
        let identities = Arc::clone(&self.identities);
        let identities = identities.lock().unwrap_or_else(PoisonError::into_inner);
        for event in events {
            self.add_tapped(event, &identities, tap);
        }
        self.metrics
            .events
            .fetch_add(events.len() as u64, Ordering::Relaxed);
    }

    /// Hands `event` to `tap` (when given), then adds it.
    fn add_tapped(&mut self, event: &FlowEvent, identities: &Identities, tap: &mut Option<Tap>) {
        if let Some(tap) = tap.as_mut() {
            tap(event, identities);
        }
        self.add(event, identities);
    }

    /// Aggregates `event`; the caller counts it in the metrics (once for all it adds).
    fn add(&mut self, event: &FlowEvent, identities: &Identities) {
        match self.aggregator.ingest(event, &self.clock, identities) {
            Ok(()) | Err(Skipped::Filtered) => {}
            Err(Skipped::Unknown) => {
                let at = self.clock.unix_s(event.ts_ns);
                self.lose(LossSource::Undecodable, Some(1), at, at);
            }
            Err(Skipped::Full) => {
                let at = self.clock.unix_s(event.ts_ns);
                self.lose(LossSource::AggregationFull, Some(1), at, at);
            }
        }
    }

    /// Counts lost events in the metrics and in the pending loss records.
    pub fn lose(&mut self, source: LossSource, events: Option<u64>, from_s: u64, to_s: u64) {
        self.metrics.lose(source, events);
        self.losses.add(source, events, from_s, to_s);
    }

    /// The periodic work: the kernel loss counters of `source`, closing ended windows, writing
    /// records and loss records, rotating aged files.
    pub fn tick(&mut self, source: &impl FlowSource) {
        self.clock = Clock::sample();
        let now_s = unix_now_ns() / NS_PER_S;
        self.read_kernel_losses(source, now_s);
        let closing = self.aggregator.closing_before(now_s, WINDOW_GRACE_S);
        self.close(closing);
        let closed = self.writer.rotate_aged(&mut self.spool);
        self.account(closed);
        if let Some(mirror) = &mut self.mirror {
            let closed = mirror.rotate_aged(&mut self.spool);
            self.account_mirror(closed);
        }
        self.last_tick_s = now_s;
        self.keep_ledger(false);
    }

    /// Closes every window now, whatever its end: the records so far are written into the
    /// open files (one that reaches its size limit is closed, as on any write).
    pub fn close_windows(&mut self) {
        let closing = self.aggregator.closing_all();
        self.close(Some(closing));
    }

    /// Writes the records of `closing` (when windows close), [`close_rows`] at a time, and
    /// gives the aggregator back its table; the pending loss records are written with the
    /// first records, or alone. Records the spool refuses are counted lost once for the whole.
    fn close(&mut self, closing: Option<Closing>) {
        let mut refused = Refused::default();
        let mut written = false;
        if let Some(mut closing) = closing {
            closing.write(self.close_rows, |records| {
                written = true;
                self.write(records, &mut refused);
            });
            self.aggregator.closed(closing);
        }
        if !written {
            self.write(Vec::new(), &mut refused);
        }
        if let Some(lost) = refused.lost() {
            self.account(vec![lost]);
        }
    }

    /// Closes every window and file now, whatever their age: the records so far become files
    /// in the spool.
    pub fn flush(&mut self) {
        self.close_windows();
        let closed = self.writer.close_all(&mut self.spool);
        self.account(closed);
        if let Some(mirror) = &mut self.mirror {
            let closed = mirror.close_all(&mut self.spool);
            self.account_mirror(closed);
        }
    }

    /// Reads the kernel loss counters of `source` a last time, closes every window and file,
    /// then the spool (a clean stop).
    pub fn finish(mut self, source: &impl FlowSource) -> Result<(), SpoolError> {
        let now_s = unix_now_ns() / NS_PER_S;
        self.read_kernel_losses(source, now_s);
        self.flush();
        // Losses found while closing (a file that did not fit) get one more chance to be
        // written now; if that fails too, the spool's state keeps them for the next start.
        if !self.losses.is_empty() {
            self.last_loss_write = None;
            self.flush();
        }
        self.keep_ledger(false);
        self.spool.close()
    }

    fn read_kernel_losses(&mut self, source: &impl FlowSource, now_s: u64) {
        let undecodable = source.undecodable();
        if undecodable > self.undecodable {
            let new = undecodable - self.undecodable;
            self.lose(LossSource::Undecodable, Some(new), self.last_tick_s, now_s);
            self.undecodable = undecodable;
        }
        match source.ringbuf_reserve_failed() {
            Ok(None) => {}
            Ok(Some(failed)) => {
                self.metrics
                    .ringbuf_reserve_failed
                    .store(failed, Ordering::Relaxed);
                let seen = self.ringbuf;
                self.ringbuf = RingbufMark {
                    failed,
                    read_s: now_s,
                };
                self.ringbuf_read = true;
                let new = ringbuf_failures_since(seen.failed, failed);
                if new > 0 {
                    self.lose(LossSource::RingbufFull, Some(new), seen.read_s, now_s);
                }
            }
            Err(error) => tracing::warn!(error = %Causes(&error), "reading the probe's counters"),
        }
    }

    /// Writes `records` and the pending loss records; while the spool refuses files (and it
    /// is not time to try again), adds `records` to `refused` instead.
    fn write(&mut self, mut records: Vec<FlowRecord>, refused: &mut Refused) {
        if self.blocked.is_some()
            && self
                .last_loss_write
                .is_none_or(|at| at.elapsed() >= SPOOL_RETRY)
        {
            self.write_losses();
        }
        if let Some((source, detail)) = &self.blocked {
            // Lost for the reason the spool refused the last file.
            refused.add(&records, *source, detail);
            return;
        }
        let losses = self.losses.take();
        records.extend(losses.into_iter().map(FlowRecord::loss));
        if records.is_empty() {
            return;
        }
        // The record of account first: it has the spool's room before the mirror.
        let mirrored = self.mirror.is_some().then(|| records.clone());
        let closed = self.writer.write(&mut self.spool, records);
        self.account(closed);
        self.write_mirror(mirrored);
    }

    /// Writes `records` (when given) with the mirror too.
    fn write_mirror(&mut self, records: Option<Vec<FlowRecord>>) {
        if let (Some(mirror), Some(records)) = (&mut self.mirror, records) {
            let closed = mirror.write(&mut self.spool, records);
            self.account_mirror(closed);
        }
    }

    /// Writes the pending losses alone, in files closed at once; unblocks the pipeline when
    /// none is left pending.
    fn write_losses(&mut self) {
        self.last_loss_write = Some(Instant::now());
        let records: Vec<_> = self
            .losses
            .take()
            .into_iter()
            .map(FlowRecord::loss)
            .collect();
        if !records.is_empty() {
            let mirrored = self.mirror.is_some().then(|| records.clone());
            let mut closed = self.loss_writer.write(&mut self.spool, records);
            closed.extend(self.loss_writer.close_all(&mut self.spool));
            self.account(closed);
            self.write_mirror(mirrored);
        }
        if self.losses.is_empty() && self.blocked.take().is_some() {
            tracing::info!("the spool takes files again");
            self.metrics.spool_blocked.store(0, Ordering::Relaxed);
        }
    }

    /// Notes the losses not yet in an acknowledged file (pending, or in an open file) and the
    /// ring-buffer mark in the spool's state, and saves it when it changed: `now`, or once
    /// [`LEDGER_SAVE_INTERVAL`] passed since the last save.
    fn keep_ledger(&mut self, now: bool) {
        let mut unacknowledged = LossLedger::default();
        for span in self
            .losses
            .spans()
            .into_iter()
            .chain(self.writer.open_losses())
        {
            unacknowledged.add_span(span);
        }
        let ringbuf = self.ringbuf_read.then_some(self.ringbuf);
        self.spool.note_ledger(ringbuf, unacknowledged.take());
        let (saved_at, failing) = self.ledger_saved;
        if !self.spool.is_unsaved() || !(now || saved_at.elapsed() >= LEDGER_SAVE_INTERVAL) {
            return;
        }
        let result = self.spool.save_ledger();
        match &result {
            Err(error) if !failing => tracing::warn!(
                error = error.detail(),
                "the spool's state (its loss ledger) cannot be saved; the metrics have it"
            ),
            Ok(()) if failing => tracing::info!("the spool's state is saved again"),
            _ => {}
        }
        self.ledger_saved = (Instant::now(), result.is_err());
    }

    /// Accounts for the mirror's closed files: spooled ones are shipped like any; lost ones
    /// are counted, their records being in the flow log.
    fn account_mirror(&mut self, closed: Vec<Closed>) {
        for file in closed {
            match file {
                Closed::Spooled { file, records, .. } => {
                    tracing::info!(key = file.key, records, bytes = file.bytes, "file spooled");
                    self.metrics.files_spooled.fetch_add(1, Ordering::Relaxed);
                    self.spooled.notify_one();
                }
                Closed::Lost {
                    source,
                    records,
                    detail,
                    ..
                } => {
                    tracing::error!(
                        loss_source = source.name(),
                        records,
                        detail,
                        "Security Lake object lost; its records are in the flow log"
                    );
                    self.metrics
                        .security_lake_files_lost
                        .fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    fn account(&mut self, closed: Vec<Closed>) {
        let mut ledger_changed = false;
        for file in closed {
            match file {
                Closed::Spooled {
                    file,
                    records,
                    losses,
                } => {
                    tracing::info!(key = file.key, records, bytes = file.bytes, "file spooled");
                    for span in &losses {
                        self.metrics.loss_record(span.source);
                    }
                    ledger_changed |= !losses.is_empty();
                    self.metrics.files_spooled.fetch_add(1, Ordering::Relaxed);
                    self.metrics.records.fetch_add(records, Ordering::Relaxed);
                    self.spooled.notify_one();
                }
                Closed::Lost {
                    source,
                    events,
                    records,
                    from_s,
                    to_s,
                    detail,
                    requeue,
                } => {
                    tracing::error!(
                        loss_source = source.name(),
                        records,
                        events,
                        detail,
                        "flow records lost"
                    );
                    if events > 0 {
                        self.lose(source, Some(events), from_s, to_s);
                    }
                    for span in requeue {
                        self.losses.add_span(span);
                    }
                    if self.blocked.is_none() {
                        self.metrics.spool_blocked.store(1, Ordering::Relaxed);
                    }
                    self.blocked = Some((source, detail));
                    ledger_changed = true;
                }
            }
        }
        if ledger_changed {
            self.keep_ledger(true);
        }
    }
}
