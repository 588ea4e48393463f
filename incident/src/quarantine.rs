//! Quarantine: cut a pod off, ingress and egress, with one label and one Admin-tier
//! ClusterNetworkPolicy that tollgate names and owns; and release it again.
//!
//! [`quarantine`] runs, against any [`Cluster`]:
//! 1. checks, changing nothing: the caller's rights (one SelfSubjectAccessReview per
//!    [`Access`] needed, every missing one named), the cluster serves ClusterNetworkPolicies
//!    (else it names what to install), the pod exists, it is not quarantined already, no stale
//!    quarantine policy is in the way; reads the namespace's NetworkPolicies and the cluster's
//!    ClusterNetworkPolicies;
//! 2. creates the ClusterNetworkPolicy `tollgate-quarantine-<namespace>-<pod>`: Admin tier,
//!    priority 0, its subject the pods of the namespace labelled `tollgate.io/quarantine=<pod>`,
//!    a Deny of ingress from every pod and of egress to every address (`0.0.0.0/0`, `::/0`),
//!    annotated with who, when and why, labelled as managed by tollgate and with the quarantine
//!    label (the admission policy of `deploy/incident/` lets only the quarantine role write
//!    such policies and the label). The Admin tier decides before any NetworkPolicy, under
//!    every implementation of the API; among policies of priority 0, tollgate's compiler
//!    applies the quarantine first. The API's ingress peers are pods: traffic into the pod
//!    from outside the cluster is still decided by its NetworkPolicies;
//! 3. puts the label on the pod, only if the pod is still the version read in 1. From this
//!    write on the pod is isolated: the node agents compile the policy as soon as they see the
//!    label. If the write fails, the policy is deleted again: an error leaves nothing behind.
//!
//! [`release`] removes the label, then deletes the policy. Both return an [`Isolation`] for the
//! flow log ([`crate::record`] writes it), with the pod as it was, the policy as stored and the
//! policies in force right after the act (the namespace's NetworkPolicies, the cluster's
//! ClusterNetworkPolicies).

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{core::v1::Pod, networking::v1::NetworkPolicy},
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use sha2::{Digest, Sha256};
use tollgate_agent::naming::pod_identity;
use tollgate_collector::{
    clock::rfc3339_utc,
    record::{Isolation, IsolationAction},
};
use tollgate_enforcer::compile::NAMESPACE_NAME_LABEL;
use tollgate_enforcer::crd::{CLUSTER_NETWORK_POLICY_GROUP, ClusterNetworkPolicy};
use tollgate_enforcer::desired::PolicyKind;
use tollgate_enforcer::snapshot::pod_addresses;

use crate::{
    PodRef,
    cluster::{Access, Cluster, ClusterError},
};
use tollgate_enforcer::causes::Causes;

/// The label that marks a quarantined pod (its value names the pod, see [`label_value`]), and
/// its quarantine policy.
pub use tollgate_enforcer::compile::QUARANTINE_LABEL as LABEL;
/// Prefix of the quarantine policies' names, and the label on every object tollgate owns.
pub use tollgate_enforcer::compile::{MANAGED_BY, QUARANTINE_POLICY_PREFIX as POLICY_PREFIX};

/// Annotations of the quarantine policy: who, when (RFC 3339, UTC), why, and which pod (UID).
pub const ANNOTATION_ACTOR: &str = "tollgate.io/quarantined-by";
/// See [`ANNOTATION_ACTOR`].
pub const ANNOTATION_AT: &str = "tollgate.io/quarantined-at";
/// See [`ANNOTATION_ACTOR`].
pub const ANNOTATION_REASON: &str = "tollgate.io/reason";
/// See [`ANNOTATION_ACTOR`].
pub const ANNOTATION_POD_UID: &str = "tollgate.io/pod-uid";

/// Longest `--reason` accepted (an annotation and a flow-log column, not a report).
pub const MAX_REASON_CHARS: usize = 1024;

