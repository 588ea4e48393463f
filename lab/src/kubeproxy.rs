//! kube-proxy's part of the lab's node, the way its iptables mode does it: the Services and
//! their ready backends (the compiler's [`ServiceInfo`]s, so kube-proxy and the enforcer agree
//! on every backend) → the `nat` table of the node namespace, written in one
//! `iptables-nft-restore` (`ip6tables-nft-restore` for IPv6: the machine's iptables, nft
//! backend) run inside the node namespace and nowhere else.
//!
//! The chains are kube-proxy's:
//! - `PREROUTING` (pods' traffic) and `OUTPUT` (the node's own) jump to `KUBE-SERVICES`;
//! - `KUBE-SERVICES` has one rule per ClusterIP, protocol and port, jumping to that Service
//!   port's `KUBE-SVC-<hash>`;
//! - `KUBE-SVC-…` picks one backend at random: rule `i` of `n` matches with probability
//!   `1/(n-i)` (`-m statistic --mode random`), the last one always, and jumps to the backend's
//!   `KUBE-SEP-<hash>`;
//! - `KUBE-SEP-…` marks a pod's connection to itself for masquerade (hairpin) and DNATs to the
//!   backend's address and resolved `targetPort`;
//! - `KUBE-POSTROUTING` masquerades what was marked.
//!
//! The hashes are kube-proxy's: the first 16 characters of the base32 of SHA-256 over
//! `namespace/name[:port name]` and the lower-case protocol (and, for an endpoint chain, its
//! `address:port`), so the chain names match a node's. A Service port without ready backends
//! gets no chain (kube-proxy rejects those in the `filter` table; the lab's Services all have
//! backends).

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::process::{Command, Stdio};
use std::sync::Arc;

use sha2::{Digest, Sha256};
use tollgate_enforcer::compile::services::ServiceInfo;
use tollgate_schemas::proto;

use crate::{LabError, family::IpFamily};

/// The mark kube-proxy sets on connections to masquerade.
const MASQ_MARK: &str = "0x4000";

/// kube-proxy's chain name hash: base32 (RFC 4648) of SHA-256 over `parts`, first 16
/// characters.
fn chain_hash(parts: &[&str]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part.as_bytes());
    }
    let mut encoded = data_encoding::BASE32.encode(&hasher.finalize());
    encoded.truncate(16);
    encoded
}

fn protocol_name(protocol: u8) -> &'static str {
    match protocol {
        proto::TCP => "tcp",
        proto::UDP => "udp",
        proto::SCTP => "sctp",
        _ => "unknown",
    }
}

