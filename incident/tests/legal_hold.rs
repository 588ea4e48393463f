//! Legal holds on moto's S3 server (Object Lock, on 127.0.0.1): a quarantine holds the flow-log
//! objects and digests of the day before it and says so in its isolation record; a held
//! object's version cannot be deleted; an evidence bundle holds its sources and digests and
//! lists them; releasing lifts the holds; a bucket without Object Lock gets none, on record.

#[allow(dead_code, reason = "the KMS half of the harness is the collector's")]
#[path = "../../collector/tests/support/moto.rs"]
mod moto;
mod support;

use std::path::Path;

use moto::Moto;
use support::{flowlog, node::Node, temp_dir};
use tollgate_incident::{
    PodRef,
    cluster::KubeCluster,
    evidence,
    legal_hold::{self, HoldStatus, Holds, Target},
    location::{FlowLogLocation, S3Options},
    quarantine::quarantine,
    record,
    source::Reader,
};
use tollgate_schemas::Verdict;
use tollgate_test_support::apiserver::ApiServer;

const AT: u64 = flowlog::HOUR + 1800; // 2026-11-25T10:30:00Z

const POD: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: web
  namespace: shop
  labels: {app: web}
spec:
  nodeName: node-a
  containers: [{name: web, image: nginx}]
status:
  podIP: 10.0.1.57
  podIPs: [{ip: 10.0.1.57}]
"#;

/// A flow log of node-a (two files, a digest) under `tollgate/` of `bucket`.
async fn flow_log(moto: &Moto, bucket: &str, dir: &Path) -> Vec<String> {
    let flows = dir.join("flows");
    let (web, api) = (
        flowlog::identity("shop", "web"),
        flowlog::identity("shop", "api"),
    );
    let mut node = Node::start(dir, "prod", "node-a", flowlog::HOUR - 3600);
    for at in [flowlog::HOUR - 1800, flowlog::FROM + 10] {
        let records = [flowlog::flow(at, &web, &api, Verdict::Allow)];
        node.write_content(at, &flowlog::parquet("node-a", &records, None), Vec::new());
    }
    node.seal(flowlog::HOUR + 1200).await;
    node.ship(&flows);
    let mut keys = Vec::new();
    let mut dirs = vec![flows.clone()];
    while let Some(d) = dirs.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            let key = path
                .strip_prefix(&flows)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            moto.s3()
                .put_object()
                .bucket(bucket)
                .key(format!("tollgate/{key}"))
                .body(std::fs::read(&path).unwrap().into())
                .send()
                .await
                .unwrap();
            keys.push(key);
        }
    }
    keys.sort();
    keys
}

fn location(bucket: &str) -> FlowLogLocation {
    format!("s3://{bucket}/tollgate").parse().unwrap()
}

fn options(moto: &Moto) -> S3Options {
    S3Options {
        region: moto::REGION.to_owned(),
        endpoint_url: Some(moto.endpoint_url()),
        path_style: true,
    }
}

async fn hold_of(moto: &Moto, bucket: &str, key: &str) -> String {
    moto.s3()
        .get_object_legal_hold()
        .bucket(bucket)
        .key(format!("tollgate/{key}"))
        .send()
        .await
        .map(|a| {
            a.legal_hold()
                .and_then(|h| h.status())
                .map(|s| s.as_str().to_owned())
                .unwrap_or_default()
        })
        .unwrap_or_else(|e| format!("{e:?}"))
}

async fn delete_version(moto: &Moto, bucket: &str, key: &str) -> Result<(), String> {
    let key = format!("tollgate/{key}");
    let head = moto
        .s3()
        .head_object()
        .bucket(bucket)
        .key(&key)
        .send()
        .await
        .unwrap();
    moto.s3()
        .delete_object()
        .bucket(bucket)
        .key(&key)
        .set_version_id(head.version_id().map(str::to_owned))
        .send()
        .await
        .map(|_| ())
        .map_err(|e| tollgate_collector::sink::sdk_in_words(&e))
}

