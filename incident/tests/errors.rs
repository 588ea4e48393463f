//! Every cause is printed once: an error's message and the chain of its `source()`s, joined as
//! the command line prints them, never say the same cause twice.

mod support;

use std::error::Error;

use support::{
    flowlog::{FROM, TO},
    temp_dir,
};
use tollgate_collector::{
    identity::PodIdentity,
    record::{Isolation, IsolationAction},
};
use tollgate_incident::{
    PodRef,
    cluster::KubeCluster,
    evidence::{self, Request as EvidenceRequest},
    location::{FlowLogLocation, S3Options},
    quarantine::{Outcome, quarantine},
    record,
};
use tollgate_test_support::apiserver::ApiServer;

/// `error` and its causes, outermost first, joined with `: ` (anyhow's `{:#}`).
fn chain(error: &(dyn Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(error) = cause {
        text.push_str(": ");
        text.push_str(&error.to_string());
        cause = error.source();
    }
    text
}

#[tokio::test]
async fn a_missing_flow_log_says_so_once() {
    let out = temp_dir("bundle");
    let missing = out.path().join("no-such-flow-log");
    let request = EvidenceRequest {
        pod: "shop/web".parse::<PodRef>().unwrap(),
        cluster: None,
        from_s: FROM,
        to_s: TO,
        location: FlowLogLocation::Local(missing.clone()),
        s3: S3Options::default(),
        out: out.path().join("b"),
        athena: None,
    };
    let error = evidence::collect(&request, Vec::new(), TO)
        .await
        .unwrap_err();
    let text = chain(&error);
    assert_eq!(
        text.matches("No such file or directory").count(),
        1,
        "{text}"
    );
    assert_eq!(
        text.matches(&*missing.to_string_lossy()).count(),
        1,
        "{text}"
    );
    assert!(text.starts_with("reading the flow log: "), "{text}");
}

#[tokio::test]
async fn an_undeliverable_record_says_so_once() {
    let dir = temp_dir("record");
    // The flow log is a file, not a directory: the sink cannot write under it.
    let flow_log = dir.path().join("flow-log");
    std::fs::write(&flow_log, "").unwrap();
    let outcome = Outcome {
        isolation: Isolation {
            action: IsolationAction::Quarantine,
            actor: "alice".into(),
            reason: "C2 beacon".into(),
            pod: PodIdentity {
                namespace: "shop".into(),
                name: "web".into(),
                workload: "Deployment/web".into(),
                labels: Default::default(),
            },
            address: None,
            policy_namespace: Some("shop".into()),
            policy_name: "tollgate-quarantine-web".into(),
            policy_kind: "NetworkPolicy".into(),
            detail: "{}".into(),
        },
        at_s: TO,
        node: "node-a".into(),
    };
    let error = record::deliver(
        "prod",
        &outcome,
        &FlowLogLocation::Local(flow_log),
        &S3Options::default(),
        &dir.path().join("staging"),
    )
    .await
    .unwrap_err();
    let text = chain(&error);
    assert_eq!(text.matches("Not a directory").count(), 1, "{text}");
    assert_eq!(text.matches("isolation-shop-web-").count(), 1, "{text}");
}

#[tokio::test]
async fn an_unreachable_api_server_is_said_once() {
    // An API server that is gone: every request fails in the client.
    let cluster = KubeCluster::new(ApiServer::unreachable());
    let pod: PodRef = "shop/web".parse().unwrap();
    let error = quarantine(&cluster, &pod, "C2 beacon", || TO)
        .await
        .unwrap_err();
    let text = chain(&error);
    assert_eq!(text.matches("SelfSubjectAccessReview").count(), 1, "{text}");
    assert!(text.ends_with("; nothing was changed"), "{text}");
}
