//! The local-directory sink: files are copied under `<dir>/<key>` through a temporary name,
//! synced, and renamed, so a reader of the directory never sees half a file; a copy that fails
//! (a full disk) removes its temporary file, so none is ever left in the directory.

use std::path::{Path, PathBuf};

use super::{Failure, SinkError};

/// A directory in the bucket's layout.
#[derive(Debug, Clone)]
pub struct LocalSink {
    dir: PathBuf,
}

impl LocalSink {
    /// A sink writing under `dir` (created on first delivery).
    pub fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Copies `path` to `<dir>/<key>`: a temporary file next to the target, fsync, rename,
    /// fsync of the directory.
    pub async fn put(&self, key: &str, path: &Path) -> Result<(), SinkError> {
        let target = self.dir.join(key);
        let source = path.to_owned();
        let location = self.location(key);
        let copied = tokio::task::spawn_blocking(move || copy_durably(&source, &target))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        copied.map_err(|error| SinkError::Put {
            location,
            message: error.to_string(),
            failure: Failure::of_io(&error),
        })
    }

    /// The path `key` is delivered to.
    pub fn location(&self, key: &str) -> String {
        self.dir.join(key).display().to_string()
    }
}

fn copy_durably(source: &Path, target: &Path) -> std::io::Result<()> {
    let parent = target
        .parent()
        .ok_or_else(|| std::io::Error::other("target has no parent directory"))?;
    std::fs::create_dir_all(parent)?;
    let name = target
        .file_name()
        .ok_or_else(|| std::io::Error::other("target has no file name"))?;
    let temp = parent.join(format!(".{}.partial", name.to_string_lossy()));
    let copied = std::fs::copy(source, &temp)
        .and_then(|_| std::fs::File::open(&temp)?.sync_all())
        .and_then(|()| std::fs::rename(&temp, target));
    if let Err(error) = copied {
        let _ = std::fs::remove_file(&temp);
        return Err(error);
    }
    std::fs::File::open(parent)?.sync_all()
}
