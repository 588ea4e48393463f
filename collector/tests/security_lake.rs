//! Amazon Security Lake: OCSF Network Activity objects, without root.
//!
//! - Every record kind (allowed, denied, audit-deny, loss, isolation) written by the Security
//!   Lake writer into a real spool, read back by DuckDB and validated against the OCSF 1.1.0
//!   schema (`schemas/ocsf/validate.py`, in the repository's `.venv`); the object's key is the
//!   custom source's layout and its Parquet schema the golden one
//!   (`tests/golden/ocsf-network-activity.parquet-schema.txt`, rewritten with
//!   `UPDATE_GOLDEN=1`).
//! - The OCSF named queries (`schemas/athena/queries/ocsf-*.sql`, through
//!   `schemas/athena/run_duckdb.py`) on those objects.
//! - Security Lake alone (`flow_log: false`): the spool holds only its objects.
//! - The whole chain against two real S3-compatible servers (s3s-fs on 127.0.0.1, one bucket
//!   each): the pipeline writes the flow log and Security Lake objects into one spool, the
//!   shipper routes them to their buckets, and the node's digest lists both with their
//!   SHA-256.

mod support;

use std::collections::BTreeMap;
use std::fs::File;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use support::s3_server::S3Server;
use tokio::sync::{Notify, watch};
use tollgate_collector::{
    chain::{Sealer, sha256_hex},
    clock::{NS_PER_S, compact_utc, unix_now_ns},
    config::{CollectorConfig, SecurityLakeConfig, SigningConfig, SinkConfig},
    digest::Signed,
    identity::{EndpointInterface, Eni, Holder, Identities, PodIdentity, ServiceIdentity},
    loss::{LossSource, LossSpan},
    metrics::Metrics,
    ocsf,
    pipeline::Pipeline,
    reader::MemorySource,
    record::{Flow, FlowRecord, Isolation, IsolationAction, RecordBody},
    ship::ship,
    sink::Sinks,
    spool::Spool,
    writer::{BATCH_ROWS, Closed, FileWriter},
};
use tollgate_schemas::rule::{NamedRule, PolicyTier, RuleAction, RuleRef};
use tollgate_schemas::{Direction, Reason, Verdict, proto};
use tollgate_test_support::{TempDir, temp_dir};

const CLUSTER: &str = "prod";
const NODE: &str = "ip-10-0-1-2";
const SOURCE: &str = "tollgate";
const REGION: &str = "eu-west-1";
const ACCOUNT: &str = "123456789012";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn lake(sink: SinkConfig) -> SecurityLakeConfig {
    SecurityLakeConfig {
        source_name: SOURCE.to_owned(),
        region: REGION.to_owned(),
        account_id: ACCOUNT.to_owned(),
        sink,
        rotate_bytes: 1024 * 1024,
        rotate_age_secs: 300,
    }
}

fn now_s() -> u64 {
    unix_now_ns() / NS_PER_S
}

fn pod(namespace: &str, name: &str, app: &str) -> Holder {
    Holder::Pod(Arc::new(PodIdentity {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        workload: format!("Deployment/{app}"),
        labels: BTreeMap::from([("app".to_owned(), app.to_owned())]).into(),
    }))
}

fn ip(text: &str) -> IpAddr {
    text.parse().expect("an address")
}

