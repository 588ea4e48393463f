output "location" {
  description = "The source's location in the Security Lake bucket (s3://…/ext/<source_name>/)."
  value       = local.location
}

output "provider_role_arn" {
  description = "ARN of the provider role Security Lake created for the source, which provider_principal may assume with external_id."
  value       = aws_securitylake_custom_log_source.this.provider_details[0].role_arn
}

output "glue_table_arn" {
  description = "ARN of the Glue table Security Lake's crawler keeps for the source: the athena module's security_lake_table names it."
  value       = aws_securitylake_custom_log_source.this.attributes[0].table_arn
}

output "glue_table" {
  description = "The same table as `database.table`: the athena module's security_lake_table."
  value       = join(".", regex("table/([^/]+)/([^/]+)$", aws_securitylake_custom_log_source.this.attributes[0].table_arn))
}

output "agent_write_policy_json" {
  description = "The policy the agents' role gets (write under their partitions only), for review."
  value       = jsonencode(local.agent_write_policy)
}

output "collector_security_lake" {
  description = "The collectors' security_lake setting (collector/src/config.rs SecurityLakeConfig): the source, its region and account partitions, and the Security Lake bucket as an S3 sink with an empty prefix."
  value = {
    source_name = var.source_name
    region      = local.region
    account_id  = local.account_id
    sink = {
      kind   = "s3"
      region = local.region
      bucket = local.bucket
      prefix = ""
    }
  }
}
