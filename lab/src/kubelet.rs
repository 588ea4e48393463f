//! The lab's kubelet: liveness probes from the node to every pod, throughout the run.
//!
//! Each pod's serving port gets the probe its image has on EKS, sent from the node namespace,
//! so from the node's own address: an HTTP `GET /` to nginx's and httpd's port (curl, as
//! `kube-probe`; a status of 200-399 passes) and a TCP connection to kube-dns's DNS port (a
//! `tcpSocket` probe). [`Kubelet::start`] probes every pod once per [`PERIOD`] on a task of its
//! own, bounded in count by the run's time limit and each probe by [`PROBE_TIMEOUT`];
//! [`Kubelet::round`] probes once more at the end of a step, so every step has its results, and
//! [`Kubelet::take`] hands over the tally since the last call. NetworkPolicy never applies to
//! a pod's own node (the API says so): the probes must pass in every step, the seed's all-deny
//! included, or the kubelet would restart the pods.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpStream};
use std::process::Stdio;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::{
    RUN_TIME_LIMIT,
    netns::in_netns,
    pods::{LabPods, Serves},
    topology::Topology,
};

/// How often every pod is probed (the kubelet's `periodSeconds`, shortened).
pub const PERIOD: Duration = Duration::from_secs(1);
/// Longest one probe may take (`timeoutSeconds`).
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// One probe of one pod.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Probe {
    pod: String,
    kind: Kind,
    addr: SocketAddr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    HttpGet,
    TcpSocket,
}

impl Probe {
    fn describe(&self) -> String {
        match self.kind {
            Kind::HttpGet => format!("httpGet http://{}/", self.addr),
            Kind::TcpSocket => format!("tcpSocket {}", self.addr),
        }
    }
}

/// What one probe of one pod did during a step.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ProbeTally {
    /// The pod, `namespace/name`.
    pub pod: String,
    /// The probe (`httpGet http://198.18.0.20:80/`).
    pub probe: String,
    /// Probes that passed.
    pub succeeded: u32,
    /// Probes that failed.
    pub failed: u32,
    /// Why the last failure failed.
    pub last_error: Option<String>,
}

impl ProbeTally {
    /// Whether it was probed and never failed.
    pub fn ok(&self) -> bool {
        self.succeeded > 0 && self.failed == 0
    }

    /// `3 of 3 passed`, or how many failed and why the last one did.
    pub fn describe(&self) -> String {
        let total = self.succeeded + self.failed;
        match &self.last_error {
            Some(error) if self.failed > 0 => {
                format!("{} of {total} failed (last: {error})", self.failed)
            }
            _ => format!("{} of {total} passed", self.succeeded),
        }
    }
}

type Tallies = Arc<Mutex<BTreeMap<(String, String), ProbeTally>>>;

/// The kubelet of the lab's node; dropping it stops the probes.
#[derive(Debug)]
pub struct Kubelet {
    node: String,
    probes: Arc<Vec<Probe>>,
    tallies: Tallies,
    task: JoinHandle<()>,
}

impl Kubelet {
    /// Starts probing every pod of `pods` that serves something, from `topology`'s node.
    pub fn start(topology: &Topology, pods: &LabPods) -> Self {
        let probes: Vec<Probe> = pods
            .pods
            .iter()
            .flat_map(|pod| {
                pod.serves.iter().map(|serves| Probe {
                    pod: pod.key(),
                    kind: match serves {
                        Serves::Http { .. } => Kind::HttpGet,
                        Serves::Dns { .. } => Kind::TcpSocket,
                    },
                    addr: SocketAddr::new(pod.ip, serves.port()),
                })
            })
            .collect();
        let probes = Arc::new(probes);
        let tallies = Tallies::default();
        let node = topology.node_netns().to_owned();
        let task = tokio::spawn({
            let (node, probes, tallies) = (node.clone(), Arc::clone(&probes), Arc::clone(&tallies));
            async move {
                let rounds = RUN_TIME_LIMIT.as_millis() / PERIOD.as_millis();
                for _ in 0..rounds {
                    tokio::time::sleep(PERIOD).await;
                    probe_all(&node, &probes, &tallies).await;
                }
            }
        });
        Self {
            node,
            probes,
            tallies,
            task,
        }
    }

    /// Probes every pod once, now.
    pub async fn round(&self) {
        probe_all(&self.node, &self.probes, &self.tallies).await;
    }

    /// Every probe's tally since the last call, by pod.
    pub fn take(&self) -> Vec<ProbeTally> {
        std::mem::take(&mut *self.tallies.lock().unwrap_or_else(PoisonError::into_inner))
            .into_values()
            .collect()
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tracing::instrument(skip_all, fields(node))]
async fn probe_all(node: &str, probes: &[Probe], tallies: &Tallies) {
    for probe in probes {
        let result = match probe.kind {
            Kind::HttpGet => http_get(node, probe.addr).await,
            Kind::TcpSocket => tcp_socket(node, probe.addr).await,
        };
        if let Err(error) = &result {
            tracing::warn!(pod = %probe.pod, probe = %probe.describe(), %error, "kubelet probe failed");
        }
        let mut tallies = tallies.lock().unwrap_or_else(PoisonError::into_inner);
        let tally = tallies
            .entry((probe.pod.clone(), probe.describe()))
            .or_insert_with(|| ProbeTally {
                pod: probe.pod.clone(),
                probe: probe.describe(),
                succeeded: 0,
                failed: 0,
                last_error: None,
            });
        match result {
            Ok(()) => tally.succeeded += 1,
            Err(error) => {
                tally.failed += 1;
                tally.last_error = Some(error);
            }
        }
    }
}

/// `GET /` from the node, as the kubelet's `httpGet` probe: a status of 200-399 passes.
async fn http_get(node: &str, addr: SocketAddr) -> Result<(), String> {
    let output = tokio::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            node,
            "curl",
            "-sS",
            "-g",
            "-o",
            "/dev/null",
        ])
        .args(["-w", "%{http_code}", "-A", "kube-probe/1.31", "--max-time"])
        .arg(format!("{:.3}", PROBE_TIMEOUT.as_secs_f64()))
        .arg(format!("http://{addr}/"))
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|error| format!("running curl: {error}"))?;
    let status = String::from_utf8_lossy(&output.stdout);
    match status.trim().parse::<u16>() {
        Ok(code) if (200..400).contains(&code) => Ok(()),
        _ => Err(format!(
            "HTTP {}: {}",
            status.trim(),
            String::from_utf8_lossy(&output.stderr).trim()
        )),
    }
}

/// A TCP connection from the node, closed at once, as the kubelet's `tcpSocket` probe.
async fn tcp_socket(node: &str, addr: SocketAddr) -> Result<(), String> {
    let node = node.to_owned();
    let connected = tokio::task::spawn_blocking(move || {
        in_netns(&node, || TcpStream::connect_timeout(&addr, PROBE_TIMEOUT))
    })
    .await
    .map_err(|error| error.to_string())?;
    match connected {
        Ok(Ok(_stream)) => Ok(()),
        Ok(Err(error)) => Err(error.to_string()),
        Err(error) => Err(error.to_string()),
    }
}
