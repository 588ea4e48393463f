//! Audit mode end to end (issue 5): `run_agent` on a `StaticSource` in the VPC-CNI-shaped node
//! of `daemon.rs` (addresses of 198.18.0.0/24 inside the test's namespaces only), the collector
//! writing to a temporary directory that is read back at the end.
//!
//! - `privileged_a_namespace_in_audit_mode_passes_would_be_denies_and_records_them`: the seed with
//!   namespace `default` annotated `tollgate.io/enforcement: audit`: amazonlinux → httpd:80
//!   passes (audit-deny), amazonlinux → nginx:80 is allowed by its rule; the annotation removed,
//!   httpd is denied again. The records say which was which.
//! - `privileged_a_policy_in_audit_mode_audits_only_where_every_isolating_policy_does`: the annotation on
//!   the `all-deny` policy instead. A direction of an endpoint is in audit mode only when every
//!   policy isolating it is (`enforcer/src/compile/endpoint.rs`): amazonlinux's egress is also
//!   isolated by `allow-amazonlinux-to-nginx`, so amazonlinux → httpd stays denied at
//!   amazonlinux's egress, while nginx → httpd:80 (nginx's egress and httpd's ingress isolated by
//!   `all-deny` alone) passes as audit-deny. Annotating `allow-amazonlinux-to-nginx` as well lets
//!   amazonlinux → httpd pass too; removing both annotations denies both again.
//!
//! Needs root (CI runs as root); without it the tests say SKIPPED loudly and return.

mod support;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tollgate_agent::source::{StaticHandle, StaticSource};
use tollgate_collector::readback::{Filter, StoredRecord, read_dir, render_table};
use tollgate_enforcer::{compile::ENFORCEMENT_ANNOTATION, snapshot::Snapshot};

use support::{
    Bpffs, Node, Pod, RunningAgent, agent_config, http_get, http_ok, in_netns, privileged, seed,
    tcp_reaches,
};
use tollgate_test_support::temp_dir;

const WAIT_PASS: Duration = Duration::from_secs(2);
const WAIT_DENY: Duration = Duration::from_millis(700);

/// `annotations` with `tollgate.io/enforcement: audit` (or without it when `audit` is false).
fn annotate(annotations: &mut Option<BTreeMap<String, String>>, audit: bool) {
    let annotations = annotations.get_or_insert_with(BTreeMap::new);
    if audit {
        annotations.insert(ENFORCEMENT_ANNOTATION.to_owned(), "audit".to_owned());
    } else {
        annotations.remove(ENFORCEMENT_ANNOTATION);
    }
}

/// The seed with namespace `default` annotated for audit mode.
fn seed_with_namespace_audit() -> Snapshot {
    let mut snapshot = seed();
    let namespace = snapshot
        .namespaces
        .iter_mut()
        .find(|ns| ns.metadata.name.as_deref() == Some("default"))
        .expect("namespace default");
    annotate(&mut namespace.metadata.annotations, true);
    snapshot
}

/// The seed with the policies named in `policies` annotated for audit mode.
fn seed_with_policy_audit(policies: &[&str]) -> Snapshot {
    let mut snapshot = seed();
    for name in policies {
        let policy = snapshot
            .policies
            .iter_mut()
            .find(|p| p.metadata.name.as_deref() == Some(*name))
            .unwrap_or_else(|| panic!("policy {name}"));
        annotate(&mut policy.metadata.annotations, true);
    }
    snapshot
}

