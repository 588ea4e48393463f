"""The shared code of tollgate's analysis notebooks (notebooks/*.ipynb).

How data flows::

    parameters cell
      ├─ flow_dir ──────────► LocalSource   a flow directory (cluster=…/dt=…/hour=…/*.parquet),
      │                                     through schemas/athena/run_duckdb.py: DuckDB runs the
      │                                     query file as sqlglot transpiled it
      ├─ athena_* settings ─► AthenaSource  Amazon Athena through pyathena: the query file's text
      │                                     as it is, with positional execution parameters
      └─ bundle ────────────► Bundle        an evidence bundle: its Parquet files as the table
                                            `flows` on DuckDB (BundleSource), its manifest
                                            and its policies.json
    source.run(name, params)   the named query schemas/athena/queries/<name>.sql → DataFrame
    join_vpc_flows(source, …)  Amazon Security Lake: tollgate's OCSF records (flow_dir/ext/…,
                               or its custom source's table) joined with VPC Flow Logs' OCSF
                               records (a directory of them, or Security Lake's table)
    show(title, frame, empty)  a titled table, or a sentence when there is no row
    plot_*(…)                  one matplotlib figure each
    attribute_denials(rows)    `denied-over-time` rows → the policy each denial is attributed
                               to, as the records' decision trace names it (the denying rule's
                               policy, else isolating_policies, else the verdict reason)
    rule_coverage(policies, hits)  the rules of NetworkPolicies (manifests, policies.json)
                               against `policy-rule-hits`, the rules the records name
    verify(bundle)             `tollgate evidence verify` (the binary: tollgate_binary()) →
                               the manifest's files with their status, and its verdict

No Kubernetes semantics are re-implemented here: which policy selects, isolates, allows or
denies comes from the records (decided by the compiler and the probe), and a bundle's
integrity from tollgate itself.

Every source runs the same query files, so a notebook reads the lab's output, a copy of the
bucket and Athena alike. Times are epoch seconds (UTC) in the queries and UTC timestamps in the
tables. A missing or wrong setting raises SettingsError, whose message IPython prints without a
traceback.
"""

from __future__ import annotations

import datetime as dt
import glob
import html
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import duckdb
import matplotlib.dates as mdates
import matplotlib.pyplot as plt
import pandas as pd
import pyathena
import sqlglot
import yaml
from IPython.display import display

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "schemas" / "athena"))

import run_duckdb  # schemas/athena, found through the path above

# Columns holding epoch seconds, shown as UTC timestamps.
TIME_COLUMNS = ("start", "end", "first_seen", "last_seen")
PROTOCOLS = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6", 132: "sctp"}
# At most this many rows of a table are printed (the first and last halves).
MAX_ROWS = 200


class SettingsError(Exception):
    """A missing or wrong notebook parameter: the message says which and what to set."""

    def _render_traceback_(self) -> list[str]:
        # IPython prints this instead of a traceback: the message is the whole story.
        return [f"{type(self).__name__}: {self}"]


# ---------------------------------------------------------------------------------------------
# Where the records come from


class LocalSource:
    """A local flow directory, queried with DuckDB through schemas/athena/run_duckdb.py."""

    def __init__(self, directory: Path):
        try:
            run_duckdb.flow_files(directory)
        except run_duckdb.QueryError as e:
            raise SettingsError(f"flow_dir: {e}") from None
        self.directory = directory

    def describe(self) -> str:
        return f"local flow directory {self.directory} (DuckDB)"

    def run(self, name: str, params: Mapping[str, Any]) -> pd.DataFrame:
        # run_query's own steps, keeping the column names when no row comes back.
        return frame(*run_duckdb.execute(self.directory, name, params))


class BundleSource:
    """The Parquet files of an evidence bundle as the table ``flows`` on DuckDB, with ``dt``
    and ``hour`` computed from each record's start as the collector files it, so the named
    queries run on it unchanged (transpiled by sqlglot as run_duckdb does)."""

    KINDS = ("flows", "isolations", "losses")

    def __init__(self, directory: Path):
        self.files = [directory / f"{kind}.parquet" for kind in self.KINDS]
        missing = [f.name for f in self.files if not f.is_file()]
        if missing:
            raise SettingsError(f"bundle {directory}: no {', '.join(missing)}")
        self.directory = directory

    def describe(self) -> str:
        return f"evidence bundle {self.directory} (DuckDB)"

    def connect(self) -> duckdb.DuckDBPyConnection:
        con = duckdb.connect(":memory:")
        con.execute("SET TimeZone = 'UTC'")
        files = ", ".join("'" + str(f).replace("'", "''") + "'" for f in self.files)
        records = f"""
            SELECT *,
                strftime(to_timestamp("start"), '%Y-%m-%d') AS dt,
                strftime(to_timestamp("start"), '%H') AS hour
            FROM read_parquet([{files}], union_by_name = true)
            """
        con.execute(f"CREATE VIEW flows AS {run_duckdb.with_table_columns(records)}")
        return con

    def span(self) -> dict[str, int]:
        """The window [from, to) that holds every record of the bundle."""
        con = self.connect()
        try:
            first, last = con.execute('SELECT min("start"), max("end") FROM flows').fetchone()
        finally:
            con.close()
        if first is None:
            raise SettingsError(f"bundle {self.directory}: its Parquet files hold no record")
        return {"from": int(first), "to": int(last) + 1}

    def run(self, name: str, params: Mapping[str, Any]) -> pd.DataFrame:
        query = run_duckdb.load_query(name)
        values = run_duckdb.bind(query, params)
        con = self.connect()
        try:
            cursor = con.execute(run_duckdb.to_duckdb(query), values)
            return frame([d[0] for d in cursor.description], cursor.fetchall())
        finally:
            con.close()


