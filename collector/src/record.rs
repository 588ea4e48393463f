//! Flow records in memory and their encoding as Arrow record batches.
//!
//! The aggregator produces [`FlowRecord`]s (a flow, or a loss span), `tollgate quarantine` an
//! isolation record (an [`Isolation`]); [`encode`] lays a slice of
//! them out as one [`RecordBatch`] of the schema `tollgate_schemas::record` defines, column by
//! column in [`COLUMNS`] order, a chunk of records at a time: for each chunk, each column is
//! one pass over its records into the column's own builder, with no intermediate row per
//! record (the chunk stays in the CPU's cache from the first column to the last). A text
//! column takes a run of equal values (or nulls) at once, a labels or policy-list column a run
//! of nulls; an integer column none of whose rows has a value takes them as nulls at once.
//! Addresses are written as text straight into their column (the previous row's text is
//! reused when the address repeats). The schema is checked against the columns at every call:
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
    ArrayRef, ArrowPrimitiveType, RecordBatch,
    builder::{
        Int32Builder, Int64Builder, ListBuilder, MapBuilder, MapFieldNames, PrimitiveBuilder,
        StringBuilder,
    },
};
use arrow_schema::{ArrowError, SchemaRef};
use tollgate_schemas::rule::{NamedRule, PolicyTier};
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
    /// deciding endpoint in `direction` (`None` otherwise, or when not known).
    pub isolating: Option<Arc<[String]>>,
    /// Whether the deciding endpoint ran this direction in audit mode.
    pub audit: bool,
    /// The deciding endpoint's host interface at the time.
    pub interface: Option<Arc<EndpointInterface>>,
}

#[cfg(test)]
impl Flow {
    /// One TCP packet of 1 byte from 198.18.0.1:1 to 198.18.0.2:2, egress, naming nobody.
    pub(crate) fn unnamed(verdict: Verdict, reason: Reason) -> Self {
        Self {
            src: "198.18.0.1".parse().unwrap(),
            dst: "198.18.0.2".parse().unwrap(),
            src_port: 1,
            dst_port: 2,
            protocol: tollgate_schemas::proto::TCP,
            direction: Direction::Egress,
            verdict,
            reason,
            icmp: None,
            packets: 1,
            bytes: 1,
            tcp_flags: 0,
            events: 1,
            src_holder: None,
            dst_holder: None,
            service: None,
            rule: None,
            isolating: None,
            audit: false,
            interface: None,
        }
    }
}

/// What a record says.
#[derive(Debug, Clone, PartialEq)]
pub enum RecordBody {
    /// A flow (`log_status = 'OK'`).
    Flow(Flow),
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
    let node_workload = format!("Node/{node}");
    let mut columns = Columns::new(records.len());
    let mut rest = records;
    loop {
        let (chunk, next) = rest.split_at(rest.len().min(CHUNK_ROWS));
        columns.append(chunk, node, cluster, &node_workload);
        if next.is_empty() {
            break;
        }
        rest = next;
    }
    let arrays = columns.finish()?;
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

/// Records encoded per pass: every column takes these rows before the next ones, so that
/// their records stay in the CPU's cache from the first column to the last.
const CHUNK_ROWS: usize = 1024;

/// One column's builder.
enum Builder {
    Int32(Int32Builder),
    Int64(Int64Builder),
    Utf8(StringBuilder),
    Map(MapBuilder<StringBuilder, StringBuilder>),
    List(ListBuilder<StringBuilder>),
}

/// The columns' builders. Each chunk of records goes through the same sequence of column
/// calls ([`Columns::append`], in [`COLUMNS`] order), which finds each column's builder by
/// its place in the sequence; the first chunk makes the builders.
struct Columns {
    rows: usize,
    builders: Vec<Builder>,
    /// The place of the next column call in the sequence.
    next: usize,
    /// A call found another type of builder in its place (a bug of the sequence).
    mismatch: bool,
    text: AddressText,
}

impl Columns {
    fn new(rows: usize) -> Self {
        Self {
            rows,
            builders: Vec::with_capacity(COLUMNS.len()),
            next: 0,
            mismatch: false,
            text: AddressText::default(),
        }
    }

