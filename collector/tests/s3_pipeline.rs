//! The whole collector against a real S3-compatible server (s3s-fs on 127.0.0.1), with events
//! from the real probe (needs root): an outage of the server while traffic goes on, and a
//! collector killed with SIGKILL while it writes. After both, the node's digests are one
//! signed chain listing every flow object with its SHA-256.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::{privileged, s3_server::S3Server};
use tollgate_collector::{
    chain::sha256_hex,
    config::{CollectorConfig, S3Config, SinkConfig},
    digest::Signed,
    flood::Flood,
    identity::Identities,
    readback::{StoredRecord, read_file},
    service::Collector,
};
use tollgate_test_support::{TempDir, temp_dir};

/// One-second windows, files closed every second, drained every 50 ms: many small objects in
/// a short test.
fn config(spool: &Path, s3: S3Config) -> CollectorConfig {
    CollectorConfig {
        cluster: "test".into(),
        node: "node-1".into(),
        spool_dir: spool.to_owned(),
        window_secs: 1,
        rotate_age_secs: 1,
        drain_interval_ms: 50,
        sink: SinkConfig::S3(S3Config {
            max_attempts: 1,
            ..s3
        }),
        ..CollectorConfig::default()
    }
}

/// Every flow object of the bucket, parsed: key → its records. Panics on an object that is
/// not a whole Parquet file of flow records, and unless the node's digests are one chain,
/// each signed, that lists every flow object once with its SHA-256.
async fn objects(server: &S3Server, scratch: &TempDir) -> BTreeMap<String, Vec<StoredRecord>> {
    let mut parsed = BTreeMap::new();
    let mut digests = Vec::new();
    for (n, (key, bytes)) in server.objects().await.into_iter().enumerate() {
        if key.starts_with("flows/_digests/") {
            let signed = Signed::parse(&bytes).unwrap_or_else(|e| panic!("digest {key}: {e}"));
            signed
                .check_signature(&signed.public_key().unwrap())
                .unwrap_or_else(|e| panic!("digest {key}: {e}"));
            digests.push((signed, sha256_hex(&bytes)));
            continue;
        }
        let path = scratch.path().join(format!("{n}.parquet"));
        std::fs::write(&path, &bytes).unwrap();
        let records = read_file(&path).unwrap_or_else(|e| panic!("object {key} is corrupt: {e}"));
        parsed.insert(key, records);
    }
    digests.sort_by_key(|(signed, _)| signed.document.number);
    let mut listed = BTreeMap::new();
    for (i, (signed, _)) in digests.iter().enumerate() {
        assert_eq!(signed.document.number, i as u64, "a digest is missing");
        if i > 0 {
            let previous = signed.document.previous.as_ref().expect("a link");
            assert_eq!(previous.sha256, digests[i - 1].1, "the chain is linked");
        }
        for object in &signed.document.objects {
            listed.insert(format!("flows/{}", object.key), object.sha256.clone());
        }
    }
    let hashes: BTreeMap<String, String> = server
        .objects()
        .await
        .into_iter()
        .filter(|(key, _)| !key.starts_with("flows/_digests/"))
        .map(|(key, bytes)| (key, sha256_hex(&bytes)))
        .collect();
    assert_eq!(
        listed, hashes,
        "the digests list every flow object, as it is"
    );
    parsed
}

/// The flows (source address and port) of the flow records among `objects`, with how often
/// each was seen.
fn flows(objects: &BTreeMap<String, Vec<StoredRecord>>) -> BTreeMap<(String, i32), usize> {
    let mut seen = BTreeMap::new();
    for record in objects.values().flatten().filter(|r| !r.is_loss()) {
        let flow = (record.srcaddr.clone().unwrap(), record.srcport.unwrap());
        *seen.entry(flow).or_default() += 1;
    }
    seen
}

