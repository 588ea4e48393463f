//! DNS messages (RFC 1035), just enough for the lab's kube-dns and its client: no crate,
//! every length checked.
//!
//! Server side: a datagram goes into [`Zone::answer`], which parses the header and the one
//! question, looks the name up among the lab's Service names and encodes the reply (an A
//! record, NODATA, NXDOMAIN, or FORMERR/NOTIMP/REFUSED for what it cannot or will not answer).
//! Datagrams too short to carry a header, and responses, get no reply at all.
//!
//! Client side: [`encode_query`] builds an A query, [`parse_response`] checks that the reply
//! answers it (id, question) and extracts the addresses.
//!
//! The lab has no kube-proxy and no ClusterIPs: a Service name resolves straight to its pod's
//! address, as for a headless Service.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

/// Resource record type A (an IPv4 address).
pub const TYPE_A: u16 = 1;
/// QTYPE `*`: every type.
pub const TYPE_ANY: u16 = 255;
/// Class IN (the Internet).
pub const CLASS_IN: u16 = 1;
/// QCLASS `*`: every class.
pub const CLASS_ANY: u16 = 255;
/// TTL of every answer, seconds (the CoreDNS kubernetes plugin's default).
pub const ANSWER_TTL: u32 = 5;
/// The cluster's DNS domain.
pub const CLUSTER_DOMAIN: &str = "cluster.local";

/// Length of the fixed message header.
const HEADER_LEN: usize = 12;
/// Longest label (RFC 1035 §2.3.4).
const MAX_LABEL_LEN: usize = 63;
/// Longest name in wire form, length bytes and root included (RFC 1035 §2.3.4).
const MAX_NAME_WIRE_LEN: usize = 255;

/// Header flag bits.
mod flags {
    pub const QR: u16 = 0x8000;
    pub const AA: u16 = 0x0400;
    pub const RD: u16 = 0x0100;
    pub const OPCODE_SHIFT: u16 = 11;
    pub const OPCODE_MASK: u16 = 0xf;
    pub const RCODE_MASK: u16 = 0xf;
}

/// Response codes (RFC 1035 §4.1.1).
pub mod rcode {
    /// No error.
    pub const NOERROR: u8 = 0;
    /// The query could not be interpreted.
    pub const FORMERR: u8 = 1;
    /// The server failed.
    pub const SERVFAIL: u8 = 2;
    /// The name does not exist.
    pub const NXDOMAIN: u8 = 3;
    /// The kind of query is not implemented.
    pub const NOTIMP: u8 = 4;
    /// The server refuses to answer.
    pub const REFUSED: u8 = 5;
}

/// What is wrong with a DNS message or a name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DnsError {
    /// The message ends before the named part is complete.
    #[error("message truncated inside the {0}")]
    Truncated(&'static str),
    /// A label longer than 63 bytes.
    #[error("label of {0} bytes (at most 63)")]
    LabelTooLong(usize),
    /// A name longer than 255 bytes in wire form.
    #[error("name longer than 255 bytes")]
    NameTooLong,
    /// A label type other than a length or a compression pointer.
    #[error("reserved label type {0:#04x}")]
    ReservedLabelType(u8),
    /// A compression pointer that does not point before every earlier one (it could loop).
    #[error("compression pointer to offset {0} does not point backwards")]
    BadPointer(usize),
    /// A name to encode with an empty label (`a..b`, or a leading dot).
    #[error("name {0:?} has an empty label")]
    EmptyLabel(String),
    /// A message that should be a response is a query.
    #[error("message is not a response")]
    NotAResponse,
    /// A response to another query.
    #[error("response id {got:#06x} does not match query id {expected:#06x}")]
    IdMismatch {
        /// Id of the query.
        expected: u16,
        /// Id of the response.
        got: u16,
    },
    /// A response whose question is not the one asked.
    #[error("response answers {got:?}, not {expected:?}")]
    QuestionMismatch {
        /// Name asked for.
        expected: String,
        /// Name the response's question carries.
        got: String,
    },
    /// Not exactly one question.
    #[error("{0} questions (exactly one expected)")]
    QuestionCount(u16),
}

/// The fixed header of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Query id, echoed by the response.
    pub id: u16,
    /// QR, opcode, AA, TC, RD, RA, Z and rcode.
    pub flags: u16,
    /// Number of questions.
    pub qdcount: u16,
    /// Number of answer records.
    pub ancount: u16,
    /// Number of authority records.
    pub nscount: u16,
    /// Number of additional records.
    pub arcount: u16,
}

