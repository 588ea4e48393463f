//! The S3 sink (being written).

use std::path::Path;

use super::SinkError;
use crate::config::S3Config;

/// An S3 bucket and prefix.
#[derive(Debug)]
pub struct S3Sink {
    config: S3Config,
}

impl S3Sink {
    /// A client for `config`'s bucket.
    pub async fn new(config: &S3Config) -> Result<Self, SinkError> {
        Ok(Self {
            config: config.clone(),
        })
    }

    /// Uploads `path` as `<prefix>/<key>`.
    pub async fn put(&self, key: &str, path: &Path) -> Result<(), SinkError> {
        let _ = path;
        Err(SinkError::Put {
            location: self.location(key),
            message: "not written yet".to_owned(),
        })
    }

    /// `s3://bucket/prefix/key`.
    pub fn location(&self, key: &str) -> String {
        format!("s3://{}/{}/{key}", self.config.bucket, self.config.prefix)
    }
}
