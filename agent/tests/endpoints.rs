//! Endpoint discovery and attach on a node-shaped set of namespaces: host veths `eni…` with
//! /32 and /128 routes as the VPC CNI makes them, discovered from inside the node namespace,
//! the probe attached (pinned) and enforcing, and a deleted pod's veth leaving nothing behind;
//! then each other wiring of the VPC CNI: a branch-ENI pod in strict mode (a `vlan…` veth, its
//! route in a per-VLAN table, its traffic through `vlan.eth.<id>` and a VPC namespace), a custom
//! veth prefix read from a CNI configuration, and a pod on two interfaces (multi-NIC), one
//! endpoint on both.
//!
//! Needs root (CI runs as root); without it every test says SKIPPED loudly and returns.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use tollgate_agent::{
    cni::{PrefixSource, VethNames},
    endpoints::{Applied, Endpoints, Veth, discover},
    pins::PinnedProbe,
};

use support::{
    Bpffs, Node, Pod, Wiring, in_netns, ingress_filters, ip, privileged, program,
    program_by_address, tcx_programs, udp_reaches,
};
use tollgate_test_support::temp_dir;

const WAIT_PASS: Duration = Duration::from_secs(2);
const WAIT_DENY: Duration = Duration::from_millis(700);

#[test]
fn privileged_pods_are_found_on_their_veths_attached_enforced_and_cleaned_up() {
    if !privileged("privileged_pods_are_found_on_their_veths_attached_enforced_and_cleaned_up") {
        return;
    }
    let mut node = Node::new("ep");
    let a = node.add_pod("a", "198.18.0.10", 1);
    let b = node.add_pod("b", "198.18.0.11", 2);
    let c = node.add_pod("c", "2001:db8:198:18::c", 3);
    let pods = node.local_pods();

    // Discovery, from inside the node namespace: each pod on its veth, by the kernel's
    // ifindex there.
    let found = in_netns(&node.netns, || discover(&pods, &VethNames::default())).expect("discover");
    let expected: BTreeMap<String, Veth> = [&a, &b, &c]
        .iter()
        .map(|pod| {
            (
                pod.key.clone(),
                Veth {
                    ifname: pod.host_veth.clone(),
                    ifindex: node.ifindex(&pod.host_veth),
                },
            )
        })
        .collect();
    assert_eq!(found.veths, expected);
    assert!(found.unrouted.is_empty() && found.conflicts.is_empty());
    // The root namespace has none of these routes.
    let outside = discover(&pods, &VethNames::default()).expect("discover outside");
    assert!(outside.veths.is_empty(), "{outside:?}");
    // Another prefix lists none of the veths before their pods are named, but finds the
    // pods on them by their routes, and says they are outside its names.
    let names = VethNames::with_prefix("abc", PrefixSource::Settings).expect("prefix");
    let other = in_netns(&node.netns, || discover(&pods, &names)).expect("discover");
    assert!(other.links.is_empty(), "{other:?}");
    assert_eq!(other.veths, expected);
    assert_eq!(other.outside_names.len(), 3);

    // Attach: both hooks of every veth, pinned.
    let bpffs = Bpffs::new("ep");
    let pinned = PinnedProbe::open(&bpffs.root, Duration::ZERO).expect("open");
    let mut endpoints = Endpoints::new(pinned);
    let applied = in_netns(&node.netns, || endpoints.apply(&found));
    assert!(applied.failed.is_empty(), "{applied:?}");
    assert_eq!(applied.attached.len(), 3);
    for pod in [&a, &b, &c] {
        assert_eq!(
            tcx_programs(&node.netns, &pod.host_veth),
            (1, 1),
            "{}",
            pod.key
        );
        for program in ["from_pod", "to_pod"] {
            assert!(
                bpffs
                    .root
                    .join("links")
                    .join(&pod.host_veth)
                    .join(program)
                    .exists()
            );
        }
    }
    let interfaces = endpoints.interfaces();
    assert_eq!(
        interfaces,
        expected
            .iter()
            .map(|(pod, veth)| (pod.clone(), veth.ifindex))
            .collect()
    );
    // Applying the same discovery again changes nothing.
    let again = in_netns(&node.netns, || endpoints.apply(&found));
    assert!(again.attached.is_empty() && again.detached.is_empty() && again.failed.is_empty());

    // Enforced: in strict mode, pods that are not endpoints yet are denied…
    assert!(!udp_reaches(&a, &b, WAIT_DENY), "a → b before the sync");
    // …and pass once the compiler made them endpoints (no policy selects them)…
    program(
        endpoints.attacher_mut().probe(),
        &node.pods,
        "",
        &interfaces,
    );
    assert!(udp_reaches(&a, &b, WAIT_PASS), "a → b, no policy");
    assert!(udp_reaches(&b, &a, WAIT_PASS), "b → a, no policy");
    // …until a policy isolates b.
    program(
        endpoints.attacher_mut().probe(),
        &node.pods,
        support::ISOLATE_B,
        &interfaces,
    );
    assert!(!udp_reaches(&a, &b, WAIT_DENY), "a → b, b isolated");

    // b deleted: its veth and route vanish with it; the next pass drops its bookkeeping and
    // pins (no detach needed: its links went with the veth).
    node.delete_pod("b");
    let pods = node.local_pods();
    let found = in_netns(&node.netns, || discover(&pods, &VethNames::default())).expect("discover");
    assert_eq!(found.veths.len(), 2);
    let applied = in_netns(&node.netns, || endpoints.apply(&found));
    assert_eq!(applied.detached, std::slice::from_ref(&b.host_veth));
    assert!(applied.failed.is_empty(), "{applied:?}");
    assert!(!bpffs.root.join("links").join(&b.host_veth).exists());
    assert!(!endpoints.interfaces().contains_key(&b.key));
    assert_eq!(endpoints.interfaces().len(), 2);
    assert_eq!(tcx_programs(&node.netns, &a.host_veth), (1, 1));

    // A pod the cluster no longer names here, whose veth still exists: no endpoint any more,
    // but the probe stays on the veth (its traffic is an unknown endpoint's) until it goes.
    let only_a: Vec<_> = node
        .local_pods()
        .into_iter()
        .filter(|pod| pod.pod == a.key)
        .collect();
    let found =
        in_netns(&node.netns, || discover(&only_a, &VethNames::default())).expect("discover");
    let applied = in_netns(&node.netns, || endpoints.apply(&found));
    assert_eq!(applied, Applied::default());
    assert_eq!(tcx_programs(&node.netns, &c.host_veth), (1, 1));
    assert_eq!(
        endpoints.interfaces().into_keys().collect::<Vec<_>>(),
        std::slice::from_ref(&a.key)
    );

    // Uninstall: nothing attached, nothing pinned.
    let uninstalled = endpoints.into_attacher().uninstall().expect("uninstall");
    assert_eq!(
        uninstalled.veths,
        [a.host_veth.clone(), c.host_veth.clone()]
    );
    for pod in [&a, &c] {
        assert_eq!(tcx_programs(&node.netns, &pod.host_veth), (0, 0));
    }
    assert!(!bpffs.root.exists());
}

