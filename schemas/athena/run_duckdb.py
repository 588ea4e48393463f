#!/usr/bin/env python3
"""Run tollgate's named Athena queries on a local flow directory with DuckDB.

The queries in ``queries/`` are written for Athena (Trino SQL) and run there unchanged. This
runner lets the same text run on a local copy of the flow files (the collector's local sink,
the lab's output, files synced from the bucket): it transpiles each query with sqlglot
(``read="athena", write="duckdb"``), with no rewriting of its own, and resolves the table
``flows`` to a DuckDB view over ``<dir>/cluster=*/dt=*/hour=*/*.parquet`` with the three
partition keys read from the path as strings, as Athena's partition projection does. The
OCSF queries (``ocsf-*``) read ``ocsf_flows`` instead: tollgate's Amazon Security Lake objects
under ``<dir>/ext/*/region=*/accountId=*/eventDay=*/*.parquet`` (the lab's ``--ocsf`` output, or
files synced from the Security Lake bucket), with those three partition keys, as the custom
source's Glue table has them. A view is made only for the tables the query reads.

Command line (see README.md)::

    run_duckdb.py --list
    run_duckdb.py --dir DIR --query NAME [--param NAME=VALUE ...] [--format json|table]
    run_duckdb.py --query NAME --print-sql

From Python::

    from run_duckdb import run_query
    rows = run_query("/var/lib/tollgate/flows", "denied-flows", {"from": 0, "to": 2**40})

Each query file begins with a header: ``-- name: <name>`` (the file's stem), ``-- description:
<one line>``, then one ``-- param: <name> <type> <meaning>`` line per ``?`` of the query, in
the order the ``?`` appear. A name may occur several times (Athena parameters are positional,
so a value used twice is written twice); the caller gives it once and it is bound everywhere.

The view has every column of the Athena table (``flows.ddl.sql``) with the table's types, as
Athena gives them from the table's schema: a file written before a column was appended reads
it as null, also when no file of the directory has it yet.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import sqlglot
from sqlglot import exp

QUERIES_DIR = Path(__file__).resolve().parent / "queries"
DDL = Path(__file__).resolve().parent / "flows.ddl.sql"

# Athena (Hive DDL) types of the table's columns → DuckDB types.
DUCKDB_TYPES = {
    "int": "INTEGER",
    "bigint": "BIGINT",
    "string": "VARCHAR",
    "map<string,string>": "MAP(VARCHAR, VARCHAR)",
    "array<string>": "VARCHAR[]",
}

# The layout the collector writes (schemas/src/record.rs, PARTITION_KEYS), relative to the
# flow directory.
FILE_GLOB = "cluster=*/dt=*/hour=*/*.parquet"

# Security Lake's custom-source layout (collector/src/writer.rs, Layout::SecurityLake),
# relative to the same directory.
OCSF_FILE_GLOB = "ext/*/region=*/accountId=*/eventDay=*/*.parquet"

# Parameter types a header may name: Athena spellings, with their Python type and, for
# integers, the range Athena's type holds.
PARAM_TYPES: dict[str, tuple[type, tuple[int, int] | None]] = {
    "int": (int, (-(2**31), 2**31 - 1)),
    "integer": (int, (-(2**31), 2**31 - 1)),
    "bigint": (int, (-(2**63), 2**63 - 1)),
    "string": (str, None),
    "varchar": (str, None),
}

_NAME = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")
_PARAM_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")


class QueryError(Exception):
    """A problem the caller can fix: unknown query, bad or missing parameter, empty directory,
    malformed query file. The message says what and where."""


@dataclass(frozen=True)
class Param:
    """One ``-- param:`` line: one ``?`` of the query."""

    name: str
    type: str
    meaning: str


@dataclass(frozen=True)
class Query:
    """A named query file."""

    name: str
    description: str
    params: tuple[Param, ...]
    sql: str
    path: Path

    def unique_params(self) -> list[Param]:
        """The distinct parameters, in order of first use."""
        seen: dict[str, Param] = {}
        for p in self.params:
            seen.setdefault(p.name, p)
        return list(seen.values())


def parse_query_file(path: Path) -> Query:
    """Reads one query file and checks its header against its text."""
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()

    def header_line(index: int, key: str) -> str:
        prefix = f"-- {key}:"
        if index >= len(lines) or not lines[index].startswith(prefix):
            raise QueryError(f"{path}: line {index + 1} must start with '{prefix}'")
        value = lines[index][len(prefix) :].strip()
        if not value:
            raise QueryError(f"{path}: line {index + 1}: '{prefix}' has no value")
        return value

    name = header_line(0, "name")
    if name != path.stem:
        raise QueryError(f"{path}: header name '{name}' differs from the file name '{path.stem}'")
    if not _NAME.match(name):
        raise QueryError(f"{path}: query name '{name}' is not kebab-case")
    description = header_line(1, "description")

    params: list[Param] = []
    types: dict[str, str] = {}
    index = 2
    while index < len(lines) and lines[index].startswith("-- param:"):
        fields = header_line(index, "param").split(None, 2)
        if len(fields) != 3:
            raise QueryError(
                f"{path}: line {index + 1}: expected '-- param: <name> <type> <meaning>'"
            )
        pname, ptype, meaning = fields
        if not _PARAM_NAME.match(pname):
            raise QueryError(f"{path}: line {index + 1}: bad parameter name '{pname}'")
        if ptype not in PARAM_TYPES:
            raise QueryError(
                f"{path}: line {index + 1}: unknown type '{ptype}' "
                f"(known: {', '.join(sorted(PARAM_TYPES))})"
            )
        if types.setdefault(pname, ptype) != ptype:
            raise QueryError(
                f"{path}: line {index + 1}: parameter '{pname}' is {ptype} here but "
                f"{types[pname]} earlier"
            )
        params.append(Param(pname, ptype, meaning))
        index += 1

    query = Query(name, description, tuple(params), text, path)
    placeholders = count_placeholders(query.sql)
    if placeholders != len(params):
        raise QueryError(
            f"{path}: {placeholders} '?' placeholders but {len(params)} '-- param:' lines"
        )
    return query


def count_placeholders(sql: str) -> int:
    """The ``?`` of an Athena query, as sqlglot parses them (not those in strings/comments)."""
    return sum(
        1
        for tree in sqlglot.parse(sql, read="athena")
        if tree is not None
        for _ in tree.find_all(exp.Placeholder)
    )


def load_queries(directory: Path = QUERIES_DIR) -> dict[str, Query]:
    """Every named query of ``directory``, by name."""
    queries = {}
    for path in sorted(directory.glob("*.sql")):
        query = parse_query_file(path)
        queries[query.name] = query
    return queries


def load_query(name: str, directory: Path = QUERIES_DIR) -> Query:
    """One named query; a QueryError naming the known ones when there is no such query."""
    path = directory / f"{name}.sql"
    if not _NAME.match(name) or not path.is_file():
        known = ", ".join(sorted(p.stem for p in directory.glob("*.sql")))
        raise QueryError(f"unknown query '{name}' (known: {known})")
    return parse_query_file(path)


def to_duckdb(query: Query) -> str:
    """The query transpiled from Athena to DuckDB by sqlglot, and nothing else."""
    statements = sqlglot.transpile(query.sql, read="athena", write="duckdb")
    if len(statements) != 1:
        raise QueryError(f"{query.path}: expected one statement, found {len(statements)}")
    return statements[0]


def coerce(param: Param, value: Any) -> Any:
    """A parameter's value as its declared type; strings from the command line are parsed."""
    pytype, bounds = PARAM_TYPES[param.type]
    if pytype is int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise QueryError(
                f"parameter '{param.name}' ({param.type}): {value!r} is not an integer"
            )
        if isinstance(value, str):
            if not re.fullmatch(r"\s*[+-]?\d+\s*", value):
                raise QueryError(
                    f"parameter '{param.name}' ({param.type}): '{value}' is not an integer"
                )
            value = int(value)
        assert bounds is not None
        if not bounds[0] <= value <= bounds[1]:
            raise QueryError(
                f"parameter '{param.name}' ({param.type}): {value} is out of range "
                f"[{bounds[0]}, {bounds[1]}]"
            )
        return value
    if not isinstance(value, str):
        raise QueryError(f"parameter '{param.name}' ({param.type}): {value!r} is not a string")
    return value


