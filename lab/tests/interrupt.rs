//! SIGTERM in the middle of a lab run: the run stops with `Interrupted` and leaves nothing
//! behind. Its own test binary, so the signal reaches no other test. Needs root.

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

    // Wait until the run has built its namespaces (its handlers are installed before that).
    let mut built = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if list_netns().unwrap().iter().any(|n| n.starts_with(&ours)) {
            built = true;
            break;
        }
    }
    assert!(built, "the run built no namespace within 5 s");
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
}
