//! The flow log's files for a time window, read whole, with what identifies each one: for a
//! local directory its path and size, for S3 its key, ETag, version ID and size — what an
//! evidence bundle lists as its sources.
//!
//! Only the partitions that can hold a record overlapping `[from, to)` are listed: the
//! collector files each record under the hour of its own start, and a flow record spans at most
//! one aggregation window, so the hours from `from - 1 h` to `to` (the margin the named Athena
//! queries prune with too). Objects are listed, then fetched one at a time by the caller.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use aws_config::{BehaviorVersion, Region};
use aws_sdk_s3::{
    Client,
    error::{ProvideErrorMetadata, SdkError},
};
use bytes::Bytes;
use tollgate_collector::{clock::partition_date, sink::sdk_in_words};

use crate::location::{FlowLogLocation, S3Options};
use tollgate_enforcer::causes::Causes;

/// Why the flow log could not be read. Each message holds its cause (an OS error, the SDK's
/// error with its causes) and `source()` returns none, so the cause is printed once whether the
/// error is printed alone or with its chain.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// A local file or directory.
    #[error("{path}: {error}")]
    Io {
        /// Which.
        path: PathBuf,
        /// What failed.
        error: std::io::Error,
    },
    /// An S3 call.
    #[error("{location}: {message}")]
    S3 {
        /// `s3://bucket/key-or-prefix`.
        location: String,
        /// The SDK's error with its causes.
        message: String,
    },
}

impl SourceError {
    /// What failed, without where.
    pub fn reason(&self) -> String {
        match self {
            Self::Io { error, .. } => error.to_string(),
            Self::S3 { message, .. } => message.clone(),
        }
    }
}

/// One file of the flow log, as read.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SourceObject {
    /// Local path or `s3://bucket/key`.
    pub location: String,
    /// S3's ETag (quotes removed); null for local files.
    pub etag: Option<String>,
    /// S3's version ID when the bucket is versioned; null otherwise.
    pub version_id: Option<String>,
    /// Size in bytes.
    pub bytes: u64,
    /// Last modification, RFC 3339 (S3's `Last-Modified`, or the file's mtime).
    pub last_modified: Option<String>,
    /// SHA-256 of the bytes read, hex.
    pub sha256: String,
}

/// Where to read from.
pub enum Reader {
    /// A local directory.
    Local(PathBuf),
    /// An S3 prefix.
    S3 {
        /// The client.
        client: Client,
        /// Bucket.
        bucket: String,
        /// Prefix, without trailing `/`.
        prefix: String,
    },
}

/// Every `(dt, hour)` partition that can hold a record overlapping `[from_s, to_s)`.
pub fn partitions(from_s: u64, to_s: u64) -> Vec<(String, String)> {
    let first = from_s.saturating_sub(3600) / 3600;
    let last = to_s.saturating_sub(1).max(from_s) / 3600;
    (first..=last)
        .map(|hour| partition_date(hour * 3600))
        .collect()
}

impl Reader {
    /// A reader of `location` (an S3 client from aws-config's default chain for S3).
    pub async fn new(location: &FlowLogLocation, s3: &S3Options) -> Self {
        match location {
            FlowLogLocation::Local(dir) => Self::Local(dir.clone()),
            FlowLogLocation::S3 { bucket, prefix } => {
                let shared = aws_config::defaults(BehaviorVersion::latest())
                    .region(Region::new(s3.region.clone()))
                    .load()
                    .await;
                let mut config =
                    aws_sdk_s3::config::Builder::from(&shared).force_path_style(s3.path_style);
                config.set_endpoint_url(s3.endpoint_url.clone());
                Self::S3 {
                    client: Client::from_conf(config.build()),
                    bucket: bucket.clone(),
                    prefix: prefix.clone(),
                }
            }
        }
    }

