//! The local spool: closed Parquet files wait here, durably, until the sink has them.
//!
//! Layout under the spool directory:
//! - `tmp/`: files being written. A file is only ever written here; on startup whatever is
//!   left in `tmp/` was never acknowledged (the collector died while writing) and is removed.
//! - `ready/<key>`: closed files, each under its object key (`cluster=…/dt=…/hour=…/….parquet`).
//!   [`Spool::commit`] fsyncs the file, renames it here and fsyncs the directory: from then on
//!   it is acknowledged and survives a crash. The shipper removes it only after the sink has
//!   it ([`remove`]).
//! - `digest/`: the digest chain ([`crate::chain`]): each file's entry (its SHA-256, taken here
//!   as it is committed, before any upload) and every sequence number given up, until the
//!   shipper seals them into a signed digest.
//! - `state`: the next file sequence number (so names never repeat across restarts), whether a
//!   collector is running (a restart that finds it running knows the previous one died without
//!   flushing), until when records were acknowledged, how far the probe's ring-buffer reserve
//!   failures were reported, and the losses not yet in an acknowledged file (the loss ledger).
//!   It is a pre-allocated file saved in place ([`crate::state_file`]): saving it needs no new
//!   space, so a full disk never stops the collector from keeping it. A spool of an earlier
//!   version kept it in `state.json`, which is read once and removed when `state` is allocated.
//!
//! The spool is bounded ([`Spool::commit`] refuses a file that would take it past its byte
//! limit); refused files are reported by the caller as lost, never silently dropped.
//!
//! A full disk does not stop the spool from opening: when its directories or its state file
//! cannot be created, it opens with its state unsaved ([`Recovery::unsaved`]), every
//! [`Spool::begin`] tries again (and fails while there is no room: no file is begun whose
//! sequence number is not saved), and the caller counts the records it could not write.

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::chain;
use crate::digest::ObjectEntry;
use crate::loss::{LossSource, LossSpan};
use crate::state_file::StateFile;
use tollgate_enforcer::causes::Causes;

/// A spool operation failed.
#[derive(Debug, thiserror::Error)]
#[error("spool {path}: {what}")]
pub struct SpoolError {
    /// The file or directory.
    pub path: PathBuf,
    /// What was being done.
    pub what: &'static str,
    /// The I/O error.
    #[source]
    pub source: std::io::Error,
}

fn io<T>(result: std::io::Result<T>, path: &Path, what: &'static str) -> Result<T, SpoolError> {
    result.map_err(|source| SpoolError {
        path: path.to_owned(),
        what,
        source,
    })
}

/// What the state file keeps.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct State {
    next_seq: u64,
    running: bool,
    /// When the running (or last) collector started, Unix seconds.
    #[serde(default)]
    started_s: u64,
    /// Files that collector committed.
    #[serde(default)]
    committed: u64,
    acknowledged_until_s: u64,
    /// The probe's ring-buffer reserve failures (summed over CPUs) that loss records account
    /// for, and when the counter was read (Unix seconds). The probe's counters are pinned and
    /// outlive a collector, so the next one reports only what came after.
    #[serde(default)]
    ringbuf_reported: Option<RingbufMark>,
    /// Losses not yet in a file the spool acknowledged, merged per source.
    #[serde(default)]
    losses: Vec<LossSpan>,
}

/// How far the ring-buffer reserve failures have been reported.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RingbufMark {
    /// The counter's value (summed over CPUs) when it was read.
    pub failed: u64,
    /// When it was read, Unix seconds.
    pub read_s: u64,
}

/// What opening the spool found of a previous run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Files waiting to be shipped.
    pub pending: usize,
    /// Unfinished files removed from `tmp/`.
    pub removed_partial: usize,
    /// The previous collector did not stop cleanly: records after this Unix second may be
    /// missing (the end of its last acknowledged record, or its start when it acknowledged
    /// none).
    pub unclean_since_s: Option<u64>,
    /// How far the previous collector reported the probe's ring-buffer reserve failures;
    /// `None` when no collector used this spool before.
    pub ringbuf_reported: Option<RingbufMark>,
    /// Losses the previous collector had not written as records yet: to be written first.
    pub losses: Vec<LossSpan>,
    /// Why the state could not be saved (no room for the spool's directories or its state
    /// file); `None` when it was.
    pub unsaved: Option<String>,
    /// Sequence numbers of the previous collector's files that never reached `ready/`, now
    /// lost-sequence entries of the digest chain.
    pub lost_sequences: usize,
}

