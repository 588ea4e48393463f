//! Athena as the index of the flow log: which S3 objects hold a pod's records in a window.
//!
//! Listing reads every file of every partition the window can touch; on a busy cluster that
//! is most of an hour's or a day's data for a handful of rows. With a workgroup configured,
//! [`objects`] runs ONE query over the Glue table of the flow log (`"$path"` of the rows of
//! the pod, at either end, and of the losses, in the window; partitions pruned on `dt` as the
//! named queries of `schemas/athena/queries` do) and returns the keys of the objects it
//! names. The caller then reads exactly those objects from S3 as it would have read the
//! listed ones — with their ETags, versions and digests, and its own filter — so Athena's
//! results decide only what is read, never what the bundle holds.
//!
//! Values reach the query as execution parameters (`?` in the `WHERE` clause, strings as
//! quoted SQL literals); the database and table names, which cannot be parameters, are
//! checked against what Athena accepts unquoted before any request. Every path Athena names
//! must lie under the flow log's bucket and prefix: a table that points elsewhere than
//! `--flow-log` is an error, not a silent read of other data.

use std::time::Duration;

use aws_config::{BehaviorVersion, Region};
use aws_sdk_athena::{
    Client,
    error::{ProvideErrorMetadata, SdkError},
    types::{QueryExecutionContext, QueryExecutionState},
};
use tollgate_collector::{clock::partition_date, sink::sdk_in_words};

use crate::{evidence::Request, location::FlowLogLocation};

/// The Glue database of the Terraform module `terraform/modules/athena`.
pub const DEFAULT_DATABASE: &str = "tollgate";

/// The flow table of that module.
pub const DEFAULT_TABLE: &str = "flows";

/// How long [`objects`] waits for the query by default.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(600);

/// First wait before asking for the query's state; doubled after each answer up to
/// [`LAST_POLL`].
const FIRST_POLL: Duration = Duration::from_millis(100);

/// Longest wait between two questions about the query's state.
const LAST_POLL: Duration = Duration::from_secs(2);

/// Rows per GetQueryResults page (Athena's maximum).
const PAGE_ROWS: i32 = 1000;

/// The column the query selects, and the header of its results.
const PATH_COLUMN: &str = "$path";

/// Where and how to query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AthenaOptions {
    /// The workgroup (its settings decide where results go and how much a query may scan).
    pub workgroup: String,
    /// The Glue database of the table.
    pub database: String,
    /// The flow table.
    pub table: String,
    /// An Athena endpoint instead of the region's (a VPC endpoint, a test server).
    pub endpoint_url: Option<String>,
    /// How long to wait for the query to finish; it is cancelled after that.
    pub wait: Duration,
}

impl AthenaOptions {
    /// `workgroup` with the default database, table and wait, and the region's endpoint.
    pub fn new(workgroup: impl Into<String>) -> Self {
        Self {
            workgroup: workgroup.into(),
            database: DEFAULT_DATABASE.to_owned(),
            table: DEFAULT_TABLE.to_owned(),
            endpoint_url: None,
            wait: DEFAULT_WAIT,
        }
    }

    /// Refuses names Athena would not take as given: the workgroup (`[A-Za-z0-9._-]`, at
    /// most 128), and the database and table, which go into the query's text
    /// (`[a-z0-9_]`, at most 255, what Athena accepts unquoted).
    pub fn validate(&self) -> Result<(), AthenaError> {
        let workgroup_ok = !self.workgroup.is_empty()
            && self.workgroup.len() <= 128
            && self
                .workgroup
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !workgroup_ok {
            return Err(AthenaError::Option {
                flag: "--athena-workgroup",
                value: self.workgroup.clone(),
                expected: "letters, digits, '.', '_' and '-', at most 128",
            });
        }
        for (flag, value) in [
            ("--athena-database", &self.database),
            ("--athena-table", &self.table),
        ] {
            if !is_identifier(value) {
                return Err(AthenaError::Option {
                    flag,
                    value: value.clone(),
                    expected: "lowercase letters, digits and '_', at most 255",
                });
            }
        }
        Ok(())
    }
}

impl std::fmt::Display for AthenaOptions {
    /// `athena:<workgroup>/<database>.<table>`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "athena:{}/{}.{}",
            self.workgroup, self.database, self.table
        )
    }
}

