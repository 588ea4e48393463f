//! The client: Debian's curl, run in the amazonlinux pod's network namespace.
//!
//! `curl NAME` is `ip netns exec <client netns> curl -sS --connect-timeout … --max-time …
//! http://NAME/`: curl resolves the name through the pod's `resolv.conf` (kube-dns's
//! ClusterIP, the search path, `ndots:5`), connects to the address it got (a ClusterIP, which
//! kube-proxy's DNAT sends to a backend pod) and prints the page. [`Outcome`] keeps what curl
//! itself said: its exit code (0, 6 for a name that does not resolve, 28 for a timeout, …),
//! the body it printed and its error line.

use std::net::IpAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::{LabError, topology::Topology};

/// The port `curl NAME` connects to.
pub const HTTP_PORT: u16 = 80;

/// How long curl may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// `--connect-timeout`: name resolution and the TCP connection.
    pub connect: Duration,
    /// `--max-time`: the whole transfer.
    pub total: Duration,
}

impl Default for Timeouts {
    /// 5 s to resolve and connect, 8 s in all: a lookup kube-dns never answers fails after
    /// the resolver's 1 s for each of the four names `ndots:5` and the search path make of
    /// `nginx` (exit 6, before the connect timeout); a denied connection ends with exit 28
    /// after 5 s.
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(5),
            total: Duration::from_secs(8),
        }
    }
}

/// What one curl run ended with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// curl's exit code (`-1` when it was killed by a signal).
    pub exit: i32,
    /// What it wrote to standard output (the page).
    pub body: String,
    /// Its error line (`curl: (6) Could not resolve host: nginx`), empty on success.
    pub error: String,
    /// How long it ran.
    pub elapsed: Duration,
}

impl Outcome {
    /// The line curl printed: for a page, the body line holding `marker` (else the first
    /// one); for a failure, its error line.
    pub fn curl_line(&self, marker: Option<&str>) -> String {
        if self.exit != 0 {
            return if self.error.is_empty() {
                format!("curl exited {}", self.exit)
            } else {
                self.error.clone()
            };
        }
        let mut lines = self.body.lines().map(str::trim);
        marker
            .and_then(|m| self.body.lines().map(str::trim).find(|l| l.contains(m)))
            .or_else(|| lines.find(|l| !l.is_empty()))
            .unwrap_or("(empty body)")
            .to_owned()
    }
}

/// curl in one pod.
#[derive(Debug, Clone)]
pub struct Client {
    pod: String,
    netns: String,
    timeouts: Timeouts,
}

impl Client {
    /// curl in pod `pod` (`namespace/name`) of `topology`.
    pub fn new(topology: &Topology, pod: &str, timeouts: Timeouts) -> Result<Self, LabError> {
        let link = topology
            .link(pod)
            .ok_or_else(|| LabError::Scenario(format!("client pod {pod} is not wired")))?;
        Ok(Self {
            pod: pod.to_owned(),
            netns: link.netns.clone(),
            timeouts,
        })
    }

    /// `curl HOST` (a name, or an address as it is): `GET /` on port 80.
    pub async fn curl(&self, host: &str) -> Result<Outcome, LabError> {
        let url = match host.parse::<IpAddr>() {
            Ok(IpAddr::V6(ip)) => format!("http://[{ip}]/"),
            _ => format!("http://{host}/"),
        };
        self.get(&url).await
    }

    /// `curl URL`, bounded by the client's timeouts.
    #[tracing::instrument(skip(self), fields(pod = %self.pod))]
    pub async fn get(&self, url: &str) -> Result<Outcome, LabError> {
        let started = Instant::now();
        let output = tokio::process::Command::new("ip")
            .args(["netns", "exec", &self.netns, "curl", "-sS", "-g"])
            .arg("--connect-timeout")
            .arg(seconds(self.timeouts.connect))
            .arg("--max-time")
            .arg(seconds(self.timeouts.total))
            .arg(url)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|error| LabError::Command {
                command: format!("ip netns exec {} curl {url}", self.netns),
                message: error.to_string(),
            })?;
        let outcome = Outcome {
            exit: output.status.code().unwrap_or(-1),
            body: String::from_utf8_lossy(&output.stdout).into_owned(),
            error: String::from_utf8_lossy(&output.stderr)
                .lines()
                .rfind(|l| !l.trim().is_empty())
                .unwrap_or_default()
                .trim()
                .to_owned(),
            elapsed: started.elapsed(),
        };
        tracing::debug!(exit = outcome.exit, elapsed_ms = outcome.elapsed.as_millis() as u64,
            error = %outcome.error, "curl done");
        Ok(outcome)
    }
}

/// A duration as curl's seconds (fractions allowed).
fn seconds(duration: Duration) -> String {
    format!("{:.3}", duration.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_print_like_curl() {
        let page = Outcome {
            exit: 0,
            body: "<!DOCTYPE html>\n<html>\n<head>\n<title>Welcome to nginx!</title>\n".into(),
            error: String::new(),
            elapsed: Duration::from_millis(5),
        };
        assert_eq!(
            page.curl_line(Some("Welcome to nginx!")),
            "<title>Welcome to nginx!</title>"
        );
        assert_eq!(page.curl_line(None), "<!DOCTYPE html>");
        let unresolved = Outcome {
            exit: 6,
            body: String::new(),
            error: "curl: (6) Could not resolve host: nginx".into(),
            elapsed: Duration::from_secs(4),
        };
        assert_eq!(
            unresolved.curl_line(Some("x")),
            "curl: (6) Could not resolve host: nginx"
        );
    }
}
