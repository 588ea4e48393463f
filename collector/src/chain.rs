//! The node's digest chain, kept in the spool: entries as files are spooled, a signed digest
//! every interval and at shutdown, each linked to the one before.
//!
//! Layout under `<spool>/digest/`:
//! - `entries/<seq>.prepared`: a file's entry (key, size, SHA-256, records, times, loss
//!   records), written and synced by [`crate::spool::Spool::commit`] *before* the file moves
//!   into `ready/`; renamed `entries/<seq>.json` right after. A `.prepared` found at start is
//!   confirmed when its file is in `ready/`, otherwise replaced by a lost-sequence entry.
//! - `entries/<seq>.json`: confirmed entries, and lost-sequence entries (a file given up, with
//!   why; at an unclean start, every sequence number the previous collector took but left no
//!   entry for). Nothing leaves this directory except into a digest.
//! - `next.json`: a signed digest being put in place; `last.json`: the last one put in
//!   place. The chain continues from `last.json` across restarts, SIGKILL included.
//!
//! [`Sealer::seal`] (the shipper runs it, so signing never waits in the reader and a failing
//! KMS only delays digests) builds the next digest from the confirmed entries and
//! `last.json`, signs it, writes it as `next.json`, then completes it: the digest into `ready/`
//! under its key (shipped like any file, so an S3 outage delays it and loses nothing), its
//! entries removed, `next.json` renamed `last.json`. Every step of completing is idempotent
//! and redone from `next.json` after a crash. Without `last.json` (a first start, or a spool
//! lost) a new chain starts, and its first digest says why.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::{
    config::SigningConfig,
    digest::{Document, FORMAT, Link, LostSequence, ObjectEntry, Signed},
    loss::LossSource,
    sign::{SignError, Signer},
};

/// Why a chain starts without a previous digest.
pub const NEW_CHAIN: &str = "no previous digest in the spool: the collector's first start \
                             with digests, or its spool was lost";

/// A digest could not be sealed now; its entries wait for the next attempt.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    /// A file of the chain's directory.
    #[error("digest chain {path}: {what}")]
    Io {
        /// Which.
        path: PathBuf,
        /// What was being done.
        what: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A file of the chain's directory that does not parse.
    #[error("digest chain {path}: {why}")]
    Corrupt {
        /// Which.
        path: PathBuf,
        /// Why.
        why: String,
    },
    /// Signing failed.
    #[error(transparent)]
    Sign(#[from] SignError),
}

fn io<T>(result: io::Result<T>, path: &Path, what: &'static str) -> Result<T, ChainError> {
    result.map_err(|source| ChainError::Io {
        path: path.to_owned(),
        what,
        source,
    })
}

/// One entry of the chain's directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
enum Entry {
    Object(ObjectEntry),
    Lost(LostSequence),
}

/// The SHA-256 (hex) and size of everything `reader` yields.
pub fn sha256_of(mut reader: impl io::Read) -> io::Result<(String, u64)> {
    let mut hasher = Sha256::new();
    let mut buffer = vec![0; 256 * 1024];
    let mut bytes = 0;
    loop {
        let n = reader.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
        bytes += n as u64;
    }
    Ok((data_encoding::HEXLOWER.encode(&hasher.finalize()), bytes))
}

/// SHA-256 of `bytes`, hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    data_encoding::HEXLOWER.encode(&Sha256::digest(bytes))
}

/// The chain's directory in the spool at `root`.
pub fn dir(root: &Path) -> PathBuf {
    root.join("digest")
}

fn entries_dir(root: &Path) -> PathBuf {
    dir(root).join("entries")
}

/// Writes `bytes` to `path` through a temporary file, synced, renamed and the directory
/// synced.
fn write_durably(path: &Path, bytes: &[u8]) -> Result<(), ChainError> {
    let parent = path.parent().unwrap_or(Path::new("."));
    io(fs::create_dir_all(parent), parent, "creating")?;
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let temp = parent.join(format!(".{name}.tmp"));
    let written = fs::write(&temp, bytes)
        .and_then(|()| fs::File::open(&temp)?.sync_all())
        .and_then(|()| fs::rename(&temp, path));
    if written.is_err() {
        // A full disk: nothing half-written stays behind.
        let _ = fs::remove_file(&temp);
    }
    io(written, path, "writing")?;
    io(
        fs::File::open(parent).and_then(|d| d.sync_all()),
        parent,
        "syncing",
    )
}

fn entry_path(root: &Path, sequence: u64, extension: &str) -> PathBuf {
    entries_dir(root).join(format!("{sequence:06}.{extension}"))
}

