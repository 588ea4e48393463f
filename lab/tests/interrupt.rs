//! A signal in the middle of a lab run, once its servers run — SIGTERM (a service manager),
//! SIGHUP (the terminal closed) — stops the run with `Interrupted` and leaves nothing behind
//! (namespaces, the agent's bpffs, the server processes and their run directory, the pods'
//! `/etc/netns` files). Its own test binary, so the signals reach no other test; its tests take
//! turns, so each signal reaches one run only. Needs root.

mod support;

use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};
use tollgate_lab::{LabError, LabOptions, run, topology::list_netns};

use support::privileged;
use tollgate_test_support::temp_dir;

/// One run at a time: a signal goes to the whole process, so to every run in it.
static ONE_RUN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn privileged_sigterm_stops_the_run_and_cleans_up() {
    if !privileged("privileged_sigterm_stops_the_run_and_cleans_up") {
        return;
    }
    signal_stops_the_run_and_cleans_up(libc::SIGTERM, "SIGTERM").await;
}

/// A closed terminal sends SIGHUP: without a handler the process would end there and leave
/// the run's namespaces, bpffs mount and attached probe behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn privileged_sighup_stops_the_run_and_cleans_up() {
    if !privileged("privileged_sighup_stops_the_run_and_cleans_up") {
        return;
    }
    // The test's own listener keeps SIGHUP from ending the test binary when the run does not
    // handle it: the run then just goes on, and the test fails on its timeout.
    let _survive = signal(SignalKind::hangup()).unwrap();
    signal_stops_the_run_and_cleans_up(libc::SIGHUP, "SIGHUP").await;
}

async fn signal_stops_the_run_and_cleans_up(number: libc::c_int, name: &'static str) {
    let _turn = ONE_RUN.lock().await;
    let ours = format!("tg{}-", std::process::id());
    // The flow log goes where the test removes it (a run keeps its own on purpose).
    let scratch = temp_dir("lab-interrupt");
    let options = LabOptions {
        out: Some(scratch.path().join("flows")),
        ..LabOptions::default()
    };
    let lab = tokio::spawn(async move { run(&options).await });

    // Wait until the run's servers are up (the namespaces, the signal handlers and the agent
    // come before): its run directory holds nginx's pid file.
    let mut started = false;
    for _ in 0..1200 {
        tokio::time::sleep(Duration::from_millis(25)).await;
        if lab.is_finished() {
            panic!("the run ended before its servers ran: {:?}", lab.await);
        }
        if ours_in(&std::env::temp_dir().to_string_lossy(), &ours)
            .iter()
            .any(|run_dir| {
                std::env::temp_dir()
                    .join(run_dir)
                    .join("default-nginx/nginx.pid")
                    .exists()
            })
        {
            started = true;
            break;
        }
    }
    assert!(started, "the run started no nginx within 30 s");
    // SAFETY: kill with our own pid and a valid signal number.
    assert_eq!(unsafe { libc::kill(libc::getpid(), number) }, 0);

    let result = tokio::time::timeout(Duration::from_secs(20), lab)
        .await
        .unwrap_or_else(|_| panic!("the run did not stop within 20 s of {name}"))
        .unwrap();
    match result {
        Err(LabError::Interrupted(signal)) if signal == name => {}
        Err(error) => panic!("{name}: {error}"),
        Ok(_) => panic!("the run went on to its end: {name} did not stop it"),
    }
    let left: Vec<String> = list_netns()
        .unwrap()
        .into_iter()
        .filter(|n| n.starts_with(&ours))
        .collect();
    assert_eq!(left, Vec::<String>::new());
    assert_eq!(bpf_mounts(&ours), Vec::<String>::new());
    // The servers stopped: their run directory and the pods' /etc/netns directories are gone.
    assert_eq!(
        ours_in(&std::env::temp_dir().to_string_lossy(), &ours),
        Vec::<String>::new()
    );
    assert_eq!(
        ours_in(tollgate_lab::resolv::NETNS_ETC, &ours),
        Vec::<String>::new()
    );
}

/// The names in `dir` that start with `run`.
fn ours_in(dir: &str, run: &str) -> Vec<String> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|name| name.starts_with(run))
        .collect()
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
