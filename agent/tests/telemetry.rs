//! Traces over OTLP/HTTP to a receiver on 127.0.0.1: spans reach `/v1/traces` as protobuf,
//! flushed by `Telemetry::shutdown`; nothing else is exported (metrics are on `/metrics`).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use tollgate_agent::{config::LogFormat, telemetry::Telemetry};

/// What the receiver saw: path, content type, body bytes.
type Seen = Arc<Mutex<Vec<(String, String, usize)>>>;

/// An OTLP/HTTP receiver that accepts every export and remembers it.
fn receiver() -> (String, Seen) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let seen: Seen = Arc::default();
    let record = Arc::clone(&seen);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            let path = line.split(' ').nth(1).unwrap_or_default().to_owned();
            let (mut length, mut content_type) = (0, String::new());
            loop {
                let mut header = String::new();
                reader.read_line(&mut header).unwrap();
                let header = header.trim_end();
                if header.is_empty() {
                    break;
                }
                let (name, value) = header.split_once(':').unwrap_or_default();
                match name.to_ascii_lowercase().as_str() {
                    "content-length" => length = value.trim().parse().unwrap_or(0),
                    "content-type" => content_type = value.trim().to_owned(),
                    _ => {}
                }
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            record.lock().unwrap().push((path, content_type, length));
            let reply = "HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
            stream.write_all(reply.as_bytes()).unwrap();
        }
    });
    (endpoint, seen)
}

#[test]
fn spans_reach_the_otlp_endpoint() {
    let (endpoint, seen) = receiver();
    let (telemetry, subscriber) = Telemetry::subscriber(LogFormat::Json, &endpoint).unwrap();
    tracing::subscriber::with_default(subscriber, || {
        let span = tracing::info_span!("reconcile", endpoints = 4, upserts = 2);
        let _entered = span.enter();
        tracing::info!("maps synced");
    });
    telemetry.shutdown();
    let seen = seen.lock().unwrap();
    let export = seen
        .iter()
        .find(|(path, _, _)| path == "/v1/traces")
        .unwrap_or_else(|| panic!("nothing exported to /v1/traces: {seen:?}"));
    assert_eq!(export.1, "application/x-protobuf");
    assert!(export.2 > 0, "an empty export to /v1/traces");
    assert!(
        seen.iter().all(|(path, _, _)| path == "/v1/traces"),
        "only traces are exported: {seen:?}"
    );
}

#[test]
fn without_an_endpoint_nothing_is_exported_and_logs_still_work() {
    let (telemetry, subscriber) = Telemetry::subscriber(LogFormat::Text, "").unwrap();
    tracing::subscriber::with_default(subscriber, || tracing::info!(answer = 42, "logged"));
    telemetry.shutdown();
}
