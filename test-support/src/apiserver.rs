//! A Kubernetes API server for tests, on kube-rs's own test support: tower-test's mock service
//! behind a real `kube::Client`, so the code under test sends exactly the requests it sends to
//! a cluster. One server serves both kinds of tests:
//!
//! - **Replayed collections** (the agent's watches): after [`ApiServer::replay_from`], every
//!   list or watch of a collection of [`Resource`] (`/api/v1/pods`, …, told apart by
//!   `watch=true` in the query) is answered from one queue per collection and verb. The test
//!   puts API server responses into the queues with [`ApiServer::serve`], as files (a list
//!   response, or watch events one JSON object per line, as the API server streams them). A
//!   request whose queue is empty waits until the test serves it: a watch the test has nothing
//!   for yet stays open, as a real one would. A watch response ends with its file; a watcher
//!   then watches again from the last resourceVersion it saw, and that request waits for the
//!   test's next file. A file that is a `Status` is answered with its `code` (a `404` for the
//!   collection of a CRD that is not installed).
//! - **Kept objects** (the incident tooling's quarantine): pods, NetworkPolicies and
//!   ClusterNetworkPolicies (`policy.networking.k8s.io/v1alpha2`, unless the test says the CRD
//!   is not installed) kept as JSON and changed by the requests as the API server would change
//!   them (resourceVersion bumped on every write, a merge patch with a stale resourceVersion
//!   refused with 409 Conflict, a second create of a name refused with 409 AlreadyExists).
//!   RBAC is a list of refused `verb resource` pairs: SelfSubjectAccessReviews answer from it,
//!   and the requests themselves are refused with 403 when it names them. SelfSubjectReview
//!   answers with the user the test signed in ([`ApiServer::sign_in`]), or 404 as an API
//!   server older than 1.28 does. A test can also make the next pod patch fail (an admission
//!   webhook refusing it) to see the rollback.
//!
//! Every request is logged ([`ApiServer::log`], [`ApiServer::requested`]); one for a path the
//! server does not know is answered 404 and listed in [`ApiServer::unexpected`].
//! [`ApiServer::unreachable`] is a client whose API server is gone.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use serde_json::{Value, json};
use tokio::sync::Notify;
use tower_test::mock::{self, SendResponse};

/// The collections a watcher lists and watches (the agent's).
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

impl Resource {
    /// The collection whose cluster-wide path is `path`.
    fn of(path: &str) -> Option<Self> {
        Some(match path {
            "/api/v1/namespaces" => Self::Namespaces,
            "/api/v1/pods" => Self::Pods,
            "/apis/networking.k8s.io/v1/networkpolicies" => Self::NetworkPolicies,
            "/api/v1/services" => Self::Services,
            "/api/v1/nodes" => Self::Nodes,
            "/apis/discovery.k8s.io/v1/endpointslices" => Self::EndpointSlices,
            "/apis/policy.networking.k8s.io/v1alpha2/clusternetworkpolicies" => {
                Self::ClusterNetworkPolicies
            }
            "/apis/networking.k8s.aws/v1alpha1/clusternetworkpolicies" => {
                Self::AwsClusterNetworkPolicies
            }
            _ => return None,
        })
    }
}

/// List or watch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verb {
    List,
    Watch,
}

/// One request the client made.
#[derive(Debug, Clone)]
pub struct Logged {
    pub method: Method,
    pub path: String,
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

    /// The collection and verb of a GET of a collection of [`Resource`].
    pub fn collection(&self) -> Option<(Resource, Verb)> {
        if self.method != Method::GET {
            return None;
        }
        let resource = Resource::of(&self.path)?;
        let verb = if self.query.split('&').any(|p| p == "watch=true") {
            Verb::Watch
        } else {
            Verb::List
        };
        Some((resource, verb))
    }
}

type Queue = (Resource, Verb);
type Key = (String, String);

