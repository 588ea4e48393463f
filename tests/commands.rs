//! The commands as a user runs them, when things are not as expected: a reader that goes
//! away (`tollgate flows … | head -1`), a flow log with files that cannot be read, a time
//! filter over a long flow log, and errors from the file system and the Kubernetes client.
//! None needs root.

#[path = "support/cli.rs"]
mod cli;

#[path = "support/flowlog.rs"]
mod flowlog;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use flowlog::{Layout, flow, loss, partition, pod, write};
use parquet::basic::Compression;
use tollgate_schemas::{Verdict, record::COLUMNS};
use tollgate_test_support::temp_dir;

/// 2026-11-25T10:00:00Z.
const HOUR: u64 = 1_795_600_800;

fn command(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tollgate"));
    command
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("RUST_LOG");
    command
}

fn tollgate(args: &[&str]) -> Output {
    let output = command(args).output().expect("running tollgate");
    cli::logged(args, output)
}

/// Runs `tollgate args` with its standard output (or error) a pipe nobody reads any more, as
/// `tollgate … | head -1` leaves it once `head` has its line; its exit code and standard error
/// (output, when standard error is the closed one).
fn with_closed(args: &[&str], closed_stderr: bool) -> (Option<i32>, String) {
    let mut child = command(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running tollgate");
    if closed_stderr {
        drop(child.stderr.take());
    } else {
        drop(child.stdout.take());
    }
    let output = child.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(if closed_stderr {
        &output.stdout
    } else {
        &output.stderr
    })
    .into_owned();
    eprintln!(
        "$ tollgate {} (standard {} closed): {:?}\n{said}",
        args.join(" "),
        if closed_stderr { "error" } else { "output" },
        output.status
    );
    (output.status.code(), said)
}

/// A flow log with one denied and one allowed flow of `default/web` in the hour of `HOUR`.
fn flow_log(dir: &Path) {
    let (web, api) = (pod("default", "web"), pod("default", "api"));
    write(
        dir,
        &format!("{}/a.parquet", partition(HOUR)),
        &[
            flow(HOUR + 10, &web, &api, Verdict::Deny),
            flow(HOUR + 20, &web, &api, Verdict::Allow),
        ],
        Layout::default(),
    );
}

#[test]
fn every_command_ends_quietly_when_its_reader_goes_away() {
    let scratch = temp_dir("commands-epipe");
    let flows = scratch.path().join("flows");
    flow_log(&flows);
    let flows_arg = flows.to_str().unwrap();
    let bundle = scratch.path().join("bundle");
    let bundle_arg = bundle.to_str().unwrap();
    let (from, to) = (HOUR.to_string(), (HOUR + 3600).to_string());
    let seed = [
        "examples/seed/all-deny.yaml",
        "examples/seed/allow-amazonlinux-to-nginx.yaml",
        "examples/seed/lab-pods.yaml",
        "examples/seed/services.yaml",
    ];
    let verify = |output: &'static str| {
        let mut args = vec!["verify", "--manifests"];
        args.extend(seed);
        args.extend([
            "--probes",
            "examples/seed/probes.txt",
            "--datapath",
            "model",
            "--output",
            output,
        ]);
        args
    };
    let runs: Vec<Vec<&str>> = vec![
        vec!["flows", "--dir", flows_arg],
        vec!["flows", "--dir", flows_arg, "--output", "json"],
        verify("table"),
        verify("json"),
        vec![
            "evidence",
            "default/web",
            "--from",
            &from,
            "--to",
            &to,
            "--out",
            bundle_arg,
            "--flow-log",
            flows_arg,
        ],
        vec!["evidence", "verify", bundle_arg],
    ];
    for args in &runs {
        let (code, stderr) = with_closed(args, false);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert_eq!(code, Some(0), "{args:?}: {stderr}");
    }
    // The command's own verdict stays its exit code: input with an error is still 1.
    let bad = scratch.path().join("bad.yaml");
    std::fs::write(&bad, "kind: Pod\nmetadata: {name: x}\nspec: 7\n").unwrap();
    let mut args = verify("table");
    args.insert(2, bad.to_str().unwrap());
    let (code, stderr) = with_closed(&args, false);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(code, Some(1), "{stderr}");
    // A closed standard error (`2>&1 | head`) does not panic either.
    let missing = scratch.path().join("absent");
    let (code, _) = with_closed(&["flows", "--dir", missing.to_str().unwrap()], true);
    assert_eq!(code, Some(2));
}

