//! Flow records in memory and their encoding as Arrow record batches.
//!
//! The aggregator produces [`FlowRecord`]s (a flow, or a loss span), `tollgate quarantine` an
//! isolation record (an [`Isolation`]); [`encode`] lays a slice of
//! them out as one [`RecordBatch`] of the schema `tollgate_schemas::record` defines, column by
//! column in [`COLUMNS`] order. The schema is checked against the builders at every call:
//! a column added to the schema but not here fails loudly instead of writing a wrong file.
//!
//! An end of a flow held by the node itself is written as `Node/<node>` in its workload
//! column (the record's own `node`: the addresses are the deciding node's), its other pod
//! columns null; a flow to a Service fills the `svc_*` columns from the Service and the
//! flow's destination; the `endpoint_*` columns come from the deciding endpoint's interface.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::Arc;

use arrow_array::{
    ArrayRef, RecordBatch,
    builder::{Int32Builder, Int64Builder, ListBuilder, MapBuilder, MapFieldNames, StringBuilder},
};
use arrow_schema::{ArrowError, SchemaRef};
use tollgate_enforcer::desired::{NamedRule, PolicyTier};
use tollgate_schemas::{
    Direction, Reason, Verdict,
    record::{COLUMNS, FLOW_RECORD_VERSION, arrow_schema, list_items},
};

use crate::{
    identity::{EndpointInterface, Holder, PodIdentity, ServiceIdentity},
    loss::LossSpan,
};

/// One flow, one verdict and reason, within one window.
#[derive(Debug, Clone, PartialEq)]
pub struct Flow {
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// Source port (or ICMP echo id).
    pub src_port: u16,
    /// Destination port (or ICMP echo id).
    pub dst_port: u16,
    /// IANA protocol number.
    pub protocol: u8,
    /// Direction seen from the deciding endpoint's pod.
    pub direction: Direction,
    /// Verdict.
    pub verdict: Verdict,
    /// Reason.
    pub reason: Reason,
    /// ICMP type and code, for ICMP and ICMPv6.
    pub icmp: Option<(u8, u8)>,
    /// Packets reported.
    pub packets: u64,
    /// Bytes reported.
    pub bytes: u64,
    /// OR of TCP flags.
    pub tcp_flags: u8,
    /// Events aggregated.
    pub events: u64,
    /// Who held `src` at the time.
    pub src_holder: Option<Holder>,
    /// Who held `dst` at the time.
    pub dst_holder: Option<Holder>,
    /// The Service whose ClusterIP, protocol and port `dst`, `protocol` and `dst_port` were at
    /// the time.
    pub service: Option<Arc<ServiceIdentity>>,
    /// The rule that decided the flow (for default-allow, the Pass that led there).
    pub rule: Option<Arc<NamedRule>>,
    /// For a denial for want of a matching rule: the NetworkPolicies that isolated the
    /// deciding endpoint in `direction` (empty otherwise, or when not known).
    pub isolating: Arc<[String]>,
    /// Whether the deciding endpoint ran this direction in audit mode.
    pub audit: bool,
    /// The deciding endpoint's host interface at the time.
    pub interface: Option<Arc<EndpointInterface>>,
}

/// What a record says.
#[derive(Debug, Clone, PartialEq)]
pub enum RecordBody {
    /// A flow (`log_status = 'OK'`).
    Flow(Box<Flow>),
    /// Lost events (`log_status = 'SKIPDATA'`).
    Loss(LossSpan),
    /// A pod quarantined or released (`log_status = 'ISOLATION'`).
    Isolation(Box<Isolation>),
}

/// What an isolation record says: who put which pod under quarantine (or released it), why,
/// and with which policy.
#[derive(Debug, Clone, PartialEq)]
pub struct Isolation {
    /// `quarantine` or `release`.
    pub action: IsolationAction,
    /// Who acted, as the API server authenticated them.
    pub actor: String,
    /// Why, in the operator's words.
    pub reason: String,
    /// The pod, with its labels before the act.
    pub pod: PodIdentity,
    /// The pod's first address, if it had one.
    pub address: Option<IpAddr>,
    /// Namespace of the quarantine policy (`None`: cluster-scoped).
    pub policy_namespace: Option<String>,
    /// Name of the quarantine policy.
    pub policy_name: String,
    /// Kind of the quarantine policy (`policy_kind`).
    pub policy_kind: String,
    /// The `isolation_detail` JSON object (see the column's doc).
    pub detail: String,
}