def bind(query: Query, params: Mapping[str, Any]) -> list[Any]:
    """The positional values for the query's ``?``, from values by name."""
    declared = {p.name: p for p in query.unique_params()}
    extra = sorted(set(params) - set(declared))
    if extra:
        raise QueryError(
            f"query '{query.name}' has no parameter {', '.join(repr(e) for e in extra)} "
            f"(its parameters: {', '.join(declared) or 'none'})"
        )
    missing = [name for name in declared if name not in params]
    if missing:
        raise QueryError(
            f"query '{query.name}' needs parameter {', '.join(repr(m) for m in missing)}: "
            + "; ".join(f"{m} ({declared[m].type}): {declared[m].meaning}" for m in missing)
        )
    values = {name: coerce(p, params[name]) for name, p in declared.items()}
    return [values[p.name] for p in query.params]


def flow_files(directory: Path) -> list[Path]:
    """The Parquet files of a flow directory in the collector's layout; a QueryError when the
    directory is missing or holds none."""
    if not directory.is_dir():
        raise QueryError(f"flow directory {directory} does not exist or is not a directory")
    files = sorted(directory.glob(FILE_GLOB))
    if not files:
        elsewhere = next(iter(directory.rglob("*.parquet")), None)
        hint = f"; {elsewhere} is not in that layout" if elsewhere is not None else ""
        raise QueryError(
            f"no Parquet files under {directory} (expected {directory}/{FILE_GLOB}){hint}"
        )
    return files


