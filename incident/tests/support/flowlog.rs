//! Flow logs for the evidence tests: records of a few pods around one window, as the Parquet
//! bytes the collector writes.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use parquet::arrow::ArrowWriter;
use tollgate_collector::{
    identity::{EndpointInterface, Eni, Holder, PodIdentity},
    record::{Flow, FlowRecord, Isolation, IsolationAction, RecordBody, encode, schema},
};
use tollgate_enforcer::desired::{NamedRule, PolicyTier, RuleAction, RuleRef};
use tollgate_schemas::{Direction, Reason, Verdict};

/// 2026-11-25T10:00:00Z.
pub const HOUR: u64 = 1_795_600_800;
/// The window's start.
pub const FROM: u64 = HOUR + 600;
/// The window's end (exclusive).
pub const TO: u64 = HOUR + 1800;

/// Pod `namespace/name` of Deployment `name`, labelled `app: <name>`.
pub fn identity(namespace: &str, name: &str) -> Arc<PodIdentity> {
    Arc::new(PodIdentity {
        namespace: namespace.into(),
        name: name.into(),
        workload: format!("Deployment/{name}"),
        labels: BTreeMap::from([("app".to_owned(), name.to_owned())]).into(),
    })
}

/// A TCP flow `src → dst:443` over `[at, at + 5]`; an allowed one names a rule whose policy
/// name holds a comma and quotes (for the CSV).
pub fn flow(
    at: u64,
    src: &Arc<PodIdentity>,
    dst: &Arc<PodIdentity>,
    verdict: Verdict,
) -> FlowRecord {
    let address = |pod: &PodIdentity| -> IpAddr {
        match pod.name.as_str() {
            "web" => "10.0.1.57",
            "api" => "10.0.2.9",
            _ => "10.0.3.4",
        }
        .parse()
        .unwrap()
    };
    let allowed = verdict == Verdict::Allow;
    FlowRecord {
        start_s: at,
        end_s: at + 5,
        body: RecordBody::Flow(Flow {
            src: address(src),
            dst: address(dst),
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
                        namespace: "shop".into(),
                        policy: "allow-web, \"egress\"".into(),
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

/// `pod` quarantined at `at` by alice, with `allow-web` in force.
pub fn isolation(at: u64, pod: &Arc<PodIdentity>) -> FlowRecord {
    FlowRecord::isolation(
        Isolation {
            action: IsolationAction::Quarantine,
            actor: "alice@example.com".into(),
            reason: "C2 beacon".into(),
            pod: (**pod).clone(),
            address: Some("10.0.1.57".parse().unwrap()),
            policy_namespace: Some(pod.namespace.clone()),
            policy_name: format!("tollgate-quarantine-{}", pod.name),
            policy_kind: "NetworkPolicy".into(),
            detail: serde_json::json!({"policies_in_force": [{"metadata": {"name": "allow-web"}}]})
                .to_string(),
        },
        at,
    )
}

/// `records` of cluster `prod` as the bytes of one Parquet file written by `node`; `columns`
/// keeps only the first columns (a file of an older record layout).
pub fn parquet(node: &str, records: &[FlowRecord], columns: Option<usize>) -> Vec<u8> {
    let schema = schema();
    let mut batch = encode(records, node, "prod", &schema).unwrap();
    if let Some(n) = columns {
        batch = batch.project(&(0..n).collect::<Vec<_>>()).unwrap();
    }
    let mut bytes = Vec::new();
    let mut writer = ArrowWriter::try_new(&mut bytes, batch.schema(), None).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
    bytes
}