impl Isolation {
    /// The quarantine policy as tools name it: `namespace/name`, or `KIND/name` for a
    /// cluster-scoped one.
    pub fn policy_label(&self) -> String {
        match &self.policy_namespace {
            Some(namespace) => format!("{namespace}/{}", self.policy_name),
            None => format!("{}/{}", self.policy_kind, self.policy_name),
        }
    }
}

/// What an isolation record records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IsolationAction {
    /// The pod was cut off.
    Quarantine,
    /// The quarantine was lifted.
    Release,
}

impl IsolationAction {
    /// The `isolation_action` value.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Quarantine => "quarantine",
            Self::Release => "release",
        }
    }
}

/// One row of the flow log.
#[derive(Debug, Clone, PartialEq)]
pub struct FlowRecord {
    /// First second covered (Unix).
    pub start_s: u64,
    /// Last second covered (Unix).
    pub end_s: u64,
    /// The flow, or the loss.
    pub body: RecordBody,
}

impl FlowRecord {
    /// The loss record of `span`.
    pub fn loss(span: LossSpan) -> Self {
        Self {
            start_s: span.from_s,
            end_s: span.to_s,
            body: RecordBody::Loss(span),
        }
    }

    /// The isolation record of `isolation`, at `at_s` (Unix seconds).
    pub fn isolation(isolation: Isolation, at_s: u64) -> Self {
        Self {
            start_s: at_s,
            end_s: at_s,
            body: RecordBody::Isolation(Box::new(isolation)),
        }
    }

    /// Flow events the record aggregates (0 for loss and isolation records).
    pub fn events(&self) -> u64 {
        match &self.body {
            RecordBody::Flow(flow) => flow.events,
            RecordBody::Loss(_) | RecordBody::Isolation(_) => 0,
        }
    }

    /// The loss span a loss record reports.
    pub fn loss_span(&self) -> Option<LossSpan> {
        match &self.body {
            RecordBody::Flow(_) | RecordBody::Isolation(_) => None,
            RecordBody::Loss(span) => Some(*span),
        }
    }
}

/// The record batch of `records`, written by `node` of `cluster`.
pub fn encode(
    records: &[FlowRecord],
    node: &str,
    cluster: &str,
    schema: &SchemaRef,
) -> Result<RecordBatch, ArrowError> {
    let mut columns = Columns::with_capacity(records.len());
    for record in records {
        columns.push(record, node, cluster);
    }
    let arrays = columns.finish();
    if arrays.len() != COLUMNS.len() {
        return Err(ArrowError::SchemaError(format!(
            "the encoder builds {} columns, the record schema has {}",
            arrays.len(),
            COLUMNS.len()
        )));
    }
    RecordBatch::try_new(Arc::clone(schema), arrays)
}

/// The flow record's Arrow schema, shared.
pub fn schema() -> SchemaRef {
    Arc::new(arrow_schema())
}

