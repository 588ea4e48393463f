//! `tollgate quarantine` against a Kubernetes API server (the mock service of
//! `tollgate_test_support::apiserver`, behind a real `kube::Client`): the right objects are created,
//! every refusal and failure leaves the cluster as it was, release undoes it, and the
//! isolation record lands in the flow log.

mod support;

use serde_json::json;
use support::temp_dir;
use tollgate_collector::readback::{Filter, read_dir};
use tollgate_incident::{
    PodRef,
    cluster::KubeCluster,
    location::{FlowLogLocation, S3Options},
    quarantine::{QuarantineError, quarantine, release},
    record,
};
use tollgate_test_support::apiserver::ApiServer;

const AT: u64 = 1_795_602_600; // 2026-11-25T10:30:00Z

const POD: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: web-7c5ddbdf54-x2x7q
  namespace: shop
  labels: {app: web, pod-template-hash: 7c5ddbdf54}
  ownerReferences:
  - {apiVersion: apps/v1, kind: ReplicaSet, name: web-7c5ddbdf54, uid: rs-1, controller: true}
spec:
  nodeName: ip-10-0-1-23.eu-west-1.compute.internal
  containers: [{name: web, image: nginx}]
status:
  podIP: 10.0.1.57
  podIPs: [{ip: 10.0.1.57}]
"#;

const ALLOW_WEB: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-web, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress: [{}]
"#;

fn pod() -> PodRef {
    "shop/web-7c5ddbdf54-x2x7q".parse().unwrap()
}

fn cluster_with_pod() -> (KubeCluster, ApiServer) {
    let (client, server) = ApiServer::start();
    server.sign_in("alice@example.com");
    server.add_pod(POD);
    server.add_policy(ALLOW_WEB);
    (KubeCluster::new(client), server)
}

#[tokio::test]
async fn quarantine_creates_the_policy_then_labels_the_pod() {
    let (cluster, server) = cluster_with_pod();
    let outcome = quarantine(&cluster, &pod(), "C2 beacon seen by GuardDuty", || AT)
        .await
        .expect("quarantined");

    let policy = server
        .cluster_policies()
        .into_iter()
        .find(|p| p["metadata"]["name"] == "tollgate-quarantine-shop-web-7c5ddbdf54-x2x7q")
        .expect("the quarantine policy");
    assert_eq!(policy["kind"], "ClusterNetworkPolicy");
    assert_eq!(
        policy["spec"],
        json!({
            "tier": "Admin",
            "priority": 0,
            "subject": {"pods": {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "shop"}},
                "podSelector": {"matchLabels": {"tollgate.io/quarantine": "web-7c5ddbdf54-x2x7q"}},
            }},
            "ingress": [{"name": "quarantine", "action": "Deny", "from": [{"namespaces": {}}]}],
            "egress": [{"name": "quarantine", "action": "Deny",
                        "to": [{"networks": ["0.0.0.0/0", "::/0"]}]}],
        })
    );
    assert_eq!(
        policy["metadata"]["labels"],
        json!({"app.kubernetes.io/managed-by": "tollgate",
               "tollgate.io/quarantine": "web-7c5ddbdf54-x2x7q"})
    );
    assert_eq!(server.policies().len(), 1, "no NetworkPolicy written");
    assert_eq!(
        policy["metadata"]["annotations"],
        json!({
            "tollgate.io/quarantined-by": "alice@example.com",
            "tollgate.io/quarantined-at": "2026-11-25T10:30:00Z",
            "tollgate.io/reason": "C2 beacon seen by GuardDuty",
            "tollgate.io/pod-uid": "uid-web-7c5ddbdf54-x2x7q",
        })
    );
    assert_eq!(
        server.pod("shop", "web-7c5ddbdf54-x2x7q")["metadata"]["labels"],
        json!({"app": "web", "pod-template-hash": "7c5ddbdf54",
               "tollgate.io/quarantine": "web-7c5ddbdf54-x2x7q"})
    );
    // The policy exists before the label: no moment with a labelled pod and no policy.
    assert_eq!(
        server.writes(),
        [
            "POST /apis/policy.networking.k8s.io/v1alpha2/clusternetworkpolicies",
            "PATCH /api/v1/namespaces/shop/pods/web-7c5ddbdf54-x2x7q",
        ]
    );

    let isolation = &outcome.isolation;
    assert_eq!(isolation.actor, "alice@example.com");
    assert_eq!(isolation.pod.workload, "Deployment/web");
    assert_eq!(isolation.address, Some("10.0.1.57".parse().unwrap()));
    assert_eq!(
        isolation.policy_name,
        "tollgate-quarantine-shop-web-7c5ddbdf54-x2x7q"
    );
    assert_eq!(isolation.policy_namespace, None);
    assert_eq!(isolation.policy_kind, "ClusterNetworkPolicy");
    assert_eq!(outcome.node, "ip-10-0-1-23.eu-west-1.compute.internal");
    let detail: serde_json::Value = serde_json::from_str(&isolation.detail).unwrap();
    assert_eq!(
        detail["policy"]["uid"],
        "uid-cnp-tollgate-quarantine-shop-web-7c5ddbdf54-x2x7q"
    );
    assert_eq!(detail["policy"]["kind"], "ClusterNetworkPolicy");
    assert_eq!(detail["pod"]["ip"], "10.0.1.57");
    let in_force: Vec<&str> = detail["policies_in_force"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        in_force,
        ["allow-web", "tollgate-quarantine-shop-web-7c5ddbdf54-x2x7q"]
    );

    // The record, in the flow log as every reader sees it.
    let flows = temp_dir("flows");
    let staging = temp_dir("staging");
    let location = FlowLogLocation::Local(flows.path().to_owned());
    let delivered = record::deliver(
        "prod-eu-1",
        &outcome,
        &location,
        &S3Options::default(),
        staging.path(),
    )
    .await
    .expect("record delivered");
    assert!(
        delivered.ends_with(
            "cluster=prod-eu-1/dt=2026-11-25/hour=10/\
         isolation-shop-web-7c5ddbdf54-x2x7q-quarantine-20261125T103000Z.parquet"
        ),
        "{delivered}"
    );
    let records = read_dir(flows.path(), &Filter::default()).unwrap();
    assert_eq!(records.len(), 1);
    let r = &records[0];
    assert_eq!(
        (r.log_status.as_str(), r.start, r.end),
        ("ISOLATION", AT as i64, AT as i64)
    );
    assert_eq!(r.isolation_action.as_deref(), Some("quarantine"));
    assert_eq!(r.isolation_actor.as_deref(), Some("alice@example.com"));
    assert_eq!(
        r.isolation_reason.as_deref(),
        Some("C2 beacon seen by GuardDuty")
    );
    assert_eq!(r.src_pod.as_deref(), Some("shop/web-7c5ddbdf54-x2x7q"));
    assert_eq!(r.srcaddr.as_deref(), Some("10.0.1.57"));
    assert_eq!(
        r.policy.as_deref(),
        Some("ClusterNetworkPolicy/tollgate-quarantine-shop-web-7c5ddbdf54-x2x7q")
    );
    assert_eq!(r.node, "ip-10-0-1-23.eu-west-1.compute.internal");
    assert_eq!(r.cluster, "prod-eu-1");
    assert_eq!(
        std::fs::read_dir(staging.path()).unwrap().count(),
        0,
        "staged copy removed"
    );
}

