//! Ports: a rule's `ports` list is checked once into [`PortSpec`]s, resolved into concrete
//! ranges for one destination pod (named ports), and finally, with the ranges of every rule
//! that allows one peer prefix, normalised into the [`PortRule`] list of one map value.
//!
//! Named ports resolve against the destination pod's `spec.containers[*].ports[*]` with the
//! same name and protocol. An address that is not a pod's has no named ports, so a named port
//! never allows traffic to it.

use tollgate_schemas::{ANY_PROTOCOL, MAX_PORT_RULES, PortRule, port_action, proto, rule_tier};

use k8s_openapi::api::networking::v1::NetworkPolicyPort;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::Problems;

/// One entry of a rule's `ports`, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PortSpec {
    /// No `ports` at all: every protocol and port.
    Any,
    /// A protocol and a port range (every port when the entry had no `port`).
    Range {
        /// IANA protocol number.
        protocol: u8,
        /// First port.
        lo: u16,
        /// Last port, inclusive.
        hi: u16,
    },
    /// A protocol and a port name, resolved per destination pod.
    Named {
        /// IANA protocol number; [`ANY_PROTOCOL`]: the named ports of every protocol (a
        /// ClusterNetworkPolicy's, which names no protocol).
        protocol: u8,
        /// The port name.
        name: String,
    },
}

/// A container port that has a name: what a named port can resolve to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct NamedPort {
    /// The port's name.
    pub(crate) name: String,
    /// IANA protocol number.
    pub(crate) protocol: u8,
    /// The port number.
    pub(crate) port: u16,
}

/// A protocol and port range a rule allows; `protocol` is [`ANY_PROTOCOL`] for every
/// protocol and port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct PortRange {
    /// IANA protocol number or [`ANY_PROTOCOL`].
    pub(crate) protocol: u8,
    /// First port.
    pub(crate) lo: u16,
    /// Last port, inclusive.
    pub(crate) hi: u16,
}

impl PortRange {
    /// The map's form of this range, for rule `rule_id` doing `action` in `tier`.
    pub(crate) fn rule(self, rule_id: u32, action: u8, tier: u8) -> PortRule {
        PortRule {
            rule_id,
            port_lo: self.lo,
            port_hi: self.hi,
            protocol: self.protocol,
            action,
            tier,
            _pad: 0,
        }
    }
}

/// The protocol number a NetworkPolicy or container port names (`TCP` when absent).
pub(crate) fn protocol_number(protocol: Option<&str>) -> Result<u8, String> {
    match protocol.unwrap_or("TCP") {
        "TCP" => Ok(proto::TCP),
        "UDP" => Ok(proto::UDP),
        "SCTP" => Ok(proto::SCTP),
        other => Err(format!("unknown protocol {other:?} (TCP, UDP or SCTP)")),
    }
}

/// Whether `name` is a valid port name (IANA_SVC_NAME, RFC 6335): 1 to 15 characters of
/// `a-z`, `0-9` and `-`, at least one letter, no `-` at either end and no `--`.
pub(crate) fn valid_port_name(name: &str) -> bool {
    (1..=15).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && name.bytes().any(|b| b.is_ascii_lowercase())
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--")
}

fn port_number(value: i32, field: &str, problems: &mut Problems) -> Option<u16> {
    match u16::try_from(value) {
        Ok(port) if port != 0 => Some(port),
        _ => {
            problems.push(field, format!("{value} is out of range 1-65535"));
            None
        }
    }
}

