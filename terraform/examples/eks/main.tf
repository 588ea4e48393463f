# tollgate on an existing EKS cluster, from nothing to "Athena answers which flows were denied":
#
#   layout ──────────────► flow_log (bucket, key) ─┐
#     │  columns, projection, agent policy, sink    │
#     ├──► agent_identity (role: write own prefix) ─┤
#     │      └──► digest_key (KMS: only Sign) ─────┤
#     │                                             ├──► node_agent (Helm release, then the
#     └──► athena (Glue table, workgroup, queries) ◄┘     vpc-cni add-on: enforcement off)
#                   ▲
#   athena_results ─┘  (bucket for query results)
#
# The flow log's name and key are decided before the bucket exists, so the layout (and with it
# the policy and the table) is computed from names, and the bucket module only creates.

data "aws_partition" "current" {}

module "flow_log" {
  source = "../../modules/encrypted-bucket"

  name              = var.flow_log_bucket
  kms_key_arn       = var.kms_key_arn
  storage_lifecycle = var.storage_lifecycle
  object_lock       = var.object_lock
  tags              = var.tags
}

module "athena_results" {
  source = "../../modules/encrypted-bucket"

  name = var.athena_results_bucket
  storage_lifecycle = {
    transition_days = 0
    expiration_days = var.results_expiration_days
    # Results are never overwritten: a replaced version is a leftover.
    noncurrent_expiration_days = 1
  }
  tags = var.tags
}

module "layout" {
  source = "../../modules/flow-log-layout"

  bucket          = module.flow_log.name
  prefix          = var.flow_log_prefix
  clusters        = concat([var.cluster_name], var.more_clusters)
  partition_start = var.partition_start
  region          = var.region
  kms_key_arn     = module.flow_log.kms_key_arn
  partition       = data.aws_partition.current.partition
  dns_suffix      = data.aws_partition.current.dns_suffix
}

module "agent_identity" {
  source = "../../modules/agent-identity"

  cluster_name                    = var.cluster_name
  mode                            = var.identity_mode
  oidc_provider_arn               = var.oidc_provider_arn
  manage_pod_identity_agent_addon = var.install_pod_identity_agent
  policy_json                     = module.layout.agent_policy_json[var.cluster_name]
  tags                            = var.tags
}

module "digest_key" {
  source = "../../modules/digest-signing-key"

  name            = var.cluster_name
  signer_role_arn = module.agent_identity.role_arn
  verifier_arns   = var.digest_verifier_arns
  tags            = var.tags
}

# Optional: tollgate as an Amazon Security Lake custom source.
module "security_lake" {
  source = "../../modules/security-lake-source"
  count  = var.security_lake_external_id == null ? 0 : 1

  source_name     = "tollgate"
  external_id     = var.security_lake_external_id
  agent_role_name = module.agent_identity.role_name
  tags            = var.tags
}

module "athena" {
  source = "../../modules/athena"

  layout = {
    columns          = module.layout.columns
    partition_keys   = module.layout.partition_keys
    table_location   = module.layout.table_location
    table_parameters = module.layout.table_parameters
  }
  results_bucket      = module.athena_results.name
  results_kms_key_arn = module.athena_results.kms_key_arn
  security_lake_table = one(module.security_lake[*].glue_table)
  tags                = var.tags
}

module "node_agent" {
  source = "../../modules/node-agent"

  cluster_name               = var.cluster_name
  service_account            = "tollgate"
  service_account_role_arn   = module.agent_identity.service_account_role_arn
  image                      = var.agent_image
  collector_sink             = module.layout.collector_sink
  digest_signing             = module.digest_key.collector_signing
  security_lake              = one(module.security_lake[*].collector_security_lake)
  flow_mode                  = var.flow_mode
  enforcement                = var.enforcement
  node_ingress               = var.node_ingress
  manage_vpc_cni_addon       = var.manage_vpc_cni_addon
  vpc_cni_addon_version      = var.vpc_cni_addon_version
  vpc_cni_configuration_json = var.vpc_cni_configuration_json
  tags                       = var.tags

  # The agents' first uploads need their role, its policy and (Pod Identity) the association.
  depends_on = [module.agent_identity]
}
