//! ClusterNetworkPolicies (SIG Network's `policy.networking.k8s.io/v1alpha2` and AWS's
//! `networking.k8s.aws/v1alpha1`): each object's `spec` is read field by field into a
//! [`Policy`] with a [`ClusterScope`], or left out with every problem reported.
//!
//! What is read:
//! - `tier` (`Admin` or `Baseline`), `priority` (0 to 1000) and `subject` (exactly one of
//!   `namespaces`, or `pods` with its `namespaceSelector` and `podSelector`). A problem here
//!   leaves the policy out: the pods it applies to, or where, are not known.
//! - `ingress` / `egress`: rules in order, each with its `action` (`Accept`, `Deny`, `Pass`),
//!   its peers (`from`: `namespaces`, `pods`; `to`: also `networks` and `nodes`, the addresses
//!   of the nodes whose labels match) and its ports
//!   (upstream's `protocols`: `tcp`/`udp`/`sctp` with a `destinationPort` number or range, or
//!   `destinationNamedPort`; AWS's `ports`: `portNumber`, `portRange` or `namedPort`). No
//!   ports: every protocol and port. A named port resolves against the destination pod's
//!   container ports of that name, whatever their protocol.
//! - A rule this compiler cannot read in full fails closed, as the API prescribes for a peer
//!   of an unknown type: an Accept rule matches nothing, a Deny or Pass rule (or one whose
//!   action is unknown) denies everything. So do peers that are not supported yet
//!   (`domainNames`). Each such rule is reported, and the rest of the policy still applies.
//!
//! Policies of one tier apply in priority order. The API leaves the order of equal priorities
//! to the implementation: here the quarantine policies come first (labelled managed by
//! tollgate and with the quarantine label, as `tollgate quarantine` creates them and only the
//! quarantine role may, see deploy/incident/), then by API group and name, a stable order.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use serde_json::Value;
use tollgate_schemas::{ANY_PROTOCOL, port_action, rule_tier};

use super::Problems;
use super::cidr::parse_cidr;
use super::cluster::{QUARANTINE_LABEL, managed_by_tollgate};
use super::incremental::ObjectKind;
use super::peers::{Block, Peer};
use super::policy::{ClusterScope, Policy, Rule, Subject, version};
use super::ports::{PortSpec, protocol_number, valid_port_name};
use super::selector::Selector;
use crate::crd::{AWS_CLUSTER_NETWORK_POLICY_GROUP, CLUSTER_NETWORK_POLICY_GROUP};

/// Which API a ClusterNetworkPolicy comes from: they differ in how ports are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Api {
    /// `policy.networking.k8s.io/v1alpha2`: `protocols`.
    Upstream,
    /// `networking.k8s.aws/v1alpha1`: `ports`.
    Aws,
}

impl Api {
    fn group(self) -> &'static str {
        match self {
            Api::Upstream => CLUSTER_NETWORK_POLICY_GROUP,
            Api::Aws => AWS_CLUSTER_NETWORK_POLICY_GROUP,
        }
    }

    /// The field of a rule that lists its ports.
    fn ports_field(self) -> &'static str {
        match self {
            Api::Upstream => "protocols",
            Api::Aws => "ports",
        }
    }
}

/// How a ClusterNetworkPolicy of `kind` named `name` is named in errors.
pub(crate) fn label(kind: ObjectKind, name: &str) -> String {
    match kind {
        ObjectKind::AwsClusterNetworkPolicy => {
            format!("ClusterNetworkPolicy ({AWS_CLUSTER_NETWORK_POLICY_GROUP}) {name}")
        }
        _ => format!("ClusterNetworkPolicy {name}"),
    }
}

/// [`label`] of a policy kept under the key (`group`, `name`).
pub(crate) fn label_in(group: &str, name: &str) -> String {
    match group {
        AWS_CLUSTER_NETWORK_POLICY_GROUP => label(ObjectKind::AwsClusterNetworkPolicy, name),
        _ => label(ObjectKind::ClusterNetworkPolicy, name),
    }
}

