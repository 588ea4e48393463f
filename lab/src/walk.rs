//! The walk through the seed: pods → topology → the node agent (probe, maps, collector) →
//! servers → for each step: the agent syncs its policies, the checks run from the client pod,
//! the step's flow events are collected → the flow log's denied flows → report.
//!
//! Each resource is a guard owned by [`walk`]'s future: when the walk returns, fails, panics or
//! is dropped (a signal, the time limit), the servers stop, the agent stops and its bpffs is
//! unmounted (the probe detaches), and the namespaces are removed, in that order.

use std::path::Path;

use crate::{
    Attach, LabError,
    client::{Client, Timeouts},
    enforce::NodeAgent,
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
    let (mut flow_log, collector, tap) = FlowLog::new(topology.names().prefix(), out);
    let first = STEPS
        .first()
        .ok_or_else(|| LabError::Scenario("no steps".to_owned()))?
        .snapshot(&pods)?;
    let mut agent = NodeAgent::start(&topology, attach, collector, tap, first.clone())?;
    // The first step synced before any server or client socket exists: every veth has the
    // probe, and no pod packet escapes it.
    let mut first = Some(agent.synced(STEPS[0].number, &first).await?);
    let servers = Servers::start(&topology, &pods).await?;
    let client = Client::new(&topology, &pods, CLIENT_POD, Timeouts::default())?;

    let mut steps = Vec::with_capacity(STEPS.len());
    for step in &STEPS {
        let synced = match first.take() {
            Some(synced) => synced,
            None => agent.apply(step.number, &step.snapshot(&pods)?).await?,
        };
        let mut checks = Vec::with_capacity(step.checks.len());
        for check in step.checks {
            let outcome = client.curl(check.host).await?;
            let result = CheckResult::new(step.number, check, &outcome);
            tracing::info!(step = step.number, check = %result.check, ok = result.ok,
                observed = %result.observed, "check done");
            checks.push(result);
        }
        let barrier = agent.barrier().await?;
        let (events, undecodable) = flow_log.step_events(&barrier);
        steps.push(StepReport::new(
            step,
            checks,
            &events,
            undecodable,
            &synced.snapshot,
            &synced.compiled,
        ));
    }

    let state = agent.barrier().await?;
    let counters = named_counters(
        &state
            .counters
            .ok_or_else(|| LabError::Agent("the probe's counters could not be read".to_owned()))?,
    );
    // Every veth of one kernel gets the same mode; report the first.
    let attach_mode = state
        .attached
        .values()
        .next()
        .map_or_else(|| "none".to_owned(), ToString::to_string);
    drop(servers);
    let stopped = agent.stop().await?;
    let flow_log = flow_log.finish(&stopped, &state.collector)?;
    let report = LabReport {
        run: topology.names().prefix().to_string(),
        attach_mode,
        interfaces: topology.links().count(),
        steps,
        counters,
        flow_checks: DENIED_FLOWS
            .iter()
            .map(|denied| FlowCheck::new(denied, &flow_log))
            .collect(),
        flow_log,
    };
    drop(topology);
    Ok(report)
}
