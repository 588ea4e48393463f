//! Digest documents: what a node's collector signs about the flow-log objects it wrote.
//!
//! A digest lists every object a node's collector spooled since its previous digest (key,
//! size, SHA-256 of the bytes as written to the spool, record count, first and last record
//! time, the spool's sequence number, the loss records inside), the sequence numbers it gave up
//! with why, and links to the previous digest by key and SHA-256 of its whole file — or says
//! why a new chain starts. The file is `{"body":<body>,"signature":"<base64>"}`: the signed
//! message is the SHA-256 (32 bytes) of the exact bytes of `body` as they stand in the file (no
//! re-serialisation on either side; 32 bytes fit every signer, KMS's 4 KiB included), and the
//! body names the algorithm and carries the public key (X.509 SubjectPublicKeyInfo, DER,
//! base64) that made it.
//!
//! [`Document::render`] writes one ([`crate::chain`] builds and signs it), [`Signed::parse`]
//! reads one back and [`Signed::check_signature`] checks it against a trusted key.
//! Signing keys are in [`crate::sign`].

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::{
    clock::{compact_utc, partition_date},
    loss::{LossSource, LossSpan},
};

/// The `format` of every digest body.
pub const FORMAT: &str = "tollgate-digest/1";

/// Where digests go, relative to the flow log's root: ignored by Athena and Hive (a leading
/// `_`), next to the `cluster=…` partitions.
pub const DIGEST_ROOT: &str = "_digests";

/// A digest's body, in the order its fields are written and signed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Document {
    /// [`FORMAT`].
    pub format: String,
    /// The `cluster` setting of the collector.
    pub cluster: String,
    /// The node.
    pub node: String,
    /// Position in the chain: 0 for a chain's first digest, then one more each.
    pub number: u64,
    /// Start of the span it covers (Unix s): the previous digest's end, or the collector's
    /// start for a chain's first.
    pub from_s: u64,
    /// End of the span (Unix s): when it was sealed.
    pub to_s: u64,
    /// The previous digest of the chain; `None` for a chain's first.
    pub previous: Option<Link>,
    /// Why a new chain starts here; `None` when it continues one.
    pub chain_start: Option<String>,
    /// Every object spooled in the span, in sequence order.
    pub objects: Vec<ObjectEntry>,
    /// Sequence numbers given to files that were never spooled, with why (each also a loss
    /// record in a later object).
    pub lost_sequences: Vec<LostSequence>,
    /// The collector's version.
    pub collector_version: String,
    /// How it is signed.
    pub signing: Signing,
}

/// The previous digest of a chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Link {
    /// Its key, relative to the flow log's root.
    pub key: String,
    /// SHA-256 of its whole file, hex.
    pub sha256: String,
}

/// One flow-log object as the collector spooled it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectEntry {
    /// Key relative to the flow log's root.
    pub key: String,
    /// The spool's sequence number of the file (in its name too).
    pub sequence: u64,
    /// Size.
    pub bytes: u64,
    /// SHA-256 of its bytes, hex.
    pub sha256: String,
    /// Records in it.
    pub records: u64,
    /// First record's start (Unix s).
    pub first_record_s: u64,
    /// Last record's end (Unix s).
    pub last_record_s: u64,
    /// The loss records (`SKIPDATA`) among its records.
    pub loss_records: Vec<LossSpan>,
}

/// A sequence number whose file was never spooled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LostSequence {
    /// The number.
    pub sequence: u64,
    /// Where its records were lost (the loss record's `loss_source`).
    pub loss_source: LossSource,
    /// What happened.
    pub detail: String,
}

/// The signature's algorithm and key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signing {
    /// The algorithm.
    pub algorithm: Algorithm,
    /// The key's name: the key file's path, or the KMS key's ARN.
    pub key_id: String,
    /// The public key: X.509 SubjectPublicKeyInfo, DER, base64.
    pub public_key: String,
}

/// A signature algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Algorithm {
    /// Ed25519 (a local key file).
    Ed25519,
    /// ECDSA on P-256 with SHA-256, ASN.1 DER signature (KMS `ECDSA_SHA_256`).
    EcdsaP256Sha256,
}