/// A flow from `web` to `db` (or the node, or nobody known) with `verdict`.
fn flow(start_s: u64, verdict: Verdict, reason: Reason, audit: bool) -> FlowRecord {
    let allowed = verdict == Verdict::Allow;
    FlowRecord {
        start_s,
        end_s: start_s + 59,
        body: RecordBody::Flow(Flow {
            src: ip("198.18.0.10"),
            dst: ip("198.18.0.20"),
            src_port: 40_000,
            dst_port: 5432,
            protocol: proto::TCP,
            direction: Direction::Egress,
            verdict,
            reason,
            icmp: None,
            packets: 3,
            bytes: 222,
            tcp_flags: 0x02,
            events: 3,
            src_holder: Some(pod("shop", "web-7c5ddbdf54-x2x9q", "web")),
            dst_holder: Some(pod("shop", "db-0", "db")),
            service: Some(Arc::new(ServiceIdentity {
                namespace: "shop".to_owned(),
                name: "db".to_owned(),
            })),
            rule: allowed.then(|| {
                Arc::new(NamedRule {
                    rule: RuleRef {
                        namespace: "shop".to_owned(),
                        policy: "web-to-db".to_owned(),
                        direction: Direction::Egress,
                        index: 0,
                    },
                    tier: PolicyTier::NetworkPolicy,
                    action: RuleAction::Allow,
                    version: "812".into(),
                })
            }),
            isolating: None,
            audit,
            interface: Some(Arc::new(EndpointInterface {
                name: "eni1a2b3c4d5e6".to_owned(),
                eni: Eni::Node,
            })),
        }),
    }
}

/// An ICMPv6 echo from the node to a pod nobody is known to hold, allowed.
fn icmp_from_node(start_s: u64) -> FlowRecord {
    FlowRecord {
        start_s,
        end_s: start_s + 1,
        body: RecordBody::Flow(Flow {
            src: ip("2001:db8::1"),
            dst: ip("2001:db8::2"),
            src_port: 7,
            dst_port: 7,
            protocol: proto::ICMPV6,
            direction: Direction::Ingress,
            verdict: Verdict::Allow,
            reason: Reason::FromNode,
            icmp: Some((128, 0)),
            packets: 1,
            bytes: 64,
            tcp_flags: 0,
            events: 1,
            src_holder: Some(Holder::Node),
            dst_holder: None,
            service: None,
            rule: None,
            isolating: None,
            audit: false,
            interface: None,
        }),
    }
}

fn isolation(at_s: u64, action: IsolationAction) -> FlowRecord {
    let Holder::Pod(identity) = pod("shop", "web-7c5ddbdf54-x2x9q", "web") else {
        unreachable!("a pod");
    };
    FlowRecord::isolation(
        Isolation {
            action,
            actor: "alice@example.com".to_owned(),
            reason: "beaconing to a known C2 address".to_owned(),
            pod: (*identity).clone(),
            address: Some(ip("198.18.0.10")),
            policy_namespace: Some("shop".to_owned()),
            policy_name: "tollgate-quarantine-web-7c5ddbdf54-x2x9q".to_owned(),
            policy_kind: "NetworkPolicy".into(),
            detail: r#"{"labels_before":{"app":"web"}}"#.to_owned(),
        },
        at_s,
    )
}

/// One record of every kind, out of time order.
fn every_kind(start_s: u64) -> Vec<FlowRecord> {
    vec![
        flow(start_s + 120, Verdict::Deny, Reason::IsolatedNoMatch, false),
        flow(start_s, Verdict::Allow, Reason::AllowedByRule, false),
        flow(
            start_s + 60,
            Verdict::AuditDeny,
            Reason::IsolatedNoMatch,
            true,
        ),
        icmp_from_node(start_s + 10),
        FlowRecord::loss(LossSpan {
            source: LossSource::RingbufFull,
            events: Some(17),
            from_s: start_s + 30,
            to_s: start_s + 40,
        }),
        FlowRecord::loss(LossSpan {
            source: LossSource::CollectorRestart,
            events: None,
            from_s: start_s + 5,
            to_s: start_s + 6,
        }),
        isolation(start_s + 200, IsolationAction::Quarantine),
        isolation(start_s + 300, IsolationAction::Release),
    ]
}

/// The files `closed` spooled, with their keys.
fn spooled(closed: Vec<Closed>) -> Vec<(String, PathBuf)> {
    closed
        .into_iter()
        .map(|closed| match closed {
            Closed::Spooled { file, .. } => (file.key, file.path),
            Closed::Lost { detail, .. } => panic!("a file was lost: {detail}"),
        })
        .collect()
}