/// Checks a rule's `ports` (at `path`); absent or empty means every protocol and port.
pub(crate) fn parse_ports(
    ports: Option<&[NetworkPolicyPort]>,
    path: &str,
    problems: &mut Problems,
) -> Option<Vec<PortSpec>> {
    let ports = ports.unwrap_or_default();
    if ports.is_empty() {
        return Some(vec![PortSpec::Any]);
    }
    let before = problems.len();
    let mut specs = Vec::with_capacity(ports.len());
    for (index, port) in ports.iter().enumerate() {
        let at = format!("{path}[{index}]");
        let protocol = match protocol_number(port.protocol.as_deref()) {
            Ok(protocol) => protocol,
            Err(message) => {
                problems.push(format!("{at}.protocol"), message);
                continue;
            }
        };
        let spec = match (&port.port, port.end_port) {
            (None, None) => Some(PortSpec::Range {
                protocol,
                lo: 0,
                hi: u16::MAX,
            }),
            (None, Some(_)) => {
                problems.push(format!("{at}.endPort"), "endPort requires port");
                None
            }
            (Some(IntOrString::String(name)), end_port) => {
                if !valid_port_name(name) {
                    problems.push(
                        format!("{at}.port"),
                        format!(
                            "{name:?} is not a valid port name (1-15 characters of a-z, 0-9 \
                             and '-', at least one letter, no '-' at either end or twice in a row)"
                        ),
                    );
                }
                if end_port.is_some() {
                    problems.push(
                        format!("{at}.endPort"),
                        "endPort cannot be used with a named port",
                    );
                }
                Some(PortSpec::Named {
                    protocol,
                    name: name.clone(),
                })
            }
            (Some(IntOrString::Int(value)), end_port) => {
                let lo = port_number(*value, &format!("{at}.port"), problems);
                let hi = match end_port {
                    None => lo,
                    Some(end) => {
                        let hi = port_number(end, &format!("{at}.endPort"), problems);
                        if let (Some(lo), Some(hi)) = (lo, hi)
                            && hi < lo
                        {
                            problems.push(
                                format!("{at}.endPort"),
                                format!("endPort {hi} is below port {lo}"),
                            );
                        }
                        hi
                    }
                };
                lo.zip(hi)
                    .map(|(lo, hi)| PortSpec::Range { protocol, lo, hi })
            }
        };
        specs.extend(spec);
    }
    (problems.len() == before).then_some(specs)
}

/// Whether any spec is a named port (resolution then depends on the destination pod).
pub(crate) fn has_named(specs: &[PortSpec]) -> bool {
    specs.iter().any(|s| matches!(s, PortSpec::Named { .. }))
}

/// The ranges `specs` allow towards a destination whose named ports are `named` (`None`: the
/// destination is not known to be one pod, so named ports allow nothing). With
/// `numeric: false` only the named ports' ranges are returned.
pub(crate) fn resolve(
    specs: &[PortSpec],
    named: Option<&[NamedPort]>,
    numeric: bool,
) -> Vec<PortRange> {
    let mut ranges = Vec::new();
    for spec in specs {
        match spec {
            PortSpec::Any if numeric => ranges.push(PortRange {
                protocol: ANY_PROTOCOL,
                lo: 0,
                hi: u16::MAX,
            }),
            PortSpec::Range { protocol, lo, hi } if numeric => ranges.push(PortRange {
                protocol: *protocol,
                lo: *lo,
                hi: *hi,
            }),
            PortSpec::Named { protocol, name } => {
                ranges.extend(
                    named
                        .unwrap_or_default()
                        .iter()
                        .filter(|p| {
                            (p.protocol == *protocol || *protocol == ANY_PROTOCOL)
                                && p.name == *name
                        })
                        .map(|p| PortRange {
                            protocol: p.protocol,
                            lo: p.port,
                            hi: p.port,
                        }),
                );
            }
            PortSpec::Any | PortSpec::Range { .. } => {}
        }
    }
    ranges
}

/// The port rules of one map value, and how many did not fit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Normalized {
    /// At most [`MAX_PORT_RULES`] rules, in the order the probe tries them.
    pub(crate) rules: Vec<PortRule>,
    /// Rules dropped for lack of room (0 when everything fit).
    pub(crate) dropped: usize,
}

/// Turns the port rules that decide one peer prefix (as granted, tier by tier in the order
/// they apply) into the list of one map value, at most [`MAX_PORT_RULES`] of them; the rest
/// are reported as dropped.
///
/// A NetworkPolicy run only allows, so its order does not count ([`allows`] orders and
/// shrinks it). A ClusterNetworkPolicy run keeps its order, first match wins: a rule after one
/// of its tier that covers every protocol and port is never reached and goes. After a rule
/// that covers everything and decides (any but a Pass), so does every later tier.
pub(crate) fn normalize(rules: Vec<PortRule>) -> Normalized {
    let mut kept: Vec<PortRule> = Vec::with_capacity(rules.len());
    for run in rules.chunk_by(|a, b| a.tier == b.tier) {
        if run[0].tier == rule_tier::NETWORK_POLICY {
            kept.extend(allows(run.to_vec()));
        } else {
            let reached = run
                .iter()
                .position(|r| r.protocol == ANY_PROTOCOL)
                .map_or(run.len(), |i| i + 1);
            kept.extend(&run[..reached]);
        }
        if kept
            .last()
            .is_some_and(|r| r.protocol == ANY_PROTOCOL && r.action != port_action::PASS)
        {
            break;
        }
    }
    let dropped = kept.len().saturating_sub(MAX_PORT_RULES);
    kept.truncate(MAX_PORT_RULES);
    Normalized {
        rules: kept,
        dropped,
    }
}