/// Writes the entry of a file about to move into `ready/` (`.prepared`).
pub fn prepare(root: &Path, object: &ObjectEntry) -> Result<(), ChainError> {
    let bytes = serde_json::to_vec(&Entry::Object(object.clone())).unwrap_or_default();
    write_durably(&entry_path(root, object.sequence, "prepared"), &bytes)
}

/// Confirms the entry of a file now in `ready/`.
pub fn confirm(root: &Path, sequence: u64) -> Result<(), ChainError> {
    let to = entry_path(root, sequence, "json");
    io(
        fs::rename(entry_path(root, sequence, "prepared"), &to),
        &to,
        "confirming",
    )
}

/// Records that the file of `sequence` was given up (replacing a prepared entry).
pub fn lose(
    root: &Path,
    sequence: u64,
    loss_source: LossSource,
    detail: &str,
) -> Result<(), ChainError> {
    let entry = Entry::Lost(LostSequence {
        sequence,
        loss_source,
        detail: detail.to_owned(),
    });
    let bytes = serde_json::to_vec(&entry).unwrap_or_default();
    write_durably(&entry_path(root, sequence, "json"), &bytes)?;
    match fs::remove_file(entry_path(root, sequence, "prepared")) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => io(Err(e), &entry_path(root, sequence, "prepared"), "removing"),
    }
}

/// Every entry file of the chain's directory with `extension`, in sequence order.
fn entry_files(root: &Path, extension: &str) -> Result<Vec<(u64, PathBuf)>, ChainError> {
    let dir = entries_dir(root);
    let listing = match fs::read_dir(&dir) {
        Ok(listing) => listing,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return io(Err(e), &dir, "listing"),
    };
    let mut found = Vec::new();
    for entry in listing {
        let path = io(entry, &dir, "listing")?.path();
        let sequence = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(&format!(".{extension}")))
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(sequence) = sequence {
            found.push((sequence, path));
        }
    }
    found.sort();
    Ok(found)
}

fn read_entry(path: &Path) -> Result<Entry, ChainError> {
    let bytes = io(fs::read(path), path, "reading")?;
    serde_json::from_slice(&bytes).map_err(|e| ChainError::Corrupt {
        path: path.to_owned(),
        why: e.to_string(),
    })
}

/// The last digest put in place, with the bytes of its file.
fn last(root: &Path) -> Result<Option<(Signed, Vec<u8>)>, ChainError> {
    read_signed(&dir(root).join("last.json"))
}

/// The signed digest in the file at `path`, with its bytes; `None` when there is no such file.
fn read_signed(path: &Path) -> Result<Option<(Signed, Vec<u8>)>, ChainError> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return io(Err(e), path, "reading"),
    };
    let signed = Signed::parse(&bytes).map_err(|e| ChainError::Corrupt {
        path: path.to_owned(),
        why: e.to_string(),
    })?;
    Ok(Some((signed, bytes)))
}

/// At the spool's opening, before anything is written: confirms each prepared entry whose
/// file reached `ready/`, turns the others into lost sequences, and gives a lost-sequence
/// entry to every number below `next_seq` taken since the last digest that has none — after
/// an unclean stop, a file that was being written when the collector died; after a clean one,
/// a file given up when not even its entry could be written (a full disk). Returns how many
/// sequence numbers it recorded as lost.
pub fn recover(root: &Path, next_seq: u64, unclean: bool) -> Result<usize, ChainError> {
    let mut lost = 0;
    for (sequence, path) in entry_files(root, "prepared")? {
        let Entry::Object(object) = read_entry(&path)? else {
            continue;
        };
        if root.join("ready").join(&object.key).exists() {
            confirm(root, sequence)?;
        } else {
            lose(
                root,
                sequence,
                LossSource::CollectorRestart,
                "the collector stopped before the file was spooled",
            )?;
            lost += 1;
        }
    }
    let confirmed = entry_files(root, "json")?;
    let sealed = last(root)?.and_then(|(signed, _)| {
        let document = signed.document;
        let objects = document.objects.iter().map(|o| o.sequence);
        objects
            .chain(document.lost_sequences.iter().map(|l| l.sequence))
            .max()
    });
    let first = match (sealed, confirmed.first()) {
        (Some(sealed), _) => sealed + 1,
        (None, Some((sequence, _))) => *sequence,
        // Nothing to continue from: the new chain's first digest says so.
        (None, None) => return Ok(lost),
    };
    let (source, detail) = if unclean {
        (
            LossSource::CollectorRestart,
            "the collector stopped while the file was being written",
        )
    } else {
        (
            LossSource::SpoolError,
            "the file was given up when the spool had no room even for its entry",
        )
    };
    let present: std::collections::BTreeSet<u64> = confirmed.iter().map(|(s, _)| *s).collect();
    for sequence in (first..next_seq).filter(|s| !present.contains(s)) {
        lose(root, sequence, source, detail)?;
        lost += 1;
    }
    Ok(lost)
}

