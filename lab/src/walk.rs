//! The walk through the seed: pods → topology → probe → flow log (the collector) → servers →
//! for each step: compile and sync its policies, tell the flow log, run its checks from the
//! client pod, collect its flow events → the flow log's denied flows → report.
//!
//! Each resource is a guard owned by [`walk`]'s future: when the walk returns, fails, panics or
//! is dropped (a signal, the time limit), the servers stop, the probe detaches and the
//! namespaces are removed, in that order.

use std::path::Path;

use crate::{
    Attach, LabError,
    client::{Client, Timeouts},
    enforce::Enforcement,
    flowlog::FlowLog,
    names::RunNames,
    pods::LabPods,
    report::{CheckResult, FlowCheck, LabReport, StepReport, named_counters},
    scenario::{CLIENT_POD, DENIED_FLOWS, STEPS},
    servers::Servers,
    topology::Topology,
};

/// Runs every step of the seed in a fresh topology named by `names`.
pub async fn walk(
    names: RunNames,
    attach: Attach,
    out: Option<&Path>,
) -> Result<LabReport, LabError> {
    let pods = LabPods::embedded()?;
    let topology = Topology::create(names, &pods)?;
    // Attached before any server or client socket exists: no pod packet escapes the probe.
    let mut enforcement = Enforcement::start(&topology, attach)?;
    let flow_log =
        FlowLog::start(enforcement.take_events()?, topology.names().prefix(), out).await?;
    let servers = Servers::start(&topology, &pods).await?;
    let client = Client::new(&topology, &pods, CLIENT_POD, Timeouts::default())?;

    let mut steps = Vec::with_capacity(STEPS.len());
    for step in &STEPS {
        let snapshot = step.snapshot(&pods)?;
        let compiled = enforcement.apply(step.number, &snapshot)?;
        flow_log.observe(&snapshot, &compiled);
        let mut checks = Vec::with_capacity(step.checks.len());
        for check in step.checks {
            let outcome = client.curl(check.host).await?;
            let result = CheckResult::new(step.number, check, &outcome);
            tracing::info!(step = step.number, check = %result.check, ok = result.ok,
                observed = %result.observed, "check done");
            checks.push(result);
        }
        let (events, undecodable) = flow_log.step_events().await?;
        steps.push(StepReport::new(
            step,
            checks,
            &events,
            undecodable,
            &snapshot,
            &compiled,
        ));
    }

    let counters = named_counters(&enforcement.counters()?);
    let flow_log = flow_log.finish().await?;
    let report = LabReport {
        run: topology.names().prefix().to_string(),
        attach_mode: enforcement.attach_mode().to_string(),
        interfaces: topology.links().count(),
        steps,
        counters,
        flow_checks: DENIED_FLOWS
            .iter()
            .map(|denied| FlowCheck::new(denied, &flow_log))
            .collect(),
        flow_log,
    };
    drop(servers);
    drop(enforcement);
    drop(topology);
    Ok(report)
}