class AthenaSource:
    """Amazon Athena through pyathena: each query file's text is sent as it is, its ``?``
    bound by Athena's execution parameters (SQL literals: strings quoted, integers bare)."""

    def __init__(self, workgroup: str, database: str, region: str, s3_staging_dir: str | None):
        self.workgroup, self.database, self.region = workgroup, database, region
        self.connection = pyathena.connect(
            work_group=workgroup,
            schema_name=database,
            region_name=region,
            s3_staging_dir=s3_staging_dir or None,
        )

    def describe(self) -> str:
        return f"Athena workgroup {self.workgroup}, database {self.database}, region {self.region}"

    def run(self, name: str, params: Mapping[str, Any]) -> pd.DataFrame:
        query = run_duckdb.load_query(name)
        cursor = self.connection.cursor()
        cursor.execute(
            query.sql, parameters=athena_parameters(query, params) or None, paramstyle="qmark"
        )
        return frame([d[0] for d in cursor.description], cursor.fetchall())


# Amazon Security Lake: tollgate's OCSF Network Activity records (its custom source, table
# `ocsf_flows`: docs/security-lake.md) joined with VPC Flow Logs' own OCSF records (Security
# Lake's VPC flow source, table `vpc_flows`) on the connection — addresses, ports, protocol —
# and time, a VPC record within a minute of a tollgate record's span: each VPC flow gets the
# pods, workload and deciding policy its addresses had. Athena (Trino) SQL; on DuckDB it runs
# as sqlglot transpiles it, like the named queries. `?`: the window [from, to), epoch seconds.
VPC_FLOW_JOIN = """
SELECT
  v.time AS vpc_time,
  v.src_endpoint.ip AS src_ip,
  v.src_endpoint.port AS src_port,
  v.dst_endpoint.ip AS dst_ip,
  v.dst_endpoint.port AS dst_port,
  v.connection_info.protocol_num AS protocol,
  v.src_endpoint.interface_uid AS vpc_interface,
  v.action AS vpc_action,
  v.traffic.packets AS vpc_packets,
  t.src_endpoint.name AS src_name,
  t.unmapped['src_workload'] AS src_workload,
  t.dst_endpoint.name AS dst_name,
  t.dst_endpoint.svc_name AS svc_name,
  t.firewall_rule.name AS policy,
  t.disposition AS tollgate_disposition,
  t.unmapped['node'] AS node
FROM vpc_flows v
JOIN ocsf_flows t
  ON v.src_endpoint.ip = t.src_endpoint.ip
  AND v.dst_endpoint.ip = t.dst_endpoint.ip
  AND v.src_endpoint.port = t.src_endpoint.port
  AND v.dst_endpoint.port = t.dst_endpoint.port
  AND v.connection_info.protocol_num = t.connection_info.protocol_num
  AND v.start_time <= t.end_time + 60000
  AND v.end_time >= t.start_time - 60000
WHERE v.time >= CAST(? AS bigint) * 1000
  AND v.time < CAST(? AS bigint) * 1000
  AND t.class_uid = 4001
ORDER BY v.time, src_ip, src_port
"""


def join_vpc_flows(
    source,
    window: Mapping[str, int],
    *,
    vpc_flow_dir: str | Path | None = None,
    vpc_flow_table: str | None = None,
    security_lake_table: str | None = None,
) -> pd.DataFrame | None:
    """VPC_FLOW_JOIN over the window: on a local flow directory, its OCSF objects (`tollgate
    lab --ocsf`, or a copy of the custom source) with the VPC Flow Logs Parquet files under
    ``vpc_flow_dir``; on Athena, ``security_lake_table`` with ``vpc_flow_table`` (both
    `database.table`). None when what it needs is not given."""
    params = [window["from"], window["to"]]
    if isinstance(source, LocalSource):
        if not vpc_flow_dir:
            return None
        vpc_files = sorted(Path(vpc_flow_dir).expanduser().rglob("*.parquet"))
        if not vpc_files:
            raise SettingsError(f"vpc_flow_dir: no Parquet files under {vpc_flow_dir}")
        try:
            con = run_duckdb.connect(source.directory, ["ocsf_flows"])
        except run_duckdb.QueryError as e:
            raise SettingsError(f"flow_dir: {e}") from None
        try:
            files = ", ".join("'" + str(f).replace("'", "''") + "'" for f in vpc_files)
            con.execute(
                f"CREATE VIEW vpc_flows AS SELECT * FROM read_parquet([{files}], "
                "hive_partitioning = false, union_by_name = true)"
            )
            sql = sqlglot.transpile(VPC_FLOW_JOIN, read="athena", write="duckdb")[0]
            cursor = con.execute(sql, params)
            joined = frame([d[0] for d in cursor.description], cursor.fetchall())
        finally:
            con.close()
    elif isinstance(source, AthenaSource):
        if not (vpc_flow_table and security_lake_table):
            return None
        sql = VPC_FLOW_JOIN.replace("FROM vpc_flows", f"FROM {vpc_flow_table}").replace(
            "JOIN ocsf_flows", f"JOIN {security_lake_table}"
        )
        cursor = source.connection.cursor()
        cursor.execute(sql, parameters=[str(p) for p in params], paramstyle="qmark")
        joined = frame([d[0] for d in cursor.description], cursor.fetchall())
    else:
        return None
    joined["vpc_time"] = pd.to_datetime(joined["vpc_time"], unit="ms", utc=True)
    return joined


