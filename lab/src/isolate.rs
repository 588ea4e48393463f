//! The lab's incident steps (`tollgate lab --quarantine`): the lab's objects as the
//! [`Cluster`] that `tollgate quarantine` acts on, and the evidence bundle at the end.
//!
//! [`LabCluster`] holds a step's snapshot (the lab's pods and the policies applied) and
//! answers the quarantine's calls the way the API server would: everything is allowed, the
//! caller is `lab:<user>`, a policy gets a UID and a resourceVersion when created, a label
//! write is refused if the pod changed since it was read. After
//! [`tollgate_incident::quarantine::quarantine`] ran against it, [`LabCluster::snapshot`] is
//! what the node agent is given next, as the API server's watches would have told it.
//!
//! [`Quarantined::act`] is step 5's quarantine (the record goes into the run's flow
//! directory, as the CLI's goes into the flow log); [`Quarantined::evidence`] writes the
//! client's bundle for the whole run into `<flow directory>/evidence` once the agent stopped,
//! verifies it and checks that it tells the story: allowed before, denied after, and the
//! isolation record between.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use k8s_openapi::api::{core::v1::Pod, networking::v1::NetworkPolicy};
use tollgate_collector::clock::{NS_PER_S, unix_now_ns};
use tollgate_enforcer::crd::ClusterNetworkPolicy;
use tollgate_enforcer::snapshot::Snapshot;
use tollgate_incident::{
    PodRef,
    cluster::{Access, Cluster, ClusterError},
    digest_verify,
    evidence::{self, Counts, PolicySnapshot, Request},
    location::{FlowLogLocation, S3Options},
    provenance,
    quarantine::{LABEL, Outcome, quarantine},
    record,
    source::Reader,
};

use crate::{
    LabError,
    flowlog::{CLUSTER, FlowLogSummary, signing_key},
    scenario::{CLIENT_POD, QUARANTINE_REASON},
};

/// The lab's objects, changed as the API server would change them.
pub struct LabCluster {
    state: Mutex<State>,
    actor: String,
}

struct State {
    snapshot: Snapshot,
    /// The last resourceVersion handed out.
    version: u64,
}

impl LabCluster {
    /// The cluster holding `snapshot`; the caller is `lab:<user>` (the user who ran the lab,
    /// through sudo too).
    pub fn new(snapshot: Snapshot) -> Self {
        let user = std::env::var("SUDO_USER")
            .or_else(|_| std::env::var("USER"))
            .unwrap_or_else(|_| format!("uid-{}", rustix::process::getuid().as_raw()));
        Self {
            state: Mutex::new(State {
                snapshot,
                version: 0,
            }),
            actor: format!("lab:{user}"),
        }
    }

