"""The quarantine admission policy (deploy/incident/quarantine-admission.yaml), evaluated.

    python3 -m unittest deploy/test_admission.py     (from the repository root; PyYAML, cel-expr-python)

Every expression is read from the shipped YAML, never copied, and run by a real CEL
implementation: cel-expr-python, the CEL project's Python binding of cel-cpp (the API server runs
cel-go; both are held to the cel-spec conformance tests). What the API server adds around CEL is
played by this test's own small stand-ins:

- `request`: an AdmissionRequest as the API server hands it to CEL, a JSON map without the
  fields Go's `omitempty` drops (`namespace` of a cluster-scoped object, `name`, `subResource`),
  so an expression that reads one unguarded fails here as it would there.
- `object`, `oldObject`: the objects as maps; `object` is null on DELETE, `oldObject` on CREATE.
  `metadata.labels` is absent when there are none.
- `authorizer`: Kubernetes' authorizer library (`group().resource().namespace().check()
  .allowed()`), type-checked against declarations of its real signatures, and at run time a chain
  of maps whose `check` decides by RBAC: the rules of the ClusterRole bound to the caller (the
  shipped deploy/incident/quarantine-role.yaml for the incident responders), cluster-wide for a
  ClusterRoleBinding, in one namespace for a RoleBinding. Every check is recorded.
- `variables`: evaluated in order before the validations, all of them, where the API server
  evaluates them lazily; stricter, since each must then evaluate without error on every request.
- the admission itself: matchConstraints decide whether the policy applies; a validation that is
  false refuses with its messageExpression, one that errors refuses too (failurePolicy Fail).
  These tests require that no expression errors on any request.

The same policy is checked to be in the Helm chart (templates/quarantine-admission.yaml); with
helm, test_deploy.py renders it.
"""

import os
import re
import unittest

import yaml
from cel_expr_python import cel

DEPLOY = os.path.dirname(os.path.abspath(__file__))
INCIDENT = os.path.join(DEPLOY, "incident")
POLICY_FILE = os.path.join(INCIDENT, "quarantine-admission.yaml")
ROLE_FILE = os.path.join(INCIDENT, "quarantine-role.yaml")
CHART = os.path.join(DEPLOY, "helm", "tollgate")
CHART_TEMPLATE = os.path.join(CHART, "templates", "quarantine-admission.yaml")

LABEL = "tollgate.io/quarantine"
CNP_GROUP = "policy.networking.k8s.io"
# The right the policy asks for: (verb, group, resource).
RIGHT = ("create", "tollgate.io", "quarantines")


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def shipped():
    """The policy and its binding, from the plain manifest."""
    docs = [d for d in yaml.safe_load_all(read(POLICY_FILE)) if d]
    kinds = {d["kind"]: d for d in docs}
    assert len(docs) == len(kinds) == 2, [d["kind"] for d in docs]
    return kinds["ValidatingAdmissionPolicy"], kinds["ValidatingAdmissionPolicyBinding"]


def skeleton_all(template):
    """The static YAML documents of a template (the rule of test_deploy.skeleton): lines that are
    only a template action are dropped, any other action becomes the scalar `TEMPLATED`."""
    lines = []
    for line in template.splitlines():
        if re.fullmatch(r"\s*\{\{.*\}\}\s*", line):
            continue
        lines.append(re.sub(r"\{\{.*?\}\}", "TEMPLATED", line))
    return [d for d in yaml.safe_load_all("\n".join(lines)) if d]


# --- RBAC, as the stand-in authorizer decides it -------------------------------------------------

ROLE = yaml.safe_load(read(ROLE_FILE))
# Callers: their ClusterRole's rules and where it is bound ("*": a ClusterRoleBinding, else the
# RoleBinding's namespace).
CALLERS = {
    # The incident responders: tollgate-quarantine bound cluster-wide.
    "responder": (ROLE["rules"], "*"),
    # tollgate-quarantine bound in namespace shop only.
    "shop-responder": (ROLE["rules"], "shop"),
    # May write pods and ClusterNetworkPolicies everywhere, but has no quarantine right.
    "developer": (
        [
            {
                "apiGroups": ["", CNP_GROUP],
                "resources": ["pods", "pods/status", "clusternetworkpolicies"],
                "verbs": ["*"],
            }
        ],
        "*",
    ),
    # cluster-admin's rules: `*` grants the quarantine right too.
    "admin": ([{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}], "*"),
    # A kubelet: writes pod status, holds no quarantine right.
    "system:node:ip-10-0-1-23.eu-west-1.compute.internal": (
        [{"apiGroups": [""], "resources": ["pods/status"], "verbs": ["update", "patch"]}],
        "*",
    ),
}