/// Why Athena could not say which objects to read.
#[derive(Debug, thiserror::Error)]
pub enum AthenaError {
    /// An option is not a name Athena takes.
    #[error("{flag} {value:?}: expected {expected}")]
    Option {
        /// The command-line flag.
        flag: &'static str,
        /// Its value.
        value: String,
        /// What it may hold.
        expected: &'static str,
    },
    /// The flow log is not in S3, where the table's objects are.
    #[error("Athena indexes an S3 flow log; {0} is not one")]
    NotS3(String),
    /// An Athena call failed.
    #[error("Athena {operation} (workgroup {workgroup}): {message}")]
    Call {
        /// The API operation.
        operation: &'static str,
        /// The workgroup.
        workgroup: String,
        /// The SDK's error with its causes.
        message: String,
    },
    /// The query ended without results.
    #[error("Athena query {query_id} {state}: {reason}")]
    Query {
        /// Its execution ID.
        query_id: String,
        /// `FAILED` or `CANCELLED`.
        state: String,
        /// Athena's StateChangeReason (or its error message).
        reason: String,
    },
    /// The query did not finish in time.
    #[error(
        "Athena query {query_id} did not finish within {waited:?} (last state {state}); it was \
         asked to stop"
    )]
    Timeout {
        /// Its execution ID.
        query_id: String,
        /// How long it was given.
        waited: Duration,
        /// Its last known state.
        state: String,
    },
    /// The results are not what the query selects.
    #[error("Athena query {query_id}: {message}")]
    Results {
        /// Its execution ID.
        query_id: String,
        /// What is wrong.
        message: String,
    },
    /// A path outside the flow log.
    #[error(
        "Athena named {path}, which is not under {flow_log}: the table {table} points elsewhere \
         than --flow-log"
    )]
    Outside {
        /// The path (`$path`) Athena returned.
        path: String,
        /// The flow log of the request.
        flow_log: String,
        /// `database.table`.
        table: String,
    },
}

/// A query and its execution parameters, in the order of its `?`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Query {
    text: String,
    parameters: Vec<String>,
}

