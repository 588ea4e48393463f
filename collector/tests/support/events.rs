//! Flow events as the probe writes them, for the collector's tests.

use tollgate_schemas::{Direction, FLOW_EVENT_VERSION, FlowEvent, Reason, Verdict, addr, proto};

/// `text`, an address, in the maps' 16-byte form.
fn ip(text: &str) -> [u8; 16] {
    addr::to_bytes(text.parse().expect("an address"))
}

/// A TCP SYN from `src` to `dst`, denied at egress for want of a matching rule, with no
/// endpoint named: tests change what they need with struct update syntax.
pub fn tcp(src: &str, src_port: u16, dst: &str, dst_port: u16, ts_ns: u64) -> FlowEvent {
    FlowEvent {
        version: FLOW_EVENT_VERSION,
        family: 4,
        protocol: proto::TCP,
        direction: Direction::Egress as u8,
        verdict: Verdict::Deny as u8,
        reason: Reason::IsolatedNoMatch as u8,
        tcp_flags: 0x02,
        ts_ns,
        ifindex: 1,
        endpoint: 0,
        rule_id: 0,
        src_port,
        dst_port,
        src_addr: ip(src),
        dst_addr: ip(dst),
        packets: 1,
        bytes: 74,
        icmp_type: 0,
        icmp_code: 0,
        _pad: [0; 6],
    }
}
