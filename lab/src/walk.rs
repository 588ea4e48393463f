//! The walk through the seed: the cluster of one address family → topology → the node agent
//! (probe, maps, collector) → kube-proxy's chains from the Services' backends the agent
//! compiled → each pod's `resolv.conf` → servers → the kubelet → for each step: the agent syncs
//! its policies, the checks run from the client pod, the kubelet probes once more, the step's
//! flow events and probe results are collected → (with `--quarantine`: the audit step, then
//! the client quarantined as `tollgate quarantine` does it, its checks, and at the end the
//! evidence bundle) → the flow log's denied flows → report.
//!
//! Each resource is a guard owned by [`walk`]'s future: when the walk returns, fails, panics or
//! is dropped (a signal, the time limit), the kubelet stops, the servers stop, the pods'
//! `resolv.conf` go, the agent stops and its bpffs is unmounted (the probe detaches), and the
//! namespaces are removed (kube-proxy's chains with the node's), in that order.

use crate::{
    LabError, LabOptions,
    client::{Client, Timeouts},
    enforce::NodeAgent,
    flowlog::FlowLog,
    isolate::Quarantined,
    kubelet::Kubelet,
    kubeproxy,
    names::RunNames,
    pods::LabPods,
    report::{CheckResult, FlowCheck, LabReport, StepReport, named_counters},
    resolv::ResolvConfs,
    scenario::{CLIENT_POD, DENIED_FLOWS, QUARANTINE_DENIED_FLOWS, QUARANTINE_STEPS, STEPS, Step},
    servers::Servers,
    topology::Topology,
};

/// What a step's checks run with.
struct Harness<'a> {
    pods: &'a LabPods,
    agent: &'a mut NodeAgent,
    client: &'a Client,
    kubelet: &'a Kubelet,
    flow_log: &'a mut FlowLog,
}

/// Runs every step of the seed in a fresh topology named by `names`, and with
/// `--quarantine` the incident steps after them.
pub async fn walk(names: RunNames, options: &LabOptions) -> Result<LabReport, LabError> {
    let pods = LabPods::embedded(options.ip_family)?;
    let topology = Topology::create(names, &pods, options.sgp.then_some(CLIENT_POD))?;
    let (mut flow_log, collector, tap) = FlowLog::new(
        topology.names().prefix(),
        options.out.as_deref(),
        options.ocsf,
    );
    let first = STEPS
        .first()
        .ok_or_else(|| LabError::Scenario("no steps".to_owned()))?
        .snapshot(&pods)?;
    let mut agent = NodeAgent::start(&topology, options.attach, collector, tap, first.clone())?;
    // The first step synced before any server or client socket exists: every veth has the
    // probe, and no pod packet escapes it.
    let synced = agent.synced(STEPS[0].number).await?;
    kubeproxy::install(
        topology.node_netns(),
        &synced.compiled.services,
        topology.family(),
    )?;
    let mut first_synced = true;
    let dns = pods.dns_cluster_ip()?;
    let pod_netns = pods.pods.iter().filter_map(|pod| {
        let link = topology.link(&pod.key())?;
        Some((link.netns.as_str(), pod.namespace.as_str()))
    });
    let resolv = ResolvConfs::write(pod_netns, dns)?;
    let servers = Servers::start(&topology, &pods).await?;
    let kubelet = Kubelet::start(&topology, &pods);
    let client = Client::new(&topology, CLIENT_POD, Timeouts::default())?;
    let mut harness = Harness {
        pods: &pods,
        agent: &mut agent,
        client: &client,
        kubelet: &kubelet,
        flow_log: &mut flow_log,
    };

    let mut steps = Vec::with_capacity(STEPS.len() + QUARANTINE_STEPS.len());
    for step in &STEPS {
        if !std::mem::take(&mut first_synced) {
            harness
                .agent
                .apply(step.number, &step.snapshot(&pods)?)
                .await?;
        }
        steps.push(run_checks(step, &mut harness).await?);
    }
    let mut incident = None;
    if options.quarantine {
        let [audit, isolate] = &QUARANTINE_STEPS;
        harness
            .agent
            .apply(audit.number, &audit.snapshot(&pods)?)
            .await?;
        steps.push(run_checks(audit, &mut harness).await?);
        let quarantined =
            Quarantined::act(isolate.snapshot(&pods)?, harness.flow_log.dir()).await?;
        harness
            .agent
            .apply(isolate.number, &quarantined.snapshot)
            .await?;
        let mut report = run_checks(isolate, &mut harness).await?;
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
    drop(kubelet);
    drop(servers);
    drop(resolv);
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
        ip_family: topology.family().to_string(),
        attach_mode,
        interfaces: topology.links().count(),
        branch_eni: topology
            .links()
            .filter(|link| link.branch_eni)
            .map(|link| (link.pod.clone(), link.host_veth.clone()))
            .collect(),
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

/// Runs `step`'s checks from the client once the agent synced its objects, has the kubelet
/// probe once more, and collects the step's probe results and flow events.
async fn run_checks(step: &Step, harness: &mut Harness<'_>) -> Result<StepReport, LabError> {
    let mut checks = Vec::with_capacity(step.checks.len());
    for check in step.checks {
        let host = check.host(harness.pods)?;
        let outcome = harness.client.curl(&host).await?;
        let result = CheckResult::new(step.number, check, &host, &outcome);
        tracing::info!(step = step.number, check = %result.check, ok = result.ok,
            exit = result.exit_code, observed = %result.observed, "check done");
        checks.push(result);
    }
    harness.kubelet.round().await;
    let kubelet = harness.kubelet.take();
    let barrier = harness.agent.barrier().await?;
    let (flows, undecodable) = harness.flow_log.step_events(&barrier);
    Ok(StepReport::new(step, checks, kubelet, flows, undecodable))
}
