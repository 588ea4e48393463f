//! The LPM merge: from the grants of one endpoint and direction (a prefix, its holes, and the
//! port rules allowed towards it) to the entries of that endpoint's LPM trie.
//!
//! The trie answers a lookup with the value of the longest matching prefix only, so the value
//! of every inserted prefix P must already hold every grant whose address set contains all of
//! P: P inside the grant's prefix and inside none of its holes. The inserted prefixes are the
//! grants' prefixes and their holes; a hole nothing else allows is still inserted, empty, so
//! that it shadows the wider grant.
//!
//! Families never mix: an IPv6 prefix does not contain IPv4 addresses even when its 16-byte
//! form covers `::ffff:0:0/96`. Whenever an IPv6 prefix does, `0.0.0.0/0` is inserted too, so
//! that IPv4 lookups stop there with only IPv4 grants.
//!
//! For each prefix, the grants containing it are found by looking up its truncation at each
//! prefix length in use (at most 129), so the merge is linear in the number of prefixes, not
//! quadratic.

use std::collections::{BTreeSet, HashMap};

use tollgate_schemas::{PolicyValue, PortRule};

use super::cidr::Prefix;
use super::ports::normalize;

/// Port rules allowed towards `prefix` minus `excepts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Grant {
    /// Where the rules apply.
    pub(crate) prefix: Prefix,
    /// Holes in `prefix`, each strictly inside it.
    pub(crate) excepts: Vec<Prefix>,
    /// What is allowed there.
    pub(crate) rules: Vec<PortRule>,
}

/// One trie entry of an endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    /// The peer prefix.
    pub(crate) prefix: Prefix,
    /// What is allowed from/to the addresses whose longest match it is.
    pub(crate) value: PolicyValue,
    /// Port rules that did not fit in the value (0 when all did).
    pub(crate) dropped: usize,
}

/// Merges grants into trie entries, ordered by prefix.
pub(crate) fn merge(grants: &[Grant]) -> Vec<Entry> {
    let mut at: HashMap<Prefix, Vec<usize>> = HashMap::new();
    let mut holes_at: HashMap<Prefix, Vec<usize>> = HashMap::new();
    let mut keys = BTreeSet::new();
    for (index, grant) in grants.iter().enumerate() {
        at.entry(grant.prefix).or_default().push(index);
        keys.insert(grant.prefix);
        for hole in &grant.excepts {
            holes_at.entry(*hole).or_default().push(index);
            keys.insert(*hole);
        }
    }
    if keys
        .iter()
        .any(|k| !k.is_v4() && k.contains(Prefix::ALL_V4))
    {
        keys.insert(Prefix::ALL_V4);
    }
    let lengths: BTreeSet<u8> = keys.iter().map(|k| k.len()).collect();
    keys.into_iter()
        .map(|key| {
            let mut inside: Vec<usize> = Vec::new();
            let mut excluded: Vec<usize> = Vec::new();
            for &len in lengths.range(..=key.len()) {
                let ancestor = key.truncate(len);
                if ancestor.is_v4() != key.is_v4() {
                    continue;
                }
                inside.extend(at.get(&ancestor).into_iter().flatten());
                excluded.extend(holes_at.get(&ancestor).into_iter().flatten());
            }
            let rules: Vec<PortRule> = inside
                .into_iter()
                .filter(|grant| !excluded.contains(grant))
                .flat_map(|grant| grants[grant].rules.iter().copied())
                .collect();
            let normalized = normalize(rules);
            let mut value = PolicyValue::EMPTY;
            value.count = normalized.rules.len() as u32;
            value.rules[..normalized.rules.len()].copy_from_slice(&normalized.rules);
            Entry {
                prefix: key,
                value,
                dropped: normalized.dropped,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::cidr::parse_cidr;
    use crate::compile::ports::PortRange;
    use tollgate_schemas::proto;

    fn grant(cidr: &str, excepts: &[&str], rule_id: u32, port: u16) -> Grant {
        Grant {
            prefix: parse_cidr(cidr).unwrap(),
            excepts: excepts.iter().map(|e| parse_cidr(e).unwrap()).collect(),
            rules: vec![
                PortRange {
                    protocol: proto::TCP,
                    lo: port,
                    hi: port,
                }
                .rule(rule_id),
            ],
        }
    }

    /// Each entry as `prefix: rule ids`.
    fn render(entries: &[Entry]) -> Vec<String> {
        entries
            .iter()
            .map(|e| {
                let ids: Vec<String> = e.value.rules[..e.value.count as usize]
                    .iter()
                    .map(|r| r.rule_id.to_string())
                    .collect();
                format!("{}: {}", e.prefix, ids.join(","))
            })
            .collect()
    }

    #[test]
    fn nested_blocks_and_holes() {
        let entries = merge(&[
            grant("10.0.0.0/8", &["10.1.0.0/16"], 1, 80),
            grant("10.1.2.0/24", &["10.1.2.3/32"], 2, 81),
            grant("10.1.2.3/32", &[], 3, 82),
            grant("0.0.0.0/0", &["10.0.0.0/8"], 4, 83),
        ]);
        assert_eq!(
            render(&entries),
            [
                "0.0.0.0/0: 4",
                "10.0.0.0/8: 1",
                "10.1.0.0/16: ",
                "10.1.2.0/24: 2",
                "10.1.2.3/32: 3",
            ]
        );
    }

    #[test]
    fn ipv6_prefixes_do_not_cover_ipv4() {
        let entries = merge(&[grant("::/0", &[], 1, 80), grant("10.0.0.0/8", &[], 2, 81)]);
        assert_eq!(
            render(&entries),
            ["::/0: 1", "0.0.0.0/0: ", "10.0.0.0/8: 2"]
        );
        let entries = merge(&[grant("2001:db8::/32", &[], 1, 80)]);
        assert_eq!(render(&entries), ["2001:db8::/32: 1"]);
    }

    #[test]
    fn many_blocks_merge_fast() {
        // 10,000 disjoint /32s under one /8, with one hole each level: linear, not quadratic.
        let mut grants: Vec<Grant> = (0..10_000u32)
            .map(|i| Grant {
                prefix: Prefix::host(std::net::Ipv4Addr::from(0x0a00_0000 + i).into()),
                excepts: vec![],
                rules: vec![
                    PortRange {
                        protocol: proto::TCP,
                        lo: 443,
                        hi: 443,
                    }
                    .rule(i + 2),
                ],
            })
            .collect();
        grants.push(grant("10.0.0.0/8", &["10.0.0.0/24"], 1, 80));
        let started = std::time::Instant::now();
        let entries = merge(&grants);
        assert_eq!(entries.len(), 10_002);
        // 10.0.0.5 lies in the hole: only its own rule; 10.0.100.1 also gets the /8's.
        let find = |p: &str| {
            let prefix = parse_cidr(p).unwrap();
            entries
                .iter()
                .find(|e| e.prefix == prefix)
                .unwrap()
                .value
                .count
        };
        assert_eq!(find("10.0.0.5/32"), 1);
        assert_eq!(find("10.0.39.1/32"), 2);
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }
}