def rbac_allows(user, verb, group, resource, namespace):
    rules, scope = CALLERS[user]
    if scope != "*" and scope != namespace:
        return False  # a RoleBinding grants nothing in other namespaces, nor cluster-wide
    return any(
        (group in rule["apiGroups"] or "*" in rule["apiGroups"])
        and (resource in rule["resources"] or "*" in rule["resources"])
        and (verb in rule["verbs"] or "*" in rule["verbs"])
        for rule in rule_list(rules)
    )


def rule_list(rules):
    for rule in rules:
        assert set(rule) <= {"apiGroups", "resources", "verbs"}, "no resourceNames in the stand-in"
        yield rule


# --- CEL environments ----------------------------------------------------------------------------

# The authorizer checks made by the last evaluations: (user, verb, group, resource, namespace).
CHECKS = []


def _kind(value, kind):
    if not isinstance(value, dict) or value.get("kind") != kind:
        raise ValueError(f"expected a {kind}, got {value!r}")
    return value


def _group(authorizer, group):
    return dict(_kind(authorizer, "Authorizer"), kind="GroupCheck", group=group)


def _resource(check, resource):
    return dict(_kind(check, "GroupCheck"), kind="ResourceCheck", resource=resource, namespace="")


def _namespace(check, namespace):
    return dict(_kind(check, "ResourceCheck"), namespace=namespace)


def _check(check, verb):
    check = _kind(check, "ResourceCheck")
    attributes = (check["user"], verb, check["group"], check["resource"], check["namespace"])
    CHECKS.append(attributes)
    return {"kind": "Decision", "allowed": rbac_allows(*attributes)}


def _allowed(decision):
    return _kind(decision, "Decision")["allowed"]


def environments():
    """(checker, runner): the checker declares the authorizer library with Kubernetes' own types
    (k8s.io/apiserver/pkg/cel/library/authz.go) to type-check each expression; the runner
    evaluates them with the authorizer's values as maps (cel-expr-python has no opaque values)."""
    T = cel.Type
    Authorizer = T.AbstractType("kubernetes.authorization.Authorizer")
    GroupCheck = T.AbstractType("kubernetes.authorization.GroupCheck")
    ResourceCheck = T.AbstractType("kubernetes.authorization.ResourceCheck")
    Decision = T.AbstractType("kubernetes.authorization.Decision")
    Map = T.Map(T.STRING, T.DYN)

    def declarations(types, impls):
        authorizer, group_check, resource_check, decision = types

        def member(name, result, receiver, *args):
            return cel.FunctionDecl(
                name,
                [
                    cel.Overload(
                        f"{receiver.name().rsplit('.', 1)[-1].lower()}_{name}",
                        result,
                        [receiver, *args],
                        is_member=True,
                        **({"impl": impls[name]} if impls else {}),
                    )
                ],
            )

        return [
            member("group", group_check, authorizer, T.STRING),
            member("resource", resource_check, group_check, T.STRING),
            member("namespace", resource_check, resource_check, T.STRING),
            member("check", decision, resource_check, T.STRING),
            member("allowed", T.BOOL, decision),
        ]

    # What a policy without paramKind sees (no `params`; `namespaceObject` is not declared
    # either: the policy must not need it).
    def variables(authorizer):
        return {
            "object": T.DYN,
            "oldObject": T.DYN,
            "request": T.DYN,
            "variables": T.DYN,
            "authorizer": authorizer,
        }

    checker = cel.NewEnv(
        variables=variables(Authorizer),
        functions=declarations((Authorizer, GroupCheck, ResourceCheck, Decision), None),
    )
    impls = {
        "group": _group,
        "resource": _resource,
        "namespace": _namespace,
        "check": _check,
        "allowed": _allowed,
    }
    runner = cel.NewEnv(variables=variables(Map), functions=declarations((Map,) * 4, impls))
    return checker, runner


class EvaluationError(AssertionError):
    pass


