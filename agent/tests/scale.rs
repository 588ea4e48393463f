//! What a reconciliation costs on a large cluster: 5,000 pods in 50 namespaces on 50 nodes,
//! 500 NetworkPolicies (pod, namespace and ipBlock peers, named and numbered ports), 100 of
//! the pods on this node. The agent hands its compiler only the objects that changed, and
//! the compiler recomputes what they touch; this test prints how long that takes and
//! checks that the writes stay limited to what changed. It asserts no timing (run it with
//! `--nocapture` to see them; `--release` for real numbers).

use std::collections::BTreeMap;

use k8s_openapi::api::{
    core::v1::{Namespace, Pod},
    networking::v1::NetworkPolicy,
};
use serde_json::json;
use tollgate_agent::{run::Agent, source::StaticSource};
use tollgate_enforcer::{snapshot::Snapshot, sync::InMemoryMaps};

const NAMESPACES: usize = 50;
const PODS_PER_NAMESPACE: usize = 100;
const POLICIES_PER_NAMESPACE: usize = 10;
const NODES: usize = 50;
const APPS: usize = 20;

fn pod(namespace: usize, index: usize, app: usize) -> Pod {
    let ip = format!("10.{namespace}.{}.{}", index / 250, index % 250 + 1);
    serde_json::from_value(json!({
        "metadata": {
            "name": format!("pod-{index}"), "namespace": format!("ns-{namespace}"),
            "resourceVersion": "1", "labels": {"app": format!("a{app}")}
        },
        "spec": {
            "nodeName": format!("node-{}", (namespace * 31 + index) % NODES),
            "containers": [{"name": "app", "ports": [{"name": "http", "containerPort": 8080}]}]
        },
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}
    }))
    .unwrap()
}

fn policy(namespace: usize, k: usize) -> NetworkPolicy {
    let app = |a: usize| json!({"matchLabels": {"app": format!("a{}", a % APPS)}});
    let team = format!("t{}", (namespace + 1) % NAMESPACES);
    let dns = json!({"matchLabels": {"kubernetes.io/metadata.name": "ns-0"}});
    serde_json::from_value(json!({
        "metadata": {"name": format!("policy-{k}"), "namespace": format!("ns-{namespace}")},
        "spec": {
            "podSelector": app(k),
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [
                {"from": [{"podSelector": app(k + 1)}], "ports": [{"port": "http"}]},
                {"from": [{"namespaceSelector": {"matchLabels": {"team": team}},
                           "podSelector": app(k)}],
                 "ports": [{"port": 9090, "protocol": "TCP"}]}
            ],
            "egress": [
                {"to": [{"podSelector": app(k + 2)}], "ports": [{"port": 8080}]},
                {"to": [{"ipBlock": {"cidr": "10.0.0.0/8",
                                     "except": [format!("10.{namespace}.0.0/16")]}}],
                 "ports": [{"port": 443}]},
                {"to": [{"namespaceSelector": dns, "podSelector": app(0)}],
                 "ports": [{"port": 53, "protocol": "UDP"}]}
            ]
        }
    }))
    .unwrap()
}

fn cluster() -> Snapshot {
    let namespaces = (0..NAMESPACES)
        .map(|n| {
            serde_json::from_value::<Namespace>(json!({
                "metadata": {"name": format!("ns-{n}"), "labels": {"team": format!("t{n}")}}
            }))
            .unwrap()
        })
        .collect();
    let pods = (0..NAMESPACES)
        .flat_map(|n| (0..PODS_PER_NAMESPACE).map(move |i| pod(n, i, i % APPS)))
        .collect();
    let policies = (0..NAMESPACES)
        .flat_map(|n| (0..POLICIES_PER_NAMESPACE).map(move |k| policy(n, k)))
        .collect();
    Snapshot {
        namespaces,
        pods,
        policies,
        ..Snapshot::default()
    }
}

