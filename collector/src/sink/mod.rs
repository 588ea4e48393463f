//! Sinks: where spooled Parquet files are delivered, under the same relative key everywhere.
//!
//! The shipper hands a sink one closed file at a time with its object key (relative to the
//! sink's root or prefix, e.g. `cluster=c/dt=2026-11-25/hour=06/node-…-000001.parquet`). A
//! delivery either completes (the whole file is visible under the key) or fails and is retried
//! later under the same key, so a retry overwrites a partial or earlier copy instead of
//! adding a second one.
//!
//! [`Sinks`] routes by key: Security Lake objects (keys under `ext/`, see
//! [`crate::writer::Layout`]) to the Security Lake's sink, everything else (flow files,
//! digests) to the flow log's.

mod local;
mod s3;

use std::path::Path;

use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use tollgate_enforcer::causes::Causes;

pub use local::LocalSink;
pub use s3::S3Sink;

use crate::config::{CollectorConfig, SinkConfig};
use crate::writer::SECURITY_LAKE_ROOT;

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
        /// What kind of failure, for the operator: counted and logged by kind.
        failure: Failure,
    },
}

impl SinkError {
    /// The kind of failure: [`Failure::Other`] for a sink that could not be set up.
    pub fn failure(&self) -> Failure {
        match self {
            Self::Config(_) => Failure::Other,
            Self::Put { failure, .. } => *failure,
        }
    }
}

/// What kind of failure a delivery met: every kind is retried alike, but they call for
/// different people (the service slowing down needs nobody; a refusal needs an operator).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The service asked to slow down (`SlowDown`, a throttling code, HTTP 429 or 503).
    Throttled,
    /// The credentials or a policy refuse the request (`AccessDenied`, an invalid or expired
    /// key or token, a KMS key that may not be used, HTTP 401 or 403): an operator must act.
    Denied,
    /// The bucket (or a multipart upload) does not exist (`NoSuchBucket`, `NoSuchUpload`, HTTP
    /// 404; a local sink's missing directory): an operator must act.
    Missing,
    /// No answer from the service: connection, DNS or timeout.
    Unreachable,
    /// Anything else: another answer of the service, the spooled file, a local sink's disk.
    Other,
}

impl Failure {
    /// Every kind, in the order of [`Failure::index`].
    pub const ALL: [Self; 5] = [
        Self::Throttled,
        Self::Denied,
        Self::Missing,
        Self::Unreachable,
        Self::Other,
    ];

    /// The kind's position in [`Failure::ALL`] (for per-kind counters).
    pub const fn index(self) -> usize {
        self as usize
    }

    /// The kind as a metric label and in logs.
    pub const fn label(self) -> &'static str {
        match self {
            Self::Throttled => "throttled",
            Self::Denied => "denied",
            Self::Missing => "missing",
            Self::Unreachable => "unreachable",
            Self::Other => "other",
        }
    }

    /// Whether an operator must act before deliveries can succeed again.
    pub const fn needs_operator(self) -> bool {
        matches!(self, Self::Denied | Self::Missing)
    }

    /// The kind of an AWS SDK call's failure: from the service's error code and HTTP status
    /// when it answered, [`Failure::Unreachable`] when it did not.
    pub fn of_sdk<E: ProvideErrorMetadata>(error: &SdkError<E>) -> Self {
        match error {
            SdkError::ServiceError(service) => {
                Self::of_answer(service.err().code(), service.raw().status().as_u16())
            }
            SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) => Self::Unreachable,
            _ => Self::Other,
        }
    }

    /// The kind of a service's answer with error `code` (if any) and HTTP `status`.
    pub fn of_answer(code: Option<&str>, status: u16) -> Self {
        const THROTTLED: [&str; 6] = [
            "SlowDown",
            "Throttling",
            "ThrottlingException",
            "RequestLimitExceeded",
            "TooManyRequests",
            "RequestThrottled",
        ];
        const DENIED: [&str; 8] = [
            "AccessDenied",
            "InvalidAccessKeyId",
            "SignatureDoesNotMatch",
            "ExpiredToken",
            "InvalidToken",
            "AccountProblem",
            "AllAccessDisabled",
            "KMS.AccessDeniedException",
        ];
        const MISSING: [&str; 2] = ["NoSuchBucket", "NoSuchUpload"];
        match code {
            Some(code) if THROTTLED.contains(&code) => Self::Throttled,
            Some(code) if DENIED.contains(&code) => Self::Denied,
            Some(code) if MISSING.contains(&code) => Self::Missing,
            _ => match status {
                429 | 503 => Self::Throttled,
                401 | 403 => Self::Denied,
                404 => Self::Missing,
                _ => Self::Other,
            },
        }
    }

    /// The kind of a local file-system failure.
    pub fn of_io(error: &std::io::Error) -> Self {
        match error.kind() {
            std::io::ErrorKind::PermissionDenied => Self::Denied,
            std::io::ErrorKind::NotFound => Self::Missing,
            _ => Self::Other,
        }
    }
}

