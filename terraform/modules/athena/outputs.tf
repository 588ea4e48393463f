output "database" {
  description = "Name of the Glue database."
  value       = aws_glue_catalog_database.this.name
}

output "table" {
  description = "The flow table, as database.table."
  value       = "${aws_glue_catalog_database.this.name}.${aws_glue_catalog_table.flows.name}"
}

output "workgroup" {
  description = "Name of the Athena workgroup."
  value       = aws_athena_workgroup.this.name
}

output "results_location" {
  description = "Where the workgroup writes query results (SSE-KMS)."
  value       = "s3://${var.results_bucket}/${var.workgroup_name}/"
}

output "named_query_ids" {
  description = "Id of each saved query, by its name in schemas/athena/queries (for aws athena get-named-query)."
  value       = { for name, q in aws_athena_named_query.this : name => q.id }
}