/// Checks one named ClusterNetworkPolicy of `api`: the policy when its tier, priority and
/// subject are valid (its rules then fail closed where they cannot be read), and its
/// problems either way.
pub(crate) fn check(
    meta: &ObjectMeta,
    spec: &Value,
    api: Api,
    problems: &mut Problems,
) -> Option<Policy> {
    let name = meta.name.clone().filter(|n| !n.is_empty());
    if name.is_none() {
        problems.push(
            "metadata.name",
            "missing: a ClusterNetworkPolicy needs a name",
        );
    }
    let Some(spec) = spec.as_object() else {
        problems.push("spec", "missing: a ClusterNetworkPolicy needs a spec");
        return None;
    };
    for key in spec.keys() {
        if !["tier", "priority", "subject", "ingress", "egress"].contains(&key.as_str()) {
            problems.push(
                format!("spec.{key}"),
                "unknown field (the policy applies without it)",
            );
        }
    }
    let tier = match spec.get("tier").and_then(Value::as_str) {
        Some("Admin") => Some(rule_tier::ADMIN),
        Some("Baseline") => Some(rule_tier::BASELINE),
        Some(other) => {
            problems.push(
                "spec.tier",
                format!("unknown tier {other:?} (Admin or Baseline)"),
            );
            None
        }
        None => {
            problems.push("spec.tier", "missing: Admin or Baseline");
            None
        }
    };
    let priority = match spec.get("priority").map(|p| (p, p.as_u64())) {
        Some((_, Some(priority))) if priority <= 1000 => Some(priority as u16),
        Some((given, _)) => {
            problems.push(
                "spec.priority",
                format!("{given} is not an integer from 0 to 1000"),
            );
            None
        }
        None => {
            problems.push("spec.priority", "missing: an integer from 0 to 1000");
            None
        }
    };
    let subject = subject(spec.get("subject"), problems);
    let ingress = rules(spec.get("ingress"), "spec.ingress", "from", api, problems);
    let egress = rules(spec.get("egress"), "spec.egress", "to", api, problems);
    Some(Policy {
        namespace: api.group().to_owned(),
        name: name?,
        selector: Selector::default(),
        audit: false,
        quarantine: is_quarantine(meta),
        ingress,
        egress,
        cluster: Some(ClusterScope {
            tier: tier?,
            priority: priority?,
            subject: subject?,
        }),
        version: version(meta, spec),
    })
}

/// `spec.subject`: exactly one of `namespaces` and `pods`.
fn subject(subject: Option<&Value>, problems: &mut Problems) -> Option<Subject> {
    let Some(subject) = subject.and_then(Value::as_object) else {
        problems.push("spec.subject", "missing: namespaces or pods");
        return None;
    };
    let unknown: Vec<&String> = subject
        .keys()
        .filter(|key| !["namespaces", "pods"].contains(&key.as_str()))
        .collect();
    if !unknown.is_empty() {
        problems.push(
            "spec.subject",
            format!(
                "unknown field {:?}: the pods the policy applies to are not known",
                unknown[0]
            ),
        );
        return None;
    }
    match (subject.get("namespaces"), subject.get("pods")) {
        (Some(namespaces), None) => Some(Subject {
            namespaces: selector(namespaces, "spec.subject.namespaces", problems)?,
            pods: None,
        }),
        (None, Some(pods)) => {
            let (namespaces, pods) = namespaced_pod(pods, "spec.subject.pods", problems)?;
            Some(Subject {
                namespaces,
                pods: Some(pods),
            })
        }
        _ => {
            problems.push("spec.subject", "needs exactly one of namespaces and pods");
            None
        }
    }
}

/// A label selector at `path`.
fn selector(value: &Value, path: &str, problems: &mut Problems) -> Option<Selector> {
    match serde_json::from_value::<LabelSelector>(value.clone()) {
        Ok(selector) => Selector::parse(&selector, path, problems),
        Err(e) => {
            problems.push(path, format!("not a label selector: {e}"));
            None
        }
    }
}