/// One builder per column, in [`COLUMNS`] order.
struct Columns {
    version: Int32Builder,
    srcaddr: StringBuilder,
    dstaddr: StringBuilder,
    srcport: Int32Builder,
    dstport: Int32Builder,
    protocol: Int32Builder,
    packets: Int64Builder,
    bytes: Int64Builder,
    start: Int64Builder,
    end: Int64Builder,
    action: StringBuilder,
    log_status: StringBuilder,
    flow_direction: StringBuilder,
    tcp_flags: Int32Builder,
    icmp_type: Int32Builder,
    icmp_code: Int32Builder,
    src: PodColumns,
    dst: PodColumns,
    verdict: StringBuilder,
    verdict_reason: StringBuilder,
    policy_namespace: StringBuilder,
    policy_name: StringBuilder,
    policy_rule: Int32Builder,
    enforcement_mode: StringBuilder,
    events: Int64Builder,
    skipped_events: Int64Builder,
    loss_source: StringBuilder,
    node: StringBuilder,
    cluster: StringBuilder,
    isolation_action: StringBuilder,
    isolation_actor: StringBuilder,
    isolation_reason: StringBuilder,
    isolation_detail: StringBuilder,
    svc_namespace: StringBuilder,
    svc_name: StringBuilder,
    svc_addr: StringBuilder,
    svc_port: Int32Builder,
    endpoint_interface: StringBuilder,
    endpoint_eni: StringBuilder,
    policy_tier: StringBuilder,
    policy_kind: StringBuilder,
    policy_action: StringBuilder,
    policy_version: StringBuilder,
    isolating_policies: ListBuilder<StringBuilder>,
}

/// The four columns of one side's pod.
struct PodColumns {
    namespace: StringBuilder,
    pod: StringBuilder,
    workload: StringBuilder,
    labels: MapBuilder<StringBuilder, StringBuilder>,
}

impl PodColumns {
    fn with_capacity(rows: usize) -> Self {
        let names = MapFieldNames {
            entry: "entries".to_owned(),
            key: "key".to_owned(),
            value: "value".to_owned(),
        };
        Self {
            namespace: StringBuilder::with_capacity(rows, rows * 8),
            pod: StringBuilder::with_capacity(rows, rows * 16),
            workload: StringBuilder::with_capacity(rows, rows * 16),
            labels: MapBuilder::new(Some(names), StringBuilder::new(), StringBuilder::new()),
        }
    }

    /// An end of a flow: its pod, the node (`Node/<node>` as the workload, the rest null),
    /// or nothing known.
    fn push_holder(&mut self, holder: Option<&Holder>, node: &str) {
        match holder {
            Some(Holder::Pod(pod)) => self.push(Some(pod)),
            Some(Holder::Node) => {
                self.namespace.append_null();
                self.pod.append_null();
                // Writing into a StringBuilder cannot fail.
                let _ = write!(self.workload, "Node/{node}");
                self.workload.append_value("");
                let _ = self.labels.append(false);
            }
            None => self.push(None),
        }
    }

    fn push(&mut self, pod: Option<&PodIdentity>) {
        match pod {
            Some(pod) => {
                self.namespace.append_value(&pod.namespace);
                self.pod.append_value(&pod.name);
                self.workload.append_value(&pod.workload);
                for (key, value) in pod.labels.iter() {
                    self.labels.keys().append_value(key);
                    self.labels.values().append_value(value);
                }
                // The entry counts always match: keys and values are appended in pairs.
                let _ = self.labels.append(true);
            }
            None => {
                self.namespace.append_null();
                self.pod.append_null();
                self.workload.append_null();
                let _ = self.labels.append(false);
            }
        }
    }

    fn finish(mut self, arrays: &mut Vec<ArrayRef>) {
        arrays.push(Arc::new(self.namespace.finish()));
        arrays.push(Arc::new(self.pod.finish()));
        arrays.push(Arc::new(self.workload.finish()));
        arrays.push(Arc::new(self.labels.finish()));
    }
}

/// Appends `address` as text without an intermediate `String`.
fn append_address(builder: &mut StringBuilder, address: IpAddr) {
    // Writing into a StringBuilder cannot fail.
    let _ = write!(builder, "{address}");
    builder.append_value("");
}