    /// The builder of the next column call, made by `new` (given the rows) at the first chunk.
    fn slot(&mut self, new: impl FnOnce(usize) -> Builder) -> Option<&mut Builder> {
        slot(&mut self.builders, &mut self.next, self.rows, new)
    }

    /// Every column of `chunk`'s rows.
    fn append(&mut self, chunk: &[FlowRecord], node: &str, cluster: &str, node_workload: &str) {
        self.next = 0;
        self.int32(chunk, |_| Some(FLOW_RECORD_VERSION));
        self.addresses(chunk, |r| match &r.body {
            RecordBody::Flow(flow) => Some(flow.src),
            RecordBody::Loss(_) => None,
            RecordBody::Isolation(isolation) => isolation.address,
        });
        self.addresses(chunk, |r| flow(r).map(|f| f.dst));
        self.int32(chunk, |r| flow(r).map(|f| i32::from(f.src_port)));
        self.int32(chunk, |r| flow(r).map(|f| i32::from(f.dst_port)));
        self.int32(chunk, |r| flow(r).map(|f| i32::from(f.protocol)));
        self.int64(chunk, |r| flow(r).map(|f| clamp(f.packets)));
        self.int64(chunk, |r| flow(r).map(|f| clamp(f.bytes)));
        self.int64(chunk, |r| Some(clamp(r.start_s)));
        self.int64(chunk, |r| Some(clamp(r.end_s)));
        self.strings(chunk, |r| {
            flow(r).map(|f| {
                if f.verdict.passes() {
                    "ACCEPT"
                } else {
                    "REJECT"
                }
            })
        });
        self.strings(chunk, |r| {
            Some(match &r.body {
                RecordBody::Flow(_) => "OK",
                RecordBody::Loss(_) => "SKIPDATA",
                RecordBody::Isolation(_) => "ISOLATION",
            })
        });
        self.strings(chunk, |r| flow(r).map(|f| f.direction.name()));
        self.int32(chunk, |r| flow(r).map(|f| i32::from(f.tcp_flags)));
        self.int32(chunk, |r| {
            flow(r).and_then(|f| f.icmp).map(|(t, _)| i32::from(t))
        });
        self.int32(chunk, |r| {
            flow(r).and_then(|f| f.icmp).map(|(_, c)| i32::from(c))
        });
        self.pod_columns(chunk, node_workload, |r| match &r.body {
            RecordBody::Flow(flow) => End::of(flow.src_holder.as_ref()),
            RecordBody::Loss(_) => End::Unknown,
            RecordBody::Isolation(isolation) => End::Pod(&isolation.pod),
        });
        self.pod_columns(chunk, node_workload, |r| {
            flow(r).map_or(End::Unknown, |f| End::of(f.dst_holder.as_ref()))
        });
        self.strings(chunk, |r| flow(r).map(|f| f.verdict.name()));
        self.strings(chunk, |r| flow(r).map(|f| f.reason.name()));
        self.strings(chunk, |r| match &r.body {
            RecordBody::Flow(flow) => rule(flow).and_then(|rule| rule.rule.policy_namespace()),
            RecordBody::Loss(_) => None,
            RecordBody::Isolation(isolation) => isolation.policy_namespace.as_deref(),
        });
        self.strings(chunk, |r| match &r.body {
            RecordBody::Flow(flow) => rule(flow).map(|rule| rule.rule.policy.as_str()),
            RecordBody::Loss(_) => None,
            RecordBody::Isolation(isolation) => Some(&isolation.policy_name),
        });
        self.int32(chunk, |r| {
            flow(r)
                .and_then(rule)
                .map(|rule| i32::try_from(rule.rule.index).unwrap_or(i32::MAX))
        });
        self.strings(chunk, |r| match &r.body {
            RecordBody::Flow(flow) => Some(if flow.audit { "audit" } else { "enforce" }),
            RecordBody::Loss(_) => None,
            RecordBody::Isolation(_) => Some("enforce"),
        });
        self.int64(chunk, |r| Some(clamp(r.events())));
        self.int64(chunk, |r| match &r.body {
            RecordBody::Loss(span) => span.events.map(clamp),
            RecordBody::Flow(_) | RecordBody::Isolation(_) => None,
        });
        self.strings(chunk, |r| r.loss_span().map(|span| span.source.name()));
        self.strings(chunk, |_| Some(node));
        self.strings(chunk, |_| Some(cluster));
        self.strings(chunk, |r| isolation(r).map(|i| i.action.name()));
        self.strings(chunk, |r| isolation(r).map(|i| i.actor.as_str()));
        self.strings(chunk, |r| isolation(r).map(|i| i.reason.as_str()));
        self.strings(chunk, |r| isolation(r).map(|i| i.detail.as_str()));
        self.strings(chunk, |r| {
            service(r).map(|(service, _)| service.namespace.as_str())
        });
        self.strings(chunk, |r| {
            service(r).map(|(service, _)| service.name.as_str())
        });
        self.addresses(chunk, |r| service(r).map(|(_, flow)| flow.dst));
        self.int32(chunk, |r| {
            service(r).map(|(_, flow)| i32::from(flow.dst_port))
        });
        self.strings(chunk, |r| {
            interface(r).map(|interface| interface.name.as_str())
        });
        self.strings(chunk, |r| {
            interface(r).map(|interface| interface.eni.name())
        });
        self.strings(chunk, |r| flow(r).and_then(tier).map(PolicyTier::name));
        self.strings(chunk, |r| match &r.body {
            RecordBody::Flow(flow) => rule(flow).map(|rule| rule.rule.kind().name()),
            RecordBody::Loss(_) => None,
            RecordBody::Isolation(isolation) => Some(&isolation.policy_kind),
        });
        self.strings(chunk, |r| {
            flow(r).and_then(rule).map(|rule| rule.action.name())
        });
        self.strings(chunk, |r| {
            flow(r).and_then(rule).map(|rule| rule.version.as_str())
        });
        self.isolating_policies(chunk);
    }