    /// The files of the partitions of `[from_s, to_s)`, of `cluster` or of every cluster,
    /// sorted.
    pub async fn list(
        &self,
        cluster: Option<&str>,
        from_s: u64,
        to_s: u64,
    ) -> Result<Vec<String>, SourceError> {
        let clusters = match cluster {
            Some(cluster) => vec![cluster.to_owned()],
            None => self.clusters().await?,
        };
        let mut found = Vec::new();
        for cluster in &clusters {
            for (dt, hour) in partitions(from_s, to_s) {
                let partition = format!("cluster={cluster}/dt={dt}/hour={hour}");
                found.extend(self.list_partition(&partition).await?);
            }
        }
        found.sort();
        Ok(found)
    }

    /// The cluster names of the flow log (its `cluster=…` directories or prefixes).
    async fn clusters(&self) -> Result<Vec<String>, SourceError> {
        let names = match self {
            Self::Local(dir) => read_dir(dir)?
                .into_iter()
                .filter(|p| p.is_dir())
                .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                .collect(),
            Self::S3 { client, bucket, .. } => {
                let root = self.name_of("");
                let mut names = Vec::new();
                let mut pages = client
                    .list_objects_v2()
                    .bucket(bucket)
                    .prefix(&root)
                    .delimiter("/")
                    .into_paginator()
                    .send();
                while let Some(page) = pages.next().await {
                    let page = page.map_err(|e| s3_error(bucket, &root, &e))?;
                    for common in page.common_prefixes() {
                        if let Some(p) = common.prefix() {
                            names.push(p[root.len()..].trim_end_matches('/').to_owned());
                        }
                    }
                }
                names
            }
        };
        Ok(names
            .iter()
            .filter_map(|n| n.strip_prefix("cluster="))
            .map(str::to_owned)
            .collect())
    }

    /// The `.parquet` files directly under `partition` (hidden ones skipped: a sink's partial
    /// copies).
    async fn list_partition(&self, partition: &str) -> Result<Vec<String>, SourceError> {
        match self {
            Self::Local(dir) => {
                let dir = dir.join(partition);
                if !dir.is_dir() {
                    return Ok(Vec::new());
                }
                Ok(read_dir(&dir)?
                    .into_iter()
                    .filter(|p| is_visible_parquet(p))
                    .map(|p| p.to_string_lossy().into_owned())
                    .collect())
            }
            Self::S3 { client, bucket, .. } => {
                let under = self.name_of(&format!("{partition}/"));
                let mut keys = s3_keys(client, bucket, &under).await?;
                keys.retain(|k| is_visible_parquet(Path::new(k)));
                Ok(keys)
            }
        }
    }

    /// Every file of the flow log under `under` (a key prefix relative to its root, `""` for
    /// all; any depth; hidden local files skipped), as names [`Reader::fetch`] takes, sorted.
    pub async fn list_all(&self, under: &str) -> Result<Vec<String>, SourceError> {
        let mut found = Vec::new();
        match self {
            Self::Local(root) => {
                let start = root.join(under);
                if !start.is_dir() {
                    return Ok(found);
                }
                let mut dirs = vec![start];
                while let Some(dir) = dirs.pop() {
                    for path in read_dir(&dir)? {
                        let hidden = path
                            .file_name()
                            .is_some_and(|n| n.to_string_lossy().starts_with('.'));
                        if hidden {
                            continue;
                        }
                        if path.is_dir() {
                            dirs.push(path);
                        } else {
                            found.push(path.to_string_lossy().into_owned());
                        }
                    }
                }
            }
            Self::S3 { client, bucket, .. } => {
                found = s3_keys(client, bucket, &self.name_of(under)).await?;
            }
        }
        found.sort();
        Ok(found)
    }

    /// The key of the listed file `name` relative to the flow log's root
    /// (`cluster=…/dt=…/hour=…/….parquet`, `_digests/…`): what the collector's digests name.
    pub fn relative(&self, name: &str) -> String {
        match self {
            Self::Local(root) => Path::new(name)
                .strip_prefix(root)
                .map(|p| {
                    p.components()
                        .map(|c| c.as_os_str().to_string_lossy())
                        .collect::<Vec<_>>()
                        .join("/")
                })
                .unwrap_or_else(|_| name.to_owned()),
            Self::S3 { prefix, .. } if prefix.is_empty() => name.to_owned(),
            Self::S3 { prefix, .. } => name
                .strip_prefix(prefix.as_str())
                .and_then(|rest| rest.strip_prefix('/'))
                .unwrap_or(name)
                .to_owned(),
        }
    }

