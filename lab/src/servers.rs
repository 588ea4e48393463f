//! The pods' servers: nginx and httpd over HTTP, kube-dns over DNS, each inside its pod.
//!
//! [`Servers::start`] binds every socket on a thread inside the pod's namespace (see
//! [`crate::netns::in_netns`]; a socket stays in the namespace it was created in), then hands
//! it to tokio: an accept loop per HTTP socket, each connection read (bounded in size and
//! time), parsed and answered by [`crate::http::route`]; a receive loop per DNS socket, each
//! datagram answered by [`crate::dns::Zone::answer`]. Dropping [`Servers`] aborts every loop
//! and connection, which closes the sockets.

use std::net::{SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::{JoinHandle, JoinSet};

use crate::{
    LabError,
    dns::Zone,
    http::{self, MAX_HEAD_LEN},
    netns::in_netns,
    pods::{LabPods, Page, Service},
    topology::Topology,
};

/// Longest a client may take to send its request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause after a failed accept, so a persistent error does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// Largest DNS datagram read; anything longer is cut and answered FORMERR.
const DNS_BUFFER_LEN: usize = 4096;

/// The running servers of every pod; dropping it stops them.
#[derive(Debug)]
pub struct Servers {
    tasks: Vec<JoinHandle<()>>,
}

impl Servers {
    /// Binds and starts every server of every pod of `pods`, each in its pod's namespace.
    pub async fn start(topology: &Topology, pods: &LabPods) -> Result<Self, LabError> {
        let zone = Arc::new(pods.zone.clone());
        let mut servers = Self { tasks: Vec::new() };
        for pod in &pods.pods {
            let key = pod.key();
            let link = topology
                .link(&key)
                .ok_or_else(|| LabError::Scenario(format!("pod {key} is not wired")))?;
            for service in &pod.services {
                let task = match *service {
                    Service::Http { port, page } => {
                        let addr = SocketAddrV4::new(pod.ip, port);
                        let listener = in_netns(&link.netns, || bind_tcp(addr))?
                            .and_then(TcpListener::from_std)
                            .map_err(|source| socket_error(&key, "HTTP listener", addr, source))?;
                        tracing::debug!(pod = %key, %addr, "HTTP server listening");
                        tokio::spawn(serve_http(listener, key.clone(), page))
                    }
                    Service::Dns { port } => {
                        let addr = SocketAddrV4::new(pod.ip, port);
                        let socket = in_netns(&link.netns, || bind_udp(addr))?
                            .and_then(UdpSocket::from_std)
                            .map_err(|source| socket_error(&key, "DNS socket", addr, source))?;
                        tracing::debug!(pod = %key, %addr, "DNS server listening");
                        tokio::spawn(serve_dns(socket, key.clone(), Arc::clone(&zone)))
                    }
                };
                servers.tasks.push(task);
            }
        }
        Ok(servers)
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

fn socket_error(pod: &str, what: &str, addr: SocketAddrV4, source: std::io::Error) -> LabError {
    LabError::Socket {
        pod: pod.to_string(),
        what: format!("{what} on {addr}"),
        source,
    }
}

fn bind_tcp(addr: SocketAddrV4) -> std::io::Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

fn bind_udp(addr: SocketAddrV4) -> std::io::Result<std::net::UdpSocket> {
    let socket = std::net::UdpSocket::bind(addr)?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}

/// Accepts connections until aborted; each is served on its own task, aborted with the loop.
async fn serve_http(listener: TcpListener, pod: String, page: Page) {
    let mut connections = JoinSet::new();
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                connections.spawn(serve_connection(stream, peer, pod.clone(), page));
            }
            Err(error) => {
                tracing::warn!(pod = %pod, %error, "accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
        // Reap finished connections so the set does not grow with the run.
        while connections.try_join_next().is_some() {}
    }
}

/// Reads one request (at most [`MAX_HEAD_LEN`] bytes, within [`REQUEST_TIMEOUT`]), answers
/// it and closes the connection.
async fn serve_connection(mut stream: TcpStream, peer: SocketAddr, pod: String, page: Page) {
    let read = tokio::time::timeout(REQUEST_TIMEOUT, read_head(&mut stream)).await;
    let request = match read {
        Ok(Ok(head)) => http::parse_request(&head),
        Ok(Err(error)) => {
            tracing::debug!(pod = %pod, %peer, %error, "request not read");
            return;
        }
        Err(_) => {
            tracing::debug!(pod = %pod, %peer, "request timed out");
            return;
        }
    };
    let response = http::route(&request, page.server(), page.html());
    tracing::debug!(pod = %pod, %peer, status = response.status, "request served");
    let written = stream.write_all(&response.encode()).await;
    if let Err(error) = written.and(stream.shutdown().await) {
        tracing::debug!(pod = %pod, %peer, %error, "response not written");
    }
}

/// The request's header section, or what was read when the limit was reached or the client
/// stopped sending (so it gets a 400 rather than nothing).
async fn read_head(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(len) = http::head_len(&buf) {
            buf.truncate(len);
            return Ok(buf);
        }
        if buf.len() >= MAX_HEAD_LEN {
            return Ok(buf);
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(buf);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Answers datagrams until aborted.
async fn serve_dns(socket: UdpSocket, pod: String, zone: Arc<Zone>) {
    let mut buf = vec![0u8; DNS_BUFFER_LEN];
    loop {
        let (len, peer) = match socket.recv_from(&mut buf).await {
            Ok(received) => received,
            Err(error) => {
                // ICMP errors of earlier replies surface here; they concern no new query.
                tracing::debug!(pod = %pod, %error, "DNS receive failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let Some(reply) = zone.answer(&buf[..len]) else {
            tracing::debug!(pod = %pod, %peer, len, "DNS datagram dropped");
            continue;
        };
        if let Err(error) = socket.send_to(&reply, peer).await {
            tracing::debug!(pod = %pod, %peer, %error, "DNS reply not sent");
        }
    }
}