/// An AWS SDK call's error in words: for an answer of the service, its error code, message
/// and HTTP status (`NotSignedUp: Your account is not signed up (HTTP 403)`); otherwise the
/// chain of causes (`dispatch failure: io error: … Connection refused (os error 111)`). Never
/// the SDK's structures.
pub fn sdk_in_words<E>(error: &SdkError<E>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match error {
        SdkError::ServiceError(service) => {
            let status = service.raw().status().as_u16();
            let err = service.err();
            match (err.code(), err.message()) {
                (Some(code), Some(message)) => format!("{code}: {message} (HTTP {status})"),
                (Some(code), None) => format!("{code} (HTTP {status})"),
                _ => format!("{} (HTTP {status})", Causes(err)),
            }
        }
        other => Causes(other).to_string(),
    }
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

/// The shipper's destinations: the flow log's sink, and Security Lake's when configured.
#[derive(Debug)]
pub struct Sinks {
    flow_log: Sink,
    security_lake: Option<Sink>,
}

impl Sinks {
    /// `flow_log` for every key, and `security_lake` for Security Lake objects.
    pub fn new(flow_log: Sink, security_lake: Option<Sink>) -> Self {
        Self {
            flow_log,
            security_lake,
        }
    }

    /// The sinks `config` describes.
    pub async fn from_config(config: &CollectorConfig) -> Result<Self, SinkError> {
        let security_lake = match &config.security_lake {
            Some(lake) => Some(Sink::from_config(&lake.sink).await?),
            None => None,
        };
        Ok(Self::new(
            Sink::from_config(&config.sink).await?,
            security_lake,
        ))
    }

    /// The sink of `key`. A Security Lake object spooled by an earlier configuration that
    /// had Security Lake goes to the flow log's sink under its key: kept, not lost.
    fn route(&self, key: &str) -> &Sink {
        let lake_object = key
            .split('/')
            .next()
            .is_some_and(|root| root == SECURITY_LAKE_ROOT);
        match &self.security_lake {
            Some(lake) if lake_object => lake,
            _ => &self.flow_log,
        }
    }

    /// Delivers the file at `path` under `key` to its sink.
    #[tracing::instrument(skip(self, path))]
    pub async fn put(&self, key: &str, path: &Path) -> Result<(), SinkError> {
        self.route(key).put(key, path).await
    }

    /// Where `key` ends up.
    pub fn location(&self, key: &str) -> String {
        self.route(key).location(key)
    }

    /// The flow log's sink.
    pub fn flow_log(&self) -> &Sink {
        &self.flow_log
    }
}

#[cfg(test)]
mod tests {
    use super::Failure;

    #[test]
    fn a_services_answer_is_classified_by_its_code_then_its_status() {
        for (code, status, kind) in [
            (Some("SlowDown"), 503, Failure::Throttled),
            (None, 429, Failure::Throttled),
            (Some("AccessDenied"), 403, Failure::Denied),
            (Some("InvalidAccessKeyId"), 403, Failure::Denied),
            (Some("NotSignedUp"), 403, Failure::Denied),
            (Some("NoSuchBucket"), 404, Failure::Missing),
            (Some("InternalError"), 500, Failure::Other),
            (None, 400, Failure::Other),
        ] {
            assert_eq!(Failure::of_answer(code, status), kind, "{code:?} {status}");
        }
        assert!(Failure::Denied.needs_operator() && Failure::Missing.needs_operator());
        assert!(!Failure::Throttled.needs_operator() && !Failure::Unreachable.needs_operator());
        for (i, kind) in Failure::ALL.iter().enumerate() {
            assert_eq!(kind.index(), i);
        }
    }
}
