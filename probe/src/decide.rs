//! The decision for one packet at one hook: endpoint checks, then conntrack, then policy.
//!
//! A whole packet that is no ICMP error is first looked for among the known flows ([`known`]),
//! keyed by its interface, with no lookup of its endpoint: an entry decided under the revision
//! that [`REVISIONS`] holds for its endpoint passes or drops it as step 4 would. The slot is 0
//! unless every address of the endpoint is programmed with that revision (and none has left
//! it, `enforcer/src/revision_slots.rs`), so steps 2 and 3 would have let the packet through;
//! any other packet goes through the steps in order.
//!
//! Order of the checks, each exit failing open or closed on purpose:
//! 1. Parsing (see [`crate::parse`]): ARP/NDP pass (open: policy is L3/L4); other non-IP and
//!    malformed packets drop (closed: what cannot be read cannot be allowed).
//! 2. The endpoint of the packet's pod-side address. Unknown: drop (closed), unless the
//!    `standard` mode flag is set. On another interface than its own: drop (closed, spoofed).
//!    Known but not programmed: drop (closed: never an allow window at pod start).
//! 3. Fragments after the first take the first fragment's verdict; without one, or with an
//!    entry whose verdict or reason is unknown, they drop (closed: their ports are unknown). An
//!    ICMP error about a tracked flow of the endpoint, no longer than a router's error (576
//!    bytes of IPv4, 1280 of IPv6), passes as related (open for the flow's own errors, from any
//!    sender: path MTU discovery must work); any other ICMP error is decided like a new flow.
//! 4. Conntrack: a flow already passed in this direction, or the reply to one passed in the
//!    other direction, passes, if the endpoint's policy revision is still the one the flow was
//!    decided under; otherwise the flow is decided again against the current policy, so a
//!    tightened policy (a quarantine) cuts established flows too. Conntrack keys a flow the
//!    same for both directions, and its entry says which way the first packet went: one lookup
//!    finds a flow from either end. An entry whose verdict or direction byte is unknown, or
//!    whose verdict does not pass, is forgotten and the packet decided by policy (closed). A
//!    TCP SYN without ACK opens a connection and is never passed on conntrack: it is decided
//!    by policy whatever conntrack holds of its tuple (closed: a retransmitted SYN, a new
//!    connection on the tuple of a closing one, a simultaneous open's second SYN), and when it
//!    passes its entry replaces the old one.
//!
//!    A flow conntrack does not pass, which policy denied under the endpoint's current
//!    revision, drops again without being decided (closed: the revision moves whenever a
//!    decision of the endpoint may change), except for the packet whose deny report is due: it
//!    is decided again, so that its event names the rule as of now. A TCP SYN without ACK
//!    looks up its deny entry only; any other packet after conntrack, which may pass it as a
//!    reply. The revision does not follow the node's own addresses (`from-node`), which change
//!    only with the node: a report interval bounds how long such a change waits.
//! 5. Policy: neither isolated in this direction nor selected by a ClusterNetworkPolicy passes
//!    (open on purpose: no policy selects the pod there). Otherwise the deciding rule is found
//!    in four steps, each finding none when it finds nothing:
//!    - (a) the endpoint's policy set of the direction (isolated without one: closed);
//!    - (b) the peer's identity, the longest prefix of its address in the node-wide peer trie
//!      (a miss: closed; the trie always holds `::/0` and `::ffff:0:0/96`, so it cannot miss);
//!    - (c) the policy entry of (set, identity), else of (set, the identity's fallback): a
//!      ClusterIP without an entry of its own is what the addresses around it are (no entry:
//!      closed, the set allows the peer nothing);
//!    - (d) the rule set the entry names (rule set 0, the empty one, or an id past the array's
//!      end: closed), and its first port rule matching the protocol and destination port,
//!      tier by tier (a matching Pass rule skips the rest of its tier).
//!
//!    The rule allows, or denies: a ClusterNetworkPolicy's Deny (never in audit mode), or a
//!    Service's ClusterIP of which policy allows only some ready backends (closed: kube-proxy
//!    picks the backend after this hook); an action byte it does not know denies (closed). No
//!    rule, isolated: drop (or pass as audit-deny in audit mode), but ingress from one of the
//!    node's own addresses passes as `from-node` (open on purpose: the API exempts the node's
//!    traffic). No rule, selected by ClusterNetworkPolicies only: pass as `default-allow` (open
//!    on purpose: the API's default when no tier decides).

