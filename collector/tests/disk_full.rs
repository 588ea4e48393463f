//! The collector on a full disk, for real: each test mounts a small tmpfs of its own on a
//! temporary directory (unmounted and removed when the test ends, also when it fails), fills
//! it, and checks that the collector opens, counts what it cannot keep, writes every loss as a
//! `SKIPDATA` record once there is room again (at once, or at the next start), and leaves no
//! partial file behind.
//!
//! Needs root (to mount); skipped loudly without it, except under CI (`CI` set), where a
//! missing privilege fails the test.

#[path = "support/events.rs"]
mod events;

use std::ffi::CString;
use std::fs::{self, File};
use std::io::Write as _;
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow_array::{Array, cast::AsArray, types::Int64Type};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use tokio::sync::Notify;
use tollgate_collector::{
    clock::{NS_PER_S, monotonic_ns, unix_now_ns},
    config::CollectorConfig,
    identity::Identities,
    loss::LossSource,
    metrics::Metrics,
    pipeline::Pipeline,
    reader::MemorySource,
    sink::LocalSink,
};
use tollgate_schemas::FlowEvent;
use tollgate_test_support::{TempDir, privileged, temp_dir};

/// A tmpfs of `size` bytes mounted on a fresh temporary directory; unmounted and removed on
/// drop.
struct Tmpfs {
    dir: TempDir,
}

impl Tmpfs {
    fn mount(test: &str, size: usize) -> Self {
        let dir = temp_dir(&format!("disk-full-{test}"));
        let target = CString::new(dir.path().as_os_str().as_bytes()).expect("a path");
        let options = CString::new(format!("size={size},mode=0700")).expect("options");
        // SAFETY: every pointer is a NUL-terminated string that outlives the call.
        let mounted = unsafe {
            libc::mount(
                c"tollgate-test".as_ptr(),
                target.as_ptr(),
                c"tmpfs".as_ptr(),
                0,
                options.as_ptr().cast(),
            )
        };
        if mounted != 0 {
            let error = std::io::Error::last_os_error();
            panic!("mounting a tmpfs on {}: {error}", dir.path().display());
        }
        Self { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn filler(&self) -> PathBuf {
        self.path().join("filler")
    }

    /// Fills the filesystem to its last byte.
    fn fill(&self) {
        let mut file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.filler())
            .expect("creating the filler");
        for chunk in [64 * 1024, 4096, 1] {
            let bytes = vec![0xa5; chunk];
            while file.write_all(&bytes).is_ok() {}
        }
        let probe = self.path().join("probe");
        assert!(fs::write(&probe, b"x").is_err(), "the filesystem is full");
        let _ = fs::remove_file(probe);
    }

    /// Gives the filler's space back.
    fn free(&self) {
        fs::remove_file(self.filler()).expect("removing the filler");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        if let Ok(target) = CString::new(self.path().as_os_str().as_bytes()) {
            // SAFETY: a NUL-terminated path that outlives the call.
            unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        }
        // The mount point itself goes with `dir`, once unmounted.
    }
}

fn settings(spool: &Path) -> CollectorConfig {
    CollectorConfig {
        cluster: "test-cluster".to_owned(),
        node: "node-a".to_owned(),
        spool_dir: spool.to_owned(),
        ..CollectorConfig::default()
    }
}

fn open(config: &CollectorConfig) -> (Pipeline, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::default());
    let (pipeline, _) = Pipeline::open(
        config,
        Arc::new(Mutex::new(Identities::default())),
        Arc::clone(&metrics),
        Arc::new(Notify::new()),
    )
    .expect("the collector opens on a full disk");
    (pipeline, metrics)
}

fn now_s() -> u64 {
    unix_now_ns() / NS_PER_S
}

