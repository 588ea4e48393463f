//! `tollgate bench veth`: what the probe costs real traffic on the veths it sits on.
//!
//! Two pods, a client and a server, each in a network namespace of its own, wired to a node
//! namespace as the VPC CNI wires pods ([`Topology`]). The server's ingress policy has `rules`
//! CIDR rules; only the last allows the client. iperf3 measures what the server receives from
//! the client, over TCP (one stream) and over UDP (64-byte datagrams, as fast as the client can
//! send them), for `seconds` each. Each trial runs [`Mode::Unfiltered`] (no program on the
//! veths), then [`Mode::EmptyProgram`] (the probe's empty program on both hooks of both host
//! veths: what the hooks themselves cost), then [`Mode::Filtered`] (a freshly loaded probe
//! attached to both host veths, its maps synced from the policy). The report gives the median
//! received bit rate of each mode, and the empty program's and the probe's ratio to
//! unfiltered.
//!
//! Data flow: pods and policy (YAML) → [`LabPods`] → [`Topology`] (namespaces, veths, routes)
//! → per trial and mode: iperf3 server and client in the pods' namespaces → received bit rate.
//!
//! Network safety: every namespace is the run's own, addressed from 198.18.0.0/24 and removed
//! when the topology is dropped, on error too; each iperf3 run is bounded in time and killed
//! past its bound.

use std::io::Read;
use std::net::{IpAddr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tollgate_enforcer::{
    bench::median,
    compile::{Placement, compile},
    manifest::parse_manifests,
    probe::{AttachMode, Probe, ProbeError},
    sync::sync,
};

use crate::{
    LabError,
    family::IpFamily,
    names::RunNames,
    netns::in_netns,
    pods::{LabPod, LabPods},
    servers::wait_listening,
    topology::Topology,
};
use tollgate_enforcer::causes::Causes;

const SERVER: &str = "198.18.0.10";
const CLIENT: &str = "198.18.0.20";
/// iperf3's port (control connection and data, TCP and UDP).
const PORT: u16 = 5201;
/// Payload of the small-packet case: 64 bytes of UDP payload.
const UDP_PAYLOAD: &str = "64";

/// What `bench veth` measures.
#[derive(Debug, Clone, Copy)]
pub struct VethOptions {
    /// CIDR rules in the server's policy (the last allows the client); at least 1.
    pub rules: usize,
    /// Seconds of each iperf3 run.
    pub seconds: u32,
    /// Trials, each running every case in every [`Mode`].
    pub trials: u32,
}

/// What is on the host veths' hooks during a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// No program.
    Unfiltered,
    /// The probe's empty program (it passes every packet) on both hooks of both veths.
    EmptyProgram,
    /// The probe, its maps synced from the server's policy.
    Filtered,
}

impl Mode {
    const ALL: [Self; 3] = [Self::Unfiltered, Self::EmptyProgram, Self::Filtered];

    fn name(self) -> &'static str {
        match self {
            Self::Unfiltered => "unfiltered",
            Self::EmptyProgram => "empty program",
            Self::Filtered => "filtered",
        }
    }
}

/// One traffic case in every [`Mode`].
#[derive(Debug, Clone, serde::Serialize)]
pub struct VethResult {
    /// What was sent.
    pub case: &'static str,
    /// Median bit rate the server received with no program on the veths.
    pub unfiltered_bps: f64,
    /// Median bit rate the server received with the empty program on both host veths' hooks.
    pub empty_program_bps: f64,
    /// Median bit rate the server received with the probe on both host veths.
    pub filtered_bps: f64,
}

impl VethResult {
    /// Filtered over unfiltered.
    pub fn ratio(&self) -> f64 {
        self.filtered_bps / self.unfiltered_bps
    }

    /// The empty program's over unfiltered: what the hooks alone keep.
    pub fn empty_program_ratio(&self) -> f64 {
        self.empty_program_bps / self.unfiltered_bps
    }
}

/// The two traffic cases: TCP, and UDP of 64-byte datagrams.
const CASES: [(&str, &[&str]); 2] = [
    ("TCP, one stream", &[]),
    (
        "UDP, 64-byte datagrams",
        &["-u", "-l", UDP_PAYLOAD, "-b", "0"],
    ),
];