use aya_ebpf::{maps::lpm_trie::Key, programs::TcContext};
use tollgate_schemas::{
    Config, Counter, CtEntry, Direction, EndpointKey, EndpointState, FlowKey, FragKey, PeerKey,
    PolicyEntry, PolicyKey, PolicyValue, Reason, Verdict, config_flags, endpoint_flags,
    port_action, proto,
};

use crate::{
    DROP, PASS,
    flow::{self, Denial},
    maps::{
        CONFIG, CONNTRACK, ENDPOINTS, FRAGS, NODE_ADDRS, PEERS, POLICY, REVISIONS, RULESETS,
        SCRATCH, count,
    },
    parse::{self, Addr, Fragment, Packet, Parsed},
    stack::{Aligned, OffWord},
};

/// Prefix length of a full address in the peer trie (the 16-byte form).
const FULL_PREFIX_LEN: u32 = 128;

/// TCP FIN and RST flags.
const TCP_FIN_RST: u8 = 0x01 | 0x04;
/// TCP SYN flag.
const TCP_SYN: u8 = 0x02;
/// TCP ACK flag.
const TCP_ACK: u8 = 0x10;

/// Decides the packet in `ctx`, seen in `direction` from its pod, and returns the TC action.
#[inline(always)]
pub fn run(ctx: &TcContext, direction: Direction) -> i32 {
    let Some(packet) = SCRATCH.get_ptr_mut(0) else {
        // Fail closed: the scratch array always has its one slot; this cannot happen.
        count(Counter::Deny);
        return DROP;
    };
    let Some(config) = CONFIG.get(0) else {
        // Fail closed: the config array always has its one slot; this cannot happen.
        count(Counter::Deny);
        return DROP;
    };
    // SAFETY: this CPU's slot; no other program run uses it until this one returns.
    let packet = unsafe { &mut *packet };
    packet.reset(ctx, direction, config);
    match parse::parse(ctx, packet) {
        Parsed::Ip => decide_ip(packet, false, config),
        Parsed::Truncated => decide_ip(packet, true, config),
        Parsed::Infrastructure => {
            // Fail open on purpose: ARP and neighbor discovery carry no layer-4 flow.
            count(Counter::Infrastructure);
            PASS
        }
        Parsed::NotIp | Parsed::Malformed => {
            // Fail closed: no addresses to attribute, so counted, without an event.
            count(Counter::Malformed);
            count(Counter::Deny);
            DROP
        }
    }
}

/// A verdict with its reason and rule.
#[derive(Clone, Copy)]
pub struct Outcome {
    pub verdict: Verdict,
    pub reason: Reason,
    pub rule_id: u32,
}

impl Outcome {
    const fn new(verdict: Verdict, reason: Reason, rule_id: u32) -> Self {
        Self {
            verdict,
            reason,
            rule_id,
        }
    }
}

