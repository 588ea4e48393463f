"""Runs the analysis notebooks headless on a lab run, and checks their shared module.

The data: $TOLLGATE_LAB_DATA when set (the --out directory of `tollgate lab --quarantine
--ocsf`), else a fresh `tollgate lab --quarantine --ocsf --out <tmp>` (after `cargo test
--no-run`, a no-op after the test suite; the lab needs root, and without it the lab tests are
skipped with a loud line). The binary, for the lab and for `tollgate evidence verify`, is the one
tollgate_notebooks.tollgate_binary() finds: $TOLLGATE_BIN, else target/debug/tollgate (under
$CARGO_TARGET_DIR when set). Every notebook runs through run_notebook.execute (papermill, the
venv's ipykernel, the parameters injected after the `parameters` cell) and must run without an
error, draw a PNG in every cell that calls a plot_ function, show no empty table (an empty
result is a sentence instead), and show the tables a quarantine lab run fills.

    .venv/bin/python -m unittest discover -s notebooks -p 'test_*.py'
"""

from __future__ import annotations

import hashlib
import html
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path
from unittest import mock

import duckdb
import pandas as pd
from papermill.exceptions import PapermillExecutionError

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

import run_notebook
import tollgate_notebooks as tn

NOTEBOOKS = ("denied-flows-triage", "incident-timeline", "policy-coverage")
MANIFESTS = [
    str(REPO / "examples" / "seed" / "all-deny.yaml"),
    str(REPO / "examples" / "seed" / "allow-amazonlinux-to-nginx.yaml"),
    str(REPO / "examples" / "incident" / "*.yaml"),
]
# A policy no flow of the lab matches: its rule must be listed as never matched.
UNUSED_POLICY = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-httpd-from-monitoring, namespace: default}
spec:
  podSelector: {matchLabels: {app: httpd}}
  policyTypes: [Ingress]
  ingress:
  - from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: monitoring}}}]
    ports: [{port: 9100}]