/// What a closed file holds, for its digest entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileFacts {
    /// Its sequence number (from [`Spool::begin`]).
    pub sequence: u64,
    /// Records in it.
    pub records: u64,
    /// First record's start (Unix s).
    pub first_record_s: u64,
    /// Last record's end (Unix s): records up to here are acknowledged once it is spooled.
    pub last_record_s: u64,
    /// The loss records among them.
    pub loss_records: Vec<LossSpan>,
}

/// A closed file waiting in the spool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spooled {
    /// Object key (relative, `/`-separated).
    pub key: String,
    /// Where it is.
    pub path: PathBuf,
    /// Size.
    pub bytes: u64,
}

/// Outcome of [`Spool::commit`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Commit {
    /// The file is in the spool.
    Spooled(Spooled),
    /// The file would take the spool past its limit and was removed.
    Full {
        /// Its size.
        bytes: u64,
        /// Bytes already waiting.
        waiting: u64,
    },
}

/// The spool directory.
#[derive(Debug)]
pub struct Spool {
    root: PathBuf,
    max_bytes: u64,
    state: State,
    /// The state file; `None` until it could be allocated.
    file: Option<StateFile>,
    /// Whether `state` changed since it was last saved.
    unsaved: bool,
}

impl SpoolError {
    /// The error with its cause, on one line (for logs and loss details).
    pub fn detail(&self) -> String {
        format!("{self}: {}", self.source)
    }
}

