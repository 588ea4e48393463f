//! A scripted API server for the agent's watches, on kube-rs's own test support: tower-test's
//! mock service behind a real `kube::Client`, so the agent's `watcher`s list and watch
//! exactly as against a cluster.
//!
//! Every request is routed by path (`/api/v1/pods`, …) and by `watch=true` in its query to
//! one queue: the test puts API server responses into the queues, as files under
//! `tests/fixtures/watch/` (a list response, or watch events one JSON object per line, as
//! the API server streams them). A request whose queue is empty waits until the test serves
//! it: a watch the test has nothing for yet stays open, as a real one would. A watch
//! response ends with its file; the watcher then watches again from the last
//! resourceVersion it saw, and that request waits for the test's next file. A file that is a
//! `Status` is answered with its `code` (a `404` for the collection of a CRD that is not
//! installed).

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use kube::client::Body;
use tokio::sync::Notify;
use tower_test::mock::{self, SendResponse};

/// The collections the agent watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Resource {
    Namespaces,
    Pods,
    NetworkPolicies,
    Services,
    EndpointSlices,
    ClusterNetworkPolicies,
    AwsClusterNetworkPolicies,
    Nodes,
}

/// List or watch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verb {
    List,
    Watch,
}

/// One request the agent made.
#[derive(Debug, Clone)]
pub struct Logged {
    pub resource: Resource,
    pub verb: Verb,
    /// The query string (`limit=500`, `watch=true&resourceVersion=1000…`).
    pub query: String,
}

impl Logged {
    /// The value of one query parameter.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query
            .split('&')
            .filter_map(|pair| pair.split_once('='))
            .find(|(key, _)| *key == name)
            .map(|(_, value)| value)
    }
}

type Queue = (Resource, Verb);

#[derive(Default)]
struct State {
    responses: HashMap<Queue, VecDeque<Vec<u8>>>,
    waiting: HashMap<Queue, VecDeque<SendResponse<Response<Body>>>>,
    log: Vec<Logged>,
    unexpected: Vec<String>,
}

/// The test's side of the server.
#[derive(Clone)]
pub struct ApiServer {
    state: Arc<Mutex<State>>,
    requested: Arc<Notify>,
}

impl ApiServer {
    /// A client and the server behind it (inside a tokio runtime).
    pub fn start() -> (kube::Client, ApiServer) {
        let (service, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
        let server = ApiServer {
            state: Arc::default(),
            requested: Arc::default(),
        };
        let serving = server.clone();
        tokio::spawn(async move {
            while let Some((request, respond)) = handle.next_request().await {
                serving.receive(&request, respond);
            }
        });
        (kube::Client::new(service, "default"), server)
    }

    fn receive(&self, request: &Request<Body>, respond: SendResponse<Response<Body>>) {
        let uri = request.uri();
        let resource = match uri.path() {
            "/api/v1/namespaces" => Resource::Namespaces,
            "/api/v1/pods" => Resource::Pods,
            "/apis/networking.k8s.io/v1/networkpolicies" => Resource::NetworkPolicies,
            "/api/v1/services" => Resource::Services,
            "/api/v1/nodes" => Resource::Nodes,
            "/apis/discovery.k8s.io/v1/endpointslices" => Resource::EndpointSlices,
            "/apis/policy.networking.k8s.io/v1alpha2/clusternetworkpolicies" => {
                Resource::ClusterNetworkPolicies
            }
            "/apis/networking.k8s.aws/v1alpha1/clusternetworkpolicies" => {
                Resource::AwsClusterNetworkPolicies
            }
            _ => {
                self.lock().unexpected.push(uri.to_string());
                let response = Response::builder()
                    .status(StatusCode::NOT_FOUND)
                    .body(Body::empty())
                    .unwrap();
                respond.send_response(response);
                return;
            }
        };
        let query = uri.query().unwrap_or_default().trim_start_matches('&');
        let verb = if query.split('&').any(|p| p == "watch=true") {
            Verb::Watch
        } else {
            Verb::List
        };
        let mut state = self.lock();
        state.log.push(Logged {
            resource,
            verb,
            query: query.to_owned(),
        });
        let queue = (resource, verb);
        match state
            .responses
            .get_mut(&queue)
            .and_then(VecDeque::pop_front)
        {
            Some(body) => respond.send_response(ok(body)),
            None => state.waiting.entry(queue).or_default().push_back(respond),
        }
        drop(state);
        self.requested.notify_waiters();
    }

    /// Serves the fixture `name` (under `tests/fixtures/watch/`) to the next `verb` request
    /// for `resource`: the one waiting, or the next to come.
    pub fn serve(&self, resource: Resource, verb: Verb, name: &str) {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/watch")
            .join(name);
        let body = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let mut state = self.lock();
        let queue = (resource, verb);
        match state.waiting.get_mut(&queue).and_then(VecDeque::pop_front) {
            Some(respond) => respond.send_response(ok(body)),
            None => state.responses.entry(queue).or_default().push_back(body),
        }
    }

    /// Waits until the agent has made `count` `verb` requests for `resource`; the last one.
    pub async fn requested(&self, resource: Resource, verb: Verb, count: usize) -> Logged {
        let wait = async {
            loop {
                let notified = self.requested.notified();
                let matching: Vec<Logged> = self
                    .lock()
                    .log
                    .iter()
                    .filter(|r| r.resource == resource && r.verb == verb)
                    .cloned()
                    .collect();
                if matching.len() >= count {
                    return matching[count - 1].clone();
                }
                notified.await;
            }
        };
        tokio::time::timeout(Duration::from_secs(30), wait)
            .await
            .unwrap_or_else(|_| panic!("no {verb:?} request #{count} for {resource:?}"))
    }

    /// Requests for paths the server does not know.
    pub fn unexpected(&self) -> Vec<String> {
        self.lock().unexpected.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }
}

/// The response of a fixture: `200 OK`, or a `Status`'s own code.
fn ok(body: Vec<u8>) -> Response<Body> {
    let status = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .filter(|value| value["kind"] == "Status")
        .and_then(|value| value["code"].as_u64())
        .and_then(|code| StatusCode::from_u16(u16::try_from(code).ok()?).ok())
        .unwrap_or(StatusCode::OK);
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Body::from(body))
        .unwrap()
}