#[test]
fn privileged_a_veth_recreated_under_its_name_is_attached_again() {
    if !privileged("privileged_a_veth_recreated_under_its_name_is_attached_again") {
        return;
    }
    let mut node = Node::new("re");
    let a = node.add_pod("a", "198.18.0.20", 1);
    let bpffs = Bpffs::new("re");
    let pinned = PinnedProbe::open(&bpffs.root, Duration::ZERO).expect("open");
    let mut endpoints = Endpoints::new(pinned);
    let pods = node.local_pods();
    let first = in_netns(&node.netns, || {
        let found = discover(&pods, &VethNames::default()).expect("discover");
        endpoints.apply(&found);
        found
    });
    let old_index = first.veths[&a.key].ifindex;

    // The VPC CNI deletes a leftover host veth of the same name and creates it anew.
    node.delete_pod("a");
    let a = node.add_pod("a", "198.18.0.20", 1);
    let new_index = node.ifindex(&a.host_veth);
    assert_ne!(old_index, new_index);
    let applied = in_netns(&node.netns, || {
        let found = discover(&pods, &VethNames::default()).expect("discover");
        endpoints.apply(&found)
    });
    assert_eq!(applied.detached, std::slice::from_ref(&a.host_veth));
    assert_eq!(applied.attached.len(), 1);
    assert_eq!(endpoints.interfaces()[&a.key], new_index);
    assert_eq!(tcx_programs(&node.netns, &a.host_veth), (1, 1));
    let uninstalled = endpoints.into_attacher().uninstall().expect("uninstall");
    assert!(uninstalled.removed_root);
}

