"""Runs every named Athena query through run_duckdb on a small flow directory.

The directory is written by DuckDB in the collector's exact layout
(`cluster=…/dt=…/hour=…/<node>-<first-ts>-<seq>.parquet`, `cluster` also inside the files),
with the column types of flows.ddl.sql. The records tell the seed scenario (examples/seed/):
the all-deny step, where amazonlinux's DNS and HTTP to httpd are refused, and the step with
the allow policies, where DNS and nginx are allowed by rule; kube-system has no policy until
an audit-mode default-deny (examples/incident/) records what it would deny. Then amazonlinux
is put under quarantine (an ISOLATION record), its attempts are refused, and it is released.
Two hours later, in a window of its own, the same client goes through Services (ClusterIPs,
the svc_* columns) and the kubelet probes nginx from the node (reason from-node).

    .venv/bin/python -m unittest discover -s schemas/athena -p 'test_*.py'
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import unittest
from collections import defaultdict
from pathlib import Path

import duckdb
import sqlglot
from sqlglot import exp

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import run_duckdb

RUNNER = HERE / "run_duckdb.py"
DDL = HERE / "flows.ddl.sql"

# Athena (Hive DDL) types → DuckDB types.
DUCKDB_TYPES = run_duckdb.DUCKDB_TYPES


def ddl_columns() -> list[tuple[str, str]]:
    """(name, athena type) of the DDL's data columns, in order."""
    text = DDL.read_text()
    body = text[text.index("CREATE EXTERNAL TABLE") :]
    body = body[body.index("(") + 1 : body.index("\n)")]
    return re.findall(r"^\s*`(\w+)`\s+([a-z<>,]+?),?\s*$", body, re.MULTILINE)


def epoch(text: str) -> int:
    return int(dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC).timestamp())


# The window the tests ask about: [00:00:30, 00:30:00) on 2026-11-25 (UTC).
FROM = epoch("2026-11-25T00:00:30")
TO = epoch("2026-11-25T00:30:00")

AMAZONLINUX = ("default", "amazonlinux", "Pod/amazonlinux", {"app": "amazonlinux"}, "198.18.0.40")
KUBE_DNS = ("kube-system", "kube-dns", "Pod/kube-dns", {"k8s-app": "kube-dns"}, "198.18.0.10")
NGINX = ("default", "nginx", "Pod/nginx", {"app": "nginx"}, "198.18.0.20")
HTTPD = ("default", "httpd", "Pod/httpd", {"app": "httpd"}, "198.18.0.30")


def flow(
    start: str,
    end: str,
    src,
    dst,
    dstport: int,
    protocol: int,
    direction: str,
    verdict: str,
    reason: str,
    packets: int,
    *,
    srcport: int = 40000,
    policy: tuple[str, str, int] | None = None,
    mode: str = "enforce",
    node: str = "lab-node",
    service: tuple[str, str] | None = None,
    trace: tuple[str, str, str] | None = None,
    isolating: list[str] | None = None,
) -> dict:
    """A flow record; src and dst are pod tuples or a bare address (outside the cluster);
    service (namespace, name) is the Service whose ClusterIP dst is, with dstport its port;
    trace (tier, kind, action) is the deciding rule's (a NetworkPolicy's Allow when a policy is
    given without one; the NetworkPolicy tier for a denial for want of a rule), isolating the
    policies that isolate the pod then; the columns it does not set (isolation_*) are null."""

    def end_columns(prefix: str, peer) -> dict:
        if isinstance(peer, str):
            return {
                f"{prefix}addr": peer,
                f"{prefix}_namespace": None,
                f"{prefix}_pod": None,
                f"{prefix}_workload": None,
                f"{prefix}_labels": None,
            }
        ns, pod, workload, labels, addr = peer
        return {
            f"{prefix}addr": addr,
            f"{prefix}_namespace": ns,
            f"{prefix}_pod": pod,
            f"{prefix}_workload": workload,
            f"{prefix}_labels": labels,
        }

    if trace is None and policy is not None:
        trace = ("NetworkPolicy", "NetworkPolicy", "Allow")
    if trace is None and reason == "isolated-no-rule-matched":
        trace = ("NetworkPolicy", None, None)
    record = {name: None for name, _ in ddl_columns()}
    record |= {
        "version": 2,
        "srcport": srcport,
        "dstport": dstport,
        "protocol": protocol,
        "packets": packets,
        "bytes": packets * (74 if protocol == 6 else 82),
        "start": epoch(start),
        "end": epoch(end),
        "action": "REJECT" if verdict == "deny" else "ACCEPT",
        "log_status": "OK",
        "flow_direction": direction,
        "tcp_flags": 2 if protocol == 6 else 0,
        "icmp_type": None,
        "icmp_code": None,
        "verdict": verdict,
        "verdict_reason": reason,
        "policy_namespace": policy[0] if policy else None,
        "policy_name": policy[1] if policy else None,
        "policy_rule": policy[2] if policy else None,
        "enforcement_mode": mode,
        "events": packets if verdict != "allow" else 1,
        "skipped_events": None,
        "loss_source": None,
        "node": node,
        "cluster": "lab",
        "policy_tier": trace[0] if trace else None,
        "policy_kind": trace[1] if trace else None,
        "policy_action": trace[2] if trace else None,
        "policy_version": "812" if trace and trace[1] else None,
        "isolating_policies": isolating,
    }
    record.update(end_columns("src", src))
    record.update(end_columns("dst", dst))
    record.update(endpoint_columns(src if direction == "egress" else dst))
    if service is not None:
        record.update(
            svc_namespace=service[0],
            svc_name=service[1],
            svc_addr=record["dstaddr"],
            svc_port=dstport,
        )
    return record


# In these records amazonlinux has security groups: a branch ENI, strict mode.
BRANCH_ENI_PODS = {("default", "amazonlinux")}


def endpoint_columns(pod) -> dict:
    """The deciding pod's interface, named as the VPC CNI names it (vlan for a branch ENI in
    strict mode, eni otherwise, then 11 hex digits of SHA-1 over namespace.name), and its ENI;
    null when the deciding end is no pod."""
    if isinstance(pod, str):
        return {"endpoint_interface": None, "endpoint_eni": None}
    ns, name = pod[0], pod[1]
    branch = (ns, name) in BRANCH_ENI_PODS
    digest = hashlib.sha1(f"{ns}.{name}".encode()).hexdigest()[:11]
    return {
        "endpoint_interface": ("vlan" if branch else "eni") + digest,
        "endpoint_eni": "branch" if branch else "node",
    }


def loss(start: str, end: str, source: str, skipped: int | None, node: str = "lab-node") -> dict:
    """A SKIPDATA record: every flow column null."""
    record = {name: None for name, _ in ddl_columns()}
    record.update(
        version=1,
        start=epoch(start),
        end=epoch(end),
        log_status="SKIPDATA",
        events=0,
        skipped_events=skipped,
        loss_source=source,
        node=node,
        cluster="lab",
    )
    return record


# amazonlinux with the label its quarantine policy selects.
AMAZONLINUX_QUARANTINED = (
    *AMAZONLINUX[:3],
    {**AMAZONLINUX[3], "tollgate.io/quarantine": "amazonlinux"},
    AMAZONLINUX[4],
)


