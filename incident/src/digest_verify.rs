//! `tollgate digest verify`: the flow log checked against the nodes' signed digest chains,
//! offline.
//!
//! [`verify`] lists the whole flow log once ([`Reader::list_all`]), reads every digest under
//! `_digests/` and then, for the digests whose span meets the window (with two hours of
//! margin either side, since a digest seals objects up to an interval after their records):
//! 1. each signature, against the trusted keys (`--public-key`, `--kms-key`), or without them
//!    against the key the node's first digest carries — a digest of the node signed by another
//!    key is then a problem too;
//! 2. the chain: each digest's `previous` must exist, hash to what it says, and be the
//!    previous of no other digest; a chain that starts anew says why (a note, not a problem);
//! 3. each object a digest lists: present, of its size and SHA-256 (an object holding the
//!    bytes another listed object should have is named as swapped or copied) — Amazon Security
//!    Lake objects (keys under `ext/`) in the Security Lake location when one is given
//!    (`--security-lake`), else in the flow log;
//! 4. the flow log's objects in the window's partitions that no digest lists (extra objects;
//!    the isolation records `tollgate quarantine` writes are not the collector's and are only
//!    counted);
//! 5. the sequence numbers of each node's chain: every number between the first and the last
//!    belongs to an object or to a lost-sequence record (a file the collector gave up, with
//!    its loss source).
//!
//! Every finding is one line of [`Report::problems`]; an empty list is the only pass.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use tollgate_collector::{
    digest::{DIGEST_ROOT, Signed},
    readback::parse_since,
    sign::fingerprint,
    writer::SECURITY_LAKE_ROOT,
};

use crate::source::{Reader, SourceError};

/// Seconds of margin around the window when choosing digests.
const DIGEST_MARGIN_S: u64 = 2 * 3600;

/// What to check.
#[derive(Debug, Clone, Default)]
pub struct Request {
    /// Window start (Unix s); the whole flow log when absent.
    pub from_s: Option<u64>,
    /// Window end (Unix s, exclusive).
    pub to_s: Option<u64>,
    /// Trusted public keys (DER SubjectPublicKeyInfo); empty: each node's first digest's.
    pub trusted: Vec<Vec<u8>>,
}

/// What [`verify`] found.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// One line per problem; empty when everything holds.
    pub problems: Vec<String>,
    /// Facts worth saying that are no problem (a chain restarted, isolation records).
    pub notes: Vec<String>,
    /// Digests checked.
    pub digests: usize,
    /// Nodes whose chains were checked.
    pub nodes: usize,
    /// Objects checked against their digests.
    pub objects: usize,
}

/// A digest as read.
struct Read {
    key: String,
    signed: Signed,
    sha256: String,
}

impl Request {
    fn digest_in_window(&self, signed: &Signed) -> bool {
        let document = &signed.document;
        let after = self
            .from_s
            .is_none_or(|from| document.to_s + DIGEST_MARGIN_S >= from);
        let before = self
            .to_s
            .is_none_or(|to| document.from_s < to + DIGEST_MARGIN_S);
        after && before
    }

    /// Whether the flow-log object `key` is in a partition the window reaches (the hour
    /// before `from` included, as evidence bundles read).
    fn object_in_window(&self, key: &str) -> bool {
        let Some(hour_s) = partition_start(key) else {
            return true;
        };
        let after = self.from_s.is_none_or(|from| hour_s + 7200 > from);
        let before = self.to_s.is_none_or(|to| hour_s < to);
        after && before
    }
}

/// The start (Unix s) of the `dt=…/hour=…` partition of a flow-log key.
fn partition_start(key: &str) -> Option<u64> {
    let mut parts = key.split('/');
    let _cluster = parts.next()?.strip_prefix("cluster=")?;
    let day = parts.next()?.strip_prefix("dt=")?;
    let hour = parts.next()?.strip_prefix("hour=")?;
    parse_since(&format!("{day}T{hour}:00:00Z"), 0)
}

fn is_flow_object(key: &str) -> bool {
    key.starts_with("cluster=") && key.ends_with(".parquet")
}

fn is_isolation_record(key: &str) -> bool {
    key.rsplit('/')
        .next()
        .is_some_and(|name| name.starts_with("isolation-"))
}