impl Header {
    /// Parses the first 12 bytes of `msg`.
    pub fn parse(msg: &[u8]) -> Result<Self, DnsError> {
        if msg.len() < HEADER_LEN {
            return Err(DnsError::Truncated("header"));
        }
        let field = |i: usize| u16::from_be_bytes([msg[2 * i], msg[2 * i + 1]]);
        Ok(Self {
            id: field(0),
            flags: field(1),
            qdcount: field(2),
            ancount: field(3),
            nscount: field(4),
            arcount: field(5),
        })
    }

    /// Whether the message is a response.
    pub fn is_response(&self) -> bool {
        self.flags & flags::QR != 0
    }

    /// The opcode (0 for a standard query).
    pub fn opcode(&self) -> u8 {
        ((self.flags >> flags::OPCODE_SHIFT) & flags::OPCODE_MASK) as u8
    }

    /// The response code.
    pub fn rcode(&self) -> u8 {
        (self.flags & flags::RCODE_MASK) as u8
    }

    fn encode(&self, out: &mut Vec<u8>) {
        for field in [
            self.id,
            self.flags,
            self.qdcount,
            self.ancount,
            self.nscount,
            self.arcount,
        ] {
            out.extend_from_slice(&field.to_be_bytes());
        }
    }
}

/// One question: a name, a type and a class.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Question {
    /// The name's labels, as received (case preserved).
    pub labels: Vec<Vec<u8>>,
    /// QTYPE.
    pub qtype: u16,
    /// QCLASS.
    pub qclass: u16,
}

impl Question {
    /// The name in lower case, dotted, without the root's trailing dot; `None` when a label
    /// holds anything but letters, digits, `-` and `_` (no such name is in any zone).
    pub fn hostname(&self) -> Option<String> {
        let host_byte = |b: &u8| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_';
        let mut labels = Vec::with_capacity(self.labels.len());
        for label in &self.labels {
            if !label.iter().all(host_byte) {
                return None;
            }
            labels.push(String::from_utf8_lossy(label).to_ascii_lowercase());
        }
        Some(labels.join("."))
    }

    fn encode(&self, out: &mut Vec<u8>) {
        for label in &self.labels {
            out.push(label.len() as u8);
            out.extend_from_slice(label);
        }
        out.push(0);
        out.extend_from_slice(&self.qtype.to_be_bytes());
        out.extend_from_slice(&self.qclass.to_be_bytes());
    }
}

/// The answer to a query, as the client sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    /// The name exists; its A records (none when it has no IPv4 address).
    Addresses(Vec<Ipv4Addr>),
    /// NXDOMAIN: the name does not exist.
    NoSuchName,
    /// Another error response code.
    Failed {
        /// The response code.
        rcode: u8,
    },
}

/// An A query for `name` (dotted; a trailing dot is allowed) with id `id`, recursion desired.
pub fn encode_query(id: u16, name: &str) -> Result<Vec<u8>, DnsError> {
    let labels = name_labels(name)?;
    let mut out = Vec::with_capacity(HEADER_LEN + name.len() + 6);
    Header {
        id,
        flags: flags::RD,
        qdcount: 1,
        ancount: 0,
        nscount: 0,
        arcount: 0,
    }
    .encode(&mut out);
    Question {
        labels,
        qtype: TYPE_A,
        qclass: CLASS_IN,
    }
    .encode(&mut out);
    Ok(out)
}

