//! The walk through the seed: pods → topology → the node agent (probe, maps, collector) →
//! servers → for each step: the agent syncs its policies, the checks run from the client pod,
//! the step's flow events are collected → (with `--quarantine`: the audit step, then the
//! client quarantined as `tollgate quarantine` does it, its checks, and at the end the
//! evidence bundle) → the flow log's denied flows → report.
//!
//! Each resource is a guard owned by [`walk`]'s future: when the walk returns, fails, panics or
//! is dropped (a signal, the time limit), the servers stop, the agent stops and its bpffs is
//! unmounted (the probe detaches), and the namespaces are removed, in that order.

use std::path::Path;

use tollgate_agent::daemon::Synced;

use crate::{
    Attach, LabError,
    client::{Client, Timeouts},
    enforce::NodeAgent,
    flowlog::FlowLog,
    isolate::Quarantined,
    names::RunNames,
    pods::LabPods,
    report::{CheckResult, FlowCheck, LabReport, StepReport, named_counters},
    scenario::{CLIENT_POD, DENIED_FLOWS, QUARANTINE_DENIED_FLOWS, QUARANTINE_STEPS, STEPS, Step},
    servers::Servers,
    topology::Topology,
};

/// Runs every step of the seed in a fresh topology named by `names`, and with `quarantine`
/// the incident steps after them.
pub async fn walk(
    names: RunNames,
    attach: Attach,
    out: Option<&Path>,
    quarantine: bool,
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

    let mut steps = Vec::with_capacity(STEPS.len() + QUARANTINE_STEPS.len());
    for step in &STEPS {
        let synced = match first.take() {
            Some(synced) => synced,
            None => agent.apply(step.number, &step.snapshot(&pods)?).await?,
        };
        steps.push(run_checks(step, synced, &mut agent, &client, &mut flow_log).await?);
    }
    let mut incident = None;
    if quarantine {
        let [audit, isolate] = &QUARANTINE_STEPS;
        let synced = agent.apply(audit.number, &audit.snapshot(&pods)?).await?;
        steps.push(run_checks(audit, synced, &mut agent, &client, &mut flow_log).await?);
        let quarantined = Quarantined::act(isolate.snapshot(&pods)?, flow_log.dir()).await?;
        let synced = agent.apply(isolate.number, &quarantined.snapshot).await?;
        let mut report = run_checks(isolate, synced, &mut agent, &client, &mut flow_log).await?;
        report.policies.push(quarantined.describe());
        steps.push(report);
        incident = Some(quarantined);
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
    let started_s = flow_log.started_s();
    let flow_log = flow_log.finish(&stopped, &state.collector)?;
    let incident = match incident {
        Some(quarantined) => Some(quarantined.evidence(&flow_log, started_s).await?),
        None => None,
    };
    let mut denied: Vec<_> = DENIED_FLOWS.iter().collect();
    if incident.is_some() {
        denied.extend(&QUARANTINE_DENIED_FLOWS);
    }
    let report = LabReport {
        run: topology.names().prefix().to_string(),
        attach_mode,
        interfaces: topology.links().count(),
        steps,
        counters,
        flow_checks: denied
            .into_iter()
            .map(|denied| FlowCheck::new(denied, &flow_log))
            .collect(),
        flow_log,
        incident,
    };
    drop(topology);
    Ok(report)
}

/// Runs `step`'s checks from the client once the agent `synced` its objects, and collects the
/// step's flow events.
async fn run_checks(
    step: &Step,
    synced: Synced,
    agent: &mut NodeAgent,
    client: &Client,
    flow_log: &mut FlowLog,
) -> Result<StepReport, LabError> {
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
    Ok(StepReport::new(
        step,
        checks,
        &events,
        undecodable,
        &synced.snapshot,
        &synced.compiled,
    ))
}
