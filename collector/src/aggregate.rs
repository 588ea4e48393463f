//! Aggregation: flow events → flow records, one per flow, verdict and window.
//!
//! [`Aggregator::ingest`] enriches each event as it arrives, with the identities that held
//! *at the event's timestamp* ([`Identities`]): who held each end (a pod, or the node itself),
//! the Service whose ClusterIP, protocol and port the destination was, the rule, and the
//! deciding endpoint's host interface (and whether its pod has a branch ENI). It adds
//! the event to the open record of its key: the window (Unix seconds / window length), the
//! flow's addresses, ports, protocol and direction, the deciding endpoint, verdict, reason and
//! rule, and the identity spans of both ends, of the Service and of the interface (so the
//! same addresses held
//! by two pods in one window make two records, as does a ClusterIP handed from one Service to
//! another). Packets, bytes and events are summed, TCP flags OR-ed, first and last times kept.
//! [`Aggregator::closing_before`] takes out the records of every window that ended, which
//! [`Closing::write`] hands to the writer a chunk at a time; a late event for a closed window
//! opens a fresh record, which is closed at the next call.
//!
//! The table is bounded ([`Aggregator::new`]'s `max_open`): an event that would open one more
//! record is refused ([`Skipped::Full`]), and the caller counts it as lost.
//!
//! The table is an [`IndexMap`]: its hash index holds only positions, and the open records
//! sit in one vector in the order they were opened. A flood of new flows appends to that
//! vector instead of writing each record to a random place of a large table, and closing
//! reads it in order. An open record keeps only what its key does not say (the counters and
//! the names found at its first event); the [`Flow`] is made from both when it closes.

use std::sync::Arc;

use foldhash::fast::RandomState;
use indexmap::{IndexMap, map::Entry};

use tollgate_schemas::{Direction, FlowEvent, Reason, Verdict, addr, proto, rule::NamedRule};

use crate::{
    clock::{Clock, NS_PER_S},
    config::RecordMode,
    identity::{EndpointInterface, Holder, Identities, ServiceAddress, ServiceIdentity},
    record::{Flow, FlowRecord, RecordBody},
};

/// What makes two events one record.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    window: u64,
    src: [u8; 16],
    dst: [u8; 16],
    src_port: u16,
    dst_port: u16,
    protocol: u8,
    direction: Direction,
    verdict: Verdict,
    reason: Reason,
    icmp_type: u8,
    icmp_code: u8,
    endpoint: u32,
    rule_id: u32,
    /// Identity spans of source, destination, Service and rule (0: none).
    src_serial: u64,
    dst_serial: u64,
    svc_serial: u64,
    rule_serial: u64,
    interface_serial: u64,
    /// Serial of what the compilation said of the endpoint, for a denial for want of a rule
    /// (it names the isolating policies); 0 otherwise.
    isolating_serial: u64,
}

/// A record being aggregated: what its [`Key`] does not say.
#[derive(Debug)]
struct Open {
    first_ns: u64,
    last_ns: u64,
    packets: u64,
    bytes: u64,
    events: u64,
    tcp_flags: u8,
    audit: bool,
    src_holder: Option<Holder>,
    dst_holder: Option<Holder>,
    service: Option<Arc<ServiceIdentity>>,
    rule: Option<Arc<NamedRule>>,
    isolating: Option<Arc<[String]>>,
    interface: Option<Arc<EndpointInterface>>,
}

/// Why an event was not aggregated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skipped {
    /// The record mode leaves it out (allowed flows in `denied` mode).
    Filtered,
    /// A direction, verdict or reason this build does not know.
    Unknown,
    /// The table is full.
    Full,
}

/// The open records of the current windows.
#[derive(Debug)]
pub struct Aggregator {
    window_s: u64,
    mode: RecordMode,
    max_open: usize,
    /// Keyed with foldhash: the key is ~100 bytes, hashed once for every event.
    open: IndexMap<Key, Open, RandomState>,
    /// The earliest window of an open record (`u64::MAX` when none is open): closing walks
    /// the table only once that window has ended, not at every tick.
    oldest_window: u64,
}

impl Aggregator {
    /// Windows of `window_s` seconds, at most `max_open` open records.
    pub fn new(window_s: u64, mode: RecordMode, max_open: usize) -> Self {
        Self {
            window_s: window_s.max(1),
            mode,
            max_open,
            open: IndexMap::default(),
            oldest_window: u64::MAX,
        }
    }

    /// Open records.
    pub fn len(&self) -> usize {
        self.open.len()
    }

