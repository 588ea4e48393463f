//! Digest signatures by an AWS KMS asymmetric key: the key never leaves KMS, and the agents'
//! role may only call `Sign` on it (the Terraform module grants nothing else).
//!
//! [`KmsSigner::new`] takes the key's public key from the settings (Terraform knows it), or
//! reads it once (`GetPublicKey`, which the role then needs too); the key must offer `ECDSA_SHA_256` (an `ECC_NIST_P256` key), any
//! other is refused. (RSA-PSS is left out: KMS salts it with the hash's length, moto's test
//! server with the longest salt, so the one could not be tested against the other.) [`KmsSigner::sign`]
//! sends what [`crate::digest`] signs — the 32-byte SHA-256 of the body — as a `RAW` message
//! (well within KMS's 4 KiB), which KMS hashes and signs; [`crate::sign::verify`] checks it
//! offline the same way.

use aws_config::{BehaviorVersion, Region};
use aws_sdk_kms::{
    Client,
    primitives::Blob,
    types::{KeySpec, MessageType, SigningAlgorithmSpec},
};

use crate::{
    digest::{Algorithm, Signing},
    sign::SignError,
    sink::sdk_in_words,
};

/// A KMS asymmetric signing key.
#[derive(Debug)]
pub struct KmsSigner {
    client: Client,
    key_id: String,
    public_key: Vec<u8>,
}

/// A client of KMS in `region`, at `endpoint_url` when given (a VPC endpoint, a test server).
pub async fn client(region: &str, endpoint_url: Option<&str>) -> Client {
    let shared = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(region.to_owned()))
        .load()
        .await;
    let mut config = aws_sdk_kms::config::Builder::from(&shared);
    config.set_endpoint_url(endpoint_url.map(str::to_owned));
    Client::from_conf(config.build())
}

/// The public key (DER SubjectPublicKeyInfo) of `key_id`, a key that signs with
/// `ECDSA_SHA_256`.
pub async fn public_key(client: &Client, key_id: &str) -> Result<Vec<u8>, SignError> {
    let error = |message: String| SignError::Kms {
        key_id: key_id.to_owned(),
        message,
    };
    let answer = client
        .get_public_key()
        .key_id(key_id)
        .send()
        .await
        .map_err(|e| error(format!("GetPublicKey: {}", sdk_in_words(&e))))?;
    // The algorithms KMS offers for the key say what it is (moto leaves its spec empty).
    let offered = answer.signing_algorithms();
    if !offered.contains(&SigningAlgorithmSpec::EcdsaSha256) {
        return Err(error(format!(
            "key spec {}: digests are signed with ECC_NIST_P256 keys (ECDSA_SHA_256)",
            answer.key_spec().map_or("unknown", KeySpec::as_str)
        )));
    }
    answer
        .public_key()
        .map(|blob| blob.as_ref().to_vec())
        .ok_or_else(|| error("GetPublicKey returned no key".to_owned()))
}

impl KmsSigner {
    /// The signer of `key_id` (an ARN, a key ID or an alias), whose public key (DER) is
    /// `known` or read with `GetPublicKey`.
    pub async fn new(
        key_id: &str,
        region: &str,
        endpoint_url: Option<&str>,
        known: Option<Vec<u8>>,
    ) -> Result<Self, SignError> {
        let client = client(region, endpoint_url).await;
        let public_key = match known {
            Some(der) => der,
            None => public_key(&client, key_id).await?,
        };
        Ok(Self {
            client,
            key_id: key_id.to_owned(),
            public_key,
        })
    }

    /// What goes into a digest's `signing`.
    pub fn signing(&self) -> Signing {
        Signing {
            algorithm: Algorithm::EcdsaP256Sha256,
            key_id: self.key_id.clone(),
            public_key: data_encoding::BASE64.encode(&self.public_key),
        }
    }

    /// The public key, DER SubjectPublicKeyInfo.
    pub fn public_key(&self) -> &[u8] {
        &self.public_key
    }

    /// Signs `message` (KMS hashes it with SHA-256 first).
    #[tracing::instrument(skip_all, fields(key_id = self.key_id))]
    pub async fn sign(&self, message: &[u8]) -> Result<Vec<u8>, SignError> {
        let answer = self
            .client
            .sign()
            .key_id(&self.key_id)
            .message(Blob::new(message.to_vec()))
            .message_type(MessageType::Raw)
            .signing_algorithm(SigningAlgorithmSpec::EcdsaSha256)
            .send()
            .await
            .map_err(|e| SignError::Kms {
                key_id: self.key_id.clone(),
                message: format!("Sign: {}", sdk_in_words(&e)),
            })?;
        answer
            .signature()
            .map(|blob| blob.as_ref().to_vec())
            .ok_or_else(|| SignError::Kms {
                key_id: self.key_id.clone(),
                message: "Sign returned no signature".to_owned(),
            })
    }
}
