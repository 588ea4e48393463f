//! `tollgate bench veth` runs both traffic cases through real veths, unfiltered, with the empty
//! program on the hooks and with the probe, and cleans up after itself. A smoke test: the rates
//! are a benchmark's, not asserted beyond being there. Needs root (namespaces, veths, BPF) and
//! iperf3 (setup installs it).

mod support;

use support::privileged;
use tollgate_lab::bench::{VethOptions, veth};

#[test]
fn privileged_bench_veth_measures_both_cases_in_every_mode() {
    if !privileged("privileged_bench_veth_measures_both_cases_in_every_mode") {
        return;
    }
    let results = veth(&VethOptions {
        rules: 100,
        seconds: 1,
        trials: 1,
    })
    .expect("bench veth");
    let cases: Vec<&str> = results.iter().map(|r| r.case).collect();
    assert_eq!(cases, ["TCP, one stream", "UDP, 64-byte datagrams"]);
    assert!(
        results
            .iter()
            .all(|r| r.unfiltered_bps > 0.0 && r.empty_program_bps > 0.0 && r.filtered_bps > 0.0),
        "{results:?}"
    );
    // This process's runs name their namespaces `tg<pid>-…`: none is left.
    let own = format!(
        "{}{}-",
        tollgate_lab::names::NETNS_PREFIX,
        std::process::id()
    );
    let left: Vec<String> = tollgate_lab::topology::list_netns()
        .expect("list namespaces")
        .into_iter()
        .filter(|netns| netns.starts_with(&own))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}
