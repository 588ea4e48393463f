//! The agent's HTTP endpoints: `/metrics` (Prometheus text), `/healthz` (the process runs and
//! its loops turn) and `/readyz` (the first sync is done and every local endpoint is
//! programmed), served by hyper's HTTP/1.1 server on tokio: one request per connection, `GET`
//! and `HEAD` only, bounded request head size and read time. A scrape or a probe never touches
//! the datapath: it reads atomics and renders text.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::{
    Method, Request, StatusCode,
    body::{Bytes, Incoming},
    header::{CONTENT_TYPE, HeaderValue},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tollgate_enforcer::causes::Causes;

/// Longest a client may take to send its request head.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest request head accepted (request line and headers): hyper answers a larger one with
/// 431. Its smallest allowed buffer.
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
                    let service = service_fn(move |request| {
                        let response = answer(&request, &routes);
                        async move { Ok::<_, Infallible>(response) }
                    });
                    let connection = http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(READ_TIMEOUT)
                        .max_buf_size(MAX_REQUEST_BYTES)
                        .keep_alive(false)
                        .serve_connection(TokioIo::new(stream), service);
                    if let Err(error) = connection.await {
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

/// The response to `request`: its route's, 404 without one, 405 for a method other than `GET`
/// and `HEAD` (hyper leaves out the body of a `HEAD` response).
fn answer(request: &Request<Incoming>, routes: &Routes) -> hyper::Response<Full<Bytes>> {
    let response = if request.method() != Method::GET && request.method() != Method::HEAD {
        Response::text(405, "only GET and HEAD\n")
    } else {
        routes(request.uri().path()).unwrap_or_else(|| Response::text(404, "not found\n"))
    };
    let mut reply = hyper::Response::new(Full::new(Bytes::from(response.body)));
    *reply.status_mut() =
        StatusCode::from_u16(response.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    reply.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static(response.content_type),
    );
    reply
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

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
        assert!(
            metrics
                .to_ascii_lowercase()
                .contains("content-length: 14\r\n"),
            "{metrics}"
        );
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
