//! Legal holds on the flow log's objects (S3 Object Lock), placed at quarantine and evidence,
//! lifted only by `tollgate evidence release-hold`.
//!
//! [`Holds::place`] first asks the bucket whether Object Lock is on
//! (`GetObjectLockConfiguration`): a local flow log, or a bucket without it, gets no hold and
//! says so ([`HoldStatus::Unavailable`]). Otherwise each object gets `PutObjectLegalHold ON`
//! (its version when known); each one that fails is named with S3's reason, and the rest still
//! get theirs. What was held — or why not — goes into the isolation record's detail or the
//! bundle's manifest ([`Holds::summary`]). [`select`] picks what a window covers: the flow
//! objects of its partitions and the digests whose span meets it. [`Holds::release`] sets
//! holds `OFF` the same way.

use aws_sdk_s3::types::{ObjectLockEnabled, ObjectLockLegalHold, ObjectLockLegalHoldStatus};
use serde::Serialize;
use tollgate_collector::{
    digest::{DIGEST_ROOT, Signed},
    sink::sdk_in_words,
};

use crate::source::{Reader, SourceError};

/// Seconds of margin around a window when choosing digests (a digest seals objects up to an
/// interval after their records).
const DIGEST_MARGIN_S: u64 = 2 * 3600;

/// Whether holds could be placed at all.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "status", content = "why")]
pub enum HoldStatus {
    /// The bucket has Object Lock: see `held` and `failed`.
    Placed,
    /// No hold is possible (a local flow log, a bucket without Object Lock, or the question
    /// failed), and why.
    Unavailable(String),
}

/// What [`Holds::place`] or [`Holds::release`] did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Holds {
    /// Whether the bucket takes holds.
    #[serde(flatten)]
    pub status: HoldStatus,
    /// Keys (relative to the flow log's root) whose hold is now as asked.
    pub held: Vec<String>,
    /// Keys whose hold could not be set, with S3's reason.
    pub failed: Vec<(String, String)>,
}

/// An object to hold: its key relative to the flow log's root, and its version when known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The key.
    pub key: String,
    /// The version ID.
    pub version_id: Option<String>,
}

impl Holds {
    /// Places a legal hold on each of `targets` in the flow log `reader` reads.
    #[tracing::instrument(skip_all, fields(objects = targets.len()))]
    pub async fn place(reader: &Reader, targets: &[Target]) -> Self {
        set(reader, targets, ObjectLockLegalHoldStatus::On).await
    }

    /// Lifts the legal hold of each of `targets`.
    #[tracing::instrument(skip_all, fields(objects = targets.len()))]
    pub async fn release(reader: &Reader, targets: &[Target]) -> Self {
        set(reader, targets, ObjectLockLegalHoldStatus::Off).await
    }

    /// Whether every hold asked for is in place (or none was possible).
    pub fn complete(&self) -> bool {
        self.failed.is_empty()
    }

    /// The JSON that records it.
    pub fn summary(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }
}

async fn set(reader: &Reader, targets: &[Target], status: ObjectLockLegalHoldStatus) -> Holds {
    let mut holds = Holds {
        status: HoldStatus::Placed,
        held: Vec::new(),
        failed: Vec::new(),
    };
    let Reader::S3 { client, bucket, .. } = reader else {
        holds.status = HoldStatus::Unavailable("a local flow log takes no legal hold".to_owned());
        return holds;
    };
    match client
        .get_object_lock_configuration()
        .bucket(bucket)
        .send()
        .await
    {
        Ok(answer)
            if answer
                .object_lock_configuration()
                .and_then(|c| c.object_lock_enabled())
                == Some(&ObjectLockEnabled::Enabled) => {}
        Ok(_) => {
            holds.status = HoldStatus::Unavailable(format!("bucket {bucket} has no Object Lock"));
            return holds;
        }
        Err(error) => {
            holds.status = HoldStatus::Unavailable(format!(
                "bucket {bucket}: GetObjectLockConfiguration: {}",
                sdk_in_words(&error)
            ));
            return holds;
        }
    }
    for target in targets {
        let hold = ObjectLockLegalHold::builder()
            .status(status.clone())
            .build();
        let answer = client
            .put_object_legal_hold()
            .bucket(bucket)
            .key(reader.name_of(&target.key))
            .set_version_id(target.version_id.clone())
            .legal_hold(hold)
            .send()
            .await;
        match answer {
            Ok(_) => holds.held.push(target.key.clone()),
            Err(error) => holds
                .failed
                .push((target.key.clone(), sdk_in_words(&error))),
        }
    }
    holds
}