def athena_parameters(query: run_duckdb.Query, params: Mapping[str, Any]) -> list[str]:
    """The execution parameters of a query, one SQL literal per ``?`` in order."""
    values = run_duckdb.bind(query, params)
    return [str(v) if isinstance(v, int) else "'" + v.replace("'", "''") + "'" for v in values]


def connect(
    flow_dir: str | Path | None = None,
    *,
    athena_workgroup: str | None = None,
    athena_database: str | None = None,
    aws_region: str | None = None,
    athena_s3_staging_dir: str | None = None,
):
    """The source a notebook's parameters name: the flow directory when there is one, else
    Athena when a workgroup is set; SettingsError, saying what to set, when neither is."""
    if flow_dir:
        return LocalSource(Path(flow_dir).expanduser())
    if athena_workgroup:
        missing = [
            f"{param} (or ${env})"
            for param, env, value in (
                ("athena_database", "ATHENA_DATABASE", athena_database),
                ("aws_region", "AWS_REGION", aws_region),
            )
            if not value
        ]
        if missing:
            raise SettingsError(
                f"Athena workgroup {athena_workgroup!r} is set but not {' nor '.join(missing)}: "
                f"add {'it' if len(missing) == 1 else 'them'} to the parameters cell or the "
                "environment"
            )
        return AthenaSource(athena_workgroup, athena_database, aws_region, athena_s3_staging_dir)
    raise SettingsError(
        "no flow records to read: set flow_dir in the parameters cell to a local flow directory "
        "(the one holding cluster=…/dt=…/hour=…/*.parquet), or point the notebook at Athena with "
        "$ATHENA_WORKGROUP, $ATHENA_DATABASE and $AWS_REGION (or the parameters "
        "athena_workgroup, athena_database, aws_region)"
    )


def frame(columns: list[str], rows: list[tuple]) -> pd.DataFrame:
    """Query rows as a DataFrame with nullable integer and string columns, the same from every
    source (a null in an integer column would otherwise make it float)."""
    return pd.DataFrame.from_records(rows, columns=columns).convert_dtypes()


def window(from_ts: int | str | None = None, to_ts: int | str | None = None) -> dict[str, int]:
    """The query window {'from', 'to'} in epoch seconds, [from, to). Each end is epoch seconds,
    an ISO 8601 time (UTC unless it names its zone) or None: to = now, from = to − 24 hours."""

    def seconds(value: int | str, name: str) -> int:
        if isinstance(value, int):
            return value
        try:
            parsed = dt.datetime.fromisoformat(str(value))
        except ValueError:
            raise SettingsError(
                f"{name} = {value!r}: give epoch seconds or an ISO 8601 time (2026-11-25T10:00:00Z)"
            ) from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=dt.UTC)
        return int(parsed.timestamp())

    to = seconds(to_ts, "to_ts") if to_ts is not None else int(time.time())
    start = seconds(from_ts, "from_ts") if from_ts is not None else to - 86400
    if start >= to:
        raise SettingsError(f"from_ts ({utc(start)}) is not before to_ts ({utc(to)})")
    return {"from": start, "to": to}


def utc(seconds: int) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---------------------------------------------------------------------------------------------
# Tables


def readable(table: pd.DataFrame) -> pd.DataFrame:
    """The table as people read it: times as UTC timestamps, protocols by name, labels as
    k=v lists, nulls blank."""
    out = table.copy()
    for column in out.columns:
        if column in TIME_COLUMNS:
            out[column] = as_time(out[column].astype("Int64"))
        elif column == "protocol":
            out[column] = out[column].map(protocol_name, na_action="ignore")
        elif column.endswith("labels"):
            out[column] = out[column].map(format_labels, na_action="ignore")
    return out.astype(object).where(out.notna(), "")


def protocol_name(number: int) -> str:
    return PROTOCOLS.get(int(number), str(number))


def format_labels(labels: Mapping[str, str] | None) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted((labels or {}).items()))


