//! `digest verify` on flow logs written through the collector's real spool and sealer (two
//! nodes, three signed digests each): intact, then each tampering the issue names —
//! one byte of an object, an object deleted, an object added, a digest deleted from the
//! middle, a digest re-signed with another key, a sequence gap without a loss record, two
//! nodes' objects swapped — each failing with its own line; and the chain kept across a
//! restart and a SIGKILL, restarted with a reason when the spool is lost. An evidence bundle
//! carries the digests of its sources, and `evidence verify` holds its sources to them.

mod support;

use std::path::Path;

use support::{
    flowlog::{FROM, HOUR, TO, flow, identity, isolation, parquet},
    node::Node,
    temp_dir,
};
use tollgate_collector::{
    digest::{Document, Signed},
    loss::LossSource,
    sign::Signer,
};
use tollgate_incident::{
    PodRef,
    digest_verify::{Report, Request, verify},
    evidence,
    location::{FlowLogLocation, S3Options},
    provenance::{self, Provenance},
    source::Reader,
};
use tollgate_schemas::Verdict;

/// An hour boundary (2025-11-24T16:00:00Z).
const H: u64 = 1_764_000_000 / 3600 * 3600;

async fn check(flow_dir: &Path, request: &Request) -> Report {
    let reader = Reader::new(
        &FlowLogLocation::Local(flow_dir.to_owned()),
        &S3Options::default(),
    )
    .await;
    verify(&reader, None, request).await.unwrap()
}

fn assert_one(report: &Report, needle: &str) {
    let found: Vec<_> = report
        .problems
        .iter()
        .filter(|p| p.contains(needle))
        .collect();
    assert!(
        !found.is_empty(),
        "no problem says {needle:?}: {:#?}",
        report.problems
    );
}

/// Two nodes of cluster `prod`, three digests each, delivered into `<dir>/flows`.
async fn flow_log(dir: &Path) -> (Vec<Node>, std::path::PathBuf) {
    let flows = dir.join("flows");
    let mut nodes = Vec::new();
    for name in ["node-a", "node-b"] {
        let mut node = Node::start(dir, "prod", name, H);
        node.write(H + 60, Vec::new());
        node.write(H + 120, Vec::new());
        node.seal(H + 3600).await;
        node.write(H + 3700, Vec::new());
        node.seal(H + 7200).await;
        node.write(H + 7300, Vec::new());
        node.seal(H + 10_800).await;
        node.ship(&flows);
        nodes.push(node);
    }
    (nodes, flows)
}

fn digests(flows: &Path, node: &str) -> Vec<std::path::PathBuf> {
    let dir = flows.join(format!("_digests/cluster=prod/node={node}/dt=2025-11-24"));
    let mut found: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    found.sort();
    found
}

fn object(flows: &Path, node: &str, at_s: u64, sequence: u64) -> std::path::PathBuf {
    let (dt, hour) = tollgate_collector::clock::partition_date(at_s);
    flows.join(format!(
        "cluster=prod/dt={dt}/hour={hour}/{node}-{}-{sequence:06}.parquet",
        tollgate_collector::clock::compact_utc(at_s)
    ))
}

fn public_key(node: &Node) -> Vec<u8> {
    Signer::local(&node.key_file).unwrap().public_key()
}

#[tokio::test]
async fn an_intact_flow_log_holds_up() {
    let dir = temp_dir("digest-intact");
    let (nodes, flows) = flow_log(dir.path()).await;
    let trusted = nodes.iter().map(public_key).collect();
    let report = check(
        &flows,
        &Request {
            trusted,
            ..Request::default()
        },
    )
    .await;
    assert!(report.problems.is_empty(), "{:#?}", report.problems);
    assert_eq!((report.digests, report.nodes, report.objects), (6, 2, 8));
    assert!(
        report.notes.iter().any(|n| n.contains("a chain starts")),
        "{:?}",
        report.notes
    );
    // The first digest of a chain says why it starts; the next link to it.
    let first = Signed::parse(&std::fs::read(&digests(&flows, "node-a")[0]).unwrap()).unwrap();
    assert!(first.document.previous.is_none());
    assert!(first.document.chain_start.is_some());
    let second = Signed::parse(&std::fs::read(&digests(&flows, "node-a")[1]).unwrap()).unwrap();
    assert_eq!(second.document.previous.unwrap().key, first.document.key());
    // Without trusted keys, each chain is held to its first digest's key.
    let report = check(&flows, &Request::default()).await;
    assert!(report.problems.is_empty(), "{:#?}", report.problems);
    // A window holds only what it reaches.
    let report = check(
        &flows,
        &Request {
            from_s: Some(H + 3 * 3600),
            to_s: Some(H + 4 * 3600),
            trusted: Vec::new(),
        },
    )
    .await;
    assert!(report.problems.is_empty(), "{:#?}", report.problems);
}

