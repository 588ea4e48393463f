//! An HTTP/1.1 peer for tests, on hyper: it listens on a free port of 127.0.0.1, records every
//! request (method, path, headers, body) before it answers, and answers each with what the
//! test's handler makes of it: a canned response (an OTLP receiver accepting every export) or
//! one computed from the request and the test's own state (a stub of an AWS JSON API).
//!
//! It serves from a thread of its own with its own runtime, so blocking clients in plain
//! `#[test]`s and async clients in `#[tokio::test]`s both reach it; dropping the stub stops it.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

pub use http::{HeaderMap, Method, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::sync::oneshot;

/// One request the stub received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: Method,
    /// The path, without the query.
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Recorded {
    /// The value of header `name`, if it is there and text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// A response of `status` with `headers` and `body`.
pub fn reply(status: u16, headers: &[(&str, &str)], body: impl Into<Vec<u8>>) -> Response<Vec<u8>> {
    let mut response = Response::builder().status(status);
    for (name, value) in headers {
        response = response.header(*name, *value);
    }
    response.body(body.into()).expect("a valid response")
}

/// What the test answers to a request.
pub type Handler = dyn Fn(&Recorded) -> Response<Vec<u8>> + Send + Sync;

/// The running stub; stops on drop.
#[derive(Debug)]
pub struct HttpStub {
    address: SocketAddr,
    requests: Arc<Mutex<Vec<Recorded>>>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl HttpStub {
    /// A stub answering every request with `handler`'s response.
    pub fn start(handler: impl Fn(&Recorded) -> Response<Vec<u8>> + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("binding the stub");
        let address = listener.local_addr().expect("the stub's address");
        listener
            .set_nonblocking(true)
            .expect("a non-blocking listener");
        let requests: Arc<Mutex<Vec<Recorded>>> = Arc::default();
        let handler: Arc<Handler> = Arc::new(handler);
        let (stop, stopped) = oneshot::channel();
        let recording = Arc::clone(&requests);
        let thread = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("the stub's runtime")
                .block_on(accept(listener, handler, recording, stopped));
        });
        Self {
            address,
            requests,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint_url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Every request so far, in the order they arrived.
    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for HttpStub {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Takes connections until told to stop; each is served on a task of its own (keep-alive).
async fn accept(
    listener: TcpListener,
    handler: Arc<Handler>,
    requests: Arc<Mutex<Vec<Recorded>>>,
    mut stopped: oneshot::Receiver<()>,
) {
    let listener = tokio::net::TcpListener::from_std(listener).expect("a tokio listener");
    loop {
        let stream = tokio::select! {
            _ = &mut stopped => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => continue,
            },
        };
        let handler = Arc::clone(&handler);
        let requests = Arc::clone(&requests);
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let handler = Arc::clone(&handler);
                let requests = Arc::clone(&requests);
                async move { answer(request, &*handler, &requests).await }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Records `request` and answers it with `handler`.
async fn answer(
    request: hyper::Request<Incoming>,
    handler: &Handler,
    requests: &Mutex<Vec<Recorded>>,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let (parts, body) = request.into_parts();
    let recorded = Recorded {
        method: parts.method,
        path: parts.uri.path().to_owned(),
        headers: parts.headers,
        body: body.collect().await?.to_bytes(),
    };
    requests.lock().unwrap().push(recorded.clone());
    Ok(handler(&recorded).map(|body| Full::new(Bytes::from(body))))
}
