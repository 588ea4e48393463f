//! Evidence bundles from a flow log on disk and on a real S3-compatible server (s3s-fs):
//! exactly the pod's records of the window (both ends, every verdict), its isolation records,
//! the losses that overlap, files of an older record layout read with nulls, every source
//! named with its digest (and ETag on S3); and `verify` catching every kind of change.

#[path = "../../collector/tests/support/s3_server.rs"]
mod s3_server;
mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use s3_server::S3Server;
use support::{
    flowlog::{FROM, TO, flow, identity, isolation, parquet},
    temp_dir,
};
use tollgate_collector::{
    loss::{LossSource, LossSpan},
    readback::read_file,
    record::FlowRecord,
    sink::Sink,
};
use tollgate_incident::{
    PodRef,
    evidence::{self, PolicySnapshot, Request, Shortfall},
    location::{FlowLogLocation, S3Options},
};
use tollgate_schemas::Verdict;

/// Writes `records` as one Parquet file at `key` under `dir`; `columns` keeps only the
/// first columns (a file of an older layout).
fn write(dir: &Path, key: &str, records: &[FlowRecord], columns: Option<usize>) {
    let path = dir.join(key);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, parquet("node-a", records, columns)).unwrap();
}

/// A flow log of cluster `prod` around the window, with what belongs in the bundle and
/// what does not.
fn flow_log(dir: &Path) {
    let web = identity("shop", "web");
    let api = identity("shop", "api");
    let db = identity("data", "db");
    write(
        dir,
        "cluster=prod/dt=2026-11-25/hour=10/node-a-1.parquet",
        &[
            flow(FROM + 10, &web, &api, Verdict::Allow), // in: web is the source
            flow(FROM + 900, &api, &web, Verdict::Deny), // in: web is the destination
            flow(FROM - 100, &web, &api, Verdict::Allow), // out: ends before the window
            flow(TO, &web, &api, Verdict::Deny),         // out: starts at its end
            flow(FROM + 20, &api, &db, Verdict::Allow),  // out: another pod's
            FlowRecord::loss(LossSpan {
                source: LossSource::RingbufFull,
                events: Some(7),
                from_s: FROM - 30,
                to_s: FROM + 30,
            }),
            FlowRecord::loss(LossSpan {
                source: LossSource::SpoolFull,
                events: None,
                from_s: FROM - 500,
                to_s: FROM - 400,
            }),
            isolation(FROM + 800, &web),
            isolation(FROM + 800, &api),
        ],
        None,
    );
    // Written before the isolation and Service columns were appended.
    write(
        dir,
        "cluster=prod/dt=2026-11-25/hour=10/node-b-1.parquet",
        &[flow(FROM + 60, &web, &db, Verdict::Deny)],
        Some(tollgate_schemas::record::COLUMNS.len() - 8),
    );
    // Another cluster, and an hour far outside the window: neither is read.
    write(
        dir,
        "cluster=stage/dt=2026-11-25/hour=10/n.parquet",
        &[flow(FROM + 10, &web, &api, Verdict::Allow)],
        None,
    );
    write(
        dir,
        "cluster=prod/dt=2026-11-24/hour=03/n.parquet",
        &[flow(FROM + 10, &web, &api, Verdict::Allow)],
        None,
    );
}

fn request(location: FlowLogLocation, s3: S3Options, out: &Path) -> Request {
    Request {
        pod: "shop/web".parse::<PodRef>().unwrap(),
        cluster: Some("prod".into()),
        from_s: FROM,
        to_s: TO,
        location,
        s3,
        out: out.to_owned(),
        athena: None,
    }
}