/// Seals and signs the node's digests.
pub struct Sealer {
    root: PathBuf,
    cluster: String,
    node: String,
    interval_s: u64,
    signing: SigningConfig,
    signer: Option<Signer>,
    started_s: u64,
    /// When the last digest was sealed (Unix s); `None` before the first of this run.
    sealed_s: Option<u64>,
}

impl Sealer {
    /// A sealer for the spool at `root`, sealing every `interval` (aligned on multiples of
    /// it, in UTC) with the key `signing` names, for a collector started at `started_s`.
    pub fn new(
        root: &Path,
        cluster: &str,
        node: &str,
        interval: Duration,
        signing: SigningConfig,
        started_s: u64,
    ) -> Self {
        Self {
            root: root.to_owned(),
            cluster: cluster.to_owned(),
            node: node.to_owned(),
            interval_s: interval.as_secs().max(1),
            signing,
            signer: None,
            started_s,
            sealed_s: None,
        }
    }

    /// Whether a digest is due at `now_s`: an interval boundary passed since the last seal
    /// (or since the start), or one is half-way in place.
    pub fn due(&self, now_s: u64) -> bool {
        let since = self.sealed_s.unwrap_or(self.started_s);
        now_s / self.interval_s != since / self.interval_s
            || dir(&self.root).join("next.json").exists()
    }

    /// Seals, signs and puts in place the next digest (with every confirmed entry so far, or
    /// none); returns its key. On failure nothing is lost: the entries stay, and the next
    /// call tries again.
    #[tracing::instrument(skip(self), fields(node = self.node, cluster = self.cluster))]
    pub async fn seal(&mut self, now_s: u64) -> Result<String, ChainError> {
        self.complete()?;
        let (previous, number, from_s, chain_start) = match last(&self.root)? {
            Some((signed, bytes)) => (
                Some(Link {
                    key: signed.document.key(),
                    sha256: sha256_hex(&bytes),
                }),
                signed.document.number + 1,
                signed.document.to_s,
                None,
            ),
            None => (None, 0, self.started_s, Some(NEW_CHAIN.to_owned())),
        };
        let mut objects = Vec::new();
        let mut lost_sequences = Vec::new();
        for (_, path) in entry_files(&self.root, "json")? {
            match read_entry(&path)? {
                Entry::Object(object) => objects.push(object),
                Entry::Lost(lost) => lost_sequences.push(lost),
            }
        }
        let signer = match &self.signer {
            Some(signer) => signer,
            None => self.signer.insert(self.signing.signer(&self.root).await?),
        };
        let document = Document {
            format: FORMAT.to_owned(),
            cluster: self.cluster.clone(),
            node: self.node.clone(),
            number,
            from_s,
            to_s: now_s.max(from_s),
            previous,
            chain_start,
            objects,
            lost_sequences,
            collector_version: env!("CARGO_PKG_VERSION").to_owned(),
            signing: signer.signing(),
        };
        let body = document.body_bytes();
        let signature = signer.sign(&Document::signed_message(&body)).await?;
        write_durably(
            &dir(&self.root).join("next.json"),
            &Document::render(&body, &signature),
        )?;
        let key = self.complete()?.unwrap_or_default();
        self.sealed_s = Some(now_s);
        tracing::info!(
            key,
            number,
            objects = document.objects.len(),
            lost_sequences = document.lost_sequences.len(),
            "digest sealed"
        );
        Ok(key)
    }

    /// Completes a digest written as `next.json`: into `ready/`, its entries removed, kept as
    /// `last.json`. Returns its key; `None` when there was none.
    fn complete(&self) -> Result<Option<String>, ChainError> {
        let next = dir(&self.root).join("next.json");
        let Some((signed, bytes)) = read_signed(&next)? else {
            return Ok(None);
        };
        let key = signed.document.key();
        write_durably(&self.root.join("ready").join(&key), &bytes)?;
        let document = &signed.document;
        let sequences = document.objects.iter().map(|o| o.sequence);
        for sequence in sequences.chain(document.lost_sequences.iter().map(|l| l.sequence)) {
            let path = entry_path(&self.root, sequence, "json");
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return io(Err(e), &path, "removing a sealed entry"),
            }
        }
        let last = dir(&self.root).join("last.json");
        io(fs::rename(&next, &last), &last, "renaming into place")?;
        io(
            fs::File::open(dir(&self.root)).and_then(|d| d.sync_all()),
            &dir(&self.root),
            "syncing",
        )?;
        Ok(Some(key))
    }
}