/// Why a quarantine or release was refused or failed. A message holds its cause (a
/// [`ClusterError`], which has none of its own) and `source()` returns none: the cause is
/// printed once, alone or with the chain.
#[derive(Debug, thiserror::Error)]
pub enum QuarantineError {
    /// `--reason` is empty or too long.
    #[error("--reason: {0}")]
    Reason(String),
    /// The caller lacks rights; nothing was changed.
    #[error(
        "missing RBAC rights, nothing was changed: {}",
        missing.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
    )]
    Forbidden {
        /// Every right that is missing.
        missing: Vec<Access>,
    },
    /// The pod does not exist; nothing was changed.
    #[error("pod {0} not found; nothing was changed")]
    NoSuchPod(PodRef),
    /// The pod is quarantined already; nothing was changed.
    #[error("pod {pod} is already quarantined ({detail}); nothing was changed")]
    AlreadyQuarantined {
        /// The pod.
        pod: PodRef,
        /// The label and policy found.
        detail: String,
    },
    /// A policy of the quarantine's name exists but the pod has no label.
    #[error(
        "ClusterNetworkPolicy {name} exists but pod {pod} has no {LABEL} label (left from an \
         interrupted run?): release the pod first; nothing was changed"
    )]
    StalePolicy {
        /// The pod.
        pod: PodRef,
        /// The policy's name.
        name: String,
    },
    /// The cluster serves no ClusterNetworkPolicy: the quarantine has nothing to write.
    #[error(
        "the cluster serves no ClusterNetworkPolicy ({CLUSTER_NETWORK_POLICY_GROUP}/v1alpha2), \
         which a quarantine is: install its CRD (deploy/crds/, or the Helm chart) and \
         tollgate's admission policy (deploy/incident/quarantine-admission.yaml); nothing was \
         changed"
    )]
    NoClusterPolicies,
    /// `--release` of a pod that is not quarantined; nothing was changed.
    #[error(
        "pod {0} is not quarantined (no {LABEL} label, no quarantine policy); nothing was changed"
    )]
    NotQuarantined(PodRef),
    /// A cluster call failed before anything was changed.
    #[error("{0}; nothing was changed")]
    Check(ClusterError),
    /// A change failed and was undone.
    #[error("{failed}; undone: {undone}")]
    RolledBack {
        /// What failed.
        failed: ClusterError,
        /// What was undone.
        undone: String,
    },
    /// A change failed and could not be (fully) undone: the cluster needs a look.
    #[error("{failed}; and undoing it failed too ({undo}): {left}")]
    Partial {
        /// What failed.
        failed: ClusterError,
        /// Why undoing failed.
        undo: ClusterError,
        /// What is left in the cluster.
        left: String,
    },
}

/// What a successful quarantine or release did.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The isolation record's content.
    pub isolation: Isolation,
    /// When it happened (Unix seconds): the label's write.
    pub at_s: u64,
    /// The node the pod runs on (the record's `node`).
    pub node: String,
}

/// The label value that marks `pod`: its name when that is a valid label value (at most 63
/// characters), else its first 54 characters, `-` and 8 hex digits of its SHA-256.
pub fn label_value(pod: &str) -> String {
    shortened(pod, 63)
}

/// The name of the quarantine policy of pod `pod` (at most 253 characters, as any object
/// name; cluster-scoped, so the namespace is part of it).
pub fn policy_name(pod: &PodRef) -> String {
    shortened(
        &format!("{POLICY_PREFIX}{}-{}", pod.namespace, pod.name),
        253,
    )
}

fn shortened(name: &str, limit: usize) -> String {
    if name.len() <= limit {
        return name.to_owned();
    }
    let digest = Sha256::digest(name.as_bytes());
    let hash: String = digest.iter().take(4).map(|b| format!("{b:02x}")).collect();
    // Pod names are ASCII (DNS subdomains): byte slicing stays on a character boundary.
    let head = name[..limit - 9].trim_end_matches(['-', '.']);
    format!("{head}-{hash}")
}

/// The quarantine policy of `pod`: an Admin-tier Deny at priority 0 of all ingress from pods
/// and all egress of the pods of its namespace labelled `tollgate.io/quarantine=<label value>`.
pub fn quarantine_policy(
    pod: &PodRef,
    actor: &str,
    reason: &str,
    at_s: u64,
    uid: &str,
) -> ClusterNetworkPolicy {
    let annotations = BTreeMap::from([
        (ANNOTATION_ACTOR.to_owned(), actor.to_owned()),
        (ANNOTATION_AT.to_owned(), rfc3339_utc(at_s)),
        (ANNOTATION_REASON.to_owned(), reason.to_owned()),
        (ANNOTATION_POD_UID.to_owned(), uid.to_owned()),
    ]);
    let label = label_value(&pod.name);
    ClusterNetworkPolicy {
        metadata: ObjectMeta {
            name: Some(policy_name(pod)),
            labels: Some(BTreeMap::from([
                (MANAGED_BY.0.to_owned(), MANAGED_BY.1.to_owned()),
                (LABEL.to_owned(), label.clone()),
            ])),
            annotations: Some(annotations),
            ..ObjectMeta::default()
        },
        spec: serde_json::json!({
            "tier": "Admin",
            "priority": 0,
            "subject": {"pods": {
                "namespaceSelector": {"matchLabels": {NAMESPACE_NAME_LABEL: pod.namespace}},
                "podSelector": {"matchLabels": {LABEL: label}},
            }},
            "ingress": [{"name": "quarantine", "action": "Deny", "from": [{"namespaces": {}}]}],
            "egress": [{"name": "quarantine", "action": "Deny",
                        "to": [{"networks": ["0.0.0.0/0", "::/0"]}]}],
        }),
    }
}

