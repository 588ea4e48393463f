//! The collector on the real probe's ring buffer (needs root: BPF). Events come from
//! [`Flood`]: distinct denied flows run through the real `from_pod` program.

mod support;

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::privileged;
use tokio::sync::Notify;
use tollgate_collector::{
    config::{CollectorConfig, SinkConfig},
    flood::Flood,
    identity::Identities,
    metrics::Metrics,
    pipeline::Pipeline,
    readback::{Filter, read_dir},
    service::Collector,
};
use tollgate_schemas::Counter;
use tollgate_test_support::{TempDir, temp_dir};

fn config(dir: &TempDir) -> CollectorConfig {
    CollectorConfig {
        cluster: "test".into(),
        node: "node-1".into(),
        spool_dir: dir.path().join("spool"),
        sink: SinkConfig::Local {
            dir: dir.path().join("flows"),
        },
        ..CollectorConfig::default()
    }
}

#[test]
fn privileged_a_full_ring_buffer_becomes_a_loss_record_with_the_kernels_count() {
    if !privileged("privileged_a_full_ring_buffer_becomes_a_loss_record_with_the_kernels_count") {
        return;
    }
    let dir = temp_dir("ringbuf-full");
    let config = config(&dir);
    let metrics = Arc::new(Metrics::default());
    let identities = Arc::new(Mutex::new(Identities::default()));
    let (mut pipeline, _) = Pipeline::open(
        &config,
        identities,
        Arc::clone(&metrics),
        Arc::new(Notify::new()),
    )
    .unwrap();
    let (mut flood, mut reader) = Flood::new().unwrap();

    // More events than the 4 MiB ring holds, with nobody reading.
    flood.deny(60_000).unwrap();
    let failed = reader
        .counters()
        .unwrap()
        .get(Counter::RingbufReserveFailed);
    assert!(failed > 10_000, "the ring should have overflowed: {failed}");

    pipeline.drain(&mut reader, &mut None);
    pipeline.tick(&reader);
    pipeline.finish(&reader).unwrap();

    let drained = metrics.events.load(Ordering::Relaxed);
    assert_eq!(
        drained + failed,
        60_000,
        "every event is either read or counted"
    );
    let records = read_dir(&config.spool_dir.join("ready"), &Filter::default()).unwrap();
    let losses: Vec<_> = records.iter().filter(|r| r.is_loss()).collect();
    assert_eq!(losses.len(), 1, "{losses:#?}");
    assert_eq!(losses[0].loss_source.as_deref(), Some("ringbuf-full"));
    assert_eq!(losses[0].skipped_events, Some(failed as i64));
    assert!(losses[0].start <= losses[0].end);
    let flows = records.iter().filter(|r| !r.is_loss()).count() as u64;
    assert_eq!(flows, drained, "one record per distinct flow read");

    // While no collector runs, the ring overflows again; a restarted collector on the same
    // spool and the same (pinned) probe reports only the failures counted after the last
    // one's read, over the time since that read.
    std::fs::remove_dir_all(config.spool_dir.join("ready")).unwrap();
    flood.deny(60_000).unwrap();
    let now_failed = reader
        .counters()
        .unwrap()
        .get(Counter::RingbufReserveFailed);
    assert!(now_failed > failed, "the ring overflowed again");
    let metrics = Arc::new(Metrics::default());
    let (mut pipeline, recovery) = Pipeline::open(
        &config,
        Arc::new(Mutex::new(Identities::default())),
        Arc::clone(&metrics),
        Arc::new(Notify::new()),
    )
    .unwrap();
    let mark = recovery
        .ringbuf_reported
        .expect("the first collector's mark");
    assert_eq!(mark.failed, failed);
    pipeline.drain(&mut reader, &mut None);
    pipeline.tick(&reader);
    pipeline.finish(&reader).unwrap();
    let records = read_dir(&config.spool_dir.join("ready"), &Filter::default()).unwrap();
    let losses: Vec<_> = records.iter().filter(|r| r.is_loss()).collect();
    assert_eq!(losses.len(), 1, "{losses:#?}");
    assert_eq!(
        losses[0].skipped_events,
        Some((now_failed - failed) as i64),
        "only the new failures"
    );
    assert_eq!(losses[0].start, mark.read_s as i64, "since the last read");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn privileged_the_running_collector_drains_on_wakeups_and_on_its_timer_and_ships_each_flow_once()
 {
    if !privileged(
        "privileged_the_running_collector_drains_on_wakeups_and_on_its_timer_and_ships_each_flow_once",
    ) {
        return;
    }
    let dir = temp_dir("service");
    let config = config(&dir);
    let (mut flood, reader) = Flood::new().unwrap();
    let identities = Arc::new(Mutex::new(Identities::default()));
    let (collector, recovery) = Collector::start(&config, reader, identities, None)
        .await
        .unwrap();
    assert_eq!(recovery.pending, 0);

    // 1,000 events (96 KB) pass the probe's 64 KiB wakeup mark; the last 100 do not, and only
    // the timer finds them. Nobody calls sync().
    flood.deny(1_000).unwrap();
    flood.deny(100).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while collector.metrics().events.load(Ordering::Relaxed) < 1_100 {
        assert!(
            Instant::now() < deadline,
            "only {} of 1100 events read",
            collector.metrics().events.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let stopped = collector.stop(Duration::from_secs(10)).await.unwrap();
    assert_eq!(stopped.shipped.left, 0);
    assert!(stopped.shipped.files >= 1);
    assert!(
        !config
            .spool_dir
            .join("ready")
            .read_dir()
            .unwrap()
            .any(|_| true),
        "the spool is empty once everything is shipped"
    );
    let records = read_dir(&dir.path().join("flows"), &Filter::default()).unwrap();
    let flows: BTreeSet<(String, i32)> = records
        .iter()
        .map(|r| (r.srcaddr.clone().unwrap(), r.srcport.unwrap()))
        .collect();
    assert_eq!(records.len(), 1_100, "one record per flow");
    assert_eq!(flows.len(), 1_100, "no flow twice");
    assert!(records.iter().all(|r| r.is_reject()
        && r.verdict_reason.as_deref() == Some("unknown-endpoint")
        && r.packets == Some(1)));
}