def isolation(at: str, pod, action: str, actor: str, reason: str) -> dict:
    """An ISOLATION record: the pod (as before the act) in the src_* columns, the quarantine
    policy in policy_*, who, why and the detail; the flow columns null."""
    ns, name, workload, labels, addr = pod
    policy = {"namespace": ns, "name": f"tollgate-quarantine-{name}", "uid": f"uid-{name}"}
    detail = {
        "policy": {**policy, "resource_version": "4711"},
        "label": {"key": "tollgate.io/quarantine", "value": name},
        "pod": {"uid": f"pod-uid-{name}", "ip": addr, "node": "lab-node"},
        "policies_in_force": [],
    }
    record = {column: None for column, _ in ddl_columns()}
    record.update(
        version=1,
        start=epoch(at),
        end=epoch(at),
        log_status="ISOLATION",
        src_namespace=ns,
        src_pod=name,
        src_workload=workload,
        src_labels=labels,
        srcaddr=addr,
        policy_namespace=ns,
        policy_name=policy["name"],
        enforcement_mode="enforce",
        events=0,
        node="lab-node",
        cluster="lab",
        isolation_action=action,
        isolation_actor=actor,
        isolation_reason=reason,
        isolation_detail=json.dumps(detail),
    )
    return record


# The Services' window, two hours after the seed's: [02:00:00, 02:30:00) on 2026-11-25.
SVC_FROM = epoch("2026-11-25T02:00:00")
SVC_TO = epoch("2026-11-25T02:30:00")
KUBE_DNS_SVC = ("kube-system", "kube-dns")
KUBE_DNS_CLUSTER_IP = "198.19.0.10"
NGINX_SVC = ("default", "nginx")
NGINX_CLUSTER_IP = "198.19.104.37"
# The node itself, as the collector names it: no pod, workload Node/<node>.
LAB_NODE = (None, None, "Node/lab-node", None, "198.18.0.1")
SVC_COLUMNS = ("svc_namespace", "svc_name", "svc_addr", "svc_port")

# The seed through Services: DNS to kube-dns's ClusterIP refused (all-deny), then allowed;
# nginx's ClusterIP refused because policy allows only some of its backends; the backend's
# own ingress decision, after kube-proxy's rewrite, names no Service; the kubelet's probe of
# nginx passes as from-node.
SERVICE_RECORDS = [
    flow(
        "2026-11-25T02:01:00",
        "2026-11-25T02:01:04",
        AMAZONLINUX,
        KUBE_DNS_CLUSTER_IP,
        53,
        17,
        "egress",
        "deny",
        "isolated-no-rule-matched",
        4,
        srcport=45000,
        service=KUBE_DNS_SVC,
    ),
    flow(
        "2026-11-25T02:02:00",
        "2026-11-25T02:02:00",
        AMAZONLINUX,
        KUBE_DNS_CLUSTER_IP,
        53,
        17,
        "egress",
        "allow",
        "allowed-by-rule",
        1,
        srcport=45100,
        policy=("default", "allow-amazonlinux-to-nginx", 0),
        service=KUBE_DNS_SVC,
    ),
    flow(
        "2026-11-25T02:03:00",
        "2026-11-25T02:03:05",
        AMAZONLINUX,
        NGINX_CLUSTER_IP,
        80,
        6,
        "egress",
        "deny",
        "service-backends-denied",
        6,
        srcport=45200,
        service=NGINX_SVC,
    ),
    flow(
        "2026-11-25T02:04:00",
        "2026-11-25T02:04:02",
        AMAZONLINUX,
        NGINX,
        80,
        6,
        "ingress",
        "deny",
        "isolated-no-rule-matched",
        2,
        srcport=45300,
    ),
    flow(
        "2026-11-25T02:05:00",
        "2026-11-25T02:05:00",
        LAB_NODE,
        NGINX,
        80,
        6,
        "ingress",
        "allow",
        "from-node",
        1,
        srcport=45400,
    ),
]

RULE_DNS = ("default", "allow-amazonlinux-to-nginx", 0)
RULE_NGINX = ("default", "allow-amazonlinux-to-nginx", 1)
RULE_NGINX_INGRESS = ("default", "allow-nginx-from-amazonlinux", 0)

RECORDS = [
    # Before the window (another day): a refused flow that must not show up.
    flow(
        "2026-11-23T12:00:00",
        "2026-11-23T12:00:05",
        AMAZONLINUX,
        HTTPD,
        80,
        6,
        "egress",
        "deny",
        "isolated-no-rule-matched",
        2,
    ),
    # Step 1, no policy yet (straddles midnight: partitioned under 2026-11-24, hour 23).
    flow(
        "2026-11-24T23:59:40",
        "2026-11-25T00:00:35",
        AMAZONLINUX,
        NGINX,
        80,
        6,
        "egress",
        "allow",
        "no-policy-selects-pod",
        1,
        srcport=40100,
    ),
    # Step 2, all-deny: DNS refused at amazonlinux's egress, straddling midnight as well.
    flow(
        "2026-11-24T23:59:50",
        "2026-11-25T00:00:40",
        AMAZONLINUX,
        KUBE_DNS,
        53,
        17,
        "egress",
        "deny",
        "isolated-no-rule-matched",
        5,
        srcport=41000,
    ),
    # Step 2: HTTP to httpd refused.
    flow(
        "2026-11-25T00:05:00",
        "2026-11-25T00:05:07",
        AMAZONLINUX,
        HTTPD,
        80,
        6,
        "egress",
        "deny",
        "isolated-no-rule-matched",
        3,
        srcport=41100,
    ),
    # Step 2: an address outside the cluster tries amazonlinux's port 22; refused at ingress.
    flow(
        "2026-11-25T00:06:00",
        "2026-11-25T00:06:03",
        "203.0.113.7",
        AMAZONLINUX,
        22,
        6,
        "ingress",
        "deny",
        "isolated-no-rule-matched",
        2,
        srcport=50000,
    ),
    # An audit-mode denial passes (ACCEPT): not a denied flow.
    flow(
        "2026-11-25T00:07:00",
        "2026-11-25T00:07:01",
        HTTPD,
        NGINX,
        8080,
        6,
        "egress",
        "audit-deny",
        "isolated-no-rule-matched",
        1,
        mode="audit",
    ),
    # Step 3, the allow policies: DNS allowed by rule 0; kube-system has no policy.
    flow(
        "2026-11-25T00:10:00",
        "2026-11-25T00:10:00",
        AMAZONLINUX,
        KUBE_DNS,
        53,
        17,
        "egress",
        "allow",
        "allowed-by-rule",
        1,
        srcport=42000,
        policy=RULE_DNS,
    ),
    flow(
        "2026-11-25T00:10:00",
        "2026-11-25T00:10:00",
        AMAZONLINUX,
        KUBE_DNS,
        53,
        17,
        "ingress",
        "allow",
        "no-policy-selects-pod",
        1,
        srcport=42000,
    ),
    # kube-dns asks upstream: no policy selects it for egress either.
    flow(
        "2026-11-25T00:10:01",
        "2026-11-25T00:10:01",
        KUBE_DNS,
        "8.8.8.8",
        53,
        17,
        "egress",
        "allow",
        "no-policy-selects-pod",
        1,
        srcport=53000,
    ),
    # Step 3: nginx allowed at amazonlinux's egress (rule 1) and at nginx's ingress (rule 0).
    flow(
        "2026-11-25T00:11:00",
        "2026-11-25T00:11:00",
        AMAZONLINUX,
        NGINX,
        80,
        6,
        "egress",
        "allow",
        "allowed-by-rule",
        1,
        srcport=43000,
        policy=RULE_NGINX,
    ),
    flow(
        "2026-11-25T00:11:00",
        "2026-11-25T00:11:00",
        AMAZONLINUX,
        NGINX,
        80,
        6,
        "ingress",
        "allow",
        "allowed-by-rule",
        1,
        srcport=43000,
        policy=RULE_NGINX_INGRESS,
    ),
    # After the window: refused again, must not show up.
    flow(
        "2026-11-25T00:30:00",
        "2026-11-25T00:30:02",
        AMAZONLINUX,
        HTTPD,
        80,
        6,
        "egress",
        "deny",
        "isolated-no-rule-matched",
        2,
        srcport=44000,
    ),
    # Another audit-mode denial of the same flow, and kube-system's audit-mode default-deny
    # (examples/incident/) recording kube-dns's upstream query it would refuse.
    flow(
        "2026-11-25T00:07:30",
        "2026-11-25T00:07:31",
        HTTPD,
        NGINX,
        8080,
        6,
        "egress",
        "audit-deny",
        "isolated-no-rule-matched",
        2,
        srcport=40200,
        mode="audit",
    ),
    flow(
        "2026-11-25T00:12:00",
        "2026-11-25T00:12:00",
        KUBE_DNS,
        "8.8.4.4",
        53,
        17,
        "egress",
        "audit-deny",
        "isolated-no-rule-matched",
        1,
        srcport=53100,
        mode="audit",
    ),
    # amazonlinux is put under quarantine inside the window; its next attempts, after the
    # window, are refused (the last with the quarantine label already on it); then it is
    # released. nginx was quarantined two days earlier.
    isolation("2026-11-25T00:29:00", AMAZONLINUX, "quarantine", "lab:root", "calls httpd"),
    flow(
        "2026-11-25T00:31:10",
        "2026-11-25T00:31:12",
        AMAZONLINUX,
        KUBE_DNS,
        53,
        17,
        "egress",
        "deny",
        "isolated-no-rule-matched",
        4,
        srcport=44100,
    ),
    flow(
        "2026-11-25T00:31:40",
        "2026-11-25T00:31:41",
        AMAZONLINUX_QUARANTINED,
        NGINX,
        80,
        6,
        "egress",
        "deny",
        "isolated-no-rule-matched",
        1,
        srcport=44200,
    ),
    isolation("2026-11-25T00:40:00", AMAZONLINUX_QUARANTINED, "release", "lab:root", "cleaned"),
    isolation("2026-11-23T12:30:00", NGINX, "quarantine", "alice", "scan"),
    # Loss: the ring buffer overflowed inside the window; a collector restart whose span began
    # two days earlier and ends inside the window; and a loss after the window.
    loss("2026-11-25T00:08:00", "2026-11-25T00:08:01", "ringbuf-full", 17),
    loss("2026-11-23T00:20:00", "2026-11-25T00:01:00", "collector-restart", None),
    loss("2026-11-25T01:00:00", "2026-11-25T01:00:01", "aggregation-full", 4),
    *SERVICE_RECORDS,
]


