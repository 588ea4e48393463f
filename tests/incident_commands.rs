//! `quarantine` and `evidence` through the `tollgate` binary, without root or a cluster: every
//! argument checked before anything is contacted, an empty bundle and unreadable flow-log
//! files reported with exit code 1, and `evidence verify` taking only the bundle's own regular
//! files, never following a link or waiting on a FIFO, naming a bounded number of problems;
//! `digest verify` exiting 0 on an intact flow log and 1 with one line per problem.

#[path = "support/cli.rs"]
mod cli;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use tollgate_test_support::temp_dir;

/// Runs `tollgate ARGS` with no kubeconfig and no in-cluster environment; stopped (and the
/// test failed) after 20 s.
fn tollgate(args: &[&str], home: &Path) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(args)
        .env("HOME", home)
        .env_remove("KUBECONFIG")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("KUBERNETES_SERVICE_PORT")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running tollgate");
    let started = Instant::now();
    while child.try_wait().expect("waiting for tollgate").is_none() {
        if started.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("tollgate {} did not finish within 20 s", args.join(" "));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().expect("tollgate's output");
    cli::logged(args, output)
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn mkfifo(path: &Path) {
    rustix::fs::mknodat(
        rustix::fs::CWD,
        path,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::RUSR | rustix::fs::Mode::WUSR,
        0,
    )
    .expect("mkfifo");
}

const WINDOW: [&str; 4] = [
    "--from",
    "2026-11-25T10:10:00Z",
    "--to",
    "2026-11-25T10:30:00Z",
];

/// `evidence POD` of the window from the flow log `flow_log` into `out`, with `extra` flags.
fn evidence(pod: &str, flow_log: &Path, out: &Path, extra: &[&str], home: &Path) -> Output {
    let (flow_log, out) = (flow_log.to_string_lossy(), out.to_string_lossy());
    let mut args = vec!["evidence", pod];
    args.extend(WINDOW);
    args.extend(["--flow-log", &flow_log, "--out", &out]);
    args.extend(extra);
    tollgate(&args, home)
}

#[test]
fn quarantine_refuses_bad_arguments_before_contacting_anything() {
    let scratch = temp_dir("cli-test-quarantine");
    let flow_log = scratch.path().join("flows");
    let flow_log = flow_log.to_string_lossy();
    for (reason, cluster, flag) in [
        ("", "prod", "--reason"),
        ("   ", "prod", "--reason"),
        ("C2 beacon", "", "--cluster"),
        ("C2 beacon", "a/b", "--cluster"),
    ] {
        let output = tollgate(
            &[
                "quarantine",
                "shop/web",
                "--reason",
                reason,
                "--cluster",
                cluster,
                "--flow-log",
                &flow_log,
            ],
            scratch.path(),
        );
        let text = stderr(&output);
        assert_eq!(output.status.code(), Some(2), "{text}");
        assert!(text.contains(flag), "{text}");
        // Refused on its own, not after looking for an API server (there is none here).
        assert!(!text.contains("API server"), "{text}");
        assert!(!text.contains("kubeconfig"), "{text}");
    }
}

#[test]
fn evidence_of_a_pod_the_flow_log_never_names_fails_loudly() {
    let scratch = temp_dir("cli-test-empty");
    let flow_log = scratch.path().join("flows");
    std::fs::create_dir_all(flow_log.join("cluster=prod/dt=2026-11-25/hour=10")).unwrap();
    let output = evidence(
        "shop/web",
        &flow_log,
        &scratch.path().join("b1"),
        &[],
        scratch.path(),
    );
    let text = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(text.contains("NO RECORD of shop/web"), "{text}");
    assert!(text.contains("--allow-empty"), "{text}");

    let output = evidence(
        "shop/web",
        &flow_log,
        &scratch.path().join("b2"),
        &["--allow-empty"],
        scratch.path(),
    );
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
}

#[test]
fn evidence_skips_unreadable_files_names_them_and_exits_1() {
    let scratch = temp_dir("cli-test-unreadable");
    let dir = scratch.path();
    let flow_log = dir.join("flows");
    let hour = flow_log.join("cluster=prod/dt=2026-11-25/hour=10");
    std::fs::create_dir_all(&hour).unwrap();
    std::fs::write(hour.join("node-a-1.parquet"), b"PAR1 truncated").unwrap();
    mkfifo(&hour.join("node-b-1.parquet"));
    let out = dir.join("b");
    let output = evidence("shop/web", &flow_log, &out, &["--allow-empty"], dir);
    let text = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(
        text.contains("2 flow-log file(s) could not be read"),
        "{text}"
    );
    assert!(text.contains("node-a-1.parquet: "), "{text}");
    assert!(text.contains("node-b-1.parquet: a FIFO"), "{text}");
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(
        manifest["skipped"].as_array().unwrap().len(),
        2,
        "{manifest}"
    );
}

#[test]
fn evidence_verify_takes_only_regular_files_of_the_bundle() {
    let scratch = temp_dir("cli-test-verify");
    let flow_log = scratch.path().join("flows");
    std::fs::create_dir_all(&flow_log).unwrap();
    let bundle = scratch.path().join("b");
    let output = evidence(
        "shop/web",
        &flow_log,
        &bundle,
        &["--allow-empty"],
        scratch.path(),
    );
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let dir = bundle.to_string_lossy().into_owned();
    let verify = || tollgate(&["evidence", "verify", &dir], scratch.path());
    assert_eq!(verify().status.code(), Some(0));

    // flows.csv as a link to an identical copy elsewhere: not the bundle's file.
    let copy = scratch.path().join("flows.csv");
    std::fs::rename(bundle.join("flows.csv"), &copy).unwrap();
    std::os::unix::fs::symlink(&copy, bundle.join("flows.csv")).unwrap();
    let output = verify();
    let text = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(
        text.contains("flows.csv: a symbolic link, not a regular file"),
        "{text}"
    );
    std::fs::remove_file(bundle.join("flows.csv")).unwrap();
    std::fs::rename(&copy, bundle.join("flows.csv")).unwrap();

    // A FIFO in place of losses.csv: reported, never waited on (tollgate() stops at 20 s).
    std::fs::remove_file(bundle.join("losses.csv")).unwrap();
    mkfifo(&bundle.join("losses.csv"));
    let output = verify();
    let text = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(
        text.contains("losses.csv: a FIFO, not a regular file"),
        "{text}"
    );

    // A thousand extra files: a bounded report.
    for i in 0..1000 {
        std::fs::write(bundle.join(format!("extra-{i:04}")), "x").unwrap();
    }
    let output = verify();
    let text = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(text.contains("(1001 problems)"), "{text}");
    assert!(text.contains("more"), "{text}");
    assert!(text.lines().count() < 30, "{text}");
}

/// A flow directory of one node: two files spooled and sealed into a signed digest by the
/// collector's own spool and sealer, delivered as the local sink does; the key file's path.
fn signed_flow_log(dir: &Path) -> (PathBuf, PathBuf) {
    use tollgate_collector::{
        chain::Sealer,
        config::SigningConfig,
        spool::{Commit, FileFacts, Spool, pending_in},
    };
    let (spool_dir, flows, key) = (dir.join("spool"), dir.join("flows"), dir.join("key.pem"));
    let at = 1_795_600_800;
    let (mut spool, _) = Spool::open(&spool_dir, 1 << 30, at).unwrap();
    for n in 0..2 {
        let (sequence, temp) = spool.begin().unwrap();
        std::fs::write(&temp, format!("flow file {n}")).unwrap();
        let facts = FileFacts {
            sequence,
            records: 1,
            first_record_s: at,
            last_record_s: at,
            loss_records: Vec::new(),
        };
        let key =
            format!("cluster=c/dt=2026-11-25/hour=10/n-20261125T100000Z-{sequence:06}.parquet");
        let Commit::Spooled(_) = spool.commit(&temp, &key, facts).unwrap() else {
            panic!("not spooled");
        };
    }
    spool.close().unwrap();
    let signing = SigningConfig::LocalKey {
        key_file: Some(key.clone()),
    };
    let mut sealer = Sealer::new(&spool_dir, "c", "n", Duration::from_secs(3600), signing, at);
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(sealer.seal(at + 3600))
        .unwrap();
    for file in pending_in(&spool_dir).unwrap() {
        let to = flows.join(&file.key);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(&file.path, &to).unwrap();
    }
    (flows, key)
}

#[test]
fn digest_verify_exits_0_on_an_intact_flow_log_and_1_with_a_line_per_problem() {
    let scratch = temp_dir("cli-test-digest-verify");
    let (flows, key) = signed_flow_log(scratch.path());
    let key = key.to_str().unwrap();
    let exported = tollgate(&["digest", "public-key", "--key-file", key], scratch.path());
    assert_eq!(exported.status.code(), Some(0), "{}", stderr(&exported));
    let pem = scratch.path().join("public.pem");
    std::fs::write(&pem, &exported.stdout).unwrap();
    let pem = pem.to_str().unwrap();
    let flow_log = flows.to_str().unwrap();
    let verify = |home: &Path| {
        tollgate(
            &[
                "digest",
                "verify",
                "--flow-log",
                flow_log,
                "--public-key",
                pem,
            ],
            home,
        )
    };
    let intact = verify(scratch.path());
    assert_eq!(intact.status.code(), Some(0), "{}", stderr(&intact));
    assert!(
        String::from_utf8_lossy(&intact.stdout)
            .contains("holds up: 1 digests of 1 nodes, 2 objects")
    );
    // One byte changed, one object planted.
    let object = flows.join("cluster=c/dt=2026-11-25/hour=10/n-20261125T100000Z-000000.parquet");
    let mut bytes = std::fs::read(&object).unwrap();
    bytes[0] ^= 1;
    std::fs::write(&object, bytes).unwrap();
    std::fs::write(
        flows.join("cluster=c/dt=2026-11-25/hour=10/planted.parquet"),
        b"x",
    )
    .unwrap();
    let tampered = verify(scratch.path());
    assert_eq!(tampered.status.code(), Some(1), "{}", stderr(&tampered));
    let lines: Vec<String> = String::from_utf8_lossy(&tampered.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(
        lines[0].starts_with("changed object cluster=c/dt=2026-11-25/hour=10/n-"),
        "{lines:?}"
    );
    assert!(
        lines[1].starts_with("extra object cluster=c/dt=2026-11-25/hour=10/planted.parquet"),
        "{lines:?}"
    );
    assert!(stderr(&tampered).contains("2 problems"));
    // Another key: every digest is a bad signature.
    let other = scratch.path().join("other.pem");
    let made = tollgate(
        &["digest", "keygen", "--key-file", other.to_str().unwrap()],
        scratch.path(),
    );
    assert_eq!(made.status.code(), Some(0), "{}", stderr(&made));
    std::fs::write(scratch.path().join("other-public.pem"), &made.stdout).unwrap();
    let foreign = tollgate(
        &[
            "digest",
            "verify",
            "--flow-log",
            flow_log,
            "--public-key",
            scratch.path().join("other-public.pem").to_str().unwrap(),
        ],
        scratch.path(),
    );
    assert_eq!(foreign.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&foreign.stdout)
            .contains("bad signature on digest _digests/cluster=c/node=n/")
    );
}