/// Runs the benchmark (needs root and iperf3).
pub fn veth(options: &VethOptions) -> Result<Vec<VethResult>, LabError> {
    if options.rules == 0 || options.seconds == 0 || options.trials == 0 {
        return Err(LabError::Scenario(
            "bench veth: rules, seconds and trials must each be at least 1".to_owned(),
        ));
    }
    let _span = tracing::info_span!(
        "bench_veth",
        rules = options.rules,
        seconds = options.seconds,
        trials = options.trials
    )
    .entered();
    let pods = bench_pods(options.rules)?;
    let topology = Topology::create(RunNames::new(), &pods, None)?;
    let link = |pod: &str| {
        topology
            .link(pod)
            .cloned()
            .ok_or_else(|| LabError::Scenario(format!("bench veth: pod {pod} is not wired")))
    };
    let (server, client) = (link("bench/server")?, link("bench/client")?);
    // Per case, per mode: each trial's received bit rate.
    let mut rates = vec![[const { Vec::new() }; Mode::ALL.len()]; CASES.len()];
    for trial in 0..options.trials {
        for (m, mode) in Mode::ALL.into_iter().enumerate() {
            // Attached for this trial's runs in this mode only: dropped, the probe detaches.
            let _probe = match mode {
                Mode::Unfiltered => None,
                Mode::EmptyProgram => Some(attach_empty(&topology)?),
                Mode::Filtered => Some(attach(&topology, &pods)?),
            };
            for ((case, args), rates) in CASES.iter().zip(&mut rates) {
                let bps = iperf3(&server.netns, &client.netns, args, options.seconds)?;
                tracing::info!(trial, mode = mode.name(), case, bps, "bench veth run");
                rates[m].push(bps);
            }
        }
    }
    Ok(CASES
        .iter()
        .zip(rates)
        .map(
            |((case, _), [unfiltered, empty_program, filtered])| VethResult {
                case,
                unfiltered_bps: median(unfiltered),
                empty_program_bps: median(empty_program),
                filtered_bps: median(filtered),
            },
        )
        .collect())
}

/// The table the `bench veth` command prints.
pub fn render(options: &VethOptions, results: &[VethResult]) -> String {
    let mut out = format!(
        "{} CIDR rules (the last allows the client), {} s per run, medians of {} trials; \
         EMPTY and RATIO: the empty program's and the probe's rate over unfiltered\n",
        options.rules, options.seconds, options.trials
    );
    out.push_str(&format!(
        "{:<26} {:>16} {:>19} {:>16} {:>8} {:>8}\n",
        "CASE", "UNFILTERED Mb/s", "EMPTY PROGRAM Mb/s", "FILTERED Mb/s", "EMPTY", "RATIO"
    ));
    for r in results {
        out.push_str(&format!(
            "{:<26} {:>16.1} {:>19.1} {:>16.1} {:>8.3} {:>8.3}\n",
            r.case,
            r.unfiltered_bps / 1e6,
            r.empty_program_bps / 1e6,
            r.filtered_bps / 1e6,
            r.empty_program_ratio(),
            r.ratio()
        ));
    }
    out
}

/// The client, the server and the server's policy: `rules` ipBlock peers, each a /24 of
/// 10.0.0.0/8 but the last, the client's address, on iperf3's port.
fn bench_pods(rules: usize) -> Result<LabPods, LabError> {
    let mut peers = String::new();
    for n in 0..rules - 1 {
        peers.push_str(&format!(
            "    - ipBlock: {{cidr: 10.{}.{}.0/24}}\n",
            n / 256,
            n % 256
        ));
    }
    peers.push_str(&format!("    - ipBlock: {{cidr: {CLIENT}/32}}\n"));
    let pod = |name: &str, ip: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: bench, labels: \
             {{app: {name}}}}}\nspec: {{containers: [{{name: {name}, image: amazonlinux}}]}}\n\
             status: {{phase: Running, podIP: {ip}, podIPs: [{{ip: {ip}}}]}}\n"
        )
    };
    let yaml = format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: bench, labels: \
         {{kubernetes.io/metadata.name: bench}}}}\n---\n{}---\n{}---\n\
         apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
         metadata: {{name: server, namespace: bench}}\n\
         spec:\n  podSelector: {{matchLabels: {{app: server}}}}\n  policyTypes: [Ingress]\n  \
         ingress:\n  - from:\n{peers}    ports: [{{port: {PORT}, protocol: TCP}}, \
         {{port: {PORT}, protocol: UDP}}]\n",
        pod("server", SERVER),
        pod("client", CLIENT),
    );
    let (snapshot, errors) = parse_manifests(&yaml, "bench veth");
    if !errors.is_empty() {
        return Err(LabError::Input {
            manifest: "bench veth".to_owned(),
            errors,
        });
    }
    let lab_pod = |name: &str, ip: &str| LabPod {
        namespace: "bench".to_owned(),
        name: name.to_owned(),
        ip: ip.parse().expect("a valid address"),
        serves: Vec::new(),
    };
    Ok(LabPods {
        family: IpFamily::V4,
        pods: vec![lab_pod("server", SERVER), lab_pod("client", CLIENT)],
        snapshot,
        names: Vec::new(),
    })
}