/// A digest could not be read or does not check out.
#[derive(Debug, thiserror::Error)]
pub enum DigestError {
    /// Not a digest file.
    #[error("not a digest ({0})")]
    Format(String),
    /// The public key or the signature is not valid base64.
    #[error("{field}: not base64")]
    Base64 {
        /// Which field.
        field: &'static str,
    },
    /// The signature does not verify with the key.
    #[error("bad signature: the body is not signed by {0}")]
    BadSignature(String),
}

/// A digest file as read.
#[derive(Debug, Clone)]
pub struct Signed {
    /// Its body.
    pub document: Document,
    /// The body's exact bytes as signed.
    pub body: Vec<u8>,
    /// The signature.
    pub signature: Vec<u8>,
}

/// The whole file, to check its shape.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    body: Document,
    signature: String,
}

const HEAD: &[u8] = b"{\"body\":";
const SIGNATURE: &[u8] = b",\"signature\":\"";

impl Document {
    /// Its key relative to the flow log's root:
    /// `_digests/cluster=<c>/node=<n>/dt=<day of its end>/<node>-<end>-<number>.json`.
    pub fn key(&self) -> String {
        let (dt, _) = partition_date(self.to_s);
        format!(
            "{DIGEST_ROOT}/cluster={}/node={}/dt={dt}/{}-{}-{:06}.json",
            self.cluster,
            self.node,
            self.node,
            compact_utc(self.to_s),
            self.number
        )
    }

    /// The body's bytes, as they stand in the file.
    pub fn body_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a digest body serializes")
    }

    /// The message that is signed for `body`: its SHA-256.
    pub fn signed_message(body: &[u8]) -> Vec<u8> {
        Sha256::digest(body).to_vec()
    }

    /// The file: `body` (the bytes [`Document::body_bytes`] gave) and its signature.
    pub fn render(body: &[u8], signature: &[u8]) -> Vec<u8> {
        let mut file = Vec::with_capacity(body.len() + 128);
        file.extend_from_slice(HEAD);
        file.extend_from_slice(body);
        file.extend_from_slice(SIGNATURE);
        file.extend_from_slice(data_encoding::BASE64.encode(signature).as_bytes());
        file.extend_from_slice(b"\"}\n");
        file
    }
}

impl Signed {
    /// Reads a digest file. The signed bytes are those between `{"body":` and the last
    /// `,"signature":"` (a sequence no JSON string holds unescaped), exactly as
    /// [`Document::render`] wrote them; the whole file must parse too.
    pub fn parse(bytes: &[u8]) -> Result<Self, DigestError> {
        let file: File =
            serde_json::from_slice(bytes).map_err(|e| DigestError::Format(e.to_string()))?;
        let body = bytes
            .strip_prefix(HEAD)
            .and_then(|rest| {
                let at = rest
                    .windows(SIGNATURE.len())
                    .rposition(|window| window == SIGNATURE)?;
                Some(rest[..at].to_vec())
            })
            .ok_or_else(|| {
                DigestError::Format("not laid out as {\"body\":…,\"signature\":…}".to_owned())
            })?;
        let document: Document =
            serde_json::from_slice(&body).map_err(|e| DigestError::Format(e.to_string()))?;
        if document != file.body {
            return Err(DigestError::Format(
                "the body is not one JSON value".to_owned(),
            ));
        }
        if document.format != FORMAT {
            return Err(DigestError::Format(format!(
                "format {:?}, expected {FORMAT:?}",
                document.format
            )));
        }
        let signature = data_encoding::BASE64
            .decode(file.signature.as_bytes())
            .map_err(|_| DigestError::Base64 { field: "signature" })?;
        Ok(Self {
            document,
            body,
            signature,
        })
    }

    /// The public key the body names (DER).
    pub fn public_key(&self) -> Result<Vec<u8>, DigestError> {
        data_encoding::BASE64
            .decode(self.document.signing.public_key.as_bytes())
            .map_err(|_| DigestError::Base64 {
                field: "signing.public_key",
            })
    }

    /// Checks the signature against `public_key` (DER SubjectPublicKeyInfo) with the body's
    /// algorithm.
    pub fn check_signature(&self, public_key: &[u8]) -> Result<(), DigestError> {
        let algorithm = self.document.signing.algorithm;
        let message = Document::signed_message(&self.body);
        if crate::sign::verify(algorithm, public_key, &message, &self.signature) {
            Ok(())
        } else {
            Err(DigestError::BadSignature(crate::sign::fingerprint(
                public_key,
            )))
        }
    }
}
