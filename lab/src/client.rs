//! The curl-like client that runs in the amazonlinux pod.
//!
//! `curl NAME` goes: a DNS A query over UDP to kube-dns ([`crate::dns`]; a short timeout and
//! one retry) → a TCP connection to port 80 of the address (with a timeout) → `GET /`
//! ([`crate::http`]) → the whole response, read until the server closes (bounded in size and
//! time). Each socket is created inside the client pod's namespace, then driven by tokio. The
//! result is an [`Outcome`], which prints as curl would print it.

use std::hash::{BuildHasher, Hasher};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, UdpSocket};

use crate::{
    LabError,
    dns::{self, Resolution},
    http::{self, MAX_RESPONSE_LEN},
    netns::in_netns,
    pods::LabPods,
    topology::Topology,
};

/// The port `curl NAME` connects to.
pub const HTTP_PORT: u16 = 80;
/// Most datagrams read per DNS attempt (stray or mismatched replies are skipped).
const MAX_DATAGRAMS_PER_ATTEMPT: usize = 16;

/// How long each stage of a request may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Wait for a DNS reply, per attempt.
    pub dns_attempt: Duration,
    /// DNS attempts (the first one and its retries).
    pub dns_attempts: u32,
    /// Wait for the TCP connection.
    pub connect: Duration,
    /// Wait for the request to be sent and the whole response read.
    pub transfer: Duration,
}

impl Default for Timeouts {
    /// 1 s per DNS attempt, two attempts, 2 s to connect, 3 s for the transfer: a denied flow
    /// shows within 2 s, and the whole seed walk stays well under a minute.
    fn default() -> Self {
        Self {
            dns_attempt: Duration::from_secs(1),
            dns_attempts: 2,
            connect: Duration::from_secs(2),
            transfer: Duration::from_secs(3),
        }
    }
}

/// What `curl NAME` ended with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The server answered.
    Response {
        /// HTTP status code.
        status: u16,
        /// The body, as text.
        body: String,
    },
    /// curl exit 6: the name did not resolve (no answer, NXDOMAIN or no address).
    CouldNotResolve {
        /// The name.
        host: String,
    },
    /// curl exit 28: the connection was not established in time.
    ConnectTimeout {
        /// The name.
        host: String,
        /// The port.
        port: u16,
        /// Time from the start of the connection attempt.
        elapsed: Duration,
    },
    /// curl exit 7: the connection failed (refused, unreachable).
    ConnectFailed {
        /// The name.
        host: String,
        /// The port.
        port: u16,
        /// Time from the start of the connection attempt.
        elapsed: Duration,
        /// The socket error.
        error: String,
    },
    /// curl exit 52: the server closed the connection without a byte.
    EmptyReply,
    /// curl exit 56: reading the response failed.
    RecvFailure {
        /// The socket error.
        error: String,
    },
    /// curl exit 8: the response is not HTTP.
    WeirdReply {
        /// What is wrong with it.
        error: String,
    },
    /// curl exit 28: the transfer did not finish in time.
    TransferTimeout {
        /// Time from the start of the transfer.
        elapsed: Duration,
    },
}

impl Outcome {
    /// The line curl would print: for a response, the body line holding `marker` (else the
    /// first line); for a failure, curl's error line.
    pub fn curl_line(&self, marker: Option<&str>) -> String {
        match self {
            Self::Response { status, body } => {
                let mut lines = body.lines().map(str::trim);
                let line = marker
                    .and_then(|m| body.lines().map(str::trim).find(|l| l.contains(m)))
                    .or_else(|| lines.find(|l| !l.is_empty()))
                    .unwrap_or("(empty body)");
                if *status == 200 {
                    line.to_string()
                } else {
                    format!("HTTP {status}: {line}")
                }
            }
            Self::CouldNotResolve { host } => format!("curl: (6) Could not resolve host: {host}"),
            Self::ConnectTimeout {
                host,
                port,
                elapsed,
            } => format!(
                "curl: (28) Failed to connect to {host} port {port} after {} ms: \
                 Couldn't connect to server",
                elapsed.as_millis()
            ),
            Self::ConnectFailed {
                host,
                port,
                elapsed,
                error,
            } => format!(
                "curl: (7) Failed to connect to {host} port {port} after {} ms: \
                 Couldn't connect to server ({error})",
                elapsed.as_millis()
            ),
            Self::EmptyReply => "curl: (52) Empty reply from server".to_string(),
            Self::RecvFailure { error } => format!("curl: (56) Recv failure: {error}"),
            Self::WeirdReply { error } => format!("curl: (8) Weird server reply: {error}"),
            Self::TransferTimeout { elapsed } => format!(
                "curl: (28) Operation timed out after {} milliseconds",
                elapsed.as_millis()
            ),
        }
    }
}