/// The rules of the `nat` table for `services`, as `iptables-restore` reads them; only the
/// ClusterIPs and backends of `family`.
pub fn nat_rules(services: &[Arc<ServiceInfo>], family: IpFamily) -> String {
    let mut chains = vec![
        "KUBE-SERVICES".to_owned(),
        "KUBE-POSTROUTING".to_owned(),
        "KUBE-MARK-MASQ".to_owned(),
    ];
    let mut rules = vec![
        r#"-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES"#
            .to_owned(),
        r#"-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES"#
            .to_owned(),
        r#"-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING"#
            .to_owned(),
        format!("-A KUBE-MARK-MASQ -j MARK --or-mark {MASQ_MARK}"),
        format!("-A KUBE-POSTROUTING -m mark ! --mark {MASQ_MARK}/{MASQ_MARK} -j RETURN"),
        format!("-A KUBE-POSTROUTING -j MARK --xor-mark {MASQ_MARK}"),
        r#"-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully"#
            .to_owned(),
    ];
    let host_len = family.host_prefix_len();
    for service in services {
        let cluster_ips: Vec<IpAddr> = service
            .cluster_ips
            .iter()
            .copied()
            .filter(|ip| IpFamily::of(*ip) == family)
            .collect();
        for port in &service.ports {
            let backends: Vec<SocketAddr> = port
                .backends
                .iter()
                .filter(|b| IpFamily::of(b.addr) == family)
                .map(|b| SocketAddr::new(b.addr, b.port))
                .collect();
            if cluster_ips.is_empty() || backends.is_empty() {
                continue;
            }
            let port_name = match &port.name {
                Some(name) => format!("{}:{name}", service.key()),
                None => service.key(),
            };
            let protocol = protocol_name(port.protocol);
            let svc_chain = format!("KUBE-SVC-{}", chain_hash(&[&port_name, protocol]));
            chains.push(svc_chain.clone());
            for ip in &cluster_ips {
                rules.push(format!(
                    r#"-A KUBE-SERVICES -m comment --comment "{port_name} cluster IP" -m {protocol} -p {protocol} -d {ip}/{host_len} --dport {} -j {svc_chain}"#,
                    port.port
                ));
            }
            let count = backends.len();
            for (i, backend) in backends.iter().enumerate() {
                let endpoint = backend.to_string();
                let sep_chain = format!(
                    "KUBE-SEP-{}",
                    chain_hash(&[&port_name, protocol, &endpoint])
                );
                chains.push(sep_chain.clone());
                let mut pick =
                    format!(r#"-A {svc_chain} -m comment --comment "{port_name} -> {endpoint}""#);
                if i + 1 < count {
                    let _ = write!(
                        pick,
                        " -m statistic --mode random --probability {:.10}",
                        1.0 / (count - i) as f64
                    );
                }
                let _ = write!(pick, " -j {sep_chain}");
                rules.push(pick);
                rules.push(format!(
                    "-A {sep_chain} -m comment --comment {port_name} -s {}/{host_len} -j KUBE-MARK-MASQ",
                    backend.ip()
                ));
                rules.push(format!(
                    "-A {sep_chain} -m comment --comment {port_name} -m {protocol} -p {protocol} -j DNAT --to-destination {endpoint}"
                ));
            }
        }
    }
    let mut out = String::from("*nat\n");
    for builtin in ["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"] {
        let _ = writeln!(out, ":{builtin} ACCEPT [0:0]");
    }
    for chain in &chains {
        let _ = writeln!(out, ":{chain} - [0:0]");
    }
    for rule in &rules {
        out.push_str(rule);
        out.push('\n');
    }
    out.push_str("COMMIT\n");
    out
}

/// Replaces the `nat` table of network namespace `node` with the chains of `services`.
#[tracing::instrument(skip(services), fields(services = services.len()))]
pub fn install(
    node: &str,
    services: &[Arc<ServiceInfo>],
    family: IpFamily,
) -> Result<(), LabError> {
    let rules = nat_rules(services, family);
    let restore = format!("{}-restore", family.iptables());
    let command = format!("ip netns exec {node} {restore}");
    let failed = |message: String| LabError::Command {
        command: command.clone(),
        message,
    };
    let mut child = Command::new("ip")
        .args(["netns", "exec", node, &restore, "-w"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|error| failed(error.to_string()))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(rules.as_bytes())
            .map_err(|error| failed(format!("writing the rules: {error}")))?;
    }
    let output = child
        .wait_with_output()
        .map_err(|error| failed(error.to_string()))?;
    if !output.status.success() {
        return Err(failed(format!(
            "{}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    tracing::info!(
        rules = rules.lines().filter(|l| l.starts_with("-A")).count(),
        "kube-proxy's chains installed in the node namespace"
    );
    Ok(())
}

/// The node namespace's `nat` table as `iptables-save` prints it.
pub fn saved(node: &str, family: IpFamily) -> Result<String, LabError> {
    let save = format!("{}-save", family.iptables());
    let output = Command::new("ip")
        .args(["netns", "exec", node, &save, "-t", "nat"])
        .output()
        .map_err(|error| LabError::Command {
            command: format!("ip netns exec {node} {save}"),
            message: error.to_string(),
        })?;
    if !output.status.success() {
        return Err(LabError::Command {
            command: format!("ip netns exec {node} {save}"),
            message: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use tollgate_enforcer::compile::services::{Backend, ServicePort};

    use super::*;

    fn service(ip: &str, backends: &[(&str, u16)]) -> Arc<ServiceInfo> {
        Arc::new(ServiceInfo {
            namespace: "default".into(),
            name: "web".into(),
            cluster_ips: vec![ip.parse().unwrap()],
            ports: vec![ServicePort {
                name: None,
                protocol: proto::TCP,
                port: 80,
                backends: backends
                    .iter()
                    .map(|(addr, port)| Backend {
                        addr: addr.parse().unwrap(),
                        port: *port,
                        pod: None,
                    })
                    .collect(),
            }],
        })
    }

    #[test]
    fn chain_names_are_kube_proxys() {
        // kube-proxy's own: KUBE-SVC of "ns1/svc1:p80" over tcp (proxier_test.go), and
        // kube-dns's chains as every cluster's iptables-save shows them.
        assert_eq!(chain_hash(&["ns1/svc1:p80", "tcp"]), "XPGD46QRK7WJZT7O");
        assert_eq!(
            chain_hash(&["kube-system/kube-dns:dns", "udp"]),
            "TCOU7JCQXEZGVUNU"
        );
        assert_eq!(
            chain_hash(&["kube-system/kube-dns:dns-tcp", "tcp"]),
            "ERIFXISQEP7F7OF4"
        );
        assert_eq!(chain_hash(&["ns1/svc1:p80", "tcp"]).len(), 16);
    }

    #[test]
    fn backends_are_picked_at_random_and_dnatted() {
        let rules = nat_rules(
            &[service(
                "198.19.0.7",
                &[("198.18.0.21", 8080), ("198.18.0.22", 8080)],
            )],
            IpFamily::V4,
        );
        let svc = format!("KUBE-SVC-{}", chain_hash(&["default/web", "tcp"]));
        let first = format!(
            "KUBE-SEP-{}",
            chain_hash(&["default/web", "tcp", "198.18.0.21:8080"])
        );
        assert!(
            rules.contains(&format!("-d 198.19.0.7/32 --dport 80 -j {svc}")),
            "{rules}"
        );
        assert!(
            rules.contains(&format!(
                "-m statistic --mode random --probability 0.5000000000 -j {first}"
            )),
            "{rules}"
        );
        assert!(rules.contains(&format!(
            "-A {first} -m comment --comment default/web -m tcp -p tcp -j DNAT --to-destination 198.18.0.21:8080"
        )), "{rules}");
        let picks = rules
            .lines()
            .filter(|l| l.starts_with(&format!("-A {svc}")))
            .count();
        assert_eq!(picks, 2);
        assert!(rules.starts_with("*nat\n") && rules.ends_with("COMMIT\n"));
    }

    #[test]
    fn ipv6_rules_bracket_the_backend_and_skip_the_other_family() {
        let v6 = service("2001:db8:ffff::7", &[("2001:db8::21", 80)]);
        let rules = nat_rules(std::slice::from_ref(&v6), IpFamily::V6);
        assert!(
            rules.contains("-d 2001:db8:ffff::7/128 --dport 80"),
            "{rules}"
        );
        assert!(
            rules.contains("--to-destination [2001:db8::21]:80"),
            "{rules}"
        );
        assert!(!rules.contains("statistic"), "one backend, no pick");
        assert!(!nat_rules(&[v6], IpFamily::V4).contains("KUBE-SVC-"));
    }
}