/// `truncated`: the layer-4 header could not be read; such a packet is attributed to its
/// endpoint, then dropped.
#[inline(always)]
fn decide_ip(packet: &Packet, truncated: bool, config: &Config) -> i32 {
    let direction = packet.direction;
    let key = Aligned(flow::key_of(packet));
    let key = &key.0;
    let opening = opens_connection(packet);
    // A whole packet that is no ICMP error is first looked for among the known flows, which
    // need no lookup of its endpoint; the others are attributed to their endpoint first.
    let plain =
        !truncated && matches!(packet.fragment, Fragment::None) && packet.quoted.present == 0;
    let mut outcome = Outcome::new(Verdict::Allow, Reason::Established, 0);
    let known = if plain {
        known(packet, key, opening, config, &mut outcome)
    } else {
        Known::Unsure
    };
    match known {
        Known::Passes => return flow::pass(outcome),
        // Closed: policy denied this flow under the endpoint's current revision and would deny
        // it again; the packet only adds to the flow's next report.
        Known::Denied => return DROP,
        Known::New | Known::Unsure => {}
    }
    let (own, peer) = packet.ends();
    let Some(endpoint) = endpoint(own) else {
        if config.flags & config_flags::ALLOW_UNKNOWN_ENDPOINTS != 0 {
            // Fail open on purpose: `standard` mode, chosen by the operator.
            count(Counter::Allow);
            return PASS;
        }
        // Fail closed: a pod address that no endpoint claims.
        return flow::deny(packet, &Denial::check(0, Reason::UnknownEndpoint), config);
    };
    if endpoint.ifindex != packet.ifindex {
        // Fail closed: the address arrived on another pod's veth.
        return flow::deny(packet, &Denial::check(endpoint.id, Reason::Spoofed), config);
    }
    if endpoint.flags & endpoint_flags::PROGRAMMED == 0 {
        // Fail closed: selected by policy, rules not written yet.
        return flow::deny(
            packet,
            &Denial::check(endpoint.id, Reason::NotProgrammed),
            config,
        );
    }
    if truncated {
        // Fail closed: ports unknown.
        count(Counter::Malformed);
        return flow::deny(
            packet,
            &Denial::check(endpoint.id, Reason::Malformed),
            config,
        );
    }
    if let Fragment::Later { id } = packet.fragment {
        return if later_fragment(packet, endpoint, id, &mut outcome) {
            flow::pass(outcome)
        } else {
            // Fail closed: the first fragment was denied or not seen, or its entry is
            // unreadable.
            flow::deny(
                packet,
                &Denial::check(endpoint.id, Reason::Fragment),
                config,
            )
        };
    }
    if packet.quoted.present != 0 && related(packet, endpoint, config) {
        return flow::pass(Outcome::new(Verdict::Allow, Reason::Related, 0));
    }
    if let Known::Unsure = known {
        // A SYN without ACK is decided by policy whatever conntrack holds (see `known`).
        if !opening && tracked(packet, endpoint, key, config, &mut outcome) {
            remember_fragment(packet, endpoint, &outcome);
            return flow::pass(outcome);
        }
        if flow::denied_again(packet, key, config) {
            // Closed: as for `Known::Denied` above.
            return DROP;
        }
    }
    let outcome = policy(endpoint, direction, peer, packet.protocol, packet.dst_port);
    remember_fragment(packet, endpoint, &outcome);
    if outcome.verdict.passes() {
        flow::track(packet, key, endpoint, &outcome);
        flow::pass(outcome)
    } else {
        flow::deny(packet, &Denial::by_policy(endpoint, &outcome), config)
    }
}

/// What the known flows say of a packet, before its endpoint is looked up ([`known`]).
#[derive(Clone, Copy)]
#[repr(u32)]
enum Known {
    /// No flow knows it: it is decided by policy.
    New,
    /// A tracked flow decided under its endpoint's current revision passes it (the outcome
    /// written).
    Passes,
    /// Policy denied its flow under its endpoint's current revision: it drops.
    Denied,
    /// A flow knows it but cannot decide it alone (another revision, expired, an entry not
    /// the probe's): it is decided with its endpoint, through conntrack again.
    Unsure,
}

/// What the known flows say of a whole packet that is no ICMP error (`opening`: a TCP SYN
/// without ACK, [`opens_connection`]), checked in the order of step 4 of the module doc, with
/// each entry's revision against its endpoint's current one in [`REVISIONS`]. The slot is 0
/// while the endpoint is not programmed or gone, so a flow passes here only where the endpoint
/// checks (step 2) would pass it too; anything else is left to them (`Unsure`). Inlined: a
/// packet of an established flow, either way, makes no call of the probe's own (each call and
/// return costs a few ns, more where the kernel mitigates return misprediction).
#[inline(always)]
fn known(
    packet: &Packet,
    key: &FlowKey,
    opening: bool,
    config: &Config,
    outcome: &mut Outcome,
) -> Known {
    // A SYN without ACK opens a connection: it is never a reply, and it is decided by policy
    // whatever conntrack holds of its tuple (a retransmitted SYN, a new connection on the tuple
    // of a closing one); when it passes, its entry replaces the old one. Its deny entry only is
    // looked up: a repeated denied SYN drops on it.
    if !opening {
        // `FlowKey::tracked` without its copy: a packet into the pod has its flow's key
        // already, and only one out of it is reversed.
        let reversed;
        let tracked = if packet.direction == Direction::Ingress {
            key
        } else {
            reversed = Aligned(key.reversed());
            &reversed.0
        };
        if let Some(entry) = CONNTRACK.get_ptr_mut(tracked) {
            // SAFETY: a pointer into the LRU map value, valid for this program run.
            let entry = unsafe { &mut *entry };
            let passes = match way(entry, packet.direction) {
                Some(way) => passes_alone(entry, packet, config).map(|verdict| (way, verdict)),
                None => None,
            };
            let Some((way, verdict)) = passes else {
                return Known::Unsure;
            };
            flow::touch(entry, packet);
            *outcome = match way {
                // A reply passes as allowed, whatever its flow's first packet passed as.
                Reason::Reply => Outcome::new(Verdict::Allow, Reason::Reply, 0),
                _ => Outcome::new(verdict, Reason::Established, 0),
            };
            return Known::Passes;
        }
    }
    if flow::denied_again(packet, key, config) {
        Known::Denied
    } else {
        Known::New
    }
}