/// The rights [`quarantine`] needs for a pod of `namespace` (release needs the same: it reads,
/// patches and deletes; create is what undoing a failed release would need, and is asked for
/// both so a caller allowed to quarantine is allowed to release and the other way round). The
/// ClusterNetworkPolicies and the right the admission policy of deploy/incident asks for are
/// cluster-wide.
pub fn needed_access(namespace: &str) -> Vec<Access> {
    let access = |verb, group, resource, namespace: &str| Access {
        verb,
        group,
        resource,
        namespace: namespace.to_owned(),
    };
    let cnp = "clusternetworkpolicies";
    vec![
        access("get", "", "pods", namespace),
        access("patch", "", "pods", namespace),
        access("list", "networking.k8s.io", "networkpolicies", namespace),
        access("list", CLUSTER_NETWORK_POLICY_GROUP, cnp, ""),
        access("create", CLUSTER_NETWORK_POLICY_GROUP, cnp, ""),
        access("delete", CLUSTER_NETWORK_POLICY_GROUP, cnp, ""),
        // Not an API resource: what the admission policy of deploy/incident asks the
        // authorizer before a quarantine label or policy may change.
        access("create", "tollgate.io", "quarantines", ""),
    ]
}

/// What the checks read, before anything is changed.
struct Found {
    /// Who is acting.
    actor: String,
    /// The pod.
    pod: Pod,
    /// Every NetworkPolicy of its namespace.
    policies: Vec<NetworkPolicy>,
    /// Every ClusterNetworkPolicy.
    cluster_policies: Vec<ClusterNetworkPolicy>,
    /// The name of its quarantine policy.
    name: String,
    /// That policy, if it exists.
    existing: Option<ClusterNetworkPolicy>,
}

/// Checks the reason and the caller's rights, reads who is acting, the pod and its
/// namespace's policies; nothing is changed.
async fn precheck(
    cluster: &impl Cluster,
    pod: &PodRef,
    reason: &str,
) -> Result<Found, QuarantineError> {
    check_reason(reason).map_err(QuarantineError::Reason)?;
    let mut missing = Vec::new();
    for access in needed_access(&pod.namespace) {
        if !cluster
            .allowed(&access)
            .await
            .map_err(QuarantineError::Check)?
        {
            missing.push(access);
        }
    }
    if !missing.is_empty() {
        return Err(QuarantineError::Forbidden { missing });
    }
    let actor = match cluster.whoami().await {
        Ok(actor) => actor,
        // Isolating a compromised pod must not wait on an older API server without
        // SelfSubjectReview: the record says the name is unknown, and why.
        Err(error) => {
            tracing::warn!(error = %Causes(&error), "could not learn who is acting; recorded as unknown");
            format!("unknown ({error})")
        }
    };
    let found = cluster
        .pod(&pod.namespace, &pod.name)
        .await
        .map_err(QuarantineError::Check)?
        .ok_or_else(|| QuarantineError::NoSuchPod(pod.clone()))?;
    let policies = cluster
        .policies(&pod.namespace)
        .await
        .map_err(QuarantineError::Check)?;
    let cluster_policies = cluster.cluster_policies().await.map_err(|e| match e {
        ClusterError::NotFound(_) => QuarantineError::NoClusterPolicies,
        other => QuarantineError::Check(other),
    })?;
    let name = policy_name(pod);
    let existing = cluster_policies
        .iter()
        .find(|p| p.metadata.name.as_deref() == Some(&name))
        .cloned();
    Ok(Found {
        actor,
        pod: found,
        policies,
        cluster_policies,
        name,
        existing,
    })
}

/// `--reason` as given, if it is one [`quarantine`] and [`release`] take: for the command
/// line, which checks it before it connects to anything.
pub fn parse_reason(text: &str) -> Result<String, String> {
    check_reason(text).map(|()| text.to_owned())
}