    /// Whether no record is open.
    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }

    /// Adds `event` (stamped in monotonic time, converted with `clock`), enriched with
    /// `identities`.
    pub fn ingest(
        &mut self,
        event: &FlowEvent,
        clock: &Clock,
        identities: &Identities,
    ) -> Result<(), Skipped> {
        let (Some(direction), Some(verdict), Some(reason)) = (
            Direction::from_raw(event.direction),
            Verdict::from_raw(event.verdict),
            Reason::from_raw(event.reason),
        ) else {
            return Err(Skipped::Unknown);
        };
        if self.mode == RecordMode::Denied && verdict == Verdict::Allow {
            return Err(Skipped::Filtered);
        }
        let unix_ns = clock.unix_ns(event.ts_ns);
        let ts = event.ts_ns;
        let src = identities.holder_at(&event.src_addr, ts);
        let dst = identities.holder_at(&event.dst_addr, ts);
        let service = identities.service_at(
            &ServiceAddress {
                addr: event.dst_addr,
                protocol: event.protocol,
                port: event.dst_port,
            },
            ts,
        );
        let rule = (event.rule_id != 0)
            .then(|| identities.rule_at(event.rule_id, ts))
            .flatten();
        let interface = identities.interface_at(event.endpoint, event.ifindex, ts);
        let isolating = (reason == Reason::IsolatedNoMatch)
            .then(|| identities.isolating_at(event.endpoint, direction, ts))
            .flatten();
        let key = Key {
            window: unix_ns / NS_PER_S / self.window_s,
            src: event.src_addr,
            dst: event.dst_addr,
            src_port: event.src_port,
            dst_port: event.dst_port,
            protocol: event.protocol,
            direction,
            verdict,
            reason,
            icmp_type: event.icmp_type,
            icmp_code: event.icmp_code,
            endpoint: event.endpoint,
            rule_id: event.rule_id,
            src_serial: src.as_ref().map_or(0, |h| h.serial),
            dst_serial: dst.as_ref().map_or(0, |h| h.serial),
            svc_serial: service.as_ref().map_or(0, |h| h.serial),
            rule_serial: rule.as_ref().map_or(0, |h| h.serial),
            interface_serial: interface.as_ref().map_or(0, |h| h.serial),
            isolating_serial: isolating.as_ref().map_or(0, |(serial, _)| *serial),
        };
        let window = key.window;
        let full = self.open.len() >= self.max_open;
        let entry = match self.open.entry(key) {
            Entry::Occupied(mut entry) => {
                let open = entry.get_mut();
                open.first_ns = open.first_ns.min(unix_ns);
                open.last_ns = open.last_ns.max(unix_ns);
                open.packets += event.packets;
                open.bytes += event.bytes;
                open.tcp_flags |= event.tcp_flags;
                open.events += 1;
                return Ok(());
            }
            Entry::Vacant(_) if full => return Err(Skipped::Full),
            Entry::Vacant(entry) => entry,
        };
        // The verdict says it for denials: a dropped packet was enforced, a would-be deny that
        // passed was audited. Only an allowed flow needs the endpoint's mode at the time (the
        // probe does not carry it), which can lag a mode switch by the time between the maps'
        // sync and the enforcer's report of it.
        let audit = match verdict {
            Verdict::AuditDeny => true,
            Verdict::Deny => false,
            Verdict::Allow => identities.audit_at(event.endpoint, direction, ts),
        };
        entry.insert(Open {
            first_ns: unix_ns,
            last_ns: unix_ns,
            packets: event.packets,
            bytes: event.bytes,
            events: 1,
            tcp_flags: event.tcp_flags,
            audit,
            src_holder: src.map(|h| h.holder),
            dst_holder: dst.map(|h| h.holder),
            service: service.map(|h| h.value),
            rule: rule.map(|h| h.value),
            isolating: isolating.map(|(_, names)| names),
            interface: interface.map(|h| h.value),
        });
        self.oldest_window = self.oldest_window.min(window);
        Ok(())
    }

    /// Starts closing every window that ends at or before Unix second `now_s` less `grace_s`
    /// (events are stamped when decided and may reach the collector a drain interval later);
    /// `None` when none has ended.
    pub fn closing_before(&mut self, now_s: u64, grace_s: u64) -> Option<Closing> {
        let cutoff = now_s.saturating_sub(grace_s) / self.window_s;
        (self.oldest_window < cutoff).then(|| self.closing(cutoff))
    }

    /// Starts closing every open record, whatever its window (on shutdown, or a flush).
    pub fn closing_all(&mut self) -> Closing {
        self.closing(u64::MAX)
    }

    /// The table, taken out with its allocation, to close the windows before `cutoff`.
    fn closing(&mut self, cutoff: u64) -> Closing {
        self.oldest_window = u64::MAX;
        Closing {
            table: std::mem::take(&mut self.open),
            cutoff,
            oldest: u64::MAX,
        }
    }

    /// Ends `closing`: the table comes back, with the records still open and its allocation.
    /// Nothing may be ingested between the start of a closing and its end.
    pub fn closed(&mut self, closing: Closing) {
        debug_assert!(self.open.is_empty(), "events ingested while closing");
        self.open = closing.table;
        self.oldest_window = closing.oldest;
    }
}

