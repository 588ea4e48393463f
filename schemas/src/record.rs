//! The flow record: what the collector writes to Parquet and Athena queries, one row per flow,
//! verdict and aggregation window.
//!
//! [`COLUMNS`] is the one definition of the record: the collector builds its Arrow batches in
//! this order with these types ([`crate::record::arrow_schema`] under the `user` feature), the
//! Glue table in `schemas/athena/` is generated from them ([`crate::athena`]), and the docs
//! below are the column reference users read.
//!
//! The names follow VPC Flow Logs where the meaning is the same (`srcaddr`, `packets`,
//! `action`, `log_status`, …), so queries written for VPC Flow Logs read naturally here; the
//! Kubernetes columns come after them. A record covers one flow (addresses, ports, protocol,
//! direction), one verdict and one reason within one aggregation window; `start` and `end` are
//! the first and last events it aggregates. Records with `log_status = 'SKIPDATA'` are loss
//! records: they say how many events were lost (`skipped_events`), where (`loss_source`) and
//! when (`start` to `end`); their flow columns are null. Records with `log_status =
//! 'ISOLATION'` are isolation records: a pod put under quarantine or released
//! (`tollgate quarantine`), with who, when, why and which policy (the `isolation_*` columns,
//! `policy_*`); the isolated pod is in the `src_*` columns.
//!
//! `endpoint_interface` and `endpoint_eni` say where the deciding pod's packets crossed the
//! node and whether the pod had a branch ENI, so its security groups applied too (security
//! groups for pods: an auditor reads both layers of defense from one record).
//!
//! A flow addressed to a Service's ClusterIP is decided before kube-proxy rewrites it to a
//! backend: its `dst*` columns hold the ClusterIP and port the probe saw, and the `svc_*`
//! columns name the Service that held them at the time (as VPC Flow Logs' `pkt-dstaddr` keeps
//! the address before translation). A flow from one of the deciding node's own addresses
//! (kubelet probes: reason `from-node`) names the node, not a pod: `src_workload` is
//! `Node/<node>`.
//!
//! Partitions: files live under `cluster=<c>/dt=YYYY-MM-DD/hour=HH/` (UTC, from the first
//! record's `start`). `cluster` is both a column of the files and the first partition key;
//! `dt` and `hour` exist only in the path.

/// Layout version of the record, written in the `version` column; bumped whenever a column
/// changes meaning or type. Columns are only ever appended.
pub const FLOW_RECORD_VERSION: i32 = 2;

/// The type of a column, named for Athena (Glue) and mapped to one Arrow type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    /// Athena `int`, Arrow `Int32`.
    Int,
    /// Athena `bigint`, Arrow `Int64`.
    BigInt,
    /// Athena `string`, Arrow `Utf8`.
    String,
    /// Athena `map<string,string>`, Arrow `Map<Utf8, Utf8>` (keys non-null, values nullable).
    StringMap,
    /// Athena `array<string>`, Arrow `List<Utf8>` (items non-null, named `element` as
    /// Parquet's list layout names them).
    StringList,
}

impl ColumnType {
    /// The Athena (Hive DDL) spelling of the type.
    pub const fn athena(self) -> &'static str {
        match self {
            Self::Int => "int",
            Self::BigInt => "bigint",
            Self::String => "string",
            Self::StringMap => "map<string,string>",
            Self::StringList => "array<string>",
        }
    }
}

/// One column of the flow record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Column {
    /// Column name, exactly as in Parquet and Athena.
    pub name: &'static str,
    /// Type.
    pub kind: ColumnType,
    /// Whether the column may be null (in some records; see the doc for when).
    pub nullable: bool,
    /// What the column holds: units, values, when it is null.
    pub doc: &'static str,
}

const fn column(name: &'static str, kind: ColumnType, nullable: bool, doc: &'static str) -> Column {
    Column {
        name,
        kind,
        nullable,
        doc,
    }
}

use ColumnType::{BigInt, Int, String, StringList, StringMap};