/// `tollgate_agent_sync_passes_total` as `/metrics` says it (0 while nothing answers).
fn passes(node: &Node, http: SocketAddr) -> u64 {
    let Some((200, text)) = http_get(node, http, "/metrics") else {
        return 0;
    };
    text.lines()
        .find_map(|l| l.strip_prefix("tollgate_agent_sync_passes_total "))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Waits (10 s at most) until the agent has completed more than `done` passes — the maps
/// synced and the collector's identities updated — and is ready.
fn wait_pass(node: &Node, http: SocketAddr, done: u64) {
    for _ in 0..100 {
        if passes(node, http) > done && http_ok(node, http, "/readyz") {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("no pass after pass {done} within 10 s");
}

/// Replaces the cluster with `snapshot` and waits for the pass that synced it.
fn switch(node: &Node, http: SocketAddr, handle: &StaticHandle, snapshot: Snapshot) {
    let done = passes(node, http);
    handle.set(snapshot);
    wait_pass(node, http, done);
}

fn now_s() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

/// Sleeps into the next wall-clock second (and 50 ms more), so that records of the phase
/// before and the phase after have different `start` seconds; returns the new second.
fn next_second() -> i64 {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock");
    let left =
        Duration::from_secs(1).saturating_sub(Duration::from_nanos(now.subsec_nanos().into()));
    std::thread::sleep(left + Duration::from_millis(50));
    now_s()
}

/// The flow records of `from` → `to`:80 over TCP.
fn records_of<'r>(records: &'r [StoredRecord], from: &str, to: &str) -> Vec<&'r StoredRecord> {
    records
        .iter()
        .filter(|r| {
            r.src_pod.as_deref() == Some(from)
                && r.dst_pod.as_deref() == Some(to)
                && r.dstport == Some(80)
                && r.protocol == Some(6)
        })
        .collect()
}

fn is(record: &StoredRecord, action: &str, verdict: &str, mode: &str) -> bool {
    record.action.as_deref() == Some(action)
        && record.verdict.as_deref() == Some(verdict)
        && record.enforcement_mode.as_deref() == Some(mode)
}

/// Asserts `records` of one pair hold an audit-deny record (policy would deny, passed) in
/// `direction`, started at or before `until_s`.
fn assert_audit_denied(records: &[&StoredRecord], direction: &str, until_s: i64, table: &str) {
    assert!(
        records
            .iter()
            .any(|r| is(r, "ACCEPT", "audit-deny", "audit")
                && r.flow_direction.as_deref() == Some(direction)
                && r.verdict_reason.as_deref() == Some("isolated-no-rule-matched")
                && r.policy.is_none()
                && r.start <= until_s),
        "no ACCEPT/audit-deny/audit {direction} record by {until_s}:\n{table}"
    );
}

/// Asserts `records` of one pair hold a denial in `direction` from `from_s` on, and no denial
/// before it.
fn assert_denied_from(records: &[&StoredRecord], direction: &str, from_s: i64, table: &str) {
    assert!(
        records.iter().any(|r| is(r, "REJECT", "deny", "enforce")
            && r.flow_direction.as_deref() == Some(direction)
            && r.verdict_reason.as_deref() == Some("isolated-no-rule-matched")
            && r.start >= from_s),
        "no REJECT/deny/enforce {direction} record from {from_s} on:\n{table}"
    );
    for r in records {
        if r.is_reject() {
            assert!(
                r.start >= from_s && is(r, "REJECT", "deny", "enforce"),
                "a denial before {from_s} or an incoherent one:\n{table}"
            );
        }
    }
}

/// Asserts amazonlinux → nginx:80 was allowed by its rules, in both directions.
fn assert_nginx_allowed(records: &[StoredRecord], table: &str) {
    let nginx = records_of(records, "default/amazonlinux", "default/nginx");
    for (direction, policy) in [
        ("egress", "default/allow-amazonlinux-to-nginx"),
        ("ingress", "default/allow-nginx-from-amazonlinux"),
    ] {
        assert!(
            nginx.iter().any(|r| r.action.as_deref() == Some("ACCEPT")
                && r.verdict.as_deref() == Some("allow")
                && r.verdict_reason.as_deref() == Some("allowed-by-rule")
                && r.flow_direction.as_deref() == Some(direction)
                && r.policy.as_deref() == Some(policy)
                && r.policy_rule.is_some()),
            "no {direction} allow record naming {policy}:\n{table}"
        );
    }
    assert!(
        nginx.iter().all(|r| !r.is_reject()),
        "amazonlinux → nginx denied:\n{table}"
    );
}

/// A TCP connection from one pod to another, established, both ends kept.
struct Connection {
    client: TcpStream,
    server: TcpStream,
}

impl Connection {
    /// Connects `from` to `to` on `port` (2 s at most).
    fn open(from: &Pod, to: &Pod, port: u16) -> Self {
        let address = SocketAddr::new(to.ip, port);
        let listener = in_netns(&to.netns, || TcpListener::bind(address).expect("listen"));
        let client = in_netns(&from.netns, || {
            TcpStream::connect_timeout(&address, WAIT_PASS).expect("connect")
        });
        let (server, _) = listener.accept().expect("accept");
        server.set_read_timeout(Some(WAIT_PASS)).unwrap();
        Self { client, server }
    }

    /// Whether a few bytes written by the client reach the server within 2 s.
    fn carries(&mut self) -> bool {
        if self.client.write_all(b"tollgate").is_err() {
            return false;
        }
        let mut buf = [0u8; 8];
        self.server.read_exact(&mut buf).is_ok() && &buf == b"tollgate"
    }
}

/// A node with the seed's three wired pods.
fn seed_node(tag: &str) -> (Node, Pod, Pod, Pod) {
    let mut node = Node::new(tag);
    let nginx = node.add_pod("nginx", "198.18.0.20", 1);
    let httpd = node.add_pod("httpd", "198.18.0.30", 2);
    let amazonlinux = node.add_pod("amazonlinux", "198.18.0.40", 3);
    (node, nginx, httpd, amazonlinux)
}

/// Stops the agent and reads every record it shipped, printed as a table.
fn stop_and_read(agent: RunningAgent, files: &Path) -> (Vec<StoredRecord>, String) {
    agent.stop().expect("agent stopped cleanly");
    let records = read_dir(&files.join("flows"), &Filter::default()).expect("read the flows");
    let table = render_table(&records);
    eprintln!("{table}");
    (records, table)
}

#[test]
fn privileged_a_namespace_in_audit_mode_passes_would_be_denies_and_records_them() {
    if !privileged("privileged_a_namespace_in_audit_mode_passes_would_be_denies_and_records_them") {
        return;
    }
    let (node, nginx, httpd, amazonlinux) = seed_node("audit-ns");
    let bpffs = Bpffs::new("audit-ns");
    let files = temp_dir("audit-ns");
    let config = agent_config(&node, &bpffs, files.path());
    let http = config.agent.metrics_address;
    let (source, handle) = StaticSource::new(seed_with_namespace_audit());
    let agent = RunningAgent::start(&node.netns, config, source);
    wait_pass(&node, http, 0);

    // Audit: the would-be deny passes, the allowed flow still is.
    assert!(
        tcp_reaches(&amazonlinux, &httpd, WAIT_PASS),
        "amazonlinux → httpd:80 passes in audit mode"
    );
    assert!(
        tcp_reaches(&amazonlinux, &nginx, WAIT_PASS),
        "amazonlinux → nginx:80 allowed in audit mode"
    );
    // A connection opened under audit, kept across the switch.
    let mut kept = Connection::open(&amazonlinux, &httpd, 8080);
    assert!(
        kept.carries(),
        "amazonlinux → httpd:8080 carries data in audit mode"
    );
    let audit_until = now_s();

    // The annotation removed: enforced again.
    let enforce_from = next_second();
    switch(&node, http, &handle, seed());
    // The endpoints' policy changed: the connection is decided again, and denied.
    assert!(
        !kept.carries(),
        "a connection opened under audit still carries data once enforced"
    );
    assert!(
        !tcp_reaches(&amazonlinux, &httpd, WAIT_DENY),
        "amazonlinux → httpd:80 denied once the annotation is gone"
    );
    assert!(
        tcp_reaches(&amazonlinux, &nginx, WAIT_PASS),
        "amazonlinux → nginx:80 still allowed"
    );

    let (records, table) = stop_and_read(agent, files.path());
    drop(handle);
    let httpd_records = records_of(&records, "default/amazonlinux", "default/httpd");
    // Audit: denied by policy at both ends, passed, recorded at both.
    assert_audit_denied(&httpd_records, "egress", audit_until, &table);
    assert_audit_denied(&httpd_records, "ingress", audit_until, &table);
    // Enforce: dropped at amazonlinux's egress.
    assert_denied_from(&httpd_records, "egress", enforce_from, &table);
    assert!(
        httpd_records
            .iter()
            .filter(|r| r.verdict.as_deref() == Some("audit-deny"))
            .all(|r| r.start <= audit_until),
        "audit-deny after the annotation was removed:\n{table}"
    );
    // The connection kept across the switch: audit-denied, then denied.
    let kept: Vec<&StoredRecord> = records
        .iter()
        .filter(|r| {
            r.src_pod.as_deref() == Some("default/amazonlinux")
                && r.dst_pod.as_deref() == Some("default/httpd")
                && r.dstport == Some(8080)
        })
        .collect();
    assert_audit_denied(&kept, "egress", audit_until, &table);
    assert_denied_from(&kept, "egress", enforce_from, &table);
    assert_nginx_allowed(&records, &table);
}

#[test]
fn privileged_a_policy_in_audit_mode_audits_only_where_every_isolating_policy_does() {
    if !privileged(
        "privileged_a_policy_in_audit_mode_audits_only_where_every_isolating_policy_does",
    ) {
        return;
    }
    let (node, nginx, httpd, amazonlinux) = seed_node("audit-pol");
    let bpffs = Bpffs::new("audit-pol");
    let files = temp_dir("audit-pol");
    let config = agent_config(&node, &bpffs, files.path());
    let http = config.agent.metrics_address;
    let (source, handle) = StaticSource::new(seed_with_policy_audit(&["all-deny"]));
    let agent = RunningAgent::start(&node.netns, config, source);
    wait_pass(&node, http, 0);

    // `all-deny` in audit mode: nginx's egress and httpd's ingress are isolated by it alone.
    assert!(
        tcp_reaches(&nginx, &httpd, WAIT_PASS),
        "nginx → httpd:80 passes with all-deny in audit mode"
    );
    // amazonlinux's egress is also isolated by allow-amazonlinux-to-nginx, not in audit mode.
    assert!(
        !tcp_reaches(&amazonlinux, &httpd, WAIT_DENY),
        "amazonlinux → httpd:80 still denied at amazonlinux's egress"
    );
    assert!(
        tcp_reaches(&amazonlinux, &nginx, WAIT_PASS),
        "amazonlinux → nginx:80 allowed"
    );
    let first_until = now_s();
    next_second();

    // Both policies isolating amazonlinux's egress in audit mode: it passes too.
    switch(
        &node,
        http,
        &handle,
        seed_with_policy_audit(&["all-deny", "allow-amazonlinux-to-nginx"]),
    );
    assert!(
        tcp_reaches(&amazonlinux, &httpd, WAIT_PASS),
        "amazonlinux → httpd:80 passes with both its egress policies in audit mode"
    );
    assert!(
        tcp_reaches(&amazonlinux, &nginx, WAIT_PASS),
        "amazonlinux → nginx:80 allowed"
    );
    let audit_until = now_s();

    // No annotation: enforced.
    let enforce_from = next_second();
    switch(&node, http, &handle, seed());
    assert!(
        !tcp_reaches(&nginx, &httpd, WAIT_DENY),
        "nginx → httpd:80 denied once the annotations are gone"
    );
    assert!(
        !tcp_reaches(&amazonlinux, &httpd, WAIT_DENY),
        "amazonlinux → httpd:80 denied once the annotations are gone"
    );
    assert!(
        tcp_reaches(&amazonlinux, &nginx, WAIT_PASS),
        "amazonlinux → nginx:80 still allowed"
    );

    let (records, table) = stop_and_read(agent, files.path());
    drop(handle);
    let from_nginx = records_of(&records, "default/nginx", "default/httpd");
    assert_audit_denied(&from_nginx, "egress", first_until, &table);
    assert_audit_denied(&from_nginx, "ingress", first_until, &table);
    assert_denied_from(&from_nginx, "egress", enforce_from, &table);

    let from_amazonlinux = records_of(&records, "default/amazonlinux", "default/httpd");
    // First phase: denied (enforce) at amazonlinux's egress.
    assert!(
        from_amazonlinux
            .iter()
            .any(|r| is(r, "REJECT", "deny", "enforce")
                && r.flow_direction.as_deref() == Some("egress")
                && r.start <= first_until),
        "amazonlinux → httpd:80 not denied while only all-deny was in audit mode:\n{table}"
    );
    // Third phase: denied again.
    assert!(
        from_amazonlinux
            .iter()
            .any(|r| is(r, "REJECT", "deny", "enforce")
                && r.flow_direction.as_deref() == Some("egress")
                && r.start >= enforce_from),
        "amazonlinux → httpd:80 not denied once the annotations were gone:\n{table}"
    );
    // Second phase: audit-denied at both ends.
    assert_audit_denied(&from_amazonlinux, "egress", audit_until, &table);
    assert_audit_denied(&from_amazonlinux, "ingress", audit_until, &table);
    assert!(
        from_amazonlinux
            .iter()
            .filter(|r| r.verdict.as_deref() == Some("audit-deny"))
            .all(|r| r.start > first_until),
        "amazonlinux → httpd:80 audit-denied while only all-deny was in audit mode:\n{table}"
    );
    assert!(
        from_amazonlinux
            .iter()
            .chain(&from_nginx)
            .filter(|r| r.verdict.as_deref() == Some("audit-deny"))
            .all(|r| r.start <= audit_until),
        "audit-deny after the annotations were removed:\n{table}"
    );
    assert_nginx_allowed(&records, &table);
}

/// The window between a pass's sync and the collector's `Identities::observe` (which the
/// daemon calls after the pass, stamped with the time it runs): UDP from new source ports
/// while the namespace switches between audit and enforce modes. A packet the probe denies in
/// that window must still be recorded as enforced: a denial's mode follows its verdict, not the
/// identity history (before that fix, 6 runs out of 9 recorded up to 900 `REJECT` records with
/// `enforcement_mode = 'audit'`).
#[test]
fn privileged_denials_right_after_leaving_audit_mode_are_recorded_as_enforce() {
    if !privileged("privileged_denials_right_after_leaving_audit_mode_are_recorded_as_enforce") {
        return;
    }
    let (node, _nginx, httpd, amazonlinux) = seed_node("audit-race");
    let bpffs = Bpffs::new("audit-race");
    let files = temp_dir("audit-race");
    let config = agent_config(&node, &bpffs, files.path());
    let http = config.agent.metrics_address;
    let (source, handle) = StaticSource::new(seed_with_namespace_audit());
    let agent = RunningAgent::start(&node.netns, config, source);
    wait_pass(&node, http, 0);
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        let sender = scope.spawn(|| {
            in_netns(&amazonlinux.netns, || {
                let target = SocketAddr::new(httpd.ip, 9);
                let mut sent = 0u32;
                while sent < 400_000 && !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let socket = std::net::UdpSocket::bind(SocketAddr::new(amazonlinux.ip, 0))
                        .expect("bind");
                    let _ = socket.send_to(b"x", target);
                    sent += 1;
                }
                sent
            })
        });
        std::thread::sleep(Duration::from_millis(300));
        for round in 0..6 {
            let snapshot = if round % 2 == 0 {
                seed()
            } else {
                seed_with_namespace_audit()
            };
            switch(&node, http, &handle, snapshot);
            std::thread::sleep(Duration::from_millis(150));
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        eprintln!("sent {}", sender.join().expect("sender"));
    });
    agent.stop().expect("agent stopped cleanly");
    drop(handle);
    let records =
        read_dir(&files.path().join("flows"), &Filter::default()).expect("read the flows");
    let incoherent: Vec<StoredRecord> = records
        .iter()
        .filter(|r| {
            r.protocol == Some(17)
                && r.is_reject()
                && r.enforcement_mode.as_deref() == Some("audit")
        })
        .cloned()
        .collect();
    let udp = records.iter().filter(|r| r.protocol == Some(17)).count();
    eprintln!(
        "{udp} UDP records, {} REJECT recorded as audit",
        incoherent.len()
    );
    assert!(
        incoherent.is_empty(),
        "{} REJECT records say enforcement_mode audit; the first ones:\n{}",
        incoherent.len(),
        render_table(&incoherent[..incoherent.len().min(10)])
    );
}