/// A `pods` peer or subject at `path`: (namespaceSelector, podSelector). An absent
/// namespaceSelector selects every namespace; the podSelector is required.
fn namespaced_pod(
    value: &Value,
    path: &str,
    problems: &mut Problems,
) -> Option<(Selector, Selector)> {
    let Some(object) = value.as_object() else {
        problems.push(
            path,
            "must be an object with namespaceSelector and podSelector",
        );
        return None;
    };
    if let Some(key) = object
        .keys()
        .find(|key| !["namespaceSelector", "podSelector"].contains(&key.as_str()))
    {
        problems.push(format!("{path}.{key}"), "unknown field");
        return None;
    }
    let namespaces = match object.get("namespaceSelector") {
        Some(namespaces) => selector(namespaces, &format!("{path}.namespaceSelector"), problems),
        None => Some(Selector::default()),
    };
    let pods = match object.get("podSelector") {
        Some(pods) => selector(pods, &format!("{path}.podSelector"), problems),
        None => {
            problems.push(format!("{path}.podSelector"), "missing");
            None
        }
    };
    Some((namespaces?, pods?))
}

/// `spec.ingress` or `spec.egress` (at `path`, peers under `peers_field`): `None` when
/// absent or empty (the policy does not affect that direction).
fn rules(
    list: Option<&Value>,
    path: &str,
    peers_field: &str,
    api: Api,
    problems: &mut Problems,
) -> Option<Vec<Rule>> {
    let list = match list {
        None | Some(Value::Null) => return None,
        Some(Value::Array(list)) => list,
        Some(_) => {
            problems.push(path, "must be a list of rules (the direction fails closed)");
            return Some(vec![deny_all()]);
        }
    };
    if list.is_empty() {
        return None;
    }
    Some(
        list.iter()
            .enumerate()
            .map(|(index, rule)| {
                let at = format!("{path}[{index}]");
                check_rule(rule, &at, peers_field, api, problems)
            })
            .collect(),
    )
}

/// A rule that denies everything: what a Deny or Pass rule that cannot be read becomes.
fn deny_all() -> Rule {
    Rule {
        peers: None,
        ports: vec![PortSpec::Any],
        action: port_action::DENY,
    }
}

/// One rule at `at`; a rule that cannot be read in full fails closed (see the module doc).
fn check_rule(
    rule: &Value,
    at: &str,
    peers_field: &str,
    api: Api,
    problems: &mut Problems,
) -> Rule {
    let before = problems.len();
    let action = match rule.get("action").and_then(Value::as_str) {
        Some("Accept") => Some(port_action::ALLOW),
        Some("Deny") => Some(port_action::DENY),
        Some("Pass") => Some(port_action::PASS),
        Some(other) => {
            problems.push(
                format!("{at}.action"),
                format!(
                    "unknown action {other:?} (Accept, Deny or Pass): the rule denies everything"
                ),
            );
            None
        }
        None => {
            problems.push(
                format!("{at}.action"),
                "missing (Accept, Deny or Pass): the rule denies everything",
            );
            None
        }
    };
    let Some(action) = action else {
        return deny_all();
    };
    let mut known = vec!["name", "action", peers_field];
    known.push(api.ports_field());
    if let Some(object) = rule.as_object() {
        for key in object.keys().filter(|key| !known.contains(&key.as_str())) {
            problems.push(format!("{at}.{key}"), "unknown field");
        }
    }
    let peers_at = format!("{at}.{peers_field}");
    let peers = match rule.get(peers_field).and_then(Value::as_array) {
        Some(peers) if !peers.is_empty() => {
            let mut checked = Vec::new();
            for (index, peer) in peers.iter().enumerate() {
                check_peer(
                    peer,
                    &format!("{peers_at}[{index}]"),
                    peers_field,
                    &mut checked,
                    problems,
                );
            }
            checked
        }
        _ => {
            problems.push(&peers_at, "missing: a rule needs at least one peer");
            Vec::new()
        }
    };
    let ports_at = format!("{at}.{}", api.ports_field());
    let ports = match rule.get(api.ports_field()) {
        None | Some(Value::Null) => vec![PortSpec::Any],
        Some(Value::Array(ports)) if !ports.is_empty() => ports
            .iter()
            .enumerate()
            .filter_map(|(index, port)| {
                let at = format!("{ports_at}[{index}]");
                match api {
                    Api::Upstream => protocol(port, &at, problems),
                    Api::Aws => aws_port(port, &at, problems),
                }
            })
            .collect(),
        Some(_) => {
            problems.push(&ports_at, "must be a non-empty list");
            Vec::new()
        }
    };
    if problems.len() == before {
        return Rule {
            peers: Some(peers),
            ports,
            action,
        };
    }
    // Fail closed, as the API says for a peer it cannot read.
    match action {
        port_action::ALLOW => {
            problems.push(
                at,
                "cannot be read in full: the Accept rule matches nothing",
            );
            Rule {
                peers: Some(Vec::new()),
                ports: vec![PortSpec::Any],
                action,
            }
        }
        _ => {
            problems.push(at, "cannot be read in full: the rule denies everything");
            deny_all()
        }
    }
}