/// Every column of the flow record, in file order.
pub const COLUMNS: &[Column] = &[
    column(
        "version",
        Int,
        false,
        "Record layout version (FLOW_RECORD_VERSION): 2 for this layout (1: before the \
         policy_tier, policy_kind, policy_action, policy_version and isolating_policies \
         columns, when policy_* named only an allowing NetworkPolicy rule).",
    ),
    column(
        "srcaddr",
        String,
        true,
        "Source address of the flow's packets, as text (IPv4 dotted quad, IPv6 RFC 5952). \
         Null in SKIPDATA records.",
    ),
    column(
        "dstaddr",
        String,
        true,
        "Destination address, as text. Null in SKIPDATA records.",
    ),
    column(
        "srcport",
        Int,
        true,
        "Source port (TCP, UDP, SCTP); the echo identifier for ICMP echo; 0 for other \
         protocols. Null in SKIPDATA records.",
    ),
    column(
        "dstport",
        Int,
        true,
        "Destination port, as srcport. Null in SKIPDATA records.",
    ),
    column(
        "protocol",
        Int,
        true,
        "IANA protocol number (6 TCP, 17 UDP, 1 ICMP, 58 ICMPv6, 132 SCTP, …). Null in \
         SKIPDATA records.",
    ),
    column(
        "packets",
        BigInt,
        true,
        "Packets of the flow in the window. Denied flows: every denied packet (the probe \
         reports them deduplicated, one event per flow per 5 s). Allowed flows: every packet of \
         the connection, both directions, as connection tracking counted them (reported every \
         10 s and at shutdown; packets counted after the last report of an entry that expires \
         are missed). Null in SKIPDATA records.",
    ),
    column(
        "bytes",
        BigInt,
        true,
        "Bytes of those packets, counted from the link-layer header on. Null in SKIPDATA \
         records.",
    ),
    column(
        "start",
        BigInt,
        false,
        "Time of the first event the record aggregates, in seconds since the Unix epoch (UTC). \
         For SKIPDATA records, the start of the span in which events were lost.",
    ),
    column(
        "end",
        BigInt,
        false,
        "Time of the last event the record aggregates, in seconds since the Unix epoch (UTC). \
         For SKIPDATA records, the end of the span in which events were lost.",
    ),
    column(
        "action",
        String,
        true,
        "What happened to the packets: ACCEPT (allowed, or denied in audit mode and passed) or \
         REJECT (dropped). Null in SKIPDATA records.",
    ),
    column(
        "log_status",
        String,
        false,
        "OK for a flow record; SKIPDATA for a loss record (see skipped_events, loss_source); \
         ISOLATION for an isolation record (see isolation_action).",
    ),
    column(
        "flow_direction",
        String,
        true,
        "ingress or egress, seen from the pod whose policy decided (the endpoint): egress \
         packets leave that pod, ingress packets enter it. Null in SKIPDATA records.",
    ),
    column(
        "tcp_flags",
        Int,
        true,
        "Bitwise OR of the TCP flags of the reported packets (FIN 1, SYN 2, RST 4, PSH 8, \
         ACK 16, URG 32, ECE 64, CWR 128); 0 for other protocols. Null in SKIPDATA records.",
    ),
    column(
        "icmp_type",
        Int,
        true,
        "ICMP or ICMPv6 type; null for other protocols.",
    ),
    column(
        "icmp_code",
        Int,
        true,
        "ICMP or ICMPv6 code; null for other protocols.",
    ),
    column(
        "src_namespace",
        String,
        true,
        "Namespace of the pod that held srcaddr at the time of the flow; null when the source \
         is not a pod of the cluster (hostNetwork pods are not: their address is their node's).",
    ),
    column(
        "src_pod",
        String,
        true,
        "Name of that pod; null when the source is not a pod of the cluster.",
    ),
    column(
        "src_workload",
        String,
        true,
        "The workload that owns the source pod, as Kind/name (Deployment/nginx, \
         StatefulSet/db, DaemonSet/agent, Job/x, CronJob/y); Pod/name for a pod without a \
         controller; Node/<node> when srcaddr was one of the deciding node's own addresses \
         (the node column; kubelet probes, reason from-node), with src_namespace, src_pod and \
         src_labels null; null when the source is neither.",
    ),
    column(
        "src_labels",
        StringMap,
        true,
        "Labels of the source pod at the time of the flow; null when the source is not a pod \
         of the cluster.",
    ),
    column(
        "dst_namespace",
        String,
        true,
        "Namespace of the pod that held dstaddr at the time of the flow; null outside the \
         cluster.",
    ),
    column(
        "dst_pod",
        String,
        true,
        "Name of that pod; null outside the cluster.",
    ),
    column(
        "dst_workload",
        String,
        true,
        "The workload that owns the destination pod, or Node/<node> for one of the deciding \
         node's own addresses, as src_workload.",
    ),
    column(
        "dst_labels",
        StringMap,
        true,
        "Labels of the destination pod at the time of the flow; null outside the cluster.",
    ),
    column(
        "verdict",
        String,
        true,
        "The probe's verdict: allow, deny, or audit-deny (policy would deny, the endpoint is \
         in audit mode, the packets passed). Null in SKIPDATA records.",
    ),
    column(
        "verdict_reason",
        String,
        true,
        "Why: allowed-by-rule, established, reply, related, no-policy-selects-pod, \
         isolated-no-rule-matched, endpoint-not-programmed, unknown-endpoint, spoofed-source, \
         unknown-fragment, malformed, service-backends-denied (the destination is a Service's \
         ClusterIP and policy allows only some of its ready backends: denied, since kube-proxy \
         could pick a denied one), from-node (the source is one of the node's own addresses, \
         which the NetworkPolicy API exempts from ingress policy), denied-by-rule (a \
         ClusterNetworkPolicy's Deny rule), default-allow (ClusterNetworkPolicies select the \
         pod, none of their rules decided and no NetworkPolicy isolates it). Null in SKIPDATA \
         records.",
    ),
    column(
        "policy_namespace",
        String,
        true,
        "Namespace of the NetworkPolicy whose rule decided the flow (allowed-by-rule, and \
         service-backends-denied when a rule allowed the first backend); null for a \
         ClusterNetworkPolicy's rule (cluster-scoped: see policy_kind) and when no rule \
         decided (a denial for want of a matching rule names the policies that isolate the \
         pod in isolating_policies).",
    ),
    column(
        "policy_name",
        String,
        true,
        "Name of the policy whose rule decided (of the policy_kind); null when no rule \
         decided.",
    ),
    column(
        "policy_rule",
        Int,
        true,
        "Index of the rule in the policy's spec.ingress or spec.egress list (which one: \
         flow_direction); null when no rule decided.",
    ),
    column(
        "enforcement_mode",
        String,
        true,
        "enforce or audit (tollgate.io/enforcement: audit on the namespace or the isolating \
         policies): audit for audit-deny, enforce for deny; for an allowed flow, the mode the \
         deciding endpoint ran in at the time. Null in SKIPDATA records.",
    ),
    column(
        "events",
        BigInt,
        false,
        "How many reports the record aggregates: the probe's flow events and the collector's \
         connection-tracking reports (0 for SKIPDATA records).",
    ),
    column(
        "skipped_events",
        BigInt,
        true,
        "SKIPDATA records: how many flow events were lost in the span; null when the count is \
         unknown (the collector was killed and restarted). Null in OK records.",
    ),
    column(
        "loss_source",
        String,
        true,
        "SKIPDATA records: where events were lost: ringbuf-full (the kernel found the ring \
         buffer full), undecodable (a ring-buffer record of an unknown layout), \
         aggregation-full (too many open flows in the window), spool-full (the local spool \
         was at its bound), collector-restart (the collector stopped without flushing). Null \
         in OK records.",
    ),
    column(
        "node",
        String,
        false,
        "Name of the Kubernetes node whose probe decided.",
    ),
    column(
        "cluster",
        String,
        false,
        "Name of the cluster, as configured; also the first partition key.",
    ),
    column(
        "isolation_action",
        String,
        true,
        "ISOLATION records: quarantine (the pod was cut off, ingress and egress) or release \
         (the quarantine was lifted). The record's start and end are the time of the act; the \
         pod is in src_namespace, src_pod, src_workload, src_labels (its labels before the \
         act) and srcaddr; the quarantine NetworkPolicy in policy_namespace, policy_name; node \
         is the pod's node. Null in other records.",
    ),
    column(
        "isolation_actor",
        String,
        true,
        "ISOLATION records: who acted, as the Kubernetes API server authenticated them \
         (user name, e.g. arn:aws:sts::…:assumed-role/… on EKS), or lab:<user> in the lab. \
         Null in other records.",
    ),
    column(
        "isolation_reason",
        String,
        true,
        "ISOLATION records: why, as the operator wrote it (--reason). Null in other records.",
    ),
    column(
        "isolation_detail",
        String,
        true,
        "ISOLATION records: a JSON object with what the act changed and saw: policy \
         (namespace, name, uid, resource_version of the quarantine NetworkPolicy), label (key \
         and value put on the pod), pod (uid, ip, node), policies_in_force (every \
         NetworkPolicy of the pod's namespace right after the act, as Kubernetes JSON). Null \
         in other records.",
    ),
    column(
        "svc_namespace",
        String,
        true,
        "Namespace of the Service whose ClusterIP, port and protocol were the flow's \
         destination (dstaddr, dstport, protocol) at the time of the flow: the pod connected to \
         the Service and kube-proxy picked a backend after the decision. Null when no Service \
         was involved, in records of the backend's own ingress decision (its packets arrive \
         after kube-proxy's rewrite, with the backend's address), in files written before the \
         column existed, and in SKIPDATA and ISOLATION records.",
    ),
    column(
        "svc_name",
        String,
        true,
        "Name of that Service; null as svc_namespace.",
    ),
    column(
        "svc_addr",
        String,
        true,
        "The Service's ClusterIP the flow was addressed to, before kube-proxy's rewrite (VPC \
         Flow Logs' pkt-dstaddr), as text; equal to dstaddr, since tollgate decides before \
         the rewrite. Null as svc_namespace.",
    ),
    column(
        "svc_port",
        Int,
        true,
        "The Service port the flow was addressed to (its port, not the backend's \
         targetPort); equal to dstport. Null as svc_namespace.",
    ),
    column(
        "endpoint_interface",
        String,
        true,
        "The host-side interface of the pod whose policy decided (flow_direction's pod), where \
         the probe saw the packets: its veth as the VPC CNI named it (eni… by default, the \
         prefix of AWS_VPC_K8S_CNI_VETHPREFIX, vlan… for a pod with security groups in \
         strict mode). Null when the agent had not named the interface yet (a veth that \
         appeared after the last pass, reports read before the agent's first pass) or the \
         reports name neither an interface nor an endpoint (the residual count of an unknown \
         endpoint's denials, flushed after its last event: a record of its own), in files \
         written before the column existed, and in SKIPDATA and ISOLATION records.",
    ),
    column(
        "endpoint_eni",
        String,
        true,
        "Which ENI the deciding pod's address is on: branch (a branch ENI of its own, with \
         its own security groups: security groups for pods, strict or standard mode) or node \
         (an address of one of the node's ENIs, under the node's security groups). Null as \
         endpoint_interface.",
    ),
    column(
        "policy_tier",
        String,
        true,
        "The tier that decided: Admin or Baseline (a ClusterNetworkPolicy's rule), or \
         NetworkPolicy (a NetworkPolicy's rule, or a denial for want of one: \
         isolated-no-rule-matched). For default-allow after a Pass, the Pass rule's tier. Null \
         when no tier decided (no-policy-selects-pod, established, reply, from-node, ...), in \
         files written before the column existed, and in SKIPDATA records.",
    ),
    column(
        "policy_kind",
        String,
        true,
        "The kind of policy_name: NetworkPolicy, ClusterNetworkPolicy \
         (policy.networking.k8s.io) or ClusterNetworkPolicy.networking.k8s.aws (AWS's). Null \
         as policy_name.",
    ),
    column(
        "policy_action",
        String,
        true,
        "What the deciding rule does: Allow (a NetworkPolicy's rule), Accept, Deny or Pass (a \
         ClusterNetworkPolicy's; Pass only for default-allow, the Pass that sent the flow past \
         its tier). Null as policy_name.",
    ),
    column(
        "policy_version",
        String,
        true,
        "The version of that policy when it decided: its resourceVersion, or sha256: and 16 \
         hex digits of its spec for a policy read from a file. Null as policy_name.",
    ),
    column(
        "isolating_policies",
        StringList,
        true,
        "For a denial for want of a matching rule (isolated-no-rule-matched), the \
         NetworkPolicies (namespace/name) that isolated the pod in flow_direction when it was \
         decided: the default deny, named. Null for other reasons, when the compilation of the \
         time was not known, in files written before the column existed, and in SKIPDATA and \
         ISOLATION records.",
    ),
];