/// The client of one pod.
#[derive(Debug, Clone)]
pub struct Client {
    pod: String,
    netns: String,
    dns_server: SocketAddrV4,
    timeouts: Timeouts,
}

impl Client {
    /// A client in pod `pod` (`namespace/name`) asking the lab's DNS server.
    pub fn new(
        topology: &Topology,
        pods: &LabPods,
        pod: &str,
        timeouts: Timeouts,
    ) -> Result<Self, LabError> {
        let link = topology
            .link(pod)
            .ok_or_else(|| LabError::Scenario(format!("client pod {pod} is not wired")))?;
        let (dns_pod, dns_port) = pods.dns_server()?;
        Ok(Self {
            pod: pod.to_string(),
            netns: link.netns.clone(),
            dns_server: SocketAddrV4::new(dns_pod.ip, dns_port),
            timeouts,
        })
    }

    /// `curl HOST`: resolve, connect to port 80, `GET /`, read the response.
    ///
    /// Errors are for a client that could not run (its sockets could not be created); every
    /// network outcome, failures included, is an [`Outcome`].
    pub async fn curl(&self, host: &str) -> Result<Outcome, LabError> {
        // An address is used as it is, as curl does: no DNS query.
        if let Ok(ip) = host.parse::<Ipv4Addr>() {
            return self.fetch(host, ip).await;
        }
        let Some(ip) = self.resolve(host).await? else {
            return Ok(Outcome::CouldNotResolve {
                host: host.to_string(),
            });
        };
        self.fetch(host, ip).await
    }

