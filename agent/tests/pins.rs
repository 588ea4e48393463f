//! Restart safety against the kernel: an agent process that loaded, pinned, attached and
//! programmed the probe is killed with SIGKILL; enforcement goes on without it; the next agent
//! finds its maps as they were, takes over its links without a gap, and uninstalling removes
//! everything. Also: clsact filters across an in-process restart, maps of another layout, a
//! pinned map that does not fit, and the lock between two agents.
//!
//! Needs root (CI runs as root); without it every test says SKIPPED loudly and returns.

mod support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::IpAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use aya::maps::MapData;
use tollgate_agent::{
    cni::VethNames,
    endpoints::{Endpoints, discover},
    pins::{PinError, PinnedProbe, maps_dir, pinned_link_target, pinned_map_names},
};
use tollgate_enforcer::{
    probe::{MapsOrigin, ProbeError},
    sync::{PolicyMaps, sync},
};
use tollgate_schemas::{Reason, Verdict, addr, map_names, program_names};

use support::{
    Bpffs, ISOLATE_B, Node, Pod, compiled, eventually, in_netns, ingress_filters, local_pods,
    privileged, program, tcx_programs, udp_reaches,
};

const WAIT_PASS: Duration = Duration::from_secs(2);
const WAIT_DENY: Duration = Duration::from_millis(700);
/// How long an open waits for the pin root's lock once the previous holder is dropped. Not
/// zero: a child that another test thread forks in that instant holds a duplicate of the
/// lock's descriptor until it execs, and so the lock, for a few microseconds.
const LOCK_WAIT: Duration = Duration::from_secs(2);

const CHILD_ROOT: &str = "TOLLGATE_PINS_CHILD_ROOT";
const CHILD_NETNS: &str = "TOLLGATE_PINS_CHILD_NETNS";
const CHILD_PODS: &str = "TOLLGATE_PINS_CHILD_PODS";
const READY: &str = "TOLLGATE-PINS-CHILD-READY";

fn encode(pods: &[Pod]) -> String {
    pods.iter()
        .map(|p| format!("{}|{}|{}|{}", p.key, p.netns, p.ip, p.host_veth))
        .collect::<Vec<_>>()
        .join(";")
}

fn decode(text: &str) -> Vec<Pod> {
    text.split(';')
        .map(|p| {
            let fields: Vec<&str> = p.split('|').collect();
            Pod {
                key: fields[0].to_string(),
                netns: fields[1].to_string(),
                ip: fields[2].parse::<IpAddr>().expect("address"),
                host_veth: fields[3].to_string(),
            }
        })
        .collect()
}

/// The agent the restart test starts in a process of its own and kills: loads and pins the
/// probe, attaches it to the node's veths, isolates `default/b`, says it is ready, and waits
/// to be killed.
#[test]
#[ignore = "the agent process of privileged_a_killed_agent_…; does nothing on its own"]
fn child_agent() {
    let Ok(pin_root) = std::env::var(CHILD_ROOT) else {
        return;
    };
    let netns = std::env::var(CHILD_NETNS).expect("node namespace");
    let pods = decode(&std::env::var(CHILD_PODS).expect("pods"));
    let pinned = PinnedProbe::open(pin_root.as_ref(), LOCK_WAIT).expect("open");
    let mut endpoints = Endpoints::new(pinned);
    let local = local_pods(&pods);
    let applied = in_netns(&netns, || {
        let found = discover(&local, &VethNames::default()).expect("discover");
        endpoints.apply(&found)
    });
    assert!(applied.failed.is_empty(), "{applied:?}");
    let interfaces = endpoints.interfaces();
    program(
        endpoints.attacher_mut().probe(),
        &pods,
        ISOLATE_B,
        &interfaces,
    );
    println!("{READY}");
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// A child process killed when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts [`child_agent`] on `node` and waits until it is ready.
fn start_agent(node: &Node, pin_root: &std::path::Path) -> Killed {
    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args(["child_agent", "--exact", "--ignored", "--nocapture"])
        .env(CHILD_ROOT, pin_root)
        .env(CHILD_NETNS, &node.netns)
        .env(CHILD_PODS, encode(&node.pods))
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the agent process");
    let stdout = child.stdout.take().expect("stdout");
    let child = Killed(child);
    let (ready, wait) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line.contains(READY) {
                let _ = ready.send(());
            }
        }
    });
    wait.recv_timeout(Duration::from_secs(120))
        .expect("the agent process is ready (its stderr says why not)");
    child
}

