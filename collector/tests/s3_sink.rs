//! The S3 sink against a real S3-compatible server (s3s-fs, see `support/s3_server.rs`):
//! what a client of the bucket sees after each delivery, and how failures are reported.

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use support::s3_server::{ACCESS_KEY, S3Server, SECRET_KEY};
use tollgate_collector::config::{S3Config, ServerSideEncryption};
use tollgate_collector::sink::{S3Sink, SinkError};
use tollgate_test_support::{TempDir, temp_dir};

const MIB: u64 = 1024 * 1024;

/// A key in the collector's layout.
const KEY: &str = "cluster=lab/dt=2026-11-25/hour=06/node-a-000001.parquet";

/// Longest a failing delivery may take in these tests (the SDK retries with backoff).
const FAILURE_BOUND: Duration = Duration::from_secs(20);

/// `len` bytes that differ from `seed`'s and do not repeat with any short period.
fn varied_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

/// Writes `bytes` to a file named `name` under `dir`.
fn write_file(dir: &TempDir, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, bytes).expect("writing the test file");
    path
}

/// Settings for multipart uploads of 5 MiB parts from 5 MiB on.
fn multipart_config(server: &S3Server) -> S3Config {
    S3Config {
        multipart_threshold_bytes: 5 * MIB,
        part_size_bytes: 5 * MIB,
        ..server.config("flows")
    }
}

async fn sink(config: &S3Config) -> S3Sink {
    S3Sink::new(config).await.expect("building the S3 sink")
}

/// The object's ETag and content type, as HeadObject reports them.
async fn head(server: &S3Server, key: &str) -> (String, String) {
    let head = server
        .client()
        .head_object()
        .bucket(server.bucket())
        .key(key)
        .send()
        .await
        .expect("HeadObject");
    (
        head.e_tag().unwrap_or_default().to_owned(),
        head.content_type().unwrap_or_default().to_owned(),
    )
}

/// A put that must fail, within [`FAILURE_BOUND`]; returns its message.
async fn failed_put(sink: &S3Sink, path: &Path) -> String {
    let started = Instant::now();
    let result = tokio::time::timeout(FAILURE_BOUND, sink.put(KEY, path))
        .await
        .expect("a refused put fails in bounded time");
    match result {
        Err(SinkError::Put {
            location, message, ..
        }) => {
            eprintln!("failed after {:?}: {message}", started.elapsed());
            assert_eq!(location, sink.location(KEY));
            message
        }
        other => panic!("expected SinkError::Put, got {other:?}"),
    }
}

/// The requests `server` received for `operation`, told apart by their URIs.
fn requests_of(server: &S3Server, operation: Operation) -> Vec<String> {
    server
        .requests()
        .into_iter()
        .filter(|request| {
            let uri = request
                .split_once("uri: ")
                .and_then(|(_, rest)| rest.split(',').next())
                .unwrap_or_default();
            match operation {
                Operation::PutObject => uri.contains("x-id=PutObject"),
                Operation::CreateMultipartUpload => uri.ends_with("?uploads"),
                Operation::UploadPart => uri.contains("x-id=UploadPart"),
                Operation::AbortMultipartUpload => uri.contains("x-id=AbortMultipartUpload"),
            }
        })
        .collect()
}

/// The S3 operations the tests pick out of a server's request log.
#[derive(Debug, Clone, Copy)]
enum Operation {
    PutObject,
    CreateMultipartUpload,
    UploadPart,
    AbortMultipartUpload,
}

/// Puts a small and a multipart file with `sse`; returns the server with its request log.
async fn put_both_ways(sse: ServerSideEncryption) -> S3Server {
    let server = S3Server::start().await;
    let files = temp_dir("s3-sink");
    let small = varied_bytes(10_000, 10);
    let large = varied_bytes((6 * MIB) as usize, 11);
    let sink = sink(&S3Config {
        sse,
        ..multipart_config(&server)
    })
    .await;
    sink.put("small", &write_file(&files, "small", &small))
        .await
        .expect("PutObject");
    sink.put("large", &write_file(&files, "large", &large))
        .await
        .expect("multipart upload");
    assert_eq!(
        server.objects().await,
        vec![
            ("flows/large".to_owned(), large),
            ("flows/small".to_owned(), small)
        ]
    );
    server
}

