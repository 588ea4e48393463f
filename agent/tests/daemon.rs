//! `run_agent` end to end on a node-shaped set of namespaces (the VPC CNI's wiring, addresses
//! of 198.18.0.0/24 inside them only): a `StaticSource` holding the seed scenario, the probe
//! pinned in a private bpffs, the collector writing to a temporary directory, `/metrics` and
//! the health endpoints on the node namespace's loopback.
//!
//! Needs root (CI runs as root); without it the test says SKIPPED loudly and returns.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use tollgate_agent::{
    cni::VethNames,
    endpoints::{Endpoints, discover},
    pins::{PinnedProbe, maps_dir, pinned_link_target},
    source::StaticSource,
};
use tollgate_enforcer::manifest::parse_manifests;

use support::{
    Bpffs, Node, Pod, RunningAgent, SEED, agent_config, free_port, http_get, http_ok, in_netns,
    privileged, seed, spawn_in_netns, tcp_reaches, udp_reaches,
};
use tollgate_test_support::temp_dir;

const WAIT_PASS: Duration = Duration::from_secs(2);
const WAIT_DENY: Duration = Duration::from_millis(700);

/// How many Parquet files are under `dir` (at most a few levels deep).
fn parquet_files(dir: &std::path::Path) -> usize {
    let mut count = 0;
    let mut pending = vec![(dir.to_owned(), 0)];
    while let Some((dir, depth)) = pending.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() && depth < 6 {
                pending.push((path, depth + 1));
            } else if path.extension().is_some_and(|e| e == "parquet") {
                count += 1;
            }
        }
    }
    count
}