#[test]
fn privileged_a_killed_agent_leaves_enforcement_in_place_and_the_next_one_adopts_it() {
    if !privileged(
        "privileged_a_killed_agent_leaves_enforcement_in_place_and_the_next_one_adopts_it",
    ) {
        return;
    }
    let mut node = Node::new("rs");
    let a = node.add_pod("a", "198.18.0.40", 1);
    let b = node.add_pod("b", "198.18.0.41", 2);
    let bpffs = Bpffs::new("rs");
    let interfaces: BTreeMap<String, u32> = [&a, &b]
        .iter()
        .map(|pod| (pod.key.clone(), node.ifindex(&pod.host_veth)))
        .collect();

    // The first agent enforces: b is isolated, a is not.
    let mut agent = start_agent(&node, &bpffs.root);
    assert!(!udp_reaches(&a, &b, WAIT_DENY), "a → b, old agent");
    assert!(udp_reaches(&b, &a, WAIT_PASS), "b → a, old agent");
    let link = bpffs.root.join("links").join(&a.host_veth).join("from_pod");
    let (old_program, ifindex) = pinned_link_target(&link).expect("pinned link");
    assert_eq!(ifindex, interfaces[&a.key]);

    // Killed: no drop, no cleanup. The links and maps are pinned: still enforced, with the
    // same entries (were the maps gone, strict mode would deny b → a as well).
    agent.0.kill().expect("SIGKILL");
    agent.0.wait().expect("reaped");
    drop(agent);
    assert!(!udp_reaches(&a, &b, WAIT_DENY), "a → b, no agent");
    assert!(udp_reaches(&b, &a, WAIT_PASS), "b → a, no agent");
    assert_eq!(tcx_programs(&node.netns, &a.host_veth), (1, 1));

    // The next agent: the maps as the old one left them, its events still unread.
    let mut pinned = PinnedProbe::open(&bpffs.root, Duration::from_secs(5)).expect("reopen");
    assert_eq!(pinned.origin(), MapsOrigin::Reused);
    let expected = compiled(&node.pods, ISOLATE_B, &interfaces);
    let held = pinned.probe().policy_maps().read().expect("read the maps");
    assert_eq!(held, expected.desired);
    // The first sync, for the pods discovery finds, before adopting: nothing to change.
    let local = node.local_pods();
    let found =
        in_netns(&node.netns, || discover(&local, &VethNames::default())).expect("discover");
    assert_eq!(found.interfaces(), interfaces);
    let stats = sync(&mut pinned.probe().policy_maps(), &expected.desired).expect("sync");
    assert_eq!((stats.upserts, stats.deletes), (0, 0));
    let mut events = pinned.probe().take_events().expect("events");
    let denied = events.drain().into_iter().any(|event| {
        event.verdict == Verdict::Deny as u8
            && event.reason == Reason::IsolatedNoMatch as u8
            && addr::from_bytes(event.src_addr) == a.ip
            && addr::from_bytes(event.dst_addr) == b.ip
    });
    assert!(denied, "the denies of a → b are in the ring buffer");

    // Adopt: the same links, now running this agent's programs; still one per hook.
    let adoption = in_netns(&node.netns, || pinned.adopt()).expect("adopt");
    let mut adopted: Vec<String> = adoption.adopted.iter().map(|v| v.ifname.clone()).collect();
    adopted.sort();
    assert_eq!(adopted, [a.host_veth.clone(), b.host_veth.clone()]);
    assert!(adoption.stale.is_empty() && adoption.old_layouts.is_empty());
    let new_program = pinned
        .probe()
        .program(program_names::FROM_POD)
        .expect("program")
        .info()
        .expect("program info")
        .id();
    let (running, _) = pinned_link_target(&link).expect("pinned link");
    assert_ne!(old_program, new_program);
    assert_eq!(running, new_program);
    assert_eq!(tcx_programs(&node.netns, &a.host_veth), (1, 1));
    assert_eq!(tcx_programs(&node.netns, &b.host_veth), (1, 1));
    assert!(!udp_reaches(&a, &b, WAIT_DENY), "a → b, adopted");

    // The endpoints are attached already: nothing to attach. A change of policy reaches the
    // adopted links.
    let mut endpoints = Endpoints::new(pinned);
    let applied = in_netns(&node.netns, || endpoints.apply(&found));
    assert!(applied.attached.is_empty() && applied.detached.is_empty());
    assert_eq!(endpoints.interfaces(), interfaces);
    program(
        endpoints.attacher_mut().probe(),
        &node.pods,
        "",
        &interfaces,
    );
    assert!(
        udp_reaches(&a, &b, WAIT_PASS),
        "a → b, b no longer isolated"
    );

    // Uninstall: nothing attached, nothing pinned; the pods are on their own again.
    let uninstalled = endpoints.into_attacher().uninstall().expect("uninstall");
    assert_eq!(uninstalled.veths.len(), 2);
    assert!(!bpffs.root.exists());
    // An unpinned link is released by the kernel's deferred work (bpf_link_put), not by the
    // unlink itself: under load it detaches a moment later.
    for pod in [&a, &b] {
        eventually(&format!("{} detached", pod.host_veth), || {
            tcx_programs(&node.netns, &pod.host_veth) == (0, 0)
        });
    }
    drop(node.add_pod("c", "198.18.0.42", 3));
    assert!(
        udp_reaches(&a, node.pod("c"), WAIT_PASS),
        "a → c, nothing attached"
    );
}