fn check_bundle(out: &Path, snapshots: usize) {
    let flows = read_file(&out.join("flows.parquet")).unwrap();
    let times: Vec<(i64, Option<&str>)> = flows
        .iter()
        .map(|r| (r.start, r.action.as_deref()))
        .collect();
    assert_eq!(
        times,
        [
            ((FROM + 10) as i64, Some("ACCEPT")),
            ((FROM + 60) as i64, Some("REJECT")),
            ((FROM + 900) as i64, Some("REJECT")),
        ]
    );
    assert!(flows.iter().all(|r| r.isolation_action.is_none()));
    assert!(
        flows
            .iter()
            .all(|r| r.service.is_none() && r.svc_port.is_none())
    );
    let isolations = read_file(&out.join("isolations.parquet")).unwrap();
    assert_eq!(isolations.len(), 1);
    assert_eq!(isolations[0].src_pod.as_deref(), Some("shop/web"));
    let losses = read_file(&out.join("losses.parquet")).unwrap();
    assert_eq!(losses.len(), 1);
    assert_eq!(losses[0].loss_source.as_deref(), Some("ringbuf-full"));

    let csv = std::fs::read_to_string(out.join("flows.csv")).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 4, "{csv}");
    assert!(
        lines[0].starts_with("version,srcaddr,dstaddr,"),
        "{}",
        lines[0]
    );
    assert!(
        lines[0].ends_with(
            ",isolation_detail,svc_namespace,svc_name,svc_addr,svc_port,endpoint_interface,\
             endpoint_eni,policy_tier,policy_kind,policy_action,policy_version,isolating_policies"
        ),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].contains(r#""{""app"":""web""}""#),
        "labels as JSON, quoted: {}",
        lines[1]
    );
    assert!(
        lines[1].contains(r#""allow-web, ""egress""""#),
        "a name with a comma and quotes: {}",
        lines[1]
    );

    let policies: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("policies.json")).unwrap()).unwrap();
    assert_eq!(policies["policies"][0]["metadata"]["name"], "allow-web");
    assert_eq!(policies["snapshots"].as_array().unwrap().len(), snapshots);
    let timeline = std::fs::read_to_string(out.join("timeline.txt")).unwrap();
    assert!(
        timeline.contains("quarantined at 2026-11-25T10:23:20Z: 1 allowed before, 1 denied after"),
        "{timeline}"
    );
}

#[tokio::test]
async fn a_bundle_from_a_local_flow_log_holds_the_pods_records_and_verifies() {
    let flows = temp_dir("flows");
    flow_log(flows.path());
    let out = temp_dir("bundle");
    let request = request(
        FlowLogLocation::Local(flows.path().to_owned()),
        S3Options::default(),
        &out.path().join("b"),
    );
    let caller = PolicySnapshot {
        source: "cluster".into(),
        at: TO,
        policies: vec![serde_json::json!({"metadata": {"name": "allow-web"}})],
    };
    let bundle = evidence::collect(&request, vec![caller], TO + 5)
        .await
        .expect("bundle");
    check_bundle(&bundle.dir, 2);
    let counts = bundle.manifest.counts;
    assert_eq!(
        (
            counts.flows,
            counts.isolations,
            counts.losses,
            counts.sources
        ),
        (3, 1, 1, 2)
    );
    let sources: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(bundle.dir.join("sources.json")).unwrap())
            .unwrap();
    let records: Vec<u64> = sources
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["records"].as_u64().unwrap())
        .collect();
    assert_eq!(records, [4, 1], "rows taken per file");
    assert_eq!(sources[0]["sha256"].as_str().unwrap().len(), 64);

    // Intact, with and without the manifest's own digest.
    let manifest = evidence::verify(&bundle.dir, Some(&bundle.manifest_sha256)).expect("intact");
    assert_eq!(manifest.files.len(), 9);

    // One byte of one file changed: found, and named.
    let csv = bundle.dir.join("flows.csv");
    let original = std::fs::read(&csv).unwrap();
    let mut changed = original.clone();
    changed[100] ^= 1;
    std::fs::write(&csv, &changed).unwrap();
    let tampered = evidence::verify(&bundle.dir, None).unwrap_err();
    assert_eq!(tampered.problems.len(), 1, "{tampered}");
    assert!(
        tampered.problems[0].starts_with("flows.csv: SHA-256 is "),
        "{tampered}"
    );
    std::fs::write(&csv, &original).unwrap();

    // A file added, a file removed, the manifest edited.
    std::fs::write(bundle.dir.join("notes.txt"), "x").unwrap();
    let tampered = evidence::verify(&bundle.dir, None).unwrap_err();
    assert_eq!(tampered.problems, ["notes.txt: not in the manifest"]);
    std::fs::remove_file(bundle.dir.join("notes.txt")).unwrap();
    std::fs::remove_file(bundle.dir.join("losses.csv")).unwrap();
    let tampered = evidence::verify(&bundle.dir, None).unwrap_err();
    assert!(
        tampered.problems[0].starts_with("losses.csv: "),
        "{tampered}"
    );
    let manifest_path = bundle.dir.join("manifest.json");
    let text = std::fs::read_to_string(&manifest_path)
        .unwrap()
        .replace("\"flows\": 3", "\"flows\": 2");
    std::fs::write(&manifest_path, text).unwrap();
    let tampered = evidence::verify(&bundle.dir, Some(&bundle.manifest_sha256)).unwrap_err();
    assert!(
        tampered.problems[0].starts_with("manifest.json: SHA-256 is"),
        "{tampered}"
    );
}

