# Athena over the flow log: a Glue database and the `flows` table (partition projection, so
# new days, hours and files are visible without a crawler), a workgroup whose settings every
# query must use (results encrypted with SSE-KMS in their own bucket, a scan limit), and the
# named queries of schemas/athena/queries, saved in that workgroup.
#
# The table's columns, partition keys and parameters come from the flow-log-layout module,
# which terraform/tests/test_terraform.py holds to schemas/athena/flows.ddl.sql; the named
# queries are read from schemas/athena/queries itself, so the console runs the text the tests
# run on DuckDB. They name the table `flows` without a database: the saved query's database
# is this one. The OCSF queries (ocsf-*) read `ocsf_flows`, tollgate's Amazon Security Lake
# source: they are saved only with security_lake_table, which takes that name's place.

locals {
  queries_dir = coalesce(var.queries_dir, "${path.module}/../../../schemas/athena/queries")
  files       = { for f in fileset(local.queries_dir, "*.sql") : trimsuffix(f, ".sql") => file("${local.queries_dir}/${f}") }
  queries = {
    for name, text in local.files :
    name => startswith(name, "ocsf-") ? replace(text, "FROM ocsf_flows", "FROM ${var.security_lake_table}") : text
    if !startswith(name, "ocsf-") || var.security_lake_table != null
  }
}

resource "aws_glue_catalog_database" "this" {
  name        = var.database_name
  description = "tollgate flow records (schemas/src/record.rs)"
  tags        = var.tags
}

resource "aws_glue_catalog_table" "flows" {
  name          = "flows"
  database_name = aws_glue_catalog_database.this.name
  description   = "tollgate flow records: one row per flow, verdict and aggregation window (column reference: schemas/src/record.rs)"
  table_type    = "EXTERNAL_TABLE"
  # EXTERNAL: dropping the table never deletes the records.
  parameters = merge(var.layout.table_parameters, { EXTERNAL = "TRUE" })

  dynamic "partition_keys" {
    for_each = var.layout.partition_keys
    content {
      name = partition_keys.value.name
      type = partition_keys.value.type
    }
  }

  storage_descriptor {
    location      = var.layout.table_location
    input_format  = "org.apache.hadoop.hive.ql.io.parquet.MapredParquetInputFormat"
    output_format = "org.apache.hadoop.hive.ql.io.parquet.MapredParquetOutputFormat"

    ser_de_info {
      serialization_library = "org.apache.hadoop.hive.ql.io.parquet.serde.ParquetHiveSerDe"
    }

    dynamic "columns" {
      for_each = var.layout.columns
      content {
        name = columns.value.name
        type = columns.value.type
      }
    }
  }
}

resource "aws_athena_workgroup" "this" {
  name        = var.workgroup_name
  description = "tollgate flow log queries"
  state       = "ENABLED"
  # Deleting the workgroup must not delete its saved queries silently.
  force_destroy = false

  configuration {
    # Clients cannot send results elsewhere, unencrypted, or past the scan limit.
    enforce_workgroup_configuration    = true
    publish_cloudwatch_metrics_enabled = true
    bytes_scanned_cutoff_per_query     = var.bytes_scanned_cutoff_per_query

    engine_version {
      selected_engine_version = "Athena engine version 3"
    }

    result_configuration {
      output_location = "s3://${var.results_bucket}/${var.workgroup_name}/"

      encryption_configuration {
        encryption_option = "SSE_KMS"
        kms_key_arn       = var.results_kms_key_arn
      }
    }
  }

  tags = var.tags
}

resource "aws_athena_named_query" "this" {
  for_each = local.queries

  name        = regex("(?m)^-- name: (.+)$", each.value)[0]
  description = regex("(?m)^-- description: (.+)$", each.value)[0]
  database    = aws_glue_catalog_database.this.name
  workgroup   = aws_athena_workgroup.this.id
  query       = each.value
}