/// How a packet going in `direction` belongs to the tracked flow of `entry`: `Established`
/// when the flow's first packet went the same way, `Reply` when it went the other. `None`: the
/// entry's direction byte is neither, so the entry is not the probe's and vouches for nothing
/// (closed).
#[inline(always)]
fn way(entry: &CtEntry, direction: Direction) -> Option<Reason> {
    if entry.direction == direction as u8 {
        Some(Reason::Established)
    } else if entry.direction == direction.reverse() as u8 {
        Some(Reason::Reply)
    } else {
        None
    }
}

/// The verdict a tracked flow's packet passes with on its entry alone, before its endpoint is
/// looked up: the entry's, when the flow was decided under its endpoint's current revision,
/// has not expired, and its verdict is one that passes. `None`: the endpoint decides.
#[inline(always)]
fn passes_alone(entry: &CtEntry, packet: &Packet, config: &Config) -> Option<Verdict> {
    if current(entry.endpoint, entry.revision)
        && !expired(entry, packet.protocol, packet.now, config)
    {
        passing_verdict(entry)
    } else {
        None
    }
}

/// The verdict a tracked flow's packet passes with for `endpoint`, its own: the entry's, when
/// the entry is the endpoint's and has not expired, and the flow was decided under the
/// endpoint's current revision or passes when decided again now (its first packet went in
/// `direction`, to `dst_port`). `None`: the entry is to be forgotten (fail closed: an entry of
/// another endpoint, the address having changed hands on this interface, or whose verdict is
/// unknown or does not pass, is never passed on its word).
#[inline(always)]
fn passes_for(
    entry: &mut CtEntry,
    endpoint: &EndpointState,
    packet: &Packet,
    direction: Direction,
    dst_port: u16,
    config: &Config,
) -> Option<Verdict> {
    let current = entry.endpoint == endpoint.id
        && !expired(entry, packet.protocol, packet.now, config)
        && (entry.revision == endpoint.revision
            || redecide(entry, endpoint, packet, direction, dst_port));
    if current {
        passing_verdict(entry)
    } else {
        None
    }
}

/// Whether the endpoint `endpoint` is programmed with policy revision `revision` (never 0).
#[inline(always)]
pub fn current(endpoint: u32, revision: u64) -> bool {
    // An id past the array's end has no slot: decided with the endpoint's lookup.
    REVISIONS
        .get(endpoint)
        .is_some_and(|slot| revision != 0 && *slot == revision)
}

/// The endpoint of a pod-side address, read in place. Copying the key and the 32-byte value
/// out made the entry point's frame 32 bytes larger, which once took a call chain past the
/// 512-byte limit (the deepest now is the entry point and [`flow::deny`], 232 + 216 bytes).
#[inline(always)]
fn endpoint(addr: &Addr) -> Option<&'static EndpointState> {
    let ptr = ENDPOINTS.get_ptr(EndpointKey::of(&addr.0))?;
    // SAFETY: a pointer into the map value, valid for this program run, which holds the RCU
    // read lock. The map is not preallocated, so an update replaces the element and frees the
    // old one only after a grace period: the value read here is one consistent state that
    // does not change under the program (a preallocated element could be reused at once for
    // another endpoint).
    Some(unsafe { &*ptr })
}

