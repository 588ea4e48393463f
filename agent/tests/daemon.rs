//! `run_agent` end to end on a node-shaped set of namespaces (the VPC CNI's wiring, addresses
//! of 198.18.0.0/24 inside them only): a `StaticSource` holding the seed scenario, the probe
//! pinned in a private bpffs, the collector writing to a temporary directory, `/metrics` and
//! the health endpoints on the node namespace's loopback.
//!
//! Needs root (CI runs as root); without it the test says SKIPPED loudly and returns.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::time::Duration;

use tollgate_agent::{
    config::AgentConfig,
    daemon::run_agent,
    endpoints::{DEFAULT_VETH_PREFIX, Endpoints, discover},
    pins::{PinnedProbe, maps_dir, pinned_link_target},
    source::StaticSource,
};
use tollgate_collector::config::SinkConfig;
use tollgate_enforcer::manifest::parse_manifests;

use support::{Bpffs, Node, Pod, in_netns, root, udp_reaches};

const SEED: [&str; 3] = [
    include_str!("../../examples/seed/lab-pods.yaml"),
    include_str!("../../examples/seed/all-deny.yaml"),
    include_str!("../../examples/seed/allow-amazonlinux-to-nginx.yaml"),
];

const WAIT_PASS: Duration = Duration::from_secs(2);
const WAIT_DENY: Duration = Duration::from_millis(700);

/// Whether a TCP connection from `from` to `to` on port 80 is established within `wait`.
fn tcp_reaches(from: &Pod, to: &Pod, wait: Duration) -> bool {
    let address = SocketAddr::new(to.ip, 80);
    let _listener = in_netns(&to.netns, || TcpListener::bind(address).expect("listen"));
    in_netns(&from.netns, || {
        TcpStream::connect_timeout(&address, wait).is_ok()
    })
}