    /// The arrays, in the sequence's order.
    fn finish(self) -> Result<Vec<ArrayRef>, ArrowError> {
        if self.mismatch {
            return Err(ArrowError::SchemaError(
                "the encoder's columns changed type from one chunk to the next".to_owned(),
            ));
        }
        Ok(self
            .builders
            .into_iter()
            .map(|builder| -> ArrayRef {
                match builder {
                    Builder::Int32(mut b) => Arc::new(b.finish()),
                    Builder::Int64(mut b) => Arc::new(b.finish()),
                    Builder::Utf8(mut b) => Arc::new(b.finish()),
                    Builder::Map(mut b) => Arc::new(b.finish()),
                    Builder::List(mut b) => Arc::new(b.finish()),
                }
            })
            .collect())
    }

    /// An `int` column.
    fn int32(&mut self, chunk: &[FlowRecord], value: impl Fn(&FlowRecord) -> Option<i32>) {
        match self.slot(|rows| Builder::Int32(Int32Builder::with_capacity(rows))) {
            Some(Builder::Int32(builder)) => append_ints(builder, chunk, value),
            _ => self.mismatch = true,
        }
    }

    /// A `bigint` column.
    fn int64(&mut self, chunk: &[FlowRecord], value: impl Fn(&FlowRecord) -> Option<i64>) {
        match self.slot(|rows| Builder::Int64(Int64Builder::with_capacity(rows))) {
            Some(Builder::Int64(builder)) => append_ints(builder, chunk, value),
            _ => self.mismatch = true,
        }
    }

