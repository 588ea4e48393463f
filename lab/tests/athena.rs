//! The Athena named queries of `schemas/athena/queries/`, run by DuckDB (through sqlglot's
//! Athena → DuckDB transpiler, `schemas/athena/run_duckdb.py`) on the Parquet flow directory a
//! real lab run wrote, with its OCSF objects for Amazon Security Lake (`--ocsf`) beside it.
//! Needs root (the lab) and the Python environment `scripts/setup.sh` creates (`.venv`,
//! DuckDB and sqlglot, the OCSF schema).

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use tollgate_lab::{Attach, LabOptions, OutputFormat, run};

use support::privileged;
use tollgate_test_support::temp_dir;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs named query `name` with `params` on `dir`; one JSON object per row.
fn query(dir: &Path, name: &str, params: &[(&str, String)]) -> Vec<Value> {
    let python = repo().join(".venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/setup.sh (it installs DuckDB and sqlglot)",
        python.display()
    );
    let mut command = Command::new(python);
    command
        .arg(repo().join("schemas/athena/run_duckdb.py"))
        .arg("--dir")
        .arg(dir)
        .args(["--query", name, "--format", "json"]);
    for (param, value) in params {
        command.args(["--param", &format!("{param}={value}")]);
    }
    let output = command.output().expect("running run_duckdb.py");
    assert!(
        output.status.success(),
        "{name}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).expect("one JSON object per line"))
        .collect()
}

fn text<'a>(row: &'a Value, column: &str) -> &'a str {
    row[column].as_str().unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn privileged_the_named_queries_answer_the_seeds_questions_on_the_labs_parquet() {
    if !privileged("privileged_the_named_queries_answer_the_seeds_questions_on_the_labs_parquet") {
        return;
    }
    let scratch = temp_dir("athena-test");
    let out = scratch.path().join("lab");
    let report = run(&LabOptions {
        output: OutputFormat::Table,
        attach: Attach::Auto,
        out: Some(out.clone()),
        quarantine: false,
        ip_family: Default::default(),
        sgp: false,
        ocsf: true,
    })
    .await
    .unwrap();
    assert!(report.all_ok(), "{}", report.render_table());
    let window = [("from", "0".to_owned()), ("to", "4000000000".to_owned())];
    let with = |extra: &[(&'static str, String)]| {
        let mut params = window.to_vec();
        params.extend_from_slice(extra);
        params
    };

    // Which flows were denied: the seed's blocked DNS lookups and its blocked curl httpd, both
    // addressed to the Services' ClusterIPs (the svc_* columns name them).
    let denied = query(&out, "denied-flows", &window);
    let to = |name: &str, port: i64| {
        denied
            .iter()
            .filter(|r| {
                text(r, "src_pod") == "amazonlinux"
                    && (text(r, "dst_pod") == name || text(r, "svc_name") == name)
            })
            .filter(|r| r["dstport"] == port)
            .count()
    };
    assert!(to("kube-dns", 53) >= 1, "{denied:#?}");
    assert!(to("httpd", 80) >= 1, "{denied:#?}");
    assert_eq!(to("nginx", 80), 0, "nginx is never denied");
    assert!(denied.iter().all(|r| text(r, "verdict") == "deny"));
    // The same denials in the OCSF objects the lab wrote beside the flow log (--ocsf): every
    // refused flow record is one Refuse event, and each is valid OCSF 1.1.0.
    let ocsf = query(&out, "ocsf-denied-flows", &window);
    let ocsf_to = |name: &str, port: i64| {
        ocsf.iter()
            .filter(|r| {
                text(r, "src_name") == "default/amazonlinux"
                    && (text(r, "dst_name").ends_with(&format!("/{name}"))
                        || text(r, "svc_name") == name)
            })
            .filter(|r| r["dst_port"] == port)
            .count()
    };
    assert!(ocsf_to("kube-dns", 53) >= 1, "{ocsf:#?}");
    assert!(ocsf_to("httpd", 80) >= 1, "{ocsf:#?}");
    assert_eq!(ocsf_to("nginx", 80), 0, "nginx is never denied");
    assert_eq!(ocsf.len(), denied.len(), "{ocsf:#?}");
    assert!(ocsf.iter().all(|r| text(r, "disposition") == "Blocked"));
    let validated = Command::new(repo().join(".venv/bin/python"))
        .arg(repo().join("schemas/ocsf/validate.py"))
        .arg(out.join("ext"))
        .output()
        .expect("running validate.py");
    assert!(
        validated.status.success(),
        "{}",
        String::from_utf8_lossy(&validated.stderr)
    );
    // Outside the window: nothing.
    let none = query(
        &out,
        "denied-flows",
        &[("from", "0".into()), ("to", "1000".into())],
    );
    assert!(none.is_empty());

    // All flows of nginx: amazonlinux reached it, allowed by rule in step 3 (at nginx's
    // ingress, after kube-proxy's DNAT); the kubelet's probes came from the node.
    let nginx = query(
        &out,
        "pod-flows",
        &with(&[("namespace", "default".into()), ("pod", "nginx".into())]),
    );
    assert!(
        nginx
            .iter()
            .any(|r| text(r, "verdict_reason") == "from-node")
    );
    // In Security Lake too: the kubelet's probes, from the node, allowed.
    let ocsf_nginx = query(
        &out,
        "ocsf-pod-flows",
        &with(&[("namespace", "default".into()), ("pod", "nginx".into())]),
    );
    assert!(
        ocsf_nginx
            .iter()
            .any(|r| text(r, "verdict_reason") == "from-node"
                && text(r, "src_name").starts_with("Node/")
                && text(r, "action") == "Allowed"),
        "{ocsf_nginx:#?}"
    );
    // amazonlinux's side: its egress to nginx's Service, by rule.
    let client = query(
        &out,
        "pod-flows",
        &with(&[
            ("namespace", "default".into()),
            ("pod", "amazonlinux".into()),
        ]),
    );
    assert!(
        client.iter().any(|r| text(r, "flow_direction") == "egress"
            && text(r, "svc_name") == "nginx"
            && text(r, "policy_name") == "allow-amazonlinux-to-nginx"),
        "{client:#?}"
    );
    let allowed: Vec<&Value> = nginx
        .iter()
        .filter(|r| {
            text(r, "verdict_reason") == "allowed-by-rule"
                && text(r, "policy_name") == "allow-nginx-from-amazonlinux"
        })
        .collect();
    let first = allowed.first().expect("the allowed connection to nginx");
    // The whole HTTP exchange, both directions, from connection tracking: the connection's
    // records (one per minute it was seen in, so a connection across a minute's end has two).
    let connection: Vec<&&Value> = allowed
        .iter()
        .filter(|r| r["srcport"] == first["srcport"])
        .collect();
    let sum =
        |column: &str| -> i64 { connection.iter().map(|r| r[column].as_i64().unwrap()).sum() };
    assert!(sum("packets") >= 6, "{connection:#?}");
    assert!(sum("events") >= 2, "{connection:#?}");

    // Top denied sources and destinations.
    let sources = query(&out, "top-denied-sources", &with(&[("limit", "5".into())]));
    assert_eq!(text(&sources[0], "src_pod"), "amazonlinux");
    let destinations = query(
        &out,
        "top-denied-destinations",
        &with(&[("limit", "1".into())]),
    );
    assert_eq!(destinations.len(), 1, "the limit holds");
    assert_eq!(text(&destinations[0], "svc_name"), "kube-dns");

    // Hits per policy and rule: both allow policies of the seed.
    let hits = query(&out, "policy-rule-hits", &window);
    let rule = |policy: &str, direction: &str, index: i64| {
        hits.iter().any(|r| {
            text(r, "policy_name") == policy
                && text(r, "flow_direction") == direction
                && r["policy_rule"] == index
        })
    };
    assert!(
        rule("allow-amazonlinux-to-nginx", "egress", 0),
        "DNS: {hits:#?}"
    );
    assert!(
        rule("allow-amazonlinux-to-nginx", "egress", 1),
        "nginx: {hits:#?}"
    );
    assert!(
        rule("allow-nginx-from-amazonlinux", "ingress", 0),
        "{hits:#?}"
    );

    // Pods no policy selects: kube-dns (kube-system has no policy) for ingress.
    let unselected = query(&out, "unselected-pods", &window);
    assert!(unselected.iter().any(|r| {
        text(r, "pod") == "kube-dns"
            && text(r, "workload") == "Deployment/coredns"
            && text(r, "directions").contains("ingress")
    }));

    // No event was lost in the lab.
    assert!(query(&out, "loss-records", &window).is_empty());
    std::fs::remove_dir_all(&out).unwrap();
}