/// Checks the flow log `reader` reads, and the Security Lake objects `security_lake` reads
/// (the flow log's own reader when `None`), against the flow log's digests. Fails only when
/// the flow log cannot be listed; every object or digest that cannot be read is a problem line.
#[tracing::instrument(skip_all)]
pub async fn verify(
    reader: &Reader,
    security_lake: Option<&Reader>,
    request: &Request,
) -> Result<Report, SourceError> {
    let mut report = Report::default();
    let names = reader.list_all("").await?;
    let mut digests: Vec<Read> = Vec::new();
    let mut flow_objects: BTreeSet<String> = BTreeSet::new();
    for name in &names {
        let key = reader.relative(name);
        if key.starts_with(&format!("{DIGEST_ROOT}/")) && key.ends_with(".json") {
            match reader.fetch(name).await {
                Ok((object, bytes)) => match Signed::parse(&bytes) {
                    Ok(signed) => {
                        if signed.document.key() != key {
                            report.problems.push(format!(
                                "misplaced digest {key}: its body names it {}",
                                signed.document.key()
                            ));
                        }
                        digests.push(Read {
                            key,
                            signed,
                            sha256: object.sha256,
                        });
                    }
                    Err(error) => report
                        .problems
                        .push(format!("unreadable digest {key}: {error}")),
                },
                Err(error) => report
                    .problems
                    .push(format!("unreadable digest {key}: {}", error.reason())),
            }
        } else if is_flow_object(&key) {
            flow_objects.insert(key);
        }
    }
    check_signatures(&digests, request, &mut report);
    check_chains(&digests, &mut report);
    let listed = check_objects(reader, security_lake, &digests, request, &mut report).await;
    let mut isolation_records = 0;
    for key in flow_objects
        .iter()
        .filter(|key| request.object_in_window(key) && !listed.contains(*key))
    {
        if is_isolation_record(key) {
            isolation_records += 1;
        } else {
            report
                .problems
                .push(format!("extra object {key}: in no digest"));
        }
    }
    if isolation_records > 0 {
        report.notes.push(format!(
            "{isolation_records} isolation records (written by `tollgate quarantine`, not by a \
             collector) are in no digest"
        ));
    }
    check_sequences(&digests, request, &mut report);
    report.digests = digests
        .iter()
        .filter(|d| request.digest_in_window(&d.signed))
        .count();
    report.nodes = digests
        .iter()
        .map(|d| (&d.signed.document.cluster, &d.signed.document.node))
        .collect::<BTreeSet<_>>()
        .len();
    Ok(report)
}

/// Each digest of the window against the trusted keys, or its node's first digest's key.
fn check_signatures(digests: &[Read], request: &Request, report: &mut Report) {
    let mut first_key: HashMap<(&str, &str), Vec<u8>> = HashMap::new();
    let mut ordered: Vec<&Read> = digests.iter().collect();
    ordered.sort_by_key(|d| (d.signed.document.to_s, d.signed.document.number));
    if request.trusted.is_empty() && !digests.is_empty() {
        report.notes.push(
            "no --public-key or --kms-key: each node's chain is checked against the key its \
             first digest carries"
                .to_owned(),
        );
    }
    for digest in ordered {
        let document = &digest.signed.document;
        let embedded = match digest.signed.public_key() {
            Ok(key) => key,
            Err(error) => {
                report
                    .problems
                    .push(format!("bad signature on digest {}: {error}", digest.key));
                continue;
            }
        };
        let node = (document.cluster.as_str(), document.node.as_str());
        let first = first_key.entry(node).or_insert_with(|| embedded.clone());
        if !request.digest_in_window(&digest.signed) {
            continue;
        }
        let trusted: Vec<&Vec<u8>> = if request.trusted.is_empty() {
            vec![&*first]
        } else {
            request.trusted.iter().collect()
        };
        if !trusted
            .iter()
            .any(|key| digest.signed.check_signature(key).is_ok())
        {
            let names: Vec<String> = trusted.iter().map(|k| fingerprint(k)).collect();
            report.problems.push(format!(
                "bad signature on digest {}: not signed by {} (it names {})",
                digest.key,
                names.join(" or "),
                fingerprint(&embedded)
            ));
        }
    }
}

/// Links: every `previous` present, unchanged, and nobody else's previous.
fn check_chains(digests: &[Read], report: &mut Report) {
    let by_key: HashMap<&str, &Read> = digests.iter().map(|d| (d.key.as_str(), d)).collect();
    let mut successors: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for digest in digests {
        let document = &digest.signed.document;
        match (&document.previous, &document.chain_start) {
            (Some(previous), _) => {
                successors
                    .entry(previous.key.as_str())
                    .or_default()
                    .push(&digest.key);
                match by_key.get(previous.key.as_str()) {
                    None => report.problems.push(format!(
                        "broken chain: digest {} names the previous digest {}, which is missing",
                        digest.key, previous.key
                    )),
                    Some(found) if found.sha256 != previous.sha256 => {
                        report.problems.push(format!(
                            "broken chain: digest {} names {} with SHA-256 {}, but that \
                             digest's is {}",
                            digest.key, previous.key, previous.sha256, found.sha256
                        ));
                    }
                    Some(_) => {}
                }
            }
            (None, Some(reason)) => report.notes.push(format!(
                "node {} of cluster {}: a chain starts at {} ({reason})",
                document.node, document.cluster, digest.key
            )),
            (None, None) => report.problems.push(format!(
                "broken chain: digest {} has neither a previous digest nor a reason to start a \
                 chain",
                digest.key
            )),
        }
    }
    for (previous, next) in successors.iter().filter(|(_, next)| next.len() > 1) {
        report.problems.push(format!(
            "broken chain: digest {previous} is the previous of {}",
            next.join(" and ")
        ));
    }
}

