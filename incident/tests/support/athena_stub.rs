//! A stub of Amazon Athena on a free port of 127.0.0.1, for the SDK's client: the HTTP stub of
//! `tollgate_test_support::http_stub` speaking Athena's awsJson1_1 protocol (`POST /`, the
//! operation in `X-Amz-Target: AmazonAthena.<Operation>`, JSON in and out). Signatures are not
//! checked.
//!
//! It knows one query, [`QUERY_ID`]: StartQueryExecution starts it, GetQueryExecution answers
//! `QUEUED`, then `RUNNING`, then the [`Outcome`] (so a client must poll), GetQueryResults
//! refuses until it has said `SUCCEEDED` and then answers the header row `$path` and the paths
//! over two pages (`NextToken`), and StopQueryExecution cancels it. Every request is recorded
//! ([`AthenaStub::calls`]).

use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use tollgate_test_support::http_stub::{HttpStub, Method, Recorded, Response, reply};

/// The execution ID of the stub's query.
pub const QUERY_ID: &str = "3f1c5a52-0000-4000-8000-tollgate0001";

/// How the query ends.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// `SUCCEEDED`, with these `$path` values as results.
    Succeed(Vec<String>),
    /// `FAILED`, with this StateChangeReason.
    Fail(String),
    /// `RUNNING` for ever (until StopQueryExecution).
    Hang,
}

/// One request the stub received.
#[derive(Debug, Clone)]
pub struct Call {
    /// The operation (`StartQueryExecution`, …).
    pub operation: String,
    /// The JSON body.
    pub body: Value,
}

#[derive(Debug)]
struct State {
    outcome: Outcome,
    polls: usize,
    succeeded: bool,
    stopped: bool,
    calls: Vec<Call>,
}

/// The running stub; stops on drop.
#[derive(Debug)]
pub struct AthenaStub {
    http: HttpStub,
    state: Arc<Mutex<State>>,
}

#[allow(dead_code, reason = "each test uses its own part of the stub")]
impl AthenaStub {
    /// A stub whose query ends with `outcome`.
    pub async fn start(outcome: Outcome) -> Self {
        let state = Arc::new(Mutex::new(State {
            outcome,
            polls: 0,
            succeeded: false,
            stopped: false,
            calls: Vec::new(),
        }));
        let shared = Arc::clone(&state);
        let http = HttpStub::start(move |request| respond(&shared, request));
        Self { http, state }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint_url(&self) -> String {
        self.http.endpoint_url()
    }

    /// Every request so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.state.lock().unwrap().calls.clone()
    }

    /// The operations of [`AthenaStub::calls`].
    pub fn operations(&self) -> Vec<String> {
        self.calls().into_iter().map(|c| c.operation).collect()
    }

    /// The body of the StartQueryExecution request.
    pub fn started(&self) -> Value {
        self.calls()
            .into_iter()
            .find(|c| c.operation == "StartQueryExecution")
            .expect("a StartQueryExecution request")
            .body
    }
}

/// Athena's answer to one request.
fn respond(state: &Mutex<State>, request: &Recorded) -> Response<Vec<u8>> {
    let (status, answer) = if request.method == Method::POST && request.path == "/" {
        answer(state, request.header("x-amz-target"), &request.body)
    } else {
        (
            404,
            json!({"__type": "UnknownOperationException", "Message": format!("{} {}", request.method, request.path)}),
        )
    };
    reply(
        status,
        &[
            ("content-type", "application/x-amz-json-1.1"),
            ("x-amzn-requestid", "tollgate-stub"),
        ],
        answer.to_string(),
    )
}

/// The status and JSON answer to one request.
fn answer(state: &Mutex<State>, target: Option<&str>, body: &[u8]) -> (u16, Value) {
    let refuse = |message: String| {
        (
            400,
            json!({"__type": "InvalidRequestException", "Message": message}),
        )
    };
    let Some(operation) = target.and_then(|t| t.strip_prefix("AmazonAthena.")) else {
        return refuse(format!("X-Amz-Target {target:?}"));
    };
    let Ok(body) = serde_json::from_slice::<Value>(body) else {
        return refuse("the body is not JSON".to_owned());
    };
    let mut state = state.lock().unwrap();
    state.calls.push(Call {
        operation: operation.to_owned(),
        body: body.clone(),
    });
    if operation != "StartQueryExecution" && body["QueryExecutionId"] != QUERY_ID {
        return refuse(format!("QueryExecutionId {}", body["QueryExecutionId"]));
    }
    match operation {
        "StartQueryExecution" => (200, json!({"QueryExecutionId": QUERY_ID})),
        "GetQueryExecution" => {
            state.polls += 1;
            let (phase, reason) = match (&state.outcome, state.polls, state.stopped) {
                (_, _, true) => ("CANCELLED", Some("Query cancelled by user".to_owned())),
                (_, 1, _) => ("QUEUED", None),
                (_, 2, _) | (Outcome::Hang, _, _) => ("RUNNING", None),
                (Outcome::Succeed(_), _, _) => ("SUCCEEDED", None),
                (Outcome::Fail(reason), _, _) => ("FAILED", Some(reason.clone())),
            };
            state.succeeded = phase == "SUCCEEDED";
            let mut status = json!({"State": phase, "SubmissionDateTime": 1.7956e9});
            if let Some(reason) = reason {
                status["StateChangeReason"] = json!(reason);
            }
            (
                200,
                json!({"QueryExecution": {
                    "QueryExecutionId": QUERY_ID,
                    "StatementType": "DML",
                    "Status": status,
                    "Statistics": {"DataScannedInBytes": 4096, "EngineExecutionTimeInMillis": 700},
                }}),
            )
        }
        "GetQueryResults" => {
            let Outcome::Succeed(paths) = &state.outcome else {
                return refuse("the query has no results".to_owned());
            };
            if !state.succeeded {
                return refuse("Query has not yet finished. Current state: RUNNING".to_owned());
            }
            let half = paths.len().div_ceil(2);
            let row = |value: &str| json!({"Data": [{"VarCharValue": value}]});
            let metadata = json!({"ColumnInfo": [{
                "CatalogName": "hive", "SchemaName": "", "TableName": "", "Name": "$path",
                "Label": "$path", "Type": "varchar", "Precision": 2147483647, "Scale": 0,
                "Nullable": "UNKNOWN", "CaseSensitive": true,
            }]});
            match body["NextToken"].as_str() {
                None => {
                    let mut rows = vec![row("$path")];
                    rows.extend(paths[..half].iter().map(|p| row(p)));
                    (
                        200,
                        json!({
                            "UpdateCount": 0,
                            "ResultSet": {"Rows": rows, "ResultSetMetadata": metadata},
                            "NextToken": "page-2",
                        }),
                    )
                }
                Some("page-2") => {
                    let rows: Vec<Value> = paths[half..].iter().map(|p| row(p)).collect();
                    (
                        200,
                        json!({
                            "UpdateCount": 0,
                            "ResultSet": {"Rows": rows, "ResultSetMetadata": metadata},
                        }),
                    )
                }
                Some(other) => refuse(format!("NextToken {other:?}")),
            }
        }
        "StopQueryExecution" => {
            state.stopped = true;
            (200, json!({}))
        }
        other => refuse(format!("operation {other} is not stubbed")),
    }
}
