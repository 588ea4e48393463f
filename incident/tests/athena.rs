//! Evidence bundles through Athena, against a stub of Athena's API (`support/athena_stub.rs`)
//! and a real S3-compatible server (s3s-fs): the query (dt pruning, the pod's filter, every
//! value an execution parameter), polling and paging, exactly the objects Athena names read —
//! with the same flows, isolations and losses as listing finds — and the refusals: a failed
//! query, a path outside the flow log, a bad database name, a query that runs too long.

#[path = "../../collector/tests/support/s3_server.rs"]
mod s3_server;
mod support;

use std::path::Path;
use std::time::Duration;

use s3_server::S3Server;
use support::{
    athena_stub::{AthenaStub, Outcome, QUERY_ID},
    flowlog::{FROM, TO, flow, identity, isolation, parquet},
    temp_dir,
};
use tollgate_collector::{
    loss::{LossSource, LossSpan},
    record::FlowRecord,
};
use tollgate_incident::{
    PodRef,
    athena::{self, AthenaOptions},
    evidence::{self, Bundle, Request},
    location::{FlowLogLocation, S3Options},
};
use tollgate_schemas::Verdict;

const PARTITION: &str = "tollgate/cluster=prod/dt=2026-11-25/hour=10";
const WORKGROUP: &str = "tollgate-wg";

/// Uploads the flow log of cluster `prod` under `tollgate/`: two objects with records of
/// `shop/web` (and a loss) in the window, and a third, in the same partition, with none — the
/// one Athena does not name, and listing reads anyway.
async fn upload_flow_log(server: &S3Server) {
    let web = identity("shop", "web");
    let api = identity("shop", "api");
    let db = identity("data", "db");
    let objects = [
        (
            "node-a-1.parquet",
            parquet(
                "node-a",
                &[
                    flow(FROM + 10, &web, &api, Verdict::Allow),
                    flow(FROM + 900, &api, &web, Verdict::Deny),
                    flow(FROM - 100, &web, &api, Verdict::Allow),
                    flow(FROM + 20, &api, &db, Verdict::Allow),
                    FlowRecord::loss(LossSpan {
                        source: LossSource::RingbufFull,
                        events: Some(7),
                        from_s: FROM - 30,
                        to_s: FROM + 30,
                    }),
                    isolation(FROM + 800, &web),
                ],
                None,
            ),
        ),
        (
            "node-b-1.parquet",
            parquet("node-b", &[flow(FROM + 60, &web, &db, Verdict::Deny)], None),
        ),
        (
            "node-c-1.parquet",
            parquet(
                "node-c",
                &[flow(FROM + 70, &api, &db, Verdict::Allow)],
                None,
            ),
        ),
    ];
    for (name, bytes) in objects {
        server
            .client()
            .put_object()
            .bucket(server.bucket())
            .key(format!("{PARTITION}/{name}"))
            .body(bytes.into())
            .send()
            .await
            .unwrap();
    }
}

fn location(server: &S3Server) -> FlowLogLocation {
    format!("s3://{}/tollgate", server.bucket())
        .parse()
        .unwrap()
}

fn s3_options(server: &S3Server) -> S3Options {
    S3Options {
        region: s3_server::REGION.to_owned(),
        endpoint_url: Some(server.endpoint_url()),
        path_style: true,
    }
}

fn request(
    location: FlowLogLocation,
    s3: S3Options,
    out: &Path,
    athena: Option<AthenaOptions>,
) -> Request {
    Request {
        pod: "shop/web".parse::<PodRef>().unwrap(),
        cluster: Some("prod".into()),
        from_s: FROM,
        to_s: TO,
        location,
        s3,
        out: out.to_owned(),
        athena,
    }
}

fn athena_options(stub: &AthenaStub) -> AthenaOptions {
    AthenaOptions {
        endpoint_url: Some(stub.endpoint_url()),
        ..AthenaOptions::new(WORKGROUP)
    }
}

fn read(bundle: &Bundle, file: &str) -> Vec<u8> {
    std::fs::read(bundle.dir.join(file)).unwrap()
}

/// The number of requests s3s-fs logged that name `key`.
fn requests_naming(server: &S3Server, key: &str) -> usize {
    server.requests().iter().filter(|r| r.contains(key)).count()
}