/// Whether conntrack knows the packet's flow for `endpoint`, in this direction or as a reply;
/// if so, its verdict is written to `outcome`. `false` when the flow is new (or was forgotten
/// because current policy no longer allows it). For what [`known`] could not decide alone: a
/// flow decided under another revision (decided again here), and the first fragments and ICMP
/// errors it does not look at; never for a TCP SYN without ACK. A BPF function of its own: its
/// key, and a decision again, must not weigh on the entry point's stack frame. It returns a
/// plain `bool` because the BTF of a Rust `Option` return type is refused by the kernel.
#[inline(never)]
fn tracked(
    packet: &Packet,
    endpoint: &EndpointState,
    key: &FlowKey,
    config: &Config,
    outcome: &mut Outcome,
) -> bool {
    let tracked = Aligned(key.tracked());
    let tracked = &tracked.0;
    let Some(entry) = CONNTRACK.get_ptr_mut(tracked) else {
        return false;
    };
    // SAFETY: a pointer into the LRU map value, valid for this program run.
    let entry = unsafe { &mut *entry };
    let passes = match way(entry, packet.direction) {
        Some(Reason::Established) => passes_for(
            entry,
            endpoint,
            packet,
            packet.direction,
            key.dst_port,
            config,
        )
        .map(|verdict| Outcome::new(verdict, Reason::Established, 0)),
        // The flow's first packet went the other way: its destination port is this reply's
        // source port.
        Some(_) => passes_for(
            entry,
            endpoint,
            packet,
            packet.direction.reverse(),
            key.src_port,
            config,
        )
        .map(|_| Outcome::new(Verdict::Allow, Reason::Reply, 0)),
        None => None,
    };
    if let Some(passes) = passes {
        flow::touch(entry, packet);
        *outcome = passes;
        return true;
    }
    // Another endpoint's, expired, no longer allowed, or unreadable: forget it and decide the
    // packet as a new flow.
    let _ = CONNTRACK.remove(tracked);
    false
}

/// Whether the packet is a TCP SYN without ACK: it opens a connection and is never a reply.
#[inline(always)]
fn opens_connection(packet: &Packet) -> bool {
    packet.protocol == proto::TCP && packet.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
}

/// Whether an ICMP error quotes a packet of a flow conntrack tracks for this endpoint under its
/// current policy revision. The quoted packet travelled the other way than the error, as the
/// flow's first packet or as its reply: the flow's key for both directions finds it either way.
/// A BPF function of its own, for the stack.
#[inline(never)]
fn related(packet: &Packet, endpoint: &EndpointState, config: &Config) -> bool {
    let quoted = &packet.quoted;
    let as_quoted = FlowKey {
        ifindex: packet.ifindex,
        direction: packet.direction.reverse() as u8,
        protocol: quoted.protocol,
        _pad: [0; 2],
        src_addr: quoted.src.0,
        dst_addr: quoted.dst.0,
        src_port: quoted.src_port,
        dst_port: quoted.dst_port,
    };
    let key = Aligned(as_quoted.tracked());
    let key = &key.0;
    let Some(entry) = CONNTRACK.get_ptr(key) else {
        return false;
    };
    // SAFETY: a pointer into the LRU map value, copied out at once.
    let entry = unsafe { *entry };
    // Fail closed: an entry with an unreadable direction or verdict vouches for nothing.
    way(&entry, packet.direction).is_some()
        && entry.endpoint == endpoint.id
        && entry.revision == endpoint.revision
        && passing_verdict(&entry).is_some()
        && !expired(&entry, quoted.protocol, packet.now, config)
}

/// The verdict a tracked flow's packets pass with: its entry's, when that is a known verdict
/// that passes (allow, audit-deny). `None` for any other byte: the caller fails closed.
#[inline(always)]
fn passing_verdict(entry: &CtEntry) -> Option<Verdict> {
    Verdict::from_raw(entry.verdict).filter(|verdict| verdict.passes())
}