class Admission:
    """The shipped policy as the API server applies it (see the module's doc)."""

    def __init__(self, policy):
        self.policy = policy
        self.checker, self.runner = environments()
        spec = policy["spec"]
        self.variables = [(v["name"], self.compile(v["expression"])) for v in spec["variables"]]
        self.validations = [
            (self.compile(v["expression"], "bool"), self.compile(v["messageExpression"], "string"))
            for v in spec["validations"]
        ]

    def compile(self, expression, returns=None):
        # Type-checked with the authorizer's real types; what it returns is checked where known.
        checked = self.checker.compile(expression)
        kind = checked.return_type().name()
        if returns == "bool":
            assert kind == "BOOL", f"{expression!r} returns {kind}"
        elif returns == "string":
            assert kind == "STRING", f"{expression!r} returns {kind}"
        return self.runner.compile(expression)

    def matches(self, request):
        resource = request["resource"]["resource"]
        if request.get("subResource"):
            resource += "/" + request["subResource"]
        for rule in self.policy["spec"]["matchConstraints"]["resourceRules"]:
            if (
                request["resource"]["group"] in rule["apiGroups"]
                and (request["resource"]["version"] in rule["apiVersions"] or "*" in rule["apiVersions"])
                and resource in rule["resources"]
                and request["operation"] in rule["operations"]
            ):
                return True
        return False

    def evaluate(self, compiled, data):
        result = compiled.eval(data=data)
        if result.type() == cel.Type.ERROR:
            raise EvaluationError(result.plain_value())
        return result.plain_value()

    def review(self, user, request, obj=None, old=None, match=True):
        """The verdict: (allowed, [messages]). With match=False the expressions are evaluated
        even where matchConstraints would skip the request."""
        del CHECKS[:]
        if match and not self.matches(request):
            return True, []
        data = {
            "request": dict(request, userInfo={"username": user}),
            "object": obj,
            "oldObject": old,
            "authorizer": {"kind": "Authorizer", "user": user},
        }
        variables = {}
        for name, compiled in self.variables:
            variables[name] = self.evaluate(compiled, dict(data, variables=variables))
        data["variables"] = variables
        messages = []
        for expression, message in self.validations:
            verdict = self.evaluate(expression, data)
            if verdict is not True:
                assert verdict is False, verdict
                messages.append(self.evaluate(message, data))
        return not messages, messages


# --- the objects ---------------------------------------------------------------------------------


def admission_request(operation, group, version, resource, name, namespace="", subresource=""):
    """An AdmissionRequest as CEL sees it: Go's omitempty fields left out when empty."""
    gvr = {"group": group, "version": version, "resource": resource}
    request = {
        "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
        "kind": {
            "group": group,
            "version": version,
            "kind": "Pod" if resource == "pods" else "ClusterNetworkPolicy",
        },
        "resource": gvr,
        "requestResource": gvr,
        "operation": operation,
    }
    for key, value in [
        ("name", name),
        ("namespace", namespace),
        ("subResource", subresource),
        ("requestSubResource", subresource),
    ]:
        if value:
            request[key] = value
    return request


def metadata(name, labels, namespace=None):
    meta = {"name": name, "uid": f"uid-{name}", "resourceVersion": "41"}
    if namespace:
        meta["namespace"] = namespace
    if labels:
        meta["labels"] = dict(labels)
    return meta


def pod(labels=None, name="web-7c5ddbdf54-x2x7q", namespace="shop"):
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata(name, labels, namespace),
        "spec": {
            "nodeName": "ip-10-0-1-23.eu-west-1.compute.internal",
            "containers": [{"name": "web", "image": "nginx"}],
        },
        "status": {"phase": "Running", "podIP": "10.0.1.57"},
    }


def pod_request(operation, obj, subresource=""):
    meta = obj["metadata"]
    return admission_request(operation, "", "v1", "pods", meta["name"], meta["namespace"], subresource)


WEB = {"app": "web", "pod-template-hash": "7c5ddbdf54"}
QUARANTINED = dict(WEB, **{LABEL: "web-7c5ddbdf54-x2x7q"})