impl Columns {
    fn with_capacity(rows: usize) -> Self {
        let strings =
            |bytes_per_row: usize| StringBuilder::with_capacity(rows, rows * bytes_per_row);
        Self {
            version: Int32Builder::with_capacity(rows),
            srcaddr: strings(16),
            dstaddr: strings(16),
            srcport: Int32Builder::with_capacity(rows),
            dstport: Int32Builder::with_capacity(rows),
            protocol: Int32Builder::with_capacity(rows),
            packets: Int64Builder::with_capacity(rows),
            bytes: Int64Builder::with_capacity(rows),
            start: Int64Builder::with_capacity(rows),
            end: Int64Builder::with_capacity(rows),
            action: strings(6),
            log_status: strings(2),
            flow_direction: strings(7),
            tcp_flags: Int32Builder::with_capacity(rows),
            icmp_type: Int32Builder::with_capacity(rows),
            icmp_code: Int32Builder::with_capacity(rows),
            src: PodColumns::with_capacity(rows),
            dst: PodColumns::with_capacity(rows),
            verdict: strings(5),
            verdict_reason: strings(16),
            policy_namespace: strings(8),
            policy_name: strings(16),
            policy_rule: Int32Builder::with_capacity(rows),
            enforcement_mode: strings(7),
            events: Int64Builder::with_capacity(rows),
            skipped_events: Int64Builder::with_capacity(rows),
            loss_source: strings(0),
            node: strings(16),
            cluster: strings(8),
            isolation_action: strings(0),
            isolation_actor: strings(0),
            isolation_reason: strings(0),
            isolation_detail: strings(0),
            svc_namespace: strings(0),
            svc_name: strings(0),
            svc_addr: strings(0),
            svc_port: Int32Builder::with_capacity(rows),
            endpoint_interface: strings(16),
            endpoint_eni: strings(8),
            policy_tier: strings(8),
            policy_kind: strings(13),
            policy_action: strings(5),
            policy_version: strings(8),
            isolating_policies: ListBuilder::with_capacity(StringBuilder::new(), rows)
                .with_field(list_items()),
        }
    }

    fn push(&mut self, record: &FlowRecord, node: &str, cluster: &str) {
        self.version.append_value(FLOW_RECORD_VERSION);
        self.start.append_value(clamp(record.start_s));
        self.end.append_value(clamp(record.end_s));
        self.node.append_value(node);
        self.cluster.append_value(cluster);
        match &record.body {
            RecordBody::Flow(flow) => self.push_flow(flow, node),
            RecordBody::Loss(span) => self.push_loss(span),
            RecordBody::Isolation(isolation) => self.push_isolation(isolation),
        }
    }

    /// The `svc_*` columns: the Service a flow was addressed to with its ClusterIP and port
    /// (the flow's destination), or nulls.
    fn push_service(&mut self, service: Option<(&ServiceIdentity, IpAddr, u16)>) {
        match service {
            Some((service, addr, port)) => {
                self.svc_namespace.append_value(&service.namespace);
                self.svc_name.append_value(&service.name);
                append_address(&mut self.svc_addr, addr);
                self.svc_port.append_value(i32::from(port));
            }
            None => {
                self.svc_namespace.append_null();
                self.svc_name.append_null();
                self.svc_addr.append_null();
                self.svc_port.append_null();
            }
        }
    }

    /// The `endpoint_*` columns: the deciding endpoint's interface, or nulls.
    fn push_interface(&mut self, interface: Option<&EndpointInterface>) {
        match interface {
            Some(interface) => {
                self.endpoint_interface.append_value(&interface.name);
                self.endpoint_eni.append_value(interface.eni.name());
            }
            None => {
                self.endpoint_interface.append_null();
                self.endpoint_eni.append_null();
            }
        }
    }

    /// The `isolation_*` columns of a record that is not an isolation record.
    fn push_no_isolation(&mut self) {
        self.isolation_action.append_null();
        self.isolation_actor.append_null();
        self.isolation_reason.append_null();
        self.isolation_detail.append_null();
    }