#[tokio::test]
async fn a_bundle_through_athena_reads_only_the_objects_it_names() {
    let server = S3Server::start().await;
    upload_flow_log(&server).await;
    let bucket = server.bucket().to_owned();
    let path = |name: &str| format!("s3://{bucket}/{PARTITION}/{name}");
    // Out of order across the two pages: the keys come back sorted.
    let stub = AthenaStub::start(Outcome::Succeed(vec![
        path("node-b-1.parquet"),
        path("node-a-1.parquet"),
    ]))
    .await;
    let out = temp_dir("athena-bundle");
    let unnamed_before = requests_naming(&server, "node-c-1");
    let through_athena = evidence::collect(
        &request(
            location(&server),
            s3_options(&server),
            &out.path().join("athena"),
            Some(athena_options(&stub)),
        ),
        Vec::new(),
        TO + 5,
    )
    .await
    .expect("bundle through Athena");

    // One query, polled through QUEUED and RUNNING, its results read over two pages.
    assert_eq!(
        stub.operations(),
        [
            "StartQueryExecution",
            "GetQueryExecution",
            "GetQueryExecution",
            "GetQueryExecution",
            "GetQueryResults",
            "GetQueryResults",
        ]
    );
    let calls = stub.calls();
    assert_eq!(calls[1].body["QueryExecutionId"], QUERY_ID);
    assert_eq!(calls[4].body.get("NextToken"), None);
    assert_eq!(calls[5].body["NextToken"], "page-2");
    let started = stub.started();
    assert_eq!(started["WorkGroup"], WORKGROUP);
    assert_eq!(started["QueryExecutionContext"]["Database"], "tollgate");
    let query = started["QueryString"].as_str().unwrap();
    for part in [
        "SELECT DISTINCT \"$path\"",
        "FROM \"tollgate\".\"flows\"",
        "WHERE dt >= ?",
        "AND dt <= ?",
        "AND \"end\" >= ?",
        "AND \"start\" < ?",
        "AND cluster = ?",
        "log_status = 'SKIPDATA'",
        "OR (src_namespace = ? AND src_pod = ?)",
        "OR (dst_namespace = ? AND dst_pod = ?)",
    ] {
        assert!(query.contains(part), "{part:?} not in the query:\n{query}");
    }
    let parameters: Vec<&str> = started["ExecutionParameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert_eq!(
        parameters,
        [
            "'2026-11-25'",
            "'2026-11-25'",
            &FROM.to_string(),
            &TO.to_string(),
            "'prod'",
            "'shop'",
            "'web'",
            "'shop'",
            "'web'",
        ]
    );
    assert_eq!(query.matches('?').count(), parameters.len(), "{query}");

    // Exactly the named objects, with their ETags; the third never requested.
    let sources: serde_json::Value =
        serde_json::from_slice(&read(&through_athena, "sources.json")).unwrap();
    let locations: Vec<&str> = sources
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["location"].as_str().unwrap())
        .collect();
    assert_eq!(
        locations,
        [path("node-a-1.parquet"), path("node-b-1.parquet")]
    );
    assert!(
        sources
            .as_array()
            .unwrap()
            .iter()
            .all(|s| !s["etag"].as_str().unwrap_or_default().is_empty()),
        "{sources}"
    );
    assert_eq!(requests_naming(&server, "node-c-1"), unnamed_before);
    assert_eq!(
        through_athena.manifest.source,
        format!("athena:{WORKGROUP}/tollgate.flows → s3://{bucket}/tollgate")
    );
    evidence::verify(&through_athena.dir, Some(&through_athena.manifest_sha256)).expect("intact");

    // Listing reads the third object too, and finds the same records.
    let listed = evidence::collect(
        &request(
            location(&server),
            s3_options(&server),
            &out.path().join("listed"),
            None,
        ),
        Vec::new(),
        TO + 5,
    )
    .await
    .expect("bundle by listing");
    assert!(requests_naming(&server, "node-c-1") > unnamed_before);
    let (athena_counts, listed_counts) = (through_athena.manifest.counts, listed.manifest.counts);
    assert_eq!(
        (
            athena_counts.flows,
            athena_counts.isolations,
            athena_counts.losses
        ),
        (3, 1, 1)
    );
    assert_eq!(
        (
            listed_counts.flows,
            listed_counts.isolations,
            listed_counts.losses
        ),
        (
            athena_counts.flows,
            athena_counts.isolations,
            athena_counts.losses
        )
    );
    assert_eq!((athena_counts.sources, listed_counts.sources), (2, 3));
    for file in ["flows.parquet", "isolations.parquet", "losses.parquet"] {
        assert!(
            read(&through_athena, file) == read(&listed, file),
            "{file} differs between the bundles"
        );
    }
}

#[tokio::test]
async fn a_failed_query_gives_athenas_reason() {
    // The S3 server gives the default chain its credentials; nothing is read from it.
    let server = S3Server::start().await;
    let reason = "COLUMN_NOT_FOUND: line 6:8: Column 'src_pod' cannot be resolved";
    let stub = AthenaStub::start(Outcome::Fail(reason.to_owned())).await;
    let out = temp_dir("athena-failed");
    let error = evidence::collect(
        &request(
            location(&server),
            s3_options(&server),
            &out.path().join("b"),
            Some(athena_options(&stub)),
        ),
        Vec::new(),
        TO + 5,
    )
    .await
    .unwrap_err();
    let message = error.to_string();
    assert!(message.contains(reason), "{message}");
    assert!(
        message.contains(&format!("Athena query {QUERY_ID} FAILED")),
        "{message}"
    );
    assert!(
        !stub.operations().iter().any(|o| o == "GetQueryResults"),
        "{:?}",
        stub.operations()
    );
}