    /// A `string` column, appended a run of equal values at a time: most columns hold a few
    /// values in long runs (the node's name, `OK`, a verdict, a pod's namespace), or none.
    fn strings<'a>(
        &mut self,
        chunk: &'a [FlowRecord],
        value: impl Fn(&'a FlowRecord) -> Option<&'a str>,
    ) {
        let new = |rows| Builder::Utf8(StringBuilder::with_capacity(rows, rows * 8));
        match self.slot(new) {
            Some(Builder::Utf8(builder)) => {
                for (run_value, run) in runs(chunk, value, |a, b| same_text(*a, *b)) {
                    match run_value {
                        Some(text) => builder.append_value_n(text, run.len()),
                        None => builder.append_nulls(run.len()),
                    }
                }
            }
            _ => self.mismatch = true,
        }
    }

    /// A column of addresses as text.
    fn addresses(&mut self, chunk: &[FlowRecord], value: impl Fn(&FlowRecord) -> Option<IpAddr>) {
        let new = |rows| Builder::Utf8(StringBuilder::with_capacity(rows, rows * 15));
        match slot(&mut self.builders, &mut self.next, self.rows, new) {
            Some(Builder::Utf8(builder)) => {
                if chunk.iter().all(|r| value(r).is_none()) {
                    builder.append_nulls(chunk.len());
                    return;
                }
                for record in chunk {
                    match value(record) {
                        Some(address) => builder.append_value(self.text.of(address)),
                        None => builder.append_null(),
                    }
                }
            }
            _ => self.mismatch = true,
        }
    }

    /// The four columns of one side's pod: namespace, pod, workload and labels.
    fn pod_columns<'a>(
        &mut self,
        chunk: &'a [FlowRecord],
        node_workload: &'a str,
        end: impl Fn(&'a FlowRecord) -> End<'a>,
    ) {
        self.strings(chunk, |r| end(r).pod().map(|pod| pod.namespace.as_str()));
        self.strings(chunk, |r| end(r).pod().map(|pod| pod.name.as_str()));
        self.strings(chunk, |r| match end(r) {
            End::Pod(pod) => Some(pod.workload.as_str()),
            End::Node => Some(node_workload),
            End::Unknown => None,
        });
        let new = |rows| {
            let names = MapFieldNames {
                entry: "entries".to_owned(),
                key: "key".to_owned(),
                value: "value".to_owned(),
            };
            Builder::Map(MapBuilder::with_capacity(
                Some(names),
                StringBuilder::new(),
                StringBuilder::new(),
                rows,
            ))
        };
        match self.slot(new) {
            Some(Builder::Map(labels)) => {
                for (named, run) in runs(chunk, |r| end(r).pod().is_some(), bool::eq) {
                    // The entry counts always match: keys and values are appended in pairs.
                    if !named {
                        let _ = labels.append_nulls(run.len());
                        continue;
                    }
                    for pod in run.iter().filter_map(|r| end(r).pod()) {
                        for (key, value) in pod.labels.iter() {
                            labels.keys().append_value(key);
                            labels.values().append_value(value);
                        }
                        let _ = labels.append(true);
                    }
                }
            }
            _ => self.mismatch = true,
        }
    }

    /// The policies that isolated the deciding endpoint, for a denial for want of a matching
    /// rule (null otherwise, or when none are known).
    fn isolating_policies(&mut self, chunk: &[FlowRecord]) {
        let new = |rows| {
            Builder::List(
                ListBuilder::with_capacity(StringBuilder::new(), rows).with_field(list_items()),
            )
        };
        match self.slot(new) {
            Some(Builder::List(list)) => {
                for (named, run) in runs(chunk, |r| isolating(r).is_some(), bool::eq) {
                    if !named {
                        list.append_nulls(run.len());
                        continue;
                    }
                    for names in run.iter().filter_map(isolating) {
                        for name in names.iter() {
                            list.values().append_value(name);
                        }
                        list.append(true);
                    }
                }
            }
            _ => self.mismatch = true,
        }
    }
}

/// The builder at place `next` of `builders` (made by `new`, given `rows`, when `builders`
/// ends there); `next` moves on.
fn slot<'b>(
    builders: &'b mut Vec<Builder>,
    next: &mut usize,
    rows: usize,
    new: impl FnOnce(usize) -> Builder,
) -> Option<&'b mut Builder> {
    let place = *next;
    *next += 1;
    if place == builders.len() {
        builders.push(new(rows));
    }
    builders.get_mut(place)
}