/// Runs `schemas/ocsf/validate.py` on `paths`; returns its JSON lines (one per file), or
/// panics with what it found.
fn validate(paths: &[&Path]) -> Vec<serde_json::Value> {
    let python = repo().join(".venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/setup.sh",
        python.display()
    );
    let output = Command::new(python)
        .arg(repo().join("schemas/ocsf/validate.py"))
        .args(paths)
        .output()
        .expect("running validate.py");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the OCSF validation failed:\n{}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect()
}

/// `eventDay=` of Unix second `unix_s`.
fn event_day(unix_s: u64) -> String {
    compact_utc(unix_s)[..8].to_owned()
}

#[test]
fn every_record_kind_is_an_ocsf_network_activity_event_in_the_custom_source_layout() {
    let dir = temp_dir("ocsf-kinds");
    let spool_dir = dir.path().join("spool");
    let (mut spool, _) = Spool::open(&spool_dir, 1 << 30, now_s()).expect("a spool");
    let settings = lake(SinkConfig::Local {
        dir: dir.path().join("lake"),
    });
    let mut writer = FileWriter::security_lake(&settings, CLUSTER, NODE);
    // A day's start, so that every record falls in the same eventDay partition.
    let day_s = (now_s() / 86_400 - 1) * 86_400;
    let mut closed = writer.write(&mut spool, every_kind(day_s + 3600));
    closed.extend(writer.close_all(&mut spool));
    let files = spooled(closed);
    assert_eq!(files.len(), 1, "one object per partition: {files:?}");
    let (key, path) = &files[0];
    let prefix = format!(
        "ext/{SOURCE}/region={REGION}/accountId={ACCOUNT}/eventDay={}/{NODE}-",
        event_day(day_s)
    );
    assert!(key.starts_with(&prefix), "{key} is not under {prefix}");
    assert!(key.ends_with(".parquet"), "{key}");

    // Every row is valid OCSF 1.1.0, sorted by time, and every kind is there.
    let report = validate(&[path.as_path()]);
    let kinds = &report[0]["kinds"];
    for (kind, rows) in [
        ("allow", 2),
        ("deny", 1),
        ("audit-deny", 1),
        ("Events Lost", 2),
        ("Quarantine", 1),
        ("Release", 1),
    ] {
        assert_eq!(kinds[kind], rows, "{kind} in {kinds}");
    }

    // Readers get the OCSF schema field for field; its Parquet form is the golden one.
    let builder = ParquetRecordBatchReaderBuilder::try_new(File::open(path).expect("opening"))
        .expect("a Parquet file");
    assert_eq!(
        builder.schema().fields(),
        ocsf::schema().fields(),
        "the file's Arrow schema"
    );
    support::golden::assert_schema(
        path,
        "ocsf-network-activity.parquet-schema.txt",
        "the Security Lake object's schema changed (it must stay valid OCSF 1.1.0: the test \
         above says)",
    );
}