/// Checks that `msg` answers the A query with id `id` for `name`, and extracts its result.
///
/// Records of other types or classes (a CNAME, say) are skipped; only A records of class IN
/// with a 4-byte address count.
pub fn parse_response(msg: &[u8], id: u16, name: &str) -> Result<Resolution, DnsError> {
    let header = Header::parse(msg)?;
    if !header.is_response() {
        return Err(DnsError::NotAResponse);
    }
    if header.id != id {
        return Err(DnsError::IdMismatch {
            expected: id,
            got: header.id,
        });
    }
    if header.qdcount != 1 {
        return Err(DnsError::QuestionCount(header.qdcount));
    }
    let (question, mut pos) = read_question(msg, HEADER_LEN)?;
    let asked = name.trim_end_matches('.').to_ascii_lowercase();
    let got = question.hostname().unwrap_or_default();
    if got != asked {
        return Err(DnsError::QuestionMismatch {
            expected: asked,
            got,
        });
    }
    match header.rcode() {
        rcode::NOERROR => {}
        rcode::NXDOMAIN => return Ok(Resolution::NoSuchName),
        rcode => return Ok(Resolution::Failed { rcode }),
    }
    let mut addresses = Vec::new();
    for _ in 0..header.ancount {
        let (_, after_name) = read_name(msg, pos)?;
        let fixed = msg
            .get(after_name..after_name + 10)
            .ok_or(DnsError::Truncated("answer record"))?;
        let rtype = u16::from_be_bytes([fixed[0], fixed[1]]);
        let class = u16::from_be_bytes([fixed[2], fixed[3]]);
        let rdlength = usize::from(u16::from_be_bytes([fixed[8], fixed[9]]));
        let rdata_start = after_name + 10;
        let rdata = msg
            .get(rdata_start..rdata_start + rdlength)
            .ok_or(DnsError::Truncated("answer data"))?;
        if rtype == TYPE_A
            && class == CLASS_IN
            && let Ok(octets) = <[u8; 4]>::try_from(rdata)
        {
            addresses.push(Ipv4Addr::from(octets));
        }
        pos = rdata_start + rdlength;
    }
    Ok(Resolution::Addresses(addresses))
}

/// The names kube-dns answers, each with its pod's address.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Zone {
    records: BTreeMap<String, Ipv4Addr>,
}

/// A name that two Services would answer with different addresses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("DNS name {name} would resolve to both {existing} and {new}")]
pub struct ZoneConflict {
    /// The name.
    pub name: String,
    /// The address already recorded.
    pub existing: Ipv4Addr,
    /// The address that was to be added.
    pub new: Ipv4Addr,
}

impl Zone {
    /// An empty zone.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds Service `namespace/name` at `addr` under every name a pod can use for it: `name`,
    /// `name.namespace`, `name.namespace.svc` and `name.namespace.svc.cluster.local`.
    ///
    /// The bare `name` is answered from every namespace (the lab has a single search path), so
    /// two Services of one name in two namespaces conflict unless they share the address.
    pub fn insert_service(
        &mut self,
        namespace: &str,
        name: &str,
        addr: Ipv4Addr,
    ) -> Result<(), ZoneConflict> {
        let forms = [
            name.to_string(),
            format!("{name}.{namespace}"),
            format!("{name}.{namespace}.svc"),
            format!("{name}.{namespace}.svc.{CLUSTER_DOMAIN}"),
        ];
        for form in &forms {
            let form = form.to_ascii_lowercase();
            if let Some(&existing) = self.records.get(&form)
                && existing != addr
            {
                return Err(ZoneConflict {
                    name: form,
                    existing,
                    new: addr,
                });
            }
        }
        for form in forms {
            self.records.insert(form.to_ascii_lowercase(), addr);
        }
        Ok(())
    }

    /// The address of `hostname` (lower case, no trailing dot), if the zone has it.
    pub fn lookup(&self, hostname: &str) -> Option<Ipv4Addr> {
        self.records.get(hostname).copied()
    }

    /// The reply to the datagram `msg`, or `None` when it deserves none (shorter than a header,
    /// or itself a response).
    pub fn answer(&self, msg: &[u8]) -> Option<Vec<u8>> {
        let header = Header::parse(msg).ok()?;
        if header.is_response() {
            return None;
        }
        let recursion_desired = header.flags & flags::RD != 0;
        let reply = |rcode: u8, question: Option<&Question>, answer: Option<Ipv4Addr>| {
            encode_reply(header.id, recursion_desired, rcode, question, answer)
        };
        if header.opcode() != 0 {
            return Some(reply(rcode::NOTIMP, None, None));
        }
        if header.qdcount != 1 {
            return Some(reply(rcode::FORMERR, None, None));
        }
        let Ok((question, _)) = read_question(msg, HEADER_LEN) else {
            return Some(reply(rcode::FORMERR, None, None));
        };
        if question.qclass != CLASS_IN && question.qclass != CLASS_ANY {
            return Some(reply(rcode::REFUSED, Some(&question), None));
        }
        let found = question.hostname().and_then(|name| self.lookup(&name));
        Some(match found {
            None => reply(rcode::NXDOMAIN, Some(&question), None),
            Some(addr) if matches!(question.qtype, TYPE_A | TYPE_ANY) => {
                reply(rcode::NOERROR, Some(&question), Some(addr))
            }
            Some(_) => reply(rcode::NOERROR, Some(&question), None),
        })
    }
}

