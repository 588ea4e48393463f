"""The vendored ClusterNetworkPolicy CRD (deploy/crds/) is upstream's, byte for byte.

    python3 -m unittest deploy/test_crds.py          (from the repository root; needs PyYAML)

The file is a header of comments naming its source, then the upstream file unchanged. Offline,
the part after the header must have the recorded git blob id and sha256 (so it cannot drift);
with a mirror or clone of kubernetes-sigs/network-policy-api at hand (NETWORK_POLICY_API_REPO,
or the default below), it must also be the blob git shows at the tag and path. The chart's
crds/ copy must be the same file.
"""

import hashlib
import os
import subprocess
import unittest

import jsonschema
import yaml

DEPLOY = os.path.dirname(os.path.abspath(__file__))
VENDORED = os.path.join(DEPLOY, "crds", "policy.networking.k8s.io_clusternetworkpolicies.yaml")
CHART_CRDS = os.path.join(DEPLOY, "helm", "tollgate", "crds")

REPOSITORY = "https://github.com/kubernetes-sigs/network-policy-api"
TAG = "v0.2.0"
COMMIT = "a17adecd0316b8ff1c3f83939ec0441d68cd6cce"
PATH = "config/crd/experimental/policy.networking.k8s.io_clusternetworkpolicies.yaml"
BLOB = "05f05b952772b760d008f7e59f86937bf710c8d4"
SHA256 = "995a7463dffb48b26ffb816bfec860ae1bc533bca364fda15b9f74f8c10b9882"
MIRROR = os.environ.get("NETWORK_POLICY_API_REPO", "/work/.mirror/kubernetes-sigs+network-policy-api/repo")


def split(data):
    """(header, body): the leading comment lines, and the rest."""
    offset = 0
    for line in data.splitlines(keepends=True):
        if not line.startswith(b"#"):
            break
        offset += len(line)
    return data[:offset], data[offset:]


def git_blob_id(body):
    return hashlib.sha1(b"blob %d\0" % len(body) + body).hexdigest()


def vendored():
    with open(VENDORED, "rb") as f:
        return f.read()


def mirror_blob():
    """The upstream blob from the mirror, or None (with the reason) when there is none."""
    if not os.path.isdir(MIRROR):
        return None, f"no mirror of {REPOSITORY} at {MIRROR} (set NETWORK_POLICY_API_REPO)"
    git = ["git", "-C", MIRROR]
    commit = subprocess.run(
        [*git, "rev-parse", f"{TAG}^{{commit}}"], capture_output=True, text=True, check=True
    )
    blob = subprocess.run([*git, "rev-parse", f"{TAG}:{PATH}"], capture_output=True, text=True, check=True)
    data = subprocess.run([*git, "cat-file", "blob", blob.stdout.strip()], capture_output=True, check=True)
    return (commit.stdout.strip(), blob.stdout.strip(), data.stdout), None


class VendoredCrdTest(unittest.TestCase):
    def setUp(self):
        self.header, self.body = split(vendored())

    def test_the_body_is_the_recorded_blob(self):
        self.assertTrue(self.body.startswith(b"apiVersion: apiextensions.k8s.io/v1\n"))
        self.assertEqual(git_blob_id(self.body), BLOB)
        self.assertEqual(hashlib.sha256(self.body).hexdigest(), SHA256)

    def test_the_body_is_the_upstream_blob(self):
        found, reason = mirror_blob()
        if found is None:
            self.skipTest(f"{reason}: the body is held to the recorded blob id and sha256 only")
        commit, blob, data = found
        self.assertEqual(commit, COMMIT, f"{TAG} moved")
        self.assertEqual(blob, BLOB)
        self.assertEqual(self.body, data, "byte for byte")

    def test_the_header_names_the_source(self):
        header = self.header.decode()
        for fact in [REPOSITORY, f"tag:        {TAG} (commit {COMMIT})", f"path:       {PATH}", BLOB, SHA256]:
            self.assertIn(fact, header)
        for line in header.splitlines():
            self.assertTrue(line.startswith("# ") or line == "#", line)
            self.assertLessEqual(len(line), 100, line)

    def test_the_chart_ships_the_same_file_and_nothing_else(self):
        self.assertEqual(os.listdir(CHART_CRDS), [os.path.basename(VENDORED)])
        with open(os.path.join(CHART_CRDS, os.path.basename(VENDORED)), "rb") as f:
            self.assertEqual(f.read(), vendored())

    def test_it_is_the_clusternetworkpolicy_api_tollgate_speaks(self):
        docs = [d for d in yaml.safe_load_all(self.body) if d]
        self.assertEqual(len(docs), 1)
        crd = docs[0]
        self.assertEqual(crd["metadata"]["name"], "clusternetworkpolicies.policy.networking.k8s.io")
        annotations = crd["metadata"]["annotations"]
        self.assertEqual(annotations["policy.networking.k8s.io/bundle-version"], TAG)
        self.assertEqual(annotations["policy.networking.k8s.io/channel"], "experimental")
        spec = crd["spec"]
        self.assertEqual(spec["group"], "policy.networking.k8s.io")
        self.assertEqual(spec["scope"], "Cluster")
        self.assertEqual(spec["names"]["kind"], "ClusterNetworkPolicy")
        self.assertEqual(spec["names"]["plural"], "clusternetworkpolicies")
        self.assertEqual(
            [(v["name"], v["served"], v["storage"]) for v in spec["versions"]], [("v1alpha2", True, True)]
        )
        peers = spec["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["egress"]
        self.assertLessEqual(
            {"nodes", "domainNames", "networks"},
            set(peers["items"]["properties"]["to"]["items"]["properties"]),
        )

    def test_the_quarantine_policy_fits_the_schema(self):
        """The policy `tollgate quarantine` is to create, against the CRD's OpenAPI schema (its
        structure, enums, bounds; not its CEL rules)."""
        crd = yaml.safe_load(self.body)
        schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        value = "web-7c5ddbdf54-x2x7q"
        policy = {
            "apiVersion": "policy.networking.k8s.io/v1alpha2",
            "kind": "ClusterNetworkPolicy",
            "metadata": {
                "name": f"tollgate-quarantine-shop-{value}",
                "labels": {"app.kubernetes.io/managed-by": "tollgate", "tollgate.io/quarantine": value},
            },
            "spec": {
                "tier": "Admin",
                "priority": 0,
                "subject": {
                    "pods": {
                        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "shop"}},
                        "podSelector": {"matchLabels": {"tollgate.io/quarantine": value}},
                    }
                },
                "ingress": [{"action": "Deny", "from": [{"namespaces": {}}]}],
                "egress": [{"action": "Deny", "to": [{"networks": ["0.0.0.0/0", "::/0"]}]}],
            },
        }
        jsonschema.Draft4Validator(schema).validate(policy)
        # The validator does refuse: no tier, and a second peer kind in one peer.
        broken = yaml.safe_load(yaml.safe_dump(policy))
        del broken["spec"]["tier"]
        broken["spec"]["ingress"][0]["from"][0]["pods"] = {"podSelector": {}, "namespaceSelector": {}}
        errors = list(jsonschema.Draft4Validator(schema).iter_errors(broken))
        self.assertEqual(len(errors), 2, [e.message for e in errors])


if __name__ == "__main__":
    unittest.main()
