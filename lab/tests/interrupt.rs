//! SIGTERM in the middle of a lab run, once its node agent runs: the run stops with
//! `Interrupted` and leaves nothing behind (namespaces, the agent's bpffs). Its own test
//! binary, so the signal reaches no other test. Needs root.

use std::time::Duration;

use tollgate_lab::{LabError, LabOptions, run, topology::list_netns};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_run_and_cleans_up() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("!!!!!!!! SKIPPED (needs root): sigterm_stops_the_run_and_cleans_up !!!!!!!!");
        return;
    }
    let ours = format!("tg{}-", std::process::id());
    let lab = tokio::spawn(async { run(&LabOptions::default()).await });

    // Wait until the run's agent has mounted its bpffs (the namespaces and the signal
    // handlers come before).
    let mut started = false;
    for _ in 0..200 {
        tokio::time::sleep(Duration::from_millis(25)).await;
        if !bpf_mounts(&ours).is_empty() {
            started = true;
            break;
        }
    }
    assert!(started, "the run mounted no bpffs within 5 s");
    // SAFETY: kill with our own pid and a valid signal number.
    assert_eq!(unsafe { libc::kill(libc::getpid(), libc::SIGTERM) }, 0);

    let result = tokio::time::timeout(Duration::from_secs(20), lab)
        .await
        .expect("the run stops promptly")
        .unwrap();
    assert!(
        matches!(result, Err(LabError::Interrupted("SIGTERM"))),
        "{result:?}"
    );
    let left: Vec<String> = list_netns()
        .unwrap()
        .into_iter()
        .filter(|n| n.starts_with(&ours))
        .collect();
    assert_eq!(left, Vec::<String>::new());
    assert_eq!(bpf_mounts(&ours), Vec::<String>::new());
}

/// The mount points of bpffs mounts whose path contains `run`.
fn bpf_mounts(run: &str) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mounts")
        .unwrap()
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            (fields.get(2) == Some(&"bpf") && fields.get(1).is_some_and(|p| p.contains(run)))
                .then(|| fields[1].to_owned())
        })
        .collect()
}
