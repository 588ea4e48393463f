//! The collector's settings: one serde schema, read from the agent's configuration file and
//! filled with the embedded defaults for everything left out (what `tollgate lab` runs on).
//!
//! Durations are whole seconds or milliseconds and sizes whole bytes; each field's name says
//! which. Unknown fields are refused, so a typo is an error rather than a silent default.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Which flow records are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RecordMode {
    /// Every flow: allowed, denied and audit-denied (the default).
    #[default]
    All,
    /// Only flows whose packets were dropped (`action = 'REJECT'`). Loss records are always
    /// written.
    Denied,
}

/// Settings of the node collector.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CollectorConfig {
    /// Name of the cluster: the `cluster` column and first partition key.
    pub cluster: String,
    /// Name of the node: the `node` column and the first part of every file name.
    pub node: String,
    /// Aggregation window in seconds: events of one flow and verdict within a window become
    /// one record (VPC Flow Logs' one-minute option by default).
    pub window_secs: u64,
    /// Which records are written.
    pub mode: RecordMode,
    /// How often the ring buffer is drained even without a wakeup, in milliseconds (the probe
    /// wakes the reader only once 64 KiB of events are waiting).
    pub drain_interval_ms: u64,
    /// Most flow records held open across the current windows; events of further flows are
    /// counted as lost (`aggregation-full`) until the window closes. The bound is on memory:
    /// an open record costs ~240 bytes in the table, which grows by doubling, and closing
    /// takes records out a batch at a time; `bench collector` measures the peak of a full table
    /// (~170 MiB of the whole process at the default, 250,000, under the agent's 512 MiB
    /// limit).
    pub max_open_records: usize,
    /// A Parquet file is closed and spooled once it reaches this many bytes…
    pub rotate_bytes: u64,
    /// …or once it has been open this many seconds, whichever comes first.
    pub rotate_age_secs: u64,
    /// Local spool: closed files wait here until the sink has them.
    pub spool_dir: PathBuf,
    /// Most bytes the spool keeps; a file that would exceed it is dropped and counted
    /// (`spool-full`).
    pub spool_max_bytes: u64,
    /// Where files go from the spool.
    pub sink: SinkConfig,
    /// The digest chain: how often, and with which key.
    pub digest: DigestConfig,
    /// Whether the flow log (Parquet files of the record schema, into `sink`) is written;
    /// `false` needs `security_lake`. The digests go to `sink` either way.
    pub flow_log: bool,
    /// Amazon Security Lake: the same records as OCSF Network Activity objects, into a custom
    /// source ([`crate::ocsf`]).
    pub security_lake: Option<SecurityLakeConfig>,
}

/// Largest object Security Lake takes from a custom source.
pub const SECURITY_LAKE_MAX_BYTES: u64 = 256 * 1024 * 1024;

/// Shortest and longest time Security Lake asks a custom source to gather an object over.
pub const SECURITY_LAKE_AGE_SECS: std::ops::RangeInclusive<u64> = 300..=86_400;

/// Settings of the Security Lake output: objects under
/// `ext/<source_name>/region=<region>/accountId=<account_id>/eventDay=YYYYMMDD/`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecurityLakeConfig {
    /// The custom source's name (`aws_securitylake_custom_log_source.source_name`).
    pub source_name: String,
    /// The region of the custom source: the `region=` partition and `cloud.region`.
    pub region: String,
    /// The account of the custom source's provider (`accountId=`, `cloud.account.uid`).
    pub account_id: String,
    /// The Security Lake bucket (S3, prefix empty: the keys start at `ext/`), or a local
    /// directory in its layout.
    pub sink: SinkConfig,
    /// An object is closed once it reaches this many bytes (at most Security Lake's 256 MiB;
    /// the batch that reaches it is written whole, so the default leaves half as headroom)…
    #[serde(default = "security_lake_rotate_bytes")]
    pub rotate_bytes: u64,
    /// …or once open this many seconds (Security Lake asks for 5 minutes to a day).
    #[serde(default = "security_lake_rotate_age")]
    pub rotate_age_secs: u64,
}