/// The keys (sorted, without duplicates) of the objects of the flow log of `request` that
/// hold a record of its pod (either end) or a loss record overlapping its window, of its
/// cluster when it names one: as [`crate::source::Reader::fetch`] takes them for S3.
/// `region` is Athena's (the bucket's).
pub async fn objects(
    options: &AthenaOptions,
    region: &str,
    request: &Request,
) -> Result<Vec<String>, AthenaError> {
    options.validate()?;
    let FlowLogLocation::S3 { bucket, prefix } = &request.location else {
        return Err(AthenaError::NotS3(request.location.to_string()));
    };
    let query = query(options, request);
    let client = client(options, region).await;
    let query_id = start(&client, options, &query).await?;
    finish(&client, options, &query_id).await?;
    let paths = results(&client, options, &query_id).await?;
    let mut keys = paths
        .iter()
        .map(|path| {
            key_of(path, bucket, prefix).ok_or_else(|| AthenaError::Outside {
                path: path.clone(),
                flow_log: request.location.to_string(),
                table: format!("{}.{}", options.database, options.table),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    keys.sort();
    keys.dedup();
    tracing::info!(
        query_id = %query_id,
        objects = keys.len(),
        "Athena named the flow-log objects to read"
    );
    Ok(keys)
}

/// The query of `request`: the distinct `"$path"` of the rows of its pod (source or
/// destination: flows and its isolation records) and of every loss record, overlapping the
/// window, in the `dt` partitions from the day of `from - 1 h` (a record is filed under the
/// hour of its start and spans at most one aggregation window) to the day of `to`.
fn query(options: &AthenaOptions, request: &Request) -> Query {
    let pod = &request.pod;
    let mut parameters = vec![
        literal(&partition_date(request.from_s.saturating_sub(3600)).0),
        literal(&partition_date(request.to_s).0),
        request.from_s.to_string(),
        request.to_s.to_string(),
    ];
    let cluster = match &request.cluster {
        Some(cluster) => {
            parameters.push(literal(cluster));
            "\n  AND cluster = ?"
        }
        None => "",
    };
    parameters.extend([
        literal(&pod.namespace),
        literal(&pod.name),
        literal(&pod.namespace),
        literal(&pod.name),
    ]);
    let text = format!(
        "SELECT DISTINCT \"{PATH_COLUMN}\"\nFROM \"{}\".\"{}\"\nWHERE dt >= ?\n  AND dt <= ?\n  \
         AND \"end\" >= ?\n  AND \"start\" < ?{cluster}\n  AND (log_status = 'SKIPDATA'\n    \
         OR (src_namespace = ? AND src_pod = ?)\n    OR (dst_namespace = ? AND dst_pod = ?))",
        options.database, options.table
    );
    Query { text, parameters }
}

/// `text` as a SQL string literal, the form Athena's execution parameters take for strings.
fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// A name Athena takes unquoted (and that can go into the query's text).
fn is_identifier(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 255
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// The key of `path` (`s3://bucket/key`) when it is an object of `bucket` under `prefix`.
fn key_of(path: &str, bucket: &str, prefix: &str) -> Option<String> {
    let (in_bucket, key) = path.strip_prefix("s3://")?.split_once('/')?;
    if in_bucket != bucket || key.is_empty() || key.ends_with('/') {
        return None;
    }
    if !prefix.is_empty() {
        key.strip_prefix(prefix)?.strip_prefix('/')?;
    }
    Some(key.to_owned())
}

/// An Athena client from aws-config's default chain, for `region` and the endpoint of
/// `options` when it names one.
async fn client(options: &AthenaOptions, region: &str) -> Client {
    let shared = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(region.to_owned()))
        .load()
        .await;
    let mut config = aws_sdk_athena::config::Builder::from(&shared);
    if let Some(url) = &options.endpoint_url {
        config.set_endpoint_url(Some(url.clone()));
    }
    Client::from_conf(config.build())
}

/// `error` of the call `operation`, in words: Athena's code and message, or the chain of
/// causes — never the SDK's structures.
fn call_error<E>(
    operation: &'static str,
    options: &AthenaOptions,
    error: &SdkError<E>,
) -> AthenaError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    AthenaError::Call {
        operation,
        workgroup: options.workgroup.clone(),
        message: sdk_in_words(error),
    }
}

/// Starts `query` in the workgroup; its execution ID.
async fn start(
    client: &Client,
    options: &AthenaOptions,
    query: &Query,
) -> Result<String, AthenaError> {
    let output = client
        .start_query_execution()
        .query_string(&query.text)
        .set_execution_parameters(Some(query.parameters.clone()))
        .query_execution_context(
            QueryExecutionContext::builder()
                .database(&options.database)
                .build(),
        )
        .work_group(&options.workgroup)
        .send()
        .await
        .map_err(|e| call_error("StartQueryExecution", options, &e))?;
    let query_id = output
        .query_execution_id()
        .filter(|id| !id.is_empty())
        .ok_or_else(|| AthenaError::Call {
            operation: "StartQueryExecution",
            workgroup: options.workgroup.clone(),
            message: "no QueryExecutionId in the answer".to_owned(),
        })?
        .to_owned();
    tracing::info!(
        query_id = %query_id,
        workgroup = %options.workgroup,
        table = %format_args!("{}.{}", options.database, options.table),
        "Athena query started"
    );
    Ok(query_id)
}

/// Waits, asking less and less often, until the query has succeeded; its reason when it
/// failed or was cancelled; asks it to stop when it runs past `options.wait`.
async fn finish(
    client: &Client,
    options: &AthenaOptions,
    query_id: &str,
) -> Result<(), AthenaError> {
    let started = tokio::time::Instant::now();
    let mut delay = FIRST_POLL;
    loop {
        tokio::time::sleep(delay.min(options.wait.saturating_sub(started.elapsed()))).await;
        let output = client
            .get_query_execution()
            .query_execution_id(query_id)
            .send()
            .await
            .map_err(|e| call_error("GetQueryExecution", options, &e))?;
        let execution = output.query_execution();
        let status = execution.and_then(|e| e.status());
        let state = status.and_then(|s| s.state()).cloned();
        tracing::debug!(query_id = %query_id, state = ?state, "Athena query state");
        match &state {
            Some(QueryExecutionState::Succeeded) => {
                let statistics = execution.and_then(|e| e.statistics());
                tracing::info!(
                    query_id = %query_id,
                    scanned_bytes = statistics.and_then(|s| s.data_scanned_in_bytes()),
                    engine_ms = statistics.and_then(|s| s.engine_execution_time_in_millis()),
                    "Athena query succeeded"
                );
                return Ok(());
            }
            Some(ended @ (QueryExecutionState::Failed | QueryExecutionState::Cancelled)) => {
                let reason = status
                    .and_then(|s| s.state_change_reason())
                    .or_else(|| {
                        status
                            .and_then(|s| s.athena_error())
                            .and_then(|e| e.error_message())
                    })
                    .unwrap_or("Athena gave no reason")
                    .to_owned();
                tracing::warn!(
                    query_id = %query_id,
                    state = %ended,
                    reason = %reason,
                    "Athena query ended without results"
                );
                return Err(AthenaError::Query {
                    query_id: query_id.to_owned(),
                    state: ended.to_string(),
                    reason,
                });
            }
            _ => {}
        }
        if started.elapsed() >= options.wait {
            let state = state.map_or_else(|| "unknown".to_owned(), |s| s.to_string());
            // Best effort: a query left running would go on scanning (and costing).
            if let Err(error) = client
                .stop_query_execution()
                .query_execution_id(query_id)
                .send()
                .await
            {
                tracing::warn!(
                    query_id = %query_id,
                    error = %sdk_in_words(&error),
                    "could not stop the Athena query"
                );
            }
            return Err(AthenaError::Timeout {
                query_id: query_id.to_owned(),
                waited: options.wait,
                state,
            });
        }
        delay = (delay * 2).min(LAST_POLL);
    }
}

/// The `$path` values of the query's results, every page, without the header row.
async fn results(
    client: &Client,
    options: &AthenaOptions,
    query_id: &str,
) -> Result<Vec<String>, AthenaError> {
    let bad = |message: String| AthenaError::Results {
        query_id: query_id.to_owned(),
        message,
    };
    let mut pages = client
        .get_query_results()
        .query_execution_id(query_id)
        .max_results(PAGE_ROWS)
        .into_paginator()
        .send();
    let mut paths = Vec::new();
    let mut header = true;
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| call_error("GetQueryResults", options, &e))?;
        let rows = page.result_set().map(|r| r.rows()).unwrap_or_default();
        for row in rows {
            let value = row.data().first().and_then(|d| d.var_char_value());
            if std::mem::take(&mut header) {
                if value != Some(PATH_COLUMN) {
                    return Err(bad(format!(
                        "the first row is {value:?}, not the header {PATH_COLUMN:?}"
                    )));
                }
                continue;
            }
            paths.push(
                value
                    .ok_or_else(|| bad(format!("row {} has no {PATH_COLUMN}", paths.len() + 1)))?
                    .to_owned(),
            );
        }
    }
    Ok(paths)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::location::S3Options;

    fn request(cluster: Option<&str>, from_s: u64, to_s: u64) -> Request {
        Request {
            pod: "shop/web".parse().unwrap(),
            cluster: cluster.map(str::to_owned),
            from_s,
            to_s,
            location: "s3://flows/tollgate".parse().unwrap(),
            s3: S3Options::default(),
            out: "/nonexistent".into(),
            athena: None,
        }
    }

    #[test]
    fn the_query_prunes_on_dt_and_takes_every_value_as_a_parameter() {
        // 2026-11-25T00:30:00Z to 01:00:00Z: an hour before the start is the day before.
        let from = 1_795_566_600;
        let options = AthenaOptions::new("wg");
        let query = query(&options, &request(Some("it's"), from, from + 1800));
        assert_eq!(
            query.parameters,
            [
                "'2026-11-24'",
                "'2026-11-25'",
                "1795566600",
                "1795568400",
                "'it''s'",
                "'shop'",
                "'web'",
                "'shop'",
                "'web'"
            ]
        );
        assert_eq!(query.text.matches('?').count(), query.parameters.len());
        assert!(
            query
                .text
                .starts_with("SELECT DISTINCT \"$path\"\nFROM \"tollgate\".\"flows\"\n")
        );
        assert!(query.text.contains("AND cluster = ?"), "{}", query.text);

        let every_cluster = super::query(&options, &request(None, from, from + 1800));
        assert!(
            !every_cluster.text.contains("cluster"),
            "{}",
            every_cluster.text
        );
        assert_eq!(every_cluster.parameters.len(), 8);
    }

    #[test]
    fn names_are_checked() {
        assert!(AthenaOptions::new("primary").validate().is_ok());
        assert!(AthenaOptions::new("tollgate-prod.v2_x").validate().is_ok());
        let error = AthenaOptions::new("a b").validate().unwrap_err();
        assert!(
            error.to_string().starts_with("--athena-workgroup \"a b\""),
            "{error}"
        );
        assert!(AthenaOptions::new("").validate().is_err());
        for database in ["tollgate-prod", "Tollgate", "x\".\"y", ""] {
            let options = AthenaOptions {
                database: database.to_owned(),
                ..AthenaOptions::new("wg")
            };
            let error = options.validate().unwrap_err();
            assert!(
                error.to_string().starts_with("--athena-database "),
                "{error}"
            );
        }
        let options = AthenaOptions {
            table: "flows;".to_owned(),
            ..AthenaOptions::new("wg")
        };
        assert!(
            options
                .validate()
                .unwrap_err()
                .to_string()
                .starts_with("--athena-table ")
        );
        assert_eq!(
            AthenaOptions::new("wg").to_string(),
            "athena:wg/tollgate.flows"
        );
    }

    #[test]
    fn only_paths_under_the_flow_log_are_keys() {
        let key = "tollgate/cluster=prod/dt=2026-11-25/hour=10/a.parquet";
        assert_eq!(
            key_of(&format!("s3://flows/{key}"), "flows", "tollgate").as_deref(),
            Some(key)
        );
        assert_eq!(
            key_of(&format!("s3://flows/{key}"), "flows", "").as_deref(),
            Some(key)
        );
        for outside in [
            format!("s3://other/{key}"),
            "s3://flows/tollgate2/cluster=prod/a.parquet".to_owned(),
            "s3://flows/tollgate".to_owned(),
            "s3://flows/tollgate/".to_owned(),
            "s3://flows".to_owned(),
            format!("https://flows/{key}"),
            format!("flows/{key}"),
        ] {
            assert_eq!(key_of(&outside, "flows", "tollgate"), None, "{outside}");
        }
    }
}