def quarantine_policy(namespace="shop", pod_name="web-7c5ddbdf54-x2x7q", value="web-7c5ddbdf54-x2x7q"):
    """The quarantine ClusterNetworkPolicy as `tollgate quarantine` is to create it."""
    return {
        "apiVersion": f"{CNP_GROUP}/v1alpha2",
        "kind": "ClusterNetworkPolicy",
        "metadata": metadata(
            f"tollgate-quarantine-{namespace}-{pod_name}",
            {"app.kubernetes.io/managed-by": "tollgate", LABEL: value},
        ),
        "spec": {
            "tier": "Admin",
            "priority": 0,
            "subject": {
                "pods": {
                    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
                    "podSelector": {"matchLabels": {LABEL: value}},
                }
            },
            "ingress": [{"action": "Deny", "from": [{"namespaces": {}}]}],
            "egress": [{"action": "Deny", "to": [{"networks": ["0.0.0.0/0", "::/0"]}]}],
        },
    }


def ordinary_policy(name="deny-egress-to-imds", labels=None):
    return {
        "apiVersion": f"{CNP_GROUP}/v1alpha2",
        "kind": "ClusterNetworkPolicy",
        "metadata": metadata(name, labels),
        "spec": {
            "tier": "Admin",
            "priority": 10,
            "subject": {"namespaces": {}},
            "egress": [{"action": "Deny", "to": [{"networks": ["169.254.169.254/32"]}]}],
        },
    }


def with_labels(obj, labels):
    obj = yaml.safe_load(yaml.safe_dump(obj))
    obj["metadata"].pop("labels", None)
    if labels:
        obj["metadata"]["labels"] = dict(labels)
    return obj


def cnp_request(operation, obj):
    return admission_request(
        operation, CNP_GROUP, "v1alpha2", "clusternetworkpolicies", obj["metadata"]["name"]
    )


# --- the tests -----------------------------------------------------------------------------------


class QuarantineAdmissionTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.policy, cls.binding = shipped()
        cls.admission = Admission(cls.policy)

    def review(self, user, request, obj=None, old=None, match=True):
        return self.admission.review(user, request, obj, old, match)

    def assertAllowed(self, user, request, obj=None, old=None, asked=None):
        allowed, messages = self.review(user, request, obj, old)
        self.assertTrue(allowed, f"{user}: {messages}")
        if asked is not None:
            self.assertEqual(CHECKS, asked)

    def assertRefused(self, user, request, obj=None, old=None, *words):
        allowed, messages = self.review(user, request, obj, old)
        self.assertFalse(allowed, f"{user} was let through")
        self.assertEqual(len(messages), 1, messages)
        for word in ("tollgate-quarantine role", "create on quarantines.tollgate.io", *words):
            self.assertIn(word, messages[0])
        return messages[0]

    def pod_check(self, user, namespace="shop"):
        return [(user, *RIGHT, namespace)]

    def cluster_check(self, user):
        return [(user, *RIGHT, "")]

    # Pods.

    def test_a_pod_created_without_the_label_passes_without_asking(self):
        new = pod(WEB)
        self.assertAllowed("developer", pod_request("CREATE", new), new, asked=[])
        bare = pod()
        self.assertNotIn("labels", bare["metadata"])
        self.assertAllowed("developer", pod_request("CREATE", bare), bare, asked=[])

    def test_a_pod_created_with_the_label_needs_the_role_in_its_namespace(self):
        new = pod(QUARANTINED)
        request = pod_request("CREATE", new)
        message = self.assertRefused(
            "developer", request, new, None, LABEL, "shop/web-7c5ddbdf54-x2x7q", "namespace shop"
        )
        self.assertEqual(CHECKS, self.pod_check("developer"))
        self.assertIn("set, change or remove", message)
        self.assertAllowed("responder", request, new, asked=self.pod_check("responder"))
        self.assertAllowed("shop-responder", request, new, asked=self.pod_check("shop-responder"))
        self.assertAllowed("admin", request, new)
        elsewhere = pod(QUARANTINED, namespace="payments")
        self.assertRefused("shop-responder", pod_request("CREATE", elsewhere), elsewhere, None, "payments/")
        self.assertEqual(CHECKS, self.pod_check("shop-responder", "payments"))

    def test_adding_changing_or_removing_the_label_needs_the_role(self):
        other = dict(QUARANTINED, **{LABEL: "someone-else"})
        for before, after in [
            (WEB, QUARANTINED),
            (QUARANTINED, other),
            (QUARANTINED, WEB),
            (QUARANTINED, None),
        ]:
            with self.subTest(before=before, after=after):
                old, new = pod(before), pod(after)
                request = pod_request("UPDATE", new)
                self.assertRefused("developer", request, new, old, LABEL)
                self.assertRefused("system:node:ip-10-0-1-23.eu-west-1.compute.internal", request, new, old)
                self.assertAllowed("responder", request, new, old, asked=self.pod_check("responder"))
                self.assertAllowed("shop-responder", request, new, old)
                # Through the status subresource too.
                status = pod_request("UPDATE", new, subresource="status")
                self.assertRefused(
                    "system:node:ip-10-0-1-23.eu-west-1.compute.internal", status, new, old, LABEL
                )
                self.assertAllowed("responder", status, new, old)

    def test_any_other_pod_update_passes_without_asking(self):
        for labels in [None, WEB, QUARANTINED]:
            with self.subTest(labels=labels):
                old = pod(labels)
                # Another label added, the label itself kept as it was.
                new = with_labels(old, dict(labels or {}, team="checkout"))
                self.assertAllowed("developer", pod_request("UPDATE", new), new, old, asked=[])
                # The kubelet's status update.
                status = yaml.safe_load(yaml.safe_dump(old))
                status["status"]["phase"] = "Failed"
                kubelet = "system:node:ip-10-0-1-23.eu-west-1.compute.internal"
                request = pod_request("UPDATE", status, subresource="status")
                self.assertAllowed(kubelet, request, status, old, asked=[])
        # Other labels removed from a quarantined pod, the quarantine label kept.
        old, new = pod(QUARANTINED), pod({LABEL: QUARANTINED[LABEL]})
        self.assertAllowed("developer", pod_request("UPDATE", new), new, old, asked=[])

    def test_deleting_a_pod_is_not_the_policys_matter_and_does_not_error(self):
        for labels in [None, QUARANTINED]:
            with self.subTest(labels=labels):
                old = pod(labels)
                request = pod_request("DELETE", old)
                self.assertFalse(self.admission.matches(request))
                self.assertAllowed("developer", request, None, old, asked=[])
                # Evaluated anyway, with object null: no error, and the label's removal is what
                # the expressions see.
                allowed, _ = self.review("developer", request, None, old, match=False)
                self.assertEqual(allowed, labels is None)
                self.assertTrue(self.review("responder", request, None, old, match=False)[0])

    # ClusterNetworkPolicies.

    def test_a_quarantine_policy_is_created_changed_and_deleted_by_the_role_bound_cluster_wide(self):
        policy = quarantine_policy()
        changed = yaml.safe_load(yaml.safe_dump(policy))
        changed["spec"]["egress"] = [{"action": "Accept", "to": [{"networks": ["0.0.0.0/0"]}]}]
        for operation, new, old, verb in [
            ("CREATE", policy, None, "create"),
            ("UPDATE", changed, policy, "change"),
            ("DELETE", None, policy, "delete"),
        ]:
            with self.subTest(operation=operation):
                request = cnp_request(operation, new or old)
                message = self.assertRefused(
                    "developer", request, new, old, policy["metadata"]["name"], "cluster-wide"
                )
                self.assertIn(f"may {verb} the quarantine ClusterNetworkPolicy", message)
                self.assertEqual(CHECKS, self.cluster_check("developer"))
                # A RoleBinding does not reach a cluster-scoped object.
                self.assertRefused("shop-responder", request, new, old)
                self.assertEqual(CHECKS, self.cluster_check("shop-responder"))
                self.assertAllowed("responder", request, new, old, asked=self.cluster_check("responder"))
                self.assertAllowed("admin", request, new, old)

    def test_either_mark_makes_a_quarantine_policy(self):
        name = quarantine_policy()["metadata"]["name"]
        for labels in [
            {"app.kubernetes.io/managed-by": "tollgate"},
            {LABEL: "x"},
            {"app.kubernetes.io/managed-by": "someone-else", LABEL: "x"},
        ]:
            with self.subTest(labels=labels):
                policy = with_labels(quarantine_policy(), labels)
                for operation, new, old in [
                    ("CREATE", policy, None),
                    ("UPDATE", policy, policy),
                    ("DELETE", None, policy),
                ]:
                    self.assertRefused("developer", cnp_request(operation, policy), new, old, name)
        # The label alone, whatever the name.
        labelled = ordinary_policy(labels={LABEL: "x"})
        for operation, new, old in [
            ("CREATE", labelled, None),
            ("UPDATE", labelled, labelled),
            ("DELETE", None, labelled),
        ]:
            self.assertRefused("developer", cnp_request(operation, labelled), new, old, "deny-egress-to-imds")

    def test_an_ordinary_policy_passes_without_asking(self):
        policy = ordinary_policy()
        tollgate_managed = ordinary_policy("tollgate-baseline", {"app.kubernetes.io/managed-by": "tollgate"})
        for p in [policy, tollgate_managed]:
            changed = with_labels(p, dict(p["metadata"].get("labels", {}), team="platform"))
            for operation, new, old in [("CREATE", p, None), ("UPDATE", changed, p), ("DELETE", None, p)]:
                with self.subTest(name=p["metadata"]["name"], operation=operation):
                    self.assertAllowed("developer", cnp_request(operation, p), new, old, asked=[])

    def test_a_policy_cannot_be_made_to_look_like_a_quarantine_policy(self):
        # Gaining the label.
        old = ordinary_policy()
        new = with_labels(old, {LABEL: "web-7c5ddbdf54-x2x7q"})
        self.assertRefused(
            "developer", cnp_request("UPDATE", new), new, old, "may change", "deny-egress-to-imds"
        )
        self.assertAllowed("responder", cnp_request("UPDATE", new), new, old)
        # Created under a quarantine name, without either label (taking the name tollgate
        # quarantine would create).
        squatter = with_labels(quarantine_policy(), None)
        self.assertRefused("developer", cnp_request("CREATE", squatter), squatter, None, "may create")
        self.assertAllowed("responder", cnp_request("CREATE", squatter), squatter, None)
        # A policy of that name, unmarked, gaining managed-by: tollgate.
        marked = with_labels(squatter, {"app.kubernetes.io/managed-by": "tollgate"})
        self.assertRefused("developer", cnp_request("UPDATE", marked), marked, squatter)
        # A quarantine policy losing its marks is still a change to a quarantine policy.
        policy = quarantine_policy()
        stripped = with_labels(policy, None)
        self.assertRefused("developer", cnp_request("UPDATE", stripped), stripped, policy)

    def test_quarantine_and_release_as_the_command_does_them(self):
        """Policy created, pod labelled; then label removed, policy deleted: the responder passes
        every step, the developer none."""
        policy, before, after = quarantine_policy(), pod(WEB), pod(QUARANTINED)
        steps = [
            (cnp_request("CREATE", policy), policy, None),
            (pod_request("UPDATE", after), after, before),
            (pod_request("UPDATE", before), before, after),
            (cnp_request("DELETE", policy), None, policy),
        ]
        for request, new, old in steps:
            self.assertAllowed("responder", request, new, old)
            self.assertFalse(self.review("developer", request, new, old)[0])

    def test_no_expression_errors_on_any_request(self):
        """The API server would refuse on an error (failurePolicy Fail); every shape and caller
        above and more evaluates cleanly, matched or not."""
        pods = [pod(), pod(WEB), pod(QUARANTINED), pod(dict(QUARANTINED, **{LABEL: ""}))]
        policies = [quarantine_policy(), ordinary_policy(), with_labels(quarantine_policy(), None)]
        cases = []
        for p in pods:
            cases += [(pod_request("CREATE", p), p, None), (pod_request("DELETE", p), None, p)]
            for q in pods:
                cases += [(pod_request("UPDATE", p), p, q), (pod_request("UPDATE", p, "status"), p, q)]
        for p in policies:
            cases += [(cnp_request("CREATE", p), p, None), (cnp_request("DELETE", p), None, p)]
            for q in policies:
                cases.append((cnp_request("UPDATE", p), p, q))
        for user in CALLERS:
            for request, new, old in cases:
                self.review(user, request, new, old, match=False)  # raises EvaluationError on an error

    # The shape.

    def test_the_match_covers_exactly_what_the_expressions_decide(self):
        rules = self.policy["spec"]["matchConstraints"]["resourceRules"]
        self.assertEqual(
            [(r["apiGroups"], r["apiVersions"], r["resources"], r["operations"]) for r in rules],
            [
                ([""], ["v1"], ["pods"], ["CREATE", "UPDATE"]),
                ([""], ["v1"], ["pods/status"], ["UPDATE"]),
                ([CNP_GROUP], ["*"], ["clusternetworkpolicies"], ["CREATE", "UPDATE", "DELETE"]),
            ],
        )
        for rule in rules:
            self.assertEqual(
                set(rule), {"apiGroups", "apiVersions", "resources", "operations"}, "no scope, no names"
            )
        self.assertNotIn("namespaceSelector", self.policy["spec"]["matchConstraints"])
        self.assertNotIn("objectSelector", self.policy["spec"]["matchConstraints"])
        self.assertNotIn("matchConditions", self.policy["spec"])
        # Requests it must not see: pod deletion, other subresources, other kinds.
        for request in [
            pod_request("DELETE", pod(QUARANTINED)),
            pod_request("UPDATE", pod(QUARANTINED), subresource="ephemeralcontainers"),
            pod_request("CREATE", pod(QUARANTINED), subresource="eviction"),
            admission_request(
                "UPDATE", CNP_GROUP, "v1alpha2", "clusternetworkpolicies", "x", subresource="status"
            ),
            admission_request("CREATE", "networking.k8s.io", "v1", "networkpolicies", "x", "shop"),
        ]:
            self.assertFalse(self.admission.matches(request), request)

    def test_refusal_is_the_policys_only_action(self):
        spec = self.policy["spec"]
        self.assertEqual(spec["failurePolicy"], "Fail")
        self.assertNotIn("paramKind", spec)
        self.assertNotIn("auditAnnotations", spec)
        self.assertEqual(len(spec["validations"]), 2)
        for validation in spec["validations"]:
            self.assertEqual(validation["reason"], "Forbidden")
            self.assertIn(LABEL, validation["message"])
            self.assertIn("tollgate-quarantine role", validation["message"])
            self.assertIn("quarantines.tollgate.io", validation["message"])
        self.assertIn("ClusterNetworkPolicy", spec["validations"][1]["message"])

    def test_the_binding_applies_the_policy_everywhere_and_denies(self):
        self.assertEqual(
            self.binding["spec"],
            {"policyName": self.policy["metadata"]["name"], "validationActions": ["Deny"]},
        )
        self.assertEqual(self.binding["metadata"]["name"], self.policy["metadata"]["name"])
        for obj in (self.policy, self.binding):
            self.assertEqual(obj["apiVersion"], "admissionregistration.k8s.io/v1")
            self.assertNotIn("namespace", obj["metadata"], "cluster-scoped")

    def test_the_role_grants_the_right_the_policy_asks_for(self):
        rules = [r for r in ROLE["rules"] if "tollgate.io" in r["apiGroups"]]
        self.assertEqual(
            rules, [{"apiGroups": ["tollgate.io"], "resources": ["quarantines"], "verbs": ["create"]}]
        )
        for validation in self.policy["spec"]["validations"]:
            expression = re.sub(r"\s+", "", validation["expression"])
            self.assertIn("authorizer.group('tollgate.io').resource('quarantines')", expression)
            self.assertIn(".check('create').allowed()", expression)

    def test_the_chart_installs_the_same_policy(self):
        template = read(CHART_TEMPLATE)
        self.assertTrue(template.startswith("{{- if .Values.quarantineAdmissionPolicy.enabled }}\n"))
        self.assertTrue(template.endswith("{{- end }}\n"))
        values = yaml.safe_load(read(os.path.join(CHART, "values.yaml")))
        self.assertIs(values["quarantineAdmissionPolicy"]["enabled"], True, "on by default")
        policy, binding = skeleton_all(template)
        self.assertEqual(policy["kind"], "ValidatingAdmissionPolicy")
        self.assertEqual(policy["spec"], self.policy["spec"])
        self.assertEqual(binding["kind"], "ValidatingAdmissionPolicyBinding")
        expected = dict(self.binding["spec"], policyName="TEMPLATED-quarantine")
        self.assertEqual(binding["spec"], expected)
        for obj in (policy, binding):
            self.assertEqual(obj["metadata"]["name"], "TEMPLATED-quarantine")
            self.assertEqual(obj["metadata"]["labels"], {"app.kubernetes.io/component": "incident-response"})
        # One name for both, the same expression as the other objects' names.
        self.assertEqual(template.count('{{ include "tollgate.fullname" . }}-quarantine'), 3)
        # The chart's objects of the default release name are the plain manifest's.
        self.assertEqual(self.policy["metadata"]["name"], "tollgate-quarantine")


if __name__ == "__main__":
    unittest.main()