def write_flow_dir(root: Path, records: list[dict], omit: tuple[str, ...] = ()) -> None:
    """Writes the records as the collector does (collector/src/writer.rs): each record under
    the cluster=/dt=/hour= of its own start, one file per partition, named
    <node>-<first start, YYYYMMDDTHHMMSSZ>-<seq>.parquet; without the columns of omit (files of
    an older record layout)."""
    columns = [(n, t) for n, t in ddl_columns() if n not in omit]
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    definition = ", ".join(f'"{n}" {DUCKDB_TYPES[t]}' for n, t in columns)
    # `cluster` is the last column of the record and is written into the files too.
    con.execute(f'CREATE TABLE records ({definition}, "cluster" VARCHAR, file VARCHAR)')
    names = [n for n, _ in columns] + ["cluster"]

    files: dict[tuple, list[dict]] = defaultdict(list)
    for r in sorted(records, key=lambda r: r["start"]):
        t = dt.datetime.fromtimestamp(r["start"], dt.UTC)
        files[(r["cluster"], t.strftime("%Y-%m-%d"), t.strftime("%H"), r["node"])].append(r)

    def value(record: dict, name: str):
        v = record[name]
        if isinstance(v, dict):  # a label map, in the form DuckDB binds to MAP
            return {"key": list(v), "value": list(v.values())}
        return v

    placeholders = ", ".join("?" for _ in range(len(names) + 1))
    for seq, ((cluster, day, hour, node), rows) in enumerate(sorted(files.items()), 1):
        directory = root / f"cluster={cluster}" / f"dt={day}" / f"hour={hour}"
        directory.mkdir(parents=True, exist_ok=True)
        first = dt.datetime.fromtimestamp(min(r["start"] for r in rows), dt.UTC)
        path = directory / f"{node}-{first.strftime('%Y%m%dT%H%M%SZ')}-{seq:06}.parquet"
        con.executemany(
            f"INSERT INTO records VALUES ({placeholders})",
            [[value(r, n) for n in names] + [str(path)] for r in rows],
        )
        quoted = ", ".join(f'"{n}"' for n in names)
        con.execute(
            f"COPY (SELECT {quoted} FROM records WHERE file = ?) TO '{path}' (FORMAT PARQUET)",
            [str(path)],
        )
    con.close()


class FlowDirTest(unittest.TestCase):
    # The records the class's flow directory holds.
    RECORDS = RECORDS

    @classmethod
    def setUpClass(cls):
        cls._tmp = tempfile.TemporaryDirectory(prefix="tollgate-flows-")
        cls.dir = Path(cls._tmp.name) / "flows"
        write_flow_dir(cls.dir, cls.RECORDS)

    @classmethod
    def tearDownClass(cls):
        cls._tmp.cleanup()

    def run_query(self, name: str, **params) -> list[dict]:
        return run_duckdb.run_query(self.dir, name, params)

    def window(self, **more) -> dict:
        return {"from": FROM, "to": TO, **more}


class LayoutTest(FlowDirTest):
    def test_files_follow_the_collector_layout(self):
        files = sorted(p.relative_to(self.dir).as_posix() for p in self.dir.rglob("*.parquet"))
        self.assertIn("cluster=lab/dt=2026-11-24/hour=23/lab-node-20261124T235940Z-000003.parquet", files)
        for f in files:
            self.assertRegex(
                f, r"^cluster=lab/dt=\d{4}-\d\d-\d\d/hour=\d\d/lab-node-\d{8}T\d{6}Z-\d{6}\.parquet$"
            )

    def test_files_hold_every_column_and_the_view_adds_the_partition_keys(self):
        one = next(self.dir.rglob("*.parquet"))
        con = duckdb.connect()
        in_file = [
            r[0]
            for r in con.execute(
                f"DESCRIBE SELECT * FROM read_parquet('{one}', hive_partitioning = false)"
            ).fetchall()
        ]
        self.assertEqual(in_file, [n for n, _ in ddl_columns()] + ["cluster"])
        view = run_duckdb.connect(self.dir)
        described = {r[0]: r[1] for r in view.execute("DESCRIBE flows").fetchall()}
        self.assertEqual(described["cluster"], "VARCHAR")
        self.assertEqual(described["dt"], "VARCHAR")
        self.assertEqual(described["hour"], "VARCHAR")  # `23`, `00`: strings, as in Athena
        self.assertEqual(described["src_labels"], "MAP(VARCHAR, VARCHAR)")
        hours = {r[0] for r in view.execute("SELECT DISTINCT hour FROM flows").fetchall()}
        self.assertIn("00", hours)
        self.assertEqual(view.execute("SELECT DISTINCT cluster FROM flows").fetchall(), [("lab",)])


