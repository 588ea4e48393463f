//! The Athena (Glue) table over the flow records, generated from [`COLUMNS`] and
//! [`PARTITION_KEYS`]: [`flows_ddl`] is the text of `schemas/athena/flows.ddl.sql`, which is
//! committed so that Terraform and people read it without building anything
//! (`schemas/tests/athena_ddl.rs` fails when the two differ, and rewrites the file when
//! `TOLLGATE_BLESS=1` is set).
//!
//! What is not derived from the record is written here once: the header comment (the Terraform
//! placeholders and the reasons behind the table's choices), the table's comment and location,
//! and how each partition key is projected.

extern crate std;

use std::{fmt::Write, format, string::String, vec::Vec};

use crate::record::{COLUMNS, PARTITION_KEYS};

/// The file's header comment: its placeholders and the table's choices.
const HEADER: &str = include_str!("athena_header.sql");

/// The table's comment in the Glue catalog.
const TABLE_COMMENT: &str = "tollgate flow records: one row per flow, verdict and aggregation \
                             window (column reference: schemas/src/record.rs)";

/// How Athena projects each partition key (`projection.<key>.<property>`), in
/// [`PARTITION_KEYS`] order. The header says why.
const PROJECTIONS: &[(&str, &[(&str, &str)])] = &[
    ("cluster", &[("type", "enum"), ("values", "${clusters}")]),
    (
        "dt",
        &[
            ("type", "date"),
            ("format", "yyyy-MM-dd"),
            ("range", "${projection_start},NOW"),
            ("interval", "1"),
            ("interval.unit", "DAYS"),
        ],
    ),
    (
        "hour",
        &[("type", "integer"), ("range", "0,23"), ("digits", "2")],
    ),
];

/// The DDL of the table `flows`: every column of [`COLUMNS`] in file order, except the
/// partition keys, which Athena refuses as table columns; the partition keys as strings in
/// path order, each projected; Parquet under `s3://${bucket}/${prefix}`. A Terraform
/// `templatefile`, as the header says.
pub fn flows_ddl() -> String {
    let columns: Vec<String> = COLUMNS
        .iter()
        .filter(|column| !PARTITION_KEYS.contains(&column.name))
        .map(|column| format!("  `{}` {}", column.name, column.kind.athena()))
        .collect();
    let keys: Vec<String> = PARTITION_KEYS
        .iter()
        .map(|key| format!("  `{key}` string"))
        .collect();
    let mut properties: Vec<(String, String)> = Vec::new();
    properties.push(("classification".into(), "parquet".into()));
    properties.push(("projection.enabled".into(), "true".into()));
    for key in PARTITION_KEYS {
        let (_, projection) = PROJECTIONS
            .iter()
            .find(|(name, _)| name == key)
            .expect("every partition key has a projection");
        for (property, value) in *projection {
            properties.push((format!("projection.{key}.{property}"), (*value).into()));
        }
    }
    // `$${key}`: Terraform's escape for the literal `${key}` Athena fills in.
    let path: Vec<String> = PARTITION_KEYS
        .iter()
        .map(|key| format!("{key}=$${{{key}}}"))
        .collect();
    properties.push((
        "storage.location.template".into(),
        format!("s3://${{bucket}}/${{prefix}}{}/", path.join("/")),
    ));
    let properties: Vec<String> = properties
        .iter()
        .map(|(name, value)| format!("  '{name}' = '{value}'"))
        .collect();

    let mut ddl = String::from(HEADER);
    let _ = write!(
        ddl,
        "CREATE EXTERNAL TABLE IF NOT EXISTS `${{database}}`.`flows` (\n{}\n)\n\
         COMMENT '{TABLE_COMMENT}'\n\
         PARTITIONED BY (\n{}\n)\n\
         STORED AS PARQUET\n\
         LOCATION 's3://${{bucket}}/${{prefix}}'\n\
         TBLPROPERTIES (\n{}\n)\n",
        columns.join(",\n"),
        keys.join(",\n"),
        properties.join(",\n"),
    );
    ddl
}