impl Spool {
    /// Opens (creating) the spool at `root`, removes unfinished files, and marks a collector
    /// as running since `now_s` (Unix seconds). Fails only when the state of an earlier
    /// collector cannot be read or its unfinished files not removed; a spool that cannot be
    /// written (a full disk) opens with its state unsaved ([`Recovery::unsaved`]).
    pub fn open(root: &Path, max_bytes: u64, now_s: u64) -> Result<(Self, Recovery), SpoolError> {
        let unwritable = create_dirs(root).err();
        let (file, state) = read_state(root)?;
        let tmp = root.join("tmp");
        let mut removed_partial = 0;
        match fs::read_dir(&tmp) {
            Ok(entries) => {
                for entry in entries {
                    let path = io(entry, &tmp, "listing")?.path();
                    io(fs::remove_file(&path), &path, "removing an unfinished file")?;
                    removed_partial += 1;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(Err(e), &tmp, "listing")?),
        }
        let lost_sequences =
            chain::recover(root, state.next_seq, state.running).map_err(|e| SpoolError {
                path: chain::dir(root),
                what: "recovering the digest chain's entries",
                source: std::io::Error::other(e.to_string()),
            })?;
        let mut spool = Self {
            root: root.to_owned(),
            max_bytes,
            state,
            file,
            unsaved: true,
        };
        let recovery = Recovery {
            lost_sequences,
            pending: spool.pending()?.len(),
            removed_partial,
            unclean_since_s: spool.state.running.then_some(if spool.state.committed > 0 {
                spool.state.acknowledged_until_s
            } else {
                spool.state.acknowledged_until_s.max(spool.state.started_s)
            }),
            ringbuf_reported: spool.state.ringbuf_reported,
            // They also stay in the state until the caller notes the ledger again, so a
            // collector that dies before writing them leaves them in place.
            losses: spool.state.losses.clone(),
            unsaved: None,
        };
        spool.state.running = true;
        spool.state.started_s = now_s;
        spool.state.committed = 0;
        let unsaved = match unwritable {
            Some(error) => Some(error.detail()),
            None => spool.save().err().map(|error| error.detail()),
        };
        Ok((
            spool,
            Recovery {
                unsaved,
                ..recovery
            },
        ))
    }

    /// The spool directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A fresh path in `tmp/` for a file being written, with the sequence number its object
    /// name must carry (taken from the state, which is saved first so that a number is never
    /// used twice).
    pub fn begin(&mut self) -> Result<(u64, PathBuf), SpoolError> {
        create_dirs(&self.root)?;
        let seq = self.state.next_seq;
        self.state.next_seq += 1;
        self.unsaved = true;
        self.save()?;
        Ok((seq, self.root.join("tmp").join(format!("{seq:06}.parquet"))))
    }

    /// Moves the finished file `temp` (from [`Spool::begin`]) into `ready/<key>`, durably,
    /// with its digest entry (its SHA-256 taken now), and records that records up to the
    /// file's last are acknowledged; or removes it when the spool has no room for it (its
    /// sequence number then becomes a lost-sequence entry).
    pub fn commit(
        &mut self,
        temp: &Path,
        key: &str,
        facts: FileFacts,
    ) -> Result<Commit, SpoolError> {
        let until_s = facts.last_record_s;
        let file = io(File::open(temp), temp, "opening")?;
        io(file.sync_all(), temp, "syncing")?;
        let (sha256, bytes) = io(chain::sha256_of(&file), temp, "hashing")?;
        let waiting = self.waiting_bytes()?;
        if waiting + bytes > self.max_bytes {
            io(
                fs::remove_file(temp),
                temp,
                "removing a file the spool has no room for",
            )?;
            self.lose_sequence(
                facts.sequence,
                LossSource::SpoolFull,
                &format!("{key}: {bytes} bytes do not fit, {waiting} waiting"),
            );
            return Ok(Commit::Full { bytes, waiting });
        }
        let entry = ObjectEntry {
            key: key.to_owned(),
            sequence: facts.sequence,
            bytes,
            sha256,
            records: facts.records,
            first_record_s: facts.first_record_s,
            last_record_s: facts.last_record_s,
            loss_records: facts.loss_records,
        };
        chain::prepare(&self.root, &entry).map_err(|e| SpoolError {
            path: chain::dir(&self.root),
            what: "writing the file's digest entry",
            source: std::io::Error::other(e.to_string()),
        })?;
        let path = self.root.join("ready").join(key);
        let dir = path.parent().unwrap_or(&self.root).to_owned();
        // The shipper removes partition directories once empty; should it remove this one (or
        // one above it) while it is created or before the rename, create it again.
        let mut attempts = 0;
        loop {
            match fs::create_dir_all(&dir).and_then(|()| fs::rename(temp, &path)) {
                Ok(()) => break,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && attempts < 3 => {
                    attempts += 1;
                }
                Err(e) => return io(Err(e), &path, "moving into ready/"),
            }
        }
        // From here on the file is in `ready/` and will be shipped: whatever fails now, it is
        // not lost (an entry left prepared is confirmed at the next start).
        if let Err(error) = io(File::open(&dir).and_then(|d| d.sync_all()), &dir, "syncing") {
            tracing::warn!(error = error.detail(), key, "spooled, but not synced");
        }
        if let Err(error) = chain::confirm(&self.root, facts.sequence) {
            tracing::warn!(error = %Causes(&error), key, "spooled; its digest entry is confirmed at the next start");
        }
        self.state.acknowledged_until_s = self.state.acknowledged_until_s.max(until_s);
        self.state.committed += 1;
        self.unsaved = true;
        if let Err(error) = self.save() {
            // Saved with the next state change; a crash before it dates the next collector's
            // `collector-restart` gap from an earlier acknowledgement, which overstates it.
            tracing::warn!(
                error = error.detail(),
                key,
                "spooled; its state is not saved"
            );
        }
        Ok(Commit::Spooled(Spooled {
            key: key.to_owned(),
            path,
            bytes,
        }))
    }

    /// Records that the file of `sequence` was given up, at `source`, in the digest chain (a
    /// failure to is logged: the loss record of the file's records still says it).
    pub fn lose_sequence(&self, sequence: u64, source: LossSource, detail: &str) {
        if let Err(error) = chain::lose(&self.root, sequence, source, detail) {
            tracing::error!(error = %Causes(&error), sequence, "a lost file's sequence number is not in the digest chain");
        }
    }

    /// Every file waiting in `ready/`, in key order.
    pub fn pending(&self) -> Result<Vec<Spooled>, SpoolError> {
        pending_in(&self.root)
    }

    /// Bytes waiting in `ready/`.
    pub fn waiting_bytes(&self) -> Result<u64, SpoolError> {
        Ok(self.pending()?.iter().map(|s| s.bytes).sum())
    }

    /// Records how far the ring-buffer reserve failures are reported and which losses are
    /// not yet in an acknowledged file, in memory; [`Spool::save_ledger`] saves them. A change
    /// of the mark's time alone is not one (a mark older than its read only widens the span of
    /// the next `ringbuf-full` record).
    /// `ringbuf` is `None` until the probe's counter was read.
    pub fn note_ledger(&mut self, ringbuf: Option<RingbufMark>, losses: Vec<LossSpan>) {
        let failed = |mark: Option<RingbufMark>| mark.map(|mark| mark.failed);
        if let Some(mark) = ringbuf {
            self.unsaved |= failed(self.state.ringbuf_reported) != Some(mark.failed);
            self.state.ringbuf_reported = Some(mark);
        }
        self.unsaved |= self.state.losses != losses;
        self.state.losses = losses;
    }

    /// Saves the state when it changed since its last save.
    pub fn save_ledger(&mut self) -> Result<(), SpoolError> {
        if self.unsaved { self.save() } else { Ok(()) }
    }

    /// Whether the state holds changes not saved yet.
    pub fn is_unsaved(&self) -> bool {
        self.unsaved
    }

    /// Marks the collector as stopped cleanly.
    pub fn close(mut self) -> Result<(), SpoolError> {
        self.state.running = false;
        self.unsaved = true;
        self.save()
    }

    /// Writes the state in place; allocates the state file first when there is none yet
    /// (then removes the `state.json` of an earlier version).
    fn save(&mut self) -> Result<(), SpoolError> {
        let bytes = serde_json::to_vec(&self.state).unwrap_or_default();
        match &mut self.file {
            Some(file) => {
                let path = file.path().to_owned();
                io(file.save(&bytes), &path, "saving")?;
            }
            None => {
                let path = self.root.join("state");
                self.file = Some(io(StateFile::create(&path, &bytes), &path, "allocating")?);
                for legacy in ["state.json", "state.json.tmp"] {
                    let path = self.root.join(legacy);
                    match fs::remove_file(&path) {
                        Ok(()) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => return io(Err(e), &path, "removing"),
                    }
                }
            }
        }
        self.unsaved = false;
        Ok(())
    }
}

fn create_dirs(root: &Path) -> Result<(), SpoolError> {
    for dir in [root.join("tmp"), root.join("ready")] {
        io(fs::create_dir_all(&dir), &dir, "creating")?;
    }
    Ok(())
}

/// The state file and what it holds; an earlier version's `state.json` when there is no state
/// file; a fresh state when there is neither.
fn read_state(root: &Path) -> Result<(Option<StateFile>, State), SpoolError> {
    let corrupt = |path: &Path, e: serde_json::Error| SpoolError {
        path: path.to_owned(),
        what: "reading",
        source: std::io::Error::other(e),
    };
    let path = root.join("state");
    if let Some((file, bytes)) = io(StateFile::open(&path), &path, "reading")? {
        let state = serde_json::from_slice(&bytes).map_err(|e| corrupt(&path, e))?;
        return Ok((Some(file), state));
    }
    let legacy = root.join("state.json");
    match fs::read(&legacy) {
        Ok(bytes) => Ok((
            None,
            serde_json::from_slice(&bytes).map_err(|e| corrupt(&legacy, e))?,
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok((None, State::default())),
        Err(e) => Err(io(Err(e), &legacy, "reading")?),
    }
}

/// The files waiting under `<root>/ready`, in key order: what the shipper reads, without
/// owning the spool. The shipper removes delivered files (and their emptied partition
/// directories) while the reader lists `ready/` to commit another ([`Spool::commit`] weighs
/// what is waiting): what is gone by the time it is looked at is not waiting, not an error.
pub fn pending_in(root: &Path) -> Result<Vec<Spooled>, SpoolError> {
    let ready = root.join("ready");
    let mut found = Vec::new();
    let mut dirs = vec![ready.clone()];
    while let Some(dir) = dirs.pop() {
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io(Err(e), &dir, "listing")?),
        };
        for entry in entries {
            let entry = io(entry, &dir, "listing")?;
            let path = entry.path();
            let Some(meta) = metadata(&entry)? else {
                continue;
            };
            if meta.is_dir() {
                dirs.push(path);
            } else if let Ok(relative) = path.strip_prefix(&ready) {
                let key = relative
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy())
                    .collect::<Vec<_>>()
                    .join("/");
                found.push(Spooled {
                    key,
                    bytes: meta.len(),
                    path,
                });
            }
        }
    }
    found.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(found)
}