#[test]
fn privileged_clsact_filters_stay_when_the_agent_ends_and_are_taken_over() {
    if !privileged("privileged_clsact_filters_stay_when_the_agent_ends_and_are_taken_over") {
        return;
    }
    let mut node = Node::new("rc");
    let a = node.add_pod("a", "198.18.0.50", 1);
    let b = node.add_pod("b", "198.18.0.51", 2);
    let bpffs = Bpffs::new("rc");
    let filters = |ifname: &str| ingress_filters(&node.netns, ifname);
    let local = node.local_pods();

    let mut pinned = PinnedProbe::open(&bpffs.root, LOCK_WAIT).expect("open");
    pinned.prefer_clsact(true);
    let mut endpoints = Endpoints::new(pinned);
    in_netns(&node.netns, || {
        let found = discover(&local, &VethNames::default()).expect("discover");
        endpoints.apply(&found)
    });
    let interfaces = endpoints.interfaces();
    program(
        endpoints.attacher_mut().probe(),
        &node.pods,
        ISOLATE_B,
        &interfaces,
    );
    assert!(!udp_reaches(&a, &b, WAIT_DENY), "a → b, first agent");
    // The agent ends (everything of it dropped): its filters stay.
    drop(endpoints);
    assert_eq!(filters(&a.host_veth).matches("direct-action").count(), 1);
    assert!(!udp_reaches(&a, &b, WAIT_DENY), "a → b, no agent");
    assert!(udp_reaches(&b, &a, WAIT_PASS), "b → a, no agent");

    let mut pinned = PinnedProbe::open(&bpffs.root, LOCK_WAIT).expect("reopen");
    assert_eq!(pinned.origin(), MapsOrigin::Reused);
    let adoption = in_netns(&node.netns, || pinned.adopt()).expect("adopt");
    assert_eq!(adoption.adopted.len(), 2);
    let new_program = pinned
        .probe()
        .program(program_names::FROM_POD)
        .expect("program")
        .info()
        .expect("program info")
        .id();
    let shown = filters(&a.host_veth);
    assert_eq!(shown.matches("direct-action").count(), 1, "{shown}");
    assert!(shown.contains(&format!(" id {new_program} ")), "{shown}");
    program(pinned.probe(), &node.pods, "", &interfaces);
    assert!(
        udp_reaches(&a, &b, WAIT_PASS),
        "a → b, adopted, b not isolated"
    );

    in_netns(&node.netns, || pinned.uninstall()).expect("uninstall");
    assert!(!filters(&a.host_veth).contains("direct-action"));
    assert!(!filters(&b.host_veth).contains("direct-action"));
    assert!(!bpffs.root.exists());
}

