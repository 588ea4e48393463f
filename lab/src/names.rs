//! Names of what the lab creates: one prefix per run, network namespace names built from it,
//! and the host-side veth names the AWS VPC CNI would give the pods.
//!
//! A run's prefix (`tg<pid>-<n>`) starts every network namespace it creates, so two runs (two
//! processes, or two runs in one process) never share a name, cleanup removes exactly what the
//! run made, and a test can check that nothing with the prefix is left. Interface names live
//! inside those namespaces, so they need no prefix: the host veth is named like the VPC CNI
//! names it (`eni` + the first 11 hex digits of SHA-1 over `namespace.pod`; `vlan` + the same
//! for a pod with a branch ENI in strict mode, `--sgp`). The run's files
//! (the servers' configuration, pid and log files) live in one directory named with the prefix
//! too ([`RunNames::run_dir`]).

use std::sync::atomic::{AtomicU32, Ordering};

use sha1::{Digest, Sha1};

/// Start of every network namespace name a lab run creates, before the pid.
pub const NETNS_PREFIX: &str = "tg";

/// Prefix of the VPC CNI's host-side veth names.
pub const HOST_VETH_PREFIX: &str = "eni";

/// Prefix of the host-side veth of a pod with a branch ENI (security groups for pods) in the
/// VPC CNI's `strict` mode.
pub const BRANCH_VETH_PREFIX: &str = "vlan";

/// Hex digits of the hash in a host-side veth name.
pub const HOST_VETH_HASH_DIGITS: usize = 11;

/// Linux interface names are at most 15 bytes (IFNAMSIZ less the terminating NUL).
pub const MAX_IFNAME_LEN: usize = 15;

/// What a run directory's name ends with, after the run's prefix.
pub const RUN_DIR_SUFFIX: &str = "-run";

static NEXT_RUN: AtomicU32 = AtomicU32::new(0);

/// The names of one lab run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunNames {
    prefix: String,
}

impl RunNames {
    /// Names for a new run of this process: `tg<pid>-<n>`, with `n` counting the runs.
    pub fn new() -> Self {
        let run = NEXT_RUN.fetch_add(1, Ordering::Relaxed);
        Self {
            prefix: format!("{NETNS_PREFIX}{}-{run}", std::process::id()),
        }
    }

    /// The prefix every network namespace of this run starts with (`tg<pid>-<n>`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Name of the node's network namespace.
    pub fn node_netns(&self) -> String {
        format!("{}-node", self.prefix)
    }

    /// Name of the network namespace that stands for the VPC behind the node (`--sgp`).
    pub fn vpc_netns(&self) -> String {
        format!("{}-vpc", self.prefix)
    }

    /// Name of the network namespace of pod `namespace/pod`.
    pub fn pod_netns(&self, namespace: &str, pod: &str) -> String {
        format!("{}-{namespace}-{pod}", self.prefix)
    }

    /// The directory of the run's files: `<temp dir>/<prefix>-run`.
    pub fn run_dir(&self) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("{}{RUN_DIR_SUFFIX}", self.prefix))
    }

    /// Whether `netns` was named by this run.
    pub fn owns(&self, netns: &str) -> bool {
        netns
            .strip_prefix(&self.prefix)
            .is_some_and(|rest| rest.starts_with('-'))
    }
}

impl Default for RunNames {
    fn default() -> Self {
        Self::new()
    }
}

/// The pid of the process that created `netns`, when the name has the lab's form
/// `tg<pid>-<n>-…`; `None` for every other name.
pub fn creator_pid(netns: &str) -> Option<u32> {
    let rest = netns.strip_prefix(NETNS_PREFIX)?;
    let (pid, rest) = rest.split_once('-')?;
    let (run, _) = rest.split_once('-')?;
    let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !all_digits(pid) || !all_digits(run) {
        return None;
    }
    pid.parse().ok()
}

/// The host-side veth name the AWS VPC CNI gives pod `namespace/pod`: `prefix` (`eni`, or
/// `vlan` for a branch ENI in strict mode) followed by the first 11 hex digits of the SHA-1 of
/// `namespace.pod` (14 or 15 bytes, within the 15 allowed).
pub fn host_veth_name(prefix: &str, namespace: &str, pod: &str) -> String {
    // SHA-1 for naming only, as the VPC CNI uses it; never for security.
    let digest = Sha1::digest(format!("{namespace}.{pod}").as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("{prefix}{}", &hex[..HOST_VETH_HASH_DIGITS])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_veth_names_follow_the_vpc_cni() {
        // SHA-1("default.client-b6989bf87-2bgtc") starts with c95a4947e07, the suffix the
        // Calico-compatible naming produces for that pod.
        assert_eq!(
            host_veth_name(HOST_VETH_PREFIX, "default", "client-b6989bf87-2bgtc"),
            "enic95a4947e07"
        );
        assert_eq!(
            host_veth_name(HOST_VETH_PREFIX, "default", "nginx"),
            "enic440f455693"
        );
        assert_eq!(
            host_veth_name(BRANCH_VETH_PREFIX, "default", "nginx"),
            "vlanc440f455693"
        );
        assert_eq!(
            host_veth_name(HOST_VETH_PREFIX, "kube-system", "kube-dns"),
            "enie88da174fa4"
        );
        for (ns, pod) in [("default", "httpd"), ("default", "amazonlinux")] {
            let name = host_veth_name(HOST_VETH_PREFIX, ns, pod);
            assert_eq!(name.len(), 14, "{name}");
            assert!(name.len() <= MAX_IFNAME_LEN);
            assert!(name.starts_with(HOST_VETH_PREFIX));
            assert!(name[3..].bytes().all(|b| b.is_ascii_hexdigit()));
        }
        assert_ne!(
            host_veth_name(HOST_VETH_PREFIX, "default", "nginx"),
            host_veth_name(HOST_VETH_PREFIX, "default", "httpd")
        );
    }

    #[test]
    fn run_names_are_unique_and_recognisable() {
        let a = RunNames::new();
        let b = RunNames::new();
        assert_ne!(a.prefix(), b.prefix());
        let node = a.node_netns();
        let pod = a.pod_netns("default", "nginx");
        assert!(a.owns(&node) && a.owns(&pod));
        assert!(!b.owns(&node));
        assert_eq!(creator_pid(&node), Some(std::process::id()));
        assert_eq!(creator_pid(&pod), Some(std::process::id()));
        for other in [
            "tg-1-node",
            "tg12x-0-node",
            "tg12-node",
            "cni-1234",
            "tg12-3",
        ] {
            assert_eq!(creator_pid(other), None, "{other}");
        }
    }
}