fn security_lake_rotate_bytes() -> u64 {
    SECURITY_LAKE_MAX_BYTES / 2
}

fn security_lake_rotate_age() -> u64 {
    *SECURITY_LAKE_AGE_SECS.start()
}

impl SecurityLakeConfig {
    /// The settings of custom source `source_name` for `region` and `account_id`, delivered to
    /// `sink`, rotated as the defaults say.
    pub fn new(source_name: &str, region: &str, account_id: &str, sink: SinkConfig) -> Self {
        Self {
            source_name: source_name.to_owned(),
            region: region.to_owned(),
            account_id: account_id.to_owned(),
            sink,
            rotate_bytes: security_lake_rotate_bytes(),
            rotate_age_secs: security_lake_rotate_age(),
        }
    }

    /// [`SecurityLakeConfig::rotate_age_secs`] as a duration.
    pub fn rotate_age(&self) -> Duration {
        Duration::from_secs(self.rotate_age_secs)
    }

    fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for (field, value) in [
            ("source_name", &self.source_name),
            ("region", &self.region),
            ("account_id", &self.account_id),
        ] {
            if !is_path_segment(value) {
                problems.push(format!(
                    "security_lake.{field}: must be a non-empty name without '/', '=' or whitespace"
                ));
            }
        }
        if !(1..=SECURITY_LAKE_MAX_BYTES).contains(&self.rotate_bytes) {
            problems.push(
                "security_lake.rotate_bytes: from 1 to 268435456 (Security Lake's 256 MiB)"
                    .to_owned(),
            );
        }
        if !SECURITY_LAKE_AGE_SECS.contains(&self.rotate_age_secs) {
            problems.push(
                "security_lake.rotate_age_secs: from 300 to 86400 (Security Lake asks for 5 \
                 minutes to a day)"
                    .to_owned(),
            );
        }
        if let SinkConfig::S3(s3) = &self.sink
            && !s3.prefix.is_empty()
        {
            problems.push(
                "security_lake.sink.prefix: must be empty (the custom source's keys start at ext/)"
                    .to_owned(),
            );
        }
        problems.extend(
            self.sink
                .problems()
                .into_iter()
                .map(|problem| format!("security_lake.{problem}")),
        );
        problems
    }
}

/// The digest chain's settings ([`crate::chain`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DigestConfig {
    /// A digest is sealed at every multiple of this many seconds (UTC), and at shutdown.
    pub interval_secs: u64,
    /// The signing key.
    pub signing: SigningConfig,
}

impl Default for DigestConfig {
    fn default() -> Self {
        Self {
            interval_secs: 3600,
            signing: SigningConfig::default(),
        }
    }
}

/// Which key signs the digests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum SigningConfig {
    /// An Ed25519 key in a PKCS#8 PEM file, created (mode 0600) when missing: the embedded
    /// default.
    LocalKey {
        /// The key file; `<spool_dir>/digest-signing.pem` when absent.
        #[serde(default)]
        key_file: Option<PathBuf>,
    },
    /// An AWS KMS asymmetric key (`ECC_NIST_P256`, usage `SIGN_VERIFY`): the agents' role
    /// needs `kms:Sign` on it, nothing more, when `public_key_pem` is given (else also
    /// `kms:GetPublicKey`).
    Kms {
        /// The key's ARN (or ID, or alias).
        key_id: String,
        /// Its region.
        region: String,
        /// A KMS endpoint instead of the region's (a VPC endpoint).
        #[serde(default)]
        endpoint_url: Option<String>,
        /// The key's public key, PEM (what Terraform's `aws_kms_public_key` gives); read with
        /// `GetPublicKey` when absent.
        #[serde(default)]
        public_key_pem: Option<String>,
    },
}

impl Default for SigningConfig {
    fn default() -> Self {
        Self::LocalKey { key_file: None }
    }
}