    fn push_flow(&mut self, flow: &Flow, node: &str) {
        append_address(&mut self.srcaddr, flow.src);
        append_address(&mut self.dstaddr, flow.dst);
        self.srcport.append_value(i32::from(flow.src_port));
        self.dstport.append_value(i32::from(flow.dst_port));
        self.protocol.append_value(i32::from(flow.protocol));
        self.packets.append_value(clamp(flow.packets));
        self.bytes.append_value(clamp(flow.bytes));
        self.action.append_value(if flow.verdict.passes() {
            "ACCEPT"
        } else {
            "REJECT"
        });
        self.log_status.append_value("OK");
        self.flow_direction.append_value(flow.direction.name());
        self.tcp_flags.append_value(i32::from(flow.tcp_flags));
        self.icmp_type
            .append_option(flow.icmp.map(|(t, _)| i32::from(t)));
        self.icmp_code
            .append_option(flow.icmp.map(|(_, c)| i32::from(c)));
        self.src.push_holder(flow.src_holder.as_ref(), node);
        self.dst.push_holder(flow.dst_holder.as_ref(), node);
        self.verdict.append_value(flow.verdict.name());
        self.verdict_reason.append_value(flow.reason.name());
        match flow.rule.as_deref() {
            Some(named) => {
                let rule = &named.rule;
                self.policy_namespace.append_option(rule.policy_namespace());
                self.policy_name.append_value(&rule.policy);
                self.policy_rule
                    .append_value(i32::try_from(rule.index).unwrap_or(i32::MAX));
            }
            None => {
                self.policy_namespace.append_null();
                self.policy_name.append_null();
                self.policy_rule.append_null();
            }
        }
        self.enforcement_mode
            .append_value(if flow.audit { "audit" } else { "enforce" });
        self.events.append_value(clamp(flow.events));
        self.skipped_events.append_null();
        self.loss_source.append_null();
        self.push_no_isolation();
        self.push_service(
            flow.service
                .as_deref()
                .map(|service| (service, flow.dst, flow.dst_port)),
        );
        self.push_interface(flow.interface.as_deref());
        self.push_trace(flow);
    }

    /// The decision trace: the deciding rule's tier, kind, action and policy version, and the
    /// policies that isolated the pod when no rule matched.
    fn push_trace(&mut self, flow: &Flow) {
        let tier = match (flow.rule.as_deref(), flow.reason) {
            (Some(named), _) => Some(named.tier),
            (None, Reason::IsolatedNoMatch) => Some(PolicyTier::NetworkPolicy),
            (None, _) => None,
        };
        self.policy_tier.append_option(tier.map(PolicyTier::name));
        match flow.rule.as_deref() {
            Some(named) => {
                self.policy_kind.append_value(named.rule.kind().name());
                self.policy_action.append_value(named.action.name());
                self.policy_version.append_value(&named.version);
            }
            None => {
                self.policy_kind.append_null();
                self.policy_action.append_null();
                self.policy_version.append_null();
            }
        }
        if flow.reason == Reason::IsolatedNoMatch && !flow.isolating.is_empty() {
            for name in flow.isolating.iter() {
                self.isolating_policies.values().append_value(name);
            }
            self.isolating_policies.append(true);
        } else {
            self.isolating_policies.append_null();
        }
    }

    /// The trace columns of a record that is not a flow (an isolation record names its
    /// policy's kind).
    fn push_no_trace(&mut self, kind: Option<&str>) {
        self.policy_tier.append_null();
        self.policy_kind.append_option(kind);
        self.policy_action.append_null();
        self.policy_version.append_null();
        self.isolating_policies.append_null();
    }

    /// The flow columns of a record that is not a flow: null, except those a loss or an
    /// isolation record sets itself (source address and pod, policy, enforcement mode).
    fn push_not_a_flow(&mut self) {
        self.dstaddr.append_null();
        self.srcport.append_null();
        self.dstport.append_null();
        self.protocol.append_null();
        self.packets.append_null();
        self.bytes.append_null();
        self.action.append_null();
        self.flow_direction.append_null();
        self.tcp_flags.append_null();
        self.icmp_type.append_null();
        self.icmp_code.append_null();
        self.dst.push(None);
        self.verdict.append_null();
        self.verdict_reason.append_null();
        self.policy_rule.append_null();
        self.events.append_value(0);
        self.push_service(None);
        self.push_interface(None);
    }

    fn push_loss(&mut self, span: &LossSpan) {
        self.push_not_a_flow();
        self.srcaddr.append_null();
        self.log_status.append_value("SKIPDATA");
        self.src.push(None);
        self.policy_namespace.append_null();
        self.policy_name.append_null();
        self.enforcement_mode.append_null();
        self.skipped_events.append_option(span.events.map(clamp));
        self.loss_source.append_value(span.source.name());
        self.push_no_isolation();
        self.push_no_trace(None);
    }

