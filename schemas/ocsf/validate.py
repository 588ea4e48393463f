"""Validates tollgate's Security Lake objects against the OCSF 1.1.0 schema.

Each row of each Parquet file (read by DuckDB, as Security Lake's own readers would) becomes
the JSON event it encodes (nulls dropped: an absent field), and is checked twice:
- against the JSON Schema of Network Activity generated from the OCSF 1.1.0 export that PyPI's
  ocsf-json-schema bundles, for the profiles the event names in `metadata.profiles`: every
  required field, every type, range, pattern and enum, and no field OCSF does not define
  (outside `unmapped`);
- with ocsf-lib's model of the same export: the class and category, `type_uid` = class × 100
  + activity, and every `*_id` enum's sibling name being its caption (an `Other` (99) names
  itself).

Usage: validate.py PATH... (files or directories of .parquet). Prints one JSON line per file
with its rows and the kinds it holds, one line per problem to stderr; exits 1 on any problem.
"""

import importlib.resources
import json
import sys
from pathlib import Path

import duckdb
import jsonschema
from ocsf.schema import from_file
from ocsf_json_schema.embedded import OcsfJsonSchemaEmbedded
from ocsf_json_schema.schema import OcsfJsonSchema

VERSION = "1.1.0"
CLASS = "network_activity"

_EXPORT = importlib.resources.files("ocsf_json_schema") / "ocsf" / f"{VERSION}.json"


def _export() -> dict:
    return json.loads(_EXPORT.read_text())


class Validator:
    """The OCSF 1.1.0 Network Activity class, as JSON Schema and as ocsf-lib's model."""

    def __init__(self) -> None:
        self._json = OcsfJsonSchemaEmbedded(OcsfJsonSchema(_export()))
        self._validators: dict[tuple[str, ...], jsonschema.Draft202012Validator] = {}
        self.model = from_file(str(_EXPORT))
        self.cls = self.model.classes[CLASS]

    def _validator(self, profiles: tuple[str, ...]) -> jsonschema.Draft202012Validator:
        if profiles not in self._validators:
            schema = self._json.get_class_schema(CLASS, list(profiles))
            self._validators[profiles] = jsonschema.Draft202012Validator(schema)
        return self._validators[profiles]

    def problems(self, event: dict) -> list[str]:
        """Every way `event` is not a valid OCSF 1.1.0 Network Activity event."""
        profiles = tuple(sorted(event.get("metadata", {}).get("profiles", [])))
        found = [
            f"{'/'.join(map(str, e.absolute_path)) or '(event)'}: {e.message}"
            for e in self._validator(profiles).iter_errors(event)
        ]
        if event.get("metadata", {}).get("version") != VERSION:
            found.append(f"metadata.version: {event.get('metadata', {}).get('version')!r}")
        if event.get("class_uid") != self.cls.uid:
            found.append(f"class_uid {event.get('class_uid')} is not {self.cls.uid}")
        expected = self.cls.uid * 100 + event.get("activity_id", -1)
        if event.get("type_uid") != expected:
            found.append(f"type_uid {event.get('type_uid')} is not {expected}")
        for attribute, sibling in [
            ("activity_id", "activity_name"),
            ("action_id", "action"),
            ("disposition_id", "disposition"),
            ("severity_id", "severity"),
            ("status_id", "status"),
        ]:
            if attribute not in event:
                continue
            enum = self.cls.attributes[attribute].enum or {}
            value = str(event[attribute])
            if value not in enum:
                found.append(f"{attribute} {value} is not in OCSF's enum")
            elif value != "99" and event.get(sibling) != enum[value].caption:
                found.append(
                    f"{sibling} {event.get(sibling)!r} is not the caption of {attribute} "
                    f"{value} ({enum[value].caption!r})"
                )
        return found


def _without_nulls(value):
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def events(path: Path) -> list[dict]:
    """The events of one Parquet file, in row order, nulls dropped."""
    rows = duckdb.execute("SELECT to_json(t) FROM read_parquet(?, hive_partitioning = false) t", [str(path)]).fetchall()
    return [_without_nulls(json.loads(row[0])) for row in rows]


def kind(event: dict) -> str:
    """What a row records: the unmapped verdict of a flow, or its activity's name."""
    verdict = event.get("unmapped", {}).get("verdict")
    return verdict if verdict else event.get("activity_name", "?")


def main(paths: list[str]) -> int:
    validator = Validator()
    files = []
    for path in map(Path, paths):
        files.extend(sorted(path.rglob("*.parquet")) if path.is_dir() else [path])
    failed = False
    for path in files:
        found = events(path)
        kinds: dict[str, int] = {}
        for row, event in enumerate(found):
            kinds[kind(event)] = kinds.get(kind(event), 0) + 1
            for problem in validator.problems(event):
                failed = True
                print(f"{path} row {row}: {problem}", file=sys.stderr)
        times = [event["time"] for event in found]
        if times != sorted(times):
            failed = True
            print(f"{path}: rows are not sorted by time", file=sys.stderr)
        print(json.dumps({"file": str(path), "rows": len(found), "kinds": kinds}))
    if not files:
        print("no Parquet files", file=sys.stderr)
        return 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
