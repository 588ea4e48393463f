//! Signing keys of the digest chain, and the check of a signature.
//!
//! A [`Signer`] turns a digest's signed message (the SHA-256 of its body) into a signature: a
//! local Ed25519 key ([`Signer::local`]: a PKCS#8 PEM file, created with mode 0600 when it does
//! not exist yet — the embedded default) or an AWS KMS asymmetric key ([`Signer::Kms`]: `Sign`
//! with `ECDSA_SHA_256` on a P-256 key, its public key read once with `GetPublicKey`). Both hand
//! out their public key as an X.509 SubjectPublicKeyInfo (DER), which goes into every digest
//! and is exported as PEM ([`public_key_pem`]); [`verify`] checks a signature against such a
//! key, offline, with aws-lc-rs (the crypto provider the binary's TLS already uses).

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use aws_lc_rs::encoding::AsDer as _;
use aws_lc_rs::signature::{self, Ed25519KeyPair, KeyPair as _, UnparsedPublicKey};
use sha2::{Digest as _, Sha256};

use crate::digest::{Algorithm, Signing};

const PRIVATE_PEM: &str = "PRIVATE KEY";
const PUBLIC_PEM: &str = "PUBLIC KEY";

/// A key could not be read, made or used.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    /// A KMS call.
    #[error("KMS key {key_id}: {message}")]
    Kms {
        /// The key.
        key_id: String,
        /// What failed, with the SDK's error in words.
        message: String,
    },
    /// The key file.
    #[error("signing key {path}: {what}")]
    KeyFile {
        /// Which file.
        path: PathBuf,
        /// What is wrong with it, with the cause.
        what: String,
    },
}

/// A digest signer.
#[derive(Debug)]
pub enum Signer {
    /// A local Ed25519 key.
    Local {
        /// The key file.
        path: PathBuf,
        /// The key.
        key: Ed25519KeyPair,
    },
    /// An AWS KMS asymmetric key.
    Kms(crate::kms::KmsSigner),
}

impl Signer {
    /// The Ed25519 key in the PEM file at `path`; a new key is written there first (mode 0600)
    /// when there is no file.
    pub fn local(path: &Path) -> Result<Self, SignError> {
        let error = |what: String| SignError::KeyFile {
            path: path.to_owned(),
            what,
        };
        let pem = match std::fs::read_to_string(path) {
            Ok(pem) => pem,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                generate_key(path).map_err(|e| error(format!("creating: {e}")))?;
                tracing::info!(path = %path.display(), "created a digest signing key");
                std::fs::read_to_string(path).map_err(|e| error(format!("reading: {e}")))?
            }
            Err(e) => return Err(error(format!("reading: {e}"))),
        };
        let der = pem_decode(&pem, PRIVATE_PEM).map_err(error)?;
        let key = Ed25519KeyPair::from_pkcs8(&der)
            .map_err(|e| error(format!("not an Ed25519 PKCS#8 key: {e}")))?;
        Ok(Self::Local {
            path: path.to_owned(),
            key,
        })
    }

    /// What goes into a digest's `signing`.
    pub fn signing(&self) -> Signing {
        match self {
            Self::Local { path, key } => Signing {
                algorithm: Algorithm::Ed25519,
                key_id: path.display().to_string(),
                public_key: data_encoding::BASE64.encode(&ed25519_public_der(key)),
            },
            Self::Kms(kms) => kms.signing(),
        }
    }

    /// The public key, DER SubjectPublicKeyInfo.
    pub fn public_key(&self) -> Vec<u8> {
        match self {
            Self::Local { key, .. } => ed25519_public_der(key),
            Self::Kms(kms) => kms.public_key().to_vec(),
        }
    }

    /// Signs `message`.
    pub async fn sign(&self, message: &[u8]) -> Result<Vec<u8>, SignError> {
        match self {
            Self::Local { key, .. } => Ok(key.sign(message).as_ref().to_vec()),
            Self::Kms(kms) => kms.sign(message).await,
        }
    }
}

fn ed25519_public_der(key: &Ed25519KeyPair) -> Vec<u8> {
    key.public_key()
        .as_der()
        .expect("an Ed25519 public key marshals to DER")
        .as_ref()
        .to_vec()
}

/// Writes a new Ed25519 key to `path` (PKCS#8 PEM, mode 0600; refused when the file exists).
pub fn generate_key(path: &Path) -> std::io::Result<()> {
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).map_err(std::io::Error::other)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(pem_encode(pkcs8.as_ref(), PRIVATE_PEM).as_bytes())?;
    file.sync_all()
}

/// Whether `signature` of `message` verifies against `public_key` (DER
/// SubjectPublicKeyInfo).
pub fn verify(algorithm: Algorithm, public_key: &[u8], message: &[u8], signature: &[u8]) -> bool {
    let algorithm: &dyn signature::VerificationAlgorithm = match algorithm {
        Algorithm::Ed25519 => &signature::ED25519,
        Algorithm::EcdsaP256Sha256 => &signature::ECDSA_P256_SHA256_ASN1,
    };
    UnparsedPublicKey::new(algorithm, public_key)
        .verify(message, signature)
        .is_ok()
}

/// A key's short name in messages: `key sha256:<first 16 hex digits of its DER's SHA-256>`.
pub fn fingerprint(public_key: &[u8]) -> String {
    let digest = Sha256::digest(public_key);
    format!(
        "key sha256:{}",
        &data_encoding::HEXLOWER.encode(&digest)[..16]
    )
}

/// A public key (DER SubjectPublicKeyInfo) as PEM.
pub fn public_key_pem(der: &[u8]) -> String {
    pem_encode(der, PUBLIC_PEM)
}

/// The DER of a PEM `PUBLIC KEY`.
pub fn parse_public_key_pem(text: &str) -> Result<Vec<u8>, String> {
    pem_decode(text, PUBLIC_PEM)
}

fn pem_encode(der: &[u8], label: &str) -> String {
    let base64 = data_encoding::BASE64.encode(der);
    let mut pem = format!("-----BEGIN {label}-----\n");
    for line in base64.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(line));
        pem.push('\n');
    }
    pem.push_str(&format!("-----END {label}-----\n"));
    pem
}

fn pem_decode(text: &str, label: &str) -> Result<Vec<u8>, String> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let inner = text
        .split_once(&begin)
        .and_then(|(_, rest)| rest.split_once(&end))
        .map(|(inner, _)| inner)
        .ok_or_else(|| format!("no PEM {label} block"))?;
    let base64: String = inner.split_whitespace().collect();
    data_encoding::BASE64
        .decode(base64.as_bytes())
        .map_err(|e| format!("PEM {label}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_local_key_is_made_once_and_its_signatures_verify() {
        let scratch = tollgate_test_support::temp_dir("sign");
        // Not there yet: the signer makes the key's directory.
        let dir = scratch.path().join("keys");
        let path = dir.join("key.pem");
        let signer = Signer::local(&path).unwrap();
        let again = Signer::local(&path).unwrap();
        assert_eq!(signer.public_key(), again.public_key(), "the same key");
        let signature = signer.sign(b"body").await.unwrap();
        let public = signer.public_key();
        assert!(verify(Algorithm::Ed25519, &public, b"body", &signature));
        assert!(!verify(Algorithm::Ed25519, &public, b"bodY", &signature));
        let pem = public_key_pem(&public);
        assert_eq!(parse_public_key_pem(&pem).unwrap(), public);
        let other = Signer::local(&dir.join("other.pem")).unwrap();
        assert!(!verify(
            Algorithm::Ed25519,
            &other.public_key(),
            b"body",
            &signature
        ));
    }
}