/// Denies `count` flows in batches spread over `over`.
async fn traffic(flood: &mut Flood, count: usize, over: Duration) {
    let batches = 10;
    for _ in 0..batches {
        flood.deny(count / batches).unwrap();
        tokio::time::sleep(over / batches as u32).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn privileged_every_record_arrives_exactly_once_across_an_outage_of_the_server() {
    if !privileged("privileged_every_record_arrives_exactly_once_across_an_outage_of_the_server") {
        return;
    }
    let mut server = S3Server::start().await;
    let work = temp_dir("s3-outage");
    let config = config(&work.path().join("spool"), server.config("flows"));
    let (mut flood, reader) = Flood::new().unwrap();
    let identities = Arc::new(Mutex::new(Identities::default()));
    let (collector, _) = Collector::start(&config, reader, identities, None)
        .await
        .unwrap();

    traffic(&mut flood, 2_000, Duration::from_secs(2)).await;
    server.stop();
    traffic(&mut flood, 2_000, Duration::from_secs(3)).await;
    let failures = collector.metrics().ship_failures_total();
    assert!(
        failures > 0,
        "deliveries must have failed during the outage"
    );
    let waiting = collector
        .metrics()
        .spool_files
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(waiting > 0, "files wait in the spool during the outage");
    server.restart().await;
    traffic(&mut flood, 1_000, Duration::from_secs(1)).await;
    let stopped = collector.stop(Duration::from_secs(30)).await.unwrap();
    assert_eq!(
        stopped.shipped.left, 0,
        "everything shipped after the outage"
    );

    let scratch = temp_dir("s3-outage-objects");
    let objects = objects(&server, &scratch).await;
    assert!(
        objects
            .keys()
            .all(|k| k.starts_with("flows/cluster=test/dt="))
    );
    let flows = flows(&objects);
    assert_eq!(flows.len(), 5_000, "every flow arrives");
    let repeated: Vec<_> = flows.iter().filter(|(_, n)| **n > 1).collect();
    assert!(repeated.is_empty(), "flows arrived twice: {repeated:?}");
    eprintln!(
        "{} objects, {failures} failed deliveries during the outage",
        objects.len()
    );
}

/// The collector the crash test kills: runs only when the parent test sets
/// `TOLLGATE_CRASH_SPOOL`; floods denied flows and collects them into S3 until killed (or 60 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the child process of the crash test, started by it"]
async fn crash_child() {
    let (Ok(spool), Ok(endpoint), Ok(bucket)) = (
        std::env::var("TOLLGATE_CRASH_SPOOL"),
        std::env::var("TOLLGATE_CRASH_ENDPOINT"),
        std::env::var("TOLLGATE_CRASH_BUCKET"),
    ) else {
        return;
    };
    tracing_subscriber::fmt()
        .with_env_filter("tollgate_collector=info")
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let s3: S3Config = serde_json::from_value(serde_json::json!({
        "region": support::s3_server::REGION,
        "bucket": bucket,
        "prefix": "flows",
        "endpoint_url": endpoint,
        "path_style": true,
    }))
    .unwrap();
    let config = config(Path::new(&spool), s3);
    let (mut flood, reader) = Flood::new().unwrap();
    let identities = Arc::new(Mutex::new(Identities::default()));
    let (_collector, _) = Collector::start(&config, reader, identities, None)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        flood.deny(200).unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn privileged_after_a_sigkill_nothing_acknowledged_is_lost_and_no_corrupt_object_is_uploaded()
{
    if !privileged(
        "privileged_after_a_sigkill_nothing_acknowledged_is_lost_and_no_corrupt_object_is_uploaded",
    ) {
        return;
    }
    let server = S3Server::start().await;
    let work = temp_dir("s3-crash");
    let spool = work.path().join("spool");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["crash_child", "--exact", "--ignored", "--nocapture"])
        .env("TOLLGATE_CRASH_SPOOL", &spool)
        .env("TOLLGATE_CRASH_ENDPOINT", server.endpoint_url())
        .env("TOLLGATE_CRASH_BUCKET", server.bucket())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    // Acknowledged = committed to the spool, as the collector logs it ("file spooled"). Kill
    // it after a few acknowledgements: it writes continuously, so it dies mid-write.
    let (acked_tx, acked_rx) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("file spooled") {
                let key = line
                    .split("key=\"")
                    .nth(1)
                    .and_then(|rest| rest.split('"').next())
                    .map(str::to_owned);
                let records = line
                    .split("records=")
                    .nth(1)
                    .and_then(|rest| rest.split_whitespace().next())
                    .and_then(|n| n.parse::<usize>().ok());
                if let (Some(key), Some(records)) = (key, records) {
                    let _ = acked_tx.send((key, records));
                }
            }
        }
    });
    let mut acked = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while acked.len() < 4 {
        let left = deadline.saturating_duration_since(Instant::now());
        let (key, records) = acked_rx
            .recv_timeout(left)
            .expect("the child acknowledges files within 30 s");
        acked.insert(key, records);
    }
    // Kill it while a file is being written (one is open in the spool's tmp/).
    let writing = Instant::now() + Duration::from_secs(10);
    while std::fs::read_dir(spool.join("tmp"))
        .unwrap()
        .next()
        .is_none()
    {
        assert!(Instant::now() < writing, "the child never had a file open");
        std::thread::sleep(Duration::from_millis(5));
    }
    // SAFETY: kill has no memory-safety preconditions; the pid is our child's.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGKILL) };
    child.wait().unwrap();
    while let Ok((key, records)) = acked_rx.try_recv() {
        acked.insert(key, records);
    }

    // The restarted collector: ships what the dead one left, records the gap.
    let s3: S3Config = server.config("flows");
    let config = config(&spool, s3);
    let (_flood, reader) = Flood::new().unwrap();
    let identities = Arc::new(Mutex::new(Identities::default()));
    let (collector, recovery) = Collector::start(&config, reader, identities, None)
        .await
        .unwrap();
    assert!(
        recovery.unclean_since_s.is_some(),
        "the restart must notice the unclean stop"
    );
    assert!(
        recovery.removed_partial >= 1,
        "the file being written is removed, not shipped"
    );
    let stopped = collector.stop(Duration::from_secs(30)).await.unwrap();
    assert_eq!(stopped.shipped.left, 0);

    let scratch = temp_dir("s3-crash-objects");
    let objects = objects(&server, &scratch).await;
    for (key, records) in &acked {
        let object = format!("flows/{key}");
        let found = objects
            .get(&object)
            .unwrap_or_else(|| panic!("acknowledged {key} never arrived"));
        assert_eq!(found.len(), *records, "{key}: records");
    }
    let flows = flows(&objects);
    assert!(flows.values().all(|n| *n == 1), "a flow arrived twice");
    let restarts: Vec<_> = objects
        .values()
        .flatten()
        .filter(|r| r.loss_source.as_deref() == Some("collector-restart"))
        .collect();
    assert_eq!(restarts.len(), 1, "the gap is on record: {restarts:#?}");
    assert_eq!(restarts[0].skipped_events, None, "its size is unknown");
    let keys: BTreeSet<_> = objects.keys().collect();
    assert!(
        keys.iter()
            .all(|k| k.ends_with(".parquet") && !k.contains("tmp"))
    );
    eprintln!(
        "{} acknowledged files before the kill, {} objects in all, {} partial files removed",
        acked.len(),
        objects.len(),
        recovery.removed_partial
    );
}
