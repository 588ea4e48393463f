//! Traces and metrics over OTLP/HTTP to a receiver on 127.0.0.1: spans and counter events
//! reach `/v1/traces` and `/v1/metrics` as protobuf, flushed by `Telemetry::shutdown`.

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
fn spans_and_counters_reach_the_otlp_endpoint() {
    let receiver = receiver();
    let (telemetry, subscriber) =
        Telemetry::subscriber(LogFormat::Json, &receiver.endpoint_url()).unwrap();
    tracing::subscriber::with_default(subscriber, || {
        let span = tracing::info_span!("reconcile", endpoints = 4, upserts = 2);
        let _entered = span.enter();
        tracing::info!(
            monotonic_counter.tollgate_syncs_total = 1_u64,
            "maps synced"
        );
        tracing::info!(histogram.tollgate_sync_seconds = 0.004_f64, "sync time");
    });
    telemetry.shutdown();
    let seen = receiver.requests();
    for path in ["/v1/traces", "/v1/metrics"] {
        let export = seen
            .iter()
            .find(|r| r.path == path)
            .unwrap_or_else(|| panic!("nothing exported to {path}: {seen:?}"));
        assert_eq!(
            export.header("content-type"),
            Some("application/x-protobuf")
        );
        assert!(!export.body.is_empty(), "an empty export to {path}");
    }
}

#[test]
fn without_an_endpoint_nothing_is_exported_and_logs_still_work() {
    let (telemetry, subscriber) = Telemetry::subscriber(LogFormat::Text, "").unwrap();
    tracing::subscriber::with_default(subscriber, || tracing::info!(answer = 42, "logged"));
    telemetry.shutdown();
}