def ocsf_files(directory: Path) -> list[Path]:
    """The Security Lake objects under a directory; a QueryError when there are none."""
    if not directory.is_dir():
        raise QueryError(f"directory {directory} does not exist or is not a directory")
    files = sorted(directory.glob(OCSF_FILE_GLOB))
    if not files:
        raise QueryError(
            f"no OCSF Parquet files under {directory} (expected {directory}/{OCSF_FILE_GLOB}; "
            "the lab writes them with --ocsf)"
        )
    return files


def tables_read(query: Query) -> set[str]:
    """The tables the query reads (`flows`, `ocsf_flows`)."""
    tree = sqlglot.parse_one(query.sql, read="athena")
    return {table.name for table in tree.find_all(exp.Table)}


def table_columns() -> list[tuple[str, str]]:
    """(name, Athena type) of the table's data columns, in the DDL's order."""
    text = DDL.read_text(encoding="utf-8")
    body = text[text.index("CREATE EXTERNAL TABLE") :]
    body = body[body.index("(") + 1 : body.index("\n)")]
    return re.findall(r"^\s*`(\w+)`\s+([a-z<>,]+?),?\s*$", body, re.MULTILINE)


def with_table_columns(files_sql: str) -> str:
    """``files_sql`` (a SELECT over flow files) with every column of the table: an empty
    SELECT of the DDL's columns, cast to their types, combined with it ``UNION ALL BY NAME``,
    so a column no file holds reads as null, typed (DuckDB still pushes partition filters
    into the file scan)."""
    typed = ", ".join(
        f'CAST(NULL AS {DUCKDB_TYPES[athena]}) AS "{name}"' for name, athena in table_columns()
    )
    return f"SELECT * FROM (SELECT {typed} LIMIT 0) UNION ALL BY NAME {files_sql}"


def connect(directory: Path, tables: Sequence[str] = ("flows",)):
    """A DuckDB connection in which ``flows`` is a view over the flow directory, and
    ``ocsf_flows`` one over the Security Lake objects under it, each when in ``tables``.

    - ``hive_partitioning``: cluster, dt and hour come from the path, as VARCHAR (Athena
      declares them as strings; DuckDB would otherwise read `hour=06` as the integer 6).
      `cluster` is also a column inside the files: DuckDB then takes the path's value, as
      Athena does (it only knows `cluster` as a partition key); the collector writes both equal.
    - ``union_by_name``, and every column of the table (``with_table_columns``): files
      written before a column was appended read it as null.
    - The session time zone is UTC, as Athena's: `date_format(from_unixtime(x), …)` becomes
      `STRFTIME(TO_TIMESTAMP(x), …)`, whose TIMESTAMP WITH TIME ZONE DuckDB would otherwise
      format in the machine's local zone, and the dt partition bounds would shift.
    - ``ocsf_flows``: the OCSF objects as they are (one schema, collector/src/ocsf.rs), with
      region, accountId and eventDay from the path as VARCHAR.
    """
    con = duckdb.connect(":memory:")
    con.execute("SET TimeZone = 'UTC'")
    if "flows" in tables:
        flow_files(directory)
        pattern = str(directory.resolve() / FILE_GLOB).replace("'", "''")
        files = f"""
            SELECT * FROM read_parquet(
                '{pattern}',
                hive_partitioning = true,
                hive_types = {{'cluster': VARCHAR, 'dt': VARCHAR, 'hour': VARCHAR}},
                union_by_name = true
            )
            """
        con.execute(f"CREATE VIEW flows AS {with_table_columns(files)}")
    if "ocsf_flows" in tables:
        ocsf_files(directory)
        pattern = str(directory.resolve() / OCSF_FILE_GLOB).replace("'", "''")
        con.execute(
            f"""
            CREATE VIEW ocsf_flows AS SELECT * FROM read_parquet(
                '{pattern}',
                hive_partitioning = true,
                hive_types = {{'region': VARCHAR, 'accountId': VARCHAR, 'eventDay': VARCHAR}},
                union_by_name = true
            )
            """
        )
    return con