#[test]
fn privileged_clsact_attach_and_detach() {
    if !privileged("privileged_clsact_attach_and_detach") {
        return;
    }
    let mut node = Node::new("cl");
    let a = node.add_pod("a", "198.18.0.30", 1);
    let b = node.add_pod("b", "198.18.0.31", 2);
    let bpffs = Bpffs::new("cl");
    let mut pinned = PinnedProbe::open(&bpffs.root, Duration::ZERO).expect("open");
    pinned.prefer_clsact(true);
    let mut endpoints = Endpoints::new(pinned);
    let pods = node.local_pods();
    let applied = in_netns(&node.netns, || {
        let found = discover(&pods, &VethNames::default()).expect("discover");
        endpoints.apply(&found)
    });
    assert_eq!(applied.attached.len(), 2, "{applied:?}");
    assert_eq!(tcx_programs(&node.netns, &a.host_veth), (0, 0));
    assert!(
        bpffs
            .root
            .join("links")
            .join(&a.host_veth)
            .join("clsact")
            .is_dir()
    );
    let filters = ingress_filters(&node.netns, &a.host_veth);
    assert!(filters.contains("from_pod"), "{filters}");
    assert!(!udp_reaches(&a, &b, WAIT_DENY), "a → b before the sync");
    let interfaces = endpoints.interfaces();
    program(
        endpoints.attacher_mut().probe(),
        &node.pods,
        "",
        &interfaces,
    );
    assert!(udp_reaches(&a, &b, WAIT_PASS), "a → b, no policy");

    // The probe stays on a veth as long as it exists (a pod the cluster does not name is an
    // unknown endpoint). Once a veth is not wanted — here: left out of the discovery, as a
    // veth recreated under its name with another ifindex is — its filters are deleted.
    let only_b: Vec<_> = pods.into_iter().filter(|p| p.pod == b.key).collect();
    let applied = in_netns(&node.netns, || {
        let mut found = discover(&only_b, &VethNames::default()).expect("discover");
        assert!(found.links.iter().any(|l| l.ifname == a.host_veth));
        found.links.retain(|l| l.ifname != a.host_veth);
        endpoints.apply(&found)
    });
    assert_eq!(
        applied.detached,
        std::slice::from_ref(&a.host_veth),
        "{applied:?}"
    );
    let filters = ingress_filters(&node.netns, &a.host_veth);
    assert!(!filters.contains("from_pod"), "{filters}");
    in_netns(&node.netns, || endpoints.into_attacher().uninstall()).expect("uninstall");
    let filters = ingress_filters(&node.netns, &b.host_veth);
    assert!(!filters.contains("from_pod"), "{filters}");
}