/// `GET path` on `address` in the node namespace: the status and the body.
fn get(node: &Node, address: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = in_netns(&node.netns, || {
        TcpStream::connect_timeout(&address, Duration::from_secs(2)).expect("connect")
    });
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: agent\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("response");
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// A free loopback port of the node namespace (nothing else binds there).
fn free_port(node: &Node) -> SocketAddr {
    in_netns(&node.netns, || {
        TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
    })
}

/// The agent on a thread of its own inside the node namespace; stopped and joined on drop,
/// also when the test fails.
struct RunningAgent {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<(), String>>>,
}

impl RunningAgent {
    fn start(netns: &str, config: AgentConfig, source: StaticSource) -> Self {
        let handle = std::fs::File::open(format!("/run/netns/{netns}")).expect("open netns");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            // SAFETY: the descriptor is open for the whole call; only this thread (and the
            // threads it starts, which inherit it) lives in the node namespace.
            let entered = unsafe { libc::setns(handle.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(entered, 0, "setns: {}", std::io::Error::last_os_error());
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime
                .block_on(run_agent(config, source, async {
                    let _ = stopped.await;
                }))
                .map_err(|e| e.to_string())
        });
        Self {
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    fn stop(mut self) -> Result<(), String> {
        self.finish().expect("agent thread")
    }

    fn finish(&mut self) -> Option<Result<(), String>> {
        drop(self.stop.take());
        let thread = self.thread.take()?;
        Some(
            thread
                .join()
                .unwrap_or_else(|_| Err("agent panicked".to_owned())),
        )
    }
}

impl Drop for RunningAgent {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}

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

/// The seed: its pods and the policies of its last step.
fn seed() -> tollgate_enforcer::snapshot::Snapshot {
    let (snapshot, errors) = parse_manifests(&SEED.join("\n---\n"), "seed");
    assert!(errors.is_empty(), "{errors:?}");
    snapshot
}

/// The agent's settings for `node`: pins in `bpffs`, the HTTP endpoints on free ports of the
/// node namespace, spool and flow files under `files`.
fn agent_config(node: &Node, bpffs: &Bpffs, files: &TempDir) -> AgentConfig {
    let mut config = AgentConfig::default();
    config.agent.bpffs = bpffs.root.clone();
    config.agent.metrics_address = free_port(node);
    config.agent.health_address = free_port(node);
    config.collector.node = "lab-node".to_owned();
    config.collector.spool_dir = files.0.join("spool");
    config.collector.sink = SinkConfig::Local {
        dir: files.0.join("flows"),
    };
    config
}

/// A temporary directory, removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn the_agent_enforces_the_seed_serves_metrics_and_leaves_enforcement_in_place() {
    if !root("run_agent in network namespaces") {
        return;
    }
    let mut node = Node::new("agent");
    let nginx = node.add_pod("nginx", "198.18.0.20", 1);
    let httpd = node.add_pod("httpd", "198.18.0.30", 2);
    let amazonlinux = node.add_pod("amazonlinux", "198.18.0.40", 3);
    let bpffs = Bpffs::new("agent");
    let files =
        TempDir(std::env::temp_dir().join(format!("tollgate-agent-test-{}", std::process::id())));

    // An earlier agent attached the probe (strict) and ended before its first sync: the pods
    // are not endpoints yet, so their traffic is denied.
    {
        let pinned = PinnedProbe::open(&bpffs.root, Duration::ZERO).expect("open");
        let mut endpoints = Endpoints::new(pinned);
        let found = in_netns(&node.netns, || {
            discover(&node.local_pods(), DEFAULT_VETH_PREFIX)
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
    let config = agent_config(&node, &bpffs, &files);
    let (metrics, health) = (config.agent.metrics_address, config.agent.health_address);
    let agent = RunningAgent::start(&node.netns, config, source);

    // Ready once the first pass programmed every local endpoint.
    let mut ready = false;
    for _ in 0..100 {
        let answered = in_netns(&node.netns, || {
            TcpStream::connect_timeout(&health, Duration::from_millis(200)).is_ok()
        });
        if answered && get(&node, health, "/readyz").0 == 200 {
            ready = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(ready, "/readyz never answered 200");
    assert_eq!(get(&node, health, "/healthz").0, 200);

    assert!(
        tcp_reaches(&amazonlinux, &nginx, WAIT_PASS),
        "amazonlinux → nginx:80 is allowed"
    );
    assert!(
        !tcp_reaches(&amazonlinux, &httpd, WAIT_DENY),
        "amazonlinux → httpd:80 is denied"
    );

    let (status, text) = get(&node, metrics, "/metrics");
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
        parquet_files(&files.0.join("flows")) > 0,
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
        &get(node, http, "/metrics").1,
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
    let handle = std::fs::File::open(format!("/run/netns/{netns}")).expect("open netns");
    let (ifname, pin) = (
        std::ffi::CString::new(ifname).expect("name"),
        pin.to_owned(),
    );
    std::thread::spawn(move || {
        // SAFETY: the descriptor is open for the call; only this thread changes namespace.
        let entered = unsafe { libc::setns(handle.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(entered, 0, "setns: {}", std::io::Error::last_os_error());
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
fn new_veths_are_enforced_at_once_and_late_routes_programmed() {
    if !root("run_agent in network namespaces") {
        return;
    }
    let mut node = Node::new("podstart");
    let kube_dns = node.add_pod("kube-dns", "198.18.0.10", 1);
    node.add_pod("nginx", "198.18.0.20", 2);
    node.add_pod("amazonlinux", "198.18.0.40", 4);
    let bpffs = Bpffs::new("podstart");
    let files = TempDir(
        std::env::temp_dir().join(format!("tollgate-podstart-test-{}", std::process::id())),
    );
    let (source, handle) = StaticSource::new(seed());
    let mut config = agent_config(&node, &bpffs, &files);
    config.agent.health_address = config.agent.metrics_address;
    let http = config.agent.metrics_address;
    let agent = RunningAgent::start(&node.netns, config, source);
    let ready = time_until(Duration::from_secs(10), || {
        in_netns(&node.netns, || {
            TcpStream::connect_timeout(&http, Duration::from_millis(100)).is_ok()
        }) && get(&node, http, "/readyz").0 == 200
    });
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
    let (status, text) = get(&node, http, "/metrics");
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
