//! Flow-log files for the tests of `tollgate flows` and of the collector's reader: records as
//! the collector writes them, in Parquet files of the collector's layout, with the compression
//! and the columns a test asks for.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parquet::{arrow::ArrowWriter, basic::Compression, file::properties::WriterProperties};
use tollgate_collector::{
    identity::{EndpointInterface, Eni, Holder, PodIdentity},
    loss::{LossSource, LossSpan},
    record::{Flow, FlowRecord, RecordBody, encode, schema},
};
use tollgate_enforcer::desired::{NamedRule, PolicyTier, RuleAction, RuleRef};
use tollgate_schemas::{Direction, Reason, Verdict};

/// Pod `namespace/name` of Deployment `name`, labelled `app: <name>`.
pub fn pod(namespace: &str, name: &str) -> Arc<PodIdentity> {
    Arc::new(PodIdentity {
        namespace: namespace.into(),
        name: name.into(),
        workload: format!("Deployment/{name}"),
        labels: BTreeMap::from([("app".to_owned(), name.to_owned())]).into(),
    })
}

/// A TCP flow from `src` (10.0.0.1) to `dst` (10.0.0.2) port 443 over `[at, at + 5]`; an
/// allowed one names rule 0 of `default/allow-web`.
pub fn flow(
    at: u64,
    src: &Arc<PodIdentity>,
    dst: &Arc<PodIdentity>,
    verdict: Verdict,
) -> FlowRecord {
    let allowed = verdict == Verdict::Allow;
    FlowRecord {
        start_s: at,
        end_s: at + 5,
        body: RecordBody::Flow(Flow {
            src: "10.0.0.1".parse().unwrap(),
            dst: "10.0.0.2".parse().unwrap(),
            src_port: 40_000,
            dst_port: 443,
            protocol: 6,
            direction: Direction::Egress,
            verdict,
            reason: if allowed {
                Reason::AllowedByRule
            } else {
                Reason::IsolatedNoMatch
            },
            icmp: None,
            packets: 3,
            bytes: 222,
            tcp_flags: 2,
            events: 1,
            src_holder: Some(Holder::Pod(Arc::clone(src))),
            dst_holder: Some(Holder::Pod(Arc::clone(dst))),
            service: None,
            rule: allowed.then(|| {
                Arc::new(NamedRule {
                    rule: RuleRef {
                        namespace: "default".into(),
                        policy: "allow-web".into(),
                        direction: Direction::Egress,
                        index: 0,
                    },
                    tier: PolicyTier::NetworkPolicy,
                    action: RuleAction::Allow,
                    version: "812".into(),
                })
            }),
            isolating: None,
            audit: false,
            interface: Some(Arc::new(EndpointInterface {
                name: "eni0a1b2c3d4e5".into(),
                eni: Eni::Node,
            })),
        }),
    }
}

/// A `collector-restart` loss record over `[from_s, to_s]`.
pub fn loss(from_s: u64, to_s: u64) -> FlowRecord {
    FlowRecord::loss(LossSpan {
        source: LossSource::CollectorRestart,
        events: None,
        from_s,
        to_s,
    })
}

/// How to write a file.
#[derive(Clone, Copy)]
pub struct Layout {
    /// The compression of every column.
    pub compression: Compression,
    /// Keep only the first this many columns (a file of an older record layout).
    pub columns: Option<usize>,
    /// Rows per row group.
    pub rows_per_group: usize,
}

impl Default for Layout {
    fn default() -> Self {
        Self {
            compression: Compression::ZSTD(Default::default()),
            columns: None,
            rows_per_group: 1024,
        }
    }
}

/// `records` of cluster `lab`, node `node-a`, as one Parquet file at `key` under `dir`.
pub fn write(dir: &Path, key: &str, records: &[FlowRecord], layout: Layout) -> PathBuf {
    let mut batch = encode(records, "node-a", "lab", &schema()).unwrap();
    if let Some(n) = layout.columns {
        batch = batch.project(&(0..n).collect::<Vec<_>>()).unwrap();
    }
    let properties = WriterProperties::builder()
        .set_compression(layout.compression)
        .set_max_row_group_row_count(Some(layout.rows_per_group))
        .build();
    let mut bytes = Vec::new();
    let mut writer = ArrowWriter::try_new(&mut bytes, batch.schema(), Some(properties)).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
    let path = dir.join(key);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, bytes).unwrap();
    path
}

/// The partition key prefix `cluster=lab/dt=…/hour=…` of the hour holding `unix_s`.
pub fn partition(unix_s: u64) -> String {
    let (dt, hour) = tollgate_collector::clock::partition_date(unix_s);
    format!("cluster=lab/dt={dt}/hour={hour}")
}