fn check_reason(reason: &str) -> Result<(), String> {
    if reason.trim().is_empty() {
        return Err("must say why (it goes into the flow log)".into());
    }
    let chars = reason.chars().count();
    if chars > MAX_REASON_CHARS {
        return Err(format!("{chars} characters; at most {MAX_REASON_CHARS}"));
    }
    Ok(())
}

/// Quarantines `pod`: see the module doc. `now_s` gives the time (Unix seconds).
pub async fn quarantine(
    cluster: &impl Cluster,
    pod: &PodRef,
    reason: &str,
    now_s: impl Fn() -> u64,
) -> Result<Outcome, QuarantineError> {
    let found = precheck(cluster, pod, reason).await?;
    let name = &found.name;
    if let Some(value) = label_of(&found.pod) {
        let policy = match &found.existing {
            Some(_) => format!(", ClusterNetworkPolicy {name}"),
            None => String::new(),
        };
        return Err(QuarantineError::AlreadyQuarantined {
            pod: pod.clone(),
            detail: format!("label {LABEL}={value}{policy}"),
        });
    }
    if found.existing.is_some() {
        return Err(QuarantineError::StalePolicy {
            pod: pod.clone(),
            name: name.clone(),
        });
    }
    let meta = &found.pod.metadata;
    let uid = meta.uid.clone().unwrap_or_default();
    let version = meta.resource_version.clone().unwrap_or_default();
    let at_s = now_s();
    let desired = quarantine_policy(pod, &found.actor, reason, at_s, &uid);
    let created = cluster
        .create_cluster_policy(&desired)
        .await
        .map_err(QuarantineError::Check)?;
    let label = label_value(&pod.name);
    if let Err(failed) = cluster
        .set_pod_label(&pod.namespace, &pod.name, LABEL, Some(&label), &version)
        .await
    {
        return Err(match cluster.delete_cluster_policy(name).await {
            Ok(()) => QuarantineError::RolledBack {
                failed,
                undone: format!("ClusterNetworkPolicy {name} deleted"),
            },
            Err(undo) => QuarantineError::Partial {
                failed,
                undo,
                left: format!(
                    "ClusterNetworkPolicy {name} (selects no pod: the label was not set)"
                ),
            },
        });
    }
    let mut cluster_policies = found.cluster_policies.clone();
    cluster_policies.push(created.clone());
    let in_force = InForce {
        policies: found.policies.clone(),
        cluster_policies,
    };
    let act = Act {
        action: IsolationAction::Quarantine,
        reason,
        policy: &created,
        label: &label,
        at_s,
    };
    Ok(outcome(&found, &act, in_force))
}

/// Releases `pod` from quarantine: removes the label, then deletes the policy. Either may be
/// missing already (an interrupted quarantine or release); not both.
pub async fn release(
    cluster: &impl Cluster,
    pod: &PodRef,
    reason: &str,
    now_s: impl Fn() -> u64,
) -> Result<Outcome, QuarantineError> {
    let found = precheck(cluster, pod, reason).await?;
    let name = &found.name;
    let label = label_of(&found.pod);
    if label.is_none() && found.existing.is_none() {
        return Err(QuarantineError::NotQuarantined(pod.clone()));
    }
    let at_s = now_s();
    if label.is_some() {
        let version = found
            .pod
            .metadata
            .resource_version
            .clone()
            .unwrap_or_default();
        cluster
            .set_pod_label(&pod.namespace, &pod.name, LABEL, None, &version)
            .await
            .map_err(QuarantineError::Check)?;
    }
    if found.existing.is_some()
        && let Err(failed) = cluster.delete_cluster_policy(name).await
    {
        return Err(QuarantineError::Partial {
            failed,
            undo: ClusterError::Api("a removed label is not put back: the pod is free".into()),
            left: format!(
                "ClusterNetworkPolicy {name} (selects no pod: the label is gone); delete it by hand"
            ),
        });
    }
    // Without the policy (an interrupted quarantine), the record names the one it would be.
    let policy = found
        .existing
        .clone()
        .unwrap_or_else(|| quarantine_policy(pod, &found.actor, reason, at_s, ""));
    let in_force = InForce {
        policies: found.policies.clone(),
        cluster_policies: found
            .cluster_policies
            .iter()
            .filter(|p| p.metadata.name.as_deref() != Some(name))
            .cloned()
            .collect(),
    };
    let label = label.unwrap_or_else(|| label_value(&pod.name));
    let act = Act {
        action: IsolationAction::Release,
        reason,
        policy: &policy,
        label: &label,
        at_s,
    };
    Ok(outcome(&found, &act, in_force))
}