#[test]
fn privileged_the_agent_enforces_the_seed_serves_metrics_and_leaves_enforcement_in_place() {
    if !privileged(
        "privileged_the_agent_enforces_the_seed_serves_metrics_and_leaves_enforcement_in_place",
    ) {
        return;
    }
    let mut node = Node::new("agent");
    let nginx = node.add_pod("nginx", "198.18.0.20", 1);
    let httpd = node.add_pod("httpd", "198.18.0.30", 2);
    let amazonlinux = node.add_pod("amazonlinux", "198.18.0.40", 3);
    let bpffs = Bpffs::new("agent");
    let files = temp_dir("agent");

    // An earlier agent attached the probe (strict) and ended before its first sync: the pods
    // are not endpoints yet, so their traffic is denied.
    {
        let pinned = PinnedProbe::open(&bpffs.root, Duration::ZERO).expect("open");
        let mut endpoints = Endpoints::new(pinned);
        let found = in_netns(&node.netns, || {
            discover(&node.local_pods(), &VethNames::default())
        })
        .expect("discover");
        let applied = in_netns(&node.netns, || endpoints.apply(&found));
        assert!(
            applied.failed.is_empty() && applied.attached.len() == 3,
            "{applied:?}"
        );
    }
    assert!(
        !tcp_reaches(&amazonlinux, &nginx, WAIT_DENY),
        "amazonlinux → nginx before the first pass"
    );
    let programs = |pod: &Pod| {
        let link = bpffs
            .root
            .join("links")
            .join(&pod.host_veth)
            .join("from_pod");
        pinned_link_target(&link).expect("pinned link").0
    };
    let earlier = programs(&nginx);

    let (source, handle) = StaticSource::new(seed());
    let mut config = agent_config(&node, &bpffs, files.path());
    config.agent.health_address = free_port(&node);
    let (metrics, health) = (config.agent.metrics_address, config.agent.health_address);
    let agent = RunningAgent::start(&node.netns, config, source);

    // Ready once the first pass programmed every local endpoint.
    let mut ready = false;
    for _ in 0..100 {
        if http_ok(&node, health, "/readyz") {
            ready = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(ready, "/readyz never answered 200");
    assert!(http_ok(&node, health, "/healthz"));

    assert!(
        tcp_reaches(&amazonlinux, &nginx, WAIT_PASS),
        "amazonlinux → nginx:80 is allowed"
    );
    assert!(
        !tcp_reaches(&amazonlinux, &httpd, WAIT_DENY),
        "amazonlinux → httpd:80 is denied"
    );

    let (status, text) = http_get(&node, metrics, "/metrics").expect("/metrics answers");
    assert_eq!(status, 200, "{text}");
    let count: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("tollgate_agent_propagation_seconds_count "))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no propagation count in\n{text}"));
    assert!(count >= 1, "{text}");
    assert!(
        text.contains("tollgate_agent_endpoints_enforced 3\n"),
        "{text}"
    );
    assert!(text.contains("tollgate_collector_events_total "), "{text}");
    assert!(
        text.lines()
            .filter_map(|l| l.strip_prefix("tollgate_probe_packets_total{kind=\"deny\"} "))
            .any(|v| v.parse::<u64>().is_ok_and(|n| n > 0)),
        "denied packets counted:\n{text}"
    );

    // The earlier agent's links were adopted: they run this agent's program now.
    assert_ne!(programs(&nginx), earlier);

    // Shutdown leaves the pins: enforcement goes on with no agent running.
    agent.stop().expect("agent stopped cleanly");
    drop(handle);
    // The collector closed its files and shipped them on the way out.
    assert!(
        parquet_files(&files.path().join("flows")) > 0,
        "no flow file shipped"
    );
    assert!(maps_dir(&bpffs.root).is_dir());
    for pod in [&nginx, &httpd, &amazonlinux] {
        assert!(
            bpffs
                .root
                .join("links")
                .join(&pod.host_veth)
                .join("from_pod")
                .exists(),
            "{}",
            pod.key
        );
    }
    assert!(
        !tcp_reaches(&amazonlinux, &httpd, WAIT_DENY),
        "amazonlinux → httpd:80 still denied with no agent"
    );
    assert!(
        tcp_reaches(&amazonlinux, &nginx, WAIT_PASS),
        "amazonlinux → nginx:80 still allowed with no agent"
    );
}

/// The value of the sample `name` (with its labels, if any) in a Prometheus text body.
fn sample(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// `tollgate_agent_endpoints_enforced` as the agent serves it.
fn enforced(node: &Node, http: SocketAddr) -> Option<u64> {
    sample(
        &http_get(node, http, "/metrics")?.1,
        "tollgate_agent_endpoints_enforced",
    )
}

/// Polls `done` every millisecond for at most `limit`; how long it took, if it came true.
fn time_until(limit: Duration, mut done: impl FnMut() -> bool) -> Option<Duration> {
    let started = std::time::Instant::now();
    while started.elapsed() < limit {
        if done() {
            return Some(started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    None
}

/// Watches, from a thread in `netns`, for interface `ifname` to appear and then for `pin`
/// (its probe link) to exist, polling every 50 µs for at most 2 s: the time between the two.
fn watch_attach(
    netns: &str,
    ifname: &str,
    pin: &std::path::Path,
) -> std::thread::JoinHandle<Option<Duration>> {
    let (ifname, pin) = (
        std::ffi::CString::new(ifname).expect("name"),
        pin.to_owned(),
    );
    spawn_in_netns(netns, move || {
        let started = std::time::Instant::now();
        let mut appeared = None;
        while started.elapsed() < Duration::from_secs(2) {
            // SAFETY: a valid NUL-terminated name.
            if appeared.is_none() && unsafe { libc::if_nametoindex(ifname.as_ptr()) } != 0 {
                appeared = Some(std::time::Instant::now());
            }
            if let Some(appeared) = appeared
                && pin.exists()
            {
                return Some(appeared.elapsed());
            }
            std::thread::sleep(Duration::from_micros(50));
        }
        None
    })
}

/// The pod start gap, closed: the VPC CNI wires a pod (veth, host route) before its address
/// reaches the API server. The agent's netlink watch puts the probe on the new veth at once,
/// so in strict mode the pod is denied until the cluster names it and its entries are written;
/// and a pod the cluster already named, whose host route comes late, is programmed without
/// waiting for another cluster change.
#[test]
fn privileged_new_veths_are_enforced_at_once_and_late_routes_programmed() {
    if !privileged("privileged_new_veths_are_enforced_at_once_and_late_routes_programmed") {
        return;
    }
    let mut node = Node::new("podstart");
    let kube_dns = node.add_pod("kube-dns", "198.18.0.10", 1);
    node.add_pod("nginx", "198.18.0.20", 2);
    node.add_pod("amazonlinux", "198.18.0.40", 4);
    let bpffs = Bpffs::new("podstart");
    let files = temp_dir("podstart");
    let (source, handle) = StaticSource::new(seed());
    let config = agent_config(&node, &bpffs, files.path());
    let http = config.agent.metrics_address;
    let agent = RunningAgent::start(&node.netns, config, source);
    let ready = time_until(Duration::from_secs(10), || http_ok(&node, http, "/readyz"));
    assert!(ready.is_some(), "/readyz never answered 200");
    assert_eq!(enforced(&node, http), Some(3));

    // httpd is in the cluster already; the CNI wires it now. Its host route starts a pass.
    let wired = std::time::Instant::now();
    node.add_pod("httpd", "198.18.0.30", 3);
    let programmed = time_until(Duration::from_secs(3), || enforced(&node, http) == Some(4))
        .map(|_| wired.elapsed());
    assert!(
        programmed.is_some(),
        "httpd's late host route did not start a pass"
    );

    // A pod the cluster has not named yet: its veth gets the probe as soon as it exists, and
    // strict mode denies it (an unknown endpoint) while kube-dns accepts anyone.
    let veth = format!("eni{:011x}", 5);
    let pin = bpffs.root.join("links").join(&veth).join("from_pod");
    let watcher = watch_attach(&node.netns, &veth, &pin);
    let newcomer = node.add_pod("newcomer", "198.18.0.50", 5);
    assert_eq!(newcomer.host_veth, veth);
    let attached = watcher.join().expect("watcher");
    assert!(attached.is_some(), "no probe on the new veth");
    assert!(
        !udp_reaches(&newcomer, &kube_dns, WAIT_DENY),
        "an unnamed pod is denied in strict mode"
    );
    let (status, text) = http_get(&node, http, "/metrics").expect("/metrics answers");
    assert_eq!(status, 200);
    assert_eq!(sample(&text, "tollgate_agent_endpoints_enforced"), Some(4));

    // The cluster names it (a namespace without policies): allowed once programmed.
    let guest = "\
apiVersion: v1
kind: Namespace
metadata: {name: guests, labels: {kubernetes.io/metadata.name: guests}}
---
apiVersion: v1
kind: Pod
metadata: {name: newcomer, namespace: guests, labels: {app: newcomer}}
spec: {nodeName: lab-node, containers: [{name: c, image: busybox}]}
status: {phase: Running, podIP: 198.18.0.50, podIPs: [{ip: 198.18.0.50}]}";
    let (snapshot, errors) =
        parse_manifests(&[&SEED[..], &[guest]].concat().join("\n---\n"), "seed");
    assert!(errors.is_empty(), "{errors:?}");
    handle.set(snapshot);
    assert!(
        time_until(Duration::from_secs(3), || enforced(&node, http) == Some(5)).is_some(),
        "the newcomer was never programmed"
    );
    assert!(
        udp_reaches(&newcomer, &kube_dns, WAIT_PASS),
        "the named pod reaches kube-dns"
    );
    eprintln!(
        "veth created → probe attached: {:.2} ms; late host route → programmed: {:.1} ms \
         (from the start of the pod's wiring)",
        attached.unwrap().as_secs_f64() * 1e3,
        programmed.unwrap().as_secs_f64() * 1e3,
    );
    agent.stop().expect("agent stopped cleanly");
    drop(handle);
}