impl SigningConfig {
    /// The signer these settings name, for a collector whose spool is `spool_dir`.
    pub async fn signer(
        &self,
        spool_dir: &std::path::Path,
    ) -> Result<crate::sign::Signer, crate::sign::SignError> {
        match self {
            Self::LocalKey { key_file } => crate::sign::Signer::local(
                &key_file
                    .clone()
                    .unwrap_or_else(|| spool_dir.join("digest-signing.pem")),
            ),
            Self::Kms {
                key_id,
                region,
                endpoint_url,
                public_key_pem,
            } => {
                let public_key = public_key_pem
                    .as_deref()
                    .map(crate::sign::parse_public_key_pem)
                    .transpose()
                    .map_err(|message| crate::sign::SignError::Kms {
                        key_id: key_id.clone(),
                        message: format!("digest.signing.public_key_pem: {message}"),
                    })?;
                Ok(crate::sign::Signer::Kms(
                    crate::kms::KmsSigner::new(key_id, region, endpoint_url.as_deref(), public_key)
                        .await?,
                ))
            }
        }
    }

    fn problems(&self) -> Vec<String> {
        match self {
            Self::LocalKey {
                key_file: Some(file),
            } if file.as_os_str().is_empty() => {
                vec!["digest.signing.key_file: must not be empty".to_owned()]
            }
            Self::LocalKey { .. } => Vec::new(),
            Self::Kms { key_id, region, .. } => {
                let mut problems = Vec::new();
                if key_id.is_empty() {
                    problems.push("digest.signing.key_id: must not be empty".to_owned());
                }
                if region.is_empty() {
                    problems.push("digest.signing.region: must not be empty".to_owned());
                }
                problems
            }
        }
    }
}

impl Default for CollectorConfig {
    fn default() -> Self {
        Self {
            cluster: "lab".to_owned(),
            node: hostname(),
            window_secs: 60,
            mode: RecordMode::All,
            drain_interval_ms: 100,
            max_open_records: 250_000,
            rotate_bytes: 128 * 1024 * 1024,
            rotate_age_secs: 300,
            spool_dir: PathBuf::from("/var/lib/tollgate/spool"),
            spool_max_bytes: 1024 * 1024 * 1024,
            sink: SinkConfig::default(),
            digest: DigestConfig::default(),
            flow_log: true,
            security_lake: None,
        }
    }
}

impl CollectorConfig {
    /// [`CollectorConfig::window_secs`] as a duration.
    pub fn window(&self) -> Duration {
        Duration::from_secs(self.window_secs)
    }

    /// [`CollectorConfig::drain_interval_ms`] as a duration.
    pub fn drain_interval(&self) -> Duration {
        Duration::from_millis(self.drain_interval_ms)
    }

    /// [`CollectorConfig::rotate_age_secs`] as a duration.
    pub fn rotate_age(&self) -> Duration {
        Duration::from_secs(self.rotate_age_secs)
    }

    /// Every setting that cannot work, as `field: why`.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let mut check = |ok: bool, field: &str, why: &str| {
            if !ok {
                problems.push(format!("{field}: {why}"));
            }
        };
        check(
            is_path_segment(&self.cluster),
            "cluster",
            "must be a non-empty name without '/', '=' or whitespace",
        );
        check(
            is_path_segment(&self.node),
            "node",
            "must be a non-empty name without '/', '=' or whitespace",
        );
        check(self.window_secs > 0, "window_secs", "must be at least 1");
        check(
            self.drain_interval_ms > 0,
            "drain_interval_ms",
            "must be at least 1",
        );
        check(
            self.max_open_records > 0,
            "max_open_records",
            "must be at least 1",
        );
        check(self.rotate_bytes > 0, "rotate_bytes", "must be at least 1");
        check(
            self.rotate_age_secs > 0,
            "rotate_age_secs",
            "must be at least 1",
        );
        check(
            self.spool_max_bytes > 0,
            "spool_max_bytes",
            "must be at least 1",
        );
        check(
            self.digest.interval_secs > 0,
            "digest.interval_secs",
            "must be at least 1",
        );
        problems.extend(self.sink.problems());
        problems.extend(self.digest.signing.problems());
        match &self.security_lake {
            Some(lake) => problems.extend(lake.problems()),
            None if !self.flow_log => problems.push(
                "flow_log: false needs security_lake (the collector would write nothing)"
                    .to_owned(),
            ),
            None => {}
        }
        problems
    }
}

