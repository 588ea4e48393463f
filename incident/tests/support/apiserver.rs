//! A Kubernetes API server for the quarantine tests, built like the agent tests' mock API
//! service (`agent/tests/apiserver`): kube-rs's own test support, tower-test's mock service
//! behind a real `kube::Client`, so `KubeCluster` sends exactly the requests it sends to a
//! cluster. Where the agent's server replays watch fixtures, this one keeps objects: pods,
//! NetworkPolicies and ClusterNetworkPolicies (`policy.networking.k8s.io/v1alpha2`, unless the
//! test says the CRD is not installed) as JSON, changed by the requests as the API server
//! would change them
//! (resourceVersion bumped on every write, a merge patch with a stale resourceVersion refused
//! with 409 Conflict, a second create of a name refused with 409 AlreadyExists).
//!
//! RBAC is a list of refused `verb resource` pairs: SelfSubjectAccessReviews answer from it,
//! and the requests themselves are refused with 403 when it names them. A test can also make
//! the next pod patch fail (an admission webhook refusing it) to see the rollback. Every
//! request is logged as `METHOD path`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use serde_json::{Value, json};
use tower_test::mock;

type Key = (String, String);

#[derive(Default)]
struct State {
    pods: BTreeMap<Key, Value>,
    policies: BTreeMap<Key, Value>,
    cluster_policies: BTreeMap<String, Value>,
    /// The ClusterNetworkPolicy CRD is not installed: its paths answer 404.
    no_cluster_policies: bool,
    refused: Vec<(String, String)>,
    fail_next_patch: Option<String>,
    user: Option<String>,
    version: u64,
    log: Vec<String>,
}

/// The test's side of the server.
#[derive(Clone)]
pub struct ApiServer {
    state: Arc<Mutex<State>>,
}

