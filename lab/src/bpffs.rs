//! A bpffs of the run's own, where the agent pins its maps and links as it does under
//! `/sys/fs/bpf` on a node.
//!
//! [`RunBpffs::mount`] mounts a fresh bpffs on `<temp dir>/<run prefix>-bpffs`; dropping it
//! unmounts it (its pins go with it) and removes the directory. [`sweep_stale`] does the same
//! for the mounts of runs that were killed before they could, as
//! [`crate::topology::sweep_stale`] does for their namespaces.

use std::path::{Path, PathBuf};

use crate::{LabError, names, topology::STALE_AFTER};
use tollgate_enforcer::causes::Causes;

/// What the mount directory's name ends with.
const SUFFIX: &str = "-bpffs";

/// The run's bpffs, unmounted on drop.
#[derive(Debug)]
pub struct RunBpffs {
    root: PathBuf,
}

impl RunBpffs {
    /// Mounts a fresh bpffs for the run whose names start with `prefix`.
    pub fn mount(prefix: &str) -> Result<Self, LabError> {
        let root = std::env::temp_dir().join(format!("{prefix}{SUFFIX}"));
        std::fs::create_dir_all(&root).map_err(|source| bpffs_error(&root, "creating", source))?;
        let mounted = rustix::mount::mount(
            "bpf",
            &root,
            "bpf",
            rustix::mount::MountFlags::empty(),
            None,
        );
        if let Err(error) = mounted {
            let _ = std::fs::remove_dir(&root);
            return Err(bpffs_error(&root, "mounting", error.into()));
        }
        Ok(Self { root })
    }

    /// Where it is mounted.
    pub fn root(&self) -> &Path {
        &self.root
    }
}

impl Drop for RunBpffs {
    fn drop(&mut self) {
        unmount(&self.root);
    }
}

/// Unmounts `root` (lazily: pins with open descriptors go once those close) and removes it.
fn unmount(root: &Path) {
    if let Err(error) = rustix::mount::unmount(root, rustix::mount::UnmountFlags::DETACH) {
        let error = std::io::Error::from(error);
        tracing::warn!(root = %root.display(), error = %Causes(&error), "bpffs not unmounted");
        return;
    }
    if let Err(error) = std::fs::remove_dir(root) {
        tracing::warn!(root = %root.display(), error = %Causes(&error), "bpffs directory not removed");
    }
}

/// Unmounts the bpffs of lab runs whose process is gone and that are older than
/// [`STALE_AFTER`]; returns their paths.
pub fn sweep_stale() -> Vec<PathBuf> {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") else {
        return Vec::new();
    };
    let temp = std::env::temp_dir();
    let mut removed = Vec::new();
    for line in mounts.lines() {
        let mut fields = line.split_whitespace();
        let (Some(_), Some(mountpoint), Some("bpf")) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let path = PathBuf::from(mountpoint);
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if path.parent() != Some(temp.as_path()) || !name.ends_with(SUFFIX) {
            continue;
        }
        let Some(pid) = names::creator_pid(name) else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let age = std::fs::metadata(&path)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|modified| modified.elapsed().ok());
        if age.is_none_or(|age| age <= STALE_AFTER) {
            continue;
        }
        unmount(&path);
        tracing::info!(path = %path.display(), pid, "stale lab bpffs unmounted");
        removed.push(path);
    }
    removed
}

fn bpffs_error(path: &Path, what: &'static str, source: std::io::Error) -> LabError {
    LabError::Bpffs {
        path: path.to_owned(),
        what,
        source,
    }
}