#[tokio::test]
async fn one_changed_byte_is_a_changed_object() {
    let dir = temp_dir("digest-byte");
    let (_, flows) = flow_log(dir.path()).await;
    let path = object(&flows, "node-a", H + 60, 0);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[3] ^= 1;
    std::fs::write(&path, bytes).unwrap();
    let report = check(&flows, &Request::default()).await;
    assert_one(
        &report,
        "changed object cluster=prod/dt=2025-11-24/hour=16/node-a-",
    );
    assert_eq!(report.problems.len(), 1, "{:#?}", report.problems);
}

#[tokio::test]
async fn a_deleted_object_is_missing() {
    let dir = temp_dir("digest-deleted");
    let (_, flows) = flow_log(dir.path()).await;
    std::fs::remove_file(object(&flows, "node-b", H + 3700, 2)).unwrap();
    let report = check(&flows, &Request::default()).await;
    assert_one(
        &report,
        "missing object cluster=prod/dt=2025-11-24/hour=17/node-b-",
    );
    assert_eq!(report.problems.len(), 1, "{:#?}", report.problems);
}

#[tokio::test]
async fn an_added_object_is_extra() {
    let dir = temp_dir("digest-added");
    let (_, flows) = flow_log(dir.path()).await;
    let path = object(&flows, "node-a", H + 200, 9);
    std::fs::write(&path, b"planted").unwrap();
    let report = check(&flows, &Request::default()).await;
    assert_one(
        &report,
        "extra object cluster=prod/dt=2025-11-24/hour=16/node-a-",
    );
    assert_eq!(report.problems.len(), 1, "{:#?}", report.problems);
}

#[tokio::test]
async fn a_digest_deleted_from_the_middle_breaks_the_chain() {
    let dir = temp_dir("digest-middle");
    let (_, flows) = flow_log(dir.path()).await;
    let middle = digests(&flows, "node-a").remove(1);
    std::fs::remove_file(&middle).unwrap();
    let report = check(&flows, &Request::default()).await;
    assert_one(
        &report,
        "broken chain: digest _digests/cluster=prod/node=node-a/",
    );
    assert_one(&report, "which is missing");
    // Its object is in no digest now, and its sequence number a gap.
    assert_one(&report, "extra object");
    assert_one(
        &report,
        "gap: node node-a of cluster prod: sequence numbers 2..=2",
    );
}

#[tokio::test]
async fn a_digest_re_signed_with_another_key_is_a_bad_signature() {
    let dir = temp_dir("digest-resigned");
    let (nodes, flows) = flow_log(dir.path()).await;
    let path = digests(&flows, "node-a").remove(2);
    let signed = Signed::parse(&std::fs::read(&path).unwrap()).unwrap();
    let forger = Signer::local(&dir.path().join("forger.pem")).unwrap();
    let mut document = signed.document.clone();
    document.signing = forger.signing();
    let body = document.body_bytes();
    let signature = forger.sign(&Document::signed_message(&body)).await.unwrap();
    std::fs::write(&path, Document::render(&body, &signature)).unwrap();
    // Against the node's key.
    let report = check(
        &flows,
        &Request {
            trusted: vec![public_key(&nodes[0]), public_key(&nodes[1])],
            ..Request::default()
        },
    )
    .await;
    assert_one(
        &report,
        "bad signature on digest _digests/cluster=prod/node=node-a/",
    );
    assert_eq!(report.problems.len(), 1, "{:#?}", report.problems);
    // Against the chain's first key.
    let report = check(&flows, &Request::default()).await;
    assert_one(
        &report,
        "bad signature on digest _digests/cluster=prod/node=node-a/",
    );
}

#[tokio::test]
async fn a_sequence_gap_needs_a_loss_record() {
    let dir = temp_dir("digest-gap");
    let flows = dir.path().join("flows");
    let mut node = Node::start(dir.path(), "prod", "node-a", H);
    node.write(H + 60, Vec::new());
    // A file begun and never spooled, with nothing said about it.
    node.begin(b"vanished");
    node.write(H + 120, Vec::new());
    // One given up, and said so.
    let (lost, _) = node.begin(b"given up");
    node.spool
        .as_ref()
        .unwrap()
        .lose_sequence(lost, LossSource::SpoolFull, "no room");
    node.write(H + 180, Vec::new());
    node.seal(H + 3600).await;
    node.ship(&flows);
    let report = check(&flows, &Request::default()).await;
    assert_eq!(
        report.problems,
        vec![
            "gap: node node-a of cluster prod: sequence numbers 1..=1 are in no digest, and no \
             loss record covers them"
                .to_owned()
        ]
    );
}

