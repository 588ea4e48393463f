//! Names of what the lab creates: one prefix per run, network namespace names built from it,
//! and the host-side veth names the AWS VPC CNI would give the pods.
//!
//! A run's prefix (`tg<pid>-<n>`) starts every network namespace it creates, so two runs (two
//! processes, or two runs in one process) never share a name, cleanup removes exactly what the
//! run made, and a test can check that nothing with the prefix is left. Interface names live
//! inside those namespaces, so they need no prefix: the host veth is named like the VPC CNI
//! names it (`eni` + the first 11 hex digits of SHA-1 over `namespace.pod`).

use std::sync::atomic::{AtomicU32, Ordering};

/// Start of every network namespace name a lab run creates, before the pid.
pub const NETNS_PREFIX: &str = "tg";

/// Prefix of the VPC CNI's host-side veth names.
pub const HOST_VETH_PREFIX: &str = "eni";

/// Hex digits of the hash in a host-side veth name.
pub const HOST_VETH_HASH_DIGITS: usize = 11;

/// Linux interface names are at most 15 bytes (IFNAMSIZ less the terminating NUL).
pub const MAX_IFNAME_LEN: usize = 15;

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

    /// Name of the network namespace of pod `namespace/pod`.
    pub fn pod_netns(&self, namespace: &str, pod: &str) -> String {
        format!("{}-{namespace}-{pod}", self.prefix)
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

/// The host-side veth name the AWS VPC CNI gives pod `namespace/pod`: `eni` followed by the
/// first 11 hex digits of the SHA-1 of `namespace.pod` (14 bytes, within the 15 allowed).
pub fn host_veth_name(namespace: &str, pod: &str) -> String {
    let digest = sha1(format!("{namespace}.{pod}").as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("{HOST_VETH_PREFIX}{}", &hex[..HOST_VETH_HASH_DIGITS])
}

/// SHA-1 (FIPS 180-4) of `data`. Used for naming only, as the VPC CNI does, never for security.
fn sha1(data: &[u8]) -> [u8; 20] {
    let mut h: [u32; 5] = [
        0x6745_2301,
        0xefcd_ab89,
        0x98ba_dcfe,
        0x1032_5476,
        0xc3d2_e1f0,
    ];
    let mut message = data.to_vec();
    let bit_len = (data.len() as u64).wrapping_mul(8);
    message.push(0x80);
    while message.len() % 64 != 56 {
        message.push(0);
    }
    message.extend_from_slice(&bit_len.to_be_bytes());

    for block in message.chunks_exact(64) {
        let mut w = [0u32; 80];
        for (i, word) in block.chunks_exact(4).enumerate() {
            w[i] = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
        }
        for i in 16..80 {
            w[i] = (w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16]).rotate_left(1);
        }
        let [mut a, mut b, mut c, mut d, mut e] = h;
        for (i, &wi) in w.iter().enumerate() {
            let (f, k) = match i {
                0..=19 => ((b & c) | (!b & d), 0x5a82_7999),
                20..=39 => (b ^ c ^ d, 0x6ed9_eba1),
                40..=59 => ((b & c) | (b & d) | (c & d), 0x8f1b_bcdc),
                _ => (b ^ c ^ d, 0xca62_c1d6),
            };
            let t = a
                .rotate_left(5)
                .wrapping_add(f)
                .wrapping_add(e)
                .wrapping_add(k)
                .wrapping_add(wi);
            e = d;
            d = c;
            c = b.rotate_left(30);
            b = a;
            a = t;
        }
        for (hi, v) in h.iter_mut().zip([a, b, c, d, e]) {
            *hi = hi.wrapping_add(v);
        }
    }

    let mut out = [0u8; 20];
    for (chunk, word) in out.chunks_exact_mut(4).zip(h) {
        chunk.copy_from_slice(&word.to_be_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn sha1_matches_the_standard_vectors() {
        assert_eq!(hex(&sha1(b"")), "da39a3ee5e6b4b0d3255bfef95601890afd80709");
        assert_eq!(
            hex(&sha1(b"abc")),
            "a9993e364706816aba3e25717850c26c9cd0d89d"
        );
        assert_eq!(
            hex(&sha1(
                b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"
            )),
            "84983e441c3bd26ebaae4aa1f95129e5e54670f1"
        );
        assert_eq!(
            hex(&sha1(&[b'a'; 1000])),
            "291e9a6c66994949b57ba5e650361e98fc36b1ba"
        );
    }

    #[test]
    fn host_veth_names_follow_the_vpc_cni() {
        // SHA-1("default.client-b6989bf87-2bgtc") starts with c95a4947e07, the suffix the
        // Calico-compatible naming produces for that pod.
        assert_eq!(
            host_veth_name("default", "client-b6989bf87-2bgtc"),
            "enic95a4947e07"
        );
        assert_eq!(host_veth_name("default", "nginx"), "enic440f455693");
        assert_eq!(host_veth_name("kube-system", "kube-dns"), "enie88da174fa4");
        for (ns, pod) in [("default", "httpd"), ("default", "amazonlinux")] {
            let name = host_veth_name(ns, pod);
            assert_eq!(name.len(), 14, "{name}");
            assert!(name.len() <= MAX_IFNAME_LEN);
            assert!(name.starts_with(HOST_VETH_PREFIX));
            assert!(name[3..].bytes().all(|b| b.is_ascii_hexdigit()));
        }
        assert_ne!(
            host_veth_name("default", "nginx"),
            host_veth_name("default", "httpd")
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