/// An authoritative reply: the question echoed (when there is one) and at most one A record,
/// whose name points back at the question's.
fn encode_reply(
    id: u16,
    recursion_desired: bool,
    rcode: u8,
    question: Option<&Question>,
    answer: Option<Ipv4Addr>,
) -> Vec<u8> {
    let mut flag_bits = flags::QR | flags::AA | u16::from(rcode);
    if recursion_desired {
        flag_bits |= flags::RD;
    }
    let mut out = Vec::with_capacity(512);
    Header {
        id,
        flags: flag_bits,
        qdcount: u16::from(question.is_some()),
        ancount: u16::from(question.is_some() && answer.is_some()),
        nscount: 0,
        arcount: 0,
    }
    .encode(&mut out);
    if let Some(question) = question {
        question.encode(&mut out);
        if let Some(addr) = answer {
            let name_pointer = 0xc000 | HEADER_LEN as u16;
            out.extend_from_slice(&name_pointer.to_be_bytes());
            out.extend_from_slice(&TYPE_A.to_be_bytes());
            out.extend_from_slice(&CLASS_IN.to_be_bytes());
            out.extend_from_slice(&ANSWER_TTL.to_be_bytes());
            out.extend_from_slice(&4u16.to_be_bytes());
            out.extend_from_slice(&addr.octets());
        }
    }
    out
}

/// The labels of a dotted name, checked against the wire-form limits.
fn name_labels(name: &str) -> Result<Vec<Vec<u8>>, DnsError> {
    let trimmed = name.strip_suffix('.').unwrap_or(name);
    if trimmed.is_empty() {
        return Err(DnsError::EmptyLabel(name.to_string()));
    }
    let mut wire_len = 1;
    let mut labels = Vec::new();
    for label in trimmed.split('.') {
        if label.is_empty() {
            return Err(DnsError::EmptyLabel(name.to_string()));
        }
        if label.len() > MAX_LABEL_LEN {
            return Err(DnsError::LabelTooLong(label.len()));
        }
        wire_len += label.len() + 1;
        if wire_len > MAX_NAME_WIRE_LEN {
            return Err(DnsError::NameTooLong);
        }
        labels.push(label.as_bytes().to_vec());
    }
    Ok(labels)
}

/// Reads a question at `start`; returns it and the offset after it.
fn read_question(msg: &[u8], start: usize) -> Result<(Question, usize), DnsError> {
    let (labels, pos) = read_name(msg, start)?;
    let fixed = msg
        .get(pos..pos + 4)
        .ok_or(DnsError::Truncated("question"))?;
    let question = Question {
        labels,
        qtype: u16::from_be_bytes([fixed[0], fixed[1]]),
        qclass: u16::from_be_bytes([fixed[2], fixed[3]]),
    };
    Ok((question, pos + 4))
}