#[tokio::test]
async fn objects_of_two_nodes_swapped_are_named() {
    let dir = temp_dir("digest-swapped");
    let (_, flows) = flow_log(dir.path()).await;
    let a = object(&flows, "node-a", H + 60, 0);
    let b = object(&flows, "node-b", H + 60, 0);
    let (bytes_a, bytes_b) = (std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    std::fs::write(&a, bytes_b).unwrap();
    std::fs::write(&b, bytes_a).unwrap();
    let report = check(&flows, &Request::default()).await;
    assert_eq!(report.problems.len(), 2, "{:#?}", report.problems);
    assert_one(&report, "objects swapped or copied");
    assert_one(
        &report,
        "changed object cluster=prod/dt=2025-11-24/hour=16/node-a-",
    );
    assert_one(
        &report,
        "changed object cluster=prod/dt=2025-11-24/hour=16/node-b-",
    );
}

#[tokio::test]
async fn a_restart_and_a_sigkill_keep_the_chain_and_a_lost_spool_restarts_it_with_a_reason() {
    let dir = temp_dir("digest-restart");
    let flows = dir.path().join("flows");
    let mut node = Node::start(dir.path(), "prod", "node-a", H);
    node.write(H + 60, Vec::new());
    node.seal(H + 600).await;
    // A clean restart continues the chain.
    let mut node = node.restart(H + 700);
    node.write(H + 800, Vec::new());
    // SIGKILL while a file is being written: the next start records its number as lost.
    node.begin(b"half-written");
    let mut node = node.kill_and_restart(H + 900);
    node.write(H + 1000, Vec::new());
    node.seal(H + 3600).await;
    node.ship(&flows);
    let report = check(&flows, &Request::default()).await;
    assert!(report.problems.is_empty(), "{:#?}", report.problems);
    let chain = digests(&flows, "node-a");
    assert_eq!(chain.len(), 2);
    let last = Signed::parse(&std::fs::read(&chain[1]).unwrap()).unwrap();
    assert_eq!(last.document.number, 1, "the chain goes on");
    assert_eq!(
        last.document
            .lost_sequences
            .iter()
            .map(|l| (l.sequence, l.loss_source))
            .collect::<Vec<_>>(),
        vec![(2, LossSource::CollectorRestart)]
    );
    // The spool lost (a new disk): a new chain, saying why.
    std::fs::remove_dir_all(&node.spool_dir).unwrap();
    let mut node = node.kill_and_restart(H + 4000);
    node.write(H + 4100, Vec::new());
    let key = node.seal(H + 7200).await;
    node.ship(&flows);
    let report = check(&flows, &Request::default()).await;
    assert!(report.problems.is_empty(), "{:#?}", report.problems);
    let restarted = Signed::parse(&std::fs::read(flows.join(&key)).unwrap()).unwrap();
    assert!(restarted.document.previous.is_none());
    assert!(
        restarted
            .document
            .chain_start
            .as_deref()
            .is_some_and(|why| why.contains("spool was lost")),
        "{:?}",
        restarted.document.chain_start
    );
    assert_eq!(
        report
            .notes
            .iter()
            .filter(|n| n.contains("a chain starts"))
            .count(),
        2,
        "{:?}",
        report.notes
    );
}

#[tokio::test]
async fn an_evidence_bundle_carries_and_checks_the_digests_of_its_sources() {
    let dir = temp_dir("digest-evidence");
    let flows = dir.path().join("flows");
    let (web, api) = (identity("shop", "web"), identity("shop", "api"));
    let mut node = Node::start(dir.path(), "prod", "node-a", HOUR);
    let records = [flow(FROM + 10, &web, &api, Verdict::Allow)];
    let key = node.write_content(FROM + 10, &parquet("node-a", &records, None), Vec::new());
    node.seal(HOUR + 3600).await;
    node.ship(&flows);
    // An isolation record, written by `quarantine`, not by a collector: in no digest.
    let isolation_key = "cluster=prod/dt=2026-11-25/hour=10/isolation-shop-web-quarantine.parquet";
    std::fs::write(
        flows.join(isolation_key),
        parquet("node-a", &[isolation(FROM + 800, &web)], None),
    )
    .unwrap();
    let out = dir.path().join("bundle");
    let request = evidence::Request {
        pod: "shop/web".parse::<PodRef>().unwrap(),
        cluster: Some("prod".into()),
        from_s: FROM,
        to_s: TO,
        location: FlowLogLocation::Local(flows.clone()),
        s3: S3Options::default(),
        out: out.clone(),
        athena: None,
    };
    let bundle = evidence::collect(&request, Vec::new(), TO).await.unwrap();
    let expected = Provenance {
        proven: 1,
        uncovered: 1,
    };
    assert_eq!(bundle.provenance, expected);
    let sources: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("sources.json")).unwrap()).unwrap();
    let covered = sources
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["key"] == key.as_str())
        .unwrap();
    let digest_file = covered["digest"].as_str().unwrap().to_owned();
    assert!(digest_file.starts_with("digest-node-a-"), "{digest_file}");
    assert!(
        bundle.manifest.files.iter().any(|f| f.path == digest_file),
        "the digest is in the manifest"
    );
    evidence::verify(&out, Some(&bundle.manifest_sha256)).expect("intact");
    assert_eq!(
        provenance::check(&out, &[public_key(&node)]),
        Ok(expected.clone())
    );
    assert_eq!(provenance::check(&out, &[]), Ok(expected));
    // Another node's key is not the one that signed it.
    let other = Signer::local(&dir.path().join("other.pem"))
        .unwrap()
        .public_key();
    let problems = provenance::check(&out, &[other]).unwrap_err();
    assert!(problems[0].contains("bad signature"), "{problems:?}");
    // A source's digest rewritten in sources.json (manifest and all): the signed digest says
    // otherwise.
    let text = std::fs::read_to_string(out.join("sources.json")).unwrap();
    let sha256 = covered["sha256"].as_str().unwrap();
    std::fs::write(
        out.join("sources.json"),
        text.replace(sha256, &"0".repeat(64)),
    )
    .unwrap();
    let problems = provenance::check(&out, &[]).unwrap_err();
    assert_eq!(
        problems,
        vec![format!(
            "sources.json: {key}: SHA-256 {}, but the signed {digest_file} lists {sha256}",
            "0".repeat(64)
        )]
    );
}