/// One wiring of the VPC CNI, discovered, attached and enforced: `a` is a regular pod, `b`
/// the pod under test; in strict mode both are denied until the sync, pass after it, and `b`
/// is isolated by [`support::ISOLATE_B`] (ingress only: `b → a` still passes).
fn attach_and_enforce(node: &Node, a: &Pod, b: &Pod, names: &VethNames, tag: &str) {
    let pods = node.local_pods();
    let found = in_netns(&node.netns, || discover(&pods, names)).expect("discover");
    assert!(
        found.unrouted.is_empty() && found.conflicts.is_empty(),
        "{found:?}"
    );
    for pod in [a, b] {
        assert_eq!(
            found.veths[&pod.key],
            Veth {
                ifname: pod.host_veth.clone(),
                ifindex: node.ifindex(&pod.host_veth),
            }
        );
    }
    // Pod veths only: never `vlan.eth.<id>` or the node's ENIs.
    let links: Vec<&str> = found.links.iter().map(|l| l.ifname.as_str()).collect();
    assert_eq!(
        links.len(),
        2,
        "{links:?}: only the pods' veths carry the probe"
    );

    let bpffs = Bpffs::new(tag);
    let pinned = PinnedProbe::open(&bpffs.root, Duration::ZERO).expect("open");
    let mut endpoints = Endpoints::new(pinned);
    let applied = in_netns(&node.netns, || endpoints.apply(&found));
    assert!(
        applied.failed.is_empty() && applied.attached.len() == 2,
        "{applied:?}"
    );
    assert_eq!(tcx_programs(&node.netns, &b.host_veth), (1, 1));
    assert!(!udp_reaches(a, b, WAIT_DENY), "a → b before the sync");
    assert!(!udp_reaches(b, a, WAIT_DENY), "b → a before the sync");
    let interfaces = endpoints.interfaces();
    program(
        endpoints.attacher_mut().probe(),
        &node.pods,
        "",
        &interfaces,
    );
    assert!(udp_reaches(a, b, WAIT_PASS), "a → b, no policy");
    assert!(udp_reaches(b, a, WAIT_PASS), "b → a, no policy");
    program(
        endpoints.attacher_mut().probe(),
        &node.pods,
        support::ISOLATE_B,
        &interfaces,
    );
    assert!(!udp_reaches(a, b, WAIT_DENY), "a → b, b isolated");
    assert!(
        udp_reaches(b, a, WAIT_PASS),
        "b → a, b isolated for ingress only"
    );
    let uninstalled =
        in_netns(&node.netns, || endpoints.into_attacher().uninstall()).expect("uninstall");
    assert!(uninstalled.removed_root);
}

#[test]
fn privileged_a_branch_eni_pod_in_strict_mode_is_found_in_its_vlan_table() {
    if !privileged("privileged_a_branch_eni_pod_in_strict_mode_is_found_in_its_vlan_table") {
        return;
    }
    let mut node = Node::new("sgp");
    let a = node.add_pod("a", "198.18.0.60", 1);
    let b = node.add_wired_pod("b", "198.18.0.61", 2, Wiring::BranchStrict { vlan: 1 });
    assert!(b.host_veth.starts_with("vlan"));
    // The pod's route is in table 101 only, reached through the `iif` rules.
    let main = ip(&["-n", &node.netns, "route", "show", "table", "main"]);
    assert!(!main.contains("198.18.0.61"), "{main}");
    let rules = ip(&["-n", &node.netns, "rule", "show"]);
    assert!(rules.contains("lookup 101"), "{rules}");
    attach_and_enforce(&node, &a, &b, &VethNames::default(), "sgp");
}

#[test]
fn privileged_a_custom_veth_prefix_is_followed_from_the_cni_config() {
    if !privileged("privileged_a_custom_veth_prefix_is_followed_from_the_cni_config") {
        return;
    }
    let files = temp_dir("prefix");
    let conflist = files.path().join("10-aws.conflist");
    std::fs::write(
        &conflist,
        r#"{"cniVersion": "0.4.0", "name": "aws-cni", "plugins": [
             {"name": "aws-cni", "type": "aws-cni", "vethPrefix": "tgx", "podSGEnforcingMode": "strict"},
             {"name": "egress-cni", "type": "egress-cni"}]}"#,
    )
    .expect("write the conflist");
    let (names, problems) = VethNames::load(None, &conflist, None);
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(names.prefix(), "tgx");

    let mut node = Node::new("px");
    let a = node.add_wired_pod("a", "198.18.0.70", 1, Wiring::Regular { prefix: "tgx" });
    let b = node.add_wired_pod("b", "198.18.0.71", 2, Wiring::Regular { prefix: "tgx" });
    // The default names list none of these veths (no probe before the cluster names a pod),
    // but find the named pods on them by their routes, and say so.
    let pods = node.local_pods();
    let blind = in_netns(&node.netns, || discover(&pods, &VethNames::default())).expect("discover");
    assert!(blind.links.is_empty(), "{blind:?}");
    assert_eq!(
        blind.outside_names.values().collect::<Vec<_>>(),
        [&a.host_veth, &b.host_veth]
    );
    attach_and_enforce(&node, &a, &b, &names, "px");

    // A prefix the VPC CNI would refuse: named with its file and field, and the default used.
    std::fs::write(
        &conflist,
        r#"{"plugins": [{"type": "aws-cni", "vethPrefix": "toolong"}]}"#,
    )
    .expect("write the conflist");
    let (names, problems) = VethNames::load(None, &conflist, None);
    assert_eq!(names, VethNames::default());
    let problem = problems[0].to_string();
    assert!(
        problem.contains("10-aws.conflist: plugins[type=aws-cni].vethPrefix")
            && problem.contains("longer than 4"),
        "{problem}"
    );
}

