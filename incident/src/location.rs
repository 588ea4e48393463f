//! Where a flow log lives: a local directory (the lab's `--out`, a local sink, a copy) or an
//! S3 prefix, given on the command line as a path or `s3://bucket/prefix`, with the S3
//! connection settings the collector's sink uses.

use std::path::PathBuf;

use tollgate_collector::config::{S3Config, SinkConfig};

/// A flow log's location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FlowLogLocation {
    /// A directory holding `cluster=…/dt=…/hour=…/*.parquet`.
    Local(PathBuf),
    /// `s3://bucket/prefix`.
    S3 {
        /// Bucket name.
        bucket: String,
        /// Key prefix without leading or trailing `/` (empty: the bucket's root).
        prefix: String,
    },
}

/// How to reach S3 (ignored for a local flow log).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct S3Options {
    /// AWS region of the bucket.
    pub region: String,
    /// Endpoint of an S3-compatible server; AWS when absent.
    pub endpoint_url: Option<String>,
    /// Path-style addressing.
    pub path_style: bool,
}

impl std::str::FromStr for FlowLogLocation {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let Some(rest) = text.strip_prefix("s3://") else {
            if text.is_empty() {
                return Err("empty flow-log location".to_owned());
            }
            return Ok(Self::Local(PathBuf::from(text)));
        };
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(format!("{text:?}: no bucket after s3://"));
        }
        Ok(Self::S3 {
            bucket: bucket.to_owned(),
            prefix: prefix.trim_matches('/').to_owned(),
        })
    }
}

impl std::fmt::Display for FlowLogLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Local(dir) => write!(f, "{}", dir.display()),
            Self::S3 { bucket, prefix } if prefix.is_empty() => write!(f, "s3://{bucket}"),
            Self::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
        }
    }
}

impl FlowLogLocation {
    /// The collector sink that delivers into this location.
    pub fn sink(&self, s3: &S3Options) -> SinkConfig {
        match self {
            Self::Local(dir) => SinkConfig::Local { dir: dir.clone() },
            Self::S3 { bucket, prefix } => SinkConfig::S3(s3_config(bucket, prefix, s3)),
        }
    }
}

/// The collector's S3 settings for `bucket`/`prefix`, its defaults for the rest (SSE: the
/// bucket's default, which the Terraform bucket sets to its KMS key).
fn s3_config(bucket: &str, prefix: &str, s3: &S3Options) -> S3Config {
    let fields = serde_json::json!({
        "region": s3.region,
        "bucket": bucket,
        "prefix": prefix,
        "endpoint_url": s3.endpoint_url,
        "path_style": s3.path_style,
    });
    // Every field S3Config requires is given above; the others have serde defaults.
    serde_json::from_value(fields).expect("S3Config from its required fields")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_parse() {
        assert_eq!(
            "s3://flows/tollgate/".parse::<FlowLogLocation>().unwrap(),
            FlowLogLocation::S3 {
                bucket: "flows".into(),
                prefix: "tollgate".into()
            }
        );
        assert_eq!(
            "s3://flows".parse::<FlowLogLocation>().unwrap().to_string(),
            "s3://flows"
        );
        assert_eq!(
            "/tmp/x".parse::<FlowLogLocation>().unwrap(),
            FlowLogLocation::Local("/tmp/x".into())
        );
        assert!("s3:///x".parse::<FlowLogLocation>().is_err());
    }
}