class QueryFileTest(unittest.TestCase):
    EXPECTED = frozenset(
        {
            "denied-flows",
            "pod-flows",
            "top-denied-sources",
            "top-denied-destinations",
            "policy-rule-hits",
            "unselected-pods",
            "loss-records",
            "denied-pairs",
            "denied-over-time",
            "pod-timeline",
            "isolation-records",
            "audit-would-be-denied",
            "denied-service-flows",
            "branch-eni-pods",
            "ocsf-denied-flows",
            "ocsf-pod-flows",
            "policy-tier-hits",
        }
    )

    def test_every_query_is_there_with_a_header(self):
        queries = run_duckdb.load_queries()
        self.assertEqual(set(queries), self.EXPECTED)
        for q in queries.values():
            self.assertTrue(q.description)
            self.assertTrue(all(p.meaning for p in q.params), q.name)

    def test_placeholders_are_only_in_where_clauses(self):
        # Athena accepts `?` only in WHERE clauses (not in SELECT lists, not in LIMIT).
        for q in run_duckdb.load_queries().values():
            for placeholder in sqlglot.parse_one(q.sql, read="athena").find_all(exp.Placeholder):
                self.assertIsNotNone(placeholder.find_ancestor(exp.Where), q.name)

    def test_queries_read_the_unqualified_flows_table(self):
        # The OCSF queries read Security Lake's table (ocsf_flows), the others the flow log's.
        for q in run_duckdb.load_queries().values():
            tables = {t.sql() for t in sqlglot.parse_one(q.sql, read="athena").find_all(exp.Table)}
            expected = {"ocsf_flows"} if q.name.startswith("ocsf-") else {"flows"}
            self.assertEqual(tables, expected, q.name)
            self.assertEqual(run_duckdb.tables_read(q), expected, q.name)

    def test_every_query_transpiles_to_one_duckdb_statement(self):
        for q in run_duckdb.load_queries().values():
            sql = run_duckdb.to_duckdb(q)
            self.assertIn("STRFTIME(TO_TIMESTAMP(", sql, q.name)
            self.assertNotIn("from_unixtime", sql.lower(), q.name)

    def test_the_ddl_parses_as_athena_once_terraform_filled_it(self):
        text = DDL.read_text().replace("$${", "\0{")
        values = {
            "database": "tollgate",
            "bucket": "b",
            "prefix": "flows/",
            "clusters": "lab,prod",
            "projection_start": "2026-01-01",
        }
        for key, value in values.items():
            text = text.replace("${" + key + "}", value)
        text = text.replace("\0{", "${")
        self.assertNotRegex(text, r"\$\{(database|bucket|prefix|clusters|projection_start)\}")
        create = sqlglot.parse_one(text, read="athena")
        self.assertIsInstance(create, exp.Create)
        self.assertEqual([c.name for c in create.this.expressions], [n for n, _ in ddl_columns()])
        self.assertIn(
            "s3://b/flows/cluster=${cluster}/dt=${dt}/hour=${hour}/", create.sql("athena")
        )

    def test_the_ddl_has_every_column_but_the_partition_keys(self):
        names = [n for n, _ in ddl_columns()]
        self.assertEqual(names[0], "version")
        self.assertEqual(
            names[-16:],
            [
                "node",
                "isolation_action",
                "isolation_actor",
                "isolation_reason",
                "isolation_detail",
                "svc_namespace",
                "svc_name",
                "svc_addr",
                "svc_port",
                "endpoint_interface",
                "endpoint_eni",
                "policy_tier",
                "policy_kind",
                "policy_action",
                "policy_version",
                "isolating_policies",
            ],
        )
        self.assertNotIn("cluster", names)
        self.assertIn(
            "PARTITIONED BY (\n  `cluster` string,\n  `dt` string,\n  `hour` string\n)",
            DDL.read_text(),
        )