/// Whether `key` is an Amazon Security Lake object (collector/src/writer.rs).
fn is_security_lake_object(key: &str) -> bool {
    key.starts_with(&format!("{SECURITY_LAKE_ROOT}/"))
}

/// Every object the window's digests list: present and unchanged. Returns every key any
/// digest lists.
async fn check_objects(
    reader: &Reader,
    security_lake: Option<&Reader>,
    digests: &[Read],
    request: &Request,
    report: &mut Report,
) -> BTreeSet<String> {
    let mut listed: HashMap<&str, &str> = HashMap::new();
    let mut by_hash: HashMap<&str, &str> = HashMap::new();
    for digest in digests {
        for object in &digest.signed.document.objects {
            if let Some(other) = listed.insert(&object.key, &digest.key)
                && other != digest.key
            {
                report.problems.push(format!(
                    "object {} is listed in both digest {other} and digest {}",
                    object.key, digest.key
                ));
            }
            by_hash.insert(&object.sha256, &object.key);
        }
    }
    for digest in digests
        .iter()
        .filter(|d| request.digest_in_window(&d.signed))
    {
        for object in &digest.signed.document.objects {
            report.objects += 1;
            let lake_object = is_security_lake_object(&object.key);
            let source = match security_lake {
                Some(lake) if lake_object => lake,
                _ => reader,
            };
            let missing = || {
                let hint = if lake_object && security_lake.is_none() {
                    "; a Security Lake object: give its location with --security-lake"
                } else {
                    ""
                };
                format!(
                    "missing object {} (listed in digest {}{hint})",
                    object.key, digest.key
                )
            };
            let found = match source.fetch(&source.name_of(&object.key)).await {
                Ok((found, _)) => found,
                Err(SourceError::Io { error, .. })
                    if error.kind() == std::io::ErrorKind::NotFound =>
                {
                    report.problems.push(missing());
                    continue;
                }
                Err(SourceError::S3 { message, .. }) if message.starts_with("NoSuchKey") => {
                    report.problems.push(missing());
                    continue;
                }
                Err(error) => {
                    report.problems.push(format!(
                        "unreadable object {} (listed in digest {}): {}",
                        object.key,
                        digest.key,
                        error.reason()
                    ));
                    continue;
                }
            };
            if found.sha256 != object.sha256 || found.bytes != object.bytes {
                let swapped = by_hash
                    .get(found.sha256.as_str())
                    .map(|other| {
                        format!(
                            ": it holds the bytes listed for {other} (objects swapped or copied)"
                        )
                    })
                    .unwrap_or_default();
                report.problems.push(format!(
                    "changed object {}: {} bytes with SHA-256 {}, digest {} lists {} bytes with \
                     SHA-256 {}{swapped}",
                    object.key, found.bytes, found.sha256, digest.key, object.bytes, object.sha256
                ));
            }
        }
    }
    listed.into_keys().map(str::to_owned).collect()
}

/// Per node and chain: the sequence numbers from the first to the last, each an object's or
/// a lost file's.
fn check_sequences(digests: &[Read], request: &Request, report: &mut Report) {
    let mut chains: BTreeMap<(&str, &str, u64), Vec<&Read>> = BTreeMap::new();
    let mut ordered: Vec<&Read> = digests
        .iter()
        .filter(|d| request.digest_in_window(&d.signed))
        .collect();
    ordered.sort_by_key(|d| (d.signed.document.to_s, d.signed.document.number));
    // A chain is identified by the time of the digest that started it, as far as the window
    // shows: a new chain restarts the numbering.
    let mut current: HashMap<(&str, &str), u64> = HashMap::new();
    for digest in ordered {
        let document = &digest.signed.document;
        let node = (document.cluster.as_str(), document.node.as_str());
        let start = current.entry(node).or_insert(document.to_s);
        if document.chain_start.is_some() {
            *start = document.to_s;
        }
        chains
            .entry((node.0, node.1, *start))
            .or_default()
            .push(digest);
    }
    for ((cluster, node, _), chain) in chains {
        let mut seen: BTreeMap<u64, &str> = BTreeMap::new();
        for digest in &chain {
            let document = &digest.signed.document;
            let numbers = document
                .objects
                .iter()
                .map(|o| o.sequence)
                .chain(document.lost_sequences.iter().map(|l| l.sequence));
            for sequence in numbers {
                if let Some(other) = seen.insert(sequence, &digest.key) {
                    report.problems.push(format!(
                        "node {node} of cluster {cluster}: sequence number {sequence} appears \
                         twice (digests {other} and {})",
                        digest.key
                    ));
                }
            }
        }
        let numbers: Vec<u64> = seen.into_keys().collect();
        for pair in numbers.windows(2) {
            if pair[1] > pair[0] + 1 {
                report.problems.push(format!(
                    "gap: node {node} of cluster {cluster}: sequence numbers {}..={} are in no \
                     digest, and no loss record covers them",
                    pair[0] + 1,
                    pair[1] - 1
                ));
            }
        }
    }
}