#[tokio::test]
async fn security_lake_objects_are_checked_where_they_were_delivered() {
    let dir = temp_dir("digest-security-lake");
    let (flows, lake) = (dir.path().join("flows"), dir.path().join("lake"));
    let mut node = Node::start(dir.path(), "prod", "node-a", H);
    node.write(H + 60, Vec::new());
    // An OCSF object of the Security Lake output, spooled like a flow file.
    let (sequence, temp) = node.begin(b"ocsf object");
    let key = format!(
        "ext/tollgate/region=eu-west-1/accountId=111122223333/eventDay=20251124/node-a-{}-{sequence:06}.parquet",
        tollgate_collector::clock::compact_utc(H + 60)
    );
    let facts = tollgate_collector::spool::FileFacts {
        sequence,
        records: 3,
        first_record_s: H + 60,
        last_record_s: H + 120,
        loss_records: Vec::new(),
    };
    let committed = node.spool.as_mut().unwrap().commit(&temp, &key, facts);
    assert!(matches!(
        committed,
        Ok(tollgate_collector::spool::Commit::Spooled(_))
    ));
    node.seal(H + 3600).await;
    node.ship(&flows);
    // The shipper routes it to Security Lake's bucket: move it there.
    std::fs::create_dir_all(lake.join(&key).parent().unwrap()).unwrap();
    std::fs::rename(flows.join(&key), lake.join(&key)).unwrap();

    let request = Request {
        trusted: vec![public_key(&node)],
        ..Request::default()
    };
    let options = S3Options::default();
    let flow_reader = Reader::new(&FlowLogLocation::Local(flows.clone()), &options).await;
    let lake_reader = Reader::new(&FlowLogLocation::Local(lake.clone()), &options).await;
    let report = verify(&flow_reader, Some(&lake_reader), &request)
        .await
        .unwrap();
    assert!(report.problems.is_empty(), "{:#?}", report.problems);
    assert_eq!(report.objects, 2);

    // Without the Security Lake location, the object is missing, and the line says where to
    // look; a changed byte there is a changed object.
    let without = check(&flows, &request).await;
    assert_one(&without, &format!("missing object {key}"));
    assert_one(&without, "give its location with --security-lake");
    std::fs::write(lake.join(&key), b"OCSF object").unwrap();
    let changed = verify(&flow_reader, Some(&lake_reader), &request)
        .await
        .unwrap();
    assert_one(&changed, &format!("changed object {key}"));
}
