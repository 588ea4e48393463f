//! The whole lab, as `tollgate lab` runs it: the seed's three steps with the real probe
//! attached, through kube-proxy's chains, with real nginx, apache2, dnsmasq and curl, on IPv4
//! and IPv6, over TCX and clsact, and with the client on a branch ENI (`--sgp`). Needs root
//! (namespaces, veths, BPF, iptables).

mod support;

use std::time::{Duration, Instant};

use tollgate_lab::{
    Attach, IpFamily, LabOptions, LabReport, NamedEvent, OutputFormat, StepReport, run,
    topology::list_netns,
};
use tollgate_schemas::{Direction, Reason, Verdict, proto};

use support::privileged;
use tollgate_test_support::temp_dir;

fn pod(peer: &Option<String>) -> &str {
    peer.as_deref().unwrap_or("?")
}

fn find<'a>(
    step: &'a StepReport,
    what: &str,
    predicate: impl Fn(&NamedEvent) -> bool,
) -> &'a NamedEvent {
    step.flows.iter().find(|f| predicate(f)).unwrap_or_else(|| {
        panic!(
            "step {}: no event {what}; events: {:#?}",
            step.number, step.flows
        )
    })
}

async fn seed(family: IpFamily, attach: Attach, sgp: bool) -> LabReport {
    let started = Instant::now();
    // The flow log goes where the test removes it (a run keeps its own on purpose).
    let scratch = temp_dir("lab-seed");
    let report = run(&LabOptions {
        output: OutputFormat::Table,
        attach,
        out: Some(scratch.path().join("flows")),
        quarantine: false,
        ip_family: family,
        sgp,
        ocsf: false,
    })
    .await
    .unwrap();
    eprintln!("{}", report.render_table());
    eprintln!(
        "lab ({family}, {attach:?}, sgp {sgp}) took {:?}",
        started.elapsed()
    );
    assert!(report.all_ok(), "{}", report.render_table());
    assert_eq!(report.ip_family, family.name());
    // The seed's denials are the client's egress: decided on its veth, `vlan…` on a branch
    // ENI with --sgp, `eni…` on the node's ENIs otherwise.
    let (eni, prefix) = if sgp {
        ("branch", "vlan")
    } else {
        ("node", "eni")
    };
    for record in report.flow_log.denied.iter().filter(|r| !r.is_loss()) {
        assert_eq!(record.endpoint_eni.as_deref(), Some(eni), "{record:?}");
        assert!(
            record
                .endpoint_interface
                .as_deref()
                .is_some_and(|i| i.starts_with(prefix)),
            "{record:?}"
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(40),
        "the lab takes well under a minute"
    );
    // Everything the run created is gone.
    let prefix = format!("{}-", report.run);
    let left: Vec<String> = list_netns()
        .unwrap()
        .into_iter()
        .filter(|n| n.starts_with(&prefix))
        .collect();
    assert_eq!(left, Vec::<String>::new());
    assert!(
        !std::env::temp_dir()
            .join(format!("{}-run", report.run))
            .exists(),
        "the servers' run directory is removed"
    );
    report
}

/// What the seed shows, flow by flow: the client's egress decided on the Services' ClusterIPs
/// (before kube-proxy's DNAT), the backends' ingress on their own addresses (after it), and
/// the kubelet's probes from the node passing even under all-deny.
fn the_flows_are_the_seeds(report: &LabReport, family: IpFamily) {
    assert_eq!(report.steps.len(), 3);
    assert_eq!(
        report.render(OutputFormat::Json).lines().count(),
        6 + 3 * 3,
        "one JSON line per check, and per step and kubelet probe"
    );
    let node = family.node_address();

    // Step 1: no policy, the flows pass because no policy selects the pods.
    let step1 = &report.steps[0];
    let dns = find(step1, "allowing the DNS query", |f| {
        f.direction == Direction::Egress && f.protocol == proto::UDP && f.dst.port == 53
    });
    assert_eq!(dns.verdict, Verdict::Allow);
    assert_eq!(dns.reason, Reason::NotSelected);
    assert_eq!(pod(&dns.src.pod), "default/amazonlinux");
    assert_eq!(dns.dst.service.as_deref(), Some("kube-system/kube-dns"));
    assert_eq!(dns.dst.pod, None, "addressed to the ClusterIP");
    let delivered = find(step1, "kube-dns receiving the query", |f| {
        f.direction == Direction::Ingress && f.protocol == proto::UDP && f.dst.port == 53
    });
    assert_eq!(pod(&delivered.dst.pod), "kube-system/kube-dns");
    assert_eq!(pod(&delivered.src.pod), "default/amazonlinux");

    // Step 2: all-deny: the client's DNS queries to kube-dns's ClusterIP are denied at its
    // egress; the kubelet still reaches every pod, from the node.
    let step2 = &report.steps[1];
    let denied_dns = find(step2, "denying the DNS query", |f| {
        f.verdict == Verdict::Deny && f.protocol == proto::UDP && f.dst.port == 53
    });
    assert_eq!(denied_dns.direction, Direction::Egress);
    assert_eq!(denied_dns.reason, Reason::IsolatedNoMatch);
    assert_eq!(pod(&denied_dns.src.pod), "default/amazonlinux");
    assert_eq!(
        denied_dns.dst.service.as_deref(),
        Some("kube-system/kube-dns")
    );
    assert_eq!(pod(&denied_dns.endpoint_pod), "default/amazonlinux");
    assert!(
        step2
            .flows
            .iter()
            .all(|f| f.protocol != proto::TCP || f.verdict == Verdict::Deny || f.src.addr == node),
        "nothing but the kubelet reaches a web server in step 2"
    );
    for web in ["default/nginx", "default/httpd"] {
        let probe = find(step2, "the kubelet's probe passing", |f| {
            f.direction == Direction::Ingress && f.dst.pod.as_deref() == Some(web)
        });
        assert_eq!(probe.src.addr, node);
        assert_eq!(
            (probe.verdict, probe.reason),
            (Verdict::Allow, Reason::FromNode)
        );
    }
    assert!(step2.kubelet.iter().all(|p| p.ok() && p.succeeded >= 1));

    // Step 3: the allow policies.
    let step3 = &report.steps[2];
    let httpd = find(step3, "denying amazonlinux → httpd's ClusterIP", |f| {
        f.verdict == Verdict::Deny && f.dst.service.as_deref() == Some("default/httpd")
    });
    assert_eq!(pod(&httpd.src.pod), "default/amazonlinux");
    assert_eq!((httpd.protocol, httpd.dst.port), (proto::TCP, 80));
    assert_eq!(httpd.direction, Direction::Egress);
    assert_eq!(httpd.reason, Reason::IsolatedNoMatch);
    assert_eq!(httpd.reason.name(), "isolated-no-rule-matched");

    let dns = find(step3, "allowing the DNS query by rule", |f| {
        f.verdict == Verdict::Allow && f.reason == Reason::AllowedByRule && f.dst.port == 53
    });
    assert_eq!(
        dns.rule_label(),
        "default/allow-amazonlinux-to-nginx egress[0]"
    );
    let egress = find(step3, "allowing amazonlinux → nginx at its egress", |f| {
        f.direction == Direction::Egress
            && f.verdict == Verdict::Allow
            && f.dst.service.as_deref() == Some("default/nginx")
    });
    assert_eq!(egress.reason, Reason::AllowedByRule);
    assert_eq!(
        egress.rule_label(),
        "default/allow-amazonlinux-to-nginx egress[1]"
    );
    assert_eq!(pod(&egress.endpoint_pod), "default/amazonlinux");
    assert!(egress.packets >= 1);
    let ingress = find(
        step3,
        "allowing amazonlinux → nginx at nginx's ingress",
        |f| {
            f.direction == Direction::Ingress
                && f.verdict == Verdict::Allow
                && f.src.pod.as_deref() == Some("default/amazonlinux")
                && f.dst.pod.as_deref() == Some("default/nginx")
        },
    );
    assert_eq!(ingress.reason, Reason::AllowedByRule);
    assert_eq!(
        ingress.rule_label(),
        "default/allow-nginx-from-amazonlinux ingress[0]"
    );
    assert_eq!(pod(&ingress.endpoint_pod), "default/nginx");
    assert_eq!(ingress.dst.port, 80);

    for step in &report.steps {
        assert_eq!(step.undecodable, 0, "step {}", step.number);
        // No chatter of addresses no pod owns (IPv6: no link-local, no MLD from `::`).
        assert!(
            step.flows
                .iter()
                .all(|f| f.reason != Reason::UnknownEndpoint),
            "step {}: {:#?}",
            step.number,
            step.flows
        );
    }
    let lost = report
        .counters
        .iter()
        .find(|(name, _)| *name == "ringbuf_reserve_failed")
        .map(|(_, value)| *value);
    assert_eq!(lost, Some(0), "no event lost");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn privileged_the_seed_scenario_runs_as_documented_on_ipv4_and_ipv6() {
    if !privileged("privileged_the_seed_scenario_runs_as_documented_on_ipv4_and_ipv6") {
        return;
    }
    for family in [IpFamily::V4, IpFamily::V6] {
        let report = seed(family, Attach::Auto, false).await;
        assert_eq!(report.attach_mode, "tcx", "this kernel has TCX");
        the_flows_are_the_seeds(&report, family);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn privileged_the_seed_scenario_runs_the_same_through_clsact() {
    if !privileged("privileged_the_seed_scenario_runs_the_same_through_clsact") {
        return;
    }
    for family in [IpFamily::V4, IpFamily::V6] {
        let report = seed(family, Attach::Clsact, false).await;
        assert_eq!(report.attach_mode, "clsact");
        the_flows_are_the_seeds(&report, family);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn privileged_the_seed_scenario_runs_the_same_with_the_client_on_a_branch_eni() {
    if !privileged("privileged_the_seed_scenario_runs_the_same_with_the_client_on_a_branch_eni") {
        return;
    }
    // The client's packets leave the node through the VLAN and come back from the VPC, its
    // route is in the VLAN's table only: every check and flow of the seed holds.
    let report = seed(IpFamily::V4, Attach::Auto, true).await;
    let [(pod, host_veth)] = report.branch_eni.as_slice() else {
        panic!("one pod on a branch ENI: {:?}", report.branch_eni);
    };
    assert_eq!(pod, "default/amazonlinux");
    assert!(host_veth.starts_with("vlan"), "{host_veth}");
    the_flows_are_the_seeds(&report, IpFamily::V4);
}
