"""Checks of the deployment: the plain manifests, the Helm chart, and the two against each other.

    python3 -m unittest deploy/test_deploy.py        (from the repository root; needs PyYAML)

The plain manifests (deploy/manifests/tollgate.yaml) are checked in full: what the agent's pod
may do (capabilities, privilege, host namespaces and paths), how it is probed, scheduled and
rolled, what the ServiceAccount may read, and its configuration against the collector's own
settings schema. Helm is not needed: the chart is checked against the manifests through its
values and the static parts of its templates. Where `helm` is on the PATH, `helm lint` and
`helm template` run as well and must render exactly the plain manifests, plus the quarantine
admission policy of deploy/incident/quarantine-admission.yaml (test_admission.py evaluates it),
and with `--include-crds` the vendored ClusterNetworkPolicy CRD of deploy/crds/ (test_crds.py).
"""

import hashlib
import os
import re
import shutil
import subprocess
import unittest

import yaml

DEPLOY = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(DEPLOY)
CHART = os.path.join(DEPLOY, "helm", "tollgate")
MANIFESTS = os.path.join(DEPLOY, "manifests", "tollgate.yaml")
# What the chart renders besides the manifests: the quarantine admission policy and its binding
# (on by default), and the CRD of its crds/ directory (with --include-crds).
ADMISSION = os.path.join(DEPLOY, "incident", "quarantine-admission.yaml")
CRD = os.path.join(DEPLOY, "crds", "policy.networking.k8s.io_clusternetworkpolicies.yaml")

# The capabilities the agent gets, in this order; deploy/README.md gives the reason for each.
CAPABILITIES = ["BPF", "NET_ADMIN", "PERFMON", "SYS_RESOURCE"]
# Everything the ClusterRole grants: (API group, resource, verb). Services, EndpointSlices and
# ClusterNetworkPolicies only as the agent's watches (agent/src/watch.rs) read them: list, then
# watch.
RBAC = {
    (group, resource, verb)
    for group, resource in [("", "pods"), ("", "namespaces"), ("networking.k8s.io", "networkpolicies")]
    for verb in ["get", "list", "watch"]
} | {
    (group, resource, verb)
    for group, resource in [
        ("", "services"),
        ("discovery.k8s.io", "endpointslices"),
        ("policy.networking.k8s.io", "clusternetworkpolicies"),
        ("networking.k8s.aws", "clusternetworkpolicies"),
        ("", "nodes"),
    ]
    for verb in ["list", "watch"]
}
AGENT_FIELDS = {
    "enforcement",
    "node_ingress",
    "bpffs",
    "cni_config",
    "metrics_address",
    "health_address",
    "log_format",
    "otlp_endpoint",
    "drift_check_secs",
}
NAMESPACE = "kube-system"
CLUSTER = "example"
HELM_TEMPLATE = ["template", "tollgate", CHART, "--namespace", NAMESPACE]


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def documents(text):
    """The objects of a multi-document YAML text, by (kind, name)."""
    objects = {}
    for doc in yaml.safe_load_all(text):
        if doc:
            key = (doc["kind"], doc["metadata"]["name"])
            assert key not in objects, f"{key} twice"
            objects[key] = doc
    return objects


def collector_fields():
    """The fields of CollectorConfig, from collector/src/config.rs (serde refuses any other)."""
    source = read(os.path.join(ROOT, "collector", "src", "config.rs"))
    body = re.search(r"pub struct CollectorConfig \{(.*?)\n\}", source, re.S)
    assert body, "CollectorConfig not found in collector/src/config.rs"
    return set(re.findall(r"^\s*pub (\w+):", body.group(1), re.M))


def port(address):
    return int(address.rsplit(":", 1)[1])


def skeleton(template):
    """The static YAML of a template: lines that are only a template action are dropped, and any
    other action becomes the scalar `TEMPLATED`. Good for reading the parts of our templates that
    are not templated; not a renderer."""
    lines = []
    for line in template.splitlines():
        if re.fullmatch(r"\s*\{\{.*\}\}\s*", line):
            continue
        lines.append(re.sub(r"\{\{.*?\}\}", "TEMPLATED", line))
    return yaml.safe_load("\n".join(lines))