/// Runs named query `name` with `params` on `dir`; one JSON object per row.
fn query(dir: &Path, name: &str, params: &[(&str, String)]) -> Vec<serde_json::Value> {
    let mut command = Command::new(repo().join(".venv/bin/python"));
    command
        .arg(repo().join("schemas/athena/run_duckdb.py"))
        .arg("--dir")
        .arg(dir)
        .args(["--query", name, "--format", "json"]);
    for (param, value) in params {
        command.args(["--param", &format!("{param}={value}")]);
    }
    let output = command.output().expect("running run_duckdb.py");
    assert!(
        output.status.success(),
        "{name}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).expect("one JSON object per line"))
        .collect()
}

#[test]
fn the_ocsf_named_queries_find_the_denials_and_a_pods_flows() {
    let dir = temp_dir("ocsf-queries");
    let spool_dir = dir.path().join("spool");
    let (mut spool, _) = Spool::open(&spool_dir, 1 << 30, now_s()).unwrap();
    let settings = lake(SinkConfig::Local {
        dir: dir.path().join("lake"),
    });
    let mut writer = FileWriter::security_lake(&settings, CLUSTER, NODE);
    let start_s = now_s() - 3600;
    let mut closed = writer.write(&mut spool, every_kind(start_s));
    closed.extend(writer.close_all(&mut spool));
    spooled(closed);
    // The spool's ready/ holds the objects under their keys: the bucket's layout.
    let ready = spool_dir.join("ready");
    let window = |from: u64, to: u64| vec![("from", from.to_string()), ("to", to.to_string())];

    let denied = query(
        &ready,
        "ocsf-denied-flows",
        &window(start_s, start_s + 3600),
    );
    assert_eq!(denied.len(), 1, "{denied:#?}");
    let row = &denied[0];
    assert_eq!(row["src_name"], "shop/web-7c5ddbdf54-x2x9q");
    assert_eq!(row["dst_name"], "shop/db-0");
    assert_eq!(row["svc_name"], "db");
    assert_eq!(row["dst_port"], 5432);
    assert_eq!(row["verdict_reason"], "isolated-no-rule-matched");
    assert_eq!(row["node"], NODE);
    assert_eq!(row["start_time"], (start_s + 120) * 1000);
    // The window is [from, to): a record that ends before it is not in it.
    assert!(
        query(
            &ready,
            "ocsf-denied-flows",
            &window(start_s + 180, start_s + 3600)
        )
        .is_empty()
    );

    let mut params = vec![("namespace", "shop".to_owned()), ("pod", "db-0".to_owned())];
    params.extend(window(start_s, start_s + 3600));
    let flows = query(&ready, "ocsf-pod-flows", &params);
    let verdicts: Vec<&str> = flows
        .iter()
        .map(|r| r["verdict"].as_str().unwrap())
        .collect();
    assert_eq!(verdicts, ["allow", "audit-deny", "deny"], "{flows:#?}");
    assert_eq!(flows[0]["policy"], "shop/web-to-db");
    assert_eq!(flows[0]["policy_rule"], "spec.egress[0]");
    assert_eq!(flows[0]["activity_name"], "Open");
    assert_eq!(flows[1]["disposition"], "Detected");
    assert_eq!(flows[2]["action"], "Denied");
}

#[test]
fn security_lake_alone_spools_only_its_objects() {
    let dir = temp_dir("ocsf-alone");
    let config = CollectorConfig {
        cluster: CLUSTER.to_owned(),
        node: NODE.to_owned(),
        spool_dir: dir.path().join("spool"),
        flow_log: false,
        security_lake: Some(lake(SinkConfig::Local {
            dir: dir.path().join("lake"),
        })),
        ..CollectorConfig::default()
    };
    assert_eq!(config.problems(), Vec::<String>::new());
    let (mut pipeline, _) = Pipeline::open(
        &config,
        Arc::new(Mutex::new(Identities::default())),
        Arc::new(Metrics::default()),
        Arc::new(Notify::new()),
    )
    .expect("opening the pipeline");
    pipeline.lose(LossSource::Undecodable, Some(5), now_s() - 10, now_s() - 9);
    pipeline.flush();
    pipeline
        .finish(&MemorySource::default())
        .expect("a clean stop");
    let keys: Vec<String> = tollgate_collector::spool::pending_in(&config.spool_dir)
        .unwrap()
        .into_iter()
        .map(|file| file.key)
        .collect();
    assert!(!keys.is_empty());
    assert!(
        keys.iter().all(|key| key.starts_with("ext/tollgate/")),
        "{keys:?}"
    );
}

/// A Security Lake writer over a fresh spool in a temporary directory named after `what`
/// (kept while the first value lives).
fn lake_writer(what: &str) -> (TempDir, Spool, FileWriter) {
    let dir = temp_dir(what);
    let (spool, _) = Spool::open(&dir.path().join("spool"), 1 << 30, now_s()).unwrap();
    let settings = lake(SinkConfig::Local {
        dir: dir.path().join("lake"),
    });
    (
        dir,
        spool,
        FileWriter::security_lake(&settings, CLUSTER, NODE),
    )
}

#[test]
fn records_of_two_days_go_to_two_event_day_partitions() {
    let (_dir, mut spool, mut writer) = lake_writer("ocsf-days");
    let midnight = (now_s() / 86_400) * 86_400;
    let records = vec![
        flow(midnight - 60, Verdict::Deny, Reason::IsolatedNoMatch, false),
        flow(midnight + 1, Verdict::Deny, Reason::IsolatedNoMatch, false),
    ];
    let mut closed = writer.write(&mut spool, records);
    closed.extend(writer.close_all(&mut spool));
    let days: Vec<String> = spooled(closed)
        .into_iter()
        .map(|(key, _)| {
            key.split('/')
                .find_map(|part| part.strip_prefix("eventDay="))
                .expect("an eventDay partition")
                .to_owned()
        })
        .collect();
    assert_eq!(days, [event_day(midnight - 60), event_day(midnight)]);
}

#[test]
fn a_batch_older_than_the_objects_last_row_starts_a_new_object_so_each_is_in_time_order() {
    let (_dir, mut spool, mut writer) = lake_writer("ocsf-late");
    let hour = (now_s() / 3_600) * 3_600;
    let flow_at = |start_s| flow(start_s, Verdict::Deny, Reason::IsolatedNoMatch, false);
    // A window's records, then a later window's: one object.
    let mut closed = writer.write(&mut spool, vec![flow_at(hour + 60), flow_at(hour + 10)]);
    closed.extend(writer.write(&mut spool, vec![flow_at(hour + 120)]));
    assert!(closed.is_empty(), "one object so far");
    // Packets conntrack counted for a window already written: a new object.
    closed.extend(writer.write(&mut spool, vec![flow_at(hour + 30)]));
    assert_eq!(closed.len(), 1, "the object in time order is closed");
    closed.extend(writer.close_all(&mut spool));
    let objects = spooled(closed);
    assert_eq!(objects.len(), 2);
    let paths: Vec<&Path> = objects.iter().map(|(_, path)| path.as_path()).collect();
    let rows: Vec<u64> = validate(&paths)
        .iter()
        .map(|file| file["rows"].as_u64().unwrap())
        .collect();
    assert_eq!(rows, [3, 1], "validate.py checks each object's time order");
}

#[test]
fn a_write_longer_than_a_batch_is_one_object_in_time_order_with_every_row_numbered_once() {
    let (_dir, mut spool, mut writer) = lake_writer("ocsf-batches");
    let hour = (now_s() / 3_600) * 3_600;
    // Newest first, across more rows than one encoded batch holds, four to a second: all
    // within the hour, so within one eventDay partition whatever the time of day.
    let count = BATCH_ROWS as u64 + 10;
    let records = (0..count)
        .map(|n| {
            flow(
                hour + (count - n) / 4,
                Verdict::Deny,
                Reason::IsolatedNoMatch,
                false,
            )
        })
        .collect();
    let mut closed = writer.write(&mut spool, records);
    closed.extend(writer.close_all(&mut spool));
    let objects = spooled(closed);
    assert_eq!(objects.len(), 1);
    let path = objects[0].1.as_path();
    let rows = validate(&[path])[0]["rows"].as_u64().unwrap();
    assert_eq!(rows, count, "validate.py checks the object's time order");
    let output = Command::new(repo().join(".venv/bin/python"))
        .args(["-c", "import duckdb, sys; print(duckdb.execute(\"SELECT count(DISTINCT metadata.uid) FROM read_parquet(?)\", [sys.argv[1]]).fetchone()[0])"])
        .arg(path)
        .output()
        .expect("running DuckDB");
    let uids = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        uids.trim(),
        count.to_string(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipeline_ships_the_flow_log_and_security_lake_to_their_buckets_under_one_digest_chain()
{
    let flows = S3Server::start().await;
    let lake_bucket = S3Server::start().await;
    let dir = temp_dir("ocsf-s3");
    let config = CollectorConfig {
        cluster: CLUSTER.to_owned(),
        node: NODE.to_owned(),
        spool_dir: dir.path().join("spool"),
        sink: SinkConfig::S3(flows.config("flows")),
        digest: tollgate_collector::config::DigestConfig {
            signing: SigningConfig::LocalKey {
                key_file: Some(dir.path().join("key.pem")),
            },
            ..Default::default()
        },
        security_lake: Some(lake(SinkConfig::S3(lake_bucket.config("")))),
        ..CollectorConfig::default()
    };
    assert_eq!(config.problems(), Vec::<String>::new());

    // Records through the pipeline's writers: a loss record, written at open, is enough to
    // make both outputs write a file.
    let metrics = Arc::new(Metrics::default());
    let (mut pipeline, _) = Pipeline::open(
        &config,
        Arc::new(Mutex::new(Identities::default())),
        Arc::clone(&metrics),
        Arc::new(Notify::new()),
    )
    .expect("opening the pipeline");
    pipeline.lose(LossSource::Undecodable, Some(5), now_s() - 10, now_s() - 9);
    pipeline.flush();
    pipeline
        .finish(&MemorySource::default())
        .expect("a clean stop");

    let sinks = Sinks::from_config(&config).await.expect("the sinks");
    let sealer = Sealer::new(
        &config.spool_dir,
        CLUSTER,
        NODE,
        Duration::from_secs(3600),
        config.digest.signing.clone(),
        now_s(),
    );
    let (stop, stop_rx) = watch::channel(None);
    let shipper = tokio::spawn(ship(
        config.spool_dir.clone(),
        sinks,
        Arc::clone(&metrics),
        Arc::new(Notify::new()),
        stop_rx,
        sealer,
    ));
    stop.send(Some(Duration::from_secs(20))).unwrap();
    let shipped = shipper.await.expect("the shipper");
    assert_eq!(shipped.left, 0, "everything delivered: {shipped:?}");

    let flow_objects = flows.objects().await;
    let lake_objects = lake_bucket.objects().await;
    assert!(
        flow_objects
            .iter()
            .all(|(key, _)| key.starts_with("flows/")),
        "the flow-log bucket holds the flow log and digests only: {:?}",
        flow_objects.iter().map(|(k, _)| k).collect::<Vec<_>>()
    );
    assert!(!lake_objects.is_empty(), "Security Lake got its objects");
    let scratch = dir.path().join("scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    let mut lake_hashes = BTreeMap::new();
    for (n, (key, bytes)) in lake_objects.iter().enumerate() {
        let parts: Vec<&str> = key.split('/').collect();
        assert_eq!(parts.len(), 6, "{key}");
        assert_eq!(
            parts[..4],
            ["ext", SOURCE, "region=eu-west-1", "accountId=123456789012"]
        );
        let day = parts[4].strip_prefix("eventDay=").expect("eventDay=");
        assert!(
            day.len() == 8 && day.bytes().all(|b| b.is_ascii_digit()),
            "{key}"
        );
        assert!(
            parts[5].starts_with(NODE) && parts[5].ends_with(".parquet"),
            "{key}"
        );
        let path = scratch.join(format!("{n}.parquet"));
        std::fs::write(&path, bytes).unwrap();
        let report = validate(&[path.as_path()]);
        assert_eq!(report[0]["kinds"]["Events Lost"], 1, "{report:?}");
        lake_hashes.insert(key.clone(), sha256_hex(bytes));
    }

    // One digest (sealed at stop) lists the flow-log object and the Security Lake object.
    let digests: Vec<Signed> = flow_objects
        .iter()
        .filter(|(key, _)| key.starts_with("flows/_digests/"))
        .map(|(key, bytes)| Signed::parse(bytes).unwrap_or_else(|e| panic!("{key}: {e}")))
        .collect();
    assert_eq!(digests.len(), 1);
    let listed: BTreeMap<String, String> = digests[0]
        .document
        .objects
        .iter()
        .map(|object| (object.key.clone(), object.sha256.clone()))
        .collect();
    for (key, sha256) in &lake_hashes {
        assert_eq!(
            listed.get(key),
            Some(sha256),
            "{key} in the digest: {listed:?}"
        );
    }
    assert!(
        listed.keys().any(|key| key.starts_with("cluster=")),
        "the flow-log object too: {listed:?}"
    );
}