/// A freshly loaded probe with the pods' policy, attached to every host veth.
fn attach(topology: &Topology, pods: &LabPods) -> Result<Probe, LabError> {
    let mut probe = Probe::load().map_err(|e| agent(&e))?;
    let interfaces = topology.interfaces();
    let compiled = compile(
        &pods.snapshot,
        &Placement::Interfaces(&interfaces),
        &Default::default(),
    );
    if !compiled.errors.is_empty() {
        return Err(LabError::Compile {
            step: 0,
            errors: compiled.errors,
        });
    }
    sync(&mut probe.policy_maps(), &compiled.desired).map_err(|e| agent(&e))?;
    on_every_veth(topology, probe, Probe::attach)
}

/// A freshly loaded probe with its empty program attached to both hooks of every host veth.
fn attach_empty(topology: &Topology) -> Result<Probe, LabError> {
    let mut probe = Probe::load().map_err(|e| agent(&e))?;
    probe.load_floor().map_err(|e| agent(&e))?;
    on_every_veth(topology, probe, Probe::attach_floor)
}

/// `probe`, once `attach` has put its programs on every host veth, in the node's namespace.
fn on_every_veth(
    topology: &Topology,
    mut probe: Probe,
    attach: fn(&mut Probe, &str) -> Result<AttachMode, ProbeError>,
) -> Result<Probe, LabError> {
    for link in topology.links() {
        in_netns(topology.node_netns(), || {
            attach(&mut probe, &link.host_veth)
        })?
        .map_err(|e| agent(&e))?;
    }
    Ok(probe)
}

/// A failure of the probe, its maps or its attach, for `bench veth`.
fn agent(error: &(dyn std::error::Error + 'static)) -> LabError {
    LabError::Agent(format!("bench veth: {}", Causes(error)))
}

/// An iperf3 server in a pod's namespace, killed on drop.
struct Iperf3Server(Child);

impl Drop for Iperf3Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One iperf3 run from the client's namespace to the server's: the bit rate the server
/// received.
fn iperf3(
    server_netns: &str,
    client_netns: &str,
    args: &[&str],
    seconds: u32,
) -> Result<f64, LabError> {
    let port = PORT.to_string();
    let failed = |netns: &str, role: &str, message: String| LabError::Command {
        command: format!("ip netns exec {netns} iperf3 {role}"),
        message,
    };
    let server = Command::new("ip")
        .args([
            "netns",
            "exec",
            server_netns,
            "iperf3",
            "-s",
            "-1",
            "-B",
            SERVER,
        ])
        .args(["-p", &port])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| failed(server_netns, "-s", e.to_string()))?;
    let _server = Iperf3Server(server);
    let listening = SocketAddr::new(SERVER.parse::<IpAddr>().expect("a valid address"), PORT);
    if !wait_listening(server_netns, listening, true) {
        return Err(failed(
            server_netns,
            "-s",
            format!("not listening on {listening}"),
        ));
    }
    let client_failed = |message: String| failed(client_netns, "-c", message);
    let time = seconds.to_string();
    let mut client = Command::new("ip")
        .args([
            "netns",
            "exec",
            client_netns,
            "iperf3",
            "-c",
            SERVER,
            "-p",
            &port,
        ])
        .args(["-t", &time, "-i", "0", "-J", "--connect-timeout", "3000"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| client_failed(e.to_string()))?;
    // Bounded: the run takes `seconds`; past twice that and ten more, it is killed. Its JSON
    // report (no interval reports) fits the pipe, so waiting before reading cannot block it.
    let limit = Duration::from_secs(u64::from(seconds) * 2 + 10);
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = client
            .try_wait()
            .map_err(|e| client_failed(e.to_string()))?
        {
            break status;
        }
        if Instant::now() > deadline {
            let _ = client.kill();
            let _ = client.wait();
            return Err(client_failed(format!("not done within {limit:?}; killed")));
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut json = String::new();
    if let Some(mut stdout) = client.stdout.take() {
        stdout
            .read_to_string(&mut json)
            .map_err(|e| client_failed(e.to_string()))?;
    }
    let report: serde_json::Value = serde_json::from_str(&json)
        .map_err(|e| client_failed(format!("{status}; its JSON report: {e}")))?;
    report["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .ok_or_else(|| {
            client_failed(format!(
                "{status}; no end.sum_received.bits_per_second in its report (error: {})",
                report["error"]
            ))
        })
}