    /// The first A record of `host`, or `None` when resolution fails.
    pub async fn resolve(&self, host: &str) -> Result<Option<Ipv4Addr>, LabError> {
        // The low 16 bits of a random number.
        let query_id = random_u64() as u16;
        let Ok(query) = dns::encode_query(query_id, host) else {
            return Ok(None);
        };
        let socket = in_netns(&self.netns, || {
            let socket = std::net::UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0))?;
            socket.set_nonblocking(true)?;
            Ok(socket)
        })?
        .and_then(UdpSocket::from_std)
        .map_err(|source| self.socket_error("DNS client socket", source))?;
        if let Err(source) = socket.connect(self.dns_server).await {
            return Err(self.socket_error("DNS client socket", source));
        }

        for attempt in 1..=self.timeouts.dns_attempts {
            if let Err(error) = socket.send(&query).await {
                tracing::debug!(pod = %self.pod, host, attempt, %error, "DNS query not sent");
                continue;
            }
            let deadline = tokio::time::Instant::now() + self.timeouts.dns_attempt;
            let mut buf = [0u8; 1500];
            for _ in 0..MAX_DATAGRAMS_PER_ATTEMPT {
                let received = tokio::time::timeout_at(deadline, socket.recv(&mut buf)).await;
                let len = match received {
                    Err(_) => break,
                    Ok(Err(error)) => {
                        tracing::debug!(pod = %self.pod, host, attempt, %error, "DNS receive failed");
                        break;
                    }
                    Ok(Ok(len)) => len,
                };
                match dns::parse_response(&buf[..len], query_id, host) {
                    Ok(Resolution::Addresses(addrs)) => return Ok(addrs.first().copied()),
                    Ok(Resolution::NoSuchName | Resolution::Failed { .. }) => return Ok(None),
                    Err(error) => {
                        tracing::debug!(pod = %self.pod, host, %error, "DNS reply ignored");
                    }
                }
            }
            tracing::debug!(pod = %self.pod, host, attempt, "DNS attempt without answer");
        }
        Ok(None)
    }

    /// Connects to `ip` port 80, sends `GET /` for `host` and reads the response.
    async fn fetch(&self, host: &str, ip: Ipv4Addr) -> Result<Outcome, LabError> {
        let socket = in_netns(&self.netns, TcpSocket::new_v4)?
            .map_err(|source| self.socket_error("HTTP client socket", source))?;
        let start = Instant::now();
        let connected = tokio::time::timeout(
            self.timeouts.connect,
            socket.connect(SocketAddr::from((ip, HTTP_PORT))),
        )
        .await;
        let mut stream = match connected {
            Err(_) => {
                return Ok(Outcome::ConnectTimeout {
                    host: host.to_string(),
                    port: HTTP_PORT,
                    elapsed: start.elapsed(),
                });
            }
            Ok(Err(error)) => {
                return Ok(Outcome::ConnectFailed {
                    host: host.to_string(),
                    port: HTTP_PORT,
                    elapsed: start.elapsed(),
                    error: error.to_string(),
                });
            }
            Ok(Ok(stream)) => stream,
        };

        let start = Instant::now();
        let transfer = async {
            stream.write_all(&http::encode_get(host)).await?;
            let mut response = Vec::new();
            let limit = u64::try_from(MAX_RESPONSE_LEN).unwrap_or(u64::MAX);
            (&mut stream).take(limit).read_to_end(&mut response).await?;
            Ok::<_, std::io::Error>(response)
        };
        let response = match tokio::time::timeout(self.timeouts.transfer, transfer).await {
            Err(_) => {
                return Ok(Outcome::TransferTimeout {
                    elapsed: start.elapsed(),
                });
            }
            Ok(Err(error)) => {
                return Ok(Outcome::RecvFailure {
                    error: error.to_string(),
                });
            }
            Ok(Ok(response)) => response,
        };
        if response.is_empty() {
            return Ok(Outcome::EmptyReply);
        }
        Ok(match http::parse_response(&response) {
            Ok(parsed) => Outcome::Response {
                status: parsed.status,
                body: String::from_utf8_lossy(&parsed.body).into_owned(),
            },
            Err(error) => Outcome::WeirdReply {
                error: error.to_string(),
            },
        })
    }

    fn socket_error(&self, what: &str, source: std::io::Error) -> LabError {
        LabError::Socket {
            pod: self.pod.clone(),
            what: what.to_string(),
            source,
        }
    }
}

/// A random number from the standard library's per-process hash keys (query ids need to be
/// unpredictable across runs, not cryptographically strong).
fn random_u64() -> u64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_print_like_curl() {
        let nginx = Outcome::Response {
            status: 200,
            body: crate::pods::Page::NginxWelcome.html().to_string(),
        };
        assert_eq!(
            nginx.curl_line(Some("Welcome to nginx!")),
            "<title>Welcome to nginx!</title>"
        );
        assert_eq!(nginx.curl_line(None), "<!DOCTYPE html>");
        let not_found = Outcome::Response {
            status: 404,
            body: String::new(),
        };
        assert_eq!(not_found.curl_line(Some("x")), "HTTP 404: (empty body)");
        assert_eq!(
            Outcome::CouldNotResolve {
                host: "nginx".into()
            }
            .curl_line(None),
            "curl: (6) Could not resolve host: nginx"
        );
        assert_eq!(
            Outcome::ConnectTimeout {
                host: "httpd".into(),
                port: 80,
                elapsed: Duration::from_millis(2001)
            }
            .curl_line(None),
            "curl: (28) Failed to connect to httpd port 80 after 2001 ms: Couldn't connect to server"
        );
    }
}