/// Decides a tracked flow of `packet` (its first packet went in `direction`, to `dst_port`)
/// again under the endpoint's current policy; on a pass the entry is brought to the current
/// revision. A BPF function of its own: it runs once per flow and revision, and its policy
/// lookups must not weigh on the entry point's stack frame.
#[inline(never)]
fn redecide(
    entry: &mut CtEntry,
    endpoint: &EndpointState,
    packet: &Packet,
    direction: Direction,
    dst_port: u16,
) -> bool {
    let (_, peer) = packet.ends();
    let outcome = policy(endpoint, direction, peer, packet.protocol, dst_port);
    if !outcome.verdict.passes() {
        return false;
    }
    entry.revision = endpoint.revision;
    entry.rule_id = outcome.rule_id;
    entry.reason = outcome.reason as u8;
    entry.verdict = outcome.verdict as u8;
    true
}

#[inline(always)]
fn expired(entry: &CtEntry, protocol: u8, now: u64, config: &Config) -> bool {
    let timeout = if protocol == proto::TCP {
        if entry.tcp_flags & TCP_FIN_RST != 0 {
            Config::CT_TCP_CLOSING_TIMEOUT_NS
        } else {
            or_default(config.ct_tcp_timeout_ns, Config::DEFAULT_CT_TCP_TIMEOUT_NS)
        }
    } else {
        or_default(
            config.ct_other_timeout_ns,
            Config::DEFAULT_CT_OTHER_TIMEOUT_NS,
        )
    };
    now.saturating_sub(entry.last_seen_ns) > timeout
}

#[inline(always)]
pub fn or_default(value: u64, default: u64) -> u64 {
    if value == 0 { default } else { value }
}

/// What the endpoint's policy says about a new flow with `peer` in `direction`.
#[inline(always)]
fn policy(
    endpoint: &EndpointState,
    direction: Direction,
    peer: &Addr,
    protocol: u8,
    dst_port: u16,
) -> Outcome {
    let isolated = endpoint.flags & endpoint_flags::isolated(direction) != 0;
    if !isolated && endpoint.flags & endpoint_flags::tiered(direction) == 0 {
        // Open on purpose: no policy selects the pod in this direction, and the API allows all.
        return Outcome::new(Verdict::Allow, Reason::NotSelected, 0);
    }
    let verdict = if endpoint.flags & endpoint_flags::audit(direction) != 0 {
        Verdict::AuditDeny
    } else {
        Verdict::Deny
    };
    // The Pass rule that sent the packet past its tier when no later rule decided: named by
    // a default allow.
    let mut passed = 0;
    if let Some(value) = rules(endpoint.set(direction), peer)
        && let Some(rule) = value.matching_rule(protocol, dst_port, &mut passed)
    {
        return match rule.action {
            port_action::ALLOW => Outcome::new(Verdict::Allow, Reason::AllowedByRule, rule.rule_id),
            // Fail closed: the peer is a ClusterIP and kube-proxy may pick a backend that
            // policy denies; only a Service whose every ready backend is allowed passes.
            port_action::DENY_SERVICE => {
                Outcome::new(verdict, Reason::ServiceBackendsDenied, rule.rule_id)
            }
            // Closed: a ClusterNetworkPolicy's Deny, enforced whatever the audit mode (a
            // cluster administrator's rule, not the namespace's). Fail closed: an action byte
            // this program does not know denies the same way.
            _ => Outcome::new(Verdict::Deny, Reason::DeniedByRule, rule.rule_id),
        };
    }
    if !isolated {
        // Open on purpose: only ClusterNetworkPolicies select the pod in this direction and
        // no rule of theirs decided; the API's default allows.
        return Outcome::new(Verdict::Allow, Reason::DefaultAllow, passed);
    }
    if direction == Direction::Ingress && NODE_ADDRS.get_ptr(EndpointKey::of(&peer.0)).is_some() {
        // Open on purpose: the NetworkPolicy API exempts the node's own traffic to its pods
        // (kubelet probes); the agent leaves the map empty when that is turned off. Looked up
        // only after no rule matched, so allowed flows do not pay for it.
        return Outcome::new(Verdict::Allow, Reason::FromNode, 0);
    }
    // Fail closed: isolated, and no rule allows the peer on this protocol and port.
    Outcome::new(verdict, Reason::IsolatedNoMatch, 0)
}