def run_query(
    directory: str | Path,
    name: str,
    params: Mapping[str, Any] | None = None,
    *,
    queries_dir: Path = QUERIES_DIR,
) -> list[dict[str, Any]]:
    """Runs the named query on the flow directory; one dict per row, keys in column order.

    ``params`` maps each parameter name of the query's header to its value (int for
    int/bigint, str for string; strings are parsed for integer parameters)."""
    columns, rows = execute(directory, name, params, queries_dir=queries_dir)
    return [dict(zip(columns, row)) for row in rows]


def execute(
    directory: str | Path,
    name: str,
    params: Mapping[str, Any] | None = None,
    *,
    queries_dir: Path = QUERIES_DIR,
) -> tuple[list[str], list[tuple[Any, ...]]]:
    """As run_query, but the column names and the rows as tuples."""
    query = load_query(name, queries_dir)
    values = bind(query, params or {})
    sql = to_duckdb(query)
    con = connect(Path(directory), sorted(tables_read(query)))
    try:
        cursor = con.execute(sql, values)
        columns = [d[0] for d in cursor.description]
        return columns, cursor.fetchall()
    finally:
        con.close()


def _format_table(columns: Sequence[str], rows: Sequence[tuple[Any, ...]]) -> str:
    def cell(value: Any) -> str:
        if value is None:
            return "NULL"
        if isinstance(value, (dict, list)):
            return json.dumps(value, default=str)
        return str(value)

    cells = [[cell(v) for v in row] for row in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip(),
        "  ".join("-" * w for w in widths),
    ]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in cells]
    lines.append(f"({len(rows)} row{'' if len(rows) == 1 else 's'})")
    return "\n".join(lines)


def _list(out) -> None:
    for query in load_queries().values():
        print(f"{query.name}: {query.description}", file=out)
        for p in query.unique_params():
            print(f"    --param {p.name}=<{p.type}>  {p.meaning}", file=out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="run_duckdb.py",
        description="Run one of tollgate's named Athena queries on a local flow directory "
        "with DuckDB (the query is transpiled by sqlglot).",
    )
    parser.add_argument("--list", action="store_true", help="list the queries and their parameters")
    parser.add_argument(
        "--dir", type=Path, help="flow directory (holding cluster=…/dt=…/hour=…/*.parquet)"
    )
    parser.add_argument("--query", help="name of the query (see --list)")
    parser.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a parameter of the query, once per name (repeat the option for several)",
    )
    parser.add_argument(
        "--format",
        choices=["json", "table"],
        default="json",
        help="json: one JSON object per row and line (default); table: aligned columns",
    )
    parser.add_argument(
        "--print-sql", action="store_true", help="print the transpiled DuckDB SQL and exit"
    )
    args = parser.parse_args(argv)

    try:
        if args.list:
            _list(sys.stdout)
            return 0
        if not args.query:
            parser.error("--query is required (or --list)")
        if args.print_sql:
            print(to_duckdb(load_query(args.query)))
            return 0
        if args.dir is None:
            parser.error("--dir is required")
        params: dict[str, str] = {}
        for item in args.param:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise QueryError(f"--param '{item}': expected NAME=VALUE")
            if key in params:
                raise QueryError(f"--param '{key}' given twice")
            params[key] = value
        columns, rows = execute(args.dir, args.query, params)
    except QueryError as e:
        print(f"run_duckdb.py: error: {e}", file=sys.stderr)
        return 1
    except (duckdb.Error, sqlglot.errors.SqlglotError) as e:  # say which query, keep the message
        print(
            f"run_duckdb.py: error: query '{args.query}': {type(e).__name__}: {e}", file=sys.stderr
        )
        return 1

    if args.format == "json":
        for row in rows:
            print(json.dumps(dict(zip(columns, row)), default=str))
    else:
        print(_format_table(columns, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
