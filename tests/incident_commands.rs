//! `quarantine` and `evidence` through the `tollgate` binary, without root or a cluster: every
//! argument checked before anything is contacted, an empty bundle and unreadable flow-log
//! files reported with exit code 1, and `evidence verify` taking only the bundle's own regular
//! files, never following a link or waiting on a FIFO, naming a bounded number of problems.

#[path = "support/cli.rs"]
mod cli;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

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

/// A directory removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(what: &str) -> Self {
        let path =
            std::env::temp_dir().join(format!("tollgate-cli-test-{}-{what}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn mkfifo(path: &Path) {
    let name = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o600) }, 0, "mkfifo");
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
    let scratch = Scratch::new("quarantine");
    let flow_log = scratch.0.join("flows");
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
            &scratch.0,
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
    let scratch = Scratch::new("empty");
    let flow_log = scratch.0.join("flows");
    std::fs::create_dir_all(flow_log.join("cluster=prod/dt=2026-11-25/hour=10")).unwrap();
    let output = evidence(
        "shop/web",
        &flow_log,
        &scratch.0.join("b1"),
        &[],
        &scratch.0,
    );
    let text = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(text.contains("NO RECORD of shop/web"), "{text}");
    assert!(text.contains("--allow-empty"), "{text}");

    let output = evidence(
        "shop/web",
        &flow_log,
        &scratch.0.join("b2"),
        &["--allow-empty"],
        &scratch.0,
    );
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
}

#[test]
fn evidence_skips_unreadable_files_names_them_and_exits_1() {
    let scratch = Scratch::new("unreadable");
    let flow_log = scratch.0.join("flows");
    let hour = flow_log.join("cluster=prod/dt=2026-11-25/hour=10");
    std::fs::create_dir_all(&hour).unwrap();
    std::fs::write(hour.join("node-a-1.parquet"), b"PAR1 truncated").unwrap();
    mkfifo(&hour.join("node-b-1.parquet"));
    let out = scratch.0.join("b");
    let output = evidence("shop/web", &flow_log, &out, &["--allow-empty"], &scratch.0);
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
    let scratch = Scratch::new("verify");
    let flow_log = scratch.0.join("flows");
    std::fs::create_dir_all(&flow_log).unwrap();
    let bundle = scratch.0.join("b");
    let output = evidence(
        "shop/web",
        &flow_log,
        &bundle,
        &["--allow-empty"],
        &scratch.0,
    );
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let dir = bundle.to_string_lossy().into_owned();
    let verify = || tollgate(&["evidence", "verify", &dir], &scratch.0);
    assert_eq!(verify().status.code(), Some(0));

    // flows.csv as a link to an identical copy elsewhere: not the bundle's file.
    let copy = scratch.0.join("flows.csv");
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
