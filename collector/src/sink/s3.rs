//! The S3 sink: one spooled Parquet file becomes one object under `<prefix>/<key>`.
//!
//! How a file travels:
//!
//! 1. [`S3Sink::new`] builds one client from aws-config's default chain (environment,
//!    EKS Pod Identity, IRSA, instance profile…), with the configured region, endpoint and
//!    addressing style, and the SDK's standard retry mode (exponential backoff with jitter)
//!    for `max_attempts` attempts per request.
//! 2. [`S3Sink::put`] looks at the file's size. Below `multipart_threshold_bytes` it is sent
//!    with one PutObject streamed from the file; from the threshold on, it goes as a multipart
//!    upload whose parts (`part_size_bytes` each, the last one shorter) are streamed from their
//!    offsets in the file, so memory use does not grow with the file.
//! 3. Every body carries a CRC32C checksum computed by the SDK while it streams, which the
//!    server checks against what it received: a body corrupted in flight is refused rather
//!    than stored. Objects are typed `application/vnd.apache.parquet` (the digests
//!    `application/json`) and encrypted as configured (the bucket's default, SSE-S3 or SSE-KMS).
//! 4. A multipart upload that fails at any step is aborted (best effort, so no parts linger)
//!    and the error is returned. The key is deterministic, so the shipper's retry of the same
//!    file overwrites whatever an earlier attempt left rather than adding a second object.
//!
//! Every failure is a [`SinkError::Put`] whose message holds the SDK error with its causes
//! (connection refused, AccessDenied, SignatureDoesNotMatch…).

use std::path::Path;

use aws_config::retry::RetryConfig;
use aws_config::{BehaviorVersion, Region};
use aws_sdk_s3::Client;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::{ByteStream, Length};
use aws_sdk_s3::types::{
    ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart, ServerSideEncryption as Sse,
};

use super::{Failure, SinkError, sdk_in_words};
use crate::config::{S3Config, ServerSideEncryption};
use tollgate_enforcer::causes::Causes;

/// The content type of the object at `key`: JSON for the digests, Parquet for the records.
fn content_type(key: &str) -> &'static str {
    if key.ends_with(".json") {
        "application/json"
    } else {
        "application/vnd.apache.parquet"
    }
}

/// S3's limit on the number of parts of one multipart upload.
const MAX_PARTS: u64 = 10_000;

/// An S3 bucket and prefix, with the client that uploads to it.
#[derive(Debug)]
pub struct S3Sink {
    client: Client,
    bucket: String,
    prefix: String,
    sse: Option<Sse>,
    kms_key_id: Option<String>,
    multipart_threshold: u64,
    part_size: u64,
}

