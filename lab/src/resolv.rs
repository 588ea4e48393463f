//! Each pod's `/etc/resolv.conf`, as the kubelet writes it for `dnsPolicy: ClusterFirst`:
//! kube-dns's ClusterIP as the nameserver, the pod's namespace's search path and `ndots:5`.
//!
//! [`ResolvConfs::write`] puts the file at `/etc/netns/<pod netns>/resolv.conf`: every program
//! the lab runs in a pod goes through `ip netns exec`, which bind-mounts that file over
//! `/etc/resolv.conf` in the program's own mount namespace, so curl in the client pod resolves
//! through kube-dns exactly as in a pod, and the host's own `/etc/resolv.conf` is never touched.
//! Dropping [`ResolvConfs`] removes every directory it created (the namespaces' names are the
//! run's own, so no directory is shared with anything else); [`sweep_stale`] removes those of
//! runs killed before they could.
//!
//! Besides `ndots:5`, the options say `timeout:1 attempts:1` (what a pod's `dnsConfig.options`
//! adds): glibc's defaults (5 s, two attempts per name and search domain) would let one lookup
//! that kube-dns never answers take a minute.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use crate::{LabError, names, pods::CLUSTER_DOMAIN, topology::is_stale};
use tollgate_enforcer::causes::Causes;

/// Where `ip netns exec` looks for a namespace's own `/etc` files.
pub const NETNS_ETC: &str = "/etc/netns";

/// The kubelet's `resolv.conf` for a pod of `namespace`, with `nameserver`.
pub fn resolv_conf(namespace: &str, nameserver: IpAddr) -> String {
    format!(
        "search {namespace}.svc.{CLUSTER_DOMAIN} svc.{CLUSTER_DOMAIN} {CLUSTER_DOMAIN}\n\
         nameserver {nameserver}\n\
         options ndots:5 timeout:1 attempts:1\n"
    )
}

/// The pods' `/etc/netns/<netns>/` directories; dropping it removes them, and `/etc/netns`
/// itself once empty (an empty one means nothing to `ip netns exec`).
#[derive(Debug, Default)]
pub struct ResolvConfs {
    dirs: Vec<PathBuf>,
}

impl ResolvConfs {
    /// Writes the `resolv.conf` of each `(netns, namespace)` with `nameserver`. On error, what
    /// was written is removed.
    pub fn write<'a>(
        pods: impl IntoIterator<Item = (&'a str, &'a str)>,
        nameserver: IpAddr,
    ) -> Result<Self, LabError> {
        let mut written = Self::default();
        for (netns, namespace) in pods {
            let dir = Path::new(NETNS_ETC).join(netns);
            let failed = |what: &'static str, source| LabError::File {
                path: dir.clone(),
                what,
                source,
            };
            std::fs::create_dir_all(&dir).map_err(|source| failed("creating", source))?;
            written.dirs.push(dir.clone());
            std::fs::write(dir.join("resolv.conf"), resolv_conf(namespace, nameserver))
                .map_err(|source| failed("writing resolv.conf into", source))?;
            tracing::debug!(netns, namespace, %nameserver, "resolv.conf written");
        }
        Ok(written)
    }
}

impl Drop for ResolvConfs {
    fn drop(&mut self) {
        for dir in &self.dirs {
            if let Err(error) = std::fs::remove_dir_all(dir) {
                tracing::warn!(dir = %dir.display(), error = %Causes(&error), "pod /etc directory not removed");
            }
        }
        // Fails, and is meant to, while anything (another run's pods) is still there.
        let _ = std::fs::remove_dir(NETNS_ETC);
    }
}

/// Removes the `/etc/netns/` directories of lab runs whose process is gone and that are older
/// than [`STALE_AFTER`](crate::topology::STALE_AFTER); returns them.
pub fn sweep_stale() -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(NETNS_ETC) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let Some(pid) = entry.file_name().to_str().and_then(names::creator_pid) else {
            continue;
        };
        if !is_stale(pid, &entry.path()) {
            continue;
        }
        match std::fs::remove_dir_all(&path) {
            Ok(()) => removed.push(path),
            Err(error) => {
                tracing::warn!(dir = %path.display(), error = %Causes(&error), "stale directory kept")
            }
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kubelets_resolv_conf() {
        assert_eq!(
            resolv_conf("default", "198.19.0.10".parse().unwrap()),
            "search default.svc.cluster.local svc.cluster.local cluster.local\n\
             nameserver 198.19.0.10\n\
             options ndots:5 timeout:1 attempts:1\n"
        );
    }
}
