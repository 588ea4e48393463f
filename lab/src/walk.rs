//! The walk through the seed: pods → topology → probe → servers → for each step: compile and
//! sync its policies, run its checks from the client pod, drain its flow events → report.
//!
//! Each resource is a guard owned by [`walk`]'s future: when the walk returns, fails, panics or
//! is dropped (a signal, the time limit), the servers stop, the probe detaches and the
//! namespaces are removed, in that order.

use crate::{
    Attach, LabError,
    client::{Client, Timeouts},
    enforce::Enforcement,
    names::RunNames,
    pods::LabPods,
    report::{CheckResult, LabReport, StepReport, named_counters},
    scenario::{CLIENT_POD, STEPS},
    servers::Servers,
    topology::Topology,
};

/// Runs every step of the seed in a fresh topology named by `names`.
pub async fn walk(names: RunNames, attach: Attach) -> Result<LabReport, LabError> {
    let pods = LabPods::embedded()?;
    let topology = Topology::create(names, &pods)?;
    // Attached before any server or client socket exists: no pod packet escapes the probe.
    let mut enforcement = Enforcement::start(&topology, attach)?;
    let servers = Servers::start(&topology, &pods).await?;
    let client = Client::new(&topology, &pods, CLIENT_POD, Timeouts::default())?;

    let mut steps = Vec::with_capacity(STEPS.len());
    for step in &STEPS {
        let snapshot = step.snapshot(&pods)?;
        let compiled = enforcement.apply(step.number, &snapshot)?;
        let mut checks = Vec::with_capacity(step.checks.len());
        for check in step.checks {
            let outcome = client.curl(check.host).await?;
            let result = CheckResult::new(step.number, check, &outcome);
            tracing::info!(step = step.number, check = %result.check, ok = result.ok,
                observed = %result.observed, "check done");
            checks.push(result);
        }
        let drained = enforcement.drain()?;
        steps.push(StepReport::new(
            step,
            checks,
            &drained.events,
            drained.undecodable,
            &snapshot,
            &compiled,
        ));
    }

    let report = LabReport {
        run: topology.names().prefix().to_string(),
        attach_mode: enforcement.attach_mode().to_string(),
        interfaces: topology.links().count(),
        steps,
        counters: named_counters(&enforcement.counters()?),
    };
    drop(servers);
    drop(enforcement);
    drop(topology);
    Ok(report)
}