#[tokio::test]
async fn bad_requests_are_refused_before_anything_is_read() {
    let flows = temp_dir("flows");
    let out = temp_dir("bundle");
    let mut backwards = request(
        FlowLogLocation::Local(flows.path().to_owned()),
        S3Options::default(),
        out.path(),
    );
    backwards.to_s = backwards.from_s;
    let error = evidence::collect(&backwards, Vec::new(), TO)
        .await
        .unwrap_err();
    assert!(error.to_string().contains("is not before --to"), "{error}");
    std::fs::write(out.path().join("old.txt"), "x").unwrap();
    let error = evidence::collect(
        &request(
            FlowLogLocation::Local(flows.path().to_owned()),
            S3Options::default(),
            out.path(),
        ),
        Vec::new(),
        TO,
    )
    .await
    .unwrap_err();
    assert!(error.to_string().contains("not empty"), "{error}");
}

/// The same flow log uploaded to a real S3-compatible server: the same bundle, with every
/// object's ETag.
#[tokio::test]
async fn a_bundle_from_s3_names_every_object_with_its_etag() {
    let server = S3Server::start().await;
    let flows = temp_dir("flows");
    flow_log(flows.path());
    let config = server.config("tollgate");
    let sink = Sink::from_config(&tollgate_collector::config::SinkConfig::S3(config.clone()))
        .await
        .unwrap();
    for path in tollgate_collector::readback::parquet_files(flows.path()).unwrap() {
        let key = path
            .strip_prefix(flows.path())
            .unwrap()
            .to_string_lossy()
            .into_owned();
        sink.put(&key, &path).await.unwrap();
    }
    let location: FlowLogLocation = format!("s3://{}/tollgate", server.bucket())
        .parse()
        .unwrap();
    let s3 = S3Options {
        region: config.region.clone(),
        endpoint_url: Some(server.endpoint_url()),
        path_style: true,
    };
    let out = temp_dir("bundle");
    let bundle = evidence::collect(
        &request(location, s3, &out.path().join("b")),
        Vec::new(),
        TO + 5,
    )
    .await
    .expect("bundle from S3");
    check_bundle(&bundle.dir, 1);
    let sources: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(bundle.dir.join("sources.json")).unwrap())
            .unwrap();
    let sources = sources.as_array().unwrap();
    assert_eq!(sources.len(), 2);
    for source in sources {
        let location = source["location"].as_str().unwrap();
        assert!(
            location.starts_with(&format!(
                "s3://{}/tollgate/cluster=prod/dt=2026-11-25/hour=10/",
                server.bucket()
            )),
            "{location}"
        );
        assert!(
            !source["etag"].as_str().unwrap_or_default().is_empty(),
            "{source}"
        );
    }
    evidence::verify(&bundle.dir, Some(&bundle.manifest_sha256)).expect("intact");
    assert_eq!(
        bundle.manifest.source,
        format!("s3://{}/tollgate", server.bucket())
    );
}

/// Makes a FIFO at `path`.
fn mkfifo(path: &Path) {
    let name = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o600) }, 0, "mkfifo");
}

/// Runs `work` on a thread of its own and waits for it at most 20 s. A FIFO of `fifos` that
/// `work` is stuck opening or reading is then given a writer that closes at once, so the
/// thread ends; the test fails either way.
fn within<T: Send + 'static>(fifos: &[PathBuf], work: impl FnOnce() -> T + Send + 'static) -> T {
    let (done, result) = std::sync::mpsc::channel();
    let thread = std::thread::spawn(move || {
        let _ = done.send(work());
    });
    match result.recv_timeout(Duration::from_secs(20)) {
        Ok(value) => {
            thread.join().unwrap();
            value
        }
        Err(_) => {
            for fifo in fifos {
                drop(std::fs::OpenOptions::new().write(true).open(fifo));
            }
            panic!("blocked for 20 s: a FIFO was opened or read");
        }
    }
}

/// A Parquet file with other columns than a flow record's.
fn other_schema() -> Vec<u8> {
    use arrow_array::{Int32Array, RecordBatch};
    let batch =
        RecordBatch::try_from_iter([("x", std::sync::Arc::new(Int32Array::from(vec![1, 2])) as _)])
            .unwrap();
    let mut bytes = Vec::new();
    let mut writer =
        parquet::arrow::ArrowWriter::try_new(&mut bytes, batch.schema(), None).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
    bytes
}