/// The records of the windows that ended, being closed: the aggregator's table, taken out of
/// it ([`Aggregator::closing_before`], [`Aggregator::closing_all`]) so that its records can
/// be written a chunk at a time while they are taken out of it ([`Closing::write`]), and
/// given back ([`Aggregator::closed`]) with what stays open.
#[derive(Debug)]
pub struct Closing {
    table: IndexMap<Key, Open, RandomState>,
    /// Records of windows before this one close.
    cutoff: u64,
    /// The earliest window of a record left open.
    oldest: u64,
}

impl Closing {
    /// Takes the closing records out of the table and hands them to `write`, at most `rows` at
    /// a time, each chunk in the order of the records' start. Only `rows` records are ever
    /// out of the table and not yet written: closing a full table does not hold all its
    /// records twice.
    pub fn write(&mut self, rows: usize, mut write: impl FnMut(Vec<FlowRecord>)) {
        let cutoff = self.cutoff;
        let oldest = &mut self.oldest;
        let mut closed = self
            .table
            .extract_if(.., |key, _| {
                let closes = key.window < cutoff;
                if !closes {
                    *oldest = (*oldest).min(key.window);
                }
                closes
            })
            .map(Open::record);
        loop {
            // At most the records not walked yet close: the chunk is made as large as it can
            // be at once.
            let most = closed.size_hint().1.unwrap_or(rows);
            let mut chunk = Vec::with_capacity(rows.min(most));
            chunk.extend(closed.by_ref().take(rows));
            if chunk.is_empty() {
                break;
            }
            write(by_start(chunk));
        }
    }
}

impl Open {
    /// The closed record of `key`.
    fn record((key, open): (Key, Open)) -> FlowRecord {
        let icmp = matches!(key.protocol, proto::ICMP | proto::ICMPV6);
        let flow = Flow {
            src: addr::from_bytes(key.src),
            dst: addr::from_bytes(key.dst),
            src_port: key.src_port,
            dst_port: key.dst_port,
            protocol: key.protocol,
            direction: key.direction,
            verdict: key.verdict,
            reason: key.reason,
            icmp: icmp.then_some((key.icmp_type, key.icmp_code)),
            packets: open.packets,
            bytes: open.bytes,
            tcp_flags: open.tcp_flags,
            events: open.events,
            src_holder: open.src_holder,
            dst_holder: open.dst_holder,
            service: open.service,
            rule: open.rule,
            isolating: open.isolating,
            audit: open.audit,
            interface: open.interface,
        };
        FlowRecord {
            start_s: open.first_ns / NS_PER_S,
            end_s: open.last_ns / NS_PER_S,
            body: RecordBody::Flow(flow),
        }
    }
}