#[test]
fn flows_reads_what_it_can_and_names_each_file_it_skipped() {
    let scratch = temp_dir("commands-skips");
    let dir = scratch.path();
    let (web, api) = (pod("default", "web"), pod("default", "api"));
    let part = partition(HOUR);
    write(
        dir,
        &format!("{part}/good.parquet"),
        &[flow(HOUR + 10, &web, &api, Verdict::Deny)],
        Layout::default(),
    );
    write(
        dir,
        &format!("{part}/snappy.parquet"),
        &[flow(HOUR + 20, &web, &api, Verdict::Allow)],
        Layout {
            compression: Compression::SNAPPY,
            ..Layout::default()
        },
    );
    let truncated = write(
        dir,
        &format!("{part}/truncated.parquet"),
        &[flow(HOUR + 30, &web, &api, Verdict::Deny)],
        Layout::default(),
    );
    let bytes = std::fs::read(&truncated).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let other = write(
        dir,
        &format!("{part}/other.parquet"),
        &[flow(HOUR + 40, &web, &api, Verdict::Deny)],
        Layout {
            columns: Some(4),
            ..Layout::default()
        },
    );

    let output = tollgate(&["flows", "--dir", dir.to_str().unwrap(), "--output", "json"]);
    assert_eq!(output.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let starts: Vec<u64> = stdout
        .lines()
        .map(|line| {
            serde_json::from_str::<serde_json::Value>(line).unwrap()["start"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(
        starts,
        [HOUR + 10, HOUR + 20],
        "the readable files, Snappy too"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("skipped {}: ", truncated.display())),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "skipped {}: column start: missing or of another type",
            other.display()
        )),
        "{stderr}"
    );
    assert!(!stderr.contains("good.parquet") && !stderr.contains("snappy.parquet"));
}

#[test]
fn flows_json_uses_the_record_columns_all_of_them() {
    let scratch = temp_dir("commands-json");
    flow_log(scratch.path());
    let output = tollgate(&[
        "flows",
        "--dir",
        scratch.path().to_str().unwrap(),
        "--output",
        "json",
    ]);
    assert_eq!(output.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let first: serde_json::Value = serde_json::from_str(stdout.lines().next().unwrap()).unwrap();
    let keys: BTreeSet<&str> = first
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let columns: BTreeSet<&str> = COLUMNS.iter().map(|c| c.name).collect();
    assert_eq!(keys, columns);
    assert_eq!(first["src_namespace"], "default");
    assert_eq!(first["src_pod"], "web");
    assert_eq!(first["src_labels"], serde_json::json!({"app": "web"}));
    assert_eq!(first["action"], "REJECT");
}

#[test]
fn flows_since_reads_only_the_partitions_that_can_hold_its_records() {
    let scratch = temp_dir("commands-since");
    let dir = scratch.path();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let (web, api) = (pod("default", "web"), pod("default", "api"));
    write(
        dir,
        &format!("{}/recent.parquet", partition(now - 60)),
        &[flow(now - 60, &web, &api, Verdict::Deny)],
        Layout::default(),
    );
    // A loss span that began two hours ago and reaches into the last 15 minutes.
    write(
        dir,
        &format!("{}/lookback.parquet", partition(now - 7200)),
        &[
            flow(now - 7200, &web, &api, Verdict::Deny),
            loss(now - 7100, now - 300),
        ],
        Layout::default(),
    );
    // Thirty days ago, and not readable: never opened.
    let old = dir.join(partition(now - 30 * 86_400)).join("old.parquet");
    std::fs::create_dir_all(old.parent().unwrap()).unwrap();
    std::fs::write(&old, b"not parquet").unwrap();

    let output = tollgate(&[
        "flows",
        "--dir",
        dir.to_str().unwrap(),
        "--since",
        "15m",
        "--output",
        "json",
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("old.parquet"), "{stderr}");
    let statuses: Vec<String> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| {
            let row: serde_json::Value = serde_json::from_str(line).unwrap();
            format!("{} {}", row["log_status"], row["start"])
        })
        .collect();
    assert_eq!(
        statuses,
        [
            format!("\"SKIPDATA\" {}", now - 7100),
            format!("\"OK\" {}", now - 60)
        ]
    );
}

#[test]
fn errors_say_each_cause_once() {
    let scratch = temp_dir("commands-errors");
    let missing = scratch.path().join("absent");
    let missing_arg = missing.to_str().unwrap();
    let bundle = scratch.path().join("bundle");
    let once = |output: &Output| {
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert_eq!(output.status.code(), Some(2), "{stderr}");
        assert_eq!(
            stderr.matches("No such file or directory").count(),
            1,
            "{stderr}"
        );
        assert!(!stderr.contains('{'), "an SDK structure: {stderr}");
        stderr
    };

    let stderr = once(&tollgate(&["flows", "--dir", missing_arg]));
    assert!(
        stderr.starts_with(&format!("error: reading {missing_arg}\n")),
        "{stderr}"
    );
    once(&tollgate(&[
        "evidence",
        "default/web",
        "--from",
        "2h",
        "--out",
        bundle.to_str().unwrap(),
        "--flow-log",
        missing_arg,
    ]));
    let output = command(&[
        "quarantine",
        "default/web",
        "--reason",
        "test",
        "--cluster",
        "lab",
        "--flow-log",
        scratch.path().to_str().unwrap(),
    ])
    .env("KUBECONFIG", &missing)
    .env_remove("KUBERNETES_SERVICE_HOST")
    .env_remove("KUBERNETES_SERVICE_PORT")
    .output()
    .unwrap();
    let stderr = once(&output);
    assert!(
        stderr.starts_with("error: connecting to the API server"),
        "{stderr}"
    );
}
