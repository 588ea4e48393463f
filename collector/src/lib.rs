//! The node collector: flow events from the probe's ring buffer to Parquet files in S3.

pub mod config;
pub mod sink;