#[test]
fn privileged_maps_of_another_layout_go_and_a_pinned_map_that_does_not_fit_is_refused() {
    if !privileged(
        "privileged_maps_of_another_layout_go_and_a_pinned_map_that_does_not_fit_is_refused",
    ) {
        return;
    }
    let bpffs = Bpffs::new("ly");
    let pinned = PinnedProbe::open(&bpffs.root, LOCK_WAIT).expect("open");
    assert_eq!(pinned.origin(), MapsOrigin::Created);
    let ours = maps_dir(&bpffs.root);
    for name in pinned_map_names() {
        assert!(ours.join(name).exists(), "{name} pinned");
    }
    // An earlier agent's layout (stood in for by a second pin of one of our maps).
    let old = bpffs.root.join("maps").join("0123456789abcdef");
    std::fs::create_dir_all(&old).unwrap();
    MapData::from_pin(ours.join(map_names::CONFIG))
        .expect("open the pinned map")
        .pin(old.join(map_names::CONFIG))
        .expect("pin it again");
    drop(pinned);

    let mut pinned = PinnedProbe::open(&bpffs.root, LOCK_WAIT).expect("reopen");
    assert_eq!(pinned.origin(), MapsOrigin::Reused);
    let adoption = pinned.adopt().expect("adopt");
    assert_eq!(adoption.old_layouts, ["0123456789abcdef"]);
    assert!(!old.exists() && ours.exists());
    pinned.uninstall().expect("uninstall");

    // A map of another shape under one of our names is never bound to the programs.
    let other = Bpffs::new("ly2");
    let layout = maps_dir(&other.root);
    std::fs::create_dir_all(&layout).unwrap();
    let donor = PinnedProbe::open(&bpffs.root, LOCK_WAIT).expect("open a donor");
    MapData::from_pin(maps_dir(&bpffs.root).join(map_names::COUNTERS))
        .expect("open")
        .pin(layout.join(map_names::CONFIG))
        .expect("pin under the wrong name");
    match PinnedProbe::open(&other.root, LOCK_WAIT) {
        Err(PinError::Probe(ProbeError::PinnedMapMismatch { name, .. })) => {
            assert_eq!(name, map_names::CONFIG)
        }
        other => panic!("expected a mismatch, got {other:?}"),
    }
    donor.uninstall().expect("uninstall");
}

#[test]
fn privileged_a_second_agent_waits_for_the_first() {
    if !privileged("privileged_a_second_agent_waits_for_the_first") {
        return;
    }
    let bpffs = Bpffs::new("lk");
    let first = PinnedProbe::open(&bpffs.root, LOCK_WAIT).expect("open");
    match PinnedProbe::open(&bpffs.root, Duration::from_millis(300)) {
        Err(PinError::Locked { .. }) => {}
        other => panic!("expected the lock to be held, got {other:?}"),
    }
    match tollgate_agent::pins::uninstall(&bpffs.root) {
        Err(PinError::Locked { .. }) => {}
        other => panic!("uninstall under a running agent, got {other:?}"),
    }
    drop(first);
    let second = PinnedProbe::open(&bpffs.root, LOCK_WAIT).expect("open after the first");
    drop(second);
    let uninstalled = tollgate_agent::pins::uninstall(&bpffs.root).expect("uninstall");
    assert!(uninstalled.removed_root);
    assert!(!bpffs.root.exists());
}
