//! The spool's state on disk: a small file allocated once and from then on only overwritten in
//! place, so that saving the state never needs new space on the spool's filesystem. A full disk
//! then cannot stop the collector from keeping its sequence numbers, whether it runs, and its
//! ledger of losses not yet written as records.
//!
//! The file is two slots of [`SLOT_BYTES`]. A save writes the slot the previous save did not
//! (`generation % 2`) and syncs it, so a crash or a torn write leaves the other slot whole. A
//! slot is `magic (8) | generation (u64 LE) | length (u32 LE) | checksum (u64 LE: FNV-1a of
//! generation, length and payload) | payload`, zero-padded; reading takes the valid slot of the
//! highest generation.
//!
//! [`StateFile::create`] writes the whole file under a temporary name (both slots, so their
//! blocks are allocated and written), syncs it, renames it into place and syncs the directory:
//! from then on a save rewrites blocks that exist, which on ext4, XFS and tmpfs takes no new
//! space. Copy-on-write filesystems (btrfs, ZFS) allocate on every write: there a full disk can
//! still fail a save.

use std::fs::{self, File, OpenOptions};
use std::io::{self, ErrorKind};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};

/// Bytes per slot; the file holds two.
pub const SLOT_BYTES: usize = 4096;

const MAGIC: &[u8; 8] = b"TGSTATE1";
const HEADER: usize = 8 + 8 + 4 + 8;

/// The pre-allocated state file.
#[derive(Debug)]
pub struct StateFile {
    file: File,
    path: PathBuf,
    generation: u64,
}

fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325_u64;
    for byte in parts.iter().flat_map(|part| part.iter()) {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

fn slot(generation: u64, payload: &[u8]) -> io::Result<Vec<u8>> {
    let length = u32::try_from(payload.len())
        .ok()
        .filter(|&l| l as usize <= SLOT_BYTES - HEADER)
        .ok_or_else(|| {
            io::Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "a state of {} bytes does not fit a slot of {SLOT_BYTES}",
                    payload.len()
                ),
            )
        })?;
    let mut bytes = Vec::with_capacity(SLOT_BYTES);
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&generation.to_le_bytes());
    bytes.extend_from_slice(&length.to_le_bytes());
    let checksum = fnv1a(&[&generation.to_le_bytes(), &length.to_le_bytes(), payload]);
    bytes.extend_from_slice(&checksum.to_le_bytes());
    bytes.extend_from_slice(payload);
    bytes.resize(SLOT_BYTES, 0);
    Ok(bytes)
}

/// The generation and payload of a slot, `None` when it is not a valid one.
fn parse(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let field = |at: usize, len: usize| bytes.get(at..at + len);
    if field(0, 8)? != MAGIC {
        return None;
    }
    let generation = u64::from_le_bytes(field(8, 8)?.try_into().ok()?);
    let length_bytes: [u8; 4] = field(16, 4)?.try_into().ok()?;
    let checksum = u64::from_le_bytes(field(20, 8)?.try_into().ok()?);
    let payload = field(HEADER, u32::from_le_bytes(length_bytes) as usize)?;
    (fnv1a(&[&generation.to_le_bytes(), &length_bytes, payload]) == checksum)
        .then_some((generation, payload))
}

impl StateFile {
    /// Opens the state file at `path` for saves in place; with it, the payload of its newest
    /// valid slot. `None` when there is no such file.
    pub fn open(path: &Path) -> io::Result<Option<(Self, Vec<u8>)>> {
        let file = match OpenOptions::new().read(true).write(true).open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut bytes = vec![0; 2 * SLOT_BYTES];
        file.read_exact_at(&mut bytes, 0)?;
        let newest = bytes
            .chunks(SLOT_BYTES)
            .filter_map(parse)
            .max_by_key(|(generation, _)| *generation)
            .ok_or_else(|| io::Error::new(ErrorKind::InvalidData, "no valid slot"))?;
        let (generation, payload) = (newest.0, newest.1.to_vec());
        let state = Self {
            file,
            path: path.to_owned(),
            generation,
        };
        Ok(Some((state, payload)))
    }

    /// Allocates the state file at `path` with `payload` as its state. Nothing is left behind
    /// when it fails (a full disk).
    pub fn create(path: &Path, payload: &[u8]) -> io::Result<Self> {
        let temp = path.with_extension("new");
        let written = (|| {
            let file = File::create(&temp)?;
            let mut bytes = slot(0, payload)?;
            bytes.resize(2 * SLOT_BYTES, 0);
            file.write_all_at(&bytes, 0)?;
            file.sync_all()?;
            fs::rename(&temp, path)?;
            if let Some(dir) = path.parent() {
                File::open(dir)?.sync_all()?;
            }
            Ok(file)
        })();
        match written {
            Ok(file) => Ok(Self {
                file,
                path: path.to_owned(),
                generation: 0,
            }),
            Err(error) => {
                let _ = fs::remove_file(&temp);
                Err(error)
            }
        }
    }

    /// Writes `payload` as the state, in place, and syncs it.
    pub fn save(&mut self, payload: &[u8]) -> io::Result<()> {
        let generation = self.generation + 1;
        let bytes = slot(generation, payload)?;
        let offset = (generation % 2) * SLOT_BYTES as u64;
        self.file.write_all_at(&bytes, offset)?;
        self.file.sync_data()?;
        self.generation = generation;
        Ok(())
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_whole_slot_wins_and_a_torn_one_is_ignored() {
        let scratch = tollgate_test_support::temp_dir("state-file");
        let dir = scratch.path();
        let path = dir.join("state");
        assert!(StateFile::open(&path).unwrap().is_none());
        let mut state = StateFile::create(&path, b"zero").unwrap();
        assert_eq!(fs::metadata(&path).unwrap().len(), 2 * SLOT_BYTES as u64);
        state.save(b"one").unwrap();
        state.save(b"two").unwrap();
        let (mut state, payload) = StateFile::open(&path).unwrap().unwrap();
        assert_eq!(payload, b"two");
        // A save torn half-way (generation 3, the second slot): the first slot still holds
        // the previous state.
        state.save(b"three").unwrap();
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(&[0xff; 8], SLOT_BYTES as u64 + 30)
            .unwrap();
        assert_eq!(StateFile::open(&path).unwrap().unwrap().1, b"two");
        assert!(
            state.save(&vec![b'x'; SLOT_BYTES]).is_err(),
            "too large for a slot"
        );
        assert_eq!(fs::metadata(&path).unwrap().len(), 2 * SLOT_BYTES as u64);
    }
}