/// Reads a possibly compressed name at `start`; returns its labels and the offset after the
/// name where it starts (after the first pointer, if any).
///
/// Every pointer must point before the previous one (before the first pointer itself, for the
/// first), so reading always ends; the wire length is bounded by 255 bytes across pointers.
fn read_name(msg: &[u8], start: usize) -> Result<(Vec<Vec<u8>>, usize), DnsError> {
    let mut labels = Vec::new();
    let mut pos = start;
    let mut end = None;
    let mut pointer_limit = usize::MAX;
    let mut wire_len = 1;
    loop {
        let len_byte = *msg.get(pos).ok_or(DnsError::Truncated("name"))?;
        match len_byte & 0xc0 {
            0x00 => {
                let len = usize::from(len_byte);
                if len == 0 {
                    return Ok((labels, end.unwrap_or(pos + 1)));
                }
                wire_len += len + 1;
                if wire_len > MAX_NAME_WIRE_LEN {
                    return Err(DnsError::NameTooLong);
                }
                let label = msg
                    .get(pos + 1..pos + 1 + len)
                    .ok_or(DnsError::Truncated("name"))?;
                labels.push(label.to_vec());
                pos += 1 + len;
            }
            0xc0 => {
                let low = *msg.get(pos + 1).ok_or(DnsError::Truncated("name"))?;
                let target = usize::from(len_byte & 0x3f) << 8 | usize::from(low);
                if target >= pointer_limit.min(pos) {
                    return Err(DnsError::BadPointer(target));
                }
                end.get_or_insert(pos + 2);
                pointer_limit = target;
                pos = target;
            }
            other => return Err(DnsError::ReservedLabelType(other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zone() -> Zone {
        let mut zone = Zone::new();
        zone.insert_service("default", "nginx", Ipv4Addr::new(198, 18, 0, 20))
            .unwrap();
        zone.insert_service("kube-system", "kube-dns", Ipv4Addr::new(198, 18, 0, 10))
            .unwrap();
        zone
    }

    fn resolve(zone: &Zone, name: &str) -> Resolution {
        let query = encode_query(0x1234, name).unwrap();
        let reply = zone.answer(&query).expect("a reply");
        parse_response(&reply, 0x1234, name).unwrap()
    }

    #[test]
    fn every_service_form_resolves_and_others_do_not() {
        let zone = zone();
        let nginx = Resolution::Addresses(vec![Ipv4Addr::new(198, 18, 0, 20)]);
        for name in [
            "nginx",
            "nginx.default",
            "nginx.default.svc",
            "nginx.default.svc.cluster.local",
            "nginx.default.svc.cluster.local.",
            "NGINX.Default.SVC",
        ] {
            assert_eq!(resolve(&zone, name), nginx, "{name}");
        }
        assert_eq!(
            resolve(&zone, "kube-dns.kube-system.svc.cluster.local"),
            Resolution::Addresses(vec![Ipv4Addr::new(198, 18, 0, 10)])
        );
        for name in [
            "httpd",
            "nginx.kube-system",
            "nginx.default.svc.cluster",
            "x.nginx",
        ] {
            assert_eq!(resolve(&zone, name), Resolution::NoSuchName, "{name}");
        }
    }

    #[test]
    fn reply_layout_is_an_authoritative_a_record() {
        let query = encode_query(0xbeef, "nginx").unwrap();
        let reply = zone().answer(&query).unwrap();
        let header = Header::parse(&reply).unwrap();
        assert_eq!(header.id, 0xbeef);
        assert!(header.is_response());
        assert_eq!(header.flags & flags::AA, flags::AA);
        assert_eq!(header.flags & flags::RD, flags::RD);
        assert_eq!((header.qdcount, header.ancount), (1, 1));
        // Header, question (7 name bytes + type + class), answer (pointer, fixed part, address).
        assert_eq!(reply.len(), 12 + 7 + 4 + 2 + 10 + 4);
        assert_eq!(&reply[12 + 11..12 + 13], &[0xc0, 0x0c]);
        assert_eq!(&reply[reply.len() - 4..], &[198, 18, 0, 20]);
    }

    #[test]
    fn other_types_get_nodata() {
        let mut query = encode_query(7, "nginx").unwrap();
        let qtype_at = query.len() - 4;
        query[qtype_at..qtype_at + 2].copy_from_slice(&28u16.to_be_bytes());
        let reply = zone().answer(&query).unwrap();
        let header = Header::parse(&reply).unwrap();
        assert_eq!((header.rcode(), header.ancount), (rcode::NOERROR, 0));
    }

    #[test]
    fn malformed_queries_are_answered_or_dropped_never_panicking() {
        let zone = zone();
        let good = encode_query(9, "nginx.default").unwrap();
        // Every truncation: short of a header → no reply; otherwise FORMERR.
        for len in 0..good.len() {
            let reply = zone.answer(&good[..len]);
            if len < HEADER_LEN {
                assert_eq!(reply, None, "len {len}");
            } else {
                let header = Header::parse(&reply.unwrap()).unwrap();
                assert_eq!(header.rcode(), rcode::FORMERR, "len {len}");
                assert_eq!(header.id, 9);
            }
        }
        let rcode_of = |msg: &[u8]| Header::parse(&zone.answer(msg).unwrap()).unwrap().rcode();
        let mut two_questions = good.clone();
        two_questions[5] = 2;
        assert_eq!(rcode_of(&two_questions), rcode::FORMERR);
        let mut no_question = good.clone();
        no_question[5] = 0;
        assert_eq!(rcode_of(&no_question), rcode::FORMERR);
        let mut status_opcode = good.clone();
        status_opcode[2] |= 2 << 3;
        assert_eq!(rcode_of(&status_opcode), rcode::NOTIMP);
        let mut chaos = good.clone();
        let class_at = chaos.len() - 2;
        chaos[class_at..].copy_from_slice(&3u16.to_be_bytes());
        assert_eq!(rcode_of(&chaos), rcode::REFUSED);
        let mut reserved = good.clone();
        reserved[12] = 0x45;
        assert_eq!(rcode_of(&reserved), rcode::FORMERR);
        // A pointer to itself is refused; one into the header reads the header's bytes as a
        // name (here the root: the id's high byte is 0) and ends.
        let mut self_pointer = good[..12].to_vec();
        self_pointer.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
        assert_eq!(rcode_of(&self_pointer), rcode::FORMERR);
        let mut into_header = good[..12].to_vec();
        into_header.extend_from_slice(&[0xc0, 0, 0, 1, 0, 1]);
        assert_eq!(rcode_of(&into_header), rcode::NXDOMAIN);
        let mut binary = good[..12].to_vec();
        binary.extend_from_slice(&[3, 0xff, b'.', 0, 0, 0, 1, 0, 1]);
        assert_eq!(rcode_of(&binary), rcode::NXDOMAIN);
        let mut response = good.clone();
        response[2] |= 0x80;
        assert_eq!(zone.answer(&response), None);
    }

    #[test]
    fn pseudo_random_garbage_never_panics() {
        let zone = zone();
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        for _ in 0..20_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let len = (state % 64) as usize;
            let msg: Vec<u8> = (0..len)
                .map(|i| (state.rotate_left(i as u32 * 5) & 0xff) as u8)
                .collect();
            if let Some(reply) = zone.answer(&msg) {
                assert!(Header::parse(&reply).unwrap().is_response());
            }
            let _ = parse_response(&msg, 0, "nginx");
        }
    }

    #[test]
    fn names_are_checked_when_encoding() {
        assert_eq!(
            encode_query(1, "a..b"),
            Err(DnsError::EmptyLabel("a..b".into()))
        );
        assert_eq!(
            encode_query(1, ""),
            Err(DnsError::EmptyLabel(String::new()))
        );
        assert_eq!(
            encode_query(1, &"x".repeat(64)),
            Err(DnsError::LabelTooLong(64))
        );
        let long = vec!["y".repeat(63); 4].join(".");
        assert_eq!(encode_query(1, &long), Err(DnsError::NameTooLong));
    }

    #[test]
    fn responses_are_matched_to_their_query() {
        let zone = zone();
        let reply = zone.answer(&encode_query(5, "nginx").unwrap()).unwrap();
        assert_eq!(
            parse_response(&reply, 6, "nginx"),
            Err(DnsError::IdMismatch {
                expected: 6,
                got: 5
            })
        );
        assert!(matches!(
            parse_response(&reply, 5, "httpd"),
            Err(DnsError::QuestionMismatch { .. })
        ));
        let query = encode_query(5, "nginx").unwrap();
        assert_eq!(
            parse_response(&query, 5, "nginx"),
            Err(DnsError::NotAResponse)
        );
        let mut servfail = reply.clone();
        servfail[3] = (servfail[3] & 0xf0) | rcode::SERVFAIL;
        assert_eq!(
            parse_response(&servfail, 5, "nginx"),
            Ok(Resolution::Failed {
                rcode: rcode::SERVFAIL
            })
        );
        for len in HEADER_LEN..reply.len() {
            assert!(
                parse_response(&reply[..len], 5, "nginx").is_err(),
                "len {len}"
            );
        }
    }

    #[test]
    fn compressed_answers_and_other_records_are_read() {
        // A CNAME (skipped) whose target is compressed, then the A record.
        let query = encode_query(3, "web").unwrap();
        let mut msg = query.clone();
        msg[2] |= 0x80;
        msg[7] = 2;
        msg.extend_from_slice(&[0xc0, 12, 0, 5, 0, 1, 0, 0, 0, 5, 0, 2, 0xc0, 12]);
        msg.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 5, 0, 4, 198, 18, 0, 7]);
        assert_eq!(
            parse_response(&msg, 3, "web"),
            Ok(Resolution::Addresses(vec![Ipv4Addr::new(198, 18, 0, 7)]))
        );
    }

    #[test]
    fn conflicting_services_are_refused() {
        let mut zone = zone();
        let err = zone
            .insert_service("other", "nginx", Ipv4Addr::new(198, 18, 0, 99))
            .unwrap_err();
        assert_eq!(err.name, "nginx");
        assert_eq!(
            zone.lookup("nginx.other"),
            None,
            "a refused Service adds no name"
        );
    }
}
