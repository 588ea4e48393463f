//! Sinks: where spooled Parquet files are delivered, under the same relative key everywhere.
//!
//! The shipper hands a sink one closed file at a time with its object key (relative to the
//! sink's root or prefix, e.g. `cluster=c/dt=2026-11-25/hour=06/node-…-000001.parquet`). A
//! delivery either completes (the whole file is visible under the key) or fails and is retried
//! later under the same key, so a retry overwrites a partial or earlier copy instead of
//! adding a second one.

mod local;
mod s3;

use std::path::Path;

pub use local::LocalSink;
pub use s3::S3Sink;

use crate::config::SinkConfig;

/// A failed delivery or sink setup.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The sink could not be set up from its configuration.
    #[error("sink configuration: {0}")]
    Config(String),
    /// Delivering one file failed; the shipper retries it.
    #[error("delivering {location}: {message}")]
    Put {
        /// Where the file was going (`s3://bucket/key` or a local path).
        location: String,
        /// What failed.
        message: String,
    },
}

/// A configured destination for spooled files.
#[derive(Debug)]
pub enum Sink {
    /// A local directory.
    Local(LocalSink),
    /// An S3 bucket.
    S3(S3Sink),
}

impl Sink {
    /// The sink `config` describes (an S3 client is built, credentials resolved lazily).
    pub async fn from_config(config: &SinkConfig) -> Result<Self, SinkError> {
        Ok(match config {
            SinkConfig::Local { dir } => Self::Local(LocalSink::new(dir.clone())),
            SinkConfig::S3(s3) => Self::S3(S3Sink::new(s3).await?),
        })
    }

    /// Delivers the file at `path` under `key`.
    pub async fn put(&self, key: &str, path: &Path) -> Result<(), SinkError> {
        match self {
            Self::Local(sink) => sink.put(key, path).await,
            Self::S3(sink) => sink.put(key, path).await,
        }
    }

    /// Where `key` ends up, for logs and reports.
    pub fn location(&self, key: &str) -> String {
        match self {
            Self::Local(sink) => sink.location(key),
            Self::S3(sink) => sink.location(key),
        }
    }
}
