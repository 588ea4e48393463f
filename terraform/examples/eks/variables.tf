# The values are checked where they are used: each module validates its own variables, and its
# message names the field (for example "clusters: at least one name, each an EKS cluster name").

variable "region" {
  description = "AWS region of the cluster, the buckets and Athena."
  type        = string
}

variable "cluster_name" {
  description = "Name of the existing EKS cluster (VPC CNI); also the `cluster` partition of its flow records."
  type        = string
}

variable "flow_log_bucket" {
  description = "Name of the bucket created for the flow log (globally unique)."
  type        = string
}

variable "athena_results_bucket" {
  description = "Name of the bucket created for Athena's query results (globally unique)."
  type        = string
}

variable "flow_log_prefix" {
  description = "Key prefix of the flow records in the bucket, without '/' at either end."
  type        = string
  default     = "tollgate"
}

variable "more_clusters" {
  description = "Other clusters whose agents write to the same bucket and prefix (each deployed with its own identity): Athena's projection lists them with this one."
  type        = list(string)
  default     = []
}

variable "partition_start" {
  description = "First UTC day with flow records, YYYY-MM-DD (the day of the first apply): Athena reads no earlier day."
  type        = string
}

variable "kms_key_arn" {
  description = "ARN of an existing KMS key for the flow log; null creates one."
  type        = string
  default     = null
}

variable "storage_lifecycle" {
  description = "The flow log's lifecycle (the encrypted-bucket module's storage_lifecycle): transition, expiry, noncurrent versions, unfinished uploads."
  type = object({
    transition_days                        = optional(number, 30)
    transition_storage_class               = optional(string, "STANDARD_IA")
    expiration_days                        = optional(number, 400)
    noncurrent_expiration_days             = optional(number, 30)
    abort_incomplete_multipart_upload_days = optional(number, 1)
  })
  default = {}
}

variable "object_lock" {
  description = "Object Lock default retention of the flow log (its records and digests are isolation evidence, and quarantine's legal holds need it): GOVERNANCE (principals with s3:BypassGovernanceRetention can still shorten or delete: a mistake can be undone) or COMPLIANCE (nobody can, not the root user, until retention_days pass: the bucket cannot even be deleted) for retention_days; null: none, and no legal hold. Only at the bucket's creation."
  type = object({
    mode           = string
    retention_days = number
  })
  default = null
}

variable "results_expiration_days" {
  description = "Days Athena's query results are kept."
  type        = number
  default     = 30

  validation {
    condition     = var.results_expiration_days >= 1
    error_message = "results_expiration_days: at least 1."
  }
}

variable "identity_mode" {
  description = "How the agents get their role: pod-identity (EKS Pod Identity) or irsa (the cluster's OIDC provider)."
  type        = string
  default     = "pod-identity"
}

variable "oidc_provider_arn" {
  description = "With identity_mode = irsa: ARN of the cluster's IAM OIDC provider."
  type        = string
  default     = null
}

variable "install_pod_identity_agent" {
  description = "With identity_mode = pod-identity: install the eks-pod-identity-agent add-on (false if the cluster has it)."
  type        = bool
  default     = false
}

variable "agent_image" {
  description = "The agent's image: repository and tag (empty tag: the chart's appVersion)."
  type = object({
    repository = string
    tag        = optional(string, "")
  })
}

variable "flow_mode" {
  description = "`all` flows, or `denied` only."
  type        = string
  default     = "all"
}

variable "enforcement" {
  description = "`strict` (no traffic before a pod's rules are programmed) or `standard`."
  type        = string
  default     = "strict"
}

variable "node_ingress" {
  description = "`allow` (the node's own traffic to its pods passes ingress policy, as the API requires) or `policy`."
  type        = string
  default     = "allow"
}

variable "manage_vpc_cni_addon" {
  description = "Manage the vpc-cni add-on here (enableNetworkPolicy off); false when another configuration manages it."
  type        = bool
  default     = true
}

variable "vpc_cni_addon_version" {
  description = "Version of the vpc-cni add-on; null: the default for the cluster's Kubernetes version."
  type        = string
  default     = null
}

variable "vpc_cni_configuration_json" {
  description = "The vpc-cni add-on's other configuration values as a JSON object; enableNetworkPolicy is set to \"false\" over them."
  type        = string
  default     = "{}"
}

variable "tags" {
  description = "Tags of every AWS resource."
  type        = map(string)
  default     = {}
}

variable "digest_verifier_arns" {
  description = "IAM roles or users that may read the digest signing key's public key and verify with KMS (auditors, incident responders); `tollgate digest verify --public-key` needs only the digest_public_key_pem output."
  type        = list(string)
  default     = []
}

variable "security_lake_external_id" {
  description = "Amazon Security Lake (enabled in the region beforehand): the external ID of tollgate's custom source, which the security-lake-source module registers; the collectors then also write OCSF there (docs/security-lake.md). Null: no Security Lake."
  type        = string
  default     = null
}