/// `records` in the order of their start. Records come out of the table in the order they
/// were opened, which is mostly that order already: then there is nothing to sort.
fn by_start(mut records: Vec<FlowRecord>) -> Vec<FlowRecord> {
    if !records.is_sorted_by_key(|r| r.start_s) {
        records.sort_by_key(|r| r.start_s);
    }
    records
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_schemas::FLOW_EVENT_VERSION;

    fn event(ts_s: u64, src_port: u16, verdict: Verdict) -> FlowEvent {
        FlowEvent {
            version: FLOW_EVENT_VERSION,
            family: 4,
            protocol: proto::TCP,
            direction: Direction::Egress as u8,
            verdict: verdict as u8,
            reason: Reason::IsolatedNoMatch as u8,
            tcp_flags: 0x02,
            ts_ns: ts_s * NS_PER_S,
            ifindex: 3,
            endpoint: 1,
            rule_id: 0,
            src_port,
            dst_port: 80,
            src_addr: addr::to_bytes("198.18.0.40".parse().unwrap()),
            dst_addr: addr::to_bytes("198.18.0.30".parse().unwrap()),
            packets: 2,
            bytes: 120,
            icmp_type: 0,
            icmp_code: 0,
            _pad: [0; 6],
        }
    }

    /// The records of the windows ended at `now_s` (as the pipeline closes them, in chunks).
    fn close_before(agg: &mut Aggregator, now_s: u64, grace_s: u64) -> Vec<FlowRecord> {
        agg.closing_before(now_s, grace_s)
            .map(|closing| close(agg, closing))
            .unwrap_or_default()
    }

    fn close_all(agg: &mut Aggregator) -> Vec<FlowRecord> {
        let closing = agg.closing_all();
        close(agg, closing)
    }

    fn close(agg: &mut Aggregator, mut closing: Closing) -> Vec<FlowRecord> {
        let mut records = Vec::new();
        closing.write(2, |chunk| {
            assert!(!chunk.is_empty() && chunk.len() <= 2, "{chunk:?}");
            records.extend(chunk);
        });
        agg.closed(closing);
        records
    }

    fn flow(record: &FlowRecord) -> &Flow {
        match &record.body {
            RecordBody::Flow(flow) => flow,
            other => panic!("not a flow record: {other:?}"),
        }
    }

    #[test]
    fn events_of_one_flow_and_window_sum_and_windows_split() {
        let clock = Clock::with_offset(0);
        let identities = Identities::default();
        let mut agg = Aggregator::new(60, RecordMode::All, 100);
        for ts in [120, 130, 179, 180] {
            agg.ingest(&event(ts, 1000, Verdict::Deny), &clock, &identities)
                .unwrap();
        }
        agg.ingest(&event(125, 1001, Verdict::Deny), &clock, &identities)
            .unwrap();
        assert_eq!(agg.len(), 3);
        // Window [120, 180) closes once 180 + grace has passed.
        assert!(close_before(&mut agg, 181, 2).is_empty());
        let closed = close_before(&mut agg, 182, 2);
        assert_eq!(closed.len(), 2);
        let first = closed.iter().find(|r| flow(r).src_port == 1000).unwrap();
        assert_eq!((first.start_s, first.end_s), (120, 179));
        assert_eq!(flow(first).packets, 6);
        assert_eq!(flow(first).bytes, 360);
        assert_eq!(flow(first).events, 3);
        let rest = close_all(&mut agg);
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].start_s, 180);
    }

    #[test]
    fn each_window_closes_once_it_has_ended_also_after_an_earlier_one_and_a_late_event() {
        let clock = Clock::with_offset(0);
        let identities = Identities::default();
        let mut agg = Aggregator::new(60, RecordMode::All, 100);
        let add = |agg: &mut Aggregator, ts, port| {
            agg.ingest(&event(ts, port, Verdict::Deny), &clock, &identities)
                .unwrap();
        };
        add(&mut agg, 130, 1);
        add(&mut agg, 190, 2);
        let ports = |records: Vec<FlowRecord>| -> Vec<u16> {
            records.iter().map(|r| flow(r).src_port).collect()
        };
        assert!(
            close_before(&mut agg, 181, 2).is_empty(),
            "[120, 180) is in its grace"
        );
        assert_eq!(ports(close_before(&mut agg, 182, 2)), [1]);
        assert!(
            close_before(&mut agg, 241, 2).is_empty(),
            "[180, 240) is in its grace"
        );
        // A late event of the closed window opens a record again, closed at the next call.
        add(&mut agg, 150, 3);
        assert_eq!(ports(close_before(&mut agg, 241, 2)), [3]);
        assert_eq!(ports(close_before(&mut agg, 242, 2)), [2]);
        assert!(agg.is_empty());
    }

    #[test]
    fn denied_mode_keeps_denies_and_audit_denies_only() {
        let clock = Clock::with_offset(0);
        let identities = Identities::default();
        let mut agg = Aggregator::new(60, RecordMode::Denied, 100);
        let allow = agg.ingest(&event(1, 1, Verdict::Allow), &clock, &identities);
        assert_eq!(allow, Err(Skipped::Filtered));
        for verdict in [Verdict::Deny, Verdict::AuditDeny] {
            agg.ingest(&event(1, 1, verdict), &clock, &identities)
                .unwrap();
        }
        let records = close_all(&mut agg);
        assert_eq!(records.len(), 2);
        for record in &records {
            let flow = flow(record);
            assert_eq!(flow.audit, flow.verdict == Verdict::AuditDeny, "{flow:?}");
        }
    }

    #[test]
    fn a_full_table_refuses_new_flows_only() {
        let clock = Clock::with_offset(0);
        let identities = Identities::default();
        let mut agg = Aggregator::new(60, RecordMode::All, 2);
        let refused = (0..5)
            .filter(|port| {
                agg.ingest(&event(10, *port, Verdict::Deny), &clock, &identities)
                    == Err(Skipped::Full)
            })
            .count();
        assert_eq!(refused, 3);
        // An event of an open record still counts.
        agg.ingest(&event(11, 0, Verdict::Deny), &clock, &identities)
            .unwrap();
    }

    #[test]
    fn unknown_enumerations_are_counted_not_trusted() {
        let clock = Clock::with_offset(0);
        let identities = Identities::default();
        let mut agg = Aggregator::new(60, RecordMode::All, 2);
        let mut bad = event(10, 1, Verdict::Deny);
        bad.verdict = 9;
        assert_eq!(agg.ingest(&bad, &clock, &identities), Err(Skipped::Unknown));
    }
}