/// The pods of node-0, each on its own veth.
fn local(snapshot: &Snapshot) -> BTreeMap<String, u32> {
    snapshot
        .pods
        .iter()
        .filter(|p| p.spec.as_ref().unwrap().node_name.as_deref() == Some("node-0"))
        .enumerate()
        .map(|(i, p)| (tollgate_enforcer::snapshot::pod_key(p), 1000 + i as u32))
        .collect()
}

#[tokio::test]
async fn a_large_cluster_compiles_whole_and_syncs_only_what_changed() {
    let snapshot = cluster();
    let interfaces = local(&snapshot);
    assert_eq!(interfaces.len(), PODS_PER_NAMESPACE * NAMESPACES / NODES);

    let (source, handle) = StaticSource::new(snapshot.clone());
    let mut agent = Agent::new(source, interfaces.clone());
    let mut maps = InMemoryMaps::default();
    let mut rows = Vec::new();
    let mut pass = |name: &str, report: tollgate_agent::reconcile::Report| {
        rows.push(format!(
            "{name:<34} {:>9.1} {:>9.1} {:>8} {:>8} {:>8}",
            report.compile_time.as_secs_f64() * 1e3,
            report.sync_time.as_secs_f64() * 1e3,
            report.sync.upserts,
            report.sync.deletes,
            report.touched.len()
        ));
        report
    };

    let first = pass(
        "first sync",
        agent.next(&mut maps).await.unwrap().unwrap().report,
    );
    assert_eq!(first.endpoints, interfaces.len());
    assert_eq!(first.errors, vec![]);
    let entries = maps.state.peers.len() + maps.state.policy.len();

    // A pod of this node changes app: its own entries change, and those of the endpoints
    // here whose policies have its old or new app in its namespace as peers. (Not a pod of
    // ns-0 with app a0: every policy allows DNS to those.)
    let mut changed = snapshot.clone();
    let index = changed
        .pods
        .iter()
        .position(|p| {
            let key = tollgate_enforcer::snapshot::pod_key(p);
            interfaces.contains_key(&key) && !key.starts_with("ns-0/")
        })
        .unwrap();
    let local_pod = tollgate_enforcer::snapshot::pod_key(&changed.pods[index]);
    // A changed object has a new resourceVersion, as the API server gives it: the agent's
    // compiler checks again only the objects whose version moved.
    changed.pods[index].metadata.resource_version = Some("2".to_owned());
    let labels = changed.pods[index].metadata.labels.as_mut().unwrap();
    let app = if labels["app"] == "a3" { "a4" } else { "a3" };
    labels.insert("app".to_owned(), app.to_owned());
    handle.set(changed.clone());
    let relabelled = pass(
        "label change, pod on this node",
        agent.next(&mut maps).await.unwrap().unwrap().report,
    );
    assert!(relabelled.touched.contains(&local_pod));
    assert!(relabelled.touched.len() < interfaces.len() / 2);

    // A pod elsewhere whose labels no policy of this node's endpoints looks at differently.
    let remote = changed
        .pods
        .iter()
        .position(|p| p.spec.as_ref().unwrap().node_name.as_deref() == Some("node-7"))
        .unwrap();
    changed.pods[remote].metadata.resource_version = Some("2".to_owned());
    changed.pods[remote]
        .metadata
        .labels
        .as_mut()
        .unwrap()
        .insert("version".to_owned(), "v2".to_owned());
    handle.set(changed);
    let unrelated = pass(
        "unrelated label, pod elsewhere",
        agent.next(&mut maps).await.unwrap().unwrap().report,
    );
    assert_eq!((unrelated.sync.upserts, unrelated.sync.deletes), (0, 0));

    println!(
        "{} pods, {} namespaces, {} policies; {} endpoints on this node, {} peer and policy entries",
        snapshot.pods.len(),
        snapshot.namespaces.len(),
        snapshot.policies.len(),
        interfaces.len(),
        entries
    );
    println!(
        "{:<34} {:>9} {:>9} {:>8} {:>8} {:>8}",
        "pass", "compile", "sync", "upserts", "deletes", "touched"
    );
    println!("{:<34} {:>9} {:>9}", "", "ms", "ms");
    for row in rows {
        println!("{row}");
    }
}
