output "flow_log_bucket" {
  description = "The flow log's bucket and where the records are: s3://<bucket>/<prefix>/cluster=<cluster>/."
  value       = "s3://${module.flow_log.name}/${module.layout.cluster_prefixes[var.cluster_name]}"
}

output "kms_key_arn" {
  description = "The KMS key of the flow log: readers of the records need kms:Decrypt on it."
  value       = module.flow_log.kms_key_arn
}

output "table" {
  description = "The Glue table of the flow log, as database.table."
  value       = module.athena.table
}

output "workgroup" {
  description = "The Athena workgroup to run the flow log's queries in (results encrypted, scan limit enforced)."
  value       = module.athena.workgroup
}

output "agent_role_arn" {
  description = "The node agents' IAM role."
  value       = module.agent_identity.role_arn
}

output "named_queries" {
  description = "The saved queries of the workgroup (schemas/athena/queries), by name: id."
  value       = module.athena.named_query_ids
}

output "first_query" {
  description = "The query to run first, as a shell command (bash, AWS CLI v2): the saved query denied-flows over the last hour, printed as a table. `terraform output -raw first_query | bash`."
  value       = <<-EOT
    set -euo pipefail
    to=$(date +%s); from=$((to - 3600))
    sql=$(aws athena get-named-query --region ${var.region} --named-query-id ${module.athena.named_query_ids["denied-flows"]} \
      --query NamedQuery.QueryString --output text)
    id=$(aws athena start-query-execution --region ${var.region} --work-group ${module.athena.workgroup} \
      --query-execution-context Database=${module.athena.database} --query-string "$sql" \
      --execution-parameters "$from" "$to" "$from" "$to" --query QueryExecutionId --output text)
    state=QUEUED
    while [ "$state" = QUEUED ] || [ "$state" = RUNNING ]; do
      sleep 1
      state=$(aws athena get-query-execution --region ${var.region} --query-execution-id "$id" \
        --query QueryExecution.Status.State --output text)
    done
    echo "query $id: $state"
    aws athena get-query-results --region ${var.region} --query-execution-id "$id" --output table
  EOT
}

output "vpc_cni_configuration" {
  description = "The vpc-cni add-on's configuration values with its network-policy agent not enforcing (what to give the add-on where it is managed elsewhere)."
  value       = module.node_agent.vpc_cni_configuration
}

output "digest_key_arn" {
  description = "The KMS key that signs the collectors' digests (`tollgate digest verify --kms-key`)."
  value       = module.digest_key.key_arn
}

output "digest_public_key_pem" {
  description = "The digests' public key, PEM (`tollgate digest verify --public-key`): keep a copy outside the account."
  value       = module.digest_key.public_key_pem
}
