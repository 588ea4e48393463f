//! The bundle's manifest: what was asked, what was read and skipped, and the size and SHA-256
//! of every other file; [`verify`] recomputes them from the directory and names every
//! difference, missing or extra file (only regular files count; each is hashed as a stream).

use std::io::Read as _;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::source::{Links, open_regular, sha256_hex, sha256_stream};

use super::{EvidenceError, FORMAT, MANIFEST, MAX_MANIFEST_BYTES, MAX_PROBLEMS};

/// NetworkPolicies in force, as one source saw them at one time.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PolicySnapshot {
    /// Where they come from: `cluster` (read by the caller), `lab`, or `isolation record`.
    pub source: String,
    /// When (Unix seconds).
    pub at: u64,
    /// The NetworkPolicies, as Kubernetes JSON.
    pub policies: Vec<serde_json::Value>,
}

/// One file of a bundle, in its manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileDigest {
    /// Path relative to the bundle.
    pub path: String,
    /// Size.
    pub bytes: u64,
    /// SHA-256, hex.
    pub sha256: String,
}

/// Row counts of a bundle.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Flow records.
    pub flows: u64,
    /// Isolation records.
    pub isolations: u64,
    /// Loss records.
    pub losses: u64,
    /// Flow-log files read.
    pub sources: u64,
    /// Flow-log files of the window that could not be read (absent from bundles written
    /// before it was counted: none were skipped then, the bundle failed instead).
    #[serde(default)]
    pub skipped: u64,
}

/// A flow-log file of the window that could not be read: none of its records is in the
/// bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkippedSource {
    /// Local path or `s3://bucket/key`.
    pub location: String,
    /// Why, in words.
    pub reason: String,
}

/// A bundle's `manifest.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    /// [`FORMAT`].
    pub format: String,
    /// The pod.
    pub pod: ManifestPod,
    /// The cluster asked for, or null for all.
    pub cluster: Option<String>,
    /// The window.
    pub window: ManifestWindow,
    /// When the bundle was written (Unix seconds).
    pub created: u64,
    /// The flow log read (`s3://…` or a directory; `athena:<workgroup>/<db>.<table> → s3://…`
    /// when Athena chose the objects).
    pub source: String,
    /// What `tollgate` wrote it.
    pub tool: String,
    /// Row counts.
    pub counts: Counts,
    /// The flow-log files of the window that could not be read, and why.
    #[serde(default)]
    pub skipped: Vec<SkippedSource>,
    /// The legal holds placed on the sources and their digests, or why none could be
    /// ([`crate::legal_hold::Holds`]); absent from bundles written before holds.
    #[serde(default)]
    pub legal_holds: Option<serde_json::Value>,
    /// Every other file, sorted by path.
    pub files: Vec<FileDigest>,
}

/// The pod of a manifest.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ManifestPod {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

/// The window of a manifest, in Unix seconds and as RFC 3339.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ManifestWindow {
    /// Start, inclusive.
    pub from: u64,
    /// End, exclusive.
    pub to: u64,
    /// Start, RFC 3339 UTC.
    pub from_utc: String,
    /// End, RFC 3339 UTC.
    pub to_utc: String,
}

pub(super) fn digest(dir: &Path, path: &str) -> Result<FileDigest, EvidenceError> {
    let (bytes, sha256) = hash_regular(&dir.join(path)).map_err(|e| EvidenceError::Write {
        path: dir.join(path),
        message: e.to_string(),
    })?;
    Ok(FileDigest {
        path: path.to_owned(),
        bytes,
        sha256,
    })
}

/// The size and SHA-256 of the regular file `path` — not of what a symbolic link points to,
/// never waiting on a FIFO — read as a stream.
fn hash_regular(path: &Path) -> std::io::Result<(u64, String)> {
    sha256_stream(open_regular(path, Links::Refuse)?)
}

/// What [`verify`] found wrong: the first [`MAX_PROBLEMS`] problems, and how many more.
#[derive(Debug, thiserror::Error)]
#[error(
    "evidence bundle {dir} FAILED verification ({} problems):\n  {}{}",
    problems.len() + more,
    problems.join("\n  "),
    if *more > 0 { format!("\n  … and {more} more") } else { String::new() }
)]
pub struct Tampered {
    /// The bundle.
    pub dir: PathBuf,
    /// One line per problem, the first [`MAX_PROBLEMS`]: the file and what differs.
    pub problems: Vec<String>,
    /// Problems found beyond those.
    pub more: usize,
}