/// Asserts that PutObject and CreateMultipartUpload carried exactly `expected` of the
/// encryption headers, and UploadPart none (S3 refuses them there).
fn assert_sse_headers(server: &S3Server, expected: &[&str]) {
    const SSE_HEADER: &str = "\"x-amz-server-side-encryption";
    for operation in [Operation::PutObject, Operation::CreateMultipartUpload] {
        let requests = requests_of(server, operation);
        assert_eq!(requests.len(), 1, "one {operation:?} request");
        for header in expected {
            assert!(
                requests[0].contains(header),
                "{operation:?} lacks {header}: {}",
                requests[0]
            );
        }
        assert_eq!(
            requests[0].matches(SSE_HEADER).count(),
            expected.len(),
            "{operation:?} has other encryption headers: {}",
            requests[0]
        );
    }
    let parts = requests_of(server, Operation::UploadPart);
    assert_eq!(parts.len(), 2, "two UploadPart requests");
    assert!(
        parts.iter().all(|part| !part.contains(SSE_HEADER)),
        "{parts:?}"
    );
}

/// Servers that know other keys than the sink finds in the environment
/// (`ACCESS_KEY`/`SECRET_KEY`), with the error code each answers: s3s says NotSignedUp for an
/// unknown access key (AWS: InvalidAccessKeyId) and SignatureDoesNotMatch for a wrong secret.
async fn servers_with_other_keys() -> [(S3Server, &'static str); 2] {
    [
        (
            S3Server::start_with_keys("someone-else", SECRET_KEY).await,
            "NotSignedUp",
        ),
        (
            S3Server::start_with_keys(ACCESS_KEY, "another-secret").await,
            "SignatureDoesNotMatch",
        ),
    ]
}

#[tokio::test]
async fn small_file_round_trips() {
    let server = S3Server::start().await;
    let files = temp_dir("s3-sink");
    let bytes = varied_bytes(70_000, 1);
    let path = write_file(&files, "small.parquet", &bytes);
    let sink = sink(&server.config("flows")).await;

    sink.put(KEY, &path).await.expect("put");

    let key = format!("flows/{KEY}");
    assert_eq!(server.objects().await, vec![(key.clone(), bytes)]);
    let (e_tag, content_type) = head(&server, &key).await;
    assert_eq!(content_type, "application/vnd.apache.parquet");
    assert!(!e_tag.contains('-'), "a single PutObject, got ETag {e_tag}");
}

#[tokio::test]
async fn empty_file_round_trips() {
    let server = S3Server::start().await;
    let files = temp_dir("s3-sink");
    let path = write_file(&files, "empty.parquet", &[]);
    let sink = sink(&multipart_config(&server)).await;

    sink.put(KEY, &path).await.expect("put");

    assert_eq!(
        server.objects().await,
        vec![(format!("flows/{KEY}"), Vec::new())]
    );
}

#[tokio::test]
async fn large_file_goes_in_parts_and_round_trips() {
    let server = S3Server::start().await;
    let files = temp_dir("s3-sink");
    let bytes = varied_bytes((12 * MIB + 12_345) as usize, 2);
    let path = write_file(&files, "large.parquet", &bytes);
    let sink = sink(&multipart_config(&server)).await;

    sink.put(KEY, &path).await.expect("put");

    let key = format!("flows/{KEY}");
    let objects = server.objects().await;
    assert_eq!(objects.len(), 1);
    assert_eq!(objects[0].0, key);
    assert!(objects[0].1 == bytes, "the object differs from the file");
    let (e_tag, content_type) = head(&server, &key).await;
    assert!(
        e_tag.ends_with("-3\""),
        "three parts expected, got ETag {e_tag}"
    );
    assert_eq!(content_type, "application/vnd.apache.parquet");
}

#[tokio::test]
async fn file_at_the_threshold_goes_in_parts() {
    let server = S3Server::start().await;
    let files = temp_dir("s3-sink");
    let bytes = varied_bytes((5 * MIB) as usize, 3);
    let path = write_file(&files, "threshold.parquet", &bytes);
    let sink = sink(&multipart_config(&server)).await;

    sink.put(KEY, &path).await.expect("put");

    let key = format!("flows/{KEY}");
    assert!(server.objects().await == vec![(key.clone(), bytes)]);
    let (e_tag, _) = head(&server, &key).await;
    assert!(
        e_tag.ends_with("-1\""),
        "one part expected, got ETag {e_tag}"
    );
}

#[tokio::test]
async fn putting_a_key_again_overwrites_it() {
    let server = S3Server::start().await;
    let files = temp_dir("s3-sink");
    let sink = sink(&multipart_config(&server)).await;
    let first = varied_bytes((6 * MIB) as usize, 4);
    let second = varied_bytes(1000, 5);
    let third = varied_bytes((5 * MIB + 1) as usize, 6);

    for (name, bytes) in [("1", &first), ("2", &second), ("3", &third)] {
        let path = write_file(&files, name, bytes);
        sink.put(KEY, &path).await.expect("put");
        let objects = server.objects().await;
        assert_eq!(objects.len(), 1, "after put {name}");
        assert_eq!(objects[0].0, format!("flows/{KEY}"));
        assert!(
            &objects[0].1 == bytes,
            "after put {name}, the object is not the new file"
        );
    }
}

#[tokio::test]
async fn objects_go_under_the_prefix() {
    let server = S3Server::start().await;
    let files = temp_dir("s3-sink");
    let bytes = varied_bytes(100, 7);
    let path = write_file(&files, "f.parquet", &bytes);
    let nested = sink(&server.config("tollgate/flows")).await;
    let bare = sink(&server.config("")).await;

    nested.put(KEY, &path).await.expect("put with a prefix");
    bare.put(KEY, &path).await.expect("put without a prefix");

    assert_eq!(
        server.objects().await,
        vec![
            (KEY.to_owned(), bytes.clone()),
            (format!("tollgate/flows/{KEY}"), bytes),
        ]
    );
    let bucket = server.bucket();
    assert_eq!(
        nested.location(KEY),
        format!("s3://{bucket}/tollgate/flows/{KEY}")
    );
    assert_eq!(bare.location(KEY), format!("s3://{bucket}/{KEY}"));
}

#[tokio::test]
async fn outage_is_reported_then_the_retry_succeeds() {
    let mut server = S3Server::start().await;
    let files = temp_dir("s3-sink");
    let bytes = varied_bytes(50_000, 8);
    let path = write_file(&files, "f.parquet", &bytes);
    let config = S3Config {
        max_attempts: 2,
        ..server.config("flows")
    };
    let sink = sink(&config).await;

    server.stop();
    let message = failed_put(&sink, &path).await;
    assert!(message.contains("PutObject"), "{message}");
    assert!(message.contains("Connection refused"), "{message}");

    server.restart().await;
    sink.put(KEY, &path).await.expect("put after the restart");
    assert_eq!(
        server.objects().await,
        vec![(format!("flows/{KEY}"), bytes)]
    );
}

#[tokio::test]
async fn outage_during_multipart_is_reported_then_the_retry_succeeds() {
    let mut server = S3Server::start().await;
    let files = temp_dir("s3-sink");
    let bytes = varied_bytes((11 * MIB) as usize, 9);
    let path = write_file(&files, "f.parquet", &bytes);
    let config = S3Config {
        max_attempts: 2,
        ..multipart_config(&server)
    };
    let sink = sink(&config).await;

    server.stop();
    let message = failed_put(&sink, &path).await;
    assert!(message.contains("CreateMultipartUpload"), "{message}");
    assert!(message.contains("Connection refused"), "{message}");

    server.restart().await;
    sink.put(KEY, &path).await.expect("put after the restart");
    let objects = server.objects().await;
    assert_eq!(objects.len(), 1);
    assert!(objects[0].1 == bytes, "the object differs from the file");
}

#[tokio::test]
async fn failed_multipart_upload_is_aborted() {
    let server = S3Server::start().await;
    let files = temp_dir("s3-sink");
    // A directory has a size but no bytes to read: the upload is created, then its first
    // part fails.
    let unreadable = files.path().join("not-a-file");
    std::fs::create_dir(&unreadable).expect("creating the directory");
    let sink = sink(&S3Config {
        multipart_threshold_bytes: 1,
        ..server.config("flows")
    })
    .await;

    let message = failed_put(&sink, &unreadable).await;

    assert!(message.contains("UploadPart 1"), "{message}");
    let aborts = requests_of(&server, Operation::AbortMultipartUpload);
    assert_eq!(
        aborts.len(),
        1,
        "one AbortMultipartUpload: {:?}",
        server.requests()
    );
    assert!(server.objects().await.is_empty());
}

#[tokio::test]
async fn bucket_default_encryption_sends_no_header() {
    let server = put_both_ways(ServerSideEncryption::BucketDefault).await;
    assert_sse_headers(&server, &[]);
}

#[tokio::test]
async fn sse_s3_is_requested() {
    let server = put_both_ways(ServerSideEncryption::S3).await;
    assert_sse_headers(&server, &[r#""x-amz-server-side-encryption": "AES256""#]);
}

#[tokio::test]
async fn sse_kms_is_requested_with_its_key() {
    let key = "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab";
    let server = put_both_ways(ServerSideEncryption::Kms {
        key_id: Some(key.to_owned()),
    })
    .await;
    let key_header = format!(r#""x-amz-server-side-encryption-aws-kms-key-id": "{key}""#);
    assert_sse_headers(
        &server,
        &[r#""x-amz-server-side-encryption": "aws:kms""#, &key_header],
    );
}

#[tokio::test]
async fn sse_kms_without_a_key_leaves_the_key_to_the_bucket() {
    let server = put_both_ways(ServerSideEncryption::Kms { key_id: None }).await;
    assert_sse_headers(&server, &[r#""x-amz-server-side-encryption": "aws:kms""#]);
}

#[tokio::test]
async fn bodies_carry_a_crc32c_checksum_and_the_parquet_type() {
    let server = put_both_ways(ServerSideEncryption::BucketDefault).await;
    for operation in [Operation::PutObject, Operation::UploadPart] {
        for request in requests_of(&server, operation) {
            assert!(
                request.contains(r#""x-amz-trailer": "x-amz-checksum-crc32c""#),
                "{operation:?} without a CRC32C trailer: {request}"
            );
        }
    }
    let create = requests_of(&server, Operation::CreateMultipartUpload);
    assert!(
        create[0].contains(r#""x-amz-checksum-algorithm": "CRC32C""#),
        "{create:?}"
    );
    for request in [Operation::PutObject, Operation::CreateMultipartUpload]
        .into_iter()
        .flat_map(|operation| requests_of(&server, operation))
    {
        assert!(
            request.contains(r#""content-type": "application/vnd.apache.parquet""#),
            "{request}"
        );
    }
}

#[tokio::test]
async fn wrong_credentials_are_refused_clearly() {
    let files = temp_dir("s3-sink");
    let path = write_file(&files, "f.parquet", &varied_bytes(100, 12));
    for (server, code) in servers_with_other_keys().await {
        // From one byte on, files go as multipart uploads, whose first request,
        // CreateMultipartUpload, has no body: the server's 403 always reaches the client.
        let sink = sink(&S3Config {
            multipart_threshold_bytes: 1,
            ..server.config("flows")
        })
        .await;
        let message = failed_put(&sink, &path).await;
        assert!(message.contains("CreateMultipartUpload"), "{message}");
        assert!(message.contains(code), "{message}");
        assert!(message.contains("403"), "{message}");
        assert!(server.objects().await.is_empty());
    }
}

#[tokio::test]
async fn wrong_credentials_fail_a_put_object_in_bounded_time() {
    let files = temp_dir("s3-sink");
    let path = write_file(&files, "f.parquet", &varied_bytes(100, 13));
    for (server, code) in servers_with_other_keys().await {
        let sink = sink(&server.config("flows")).await;
        let message = failed_put(&sink, &path).await;
        // s3s refuses a PutObject from its headers and closes the connection without reading
        // the body, so the client sees either the 403 or, when the body was still being
        // written, a broken pipe or reset; the SDK retries those, so the 403 usually wins.
        assert!(
            message.contains(code)
                || message.contains("Broken pipe")
                || message.contains("Connection reset"),
            "{message}"
        );
        assert!(server.objects().await.is_empty());
    }
}

#[tokio::test]
async fn endpoint_without_a_scheme_is_a_configuration_error() {
    let config = S3Config {
        region: "us-east-1".to_owned(),
        bucket: "flows".to_owned(),
        prefix: String::new(),
        endpoint_url: Some("127.0.0.1:9000".to_owned()),
        path_style: true,
        sse: ServerSideEncryption::BucketDefault,
        multipart_threshold_bytes: 64 * MIB,
        part_size_bytes: 16 * MIB,
        max_attempts: 3,
    };
    match S3Sink::new(&config).await {
        Err(SinkError::Config(message)) => assert!(message.contains("http://"), "{message}"),
        other => panic!("expected SinkError::Config, got {other:?}"),
    }
}