/// One peer at `at`, added to `peers`; a problem is reported.
fn check_peer(
    peer: &Value,
    at: &str,
    peers_field: &str,
    peers: &mut Vec<Peer>,
    problems: &mut Problems,
) {
    let Some(object) = peer.as_object().filter(|o| o.len() == 1) else {
        problems.push(
            at,
            "needs exactly one peer type (no type this compiler knows was given)",
        );
        return;
    };
    let (key, value) = object.iter().next().expect("one field");
    let field = format!("{at}.{key}");
    match (key.as_str(), peers_field) {
        ("namespaces", _) => {
            if let Some(namespaces) = selector(value, &field, problems) {
                peers.push(Peer::Pods {
                    namespaces: Some(namespaces),
                    pods: None,
                });
            }
        }
        ("pods", _) => {
            if let Some((namespaces, pods)) = namespaced_pod(value, &field, problems) {
                peers.push(Peer::Pods {
                    namespaces: Some(namespaces),
                    pods: Some(pods),
                });
            }
        }
        ("networks", "to") => {
            let Some(networks) = value.as_array().filter(|n| !n.is_empty()) else {
                problems.push(field, "must be a non-empty list of CIDRs");
                return;
            };
            for (index, network) in networks.iter().enumerate() {
                let at = format!("{field}[{index}]");
                match network.as_str().map(parse_cidr) {
                    Some(Ok(cidr)) => peers.push(Peer::Block(Block {
                        cidr,
                        excepts: Vec::new(),
                    })),
                    Some(Err(message)) => problems.push(at, message),
                    None => problems.push(at, "must be a CIDR string"),
                }
            }
        }
        ("nodes", "to") => {
            if let Some(nodes) = selector(value, &field, problems) {
                peers.push(Peer::Nodes(nodes));
            }
        }
        ("domainNames", "to") => problems.push(field, "not supported yet"),
        _ => problems.push(field, format!("unknown peer type for {peers_field:?}")),
    }
}

/// The one field of `entry` at `at` (a union: exactly one of `fields`), or a problem.
fn one_field<'v>(
    entry: &'v Value,
    at: &str,
    fields: &str,
    problems: &mut Problems,
) -> Option<(&'v String, &'v Value)> {
    let field = entry
        .as_object()
        .filter(|o| o.len() == 1)
        .and_then(|o| o.iter().next());
    if field.is_none() {
        problems.push(at, format!("needs exactly one of {fields}"));
    }
    field
}

/// One entry of upstream's `protocols` at `at`.
fn protocol(entry: &Value, at: &str, problems: &mut Problems) -> Option<PortSpec> {
    let fields = "tcp, udp, sctp and destinationNamedPort";
    let (key, value) = one_field(entry, at, fields, problems)?;
    let field = format!("{at}.{key}");
    let protocol = match key.as_str() {
        "tcp" => "TCP",
        "udp" => "UDP",
        "sctp" => "SCTP",
        "destinationNamedPort" => return named(value, &field, problems),
        _ => {
            problems.push(field, "unknown protocol field");
            return None;
        }
    };
    let protocol = protocol_number(Some(protocol)).expect("a known protocol");
    let port = value.get("destinationPort").and_then(Value::as_object);
    let (port, port_at) = match port {
        Some(port) if port.len() == 1 => (port, format!("{field}.destinationPort")),
        _ => {
            problems.push(
                format!("{field}.destinationPort"),
                "needs exactly one of number and range",
            );
            return None;
        }
    };
    if let Some(number) = port.get("number") {
        let port = port_number(number, &format!("{port_at}.number"), problems)?;
        return Some(PortSpec::Range {
            protocol,
            lo: port,
            hi: port,
        });
    }
    match port.get("range") {
        Some(range) => port_range(
            protocol,
            range.get("start"),
            range.get("end"),
            &format!("{port_at}.range"),
            problems,
        ),
        None => {
            problems.push(port_at, "needs exactly one of number and range");
            None
        }
    }
}

