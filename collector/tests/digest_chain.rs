//! The digest chain through the real shipper to a real S3-compatible server (s3s-fs): digests
//! sealed while S3 is down wait in the spool with the flow files, and once it is back every
//! flow file and every digest arrives, the digests one unbroken chain listing every file.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use support::s3_server::S3Server;
use tokio::sync::{Notify, watch};
use tollgate_collector::{
    chain::{Sealer, sha256_hex},
    clock::{NS_PER_S, compact_utc, partition_date, unix_now_ns},
    config::{SigningConfig, SinkConfig},
    digest::Signed,
    metrics::Metrics,
    ship::ship,
    sink::{Sink, Sinks},
    spool::{Commit, FileFacts, Spool, pending_in},
};
use tollgate_test_support::temp_dir;

fn spool_file(spool: &mut Spool, at_s: u64) -> String {
    let (sequence, temp) = spool.begin().unwrap();
    std::fs::write(&temp, format!("flow file {sequence}")).unwrap();
    let (dt, hour) = partition_date(at_s);
    let key = format!(
        "cluster=c/dt={dt}/hour={hour}/n-{}-{sequence:06}.parquet",
        compact_utc(at_s)
    );
    let facts = FileFacts {
        sequence,
        records: 1,
        first_record_s: at_s,
        last_record_s: at_s,
        loss_records: Vec::new(),
    };
    let Commit::Spooled(_) = spool.commit(&temp, &key, facts).unwrap() else {
        panic!("not spooled");
    };
    key
}

#[tokio::test]
async fn an_s3_outage_delays_digests_and_loses_none() {
    let mut server = S3Server::start().await;
    let dir = temp_dir("digest-outage");
    let spool_dir = dir.path().join("spool");
    let now_s = unix_now_ns() / NS_PER_S;
    let (mut spool, _) = Spool::open(&spool_dir, 1 << 30, now_s).unwrap();
    let mut keys = vec![spool_file(&mut spool, now_s), spool_file(&mut spool, now_s)];
    server.stop();
    let sink = Sink::from_config(&SinkConfig::S3(server.config("flows")))
        .await
        .unwrap();
    let metrics = Arc::new(Metrics::default());
    let wake = Arc::new(Notify::new());
    let (stop, stop_rx) = watch::channel(None);
    // A digest every second, so that several fall due during the outage.
    let sealer = Sealer::new(
        &spool_dir,
        "c",
        "n",
        Duration::from_secs(1),
        SigningConfig::LocalKey {
            key_file: Some(dir.path().join("key.pem")),
        },
        now_s,
    );
    let shipper = tokio::spawn(ship(
        spool_dir.clone(),
        Sinks::new(sink, None),
        Arc::clone(&metrics),
        Arc::clone(&wake),
        stop_rx,
        sealer,
    ));
    let deadline = Instant::now() + Duration::from_secs(20);
    while metrics
        .digests_sealed
        .load(std::sync::atomic::Ordering::Relaxed)
        < 2
    {
        assert!(
            Instant::now() < deadline,
            "no digest sealed during the outage"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    keys.push(spool_file(&mut spool, now_s));
    let waiting = pending_in(&spool_dir).unwrap();
    assert!(
        waiting.iter().any(|f| f.key.starts_with("_digests/")),
        "sealed digests wait in the spool"
    );
    assert!(metrics.ship_failures_total() > 0);
    server.restart().await;
    wake.notify_one();
    spool.close().unwrap();
    stop.send(Some(Duration::from_secs(30))).unwrap();
    let shipped = shipper.await.unwrap();
    assert_eq!(shipped.left, 0, "everything delivered");

    let objects = server.objects().await;
    let flows: Vec<&String> = objects
        .iter()
        .map(|(k, _)| k)
        .filter(|k| k.starts_with("flows/cluster=c/"))
        .collect();
    assert_eq!(flows.len(), 3);
    let mut digests: Vec<(Signed, String, String)> = objects
        .iter()
        .filter(|(k, _)| k.starts_with("flows/_digests/"))
        .map(|(k, bytes)| (Signed::parse(bytes).unwrap(), k.clone(), sha256_hex(bytes)))
        .collect();
    assert!(digests.len() >= 3, "the outage's digests and the last");
    let head = server
        .client()
        .head_object()
        .bucket(server.bucket())
        .key(&digests[0].1)
        .send()
        .await
        .unwrap();
    assert_eq!(head.content_type(), Some("application/json"));
    digests.sort_by_key(|(signed, _, _)| signed.document.number);
    let mut listed = Vec::new();
    for (i, (signed, key, _)) in digests.iter().enumerate() {
        let document = &signed.document;
        assert_eq!(document.number, i as u64, "no digest lost");
        assert_eq!(key, &format!("flows/{}", document.key()));
        signed
            .check_signature(&signed.public_key().unwrap())
            .unwrap();
        match i {
            0 => assert!(document.previous.is_none() && document.chain_start.is_some()),
            _ => {
                let (before, _, sha256) = &digests[i - 1];
                let previous = document.previous.as_ref().unwrap();
                assert_eq!(previous.key, before.document.key());
                assert_eq!(&previous.sha256, sha256);
            }
        }
        listed.extend(document.objects.iter().map(|o| o.key.clone()));
    }
    keys.sort();
    listed.sort();
    assert_eq!(listed, keys, "every flow file in exactly one digest");
}