class Manifests:
    """The plain manifests, parsed once."""

    _objects = None

    @classmethod
    def objects(cls):
        if cls._objects is None:
            cls._objects = documents(read(MANIFESTS))
        return cls._objects

    @classmethod
    def get(cls, kind):
        found = [o for (k, _), o in cls.objects().items() if k == kind]
        assert len(found) == 1, f"{len(found)} {kind} objects"
        return found[0]

    @classmethod
    def container(cls):
        spec = cls.get("DaemonSet")["spec"]["template"]["spec"]
        assert len(spec["containers"]) == 1 and not spec.get("initContainers")
        return spec["containers"][0]

    @classmethod
    def config_text(cls):
        return cls.get("ConfigMap")["data"]["config.yaml"]

    @classmethod
    def config(cls):
        return yaml.safe_load(cls.config_text())


class PlainManifestsTest(unittest.TestCase):
    def setUp(self):
        self.daemonset = Manifests.get("DaemonSet")
        self.pod = self.daemonset["spec"]["template"]["spec"]
        self.container = Manifests.container()

    def test_the_objects_are_the_agents_and_nothing_else(self):
        kinds = sorted(kind for kind, _ in Manifests.objects())
        self.assertEqual(
            kinds, ["ClusterRole", "ClusterRoleBinding", "ConfigMap", "DaemonSet", "ServiceAccount"]
        )
        for (kind, name), obj in Manifests.objects().items():
            self.assertEqual(name, "tollgate", kind)
            if not kind.startswith("Cluster"):
                self.assertEqual(obj["metadata"]["namespace"], NAMESPACE, kind)

    def test_capabilities_are_exactly_the_documented_ones(self):
        security = self.container["securityContext"]
        self.assertEqual(security["capabilities"]["drop"], ["ALL"])
        self.assertEqual(security["capabilities"]["add"], CAPABILITIES)
        readme = read(os.path.join(DEPLOY, "README.md"))
        for capability in CAPABILITIES:
            self.assertIn(f"`{capability}`", readme, "every capability is explained")

    def test_the_pod_is_not_privileged(self):
        security = self.container["securityContext"]
        self.assertFalse(security.get("privileged", False))
        self.assertIs(security["allowPrivilegeEscalation"], False)
        self.assertIs(security["readOnlyRootFilesystem"], True)
        self.assertEqual(security["runAsUser"], 0)
        self.assertEqual(security["seccompProfile"], {"type": "RuntimeDefault"})
        self.assertNotIn("securityContext", self.pod, "only the container's context is set")
        for host_namespace in ["hostPID", "hostIPC", "shareProcessNamespace"]:
            self.assertNotIn(host_namespace, self.pod)

    def test_host_network_with_cluster_dns(self):
        self.assertIs(self.pod["hostNetwork"], True)
        self.assertEqual(self.pod["dnsPolicy"], "ClusterFirstWithHostNet")

    def test_the_host_paths_are_the_bpf_filesystem_and_the_state_directory(self):
        volumes = {v["name"]: v for v in self.pod["volumes"]}
        mounts = {m["name"]: m for m in self.container["volumeMounts"]}
        self.assertEqual(set(volumes), set(mounts))
        host_paths = {v["hostPath"]["path"]: v for v in volumes.values() if "hostPath" in v}
        self.assertEqual(
            set(host_paths), {"/sys/fs/bpf", "/var/lib/tollgate", "/etc/cni/net.d"}, "no /proc, no more"
        )

        bpffs = volumes["bpffs"]["hostPath"]
        self.assertEqual(bpffs, {"path": "/sys/fs/bpf", "type": "Directory"})
        self.assertEqual(mounts["bpffs"]["mountPath"], "/sys/fs/bpf")
        self.assertEqual(mounts["bpffs"]["mountPropagation"], "HostToContainer")
        self.assertFalse(mounts["bpffs"].get("readOnly", False), "the agent pins")

        state = volumes["state"]["hostPath"]
        self.assertEqual(state, {"path": "/var/lib/tollgate", "type": "DirectoryOrCreate"})
        self.assertEqual(mounts["state"]["mountPath"], "/var/lib/tollgate")
        self.assertFalse(mounts["state"].get("readOnly", False))

        self.assertEqual(volumes["config"]["configMap"]["name"], Manifests.get("ConfigMap")["metadata"]["name"])
        self.assertEqual(mounts["config"]["mountPath"], "/etc/tollgate")
        self.assertIs(mounts["config"]["readOnly"], True)

        cni = volumes["cni"]["hostPath"]
        self.assertEqual(cni, {"path": "/etc/cni/net.d", "type": "Directory"})
        self.assertEqual(mounts["cni"]["mountPath"], "/etc/cni/net.d")
        self.assertIs(mounts["cni"]["readOnly"], True, "the agent only reads the VPC CNI's configuration")

        config = Manifests.config()
        self.assertEqual(config["agent"]["cni_config"], "/etc/cni/net.d/10-aws.conflist", "under the mount")
        self.assertTrue(config["agent"]["bpffs"].startswith("/sys/fs/bpf/"), "pins under the mount")
        self.assertTrue(config["collector"]["spool_dir"].startswith("/var/lib/tollgate/"), "spool on the host")

    def test_the_agent_runs_with_the_mounted_config(self):
        self.assertEqual(self.container["command"], ["tollgate"])
        self.assertEqual(self.container["args"], ["agent", "--config", "/etc/tollgate/config.yaml"])
        self.assertEqual(
            self.container["env"],
            [{"name": "TOLLGATE_NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}],
        )

    def test_ports_and_probes_follow_the_configured_addresses(self):
        agent = Manifests.config()["agent"]
        ports = {p["name"]: p for p in self.container["ports"]}
        self.assertEqual(ports["metrics"]["containerPort"], port(agent["metrics_address"]))
        self.assertEqual(ports["health"]["containerPort"], port(agent["health_address"]))
        for p in ports.values():
            self.assertNotIn("hostPort", p)
        for probe, path in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")]:
            spec = self.container[probe]
            self.assertEqual(spec["httpGet"], {"path": path, "port": "health"}, probe)
            for timing in ["initialDelaySeconds", "periodSeconds", "timeoutSeconds", "failureThreshold"]:
                self.assertGreater(spec[timing], 0, f"{probe}.{timing}")
        liveness, readiness = self.container["livenessProbe"], self.container["readinessProbe"]
        self.assertGreaterEqual(
            liveness["periodSeconds"] * liveness["failureThreshold"], 60, "no restart on a short stall"
        )
        annotations = self.daemonset["spec"]["template"]["metadata"]["annotations"]
        self.assertEqual(annotations["prometheus.io/scrape"], "true")
        self.assertEqual(annotations["prometheus.io/port"], str(port(agent["metrics_address"])))
        self.assertEqual(annotations["prometheus.io/path"], "/metrics")
        self.assertLessEqual(readiness["periodSeconds"], liveness["periodSeconds"])

    def test_resources(self):
        resources = self.container["resources"]
        self.assertEqual(resources["requests"], {"cpu": "100m", "memory": "128Mi"})
        self.assertEqual(resources["limits"], {"memory": "512Mi"}, "a memory limit, no CPU limit")

    def test_one_node_at_a_time_and_never_two_agents_on_a_node(self):
        strategy = self.daemonset["spec"]["updateStrategy"]
        self.assertEqual(strategy["type"], "RollingUpdate")
        self.assertEqual(strategy["rollingUpdate"], {"maxUnavailable": 1, "maxSurge": 0})
        self.assertGreaterEqual(self.pod["terminationGracePeriodSeconds"], 60, "time to flush")

    def test_runs_on_every_linux_node_first(self):
        self.assertEqual(self.pod["priorityClassName"], "system-node-critical")
        self.assertEqual(self.pod["tolerations"], [{"operator": "Exists"}])
        self.assertEqual(self.pod["nodeSelector"], {"kubernetes.io/os": "linux"})
        selector = self.daemonset["spec"]["selector"]["matchLabels"]
        labels = self.daemonset["spec"]["template"]["metadata"]["labels"]
        self.assertTrue(selector.items() <= labels.items())

    def test_the_cluster_role_only_reads_what_the_agent_compiles(self):
        granted = set()
        for rule in Manifests.get("ClusterRole")["rules"]:
            self.assertEqual(set(rule), {"apiGroups", "resources", "verbs"}, "no resourceNames, no URLs")
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    for verb in rule["verbs"]:
                        granted.add((group, resource, verb))
        self.assertEqual(granted, RBAC)

        binding = Manifests.get("ClusterRoleBinding")
        account = Manifests.get("ServiceAccount")
        self.assertEqual(
            binding["roleRef"],
            {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "tollgate"},
        )
        self.assertEqual(
            binding["subjects"],
            [{"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": NAMESPACE}],
        )
        self.assertEqual(self.pod["serviceAccountName"], account["metadata"]["name"])
        self.assertNotIn("annotations", account["metadata"], "no IRSA role by default")

    def test_the_config_is_the_collectors_schema_and_the_agents_settings(self):
        config = Manifests.config()
        self.assertEqual(set(config), {"collector", "agent"})
        collector, agent = config["collector"], config["agent"]
        self.assertEqual(collector["cluster"], CLUSTER)
        self.assertLessEqual(set(collector), collector_fields(), "CollectorConfig refuses unknown fields")
        self.assertNotIn("node", collector, "the node comes from TOLLGATE_NODE")
        self.assertEqual(set(agent), AGENT_FIELDS)
        self.assertEqual(agent["enforcement"], "strict")
        self.assertEqual(agent["node_ingress"], "allow", "the NetworkPolicy API exempts the node")
        self.assertEqual(agent["bpffs"], "/sys/fs/bpf/tollgate")
        self.assertIn(agent["log_format"], ["text", "json"])

    def test_the_pods_roll_when_the_config_changes(self):
        text = Manifests.config_text()
        self.assertTrue(text.endswith("\n"))
        annotations = self.daemonset["spec"]["template"]["metadata"]["annotations"]
        # Helm hashes the rendered config.yaml, which the block scalar ends with one newline.
        self.assertEqual(annotations["checksum/config"], hashlib.sha256(text[:-1].encode()).hexdigest())


class ChartTest(unittest.TestCase):
    """The chart against the manifests, without helm: values and the static parts of templates."""

    def setUp(self):
        self.values = yaml.safe_load(read(os.path.join(CHART, "values.yaml")))
        self.chart = yaml.safe_load(read(os.path.join(CHART, "Chart.yaml")))
        self.templates = os.path.join(CHART, "templates")

    def template(self, name):
        return read(os.path.join(self.templates, name))

    def test_the_chart_has_every_template(self):
        self.assertEqual(self.chart["apiVersion"], "v2")
        self.assertEqual(self.chart["name"], "tollgate")
        names = set(os.listdir(self.templates))
        for name in [
            "_helpers.tpl",
            "serviceaccount.yaml",
            "clusterrole.yaml",
            "clusterrolebinding.yaml",
            "configmap.yaml",
            "daemonset.yaml",
            "quarantine-admission.yaml",
            "NOTES.txt",
        ]:
            self.assertIn(name, names)

    def test_the_app_version_is_the_workspace_version(self):
        cargo = read(os.path.join(ROOT, "Cargo.toml"))
        version = re.search(r'\[workspace\.package\][^\[]*?\nversion = "([^"]+)"', cargo, re.S).group(1)
        self.assertEqual(self.chart["appVersion"], version)
        image = Manifests.container()["image"]
        self.assertEqual(image, f'{self.values["image"]["repository"]}:{self.chart["appVersion"]}')
        self.assertEqual(self.values["image"]["tag"], "", "the tag defaults to appVersion")

    def test_agent_settings_are_checked_before_rendering(self):
        helpers = self.template("_helpers.tpl")
        self.assertIn('(list "strict" "standard")', helpers)
        self.assertIn('(list "allow" "policy")', helpers)

    def test_every_agent_setting_is_one_the_agent_knows(self):
        source = read(os.path.join(ROOT, "agent", "src", "config.rs"))
        body = re.search(r"pub struct AgentSettings \{(.*?)\n\}", source, re.S).group(1)
        fields = set(re.findall(r"pub (\w+):", body))
        self.assertLessEqual(AGENT_FIELDS, fields, "AgentSettings refuses unknown fields")

    def test_the_cluster_has_no_default(self):
        self.assertEqual(self.values["config"]["collector"]["cluster"], "")
        self.assertIn('required "config.collector.cluster is required', self.template("_helpers.tpl"))

    def test_the_default_values_render_the_manifests_config(self):
        expected = {
            "agent": dict(self.values["config"]["agent"]),
            "collector": dict(self.values["config"]["collector"], cluster=CLUSTER),
        }
        self.assertEqual(expected["collector"].pop("sink"), {}, "no sink: the embedded local default")
        self.assertEqual(Manifests.config(), expected)
        self.assertLessEqual(set(self.values["config"]["collector"]), collector_fields())
        self.assertEqual(set(self.values["config"]["agent"]), AGENT_FIELDS)

    def test_the_default_values_render_the_manifests_pod(self):
        pod = Manifests.get("DaemonSet")["spec"]["template"]["spec"]
        container = Manifests.container()
        values = self.values
        self.assertEqual(container["resources"], values["resources"])
        self.assertEqual(container["imagePullPolicy"], values["image"]["pullPolicy"])
        self.assertEqual(container["securityContext"]["appArmorProfile"], values["appArmorProfile"])
        self.assertEqual(values["seLinuxOptions"], {})
        self.assertNotIn("seLinuxOptions", container["securityContext"])
        self.assertEqual(pod["tolerations"], values["tolerations"])
        self.assertEqual(pod["nodeSelector"], values["nodeSelector"])
        self.assertEqual(pod["priorityClassName"], values["priorityClassName"])
        self.assertEqual(pod["dnsPolicy"], values["dnsPolicy"])
        self.assertEqual(pod["terminationGracePeriodSeconds"], values["terminationGracePeriodSeconds"])
        self.assertEqual(
            Manifests.get("DaemonSet")["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"],
            values["updateStrategy"]["maxUnavailable"],
        )
        self.assertEqual(values["stateDir"], "/var/lib/tollgate")
        self.assertIs(values["uninstall"], False)
        self.assertIs(values["metrics"]["scrapeAnnotations"], True)
        self.assertEqual(values["serviceAccount"]["roleArn"], "")

    def test_the_daemonset_templates_static_parts_match_the_manifest(self):
        template = skeleton(self.template("daemonset.yaml"))
        manifest = Manifests.get("DaemonSet")
        self.assertEqual(template["spec"]["updateStrategy"]["rollingUpdate"]["maxSurge"], 0)
        pod, expected_pod = template["spec"]["template"]["spec"], manifest["spec"]["template"]["spec"]
        for key in ["hostNetwork", "enableServiceLinks"]:
            self.assertEqual(pod[key], expected_pod[key], key)
        bpffs = [v for v in pod["volumes"] if v["name"] == "bpffs"]
        self.assertEqual(bpffs, [v for v in expected_pod["volumes"] if v["name"] == "bpffs"])
        container, expected = pod["containers"][0], Manifests.container()
        security = dict(container["securityContext"])
        expected_security = dict(expected["securityContext"])
        # Both come from values, checked above.
        for key in ["appArmorProfile", "seLinuxOptions"]:
            security.pop(key, None)
            expected_security.pop(key, None)
        self.assertEqual(security, expected_security)
        for key in ["command", "env", "livenessProbe", "readinessProbe"]:
            self.assertEqual(container[key], expected[key], key)
        self.assertEqual(container["args"][:3], expected["args"])
        self.assertEqual(container["args"][3:], ["--uninstall"], "only under `uninstall: true`")
        self.assertEqual(
            [m for m in container["volumeMounts"] if m["name"] != "state"],
            [m for m in expected["volumeMounts"] if m["name"] != "state"],
        )

    def test_the_cluster_role_template_matches_the_manifest(self):
        template = skeleton(self.template("clusterrole.yaml"))
        self.assertEqual(template["rules"], Manifests.get("ClusterRole")["rules"])
        binding = skeleton(self.template("clusterrolebinding.yaml"))
        self.assertEqual(binding["roleRef"]["kind"], "ClusterRole")
        self.assertEqual(binding["subjects"][0]["kind"], "ServiceAccount")

    def test_the_irsa_annotation_is_rendered_only_for_a_role(self):
        template = self.template("serviceaccount.yaml")
        self.assertRegex(
            template,
            r"\{\{- with \.Values\.serviceAccount\.roleArn \}\}\n(\s*#.*\n)*"
            r"\s*eks\.amazonaws\.com/role-arn: \{\{ \. \| quote \}\}",
        )


@unittest.skipUnless(shutil.which("helm"), "helm is not on the PATH")
class HelmTest(unittest.TestCase):
    """With helm: the chart lints and renders exactly the plain manifests."""

    def helm(self, *args, check=True):
        return subprocess.run(["helm", *args], capture_output=True, text=True, check=check)

    def render(self, *sets):
        args = [*HELM_TEMPLATE, "--set", f"config.collector.cluster={CLUSTER}"]
        for s in sets:
            args += ["--set", s]
        return documents(self.helm(*args).stdout)

    def test_lint(self):
        self.helm("lint", CHART, "--set", f"config.collector.cluster={CLUSTER}")

    def test_template_renders_the_plain_manifests(self):
        rendered = self.render()
        admission = documents(read(ADMISSION))
        for key, expected in admission.items():
            obj = rendered.pop(key)
            # The chart's labels besides the plain file's (helm.sh/chart, managed-by: Helm, ...).
            labels = obj["metadata"].pop("labels")
            self.assertLessEqual(expected["metadata"]["labels"].items(), labels.items(), key)
            self.assertEqual(obj, dict(expected, metadata={"name": expected["metadata"]["name"]}), key)
        self.assertEqual(rendered, Manifests.objects())

    def test_the_admission_policy_can_be_left_out(self):
        self.assertEqual(self.render("quarantineAdmissionPolicy.enabled=false"), Manifests.objects())

    def test_the_crd_is_rendered_from_crds_only_when_asked(self):
        args = [*HELM_TEMPLATE, "--set", f"config.collector.cluster={CLUSTER}", "--include-crds"]
        rendered = documents(self.helm(*args).stdout)
        crd = documents(read(CRD))
        self.assertEqual({k: v for k, v in rendered.items() if k in crd}, crd)
        self.assertTrue(crd)
        self.assertFalse(set(crd) & set(self.render()), "not without --include-crds")

    def test_a_missing_cluster_name_is_refused(self):
        result = self.helm(*HELM_TEMPLATE, check=False)
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("config.collector.cluster is required", result.stderr)

    def test_an_s3_sink_replaces_the_local_default_whole(self):
        objects = self.render(
            "config.collector.sink.kind=s3",
            "config.collector.sink.region=eu-west-1",
            "config.collector.sink.bucket=acme-flow-logs",
        )
        config = yaml.safe_load(objects[("ConfigMap", "tollgate")]["data"]["config.yaml"])
        self.assertEqual(
            config["collector"]["sink"], {"kind": "s3", "region": "eu-west-1", "bucket": "acme-flow-logs"}
        )

    def test_irsa_and_uninstall(self):
        objects = self.render(
            "serviceAccount.roleArn=arn:aws:iam::123456789012:role/tollgate", "uninstall=true"
        )
        account = objects[("ServiceAccount", "tollgate")]
        self.assertEqual(
            account["metadata"]["annotations"],
            {"eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/tollgate"},
        )
        container = objects[("DaemonSet", "tollgate")]["spec"]["template"]["spec"]["containers"][0]
        self.assertEqual(container["args"][-1], "--uninstall")

    def test_node_ingress_is_allow_or_policy(self):
        objects = self.render("config.agent.node_ingress=policy")
        config = yaml.safe_load(objects[("ConfigMap", "tollgate")]["data"]["config.yaml"])
        self.assertEqual(config["agent"]["node_ingress"], "policy")
        result = self.helm(
            *HELM_TEMPLATE,
            "--set",
            f"config.collector.cluster={CLUSTER}",
            "--set",
            "config.agent.node_ingress=deny",
            check=False,
        )
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("config.agent.node_ingress", result.stderr)

    def test_paths_outside_the_mounts_are_refused(self):
        for setting in ["config.collector.spool_dir=/tmp/spool", "config.agent.bpffs=/var/run/bpf"]:
            result = self.helm(
                *HELM_TEMPLATE, "--set", f"config.collector.cluster={CLUSTER}", "--set", setting, check=False
            )
            self.assertNotEqual(result.returncode, 0, setting)


if __name__ == "__main__":
    unittest.main()
