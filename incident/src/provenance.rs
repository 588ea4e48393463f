//! Where a bundle's records came from: the signed digests that list its source objects, put
//! into the bundle by `evidence` and checked again by `evidence verify`.
//!
//! [`gather`] reads the flow log's digests (`_digests/…`), keeps those that list at least one
//! of the bundle's source objects, and writes each into the bundle byte for byte as
//! `digest-<its file name>` (so its signature and the next digest's link still hold), naming
//! for every source key the digest file that lists it. [`check`] reads `sources.json` and
//! those digest files back: each digest's signature (against the trusted keys, or the key it
//! carries), and each source's SHA-256 against its digest's entry. A source that no digest
//! lists (an isolation record, a flow log older than the digests) is counted, not a problem.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use tollgate_collector::{
    digest::{DIGEST_ROOT, Signed},
    sign::fingerprint,
};

use crate::source::{Links, Reader, SourceError, open_regular};

/// Digests written into a bundle.
#[derive(Debug, Clone, Default)]
pub struct Gathered {
    /// Their file names in the bundle, sorted.
    pub files: Vec<String>,
    /// For each source key a digest lists: that digest's file name in the bundle.
    pub covering: BTreeMap<String, String>,
    /// The digests' keys in the flow log.
    pub keys: Vec<String>,
}

/// What [`check`] proved.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Provenance {
    /// Sources whose SHA-256 a signed digest lists.
    pub proven: usize,
    /// Sources no digest lists.
    pub uncovered: usize,
}

/// A source as `sources.json` holds it (the fields [`check`] reads).
#[derive(Debug, Deserialize, Serialize)]
struct Source {
    key: Option<String>,
    sha256: String,
    digest: Option<String>,
}

/// Writes into `out` every digest of the flow log that lists one of `keys` (relative to the
/// flow log's root). Fails only when the digests cannot be listed; a digest that cannot be
/// read or parsed is left out (its objects then count as uncovered).
pub async fn gather(reader: &Reader, keys: &[String], out: &Path) -> Result<Gathered, SourceError> {
    let wanted: std::collections::BTreeSet<&str> = keys.iter().map(String::as_str).collect();
    let mut gathered = Gathered::default();
    for name in reader.list_all(&format!("{DIGEST_ROOT}/")).await? {
        let Ok((_, bytes)) = reader.fetch(&name).await else {
            tracing::warn!(digest = name, "a digest could not be read");
            continue;
        };
        let Ok(signed) = Signed::parse(&bytes) else {
            tracing::warn!(digest = name, "not a digest");
            continue;
        };
        let listed: Vec<&str> = signed
            .document
            .objects
            .iter()
            .map(|o| o.key.as_str())
            .filter(|key| wanted.contains(key))
            .collect();
        if listed.is_empty() {
            continue;
        }
        let key = signed.document.key();
        let file = format!("digest-{}", key.rsplit('/').next().unwrap_or(&key));
        std::fs::write(out.join(&file), &bytes).map_err(|error| SourceError::Io {
            path: out.join(&file),
            error,
        })?;
        for key in listed {
            gathered.covering.insert(key.to_owned(), file.clone());
        }
        gathered.files.push(file);
        gathered.keys.push(reader.relative(&name));
    }
    gathered.files.sort();
    Ok(gathered)
}

/// Checks the bundle in `dir` (already checked against its manifest) against its digests:
/// each problem as a line, or what was proved.
pub fn check(dir: &Path, trusted: &[Vec<u8>]) -> Result<Provenance, Vec<String>> {
    let mut problems = Vec::new();
    let read = |name: &str| -> Result<Vec<u8>, String> {
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(
            &mut open_regular(&dir.join(name), Links::Refuse)
                .map_err(|e| format!("{name}: {e}"))?,
            &mut bytes,
        )
        .map_err(|e| format!("{name}: {e}"))?;
        Ok(bytes)
    };
    let sources: Vec<Source> = match read("sources.json")
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| format!("sources.json: {e}")))
    {
        Ok(sources) => sources,
        Err(problem) => return Err(vec![problem]),
    };
    let mut digests: BTreeMap<String, Option<Signed>> = BTreeMap::new();
    let mut provenance = Provenance::default();
    for source in &sources {
        let (Some(key), Some(file)) = (&source.key, &source.digest) else {
            provenance.uncovered += 1;
            continue;
        };
        let signed = digests.entry(file.clone()).or_insert_with(|| {
            let signed = read(file)
                .and_then(|bytes| Signed::parse(&bytes).map_err(|e| format!("{file}: {e}")));
            match signed {
                Ok(signed) => {
                    let key_ok = match trusted {
                        [] => signed
                            .public_key()
                            .map_err(|e| e.to_string())
                            .and_then(|k| signed.check_signature(&k).map_err(|e| e.to_string())),
                        keys => keys
                            .iter()
                            .find_map(|k| signed.check_signature(k).ok())
                            .ok_or_else(|| {
                                format!(
                                    "bad signature: not signed by {}",
                                    keys.iter()
                                        .map(|k| fingerprint(k))
                                        .collect::<Vec<_>>()
                                        .join(" or ")
                                )
                            }),
                    };
                    match key_ok {
                        Ok(()) => Some(signed),
                        Err(why) => {
                            problems.push(format!("{file}: {why}"));
                            None
                        }
                    }
                }
                Err(problem) => {
                    problems.push(problem);
                    None
                }
            }
        });
        let Some(signed) = signed else {
            continue;
        };
        match signed.document.objects.iter().find(|o| &o.key == key) {
            None => problems.push(format!("sources.json: {key}: {file} does not list it")),
            Some(entry) if entry.sha256 != source.sha256 => problems.push(format!(
                "sources.json: {key}: SHA-256 {}, but the signed {file} lists {}",
                source.sha256, entry.sha256
            )),
            Some(_) => provenance.proven += 1,
        }
    }
    if problems.is_empty() {
        Ok(provenance)
    } else {
        Err(problems)
    }
}