/// Appends an integer column's values of `chunk`: at once as nulls when none has one (the
/// ICMP columns of TCP flows, a loss record's columns).
fn append_ints<T: ArrowPrimitiveType>(
    builder: &mut PrimitiveBuilder<T>,
    chunk: &[FlowRecord],
    value: impl Fn(&FlowRecord) -> Option<T::Native>,
) {
    if chunk.iter().all(|r| value(r).is_none()) {
        builder.append_nulls(chunk.len());
    } else {
        builder.extend_from_iter_option(chunk.iter().map(value));
    }
}

/// `chunk` cut into runs of records whose `value`s are the `same`, in order, each with its
/// first record's value.
fn runs<'a, T>(
    chunk: &'a [FlowRecord],
    value: impl Fn(&'a FlowRecord) -> T,
    same: impl Fn(&T, &T) -> bool,
) -> impl Iterator<Item = (T, &'a [FlowRecord])> {
    let mut rest = chunk;
    std::iter::from_fn(move || {
        let (first, others) = rest.split_first()?;
        let run_value = value(first);
        let len = 1 + others
            .iter()
            .take_while(|r| same(&value(r), &run_value))
            .count();
        let (run, next) = rest.split_at(len);
        rest = next;
        Some((run_value, run))
    })
}

/// Whether two values of a `string` column are equal: at once when both are the same text
/// (a `&'static str`, or the same identity's), else by comparing their bytes.
fn same_text(a: Option<&str>, b: Option<&str>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => std::ptr::eq(a, b) || a == b,
        (a, b) => a.is_none() && b.is_none(),
    }
}

/// The flow of a flow record.
fn flow(record: &FlowRecord) -> Option<&Flow> {
    match &record.body {
        RecordBody::Flow(flow) => Some(flow),
        RecordBody::Loss(_) | RecordBody::Isolation(_) => None,
    }
}

/// What an isolation record says.
fn isolation(record: &FlowRecord) -> Option<&Isolation> {
    match &record.body {
        RecordBody::Isolation(isolation) => Some(isolation),
        RecordBody::Flow(_) | RecordBody::Loss(_) => None,
    }
}

/// The policies a denial for want of a matching rule names (`None` for any other record, or
/// when none are known).
fn isolating(record: &FlowRecord) -> Option<&[String]> {
    match flow(record)? {
        Flow {
            reason: Reason::IsolatedNoMatch,
            isolating: Some(names),
            ..
        } if !names.is_empty() => Some(names),
        _ => None,
    }
}

/// The rule that decided a flow.
fn rule(flow: &Flow) -> Option<&NamedRule> {
    flow.rule.as_deref()
}

/// The Service a flow was addressed to, with the flow (its destination is the ClusterIP and
/// port): the `svc_*` columns.
fn service(record: &FlowRecord) -> Option<(&ServiceIdentity, &Flow)> {
    flow(record).and_then(|flow| flow.service.as_deref().map(|service| (service, flow)))
}

/// The deciding endpoint's interface: the `endpoint_*` columns.
fn interface(record: &FlowRecord) -> Option<&EndpointInterface> {
    flow(record).and_then(|flow| flow.interface.as_deref())
}

/// The decision trace's tier: the deciding rule's, or NetworkPolicy's for a denial for want
/// of a matching rule.
fn tier(flow: &Flow) -> Option<PolicyTier> {
    match (rule(flow), flow.reason) {
        (Some(named), _) => Some(named.tier),
        (None, Reason::IsolatedNoMatch) => Some(PolicyTier::NetworkPolicy),
        (None, _) => None,
    }
}