    /// The objects as they are now.
    pub fn snapshot(&self) -> Snapshot {
        self.lock().snapshot.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn named(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    ns: &str,
    name: &str,
) -> bool {
    meta.namespace.as_deref() == Some(ns) && meta.name.as_deref() == Some(name)
}

impl Cluster for LabCluster {
    async fn whoami(&self) -> Result<String, ClusterError> {
        Ok(self.actor.clone())
    }

    async fn allowed(&self, _access: &Access) -> Result<bool, ClusterError> {
        Ok(true)
    }

    async fn pod(&self, namespace: &str, name: &str) -> Result<Option<Pod>, ClusterError> {
        Ok(self
            .lock()
            .snapshot
            .pods
            .iter()
            .find(|p| named(&p.metadata, namespace, name))
            .cloned())
    }

    async fn policies(&self, namespace: &str) -> Result<Vec<NetworkPolicy>, ClusterError> {
        Ok(self
            .lock()
            .snapshot
            .policies
            .iter()
            .filter(|p| p.metadata.namespace.as_deref() == Some(namespace))
            .cloned()
            .collect())
    }

    async fn cluster_policies(&self) -> Result<Vec<ClusterNetworkPolicy>, ClusterError> {
        Ok(self.lock().snapshot.cluster_policies.clone())
    }

    async fn create_cluster_policy(
        &self,
        policy: &ClusterNetworkPolicy,
    ) -> Result<ClusterNetworkPolicy, ClusterError> {
        let mut state = self.lock();
        let name = policy.metadata.name.clone().unwrap_or_default();
        let exists = |p: &ClusterNetworkPolicy| p.metadata.name.as_deref() == Some(&name);
        if state.snapshot.cluster_policies.iter().any(exists) {
            return Err(ClusterError::Conflict(format!(
                "ClusterNetworkPolicy {name} already exists"
            )));
        }
        state.version += 1;
        let mut stored = policy.clone();
        stored.metadata.uid = Some(format!("lab-{:012}", state.version));
        stored.metadata.resource_version = Some(state.version.to_string());
        state.snapshot.cluster_policies.push(stored.clone());
        Ok(stored)
    }

    async fn delete_cluster_policy(&self, name: &str) -> Result<(), ClusterError> {
        let mut state = self.lock();
        let before = state.snapshot.cluster_policies.len();
        state
            .snapshot
            .cluster_policies
            .retain(|p| p.metadata.name.as_deref() != Some(name));
        if state.snapshot.cluster_policies.len() == before {
            return Err(ClusterError::NotFound(format!(
                "ClusterNetworkPolicy {name}"
            )));
        }
        Ok(())
    }

    async fn set_pod_label(
        &self,
        namespace: &str,
        name: &str,
        key: &str,
        value: Option<&str>,
        resource_version: &str,
    ) -> Result<Pod, ClusterError> {
        let mut state = self.lock();
        state.version += 1;
        let version = state.version.to_string();
        let pod = state
            .snapshot
            .pods
            .iter_mut()
            .find(|p| named(&p.metadata, namespace, name))
            .ok_or_else(|| ClusterError::NotFound(format!("pod {namespace}/{name}")))?;
        if pod.metadata.resource_version.as_deref().unwrap_or_default() != resource_version {
            return Err(ClusterError::Conflict(format!(
                "pod {namespace}/{name} changed since it was read"
            )));
        }
        let labels = pod.metadata.labels.get_or_insert_with(Default::default);
        match value {
            Some(value) => labels.insert(key.to_owned(), value.to_owned()),
            None => labels.remove(key),
        };
        pod.metadata.resource_version = Some(version);
        Ok(pod.clone())
    }
}

/// The client quarantined in the lab: the cluster after the act, and what the act recorded.
pub struct Quarantined {
    /// The lab's objects with the label and the policy.
    pub snapshot: Snapshot,
    outcome: Outcome,
    /// Where the isolation record went.
    record: String,
}

/// What the incident steps did and found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncidentReport {
    /// The isolation: who, why, which policy, when, and where its record went.
    pub actor: String,
    /// `--reason`.
    pub reason: String,
    /// The quarantine policy, `KIND/name`.
    pub policy: String,
    /// When (Unix seconds).
    pub at_s: u64,
    /// The isolation record's file in the flow log.
    pub record: String,
    /// The evidence bundle's directory.
    pub bundle: PathBuf,
    /// SHA-256 of its manifest.
    pub manifest_sha256: String,
    /// Its row counts.
    pub counts: Counts,
    /// Its timeline.
    pub timeline: String,
    /// What the bundle must show.
    pub checks: Vec<IncidentCheck>,
}

/// One thing the bundle must show.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct IncidentCheck {
    /// What.
    pub what: String,
    /// What was found.
    pub found: String,
    /// Whether it was.
    pub ok: bool,
}

impl Quarantined {
    /// Quarantines the client in `snapshot`'s cluster, as `tollgate quarantine` does, and
    /// writes the isolation record into the flow directory `flow_dir`.
    pub async fn act(snapshot: Snapshot, flow_dir: &Path) -> Result<Self, LabError> {
        let cluster = LabCluster::new(snapshot);
        let pod: PodRef = CLIENT_POD.parse().map_err(LabError::Scenario)?;
        let now = || unix_now_ns() / NS_PER_S;
        let outcome = quarantine(&cluster, &pod, QUARANTINE_REASON, now)
            .await
            .map_err(|e| LabError::Incident(e.to_string()))?;
        let record = record::deliver(
            CLUSTER,
            &outcome,
            &FlowLogLocation::Local(flow_dir.to_owned()),
            &S3Options::default(),
            &flow_dir.join(".isolation"),
        )
        .await
        .map_err(|e| LabError::Incident(e.to_string()))?;
        tracing::info!(pod = %pod, policy = %outcome.isolation.policy_name, record, "quarantined");
        Ok(Self {
            snapshot: cluster.snapshot(),
            outcome,
            record,
        })
    }

    /// The act, for the step's list of what was applied.
    pub fn describe(&self) -> String {
        let isolation = &self.outcome.isolation;
        format!(
            "tollgate quarantine {CLIENT_POD} (label {LABEL}={}, {})",
            isolation.pod.name,
            isolation.policy_label()
        )
    }