#[tokio::test]
async fn release_removes_the_label_then_the_policy() {
    let (cluster, server) = cluster_with_pod();
    quarantine(&cluster, &pod(), "suspected", || AT)
        .await
        .unwrap();
    let outcome = release(&cluster, &pod(), "forensics done, image rebuilt", || {
        AT + 600
    })
    .await
    .expect("released");
    assert_eq!(
        server.pod("shop", "web-7c5ddbdf54-x2x7q")["metadata"]["labels"],
        json!({"app": "web", "pod-template-hash": "7c5ddbdf54"})
    );
    assert!(server.cluster_policies().is_empty());
    assert_eq!(outcome.isolation.action.name(), "release");
    assert_eq!(outcome.isolation.reason, "forensics done, image rebuilt");
    let writes = server.writes();
    assert_eq!(
        &writes[2..],
        [
            "PATCH /api/v1/namespaces/shop/pods/web-7c5ddbdf54-x2x7q",
            "DELETE /apis/policy.networking.k8s.io/v1alpha2/clusternetworkpolicies/\
             tollgate-quarantine-shop-web-7c5ddbdf54-x2x7q",
        ]
    );
}

/// Each refusal: the error, and no write at all.
#[tokio::test]
async fn refusals_change_nothing() {
    // Already quarantined.
    let (cluster, server) = cluster_with_pod();
    quarantine(&cluster, &pod(), "first", || AT).await.unwrap();
    let before = server.writes().len();
    let error = quarantine(&cluster, &pod(), "second", || AT)
        .await
        .unwrap_err();
    assert!(
        matches!(error, QuarantineError::AlreadyQuarantined { .. }),
        "{error}"
    );
    assert!(error.to_string().contains("already quarantined"), "{error}");
    assert_eq!(server.writes().len(), before);

    // No such pod.
    let (cluster, server) = cluster_with_pod();
    let missing: PodRef = "shop/gone".parse().unwrap();
    let error = quarantine(&cluster, &missing, "x", || AT)
        .await
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "pod shop/gone not found; nothing was changed"
    );
    assert!(server.writes().is_empty());

    // Missing RBAC rights: every missing one named, checked before anything is written.
    let (cluster, server) = cluster_with_pod();
    server.refuse("create", "clusternetworkpolicies");
    server.refuse("patch", "pods");
    let error = quarantine(&cluster, &pod(), "x", || AT).await.unwrap_err();
    assert_eq!(
        error.to_string(),
        "missing RBAC rights, nothing was changed: patch pods in namespace shop; create \
         clusternetworkpolicies.policy.networking.k8s.io cluster-wide"
    );
    assert!(server.writes().is_empty());

    // A policy of the quarantine's name without the label (an interrupted run).
    let (cluster, server) = cluster_with_pod();
    server.add_cluster_policy(
        "apiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\n\
         metadata: {name: tollgate-quarantine-shop-web-7c5ddbdf54-x2x7q}\nspec: {tier: Admin}",
    );
    let error = quarantine(&cluster, &pod(), "x", || AT).await.unwrap_err();
    assert!(
        matches!(error, QuarantineError::StalePolicy { .. }),
        "{error}"
    );
    assert!(server.writes().is_empty());

    // A cluster without the ClusterNetworkPolicy CRD: what to install is named.
    let (cluster, server) = cluster_with_pod();
    server.without_cluster_policies();
    let error = quarantine(&cluster, &pod(), "x", || AT).await.unwrap_err();
    assert!(
        matches!(error, QuarantineError::NoClusterPolicies),
        "{error}"
    );
    assert!(
        error.to_string().contains("install its CRD (deploy/crds/"),
        "{error}"
    );
    assert!(server.writes().is_empty());

    // An empty reason.
    let (cluster, server) = cluster_with_pod();
    let error = quarantine(&cluster, &pod(), "  ", || AT).await.unwrap_err();
    assert!(error.to_string().starts_with("--reason"), "{error}");
    assert!(server.log().is_empty());

    // Release of a pod that is not quarantined.
    let (cluster, server) = cluster_with_pod();
    let error = release(&cluster, &pod(), "x", || AT).await.unwrap_err();
    assert!(
        matches!(error, QuarantineError::NotQuarantined(_)),
        "{error}"
    );
    assert!(server.writes().is_empty());
}