class QueriesTest(FlowDirTest):
    def test_denied_flows_are_the_refused_ones_in_the_window(self):
        rows = self.run_query("denied-flows", **self.window())
        self.assertEqual(
            [(r["src_pod"], r["srcaddr"], r["dst_pod"], r["dstport"], r["protocol"]) for r in rows],
            [
                ("amazonlinux", "198.18.0.40", "kube-dns", 53, 17),
                ("amazonlinux", "198.18.0.40", "httpd", 80, 6),
                (None, "203.0.113.7", "amazonlinux", 22, 6),
            ],
        )
        dns = rows[0]
        self.assertEqual(dns["src_namespace"], "default")
        self.assertEqual(dns["dst_namespace"], "kube-system")
        self.assertEqual(dns["dstaddr"], "198.18.0.10")
        self.assertEqual((dns["packets"], dns["bytes"]), (5, 410))
        self.assertEqual(dns["verdict_reason"], "isolated-no-rule-matched")
        self.assertEqual((dns["node"], dns["cluster"]), ("lab-node", "lab"))
        self.assertEqual(
            (dns["start"], dns["end"]), (epoch("2026-11-24T23:59:50"), epoch("2026-11-25T00:00:40"))
        )
        self.assertTrue(all(r["verdict"] == "deny" for r in rows))

    def test_denied_flows_window_bounds(self):
        # [to, ...) of the earlier window excludes the flow starting exactly at `to`.
        later = self.run_query("denied-flows", **{"from": TO, "to": TO + 60})
        self.assertEqual([r["start"] for r in later], [TO])
        # A window ending before the midnight flows end still finds them by overlap.
        early = self.run_query(
            "denied-flows",
            **{"from": epoch("2026-11-25T00:00:00"), "to": epoch("2026-11-25T00:00:10")},
        )
        self.assertEqual([r["dst_pod"] for r in early], ["kube-dns"])
        self.assertEqual(self.run_query("denied-flows", **{"from": 0, "to": 1}), [])

    def test_pod_flows_both_ends_and_verdicts(self):
        rows = self.run_query("pod-flows", namespace="default", pod="amazonlinux", **self.window())
        as_src = [r for r in rows if r["src_pod"] == "amazonlinux"]
        as_dst = [r for r in rows if r["dst_pod"] == "amazonlinux"]
        self.assertEqual(len(as_src) + len(as_dst), len(rows))
        self.assertEqual(
            [(r["srcaddr"], r["dstport"], r["verdict"]) for r in as_dst],
            [("203.0.113.7", 22, "deny")],
        )
        self.assertEqual(
            [
                (r["dst_pod"], r["flow_direction"], r["verdict"], r["verdict_reason"])
                for r in as_src
            ],
            [
                ("nginx", "egress", "allow", "no-policy-selects-pod"),
                ("kube-dns", "egress", "deny", "isolated-no-rule-matched"),
                ("httpd", "egress", "deny", "isolated-no-rule-matched"),
                ("kube-dns", "egress", "allow", "allowed-by-rule"),
                ("kube-dns", "ingress", "allow", "no-policy-selects-pod"),
                ("nginx", "egress", "allow", "allowed-by-rule"),
                ("nginx", "ingress", "allow", "allowed-by-rule"),
            ],
        )
        by_rule = [r for r in as_src if r["policy_name"] == "allow-amazonlinux-to-nginx"]
        self.assertEqual([r["policy_rule"] for r in by_rule], [0, 1])
        self.assertEqual(
            self.run_query(
                "pod-flows", namespace="kube-system", pod="amazonlinux", **self.window()
            ),
            [],
        )

    def test_top_denied_sources(self):
        rows = self.run_query("top-denied-sources", limit=10, **self.window())
        self.assertEqual(
            [
                (r["rank"], r["src_pod"], r["srcaddr"], r["flows"], r["packets"], r["destinations"])
                for r in rows
            ],
            [(1, "amazonlinux", "198.18.0.40", 2, 8, 2), (2, None, "203.0.113.7", 1, 2, 1)],
        )
        self.assertEqual(rows[0]["src_workload"], "Pod/amazonlinux")
        self.assertEqual(rows[0]["first_seen"], epoch("2026-11-24T23:59:50"))
        self.assertEqual(rows[0]["last_seen"], epoch("2026-11-25T00:05:07"))
        top = self.run_query("top-denied-sources", limit=1, **self.window())
        self.assertEqual([r["src_pod"] for r in top], ["amazonlinux"])

    def test_top_denied_destinations(self):
        rows = self.run_query("top-denied-destinations", limit=2, **self.window())
        self.assertEqual(
            [
                (
                    r["rank"],
                    r["dst_namespace"],
                    r["dst_pod"],
                    r["dstport"],
                    r["protocol"],
                    r["packets"],
                    r["sources"],
                )
                for r in rows
            ],
            [(1, "kube-system", "kube-dns", 53, 17, 5, 1), (2, "default", "httpd", 80, 6, 3, 1)],
        )
        everything = self.run_query("top-denied-destinations", limit=100, **self.window())
        self.assertEqual([r["dst_pod"] for r in everything], ["kube-dns", "httpd", "amazonlinux"])

    def test_policy_rule_hits(self):
        rows = self.run_query("policy-rule-hits", **self.window())
        self.assertEqual(
            [
                (
                    r["policy_namespace"],
                    r["policy_name"],
                    r["flow_direction"],
                    r["policy_rule"],
                    r["flows"],
                    r["packets"],
                    r["bytes"],
                )
                for r in rows
            ],
            [
                ("default", "allow-amazonlinux-to-nginx", "egress", 0, 1, 1, 82),
                ("default", "allow-amazonlinux-to-nginx", "egress", 1, 1, 1, 74),
                ("default", "allow-nginx-from-amazonlinux", "ingress", 0, 1, 1, 74),
            ],
        )

    def test_unselected_pods(self):
        rows = self.run_query("unselected-pods", **self.window())
        self.assertEqual(
            [(r["namespace"], r["pod"], r["workload"], r["directions"], r["flows"]) for r in rows],
            [
                ("default", "amazonlinux", "Pod/amazonlinux", "egress", 1),
                ("kube-system", "kube-dns", "Pod/kube-dns", "egress,ingress", 2),
            ],
        )
        self.assertEqual(rows[1]["last_seen"], epoch("2026-11-25T00:10:01"))
        # After step 1, only kube-system is unprotected.
        later = self.run_query(
            "unselected-pods", **{"from": epoch("2026-11-25T00:01:00"), "to": TO}
        )
        self.assertEqual([r["pod"] for r in later], ["kube-dns"])

    def test_branch_eni_pods(self):
        rows = self.run_query("branch-eni-pods", **self.window())
        # The oracle: amazonlinux's own decisions in the window (its egress, its ingress),
        # counted here.
        mine = [
            r
            for r in RECORDS
            if r["log_status"] == "OK"
            and (r["src_pod"] if r["flow_direction"] == "egress" else r["dst_pod"])
            == "amazonlinux"
            and r["end"] >= FROM
            and r["start"] < TO
        ]
        self.assertTrue(mine)
        self.assertEqual(
            [
                (r["namespace"], r["pod"], r["workload"], r["interface"], r["flows"])
                for r in rows
            ],
            [("default", "amazonlinux", "Pod/amazonlinux", "vlanc1719b715ef", len(mine))],
        )
        self.assertEqual(
            (rows[0]["accepted"], rows[0]["rejected"], rows[0]["packets"]),
            (
                sum(r["action"] == "ACCEPT" for r in mine),
                sum(r["action"] == "REJECT" for r in mine),
                sum(r["packets"] for r in mine),
            ),
        )
        self.assertEqual(rows[0]["last_seen"], max(r["end"] for r in mine))

    def test_loss_records(self):
        rows = self.run_query("loss-records", **self.window())
        self.assertEqual(
            [
                (r["loss_source"], r["skipped_events"], r["start"], r["end"], r["node"])
                for r in rows
            ],
            [
                (
                    "collector-restart",
                    None,
                    epoch("2026-11-23T00:20:00"),
                    epoch("2026-11-25T00:01:00"),
                    "lab-node",
                ),
                (
                    "ringbuf-full",
                    17,
                    epoch("2026-11-25T00:08:00"),
                    epoch("2026-11-25T00:08:01"),
                    "lab-node",
                ),
            ],
        )
        self.assertEqual(self.run_query("loss-records", **{"from": TO, "to": TO + 60}), [])

    def test_denied_pairs(self):
        rows = self.run_query("denied-pairs", limit=10, **self.window())
        self.assertEqual(
            [
                (
                    r["rank"],
                    r["flow_direction"],
                    r["src_pod"],
                    r["srcaddr"],
                    r["dst_namespace"],
                    r["dst_pod"],
                    r["dstport"],
                    r["protocol"],
                    r["flows"],
                    r["packets"],
                )
                for r in rows
            ],
            [
                (1, "egress", "amazonlinux", "198.18.0.40", "kube-system", "kube-dns", 53, 17, 1, 5),
                (2, "egress", "amazonlinux", "198.18.0.40", "default", "httpd", 80, 6, 1, 3),
                (3, "ingress", None, "203.0.113.7", "default", "amazonlinux", 22, 6, 1, 2),
            ],
        )  # fmt: skip
        self.assertEqual(rows[0]["src_workload"], "Pod/amazonlinux")
        self.assertEqual(rows[0]["dst_workload"], "Pod/kube-dns")
        self.assertEqual(rows[0]["bytes"], 410)
        # Over a longer window the DNS pair adds up its two refusals, before and after the
        # quarantine (whatever the source port and the source's labels).
        longer = self.run_query("denied-pairs", limit=1, **{"from": FROM, "to": TO + 300})
        self.assertEqual(
            [(r["dst_pod"], r["flows"], r["packets"]) for r in longer], [("kube-dns", 2, 9)]
        )
        self.assertEqual(longer[0]["first_seen"], epoch("2026-11-24T23:59:50"))
        self.assertEqual(longer[0]["last_seen"], epoch("2026-11-25T00:31:12"))

    def test_denied_over_time(self):
        rows = self.run_query("denied-over-time", **self.window())
        self.assertEqual(
            [
                (
                    r["start"],
                    r["flow_direction"],
                    r["namespace"],
                    r["pod"],
                    r["workload"],
                    r["labels"],
                    r["flows"],
                    r["packets"],
                )
                for r in rows
            ],
            [
                (epoch("2026-11-24T23:59:50"), "egress", "default", "amazonlinux",
                 "Pod/amazonlinux", {"app": "amazonlinux"}, 1, 5),
                (epoch("2026-11-25T00:05:00"), "egress", "default", "amazonlinux",
                 "Pod/amazonlinux", {"app": "amazonlinux"}, 1, 3),
                # Refused at amazonlinux's ingress: the endpoint is the destination.
                (epoch("2026-11-25T00:06:00"), "ingress", "default", "amazonlinux",
                 "Pod/amazonlinux", {"app": "amazonlinux"}, 1, 2),
            ],
        )  # fmt: skip
        self.assertEqual(rows[0]["verdict_reason"], "isolated-no-rule-matched")
        self.assertEqual(rows[0]["last_seen"], epoch("2026-11-25T00:00:40"))
        # After the quarantine: the label is on the pod from the second refusal on.
        later = self.run_query("denied-over-time", **{"from": TO, "to": TO + 300})
        self.assertEqual(
            [(r["start"], r["packets"], r["labels"]) for r in later],
            [
                (epoch("2026-11-25T00:30:00"), 2, {"app": "amazonlinux"}),
                (epoch("2026-11-25T00:31:10"), 4, {"app": "amazonlinux"}),
                (epoch("2026-11-25T00:31:40"), 1, AMAZONLINUX_QUARANTINED[3]),
            ],
        )

    def test_pod_timeline_has_the_flows_and_the_isolation_records(self):
        window = {"from": epoch("2026-11-25T00:20:00"), "to": epoch("2026-11-25T00:45:00")}
        rows = self.run_query("pod-timeline", namespace="default", pod="amazonlinux", **window)
        self.assertEqual(
            [(r["log_status"], r["isolation_action"], r["verdict"], r["dst_pod"]) for r in rows],
            [
                ("ISOLATION", "quarantine", None, None),
                ("OK", None, "deny", "httpd"),
                ("OK", None, "deny", "kube-dns"),
                ("OK", None, "deny", "nginx"),
                ("ISOLATION", "release", None, None),
            ],
        )
        quarantine = rows[0]
        self.assertEqual(quarantine["start"], epoch("2026-11-25T00:29:00"))
        self.assertEqual(quarantine["end"], quarantine["start"])
        self.assertEqual(
            (
                quarantine["src_namespace"],
                quarantine["src_pod"],
                quarantine["isolation_actor"],
                quarantine["isolation_reason"],
                quarantine["policy_namespace"],
                quarantine["policy_name"],
            ),
            ("default", "amazonlinux", "lab:root", "calls httpd", "default",
             "tollgate-quarantine-amazonlinux"),
        )  # fmt: skip
        self.assertEqual(rows[1]["action"], "REJECT")
        # Over the whole window: every flow record of pod-flows, and the quarantine.
        pod = {"namespace": "default", "pod": "amazonlinux", **self.window()}
        self.assertEqual(
            len(self.run_query("pod-timeline", **pod)), len(self.run_query("pod-flows", **pod)) + 1
        )
        # httpd's timeline has the refused flow to it, not amazonlinux's isolation record.
        httpd = self.run_query("pod-timeline", namespace="default", pod="httpd", **window)
        self.assertEqual([(r["log_status"], r["src_pod"]) for r in httpd], [("OK", "amazonlinux")])

    def test_isolation_records(self):
        rows = self.run_query("isolation-records", **self.window())
        self.assertEqual(len(rows), 1)
        r = rows[0]
        self.assertEqual(
            (r["start"], r["isolation_action"], r["src_namespace"], r["src_pod"], r["srcaddr"]),
            (epoch("2026-11-25T00:29:00"), "quarantine", "default", "amazonlinux", "198.18.0.40"),
        )
        self.assertEqual(r["src_workload"], "Pod/amazonlinux")
        self.assertEqual(r["src_labels"], {"app": "amazonlinux"})
        self.assertEqual((r["isolation_actor"], r["isolation_reason"]), ("lab:root", "calls httpd"))
        self.assertEqual(r["policy_name"], "tollgate-quarantine-amazonlinux")
        detail = json.loads(r["isolation_detail"])
        self.assertEqual(detail["label"], {"key": "tollgate.io/quarantine", "value": "amazonlinux"})
        self.assertEqual(detail["policy"]["resource_version"], "4711")
        self.assertEqual((r["node"], r["cluster"]), ("lab-node", "lab"))
        days = self.run_query(
            "isolation-records",
            **{"from": epoch("2026-11-23T00:00:00"), "to": epoch("2026-11-26T00:00:00")},
        )
        self.assertEqual(
            [(r["src_pod"], r["isolation_action"], r["isolation_actor"]) for r in days],
            [("nginx", "quarantine", "alice"), ("amazonlinux", "quarantine", "lab:root"),
             ("amazonlinux", "release", "lab:root")],
        )  # fmt: skip
        at = epoch("2026-11-25T00:29:00")
        self.assertEqual(len(self.run_query("isolation-records", **{"from": at, "to": at + 1})), 1)
        self.assertEqual(self.run_query("isolation-records", **{"from": at + 1, "to": TO}), [])
        self.assertEqual(self.run_query("isolation-records", **{"from": FROM, "to": at}), [])

    def test_audit_would_be_denied(self):
        rows = self.run_query("audit-would-be-denied", **self.window())
        self.assertEqual(
            [
                (
                    r["flow_direction"],
                    r["src_namespace"],
                    r["src_pod"],
                    r["dst_pod"],
                    r["dstaddr"],
                    r["dstport"],
                    r["protocol"],
                    r["flows"],
                    r["packets"],
                )
                for r in rows
            ],
            [
                ("egress", "default", "httpd", "nginx", "198.18.0.20", 8080, 6, 2, 3),
                ("egress", "kube-system", "kube-dns", None, "8.8.4.4", 53, 17, 1, 1),
            ],
        )
        self.assertEqual(rows[0]["verdict_reason"], "isolated-no-rule-matched")
        self.assertEqual(rows[0]["first_seen"], epoch("2026-11-25T00:07:00"))
        self.assertEqual(rows[0]["last_seen"], epoch("2026-11-25T00:07:31"))
        # Audit-mode denials passed: none of them is a denied flow.
        denied = self.run_query("denied-flows", **self.window())
        self.assertNotIn("audit-deny", {r["verdict"] for r in denied})

    def test_integer_params_may_be_strings(self):
        rows = self.run_query("denied-flows", **{"from": str(FROM), "to": str(TO)})
        self.assertEqual(len(rows), 3)