/// The rule set that policy set `set` applies to `peer` (steps (a) to (d) of the module doc,
/// but for the port match); `None` when it allows the peer nothing. The same lookups for both
/// directions: only the set differs.
#[inline(always)]
fn rules(set: u32, peer: &Addr) -> Option<&'static PolicyValue> {
    if set == 0 {
        // Fail closed: isolated without a policy set (the compiler gives one to every isolated
        // direction of a programmed endpoint); nothing can match.
        return None;
    }
    // The trie's key is the prefix length followed by the address: 20 bytes of stack, the
    // address copied once next to its length, at an 8-byte boundary (see `stack`).
    let key = OffWord::new(Key::new(FULL_PREFIX_LEN, PeerKey { addr: peer.0 }));
    // Fail closed: the trie always holds `::/0` and `::ffff:0:0/96`, so every address has an
    // identity; a miss anyway (a trie not written by the sync) matches no rule.
    let identity = *PEERS.get(&key.value)?;
    let mut key = PolicyKey {
        set,
        peer: identity.id,
    };
    let entry = match policy_entry(&key) {
        Some(entry) => entry,
        None if identity.fallback != 0 => {
            // A ClusterIP's own identity has entries only where its backends decide otherwise
            // than the addresses around it; elsewhere its fallback's entry applies.
            key.peer = identity.fallback;
            // Fail closed: no entry for the fallback either, so the set allows it nothing.
            policy_entry(&key)?
        }
        // Fail closed: no entry, so the set allows this identity nothing.
        None => return None,
    };
    if entry.ruleset == 0 {
        // Fail closed: rule set 0 is the empty set (it stops a ClusterIP's fallback). Never
        // read from the array, so that not even a stray write to index 0 could allow.
        return None;
    }
    // Fail closed: an id past the array's end (`None`) matches nothing.
    RULESETS.get(entry.ruleset)
}

/// The policy entry of `key`: the one place the policy map is looked up.
#[inline(always)]
fn policy_entry(key: &PolicyKey) -> Option<PolicyEntry> {
    let ptr = POLICY.get_ptr(key)?;
    // SAFETY: a pointer into the map value (4 bytes), copied out at once. The map is not
    // preallocated, so an element deleted meanwhile is freed only after an RCU grace period.
    Some(unsafe { *ptr })
}

#[inline(always)]
fn frag_key(packet: &Packet, endpoint: &EndpointState, id: u32) -> FragKey {
    FragKey {
        endpoint: endpoint.id,
        direction: packet.direction as u8,
        protocol: packet.protocol,
        _pad: [0; 2],
        id,
        src_addr: packet.src.0,
        dst_addr: packet.dst.0,
    }
}

/// A first fragment's verdict, kept for the fragments that follow it.
#[inline(always)]
fn remember_fragment(packet: &Packet, endpoint: &EndpointState, outcome: &Outcome) {
    if let Fragment::First { id } = packet.fragment {
        remember_first_fragment(packet, endpoint, id, outcome);
    }
}

/// A BPF function of its own: inlined, its key kept a copy of the addresses alive across the
/// decision of every packet, fragmented or not.
#[inline(never)]
fn remember_first_fragment(packet: &Packet, endpoint: &EndpointState, id: u32, outcome: &Outcome) {
    flow::remember_fragment(&OffWord::new(frag_key(packet, endpoint, id)).value, outcome);
}

/// Whether a fragment after the first passes: on the first fragment's verdict, written to
/// `outcome`, without an event of its own. A BPF function of its own, for the stack: its key
/// stays off the entry point's frame, and the denial is recorded from there ([`decide_ip`]), so
/// that no call chain holds this frame and [`flow::deny`]'s at once.
#[inline(never)]
fn later_fragment(
    packet: &Packet,
    endpoint: &EndpointState,
    id: u32,
    outcome: &mut Outcome,
) -> bool {
    let key = OffWord::new(frag_key(packet, endpoint, id));
    let key = &key.value;
    // Fail closed: no first fragment seen, so the ports are unknown.
    let Some(entry) = FRAGS.get_ptr(key) else {
        return false;
    };
    // SAFETY: a pointer into the LRU map value, copied out at once.
    let entry = unsafe { *entry };
    match (
        Verdict::from_raw(entry.verdict),
        Reason::from_raw(entry.reason),
    ) {
        (Some(verdict), Some(reason)) if verdict.passes() => {
            *outcome = Outcome::new(verdict, reason, entry.rule_id);
            true
        }
        // Fail closed: the first fragment was denied, or its entry's verdict or reason is
        // unreadable (an entry this program did not write).
        _ => false,
    }
}