/// The label write fails after the policy was created: the policy is deleted again.
#[tokio::test]
async fn a_failed_label_write_is_rolled_back() {
    let (cluster, server) = cluster_with_pod();
    server.fail_next_patch("admission webhook \"policy.example.com\" denied the request");
    let error = quarantine(&cluster, &pod(), "x", || AT).await.unwrap_err();
    assert!(
        matches!(error, QuarantineError::RolledBack { .. }),
        "{error}"
    );
    assert!(error.to_string().contains("admission webhook"), "{error}");
    assert!(
        error
            .to_string()
            .contains("undone: ClusterNetworkPolicy tollgate-quarantine-shop-"),
        "{error}"
    );
    assert!(server.cluster_policies().is_empty(), "nothing left behind");
    assert_eq!(
        server.pod("shop", "web-7c5ddbdf54-x2x7q")["metadata"]["labels"],
        json!({"app": "web", "pod-template-hash": "7c5ddbdf54"})
    );
}

/// An API server without SelfSubjectReview (before 1.28) does not stop an isolation: the
/// record says the actor is unknown, and why.
#[tokio::test]
async fn an_unknown_actor_is_recorded_as_such() {
    let (cluster, server) = cluster_with_pod();
    server.forget_user();
    let outcome = quarantine(&cluster, &pod(), "x", || AT).await.unwrap();
    assert!(
        outcome.isolation.actor.starts_with("unknown ("),
        "{}",
        outcome.isolation.actor
    );
    assert_eq!(server.writes().len(), 2);
}

/// `deploy/incident/quarantine-role.yaml` grants exactly what quarantine checks for.
#[test]
fn the_shipped_cluster_role_grants_exactly_the_rights_checked() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/incident/quarantine-role.yaml"
    );
    let role: serde_json::Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut granted: Vec<(String, String, String)> = Vec::new();
    for rule in role["rules"].as_array().unwrap() {
        for group in rule["apiGroups"].as_array().unwrap() {
            for resource in rule["resources"].as_array().unwrap() {
                for verb in rule["verbs"].as_array().unwrap() {
                    granted.push((
                        verb.as_str().unwrap().to_owned(),
                        group.as_str().unwrap().to_owned(),
                        resource.as_str().unwrap().to_owned(),
                    ));
                }
            }
        }
    }
    granted.sort();
    let mut needed: Vec<(String, String, String)> =
        tollgate_incident::quarantine::needed_access("x")
            .into_iter()
            .map(|a| (a.verb.to_owned(), a.group.to_owned(), a.resource.to_owned()))
            .collect();
    needed.sort();
    assert_eq!(granted, needed);
}