    fn push_isolation(&mut self, isolation: &Isolation) {
        self.push_not_a_flow();
        match isolation.address {
            Some(address) => append_address(&mut self.srcaddr, address),
            None => self.srcaddr.append_null(),
        }
        self.log_status.append_value("ISOLATION");
        self.src.push(Some(&isolation.pod));
        self.policy_namespace
            .append_option(isolation.policy_namespace.as_deref());
        self.policy_name.append_value(&isolation.policy_name);
        self.enforcement_mode.append_value("enforce");
        self.skipped_events.append_null();
        self.loss_source.append_null();
        self.isolation_action.append_value(isolation.action.name());
        self.isolation_actor.append_value(&isolation.actor);
        self.isolation_reason.append_value(&isolation.reason);
        self.isolation_detail.append_value(&isolation.detail);
        self.push_no_trace(Some(&isolation.policy_kind));
    }

    /// The arrays in [`COLUMNS`] order.
    fn finish(mut self) -> Vec<ArrayRef> {
        let mut arrays: Vec<ArrayRef> = Vec::with_capacity(COLUMNS.len());
        arrays.push(Arc::new(self.version.finish()));
        arrays.push(Arc::new(self.srcaddr.finish()));
        arrays.push(Arc::new(self.dstaddr.finish()));
        arrays.push(Arc::new(self.srcport.finish()));
        arrays.push(Arc::new(self.dstport.finish()));
        arrays.push(Arc::new(self.protocol.finish()));
        arrays.push(Arc::new(self.packets.finish()));
        arrays.push(Arc::new(self.bytes.finish()));
        arrays.push(Arc::new(self.start.finish()));
        arrays.push(Arc::new(self.end.finish()));
        arrays.push(Arc::new(self.action.finish()));
        arrays.push(Arc::new(self.log_status.finish()));
        arrays.push(Arc::new(self.flow_direction.finish()));
        arrays.push(Arc::new(self.tcp_flags.finish()));
        arrays.push(Arc::new(self.icmp_type.finish()));
        arrays.push(Arc::new(self.icmp_code.finish()));
        self.src.finish(&mut arrays);
        self.dst.finish(&mut arrays);
        arrays.push(Arc::new(self.verdict.finish()));
        arrays.push(Arc::new(self.verdict_reason.finish()));
        arrays.push(Arc::new(self.policy_namespace.finish()));
        arrays.push(Arc::new(self.policy_name.finish()));
        arrays.push(Arc::new(self.policy_rule.finish()));
        arrays.push(Arc::new(self.enforcement_mode.finish()));
        arrays.push(Arc::new(self.events.finish()));
        arrays.push(Arc::new(self.skipped_events.finish()));
        arrays.push(Arc::new(self.loss_source.finish()));
        arrays.push(Arc::new(self.node.finish()));
        arrays.push(Arc::new(self.cluster.finish()));
        arrays.push(Arc::new(self.isolation_action.finish()));
        arrays.push(Arc::new(self.isolation_actor.finish()));
        arrays.push(Arc::new(self.isolation_reason.finish()));
        arrays.push(Arc::new(self.isolation_detail.finish()));
        arrays.push(Arc::new(self.svc_namespace.finish()));
        arrays.push(Arc::new(self.svc_name.finish()));
        arrays.push(Arc::new(self.svc_addr.finish()));
        arrays.push(Arc::new(self.svc_port.finish()));
        arrays.push(Arc::new(self.endpoint_interface.finish()));
        arrays.push(Arc::new(self.endpoint_eni.finish()));
        arrays.push(Arc::new(self.policy_tier.finish()));
        arrays.push(Arc::new(self.policy_kind.finish()));
        arrays.push(Arc::new(self.policy_action.finish()));
        arrays.push(Arc::new(self.policy_version.finish()));
        arrays.push(Arc::new(self.isolating_policies.finish()));
        arrays
    }
}

/// A count as Athena's `bigint` (counts never reach 2^63; saturate rather than wrap).
fn clamp(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}
