//! Loss accounting: every event the collector could not turn into a record is counted here,
//! by where it was lost and when, and becomes a `SKIPDATA` record in the next file written, so
//! the flow log itself says where the evidence has gaps.
//!
//! Until its record is in a file the spool acknowledged, a loss is also kept in the spool's
//! state ([`crate::spool::Spool::note_ledger`]), so neither a full disk nor a restart loses it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Where events were lost.
#[repr(usize)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LossSource {
    /// The kernel found the ring buffer full and dropped the event (its per-CPU counter).
    RingbufFull,
    /// A ring-buffer record did not decode as a flow event of a known layout.
    Undecodable,
    /// The aggregation table was full; the event's flow was not recorded.
    AggregationFull,
    /// A closed file did not fit in the spool; its records were dropped.
    SpoolFull,
    /// A closed file could not be written to the spool (I/O error); its records were dropped.
    SpoolError,
    /// The collector stopped without flushing (killed, or the node lost power); how many
    /// events were in memory is unknown.
    CollectorRestart,
}

impl LossSource {
    /// Every source, in discriminant order (`source as usize` indexes metrics arrays).
    pub const ALL: [Self; 6] = [
        Self::RingbufFull,
        Self::Undecodable,
        Self::AggregationFull,
        Self::SpoolFull,
        Self::SpoolError,
        Self::CollectorRestart,
    ];

    /// The `loss_source` value.
    pub const fn name(self) -> &'static str {
        match self {
            Self::RingbufFull => "ringbuf-full",
            Self::Undecodable => "undecodable",
            Self::AggregationFull => "aggregation-full",
            Self::SpoolFull => "spool-full",
            Self::SpoolError => "spool-error",
            Self::CollectorRestart => "collector-restart",
        }
    }
}

/// Lost events of one source over a span of time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LossSpan {
    /// Where.
    pub source: LossSource,
    /// How many events; `None` when unknown.
    pub events: Option<u64>,
    /// First second (Unix) of the span.
    pub from_s: u64,
    /// Last second (Unix) of the span.
    pub to_s: u64,
}

/// Losses not yet written as records, merged per source.
#[derive(Debug, Default)]
pub struct LossLedger {
    pending: BTreeMap<LossSource, LossSpan>,
}

impl LossLedger {
    /// Counts `events` lost at `source` between Unix seconds `from_s` and `to_s`.
    pub fn add(&mut self, source: LossSource, events: Option<u64>, from_s: u64, to_s: u64) {
        if events == Some(0) {
            return;
        }
        let span = self.pending.entry(source).or_insert(LossSpan {
            source,
            events: Some(0),
            from_s,
            to_s,
        });
        span.events = span.events.zip(events).map(|(a, b)| a + b);
        span.from_s = span.from_s.min(from_s);
        span.to_s = span.to_s.max(to_s);
    }

    /// Counts `span` (see [`LossLedger::add`]).
    pub fn add_span(&mut self, span: LossSpan) {
        self.add(span.source, span.events, span.from_s, span.to_s);
    }

    /// Every pending span, merged per source, left pending.
    pub fn spans(&self) -> Vec<LossSpan> {
        self.pending.values().copied().collect()
    }

    /// Takes every pending span, to be written.
    pub fn take(&mut self) -> Vec<LossSpan> {
        std::mem::take(&mut self.pending).into_values().collect()
    }

    /// Whether nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_merge_per_source_and_unknown_counts_stay_unknown() {
        let mut ledger = LossLedger::default();
        ledger.add(LossSource::RingbufFull, Some(3), 100, 101);
        ledger.add(LossSource::RingbufFull, Some(4), 99, 105);
        ledger.add(LossSource::SpoolFull, Some(0), 1, 2);
        ledger.add(LossSource::CollectorRestart, None, 50, 60);
        ledger.add(LossSource::CollectorRestart, Some(2), 61, 62);
        let spans = ledger.take();
        assert_eq!(
            spans,
            vec![
                LossSpan {
                    source: LossSource::RingbufFull,
                    events: Some(7),
                    from_s: 99,
                    to_s: 105
                },
                LossSpan {
                    source: LossSource::CollectorRestart,
                    events: None,
                    from_s: 50,
                    to_s: 62
                },
            ]
        );
        assert!(ledger.is_empty());
    }
}