#[tokio::test]
async fn a_quarantine_holds_the_days_objects_and_digests_and_a_held_version_cannot_be_deleted() {
    let moto = Moto::start();
    moto.object_lock_bucket("flows").await;
    let dir = temp_dir("legal-hold-quarantine");
    let keys = flow_log(&moto, "flows", dir.path()).await;
    assert_eq!(keys.len(), 3, "two flow files and a digest: {keys:?}");

    let (client, server) = ApiServer::start();
    server.sign_in("alice@example.com");
    server.add_pod(POD);
    let pod: PodRef = "shop/web".parse().unwrap();
    let mut outcome = quarantine(&KubeCluster::new(client), &pod, "C2 beacon", || AT)
        .await
        .expect("quarantined");
    let reader = Reader::new(&location("flows"), &options(&moto)).await;
    let holds = legal_hold::at_quarantine(&reader, "prod", &mut outcome, AT - 86_400).await;
    assert_eq!(holds.status, HoldStatus::Placed);
    assert!(holds.complete(), "{:?}", holds.failed);
    let mut held = holds.held.clone();
    held.sort();
    assert_eq!(held, keys, "every object and digest of the day");
    // The isolation record says which.
    let detail: serde_json::Value = serde_json::from_str(&outcome.isolation.detail).unwrap();
    assert_eq!(detail["legal_holds"]["status"], "placed");
    assert_eq!(detail["legal_holds"]["held"].as_array().unwrap().len(), 3);
    let staging = temp_dir("legal-hold-staging");
    record::deliver(
        "prod",
        &outcome,
        &location("flows"),
        &options(&moto),
        staging.path(),
    )
    .await
    .expect("the record delivered");
    let record_key = record::key("prod", &outcome);
    let record_hold = Holds::place(
        &reader,
        &[Target {
            key: record_key.clone(),
            version_id: None,
        }],
    )
    .await;
    assert!(record_hold.complete());

    for key in keys.iter().chain([&record_key]) {
        assert_eq!(hold_of(&moto, "flows", key).await, "ON", "{key}");
    }
    let refused = delete_version(&moto, "flows", &keys[0]).await;
    assert!(
        refused.as_ref().is_err_and(|e| e.contains("AccessDenied")),
        "a held version is not deleted: {refused:?}"
    );

    // Only a release lifts them.
    let released = Holds::release(
        &reader,
        &legal_hold::select(&reader, "prod", AT - 86_400, AT + 1)
            .await
            .unwrap(),
    )
    .await;
    assert!(released.complete(), "{:?}", released.failed);
    assert_eq!(hold_of(&moto, "flows", &keys[0]).await, "OFF");
    delete_version(&moto, "flows", &keys[0])
        .await
        .expect("deleted once released");
}

#[tokio::test]
async fn an_evidence_bundle_holds_its_sources_and_their_digests() {
    let moto = Moto::start();
    moto.object_lock_bucket("evidence").await;
    let dir = temp_dir("legal-hold-evidence");
    let keys = flow_log(&moto, "evidence", dir.path()).await;
    let out = dir.path().join("bundle");
    let request = evidence::Request {
        pod: "shop/web".parse().unwrap(),
        cluster: Some("prod".into()),
        from_s: flowlog::FROM,
        to_s: flowlog::TO,
        location: location("evidence"),
        s3: options(&moto),
        out: out.clone(),
        athena: None,
    };
    let bundle = evidence::collect(&request, Vec::new(), flowlog::TO)
        .await
        .expect("a bundle");
    assert!(
        bundle.shortfalls(false).is_empty(),
        "{:?}",
        bundle.shortfalls(false)
    );
    assert_eq!(bundle.holds.status, HoldStatus::Placed);
    let mut held = bundle.holds.held.clone();
    held.sort();
    assert_eq!(held, keys, "both sources (versions) and the digest");
    let legal_holds = bundle.manifest.legal_holds.as_ref().unwrap();
    assert_eq!(legal_holds["status"], "placed");
    let sources: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("sources.json")).unwrap()).unwrap();
    assert!(
        sources
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["legal_hold"] == true && s["version_id"].is_string()),
        "{sources:#}"
    );
    for key in &keys {
        assert_eq!(hold_of(&moto, "evidence", key).await, "ON", "{key}");
    }
    evidence::verify(&out, Some(&bundle.manifest_sha256)).expect("intact");
}

#[tokio::test]
async fn a_bucket_without_object_lock_gets_no_hold_and_says_so() {
    let moto = Moto::start();
    moto.s3()
        .create_bucket()
        .bucket("plain")
        .send()
        .await
        .unwrap();
    let dir = temp_dir("legal-hold-plain");
    flow_log(&moto, "plain", dir.path()).await;
    let reader = Reader::new(&location("plain"), &options(&moto)).await;
    let targets = legal_hold::select(&reader, "prod", AT - 86_400, AT + 1)
        .await
        .unwrap();
    let holds = Holds::place(&reader, &targets).await;
    assert!(
        matches!(&holds.status, HoldStatus::Unavailable(why) if why.contains("ObjectLockConfiguration") || why.contains("no Object Lock")),
        "{:?}",
        holds.status
    );
    assert!(holds.held.is_empty() && holds.complete());
}