/// The quarantine label's value on `pod`, if it has the label.
fn label_of(pod: &Pod) -> Option<String> {
    pod.metadata.labels.as_ref()?.get(LABEL).cloned()
}

/// One act, for its record.
struct Act<'a> {
    action: IsolationAction,
    reason: &'a str,
    /// The quarantine policy as stored (or as it would be).
    policy: &'a ClusterNetworkPolicy,
    label: &'a str,
    at_s: u64,
}

/// The policies in force after an act: the pod's namespace's NetworkPolicies and the cluster's
/// ClusterNetworkPolicies.
struct InForce {
    policies: Vec<NetworkPolicy>,
    cluster_policies: Vec<ClusterNetworkPolicy>,
}

/// The outcome of `act` on the pod `found`, with the policies `in_force` after it.
fn outcome(found: &Found, act: &Act<'_>, in_force: InForce) -> Outcome {
    let (pod, policy) = (&found.pod, act.policy);
    let address = pod_addresses(pod).into_iter().next();
    let node = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .unwrap_or_default();
    let detail = serde_json::json!({
        "policy": {
            "kind": PolicyKind::ClusterNetworkPolicy.name(),
            "name": policy.metadata.name,
            "uid": policy.metadata.uid,
            "resource_version": policy.metadata.resource_version,
        },
        "label": { "key": LABEL, "value": act.label },
        "pod": {
            "uid": pod.metadata.uid,
            "ip": address.map(|a| a.to_string()),
            "node": node,
        },
        "policies_in_force": in_force
            .policies
            .iter()
            .map(|policy| serde_json::json!(policy))
            .chain(in_force.cluster_policies.iter().map(|policy| serde_json::json!(policy)))
            .collect::<Vec<_>>(),
    });
    Outcome {
        isolation: Isolation {
            action: act.action,
            actor: found.actor.clone(),
            reason: act.reason.to_owned(),
            pod: pod_identity(pod),
            address,
            policy_namespace: None,
            policy_name: policy.metadata.name.clone().unwrap_or_default(),
            policy_kind: PolicyKind::ClusterNetworkPolicy.name().to_owned(),
            detail: detail.to_string(),
        },
        at_s: act.at_s,
        node,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_kubernetes_limits() {
        assert_eq!(label_value("amazonlinux"), "amazonlinux");
        let pod = |name: &str| PodRef {
            namespace: "default".into(),
            name: name.into(),
        };
        assert_eq!(
            policy_name(&pod("amazonlinux")),
            "tollgate-quarantine-default-amazonlinux"
        );
        let long = "a".repeat(70);
        let value = label_value(&long);
        assert_eq!(value.len(), 63);
        assert!(value.starts_with(&"a".repeat(54)));
        assert_ne!(
            label_value(&format!("{long}b")),
            value,
            "distinct pods, distinct labels"
        );
        let dotted = format!("{}.-x{}", "b".repeat(52), "c".repeat(20));
        let value = label_value(&dotted);
        assert!(value.len() <= 63 && !value.contains(".-"), "{value}");
        assert!(policy_name(&pod(&"p".repeat(253))).len() <= 253);
    }

    #[test]
    fn the_policy_denies_everything_for_the_label() {
        let pod = PodRef {
            namespace: "default".into(),
            name: "amazonlinux".into(),
        };
        let policy = quarantine_policy(&pod, "alice", "C2 beacon", 1_764_054_000, "uid-1");
        let yaml = serde_json::to_value(&policy).unwrap();
        assert_eq!(yaml["apiVersion"], "policy.networking.k8s.io/v1alpha2");
        assert_eq!(
            yaml["spec"],
            serde_json::json!({
                "tier": "Admin",
                "priority": 0,
                "subject": {"pods": {
                    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "default"}},
                    "podSelector": {"matchLabels": {LABEL: "amazonlinux"}},
                }},
                "ingress": [{"name": "quarantine", "action": "Deny", "from": [{"namespaces": {}}]}],
                "egress": [{"name": "quarantine", "action": "Deny",
                            "to": [{"networks": ["0.0.0.0/0", "::/0"]}]}],
            })
        );
        assert_eq!(yaml["metadata"]["labels"][LABEL], "amazonlinux");
        assert_eq!(
            yaml["metadata"]["annotations"][ANNOTATION_AT],
            "2025-11-25T07:00:00Z"
        );
        assert_eq!(yaml["metadata"]["labels"][MANAGED_BY.0], MANAGED_BY.1);
    }
}