#[derive(Default)]
struct State {
    /// Where [`ApiServer::serve`] reads its files; `None` until the test replays collections.
    fixtures: Option<PathBuf>,
    responses: HashMap<Queue, VecDeque<Vec<u8>>>,
    waiting: HashMap<Queue, VecDeque<SendResponse<Response<Body>>>>,
    pods: BTreeMap<Key, Value>,
    policies: BTreeMap<Key, Value>,
    /// Keyed by namespace `""` and name.
    cluster_policies: BTreeMap<Key, Value>,
    /// The ClusterNetworkPolicy CRD is not installed: its paths answer 404.
    no_cluster_policies: bool,
    refused: Vec<(String, String)>,
    fail_next_patch: Option<String>,
    user: Option<String>,
    version: u64,
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
    /// A client and the server behind it (inside a tokio runtime): no object, no user signed
    /// in, no collection replayed.
    pub fn start() -> (kube::Client, ApiServer) {
        let (service, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
        let server = ApiServer {
            state: Arc::default(),
            requested: Arc::default(),
        };
        let serving = server.clone();
        tokio::spawn(async move {
            while let Some((request, respond)) = handle.next_request().await {
                serving.receive(request, respond).await;
            }
        });
        (kube::Client::new(service, "default"), server)
    }

    /// A client whose API server is gone: every request fails in the client.
    pub fn unreachable() -> kube::Client {
        let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
        drop(handle);
        kube::Client::new(service, "default")
    }

    /// Answers every list and watch of a collection of [`Resource`] from the files
    /// [`ApiServer::serve`] names, under `fixtures`.
    pub fn replay_from(&self, fixtures: impl Into<PathBuf>) {
        self.lock().fixtures = Some(fixtures.into());
    }

    /// Serves the file `name` (under the directory of [`ApiServer::replay_from`]) to the next
    /// `verb` request for `resource`: the one waiting, or the next to come.
    pub fn serve(&self, resource: Resource, verb: Verb, name: &str) {
        let mut state = self.lock();
        let path = state
            .fixtures
            .as_ref()
            .expect("replay_from before serve")
            .join(name);
        let body = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let queue = (resource, verb);
        match state.waiting.get_mut(&queue).and_then(VecDeque::pop_front) {
            Some(respond) => respond.send_response(replayed(body)),
            None => state.responses.entry(queue).or_default().push_back(body),
        }
    }

    /// Waits until the client has made `count` `verb` requests for `resource`; the last one.
    pub async fn requested(&self, resource: Resource, verb: Verb, count: usize) -> Logged {
        let wait = async {
            loop {
                let notified = self.requested.notified();
                let matching: Vec<Logged> = self
                    .lock()
                    .log
                    .iter()
                    .filter(|r| r.collection() == Some((resource, verb)))
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

    /// Makes `user` the caller, as SelfSubjectReview answers.
    pub fn sign_in(&self, user: &str) {
        self.lock().user = Some(user.to_owned());
    }

    /// Makes SelfSubjectReview unknown (an API server older than 1.28).
    pub fn forget_user(&self) {
        self.lock().user = None;
    }

    /// Adds a pod (a YAML document).
    pub fn add_pod(&self, yaml: &str) {
        let mut pod: Value = serde_yaml_ng::from_str(yaml).expect("pod YAML");
        let key = key_of(&pod);
        let mut state = self.lock();
        state.version += 1;
        pod["metadata"]["resourceVersion"] = json!(state.version.to_string());
        pod["metadata"]["uid"] = json!(format!("uid-{}", key.1));
        state.pods.insert(key, pod);
    }

    /// Adds a NetworkPolicy (a YAML document).
    pub fn add_policy(&self, yaml: &str) {
        let policy: Value = serde_yaml_ng::from_str(yaml).expect("policy YAML");
        let key = key_of(&policy);
        self.lock().policies.insert(key, policy);
    }

    /// Adds a ClusterNetworkPolicy (a YAML document).
    pub fn add_cluster_policy(&self, yaml: &str) {
        let policy: Value = serde_yaml_ng::from_str(yaml).expect("policy YAML");
        let name = policy["metadata"]["name"]
            .as_str()
            .expect("a name")
            .to_owned();
        self.lock()
            .cluster_policies
            .insert((String::new(), name), policy);
    }

    /// Serves no ClusterNetworkPolicy: its CRD is not installed.
    pub fn without_cluster_policies(&self) {
        self.lock().no_cluster_policies = true;
    }

    /// Refuses `verb` on `resource` (plural, e.g. `networkpolicies`).
    pub fn refuse(&self, verb: &str, resource: &str) {
        self.lock()
            .refused
            .push((verb.to_owned(), resource.to_owned()));
    }

    /// Refuses the next pod patch with 500 and `message`, as a failing webhook would.
    pub fn fail_next_patch(&self, message: &str) {
        self.lock().fail_next_patch = Some(message.to_owned());
    }

    /// The pod `namespace/name` as stored.
    pub fn pod(&self, namespace: &str, name: &str) -> Value {
        self.lock().pods[&(namespace.to_owned(), name.to_owned())].clone()
    }

    /// Every NetworkPolicy as stored.
    pub fn policies(&self) -> Vec<Value> {
        self.lock().policies.values().cloned().collect()
    }

    /// Every ClusterNetworkPolicy as stored.
    pub fn cluster_policies(&self) -> Vec<Value> {
        self.lock().cluster_policies.values().cloned().collect()
    }

    /// Every request so far, as `METHOD path`.
    pub fn log(&self) -> Vec<String> {
        self.lock()
            .log
            .iter()
            .map(|r| format!("{} {}", r.method, r.path))
            .collect()
    }

    /// The requests that wrote (POST, PATCH, DELETE) other than the reviews.
    pub fn writes(&self) -> Vec<String> {
        self.log()
            .into_iter()
            .filter(|l| !l.starts_with("GET") && !l.contains("review"))
            .collect()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }

    async fn receive(&self, request: Request<Body>, respond: SendResponse<Response<Body>>) {
        let logged = Logged {
            method: request.method().clone(),
            path: request.uri().path().to_owned(),
            query: request
                .uri()
                .query()
                .unwrap_or_default()
                .trim_start_matches('&')
                .to_owned(),
        };
        // A replayed collection's request waits in its queue; any other is answered below.
        let respond = {
            let mut state = self.lock();
            state.log.push(logged.clone());
            match logged.collection().filter(|_| state.fixtures.is_some()) {
                Some(queue) => {
                    match state
                        .responses
                        .get_mut(&queue)
                        .and_then(VecDeque::pop_front)
                    {
                        Some(body) => respond.send_response(replayed(body)),
                        None => state.waiting.entry(queue).or_default().push_back(respond),
                    }
                    None
                }
                None => Some(respond),
            }
        };
        self.requested.notify_waiters();
        let Some(respond) = respond else {
            return;
        };
        let body = request
            .into_body()
            .collect_bytes()
            .await
            .unwrap_or_default();
        let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let response = self.answer(&logged, &body).unwrap_or_else(|| {
            let path = logged.path;
            self.lock()
                .unexpected
                .push(format!("{path}?{}", logged.query));
            status(
                StatusCode::NOT_FOUND,
                "NotFound",
                &format!("no route for {} {path}", logged.method),
            )
        });
        respond.send_response(response);
    }

    /// The answer from the kept objects to a request, `None` for a path the server does not
    /// know.
    fn answer(&self, request: &Logged, body: &Value) -> Option<Response<Body>> {
        let mut state = self.lock();
        let segments: Vec<&str> = request.path.trim_start_matches('/').split('/').collect();
        // The policies: `…/namespaces/<ns>/networkpolicies[/<name>]` and
        // `…/clusternetworkpolicies[/<name>]`.
        let policies = match segments.as_slice() {
            [
                "apis",
                "networking.k8s.io",
                "v1",
                "namespaces",
                ns,
                "networkpolicies",
                rest @ ..,
            ] => Some((Policies::Namespaced, *ns, rest)),
            [
                "apis",
                "policy.networking.k8s.io",
                "v1alpha2",
                "clusternetworkpolicies",
                rest @ ..,
            ] => Some((Policies::Cluster, "", rest)),
            _ => None,
        };
        if let Some((kind, ns, rest)) = policies {
            if matches!(kind, Policies::Cluster) && state.no_cluster_policies {
                return Some(status(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    "the server could not find the requested resource",
                ));
            }
            return match (&request.method, rest) {
                (&Method::GET, []) => Some(state.list(kind, ns)),
                (&Method::POST, []) => Some(state.create(kind, ns, body)),
                (&Method::DELETE, [name]) => Some(state.delete(kind, ns, name)),
                _ => None,
            };
        }
        Some(match (request.method.clone(), segments.as_slice()) {
            (Method::POST, ["apis", "authentication.k8s.io", "v1", "selfsubjectreviews"]) => {
                match &state.user {
                    Some(user) => ok(json!({
                        "apiVersion": "authentication.k8s.io/v1",
                        "kind": "SelfSubjectReview",
                        "status": {"userInfo": {"username": user, "groups": ["system:authenticated"]}},
                    })),
                    None => status(
                        StatusCode::NOT_FOUND,
                        "NotFound",
                        "the server could not find the requested resource",
                    ),
                }
            }
            (
                Method::POST,
                [
                    "apis",
                    "authorization.k8s.io",
                    "v1",
                    "selfsubjectaccessreviews",
                ],
            ) => {
                let attributes = &body["spec"]["resourceAttributes"];
                let verb = attributes["verb"].as_str().unwrap_or_default();
                let resource = attributes["resource"].as_str().unwrap_or_default();
                let mut review = body.clone();
                review["status"] = json!({"allowed": !state.is_refused(verb, resource)});
                ok(review)
            }
            (Method::GET, ["api", "v1", "namespaces", ns, "pods", name]) => {
                if state.is_refused("get", "pods") {
                    return Some(forbidden("get", "pods"));
                }
                match state.pods.get(&(ns.to_string(), name.to_string())) {
                    Some(pod) => ok(pod.clone()),
                    None => not_found("pods", name),
                }
            }
            (Method::PATCH, ["api", "v1", "namespaces", ns, "pods", name]) => {
                if state.is_refused("patch", "pods") {
                    return Some(forbidden("patch", "pods"));
                }
                if let Some(message) = state.fail_next_patch.take() {
                    return Some(status(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "InternalError",
                        &message,
                    ));
                }
                state.version += 1;
                let version = state.version.to_string();
                let Some(pod) = state.pods.get_mut(&(ns.to_string(), name.to_string())) else {
                    return Some(not_found("pods", name));
                };
                let wanted = &body["metadata"]["resourceVersion"];
                if !wanted.is_null() && *wanted != pod["metadata"]["resourceVersion"] {
                    return Some(status(
                        StatusCode::CONFLICT,
                        "Conflict",
                        "the object has been modified",
                    ));
                }
                if let Some(labels) = body["metadata"]["labels"].as_object() {
                    for (key, value) in labels {
                        if value.is_null() {
                            if let Some(existing) = pod["metadata"]["labels"].as_object_mut() {
                                existing.remove(key);
                            }
                        } else {
                            pod["metadata"]["labels"][key] = value.clone();
                        }
                    }
                }
                pod["metadata"]["resourceVersion"] = json!(version);
                ok(pod.clone())
            }
            _ => return None,
        })
    }
}

/// The policies the server keeps: NetworkPolicies, by namespace, and ClusterNetworkPolicies
/// (namespace `""`).
#[derive(Debug, Clone, Copy)]
enum Policies {
    Namespaced,
    Cluster,
}

impl Policies {
    /// The plural resource name (RBAC's, and the path's).
    fn resource(self) -> &'static str {
        match self {
            Self::Namespaced => "networkpolicies",
            Self::Cluster => "clusternetworkpolicies",
        }
    }
}

impl State {
    fn is_refused(&self, verb: &str, resource: &str) -> bool {
        self.refused.iter().any(|(v, r)| v == verb && r == resource)
    }

    fn policies_of(&mut self, kind: Policies) -> &mut BTreeMap<Key, Value> {
        match kind {
            Policies::Namespaced => &mut self.policies,
            Policies::Cluster => &mut self.cluster_policies,
        }
    }

    /// The `kind`s of `namespace`, as a list.
    fn list(&mut self, kind: Policies, namespace: &str) -> Response<Body> {
        if self.is_refused("list", kind.resource()) {
            return forbidden("list", kind.resource());
        }
        let (api_version, list_kind) = match kind {
            Policies::Namespaced => ("networking.k8s.io/v1", "NetworkPolicyList"),
            Policies::Cluster => (
                "policy.networking.k8s.io/v1alpha2",
                "ClusterNetworkPolicyList",
            ),
        };
        let version = self.version.to_string();
        let items: Vec<Value> = self
            .policies_of(kind)
            .iter()
            .filter(|((ns, _), _)| ns == namespace)
            .map(|(_, p)| p.clone())
            .collect();
        ok(json!({
            "apiVersion": api_version,
            "kind": list_kind,
            "metadata": {"resourceVersion": version},
            "items": items,
        }))
    }

    /// Creates `body` as a `kind` in `namespace`; a name already there is 409 AlreadyExists.
    fn create(&mut self, kind: Policies, namespace: &str, body: &Value) -> Response<Body> {
        if self.is_refused("create", kind.resource()) {
            return forbidden("create", kind.resource());
        }
        let mut policy = body.clone();
        let name = policy["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let key = (namespace.to_owned(), name.clone());
        if self.policies_of(kind).contains_key(&key) {
            return status(StatusCode::CONFLICT, "AlreadyExists", "already exists");
        }
        self.version += 1;
        let uid = match kind {
            Policies::Namespaced => format!("uid-np-{name}"),
            Policies::Cluster => format!("uid-cnp-{name}"),
        };
        policy["metadata"]["uid"] = json!(uid);
        policy["metadata"]["resourceVersion"] = json!(self.version.to_string());
        self.policies_of(kind).insert(key, policy.clone());
        created(policy)
    }

    /// Deletes the `kind` `namespace/name`.
    fn delete(&mut self, kind: Policies, namespace: &str, name: &str) -> Response<Body> {
        if self.is_refused("delete", kind.resource()) {
            return forbidden("delete", kind.resource());
        }
        match self
            .policies_of(kind)
            .remove(&(namespace.to_owned(), name.to_owned()))
        {
            Some(policy) => ok(policy),
            None => not_found(kind.resource(), name),
        }
    }
}

fn key_of(object: &Value) -> Key {
    (
        object["metadata"]["namespace"]
            .as_str()
            .unwrap_or("default")
            .to_owned(),
        object["metadata"]["name"]
            .as_str()
            .expect("a name")
            .to_owned(),
    )
}

fn respond(code: StatusCode, body: Vec<u8>) -> Response<Body> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Body::from(body))
        .unwrap()
}

/// The response of a replayed file: `200 OK`, or a `Status`'s own code.
fn replayed(body: Vec<u8>) -> Response<Body> {
    let code = serde_json::from_slice::<Value>(&body)
        .ok()
        .filter(|value| value["kind"] == "Status")
        .and_then(|value| value["code"].as_u64())
        .and_then(|code| StatusCode::from_u16(u16::try_from(code).ok()?).ok())
        .unwrap_or(StatusCode::OK);
    respond(code, body)
}

fn ok(body: Value) -> Response<Body> {
    respond(StatusCode::OK, serde_json::to_vec(&body).unwrap())
}

fn created(body: Value) -> Response<Body> {
    respond(StatusCode::CREATED, serde_json::to_vec(&body).unwrap())
}

fn status(code: StatusCode, reason: &str, message: &str) -> Response<Body> {
    let body = json!({
        "apiVersion": "v1",
        "kind": "Status",
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code.as_u16(),
    });
    respond(code, serde_json::to_vec(&body).unwrap())
}

fn forbidden(verb: &str, resource: &str) -> Response<Body> {
    status(
        StatusCode::FORBIDDEN,
        "Forbidden",
        &format!("user cannot {verb} resource \"{resource}\""),
    )
}

fn not_found(resource: &str, name: &str) -> Response<Body> {
    status(
        StatusCode::NOT_FOUND,
        "NotFound",
        &format!("{resource} \"{name}\" not found"),
    )
}