    /// Checks the flow directory against its signed digests (`digest verify`, with the lab's
    /// key, whose public key it writes as `<flow directory>/digest-public-key.pem`), writes the
    /// client's evidence bundle for the whole run (from `started_s`) into
    /// `<flow directory>/evidence`, verifies it — its sources against their digests too — and
    /// checks that it shows the client's allowed flows before the quarantine, its denied
    /// attempts after, and the isolation record.
    pub async fn evidence(
        self,
        flow_log: &FlowLogSummary,
        started_s: u64,
    ) -> Result<IncidentReport, LabError> {
        let failed = |e: &dyn std::fmt::Display| LabError::Incident(e.to_string());
        let out = flow_log.dir.join("evidence");
        // The bundle of an earlier run into the same directory is replaced.
        if out.exists() {
            std::fs::remove_dir_all(&out).map_err(|e| failed(&e))?;
        }
        let now_s = unix_now_ns() / NS_PER_S;
        let request = Request {
            pod: CLIENT_POD.parse().map_err(LabError::Scenario)?,
            cluster: Some(CLUSTER.to_owned()),
            from_s: started_s,
            to_s: now_s + 1,
            location: FlowLogLocation::Local(flow_log.dir.clone()),
            s3: S3Options::default(),
            out: out.clone(),
            athena: None,
        };
        let lab_policies = PolicySnapshot {
            source: "lab".to_owned(),
            at: now_s,
            policies: self
                .snapshot
                .policies
                .iter()
                .filter_map(|p| serde_json::to_value(p).ok())
                .chain(
                    self.snapshot
                        .cluster_policies
                        .iter()
                        .filter_map(|p| serde_json::to_value(p).ok()),
                )
                .collect(),
        };
        let bundle = evidence::collect(&request, vec![lab_policies], now_s)
            .await
            .map_err(|e| failed(&e))?;
        let verified = evidence::verify(&bundle.dir, Some(&bundle.manifest_sha256));
        let (digests, proven) = match lab_public_key(&flow_log.dir) {
            Ok(public_key) => {
                let reader = Reader::new(&request.location, &request.s3).await;
                // The flow directory holds the OCSF objects too (`--ocsf`): one reader.
                let checked = digest_verify::verify(
                    &reader,
                    None,
                    &digest_verify::Request {
                        trusted: vec![public_key.clone()],
                        ..digest_verify::Request::default()
                    },
                )
                .await;
                let digests = match checked {
                    Ok(report) if report.problems.is_empty() => Ok(format!(
                        "{} digests, {} objects, the chain unbroken",
                        report.digests, report.objects
                    )),
                    Ok(report) => Err(report.problems.join("; ")),
                    Err(error) => Err(error.to_string()),
                };
                let proven = match provenance::check(&bundle.dir, &[public_key]) {
                    Ok(p) if p.proven > 0 => Ok(format!(
                        "{} of {} sources, each with its SHA-256",
                        p.proven,
                        p.proven + p.uncovered
                    )),
                    Ok(_) => Err("no source is in a signed digest".to_owned()),
                    Err(problems) => Err(problems.join("; ")),
                };
                (digests, proven)
            }
            Err(why) => (Err(why.clone()), Err(why)),
        };
        let story = bundle.story;
        let quarantines = story.quarantines;
        // The split around the record this run wrote (the only quarantine in the window).
        let (allowed_before, denied_after) = story
            .first_quarantine
            .filter(|split| split.at_s == self.outcome.at_s)
            .map_or((0, 0), |split| (split.allowed_before, split.denied_after));
        let check = |what: &str, found: String, ok: bool| IncidentCheck {
            what: what.to_owned(),
            found,
            ok,
        };
        let checks = vec![
            check(
                "the isolation record, in the flow log",
                format!("{quarantines} quarantine records"),
                quarantines == 1,
            ),
            check(
                "the client's allowed flows before the quarantine",
                format!("{allowed_before} records"),
                allowed_before > 0,
            ),
            check(
                "its denied attempts after",
                format!("{denied_after} records"),
                denied_after > 0,
            ),
            check(
                "evidence verify",
                match &verified {
                    Ok(_) => "intact".to_owned(),
                    Err(tampered) => tampered.problems.join("; "),
                },
                verified.is_ok(),
            ),
            check(
                "digest verify: the flow log against its signed digests",
                digests.clone().unwrap_or_else(|problems| problems),
                digests.is_ok(),
            ),
            check(
                "the bundle's sources, in signed digests",
                proven.clone().unwrap_or_else(|problems| problems),
                proven.is_ok(),
            ),
        ];
        let isolation = self.outcome.isolation;
        Ok(IncidentReport {
            policy: isolation.policy_label(),
            actor: isolation.actor,
            reason: isolation.reason,
            at_s: self.outcome.at_s,
            record: self.record,
            bundle: bundle.dir,
            manifest_sha256: bundle.manifest_sha256,
            counts: bundle.manifest.counts,
            timeline: bundle.timeline,
            checks,
        })
    }
}

/// The public key (DER) of the lab's digest signing key for the flow directory `dir`,
/// written there as `digest-public-key.pem`; why not, when there is no key.
fn lab_public_key(dir: &Path) -> Result<Vec<u8>, String> {
    use tollgate_collector::sign::{Signer, public_key_pem};
    let key_file = signing_key(dir);
    if !key_file.is_file() {
        return Err(format!("no signing key at {}", key_file.display()));
    }
    let public_key = Signer::local(&key_file)
        .map_err(|e| e.to_string())?
        .public_key();
    let pem = dir.join("digest-public-key.pem");
    std::fs::write(&pem, public_key_pem(&public_key))
        .map_err(|e| format!("{}: {e}", pem.display()))?;
    Ok(public_key)
}