/// Where spooled files are delivered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum SinkConfig {
    /// A local directory in the same layout as the bucket (the embedded default).
    Local {
        /// The directory; created when missing.
        dir: PathBuf,
    },
    /// An S3 bucket (or an S3-compatible server).
    S3(S3Config),
}

impl Default for SinkConfig {
    fn default() -> Self {
        Self::Local {
            dir: PathBuf::from("/var/lib/tollgate/flows"),
        }
    }
}

impl SinkConfig {
    fn problems(&self) -> Vec<String> {
        match self {
            Self::Local { dir } if dir.as_os_str().is_empty() => {
                vec!["sink.dir: must not be empty".to_owned()]
            }
            Self::Local { .. } => Vec::new(),
            Self::S3(s3) => s3.problems(),
        }
    }
}

/// Server-side encryption of uploaded objects.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum ServerSideEncryption {
    /// No header: the bucket's default encryption applies.
    #[default]
    BucketDefault,
    /// SSE-S3 (`AES256`).
    S3,
    /// SSE-KMS with the given key (ARN, id or alias), or the bucket's KMS key when absent.
    Kms {
        /// KMS key id.
        #[serde(default)]
        key_id: Option<String>,
    },
}

/// Settings of the S3 sink.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    /// AWS region of the bucket.
    pub region: String,
    /// Bucket name.
    pub bucket: String,
    /// Key prefix, without leading or trailing '/': objects go to
    /// `<prefix>/cluster=…/dt=…/hour=…/<file>` (or straight under `cluster=…` when empty).
    #[serde(default)]
    pub prefix: String,
    /// Endpoint URL of an S3-compatible server (`http://127.0.0.1:9000`); AWS when absent.
    #[serde(default)]
    pub endpoint_url: Option<String>,
    /// Path-style addressing (`endpoint/bucket/key`), which most S3-compatible servers need.
    #[serde(default)]
    pub path_style: bool,
    /// Server-side encryption.
    #[serde(default)]
    pub sse: ServerSideEncryption,
    /// Files of at least this many bytes are uploaded in parts (multipart upload).
    #[serde(default = "default_multipart_threshold")]
    pub multipart_threshold_bytes: u64,
    /// Size of each part of a multipart upload (S3's minimum is 5 MiB, except the last part).
    #[serde(default = "default_part_size")]
    pub part_size_bytes: u64,
    /// Attempts per request inside the SDK (its standard retry mode with backoff) before the
    /// shipper's own backoff takes over; the shipper retries without limit.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
}

fn default_multipart_threshold() -> u64 {
    64 * 1024 * 1024
}

fn default_part_size() -> u64 {
    16 * 1024 * 1024
}

fn default_max_attempts() -> u32 {
    3
}

impl S3Config {
    fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.region.is_empty() {
            problems.push("sink.region: must not be empty".to_owned());
        }
        if self.bucket.is_empty() {
            problems.push("sink.bucket: must not be empty".to_owned());
        }
        if self.prefix.starts_with('/') || self.prefix.ends_with('/') {
            problems.push("sink.prefix: must not start or end with '/'".to_owned());
        }
        if self.part_size_bytes < 5 * 1024 * 1024 {
            problems.push("sink.part_size_bytes: S3 needs at least 5 MiB per part".to_owned());
        }
        if self.max_attempts == 0 {
            problems.push("sink.max_attempts: must be at least 1".to_owned());
        }
        problems
    }
}

fn is_path_segment(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == '=' || c.is_whitespace() || c.is_control())
}