def show(title: str, table: pd.DataFrame, empty: str) -> None:
    """Displays the table under its title, or the sentence ``empty`` when it has no row: a
    printed table is never empty."""
    if table.empty:
        body_html, body_text = f"<p><i>{html.escape(empty)}</i></p>", empty
    else:
        shown = readable(table)
        body_html = shown.to_html(index=False, max_rows=MAX_ROWS)
        body_text = shown.to_string(index=False, max_rows=MAX_ROWS)
    display(
        {
            "text/html": f"<h4>{html.escape(title)}</h4>\n{body_html}",
            "text/plain": f"{title}\n{body_text}",
        },
        raw=True,
    )


def endpoint(namespace: Any, pod: Any, address: Any, workload: Any = None) -> str:
    """One end of a flow as text: namespace/pod, else its workload (Node/<node> for the node
    itself), else the address outside the cluster."""
    if not pd.isna(pod):
        return f"{namespace}/{pod}"
    if workload is not None and not pd.isna(workload):
        return str(workload)
    return str(address)


def destination(row) -> str:
    """A flow's destination as text: the Service whose ClusterIP it was addressed to
    (service:namespace/name), else as endpoint()."""
    if not pd.isna(row.svc_name):
        return f"service:{row.svc_namespace}/{row.svc_name}"
    return endpoint(row.dst_namespace, row.dst_pod, row.dstaddr, row.dst_workload)


def pair_label(row) -> str:
    """A flow as 'source → destination port/protocol (direction)'."""
    return (
        f"{endpoint(row.src_namespace, row.src_pod, row.srcaddr, row.src_workload)} → "
        f"{destination(row)} {row.dstport}/{protocol_name(row.protocol)} ({row.flow_direction})"
    )


def as_time(seconds):
    """Epoch seconds (a number or a column) as UTC timestamps."""
    return pd.to_datetime(seconds, unit="s", utc=True)


def time_axis(ax: plt.Axes) -> None:
    """Concise UTC date labels on the x axis."""
    locator = mdates.AutoDateLocator()
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator, tz=dt.UTC))