    /// The name [`Reader::fetch`] takes for `key`, relative to the flow log's root.
    pub fn name_of(&self, key: &str) -> String {
        match self {
            Self::Local(root) => root.join(key).to_string_lossy().into_owned(),
            Self::S3 { prefix, .. } if prefix.is_empty() => key.to_owned(),
            Self::S3 { prefix, .. } => format!("{prefix}/{key}"),
        }
    }

    /// Where the listed file `name` is: its path, or `s3://bucket/key`.
    pub fn location(&self, name: &str) -> String {
        match self {
            Self::Local(_) => name.to_owned(),
            Self::S3 { bucket, .. } => format!("s3://{bucket}/{name}"),
        }
    }

    /// Reads one listed file whole: its bytes and what identifies them. A local file must be
    /// a regular file (or a link to one): a FIFO or a device is refused, never waited on.
    pub async fn fetch(&self, name: &str) -> Result<(SourceObject, Bytes), SourceError> {
        match self {
            Self::Local(_) => {
                let path = PathBuf::from(name);
                let io = |error| SourceError::Io {
                    path: path.clone(),
                    error,
                };
                let mut file = open_regular(&path, Links::Follow).map_err(io)?;
                let metadata = file.metadata().map_err(io)?;
                let mut data = Vec::with_capacity(usize::try_from(metadata.len()).unwrap_or(0));
                file.read_to_end(&mut data).map_err(io)?;
                let data = Bytes::from(data);
                let modified = metadata
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map(|d| tollgate_collector::clock::rfc3339_utc(d.as_secs()));
                Ok((
                    SourceObject {
                        location: name.to_owned(),
                        etag: None,
                        version_id: None,
                        bytes: data.len() as u64,
                        last_modified: modified,
                        sha256: sha256_hex(&data),
                    },
                    data,
                ))
            }
            Self::S3 { client, bucket, .. } => {
                let object = client
                    .get_object()
                    .bucket(bucket)
                    .key(name)
                    .send()
                    .await
                    .map_err(|e| s3_error(bucket, name, &e))?;
                let etag = object.e_tag().map(|t| t.trim_matches('"').to_owned());
                let version_id = object.version_id().map(str::to_owned);
                let last_modified = object
                    .last_modified()
                    .and_then(|t| u64::try_from(t.secs()).ok())
                    .map(tollgate_collector::clock::rfc3339_utc);
                let data = object
                    .body
                    .collect()
                    .await
                    .map_err(|e| SourceError::S3 {
                        location: format!("s3://{bucket}/{name}"),
                        message: Causes(&e).to_string(),
                    })?
                    .into_bytes();
                Ok((
                    SourceObject {
                        location: format!("s3://{bucket}/{name}"),
                        etag,
                        version_id,
                        bytes: data.len() as u64,
                        last_modified,
                        sha256: sha256_hex(&data),
                    },
                    data,
                ))
            }
        }
    }
}

fn read_dir(dir: &Path) -> Result<Vec<PathBuf>, SourceError> {
    let io = |error| SourceError::Io {
        path: dir.to_owned(),
        error,
    };
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        paths.push(entry.map_err(io)?.path());
    }
    Ok(paths)
}

fn is_visible_parquet(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "parquet")
        && path
            .file_name()
            .is_some_and(|n| !n.to_string_lossy().starts_with('.'))
}

/// Every key of `bucket` under `prefix`, page after page.
async fn s3_keys(client: &Client, bucket: &str, prefix: &str) -> Result<Vec<String>, SourceError> {
    let mut keys = Vec::new();
    let mut pages = client
        .list_objects_v2()
        .bucket(bucket)
        .prefix(prefix)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| s3_error(bucket, prefix, &e))?;
        keys.extend(
            page.contents()
                .iter()
                .filter_map(|o| o.key())
                .map(str::to_owned),
        );
    }
    Ok(keys)
}