class ServiceTest(FlowDirTest):
    def svc_window(self, **more) -> dict:
        return {"from": SVC_FROM, "to": SVC_TO, **more}

    def test_denied_flows_name_the_service_and_keep_the_cluster_ip(self):
        rows = self.run_query("denied-flows", **self.svc_window())
        self.assertEqual(
            [
                (r["dstaddr"], r["dst_pod"], r["svc_namespace"], r["svc_name"], r["svc_addr"],
                 r["svc_port"], r["verdict_reason"])
                for r in rows
            ],
            [
                (KUBE_DNS_CLUSTER_IP, None, "kube-system", "kube-dns", KUBE_DNS_CLUSTER_IP, 53,
                 "isolated-no-rule-matched"),
                (NGINX_CLUSTER_IP, None, "default", "nginx", NGINX_CLUSTER_IP, 80,
                 "service-backends-denied"),
                # The backend's ingress decision: no Service seen after the rewrite.
                ("198.18.0.20", "nginx", None, None, None, None, "isolated-no-rule-matched"),
            ],
        )  # fmt: skip
        # The seed's records, written without Services, have them null.
        seed = self.run_query("denied-flows", **self.window())
        self.assertTrue(all(r[c] is None for r in seed for c in SVC_COLUMNS))

    def test_denied_service_flows(self):
        rows = self.run_query("denied-service-flows", **self.svc_window())
        self.assertEqual(
            [
                (r["svc_namespace"], r["svc_name"], r["svc_addr"], r["svc_port"], r["protocol"],
                 r["src_pod"], r["verdict_reason"], r["flows"], r["packets"])
                for r in rows
            ],
            [
                ("default", "nginx", NGINX_CLUSTER_IP, 80, 6, "amazonlinux",
                 "service-backends-denied", 1, 6),
                ("kube-system", "kube-dns", KUBE_DNS_CLUSTER_IP, 53, 17, "amazonlinux",
                 "isolated-no-rule-matched", 1, 4),
            ],
        )  # fmt: skip
        self.assertEqual(rows[0]["bytes"], 6 * 74)
        self.assertEqual(rows[0]["first_seen"], epoch("2026-11-25T02:03:00"))
        self.assertEqual(rows[0]["last_seen"], epoch("2026-11-25T02:03:05"))
        self.assertEqual(self.run_query("denied-service-flows", **self.window()), [])

    def test_destinations_and_pairs_name_the_service(self):
        top = self.run_query("top-denied-destinations", limit=10, **self.svc_window())
        self.assertEqual(
            [(r["dstaddr"], r["svc_namespace"], r["svc_name"], r["packets"]) for r in top],
            [
                (NGINX_CLUSTER_IP, "default", "nginx", 6),
                (KUBE_DNS_CLUSTER_IP, "kube-system", "kube-dns", 4),
                ("198.18.0.20", None, None, 2),
            ],
        )
        pairs = self.run_query("denied-pairs", limit=1, **self.svc_window())
        self.assertEqual(
            [(r["src_pod"], r["dstaddr"], r["svc_name"], r["dstport"]) for r in pairs],
            [("amazonlinux", NGINX_CLUSTER_IP, "nginx", 80)],
        )

    def test_pod_flows_have_the_service_and_the_node(self):
        rows = self.run_query("pod-flows", namespace="default", pod="nginx", **self.svc_window())
        self.assertEqual(
            [
                (r["src_namespace"], r["src_pod"], r["srcaddr"], r["verdict"], r["verdict_reason"])
                for r in rows
            ],
            [
                ("default", "amazonlinux", "198.18.0.40", "deny", "isolated-no-rule-matched"),
                (None, None, "198.18.0.1", "allow", "from-node"),
            ],
        )
        timeline = self.run_query(
            "pod-timeline", namespace="default", pod="amazonlinux", **self.svc_window()
        )
        self.assertEqual(
            [(r["svc_name"], r["svc_port"], r["verdict"]) for r in timeline],
            [("kube-dns", 53, "deny"), ("kube-dns", 53, "allow"), ("nginx", 80, "deny"),
             (None, None, "deny")],
        )  # fmt: skip
        self.assertEqual(timeline[2]["svc_addr"], NGINX_CLUSTER_IP)