/// A denied TCP SYN from 198.18.0.40 to 198.18.0.30:80, source port `port`, half a second into
/// Unix second `unix_s`.
fn syn(port: u16, unix_s: u64) -> FlowEvent {
    let (monotonic, unix) = (monotonic_ns(), unix_now_ns());
    let ts_ns = monotonic - (unix - (unix_s * NS_PER_S + NS_PER_S / 2));
    events::tcp("198.18.0.40", port, "198.18.0.30", 80, ts_ns)
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut dirs = vec![dir.to_owned()];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

/// `(loss_source, skipped_events)` of every `SKIPDATA` record in the spool's `ready/`.
fn loss_records(spool: &Path) -> Vec<(String, Option<i64>)> {
    let mut found = Vec::new();
    for path in files_under(&spool.join("ready")) {
        let file = File::open(&path).expect("opening a spooled file");
        let reader = ParquetRecordBatchReaderBuilder::try_new(file)
            .and_then(|builder| builder.build())
            .expect("a Parquet file");
        for batch in reader {
            let batch = batch.expect("a record batch");
            let column = |name: &str| batch.column_by_name(name).expect(name).clone();
            let (status, source, skipped) = (
                column("log_status"),
                column("loss_source"),
                column("skipped_events"),
            );
            let (status, source) = (status.as_string::<i32>(), source.as_string::<i32>());
            let skipped = skipped.as_primitive::<Int64Type>();
            for row in 0..batch.num_rows() {
                if status.value(row) == "SKIPDATA" {
                    let count = (!skipped.is_null(row)).then(|| skipped.value(row));
                    found.push((source.value(row).to_owned(), count));
                }
            }
        }
    }
    found.sort();
    found
}

/// Whether `path` is an entry of the digest chain waiting for its digest (not a temporary).
fn is_chain_entry(spool: &Path, path: &Path) -> bool {
    path.starts_with(spool.join("digest/entries"))
        && path.extension().is_some_and(|e| e == "json")
        && path
            .file_name()
            .is_some_and(|n| !n.to_string_lossy().starts_with('.'))
}

/// A first start on a disk with no room at all: the collector opens (the agent that runs it
/// goes on enforcing), counts the records it cannot write, and writes their loss record as
/// soon as there is room, without waiting for traffic.
#[test]
fn privileged_a_collector_opens_on_a_full_disk_and_records_its_losses_once_there_is_room() {
    if !privileged(
        "privileged_a_collector_opens_on_a_full_disk_and_records_its_losses_once_there_is_room",
    ) {
        return;
    }
    let disk = Tmpfs::mount("start", 1 << 20);
    let spool = disk.path().join("spool");
    disk.fill();
    let (mut pipeline, metrics) = open(&settings(&spool));
    let second = now_s() - 1;
    pipeline.ingest(&[syn(1000, second), syn(1000, second), syn(1001, second)]);
    pipeline.flush();
    assert_eq!(metrics.lost(LossSource::SpoolError), 3);
    assert!(loss_records(&spool).is_empty());
    assert_eq!(metrics.spool_blocked.load(Ordering::Relaxed), 1);

    disk.free();
    std::thread::sleep(Duration::from_millis(1100));
    pipeline.tick(&MemorySource::default());
    assert_eq!(
        loss_records(&spool),
        vec![("spool-error".to_owned(), Some(3))],
        "the loss is on record once there is room"
    );
    assert_eq!(metrics.spool_blocked.load(Ordering::Relaxed), 0);
    pipeline
        .finish(&MemorySource::default())
        .expect("a clean stop");
    let left: Vec<_> = files_under(&spool)
        .into_iter()
        .filter(|p| !p.starts_with(spool.join("ready")) && p != &spool.join("state"))
        .filter(|p| !is_chain_entry(&spool, p))
        .collect();
    assert!(left.is_empty(), "nothing half-written is left: {left:?}");
}

/// The disk fills during a run and the collector stops (cleanly, as far as it can tell): the
/// records it could not keep become a loss record at the next start, written before anything
/// else, and no temporary file is left in the spool.
#[test]
fn privileged_losses_of_a_full_disk_are_recorded_at_the_next_start() {
    if !privileged("privileged_losses_of_a_full_disk_are_recorded_at_the_next_start") {
        return;
    }
    let disk = Tmpfs::mount("restart", 1 << 20);
    let spool = disk.path().join("spool");
    let config = settings(&spool);
    let (mut pipeline, metrics) = open(&config);
    disk.fill();
    let second = now_s() - 1;
    pipeline.ingest(&[syn(2000, second), syn(2001, second)]);
    pipeline.flush();
    assert_eq!(metrics.lost(LossSource::SpoolError), 2);
    let stopped = pipeline.finish(&MemorySource::default());
    assert!(
        stopped.is_ok(),
        "the stop is saved on a full disk: {stopped:?}"
    );
    let temporary: Vec<_> = files_under(&spool)
        .into_iter()
        .filter(|p| p != &spool.join("state"))
        .collect();
    assert!(
        temporary.is_empty(),
        "no file is left behind: {temporary:?}"
    );
    assert!(loss_records(&spool).is_empty());

    disk.free();
    let (pipeline, _) = open(&config);
    assert_eq!(
        loss_records(&spool),
        vec![("spool-error".to_owned(), Some(2))],
        "written at the start, before any record"
    );
    pipeline
        .finish(&MemorySource::default())
        .expect("a clean stop");
    assert_eq!(
        loss_records(&spool),
        vec![("spool-error".to_owned(), Some(2))],
        "written once"
    );
}

/// A delivery to a local flow directory on a full disk fails and leaves no `.partial` file.
#[test]
fn privileged_a_delivery_to_a_full_flow_directory_leaves_no_partial_file() {
    if !privileged("privileged_a_delivery_to_a_full_flow_directory_leaves_no_partial_file") {
        return;
    }
    let disk = Tmpfs::mount("sink", 64 * 1024);
    let scratch = temp_dir("disk-full-source");
    let source = scratch.path().join("source.parquet");
    fs::write(&source, vec![7u8; 256 * 1024]).expect("writing the source");
    let flows = disk.path().join("flows");
    let sink = LocalSink::new(flows.clone());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    let key = "cluster=c/dt=2026-12-05/hour=12/node-a-20261205T120000Z-000001.parquet";
    let put = runtime.block_on(sink.put(key, &source));
    let _ = fs::remove_file(&source);
    let error = put.expect_err("a file larger than the disk is refused");
    assert!(
        error.to_string().contains("No space left on device"),
        "{error}"
    );
    let left = files_under(&flows);
    assert!(
        left.is_empty(),
        "no partial file in the flow directory: {left:?}"
    );
}