#[test]
fn privileged_a_pod_on_two_interfaces_is_one_endpoint_on_both() {
    if !privileged("privileged_a_pod_on_two_interfaces_is_one_endpoint_on_both") {
        return;
    }
    let mut node = Node::new("mnic");
    let a = node.add_pod("a", "198.18.0.80", 1);
    let b = node.add_pod("b", "198.18.0.81", 2);
    // b is a multi-NIC pod: a second veth for its second address.
    let b2 = node.add_interface(&b, "198.18.0.82", 3);
    let pods = node.local_pods();
    let found = in_netns(&node.netns, || discover(&pods, &VethNames::default())).expect("discover");
    assert!(found.conflicts.is_empty(), "{found:?}");
    assert_eq!(found.veths[&b.key].ifname, b.host_veth);
    assert_eq!(
        found.extra[&b.key]
            .iter()
            .map(|(ip, veth)| (*ip, veth.ifname.clone()))
            .collect::<Vec<_>>(),
        [(b2.ip, b2.host_veth.clone())]
    );
    let bpffs = Bpffs::new("mnic");
    let pinned = PinnedProbe::open(&bpffs.root, Duration::ZERO).expect("open");
    let mut endpoints = Endpoints::new(pinned);
    let applied = in_netns(&node.netns, || endpoints.apply(&found));
    assert!(
        applied.failed.is_empty() && applied.attached.len() == 3,
        "{applied:?}"
    );
    for ifname in [&b.host_veth, &b2.host_veth] {
        assert_eq!(tcx_programs(&node.netns, ifname), (1, 1), "{ifname}");
    }
    // Strict mode: denied from both addresses before the sync…
    assert!(!udp_reaches(&b, &a, WAIT_DENY), "b → a before the sync");
    assert!(
        !udp_reaches(&b2, &a, WAIT_DENY),
        "b's second address → a before the sync"
    );
    // …one endpoint on both veths after it, each address on its own…
    let (interfaces, addresses) = (endpoints.interfaces(), endpoints.address_interfaces());
    assert_eq!(
        addresses,
        BTreeMap::from([(b2.ip, node.ifindex(&b2.host_veth))])
    );
    let compiled = program_by_address(
        endpoints.attacher_mut().probe(),
        &node.pods,
        "",
        &interfaces,
        &addresses,
    );
    assert_eq!(
        compiled.endpoint_pods.len(),
        2,
        "a and b, one endpoint each"
    );
    for (from, to) in [(&b, &a), (&b2, &a), (&a, &b), (&a, &b2)] {
        assert!(
            udp_reaches(from, to, WAIT_PASS),
            "{} → {}, no policy",
            from.ip,
            to.ip
        );
    }
    // …and a policy that isolates b holds on both.
    program_by_address(
        endpoints.attacher_mut().probe(),
        &node.pods,
        support::ISOLATE_B,
        &interfaces,
        &addresses,
    );
    assert!(!udp_reaches(&a, &b, WAIT_DENY), "a → b, b isolated");
    assert!(
        !udp_reaches(&a, &b2, WAIT_DENY),
        "a → b's second address, b isolated"
    );
    in_netns(&node.netns, || endpoints.into_attacher().uninstall()).expect("uninstall");
}