/// An address's text (as `Display` writes it), kept for the next row: a flow log's
/// addresses repeat from row to row.
#[derive(Default)]
struct AddressText {
    address: Option<IpAddr>,
    text: String,
}

impl AddressText {
    fn of(&mut self, address: IpAddr) -> &str {
        if self.address != Some(address) {
            self.text.clear();
            match address {
                IpAddr::V4(v4) => {
                    for (index, octet) in v4.octets().into_iter().enumerate() {
                        if index > 0 {
                            self.text.push('.');
                        }
                        push_decimal(&mut self.text, octet);
                    }
                }
                // Writing into a String cannot fail.
                IpAddr::V6(v6) => {
                    let _ = write!(self.text, "{v6}");
                }
            }
            self.address = Some(address);
        }
        &self.text
    }
}

/// Appends `value` in decimal, with no leading zeros.
fn push_decimal(text: &mut String, value: u8) {
    if value >= 100 {
        text.push(char::from(b'0' + value / 100));
    }
    if value >= 10 {
        text.push(char::from(b'0' + value / 10 % 10));
    }
    text.push(char::from(b'0' + value % 10));
}

/// One end of a record, as its pod columns say it.
#[derive(Clone, Copy)]
enum End<'a> {
    /// A pod.
    Pod(&'a PodIdentity),
    /// The node itself: `Node/<node>` as the workload, the rest null.
    Node,
    /// Nothing known: all null.
    Unknown,
}

impl<'a> End<'a> {
    fn of(holder: Option<&'a Holder>) -> Self {
        match holder {
            Some(Holder::Pod(pod)) => Self::Pod(pod),
            Some(Holder::Node) => Self::Node,
            None => Self::Unknown,
        }
    }

    fn pod(self) -> Option<&'a PodIdentity> {
        match self {
            Self::Pod(pod) => Some(pod),
            Self::Node | Self::Unknown => None,
        }
    }
}