impl Tampered {
    fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_owned(),
            problems: Vec::new(),
            more: 0,
        }
    }

    fn push(&mut self, problem: String) {
        if self.problems.len() < MAX_PROBLEMS {
            self.problems.push(problem);
        } else {
            self.more += 1;
        }
    }

    fn found(&self) -> bool {
        !self.problems.is_empty()
    }
}

/// Re-checks the bundle in `dir`: the manifest parses and has this format, every file it lists
/// is a regular file of the bundle (a symbolic link is never followed, a FIFO never opened)
/// with the listed size and SHA-256 (hashed as a stream), nothing else is there, and — when
/// given — the manifest itself has the SHA-256 noted when the bundle was written. The manifest
/// on success.
#[tracing::instrument(skip(manifest_sha256), fields(dir = %dir.display()))]
pub fn verify(dir: &Path, manifest_sha256: Option<&str>) -> Result<Manifest, Tampered> {
    let mut tampered = Tampered::new(dir);
    let text = match read_manifest(&dir.join(MANIFEST)) {
        Ok(text) => text,
        Err(e) => {
            tampered.push(format!("{MANIFEST}: {e}"));
            return Err(tampered);
        }
    };
    if let Some(expected) = manifest_sha256 {
        let actual = sha256_hex(&text);
        if !actual.eq_ignore_ascii_case(expected) {
            tampered.push(format!(
                "{MANIFEST}: SHA-256 is {actual}, the one noted is {expected}"
            ));
        }
    }
    let manifest: Manifest = match serde_json::from_slice(&text) {
        Ok(manifest) => manifest,
        Err(e) => {
            tampered.push(format!("{MANIFEST}: {e}"));
            return Err(tampered);
        }
    };
    if manifest.format != FORMAT {
        tampered.push(format!(
            "{MANIFEST}: format {:?}, expected {FORMAT:?}",
            manifest.format
        ));
    }
    for listed in &manifest.files {
        let mut parts = Path::new(&listed.path).components();
        let (Some(Component::Normal(name)), None) = (parts.next(), parts.next()) else {
            tampered.push(format!("{}: not a file name of the bundle", listed.path));
            continue;
        };
        match hash_regular(&dir.join(name)) {
            Err(e) => tampered.push(format!("{}: {e}", listed.path)),
            Ok((bytes, sha256)) => {
                if bytes != listed.bytes {
                    tampered.push(format!(
                        "{}: {bytes} bytes, the manifest says {}",
                        listed.path, listed.bytes
                    ));
                }
                if sha256 != listed.sha256 {
                    tampered.push(format!(
                        "{}: SHA-256 is {sha256}, the manifest says {}",
                        listed.path, listed.sha256
                    ));
                }
            }
        }
    }
    match std::fs::read_dir(dir) {
        Err(e) => tampered.push(format!("{}: {e}", dir.display())),
        Ok(entries) => {
            for entry in entries {
                match entry {
                    Err(e) => tampered.push(format!("{}: {e}", dir.display())),
                    Ok(entry) => {
                        let name = entry.file_name().to_string_lossy().into_owned();
                        if name != MANIFEST && !manifest.files.iter().any(|f| f.path == name) {
                            tampered.push(format!("{name}: not in the manifest"));
                        }
                    }
                }
            }
        }
    }
    if tampered.found() {
        Err(tampered)
    } else {
        Ok(manifest)
    }
}

/// The manifest's bytes: a regular file of the bundle, at most [`MAX_MANIFEST_BYTES`].
fn read_manifest(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut text = Vec::new();
    open_regular(path, Links::Refuse)?
        .take(MAX_MANIFEST_BYTES + 1)
        .read_to_end(&mut text)?;
    if text.len() as u64 > MAX_MANIFEST_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("larger than {MAX_MANIFEST_BYTES} bytes: not a manifest `evidence` wrote"),
        ));
    }
    Ok(text)
}