/// `error` of an S3 call on `key`, in words: the service's code and message, or the chain of
/// causes — never the SDK's structures.
fn s3_error<E>(bucket: &str, key: &str, error: &SdkError<E>) -> SourceError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    SourceError::S3 {
        location: format!("s3://{bucket}/{key}"),
        message: sdk_in_words(error),
    }
}

/// The SHA-256 of `data`, as lowercase hex.
pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest as _;
    hex(&sha2::Sha256::digest(data))
}

/// The size and SHA-256 (lowercase hex) of everything `reader` yields, read in chunks: a file
/// is never held in memory whole.
pub fn sha256_stream(mut reader: impl Read) -> std::io::Result<(u64, String)> {
    use sha2::Digest as _;
    let mut hasher = sha2::Sha256::new();
    let mut buffer = vec![0; 64 * 1024];
    let mut bytes = 0;
    loop {
        match reader.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => {
                hasher.update(&buffer[..n]);
                bytes += n as u64;
            }
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok((bytes, hex(&hasher.finalize())))
}

fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether [`open_regular`] goes through a symbolic link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Links {
    /// Open what a link points to (a regular file still).
    Follow,
    /// A link is refused: only the file itself counts.
    Refuse,
}

/// Opens `path` for reading if it is a regular file, and only then: a FIFO, a socket, a
/// device or a directory is refused without being waited on (the open does not block,
/// `O_NONBLOCK`, and the opened file is checked, so one swapped in between is caught too),
/// and with [`Links::Refuse`] so is a symbolic link (`O_NOFOLLOW`). The error says what the
/// path is instead.
pub fn open_regular(path: &Path, links: Links) -> std::io::Result<File> {
    let not_regular = |file_type: std::fs::FileType| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{}, not a regular file", describe(file_type)),
        )
    };
    let found = match links {
        Links::Follow => std::fs::metadata(path)?,
        Links::Refuse => std::fs::symlink_metadata(path)?,
    };
    if !found.is_file() {
        return Err(not_regular(found.file_type()));
    }
    let mut flags = libc::O_NONBLOCK;
    if links == Links::Refuse {
        flags |= libc::O_NOFOLLOW;
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags)
        .open(path)
        .map_err(|error| match std::fs::symlink_metadata(path) {
            // Replaced by a link after the check above: O_NOFOLLOW's ELOOP, in words.
            Ok(now) if links == Links::Refuse && !now.is_file() => not_regular(now.file_type()),
            _ => error,
        })?;
    let opened = file.metadata()?;
    if !opened.is_file() {
        return Err(not_regular(opened.file_type()));
    }
    Ok(file)
}

/// What kind of file `file_type` is, in words.
fn describe(file_type: std::fs::FileType) -> &'static str {
    if file_type.is_symlink() {
        "a symbolic link"
    } else if file_type.is_dir() {
        "a directory"
    } else if file_type.is_fifo() {
        "a FIFO"
    } else if file_type.is_socket() {
        "a socket"
    } else if file_type.is_block_device() || file_type.is_char_device() {
        "a device"
    } else {
        "a special file"
    }
}

#[cfg(test)]
mod tests {
    use super::partitions;

    #[test]
    fn partitions_cover_the_window_and_an_hour_before() {
        // 2026-11-25T10:30:00Z to 11:10:00Z.
        let from = 1_795_602_600;
        let hours: Vec<String> = partitions(from, from + 2400)
            .into_iter()
            .map(|(dt, hour)| format!("{dt}/{hour}"))
            .collect();
        assert_eq!(hours, ["2026-11-25/09", "2026-11-25/10", "2026-11-25/11"]);
        // An end on the hour does not reach into the next one.
        assert_eq!(partitions(from, 1_795_604_400).len(), 2);
    }
}
