//! Digests signed by an AWS KMS asymmetric key, against moto's KMS server on 127.0.0.1: the
//! sealer signs through `Sign` (a P-256 key), the signature checks offline against the key's
//! `GetPublicKey` and through KMS's own `Verify`; an RSA key is refused; a key KMS refuses
//! delays the digest, its entries kept for the next attempt.

mod support;

use aws_sdk_kms::{
    primitives::Blob,
    types::{KeySpec, KeyUsageType, MessageType, SigningAlgorithmSpec},
};
use sha2::{Digest as _, Sha256};
use support::moto::Moto;
use tollgate_collector::{
    chain::Sealer,
    config::SigningConfig,
    digest::{Algorithm, Signed},
    kms,
    spool::{Commit, FileFacts, Spool},
};
use tollgate_test_support::temp_dir;

const AT: u64 = 1_795_600_800;

async fn create_key(moto: &Moto, spec: KeySpec) -> String {
    moto.kms()
        .await
        .create_key()
        .key_spec(spec)
        .key_usage(KeyUsageType::SignVerify)
        .send()
        .await
        .expect("CreateKey")
        .key_metadata()
        .expect("metadata")
        .arn()
        .expect("an ARN")
        .to_owned()
}

fn spool_one(root: &std::path::Path) {
    let (mut spool, _) = Spool::open(root, 1 << 30, AT).unwrap();
    let (sequence, temp) = spool.begin().unwrap();
    std::fs::write(&temp, b"flow file").unwrap();
    let facts = FileFacts {
        sequence,
        records: 1,
        first_record_s: AT,
        last_record_s: AT,
        loss_records: Vec::new(),
    };
    let Commit::Spooled(_) = spool
        .commit(&temp, "cluster=c/dt=2026-11-25/hour=10/n-1.parquet", facts)
        .unwrap()
    else {
        panic!("not spooled");
    };
    spool.close().unwrap();
}

fn sealer(root: &std::path::Path, moto: &Moto, key_id: &str) -> Sealer {
    Sealer::new(
        root,
        "c",
        "n",
        std::time::Duration::from_secs(3600),
        SigningConfig::Kms {
            key_id: key_id.to_owned(),
            region: support::moto::REGION.to_owned(),
            endpoint_url: Some(moto.endpoint_url()),
            public_key_pem: None,
        },
        AT,
    )
}

#[tokio::test]
async fn digests_signed_by_kms_verify_offline_and_in_kms() {
    let moto = Moto::start();
    for (spec, algorithm, kms_algorithm) in [(
        KeySpec::EccNistP256,
        Algorithm::EcdsaP256Sha256,
        SigningAlgorithmSpec::EcdsaSha256,
    )] {
        let key_id = create_key(&moto, spec.clone()).await;
        let dir = temp_dir("kms-signing");
        spool_one(dir.path());
        let mut sealer = sealer(dir.path(), &moto, &key_id);
        let key = sealer.seal(AT + 3600).await.expect("sealed through KMS");
        let bytes = std::fs::read(dir.path().join("ready").join(&key)).unwrap();
        let signed = Signed::parse(&bytes).unwrap();
        assert_eq!(signed.document.signing.algorithm, algorithm);
        assert_eq!(signed.document.signing.key_id, key_id);
        assert_eq!(signed.document.objects.len(), 1);
        let client = kms::client(support::moto::REGION, Some(&moto.endpoint_url())).await;
        let public_key = kms::public_key(&client, &key_id).await.unwrap();
        signed
            .check_signature(&public_key)
            .unwrap_or_else(|e| panic!("{spec:?}: {e}"));
        let answer = moto
            .kms()
            .await
            .verify()
            .key_id(&key_id)
            .message(Blob::new(Sha256::digest(&signed.body).to_vec()))
            .message_type(MessageType::Raw)
            .signature(Blob::new(signed.signature.clone()))
            .signing_algorithm(kms_algorithm)
            .send()
            .await
            .expect("Verify");
        assert!(answer.signature_valid(), "{spec:?}: KMS agrees");
        // A file re-signed over the body itself instead of its SHA-256 does not verify.
        let resigned = kms::KmsSigner::new(
            &key_id,
            support::moto::REGION,
            Some(&moto.endpoint_url()),
            Some(public_key.clone()),
        )
        .await
        .unwrap()
        .sign(&signed.body)
        .await
        .unwrap();
        let forged = Signed::parse(&tollgate_collector::digest::Document::render(
            &signed.body,
            &resigned,
        ))
        .unwrap();
        assert!(forged.check_signature(&public_key).is_err());
        // With the public key in the settings (as Terraform writes them), only Sign is called.
        let dir = temp_dir("kms-signing-pem");
        spool_one(dir.path());
        let mut sealer = Sealer::new(
            dir.path(),
            "c",
            "n",
            std::time::Duration::from_secs(3600),
            SigningConfig::Kms {
                key_id: key_id.clone(),
                region: support::moto::REGION.to_owned(),
                endpoint_url: Some(moto.endpoint_url()),
                public_key_pem: Some(tollgate_collector::sign::public_key_pem(&public_key)),
            },
            AT,
        );
        let key = sealer.seal(AT + 3600).await.expect("sealed");
        let pem_signed =
            Signed::parse(&std::fs::read(dir.path().join("ready").join(&key)).unwrap()).unwrap();
        pem_signed.check_signature(&public_key).unwrap();
        // Another key's public key does not verify it.
        let other = create_key(&moto, spec.clone()).await;
        let other_key = kms::public_key(&client, &other).await.unwrap();
        assert!(signed.check_signature(&other_key).is_err());
    }
}

#[tokio::test]
async fn an_rsa_key_is_refused() {
    let moto = Moto::start();
    let key_id = create_key(&moto, KeySpec::Rsa2048).await;
    let client = kms::client(support::moto::REGION, Some(&moto.endpoint_url())).await;
    let error = kms::public_key(&client, &key_id)
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("ECC_NIST_P256"), "{error}");
}

#[tokio::test]
async fn a_key_kms_refuses_delays_the_digest_and_loses_nothing() {
    let moto = Moto::start();
    let dir = temp_dir("kms-refused");
    spool_one(dir.path());
    let missing = "arn:aws:kms:us-east-1:123456789012:key/00000000-0000-0000-0000-000000000000";
    let mut refused = sealer(dir.path(), &moto, missing);
    let error = refused.seal(AT + 3600).await.unwrap_err().to_string();
    assert!(error.contains("GetPublicKey"), "{error}");
    assert!(
        dir.path().join("digest/entries/000000.json").exists(),
        "the entry waits"
    );
    let key_id = create_key(&moto, KeySpec::EccNistP256).await;
    let key = sealer(dir.path(), &moto, &key_id)
        .seal(AT + 3700)
        .await
        .expect("sealed once the key works");
    let signed =
        Signed::parse(&std::fs::read(dir.path().join("ready").join(key)).unwrap()).unwrap();
    assert_eq!(signed.document.objects.len(), 1, "nothing lost");
}