# The decision trace (record version 2): an Admin-tier Deny and Accept (one of AWS's API), a
# NetworkPolicy's Allow and its default deny, a Baseline Deny, and a default allow after a
# Baseline Pass; a flow no tier decided (established) does not count.
TIER_FROM = epoch("2026-11-26T03:00:00")
TIER_TO = epoch("2026-11-26T04:00:00")
CNP = "ClusterNetworkPolicy"
TIER_RECORDS = [
    flow("2026-11-26T03:01:00", "2026-11-26T03:01:02", AMAZONLINUX, HTTPD, 80, 6, "egress",
         "deny", "denied-by-rule", 3, policy=(None, "no-httpd", 0), trace=("Admin", CNP, "Deny")),
    flow("2026-11-26T03:02:00", "2026-11-26T03:02:00", AMAZONLINUX, NGINX, 80, 6, "egress",
         "allow", "allowed-by-rule", 1, policy=(None, "web", 0), trace=("Admin", CNP, "Accept")),
    flow("2026-11-26T03:03:00", "2026-11-26T03:03:00", AMAZONLINUX, NGINX, 80, 6, "egress",
         "allow", "allowed-by-rule", 1, srcport=40001, policy=(None, "web", 0),
         trace=("Admin", CNP, "Accept")),
    flow("2026-11-26T03:04:00", "2026-11-26T03:04:01", AMAZONLINUX, KUBE_DNS, 53, 17, "egress",
         "deny", "denied-by-rule", 2, policy=(None, "no-dns", 1),
         trace=("Admin", "ClusterNetworkPolicy.networking.k8s.aws", "Deny")),
    flow("2026-11-26T03:05:00", "2026-11-26T03:05:00", AMAZONLINUX, KUBE_DNS, 53, 17, "egress",
         "allow", "allowed-by-rule", 1, policy=RULE_DNS),
    flow("2026-11-26T03:06:00", "2026-11-26T03:06:03", AMAZONLINUX, HTTPD, 80, 6, "ingress",
         "deny", "isolated-no-rule-matched", 4, isolating=["default/all-deny"]),
    flow("2026-11-26T03:07:00", "2026-11-26T03:07:00", KUBE_DNS, HTTPD, 80, 6, "ingress",
         "deny", "denied-by-rule", 1, policy=(None, "baseline-deny", 0),
         trace=("Baseline", CNP, "Deny")),
    flow("2026-11-26T03:08:00", "2026-11-26T03:08:00", KUBE_DNS, NGINX, 80, 6, "ingress",
         "allow", "default-allow", 1, policy=(None, "baseline-pass", 0),
         trace=("Baseline", CNP, "Pass")),
    flow("2026-11-26T03:09:00", "2026-11-26T03:09:00", KUBE_DNS, NGINX, 80, 6, "ingress",
         "allow", "established", 1),
]  # fmt: skip


class TierTest(FlowDirTest):
    """policy-tier-hits over the decision trace, and the trace columns as written."""

    RECORDS = TIER_RECORDS

    def test_policy_tier_hits(self):
        rows = self.run_query("policy-tier-hits", **{"from": TIER_FROM, "to": TIER_TO})
        self.assertEqual(
            [
                (r["policy_tier"], r["policy_action"], r["policy_kind"], r["policy_namespace"],
                 r["policy_name"], r["verdict"], r["flows"], r["packets"])
                for r in rows
            ],
            [
                ("Admin", "Accept", CNP, None, "web", "allow", 2, 2),
                ("Admin", "Deny", CNP, None, "no-httpd", "deny", 1, 3),
                ("Admin", "Deny", "ClusterNetworkPolicy.networking.k8s.aws", None, "no-dns",
                 "deny", 1, 2),
                ("NetworkPolicy", "Allow", "NetworkPolicy", "default",
                 "allow-amazonlinux-to-nginx", "allow", 1, 1),
                ("NetworkPolicy", None, None, None, None, "deny", 1, 4),
                ("Baseline", "Deny", CNP, None, "baseline-deny", "deny", 1, 1),
                ("Baseline", "Pass", CNP, None, "baseline-pass", "allow", 1, 1),
            ],
        )  # fmt: skip

    def test_a_default_deny_names_the_isolating_policies(self):
        rows = self.run_query("denied-flows", **{"from": TIER_FROM, "to": TIER_TO})
        named = [r for r in rows if r["verdict_reason"] == "isolated-no-rule-matched"]
        self.assertEqual(len(named), 1)
        con = run_duckdb.connect(self.dir)
        isolating = con.execute(
            "SELECT isolating_policies FROM flows WHERE verdict_reason = 'isolated-no-rule-matched'"
        ).fetchall()
        self.assertEqual(isolating, [(["default/all-deny"],)])

    def test_denied_over_time_names_the_denying_policies(self):
        rows = self.run_query("denied-over-time", **{"from": TIER_FROM, "to": TIER_TO})
        self.assertEqual(
            [
                (r["pod"], r["verdict_reason"], r["policy_kind"], r["policy_namespace"],
                 r["policy_name"], r["isolating_policies"], r["packets"])
                for r in rows
            ],
            [
                ("amazonlinux", "denied-by-rule", CNP, None, "no-httpd", None, 3),
                ("amazonlinux", "denied-by-rule", "ClusterNetworkPolicy.networking.k8s.aws",
                 None, "no-dns", None, 2),
                ("httpd", "isolated-no-rule-matched", None, None, None, "default/all-deny", 4),
                ("httpd", "denied-by-rule", CNP, None, "baseline-deny", None, 1),
            ],
        )  # fmt: skip


