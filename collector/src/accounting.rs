//! Accounting of allowed flows: the packets and bytes conntrack counted after a flow's
//! decision, reported as events of their own.
//!
//! The probe writes one event when it allows a flow (its first packet); later packets, both
//! directions, only bump the flow's conntrack entry. [`Accounting::report`] walks a snapshot of
//! the entries and turns what each one counted since the previous walk into a [`FlowEvent`]
//! ([`FlowEvent::tracked`]) with the flow's own verdict, reason and rule, stamped with the
//! entry's last packet, so the aggregator adds it to the flow's record of that window. An entry seen for the first time
//! starts after its first packet (`CtEntry::first_len`), which the decision event reported.
//! Packets counted between a walk and the entry's removal (expiry, eviction) are not reported.

use std::collections::HashMap;

use foldhash::fast::RandomState;
use tollgate_schemas::{CtEntry, FlowEvent, FlowKey};

/// Packet and byte totals of each tracked flow at the previous walk.
#[derive(Debug, Default)]
pub struct Accounting {
    seen: HashMap<FlowKey, (u64, u64), RandomState>,
}

impl Accounting {
    /// Flows remembered from the previous walk.
    pub fn tracked(&self) -> usize {
        self.seen.len()
    }

    /// The events reporting what each of `flows` carried since the previous walk; forgets
    /// flows that are gone.
    pub fn report(&mut self, flows: &[(FlowKey, CtEntry)]) -> Vec<FlowEvent> {
        let mut seen = HashMap::with_capacity_and_hasher(flows.len(), RandomState::default());
        let mut events = Vec::new();
        for (key, entry) in flows {
            let first = (1, u64::from(entry.first_len));
            let mut before = self.seen.get(key).copied().unwrap_or(first);
            if entry.packets < before.0 {
                // The entry was removed and created again between two walks.
                before = first;
            }
            let packets = entry.packets - before.0;
            if packets > 0 {
                events.push(FlowEvent::tracked(
                    key,
                    entry,
                    packets,
                    entry.bytes.saturating_sub(before.1),
                ));
            }
            seen.insert(*key, (entry.packets, entry.bytes));
        }
        self.seen = seen;
        events
    }
}

#[cfg(test)]
mod tests {
    use tollgate_schemas::{Direction, Reason, Verdict, addr, proto};

    use super::*;

    fn key(port: u16) -> FlowKey {
        FlowKey {
            ifindex: 12,
            direction: Direction::Egress as u8,
            protocol: proto::TCP,
            _pad: [0; 2],
            src_addr: addr::to_bytes("198.18.0.40".parse().unwrap()),
            dst_addr: addr::to_bytes("198.18.0.20".parse().unwrap()),
            src_port: port,
            dst_port: 80,
        }
    }

    fn entry(packets: u64, bytes: u64) -> CtEntry {
        CtEntry {
            created_ns: 1,
            last_seen_ns: 7,
            packets,
            bytes,
            rule_id: 9,
            revision: 1,
            verdict: Verdict::Allow as u8,
            reason: Reason::AllowedByRule as u8,
            tcp_flags: 0x1b,
            direction: Direction::Egress as u8,
            first_len: 74,
            endpoint: 3,
        }
    }

    #[test]
    fn each_walk_reports_what_came_after_the_decision_and_the_previous_walk() {
        let mut accounting = Accounting::default();
        // Only the decided packet so far: the decision event reported it.
        assert!(accounting.report(&[(key(1), entry(1, 74))]).is_empty());
        let events = accounting.report(&[(key(1), entry(5, 574))]);
        assert_eq!(events.len(), 1);
        let e = events[0];
        assert_eq!((e.packets, e.bytes), (4, 500));
        assert_eq!((e.verdict, e.reason, e.rule_id), (1, 1, 9));
        assert_eq!((e.src_port, e.dst_port, e.ts_ns), (1, 80, 7));
        // The interface is the key's, the endpoint the entry's.
        assert_eq!((e.ifindex, e.endpoint), (12, 3));
        // Nothing new: nothing reported.
        assert!(accounting.report(&[(key(1), entry(5, 574))]).is_empty());
        // A flow first seen with packets after its decision.
        let events = accounting.report(&[(key(1), entry(6, 674)), (key(2), entry(3, 300))]);
        let by_port = |port| events.iter().find(|e| e.src_port == port).unwrap();
        assert_eq!((by_port(1).packets, by_port(1).bytes), (1, 100));
        assert_eq!((by_port(2).packets, by_port(2).bytes), (2, 226));
        // Gone flows are forgotten; a recreated one starts over.
        assert!(accounting.report(&[(key(2), entry(3, 300))]).is_empty());
        assert_eq!(accounting.tracked(), 1);
        let events = accounting.report(&[(key(2), entry(2, 150))]);
        assert_eq!((events[0].packets, events[0].bytes), (1, 76));
    }
}