/// A file of the window that cannot be read — truncated, not Parquet, another schema, a FIFO
/// — is skipped whole and named with why, in the manifest, the timeline and the shortfalls;
/// the bundle still holds everything the other files hold.
#[test]
fn unreadable_files_are_skipped_named_and_listed() {
    let flows = temp_dir("flows");
    flow_log(flows.path());
    let hour = flows.path().join("cluster=prod/dt=2026-11-25/hour=10");
    let good = std::fs::read(hour.join("node-a-1.parquet")).unwrap();
    std::fs::write(
        hour.join("node-c-truncated.parquet"),
        &good[..good.len() / 2],
    )
    .unwrap();
    std::fs::write(hour.join("node-d-garbage.parquet"), b"not parquet at all").unwrap();
    std::fs::write(hour.join("node-e-other.parquet"), other_schema()).unwrap();
    let fifo = hour.join("node-f-fifo.parquet");
    mkfifo(&fifo);
    let out = temp_dir("bundle");
    let request = request(
        FlowLogLocation::Local(flows.path().to_owned()),
        S3Options::default(),
        &out.path().join("b"),
    );
    let bundle = within(std::slice::from_ref(&fifo), move || {
        tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(evidence::collect(&request, Vec::new(), TO + 5))
    })
    .expect("a bundle of what could be read");
    check_bundle(&bundle.dir, 1);

    let skipped: Vec<(&str, &str)> = bundle
        .manifest
        .skipped
        .iter()
        .map(|s| (s.location.rsplit('/').next().unwrap(), s.reason.as_str()))
        .collect();
    let names: Vec<&str> = skipped.iter().map(|(name, _)| *name).collect();
    assert_eq!(
        names,
        [
            "node-c-truncated.parquet",
            "node-d-garbage.parquet",
            "node-e-other.parquet",
            "node-f-fifo.parquet"
        ]
    );
    assert!(
        skipped.iter().all(|(_, why)| !why.is_empty()),
        "{skipped:?}"
    );
    assert!(skipped[2].1.contains("no column log_status"), "{skipped:?}");
    assert!(skipped[3].1.contains("a FIFO"), "{skipped:?}");
    let counts = bundle.manifest.counts;
    assert_eq!((counts.sources, counts.skipped), (2, 4));

    // In the bundle's own files, which still verify.
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(bundle.dir.join("manifest.json")).unwrap())
            .unwrap();
    assert_eq!(manifest["skipped"].as_array().unwrap().len(), 4);
    assert_eq!(manifest["counts"]["skipped"], 4);
    let timeline = std::fs::read_to_string(bundle.dir.join("timeline.txt")).unwrap();
    assert!(
        timeline.starts_with("INCOMPLETE: 4 flow-log file(s) could not be read"),
        "{timeline}"
    );
    evidence::verify(&bundle.dir, Some(&bundle.manifest_sha256)).expect("intact");

    // The caller is told, even when it accepts empty bundles.
    let shortfalls = bundle.shortfalls(true);
    assert_eq!(
        shortfalls,
        [Shortfall::Unread(bundle.manifest.skipped.clone())]
    );
    let text = shortfalls[0].to_string();
    assert!(text.contains("node-c-truncated.parquet: "), "{text}");
}

/// A pod the flow log never names gets an empty bundle that says so, and the caller is told
/// unless it accepts empty bundles.
#[tokio::test]
async fn a_pod_the_flow_log_never_names_is_said_loudly() {
    let flows = temp_dir("flows");
    flow_log(flows.path());
    let out = temp_dir("bundle");
    let mut request = request(
        FlowLogLocation::Local(flows.path().to_owned()),
        S3Options::default(),
        &out.path().join("b"),
    );
    request.pod = "shop/webb".parse().unwrap();
    let bundle = evidence::collect(&request, Vec::new(), TO + 5)
        .await
        .expect("bundle");
    let counts = bundle.manifest.counts;
    assert_eq!((counts.flows, counts.isolations, counts.losses), (0, 0, 1));
    let shortfalls = bundle.shortfalls(false);
    let [Shortfall::NoRecords { pod, files, .. }] = &shortfalls[..] else {
        panic!("{shortfalls:?}");
    };
    assert_eq!((pod.as_str(), *files), ("shop/webb", 2));
    let text = shortfalls[0].to_string();
    assert!(
        text.starts_with("NO RECORD of shop/webb in the flow log from 2026-11-25T10:10:00Z"),
        "{text}"
    );
    assert!(bundle.shortfalls(true).is_empty());
    assert!(
        bundle
            .timeline
            .starts_with("NO RECORD of shop/webb in 2 flow-log file(s) read"),
        "{}",
        bundle.timeline
    );
}

