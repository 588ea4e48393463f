//! SIGTERM in the middle of a lab run, once its servers run: the run stops with `Interrupted`
//! and leaves nothing behind (namespaces, the agent's bpffs, the server processes and their
//! run directory, the pods' `/etc/netns` files). Its own test binary, so the signal reaches no
//! other test. Needs root.

mod support;

use std::time::Duration;

use tollgate_lab::{LabError, LabOptions, run, topology::list_netns};

use support::is_root;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_run_and_cleans_up() {
    if !is_root("sigterm_stops_the_run_and_cleans_up") {
        return;
    }
    let ours = format!("tg{}-", std::process::id());
    let lab = tokio::spawn(async { run(&LabOptions::default()).await });

    // Wait until the run's servers are up (the namespaces, the signal handlers and the agent
    // come before): their run directory holds nginx's pid file.
    let mut started = false;
    for _ in 0..400 {
        tokio::time::sleep(Duration::from_millis(25)).await;
        let run_dir = std::env::temp_dir().join(format!("{ours}0-run"));
        if run_dir.join("default-nginx/nginx.pid").exists() {
            started = true;
            break;
        }
    }
    assert!(started, "the run started no nginx within 10 s");
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
    // The servers stopped: their run directory and the pods' /etc/netns directories are gone.
    let ours_in = |dir: &str| -> Vec<String> {
        std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|name| name.starts_with(&ours))
            .collect()
    };
    assert_eq!(
        ours_in(&std::env::temp_dir().to_string_lossy()),
        Vec::<String>::new()
    );
    assert_eq!(
        ours_in(tollgate_lab::resolv::NETNS_ETC),
        Vec::<String>::new()
    );
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