#[allow(dead_code, reason = "each test binary uses its own part")]
impl ApiServer {
    /// A client and the server behind it (inside a tokio runtime); the caller is `user`.
    pub fn start(user: &str) -> (kube::Client, ApiServer) {
        let (service, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
        let server = ApiServer {
            state: Arc::default(),
        };
        server.lock().user = Some(user.to_owned());
        let serving = server.clone();
        tokio::spawn(async move {
            while let Some((request, respond)) = handle.next_request().await {
                let response = serving.answer(request).await;
                respond.send_response(response);
            }
        });
        (kube::Client::new(service, "default"), server)
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
        self.lock().cluster_policies.insert(name, policy);
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

    /// Makes SelfSubjectReview unknown (an API server older than 1.28).
    pub fn forget_user(&self) {
        self.lock().user = None;
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
        self.lock().log.clone()
    }

    /// The requests that wrote (POST, PATCH, DELETE) other than the reviews.
    pub fn writes(&self) -> Vec<String> {
        self.log()
            .into_iter()
            .filter(|l| !l.starts_with("GET") && !l.contains("review"))
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }

    async fn answer(&self, request: Request<Body>) -> Response<Body> {
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        let body = request
            .into_body()
            .collect_bytes()
            .await
            .unwrap_or_default();
        let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let mut state = self.lock();
        state.log.push(format!("{method} {path}"));
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        match (method.clone(), segments.as_slice()) {
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
                    return forbidden("get", "pods");
                }
                match state.pods.get(&(ns.to_string(), name.to_string())) {
                    Some(pod) => ok(pod.clone()),
                    None => not_found("pods", name),
                }
            }
            (Method::PATCH, ["api", "v1", "namespaces", ns, "pods", name]) => {
                if state.is_refused("patch", "pods") {
                    return forbidden("patch", "pods");
                }
                if let Some(message) = state.fail_next_patch.take() {
                    return status(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", &message);
                }
                state.version += 1;
                let version = state.version.to_string();
                let Some(pod) = state.pods.get_mut(&(ns.to_string(), name.to_string())) else {
                    return not_found("pods", name);
                };
                let wanted = &body["metadata"]["resourceVersion"];
                if !wanted.is_null() && *wanted != pod["metadata"]["resourceVersion"] {
                    return status(
                        StatusCode::CONFLICT,
                        "Conflict",
                        "the object has been modified",
                    );
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
            (
                Method::GET,
                [
                    "apis",
                    "networking.k8s.io",
                    "v1",
                    "namespaces",
                    ns,
                    "networkpolicies",
                ],
            ) => {
                if state.is_refused("list", "networkpolicies") {
                    return forbidden("list", "networkpolicies");
                }
                let items: Vec<Value> = state
                    .policies
                    .iter()
                    .filter(|((namespace, _), _)| namespace == ns)
                    .map(|(_, p)| p.clone())
                    .collect();
                ok(json!({
                    "apiVersion": "networking.k8s.io/v1",
                    "kind": "NetworkPolicyList",
                    "metadata": {"resourceVersion": state.version.to_string()},
                    "items": items,
                }))
            }
            (
                Method::POST,
                [
                    "apis",
                    "networking.k8s.io",
                    "v1",
                    "namespaces",
                    ns,
                    "networkpolicies",
                ],
            ) => {
                if state.is_refused("create", "networkpolicies") {
                    return forbidden("create", "networkpolicies");
                }
                let mut policy = body.clone();
                let name = policy["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                let key = (ns.to_string(), name.clone());
                if state.policies.contains_key(&key) {
                    return status(StatusCode::CONFLICT, "AlreadyExists", "already exists");
                }
                state.version += 1;
                policy["metadata"]["uid"] = json!(format!("uid-np-{name}"));
                policy["metadata"]["resourceVersion"] = json!(state.version.to_string());
                state.policies.insert(key, policy.clone());
                created(policy)
            }
            (
                Method::DELETE,
                [
                    "apis",
                    "networking.k8s.io",
                    "v1",
                    "namespaces",
                    ns,
                    "networkpolicies",
                    name,
                ],
            ) => {
                if state.is_refused("delete", "networkpolicies") {
                    return forbidden("delete", "networkpolicies");
                }
                match state.policies.remove(&(ns.to_string(), name.to_string())) {
                    Some(policy) => ok(policy),
                    None => not_found("networkpolicies", name),
                }
            }
            (
                _,
                [
                    "apis",
                    "policy.networking.k8s.io",
                    "v1alpha2",
                    "clusternetworkpolicies",
                    ..,
                ],
            ) if state.no_cluster_policies => status(
                StatusCode::NOT_FOUND,
                "NotFound",
                "the server could not find the requested resource",
            ),
            (
                Method::GET,
                [
                    "apis",
                    "policy.networking.k8s.io",
                    "v1alpha2",
                    "clusternetworkpolicies",
                ],
            ) => {
                if state.is_refused("list", "clusternetworkpolicies") {
                    return forbidden("list", "clusternetworkpolicies");
                }
                ok(json!({
                    "apiVersion": "policy.networking.k8s.io/v1alpha2",
                    "kind": "ClusterNetworkPolicyList",
                    "metadata": {"resourceVersion": state.version.to_string()},
                    "items": state.cluster_policies.values().cloned().collect::<Vec<_>>(),
                }))
            }
            (
                Method::POST,
                [
                    "apis",
                    "policy.networking.k8s.io",
                    "v1alpha2",
                    "clusternetworkpolicies",
                ],
            ) => {
                if state.is_refused("create", "clusternetworkpolicies") {
                    return forbidden("create", "clusternetworkpolicies");
                }
                let mut policy = body.clone();
                let name = policy["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                if state.cluster_policies.contains_key(&name) {
                    return status(StatusCode::CONFLICT, "AlreadyExists", "already exists");
                }
                state.version += 1;
                policy["metadata"]["uid"] = json!(format!("uid-cnp-{name}"));
                policy["metadata"]["resourceVersion"] = json!(state.version.to_string());
                state.cluster_policies.insert(name, policy.clone());
                created(policy)
            }
            (
                Method::DELETE,
                [
                    "apis",
                    "policy.networking.k8s.io",
                    "v1alpha2",
                    "clusternetworkpolicies",
                    name,
                ],
            ) => {
                if state.is_refused("delete", "clusternetworkpolicies") {
                    return forbidden("delete", "clusternetworkpolicies");
                }
                match state.cluster_policies.remove(*name) {
                    Some(policy) => ok(policy),
                    None => not_found("clusternetworkpolicies", name),
                }
            }
            _ => status(
                StatusCode::NOT_FOUND,
                "NotFound",
                &format!("no route for {method} {path}"),
            ),
        }
    }
}

impl State {
    fn is_refused(&self, verb: &str, resource: &str) -> bool {
        self.refused.iter().any(|(v, r)| v == verb && r == resource)
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

fn respond(code: StatusCode, body: &Value) -> Response<Body> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(body).unwrap()))
        .unwrap()
}

fn ok(body: Value) -> Response<Body> {
    respond(StatusCode::OK, &body)
}

fn created(body: Value) -> Response<Body> {
    respond(StatusCode::CREATED, &body)
}

fn status(code: StatusCode, reason: &str, message: &str) -> Response<Body> {
    respond(
        code,
        &json!({
            "apiVersion": "v1",
            "kind": "Status",
            "status": "Failure",
            "message": message,
            "reason": reason,
            "code": code.as_u16(),
        }),
    )
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
