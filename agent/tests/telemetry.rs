//! Traces over OTLP/HTTP to a receiver on 127.0.0.1: spans reach `/v1/traces` as protobuf,
//! flushed by `Telemetry::shutdown`; nothing else is exported (metrics are on `/metrics`).

use tollgate_agent::{config::LogFormat, telemetry::Telemetry};
use tollgate_test_support::http_stub::{HttpStub, reply};

/// An OTLP/HTTP receiver that accepts every export (and remembers it).
fn receiver() -> HttpStub {
    HttpStub::start(|_| {
        reply(
            200,
            &[("content-type", "application/x-protobuf")],
            Vec::new(),
        )
    })
}

#[test]
fn spans_reach_the_otlp_endpoint() {
    let receiver = receiver();
    let (telemetry, subscriber) =
        Telemetry::subscriber(LogFormat::Json, &receiver.endpoint_url()).unwrap();
    tracing::subscriber::with_default(subscriber, || {
        let span = tracing::info_span!("reconcile", endpoints = 4, upserts = 2);
        let _entered = span.enter();
        tracing::info!("maps synced");
    });
    telemetry.shutdown();
    let seen = receiver.requests();
    let export = seen
        .iter()
        .find(|r| r.path == "/v1/traces")
        .unwrap_or_else(|| panic!("nothing exported to /v1/traces: {seen:?}"));
    assert_eq!(
        export.header("content-type"),
        Some("application/x-protobuf")
    );
    assert!(!export.body.is_empty(), "an empty export to /v1/traces");
    assert!(
        seen.iter().all(|r| r.path == "/v1/traces"),
        "only traces are exported: {seen:?}"
    );
}

#[test]
fn without_an_endpoint_nothing_is_exported_and_logs_still_work() {
    let (telemetry, subscriber) = Telemetry::subscriber(LogFormat::Text, "").unwrap();
    tracing::subscriber::with_default(subscriber, || tracing::info!(answer = 42, "logged"));
    telemetry.shutdown();
}