/// What a window of `cluster` covers: every flow-log object of its partitions (from an hour
/// before `from_s`) and every digest of the cluster whose span comes within two hours of it.
pub async fn select(
    reader: &Reader,
    cluster: &str,
    from_s: u64,
    to_s: u64,
) -> Result<Vec<Target>, SourceError> {
    let mut targets: Vec<Target> = reader
        .list(Some(cluster), from_s, to_s)
        .await?
        .iter()
        .map(|name| Target {
            key: reader.relative(name),
            version_id: None,
        })
        .collect();
    for name in reader
        .list_all(&format!("{DIGEST_ROOT}/cluster={cluster}/"))
        .await?
    {
        let Ok((_, bytes)) = reader.fetch(&name).await else {
            continue;
        };
        let Ok(signed) = Signed::parse(&bytes) else {
            continue;
        };
        let document = &signed.document;
        if document.to_s + DIGEST_MARGIN_S >= from_s && document.from_s < to_s + DIGEST_MARGIN_S {
            targets.push(Target {
                key: reader.relative(&name),
                version_id: None,
            });
        }
    }
    Ok(targets)
}

/// At a quarantine (`outcome`, of the flow log's `cluster`): holds what the window from
/// `from_s` to the act covers, and records what was held in the isolation record's detail
/// (`legal_holds`), before the record is written.
pub async fn at_quarantine(
    reader: &Reader,
    cluster: &str,
    outcome: &mut crate::quarantine::Outcome,
    from_s: u64,
) -> Holds {
    let holds = match select(reader, cluster, from_s, outcome.at_s + 1).await {
        Ok(targets) => Holds::place(reader, &targets).await,
        Err(error) => Holds {
            status: HoldStatus::Unavailable(format!("listing the flow log: {error}")),
            held: Vec::new(),
            failed: Vec::new(),
        },
    };
    let mut detail: serde_json::Value =
        serde_json::from_str(&outcome.isolation.detail).unwrap_or_default();
    if let Some(fields) = detail.as_object_mut() {
        let mut summary = holds.summary();
        summary["window"] = serde_json::json!({ "from": from_s, "to": outcome.at_s + 1 });
        fields.insert("legal_holds".to_owned(), summary);
    }
    outcome.isolation.detail = detail.to_string();
    holds
}

/// Logs a release of holds in the flow log itself, as
/// `_legal-holds/release-<YYYYMMDDTHHMMSSZ>.json` (who, when, why, the window, what was
/// released and what failed); where it went.
pub async fn log_release(
    location: &crate::location::FlowLogLocation,
    s3: &crate::location::S3Options,
    release: &serde_json::Value,
    at_s: u64,
) -> Result<String, tollgate_collector::sink::SinkError> {
    let key = format!(
        "_legal-holds/release-{}.json",
        tollgate_collector::clock::compact_utc(at_s)
    );
    let staging = std::env::temp_dir().join(format!(
        "tollgate-release-{}-{}.json",
        std::process::id(),
        at_s
    ));
    std::fs::write(&staging, format!("{release}\n")).map_err(|e| {
        tollgate_collector::sink::SinkError::Put {
            location: staging.display().to_string(),
            message: e.to_string(),
            failure: tollgate_collector::sink::Failure::of_io(&e),
        }
    })?;
    let sink = tollgate_collector::sink::Sink::from_config(&location.sink(s3)).await?;
    let delivered = sink.put(&key, &staging).await;
    let _ = std::fs::remove_file(&staging);
    delivered.map(|()| sink.location(&key))
}
