//! The incident path end to end, through the `tollgate` binary as a user runs it (needs
//! root: the lab's network namespaces and BPF): `lab --quarantine` isolates the client while
//! it keeps trying, its evidence bundle verifies, one changed byte fails verification loudly,
//! `evidence` rebuilds the same bundle from the lab's flow log, and `flows` shows the
//! isolation record.

#[path = "support/cli.rs"]
mod cli;

use std::path::Path;
use std::process::{Command, Output};
use tollgate_test_support::{privileged, temp_dir};

fn tollgate(args: &[&str]) -> Output {
    let output = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(args)
        .output()
        .expect("running tollgate");
    cli::logged(args, output)
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn flip_one_byte(path: &Path, at: usize) -> Vec<u8> {
    let original = std::fs::read(path).unwrap();
    let mut changed = original.clone();
    changed[at] ^= 0x01;
    std::fs::write(path, changed).unwrap();
    original
}

#[test]
fn privileged_quarantine_in_the_lab_then_evidence_that_detects_tampering() {
    if !privileged("privileged_quarantine_in_the_lab_then_evidence_that_detects_tampering") {
        return;
    }
    let scratch = temp_dir("incident-e2e");
    let out = scratch.path().join("lab");
    let out_arg = out.to_str().unwrap();

    let lab = tollgate(&["lab", "--quarantine", "--out", out_arg]);
    let report = text(&lab);
    assert!(lab.status.success(), "lab --quarantine failed:\n{report}");
    assert!(
        report.contains("Step 5: tollgate quarantine default/amazonlinux"),
        "{report}"
    );
    assert!(report.contains("curl 198.18.0.20  curl: (28)"), "{report}");
    assert!(
        report.contains("quarantined default/amazonlinux at"),
        "{report}"
    );
    assert!(report.contains("allowed before,"), "{report}");

    let bundle = out.join("evidence");
    let bundle_arg = bundle.to_str().unwrap();
    let verify = tollgate(&["evidence", "verify", bundle_arg]);
    assert!(verify.status.success(), "{}", text(&verify));
    assert!(text(&verify).contains("is intact"));

    // One byte of the records changed: verify fails, exit code 1, naming the file.
    let parquet = bundle.join("flows.parquet");
    let original = flip_one_byte(&parquet, 200);
    let verify = tollgate(&["evidence", "verify", bundle_arg]);
    assert_eq!(verify.status.code(), Some(1), "{}", text(&verify));
    let said = text(&verify);
    assert!(said.contains("FAILED verification"), "{said}");
    assert!(said.contains("flows.parquet: SHA-256 is"), "{said}");
    std::fs::write(&parquet, original).unwrap();
    assert!(
        tollgate(&["evidence", "verify", bundle_arg])
            .status
            .success()
    );

    // The manifest's own digest, as the lab printed it.
    let manifest_sha = report
        .lines()
        .find_map(|l| l.trim().strip_prefix("manifest SHA-256: "))
        .and_then(|l| l.split_whitespace().next())
        .expect("the lab prints the manifest's digest")
        .to_owned();
    let manifest = bundle.join("manifest.json");
    let original = flip_one_byte(&manifest, 3);
    let verify = tollgate(&[
        "evidence",
        "verify",
        bundle_arg,
        "--manifest-sha256",
        &manifest_sha,
    ]);
    assert_eq!(verify.status.code(), Some(1), "{}", text(&verify));
    std::fs::write(&manifest, original).unwrap();
    let verify = tollgate(&[
        "evidence",
        "verify",
        bundle_arg,
        "--manifest-sha256",
        &manifest_sha,
    ]);
    assert!(verify.status.success(), "{}", text(&verify));

    // The same bundle, rebuilt from the lab's flow log by `tollgate evidence`.
    let lab_manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(bundle.join("manifest.json")).unwrap()).unwrap();
    let again = scratch.path().join("again");
    let from = lab_manifest["window"]["from"].to_string();
    let to = lab_manifest["window"]["to"].to_string();
    let evidence = tollgate(&[
        "evidence",
        "default/amazonlinux",
        "--from",
        &from,
        "--to",
        &to,
        "--flow-log",
        out_arg,
        "--cluster",
        "lab",
        "--out",
        again.to_str().unwrap(),
    ]);
    assert!(evidence.status.success(), "{}", text(&evidence));
    let rebuilt: serde_json::Value =
        serde_json::from_slice(&std::fs::read(again.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(rebuilt["counts"], lab_manifest["counts"]);
    assert_eq!(
        std::fs::read(again.join("flows.parquet")).unwrap(),
        std::fs::read(bundle.join("flows.parquet")).unwrap(),
        "the same records, byte for byte"
    );

    // `tollgate flows` reads the flow log, not the bundle kept inside it.
    let flows = tollgate(&["flows", "--dir", out_arg]);
    let listed = text(&flows);
    assert!(flows.status.success(), "{listed}");
    assert_eq!(listed.matches("QUARANTINE").count(), 1, "{listed}");
}
