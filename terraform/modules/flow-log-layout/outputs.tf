output "columns" {
  description = "The Glue table's columns in file order, as name and Hive type (schemas/athena/flows.ddl.sql)."
  value       = local.columns
}

output "partition_keys" {
  description = "The Glue table's partition keys, in key order: cluster, dt (YYYY-MM-DD, UTC), hour (HH)."
  value       = local.partition_keys
}

output "table_location" {
  description = "The Glue table's location: s3://<bucket>/<prefix>/."
  value       = local.table_location
}

output "table_parameters" {
  description = "The Glue table's parameters: Parquet classification and the partition projection of cluster (enum), dt (date) and hour (integer), as in the DDL's TBLPROPERTIES."
  value       = local.table_parameters
}

output "cluster_prefixes" {
  description = "For each cluster, the key prefix its collectors write under (<prefix>/cluster=<name>/)."
  value       = local.cluster_prefixes
}

output "digest_prefixes" {
  description = "For each cluster, the key prefix its collectors write their signed digests under (<prefix>/_digests/cluster=<name>/)."
  value       = local.digest_prefixes
}

output "agent_policy_json" {
  description = "For each cluster, the IAM policy (JSON) of its node agents: write their own cluster's flow records and digests, encrypt them with the bucket's key through S3, and never delete, shorten a retention or touch a legal hold; nothing else."
  value       = local.agent_policy_json
}

output "collector_sink" {
  description = "The collectors' sink setting (collector/src/config.rs): S3, this bucket, region and prefix, SSE-KMS with the bucket's key."
  value       = local.collector_sink
}