/// Hive partition keys of the flow directory, in path order. Each is a string in the path:
/// `cluster` as configured, `dt` as `YYYY-MM-DD` and `hour` as `HH` (UTC).
pub const PARTITION_KEYS: &[&str] = &["cluster", "dt", "hour"];

/// The column named `name`, if any.
pub fn column_named(name: &str) -> Option<&'static Column> {
    COLUMNS.iter().find(|c| c.name == name)
}

#[cfg(feature = "user")]
mod arrow {
    extern crate std;

    use std::{sync::Arc, vec::Vec};

    use arrow_schema::{DataType, Field, Fields, Schema};

    use super::{COLUMNS, ColumnType};

    /// The entries field of a label map: non-null `key`, nullable `value` (the names Athena
    /// and Parquet readers expect).
    pub fn label_map_entries() -> Arc<Field> {
        Arc::new(Field::new(
            "entries",
            DataType::Struct(Fields::from(std::vec![
                Field::new("key", DataType::Utf8, false),
                Field::new("value", DataType::Utf8, true),
            ])),
            false,
        ))
    }

    /// The item field of a string list: non-null strings named `element`.
    pub fn list_items() -> Arc<Field> {
        Arc::new(Field::new("element", DataType::Utf8, false))
    }

    impl ColumnType {
        /// The Arrow type of the column.
        pub fn arrow(self) -> DataType {
            match self {
                Self::Int => DataType::Int32,
                Self::BigInt => DataType::Int64,
                Self::String => DataType::Utf8,
                Self::StringMap => DataType::Map(label_map_entries(), false),
                Self::StringList => DataType::List(list_items()),
            }
        }
    }

    /// The Arrow schema of the flow record, built from [`COLUMNS`].
    pub fn arrow_schema() -> Schema {
        let fields: Vec<Field> = COLUMNS
            .iter()
            .map(|c| Field::new(c.name, c.kind.arrow(), c.nullable))
            .collect();
        Schema::new(fields)
    }
}

#[cfg(feature = "user")]
pub use arrow::{arrow_schema, label_map_entries, list_items};