/// The list of one map value for the rules that allow one peer prefix (a NetworkPolicy run).
///
/// Duplicates go; a rule fully covered by another of the same protocol (or by an
/// any-protocol rule) goes, the covering one stays (of two equal ones, the lower rule id
/// stays). The result is ordered: any-protocol first, then by protocol, first port, rule id.
/// If more than [`MAX_PORT_RULES`] remain, overlapping and adjacent ranges of one protocol are
/// merged (the merged range keeps the rule id of its first part).
fn allows(mut rules: Vec<PortRule>) -> Vec<PortRule> {
    if let Some(any) = rules
        .iter()
        .filter(|r| r.protocol == ANY_PROTOCOL)
        .min_by_key(|r| r.rule_id)
    {
        return vec![*any];
    }
    rules.sort_by_key(|r| (r.protocol, r.port_lo, u16::MAX - r.port_hi, r.rule_id));
    let mut kept: Vec<PortRule> = Vec::with_capacity(rules.len());
    for rule in rules {
        // Sorted by first port, then widest first, then rule id: a rule is covered exactly
        // when a kept rule of its protocol already reaches its last port.
        let covered = kept
            .last()
            .is_some_and(|last| last.protocol == rule.protocol && last.port_hi >= rule.port_hi);
        if !covered {
            kept.push(rule);
        }
    }
    if kept.len() > MAX_PORT_RULES {
        let mut merged: Vec<PortRule> = Vec::with_capacity(kept.len());
        for rule in kept {
            match merged.last_mut() {
                Some(last)
                    if last.protocol == rule.protocol
                        && u32::from(rule.port_lo) <= u32::from(last.port_hi) + 1 =>
                {
                    last.port_hi = last.port_hi.max(rule.port_hi);
                }
                _ => merged.push(rule),
            }
        }
        kept = merged;
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    fn specs(yaml: &str) -> Result<Vec<PortSpec>, Vec<(String, String)>> {
        let ports: Vec<NetworkPolicyPort> = serde_yaml_ng::from_str(yaml).unwrap();
        let mut problems = Problems::default();
        parse_ports(Some(&ports), "spec.ingress[0].ports", &mut problems)
            .ok_or_else(|| problems.into_fields())
    }

    fn range(protocol: u8, lo: u16, hi: u16) -> PortSpec {
        PortSpec::Range { protocol, lo, hi }
    }

    #[test]
    fn valid_ports() {
        let cases: &[(&str, Vec<PortSpec>)] = &[
            ("[]", vec![PortSpec::Any]),
            ("[{port: 80}]", vec![range(proto::TCP, 80, 80)]),
            ("[{}]", vec![range(proto::TCP, 0, 65535)]),
            ("[{protocol: UDP}]", vec![range(proto::UDP, 0, 65535)]),
            (
                "[{protocol: SCTP, port: 80, endPort: 90}, {protocol: UDP, port: 53}]",
                vec![range(proto::SCTP, 80, 90), range(proto::UDP, 53, 53)],
            ),
            ("[{port: 80, endPort: 80}]", vec![range(proto::TCP, 80, 80)]),
            (
                "[{port: serve-80-tcp}]",
                vec![PortSpec::Named {
                    protocol: proto::TCP,
                    name: "serve-80-tcp".into(),
                }],
            ),
        ];
        for (yaml, want) in cases {
            assert_eq!(&specs(yaml).unwrap(), want, "{yaml}");
        }
    }

    #[test]
    fn invalid_ports_name_the_field() {
        let cases = [
            (
                "[{port: 0}]",
                "spec.ingress[0].ports[0].port",
                "out of range",
            ),
            (
                "[{port: 65536}]",
                "spec.ingress[0].ports[0].port",
                "out of range",
            ),
            (
                "[{port: 80}, {port: 90, endPort: 80}]",
                "spec.ingress[0].ports[1].endPort",
                "endPort 80 is below port 90",
            ),
            (
                "[{port: http, endPort: 90}]",
                "spec.ingress[0].ports[0].endPort",
                "named port",
            ),
            (
                "[{endPort: 90}]",
                "spec.ingress[0].ports[0].endPort",
                "requires port",
            ),
            (
                "[{port: 80, endPort: 70000}]",
                "spec.ingress[0].ports[0].endPort",
                "out of range",
            ),
            (
                "[{protocol: ICMP}]",
                "spec.ingress[0].ports[0].protocol",
                "unknown protocol",
            ),
            (
                "[{protocol: tcp, port: 80}]",
                "spec.ingress[0].ports[0].protocol",
                "unknown protocol",
            ),
            (
                "[{port: \"80\"}]",
                "spec.ingress[0].ports[0].port",
                "not a valid port name",
            ),
            (
                "[{port: Http}]",
                "spec.ingress[0].ports[0].port",
                "not a valid port name",
            ),
        ];
        for (yaml, field, message) in cases {
            let problems = specs(yaml).unwrap_err();
            assert_eq!(problems.len(), 1, "{yaml}: {problems:?}");
            assert_eq!(problems[0].0, field, "{yaml}");
            assert!(problems[0].1.contains(message), "{yaml}: {}", problems[0].1);
        }
    }

    #[test]
    fn port_names() {
        for good in ["http", "serve-80-tcp", "a", "h2c", "abcdefghijklmno"] {
            assert!(valid_port_name(good), "{good}");
        }
        for bad in [
            "",
            "80",
            "-http",
            "http-",
            "ht--tp",
            "HTTP",
            "web_1",
            "abcdefghijklmnop",
        ] {
            assert!(!valid_port_name(bad), "{bad}");
        }
    }

    #[test]
    fn named_ports_resolve_by_name_and_protocol() {
        let named = [
            NamedPort {
                name: "web".into(),
                protocol: proto::TCP,
                port: 8080,
            },
            NamedPort {
                name: "web".into(),
                protocol: proto::UDP,
                port: 9090,
            },
        ];
        let specs = [
            PortSpec::Named {
                protocol: proto::TCP,
                name: "web".into(),
            },
            PortSpec::Named {
                protocol: proto::SCTP,
                name: "web".into(),
            },
            range(proto::TCP, 443, 443),
        ];
        let tcp_web = PortRange {
            protocol: proto::TCP,
            lo: 8080,
            hi: 8080,
        };
        let tcp_443 = PortRange {
            protocol: proto::TCP,
            lo: 443,
            hi: 443,
        };
        assert_eq!(resolve(&specs, Some(&named), true), vec![tcp_web, tcp_443]);
        assert_eq!(resolve(&specs, Some(&named), false), vec![tcp_web]);
        assert_eq!(resolve(&specs, None, true), vec![tcp_443]);
        assert_eq!(resolve(&specs, Some(&[]), false), vec![]);
    }

    fn rule(rule_id: u32, protocol: u8, lo: u16, hi: u16) -> PortRule {
        PortRange { protocol, lo, hi }.rule(rule_id, port_action::ALLOW, rule_tier::NETWORK_POLICY)
    }

    #[test]
    fn normalize_dedups_covers_and_orders() {
        let t = proto::TCP;
        let u = proto::UDP;
        let cases: Vec<(Vec<PortRule>, Vec<PortRule>)> = vec![
            (vec![], vec![]),
            (
                vec![rule(2, t, 80, 80), rule(2, t, 80, 80)],
                vec![rule(2, t, 80, 80)],
            ),
            (
                vec![rule(3, t, 80, 80), rule(2, t, 80, 80)],
                vec![rule(2, t, 80, 80)],
            ),
            (
                vec![rule(1, t, 80, 80), rule(2, t, 0, 65535), rule(3, u, 53, 53)],
                vec![rule(2, t, 0, 65535), rule(3, u, 53, 53)],
            ),
            (
                vec![
                    rule(1, u, 53, 53),
                    rule(2, ANY_PROTOCOL, 0, 65535),
                    rule(3, t, 80, 80),
                ],
                vec![rule(2, ANY_PROTOCOL, 0, 65535)],
            ),
            (
                vec![rule(5, u, 53, 53), rule(1, t, 90, 99), rule(2, t, 80, 95)],
                vec![rule(2, t, 80, 95), rule(1, t, 90, 99), rule(5, u, 53, 53)],
            ),
        ];
        for (input, want) in cases {
            let got = normalize(input.clone());
            assert_eq!(got.rules, want, "{input:?}");
            assert_eq!(got.dropped, 0);
        }
    }

    #[test]
    fn normalize_merges_then_drops_when_full() {
        let t = proto::TCP;
        // 40 adjacent single ports merge into one range.
        let adjacent: Vec<PortRule> = (0..40)
            .map(|i| rule(i + 1, t, 1000 + i as u16, 1000 + i as u16))
            .collect();
        let got = normalize(adjacent);
        assert_eq!(got.rules, vec![rule(1, t, 1000, 1039)]);
        assert_eq!(got.dropped, 0);
        // 40 separated ports cannot merge: the first 32 stay.
        let separated: Vec<PortRule> = (0..40)
            .map(|i| rule(i + 1, t, 2 * i as u16 + 1, 2 * i as u16 + 1))
            .collect();
        let got = normalize(separated.clone());
        assert_eq!(got.rules, separated[..MAX_PORT_RULES].to_vec());
        assert_eq!(got.dropped, 40 - MAX_PORT_RULES);
    }
}