/// The metadata of `entry`, listed in `ready/`; `None` when it was removed since (shipped,
/// or a partition directory emptied by that): a commit must not fail, and lose its file, for
/// a file the shipper just delivered.
fn metadata(entry: &fs::DirEntry) -> Result<Option<fs::Metadata>, SpoolError> {
    match entry.metadata() {
        Ok(meta) => Ok(Some(meta)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => io(Err(e), &entry.path(), "reading metadata"),
    }
}

/// Removes a shipped file, and its partition directories once empty.
pub fn remove(root: &Path, spooled: &Spooled) -> Result<(), SpoolError> {
    match fs::remove_file(&spooled.path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return io(Err(e), &spooled.path, "removing a shipped file"),
    }
    let ready = root.join("ready");
    let mut dir = spooled.path.parent();
    while let Some(d) = dir {
        if d == ready || fs::remove_dir(d).is_err() {
            break;
        }
        dir = d.parent();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A spool root that does not exist yet, in a temporary directory removed with the guard.
    fn spool_root(name: &str) -> (tollgate_test_support::TempDir, PathBuf) {
        let dir = tollgate_test_support::temp_dir(&format!("spool-{name}"));
        let root = dir.path().join("spool");
        (dir, root)
    }

    fn write(path: &Path, bytes: usize) {
        fs::write(path, vec![7u8; bytes]).unwrap();
    }

    fn facts(sequence: u64, last_record_s: u64) -> FileFacts {
        FileFacts {
            sequence,
            records: 1,
            first_record_s: last_record_s,
            last_record_s,
            loss_records: Vec::new(),
        }
    }

    #[test]
    fn commit_pending_remove_and_sequence_survive_reopen() {
        let (_dir, root) = spool_root("cycle");
        let (mut spool, recovery) = Spool::open(&root, 1000, 7).unwrap();
        assert_eq!(recovery, Recovery::default());
        let (seq, temp) = spool.begin().unwrap();
        assert_eq!(seq, 0);
        write(&temp, 100);
        let key = "cluster=c/dt=2026-11-25/hour=06/n-20261125T060000Z-000000.parquet";
        let Commit::Spooled(spooled) = spool.commit(&temp, key, facts(seq, 42)).unwrap() else {
            panic!("not spooled");
        };
        assert_eq!(spool.pending().unwrap(), vec![spooled.clone()]);
        // A file that does not fit is refused and removed.
        let (seq, temp) = spool.begin().unwrap();
        write(&temp, 901);
        assert_eq!(
            spool.commit(&temp, "x.parquet", facts(seq, 43)).unwrap(),
            Commit::Full {
                bytes: 901,
                waiting: 100
            }
        );
        assert!(!temp.exists());
        spool.close().unwrap();

        let (mut spool, recovery) = Spool::open(&root, 1000, 7).unwrap();
        assert_eq!(recovery.pending, 1);
        assert_eq!(recovery.unclean_since_s, None);
        assert_eq!(spool.begin().unwrap().0, 2, "sequence numbers never repeat");
        remove(&root, &spooled).unwrap();
        assert!(spool.pending().unwrap().is_empty());
        assert!(
            !root.join("ready/cluster=c").exists(),
            "empty partitions go"
        );
    }

    #[test]
    fn a_file_shipped_between_the_listing_and_its_metadata_is_not_waiting() {
        let (_dir, root) = spool_root("shipped-while-listed");
        let (mut spool, _) = Spool::open(&root, 1000, 7).unwrap();
        let (seq, temp) = spool.begin().unwrap();
        write(&temp, 100);
        let key = "cluster=c/dt=2026-11-25/hour=06/n-20261125T060000Z-000000.parquet";
        let Commit::Spooled(shipped) = spool.commit(&temp, key, facts(seq, 42)).unwrap() else {
            panic!("not spooled");
        };
        // The interleaving of a commit's listing (the reader) with a delivery (the shipper):
        // the entry is listed, then the shipper removes the file and its partition.
        let partition = shipped.path.parent().unwrap();
        let listed = fs::read_dir(partition).unwrap().next().unwrap().unwrap();
        remove(&root, &shipped).unwrap();
        assert_eq!(
            listed.metadata().unwrap_err().kind(),
            std::io::ErrorKind::NotFound
        );
        assert!(metadata(&listed).unwrap().is_none(), "gone, so not waiting");
    }

    #[test]
    fn the_ring_buffer_mark_outlives_the_collector() {
        let (_dir, root) = spool_root("ringbuf");
        let (mut spool, recovery) = Spool::open(&root, 1000, 7).unwrap();
        assert_eq!(recovery.ringbuf_reported, None);
        let mark = RingbufMark {
            failed: 1234,
            read_s: 9,
        };
        spool.note_ledger(Some(mark), Vec::new());
        spool.close().unwrap();
        let (mut spool, recovery) = Spool::open(&root, 1000, 11).unwrap();
        assert_eq!(recovery.ringbuf_reported, Some(mark));
        // A crash keeps the last mark saved with a state change.
        let later = RingbufMark {
            failed: 2000,
            read_s: 12,
        };
        spool.note_ledger(Some(later), Vec::new());
        spool.begin().unwrap();
        drop(spool);
        let (_, recovery) = Spool::open(&root, 1000, 13).unwrap();
        assert_eq!(recovery.ringbuf_reported, Some(later));
        assert!(recovery.unclean_since_s.is_some());
    }

    #[test]
    fn an_earlier_versions_state_json_is_carried_over_and_removed() {
        let (_dir, root) = spool_root("legacy");
        fs::create_dir_all(&root).unwrap();
        fs::write(
            root.join("state.json"),
            br#"{"next_seq":41,"running":false,"acknowledged_until_s":5}"#,
        )
        .unwrap();
        let (mut spool, recovery) = Spool::open(&root, 1000, 7).unwrap();
        assert_eq!(recovery.unsaved, None);
        assert!(!root.join("state.json").exists());
        assert_eq!(spool.begin().unwrap().0, 41, "the sequence goes on");
        drop(spool);
        let (mut spool, _) = Spool::open(&root, 1000, 8).unwrap();
        assert_eq!(spool.begin().unwrap().0, 42);
    }

    #[test]
    fn an_unclean_stop_is_reported_and_partial_files_removed() {
        let (_dir, root) = spool_root("unclean");
        let (mut spool, _) = Spool::open(&root, 1000, 7).unwrap();
        let (seq, temp) = spool.begin().unwrap();
        write(&temp, 10);
        let Commit::Spooled(_) = spool.commit(&temp, "a.parquet", facts(seq, 1_000)).unwrap()
        else {
            panic!("not spooled");
        };
        let (_, partial) = spool.begin().unwrap();
        write(&partial, 10);
        drop(spool); // no close(): as if killed
        let (_, recovery) = Spool::open(&root, 1000, 7).unwrap();
        assert_eq!(recovery.removed_partial, 1);
        assert_eq!(recovery.pending, 1);
        assert_eq!(
            recovery.lost_sequences, 1,
            "the partial file's number is a lost sequence of the digest chain"
        );
        assert_eq!(
            recovery.unclean_since_s,
            Some(1_000),
            "the last acknowledged record"
        );
        // A collector started at 5,000 dies before acknowledging anything.
        drop(Spool::open(&root, 1000, 5_000).unwrap());
        let (_, recovery) = Spool::open(&root, 1000, 6_000).unwrap();
        assert_eq!(
            recovery.unclean_since_s,
            Some(5_000),
            "the start of a collector that died before acknowledging anything"
        );
        assert!(!partial.exists());
    }
}