/// This machine's host name, or `node` when it has none.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| is_path_segment(h))
        .unwrap_or_else(|| "node".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_defaults_work() {
        assert_eq!(CollectorConfig::default().problems(), Vec::<String>::new());
    }

    #[test]
    fn an_s3_configuration_parses_with_defaults_for_what_it_leaves_out() {
        let yaml = "cluster: prod-eu-1\nnode: ip-10-0-12-34\nsink:\n  kind: s3\n  region: eu-west-1\n  bucket: acme-flow-logs\n  prefix: tollgate\n  sse: {kind: kms, key_id: alias/flow-logs}\n";
        let config: CollectorConfig = serde_yaml_ng::from_str(yaml).unwrap();
        assert_eq!(config.window_secs, 60);
        assert_eq!(config.mode, RecordMode::All);
        let SinkConfig::S3(s3) = &config.sink else {
            panic!("not S3: {:?}", config.sink);
        };
        assert_eq!(
            s3.sse,
            ServerSideEncryption::Kms {
                key_id: Some("alias/flow-logs".into())
            }
        );
        assert_eq!(s3.multipart_threshold_bytes, 64 * 1024 * 1024);
        assert!(config.problems().is_empty());
    }

    #[test]
    fn security_lake_settings_are_checked_against_what_security_lake_asks() {
        let yaml = "flow_log: false\nsecurity_lake:\n  source_name: tollgate\n  region: eu-west-1\n  account_id: '123456789012'\n  sink: {kind: s3, region: eu-west-1, bucket: aws-security-data-lake-eu-west-1-abc}\n";
        let config: CollectorConfig = serde_yaml_ng::from_str(yaml).unwrap();
        let lake = config.security_lake.as_ref().unwrap();
        assert_eq!(lake.rotate_bytes, SECURITY_LAKE_MAX_BYTES / 2);
        assert_eq!(lake.rotate_age_secs, 300);
        assert_eq!(config.problems(), Vec::<String>::new());

        let wrong = CollectorConfig {
            security_lake: Some(SecurityLakeConfig {
                source_name: "a/b".into(),
                rotate_bytes: SECURITY_LAKE_MAX_BYTES + 1,
                rotate_age_secs: 60,
                sink: SinkConfig::S3(S3Config {
                    prefix: "ext".into(),
                    ..serde_yaml_ng::from_str("{region: r, bucket: b}").unwrap()
                }),
                ..lake.clone()
            }),
            ..config.clone()
        };
        let problems = wrong.problems();
        for field in [
            "security_lake.source_name:",
            "security_lake.rotate_bytes:",
            "security_lake.rotate_age_secs:",
            "security_lake.sink.prefix:",
        ] {
            assert!(
                problems.iter().any(|p| p.starts_with(field)),
                "{field} missing from {problems:?}"
            );
        }
        let nothing = CollectorConfig {
            security_lake: None,
            ..config
        };
        assert!(nothing.problems()[0].starts_with("flow_log:"));
    }

    #[test]
    fn a_misspelt_field_is_an_error_naming_it() {
        let error = serde_yaml_ng::from_str::<CollectorConfig>("windw_secs: 30\n").unwrap_err();
        assert!(error.to_string().contains("windw_secs"), "{error}");
    }

    #[test]
    fn settings_that_cannot_work_are_named_with_their_field() {
        let config = CollectorConfig {
            cluster: "a/b".into(),
            window_secs: 0,
            sink: SinkConfig::S3(S3Config {
                region: String::new(),
                bucket: "b".into(),
                prefix: "/x/".into(),
                endpoint_url: None,
                path_style: false,
                sse: ServerSideEncryption::S3,
                multipart_threshold_bytes: 1,
                part_size_bytes: 1024,
                max_attempts: 0,
            }),
            ..CollectorConfig::default()
        };
        let problems = config.problems();
        for field in [
            "cluster:",
            "window_secs:",
            "sink.region:",
            "sink.prefix:",
            "sink.part_size_bytes:",
            "sink.max_attempts:",
        ] {
            assert!(
                problems.iter().any(|p| p.starts_with(field)),
                "{field} missing from {problems:?}"
            );
        }
    }
}