/// A count as Athena's `bigint` (counts never reach 2^63; saturate rather than wrap).
fn clamp(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{Array, Int32Array, ListArray, MapArray, StringArray};

    use crate::loss::LossSource;

    fn flow_record(src_port: u16, verdict: Verdict, icmp: Option<(u8, u8)>) -> FlowRecord {
        FlowRecord {
            start_s: 60,
            end_s: 61,
            body: RecordBody::Flow(Flow {
                src_port,
                icmp,
                ..Flow::unnamed(verdict, Reason::IsolatedNoMatch)
            }),
        }
    }

    /// The column `name` of `batch`, as `T`.
    fn column<'b, T: 'static>(batch: &'b RecordBatch, name: &str) -> &'b T {
        batch
            .column_by_name(name)
            .and_then(|c| c.as_any().downcast_ref::<T>())
            .unwrap_or_else(|| panic!("column {name}"))
    }

    #[test]
    fn runs_of_equal_values_and_of_nulls_keep_every_row() {
        let loss = FlowRecord::loss(crate::loss::LossSpan {
            source: LossSource::RingbufFull,
            events: Some(3),
            from_s: 60,
            to_s: 61,
        });
        let records = [
            flow_record(1, Verdict::Deny, None),
            flow_record(2, Verdict::Deny, None),
            loss,
            flow_record(3, Verdict::Allow, Some((8, 0))),
            flow_record(4, Verdict::Deny, None),
        ];
        let batch = encode(&records, "node-a", "lab", &schema()).unwrap();
        let text = |name| -> Vec<Option<String>> {
            column::<StringArray>(&batch, name)
                .iter()
                .map(|v| v.map(str::to_owned))
                .collect()
        };
        let some = |v: &str| Some(v.to_owned());
        assert_eq!(
            text("action"),
            [
                some("REJECT"),
                some("REJECT"),
                None,
                some("ACCEPT"),
                some("REJECT")
            ]
        );
        assert_eq!(
            text("log_status"),
            [
                some("OK"),
                some("OK"),
                some("SKIPDATA"),
                some("OK"),
                some("OK")
            ]
        );
        assert_eq!(text("node"), vec![some("node-a"); 5]);
        assert_eq!(text("src_pod"), vec![None; 5]);
        let ints =
            |name| -> Vec<Option<i32>> { column::<Int32Array>(&batch, name).iter().collect() };
        assert_eq!(ints("srcport"), [Some(1), Some(2), None, Some(3), Some(4)]);
        assert_eq!(ints("icmp_type"), [None, None, None, Some(8), None]);
        let all_tcp = encode(&records[..2], "node-a", "lab", &schema()).unwrap();
        assert_eq!(column::<Int32Array>(&all_tcp, "icmp_code").null_count(), 2);
    }

    #[test]
    fn runs_of_unnamed_ends_and_of_no_policies_keep_every_row() {
        let pod = Arc::new(PodIdentity {
            namespace: "shop".to_owned(),
            name: "web-1".to_owned(),
            workload: "Deployment/web".to_owned(),
            labels: Arc::new([("app".to_owned(), "web".to_owned())].into()),
        });
        let named = |isolating: Option<&[&str]>| {
            let mut record = flow_record(1, Verdict::Deny, None);
            if let RecordBody::Flow(flow) = &mut record.body {
                flow.src_holder = Some(Holder::Pod(Arc::clone(&pod)));
                flow.isolating =
                    isolating.map(|names| names.iter().map(|n| (*n).to_owned()).collect());
            }
            record
        };
        let records = [
            flow_record(1, Verdict::Deny, None),
            named(Some(&["shop/default-deny", "shop/web"])),
            named(None),
            flow_record(2, Verdict::Deny, None),
            flow_record(3, Verdict::Deny, None),
            named(Some(&["shop/default-deny"])),
        ];
        let batch = encode(&records, "node-a", "lab", &schema()).unwrap();
        let labels: Vec<Option<Vec<(String, String)>>> = column::<MapArray>(&batch, "src_labels")
            .iter()
            .map(|entries| {
                let entries = entries?;
                let keys = entries.column(0).as_any().downcast_ref::<StringArray>()?;
                let values = entries.column(1).as_any().downcast_ref::<StringArray>()?;
                Some(
                    keys.iter()
                        .zip(values.iter())
                        .map(|(k, v)| (k.unwrap().to_owned(), v.unwrap().to_owned()))
                        .collect(),
                )
            })
            .collect();
        let web = Some(vec![("app".to_owned(), "web".to_owned())]);
        assert_eq!(
            labels,
            [None, web.clone(), web.clone(), None, None, web.clone()]
        );
        let policies: Vec<Option<Vec<String>>> = column::<ListArray>(&batch, "isolating_policies")
            .iter()
            .map(|names| {
                let names = names?;
                let names = names.as_any().downcast_ref::<StringArray>()?;
                Some(names.iter().map(|n| n.unwrap().to_owned()).collect())
            })
            .collect();
        let names = |list: &[&str]| Some(list.iter().map(|n| (*n).to_owned()).collect());
        assert_eq!(
            policies,
            [
                None,
                names(&["shop/default-deny", "shop/web"]),
                None,
                None,
                None,
                names(&["shop/default-deny"]),
            ]
        );
    }

    #[test]
    fn address_text_is_what_display_writes() {
        let mut text = AddressText::default();
        let addresses = [
            "0.0.0.0",
            "1.2.3.4",
            "10.0.0.1",
            "10.0.0.1",
            "99.100.109.110",
            "198.18.1.255",
            "255.255.255.255",
            "::",
            "::1",
            "::ffff:10.0.0.1",
            "fd00:10:244::1f",
            "2001:db8::8a2e:370:7334",
        ];
        for address in addresses {
            let address: IpAddr = address.parse().unwrap();
            assert_eq!(text.of(address), address.to_string());
        }
    }
}
