//! S3 failures as the sink reports them (and `tollgate quarantine` prints them): in words,
//! each cause once, never the SDK's structures (`DispatchFailure(DispatchFailure { source:
//! ConnectorError { … } })`), and of the kind the shipper counts and logs them by.

mod support;

use support::s3_server::{S3Server, SECRET_KEY};
use tollgate_collector::config::S3Config;
use tollgate_collector::sink::{Failure, S3Sink, SinkError};
use tollgate_test_support::temp_dir;

const KEY: &str = "cluster=lab/dt=2026-11-25/hour=06/node-a-000001.parquet";

async fn failed_put(config: &S3Config) -> (String, Failure) {
    let files = temp_dir("sdk-errors");
    let path = files.path().join("f.parquet");
    std::fs::write(&path, b"PAR1").unwrap();
    let sink = S3Sink::new(config).await.expect("building the S3 sink");
    match sink.put(KEY, &path).await {
        Err(SinkError::Put {
            message, failure, ..
        }) => (message, failure),
        other => panic!("expected SinkError::Put, got {other:?}"),
    }
}

fn assert_in_words(message: &str) {
    for raw in ["{", "DispatchFailure(", "ConnectorError", "Os {", "kind:"] {
        assert!(!message.contains(raw), "an SDK structure in: {message}");
    }
}

#[tokio::test]
async fn an_unreachable_endpoint_is_said_once_in_words() {
    let mut server = S3Server::start().await;
    let config = S3Config {
        max_attempts: 1,
        ..server.config("flows")
    };
    server.stop();
    let (message, failure) = failed_put(&config).await;
    assert_eq!(failure, Failure::Unreachable);
    assert_in_words(&message);
    assert!(message.starts_with("PutObject: "), "{message}");
    assert_eq!(
        message.matches("Connection refused").count(),
        1,
        "{message}"
    );
}

#[tokio::test]
async fn a_refusal_names_its_code_and_status() {
    let server = S3Server::start_with_keys("someone-else", SECRET_KEY).await;
    // The server refuses on the request's headers and closes the connection without reading
    // the body: on a busy machine the client may still be writing it and fail with a broken
    // pipe before it reads the 403. That race is the transport's, not what this test is
    // about: a few tries get the refusal itself.
    let (mut message, mut failure) = (String::new(), Failure::Other);
    for _ in 0..5 {
        (message, failure) = failed_put(&server.config("flows")).await;
        if !message.contains("Broken pipe") {
            break;
        }
    }
    assert_eq!(failure, Failure::Denied, "{message}");
    assert!(failure.needs_operator());
    assert_in_words(&message);
    assert!(message.starts_with("PutObject: NotSignedUp"), "{message}");
    assert!(message.ends_with("(HTTP 403)"), "{message}");
}