def no_plot_data(ax: plt.Axes, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


# ---------------------------------------------------------------------------------------------
# Denials by policy: what the records' decision trace names


def policy_label(kind: Any, namespace: Any, name: Any) -> str:
    """A policy the records name: ``namespace/name``, or ``kind/name`` for a cluster-scoped one
    (a ClusterNetworkPolicy: no namespace; records of version 1 name no kind)."""
    if namespace is None or pd.isna(namespace):
        return f"{'ClusterNetworkPolicy' if kind is None or pd.isna(kind) else kind}/{name}"
    return f"{namespace}/{name}"


def attribute_denials(denied: pd.DataFrame) -> pd.DataFrame:
    """The rows of ``denied-over-time`` with the policies each denial is attributed to, as the
    records' decision trace names them: the policy whose Deny rule decided (denied-by-rule:
    a ClusterNetworkPolicy's, a quarantine's among them), else the NetworkPolicies that
    isolated the deciding pod in that direction for want of a matching rule
    (isolating_policies), else the verdict reason in parentheses (no policy denied:
    endpoint-not-programmed, records older than the trace…). ``policies`` joins them with
    ' + '; ``attributed_by`` says which of the three it is (rule, isolating_policies,
    verdict_reason)."""

    def attribution(row) -> tuple[str, str]:
        if row.verdict_reason == "denied-by-rule" and not pd.isna(row.policy_name):
            return policy_label(row.policy_kind, row.policy_namespace, row.policy_name), "rule"
        if not pd.isna(row.isolating_policies) and row.isolating_policies:
            return " + ".join(row.isolating_policies.split(",")), "isolating_policies"
        return f"({row.verdict_reason})", "verdict_reason"

    pairs = [attribution(row) for row in denied.itertuples(index=False)]
    return denied.assign(policies=[p for p, _ in pairs], attributed_by=[how for _, how in pairs])


def denials_by_policy(attributed: pd.DataFrame) -> pd.DataFrame:
    """Denials summed per policy; a denial counts under every policy that isolates its pod."""
    columns = ["policy", "attributed_by", "pods", "flows", "packets", "first_seen", "last_seen"]
    if attributed.empty:
        return pd.DataFrame(columns=columns)
    return (
        attributed.assign(
            policy=attributed["policies"].str.split(" + ", regex=False),
            endpoint=attributed["namespace"] + "/" + attributed["pod"],
        )
        .explode("policy")
        .groupby(["policy", "attributed_by"])
        .agg(
            pods=("endpoint", "nunique"),
            flows=("flows", "sum"),
            packets=("packets", "sum"),
            first_seen=("start", "min"),
            last_seen=("last_seen", "max"),
        )
        .reset_index()
        .sort_values(["packets", "flows"], ascending=False)[columns]
    )


def denials_by_pod(attributed: pd.DataFrame) -> pd.DataFrame:
    """Denials summed per deciding pod, direction and the policies isolating it."""
    keys = ["namespace", "pod", "workload", "flow_direction", "policies", "attributed_by"]
    return (
        attributed.groupby(keys, dropna=False)
        .agg(
            flows=("flows", "sum"),
            packets=("packets", "sum"),
            first_seen=("start", "min"),
            last_seen=("last_seen", "max"),
        )
        .reset_index()
        .sort_values(["packets", "flows"], ascending=False)
    )


# ---------------------------------------------------------------------------------------------
# Rule coverage: the rules of the given policies, against the records' rule hits


def load_policies(patterns: Iterable[str | Path]) -> list[dict]:
    """The NetworkPolicies of Kubernetes YAML files (multi-document; Lists are opened; other
    kinds are skipped), named by file names or glob patterns (``../examples/seed/*.yaml``),
    relative to the notebook's directory."""
    if isinstance(patterns, (str, Path)):
        raise SettingsError(f"manifests = {patterns!r}: give a list, [{str(patterns)!r}]")
    policies = []
    for pattern in map(str, patterns):
        files = sorted(glob.glob(os.path.expanduser(pattern)))
        if not files or not all(Path(f).is_file() for f in files):
            raise SettingsError(f"manifests: {pattern} names no file (relative to {Path.cwd()})")
        for path in files:
            try:
                documents = list(yaml.safe_load_all(Path(path).read_text(encoding="utf-8")))
            except yaml.YAMLError as e:
                raise SettingsError(f"manifests: {path} is not YAML: {e}") from None
            for doc in documents:
                if not isinstance(doc, dict):
                    continue
                for item in doc.get("items") or [doc]:  # a List holds its objects in items
                    if isinstance(item, dict) and item.get("kind") == "NetworkPolicy":
                        policies.append(item)
    return policies


def policy_name(policy: Mapping) -> str:
    meta = policy.get("metadata") or {}
    return f"{meta.get('namespace', 'default')}/{meta.get('name')}"


def rule_summary(rule: Mapping, direction: str) -> str:
    """A NetworkPolicy rule in one line: its peers and ports."""
    peers_key = "to" if direction == "egress" else "from"
    peers = []
    for peer in rule.get(peers_key) or []:
        parts = []
        if "ipBlock" in peer:
            block = peer["ipBlock"]
            excepts = "".join(f" except {e}" for e in block.get("except") or [])
            parts.append(f"{block.get('cidr', '?')}{excepts}")
        for key, word in (("namespaceSelector", "namespaces"), ("podSelector", "pods")):
            if key in peer:
                parts.append(f"{word} {selector_text(peer[key])}")
        peers.append(" & ".join(parts))
    ports = [
        f"{p.get('port', 'any')}{'-' + str(p['endPort']) if 'endPort' in p else ''}/"
        f"{p.get('protocol', 'TCP').lower()}"
        for p in rule.get("ports") or []
    ]
    return (
        f"{peers_key} {' | '.join(peers) if peers else 'anywhere'}; "
        f"ports {', '.join(ports) if ports else 'all'}"
    )


def selector_text(selector: Mapping | None) -> str:
    selector = selector or {}
    terms = [f"{k}={v}" for k, v in (selector.get("matchLabels") or {}).items()]
    terms += [
        f"{e['key']} {e['operator']} {','.join(e.get('values') or [])}".rstrip()
        for e in selector.get("matchExpressions") or []
    ]
    return "{" + ", ".join(terms) + "}"


def rule_coverage(policies: list[dict], hits: pd.DataFrame) -> pd.DataFrame:
    """Every rule of every policy, one row each (policy, direction, rule index in
    spec.ingress or spec.egress, what it allows) with its hits from ``policy-rule-hits`` (0
    flows when it never matched): the records name the rule that allowed each flow, so no
    selector is evaluated here. A direction the policy's policyTypes names without any rule
    has one row with no rule index (a policy read back from the cluster always has its
    policyTypes; one without them and without rules has one such row, no direction)."""
    by_rule = {
        (f"{r.policy_namespace}/{r.policy_name}", r.flow_direction, r.policy_rule): r
        for r in hits.itertuples()
    }
    rows = []
    for policy in policies:
        name = policy_name(policy)
        spec = policy.get("spec") or {}
        listed = {t.lower() for t in spec.get("policyTypes") or []}
        directions = sorted(listed | {d for d in ("egress", "ingress") if spec.get(d)})
        for direction in directions or [None]:
            rules = (spec.get(direction) or []) if direction else []
            if not rules:
                rows.append((name, direction, None, "(no rule: isolates only)", None, None, None))
            for index, rule in enumerate(rules):
                hit = by_rule.get((name, direction, index))
                rows.append(
                    (
                        name,
                        direction,
                        index,
                        rule_summary(rule, direction),
                        hit.flows if hit else 0,
                        hit.packets if hit else 0,
                        hit.last_seen if hit else None,
                    )
                )
    columns = ["policy", "direction", "rule", "allows", "flows", "packets", "last_seen"]
    return frame(columns, rows)


def unique_policies(*groups: Iterable[dict]) -> list[dict]:
    """The policies of several lists, each namespace/name once (the first seen wins)."""
    seen: dict[str, dict] = {}
    for group in groups:
        for policy in group:
            seen.setdefault(policy_name(policy), policy)
    return list(seen.values())


def never_matched(coverage: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """From rule_coverage(): the rules with no hit, and the policies with rules none of which
    had a hit (a policy without rules only isolates: it has nothing to match)."""
    rules = coverage[coverage["rule"].notna()]
    unused = rules[rules["flows"] == 0]
    flows = rules.groupby("policy")["flows"].sum()
    policies = (
        rules[rules["policy"].isin(flows[flows == 0].index)]
        .groupby("policy")
        .agg(directions=("direction", lambda d: ",".join(sorted(set(d)))), rules=("rule", "size"))
        .reset_index()
    )
    return unused, policies


# ---------------------------------------------------------------------------------------------
# Evidence bundles


class Bundle:
    """An evidence bundle directory (``tollgate evidence``, or ``tollgate lab --quarantine``
    under ``<out>/evidence``): manifest.json, flows/isolations/losses as Parquet and CSV,
    policies.json, sources.json, timeline.txt."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory).expanduser()
        path = self.directory / "manifest.json"
        if not path.is_file():
            raise SettingsError(
                f"bundle: {path} does not exist (bundle is the directory `tollgate evidence "
                "--out` wrote)"
            )
        try:
            self.manifest = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as e:
            raise SettingsError(f"bundle: {path} is not JSON: {e}") from None
        pod = self.manifest.get("pod") or {}
        self.namespace, self.pod = pod.get("namespace"), pod.get("name")
        self.source = BundleSource(self.directory)

    def window(self) -> dict[str, int]:
        """The window asked for, widened to every record the bundle holds."""
        asked = self.manifest.get("window") or {}
        held = self.source.span()
        return {
            "from": min(held["from"], asked.get("from", held["from"])),
            "to": max(held["to"], asked.get("to", held["to"])),
        }

    def policies(self) -> list[dict]:
        """The NetworkPolicies in force the bundle recorded (policies.json's `policies`)."""
        path = self.directory / "policies.json"
        if not path.is_file():
            return []
        return [
            p
            for p in json.loads(path.read_text(encoding="utf-8")).get("policies") or []
            if p.get("kind", "NetworkPolicy") == "NetworkPolicy"
        ]


def tollgate_binary() -> Path:
    """The tollgate binary: $TOLLGATE_BIN, else ``target/debug/tollgate`` of this repository
    (under $CARGO_TARGET_DIR when set: where ``cargo build`` puts it, as the test and
    scripts/lab.sh use it), else ``tollgate`` on the PATH."""
    given = os.environ.get("TOLLGATE_BIN")
    if given:
        path = Path(given).expanduser()
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise SettingsError(f"$TOLLGATE_BIN = {given}: not an executable file")
        return path
    target = Path(os.environ.get("CARGO_TARGET_DIR") or REPO / "target")
    built = (target if target.is_absolute() else REPO / target) / "debug" / "tollgate"
    if built.is_file() and os.access(built, os.X_OK):
        return built
    on_path = shutil.which("tollgate")
    if on_path:
        return Path(on_path)
    raise SettingsError(
        f"no tollgate binary: not at {built} nor on the PATH; build it (cargo build --bin "
        "tollgate, in the repository) or set $TOLLGATE_BIN to its path"
    )


def verify(bundle: Bundle, manifest_sha256: str | None = None) -> tuple[pd.DataFrame, bool, str]:
    """``tollgate evidence verify`` on the bundle (with ``--manifest-sha256`` when given): it
    re-hashes every file the manifest lists (size and SHA-256), refuses any other file and a
    manifest of another format, and checks the bundle's digests. Its verdict as the files of
    the manifest, each with its status (``ok``, or what tollgate found wrong with it; files
    it named that the manifest does not list are rows too), whether all is well, and the
    verdict as a sentence (VERIFIED: or NOT VERIFIED:, then tollgate's own words). Exit codes
    other than 0 (intact) and 1 (a difference) raise SettingsError with its message."""
    command = [str(tollgate_binary()), "evidence", "verify", str(bundle.directory)]
    if manifest_sha256:
        command += ["--manifest-sha256", manifest_sha256]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode not in (0, 1):
        raise SettingsError(
            f"{' '.join(command)} failed (exit code {done.returncode}): "
            f"{done.stderr.strip() or done.stdout.strip()}"
        )
    # On a difference, one line per problem under the verdict: "  <file>: <what differs>".
    problems: dict[str, list[str]] = {}
    if done.returncode == 1:
        for line in done.stderr.splitlines():
            name, sep, what = line.strip().partition(": ")
            if line.startswith("  ") and sep:
                problems.setdefault(name, []).append(what)
    listed = [
        (e.get("path", ""), e.get("bytes"), e.get("sha256"))
        for e in bundle.manifest.get("files") or []
    ]
    if manifest_sha256:
        listed.insert(0, ("manifest.json", None, manifest_sha256.lower()))
    names = {name for name, _, _ in listed}
    listed += [(name, None, None) for name in problems if name not in names]
    rows = [
        (name, size, sha256, "; ".join(problems.get(name, [])) or "ok")
        for name, size, sha256 in listed
    ]
    files = frame(["file", "bytes", "manifest_sha256", "status"], rows)
    if done.returncode == 1:
        return files, False, "NOT VERIFIED: " + done.stderr.strip()
    also = (
        ""
        if manifest_sha256
        else " (manifest.json itself is unchecked: give manifest_sha256 to check it too)"
    )
    return files, True, "VERIFIED: " + done.stdout.strip() + also


# ---------------------------------------------------------------------------------------------
# The incident timeline


def open_incident(
    bundle: str | Path | None,
    namespace: str | None,
    pod: str | None,
    from_ts: int | str | None,
    to_ts: int | str | None,
    **settings,
) -> tuple[Any, Bundle | None, str, str, dict[str, int]]:
    """What the incident notebook reads: (source, bundle or None, namespace, pod, window).
    From a bundle: its files, its pod, its window widened to all it holds. Otherwise: the flow
    log that ``settings`` name (see connect) and the given pod and window."""
    if bundle:
        opened = Bundle(bundle)
        return opened.source, opened, opened.namespace, opened.pod, opened.window()
    if not namespace or not pod:
        raise SettingsError(
            "set bundle (an evidence bundle directory), or namespace and pod (and from_ts, "
            "to_ts) to read the pod's records from the flow log"
        )
    return connect(**settings), None, namespace, pod, window(from_ts, to_ts)


def quarantine_split(
    timeline: pd.DataFrame, isolations: pd.DataFrame
) -> tuple[int | None, pd.DataFrame, pd.DataFrame]:
    """The time of the pod's first quarantine, the flow records allowed up to it (action
    ACCEPT: allowed, or audit-deny that passed) and those denied from it on (action REJECT).
    Times are whole seconds: a flow allowed in the quarantine's own second counts as before
    (it got through before the quarantine took effect), a denied one as after. Without a
    quarantine, no time and two empty tables."""
    flows = timeline[timeline["log_status"] == "OK"]
    quarantines = isolations[isolations["isolation_action"] == "quarantine"]
    if quarantines.empty:
        return None, flows.iloc[0:0], flows.iloc[0:0]
    at = int(quarantines["start"].min())
    before = flows[(flows["action"] == "ACCEPT") & (flows["start"] <= at)]
    after = flows[(flows["action"] == "REJECT") & (flows["start"] >= at)]
    return at, before, after


def peer_of(row, namespace: str, pod: str) -> str:
    """A flow of the pod as 'peer port/protocol': '→ dst' when the pod sent it, '← src' when it
    received it."""
    port = f"{row.dstport}/{protocol_name(row.protocol)}"
    # A source that is no pod (an address, the node) has null pod columns: pd.NA, which
    # compares to nothing.
    if not pd.isna(row.src_pod) and row.src_namespace == namespace and row.src_pod == pod:
        return f"→ {destination(row)} {port}"
    source = endpoint(row.src_namespace, row.src_pod, row.srcaddr, row.src_workload)
    return f"← {source} to {port}"


def isolation_table(isolations: pd.DataFrame) -> pd.DataFrame:
    """Isolation records as who/when/why/which policy, with what isolation_detail adds."""

    def detail(text) -> dict:
        try:
            return json.loads(text) if isinstance(text, str) else {}
        except ValueError:
            return {}

    rows = []
    for r in isolations.itertuples():
        d = detail(r.isolation_detail)
        label = d.get("label") or {}
        policy = d.get("policy") or {}
        rows.append(
            (
                r.start,
                r.isolation_action,
                f"{r.src_namespace}/{r.src_pod}",
                r.isolation_actor,
                r.isolation_reason,
                policy_label(r.policy_kind, r.policy_namespace, r.policy_name),
                policy.get("uid"),
                policy.get("resource_version"),
                f"{label.get('key')}={label.get('value')}" if label else None,
                ", ".join(policy_name(p) for p in d.get("policies_in_force") or []),
                r.node,
            )
        )
    columns = [
        "start", "action", "pod", "actor", "reason", "policy", "policy_uid",
        "policy_resource_version", "label", "policies_in_force", "node",
    ]  # fmt: skip
    return frame(columns, rows)


def flows_by_peer(flows: pd.DataFrame) -> pd.DataFrame:
    """Flow records summed per direction, peer (with the Service a flow was addressed to), port,
    protocol and verdict."""
    keys = [
        "flow_direction", "src_namespace", "src_pod", "srcaddr", "dst_namespace", "dst_pod",
        "dstaddr", "svc_namespace", "svc_name", "dstport", "protocol", "verdict",
        "verdict_reason",
    ]  # fmt: skip
    if flows.empty:
        return flows.reindex(columns=[*keys, "flows", "packets", "first_seen", "last_seen"])
    return (
        flows.groupby(keys, dropna=False)
        .agg(
            flows=("start", "size"),
            packets=("packets", "sum"),
            first_seen=("start", "min"),
            last_seen=("end", "max"),
        )
        .reset_index()
        .sort_values("first_seen")
    )


def plot_timeline(
    timeline: pd.DataFrame, losses: pd.DataFrame, namespace: str, pod: str
) -> plt.Figure:
    """Time on x, the pod's peer and port on y; allowed, audit-deny and denied records as
    markers, isolation records as vertical lines, loss spans shaded."""
    flows = timeline[timeline["log_status"] == "OK"]
    acts = timeline[timeline["log_status"] == "ISOLATION"]
    peers = sorted({peer_of(r, namespace, pod) for r in flows.itertuples()})
    fig, ax = plt.subplots(figsize=(12, 1.5 + 0.45 * max(len(peers), 1)))
    if flows.empty and acts.empty:
        no_plot_data(ax, f"no record of {namespace}/{pod} in the window")
        return fig
    styles = {
        "allow": {"marker": "o", "color": "tab:green", "label": "allowed"},
        "audit-deny": {"marker": "^", "color": "tab:orange", "label": "audit-deny (passed)"},
        "deny": {"marker": "x", "color": "tab:red", "label": "denied"},
    }
    for verdict, style in styles.items():
        some = flows[flows["verdict"] == verdict]
        if not some.empty:
            y = [peers.index(peer_of(r, namespace, pod)) for r in some.itertuples()]
            ax.scatter(as_time(some["start"]), y, s=60, zorder=3, **style)
    for r in acts.itertuples():
        quarantine = r.isolation_action == "quarantine"
        ax.axvline(as_time(r.start), color="darkred" if quarantine else "tab:blue", linestyle="--")
        ax.annotate(
            f" {r.isolation_action} by {r.isolation_actor}",
            (as_time(r.start), 1.0),
            xycoords=("data", "axes fraction"),
            va="bottom",
            rotation=0,
            fontsize=9,
        )
    for r in losses.itertuples():
        ax.axvspan(as_time(r.start), as_time(r.end), color="grey", alpha=0.25, label="events lost")
    ax.set_yticks(range(len(peers)), peers)
    ax.set_ylim(-0.7, max(len(peers), 1) - 0.3)
    ax.set_xlabel("time (UTC)")
    ax.set_title(f"{namespace}/{pod}: flows by peer and port", pad=18)
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    ax.legend(unique.values(), unique.keys(), loc="upper left", bbox_to_anchor=(1.01, 1))
    time_axis(ax)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------
# Plots of the triage and coverage notebooks


def plot_bars(
    labels: Iterable[str], values: Iterable, title: str, xlabel: str, empty: str, color: str
) -> plt.Figure:
    """A horizontal bar per label, the first on top; the sentence ``empty`` when none."""
    labels, values = list(labels), [float(v) for v in values]
    fig, ax = plt.subplots(figsize=(10, 1.5 + 0.4 * max(len(labels), 1)))
    if not labels:
        no_plot_data(ax, empty)
    else:
        ax.barh(labels[::-1], values[::-1], color=color)
        ax.set_xlabel(xlabel)
    ax.set_title(title)
    fig.tight_layout()
    return fig


def bucket_width(window: Mapping[str, int], bucket_seconds: int | None) -> int:
    """The width of the time buckets: as given, or whole minutes making at most 120 buckets."""
    if bucket_seconds:
        if bucket_seconds % 60:
            raise SettingsError(f"bucket_seconds = {bucket_seconds}: give a multiple of 60")
        return bucket_seconds
    return 60 * max(1, -(-(window["to"] - window["from"]) // (120 * 60)))


def plot_over_time(
    attributed: pd.DataFrame, window: Mapping[str, int], bucket_seconds: int
) -> plt.Figure:
    """Denied packets per time bucket, stacked by the policies each denial is attributed to."""
    fig, ax = plt.subplots(figsize=(12, 4.5))
    if attributed.empty:
        no_plot_data(ax, "no denied flow in the window")
        return fig
    first = window["from"] - window["from"] % bucket_seconds
    pivot = (
        attributed.assign(bucket=attributed["start"] // bucket_seconds * bucket_seconds)
        .pivot_table(
            index="bucket", columns="policies", values="packets", aggfunc="sum", fill_value=0
        )
        .reindex(range(first, window["to"], bucket_seconds), fill_value=0)
    )
    times = as_time(pivot.index)
    bottom = pd.Series(0.0, index=pivot.index)
    for policies in pivot.columns:
        values = pivot[policies].astype(float)
        ax.bar(
            times,
            values,
            width=pd.Timedelta(seconds=bucket_seconds * 0.9),
            bottom=bottom,
            align="edge",
            label=policies,
        )
        bottom += values
    ax.set_ylabel("denied packets")
    ax.set_xlabel(f"time (UTC), buckets of {bucket_seconds} s")
    ax.set_title("Denied packets over time, by the policies that denied them")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1))
    time_axis(ax)
    fig.tight_layout()
    return fig