/// One entry of AWS's `ports` at `at`.
fn aws_port(entry: &Value, at: &str, problems: &mut Problems) -> Option<PortSpec> {
    let fields = "portNumber, portRange and namedPort";
    let (key, value) = one_field(entry, at, fields, problems)?;
    let field = format!("{at}.{key}");
    let protocol = |problems: &mut Problems| {
        let given = value.get("protocol").and_then(Value::as_str);
        protocol_number(given)
            .map_err(|message| problems.push(format!("{field}.protocol"), message))
            .ok()
    };
    match key.as_str() {
        "namedPort" => named(value, &field, problems),
        "portNumber" => {
            let protocol = protocol(problems)?;
            let port = port_number(
                value.get("port").unwrap_or(&Value::Null),
                &format!("{field}.port"),
                problems,
            )?;
            Some(PortSpec::Range {
                protocol,
                lo: port,
                hi: port,
            })
        }
        "portRange" => {
            let protocol = protocol(problems)?;
            port_range(
                protocol,
                value.get("start"),
                value.get("end"),
                &field,
                problems,
            )
        }
        _ => {
            problems.push(field, "unknown port field");
            None
        }
    }
}

/// A named port: the destination's container ports of that name, whatever their protocol.
fn named(value: &Value, at: &str, problems: &mut Problems) -> Option<PortSpec> {
    match value.as_str() {
        Some(name) if valid_port_name(name) => Some(PortSpec::Named {
            protocol: ANY_PROTOCOL,
            name: name.to_owned(),
        }),
        _ => {
            problems.push(at, format!("{value} is not a valid port name"));
            None
        }
    }
}

/// A port number 1 to 65535 at `at`.
fn port_number(value: &Value, at: &str, problems: &mut Problems) -> Option<u16> {
    match value.as_u64().and_then(|n| u16::try_from(n).ok()) {
        Some(port) if port != 0 => Some(port),
        _ => {
            problems.push(at, format!("{value} is not a port from 1 to 65535"));
            None
        }
    }
}

/// A port range `start`..=`end` at `at`.
fn port_range(
    protocol: u8,
    start: Option<&Value>,
    end: Option<&Value>,
    at: &str,
    problems: &mut Problems,
) -> Option<PortSpec> {
    let lo = port_number(
        start.unwrap_or(&Value::Null),
        &format!("{at}.start"),
        problems,
    );
    let hi = port_number(end.unwrap_or(&Value::Null), &format!("{at}.end"), problems);
    let (lo, hi) = (lo?, hi?);
    if hi < lo {
        problems.push(format!("{at}.end"), format!("{hi} is below start {lo}"));
        return None;
    }
    Some(PortSpec::Range { protocol, lo, hi })
}

/// Whether a ClusterNetworkPolicy is one `tollgate quarantine` creates: labelled managed by
/// tollgate, and with the quarantine label.
fn is_quarantine(meta: &ObjectMeta) -> bool {
    managed_by_tollgate(meta)
        && meta
            .labels
            .as_ref()
            .is_some_and(|labels| labels.contains_key(QUARANTINE_LABEL))
}

/// The order policies of one tier apply in: by priority, quarantine policies first, then by
/// key (API group, name).
pub(crate) fn order_key(policy: &Policy) -> (u8, u16, bool, &str, &str) {
    let cluster = policy.cluster.as_ref();
    (
        cluster.map_or(rule_tier::NETWORK_POLICY, |c| c.tier),
        cluster.map_or(0, |c| c.priority),
        !policy.quarantine,
        &policy.namespace,
        &policy.name,
    )
}