"""
NO_SETTINGS = {
    "flow_dir": None,
    "athena_workgroup": None,
    "athena_database": None,
    "aws_region": None,
    "athena_s3_staging_dir": None,
}


def run(name: str, **params):
    return run_notebook.execute(HERE / f"{name}.ipynb", params)


def shown(notebook) -> tuple[dict[str, int], str]:
    """The tables the notebook showed (title → rows; 0 for a sentence instead of a table)
    and all it printed; asserts on the way that each plot cell drew a PNG and that no table
    shown is empty."""
    tables: dict[str, int] = {}
    printed = []
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        kinds = [o for o in cell.outputs if o.output_type in ("display_data", "execute_result")]
        if "tn.plot_" in cell.source:
            assert any("image/png" in o.data for o in kinds), f"no image from: {cell.source}"
        for output in kinds:
            text = output.data.get("text/html", "")
            rows = text[text.find("<tbody>") :].count("<tr>") if "<table" in text else None
            assert rows != 0, f"an empty table from: {cell.source}"
            title = re.match(r"<h4>(.*?)</h4>", text)
            if title:
                tables[html.unescape(title.group(1))] = rows or 0
        printed += [o.text for o in cell.outputs if o.output_type == "stream"]
    return tables, "".join(printed)


class ModuleTest(unittest.TestCase):
    """tollgate_notebooks on its own: no lab needed."""

    def test_policies_are_read_from_manifests(self):
        policies = tn.load_policies(MANIFESTS)
        self.assertEqual(
            [tn.policy_name(p) for p in policies],
            [
                "default/all-deny",
                "default/allow-amazonlinux-to-nginx",
                "default/allow-nginx-from-amazonlinux",
                "kube-system/default-deny",
            ],
        )
        with self.assertRaisesRegex(tn.SettingsError, "names no file"):
            tn.load_policies(["/nonexistent/*.yaml"])
        with self.assertRaisesRegex(tn.SettingsError, "give a list"):
            tn.load_policies("examples/seed/all-deny.yaml")

    def test_rule_coverage_lists_every_rule_with_the_hits_the_records_name(self):
        policies = tn.load_policies(MANIFESTS[:2])
        hits = tn.frame(
            ["policy_namespace", "policy_name", "flow_direction", "policy_rule", "flows",
             "packets", "last_seen"],
            [("default", "allow-amazonlinux-to-nginx", "egress", 1, 3, 7, 1200)],
        )  # fmt: skip
        coverage = tn.rule_coverage(policies, hits)
        self.assertEqual(
            coverage[["policy", "direction", "rule", "flows"]].fillna(-1).values.tolist(),
            [
                ["default/all-deny", "egress", -1, -1],  # a policy without rules isolates only
                ["default/all-deny", "ingress", -1, -1],
                ["default/allow-amazonlinux-to-nginx", "egress", 0, 0],
                ["default/allow-amazonlinux-to-nginx", "egress", 1, 3],
                ["default/allow-nginx-from-amazonlinux", "ingress", 0, 0],
            ],
        )
        unused, policies_unused = tn.never_matched(coverage)
        self.assertEqual(
            list(zip(unused["policy"], unused["rule"])),
            [("default/allow-amazonlinux-to-nginx", 0), ("default/allow-nginx-from-amazonlinux", 0)],
        )
        self.assertEqual(list(policies_unused["policy"]), ["default/allow-nginx-from-amazonlinux"])
        # A policy without policyTypes nor rules: one row, no direction.
        bare = {"metadata": {"namespace": "default", "name": "bare"}, "spec": {}}
        self.assertEqual(
            tn.rule_coverage([bare], hits)[["direction", "allows"]].fillna("").values.tolist(),
            [["", "(no rule: isolates only)"]],
        )

    def test_denials_are_attributed_to_the_rule_then_the_isolating_policies_then_reason(self):
        def denied(second, pod, reason, kind=None, name=None, isolating=None):
            return (second, "egress", "default", pod, f"Pod/{pod}", reason, kind, None, name,
                    isolating, 1, 2, 148, second + 4)  # fmt: skip

        columns = [
            "start", "flow_direction", "namespace", "pod", "workload", "verdict_reason",
            "policy_kind", "policy_namespace", "policy_name", "isolating_policies", "flows",
            "packets", "bytes", "last_seen",
        ]  # fmt: skip
        quarantine = "tollgate-quarantine-default-amazonlinux"
        rows = tn.frame(
            columns,
            [
                denied(60, "amazonlinux", "isolated-no-rule-matched",
                       isolating="default/all-deny,default/allow-amazonlinux-to-nginx"),
                denied(300, "amazonlinux", "denied-by-rule", "ClusterNetworkPolicy", quarantine),
                denied(1200, "amazonlinux", "isolated-no-rule-matched",
                       isolating="default/all-deny"),
                # A record of version 1, without the decision trace.
                denied(60, "kube-dns", "isolated-no-rule-matched"),
                denied(60, "httpd", "endpoint-not-programmed"),
            ],
        )  # fmt: skip
        attributed = tn.attribute_denials(rows)
        self.assertEqual(
            list(zip(attributed["policies"], attributed["attributed_by"])),
            [
                ("default/all-deny + default/allow-amazonlinux-to-nginx", "isolating_policies"),
                (f"ClusterNetworkPolicy/{quarantine}", "rule"),
                ("default/all-deny", "isolating_policies"),
                ("(isolated-no-rule-matched)", "verdict_reason"),
                ("(endpoint-not-programmed)", "verdict_reason"),
            ],
        )
        by_policy = tn.denials_by_policy(attributed).set_index("policy")
        self.assertEqual(by_policy.loc["default/all-deny", "flows"], 2)
        self.assertEqual(by_policy.loc[f"ClusterNetworkPolicy/{quarantine}", "packets"], 2)

    def test_ends_name_the_service_and_the_node(self):
        columns = [
            "flow_direction", "src_namespace", "src_pod", "src_workload", "srcaddr",
            "dst_namespace", "dst_pod", "dst_workload", "dstaddr", "svc_namespace", "svc_name",
            "dstport", "protocol",
        ]  # fmt: skip
        rows = tn.frame(
            columns,
            [
                ("egress", "default", "amazonlinux", "Pod/amazonlinux", "198.18.0.40", None,
                 None, None, "198.19.0.10", "kube-system", "kube-dns", 53, 17),
                ("ingress", None, None, "Node/lab-node", "198.18.0.1", "default", "nginx",
                 "Pod/nginx", "198.18.0.20", None, None, 80, 6),
            ],
        )  # fmt: skip
        dns, probe = rows.itertuples()
        self.assertEqual(
            tn.pair_label(dns),
            "default/amazonlinux → service:kube-system/kube-dns 53/udp (egress)",
        )
        self.assertEqual(tn.pair_label(probe), "Node/lab-node → default/nginx 80/tcp (ingress)")
        self.assertEqual(
            tn.peer_of(dns, "default", "amazonlinux"), "→ service:kube-system/kube-dns 53/udp"
        )
        self.assertEqual(tn.peer_of(probe, "default", "nginx"), "← Node/lab-node to 80/tcp")

    def test_athena_gets_the_query_text_and_positional_literals(self):
        calls = []

        class Cursor:
            description = (("start",), ("dst_pod",))

            def execute(self, sql, parameters=None, paramstyle=None):
                calls.append((sql, parameters, paramstyle))

            def fetchall(self):
                return [(1795564830, "kube-dns")]

        connection = mock.Mock()
        connection.cursor.return_value = Cursor()
        with mock.patch("pyathena.connect", return_value=connection) as connect:
            source = tn.connect(
                None,
                athena_workgroup="tollgate",
                athena_database="tollgate",
                aws_region="eu-west-1",
            )
            rows = source.run(
                "pod-flows", {"namespace": "default", "pod": "o'brien", "from": 10, "to": 20}
            )
        connect.assert_called_once_with(
            work_group="tollgate",
            schema_name="tollgate",
            region_name="eu-west-1",
            s3_staging_dir=None,
        )
        sql, parameters, paramstyle = calls[0]
        self.assertEqual(sql, (REPO / "schemas/athena/queries/pod-flows.sql").read_text())
        self.assertEqual(paramstyle, "qmark")
        self.assertEqual(
            parameters,
            ["'default'", "'o''brien'", "'default'", "'o''brien'", "10", "20", "10", "20"],
        )
        self.assertEqual(rows.to_dict("records"), [{"start": 1795564830, "dst_pod": "kube-dns"}])

    def test_the_vpc_flow_join_needs_its_inputs(self):
        window = {"from": 0, "to": 1}
        with tempfile.TemporaryDirectory() as empty:
            source = tn.LocalSource.__new__(tn.LocalSource)
            source.directory = Path(empty)
            self.assertIsNone(tn.join_vpc_flows(source, window))
            with self.assertRaisesRegex(tn.SettingsError, "vpc_flow_dir: no Parquet files"):
                tn.join_vpc_flows(source, window, vpc_flow_dir=empty)
        # The Athena text reads both tables, and transpiles for DuckDB.
        self.assertIn("FROM vpc_flows", tn.VPC_FLOW_JOIN)
        self.assertIn("JOIN ocsf_flows", tn.VPC_FLOW_JOIN)
        self.assertEqual(len(tn.sqlglot.transpile(tn.VPC_FLOW_JOIN, read="athena", write="duckdb")), 1)

    def test_the_binary_is_found_or_named(self):
        with mock.patch.dict(os.environ, {"TOLLGATE_BIN": "/nonexistent/tollgate"}):
            with self.assertRaisesRegex(tn.SettingsError, r"\$TOLLGATE_BIN = .*not an executable"):
                tn.tollgate_binary()
        with tempfile.TemporaryDirectory() as empty:
            nowhere = {"TOLLGATE_BIN": "", "CARGO_TARGET_DIR": empty, "PATH": empty}
            with mock.patch.dict(os.environ, nowhere):
                with self.assertRaisesRegex(tn.SettingsError, "no tollgate binary: .*TOLLGATE_BIN"):
                    tn.tollgate_binary()
            built = Path(empty) / "debug" / "tollgate"
            built.parent.mkdir()
            built.write_text("#!/bin/sh\n")
            built.chmod(0o755)
            with mock.patch.dict(os.environ, nowhere):
                self.assertEqual(tn.tollgate_binary(), built)

    def test_settings_errors_say_what_to_set(self):
        with self.assertRaisesRegex(tn.SettingsError, r"set flow_dir .* \$ATHENA_WORKGROUP"):
            tn.connect(None)
        with self.assertRaisesRegex(tn.SettingsError, r"not athena_database .* nor aws_region"):
            tn.connect(None, athena_workgroup="tollgate")
        with self.assertRaisesRegex(tn.SettingsError, "does not exist"):
            tn.connect("/nonexistent")
        with self.assertRaisesRegex(tn.SettingsError, "is not before"):
            tn.window("2026-11-25T10:00:00", "2026-11-25T09:00:00Z")
        self.assertEqual(
            tn.window("2026-11-25T10:00:00Z", 1795600000 + 3600),
            {"from": 1795600800, "to": 1795603600},
        )

    def test_a_notebook_without_settings_stops_at_once_with_the_message(self):
        with self.assertRaises(PapermillExecutionError) as caught:
            run("denied-flows-triage", **NO_SETTINGS)
        self.assertEqual(caught.exception.ename, "SettingsError")
        failed = [
            (i, o)
            for i, c in enumerate(caught.exception.notebook.cells)
            for o in c.get("outputs", [])
            if o.output_type == "error"
        ]
        self.assertEqual(len(failed), 1)
        index, error = failed[0]
        # The first code cell after the injected parameters failed (papermill puts a marker
        # cell of its own just before the failed one).
        cells = caught.exception.notebook.cells
        injected = next(
            i for i, c in enumerate(cells) if "injected-parameters" in c.metadata.get("tags", [])
        )
        self.assertIn("parameters", cells[injected - 1].metadata.tags)
        self.assertEqual(
            next(i for i in range(injected + 1, len(cells)) if cells[i].cell_type == "code"),
            index,
        )
        self.assertEqual(len(error.traceback), 1, "the message, no traceback")
        self.assertIn("ATHENA_WORKGROUP", error.traceback[0])


def lab_data() -> Path:
    """The output of a quarantine lab run: $TOLLGATE_LAB_DATA, or a new run (root only)."""
    given = os.environ.get("TOLLGATE_LAB_DATA")
    if given:
        return Path(given)
    if os.geteuid() != 0:
        print(
            "\n!!!!!!!! SKIPPED (needs root) the notebooks on a lab run: run as root, or set "
            "TOLLGATE_LAB_DATA to the --out directory of `tollgate lab --quarantine --ocsf` !!!!!!!!",
            file=sys.stderr,
        )
        raise unittest.SkipTest("the lab needs root")
    # The binary as the test suite builds it (`cargo test` of the workspace): a plain `cargo
    # build` resolves the dependencies' features without the dev-dependencies, so after the
    # suite it would compile a second set of them (~0.8 GiB of target/ in CI).
    subprocess.run(["cargo", "test", "--locked", "-q", "--no-run"], cwd=REPO, check=True)
    out = Path(tempfile.mkdtemp(prefix="tollgate-notebooks-lab-"))
    lab = subprocess.run(
        [str(tn.tollgate_binary()), "lab", "--quarantine", "--ocsf", "--out", str(out / "lab")],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    if lab.returncode != 0:
        shutil.rmtree(out, ignore_errors=True)
        raise AssertionError(f"tollgate lab --quarantine failed:\n{lab.stdout}\n{lab.stderr}")
    return out / "lab"


class LabTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.data = lab_data()
        cls.bundle = cls.data / "evidence"
        con = duckdb.connect()
        first, last = con.execute(
            'SELECT min("start"), max("end") FROM read_parquet(?, hive_partitioning = false)',
            [str(cls.data / tn.run_duckdb.FILE_GLOB)],
        ).fetchone()
        cls.window = {"from_ts": first - 60, "to_ts": last + 60}
        cls.scratch = Path(tempfile.mkdtemp(prefix="tollgate-notebooks-"))
        (cls.scratch / "unused.yaml").write_text(UNUSED_POLICY)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.scratch, ignore_errors=True)
        if "TOLLGATE_LAB_DATA" not in os.environ:
            shutil.rmtree(cls.data.parent, ignore_errors=True)

    def assert_tables(self, tables: dict[str, int], filled: list[str]):
        for title in filled:
            self.assertIn(title, tables)
            self.assertGreater(tables[title], 0, f"{title}: no row")

    def vpc_flow_logs(self) -> tuple[Path, str]:
        """VPC Flow Logs as Security Lake keeps them (OCSF, the fields the join reads), for the
        lab's allowed connection from amazonlinux: what the node's ENI would have logged. Returns
        their directory and the pod they belong to."""
        directory = self.scratch / "vpc-flow"
        directory.mkdir(exist_ok=True)
        ocsf = str(self.data / tn.run_duckdb.OCSF_FILE_GLOB)
        source = "default/amazonlinux"
        duckdb.connect().execute(
            f"""
            COPY (
                SELECT time, start_time, end_time, 4001 AS class_uid, 6 AS activity_id,
                    {{'ip': src_endpoint.ip, 'port': src_endpoint.port,
                      'interface_uid': 'eni-0123456789abcdef0', 'vpc_uid': 'vpc-0123456789abcdef0'}}
                        AS src_endpoint,
                    {{'ip': dst_endpoint.ip, 'port': dst_endpoint.port}} AS dst_endpoint,
                    {{'protocol_num': connection_info.protocol_num, 'direction_id': 2}}
                        AS connection_info,
                    {{'packets': traffic.packets, 'bytes': traffic.bytes}} AS traffic,
                    'Allowed' AS action, 1 AS action_id
                FROM read_parquet(?, hive_partitioning = false)
                WHERE src_endpoint.name = '{source}' AND action_id = 1
            ) TO '{directory / "vpc.parquet"}' (FORMAT parquet)
            """,
            [ocsf],
        )
        return directory, source

    def test_denied_flows_triage(self):
        vpc_flow_dir, pod = self.vpc_flow_logs()
        nb = run(
            "denied-flows-triage",
            flow_dir=str(self.data),
            vpc_flow_dir=str(vpc_flow_dir),
            **self.window,
        )
        tables, _ = shown(nb)
        # Security Lake: the VPC's records of the client's allowed flows get its pod's name.
        self.assert_tables(tables, ["VPC Flow Logs joined with tollgate's records"])
        joined = next(
            o.data["text/plain"]
            for c in nb.cells
            for o in c.get("outputs", [])
            if o.get("data", {}).get("text/plain", "").startswith("VPC Flow Logs joined")
        )
        self.assertIn(pod, joined)
        self.assertIn("eni-0123456789abcdef0", joined)
        self.assert_tables(
            tables,
            [
                "Top 20 denied pairs, by dropped packets",
                "Denied flows by policy",
                "Denied flows by deciding pod, with the policies isolating it",
            ],
        )
        by_policy = next(
            o.data["text/plain"]
            for c in nb.cells
            for o in c.get("outputs", [])
            if o.get("data", {}).get("text/plain", "").startswith("Denied flows by policy")
        )
        # The client's refusals before its quarantine go to the seed's policies (the records'
        # isolating_policies), after it to the quarantine policy (its Deny rule decided).
        self.assertRegex(
            by_policy,
            r"ClusterNetworkPolicy/tollgate-quarantine-default-amazonlinux\s+rule",
        )
        self.assertRegex(by_policy, r"default/all-deny\s+isolating_policies")

    def test_incident_timeline_from_the_bundle(self):
        tables, printed = shown(run("incident-timeline", bundle=str(self.bundle)))
        self.assert_tables(
            tables,
            [
                "Allowed before the quarantine",
                "Denied from the quarantine on",
                "Isolation records",
                "The bundle's files, hashed again",
            ],
        )
        self.assertIn("default/amazonlinux, reading evidence bundle", printed)
        self.assertIn("VERIFIED: evidence bundle ", printed)
        self.assertIn(" is intact: ", printed)
        self.assertNotIn("NOT VERIFIED", printed)

    def test_incident_timeline_from_the_flow_log(self):
        manifest = json.loads((self.bundle / "manifest.json").read_text())
        tables, printed = shown(
            run(
                "incident-timeline",
                flow_dir=str(self.data),
                namespace=manifest["pod"]["namespace"],
                pod=manifest["pod"]["name"],
                **self.window,
            )
        )
        self.assert_tables(
            tables,
            ["Allowed before the quarantine", "Denied from the quarantine on", "Isolation records"],
        )
        self.assertIn("No bundle given", printed)

    def test_policy_coverage(self):
        tables, _ = shown(
            run(
                "policy-coverage",
                flow_dir=str(self.data),
                manifests=[*MANIFESTS, str(self.scratch / "unused.yaml")],
                bundle=str(self.bundle),
                **self.window,
            )
        )
        self.assert_tables(
            tables,
            [
                "Pods no policy selects",
                "Every rule of the given policies, with its hits",
                "Rules that never matched",
                "Policies none of whose rules matched",
                "Rule hits in the flow log",
                "Flows that enforcing would deny",
            ],
        )
        self.assertEqual(tables["Rules that never matched"], 1)

    def test_a_changed_bundle_fails_the_check(self):
        copy = self.scratch / "bundle"
        shutil.copytree(self.bundle, copy)
        bundle = tn.Bundle(copy)
        files, ok, verdict = tn.verify(bundle)
        self.assertTrue(ok, verdict)
        self.assertEqual(set(files["status"]), {"ok"})
        manifest_sha256 = hashlib.sha256((copy / "manifest.json").read_bytes()).hexdigest()
        self.assertTrue(tn.verify(bundle, manifest_sha256)[1])
        with (copy / "flows.csv").open("a") as f:
            f.write("\n")
        (copy / "notes.txt").write_text("added later")
        files, ok, verdict = tn.verify(bundle, "0" * 64)
        self.assertFalse(ok)
        # flows.csv: its size and its SHA-256; notes.txt; the manifest's own SHA-256.
        self.assertTrue(verdict.startswith("NOT VERIFIED: evidence bundle "), verdict)
        self.assertIn("FAILED verification (4 problems)", verdict)
        status = dict(zip(files["file"], files["status"]))
        self.assertRegex(status["flows.csv"], r"bytes, the manifest says .*; SHA-256 is ")
        self.assertEqual(status["notes.txt"], "not in the manifest")
        self.assertRegex(status["manifest.json"], "^SHA-256 is .*, the one noted is 0+$")
        self.assertEqual(status["flows.parquet"], "ok")
        self.assertIsInstance(files, pd.DataFrame)


if __name__ == "__main__":
    unittest.main()
