//! The agent's HTTP endpoints: `/metrics` (Prometheus text), `/healthz` (the process runs and
//! its loops turn) and `/readyz` (the first sync is done and every local endpoint is
//! programmed), served by a small HTTP/1.1 responder on tokio: one request per connection,
//! `GET` and `HEAD` only, bounded request size and read time. A scrape or a probe never
//! touches the datapath: it reads atomics and renders text.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tollgate_enforcer::causes::Causes;

/// Longest a client may take to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest request accepted (request line and headers).
const MAX_REQUEST_BYTES: usize = 8 * 1024;

/// What a route answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// `Content-Type`.
    pub content_type: &'static str,
    /// Body.
    pub body: String,
}

impl Response {
    /// A `text/plain` response.
    pub fn text(status: u16, body: impl Into<String>) -> Self {
        Self {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
        }
    }
}

/// Maps a request path to its response; `None` is 404.
pub type Routes = Arc<dyn Fn(&str) -> Option<Response> + Send + Sync>;

/// Serves `routes` on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, routes: Routes) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let routes = Arc::clone(&routes);
                tokio::spawn(async move {
                    if let Err(error) = answer(stream, &routes).await {
                        tracing::debug!(error = %Causes(&error), "http connection");
                    }
                });
            }
            Err(error) => {
                tracing::warn!(error = %Causes(&error), "accepting an http connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn answer(mut stream: TcpStream, routes: &Routes) -> std::io::Result<()> {
    let mut request = Vec::with_capacity(512);
    let mut buffer = [0u8; 1024];
    let read = tokio::time::timeout(READ_TIMEOUT, async {
        while !request.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = stream.read(&mut buffer).await?;
            if n == 0 {
                break;
            }
            request.extend_from_slice(&buffer[..n]);
            if request.len() > MAX_REQUEST_BYTES {
                break;
            }
        }
        Ok::<_, std::io::Error>(())
    })
    .await;
    let response = match read {
        Err(_) => Response::text(408, "request timeout\n"),
        Ok(Err(error)) => return Err(error),
        Ok(Ok(())) if request.len() > MAX_REQUEST_BYTES => {
            Response::text(431, "request too large\n")
        }
        Ok(Ok(())) => route(&request, routes),
    };
    let head_only = request.starts_with(b"HEAD ");
    let head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        response.status,
        reason(response.status),
        response.content_type,
        response.body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    if !head_only {
        stream.write_all(response.body.as_bytes()).await?;
    }
    stream.shutdown().await
}

fn route(request: &[u8], routes: &Routes) -> Response {
    let line = request
        .split(|b| *b == b'\r')
        .next()
        .and_then(|l| std::str::from_utf8(l).ok())
        .unwrap_or_default();
    let mut parts = line.split(' ');
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if method != "GET" && method != "HEAD" {
        return Response::text(405, "only GET and HEAD\n");
    }
    let path = target.split('?').next().unwrap_or(target);
    routes(path).unwrap_or_else(|| Response::text(404, "not found\n"))
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn get(address: std::net::SocketAddr, request: &str) -> String {
        let mut stream = TcpStream::connect(address).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut out = String::new();
        stream.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn routes_answer_and_everything_else_is_refused_clearly() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let routes: Routes = Arc::new(|path| match path {
            "/metrics" => Some(Response::text(200, "tollgate_up 1\n")),
            "/readyz" => Some(Response::text(503, "not ready: initial sync\n")),
            _ => None,
        });
        let server = tokio::spawn(serve(listener, routes));
        let metrics = get(address, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(metrics.starts_with("HTTP/1.1 200 OK\r\n"), "{metrics}");
        assert!(metrics.contains("Content-Length: 14\r\n"));
        assert!(metrics.ends_with("tollgate_up 1\n"));
        let ready = get(address, "GET /readyz?verbose HTTP/1.1\r\n\r\n").await;
        assert!(ready.starts_with("HTTP/1.1 503 "), "{ready}");
        let head = get(address, "HEAD /metrics HTTP/1.1\r\n\r\n").await;
        assert!(head.ends_with("\r\n\r\n"), "no body for HEAD: {head}");
        let missing = get(address, "GET /nope HTTP/1.1\r\n\r\n").await;
        assert!(missing.starts_with("HTTP/1.1 404 "));
        let post = get(address, "POST /metrics HTTP/1.1\r\n\r\n").await;
        assert!(post.starts_with("HTTP/1.1 405 "));
        let huge = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(10_000));
        assert!(get(address, &huge).await.starts_with("HTTP/1.1 431 "));
        server.abort();
    }
}