#[tokio::test]
async fn a_path_outside_the_flow_log_is_refused() {
    let server = S3Server::start().await;
    let bucket = server.bucket().to_owned();
    for outside in [
        format!("s3://elsewhere/{PARTITION}/node-a-1.parquet"),
        format!("s3://{bucket}/archive/cluster=prod/dt=2026-11-25/hour=10/node-a-1.parquet"),
    ] {
        let stub = AthenaStub::start(Outcome::Succeed(vec![
            format!("s3://{bucket}/{PARTITION}/node-b-1.parquet"),
            outside.clone(),
        ]))
        .await;
        let out = temp_dir("athena-outside");
        let error = evidence::collect(
            &request(
                location(&server),
                s3_options(&server),
                &out.path().join("b"),
                Some(athena_options(&stub)),
            ),
            Vec::new(),
            TO + 5,
        )
        .await
        .unwrap_err();
        let message = error.to_string();
        assert!(
            message.contains(&format!(
                "Athena named {outside}, which is not under s3://{bucket}/tollgate"
            )),
            "{message}"
        );
        assert!(message.contains("--flow-log"), "{message}");
        assert_eq!(requests_naming(&server, "node-b-1"), 0, "nothing read");
    }
}

#[tokio::test]
async fn bad_options_are_refused_before_any_request() {
    let stub = AthenaStub::start(Outcome::Succeed(Vec::new())).await;
    let out = temp_dir("athena-refused");
    let location: FlowLogLocation = "s3://flows/tollgate".parse().unwrap();
    let s3 = S3Options {
        region: s3_server::REGION.to_owned(),
        ..S3Options::default()
    };
    for (options, flag) in [
        (
            AthenaOptions {
                database: "tollgate-prod".to_owned(),
                ..athena_options(&stub)
            },
            "--athena-database \"tollgate-prod\"",
        ),
        (
            AthenaOptions {
                database: "x\".\"y".to_owned(),
                ..athena_options(&stub)
            },
            "--athena-database ",
        ),
        (
            AthenaOptions {
                table: "Flows".to_owned(),
                ..athena_options(&stub)
            },
            "--athena-table \"Flows\"",
        ),
        (
            AthenaOptions {
                workgroup: "tollgate wg".to_owned(),
                ..athena_options(&stub)
            },
            "--athena-workgroup \"tollgate wg\"",
        ),
    ] {
        let bundle = out.path().join("b");
        let request = request(location.clone(), s3.clone(), &bundle, Some(options.clone()));
        let error = evidence::collect(&request, Vec::new(), TO + 5)
            .await
            .unwrap_err();
        assert!(error.to_string().starts_with(flag), "{error}");
        assert!(!bundle.exists(), "no bundle directory is made");
        let error = athena::objects(&options, s3_server::REGION, &request)
            .await
            .unwrap_err();
        assert!(error.to_string().starts_with(flag), "{error}");
    }
    // A local flow log has no objects for Athena to name.
    let error = evidence::collect(
        &request(
            FlowLogLocation::Local(out.path().to_owned()),
            S3Options::default(),
            &out.path().join("b"),
            Some(athena_options(&stub)),
        ),
        Vec::new(),
        TO + 5,
    )
    .await
    .unwrap_err();
    assert_eq!(
        error.to_string(),
        "--athena-workgroup needs an s3:// --flow-log"
    );
    assert!(stub.calls().is_empty(), "{:?}", stub.operations());
}

#[tokio::test]
async fn a_query_that_runs_too_long_is_stopped() {
    let server = S3Server::start().await;
    let stub = AthenaStub::start(Outcome::Hang).await;
    let out = temp_dir("athena-hang");
    let options = AthenaOptions {
        wait: Duration::from_secs(1),
        ..athena_options(&stub)
    };
    let started = std::time::Instant::now();
    let error = athena::objects(
        &options,
        s3_server::REGION,
        &request(
            location(&server),
            s3_options(&server),
            &out.path().join("b"),
            None,
        ),
    )
    .await
    .unwrap_err();
    let waited = started.elapsed();
    assert!(
        (Duration::from_secs(1)..Duration::from_secs(5)).contains(&waited),
        "{waited:?}"
    );
    let message = error.to_string();
    assert!(
        message.contains(&format!(
            "Athena query {QUERY_ID} did not finish within 1s (last state RUNNING)"
        )),
        "{message}"
    );
    assert_eq!(
        stub.operations().last().map(String::as_str),
        Some("StopQueryExecution")
    );
}