/// `verify` counts only regular files of the bundle: a file replaced by a link to an identical
/// copy elsewhere, a FIFO, a linked manifest are problems, found without following the link or
/// opening the FIFO; the problems it names are bounded, the rest counted.
#[test]
fn verify_takes_only_the_bundles_own_regular_files() {
    let flows = temp_dir("flows");
    flow_log(flows.path());
    let out = temp_dir("bundle");
    let request = request(
        FlowLogLocation::Local(flows.path().to_owned()),
        S3Options::default(),
        &out.path().join("b"),
    );
    let bundle = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(evidence::collect(&request, Vec::new(), TO + 5))
        .expect("bundle");
    let dir = bundle.dir.clone();
    let digest = bundle.manifest_sha256.clone();

    // A link to an identical file elsewhere.
    let elsewhere = temp_dir("elsewhere");
    let copy = elsewhere.path().join("flows.csv");
    std::fs::rename(dir.join("flows.csv"), &copy).unwrap();
    std::os::unix::fs::symlink(&copy, dir.join("flows.csv")).unwrap();
    let tampered = evidence::verify(&dir, Some(&digest)).unwrap_err();
    assert_eq!(
        tampered.problems,
        ["flows.csv: a symbolic link, not a regular file"]
    );
    std::fs::remove_file(dir.join("flows.csv")).unwrap();
    std::fs::rename(&copy, dir.join("flows.csv")).unwrap();

    // The manifest itself as a link.
    let manifest = elsewhere.path().join("manifest.json");
    std::fs::rename(dir.join("manifest.json"), &manifest).unwrap();
    std::os::unix::fs::symlink(&manifest, dir.join("manifest.json")).unwrap();
    let tampered = evidence::verify(&dir, Some(&digest)).unwrap_err();
    assert_eq!(
        tampered.problems,
        ["manifest.json: a symbolic link, not a regular file"]
    );
    std::fs::remove_file(dir.join("manifest.json")).unwrap();
    std::fs::rename(&manifest, dir.join("manifest.json")).unwrap();

    // A FIFO in place of a listed file: named, never opened.
    let losses = std::fs::read(dir.join("losses.csv")).unwrap();
    std::fs::remove_file(dir.join("losses.csv")).unwrap();
    let fifo = dir.join("losses.csv");
    mkfifo(&fifo);
    let checked = dir.clone();
    let tampered = within(std::slice::from_ref(&fifo), move || {
        evidence::verify(&checked, None)
    })
    .unwrap_err();
    assert_eq!(
        tampered.problems,
        ["losses.csv: a FIFO, not a regular file"]
    );
    std::fs::remove_file(&fifo).unwrap();
    std::fs::write(dir.join("losses.csv"), losses).unwrap();
    evidence::verify(&dir, Some(&digest)).expect("intact again");

    // Many problems: the first ones named, the rest counted.
    for i in 0..100 {
        std::fs::write(dir.join(format!("extra-{i:03}.txt")), "x").unwrap();
    }
    let tampered = evidence::verify(&dir, None).unwrap_err();
    assert_eq!(tampered.problems.len(), evidence::MAX_PROBLEMS);
    assert_eq!(tampered.more, 100 - evidence::MAX_PROBLEMS);
    let text = tampered.to_string();
    assert!(text.contains("(100 problems)"), "{text}");
    assert!(text.ends_with("… and 80 more"), "{text}");
    assert_eq!(
        text.lines().count(),
        1 + evidence::MAX_PROBLEMS + 1,
        "{text}"
    );
}

/// An S3 error is told in words — the service's code and message — not as the SDK's
/// structures.
#[tokio::test]
async fn an_s3_error_is_told_in_words() {
    let server = S3Server::start().await;
    let config = server.config("tollgate");
    let out = temp_dir("bundle");
    let s3 = S3Options {
        region: config.region.clone(),
        endpoint_url: Some(server.endpoint_url()),
        path_style: true,
    };
    let location: FlowLogLocation = "s3://no-such-bucket/tollgate".parse().unwrap();
    let error = evidence::collect(
        &request(location, s3, &out.path().join("b")),
        Vec::new(),
        TO + 5,
    )
    .await
    .unwrap_err();
    let text = error.to_string();
    assert!(text.contains("NoSuchBucket"), "{text}");
    assert!(
        !text.contains("ServiceError {") && !text.contains("raw: Response"),
        "{text}"
    );
}