impl S3Sink {
    /// A sink for `config`'s bucket. The client is built here; credentials are resolved on
    /// the first request (and refreshed by the SDK), so a missing identity shows up as a
    /// failed [`S3Sink::put`], not here.
    ///
    /// Fails with [`SinkError::Config`] when the endpoint URL is not an `http://` or
    /// `https://` URL.
    pub async fn new(config: &S3Config) -> Result<Self, SinkError> {
        if let Some(url) = &config.endpoint_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(SinkError::Config(format!(
                "sink.endpoint_url: {url:?} must start with http:// or https://"
            )));
        }
        let shared = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(config.region.clone()))
            .retry_config(RetryConfig::standard().with_max_attempts(config.max_attempts))
            .load()
            .await;
        let mut s3_config =
            aws_sdk_s3::config::Builder::from(&shared).force_path_style(config.path_style);
        s3_config.set_endpoint_url(config.endpoint_url.clone());
        let (sse, kms_key_id) = match &config.sse {
            ServerSideEncryption::BucketDefault => (None, None),
            ServerSideEncryption::S3 => (Some(Sse::Aes256), None),
            ServerSideEncryption::Kms { key_id } => (Some(Sse::AwsKms), key_id.clone()),
        };
        Ok(Self {
            client: Client::from_conf(s3_config.build()),
            bucket: config.bucket.clone(),
            prefix: config.prefix.clone(),
            sse,
            kms_key_id,
            multipart_threshold: config.multipart_threshold_bytes,
            part_size: config.part_size_bytes,
        })
    }

    /// Uploads the file at `path` as `<prefix>/<key>`, replacing any object already there.
    /// Returns once the whole object is stored; on failure nothing new is visible under the
    /// key (a previous object stays as it was).
    pub async fn put(&self, key: &str, path: &Path) -> Result<(), SinkError> {
        let location = self.location(key);
        let object_key = self.object_key(key);
        let result = match file_len(path).await {
            Ok(bytes) if bytes > 0 && bytes >= self.multipart_threshold => self
                .put_multipart(&object_key, path, bytes)
                .await
                .map(|parts| (bytes, parts)),
            Ok(bytes) => self
                .put_single(&object_key, path, bytes)
                .await
                .map(|()| (bytes, 1)),
            Err(message) => Err(Failed::from(message)),
        };
        match result {
            Ok((bytes, parts)) => {
                tracing::debug!(%location, bytes, parts, "uploaded");
                Ok(())
            }
            Err(Failed { failure, message }) => Err(SinkError::Put {
                location,
                message,
                failure,
            }),
        }
    }

    /// `s3://<bucket>/<prefix>/<key>` (`s3://<bucket>/<key>` without a prefix).
    pub fn location(&self, key: &str) -> String {
        format!("s3://{}/{}", self.bucket, self.object_key(key))
    }

    fn object_key(&self, key: &str) -> String {
        if self.prefix.is_empty() {
            key.to_owned()
        } else {
            format!("{}/{key}", self.prefix)
        }
    }

    /// One PutObject with the file as its streamed body.
    async fn put_single(&self, object_key: &str, path: &Path, bytes: u64) -> Result<(), Failed> {
        let body = ByteStream::from_path(path)
            .await
            .map_err(|e| format!("reading {}: {}", path.display(), Causes(&e)))?;
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(object_key)
            .body(body)
            .content_length(content_length(bytes)?)
            .content_type(content_type(object_key))
            .checksum_algorithm(ChecksumAlgorithm::Crc32C)
            .set_server_side_encryption(self.sse.clone())
            .set_ssekms_key_id(self.kms_key_id.clone())
            .send()
            .await
            .map_err(|e| Failed::sdk("PutObject", &e))?;
        Ok(())
    }

    /// A multipart upload; returns the number of parts. Aborted when any step after its
    /// creation fails.
    async fn put_multipart(
        &self,
        object_key: &str,
        path: &Path,
        bytes: u64,
    ) -> Result<u64, Failed> {
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(object_key)
            .content_type(content_type(object_key))
            .checksum_algorithm(ChecksumAlgorithm::Crc32C)
            .set_server_side_encryption(self.sse.clone())
            .set_ssekms_key_id(self.kms_key_id.clone())
            .send()
            .await
            .map_err(|e| Failed::sdk("CreateMultipartUpload", &e))?;
        let upload_id = created
            .upload_id()
            .ok_or("CreateMultipartUpload: the response has no upload id")?;
        match self.upload_parts(object_key, upload_id, path, bytes).await {
            Ok(parts) => Ok(parts),
            Err(message) => {
                self.abort(object_key, upload_id).await;
                Err(message)
            }
        }
    }

    /// Uploads every part of `path` in order, then completes the upload.
    async fn upload_parts(
        &self,
        object_key: &str,
        upload_id: &str,
        path: &Path,
        bytes: u64,
    ) -> Result<u64, Failed> {
        // Parts grow beyond the configured size only for files S3 would otherwise refuse
        // (more than 10,000 parts).
        let part_size = self.part_size.max(bytes.div_ceil(MAX_PARTS));
        let mut completed = Vec::new();
        let mut offset = 0;
        let mut part_number = 1;
        while offset < bytes {
            let len = part_size.min(bytes - offset);
            let body = ByteStream::read_from()
                .path(path)
                .offset(offset)
                .length(Length::Exact(len))
                .build()
                .await
                .map_err(|e| {
                    format!(
                        "reading part {part_number} of {}: {}",
                        path.display(),
                        Causes(&e)
                    )
                })?;
            let uploaded = self
                .client
                .upload_part()
                .bucket(&self.bucket)
                .key(object_key)
                .upload_id(upload_id)
                .part_number(part_number)
                .body(body)
                .content_length(content_length(len)?)
                .checksum_algorithm(ChecksumAlgorithm::Crc32C)
                .send()
                .await
                .map_err(|e| Failed::sdk(&format!("UploadPart {part_number}"), &e))?;
            let e_tag = uploaded
                .e_tag()
                .ok_or_else(|| format!("UploadPart {part_number}: the response has no ETag"))?;
            completed.push(
                CompletedPart::builder()
                    .part_number(part_number)
                    .e_tag(e_tag)
                    .set_checksum_crc32_c(uploaded.checksum_crc32_c().map(str::to_owned))
                    .build(),
            );
            tracing::trace!(object_key, part_number, bytes = len, "part uploaded");
            offset += len;
            part_number += 1;
        }
        let parts = completed.len() as u64;
        self.client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(object_key)
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(completed))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| Failed::sdk("CompleteMultipartUpload", &e))?;
        Ok(parts)
    }

    /// AbortMultipartUpload, best effort: a failure is logged, the upload's original error is
    /// what the caller reports.
    async fn abort(&self, object_key: &str, upload_id: &str) {
        let aborted = self
            .client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(object_key)
            .upload_id(upload_id)
            .send()
            .await;
        if let Err(e) = aborted {
            tracing::warn!(
                bucket = %self.bucket,
                object_key,
                upload_id,
                error = %sdk_in_words(&e),
                "failed multipart upload left open; a lifecycle rule must expire its parts"
            );
        }
    }
}

/// The size of the file at `path`.
async fn file_len(path: &Path) -> Result<u64, String> {
    let owned = path.to_owned();
    tokio::task::spawn_blocking(move || std::fs::metadata(owned))
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| e.to_string()))
        .map(|metadata| metadata.len())
        .map_err(|e| format!("reading {}: {e}", path.display()))
}

/// `bytes` as the SDK's content length.
fn content_length(bytes: u64) -> Result<i64, String> {
    i64::try_from(bytes).map_err(|_| format!("{bytes} bytes is more than S3 accepts"))
}

/// A failed upload: its kind and what failed, in words.
#[derive(Debug)]
struct Failed {
    failure: Failure,
    message: String,
}

impl Failed {
    /// The failure of the SDK call `call`.
    fn sdk<E>(call: &str, error: &SdkError<E>) -> Self
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        Self {
            failure: Failure::of_sdk(error),
            message: format!("{call}: {}", sdk_in_words(error)),
        }
    }
}

/// A failure on this side (the spooled file, a size S3 refuses): [`Failure::Other`].
impl From<String> for Failed {
    fn from(message: String) -> Self {
        Self {
            failure: Failure::Other,
            message,
        }
    }
}

impl From<&str> for Failed {
    fn from(message: &str) -> Self {
        message.to_owned().into()
    }
}