class OlderLayoutTest(unittest.TestCase):
    """Files written before the svc_* columns were appended read them as null: next to newer
    files (union_by_name) and alone (the view has every column of the table, as Athena)."""

    def write_and_query(self, name: str, old: list[dict], new: list[dict]) -> list[dict]:
        with tempfile.TemporaryDirectory(prefix="tollgate-old-") as tmp:
            root = Path(tmp) / "flows"
            write_flow_dir(root, old, omit=SVC_COLUMNS)
            if new:
                # Other node names, so no file of the older layout is overwritten.
                write_flow_dir(root, [{**r, "node": "new-node"} for r in new])
            return run_duckdb.run_query(root, name, {"from": SVC_FROM, "to": SVC_TO})

    def test_only_older_files(self):
        rows = self.write_and_query("denied-flows", SERVICE_RECORDS, [])
        self.assertEqual(len(rows), 3)
        self.assertTrue(all(r[c] is None for r in rows for c in SVC_COLUMNS))
        self.assertEqual(self.write_and_query("denied-service-flows", SERVICE_RECORDS, []), [])

    def test_older_next_to_newer_files(self):
        rows = self.write_and_query("denied-flows", SERVICE_RECORDS[:1], SERVICE_RECORDS[2:3])
        self.assertEqual(
            [(r["node"], r["svc_name"], r["svc_port"]) for r in rows],
            [("lab-node", None, None), ("new-node", "nginx", 80)],
        )


class ErrorTest(FlowDirTest):
    def assert_error(self, pattern: str, name: str, params: dict, directory: Path | None = None):
        with self.assertRaisesRegex(run_duckdb.QueryError, pattern):
            run_duckdb.run_query(directory or self.dir, name, params)

    def test_unknown_query(self):
        self.assert_error(
            r"unknown query 'nope' \(known: audit-would-be-denied, branch-eni-pods, denied-flows, ",
            "nope",
            {},
        )
        self.assert_error(r"unknown query", "../denied-flows", {})

    def test_missing_extra_and_bad_params(self):
        self.assert_error(r"needs parameter 'to'", "denied-flows", {"from": FROM})
        self.assert_error(
            r"has no parameter 'limit'", "denied-flows", {"from": FROM, "to": TO, "limit": 3}
        )
        self.assert_error(
            r"'from' \(bigint\): 'yesterday' is not an integer",
            "denied-flows",
            {"from": "yesterday", "to": TO},
        )
        self.assert_error(r"out of range", "denied-flows", {"from": 2**63, "to": TO})
        self.assert_error(
            r"'pod' \(string\): 3 is not a string",
            "pod-flows",
            {"namespace": "default", "pod": 3, "from": FROM, "to": TO},
        )

    def test_empty_and_missing_directory(self):
        with tempfile.TemporaryDirectory() as empty:
            self.assert_error(
                r"no Parquet files under", "denied-flows", {"from": FROM, "to": TO}, Path(empty)
            )
            (Path(empty) / "stray.parquet").write_bytes(b"")
            self.assert_error(
                r"stray.parquet is not in that layout",
                "denied-flows",
                {"from": FROM, "to": TO},
                Path(empty),
            )
        self.assert_error(
            r"does not exist", "denied-flows", {"from": FROM, "to": TO}, self.dir / "missing"
        )


class CommandLineTest(FlowDirTest):
    def cli(self, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, str(RUNNER), *args],
            check=False,
            capture_output=True,
            text=True,
            env={**os.environ, **(env or {})},
        )

    def test_json_lines(self):
        out = self.cli(
            "--dir",
            str(self.dir),
            "--query",
            "top-denied-sources",
            "--param",
            f"from={FROM}",
            "--param",
            f"to={TO}",
            "--param",
            "limit=5",
            "--format",
            "json",
        )
        self.assertEqual(out.returncode, 0, out.stderr)
        rows = [json.loads(line) for line in out.stdout.splitlines()]
        self.assertEqual([r["srcaddr"] for r in rows], ["198.18.0.40", "203.0.113.7"])
        self.assertEqual(list(rows[0])[:3], ["rank", "src_namespace", "src_pod"])

    def test_labels_and_nulls_in_json(self):
        out = self.cli(
            "--dir",
            str(self.dir),
            "--query",
            "loss-records",
            "--param",
            f"from={FROM}",
            "--param",
            f"to={TO}",
        )
        self.assertEqual(out.returncode, 0, out.stderr)
        first = json.loads(out.stdout.splitlines()[0])
        self.assertIsNone(first["skipped_events"])

    def test_the_window_does_not_depend_on_the_local_time_zone(self):
        for tz in ("Pacific/Kiritimati", "Pacific/Pago_Pago"):
            out = self.cli(
                "--dir",
                str(self.dir),
                "--query",
                "denied-flows",
                "--param",
                f"from={FROM}",
                "--param",
                f"to={TO}",
                env={"TZ": tz},
            )
            self.assertEqual(out.returncode, 0, out.stderr)
            self.assertEqual(len(out.stdout.splitlines()), 3, tz)

    def test_table(self):
        out = self.cli(
            "--dir",
            str(self.dir),
            "--query",
            "policy-rule-hits",
            "--param",
            f"from={FROM}",
            "--param",
            f"to={TO}",
            "--format",
            "table",
        )
        self.assertEqual(out.returncode, 0, out.stderr)
        lines = out.stdout.splitlines()
        self.assertTrue(lines[0].startswith("policy_namespace  policy_name"))
        self.assertEqual(lines[-1], "(3 rows)")
        empty = self.cli(
            "--dir",
            str(self.dir),
            "--query",
            "loss-records",
            "--param",
            "from=0",
            "--param",
            "to=1",
            "--format",
            "table",
        )
        self.assertEqual(empty.returncode, 0, empty.stderr)
        self.assertTrue(empty.stdout.startswith("start  end  loss_source"), empty.stdout)
        self.assertTrue(empty.stdout.rstrip().endswith("(0 rows)"))

    def test_list_and_print_sql(self):
        out = self.cli("--list")
        self.assertEqual(out.returncode, 0, out.stderr)
        for name in QueryFileTest.EXPECTED:
            self.assertIn(f"{name}: ", out.stdout)
        self.assertIn("--param limit=<bigint>", out.stdout)
        sql = self.cli("--query", "denied-flows", "--print-sql")
        self.assertEqual(sql.returncode, 0, sql.stderr)
        self.assertIn("STRFTIME(TO_TIMESTAMP(? - 3600), '%Y-%m-%d')", sql.stdout)

    def test_errors_exit_1_with_a_message(self):
        cases = [
            (["--query", "nope"], "unknown query 'nope'"),
            (["--query", "denied-flows", "--param", f"from={FROM}"], "needs parameter 'to'"),
            (
                ["--query", "denied-flows", "--param", "from=x", "--param", f"to={TO}"],
                "is not an integer",
            ),
            (
                ["--query", "denied-flows", "--param", "from", "--param", f"to={TO}"],
                "expected NAME=VALUE",
            ),
            (["--query", "denied-flows", "--param", "from=1", "--param", "from=2"], "given twice"),
        ]
        for args, message in cases:
            out = self.cli("--dir", str(self.dir), *args)
            self.assertEqual(out.returncode, 1, args)
            self.assertIn(message, out.stderr, args)
            self.assertEqual(out.stdout, "", args)
        with tempfile.TemporaryDirectory() as empty:
            out = self.cli(
                "--dir", empty, "--query", "denied-flows", "--param", "from=0", "--param", "to=1"
            )
            self.assertEqual(out.returncode, 1)
            self.assertIn("no Parquet files under", out.stderr)
        usage = self.cli("--param", "from=0")
        self.assertEqual(usage.returncode, 2)


if __name__ == "__main__":
    unittest.main()
